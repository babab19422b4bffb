//! HTTP interfaces of the decision point:
//! - **OpenID AuthZEN Authorization API 1.0**: `POST /access/v1/evaluation`, `POST /access/v1/evaluations`
//!   (batch), metadata at `/.well-known/authzen-configuration`. For agent frameworks and SDKs that ask
//!   before acting.
//! - **Forward-auth** (`/forward-auth`, any method, any sub-path) for nginx `auth_request`, Traefik
//!   ForwardAuth, Caddy `forward_auth` and Envoy's HTTP ext_authz: the original request comes from
//!   `X-Original-*` / `X-Forwarded-*` headers, the tool from `X-Agentid-Tool` (set by the proxy's
//!   configuration) or MCP's `Mcp-Method: tools/call` + `Mcp-Name`. 2xx allows; 401/403 deny, with the
//!   reason in the body and in `X-Agentid-Reason`.
//!
//! The caller always presents the agent's credential as `Authorization: Bearer` (the task token, or
//! the agent's own token with the decision point's audience). The request never says who the agent is
//! on its own: an AuthZEN `subject.id`, if given, must name the agent the credential identifies.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Answer, PdpState, Question};
use crate::api::DataSensitivity;

/// Largest AuthZEN request body.
pub const MAX_BODY: usize = 64 * 1024;
/// Most evaluations in one batch.
pub const MAX_EVALUATIONS: usize = 64;

pub fn router(state: Arc<PdpState>) -> Router {
    Router::new()
        .route("/access/v1/evaluation", post(evaluation))
        .route("/access/v1/evaluations", post(evaluations))
        .route("/.well-known/authzen-configuration", get(metadata))
        .route("/forward-auth", any(forward_auth))
        .route("/forward-auth/{*rest}", any(forward_auth))
        .route("/healthz", get(|| async { "ok" }))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let h = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

fn bad_request(message: String) -> Response {
    let body = json!({"decision": false, "context": {"reasons": ["bad-request"], "reason_admin": {"en": message}}});
    (StatusCode::BAD_REQUEST, axum::Json(body)).into_response()
}

fn sensitivity(s: &str) -> Result<DataSensitivity, String> {
    serde_json::from_value(Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("sensitivity {s:?} is not one of public, internal, confidential, restricted"))
}

/// One AuthZEN evaluation, with the batch's defaults already merged in.
#[derive(Debug, Default, Deserialize)]
struct Evaluation {
    #[serde(default)]
    subject: Option<Value>,
    #[serde(default)]
    action: Option<Value>,
    #[serde(default)]
    resource: Option<Value>,
    #[serde(default)]
    context: Option<Value>,
}

fn str_at<'a>(v: &'a Option<Value>, path: &[&str]) -> Option<&'a str> {
    let mut cur = v.as_ref()?;
    for p in path {
        cur = cur.get(p)?;
    }
    cur.as_str()
}

fn question(e: &Evaluation) -> Result<(Question, Option<String>), String> {
    let tool = str_at(&e.resource, &["id"]).ok_or("resource.id (the tool) is required")?;
    if let Some(t) = str_at(&e.resource, &["type"])
        && t != "tool"
    {
        return Err(format!("resource.type {t:?}: only \"tool\" is decided here"));
    }
    let action = str_at(&e.action, &["name"]).ok_or("action.name is required")?;
    let sens = match str_at(&e.resource, &["properties", "sensitivity"]) {
        Some(s) => Some(sensitivity(s)?),
        None => None,
    };
    let arguments = match e.resource.as_ref().and_then(|r| r.get("properties")).and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or("resource.properties.arguments: names only"))
            .collect::<Result<_, _>>()?,
        // An object of arguments: only its names are used (values are never read or logged).
        Some(Value::Object(o)) => o.keys().cloned().collect(),
        Some(_) => return Err("resource.properties.arguments must be a list of names".into()),
    };
    let q = Question {
        task: str_at(&e.context, &["task"]).map(str::to_string),
        tool: tool.to_string(),
        action: action.to_string(),
        destination: str_at(&e.resource, &["properties", "destination"]).map(str::to_string),
        sensitivity: sens,
        method: str_at(&e.action, &["properties", "method"]).or(str_at(&e.context, &["method"])).map(str::to_string),
        argument_names: arguments,
        subject: str_at(&e.subject, &["id"]).map(str::to_string),
    };
    Ok((q, None))
}

