//! Least privilege at review time: `agentid check` judges the AgentIdentities and ToolGrants it reads,
//! not only the workloads. Every lint rule has a stable id (never renamed), a field path and a fix.
//! Findings are warnings unless `agentid check --strict` makes them errors. Pure: no I/O, no clock.
//!
//! | id | object | finds |
//! |---|---|---|
//! | `grant-no-expiry` | ToolGrant | no `validUntil`: standing privilege |
//! | `grant-too-long` | ToolGrant | valid longer than the configured maximum (from `validFrom`, else from now) |
//! | `tool-wildcard` | ToolGrant | a tool name with `*` |
//! | `tool-all-actions` | ToolGrant | a tool without `actions` (every action) |
//! | `destination-everything` | ToolGrant | `*`, a bare scheme (`https://`), a glob over a top-level domain (`*.com`) |
//! | `destination-whole-host` | ToolGrant | a host, a host glob or a URL without a path where a path prefix was possible |
//! | `kubernetes-rule-wildcard` | ToolGrant | `*` in `kubernetesRules` verbs, resources or apiGroups |
//! | `risk-without-approval` | ToolGrant | `risk: high` or `maxDataSensitivity: restricted` without `approval.required` |
//! | `approval-no-approvers` | ToolGrant | an `approval` that names no user and no group |
//! | `approval-self` | ToolGrant | an approver that is (or includes) the agent itself |
//! | `owner-unaccountable` | AgentIdentity | an `owner` that looks like neither a team nor a person |
//! | `delegation-unbounded` | AgentIdentity | `delegation.maxDepth` above 1 without `allowedDelegates` |
//! | `token-ttl-max` | AgentIdentity | `tokenTTL` at the 1h maximum |

use std::fmt::Write as _;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use crate::api::{
    AgentIdentity, DataSensitivity, MAX_TOKEN_TTL_SECS, Risk, ToolGrant, duration, service_account_name_for,
};

/// Stable lint rule ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(into = "&'static str")]
pub enum LintRule {
    GrantNoExpiry,
    GrantTooLong,
    ToolWildcard,
    ToolAllActions,
    DestinationEverything,
    DestinationWholeHost,
    KubernetesRuleWildcard,
    RiskWithoutApproval,
    ApprovalNoApprovers,
    ApprovalSelf,
    OwnerUnaccountable,
    DelegationUnbounded,
    TokenTtlMax,
}

impl From<LintRule> for &'static str {
    fn from(r: LintRule) -> Self {
        r.as_str()
    }
}

