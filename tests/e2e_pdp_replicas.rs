//! Two real operator processes serve the decision point; one task's `maxToolCalls` holds across both:
//! each replica spends only slices of the limit it claimed in the AgentTask's status, so the task gets
//! exactly its limit of calls (the stated bound: no overshoot) however the calls are spread.
#![cfg(feature = "e2e")]

mod support;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::*;

use agentid::api::{AgentIdentity, AgentTask, GrantPhase, TaskPhase, ToolGrant};

struct Replica {
    _child: Killed,
    pdp: std::net::SocketAddr,
    broker: std::net::SocketAddr,
}

fn spawn(name: &str, ns: &str) -> Replica {
    let (probe, webhook, broker, pdp) = (free_port(), free_port(), free_port(), free_port());
    let log = std::fs::File::create(std::env::temp_dir().join(format!("agentid-pdp-{ns}-{name}.log"))).unwrap();
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["run", "--watch-namespace", ns, "--operator-namespace", ns, "--instance", name])
        .args(["--no-webhook-registration", "--allow-unchecked-grants", "--webhook-configuration", "pdp-replicas"])
        .args(["--probe-addr", &addr(probe), "--webhook-addr", &addr(webhook)])
        .args(["--broker-addr", &addr(broker), "--pdp-addr", &addr(pdp)])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start agentid");
    Replica { _child: Killed(child), pdp: addr(pdp).parse().unwrap(), broker: addr(broker).parse().unwrap() }
}

const LIMIT: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_enforce_one_max_tool_calls() {
    let env = env("pdp-replicas").await;
    let replicas = [spawn("replica-a", &env.ns), spawn("replica-b", &env.ns)];
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &env.ns);
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &env.ns);
    let agent: AgentIdentity = from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: bot}}\nspec: {{owner: team, audiences: [https://tools.example.com], sessionLimits: {{maxToolCalls: {LIMIT}}}}}"
    ));
    agents.create(&PostParams::default(), &agent).await.unwrap();
    let grant: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: search}\nspec: {agentRef: {name: bot}, tools: [{name: search, actions: [query], destinations: ['https://search.internal/'], maxDataSensitivity: internal}]}",
    );
    grants.create(&PostParams::default(), &grant).await.unwrap();
    let task: AgentTask = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {name: t1}\nspec: {agentRef: {name: bot}, purpose: p, audiences: [https://tools.example.com], ttl: 15m}",
    );
    tasks.create(&PostParams::default(), &task).await.unwrap();
    wait_until(Duration::from_secs(60), "task and grant Active (the leader reconciles)", || async {
        let t = tasks.get("t1").await.ok()?.status?.phase?;
        let g = grants.get("search").await.ok()?.status?.phase?;
        (t == TaskPhase::Active && g == GrantPhase::Active).then_some(())
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let ca = wait_until(Duration::from_secs(30), "serving certificate", || async {
        Some(secrets.get_opt("pdp-replicas-webhook-tls").await.ok()??.data?.get("ca.crt")?.0.clone())
    })
    .await;
    let ca = Arc::new(ca);

    let own = sa_token(&env.client, &env.ns, "agent-bot", "agentid").await;
    let auth = format!("Bearer {own}");
    let path = format!("/v1/tasks/{}/t1/token", env.ns);
    let token = wait_until(Duration::from_secs(30), "task token", || async {
        let (status, text) =
            https_request(&ca, replicas[0].broker, "POST", &path, &[("Authorization", &auth)], "").await;
        (status == 200).then(|| {
            let body = text.split_once("\r\n\r\n").unwrap().1;
            serde_json::from_str::<Value>(body).unwrap()["token"].as_str().unwrap().to_string()
        })
    })
    .await;
    let auth = Arc::new(format!("Bearer {token}"));
    let question = json!({"action": {"name": "query"},
        "resource": {"type": "tool", "id": "search", "properties": {"destination": "https://search.internal/q"}}})
    .to_string();
    let ask_raw = |pdp: std::net::SocketAddr| {
        let (ca, auth, question) = (ca.clone(), auth.clone(), question.clone());
        async move { https_request(&ca, pdp, "POST", "/access/v1/evaluation", &[("Authorization", &auth)], &question).await }
    };
    let ask = |pdp: std::net::SocketAddr| {
        let call = ask_raw(pdp);
        async move {
            let (status, text) = call.await;
            assert_eq!(status, 200, "{text}");
            serde_json::from_str::<Value>(text.split_once("\r\n\r\n").unwrap().1).unwrap()
        }
    };
    // Both replicas have their state. A replica that does not lead starts listening only once it has
    // read the serving certificate the leader wrote, so its port may refuse connections for a while.
    for r in &replicas {
        wait_until(Duration::from_secs(30), "decision point ready", || async {
            let (status, text) = ask_raw(r.pdp).await;
            let v: Value = serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()?;
            (status == 200 && v["context"]["reasons"][0] != "not-ready").then_some(())
        })
        .await;
    }
    // The two probes above were allowed calls. Hammer both replicas, 8 calls at a time.
    let mut reasons = Vec::new();
    for round in 0..25 {
        let calls: Vec<_> = (0..8).map(|i| tokio::spawn(ask(replicas[(round + i) % 2].pdp))).collect();
        for c in calls {
            let v = c.await.unwrap();
            reasons.push(v["context"]["reasons"][0].as_str().unwrap_or("").to_string());
        }
    }
    let allowed = 2 + reasons.iter().filter(|r| r.is_empty()).count();
    let refused: Vec<&String> = reasons.iter().filter(|r| !r.is_empty()).collect();
    assert!(refused.iter().all(|r| *r == "limit-exceeded"), "{:?}", &refused[..refused.len().min(5)]);
    assert_eq!(allowed, LIMIT, "both replicas together allow exactly maxToolCalls (no overshoot, and none stranded)");
    let usage = tasks.get("t1").await.unwrap().status.unwrap().usage;
    assert_eq!(agentid::core::pdp::budget::claimed(&usage, "task"), LIMIT as u64, "{usage:?}");
    assert_eq!(usage.len(), 2, "both replicas claimed slices: {usage:?}");
    eprintln!("claims: {usage:?}");
}
