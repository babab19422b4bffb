//! Receives the kube-apiserver's audit events (its webhook backend, `--audit-webhook-config-file`; or a
//! log shipper posting the lines of an audit log file) and records agents' own API calls in the trail
//! ([`crate::core::audit::apicall`] decides what is kept).
//!
//! Served on the admission listener, which only the apiserver can reach with its client certificate
//! (`--webhook-client-ca-file`): without that, anyone who reaches the port could write records, so
//! `agentid run` refuses `--audit-apiserver-events` unless the listener requires client certificates.
//! A batch is answered 200 once every record of it is written; if the trail cannot write, 503, and the
//! apiserver's batch backend retries (a retried batch may repeat records: they carry the apiserver's
//! audit id in `request`, so readers can tell).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tracing::warn;

use super::AuditTrail;
use crate::core::admission::rules::AgentDirectory;
use crate::core::audit::apicall::{parse_batch, to_event};

/// Where the apiserver posts its audit event batches.
pub const PATH: &str = "/audit/apiserver";
/// Largest batch accepted (the apiserver's default batch is 400 events; Metadata events are ~1–2 KB).
pub const MAX_BODY: usize = 16 << 20;

pub struct IngestState {
    pub trail: Arc<AuditTrail>,
    pub agents: Arc<dyn AgentDirectory + Send + Sync>,
    pub trust_domain: String,
}

/// The route that takes the apiserver's audit events (no TLS here: tests drive it with `oneshot`).
pub fn router(state: Arc<IngestState>) -> Router {
    Router::new().route(PATH, post(ingest)).layer(DefaultBodyLimit::max(MAX_BODY)).with_state(state)
}

async fn ingest(State(s): State<Arc<IngestState>>, body: Bytes) -> Response {
    let items = match parse_batch(&body) {
        Ok(items) => items,
        Err(e) => {
            s.trail.metrics().apiserver_event("malformed");
            return (StatusCode::BAD_REQUEST, format!("not audit.k8s.io/v1 events: {e}\n")).into_response();
        }
    };
    let events: Vec<_> = items
        .iter()
        .filter_map(|e| {
            let ev = to_event(e, &s.trust_domain, |ns, sa| s.agents.agent_of_service_account(ns, sa));
            if ev.is_none() {
                s.trail.metrics().apiserver_event("ignored");
            }
            ev
        })
        .collect();
    let n = events.len();
    // All at once: the writer batches them into one write.
    let results = futures::future::join_all(events.into_iter().map(|e| s.trail.record(e))).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    for _ in 0..n - failed {
        s.trail.metrics().apiserver_event("recorded");
    }
    if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
        warn!(error = %e, failed, of = n, "apiserver audit events not recorded; the apiserver will retry the batch");
        return (StatusCode::SERVICE_UNAVAILABLE, "the audit trail cannot write; retry\n").into_response();
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditConfig, AuditMetrics, keys::AuditKeys};
    use crate::core::admission::rules::AgentInfo;
    use crate::metrics::ReasonLabels;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    struct OneAgent;
    impl AgentDirectory for OneAgent {
        fn agent(&self, _: &str, _: &str) -> Option<AgentInfo> {
            None
        }
        fn agent_of_service_account(&self, ns: &str, sa: &str) -> Option<String> {
            (ns == "team-a" && sa == "agentid-billing").then(|| "billing".into())
        }
        fn claimants_of_service_account(&self, _: &str, _: &str) -> Vec<String> {
            vec![]
        }
    }

    fn batch(users: &[&str]) -> Vec<u8> {
        let items: Vec<_> = users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                serde_json::json!({
                    "auditID": format!("id-{i}"), "stage": "ResponseComplete", "verb": "get",
                    "requestURI": "/api/v1/namespaces/team-a/secrets/db-creds",
                    "user": {"username": u}, "responseStatus": {"code": 200}
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": items}))
            .unwrap()
    }

    async fn post(app: Router, body: Vec<u8>) -> StatusCode {
        app.oneshot(Request::post(PATH).body(Body::from(body)).unwrap()).await.unwrap().status()
    }

    #[tokio::test]
    async fn agents_calls_are_recorded_and_others_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(AuditMetrics::default());
        let (trail, _w) = AuditTrail::open(
            AuditConfig::new(dir.path(), "r1"),
            AuditKeys::generate().unwrap().0,
            None,
            metrics.clone(),
        )
        .unwrap();
        let app = router(Arc::new(IngestState {
            trail: trail.clone(),
            agents: Arc::new(OneAgent),
            trust_domain: "td".into(),
        }));
        let users =
            ["system:serviceaccount:team-a:agentid-billing", "admin", "system:serviceaccount:team-a:agentid-billing"];
        assert_eq!(post(app.clone(), batch(&users)).await, StatusCode::OK);
        assert_eq!(post(app.clone(), b"{not json".to_vec()).await, StatusCode::BAD_REQUEST);
        trail.checkpoint().await.unwrap();
        let text = std::fs::read_to_string(trail.segment_path(0)).unwrap();
        let calls: Vec<&str> = text.lines().filter(|l| l.contains("\"kind\":\"api-call\"")).collect();
        assert_eq!(calls.len(), 2, "{text}");
        assert!(calls.iter().all(|l| l.contains("\"agent\":\"billing\"") && l.contains("/secrets/db-creds")));
        assert_eq!(metrics.written.get(), 2);
        let count = |o: &str| metrics.apiserver_events.get_or_create(&ReasonLabels { reason: o.into() }).get();
        assert_eq!((count("recorded"), count("ignored"), count("malformed")), (2, 1, 1));
        // A trail that cannot write: 503 so the apiserver retries.
        let closed = Arc::new(AuditTrail::closed_for_tests());
        let app =
            router(Arc::new(IngestState { trail: closed, agents: Arc::new(OneAgent), trust_domain: "td".into() }));
        assert_eq!(post(app, batch(&users[..1])).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}
