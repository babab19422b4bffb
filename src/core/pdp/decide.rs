//! The decision: may this agent, in this task, call this tool with this action
//! on this destination at this data sensitivity, now?
//!
//! In order (the first failing check decides, except among grants, see below):
//!
//! 1. the request is well-formed (`bad-request`);
//! 2. the agent exists, and is the one the caller authenticated (same uid: a re-created agent does not
//!    inherit the old one's tokens), `unknown-agent`; it is not suspended (`agent-suspended`) and is Ready
//!    (`agent-not-ready`);
//! 3. the task, when named, exists, is the agent's and is active (`task-not-active`), and is younger than
//!    `sessionLimits.maxDuration` (`session-expired`); an agent with `sessionLimits` must name its task
//!    (`task-required`); `sessionLimits.maxToolCalls` (`limit-exceeded`);
//! 4. the destination, when given, parses (`invalid-destination`);
//! 5. the agent has a grant for the tool (`no-grant-for-tool`). Each grant entry for the tool is then
//!    checked: in force (`grant-not-active`), action (`action-not-granted`), destination
//!    (`destination-not-granted`), sensitivity (`sensitivity-too-high`), `when` (`condition-false`,
//!    `condition-error`), limits (`task-required`, `limit-exceeded`), and finally whether it needs a
//!    human's approval (high risk, or `approval.required`).
//!
//! The call is allowed if any grant allows it outright; otherwise approval is required if any grant would
//! allow it with approval; otherwise it is denied, and the grant that got furthest through the checks is
//! named, with what it lacks, in the explanation.
//!
//! Only allowed calls count: the decision says in [`Decision::charge`] which counters to increment, and the
//! caller increments them. An explanation string is only built for calls that are not allowed.

use std::collections::HashMap;
use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use super::condition::{Activation, AgentView, RequestView, TaskView, sensitivity_name};
use super::destination::Destination;
use super::snapshot::{
    AgentEntry, CompiledPattern, GrantEntry, GrantInactive, Snapshot, TaskEntry, TaskInactive, ToolRule,
};
use crate::api::{DataSensitivity, Risk};

/// Longest name (agent, task, tool, action, argument) a request may carry.
pub const MAX_NAME_LEN: usize = 253;
/// Most argument names a request may carry.
pub const MAX_ARGUMENTS: usize = 256;

/// One question to the decision point.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecisionRequest {
    pub namespace: String,
    /// Name of the calling AgentIdentity.
    pub agent: String,
    /// Uid of the AgentIdentity the caller's credential was issued for, when known.
    pub agent_uid: Option<String>,
    /// The AgentTask the call is part of.
    pub task: Option<String>,
    pub tool: String,
    pub action: String,
    /// Absolute http(s) URL the call goes to, if it goes over the network.
    pub destination: Option<String>,
    /// Sensitivity of the data the call touches; [`DecideConfig::default_sensitivity`] when absent.
    pub sensitivity: Option<DataSensitivity>,
    /// HTTP method or protocol verb, for conditions.
    pub method: Option<String>,
    /// Names (never values) of the call's arguments, for conditions.
    pub argument_names: Vec<String>,
}

/// Counters a decision reads. Only allowed calls are counted (see [`Charge`]).
pub trait Usage {
    /// Allowed calls so far in the task.
    fn task_calls(&self, namespace: &str, task: &str) -> u64;
    /// Allowed calls of the agent under the grant in `minute` (Unix seconds / 60, see [`minute_of`]).
    fn grant_calls_in_minute(&self, namespace: &str, agent: &str, grant: &str, minute: i64) -> u64;
    /// Allowed calls under the grant in the task.
    fn grant_calls_in_task(&self, namespace: &str, task: &str, grant: &str) -> u64;
}

/// The minute a counter of calls per minute is kept for: Unix seconds / 60.
pub fn minute_of(now: Timestamp) -> i64 {
    now.as_second().div_euclid(60)
}

/// Settings of the decision point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideConfig {
    /// Sensitivity a request that names none is judged at.
    pub default_sensitivity: DataSensitivity,
}

impl Default for DecideConfig {
    fn default() -> Self {
        DecideConfig { default_sensitivity: DataSensitivity::Internal }
    }
}

/// What to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allow,
    Deny,
    /// A grant would allow the call once a human approves it.
    ApprovalRequired,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::ApprovalRequired => "approval-required",
        }
    }
}

/// Why a call was not allowed: stable codes for clients, dashboards and alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonCode {
    /// The caller presented no valid credential (answered by the shell).
    Unauthenticated,
    /// The decision point has not loaded its state yet (answered by the shell).
    NotReady,
    UnknownAgent,
    AgentNotReady,
    AgentSuspended,
    TaskNotActive,
    SessionExpired,
    TaskRequired,
    NoGrantForTool,
    GrantNotActive,
    ActionNotGranted,
    DestinationNotGranted,
    InvalidDestination,
    SensitivityTooHigh,
    ConditionFalse,
    ConditionError,
    LimitExceeded,
    ApprovalRequired,
    BadRequest,
}

impl ReasonCode {
    /// Every code, in declaration order.
    pub const ALL: [ReasonCode; 19] = [
        ReasonCode::Unauthenticated,
        ReasonCode::NotReady,
        ReasonCode::UnknownAgent,
        ReasonCode::AgentNotReady,
        ReasonCode::AgentSuspended,
        ReasonCode::TaskNotActive,
        ReasonCode::SessionExpired,
        ReasonCode::TaskRequired,
        ReasonCode::NoGrantForTool,
        ReasonCode::GrantNotActive,
        ReasonCode::ActionNotGranted,
        ReasonCode::DestinationNotGranted,
        ReasonCode::InvalidDestination,
        ReasonCode::SensitivityTooHigh,
        ReasonCode::ConditionFalse,
        ReasonCode::ConditionError,
        ReasonCode::LimitExceeded,
        ReasonCode::ApprovalRequired,
        ReasonCode::BadRequest,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReasonCode::Unauthenticated => "unauthenticated",
            ReasonCode::NotReady => "not-ready",
            ReasonCode::UnknownAgent => "unknown-agent",
            ReasonCode::AgentNotReady => "agent-not-ready",
            ReasonCode::AgentSuspended => "agent-suspended",
            ReasonCode::TaskNotActive => "task-not-active",
            ReasonCode::SessionExpired => "session-expired",
            ReasonCode::TaskRequired => "task-required",
            ReasonCode::NoGrantForTool => "no-grant-for-tool",
            ReasonCode::GrantNotActive => "grant-not-active",
            ReasonCode::ActionNotGranted => "action-not-granted",
            ReasonCode::DestinationNotGranted => "destination-not-granted",
            ReasonCode::InvalidDestination => "invalid-destination",
            ReasonCode::SensitivityTooHigh => "sensitivity-too-high",
            ReasonCode::ConditionFalse => "condition-false",
            ReasonCode::ConditionError => "condition-error",
            ReasonCode::LimitExceeded => "limit-exceeded",
            ReasonCode::ApprovalRequired => "approval-required",
            ReasonCode::BadRequest => "bad-request",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl std::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The counters an allowed call adds one to; the namespace and agent are the request's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The grant that allowed the call.
    pub grant: String,
    /// The call's task: its total ([`Usage::task_calls`]) and the grant's count in it
    /// ([`Usage::grant_calls_in_task`]) both count the call.
    pub task: Option<String>,
    /// The minute whose per-agent-per-grant count ([`Usage::grant_calls_in_minute`]) counts the call, when
    /// the grant limits calls per minute.
    pub minute: Option<i64>,
}

/// The answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    /// Empty when allowed; otherwise the deciding reason first, then any other reason a grant gave.
    pub reasons: Vec<ReasonCode>,
    /// The grant that allowed the call, would allow it with approval, or came closest to allowing it.
    pub grant: Option<String>,
    /// For humans; empty when allowed.
    pub explanation: String,
    /// Counters to increment; only for allowed calls.
    pub charge: Option<Charge>,
}

