//! A sample agent: what a real agent does with agentid, in one loop and no framework.
//!
//! 1. Reads its own ServiceAccount token, which the kubelet projects into the pod (audience `agentid`)
//!    and rotates; the file is read again on every round, so a rotated token is picked up.
//! 2. Exchanges it at the token broker for its task's token (`POST /v1/tasks/<ns>/<task>/token`), and
//!    keeps that until the decision point refuses it.
//! 3. Asks the decision point (AuthZEN `POST /access/v1/evaluation`) before every call of its tool.
//! 4. Calls the tool (plain HTTP here) only when allowed; when refused, drops the task token, so the
//!    next round asks the broker again (which refuses a completed task).
//!
//! Each step prints one JSON line to standard output; never a token (only its length, and when its own
//! was issued and expires). Built into the image `agentid.local/sample-agent` by
//! `e2e/tools/image.sh sample-agent` for tests/e2e_node_chart.rs, tests/e2e_token_rotation.rs and
//! `make demo`; configured by environment variables (see `Config::from_env`). There is no cluster DNS
//! on the test node, so addresses are `IP:port` and the TLS name is given separately.
//!
//! Run on a workstation for a try: `cargo run --example sample-agent` with the same variables set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

struct Config {
    /// The broker and the decision point (`IP:port`), and the name their certificate carries.
    broker: SocketAddr,
    pdp: SocketAddr,
    server_name: ServerName<'static>,
    /// PEM file with the CA that signed agentid's serving certificate.
    ca_file: String,
    /// The kubelet-projected ServiceAccount token (audience `agentid`).
    token_file: String,
    /// `<namespace>/<name>` of the AgentTask.
    task: (String, String),
    tool: String,
    action: String,
    destination: String,
    /// Where the tool listens (`IP:port`, HTTP), and the path called.
    tool_addr: SocketAddr,
    tool_path: String,
    interval: Duration,
}

impl Config {
    fn from_env() -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
        let or = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
        let addr = |k: &str| var(k)?.parse::<SocketAddr>().map_err(|e| format!("{k}: {e} (want IP:port)"));
        let task = var("AGENTID_TASK")?;
        let (ns, name) = task.split_once('/').ok_or("AGENTID_TASK: want <namespace>/<name>")?;
        let server_name =
            ServerName::try_from(var("AGENTID_SERVER_NAME")?).map_err(|e| format!("AGENTID_SERVER_NAME: {e}"))?;
        let interval_ms: u64 = or("INTERVAL_MS", "1000").parse().map_err(|e| format!("INTERVAL_MS: {e}"))?;
        Ok(Config {
            broker: addr("AGENTID_BROKER_ADDR")?,
            pdp: addr("AGENTID_PDP_ADDR")?,
            server_name,
            ca_file: or("AGENTID_CA_FILE", "/etc/agentid-ca/ca.crt"),
            token_file: or("AGENTID_TOKEN_FILE", "/var/run/agentid/token"),
            task: (ns.to_string(), name.to_string()),
            tool: var("TOOL")?,
            action: var("ACTION")?,
            destination: var("DESTINATION")?,
            tool_addr: addr("TOOL_ADDR")?,
            tool_path: or("TOOL_PATH", "/"),
            interval: Duration::from_millis(interval_ms),
        })
    }
}

/// One HTTP/1.1 request over `stream`; `(status, body)`.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    method: &str,
    path: &str,
    bearer: Option<&str>,
    body: &str,
) -> Result<(u16, String), String> {
    let auth = bearer.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: agent\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    // A TLS peer closing without close_notify still delivered the whole response with Connection: close.
    let _ = stream.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP response")?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
    Ok((status, body.to_string()))
}

