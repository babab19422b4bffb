//! End-to-end benchmarks of agentid against a real local control plane.
//!
//! The operator runs as its own process (`agentid run`, the binary Cargo built
//! for this bench, i.e. `target/release/agentid`), talks to the kube-apiserver in
//! KUBECONFIG, and this program drives it through that apiserver only
//! (127.0.0.1), printing one markdown table per section:
//!
//! 1. Converge: 1,000 AgentIdentities + 1,000 ToolGrants until all are Ready/Active.
//! 2. RSS of the operator at idle, at 1k agents + 1k grants, at 10k agents, at 10k agents + 10k grants and at
//!    10k agents + 10k grants + 10k tasks; RSS per 1,000 objects of each kind (the chart's sizing), reconciles
//!    per object to converge, and the writes and reconciles of a quiet steady state (goal: 0).
//! 3. Task token latency: AgentTask created → the broker hands out a token (HTTPS).
//! 4. Revocation latency: task completed → TokenReview fails, → anchor Secret gone, and → the decision
//!    point's first deny for the task token; agent suspended → the decision point's first deny.
//! 5. Pod admission overhead: Pod creates in a judged vs an unjudged namespace.
//!
//! `AGENTID_BENCH_OPERATOR_BIN=path` runs that build of the operator instead of this bench's own.
//! `AGENTID_BENCH_SECTIONS=3-5 make bench-cluster` runs sections 3 to 5 only, `AGENTID_BENCH_SECTIONS=1-2`
//! sections 1 and 2 only.
//! Needs the CRDs installed; `make bench-cluster` (e2e/bench-cluster.sh) starts a
//! private control plane and runs `cargo bench --features e2e --bench cluster`.
//! Every loop is bounded in count and time: a section gives up after
//! [`SECTION_TIMEOUT`] and says so in its output.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentid::api::{AgentIdentity, AgentTask, ToolGrant};
use agentid::core::conditions;
use futures::{StreamExt, stream};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec, TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Res<T> = std::result::Result<T, String>;

/// Each section gives up after this long (and says so).
const SECTION_TIMEOUT: Duration = Duration::from_secs(600);
/// Creates in flight while loading the cluster.
const IN_FLIGHT: usize = 32;
/// Interval between the list polls that detect convergence.
const LIST_POLL: Duration = Duration::from_millis(500);
/// Interval between broker polls while waiting for a task's token.
const BROKER_POLL: Duration = Duration::from_millis(25);
/// Interval between TokenReviews while waiting for a revocation.
const REVIEW_POLL: Duration = Duration::from_millis(200);
/// Interval between anchor Secret GETs while waiting for its deletion.
const ANCHOR_POLL: Duration = Duration::from_millis(20);
/// Interval between questions to the decision point while waiting for a revocation.
const PDP_POLL: Duration = Duration::from_millis(5);
/// Agents suspended in section 4.
const SUSPENDED_AGENTS: usize = 10;
/// Settling time before an RSS reading.
const SETTLE: Duration = Duration::from_secs(5);

const CONVERGE_N: usize = 1_000;
const TOTAL_AGENTS: usize = 10_000;
const TASKS: usize = 100;
const REVOKED_TASKS: usize = 20;
const PODS: usize = 200;
const WARMUP_PODS: usize = 10;
const TOOL_AUDIENCE: &str = "https://tools.example.com";

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        // Dropping `run()` (on a signal) drops its Operator guards: processes killed, webhooks deleted.
        tokio::select! {
            r = run() => match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("bench-cluster failed: {e}");
                    1
                }
            },
            s = shutdown_signal() => {
                eprintln!("bench-cluster: {s}; stopping the operator");
                130
            }
        }
    });
    drop(rt);
    std::process::exit(code);
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

async fn run() -> Res<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.map_err(|e| format!("KUBECONFIG: {e}"))?;
    let cluster_dir = cluster_dir()?;
    let run_id = format!("{:06x}", Timestamp::now().as_second() & 0xff_ffff);
    let started = Instant::now();

    // A private copy of the operator binary: other builds in the same target/ cannot swap it mid-run.
    // AGENTID_BENCH_OPERATOR_BIN runs another build of the operator (another profile or allocator) under
    // the same bench, so that two builds are compared by one harness.
    let source = std::env::var("AGENTID_BENCH_OPERATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentid").into());
    let bin = cluster_dir.join("agentid");
    std::fs::copy(&source, &bin).map_err(|e| format!("copy the operator binary {source}: {e}"))?;

    println!("# agentid cluster benchmarks\n");
    println!("- operator binary: `{source}` (run from a copy, `{}`)", bin.display());
    println!("- apiserver: `{}`", client_server());
    println!("- CPUs: {}, load average at start: {}", cpus(), loadavg());
    println!("- every request goes to 127.0.0.1; each section gives up after {} s\n", SECTION_TIMEOUT.as_secs());

    // `AGENTID_BENCH_SECTIONS=3-5` skips the 10,000-agent sections (several minutes).
    let only_tokens = std::env::var("AGENTID_BENCH_SECTIONS").is_ok_and(|s| s == "3-5");
    if only_tokens {
        println!("sections 1 and 2 skipped (AGENTID_BENCH_SECTIONS=3-5)\n");
    } else {
        // Operator A watches the converge namespace (sections 1 and 2).
        let ns_a = namespace(&client, &format!("bench-conv-{run_id}"), &[]).await?;
        let op = Operator::spawn(&cluster_dir, &bin, &ns_a, &ns_a)?;
        op.wait_ready(Duration::from_secs(60)).await?;
        println!("operator A: pid {}, namespace `{ns_a}`, log `{}`\n", op.pid, op.log.display());
        tokio::time::sleep(SETTLE).await;
        let rss_idle = op.memory();

        let conv = converge(&client, &ns_a, CONVERGE_N).await;
        let metrics_1k = op.metrics().await;
        print_converge(&conv, &metrics_1k);
        tokio::time::sleep(SETTLE).await;
        let rss_1k = op.memory();

        let more = converge_more_agents(&client, &ns_a, CONVERGE_N, TOTAL_AGENTS).await;
        tokio::time::sleep(SETTLE).await;
        let rss_10k = op.memory();
        let metrics_10k = op.metrics().await;
        print_rss(rss_idle, rss_1k, rss_10k, &more, &metrics_10k);
        let scale = scale(&client, &op, &ns_a, (rss_1k, rss_10k), &metrics_1k, &metrics_10k).await;
        print_scale(&scale);
        drop(op);
    }
    if std::env::var("AGENTID_BENCH_SECTIONS").is_ok_and(|s| s == "1-2") {
        println!("sections 3 to 5 skipped (AGENTID_BENCH_SECTIONS=1-2)\n");
        println!("load average at the end: {}; bench runtime {:.1} s", loadavg(), started.elapsed().as_secs_f64());
        return Ok(());
    }

    // Operator B watches a fresh namespace (sections 3 to 5). Its own namespace is separate: a
    // namespace-scoped webhook judges only the watched namespace and never the operator's own.
    let ns_b = namespace(&client, &format!("bench-tok-{run_id}"), &[]).await?;
    let op_ns_b = namespace(&client, &format!("bench-op-{run_id}"), &[]).await?;
    let op = Operator::spawn(&cluster_dir, &bin, &op_ns_b, &ns_b)?;
    op.wait_ready(Duration::from_secs(60)).await?;
    println!(
        "operator B: pid {}, watches `{ns_b}`, operator namespace `{op_ns_b}`, log `{}`\n",
        op.pid,
        op.log.display()
    );

    let tokens = match token_latency(&client, &op, &ns_b).await {
        Ok(t) => {
            print_tokens(&t);
            t
        }
        Err(e) => {
            println!("## 3. Task token latency\n\nFAILED: {e}\n");
            Tokens::new(Vec::new())
        }
    };
    match revocation(&client, &op, &ns_b, &tokens).await {
        Ok(r) => print_revocation(&r),
        Err(e) => println!("## 4. Revocation latency\n\nFAILED: {e}\n"),
    }
    match admission(&client, &ns_b, &run_id).await {
        Ok(a) => print_admission(&a, &op.metrics().await),
        Err(e) => println!("## 5. Pod admission overhead\n\nFAILED: {e}\n"),
    }
    let (rss_b, hwm_b) = op.memory();
    println!("operator B at the end: VmRSS {} MiB, VmHWM {} MiB\n", mib(rss_b), mib(hwm_b));
    drop(op);
    println!("load average at the end: {}; bench runtime {:.1} s", loadavg(), started.elapsed().as_secs_f64());
    Ok(())
}

