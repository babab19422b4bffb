//! kube-apiserver and etcd restarts under load, against a control plane of this test's own (restarting
//! the shared one would break the tests running beside it): `e2e/cluster.sh up` in
//! .cache/restart-cluster-<pid>, always taken down again (a Drop guard, also on failure).
//!
//! One real `agentid run` serves the webhook (registered by URL, failing closed) and runs the controllers,
//! while AgentIdentities and dry-run pods are created without pause. `e2e/cluster.sh restart apiserver`,
//! then `restart etcd`; after each: the operator process is still running, /readyz answers 200, its watches
//! resumed (an AgentIdentity created after the restart gets Ready from the controller, and a pod of that
//! agent is admitted, which needs the webhook's own AgentIdentity cache to have seen it), and the webhook
//! answers again. At no time may a pod agentid denies get in. The recovery times are printed; the bounds
//! are generous.
//!
//! Leader election: the operator runs with `--no-leader-elect`. With a Lease it stops on purpose once it
//! could not renew for 8 s (so that two leaders never overlap; its supervisor starts it again), and these
//! outages last about that long: by hand, a leader survived two apiserver restarts (renewals failed for
//! 6 s) and exited with "leadership lost" on the etcd restart (Lease requests timing out while etcd was
//! down). Whether it exits depends on timing, not on agentid; what this test is about is that a process
//! that does not exit recovers by itself.
#![cfg(feature = "e2e")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use support::*;

use agentid::api::AgentIdentity;
use agentid::core::conditions;

/// How long anything may take to come back after the restarted process is ready again.
const RECOVERY: Duration = Duration::from_secs(60);

/// A private control plane (`e2e/cluster.sh up` in its own directory), taken down on drop. Its directory
/// is removed when the test passed and kept, with the logs, when it failed.
struct Cluster {
    dir: PathBuf,
}

fn cluster_sh(dir: &Path, args: &[&str]) -> std::process::ExitStatus {
    Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/cluster.sh"))
        .args(args)
        .env("AGENTID_CLUSTER_DIR", dir)
        .env_remove("AGENTID_NODE")
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .expect("runs e2e/cluster.sh")
}

impl Cluster {
    fn up() -> Cluster {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(".cache/restart-cluster-{}", std::process::id()));
        let cluster = Cluster { dir };
        let status = cluster_sh(&cluster.dir, &["up"]);
        assert!(status.success(), "e2e/cluster.sh up: {status} (needs the tools of `make tools` in .cache/bin)");
        cluster
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `e2e/cluster.sh restart <what>`, off the async runtime; its duration (stopped until ready again).
    async fn restart(&self, what: &'static str) -> Duration {
        let dir = self.dir.clone();
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || cluster_sh(&dir, &["restart", what])).await.unwrap();
        assert!(status.success(), "e2e/cluster.sh restart {what}: {status}");
        started.elapsed()
    }

    async fn client(&self) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.unwrap();
        Client::try_from(config).unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let status = cluster_sh(&self.dir, &["down"]);
        if std::thread::panicking() || !status.success() {
            eprintln!("control-plane logs kept in {}", self.dir.join("logs").display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

struct Operator {
    child: Killed,
    probe: u16,
    log: PathBuf,
}

impl Operator {
    fn start(cluster: &Cluster, ns: &str, operator_ns: &str) -> Operator {
        let (probe, webhook, broker, pdp) = (free_port(), free_port(), free_port(), free_port());
        let log = cluster.dir.join("logs/agentid.log");
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let child = Command::new(env!("CARGO_BIN_EXE_agentid"))
            .env("KUBECONFIG", cluster.kubeconfig())
            .args(["run", "--no-leader-elect", "--watch-namespace", ns, "--operator-namespace", operator_ns])
            .args(["--instance", "restart", "--webhook-configuration", "agentid-restart"])
            .args(["--webhook-url", &format!("https://{}", addr(webhook)), "--webhook-addr", &addr(webhook)])
            .arg("--webhook-client-ca-file")
            .arg(cluster.dir.join("pki/webhook-client-ca.crt"))
            .args(["--probe-addr", &addr(probe), "--broker-addr", &addr(broker), "--pdp-addr", &addr(pdp)])
            .args(["--scan-interval", "0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start agentid");
        Operator { child: Killed(child), probe, log }
    }

    /// Panics (with the end of its log) when the process has exited.
    fn assert_running(&mut self, when: &str) {
        if let Some(status) = self.child.0.try_wait().unwrap() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
            panic!("agentid exited ({status}) {when}; its log ends:\n{}", tail.join("\n"));
        }
    }

    async fn readyz(&self) -> u16 {
        readyz(self.probe).await
    }
}

/// The status of `GET /readyz` on a probe port (0 when it does not answer).
async fn readyz(port: u16) -> u16 {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return 0 };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").is_err() {
            return 0;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
    })
    .await
    .unwrap()
}