impl std::fmt::Display for LintRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl LintRule {
    pub const ALL: [LintRule; 13] = [
        LintRule::GrantNoExpiry,
        LintRule::GrantTooLong,
        LintRule::ToolWildcard,
        LintRule::ToolAllActions,
        LintRule::DestinationEverything,
        LintRule::DestinationWholeHost,
        LintRule::KubernetesRuleWildcard,
        LintRule::RiskWithoutApproval,
        LintRule::ApprovalNoApprovers,
        LintRule::ApprovalSelf,
        LintRule::OwnerUnaccountable,
        LintRule::DelegationUnbounded,
        LintRule::TokenTtlMax,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LintRule::GrantNoExpiry => "grant-no-expiry",
            LintRule::GrantTooLong => "grant-too-long",
            LintRule::ToolWildcard => "tool-wildcard",
            LintRule::ToolAllActions => "tool-all-actions",
            LintRule::DestinationEverything => "destination-everything",
            LintRule::DestinationWholeHost => "destination-whole-host",
            LintRule::KubernetesRuleWildcard => "kubernetes-rule-wildcard",
            LintRule::RiskWithoutApproval => "risk-without-approval",
            LintRule::ApprovalNoApprovers => "approval-no-approvers",
            LintRule::ApprovalSelf => "approval-self",
            LintRule::OwnerUnaccountable => "owner-unaccountable",
            LintRule::DelegationUnbounded => "delegation-unbounded",
            LintRule::TokenTtlMax => "token-ttl-max",
        }
    }

    pub fn parse(s: &str) -> Option<LintRule> {
        LintRule::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// One sentence on what the rule protects against (docs, SARIF).
    pub fn summary(self) -> &'static str {
        match self {
            LintRule::GrantNoExpiry => {
                "A ToolGrant must expire (validUntil); a grant without one is standing privilege."
            }
            LintRule::GrantTooLong => "A ToolGrant is valid no longer than the configured maximum.",
            LintRule::ToolWildcard => "A ToolGrant names each tool; a wildcard tool name grants tools nobody reviewed.",
            LintRule::ToolAllActions => "A ToolGrant lists the actions it allows; no actions means every action.",
            LintRule::DestinationEverything => "A destination must name a host and path, not every host.",
            LintRule::DestinationWholeHost => {
                "A destination should be a URL path prefix, not every path of a host or every host of a domain."
            }
            LintRule::KubernetesRuleWildcard => "kubernetesRules name their verbs, resources and API groups.",
            LintRule::RiskWithoutApproval => {
                "High-risk tools and restricted data need human approval (approval.required)."
            }
            LintRule::ApprovalNoApprovers => "An approval names who may approve.",
            LintRule::ApprovalSelf => "An agent never approves its own calls.",
            LintRule::OwnerUnaccountable => "An agent's owner is an accountable team or person.",
            LintRule::DelegationUnbounded => {
                "An agent that may delegate more than one hop names the agents it may delegate to."
            }
            LintRule::TokenTtlMax => "Agent tokens live as short as the agent can work with, not the 1h maximum.",
        }
    }

    /// The framework item the rule addresses — agentid's own mapping, not one published by OWASP:
    /// OWASP Top 10 for Agentic Applications (2026, `ASIxx`) and OWASP Non-Human Identities Top 10
    /// (2025, `NHIx`).
    pub fn framework(self) -> &'static str {
        match self {
            LintRule::GrantNoExpiry => "ASI03 Identity & Privilege Abuse; NHI1 Improper Offboarding",
            LintRule::GrantTooLong => "ASI03 Identity & Privilege Abuse; NHI7 Long-Lived Secrets",
            LintRule::ToolWildcard | LintRule::ToolAllActions => {
                "ASI02 Tool Misuse & Exploitation; NHI5 Overprivileged NHI"
            }
            LintRule::DestinationEverything | LintRule::DestinationWholeHost => {
                "ASI02 Tool Misuse & Exploitation; NHI5 Overprivileged NHI"
            }
            LintRule::KubernetesRuleWildcard => "ASI03 Identity & Privilege Abuse; NHI5 Overprivileged NHI",
            LintRule::RiskWithoutApproval => "ASI02 Tool Misuse & Exploitation; ASI09 Human-Agent Trust Exploitation",
            LintRule::ApprovalNoApprovers => "ASI09 Human-Agent Trust Exploitation",
            LintRule::ApprovalSelf => "ASI03 Identity & Privilege Abuse; NHI10 Human Use of NHI",
            LintRule::OwnerUnaccountable => "ASI10 Rogue Agents; NHI1 Improper Offboarding",
            LintRule::DelegationUnbounded => "ASI03 Identity & Privilege Abuse; ASI08 Cascading Failures",
            LintRule::TokenTtlMax => "NHI7 Long-Lived Secrets; ASI03 Identity & Privilege Abuse",
        }
    }
}

/// One lint finding at one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LintFinding {
    pub rule: LintRule,
    /// Field path in the object, e.g. `spec.tools[0].destinations[1]`.
    pub path: String,
    /// `[agentid/<rule>] <Kind> <ns>/<name>: <path> <what>; fix: <how>`.
    pub message: String,
}

/// Tunables of the lint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LintConfig {
    /// Longest validity a ToolGrant may have.
    pub max_grant_duration: Duration,
}

/// 30 days.
pub const DEFAULT_MAX_GRANT_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

impl Default for LintConfig {
    fn default() -> Self {
        LintConfig { max_grant_duration: DEFAULT_MAX_GRANT_DURATION }
    }
}

struct Out {
    subject: String,
    findings: Vec<LintFinding>,
}

impl Out {
    fn new(kind: &str, namespace: &str, name: &str) -> Out {
        Out { subject: format!("{kind} {namespace}/{name}"), findings: Vec::new() }
    }

    fn add(&mut self, rule: LintRule, path: String, what: &str, fix: &str) {
        let mut message = String::with_capacity(64 + what.len() + fix.len());
        let _ = write!(message, "[agentid/{rule}] {}: {path} {what}; fix: {fix}", self.subject);
        self.findings.push(LintFinding { rule, path, message });
    }
}

