//! Task tokens over HTTPS: an agent authenticates with its own ServiceAccount
//! token and gets a token bound to its task's anchor, which dies with the task.
#![cfg(feature = "e2e")]

mod support;

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use support::*;

use agentid::api::{AgentIdentity, AgentTask, TaskPhase};

/// What a pod's projected token for the broker would be: a token of `sa` for audience `agentid`.
async fn caller_token(client: &Client, ns: &str, sa: &str) -> String {
    let tr = TokenRequest {
        metadata: Default::default(),
        spec: Some(TokenRequestSpec {
            audiences: Some(vec!["agentid".into()]),
            expiration_seconds: Some(600),
            bound_object_ref: None,
        }),
        status: None,
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    api.create_token_request(sa, &PostParams::default(), &tr).await.unwrap().status.unwrap().token.unwrap()
}

async fn review(client: &Client, token: &str, audience: &str) -> (bool, Option<String>) {
    let tr = TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec { token: token.into(), audiences: Some(vec![audience.into()]) },
        status: None,
    };
    let s = Api::<TokenReview>::all(client.clone()).create(&PostParams::default(), &tr).await.unwrap().status.unwrap();
    (s.authenticated == Some(true), s.user.and_then(|u| u.username))
}

async fn agent(api: &Api<AgentIdentity>, name: &str) {
    let a: AgentIdentity = from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec: {{owner: team, audiences: [https://tools.example.com]}}"
    ));
    api.create(&PostParams::default(), &a).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tasks_agent_gets_a_token_over_https_that_dies_with_the_task() {
    let env = env("tokens").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &env.ns);
    agent(&agents, "bot").await;
    agent(&agents, "other").await;
    let task: AgentTask = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {name: triage-42}\nspec: {agentRef: {name: bot}, purpose: triage ticket 42, audiences: [https://tools.example.com], ttl: 15m}",
    );
    tasks.create(&PostParams::default(), &task).await.unwrap();
    wait_until(Duration::from_secs(30), "task Active", || async {
        (tasks.get("triage-42").await.ok()?.status?.phase? == TaskPhase::Active).then_some(())
    })
    .await;
    let path = format!("/v1/tasks/{}/triage-42/token", env.ns);

    // Anonymous and garbage callers: 401.
    assert_eq!(hook.post(&path, None).await.0, 401);
    assert_eq!(hook.post(&path, Some("not-a-token")).await.0, 401);
    // Another agent: 403 (its ServiceAccount is made by its own reconcile, which may still be running).
    let sas: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.ns);
    wait_until(Duration::from_secs(30), "agent-other's ServiceAccount", || async {
        sas.get_opt("agent-other").await.ok()?.map(|_| ())
    })
    .await;
    let other = caller_token(&env.client, &env.ns, "agent-other").await;
    let (status, body) = hook.post(&path, Some(&other)).await;
    assert_eq!(status, 403, "{body}");
    // A caller from another namespace gets the same answer whether or not the task exists (no oracle).
    let elsewhere = namespace(&env.client, "tokens-elsewhere").await;
    let sa: ServiceAccount = from_yaml("metadata: {name: prober}");
    Api::<ServiceAccount>::namespaced(env.client.clone(), &elsewhere)
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let prober = caller_token(&env.client, &elsewhere, "prober").await;
    let (s1, b1) = hook.post(&path, Some(&prober)).await;
    let (s2, b2) = hook.post(&format!("/v1/tasks/{}/no-such-task/token", env.ns), Some(&prober)).await;
    assert_eq!((s1, s2), (403, 403), "{b1} {b2}");
    assert_eq!(b1.replace("triage-42", "T"), b2.replace("no-such-task", "T"), "identical refusals");
    assert!(!b1.contains("bot"), "the owning agent is not named to strangers: {b1}");
    // The task's own agent: a token.
    let mine = caller_token(&env.client, &env.ns, "agent-bot").await;
    // A task name that is no object name never reaches an apiserver URL.
    let (status, body) = hook.post(&format!("/v1/tasks/{}/tx%3FdryRun%3DAll/token", env.ns), Some(&mine)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = hook.post(&path, Some(&mine)).await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let token = v["token"].as_str().unwrap().to_string();
    assert_eq!(v["audiences"][0], "https://tools.example.com");

    let (ok, user) = review(&env.client, &token, "https://tools.example.com").await;
    assert!(ok, "the task token authenticates for the task's audience");
    assert_eq!(user.as_deref(), Some(format!("system:serviceaccount:{}:agent-bot", env.ns).as_str()));
    assert!(!review(&env.client, &token, "https://elsewhere.example.com").await.0, "and for no other audience");
    assert!(hook.metrics.encode().contains("agentid_task_tokens_issued_total 1"));
    // The task's status never carries the token.
    let stored = serde_json::to_string(&tasks.get("triage-42").await.unwrap()).unwrap();
    assert!(!stored.contains(&token));

    // Task ends: the anchor goes, and with it every token of the task (allowing for the apiserver's 10 s cache).
    let patch = serde_json::json!({"spec": {"completed": true}});
    tasks.patch("triage-42", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    // The bound: unauthenticated within 15 s of the task's end (the apiserver caches successes for 10 s).
    wait_until(Duration::from_secs(15), "token revoked", || async {
        (!review(&env.client, &token, "https://tools.example.com").await.0).then_some(())
    })
    .await;
    let (status, body) = hook.post(&path, Some(&mine)).await;
    assert_eq!(status, 409, "no tokens for a completed task: {body}");
    hook.stop().await;
}