fn authzen(a: &Answer) -> Value {
    let mut context = json!({"id": a.decision_id, "decision": a.decision, "reasons": a.reasons});
    if let Some(g) = &a.grant {
        context["grant"] = json!(g);
    }
    if !a.explanation.is_empty() {
        context["reason_admin"] = json!({"en": a.explanation});
    }
    json!({"decision": a.allowed(), "context": context})
}

/// The question of an AuthZEN evaluation request body; `Err` is the bad-request explanation.
fn decode_evaluation(body: &[u8]) -> Result<Question, String> {
    let e: Evaluation = serde_json::from_slice(body).map_err(|e| {
        format!("not an AuthZEN evaluation request: {}", crate::core::admission::workload::redact(&e.to_string()))
    })?;
    question(&e).map(|(q, _)| q)
}

async fn evaluation(State(s): State<Arc<PdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let q = match decode_evaluation(&body) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let a = s.check(bearer(&headers), q).await;
    axum::Json(authzen(&a)).into_response()
}

#[derive(Deserialize)]
struct Batch {
    #[serde(flatten)]
    defaults: Evaluation,
    #[serde(default)]
    evaluations: Vec<Evaluation>,
}

/// The questions of an AuthZEN evaluations (batch) request body, each with the batch's defaults merged
/// in; `Err` when the body as a whole is refused, an item's `Err` when only that evaluation is.
fn decode_evaluations(body: &[u8]) -> Result<Vec<Result<Question, String>>, String> {
    let batch: Batch = serde_json::from_slice(body).map_err(|e| {
        format!("not an AuthZEN evaluations request: {}", crate::core::admission::workload::redact(&e.to_string()))
    })?;
    if batch.evaluations.len() > MAX_EVALUATIONS {
        return Err(format!("more than {MAX_EVALUATIONS} evaluations in one request"));
    }
    let items = if batch.evaluations.is_empty() { vec![Evaluation::default()] } else { batch.evaluations };
    let questions = items.into_iter().map(|item| {
        let merged = Evaluation {
            subject: item.subject.or(batch.defaults.subject.clone()),
            action: item.action.or(batch.defaults.action.clone()),
            resource: item.resource.or(batch.defaults.resource.clone()),
            context: item.context.or(batch.defaults.context.clone()),
        };
        question(&merged).map(|(q, _)| q)
    });
    Ok(questions.collect())
}

async fn evaluations(State(s): State<Arc<PdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let questions = match decode_evaluations(&body) {
        Ok(q) => q,
        Err(e) => return bad_request(e),
    };
    let mut out = Vec::with_capacity(questions.len());
    for q in questions {
        match q {
            Ok(q) => out.push(authzen(&s.check(bearer(&headers), q).await)),
            Err(e) => {
                out.push(json!({"decision": false, "context": {"reasons": ["bad-request"], "reason_admin": {"en": e}}}))
            }
        }
    }
    axum::Json(json!({"evaluations": out})).into_response()
}

async fn metadata(headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
    let base = format!("https://{host}");
    axum::Json(json!({
        "policy_decision_point": base,
        "access_evaluation_endpoint": format!("{base}/access/v1/evaluation"),
        "access_evaluations_endpoint": format!("{base}/access/v1/evaluations"),
    }))
    .into_response()
}

fn header_str<'a>(headers: &'a HeaderMap, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| headers.get(*n).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty()))
}

/// The question a proxy's sub-request asks, from its headers.
fn forwarded_question(method: &Method, uri: &Uri, headers: &HeaderMap) -> Result<Question, String> {
    let method = header_str(headers, &["x-original-method", "x-forwarded-method"]).unwrap_or(method.as_str());
    let path = header_str(headers, &["x-original-uri", "x-forwarded-uri"]).unwrap_or_else(|| uri.path());
    let host =
        header_str(headers, &["x-original-host", "x-forwarded-host", "host"]).ok_or("no X-Forwarded-Host or Host")?;
    let scheme = header_str(headers, &["x-original-proto", "x-forwarded-proto"]).unwrap_or("https");
    let mcp_tool = match header_str(headers, &["mcp-method"]) {
        Some("tools/call") => header_str(headers, &["mcp-name"]),
        _ => None,
    };
    let tool = header_str(headers, &["x-agentid-tool"])
        .or(mcp_tool)
        .ok_or("no tool: the proxy must send X-Agentid-Tool (or MCP's Mcp-Method: tools/call with Mcp-Name)")?;
    let action = match header_str(headers, &["x-agentid-action"]) {
        Some(a) => a.to_string(),
        None => method.to_ascii_lowercase(),
    };
    let sens = header_str(headers, &["x-agentid-sensitivity"]).map(sensitivity).transpose()?;
    if !path.starts_with('/') {
        return Err("the original URI must be a path".into());
    }
    Ok(Question {
        task: header_str(headers, &["x-agentid-task"]).map(str::to_string),
        tool: tool.to_string(),
        action,
        destination: Some(format!("{scheme}://{host}{path}")),
        sensitivity: sens,
        method: Some(method.to_string()),
        argument_names: Vec::new(),
        subject: None,
    })
}

