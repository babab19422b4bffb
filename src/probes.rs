//! Plain-HTTP health, readiness and metrics endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// Readiness of this replica: set once each component has actually started serving.
#[derive(Default)]
pub struct Readiness {
    pub controllers: AtomicBool,
    pub webhook: AtomicBool,
    /// Whether this replica serves the webhook at all (then readiness waits for it).
    pub webhook_enabled: AtomicBool,
    /// The decision point has its state (watches listed, issuer keys loaded).
    pub pdp: AtomicBool,
    /// Whether this replica serves the decision point (then readiness waits for it).
    pub pdp_enabled: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.controllers.load(Ordering::Acquire)
            && (!self.webhook_enabled.load(Ordering::Acquire) || self.webhook.load(Ordering::Acquire))
            && (!self.pdp_enabled.load(Ordering::Acquire) || self.pdp.load(Ordering::Acquire))
    }
}

#[derive(Clone)]
struct ProbeState {
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
}

pub fn router(metrics: Arc<Metrics>, ready: Arc<Readiness>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_handler))
        .with_state(ProbeState { metrics, ready })
}

async fn readyz(State(s): State<ProbeState>) -> impl IntoResponse {
    if s.ready.is_ready() { (StatusCode::OK, "ready") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready") }
}

async fn metrics_handler(State(s): State<ProbeState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], s.metrics.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn readiness_follows_the_flag_and_metrics_encode() {
        let metrics = Arc::new(Metrics::default());
        metrics.reconciled("AgentIdentity", 0.01);
        let ready = Arc::new(Readiness::default());
        let app = router(metrics, ready.clone());
        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let res = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        ready.controllers.store(true, Ordering::Release);
        let res = app.clone().oneshot(get("/readyz")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let res = app.oneshot(get("/metrics")).await.unwrap();
        let body = String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
        assert!(body.contains("agentid_reconciles_total{kind=\"AgentIdentity\"} 1"), "{body}");
    }
}
