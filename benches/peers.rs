//! Admission latency through a real kube-apiserver, agentid's webhook side by side with what a user would
//! pick instead (`make bench-peers`, bench/peers/run.sh starts the private control plane):
//!
//! - **no policy**: a namespace nothing judges;
//! - **VAP**: a namespace judged by bench/peers/vap.yaml, a ValidatingAdmissionPolicy with the same
//!   structural rules and literal-key detectors (CEL, in-process in the apiserver);
//! - **agentid**: a namespace in `enforce` mode, judged by the operator's webhook (`agentid run`, the
//!   binary Cargo built for this bench, run from a copy as its own process, registered by URL on
//!   127.0.0.1 with the apiserver's client certificate required, as in benches/cluster.rs);
//! - **agentid, agent pod**: the same namespace, a pod of an AgentIdentity, which adds the
//!   SubjectAccessReview of `agent-use-denied` (no VAP can do this one; shown for its cost);
//! - **null webhook**: the floor of any admission webhook. agentid's own listener (`src/server`: the same
//!   rustls, HTTP/2, limits and client-certificate check), registered the same way, with a handler that
//!   reads the request's uid and name and allows (it refuses only names starting `deny-`, so the preflight
//!   can prove it is called). It runs as a process of its own (this program, re-executed), like the
//!   operator. What agentid adds over it is agentid's judging; what it adds over no policy is the webhook
//!   protocol itself: the apiserver encoding the object, TLS, HTTP/2 and the answer's decoding.
//!
//! The same good pod (two containers, env, args, a projected token; nothing any judge refuses) is created
//! at a fixed concurrency of 1 and then 16 requests in flight. The configurations are interleaved: in
//! every round each gets one batch, in a rotating order, so a burst of load from another process on the
//! machine hits all of them alike. Before timing, a pod with a static Secret and one with a literal key
//! must be refused by the VAP and by agentid and admitted without policy (else the bench fails: a judge
//! that judges nothing would look fast). Prints one table per concurrency (p50/p90/p99, added latency
//! against no policy) and where the time goes per webhook call: the apiserver's own
//! `apiserver_admission_webhook_admission_duration_seconds` (the call as the apiserver sees it) against
//! agentid's `agentid_admission_duration_seconds` (parse → judge in the handler), and the VAP's
//! `apiserver_validating_admission_policy_check_duration_seconds`.
//!
//! Sizes: `AGENTID_PEERS_ROUNDS` (default 10) rounds of 40 creates per configuration at concurrency 1
//! and 160 at concurrency 16. `AGENTID_PEERS_OPERATOR_BIN` runs another build of the operator; the
//! operator inherits this program's environment.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use agentid::api::AgentIdentity;

type Res<T> = std::result::Result<T, String>;

const TOOL_AUDIENCE: &str = "https://tools.example.com";
const WARMUP: usize = 30;
const WEBHOOK: &str = "enforce.workloads.agentid.dev";
const VAP: &str = "peers.agentid.dev";
const NULL_WEBHOOK: &str = "null.peers.agentid.dev";
/// Set (to the directory with its certificate and port): this program is the null webhook.
const NULL_WEBHOOK_ENV: &str = "AGENTID_PEERS_NULL_WEBHOOK";

fn main() {
    if let Ok(dir) = std::env::var(NULL_WEBHOOK_ENV) {
        null_webhook::serve(Path::new(&dir));
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let code = rt.block_on(async {
        tokio::select! {
            r = run() => match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("bench-peers failed: {e}");
                    1
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("bench-peers: interrupted; stopping the operator");
                130
            }
        }
    });
    drop(rt);
    std::process::exit(code);
}

/// One judged (or not) configuration.
#[derive(Clone)]
struct Config {
    label: String,
    ns: String,
    agent: bool,
}

