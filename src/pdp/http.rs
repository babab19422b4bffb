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

async fn evaluation(State(s): State<Arc<PdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let e: Evaluation = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return bad_request(format!(
                "not an AuthZEN evaluation request: {}",
                crate::core::admission::workload::redact(&e.to_string())
            ));
        }
    };
    let (q, _) = match question(&e) {
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

async fn evaluations(State(s): State<Arc<PdpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let batch: Batch = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => {
            return bad_request(format!(
                "not an AuthZEN evaluations request: {}",
                crate::core::admission::workload::redact(&e.to_string())
            ));
        }
    };
    if batch.evaluations.len() > MAX_EVALUATIONS {
        return bad_request(format!("more than {MAX_EVALUATIONS} evaluations in one request"));
    }
    let items = if batch.evaluations.is_empty() { vec![Evaluation::default()] } else { batch.evaluations };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let merged = Evaluation {
            subject: item.subject.or(batch.defaults.subject.clone()),
            action: item.action.or(batch.defaults.action.clone()),
            resource: item.resource.or(batch.defaults.resource.clone()),
            context: item.context.or(batch.defaults.context.clone()),
        };
        match question(&merged) {
            Ok((q, _)) => out.push(authzen(&s.check(bearer(&headers), q).await)),
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
