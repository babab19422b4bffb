//! What an AgentIdentity should have: its SPIFFE ID, its dedicated
//! ServiceAccount, and the status that describes them. Pure: the controller
//! fetches, calls [`plan`], applies what it returns.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;

use crate::api::{AGENT_LABEL, AgentIdentity, AgentIdentityStatus, MANAGED_BY, MANAGED_BY_LABEL, SPIFFE_ID_ANNOTATION};
use crate::core::conditions::{self, CondUpdate, READY, SUSPENDED};

/// Reasons used in conditions and Events (stable: dashboards and alerts match on them).
pub mod reason {
    pub const IDENTITY_READY: &str = "IdentityReady";
    pub const SERVICE_ACCOUNT_CONFLICT: &str = "ServiceAccountConflict";
    pub const SERVICE_ACCOUNT_CREATED: &str = "ServiceAccountCreated";
    pub const SERVICE_ACCOUNT_UPDATED: &str = "ServiceAccountUpdated";
    pub const SUSPENDED: &str = "Suspended";
    pub const ACTIVE: &str = "Active";
    pub const KILL_SWITCH: &str = "KillSwitch";
    pub const INVALID_SPEC: &str = "InvalidSpec";
}

/// The SPIFFE ID of an agent: `spiffe://<trust-domain>/ns/<namespace>/agent/<name>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, name: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/agent/{name}")
}

/// Labels every object agentid creates for an agent carries.
pub fn agent_labels(agent: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (AGENT_LABEL.to_string(), agent.to_string()),
        (MANAGED_BY_LABEL.to_string(), MANAGED_BY.to_string()),
    ])
}

/// Whether `meta` names `owner_uid` among its owners: only such objects are agentid's to change or delete.
pub fn is_owned_by(meta: &ObjectMeta, owner_uid: &str) -> bool {
    meta.owner_references.as_deref().unwrap_or_default().iter().any(|o| o.uid == owner_uid)
}

/// Why an AgentIdentity cannot be planned at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("object has no {0}")]
    MissingField(&'static str),
}

/// What to do with the agent's ServiceAccount.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceAccountAction {
    /// Nothing: it exists, is ours and matches.
    Keep,
    /// Create it, or bring an owned one back in line (server-side apply of this object).
    Apply { desired: Box<ServiceAccount>, create: bool },
    /// A ServiceAccount of that name exists and is not ours: leave it alone.
    Conflict { message: String },
}

/// A notable change, to be published as a Kubernetes Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: &'static str,
    pub message: String,
}

/// Everything the controller needs to bring one AgentIdentity in line.
#[derive(Debug, Clone, PartialEq)]
pub struct IdentityPlan {
    pub spiffe_id: String,
    pub service_account_name: String,
    pub service_account: ServiceAccountAction,
    /// Status to write once the action succeeded.
    pub status: AgentIdentityStatus,
    pub events: Vec<PlannedEvent>,
}

