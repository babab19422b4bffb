use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AgentRef;

/// Shortest task lifetime allowed: the apiserver's minimum token lifetime (TokenRequest refuses less).
pub const MIN_TASK_TTL_SECS: u64 = 600;
/// Longest task lifetime allowed: one task, not a standing credential.
pub const MAX_TASK_TTL_SECS: u64 = 12 * 3600;

/// One task of an agent, with a credential that lives exactly as long as the task: while the task is Active
/// an anchor Secret exists, every token issued for the task is bound to it, and the anchor is deleted (so
/// those tokens stop authenticating) when the task is completed, expires, its agent is suspended, or the
/// task is deleted.
// Each printcolumn repeats `type_ = "string"`: not a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
// printcolumn(...) repeats `type_ = ...` by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "agentid.dev",
    version = "v1alpha1",
    kind = "AgentTask",
    plural = "agenttasks",
    singular = "agenttask",
    shortname = "agt",
    category = "agentid",
    namespaced,
    status = "AgentTaskStatus",
    derive = "PartialEq",
    doc = "AgentTask is one task of an AI agent with a credential scoped to it: tokens issued for the task are bound to an anchor Secret that agentid deletes when the task is completed, expires, its agent is suspended, or the task is deleted, which revokes them.",
    printcolumn(
        name = "Agent",
        type_ = "string",
        json_path = ".spec.agentRef.name",
        description = "AgentIdentity the task is for"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Active, Completed, Expired or Revoked"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the task's credential ends"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(cel)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskSpec {
    /// The AgentIdentity (in the same namespace) that performs the task. Immutable: a task cannot be re-pointed
    /// at another agent.
    #[x_kube(validation = Rule::new("self == oldSelf").message("agentRef is immutable"))]
    pub agent_ref: AgentRef,

    /// What the task is for, for the humans who review it (for example `triage issue #1234`). Not empty.
    #[x_kube(validation = Rule::new("self.trim().size() > 0").message("purpose must say what the task is for"))]
    #[schemars(length(min = 1, max = 1024))]
    pub purpose: String,

    /// Audiences the task's tokens are bound to. At least one, and each must be one of the agent's own
    /// audiences (checked by agentid: the task stays Pending otherwise). Immutable.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(a, a.size() > 0)").message("audiences must not contain empty strings"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("audiences is immutable"))]
    pub audiences: Vec<String>,

    /// How long the task may hold a credential, counted from its first activation, as a duration string (for
    /// example `30m`, `2h`). Between 10m (the apiserver's minimum token lifetime) and 12h (one task, not a
    /// standing credential). Immutable.
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(h|m|s|ms))+$') && duration(self) >= duration('10m') && duration(self) <= duration('12h')").message("ttl must be a duration between 10m and 12h, for example 30m or 2h"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("ttl is immutable"))]
    #[schemars(length(min = 1, max = 64))]
    pub ttl: String,

    /// Set to true when the task is done: its anchor Secret is deleted, which revokes every token issued for
    /// it. A completed task stays completed.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("completed cannot be set back to false: a completed task stays completed"))]
    pub completed: bool,
}

/// Lifecycle phase of an AgentTask.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum TaskPhase {
    /// Not active: its agent is missing or not ready, or does not allow the task's audiences.
    #[default]
    Pending,
    /// In force: its anchor Secret exists and tokens may be issued for it.
    Active,
    /// Done (spec.completed): final.
    Completed,
    /// Its ttl has passed since it was first activated: final.
    Expired,
    /// Withdrawn while its agent is suspended; Active again when the agent is resumed before expiry.
    Revoked,
}

impl TaskPhase {
    /// Whether the phase is final: a task in it never becomes Active again.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskPhase::Completed | TaskPhase::Expired)
    }
}

/// One decision-point replica's share of a task's call limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
pub struct ReplicaUsage {
    /// Calls claimed per budget key (the replica allows at most this many).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub claimed: std::collections::BTreeMap<String, i64>,
    /// Calls allowed per budget key.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub used: std::collections::BTreeMap<String, i64>,
}

/// Observed state of an AgentTask. It never carries a token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentTaskStatus {
    /// Pending, Active, Completed, Expired or Revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,

    /// When the task first became Active: the start of its ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<Time>,

    /// When the task's credential ends: issuedAt plus ttl.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// Name of the anchor Secret that the task's tokens are bound to, while the task is Active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,

    /// Conditions: `Ready` (the task is Active and its anchor is in place).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// Tool calls of the task as the decision point's replicas account for them, by replica: the slices of
    /// the task's call limits each has claimed (`claimed`, never more in all than the limit) and the calls
    /// it allowed (`used`, reported on a timer and when the task ends). Keys: `task` for
    /// `sessionLimits.maxToolCalls`, `grant/<name>` for a grant's `limits.maxCallsPerSession`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub usage: std::collections::BTreeMap<String, ReplicaUsage>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(ttl: &str) -> serde_json::Value {
        json!({"agentRef": {"name": "triage"}, "purpose": "triage issue 1234", "audiences": ["https://tools.example.com"], "ttl": ttl})
    }

    fn refused(new: &serde_json::Value, old: Option<&serde_json::Value>) -> String {
        match AgentTaskSpec::validate_cel(new, old) {
            Ok(()) => panic!("accepted {new}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn ttl_is_between_ten_minutes_and_twelve_hours() {
        for ok in ["10m", "45m", "2h", "12h", "1h30m"] {
            assert!(AgentTaskSpec::validate_cel(&spec(ok), None).is_ok(), "{ok}");
        }
        for bad in ["5m", "9m59s", "12h1s", "13h", "1d", "ten minutes"] {
            assert!(refused(&spec(bad), None).contains("between 10m and 12h"), "{bad}");
        }
    }

    #[test]
    fn agent_ref_audiences_and_ttl_are_immutable() {
        let old = spec("1h");
        let mut other_agent = old.clone();
        other_agent["agentRef"]["name"] = json!("someone-else");
        assert!(refused(&other_agent, Some(&old)).contains("agentRef is immutable"));
        let mut wider = old.clone();
        wider["audiences"] = json!(["https://tools.example.com", "https://payments.example.com"]);
        assert!(refused(&wider, Some(&old)).contains("audiences is immutable"));
        let mut longer = old.clone();
        longer["ttl"] = json!("2h");
        assert!(refused(&longer, Some(&old)).contains("ttl is immutable"));
        // Completing the task is the one change that is allowed ...
        let mut done = old.clone();
        done["completed"] = json!(true);
        assert!(AgentTaskSpec::validate_cel(&done, Some(&old)).is_ok());
        // ... and it cannot be undone.
        let mut reopened = done.clone();
        reopened["completed"] = json!(false);
        assert!(refused(&reopened, Some(&done)).contains("stays completed"));
    }

    #[test]
    fn purpose_must_not_be_blank() {
        let mut blank = spec("1h");
        blank["purpose"] = json!("   ");
        assert!(refused(&blank, None).contains("purpose"));
    }
}
