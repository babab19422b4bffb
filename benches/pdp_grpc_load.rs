//! The decision point's Envoy ext_authz v3 interface (gRPC) under load, and OPA's Envoy plugin side by side.
//!
//! The world of benches/pdp_load.rs (benches/common/pdp_world.rs: 1,000 agents × 20 ToolGrants, a fixed
//! ES256 issuer key, 1,000 pre-signed agent tokens) in a ready `PdpState`, served with
//! `agentid::pdp::grpc::interfaces` on agentid's own TLS [`Listener`] (gRPC is HTTP/2, negotiated by ALPN)
//! on 127.0.0.1, and driven by **ghz** (the Go load client; e2e/tools/build.sh builds it into .cache/bin).
//! The `CheckRequest`s are what Envoy sends for a route with `context_extensions {tool, action}`: method,
//! scheme, host, path and the agent's `authorization: Bearer` header. ghz gets a JSON array of 1,000 of
//! them, one per agent, which it sends round-robin (ghz docs, `--data`: "In case of array the messages
//! will be sent in round-robin fashion"), so every call verifies (or finds in agentid's cache) a different
//! agent's token. Measured, for an allowed call and a denied one (destination not granted):
//!
//! - peak: `ghz -c 8 --connections 2 -n 50000` (8 workers in a closed loop over 2 HTTP/2 connections);
//! - latency at a fixed rate: `ghz --rps 1000 -n 10000 -c 16 --connections 2` (10 s);
//!
//! each after a warm-up run, from ghz's `--format json` report (latency percentiles of ghz's own
//! measurement, per call, client side). ghz does not look at the answers: that every measured call got
//! the expected decision is checked from agentid's decision counters, and before measuring, both engines
//! are checked to agree (decision, reason, HTTP status of the denial, grant, headers to remove) on the
//! agreement questions of pdp_load, and grpcurl sends the first message of each ghz data file to both.
//!
//! With `AGENTID_BENCH_OPA_ENVOY=<path>` (`make bench-pdp-grpc` builds OPA v1.14.1 with opa-envoy-plugin
//! v1.14.1-envoy via e2e/tools/build-opa-envoy.sh) the same grants are written as OPA data and
//! `opa run --server` with the `envoy_ext_authz_grpc` plugin serves bench/opa/envoy.rego (the policy of
//! bench/opa/policy.rego for the CheckRequest input; the answer at `agentid/envoy/result`). The plugin's
//! gRPC server has no TLS (plaintext gRPC or a Unix socket only), so OPA is measured over plaintext
//! HTTP/2 and agentid pays for TLS; and the plugin gives evaluation no inter-query value cache, so OPA
//! verifies every token's ES256 signature (agentid verifies each token once). OPA is therefore measured
//! twice: verifying tokens, and without verification (`contextExtensions.bench_verify_token: "false"`, a
//! benchmark knob of envoy.rego), the lower bound of what a token cache could buy it.
//!
//! The agentid server runs on its own 2-thread runtime; OPA (GOMAXPROCS = the machine's cores) and ghz
//! (likewise) share the machine. `make bench-pdp-grpc`, or `cargo bench --bench pdp_grpc_load` (ghz from
//! `AGENTID_BENCH_GHZ`, else .cache/bin/ghz, else PATH). Without `--bench` (`cargo test --benches`) it builds
//! a small world, checks agentid's answers over gRPC with its own client and skips ghz and OPA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::jiff::Timestamp;
use prost::Message;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use agentid::metrics::DecisionLabels;
use agentid::pdp::PdpState;
use agentid::pdp::grpc::interfaces;

// The world (agents, grants, tokens, OPA data, the calls and the agreement cases), shared with
// benches/pdp_load.rs.
#[path = "../tests/support/envoy_protos.rs"]
mod envoy_protos;
#[path = "common/pdp_world.rs"]
mod world;
use world::*;

// The allocator agentid ships with, as in benches/pdp_load.rs.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const ENVOY_POLICY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/opa/envoy.rego");
const CHECK: &str = "envoy.service.auth.v3.Authorization/Check";
/// Where OPA's Envoy plugin finds the answer (the object form: allowed, headers, status, metadata).
const OPA_PATH: &str = "agentid/envoy/result";

