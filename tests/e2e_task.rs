//! The AgentTask controller on the real kube-apiserver: a task's tokens are bound
//! to its anchor Secret, and the apiserver itself stops authenticating them once
//! agentid deletes the anchor at the task's end (checked with TokenReviews).
#![cfg(feature = "e2e")]

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewStatus};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;
use support::*;

use agentid::api::{AgentIdentity, AgentTask, TaskPhase};
use agentid::core::conditions;
use agentid::core::task::{self as core_task, TaskError};

const TIMEOUT: Duration = Duration::from_secs(30);
/// The apiserver caches successful token reviews for 10 s: a revoked token fails within this.
const REVOKED_WITHIN: Duration = Duration::from_secs(20);
const TOOLS: &str = "https://tools.example.com";
const PAYMENTS: &str = "https://payments.example.com";

fn agent_yaml(name: &str) -> String {
    format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec:\n  owner: team-payments\n  audiences: ['{TOOLS}', '{PAYMENTS}']\n"
    )
}

fn task_yaml(name: &str, agent: &str, audiences: &[&str], ttl: &str) -> String {
    let audiences = audiences.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
    format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {{name: {name}}}\nspec:\n  agentRef: {{name: {agent}}}\n  purpose: triage issue 1234\n  audiences: [{audiences}]\n  ttl: {ttl}\n"
    )
}

struct Fixture {
    client: Client,
    ns: String,
    agents: Api<AgentIdentity>,
    tasks: Api<AgentTask>,
    secrets: Api<Secret>,
    sas: Api<ServiceAccount>,
    op: Option<Operator>,
}

fn fixture_for(client: Client, ns: String, op: Option<Operator>) -> Fixture {
    Fixture {
        agents: Api::namespaced(client.clone(), &ns),
        tasks: Api::namespaced(client.clone(), &ns),
        secrets: Api::namespaced(client.clone(), &ns),
        sas: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        op,
    }
}

async fn fixture(prefix: &str) -> Fixture {
    let env = env(prefix).await;
    let op = start_operator(&env.client, operator_config(&env.ns));
    fixture_for(env.client, env.ns, Some(op))
}

impl Fixture {
    async fn create_agent(&self, name: &str) {
        self.agents.create(&PostParams::default(), &from_yaml(&agent_yaml(name))).await.unwrap();
    }

    async fn create_task(&self, name: &str, agent: &str, audiences: &[&str]) {
        self.tasks.create(&PostParams::default(), &from_yaml(&task_yaml(name, agent, audiences, "1h"))).await.unwrap();
    }

    /// Waits until the task is in `phase` with `Ready` reason `reason`.
    async fn wait_phase(&self, name: &str, phase: TaskPhase, reason: &str) -> AgentTask {
        wait_until(TIMEOUT, &format!("task {name} {phase:?}/{reason}"), || async {
            let t = self.tasks.get(name).await.ok()?;
            let status = t.status.as_ref()?;
            let ready = conditions::get(&status.conditions, "Ready")?;
            (status.phase == Some(phase) && ready.reason == reason).then_some(t.clone())
        })
        .await
    }

    async fn anchor(&self, task: &str) -> Option<Secret> {
        self.secrets.get_opt(&format!("agentid-task-{task}")).await.unwrap()
    }

    async fn wait_anchor_gone(&self, task: &str) {
        wait_until(TIMEOUT, &format!("anchor of {task} gone"), || async {
            self.secrets.get_opt(&format!("agentid-task-{task}")).await.ok()?.is_none().then_some(())
        })
        .await;
    }

    /// Mints a token for the task the way a broker does: core::task::token_request, then the
    /// ServiceAccount's TokenRequest subresource.
    async fn mint(&self, task: &str) -> String {
        self.try_mint(task).await.unwrap()
    }

