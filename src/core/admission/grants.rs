//! No escalation through agentid: a ToolGrant may carry only Kubernetes rules
//! that the user creating or updating it could exercise themselves — the same
//! idea as RBAC's own escalation prevention — and an agent's ServiceAccount can
//! never create or change grants. This module decides which access checks to
//! run (SubjectAccessReviews, run by the shell) and what the answer is.

use k8s_openapi::api::authorization::v1::ResourceAttributes;

use super::review::UserInfo;
use crate::api::ToolGrant;

/// Most access checks (SubjectAccessReviews) one grant may need; a broader grant must be split. This
/// also bounds the work one admission request can make agentid ask of the apiserver.
pub const MAX_CHECKS: usize = 64;

/// One permission the requester must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct AccessCheck {
    /// Index of the rule in `spec.kubernetesRules`.
    pub rule: usize,
    pub attributes: ResourceAttributes,
}

impl AccessCheck {
    /// `verb group/resource[/name]`, for messages.
    pub fn describe(&self) -> String {
        let a = &self.attributes;
        let group = a.group.as_deref().filter(|g| !g.is_empty()).unwrap_or("core");
        let mut s = format!("{} {group}/{}", a.verb.as_deref().unwrap_or("?"), a.resource.as_deref().unwrap_or("?"));
        if let Some(sub) = a.subresource.as_deref().filter(|s| !s.is_empty()) {
            s.push('/');
            s.push_str(sub);
        }
        if let Some(n) = a.name.as_deref().filter(|n| !n.is_empty()) {
            s.push_str(&format!(" {n:?}"));
        }
        s
    }
}

/// Why a grant is refused before any access check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantRefusal {
    #[error("{user} is the ServiceAccount of agent {agent:?}: agents can never create or change ToolGrants")]
    AgentRequester { user: String, agent: String },
    #[error("spec.kubernetesRules[{0}]: nonResourceURLs cannot be granted in a namespace; remove them")]
    NonResourceUrls(usize),
    #[error("spec.kubernetesRules[{0}]: needs at least one apiGroup, resource and verb")]
    IncompleteRule(usize),
    #[error("spec.kubernetesRules expand to more than {MAX_CHECKS} permissions; split the grant")]
    TooBroad,
    #[error("spec.kubernetesRules[{0}] would let the agent {1}; ToolGrants never grant that, whoever creates them")]
    SelfEscalation(usize, &'static str),
    #[error(
        "spec.when does not compile, so the grant could never apply: {0}; fix: correct the CEL expression (variables: request, agent, task, grant, now)"
    )]
    InvalidCondition(String),
    #[error(
        "spec.tools[{tool}].destinations[{index}] {pattern:?} is not a destination: {reason}; fix: use a URL prefix (https://host/path/) or a host glob (*.example.com)"
    )]
    InvalidDestination { tool: usize, index: usize, pattern: String, reason: String },
}

impl GrantRefusal {
    /// The id in the message: `toolgrant-invalid` for grants the decision point could not use,
    /// `toolgrant-escalation` otherwise.
    pub fn rule(&self) -> &'static str {
        match self {
            GrantRefusal::InvalidCondition(_) | GrantRefusal::InvalidDestination { .. } => "toolgrant-invalid",
            _ => "toolgrant-escalation",
        }
    }
}

/// What the decision point could never evaluate: a `when` that does not compile (or names variables it
/// cannot supply) and destinations that are no valid pattern. Refused at admission with the reason,
/// rather than silently never matching at request time.
pub fn unusable(grant: &ToolGrant) -> Option<GrantRefusal> {
    if let Some(when) = &grant.spec.when
        && let Err(e) = crate::core::pdp::validate_when(when)
    {
        return Some(GrantRefusal::InvalidCondition(e));
    }
    for (tool, t) in grant.spec.tools.iter().enumerate() {
        for (index, d) in t.destinations.iter().enumerate() {
            if let Err(e) = crate::core::pdp::DestinationPattern::parse(d) {
                return Some(GrantRefusal::InvalidDestination {
                    tool,
                    index,
                    pattern: d.clone(),
                    reason: e.to_string(),
                });
            }
        }
    }
    None
}

