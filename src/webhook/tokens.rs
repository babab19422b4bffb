//! Task-token delivery: `POST /v1/tasks/{namespace}/{name}/token`.
//!
//! The agent authenticates with its own projected ServiceAccount token (audience
//! `--token-audience`, verified with TokenReview). The answer is a fresh token
//! minted with TokenRequest on the agent's ServiceAccount, bound to the task's
//! anchor Secret and audiences. Tokens are never stored, logged or put into
//! status; the log records a short SHA-256 fingerprint instead.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::api::{AgentIdentity, AgentTask, TaskPhase};
use crate::audit::{AuditError, AuditTrail};
use crate::core::audit::{Event, Kind};
use crate::core::broker::{self, BrokerRefusal};
use crate::core::ratelimit::{ExpiringSet, KeyedBuckets};
use crate::core::task;
use crate::metrics::Metrics;

/// TokenReviews one peer address may cause: a steady rate and a burst.
pub const REVIEWS_PER_PEER_PER_SECOND: f64 = 5.0;
pub const REVIEWS_PER_PEER_BURST: u32 = 20;
/// How long a token the apiserver refused is refused again without asking.
pub const REFUSED_TOKEN_TTL: Duration = Duration::from_secs(10);

pub struct Broker {
    pub client: Client,
    /// Audience the callers' own tokens must carry.
    pub audience: String,
    pub metrics: Arc<Metrics>,
    /// TokenReviews per peer address.
    reviews: Mutex<KeyedBuckets<IpAddr>>,
    /// SHA-256 of tokens the apiserver refused lately.
    refused: Mutex<ExpiringSet<[u8; 32]>>,
    /// The audit trail, when one is configured: every token issued is recorded first (no record, no
    /// token), and every refusal.
    pub audit: OnceLock<Arc<AuditTrail>>,
}

impl Broker {
    pub fn new(client: Client, audience: String, metrics: Arc<Metrics>) -> Self {
        Broker {
            client,
            audience,
            metrics,
            reviews: Mutex::new(KeyedBuckets::new(REVIEWS_PER_PEER_PER_SECOND, REVIEWS_PER_PEER_BURST, 65_536)),
            refused: Mutex::new(ExpiringSet::new(REFUSED_TOKEN_TTL, 65_536)),
            audit: OnceLock::new(),
        }
    }
}

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new().route("/v1/tasks/{namespace}/{name}/token", post(issue)).with_state(broker)
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenResponse {
    token: String,
    expiration_timestamp: Option<String>,
    audiences: Vec<String>,
}

/// Short fingerprint of a token for audit logs (never the token).
pub fn fingerprint(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn refuse(r: BrokerRefusal) -> Response {
    let status = StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::FORBIDDEN);
    let mut res = (status, axum::Json(serde_json::json!({ "error": r.to_string() }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        res.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    res
}

async fn issue(
    Path((namespace, name)): Path<(String, String)>,
    State(b): State<Arc<Broker>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    match mint(&b, &namespace, &name, &headers, peer).await {
        Ok(res) => res,
        Err(Failure::Refused(r)) => {
            b.metrics.token_refused(r.label());
            // A 400's path is not a task; anything else names one. The refusal stands either way.
            let task = (!matches!(r, BrokerRefusal::BadRequest(_))).then_some((namespace.as_str(), name.as_str()));
            let _ = audit_refusal(&b, task, r.label()).await;
            // The path of a 400 is not echoed: it may be anything.
            match &r {
                BrokerRefusal::BadRequest(_) => info!(reason = r.label(), "task token refused"),
                _ => info!(namespace, task = %name, reason = r.label(), "task token refused"),
            }
            refuse(r)
        }
        Err(Failure::Audit(e)) => {
            b.metrics.token_refused("audit_unavailable");
            warn!(namespace, task = %name, error = %e, "task token not issued: the audit trail cannot record it");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "error": "the audit trail cannot record the token, so none is issued; try again" })),
            )
                .into_response()
        }
        Err(Failure::Api(e)) => {
            b.metrics.token_refused("api_error");
            let _ = audit_refusal(&b, Some((&namespace, &name)), "api_error").await;
            warn!(namespace, task = %name, error = %e, "task token failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({ "error": "the Kubernetes API did not answer; try again" })),
            )
                .into_response()
        }
    }
}

enum Failure {
    Refused(BrokerRefusal),
    Api(kube::Error),
    /// The trail could not record the token: fail closed.
    Audit(AuditError),
}

/// Records a refused token request (best effort: the request is refused whatever happens here).
async fn audit_refusal(b: &Broker, task: Option<(&str, &str)>, reason: &str) -> Result<(), AuditError> {
    let Some(trail) = b.audit.get() else { return Ok(()) };
    let mut e = Event::new(Kind::TaskTokenRefused);
    if let Some((ns, name)) = task {
        e.namespace = Some(ns.to_string());
        e.task = Some(name.to_string());
    }
    e.decision = Some("refused".into());
    e.reasons = vec![reason.to_string()];
    trail.record(e).await
}

