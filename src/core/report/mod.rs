//! The least-privilege report, pure: what each agent was granted (from the cluster's objects) against
//! what it actually used (from the audit trail), and what follows from it — unused grants, tools and
//! RBAC, agents never used, grants without an end, tasks that never completed, denials by reason,
//! workloads refused or flagged at admission, namespaces not enforced — each finding tagged with the
//! framework items it addresses ([`frameworks`]), and per used grant a narrower ToolGrant built from
//! what was observed.
//!
//! [`Usage`] folds records one at a time (memory: one entry per distinct agent × grant × tool/verb, a
//! bounded sample of destinations); [`build`] joins it with the [`Inventory`]. Rendering is in
//! [`render`]. No I/O, no clock.

pub mod frameworks;
pub mod render;

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Serialize;

use crate::api::{AgentIdentity, AgentTask, TaskPhase, Tool, ToolGrant, ToolGrantSpec};
use crate::core::audit::{Kind, Record};
use crate::core::pdp::destination::{Destination, DestinationPattern};
pub use frameworks::{FindingKind, Tags};

/// Destinations kept per (grant, tool) to narrow destination patterns; more are counted, not kept.
const MAX_DESTINATIONS: usize = 64;

/// The cluster's side: agents, grants, tasks and the namespaces' enforcement modes.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub agents: Vec<AgentIdentity>,
    pub grants: Vec<ToolGrant>,
    pub tasks: Vec<AgentTask>,
    /// Namespaces that hold agents or workloads, with their `agentid.dev/enforcement` label (if any).
    pub namespaces: Vec<(String, Option<String>)>,
}

impl Inventory {
    /// Keeps only what is in namespace `ns`.
    pub fn retain_namespace(&mut self, ns: &str) {
        let keep = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.namespace.as_deref() == Some(ns);
        self.agents.retain(|a| keep(&a.metadata));
        self.grants.retain(|g| keep(&g.metadata));
        self.tasks.retain(|t| keep(&t.metadata));
        self.namespaces.retain(|(n, _)| n == ns);
    }
}

/// One Kubernetes API request as the trail names it: `(apiGroup, resource, verb, object name)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ApiUse {
    pub group: String,
    pub resource: String,
    pub verb: String,
    pub name: Option<String>,
}

/// Parses the path of an API request (`/api/v1/namespaces/ns/secrets/x`,
/// `/apis/apps/v1/namespaces/ns/deployments/web/scale`) into group, resource (with subresource) and name.
pub fn api_use(path: &str, verb: &str) -> Option<ApiUse> {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').filter(|p| !p.is_empty()).collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] => (String::new(), rest),
        ["apis", group, _version, rest @ ..] => (group.to_string(), rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, name) = match rest {
        [resource] => (resource.to_string(), None),
        [resource, name] => (resource.to_string(), Some(name.to_string())),
        [resource, name, sub, ..] => (format!("{resource}/{sub}"), Some(name.to_string())),
        _ => return None,
    };
    Some(ApiUse { group, resource, verb: verb.to_string(), name })
}

/// What one agent did in the window.
#[derive(Debug, Clone, Default)]
pub struct AgentUsage {
    /// Tool calls decided, by outcome.
    pub allowed: u64,
    pub denied: u64,
    pub approval_required: u64,
    pub tokens_issued: u64,
    pub api_calls: u64,
    /// Denials (tool calls, API requests, token refusals) by reason code.
    pub denials: BTreeMap<String, u64>,
    /// Allowed tool calls by grant and tool: actions and a sample of destinations.
    pub tools: BTreeMap<(String, String), ToolUse>,
    /// Allowed API requests by the grant whose RoleBinding allowed them (`None`: some other binding).
    pub api: BTreeMap<Option<String>, BTreeMap<ApiUse, u64>>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct ToolUse {
    pub calls: u64,
    pub actions: BTreeSet<String>,
    pub destinations: BTreeSet<String>,
    pub destinations_dropped: u64,
}

/// Admission findings of one workload object in the window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WorkloadUsage {
    pub denied: u64,
    pub warned: u64,
    pub audited: u64,
    pub rules: BTreeSet<String>,
    pub last_seen: String,
}

