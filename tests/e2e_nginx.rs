//! nginx as the policy enforcement point: a real nginx (e2e/tools/nginx.sh) in front of a small upstream,
//! asking agentid's decision point through `auth_request` before every call, with the configuration
//! documented in e2e/nginx/agentid-pep.conf.example, and curl as the agent. Granted calls reach the
//! upstream without the agent's token, ungranted ones get the decision point's 401/403 with the reason,
//! and completing the task refuses the same call within a second.
#![cfg(feature = "e2e")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use agentid::api::{AgentIdentity, AgentTask, GrantPhase, TaskPhase, ToolGrant};

const TOOLS: &str = "https://tools.example.com";
const PEP_TEMPLATE: &str = include_str!("../e2e/nginx/agentid-pep.conf.example");
const MAIN_TEMPLATE: &str = include_str!("../e2e/nginx/test-nginx.conf");

/// One request the upstream got.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
}

/// A tiny HTTP upstream on 127.0.0.1 answering `200 upstream-ok <path>` and recording every request.
struct Upstream {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else { continue };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let mut lines = head.split("\r\n");
                    let mut first = lines.next().unwrap_or_default().split(' ');
                    let method = first.next().unwrap_or_default().to_string();
                    let path = first.next().unwrap_or_default().to_string();
                    let authorization = lines
                        .take_while(|l| !l.is_empty())
                        .filter_map(|l| l.split_once(':'))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("authorization"))
                        .map(|(_, v)| v.trim().to_string());
                    let body = format!("upstream-ok {path}");
                    record.lock().unwrap().push(Seen { method, path, authorization });
                    let res = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(res.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Upstream { port, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn got(&self, path: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.path == path).collect()
    }
}

/// The nginx child process; killed (and reaped) on drop, also when the test fails. On failure its error
/// log is printed.
struct Nginx {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default();
            eprintln!("--- nginx error.log ---\n{log}");
            let log = std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default();
            eprintln!("--- nginx access.log ---\n{log}");
        }
    }
}

/// `template` with every `(from, to)` replaced; each `from` must occur, so the documented configuration
/// cannot drift away from what this test runs.
fn render(template: &str, substitutions: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (from, to) in substitutions {
        assert!(out.contains(from), "the template no longer contains {from:?}");
        out = out.replace(from, to);
    }
    out
}

/// The nginx binary: e2e/tools/nginx.sh finds or installs it, and fails loudly when it cannot.
fn nginx_binary() -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/tools/nginx.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("runs e2e/tools/nginx.sh");
    assert!(out.status.success(), "e2e/tools/nginx.sh failed ({}): nginx is required for this test", out.status);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

impl Nginx {
    /// Renders e2e/nginx/agentid-pep.conf.example for these ports and this CA, and starts nginx on it.
    async fn start(dir: &Path, upstream: u16, pdp: u16, ca_pem: &[u8]) -> Nginx {
        let nginx = nginx_binary();
        let port = free_port();
        let d = dir.display().to_string();
        std::fs::write(dir.join("agentid-ca.crt"), ca_pem).unwrap();
        let pep = render(
            PEP_TEMPLATE,
            &[
                ("listen 80;", format!("listen 127.0.0.1:{port};")),
                ("http://crm-backend:8080", format!("http://127.0.0.1:{upstream}")),
                (
                    "https://agentid.agentid-system.svc:8445/forward-auth",
                    format!("https://127.0.0.1:{pdp}/forward-auth"),
                ),
                ("proxy_ssl_name agentid.agentid-system.svc;", "proxy_ssl_name localhost;".into()),
                ("/etc/nginx/agentid-ca.crt", format!("{d}/agentid-ca.crt")),
            ],
        );
        std::fs::write(dir.join("agentid-pep.conf"), pep).unwrap();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, render(MAIN_TEMPLATE, &[("@DIR@", d.clone())])).unwrap();
        let args = |extra: &[&str]| {
            let mut c = Command::new(&nginx);
            c.args(["-p", &d, "-e", &format!("{d}/error.log"), "-c"]).arg(&conf).args(extra);
            c
        };
        let test = args(&["-t"]).output().unwrap();
        assert!(test.status.success(), "nginx -t: {}", String::from_utf8_lossy(&test.stderr));
        let child = args(&[]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let mut n = Nginx { child, dir: dir.to_path_buf(), port };
        wait_until(Duration::from_secs(10), "nginx listening", || {
            let exited = n.child.try_wait().unwrap();
            assert!(exited.is_none(), "nginx exited: {exited:?}");
            async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ()) }
        })
        .await;
        n
    }
}