// ---------------------------------------------------------------- environment

fn cluster_dir() -> Res<PathBuf> {
    if let Ok(d) = std::env::var("AGENTID_CLUSTER_DIR") {
        return Ok(PathBuf::from(d));
    }
    let kc = std::env::var("KUBECONFIG").map_err(|_| "KUBECONFIG is not set (run make bench-cluster)".to_string())?;
    Path::new(&kc).parent().map(Path::to_path_buf).ok_or_else(|| format!("KUBECONFIG {kc} has no directory"))
}

fn client_server() -> String {
    std::env::var("KUBECONFIG")
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| t.lines().find_map(|l| l.trim().strip_prefix("server: ").map(str::to_string)))
        .unwrap_or_default()
}

fn cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

async fn namespace(client: &Client, name: &str, labels: &[(&str, &str)]) -> Res<String> {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let ns: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).map_err(|e| e.to_string())?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .map_err(|e| format!("namespace {name}: {e}"))?;
    Ok(name.to_string())
}

// ------------------------------------------------------------ operator process

/// The operator as a real process. Dropping it (also on panic or a signal)
/// kills the process and deletes its ValidatingWebhookConfiguration.
struct Operator {
    child: Option<Child>,
    pid: u32,
    probe: u16,
    /// Port of the task-token broker.
    broker: u16,
    pdp: u16,
    /// The watched namespace.
    ns: String,
    /// The operator's own namespace (its certificate Secret lives here).
    operator_ns: String,
    webhook_configuration: String,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Operator {
    fn spawn(cluster_dir: &Path, bin: &Path, operator_ns: &str, ns: &str) -> Res<Operator> {
        let probe = free_port()?;
        let webhook = free_port()?;
        let broker = free_port()?;
        let pdp = free_port()?;
        let name = format!("agentid-bench-{ns}");
        let logs = cluster_dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
        let log = logs.join(format!("{name}.log"));
        let out = File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(bin)
            .args(["run", "--operator-namespace", operator_ns, "--watch-namespace", ns])
            .args(["--probe-addr", &format!("127.0.0.1:{probe}")])
            .args(["--webhook-addr", &format!("127.0.0.1:{webhook}")])
            .args(["--webhook-url", &format!("https://127.0.0.1:{webhook}")])
            .args(["--broker-addr", &format!("127.0.0.1:{broker}")])
            .args(["--pdp-addr", &format!("127.0.0.1:{pdp}")])
            .args(["--webhook-client-ca-file", &cluster_dir.join("pki/webhook-client-ca.crt").display().to_string()])
            .args(["--webhook-configuration", &name])
            .args(["--webhook-scope", &format!("agentid.dev/bench={ns}")])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        // `e2e/cluster.sh down` stops this pid too, should this program die without unwinding.
        let pid_file = cluster_dir.join("pids").join("agentid");
        let _ = std::fs::create_dir_all(cluster_dir.join("pids"));
        let _ = std::fs::write(&pid_file, format!("{pid}\n"));
        Ok(Operator {
            child: Some(child),
            pid,
            probe,
            broker,
            pdp,
            ns: ns.to_string(),
            operator_ns: operator_ns.to_string(),
            webhook_configuration: name,
            log,
            pid_file,
        })
    }

    async fn wait_ready(&self, timeout: Duration) -> Res<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some((200, _)) = http_get(self.probe, "/readyz").await {
                return Ok(());
            }
            if !Path::new(&format!("/proc/{}", self.pid)).exists() || self.exited() {
                return Err(format!("operator exited; last log lines:\n{}", tail(&self.log, 20)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("operator not ready after {timeout:?}; last log lines:\n{}", tail(&self.log, 20)))
    }

    fn exited(&self) -> bool {
        // A zombie (exited, not yet reaped) still has /proc/<pid>; its state says so.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid))
            .map(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false))
            .unwrap_or(true)
    }

    /// (VmRSS, VmHWM) in KiB.
    fn memory(&self) -> (u64, u64) {
        let [rss, hwm] = self.status_kib(["VmRSS:", "VmHWM:"]);
        (rss, hwm)
    }

    /// (RssAnon, RssFile) in KiB: the heap and stacks vs. pages mapped from the binary's file (its code).
    fn rss_split(&self) -> (u64, u64) {
        let [anon, file] = self.status_kib(["RssAnon:", "RssFile:"]);
        (anon, file)
    }

    /// Fields of /proc/<pid>/status in KiB (0 when missing).
    fn status_kib<const N: usize>(&self, names: [&str; N]) -> [u64; N] {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        names.map(|name| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0)
        })
    }

    async fn metrics(&self) -> String {
        http_get(self.probe, "/metrics").await.map(|(_, b)| b).unwrap_or_default()
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.broker))
    }

    fn pdp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.pdp))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let out = Command::new("kubectl")
            .args([
                "delete",
                "validatingwebhookconfiguration",
                &self.webhook_configuration,
                "--ignore-not-found",
                "--wait=false",
            ])
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) if o.status.success() => {
                eprintln!(
                    "[bench] operator of {} stopped; webhook configuration {} deleted",
                    self.ns, self.webhook_configuration
                )
            }
            Ok(o) => eprintln!(
                "[bench] WARNING: could not delete validatingwebhookconfiguration {}: {}",
                self.webhook_configuration,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!(
                "[bench] WARNING: kubectl not runnable ({e}); delete validatingwebhookconfiguration {} by hand",
                self.webhook_configuration
            ),
        }
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Plain-HTTP GET on 127.0.0.1 (probes and metrics): `(status, body)`.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        Some(split_response(&buf))
    };
    tokio::time::timeout(Duration::from_secs(5), io).await.ok().flatten()
}

fn split_response(buf: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(buf);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Lines of a Prometheus text exposition whose metric name starts with `prefix`.
fn metric_lines<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.starts_with(prefix)).collect()
}

fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))?.rsplit(' ').next()?.parse().ok()
}

// ------------------------------------------------------------------- objects

fn agent_obj(name: &str) -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": name},
        "spec": {"owner": "team-bench", "audiences": [TOOL_AUDIENCE]}
    }))
    .expect("AgentIdentity")
}

fn grant_obj(name: &str, agent: &str, valid_until: &str) -> ToolGrant {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": {"name": name},
        "spec": {
            "agentRef": {"name": agent},
            "kubernetesRules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
            "validUntil": valid_until
        }
    }))
    .expect("ToolGrant")
}

