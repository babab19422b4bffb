//! Every admission rule, by stable id. The ids appear in messages, JSON and
//! SARIF output, metrics and docs; never rename one.
//!
//! | id | applies to | what it refuses |
//! |---|---|---|
//! | `static-secret-env` | every workload | `env[].valueFrom.secretKeyRef` in any container list |
//! | `static-secret-envfrom` | every workload | `envFrom[].secretRef`, optional or not |
//! | `static-secret-volume` | every workload | `volumes[].secret`, `projected.sources[].secret`, CSI secret-store volumes |
//! | `hardcoded-credential` | every workload | a literal credential in `env[].value`, `args` or `command` |
//! | `default-service-account` | every workload | no `serviceAccountName`, `default`, or the deprecated field set to default |
//! | `shared-service-account` | both | an agent workload not on its agent's dedicated SA; a non-agent workload on an agent's SA |
//! | `unknown-agent` | agent workloads | the `agentid.dev/agent` label names no (or a suspended) AgentIdentity |
//! | `long-lived-token` | agent workloads | no explicit `automountServiceAccountToken: false`; projected tokens without audience or longer than the agent's tokenTTL |
//! | `agent-use-denied` | agent workloads | the requester may not run that agent (needs `use` on `agentidentities/<name>`; see [`super::review::agent_use_check`]) |
//!
//! An agent workload is a pod (template) labeled `agentid.dev/agent=<AgentIdentity name>`.

use std::collections::HashMap;
use std::fmt::Write as _;

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, EphemeralContainer, PodSpec};
use serde::Serialize;

use super::detectors;
use super::workload::Workload;
use crate::api::{AGENT_LABEL, AgentIdentity, MAX_TOKEN_TTL_SECS, duration};

/// The RBAC verb on `agentidentities/<name>` that lets a user run workloads as that agent.
pub const AGENT_USE_VERB: &str = "use";

/// Stable rule ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "&'static str")]
pub enum RuleId {
    StaticSecretEnv,
    StaticSecretEnvFrom,
    StaticSecretVolume,
    HardcodedCredential,
    DefaultServiceAccount,
    SharedServiceAccount,
    UnknownAgent,
    LongLivedToken,
    AgentUseDenied,
}

impl From<RuleId> for &'static str {
    fn from(r: RuleId) -> Self {
        r.as_str()
    }
}

impl RuleId {
    pub const ALL: [RuleId; 9] = [
        RuleId::StaticSecretEnv,
        RuleId::StaticSecretEnvFrom,
        RuleId::StaticSecretVolume,
        RuleId::HardcodedCredential,
        RuleId::DefaultServiceAccount,
        RuleId::SharedServiceAccount,
        RuleId::UnknownAgent,
        RuleId::LongLivedToken,
        RuleId::AgentUseDenied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::StaticSecretEnv => "static-secret-env",
            RuleId::StaticSecretEnvFrom => "static-secret-envfrom",
            RuleId::StaticSecretVolume => "static-secret-volume",
            RuleId::HardcodedCredential => "hardcoded-credential",
            RuleId::DefaultServiceAccount => "default-service-account",
            RuleId::SharedServiceAccount => "shared-service-account",
            RuleId::UnknownAgent => "unknown-agent",
            RuleId::LongLivedToken => "long-lived-token",
            RuleId::AgentUseDenied => "agent-use-denied",
        }
    }

    pub fn parse(s: &str) -> Option<RuleId> {
        RuleId::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// One sentence on what the rule protects against (docs, SARIF).
    pub fn summary(self) -> &'static str {
        match self {
            RuleId::StaticSecretEnv => {
                "Environment variables must not read static Secrets; agents get short-lived credentials."
            }
            RuleId::StaticSecretEnvFrom => {
                "envFrom must not import static Secrets; agents get short-lived credentials."
            }
            RuleId::StaticSecretVolume => "Volumes must not mount static Secrets; agents get short-lived credentials.",
            RuleId::HardcodedCredential => {
                "Credentials must not be written literally into env values, args or commands."
            }
            RuleId::DefaultServiceAccount => "Workloads must not run as the namespace's default ServiceAccount.",
            RuleId::SharedServiceAccount => {
                "An agent runs only as its own dedicated ServiceAccount, and nothing else runs as it."
            }
            RuleId::UnknownAgent => "An agent workload must name an existing, active AgentIdentity.",
            RuleId::LongLivedToken => "Agent workloads use only short-lived, audience-bound tokens.",
            RuleId::AgentUseDenied => "Only those allowed to `use` an AgentIdentity may run workloads as that agent.",
        }
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One broken rule at one place in the object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub rule: RuleId,
    /// Field path in the object as written, e.g. `spec.template.spec.containers[0].env[2]`.
    pub path: String,
    /// One line a developer can act on: `[agentid/<rule>] <Kind> <ns>/<name>: <path> <what>; fix: <how>`.
    /// Never contains a secret value.
    pub message: String,
}

/// What admission needs to know of an AgentIdentity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentInfo {
    pub name: String,
    pub owner: String,
    pub service_account: String,
    pub suspended: bool,
    pub token_ttl_secs: u64,
    /// Whether agentid confirmed the ServiceAccount is the agent's own
    /// ([`AgentIdentity::service_account_in_place`]). An agent whose ServiceAccount is not in place is
    /// treated as unknown: naming another agent's (or anyone's) ServiceAccount gains nothing.
    pub in_place: bool,
}