    async fn try_mint(&self, task: &str) -> Result<String, TaskError> {
        let task = self.tasks.get(task).await.unwrap();
        let agent = self.agents.get(&task.spec.agent_ref.name).await.unwrap();
        let anchor = self.anchor(task.metadata.name.as_deref().unwrap()).await.unwrap_or_default();
        let request = core_task::token_request(&task, &agent, &anchor, Timestamp::now())?;
        let minted = self
            .sas
            .create_token_request(&agent.service_account_name(), &PostParams::default(), &request)
            .await
            .unwrap();
        let status = minted.status.unwrap();
        // Never longer than the agent's tokenTTL (10m by default, also the apiserver's minimum).
        let lifetime = Timestamp::now().duration_until(status.expiration_timestamp.unwrap().0);
        assert!(lifetime <= SignedDuration::from_secs(600) && lifetime > SignedDuration::from_secs(590), "{lifetime}");
        Ok(status.token.expect("a minted token"))
    }

    async fn review(&self, token: &str, audiences: &[&str]) -> TokenReviewStatus {
        let review: TokenReview =
            serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}})).unwrap();
        let api: Api<TokenReview> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &review).await.unwrap().status.unwrap()
    }

    /// Waits until the token no longer authenticates because its bound object (the anchor) is gone.
    async fn wait_unauthenticated(&self, token: &str) {
        let review = wait_until(REVOKED_WITHIN, "TokenReview unauthenticated", || async {
            let review = self.review(token, &[TOOLS]).await;
            (review.authenticated != Some(true)).then_some(review)
        })
        .await;
        let error = review.error.unwrap_or_default();
        assert!(error.contains("invalidated"), "revoked through its bound object, not for another reason: {error}");
    }

    fn username(&self, agent: &str) -> String {
        format!("system:serviceaccount:{}:agent-{agent}", self.ns)
    }

    async fn set_suspended(&self, agent: &str, suspended: bool) {
        let patch = json!({"spec": {"suspended": suspended}});
        self.agents.patch(agent, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    }

    async fn patch_task_err(&self, name: &str, patch: serde_json::Value) -> String {
        match self.tasks.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => panic!("the apiserver accepted {patch}"),
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 422, "{s:?}");
                s.message
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }

    fn metrics(&self) -> String {
        self.op.as_ref().unwrap().metrics.encode()
    }
}

#[tokio::test]
async fn active_task_has_an_anchor_and_its_token_authenticates() {
    let f = fixture("task-active").await;
    f.create_agent("triage").await;
    f.create_task("fix-1234", "triage", &[TOOLS]).await;

    let task = f.wait_phase("fix-1234", TaskPhase::Active, "Active").await;
    let status = task.status.clone().unwrap();
    assert!(conditions::is_true(&status.conditions, "Ready"));
    assert_eq!(status.observed_generation, task.metadata.generation);
    assert_eq!(status.anchor.as_deref(), Some("agentid-task-fix-1234"));
    let issued = status.issued_at.unwrap().0;
    let expires = status.expires_at.unwrap().0;
    assert_eq!(issued.duration_until(expires), SignedDuration::from_hours(1));
    let age = issued.duration_until(Timestamp::now());
    assert!(age >= SignedDuration::ZERO && age < SignedDuration::from_secs(60), "issued {age} ago");

    // The anchor: no data, owned by the task, labelled.
    let anchor = f.anchor("fix-1234").await.expect("anchor Secret");
    assert_eq!(anchor.type_.as_deref(), Some("agentid.dev/task-anchor"));
    assert!(anchor.data.unwrap_or_default().is_empty(), "an anchor holds no data");
    assert_eq!(anchor.immutable, Some(true));
    let owner = &anchor.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("AgentTask", task.metadata.uid.as_deref().unwrap()));
    assert_eq!(owner.controller, Some(true));
    let labels = anchor.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["agentid.dev/agent"], "triage");
    assert_eq!(labels["agentid.dev/task"], "fix-1234");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "agentid");

    // A token minted for the task authenticates as the agent, for the task's audience only.
    let token = f.mint("fix-1234").await;
    let review = f.review(&token, &[TOOLS]).await;
    assert_eq!(review.authenticated, Some(true), "{review:?}");
    assert_eq!(review.user.unwrap().username.as_deref(), Some(f.username("triage").as_str()));
    let other = f.review(&token, &[PAYMENTS]).await;
    assert_ne!(other.authenticated, Some(true), "an audience of the agent that the task does not have: {other:?}");

    // The activation is recorded as an Event.
    let events: Api<Event> = Api::namespaced(f.client.clone(), &f.ns);
    wait_until(TIMEOUT, "TaskActivated Event", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("TaskActivated")).then_some(())
    })
    .await;
}