fn task_obj(name: &str, agent: &str) -> AgentTask {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentTask",
        "metadata": {"name": name},
        "spec": {"agentRef": {"name": agent}, "purpose": "benchmark task", "audiences": [TOOL_AUDIENCE], "ttl": "15m"}
    }))
    .expect("AgentTask")
}

/// tests/e2e_webhook.rs `good_agent_pod`, with a name.
fn good_agent_pod(name: &str, agent: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"agentid.dev/agent": agent}},
        "spec": {
            "serviceAccountName": format!("agent-{agent}"),
            "automountServiceAccountToken": false,
            "containers": [{"name": "agent", "image": "registry.example.com/triage:1",
                "volumeMounts": [{"name": "token", "mountPath": "/var/run/agentid"}]}],
            "volumes": [{"name": "token", "projected": {"sources": [
                {"serviceAccountToken": {"audience": TOOL_AUDIENCE, "expirationSeconds": 600, "path": "token"}}]}}]
        }
    }))
    .expect("Pod")
}

/// Creates `obj`, retrying transient failures a few times; AlreadyExists after a retry counts as created.
async fn create<K>(api: &Api<K>, obj: &K) -> Res<()>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let mut last = String::new();
    for attempt in 0..5u32 {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt > 0 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code < 500 && s.code != 429 => return Err(s.message),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
    }
    Err(last)
}

