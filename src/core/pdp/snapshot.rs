//! What a decision reads: agents, tasks and grants, compiled from the CRD objects
//! and indexed so that a decision costs the same with ten grants in the cluster as
//! with ten thousand.
//!
//! Nothing here depends on the time: whether a grant or a task is in force is
//! decided at decision time ([`GrantEntry::in_force_at`], [`TaskEntry::active_at`]),
//! so a grant reaching `validUntil` stops allowing calls at that instant, before the
//! controller writes its Expired status. The shell keeps a snapshot current with
//! the `upsert_*` and `remove_*` methods as watch events arrive.

use std::collections::HashMap;
use std::sync::Arc;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::condition::{Condition, ConditionError};
use super::destination::{Destination, DestinationPattern, PatternError};
use crate::api::duration;
use crate::api::{AgentIdentity, AgentTask, DataSensitivity, GrantPhase, Risk, TaskPhase, ToolGrant};
use crate::core::conditions::{self, READY};
use crate::core::identity::spiffe_id;
use crate::core::uid::Uid;

/// One AgentIdentity as decisions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentEntry {
    pub name: Arc<str>,
    /// Held once per namespace (interned), as are task's agent names and audiences.
    pub namespace: Arc<str>,
    pub uid: Uid,
    /// Its `Ready` condition is True.
    pub ready: bool,
    /// `spec.suspended`: read from the spec, so the kill switch works before any status is written.
    pub suspended: bool,
    pub service_account: String,
    pub spiffe_id: String,
    pub owner: String,
    /// `sessionLimits.maxToolCalls` (a value below 1 allows no call).
    pub max_tool_calls: Option<u64>,
    /// `sessionLimits.maxDuration`, or why it could not be read (then every call in a task is refused).
    pub max_duration: Option<Result<SignedDuration, String>>,
}

impl AgentEntry {
    fn from_object(agent: &AgentIdentity, trust_domain: &str, strings: &mut Interner) -> Option<AgentEntry> {
        let name = strings.intern(agent.metadata.name.as_deref()?);
        let namespace = strings.intern(agent.metadata.namespace.as_deref()?);
        let limits = agent.spec.session_limits.as_ref();
        let max_duration = limits.and_then(|l| l.max_duration.as_deref()).map(|d| {
            duration::parse(d)
                .map_err(|e| e.to_string())
                .and_then(|d| SignedDuration::try_from(d).map_err(|e| e.to_string()))
        });
        Some(AgentEntry {
            uid: Uid::new(agent.metadata.uid.as_deref().unwrap_or_default()),
            ready: agent.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, READY)),
            suspended: agent.spec.suspended,
            service_account: agent.service_account_name(),
            spiffe_id: spiffe_id(agent.spec.trust_domain.as_deref().unwrap_or(trust_domain), &namespace, &name),
            owner: agent.spec.owner.clone(),
            max_tool_calls: limits.and_then(|l| l.max_tool_calls).map(|n| u64::try_from(n).unwrap_or(0)),
            max_duration,
            name,
            namespace,
        })
    }

    /// Whether the agent has session limits: then every call must name its AgentTask.
    pub fn has_session_limits(&self) -> bool {
        self.max_tool_calls.is_some() || self.max_duration.is_some()
    }
}

/// Why a task is not active at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskInactive {
    /// `spec.completed` is true.
    Completed,
    /// Its status phase is not Active (`None`: no status yet).
    Phase(Option<TaskPhase>),
    /// Active, but no `expiresAt` is recorded.
    NoExpiry,
    /// `expiresAt` has passed.
    Expired(Timestamp),
}

/// One AgentTask as decisions see it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEntry {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    pub uid: Uid,
    /// The agent the task belongs to (`spec.agentRef.name`).
    pub agent: Arc<str>,
    pub purpose: String,
    pub phase: Option<TaskPhase>,
    pub completed: bool,
    pub issued_at: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    pub anchor: Option<String>,
    /// `spec.audiences`: a task token must carry one of them.
    pub audiences: Box<[Arc<str>]>,
}