async fn run() -> Res<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.map_err(|e| format!("KUBECONFIG: {e}"))?;
    let cluster_dir = cluster_dir()?;
    let id = format!("{:06x}", Timestamp::now().as_second() & 0xff_ffff);
    let rounds: usize = std::env::var("AGENTID_PEERS_ROUNDS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let started = Instant::now();
    // `AGENTID_PEERS_OPERATOR_BIN` runs another build of the operator (to compare two builds in one cluster).
    let source = std::env::var("AGENTID_PEERS_OPERATOR_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_agentid").into());
    let bin = cluster_dir.join("agentid");
    std::fs::copy(&source, &bin).map_err(|e| format!("copy the operator binary {source}: {e}"))?;

    println!("# Admission latency: no policy / ValidatingAdmissionPolicy / agentid webhook\n");
    println!("- operator binary: `{source}` (run from a copy)");
    println!("- CPUs: {}, load average at start: {}", cpus(), loadavg());

    let none = namespace(&client, &format!("peers-none-{id}"), &[]).await?;
    let vap = namespace(&client, &format!("peers-vap-{id}"), &[("agentid.dev/peers", "vap")]).await?;
    let op_ns = namespace(&client, &format!("peers-op-{id}"), &[]).await?;
    let wh_name = format!("peers-wh-{id}");
    let wh = namespace(&client, &wh_name, &[("agentid.dev/enforcement", "enforce"), ("agentid.dev/bench", &wh_name)])
        .await?;
    let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/peers/vap.yaml");
    kubectl(&["apply", "--server-side", "--force-conflicts", "-f", &policy.display().to_string()])?;
    let op = Operator::spawn(&cluster_dir, &bin, &op_ns, &wh, &[])?;
    op.wait_ready(Duration::from_secs(60)).await?;
    println!("- operator: pid {}, watches `{wh}`, log `{}`", op.pid, op.log.display());
    // `AGENTID_PEERS_VARIANT_ENV="K=V ..."`: a second operator with these variables set judges a namespace of
    // its own, interleaved with the others (an A/B of a setting in one run, under the same load).
    // `AGENTID_PEERS_VARIANT_BIN`: the same with another build of the operator (before/after a change).
    let variant_env: Vec<(String, String)> = std::env::var("AGENTID_PEERS_VARIANT_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    let variant_bin = std::env::var("AGENTID_PEERS_VARIANT_BIN").ok();
    let variant = if variant_env.is_empty() && variant_bin.is_none() {
        None
    } else {
        let name = format!("peers-wv-{id}");
        let ns =
            namespace(&client, &name, &[("agentid.dev/enforcement", "enforce"), ("agentid.dev/bench", &name)]).await?;
        let op_ns = namespace(&client, &format!("peers-opv-{id}"), &[]).await?;
        let vbin = match &variant_bin {
            Some(b) => {
                let copy = cluster_dir.join("agentid-variant");
                std::fs::copy(b, &copy).map_err(|e| format!("copy the variant binary {b}: {e}"))?;
                copy
            }
            None => bin.clone(),
        };
        // Marks the variant (its pid file), also when only the binary differs.
        let mut env = variant_env.clone();
        env.push(("AGENTID_PEERS_VARIANT".into(), "1".into()));
        let op = Operator::spawn(&cluster_dir, &vbin, &op_ns, &ns, &env)?;
        op.wait_ready(Duration::from_secs(60)).await?;
        println!(
            "- variant operator: pid {}, binary `{}`, watches `{ns}`, environment {variant_env:?}",
            op.pid,
            variant_bin.as_deref().unwrap_or(&source)
        );
        Some((ns, op))
    };
    let null_ns = namespace(&client, &format!("peers-null-{id}"), &[("agentid.dev/peers", "null")]).await?;
    let null = null_webhook::NullWebhook::start(&client, &cluster_dir, &id).await?;
    println!("- null webhook: pid {}, `{}`", null.pid(), null.url);
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), &wh);
    let agent: AgentIdentity = serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity", "metadata": {"name": "triage"},
        "spec": {"owner": "team-bench", "audiences": [TOOL_AUDIENCE]}
    }))
    .map_err(|e| e.to_string())?;
    agents.create(&PostParams::default(), &agent).await.map_err(|e| format!("AgentIdentity: {e}"))?;

    preflight(&client, &none, &vap, &wh, true).await?;
    null_webhook::preflight(&client, &null_ns).await?;
    if let Some((ns, _)) = &variant {
        preflight(&client, &none, &vap, ns, false).await?;
    }
    println!(
        "- preflight: a pod with a static Secret and one with a literal AWS key are refused by the VAP and by agentid, admitted without policy\n"
    );

    let mut configs = vec![
        Config { label: "no policy".into(), ns: none.clone(), agent: false },
        Config { label: "VAP (bench/peers/vap.yaml)".into(), ns: vap.clone(), agent: false },
        Config { label: "agentid webhook, enforce".into(), ns: wh.clone(), agent: false },
        Config { label: "agentid webhook, agent pod (+ SubjectAccessReview)".into(), ns: wh.clone(), agent: true },
        Config { label: "null webhook (agentid's listener, allows)".into(), ns: null_ns.clone(), agent: false },
    ];
    if let Some((ns, _)) = &variant {
        let mut what: Vec<String> = variant_env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if let Some(b) = &variant_bin {
            what.push(b.clone());
        }
        configs.push(Config {
            label: format!("agentid webhook, enforce, variant `{}`", what.join(" ")),
            ns: ns.clone(),
            agent: false,
        });
    }
    // Warm-up: connections, caches, the webhook's first TLS handshake.
    for c in &configs {
        batch(&client, c, &format!("w-{id}"), WARMUP, 1).await;
    }

    for (conc, per_round) in [(1usize, 40usize), (16, 160)] {
        let before = Scrape::take(&client, &op, variant.as_ref().map(|v| &v.1)).await;
        let load0 = loadavg();
        let t0 = Instant::now();
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); configs.len()];
        let mut failures: Vec<String> = Vec::new();
        for r in 0..rounds {
            for k in 0..configs.len() {
                let i = (k + r) % configs.len();
                let (s, f) = batch(&client, &configs[i], &format!("c{conc}-r{r}"), per_round, conc).await;
                samples[i].extend(s);
                failures.extend(f);
            }
        }
        let after = Scrape::take(&client, &op, variant.as_ref().map(|v| &v.1)).await;
        print_table(conc, &configs, samples, &failures, t0.elapsed(), &load0, &before, &after);
    }
    drop(op);
    drop(variant);
    drop(null);
    println!("load average at the end: {}; bench runtime {:.1} s", loadavg(), started.elapsed().as_secs_f64());
    Ok(())
}

