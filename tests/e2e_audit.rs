//! The tamper-evident audit trail through the real apiserver: a task token issued by the broker and the
//! decision point's answers land in the operator's trail, checkpoints are signed with the key the
//! operator keeps in its Secret and anchored as AuditCheckpoint objects, `agentid audit verify
//! --checkpoints cluster` finds the trail intact (and a modified record tampered), and `agentid audit
//! timeline` shows the agent's token and decisions.
#![cfg(feature = "e2e")]

mod support;

use std::path::PathBuf;
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
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: crm-read}\nspec: {agentRef: {name: bot}, tools: [{name: crm, actions: [read], destinations: ['https://crm.internal/api/'], maxDataSensitivity: internal}, {name: crm-admin, actions: [purge], destinations: ['https://crm.internal/admin/'], maxDataSensitivity: internal, risk: high}]}",
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
    // A high-risk tool: the decision point asks for a human's approval (step-up), recorded as such.
    let body = json!({"action": {"name": "purge"}, "resource": {"type": "tool", "id": "crm-admin",
        "properties": {"destination": "https://crm.internal/admin/cache", "sensitivity": "internal"}}});
    let auth = format!("Bearer {token}");
    let (status, text) = hook
        .https(hook.pdp_addr, "POST", "/access/v1/evaluation", &[("Authorization", &auth)], &body.to_string())
        .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("approval-required"), "{text}");
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
    assert!(
        out.lines().any(|l| l.contains("\"decision\":\"approval-required\"") && l.contains("crm-admin")),
        "the approval request is in the timeline: {out}"
    );

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