impl Decision {
    /// A denial for one reason, naming no grant (also for the shell: `unauthenticated`, `not-ready`).
    pub fn deny(reason: ReasonCode, explanation: impl Into<String>) -> Decision {
        Decision {
            outcome: Outcome::Deny,
            reasons: vec![reason],
            grant: None,
            explanation: explanation.into(),
            charge: None,
        }
    }

    pub fn is_allowed(&self) -> bool {
        self.outcome == Outcome::Allow
    }
}

fn bad_request(req: &DecisionRequest) -> Option<String> {
    let required = [("namespace", &req.namespace), ("agent", &req.agent), ("tool", &req.tool), ("action", &req.action)];
    for (field, value) in required {
        if value.is_empty() {
            return Some(format!("{field} is empty"));
        }
    }
    let names = required.into_iter().chain(req.task.as_ref().map(|t| ("task", t)));
    for (field, value) in names.clone() {
        if value.is_empty() || value.len() > MAX_NAME_LEN {
            return Some(format!("{field} must be 1 to {MAX_NAME_LEN} characters"));
        }
    }
    if req.method.as_ref().is_some_and(|m| m.is_empty() || m.len() > MAX_NAME_LEN) {
        return Some(format!("method must be 1 to {MAX_NAME_LEN} characters"));
    }
    if req.argument_names.len() > MAX_ARGUMENTS {
        return Some(format!("more than {MAX_ARGUMENTS} argument names"));
    }
    if req.argument_names.iter().any(|a| a.len() > MAX_NAME_LEN) {
        return Some(format!("an argument name is longer than {MAX_NAME_LEN} characters"));
    }
    // Names end up in decision logs, the audit trail and `audit timeline`: a newline or terminal escape in
    // one could forge a line there, a bidi override could disguise it. No tool or action needs them.
    let unsafe_text = |s: &str| s.chars().any(crate::core::names::is_unsafe_in_text);
    let texts = names.chain(req.method.as_ref().map(|m| ("method", m)));
    if let Some((field, _)) = texts.clone().find(|(_, v)| unsafe_text(v)) {
        return Some(format!("{field} contains a control or bidirectional-override character"));
    }
    if req.argument_names.iter().any(|a| unsafe_text(a)) {
        return Some("an argument name contains a control or bidirectional-override character".into());
    }
    None
}

/// Decides one call. Pure: reads the snapshot and the counters, never changes them.
pub fn decide(
    req: &DecisionRequest,
    snap: &Snapshot,
    usage: &dyn Usage,
    now: Timestamp,
    cfg: &DecideConfig,
) -> Decision {
    if let Some(problem) = bad_request(req) {
        return Decision::deny(ReasonCode::BadRequest, format!("bad request: {problem}"));
    }
    let ns = req.namespace.as_str();
    let agent = match check_agent(req, snap) {
        Ok(agent) => agent,
        Err(denial) => return denial.into(),
    };
    let task = match check_task(req, snap, agent, now) {
        Ok(task) => task,
        Err(denial) => return denial.into(),
    };
    let task_calls = task.map_or(0, |t| usage.task_calls(ns, &t.name));
    if let (Some(task), Some(max)) = (task, agent.max_tool_calls)
        && task_calls >= max
    {
        return Decision::deny(
            ReasonCode::LimitExceeded,
            format!(
                "task {ns}/{} has made {task_calls} of its {max} tool calls (sessionLimits.maxToolCalls of agent {})",
                task.name, agent.name
            ),
        );
    }
    let destination = match req.destination.as_deref().map(Destination::parse) {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            return Decision::deny(ReasonCode::InvalidDestination, format!("the destination is refused: {e}"));
        }
    };
    let rules = snap.rules(ns, &req.agent, &req.tool);
    if rules.is_empty() {
        return Decision::deny(
            ReasonCode::NoGrantForTool,
            format!("no ToolGrant gives agent {ns}/{} the tool {}", req.agent, req.tool),
        );
    }

    let sensitivity = req.sensitivity.unwrap_or(cfg.default_sensitivity);
    let env = Env {
        req,
        usage,
        now,
        minute: minute_of(now),
        destination: destination.as_ref(),
        sensitivity,
        task,
        activation: Activation {
            request: RequestView {
                tool: &req.tool,
                action: &req.action,
                destination: destination.as_ref(),
                sensitivity,
                method: req.method.as_deref(),
                arguments: &req.argument_names,
            },
            agent: AgentView {
                name: &agent.name,
                namespace: &agent.namespace,
                spiffe_id: &agent.spiffe_id,
                owner: &agent.owner,
            },
            task: task.map(|t| TaskView { name: &t.name, purpose: &t.purpose, calls: task_calls }),
            grant: "",
            now,
        },
    };

    let mut closest: Option<Failure<'_>> = None;
    let mut seen = 0u32;
    let mut approval: Option<&ToolRule> = None;
    for rule in rules {
        match check_rule(rule, &env) {
            Ok(Pass::Allow) => {
                let grant = &rule.grant;
                return Decision {
                    outcome: Outcome::Allow,
                    reasons: Vec::new(),
                    grant: Some(grant.name.to_string()),
                    explanation: String::new(),
                    charge: Some(Charge {
                        grant: grant.name.to_string(),
                        task: task.map(|t| t.name.to_string()),
                        minute: grant.limits.calls_per_minute.map(|_| env.minute),
                    }),
                };
            }
            Ok(Pass::NeedsApproval) => {
                approval = approval.or(Some(rule));
            }
            Err(failure) => {
                seen |= failure.reason.bit();
                if closest.as_ref().is_none_or(|c| failure.stage > c.stage) {
                    closest = Some(failure);
                }
            }
        }
    }
    if let Some(rule) = approval {
        let grant = &rule.grant;
        let why = match (rule.tool.risk, grant.approval_required) {
            (Risk::High, _) => format!("tool {} is high-risk", rule.tool.name),
            _ => "the grant requires approval".to_string(),
        };
        return Decision {
            outcome: Outcome::ApprovalRequired,
            reasons: vec![ReasonCode::ApprovalRequired],
            grant: Some(grant.name.to_string()),
            explanation: format!("grant {} allows the call once a human approves it: {why}", grant.name),
            charge: None,
        };
    }
    match closest {
        Some(failure) => {
            let mut reasons = vec![failure.reason];
            reasons.extend(ReasonCode::ALL.into_iter().filter(|r| *r != failure.reason && seen & r.bit() != 0));
            Decision {
                outcome: Outcome::Deny,
                reasons,
                grant: Some(failure.rule.grant.name.to_string()),
                explanation: explain(&failure, &env),
                charge: None,
            }
        }
        // Unreachable: every rule either passes or fails.
        None => Decision::deny(ReasonCode::NoGrantForTool, "no grant for the tool"),
    }
}

/// A denial before any grant is looked at: one reason, no grant.
struct Denial(ReasonCode, String);

impl From<Denial> for Decision {
    fn from(Denial(reason, explanation): Denial) -> Decision {
        Decision::deny(reason, explanation)
    }
}

