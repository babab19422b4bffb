//! Task-token delivery: `POST /v1/tasks/{namespace}/{name}/token`.
//!
//! The agent authenticates with its own projected ServiceAccount token (audience
//! `--token-audience`, verified with TokenReview). The answer is a fresh token
//! minted with TokenRequest on the agent's ServiceAccount, bound to the task's
//! anchor Secret and audiences. Tokens are never stored, logged or put into
//! status; the log records a short SHA-256 fingerprint instead.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
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
use crate::core::broker::{self, BrokerRefusal};
use crate::core::task;
use crate::metrics::Metrics;

pub struct Broker {
    pub client: Client,
    /// Audience the callers' own tokens must carry.
    pub audience: String,
    pub metrics: Arc<Metrics>,
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
    res
}

async fn issue(
    Path((namespace, name)): Path<(String, String)>,
    State(b): State<Arc<Broker>>,
    headers: HeaderMap,
) -> Response {
    match mint(&b, &namespace, &name, &headers).await {
        Ok(res) => res,
        Err(Failure::Refused(r)) => {
            b.metrics.token_refused(r.label());
            info!(namespace, task = %name, reason = r.label(), "task token refused");
            refuse(r)
        }
        Err(Failure::Api(e)) => {
            b.metrics.token_refused("api_error");
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

async fn mint(b: &Broker, namespace: &str, name: &str, headers: &HeaderMap) -> Result<Response, Failure> {
    let bearer = broker::bearer(headers.get(header::AUTHORIZATION).and_then(|h| h.to_str().ok()))?;
    let review = TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec { token: bearer.to_string(), audiences: Some(vec![b.audience.clone()]) },
        status: None,
    };
    let reviewed = Api::<TokenReview>::all(b.client.clone()).create(&PostParams::default(), &review).await?;
    let status = reviewed.status.unwrap_or_default();
    let username = broker::authenticated_user(&status, &b.audience)?.to_string();

    let Some(task) = Api::<AgentTask>::namespaced(b.client.clone(), namespace).get_opt(name).await? else {
        // Say "not found" only to callers from that namespace.
        return Err(if broker::caller_namespace(&username) == Some(namespace) {
            BrokerRefusal::NotFound(format!("no AgentTask {namespace}/{name}")).into()
        } else {
            BrokerRefusal::Forbidden(format!("{username} may not have tokens of AgentTask {namespace}/{name}")).into()
        });
    };
    let agent = Api::<AgentIdentity>::namespaced(b.client.clone(), namespace)
        .get_opt(&task.spec.agent_ref.name)
        .await?
        .ok_or_else(|| {
            BrokerRefusal::Forbidden(format!("{username} may not have tokens of AgentTask {namespace}/{name}"))
        })?;
    broker::authorize(&username, &task, &agent)?;
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

    #[test]
    fn fingerprints_are_short_and_stable_and_not_the_token() {
        let f = fingerprint("secret-token-value");
        assert_eq!(f.len(), 16);
        assert_eq!(f, fingerprint("secret-token-value"));
        assert!(!f.contains("secret"));
    }
}
