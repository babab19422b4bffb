//! In-process cost of admission: rules over one pod, and a whole AdmissionReview
//! (parse → judge → serialize). `cargo bench --bench admission`.

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use std::hint::black_box;

use agentid::api::AgentIdentity;
use agentid::core::admission::exceptions::ExceptionSet;
use agentid::core::admission::review::{judge, parse, respond};
use agentid::core::admission::rules::{StaticDirectory, evaluate};
use agentid::core::admission::verdict::Enforcement;
use agentid::core::admission::workload::from_object;

/// A typical agent Deployment: two containers, an init sidecar, a dozen env vars, args, volumes.
fn typical() -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "triage-bot", "namespace": "agents", "labels": {"app": "triage-bot"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "triage-bot"}}, "template": {
            "metadata": {"labels": {"app": "triage-bot", "agentid.dev/agent": "triage-bot", "version": "1.4.2"}},
            "spec": {
                "serviceAccountName": "agent-triage-bot", "automountServiceAccountToken": false,
                "initContainers": [{"name": "proxy", "image": "registry.example.com/egress-proxy:3", "restartPolicy": "Always",
                    "args": ["--listen=127.0.0.1:15001", "--upstream-timeout=30s", "--log-level=info"]}],
                "containers": [
                    {"name": "agent", "image": "registry.example.com/triage-bot:1.4.2",
                     "command": ["python", "-m", "triage_bot"], "args": ["--queue", "support", "--max-steps", "40"],
                     "env": [
                        {"name": "LOG_LEVEL", "value": "info"}, {"name": "TOKEN_PATH", "value": "/var/run/agentid/token"},
                        {"name": "TOOLS_URL", "value": "https://tools.example.com/v1"}, {"name": "MODEL", "value": "large-2026-05"},
                        {"name": "MAX_TOKENS", "value": "4096"}, {"name": "SUPPORT_EMAIL", "value": "help@example.com"},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "REGION", "value": "eu-west-1"}, {"name": "FEATURE_FLAGS", "value": "triage,summarize"},
                        {"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://otel-collector:4317"}],
                     "envFrom": [{"configMapRef": {"name": "triage-bot-settings"}}],
                     "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}},
                     "volumeMounts": [{"name": "agent-token", "mountPath": "/var/run/agentid"}, {"name": "cache", "mountPath": "/cache"}]},
                    {"name": "metrics", "image": "registry.example.com/exporter:1", "args": ["--port=9090"]}],
                "volumes": [
                    {"name": "agent-token", "projected": {"sources": [{"serviceAccountToken": {"audience": "https://tools.example.com", "expirationSeconds": 600, "path": "token"}}]}},
                    {"name": "cache", "emptyDir": {}}]}}}
    })
}

fn directory() -> StaticDirectory {
    let agent: AgentIdentity = serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": "triage-bot", "namespace": "agents"},
        "spec": {"owner": "team", "audiences": ["https://tools.example.com"], "tokenTTL": "15m"}}))
    .unwrap();
    StaticDirectory::new([agent].iter(), "default")
}

fn review(object: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "b", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "namespace": "agents",
            "operation": "CREATE", "userInfo": {"username": "dev"}, "object": object}}))
    .unwrap()
}

fn benches(c: &mut Criterion) {
    let dir = directory();
    let workload = from_object(&typical()).unwrap().unwrap();
    assert!(evaluate(&workload, &dir).is_empty(), "the typical pod is a good one");
    c.bench_function("evaluate/typical_pod", |b| b.iter(|| evaluate(black_box(&workload), &dir)));

    let obj = typical();
    c.bench_function("extract+evaluate/typical_pod", |b| {
        b.iter(|| evaluate(&from_object(black_box(&obj)).unwrap().unwrap(), &dir))
    });

    let body = review(typical());
    let none = ExceptionSet::default();
    let now = Timestamp::now();
    c.bench_function("admission_review/typical_pod (parse+judge+serialize)", |b| {
        b.iter(|| {
            let req = parse(black_box(&body)).unwrap();
            let j = judge(&req, Enforcement::Enforce, &dir, &none, now);
            serde_json::to_vec(&respond(j.response)).unwrap()
        })
    });

    let mut big = typical();
    big["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "BLOB", "value": "x".repeat(1024 * 1024)}));
    let big_body = review(big);
    let mut g = c.benchmark_group("admission_review/1MiB_pod");
    g.sample_size(20);
    g.bench_function("parse+judge+serialize", |b| {
        b.iter(|| {
            let req = parse(black_box(&big_body)).unwrap();
            judge(&req, Enforcement::Enforce, &dir, &none, now).verdict
        })
    });
    g.finish();
}

fn detectors(c: &mut Criterion) {
    use agentid::core::admission::detectors::{scan_text, scan_value};
    let words = [
        "python",
        "-m",
        "agent.serve",
        "--port=8080",
        "--log-level=info",
        "--model=large-2026-05",
        "--token-file=/var/run/secrets/tokens/agent",
        "--api-key=$(OPENAI_API_KEY)",
        "sh -c \"export HOME=/tmp; exec /app/bin/agent --config /etc/agent/config.yaml\"",
        "https://api.example.com/v1",
        "agents.svc.cluster.local:4317",
        "info",
        "true",
        "4096",
        "/data",
        "us-east-1",
        "AGENT_NAME=billing-bot",
        "--max-tokens=4096",
        "--temperature=0.2",
        "--timeout=30s",
    ];
    c.bench_function("detectors/scan_text 20 typical words", |b| {
        b.iter(|| words.iter().map(|w| scan_text(black_box(w)).len()).sum::<usize>())
    });
    c.bench_function("detectors/scan_value secret-named high-entropy", |b| {
        b.iter(|| scan_value(Some(black_box("SERVICE_API_TOKEN")), black_box("mV9q2LxR7tK4wZ8pN3sB6dF1")))
    });
}

criterion_group!(admission, benches, detectors);
criterion_main!(admission);
