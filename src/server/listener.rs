//! One accept loop for every HTTPS listener agentid runs (admission, token broker, decision point):
//! TLS with a reloadable configuration, and the limits that keep one misbehaving client from taking
//! the listener down — a cap on connections overall and per peer address, a TLS handshake timeout,
//! a header-read timeout (slowloris) and an idle timeout. `TCP_NODELAY` is set on every connection:
//! answers are small and must not wait for delayed ACKs. A [`Drain`] stops them gracefully: no new
//! connections; on HTTP/2 a GOAWAY for the open ones, whose requests in flight are still answered; on
//! HTTP/1.1 every further answer says `Connection: close`, and a connection is closed only once it has
//! been quiet for [`H1_QUIET`] (see `serve_connection` for why). An idle connection is closed the same
//! way, and every connection, once closed on this side, keeps reading until its client closes too (see
//! `linger`), so that a request written just as it closes is refused in a way the client retries, never
//! reset.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{HeaderValue, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// Connection limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections at most from one peer address.
    pub max_connections_per_peer: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a client has to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// A connection with no traffic for this long is closed. Longer than the idle timeout of Go's HTTP
    /// clients (90 s, the apiserver's), so that those close an idle keep-alive connection first: a server
    /// that closes it can race the client's next request, and a POST lost that way is not sent again.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_peer: 128,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The TLS configuration a listener uses for new connections; replaced on certificate renewal.
#[derive(Clone)]
pub struct TlsHandle(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl TlsHandle {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        TlsHandle(Arc::new(RwLock::new(config)))
    }

    pub fn set(&self, config: Arc<rustls::ServerConfig>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = config;
    }

    fn current(&self) -> Arc<rustls::ServerConfig> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The identities in the verified client certificate of a connection, as a request extension
/// (`Arc<PeerIdentity>`): present only on listeners with a client CA, and only when the client presented
/// a certificate that CA signed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI subject alternative names (SPIFFE IDs).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
}

impl PeerIdentity {
    /// The subject alternative names of a DER certificate; none when it cannot be parsed (rustls
    /// verified it, so that does not happen in practice).
    pub fn of_certificate(der: &[u8]) -> PeerIdentity {
        use x509_parser::extensions::GeneralName;
        let mut id = PeerIdentity::default();
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return id };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uris.push(u.to_string()),
                    GeneralName::DNSName(d) => id.dns_names.push(d.to_string()),
                    _ => {}
                }
            }
        }
        id
    }

    /// Whether any of the certificate's names is one of `names`.
    pub fn is_any_of(&self, names: &[String]) -> bool {
        self.uris.iter().chain(&self.dns_names).any(|n| names.contains(n))
    }
}

/// Open connections per peer address.
#[derive(Default)]
struct PeerCounts(Mutex<HashMap<IpAddr, usize>>);

struct PeerPermit {
    counts: Arc<PeerCounts>,
    ip: IpAddr,
}

impl PeerCounts {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<PeerPermit> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PeerPermit { counts: self.clone(), ip })
    }
}

impl Drop for PeerPermit {
    fn drop(&mut self) {
        let mut map = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// One HTTPS listener.
pub struct Listener {
    /// `webhook`, `broker`, `pdp`: a metric label and a log field.
    pub name: &'static str,
    pub listener: TcpListener,
    pub tls: TlsHandle,
    pub app: Router,
    pub limits: Limits,
    pub metrics: Option<Arc<Metrics>>,
    /// Told to stop by [`Drain::drain`]; `None`: serves until the process ends.
    pub drain: Option<watch::Receiver<bool>>,
}

/// Stops listeners gracefully (at SIGTERM, after the pod left its Service): they accept no more
/// connections, ask their clients to go elsewhere (HTTP/2 GOAWAY, HTTP/1.1 `Connection: close`) and
/// answer what is in flight. Every listener and every connection holds a receiver, so the sender
/// learns when the last one is done.
#[derive(Debug, Clone)]
pub struct Drain {
    tx: Arc<watch::Sender<bool>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain { tx: Arc::new(watch::Sender::new(false)) }
    }
}

impl Drain {
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    /// Starts draining and waits until every listener and connection subscribed has ended, at most
    /// `within`: true when they all did.
    pub async fn drain(&self, within: Duration) -> bool {
        self.tx.send_replace(true);
        tokio::time::timeout(within, self.tx.closed()).await.is_ok()
    }
}

/// Resolves once draining starts; never when nobody can start it any more.
async fn draining(rx: &mut watch::Receiver<bool>) {
    if rx.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await
    }
}