fn check_agent<'s>(req: &DecisionRequest, snap: &'s Snapshot) -> Result<&'s AgentEntry, Denial> {
    let ns = &req.namespace;
    let Some(agent) = snap.agent(ns, &req.agent) else {
        return Err(Denial(ReasonCode::UnknownAgent, format!("no AgentIdentity {ns}/{}", req.agent)));
    };
    if req.agent_uid.as_deref().is_some_and(|uid| !agent.uid.is(uid)) {
        return Err(Denial(
            ReasonCode::UnknownAgent,
            format!(
                "AgentIdentity {ns}/{} has been re-created since the caller's credential was issued (uid differs)",
                agent.name
            ),
        ));
    }
    // The kill switch first: a suspended agent is also not Ready, and suspension says more.
    if agent.suspended {
        return Err(Denial(
            ReasonCode::AgentSuspended,
            format!("AgentIdentity {ns}/{} is suspended (spec.suspended: true)", agent.name),
        ));
    }
    if !agent.ready {
        return Err(Denial(
            ReasonCode::AgentNotReady,
            format!("AgentIdentity {ns}/{} is not Ready (see its Ready condition)", agent.name),
        ));
    }
    Ok(agent)
}

fn check_task<'s>(
    req: &DecisionRequest,
    snap: &'s Snapshot,
    agent: &AgentEntry,
    now: Timestamp,
) -> Result<Option<&'s TaskEntry>, Denial> {
    let ns = &req.namespace;
    let Some(name) = req.task.as_deref() else {
        if agent.has_session_limits() {
            return Err(Denial(
                ReasonCode::TaskRequired,
                format!("AgentIdentity {ns}/{} has sessionLimits: every call must name its AgentTask", agent.name),
            ));
        }
        return Ok(None);
    };
    let not_active = |why: String| Denial(ReasonCode::TaskNotActive, why);
    let Some(task) = snap.task(ns, name) else {
        return Err(not_active(format!("no AgentTask {ns}/{name}")));
    };
    if task.agent != agent.name {
        return Err(not_active(format!("AgentTask {ns}/{name} is not a task of agent {}", agent.name)));
    }
    if let Err(why) = task.active_at(now) {
        let why = match why {
            TaskInactive::Completed => "is completed".to_string(),
            TaskInactive::Phase(None) => "has no status yet".to_string(),
            TaskInactive::Phase(Some(phase)) => format!("is {phase:?}, not Active"),
            TaskInactive::NoExpiry => "has no expiry recorded".to_string(),
            TaskInactive::Expired(at) => format!("expired at {at}"),
        };
        return Err(not_active(format!("AgentTask {ns}/{name} {why}")));
    }
    if let Some(max) = &agent.max_duration {
        let expired = |why: String| Denial(ReasonCode::SessionExpired, why);
        let max = match max {
            Ok(max) => *max,
            Err(e) => {
                return Err(expired(format!(
                    "sessionLimits.maxDuration of agent {} cannot be read ({e}): no session can be checked",
                    agent.name
                )));
            }
        };
        let Some(start) = task.issued_at else {
            return Err(expired(format!("AgentTask {ns}/{name} has no issuedAt to measure its session from")));
        };
        // A maxDuration too large to add to a time never ends the session.
        if start.checked_add(max).is_ok_and(|end| now >= end) {
            return Err(expired(format!(
                "the session of AgentTask {ns}/{name} started at {start} and has passed sessionLimits.maxDuration ({max:#})"
            )));
        }
    }
    Ok(Some(task))
}

/// What a decision checks grants with.
struct Env<'a> {
    req: &'a DecisionRequest,
    usage: &'a dyn Usage,
    now: Timestamp,
    minute: i64,
    destination: Option<&'a Destination>,
    sensitivity: DataSensitivity,
    task: Option<&'a TaskEntry>,
    activation: Activation<'a>,
}

enum Pass {
    Allow,
    NeedsApproval,
}

/// How far a grant got, and what stopped it. Details are formatted only for the one reported.
struct Failure<'a> {
    stage: u8,
    reason: ReasonCode,
    rule: &'a ToolRule,
    detail: Detail,
}

enum Detail {
    NotInForce(GrantInactive),
    Action,
    DestinationRequired,
    NoDestinations,
    Destination,
    Sensitivity,
    ConditionFalse,
    ConditionError(String),
    TaskRequired(u64),
    SessionLimit { max: u64, used: u64 },
    MinuteLimit { max: u64, used: u64 },
}

fn fail(rule: &ToolRule, stage: u8, reason: ReasonCode, detail: Detail) -> Result<Pass, Failure<'_>> {
    Err(Failure { stage, reason, rule, detail })
}

fn check_rule<'a>(rule: &'a ToolRule, env: &Env<'_>) -> Result<Pass, Failure<'a>> {
    let grant: &GrantEntry = &rule.grant;
    let tool = &rule.tool;
    let req = env.req;
    if let Err(why) = grant.in_force_at(env.now) {
        return fail(rule, 0, ReasonCode::GrantNotActive, Detail::NotInForce(why));
    }
    if !tool.actions.is_empty() && !tool.actions.iter().any(|a| **a == *req.action) {
        return fail(rule, 1, ReasonCode::ActionNotGranted, Detail::Action);
    }
    match env.destination {
        None if !tool.destinations.is_empty() => {
            return fail(rule, 2, ReasonCode::DestinationNotGranted, Detail::DestinationRequired);
        }
        Some(_) if tool.destinations.is_empty() => {
            return fail(rule, 2, ReasonCode::DestinationNotGranted, Detail::NoDestinations);
        }
        Some(d) if !tool.destinations.iter().any(|p| p.matches(d)) => {
            return fail(rule, 2, ReasonCode::DestinationNotGranted, Detail::Destination);
        }
        _ => {}
    }
    if env.sensitivity > tool.max_sensitivity {
        return fail(rule, 3, ReasonCode::SensitivityTooHigh, Detail::Sensitivity);
    }
    if let Some(when) = &grant.when {
        match &when.condition {
            Err(e) => {
                let detail = Detail::ConditionError(format!("its condition does not compile: {e}"));
                return fail(rule, 4, ReasonCode::ConditionError, detail);
            }
            Ok(condition) => {
                let activation = Activation { grant: &grant.name, ..env.activation };
                match condition.evaluate(&activation) {
                    Ok(true) => {}
                    Ok(false) => return fail(rule, 4, ReasonCode::ConditionFalse, Detail::ConditionFalse),
                    Err(e) => {
                        let detail = Detail::ConditionError(format!("its condition failed: {e}"));
                        return fail(rule, 4, ReasonCode::ConditionError, detail);
                    }
                }
            }
        }
    }
    let ns = req.namespace.as_str();
    if let Some(max) = grant.limits.max_calls_per_session {
        let Some(task) = env.task else {
            return fail(rule, 5, ReasonCode::TaskRequired, Detail::TaskRequired(max));
        };
        let used = env.usage.grant_calls_in_task(ns, &task.name, &grant.name);
        if used >= max {
            return fail(rule, 5, ReasonCode::LimitExceeded, Detail::SessionLimit { max, used });
        }
    }
    if let Some(max) = grant.limits.calls_per_minute {
        let used = env.usage.grant_calls_in_minute(ns, &req.agent, &grant.name, env.minute);
        if used >= max {
            return fail(rule, 5, ReasonCode::LimitExceeded, Detail::MinuteLimit { max, used });
        }
    }
    if tool.risk == Risk::High || grant.approval_required {
        return Ok(Pass::NeedsApproval);
    }
    Ok(Pass::Allow)
}