impl AgentInfo {
    pub fn from_identity(a: &AgentIdentity) -> Self {
        AgentInfo {
            name: a.metadata.name.clone().unwrap_or_default(),
            owner: a.spec.owner.clone(),
            service_account: a.service_account_name(),
            suspended: a.spec.suspended,
            in_place: a.service_account_in_place(),
            token_ttl_secs: duration::parse(&a.spec.token_ttl).map(|d| d.as_secs()).unwrap_or(MAX_TOKEN_TTL_SECS),
        }
    }
}

/// Where admission looks up agents (a cache in the webhook, the input files in `agentid check`).
pub trait AgentDirectory {
    /// The AgentIdentity `name` in `namespace`.
    fn agent(&self, namespace: &str, name: &str) -> Option<AgentInfo>;
    /// The name of the agent whose dedicated ServiceAccount is `service_account` in `namespace`: only
    /// an agent whose ServiceAccount is in place owns it.
    fn agent_of_service_account(&self, namespace: &str, service_account: &str) -> Option<String>;
    /// Every AgentIdentity in `namespace` that names `service_account`, in place or not.
    fn claimants_of_service_account(&self, namespace: &str, service_account: &str) -> Vec<String>;
}

/// An [`AgentDirectory`] over a fixed set of AgentIdentities. Used offline (`agentid check`), where
/// the manifests describe agents that do not exist yet: their ServiceAccounts count as in place.
#[derive(Debug, Default, Clone)]
pub struct StaticDirectory {
    agents: HashMap<(String, String), AgentInfo>,
    by_sa: HashMap<(String, String), Vec<String>>,
}

impl StaticDirectory {
    pub fn new<'a>(identities: impl IntoIterator<Item = &'a AgentIdentity>, default_namespace: &str) -> Self {
        let mut d = StaticDirectory::default();
        for a in identities {
            let ns = a.metadata.namespace.clone().unwrap_or_else(|| default_namespace.to_string());
            let info = AgentInfo { in_place: true, ..AgentInfo::from_identity(a) };
            d.by_sa.entry((ns.clone(), info.service_account.clone())).or_default().push(info.name.clone());
            d.agents.insert((ns, info.name.clone()), info);
        }
        d
    }

    /// Like [`StaticDirectory::new`], but with each agent's ServiceAccount in place only if its status
    /// says so, as in a live cluster (tests of the webhook use this).
    pub fn live<'a>(identities: impl IntoIterator<Item = &'a AgentIdentity>) -> Self {
        let mut d = StaticDirectory::default();
        for a in identities {
            let ns = a.metadata.namespace.clone().unwrap_or_default();
            let info = AgentInfo::from_identity(a);
            d.by_sa.entry((ns.clone(), info.service_account.clone())).or_default().push(info.name.clone());
            d.agents.insert((ns, info.name.clone()), info);
        }
        d
    }
}

impl StaticDirectory {
    /// Adds the agent `info.name` of `namespace`, or replaces it (also under a changed ServiceAccount).
    pub fn upsert(&mut self, namespace: &str, info: AgentInfo) {
        self.remove(namespace, &info.name);
        self.by_sa.entry((namespace.to_string(), info.service_account.clone())).or_default().push(info.name.clone());
        self.agents.insert((namespace.to_string(), info.name.clone()), info);
    }

    /// Removes the agent `name` of `namespace`; whether it was there.
    pub fn remove(&mut self, namespace: &str, name: &str) -> bool {
        let Some(old) = self.agents.remove(&(namespace.to_string(), name.to_string())) else { return false };
        let key = (namespace.to_string(), old.service_account);
        if let Some(names) = self.by_sa.get_mut(&key) {
            names.retain(|n| n != name);
            if names.is_empty() {
                self.by_sa.remove(&key);
            }
        }
        true
    }

    /// `(namespace, name)` of every agent.
    pub fn keys(&self) -> impl Iterator<Item = &(String, String)> {
        self.agents.keys()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

impl AgentDirectory for StaticDirectory {
    fn agent(&self, namespace: &str, name: &str) -> Option<AgentInfo> {
        self.agents.get(&(namespace.to_string(), name.to_string())).cloned()
    }
    fn agent_of_service_account(&self, namespace: &str, service_account: &str) -> Option<String> {
        self.claimants_of_service_account(namespace, service_account)
            .into_iter()
            .find(|name| self.agent(namespace, name).is_some_and(|a| a.in_place))
    }
    fn claimants_of_service_account(&self, namespace: &str, service_account: &str) -> Vec<String> {
        self.by_sa.get(&(namespace.to_string(), service_account.to_string())).cloned().unwrap_or_default()
    }
}

/// A read-only view over the three container lists, which have different types.
struct ContainerView<'a> {
    list: &'static str,
    index: usize,
    name: &'a str,
    env: Option<&'a Vec<EnvVar>>,
    env_from: Option<&'a Vec<EnvFromSource>>,
    command: Option<&'a Vec<String>>,
    args: Option<&'a Vec<String>>,
}

impl<'a> ContainerView<'a> {
    fn of(list: &'static str, index: usize, c: &'a Container) -> Self {
        let (name, env, env_from) = (c.name.as_str(), c.env.as_ref(), c.env_from.as_ref());
        ContainerView { list, index, name, env, env_from, command: c.command.as_ref(), args: c.args.as_ref() }
    }

