//! `admission.k8s.io/v1` AdmissionReview in and out, and the pure decision
//! that turns one into the other. The webhook's HTTP handler only parses,
//! calls [`judge`], records and serializes.

use std::fmt::Write as _;

use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::api::AGENT_LABEL;
use serde_json::value::RawValue;

use super::exceptions::{ExceptionSet, ExceptionUse};
use super::rules::{AGENT_USE_VERB, AgentDirectory, Violation, agent_use_denied, evaluate, new_violations};
use super::verdict::{Enforcement, Verdict, decide};
use super::workload::{Workload, WorkloadError, from_json};

/// The subset of an AdmissionReview request agentid reads.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    #[serde(default)]
    pub kind: GroupVersionKind,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub operation: String,
    #[serde(default)]
    pub user_info: UserInfo,
    /// The object as the apiserver sent it, as JSON text: each check decodes only what it reads
    /// ([`Workloads::of`], or the agentid kind it judges), and nothing builds a tree of it first.
    #[serde(default)]
    pub object: Option<Box<RawValue>>,
    #[serde(default)]
    pub old_object: Option<Box<RawValue>>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extra: Option<std::collections::BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct ResponseStatus {
    pub code: u16,
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// Why a request body is not an AdmissionReview agentid can answer (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    #[error("malformed AdmissionReview: {0}")]
    Malformed(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("unsupported AdmissionReview version {0:?}: expected admission.k8s.io/v1")]
    Version(String),
}

/// Parses a request body.
pub fn parse(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let review: AdmissionReview = serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" {
        return Err(ReviewError::Version(review.api_version));
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// Wraps a response into a full AdmissionReview.
pub fn respond(response: AdmissionResponse) -> AdmissionReview {
    AdmissionReview {
        api_version: "admission.k8s.io/v1".into(),
        kind: "AdmissionReview".into(),
        request: None,
        response: Some(response),
    }
}

/// What a decision was, for logs and metrics (never contains secrets).
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub response: AdmissionResponse,
    pub verdict: Verdict,
    /// Kind, namespace and name of the judged object; `None` for objects that are not workloads.
    pub subject: Option<(String, String, String)>,
    pub violations: Vec<Violation>,
    pub exceptions_used: Vec<ExceptionUse>,
}

fn allow(uid: &str) -> AdmissionResponse {
    AdmissionResponse { uid: uid.to_string(), allowed: true, status: None, warnings: Vec::new() }
}

/// The kube-controller-manager controllers that create pods (or the objects that create pods) from a
/// template: ReplicaSets, ReplicationControllers, StatefulSets, DaemonSets, Jobs, CronJobs and
/// Deployments. Every kind they work from is judged itself when a user writes it (its template
/// included, with the `use` check), so what they create needs no second `use` check. Any other
/// ServiceAccount of kube-system is not exempt: it would let whoever runs a workload there start agents.
pub const POD_CREATING_CONTROLLERS: [&str; 7] = [
    "replicaset-controller",
    "replication-controller",
    "statefulset-controller",
    "daemon-set-controller",
    "job-controller",
    "cronjob-controller",
    "deployment-controller",
];

/// Whether `user` is one of the cluster's own controllers that create pods from templates whose author
/// was already checked: kube-controller-manager itself, or one of [`POD_CREATING_CONTROLLERS`] (with
/// `--use-service-account-credentials`).
pub fn is_system_controller(user: &str) -> bool {
    user == "system:kube-controller-manager"
        || user
            .strip_prefix("system:serviceaccount:kube-system:")
            .is_some_and(|sa| POD_CREATING_CONTROLLERS.contains(&sa))
}

/// The `use` permission a request needs: who must be allowed to run which agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUseCheck {
    pub namespace: String,
    pub agent: String,
}

impl AgentUseCheck {
    pub fn attributes(&self) -> ResourceAttributes {
        ResourceAttributes {
            namespace: Some(self.namespace.clone()),
            group: Some(crate::api::GROUP.to_string()),
            resource: Some("agentidentities".to_string()),
            verb: Some(AGENT_USE_VERB.to_string()),
            name: Some(self.agent.clone()),
            ..Default::default()
        }
    }
}