fn explain(failure: &Failure<'_>, env: &Env<'_>) -> String {
    let grant = &failure.rule.grant.name;
    let tool = &failure.rule.tool;
    let req = env.req;
    let covers = format!("grant {grant} covers tool {}", tool.name);
    let mut out = match &failure.detail {
        Detail::NotInForce(GrantInactive::Expired(at)) => format!("grant {grant} expired at {at}"),
        Detail::NotInForce(GrantInactive::NotYetValid(from)) => format!("grant {grant} is valid only from {from}"),
        Detail::NotInForce(GrantInactive::Phase(None)) => format!("grant {grant} is not active yet (no status)"),
        Detail::NotInForce(GrantInactive::Phase(Some(phase))) => format!("grant {grant} is {phase:?}, not Active"),
        Detail::Action => format!("{covers} but not action {} (actions: {})", req.action, tool.actions.join(", ")),
        Detail::DestinationRequired => format!("{covers} only with a destination"),
        Detail::NoDestinations => match env.destination {
            Some(d) => format!("{covers} without network destinations, not destination {d}"),
            None => format!("{covers} without network destinations"),
        },
        Detail::Destination => match env.destination {
            Some(d) => format!("{covers} but not destination {d}"),
            None => format!("{covers} but not that destination"),
        },
        Detail::Sensitivity => format!(
            "{covers} up to {} data, not {}",
            sensitivity_name(tool.max_sensitivity),
            sensitivity_name(env.sensitivity)
        ),
        Detail::ConditionFalse => {
            let source = failure.rule.grant.when.as_ref().map_or("", |w| w.source.as_str());
            format!("{covers} but its condition is false: {source}")
        }
        Detail::ConditionError(e) => format!("{covers} but {e}"),
        Detail::TaskRequired(max) => {
            format!("{covers} with at most {max} calls per task (maxCallsPerSession): the call must name its AgentTask")
        }
        Detail::SessionLimit { max, used } => {
            format!("{covers} with at most {max} calls per task (maxCallsPerSession); this task has made {used}")
        }
        Detail::MinuteLimit { max, used } => {
            format!("{covers} with at most {max} calls per minute (callsPerMinute); {used} made this minute")
        }
    };
    if matches!(failure.detail, Detail::Destination | Detail::DestinationRequired) {
        let valid: Vec<String> = tool
            .destinations
            .iter()
            .filter_map(|p| match p {
                CompiledPattern::Valid(p) => Some(p.to_string()),
                CompiledPattern::Invalid { .. } => None,
            })
            .collect();
        if !valid.is_empty() {
            let _ = write!(out, " (destinations: {})", valid.join(", "));
        }
        for p in &tool.destinations {
            if let CompiledPattern::Invalid { source, error } = p {
                let _ = write!(out, "; its destination {source:?} is invalid and never matches: {error}");
            }
        }
    }
    out
}

/// Maps keyed by name (namespace, task, agent or grant), read with `&str` keys without allocating.
type ByName<T> = HashMap<String, T>;

#[derive(Debug, Clone, Default)]
struct TaskCounts {
    total: u64,
    per_grant: ByName<u64>,
}

/// Counters kept in memory: for tests, benches and a single replica. Reads never allocate.
#[derive(Debug, Clone, Default)]
pub struct MemoryUsage {
    /// namespace → task → counts
    tasks: ByName<ByName<TaskCounts>>,
    /// namespace → agent → grant → (minute, calls in that minute)
    minutes: ByName<ByName<ByName<(i64, u64)>>>,
}

impl MemoryUsage {
    /// Counts an allowed call.
    pub fn record(&mut self, req: &DecisionRequest, charge: &Charge) {
        if let Some(task) = &charge.task {
            let counts = self.tasks.entry(req.namespace.clone()).or_default().entry(task.clone()).or_default();
            counts.total += 1;
            *counts.per_grant.entry(charge.grant.clone()).or_default() += 1;
        }
        if let Some(minute) = charge.minute {
            let slot = self
                .minutes
                .entry(req.namespace.clone())
                .or_default()
                .entry(req.agent.clone())
                .or_default()
                .entry(charge.grant.clone())
                .or_default();
            if slot.0 != minute {
                *slot = (minute, 0);
            }
            slot.1 += 1;
        }
    }

    /// Forgets a task's counts (when the task is deleted).
    pub fn forget_task(&mut self, namespace: &str, task: &str) {
        if let Some(tasks) = self.tasks.get_mut(namespace) {
            tasks.remove(task);
        }
    }
}

impl Usage for MemoryUsage {
    fn task_calls(&self, namespace: &str, task: &str) -> u64 {
        self.tasks.get(namespace).and_then(|t| t.get(task)).map_or(0, |c| c.total)
    }

    fn grant_calls_in_minute(&self, namespace: &str, agent: &str, grant: &str, minute: i64) -> u64 {
        self.minutes
            .get(namespace)
            .and_then(|a| a.get(agent))
            .and_then(|g| g.get(grant))
            .filter(|(m, _)| *m == minute)
            .map_or(0, |(_, n)| *n)
    }