/// A certificate for the audit sink's listener, signed by the local control plane's CA (which the
/// apiserver's audit webhook kubeconfig trusts), naming 127.0.0.1 and the Service name the operator's
/// self-check uses.
fn sink_certificate(cluster: &std::path::Path, dir: &std::path::Path, service_name: &str) -> (PathBuf, PathBuf) {
    let (crt, key) = (dir.join("sink.crt"), dir.join("sink.key"));
    let ext = dir.join("sink.ext");
    std::fs::write(
        &ext,
        format!(
            "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost,DNS:{service_name}\n"
        ),
    )
    .unwrap();
    let csr = dir.join("sink.csr");
    let ok = |c: &mut Command| assert!(c.status().unwrap().success(), "{c:?}");
    ok(Command::new("openssl")
        .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=agentid-audit-sink", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stderr(std::process::Stdio::null()));
    ok(Command::new("openssl")
        .args(["x509", "-req", "-days", "1", "-CAcreateserial", "-in"])
        .arg(&csr)
        .arg("-CA")
        .arg(cluster.join("pki/ca.crt"))
        .arg("-CAkey")
        .arg(cluster.join("pki/ca.key"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(&crt)
        .stderr(std::process::Stdio::null()));
    (crt, key)
}

/// A kube client that authenticates with `token` only (the cluster's address and CA from KUBECONFIG).
async fn client_with_token(token: &str) -> kube::Client {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let admin = Kubeconfig::read().unwrap();
    let cluster = admin.clusters[0].cluster.clone().unwrap();
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: '{}', certificate-authority: '{}'}}}}]\nusers: [{{name: u, user: {{token: '{token}'}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n",
        cluster.server.unwrap(),
        cluster.certificate_authority.unwrap(),
    );
    let config =
        kube::Config::from_custom_kubeconfig(Kubeconfig::from_yaml(&yaml).unwrap(), &KubeConfigOptions::default())
            .await
            .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// The apiserver's audit webhook backend (configured by e2e/cluster.sh) sends agentid the agent's own API
/// calls: a Secret read with the task token shows up in the agent's timeline, joined to the task by the
/// token's credential id, next to the token's issue; a read the grant does not allow shows up refused;
/// the Secret's value is nowhere in the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_secret_read_is_in_its_timeline() {
    use k8s_openapi::api::core::v1::Secret;
    let cluster = PathBuf::from(std::env::var("AGENTID_CLUSTER_DIR").expect(
        "AGENTID_CLUSTER_DIR: the local control plane of e2e/cluster.sh (its apiserver sends audit events to a port it fixed)",
    ));
    let port: u16 = std::fs::read_to_string(cluster.join("pki/audit-sink-port"))
        .expect("pki/audit-sink-port: restart the control plane with the current e2e/cluster.sh")
        .trim()
        .parse()
        .unwrap();
    let env = env("apicalls").await;
    let dir = tempfile::tempdir().unwrap();
    let trail_dir = dir.path().join("trail");
    let certs = dir.path().to_path_buf();
    let hook = Webhook::start_with(&env.client, &env.ns, |args| {
        let (crt, key) = sink_certificate(&cluster, &certs, &format!("agentid.{}.svc", args.operator_namespace));
        args.webhook_service = "agentid".into();
        args.webhook_addr = format!("127.0.0.1:{port}").parse().unwrap();
        args.webhook_url = Some(format!("https://127.0.0.1:{port}"));
        args.tls_cert_file = Some(crt);
        args.tls_key_file = Some(key);
        args.ca_bundle_file = Some(cluster.join("pki/ca.crt"));
        args.audit.audit_dir = Some(trail_dir.clone());
        args.audit.audit_apiserver_events = true;
        args.audit.audit_checkpoint_every = 1000;
        args.audit.audit_checkpoint_interval = "1s".into();
        args.audit.audit_segment_bytes = 64 << 20;
        args.audit.audit_key_secret = "agentid-audit-key".into();
    })
    .await;
    assert_eq!(hook.webhook_addr.port(), port, "the audit sink must listen where the apiserver sends");
    let _op = start_operator_with_trail(&env.client, operator_config(&env.ns), hook.audit.clone());
    hook.label(&env.ns, None).await;
    let ns = env.ns.clone();
    const API: &str = "https://kubernetes.default.svc";
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &ns);
    let value = "s3cr3t-value-never-in-the-trail";
    for name in ["db-creds", "other-creds"] {
        let s: Secret = from_yaml(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}}}\nstringData: {{password: {value}}}"
        ));
        secrets.create(&PostParams::default(), &s).await.unwrap();
    }
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &ns);
    agents
        .create(
            &PostParams::default(),
            &from_yaml(&format!(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: reader}}\nspec: {{owner: team-db, audiences: [{API}]}}"
            )),
        )
        .await
        .unwrap();
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &ns);
    grants
        .create(
            &PostParams::default(),
            &from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: read-db}\nspec: {agentRef: {name: reader}, kubernetesRules: [{apiGroups: [''], resources: [secrets], resourceNames: [db-creds], verbs: [get, list]}]}",
            ),
        )
        .await
        .unwrap();
    // A grant the agent never uses: the report says so.
    grants
        .create(
            &PostParams::default(),
            &from_yaml(
                "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: pager}\nspec: {agentRef: {name: reader}, tools: [{name: pagerduty, actions: [page], destinations: ['https://pager.internal/'], maxDataSensitivity: internal}]}",
            ),
        )
        .await
        .unwrap();
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &ns);
    tasks
        .create(
            &PostParams::default(),
            &from_yaml(&format!(
                "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {{name: rotate}}\nspec: {{agentRef: {{name: reader}}, purpose: rotate db password, audiences: [{API}], ttl: 15m}}"
            )),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "task and grant Active", || async {
        let t = tasks.get("rotate").await.ok()?.status?.phase?;
        let g = grants.get("read-db").await.ok()?.status?.phase?;
        (t == TaskPhase::Active && g == GrantPhase::Active).then_some(())
    })
    .await;
    let own = sa_token(&env.client, &ns, "agent-reader", "agentid").await;
    let ca = std::fs::read(cluster.join("pki/ca.crt")).unwrap();
    let auth = format!("Bearer {own}");
    let (status, text) =
        https_request(&ca, hook.addr, "POST", &format!("/v1/tasks/{ns}/rotate/token"), &[("Authorization", &auth)], "")
            .await;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    assert_eq!(status, 200, "{text}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"].as_str().unwrap().to_string();

    // The agent reads the Secret its grant names (the RoleBinding may take a moment), and one it does not.
    let as_agent: Api<Secret> = Api::namespaced(client_with_token(&token).await, &ns);
    wait_until(Duration::from_secs(20), "the granted Secret readable with the task token", || async {
        as_agent.get("db-creds").await.ok().map(|_| ())
    })
    .await;
    let refused = as_agent.get("other-creds").await.unwrap_err();
    assert!(matches!(&refused, kube::Error::Api(s) if s.code == 403), "{refused:?}");

    let trail = trail_dir.display().to_string();
    let trail_handle = hook.audit.clone().expect("the trail is open");
    let lines = wait_until(Duration::from_secs(30), "the Secret reads in the task's timeline", || async {
        trail_handle.checkpoint().await.ok()?;
        let (code, out, err) = agentid(&[
            "audit",
            "timeline",
            "--agent",
            &format!("{ns}/reader"),
            "--task",
            "rotate",
            "-o",
            "json",
            &trail,
        ]);
        assert_eq!(code, 0, "{err}");
        let records: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let read = |name: &str, decision: &str| {
            records.iter().any(|r| {
                r["kind"] == "api-call"
                    && r["action"] == "get"
                    && r["decision"] == decision
                    && r["destination"] == format!("/api/v1/namespaces/{ns}/secrets/{name}")
            })
        };
        (read("db-creds", "allow") && read("other-creds", "deny")).then_some(records)
    })
    .await;
    let issued =
        lines.iter().find(|r| r["kind"] == "task-token-issued").expect("the token's issue is in the task's timeline");
    let granted = lines.iter().find(|r| r["kind"] == "api-call" && r["decision"] == "allow").unwrap();
    assert!(granted["credential"].as_str().unwrap().starts_with("JTI="), "{granted}");
    assert_eq!(granted["credential"], issued["credential"], "joined by the token's credential id");
    assert_eq!(granted["grant"], "read-db", "the grant whose RoleBinding allowed it: {granted}");
    assert_eq!(granted["actor"], format!("spiffe://cluster.local/ns/{ns}/agent/reader"));

    // The text timeline names the Secret; neither the value nor the token is anywhere in the trail.
    let (_, text, _) = agentid(&["audit", "timeline", "--agent", &format!("{ns}/reader"), &trail]);
    assert!(text.lines().any(|l| l.contains("api-call") && l.contains("secrets/db-creds")), "{text}");
    for f in std::fs::read_dir(&trail_dir).unwrap() {
        let body = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!body.contains(value) && !body.contains(&token), "a secret value or the token in the trail");
    }
    let (code, out, err) = agentid(&["audit", "verify", &trail]);
    assert_eq!(code, 0, "{out}\n{err}");

    // The least-privilege report, from this trail and the cluster: the unused grant is reported, and the
    // used one narrowed to what the agent did (get, on db-creds; never list).
    let (code, out, err) = agentid(&["report", "--namespace", &ns, "-o", "json", &trail]);
    assert_eq!(code, 0, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let agent = report["agents"].as_array().unwrap().iter().find(|a| a["name"] == "reader").expect("the agent");
    let finding = |kind: &str, subject: &str| {
        agent["findings"].as_array().unwrap().iter().any(|f| f["kind"] == kind && f["subject"] == subject)
    };
    assert!(finding("unused-grant", "grant/pager"), "{agent:#}");
    assert!(finding("unused-rbac", "grant/read-db"), "list was never used: {agent:#}");
    let read_db = agent["grants"].as_array().unwrap().iter().find(|g| g["name"] == "read-db").unwrap();
    assert_eq!(read_db["used"], json!(["core/secrets:get"]), "{read_db:#}");
    let rule = &read_db["suggested"]["kubernetesRules"][0];
    assert_eq!((&rule["verbs"], &rule["resourceNames"]), (&json!(["get"]), &json!(["db-creds"])), "{read_db:#}");
    assert!(agent["api_calls"].as_u64().unwrap() >= 2, "{agent:#}");
    hook.stop().await;
}
