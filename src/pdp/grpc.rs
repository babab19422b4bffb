//! Envoy's external authorization over gRPC: `envoy.service.auth.v3.Authorization/Check` (ext_authz v3),
//! the protocol most enforcement points speak (Envoy, Istio, Envoy Gateway, and every gateway built on
//! them). Served next to the HTTP interfaces on the decision point's TLS listener (HTTP/2, by ALPN).
//!
//! The question comes from the `CheckRequest`:
//! - the credential: `Authorization: Bearer` of the original request (header keys are lower-case);
//! - the tool: MCP first — `Mcp-Method: tools/call` with `Mcp-Name`, and the JSON-RPC body
//!   `{"method": "tools/call", "params": {"name", "arguments"}}` when the proxy sends it
//!   (`with_request_body`); headers and body must agree, and the argument *names* (never values) come from
//!   the body. A body needed but truncated (`x-envoy-auth-partial-body: true`), larger than
//!   [`MAX_BODY`] or content-encoded is refused. Otherwise the route's `context_extensions["tool"]`;
//! - `context_extensions["action"]` (default: the lower-cased HTTP method), `["sensitivity"]`, `["task"]`;
//! - the destination: `scheme://host` + the path with its query (the decision ignores queries).
//!
//! Allowed: status OK, and the upstream request loses its `authorization` header (the agent's credential
//! is for the decision point, not for the tool) and gets `x-agentid-decision-id`. Denied: status
//! PERMISSION_DENIED (UNAUTHENTICATED when no credential was accepted) with a `denied_response` of 403
//! (401), `x-agentid-reason`, `x-agentid-decision-id` and the decision as JSON. Either way
//! `dynamic_metadata` carries `decision`, `reason`, `grant` and `decision_id` for Envoy's access logs.
//!
//! Unlike forward-auth, where the proxy's `X-Agentid-Tool` wins, the MCP tool name wins over the
//! route's `context_extensions["tool"]`: the route's tool is the fallback for requests that are no
//! `tools/call` (MCP `initialize`, `tools/list`, plain HTTP APIs).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode as HttpStatusCode};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use serde_json::Value;
use tonic::Code;

use super::{Answer, Credentials, PdpState, Question};
use crate::api::DataSensitivity;
use crate::core::pdp::ReasonCode;
use crate::server::listener::PeerIdentity;

/// Largest request body (sent by the proxy with `with_request_body`) read for an MCP call.
pub const MAX_BODY: usize = super::http::MAX_BODY;
/// Largest `CheckRequest`: headers and a body the proxy may send beyond [`MAX_BODY`] (then unused).
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// The gRPC service, as it appears in request paths.
pub const SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// Every interface of the decision point on one router: [`super::http::router`] and ext_authz (one
/// listener; gRPC is HTTP/2, which the listener negotiates by ALPN).
pub fn interfaces(state: Arc<PdpState>) -> Router {
    super::http::router(state.clone()).merge(router(state))
}

/// The ext_authz service as routes.
pub fn router(state: Arc<PdpState>) -> Router {
    let svc = AuthorizationServer::new(ExtAuthz(state))
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    Router::new().route_service(&format!("/{SERVICE}/{{*method}}"), svc)
}

/// The `Authorization` service of the decision point.
pub struct ExtAuthz(pub Arc<PdpState>);

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let peer = request.extensions().get::<Arc<PeerIdentity>>().cloned();
        Ok(tonic::Response::new(check_from(&self.0, request.get_ref(), peer.as_deref()).await))
    }
}

/// Decides one `CheckRequest` from a caller without a client certificate.
pub async fn check(state: &PdpState, req: &CheckRequest) -> CheckResponse {
    check_from(state, req, None).await
}

/// Decides one `CheckRequest` from an enforcement point whose verified client certificate names `peer`;
/// its `source.principal` identifies the agent when `peer` is one of the trusted enforcement points.
/// Never fails: a request that cannot be understood is a deny (`bad-request`).
pub async fn check_from(state: &PdpState, req: &CheckRequest, peer: Option<&PeerIdentity>) -> CheckResponse {
    match question(req) {
        Ok((q, bearer)) => {
            let creds = Credentials {
                bearer: bearer.as_deref(),
                principal: source_principal(req),
                principal_trusted: peer.is_some_and(|p| p.is_any_of(&state.config.trusted_peps)),
            };
            response(&state.check_as(creds, q).await)
        }
        Err(e) => {
            let started = Instant::now();
            let answer = Answer {
                decision_id: super::decision_id(),
                decision: "deny",
                reasons: vec![ReasonCode::BadRequest.as_str()],
                grant: None,
                explanation: e,
                agent: None,
            };
            // Every decision id handed out is in the decision log.
            state.record(&answer, None, &Question::default(), started);
            response(&answer)
        }
    }
}

