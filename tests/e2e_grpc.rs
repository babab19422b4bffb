//! Envoy ext_authz v3 over gRPC, driven by a real client (grpcurl, built from its Go module by
//! e2e/tools/build.sh) with a token the real apiserver issued.
#![cfg(feature = "e2e")]

#[path = "support/envoy_protos.rs"]
mod envoy_protos;
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use serde_json::{Value, json};
use support::*;

use agentid::api::{AgentIdentity, GrantPhase, ToolGrant};

fn check(ca: &std::path::Path, addr: std::net::SocketAddr, request: &Value) -> Value {
    check_as(ca, None, addr, request)
}

/// [`check`] presenting a client certificate (`cert`, `key` PEM files), as an enforcement point does.
fn check_as(
    ca: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
    addr: std::net::SocketAddr,
    request: &Value,
) -> Value {
    let p = envoy_protos::proto_dir();
    let mut args = vec!["-cacert".to_string(), ca.display().to_string()];
    if let Some((cert, key)) = client {
        args.extend(["-cert".to_string(), cert.display().to_string(), "-key".to_string(), key.display().to_string()]);
    }
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

/// Agent `bot` with an Active grant for tool `search` (`get` under https://search.internal/api/).
async fn agent_with_search_grant(client: &kube::Client, ns: &str) -> Api<AgentIdentity> {
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let grants: Api<ToolGrant> = Api::namespaced(client.clone(), ns);
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
    agents
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
    let _agents = agent_with_search_grant(&env.client, &env.ns).await;
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

/// A CA for enforcement points and client certificates it signed for `uris`: `(ca_pem, [(cert_pem, key_pem)])`.
fn pep_certificates(uris: &[&str]) -> (String, Vec<(String, String)>) {
    use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("enforcement points {}", uris[0]));
    ca.distinguished_name = dn;
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaves = uris
        .iter()
        .map(|uri| {
            let key = KeyPair::generate().unwrap();
            let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
            leaf.subject_alt_names = vec![SanType::URI((*uri).try_into().unwrap())];
            leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            (leaf.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
        })
        .collect();
    (ca_cert.pem(), leaves)
}

/// An enforcement point that terminated the agent's mTLS reports the agent's identity as
/// `source.principal`; the decision point honours it only from a client certificate it was told to trust.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_enforcement_point_vouches_for_the_agent_by_its_peer_principal() {
    let env = env("grpc-pep").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let dir = tempfile::tempdir().unwrap();
    let envoy = "spiffe://cluster.local/ns/gateways/sa/envoy";
    let (pep_ca, leaves) = pep_certificates(&[envoy, "spiffe://cluster.local/ns/gateways/sa/intruder"]);
    let [(cert, key), (other_cert, other_key)] = <[_; 2]>::try_from(leaves).unwrap();
    let [pep_ca_file, cert_file, key_file, other_cert_file, other_key_file] =
        ["pep-ca.crt", "envoy.crt", "envoy.key", "other.crt", "other.key"].map(|f| dir.path().join(f));
    for (f, pem) in [
        (&pep_ca_file, &pep_ca),
        (&cert_file, &cert),
        (&key_file, &key),
        (&other_cert_file, &other_cert),
        (&other_key_file, &other_key),
    ] {
        std::fs::write(f, pem).unwrap();
    }
    let hook = Webhook::start_with(&env.client, &env.ns, |args| {
        args.pdp_client_ca_file = Some(pep_ca_file.clone());
        args.pdp_trusted_pep = vec![envoy.into()];
    })
    .await;
    let agents = agent_with_search_grant(&env.client, &env.ns).await;
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, hook.ca_pem().await).unwrap();
    let code = |v: &Value| v["status"]["code"].as_i64().unwrap_or(0);
    let ns = &env.ns;
    let by_principal = |principal: &str, path: &str| {
        json!({"attributes": {"source": {"principal": principal},
            "contextExtensions": {"tool": "search", "action": "get"},
            "request": {"http": {"method": "GET", "scheme": "https", "host": "search.internal", "path": path}}}})
    };
    let agent_id = format!("spiffe://cluster.local/ns/{ns}/agent/bot");
    let mesh_id = format!("spiffe://cluster.local/ns/{ns}/sa/agent-bot");
    let envoy_cert = Some((cert_file.as_path(), key_file.as_path()));

    // The trusted enforcement point, no token: either form of the agent's identity is allowed its grant.
    let v = wait_until(Duration::from_secs(30), "decision point ready and allowing by principal", || {
        let v = check_as(&ca, envoy_cert, hook.pdp_addr, &by_principal(&agent_id, "/api/q"));
        async move { (code(&v) == 0).then_some(v) }
    })
    .await;
    assert_eq!(v["dynamicMetadata"]["grant"], "search", "{v}");
    let v = check_as(&ca, envoy_cert, hook.pdp_addr, &by_principal(&mesh_id, "/api/q"));
    assert_eq!(code(&v), 0, "{v}");
    let v = check_as(&ca, envoy_cert, hook.pdp_addr, &by_principal(&agent_id, "/admin"));
    assert_eq!(v["dynamicMetadata"]["reason"], "destination-not-granted", "{v}");
    // The namespace's default ServiceAccount is no agent.
    let v = check_as(
        &ca,
        envoy_cert,
        hook.pdp_addr,
        &by_principal(&format!("spiffe://cluster.local/ns/{ns}/sa/default"), "/api/q"),
    );
    assert_eq!(code(&v), 16, "{v}");

    // The same principal from a client without a certificate, or with a certificate the CA signed for
    // another name: unauthenticated.
    for client in [None, Some((other_cert_file.as_path(), other_key_file.as_path()))] {
        let v = check_as(&ca, client, hook.pdp_addr, &by_principal(&agent_id, "/api/q"));
        assert_eq!(code(&v), 16, "{v}");
        assert_eq!(v["dynamicMetadata"]["reason"], "unauthenticated", "{v}");
    }
    // Agents keep calling without a certificate, with their token.
    let token = sa_token(&env.client, ns, "agent-bot", "agentid-pdp").await;
    let v = check(&ca, hook.pdp_addr, &request(&token, "search", "/api/q"));
    assert_eq!(code(&v), 0, "{v}");

    // Suspended: the next decision by principal is a deny.
    let patch = json!({"spec": {"suspended": true}});
    agents.patch("bot", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    wait_until(Duration::from_secs(10), "deny after suspension", || {
        let v = check_as(&ca, envoy_cert, hook.pdp_addr, &by_principal(&agent_id, "/api/q"));
        async move { (code(&v) != 0).then_some(()) }
    })
    .await;
    hook.stop().await;
}