/// Lists `path` as a server-side Table (printer columns only, no objects) and
/// returns (rows whose `column` equals `want`, all rows). Much lighter than a full
/// list of 10k objects, for the client and the apiserver alike.
async fn count_column(client: &Client, path: &str, column: &str, want: &str) -> Res<(usize, usize)> {
    let req = axum::http::Request::get(format!("{path}?includeObject=None"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = client.request_text(req).await.map_err(|e| format!("list {path}: {e}"))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| format!("list {path}: {e}"))?;
    let idx = v["columnDefinitions"]
        .as_array()
        .and_then(|c| c.iter().position(|c| c["name"] == column))
        .ok_or_else(|| format!("list {path}: no column {column:?}"))?;
    let rows = v["rows"].as_array().map(Vec::as_slice).unwrap_or_default();
    Ok((rows.iter().filter(|r| r["cells"][idx].as_str() == Some(want)).count(), rows.len()))
}

// ---------------------------------------------------------------- 1. converge

struct Converge {
    n: usize,
    create: Duration,
    create_errors: usize,
    first_error: Option<String>,
    converged: Option<Duration>,
    ready: usize,
    active: usize,
    polls: usize,
    poll_errors: usize,
}

async fn converge(client: &Client, ns: &str, n: usize) -> Converge {
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let grants: Api<ToolGrant> = Api::namespaced(client.clone(), ns);
    let valid_until =
        Timestamp::from_second(Timestamp::now().as_second() + 24 * 3600).expect("a day from now").to_string();
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + SECTION_TIMEOUT;
    let creates = stream::iter(0..n)
        .map(|i| {
            let (agents, grants, valid_until) = (agents.clone(), grants.clone(), valid_until.clone());
            async move {
                let a = format!("a{i:05}");
                let mut errs = Vec::new();
                if let Err(e) = create(&agents, &agent_obj(&a)).await {
                    errs.push(e);
                }
                if let Err(e) = create(&grants, &grant_obj(&format!("g{i:05}"), &a, &valid_until)).await {
                    errs.push(e);
                }
                errs
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .concat();
    let errors = tokio::time::timeout_at(deadline, creates).await.unwrap_or_else(|_| vec!["creates timed out".into()]);
    let create_time = start.elapsed();
    let mut c = Converge {
        n,
        create: create_time,
        create_errors: errors.len(),
        first_error: errors.into_iter().next(),
        converged: None,
        ready: 0,
        active: 0,
        polls: 0,
        poll_errors: 0,
    };
    let agents_path = format!("/apis/agentid.dev/v1alpha1/namespaces/{ns}/agentidentities");
    let grants_path = format!("/apis/agentid.dev/v1alpha1/namespaces/{ns}/toolgrants");
    while tokio::time::Instant::now() < deadline {
        c.polls += 1;
        let (a, g) = tokio::join!(
            count_column(client, &agents_path, "Ready", "True"),
            count_column(client, &grants_path, "Phase", "Active")
        );
        match (a, g) {
            (Ok((ready, _)), Ok((active, _))) => {
                (c.ready, c.active) = (ready, active);
                if ready >= n && active >= n {
                    c.converged = Some(start.elapsed());
                    break;
                }
            }
            (a, g) => {
                c.poll_errors += 1;
                eprintln!("[bench] poll failed: {:?} {:?}", a.err(), g.err());
            }
        }
        tokio::time::sleep(LIST_POLL).await;
    }
    c
}

fn reconcile_rows(metrics: &str, out: &mut String) {
    for kind in ["AgentIdentity", "ToolGrant", "AgentTask"] {
        if let Some(v) = metric_value(metrics, &format!("agentid_reconciles_total{{kind=\"{kind}\"}}")) {
            let _ = writeln!(out, "| operator reconciles ({kind}, cumulative) | {v} |");
        }
    }
    let errors = metric_lines(metrics, "agentid_reconcile_errors_total{");
    if errors.is_empty() {
        let _ = writeln!(out, "| operator reconcile errors (cumulative) | 0 |");
    }
    for l in errors {
        let (series, v) = l.rsplit_once(' ').unwrap_or((l, ""));
        let _ = writeln!(
            out,
            "| operator reconcile errors `{}` | {v} |",
            series.trim_start_matches("agentid_reconcile_errors_total")
        );
    }
}

fn print_converge(c: &Converge, metrics: &str) {
    let mut out = format!("## 1. Converge: {n} AgentIdentities + {n} ToolGrants\n\n", n = c.n);
    let objects = 2 * c.n;
    let _ = writeln!(out, "| metric | value |\n|---|---|");
    let _ = writeln!(out, "| objects created (samples) | {objects} ({} in flight) |", IN_FLIGHT);
    let _ = writeln!(out, "| create errors | {} |", c.create_errors);
    let _ = writeln!(out, "| create time (first create → last create answered) | {:.2} s |", c.create.as_secs_f64());
    let _ = writeln!(out, "| create throughput | {:.1} objects/s |", objects as f64 / c.create.as_secs_f64());
    match c.converged {
        Some(t) => {
            let _ = writeln!(out, "| converge time (first create → all Ready / Active) | {:.2} s |", t.as_secs_f64());
            let _ = writeln!(out, "| converge throughput | {:.1} objects/s |", objects as f64 / t.as_secs_f64());
            let lag = t.saturating_sub(c.create).as_secs_f64();
            let _ = writeln!(out, "| operator lag (last create answered → all Ready / Active, ±0.5 s) | {lag:.2} s |");
        }
        None => {
            let _ = writeln!(
                out,
                "| converge time | TIMED OUT after {} s: {} of {} agents Ready, {} of {} grants Active |",
                SECTION_TIMEOUT.as_secs(),
                c.ready,
                c.n,
                c.active,
                c.n
            );
        }
    }
    let _ = writeln!(
        out,
        "| list polls (every {} ms, Table lists) | {} ({} failed) |",
        LIST_POLL.as_millis(),
        c.polls,
        c.poll_errors
    );
    reconcile_rows(metrics, &mut out);
    let _ = writeln!(
        out,
        "\nthe namespace carries no `agentid.dev/bench` label, so the ToolGrant escalation webhook does not judge these creates"
    );
    if let Some(e) = &c.first_error {
        let _ = writeln!(out, "\nfirst create error: {e}");
    }
    println!("{out}");
}

// --------------------------------------------------------------------- 2. RSS

struct More {
    n: usize,
    create: Duration,
    create_errors: usize,
    first_error: Option<String>,
    converged: Option<Duration>,
    ready: usize,
    polls: usize,
}

async fn converge_more_agents(client: &Client, ns: &str, from: usize, to: usize) -> More {
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + SECTION_TIMEOUT;
    let creates = stream::iter(from..to)
        .map(|i| {
            let agents = agents.clone();
            async move { create(&agents, &agent_obj(&format!("a{i:05}"))).await.err() }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|e| async move { e })
        .collect::<Vec<String>>();
    let errors = tokio::time::timeout_at(deadline, creates).await.unwrap_or_else(|_| vec!["creates timed out".into()]);
    let mut m = More {
        n: to - from,
        create: start.elapsed(),
        create_errors: errors.len(),
        first_error: errors.into_iter().next(),
        converged: None,
        ready: 0,
        polls: 0,
    };
    let path = format!("/apis/agentid.dev/v1alpha1/namespaces/{ns}/agentidentities");
    while tokio::time::Instant::now() < deadline {
        m.polls += 1;
        match count_column(client, &path, "Ready", "True").await {
            Ok((ready, _)) => {
                m.ready = ready;
                if ready >= to {
                    m.converged = Some(start.elapsed());
                    break;
                }
            }
            Err(e) => eprintln!("[bench] poll failed: {e}"),
        }
        tokio::time::sleep(LIST_POLL).await;
    }
    m
}

fn mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn print_rss(idle: (u64, u64), at_1k: (u64, u64), at_10k: (u64, u64), more: &More, metrics: &str) {
    let mut out = String::from("## 2. Operator memory (VmRSS from /proc/<pid>/status, after 5 s settling)\n\n");
    let _ = writeln!(out, "| state | VmRSS | VmHWM (peak so far) |\n|---|---|---|");
    let _ = writeln!(out, "| idle, before any object | {} MiB | {} MiB |", mib(idle.0), mib(idle.1));
    let _ = writeln!(out, "| 1k agents + 1k grants converged | {} MiB | {} MiB |", mib(at_1k.0), mib(at_1k.1));
    let state = if more.converged.is_some() {
        "10k agents + 1k grants converged".to_string()
    } else {
        format!("{} of 10k agents Ready (TIMED OUT)", more.ready)
    };
    let _ = writeln!(out, "| {state} | {} MiB | {} MiB |", mib(at_10k.0), mib(at_10k.1));
    let per_agent = (at_10k.0 as f64 - at_1k.0 as f64) * 1024.0 / more.n as f64;
    let _ = writeln!(out, "\n| metric | value |\n|---|---|");
    let _ = writeln!(
        out,
        "| additional agents created (samples) | {} ({} in flight, {} errors) |",
        more.n, IN_FLIGHT, more.create_errors
    );
    let _ = writeln!(
        out,
        "| create time for the {} | {:.2} s ({:.1} agents/s) |",
        more.n,
        more.create.as_secs_f64(),
        more.n as f64 / more.create.as_secs_f64()
    );
    match more.converged {
        Some(t) => {
            let _ = writeln!(
                out,
                "| converge time for the {} (first create → all 10k Ready) | {:.2} s ({:.1} agents/s) |",
                more.n,
                t.as_secs_f64(),
                more.n as f64 / t.as_secs_f64()
            );
            let lag = t.saturating_sub(more.create).as_secs_f64();
            let _ = writeln!(out, "| operator lag (last create answered → all 10k Ready, ±0.5 s) | {lag:.2} s |");
        }
        None => {
            let _ = writeln!(
                out,
                "| converge time for the {} | TIMED OUT after {} s: {} of {} Ready |",
                more.n,
                SECTION_TIMEOUT.as_secs(),
                more.ready,
                TOTAL_AGENTS
            );
        }
    }
    let _ = writeln!(out, "| RSS growth per additional agent | {per_agent:.0} bytes |");
    let _ = writeln!(out, "| list polls (every {} ms, Table lists) | {} |", LIST_POLL.as_millis(), more.polls);
    reconcile_rows(metrics, &mut out);
    if let Some(e) = &more.first_error {
        let _ = writeln!(out, "\nfirst create error: {e}");
    }
    println!("{out}");
}

// ------------------------------------------------ 2b. scale: 10k of each kind

/// Tasks of the scale run: long enough a ttl that none expires during the bench.
fn scale_task_obj(name: &str, agent: &str) -> AgentTask {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentTask",
        "metadata": {"name": name},
        "spec": {"agentRef": {"name": agent}, "purpose": "benchmark task", "audiences": [TOOL_AUDIENCE], "ttl": "12h"}
    }))
    .expect("AgentTask")
}

/// One step of the scale run: objects of one kind added until `total` of them converged.
struct Step {
    kind: &'static str,
    added: usize,
    create: Duration,
    create_errors: usize,
    first_error: Option<String>,
    converged: Option<Duration>,
    done: usize,
    /// (VmRSS, VmHWM) in KiB after settling.
    rss: (u64, u64),
    /// Reconciles of each kind during the step.
    reconciles: [f64; 3],
}

struct Scale {
    /// (VmRSS at 1k agents + 1k grants, at 10k agents + 1k grants), KiB.
    before: ((u64, u64), (u64, u64)),
    agents_added: usize,
    /// Reconciles of each kind while the 9k agents converged.
    agent_reconciles: [f64; 3],
    /// Reconciles of each kind while 1k agents + 1k grants converged (section 1).
    first_reconciles: [f64; 3],
    steps: Vec<Step>,
    /// Objects whose resourceVersion changed during a quiet window, and reconciles in it.
    steady: Option<(Duration, usize, [f64; 3])>,
    steady_error: Option<String>,
    /// (RssAnon, RssFile) in KiB at the end.
    split: (u64, u64),
}

const KINDS: [&str; 3] = ["AgentIdentity", "ToolGrant", "AgentTask"];

fn reconciles(metrics: &str) -> [f64; 3] {
    KINDS.map(|k| metric_value(metrics, &format!("agentid_reconciles_total{{kind=\"{k}\"}}")).unwrap_or(0.0))
}

fn minus(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[0] - b[0], a[1] - b[1], a[2] - b[2]]
}

/// Adds objects `from..to` of one kind (made by `obj(i)`), then waits until `to` of them show `want` in `column`.
#[allow(clippy::too_many_arguments)]
async fn add_and_converge<K>(
    client: &Client,
    op: &Operator,
    kind: &'static str,
    api: Api<K>,
    path: String,
    (column, want): (&str, &str),
    (from, to): (usize, usize),
    obj: impl Fn(usize) -> K,
) -> Step
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let before = reconciles(&op.metrics().await);
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + SECTION_TIMEOUT;
    let creates = stream::iter(from..to)
        .map(|i| {
            let (api, o) = (api.clone(), obj(i));
            async move { create(&api, &o).await.err() }
        })
        .buffer_unordered(IN_FLIGHT)
        .filter_map(|e| async move { e })
        .collect::<Vec<String>>();
    let errors = tokio::time::timeout_at(deadline, creates).await.unwrap_or_else(|_| vec!["creates timed out".into()]);
    let mut step = Step {
        kind,
        added: to - from,
        create: start.elapsed(),
        create_errors: errors.len(),
        first_error: errors.into_iter().next(),
        converged: None,
        done: 0,
        rss: (0, 0),
        reconciles: [0.0; 3],
    };
    while tokio::time::Instant::now() < deadline {
        match count_column(client, &path, column, want).await {
            Ok((n, _)) => {
                step.done = n;
                if n >= to {
                    step.converged = Some(start.elapsed());
                    break;
                }
            }
            Err(e) => eprintln!("[bench] poll failed: {e}"),
        }
        tokio::time::sleep(LIST_POLL).await;
    }
    tokio::time::sleep(SETTLE).await;
    step.rss = op.memory();
    step.reconciles = minus(reconciles(&op.metrics().await), before);
    step
}

