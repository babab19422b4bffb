//! PolicyReports for what already runs: the background scan judges existing workloads with the
//! admission rules and exceptions, and this module turns one judged object into the report that
//! publishes it. Pure: no client, no clock (the caller passes `now`).
//!
//! **Which API.** Kyverno (1.15 and later) writes `wgpolicyk8s.io/v1alpha2` PolicyReports by default and
//! `openreports.io/v1alpha1` Reports only behind its alpha `--openreportsEnabled` flag; Policy Reporter (3.x)
//! reads both; Kubewarden switched its default to openreports.io. So agentid writes
//! `wgpolicyk8s.io/v1alpha2` by default (what every current consumer reads) and `openreports.io/v1alpha1`
//! with `--scan-report-api openreports.io` ([`ReportApi`]). The two carry the same fields.
//!
//! **One report per resource, not per namespace.** A per-namespace report grows with the namespace: one
//! legacy namespace with thousands of pods reaches etcd's 1.5 MiB object limit, and every change to any one
//! workload rewrites (and sends to every watcher) the whole report. A report per resource stays a few KiB,
//! is written only when that resource's findings change, and carries an ownerReference to the resource, so
//! the garbage collector removes it with the resource. Kyverno (1.10) and Kubewarden made the same move.
//!
//! **Clean resources get no report.** Ten thousand reports that say "pass" would cost etcd ten thousand
//! objects to say nothing; a report appears when there is something to fix (or an exception in use, which
//! a reviewer should see: `skip`), and is deleted when the resource is clean again. Consumers count a
//! resource without a report as having no findings.
//!
//! **Only what someone wrote.** A Pod created by a ReplicaSet, a ReplicaSet by a Deployment, a Job by a
//! CronJob carries its owner's template: its finding is the owner's finding, fixed in the owner. Such
//! controlled objects are not reported (see [`controlled_by_workload`]), so a Deployment with 50 replicas
//! yields one report, not 52.
//!
//! Results: one per rule broken (policy `agentid`, rule = the rule id), `fail` — or `warn` in a namespace
//! in warn mode, where admission itself only warns — with the rule's severity and the very messages
//! admission gives (one line per place, never a secret value); violations an exception waives are one
//! `skip` result per rule naming the exception.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::admission::exceptions::{ExceptionSet, ExceptionUse};
use super::admission::registration::SYSTEM_NAMESPACES;
use super::admission::review::MAX_LISTED;
use super::admission::rules::{AgentDirectory, RuleId, Violation, evaluate};
use super::admission::verdict::{ENFORCEMENT_LABEL, Enforcement};
use super::admission::workload::{Workload, from_object, is_workload_kind};
use crate::api::{MANAGED_BY, MANAGED_BY_LABEL};

/// The `policy` of every result, and the `source` of every report.
pub const POLICY: &str = "agentid";
/// Label on every report: the uid of the resource it is about.
pub const RESOURCE_UID_LABEL: &str = "agentid.dev/resource-uid";
/// Label that marks agentid's scan reports (beside [`MANAGED_BY_LABEL`]).
pub const REPORT_LABEL: &str = "agentid.dev/report";
/// Annotation with a digest of the report's findings: a rescan that finds the same writes nothing.
pub const DIGEST_ANNOTATION: &str = "agentid.dev/findings-digest";
/// Selects agentid's scan reports.
pub const REPORT_SELECTOR: &str = "app.kubernetes.io/managed-by=agentid,agentid.dev/report=scan";

/// The report API written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReportApi {
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport: Kyverno's default, read by Policy Reporter.
    #[default]
    Wgpolicyk8s,
    /// `openreports.io/v1alpha1` Report: the successor API.
    OpenReports,
}

impl ReportApi {
    pub fn group(self) -> &'static str {
        match self {
            ReportApi::Wgpolicyk8s => "wgpolicyk8s.io",
            ReportApi::OpenReports => "openreports.io",
        }
    }
    pub fn version(self) -> &'static str {
        match self {
            ReportApi::Wgpolicyk8s => "v1alpha2",
            ReportApi::OpenReports => "v1alpha1",
        }
    }
    pub fn api_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }
    pub fn kind(self) -> &'static str {
        match self {
            ReportApi::Wgpolicyk8s => "PolicyReport",
            ReportApi::OpenReports => "Report",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            ReportApi::Wgpolicyk8s => "policyreports",
            ReportApi::OpenReports => "reports",
        }
    }
}