impl Listener {
    /// Binds `addr` (from a std listener, so the port is known before serving).
    pub fn bind(
        name: &'static str,
        addr: SocketAddr,
        tls: TlsHandle,
        app: Router,
        limits: Limits,
    ) -> std::io::Result<Self> {
        let std = std::net::TcpListener::bind(addr)?;
        std.set_nonblocking(true)?;
        Ok(Listener { name, listener: TcpListener::from_std(std)?, tls, app, limits, metrics: None, drain: None })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub async fn run(self) {
        let Listener { name, listener, tls, app, limits, metrics, drain } = self;
        // Without a Drain, a sender nobody holds: `draining` then never resolves.
        let mut drain = drain.unwrap_or_else(|| watch::Sender::new(false).subscribe());
        let global = Arc::new(Semaphore::new(limits.max_connections));
        let peers = Arc::new(PeerCounts::default());
        let refused = |reason: &'static str| {
            if let Some(m) = &metrics {
                m.connection_refused(name, reason);
            }
        };
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = draining(&mut drain) => {
                    info!(listener = name, "draining: accepting no more connections");
                    return;
                }
            };
            let (tcp, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    warn!(listener = name, error = %e, "accept failed");
                    refused("accept_error");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = global.clone().try_acquire_owned() else {
                refused("max_connections");
                continue;
            };
            let Some(peer_permit) = peers.try_acquire(peer.ip(), limits.max_connections_per_peer) else {
                refused("max_connections_per_peer");
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (tls, app, metrics, drain) = (tls.clone(), app.clone(), metrics.clone(), drain.clone());
            tokio::spawn(async move {
                let reason = serve_connection(tcp, peer, tls, app, limits, drain).await;
                if let (Some(m), Some(r)) = (&metrics, reason) {
                    m.connection_closed(name, r);
                }
                drop((permit, peer_permit));
            });
        }
    }
}

