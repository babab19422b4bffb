//! The decision point's Envoy ext_authz gRPC interface: a protobuf `CheckRequest` as tonic decodes it,
//! the question and bearer token it carries, decided against the sample agents and grants.
#![no_main]

use agentid::pdp::grpc;
use agentid_fuzz::decide_question;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    agentid_fuzz::tolerate_caught_cel_panics();
    let Ok(req) = CheckRequest::decode(data) else { return };
    let _ = grpc::source_principal(&req);
    if let Ok((q, _bearer)) = grpc::question(&req) {
        decide_question(&q, None);
    }
});
