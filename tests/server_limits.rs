//! A bounded local flood against a real TLS listener serving the admission routes: idle TCP
//! connections, TLS connections that never finish their headers (slowloris) and connections beyond the
//! per-peer cap, all from 127.0.0.2, while the "apiserver" on 127.0.0.1 keeps getting its answers.
//! Issue 12, item 4. Every loop here is bounded in count and time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::authorization::v1::ResourceAttributes;
use k8s_openapi::jiff::Timestamp;
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use agentid::core::admission::exceptions::ExceptionSet;
use agentid::core::admission::review::UserInfo;
use agentid::core::admission::rules::StaticDirectory;
use agentid::metrics::Metrics;
use agentid::server::listener::{Drain, Limits, Listener, TlsHandle};
use agentid::server::tls;
use agentid::webhook::{AccessReviewer, ServiceAccountLookup, WebhookState, router};

struct Nobody;
impl AccessReviewer for Nobody {
    fn allowed<'a>(&'a self, _: &'a UserInfo, _: &'a ResourceAttributes) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(false) })
    }
}
impl ServiceAccountLookup for Nobody {
    fn exists<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Result<bool, String>> {
        Box::pin(async { Ok(false) })
    }
}

const LIMITS: Limits = Limits {
    max_connections: 96,
    max_connections_per_peer: 24,
    handshake_timeout: Duration::from_secs(1),
    header_read_timeout: Duration::from_secs(1),
    idle_timeout: Duration::from_secs(3),
};

async fn connect_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse().unwrap())?;
    socket.connect(addr).await
}

fn client_config(ca: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca) {
        roots.add(c.unwrap()).unwrap();
    }
    Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

/// A serving configuration for "localhost" from a fresh CA: the CA (PEM, for clients) and the server's handle.
fn localhost_tls() -> (Vec<u8>, TlsHandle) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let now = Timestamp::now();
    let (ca, ca_key) = tls::generate_ca(now).unwrap();
    let (cert, key, _) = tls::generate_serving(&ca_key, &["localhost".into()], now, Duration::from_secs(3600)).unwrap();
    let material =
        tls::TlsMaterial { cert_pem: cert.into_bytes(), key_pem: key.into_bytes(), ca_pem: None, not_after: None };
    (ca.into_bytes(), TlsHandle::new(tls::server_config(&material, None).unwrap()))
}

/// One AdmissionReview of a pod with a static secret, on a fresh connection: the HTTP status and body.
async fn review(addr: SocketAddr, ca: &[u8]) -> std::io::Result<(u16, String)> {
    let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u1","namespace":"agents","operation":"CREATE","userInfo":{"username":"dev"},"object":{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"agents"},"spec":{"serviceAccountName":"web","containers":[{"name":"c","image":"x","env":[{"name":"K","valueFrom":{"secretKeyRef":{"name":"s","key":"k"}}}]}]}}}}"#;
    let tcp = connect_from("127.0.0.1", addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(ca)).connect(name, tcp).await?;
    let req = format!(
        "POST /validate/workloads/enforce HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    tls.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

/// Whether the server closes `stream` within `within` (a read sees EOF or an error).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// A listener serving `app` on 127.0.0.1 that [`Drain`] stops: the CA for clients, its address, the drain.
fn draining_listener(app: axum::Router) -> (Vec<u8>, SocketAddr, Drain) {
    let (ca, handle) = localhost_tls();
    let mut listener = Listener::bind("webhook", "127.0.0.1:0".parse().unwrap(), handle, app, LIMITS).unwrap();
    let drain = Drain::default();
    listener.drain = Some(drain.subscribe());
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener.run());
    (ca, addr, drain)
}

/// A TLS connection to the listener at `addr` (HTTP/1.1: no ALPN).
async fn connect_tls(ca: &[u8], addr: SocketAddr) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = connect_from("127.0.0.1", addr).await?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(client_config(ca)).connect(name, tcp).await
}