/// How big: `--bench` runs the real thing, anything else a smoke run without ghz and OPA.
struct Plan {
    agents: usize,
    warmup: usize,
    peak: usize,
    rate: u64,
    fixed: usize,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        let agents = if quick { 50 } else { 1000 };
        Plan { agents, warmup: 3000, peak: 50_000, rate: 1000, fixed: 10_000 }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Calls (world::Call) as ext_authz CheckRequests: as protobuf for our own client, as protobuf JSON for ghz.

/// `https://host/path?q` → (`https`, `host`, `/path?q`).
fn split_url(destination: &str) -> (&str, &str, &str) {
    let (scheme, rest) = destination.split_once("://").unwrap();
    let at = rest.find('/').unwrap_or(rest.len());
    let path = if at == rest.len() { "/" } else { &rest[at..] };
    (scheme, &rest[..at], path)
}

/// The route's `context_extensions`; `verify: false` adds the OPA-only benchmark knob of envoy.rego.
fn extensions(call: &Call, verify: bool) -> Vec<(String, String)> {
    let mut ext = vec![("tool".to_string(), call.tool.clone()), ("action".to_string(), call.action.clone())];
    if let Some(s) = call.sensitivity {
        ext.push(("sensitivity".into(), s.into()));
    }
    if !verify {
        ext.push(("bench_verify_token".into(), "false".into()));
    }
    ext
}

fn check_request(call: &Call, verify: bool) -> CheckRequest {
    let (scheme, host, path) = split_url(&call.destination);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    scheme: scheme.into(),
                    host: host.into(),
                    path: path.into(),
                    headers: [("authorization".to_string(), format!("Bearer {}", call.token))].into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions(call, verify).into_iter().collect(),
            ..Default::default()
        }),
    }
}

/// The same request in protobuf JSON, as ghz and grpcurl read it.
fn check_json(call: &Call, verify: bool) -> Value {
    let (scheme, host, path) = split_url(&call.destination);
    let ext: serde_json::Map<String, Value> =
        extensions(call, verify).into_iter().map(|(k, v)| (k, json!(v))).collect();
    json!({"attributes": {"contextExtensions": ext, "request": {"http": {"method": "GET", "scheme": scheme,
        "host": host, "path": path, "headers": {"authorization": format!("Bearer {}", call.token)},
        "protocol": "HTTP/1.1"}}}})
}

// ---------------------------------------------------------------------------------------------------------
// A minimal gRPC client (hyper HTTP/2, over TLS with ALPN h2 or plaintext), for the agreement checks.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Engine {
    Agentid,
    Opa { verify: bool },
}

impl Engine {
    fn label(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Engine::Agentid => ("agentid", "TLS (h2 by ALPN)", "verify token"),
            Engine::Opa { verify: true } => ("OPA-Envoy", "plaintext h2c", "verify token"),
            Engine::Opa { verify: false } => ("OPA-Envoy", "plaintext h2c", "no verification"),
        }
    }
}

#[derive(Clone)]
struct Target {
    engine: Engine,
    addr: SocketAddr,
    /// agentid: TLS trusting the bench CA; OPA's plugin: none.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    fn agentid(addr: SocketAddr, ca: &[u8]) -> Target {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(rustls_pki_types::CertificateDer::from_pem_slice(ca).unwrap()).unwrap();
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Target { engine: Engine::Agentid, addr, tls: Some(Arc::new(config)) }
    }

    fn opa(addr: SocketAddr, verify: bool) -> Target {
        Target { engine: Engine::Opa { verify }, addr, tls: None }
    }

    async fn check(&self, req: &CheckRequest) -> Result<CheckResponse, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        match &self.tls {
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
                let io = tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await;
                unary(io.map_err(|e| e.to_string())?, "https://localhost", req).await
            }
            None => unary(tcp, &format!("http://{}", self.addr), req).await,
        }
    }
}