/// Everything the trail says, folded.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    /// Keyed by (namespace, agent).
    pub agents: BTreeMap<(String, String), AgentUsage>,
    /// Keyed by (namespace, `Kind/name`).
    pub workloads: BTreeMap<(String, String), WorkloadUsage>,
    pub records: u64,
    pub first: Option<String>,
    pub last: Option<String>,
}

impl Usage {
    /// Keeps only the agents and workloads of namespace `ns`.
    pub fn retain_namespace(&mut self, ns: &str) {
        self.agents.retain(|(n, _), _| n == ns);
        self.workloads.retain(|(n, _), _| n == ns);
    }

    /// Folds one record (at or after the window's start; the caller filters by time).
    pub fn add(&mut self, r: &Record) {
        self.records += 1;
        if self.first.as_ref().is_none_or(|f| r.time < *f) {
            self.first = Some(r.time.clone());
        }
        if self.last.as_ref().is_none_or(|l| r.time > *l) {
            self.last = Some(r.time.clone());
        }
        match r.kind {
            Kind::AdmissionDenied | Kind::AdmissionWarned | Kind::AdmissionAudited => {
                let (Some(ns), Some(object)) = (&r.namespace, &r.destination) else { return };
                let w = self.workloads.entry((ns.clone(), object.clone())).or_default();
                match r.kind {
                    Kind::AdmissionDenied => w.denied += 1,
                    Kind::AdmissionWarned => w.warned += 1,
                    _ => w.audited += 1,
                }
                w.rules.extend(r.reasons.iter().cloned());
                if r.time > w.last_seen {
                    w.last_seen = r.time.clone();
                }
                return;
            }
            _ => {}
        }
        let (Some(ns), Some(agent)) = (&r.namespace, &r.agent) else { return };
        let u = self.agents.entry((ns.clone(), agent.clone())).or_default();
        let acted = matches!(r.kind, Kind::Decision | Kind::ApiCall | Kind::TaskTokenIssued | Kind::TaskTokenRefused);
        if acted {
            if u.first_seen.as_ref().is_none_or(|f| r.time < *f) {
                u.first_seen = Some(r.time.clone());
            }
            if u.last_seen.as_ref().is_none_or(|l| r.time > *l) {
                u.last_seen = Some(r.time.clone());
            }
        }
        let deny = |u: &mut AgentUsage, reasons: &[String], fallback: &str| {
            if reasons.is_empty() {
                *u.denials.entry(fallback.to_string()).or_default() += 1;
            }
            for reason in reasons {
                *u.denials.entry(reason.clone()).or_default() += 1;
            }
        };
        match r.kind {
            Kind::Decision => match r.decision.as_deref() {
                Some("allow") => {
                    u.allowed += 1;
                    let (Some(grant), Some(tool)) = (&r.grant, &r.tool) else { return };
                    let t = u.tools.entry((grant.clone(), tool.clone())).or_default();
                    t.calls += 1;
                    if let Some(a) = &r.action {
                        t.actions.insert(a.clone());
                    }
                    if let Some(d) = &r.destination {
                        if t.destinations.len() < MAX_DESTINATIONS || t.destinations.contains(d) {
                            t.destinations.insert(d.clone());
                        } else {
                            t.destinations_dropped += 1;
                        }
                    }
                }
                Some("approval-required") => u.approval_required += 1,
                _ => {
                    u.denied += 1;
                    deny(u, &r.reasons, "denied");
                }
            },
            Kind::ApiCall => {
                u.api_calls += 1;
                if r.decision.as_deref() == Some("allow") {
                    let path = r.destination.as_deref().unwrap_or_default();
                    if let Some(a) = api_use(path, r.action.as_deref().unwrap_or_default()) {
                        *u.api.entry(r.grant.clone()).or_default().entry(a).or_default() += 1;
                    }
                } else if r.decision.as_deref() == Some("deny") {
                    deny(u, &["kubernetes-api-forbidden".to_string()], "");
                }
            }
            Kind::TaskTokenIssued => u.tokens_issued += 1,
            Kind::TaskTokenRefused => deny(u, &r.reasons, "task-token-refused"),
            _ => {}
        }
    }
}