impl TaskEntry {
    fn from_object(task: &AgentTask, strings: &mut Interner) -> Option<TaskEntry> {
        let status = task.status.as_ref();
        let issued_at = status.and_then(|s| s.issued_at.as_ref()).map(|t| t.0);
        Some(TaskEntry {
            name: Arc::from(task.metadata.name.as_deref()?),
            namespace: strings.intern(task.metadata.namespace.as_deref()?),
            uid: Uid::new(task.metadata.uid.as_deref().unwrap_or_default()),
            agent: strings.intern(&task.spec.agent_ref.name),
            purpose: task.spec.purpose.clone(),
            phase: status.and_then(|s| s.phase),
            completed: task.spec.completed,
            issued_at,
            // Bounded by issuedAt + spec.ttl, as the controller computes it (no expiresAt: not Active).
            expires_at: status
                .and_then(|s| s.expires_at.as_ref())
                .map(|t| crate::core::task::bounded_end(task, issued_at, t.0)),
            anchor: status.and_then(|s| s.anchor.clone()),
            audiences: task.spec.audiences.iter().map(|a| strings.intern(a)).collect(),
        })
    }

    /// Whether calls may be made in the task at `now`: Active, not completed, before `expiresAt`.
    pub fn active_at(&self, now: Timestamp) -> Result<(), TaskInactive> {
        if self.completed {
            return Err(TaskInactive::Completed);
        }
        if self.phase != Some(TaskPhase::Active) {
            return Err(TaskInactive::Phase(self.phase));
        }
        match self.expires_at {
            None => Err(TaskInactive::NoExpiry),
            Some(at) if now >= at => Err(TaskInactive::Expired(at)),
            Some(_) => Ok(()),
        }
    }
}

/// Why a grant is not in force at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantInactive {
    /// `validUntil` has passed (whatever the status says).
    Expired(Timestamp),
    /// Before `validFrom`.
    NotYetValid(Timestamp),
    /// Its status phase is not Active (`None`: no status yet).
    Phase(Option<GrantPhase>),
}

/// A `destinations` entry, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompiledPattern {
    Valid(DestinationPattern),
    /// Never matches; kept to explain denials.
    Invalid {
        source: String,
        error: PatternError,
    },
}

impl CompiledPattern {
    pub fn matches(&self, d: &Destination) -> bool {
        match self {
            CompiledPattern::Valid(p) => p.matches(d),
            CompiledPattern::Invalid { .. } => false,
        }
    }
}

/// One entry of a grant's `tools`.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolEntry {
    /// Interned: shared with every other grant naming the same tool, and with the index.
    pub name: Arc<str>,
    /// Empty: every action. Interned.
    pub actions: Box<[Arc<str>]>,
    /// Empty: only calls without a destination.
    pub destinations: Box<[CompiledPattern]>,
    pub max_sensitivity: DataSensitivity,
    pub risk: Risk,
}

/// Limits of a grant (a value below 1 allows no call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    pub max_calls_per_session: Option<u64>,
    pub calls_per_minute: Option<u64>,
}

/// A grant's `when`, compiled (or why it does not compile: then the grant never allows a call).
#[derive(Debug, Clone)]
pub struct CompiledWhen {
    pub source: String,
    pub condition: Result<Condition, ConditionError>,
}

/// One ToolGrant as decisions see it.
#[derive(Debug, Clone)]
pub struct GrantEntry {
    /// Shared with the snapshot's key.
    pub name: Arc<str>,
    /// The agent it is for (`spec.agentRef.name`); interned, shared with the index.
    pub agent: Arc<str>,
    pub generation: Option<i64>,
    pub phase: Option<GrantPhase>,
    pub valid_from: Option<Timestamp>,
    pub valid_until: Option<Timestamp>,
    pub tools: Box<[Arc<ToolEntry>]>,
    pub approval_required: bool,
    pub limits: Limits,
    pub when: Option<Arc<CompiledWhen>>,
}

