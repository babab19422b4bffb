//! The decision point's forward-auth interface (nginx auth_request, Traefik, Caddy): a sub-request's
//! method, URI and headers, decoded into a question and decided against the sample agents and grants.
//! Input: line 1 `METHOD URI`, then `name: value` header lines (values may hold any byte but CR/LF).
#![no_main]

use agentid::pdp::http::fuzzing;
use agentid_fuzz::decide_question;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agentid_fuzz::tolerate_caught_cel_panics();
    let mut lines = data.split(|&b| b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |&b| b == b' ');
    let method = Method::from_bytes(parts.next().unwrap_or_default()).unwrap_or(Method::GET);
    let uri = parts.next().and_then(|u| Uri::try_from(u).ok()).unwrap_or_else(|| Uri::from_static("/forward-auth"));
    let mut headers = HeaderMap::new();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = value.strip_prefix(b" ").unwrap_or(value);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            headers.append(n, v);
        }
    }
    let (q, _bearer) = fuzzing::forward_auth(&method, &uri, &headers);
    if let Ok(q) = q {
        decide_question(&q, None);
    }
});