    fn ephemeral(index: usize, c: &'a EphemeralContainer) -> Self {
        let (name, env, env_from) = (c.name.as_str(), c.env.as_ref(), c.env_from.as_ref());
        let list = "ephemeralContainers";
        ContainerView { list, index, name, env, env_from, command: c.command.as_ref(), args: c.args.as_ref() }
    }
}

/// Every container of the pod: initContainers (sidecars included), containers, ephemeralContainers.
fn containers(pod: &PodSpec) -> impl Iterator<Item = ContainerView<'_>> {
    let init = pod.init_containers.iter().flatten().enumerate().map(|(i, c)| ContainerView::of("initContainers", i, c));
    let main = pod.containers.iter().enumerate().map(|(i, c)| ContainerView::of("containers", i, c));
    let eph = pod.ephemeral_containers.iter().flatten().enumerate().map(|(i, c)| ContainerView::ephemeral(i, c));
    init.chain(main).chain(eph)
}

/// Collects violations with the workload's identity in every message.
struct Report<'a> {
    subject: String,
    base: &'a str,
    labels_path: &'a str,
    out: Vec<Violation>,
}

impl Report<'_> {
    fn add(&mut self, rule: RuleId, rel_path: &str, what: &str, fix: &str) {
        let path = if rel_path.is_empty() { self.base.to_string() } else { format!("{}.{rel_path}", self.base) };
        let mut message = String::with_capacity(96 + what.len() + fix.len());
        let _ = write!(message, "[agentid/{rule}] {}: {path} {what}; fix: {fix}", self.subject);
        self.out.push(Violation { rule, path, message });
    }
}

const FIX_SECRET: &str = "remove it and grant the tool through a ToolGrant so the agent gets a short-lived credential";

/// Judges one workload. Returns every violation, in a stable order.
pub fn evaluate(w: &Workload, agents: &dyn AgentDirectory) -> Vec<Violation> {
    let ns = w.namespace.as_deref().unwrap_or("default");
    let mut r = Report {
        subject: format!("{} {ns}/{}", w.kind, w.name),
        base: w.spec_path,
        labels_path: w.labels_path,
        out: Vec::new(),
    };
    let pod = &w.pod;

    for c in containers(pod) {
        let cpath = format!("{}[{}]", c.list, c.index);
        for (i, e) in c.env.into_iter().flatten().enumerate() {
            if let Some(sk) = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()) {
                let what = format!("({}) reads Secret {:?} via secretKeyRef", e.name, sk.name);
                r.add(RuleId::StaticSecretEnv, &format!("{cpath}.env[{i}]"), &what, FIX_SECRET);
            }
            if let Some(v) = e.value.as_deref()
                && let Some(f) = detectors::scan_value(Some(&e.name), v)
            {
                let what = format!("({}) holds a literal {} [{}]", e.name, f.description, f.detector);
                r.add(RuleId::HardcodedCredential, &format!("{cpath}.env[{i}].value"), &what, FIX_HARDCODED);
            }
        }
        for (i, ef) in c.env_from.into_iter().flatten().enumerate() {
            if let Some(sr) = &ef.secret_ref {
                let optional = if sr.optional == Some(true) { " (optional)" } else { "" };
                let what = format!("imports every key of Secret {:?}{optional} via envFrom.secretRef", sr.name);
                r.add(RuleId::StaticSecretEnvFrom, &format!("{cpath}.envFrom[{i}]"), &what, FIX_SECRET);
            }
        }
        for (field, words) in [("command", c.command), ("args", c.args)] {
            let words = words.map(Vec::as_slice).unwrap_or_default();
            for (i, word) in words.iter().enumerate() {
                let mut found = detectors::scan_text(word);
                // `--api-key <value>`: the flag names the value in the next word.
                if i > 0
                    && words[i - 1].starts_with('-')
                    && !words[i - 1].contains('=')
                    && !word.starts_with('-')
                    && let Some(f) = detectors::scan_value(Some(&words[i - 1]), word)
                    && !found.contains(&f)
                {
                    found.push(f);
                }
                for f in found {
                    let what = format!("(container {:?}) holds a literal {} [{}]", c.name, f.description, f.detector);
                    r.add(RuleId::HardcodedCredential, &format!("{cpath}.{field}[{i}]"), &what, FIX_HARDCODED);
                }
            }
        }
    }

    for (i, v) in pod.volumes.iter().flatten().enumerate() {
        let vpath = format!("volumes[{i}]");
        if let Some(s) = &v.secret {
            let what = format!("({}) mounts Secret {:?}", v.name, s.secret_name.as_deref().unwrap_or(""));
            r.add(RuleId::StaticSecretVolume, &vpath, &what, FIX_SECRET);
        }
        if let Some(p) = &v.projected {
            for (j, src) in p.sources.iter().flatten().enumerate() {
                if let Some(s) = &src.secret {
                    let what = format!("({}) projects Secret {:?}", v.name, s.name);
                    r.add(RuleId::StaticSecretVolume, &format!("{vpath}.projected.sources[{j}]"), &what, FIX_SECRET);
                }
            }
        }
        if let Some(csi) = &v.csi
            && (csi.driver == "secrets-store.csi.k8s.io"
                || csi.volume_attributes.as_ref().is_some_and(|a| a.contains_key("secretProviderClass")))
        {
            let what = format!("({}) mounts secrets from the CSI secret store (driver {:?})", v.name, csi.driver);
            r.add(RuleId::StaticSecretVolume, &vpath, &what, FIX_SECRET);
        }
    }

    let sa = effective_service_account(pod);
    if sa == "default" {
        let (path, what) = match (&pod.service_account_name, &pod.service_account) {
            (Some(_), _) => ("serviceAccountName", "is \"default\""),
            (None, Some(_)) => ("serviceAccount", "(deprecated field) is \"default\""),
            (None, None) => {
                ("serviceAccountName", "is not set, so the pod runs as the namespace's default ServiceAccount")
            }
        };
        r.add(
            RuleId::DefaultServiceAccount,
            path,
            what,
            "set serviceAccountName to a dedicated ServiceAccount (an AgentIdentity creates one per agent)",
        );
    }

    match w.labels.get(AGENT_LABEL) {
        Some(agent_name) => agent_rules(&mut r, pod, ns, agent_name, sa, agents),
        None => {
            if sa != "default"
                && let Some(owner) = agents.agent_of_service_account(ns, sa)
            {
                let what = format!(
                    "is {sa:?}, the dedicated ServiceAccount of agent {owner:?}, but the workload has no {AGENT_LABEL} label"
                );
                r.add(RuleId::SharedServiceAccount, "serviceAccountName", &what, &format!("use a ServiceAccount of its own, or label the pod template {AGENT_LABEL}={owner} if it is that agent"));
            }
        }
    }
    r.out
}