impl std::str::FromStr for ReportApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wgpolicyk8s.io" | "wgpolicyk8s.io/v1alpha2" | "wgpolicyk8s" => Ok(ReportApi::Wgpolicyk8s),
            "openreports.io" | "openreports.io/v1alpha1" | "openreports" => Ok(ReportApi::OpenReports),
            _ => Err(format!("{s:?}: expected wgpolicyk8s.io or openreports.io")),
        }
    }
}

/// Which namespaces are governed: the same choice the webhook registration makes with its namespace
/// selectors ([`super::admission::registration::desired`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Governance {
    /// The operator's namespace: never judged.
    pub operator_namespace: String,
    /// Extra label every judged namespace must carry (`--webhook-scope`).
    pub scope: Option<(String, String)>,
    /// Judge only this namespace (`--watch-namespace`).
    pub only_namespace: Option<String>,
}

impl Governance {
    /// The enforcement mode of namespace `name` with `labels`, or `None` when admission does not judge it
    /// (no or a misspelled label, a system namespace, the operator's, out of scope).
    pub fn mode(&self, name: &str, labels: &BTreeMap<String, String>) -> Option<Enforcement> {
        if !self.in_scope(name, labels) {
            return None;
        }
        labels.get(ENFORCEMENT_LABEL)?.parse().ok()
    }

    /// Whether namespace `name` is this installation's to govern, whatever its mode: the scan deletes stale
    /// reports only there, so installations side by side (`--webhook-scope`) leave each other's alone.
    pub fn in_scope(&self, name: &str, labels: &BTreeMap<String, String>) -> bool {
        !(SYSTEM_NAMESPACES.contains(&name)
            || name == self.operator_namespace
            || self.only_namespace.as_deref().is_some_and(|only| only != name)
            || self.scope.as_ref().is_some_and(|(k, v)| labels.get(k) != Some(v)))
    }
}

/// The resource a report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// `result` of a PolicyReport result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Pass,
    Fail,
    Warn,
    Error,
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pass => "pass",
            Outcome::Fail => "fail",
            Outcome::Warn => "warn",
            Outcome::Error => "error",
            Outcome::Skip => "skip",
        }
    }
}

/// `severity` of a result, per rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }

    /// A credential in plain text is compromised already; a static Secret or a shared identity is a
    /// standing credential an agent can misuse; the default ServiceAccount and long-lived tokens widen
    /// what a stolen credential is worth.
    pub fn of(rule: RuleId) -> Severity {
        match rule {
            RuleId::HardcodedCredential => Severity::Critical,
            RuleId::StaticSecretEnv
            | RuleId::StaticSecretEnvFrom
            | RuleId::StaticSecretVolume
            | RuleId::SharedServiceAccount
            | RuleId::UnknownAgent
            | RuleId::AgentUseDenied => Severity::High,
            RuleId::DefaultServiceAccount | RuleId::LongLivedToken => Severity::Medium,
        }
    }
}

/// One result of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule id, or `judge` for an object agentid could not judge.
    pub rule: String,
    pub outcome: Outcome,
    pub severity: Severity,
    /// Admission's messages for this rule, one line per place (at most [`MAX_LISTED`], then a count).
    pub message: String,
    /// Extra `properties`: field paths, the count, the exception and its reason.
    pub properties: BTreeMap<String, String>,
}

/// The findings of one resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScan {
    pub subject: Subject,
    pub mode: Enforcement,
    pub findings: Vec<Finding>,
}

impl ResourceScan {
    /// Whether the resource needs a report at all (clean resources get none).
    pub fn has_findings(&self) -> bool {
        !self.findings.is_empty()
    }
}

/// Kinds whose controllers create the workloads below them from their template.
fn is_template_owner(api_version: &str, kind: &str) -> bool {
    is_workload_kind(api_version, kind) && kind != "Pod"
}

