//! Finds the pod spec in a Pod or in the pod template of a workload, so a
//! rejection happens at apply time (where GitOps users see it) and names the
//! exact path in the object the developer wrote.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodSpec;
use serde::Deserialize;
use serde_json::Value;

/// A pod spec to judge and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// `Pod`, `ReplicationController`, `Deployment`, `ReplicaSet`, `StatefulSet`, `DaemonSet`, `Job` or `CronJob`.
    pub kind: String,
    pub namespace: Option<String>,
    /// `metadata.name`, or `metadata.generateName` when the name is not known yet.
    pub name: String,
    /// Where the pod spec sits in the object, e.g. `spec.template.spec`.
    pub spec_path: &'static str,
    /// Labels of the pod (template): `agentid.dev/agent` marks an agent workload.
    pub labels: BTreeMap<String, String>,
    /// Where those labels sit in the object, e.g. `spec.template.metadata.labels`.
    pub labels_path: &'static str,
    pub pod: PodSpec,
}

/// Why an object that claims to be a workload cannot be judged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkloadError {
    #[error("{kind} {name}: {path} is not a valid pod spec: {reason}")]
    InvalidPodSpec { kind: String, name: String, path: &'static str, reason: String },
    #[error("object has no kind")]
    MissingKind,
    /// Valid JSON nested deeper than the decoder follows (128 levels).
    #[error("object could not be read: {0}")]
    Unreadable(String),
}

/// Kinds that carry a pod spec, with the API groups they are served from and where the spec sits.
const WORKLOADS: &[(&str, &[&str], &str)] = &[
    ("Pod", &["v1"], "spec"),
    ("ReplicationController", &["v1"], "spec.template.spec"),
    ("Deployment", &["apps/v1", "apps/v1beta1", "apps/v1beta2", "extensions/v1beta1"], "spec.template.spec"),
    ("ReplicaSet", &["apps/v1", "apps/v1beta2", "extensions/v1beta1"], "spec.template.spec"),
    ("StatefulSet", &["apps/v1", "apps/v1beta1", "apps/v1beta2"], "spec.template.spec"),
    ("DaemonSet", &["apps/v1", "apps/v1beta2", "extensions/v1beta1"], "spec.template.spec"),
    ("Job", &["batch/v1"], "spec.template.spec"),
    ("CronJob", &["batch/v1", "batch/v1beta1"], "spec.jobTemplate.spec.template.spec"),
];

/// Whether `kind` in `api_version` carries a pod spec.
pub fn is_workload_kind(api_version: &str, kind: &str) -> bool {
    WORKLOADS.iter().any(|(k, versions, _)| *k == kind && versions.contains(&api_version))
}

/// Where the labels of the pod (template) of `kind` sit.
fn labels_path(kind: &str) -> &'static str {
    match kind {
        "Pod" => "metadata.labels",
        "CronJob" => "spec.jobTemplate.spec.template.metadata.labels",
        _ => "spec.template.metadata.labels",
    }
}

fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// Decoding errors quote the offending value (`invalid type: string "..."`), which may be a
/// credential: keep the message, drop every quoted value.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        match (c, quoted) {
            ('"', false) => {
                quoted = true;
                out.push_str("\"…");
            }
            ('"', true) => {
                quoted = false;
                out.push('"');
            }
            (_, true) => {}
            (c, false) => out.push(c),
        }
    }
    if quoted {
        out.push('"');
    }
    out
}

/// Extracts the workload from an object (as JSON). `Ok(None)` for kinds that
/// carry no pod spec, which admission always allows.
pub fn from_object(obj: &Value) -> Result<Option<Workload>, WorkloadError> {
    let kind = obj.get("kind").and_then(Value::as_str).ok_or(WorkloadError::MissingKind)?;
    let api_version = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let Some((kind, _, spec_path)) =
        WORKLOADS.iter().find(|(k, versions, _)| *k == kind && versions.contains(&api_version))
    else {
        return Ok(None);
    };
    let meta = obj.get("metadata");
    let str_at = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str).map(str::to_string);
    let name = str_at("name").or_else(|| str_at("generateName")).unwrap_or_default();
    let invalid = |reason: String| WorkloadError::InvalidPodSpec {
        kind: kind.to_string(),
        name: name.clone(),
        path: spec_path,
        reason,
    };
    let pod = match at(obj, spec_path) {
        Some(spec) => PodSpec::deserialize(spec).map_err(|e| invalid(redact(&e.to_string())))?,
        None => return Err(invalid("missing".into())),
    };
    let labels_path = labels_path(kind);
    let labels = match at(obj, labels_path) {
        Some(l) if !l.is_null() => {
            BTreeMap::<String, String>::deserialize(l).map_err(|e| invalid(format!("{labels_path}: {e}")))?
        }
        _ => BTreeMap::new(),
    };
    Ok(Some(Workload {
        kind: kind.to_string(),
        namespace: str_at("namespace"),
        name,
        spec_path,
        labels,
        labels_path,
        pod,
    }))
}