/// (namespace-scoped kinds) resourceVersion of every object agentid reads or writes in `ns`.
async fn versions(client: &Client, ns: &str) -> Res<BTreeMap<String, String>> {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    async fn of<K>(client: &Client, ns: &str, out: &mut BTreeMap<String, String>) -> Res<()>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(client.clone(), ns);
        let kind = K::kind(&());
        let mut lp = kube::api::ListParams::default().limit(2000);
        loop {
            let page = api.list_metadata(&lp).await.map_err(|e| format!("list {kind}: {e}"))?;
            for o in &page.items {
                let name = o.metadata.name.clone().unwrap_or_default();
                out.insert(format!("{kind}/{name}"), o.metadata.resource_version.clone().unwrap_or_default());
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(c) => lp = lp.continue_token(&c),
                None => return Ok(()),
            }
        }
    }
    let mut out = BTreeMap::new();
    of::<AgentIdentity>(client, ns, &mut out).await?;
    of::<ToolGrant>(client, ns, &mut out).await?;
    of::<AgentTask>(client, ns, &mut out).await?;
    of::<ServiceAccount>(client, ns, &mut out).await?;
    of::<Role>(client, ns, &mut out).await?;
    of::<RoleBinding>(client, ns, &mut out).await?;
    of::<Secret>(client, ns, &mut out).await?;
    Ok(out)
}

/// Quiet window of the steady state.
const STEADY: Duration = Duration::from_secs(30);

async fn scale(
    client: &Client,
    op: &Operator,
    ns: &str,
    before: ((u64, u64), (u64, u64)),
    metrics_1k: &str,
    metrics_10k: &str,
) -> Scale {
    let base = format!("/apis/agentid.dev/v1alpha1/namespaces/{ns}");
    let valid_until =
        Timestamp::from_second(Timestamp::now().as_second() + 24 * 3600).expect("a day from now").to_string();
    let mut s = Scale {
        before,
        agents_added: TOTAL_AGENTS - CONVERGE_N,
        agent_reconciles: minus(reconciles(metrics_10k), reconciles(metrics_1k)),
        first_reconciles: reconciles(metrics_1k),
        steps: Vec::new(),
        steady: None,
        steady_error: None,
        split: (0, 0),
    };
    let grants = add_and_converge(
        client,
        op,
        "ToolGrant",
        Api::<ToolGrant>::namespaced(client.clone(), ns),
        format!("{base}/toolgrants"),
        ("Phase", "Active"),
        (CONVERGE_N, TOTAL_AGENTS),
        |i| grant_obj(&format!("g{i:05}"), &format!("a{i:05}"), &valid_until),
    )
    .await;
    s.steps.push(grants);
    let tasks = add_and_converge(
        client,
        op,
        "AgentTask",
        Api::<AgentTask>::namespaced(client.clone(), ns),
        format!("{base}/agenttasks"),
        ("Phase", "Active"),
        (0, TOTAL_AGENTS),
        |i| scale_task_obj(&format!("t{i:05}"), &format!("a{i:05}")),
    )
    .await;
    s.steps.push(tasks);
    s.split = op.rss_split();
    // Steady state: nothing changes for a while; count what the operator writes and reconciles meanwhile.
    let r0 = reconciles(&op.metrics().await);
    match versions(client, ns).await {
        Ok(v0) => {
            tokio::time::sleep(STEADY).await;
            let r1 = reconciles(&op.metrics().await);
            match versions(client, ns).await {
                Ok(v1) => {
                    let changed = v1.iter().filter(|(k, v)| v0.get(*k) != Some(*v)).count()
                        + v0.keys().filter(|k| !v1.contains_key(*k)).count();
                    s.steady = Some((STEADY, changed, minus(r1, r0)));
                }
                Err(e) => s.steady_error = Some(e),
            }
        }
        Err(e) => s.steady_error = Some(e),
    }
    s
}

fn print_scale(s: &Scale) {
    let mut out = format!("## 2b. Scale: {n} AgentIdentities + {n} ToolGrants + {n} AgentTasks\n\n", n = TOTAL_AGENTS);
    let _ = writeln!(out, "| state | VmRSS | VmHWM (peak so far) |\n|---|---|---|");
    let ((rss_1k, _), (rss_10k, _)) = s.before;
    let mut labels = vec![];
    let mut prev = rss_10k;
    for step in &s.steps {
        let label = match step.kind {
            "ToolGrant" => "10k agents + 10k grants converged",
            _ => "10k agents + 10k grants + 10k tasks converged",
        };
        let label = if step.converged.is_some() {
            label.to_string()
        } else {
            format!("{label}: TIMED OUT, {} of {} done", step.done, TOTAL_AGENTS)
        };
        let _ = writeln!(out, "| {label} | {} MiB | {} MiB |", mib(step.rss.0), mib(step.rss.1));
        labels.push((step.kind, step.added, step.rss.0 as f64 - prev as f64));
        prev = step.rss.0;
    }
    let _ = writeln!(
        out,
        "\nAt the end: RssAnon {} MiB (heap, stacks), RssFile {} MiB (pages of the binary's file: its code).",
        mib(s.split.0),
        mib(s.split.1)
    );
    let _ =
        writeln!(out, "\n| kind | objects added | RSS per 1,000 objects (with their ServiceAccounts, RBAC, anchors) |");
    let _ = writeln!(out, "|---|---|---|");
    let per_k = |delta_kib: f64, n: usize| delta_kib / 1024.0 * 1000.0 / n as f64;
    let _ = writeln!(
        out,
        "| AgentIdentity | {} | {:.2} MiB |",
        s.agents_added,
        per_k(rss_10k as f64 - rss_1k as f64, s.agents_added)
    );
    for (kind, n, delta) in &labels {
        let _ = writeln!(out, "| {kind} | {n} | {:.2} MiB |", per_k(*delta, *n));
    }
    let _ = writeln!(
        out,
        "\n| step | objects | create time | converge time | reconciles per object (agents / grants / tasks) | create errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|");
    let n1 = CONVERGE_N as f64;
    let r = s.first_reconciles;
    let _ = writeln!(
        out,
        "| section 1: 1k agents + 1k grants | {} | — | — | {:.2} / {:.2} / — | — |",
        2 * CONVERGE_N,
        r[0] / n1,
        r[1] / n1
    );
    let r = s.agent_reconciles;
    let _ = writeln!(
        out,
        "| 9k more agents | {} | — | — | {:.2} / {:.2} / {:.2} | — |",
        s.agents_added,
        r[0] / s.agents_added as f64,
        r[1],
        r[2]
    );
    for step in &s.steps {
        let conv = step.converged.map(|t| format!("{:.2} s", t.as_secs_f64())).unwrap_or_else(|| "TIMED OUT".into());
        let n = step.added as f64;
        let r = step.reconciles;
        let per = match step.kind {
            "ToolGrant" => format!("{} / {:.2} / {}", r[0], r[1] / n, r[2]),
            _ => format!("{} / {} / {:.2}", r[0], r[1], r[2] / n),
        };
        let _ = writeln!(
            out,
            "| {} {}s | {} | {:.2} s ({:.0}/s) | {conv} | {per} | {} |",
            step.added,
            step.kind,
            step.added,
            step.create.as_secs_f64(),
            n / step.create.as_secs_f64(),
            step.create_errors
        );
    }
    let _ = writeln!(
        out,
        "\n(counts of other kinds are totals, not per object; for the 9k agents, grants and tasks are totals)"
    );
    match (&s.steady, &s.steady_error) {
        (Some((window, changed, r)), _) => {
            let _ = writeln!(
                out,
                "\nsteady state, {} s without changes: {changed} objects written (resourceVersion changed, of agents, grants, \
                 tasks, ServiceAccounts, Roles, RoleBindings, Secrets in the namespace); reconciles {} / {} / {}",
                window.as_secs(),
                r[0],
                r[1],
                r[2]
            );
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "\nsteady state: FAILED: {e}");
        }
        _ => {}
    }
    for step in &s.steps {
        if let Some(e) = &step.first_error {
            let _ = writeln!(out, "\nfirst {} create error: {e}", step.kind);
        }
    }
    println!("{out}");
}

