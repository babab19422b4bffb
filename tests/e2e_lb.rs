//! Two real `agentid run` replicas behind a real HAProxy serve the admission webhook that the apiserver
//! calls by URL. Under a steady stream of pod creates — some agentid admits, some it denies, so every
//! answer really came from agentid — the replica carrying the traffic is frozen for a moment (SIGSTOP, so
//! that admission requests are certainly in flight on it) and SIGKILLed. Every admission must still be
//! agentid's: the admitted pods created, the others denied with agentid's message, none failing
//! with "failed calling webhook".
//!
//! Two documented HAProxy configurations, one test each:
//! - e2e/haproxy/agentid-webhook-tls.cfg.example terminates TLS and replays a request whose replica died
//!   before answering (`retry-on empty-response`): no admission is lost.
//! - e2e/haproxy/agentid-webhook.cfg.example passes TLS through (TCP mode). It cannot replay a request it
//!   already forwarded, and the apiserver does not retry a webhook POST after a lost connection
//!   (client-go retries only GETs on a connection reset), so the requests in flight on the killed replica
//!   at that instant fail — and only those: the test asserts that bound and prints the number.
#![cfg(feature = "e2e")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::jiff;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use support::*;

/// The two documented HAProxy configurations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// TCP mode, TLS passes through (e2e/haproxy/agentid-webhook.cfg.example).
    Passthrough,
    /// HTTP mode, TLS terminated and re-encrypted, L7 retries (e2e/haproxy/agentid-webhook-tls.cfg.example).
    Terminating,
}

impl Mode {
    fn template(self) -> &'static str {
        match self {
            Mode::Passthrough => include_str!("../e2e/haproxy/agentid-webhook.cfg.example"),
            Mode::Terminating => include_str!("../e2e/haproxy/agentid-webhook-tls.cfg.example"),
        }
    }
}

/// How long pods are created for, and when (into that) the replica is killed.
const LOAD: Duration = Duration::from_secs(15);
const KILL_AT: Duration = Duration::from_secs(6);
/// How long the replica is frozen (SIGSTOP) before the SIGKILL: below HAProxy's `timeout check` (1 s).
const FREEZE: Duration = Duration::from_millis(300);
const CREATORS: usize = 2;
/// A request that started this soon after the SIGKILL may still have been sent on the dead connection before
/// the apiserver read its end: generous, since answers take milliseconds.
const NOTICED: Duration = Duration::from_millis(250);

/// The HAProxy binary: $AGENTID_HAPROXY (e2e/test.sh sets it), else e2e/tools/haproxy.sh finds or installs
/// it and fails loudly when it cannot.
fn haproxy_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("AGENTID_HAPROXY").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/tools/haproxy.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("runs e2e/tools/haproxy.sh");
    assert!(out.status.success(), "e2e/tools/haproxy.sh failed ({}): HAProxy is required for this test", out.status);
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
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

/// The HAProxy child process; killed (and reaped) on drop. On failure its log is printed.
struct Haproxy {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("--- haproxy.log (last lines) ---\n{}", tail.join("\n"));
        }
    }
}