/// Running a workload as an agent hands it the agent's grants and task tokens, so the requester must
/// be allowed to `use` that AgentIdentity (like RBAC's `bind` for roles). Checked on CREATE, and on
/// UPDATE when the agent label or the pod spec changes (whoever changes an agent's code acts as it).
/// Not for the cluster's own controllers, nor for agents that do not exist or are suspended
/// (`unknown-agent` refuses those already).
pub fn agent_use_check(
    req: &AdmissionRequest,
    workloads: &Workloads,
    agents: &dyn AgentDirectory,
) -> Option<AgentUseCheck> {
    if !matches!(req.operation.as_str(), "CREATE" | "UPDATE") || is_system_controller(&req.user_info.username) {
        return None;
    }
    let Some(Ok(Some(w))) = &workloads.object else { return None };
    let namespace = w.namespace.clone().or_else(|| req.namespace.clone())?;
    let agent = w.labels.get(AGENT_LABEL)?.clone();
    if agents.agent(&namespace, &agent).is_none_or(|a| a.suspended) {
        return None;
    }
    if req.operation == "UPDATE"
        && let Some(old) = &workloads.old
        && old.labels.get(AGENT_LABEL) == Some(&agent)
        && old.pod == w.pod
    {
        return None;
    }
    Some(AgentUseCheck { namespace, agent })
}

/// The workloads of one request, decoded once for [`agent_use_check`] and [`judge_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct Workloads {
    /// `None`: the request carries no object; `Some(Ok(None))`: not a kind with a pod spec.
    pub object: Option<Result<Option<Workload>, WorkloadError>>,
    /// The old object of an UPDATE, when it is a workload agentid can read.
    pub old: Option<Workload>,
}

impl Workloads {
    pub fn of(req: &AdmissionRequest) -> Workloads {
        if req.operation == "DELETE" || req.operation == "CONNECT" {
            return Workloads { object: None, old: None };
        }
        let old = match req.operation.as_str() {
            "UPDATE" => req.old_object.as_ref().and_then(|o| from_json(o.get()).ok().flatten()),
            _ => None,
        };
        Workloads { object: req.object.as_ref().map(|o| from_json(o.get())), old }
    }
}

/// Decides one admission request under `mode`.
///
/// - Objects that carry no pod spec (any other kind) are allowed.
/// - On UPDATE only violations the old object did not have count, so metadata
///   changes to existing workloads are never blocked.
/// - enforce denies with every violation, one per line; warn allows with one
///   warning each; audit allows and only reports.
pub fn judge(
    req: &AdmissionRequest,
    mode: Enforcement,
    agents: &dyn AgentDirectory,
    exceptions: &ExceptionSet,
    now: Timestamp,
) -> Judgement {
    judge_with(req, Workloads::of(req), mode, agents, exceptions, now, None)
}