impl GrantEntry {
    /// Compiles a grant; `previous` (the entry it replaces) lends its compiled `when` if the source is unchanged.
    fn from_object(grant: &ToolGrant, previous: Option<&GrantEntry>, strings: &mut Interner) -> Option<GrantEntry> {
        let spec = &grant.spec;
        let tools = spec
            .tools
            .iter()
            .map(|t| {
                Arc::new(ToolEntry {
                    name: strings.intern(&t.name),
                    actions: t.actions.iter().map(|a| strings.intern(a)).collect(),
                    destinations: t
                        .destinations
                        .iter()
                        .map(|d| match DestinationPattern::parse(d) {
                            Ok(p) => CompiledPattern::Valid(p),
                            Err(error) => CompiledPattern::Invalid { source: d.clone(), error },
                        })
                        .collect(),
                    max_sensitivity: t.max_data_sensitivity,
                    risk: t.risk,
                })
            })
            .collect();
        let when = spec.when.as_deref().map(|src| {
            let reused = previous.and_then(|p| p.when.as_ref()).filter(|w| w.source == src);
            match reused {
                Some(w) => Arc::clone(w),
                None => Arc::new(CompiledWhen { source: src.to_string(), condition: Condition::compile(src) }),
            }
        });
        let limit = |n: Option<i32>| n.map(|n| u64::try_from(n).unwrap_or(0));
        let limits = spec.limits.as_ref();
        Some(GrantEntry {
            name: Arc::from(grant.metadata.name.as_deref()?),
            agent: strings.intern(&spec.agent_ref.name),
            generation: grant.metadata.generation,
            phase: grant.status.as_ref().and_then(|s| s.phase),
            valid_from: spec.valid_from.as_ref().map(|t| t.0),
            valid_until: spec.valid_until.as_ref().map(|t| t.0),
            tools,
            approval_required: spec.approval.as_ref().is_some_and(|a| a.required),
            limits: Limits {
                max_calls_per_session: limit(limits.and_then(|l| l.max_calls_per_session)),
                calls_per_minute: limit(limits.and_then(|l| l.calls_per_minute)),
            },
            when,
        })
    }

    /// Whether the grant is in force at `now`: status Active, and `now` within `[validFrom, validUntil)`.
    /// The window is checked here too, so expiry takes effect before the controller updates the status.
    pub fn in_force_at(&self, now: Timestamp) -> Result<(), GrantInactive> {
        if let Some(until) = self.valid_until.filter(|until| now >= *until) {
            return Err(GrantInactive::Expired(until));
        }
        if let Some(from) = self.valid_from.filter(|from| now < *from) {
            return Err(GrantInactive::NotYetValid(from));
        }
        if self.phase != Some(GrantPhase::Active) {
            return Err(GrantInactive::Phase(self.phase));
        }
        Ok(())
    }
}

/// One tool of one grant: what a decision iterates over for `(namespace, agent, tool)`.
#[derive(Debug, Clone)]
pub struct ToolRule {
    pub grant: Arc<GrantEntry>,
    pub tool: Arc<ToolEntry>,
}

/// The rules of one (agent, tool): almost always one, kept without an allocation of its own.
#[derive(Debug, Clone)]
enum Rules {
    One(ToolRule),
    Many(Vec<ToolRule>),
}

impl Rules {
    fn as_slice(&self) -> &[ToolRule] {
        match self {
            Rules::One(r) => std::slice::from_ref(r),
            Rules::Many(v) => v,
        }
    }

    /// Adds a rule, keeping them ordered by grant name (stable: a grant naming a tool twice keeps its
    /// own order).
    fn push(&mut self, rule: ToolRule) {
        let mut v = match std::mem::replace(self, Rules::Many(Vec::new())) {
            Rules::One(r) => vec![r],
            Rules::Many(v) => v,
        };
        v.push(rule);
        v.sort_by(|a, b| a.grant.name.cmp(&b.grant.name));
        *self = Rules::Many(v);
    }