/// What curl got: status, response headers (lower-case names) and body.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn reason(&self) -> &str {
        self.header("x-agentid-reason").unwrap_or("")
    }
}

/// The agent: a real curl process calling `path` through nginx as `crm.local`, with `token` as its
/// Bearer token and `extra` curl arguments.
async fn curl(port: u16, method: &str, path: &str, token: Option<&str>, extra: &[&str]) -> Response {
    let mut args: Vec<String> =
        ["-s", "-S", "--max-time", "10", "-D", "-", "-o", "-", "-w", "\n%{http_code}", "-X", method]
            .into_iter()
            .map(String::from)
            .collect();
    args.extend(["-H".into(), "Host: crm.local".into()]);
    if let Some(t) = token {
        args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("http://127.0.0.1:{port}{path}"));
    let out = tokio::task::spawn_blocking(move || Command::new("curl").args(&args).output().expect("curl runs"))
        .await
        .unwrap();
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').unwrap();
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    let headers = head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response { status: code.trim().parse().unwrap(), headers, body: body.to_string() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_enforces_the_decision_point() {
    let env = env("nginx").await;
    let _op = start_operator(&env.client, operator_config(&env.ns));
    let hook = Webhook::start(&env.client, &env.ns).await;
    hook.label(&env.ns, None).await;
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &env.ns);
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &env.ns);
    let agent: AgentIdentity = from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: bot}}\nspec: {{owner: team-crm, audiences: [{TOOLS}]}}"
    ));
    agents.create(&PostParams::default(), &agent).await.unwrap();
    let grant: ToolGrant = from_yaml(
        "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: crm-read}\nspec:
  agentRef: {name: bot}
  tools:
  - {name: crm, actions: [read], destinations: ['http://crm.local/api/', 'http://reports.local/'], maxDataSensitivity: internal}",
    );
    grants.create(&PostParams::default(), &grant).await.unwrap();
    let task: AgentTask = from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentTask\nmetadata: {{name: t1}}\nspec: {{agentRef: {{name: bot}}, purpose: crm lookup, audiences: [{TOOLS}], ttl: 15m}}"
    ));
    tasks.create(&PostParams::default(), &task).await.unwrap();
    wait_until(Duration::from_secs(30), "task Active and grant Active", || async {
        let t = tasks.get("t1").await.ok()?.status?.phase?;
        let g = grants.get("crm-read").await.ok()?.status?.phase?;
        (t == TaskPhase::Active && g == GrantPhase::Active).then_some(())
    })
    .await;

    // The agent fetches its task token from the broker with its own ServiceAccount token.
    let own = sa_token(&env.client, &env.ns, "agent-bot", "agentid").await;
    let (status, body) = hook.post(&format!("/v1/tasks/{}/t1/token", env.ns), Some(&own)).await;
    assert_eq!(status, 200, "{body}");
    let token = serde_json::from_str::<Value>(&body).unwrap()["token"].as_str().unwrap().to_string();

    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let nginx = Nginx::start(dir.path(), upstream.port, hook.pdp_addr.port(), &hook.ca_pem().await).await;
    let port = nginx.port;

    // Granted: through nginx to the upstream, once the decision point has its state; the token stays
    // at the PEP.
    let r = wait_until(Duration::from_secs(30), "granted call through nginx", || async {
        let r = curl(port, "GET", "/api/accounts", Some(&token), &[]).await;
        (r.reason() != "not-ready").then_some(r)
    })
    .await;
    assert_eq!((r.status, r.body.as_str()), (200, "upstream-ok /api/accounts"), "{r:?}");
    assert_eq!(r.header("x-agentid-reason"), None, "{r:?}");
    assert!(r.header("x-agentid-decision-id").is_some_and(|d| d.len() == 32), "{r:?}");
    let got = upstream.got("/api/accounts");
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].method.as_str(), got[0].authorization.as_deref()),
        ("GET", None),
        "token passed through: {got:?}"
    );
    let r = curl(port, "GET", "/api/accounts?id=7", Some(&token), &[]).await;
    assert_eq!((r.status, r.body.as_str()), (200, "upstream-ok /api/accounts?id=7"), "{r:?}");

    // Not granted: another path of the same host, a write, a path climbing out of /api/.
    let r = curl(port, "GET", "/other/accounts", Some(&token), &[]).await;
    assert_eq!((r.status, r.reason()), (403, "destination-not-granted"), "{r:?}");
    assert!(r.header("x-agentid-decision-id").is_some(), "{r:?}");
    let r = curl(port, "POST", "/api/accounts", Some(&token), &["--data", "name=x"]).await;
    assert_eq!((r.status, r.reason()), (403, "action-not-granted"), "{r:?}");
    let r = curl(port, "GET", "/api/../other/accounts", Some(&token), &["--path-as-is"]).await;
    assert_eq!((r.status, r.reason()), (403, "destination-not-granted"), "{r:?}");
    let r = curl(port, "GET", "/api/%2e%2e/other/accounts", Some(&token), &["--path-as-is"]).await;
    assert_eq!((r.status, r.reason()), (403, "invalid-destination"), "{r:?}");

    // Headers of the agent's own do not change the question (proxy_pass_request_headers off). The
    // decision point prefers X-Original-Host to X-Forwarded-Host: passed on, it would let the agent have
    // a call to crm.local/other/ judged as one to reports.local, which the grant allows.
    let r = curl(port, "GET", "/other/spoofed", Some(&token), &["-H", "X-Original-Host: reports.local"]).await;
    assert_eq!((r.status, r.reason()), (403, "destination-not-granted"), "{r:?}");
    let r = curl(port, "GET", "/other/spoofed", Some(&token), &["-H", "X-Original-URI: /api/x"]).await;
    assert_eq!((r.status, r.reason()), (403, "destination-not-granted"), "{r:?}");
    let spoofed = [
        "-H",
        "X-Original-Host: evil.example",
        "-H",
        "X-Original-Proto: https",
        "-H",
        "X-Forwarded-Uri: /other/x",
        "-H",
        "X-Original-Method: DELETE",
        "-H",
        "X-Agentid-Tool: other",
        "-H",
        "X-Agentid-Sensitivity: restricted",
        "-H",
        "X-Agentid-Task: another-task",
        "-H",
        "Mcp-Method: tools/call",
        "-H",
        "Mcp-Name: other",
    ];
    let r = curl(port, "GET", "/api/spoofed", Some(&token), &spoofed).await;
    assert_eq!((r.status, r.body.as_str()), (200, "upstream-ok /api/spoofed"), "{r:?}");

    // No token, a bad token, or the broker's audience: 401 with the challenge.
    let r = curl(port, "GET", "/api/accounts", None, &[]).await;
    assert_eq!((r.status, r.reason()), (401, "unauthenticated"), "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"), "{r:?}");
    let r = curl(port, "GET", "/api/accounts", Some("garbage"), &[]).await;
    assert_eq!((r.status, r.reason()), (401, "unauthenticated"), "{r:?}");
    let r = curl(port, "GET", "/api/accounts", Some(&own), &[]).await;
    assert_eq!((r.status, r.reason()), (401, "unauthenticated"), "{r:?}");

    // The sub-request location is internal.
    let r = curl(port, "GET", "/_agentid", Some(&token), &[]).await;
    assert_eq!(r.status, 404, "{r:?}");

    // Nothing denied reached the upstream.
    let paths: Vec<String> = upstream.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/api/accounts", "/api/accounts?id=7", "/api/spoofed"], "the upstream got a denied call");
    assert!(upstream.seen().iter().all(|s| s.authorization.is_none()), "{:?}", upstream.seen());

    // Completing the task: the same call is refused within a second.
    let patch = json!({"spec": {"completed": true}});
    tasks.patch("t1", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let started = Instant::now();
    let r = loop {
        let r = curl(port, "GET", "/api/accounts", Some(&token), &[]).await;
        if r.status != 200 {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still allowed after {:?}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    println!("task completed: refused by nginx after {took:?} ({} {})", r.status, r.reason());
    assert!(matches!((r.status, r.reason()), (403, "task-not-active") | (401, "unauthenticated")), "{r:?}");
    assert!(took < Duration::from_secs(1), "revoked after {took:?}");
    let before = upstream.seen().len();
    let r = curl(port, "GET", "/api/accounts", Some(&token), &[]).await;
    assert!(matches!(r.status, 401 | 403), "{r:?}");
    assert_eq!(upstream.seen().len(), before, "a refused call reached the upstream");

    drop(nginx);
    drop(upstream);
    hook.stop().await;
}
