//! Per-task call limits across replicas, without a database and without an apiserver write per call:
//! leased slices. Each replica claims a slice of a task's limit in the AgentTask's status (a write with
//! the object's resourceVersion as precondition, so two replicas never both claim the same calls) and
//! allows calls only while it holds unspent units of a slice.
//!
//! Bound: **no overshoot** — the slices of all replicas never add up to more than the limit, and every
//! allowed call spends one unit. The price is undershoot: units a replica claimed and did not spend
//! (at most [`MAX_SLICE`] − 1 per replica and key, or a whole slice if the replica dies) are lost to
//! the task. One status write per slice: for a limit of 50, at most ⌈50 / slice⌉ writes in all.

use std::collections::BTreeMap;

use super::decide::{Charge, DecisionRequest};
use super::snapshot::Snapshot;
use crate::api::ReplicaUsage;

/// Largest slice one claim takes.
pub const MAX_SLICE: u64 = 16;

/// Budget key of `sessionLimits.maxToolCalls`.
pub const TASK_KEY: &str = "task";

/// Budget key of a grant's `limits.maxCallsPerSession`.
pub fn grant_key(grant: &str) -> String {
    format!("grant/{grant}")
}

/// One limited counter an allowed call spends from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub task: String,
    pub key: String,
    pub limit: u64,
}

/// The per-task limits an allowed call spends from: the agent's `maxToolCalls` and the grant's
/// `maxCallsPerSession`, when set and the call is in a task.
pub fn needs(snap: &Snapshot, req: &DecisionRequest, charge: &Charge) -> Vec<Need> {
    let Some(task) = &charge.task else { return Vec::new() };
    let mut out = Vec::new();
    if let Some(limit) = snap.agent(&req.namespace, &req.agent).and_then(|a| a.max_tool_calls) {
        out.push(Need { task: task.clone(), key: TASK_KEY.to_string(), limit });
    }
    if let Some(limit) = snap.grant(&req.namespace, &charge.grant).and_then(|g| g.limits.max_calls_per_session) {
        out.push(Need { task: task.clone(), key: grant_key(&charge.grant), limit });
    }
    out
}

/// Calls claimed for `key` by every replica.
pub fn claimed(usage: &BTreeMap<String, ReplicaUsage>, key: &str) -> u64 {
    usage.values().filter_map(|u| u.claimed.get(key)).map(|n| u64::try_from(*n).unwrap_or(0)).sum()
}

/// The size of the next slice of `limit` for `key`, given what every replica has claimed: a quarter of
/// what is left, between 1 and [`MAX_SLICE`]; `None` once the whole limit is claimed.
pub fn next_slice(usage: &BTreeMap<String, ReplicaUsage>, key: &str, limit: u64) -> Option<u64> {
    let left = limit.saturating_sub(claimed(usage, key));
    (left > 0).then(|| (left / 4).clamp(1, MAX_SLICE).min(left))
}

/// The merge patch that claims `slice` more calls of `key` for `replica`, with the resourceVersion the
/// claim was computed from as precondition (the apiserver answers 409 if anyone wrote since).
pub fn claim_patch(
    usage: &BTreeMap<String, ReplicaUsage>,
    replica: &str,
    key: &str,
    slice: u64,
    resource_version: &str,
) -> serde_json::Value {
    let mine = usage.get(replica).and_then(|u| u.claimed.get(key)).copied().unwrap_or(0);
    let total = mine.saturating_add(i64::try_from(slice).unwrap_or(i64::MAX));
    serde_json::json!({
        "metadata": {"resourceVersion": resource_version},
        "status": {"usage": {replica: {"claimed": {key: total}}}}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(entries: &[(&str, &str, i64)]) -> BTreeMap<String, ReplicaUsage> {
        let mut m: BTreeMap<String, ReplicaUsage> = BTreeMap::new();
        for (replica, key, n) in entries {
            m.entry(replica.to_string()).or_default().claimed.insert(key.to_string(), *n);
        }
        m
    }

    #[test]
    fn slices_never_add_up_to_more_than_the_limit() {
        // Two replicas taking turns claim everything, and never more.
        let mut u = usage(&[]);
        let mut total = 0;
        for turn in 0.. {
            let replica = if turn % 2 == 0 { "a" } else { "b" };
            let Some(slice) = next_slice(&u, TASK_KEY, 50) else { break };
            assert!((1..=MAX_SLICE).contains(&slice));
            let mine = u.get(replica).and_then(|r| r.claimed.get(TASK_KEY)).copied().unwrap_or(0);
            u.entry(replica.into()).or_default().claimed.insert(TASK_KEY.into(), mine + slice as i64);
            total += slice;
            assert!(turn < 100);
        }
        assert_eq!(total, 50);
        assert_eq!(claimed(&u, TASK_KEY), 50);
        assert_eq!(next_slice(&u, TASK_KEY, 50), None);
        assert_eq!(next_slice(&usage(&[("a", TASK_KEY, 60)]), TASK_KEY, 50), None, "over-claimed: nothing left");
        assert_eq!(next_slice(&u, "grant/g", 2), Some(1), "keys are independent");
    }

    #[test]
    fn claims_are_patches_of_the_replicas_own_entry_with_a_precondition() {
        let u = usage(&[("a", TASK_KEY, 4), ("b", TASK_KEY, 8)]);
        let p = claim_patch(&u, "a", TASK_KEY, 3, "42");
        assert_eq!(p["metadata"]["resourceVersion"], "42");
        assert_eq!(p["status"]["usage"]["a"]["claimed"]["task"], 7);
        assert!(p["status"]["usage"].get("b").is_none(), "another replica's entry is never written");
    }
}
