//! What an AgentTask should have: its phase (from its agent, its ttl and whether
//! it is completed), the anchor Secret that its tokens are bound to while it is
//! Active, the status that describes them and when to look again; and the
//! TokenRequest that mints a token for it. Pure: the controller fetches, calls
//! [`plan`], applies what it returns.
//!
//! Revocation works through the apiserver itself: a token requested with
//! [`token_request`] names the anchor Secret (by uid) as its bound object, and
//! the apiserver stops authenticating it as soon as that Secret is gone. So the
//! credential of a task ends when agentid deletes the anchor, not when the token
//! says it expires.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Resource;
use serde_json::Value;

use crate::api::duration::{self, DurationError};
use crate::api::{
    AGENT_LABEL, AgentIdentity, AgentTask, AgentTaskStatus, MANAGED_BY, MANAGED_BY_LABEL, MIN_TASK_TTL_SECS, TaskPhase,
};
use crate::core::conditions::{self, CondUpdate, READY};
use crate::core::grant::{CONFLICT_RETRY, RESYNC, requeue_after};
use crate::core::identity::{PlanError, PlannedEvent, is_owned_by};
use crate::core::names;

/// Reasons used in conditions and Events (stable: dashboards and alerts match on them).
pub mod reason {
    pub const ACTIVE: &str = "Active";
    pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
    pub const AGENT_NOT_READY: &str = "AgentNotReady";
    pub const AGENT_SUSPENDED: &str = "AgentSuspended";
    pub const AUDIENCE_NOT_ALLOWED: &str = "AudienceNotAllowed";
    pub const ANCHOR_CONFLICT: &str = "AnchorConflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const COMPLETED: &str = "Completed";
    pub const EXPIRED: &str = "Expired";
    pub const TASK_ACTIVATED: &str = "TaskActivated";
    pub const TASK_COMPLETED: &str = "TaskCompleted";
    pub const TASK_EXPIRED: &str = "TaskExpired";
    pub const TASK_REVOKED: &str = "TaskRevoked";
    pub const TASK_PENDING: &str = "TaskPending";
}

/// Label naming the AgentTask an object was created for.
pub const TASK_LABEL: &str = "agentid.dev/task";
/// Prefix of the anchor Secret of a task.
pub const ANCHOR_NAME_PREFIX: &str = "agentid-task-";
/// Type of anchor Secrets. They hold no data: only their existence (and uid) matters.
pub const ANCHOR_SECRET_TYPE: &str = "agentid.dev/task-anchor";
/// Shortest token the apiserver issues (TokenRequest refuses `expirationSeconds` below it).
pub const MIN_TOKEN_SECS: i64 = MIN_TASK_TTL_SECS as i64;

/// Name of the anchor Secret of a task: `agentid-task-<task>`, shortened with a hash when it would
/// exceed 253 characters.
pub fn anchor_name(task: &str) -> String {
    names::derived_name(ANCHOR_NAME_PREFIX, task)
}

/// Labels of the anchor Secret of a task.
pub fn task_labels(agent: &str, task: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (AGENT_LABEL.to_string(), names::label_value(agent)),
        (TASK_LABEL.to_string(), names::label_value(task)),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

/// Whether `task` is for `agent`: same namespace, and its agentRef names it.
pub fn is_for_agent(task: &AgentTask, agent: &AgentIdentity) -> bool {
    task.metadata.namespace == agent.metadata.namespace
        && agent.metadata.name.as_deref() == Some(task.spec.agent_ref.name.as_str())
}

/// The task's audiences that `agent` does not have, in the task's order.
pub fn audiences_not_allowed<'a>(task: &'a AgentTask, agent: &AgentIdentity) -> Vec<&'a str> {
    task.spec.audiences.iter().filter(|a| !agent.spec.audiences.contains(a)).map(String::as_str).collect()
}

