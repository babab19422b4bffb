//! The tamper-evident audit trail through the real apiserver: a task token issued by the broker and the
//! decision point's answers land in the operator's trail, checkpoints are signed with the key the
//! operator keeps in its Secret and anchored as AuditCheckpoint objects, `agentid audit verify
//! --checkpoints cluster` finds the trail intact (and a modified record tampered), and `agentid audit
//! timeline` shows the agent's token and decisions.
#![cfg(feature = "e2e")]

mod support;

use std::process::Command;
use std::time::Duration;

use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use support::*;

use agentid::api::{AgentIdentity, AgentTask, AuditCheckpoint, GrantPhase, TaskPhase, ToolGrant};

const TOOLS: &str = "https://tools.example.com";

fn agentid(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agentid")).args(args).output().expect("run agentid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_decisions_are_in_a_verifiable_trail() {
    let env = env("audit").await;
    let dir = tempfile::tempdir().unwrap();
    let trail_dir = dir.path().join("trail");
    let hook = Webhook::start_with(&env.client, &env.ns, |args| {
        args.audit.audit_dir = Some(trail_dir.clone());
        args.audit.audit_checkpoint_every = 3;
        args.audit.audit_checkpoint_interval = "1s".into();
        args.audit.audit_segment_bytes = 64 << 20;
        args.audit.audit_key_secret = "agentid-audit-key".into();
    })
    .await;
    // The controllers record lifecycle changes (task started / completed, grant activated) in the same trail.
    let _op = start_operator_with_trail(&env.client, operator_config(&env.ns), hook.audit.clone());
    hook.label(&env.ns, None).await;
    let ns = env.ns.clone();
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &ns);
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &ns);
    agents
        .create(
            &PostParams::default(),
            &from_yaml(&format!(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: bot}}\nspec: {{owner: team-crm, audiences: [{TOOLS}]}}"
            )),
        )
        .await
        .unwrap();
    grants
        .create(
            &PostParams::default(),
            &from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: crm-read}\nspec: {agentRef: {name: bot}, tools: [{name: crm, actions: [read], destinations: ['https://crm.internal/api/'], maxDataSensitivity: internal}]}",
            ),
        )
        .await
        .unwrap();
    tasks
        .create(
            &PostParams::default(),
            &from_yaml(&format!(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {{name: t1}}\nspec: {{agentRef: {{name: bot}}, purpose: triage, audiences: [{TOOLS}], ttl: 15m}}"
            )),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "task and grant Active", || async {
        let t = tasks.get("t1").await.ok()?.status?.phase?;
        let g = grants.get("crm-read").await.ok()?.status?.phase?;
        (t == TaskPhase::Active && g == GrantPhase::Active).then_some(())
    })
    .await;

    let own = sa_token(&env.client, &ns, "agent-bot", "agentid").await;
    let (status, body) = hook.post(&format!("/v1/tasks/{ns}/t1/token"), Some(&own)).await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"].as_str().unwrap().to_string();
    let ask = |destination: &'static str| {
        let hook = &hook;
        let token = token.clone();
        async move {
            let body = json!({"action": {"name": "read"}, "resource": {"type": "tool", "id": "crm",
                "properties": {"destination": destination, "sensitivity": "internal"}}});
            let auth = format!("Bearer {token}");
            let (status, text) = hook
                .https(hook.pdp_addr, "POST", "/access/v1/evaluation", &[("Authorization", &auth)], &body.to_string())
                .await;
            assert_eq!(status, 200, "{text}");
            let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
            serde_json::from_str::<Value>(body).unwrap()
        }
    };
    wait_until(Duration::from_secs(30), "an allowed decision", || async {
        (ask("https://crm.internal/api/accounts/7").await["decision"] == true).then_some(())
    })
    .await;
    let denied = ask("https://crm.internal/admin/users").await;
    assert_eq!(denied["decision"], false, "{denied}");
    // The task ends: its completion is recorded by the task controller.
    let done = serde_json::json!({"spec": {"completed": true}});
    tasks.patch("t1", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&done)).await.unwrap();
    wait_until(Duration::from_secs(30), "task Completed", || async {
        (tasks.get("t1").await.ok()?.status?.phase? == TaskPhase::Completed).then_some(())
    })
    .await;

    // Checkpoints anchored in the cluster (every 3 records or every second).
    let checkpoints: Api<AuditCheckpoint> = Api::namespaced(env.client.clone(), &hook.operator_ns);
    wait_until(Duration::from_secs(30), "an AuditCheckpoint anchored", || async {
        (!checkpoints.list(&ListParams::default()).await.ok()?.items.is_empty()).then_some(())
    })
    .await;
    let trail = trail_dir.display().to_string();

    // Intact, against the cluster's checkpoints.
    let (code, out, err) =
        agentid(&["audit", "verify", "--checkpoints", "cluster", "--namespace", &hook.operator_ns, &trail]);
    assert_eq!(code, 0, "{out}\n{err}");

    // The agent's timeline: its task token and both decisions, never the token itself.
    // The agent is suspended: recorded by the identity controller.
    let suspend = serde_json::json!({"spec": {"suspended": true}});
    agents.patch("bot", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&suspend)).await.unwrap();

    // The controllers record without waiting: read the timeline until their records are in (a checkpoint
    // first flushes whatever is queued before it).
    let trail_handle = hook.audit.clone().expect("the trail is open");
    let (out, kinds) = wait_until(Duration::from_secs(20), "lifecycle records in the timeline", || async {
        trail_handle.checkpoint().await.ok()?;
        let (code, out, err) = agentid(&["audit", "timeline", "--agent", &format!("{ns}/bot"), "-o", "json", &trail]);
        assert_eq!(code, 0, "{err}");
        let kinds: Vec<String> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["kind"].as_str().map(str::to_string))
            .collect();
        ["task-started", "task-completed", "grant-activated", "agent-suspended"]
            .iter()
            .all(|lifecycle| kinds.iter().any(|k| k == lifecycle))
            .then_some((out, kinds))
    })
    .await;
    assert!(!out.contains(&token), "the token itself is in the trail");
    assert!(kinds.iter().any(|k| k.contains("token")), "{out}");
    assert!(kinds.iter().filter(|k| k.contains("decision")).count() >= 2, "{out}");
    assert!(out.contains("destination-not-granted"), "{out}");

    // A modified copy is detected against the same checkpoints.
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&trail_dir).unwrap() {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        let text = if f.extension().is_some_and(|x| x == "jsonl") {
            text.replacen("destination-not-granted", "allow-everything", 1)
        } else {
            text
        };
        std::fs::write(copy.join(f.file_name().unwrap()), text).unwrap();
    }
    let (code, out, err) = agentid(&[
        "audit",
        "verify",
        "--checkpoints",
        "cluster",
        "--namespace",
        &hook.operator_ns,
        &copy.display().to_string(),
    ]);
    assert_eq!(code, 1, "{out}\n{err}");
    hook.stop().await;
}