    fn grant_calls_in_task(&self, namespace: &str, task: &str, grant: &str) -> u64 {
        self.tasks.get(namespace).and_then(|t| t.get(task)).and_then(|c| c.per_grant.get(grant)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::*;
    use crate::api::{AgentIdentity, AgentTask, Approval, GrantLimits, GrantPhase, SessionLimits, ToolGrant};
    use crate::core::pdp::snapshot::fixtures::*;

    const NOW: i64 = 1_000;

    fn request(tool: &str, action: &str, destination: Option<&str>) -> DecisionRequest {
        DecisionRequest {
            namespace: "agents".into(),
            agent: "triage".into(),
            agent_uid: Some("uid-triage".into()),
            task: Some("t1".into()),
            tool: tool.into(),
            action: action.into(),
            destination: destination.map(str::to_string),
            sensitivity: None,
            method: Some("GET".into()),
            argument_names: vec!["contact_id".into()],
        }
    }

    fn crm_read() -> ToolGrant {
        active_grant("crm-read", "triage", vec![tool("crm", &["read", "list"], &["https://crm.internal/api/"])])
    }

    struct World {
        agents: Vec<AgentIdentity>,
        grants: Vec<ToolGrant>,
        tasks: Vec<AgentTask>,
        usage: MemoryUsage,
    }

    impl World {
        fn new() -> World {
            World {
                agents: vec![ready_agent("triage"), ready_agent("billing")],
                grants: vec![crm_read()],
                tasks: vec![active_task("t1", "triage"), active_task("billing-task", "billing")],
                usage: MemoryUsage::default(),
            }
        }

        fn decide(&self, req: &DecisionRequest) -> Decision {
            self.decide_at(req, NOW)
        }

        fn decide_at(&self, req: &DecisionRequest, now: i64) -> Decision {
            let snap = Snapshot::build(&self.agents, &self.grants, &self.tasks, "cluster.local");
            decide(req, &snap, &self.usage, t(now), &DecideConfig::default())
        }
    }

    fn allowed_by(d: &Decision, grant: &str) {
        assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
        assert_eq!(d.grant.as_deref(), Some(grant));
        assert!(d.reasons.is_empty() && d.explanation.is_empty(), "{d:?}");
    }

    fn denied(d: &Decision, reason: ReasonCode) {
        assert_eq!((d.outcome, d.reasons.first().copied()), (Outcome::Deny, Some(reason)), "{d:?}");
        assert!(d.charge.is_none());
        assert!(!d.explanation.is_empty());
    }

    type Setup = fn(&mut World, &mut DecisionRequest);

    /// One row per rule: how the world or request is changed, the expected reason (None: allowed), and
    /// a piece of the expected explanation.
    #[test]
    fn each_check_has_its_reason() {
        let cases: Vec<(&str, Setup, Option<ReasonCode>, &str)> = vec![
            ("allowed", |_, _| {}, None, ""),
            (
                "no action list means every action",
                |w, r| {
                    w.grants[0].spec.tools[0].actions.clear();
                    r.action = "delete".into();
                },
                None,
                "",
            ),
            ("no task, no session limits", |_, r| r.task = None, None, ""),
            ("uid not given", |_, r| r.agent_uid = None, None, ""),
            ("bad request: empty tool", |_, r| r.tool.clear(), Some(ReasonCode::BadRequest), "tool is empty"),
            ("bad request: empty action", |_, r| r.action.clear(), Some(ReasonCode::BadRequest), "action is empty"),
            ("bad request: empty task", |_, r| r.task = Some(String::new()), Some(ReasonCode::BadRequest), "task"),
            ("bad request: long tool", |_, r| r.tool = "x".repeat(300), Some(ReasonCode::BadRequest), "tool must be"),
            (
                "bad request: a newline in the tool (would forge a timeline line)",
                |_, r| r.tool = "crm\n2026-01-01T00:00:00Z  decision  allow".into(),
                Some(ReasonCode::BadRequest),
                "tool contains a control",
            ),
            (
                "bad request: ESC in the action",
                |_, r| r.action = "read\u{1b}[2K".into(),
                Some(ReasonCode::BadRequest),
                "action contains",
            ),
            (
                "bad request: bidi override in the task",
                |_, r| r.task = Some("t\u{202e}1".into()),
                Some(ReasonCode::BadRequest),
                "task contains",
            ),
            (
                "bad request: control in the method",
                |_, r| r.method = Some("tools/call\r".into()),
                Some(ReasonCode::BadRequest),
                "method contains",
            ),
            (
                "bad request: control in an argument name",
                |_, r| r.argument_names = vec!["ok".into(), "a\u{7}".into()],
                Some(ReasonCode::BadRequest),
                "an argument name contains",
            ),
            (
                "unicode that is not a control is fine",
                |w, r| {
                    w.grants[0].spec.tools[0].actions.clear();
                    r.action = "lire-é".into();
                },
                None,
                "",
            ),
            (
                "bad request: many arguments",
                |_, r| r.argument_names = vec!["a".into(); 300],
                Some(ReasonCode::BadRequest),
                "argument names",
            ),
            (
                "unknown agent",
                |_, r| r.agent = "ghost".into(),
                Some(ReasonCode::UnknownAgent),
                "no AgentIdentity agents/ghost",
            ),
            (
                "agent in another namespace",
                |_, r| r.namespace = "other".into(),
                Some(ReasonCode::UnknownAgent),
                "other/triage",
            ),
            (
                "re-created agent",
                |_, r| r.agent_uid = Some("uid-old".into()),
                Some(ReasonCode::UnknownAgent),
                "re-created",
            ),
            ("not ready", |w, _| w.agents[0].status = None, Some(ReasonCode::AgentNotReady), "not Ready"),
            ("suspended", |w, _| w.agents[0].spec.suspended = true, Some(ReasonCode::AgentSuspended), "suspended"),
            (
                "unknown task",
                |_, r| r.task = Some("nope".into()),
                Some(ReasonCode::TaskNotActive),
                "no AgentTask agents/nope",
            ),
            (
                "another agent's task",
                |_, r| r.task = Some("billing-task".into()),
                Some(ReasonCode::TaskNotActive),
                "not a task of agent triage",
            ),
            (
                "completed task",
                |w, _| w.tasks[0].spec.completed = true,
                Some(ReasonCode::TaskNotActive),
                "is completed",
            ),
            (
                "pending task",
                |w, _| w.tasks[0].status.as_mut().unwrap().phase = Some(crate::api::TaskPhase::Pending),
                Some(ReasonCode::TaskNotActive),
                "is Pending",
            ),
            (
                "expired task (status still Active)",
                |w, _| w.tasks[0].status.as_mut().unwrap().expires_at = Some(Time(t(NOW))),
                Some(ReasonCode::TaskNotActive),
                "expired at",
            ),
            (
                "session too long",
                |w, _| set_limits(w, None, Some("10m")),
                Some(ReasonCode::SessionExpired),
                "maxDuration",
            ),
            (
                "session limit unreadable",
                |w, _| set_limits(w, None, Some("forever")),
                Some(ReasonCode::SessionExpired),
                "cannot be read",
            ),
            (
                "session limits need a task",
                |w, r| {
                    set_limits(w, Some(5), None);
                    r.task = None;
                },
                Some(ReasonCode::TaskRequired),
                "must name its AgentTask",
            ),
            (
                "max tool calls",
                |w, r| {
                    set_limits(w, Some(2), None);
                    use_calls(w, r, 2);
                },
                Some(ReasonCode::LimitExceeded),
                "made 2 of its 2 tool calls",
            ),
            (
                "unparseable destination",
                |_, r| r.destination = Some("https://crm.internal/api/%2e%2e/admin".into()),
                Some(ReasonCode::InvalidDestination),
                "%2E",
            ),
            (
                "userinfo destination",
                |_, r| r.destination = Some("https://evil.net@crm.internal/api/".into()),
                Some(ReasonCode::InvalidDestination),
                "user@host",
            ),
            (
                "no grant for the tool",
                |_, r| r.tool = "payments".into(),
                Some(ReasonCode::NoGrantForTool),
                "the tool payments",
            ),
            (
                "grant not active",
                |w, _| w.grants[0].status = None,
                Some(ReasonCode::GrantNotActive),
                "crm-read is not active yet",
            ),
            ("grant revoked", |w, _| set_phase(w, GrantPhase::Revoked), Some(ReasonCode::GrantNotActive), "Revoked"),
            (
                "grant past validUntil, status still Active",
                |w, _| w.grants[0].spec.valid_until = Some(Time(t(NOW))),
                Some(ReasonCode::GrantNotActive),
                "expired at",
            ),
            (
                "grant before validFrom",
                |w, _| w.grants[0].spec.valid_from = Some(Time(t(NOW + 1))),
                Some(ReasonCode::GrantNotActive),
                "valid only from",
            ),
            (
                "action",
                |_, r| r.action = "delete".into(),
                Some(ReasonCode::ActionNotGranted),
                "grant crm-read covers tool crm but not action delete (actions: read, list)",
            ),
            (
                "destination",
                |_, r| r.destination = Some("https://crm.internal/admin/".into()),
                Some(ReasonCode::DestinationNotGranted),
                "grant crm-read covers tool crm but not destination https://crm.internal/admin/ (destinations: https://crm.internal/api/)",
            ),
            (
                "dot segments climb out",
                |_, r| r.destination = Some("https://crm.internal/api/../admin/".into()),
                Some(ReasonCode::DestinationNotGranted),
                "not destination https://crm.internal/admin/",
            ),
            (
                "query is not in the explanation",
                |_, r| r.destination = Some("https://evil.net/x?token=secret".into()),
                Some(ReasonCode::DestinationNotGranted),
                "not destination https://evil.net/x (",
            ),
            (
                "grant with destinations, request without",
                |_, r| r.destination = None,
                Some(ReasonCode::DestinationNotGranted),
                "only with a destination",
            ),
            (
                "grant without destinations, request with",
                |w, _| w.grants[0].spec.tools[0].destinations.clear(),
                Some(ReasonCode::DestinationNotGranted),
                "without network destinations, not destination https://crm.internal/api/contacts",
            ),
            (
                "invalid pattern never matches",
                |w, _| w.grants[0].spec.tools[0].destinations = vec!["https://crm.internal/api/*".into()],
                Some(ReasonCode::DestinationNotGranted),
                "\"https://crm.internal/api/*\" is invalid and never matches",
            ),
            (
                "sensitivity",
                |_, r| r.sensitivity = Some(DataSensitivity::Confidential),
                Some(ReasonCode::SensitivityTooHigh),
                "up to internal data, not confidential",
            ),
            (
                "default sensitivity is internal",
                |w, _| {
                    w.grants[0].spec.tools[0].max_data_sensitivity = DataSensitivity::Public;
                },
                Some(ReasonCode::SensitivityTooHigh),
                "up to public data, not internal",
            ),
            (
                "explicit lower sensitivity",
                |w, r| {
                    w.grants[0].spec.tools[0].max_data_sensitivity = DataSensitivity::Public;
                    r.sensitivity = Some(DataSensitivity::Public);
                },
                None,
                "",
            ),
            (
                "condition true",
                |w, _| w.grants[0].spec.when = Some("request.path.startsWith('/api/contacts')".into()),
                None,
                "",
            ),
            (
                "condition false",
                |w, _| w.grants[0].spec.when = Some("request.method == 'DELETE'".into()),
                Some(ReasonCode::ConditionFalse),
                "its condition is false: request.method == 'DELETE'",
            ),
            (
                "condition error",
                |w, _| w.grants[0].spec.when = Some("request.tool + 1 == 2".into()),
                Some(ReasonCode::ConditionError),
                "its condition failed",
            ),
            (
                "condition does not compile",
                |w, _| w.grants[0].spec.when = Some("user.admin".into()),
                Some(ReasonCode::ConditionError),
                "does not compile: unknown variable \"user\"",
            ),
            (
                "condition sees task calls",
                |w, r| {
                    w.grants[0].spec.when = Some("task.calls < 3".into());
                    use_calls(w, r, 3);
                },
                Some(ReasonCode::ConditionFalse),
                "task.calls < 3",
            ),
            (
                "calls per session",
                |w, r| {
                    grant_limits(w, Some(3), None);
                    use_calls(w, r, 3);
                },
                Some(ReasonCode::LimitExceeded),
                "at most 3 calls per task (maxCallsPerSession); this task has made 3",
            ),
            (
                "calls per session under the limit",
                |w, r| {
                    grant_limits(w, Some(3), None);
                    use_calls(w, r, 2);
                },
                None,
                "",
            ),
            (
                "calls per session need a task",
                |w, r| {
                    grant_limits(w, Some(3), None);
                    r.task = None;
                },
                Some(ReasonCode::TaskRequired),
                "must name its AgentTask",
            ),
            (
                "calls per minute",
                |w, r| {
                    grant_limits(w, None, Some(2));
                    use_calls(w, r, 2);
                },
                Some(ReasonCode::LimitExceeded),
                "at most 2 calls per minute",
            ),
            (
                "zero limit allows nothing",
                |w, _| grant_limits(w, None, Some(0)),
                Some(ReasonCode::LimitExceeded),
                "at most 0",
            ),
        ];
        for (name, setup, want, explanation) in cases {
            let mut world = World::new();
            let mut req = request("crm", "read", Some("https://crm.internal/api/contacts"));
            setup(&mut world, &mut req);
            let d = world.decide(&req);
            match want {
                None => allowed_by(&d, "crm-read"),
                Some(reason) => {
                    assert_eq!(d.outcome, Outcome::Deny, "{name}: {d:?}");
                    assert_eq!(d.reasons.first(), Some(&reason), "{name}: {d:?}");
                    assert!(d.charge.is_none(), "{name}");
                    assert!(d.explanation.contains(explanation), "{name}: {:?} lacks {explanation:?}", d.explanation);
                }
            }
        }
    }

    fn set_limits(w: &mut World, calls: Option<i32>, duration: Option<&str>) {
        w.agents[0].spec.session_limits =
            Some(SessionLimits { max_tool_calls: calls, max_duration: duration.map(str::to_string) });
    }

    fn grant_limits(w: &mut World, per_session: Option<i32>, per_minute: Option<i32>) {
        w.grants[0].spec.limits =
            Some(GrantLimits { max_calls_per_session: per_session, calls_per_minute: per_minute });
    }

    fn set_phase(w: &mut World, phase: GrantPhase) {
        w.grants[0].status.as_mut().unwrap().phase = Some(phase);
    }

    /// Makes `n` allowed calls of the request (recording their charges).
    fn use_calls(w: &mut World, req: &DecisionRequest, n: usize) {
        for i in 0..n {
            let d = w.decide(req);
            assert!(d.is_allowed(), "call {i}: {d:?}");
            let charge = d.charge.unwrap();
            w.usage.record(req, &charge);
        }
    }

    #[test]
    fn reason_codes_are_stable_kebab_case() {
        let codes: Vec<&str> = ReasonCode::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            codes,
            vec![
                "unauthenticated",
                "not-ready",
                "unknown-agent",
                "agent-not-ready",
                "agent-suspended",
                "task-not-active",
                "session-expired",
                "task-required",
                "no-grant-for-tool",
                "grant-not-active",
                "action-not-granted",
                "destination-not-granted",
                "invalid-destination",
                "sensitivity-too-high",
                "condition-false",
                "condition-error",
                "limit-exceeded",
                "approval-required",
                "bad-request",
            ]
        );
        assert_eq!(ReasonCode::LimitExceeded.to_string(), "limit-exceeded");
        assert_eq!(
            [Outcome::Allow, Outcome::Deny, Outcome::ApprovalRequired].map(Outcome::as_str),
            ["allow", "deny", "approval-required"]
        );
    }

    #[test]
    fn session_duration_counts_from_the_tasks_start() {
        let mut w = World::new();
        set_limits(&mut w, None, Some("10m"));
        let req = request("crm", "read", Some("https://crm.internal/api/x"));
        // The task was issued at t(0).
        for (now, allowed) in [(0, true), (599, true), (600, false), (3599, false)] {
            assert_eq!(w.decide_at(&req, now).is_allowed(), allowed, "{now}");
        }
        denied(&w.decide_at(&req, 600), ReasonCode::SessionExpired);
        // A task without issuedAt cannot be measured.
        w.tasks[0].status.as_mut().unwrap().issued_at = None;
        denied(&w.decide_at(&req, 1), ReasonCode::SessionExpired);
    }

    #[test]
    fn a_grant_stops_at_valid_until_even_before_its_status_changes() {
        let mut w = World::new();
        w.grants[0].spec.valid_until = Some(Time(t(NOW + 10)));
        let req = request("crm", "read", Some("https://crm.internal/api/x"));
        assert!(w.decide_at(&req, NOW + 9).is_allowed());
        let d = w.decide_at(&req, NOW + 10);
        denied(&d, ReasonCode::GrantNotActive);
        assert_eq!(d.grant.as_deref(), Some("crm-read"));
    }

    #[test]
    fn any_grant_that_allows_wins_and_charges_itself() {
        let mut w = World::new();
        // a-limited sorts first and is exhausted; crm-read still allows.
        let mut limited = crm_read();
        limited.metadata.name = Some("a-limited".into());
        limited.spec.limits = Some(GrantLimits { max_calls_per_session: Some(1), calls_per_minute: Some(10) });
        w.grants.push(limited);
        let req = request("crm", "read", Some("https://crm.internal/api/x"));
        let first = w.decide_at(&req, 120);
        allowed_by(&first, "a-limited");
        assert_eq!(first.charge, Some(Charge { grant: "a-limited".into(), task: Some("t1".into()), minute: Some(2) }));
        w.usage.record(&req, first.charge.as_ref().unwrap());
        let second = w.decide_at(&req, 120);
        allowed_by(&second, "crm-read");
        assert_eq!(second.charge, Some(Charge { grant: "crm-read".into(), task: Some("t1".into()), minute: None }));
        w.usage.record(&req, second.charge.as_ref().unwrap());
        assert_eq!(w.usage.task_calls("agents", "t1"), 2);
        assert_eq!(w.usage.grant_calls_in_task("agents", "t1", "a-limited"), 1);
        assert_eq!(w.usage.grant_calls_in_task("agents", "t1", "crm-read"), 1);
        assert_eq!(w.usage.grant_calls_in_minute("agents", "triage", "a-limited", 2), 1);
        assert_eq!(w.usage.grant_calls_in_minute("agents", "triage", "a-limited", 3), 0);
        // Without a task nothing per task is charged.
        let mut no_task = req.clone();
        no_task.task = None;
        let d = w.decide_at(&no_task, 120);
        allowed_by(&d, "crm-read");
        assert_eq!(d.charge.unwrap().task, None);
    }

    #[test]
    fn calls_per_minute_reset_with_the_minute() {
        let mut w = World::new();
        grant_limits(&mut w, None, Some(1));
        let req = request("crm", "read", Some("https://crm.internal/api/x"));
        let d = w.decide_at(&req, 60);
        w.usage.record(&req, d.charge.as_ref().unwrap());
        denied(&w.decide_at(&req, 119), ReasonCode::LimitExceeded);
        assert!(w.decide_at(&req, 120).is_allowed());
        w.usage.forget_task("agents", "t1");
        assert_eq!(w.usage.task_calls("agents", "t1"), 0);
    }

    #[test]
    fn the_closest_grant_is_reported_with_every_reason() {
        let mut w = World::new();
        let mut stale = active_grant("a-stale", "triage", vec![tool("crm", &[], &[])]);
        stale.status = None;
        let writer = active_grant("b-writer", "triage", vec![tool("crm", &["write"], &[])]);
        w.grants.push(stale);
        w.grants.push(writer);
        // crm-read fails at the destination, b-writer at the action, a-stale at not being active.
        let req = request("crm", "read", Some("https://crm.internal/admin/"));
        let d = w.decide(&req);
        denied(&d, ReasonCode::DestinationNotGranted);
        assert_eq!(d.grant.as_deref(), Some("crm-read"));
        assert_eq!(
            d.reasons,
            vec![ReasonCode::DestinationNotGranted, ReasonCode::GrantNotActive, ReasonCode::ActionNotGranted]
        );
        assert!(d.explanation.starts_with("grant crm-read covers tool crm but not destination"), "{}", d.explanation);

        // Equally far: the first by name is reported.
        let mut w = World::new();
        let mut twin = crm_read();
        twin.metadata.name = Some("a-twin".into());
        w.grants.push(twin);
        let d = w.decide(&request("crm", "delete", Some("https://crm.internal/api/x")));
        assert_eq!((d.grant.as_deref(), d.reasons.clone()), (Some("a-twin"), vec![ReasonCode::ActionNotGranted]));

        // Only inactive grants: grant-not-active, not no-grant-for-tool.
        let mut w = World::new();
        set_phase(&mut w, GrantPhase::Expired);
        denied(&w.decide(&request("crm", "read", Some("https://crm.internal/api/x"))), ReasonCode::GrantNotActive);
    }

    #[test]
    fn high_risk_and_required_approval_ask_a_human_unless_another_grant_allows() {
        let req = request("crm", "read", Some("https://crm.internal/api/x"));
        let mut w = World::new();
        w.grants[0].spec.tools[0].risk = Risk::High;
        let d = w.decide(&req);
        assert_eq!((d.outcome, d.reasons.clone()), (Outcome::ApprovalRequired, vec![ReasonCode::ApprovalRequired]));
        assert_eq!(d.grant.as_deref(), Some("crm-read"));
        assert!(d.explanation.contains("tool crm is high-risk"), "{}", d.explanation);
        assert!(d.charge.is_none(), "nothing is charged before approval");

        let mut w = World::new();
        w.grants[0].spec.approval = Some(Approval { required: true, ..Default::default() });
        let d = w.decide(&req);
        assert_eq!(d.outcome, Outcome::ApprovalRequired);
        assert!(d.explanation.contains("requires approval"), "{}", d.explanation);

        // Approval is the last step: a denied call never asks for approval.
        let mut denied_req = req.clone();
        denied_req.action = "delete".into();
        denied(&w.decide(&denied_req), ReasonCode::ActionNotGranted);

        // A low-risk grant that allows wins over one needing approval, whatever their order.
        let mut plain = crm_read();
        plain.metadata.name = Some("z-plain".into());
        w.grants.push(plain);
        allowed_by(&w.decide(&req), "z-plain");
    }

    #[test]
    fn a_snapshot_with_other_agents_grants_does_not_leak() {
        let mut w = World::new();
        let mut theirs = crm_read();
        theirs.metadata.name = Some("billing-crm".into());
        theirs.spec.agent_ref.name = "billing".into();
        w.grants = vec![theirs];
        denied(&w.decide(&request("crm", "read", Some("https://crm.internal/api/x"))), ReasonCode::NoGrantForTool);
    }

    #[test]
    fn the_shell_can_deny_for_its_own_reasons() {
        let d = Decision::deny(ReasonCode::Unauthenticated, "no bearer token");
        assert_eq!(
            (d.outcome, d.reasons, d.grant, d.charge),
            (Outcome::Deny, vec![ReasonCode::Unauthenticated], None, None)
        );
    }

    #[test]
    fn no_input_panics() {
        let w = World::new();
        let snap = Snapshot::build(&w.agents, &w.grants, &w.tasks, "cluster.local");
        let odd = ["", "\u{0}", "ü", "%", "..", "https://", "https://[", "https://crm.internal/%", "*"];
        for s in odd {
            let mut req = request(s, s, Some(s));
            req.namespace = s.into();
            req.agent = s.into();
            req.task = Some(s.into());
            req.method = Some(s.into());
            req.argument_names = vec![s.into()];
            let _ = decide(&req, &snap, &w.usage, t(NOW), &DecideConfig::default());
            let mut req = request("crm", "read", Some(s));
            req.argument_names = vec![s.into()];
            let d = decide(&req, &snap, &w.usage, t(NOW), &DecideConfig::default());
            assert!(!d.is_allowed(), "{s:?}");
        }
        let _ = decide(
            &DecisionRequest::default(),
            &Snapshot::default(),
            &w.usage,
            Timestamp::MIN,
            &DecideConfig::default(),
        );
        let _ = decide(&request("crm", "read", None), &snap, &w.usage, Timestamp::MAX, &DecideConfig::default());
    }
}

/// Properties: more grants never mean less access; a suspended agent is never allowed.
#[cfg(test)]
mod proptests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use proptest::prelude::*;

