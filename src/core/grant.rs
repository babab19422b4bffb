//! What a ToolGrant should have: its phase (from its validity window and its
//! agent), the Role and RoleBinding that carry its `kubernetesRules` while it is
//! Active, the status that describes them and when to look again. Pure: the
//! controller fetches, calls [`plan`], applies what it returns.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::rbac::v1::{Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::api::{AGENT_LABEL, AgentIdentity, GrantPhase, MANAGED_BY, MANAGED_BY_LABEL, ToolGrant, ToolGrantStatus};
use crate::core::conditions::{self, CondUpdate, READY};
use crate::core::identity::{PlanError, PlannedEvent, is_owned_by};
use crate::core::names;
pub use crate::core::names::label_value;

/// Reasons used in conditions and Events (stable: dashboards and alerts match on them).
pub mod reason {
    pub const ACTIVE: &str = "Active";
    pub const AGENT_NOT_FOUND: &str = "AgentNotFound";
    pub const AGENT_NOT_READY: &str = "AgentNotReady";
    pub const AGENT_SUSPENDED: &str = "AgentSuspended";
    pub const NOT_YET_VALID: &str = "NotYetValid";
    pub const EXPIRED: &str = "Expired";
    pub const RBAC_CONFLICT: &str = "RBACConflict";
    pub const RULES_REFUSED: &str = "RulesRefused";
    pub const GRANT_ACTIVATED: &str = "GrantActivated";
    pub const GRANT_EXPIRED: &str = "GrantExpired";
    pub const GRANT_REVOKED: &str = "GrantRevoked";
    pub const GRANT_PENDING: &str = "GrantPending";
}

/// Label naming the ToolGrant an object was created for.
pub const GRANT_LABEL: &str = "agentid.dev/toolgrant";
/// Prefix of the Role and RoleBinding of a grant.
pub const RBAC_NAME_PREFIX: &str = "agentid-grant-";
/// How soon to look again after a name conflict (foreign objects trigger no watch event of ours).
pub const CONFLICT_RETRY: Duration = Duration::from_secs(60);

const RBAC_API_GROUP: &str = "rbac.authorization.k8s.io";

/// Name of the Role and the RoleBinding of a grant: `agentid-grant-<grant>`,
/// shortened with a hash when it would exceed 253 characters.
pub fn rbac_name(grant: &str) -> String {
    names::derived_name(RBAC_NAME_PREFIX, grant)
}