impl Haproxy {
    /// Renders the documented configuration of `mode` for this frontend port and these replicas (with the
    /// certificates of `tls` for [`Mode::Terminating`]), and starts it.
    async fn start(dir: &Path, mode: Mode, port: u16, replicas: &[Replica], tls: &TlsFiles) -> Haproxy {
        let haproxy = haproxy_binary();
        let socket = dir.join("haproxy.sock");
        let server = |r: &Replica| format!("server {} 127.0.0.1:{} check port {}", r.name, r.webhook, r.probe);
        let mut substitutions = vec![
            ("/run/haproxy/agentid-webhook.sock", socket.display().to_string()),
            ("bind :8443", format!("bind 127.0.0.1:{port}")),
            ("server agentid-a 10.0.0.11:8443 check port 8080", server(&replicas[0])),
            ("server agentid-b 10.0.0.12:8443 check port 8080", server(&replicas[1])),
        ];
        if mode == Mode::Terminating {
            let pem = |p: &PathBuf| p.display().to_string();
            substitutions.extend([
                ("/etc/haproxy/agentid-serving.pem", pem(&tls.serving)),
                ("/etc/haproxy/apiserver-webhook-client-ca.crt", pem(&tls.apiserver_client_ca)),
                ("/etc/haproxy/agentid-ca.crt", pem(&tls.agentid_ca)),
                ("/etc/haproxy/agentid-client.pem", pem(&tls.client)),
            ]);
        }
        let cfg = render(mode.template(), &substitutions);
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        let check = Command::new(&haproxy).arg("-c").arg("-f").arg(&path).output().unwrap();
        assert!(check.status.success(), "haproxy -c: {}", String::from_utf8_lossy(&check.stderr));
        let log = std::fs::File::create(dir.join("haproxy.log")).unwrap();
        // -db: stay in the foreground (no daemon), so the child is HAProxy itself.
        let child = Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let mut h = Haproxy { child, dir: dir.to_path_buf(), socket };
        wait_until(Duration::from_secs(10), "haproxy listening", || {
            let exited = h.child.try_wait().unwrap();
            assert!(exited.is_none(), "haproxy exited: {exited:?}");
            async move { tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ()) }
        })
        .await;
        h
    }

    /// The runtime API's `show stat` (CSV; empty when it does not answer).
    async fn show_stat(&self) -> String {
        let socket = self.socket.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(socket)?;
            s.write_all(b"show stat\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .await
        .unwrap()
        .unwrap_or_default()
    }

    /// `(server, status)` of the backend's servers (UP, DOWN, ...).
    async fn servers(&self) -> Vec<(String, String)> {
        let csv = self.show_stat().await;
        // # pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,...
        csv.lines()
            .filter(|l| l.starts_with("agentid-webhook,") && !l.contains(",FRONTEND,") && !l.contains(",BACKEND,"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some((f.get(1)?.to_string(), f.get(17)?.to_string()))
            })
            .collect()
    }

    /// Per server: connection errors, response errors, retries and redispatches (`show stat`).
    async fn retries(&self) -> String {
        let csv = self.show_stat().await;
        csv.lines()
            .filter(|l| l.starts_with("agentid-webhook,") && !l.contains(",FRONTEND,"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some(format!(
                    "{}: {} sessions, econ {}, eresp {}, retries {}, redispatches {}",
                    f.get(1)?,
                    f.get(7)?,
                    f.get(13)?,
                    f.get(14)?,
                    f.get(15)?,
                    f.get(16)?
                ))
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Log lines of requests (connections in TCP mode) HAProxy took in before `when` (local time, as HAProxy
    /// logs) and redispatched to another server (`+N` in the retries field).
    fn redispatched_before(&self, when: jiff::civil::DateTime) -> usize {
        let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
        log.lines()
            .filter(|l| {
                let Some(date) = l.split_once(" [").and_then(|(_, r)| r.split_once(']')).map(|(d, _)| d) else {
                    return false;
                };
                let Ok(accepted) = jiff::civil::DateTime::strptime("%d/%b/%Y:%H:%M:%S%.f", date) else { return false };
                // actconn/feconn/beconn/srv_conn/retries, the retries with a + when redispatched.
                let redispatched =
                    l.split(' ').any(|w| w.split('/').count() == 5 && w.rsplit('/').next().unwrap().starts_with('+'));
                accepted <= when && redispatched
            })
            .count()
    }

    async fn status(&self, server: &str) -> Option<String> {
        self.servers().await.into_iter().find(|(s, _)| s == server).map(|(_, st)| st)
    }
}

struct Replica {
    name: String,
    child: Killed,
    webhook: u16,
    probe: u16,
    log: PathBuf,
}

fn spawn(name: &str, ns: &str, operator_ns: &str, configuration: &str, haproxy_port: u16) -> Replica {
    let (probe, webhook, broker, pdp) = (free_port(), free_port(), free_port(), free_port());
    let log = std::env::temp_dir().join(format!("agentid-lb-{ns}-{name}.log"));
    let addr = |p: u16| format!("127.0.0.1:{p}");
    let client_ca = webhook_client_ca().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["run", "--watch-namespace", ns, "--operator-namespace", operator_ns, "--instance", name])
        // Registered by URL: the apiserver calls HAProxy, never a replica directly.
        .args(["--webhook-url", &format!("https://127.0.0.1:{haproxy_port}")])
        .args(["--webhook-configuration", configuration, "--webhook-scope", &format!("agentid.dev/test-scope={ns}")])
        .arg("--webhook-client-ca-file")
        .arg(&client_ca)
        .args(["--probe-addr", &addr(probe), "--webhook-addr", &addr(webhook)])
        .args(["--broker-addr", &addr(broker), "--pdp-addr", &addr(pdp), "--scan-interval", "0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start agentid");
    Replica { name: name.into(), child: Killed(child), webhook, probe, log }
}

/// `GET path` on a replica's plain-HTTP probe port: `(status, body)`, status 0 when it does not answer.
async fn probe(port: u16, path: &str) -> (u16, String) {
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return (0, String::new()) };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).is_err() {
            return (0, String::new());
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    })
    .await
    .unwrap()
}

/// AdmissionReviews a replica answered (`agentid_admission_requests_total`, every mode and verdict).
async fn reviews(r: &Replica) -> u64 {
    let (_, body) = probe(r.probe, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("agentid_admission_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A pod agentid admits in enforce mode (its own ServiceAccount, no token, no secrets), or one it denies
/// (no ServiceAccount: `default-service-account`). No scheduler takes them, so with a node thousands of
/// them do not become work for the kubelet.
fn pod(name: &str, admit: bool) -> Pod {
    let sa = if admit { "serviceAccountName: app\n  automountServiceAccountToken: false\n  " } else { "" };
    from_yaml(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{admit: '{admit}'}}}}\nspec:\n  {sa}schedulerName: agentid-tests-unscheduled\n  containers: [{{name: app, image: registry.example.com/app:1}}]"
    ))
}