    /// Removes the rules of grant `name`; `false` when none is left.
    fn remove_grant(&mut self, name: &str) -> bool {
        match self {
            Rules::One(r) => *r.grant.name != *name,
            Rules::Many(v) => {
                v.retain(|r| *r.grant.name != *name);
                match v.len() {
                    0 => false,
                    1 => {
                        *self = Rules::One(v.pop().expect("one rule"));
                        true
                    }
                    _ => true,
                }
            }
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Namespace {
    agents: HashMap<Arc<str>, AgentEntry>,
    tasks: HashMap<Arc<str>, TaskEntry>,
    grants: HashMap<Arc<str>, Arc<GrantEntry>>,
    /// agent → tool → rules, ordered by grant name (so explanations do not depend on event order).
    rules: HashMap<Arc<str>, HashMap<Arc<str>, Rules>>,
}

impl Namespace {
    fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.tasks.is_empty() && self.grants.is_empty()
    }

    fn unindex(&mut self, grant: &GrantEntry) {
        let Some(by_tool) = self.rules.get_mut(&*grant.agent) else {
            return;
        };
        for tool in &grant.tools {
            if let Some(rules) = by_tool.get_mut(&*tool.name)
                && !rules.remove_grant(&grant.name)
            {
                by_tool.remove(&*tool.name);
            }
        }
        if by_tool.is_empty() {
            self.rules.remove(&*grant.agent);
        } else {
            by_tool.shrink_to_fit();
        }
    }

    fn index(&mut self, grant: &Arc<GrantEntry>) {
        let by_tool = self.rules.entry(Arc::clone(&grant.agent)).or_default();
        for tool in &grant.tools {
            let rule = ToolRule { grant: Arc::clone(grant), tool: Arc::clone(tool) };
            match by_tool.get_mut(&*tool.name) {
                Some(rules) => rules.push(rule),
                None => {
                    by_tool.insert(Arc::clone(&tool.name), Rules::One(rule));
                }
            }
        }
    }
}

/// Strings that many entries repeat (tool names, actions, agent names), held once. Swept of strings
/// nothing else holds any more when it has doubled since the last sweep, so it stays proportional to
/// what the snapshot holds.
#[derive(Debug, Clone, Default)]
struct Interner {
    strings: std::collections::HashSet<Arc<str>>,
    swept_at: usize,
}

impl Interner {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(held) = self.strings.get(s) {
            return Arc::clone(held);
        }
        if self.strings.len() >= 2 * self.swept_at.max(512) {
            self.strings.retain(|held| Arc::strong_count(held) > 1);
            self.swept_at = self.strings.len();
        }
        let held: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&held));
        held
    }
}

/// The state decisions read. Cheap to query; `Clone` for copy-on-write sharing.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    trust_domain: String,
    namespaces: HashMap<Arc<str>, Namespace>,
    strings: Interner,
}

impl Snapshot {
    /// An empty snapshot; `trust_domain` is the operator's SPIFFE trust domain.
    pub fn new(trust_domain: &str) -> Snapshot {
        Snapshot { trust_domain: trust_domain.to_string(), namespaces: HashMap::new(), strings: Interner::default() }
    }

    /// A snapshot of these objects. Objects without a name or namespace are skipped.
    pub fn build(agents: &[AgentIdentity], grants: &[ToolGrant], tasks: &[AgentTask], trust_domain: &str) -> Snapshot {
        let mut snap = Snapshot::new(trust_domain);
        agents.iter().for_each(|a| snap.upsert_agent(a));
        grants.iter().for_each(|g| snap.upsert_grant(g));
        tasks.iter().for_each(|t| snap.upsert_task(t));
        snap
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    fn remove_if_empty(&mut self, namespace: &str) {
        if self.namespaces.get(namespace).is_some_and(Namespace::is_empty) {
            self.namespaces.remove(namespace);
        }
    }

    /// (namespace, name) of every agent held.
    pub fn agent_keys(&self) -> Vec<(String, String)> {
        self.keys_of(|ns| ns.agents.keys().map(|k| k.to_string()).collect())
    }

    /// (namespace, name) of every task held.
    pub fn task_keys(&self) -> Vec<(String, String)> {
        self.keys_of(|ns| ns.tasks.keys().map(|k| k.to_string()).collect())
    }

    /// (namespace, name) of every grant held.
    pub fn grant_keys(&self) -> Vec<(String, String)> {
        self.keys_of(|ns| ns.grants.keys().map(|k| k.to_string()).collect())
    }

    fn keys_of(&self, names: impl Fn(&Namespace) -> Vec<String>) -> Vec<(String, String)> {
        self.namespaces
            .iter()
            .flat_map(|(ns, n)| names(n).into_iter().map(move |name| (ns.to_string(), name)))
            .collect()
    }

    pub fn upsert_agent(&mut self, agent: &AgentIdentity) {
        if let Some(entry) = AgentEntry::from_object(agent, &self.trust_domain, &mut self.strings) {
            let ns = self.namespaces.entry(Arc::clone(&entry.namespace)).or_default();
            ns.agents.insert(Arc::clone(&entry.name), entry);
        }
    }

    pub fn remove_agent(&mut self, namespace: &str, name: &str) {
        if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.agents.remove(name);
        }
        self.remove_if_empty(namespace);
    }

    pub fn upsert_task(&mut self, task: &AgentTask) {
        if let Some(entry) = TaskEntry::from_object(task, &mut self.strings) {
            let ns = self.namespaces.entry(Arc::clone(&entry.namespace)).or_default();
            ns.tasks.insert(Arc::clone(&entry.name), entry);
        }
    }