/// Labels of the Role and RoleBinding of a grant.
pub fn grant_labels(agent: &str, grant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (AGENT_LABEL.to_string(), label_value(agent)),
        (GRANT_LABEL.to_string(), label_value(grant)),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

/// Whether `grant` is for `agent`: same namespace, and its agentRef names it.
pub fn is_for_agent(grant: &ToolGrant, agent: &AgentIdentity) -> bool {
    grant.metadata.namespace == agent.metadata.namespace
        && agent.metadata.name.as_deref() == Some(grant.spec.agent_ref.name.as_str())
}

/// The earliest of the grant's validity boundaries strictly after `now`: the only
/// instant at which [`phase`] can change without anything else changing.
fn next_boundary(grant: &ToolGrant, now: Timestamp) -> Option<Timestamp> {
    [grant.spec.valid_from.as_ref(), grant.spec.valid_until.as_ref()]
        .into_iter()
        .flatten()
        .map(|t| t.0)
        .filter(|t| *t > now)
        .min()
}

/// The phase of a grant at `now`, given its agent (`None`: no AgentIdentity of
/// that name in the grant's namespace), with the reason and message for its
/// `Ready` condition, and the next instant at which the phase may change by the
/// passing of time alone.
///
/// In order: past `validUntil` it is Expired, whatever its agent (expiry is
/// final); an absent agent makes it Pending (`AgentNotFound`); a suspended one
/// Revoked (`AgentSuspended`); an agent whose own ServiceAccount is not in place
/// (not reconciled yet, or a foreign ServiceAccount holds its name) Pending
/// (`AgentNotReady`), so RBAC is never bound to a ServiceAccount that is not the
/// agent's; before `validFrom` Pending (`NotYetValid`); otherwise Active. Without
/// `validFrom` a grant is valid from its creation.
pub fn phase(
    grant: &ToolGrant,
    agent: Option<&AgentIdentity>,
    now: Timestamp,
) -> (GrantPhase, &'static str, String, Option<Timestamp>) {
    let boundary = next_boundary(grant, now);
    let agent_name = &grant.spec.agent_ref.name;
    let namespace = grant.metadata.namespace.as_deref().unwrap_or_default();
    let valid_from = grant.spec.valid_from.as_ref().map(|t| t.0);
    let valid_until = grant.spec.valid_until.as_ref().map(|t| t.0);

    if let Some(until) = valid_until.filter(|until| now >= *until) {
        return (GrantPhase::Expired, reason::EXPIRED, format!("the grant expired at {until}"), None);
    }
    // Defense in depth: rules admission would refuse are never turned into RBAC, even for a grant
    // that reached the cluster without passing admission (webhook down, created before install).
    if let Err(refusal) = crate::core::admission::grants::access_checks(grant, namespace) {
        return (GrantPhase::Pending, reason::RULES_REFUSED, refusal.to_string(), boundary);
    }
    let Some(agent) = agent else {
        let message = format!("AgentIdentity {agent_name} does not exist in namespace {namespace}");
        return (GrantPhase::Pending, reason::AGENT_NOT_FOUND, message, boundary);
    };
    if agent.spec.suspended {
        let message = format!("AgentIdentity {agent_name} is suspended (spec.suspended: true): the grant is withdrawn");
        return (GrantPhase::Revoked, reason::AGENT_SUSPENDED, message, boundary);
    }
    let sa = agent.service_account_name();
    let in_place = agent.status.as_ref().and_then(|s| s.service_account_name.as_deref()) == Some(sa.as_str());
    if !in_place {
        let message = format!(
            "the ServiceAccount {sa} of AgentIdentity {agent_name} is not in place yet (see the agent's Ready condition)"
        );
        return (GrantPhase::Pending, reason::AGENT_NOT_READY, message, boundary);
    }
    if let Some(from) = valid_from.filter(|from| now < *from) {
        return (GrantPhase::Pending, reason::NOT_YET_VALID, format!("the grant becomes valid at {from}"), boundary);
    }
    let message = match valid_until {
        Some(until) => format!("in force until {until}"),
        None => "in force, without expiry".to_string(),
    };
    (GrantPhase::Active, reason::ACTIVE, message, boundary)
}

/// The Role and RoleBinding that carry a grant's `kubernetesRules` to its agent's ServiceAccount.
pub fn desired_rbac(grant: &ToolGrant, agent: &AgentIdentity, owner: OwnerReference) -> (Role, RoleBinding) {
    let grant_name = grant.metadata.name.clone().unwrap_or_default();
    let name = rbac_name(&grant_name);
    let metadata = ObjectMeta {
        name: Some(name.clone()),
        namespace: grant.metadata.namespace.clone(),
        labels: Some(grant_labels(&grant.spec.agent_ref.name, &grant_name)),
        owner_references: Some(vec![owner]),
        ..Default::default()
    };
    let role = Role { metadata: metadata.clone(), rules: Some(grant.spec.kubernetes_rules.clone()) };
    let binding = RoleBinding {
        metadata,
        role_ref: RoleRef { api_group: Some(RBAC_API_GROUP.to_string()), kind: "Role".to_string(), name },
        subjects: Some(vec![Subject {
            api_group: None,
            kind: "ServiceAccount".to_string(),
            name: agent.service_account_name(),
            namespace: agent.metadata.namespace.clone(),
        }]),
    };
    (role, binding)
}

/// The Role and RoleBinding of the grant's derived name, as fetched (if they exist).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExistingRbac<'a> {
    pub role: Option<&'a Role>,
    pub binding: Option<&'a RoleBinding>,
}