/// Lints one AgentIdentity (`namespace` is where it lives).
pub fn lint_identity(a: &AgentIdentity, namespace: &str) -> Vec<LintFinding> {
    let name = a.metadata.name.as_deref().unwrap_or_default();
    let mut out = Out::new("AgentIdentity", namespace, name);
    if !looks_accountable(&a.spec.owner) {
        out.add(
            LintRule::OwnerUnaccountable,
            "spec.owner".into(),
            &format!("{:?} looks like neither a team nor a person", a.spec.owner),
            "name the accountable team (team-payments, @acme/payments) or person (alice@example.com)",
        );
    }
    let d = &a.spec.delegation;
    if d.max_depth > 1 && d.allowed_delegates.is_empty() {
        out.add(
            LintRule::DelegationUnbounded,
            "spec.delegation.maxDepth".into(),
            &format!("is {} but allowedDelegates is empty, so any agent may receive the delegation", d.max_depth),
            "list the agents it may delegate to in spec.delegation.allowedDelegates, or set maxDepth: 1 or 0",
        );
    }
    if duration::parse(&a.spec.token_ttl).is_ok_and(|t| t.as_secs() >= MAX_TOKEN_TTL_SECS) {
        out.add(
            LintRule::TokenTtlMax,
            "spec.tokenTTL".into(),
            &format!("is {}, the longest agentid allows", a.spec.token_ttl),
            "use the shortest lifetime the agent works with (default 10m)",
        );
    }
    out.findings
}

/// Lints one ToolGrant. `agent_service_account` is the ServiceAccount of the agent it names, when the
/// agent is known (else `agent-<agentRef>`); `now` measures grants that state no `validFrom`.
pub fn lint_grant(
    g: &ToolGrant,
    namespace: &str,
    agent_service_account: Option<&str>,
    config: &LintConfig,
    now: Timestamp,
) -> Vec<LintFinding> {
    let name = g.metadata.name.as_deref().unwrap_or_default();
    let mut out = Out::new("ToolGrant", namespace, name);
    let s = &g.spec;

    match &s.valid_until {
        None => out.add(
            LintRule::GrantNoExpiry,
            "spec.validUntil".into(),
            "is not set: the grant never expires (standing privilege)",
            &format!(
                "set validUntil to when the work ends (at most {} after validFrom)",
                duration::format(config.max_grant_duration)
            ),
        ),
        Some(until) => {
            let from = s.valid_from.as_ref().map_or(now, |t| t.0);
            let secs = until.0.as_second().saturating_sub(from.as_second());
            let max = config.max_grant_duration.as_secs();
            if secs > 0 && secs.unsigned_abs() > max {
                let since = if s.valid_from.is_some() { "validFrom" } else { "now" };
                out.add(
                    LintRule::GrantTooLong,
                    "spec.validUntil".into(),
                    &format!(
                        "is {} after {since}, longer than the maximum of {}",
                        human_secs(secs.unsigned_abs()),
                        human_secs(max)
                    ),
                    "grant for the work at hand and renew the grant when needed",
                );
            }
        }
    }

    let approval_required = s.approval.as_ref().is_some_and(|a| a.required);
    for (i, t) in s.tools.iter().enumerate() {
        if t.name.contains('*') {
            out.add(
                LintRule::ToolWildcard,
                format!("spec.tools[{i}].name"),
                &format!("{:?} is a wildcard", t.name),
                "name each tool the agent needs in its own entry",
            );
        }
        if t.actions.is_empty() {
            out.add(
                LintRule::ToolAllActions,
                format!("spec.tools[{i}]"),
                &format!("({}) lists no actions, so it allows every action", t.name),
                "list the actions the agent needs in actions (for example [read])",
            );
        }
        for (j, dest) in t.destinations.iter().enumerate() {
            let path = format!("spec.tools[{i}].destinations[{j}]");
            match destination_breadth(dest) {
                Breadth::Everything => out.add(
                    LintRule::DestinationEverything,
                    path,
                    &format!("{dest:?} covers every host"),
                    "write the URL prefix the tool needs, for example https://api.github.com/repos/acme/",
                ),
                Breadth::WholeHost => out.add(
                    LintRule::DestinationWholeHost,
                    path,
                    &format!("{dest:?} covers every path of a host (or every host of a domain)"),
                    "write a URL prefix with the path the tool needs, for example https://api.example.com/v1/orders/",
                ),
                Breadth::Narrow => {}
            }
        }
        if !approval_required {
            if t.risk == Risk::High {
                out.add(
                    LintRule::RiskWithoutApproval,
                    format!("spec.tools[{i}].risk"),
                    &format!("({}) is high, but approval.required is not set", t.name),
                    "set spec.approval.required: true with the approvers who review these calls",
                );
            } else if t.max_data_sensitivity == DataSensitivity::Restricted {
                out.add(
                    LintRule::RiskWithoutApproval,
                    format!("spec.tools[{i}].maxDataSensitivity"),
                    &format!("({}) is restricted, but approval.required is not set", t.name),
                    "set spec.approval.required: true with the approvers who review these calls, or lower maxDataSensitivity",
                );
            }
        }
    }

    for (i, rule) in s.kubernetes_rules.iter().enumerate() {
        let lists: [(&str, Option<&Vec<String>>); 3] = [
            ("verbs", Some(&rule.verbs)),
            ("resources", rule.resources.as_ref()),
            ("apiGroups", rule.api_groups.as_ref()),
        ];
        for (field, values) in lists {
            for (j, v) in values.into_iter().flatten().enumerate() {
                if v.contains('*') {
                    out.add(
                        LintRule::KubernetesRuleWildcard,
                        format!("spec.kubernetesRules[{i}].{field}[{j}]"),
                        &format!("is {v:?}, a wildcard"),
                        &format!("list the {field} the agent needs"),
                    );
                }
            }
        }
    }

    if let Some(a) = &s.approval {
        if a.approvers.users.is_empty() && a.approvers.groups.is_empty() {
            out.add(
                LintRule::ApprovalNoApprovers,
                "spec.approval.approvers".into(),
                "names no user and no group, so no one can approve",
                "list the users or groups who review the agent's calls",
            );
        }
        let agent = &s.agent_ref.name;
        let sa = service_account_name_for(agent, agent_service_account);
        let own = format!("system:serviceaccount:{namespace}:{sa}");
        for (j, u) in a.approvers.users.iter().enumerate() {
            if *u == own {
                out.add(
                    LintRule::ApprovalSelf,
                    format!("spec.approval.approvers.users[{j}]"),
                    &format!("is {u:?}, the agent's own ServiceAccount: the agent would approve its own calls"),
                    "only people (or their groups) approve",
                );
            }
        }
        let ns_group = format!("system:serviceaccounts:{namespace}");
        for (j, g) in a.approvers.groups.iter().enumerate() {
            if g == "system:serviceaccounts" || *g == ns_group || g == "system:authenticated" {
                out.add(
                    LintRule::ApprovalSelf,
                    format!("spec.approval.approvers.groups[{j}]"),
                    &format!("is {g:?}, which includes the agent's own ServiceAccount"),
                    "only people (or their groups) approve",
                );
            }
        }
    }
    out.findings
}

