//! The Helm chart renders, lints, carries exactly the RBAC of config/rbac/, and
//! the real apiserver accepts what it renders (server-side dry run).
#![cfg(feature = "e2e")]

mod support;

use std::process::{Command, Stdio};

use k8s_openapi::api::rbac::v1::{ClusterRole, Role};
use serde::Deserialize;
use serde_json::Value;

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd} on PATH (make test puts .cache/bin there): {e}"));
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(yaml)
        .filter_map(|d| Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> T {
    let doc = docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    serde_json::from_value(doc.clone()).unwrap()
}

#[tokio::test]
async fn chart_renders_with_the_shipped_rbac_and_the_apiserver_accepts_it() {
    let env = support::env("chart").await;
    run("helm", &["lint", "charts/agentid"], None);
    let rendered = run(
        "helm",
        &["template", "agentid", "charts/agentid", "--namespace", &env.ns, "--kube-version", "1.36.3"],
        None,
    );
    let docs = documents(&rendered);
    let shipped = documents(include_str!("../config/rbac/role.yaml"));

    let chart_cr: ClusterRole = find(&docs, "ClusterRole");
    let shipped_cr: ClusterRole = find(&shipped, "ClusterRole");
    assert_eq!(chart_cr.rules, shipped_cr.rules, "chart ClusterRole differs from config/rbac/role.yaml");
    let chart_role: Role = find(&docs, "Role");
    let shipped_role: Role = find(&shipped, "Role");
    assert_eq!(chart_role.rules, shipped_role.rules, "chart Role differs from config/rbac/role.yaml");
    assert_eq!(chart_role.metadata.namespace.as_deref(), Some(env.ns.as_str()));

    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(deployment["spec"]["replicas"], 2, "HA by default");
    let args: Vec<&str> = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args[0], "run");

    // Everything the chart renders is valid for the real apiserver.
    let out = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&rendered));
    assert!(out.contains("deployment.apps/agentid created (server dry run)"), "{out}");
    // And the rendered exceptions file is one `agentid run` accepts.
    let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    agentid::core::admission::exceptions::ExceptionSet::parse(cm["data"]["exceptions.yaml"].as_str().unwrap()).unwrap();
}

/// The report CRD is kept at uninstall (its reports are data), so a later install of a release with the
/// same name in another namespace finds it. Helm adopts an object only when both its release name and
/// namespace annotations match; the chart renders the CRD only then (or when it is absent), and leaves
/// a CRD another release owns alone instead of failing the install with "invalid ownership metadata".
#[tokio::test]
async fn the_report_crd_is_rendered_only_for_the_release_that_owns_it() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, Patch, PatchParams};
    let env = support::env("chart-crd").await;
    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    let owned_by = |ns: &str| {
        let mut crd: Value =
            serde_norway::from_str(include_str!("../crds/policyreports/wgpolicyk8s.io_policyreports.yaml")).unwrap();
        crd["metadata"]["annotations"]["meta.helm.sh/release-name"] = "agentid".into();
        crd["metadata"]["annotations"]["meta.helm.sh/release-namespace"] = ns.into();
        crd
    };
    let renders_crd = || {
        let out = run(
            "helm",
            &[
                "template",
                "agentid",
                "charts/agentid",
                "--namespace",
                &env.ns,
                "--dry-run=server",
                "--kube-version",
                "1.36.3",
            ],
            None,
        );
        documents(&out).iter().any(|d| d["kind"] == "CustomResourceDefinition")
    };
    let apply = PatchParams::apply("e2e-chart-crd-owner").force();
    let name = "policyreports.wgpolicyk8s.io";
    crds.patch(name, &apply, &Patch::Apply(owned_by("an-earlier-release-elsewhere"))).await.unwrap();
    assert!(!renders_crd(), "rendered a CRD another release owns: helm install would fail");
    crds.patch(name, &apply, &Patch::Apply(owned_by(&env.ns))).await.unwrap();
    assert!(renders_crd(), "an upgrade of the owning release would delete its CRD");
}