/// What to do with a grant's Role and RoleBinding.
#[derive(Debug, Clone, PartialEq)]
pub enum RbacAction {
    /// Nothing: both exist, are this grant's and match.
    Keep,
    /// Create them, or bring them back in line (server-side apply, Role first).
    Apply { role: Box<Role>, binding: Box<RoleBinding> },
    /// The grant must carry no RBAC: delete those of this grant's own objects that exist
    /// (RoleBinding first). Objects of that name that are not this grant's are never touched.
    Delete { role: bool, binding: bool },
}

/// Everything the controller needs to bring one ToolGrant in line.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantPlan {
    pub phase: GrantPhase,
    /// Name of the grant's Role and RoleBinding.
    pub rbac_name: String,
    pub rbac: RbacAction,
    /// Status to write once the action succeeded.
    pub status: ToolGrantStatus,
    /// The next validity boundary: the phase may change then without any watch event.
    pub next_boundary: Option<Timestamp>,
    /// When to look again sooner than [`next_boundary`](Self::next_boundary) or a watch event says: after a
    /// name conflict (a foreign object in the way triggers no watch event of ours), [`CONFLICT_RETRY`].
    pub retry_after: Option<Duration>,
    /// Events to publish: one when the phase changes.
    pub events: Vec<PlannedEvent>,
}

fn contains_meta(have: &ObjectMeta, want: &ObjectMeta) -> bool {
    want.labels.iter().flatten().all(|(k, v)| have.labels.as_ref().and_then(|h| h.get(k)) == Some(v))
        && want.owner_references.iter().flatten().all(|o| have.owner_references.iter().flatten().any(|e| e == o))
}

fn role_matches(existing: &Role, desired: &Role) -> bool {
    existing.rules == desired.rules && contains_meta(&existing.metadata, &desired.metadata)
}

fn binding_matches(existing: &RoleBinding, desired: &RoleBinding) -> bool {
    existing.role_ref == desired.role_ref
        && existing.subjects == desired.subjects
        && contains_meta(&existing.metadata, &desired.metadata)
}

fn event_for(phase: GrantPhase, why: &str, message: &str) -> PlannedEvent {
    let (reason, warning) = match phase {
        GrantPhase::Active => (reason::GRANT_ACTIVATED, false),
        GrantPhase::Expired => (reason::GRANT_EXPIRED, false),
        GrantPhase::Revoked => (reason::GRANT_REVOKED, true),
        // Waiting for validFrom is expected; waiting for anything else needs someone's attention.
        GrantPhase::Pending => (reason::GRANT_PENDING, why != reason::NOT_YET_VALID),
    };
    PlannedEvent { warning, reason, message: message.to_string() }
}

