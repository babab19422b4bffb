//! The ToolGrant controller on the real kube-apiserver: a grant's kubernetesRules
//! become RBAC the apiserver itself enforces (checked with SubjectAccessReviews),
//! only while the grant is Active.
#![cfg(feature = "e2e")]

mod support;

use std::time::Duration;

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::*;

use agentid::api::{AgentIdentity, GrantPhase, ToolGrant};
use agentid::core::conditions;

const TIMEOUT: Duration = Duration::from_secs(30);

fn agent_yaml(name: &str) -> String {
    format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec:\n  owner: team-payments\n  audiences: [https://tools.example.com]\n"
    )
}

/// A grant of `get configmaps` to `agent`; `extra` adds spec fields (two-space indented).
fn grant_yaml(name: &str, agent: &str, extra: &str) -> String {
    format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {{name: {name}}}\nspec:\n  agentRef: {{name: {agent}}}\n  kubernetesRules:\n    - apiGroups: ['']\n      resources: [configmaps]\n      verbs: [get]\n{extra}"
    )
}

/// RFC 3339 (whole seconds, as Kubernetes stores them) `secs` seconds from now.
fn in_secs(secs: i64) -> String {
    Timestamp::now().checked_add(SignedDuration::from_secs(secs)).unwrap().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

struct Fixture {
    client: Client,
    ns: String,
    agents: Api<AgentIdentity>,
    grants: Api<ToolGrant>,
    roles: Api<Role>,
    bindings: Api<RoleBinding>,
    op: Operator,
}

async fn fixture(prefix: &str) -> Fixture {
    let env = env(prefix).await;
    let op = start_operator(&env.client, operator_config(&env.ns));
    Fixture {
        agents: Api::namespaced(env.client.clone(), &env.ns),
        grants: Api::namespaced(env.client.clone(), &env.ns),
        roles: Api::namespaced(env.client.clone(), &env.ns),
        bindings: Api::namespaced(env.client.clone(), &env.ns),
        client: env.client,
        ns: env.ns,
        op,
    }
}

impl Fixture {
    async fn create_agent(&self, name: &str) {
        self.agents.create(&PostParams::default(), &from_yaml(&agent_yaml(name))).await.unwrap();
    }

    async fn create_grant(&self, name: &str, agent: &str, extra: &str) {
        self.grants.create(&PostParams::default(), &from_yaml(&grant_yaml(name, agent, extra))).await.unwrap();
    }

    /// Whether the apiserver lets the agent's ServiceAccount `get` ConfigMaps in the namespace.
    async fn agent_can_get_configmaps(&self, agent: &str) -> bool {
        let sar: SubjectAccessReview = serde_json::from_value(json!({
            "spec": {
                "user": format!("system:serviceaccount:{}:agent-{agent}", self.ns),
                "resourceAttributes": {"namespace": self.ns, "verb": "get", "resource": "configmaps"},
            }
        }))
        .unwrap();
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &sar).await.unwrap().status.unwrap().allowed
    }

    async fn wait_sar(&self, agent: &str, allowed: bool) {
        let what = format!("SubjectAccessReview for agent-{agent} allowed={allowed}");
        wait_until(TIMEOUT, &what, || async { (self.agent_can_get_configmaps(agent).await == allowed).then_some(()) })
            .await;
    }

    /// Waits until the grant is in `phase` with `Ready` reason `reason`.
    async fn wait_phase(&self, name: &str, phase: GrantPhase, reason: &str) -> ToolGrant {
        wait_until(TIMEOUT, &format!("grant {name} {phase:?}/{reason}"), || async {
            let g = self.grants.get(name).await.ok()?;
            let status = g.status.as_ref()?;
            let ready = conditions::get(&status.conditions, "Ready")?;
            (status.phase == Some(phase) && ready.reason == reason).then_some(g.clone())
        })
        .await
    }

    /// `(Role exists, RoleBinding exists)` for the grant's derived name.
    async fn rbac(&self, grant: &str) -> (bool, bool) {
        let name = format!("agentid-grant-{grant}");
        (self.roles.get_opt(&name).await.unwrap().is_some(), self.bindings.get_opt(&name).await.unwrap().is_some())
    }

    async fn set_suspended(&self, agent: &str, suspended: bool) {
        let patch = json!({"spec": {"suspended": suspended}});
        self.agents.patch(agent, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }
}

#[tokio::test]
async fn active_grant_becomes_rbac_the_apiserver_enforces() {
    let f = fixture("tg-active").await;
    f.create_agent("triage").await;
    assert!(!f.agent_can_get_configmaps("triage").await, "no access before any grant");
    f.create_grant("read-config", "triage", "").await;

    let grant = f.wait_phase("read-config", GrantPhase::Active, "Active").await;
    let status = grant.status.as_ref().unwrap();
    assert!(conditions::is_true(&status.conditions, "Ready"));
    assert_eq!(status.observed_generation, grant.metadata.generation);
    f.wait_sar("triage", true).await;

    // The RBAC is labelled and owned by the grant, and binds exactly the agent's ServiceAccount.
    let role = f.roles.get("agentid-grant-read-config").await.unwrap();
    let labels = role.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["agentid.dev/agent"], "triage");
    assert_eq!(labels["agentid.dev/toolgrant"], "read-config");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "agentid");
    let owner = &role.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("ToolGrant", grant.metadata.uid.as_deref().unwrap()));
    let binding = f.bindings.get("agentid-grant-read-config").await.unwrap();
    assert_eq!(binding.role_ref.name, "agentid-grant-read-config");
    let subjects = binding.subjects.unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!((subjects[0].kind.as_str(), subjects[0].name.as_str()), ("ServiceAccount", "agent-triage"));

    // Only what was granted: no other verb.
    let sar: SubjectAccessReview = serde_json::from_value(json!({"spec": {
        "user": format!("system:serviceaccount:{}:agent-triage", f.ns),
        "resourceAttributes": {"namespace": f.ns, "verb": "delete", "resource": "configmaps"},
    }}))
    .unwrap();
    let review = Api::<SubjectAccessReview>::all(f.client.clone()).create(&PostParams::default(), &sar).await.unwrap();
    assert!(!review.status.unwrap().allowed, "delete was never granted");

    // The activation is recorded as an Event.
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    wait_until(TIMEOUT, "GrantActivated Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("GrantActivated")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn grant_expires_on_time_and_its_access_ends() {
    let f = fixture("tg-expiry").await;
    f.create_agent("triage").await;
    f.create_grant("short", "triage", &format!("  validUntil: '{}'\n", in_secs(8))).await;

    f.wait_phase("short", GrantPhase::Active, "Active").await;
    assert!(f.agent_can_get_configmaps("triage").await, "allowed while Active");

    f.wait_phase("short", GrantPhase::Expired, "Expired").await;
    assert!(!f.agent_can_get_configmaps("triage").await, "denied once Expired");
    assert_eq!(f.rbac("short").await, (false, false));
    let metrics = f.op.metrics.encode();
    assert!(metrics.contains("agentid_grant_transitions_total{reason=\"GrantExpired\"} 1"), "{metrics}");
}