/// The ServiceAccount `(namespace, name)` a username denotes, if any.
pub fn service_account_of(user: &UserInfo) -> Option<(&str, &str)> {
    let rest = user.username.strip_prefix("system:serviceaccount:")?;
    rest.split_once(':')
}

/// What a rule would let an agent do to its own identity or permissions, if anything. Such rules are
/// refused outright: an agent must never be able to lift its kill switch, edit its grants, mint
/// tokens or write RBAC, even when the grant's author could.
fn self_escalation(groups: &[String], resources: &[String], verbs: &[String]) -> Option<&'static str> {
    let any = |list: &[String], f: &dyn Fn(&str) -> bool| list.iter().any(|x| f(x));
    if any(groups, &|g| g == "*") {
        return Some("reach every API group (apiGroups: [\"*\"]), agentid's own included");
    }
    if any(groups, &|g| g == crate::api::GROUP) {
        return Some("change AgentIdentities, ToolGrants or AgentTasks (its own kill switch and grants)");
    }
    if any(verbs, &|v| matches!(v, "bind" | "escalate" | "impersonate")) {
        return Some("bind, escalate or impersonate");
    }
    if any(groups, &|g| g == "rbac.authorization.k8s.io") && any(verbs, &|v| !matches!(v, "get" | "list" | "watch")) {
        return Some("write RBAC");
    }
    if any(groups, &|g| g.is_empty())
        && any(resources, &|r| matches!(r, "*" | "serviceaccounts/token" | "serviceaccounts/*"))
    {
        return Some("mint ServiceAccount tokens");
    }
    None
}

/// The permissions the requester must hold for `grant` in `namespace`.
pub fn access_checks(grant: &ToolGrant, namespace: &str) -> Result<Vec<AccessCheck>, GrantRefusal> {
    let mut checks = Vec::new();
    for (i, rule) in grant.spec.kubernetes_rules.iter().enumerate() {
        if rule.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(GrantRefusal::NonResourceUrls(i));
        }
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        if groups.is_empty() || resources.is_empty() || rule.verbs.is_empty() {
            return Err(GrantRefusal::IncompleteRule(i));
        }
        if let Some(what) = self_escalation(&groups, &resources, &rule.verbs) {
            return Err(GrantRefusal::SelfEscalation(i, what));
        }
        let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
            Some(n) if !n.is_empty() => n.iter().cloned().map(Some).collect(),
            _ => vec![None],
        };
        for group in &groups {
            for resource in &resources {
                let (resource, subresource) = match resource.split_once('/') {
                    Some((r, s)) => (r.to_string(), Some(s.to_string())),
                    None => (resource.clone(), None),
                };
                for verb in &rule.verbs {
                    for name in &names {
                        checks.push(AccessCheck {
                            rule: i,
                            attributes: ResourceAttributes {
                                namespace: Some(namespace.to_string()),
                                group: Some(group.clone()),
                                resource: Some(resource.clone()),
                                subresource: subresource.clone(),
                                verb: Some(verb.clone()),
                                name: name.clone(),
                                ..Default::default()
                            },
                        });
                        if checks.len() > MAX_CHECKS {
                            return Err(GrantRefusal::TooBroad);
                        }
                    }
                }
            }
        }
    }
    Ok(checks)
}

/// What admitting a ToolGrant request takes, decided before any access check.
#[derive(Debug, Clone, PartialEq)]
pub enum GrantReview {
    /// Nothing to check (no object, or an UPDATE that leaves the spec as it was).
    Allow,
    /// Refused outright, with the reason.
    Refuse(GrantRefusal),
    /// The requester must hold each of these permissions in `namespace`.
    Check { namespace: String, checks: Vec<AccessCheck> },
}

/// Decides a ToolGrant CREATE/UPDATE up to the access checks: agents never change grants, metadata-only
/// updates change no permission, and everything else needs the requester to hold every rule.
pub fn review_request(
    user: &UserInfo,
    operation: &str,
    namespace: Option<&str>,
    grant: &ToolGrant,
    old: Option<&ToolGrant>,
    agents: &dyn super::rules::AgentDirectory,
) -> GrantReview {
    if let Some((sa_ns, sa)) = service_account_of(user)
        && let Some(agent) = agents.agent_of_service_account(sa_ns, sa)
    {
        return GrantReview::Refuse(GrantRefusal::AgentRequester { user: user.username.clone(), agent });
    }
    if operation == "UPDATE" && old.is_some_and(|o| o.spec == grant.spec) {
        return GrantReview::Allow;
    }
    if let Some(refusal) = unusable(grant) {
        return GrantReview::Refuse(refusal);
    }
    let namespace = namespace.or(grant.metadata.namespace.as_deref()).unwrap_or_default().to_string();
    match access_checks(grant, &namespace) {
        Ok(checks) => GrantReview::Check { namespace, checks },
        Err(refusal) => GrantReview::Refuse(refusal),
    }
}