// ------------------------------------------------------------ 3. task tokens

/// Minimal HTTPS client of the broker (tests/support `Webhook::post`), verified against the operator's CA.
struct Https {
    addr: SocketAddr,
    tls: tokio_rustls::TlsConnector,
}

impl Https {
    fn new(addr: SocketAddr, ca_pem: &[u8]) -> Res<Https> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        Ok(Https { addr, tls: tokio_rustls::TlsConnector::from(Arc::new(config)) })
    }

    async fn post(&self, path: &str, bearer: &str) -> Res<(u16, String)> {
        self.post_json(path, bearer, "").await
    }

    async fn post_json(&self, path: &str, bearer: &str, body: &str) -> Res<(u16, String)> {
        let io = async {
            let tcp = tokio::net::TcpStream::connect(self.addr).await.map_err(|e| e.to_string())?;
            let name = rustls_pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let mut tls = self.tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
            let req = format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {bearer}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            tls.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            let _ = tls.read_to_end(&mut buf).await;
            Ok(split_response(&buf))
        };
        tokio::time::timeout(Duration::from_secs(10), io)
            .await
            .map_err(|_| format!("{} did not answer in 10 s", self.addr))?
    }

    /// Asks the decision point (AuthZEN) whether the bearer may call the benchmark's tool: `Ok(true)`
    /// allowed, `Ok(false)` denied.
    async fn allowed(&self, bearer: &str) -> Res<bool> {
        let body = json!({"action": {"name": "read"}, "resource": {"type": "tool", "id": PDP_TOOL,
            "properties": {"destination": format!("{PDP_DESTINATION}q"), "sensitivity": "internal"}}});
        let (code, answer) = self.post_json("/access/v1/evaluation", bearer, &body.to_string()).await?;
        let v: Value = serde_json::from_str(&answer).map_err(|e| format!("decision point answered {code}: {e}"))?;
        v["decision"].as_bool().ok_or_else(|| format!("decision point answered {code} without a decision: {answer}"))
    }
}

/// The tool the benchmark's agents are granted (section 4, at the decision point).
const PDP_TOOL: &str = "search";
const PDP_DESTINATION: &str = "https://search.internal/";

fn tool_grant_obj(name: &str, agent: &str) -> ToolGrant {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": {"name": name},
        "spec": {
            "agentRef": {"name": agent},
            "tools": [{"name": PDP_TOOL, "actions": ["read"], "destinations": [PDP_DESTINATION], "maxDataSensitivity": "internal"}]
        }
    }))
    .expect("ToolGrant")
}

struct Tokens {
    /// The operator's CA (PEM), to reach its decision point.
    ca: Vec<u8>,
    samples: Vec<Duration>,
    /// (task, token) of the tasks whose token was obtained.
    tokens: Vec<(String, String)>,
    attempts: usize,
    answers: BTreeMap<u16, usize>,
    failures: Vec<String>,
    timed_out: bool,
}

impl Tokens {
    fn new(ca: Vec<u8>) -> Tokens {
        Tokens {
            ca,
            samples: Vec::new(),
            tokens: Vec::new(),
            attempts: 0,
            answers: BTreeMap::new(),
            failures: Vec::new(),
            timed_out: false,
        }
    }
}

async fn caller_token(client: &Client, ns: &str, sa: &str) -> Res<String> {
    service_account_token(client, ns, sa, "agentid").await
}

async fn service_account_token(client: &Client, ns: &str, sa: &str, audience: &str) -> Res<String> {
    let tr = TokenRequest {
        metadata: Default::default(),
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![audience.into()]),
            expiration_seconds: Some(600),
            bound_object_ref: None,
        }),
        status: None,
    };
    let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let res = api
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .map_err(|e| format!("TokenRequest {sa}: {e}"))?;
    res.status.and_then(|s| s.token).ok_or_else(|| "TokenRequest returned no token".into())
}

async fn wait_ready_agent(api: &Api<AgentIdentity>, name: &str, timeout: Duration) -> Res<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(Some(a)) = api.get_opt(name).await
            && a.status.is_some_and(|s| conditions::is_true(&s.conditions, "Ready"))
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("agent {name} not Ready after {timeout:?}"))
}

async fn token_latency(client: &Client, op: &Operator, ns: &str) -> Res<Tokens> {
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), ns);
    create(&agents, &agent_obj("bot")).await?;
    wait_ready_agent(&agents, "bot", Duration::from_secs(60)).await?;
    let caller = caller_token(client, ns, "agent-bot").await?;
    let secret = format!("{}-webhook-tls", op.webhook_configuration);
    let tls: Secret = Api::namespaced(client.clone(), &op.operator_ns)
        .get(&secret)
        .await
        .map_err(|e| format!("secret {secret}: {e}"))?;
    let ca = tls
        .data
        .and_then(|d| d.get("ca.crt").map(|b| b.0.clone()))
        .ok_or_else(|| format!("secret {secret} has no ca.crt"))?;
    let https = Https::new(op.addr(), &ca)?;
    // Section 4 asks the decision point about these tokens: the agent's grant for the tool.
    create(&Api::<ToolGrant>::namespaced(client.clone(), ns), &tool_grant_obj("bot-search", "bot")).await?;

    let mut t = Tokens::new(ca.clone());
    let section = Instant::now();
    for i in 0..TASKS {
        if section.elapsed() > SECTION_TIMEOUT {
            t.timed_out = true;
            break;
        }
        let name = format!("task-{i:03}");
        let path = format!("/v1/tasks/{ns}/{name}/token");
        let t0 = Instant::now();
        if let Err(e) = create(&tasks, &task_obj(&name, "bot")).await {
            t.failures.push(format!("{name}: create: {e}"));
            continue;
        }
        loop {
            if t0.elapsed() > Duration::from_secs(60) {
                t.failures.push(format!("{name}: no token after 60 s"));
                break;
            }
            t.attempts += 1;
            match https.post(&path, &caller).await {
                Ok((200, body)) => {
                    t.samples.push(t0.elapsed());
                    *t.answers.entry(200).or_default() += 1;
                    let v: Value = serde_json::from_str(&body).unwrap_or_default();
                    match v["token"].as_str() {
                        Some(tok) => t.tokens.push((name.clone(), tok.to_string())),
                        None => t.failures.push(format!("{name}: 200 without a token")),
                    }
                    break;
                }
                Ok((code, _)) => *t.answers.entry(code).or_default() += 1,
                Err(e) => {
                    *t.answers.entry(0).or_default() += 1;
                    if t.failures.len() < 10 {
                        t.failures.push(format!("{name}: {e}"));
                    }
                }
            }
            tokio::time::sleep(BROKER_POLL).await;
        }
    }
    Ok(t)
}