/// A request header, by its lower-case name: from `headers`, or from `header_map` when the proxy sends raw
/// headers (`encode_raw_headers`; repeated headers are then joined with `,` as in `headers`). Empty values
/// count as absent.
fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<Cow<'a, str>> {
    let found = match http.headers.get(name) {
        Some(v) => Some(Cow::Borrowed(v.as_str())),
        None => match http.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)) {
            Some((_, v)) => Some(Cow::Borrowed(v.as_str())),
            None => {
                let values: Vec<Cow<'_, str>> = http
                    .header_map
                    .iter()
                    .flat_map(|m| &m.headers)
                    .filter(|h| h.key.eq_ignore_ascii_case(name))
                    .map(|h| {
                        if h.raw_value.is_empty() {
                            Cow::Borrowed(h.value.as_str())
                        } else {
                            String::from_utf8_lossy(&h.raw_value)
                        }
                    })
                    .collect();
                match values.len() {
                    0 => None,
                    1 => values.into_iter().next(),
                    _ => Some(Cow::Owned(values.join(","))),
                }
            }
        },
    };
    found.filter(|v| !v.is_empty())
}

fn bearer(value: &str) -> Option<String> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty()).map(str::to_string)
}

fn sensitivity(s: &str) -> Result<DataSensitivity, String> {
    serde_json::from_value(Value::String(s.to_ascii_lowercase())).map_err(|_| {
        format!("context_extensions sensitivity {s:?} is not one of public, internal, confidential, restricted")
    })
}

/// The tool call an MCP request makes.
#[derive(Debug, PartialEq)]
struct McpCall {
    tool: String,
    arguments: Vec<String>,
}

/// The request body as far as it can be read.
enum Body<'a> {
    Absent,
    Complete(&'a [u8]),
    /// Truncated, too large or content-encoded: what it says is unknown. `maybe_call`: it may be a JSON-RPC
    /// call (it starts like JSON, or cannot be looked at).
    Unreadable {
        why: &'static str,
        maybe_call: bool,
    },
}

fn body<'a>(http: &'a HttpRequest) -> Body<'a> {
    let bytes = if http.raw_body.is_empty() { http.body.as_bytes() } else { &http.raw_body };
    if bytes.is_empty() {
        return Body::Absent;
    }
    if header(http, "content-encoding").is_some_and(|v| !v.trim().eq_ignore_ascii_case("identity")) {
        return Body::Unreadable { why: "content-encoded", maybe_call: true };
    }
    let maybe_call = may_be_json(bytes);
    if header(http, "x-envoy-auth-partial-body").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        let why = "truncated (x-envoy-auth-partial-body: true; raise the proxy's max_request_bytes)";
        return Body::Unreadable { why, maybe_call };
    }
    if bytes.len() > MAX_BODY {
        return Body::Unreadable { why: "larger than 64 KiB", maybe_call };
    }
    Body::Complete(bytes)
}

/// Whether a body (or its first bytes) may be JSON: JSON-RPC always starts with `{` or `[`.
fn may_be_json(bytes: &[u8]) -> bool {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    matches!(bytes.iter().find(|b| !b.is_ascii_whitespace()), Some(b'{' | b'['))
}

/// A JSON-RPC request in a body: its method and params.
fn json_rpc(bytes: &[u8], mcp_header: bool) -> Result<Option<(String, Option<Value>)>, String> {
    if !mcp_header && !may_be_json(bytes) {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|_| "the request body looks like JSON-RPC but is not valid JSON".to_string())?;
    match value {
        Value::Object(mut o) => match o.remove("method") {
            Some(Value::String(m)) => Ok(Some((m, o.remove("params")))),
            Some(_) => Err("the JSON-RPC method must be a string".into()),
            None if mcp_header => Err("Mcp-Method is set but the request body is no JSON-RPC request".into()),
            None => Ok(None),
        },
        Value::Array(items) if mcp_header || items.iter().any(|i| i.get("method").is_some()) => {
            Err("JSON-RPC batches are not decided: send one call per request".into())
        }
        _ if mcp_header => Err("Mcp-Method is set but the request body is no JSON-RPC request".into()),
        _ => Ok(None),
    }
}

