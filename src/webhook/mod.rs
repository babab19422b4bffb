//! The HTTPS admission endpoint: an axum router over the pure admission core,
//! served with rustls. Every replica serves (no leader needed).

pub mod agents;
pub mod tokens;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::api::{AgentIdentity, FIELD_MANAGER, ToolGrant};
use crate::core::admission::exceptions::ExceptionSet;
use crate::core::admission::grants::{self, GrantReview};
use crate::core::admission::identities::{self, ObjectReview};
use crate::core::admission::registration::{self, Registration};
use crate::core::admission::review::{self, Judgement};
use crate::core::admission::review::{AdmissionRequest, AdmissionResponse, ResponseStatus, UserInfo};
use crate::core::admission::rules::AgentDirectory;
use crate::core::admission::verdict::{Enforcement, Verdict};
use crate::core::audit::admission::admission_events;
use crate::core::ratelimit::TokenBucket;
use crate::error::Result;
use crate::metrics::Metrics;
use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::PostParams;

/// Largest AdmissionReview body accepted: an object and its old version, each up to the apiserver's 3 MiB.
pub const MAX_BODY: usize = 8 * 1024 * 1024;

/// Answers "may this user do that?" (a SubjectAccessReview in production).
pub trait AccessReviewer: Send + Sync {
    fn allowed<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<bool, String>>;
}

/// [`AccessReviewer`] backed by the apiserver's SubjectAccessReview.
pub struct SubjectAccessReviewer(pub Client);

impl AccessReviewer for SubjectAccessReviewer {
    fn allowed<'a>(
        &'a self,
        user: &'a UserInfo,
        attributes: &'a ResourceAttributes,
    ) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let sar = SubjectAccessReview {
                metadata: Default::default(),
                spec: SubjectAccessReviewSpec {
                    user: Some(user.username.clone()),
                    groups: Some(user.groups.clone()),
                    uid: user.uid.clone(),
                    extra: user.extra.clone(),
                    resource_attributes: Some(attributes.clone()),
                    non_resource_attributes: None,
                },
                status: None,
            };
            let api: Api<SubjectAccessReview> = Api::all(self.0.clone());
            let res = api.create(&PostParams::default(), &sar).await.map_err(|e| e.to_string())?;
            Ok(res.status.is_some_and(|s| s.allowed))
        })
    }
}

/// Answers "does this ServiceAccount exist?" (a GET in production).
pub trait ServiceAccountLookup: Send + Sync {
    fn exists<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, String>>;
}

/// [`ServiceAccountLookup`] against the apiserver.
pub struct ApiServiceAccounts(pub Client);

impl ServiceAccountLookup for ApiServiceAccounts {
    fn exists<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            let api: Api<ServiceAccount> = Api::namespaced(self.0.clone(), namespace);
            api.get_metadata_opt(name).await.map(|sa| sa.is_some()).map_err(|e| e.to_string())
        })
    }
}

/// SubjectAccessReviews agentid may ask of the apiserver, across all admission requests: a steady rate
/// and a burst (one ToolGrant may need up to [`grants::MAX_CHECKS`]).
pub const ACCESS_CHECKS_PER_SECOND: f64 = 100.0;
pub const ACCESS_CHECKS_BURST: u32 = 400;

/// Shared state of the admission handlers.
pub struct WebhookState {
    pub agents: Arc<dyn AgentDirectory + Send + Sync>,
    pub reviewer: Arc<dyn AccessReviewer>,
    pub service_accounts: Arc<dyn ServiceAccountLookup>,
    pub exceptions: RwLock<ExceptionSet>,
    pub metrics: Arc<Metrics>,
    /// The budget of SubjectAccessReviews ([`ACCESS_CHECKS_PER_SECOND`], [`ACCESS_CHECKS_BURST`]).
    pub access_checks: Mutex<TokenBucket>,
    /// The audit trail (with `--audit-dir`): denials, warnings, audit findings and exceptions used.
    pub audit: std::sync::OnceLock<Arc<crate::audit::AuditTrail>>,
}