/// Nearest-rank percentile of sorted samples.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mean(s: &[Duration]) -> Duration {
    if s.is_empty() { Duration::ZERO } else { s.iter().sum::<Duration>() / s.len() as u32 }
}

fn print_tokens(t: &Tokens) {
    let mut s = t.samples.clone();
    s.sort();
    let mut out = String::from("## 3. Task token latency (AgentTask created → broker answers 200 over HTTPS)\n\n");
    let _ = writeln!(out, "| samples | min | p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|---|---|");
    let _ = writeln!(
        out,
        "| {} of {TASKS} | {} | {} | {} | {} | {} | {} |",
        s.len(),
        ms(s.first().copied().unwrap_or_default()),
        ms(pct(&s, 50.0)),
        ms(pct(&s, 90.0)),
        ms(pct(&s, 99.0)),
        ms(s.last().copied().unwrap_or_default()),
        ms(mean(&s))
    );
    let answers: Vec<String> =
        t.answers.iter().map(|(c, n)| if *c == 0 { format!("no answer: {n}") } else { format!("{c}: {n}") }).collect();
    let _ = writeln!(
        out,
        "\nmeasured from just before the create (its round trip included) to the 200; broker polled every {} ms with a fresh TLS connection each (the resolution); {} broker requests ({})",
        BROKER_POLL.as_millis(),
        t.attempts,
        answers.join(", ")
    );
    print_section(out, t.timed_out, &t.failures);
}

/// Prints a section's table with its timeout and failure lines.
fn print_section(mut out: String, timed_out: bool, failures: &[String]) {
    if timed_out {
        let _ = writeln!(out, "\nTIMED OUT after {} s", SECTION_TIMEOUT.as_secs());
    }
    for f in failures {
        let _ = writeln!(out, "- failure: {f}");
    }
    println!("{out}");
}

// ------------------------------------------------------------- 4. revocation

struct Revocations {
    review: Vec<Duration>,
    anchor: Vec<Duration>,
    first_review_after_anchor: Vec<Duration>,
    /// Task completed → the decision point's first deny for the task's token.
    pdp_task: Vec<Duration>,
    /// Agent suspended → the decision point's first deny for the agent's own token.
    pdp_suspended: Vec<Duration>,
    failures: Vec<String>,
    timed_out: bool,
}

async fn review(client: &Client, token: &str) -> Res<bool> {
    let tr = TokenReview {
        metadata: Default::default(),
        spec: TokenReviewSpec { token: token.into(), audiences: Some(vec![TOOL_AUDIENCE.into()]) },
        status: None,
    };
    let s = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &tr)
        .await
        .map_err(|e| format!("TokenReview: {e}"))?;
    Ok(s.status.and_then(|s| s.authenticated) == Some(true))
}

/// Polls the decision point until it denies `token`: the time since `t0`.
async fn first_deny(pdp: &Https, token: &str, t0: Instant, limit: Duration) -> Option<Duration> {
    while t0.elapsed() < limit {
        if let Ok(false) = pdp.allowed(token).await {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(PDP_POLL).await;
    }
    None
}

/// Waits (bounded) until the decision point allows `token`.
async fn until_allowed(pdp: &Https, token: &str) -> Res<()> {
    let t0 = Instant::now();
    let mut last = String::new();
    while t0.elapsed() < Duration::from_secs(30) {
        match pdp.allowed(token).await {
            Ok(true) => return Ok(()),
            Ok(false) => last = "denied".into(),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the decision point never allowed the call ({last})"))
}

async fn revocation(client: &Client, op: &Operator, ns: &str, t: &Tokens) -> Res<Revocations> {
    let tokens = &t.tokens;
    let pdp = Https::new(op.pdp_addr(), &t.ca)?;
    let tasks: Api<AgentTask> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let mut r = Revocations {
        review: Vec::new(),
        anchor: Vec::new(),
        first_review_after_anchor: Vec::new(),
        pdp_task: Vec::new(),
        pdp_suspended: Vec::new(),
        failures: Vec::new(),
        timed_out: false,
    };
    if tokens.is_empty() {
        return Err("no task tokens from section 3".into());
    }
    let section = Instant::now();
    // Every token must authenticate before its task ends. Those reviews are cached by the apiserver
    // for 10 s: wait that out once, so every sample starts alike (nothing cached from before).
    let mut valid = Vec::new();
    for (task, token) in tokens.iter().take(REVOKED_TASKS) {
        if let Err(e) = until_allowed(&pdp, token).await {
            r.failures.push(format!("{task}: {e}"));
            continue;
        }
        match review(client, token).await {
            Ok(true) => valid.push((task, token)),
            Ok(false) => r.failures.push(format!("{task}: its token did not authenticate before completion")),
            Err(e) => r.failures.push(format!("{task}: {e}")),
        }
    }
    tokio::time::sleep(Duration::from_secs(11)).await;
    for (task, token) in valid {
        if section.elapsed() > SECTION_TIMEOUT {
            r.timed_out = true;
            break;
        }
        let anchor = agentid::core::task::anchor_name(task);
        let limit = Duration::from_secs(60);
        let t0 = Instant::now();
        let patch = json!({"spec": {"completed": true}});
        if let Err(e) = tasks.patch(task, &PatchParams::default(), &Patch::Merge(&patch)).await {
            r.failures.push(format!("{task}: patch: {e}"));
            continue;
        }
        let anchor_gone = async {
            while t0.elapsed() < limit {
                if let Ok(None) = secrets.get_opt(&anchor).await {
                    return Some(t0.elapsed());
                }
                tokio::time::sleep(ANCHOR_POLL).await;
            }
            None
        };
        let unauthenticated = async {
            while t0.elapsed() < limit {
                if let Ok(false) = review(client, token).await {
                    return Some(t0.elapsed());
                }
                tokio::time::sleep(REVIEW_POLL).await;
            }
            None
        };
        let (a, u, d) = tokio::join!(anchor_gone, unauthenticated, first_deny(&pdp, token, t0, limit));
        match d {
            Some(d) => r.pdp_task.push(d),
            None => r.failures.push(format!("{task}: the decision point still allows after {limit:?}")),
        }
        match a {
            Some(a) => r.anchor.push(a),
            None => r.failures.push(format!("{task}: anchor {anchor} still there after {limit:?}")),
        }
        match u {
            Some(u) => r.review.push(u),
            None => r.failures.push(format!("{task}: token still authenticates after {limit:?}")),
        }
        if let (Some(a), Some(u)) = (a, u) {
            r.first_review_after_anchor.push(u.saturating_sub(a));
        }
    }

    // Agents suspended: each with its grant, calling with its own ServiceAccount token (audience
    // agentid-pdp).
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), ns);
    let grants: Api<ToolGrant> = Api::namespaced(client.clone(), ns);
    let names: Vec<String> = (0..SUSPENDED_AGENTS).map(|i| format!("susp-{i:02}")).collect();
    for n in &names {
        create(&agents, &agent_obj(n)).await?;
        create(&grants, &tool_grant_obj(&format!("{n}-search"), n)).await?;
    }
    for n in &names {
        if section.elapsed() > SECTION_TIMEOUT {
            r.timed_out = true;
            break;
        }
        if let Err(e) = wait_ready_agent(&agents, n, Duration::from_secs(60)).await {
            r.failures.push(e);
            continue;
        }
        let token = match pdp_token(client, ns, &format!("agent-{n}")).await {
            Ok(t) => t,
            Err(e) => {
                r.failures.push(e);
                continue;
            }
        };
        if let Err(e) = until_allowed(&pdp, &token).await {
            r.failures.push(format!("{n}: {e}"));
            continue;
        }
        let t0 = Instant::now();
        let patch = json!({"spec": {"suspended": true}});
        if let Err(e) = agents.patch(n, &PatchParams::default(), &Patch::Merge(&patch)).await {
            r.failures.push(format!("{n}: suspend: {e}"));
            continue;
        }
        match first_deny(&pdp, &token, t0, Duration::from_secs(60)).await {
            Some(d) => r.pdp_suspended.push(d),
            None => r.failures.push(format!("{n}: the decision point still allows 60 s after the suspension")),
        }
    }
    Ok(r)
}

/// The agent's own ServiceAccount token for the decision point's audience.
async fn pdp_token(client: &Client, ns: &str, sa: &str) -> Res<String> {
    service_account_token(client, ns, sa, "agentid-pdp").await
}

fn print_revocation(r: &Revocations) {
    let mut out = String::from("## 4. Revocation latency (spec.completed=true → ...)\n\n");
    let _ = writeln!(out, "| measured | samples | min | p50 | p99 | max | mean |\n|---|---|---|---|---|---|---|");
    for (what, s) in [
        ("anchor Secret gone (what agentid controls; GET every 20 ms)", &r.anchor),
        ("TokenReview unauthenticated (every 200 ms)", &r.review),
        ("… of which after the anchor was gone", &r.first_review_after_anchor),
        ("decision point: first deny of the task token (AuthZEN every 5 ms)", &r.pdp_task),
        ("decision point: agent suspended → first deny of its token (AuthZEN every 5 ms)", &r.pdp_suspended),
    ] {
        let mut s = s.clone();
        s.sort();
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {} | {} |",
            s.len(),
            ms(s.first().copied().unwrap_or_default()),
            ms(pct(&s, 50.0)),
            ms(pct(&s, 99.0)),
            ms(s.last().copied().unwrap_or_default()),
            ms(mean(&s))
        );
    }
    let _ = writeln!(
        out,
        "\nthe kube-apiserver caches successful token authentications for 10 s, so a TokenReview made just before the anchor went keeps answering `authenticated` for up to 10 s; every token was reviewed once (it authenticated), then > 10 s passed before the first `completed` was set; polling starts right after the patch (whose round trip is included), and the first review after it usually still finds the anchor and is cached"
    );
    print_section(out, r.timed_out, &r.failures);
}