#[tokio::test]
async fn deleting_a_grant_removes_its_rbac() {
    let f = fixture("tg-delete").await;
    f.create_agent("triage").await;
    f.create_grant("read-config", "triage", "").await;
    f.wait_phase("read-config", GrantPhase::Active, "Active").await;
    f.wait_sar("triage", true).await;

    f.grants.delete("read-config", &DeleteParams::default()).await.unwrap();
    wait_until(TIMEOUT, "grant and its RBAC gone", || async {
        let gone = f.grants.get_opt("read-config").await.ok()?.is_none();
        (gone && f.rbac("read-config").await == (false, false)).then_some(())
    })
    .await;
    assert!(!f.agent_can_get_configmaps("triage").await);
}

#[tokio::test]
async fn suspending_the_agent_revokes_and_resuming_restores() {
    let f = fixture("tg-suspend").await;
    f.create_agent("triage").await;
    f.create_grant("read-config", "triage", "").await;
    f.wait_phase("read-config", GrantPhase::Active, "Active").await;
    f.wait_sar("triage", true).await;

    f.set_suspended("triage", true).await;
    let revoked = f.wait_phase("read-config", GrantPhase::Revoked, "AgentSuspended").await;
    assert!(!conditions::is_true(&revoked.status.unwrap().conditions, "Ready"));
    assert_eq!(f.rbac("read-config").await, (false, false));
    assert!(!f.agent_can_get_configmaps("triage").await, "denied while suspended");

    f.set_suspended("triage", false).await;
    f.wait_phase("read-config", GrantPhase::Active, "Active").await;
    assert_eq!(f.rbac("read-config").await, (true, true));
    assert!(f.agent_can_get_configmaps("triage").await, "allowed again once resumed");
}

#[tokio::test]
async fn grant_for_a_missing_agent_is_pending_without_rbac() {
    let f = fixture("tg-missing").await;
    f.create_grant("orphan", "ghost", "").await;

    let pending = f.wait_phase("orphan", GrantPhase::Pending, "AgentNotFound").await;
    let ready = conditions::get(&pending.status.as_ref().unwrap().conditions, "Ready").unwrap().clone();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("ghost"), "{}", ready.message);
    assert_eq!(f.rbac("orphan").await, (false, false));
    assert!(!f.agent_can_get_configmaps("ghost").await);

    // The agent appearing is enough for the grant to take effect (the controller watches agents).
    f.create_agent("ghost").await;
    f.wait_phase("orphan", GrantPhase::Active, "Active").await;
    f.wait_sar("ghost", true).await;
}

