//! Leader election over a `coordination.k8s.io/v1` Lease: what one replica
//! should do with the Lease it just read. The shell writes with the Lease's
//! resourceVersion, so two replicas that decide at once cannot both win.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseAction {
    /// No Lease yet: create it, holding it.
    Create(Lease),
    /// We hold it: renew.
    Renew(Lease),
    /// Its holder stopped renewing: take it over.
    Acquire(Lease),
    /// Someone else holds it until `until`.
    Follow { holder: String, until: Timestamp },
}

impl LeaseAction {
    /// Whether this action, once written, makes us the leader.
    pub fn leads(&self) -> bool {
        !matches!(self, LeaseAction::Follow { .. })
    }
}

fn spec(me: &str, acquired: Timestamp, now: Timestamp, duration_secs: i32, transitions: i32) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration_secs),
        acquire_time: Some(MicroTime(acquired)),
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(transitions),
        ..Default::default()
    }
}

/// Decides, for replica `me`, what to do with `current` (the Lease as read, if any).
pub fn decide(
    current: Option<&Lease>,
    name: &str,
    namespace: &str,
    me: &str,
    now: Timestamp,
    duration_secs: i32,
) -> LeaseAction {
    let Some(lease) = current else {
        return LeaseAction::Create(Lease {
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some(namespace.into()), ..Default::default() },
            spec: Some(spec(me, now, now, duration_secs, 0)),
        });
    };
    let s = lease.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.clone().unwrap_or_default();
    let transitions = s.lease_transitions.unwrap_or(0);
    let mut next = lease.clone();
    if holder == me {
        let acquired = s.acquire_time.map(|t| t.0).unwrap_or(now);
        next.spec = Some(spec(me, acquired, now, duration_secs, transitions));
        return LeaseAction::Renew(next);
    }
    let held_for = SignedDuration::from_secs(i64::from(s.lease_duration_seconds.unwrap_or(duration_secs)));
    // A Lease with absurd times (hand-edited) counts as expired rather than panicking.
    let until = s.renew_time.and_then(|t| t.0.checked_add(held_for).ok()).unwrap_or(now);
    if holder.is_empty() || until <= now {
        next.spec = Some(spec(me, now, now, duration_secs, transitions + 1));
        return LeaseAction::Acquire(next);
    }
    LeaseAction::Follow { holder, until }
}

/// The Lease with its holder cleared, for a graceful hand-over on shutdown.
pub fn release(lease: &Lease, me: &str) -> Option<Lease> {
    let s = lease.spec.as_ref()?;
    if s.holder_identity.as_deref() != Some(me) {
        return None;
    }
    let mut next = lease.clone();
    let mut spec = s.clone();
    spec.holder_identity = None;
    spec.renew_time = None;
    next.spec = Some(spec);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_900_000_000 + s).unwrap()
    }

    fn held(by: &str, renewed: i64) -> Lease {
        match decide(None, "l", "ns", by, t(renewed), 10) {
            LeaseAction::Create(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_replica_creates_and_leads() {
        let a = decide(None, "l", "ns", "a", t(0), 10);
        assert!(a.leads());
        let LeaseAction::Create(l) = a else { panic!() };
        assert_eq!(l.spec.unwrap().holder_identity.as_deref(), Some("a"));
    }

    #[test]
    fn holder_renews_and_keeps_acquire_time() {
        let LeaseAction::Renew(l) = decide(Some(&held("a", 0)), "l", "ns", "a", t(5), 10) else { panic!() };
        let s = l.spec.unwrap();
        assert_eq!(s.renew_time, Some(MicroTime(t(5))));
        assert_eq!(s.acquire_time, Some(MicroTime(t(0))));
        assert_eq!(s.lease_transitions, Some(0));
    }

    #[test]
    fn others_follow_until_the_lease_runs_out_then_take_over() {
        let lease = held("a", 0);
        assert_eq!(
            decide(Some(&lease), "l", "ns", "b", t(9), 10),
            LeaseAction::Follow { holder: "a".into(), until: t(10) }
        );
        let LeaseAction::Acquire(l) = decide(Some(&lease), "l", "ns", "b", t(10), 10) else { panic!() };
        let s = l.spec.unwrap();
        assert_eq!(s.holder_identity.as_deref(), Some("b"));
        assert_eq!(s.lease_transitions, Some(1));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let released = release(&held("a", 0), "a").unwrap();
        assert!(decide(Some(&released), "l", "ns", "b", t(1), 10).leads());
        assert_eq!(release(&held("a", 0), "b"), None, "only the holder releases");
    }
}
