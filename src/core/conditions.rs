//! Status conditions, built and merged without I/O.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Condition type: the object's desired state is in place.
pub const READY: &str = "Ready";
/// Condition type: an AgentIdentity's kill switch is on.
pub const SUSPENDED: &str = "Suspended";

/// One condition as a decision produces it; time and generation are added by [`merge`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CondUpdate {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl CondUpdate {
    pub fn new(type_: &'static str, status: bool, reason: &'static str, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into() }
    }
}

fn status_str(b: bool) -> &'static str {
    if b { "True" } else { "False" }
}

/// Applies `updates` to `existing`: a condition whose status did not change keeps
/// its `lastTransitionTime`, so writing the same decision twice changes nothing.
/// Conditions of other types are kept as they are.
pub fn merge(
    existing: &[Condition],
    updates: &[CondUpdate],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> =
        existing.iter().filter(|c| !updates.iter().any(|u| u.type_ == c.type_)).cloned().collect();
    for u in updates {
        let prev = existing.iter().find(|c| c.type_ == u.type_);
        let status = status_str(u.status);
        let last_transition_time = match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: u.type_.to_string(),
            status: status.to_string(),
            reason: u.reason.to_string(),
            message: u.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The status (`"True"`, `"False"`, `"Unknown"`) of the condition of that type, if present.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of that type is present with status True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn keeps_transition_time_when_status_is_unchanged() {
        let first = merge(&[], &[CondUpdate::new(READY, true, "Ok", "fine")], Some(1), t(100));
        let second = merge(&first, &[CondUpdate::new(READY, true, "Ok", "still fine")], Some(2), t(200));
        assert_eq!(second[0].last_transition_time, Time(t(100)));
        assert_eq!(second[0].message, "still fine");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn moves_transition_time_when_status_flips() {
        let first = merge(&[], &[CondUpdate::new(READY, true, "Ok", "")], Some(1), t(100));
        let second = merge(&first, &[CondUpdate::new(READY, false, "Broken", "x")], Some(1), t(200));
        assert_eq!(second[0].last_transition_time, Time(t(200)));
        assert_eq!(second[0].status, "False");
        assert!(!is_true(&second, READY));
    }

    #[test]
    fn keeps_other_conditions_and_sorts() {
        let first = merge(&[], &[CondUpdate::new(SUSPENDED, false, "Active", "")], None, t(1));
        let second = merge(&first, &[CondUpdate::new(READY, true, "Ok", "")], None, t(2));
        let types: Vec<_> = second.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, vec![READY, SUSPENDED]);
    }
}