    pub fn remove_task(&mut self, namespace: &str, name: &str) {
        if let Some(ns) = self.namespaces.get_mut(namespace) {
            ns.tasks.remove(name);
        }
        self.remove_if_empty(namespace);
    }

    /// Adds or replaces a grant. Its `when` is compiled only when its source changed (tens of
    /// microseconds); status-only updates reuse the compiled condition.
    pub fn upsert_grant(&mut self, grant: &ToolGrant) {
        let (Some(name), Some(namespace)) = (grant.metadata.name.as_deref(), grant.metadata.namespace.as_deref())
        else {
            return;
        };
        let ns = self.namespaces.entry(self.strings.intern(namespace)).or_default();
        let previous = ns.grants.remove(name);
        if let Some(previous) = &previous {
            ns.unindex(previous);
        }
        if let Some(entry) = GrantEntry::from_object(grant, previous.as_deref(), &mut self.strings) {
            let entry = Arc::new(entry);
            ns.index(&entry);
            ns.grants.insert(Arc::clone(&entry.name), entry);
        }
    }

    pub fn remove_grant(&mut self, namespace: &str, name: &str) {
        if let Some(ns) = self.namespaces.get_mut(namespace)
            && let Some(previous) = ns.grants.remove(name)
        {
            ns.unindex(&previous);
        }
        self.remove_if_empty(namespace);
    }

    pub fn agent(&self, namespace: &str, name: &str) -> Option<&AgentEntry> {
        self.namespaces.get(namespace)?.agents.get(name)
    }

    pub fn task(&self, namespace: &str, name: &str) -> Option<&TaskEntry> {
        self.namespaces.get(namespace)?.tasks.get(name)
    }

    pub fn grant(&self, namespace: &str, name: &str) -> Option<&GrantEntry> {
        self.namespaces.get(namespace)?.grants.get(name).map(Arc::as_ref)
    }

    /// Every grant entry of `agent` for `tool`, in any state, ordered by grant name.
    pub fn rules(&self, namespace: &str, agent: &str, tool: &str) -> &[ToolRule] {
        self.namespaces
            .get(namespace)
            .and_then(|ns| ns.rules.get(agent))
            .and_then(|by_tool| by_tool.get(tool))
            .map_or(&[], Rules::as_slice)
    }

    /// Numbers of agents, grants and tasks held.
    pub fn len(&self) -> (usize, usize, usize) {
        self.namespaces
            .values()
            .fold((0, 0, 0), |(a, g, t), ns| (a + ns.agents.len(), g + ns.grants.len(), t + ns.tasks.len()))
    }

    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
    }
}