    use super::*;
    use crate::api::{AgentIdentity, Approval, GrantLimits, GrantPhase, SessionLimits, ToolGrant};
    use crate::core::pdp::snapshot::fixtures::*;

    const NOW: i64 = 1_000;

    fn sensitivity() -> impl Strategy<Value = DataSensitivity> {
        prop_oneof![
            Just(DataSensitivity::Public),
            Just(DataSensitivity::Internal),
            Just(DataSensitivity::Confidential),
            Just(DataSensitivity::Restricted),
        ]
    }

    fn tool_entry() -> impl Strategy<Value = crate::api::Tool> {
        let actions = prop::sample::subsequence(vec!["read", "write", "delete"], 0..=3);
        let destinations = prop::sample::subsequence(
            vec!["https://crm.internal/api/", "crm.internal", "*.example.com", "http://crm.internal/", "bad*pattern"],
            0..=2,
        );
        (
            prop_oneof![Just("crm"), Just("mail")],
            actions,
            destinations,
            sensitivity(),
            prop_oneof![5 => Just(Risk::Low), 1 => Just(Risk::High)],
        )
            .prop_map(|(name, actions, destinations, max, risk)| {
                let mut t = tool(name, &actions, &destinations);
                t.max_data_sensitivity = max;
                t.risk = risk;
                t
            })
    }