#[tokio::test]
async fn grant_activates_at_valid_from_by_itself() {
    let f = fixture("tg-later").await;
    f.create_agent("triage").await;
    let valid_from = in_secs(5);
    f.create_grant("later", "triage", &format!("  validFrom: '{valid_from}'\n")).await;

    let pending = f.wait_phase("later", GrantPhase::Pending, "NotYetValid").await;
    assert!(Timestamp::now() < valid_from.parse::<Timestamp>().unwrap(), "observed Pending only before validFrom");
    assert_eq!(f.rbac("later").await, (false, false));
    assert!(!f.agent_can_get_configmaps("triage").await);

    // Nothing else changes: only the requeue at the boundary can activate it.
    f.wait_phase("later", GrantPhase::Active, "Active").await;
    assert!(Timestamp::now() >= valid_from.parse::<Timestamp>().unwrap(), "not active before validFrom");
    assert!(f.agent_can_get_configmaps("triage").await);
    let active = f.grants.get("later").await.unwrap();
    assert_eq!(active.metadata.generation, pending.metadata.generation, "the spec was not touched");
}

#[tokio::test]
async fn foreign_role_of_the_same_name_is_never_taken_over() {
    let f = fixture("tg-conflict").await;
    let foreign: Role = from_yaml(
        "metadata: {name: agentid-grant-read-config, labels: {team: platform}}\nrules:\n  - apiGroups: ['']\n    resources: [secrets]\n    verbs: [get]\n",
    );
    let foreign = f.roles.create(&PostParams::default(), &foreign).await.unwrap();
    f.create_agent("triage").await;
    f.create_grant("read-config", "triage", "").await;

    let pending = f.wait_phase("read-config", GrantPhase::Pending, "RBACConflict").await;
    let ready = conditions::get(&pending.status.as_ref().unwrap().conditions, "Ready").unwrap().clone();
    assert!(ready.message.contains("agentid-grant-read-config"), "{}", ready.message);
    assert_eq!(f.rbac("read-config").await, (true, false), "no binding to a Role agentid does not own");
    let after = f.roles.get("agentid-grant-read-config").await.unwrap();
    assert_eq!(after.metadata.resource_version, foreign.metadata.resource_version, "foreign Role was modified");
    assert!(!f.agent_can_get_configmaps("triage").await);

    // Deleting the grant leaves the foreign Role alone.
    f.grants.delete("read-config", &DeleteParams::default()).await.unwrap();
    wait_until(TIMEOUT, "grant gone", || async { f.grants.get_opt("read-config").await.ok()?.is_none().then_some(()) })
        .await;
    assert!(f.roles.get_opt("agentid-grant-read-config").await.unwrap().is_some(), "foreign Role was deleted");
}

/// The operator, running as a user that holds nothing but the ClusterRole of config/rbac/role.yaml, can
/// still put arbitrary grant rules in place (it holds `bind` and `escalate`, not the rules) and remove them.
#[tokio::test]
async fn operator_cluster_role_suffices_for_grants() {
    let env = env("tg-rbac").await;
    let admin = env.client.clone();
    let ns = env.ns.clone();
    with_shipped_cluster_role(&env, |operator_client| async move {
        let f = Fixture {
            agents: Api::namespaced(admin.clone(), &ns),
            grants: Api::namespaced(admin.clone(), &ns),
            roles: Api::namespaced(admin.clone(), &ns),
            bindings: Api::namespaced(admin.clone(), &ns),
            client: admin,
            op: start_operator(&operator_client, operator_config(&ns)),
            ns,
        };
        f.create_agent("triage").await;
        f.create_grant("read-config", "triage", "").await;
        f.wait_phase("read-config", GrantPhase::Active, "Active").await;
        assert!(f.agent_can_get_configmaps("triage").await);
        f.grants.delete("read-config", &DeleteParams::default()).await.unwrap();
        wait_until(TIMEOUT, "grant and its RBAC gone", || async {
            let gone = f.grants.get_opt("read-config").await.ok()?.is_none();
            (gone && f.rbac("read-config").await == (false, false)).then_some(())
        })
        .await;
        let metrics = f.op.metrics.encode();
        assert!(!metrics.contains("api_forbidden"), "the operator was refused something:\n{metrics}");
    })
    .await;
}

/// Deleting an agent removes everything agentid created for it: its ServiceAccount (finalizer) and the
/// RBAC of its grants (the grants fall back to Pending, AgentNotFound).
#[tokio::test]
async fn deleting_the_agent_removes_its_service_account_and_grant_rbac() {
    let f = fixture("tg-agent-gone").await;
    f.create_agent("triage").await;
    f.create_grant("read-config", "triage", "").await;
    f.wait_phase("read-config", GrantPhase::Active, "Active").await;
    assert_eq!(f.rbac("read-config").await, (true, true));

    f.agents.delete("triage", &DeleteParams::default()).await.unwrap();
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(f.client.clone(), &f.ns);
    wait_until(TIMEOUT, "agent, its ServiceAccount and its grant's RBAC gone", || async {
        let agent_gone = f.agents.get_opt("triage").await.ok()?.is_none();
        let sa_gone = sas.get_opt("agent-triage").await.ok()?.is_none();
        (agent_gone && sa_gone && f.rbac("read-config").await == (false, false)).then_some(())
    })
    .await;
    f.wait_phase("read-config", GrantPhase::Pending, "AgentNotFound").await;
}