/// [`judge`], given the outcome of [`agent_use_check`]: `Some(agent)` when the requester may not run it.
pub fn judge_with(
    req: &AdmissionRequest,
    workloads: Workloads,
    mode: Enforcement,
    agents: &dyn AgentDirectory,
    exceptions: &ExceptionSet,
    now: Timestamp,
    use_denied: Option<&str>,
) -> Judgement {
    let plain_allow = |verdict| Judgement {
        response: allow(&req.uid),
        verdict,
        subject: None,
        violations: Vec::new(),
        exceptions_used: Vec::new(),
    };
    if req.operation == "DELETE" || req.operation == "CONNECT" {
        return plain_allow(Verdict::Allow);
    }
    let Some(object) = workloads.object else { return plain_allow(Verdict::Allow) };
    let workload = match object {
        Ok(Some(mut w)) => {
            if w.namespace.is_none() {
                w.namespace = req.namespace.clone();
            }
            if w.name.is_empty() {
                w.name = req.name.clone().unwrap_or_default();
            }
            w
        }
        Ok(None) => return plain_allow(Verdict::Allow),
        Err(e) => {
            // The apiserver has already decoded the object, so this means a
            // shape agentid does not understand: refuse in enforce mode rather
            // than let an unjudged workload through.
            let message = format!("agentid could not judge this object: {e}");
            let response = match mode {
                Enforcement::Enforce => AdmissionResponse {
                    uid: req.uid.clone(),
                    allowed: false,
                    status: Some(ResponseStatus { code: 400, message, reason: "BadRequest".into() }),
                    warnings: Vec::new(),
                },
                _ => AdmissionResponse { warnings: vec![message], ..allow(&req.uid) },
            };
            let verdict = if response.allowed { Verdict::Warn } else { Verdict::Deny };
            return Judgement { response, verdict, subject: None, violations: Vec::new(), exceptions_used: Vec::new() };
        }
    };
    let mut violations = evaluate(&workload, agents);
    if req.operation == "UPDATE"
        && let Some(mut old) = workloads.old
    {
        old.namespace = workload.namespace.clone();
        old.name = workload.name.clone();
        violations = new_violations(violations, &evaluate(&old, agents));
    }
    if let Some(agent) = use_denied {
        violations.push(agent_use_denied(&workload, &req.user_info.username, agent));
    }
    let (violations, exceptions_used) = exceptions.apply(&workload, violations, now);
    let verdict = decide(mode, violations.len());
    let response = match verdict {
        Verdict::Allow => allow(&req.uid),
        Verdict::Warn => AdmissionResponse { warnings: warnings(&violations), ..allow(&req.uid) },
        Verdict::Deny => AdmissionResponse {
            uid: req.uid.clone(),
            allowed: false,
            status: Some(ResponseStatus {
                code: 403,
                message: deny_message(&workload, &violations),
                reason: "Forbidden".into(),
            }),
            warnings: Vec::new(),
        },
    };
    Judgement {
        response,
        verdict,
        subject: Some((workload.kind.clone(), workload.namespace.clone().unwrap_or_default(), workload.name.clone())),
        violations,
        exceptions_used,
    }
}

/// Most violations listed in one denial or as warnings; the rest are counted. A pod with tens of
/// thousands of containers must not produce a response of megabytes.
pub const MAX_LISTED: usize = 50;

/// One warning per violation, at most [`MAX_LISTED`], then one that counts the rest.
pub fn warnings(violations: &[Violation]) -> Vec<String> {
    let mut out: Vec<String> = violations.iter().take(MAX_LISTED).map(|v| v.message.clone()).collect();
    if violations.len() > MAX_LISTED {
        out.push(format!("[agentid] and {} more violation(s) not listed", violations.len() - MAX_LISTED));
    }
    out
}