const DENIED_BY: &str = "[agentid/default-service-account]";

#[derive(Debug, Clone)]
struct Outcome {
    creator: usize,
    name: String,
    admit: bool,
    started: Duration,
    ended: Duration,
    /// `None`: what agentid should have answered happened; `Some(what)`: anything else.
    failure: Option<String>,
}

/// Creates `pod` and judges the answer.
async fn create(pods: &Api<Pod>, name: &str, admit: bool) -> Option<String> {
    match pods.create(&PostParams::default(), &pod(name, admit)).await {
        Ok(_) if admit => None,
        Ok(_) => Some("admitted a pod agentid denies".into()),
        Err(kube::Error::Api(s))
            if !admit && s.message.contains("denied the request") && s.message.contains(DENIED_BY) =>
        {
            None
        }
        Err(kube::Error::Api(s)) => Some(format!("{} ({}): {}", s.reason, s.code, s.message)),
        Err(e) => Some(format!("client error: {e}")),
    }
}

async fn remove_registration(client: &Client, name: &str) {
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone()).delete(name, &DeleteParams::default()).await;
    for policy in [format!("{name}-enforcement-label"), format!("{name}-enforcement-guard")] {
        let _ = Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
            .delete(&policy, &DeleteParams::default())
            .await;
        let _ = Api::<ValidatingAdmissionPolicy>::all(client.clone()).delete(&policy, &DeleteParams::default()).await;
    }
}

/// The certificates HAProxy needs when it terminates TLS, written to files.
struct TlsFiles {
    /// agentid's serving certificate and key (from its self-managed Secret), shown to the apiserver.
    serving: PathBuf,
    /// The CA of the apiserver's webhook client certificate (what agentid's --webhook-client-ca-file names).
    apiserver_client_ca: PathBuf,
    /// The CA of agentid's serving certificate (the Secret's ca.crt).
    agentid_ca: PathBuf,
    /// A client certificate and key signed by the CA agentid trusts: here the local control plane's own
    /// webhook client certificate (e2e/cluster.sh).
    client: PathBuf,
}

impl TlsFiles {
    fn write(dir: &Path, secret: &Secret) -> TlsFiles {
        let data = secret.data.as_ref().expect("the certificate Secret has data");
        let get = |k: &str| data[k].0.clone();
        let pki = webhook_client_ca().unwrap().parent().unwrap().to_path_buf();
        let read = |f: &str| std::fs::read(pki.join(f)).unwrap();
        let files = TlsFiles {
            serving: dir.join("agentid-serving.pem"),
            apiserver_client_ca: pki.join("webhook-client-ca.crt"),
            agentid_ca: dir.join("agentid-ca.crt"),
            client: dir.join("agentid-client.pem"),
        };
        std::fs::write(&files.serving, [get("tls.crt"), b"\n".to_vec(), get("tls.key")].concat()).unwrap();
        std::fs::write(&files.agentid_ca, get("ca.crt")).unwrap();
        std::fs::write(&files.client, [read("webhook-client.crt"), read("webhook-client.key")].concat()).unwrap();
        files
    }
}

