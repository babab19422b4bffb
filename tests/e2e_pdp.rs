//! The decision point through the real apiserver: tokens from the real ServiceAccount issuer verified
//! locally, allow / deny with reasons / approval-required / limit-exceeded over AuthZEN and forward-auth,
//! revocation at the next decision, and no inheritance by a re-created agent.
#![cfg(feature = "e2e")]

mod support;

use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;

use agentid::api::{AgentIdentity, AgentTask, TaskPhase, ToolGrant};

const TOOLS: &str = "https://tools.example.com";

fn body_of(response: &str) -> Value {
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    serde_json::from_str(body).unwrap_or(Value::Null)
}

async fn ask(hook: &Webhook, token: &str, tool: &str, action: &str, destination: &str) -> Value {
    let body = json!({"subject": {"type": "agent"}, "action": {"name": action},
        "resource": {"type": "tool", "id": tool, "properties": {"destination": destination, "sensitivity": "internal"}}});
    let auth = format!("Bearer {token}");
    let (status, text) = hook
        .https(hook.pdp_addr, "POST", "/access/v1/evaluation", &[("Authorization", &auth)], &body.to_string())
        .await;
    assert_eq!(status, 200, "{text}");
    body_of(&text)
}

fn reason(v: &Value) -> &str {
    v["context"]["reasons"][0].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_are_decided_at_request_time() {
    let env = env("pdp").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, None).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &env.ns);
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &env.ns);
    let agent = |name: &str| -> AgentIdentity {
        from_yaml(&format!(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec: {{owner: team-crm, audiences: [{TOOLS}]}}"
        ))
    };
    agents.create(&PostParams::default(), &agent("bot")).await.unwrap();
    let grant: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: crm-read}\nspec:
  agentRef: {name: bot}
  tools:
  - {name: crm, actions: [read], destinations: ['https://crm.internal/api/'], maxDataSensitivity: internal}
  - {name: payments, actions: [refund], destinations: ['https://pay.internal/'], maxDataSensitivity: internal, risk: high}
  limits: {maxCallsPerSession: 5}",
    );
    grants.create(&PostParams::default(), &grant).await.unwrap();
    let search: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: search-any}\nspec:
  agentRef: {name: bot}
  tools:
  - {name: search, actions: [query], destinations: ['https://search.internal/'], maxDataSensitivity: internal}",
    );
    grants.create(&PostParams::default(), &search).await.unwrap();
    let task: AgentTask = from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {{name: t1}}\nspec: {{agentRef: {{name: bot}}, purpose: triage, audiences: [{TOOLS}], ttl: 15m}}"
    ));
    tasks.create(&PostParams::default(), &task).await.unwrap();
    wait_until(Duration::from_secs(30), "task Active and grant Active", || async {
        let t = tasks.get("t1").await.ok()?.status?.phase?;
        let g = grants.get("crm-read").await.ok()?.status?.phase?;
        (t == TaskPhase::Active && g == agentid::api::GrantPhase::Active).then_some(())
    })
    .await;

    // The agent fetches its task token from the broker, as it would in its pod.
    let own = sa_token(&env.client, &env.ns, "agent-bot", "agentid").await;
    let (status, body) = hook.post(&format!("/v1/tasks/{}/t1/token", env.ns), Some(&own)).await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"].as_str().unwrap().to_string();

    // Allowed, once the decision point has its state.
    let v = wait_until(Duration::from_secs(30), "decision point ready", || async {
        let v = ask(&hook, &token, "crm", "read", "https://crm.internal/api/accounts/7").await;
        (reason(&v) != "not-ready").then_some(v)
    })
    .await;
    assert_eq!(v["decision"], true, "{v}");
    assert_eq!(v["context"]["grant"], "crm-read");
    // Denied, with the reason and the closest grant.
    let v = ask(&hook, &token, "crm", "read", "https://crm.internal/admin/users").await;
    assert_eq!((v["decision"].as_bool(), reason(&v)), (Some(false), "destination-not-granted"), "{v}");
    assert!(v["context"]["reason_admin"]["en"].as_str().unwrap().contains("crm-read"), "{v}");
    let v = ask(&hook, &token, "crm", "delete", "https://crm.internal/api/accounts/7").await;
    assert_eq!(reason(&v), "action-not-granted", "{v}");
    let v = ask(&hook, &token, "github", "read", "https://api.github.com/").await;
    assert_eq!(reason(&v), "no-grant-for-tool", "{v}");
    // A high-risk tool needs approval.
    let v = ask(&hook, &token, "payments", "refund", "https://pay.internal/refunds").await;
    assert_eq!(v["context"]["decision"], "approval-required", "{v}");
    // Garbage, a token for another audience, or a token of no agent: unauthenticated.
    assert_eq!(reason(&ask(&hook, "garbage", "crm", "read", "https://crm.internal/api/").await), "unauthenticated");
    assert_eq!(
        reason(&ask(&hook, &own, "crm", "read", "https://crm.internal/api/").await),
        "unauthenticated",
        "broker audience"
    );
    // The agent's own token for the decision point's audience works too (no task: no session limit applies).
    let pdp_token = sa_token(&env.client, &env.ns, "agent-bot", "agentid-pdp").await;
    assert_eq!(ask(&hook, &pdp_token, "search", "query", "https://search.internal/q").await["decision"], true);

    // crm-read allows 5 calls per session (task); one was allowed above. Without a task it cannot count.
    assert_eq!(reason(&ask(&hook, &pdp_token, "crm", "read", "https://crm.internal/api/x").await), "task-required");
    let mut outcomes = Vec::new();
    for _ in 0..6 {
        outcomes.push(reason(&ask(&hook, &token, "crm", "read", "https://crm.internal/api/x").await).to_string());
    }
    assert_eq!(outcomes.iter().filter(|r| r.is_empty()).count(), 4, "{outcomes:?}");
    assert_eq!(outcomes.last().unwrap(), "limit-exceeded", "{outcomes:?}");
    let usage = tasks.get("t1").await.unwrap().status.unwrap().usage;
    assert_eq!(agentid::core::pdp::budget::claimed(&usage, "grant/crm-read"), 5, "{usage:?}");

    // Completing the task: the next decision is a deny, well within a second of the watch event.
    let patch = json!({"spec": {"completed": true}});
    tasks.patch("t1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let started = Instant::now();
    let v = wait_until(Duration::from_secs(5), "task token refused", || async {
        let v = ask(&hook, &token, "crm", "read", "https://crm.internal/api/accounts/7").await;
        (v["decision"] == false).then_some(v)
    })
    .await;
    let took = started.elapsed();
    assert!(matches!(reason(&v), "task-not-active" | "unauthenticated"), "{v}");
    assert!(took < Duration::from_secs(1), "revoked after {took:?}");

    // A re-created agent does not inherit the old agent's tokens.
    let old = sa_token(&env.client, &env.ns, "agent-bot", "agentid-pdp").await;
    assert_eq!(ask(&hook, &old, "search", "query", "https://search.internal/q").await["decision"], true);
    agents.delete("bot", &DeleteParams::default()).await.unwrap();
    wait_until(Duration::from_secs(30), "agent gone", || async {
        agents.get_opt("bot").await.unwrap().is_none().then_some(())
    })
    .await;
    agents.create(&PostParams::default(), &agent("bot")).await.unwrap();
    wait_until(Duration::from_secs(30), "agent back", || async {
        agents.get("bot").await.ok()?.service_account_in_place().then_some(())
    })
    .await;
    let v = ask(&hook, &old, "search", "query", "https://search.internal/q").await;
    assert_eq!(reason(&v), "unauthenticated", "{v}");
    let fresh = sa_token(&env.client, &env.ns, "agent-bot", "agentid-pdp").await;
    let v = wait_until(Duration::from_secs(10), "new token accepted", || async {
        let v = ask(&hook, &fresh, "search", "query", "https://search.internal/q").await;
        (v["decision"] == true).then_some(v)
    })
    .await;
    assert_eq!(v["context"]["grant"], "search-any");

    // Forward-auth, as nginx's auth_request asks.
    let auth = format!("Bearer {fresh}");
    let fa = |uri: &'static str, host: &'static str| {
        let auth = auth.clone();
        let hook = &hook;
        async move {
            hook.https(
                hook.pdp_addr,
                "GET",
                "/forward-auth",
                &[
                    ("Authorization", auth.as_str()),
                    ("X-Original-URI", uri),
                    ("X-Original-Method", "GET"),
                    ("X-Forwarded-Host", host),
                    ("X-Agentid-Tool", "search"),
                    ("X-Agentid-Action", "query"),
                ],
                "",
            )
            .await
        }
    };
    let (status, text) = fa("/q?term=x", "search.internal").await;
    assert_eq!(status, 200, "{text}");
    assert!(text.to_ascii_lowercase().contains("x-agentid-decision-id:"), "{text}");
    let (status, text) = fa("/q", "search.internal.evil.example").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("x-agentid-reason: destination-not-granted"), "{text}");
    hook.stop().await;
}