// -------------------------------------------------------------- 5. admission

struct Admission {
    free: Vec<Duration>,
    judged: Vec<Duration>,
    free_ns: String,
    judged_ns: String,
    failures: Vec<String>,
    timed_out: bool,
}

async fn admission(client: &Client, watched_ns: &str, run_id: &str) -> Res<Admission> {
    let free_ns = namespace(client, &format!("bench-free-{run_id}"), &[]).await?;
    // The judged namespace is the operator's watched one (the webhook judges only that one), labeled now.
    let judged_ns = watched_ns.to_string();
    let labels =
        json!({"metadata": {"labels": {"agentid.dev/enforcement": "enforce", "agentid.dev/bench": watched_ns}}});
    Api::<Namespace>::all(client.clone())
        .patch(&judged_ns, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .map_err(|e| format!("label {judged_ns}: {e}"))?;
    create(&Api::<AgentIdentity>::namespaced(client.clone(), &judged_ns), &agent_obj("triage")).await?;
    let mut a = Admission {
        free: Vec::new(),
        judged: Vec::new(),
        free_ns: free_ns.clone(),
        judged_ns: judged_ns.clone(),
        failures: Vec::new(),
        timed_out: false,
    };
    let section = Instant::now();

    // The judged namespace: wait (bounded) until the webhook's cache knows the agent and admits the pod.
    let judged: Api<Pod> = Api::namespaced(client.clone(), &judged_ns);
    let mut seen = false;
    for i in 0..300 {
        match judged.create(&PostParams::default(), &good_agent_pod(&format!("probe-{i}"), "triage")).await {
            Ok(_) => {
                seen = true;
                break;
            }
            Err(kube::Error::Api(s)) if s.message.contains("unknown-agent") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(format!("good agent pod refused in {judged_ns}: {e}")),
        }
    }
    if !seen {
        return Err("the webhook never saw agent triage (30 s)".into());
    }

    for (ns, samples) in [(&free_ns, &mut a.free), (&judged_ns, &mut a.judged)] {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for i in 0..WARMUP_PODS + PODS {
            if section.elapsed() > SECTION_TIMEOUT {
                a.timed_out = true;
                break;
            }
            let pod = good_agent_pod(&format!("p-{i:03}"), "triage");
            let t0 = Instant::now();
            match pods.create(&PostParams::default(), &pod).await {
                Ok(_) if i >= WARMUP_PODS => samples.push(t0.elapsed()),
                Ok(_) => {}
                Err(e) => a.failures.push(format!("{ns}/p-{i:03}: {e}")),
            }
        }
    }
    Ok(a)
}

fn print_admission(a: &Admission, metrics: &str) {
    let mut out = format!(
        "## 5. Pod admission overhead ({PODS} sequential creates each, after {WARMUP_PODS} warm-up creates)\n\n"
    );
    let _ = writeln!(out, "| namespace | samples | p50 | p90 | p99 | max | mean |\n|---|---|---|---|---|---|---|");
    let mut stats = Vec::new();
    for (what, s) in [
        (format!("not judged (`{}`, no labels)", a.free_ns), &a.free),
        (format!("judged (`{}`, enforce)", a.judged_ns), &a.judged),
    ] {
        let mut s = s.clone();
        s.sort();
        let row = [pct(&s, 50.0), pct(&s, 90.0), pct(&s, 99.0), s.last().copied().unwrap_or_default(), mean(&s)];
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} | {} | {} |",
            s.len(),
            ms(row[0]),
            ms(row[1]),
            ms(row[2]),
            ms(row[3]),
            ms(row[4])
        );
        stats.push(row);
    }
    if let [free, judged] = stats.as_slice() {
        let diff = |i: usize| {
            let d = judged[i].as_secs_f64() - free[i].as_secs_f64();
            format!("{:+.1} ms", d * 1000.0)
        };
        let _ = writeln!(
            out,
            "| **difference (judged − not judged)** | | {} | {} | {} | {} | {} |",
            diff(0),
            diff(1),
            diff(2),
            diff(3),
            diff(4)
        );
    }
    let sum = metric_value(metrics, "agentid_admission_duration_seconds_sum{mode=\"enforce\"}");
    let count = metric_value(metrics, "agentid_admission_duration_seconds_count{mode=\"enforce\"}");
    let judged = count.unwrap_or(0.0) as usize;
    if judged < a.judged.len() {
        let _ = writeln!(
            out,
            "\nWARNING: the operator judged only {judged} Pods in enforce mode, fewer than the {} timed creates: the judged row is not (fully) judged",
            a.judged.len()
        );
    }
    if let (Some(sum), Some(count)) = (sum, count)
        && count > 0.0
    {
        let _ = writeln!(
            out,
            "\nserver side (operator metrics): {count} enforce reviews judged in {:.3} ms on average (parse → judge, excluding TLS and HTTP); the rest of the difference is the apiserver's webhook call",
            sum / count * 1000.0
        );
    }
    for l in metric_lines(metrics, "agentid_admission_requests_total{") {
        let _ = writeln!(out, "- `{l}`");
    }
    print_section(out, a.timed_out, &a.failures);
}