impl From<BrokerRefusal> for Failure {
    fn from(r: BrokerRefusal) -> Self {
        Failure::Refused(r)
    }
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        Failure::Api(e)
    }
}

async fn mint(
    b: &Broker,
    namespace: &str,
    name: &str,
    headers: &HeaderMap,
    peer: Option<IpAddr>,
) -> Result<Response, Failure> {
    broker::task_path(namespace, name)?;
    let bearer = broker::bearer(headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()))?;
    let username = review_token(b, bearer, peer).await?;
    if let Some(refusal) = broker::foreign_caller(&username, namespace, name) {
        return Err(refusal.into());
    }
    issue_for(b, namespace, name, &username).await
}

/// The user an agent's own token authenticates, through a TokenReview — only for JWT-shaped tokens not
/// refused lately, within the peer's budget of reviews.
async fn review_token(b: &Broker, bearer: &str, peer: Option<IpAddr>) -> Result<String, Failure> {
    let invalid =
        || BrokerRefusal::Unauthenticated("the token is not valid (expired, revoked or not a Kubernetes token)".into());
    if !broker::looks_like_jwt(bearer) {
        return Err(invalid().into());
    }
    let hash: [u8; 32] = Sha256::digest(bearer.as_bytes()).into();
    let now = std::time::Instant::now();
    if b.refused.lock().unwrap_or_else(|p| p.into_inner()).contains(&hash, now) {
        return Err(invalid().into());
    }
    if let Some(ip) = peer
        && !b.reviews.lock().unwrap_or_else(|p| p.into_inner()).try_take(&ip, now)
    {
        b.metrics.access_check_throttled("token_review");
        return Err(BrokerRefusal::TooManyRequests(
            "too many token requests from this address; try again in a moment".into(),
        )
        .into());
    }
    let review = TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec { token: bearer.to_string(), audiences: Some(vec![b.audience.clone()]) },
        status: None,
    };
    let reviewed = Api::<TokenReview>::all(b.client.clone()).create(&PostParams::default(), &review).await?;
    let status = reviewed.status.unwrap_or_default();
    match broker::authenticated_user(&status, &b.audience) {
        Ok(user) => Ok(user.to_string()),
        Err(r) => {
            b.refused.lock().unwrap_or_else(|p| p.into_inner()).insert(hash, std::time::Instant::now());
            Err(r.into())
        }
    }
}