/// Starts draining (SIGTERM) in a task of its own: whether every connection ended within `within`.
fn start_drain(drain: &Drain, within: Duration) -> tokio::task::JoinHandle<bool> {
    let drain = drain.clone();
    tokio::spawn(async move { drain.drain(within).await })
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_keeps_answering_through_a_connection_flood() {
    let (ca, handle) = localhost_tls();
    let metrics = Arc::new(Metrics::default());
    let state = Arc::new(WebhookState::new(
        Arc::new(StaticDirectory::default()),
        Arc::new(Nobody),
        Arc::new(Nobody),
        ExceptionSet::default(),
        metrics.clone(),
    ));
    let mut listener =
        Listener::bind("webhook", "127.0.0.1:0".parse().unwrap(), handle, router(state), LIMITS).unwrap();
    listener.metrics = Some(metrics.clone());
    let addr = listener.local_addr().unwrap();
    tokio::spawn(listener.run());

    // The flood: from 127.0.0.2, 60 connections that never start TLS (more than the per-peer cap); from
    // 127.0.0.4, 20 that finish TLS but trickle their headers one byte per 300 ms (never finishing).
    let mut raw = Vec::new();
    for _ in 0..60 {
        if let Ok(s) = connect_from("127.0.0.2", addr).await {
            raw.push(s);
        }
    }
    let mut slow = Vec::new();
    for _ in 0..20 {
        let Ok(tcp) = connect_from("127.0.0.4", addr).await else { continue };
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        if let Ok(Ok(tls)) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_rustls::TlsConnector::from(client_config(&ca)).connect(name, tcp),
        )
        .await
        {
            slow.push(tls);
        }
    }
    let trickle = tokio::spawn(async move {
        let mut cut = 0;
        for round in 0..20 {
            for s in slow.iter_mut() {
                let byte = b"POST /validate/workloads/enforce HTTP/1.1\r\n"[round % 40];
                let _ = s.write_all(&[byte]).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        for s in slow.iter_mut() {
            if closed_within(s, Duration::from_millis(200)).await {
                cut += 1;
            }
        }
        (slow.len(), cut)
    });

    // Meanwhile the apiserver's reviews are all answered, each on a new connection.
    for i in 0..50 {
        let (status, body) =
            tokio::time::timeout(Duration::from_secs(5), review(addr, &ca)).await.expect("answered in time").unwrap();
        assert_eq!(status, 200, "review {i}: {body}");
        assert!(body.contains(r#""allowed":false"#) && body.contains("static-secret-env"), "{body}");
    }

    // Connections past the per-peer cap were closed at once; those that never handshook, after 1 s.
    let mut closed = 0;
    for s in raw.iter_mut() {
        if closed_within(s, Duration::from_secs(3)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, raw.len(), "every raw connection is closed (cap or handshake timeout)");
    let (slow_opened, slow_cut) = trickle.await.unwrap();
    assert_eq!(slow_opened, 20, "the slowloris connections were accepted");
    assert_eq!(slow_cut, slow_opened, "slowloris connections are cut by the header-read timeout");
    let m = metrics.encode();
    assert!(
        m.contains(r#"agentid_connections_refused_total{listener="webhook",reason="max_connections_per_peer"}"#),
        "{m}"
    );
    assert!(m.contains(r#"agentid_connections_cut_total{listener="webhook",reason="handshake_timeout"}"#), "{m}");

    // An idle connection (TLS done, nothing sent) is closed after the idle timeout.
    let tcp = connect_from("127.0.0.3", addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut idle = tokio_rustls::TlsConnector::from(client_config(&ca)).connect(name, tcp).await.unwrap();
    assert!(closed_within(&mut idle, LIMITS.idle_timeout + Duration::from_secs(3)).await, "idle connection closed");
}

/// What a stopping replica does (SIGTERM after the preStop sleep): a request in flight is still answered
/// and its connection then closed, an idle connection is closed, no new connection is accepted, and the
/// drain reports when all that is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_answers_what_is_in_flight_and_accepts_nothing_new() {
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            "answered"
        }),
    );
    let (ca, addr, drain) = draining_listener(app);
    let mut idle = connect_tls(&ca, addr).await.unwrap();
    let mut busy = connect_tls(&ca, addr).await.unwrap();
    // Keep-alive: only the drain may end this connection.
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let draining = start_drain(&drain, Duration::from_secs(5));

    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), busy.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(read.is_ok(), "the busy connection was not closed after its answer: {text}");
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("answered"), "in-flight request lost: {text:?}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "the client is not told to go: {text}");
    assert!(closed_within(&mut idle, Duration::from_secs(2)).await, "an idle connection stayed open");
    assert!(draining.await.unwrap(), "the drain did not see every connection end");
    assert!(connect_from("127.0.0.1", addr).await.is_err(), "a new connection was accepted while stopping");
}

/// A client that writes on a connection the server is closing (a request sent just as a stopping replica's
/// GOAWAY or `Connection: close` is on its way) must not be answered with a TCP reset: a reset can destroy
/// what the client has not read yet (the GOAWAY that tells it to retry), and its next write then fails
/// with "broken pipe" (kubernetes/kubernetes#127335). The server closes its side first and keeps reading
/// until the client closes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closing_connection_reads_what_the_client_still_sends_instead_of_resetting_it() {
    let (ca, addr, drain) = draining_listener(axum::Router::new().route("/", axum::routing::get(|| async { "ok" })));
    let mut tls = connect_tls(&ca, addr).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tls.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"), "no answer before the drain");

    let draining = start_drain(&drain, Duration::from_secs(8));
    assert!(closed_within(&mut tls, Duration::from_secs(2)).await, "the server did not close its side");
    // The client had not noticed yet and sends its next request, in two writes (headers, then the rest),
    // the way an HTTP/2 client writes HEADERS and DATA.
    let tcp = &mut tls.get_mut().0;
    for part in [&b"\x17\x03\x03\x00\x20 a request's headers ..."[..], b" and its body"] {
        tcp.write_all(part).await.expect("the closing server reset the connection");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let end = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await.expect("read");
    assert!(matches!(end, Ok(0)), "the connection ended with {end:?}, not an orderly close");
    // Once the client closes too, the connection is done and so is the drain.
    drop(tls);
    let drained = tokio::time::timeout(Duration::from_secs(2), draining).await.expect("drain").unwrap();
    assert!(drained, "the drain did not see the connection end");
}

/// HTTP/1.1 has no GOAWAY, and the apiserver calls a webhook through its Service over HTTP/1.1 alone, on
/// keep-alive connections. A stopping replica that closed such a connection while it looked idle lost the
/// request the client had just written (the apiserver does not send a POST again: "failed to call
/// webhook: ... EOF", 1 of 10,859 admissions in CI while the leader's pod was deleted). A request on a
/// keep-alive connection after the drain started is answered, told `Connection: close`, and only then is
/// the connection closed; one that stays quiet is closed after `H1_QUIET`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_request_sent_as_the_drain_starts_is_answered_and_told_to_close() {
    use agentid::server::listener::H1_QUIET;
    let (ca, addr, drain) = draining_listener(axum::Router::new().route("/", axum::routing::post(|| async { "ok" })));
    let post = b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
    /// One answer on a keep-alive connection (the body is "ok", so it ends there).
    async fn answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
        let mut text = Vec::new();
        let mut buf = [0u8; 1024];
        while !text.ends_with(b"\r\n\r\nok") {
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.expect("an answer").unwrap();
            assert!(n > 0, "closed before the answer: {:?}", String::from_utf8_lossy(&text));
            text.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&text).to_ascii_lowercase()
    }
    let (mut used, mut quiet) = (connect_tls(&ca, addr).await.unwrap(), connect_tls(&ca, addr).await.unwrap());
    for c in [&mut used, &mut quiet] {
        c.write_all(post).await.unwrap();
        let first = answer(c).await;
        assert!(first.starts_with("http/1.1 200") && !first.contains("connection: close"), "{first}");
    }

    let draining = start_drain(&drain, Duration::from_secs(8));
    let drain_started = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The client picks its pooled connection and sends, not knowing the server is stopping.
    used.write_all(post).await.unwrap();
    let last = answer(&mut used).await;
    assert!(last.starts_with("http/1.1 200"), "the request after the drain started was not answered: {last}");
    assert!(last.contains("connection: close"), "the client is not told to go: {last}");
    assert!(closed_within(&mut used, Duration::from_secs(1)).await, "the told connection stayed open");

    assert!(closed_within(&mut quiet, H1_QUIET + Duration::from_secs(2)).await, "a quiet connection stayed open");
    // Closed once quiet for H1_QUIET (its last bytes moved just before the drain), not at the drain.
    assert!(drain_started.elapsed() >= H1_QUIET / 2, "a quiet connection was closed under its client at once");
    drop((used, quiet));
    let drained = tokio::time::timeout(Duration::from_secs(5), draining).await.expect("drain").unwrap();
    assert!(drained, "the drain did not see every connection end");
}