/// One finding, with the framework items it addresses.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    /// What the finding is about: `grant/<name>`, `task/<name>`, `<Kind>/<name>`, `namespace/<name>`, ...
    pub subject: String,
    pub detail: String,
    pub tags: Tags,
}

impl Finding {
    fn new(kind: FindingKind, subject: String, detail: String) -> Self {
        Finding { kind, subject, detail, tags: kind.tags() }
    }
}

/// One grant: what it allows against what was used.
#[derive(Debug, Clone, Serialize)]
pub struct GrantReport {
    pub name: String,
    pub phase: Option<String>,
    pub valid_until: Option<String>,
    /// `tool:action` (`*` for every action) and `group/resource:verb` the grant allows.
    pub granted: Vec<String>,
    /// The subset of `granted` seen used.
    pub used: Vec<String>,
    pub calls: u64,
    /// A narrower ToolGrant spec from what was observed (`None` when nothing was used: revoke instead).
    pub suggested: Option<ToolGrantSpec>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentReport {
    pub namespace: String,
    pub name: String,
    pub owner: String,
    pub suspended: bool,
    pub allowed: u64,
    pub denied: u64,
    pub approval_required: u64,
    pub tokens_issued: u64,
    pub api_calls: u64,
    pub denials: BTreeMap<String, u64>,
    pub last_seen: Option<String>,
    pub granted: usize,
    pub used: usize,
    pub grants: Vec<GrantReport>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The window: records at or after `since`.
    pub since: Option<String>,
    pub generated_at: String,
    pub records: u64,
    pub agents: Vec<AgentReport>,
    /// Findings not about one agent: workloads, namespaces.
    pub findings: Vec<Finding>,
    pub workloads: BTreeMap<String, WorkloadUsage>,
}

impl Report {
    /// Every finding, the agents' and the cluster-wide ones.
    pub fn all_findings(&self) -> impl Iterator<Item = &Finding> {
        self.agents.iter().flat_map(|a| a.findings.iter()).chain(self.findings.iter())
    }
}

fn tool_keys(t: &Tool) -> Vec<String> {
    if t.actions.is_empty() {
        vec![format!("{}:*", t.name)]
    } else {
        t.actions.iter().map(|a| format!("{}:{a}", t.name)).collect()
    }
}

/// The (apiGroup, resource, verb) triples a rule allows, wildcards as written.
fn rule_triples(r: &PolicyRule) -> Vec<(String, String, String)> {
    let groups = r.api_groups.clone().unwrap_or_default();
    let resources = r.resources.clone().unwrap_or_default();
    let mut out = Vec::new();
    for g in &groups {
        for res in &resources {
            for v in &r.verbs {
                out.push((g.clone(), res.clone(), v.clone()));
            }
        }
    }
    out
}

/// `group/resource:verb` (`core` for the core group).
fn triple_key((g, res, v): &(String, String, String)) -> String {
    format!("{}/{res}:{v}", if g.is_empty() { "core" } else { g })
}

fn rule_keys(r: &PolicyRule) -> Vec<String> {
    rule_triples(r).iter().map(triple_key).collect()
}

fn matches(pattern: &str, value: &str) -> bool {
    pattern == "*" || pattern == value
}

/// Whether an allowed API request falls under a rule of a grant.
fn rule_covers(r: &PolicyRule, a: &ApiUse) -> bool {
    let groups = r.api_groups.as_deref().unwrap_or_default();
    let resources = r.resources.as_deref().unwrap_or_default();
    groups.iter().any(|g| matches(g, &a.group))
        && resources.iter().any(|res| matches(res, &a.resource))
        && r.verbs.iter().any(|v| matches(v, &a.verb))
}

/// A tool of the grant narrowed to what was used: used actions, and the destination patterns some
/// observed destination matched.
fn narrow_tool(t: &Tool, used: &ToolUse) -> Tool {
    let observed: Vec<Destination> = used.destinations.iter().filter_map(|d| Destination::parse(d).ok()).collect();
    let destinations = t
        .destinations
        .iter()
        .filter(|p| DestinationPattern::parse(p).is_ok_and(|p| observed.iter().any(|d| p.matches(d))))
        .cloned()
        .collect();
    Tool { actions: used.actions.iter().cloned().collect(), destinations, ..t.clone() }
}

/// Rules narrowed to the (group, resource) and verbs used, with the object names seen when every use
/// named one.
fn narrow_rules(rules: &[PolicyRule], used: &BTreeMap<ApiUse, u64>) -> Vec<PolicyRule> {
    /// Per (group, resource): verbs used, object names seen, whether some use named no object.
    type Seen = (BTreeSet<String>, BTreeSet<String>, bool);
    let mut by_resource: BTreeMap<(String, String), Seen> = BTreeMap::new();
    for a in used.keys().filter(|a| rules.iter().any(|r| rule_covers(r, a))) {
        let e = by_resource.entry((a.group.clone(), a.resource.clone())).or_default();
        e.0.insert(a.verb.clone());
        match &a.name {
            Some(n) => {
                e.1.insert(n.clone());
            }
            None => e.2 = true,
        }
    }
    by_resource
        .into_iter()
        .map(|((group, resource), (verbs, names, unnamed))| PolicyRule {
            api_groups: Some(vec![group]),
            resources: Some(vec![resource]),
            verbs: verbs.into_iter().collect(),
            resource_names: (!unnamed && !names.is_empty()).then(|| names.into_iter().collect()),
            non_resource_urls: None,
        })
        .collect()
}

/// The report of `inventory` against `usage`, as of `now` (RFC 3339), over records since `since`.
pub fn build(inventory: &Inventory, usage: &Usage, since: Option<String>, now: &str) -> Report {
    let empty = AgentUsage::default();
    let mut agents = Vec::new();
    for a in &inventory.agents {
        let ns = a.metadata.namespace.clone().unwrap_or_default();
        let name = a.metadata.name.clone().unwrap_or_default();
        let u = usage.agents.get(&(ns.clone(), name.clone())).unwrap_or(&empty);
        let mut findings = Vec::new();
        let mut grants = Vec::new();
        let (mut granted_n, mut used_n) = (0, 0);
        let my_grants = inventory
            .grants
            .iter()
            .filter(|g| g.metadata.namespace.as_deref() == Some(ns.as_str()) && g.spec.agent_ref.name == name);
        for g in my_grants {
            let gname = g.metadata.name.clone().unwrap_or_default();
            let granted: Vec<String> = g
                .spec
                .tools
                .iter()
                .flat_map(tool_keys)
                .chain(g.spec.kubernetes_rules.iter().flat_map(rule_keys))
                .collect();
            let mut used = BTreeSet::new();
            let mut calls = 0;
            let mut tools = Vec::new();
            for t in &g.spec.tools {
                let Some(tu) = u.tools.get(&(gname.clone(), t.name.clone())) else { continue };
                calls += tu.calls;
                for a in &tu.actions {
                    used.insert(if t.actions.is_empty() { format!("{}:*", t.name) } else { format!("{}:{a}", t.name) });
                }
                tools.push(narrow_tool(t, tu));
                let unused_actions: Vec<&String> = t.actions.iter().filter(|a| !tu.actions.contains(*a)).collect();
                if !unused_actions.is_empty() {
                    findings.push(Finding::new(
                        FindingKind::UnusedTool,
                        format!("grant/{gname}"),
                        format!(
                            "tool {} was called, but never with action(s) {}",
                            t.name,
                            unused_actions.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                    ));
                }
            }
            for t in g.spec.tools.iter().filter(|t| !u.tools.contains_key(&(gname.clone(), t.name.clone()))) {
                if !u.tools.keys().any(|(gr, _)| gr == &gname) {
                    break; // the whole grant is unused: one finding below
                }
                findings.push(Finding::new(
                    FindingKind::UnusedTool,
                    format!("grant/{gname}"),
                    format!("tool {} was never called", t.name),
                ));
            }
            let api_used = u.api.get(&Some(gname.clone()));
            let mut unused_rbac = Vec::new();
            for r in &g.spec.kubernetes_rules {
                for t in rule_triples(r) {
                    let hit = api_used.is_some_and(|s| {
                        s.keys()
                            .any(|a| matches(&t.0, &a.group) && matches(&t.1, &a.resource) && matches(&t.2, &a.verb))
                    });
                    if hit {
                        used.insert(triple_key(&t));
                    } else {
                        unused_rbac.push(triple_key(&t));
                    }
                }
            }
            calls += api_used.map_or(0, |s| s.values().sum::<u64>());
            let anything_used = !used.is_empty();
            if !anything_used {
                findings.push(Finding::new(
                    FindingKind::UnusedGrant,
                    format!("grant/{gname}"),
                    format!("nothing it allows ({}) was used in the window: revoke it", granted.join(", ")),
                ));
            } else if !unused_rbac.is_empty() {
                findings.push(Finding::new(
                    FindingKind::UnusedRbac,
                    format!("grant/{gname}"),
                    format!("Kubernetes permissions never used: {}", unused_rbac.join(", ")),
                ));
            }
            if g.spec.valid_until.is_none() {
                findings.push(Finding::new(
                    FindingKind::GrantWithoutExpiry,
                    format!("grant/{gname}"),
                    "no validUntil: the grant never ends on its own; give it one (just-in-time)".into(),
                ));
            }
            let suggested = anything_used.then(|| ToolGrantSpec {
                tools,
                kubernetes_rules: api_used.map(|s| narrow_rules(&g.spec.kubernetes_rules, s)).unwrap_or_default(),
                ..g.spec.clone()
            });
            granted_n += granted.len();
            used_n += used.len();
            grants.push(GrantReport {
                name: gname,
                phase: g.status.as_ref().and_then(|s| s.phase).map(|p| format!("{p:?}")),
                valid_until: g.spec.valid_until.as_ref().map(|t| t.0.to_string()),
                granted,
                used: used.into_iter().collect(),
                calls,
                suggested,
            });
        }
        let acted = u.allowed + u.denied + u.approval_required + u.tokens_issued + u.api_calls > 0;
        if !acted {
            findings.push(Finding::new(
                FindingKind::NeverUsedAgent,
                format!("agent/{name}"),
                "no token, tool call or API request in the window: offboard it if it is no longer needed".into(),
            ));
        }
        for t in inventory
            .tasks
            .iter()
            .filter(|t| t.metadata.namespace.as_deref() == Some(ns.as_str()) && t.spec.agent_ref.name == name)
        {
            let phase = t.status.as_ref().and_then(|s| s.phase);
            if phase == Some(TaskPhase::Expired) {
                findings.push(Finding::new(
                    FindingKind::TaskNeverCompleted,
                    format!("task/{}", t.metadata.name.as_deref().unwrap_or_default()),
                    "expired without being marked completed: its credential lived its whole ttl".into(),
                ));
            }
        }
        if !u.denials.is_empty() {
            let list: Vec<String> = u.denials.iter().map(|(r, n)| format!("{r} ×{n}")).collect();
            findings.push(Finding::new(FindingKind::Denials, format!("agent/{name}"), list.join(", ")));
        }
        agents.push(AgentReport {
            namespace: ns,
            name,
            owner: a.spec.owner.clone(),
            suspended: a.spec.suspended,
            allowed: u.allowed,
            denied: u.denied,
            approval_required: u.approval_required,
            tokens_issued: u.tokens_issued,
            api_calls: u.api_calls,
            denials: u.denials.clone(),
            last_seen: u.last_seen.clone(),
            granted: granted_n,
            used: used_n,
            grants,
            findings,
        });
    }
    agents.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut findings = Vec::new();
    let mut workloads = BTreeMap::new();
    for ((ns, object), w) in &usage.workloads {
        let rules: Vec<&str> = w.rules.iter().map(String::as_str).collect();
        findings.push(Finding::new(
            FindingKind::WorkloadViolations,
            format!("{ns}/{object}"),
            format!("{} (denied ×{}, warned ×{}, audited ×{})", rules.join(", "), w.denied, w.warned, w.audited),
        ));
        workloads.insert(format!("{ns}/{object}"), w.clone());
    }
    for (ns, mode) in &inventory.namespaces {
        if mode.as_deref() != Some("enforce") {
            let now = mode.as_deref().unwrap_or("not governed");
            findings.push(Finding::new(
                FindingKind::NamespaceNotEnforced,
                format!("namespace/{ns}"),
                format!("enforcement: {now}; workloads with static or shared credentials are admitted here"),
            ));
        }
    }
    Report { since, generated_at: now.to_string(), records: usage.records, agents, findings, workloads }
}

#[cfg(test)]
mod tests;
