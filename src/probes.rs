//! Plain-HTTP health, readiness and metrics endpoints (`/healthz`, `/readyz`, `/metrics`).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    /// The apiserver answered lately (see [`watch_apiserver`]): the caches admission, the broker and the
    /// decision point answer from are being kept current.
    pub apiserver: AtomicBool,
    /// Whether readiness follows the apiserver's answers ([`watch_apiserver`] runs).
    pub apiserver_enabled: AtomicBool,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.controllers.load(Ordering::Acquire)
            && (!self.webhook_enabled.load(Ordering::Acquire) || self.webhook.load(Ordering::Acquire))
            && (!self.pdp_enabled.load(Ordering::Acquire) || self.pdp.load(Ordering::Acquire))
            && (!self.apiserver_enabled.load(Ordering::Acquire) || self.apiserver.load(Ordering::Acquire))
    }
}

/// How often [`watch_apiserver`] asks the apiserver; also how long one answer may take.
pub const APISERVER_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// How long the apiserver may go without answering before the replica is no longer ready. Longer than a
/// few missed checks, so one slow answer does not take every replica out of its Service at once.
pub const APISERVER_GRACE: Duration = Duration::from_secs(10);

/// Whether the apiserver counts as reachable at `now`: it last answered at `last_ok` (never: `None`), at
/// most `grace` ago.
pub fn apiserver_reachable(last_ok: Option<tokio::time::Instant>, now: tokio::time::Instant, grace: Duration) -> bool {
    last_ok.is_some_and(|t| now.saturating_duration_since(t) <= grace)
}

/// Keeps [`Readiness::apiserver`] current, forever: asks `check` (does the apiserver answer?) every
/// `interval`, an answer later than `interval` counting as none, and marks the apiserver reachable while
/// its last answer is at most `grace` old ([`apiserver_reachable`]). The watches behind the caches retry
/// on their own; this only makes an instance cut off from the apiserver say so on `/readyz`.
pub async fn watch_apiserver<F, Fut>(ready: Arc<Readiness>, mut check: F, interval: Duration, grace: Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    ready.apiserver_enabled.store(true, Ordering::Release);
    let mut last_ok = None;
    loop {
        let answered = tokio::time::timeout(interval, check()).await.unwrap_or(false);
        let now = tokio::time::Instant::now();
        if answered {
            last_ok = Some(now);
        }
        let reachable = apiserver_reachable(last_ok, now, grace);
        if ready.apiserver.swap(reachable, Ordering::AcqRel) != reachable {
            if reachable {
                tracing::info!("the apiserver answers again: ready");
            } else {
                tracing::warn!(grace = ?grace, "the apiserver has not answered for longer than the grace: not ready");
            }
        }
        tokio::time::sleep(interval).await;
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

    #[test]
    fn the_apiserver_is_reachable_while_its_last_answer_is_within_the_grace() {
        let now = tokio::time::Instant::now();
        let grace = Duration::from_secs(10);
        assert!(!apiserver_reachable(None, now, grace), "never answered");
        assert!(apiserver_reachable(Some(now), now, grace));
        assert!(apiserver_reachable(Some(now), now + grace, grace));
        assert!(!apiserver_reachable(Some(now), now + grace + Duration::from_millis(1), grace));
        // an answer stamped after `now` (clock read earlier) is fresh, not an underflow
        assert!(apiserver_reachable(Some(now + Duration::from_secs(1)), now, grace));
    }

    #[test]
    fn readiness_waits_for_the_apiserver_only_when_it_is_watched() {
        let ready = Readiness::default();
        ready.controllers.store(true, Ordering::Release);
        assert!(ready.is_ready());
        ready.apiserver_enabled.store(true, Ordering::Release);
        assert!(!ready.is_ready());
        ready.apiserver.store(true, Ordering::Release);
        assert!(ready.is_ready());
    }

    #[tokio::test]
    async fn readiness_follows_the_apiserver_answers() {
        let ready = Arc::new(Readiness::default());
        ready.controllers.store(true, Ordering::Release);
        let answers = Arc::new(AtomicBool::new(true));
        let check = {
            let answers = answers.clone();
            move || {
                let a = answers.load(Ordering::Acquire);
                async move { a }
            }
        };
        let interval = Duration::from_millis(10);
        let watch = tokio::spawn(watch_apiserver(ready.clone(), check, interval, Duration::from_millis(50)));
        let becomes = |want: bool| {
            let ready = ready.clone();
            async move {
                for _ in 0..500 {
                    if ready.is_ready() == want {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                false
            }
        };
        assert!(becomes(true).await, "ready while the apiserver answers");
        answers.store(false, Ordering::Release);
        assert!(becomes(false).await, "not ready once it has not answered for the grace");
        answers.store(true, Ordering::Release);
        assert!(becomes(true).await, "ready again with its next answer");
        // an answer that never comes counts as none
        let hanging = Arc::new(Readiness::default());
        let never = || std::future::pending::<bool>();
        let stuck = tokio::spawn(watch_apiserver(hanging.clone(), never, interval, Duration::from_millis(20)));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(hanging.apiserver_enabled.load(Ordering::Acquire));
        assert!(!hanging.apiserver.load(Ordering::Acquire));
        watch.abort();
        stuck.abort();
    }
}
