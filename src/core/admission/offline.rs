//! `agentid check`: the admission rules over manifests instead of requests.
//! Pure: callers read the files; this module parses text and judges.

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use super::exceptions::{ExceptionSet, ExceptionUse};
use super::rules::{RuleId, StaticDirectory, Violation, evaluate};
use super::workload::from_object;
use crate::api::AgentIdentity;

/// One object read from a file.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: String,
    /// 1-based line where the document starts.
    pub line: usize,
    pub value: Value,
}

/// Input that cannot be judged (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line.starts_with("---#")
}

/// Splits a YAML or JSON file into objects, unwrapping `kind: List`.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Document>, InputError> {
    let err = |line: Option<usize>, message: String| InputError { file: file.to_string(), line, message };
    let trimmed = text.trim_start();
    let mut docs = Vec::new();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let v: Value = serde_json::from_str(text).map_err(|e| err(Some(e.line()), format!("invalid JSON: {e}")))?;
        push_objects(file, 1, v, &mut docs).map_err(|m| err(Some(1), m))?;
        return Ok(docs);
    }
    // YAML: split on document markers ourselves so every document knows its line.
    let mut chunks: Vec<(usize, String)> = vec![(1, String::new())];
    for (i, line) in text.lines().enumerate() {
        if is_separator(line.trim_end()) {
            chunks.push((i + 2, String::new()));
        } else {
            let chunk = &mut chunks.last_mut().expect("never empty").1;
            chunk.push_str(line);
            chunk.push('\n');
        }
    }
    for (start, chunk) in chunks {
        if chunk.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            continue;
        }
        let v: Value = serde_norway::from_str(&chunk).map_err(|e| {
            let line = e.location().map(|l| start + l.line() - 1).unwrap_or(start);
            err(Some(line), format!("invalid YAML: {e}"))
        })?;
        if v.is_null() {
            continue;
        }
        push_objects(file, start, v, &mut docs).map_err(|m| err(Some(start), m))?;
    }
    Ok(docs)
}

fn push_objects(file: &str, line: usize, v: Value, out: &mut Vec<Document>) -> Result<(), String> {
    match v {
        Value::Object(ref m)
            if m.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
                && m.contains_key("items") =>
        {
            let Some(Value::Array(items)) = m.get("items") else {
                return Err("`items` of a List must be an array".into());
            };
            for item in items {
                push_objects(file, line, item.clone(), out)?;
            }
            Ok(())
        }
        Value::Object(_) => {
            out.push(Document { file: file.to_string(), line, value: v });
            Ok(())
        }
        Value::Array(items) => items.into_iter().try_for_each(|i| push_objects(file, line, i, out)),
        _ => Err("expected a Kubernetes object (a mapping with apiVersion and kind)".into()),
    }
}

/// The result for one workload.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub file: String,
    #[serde(skip)]
    pub line: usize,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `deny` when a violation remains, `warn` when exceptions waived every violation, else `allow`.
    pub verdict: &'static str,
    pub violations: Vec<Violation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<ExceptionUse>,
}

/// Judges every workload in `docs` as if its namespace were enforced. The
/// AgentIdentities among the documents are the known agents.
pub fn check(
    docs: &[Document],
    default_namespace: &str,
    exceptions: &ExceptionSet,
    now: Timestamp,
) -> (Vec<CheckResult>, Vec<InputError>) {
    let mut errors = Vec::new();
    let mut agents = Vec::new();
    for d in docs {
        if d.value.get("apiVersion").and_then(Value::as_str) == Some("agentid.dev/v1alpha1")
            && d.value.get("kind").and_then(Value::as_str) == Some("AgentIdentity")
        {
            match serde_json::from_value::<AgentIdentity>(d.value.clone()) {
                Ok(a) => agents.push(a),
                Err(e) => errors.push(InputError {
                    file: d.file.clone(),
                    line: Some(d.line),
                    message: format!("invalid AgentIdentity: {}", super::workload::redact(&e.to_string())),
                }),
            }
        }
    }
    let directory = StaticDirectory::new(agents.iter(), default_namespace);
    let mut results = Vec::new();
    for d in docs {
        let mut w = match from_object(&d.value) {
            Ok(Some(w)) => w,
            Ok(None) => continue,
            Err(e) => {
                errors.push(InputError { file: d.file.clone(), line: Some(d.line), message: e.to_string() });
                continue;
            }
        };
        if w.namespace.is_none() {
            w.namespace = Some(default_namespace.to_string());
        }
        let (violations, used) = exceptions.apply(&w, evaluate(&w, &directory), now);
        let verdict = match (violations.is_empty(), used.is_empty()) {
            (false, _) => "deny",
            (true, false) => "warn",
            (true, true) => "allow",
        };
        results.push(CheckResult {
            file: d.file.clone(),
            line: d.line,
            kind: w.kind,
            namespace: w.namespace.unwrap_or_default(),
            name: w.name,
            verdict,
            violations,
            exceptions: used,
        });
    }
    (results, errors)
}

