//! The background scan through the real apiserver: workloads that existed before agentid started, in
//! namespaces in audit and warn mode, are published as PolicyReports with the right rule ids; fixing one
//! (deleting the pod, adding an exception) removes or updates its report; a namespace's mode change
//! rescans. The scan runs as a user holding only the ClusterRole of config/rbac/role.yaml, so the shipped
//! RBAC is proven sufficient.
#![cfg(feature = "e2e")]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use agentid::core::policyreport::{Governance, REPORT_SELECTOR, ReportApi};
use agentid::metrics::Metrics;
use agentid::scan::{ScanConfig, run};
use support::{from_yaml, wait_until};

const SCOPE_LABEL: &str = "agentid.dev/test-scope";
/// Looks like a GitHub token to the detector; must never appear in a report.
const TOKEN: &str = "ghp_R8x2Lq9ZkV4mN7pW3sT6yB1cD5fG0hJ2kL4m";

async fn install_report_crd(client: &Client) {
    let crd: CustomResourceDefinition =
        from_yaml(include_str!("../crds/policyreports/wgpolicyk8s.io_policyreports.yaml"));
    support::apply_crd(client, &crd).await;
}

async fn label(client: &Client, ns: &str, scope: &str, mode: Option<&str>) {
    let mut labels = BTreeMap::from([(SCOPE_LABEL.to_string(), scope.to_string())]);
    if let Some(m) = mode {
        labels.insert("agentid.dev/enforcement".into(), m.into());
    }
    let patch = json!({"metadata": {"labels": labels}});
    Api::<Namespace>::all(client.clone()).patch(ns, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
}

async fn pod(client: &Client, ns: &str, name: &str, spec: Value) -> String {
    // With a node the apiserver's ServiceAccount admission refuses pods whose account does not exist
    // (`default` included, until the controller manager has made it).
    let account = spec["serviceAccountName"].as_str().unwrap_or("default");
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": account}})).unwrap();
    match Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("service account {account}: {e}"),
    }
    let p: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap();
    let p = Api::<Pod>::namespaced(client.clone(), ns).create(&PostParams::default(), &p).await.unwrap();
    p.metadata.uid.unwrap()
}

fn reports_api(client: &Client, ns: &str) -> Api<DynamicObject> {
    let api = ReportApi::Wgpolicyk8s;
    let ar = ApiResource {
        group: api.group().into(),
        version: api.version().into(),
        api_version: api.api_version(),
        kind: api.kind().into(),
        plural: api.plural().into(),
    };
    Api::namespaced_with(client.clone(), ns, &ar)
}

/// The reports in `ns` as (scope kind/name → [(rule, result, severity)]), as JSON for the secret check.
async fn reports(client: &Client, ns: &str) -> (BTreeMap<String, Vec<(String, String, String)>>, Vec<Value>) {
    let list = reports_api(client, ns).list(&ListParams::default().labels(REPORT_SELECTOR)).await.unwrap();
    let mut out = BTreeMap::new();
    let mut raw = Vec::new();
    for r in list.items {
        let v = serde_json::to_value(&r).unwrap();
        let key =
            format!("{}/{}", v["scope"]["kind"].as_str().unwrap_or(""), v["scope"]["name"].as_str().unwrap_or(""));
        let results = v["results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                let s = |k: &str| x[k].as_str().unwrap_or("").to_string();
                (s("rule"), s("result"), s("severity"))
            })
            .collect();
        out.insert(key, results);
        raw.push(v);
    }
    (out, raw)
}

fn one(rule: &str, result: &str, severity: &str) -> Vec<(String, String, String)> {
    vec![(rule.into(), result.into(), severity.into())]
}