/// `n` creates in `c`'s namespace with `conc` in flight: (latencies of the admitted, failures).
async fn batch(client: &Client, c: &Config, prefix: &str, n: usize, conc: usize) -> (Vec<Duration>, Vec<String>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &c.ns);
    let tag = if c.agent { "a" } else { "p" };
    let results: Vec<Result<Duration, String>> = stream::iter(0..n)
        .map(|i| {
            let pods = pods.clone();
            let name = format!("{prefix}-{tag}-{i:04}");
            let pod = good_pod(&name, c.agent);
            async move {
                let t0 = Instant::now();
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => Ok(t0.elapsed()),
                    Err(e) => Err(format!("{name}: {e}")),
                }
            }
        })
        .buffer_unordered(conc)
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for r in results {
        match r {
            Ok(d) => ok.push(d),
            Err(e) => failed.push(format!("{}: {e}", c.label)),
        }
    }
    (ok, failed)
}

/// A pod nothing refuses: its own ServiceAccount, no Secret, no literal key, no automounted token; with
/// `agent`, a pod of the AgentIdentity `triage` on its ServiceAccount with a short-lived projected token.
fn good_pod(name: &str, agent: bool) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "billing"}},
        "spec": {
            "serviceAccountName": "billing",
            "automountServiceAccountToken": false,
            "containers": [
                {"name": "app", "image": "registry.example.com/billing:1.4.2",
                 "command": ["/app/server"], "args": ["--port=8080", "--log-format=json", "--upstream=https://api.example.com/v1"],
                 "env": [{"name": "LOG_LEVEL", "value": "info"}, {"name": "REGION", "value": "eu-west-1"},
                         {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                         {"name": "MAX_CONNECTIONS", "value": "64"}],
                 "envFrom": [{"configMapRef": {"name": "billing-settings"}}],
                 "volumeMounts": [{"name": "token", "mountPath": "/var/run/agentid"}]},
                {"name": "metrics", "image": "registry.example.com/exporter:1", "args": ["--port=9090"]}],
            "volumes": [{"name": "token", "projected": {"sources": [
                {"serviceAccountToken": {"audience": TOOL_AUDIENCE, "expirationSeconds": 600, "path": "token"}}]}}]
        }
    });
    if agent {
        pod["metadata"]["labels"]["agentid.dev/agent"] = json!("triage");
        pod["spec"]["serviceAccountName"] = json!("agent-triage");
    }
    serde_json::from_value(pod).expect("Pod")
}