/// The denial message for the permissions the requester lacks, or `None` when they hold all.
pub fn missing_message(user: &str, namespace: &str, missing: &[&AccessCheck]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    let list: Vec<String> =
        missing.iter().map(|c| format!("spec.kubernetesRules[{}]: {}", c.rule, c.describe())).collect();
    Some(format!(
        "[agentid/toolgrant-escalation] {user} may not grant permissions they do not hold in namespace {namespace:?}: {}; \
         fix: remove those rules, or have someone who holds them create the grant",
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(rules: &str) -> ToolGrant {
        serde_norway::from_str(&format!(
            "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {{name: g, namespace: agents}}\nspec:\n  agentRef: {{name: a}}\n  kubernetesRules: {rules}\n"
        ))
        .unwrap()
    }

    #[test]
    fn rules_expand_into_one_check_per_permission() {
        let g = grant("[{apiGroups: ['', apps], resources: [configmaps, deployments/scale], verbs: [get, list]}]");
        let checks = access_checks(&g, "agents").unwrap();
        assert_eq!(checks.len(), 8);
        let scale = checks.iter().find(|c| c.attributes.subresource.as_deref() == Some("scale")).unwrap();
        assert_eq!(scale.attributes.resource.as_deref(), Some("deployments"));
        assert_eq!(checks[0].attributes.namespace.as_deref(), Some("agents"));
        assert_eq!(checks[0].describe(), "get core/configmaps");
    }

    #[test]
    fn resource_names_are_checked_by_name() {
        let g = grant("[{apiGroups: [''], resources: [configmaps], resourceNames: [a, b], verbs: [get]}]");
        let checks = access_checks(&g, "agents").unwrap();
        assert_eq!(checks.len(), 2);
        assert_eq!(checks[1].describe(), "get core/configmaps \"b\"");
    }

    #[test]
    fn refusals_before_any_check() {
        assert_eq!(
            access_checks(&grant("[{nonResourceURLs: [/metrics], verbs: [get]}]"), "agents"),
            Err(GrantRefusal::NonResourceUrls(0))
        );
        assert_eq!(
            access_checks(&grant("[{apiGroups: [''], resources: [], verbs: [get]}]"), "agents"),
            Err(GrantRefusal::IncompleteRule(0))
        );
        let wide = "[{apiGroups: [a,b,c,d,e,f,g,h], resources: [a,b,c,d,e,f,g,h], verbs: [a,b,c,d,e,f,g,h,i]}]";
        assert_eq!(access_checks(&grant(wide), "agents"), Err(GrantRefusal::TooBroad));
    }

    #[test]
    fn one_grant_causes_at_most_64_access_checks() {
        let verbs = |n: usize| (0..n).map(|i| format!("v{i}")).collect::<Vec<_>>().join(",");
        let rule = |n: usize| format!("[{{apiGroups: [''], resources: [configmaps], verbs: [{}]}}]", verbs(n));
        assert_eq!(access_checks(&grant(&rule(64)), "agents").unwrap().len(), 64);
        assert_eq!(access_checks(&grant(&rule(65)), "agents"), Err(GrantRefusal::TooBroad));
    }

    #[test]
    fn rules_an_agent_could_turn_on_itself_are_refused() {
        for rules in [
            "[{apiGroups: ['*'], resources: [pods], verbs: [get]}]",
            "[{apiGroups: [agentid.dev], resources: [agentidentities], verbs: [patch]}]",
            "[{apiGroups: [''], resources: [serviceaccounts/token], verbs: [create]}]",
            "[{apiGroups: [''], resources: ['*'], verbs: [get]}]",
            "[{apiGroups: [rbac.authorization.k8s.io], resources: [rolebindings], verbs: [create]}]",
            "[{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [bind]}]",
            "[{apiGroups: [''], resources: [users], verbs: [impersonate]}]",
        ] {
            assert!(
                matches!(access_checks(&grant(rules), "agents"), Err(GrantRefusal::SelfEscalation(0, _))),
                "{rules}"
            );
        }
        // Reading RBAC is fine.
        assert!(
            access_checks(
                &grant("[{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [get]}]"),
                "agents"
            )
            .is_ok()
        );
    }

    #[test]
    fn service_account_usernames_are_recognised() {
        let u = |s: &str| UserInfo { username: s.into(), ..Default::default() };
        assert_eq!(service_account_of(&u("system:serviceaccount:agents:agent-a")), Some(("agents", "agent-a")));
        assert_eq!(service_account_of(&u("alice")), None);
    }

    #[test]
    fn requests_are_decided_before_any_access_check() {
        use crate::core::admission::rules::StaticDirectory;
        let g = grant("[{apiGroups: [''], resources: [configmaps], verbs: [get]}]");
        let agent: crate::api::AgentIdentity = serde_norway::from_str(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot, namespace: agents}\nspec: {owner: t, audiences: [x]}",
        )
        .unwrap();
        let dir = StaticDirectory::new([agent].iter(), "default");
        let u = |s: &str| UserInfo { username: s.into(), ..Default::default() };
        let agent_sa = u("system:serviceaccount:agents:agent-bot");
        assert!(matches!(
            review_request(&agent_sa, "CREATE", Some("agents"), &g, None, &dir),
            GrantReview::Refuse(GrantRefusal::AgentRequester { .. })
        ));
        assert_eq!(review_request(&u("alice"), "UPDATE", Some("agents"), &g, Some(&g), &dir), GrantReview::Allow);
        let GrantReview::Check { namespace, checks } = review_request(&u("alice"), "CREATE", None, &g, None, &dir)
        else {
            panic!("expected checks")
        };
        assert_eq!((namespace.as_str(), checks.len()), ("agents", 1));
    }

    #[test]
    fn conditions_and_destinations_the_decision_point_cannot_use_are_refused() {
        use crate::core::admission::rules::StaticDirectory;
        let u = UserInfo { username: "alice".into(), ..Default::default() };
        let dir = StaticDirectory::default();
        let with = |extra: &str| -> ToolGrant {
            serde_norway::from_str(&format!(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {{name: g, namespace: agents}}\nspec:\n  agentRef: {{name: a}}\n  tools: [{{name: crm, destinations: ['https://crm.internal/api/']}}]\n{extra}"
            ))
            .unwrap()
        };
        let r = review_request(
            &u,
            "CREATE",
            Some("agents"),
            &with("  when: \"request.argumnts.size() > 0\"\n"),
            None,
            &dir,
        );
        let GrantReview::Refuse(e @ GrantRefusal::InvalidCondition(_)) = r else { panic!("{r:?}") };
        assert!(e.to_string().contains("spec.when does not compile"), "{e}");
        let r = review_request(&u, "CREATE", Some("agents"), &with("  when: \"secrets.all()\"\n"), None, &dir);
        assert!(matches!(r, GrantReview::Refuse(GrantRefusal::InvalidCondition(_))), "{r:?}");
        let ok = with("  when: \"request.sensitivity != 'restricted'\"\n");
        assert!(matches!(review_request(&u, "CREATE", Some("agents"), &ok, None, &dir), GrantReview::Check { .. }));
        let mut bad = ok.clone();
        bad.spec.tools[0].destinations = vec!["https://crm.*.internal/".into()];
        let r = review_request(&u, "CREATE", Some("agents"), &bad, None, &dir);
        assert!(matches!(r, GrantReview::Refuse(GrantRefusal::InvalidDestination { tool: 0, index: 0, .. })), "{r:?}");
    }

    #[test]
    fn missing_permissions_are_listed() {
        let g = grant("[{apiGroups: [''], resources: [secrets], verbs: [get]}]");
        let checks = access_checks(&g, "agents").unwrap();
        let msg = missing_message("alice", "agents", &[&checks[0]]).unwrap();
        assert!(msg.contains("spec.kubernetesRules[0]: get core/secrets"), "{msg}");
        assert!(missing_message("alice", "agents", &[]).is_none());
    }
}