/// Serves one connection; returns why it was cut short, if it was.
async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: TlsHandle,
    app: Router,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) -> Option<&'static str> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
    let stream = match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, error = %e, "TLS handshake failed");
            return Some("handshake_failed");
        }
        Err(_) => return Some("handshake_timeout"),
    };
    // A client certificate is only ever present once rustls verified it against the listener's client CA.
    let peer_identity = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| {
        let id = PeerIdentity::of_certificate(c.as_ref());
        debug!(%peer, uris = ?id.uris, dns = ?id.dns_names, "client certificate verified");
        Arc::new(id)
    });
    // HTTP/2 only when negotiated: the apiserver asks for HTTP/1.1 alone when it calls a webhook through
    // its Service (kubernetes/kubernetes#75791), so that is what admission mostly sees.
    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
    let started = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    // HTTP/1.1, once this side wants the connection closed: every answer says `Connection: close`.
    let say_close = Arc::new(AtomicBool::new(false));
    // The stream comes back here when hyper is done with it, to be closed gently (see `linger`).
    let (give_back, mut returned) = tokio::sync::oneshot::channel();
    let io = TokioIo::new(IdleIo { inner: Some(stream), last: last.clone(), started, give_back: Some(give_back) });
    let closing_answer = say_close.clone();
    let service = app
        .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(id) = &peer_identity {
                req.extensions_mut().insert(id.clone());
            }
            req
        })
        .map_response(move |mut res: axum::response::Response| {
            if closing_answer.load(Ordering::Relaxed) {
                res.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let mut conn = Box::pin(builder.serve_connection(io, TowerToHyperService::new(service)));
    // When this side decided to close the connection (drain or idle timeout), and why.
    let mut closing: Option<Instant> = None;
    // Whether hyper was told to close (GOAWAY; on HTTP/1.1, close now if idle, else after the answer).
    let mut told = false;
    let mut reason = None;
    loop {
        let now_ms = started.elapsed().as_millis() as u64;
        let idle_for = Duration::from_millis(now_ms.saturating_sub(last.load(Ordering::Relaxed)));
        let wait = match closing {
            Some(since) => {
                let left = CLOSE_WITHIN.saturating_sub(since.elapsed());
                if told { left } else { left.min(H1_QUIET.saturating_sub(idle_for)) }
            }
            None => limits.idle_timeout.saturating_sub(idle_for),
        };
        if wait.is_zero() {
            match closing {
                Some(since) if told || since.elapsed() >= CLOSE_WITHIN => {
                    // Requests still unanswered after CLOSE_WITHIN: given up on.
                    reason = Some("close_timeout");
                    break;
                }
                // HTTP/1.1, quiet for H1_QUIET since this side decided to close.
                Some(_) => conn.as_mut().graceful_shutdown(),
                None => {
                    // Idle. HTTP/2: a GOAWAY first, so a request the client sends at this very moment is
                    // refused in a way it may retry, not lost with the connection. HTTP/1.1: closed at once;
                    // Go's clients (the apiserver) close theirs after 90 s, before this.
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                    reason = Some("idle_timeout");
                }
            }
            told = true;
            continue;
        }
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = draining(&mut drain), if closing.is_none() => {
                closing = Some(Instant::now());
                if h2 {
                    // Requests in flight are still answered; the client opens its next connection elsewhere.
                    conn.as_mut().graceful_shutdown();
                    told = true;
                } else {
                    // HTTP/1.1 has no GOAWAY. Closing a keep-alive connection that looks idle loses a request
                    // the client has just written and hyper not yet read, and a client may not send a POST
                    // again (Go's does not: the apiserver reports "EOF"). So the connection stays open and
                    // its next answer says `Connection: close`; only a connection quiet for H1_QUIET, which
                    // its client is unlikely to pick at that very moment, is closed under it.
                    say_close.store(true, Ordering::Relaxed);
                }
            }
        }
    }
    drop(conn);
    if let Ok(stream) = returned.try_recv() {
        linger(stream).await;
    }
    reason
}

/// How long a connection asked to close (drain, idle timeout) may take to answer what is in flight.
const CLOSE_WITHIN: Duration = Duration::from_secs(10);

/// How long an HTTP/1.1 connection that is to close (drain) must have moved no bytes before it is closed
/// under its client; until then its next answer closes it (`Connection: close`).
pub const H1_QUIET: Duration = Duration::from_secs(1);

/// How long a closed connection keeps reading (and discarding) what the client still sends.
const LINGER: Duration = Duration::from_secs(3);

/// Closes a connection hyper is done with the way a server must when its client may still be writing:
/// TLS close_notify and FIN first, then reading and discarding until the client closes too, for at most
/// [`LINGER`]. Closing the socket at once instead makes the kernel answer whatever the client sent in
/// the meantime with a reset, which can destroy the HTTP/2 GOAWAY still unread in the client's buffer:
/// a request the client wrote just as the connection closed then fails with "broken pipe" or
/// "connection reset" (which the apiserver does not retry) instead of being refused by the GOAWAY
/// (which it does retry, on another connection). kubernetes/kubernetes#127335 is this race.
async fn linger(mut tls: tokio_rustls::server::TlsStream<TcpStream>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tokio::time::timeout(LINGER, async move {
        let _ = tls.shutdown().await;
        let (mut tcp, _) = tls.into_inner();
        let mut buf = [0u8; 4096];
        while let Ok(n) = tcp.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// An I/O stream that records when it last moved bytes, and hands the stream back through `give_back`
/// when dropped.
struct IdleIo<T> {
    /// Always `Some` until dropped.
    inner: Option<T>,
    /// Milliseconds after `started` of the last read or write.
    last: Arc<AtomicU64>,
    started: Instant,
    give_back: Option<tokio::sync::oneshot::Sender<T>>,
}

impl<T> IdleIo<T> {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl<T> Drop for IdleIo<T> {
    fn drop(&mut self) {
        if let (Some(io), Some(tx)) = (self.inner.take(), self.give_back.take()) {
            let _ = tx.send(io);
        }
    }
}

/// `inner` of an [`IdleIo`], pinned; an error if it was already handed back (it never is while polled).
fn pinned<T: Unpin>(inner: &mut Option<T>) -> std::io::Result<Pin<&mut T>> {
    inner.as_mut().map(Pin::new).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotConnected))
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = pinned(&mut self.inner)?.poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        let res = pinned(&mut self.inner)?.poll_write(cx, data);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = pinned(&mut self.inner)?.poll_write_vectored(cx, bufs);
        if matches!(res, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        res
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|i| i.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        pinned(&mut self.inner)?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        pinned(&mut self.inner)?.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_names_of_a_client_certificate_are_read_from_its_subject_alternative_names() {
        use rcgen::{CertificateParams, KeyPair, SanType};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["envoy.gateways.svc".to_string()]).unwrap();
        p.subject_alt_names.push(SanType::URI("spiffe://cluster.local/ns/gateways/sa/envoy".try_into().unwrap()));
        let cert = p.self_signed(&key).unwrap();
        let id = PeerIdentity::of_certificate(cert.der());
        assert_eq!(id.uris, ["spiffe://cluster.local/ns/gateways/sa/envoy"]);
        assert_eq!(id.dns_names, ["envoy.gateways.svc"]);
        assert!(id.is_any_of(&["envoy.gateways.svc".into()]));
        assert!(id.is_any_of(&["spiffe://cluster.local/ns/gateways/sa/envoy".into()]));
        assert!(!id.is_any_of(&["spiffe://cluster.local/ns/gateways/sa/other".into(), "envoy".into()]));
        // Garbage is no identity, not a panic.
        assert_eq!(PeerIdentity::of_certificate(b"not a certificate"), PeerIdentity::default());
    }
}