/// One unary `Check` on a fresh HTTP/2 connection.
async fn unary<T>(io: T, base: &str, req: &CheckRequest) -> Result<CheckResponse, String>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let msg = req.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let request = hyper::Request::post(format!("{base}/{CHECK}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
    let res = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.map_err(|e| e.to_string())?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    let status = trailers.get("grpc-status").or_else(|| headers.get("grpc-status"));
    let status = status.and_then(|s| s.to_str().ok()).unwrap_or("none");
    let bytes = body.to_bytes();
    if status != "0" || bytes.len() < 5 {
        return Err(format!("grpc-status {status}, {} bytes", bytes.len()));
    }
    CheckResponse::decode(&bytes[5..]).map_err(|e| e.to_string())
}

/// What agreement compares: allowed, the reason and (of an allow) the grant in `dynamic_metadata`, the
/// denied response's HTTP status, the headers an allowed request loses.
#[derive(Debug, PartialEq, Eq)]
struct Verdict {
    allow: bool,
    reason: Option<String>,
    grant: Option<String>,
    http_status: Option<i32>,
    headers_to_remove: Vec<String>,
}

fn verdict(r: &CheckResponse) -> Verdict {
    let meta = |k: &str| {
        let v = r.dynamic_metadata.as_ref()?.fields.get(k)?;
        match v.kind.as_ref()? {
            Kind::StringValue(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    };
    let (http_status, headers_to_remove) = match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => (d.status.as_ref().map(|s| s.code), Vec::new()),
        Some(HttpResponse::OkResponse(o)) => (None, o.headers_to_remove.clone()),
        _ => (None, Vec::new()),
    };
    Verdict {
        allow: r.status.as_ref().map_or(0, |s| s.code) == 0,
        reason: meta("reason"),
        grant: meta("grant"),
        http_status,
        headers_to_remove,
    }
}

/// Every engine answers every agreement question as expected, and all the same way. Returns the
/// number of answers checked.
async fn check_agreement(targets: &[Target], cases: &[Agreement]) -> usize {
    let mut asked = 0;
    for case in cases {
        let mut first: Option<Verdict> = None;
        for t in targets {
            let verify = t.engine != (Engine::Opa { verify: false });
            if case.needs_verification && !verify {
                continue;
            }
            let what = format!(
                "{:?} on {} {} {} {:?}",
                t.engine, case.call.tool, case.call.action, case.call.destination, case.call.sensitivity
            );
            let answer = t.check(&check_request(&case.call, verify)).await;
            let mut v = verdict(&answer.unwrap_or_else(|e| panic!("{what}: {e}")));
            // agentid names the closest grant of a denial too; the Rego (as policy.rego) names none.
            if !v.allow {
                v.grant = None;
            }
            assert_eq!((v.allow, v.reason.as_deref()), (case.allow, case.reason), "{what}: {v:?}");
            let status = match case.reason {
                None => None,
                Some("unauthenticated") => Some(401),
                Some(_) => Some(403),
            };
            assert_eq!(v.http_status, status, "{what}: {v:?}");
            assert_eq!(v.headers_to_remove, if case.allow { vec!["authorization"] } else { vec![] }, "{what}");
            assert_eq!(v.grant.is_some(), case.allow, "{what}: an allow names its grant: {v:?}");
            match &first {
                None => first = Some(v),
                Some(f) => assert_eq!(&v, f, "{what}: differs from {:?}", targets[0].engine),
            }
            asked += 1;
        }
    }
    asked
}

// ---------------------------------------------------------------------------------------------------------
// ghz and grpcurl.

/// Where the envoy-types crate keeps the .proto files (there is no reflection), as tests/e2e_grpc.rs finds
/// them, and the import paths ghz and grpcurl need.
fn import_paths() -> Vec<PathBuf> {
    let proto = envoy_protos::proto_dir();
    ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"].iter().map(|d| proto.join(d)).collect()
}

/// A Go tool: `$var`, else .cache/bin/<name>, else on PATH.
fn tool(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let cached = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/bin").join(name);
    if cached.is_file() {
        return Some(cached);
    }
    let on_path = std::env::var_os("PATH")?;
    std::env::split_paths(&on_path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// How ghz and grpcurl reach an engine: TLS trusting the bench CA (as `localhost`), or plaintext.
struct Endpoint {
    addr: SocketAddr,
    ca: Option<PathBuf>,
}

struct Ghz {
    bin: PathBuf,
    grpcurl: Option<PathBuf>,
    imports: Vec<PathBuf>,
}

/// One ghz run's report.
#[derive(Clone, Copy)]
struct Run {
    count: u64,
    errors: u64,
    rps: f64,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

impl Ghz {
    fn common(&self, e: &Endpoint) -> Vec<String> {
        let mut args = vec!["--proto".to_string(), "envoy/service/auth/v3/external_auth.proto".into()];
        args.push("--import-paths".into());
        args.push(self.imports.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(","));
        match &e.ca {
            Some(ca) => {
                args.extend(["--cacert".into(), ca.display().to_string(), "--cname".into(), "localhost".into()])
            }
            None => args.push("--insecure".into()),
        }
        args
    }

    /// `ghz … -D data <load>` and its JSON report.
    fn run(&self, e: &Endpoint, data: &Path, load: &[&str]) -> Run {
        let mut args = self.common(e);
        args.extend(["--call".into(), CHECK.into(), "-D".into(), data.display().to_string()]);
        // The data has no template actions: parsed once, cached per message.
        args.extend(["--disable-template-data".into(), "--format".into(), "json".into()]);
        args.extend(load.iter().map(|s| s.to_string()));
        args.push(e.addr.to_string());
        let out = Command::new(&self.bin).args(&args).stdin(Stdio::null()).output().expect("ghz");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "ghz {}: {}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&out.stdout)
            )
        });
        let pct = |p: u64| {
            report["latencyDistribution"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["percentage"] == p))
                .and_then(|x| x["latency"].as_f64())
                .unwrap_or(f64::NAN)
                / 1e3
        };
        let errors = report["errorDistribution"].as_object().map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        Run {
            count: report["count"].as_u64().unwrap_or(0),
            errors,
            rps: report["rps"].as_f64().unwrap_or(0.0),
            p50: pct(50),
            p90: pct(90),
            p99: pct(99),
            max: report["slowest"].as_f64().unwrap_or(f64::NAN) / 1e3,
        }
    }

    /// The first message of a ghz data file through grpcurl (the same JSON decoding as ghz): the decision
    /// and reason it gets.
    fn grpcurl_first(&self, e: &Endpoint, data: &Path) -> Option<(i64, String)> {
        let bin = self.grpcurl.as_ref()?;
        let all: Value = serde_json::from_slice(&std::fs::read(data).unwrap()).unwrap();
        let mut args: Vec<String> = Vec::new();
        for p in &self.imports {
            args.extend(["-import-path".into(), p.display().to_string()]);
        }
        args.extend(["-proto".into(), "envoy/service/auth/v3/external_auth.proto".into()]);
        match &e.ca {
            Some(ca) => {
                args.extend(["-cacert".into(), ca.display().to_string(), "-servername".into(), "localhost".into()])
            }
            None => args.push("-plaintext".into()),
        }
        args.extend(["-d".into(), all[0].to_string(), e.addr.to_string(), CHECK.into()]);
        let out = Command::new(bin).args(&args).output().expect("grpcurl");
        assert!(out.status.success(), "grpcurl: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let code = v["status"]["code"].as_i64().unwrap_or(0);
        Some((code, v["dynamicMetadata"]["reason"].as_str().unwrap_or_default().to_string()))
    }
}

// ---------------------------------------------------------------------------------------------------------
// OPA with its Envoy plugin.

async fn start_opa_envoy(bin: &Path, dir: &Path, grpc: SocketAddr) -> Opa {
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let child = Command::new(bin)
        .args(["run", "--server", "--addr", &http.to_string(), "--log-level", "error"])
        // As in pdp_load: OPA's documented storage optimisation for read-heavy policies, and its cache of
        // verified tokens (which the Envoy plugin, v1.14.1-envoy, does not hand to evaluation: see
        // bench/opa/envoy.rego).
        .arg("--optimize-store-for-read-speed")
        .args(["--set", "caching.inter_query_builtin_value_cache.named.io_jwt.max_num_entries=10000"])
        .args(["--set", &format!("plugins.envoy_ext_authz_grpc.addr={grpc}")])
        .args(["--set", &format!("plugins.envoy_ext_authz_grpc.path={OPA_PATH}")])
        .arg(ENVOY_POLICY)
        .arg(dir.join("data.json"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    Opa(child)
}

/// Waits until `target` answers a Check (OPA's plugin starts its gRPC server after the policy loads).
async fn wait_serving(opa: &mut Opa, target: &Target, probe: &CheckRequest) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = opa.0.try_wait().unwrap() {
            panic!("opa exited before serving: {status}");
        }
        if target.check(probe).await.is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "opa's Envoy plugin did not answer within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------

fn decisions(state: &PdpState, decision: &str, reason: &str) -> u64 {
    let labels = DecisionLabels { decision: decision.into(), reason: reason.into() };
    state.metrics.decisions.get_or_create(&labels).get()
}

struct Measured {
    engine: Engine,
    allow: bool,
    load: String,
    run: Run,
}

fn us(x: f64) -> String {
    if x < 10.0 { format!("{x:.1}") } else { format!("{x:.0}") }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing useful: run briefly then.
    let quick = !std::env::args().any(|a| a == "--bench");
    let plan = Plan::new(quick);
    let opa_bin = std::env::var_os("AGENTID_BENCH_OPA_ENVOY").filter(|s| !s.is_empty()).map(PathBuf::from);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let built = Instant::now();
    let w = world(plan.agents);
    let signer = Signer::new();
    let now = Timestamp::now();
    let tokens: Vec<String> = (0..plan.agents).map(|n| signer.token(n, now.as_second())).collect();
    let state = pdp_state(&w, &signer);
    println!(
        "\nworld: {} agents × {GRANTS_PER_AGENT} grants, {} tokens signed, ready in {:.2} s; {} cores, load average {}",
        plan.agents,
        tokens.len(),
        built.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );

    // agentid: ext_authz and AuthZEN on its TLS listener (HTTP/2 by ALPN), on its own 2-thread runtime.
    let Served { addr, ca, .. } = serve(interfaces(state.clone()), now);

    // Files for ghz, grpcurl and OPA in the target's temporary directory.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pdp-bench-grpc");
    let dir = dir.as_path();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.crt"), &ca).unwrap();
    let allowed: &Vec<Call> = &(0..plan.agents).map(|n| Call::allowed(&tokens, n)).collect();
    let denied: &Vec<Call> = &(0..plan.agents).map(|n| Call::denied(&tokens, n)).collect();
    let data_file = |allow: bool, verify: bool| {
        let name = format!("{}{}.json", if allow { "allow" } else { "deny" }, if verify { "" } else { "-noverify" });
        let calls = if allow { allowed } else { denied };
        let msgs: Vec<Value> = calls.iter().map(|c| check_json(c, verify)).collect();
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(&msgs).unwrap()).unwrap();
        path
    };

    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let forged = Signer::new().token(3.min(plan.agents - 1), now.as_second());
        let stranger = signer.token(plan.agents + 7, now.as_second());
        let cases = agreement_cases(&tokens, &forged, &stranger);
        let mut targets = vec![Target::agentid(addr, &ca)];

        let mut _opa = None;
        let mut opa_grpc = None;
        if let Some(bin) = opa_bin.as_deref().filter(|_| !quick) {
            std::fs::write(dir.join("data.json"), serde_json::to_vec(&opa_data(&w, &jwks(&signer))).unwrap()).unwrap();
            let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let started = Instant::now();
            let mut opa = start_opa_envoy(bin, dir, grpc).await;
            let target = Target::opa(grpc, true);
            wait_serving(&mut opa, &target, &check_request(&allowed[0], true)).await;
            println!(
                "\nOPA-Envoy ({}) serving {ENVOY_POLICY} at {OPA_PATH} with {} over plaintext gRPC on {grpc}, answering after {:.2} s",
                bin.display(),
                dir.join("data.json").display(),
                started.elapsed().as_secs_f64()
            );
            targets.push(target);
            targets.push(Target::opa(grpc, false));
            _opa = Some(opa);
            opa_grpc = Some(grpc);
        }
        let asked = check_agreement(&targets, &cases).await;
        println!(
            "\nagreement over gRPC: {asked} answers checked ({} questions, {}), every engine gave the expected \
             decision, reason, denial status and grant, and all the same",
            cases.len(),
            targets.iter().map(|t| format!("{:?}", t.engine)).collect::<Vec<_>>().join(", ")
        );

        let ghz = if quick {
            println!(
                "\nsmoke run (no --bench): ghz and OPA skipped; `make bench-pdp-grpc` or `cargo bench --bench pdp_grpc_load` measures"
            );
            None
        } else {
            match tool("AGENTID_BENCH_GHZ", "ghz") {
                Some(bin) => Some(Ghz { bin, grpcurl: tool("AGENTID_BENCH_GRPCURL", "grpcurl"), imports: import_paths() }),
                None => {
                    println!("\nghz not found (AGENTID_BENCH_GHZ, .cache/bin/ghz, PATH; `e2e/tools/build.sh ghz`): load skipped");
                    None
                }
            }
        };
        if opa_bin.is_none() && !quick {
            println!("\nAGENTID_BENCH_OPA_ENVOY not set: OPA's Envoy plugin skipped (`make bench-pdp-grpc` builds and sets it)");
        }
        let Some(ghz) = ghz else {
            return;
        };

        let endpoint = |t: &Target| Endpoint {
            addr: t.addr,
            ca: t.tls.as_ref().map(|_| dir.join("ca.crt")),
        };
        // The ghz data, checked through grpcurl on every engine.
        for t in &targets {
            let verify = t.engine != (Engine::Opa { verify: false });
            for allow in [true, false] {
                let file = data_file(allow, verify);
                if let Some((code, reason)) = ghz.grpcurl_first(&endpoint(t), &file) {
                    let want = if allow { (0, String::new()) } else { (7, "destination-not-granted".to_string()) };
                    assert_eq!((code, reason), want, "{:?} on the first message of {}", t.engine, file.display());
                }
            }
        }
        if ghz.grpcurl.is_some() {
            println!("ghz data files checked: the first message of each, sent by grpcurl, gets the expected decision");
        }

        let peak_n = plan.peak.to_string();
        let fixed_n = plan.fixed.to_string();
        let rps = plan.rate.to_string();
        let warm_n = plan.warmup.to_string();
        let peak_load = ["-c", "8", "--connections", "2", "-n", &peak_n];
        let fixed_load = ["--rps", &rps, "-n", &fixed_n, "-c", "16", "--connections", "2"];
        let warm_load = ["-c", "8", "--connections", "2", "-n", &warm_n];
        let mut results = Vec::new();
        for t in &targets {
            let verify = t.engine != (Engine::Opa { verify: false });
            let e = endpoint(t);
            for allow in [true, false] {
                let file = data_file(allow, verify);
                let (decision, reason) = if allow { ("allow", "") } else { ("deny", "destination-not-granted") };
                let before = decisions(&state, decision, reason);
                ghz.run(&e, &file, &warm_load);
                let peak = ghz.run(&e, &file, &peak_load);
                let fixed = ghz.run(&e, &file, &fixed_load);
                for (r, n) in [(peak, plan.peak), (fixed, plan.fixed)] {
                    assert_eq!((r.count, r.errors), (n as u64, 0), "{:?}: ghz count and errors", t.engine);
                }
                if t.engine == Engine::Agentid {
                    let want = (plan.warmup + plan.peak + plan.fixed) as u64;
                    assert_eq!(decisions(&state, decision, reason) - before, want, "agentid decisions {decision}/{reason}");
                }
                let fixed_label = format!("{} req/s, -c 16, 2 conns", plan.rate);
                results.push(Measured { engine: t.engine, allow, load: "peak, -c 8, 2 conns".into(), run: peak });
                results.push(Measured { engine: t.engine, allow, load: fixed_label, run: fixed });
            }
        }

        println!(
            "\n| ext_authz `Check` over loopback, ghz | engine | transport | token | decision | requests | req/s | p50 µs | p90 µs | p99 µs | max µs |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for m in &results {
            let (engine, transport, token) = m.engine.label();
            let decision = if m.allow { "allow" } else { "deny (destination)" };
            let r = m.run;
            println!(
                "| {} | {engine} | {transport} | {token} | {decision} | {} | {:.0} | {} | {} | {} | {} |",
                m.load,
                r.count,
                r.rps,
                us(r.p50),
                us(r.p90),
                us(r.p99),
                us(r.max)
            );
        }
        for m in results.iter().filter(|m| m.load != "peak, -c 8, 2 conns" && m.run.rps < 0.95 * plan.rate as f64) {
            println!(
                "\n{} ({}, {}) did not sustain {} req/s ({:.0}): its latencies at that rate include queueing in ghz's workers.",
                m.engine.label().0,
                m.engine.label().2,
                if m.allow { "allow" } else { "deny" },
                plan.rate,
                m.run.rps
            );
        }
        if opa_grpc.is_some() {
            println!(
                "\nagentid pays for TLS, OPA's Envoy plugin serves plaintext only; OPA's plugin verifies every token \
                 (no verified-token cache reaches its evaluations), agentid each token once. Every agentid call \
                 counted in its decision metrics with the expected decision; OPA's answers checked on the \
                 agreement questions and the first message of each data file."
            );
        }
        println!(
            "ghz: `{} {} -D <data> …`; data in {}",
            ghz.bin.display(),
            ghz.common(&endpoint(&targets[0])).join(" "),
            dir.display()
        );
        println!("\nload average at the end: {}", load_average());
    });
}