/// The MCP tool call of a request, from its `Mcp-Method` / `Mcp-Name` headers and its JSON-RPC body;
/// `None` when it makes none.
fn mcp_call(http: &HttpRequest) -> Result<Option<McpCall>, String> {
    let method_header = header(http, "mcp-method");
    let name_header = header(http, "mcp-name");
    let message = match body(http) {
        Body::Absent => None,
        Body::Complete(bytes) => json_rpc(bytes, method_header.is_some())?,
        Body::Unreadable { why, maybe_call } => {
            if method_header.is_some() || maybe_call {
                return Err(format!("the request body is {why}, but its JSON-RPC call is needed for the decision"));
            }
            None
        }
    };
    let method = match (&method_header, &message) {
        (Some(h), Some((m, _))) if h.as_ref() != m => {
            return Err(format!("Mcp-Method {h:?} does not match the body's JSON-RPC method {m:?}"));
        }
        (Some(h), _) => h.as_ref(),
        (None, Some((m, _))) => m.as_str(),
        (None, None) => return Ok(None),
    };
    if method != "tools/call" {
        return Ok(None);
    }
    let params = message.as_ref().and_then(|(_, p)| p.as_ref());
    let body_name = match params.map(|p| p.get("name")) {
        None => None,
        Some(Some(Value::String(n))) => Some(n.as_str()),
        Some(_) => return Err("tools/call: params.name must be a string".into()),
    };
    let arguments = match params.and_then(|p| p.get("arguments")) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(args)) => {
            let mut names: Vec<String> = args.keys().cloned().collect();
            names.sort();
            names
        }
        Some(_) => return Err("tools/call: params.arguments must be an object".into()),
    };
    let tool = match (name_header.as_deref(), body_name) {
        (Some(h), Some(b)) if h != b => return Err(format!("Mcp-Name {h:?} does not match the body's tool {b:?}")),
        (Some(n), _) | (None, Some(n)) => n.to_string(),
        (None, None) => return Err("tools/call without a tool name (Mcp-Name or params.name)".into()),
    };
    Ok(Some(McpCall { tool, arguments }))
}

/// The peer principal the enforcement point reports for the downstream connection (the agent's
/// certificate URI SAN when the proxy terminated its mTLS), if any.
pub fn source_principal(req: &CheckRequest) -> Option<&str> {
    let p = req.attributes.as_ref()?.source.as_ref()?.principal.as_str();
    (!p.is_empty()).then_some(p)
}

/// The question an ext_authz `CheckRequest` asks, and the bearer token it presents.
pub fn question(req: &CheckRequest) -> Result<(Question, Option<String>), String> {
    let attrs = req.attributes.as_ref().ok_or("no attributes: not an ext_authz CheckRequest")?;
    let http = attrs
        .request
        .as_ref()
        .and_then(|r| r.http.as_ref())
        .ok_or("no attributes.request.http: only HTTP requests are decided here")?;
    let ext = |k: &str| attrs.context_extensions.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let bearer = header(http, "authorization").and_then(|h| bearer(&h));

    let scheme = if http.scheme.is_empty() { "https" } else { http.scheme.as_str() };
    if !matches!(scheme, "http" | "https") {
        return Err(format!("scheme {scheme:?}: only http and https requests are decided here"));
    }
    let host = match http.host.as_str() {
        "" => header(http, ":authority").or_else(|| header(http, "host")).ok_or("the request names no host")?,
        h => Cow::Borrowed(h),
    };
    if host
        .bytes()
        .any(|b| matches!(b, b'/' | b'?' | b'#' | b'@' | b'\\') || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!("host {host:?} is not a host name"));
    }
    if !http.path.starts_with('/') {
        return Err("the request target must be a path".into());
    }

    let mcp = mcp_call(http)?;
    let (tool, arguments) = match mcp {
        Some(call) => (call.tool, call.arguments),
        None => match ext("tool") {
            Some(t) => (t.to_string(), Vec::new()),
            None => {
                return Err("no tool: the request is no MCP tools/call and the route sets no \
                            context_extensions tool"
                    .into());
            }
        },
    };
    let method = (!http.method.is_empty()).then(|| http.method.clone());
    let action = match (ext("action"), &method) {
        (Some(a), _) => a.to_string(),
        (None, Some(m)) => m.to_ascii_lowercase(),
        (None, None) => return Err("no HTTP method and no context_extensions action".into()),
    };
    let q = Question {
        task: ext("task").map(str::to_string),
        tool,
        action,
        destination: Some(format!("{scheme}://{host}{}", http.path)),
        sensitivity: ext("sensitivity").map(sensitivity).transpose()?,
        method,
        argument_names: arguments,
        subject: None,
    };
    Ok((q, bearer))
}

fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.into(), value: value.into(), raw_value: Vec::new() }),
        // The agent must not be able to send its own x-agentid-* values upstream.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        // `append` is deprecated in favour of `append_action`.
        ..Default::default()
    }
}

fn string(s: &str) -> PbValue {
    PbValue { kind: Some(Kind::StringValue(s.to_string())) }
}

/// `dynamic_metadata`: lands in the `envoy.filters.http.ext_authz` namespace (access logs, later filters).
fn metadata(a: &Answer) -> Struct {
    let mut fields = std::collections::HashMap::new();
    fields.insert("decision".to_string(), string(a.decision));
    fields.insert("reason".to_string(), string(a.reasons.first().copied().unwrap_or_default()));
    fields.insert("decision_id".to_string(), string(&a.decision_id));
    if let Some(g) = &a.grant {
        fields.insert("grant".to_string(), string(g));
    }
    Struct { fields }
}