/// Test fixtures shared by the decision tests and this module's.
#[cfg(test)]
pub(crate) mod fixtures {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition as KubeCondition, Time};

    use crate::api::{
        AgentIdentityStatus, AgentRef, AgentTaskSpec, AgentTaskStatus, ToolGrantSpec, ToolGrantStatus, test_agent,
    };

    use super::*;

    pub fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    /// A Ready agent in namespace `agents`, uid `uid-<name>`.
    pub fn ready_agent(name: &str) -> AgentIdentity {
        let mut a = test_agent(name);
        a.status = Some(AgentIdentityStatus {
            service_account_name: Some(a.service_account_name()),
            conditions: vec![KubeCondition {
                type_: READY.into(),
                status: "True".into(),
                reason: "IdentityReady".into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(t(0)),
            }],
            ..Default::default()
        });
        a
    }

    pub fn tool(name: &str, actions: &[&str], destinations: &[&str]) -> crate::api::Tool {
        crate::api::Tool {
            name: name.into(),
            actions: actions.iter().map(|s| s.to_string()).collect(),
            destinations: destinations.iter().map(|s| s.to_string()).collect(),
            max_data_sensitivity: DataSensitivity::Internal,
            risk: Risk::Low,
        }
    }

    /// An Active grant `name` for `agent` in namespace `agents`, without validity window.
    pub fn active_grant(name: &str, agent: &str, tools: Vec<crate::api::Tool>) -> ToolGrant {
        let mut g = ToolGrant::new(
            name,
            ToolGrantSpec {
                agent_ref: AgentRef { name: agent.into() },
                tools,
                kubernetes_rules: vec![],
                approval: None,
                valid_from: None,
                valid_until: None,
                limits: None,
                when: None,
            },
        );
        g.metadata.namespace = Some("agents".into());
        g.metadata.uid = Some(format!("uid-grant-{name}"));
        g.metadata.generation = Some(1);
        g.status = Some(ToolGrantStatus { phase: Some(GrantPhase::Active), ..Default::default() });
        g
    }

    /// An Active task `name` of `agent` in namespace `agents`, issued at t(0), expiring at t(3600).
    pub fn active_task(name: &str, agent: &str) -> AgentTask {
        let mut task = AgentTask::new(
            name,
            AgentTaskSpec {
                agent_ref: AgentRef { name: agent.into() },
                purpose: "triage issue 1234".into(),
                audiences: vec!["https://tools.example.com".into()],
                ttl: "1h".into(),
                completed: false,
            },
        );
        task.metadata.namespace = Some("agents".into());
        task.metadata.uid = Some(format!("uid-task-{name}"));
        task.status = Some(AgentTaskStatus {
            phase: Some(TaskPhase::Active),
            issued_at: Some(Time(t(0))),
            expires_at: Some(Time(t(3600))),
            anchor: Some(format!("agentid-task-{name}")),
            ..Default::default()
        });
        task
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    use super::fixtures::*;
    use super::*;
    use crate::api::{GrantLimits, SessionLimits};

    fn names(rules: &[ToolRule]) -> Vec<&str> {
        rules.iter().map(|r| &*r.grant.name).collect()
    }

    #[test]
    fn agents_are_compiled_from_spec_and_status() {
        let mut a = ready_agent("triage");
        a.spec.trust_domain = Some("prod.example.com".into());
        a.spec.session_limits = Some(SessionLimits { max_tool_calls: Some(50), max_duration: Some("30m".into()) });
        let mut not_ready = crate::api::test_agent("fresh");
        not_ready.spec.suspended = true;
        let mut nameless = ready_agent("x");
        nameless.metadata.name = None;
        let snap = Snapshot::build(&[a, not_ready, nameless], &[], &[], "cluster.local");
        let e = snap.agent("agents", "triage").unwrap();
        assert_eq!(
            (e.uid.to_string().as_str(), e.ready, e.suspended, e.service_account.as_str(), e.owner.as_str()),
            ("uid-triage", true, false, "agent-triage", "team-payments")
        );
        assert_eq!(e.spiffe_id, "spiffe://prod.example.com/ns/agents/agent/triage");
        assert_eq!(e.max_tool_calls, Some(50));
        assert_eq!(e.max_duration, Some(Ok(SignedDuration::from_mins(30))));
        assert!(e.has_session_limits());
        let f = snap.agent("agents", "fresh").unwrap();
        assert_eq!((f.ready, f.suspended, f.has_session_limits()), (false, true, false));
        assert_eq!(f.spiffe_id, "spiffe://cluster.local/ns/agents/agent/fresh");
        assert_eq!(snap.len(), (2, 0, 0));
        assert!(snap.agent("other", "triage").is_none());

        let mut bad = ready_agent("bad");
        bad.spec.session_limits = Some(SessionLimits { max_tool_calls: Some(-1), max_duration: Some("soon".into()) });
        let mut snap = snap;
        snap.upsert_agent(&bad);
        let b = snap.agent("agents", "bad").unwrap();
        assert_eq!(b.max_tool_calls, Some(0));
        assert!(matches!(b.max_duration, Some(Err(_))));
        snap.remove_agent("agents", "bad");
        assert!(snap.agent("agents", "bad").is_none());
    }

    #[test]
    fn tasks_are_active_only_in_phase_before_expiry_and_not_completed() {
        let base = active_task("t1", "triage");
        let entry = |f: &dyn Fn(&mut AgentTask)| {
            let mut task = base.clone();
            f(&mut task);
            TaskEntry::from_object(&task, &mut Interner::default()).unwrap()
        };
        let active = entry(&|_| {});
        assert_eq!(
            (&*active.agent, active.uid.to_string().as_str(), active.anchor.as_deref()),
            ("triage", "uid-task-t1", Some("agentid-task-t1"))
        );
        assert_eq!(active.issued_at, Some(t(0)));
        let cases: Vec<(TaskEntry, Timestamp, Result<(), TaskInactive>)> = vec![
            (active.clone(), t(0), Ok(())),
            (active.clone(), t(3599), Ok(())),
            (active.clone(), t(3600), Err(TaskInactive::Expired(t(3600)))),
            (entry(&|t| t.spec.completed = true), t(10), Err(TaskInactive::Completed)),
            (
                entry(&|t| t.status.as_mut().unwrap().phase = Some(TaskPhase::Revoked)),
                t(10),
                Err(TaskInactive::Phase(Some(TaskPhase::Revoked))),
            ),
            (entry(&|t| t.status = None), t(10), Err(TaskInactive::Phase(None))),
            (entry(&|t| t.status.as_mut().unwrap().expires_at = None), t(10), Err(TaskInactive::NoExpiry)),
            // A status stretched by someone else than the controller: issuedAt + spec.ttl (1h) still ends it.
            (entry(&|task| task.status.as_mut().unwrap().expires_at = Some(Time(t(86_400)))), t(3599), Ok(())),
            (
                entry(&|task| task.status.as_mut().unwrap().expires_at = Some(Time(t(86_400)))),
                t(3600),
                Err(TaskInactive::Expired(t(3600))),
            ),
            // A shorter ttl than the status says (spec changed): the earlier end counts.
            (entry(&|t| t.spec.ttl = "10m".into()), t(600), Err(TaskInactive::Expired(t(600)))),
        ];
        for (i, (task, now, want)) in cases.into_iter().enumerate() {
            assert_eq!(task.active_at(now), want, "case {i}");
        }
    }

    #[test]
    fn grants_are_in_force_by_phase_and_window_at_decision_time() {
        let mut g = active_grant("g", "triage", vec![tool("crm", &[], &[])]);
        g.spec.valid_from = Some(Time(t(100)));
        g.spec.valid_until = Some(Time(t(200)));
        let entry = GrantEntry::from_object(&g, None, &mut Interner::default()).unwrap();
        let cases = [
            (t(99), Err(GrantInactive::NotYetValid(t(100)))),
            (t(100), Ok(())),
            (t(199), Ok(())),
            // The status still says Active: validUntil alone ends it.
            (t(200), Err(GrantInactive::Expired(t(200)))),
        ];
        for (now, want) in cases {
            assert_eq!(entry.in_force_at(now), want, "{now}");
        }
        for phase in [None, Some(GrantPhase::Pending), Some(GrantPhase::Revoked), Some(GrantPhase::Expired)] {
            let mut g = g.clone();
            g.status = phase.map(|p| crate::api::ToolGrantStatus { phase: Some(p), ..Default::default() });
            let entry = GrantEntry::from_object(&g, None, &mut Interner::default()).unwrap();
            assert_eq!(entry.in_force_at(t(150)), Err(GrantInactive::Phase(phase)));
        }
    }

    #[test]
    fn the_interner_shares_strings_and_forgets_those_nothing_holds() {
        let mut i = Interner::default();
        let a = i.intern("read");
        assert!(Arc::ptr_eq(&a, &i.intern("read")));
        // Strings nobody holds any more go at the next sweep; held ones stay shared.
        for n in 0..5000 {
            let _ = i.intern(&format!("gone-{n}"));
        }
        assert!(i.strings.len() < 2048, "{}", i.strings.len());
        assert!(Arc::ptr_eq(&a, &i.intern("read")));
    }

    #[test]
    fn grants_compile_tools_limits_and_patterns() {
        let mut g = active_grant("g", "triage", vec![tool("crm", &["read"], &["https://crm.internal/api/", "bad*"])]);
        g.spec.limits = Some(GrantLimits { max_calls_per_session: Some(5), calls_per_minute: Some(0) });
        g.spec.approval = Some(crate::api::Approval { required: true, ..Default::default() });
        let e = GrantEntry::from_object(&g, None, &mut Interner::default()).unwrap();
        assert_eq!(e.limits, Limits { max_calls_per_session: Some(5), calls_per_minute: Some(0) });
        assert!(e.approval_required);
        assert_eq!((&*e.name, e.generation, &*e.agent), ("g", Some(1), "triage"));
        let dests = &e.tools[0].destinations;
        assert!(matches!(&dests[0], CompiledPattern::Valid(p) if p.to_string() == "https://crm.internal/api/"));
        assert!(
            matches!(&dests[1], CompiledPattern::Invalid { source, error: PatternError::Wildcard } if source == "bad*")
        );
        let d = Destination::parse("https://crm.internal/api/x").unwrap();
        assert!(dests[0].matches(&d) && !dests[1].matches(&d));
    }

    #[test]
    fn rules_are_indexed_by_agent_and_tool_and_follow_upserts_and_removals() {
        let g1 = active_grant("b-crm", "triage", vec![tool("crm", &["read"], &[]), tool("mail", &[], &[])]);
        let g2 = active_grant("a-crm", "triage", vec![tool("crm", &["write"], &[])]);
        let g3 = active_grant("other", "billing", vec![tool("crm", &[], &[])]);
        let mut snap = Snapshot::build(&[], &[g1.clone(), g2, g3], &[], "cluster.local");
        assert_eq!(names(snap.rules("agents", "triage", "crm")), vec!["a-crm", "b-crm"]);
        assert_eq!(names(snap.rules("agents", "triage", "mail")), vec!["b-crm"]);
        assert_eq!(names(snap.rules("agents", "billing", "crm")), vec!["other"]);
        assert!(snap.rules("agents", "triage", "payments").is_empty());
        assert!(snap.rules("elsewhere", "triage", "crm").is_empty());

        // The grant stops giving mail: its rule goes, and no duplicate stays for crm.
        let mut changed = g1.clone();
        changed.spec.tools = vec![tool("crm", &["read"], &[])];
        snap.upsert_grant(&changed);
        assert_eq!(names(snap.rules("agents", "triage", "crm")), vec!["a-crm", "b-crm"]);
        assert!(snap.rules("agents", "triage", "mail").is_empty());

        // Re-pointed at another agent (a new grant object): it leaves the old agent's index.
        let mut moved = changed.clone();
        moved.spec.agent_ref.name = "billing".into();
        snap.upsert_grant(&moved);
        assert_eq!(names(snap.rules("agents", "triage", "crm")), vec!["a-crm"]);
        assert_eq!(names(snap.rules("agents", "billing", "crm")), vec!["b-crm", "other"]);

        snap.remove_grant("agents", "b-crm");
        snap.remove_grant("agents", "a-crm");
        snap.remove_grant("agents", "never-existed");
        assert!(snap.rules("agents", "triage", "crm").is_empty());
        assert_eq!(names(snap.rules("agents", "billing", "crm")), vec!["other"]);
        assert_eq!(snap.len(), (0, 1, 0));
        snap.remove_grant("agents", "other");
        assert!(snap.is_empty(), "empty namespaces are dropped");
    }

    #[test]
    fn when_is_compiled_once_per_source() {
        let mut g = active_grant("g", "triage", vec![tool("crm", &[], &[])]);
        g.spec.when = Some("request.action == 'read'".into());
        let mut snap = Snapshot::new("cluster.local");
        snap.upsert_grant(&g);
        let first = Arc::clone(snap.grant("agents", "g").unwrap().when.as_ref().unwrap());
        assert!(first.condition.is_ok());

        // A status update keeps the compiled program.
        g.status = Some(crate::api::ToolGrantStatus { phase: Some(GrantPhase::Expired), ..Default::default() });
        snap.upsert_grant(&g);
        let same = snap.grant("agents", "g").unwrap().when.as_ref().unwrap();
        assert!(Arc::ptr_eq(&first, same));

        // A new source is compiled; one that does not compile is kept with its error.
        g.spec.when = Some("user.name == 'x'".into());
        g.metadata.generation = Some(2);
        snap.upsert_grant(&g);
        let w = snap.grant("agents", "g").unwrap().when.as_ref().unwrap();
        assert!(!Arc::ptr_eq(&first, w));
        assert_eq!(w.condition.as_ref().unwrap_err(), &ConditionError::UnknownVariable("user".into()));
    }

    #[test]
    fn objects_without_names_are_skipped_not_panicked() {
        let mut g = active_grant("g", "triage", vec![tool("crm", &[], &[])]);
        g.metadata.namespace = None;
        let mut task = active_task("t", "triage");
        task.metadata.name = None;
        let snap = Snapshot::build(&[], &[g], &[task], "cluster.local");
        assert!(snap.is_empty());
        let mut snap = snap;
        snap.remove_task("nope", "nope");
        snap.remove_agent("nope", "nope");
        snap.upsert_task(&active_task("t", "triage"));
        assert_eq!(snap.task("agents", "t").map(|t| &*t.agent), Some("triage"));
        snap.remove_task("agents", "t");
        assert!(snap.is_empty());
    }
}