async fn forward_auth(State(s): State<Arc<PdpState>>, method: Method, uri: Uri, headers: HeaderMap) -> Response {
    let q = match forwarded_question(&method, &uri, &headers) {
        Ok(q) => q,
        Err(e) => {
            let mut res = (
                StatusCode::FORBIDDEN,
                axum::Json(json!({"decision": "deny", "reasons": ["bad-request"], "explanation": e})),
            )
                .into_response();
            res.headers_mut().insert("x-agentid-reason", HeaderValue::from_static("bad-request"));
            return res;
        }
    };
    let a = s.check(bearer(&headers), q).await;
    let status = if a.allowed() {
        StatusCode::OK
    } else if a.unauthenticated() {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::FORBIDDEN
    };
    let mut res = (status, axum::Json(&a)).into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&a.decision_id) {
        h.insert("x-agentid-decision-id", v);
    }
    if let Some(r) = a.reasons.first().and_then(|r| HeaderValue::from_str(r).ok()) {
        h.insert("x-agentid-reason", r);
    }
    if let Some(g) = a.grant.as_deref().and_then(|g| HeaderValue::from_str(g).ok()) {
        h.insert("x-agentid-grant", g);
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    res
}

/// The request decoders, for the fuzz targets in `fuzz/` (no stable API).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// `POST /access/v1/evaluation`: the body's question.
    pub fn evaluation(body: &[u8]) -> Result<Question, String> {
        decode_evaluation(body)
    }

    /// `POST /access/v1/evaluations`: the body's questions.
    pub fn evaluations(body: &[u8]) -> Result<Vec<Result<Question, String>>, String> {
        decode_evaluations(body)
    }

    /// `/forward-auth`: the question of a proxy's sub-request, and the bearer token it presents.
    pub fn forward_auth<'a>(
        method: &Method,
        uri: &Uri,
        headers: &'a HeaderMap,
    ) -> (Result<Question, String>, Option<&'a str>) {
        (forwarded_question(method, uri, headers), bearer(headers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::jwt::KeySet;
    use crate::core::jwt::testing::{Signer, claims};
    use crate::core::pdp::caller::AccountEntry;
    use crate::core::pdp::snapshot::fixtures::{active_grant, ready_agent, tool};
    use crate::metrics::Metrics;
    use crate::pdp::budget::Budgets;
    use crate::pdp::keys::{IssuerKeys, KeySource};
    use crate::pdp::{PdpConfig, PdpState};
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    const ISS: &str = "https://kubernetes.default.svc";

    /// A ready decision point with agent `bot` (grant `crm-read`: tool crm, read, https://crm.internal/api/)
    /// and a token of its ServiceAccount for the decision point's audience.
    fn ready_state() -> (Arc<PdpState>, String) {
        let signer = Signer::new("k1");
        let keys = KeySource::fixed(IssuerKeys { issuer: ISS.into(), keys: KeySet { keys: vec![signer.jwk()] } });
        let config = PdpConfig {
            audience: "agentid-pdp".into(),
            decide: Default::default(),
            replica: "r".into(),
            ..Default::default()
        };
        let state = PdpState::new(
            config,
            "cluster.local",
            Arc::new(keys),
            Arc::new(Budgets::local()),
            Arc::new(Metrics::default()),
        );
        let agent = ready_agent("bot");
        let grant = active_grant("crm-read", "bot", vec![tool("crm", &["read"], &["https://crm.internal/api/"])]);
        {
            let mut snap = state.snapshot.write().unwrap();
            snap.upsert_agent(&agent);
            snap.upsert_grant(&grant);
        }
        let account = AccountEntry {
            uid: "agent-bot-uid".into(),
            agent: "bot".into(),
            agent_uid: agent.metadata.uid.clone().unwrap().into(),
        };
        state.accounts.write().unwrap().insert("agents", "agent-bot", account);
        state.ready.store(true, std::sync::atomic::Ordering::Release);
        let exp = k8s_openapi::jiff::Timestamp::now().as_second() + 600;
        let token = signer.sign(&claims("agents", "agent-bot", "agentid-pdp", exp, None));
        (Arc::new(state), token)
    }

    fn not_ready_state() -> Arc<PdpState> {
        let keys = KeySource::fixed(IssuerKeys { issuer: ISS.into(), keys: KeySet::default() });
        let config = PdpConfig {
            audience: "agentid-pdp".into(),
            decide: Default::default(),
            replica: "r".into(),
            ..Default::default()
        };
        Arc::new(PdpState::new(
            config,
            "cluster.local",
            Arc::new(keys),
            Arc::new(Budgets::local()),
            Arc::new(Metrics::default()),
        ))
    }

    async fn call(state: &Arc<PdpState>, req: Request<Body>) -> (StatusCode, HeaderMap, Value) {
        let res = router(state.clone()).oneshot(req).await.unwrap();
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res.into_body().collect().await.unwrap().to_bytes();
        (status, headers, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    fn evaluation(token: &str, body: &str) -> Request<Body> {
        Request::post("/access/v1/evaluation")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(body.to_string()))
            .unwrap()
    }

    fn crm(destination: &str) -> String {
        json!({"action": {"name": "read"}, "resource": {"type": "tool", "id": "crm", "properties": {"destination": destination}}})
            .to_string()
    }

    /// What a test's tracing subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The decision log line (JSON, as `--log-format json` writes it) names the arguments but never carries
    /// their values, the token, or the destination's query and fragment (threat model: information
    /// disclosure through logs).
    #[tokio::test]
    async fn the_decision_log_carries_no_token_argument_value_or_query() {
        let (state, token) = ready_state();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let body = json!({"action": {"name": "read"}, "resource": {"type": "tool", "id": "crm", "properties": {
            "destination": "https://crm.internal/api/x?apikey=QUERYVALUE#FRAGVALUE",
            "arguments": {"customer_id": "ARGVALUE-4711", "note": "ARGVALUE-0815"}}}});
        let (status, _, v) = call(&state, evaluation(&token, &body.to_string())).await;
        assert_eq!((status, &v["decision"]), (StatusCode::OK, &json!(true)), "{v}");
        let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let line = log.lines().find(|l| l.contains(r#""message":"decision""#)).unwrap_or_else(|| panic!("{log}"));
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["fields"]["destination"], "https://crm.internal/api/x", "{line}");
        assert!(line["fields"]["arguments"].as_str().is_some_and(|a| a.contains("customer_id")), "{line}");
        for secret in [token.as_str(), "QUERYVALUE", "FRAGVALUE", "ARGVALUE"] {
            assert!(!log.contains(secret), "the log carries {secret:?}: {log}");
        }
    }

    #[tokio::test]
    async fn authzen_allows_and_denies_with_reasons() {
        let (state, token) = ready_state();
        let (status, _, v) = call(&state, evaluation(&token, &crm("https://crm.internal/api/x"))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["decision"], true, "{v}");
        assert_eq!(v["context"]["grant"], "crm-read");
        let (_, _, v) = call(&state, evaluation(&token, &crm("https://crm.internal/admin"))).await;
        assert_eq!(
            (v["decision"].as_bool(), v["context"]["reasons"][0].as_str()),
            (Some(false), Some("destination-not-granted"))
        );
        // subject.id must be the credential's agent.
        let mut q: Value = serde_json::from_str(&crm("https://crm.internal/api/x")).unwrap();
        q["subject"] = json!({"type": "agent", "id": "spiffe://cluster.local/ns/agents/agent/other"});
        let (_, _, v) = call(&state, evaluation(&token, &q.to_string())).await;
        assert_eq!(v["context"]["reasons"][0], "bad-request", "{v}");
        q["subject"]["id"] = json!("spiffe://cluster.local/ns/agents/agent/bot");
        assert_eq!(call(&state, evaluation(&token, &q.to_string())).await.2["decision"], true);
        // Batch: defaults merged into each evaluation.
        let batch = json!({"action": {"name": "read"}, "evaluations": [
            {"resource": {"type": "tool", "id": "crm", "properties": {"destination": "https://crm.internal/api/a"}}},
            {"resource": {"type": "tool", "id": "crm", "properties": {"destination": "https://evil.example/api/a"}}},
            {"resource": {"type": "tool"}}]});
        let req = Request::post("/access/v1/evaluations")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::from(batch.to_string()))
            .unwrap();
        let (_, _, v) = call(&state, req).await;
        let d: Vec<bool> =
            v["evaluations"].as_array().unwrap().iter().map(|e| e["decision"].as_bool().unwrap()).collect();
        assert_eq!(d, vec![true, false, false]);
        assert_eq!(v["evaluations"][2]["context"]["reasons"][0], "bad-request");
    }

    #[tokio::test]
    async fn bad_input_is_a_clear_refusal_never_an_allow() {
        let (state, token) = ready_state();
        for body in [
            "{not json",
            "[]",
            r#"{"resource": {"id": 7}}"#,
            r#"{"action": {"name": "read"}}"#,
            r#"{"action":{"name":"read"},"resource":{"type":"file","id":"x"}}"#,
        ] {
            let (status, _, v) = call(&state, evaluation(&token, body)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
            assert_eq!(v["decision"], false);
        }
        // Sensitivity that is no level; arguments that are not names.
        let bad = json!({"action": {"name": "read"}, "resource": {"type": "tool", "id": "crm", "properties": {"sensitivity": "secret"}}});
        assert_eq!(call(&state, evaluation(&token, &bad.to_string())).await.0, StatusCode::BAD_REQUEST);
        // Oversized bodies are refused before parsing.
        let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_BODY + 1));
        assert_eq!(call(&state, evaluation(&token, &huge)).await.0, StatusCode::PAYLOAD_TOO_LARGE);
        let many: Vec<Value> = (0..MAX_EVALUATIONS + 1).map(|_| json!({})).collect();
        let req =
            Request::post("/access/v1/evaluations").body(Body::from(json!({"evaluations": many}).to_string())).unwrap();
        assert_eq!(call(&state, req).await.0, StatusCode::BAD_REQUEST);
        // No token, garbage, an expired token: unauthenticated.
        let req = Request::post("/access/v1/evaluation").body(Body::from(crm("https://crm.internal/api/x"))).unwrap();
        assert_eq!(call(&state, req).await.2["context"]["reasons"][0], "unauthenticated");
        assert_eq!(
            call(&state, evaluation("garbage", &crm("https://crm.internal/api/x"))).await.2["context"]["reasons"][0],
            "unauthenticated"
        );
        let signer = Signer::new("k1");
        let expired = signer.sign(&claims("agents", "agent-bot", "agentid-pdp", 1_000, None));
        assert_eq!(
            call(&state, evaluation(&expired, &crm("https://crm.internal/api/x"))).await.2["context"]["reasons"][0],
            "unauthenticated"
        );
    }

    #[tokio::test]
    async fn nothing_is_allowed_before_the_state_is_loaded() {
        let state = not_ready_state();
        let (_, _, v) = call(&state, evaluation("x.y.z", &crm("https://crm.internal/api/x"))).await;
        assert_eq!((v["decision"].as_bool(), v["context"]["reasons"][0].as_str()), (Some(false), Some("not-ready")));
    }

    #[tokio::test]
    async fn forward_auth_answers_with_status_codes_and_reason_headers() {
        let (state, token) = ready_state();
        let fa = |uri: &str, tool: Option<&str>, token: Option<&str>| {
            let mut b =
                Request::get("/forward-auth").header("x-original-uri", uri).header("x-forwarded-host", "crm.internal");
            if let Some(t) = tool {
                b = b.header("x-agentid-tool", t).header("x-agentid-action", "read");
            }
            if let Some(t) = token {
                b = b.header("authorization", format!("Bearer {t}"));
            }
            b.body(Body::empty()).unwrap()
        };
        let (status, headers, _) = call(&state, fa("/api/x?q=1", Some("crm"), Some(&token))).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.contains_key("x-agentid-decision-id"));
        let (status, headers, v) = call(&state, fa("/admin", Some("crm"), Some(&token))).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(headers["x-agentid-reason"], "destination-not-granted");
        assert_eq!(v["grant"], "crm-read");
        let (status, headers, _) = call(&state, fa("/api/x", Some("crm"), None)).await;
        assert_eq!((status, headers["www-authenticate"].to_str().unwrap()), (StatusCode::UNAUTHORIZED, "Bearer"));
        // MCP: the tool from Mcp-Method/Mcp-Name.
        let req = Request::post("/forward-auth")
            .header("x-original-uri", "/api/mcp")
            .header("x-forwarded-host", "crm.internal")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "crm")
            .header("x-agentid-action", "read")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(call(&state, req).await.0, StatusCode::OK);
        // No tool at all: a clear refusal.
        let (status, headers, v) = call(&state, fa("/api/x", None, Some(&token))).await;
        assert_eq!((status, headers["x-agentid-reason"].to_str().unwrap()), (StatusCode::FORBIDDEN, "bad-request"));
        assert!(v["explanation"].as_str().unwrap().contains("X-Agentid-Tool"), "{v}");
    }
}