/// `t` without its fraction of a second: Kubernetes stores times in whole seconds, and a time this
/// plan writes must read back equal.
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// When the task first became Active, if it has: `status.issuedAt`, else the creation of an anchor
/// that is this task's (its status may not have been written, or read back, yet).
pub fn issued_at(task: &AgentTask, anchor: Option<&Secret>) -> Option<Timestamp> {
    let uid = task.metadata.uid.as_deref().unwrap_or_default();
    task.status
        .as_ref()
        .and_then(|s| s.issued_at.as_ref())
        .or_else(|| {
            anchor
                .filter(|a| !uid.is_empty() && is_owned_by(&a.metadata, uid))
                .and_then(|a| a.metadata.creation_timestamp.as_ref())
        })
        .map(|t| t.0)
}

/// The phase of a task at `now`, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub phase: TaskPhase,
    /// Reason of the `Ready` condition.
    pub reason: &'static str,
    pub message: String,
    /// When the task first became Active (now, if it becomes Active for the first time).
    pub issued_at: Option<Timestamp>,
    /// `issued_at` plus the ttl.
    pub expires_at: Option<Timestamp>,
}

/// The phase of a task at `now`, given its agent (`None`: no AgentIdentity of that name in the task's
/// namespace) and when it first became Active (`issued`, see [`issued_at`]).
///
/// In order: Completed and Expired are final (a task recorded in either stays there); `completed: true`
/// makes it Completed; at or after `expiresAt` (issuedAt + ttl) it is Expired, whatever its agent; an
/// absent agent makes it Pending (`AgentNotFound`); an audience the agent does not have Pending
/// (`AudienceNotAllowed`); a suspended agent Revoked (`AgentSuspended`); an agent whose own ServiceAccount
/// is not in place Pending (`AgentNotReady`), so no anchor exists for a ServiceAccount that is not the
/// agent's; otherwise Active. A task becomes Active again after Revoked or Pending only before its expiry,
/// which counts from its first activation: suspending the agent does not extend the task.
pub fn decide(task: &AgentTask, agent: Option<&AgentIdentity>, issued: Option<Timestamp>, now: Timestamp) -> Decision {
    let agent_name = &task.spec.agent_ref.name;
    let namespace = task.metadata.namespace.as_deref().unwrap_or_default();
    let previous = task.status.as_ref().and_then(|s| s.phase);
    let ttl = duration::parse(&task.spec.ttl).ok().and_then(|d| SignedDuration::try_from(d).ok());
    let expiry = |issued: Timestamp| ttl.and_then(|ttl| issued.checked_add(ttl).ok());
    let expires = issued.and_then(expiry);
    let decision = |phase, reason, message: String| Decision { phase, reason, message, issued_at: issued, expires_at: expires };
    let completed = || {
        let message = "the task is completed (spec.completed: true): its anchor is deleted, so every token issued for \
                       it is revoked";
        decision(TaskPhase::Completed, reason::COMPLETED, message.to_string())
    };
    let expired = |at: Option<Timestamp>| {
        let at = at.map(|t| t.to_string()).unwrap_or_else(|| "its expiry".to_string());
        let message = format!("the task expired at {at}: its anchor is deleted, so every token issued for it is revoked");
        decision(TaskPhase::Expired, reason::EXPIRED, message)
    };

    match previous {
        Some(TaskPhase::Completed) => return completed(),
        Some(TaskPhase::Expired) => return expired(expires),
        _ => {}
    }
    if task.spec.completed {
        return completed();
    }
    if let Some(at) = expires.filter(|at| now >= *at) {
        return expired(Some(at));
    }
    if ttl.is_none() {
        let message = format!("spec.ttl {:?} is not a duration such as 30m or 2h", task.spec.ttl);
        return decision(TaskPhase::Pending, reason::INVALID_SPEC, message);
    }
    let Some(agent) = agent else {
        let message = format!("AgentIdentity {agent_name} does not exist in namespace {namespace}");
        return decision(TaskPhase::Pending, reason::AGENT_NOT_FOUND, message);
    };
    let not_allowed = audiences_not_allowed(task, agent);
    if !not_allowed.is_empty() {
        let message = format!(
            "audience(s) {} are not among the audiences of AgentIdentity {agent_name}: a task gets no audience its \
             agent does not have",
            not_allowed.join(", ")
        );
        return decision(TaskPhase::Pending, reason::AUDIENCE_NOT_ALLOWED, message);
    }
    if agent.spec.suspended {
        let message =
            format!("AgentIdentity {agent_name} is suspended (spec.suspended: true): the task's tokens are revoked");
        return decision(TaskPhase::Revoked, reason::AGENT_SUSPENDED, message);
    }
    let sa = agent.service_account_name();
    let in_place = agent.status.as_ref().and_then(|s| s.service_account_name.as_deref()) == Some(sa.as_str());
    if !in_place {
        let message = format!(
            "the ServiceAccount {sa} of AgentIdentity {agent_name} is not in place yet (see the agent's Ready condition)"
        );
        return decision(TaskPhase::Pending, reason::AGENT_NOT_READY, message);
    }
    let issued = issued.unwrap_or_else(|| whole_seconds(now));
    let expires = expiry(issued);
    let message = match expires {
        Some(at) => format!("tokens of ServiceAccount {sa} may be issued for the task until {at}"),
        None => format!("tokens of ServiceAccount {sa} may be issued for the task"),
    };
    Decision { phase: TaskPhase::Active, reason: reason::ACTIVE, message, issued_at: Some(issued), expires_at: expires }
}