fn agent(name: &str) -> AgentIdentity {
    from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec: {{owner: team, audiences: [https://tools.example.com]}}"
    ))
}

/// A pod agentid admits in enforce mode, or one it denies (`default-service-account`).
fn plain_pod(name: &str, admit: bool) -> Pod {
    let sa = if admit { "serviceAccountName: app\n  automountServiceAccountToken: false\n  " } else { "" };
    from_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  {sa}containers: [{{name: app, image: registry.example.com/app:1}}]"
    ))
}

/// A pod running as agent `agent`, done right: admitted only once the webhook knows the agent.
fn agent_pod(name: &str, agent: &str) -> Pod {
    from_yaml(&format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{agentid.dev/agent: {agent}}}}}
spec:
  serviceAccountName: agent-{agent}
  automountServiceAccountToken: false
  containers:
  - name: agent
    image: registry.example.com/agent:1
    volumeMounts: [{{name: token, mountPath: /var/run/agentid}}]
  volumes:
  - name: token
    projected:
      sources:
      - serviceAccountToken: {{audience: https://tools.example.com, expirationSeconds: 600, path: token}}
"
    ))
}

fn dry_run() -> PostParams {
    PostParams { dry_run: true, ..Default::default() }
}

/// What agentid made of a dry-run create of `pod`: `Ok(true)` admitted, `Ok(false)` denied by agentid,
/// `Err` anything else (the apiserver or the webhook not reachable).
async fn judge(pods: &Api<Pod>, pod: &Pod) -> Result<bool, String> {
    match pods.create(&dry_run(), pod).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.message.contains("denied the request") && s.message.contains("[agentid/") => {
            Ok(false)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// One operation of the load.
#[derive(Debug, Clone)]
struct Op {
    /// When it was sent and when it was answered (since the load began).
    at: Duration,
    done: Duration,
    what: &'static str,
    /// `Ok(())` as agentid should answer; `Err(reason)` not answered (outage).
    result: Result<(), String>,
}

/// Counts of the load, and the answers that were wrong (must stay empty).
#[derive(Default)]
struct Load {
    ops: Vec<Op>,
    wrong: Vec<String>,
    not_ready: Vec<(Duration, u16)>,
}

/// Creates AgentIdentities and dry-run pods (one agentid admits, one it denies) without pause until
/// `stop`, and polls /readyz.
async fn load(client: Client, ns: String, probe: u16, t0: Instant, stop: Arc<AtomicBool>, out: Arc<Mutex<Load>>) {
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let at = t0.elapsed();
        let result = agents.create(&PostParams::default(), &agent(&format!("load-{i}"))).await.map(|_| ());
        out.lock().unwrap().ops.push(Op {
            at,
            done: t0.elapsed(),
            what: "AgentIdentity",
            result: result.map_err(|e| e.to_string()),
        });

        let at = t0.elapsed();
        let result = match judge(&pods, &plain_pod(&format!("bad-{i}"), false)).await {
            Ok(true) => {
                out.lock().unwrap().wrong.push(format!("{at:?}: a pod agentid denies was admitted"));
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => Err(e),
        };
        out.lock().unwrap().ops.push(Op { at, done: t0.elapsed(), what: "denied pod", result });

        let at = t0.elapsed();
        let result = match judge(&pods, &plain_pod(&format!("good-{i}"), true)).await {
            Ok(false) => {
                out.lock().unwrap().wrong.push(format!("{at:?}: a pod agentid admits was denied"));
                Ok(())
            }
            Ok(true) => Ok(()),
            Err(e) => Err(e),
        };
        out.lock().unwrap().ops.push(Op { at, done: t0.elapsed(), what: "admitted pod", result });

        let ready = readyz(probe).await;
        if ready != 200 {
            out.lock().unwrap().not_ready.push((t0.elapsed(), ready));
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The recovery after one restart, measured from the moment `e2e/cluster.sh restart` returned (the
/// restarted process ready again).
struct Recovery {
    restart: Duration,
    load_back: Duration,
    webhook: Duration,
    agent_ready: Duration,
    agent_pod: Duration,
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| format!("{:.1} s", d.as_secs_f64());
        write!(
            f,
            "restart (stopped until ready again) {}; then: webhook answering {}, load answered {}, \
             new AgentIdentity Ready {}, its pod admitted (webhook cache) {}",
            ms(self.restart),
            ms(self.webhook),
            ms(self.load_back),
            ms(self.agent_ready),
            ms(self.agent_pod)
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_survives_apiserver_and_etcd_restarts_under_load() {
    let cluster = Cluster::up();
    let client = cluster.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "restart").await;
    let operator_ns = namespace(&client, "restart-op").await;
    let mut operator = Operator::start(&cluster, &ns, &operator_ns);
    wait_until(Duration::from_secs(60), "agentid ready", || {
        operator.assert_running("before it was ready");
        let probe = operator.probe;
        async move { (readyz(probe).await == 200).then_some(()) }
    })
    .await;
    let labels = serde_json::json!({"metadata": {"labels": {"agentid.dev/enforcement": "enforce"}}});
    Api::<Namespace>::all(client.clone()).patch(&ns, &PatchParams::default(), &Patch::Merge(&labels)).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let agents: Api<AgentIdentity> = Api::namespaced(client.clone(), &ns);
    wait_until(Duration::from_secs(30), "the webhook answers", || async {
        (judge(&pods, &plain_pod("warmup", false)).await == Ok(false)).then_some(())
    })
    .await;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let record = Arc::new(Mutex::new(Load::default()));
    let load = tokio::spawn(load(client.clone(), ns.clone(), operator.probe, t0, stop.clone(), record.clone()));
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut recoveries = Vec::new();
    for (what, process) in [("apiserver", "kube-apiserver"), ("etcd", "etcd")] {
        operator.assert_running(&format!("before the {process} restart"));
        let began = t0.elapsed();
        let restart = cluster.restart(what).await;
        let back = Instant::now();
        let back_at = t0.elapsed();
        eprintln!("{process} restarted: stopped at {began:?}, ready again at {back_at:?} ({restart:?})");
        operator.assert_running(&format!("during the {process} restart"));

        // The webhook answers (a denied pod, denied with agentid's message).
        let webhook = wait_until(RECOVERY, &format!("the webhook answers after the {process} restart"), || async {
            match judge(&pods, &plain_pod("probe", false)).await {
                Ok(false) => Some(back.elapsed()),
                Ok(true) => panic!("a pod agentid denies was admitted after the {process} restart"),
                Err(_) => None,
            }
        })
        .await;
        // The load gets through again (creates of AgentIdentities go through agentid's webhook too): the
        // first operation answered as it should after the restarted process was ready, and the last
        // one that was not.
        let load_back = wait_until(RECOVERY, &format!("the load gets through after the {process} restart"), || {
            let record = record.clone();
            async move {
                let record = record.lock().unwrap();
                let first_ok =
                    record.ops.iter().filter(|o| o.done >= back_at && o.result.is_ok()).map(|o| o.done).min()?;
                Some(first_ok - back_at)
            }
        })
        .await;
        let (first_failure, last_failure) = {
            let record = record.lock().unwrap();
            if let Some(o) = record.ops.iter().filter(|o| o.done >= back_at && o.result.is_ok()).min_by_key(|o| o.done)
            {
                eprintln!(
                    "{process}: first load operation answered after the restart: {} sent {:?} after the restart began, answered {:?} after",
                    o.what,
                    o.at.saturating_sub(began),
                    o.done - began
                );
            }
            let failed: Vec<&Op> = record.ops.iter().filter(|o| o.at >= began && o.result.is_err()).collect();
            for o in failed.iter().filter(|o| o.done >= back_at).take(3) {
                eprintln!("  failed after the {process} was ready again: {o:?}");
            }
            (failed.iter().map(|o| o.at).min(), failed.iter().map(|o| o.done).max())
        };
        eprintln!(
            "{process}: the load failed from {:?} to {:?} after the restart began",
            first_failure.map(|t| t - began),
            last_failure.map(|t| t - began)
        );
        // Watches resumed: the controller reconciles a new AgentIdentity, and the webhook's own cache sees
        // it (a pod of an agent it does not know is refused as unknown-agent).
        let name = format!("after-{what}");
        wait_until(RECOVERY, &format!("{name} created"), || async {
            agents.create(&PostParams::default(), &agent(&name)).await.ok().map(|_| ())
        })
        .await;
        let agent_ready = wait_until(RECOVERY, &format!("{name} Ready"), || async {
            let a = agents.get(&name).await.ok()?;
            conditions::is_true(&a.status?.conditions, "Ready").then(|| back.elapsed())
        })
        .await;
        let agent_pod = wait_until(RECOVERY, &format!("a pod of {name} admitted"), || async {
            match pods.create(&dry_run(), &agent_pod(&format!("{name}-pod"), &name)).await {
                Ok(_) => Some(back.elapsed()),
                Err(kube::Error::Api(s)) if s.message.contains("[agentid/unknown-agent]") => None,
                Err(kube::Error::Api(s)) if s.message.contains("denied the request") => {
                    panic!("a pod of {name} done right was denied: {}", s.message)
                }
                Err(_) => None,
            }
        })
        .await;
        let readyz = operator.readyz().await;
        assert_eq!(readyz, 200, "/readyz after the {process} restart");
        operator.assert_running(&format!("after the {process} restart"));
        let r = Recovery { restart, load_back, webhook, agent_ready, agent_pod };
        eprintln!("{process}: {r}");
        recoveries.push((process, r));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    operator.assert_running("at the end");
    let record = record.lock().unwrap();
    let failed: Vec<&Op> = record.ops.iter().filter(|o| o.result.is_err()).collect();
    let mut reasons: Vec<String> = failed
        .iter()
        .map(|o| {
            let e = o.result.as_ref().unwrap_err();
            format!("{}: {}", o.what, e.chars().take(120).collect::<String>())
        })
        .collect();
    reasons.sort();
    reasons.dedup();
    eprintln!(
        "load: {} operations, {} not answered (during the outages, from {:?} to {:?}); /readyz not 200 {} times {:?}",
        record.ops.len(),
        failed.len(),
        failed.first().map(|o| o.at),
        failed.last().map(|o| o.at),
        record.not_ready.len(),
        record.not_ready.iter().take(5).collect::<Vec<_>>()
    );
    for r in reasons.iter().take(12) {
        eprintln!("  not answered: {r}");
    }
    for (process, r) in &recoveries {
        eprintln!("{process} restart: {r}");
    }
    assert!(record.wrong.is_empty(), "wrong answers: {:?}", record.wrong);
    assert!(record.ops.len() > 50, "the load was too thin to mean anything: {}", record.ops.len());
    // Dropped in this order: the operator first, then the control plane.
    drop(operator);
    drop(cluster);
}
