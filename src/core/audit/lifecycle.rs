//! Lifecycle records: which audit record a controller's status change makes, if any. A record is
//! made only when the phase changes (steady state records nothing), after the status was written.

use super::{Event, Kind};
use crate::api::{GrantPhase, TaskPhase};

/// The record of an AgentTask moving from `old` to `new`.
pub fn task_transition(
    old: Option<TaskPhase>,
    new: Option<TaskPhase>,
    namespace: &str,
    task: &str,
    agent: &str,
    reason: &str,
) -> Option<Event> {
    if old == new {
        return None;
    }
    let kind = match new? {
        TaskPhase::Active => Kind::TaskStarted,
        TaskPhase::Completed => Kind::TaskCompleted,
        TaskPhase::Expired => Kind::TaskExpired,
        TaskPhase::Revoked => Kind::TaskRevoked,
        TaskPhase::Pending => return None,
    };
    let mut e = Event::new(kind);
    e.namespace = Some(namespace.to_string());
    e.agent = Some(agent.to_string());
    e.task = Some(task.to_string());
    if !reason.is_empty() {
        e.reasons = vec![reason.to_string()];
    }
    Some(e)
}

/// The record of a ToolGrant moving from `old` to `new`.
pub fn grant_transition(
    old: Option<GrantPhase>,
    new: Option<GrantPhase>,
    namespace: &str,
    grant: &str,
    agent: &str,
) -> Option<Event> {
    if old == new {
        return None;
    }
    let kind = match new? {
        GrantPhase::Active => Kind::GrantActivated,
        GrantPhase::Expired => Kind::GrantExpired,
        GrantPhase::Revoked => Kind::GrantRevoked,
        GrantPhase::Pending => return None,
    };
    let mut e = Event::new(kind);
    e.namespace = Some(namespace.to_string());
    e.agent = Some(agent.to_string());
    e.grant = Some(grant.to_string());
    Some(e)
}

/// The record of an agent's `Suspended` condition changing: `old` is whether it was true (`None`: no
/// status yet, so a first suspension is recorded but a first "not suspended" is not).
pub fn agent_transition(old: Option<bool>, new: bool, namespace: &str, agent: &str) -> Option<Event> {
    let kind = match (old, new) {
        (Some(true), true) | (Some(false) | None, false) => return None,
        (_, true) => Kind::AgentSuspended,
        (Some(true), false) => Kind::AgentResumed,
    };
    let mut e = Event::new(kind);
    e.namespace = Some(namespace.to_string());
    e.agent = Some(agent.to_string());
    Some(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_phase_changes_into_a_recorded_phase_make_a_record() {
        use TaskPhase::*;
        let kind = |old, new| task_transition(old, new, "ns", "t", "bot", "").map(|e| e.kind);
        assert_eq!(kind(None, Some(Active)), Some(Kind::TaskStarted));
        assert_eq!(kind(Some(Pending), Some(Active)), Some(Kind::TaskStarted));
        assert_eq!(kind(Some(Active), Some(Completed)), Some(Kind::TaskCompleted));
        assert_eq!(kind(Some(Active), Some(Expired)), Some(Kind::TaskExpired));
        assert_eq!(kind(Some(Active), Some(Revoked)), Some(Kind::TaskRevoked));
        assert_eq!(kind(Some(Revoked), Some(Active)), Some(Kind::TaskStarted));
        // Steady state and Pending record nothing.
        assert_eq!(kind(Some(Active), Some(Active)), None);
        assert_eq!(kind(None, Some(Pending)), None);
        assert_eq!(kind(Some(Active), None), None);
        let e = task_transition(Some(Active), Some(Completed), "ns", "t", "bot", "Completed").unwrap();
        assert_eq!(
            (e.namespace.as_deref(), e.agent.as_deref(), e.task.as_deref()),
            (Some("ns"), Some("bot"), Some("t"))
        );
        assert_eq!(e.reasons, ["Completed"]);

        use GrantPhase as G;
        let kind = |old, new| grant_transition(old, new, "ns", "g", "bot").map(|e| e.kind);
        assert_eq!(kind(None, Some(G::Active)), Some(Kind::GrantActivated));
        assert_eq!(kind(Some(G::Active), Some(G::Expired)), Some(Kind::GrantExpired));
        assert_eq!(kind(Some(G::Active), Some(G::Revoked)), Some(Kind::GrantRevoked));
        assert_eq!(kind(Some(G::Active), Some(G::Active)), None);
        assert_eq!(kind(Some(G::Active), Some(G::Pending)), None);
        assert_eq!(grant_transition(None, Some(G::Active), "ns", "g", "bot").unwrap().grant.as_deref(), Some("g"));

        let kind = |old, new| agent_transition(old, new, "ns", "bot").map(|e| e.kind);
        assert_eq!(kind(Some(false), true), Some(Kind::AgentSuspended));
        assert_eq!(kind(None, true), Some(Kind::AgentSuspended));
        assert_eq!(kind(Some(true), false), Some(Kind::AgentResumed));
        assert_eq!(kind(Some(true), true), None);
        assert_eq!(kind(Some(false), false), None);
        assert_eq!(kind(None, false), None);
    }
}
