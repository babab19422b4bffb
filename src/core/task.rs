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

use crate::api::duration::{self, DurationError};
use crate::api::{
    AGENT_LABEL, AgentIdentity, AgentTask, AgentTaskStatus, MANAGED_BY, MANAGED_BY_LABEL, MIN_TASK_TTL_SECS, TaskPhase,
};
use crate::core::conditions::{self, CondUpdate, READY};
use crate::core::grant::CONFLICT_RETRY;
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
    let recorded = task.status.as_ref().and_then(|s| s.issued_at.as_ref()).map(|t| t.0);
    let anchored = anchor
        .filter(|a| !uid.is_empty() && is_owned_by(&a.metadata, uid))
        .and_then(|a| a.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    // Whoever can write status must not be able to move the start (and so the end) of a task later
    // than its anchor proves: take the earlier of the two.
    match (recorded, anchored) {
        (Some(r), Some(a)) => Some(r.min(a)),
        (r, a) => r.or(a),
    }
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

/// `spec.ttl` as a duration (`None` when it does not parse).
fn ttl(task: &AgentTask) -> Option<SignedDuration> {
    duration::parse(&task.spec.ttl).ok().and_then(|d| SignedDuration::try_from(d).ok())
}

/// When a task that became Active at `issued` ends: `issued` + `spec.ttl` (`None` without a parseable ttl).
pub fn end_after(task: &AgentTask, issued: Timestamp) -> Option<Timestamp> {
    ttl(task).and_then(|ttl| issued.checked_add(ttl).ok())
}

/// `recorded` (a status's `expiresAt`), bounded by the end its ttl gives from `issued`: a status written by
/// someone other than the controller cannot stretch a task.
pub fn bounded_end(task: &AgentTask, issued: Option<Timestamp>, recorded: Timestamp) -> Timestamp {
    issued.and_then(|at| end_after(task, at)).map_or(recorded, |end| end.min(recorded))
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
    let ttl = ttl(task);
    let expiry = |issued: Timestamp| end_after(task, issued);
    let expires = issued.and_then(expiry);
    let decision =
        |phase, reason, message: String| Decision { phase, reason, message, issued_at: issued, expires_at: expires };
    let completed = || {
        let message = "the task is completed (spec.completed: true): its anchor is deleted, so every token issued for \
                       it is revoked";
        decision(TaskPhase::Completed, reason::COMPLETED, message.to_string())
    };
    let expired = |at: Option<Timestamp>| {
        let at = at.map(|t| t.to_string()).unwrap_or_else(|| "its expiry".to_string());
        let message =
            format!("the task expired at {at}: its anchor is deleted, so every token issued for it is revoked");
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
    if !agent.service_account_in_place() {
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
    /// Reason of the `Ready` condition (for example `AnchorConflict`).
    pub reason: &'static str,
    /// Name of the task's anchor Secret.
    pub anchor_name: String,
    pub anchor: AnchorAction,
    /// Status to write once the action succeeded.
    pub status: AgentTaskStatus,
    /// When the task expires; the phase changes then without any watch event.
    pub expires_at: Option<Timestamp>,
    /// When the phase changes by the passing of time alone (its expiry, while it is not final): the controller
    /// looks at the task again then. Everything else it depends on (the task, its agent, its anchor) is watched.
    pub wake_at: Option<Timestamp>,
    /// When to look again sooner than that: after an anchor conflict (a foreign Secret triggers no watch event
    /// of ours), [`CONFLICT_RETRY`].
    pub retry_after: Option<Duration>,
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

    let wake_at = d.expires_at.filter(|at| !d.phase.is_terminal() && *at > now);
    let retry_after = (d.reason == reason::ANCHOR_CONFLICT).then_some(CONFLICT_RETRY);
    let previous = task.status.clone().unwrap_or_default();
    let events = if previous.phase == Some(d.phase) { Vec::new() } else { vec![event_for(d.phase, &d.message)] };
    let active = d.phase == TaskPhase::Active;
    let ready = CondUpdate::new(READY, active, d.reason, d.message.clone());
    let generation = task.metadata.generation;
    let status = AgentTaskStatus {
        phase: Some(d.phase),
        issued_at: d.issued_at.map(Time),
        expires_at: d.expires_at.map(Time),
        anchor: active.then(|| anchor_name.clone()),
        conditions: conditions::merge(&previous.conditions, &[ready], generation, now),
        observed_generation: generation,
        // Written by the decision point's replicas, never by the controller.
        usage: previous.usage.clone(),
    };
    Ok(TaskPlan {
        phase: d.phase,
        reason: d.reason,
        anchor_name,
        anchor: action,
        status,
        expires_at: d.expires_at,
        wake_at,
        retry_after,
        events,
    })
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
    let Some(recorded_end) = status.expires_at.map(|t| t.0) else {
        return Err(TaskError::NotActive { task: task_name, phase: "Active without expiresAt".into() });
    };
    // The end the anchor proves (its creation + spec.ttl) bounds the one in the status, which whoever may
    // write agenttasks/status could have moved later.
    let expires_at = bounded_end(task, issued_at(task, Some(anchor)), recorded_end);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentIdentityStatus, AgentRef, AgentTaskSpec};
    use crate::core::names::{MAX_LABEL_VALUE_LEN, MAX_NAME_LEN};

    const T0: i64 = 1_800_000_000;
    const AUDIENCE: &str = "https://tools.example.com";

    fn t(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn agent(name: &str) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.spec.audiences = vec![AUDIENCE.into(), "https://payments.example.com".into()];
        a.spec.token_ttl = "30m".into();
        a.metadata.uid = Some(format!("uid-agent-{name}"));
        a.status =
            Some(AgentIdentityStatus { service_account_name: Some(format!("agent-{name}")), ..Default::default() });
        a
    }

    fn task(name: &str, ttl: &str) -> AgentTask {
        let mut task = AgentTask::new(
            name,
            AgentTaskSpec {
                agent_ref: AgentRef { name: "triage".into() },
                purpose: "triage issue 1234".into(),
                audiences: vec![AUDIENCE.into()],
                ttl: ttl.into(),
                completed: false,
            },
        );
        task.metadata.namespace = Some("agents".into());
        task.metadata.uid = Some(format!("uid-task-{name}"));
        task.metadata.generation = Some(1);
        task
    }

    fn plan_at(task: &AgentTask, agent: Option<&AgentIdentity>, anchor: Option<&Secret>, now: Timestamp) -> TaskPlan {
        plan(task, agent, anchor, now).unwrap()
    }

    /// The anchor the apiserver would hold after creating the planned one at `created`.
    fn created_anchor(p: &TaskPlan, created: Timestamp) -> Secret {
        let AnchorAction::Apply(desired) = &p.anchor else { panic!("expected Apply, got {:?}", p.anchor) };
        let mut s = desired.as_ref().clone();
        s.metadata.uid = Some("uid-anchor-1".into());
        s.metadata.creation_timestamp = Some(Time(created));
        s
    }

    /// Runs `plan` and records its status, as the controller does after applying it.
    fn step(task: &mut AgentTask, agent: Option<&AgentIdentity>, anchor: Option<&Secret>, now: Timestamp) -> TaskPlan {
        let p = plan_at(task, agent, anchor, now);
        task.status = Some(p.status.clone());
        p
    }

    fn ready(p: &TaskPlan) -> (String, String, String) {
        let c = conditions::get(&p.status.conditions, READY).unwrap();
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn task_for_a_ready_agent_becomes_active_with_an_anchor() {
        let tk = task("fix-1234", "1h");
        let a = agent("triage");
        let p = plan_at(&tk, Some(&a), None, t(0));
        assert_eq!(p.phase, TaskPhase::Active);
        assert_eq!(p.anchor_name, "agentid-task-fix-1234");
        let AnchorAction::Apply(anchor) = &p.anchor else { panic!("expected Apply") };
        let meta = &anchor.metadata;
        assert_eq!(meta.name.as_deref(), Some("agentid-task-fix-1234"));
        assert_eq!(meta.namespace.as_deref(), Some("agents"));
        let labels = meta.labels.as_ref().unwrap();
        assert_eq!(labels[AGENT_LABEL], "triage");
        assert_eq!(labels[TASK_LABEL], "fix-1234");
        assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str(), owner.api_version.as_str()),
            ("AgentTask", "fix-1234", "uid-task-fix-1234", "agentid.dev/v1alpha1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(anchor.type_.as_deref(), Some(ANCHOR_SECRET_TYPE));
        assert_eq!((anchor.data.as_ref(), anchor.string_data.as_ref()), (None, None), "an anchor holds no data");
        assert_eq!(anchor.immutable, Some(true));

        assert_eq!(p.status.phase, Some(TaskPhase::Active));
        assert_eq!(p.status.issued_at, Some(Time(t(0))));
        assert_eq!(p.status.expires_at, Some(Time(t(3600))));
        assert_eq!(p.expires_at, Some(t(3600)));
        assert_eq!(p.status.anchor.as_deref(), Some("agentid-task-fix-1234"));
        assert_eq!(p.status.observed_generation, Some(1));
        let (status, reason, message) = ready(&p);
        assert_eq!((status.as_str(), reason.as_str()), ("True", reason::ACTIVE));
        assert!(message.contains("agent-triage"), "{message}");
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].reason, reason::TASK_ACTIVATED);
        assert!(!p.events[0].warning);
        assert_eq!(p.wake_at, Some(t(3600)), "wakes up at expiry");
        let p = plan_at(&task("short", "10m"), Some(&a), None, t(0));
        assert_eq!(p.wake_at, Some(t(600)), "wakes up at expiry");
    }

    #[test]
    fn issued_at_is_whole_seconds_so_it_reads_back_equal() {
        let now = t(0).checked_add(SignedDuration::from_millis(750)).unwrap();
        let p = plan_at(&task("fix", "10m"), Some(&agent("triage")), None, now);
        assert_eq!(p.status.issued_at, Some(Time(t(0))));
        assert_eq!(p.status.expires_at, Some(Time(t(600))));
    }

    #[test]
    fn plan_is_idempotent_and_keeps_the_anchor() {
        let mut tk = task("fix", "1h");
        let a = agent("triage");
        let first = step(&mut tk, Some(&a), None, t(0));
        let anchor = created_anchor(&first, t(0));
        let second = plan_at(&tk, Some(&a), Some(&anchor), t(5));
        assert_eq!(second.anchor, AnchorAction::Keep);
        assert!(second.events.is_empty());
        assert_eq!(second.status, first.status, "same input, same status: no status write needed");
        assert_eq!(plan_at(&tk, Some(&a), Some(&anchor), t(5)), second);
    }

    #[test]
    fn issued_at_is_kept_once_set() {
        let mut tk = task("fix", "1h");
        let a = agent("triage");
        step(&mut tk, Some(&a), None, t(0));
        // Even without its anchor (deleted by someone), the task keeps its original expiry.
        let p = plan_at(&tk, Some(&a), None, t(2000));
        assert!(matches!(p.anchor, AnchorAction::Apply(_)));
        assert_eq!((p.status.issued_at, p.status.expires_at), (Some(Time(t(0))), Some(Time(t(3600)))));
        assert_eq!(p.wake_at, Some(t(3600)));
    }

    #[test]
    fn an_owned_anchor_tells_when_the_task_was_issued_if_the_status_does_not() {
        let tk = task("fix", "1h");
        let a = agent("triage");
        let first = plan_at(&tk, Some(&a), None, t(0));
        let anchor = created_anchor(&first, t(1));
        // The status write was lost (or is not read back yet): the anchor's creation is the activation.
        let p = plan_at(&tk, Some(&a), Some(&anchor), t(30));
        assert_eq!(p.anchor, AnchorAction::Keep);
        assert_eq!((p.status.issued_at, p.status.expires_at), (Some(Time(t(1))), Some(Time(t(3601)))));
        // A Secret that is not this task's says nothing about it.
        let mut foreign = anchor.clone();
        foreign.metadata.owner_references = None;
        assert_eq!(issued_at(&tk, Some(&foreign)), None);
    }

    #[test]
    fn expiry_boundary_is_exact_and_revokes() {
        let mut tk = task("fix", "10m");
        let a = agent("triage");
        let first = step(&mut tk, Some(&a), None, t(0));
        let anchor = created_anchor(&first, t(0));
        let before = plan_at(&tk, Some(&a), Some(&anchor), t(599));
        assert_eq!((before.phase, before.anchor.clone()), (TaskPhase::Active, AnchorAction::Keep));
        assert_eq!(before.wake_at, Some(t(600)));
        let at = plan_at(&tk, Some(&a), Some(&anchor), t(600));
        assert_eq!(at.phase, TaskPhase::Expired);
        assert_eq!(at.anchor, AnchorAction::Delete(Revocation::Expired));
        assert_eq!(at.status.anchor, None);
        assert_eq!(at.status.expires_at, Some(Time(t(600))));
        let (status, reason, message) = ready(&at);
        assert_eq!((status.as_str(), reason.as_str()), ("False", reason::EXPIRED));
        assert!(message.contains("2027-01-15T08:10:00Z"), "{message}");
        assert_eq!(at.events[0].reason, reason::TASK_EXPIRED);
        assert_eq!(at.wake_at, None, "final: nothing to wake for");
    }

    #[test]
    fn terminal_phases_stay_terminal() {
        let a = agent("triage");
        // Expired stays Expired, even if the clock (or a restored status) says otherwise.
        let mut tk = task("fix", "10m");
        step(&mut tk, Some(&a), None, t(0));
        step(&mut tk, Some(&a), None, t(600));
        let p = plan_at(&tk, Some(&a), None, t(10));
        assert_eq!((p.phase, p.anchor), (TaskPhase::Expired, AnchorAction::Keep));
        assert!(p.events.is_empty());
        // Completed stays Completed, whatever happens to spec.completed or the agent.
        let mut tk = task("done", "1h");
        step(&mut tk, Some(&a), None, t(0));
        tk.spec.completed = true;
        assert_eq!(step(&mut tk, Some(&a), None, t(1)).phase, TaskPhase::Completed);
        tk.spec.completed = false;
        assert_eq!(plan_at(&tk, Some(&a), None, t(2)).phase, TaskPhase::Completed);
        assert_eq!(plan_at(&tk, None, None, t(2)).phase, TaskPhase::Completed);
        assert_eq!(plan_at(&tk, Some(&a), None, t(7200)).phase, TaskPhase::Completed, "no later Expired");
    }

    #[test]
    fn completing_the_task_deletes_its_anchor() {
        let mut tk = task("fix", "1h");
        let a = agent("triage");
        let first = step(&mut tk, Some(&a), None, t(0));
        let anchor = created_anchor(&first, t(0));
        tk.spec.completed = true;
        tk.metadata.generation = Some(2);
        let p = plan_at(&tk, Some(&a), Some(&anchor), t(60));
        assert_eq!(p.phase, TaskPhase::Completed);
        assert_eq!(p.anchor, AnchorAction::Delete(Revocation::Completed));
        assert_eq!(p.status.anchor, None);
        assert_eq!(p.status.issued_at, Some(Time(t(0))), "the record of the task stays");
        assert_eq!(p.status.observed_generation, Some(2));
        assert_eq!(ready(&p).1, reason::COMPLETED);
        assert_eq!(p.events[0].reason, reason::TASK_COMPLETED);
        assert!(!p.events[0].warning);
        // Completed before it ever became Active: Completed, never issued.
        let mut never = task("never", "1h");
        never.spec.completed = true;
        let p = plan_at(&never, None, None, t(0));
        assert_eq!((p.phase, p.anchor, p.status.issued_at), (TaskPhase::Completed, AnchorAction::Keep, None));
    }

    #[test]
    fn missing_agent_is_pending_without_anchor() {
        let p = plan_at(&task("fix", "1h"), None, None, t(0));
        assert_eq!((p.phase, p.anchor.clone()), (TaskPhase::Pending, AnchorAction::Keep));
        let (status, reason, message) = ready(&p);
        assert_eq!((status.as_str(), reason.as_str()), ("False", reason::AGENT_NOT_FOUND));
        assert!(message.contains("triage") && message.contains("agents"), "{message}");
        assert_eq!(
            (p.status.issued_at.clone(), p.status.expires_at.clone(), p.status.anchor.clone()),
            (None, None, None)
        );
        assert_eq!(p.events[0].reason, reason::TASK_PENDING);
        assert!(p.events[0].warning);
        assert_eq!(p.wake_at, None, "pending: its agent's change wakes it");
    }

    #[test]
    fn agent_deleted_while_active_removes_the_anchor_but_keeps_the_expiry() {
        let mut tk = task("fix", "1h");
        let a = agent("triage");
        let anchor = created_anchor(&step(&mut tk, Some(&a), None, t(0)), t(0));
        let p = plan_at(&tk, None, Some(&anchor), t(2000));
        assert_eq!(p.phase, TaskPhase::Pending);
        assert_eq!(p.anchor, AnchorAction::Delete(Revocation::AgentChanged));
        assert_eq!(p.status.expires_at, Some(Time(t(3600))));
        assert_eq!(p.wake_at, Some(t(3600)), "still expires on time");
        assert_eq!(plan_at(&tk, None, None, t(3600)).phase, TaskPhase::Expired);
    }

    #[test]
    fn audiences_must_be_a_subset_of_the_agents() {
        let mut tk = task("fix", "1h");
        tk.spec.audiences =
            vec![AUDIENCE.into(), "https://evil.example.com".into(), "https://other.example.com".into()];
        let p = plan_at(&tk, Some(&agent("triage")), None, t(0));
        assert_eq!((p.phase, p.anchor.clone()), (TaskPhase::Pending, AnchorAction::Keep));
        let (status, reason, message) = ready(&p);
        assert_eq!((status.as_str(), reason.as_str()), ("False", reason::AUDIENCE_NOT_ALLOWED));
        assert!(
            message.contains("https://evil.example.com") && message.contains("https://other.example.com"),
            "{message}"
        );
        assert!(!message.contains(AUDIENCE), "names only the offending audiences: {message}");
        assert_eq!(p.status.issued_at, None);
        // The agent's own audiences, in any order and any subset, are fine.
        tk.spec.audiences = vec!["https://payments.example.com".into(), AUDIENCE.into()];
        assert_eq!(plan_at(&tk, Some(&agent("triage")), None, t(0)).phase, TaskPhase::Active);
    }

    #[test]
    fn agent_narrowing_its_audiences_withdraws_an_active_task() {
        let mut tk = task("fix", "1h");
        let mut a = agent("triage");
        let anchor = created_anchor(&step(&mut tk, Some(&a), None, t(0)), t(0));
        a.spec.audiences = vec!["https://payments.example.com".into()];
        let p = plan_at(&tk, Some(&a), Some(&anchor), t(10));
        assert_eq!((p.phase, p.anchor), (TaskPhase::Pending, AnchorAction::Delete(Revocation::AgentChanged)));
    }

    #[test]
    fn suspension_revokes_and_resumption_restores_before_expiry_only() {
        let mut tk = task("fix", "20m");
        let mut a = agent("triage");
        let anchor = created_anchor(&step(&mut tk, Some(&a), None, t(0)), t(0));
        a.spec.suspended = true;
        let p = step(&mut tk, Some(&a), Some(&anchor), t(100));
        assert_eq!((p.phase, p.anchor.clone()), (TaskPhase::Revoked, AnchorAction::Delete(Revocation::Suspended)));
        let (status, reason, _) = ready(&p);
        assert_eq!((status.as_str(), reason.as_str()), ("False", reason::AGENT_SUSPENDED));
        assert_eq!(p.events[0].reason, reason::TASK_REVOKED);
        assert!(p.events[0].warning);
        assert_eq!(p.status.anchor, None);
        assert_eq!(p.wake_at, Some(t(1200)), "becomes Expired on time while suspended");

        // Resumed before expiry: Active again, a new anchor, the same expiry (suspension does not extend it).
        a.spec.suspended = false;
        let mut resumed = tk.clone();
        let p = step(&mut resumed, Some(&a), None, t(200));
        assert_eq!(p.phase, TaskPhase::Active);
        assert!(matches!(p.anchor, AnchorAction::Apply(_)));
        assert_eq!((p.status.issued_at, p.status.expires_at), (Some(Time(t(0))), Some(Time(t(1200)))));
        assert_eq!(p.events[0].reason, reason::TASK_ACTIVATED);

        // Still suspended at expiry: Expired (final), and resuming changes nothing.
        a.spec.suspended = true;
        let p = step(&mut tk, Some(&a), None, t(1200));
        assert_eq!((p.phase, p.anchor.clone()), (TaskPhase::Expired, AnchorAction::Keep));
        a.spec.suspended = false;
        assert_eq!(plan_at(&tk, Some(&a), None, t(1300)).phase, TaskPhase::Expired);
    }

    #[test]
    fn suspended_before_first_activation_never_starts_the_clock() {
        let mut a = agent("triage");
        a.spec.suspended = true;
        let mut tk = task("fix", "10m");
        let p = step(&mut tk, Some(&a), None, t(0));
        assert_eq!((p.phase, p.status.issued_at.clone()), (TaskPhase::Revoked, None));
        a.spec.suspended = false;
        let p = step(&mut tk, Some(&a), None, t(5000));
        assert_eq!(p.phase, TaskPhase::Active);
        assert_eq!((p.status.issued_at, p.status.expires_at), (Some(Time(t(5000))), Some(Time(t(5600)))));
    }

    #[test]
    fn agent_without_its_own_service_account_gets_no_anchor() {
        let mut a = agent("triage");
        a.status = None;
        let p = plan_at(&task("fix", "1h"), Some(&a), None, t(0));
        assert_eq!((p.phase, p.anchor.clone()), (TaskPhase::Pending, AnchorAction::Keep));
        assert_eq!(ready(&p).1, reason::AGENT_NOT_READY);
        a.status =
            Some(AgentIdentityStatus { service_account_name: Some("someone-elses".into()), ..Default::default() });
        assert_eq!(plan_at(&task("fix", "1h"), Some(&a), None, t(0)).phase, TaskPhase::Pending);
    }

    #[test]
    fn foreign_secret_of_the_anchor_name_is_a_conflict_never_touched() {
        let tk = task("fix", "1h");
        let a = agent("triage");
        let foreign = Secret {
            metadata: ObjectMeta {
                name: Some("agentid-task-fix".into()),
                namespace: Some("agents".into()),
                uid: Some("uid-foreign".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan_at(&tk, Some(&a), Some(&foreign), t(0));
        assert_eq!((p.phase, p.anchor.clone()), (TaskPhase::Pending, AnchorAction::Keep));
        let (status, reason, message) = ready(&p);
        assert_eq!((status.as_str(), reason.as_str()), ("False", reason::ANCHOR_CONFLICT));
        assert!(message.contains("agents/agentid-task-fix"), "{message}");
        assert_eq!(
            (p.status.issued_at.clone(), p.status.expires_at.clone(), p.status.anchor.clone()),
            (None, None, None)
        );
        assert!(p.events[0].warning);
        assert_eq!(p.retry_after, Some(CONFLICT_RETRY));

        // The anchor of another task (say, a deleted and re-created one of the same name) is foreign too.
        let other = created_anchor(&plan_at(&task("fix", "1h"), Some(&a), None, t(0)), t(0));
        let mut recreated = task("fix", "1h");
        recreated.metadata.uid = Some("uid-task-fix-2".into());
        assert_eq!(ready(&plan_at(&recreated, Some(&a), Some(&other), t(0))).1, reason::ANCHOR_CONFLICT);

        // Not Active: a foreign Secret is not deleted either.
        let mut done = tk.clone();
        done.spec.completed = true;
        assert_eq!(plan_at(&done, Some(&a), Some(&foreign), t(0)).anchor, AnchorAction::Keep);
    }

    #[test]
    fn events_only_when_the_phase_changes() {
        let mut tk = task("fix", "10m");
        let mut a = agent("triage");
        let mut reasons = Vec::new();
        let mut record = |p: TaskPlan| reasons.extend(p.events.iter().map(|e| e.reason));
        record(step(&mut tk, None, None, t(0)));
        record(step(&mut tk, None, None, t(1)));
        record(step(&mut tk, Some(&a), None, t(2)));
        record(step(&mut tk, Some(&a), None, t(3)));
        a.spec.suspended = true;
        record(step(&mut tk, Some(&a), None, t(4)));
        record(step(&mut tk, Some(&a), None, t(5)));
        a.spec.suspended = false;
        record(step(&mut tk, Some(&a), None, t(6)));
        record(step(&mut tk, Some(&a), None, t(602)));
        record(step(&mut tk, Some(&a), None, t(700)));
        assert_eq!(
            reasons,
            vec![
                reason::TASK_PENDING,
                reason::TASK_ACTIVATED,
                reason::TASK_REVOKED,
                reason::TASK_ACTIVATED,
                reason::TASK_EXPIRED
            ]
        );
    }

    #[test]
    fn invalid_ttl_is_pending_not_a_panic() {
        let p = plan_at(&task("fix", "forever"), Some(&agent("triage")), None, t(0));
        assert_eq!((p.phase, ready(&p).1.as_str()), (TaskPhase::Pending, reason::INVALID_SPEC));
        assert_eq!(p.anchor, AnchorAction::Keep);
    }

    #[test]
    fn anchor_names_fit_and_label_values_are_valid() {
        assert_eq!(anchor_name("fix"), "agentid-task-fix");
        let long = "x".repeat(250);
        let name = anchor_name(&long);
        assert!(name.len() <= MAX_NAME_LEN && name.starts_with(ANCHOR_NAME_PREFIX), "{name}");
        assert_ne!(name, anchor_name(&format!("{}y", "x".repeat(249))));
        let labels = task_labels(&"a".repeat(100), &long);
        assert!(labels.values().all(|v| v.len() <= MAX_LABEL_VALUE_LEN));
    }

    #[test]
    fn tasks_map_to_their_agent_in_the_same_namespace() {
        let tk = task("fix", "1h");
        assert!(is_for_agent(&tk, &agent("triage")));
        assert!(!is_for_agent(&tk, &agent("other")));
        let mut elsewhere = agent("triage");
        elsewhere.metadata.namespace = Some("other-ns".into());
        assert!(!is_for_agent(&tk, &elsewhere));
    }

    #[test]
    fn objects_without_identity_fields_are_refused_not_panicked() {
        let mut tk = task("fix", "1h");
        tk.metadata.uid = None;
        assert_eq!(plan(&tk, None, None, t(0)), Err(PlanError::MissingField("metadata.uid")));
        tk.metadata.namespace = None;
        assert!(plan(&tk, None, None, t(0)).is_err());
    }

    /// An Active task (as the controller leaves it) and its anchor (as the apiserver returns it).
    fn active(ttl: &str, agent: &AgentIdentity) -> (AgentTask, Secret) {
        let mut tk = task("fix", ttl);
        let anchor = created_anchor(&step(&mut tk, Some(agent), None, t(0)), t(0));
        (tk, anchor)
    }

    #[test]
    fn token_request_binds_the_anchor_and_the_task_audiences() {
        let a = agent("triage");
        let (tk, anchor) = active("1h", &a);
        let tr = token_request(&tk, &a, &anchor, t(60)).unwrap();
        let spec = tr.spec.unwrap();
        assert_eq!(spec.audiences, Some(vec![AUDIENCE.to_string()]), "the task's audiences, not all the agent's");
        assert_eq!(
            spec.bound_object_ref,
            Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some("agentid-task-fix".into()),
                uid: Some("uid-anchor-1".into()),
            })
        );
        assert_eq!(spec.expiration_seconds, Some(1800), "the agent's tokenTTL while the task has longer");
        assert!(tr.status.is_none());
    }

    #[test]
    fn token_lifetime_is_shortened_to_the_task_but_never_below_the_apiserver_minimum() {
        let mut a = agent("triage");
        let (tk, anchor) = active("1h", &a);
        let secs =
            |a: &AgentIdentity, now| token_request(&tk, a, &anchor, now).unwrap().spec.unwrap().expiration_seconds;
        assert_eq!(secs(&a, t(2400)), Some(1200), "20 minutes left");
        assert_eq!(secs(&a, t(1800)), Some(1800), "exactly the tokenTTL left");
        assert_eq!(secs(&a, t(3000)), Some(600), "10 minutes left");
        assert_eq!(secs(&a, t(3400)), Some(MIN_TOKEN_SECS), "less than 10 minutes left: the minimum");
        assert_eq!(secs(&a, t(3599)), Some(MIN_TOKEN_SECS));
        a.spec.token_ttl = "10m".into();
        assert_eq!(secs(&a, t(0)), Some(600));
        a.spec.token_ttl = "soon".into();
        assert!(matches!(token_request(&tk, &a, &anchor, t(0)), Err(TaskError::InvalidTokenTtl { .. })));
    }

    #[test]
    fn no_token_for_a_task_that_is_not_active_or_not_this_agents() {
        let a = agent("triage");
        let (tk, anchor) = active("1h", &a);
        assert!(matches!(token_request(&tk, &a, &anchor, t(3600)), Err(TaskError::Expired { .. })));
        // A status stretched by hand (expiresAt a day out, issuedAt moved too): the anchor's creation and
        // spec.ttl still end the task after an hour, and shorten its tokens accordingly.
        let mut stretched = tk.clone();
        let st = stretched.status.as_mut().unwrap();
        st.expires_at = Some(Time(t(86_400)));
        st.issued_at = Some(Time(t(80_000)));
        assert!(matches!(token_request(&stretched, &a, &anchor, t(3600)), Err(TaskError::Expired { .. })));
        let secs = token_request(&stretched, &a, &anchor, t(2400)).unwrap().spec.unwrap().expiration_seconds;
        assert_eq!(secs, Some(1200));

        let mut done = tk.clone();
        done.spec.completed = true;
        step(&mut done, Some(&a), Some(&anchor), t(10));
        let err = token_request(&done, &a, &anchor, t(11)).unwrap_err();
        assert!(matches!(&err, TaskError::NotActive { phase, .. } if phase == "Completed"), "{err}");
        assert!(matches!(token_request(&task("new", "1h"), &a, &anchor, t(0)), Err(TaskError::NotActive { .. })));

        let mut suspended = a.clone();
        suspended.spec.suspended = true;
        assert_eq!(token_request(&tk, &suspended, &anchor, t(1)), Err(TaskError::AgentSuspended("triage".into())));
        assert!(matches!(token_request(&tk, &agent("other"), &anchor, t(1)), Err(TaskError::WrongAgent { .. })));
        let mut narrowed = a.clone();
        narrowed.spec.audiences = vec!["https://payments.example.com".into()];
        assert!(matches!(token_request(&tk, &narrowed, &anchor, t(1)), Err(TaskError::AudienceNotAllowed { .. })));
    }

    #[test]
    fn no_token_bound_to_a_secret_that_is_not_the_tasks_anchor() {
        let a = agent("triage");
        let (tk, anchor) = active("1h", &a);
        let mut unread = anchor.clone();
        unread.metadata.uid = None;
        assert_eq!(token_request(&tk, &a, &unread, t(1)), Err(TaskError::AnchorWithoutUid("agentid-task-fix".into())));
        let mut foreign = anchor.clone();
        foreign.metadata.owner_references = None;
        assert!(matches!(token_request(&tk, &a, &foreign, t(1)), Err(TaskError::NotTheAnchor { .. })));
        let mut renamed = anchor.clone();
        renamed.metadata.name = Some("some-other-secret".into());
        assert!(matches!(token_request(&tk, &a, &renamed, t(1)), Err(TaskError::NotTheAnchor { .. })));
    }
}