/// SARIF 2.1.0 for code-scanning UIs: one result per violation, located at the document.
pub fn sarif(results: &[CheckResult], version: &str) -> Value {
    let rules: Vec<Value> = RuleId::ALL
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.as_str(),
                "name": r.as_str(),
                "shortDescription": {"text": r.summary()},
                "defaultConfiguration": {"level": "error"},
            })
        })
        .collect();
    let sarif_results: Vec<Value> = results
        .iter()
        .flat_map(|r| {
            r.violations.iter().map(move |v| {
                serde_json::json!({
                    "ruleId": v.rule.as_str(),
                    "ruleIndex": RuleId::ALL.iter().position(|x| *x == v.rule),
                    "level": "error",
                    "message": {"text": v.message},
                    "locations": [{
                        "physicalLocation": {
                            "artifactLocation": {"uri": r.file},
                            "region": {"startLine": r.line},
                        },
                        "logicalLocations": [{"fullyQualifiedName": format!("{}/{}/{}:{}", r.kind, r.namespace, r.name, v.path)}],
                    }],
                })
            })
        })
        .collect();
    serde_json::json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {"name": "agentid", "version": version, "informationUri": "https://agentid.dev", "rules": rules}},
            "results": sarif_results,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFESTS: &str = r#"# agents
apiVersion: agentid.dev/v1alpha1
kind: AgentIdentity
metadata: {name: billing, namespace: agents}
spec: {owner: team, audiences: [x]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: good, namespace: agents}
spec:
  template:
    metadata: {labels: {agentid.dev/agent: billing}}
    spec:
      serviceAccountName: agent-billing
      automountServiceAccountToken: false
      containers: [{name: app, image: x}]
---
apiVersion: v1
kind: List
items:
- apiVersion: batch/v1
  kind: Job
  metadata: {name: bad, namespace: agents}
  spec:
    template:
      spec:
        containers: [{name: app, image: x, envFrom: [{secretRef: {name: s}}]}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
"#;

    fn now() -> Timestamp {
        Timestamp::from_second(1_900_000_000).unwrap()
    }

    #[test]
    fn judges_workloads_with_agents_from_the_same_inputs() {
        let docs = parse_file("m.yaml", MANIFESTS).unwrap();
        assert_eq!(docs.len(), 4);
        assert_eq!((docs[0].line, docs[1].line, docs[2].line), (1, 7, 18));
        let (results, errors) = check(&docs, "default", &ExceptionSet::default(), now());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(results.len(), 2);
        assert_eq!((results[0].name.as_str(), results[0].verdict), ("good", "allow"));
        assert_eq!((results[1].name.as_str(), results[1].verdict), ("bad", "deny"));
        let rules: Vec<_> = results[1].violations.iter().map(|v| v.rule.as_str()).collect();
        assert_eq!(rules, vec!["static-secret-envfrom", "default-service-account"]);
        let json = serde_json::to_value(&results[1]).unwrap();
        assert_eq!(json["violations"][0]["rule"], "static-secret-envfrom");
        assert_eq!(json["violations"][0]["path"], "spec.template.spec.containers[0].envFrom[0]");
        assert!(json.get("line").is_none());
    }

    #[test]
    fn invalid_input_names_file_and_line() {
        let e = parse_file("bad.yaml", "apiVersion: v1\nkind: Pod\n---\nmetadata: [unclosed\n").unwrap_err();
        assert_eq!(e.file, "bad.yaml");
        assert!(e.line.unwrap() >= 4, "{e}");
        let e = parse_file("bad.json", "{\n \"a\": \n}").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(parse_file("s.yaml", "just a string\n").is_err());
        let docs =
            parse_file("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 5}\n").unwrap();
        let (_, errors) = check(&docs, "default", &ExceptionSet::default(), now());
        assert!(errors[0].to_string().starts_with("p.yaml:1: Pod p: spec is not a valid pod spec"), "{}", errors[0]);
    }

    #[test]
    fn json_files_and_empty_documents() {
        let docs = parse_file("a.json", r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[]}}]}"#).unwrap();
        assert_eq!(docs.len(), 1);
        assert!(parse_file("e.yaml", "---\n# nothing\n---\n").unwrap().is_empty());
    }

    #[test]
    fn sarif_has_rules_and_located_results() {
        let docs = parse_file("m.yaml", MANIFESTS).unwrap();
        let (results, _) = check(&docs, "default", &ExceptionSet::default(), now());
        let s = sarif(&results, "0.1.0");
        assert_eq!(s["version"], "2.1.0");
        assert_eq!(s["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap().len(), RuleId::ALL.len());
        let r = &s["runs"][0]["results"][0];
        assert_eq!(r["ruleId"], "static-secret-envfrom");
        assert_eq!(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "m.yaml");
        assert_eq!(r["locations"][0]["physicalLocation"]["region"]["startLine"], 18);
    }
}