impl WebhookState {
    pub fn new(
        agents: Arc<dyn AgentDirectory + Send + Sync>,
        reviewer: Arc<dyn AccessReviewer>,
        service_accounts: Arc<dyn ServiceAccountLookup>,
        exceptions: ExceptionSet,
        metrics: Arc<Metrics>,
    ) -> Self {
        WebhookState {
            agents,
            reviewer,
            service_accounts,
            exceptions: RwLock::new(exceptions),
            metrics,
            access_checks: Mutex::new(TokenBucket::new(ACCESS_CHECKS_PER_SECOND, ACCESS_CHECKS_BURST)),
            audit: std::sync::OnceLock::new(),
        }
    }

    /// Takes `n` SubjectAccessReviews from the budget; `false` when the budget is spent.
    fn budget(&self, n: usize, what: &'static str) -> bool {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        let ok = self.access_checks.lock().unwrap_or_else(|p| p.into_inner()).try_take(n, std::time::Instant::now());
        if !ok {
            self.metrics.access_check_throttled(what);
        }
        ok
    }
}

const THROTTLED: &str = "agentid is asking the apiserver for too many access checks right now; try again in a moment";

/// The admission routes (no TLS here, so tests can drive it with `oneshot`).
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/validate/workloads/{mode}", post(validate_workloads))
        .route(registration::TOOLGRANT_PATH, post(validate_toolgrants))
        .route(registration::OBJECTS_PATH, post(validate_objects))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

async fn validate_workloads(Path(mode): Path<String>, State(s): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let started = Instant::now();
    let mode = match mode.parse::<Enforcement>() {
        Ok(m) => m,
        Err(e) => return (StatusCode::NOT_FOUND, e).into_response(),
    };
    let req = match review::parse(&body) {
        Ok(r) => r,
        Err(e) => {
            s.metrics.admission_bad_request(mode.as_str());
            warn!(mode = %mode, error = %e, "refused a malformed AdmissionReview");
            return (StatusCode::BAD_REQUEST, e.to_string()).into_response();
        }
    };
    // Decoded once, straight from the request's text, for both the `use` check and the judge.
    let workloads = review::Workloads::of(&req);
    // Running as an agent needs `use` on it: one SubjectAccessReview, only for agent workloads.
    let use_denied = match review::agent_use_check(&req, &workloads, s.agents.as_ref()) {
        None => None,
        Some(_) if !s.budget(1, "agent_use") => {
            let response = match mode {
                Enforcement::Enforce => deny(&req.uid, 429, THROTTLED.into()),
                _ => AdmissionResponse {
                    uid: req.uid.clone(),
                    allowed: true,
                    warnings: vec![format!("[agentid] {THROTTLED}")],
                    ..Default::default()
                },
            };
            return axum::Json(review::respond(response)).into_response();
        }
        Some(check) => match s.reviewer.allowed(&req.user_info, &check.attributes()).await {
            Ok(true) => None,
            Ok(false) => Some(check.agent),
            Err(e) => {
                warn!(error = %e, "SubjectAccessReview for agent use failed; treating as not permitted");
                Some(check.agent)
            }
        },
    };
    let judgement = {
        let exceptions = s.exceptions.read().unwrap_or_else(|p| p.into_inner());
        review::judge_with(
            &req,
            workloads,
            mode,
            s.agents.as_ref(),
            &exceptions,
            Timestamp::now(),
            use_denied.as_deref(),
        )
    };
    record(&s.metrics, mode, &req.user_info.username, &judgement, started.elapsed());
    if let Some(trail) = s.audit.get() {
        let dry_run = req.dry_run == Some(true);
        let user = &req.user_info.username;
        // Not waited for: admission is never held up by the trail (a dropped record is counted).
        for e in admission_events(mode, user, &req.uid, &req.operation, dry_run, &judgement) {
            trail.try_record(e);
        }
    }
    axum::Json(review::respond(judgement.response)).into_response()
}

fn deny(uid: &str, code: u16, message: String) -> AdmissionResponse {
    AdmissionResponse {
        uid: uid.to_string(),
        allowed: false,
        status: Some(ResponseStatus {
            code,
            message,
            reason: match code {
                403 => "Forbidden",
                429 => "TooManyRequests",
                500 => "InternalError",
                _ => "BadRequest",
            }
            .into(),
        }),
        warnings: Vec::new(),
    }
}