const FIX_HARDCODED: &str = "remove the literal, rotate the credential (anyone who can read the spec has it), and grant the tool through a ToolGrant";

fn effective_service_account(pod: &PodSpec) -> &str {
    pod.service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(pod.service_account.as_deref().filter(|s| !s.is_empty()))
        .unwrap_or("default")
}

fn agent_rules(r: &mut Report<'_>, pod: &PodSpec, ns: &str, agent_name: &str, sa: &str, agents: &dyn AgentDirectory) {
    let label_path = format!("{}[{AGENT_LABEL}]", r.labels_path);
    let agent = agents.agent(ns, agent_name);
    match &agent {
        None => {
            let what =
                format!("names agent {agent_name:?}, but there is no AgentIdentity {agent_name:?} in namespace {ns:?}");
            let fix = format!("create AgentIdentity {agent_name:?} in {ns:?}, or correct the {AGENT_LABEL} label");
            r.add_at(RuleId::UnknownAgent, &label_path, &what, &fix);
        }
        Some(a) if a.suspended => {
            let what = format!("names agent {agent_name:?}, which is suspended (spec.suspended: true)");
            let fix =
                format!("ask the agent's owner ({}) to lift the suspension; suspended agents may not run", a.owner);
            r.add_at(RuleId::UnknownAgent, &label_path, &what, &fix);
        }
        Some(a) if !a.in_place => {
            let what = format!(
                "names agent {agent_name:?}, whose ServiceAccount {:?} agentid has not confirmed as the agent's own",
                a.service_account
            );
            let fix = format!(
                "see the Ready condition of AgentIdentity {agent_name:?} (kubectl describe agentidentity {agent_name} -n {ns}); \
                 a new agent is ready moments after it is created, one whose ServiceAccount belongs to someone else never is"
            );
            r.add_at(RuleId::UnknownAgent, &label_path, &what, &fix);
        }
        Some(a) if sa != a.service_account => {
            let what = format!(
                "is {sa:?}, but agent {agent_name:?} must run as its dedicated ServiceAccount {:?}",
                a.service_account
            );
            r.add(
                RuleId::SharedServiceAccount,
                "serviceAccountName",
                &what,
                &format!("set serviceAccountName: {}", a.service_account),
            );
        }
        Some(_) => {}
    }

    let ttl = agent.as_ref().map_or(MAX_TOKEN_TTL_SECS, |a| a.token_ttl_secs);
    if pod.automount_service_account_token != Some(false) {
        let what = match pod.automount_service_account_token {
            Some(true) => "is true: the auto-mounted token lives up to a year",
            _ => "is not set to false: an auto-mounted token lives up to a year",
        };
        r.add(
            RuleId::LongLivedToken,
            "automountServiceAccountToken",
            what,
            &format!("set automountServiceAccountToken: false and mount a projected serviceAccountToken with an audience and expirationSeconds <= {ttl}"),
        );
    }
    for (i, v) in pod.volumes.iter().flatten().enumerate() {
        for (j, src) in v.projected.iter().flat_map(|p| p.sources.iter().flatten()).enumerate() {
            let Some(t) = &src.service_account_token else { continue };
            let path = format!("volumes[{i}].projected.sources[{j}].serviceAccountToken");
            if t.audience.as_deref().is_none_or(str::is_empty) {
                r.add(
                    RuleId::LongLivedToken,
                    &path,
                    &format!("({}) has no audience, so the token is valid for the Kubernetes API itself", v.name),
                    "set audience to the tool the agent calls (one of its AgentIdentity's audiences)",
                );
            }
            // The apiserver defaults expirationSeconds to 1h.
            let secs = t.expiration_seconds.unwrap_or(3600);
            if secs > ttl as i64 {
                r.add(
                    RuleId::LongLivedToken,
                    &path,
                    &format!("({}) asks for {secs}s tokens, longer than the agent's tokenTTL of {ttl}s", v.name),
                    &format!("set expirationSeconds <= {ttl}"),
                );
            }
        }
    }
}

/// The violation for a requester who may not run `agent` (the outcome of the `use` check).
pub fn agent_use_denied(w: &Workload, user: &str, agent: &str) -> Violation {
    let ns = w.namespace.as_deref().unwrap_or("default");
    let mut r = Report {
        subject: format!("{} {ns}/{}", w.kind, w.name),
        base: w.spec_path,
        labels_path: w.labels_path,
        out: Vec::new(),
    };
    let path = format!("{}[{AGENT_LABEL}]", w.labels_path);
    let what = format!("names agent {agent:?}, but {user} may not run it");
    let fix = format!(
        "ask the agent's owner for `use` on agentidentities/{agent} in {ns:?} (verb use, apiGroup agentid.dev), or deploy through someone who has it"
    );
    r.add_at(RuleId::AgentUseDenied, &path, &what, &fix);
    r.out.remove(0)
}