#[tokio::test]
async fn completing_the_task_revokes_its_tokens() {
    let f = fixture("task-complete").await;
    f.create_agent("triage").await;
    f.create_task("fix-1234", "triage", &[TOOLS]).await;
    f.wait_phase("fix-1234", TaskPhase::Active, "Active").await;
    let token = f.mint("fix-1234").await;
    assert_eq!(f.review(&token, &[TOOLS]).await.authenticated, Some(true));

    let patch = json!({"spec": {"completed": true}});
    f.tasks.patch("fix-1234", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let done = f.wait_phase("fix-1234", TaskPhase::Completed, "Completed").await;
    f.wait_anchor_gone("fix-1234").await;
    let status = done.status.unwrap();
    assert_eq!(status.anchor, None);
    assert!(status.issued_at.is_some(), "the record of the task stays");
    f.wait_unauthenticated(&token).await;

    // No new token, and no way back.
    assert!(matches!(f.try_mint("fix-1234").await, Err(TaskError::NotActive { .. })));
    let msg = f.patch_task_err("fix-1234", json!({"spec": {"completed": false}})).await;
    assert!(msg.contains("stays completed"), "{msg}");
    let metrics = f.metrics();
    assert!(metrics.contains(r#"agentid_task_revocations_total{reason="completed"} 1"#), "{metrics}");
}

#[tokio::test]
async fn suspending_the_agent_revokes_and_resuming_restores_with_a_new_anchor() {
    let f = fixture("task-suspend").await;
    f.create_agent("triage").await;
    f.create_task("fix-1234", "triage", &[TOOLS]).await;
    let active = f.wait_phase("fix-1234", TaskPhase::Active, "Active").await;
    let first_anchor = f.anchor("fix-1234").await.unwrap();
    let token = f.mint("fix-1234").await;
    assert_eq!(f.review(&token, &[TOOLS]).await.authenticated, Some(true));

    f.set_suspended("triage", true).await;
    let revoked = f.wait_phase("fix-1234", TaskPhase::Revoked, "AgentSuspended").await;
    assert_eq!(revoked.status.as_ref().unwrap().anchor, None);
    f.wait_anchor_gone("fix-1234").await;
    f.wait_unauthenticated(&token).await;

    // Resumed before expiry: Active again, with a new anchor and the same expiry; the old token stays revoked.
    f.set_suspended("triage", false).await;
    let resumed = f.wait_phase("fix-1234", TaskPhase::Active, "Active").await;
    let (before, after) = (active.status.unwrap(), resumed.status.unwrap());
    assert_eq!((before.issued_at, before.expires_at), (after.issued_at, after.expires_at));
    let second_anchor = f.anchor("fix-1234").await.unwrap();
    assert_ne!(first_anchor.metadata.uid, second_anchor.metadata.uid);
    assert_ne!(f.review(&token, &[TOOLS]).await.authenticated, Some(true), "the old token is bound to the old anchor");
    let fresh = f.mint("fix-1234").await;
    assert_eq!(f.review(&fresh, &[TOOLS]).await.authenticated, Some(true));
    assert!(f.metrics().contains(r#"agentid_task_revocations_total{reason="suspended"} 1"#));
}

#[tokio::test]
async fn deleting_the_task_removes_its_anchor() {
    let f = fixture("task-delete").await;
    f.create_agent("triage").await;
    f.create_task("fix-1234", "triage", &[TOOLS]).await;
    f.wait_phase("fix-1234", TaskPhase::Active, "Active").await;
    let token = f.mint("fix-1234").await;
    assert!(f.anchor("fix-1234").await.is_some());

    f.tasks.delete("fix-1234", &DeleteParams::default()).await.unwrap();
    wait_until(TIMEOUT, "task and its anchor gone", || async {
        let gone = f.tasks.get_opt("fix-1234").await.ok()?.is_none();
        (gone && f.secrets.get_opt("agentid-task-fix-1234").await.ok()?.is_none()).then_some(())
    })
    .await;
    f.wait_unauthenticated(&token).await;
    assert!(f.metrics().contains(r#"agentid_task_revocations_total{reason="deleted"} 1"#));
}

#[tokio::test]
async fn audience_the_agent_does_not_have_keeps_the_task_pending() {
    let f = fixture("task-audience").await;
    f.create_agent("triage").await;
    f.create_task("wide", "triage", &[TOOLS, "https://evil.example.com"]).await;

    let pending = f.wait_phase("wide", TaskPhase::Pending, "AudienceNotAllowed").await;
    let ready = conditions::get(&pending.status.as_ref().unwrap().conditions, "Ready").unwrap().clone();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains("https://evil.example.com"), "{}", ready.message);
    let status = pending.status.unwrap();
    assert_eq!((status.anchor, status.issued_at), (None, None));
    assert!(f.anchor("wide").await.is_none());
    assert!(matches!(f.try_mint("wide").await, Err(TaskError::NotActive { .. })));
}

#[tokio::test]
async fn foreign_secret_of_the_anchor_name_is_never_taken_over() {
    let f = fixture("task-conflict").await;
    let foreign: Secret =
        from_yaml("metadata: {name: agentid-task-fix-1234, labels: {team: platform}}\nstringData: {k: v}\n");
    let foreign = f.secrets.create(&PostParams::default(), &foreign).await.unwrap();
    f.create_agent("triage").await;
    f.create_task("fix-1234", "triage", &[TOOLS]).await;

    let pending = f.wait_phase("fix-1234", TaskPhase::Pending, "AnchorConflict").await;
    let ready = conditions::get(&pending.status.as_ref().unwrap().conditions, "Ready").unwrap().clone();
    assert!(ready.message.contains("agentid-task-fix-1234"), "{}", ready.message);
    let after = f.anchor("fix-1234").await.unwrap();
    assert_eq!(after.metadata.resource_version, foreign.metadata.resource_version, "foreign Secret was modified");

    // Deleting the task leaves the foreign Secret alone.
    f.tasks.delete("fix-1234", &DeleteParams::default()).await.unwrap();
    wait_until(TIMEOUT, "task gone", || async { f.tasks.get_opt("fix-1234").await.ok()?.is_none().then_some(()) })
        .await;
    assert!(f.anchor("fix-1234").await.is_some(), "foreign Secret was deleted");
}

#[tokio::test]
async fn apiserver_refuses_bad_ttls_and_repointing() {
    let env = env("task-validation").await;
    let f = fixture_for(env.client, env.ns, None);
    let create_err = |yaml: String| {
        let tasks = f.tasks.clone();
        async move {
            match tasks.create(&PostParams::default(), &from_yaml(&yaml)).await {
                Ok(_) => panic!("the apiserver accepted {yaml}"),
                Err(kube::Error::Api(s)) => {
                    assert_eq!(s.code, 422, "{s:?}");
                    s.message
                }
                Err(e) => panic!("unexpected error {e}"),
            }
        }
    };
    for ttl in ["5m", "13h", "soon"] {
        let msg = create_err(task_yaml("bad-ttl", "triage", &[TOOLS], ttl)).await;
        assert!(msg.contains("spec.ttl") && msg.contains("between 10m and 12h"), "{ttl}: {msg}");
    }
    let msg = create_err(task_yaml("no-aud", "triage", &[], "1h")).await;
    assert!(msg.contains("spec.audiences"), "{msg}");
    let msg = create_err(task_yaml("blank", "triage", &[TOOLS], "1h").replace("triage issue 1234", "'  '")).await;
    assert!(msg.contains("spec.purpose") && msg.contains("what the task is for"), "{msg}");

    f.tasks.create(&PostParams::default(), &from_yaml(&task_yaml("fix", "triage", &[TOOLS], "10m"))).await.unwrap();
    let msg = f.patch_task_err("fix", json!({"spec": {"agentRef": {"name": "someone-else"}}})).await;
    assert!(msg.contains("spec.agentRef") && msg.contains("agentRef is immutable"), "{msg}");
    let msg = f.patch_task_err("fix", json!({"spec": {"audiences": [TOOLS, PAYMENTS]}})).await;
    assert!(msg.contains("audiences is immutable"), "{msg}");
    let msg = f.patch_task_err("fix", json!({"spec": {"ttl": "12h"}})).await;
    assert!(msg.contains("ttl is immutable"), "{msg}");
    // The purpose may be edited; and completing is allowed.
    let patch = json!({"spec": {"purpose": "triage issue 1234 and 1235", "completed": true}});
    f.tasks.patch("fix", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

/// The operator, running as a user that holds nothing but the ClusterRole of config/rbac/role.yaml, can run
/// tasks (anchors created and deleted) and mint task tokens (TokenRequest).
#[tokio::test]
async fn operator_cluster_role_suffices_for_tasks() {
    let env = env("task-rbac").await;
    let admin = env.client.clone();
    let ns = env.ns.clone();
    with_shipped_cluster_role(&env, |operator_client| async move {
        let op = start_operator(&operator_client, operator_config(&ns));
        let f = fixture_for(admin, ns.clone(), Some(op));
        f.create_agent("triage").await;
        f.create_task("fix-1234", "triage", &[TOOLS]).await;
        f.wait_phase("fix-1234", TaskPhase::Active, "Active").await;
        // The operator's identity may mint the task token.
        let as_operator = fixture_for(operator_client, ns, None);
        let token = as_operator.mint("fix-1234").await;
        assert_eq!(f.review(&token, &[TOOLS]).await.authenticated, Some(true));
        f.tasks.delete("fix-1234", &DeleteParams::default()).await.unwrap();
        wait_until(TIMEOUT, "task and its anchor gone", || async {
            let gone = f.tasks.get_opt("fix-1234").await.ok()?.is_none();
            (gone && f.anchor("fix-1234").await.is_none()).then_some(())
        })
        .await;
        let metrics = f.metrics();
        assert!(!metrics.contains("api_forbidden"), "the operator was refused something:\n{metrics}");
    })
    .await;
}

/// Deleting the agent revokes its tasks: their anchors go, and with them every task token.
#[tokio::test]
async fn deleting_the_agent_revokes_its_tasks() {
    let f = fixture("task-agent-gone").await;
    f.create_agent("triage").await;
    f.create_task("fix", "triage", &[TOOLS]).await;
    f.wait_phase("fix", TaskPhase::Active, "Active").await;
    let token = f.mint("fix").await;
    f.agents.delete("triage", &kube::api::DeleteParams::default()).await.unwrap();
    f.wait_anchor_gone("fix").await;
    // Revoked twice over: its anchor and its ServiceAccount are both gone.
    wait_until(Duration::from_secs(20), "task token unauthenticated", || async {
        (f.review(&token, &[TOOLS]).await.authenticated != Some(true)).then_some(())
    })
    .await;
}