/// The anchor Secret of a task: no data, immutable, labelled, controlled by the task.
pub fn desired_anchor(task: &AgentTask, owner: OwnerReference) -> Secret {
    let task_name = task.metadata.name.clone().unwrap_or_default();
    Secret {
        metadata: ObjectMeta {
            name: Some(anchor_name(&task_name)),
            namespace: task.metadata.namespace.clone(),
            labels: Some(task_labels(&task.spec.agent_ref.name, &task_name)),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        type_: Some(ANCHOR_SECRET_TYPE.to_string()),
        // Nothing can be put into it later: a revocation handle carries no secret.
        immutable: Some(true),
        ..Default::default()
    }
}

/// Why the controller deleted an anchor (the `reason` label of the `task_revocations` metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The task was completed.
    Completed,
    /// The task's ttl passed.
    Expired,
    /// Its agent was suspended.
    Suspended,
    /// The task was deleted.
    Deleted,
    /// Its agent went away, stopped allowing the task's audiences, or lost its ServiceAccount (Pending).
    AgentChanged,
}

impl Revocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Revocation::Completed => "completed",
            Revocation::Expired => "expired",
            Revocation::Suspended => "suspended",
            Revocation::Deleted => "deleted",
            Revocation::AgentChanged => "agent_changed",
        }
    }

    fn for_phase(phase: TaskPhase) -> Self {
        match phase {
            TaskPhase::Completed => Revocation::Completed,
            TaskPhase::Expired => Revocation::Expired,
            TaskPhase::Revoked => Revocation::Suspended,
            TaskPhase::Pending | TaskPhase::Active => Revocation::AgentChanged,
        }
    }
}

/// What to do with a task's anchor Secret.
#[derive(Debug, Clone, PartialEq)]
pub enum AnchorAction {
    /// Nothing: it exists and is this task's, or it must not exist and does not, or a Secret of its name
    /// is not this task's (never touched).
    Keep,
    /// Create it.
    Apply(Box<Secret>),
    /// Delete it (it exists and is this task's): every token bound to it stops authenticating.
    Delete(Revocation),
}

/// Everything the controller needs to bring one AgentTask in line.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPlan {
    pub phase: TaskPhase,
    /// Name of the task's anchor Secret.
    pub anchor_name: String,
    pub anchor: AnchorAction,
    /// Status to write once the action succeeded.
    pub status: AgentTaskStatus,
    /// When the task expires; the phase changes then without any watch event.
    pub expires_at: Option<Timestamp>,
    /// When to reconcile again: at expiry, within `MIN_REQUEUE..=RESYNC`.
    pub requeue_after: Duration,
    /// Events to publish: one when the phase changes.
    pub events: Vec<PlannedEvent>,
}

fn event_for(phase: TaskPhase, message: &str) -> PlannedEvent {
    let (reason, warning) = match phase {
        TaskPhase::Active => (reason::TASK_ACTIVATED, false),
        TaskPhase::Completed => (reason::TASK_COMPLETED, false),
        TaskPhase::Expired => (reason::TASK_EXPIRED, false),
        TaskPhase::Revoked => (reason::TASK_REVOKED, true),
        TaskPhase::Pending => (reason::TASK_PENDING, true),
    };
    PlannedEvent { warning, reason, message: message.to_string() }
}

