//! Cost of the Envoy ext_authz (gRPC) layer around a decision: the mapping of a `CheckRequest` to a
//! question (headers only, and with a JSON-RPC body), the `CheckResponse` of an answer, and one whole
//! unary call through the decision point's router (framing, prost, tonic) against a decision point that
//! is still loading (so the decision itself costs next to nothing).
//! `cargo bench --bench pdp_grpc -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::sync::Arc;

use axum::body::Body;
use criterion::{Criterion, criterion_group, criterion_main};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use http_body_util::BodyExt;
use prost::Message;
use tower::ServiceExt;

use agentid::core::jwt::KeySet;
use agentid::metrics::Metrics;
use agentid::pdp::keys::{IssuerKeys, KeySource};
use agentid::pdp::{Answer, PdpConfig, PdpState, budget::Budgets, grpc};

const CALL: &str = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search","arguments":{"query":"x","limit":3,"fields":["a"]}}}"#;

fn check_request(body: &str) -> CheckRequest {
    let headers = [
        ("authorization", "Bearer eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.eyJpc3MiOiJ4In0.c2ln"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "search"),
        ("content-type", "application/json"),
        ("user-agent", "agent/1.0"),
        ("x-request-id", "4f1c2b9e-1d1e-4d8a-9a57-1c5b3f0b9b1e"),
    ];
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    scheme: "https".into(),
                    host: "tools.example.com".into(),
                    path: "/mcp?session=1".into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    body: body.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: [("sensitivity".to_string(), "internal".to_string())].into(),
            ..Default::default()
        }),
    }
}

fn benches(c: &mut Criterion) {
    let headers_only = check_request("");
    let with_body = check_request(CALL);
    assert_eq!(grpc::question(&with_body).unwrap().0.argument_names, ["fields", "limit", "query"]);
    c.bench_function("ext_authz/question (MCP headers)", |b| b.iter(|| grpc::question(black_box(&headers_only))));
    c.bench_function("ext_authz/question (MCP headers + JSON-RPC body)", |b| {
        b.iter(|| grpc::question(black_box(&with_body)))
    });
    let answer = Answer {
        decision_id: "54ff2672a07fdaec85a0c85e00053441".into(),
        decision: "deny",
        reasons: vec!["destination-not-granted"],
        grant: Some("bot-search".into()),
        explanation: "grant bot-search covers tool search at https://tools.example.com/mcp only".into(),
        agent: Some("spiffe://cluster.local/ns/agents/agent/bot".into()),
    };
    c.bench_function("ext_authz/response (deny) + encode", |b| {
        b.iter(|| grpc::response(black_box(&answer)).encode_to_vec())
    });

    let state = Arc::new(PdpState::new(
        PdpConfig {
            audience: "agentid-pdp".into(),
            decide: Default::default(),
            replica: "bench".into(),
            ..Default::default()
        },
        "cluster.local",
        Arc::new(KeySource::fixed(IssuerKeys { issuer: "x".into(), keys: KeySet { keys: vec![] } })),
        Arc::new(Budgets::local()),
        Arc::new(Metrics::default()),
    ));
    let app = grpc::interfaces(state);
    let msg = with_body.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let framed = axum::body::Bytes::from(framed);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let round_trip = || {
        let req = axum::http::Request::post("/envoy.service.auth.v3.Authorization/Check")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Body::from(framed.clone()))
            .unwrap();
        let app = app.clone();
        rt.block_on(async move {
            let body = app.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
            CheckResponse::decode(&body[5..]).unwrap()
        })
    };
    assert_eq!(round_trip().status.unwrap().code, 7, "not ready: a deny");
    c.bench_function("ext_authz/unary call through the router (not ready)", |b| b.iter(round_trip));
}

criterion_group!(pdp_grpc, benches);
criterion_main!(pdp_grpc);
