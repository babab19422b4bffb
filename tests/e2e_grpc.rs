//! Envoy ext_authz v3 over gRPC, driven by a real client (grpcurl, built from its Go module by
//! e2e/tools/build.sh) with a token the real apiserver issued.
#![cfg(feature = "e2e")]

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::*;

use agentid::api::{AgentIdentity, GrantPhase, ToolGrant};

/// Where the envoy-types crate keeps the .proto files grpcurl needs (there is no reflection).
fn proto_dir() -> std::path::PathBuf {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    let v: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let manifest = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "envoy-types")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("envoy-types among the dependencies");
    std::path::Path::new(manifest).parent().unwrap().join("proto")
}

fn check(ca: &std::path::Path, addr: std::net::SocketAddr, request: &Value) -> Value {
    let p = proto_dir();
    let mut args = vec!["-cacert".to_string(), ca.display().to_string()];
    for dir in ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"] {
        args.extend(["-import-path".to_string(), p.join(dir).display().to_string()]);
    }
    args.extend(["-proto", "envoy/service/auth/v3/external_auth.proto", "-d", "@"].map(String::from));
    args.push(format!("localhost:{}", addr.port()));
    args.push("envoy.service.auth.v3.Authorization/Check".into());
    let mut child = Command::new("grpcurl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl on PATH (make test builds it into .cache/bin)");
    child.stdin.take().unwrap().write_all(request.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "grpcurl: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn request(token: &str, tool: &str, path: &str) -> Value {
    json!({"attributes": {"contextExtensions": {"tool": tool, "action": "get", "sensitivity": "internal"},
        "request": {"http": {"method": "GET", "scheme": "https", "host": "search.internal", "path": path,
            "headers": {"authorization": format!("Bearer {token}")}}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_ext_authz_over_grpc() {
    let env = env("grpc").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &env.ns);
    let agent: AgentIdentity = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot}\nspec: {owner: team, audiences: [https://tools.example.com]}",
    );
    agents.create(&PostParams::default(), &agent).await.unwrap();
    let grant: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: search}\nspec: {agentRef: {name: bot}, tools: [{name: search, actions: [get], destinations: ['https://search.internal/api/'], maxDataSensitivity: internal}]}",
    );
    grants.create(&PostParams::default(), &grant).await.unwrap();
    wait_until(Duration::from_secs(30), "grant Active", || async {
        (grants.get("search").await.ok()?.status?.phase? == GrantPhase::Active).then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, hook.ca_pem().await).unwrap();
    let token = sa_token(&env.client, &env.ns, "agent-bot", "agentid-pdp").await;
    let code = |v: &Value| v["status"]["code"].as_i64().unwrap_or(0);

    let v = wait_until(Duration::from_secs(30), "decision point ready and allowing", || {
        let v = check(&ca, hook.pdp_addr, &request(&token, "search", "/api/q?term=x"));
        async move { (code(&v) == 0).then_some(v) }
    })
    .await;
    assert_eq!(v["okResponse"]["headersToRemove"], json!(["authorization"]), "{v}");
    let v = check(&ca, hook.pdp_addr, &request(&token, "search", "/admin"));
    assert_eq!(code(&v), 7, "{v}");
    assert_eq!(v["dynamicMetadata"]["reason"], "destination-not-granted", "{v}");
    assert_eq!(v["deniedResponse"]["status"]["code"], "Forbidden", "{v}");
    let v = check(&ca, hook.pdp_addr, &request("garbage", "search", "/api/q"));
    assert_eq!(code(&v), 16, "{v}");
    assert_eq!(v["deniedResponse"]["status"]["code"], "Unauthorized", "{v}");
    hook.stop().await;
}