async fn https(
    tls: &tokio_rustls::TlsConnector,
    cfg: &Config,
    addr: SocketAddr,
    path: &str,
    bearer: &str,
    body: &str,
) -> Result<(u16, String), String> {
    within(addr, async {
        let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let stream = tls.connect(cfg.server_name.clone(), tcp).await.map_err(|e| format!("TLS with {addr}: {e}"))?;
        exchange(stream, "POST", path, Some(bearer), body).await
    })
    .await
}

/// How long one request may take, connecting included: a peer that never answers (a Service whose
/// endpoint just went away) costs one round, not the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn within<T>(
    addr: SocketAddr,
    request: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(REQUEST_TIMEOUT, request)
        .await
        .unwrap_or_else(|_| Err(format!("{addr}: no answer within {REQUEST_TIMEOUT:?}")))
}

/// The `iat` and `exp` claims of a JWT (its payload decoded, the signature not checked: the broker does).
fn issued_and_expires(jwt: &str) -> (Value, Value) {
    use base64::Engine;
    let claims: Value = jwt
        .split('.')
        .nth(1)
        .and_then(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok())
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or(Value::Null);
    (claims["iat"].clone(), claims["exp"].clone())
}

fn say(line: Value) {
    println!("{line}");
}

/// One round: a task token (kept until the decision point refuses it), a question, and the tool call
/// when allowed.
async fn round(tls: &tokio_rustls::TlsConnector, cfg: &Config, task_token: &mut Option<String>) -> Result<(), String> {
    if task_token.is_none() {
        // Read every time: the kubelet rotates the projected token in place.
        let own = std::fs::read_to_string(&cfg.token_file).map_err(|e| format!("{}: {e}", cfg.token_file))?;
        // When it was issued and expires (claims, not the token): shows the kubelet's rotation in the log.
        let (iat, exp) = issued_and_expires(own.trim());
        say(json!({"step": "own-token", "iat": iat, "exp": exp}));
        let path = format!("/v1/tasks/{}/{}/token", cfg.task.0, cfg.task.1);
        let (status, body) = https(tls, cfg, cfg.broker, &path, own.trim(), "").await?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        match answer["token"].as_str().filter(|_| status == 200) {
            Some(t) => {
                say(json!({"step": "task-token", "status": status, "length": t.len()}));
                *task_token = Some(t.to_string());
            }
            None => {
                say(json!({"step": "task-token", "status": status, "error": answer["error"]}));
                return Ok(());
            }
        }
    }
    let Some(token) = task_token.as_deref() else { return Ok(()) };
    let question = json!({
        "action": {"name": cfg.action},
        "resource": {"type": "tool", "id": cfg.tool, "properties": {"destination": cfg.destination}},
    })
    .to_string();
    let (status, body) = https(tls, cfg, cfg.pdp, "/access/v1/evaluation", token, &question).await?;
    let verdict: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let allowed = verdict["decision"].as_bool() == Some(true);
    say(json!({"step": "decision", "status": status, "decision": allowed, "reasons": verdict["context"]["reasons"]}));
    if !allowed {
        // Expired, revoked, or the task is over: ask the broker again next round.
        *task_token = None;
        return Ok(());
    }
    let (status, _) = within(cfg.tool_addr, async {
        let tcp = tokio::net::TcpStream::connect(cfg.tool_addr).await.map_err(|e| format!("tool: {e}"))?;
        exchange(tcp, "GET", &cfg.tool_path, None, "").await
    })
    .await?;
    say(json!({"step": "tool", "tool": cfg.tool, "status": status}));
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sample-agent: {e}");
            std::process::exit(2);
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&cfg.ca_file).unwrap_or_else(|e| {
        eprintln!("sample-agent: {}: {e}", cfg.ca_file);
        std::process::exit(2)
    });
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        let _ = roots.add(cert);
    }
    let tls = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth(),
    ));
    let mut task_token = None;
    loop {
        if let Err(e) = round(&tls, &cfg, &mut task_token).await {
            say(json!({"step": "error", "error": e}));
        }
        tokio::time::sleep(cfg.interval).await;
    }
}