/// Whether `obj` is controlled by another workload (a Pod of a ReplicaSet, a ReplicaSet of a Deployment, a
/// Job of a CronJob): its findings are its owner's and are reported there.
pub fn controlled_by_workload(obj: &Value) -> bool {
    obj.pointer("/metadata/ownerReferences").and_then(Value::as_array).is_some_and(|refs| {
        refs.iter().any(|r| {
            r.get("controller").and_then(Value::as_bool) == Some(true)
                && is_template_owner(
                    r.get("apiVersion").and_then(Value::as_str).unwrap_or(""),
                    r.get("kind").and_then(Value::as_str).unwrap_or(""),
                )
        })
    })
}

fn subject_of(obj: &Value, w: Option<&Workload>, namespace: &str) -> Subject {
    let s = |p: &str| obj.pointer(p).and_then(Value::as_str).unwrap_or("").to_string();
    Subject {
        api_version: s("/apiVersion"),
        kind: w.map(|w| w.kind.clone()).unwrap_or_else(|| s("/kind")),
        namespace: namespace.to_string(),
        name: s("/metadata/name"),
        uid: s("/metadata/uid"),
    }
}

/// Judges one existing object in namespace `namespace` (mode `mode`) as admission would on CREATE (no
/// requester, so no `agent-use-denied`). `None` for objects that are not workloads or that another
/// workload controls.
pub fn scan_object(
    obj: &Value,
    namespace: &str,
    mode: Enforcement,
    agents: &dyn AgentDirectory,
    exceptions: &ExceptionSet,
    now: Timestamp,
) -> Option<ResourceScan> {
    if controlled_by_workload(obj) {
        return None;
    }
    let mut w = match from_object(obj) {
        Ok(Some(w)) => w,
        Ok(None) => return None,
        Err(e) => {
            // The apiserver stored it, so this is a shape agentid does not understand: say so (the error
            // text is already stripped of quoted values).
            let subject = subject_of(obj, None, namespace);
            let finding = Finding {
                rule: "judge".into(),
                outcome: Outcome::Error,
                severity: Severity::Medium,
                message: format!("agentid could not judge this object: {e}"),
                properties: BTreeMap::new(),
            };
            return Some(ResourceScan { subject, mode, findings: vec![finding] });
        }
    };
    w.namespace = Some(namespace.to_string());
    let (remaining, waived) = exceptions.apply(&w, evaluate(&w, agents), now);
    let subject = subject_of(obj, Some(&w), namespace);
    let findings = findings(mode, remaining, waived);
    Some(ResourceScan { subject, mode, findings })
}

/// Groups violations by rule, then waived violations by rule and exception.
pub fn findings(mode: Enforcement, remaining: Vec<Violation>, waived: Vec<ExceptionUse>) -> Vec<Finding> {
    let outcome = if mode == Enforcement::Warn { Outcome::Warn } else { Outcome::Fail };
    let mut by_rule: BTreeMap<RuleId, Vec<Violation>> = BTreeMap::new();
    for v in remaining {
        by_rule.entry(v.rule).or_default().push(v);
    }
    let mut out = Vec::new();
    for (rule, vs) in by_rule {
        let mut message = String::new();
        for v in vs.iter().take(MAX_LISTED) {
            if !message.is_empty() {
                message.push('\n');
            }
            message.push_str(&v.message);
        }
        if vs.len() > MAX_LISTED {
            let _ = write!(message, "\n… and {} more not listed", vs.len() - MAX_LISTED);
        }
        let mut properties = paths(vs.iter().map(|v| v.path.as_str()), vs.len());
        properties.insert("mode".into(), mode.as_str().into());
        out.push(Finding { rule: rule.as_str().into(), outcome, severity: Severity::of(rule), message, properties });
    }
    let mut by_waiver: BTreeMap<(RuleId, String), Vec<ExceptionUse>> = BTreeMap::new();
    for u in waived {
        by_waiver.entry((u.rule, u.exception.clone())).or_default().push(u);
    }
    for ((rule, exception), us) in by_waiver {
        let reason = us[0].reason.clone();
        let mut properties = paths(us.iter().map(|u| u.path.as_str()), us.len());
        properties.insert("exception".into(), exception.clone());
        properties.insert("reason".into(), reason.clone());
        properties.insert("mode".into(), mode.as_str().into());
        out.push(Finding {
            rule: rule.as_str().into(),
            outcome: Outcome::Skip,
            severity: Severity::of(rule),
            message: format!("[agentid/{rule}] waived by exception {exception} at {} place(s): {reason}", us.len()),
            properties,
        });
    }
    out
}