/// Parses an AdmissionReview for the check `what` (a metric label), or answers 400.
fn parse_review(s: &WebhookState, what: &str, body: &[u8]) -> Result<AdmissionRequest, Box<Response>> {
    review::parse(body).map_err(|e| {
        s.metrics.admission_bad_request(what);
        Box::new((StatusCode::BAD_REQUEST, e.to_string()).into_response())
    })
}

/// Counts a check's answer and wraps it into an AdmissionReview.
fn answer(s: &WebhookState, what: &str, response: AdmissionResponse) -> Response {
    s.metrics.admission_reviewed(what, if response.allowed { "allow" } else { "deny" }, 0.0);
    axum::Json(review::respond(response)).into_response()
}

/// The ToolGrant escalation check.
async fn validate_toolgrants(State(s): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let req = match parse_review(&s, "toolgrant", &body) {
        Ok(r) => r,
        Err(res) => return *res,
    };
    let response = judge_toolgrant(&s, &req).await;
    if !response.allowed {
        info!(namespace = ?req.namespace, name = ?req.name, user = %req.user_info.username, "ToolGrant refused");
    }
    answer(&s, "toolgrant", response)
}

async fn judge_toolgrant(s: &WebhookState, req: &AdmissionRequest) -> AdmissionResponse {
    let allow = AdmissionResponse { uid: req.uid.clone(), allowed: true, ..Default::default() };
    let Some(object) = &req.object else { return allow };
    let grant: ToolGrant = match serde_json::from_str(object.get()) {
        Ok(g) => g,
        Err(e) => {
            return deny(
                &req.uid,
                400,
                format!(
                    "agentid could not read this ToolGrant: {}",
                    crate::core::admission::workload::redact(&e.to_string())
                ),
            );
        }
    };
    let old = req.old_object.as_ref().and_then(|o| serde_json::from_str::<ToolGrant>(o.get()).ok());
    let review = grants::review_request(
        &req.user_info,
        &req.operation,
        req.namespace.as_deref(),
        &grant,
        old.as_ref(),
        s.agents.as_ref(),
    );
    let (namespace, checks) = match review {
        GrantReview::Allow => return allow,
        GrantReview::Refuse(e) => return deny(&req.uid, 403, format!("[agentid/{}] {e}", e.rule())),
        GrantReview::Check { namespace, checks } => (namespace, checks),
    };
    if !s.budget(checks.len(), "toolgrant") {
        return deny(&req.uid, 429, THROTTLED.into());
    }
    let user = &req.user_info;
    let pending: Vec<BoxFuture<'_, Result<bool, String>>> =
        checks.iter().map(|c| s.reviewer.allowed(user, &c.attributes)).collect();
    let answers: Vec<Result<bool, String>> = futures::stream::iter(pending).buffered(16).collect().await;
    let mut missing = Vec::new();
    for (check, answer) in checks.iter().zip(answers) {
        match answer {
            Ok(true) => {}
            Ok(false) => missing.push(check),
            Err(e) => {
                warn!(error = %e, "SubjectAccessReview failed");
                return deny(
                    &req.uid,
                    500,
                    format!(
                        "agentid could not verify the grant's permissions (SubjectAccessReview failed: {e}); try again"
                    ),
                );
            }
        }
    }
    match grants::missing_message(&user.username, &namespace, &missing) {
        Some(message) => deny(&req.uid, 403, message),
        None => allow,
    }
}

/// The check of AgentIdentities, AgentTasks and agentid status writes ([`identities`]).
async fn validate_objects(State(s): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let req = match parse_review(&s, "objects", &body) {
        Ok(r) => r,
        Err(res) => return *res,
    };
    let response = judge_object(&s, &req).await;
    if !response.allowed {
        info!(kind = %req.kind.kind, namespace = ?req.namespace, name = ?req.name, user = %req.user_info.username, "agentid object refused");
    }
    answer(&s, "objects", response)
}