    /// A grant named `name`, in any state, mostly for agent `triage`.
    fn grant(name: String) -> impl Strategy<Value = ToolGrant> {
        let window = prop_oneof![5 => Just(None), 1 => Just(Some(0)), 1 => Just(Some(NOW)), 1 => Just(Some(2 * NOW))];
        let limits = prop::option::weighted(0.3, (prop::option::of(0..3i32), prop::option::of(0..3i32)));
        let when = prop::option::weighted(
            0.3,
            prop_oneof![
                Just("true"),
                Just("request.action == 'read'"),
                Just("task.calls < 1"),
                Just("grant == 'z-new'"),
                Just("request.tool + 1 == 2"),
                Just("user.admin"),
                Just("(("),
            ],
        );
        let phase = prop_oneof![
            12 => Just(Some(GrantPhase::Active)),
            1 => Just(Some(GrantPhase::Pending)),
            1 => Just(Some(GrantPhase::Expired)),
            1 => Just(Some(GrantPhase::Revoked)),
            1 => Just(None),
        ];
        (
            prop_oneof![5 => Just("triage"), 1 => Just("billing")],
            prop::collection::vec(tool_entry(), 1..3),
            prop::bool::weighted(0.2),
            (window.clone(), window),
            limits,
            when,
            phase,
        )
            .prop_map(move |(agent, tools, approval, (from, until), limits, when, phase)| {
                let mut g = active_grant(&name, agent, tools);
                g.spec.approval = approval.then(|| Approval { required: true, ..Default::default() });
                g.spec.valid_from = from.map(|s| Time(t(s)));
                g.spec.valid_until = until.map(|s| Time(t(s)));
                g.spec.limits = limits.map(|(max_calls_per_session, calls_per_minute)| GrantLimits {
                    max_calls_per_session,
                    calls_per_minute,
                });
                g.spec.when = when.map(str::to_string);
                g.status.as_mut().expect("fixture has a status").phase = phase;
                g
            })
    }

