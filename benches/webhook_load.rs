//! The admission webhook over HTTPS on 127.0.0.1: latency at a fixed 1,000
//! requests/s (open loop: requests are dispatched on schedule whether or not
//! earlier ones finished, and a request waiting for a free connection counts) and peak throughput (closed loop). Client and server
//! share this process and the machine's cores. `cargo bench --bench webhook_load`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::jiff::Timestamp;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::sync::Mutex;

use agentid::api::AgentIdentity;
use agentid::core::admission::exceptions::ExceptionSet;
use agentid::core::admission::review::UserInfo;
use agentid::core::admission::rules::StaticDirectory;
use agentid::metrics::Metrics;
use agentid::server::listener::{Limits, Listener, TlsHandle};
use agentid::server::tls;
use agentid::webhook::{AccessReviewer, ServiceAccountLookup, WebhookState, router};

mod support;
use support::typical;

/// Stands in for the apiserver's SubjectAccessReview (the `use` check of the agent): always yes, at no cost,
/// so the numbers are agentid's own.
/// No ServiceAccount exists (the bench judges pods only).
struct NoServiceAccounts;
impl ServiceAccountLookup for NoServiceAccounts {
    fn exists<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(false) })
    }
}

struct AllowAll;
impl AccessReviewer for AllowAll {
    fn allowed<'a>(&'a self, _: &'a UserInfo, _: &'a ResourceAttributes) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(true) })
    }
}

fn body() -> Bytes {
    Bytes::from(
        serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "b", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "namespace": "agents",
                "operation": "CREATE", "userInfo": {"username": "dev"}, "object": typical()}}))
        .unwrap(),
    )
}

type Conn = SendRequest<Full<Bytes>>;

async fn connect(addr: std::net::SocketAddr, ca: &[u8]) -> Conn {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls_pki_types::CertificateDer::from_pem_slice(ca).unwrap()).unwrap();
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn send(conn: &mut Conn, body: &Bytes) {
    conn.ready().await.unwrap();
    let req = hyper::Request::post("/validate/workloads/enforce")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(body.clone()))
        .unwrap();
    let res = conn.send_request(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["response"]["allowed"], true, "{}", v["response"]["status"]);
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn row(name: &str, mut lat: Vec<Duration>, wall: Duration) {
    lat.sort();
    let us = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e6);
    println!(
        "| {name} | {} | {:.0} | {} | {} | {} | {} |",
        lat.len(),
        lat.len() as f64 / wall.as_secs_f64(),
        us(pct(&lat, 0.5)),
        us(pct(&lat, 0.9)),
        us(pct(&lat, 0.99)),
        us(*lat.last().unwrap())
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run briefly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let now = Timestamp::now();
        let (ca, ca_key) = tls::generate_ca(now).unwrap();
        let (cert, key, _) =
            tls::generate_serving(&ca_key, &["localhost".into()], now, Duration::from_secs(3600)).unwrap();
        let agent: AgentIdentity =
            serde_json::from_value(json!({"apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
            "metadata": {"name": "triage-bot", "namespace": "agents"},
            "spec": {"owner": "team", "audiences": ["https://tools.example.com"], "tokenTTL": "15m"}}))
            .unwrap();
        let state = Arc::new(WebhookState::new(
            Arc::new(StaticDirectory::new([agent].iter(), "default")),
            Arc::new(AllowAll),
            Arc::new(NoServiceAccounts),
            ExceptionSet::default(),
            Arc::new(Metrics::default()),
        ));
        // The stand-in reviewer answers at once, so the apiserver-protecting budget of access checks (each
        // agent pod costs one) would only turn this load into 429s: lifted, to measure the webhook itself.
        *state.access_checks.lock().unwrap() = agentid::core::ratelimit::TokenBucket::new(1e9, u32::MAX);
        let material =
            tls::TlsMaterial { cert_pem: cert.into_bytes(), key_pem: key.into_bytes(), ca_pem: None, not_after: None };
        let handle = TlsHandle::new(tls::server_config(&material, None).unwrap());
        let listener =
            Listener::bind("webhook", "127.0.0.1:0".parse().unwrap(), handle, router(state), Limits::default())
                .unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(listener.run());

        let body = body();
        let ca = ca.into_bytes();
        let (rate_secs, peak_secs) = if quick { (1, 1) } else { (10, 5) };

        // Warm up.
        let mut c = connect(addr, &ca).await;
        for _ in 0..200 {
            send(&mut c, &body).await;
        }

        println!("\n| webhook over HTTPS, typical pod | requests | req/s | p50 µs | p90 µs | p99 µs | max µs |");
        println!("|---|---|---|---|---|---|---|");

        // Open loop at 1,000 req/s over a pool of keep-alive connections.
        // First in, first out: every connection keeps being used (a last-in-first-out pool left the bottom
        // ones idle past the server's 5 s header-read timeout, which closed them under the client).
        let pool: Arc<Mutex<std::collections::VecDeque<Conn>>> = Arc::new(Mutex::new(Default::default()));
        for _ in 0..16 {
            pool.lock().await.push_back(connect(addr, &ca).await);
        }
        let total = 1000 * rate_secs;
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(total);
        for i in 0..total {
            let due = start + Duration::from_micros(1000 * i as u64);
            tokio::time::sleep_until(due).await;
            // Measured from dispatch: tokio's timer wakes up to ~1 ms late, which is the load
            // generator's lateness, not the server's. Waiting for a free connection still counts.
            let dispatched = tokio::time::Instant::now();
            let (pool, body) = (pool.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut conn = loop {
                    if let Some(c) = pool.lock().await.pop_front() {
                        break c;
                    }
                    tokio::task::yield_now().await;
                };
                send(&mut conn, &body).await;
                let lat = dispatched.elapsed();
                pool.lock().await.push_back(conn);
                lat
            }));
        }
        let mut lat = Vec::with_capacity(total);
        for t in tasks {
            lat.push(t.await.unwrap());
        }
        row("fixed 1,000 req/s (16 conns)", lat, start.elapsed());

        // Closed loop: as fast as 8 connections go.
        let deadline = Instant::now() + Duration::from_secs(peak_secs);
        let start = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..8 {
            let mut conn = connect(addr, &ca).await;
            let body = body.clone();
            workers.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    send(&mut conn, &body).await;
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for w in workers {
            lat.extend(w.await.unwrap());
        }
        row("peak, closed loop (8 conns)", lat, start.elapsed());
    });
}