/// [`from_object`] straight from an object's JSON text (the admission webhook's input): the same
/// answer, without building a [`Value`] tree of the whole object first.
///
/// One pass reads `kind`, `apiVersion` and `metadata` and keeps `spec` as text; a second decodes the
/// pod spec and template labels from that text. Anything this fast path cannot read (a missing spec,
/// a field of an unexpected type, a duplicate key) is read again by [`from_object`], so errors and
/// their messages are exactly its own.
pub fn from_json(text: &str) -> Result<Option<Workload>, WorkloadError> {
    match fast::read(text) {
        Some(read) => read,
        None => match serde_json::from_str::<Value>(text) {
            Ok(v) => from_object(&v),
            Err(e) => Err(WorkloadError::Unreadable(redact(&e.to_string()))),
        },
    }
}

mod fast {
    use std::borrow::Cow;
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::PodSpec;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    use super::{WORKLOADS, Workload, WorkloadError};

    #[derive(Deserialize)]
    struct Object<'a> {
        #[serde(borrow)]
        kind: Option<Cow<'a, str>>,
        #[serde(borrow, rename = "apiVersion")]
        api_version: Option<Cow<'a, str>>,
        metadata: Option<Meta>,
        #[serde(borrow)]
        spec: Option<&'a RawValue>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        name: Option<String>,
        generate_name: Option<String>,
        namespace: Option<String>,
        labels: Option<BTreeMap<String, String>>,
    }

    #[derive(Deserialize)]
    struct Template {
        metadata: Option<Meta>,
        spec: Option<PodSpec>,
    }

    #[derive(Deserialize)]
    struct WithTemplate {
        template: Option<Template>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct CronSpec {
        job_template: Option<JobTemplate>,
    }

    #[derive(Deserialize)]
    struct JobTemplate {
        spec: Option<WithTemplate>,
    }

    /// `None`: not readable here, ask [`super::from_object`].
    pub(super) fn read(text: &str) -> Option<Result<Option<Workload>, WorkloadError>> {
        let object: Object<'_> = serde_json::from_str(text).ok()?;
        let kind = object.kind?;
        let api_version = object.api_version.as_deref().unwrap_or("");
        let Some((kind, _, spec_path)) =
            WORKLOADS.iter().find(|(k, versions, _)| *k == kind && versions.contains(&api_version))
        else {
            return Some(Ok(None));
        };
        let spec = object.spec?.get();
        let (pod, template_meta) = match *kind {
            "Pod" => (serde_json::from_str::<PodSpec>(spec).ok()?, None),
            "CronJob" => {
                let cron: CronSpec = serde_json::from_str(spec).ok()?;
                let template = cron.job_template?.spec?.template?;
                (template.spec?, template.metadata)
            }
            _ => {
                let spec: WithTemplate = serde_json::from_str(spec).ok()?;
                let template = spec.template?;
                (template.spec?, template.metadata)
            }
        };
        let meta = object.metadata;
        let (name, namespace, pod_labels) = match meta {
            Some(m) => (m.name.or(m.generate_name).unwrap_or_default(), m.namespace, m.labels),
            None => (String::new(), None, None),
        };
        let labels = match *kind {
            "Pod" => pod_labels,
            _ => template_meta.and_then(|m| m.labels),
        };
        Some(Ok(Some(Workload {
            kind: kind.to_string(),
            namespace,
            name,
            spec_path,
            labels: labels.unwrap_or_default(),
            labels_path: super::labels_path(kind),
            pod,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_pod_spec_of_every_workload_kind() {
        let pod_spec = json!({"containers": [{"name": "c", "image": "i"}]});
        let template = json!({"metadata": {"labels": {"agentid.dev/agent": "a"}}, "spec": pod_spec});
        let cases = [
            (
                json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"agentid.dev/agent": "a"}}, "spec": pod_spec}),
                "spec",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "p"}, "spec": {"template": template}}),
                "spec.template.spec",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "p"}, "spec": {"template": template}}),
                "spec.template.spec",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "p"}, "spec": {"template": template}}),
                "spec.template.spec",
            ),
            (
                json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "p"}, "spec": {"template": template}}),
                "spec.template.spec",
            ),
            (
                json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "p"}, "spec": {"template": template}}),
                "spec.template.spec",
            ),
            (
                json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "p"}, "spec": {"template": template}}),
                "spec.template.spec",
            ),
            (
                json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "p"}, "spec": {"jobTemplate": {"spec": {"template": template}}}}),
                "spec.jobTemplate.spec.template.spec",
            ),
        ];
        for (obj, path) in cases {
            let w = from_object(&obj).unwrap().unwrap();
            assert_eq!(w.spec_path, path);
            assert_eq!(w.pod.containers[0].name, "c");
            assert_eq!(w.labels["agentid.dev/agent"], "a", "{}", w.kind);
        }
    }

    /// The fast path of [`from_json`] answers as [`from_object`] does, errors included.
    #[test]
    fn from_json_reads_what_from_object_reads() {
        let pod_spec = json!({"containers": [{"name": "c", "image": "i", "env": [{"name": "A", "value": "b"}]}], "serviceAccountName": "sa"});
        let template = json!({"metadata": {"labels": {"agentid.dev/agent": "a"}}, "spec": pod_spec});
        let cases = [
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "n", "labels": {"agentid.dev/agent": "a"}}, "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "p-"}, "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "", "generateName": "p-"}, "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": null, "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": 3}, "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": null}, "spec": pod_spec}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": 1}}, "spec": pod_spec}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "labels": {"x": 1}}, "spec": {"template": template}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": pod_spec}}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"metadata": {"labels": {"a": [1]}}, "spec": pod_spec}}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": "nope"}}}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": null}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": null}}}),
            json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": "x"}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": template}}}}),
            json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {}}}),
            json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": template}}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "data": {"a": "b"}}),
            json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": 1}),
            json!({"apiVersion": "v1"}),
            json!({"kind": 7}),
            json!([1, 2]),
            json!(null),
        ];
        for case in cases {
            assert_eq!(from_json(&case.to_string()), from_object(&case), "{case}");
        }
        // A duplicate key (the last one wins, as in a Value) and escaped strings.
        let text =
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a","name":"b\u0041"},"spec":{"containers":[]}}"#;
        assert_eq!(from_json(text), from_object(&serde_json::from_str(text).unwrap()));
        assert_eq!(from_json(text).unwrap().unwrap().name, "bA");
        let text = r#"{"apiVersion":"v1","kind":"P\u006fd","metadata":{"name":"a"},"spec":{"containers":[]}}"#;
        assert_eq!(from_json(text).unwrap().unwrap().kind, "Pod");
    }

    #[test]
    fn other_kinds_are_not_workloads() {
        assert_eq!(from_object(&json!({"apiVersion": "v1", "kind": "ConfigMap"})).unwrap(), None);
        assert_eq!(
            from_object(&json!({"apiVersion": "example.com/v1", "kind": "Deployment", "spec": 1})).unwrap(),
            None
        );
        assert!(!is_workload_kind("v1", "Service"));
        assert!(is_workload_kind("batch/v1", "CronJob"));
    }

    #[test]
    fn malformed_pod_specs_are_errors_not_panics() {
        let bad = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"template": {"spec": {"containers": "nope"}}}});
        let err = from_object(&bad).unwrap_err().to_string();
        assert!(err.contains("Deployment d: spec.template.spec is not a valid pod spec"), "{err}");
        let missing = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}});
        assert!(from_object(&missing).is_err());
        assert_eq!(from_object(&json!({"apiVersion": "v1"})), Err(WorkloadError::MissingKind));
        let bad_labels = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": 1}}, "spec": {"containers": []}});
        assert!(from_object(&bad_labels).is_err());
    }

    #[test]
    fn decoding_errors_never_quote_values() {
        let bad = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "args": "ghp_notarealtokenbutlooksone"}]}});
        let err = from_object(&bad).unwrap_err().to_string();
        assert!(!err.contains("ghp_"), "{err}");
        assert!(err.contains("invalid type"), "{err}");
        assert_eq!(
            redact(r#"invalid type: string "s3cr3t", expected a sequence"#),
            r#"invalid type: string "…", expected a sequence"#
        );
    }

    #[test]
    fn generate_name_stands_in_for_a_missing_name() {
        let obj = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "n"}, "spec": {"containers": []}});
        let w = from_object(&obj).unwrap().unwrap();
        assert_eq!((w.name.as_str(), w.namespace.as_deref()), ("web-", Some("n")));
    }
}