impl Report<'_> {
    /// Like `add`, with a path relative to the object root instead of the pod spec.
    fn add_at(&mut self, rule: RuleId, abs_path: &str, what: &str, fix: &str) {
        let mut message = String::new();
        let _ = write!(message, "[agentid/{rule}] {}: {abs_path} {what}; fix: {fix}", self.subject);
        self.out.push(Violation { rule, path: abs_path.to_string(), message });
    }
}

/// Violations of `new` that `old` did not already have (same rule, path and finding), so an
/// UPDATE is judged on what it changes: metadata-only updates of existing pods
/// (labels, finalizers) are never blocked by rules adopted after they were created.
pub fn new_violations(new: Vec<Violation>, old: &[Violation]) -> Vec<Violation> {
    // The message names what is referenced (Secret, ServiceAccount, agent, detector), so pointing
    // the same field at something else counts as new.
    new.into_iter()
        .filter(|v| !old.iter().any(|o| o.rule == v.rule && o.path == v.path && o.message == v.message))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::core::admission::workload::from_object;

    fn agent(name: &str, suspended: bool, ttl: &str) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.spec.suspended = suspended;
        a.spec.token_ttl = ttl.into();
        a
    }

    fn directory() -> StaticDirectory {
        let agents = [agent("billing", false, "10m"), agent("frozen", true, "10m")];
        StaticDirectory::new(agents.iter(), "default")
    }

    fn info(name: &str, sa: &str, in_place: bool) -> AgentInfo {
        AgentInfo {
            name: name.into(),
            owner: "team".into(),
            service_account: sa.into(),
            suspended: false,
            token_ttl_secs: 600,
            in_place,
        }
    }

    #[test]
    fn a_live_directory_follows_changes_of_service_account_and_deletions() {
        let mut d = StaticDirectory::default();
        d.upsert("ns", info("a", "agent-a", false));
        d.upsert("ns", info("b", "agent-a", true));
        d.upsert("other", info("a", "agent-a", true));
        assert_eq!(d.len(), 3);
        // Only the claimant whose ServiceAccount is in place owns it; claimants are per namespace.
        assert_eq!(d.agent_of_service_account("ns", "agent-a").as_deref(), Some("b"));
        let mut claimants = d.claimants_of_service_account("ns", "agent-a");
        claimants.sort();
        assert_eq!(claimants, ["a", "b"]);

        // A changed ServiceAccount moves the agent in the index; a replaced entry is not listed twice.
        d.upsert("ns", info("b", "agent-b", true));
        d.upsert("ns", info("a", "agent-a", true));
        assert_eq!(d.claimants_of_service_account("ns", "agent-a"), ["a"]);
        assert_eq!(d.agent_of_service_account("ns", "agent-b").as_deref(), Some("b"));
        assert_eq!(d.agent("ns", "a").map(|i| i.in_place), Some(true));

        assert!(d.remove("ns", "a"));
        assert!(!d.remove("ns", "a"), "already gone");
        assert!(d.claimants_of_service_account("ns", "agent-a").is_empty());
        assert_eq!(d.agent_of_service_account("other", "agent-a").as_deref(), Some("a"), "another namespace kept");
        assert_eq!(d.len(), 2);
        assert!(d.by_sa.values().all(|v| !v.is_empty()), "no empty index entries left behind");
    }

    /// A Deployment in namespace `agents` whose pod template spec is `spec` (YAML) with `labels`.
    fn deployment(labels: &str, spec: &str) -> Workload {
        let spec = spec.lines().map(|l| format!("        {l}")).collect::<Vec<_>>().join("\n");
        let yaml = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: agents}}\nspec:\n  template:\n    metadata:\n      labels: {labels}\n    spec:\n{spec}\n"
        );
        let v: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
        from_object(&v).unwrap().unwrap()
    }

    const GOOD_AGENT: &str = "serviceAccountName: agent-billing
automountServiceAccountToken: false
containers:
- name: app
  image: registry.example.com/billing:1
  env:
  - {name: TOKEN_PATH, value: /var/run/agentid/token}
  - {name: LOG_LEVEL, value: info}
  volumeMounts: [{name: token, mountPath: /var/run/agentid}]