async fn judge_object(s: &WebhookState, req: &AdmissionRequest) -> AdmissionResponse {
    let allow = AdmissionResponse { uid: req.uid.clone(), allowed: true, ..Default::default() };
    let namespace = req.namespace.clone().unwrap_or_default();
    let identity = match (req.kind.kind.as_str(), req.sub_resource.as_deref(), &req.object) {
        ("AgentIdentity", None, Some(o)) => match serde_json::from_str::<AgentIdentity>(o.get()) {
            Ok(a) => Some(a),
            Err(e) => {
                let e = crate::core::admission::workload::redact(&e.to_string());
                return deny(&req.uid, 400, format!("agentid could not read this AgentIdentity: {e}"));
            }
        },
        _ => None,
    };
    let review = identities::review_request(
        &req.user_info,
        &req.operation,
        &req.kind.kind,
        req.sub_resource.as_deref(),
        &namespace,
        identity.as_ref(),
        s.agents.as_ref(),
    );
    let (namespace, service_account) = match review {
        ObjectReview::Allow => return allow,
        ObjectReview::Refuse(e) => return deny(&req.uid, 403, format!("[agentid/agent-objects] {e}")),
        ObjectReview::CheckServiceAccount { namespace, service_account } => (namespace, service_account),
    };
    match s.service_accounts.exists(&namespace, &service_account).await {
        Ok(exists) => match identities::judge_service_account(&namespace, &service_account, exists) {
            Ok(()) => allow,
            Err(e) => deny(&req.uid, 403, format!("[agentid/agent-objects] {e}")),
        },
        Err(e) => {
            warn!(error = %e, "ServiceAccount lookup failed");
            deny(
                &req.uid,
                500,
                format!("agentid could not check ServiceAccount {namespace}/{service_account} ({e}); try again"),
            )
        }
    }
}

/// Metrics and the audit trail of one decision. Messages name rules and paths, never values.
fn record(metrics: &Metrics, mode: Enforcement, user: &str, j: &Judgement, took: Duration) {
    metrics.admission_reviewed(mode.as_str(), j.verdict.as_str(), took.as_secs_f64());
    let Some((kind, namespace, name)) = &j.subject else { return };
    for (i, v) in j.violations.iter().enumerate() {
        metrics.admission_violation(mode.as_str(), v.rule.as_str());
        if mode == Enforcement::Audit && i == review::MAX_LISTED {
            info!(target: "agentid::audit", mode = %mode, kind, namespace, name, user, more = j.violations.len() - i, "further admission violations not logged (audit: allowed)");
        }
        if mode == Enforcement::Audit && i < review::MAX_LISTED {
            info!(target: "agentid::audit", mode = %mode, rule = %v.rule, kind, namespace, name, path = %v.path, user, "admission violation (audit: allowed)");
        }
    }
    for u in &j.exceptions_used {
        metrics.admission_exception_used(&u.exception, u.rule.as_str());
        info!(target: "agentid::audit", exception = %u.exception, rule = %u.rule, kind, namespace, name, path = %u.path, user, reason = %u.reason, "admission exception applied");
    }
    if j.verdict == Verdict::Deny {
        info!(mode = %mode, kind, namespace, name, user, violations = j.violations.len(), "denied");
    }
}