/// The ServiceAccount an agent should have.
pub fn desired_service_account(agent: &AgentIdentity, owner: OwnerReference, spiffe: &str) -> ServiceAccount {
    let name = agent.metadata.name.clone().unwrap_or_default();
    ServiceAccount {
        metadata: ObjectMeta {
            name: Some(agent.service_account_name()),
            namespace: agent.metadata.namespace.clone(),
            labels: Some(agent_labels(&name)),
            annotations: Some(BTreeMap::from([(SPIFFE_ID_ANNOTATION.to_string(), spiffe.to_string())])),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        automount_service_account_token: Some(false),
        ..Default::default()
    }
}

/// Whether `existing` already carries everything `desired` sets.
fn matches(existing: &ServiceAccount, desired: &ServiceAccount) -> bool {
    let contains = |have: &Option<BTreeMap<String, String>>, want: &Option<BTreeMap<String, String>>| {
        want.iter().flatten().all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    contains(&existing.metadata.labels, &desired.metadata.labels)
        && contains(&existing.metadata.annotations, &desired.metadata.annotations)
        && existing.automount_service_account_token == desired.automount_service_account_token
        && desired
            .metadata
            .owner_references
            .iter()
            .flatten()
            .all(|o| existing.metadata.owner_references.iter().flatten().any(|e| e == o))
}

/// Decides what an AgentIdentity needs, given the ServiceAccount of its name
/// (if any) and the operator's default trust domain.
pub fn plan(
    agent: &AgentIdentity,
    existing_sa: Option<&ServiceAccount>,
    default_trust_domain: &str,
    now: Timestamp,
) -> Result<IdentityPlan, PlanError> {
    let name = agent.metadata.name.as_deref().ok_or(PlanError::MissingField("metadata.name"))?;
    let namespace = agent.metadata.namespace.as_deref().ok_or(PlanError::MissingField("metadata.namespace"))?;
    let uid = agent.metadata.uid.as_deref().ok_or(PlanError::MissingField("metadata.uid"))?;
    let owner = agent.controller_owner_ref(&()).ok_or(PlanError::MissingField("metadata.uid"))?;
    let trust_domain = agent.spec.trust_domain.as_deref().filter(|t| !t.is_empty()).unwrap_or(default_trust_domain);
    let spiffe = spiffe_id(trust_domain, namespace, name);
    let sa_name = agent.service_account_name();
    let desired = desired_service_account(agent, owner, &spiffe);

    let mut events = Vec::new();
    let (action, ready) = match existing_sa {
        Some(sa) if !is_owned_by(&sa.metadata, uid) => {
            let message = format!(
                "ServiceAccount {namespace}/{sa_name} already exists and is not managed by this AgentIdentity; \
                 agentid leaves it untouched. Delete or rename it, or set spec.serviceAccountName to a free name"
            );
            events.push(PlannedEvent {
                warning: true,
                reason: reason::SERVICE_ACCOUNT_CONFLICT,
                message: message.clone(),
            });
            (
                ServiceAccountAction::Conflict { message: message.clone() },
                CondUpdate::new(READY, false, reason::SERVICE_ACCOUNT_CONFLICT, message),
            )
        }
        Some(sa) if matches(sa, &desired) => (ServiceAccountAction::Keep, ready_condition(&sa_name, &spiffe)),
        Some(_) => {
            events.push(PlannedEvent {
                warning: false,
                reason: reason::SERVICE_ACCOUNT_UPDATED,
                message: format!("ServiceAccount {sa_name} brought back in line"),
            });
            (
                ServiceAccountAction::Apply { desired: Box::new(desired), create: false },
                ready_condition(&sa_name, &spiffe),
            )
        }
        None => {
            events.push(PlannedEvent {
                warning: false,
                reason: reason::SERVICE_ACCOUNT_CREATED,
                message: format!("Created ServiceAccount {sa_name} for {spiffe}"),
            });
            (
                ServiceAccountAction::Apply { desired: Box::new(desired), create: true },
                ready_condition(&sa_name, &spiffe),
            )
        }
    };

    let conflict = matches!(action, ServiceAccountAction::Conflict { .. });
    let suspended = if agent.spec.suspended {
        CondUpdate::new(
            SUSPENDED,
            true,
            reason::KILL_SWITCH,
            "spec.suspended is true: every credential of this agent is revoked",
        )
    } else {
        CondUpdate::new(SUSPENDED, false, reason::ACTIVE, "")
    };
    // A suspended agent is not Ready, whatever state its ServiceAccount is in, so
    // admission and the decision API refuse it.
    let ready = if agent.spec.suspended && !conflict {
        CondUpdate::new(READY, false, reason::SUSPENDED, "the agent is suspended (spec.suspended: true)")
    } else {
        ready
    };
    let previous = agent.status.clone().unwrap_or_default();
    let generation = agent.metadata.generation;
    let status = AgentIdentityStatus {
        spiffe_id: Some(spiffe.clone()),
        service_account_name: (!conflict).then(|| sa_name.clone()),
        conditions: conditions::merge(&previous.conditions, &[ready, suspended], generation, now),
        observed_generation: generation,
    };
    Ok(IdentityPlan { spiffe_id: spiffe, service_account_name: sa_name, service_account: action, status, events })
}

/// All that grants and tasks read of their agent, as one number: which agent it is (uid), its spec
/// (`metadata.generation`: suspended, audiences, ServiceAccount name) and whether its ServiceAccount is in
/// place. An agent change that leaves it alone (its conditions' times and messages, its finalizer, labels)
/// cannot change a grant or a task, so it wakes none of them.
pub fn dependents_fingerprint(agent: &AgentIdentity) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let m = &agent.metadata;
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one((
        &m.uid,
        m.generation,
        agent.service_account_in_place(),
    ))
}

fn ready_condition(sa_name: &str, spiffe: &str) -> CondUpdate {
    CondUpdate::new(READY, true, reason::IDENTITY_READY, format!("ServiceAccount {sa_name} carries {spiffe}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::core::v1::ServiceAccount;

    fn agent(name: &str) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.metadata.generation = Some(3);
        a
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).unwrap()
    }

    #[test]
    fn dependents_fingerprint_changes_only_with_what_grants_and_tasks_read() {
        let a = agent("billing");
        let mut ready = a.clone();
        ready.status = plan(&a, None, "cluster.local", now()).map(|p| Some(p.status)).unwrap();
        let base = dependents_fingerprint(&a);
        // the ServiceAccount coming into place counts
        assert_ne!(dependents_fingerprint(&ready), base);
        // a spec change (suspended, audiences, ...) bumps the generation: counts
        let mut suspended = ready.clone();
        suspended.spec.suspended = true;
        suspended.metadata.generation = Some(4);
        assert_ne!(dependents_fingerprint(&suspended), dependents_fingerprint(&ready));
        // another agent of the same name (deleted and created again) counts
        let mut other = ready.clone();
        other.metadata.uid = Some("another-uid".into());
        assert_ne!(dependents_fingerprint(&other), dependents_fingerprint(&ready));
        // the condition's time and message, a finalizer, labels do not
        let mut later = ready.clone();
        later.metadata.finalizers = Some(vec!["agentid.dev/cleanup".into()]);
        later.metadata.labels = Some([("team".to_string(), "a".to_string())].into());
        if let Some(s) = later.status.as_mut() {
            for c in &mut s.conditions {
                c.message = "said differently".into();
            }
        }
        assert_eq!(dependents_fingerprint(&later), dependents_fingerprint(&ready));
    }

    #[test]
    fn spiffe_id_has_the_documented_shape() {
        assert_eq!(spiffe_id("cluster.local", "agents", "billing"), "spiffe://cluster.local/ns/agents/agent/billing");
    }

    #[test]
    fn new_agent_gets_a_dedicated_service_account() {
        let a = agent("billing");
        let p = plan(&a, None, "cluster.local", now()).unwrap();
        let ServiceAccountAction::Apply { desired, create } = &p.service_account else { panic!("expected apply") };
        assert!(create);
        assert_eq!(desired.metadata.name.as_deref(), Some("agent-billing"));
        assert_eq!(desired.metadata.namespace.as_deref(), Some("agents"));
        assert_eq!(desired.automount_service_account_token, Some(false));
        assert_eq!(desired.metadata.labels.as_ref().unwrap()[AGENT_LABEL], "billing");
        assert_eq!(
            desired.metadata.annotations.as_ref().unwrap()[SPIFFE_ID_ANNOTATION],
            "spiffe://cluster.local/ns/agents/agent/billing"
        );
        let owner = &desired.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "uid-billing");
        assert_eq!(owner.kind, "AgentIdentity");
        assert_eq!(owner.controller, Some(true));
        assert!(conditions::is_true(&p.status.conditions, READY));
        assert_eq!(p.status.service_account_name.as_deref(), Some("agent-billing"));
        assert_eq!(p.status.observed_generation, Some(3));
        assert_eq!(p.events[0].reason, reason::SERVICE_ACCOUNT_CREATED);
    }

    #[test]
    fn spec_overrides_name_and_trust_domain() {
        let mut a = agent("billing");
        a.spec.service_account_name = Some("billing-bot".into());
        a.spec.trust_domain = Some("prod.example.com".into());
        let p = plan(&a, None, "cluster.local", now()).unwrap();
        assert_eq!(p.service_account_name, "billing-bot");
        assert_eq!(p.spiffe_id, "spiffe://prod.example.com/ns/agents/agent/billing");
    }

    #[test]
    fn matching_owned_service_account_is_kept_and_plan_is_idempotent() {
        let a = agent("billing");
        let first = plan(&a, None, "cluster.local", now()).unwrap();
        let ServiceAccountAction::Apply { desired, .. } = first.service_account else { panic!() };
        let mut a2 = a.clone();
        a2.status = Some(first.status.clone());
        let later = Timestamp::from_second(1_800_000_100).unwrap();
        let second = plan(&a2, Some(&desired), "cluster.local", later).unwrap();
        assert_eq!(second.service_account, ServiceAccountAction::Keep);
        assert!(second.events.is_empty());
        assert_eq!(second.status, first.status, "same input, same status: no status write needed");
    }

    #[test]
    fn drifted_owned_service_account_is_reapplied() {
        let a = agent("billing");
        let ServiceAccountAction::Apply { mut desired, .. } =
            plan(&a, None, "cluster.local", now()).unwrap().service_account
        else {
            panic!()
        };
        desired.automount_service_account_token = Some(true);
        let p = plan(&a, Some(&desired), "cluster.local", now()).unwrap();
        assert!(matches!(p.service_account, ServiceAccountAction::Apply { create: false, .. }));
    }

    #[test]
    fn foreign_service_account_is_a_conflict_not_an_overwrite() {
        let a = agent("billing");
        let foreign = ServiceAccount {
            metadata: ObjectMeta {
                name: Some("agent-billing".into()),
                namespace: Some("agents".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let p = plan(&a, Some(&foreign), "cluster.local", now()).unwrap();
        assert!(matches!(p.service_account, ServiceAccountAction::Conflict { .. }));
        let ready = conditions::get(&p.status.conditions, READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, reason::SERVICE_ACCOUNT_CONFLICT);
        assert!(ready.message.contains("agents/agent-billing"));
        assert_eq!(p.status.service_account_name, None);
        assert!(p.events[0].warning);
    }

    #[test]
    fn service_account_owned_by_another_agent_is_a_conflict() {
        let other = agent("other");
        let ServiceAccountAction::Apply { desired, .. } =
            plan(&other, None, "cluster.local", now()).unwrap().service_account
        else {
            panic!()
        };
        let mut a = agent("billing");
        a.spec.service_account_name = Some("agent-other".into());
        let p = plan(&a, Some(&desired), "cluster.local", now()).unwrap();
        assert!(matches!(p.service_account, ServiceAccountAction::Conflict { .. }));
    }

    #[test]
    fn suspended_agent_is_not_ready() {
        let mut a = agent("billing");
        a.spec.suspended = true;
        let p = plan(&a, None, "cluster.local", now()).unwrap();
        assert!(conditions::is_true(&p.status.conditions, SUSPENDED));
        let ready = conditions::get(&p.status.conditions, READY).unwrap();
        assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", reason::SUSPENDED));
    }

    #[test]
    fn objects_without_identity_fields_are_refused_not_panicked() {
        let mut a = agent("billing");
        a.metadata.uid = None;
        assert_eq!(plan(&a, None, "cluster.local", now()), Err(PlanError::MissingField("metadata.uid")));
        a.metadata.namespace = None;
        assert!(plan(&a, None, "cluster.local", now()).is_err());
    }
}