fn paths<'a>(paths: impl Iterator<Item = &'a str>, count: usize) -> BTreeMap<String, String> {
    let listed: Vec<&str> = paths.take(MAX_LISTED).collect();
    BTreeMap::from([("paths".to_string(), listed.join(", ")), ("violations".to_string(), count.to_string())])
}

/// The report's name: one per resource, by uid (stable across renames, unique), prefixed so it never
/// collides with Kyverno's reports, which are named by the bare uid.
pub fn report_name(uid: &str) -> String {
    format!("agentid-{uid}")
}

/// A digest of what the report says (not when): equal digests, nothing to write.
pub fn digest(scan: &ResourceScan) -> String {
    let mut h = Sha256::new();
    for part in [&scan.subject.api_version, &scan.subject.kind, &scan.subject.name, &scan.subject.uid] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    for f in &scan.findings {
        for part in [f.rule.as_str(), f.outcome.as_str(), f.severity.as_str(), f.message.as_str()] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for (k, v) in &f.properties {
            h.update(k.as_bytes());
            h.update([1]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
    let out = h.finalize();
    out.iter().take(16).fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The report for `scan` in `api`, as a server-side apply body; `None` when the resource is clean (its
/// report, if any, is deleted instead).
pub fn report(scan: &ResourceScan, api: ReportApi, now: Timestamp) -> Option<Value> {
    if !scan.has_findings() {
        return None;
    }
    let s = &scan.subject;
    let count = |o: Outcome| scan.findings.iter().filter(|f| f.outcome == o).count();
    let results: Vec<Value> = scan
        .findings
        .iter()
        .map(|f| {
            json!({
                "source": POLICY,
                "policy": POLICY,
                "rule": f.rule,
                "category": "agent identity",
                "result": f.outcome.as_str(),
                "severity": f.severity.as_str(),
                "scored": true,
                "message": f.message,
                "properties": f.properties,
                "timestamp": {"seconds": now.as_second(), "nanos": 0},
            })
        })
        .collect();
    let mut report = json!({
        "apiVersion": api.api_version(),
        "kind": api.kind(),
        "metadata": {
            "name": report_name(&s.uid),
            "namespace": s.namespace,
            "labels": {
                MANAGED_BY_LABEL: MANAGED_BY,
                REPORT_LABEL: "scan",
                RESOURCE_UID_LABEL: s.uid,
            },
            "annotations": {DIGEST_ANNOTATION: digest(scan)},
            "ownerReferences": [{"apiVersion": s.api_version, "kind": s.kind, "name": s.name, "uid": s.uid}],
        },
        "scope": {"apiVersion": s.api_version, "kind": s.kind, "namespace": s.namespace, "name": s.name, "uid": s.uid},
        "summary": {
            "pass": count(Outcome::Pass),
            "fail": count(Outcome::Fail),
            "warn": count(Outcome::Warn),
            "error": count(Outcome::Error),
            "skip": count(Outcome::Skip),
        },
        "results": results,
    });
    if api == ReportApi::OpenReports {
        report["source"] = json!(POLICY);
    }
    Some(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentIdentity;
    use crate::core::admission::rules::StaticDirectory;

    const AWS_KEY: &str = "AKIAQ7ZKXW4MJ2N5T3PL";
    const AWS_SECRET: &str = "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";

    fn now() -> Timestamp {
        Timestamp::from_second(1_900_000_000).unwrap()
    }

    fn pod(name: &str, spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "legacy", "uid": format!("uid-{name}")}, "spec": spec})
    }

    fn hardcoded_key_pod() -> Value {
        pod(
            "billing",
            json!({"serviceAccountName": "billing", "containers": [{"name": "app", "image": "x", "env": [
                {"name": "AWS_ACCESS_KEY_ID", "value": AWS_KEY},
                {"name": "AWS_SECRET_ACCESS_KEY", "value": AWS_SECRET}]}]}),
        )
    }

    fn default_sa_pod() -> Value {
        pod("worker", json!({"containers": [{"name": "app", "image": "x"}]}))
    }

    fn clean_pod() -> Value {
        pod("web", json!({"serviceAccountName": "web", "containers": [{"name": "app", "image": "x"}]}))
    }

    fn scan(obj: &Value, mode: Enforcement, exceptions: &ExceptionSet) -> Option<ResourceScan> {
        scan_object(obj, "legacy", mode, &StaticDirectory::default(), exceptions, now())
    }

    fn rules(s: &ResourceScan) -> Vec<(&str, Outcome)> {
        s.findings.iter().map(|f| (f.rule.as_str(), f.outcome)).collect()
    }

    #[test]
    fn a_hard_coded_key_is_one_critical_failure_without_the_key() {
        let s = scan(&hardcoded_key_pod(), Enforcement::Audit, &ExceptionSet::default()).unwrap();
        assert_eq!(rules(&s), vec![("hardcoded-credential", Outcome::Fail)]);
        let f = &s.findings[0];
        assert_eq!(f.severity, Severity::Critical);
        assert_eq!(f.properties["violations"], "2");
        assert_eq!(f.message.lines().count(), 2, "{}", f.message);
        assert!(f.message.starts_with("[agentid/hardcoded-credential] Pod legacy/billing: spec.containers[0].env[0]"));
        let text = serde_json::to_string(&report(&s, ReportApi::Wgpolicyk8s, now()).unwrap()).unwrap();
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "names the variable");
        for secret in [AWS_KEY, AWS_SECRET, "AKIAQ7", "bPxRfiCYzQ"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }

    #[test]
    fn the_default_service_account_fails_with_the_webhook_message() {
        let s = scan(&default_sa_pod(), Enforcement::Enforce, &ExceptionSet::default()).unwrap();
        assert_eq!(rules(&s), vec![("default-service-account", Outcome::Fail)]);
        // The message is the one admission gives for the same object.
        let w = from_object(&default_sa_pod()).unwrap().unwrap();
        let admission = evaluate(&w, &StaticDirectory::default());
        assert_eq!(s.findings[0].message, admission[0].message);
        assert_eq!(s.findings[0].severity, Severity::Medium);
        // In warn mode the same finding is a warning, as admission gives it there.
        let s = scan(&default_sa_pod(), Enforcement::Warn, &ExceptionSet::default()).unwrap();
        assert_eq!(rules(&s), vec![("default-service-account", Outcome::Warn)]);
        assert_eq!(s.findings[0].properties["mode"], "warn");
    }

    #[test]
    fn an_excepted_violation_is_a_skip_naming_the_exception() {
        let exceptions = ExceptionSet::parse(
            r#"
exceptions:
  - name: legacy-worker
    namespace: legacy
    workload: work*
    rules: [default-service-account]
    reason: moves to its own ServiceAccount in OPS-7
    expires: "2031-01-01T00:00:00Z"
"#,
        )
        .unwrap();
        let s = scan(&default_sa_pod(), Enforcement::Audit, &exceptions).unwrap();
        assert_eq!(rules(&s), vec![("default-service-account", Outcome::Skip)]);
        let f = &s.findings[0];
        assert_eq!(f.properties["exception"], "legacy-worker");
        assert_eq!(f.properties["reason"], "moves to its own ServiceAccount in OPS-7");
        let r = report(&s, ReportApi::Wgpolicyk8s, now()).unwrap();
        assert_eq!(r["summary"], json!({"pass": 0, "fail": 0, "warn": 0, "error": 0, "skip": 1}));
        // Once expired, it fails again.
        let later = "2031-06-01T00:00:00Z".parse().unwrap();
        let s = scan_object(
            &default_sa_pod(),
            "legacy",
            Enforcement::Audit,
            &StaticDirectory::default(),
            &exceptions,
            later,
        )
        .unwrap();
        assert_eq!(rules(&s), vec![("default-service-account", Outcome::Fail)]);
    }

    #[test]
    fn a_clean_pod_gets_no_report() {
        let s = scan(&clean_pod(), Enforcement::Enforce, &ExceptionSet::default()).unwrap();
        assert!(!s.has_findings());
        assert_eq!(report(&s, ReportApi::Wgpolicyk8s, now()), None);
    }

    #[test]
    fn the_report_is_per_resource_owned_by_it_and_in_either_api() {
        let s = scan(&hardcoded_key_pod(), Enforcement::Audit, &ExceptionSet::default()).unwrap();
        let r = report(&s, ReportApi::Wgpolicyk8s, now()).unwrap();
        assert_eq!(r["apiVersion"], "wgpolicyk8s.io/v1alpha2");
        assert_eq!(r["kind"], "PolicyReport");
        assert_eq!(r["metadata"]["name"], "agentid-uid-billing");
        assert_eq!(r["metadata"]["namespace"], "legacy");
        assert_eq!(r["metadata"]["labels"][RESOURCE_UID_LABEL], "uid-billing");
        assert_eq!(
            r["metadata"]["ownerReferences"][0],
            json!({"apiVersion": "v1", "kind": "Pod", "name": "billing", "uid": "uid-billing"})
        );
        assert_eq!(r["scope"]["kind"], "Pod");
        let res = &r["results"][0];
        assert_eq!((res["policy"].as_str(), res["rule"].as_str()), (Some("agentid"), Some("hardcoded-credential")));
        assert_eq!((res["result"].as_str(), res["severity"].as_str()), (Some("fail"), Some("critical")));
        assert_eq!(res["timestamp"], json!({"seconds": 1_900_000_000, "nanos": 0}));
        assert!(r.get("source").is_none(), "v1alpha2 has no report-level source");
        let o = report(&s, ReportApi::OpenReports, now()).unwrap();
        assert_eq!((o["apiVersion"].as_str(), o["kind"].as_str()), (Some("openreports.io/v1alpha1"), Some("Report")));
        assert_eq!(o["source"], "agentid");
        assert_eq!(o["results"], r["results"]);
    }

    #[test]
    fn the_digest_changes_with_the_findings_not_with_time() {
        let a = scan(&hardcoded_key_pod(), Enforcement::Audit, &ExceptionSet::default()).unwrap();
        let b = scan(&hardcoded_key_pod(), Enforcement::Audit, &ExceptionSet::default()).unwrap();
        assert_eq!(digest(&a), digest(&b));
        let later = report(&a, ReportApi::Wgpolicyk8s, Timestamp::from_second(2_000_000_000).unwrap()).unwrap();
        assert_eq!(later["metadata"]["annotations"][DIGEST_ANNOTATION], digest(&a).as_str());
        let warn = scan(&hardcoded_key_pod(), Enforcement::Warn, &ExceptionSet::default()).unwrap();
        assert_ne!(digest(&a), digest(&warn));
        assert_eq!(digest(&a).len(), 32);
    }

    #[test]
    fn objects_other_workloads_control_are_reported_at_their_owner() {
        let mut p = default_sa_pod();
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "w-1", "uid": "u", "controller": true}]);
        assert!(scan(&p, Enforcement::Audit, &ExceptionSet::default()).is_none());
        // Not a controller reference, or a controller that is no workload (an operator's CRD): reported.
        p["metadata"]["ownerReferences"][0]["controller"] = json!(false);
        assert!(scan(&p, Enforcement::Audit, &ExceptionSet::default()).is_some());
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "example.com/v1", "kind": "Notebook", "name": "n", "uid": "u", "controller": true}]);
        assert!(scan(&p, Enforcement::Audit, &ExceptionSet::default()).is_some());
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}});
        assert!(scan(&cm, Enforcement::Audit, &ExceptionSet::default()).is_none());
    }

    #[test]
    fn every_workload_kind_is_judged_and_agents_come_from_the_directory() {
        let agent: AgentIdentity = serde_json::from_value(json!({
            "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "bot", "namespace": "legacy"},
            "spec": {"owner": "team-a", "audiences": ["https://tools.example.com"], "tokenTTL": "15m"}}))
        .unwrap();
        let dir = StaticDirectory::new([agent].iter(), "legacy");
        let template = json!({"metadata": {"labels": {"agentid.dev/agent": "bot"}},
            "spec": {"serviceAccountName": "agent-bot", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": "i"}]}});
        let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "bot", "uid": "d1"}, "spec": {"template": template}});
        let s = scan_object(&deploy, "legacy", Enforcement::Audit, &dir, &ExceptionSet::default(), now()).unwrap();
        assert!(!s.has_findings(), "{:?}", s.findings);
        assert_eq!(s.subject.namespace, "legacy", "namespace comes from where it was listed");
        let mut unknown = deploy.clone();
        unknown["spec"]["template"]["metadata"]["labels"]["agentid.dev/agent"] = json!("ghost");
        let s = scan_object(&unknown, "legacy", Enforcement::Audit, &dir, &ExceptionSet::default(), now()).unwrap();
        assert!(rules(&s).contains(&("unknown-agent", Outcome::Fail)), "{:?}", rules(&s));
        let cron = json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c", "uid": "c1"},
            "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}}});
        let s = scan_object(&cron, "legacy", Enforcement::Audit, &dir, &ExceptionSet::default(), now()).unwrap();
        assert_eq!(rules(&s), vec![("default-service-account", Outcome::Fail)]);
        assert_eq!(s.subject.kind, "CronJob");
    }

    #[test]
    fn an_object_agentid_cannot_judge_is_an_error_result_without_values() {
        let bad = pod("odd", json!({"containers": [{"name": "c", "args": "ghp_notarealtokenbutlooksone"}]}));
        let s = scan(&bad, Enforcement::Audit, &ExceptionSet::default()).unwrap();
        assert_eq!(rules(&s), vec![("judge", Outcome::Error)]);
        let text = serde_json::to_string(&report(&s, ReportApi::Wgpolicyk8s, now()).unwrap()).unwrap();
        assert!(!text.contains("ghp_"), "{text}");
    }

    #[test]
    fn many_violations_of_one_rule_are_capped() {
        let env: Vec<Value> = (0..120)
            .map(|i| json!({"name": format!("V{i}"), "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}))
            .collect();
        let p =
            pod("many", json!({"serviceAccountName": "m", "containers": [{"name": "c", "image": "i", "env": env}]}));
        let s = scan(&p, Enforcement::Audit, &ExceptionSet::default()).unwrap();
        assert_eq!(s.findings.len(), 1);
        assert_eq!(s.findings[0].properties["violations"], "120");
        assert_eq!(s.findings[0].message.lines().count(), MAX_LISTED + 1);
        assert!(s.findings[0].message.ends_with("… and 70 more not listed"));
    }

    #[test]
    fn governed_namespaces_are_those_admission_judges() {
        let g = Governance { operator_namespace: "agentid-system".into(), scope: None, only_namespace: None };
        let labels = |v: &str| BTreeMap::from([(ENFORCEMENT_LABEL.to_string(), v.to_string())]);
        assert_eq!(g.mode("legacy", &labels("audit")), Some(Enforcement::Audit));
        assert_eq!(g.mode("legacy", &labels("warn")), Some(Enforcement::Warn));
        assert_eq!(g.mode("legacy", &labels("enforce")), Some(Enforcement::Enforce));
        assert_eq!(g.mode("legacy", &labels("Enforce")), None, "a misspelled label governs nothing");
        assert_eq!(g.mode("legacy", &BTreeMap::new()), None);
        assert_eq!(g.mode("kube-system", &labels("enforce")), None);
        assert_eq!(g.mode("agentid-system", &labels("enforce")), None);
        let scoped = Governance { scope: Some(("team".into(), "a".into())), ..g.clone() };
        assert_eq!(scoped.mode("legacy", &labels("audit")), None);
        let mut both = labels("audit");
        both.insert("team".into(), "a".into());
        assert_eq!(scoped.mode("legacy", &both), Some(Enforcement::Audit));
        assert!(!scoped.in_scope("legacy", &labels("audit")), "another installation's namespace");
        assert!(
            scoped.in_scope("legacy", &BTreeMap::from([("team".to_string(), "a".to_string())])),
            "no mode: still ours"
        );
        let only = Governance { only_namespace: Some("other".into()), ..g };
        assert_eq!(only.mode("legacy", &labels("audit")), None);
        assert!(!only.in_scope("legacy", &BTreeMap::new()));
    }

    #[test]
    fn report_apis_parse() {
        assert_eq!("wgpolicyk8s.io".parse::<ReportApi>(), Ok(ReportApi::Wgpolicyk8s));
        assert_eq!("openreports.io".parse::<ReportApi>(), Ok(ReportApi::OpenReports));
        assert!("kyverno".parse::<ReportApi>().is_err());
        assert_eq!(ReportApi::OpenReports.plural(), "reports");
    }
}