/// Decides what a ToolGrant needs, given its agent (if it exists), the Role and
/// RoleBinding of its derived name (if they exist) and the current time.
pub fn plan(
    grant: &ToolGrant,
    agent: Option<&AgentIdentity>,
    existing: ExistingRbac<'_>,
    now: Timestamp,
) -> Result<GrantPlan, PlanError> {
    let name = grant.metadata.name.as_deref().ok_or(PlanError::MissingField("metadata.name"))?;
    let namespace = grant.metadata.namespace.as_deref().ok_or(PlanError::MissingField("metadata.namespace"))?;
    let uid = grant.metadata.uid.as_deref().ok_or(PlanError::MissingField("metadata.uid"))?;
    let owner = grant.controller_owner_ref(&()).ok_or(PlanError::MissingField("metadata.uid"))?;
    let rbac_name = rbac_name(name);
    let (mut current, mut why, mut message, next_boundary) = phase(grant, agent, now);
    let mut retry = None;

    let delete = RbacAction::Delete {
        role: existing.role.is_some_and(|r| is_owned_by(&r.metadata, uid)),
        binding: existing.binding.is_some_and(|b| is_owned_by(&b.metadata, uid)),
    };
    let rbac = match agent {
        Some(agent) if current == GrantPhase::Active && !grant.spec.kubernetes_rules.is_empty() => {
            let foreign =
                [existing.role.map(|r| ("Role", &r.metadata)), existing.binding.map(|b| ("RoleBinding", &b.metadata))]
                    .into_iter()
                    .flatten()
                    .find(|(_, meta)| !is_owned_by(meta, uid));
            if let Some((kind, _)) = foreign {
                // Never take over an object agentid did not create; and never leave a binding of
                // ours pointing at a Role that is not ours.
                current = GrantPhase::Pending;
                why = reason::RBAC_CONFLICT;
                message = format!(
                    "{kind} {namespace}/{rbac_name} already exists and is not managed by this ToolGrant; \
                     agentid leaves it untouched. Delete or rename it"
                );
                retry = Some(CONFLICT_RETRY);
                delete
            } else {
                let (role, binding) = desired_rbac(grant, agent, owner);
                message = format!(
                    "{message}: Role and RoleBinding {rbac_name} give ServiceAccount {} {} rule(s)",
                    agent.service_account_name(),
                    grant.spec.kubernetes_rules.len()
                );
                let in_line = existing.role.is_some_and(|r| role_matches(r, &role))
                    && existing.binding.is_some_and(|b| binding_matches(b, &binding));
                if in_line {
                    RbacAction::Keep
                } else {
                    RbacAction::Apply { role: Box::new(role), binding: Box::new(binding) }
                }
            }
        }
        _ => delete,
    };

    let previous = grant.status.clone().unwrap_or_default();
    let events = if previous.phase == Some(current) { Vec::new() } else { vec![event_for(current, why, &message)] };
    let ready = CondUpdate::new(READY, current == GrantPhase::Active, why, message);
    let generation = grant.metadata.generation;
    let status = ToolGrantStatus {
        phase: Some(current),
        conditions: conditions::merge(&previous.conditions, &[ready], generation, now),
        observed_generation: generation,
    };
    Ok(GrantPlan { phase: current, rbac_name, rbac, status, next_boundary, retry_after: retry, events })
}

#[cfg(test)]
mod refused_rules_tests {
    use super::*;