/// The text the apiserver shows after `admission webhook "..." denied the request: `: every rule
/// broken, and the first [`MAX_LISTED`] violations.
pub fn deny_message(w: &Workload, violations: &[Violation]) -> String {
    let mut rules: Vec<&str> = violations.iter().map(|v| v.rule.as_str()).collect();
    rules.sort_unstable();
    rules.dedup();
    let mut out = format!(
        "{} {}/{} breaks {} agentid rule(s) ({}):",
        w.kind,
        w.namespace.as_deref().unwrap_or("default"),
        w.name,
        violations.len(),
        rules.join(", ")
    );
    for v in violations.iter().take(MAX_LISTED) {
        out.push('\n');
        out.push_str(&v.message);
    }
    if violations.len() > MAX_LISTED {
        let _ = write!(out, "\n… and {} more not listed", violations.len() - MAX_LISTED);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::admission::rules::StaticDirectory;
    use serde_json::{Value, json};

    fn review(operation: &str, object: Value, old: Option<Value>) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "namespace": "agents", "operation": operation, "userInfo": {"username": "alice"},
                "object": object, "oldObject": old}
        }))
        .unwrap()
    }

    fn deployment(env: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "agents"},
            "spec": {"template": {"spec": {"serviceAccountName": "web", "containers": [{"name": "app", "image": "x", "env": env}]}}}})
    }

    fn secret_env() -> Value {
        json!([{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}}])
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_900_000_000).unwrap()
    }

    fn run(body: &[u8], mode: Enforcement) -> Judgement {
        judge(&parse(body).unwrap(), mode, &StaticDirectory::default(), &ExceptionSet::default(), now())
    }

    #[test]
    fn enforce_denies_with_every_violation() {
        let j = run(&review("CREATE", deployment(secret_env()), None), Enforcement::Enforce);
        assert_eq!(j.verdict, Verdict::Deny);
        assert!(!j.response.allowed);
        let status = j.response.status.unwrap();
        assert_eq!(status.code, 403);
        assert!(
            status.message.starts_with(
                "Deployment agents/web breaks 1 agentid rule(s) (static-secret-env):\n[agentid/static-secret-env]"
            ),
            "{}",
            status.message
        );
        assert_eq!(j.response.uid, "u-1");
    }

    #[test]
    fn warn_allows_with_one_warning_per_violation_and_audit_allows_silently() {
        let j = run(&review("CREATE", deployment(secret_env()), None), Enforcement::Warn);
        assert!(j.response.allowed);
        assert_eq!(j.response.warnings.len(), 1);
        assert!(j.response.warnings[0].starts_with("[agentid/static-secret-env]"));
        let j = run(&review("CREATE", deployment(secret_env()), None), Enforcement::Audit);
        assert!(j.response.allowed && j.response.warnings.is_empty());
        assert_eq!(j.violations.len(), 1, "audit still reports what it saw");
    }

    #[test]
    fn clean_workloads_and_other_kinds_are_allowed() {
        let j = run(&review("CREATE", deployment(json!([])), None), Enforcement::Enforce);
        assert!(j.response.allowed);
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}});
        let j = run(&review("CREATE", cm, None), Enforcement::Enforce);
        assert!(j.response.allowed && j.subject.is_none());
    }

    #[test]
    fn updates_are_judged_on_new_violations_only() {
        let old = deployment(secret_env());
        let mut new = old.clone();
        new["metadata"]["labels"] = json!({"team": "x"});
        let j = run(&review("UPDATE", new.clone(), Some(old.clone())), Enforcement::Enforce);
        assert!(j.response.allowed, "a label change must not be blocked by an old violation");
        new["spec"]["template"]["spec"]["volumes"] = json!([{"name": "s", "secret": {"secretName": "s"}}]);
        let j = run(&review("UPDATE", new, Some(old)), Enforcement::Enforce);
        assert!(!j.response.allowed);
        assert_eq!(j.violations.len(), 1);
    }

    fn agent_pod_review(user: &str, operation: &str, old_image: Option<&str>) -> AdmissionRequest {
        let pod = |image: &str| {
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "agents", "labels": {"agentid.dev/agent": "bot"}},
            "spec": {"serviceAccountName": "agent-bot", "automountServiceAccountToken": false, "containers": [{"name": "c", "image": image}]}})
        };
        let body = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "namespace": "agents", "operation": operation, "userInfo": {"username": user},
                "object": pod("new"), "oldObject": old_image.map(pod)}}))
        .unwrap();
        parse(&body).unwrap()
    }

    fn bot_directory() -> StaticDirectory {
        let a: crate::api::AgentIdentity = serde_norway::from_str(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot, namespace: agents}\nspec: {owner: t, audiences: [x]}",
        )
        .unwrap();
        StaticDirectory::new([a].iter(), "default")
    }

    fn use_check(req: &AdmissionRequest, agents: &dyn AgentDirectory) -> Option<AgentUseCheck> {
        agent_use_check(req, &Workloads::of(req), agents)
    }

    /// Judged in enforce mode with the `use` check of agent `bot` failed.
    fn judge_use_denied(req: &AdmissionRequest, agents: &dyn AgentDirectory) -> Judgement {
        judge_with(req, Workloads::of(req), Enforcement::Enforce, agents, &ExceptionSet::default(), now(), Some("bot"))
    }

    #[test]
    fn running_as_an_agent_needs_use_on_it() {
        let dir = bot_directory();
        let check = use_check(&agent_pod_review("dev", "CREATE", None), &dir).unwrap();
        assert_eq!(check, AgentUseCheck { namespace: "agents".into(), agent: "bot".into() });
        let attrs = check.attributes();
        assert_eq!(
            (attrs.verb.as_deref(), attrs.resource.as_deref(), attrs.name.as_deref()),
            (Some("use"), Some("agentidentities"), Some("bot"))
        );
        // The cluster's controllers create pods from templates already checked.
        assert_eq!(
            use_check(
                &agent_pod_review("system:serviceaccount:kube-system:replicaset-controller", "CREATE", None),
                &dir
            ),
            None
        );
        // Updates that change nothing of the agent's pod need no check; changing its code does.
        assert_eq!(use_check(&agent_pod_review("dev", "UPDATE", Some("new")), &dir), None);
        assert!(use_check(&agent_pod_review("dev", "UPDATE", Some("old")), &dir).is_some());
        // Unknown agents are refused by unknown-agent instead.
        assert_eq!(use_check(&agent_pod_review("dev", "CREATE", None), &StaticDirectory::default()), None);

        let req = agent_pod_review("dev", "CREATE", None);
        let j = judge_use_denied(&req, &dir);
        assert!(!j.response.allowed);
        let msg = j.response.status.unwrap().message;
        assert!(msg.contains("[agentid/agent-use-denied] Pod agents/p: metadata.labels[agentid.dev/agent] names agent \"bot\", but dev may not run it"), "{msg}");
        assert!(judge(&req, Enforcement::Enforce, &dir, &ExceptionSet::default(), now()).response.allowed);
    }

    #[test]
    fn malformed_reviews_are_errors_not_panics() {
        assert!(matches!(parse(b"not json"), Err(ReviewError::Malformed(_))));
        assert!(matches!(parse(b"{}"), Err(ReviewError::Malformed(_))));
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"x"}}"#)
                .unwrap_err(),
            ReviewError::Version("admission.k8s.io/v1beta1".into())
        );
        assert_eq!(
            parse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#).unwrap_err(),
            ReviewError::NoRequest
        );
        // A workload whose pod spec does not decode: denied in enforce, warned otherwise.
        let broken = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "b"}, "spec": {"template": {"spec": {"containers": 7}}}});
        let j = run(&review("CREATE", broken.clone(), None), Enforcement::Enforce);
        assert_eq!(j.response.status.unwrap().code, 400);
        assert!(run(&review("CREATE", broken, None), Enforcement::Warn).response.allowed);
    }

    #[test]
    fn responses_serialize_as_admission_reviews() {
        let j = run(&review("CREATE", deployment(secret_env()), None), Enforcement::Enforce);
        let v = serde_json::to_value(respond(j.response)).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["response"]["allowed"], false);
        assert_eq!(v["response"]["status"]["code"], 403);
        assert!(v.get("request").is_none());
    }

    #[test]
    fn only_the_pod_creating_controllers_of_kube_system_are_exempt_from_the_use_check() {
        assert!(is_system_controller("system:kube-controller-manager"));
        assert!(is_system_controller("system:serviceaccount:kube-system:replication-controller"));
        assert!(is_system_controller("system:serviceaccount:kube-system:replicaset-controller"));
        for not_exempt in [
            "system:serviceaccount:kube-system:default",
            "system:serviceaccount:kube-system:coredns",
            "system:serviceaccount:kube-system:replication-controller-x",
            "system:serviceaccount:other:replication-controller",
        ] {
            assert!(!is_system_controller(not_exempt), "{not_exempt}");
        }
        let dir = bot_directory();
        let req = agent_pod_review("system:serviceaccount:kube-system:default", "CREATE", None);
        assert!(agent_use_check(&req, &Workloads::of(&req), &dir).is_some());
    }

    #[test]
    fn replication_controllers_are_judged_and_need_use_on_their_agent() {
        let rc = json!({"apiVersion": "v1", "kind": "ReplicationController", "metadata": {"name": "rc", "namespace": "agents"},
            "spec": {"replicas": 1, "template": {"metadata": {"labels": {"agentid.dev/agent": "bot"}},
                "spec": {"serviceAccountName": "agent-bot", "automountServiceAccountToken": false,
                    "containers": [{"name": "c", "image": "x", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]}}}});
        let body = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "namespace": "agents", "operation": "CREATE", "userInfo": {"username": "mallory"}, "object": rc}}))
        .unwrap();
        let req = parse(&body).unwrap();
        let dir = bot_directory();
        assert_eq!(
            agent_use_check(&req, &Workloads::of(&req), &dir),
            Some(AgentUseCheck { namespace: "agents".into(), agent: "bot".into() })
        );
        let j = judge_use_denied(&req, &dir);
        assert!(!j.response.allowed);
        let msg = j.response.status.unwrap().message;
        assert!(msg.starts_with("ReplicationController agents/rc breaks 2 agentid rule(s)"), "{msg}");
        assert!(
            msg.contains("[agentid/agent-use-denied]") && msg.contains("spec.template.spec.containers[0].env[0]"),
            "{msg}"
        );
    }

    /// The object is kept as text and decoded only where agentid reads it, so JSON nested deeper than a
    /// `Value` can hold (128 levels), in a field no rule reads, does not stop the judge.
    #[test]
    fn deep_nesting_where_no_rule_reads_is_still_judged() {
        let deep = format!("{}1{}", "[".repeat(300), "]".repeat(300));
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","namespace":"agents","operation":"CREATE","userInfo":{{"username":"dev"}},
            "object":{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"p","annotations":{{"a":{deep}}}}},"spec":{{"containers":[]}}}}}}}}"#
        );
        let j = run(body.as_bytes(), Enforcement::Enforce);
        assert!(!j.response.allowed);
        assert_eq!(j.violations.len(), 1);
        assert_eq!(j.violations[0].rule.as_str(), "default-service-account");
    }

    #[test]
    fn a_pod_with_sixty_thousand_containers_gets_a_short_denial() {
        let containers: Vec<Value> = (0..60_000)
            .map(|i| json!({"name": format!("c{i}"), "image": "x", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}))
            .collect();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "agents"},
            "spec": {"serviceAccountName": "web", "containers": containers}});
        let body = serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "namespace": "agents", "operation": "CREATE", "userInfo": {"username": "dev"}, "object": pod}}))
        .unwrap();
        let j = run(&body, Enforcement::Enforce);
        assert_eq!(j.violations.len(), 60_000);
        let msg = j.response.status.clone().unwrap().message;
        assert!(msg.len() < 64 * 1024, "{} bytes", msg.len());
        assert_eq!(msg.lines().count(), 1 + MAX_LISTED + 1);
        assert!(msg.ends_with("… and 59950 more not listed"), "{}", &msg[msg.len() - 60..]);
        assert!(msg.starts_with("Pod agents/p breaks 60000 agentid rule(s) (static-secret-env):"));
        let w = run(&body, Enforcement::Warn).response.warnings;
        assert_eq!(w.len(), MAX_LISTED + 1);
        assert_eq!(w[MAX_LISTED], "[agentid] and 59950 more violation(s) not listed");
    }
}