/// Decides what an AgentTask needs, given its agent (if it exists), the Secret of its anchor's name (if
/// it exists) and the current time.
pub fn plan(
    task: &AgentTask,
    agent: Option<&AgentIdentity>,
    anchor: Option<&Secret>,
    now: Timestamp,
) -> Result<TaskPlan, PlanError> {
    let name = task.metadata.name.as_deref().ok_or(PlanError::MissingField("metadata.name"))?;
    let namespace = task.metadata.namespace.as_deref().ok_or(PlanError::MissingField("metadata.namespace"))?;
    let uid = task.metadata.uid.as_deref().ok_or(PlanError::MissingField("metadata.uid"))?;
    let owner = task.controller_owner_ref(&()).ok_or(PlanError::MissingField("metadata.uid"))?;
    let anchor_name = anchor_name(name);
    let ours = anchor.filter(|a| is_owned_by(&a.metadata, uid));
    let known_issued = issued_at(task, anchor);
    let mut d = decide(task, agent, known_issued, now);

    let action = match (d.phase, anchor) {
        (TaskPhase::Active, Some(_)) if ours.is_none() => {
            // Never take over (or bind tokens to) a Secret agentid did not create for this task.
            d = Decision {
                phase: TaskPhase::Pending,
                reason: reason::ANCHOR_CONFLICT,
                message: format!(
                    "Secret {namespace}/{anchor_name} already exists and is not this task's anchor; agentid leaves \
                     it untouched. Delete or rename it"
                ),
                issued_at: known_issued,
                // Not activated by this decision: an expiry only if it was activated before.
                expires_at: known_issued.and(d.expires_at),
            };
            AnchorAction::Keep
        }
        (TaskPhase::Active, Some(_)) => AnchorAction::Keep,
        (TaskPhase::Active, None) => AnchorAction::Apply(Box::new(desired_anchor(task, owner))),
        (phase, _) if ours.is_some() => AnchorAction::Delete(Revocation::for_phase(phase)),
        _ => AnchorAction::Keep,
    };

    let requeue = if d.phase.is_terminal() {
        RESYNC
    } else {
        let r = requeue_after(d.expires_at.filter(|at| *at > now), now);
        if d.reason == reason::ANCHOR_CONFLICT { r.min(CONFLICT_RETRY) } else { r }
    };
    let previous = task.status.clone().unwrap_or_default();
    let events = if previous.phase == Some(d.phase) { Vec::new() } else { vec![event_for(d.phase, &d.message)] };
    let active = d.phase == TaskPhase::Active;
    let ready = CondUpdate::new(READY, active, d.reason, d.message);
    let generation = task.metadata.generation;
    let status = AgentTaskStatus {
        phase: Some(d.phase),
        issued_at: d.issued_at.map(Time),
        expires_at: d.expires_at.map(Time),
        anchor: active.then(|| anchor_name.clone()),
        conditions: conditions::merge(&previous.conditions, &[ready], generation, now),
        observed_generation: generation,
    };
    Ok(TaskPlan {
        phase: d.phase,
        anchor_name,
        anchor: action,
        status,
        expires_at: d.expires_at,
        requeue_after: requeue,
        events,
    })
}

/// The body of a JSON merge patch that writes `status` as a whole: fields it leaves out are removed
/// (a merge patch keeps every key it does not mention, so `anchor` would outlive an Active task).
pub fn status_patch(status: &AgentTaskStatus) -> Value {
    let mut value = serde_json::to_value(status).unwrap_or_else(|_| Value::Object(Default::default()));
    if let Value::Object(map) = &mut value {
        for key in ["phase", "issuedAt", "expiresAt", "anchor", "conditions", "observedGeneration"] {
            map.entry(key).or_insert(Value::Null);
        }
    }
    serde_json::json!({ "status": value })
}