    /// Grants `g0`, `g1`, … (names distinct).
    fn grants() -> impl Strategy<Value = Vec<ToolGrant>> {
        let generated = prop::collection::vec(0..1u8, 0..5)
            .prop_flat_map(|slots| slots.iter().enumerate().map(|(i, _)| grant(format!("g{i}"))).collect::<Vec<_>>());
        // Often also a lenient grant, so that many first decisions allow.
        let lenient =
            prop::option::of(prop_oneof![Just(&[][..]), Just(&["https://crm.internal/api/", "*.example.com"][..])])
                .prop_map(|destinations| {
                    destinations.map(|d| {
                        let mut tools = vec![tool("crm", &[], d), tool("mail", &[], d)];
                        for t in &mut tools {
                            t.max_data_sensitivity = DataSensitivity::Restricted;
                        }
                        active_grant("g-lenient", "triage", tools)
                    })
                });
        (generated, lenient).prop_map(|(mut grants, lenient)| {
            grants.extend(lenient);
            grants
        })
    }

    fn agent(suspended: impl Strategy<Value = bool>) -> impl Strategy<Value = AgentIdentity> {
        let limits = prop::option::weighted(
            0.2,
            (prop::option::of(0..3i32), prop::option::of(prop_oneof![Just("30m"), Just("1s"), Just("soon")])),
        );
        (suspended, prop::bool::weighted(0.9), limits).prop_map(|(suspended, ready, limits)| {
            let mut a = if ready { ready_agent("triage") } else { crate::api::test_agent("triage") };
            a.spec.suspended = suspended;
            a.spec.session_limits = limits.map(|(max_tool_calls, max_duration)| SessionLimits {
                max_tool_calls,
                max_duration: max_duration.map(str::to_string),
            });
            a
        })
    }

    fn request() -> impl Strategy<Value = DecisionRequest> {
        (
            prop_oneof![Just("crm"), Just("mail")],
            prop_oneof![Just("read"), Just("write"), Just("delete")],
            prop::option::of(prop_oneof![
                Just("https://crm.internal/api/x"),
                Just("https://crm.internal/api/x"),
                Just("https://a.example.com/"),
                Just("https://crm.internal/admin"),
                Just("http://crm.internal/api/x"),
                Just("https://a.example.com/"),
                Just("https://crm.internal.evil.net/api/"),
                Just("https://crm.internal@evil.net/api/"),
            ]),
            prop::option::of(sensitivity()),
            prop_oneof![6 => Just(Some("t1")), 2 => Just(None), 1 => Just(Some("other"))],
            prop_oneof![6 => Just(Some("uid-triage")), 2 => Just(None), 1 => Just(Some("uid-old"))],
        )
            .prop_map(|(tool, action, destination, sensitivity, task, uid)| DecisionRequest {
                namespace: "agents".into(),
                agent: "triage".into(),
                agent_uid: uid.map(str::to_string),
                task: task.map(str::to_string),
                tool: tool.into(),
                action: action.into(),
                destination: destination.map(str::to_string),
                sensitivity,
                method: Some("GET".into()),
                argument_names: vec![],
            })
    }

    /// Calls already counted: (grant index, calls) in task `t1` and in the current minute.
    fn usage(req: &DecisionRequest, counted: &[(usize, u8)]) -> MemoryUsage {
        let mut usage = MemoryUsage::default();
        for (i, n) in counted {
            let charge = Charge { grant: format!("g{i}"), task: Some("t1".into()), minute: Some(minute_of(t(NOW))) };
            for _ in 0..*n {
                usage.record(req, &charge);
            }
        }
        usage
    }

    fn decide_with(
        agent: &AgentIdentity,
        grants: &[ToolGrant],
        req: &DecisionRequest,
        usage: &MemoryUsage,
    ) -> Decision {
        let tasks = [active_task("t1", "triage"), active_task("other", "billing")];
        let snap = Snapshot::build(std::slice::from_ref(agent), grants, &tasks, "cluster.local");
        decide(req, &snap, usage, t(NOW), &DecideConfig::default())
    }

    /// Deny < approval-required < allow.
    fn rank(o: Outcome) -> u8 {
        match o {
            Outcome::Deny => 0,
            Outcome::ApprovalRequired => 1,
            Outcome::Allow => 2,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Adding a grant (under a name not yet taken, so it has no counted calls) never lowers the outcome:
        /// an allow stays an allow, an approval-required is never turned into a deny. Decisions are taken
        /// at the same time with the same counters (fresh or with some calls already counted).
        #[test]
        fn adding_a_grant_never_takes_access_away(
            agent in agent(prop::bool::weighted(0.1)),
            before in grants(),
            added in prop_oneof![Just("a-new"), Just("m-new"), Just("z-new")].prop_flat_map(|n| grant(n.to_string())),
            req in request(),
            counted in prop::collection::vec((0..4usize, 0..3u8), 0..3),
        ) {
            let usage = usage(&req, &counted);
            let first = decide_with(&agent, &before, &req, &usage);
            let mut after = before.clone();
            after.push(added);
            let second = decide_with(&agent, &after, &req, &usage);
            prop_assert!(
                rank(second.outcome) >= rank(first.outcome),
                "adding a grant lowered {:?} to {:?}", first, second
            );
            if first.is_allowed() {
                prop_assert!(second.charge.is_some());
            }
        }

        /// A suspended agent is denied whatever its grants, usage and the request; when the request is
        /// well-formed and the caller's uid is the agent's, the reason is agent-suspended.
        #[test]
        fn a_suspended_agent_is_never_allowed(
            agent in agent(Just(true)),
            grants in grants(),
            req in request(),
            counted in prop::collection::vec((0..4usize, 0..3u8), 0..3),
        ) {
            let d = decide_with(&agent, &grants, &req, &usage(&req, &counted));
            prop_assert_eq!(d.outcome, Outcome::Deny, "{:?}", d);
            prop_assert!(d.charge.is_none());
            if req.agent_uid.as_deref() != Some("uid-old") {
                prop_assert_eq!(d.reasons, vec![ReasonCode::AgentSuspended]);
            }
        }
    }
}