/// Property: an UPDATE that changes nothing a rule reads never adds a violation.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;
    use crate::core::admission::rules::StaticDirectory;

    fn directory() -> StaticDirectory {
        let mut billing = crate::api::test_agent("billing");
        billing.metadata.namespace = Some("agents".into());
        let mut frozen = crate::api::test_agent("frozen");
        frozen.metadata.namespace = Some("agents".into());
        frozen.spec.suspended = true;
        StaticDirectory::new([billing, frozen].iter(), "default")
    }

    fn env_var() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(json!({"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "pw"}}})),
            Just(json!({"name": "AWS_ACCESS_KEY_ID", "value": "AKIAIOSFODNN7EXAMPLE"})),
            Just(json!({"name": "LOG_LEVEL", "value": "debug"})),
            Just(json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})),
        ]
    }

    fn container() -> impl Strategy<Value = Value> {
        (
            prop::collection::vec(env_var(), 0..3),
            prop::bool::weighted(0.3),
            prop_oneof![Just(json!(null)), Just(json!(["--token=ghp_a1B2c3D4e5a1B2c3D4e5a1B2c3D4e5a1B2c3"]))],
        )
            .prop_map(|(env, env_from, args)| {
                let mut c = json!({"name": "app", "image": "registry.example/app:1", "env": env});
                if env_from {
                    c["envFrom"] = json!([{"secretRef": {"name": "all-secrets"}}]);
                }
                if !args.is_null() {
                    c["args"] = args;
                }
                c
            })
    }

    fn pod_spec() -> impl Strategy<Value = Value> {
        (
            prop_oneof![Just("default"), Just("web"), Just("agent-billing"), Just("agent-frozen")],
            prop::option::of(any::<bool>()),
            prop::collection::vec(container(), 1..3),
            prop::bool::weighted(0.3),
        )
            .prop_map(|(sa, automount, containers, secret_volume)| {
                let mut spec = json!({"serviceAccountName": sa, "containers": containers});
                if let Some(automount) = automount {
                    spec["automountServiceAccountToken"] = json!(automount);
                }
                if secret_volume {
                    spec["volumes"] = json!([{"name": "s", "secret": {"secretName": "s"}}]);
                }
                spec
            })
    }

    /// A Pod or a Deployment in `agents`, maybe labelled as an agent (existing, suspended or unknown).
    fn workload() -> impl Strategy<Value = Value> {
        (any::<bool>(), pod_spec(), prop::option::of(prop_oneof![Just("billing"), Just("frozen"), Just("ghost")]))
            .prop_map(|(pod, spec, agent)| {
                let labels = match agent {
                    Some(a) => json!({"app": "web", "agentid.dev/agent": a}),
                    None => json!({"app": "web"}),
                };
                if pod {
                    json!({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": "web", "namespace": "agents", "labels": labels}, "spec": spec})
                } else {
                    json!({"apiVersion": "apps/v1", "kind": "Deployment",
                        "metadata": {"name": "web", "namespace": "agents", "labels": {"app": "web"}},
                        "spec": {"replicas": 1, "template": {"metadata": {"labels": labels}, "spec": spec}}})
                }
            })
    }

    /// Changes to fields no rule reads: labels other than `agentid.dev/agent`, annotations, replicas.
    fn irrelevant_change() -> impl Strategy<Value = Vec<(u8, String)>> {
        prop::collection::vec((0..5u8, "[a-z0-9]{1,8}"), 1..4)
    }

    fn apply(obj: &mut Value, changes: &[(u8, String)]) {
        let pod_meta = if obj["kind"] == "Pod" { "/metadata" } else { "/spec/template/metadata" };
        for (what, value) in changes {
            let (target, key, v) = match what {
                0 => ("/metadata", "labels", json!(value)),
                1 => (pod_meta, "labels", json!(value)),
                2 => ("/metadata", "annotations", json!(value)),
                3 => (pod_meta, "annotations", json!(value)),
                _ => {
                    if obj["kind"] != "Pod" {
                        obj["spec"]["replicas"] = json!(value.len());
                    }
                    continue;
                }
            };
            let Some(meta) = obj.pointer_mut(target) else { continue };
            let map = meta.as_object_mut().expect("metadata is an object").entry(key).or_insert_with(|| json!({}));
            map[format!("example.com/{value}")] = v;
        }
    }

    fn request(operation: &str, object: Value, old: Option<Value>) -> AdmissionRequest {
        AdmissionRequest {
            uid: "u-1".into(),
            kind: GroupVersionKind::default(),
            sub_resource: None,
            namespace: Some("agents".into()),
            name: Some("web".into()),
            operation: operation.into(),
            user_info: UserInfo { username: "alice".into(), ..Default::default() },
            object: Some(serde_json::value::to_raw_value(&object).unwrap()),
            old_object: old.map(|o| serde_json::value::to_raw_value(&o).unwrap()),
            dry_run: None,
        }
    }

    fn key(v: &Violation) -> (String, String, String) {
        (v.rule.as_str().to_string(), v.path.clone(), v.message.clone())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// For a workload and an UPDATE that only changes labels other than `agentid.dev/agent`,
        /// annotations or replicas: the new object's violations are exactly the old one's (so a subset), the
        /// UPDATE is judged with no violation and allowed in enforce mode, and it needs no agent `use` check.
        #[test]
        fn an_irrelevant_update_adds_no_denial(old in workload(), changes in irrelevant_change()) {
            let mut new = old.clone();
            apply(&mut new, &changes);
            let dir = directory();
            let now = Timestamp::from_second(1_900_000_000).expect("valid time");
            let exceptions = ExceptionSet::default();
            let created_old = judge(&request("CREATE", old.clone(), None), Enforcement::Audit, &dir, &exceptions, now);
            let created_new = judge(&request("CREATE", new.clone(), None), Enforcement::Audit, &dir, &exceptions, now);
            let old_keys: Vec<_> = created_old.violations.iter().map(key).collect();
            let new_keys: Vec<_> = created_new.violations.iter().map(key).collect();
            prop_assert_eq!(&new_keys, &old_keys);

            let update = request("UPDATE", new, Some(old));
            let j = judge(&update, Enforcement::Enforce, &dir, &exceptions, now);
            prop_assert!(j.violations.is_empty(), "{:?}", j.violations);
            prop_assert!(j.response.allowed);
            prop_assert!(agent_use_check(&update, &Workloads::of(&update), &dir).is_none());
        }
    }
}