/// What happened under load.
struct Report {
    outcomes: Vec<Outcome>,
    /// Requests (HTTP mode) or connections (TCP mode) HAProxy had taken before the SIGKILL and then sent to
    /// another replica: the requests it replayed.
    replayed: usize,
}

impl Report {
    fn failed(&self) -> Vec<&Outcome> {
        self.outcomes.iter().filter(|o| o.failure.is_some()).collect()
    }
}

/// Starts two replicas and HAProxy in `mode`, runs the load, kills the busy replica, checks what must hold
/// whatever the mode, and hands back what happened. The cluster-scoped registration is removed afterwards,
/// also on failure.
async fn kill_one_under_load(prefix: &str, mode: Mode) -> Report {
    let env = env(prefix).await;
    let operator_ns = namespace(&env.client, &format!("{prefix}-op")).await;
    let configuration = format!("agentid-{}", env.ns);
    let haproxy_port = free_port();
    let replicas = vec![
        spawn("replica-a", &env.ns, &operator_ns, &configuration, haproxy_port),
        spawn("replica-b", &env.ns, &operator_ns, &configuration, haproxy_port),
    ];
    let scenario = Scenario {
        client: env.client.clone(),
        ns: env.ns.clone(),
        operator_ns,
        configuration: configuration.clone(),
        haproxy_port,
        mode,
    };
    // In a task of its own, so the cluster-scoped registration is removed even when it fails.
    let outcome = tokio::spawn(scenario.run(replicas)).await;
    remove_registration(&env.client, &configuration).await;
    match outcome {
        Ok(report) => report,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

struct Scenario {
    client: Client,
    ns: String,
    operator_ns: String,
    configuration: String,
    haproxy_port: u16,
    mode: Mode,
}

fn dump_logs(replicas: &[&Replica]) {
    for r in replicas {
        let log = std::fs::read_to_string(&r.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        eprintln!("--- {} ({}) ---\n{}", r.name, r.log.display(), tail.join("\n"));
    }
}

impl Scenario {
    async fn run(self, mut replicas: Vec<Replica>) -> Report {
        let Scenario { client, ns, operator_ns, configuration, haproxy_port, mode } = self;
        // Both replicas ready (TLS serving, the certificate Secret shared).
        for i in 0..replicas.len() {
            let r = &mut replicas[i];
            let ready = wait_until(Duration::from_secs(60), &format!("{} ready", r.name), || {
                let exited = r.child.0.try_wait().unwrap();
                let port = r.probe;
                async move {
                    if exited.is_some() {
                        return Some(false);
                    }
                    (probe(port, "/readyz").await.0 == 200).then_some(true)
                }
            })
            .await;
            if !ready {
                dump_logs(&replicas.iter().collect::<Vec<_>>());
                panic!("{} exited before it was ready", replicas[i].name);
            }
        }
        let secret: Secret =
            Api::namespaced(client.clone(), &operator_ns).get(&format!("{configuration}-webhook-tls")).await.unwrap();
        let ca = secret.data.as_ref().unwrap()["ca.crt"].0.clone();
        let dir = std::env::temp_dir().join(format!("agentid-lb-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let tls = TlsFiles::write(&dir, &secret);
        let haproxy = Haproxy::start(&dir, mode, haproxy_port, &replicas, &tls).await;
        wait_until(Duration::from_secs(20), "HAProxy marks both replicas UP", || async {
            let servers = haproxy.servers().await;
            (servers.len() == 2 && servers.iter().all(|(_, s)| s == "UP")).then_some(())
        })
        .await;

        // The registration agentid wrote: by URL, through HAProxy, failing closed, trusting the shared CA.
        let vwc = Api::<ValidatingWebhookConfiguration>::all(client.clone()).get(&configuration).await.unwrap();
        let enforce = vwc.webhooks.unwrap().into_iter().find(|w| w.name == "enforce.workloads.agentid.dev").unwrap();
        let url = format!("https://127.0.0.1:{haproxy_port}/validate/workloads/enforce");
        assert_eq!(enforce.client_config.url.as_deref(), Some(url.as_str()));
        assert_eq!(enforce.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(enforce.client_config.ca_bundle.unwrap().0, ca, "caBundle is the shared Secret's CA");

        // Enforce in the namespace; wait until the apiserver calls agentid (its webhook configuration cache).
        let labels = serde_json::json!({"metadata": {"labels": {"agentid.dev/test-scope": ns, "agentid.dev/enforcement": "enforce"}}});
        Api::<Namespace>::all(client.clone())
            .patch(&ns, &PatchParams::default(), &Patch::Merge(&labels))
            .await
            .unwrap();
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        ensure_service_accounts(&client, &ns, &["default", "app"]).await;
        let mut n = 0;
        wait_until(Duration::from_secs(30), "the apiserver calls agentid through HAProxy", || {
            n += 1;
            let (pods, name) = (pods.clone(), format!("warmup-{n}"));
            async move { create(&pods, &name, false).await.is_none().then_some(()) }
        })
        .await;
        if let Some(f) = create(&pods, "warmup-admitted", true).await {
            panic!("warm-up pod: {f}");
        }

        // The load: CREATORS tasks creating pods back to back, two admitted for one denied.
        let t0 = Instant::now();
        let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
        let creators: Vec<_> = (0..CREATORS)
            .map(|c| {
                let (pods, outcomes) = (pods.clone(), outcomes.clone());
                tokio::spawn(async move {
                    let mut i = 0;
                    while t0.elapsed() < LOAD {
                        let admit = i % 3 != 2;
                        let name = format!("p{c}-{i}");
                        let started = t0.elapsed();
                        let failure = create(&pods, &name, admit).await;
                        let ended = t0.elapsed();
                        outcomes.lock().unwrap().push(Outcome { creator: c, name, admit, started, ended, failure });
                        i += 1;
                    }
                })
            })
            .collect();

        // Kill the replica answering most now (with HTTP/2 through TCP passthrough, the one that carries the
        // apiserver's only connection), measured over a second. It is frozen (SIGSTOP) for a moment first, so
        // that admission requests are certainly in flight on it when the SIGKILL comes — the hard case, which a
        // kill at a random instant hits only now and then (answers take a millisecond of every ten). The
        // freeze is shorter than HAProxy's check timeout, so HAProxy still counts it up when it dies.
        tokio::time::sleep(KILL_AT.saturating_sub(Duration::from_secs(1))).await;
        let before = [reviews(&replicas[0]).await, reviews(&replicas[1]).await];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = [reviews(&replicas[0]).await, reviews(&replicas[1]).await];
        let busy = if after[0] - before[0] >= after[1] - before[1] { 0 } else { 1 };
        let mut victim = replicas.remove(busy);
        let survivor = replicas.remove(0);
        eprintln!(
            "[{mode:?}] reviews answered in the second before the kill: {} {}, {} {}",
            victim.name,
            after[busy] - before[busy],
            survivor.name,
            after[1 - busy] - before[1 - busy]
        );
        let survivor_before = reviews(&survivor).await;
        let frozen_at = t0.elapsed();
        let stop = Command::new("kill").args(["-STOP", &victim.child.0.id().to_string()]).status().unwrap();
        assert!(stop.success(), "kill -STOP: {stop}");
        tokio::time::sleep(FREEZE).await;
        let killed_at = t0.elapsed();
        let kill_clock = jiff::Zoned::now().datetime();
        victim.child.0.kill().unwrap();
        victim.child.0.wait().unwrap();
        let marked_down = wait_until(Duration::from_secs(10), "HAProxy marks the killed replica DOWN", || async {
            haproxy.status(&victim.name).await.filter(|s| s.starts_with("DOWN")).map(|_| t0.elapsed() - killed_at)
        })
        .await;
        eprintln!(
            "[{mode:?}] froze {} at {frozen_at:?}, SIGKILLed it at {killed_at:?}; HAProxy marked it DOWN {marked_down:?} later",
            victim.name
        );

        for c in creators {
            c.await.unwrap();
        }
        let outcomes = outcomes.lock().unwrap().clone();
        let survivor_after = reviews(&survivor).await;
        eprintln!("[{mode:?}] HAProxy: {}", haproxy.retries().await);
        let replayed = haproxy.redispatched_before(kill_clock);
        let report = Report { outcomes, replayed };

        let count = |f: &dyn Fn(&Outcome) -> bool| report.outcomes.iter().filter(|o| f(o)).count();
        let admitted = count(&|o| o.admit && o.failure.is_none());
        let denied = count(&|o| !o.admit && o.failure.is_none());
        let after_kill = |o: &Outcome| o.started > killed_at;
        let admitted_after = count(&|o| o.admit && o.failure.is_none() && after_kill(o));
        let denied_after = count(&|o| !o.admit && o.failure.is_none() && after_kill(o));
        let in_flight = count(&|o| o.started <= killed_at && o.ended >= killed_at);
        let failed = report.failed();
        let calling =
            failed.iter().filter(|o| o.failure.as_deref().unwrap().contains("failed calling webhook")).count();
        eprintln!(
            "[{mode:?}] {} creates in {LOAD:?} by {CREATORS} creators: {admitted} admitted, {denied} denied by agentid, \
             {} failed ({calling} \"failed calling webhook\"); {in_flight} in flight at the kill; after it {admitted_after} \
             admitted and {denied_after} denied, {} answered {} reviews",
            report.outcomes.len(),
            failed.len(),
            survivor.name,
            survivor_after - survivor_before,
        );
        for o in &failed {
            eprintln!(
                "[{mode:?}]   FAILED {} (creator {}, admit={}) {:?}..{:?}: {}",
                o.name,
                o.creator,
                o.admit,
                o.started,
                o.ended,
                o.failure.as_deref().unwrap()
            );
        }
        if !failed.is_empty() {
            dump_logs(&[&victim, &survivor]);
        }

        // Whatever the mode: nothing agentid would have refused got in, every admitted pod exists, every
        // answer after the kill came from the survivor, and none failed once the kill was noticed.
        let listed = pods.list(&ListParams::default()).await.unwrap().items;
        let label = |p: &Pod| p.metadata.labels.as_ref().and_then(|l| l.get("admit").cloned()).unwrap_or_default();
        let good_created = listed.iter().filter(|p| label(p) == "true").count();
        let bad_created = listed.iter().filter(|p| label(p) == "false").count();
        assert_eq!(bad_created, 0, "a pod agentid denies was created");
        assert!(
            failed.iter().all(|o| o.failure.as_deref().unwrap().contains("failed calling webhook")),
            "only lost webhook calls may fail"
        );
        let late: Vec<&&Outcome> = failed.iter().filter(|o| o.started > killed_at + NOTICED).collect();
        assert!(late.is_empty(), "admissions failed after the kill was noticed: {late:?}");
        assert_eq!(good_created, admitted + 1, "every admitted pod (and the warm-up one) exists");
        assert!(admitted_after > 0 && denied_after > 0, "the survivor admitted and denied after the kill");
        assert!(survivor_after > survivor_before, "the survivor answered after the kill");
        assert!(admitted + denied > 100, "the load was too thin to mean anything: {admitted} + {denied}");
        drop(haproxy);
        // The certificates and keys HAProxy was given go; on failure the directory stays, with its log.
        let _ = std::fs::remove_dir_all(&dir);
        report
    }
}

/// HAProxy in front, TLS terminated, L7 retries: a replica killed with admission requests in flight on it
/// loses none of them — HAProxy replays them on the survivor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_behind_haproxy_lose_no_admission_when_one_is_killed() {
    let report = kill_one_under_load("lb-tls", Mode::Terminating).await;
    let failed = report.failed();
    eprintln!(
        "[Terminating] lost {} of {} admissions; HAProxy replayed {} requests it had sent to the killed replica",
        failed.len(),
        report.outcomes.len(),
        report.replayed
    );
    assert!(failed.is_empty(), "{} of {} admissions were lost (see above)", failed.len(), report.outcomes.len());
    assert!(report.replayed > 0, "the kill found no request in flight: nothing was shown");
}

/// HAProxy in TCP mode (TLS passes through) cannot do the same: the requests in flight on the killed
/// replica are lost (the apiserver does not retry a webhook POST after a lost connection) — and only
/// those: at most one per creator, none started after the kill was noticed (checked in
/// `kill_one_under_load`). Should this ever start losing none, the comment in
/// e2e/haproxy/agentid-webhook.cfg.example is wrong: the test fails so that it gets updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_passthrough_loses_only_the_admissions_in_flight_on_the_killed_replica() {
    let report = kill_one_under_load("lb-tcp", Mode::Passthrough).await;
    let failed = report.failed();
    eprintln!(
        "[Passthrough] lost {} of {} admissions, all in flight on the killed replica",
        failed.len(),
        report.outcomes.len()
    );
    assert!(failed.len() <= CREATORS, "more lost than can have been in flight: {failed:?}");
    assert!(!failed.is_empty(), "TCP passthrough lost nothing in flight: update agentid-webhook.cfg.example");
}