/// The judges must judge: a static Secret and a literal key are refused by the VAP and agentid and
/// admitted without policy. Waits (bounded) for the VAP binding and the agent to be known.
async fn preflight(client: &Client, none: &str, vap: &str, wh: &str, agent_pods: bool) -> Res<()> {
    let bad = |name: &str, secret: bool| -> Pod {
        let env = if secret {
            json!([{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}])
        } else {
            json!([{"name": "AWS_ACCESS_KEY_ID", "value": "AKIA2OGYBAH6STMMNXNN"}])
        };
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": "billing", "automountServiceAccountToken": false,
                     "containers": [{"name": "app", "image": "x", "env": env}]}
        }))
        .expect("Pod")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    for (ns, want_denied, marker) in
        [(vap, true, "ValidatingAdmissionPolicy"), (wh, true, "agentid/"), (none, false, "")]
    {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        for (i, secret) in [true, false].into_iter().enumerate() {
            loop {
                let name = format!("bad-{i}-{}", Timestamp::now().as_millisecond());
                let res = pods.create(&PostParams::default(), &bad(&name, secret)).await;
                let ok = match (&res, want_denied) {
                    (Err(kube::Error::Api(s)), true) => s.message.contains(marker),
                    (Ok(_), false) => true,
                    _ => false,
                };
                if ok {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("preflight in {ns}: want denied={want_denied}, got {res:?}"));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    if !agent_pods {
        return Ok(());
    }
    // The agent pod is admitted once the webhook's cache knows the agent.
    let pods: Api<Pod> = Api::namespaced(client.clone(), wh);
    for i in 0.. {
        match pods.create(&PostParams::default(), &good_pod(&format!("probe-{i}"), true)).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => return Err(format!("good agent pod refused: {e}")),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ metrics

/// Sums and counts of the duration histograms that say where a webhook call's time goes.
#[derive(Default)]
struct Scrape {
    /// apiserver_admission_webhook_admission_duration_seconds of the workload webhook, (sum, count).
    webhook_call: (f64, f64),
    /// The same of the null webhook.
    null_call: (f64, f64),
    /// apiserver_validating_admission_policy_check_duration_seconds of the bench's VAP.
    vap_check: (f64, f64),
    /// agentid_admission_duration_seconds{mode="enforce"}.
    handler: (f64, f64),
    /// The same of the variant operator.
    variant_handler: Option<(f64, f64)>,
}

impl Scrape {
    async fn take(client: &Client, op: &Operator, variant: Option<&Operator>) -> Scrape {
        let req = axum::http::Request::get("/metrics").body(Vec::new()).expect("request");
        let api = client.request_text(req).await.unwrap_or_default();
        let ours = op.metrics().await;
        Scrape {
            webhook_call: histogram(
                &api,
                "apiserver_admission_webhook_admission_duration_seconds",
                &[&format!("name=\"{WEBHOOK}\""), "operation=\"CREATE\""],
            ),
            null_call: histogram(
                &api,
                "apiserver_admission_webhook_admission_duration_seconds",
                &[&format!("name=\"{NULL_WEBHOOK}\""), "operation=\"CREATE\""],
            ),
            vap_check: histogram(
                &api,
                "apiserver_validating_admission_policy_check_duration_seconds",
                &[&format!("policy=\"{VAP}\"")],
            ),
            handler: histogram(&ours, "agentid_admission_duration_seconds", &["mode=\"enforce\""]),
            variant_handler: match variant {
                Some(v) => {
                    Some(histogram(&v.metrics().await, "agentid_admission_duration_seconds", &["mode=\"enforce\""]))
                }
                None => None,
            },
        }
    }
}

/// (sum, count) of a histogram over every series whose labels contain all of `labels`.
fn histogram(text: &str, name: &str, labels: &[&str]) -> (f64, f64) {
    let mut out = (0.0, 0.0);
    for l in text.lines() {
        let (series, value) = match l.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let Ok(v) = value.parse::<f64>() else { continue };
        let matches = |suffix: &str| {
            series.strip_prefix(name).and_then(|s| s.strip_prefix(suffix)).is_some_and(|s| {
                let s = s.trim_start_matches('{');
                labels.iter().all(|want| s.contains(want))
            })
        };
        if matches("_sum") {
            out.0 += v;
        } else if matches("_count") {
            out.1 += v;
        }
    }
    out
}

fn per_call_ms(before: (f64, f64), after: (f64, f64)) -> Option<(f64, f64)> {
    let n = after.1 - before.1;
    (n > 0.0).then(|| ((after.0 - before.0) / n * 1000.0, n))
}

// ------------------------------------------------------------------- tables

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn added(d: Duration, base: Duration) -> String {
    format!("{:+.2}", (d.as_secs_f64() - base.as_secs_f64()) * 1000.0)
}

#[allow(clippy::too_many_arguments)]
fn print_table(
    conc: usize,
    configs: &[Config],
    samples: Vec<Vec<Duration>>,
    failures: &[String],
    took: Duration,
    load0: &str,
    before: &Scrape,
    after: &Scrape,
) {
    let total: usize = samples.iter().map(Vec::len).sum();
    let mut out = format!(
        "## Pod CREATE latency, concurrency {conc} ({total} creates interleaved in {:.1} s, {:.0}/s; load average {load0} → {})\n\n",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        loadavg()
    );
    out.push_str("| configuration | creates | p50 ms | p90 ms | p99 ms | added p50 | added p90 | added p99 |\n");
    out.push_str("|---|---|---|---|---|---|---|---|\n");
    let sorted: Vec<Vec<Duration>> = samples
        .into_iter()
        .map(|mut s| {
            s.sort();
            s
        })
        .collect();
    let base: Vec<Duration> = [50.0, 90.0, 99.0].iter().map(|p| pct(&sorted[0], *p)).collect();
    for (c, s) in configs.iter().zip(&sorted) {
        let v: Vec<Duration> = [50.0, 90.0, 99.0].iter().map(|p| pct(s, *p)).collect();
        let add = |i: usize| if c.ns == configs[0].ns { "—".to_string() } else { added(v[i], base[i]) };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            c.label,
            s.len(),
            ms(v[0]),
            ms(v[1]),
            ms(v[2]),
            add(0),
            add(1),
            add(2)
        );
    }
    out.push('\n');
    if let Some((call, n)) = per_call_ms(before.webhook_call, after.webhook_call) {
        let _ = write!(
            out,
            "- apiserver → agentid webhook call (`apiserver_admission_webhook_admission_duration_seconds`, CREATE): {call:.3} ms mean over {n} calls"
        );
        if let Some((h, _)) = per_call_ms(before.handler, after.handler) {
            let _ = write!(
                out,
                "; agentid's handler (`agentid_admission_duration_seconds`, parse → judge, and for agent pods the SubjectAccessReview round trip): {h:.3} ms; between the two (encode, TLS, HTTP/2, scheduling, both sides): {:.3} ms",
                call - h
            );
        }
        out.push('\n');
    }
    if let Some((call, n)) = per_call_ms(before.null_call, after.null_call) {
        let _ = writeln!(
            out,
            "- apiserver → null webhook call (same metric): {call:.3} ms mean over {n} calls: the webhook protocol's own cost, on agentid's listener"
        );
    }
    if let (Some(b), Some(a)) = (before.variant_handler, after.variant_handler)
        && let Some((h, n)) = per_call_ms(b, a)
    {
        let _ = writeln!(
            out,
            "- the variant's handler: {h:.3} ms mean over {n} reviews (the apiserver's figure above covers both operators: the webhooks have the same name)"
        );
    }
    if let Some((v, n)) = per_call_ms(before.vap_check, after.vap_check) {
        let _ = writeln!(
            out,
            "- VAP check (`apiserver_validating_admission_policy_check_duration_seconds`): {v:.3} ms mean over {n} checks"
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(out, "- FAILED creates: {} (first: {})", failures.len(), failures[0]);
    }
    println!("{out}");
}

// -------------------------------------------------------------- environment

fn cluster_dir() -> Res<PathBuf> {
    if let Ok(d) = std::env::var("AGENTID_CLUSTER_DIR") {
        return Ok(PathBuf::from(d));
    }
    let kc = std::env::var("KUBECONFIG").map_err(|_| "KUBECONFIG is not set (run make bench-peers)".to_string())?;
    Path::new(&kc).parent().map(Path::to_path_buf).ok_or_else(|| format!("KUBECONFIG {kc} has no directory"))
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

fn kubectl(args: &[&str]) -> Res<()> {
    let out = Command::new("kubectl").args(args).stdin(Stdio::null()).output().map_err(|e| format!("kubectl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("kubectl {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
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

/// The operator as a real process (as in benches/cluster.rs). Dropping it kills the process and deletes
/// its ValidatingWebhookConfiguration.
struct Operator {
    child: Option<Child>,
    pid: u32,
    probe: u16,
    webhook_configuration: String,
    log: PathBuf,
    pid_file: PathBuf,
}

impl Operator {
    fn spawn(cluster_dir: &Path, bin: &Path, operator_ns: &str, ns: &str, env: &[(String, String)]) -> Res<Operator> {
        let probe = free_port()?;
        let webhook = free_port()?;
        let name = format!("agentid-peers-{ns}");
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
            .args(["--broker-addr", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--pdp-addr", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--webhook-client-ca-file", &cluster_dir.join("pki/webhook-client-ca.crt").display().to_string()])
            .args(["--webhook-configuration", &name])
            .args(["--webhook-scope", &format!("agentid.dev/bench={ns}")])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let pid = child.id();
        // `e2e/cluster.sh down` stops this pid too, should this program die without unwinding.
        // (bench/peers/run.sh stops a variant operator's pid file, `agentid-variant`, too.)
        let pid_file = cluster_dir.join("pids").join(if env.is_empty() { "agentid" } else { "agentid-variant" });
        let _ = std::fs::create_dir_all(cluster_dir.join("pids"));
        let _ = std::fs::write(&pid_file, format!("{pid}\n"));
        Ok(Operator { child: Some(child), pid, probe, webhook_configuration: name, log, pid_file })
    }

    async fn wait_ready(&self, timeout: Duration) -> Res<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some((200, _)) = http_get(self.probe, "/readyz").await {
                return Ok(());
            }
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return Err(format!("operator exited; see {}", self.log.display()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("operator not ready after {timeout:?}; see {}", self.log.display()))
    }

    async fn metrics(&self) -> String {
        http_get(self.probe, "/metrics").await.map(|(_, b)| b).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = kubectl(&[
            "delete",
            "validatingwebhookconfiguration",
            &self.webhook_configuration,
            "--ignore-not-found",
            "--wait=false",
        ]);
    }
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
        let text = String::from_utf8_lossy(&buf);
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), io).await.ok().flatten()
}

// ------------------------------------------------------------- the null webhook

mod null_webhook {
    use super::*;
    use agentid::server::listener::{Limits, Listener, TlsHandle};
    use agentid::server::tls::{TlsMaterial, generate_ca, generate_serving, server_config};
    use axum::response::IntoResponse;
    use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
    use kube::api::DeleteParams;

    /// Runs the null webhook until killed: certificate, key, client CA and port from `dir`.
    pub fn serve(dir: &Path) -> ! {
        let read = |f: &str| std::fs::read(dir.join(f)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(f).display()));
        let material =
            TlsMaterial { cert_pem: read("tls.crt"), key_pem: read("tls.key"), ca_pem: None, not_after: None };
        let port: u16 = String::from_utf8_lossy(&read("port")).trim().parse().expect("port");
        let _ = rustls::crypto::ring::default_provider().install_default();
        let tls = server_config(&material, Some(&read("client-ca.crt"))).expect("TLS config");
        let app = axum::Router::new().route("/validate", axum::routing::post(allow));
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
        rt.block_on(async {
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let listener = Listener::bind("webhook", addr, TlsHandle::new(tls), app, Limits::default()).expect("bind");
            listener.run().await;
        });
        std::process::exit(0)
    }

    /// Allows everything but names starting `deny-`; reads nothing else of the review.
    async fn allow(body: axum::body::Bytes) -> axum::response::Response {
        #[derive(serde::Deserialize)]
        struct Review {
            request: Request,
        }
        #[derive(serde::Deserialize)]
        struct Request {
            uid: String,
            #[serde(default)]
            name: String,
        }
        match serde_json::from_slice::<Review>(&body) {
            Ok(Review { request }) => {
                let allowed = !request.name.starts_with("deny-");
                let mut response = json!({"uid": request.uid, "allowed": allowed});
                if !allowed {
                    response["status"] = json!({"code": 403, "message": "null webhook: refused by name"});
                }
                axum::Json(
                    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
                )
                .into_response()
            }
            Err(e) => (axum::http::StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        }
    }

    /// The running null webhook and its registration; both go when dropped.
    pub struct NullWebhook {
        child: Child,
        pub url: String,
        configuration: String,
        client: Client,
        pid_file: PathBuf,
    }

    impl NullWebhook {
        pub async fn start(client: &Client, cluster_dir: &Path, id: &str) -> Res<NullWebhook> {
            let dir = cluster_dir.join("null-webhook");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let now = Timestamp::now();
            let (ca, ca_key) = generate_ca(now).map_err(|e| e.to_string())?;
            let (cert, key, _) =
                generate_serving(&ca_key, &["127.0.0.1".to_string()], now, Duration::from_secs(86_400))
                    .map_err(|e| e.to_string())?;
            let port = free_port()?;
            let client_ca = cluster_dir.join("pki/webhook-client-ca.crt");
            std::fs::copy(&client_ca, dir.join("client-ca.crt"))
                .map_err(|e| format!("{}: {e}", client_ca.display()))?;
            for (f, v) in [("tls.crt", cert), ("tls.key", key), ("port", port.to_string())] {
                std::fs::write(dir.join(f), v).map_err(|e| format!("{f}: {e}"))?;
            }
            let log = File::create(cluster_dir.join("logs/null-webhook.log")).map_err(|e| e.to_string())?;
            let child = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
                .env(NULL_WEBHOOK_ENV, &dir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().map_err(|e| e.to_string())?)
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start the null webhook: {e}"))?;
            let pid_file = cluster_dir.join("pids/null-webhook");
            let _ = std::fs::write(&pid_file, format!("{}\n", child.id()));
            let url = format!("https://127.0.0.1:{port}/validate");
            let configuration = format!("agentid-peers-null-{id}");
            let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
                "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": configuration},
                "webhooks": [{
                    "name": NULL_WEBHOOK,
                    "clientConfig": {"url": url, "caBundle": base64_of(ca.as_bytes())},
                    "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                    "namespaceSelector": {"matchLabels": {"agentid.dev/peers": "null"}},
                    "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
                    "timeoutSeconds": 10
                }]
            }))
            .map_err(|e| e.to_string())?;
            let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
            api.create(&PostParams::default(), &vwc).await.map_err(|e| format!("null webhook registration: {e}"))?;
            Ok(NullWebhook { child, url, configuration, client: client.clone(), pid_file })
        }

        pub fn pid(&self) -> u32 {
            self.child.id()
        }
    }

    impl Drop for NullWebhook {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_file(&self.pid_file);
            let api: Api<ValidatingWebhookConfiguration> = Api::all(self.client.clone());
            let name = self.configuration.clone();
            // Dropped inside the runtime: the delete runs on its own thread with a runtime of its own.
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(async { api.delete(&name, &DeleteParams::default()).await }))
            })
            .join();
        }
    }

    fn base64_of(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// The null webhook is in the path: a `deny-` pod is refused by it, a good pod admitted.
    pub async fn preflight(client: &Client, ns: &str) -> Res<()> {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let name = format!("deny-{}", Timestamp::now().as_millisecond());
            match pods.create(&PostParams::default(), &good_pod(&name, false)).await {
                Err(kube::Error::Api(s)) if s.message.contains("null webhook") => break,
                other if Instant::now() > deadline => return Err(format!("null webhook preflight: got {other:?}")),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        pods.create(&PostParams::default(), &good_pod(&format!("ok-{}", Timestamp::now().as_millisecond()), false))
            .await
            .map(|_| ())
            .map_err(|e| format!("null webhook refused a good pod: {e}"))
    }
}
