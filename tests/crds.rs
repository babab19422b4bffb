//! `crds/` must be exactly what the Rust types generate, and every field must be documented.

use serde_json::Value;

#[test]
fn crds_directories_match_the_types() {
    for dir in ["crds", "charts/agentid/crds"] {
        crds_match(dir);
    }
}

fn crds_match(dir: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    for (name, want) in agentid::api::crd_files() {
        let path = dir.join(&name);
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(have == want, "{} is out of date with src/api: run `make crds` and commit the result", path.display());
    }
    let files = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "yaml"))
        .count();
    assert_eq!(files, agentid::api::crd_files().len(), "{} holds a file that no type generates", dir.display());
}

fn undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            // metadata, apiVersion and kind are documented by Kubernetes itself.
            let builtin = path.is_empty() && matches!(k.as_str(), "metadata" | "apiVersion" | "kind");
            if !builtin && v.get("description").and_then(Value::as_str).is_none_or(str::is_empty) {
                out.push(p.clone());
            }
            undocumented(v, &p, out);
        }
    }
    if let Some(items) = schema.get("items") {
        undocumented(items, &format!("{path}[]"), out);
    }
}

#[test]
fn every_field_has_a_description_for_kubectl_explain() {
    for crd in agentid::api::crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let mut missing = Vec::new();
        undocumented(&schema, "", &mut missing);
        assert!(missing.is_empty(), "{}: fields without description: {missing:?}", crd.spec.names.kind);
    }
}

#[test]
fn schemas_use_only_formats_the_apiserver_knows() {
    for crd in agentid::api::crds() {
        let text = serde_json::to_string(&crd).unwrap();
        for bad in ["\"format\":\"uint", "\"format\":\"int8\"", "\"format\":\"int16\"", "\"format\":\"double\""] {
            assert!(!text.contains(bad), "{} uses {bad}", crd.spec.names.kind);
        }
    }
}

/// The report CRDs the background scan writes are third-party APIs, written by hand (not generated from
/// agentid's types): the copy the chart installs is the one `crds/policyreports/` ships, and each is a
/// namespaced CRD of the API agentid writes, every field documented.
#[test]
fn report_crds_are_the_ones_the_scan_writes() {
    use agentid::core::policyreport::ReportApi;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (file, api) in [
        ("wgpolicyk8s.io_policyreports.yaml", ReportApi::Wgpolicyk8s),
        ("openreports.io_reports.yaml", ReportApi::OpenReports),
    ] {
        let shipped = std::fs::read_to_string(root.join("crds/policyreports").join(file)).unwrap();
        let chart = std::fs::read_to_string(root.join("charts/agentid/files/policyreport-crds").join(file)).unwrap();
        assert_eq!(shipped, chart, "{file}: the chart's copy differs from crds/policyreports/");
        let crd: CustomResourceDefinition = serde_norway::from_str(&shipped).unwrap();
        assert_eq!(crd.spec.group, api.group());
        assert_eq!(crd.spec.names.kind, api.kind());
        assert_eq!(crd.spec.names.plural, api.plural());
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions[0].name, api.version());
        let schema = serde_json::to_value(&crd.spec.versions[0].schema.as_ref().unwrap().open_api_v3_schema).unwrap();
        let mut missing = Vec::new();
        undocumented(&schema, "", &mut missing);
        assert!(missing.is_empty(), "{file}: fields without description: {missing:?}");
        for field in ["scope", "summary", "results"] {
            assert!(schema["properties"].get(field).is_some(), "{file}: no {field}");
        }
    }
}
