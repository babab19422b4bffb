//! The background scan of 10,000 pods (goal: ≤ 30 s). `cargo bench --bench scan`.
//!
//! 1. In process (criterion): judge 10,000 listed pods and build their reports — the pure part of a scan.
//! 2. Through a real apiserver, with `AGENTID_SCAN_BENCH_CLUSTER=1` and KUBECONFIG (e.g. a local control
//!    plane from `e2e/cluster.sh up`): 10,000 pods in a namespace in audit mode, then a first scan (lists
//!    and writes a report per violating pod), a second one (steady state: lists, writes nothing), and a scan
//!    after every report was deleted. Prints one line per scan.
//!
//! The pods: 1 in 10 with a hard-coded credential, 1 in 10 on the default ServiceAccount, 1 in 20 mounting
//! a Secret, the rest clean (about 25% with a finding, as in a legacy namespace).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use agentid::core::admission::exceptions::ExceptionSet;
use agentid::core::admission::rules::StaticDirectory;
use agentid::core::admission::verdict::Enforcement;
use agentid::core::policyreport::{Governance, ReportApi, report, scan_object};

const PODS: usize = 10_000;

/// Pod `i` as the apiserver lists it (spec, some status, no apiVersion/kind until the scan adds them).
fn pod_spec(i: usize) -> Value {
    let mut env = vec![
        json!({"name": "LOG_LEVEL", "value": "info"}),
        json!({"name": "TOOLS_URL", "value": "https://tools.example.com/v1"}),
        json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}),
        json!({"name": "REGION", "value": "eu-west-1"}),
    ];
    if i % 10 == 3 {
        // Not a real key: shaped like one for the detector.
        env.push(json!({"name": "AWS_ACCESS_KEY_ID", "value": format!("AKIAQ7ZKXW4MJ{:07}", i % 10_000_000)}));
    }
    let mut spec = json!({
        "containers": [{"name": "app", "image": "registry.example.com/app:1.2.3", "args": ["--port=8080"], "env": env,
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
        "automountServiceAccountToken": false,
    });
    if i % 10 != 5 {
        spec["serviceAccountName"] = json!(format!("app-{}", i % 50));
    }
    if i % 20 == 7 {
        spec["volumes"] = json!([{"name": "creds", "secret": {"secretName": "db"}}]);
        spec["containers"][0]["volumeMounts"] = json!([{"name": "creds", "mountPath": "/creds"}]);
    }
    spec
}

fn listed_pod(i: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("pod-{i}"), "namespace": "legacy", "uid": format!("00000000-0000-0000-0000-{i:012}"),
            "labels": {"app": format!("app-{}", i % 50)}, "resourceVersion": "12345"},
        "spec": pod_spec(i),
        "status": {"phase": "Pending", "qosClass": "Burstable"}})
}

/// Judges every pod and builds the reports, as one scan does between its lists and its writes.
fn scan_all(pods: &[Value], dir: &StaticDirectory, exceptions: &ExceptionSet, now: Timestamp) -> usize {
    pods.iter()
        .filter_map(|p| scan_object(p, "legacy", Enforcement::Audit, dir, exceptions, now))
        .filter_map(|s| report(&s, ReportApi::Wgpolicyk8s, now))
        .count()
}

fn pure(c: &mut Criterion) {
    let pods: Vec<Value> = (0..PODS).map(listed_pod).collect();
    let dir = StaticDirectory::default();
    let exceptions = ExceptionSet::default();
    let now = Timestamp::now();
    let reports = scan_all(&pods, &dir, &exceptions, now);
    assert_eq!(reports, 2_500, "1 in 10 keyed, 1 in 10 default SA, 1 in 20 Secret volume (overlaps removed)");
    let started = Instant::now();
    scan_all(&pods, &dir, &exceptions, now);
    println!(
        "scan (in process): {PODS} pods judged, {reports} reports built in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    let mut group = c.benchmark_group("scan");
    group.sample_size(10);
    group.bench_function("judge_and_report/10000_pods", |b| {
        b.iter(|| scan_all(black_box(&pods), &dir, &exceptions, now))
    });
    group.finish();
}

criterion_group!(benches, pure);

async fn through_the_apiserver() -> Result<(), String> {
    use agentid::scan::{ScanConfig, ScanMetrics, Scanner};
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = kube::Client::try_default().await.map_err(|e| format!("KUBECONFIG: {e}"))?;
    let crd: CustomResourceDefinition =
        serde_norway::from_str(include_str!("../crds/policyreports/wgpolicyk8s.io_policyreports.yaml"))
            .map_err(|e| e.to_string())?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch("policyreports.wgpolicyk8s.io", &PatchParams::apply("agentid-bench").force(), &Patch::Apply(&crd))
        .await
        .map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ns = format!("scan-bench-{}", std::process::id());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns,
        "labels": {"agentid.dev/enforcement": "audit", "agentid.dev/scan-bench": ns}}}))
    .map_err(|e| e.to_string())?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .map_err(|e| e.to_string())?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let created: Vec<Result<(), String>> = futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p: Pod =
                    serde_json::from_value(json!({"metadata": {"name": format!("pod-{i}")}, "spec": pod_spec(i)}))
                        .map_err(|e| e.to_string())?;
                pods.create(&PostParams::default(), &p).await.map(|_| ()).map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    if let Some(Err(e)) = created.into_iter().find(Result::is_err) {
        return Err(format!("creating pods: {e}"));
    }
    println!("cluster: {PODS} pods created in {:.1} s", started.elapsed().as_secs_f64());
    let config = ScanConfig {
        interval: Duration::from_secs(3600),
        report_api: ReportApi::Wgpolicyk8s,
        governance: Governance {
            operator_namespace: "agentid-system".into(),
            scope: Some(("agentid.dev/scan-bench".into(), ns.clone())),
            only_namespace: None,
        },
        exceptions_file: None,
        reload_every: Duration::from_secs(10),
        debounce: Duration::from_secs(1),
    };
    let metrics = ScanMetrics::register(&mut prometheus_client::registry::Registry::default());
    let scanner =
        Scanner::new(client.clone(), config, Arc::new(StaticDirectory::default()), ExceptionSet::default(), metrics);
    for what in ["first scan (writes every report)", "second scan (steady state)"] {
        let started = Instant::now();
        let stats = scanner.scan_once().await;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "cluster: {what}: {} resources, {} with findings, {} written, {} deleted, {} errors in {secs:.2} s (goal ≤ 30 s)",
            stats.resources, stats.with_findings, stats.written, stats.deleted, stats.errors
        );
    }
    let ar = ApiResource {
        group: "wgpolicyk8s.io".into(),
        version: "v1alpha2".into(),
        api_version: "wgpolicyk8s.io/v1alpha2".into(),
        kind: "PolicyReport".into(),
        plural: "policyreports".into(),
    };
    let reports: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let n = reports.list_metadata(&ListParams::default()).await.map_err(|e| e.to_string())?.items.len();
    println!("cluster: {n} PolicyReports in the namespace");
    reports.delete_collection(&DeleteParams::default(), &ListParams::default()).await.map_err(|e| e.to_string())?;
    Ok(())
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::var("AGENTID_SCAN_BENCH_CLUSTER").is_ok_and(|v| v == "1") {
        let rt = tokio::runtime::Runtime::new().expect("a tokio runtime");
        if let Err(e) = rt.block_on(through_the_apiserver()) {
            eprintln!("cluster part failed: {e}");
            std::process::exit(1);
        }
    } else {
        println!("(set AGENTID_SCAN_BENCH_CLUSTER=1 with KUBECONFIG for the figure through a real apiserver)");
    }
}
