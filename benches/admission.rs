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
use agentid::core::admission::workload::{from_json, from_object};

mod support;
use support::typical;

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

    // The webhook's decode of the object (kept as JSON text) against a Value tree and the general decoder.
    let text = serde_json::to_string(&typical()).unwrap();
    let mut g = c.benchmark_group("workload_decode/typical_pod");
    g.bench_function("from_json (text, as the webhook)", |b| b.iter(|| from_json(black_box(&text)).unwrap()));
    g.bench_function("Value + from_object (before)", |b| {
        b.iter(|| from_object(&serde_json::from_str::<Value>(black_box(&text)).unwrap()).unwrap())
    });
    g.finish();

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