/// Applies the ValidatingWebhookConfiguration with the current CA bundle.
pub async fn register(client: &Client, reg: &Registration) -> Result<()> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let desired = registration::desired(reg);
    api.patch(&reg.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired)).await?;
    let (policy, binding) = registration::enforcement_label_policy(reg);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let name = policy.metadata.name.clone().unwrap_or_default();
    Api::<ValidatingAdmissionPolicy>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&policy)).await?;
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&binding)).await?;
    if let Some((policy, binding)) = registration::enforcement_guard_policy(reg) {
        let name = policy.metadata.name.clone().unwrap_or_default();
        Api::<ValidatingAdmissionPolicy>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&policy)).await?;
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()).patch(&name, &pp, &Patch::Apply(&binding)).await?;
    }
    info!(name = %reg.name, "webhook configuration registered");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::AgentIdentity;
    use crate::core::admission::rules::StaticDirectory;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    /// Alice may get and list ConfigMaps, nothing else.
    struct FakeReviewer;
    impl AccessReviewer for FakeReviewer {
        fn allowed<'a>(&'a self, user: &'a UserInfo, a: &'a ResourceAttributes) -> BoxFuture<'a, Result<bool, String>> {
            let ok = user.username == "alice"
                && a.resource.as_deref() == Some("configmaps")
                && matches!(a.verb.as_deref(), Some("get" | "list"));
            Box::pin(async move { Ok(ok) })
        }
    }

    fn directory() -> StaticDirectory {
        let agent: AgentIdentity = serde_norway::from_str(
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: bot, namespace: agents}\nspec: {owner: t, audiences: [x]}",
        )
        .unwrap();
        StaticDirectory::new([agent].iter(), "default")
    }

    fn grant_review(user: &str, verbs: &str) -> Vec<u8> {
        let grant = json!({"apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant", "metadata": {"name": "g", "namespace": "agents"},
            "spec": {"agentRef": {"name": "bot"}, "kubernetesRules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": serde_json::from_str::<Value>(verbs).unwrap()}]}});
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "g1", "namespace": "agents", "operation": "CREATE", "userInfo": {"username": user}, "object": grant}}))
        .unwrap()
    }

    async fn grant_verdict(user: &str, verbs: &str) -> Value {
        let (app, _) = app();
        let (status, body) = post(app, "/validate/toolgrants", grant_review(user, verbs)).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
    }

    #[tokio::test]
    async fn toolgrants_only_carry_permissions_their_author_holds() {
        assert_eq!(grant_verdict("alice", r#"["get","list"]"#).await["allowed"], true);
        let r = grant_verdict("alice", r#"["get","delete"]"#).await;
        assert_eq!(r["allowed"], false);
        let msg = r["status"]["message"].as_str().unwrap();
        assert!(msg.contains("spec.kubernetesRules[0]: delete core/configmaps") && !msg.contains("get core"), "{msg}");
        assert_eq!(grant_verdict("bob", r#"["get"]"#).await["allowed"], false);
    }

    #[tokio::test]
    async fn an_agent_can_never_change_grants() {
        let r = grant_verdict("system:serviceaccount:agents:agent-bot", r#"["get"]"#).await;
        assert_eq!(r["allowed"], false);
        assert!(r["status"]["message"].as_str().unwrap().contains("agents can never create or change ToolGrants"));
    }

    /// Only the ServiceAccount `web` exists.
    struct FakeServiceAccounts;
    impl ServiceAccountLookup for FakeServiceAccounts {
        fn exists<'a>(&'a self, _: &'a str, name: &'a str) -> BoxFuture<'a, Result<bool, String>> {
            Box::pin(async move { Ok(name == "web") })
        }
    }

    fn state() -> WebhookState {
        WebhookState::new(
            Arc::new(directory()),
            Arc::new(FakeReviewer),
            Arc::new(FakeServiceAccounts),
            ExceptionSet::default(),
            Arc::new(Metrics::default()),
        )
    }

    fn app() -> (Router, Arc<Metrics>) {
        let state = Arc::new(state());
        let metrics = state.metrics.clone();
        (router(state), metrics)
    }

    fn object_review(user: &str, kind: &str, sub: Option<&str>, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "o1", "kind": {"group": "agentid.dev", "version": "v1alpha1", "kind": kind}, "subResource": sub,
                "namespace": "agents", "operation": "CREATE", "userInfo": {"username": user}, "object": object}}))
        .unwrap()
    }

    async fn object_verdict(user: &str, kind: &str, sub: Option<&str>, object: Value) -> Value {
        let (app, _) = app();
        let (status, body) = post(app, registration::OBJECTS_PATH, object_review(user, kind, sub, object)).await;
        assert_eq!(status, StatusCode::OK);
        serde_json::from_slice::<Value>(&body).unwrap()["response"].clone()
    }

    fn identity(name: &str, sa: Option<&str>) -> Value {
        let mut spec = json!({"owner": "t", "audiences": ["x"]});
        if let Some(sa) = sa {
            spec["serviceAccountName"] = json!(sa);
        }
        json!({"apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": name, "namespace": "agents"}, "spec": spec})
    }

    #[tokio::test]
    async fn agents_cannot_write_their_identity_tasks_or_grant_status() {
        let agent = "system:serviceaccount:agents:agent-bot";
        let task = json!({"apiVersion": "agentid.dev/v1alpha1", "kind": "AgentTask", "metadata": {"name": "t", "namespace": "agents"},
            "spec": {"agentRef": {"name": "bot"}, "purpose": "p", "audiences": ["x"], "ttl": "10m"}});
        for (kind, sub, obj) in [
            ("AgentTask", None, task.clone()),
            ("AgentIdentity", None, identity("bot", None)),
            ("ToolGrant", Some("status"), json!({})),
        ] {
            let r = object_verdict(agent, kind, sub, obj).await;
            assert_eq!(r["allowed"], false, "{kind}");
            assert!(r["status"]["message"].as_str().unwrap().contains("agents can never create or change"), "{r}");
        }
        assert_eq!(object_verdict("alice", "AgentTask", None, task).await["allowed"], true);
    }

    #[tokio::test]
    async fn identities_may_not_name_a_service_account_in_use() {
        let r = object_verdict("alice", "AgentIdentity", None, identity("squatter", Some("agent-bot"))).await;
        assert_eq!(r["allowed"], false);
        assert!(r["status"]["message"].as_str().unwrap().contains("already named by AgentIdentity \"bot\""), "{r}");
        let r = object_verdict("alice", "AgentIdentity", None, identity("grabber", Some("web"))).await;
        assert_eq!(r["allowed"], false);
        assert!(r["status"]["message"].as_str().unwrap().contains("ServiceAccount agents/web already exists"), "{r}");
        assert_eq!(object_verdict("alice", "AgentIdentity", None, identity("fresh", None)).await["allowed"], true);
    }

    #[tokio::test]
    async fn access_checks_have_a_budget() {
        let state = state();
        *state.access_checks.lock().unwrap() = TokenBucket::new(0.0, 3);
        let state = Arc::new(state);
        let app = router(state.clone());
        // Two permissions: two checks. The second grant finds one check left and is refused untried.
        let (_, body) = post(app.clone(), "/validate/toolgrants", grant_review("alice", r#"["get","list"]"#)).await;
        assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["response"]["allowed"], true);
        let (_, body) = post(app, "/validate/toolgrants", grant_review("alice", r#"["get","list"]"#)).await;
        let r = serde_json::from_slice::<Value>(&body).unwrap()["response"].clone();
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 429);
        assert!(state.metrics.encode().contains("agentid_access_checks_throttled_total{reason=\"toolgrant\"} 1"));
    }

    async fn post(app: Router, path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let req = Request::post(path).header("content-type", "application/json").body(Body::from(body)).unwrap();
        let res = app.oneshot(req).await.unwrap();
        let status = res.status();
        (status, res.into_body().collect().await.unwrap().to_bytes().to_vec())
    }

    fn review(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "abc", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "agents",
                "operation": "CREATE", "userInfo": {"username": "dev"}, "object": object}}))
        .unwrap()
    }

    fn pod(extra_env: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "agents"},
            "spec": {"serviceAccountName": "web", "containers": [{"name": "c", "image": "x", "env": extra_env}]}})
    }

    #[tokio::test]
    async fn enforce_denies_and_metrics_count_it() {
        let (app, metrics) = app();
        let env = json!([{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]);
        let (status, body) = post(app, "/validate/workloads/enforce", review(pod(env))).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["uid"], "abc");
        assert_eq!(v["response"]["allowed"], false);
        assert!(v["response"]["status"]["message"].as_str().unwrap().contains("[agentid/static-secret-env]"));
        let text = metrics.encode();
        assert!(
            text.contains("agentid_admission_violations_total{mode=\"enforce\",rule=\"static-secret-env\"} 1"),
            "{text}"
        );
        assert!(text.contains("agentid_admission_requests_total{mode=\"enforce\",verdict=\"deny\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn malformed_bodies_get_400_with_a_clear_message() {
        let (app, _) = app();
        let (status, body) = post(app.clone(), "/validate/workloads/enforce", b"{not json".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(String::from_utf8_lossy(&body).starts_with("malformed AdmissionReview"));
        let (status, _) = post(
            app.clone(),
            "/validate/workloads/enforce",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = post(app, "/validate/workloads/strict", review(pod(json!([])))).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn unknown_kinds_are_allowed() {
        let (app, _) = app();
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}});
        let (status, body) = post(app, "/validate/workloads/enforce", review(obj)).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true);
    }

    #[tokio::test]
    async fn a_one_mebibyte_pod_is_judged() {
        let (app, _) = app();
        let big = "x".repeat(1024 * 1024);
        let env = json!([{"name": "BLOB", "value": big}, {"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]);
        let body = review(pod(env));
        assert!(body.len() > 1024 * 1024);
        let (status, body) = post(app, "/validate/workloads/enforce", body).await;
        assert_eq!(status, StatusCode::OK);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], false, "judged, and the secret reference found past the 1 MiB value");
    }
}