/// The `CheckResponse` of an answer.
pub fn response(a: &Answer) -> CheckResponse {
    if a.allowed() {
        return CheckResponse {
            status: Some(RpcStatus { code: Code::Ok as i32, message: String::new(), details: Vec::new() }),
            dynamic_metadata: Some(metadata(a)),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: vec![set_header("x-agentid-decision-id", &a.decision_id)],
                headers_to_remove: vec!["authorization".into()],
                ..Default::default()
            })),
        };
    }
    let (code, http) = if a.unauthenticated() {
        (Code::Unauthenticated, HttpStatusCode::Unauthorized)
    } else {
        (Code::PermissionDenied, HttpStatusCode::Forbidden)
    };
    let reason = a.reasons.first().copied().unwrap_or(a.decision);
    let mut headers = vec![
        set_header("x-agentid-reason", reason),
        set_header("x-agentid-decision-id", &a.decision_id),
        set_header("content-type", "application/json"),
    ];
    if let Some(g) = &a.grant {
        headers.push(set_header("x-agentid-grant", g));
    }
    if code == Code::Unauthenticated {
        headers.push(set_header("www-authenticate", "Bearer"));
    }
    let message = if a.explanation.is_empty() { reason.to_string() } else { format!("{reason}: {}", a.explanation) };
    CheckResponse {
        status: Some(RpcStatus { code: code as i32, message, details: Vec::new() }),
        dynamic_metadata: Some(metadata(a)),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body: serde_json::to_string(a).unwrap_or_default(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::Ordering;

    use axum::body::Body as AxumBody;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Peer as AttributeContextPeer;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request as AttrRequest;
    use http_body_util::BodyExt;
    use prost::Message;
    use tower::ServiceExt;

    use super::*;
    use crate::core::jwt::KeySet;
    use crate::core::jwt::testing::{Signer, claims};
    use crate::core::pdp::caller::AccountEntry;
    use crate::core::pdp::snapshot::fixtures::{active_grant, ready_agent, tool};
    use crate::core::pdp::{DecideConfig, Snapshot};
    use crate::metrics::Metrics;
    use crate::pdp::PdpConfig;
    use crate::pdp::budget::Budgets;
    use crate::pdp::keys::{IssuerKeys, KeySource};

    const MCP_CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":"x","limit":3}}}"#;

    /// A CheckRequest for `POST https://tools.example.com/mcp?session=1` with `headers`, `body` and
    /// `context_extensions`.
    fn req(headers: &[(&str, &str)], body: &str, ext: &[(&str, &str)]) -> CheckRequest {
        let http = HttpRequest {
            method: "POST".into(),
            scheme: "https".into(),
            host: "tools.example.com".into(),
            path: "/mcp?session=1".into(),
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            body: body.into(),
            ..Default::default()
        };
        with_http(http, ext)
    }

    fn with_http(http: HttpRequest, ext: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest { http: Some(http), ..Default::default() }),
                context_extensions: ext.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                ..Default::default()
            }),
        }
    }

    fn q(tool: &str, action: &str, args: &[&str]) -> Question {
        Question {
            tool: tool.into(),
            action: action.into(),
            destination: Some("https://tools.example.com/mcp?session=1".into()),
            method: Some("POST".into()),
            argument_names: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    const AUTH: (&str, &str) = ("authorization", "Bearer tok-1");
    const CALL: (&str, &str) = ("mcp-method", "tools/call");
    const NAME: (&str, &str) = ("mcp-name", "search");
    const PARTIAL: (&str, &str) = ("x-envoy-auth-partial-body", "true");

    #[test]
    fn check_requests_become_questions() {
        let big = format!(r#"{{"method":"tools/call","params":{{"name":"search","pad":"{}"}}}}"#, "x".repeat(MAX_BODY));
        let ext_tool = [("tool", "crm"), ("action", "read"), ("sensitivity", "Confidential"), ("task", "t1")];
        let mut from_ext = q("crm", "read", &[]);
        from_ext.sensitivity = Some(DataSensitivity::Confidential);
        from_ext.task = Some("t1".into());
        #[rustfmt::skip]
        let cases: Vec<(&str, CheckRequest, Result<Question, &str>)> = vec![
            ("MCP headers only", req(&[AUTH, CALL, NAME], "", &[]), Ok(q("search", "post", &[]))),
            ("MCP body only: argument names, sorted", req(&[AUTH], MCP_CALL, &[]), Ok(q("search", "post", &["limit", "query"]))),
            ("headers and body agree", req(&[AUTH, CALL, NAME], MCP_CALL, &[]), Ok(q("search", "post", &["limit", "query"]))),
            ("MCP wins over the route's tool; the route's action and task stay",
                req(&[CALL, NAME], "", &[("tool", "crm"), ("action", "call"), ("task", "t1")]),
                Ok(Question { task: Some("t1".into()), ..q("search", "call", &[]) })),
            ("the route's tool for what is no MCP call", req(&[AUTH], "", &ext_tool), Ok(from_ext.clone())),
            ("MCP initialize: the route's tool", req(&[("mcp-method", "initialize")], r#"{"method":"initialize","params":{}}"#, &ext_tool), Ok(from_ext.clone())),
            ("a plain JSON body is no call", req(&[], r#"{"name":"x"}"#, &ext_tool), Ok(from_ext.clone())),
            ("a truncated body that is no JSON is not needed", req(&[PARTIAL], "binary upload ...", &ext_tool), Ok(from_ext.clone())),
            ("arguments: null", req(&[], r#"{"method":"tools/call","params":{"name":"search","arguments":null}}"#, &[]), Ok(q("search", "post", &[]))),
            ("Mcp-Name mismatch", req(&[CALL, ("mcp-name", "delete")], MCP_CALL, &[]), Err("does not match the body's tool")),
            ("Mcp-Method mismatch", req(&[("mcp-method", "tools/list"), NAME], MCP_CALL, &ext_tool), Err("does not match the body's JSON-RPC method")),
            ("truncated body with MCP headers", req(&[CALL, NAME, PARTIAL], &MCP_CALL[..40], &[]), Err("truncated")),
            ("truncated JSON body behind a route tool", req(&[PARTIAL], &MCP_CALL[..40], &ext_tool), Err("truncated")),
            ("body over 64 KiB", req(&[CALL, NAME], &big, &[]), Err("larger than 64 KiB")),
            ("gzip body", req(&[("content-encoding", "gzip")], "\u{1f}\u{8b}...", &ext_tool), Err("content-encoded")),
            ("Mcp-Method with a body that is no JSON", req(&[CALL, NAME], "search?", &[]), Err("not valid JSON")),
            ("JSON-looking body that does not parse", req(&[], "{\"method\":\"tools/call\",", &ext_tool), Err("not valid JSON")),
            ("Mcp-Method with a body that is no request", req(&[CALL, NAME], r#"{"result":{}}"#, &[]), Err("no JSON-RPC request")),
            ("JSON-RPC batch", req(&[], &format!("[{MCP_CALL}]"), &ext_tool), Err("batches")),
            ("tools/call without a name", req(&[CALL], "", &[]), Err("without a tool name")),
            ("params.name not a string", req(&[], r#"{"method":"tools/call","params":{"name":7}}"#, &[]), Err("params.name")),
            ("arguments not an object", req(&[], r#"{"method":"tools/call","params":{"name":"a","arguments":["x"]}}"#, &[]), Err("params.arguments")),
            ("no tool at all", req(&[AUTH], "", &[]), Err("no tool")),
            ("bad sensitivity", req(&[], "", &[("tool", "crm"), ("sensitivity", "secret")]), Err("sensitivity")),
            ("no attributes", CheckRequest { attributes: None }, Err("no attributes")),
            ("no http", CheckRequest { attributes: Some(AttributeContext::default()) }, Err("no attributes.request.http")),
        ];
        for (name, r, want) in cases {
            match (question(&r), want) {
                (Ok((got, _)), Ok(want)) => assert_eq!(got, want, "{name}"),
                (Err(e), Err(want)) => assert!(e.contains(want), "{name}: {e}"),
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn the_bearer_token_comes_from_the_authorization_header() {
        let bearer_of = |headers: &[(&str, &str)]| question(&req(headers, "", &[("tool", "t")])).unwrap().1;
        assert_eq!(bearer_of(&[("authorization", "Bearer tok-1")]), Some("tok-1".into()));
        assert_eq!(bearer_of(&[("authorization", "bearer  tok-2 ")]), Some("tok-2".into()));
        assert_eq!(bearer_of(&[("Authorization", "Bearer tok-3")]), Some("tok-3".into()));
        assert_eq!(bearer_of(&[("authorization", "Basic dXNlcg==")]), None);
        assert_eq!(bearer_of(&[("authorization", "Bearer ")]), None);
        assert_eq!(bearer_of(&[]), None);
    }

    #[test]
    fn destinations_keep_the_query_and_refuse_what_is_no_host_or_path() {
        let with = |f: &dyn Fn(&mut HttpRequest)| {
            let mut r = req(&[], "", &[("tool", "t")]);
            f(r.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap());
            question(&r).map(|(q, _)| q.destination.unwrap())
        };
        assert_eq!(with(&|_| {}), Ok("https://tools.example.com/mcp?session=1".into()));
        assert_eq!(with(&|h| h.scheme = "http".into()), Ok("http://tools.example.com/mcp?session=1".into()));
        assert_eq!(
            with(&|h| h.host = "api.internal:8443".into()),
            Ok("https://api.internal:8443/mcp?session=1".into())
        );
        let from_authority = |h: &mut HttpRequest| {
            h.host.clear();
            h.headers.insert(":authority".into(), "a.internal".into());
        };
        assert_eq!(with(&from_authority), Ok("https://a.internal/mcp?session=1".into()));
        for bad in ["allowed.internal@evil.example", "evil.example/allowed.internal", "a b", "x#"] {
            assert!(with(&|h| h.host = bad.into()).unwrap_err().contains("not a host"), "{bad}");
        }
        assert!(with(&|h| h.host.clear()).unwrap_err().contains("no host"));
        assert!(with(&|h| h.path = "*".into()).unwrap_err().contains("path"));
        assert!(with(&|h| h.scheme = "ftp".into()).unwrap_err().contains("scheme"));
        assert_eq!(with(&|h| h.method = "GET".into()).map(|_| ()), Ok(()));
    }

    #[test]
    fn raw_headers_and_raw_bodies_are_read_too() {
        let raw =
            |k: &str, v: &str| HeaderValue { key: k.into(), value: String::new(), raw_value: v.as_bytes().to_vec() };
        let http = HttpRequest {
            method: "POST".into(),
            scheme: "https".into(),
            host: "tools.example.com".into(),
            path: "/mcp?session=1".into(),
            header_map: Some(HeaderMap {
                headers: vec![raw("authorization", "Bearer tok-raw"), raw("mcp-method", "tools/call")],
            }),
            raw_body: MCP_CALL.as_bytes().to_vec(),
            ..Default::default()
        };
        let (got, bearer) = question(&with_http(http, &[])).unwrap();
        assert_eq!(got, q("search", "post", &["limit", "query"]));
        assert_eq!(bearer.as_deref(), Some("tok-raw"));
    }

    fn answer(decision: &'static str, reason: Option<&'static str>) -> Answer {
        Answer {
            decision_id: "d-1".into(),
            decision,
            reasons: reason.into_iter().collect(),
            grant: Some("g1".into()),
            explanation: String::new(),
            agent: None,
        }
    }

    fn headers_of(h: &[HeaderValueOption]) -> HashMap<String, String> {
        h.iter().map(|o| o.header.as_ref().unwrap()).map(|h| (h.key.clone(), h.value.clone())).collect()
    }

    fn meta(r: &CheckResponse, key: &str) -> Option<String> {
        match r.dynamic_metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
            Kind::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    }

    #[test]
    fn answers_become_check_responses() {
        let ok = response(&answer("allow", None));
        assert_eq!(ok.status.as_ref().unwrap().code, 0);
        let Some(HttpResponse::OkResponse(o)) = &ok.http_response else { panic!("{ok:?}") };
        assert_eq!(o.headers_to_remove, vec!["authorization"]);
        assert_eq!(headers_of(&o.headers), HashMap::from([("x-agentid-decision-id".into(), "d-1".into())]));
        assert_eq!(o.headers[0].append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
        assert_eq!(meta(&ok, "decision").as_deref(), Some("allow"));
        assert_eq!(meta(&ok, "grant").as_deref(), Some("g1"));
        assert_eq!(meta(&ok, "decision_id").as_deref(), Some("d-1"));

        for (reason, code, http) in [("destination-not-granted", 7, 403), ("unauthenticated", 16, 401)] {
            let r = response(&answer("deny", Some(reason)));
            assert_eq!(r.status.as_ref().unwrap().code, code, "{reason}");
            let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{r:?}") };
            assert_eq!(d.status.as_ref().unwrap().code, http);
            let h = headers_of(&d.headers);
            assert_eq!(h["x-agentid-reason"], reason);
            assert_eq!(h["x-agentid-decision-id"], "d-1");
            assert_eq!(h["content-type"], "application/json");
            assert_eq!(h.contains_key("www-authenticate"), http == 401);
            let body: Value = serde_json::from_str(&d.body).unwrap();
            assert_eq!(body["decision"], "deny");
            assert_eq!(body["reasons"][0], reason);
            assert_eq!(meta(&r, "reason").as_deref(), Some(reason));
        }
        let r = response(&answer("approval-required", Some("approval-required")));
        assert_eq!(r.status.as_ref().unwrap().code, 7);
    }

    fn state(ready: bool, keys: IssuerKeys, snapshot: Snapshot) -> Arc<PdpState> {
        let config = PdpConfig {
            audience: "agentid-pdp".into(),
            decide: DecideConfig::default(),
            replica: "test".into(),
            ..Default::default()
        };
        let s = PdpState::new(
            config,
            "cluster.local",
            Arc::new(KeySource::fixed(keys)),
            Arc::new(Budgets::local()),
            Arc::new(Metrics::default()),
        );
        *s.snapshot.write().unwrap() = snapshot;
        s.ready.store(ready, Ordering::Release);
        Arc::new(s)
    }

    /// One unary gRPC call through the decision point's merged router, as the listener serves it.
    async fn call(app: Router, req: &CheckRequest) -> (String, CheckResponse) {
        call_from(app, req, None).await
    }

    /// [`call`] over a connection whose verified client certificate names `peer`.
    async fn call_from(app: Router, req: &CheckRequest, peer: Option<PeerIdentity>) -> (String, CheckResponse) {
        let msg = req.encode_to_vec();
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        framed.extend_from_slice(&msg);
        let http = axum::http::Request::post(format!("/{SERVICE}/Check"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(AxumBody::from(framed))
            .unwrap();
        let mut http = http;
        if let Some(p) = peer {
            http.extensions_mut().insert(Arc::new(p));
        }
        let res = app.oneshot(http).await.unwrap();
        assert_eq!(res.status(), 200);
        let collected = res.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let grpc_status = trailers.get("grpc-status").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let bytes = collected.to_bytes();
        assert!(bytes.len() >= 5, "no message, grpc-status {grpc_status}");
        (grpc_status, CheckResponse::decode(&bytes[5..]).unwrap())
    }

    fn merged(s: &Arc<PdpState>) -> Router {
        interfaces(s.clone())
    }

    #[tokio::test]
    async fn a_decision_point_that_is_not_ready_denies_over_grpc() {
        let s = state(
            false,
            IssuerKeys { issuer: "x".into(), keys: KeySet { keys: vec![] } },
            Snapshot::new("cluster.local"),
        );
        let (grpc, r) = call(merged(&s), &req(&[AUTH, CALL, NAME], MCP_CALL, &[])).await;
        assert_eq!(grpc, "0", "the RPC succeeds; the decision is in the message");
        assert_eq!(r.status.as_ref().unwrap().code, Code::PermissionDenied as i32);
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{r:?}") };
        assert_eq!(d.status.as_ref().unwrap().code, 403);
        assert_eq!(headers_of(&d.headers)["x-agentid-reason"], "not-ready");
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!((body["decision"].as_str(), body["reasons"][0].as_str()), (Some("deny"), Some("not-ready")));
        assert_eq!(meta(&r, "decision_id").as_deref(), body["decisionId"].as_str());

        // Malformed: a deny, never a failed RPC or a panic.
        let (grpc, r) = call(merged(&s), &CheckRequest::default()).await;
        assert_eq!(grpc, "0");
        assert_eq!(r.status.as_ref().unwrap().code, Code::PermissionDenied as i32);
        assert_eq!(meta(&r, "reason").as_deref(), Some("bad-request"));

        // The HTTP interfaces are still there.
        let health = merged(&s).oneshot(axum::http::Request::get("/healthz").body(AxumBody::empty()).unwrap()).await;
        assert_eq!(health.unwrap().status(), 200);
    }

    #[tokio::test]
    async fn a_ready_decision_point_allows_a_granted_mcp_call_over_grpc() {
        let signer = Signer::new("k1");
        let keys =
            IssuerKeys { issuer: "https://kubernetes.default.svc".into(), keys: KeySet { keys: vec![signer.jwk()] } };
        let agent = ready_agent("bot");
        let sa = agent.service_account_name();
        let grant = active_grant("g1", "bot", vec![tool("search", &["post"], &["https://tools.example.com/mcp"])]);
        let s = state(true, keys, Snapshot::build(&[agent], &[grant], &[], "cluster.local"));
        s.accounts.write().unwrap().insert(
            "agents",
            &sa,
            AccountEntry { uid: format!("{sa}-uid").into(), agent: "bot".into(), agent_uid: "uid-bot".into() },
        );
        let exp = k8s_openapi::jiff::Timestamp::now().as_second() + 300;
        let token = signer.sign(&claims("agents", &sa, "agentid-pdp", exp, None));
        let auth = format!("Bearer {token}");

        let (grpc, r) = call(merged(&s), &req(&[("authorization", &auth), CALL, NAME], MCP_CALL, &[])).await;
        assert_eq!(grpc, "0");
        assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
        let Some(HttpResponse::OkResponse(o)) = &r.http_response else { panic!("{r:?}") };
        assert_eq!(o.headers_to_remove, vec!["authorization"]);
        assert_eq!(meta(&r, "grant").as_deref(), Some("g1"));
        assert_eq!(headers_of(&o.headers).get("x-agentid-decision-id"), meta(&r, "decision_id").as_ref());

        // Another tool: denied with the grant's reason; no credential: 401.
        let (_, r) = call(merged(&s), &req(&[("authorization", &auth), CALL, ("mcp-name", "delete")], "", &[])).await;
        assert_eq!(r.status.as_ref().unwrap().code, Code::PermissionDenied as i32);
        assert_eq!(meta(&r, "reason").as_deref(), Some("no-grant-for-tool"));
        let (_, r) = call(merged(&s), &req(&[CALL, NAME], MCP_CALL, &[])).await;
        assert_eq!(r.status.as_ref().unwrap().code, Code::Unauthenticated as i32);
        let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{r:?}") };
        assert_eq!(d.status.as_ref().unwrap().code, 401);
    }

    #[tokio::test]
    async fn the_peer_principal_counts_only_from_a_trusted_enforcement_point() {
        let signer = Signer::new("k1");
        let keys =
            IssuerKeys { issuer: "https://kubernetes.default.svc".into(), keys: KeySet { keys: vec![signer.jwk()] } };
        let (bot, other) = (ready_agent("bot"), ready_agent("other"));
        let grants = [
            active_grant("g1", "bot", vec![tool("search", &["post"], &["https://tools.example.com/mcp"])]),
            active_grant("g2", "other", vec![tool("search", &["post"], &["https://tools.example.com/mcp"])]),
        ];
        let mut s = state(true, keys, Snapshot::build(&[bot.clone(), other.clone()], &grants, &[], "cluster.local"));
        let config = PdpConfig {
            trusted_peps: vec!["spiffe://cluster.local/ns/gateways/sa/envoy".into()],
            ..Arc::get_mut(&mut s).unwrap().config.clone()
        };
        Arc::get_mut(&mut s).unwrap().config = config;
        for a in [&bot, &other] {
            let sa = a.service_account_name();
            let name = a.metadata.name.clone().unwrap();
            let uid = a.metadata.uid.clone().unwrap();
            s.accounts.write().unwrap().insert(
                "agents",
                &sa,
                AccountEntry { uid: format!("{sa}-uid").into(), agent: name, agent_uid: uid.into() },
            );
        }
        let with_principal = |principal: &str, auth: Option<&str>| {
            let mut headers = vec![CALL, NAME];
            if let Some(a) = auth {
                headers.push(("authorization", a));
            }
            let mut r = req(&headers, MCP_CALL, &[]);
            r.attributes.as_mut().unwrap().source =
                Some(AttributeContextPeer { principal: principal.into(), ..Default::default() });
            r
        };
        let envoy =
            PeerIdentity { uris: vec!["spiffe://cluster.local/ns/gateways/sa/envoy".into()], dns_names: vec![] };
        let stranger =
            PeerIdentity { uris: vec!["spiffe://cluster.local/ns/gateways/sa/other".into()], dns_names: vec![] };
        let bot_id = "spiffe://cluster.local/ns/agents/agent/bot";
        let bot_mesh = format!("spiffe://cluster.local/ns/agents/sa/{}", bot.service_account_name());

        // From the trusted enforcement point, either form identifies the agent: allowed under its grant.
        for p in [bot_id, bot_mesh.as_str()] {
            let (_, r) = call_from(merged(&s), &with_principal(p, None), Some(envoy.clone())).await;
            assert_eq!(r.status.as_ref().unwrap().code, 0, "{p}: {r:?}");
            assert_eq!(meta(&r, "grant").as_deref(), Some("g1"));
        }
        // The same request from a client without a certificate, or with another one: unauthenticated,
        // saying why.
        for peer in [None, Some(stranger.clone())] {
            let (_, r) = call_from(merged(&s), &with_principal(bot_id, None), peer).await;
            assert_eq!(r.status.as_ref().unwrap().code, Code::Unauthenticated as i32);
            let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else { panic!("{r:?}") };
            assert!(d.body.contains("not honoured"), "{}", d.body);
        }
        // A principal of no agent, or of a ServiceAccount agentid did not create: unauthenticated.
        for p in
            ["spiffe://cluster.local/ns/agents/agent/ghost", "spiffe://cluster.local/ns/agents/sa/default", "garbage"]
        {
            let (_, r) = call_from(merged(&s), &with_principal(p, None), Some(envoy.clone())).await;
            assert_eq!(r.status.as_ref().unwrap().code, Code::Unauthenticated as i32, "{p}");
        }
        // A token and a principal must name the same agent.
        let exp = k8s_openapi::jiff::Timestamp::now().as_second() + 300;
        let token = signer.sign(&claims("agents", &other.service_account_name(), "agentid-pdp", exp, None));
        let auth = format!("Bearer {token}");
        let (_, r) = call_from(merged(&s), &with_principal(bot_id, Some(&auth)), Some(envoy.clone())).await;
        assert_eq!(r.status.as_ref().unwrap().code, Code::Unauthenticated as i32);
        let (_, r) = call_from(
            merged(&s),
            &with_principal("spiffe://cluster.local/ns/agents/agent/other", Some(&auth)),
            Some(envoy),
        )
        .await;
        assert_eq!(r.status.as_ref().unwrap().code, 0, "{r:?}");
        assert_eq!(meta(&r, "grant").as_deref(), Some("g2"));
        // From an untrusted client the principal is ignored and the token decides.
        let (_, r) = call_from(merged(&s), &with_principal(bot_id, Some(&auth)), Some(stranger)).await;
        assert_eq!(meta(&r, "grant").as_deref(), Some("g2"));
    }
}