volumes:
- name: token
  projected:
    sources:
    - serviceAccountToken: {audience: https://tools.example.com, expirationSeconds: 600, path: token}";

    fn rules_of(v: &[Violation]) -> Vec<&'static str> {
        v.iter().map(|v| v.rule.as_str()).collect()
    }

    fn eval(w: &Workload) -> Vec<Violation> {
        evaluate(w, &directory())
    }

    #[test]
    fn a_good_agent_workload_passes() {
        let w = deployment("{agentid.dev/agent: billing}", GOOD_AGENT);
        assert_eq!(eval(&w), vec![]);
    }

    #[test]
    fn a_plain_workload_with_its_own_service_account_passes() {
        let w = deployment("{app: web}", "serviceAccountName: web\ncontainers: [{name: app, image: nginx}]");
        assert_eq!(eval(&w), vec![]);
    }

    #[test]
    fn static_secret_env_names_the_variable_and_secret_with_an_actionable_message() {
        let w = deployment(
            "{app: web}",
            "serviceAccountName: web\ncontainers:\n- name: app\n  image: x\n  env:\n  - {name: A, value: b}\n  - {name: B, value: c}\n  - name: DB_PASSWORD\n    valueFrom: {secretKeyRef: {name: db, key: password}}",
        );
        let v = eval(&w);
        assert_eq!(rules_of(&v), vec!["static-secret-env"]);
        assert_eq!(v[0].path, "spec.template.spec.containers[0].env[2]");
        assert_eq!(
            v[0].message,
            "[agentid/static-secret-env] Deployment agents/web: spec.template.spec.containers[0].env[2] (DB_PASSWORD) reads Secret \"db\" via secretKeyRef; fix: remove it and grant the tool through a ToolGrant so the agent gets a short-lived credential"
        );
    }

    #[test]
    fn every_container_list_is_checked() {
        let w = deployment(
            "{app: web}",
            "serviceAccountName: web
initContainers:
- {name: sidecar, image: x, restartPolicy: Always, envFrom: [{secretRef: {name: s1}}]}
containers:
- {name: app, image: x}
ephemeralContainers:
- name: debug
  image: x
  env: [{name: K, valueFrom: {secretKeyRef: {name: s2, key: k}}}]",
        );
        let v = eval(&w);
        let paths: Vec<_> = v.iter().map(|v| (v.rule.as_str(), v.path.as_str())).collect();
        assert_eq!(
            paths,
            vec![
                ("static-secret-envfrom", "spec.template.spec.initContainers[0].envFrom[0]"),
                ("static-secret-env", "spec.template.spec.ephemeralContainers[0].env[0]"),
            ]
        );
    }

    #[test]
    fn env_from_secret_is_flagged_even_when_optional_but_config_maps_are_fine() {
        let w = deployment(
            "{app: web}",
            "serviceAccountName: web\ncontainers:\n- name: app\n  image: x\n  envFrom:\n  - configMapRef: {name: settings}\n  - secretRef: {name: creds, optional: true}",
        );
        let v = eval(&w);
        assert_eq!(rules_of(&v), vec!["static-secret-envfrom"]);
        assert!(v[0].message.contains("Secret \"creds\" (optional)"), "{}", v[0].message);
        assert!(v[0].path.ends_with("containers[0].envFrom[1]"));
    }

    #[test]
    fn secret_volumes_projected_secrets_and_csi_secret_stores_are_flagged() {
        let w = deployment(
            "{app: web}",
            "serviceAccountName: web
containers: [{name: app, image: x}]
volumes:
- {name: tls, secret: {secretName: web-tls}}
- name: mixed
  projected:
    sources:
    - configMap: {name: ca}
    - secret: {name: api-creds}
- name: vault
  csi: {driver: secrets-store.csi.k8s.io, volumeAttributes: {secretProviderClass: vault-db}}
- {name: cache, emptyDir: {}}",
        );
        let v = eval(&w);
        let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "spec.template.spec.volumes[0]",
                "spec.template.spec.volumes[1].projected.sources[1]",
                "spec.template.spec.volumes[2]"
            ]
        );
        assert!(v.iter().all(|v| v.rule == RuleId::StaticSecretVolume));
    }

    #[test]
    fn the_auto_injected_kube_api_access_volume_is_not_a_static_secret() {
        let w = deployment(
            "{app: web}",
            "serviceAccountName: web
containers: [{name: app, image: x}]
volumes:
- name: kube-api-access-x7k2p
  projected:
    defaultMode: 420
    sources:
    - serviceAccountToken: {expirationSeconds: 3607, path: token}
    - configMap: {name: kube-root-ca.crt, items: [{key: ca.crt, path: ca.crt}]}
    - downwardAPI: {items: [{path: namespace, fieldRef: {apiVersion: v1, fieldPath: metadata.namespace}}]}",
        );
        assert_eq!(eval(&w), vec![]);
    }

    #[test]
    fn default_service_account_in_all_its_forms() {
        for (spec, path) in [
            ("containers: [{name: app, image: x}]", "spec.template.spec.serviceAccountName"),
            (
                "serviceAccountName: default\ncontainers: [{name: app, image: x}]",
                "spec.template.spec.serviceAccountName",
            ),
            ("serviceAccount: default\ncontainers: [{name: app, image: x}]", "spec.template.spec.serviceAccount"),
            ("serviceAccountName: ''\ncontainers: [{name: app, image: x}]", "spec.template.spec.serviceAccountName"),
        ] {
            let v = eval(&deployment("{app: web}", spec));
            assert_eq!(rules_of(&v), vec!["default-service-account"], "{spec}");
            assert_eq!(v[0].path, path);
        }
        // The deprecated field naming a real SA is fine.
        assert_eq!(eval(&deployment("{app: web}", "serviceAccount: web\ncontainers: [{name: app, image: x}]")), vec![]);
    }

    #[test]
    fn agent_on_a_foreign_service_account_is_shared_service_account() {
        let spec = GOOD_AGENT.replace("serviceAccountName: agent-billing", "serviceAccountName: web");
        let v = eval(&deployment("{agentid.dev/agent: billing}", &spec));
        assert_eq!(rules_of(&v), vec!["shared-service-account"]);
        assert!(v[0].message.contains("set serviceAccountName: agent-billing"), "{}", v[0].message);
    }

    #[test]
    fn non_agent_workload_on_an_agent_service_account_is_shared_service_account() {
        let v =
            eval(&deployment("{app: web}", "serviceAccountName: agent-billing\ncontainers: [{name: app, image: x}]"));
        assert_eq!(rules_of(&v), vec!["shared-service-account"]);
        assert!(v[0].message.contains("agent \"billing\""), "{}", v[0].message);
        // The same SA name in another namespace belongs to no agent.
        let mut w = deployment("{app: web}", "serviceAccountName: agent-billing\ncontainers: [{name: app, image: x}]");
        w.namespace = Some("elsewhere".into());
        assert_eq!(eval(&w), vec![]);
    }

    #[test]
    fn unknown_and_suspended_agents_are_refused_with_distinct_reasons() {
        let v = eval(&deployment("{agentid.dev/agent: ghost}", &GOOD_AGENT.replace("agent-billing", "agent-ghost")));
        assert_eq!(rules_of(&v), vec!["unknown-agent"]);
        assert_eq!(v[0].path, "spec.template.metadata.labels[agentid.dev/agent]");
        assert!(v[0].message.contains("no AgentIdentity \"ghost\" in namespace \"agents\""), "{}", v[0].message);

        let v = eval(&deployment("{agentid.dev/agent: frozen}", &GOOD_AGENT.replace("agent-billing", "agent-frozen")));
        assert_eq!(rules_of(&v), vec!["unknown-agent"]);
        assert!(v[0].message.contains("suspended"), "{}", v[0].message);
        assert!(v[0].message.contains("team-payments"), "{}", v[0].message);
    }

    #[test]
    fn agent_workloads_need_explicit_automount_false() {
        let unset = GOOD_AGENT.replace("automountServiceAccountToken: false\n", "");
        let v = eval(&deployment("{agentid.dev/agent: billing}", &unset));
        assert_eq!(rules_of(&v), vec!["long-lived-token"]);
        assert_eq!(v[0].path, "spec.template.spec.automountServiceAccountToken");
        let on = GOOD_AGENT.replace("automountServiceAccountToken: false", "automountServiceAccountToken: true");
        assert_eq!(rules_of(&eval(&deployment("{agentid.dev/agent: billing}", &on))), vec!["long-lived-token"]);
        // Non-agent workloads are not held to agent rules.
        let plain = "serviceAccountName: web\ncontainers: [{name: app, image: x}]";
        assert_eq!(eval(&deployment("{app: web}", plain)), vec![]);
    }

    #[test]
    fn projected_tokens_need_an_audience_and_a_lifetime_within_the_agent_ttl() {
        let no_aud = GOOD_AGENT.replace("audience: https://tools.example.com, ", "");
        let v = eval(&deployment("{agentid.dev/agent: billing}", &no_aud));
        assert_eq!(rules_of(&v), vec!["long-lived-token"]);
        assert!(v[0].message.contains("no audience"));
        let long = GOOD_AGENT.replace("expirationSeconds: 600", "expirationSeconds: 7200");
        let v = eval(&deployment("{agentid.dev/agent: billing}", &long));
        assert_eq!(rules_of(&v), vec!["long-lived-token"]);
        assert!(v[0].message.contains("7200s") && v[0].message.contains("600s"), "{}", v[0].message);
        // Unset expirationSeconds means the apiserver's 1h default: too long for a 10m agent.
        let unset = GOOD_AGENT.replace(", expirationSeconds: 600", "");
        assert_eq!(rules_of(&eval(&deployment("{agentid.dev/agent: billing}", &unset))), vec!["long-lived-token"]);
    }

    #[test]
    fn unknown_agents_get_the_one_hour_ceiling() {
        let spec = GOOD_AGENT
            .replace("agent-billing", "agent-ghost")
            .replace("expirationSeconds: 600", "expirationSeconds: 3600");
        let v = eval(&deployment("{agentid.dev/agent: ghost}", &spec));
        assert_eq!(rules_of(&v), vec!["unknown-agent"], "3600s is within the 1h ceiling");
    }

    #[test]
    fn pods_use_their_own_paths() {
        let v: serde_json::Value = serde_norway::from_str(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: agents, labels: {agentid.dev/agent: ghost}}\nspec:\n  serviceAccountName: agent-ghost\n  automountServiceAccountToken: false\n  containers: [{name: app, image: x, env: [{name: S, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]",
        )
        .unwrap();
        let w = from_object(&v).unwrap().unwrap();
        let v = eval(&w);
        let paths: Vec<_> = v.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(paths, vec!["spec.containers[0].env[0]", "metadata.labels[agentid.dev/agent]"]);
        assert!(v[0].message.starts_with("[agentid/static-secret-env] Pod agents/p: spec.containers[0].env[0]"));
    }

    #[test]
    fn every_violation_is_listed_and_rule_ids_are_stable() {
        let spec = "containers:
- name: app
  image: x
  env: [{name: DB, valueFrom: {secretKeyRef: {name: db, key: k}}}]
  envFrom: [{secretRef: {name: all}}]
volumes: [{name: s, secret: {secretName: s}}]";
        let v = eval(&deployment("{agentid.dev/agent: ghost}", spec));
        let mut rules = rules_of(&v);
        rules.sort();
        assert_eq!(
            rules,
            vec![
                "default-service-account",
                "long-lived-token",
                "static-secret-env",
                "static-secret-envfrom",
                "static-secret-volume",
                "unknown-agent"
            ]
        );
        for r in RuleId::ALL {
            assert_eq!(RuleId::parse(r.as_str()), Some(r));
            assert_eq!(serde_json::to_value(r).unwrap(), serde_json::json!(r.as_str()));
        }
    }

    #[test]
    fn hardcoded_credentials_in_env_args_and_commands_are_named_not_echoed() {
        let gh = format!("ghp_{}", "a1B2c3D4e5".repeat(4).chars().take(36).collect::<String>());
        let aws = format!("AKIA{}", "Q7RT2XZ9MN4KW8PL");
        let generic = "Zq8#vR2!pL9$wX4@kT7";
        let spec = format!(
            "serviceAccountName: web
containers:
- name: app
  image: x
  env:
  - {{name: GITHUB_TOKEN, value: '{gh}'}}
  - {{name: DB_PASSWORD, value: '{generic}'}}
  - {{name: SUPPORT_EMAIL, value: help@example.com}}
  - {{name: API_URL, value: 'https://api.example.com/v1'}}
  - {{name: TOKEN_FROM_ENV, value: '$(GITHUB_TOKEN)'}}
  command: [sh, -c, 'export AWS_ACCESS_KEY_ID={aws}; exec app']
  args: [--api-key, '{generic}', --verbose]"
        );
        let v = eval(&deployment("{app: web}", &spec));
        let found: Vec<_> = v.iter().map(|v| (v.rule.as_str(), v.path.as_str())).collect();
        assert_eq!(
            found,
            vec![
                ("hardcoded-credential", "spec.template.spec.containers[0].env[0].value"),
                ("hardcoded-credential", "spec.template.spec.containers[0].env[1].value"),
                ("hardcoded-credential", "spec.template.spec.containers[0].command[2]"),
                ("hardcoded-credential", "spec.template.spec.containers[0].args[1]"),
            ]
        );
        assert!(v[0].message.contains("[github-token]") && v[2].message.contains("[aws-access-key-id]"), "{v:?}");
        for violation in &v {
            assert!(
                !violation.message.contains(&gh)
                    && !violation.message.contains(generic)
                    && !violation.message.contains(&aws)
            );
        }
    }

    #[test]
    fn documented_example_keys_and_placeholders_pass() {
        let spec = "serviceAccountName: web
containers:
- name: app
  image: x
  env:
  - {name: AWS_ACCESS_KEY_ID, value: AKIAIOSFODNN7EXAMPLE}
  - {name: API_TOKEN, value: '${API_TOKEN}'}
  - {name: PASSWORD, value: '{{ .Values.password }}'}
  - {name: PASSWORD_FILE, value: /etc/secret/pw}
  args: [--token, $(TOKEN)]";
        assert_eq!(eval(&deployment("{app: web}", spec)), vec![]);
    }

    #[test]
    fn update_is_judged_on_what_it_changes() {
        let before = eval(&deployment("{app: web}", "containers: [{name: app, image: x}]"));
        let after = eval(&deployment(
            "{app: web}",
            "containers: [{name: app, image: x, env: [{name: K, valueFrom: {secretKeyRef: {name: s, key: k}}}]}]",
        ));
        let new = new_violations(after.clone(), &before);
        assert_eq!(rules_of(&new), vec!["static-secret-env"], "the pre-existing default SA is not re-judged");
        // Pointing the same field at another Secret is a new violation.
        let other = eval(&deployment(
            "{app: web}",
            "containers: [{name: app, image: x, env: [{name: K, valueFrom: {secretKeyRef: {name: prod-root, key: k}}}]}]",
        ));
        assert_eq!(rules_of(&new_violations(other, &after)), vec!["static-secret-env"]);
    }

    /// An AgentIdentity whose ServiceAccount agentid confirmed (status.serviceAccountName set), or not.
    fn live_agent(name: &str, service_account: Option<&str>, in_place: bool) -> AgentIdentity {
        let mut a = agent(name, false, "10m");
        a.spec.service_account_name = service_account.map(str::to_string);
        if in_place {
            a.status = Some(crate::api::AgentIdentityStatus {
                service_account_name: Some(a.service_account_name()),
                ..Default::default()
            });
        }
        a
    }

    #[test]
    fn naming_another_agents_service_account_gains_nothing() {
        // billing owns agent-billing; squatter names agent-billing (its status never confirms it);
        // grabber names the ordinary ServiceAccount web.
        let agents = [
            live_agent("billing", None, true),
            live_agent("squatter", Some("agent-billing"), false),
            live_agent("grabber", Some("web"), false),
        ];
        let dir = StaticDirectory::live(agents.iter());
        let squat = deployment("{agentid.dev/agent: squatter}", GOOD_AGENT);
        let v = evaluate(&squat, &dir);
        assert_eq!(rules_of(&v), vec!["unknown-agent"], "{v:?}");
        assert!(v[0].message.contains("has not confirmed as the agent's own"), "{}", v[0].message);
        // billing itself still runs on its own ServiceAccount.
        assert_eq!(evaluate(&deployment("{agentid.dev/agent: billing}", GOOD_AGENT), &dir), vec![]);
        // A plain workload on agent-billing is still refused as sharing billing's ServiceAccount...
        let shared = deployment("{app: x}", "serviceAccountName: agent-billing\ncontainers: [{name: a, image: x}]");
        let v = evaluate(&shared, &dir);
        assert_eq!(rules_of(&v), vec!["shared-service-account"]);
        assert!(v[0].message.contains("agent \"billing\""), "{}", v[0].message);
        // ...but naming an ordinary ServiceAccount does not make its workloads refused.
        let web = deployment("{app: web}", "serviceAccountName: web\ncontainers: [{name: a, image: x}]");
        assert_eq!(evaluate(&web, &dir), vec![]);
        assert_eq!(dir.claimants_of_service_account("agents", "agent-billing"), vec!["billing", "squatter"]);
    }
}