/// Why no token may be requested for a task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("AgentTask {task} is not Active (phase {phase})")]
    NotActive { task: String, phase: String },
    #[error("AgentTask {task} expired at {at}")]
    Expired { task: String, at: Timestamp },
    #[error("AgentTask {task} is for AgentIdentity {want}, not {got}")]
    WrongAgent { task: String, want: String, got: String },
    #[error("AgentIdentity {0} is suspended")]
    AgentSuspended(String),
    #[error("audience {audience:?} is not among the audiences of AgentIdentity {agent}")]
    AudienceNotAllowed { agent: String, audience: String },
    #[error("Secret {secret} is not the anchor of AgentTask {task}")]
    NotTheAnchor { task: String, secret: String },
    #[error("anchor Secret {0} has no uid (it must be read from the apiserver)")]
    AnchorWithoutUid(String),
    #[error("invalid tokenTTL of AgentIdentity {agent}: {error}")]
    InvalidTokenTtl { agent: String, error: DurationError },
}

/// The TokenRequest (for the agent's ServiceAccount) that mints a token for an Active task: bound to the
/// task's audiences and to its anchor Secret (by name and uid), so it stops authenticating when agentid
/// deletes the anchor at the task's end.
///
/// `expirationSeconds` is the agent's tokenTTL, shortened to what is left of the task, but never below
/// 600 (the apiserver refuses shorter tokens): such a token may claim to outlive `expiresAt` by a few
/// minutes on paper, but the anchor's deletion at the task's end revokes it anyway.
pub fn token_request(
    task: &AgentTask,
    agent: &AgentIdentity,
    anchor: &Secret,
    now: Timestamp,
) -> Result<TokenRequest, TaskError> {
    let task_name = task.metadata.name.clone().unwrap_or_default();
    let agent_name = agent.metadata.name.clone().unwrap_or_default();
    let status = task.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    if phase != TaskPhase::Active {
        return Err(TaskError::NotActive { task: task_name, phase: format!("{phase:?}") });
    }
    let Some(expires_at) = status.expires_at.map(|t| t.0) else {
        return Err(TaskError::NotActive { task: task_name, phase: "Active without expiresAt".into() });
    };
    if now >= expires_at {
        return Err(TaskError::Expired { task: task_name, at: expires_at });
    }
    if task.metadata.namespace != agent.metadata.namespace || task.spec.agent_ref.name != agent_name {
        let got = format!("{}/{agent_name}", agent.metadata.namespace.as_deref().unwrap_or_default());
        return Err(TaskError::WrongAgent { task: task_name, want: task.spec.agent_ref.name.clone(), got });
    }
    if agent.spec.suspended {
        return Err(TaskError::AgentSuspended(agent_name));
    }
    if let Some(audience) = audiences_not_allowed(task, agent).first() {
        return Err(TaskError::AudienceNotAllowed { agent: agent_name, audience: audience.to_string() });
    }
    let secret = anchor.metadata.name.clone().unwrap_or_default();
    let task_uid = task.metadata.uid.as_deref().unwrap_or_default();
    if secret != anchor_name(&task_name)
        || anchor.metadata.namespace != task.metadata.namespace
        || task_uid.is_empty()
        || !is_owned_by(&anchor.metadata, task_uid)
    {
        return Err(TaskError::NotTheAnchor { task: task_name, secret });
    }
    let Some(uid) = anchor.metadata.uid.clone().filter(|u| !u.is_empty()) else {
        return Err(TaskError::AnchorWithoutUid(secret));
    };
    let agent_ttl = duration::parse(&agent.spec.token_ttl)
        .map_err(|error| TaskError::InvalidTokenTtl { agent: agent_name.clone(), error })?;
    let agent_ttl = i64::try_from(agent_ttl.as_secs()).unwrap_or(i64::MAX);
    let left = now.duration_until(expires_at).as_secs();
    let expiration_seconds = agent_ttl.min(left).max(MIN_TOKEN_SECS);
    Ok(TokenRequest {
        metadata: ObjectMeta::default(),
        spec: Some(TokenRequestSpec {
            audiences: Some(task.spec.audiences.clone()),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Secret".to_string()),
                name: Some(secret),
                uid: Some(uid),
            }),
            expiration_seconds: Some(expiration_seconds),
        }),
        status: None,
    })
}