fn human_secs(secs: u64) -> String {
    if secs >= 86_400 {
        let days = secs / 86_400;
        let hours = (secs % 86_400) / 3600;
        if hours == 0 { format!("{days}d") } else { format!("{days}d{hours}h") }
    } else {
        duration::format(Duration::from_secs(secs))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Breadth {
    Everything,
    WholeHost,
    Narrow,
}

/// How much a destination pattern covers. Patterns the decision point refuses (a bare scheme, `*`)
/// count as covering everything: that is what their author asked for.
fn destination_breadth(dest: &str) -> Breadth {
    let d = dest.trim();
    if d.is_empty() || d == "*" || d == "**" {
        return Breadth::Everything;
    }
    if let Some((_, rest)) = d.split_once("://").or_else(|| d.split_once(":").filter(|(s, _)| is_scheme(s))) {
        let rest = rest.trim_start_matches('/');
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if host.is_empty() || host.starts_with('*') && !host.starts_with("*.") || host_glob_is_tld(host) {
            return Breadth::Everything;
        }
        if host.starts_with("*.") || path.is_empty() || path == "/" || path.starts_with("/*") {
            return Breadth::WholeHost;
        }
        return Breadth::Narrow;
    }
    if d.contains('*') && !d.starts_with("*.") || host_glob_is_tld(d) {
        return Breadth::Everything;
    }
    // A host or a host glob (`crm.internal`, `*.example.com`): every path.
    Breadth::WholeHost
}

fn is_scheme(s: &str) -> bool {
    matches!(s.to_ascii_lowercase().as_str(), "http" | "https")
}

/// `*.com`, `*.internal`: one label after the glob (port ignored).
fn host_glob_is_tld(host: &str) -> bool {
    host.strip_prefix("*.")
        .map(|rest| rest.split(':').next().unwrap_or_default())
        .is_some_and(|rest| !rest.contains('.') || rest.contains('*'))
}

/// Whether an owner names an accountable team or person: an email address, a GitHub-style `@org/team` or
/// `@user`, a `team-`/`team:`/`group:`/`user:` name, `<name>-team`, or a person's name in words.
/// Placeholders (`tbd`, `admin`, `nobody`) and Kubernetes identities (`system:…`) are not.
pub fn looks_accountable(owner: &str) -> bool {
    let o = owner.trim().to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "",
        "-",
        "?",
        "tbd",
        "todo",
        "none",
        "n/a",
        "na",
        "unknown",
        "nobody",
        "noone",
        "no one",
        "owner",
        "admin",
        "administrator",
        "root",
        "default",
        "test",
        "changeme",
        "me",
        "someone",
        "team",
        "anyone",
        "everyone",
        "all",
        "agent",
        "bot",
        "xxx",
    ];
    if PLACEHOLDERS.contains(&o.as_str()) || o.starts_with("system:") {
        return false;
    }
    if let Some((local, domain)) = o.split_once('@')
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
    {
        return true;
    }
    if let Some(rest) = o.strip_prefix('@') {
        return !rest.is_empty() && !PLACEHOLDERS.contains(&rest);
    }
    const PREFIXES: &[&str] =
        &["team-", "team:", "team/", "team_", "team.", "group:", "user:", "squad-", "squad:", "dept-", "org:"];
    if let Some(p) = PREFIXES.iter().find(|p| o.starts_with(**p)) {
        return o.len() > p.len();
    }
    if ["-team", "_team", " team", "-squad"].iter().any(|s| o.ends_with(s) && o.len() > s.len()) {
        return true;
    }
    // "Alice Smith": at least two words of letters.
    let words: Vec<&str> = o.split_whitespace().collect();
    words.len() >= 2 && words.iter().all(|w| w.chars().all(|c| c.is_alphabetic() || c == '-' || c == '.' || c == '\''))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(yaml: &str) -> ToolGrant {
        serde_norway::from_str(yaml).unwrap()
    }

    fn rules(f: &[LintFinding]) -> Vec<(&'static str, &str)> {
        f.iter().map(|f| (f.rule.as_str(), f.path.as_str())).collect()
    }

    fn now() -> Timestamp {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }

    const NARROW: &str = r#"
apiVersion: agentid.dev/v1alpha1
kind: ToolGrant
metadata: {name: narrow, namespace: agents}
spec:
  agentRef: {name: triage-bot}
  tools:
  - {name: github.create_issue, actions: [create], destinations: ["https://api.github.com/repos/acme/payments/"], maxDataSensitivity: internal}
  kubernetesRules:
  - {apiGroups: [""], resources: [configmaps], verbs: [get, list]}
  validUntil: "2030-01-15T00:00:00Z"
"#;

    #[test]
    fn a_narrow_expiring_grant_is_clean() {
        let g = grant(NARROW);
        assert_eq!(lint_grant(&g, "agents", None, &LintConfig::default(), now()), vec![]);
    }

    #[test]
    fn fixture_broad_grant_reports_every_rule_with_paths_and_fixes() {
        let text = include_str!("../../../tests/fixtures/check/lint/broad-grant.yaml");
        let g = grant(text);
        let f = lint_grant(&g, "agents", Some("agent-triage-bot"), &LintConfig::default(), now());
        assert_eq!(
            rules(&f),
            vec![
                ("grant-no-expiry", "spec.validUntil"),
                ("tool-wildcard", "spec.tools[0].name"),
                ("tool-all-actions", "spec.tools[0]"),
                ("destination-everything", "spec.tools[0].destinations[0]"),
                ("destination-everything", "spec.tools[0].destinations[1]"),
                ("destination-whole-host", "spec.tools[0].destinations[2]"),
                ("destination-whole-host", "spec.tools[0].destinations[3]"),
                ("destination-whole-host", "spec.tools[0].destinations[4]"),
                ("destination-everything", "spec.tools[0].destinations[5]"),
                ("risk-without-approval", "spec.tools[0].risk"),
                ("risk-without-approval", "spec.tools[1].maxDataSensitivity"),
                ("kubernetes-rule-wildcard", "spec.kubernetesRules[0].verbs[0]"),
                ("kubernetes-rule-wildcard", "spec.kubernetesRules[0].resources[1]"),
                ("approval-self", "spec.approval.approvers.users[0]"),
                ("approval-self", "spec.approval.approvers.groups[0]"),
            ]
        );
        for x in &f {
            assert!(x.message.starts_with(&format!("[agentid/{}] ToolGrant agents/broad: ", x.rule)), "{}", x.message);
            assert!(x.message.contains("; fix: "), "{}", x.message);
        }
    }

    #[test]
    fn grant_lifetimes_against_the_maximum() {
        let cfg = LintConfig { max_grant_duration: Duration::from_secs(7 * 86_400) };
        let g = grant(NARROW);
        let f = lint_grant(&g, "agents", None, &cfg, now());
        assert_eq!(rules(&f), vec![("grant-too-long", "spec.validUntil")]);
        assert!(f[0].message.contains("is 14d after now, longer than the maximum of 7d"), "{}", f[0].message);
        let mut g = grant(NARROW);
        g.spec.valid_from =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time("2030-01-10T00:00:00Z".parse().unwrap()));
        assert_eq!(lint_grant(&g, "agents", None, &cfg, now()), vec![]);
        // An expired grant is not "too long".
        assert_eq!(lint_grant(&grant(NARROW), "agents", None, &cfg, "2031-01-01T00:00:00Z".parse().unwrap()), vec![]);
    }

    #[test]
    fn approvals() {
        let g = grant(&format!(
            "{NARROW}  approval: {{required: true, approvers: {{users: [system:serviceaccount:agents:agent-triage-bot]}}}}\n"
        ));
        let f = lint_grant(&g, "agents", None, &LintConfig::default(), now());
        assert_eq!(rules(&f), vec![("approval-self", "spec.approval.approvers.users[0]")]);
        let g = grant(&format!("{NARROW}  approval: {{required: true}}\n"));
        let f = lint_grant(&g, "agents", None, &LintConfig::default(), now());
        assert_eq!(rules(&f), vec![("approval-no-approvers", "spec.approval.approvers")]);
        // With approval required, high risk is fine.
        let g = grant(&format!(
            "{}  approval: {{required: true, approvers: {{groups: [payments-leads]}}}}\n",
            NARROW.replace("maxDataSensitivity: internal", "maxDataSensitivity: restricted, risk: high")
        ));
        assert_eq!(lint_grant(&g, "agents", None, &LintConfig::default(), now()), vec![]);
    }

    #[test]
    fn destinations() {
        for (d, want) in [
            ("*", Breadth::Everything),
            ("https://", Breadth::Everything),
            ("https:", Breadth::Everything),
            ("http://*", Breadth::Everything),
            ("*.com", Breadth::Everything),
            ("*.internal:8443", Breadth::Everything),
            ("api*", Breadth::Everything),
            ("https://api.github.com", Breadth::WholeHost),
            ("https://api.github.com/", Breadth::WholeHost),
            ("https://api.github.com:8443/", Breadth::WholeHost),
            ("api.github.com", Breadth::WholeHost),
            ("*.example.com", Breadth::WholeHost),
            ("https://api.github.com/repos/acme/", Breadth::Narrow),
            ("http://crm.internal/api", Breadth::Narrow),
        ] {
            assert_eq!(destination_breadth(d), want, "{d}");
        }
    }

    #[test]
    fn identities() {
        let text = include_str!("../../../tests/fixtures/check/lint/loose-agent.yaml");
        let a: AgentIdentity = serde_norway::from_str(text).unwrap();
        let f = lint_identity(&a, "agents");
        assert_eq!(
            rules(&f),
            vec![
                ("owner-unaccountable", "spec.owner"),
                ("delegation-unbounded", "spec.delegation.maxDepth"),
                ("token-ttl-max", "spec.tokenTTL"),
            ]
        );
        let mut a = crate::api::test_agent("ok");
        assert_eq!(lint_identity(&a, "agents"), vec![]);
        a.spec.delegation.max_depth = 2;
        a.spec.delegation.allowed_delegates = vec!["helper".into()];
        a.spec.token_ttl = "59m".into();
        assert_eq!(lint_identity(&a, "agents"), vec![]);
    }

    #[test]
    fn owners() {
        for ok in [
            "team-payments",
            "alice@example.com",
            "@acme/payments",
            "@alice",
            "group:sre",
            "payments-team",
            "Alice Smith",
            "team:payments",
        ] {
            assert!(looks_accountable(ok), "{ok}");
        }
        for bad in
            ["", " ", "tbd", "TODO", "admin", "system:serviceaccount:agents:x", "payments", "team-", "@", "a@b", "bot"]
        {
            assert!(!looks_accountable(bad), "{bad:?}");
        }
    }
}