    #[test]
    fn rules_admission_refuses_never_become_rbac() {
        let g: ToolGrant = serde_norway::from_str(
            "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: g, namespace: agents}\nspec:\n  agentRef: {name: a}\n  kubernetesRules: [{apiGroups: [agentid.dev], resources: [agentidentities], verbs: [patch]}]\n",
        )
        .unwrap();
        let now = Timestamp::from_second(1_900_000_000).unwrap();
        let (phase, reason, message, _) = phase(&g, None, now);
        assert_eq!((phase, reason), (GrantPhase::Pending, reason::RULES_REFUSED));
        assert!(message.contains("kill switch"), "{message}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentIdentityStatus, AgentRef, Tool, ToolGrantSpec};
    use crate::core::names::{MAX_LABEL_VALUE_LEN, MAX_NAME_LEN};
    use k8s_openapi::api::rbac::v1::PolicyRule;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const T0: i64 = 1_800_000_000;

    fn t(offset: i64) -> Timestamp {
        Timestamp::from_second(T0 + offset).unwrap()
    }

    fn agent(name: &str) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.metadata.uid = Some(format!("uid-agent-{name}"));
        a.status =
            Some(AgentIdentityStatus { service_account_name: Some(format!("agent-{name}")), ..Default::default() });
        a
    }

    fn configmap_rule() -> PolicyRule {
        PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["configmaps".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }
    }

    fn grant(name: &str, from: Option<i64>, until: Option<i64>) -> ToolGrant {
        let mut g = ToolGrant::new(
            name,
            ToolGrantSpec {
                agent_ref: AgentRef { name: "billing".into() },
                tools: vec![],
                kubernetes_rules: vec![configmap_rule()],
                approval: None,
                valid_from: from.map(|o| Time(t(o))),
                valid_until: until.map(|o| Time(t(o))),
                limits: None,
                when: None,
            },
        );
        g.metadata.namespace = Some("agents".into());
        g.metadata.uid = Some(format!("uid-grant-{name}"));
        g.metadata.generation = Some(2);
        g
    }

    fn plan_at(g: &ToolGrant, a: Option<&AgentIdentity>, now: Timestamp) -> GrantPlan {
        plan(g, a, ExistingRbac::default(), now).unwrap()
    }

    fn applied(p: &GrantPlan) -> (Role, RoleBinding) {
        match &p.rbac {
            RbacAction::Apply { role, binding } => (role.as_ref().clone(), binding.as_ref().clone()),
            other => panic!("expected Apply, got {other:?}"),
        }
    }

    #[test]
    fn validity_window_boundaries_are_exact() {
        let g = grant("ci", Some(0), Some(100));
        let a = agent("billing");

        let (p, r, _, b) = phase(&g, Some(&a), t(-1));
        assert_eq!((p, r, b), (GrantPhase::Pending, reason::NOT_YET_VALID, Some(t(0))));
        // validFrom is inclusive ...
        let (p, r, _, b) = phase(&g, Some(&a), t(0));
        assert_eq!((p, r, b), (GrantPhase::Active, reason::ACTIVE, Some(t(100))));
        let (p, _, _, b) = phase(&g, Some(&a), t(99));
        assert_eq!((p, b), (GrantPhase::Active, Some(t(100))));
        // ... validUntil exclusive.
        let (p, r, _, b) = phase(&g, Some(&a), t(100));
        assert_eq!((p, r, b), (GrantPhase::Expired, reason::EXPIRED, None));
        assert_eq!(phase(&g, Some(&a), t(1000)).0, GrantPhase::Expired);
    }

    #[test]
    fn without_valid_from_a_grant_is_valid_from_creation_and_without_valid_until_forever() {
        let a = agent("billing");
        let (p, _, msg, b) = phase(&grant("open", None, None), Some(&a), t(0));
        assert_eq!((p, b), (GrantPhase::Active, None));
        assert!(msg.contains("without expiry"), "{msg}");
        let (p, _, _, b) = phase(&grant("until", None, Some(5)), Some(&a), t(0));
        assert_eq!((p, b), (GrantPhase::Active, Some(t(5))));
    }

    #[test]
    fn missing_agent_is_pending_without_rbac() {
        let g = grant("ci", None, Some(100));
        let p = plan_at(&g, None, t(0));
        assert_eq!(p.phase, GrantPhase::Pending);
        assert_eq!(p.rbac, RbacAction::Delete { role: false, binding: false });
        let ready = conditions::get(&p.status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::AGENT_NOT_FOUND));
        assert!(ready.message.contains("billing") && ready.message.contains("agents"), "{}", ready.message);
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].reason, reason::GRANT_PENDING);
        assert!(p.events[0].warning);
        // It still learns of its expiry on time.
        assert_eq!(p.next_boundary, Some(t(100)));
    }

    #[test]
    fn suspended_agent_revokes_and_removes_owned_rbac() {
        let g = grant("ci", None, None);
        let a = agent("billing");
        let (role, binding) = applied(&plan_at(&g, Some(&a), t(0)));
        let mut suspended = a.clone();
        suspended.spec.suspended = true;
        let p = plan(&g, Some(&suspended), ExistingRbac { role: Some(&role), binding: Some(&binding) }, t(1)).unwrap();
        assert_eq!(p.phase, GrantPhase::Revoked);
        assert_eq!(p.rbac, RbacAction::Delete { role: true, binding: true });
        let ready = conditions::get(&p.status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::AGENT_SUSPENDED));
        assert_eq!(p.events[0].reason, reason::GRANT_REVOKED);
        assert!(p.events[0].warning);
    }

    #[test]
    fn agent_without_its_own_service_account_gets_no_rbac() {
        let g = grant("ci", None, None);
        let mut a = agent("billing");
        a.status = None; // not reconciled yet
        let p = plan_at(&g, Some(&a), t(0));
        assert_eq!(
            (p.phase, p.rbac.clone()),
            (GrantPhase::Pending, RbacAction::Delete { role: false, binding: false })
        );
        assert_eq!(conditions::get(&p.status.conditions, READY).unwrap().reason, reason::AGENT_NOT_READY);
        // A foreign ServiceAccount holds the name (the identity controller reports no name), or the
        // status still describes a previous serviceAccountName: never bind.
        a.status = Some(AgentIdentityStatus { service_account_name: None, ..Default::default() });
        assert_eq!(phase(&g, Some(&a), t(0)).1, reason::AGENT_NOT_READY);
        a.spec.service_account_name = Some("billing-bot".into());
        a.status =
            Some(AgentIdentityStatus { service_account_name: Some("agent-billing".into()), ..Default::default() });
        assert_eq!(phase(&g, Some(&a), t(0)).1, reason::AGENT_NOT_READY);
    }

    #[test]
    fn expiry_wins_over_agent_state() {
        let g = grant("ci", None, Some(10));
        let mut a = agent("billing");
        a.spec.suspended = true;
        assert_eq!(phase(&g, None, t(10)).0, GrantPhase::Expired);
        assert_eq!(phase(&g, Some(&a), t(10)).0, GrantPhase::Expired);
        assert_eq!(phase(&g, Some(&a), t(9)).0, GrantPhase::Revoked);
    }

    #[test]
    fn active_grant_gets_a_role_and_binding_for_the_agents_service_account() {
        let mut g = grant("ci", None, Some(100));
        g.spec.agent_ref.name = "billing".into();
        let mut a = agent("billing");
        a.spec.service_account_name = Some("billing-bot".into());
        a.status = Some(AgentIdentityStatus { service_account_name: Some("billing-bot".into()), ..Default::default() });
        let p = plan_at(&g, Some(&a), t(0));
        assert_eq!(p.phase, GrantPhase::Active);
        assert_eq!(p.rbac_name, "agentid-grant-ci");
        let (role, binding) = applied(&p);

        for meta in [&role.metadata, &binding.metadata] {
            assert_eq!(meta.name.as_deref(), Some("agentid-grant-ci"));
            assert_eq!(meta.namespace.as_deref(), Some("agents"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels[AGENT_LABEL], "billing");
            assert_eq!(labels[GRANT_LABEL], "ci");
            assert_eq!(labels[MANAGED_BY_LABEL], MANAGED_BY);
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("ToolGrant", "ci", "uid-grant-ci")
            );
            assert_eq!(owner.api_version, "agentid.dev/v1alpha1");
            assert_eq!(owner.controller, Some(true));
        }
        assert_eq!(role.rules, Some(vec![configmap_rule()]));
        assert_eq!(
            binding.role_ref,
            RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: "Role".into(),
                name: "agentid-grant-ci".into()
            }
        );
        let subjects = binding.subjects.unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (subjects[0].kind.as_str(), subjects[0].name.as_str(), subjects[0].namespace.as_deref()),
            ("ServiceAccount", "billing-bot", Some("agents"))
        );

        let ready = conditions::get(&p.status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", reason::ACTIVE));
        assert!(ready.message.contains("billing-bot"), "{}", ready.message);
        assert_eq!(p.status.phase, Some(GrantPhase::Active));
        assert_eq!(p.status.observed_generation, Some(2));
        assert_eq!(p.events.len(), 1);
        assert_eq!(p.events[0].reason, reason::GRANT_ACTIVATED);
        assert!(!p.events[0].warning);
        assert_eq!((p.next_boundary, p.retry_after), (Some(t(100)), None));
    }

    #[test]
    fn empty_kubernetes_rules_give_no_rbac() {
        let mut g = grant("tools-only", None, None);
        g.spec.kubernetes_rules.clear();
        g.spec.tools = vec![Tool {
            name: "github.create_issue".into(),
            actions: vec![],
            destinations: vec![],
            max_data_sensitivity: Default::default(),
            risk: Default::default(),
        }];
        let p = plan_at(&g, Some(&agent("billing")), t(0));
        assert_eq!(p.phase, GrantPhase::Active);
        assert_eq!(p.rbac, RbacAction::Delete { role: false, binding: false });
        assert!(conditions::is_true(&p.status.conditions, READY));
    }

    #[test]
    fn pending_and_expired_grants_remove_only_their_own_rbac() {
        let g = grant("ci", Some(50), Some(100));
        let a = agent("billing");
        let (role, binding) = applied(&plan_at(&g, Some(&a), t(60)));
        let existing = ExistingRbac { role: Some(&role), binding: Some(&binding) };
        let p = plan(&g, Some(&a), existing, t(100)).unwrap();
        assert_eq!((p.phase, p.rbac), (GrantPhase::Expired, RbacAction::Delete { role: true, binding: true }));

        let foreign_role =
            Role { metadata: ObjectMeta { name: Some(p.rbac_name.clone()), ..Default::default() }, rules: None };
        let existing = ExistingRbac { role: Some(&foreign_role), binding: None };
        let p = plan(&g, Some(&a), existing, t(0)).unwrap();
        assert_eq!((p.phase, p.rbac), (GrantPhase::Pending, RbacAction::Delete { role: false, binding: false }));
    }

    #[test]
    fn foreign_role_of_the_derived_name_is_a_conflict_not_a_takeover() {
        let g = grant("ci", None, None);
        let a = agent("billing");
        let (_, binding) = applied(&plan_at(&g, Some(&a), t(0)));
        let foreign_role = Role {
            metadata: ObjectMeta {
                name: Some("agentid-grant-ci".into()),
                namespace: Some("agents".into()),
                ..Default::default()
            },
            rules: None,
        };
        let existing = ExistingRbac { role: Some(&foreign_role), binding: Some(&binding) };
        let p = plan(&g, Some(&a), existing, t(0)).unwrap();
        assert_eq!(p.phase, GrantPhase::Pending);
        // The foreign Role stays; our binding, which would now point at it, goes.
        assert_eq!(p.rbac, RbacAction::Delete { role: false, binding: true });
        let ready = conditions::get(&p.status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::RBAC_CONFLICT));
        assert!(ready.message.contains("Role agents/agentid-grant-ci"), "{}", ready.message);
        assert!(p.events[0].warning);
        assert_eq!(p.retry_after, Some(CONFLICT_RETRY));
    }

    #[test]
    fn plan_is_idempotent_and_keeps_rbac_that_is_in_line() {
        let g = grant("ci", None, Some(10_000));
        let a = agent("billing");
        let first = plan_at(&g, Some(&a), t(0));
        let (role, binding) = applied(&first);
        let mut g2 = g.clone();
        g2.status = Some(first.status.clone());
        let existing = ExistingRbac { role: Some(&role), binding: Some(&binding) };
        let second = plan(&g2, Some(&a), existing, t(5)).unwrap();
        assert_eq!(second.rbac, RbacAction::Keep);
        assert!(second.events.is_empty());
        assert_eq!(second.status, first.status, "same input, same status: no status write needed");
        let third = plan(&g2, Some(&a), existing, t(5)).unwrap();
        assert_eq!(third, second);
    }

    #[test]
    fn drifted_rbac_is_reapplied() {
        let g = grant("ci", None, None);
        let a = agent("billing");
        let (mut role, mut binding) = applied(&plan_at(&g, Some(&a), t(0)));
        role.rules =
            Some(vec![PolicyRule { verbs: vec!["*".into()], resources: Some(vec!["*".into()]), ..Default::default() }]);
        let p = plan(&g, Some(&a), ExistingRbac { role: Some(&role), binding: Some(&binding) }, t(0)).unwrap();
        assert!(matches!(p.rbac, RbacAction::Apply { .. }));
        let (role, _) = applied(&p);
        binding.subjects.as_mut().unwrap()[0].name = "someone-else".into();
        let p = plan(&g, Some(&a), ExistingRbac { role: Some(&role), binding: Some(&binding) }, t(0)).unwrap();
        assert!(matches!(p.rbac, RbacAction::Apply { .. }));
    }

    #[test]
    fn events_only_when_the_phase_changes() {
        let g = grant("ci", Some(10), Some(20));
        let a = agent("billing");
        let mut g = g;
        let mut reasons = Vec::new();
        for now in [0, 5, 10, 15, 20, 25] {
            let p = plan_at(&g, Some(&a), t(now));
            reasons.extend(p.events.iter().map(|e| e.reason));
            g.status = Some(p.status);
        }
        assert_eq!(reasons, vec![reason::GRANT_PENDING, reason::GRANT_ACTIVATED, reason::GRANT_EXPIRED]);
        // Waiting for validFrom is no warning.
        let p = plan_at(&grant("later", Some(10), None), Some(&a), t(0));
        assert!(!p.events[0].warning);
    }

    #[test]
    fn the_next_boundary_is_the_only_time_to_wake_for() {
        let p = plan_at(&grant("soon", Some(5), None), Some(&agent("billing")), t(0));
        assert_eq!((p.next_boundary, p.retry_after), (Some(t(5)), None));
        let p = plan_at(&grant("open", None, None), Some(&agent("billing")), t(0));
        assert_eq!((p.next_boundary, p.retry_after), (None, None), "nothing ahead: nothing to wake for");
    }

    #[test]
    fn rbac_names_are_derived_deterministically_and_fit() {
        assert_eq!(rbac_name("ci"), "agentid-grant-ci");
        let fits = "a".repeat(MAX_NAME_LEN - RBAC_NAME_PREFIX.len());
        assert_eq!(rbac_name(&fits), format!("{RBAC_NAME_PREFIX}{fits}"));

        let long_a = format!("{}a", "x".repeat(252));
        let long_b = format!("{}b", "x".repeat(252));
        let (na, nb) = (rbac_name(&long_a), rbac_name(&long_b));
        assert_eq!(na.len(), MAX_NAME_LEN);
        assert!(na.starts_with(RBAC_NAME_PREFIX));
        assert_ne!(na, nb, "long names sharing a prefix stay distinct");
        assert_eq!(na, rbac_name(&long_a), "deterministic");

        // No separator piles up before the hash.
        let dotted = format!("{}.{}", "y".repeat(227), "z".repeat(30));
        let n = rbac_name(&dotted);
        assert!(n.len() <= MAX_NAME_LEN);
        assert!(!n.contains(".-") && !n.contains("--"), "{n}");
    }

    #[test]
    fn long_names_become_valid_label_values() {
        assert_eq!(label_value("billing"), "billing");
        let long = format!("{}.example", "a".repeat(100));
        let v = label_value(&long);
        assert_eq!(v.len(), MAX_LABEL_VALUE_LEN);
        let re = regex::Regex::new("^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$").unwrap();
        assert!(re.is_match(&v), "{v}");
        assert_eq!(v, label_value(&long));
    }

    #[test]
    fn grants_map_to_their_agent_in_the_same_namespace() {
        let g = grant("ci", None, None);
        assert!(is_for_agent(&g, &agent("billing")));
        assert!(!is_for_agent(&g, &agent("other")));
        let mut elsewhere = agent("billing");
        elsewhere.metadata.namespace = Some("other-ns".into());
        assert!(!is_for_agent(&g, &elsewhere));
    }

    #[test]
    fn objects_without_identity_fields_are_refused_not_panicked() {
        let mut g = grant("ci", None, None);
        g.metadata.uid = None;
        assert_eq!(plan(&g, None, ExistingRbac::default(), t(0)), Err(PlanError::MissingField("metadata.uid")));
        g.metadata.namespace = None;
        assert!(plan(&g, None, ExistingRbac::default(), t(0)).is_err());
    }
}