async fn issue_for(b: &Broker, namespace: &str, name: &str, username: &str) -> Result<Response, Failure> {
    // Callers from other namespaces were refused before: "not found" is said only within the namespace.
    let Some(task) = Api::<AgentTask>::namespaced(b.client.clone(), namespace).get_opt(name).await? else {
        return Err(BrokerRefusal::NotFound(format!("no AgentTask {namespace}/{name}")).into());
    };
    let agent = Api::<AgentIdentity>::namespaced(b.client.clone(), namespace)
        .get_opt(&task.spec.agent_ref.name)
        .await?
        .ok_or_else(|| {
            BrokerRefusal::Forbidden(format!("{username} may not have tokens of AgentTask {namespace}/{name}"))
        })?;
    broker::authorize(username, &task, &agent)?;
    let anchor: Secret = Api::<Secret>::namespaced(b.client.clone(), namespace)
        .get_opt(&task::anchor_name(name))
        .await?
        .ok_or_else(|| BrokerRefusal::NotActive(format!("AgentTask {namespace}/{name} is not Active")))?;
    // Decide afresh rather than trust status alone: the controller (leader only) may not have seen
    // `completed: true` or the expiry yet, and every replica serves this endpoint.
    let now = Timestamp::now();
    let decision = task::decide(&task, Some(&agent), task::issued_at(&task, Some(&anchor)), now);
    if decision.phase != TaskPhase::Active || decision.expires_at.is_some_and(|e| e <= now) {
        let phase = decision.phase;
        return Err(BrokerRefusal::NotActive(format!("AgentTask {namespace}/{name} is not Active ({phase:?})")).into());
    }
    let request =
        task::token_request(&task, &agent, &anchor, now).map_err(|e| BrokerRefusal::NotActive(e.to_string()))?;
    let sa_api: Api<ServiceAccount> = Api::namespaced(b.client.clone(), namespace);
    let minted = sa_api.create_token_request(&agent.service_account_name(), &PostParams::default(), &request).await?;
    let status = minted.status.ok_or_else(|| BrokerRefusal::NotActive("the apiserver issued no token".into()))?;
    let token = status
        .token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| BrokerRefusal::NotActive("the apiserver issued no token".into()))?;
    let expires = status.expiration_timestamp.map(|t| t.0.to_string());
    if let Some(trail) = b.audit.get() {
        let mut e = Event::new(Kind::TaskTokenIssued);
        e.actor = Some(username.to_string());
        e.namespace = Some(namespace.to_string());
        e.agent = agent.metadata.name.clone();
        e.task = Some(name.to_string());
        e.decision = Some("issued".into());
        // The apiserver's credential id of the token (`JTI=…`): its audit events of the calls made with
        // the token carry the same id, which joins them to this task. A keyed fingerprint otherwise.
        e.credential = Some(match crate::core::jwt::unverified_id(&token) {
            Some(jti) => crate::core::audit::apicall::credential_id_of_jti(&jti),
            None => trail.fingerprint(&token),
        });
        // No record, no token: the minted token is dropped unseen (it dies with the task's anchor).
        trail.record(e).await.map_err(Failure::Audit)?;
    }
    b.metrics.token_issued();
    info!(namespace, task = %name, agent = %agent.metadata.name.as_deref().unwrap_or_default(),
        fingerprint = %fingerprint(&token), expires = ?expires, "task token issued");
    let body = TokenResponse { token, expiration_timestamp: expires, audiences: task.spec.audiences.clone() };
    let mut res = axum::Json(body).into_response();
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use base64::Engine;
    use tower::ServiceExt;

    /// A broker whose apiserver does not exist: any request that reaches the API answers 503.
    fn broker() -> Arc<Broker> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        Arc::new(Broker::new(Client::try_from(config).unwrap(), "agentid".into(), Arc::new(Metrics::default())))
    }

    async fn call(b: &Arc<Broker>, path: &str, bearer: &str, peer: &str) -> (StatusCode, String) {
        let mut req =
            Request::post(path).header("authorization", format!("Bearer {bearer}")).body(Body::empty()).unwrap();
        let peer: SocketAddr = peer.parse().unwrap();
        req.extensions_mut().insert(ConnectInfo(peer));
        let res = router(b.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let body = http_body_util::BodyExt::collect(res.into_body()).await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn jwt(n: u32) -> String {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        format!("{}.{}.c2ln", enc(r#"{"alg":"RS256"}"#), enc(&format!(r#"{{"n":{n}}}"#)))
    }

    #[tokio::test]
    async fn bad_paths_are_refused_before_any_api_call() {
        let b = broker();
        // `tx%3FdryRun%3DAll` decodes to `tx?dryRun=All`: a 400, never an apiserver URL.
        let (status, body) = call(&b, "/v1/tasks/agents/tx%3FdryRun%3DAll/token", &jwt(1), "127.0.0.1:9").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.contains("dryRun"), "the path is not echoed: {body}");
        let (status, _) = call(&b, "/v1/tasks/Agents/t/token", &jwt(1), "127.0.0.1:9").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn garbage_bearers_cost_no_token_review() {
        let b = broker();
        for bad in ["garbage", "a.b.c", "x"] {
            let (status, _) = call(&b, "/v1/tasks/agents/t/token", bad, "127.0.0.1:9").await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}: refused locally (a review would have been a 503)");
        }
    }

    #[tokio::test]
    async fn token_reviews_are_rate_limited_per_peer() {
        let b = broker();
        let mut statuses = Vec::new();
        for n in 0..REVIEWS_PER_PEER_BURST + 5 {
            statuses.push(call(&b, "/v1/tasks/agents/t/token", &jwt(n), "127.0.0.2:9").await.0);
        }
        // The first ones reach the (absent) apiserver; past the burst the peer is told to slow down.
        assert_eq!(statuses[0], StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(*statuses.last().unwrap(), StatusCode::TOO_MANY_REQUESTS);
        assert!(
            statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count()
                <= REVIEWS_PER_PEER_BURST as usize + 1
        );
        // Another peer has its own budget.
        assert_eq!(
            call(&b, "/v1/tasks/agents/t/token", &jwt(99), "127.0.0.3:9").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refusals_are_recorded_in_the_audit_trail() {
        let b = broker();
        let dir = tempfile::tempdir().unwrap();
        let keys = crate::audit::AuditKeys::generate().unwrap().0;
        let config = crate::audit::AuditConfig::new(dir.path(), "r");
        let metrics = Arc::new(crate::audit::AuditMetrics::default());
        let (trail, _) = AuditTrail::open(config, keys, None, metrics).unwrap();
        assert!(b.audit.set(trail.clone()).is_ok());
        let (status, _) = call(&b, "/v1/tasks/agents/t1/token", "garbage", "127.0.0.1:9").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let text = std::fs::read_to_string(trail.segment_path(0)).unwrap();
        let r: crate::core::audit::Record = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(r.kind, Kind::TaskTokenRefused);
        assert_eq!((r.namespace.as_deref(), r.task.as_deref()), (Some("agents"), Some("t1")));
        assert_eq!(r.reasons, ["unauthenticated"]);
        assert!(!text.contains("garbage"), "never the credential");
    }

    #[test]
    fn fingerprints_are_short_and_stable_and_not_the_token() {
        let f = fingerprint("secret-token-value");
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint("secret-token-value"));
        assert!(!f.contains("secret"));
    }
}