#[tokio::test]
async fn pre_existing_violations_are_published_and_fixes_remove_them() {
    // The scan's log lines (RUST_LOG=agentid=info) say what it saw when this fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let env = support::env("scan").await;
    let client = env.client.clone();
    install_report_crd(&client).await;
    let scope = env.ns.clone();
    let audit_ns = support::namespace(&client, "scan-audit").await;
    let warn_ns = support::namespace(&client, "scan-warn").await;
    let off_ns = support::namespace(&client, "scan-off").await;
    label(&client, &audit_ns, &scope, Some("audit")).await;
    label(&client, &warn_ns, &scope, Some("warn")).await;
    label(&client, &off_ns, &scope, None).await;

    // Everything below exists before agentid starts (no webhook judged it).
    let keyed_uid = pod(
        &client,
        &audit_ns,
        "keyed",
        json!({"serviceAccountName": "keyed", "containers": [{"name": "app", "image": "x",
            "env": [{"name": "GITHUB_TOKEN", "value": TOKEN}]}]}),
    )
    .await;
    pod(&client, &audit_ns, "defaulted", json!({"containers": [{"name": "app", "image": "x"}]})).await;
    pod(
        &client,
        &audit_ns,
        "clean",
        json!({"serviceAccountName": "web", "containers": [{"name": "app", "image": "x"}]}),
    )
    .await;
    pod(
        &client,
        &warn_ns,
        "mounted",
        json!({"serviceAccountName": "m", "containers": [{"name": "app", "image": "x"}],
            "volumes": [{"name": "creds", "secret": {"secretName": "db"}}]}),
    )
    .await;
    let deploy: Deployment = serde_json::from_value(json!({"metadata": {"name": "legacy"}, "spec": {
        "selector": {"matchLabels": {"app": "legacy"}},
        "template": {"metadata": {"labels": {"app": "legacy"}}, "spec": {"containers": [{"name": "app", "image": "x"}]}}}}))
    .unwrap();
    Api::<Deployment>::namespaced(client.clone(), &warn_ns).create(&PostParams::default(), &deploy).await.unwrap();
    pod(&client, &off_ns, "ungoverned", json!({"containers": [{"name": "app", "image": "x"}]})).await;

    let dir = tempfile::tempdir().unwrap();
    let exceptions = dir.path().join("exceptions.yaml");
    std::fs::write(&exceptions, "exceptions: []\n").unwrap();
    let config = ScanConfig {
        interval: Duration::from_secs(4),
        report_api: ReportApi::Wgpolicyk8s,
        governance: Governance {
            operator_namespace: "agentid-system".into(),
            scope: Some((SCOPE_LABEL.into(), scope.clone())),
            only_namespace: None,
        },
        exceptions_file: Some(exceptions.clone()),
        reload_every: Duration::from_millis(300),
        debounce: Duration::from_millis(200),
    };
    let admin = client.clone();
    support::with_shipped_cluster_role(&env, move |operator| async move {
        let client = admin;
        let metrics = Arc::new(Metrics::default());
        let scan = tokio::spawn(run(operator, config, metrics.clone(), None));

        // 1. The pre-existing violations are published, with the right rules, per resource.
        let want_audit = BTreeMap::from([
            ("Pod/defaulted".to_string(), one("default-service-account", "fail", "medium")),
            ("Pod/keyed".to_string(), one("hardcoded-credential", "fail", "critical")),
        ]);
        let want_warn = BTreeMap::from([
            ("Deployment/legacy".to_string(), one("default-service-account", "warn", "medium")),
            ("Pod/mounted".to_string(), one("static-secret-volume", "warn", "high")),
        ]);
        let raw = wait_until(Duration::from_secs(30), "reports of the pre-existing violations", || {
            let (client, audit_ns, warn_ns) = (client.clone(), audit_ns.clone(), warn_ns.clone());
            let (want_audit, want_warn) = (want_audit.clone(), want_warn.clone());
            async move {
                let (a, mut raw) = reports(&client, &audit_ns).await;
                let (w, raw_w) = reports(&client, &warn_ns).await;
                raw.extend(raw_w);
                (a == want_audit && w == want_warn).then_some(raw)
            }
        })
        .await;
        assert!(reports(&client, &off_ns).await.0.is_empty(), "a namespace without a mode is not scanned");
        let text = serde_json::to_string(&raw).unwrap();
        assert!(!text.contains(TOKEN) && !text.contains("ghp_"), "a secret value in a report: {text}");
        let keyed = raw.iter().find(|r| r["scope"]["name"] == "keyed").unwrap();
        assert_eq!(keyed["metadata"]["ownerReferences"][0]["uid"], keyed_uid.as_str(), "owned by its pod, for GC");
        assert_eq!(keyed["metadata"]["name"], format!("agentid-{keyed_uid}"));
        assert!(keyed["metadata"]["managedFields"].as_array().unwrap().iter().any(|m| m["manager"] == "agentid-scan"));
        let message = keyed["results"][0]["message"].as_str().unwrap();
        assert!(
            message.starts_with(&format!("[agentid/hardcoded-credential] Pod {audit_ns}/keyed: spec.containers[0].env[0]")),
            "{message}"
        );
        assert_eq!(keyed["summary"]["fail"], 1);
        assert!(metrics.scan.reports_written.get() >= 4);
        let written = metrics.scan.reports_written.get();

        // 2. A rescan that finds the same writes nothing.
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(metrics.scan.reports_written.get(), written, "steady state costs no writes");

        // 3. Fixing one by deleting the pod: its report goes (here by the scan: no garbage collector runs).
        Api::<Pod>::namespaced(client.clone(), &audit_ns).delete("keyed", &DeleteParams::default()).await.unwrap();
        wait_until(Duration::from_secs(20), "the deleted pod's report removed", || {
            let (client, audit_ns) = (client.clone(), audit_ns.clone());
            async move { (!reports(&client, &audit_ns).await.0.contains_key("Pod/keyed")).then_some(()) }
        })
        .await;

        // 4. An exception: the violation turns into a skip naming it.
        std::fs::write(
            &exceptions,
            format!(
                "exceptions:\n  - name: legacy-defaulted\n    namespace: {audit_ns}\n    workload: defaulted\n    rules: [default-service-account]\n    reason: gets its own ServiceAccount in OPS-7\n    expires: \"2099-01-01T00:00:00Z\"\n"
            ),
        )
        .unwrap();
        let skipped = wait_until(Duration::from_secs(20), "the excepted violation reported as skip", || {
            let (client, audit_ns) = (client.clone(), audit_ns.clone());
            async move {
                let (r, raw) = reports(&client, &audit_ns).await;
                (r == BTreeMap::from([("Pod/defaulted".to_string(), one("default-service-account", "skip", "medium"))]))
                    .then_some(raw)
            }
        })
        .await;
        assert_eq!(skipped[0]["results"][0]["properties"]["exception"], "legacy-defaulted");

        // 5. A namespace raised from warn to enforce: its findings turn from warn to fail.
        label(&client, &warn_ns, &scope, Some("enforce")).await;
        wait_until(Duration::from_secs(20), "warn results turned fail", || {
            let (client, warn_ns) = (client.clone(), warn_ns.clone());
            async move {
                let (r, _) = reports(&client, &warn_ns).await;
                (r.get("Pod/mounted") == Some(&one("static-secret-volume", "fail", "high"))).then_some(())
            }
        })
        .await;
        assert_eq!(metrics.scan.errors.get_or_create(&agentid::metrics::ReasonLabels { reason: "write".into() }).get(), 0);
        scan.abort();
    })
    .await;
}
