//! Faults, each against real `agentid run` processes on the real kube-apiserver:
//!
//! - the leader is SIGKILLed while 1,000 agents, grants and tasks converge, and some of them are deleted
//!   while no replica runs: a new replica converges what is left, and no child object (ServiceAccount,
//!   Role, RoleBinding, anchor Secret) outlives its owner or exists twice;
//! - the webhook's self-managed certificate Secret is deleted, then corrupted: it is written again, the
//!   webhook configuration's caBundle follows it, and admission works again (the outage is measured);
//! - the apiserver becomes unreachable (a TCP proxy between the operator and the apiserver is cut): the
//!   replica turns not ready without exiting, and ready again once the apiserver is back, with its
//!   watches resumed.
#![cfg(feature = "e2e")]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use support::*;

use agentid::api::{AgentIdentity, AgentTask, GrantPhase, TaskPhase, ToolGrant};
use agentid::core::conditions;

const TOOLS: &str = "https://tools.example.com";

// ------------------------------------------------------------------------------------------- replicas

/// One `agentid run` process, killed (SIGKILL) and reaped when dropped.
struct Replica {
    child: Mutex<Killed>,
    probe: u16,
    log: std::path::PathBuf,
}

impl Replica {
    /// `agentid run` with `args`, probes on a port of its own, stderr to a log file, extra `env`.
    fn spawn(test: &str, name: &str, args: &[String], env: &[(&str, &str)]) -> Replica {
        let probe = free_port();
        let log = std::env::temp_dir().join(format!("agentid-faults-{test}-{name}.log"));
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentid"));
        cmd.arg("run").args(args).args(["--instance", name, "--probe-addr", &format!("127.0.0.1:{probe}")]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.stdout(Stdio::null()).stderr(stderr).spawn().expect("start agentid");
        Replica { child: Mutex::new(Killed(child)), probe, log }
    }

    /// The HTTP status of `GET path` on the probe port (`None`: no answer within 2 s).
    async fn probe_status(&self, path: &str) -> Option<u16> {
        Some(http_get(self.probe, path).await?.0)
    }

    async fn metrics(&self) -> String {
        http_get(self.probe, "/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }

    /// `None` while the process runs; its exit status once it has exited.
    fn exited(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().0.try_wait().unwrap()
    }

    /// SIGKILL (no graceful hand-over, no Lease release) and reap.
    fn sigkill(&self) {
        let mut child = self.child.lock().unwrap();
        child.0.kill().unwrap();
        child.0.wait().unwrap();
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("{} (last lines):\n{}", self.log.display(), lines[lines.len().saturating_sub(15)..].join("\n"))
    }
}

/// `GET path` on 127.0.0.1:`port` over plain HTTP: `(status, body)`, `None` without an answer in 2 s.
async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let status = out.split(' ').nth(1)?.parse().ok()?;
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange).await.ok()?
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// The sum of `agentid_reconciles_total` over the kinds in a metrics text.
fn reconciles(metrics: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("agentid_reconciles_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Polls `check` every `every` until it returns `Ok`, or panics after `timeout` with the last `Err`.
async fn settle<T, F, Fut>(timeout: Duration, every: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(e) => assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}: {e}"),
        }
        tokio::time::sleep(every).await;
    }
}

// ------------------------------------------------------------------ 1. SIGKILL while 1,000 converge

/// Objects of each kind (agents, grants, tasks: one grant and one task per agent).
const OBJECTS: usize = 1000;
/// Creates in flight.
const IN_FLIGHT: usize = 32;

fn agent_name(i: usize) -> String {
    format!("agent-{i:04}")
}
fn grant_name(i: usize) -> String {
    format!("grant-{i:04}")
}
fn task_name(i: usize) -> String {
    format!("task-{i:04}")
}

/// What is deleted while no replica runs: every tenth index; of those, a third loses its agent with
/// the agent's grant and task, a third only its grant, a third only its task (no grant or task is
/// left naming a deleted agent, so everything left should end Ready/Active).
fn deleted(i: usize) -> (bool, bool, bool) {
    if !i.is_multiple_of(10) {
        return (false, false, false);
    }
    match (i / 10) % 3 {
        0 => (true, true, true),
        1 => (false, true, false),
        _ => (false, false, true),
    }
}

/// Creates `obj`, retrying transient failures; an object that already exists (an earlier attempt got
/// through) counts as created.
async fn create<K>(api: &Api<K>, obj: &K)
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut attempt = 0;
    loop {
        match api.create(&PostParams::default(), obj).await {
            Ok(_) => return,
            // Already there: created by an earlier attempt whose answer was lost, or a name used twice.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                assert!(attempt > 0, "{} exists already", obj.meta().name.as_deref().unwrap_or_default());
                return;
            }
            Err(e) if attempt < 5 => {
                attempt += 1;
                eprintln!("create {} failed ({e}); retrying", obj.meta().name.as_deref().unwrap_or_default());
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
            Err(e) => panic!("create {}: {e}", obj.meta().name.as_deref().unwrap_or_default()),
        }
    }
}

async fn delete<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(e) => panic!("delete {name}: {e}"),
    }
}

fn agent(i: usize) -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": agent_name(i)},
        "spec": {"owner": "team-faults", "audiences": [TOOLS]},
    }))
    .unwrap()
}

fn grant(i: usize) -> ToolGrant {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": {"name": grant_name(i)},
        "spec": {"agentRef": {"name": agent_name(i)},
                 "kubernetesRules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]},
    }))
    .unwrap()
}

fn task(i: usize) -> AgentTask {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentTask",
        "metadata": {"name": task_name(i)},
        "spec": {"agentRef": {"name": agent_name(i)}, "purpose": "faults", "audiences": [TOOLS], "ttl": "1h"},
    }))
    .unwrap()
}

/// The names of a list's items, and the names of those not `done`.
fn progress<K: Resource>(items: &[K], done: impl Fn(&K) -> bool) -> (BTreeSet<String>, Vec<String>) {
    let names = items.iter().map(|o| o.meta().name.clone().unwrap_or_default()).collect();
    let pending = items.iter().filter(|o| !done(o)).map(|o| o.meta().name.clone().unwrap_or_default()).collect();
    (names, pending)
}

/// Whether what is left is converged: exactly the expected names exist (deleted ones are gone, their
/// finalizers done), every agent is Ready and every grant and task Active.
fn converged(
    kind: &str,
    names: &BTreeSet<String>,
    pending: &[String],
    expected: &BTreeSet<String>,
) -> Result<(), String> {
    let missing: Vec<_> = expected.difference(names).take(3).collect();
    let extra: Vec<_> = names.difference(expected).take(3).collect();
    if !missing.is_empty() || !extra.is_empty() || !pending.is_empty() {
        return Err(format!(
            "{kind}s: {} of {} listed, missing {missing:?}, still there {extra:?} ({} left), not converged {} (e.g. {:?})",
            names.len(),
            expected.len(),
            names.difference(expected).count(),
            pending.len(),
            &pending[..pending.len().min(3)],
        ));
    }
    Ok(())
}

/// What a sweep of the child objects agentid created found, by kind.
#[derive(Default, Debug)]
struct Sweep {
    /// `(kind, child name)` of children that name no live owner (or several).
    orphans: Vec<(String, String)>,
    /// `(kind, owner name, count)` for owners with more than one child of a kind.
    duplicates: Vec<(String, String, usize)>,
    /// `(kind, owner name)` for live owners without their child.
    missing: Vec<(String, String)>,
    /// `(kind, child name)` whose name is not the one derived from its owner's.
    misnamed: Vec<(String, String)>,
    /// `(kind, child name)` whose content is not what its owner asks for.
    wrong: Vec<(String, String)>,
    counts: BTreeMap<String, usize>,
}

impl Sweep {
    /// Checks the children `children` of `kind` against `owners` (uid → owner name): each names exactly one
    /// live owner, has the name `expected_name(owner)`, and every owner has exactly one.
    fn check(
        &mut self,
        kind: &str,
        children: &[kube::api::ObjectMeta],
        owners: &BTreeMap<String, String>,
        expected_name: impl Fn(&str) -> String,
    ) {
        let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
        for child in children {
            let name = child.name.clone().unwrap_or_default();
            let live: Vec<&String> =
                child.owner_references.iter().flatten().filter_map(|o| owners.get(&o.uid)).collect();
            match live.as_slice() {
                [owner] => {
                    *per_owner.entry(owner.as_str()).or_default() += 1;
                    if name != expected_name(owner) {
                        self.misnamed.push((kind.into(), name));
                    }
                }
                _ => self.orphans.push((kind.into(), name)),
            }
        }
        for (owner, n) in &per_owner {
            if *n > 1 {
                self.duplicates.push((kind.into(), owner.to_string(), *n));
            }
        }
        for owner in owners.values() {
            if !per_owner.contains_key(owner.as_str()) {
                self.missing.push((kind.into(), owner.clone()));
            }
        }
        self.counts.insert(kind.into(), children.len());
    }
}

/// The sweep itself finds what it is there to find (no cluster needed).
#[test]
fn the_sweep_finds_orphans_duplicates_and_missing_children() {
    let child = |name: &str, owner_uid: Option<&str>| kube::api::ObjectMeta {
        name: Some(name.into()),
        owner_references: owner_uid.map(|uid| {
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
                uid: uid.into(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    let owners = BTreeMap::from([("u1".to_string(), "a".to_string()), ("u2".to_string(), "b".to_string())]);
    let children = [
        child("agent-a", Some("u1")),
        child("agent-a2", Some("u1")),
        child("agent-gone", Some("u-gone")),
        child("agent-none", None),
    ];
    let mut sweep = Sweep::default();
    sweep.check("ServiceAccount", &children, &owners, |a| format!("agent-{a}"));
    let names = |v: &[(String, String)]| v.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>();
    assert_eq!(names(&sweep.orphans), ["agent-gone", "agent-none"]);
    assert_eq!(sweep.duplicates, [("ServiceAccount".to_string(), "a".to_string(), 2)]);
    assert_eq!(names(&sweep.missing), ["b"]);
    assert_eq!(names(&sweep.misnamed), ["agent-a2"]);
    assert_eq!(sweep.counts["ServiceAccount"], 4);
}

fn metas<K: Resource>(items: &[K]) -> Vec<kube::api::ObjectMeta> {
    items.iter().map(|o| o.meta().clone()).collect()
}

fn uids<K: Resource>(items: &[K]) -> BTreeMap<String, String> {
    items
        .iter()
        .map(|o| (o.meta().uid.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default()))
        .collect()
}

/// One replica leads and reconciles while 1,000 agents, 1,000 grants and 1,000 tasks are created; it is
/// SIGKILLed halfway, about a tenth of the objects are deleted while no replica runs (those that had
/// finalizers wait for one), then a new replica starts: it takes the Lease once the dead one's runs out,
/// converges everything left, and finishes the deletions. No child object may be left without its owner,
/// and none may exist twice. (No kube-controller-manager here, so no garbage collector: only agentid's
/// finalizers and deletes remove children.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_while_1000_objects_converge_leaves_no_orphans() {
    let env = env("faults-kill").await;
    let ns = env.ns.clone();
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &ns);
    let grants: Api<ToolGrant> = Api::namespaced(env.client.clone(), &ns);
    let tasks: Api<AgentTask> = Api::namespaced(env.client.clone(), &ns);
    let args =
        strings(&["--no-webhook", "--allow-unchecked-grants", "--watch-namespace", &ns, "--operator-namespace", &ns]);
    let started = Instant::now();
    let first = Replica::spawn(&ns, "replica-a", &args, &[]);

    // Create everything, 32 in flight, in index order (agent, grant, task of index 0, then of 1, ...).
    let created = Arc::new(AtomicUsize::new(0));
    let creating = tokio::spawn({
        let (agents, grants, tasks, created) = (agents.clone(), grants.clone(), tasks.clone(), created.clone());
        async move {
            stream::iter(0..OBJECTS * 3)
                .map(|k| {
                    let (agents, grants, tasks, created) = (&agents, &grants, &tasks, &created);
                    async move {
                        let i = k / 3;
                        match k % 3 {
                            0 => create(agents, &agent(i)).await,
                            1 => create(grants, &grant(i)).await,
                            _ => create(tasks, &task(i)).await,
                        }
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .buffer_unordered(IN_FLIGHT)
                .collect::<Vec<()>>()
                .await;
        }
    });

    // Kill the leader while it is busy: half the objects created, and it has reconciled a few hundred.
    settle(Duration::from_secs(120), Duration::from_millis(200), "the first replica reconciling", || async {
        if let Some(status) = first.exited() {
            return Err(format!("the first replica exited: {status}; {}", first.log_tail()));
        }
        let (n, r) = (created.load(Ordering::Relaxed), reconciles(&first.metrics().await));
        if n >= OBJECTS * 3 / 2 && r >= 300 { Ok(()) } else { Err(format!("{n} created, {r} reconciled")) }
    })
    .await;
    let reconciled_by_first = reconciles(&first.metrics().await);
    let created_at_kill = created.load(Ordering::Relaxed);
    first.sigkill();
    let killed_at = Instant::now();
    creating.await.unwrap();
    let created_in = started.elapsed();

    // Delete while no replica runs. Objects the first replica put its finalizer on stay, being deleted.
    let mut gone = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for i in 0..OBJECTS {
        let (a, g, t) = deleted(i);
        if a {
            gone.0.insert(agent_name(i));
        }
        if g {
            gone.1.insert(grant_name(i));
        }
        if t {
            gone.2.insert(task_name(i));
        }
    }
    let deletes: Vec<(usize, String)> = gone
        .0
        .iter()
        .map(|n| (0, n.clone()))
        .chain(gone.1.iter().map(|n| (1, n.clone())))
        .chain(gone.2.iter().map(|n| (2, n.clone())))
        .collect();
    stream::iter(deletes)
        .map(|(kind, name)| {
            let (agents, grants, tasks) = (&agents, &grants, &tasks);
            async move {
                match kind {
                    0 => delete(agents, &name).await,
                    1 => delete(grants, &name).await,
                    _ => delete(tasks, &name).await,
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    let lp = ListParams::default();
    let held = agents.list(&lp).await.unwrap().items.iter().filter(|a| a.metadata.deletion_timestamp.is_some()).count()
        + grants.list(&lp).await.unwrap().items.iter().filter(|g| g.metadata.deletion_timestamp.is_some()).count()
        + tasks.list(&lp).await.unwrap().items.iter().filter(|t| t.metadata.deletion_timestamp.is_some()).count();
    let ready_at_restart = agents
        .list(&lp)
        .await
        .unwrap()
        .items
        .iter()
        .filter(|a| a.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, "Ready")))
        .count();
    eprintln!(
        "killed the leader after {reconciled_by_first} reconciles with {created_at_kill} of {} objects created; \
         deleted {} agents, {} grants, {} tasks while no replica ran ({held} of them held by finalizers); \
         {ready_at_restart} agents Ready at the restart",
        OBJECTS * 3,
        gone.0.len(),
        gone.1.len(),
        gone.2.len()
    );

    let expected = |gone: &BTreeSet<String>, name: fn(usize) -> String| -> BTreeSet<String> {
        (0..OBJECTS).map(name).filter(|n| !gone.contains(n)).collect()
    };
    let (want_agents, want_grants, want_tasks) =
        (expected(&gone.0, agent_name), expected(&gone.1, grant_name), expected(&gone.2, task_name));

    let restarted_at = Instant::now();
    let second = Replica::spawn(&ns, "replica-b", &args, &[]);
    settle(Duration::from_secs(240), Duration::from_secs(1), "everything left converged", || async {
        if let Some(status) = second.exited() {
            return Err(format!("the new replica exited: {status}; {}", second.log_tail()));
        }
        let a = agents.list(&lp).await.map_err(|e| e.to_string())?.items;
        let (names, pending) =
            progress(&a, |a| a.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, "Ready")));
        converged("agent", &names, &pending, &want_agents)?;
        let g = grants.list(&lp).await.map_err(|e| e.to_string())?.items;
        let (names, pending) = progress(&g, |g| g.status.as_ref().and_then(|s| s.phase) == Some(GrantPhase::Active));
        converged("grant", &names, &pending, &want_grants)?;
        let t = tasks.list(&lp).await.map_err(|e| e.to_string())?.items;
        let (names, pending) = progress(&t, |t| t.status.as_ref().and_then(|s| s.phase) == Some(TaskPhase::Active));
        converged("task", &names, &pending, &want_tasks)
    })
    .await;
    let converge_after_restart = restarted_at.elapsed();
    let converge_after_kill = killed_at.elapsed();
    assert!(second.exited().is_none(), "the new replica is still running");

    // Sweep: every child agentid created, by label, against the owners that exist now.
    let owned = ListParams::default().labels("app.kubernetes.io/managed-by=agentid");
    let live_agents = uids(&agents.list(&lp).await.unwrap().items);
    let live_grants = grants.list(&lp).await.unwrap().items;
    let agent_of: BTreeMap<String, String> =
        live_grants.iter().map(|g| (g.name_any(), g.spec.agent_ref.name.clone())).collect();
    let live_grants = uids(&live_grants);
    let live_tasks = uids(&tasks.list(&lp).await.unwrap().items);
    let sas = Api::<ServiceAccount>::namespaced(env.client.clone(), &ns).list(&owned).await.unwrap().items;
    let roles = Api::<Role>::namespaced(env.client.clone(), &ns).list(&owned).await.unwrap().items;
    let bindings = Api::<RoleBinding>::namespaced(env.client.clone(), &ns).list(&owned).await.unwrap().items;
    // Anchors by name as well as by label, so an anchor that lost its label is still found.
    let anchors: Vec<Secret> = Api::<Secret>::namespaced(env.client.clone(), &ns)
        .list(&lp)
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|s| s.name_any().starts_with("agentid-task-") || s.type_.as_deref() == Some("agentid.dev/task-anchor"))
        .collect();
    let mut sweep = Sweep::default();
    // Each grant's RBAC is exactly what it asks for: its rule, bound to its agent's ServiceAccount only.
    let rule = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    for r in &roles {
        if serde_json::to_value(&r.rules).unwrap() != rule {
            sweep.wrong.push(("Role".into(), r.name_any()));
        }
    }
    for b in &bindings {
        let grant = b.name_any().trim_start_matches("agentid-grant-").to_string();
        let subject = agent_of
            .get(&grant)
            .map(|a| json!([{"kind": "ServiceAccount", "name": format!("agent-{a}"), "namespace": ns}]));
        let role_ref = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": b.name_any()});
        if Some(serde_json::to_value(&b.subjects).unwrap()) != subject
            || serde_json::to_value(&b.role_ref).unwrap() != role_ref
        {
            sweep.wrong.push(("RoleBinding".into(), b.name_any()));
        }
    }
    sweep.check("ServiceAccount", &metas(&sas), &live_agents, |a| format!("agent-{a}"));
    sweep.check("Role", &metas(&roles), &live_grants, |g| format!("agentid-grant-{g}"));
    sweep.check("RoleBinding", &metas(&bindings), &live_grants, |g| format!("agentid-grant-{g}"));
    sweep.check("anchor Secret", &metas(&anchors), &live_tasks, |t| format!("agentid-task-{t}"));
    let total = started.elapsed();
    eprintln!(
        "created {} objects in {created_in:?}; converged {converge_after_restart:?} after the restart \
         ({converge_after_kill:?} after the kill; Lease 10 s); total {total:?}; children {:?}; orphans {}, \
         duplicates {}",
        OBJECTS * 3,
        sweep.counts,
        sweep.orphans.len(),
        sweep.duplicates.len(),
    );
    assert!(sweep.orphans.is_empty(), "children without a live owner: {:?}", &sweep.orphans);
    assert!(sweep.duplicates.is_empty(), "owners with more than one child of a kind: {:?}", &sweep.duplicates);
    assert!(sweep.missing.is_empty(), "live owners without their child: {:?}", &sweep.missing);
    assert!(sweep.misnamed.is_empty(), "children with another name than derived: {:?}", &sweep.misnamed);
    assert!(sweep.wrong.is_empty(), "RBAC other than the grants ask for: {:?}", &sweep.wrong);
    assert_eq!(sweep.counts["ServiceAccount"], want_agents.len());
    assert_eq!(sweep.counts["Role"], want_grants.len());
    assert_eq!(sweep.counts["RoleBinding"], want_grants.len());
    assert_eq!(sweep.counts["anchor Secret"], want_tasks.len(), "one anchor per Active task");
}

// ------------------------------------------------- 2. the webhook certificate Secret deleted, corrupted

/// What admission answers to a dry-run create of a Pod without a ServiceAccount in an enforced namespace.
#[derive(Debug, Clone, PartialEq)]
enum Admission {
    /// Denied by agentid's webhook (`[agentid/default-service-account]`): admission works.
    Denied,
    /// Anything else: the webhook could not be called (TLS, caBundle), or another error.
    Failed(String),
    /// Admitted: the webhook was not asked (it must be, failurePolicy Fail).
    Admitted,
}

async fn admission(pods: &Api<Pod>) -> Admission {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "faults-probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/app:1"}]},
    }))
    .unwrap();
    match pods.create(&PostParams { dry_run: true, ..Default::default() }, &pod).await {
        Ok(_) => Admission::Admitted,
        Err(kube::Error::Api(s))
            if s.message.contains("denied the request") && s.message.contains("[agentid/default-service-account]") =>
        {
            Admission::Denied
        }
        Err(e) => Admission::Failed(e.to_string()),
    }
}

/// Asks admission every 200 ms in the background, recording every answer, until stopped.
struct Prober {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, Admission)>>,
}

impl Prober {
    fn start(pods: Api<Pod>) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut answers = Vec::new();
                while !stop.load(Ordering::Acquire) {
                    answers.push((Instant::now(), admission(&pods).await));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                answers
            }
        });
        Prober { stop, task }
    }

    /// Stops and sums up: `(answers, failed, outage)`, the outage from the first failed answer to the first
    /// working one after the last failed one (zero without failures).
    async fn stop(self) -> (usize, Vec<String>, Duration) {
        self.stop.store(true, Ordering::Release);
        let answers = self.task.await.unwrap();
        let failed: Vec<String> =
            answers.iter().filter(|(_, a)| *a != Admission::Denied).map(|(_, a)| format!("{a:?}")).collect();
        let first = answers.iter().position(|(_, a)| *a != Admission::Denied);
        let last = answers.iter().rposition(|(_, a)| *a != Admission::Denied);
        let outage = match (first, last) {
            (Some(f), Some(l)) => {
                let end = answers.get(l + 1).map(|(t, _)| *t).unwrap_or(answers[l].0);
                end.duration_since(answers[f].0)
            }
            _ => Duration::ZERO,
        };
        (answers.len(), failed, outage)
    }
}

/// The leaf certificate served at `addr`, verified against `ca_pem` for the name `localhost`.
async fn served_leaf(addr: SocketAddr, ca_pem: &[u8]) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(c.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().ok_or("no certificate")?[0].to_vec())
}

/// The DER of the first certificate in `pem`.
fn leaf_der(pem: &[u8]) -> Option<Vec<u8>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem).ok().map(|c| c.to_vec())
}

fn secret_field(s: &Secret, key: &str) -> Vec<u8> {
    s.data.as_ref().and_then(|d| d.get(key)).map(|b| b.0.clone()).unwrap_or_default()
}

/// Every caBundle of the webhook configuration `name`, when they are all the same.
async fn ca_bundle(client: &Client, name: &str) -> Option<Vec<u8>> {
    let vwc = Api::<ValidatingWebhookConfiguration>::all(client.clone()).get_opt(name).await.ok()??;
    let bundles: BTreeSet<Vec<u8>> = vwc
        .webhooks?
        .iter()
        .map(|w| w.client_config.ca_bundle.as_ref().map(|b| b.0.clone()).unwrap_or_default())
        .collect();
    (bundles.len() == 1).then(|| bundles.into_iter().next().unwrap_or_default())
}

/// When each part of a recovery was first seen, since the fault.
#[derive(Default, Debug)]
struct Recovery {
    secret: Option<Duration>,
    ca_bundle: Option<Duration>,
    served: Option<Duration>,
    admission: Option<Duration>,
}

/// Waits (at most `RECOVERY`) until the certificate Secret is usable again and differs from `broken` (a
/// new object, or new content), the webhook configuration's caBundle is its CA, the replica serves its
/// certificate and admission works; prints when each came, and the failed admission probes meanwhile.
async fn recovered(fault: &str, client: &Client, cfg: &CertFixture, broken: &Secret, at: Instant, prober: Prober) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &cfg.operator_ns);
    let seen = Mutex::new(Recovery::default());
    let mark = |f: fn(&mut Recovery) -> &mut Option<Duration>| {
        let mut r = seen.lock().unwrap();
        f(&mut r).get_or_insert(at.elapsed());
    };
    let replica = &cfg.replica;
    settle(RECOVERY, Duration::from_millis(100), &format!("recovery from the {fault} Secret"), || async {
        if let Some(status) = replica.exited() {
            return Err(format!("the replica exited: {status}; {}", replica.log_tail()));
        }
        let s = secrets.get_opt(&cfg.secret).await.map_err(|e| e.to_string())?.ok_or("no Secret yet")?;
        let tls_crt = secret_field(&s, "tls.crt");
        if s.metadata.uid == broken.metadata.uid && tls_crt == secret_field(broken, "tls.crt") {
            return Err("the Secret is as it was".into());
        }
        let leaf = leaf_der(&tls_crt).ok_or("the Secret's tls.crt is no certificate")?;
        mark(|r| &mut r.secret);
        let ca = secret_field(&s, "ca.crt");
        if ca_bundle(client, &cfg.configuration).await.as_ref() != Some(&ca) {
            return Err("the caBundle is not the Secret's CA".into());
        }
        mark(|r| &mut r.ca_bundle);
        if served_leaf(cfg.broker, &ca).await? != leaf {
            return Err("the replica does not serve the Secret's certificate yet".into());
        }
        mark(|r| &mut r.served);
        match admission(&cfg.pods).await {
            Admission::Denied => {}
            other => return Err(format!("admission: {other:?}")),
        }
        mark(|r| &mut r.admission);
        Ok(())
    })
    .await;
    let (answers, failed, outage) = prober.stop().await;
    let r = seen.into_inner().unwrap();
    let ca_changed = secret_field(&secrets.get(&cfg.secret).await.unwrap(), "ca.crt") != secret_field(broken, "ca.crt");
    eprintln!(
        "{fault} Secret: usable Secret after {:?}, caBundle after {:?}, served after {:?}, admission works after {:?} \
         (CA changed: {ca_changed}); {} of {answers} admission probes failed meanwhile, outage {outage:?}{}",
        r.secret,
        r.ca_bundle,
        r.served,
        r.admission,
        failed.len(),
        failed.first().map(|f| format!("; first failure: {f}")).unwrap_or_default(),
    );
}

/// Recovery bound: the replicas look at the Secret every 10 s; writing it, updating the webhook
/// configuration and the apiserver taking that up add under 1 s (measured: admission works again 7.9–9.6 s
/// after the fault, on 2 busy cores).
const RECOVERY: Duration = Duration::from_secs(30);

struct CertFixture {
    replica: Replica,
    operator_ns: String,
    secret: String,
    configuration: String,
    broker: SocketAddr,
    pods: Api<Pod>,
}

/// A replica that manages its own certificate and registers its webhook by URL, scoped to this test's
/// namespace; the Secret is deleted (a new one must be written, under a new CA, and the caBundle follow),
/// then garbage is written into its `tls.crt` (a good certificate must be written again). Admission is
/// probed all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_certificate_secret_deleted_or_corrupted_is_recreated() {
    let env = env("faults-cert").await;
    let client = env.client.clone();
    let configuration = format!("faults-{}", env.ns);
    let outcome = tokio::spawn(certificate_faults(env, configuration.clone())).await;
    // The cluster-scoped objects the replica registered go, also when the test failed.
    let _ = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .delete(&configuration, &DeleteParams::default())
        .await;
    let policy = format!("{configuration}-enforcement-label");
    let _ =
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()).delete(&policy, &DeleteParams::default()).await;
    let _ = Api::<ValidatingAdmissionPolicy>::all(client.clone()).delete(&policy, &DeleteParams::default()).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn certificate_faults(env: TestEnv, configuration: String) {
    let operator_ns = namespace(&env.client, "faults-cert-op").await;
    let scope = env.ns.clone();
    let labels =
        json!({"metadata": {"labels": {"agentid.dev/test-scope": scope, "agentid.dev/enforcement": "enforce"}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(env.client.clone())
        .patch(&env.ns, &PatchParams::default(), &Patch::Merge(&labels))
        .await
        .unwrap();
    let (webhook, broker, pdp) = (free_port(), free_port(), free_port());
    let client_ca = webhook_client_ca().unwrap();
    let args = strings(&[
        "--no-leader-elect",
        "--watch-namespace",
        &env.ns,
        "--operator-namespace",
        &operator_ns,
        "--webhook-addr",
        &addr(webhook),
        "--webhook-url",
        &format!("https://{}", addr(webhook)),
        "--webhook-configuration",
        &configuration,
        "--webhook-scope",
        &format!("agentid.dev/test-scope={scope}"),
        "--webhook-client-ca-file",
        client_ca.to_str().unwrap(),
        "--no-enforcement-guard",
        "--broker-addr",
        &addr(broker),
        "--pdp-addr",
        &addr(pdp),
    ]);
    let replica = Replica::spawn(&env.ns, "replica", &args, &[]);
    let cfg = CertFixture {
        replica,
        secret: format!("{configuration}-webhook-tls"),
        configuration,
        operator_ns,
        broker: addr(broker).parse().unwrap(),
        pods: Api::namespaced(env.client.clone(), &env.ns),
    };
    settle(Duration::from_secs(60), Duration::from_millis(200), "the replica ready", || async {
        if let Some(status) = cfg.replica.exited() {
            return Err(format!("the replica exited: {status}; {}", cfg.replica.log_tail()));
        }
        match cfg.replica.probe_status("/readyz").await {
            Some(200) => Ok(()),
            other => Err(format!("/readyz {other:?}")),
        }
    })
    .await;
    settle(Duration::from_secs(30), Duration::from_millis(200), "admission by the webhook", || async {
        match admission(&cfg.pods).await {
            Admission::Denied => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &cfg.operator_ns);

    // 1. Deleted.
    let original = secrets.get(&cfg.secret).await.unwrap();
    let prober = Prober::start(cfg.pods.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = Instant::now();
    secrets.delete(&cfg.secret, &DeleteParams::default()).await.unwrap();
    recovered("deleted", &env.client, &cfg, &original, at, prober).await;

    // 2. Corrupted: garbage instead of the serving certificate.
    let intact = secrets.get(&cfg.secret).await.unwrap();
    let garbage = ByteString(b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n".to_vec());
    let prober = Prober::start(cfg.pods.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at = Instant::now();
    let patch = json!({"data": {"tls.crt": garbage}});
    secrets.patch(&cfg.secret, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    let corrupted = secrets.get(&cfg.secret).await.unwrap();
    assert_eq!(secret_field(&corrupted, "tls.crt"), garbage.0);
    recovered("corrupted", &env.client, &cfg, &corrupted, at, prober).await;
    let repaired = secrets.get(&cfg.secret).await.unwrap();
    assert_eq!(
        secret_field(&repaired, "ca.crt"),
        secret_field(&intact, "ca.crt"),
        "a broken serving certificate is issued again under the same CA (the caBundle stays)"
    );
    assert!(cfg.replica.exited().is_none(), "the replica keeps running");
}

// -------------------------------------------------------------- 3. the apiserver unreachable for a while

/// A TCP proxy to `upstream` that can be cut: cutting closes every open connection and closes each new
/// one as soon as it is accepted, until restored.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    refused: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, live) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let (accepted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (cut, live, accepted, refused) = (cut.clone(), live.clone(), accepted.clone(), refused.clone());
            async move {
                loop {
                    let Ok((mut inbound, _)) = listener.accept().await else { continue };
                    // Under the lock, so a connection is either closed by `cut` or refused here.
                    let mut live = live.lock().unwrap();
                    if cut.load(Ordering::Acquire) {
                        refused.fetch_add(1, Ordering::Relaxed);
                        drop(inbound);
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    live.retain(|h: &tokio::task::AbortHandle| !h.is_finished());
                    let forward = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    live.push(forward.abort_handle());
                }
            }
        });
        Proxy { addr, cut, live, accepted, refused, task }
    }

    fn cut(&self) {
        let mut live = self.live.lock().unwrap();
        self.cut.store(true, Ordering::Release);
        for h in live.drain(..) {
            h.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

/// How long the apiserver stays unreachable.
const CUT: Duration = Duration::from_secs(25);
/// Bound for readiness to follow the apiserver, either way: it is checked every 2 s and lost after 10 s
/// without an answer (`agentid::probes`).
const READINESS_WITHIN: Duration = Duration::from_secs(30);

/// A replica whose only way to the apiserver is a TCP proxy (its own kubeconfig: same credentials and CA,
/// the proxy's address, which the apiserver's certificate names too: 127.0.0.1). Cutting the proxy for
/// 25 s must turn `/readyz` to 503 without the process exiting; restored, `/readyz` is 200 again and the
/// watches have resumed (an agent created during the cut, and one after it, converge). Runs without
/// leader election: a leader that cannot renew its Lease exits on purpose, so that a fresh start competes
/// again (tests/e2e_ha.rs covers that side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_unreachable_turns_readiness_false_and_recovers() {
    let env = env("faults-cut").await;
    let path = std::env::var("KUBECONFIG").expect("KUBECONFIG");
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let current = kubeconfig.current_context.clone().unwrap_or_default();
    let cluster_name = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .unwrap_or_default();
    let server = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.as_ref()?.server.clone())
        .expect("the kubeconfig names the apiserver");
    let host_port = server.trim_start_matches("https://").trim_end_matches('/');
    let upstream = tokio::net::lookup_host(host_port).await.unwrap().next().expect("the apiserver's address");
    let proxy = Proxy::start(upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let proxied = dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(&server));
    std::fs::write(&proxied, text.replace(&server, &format!("https://127.0.0.1:{}", proxy.addr.port()))).unwrap();

    let ns = env.ns.clone();
    let (webhook, broker, pdp) = (free_port(), free_port(), free_port());
    let args = strings(&[
        "--no-leader-elect",
        "--watch-namespace",
        &ns,
        "--operator-namespace",
        &ns,
        "--no-webhook-registration",
        "--allow-unchecked-grants",
        "--webhook-configuration",
        "faults-cut",
        "--webhook-addr",
        &addr(webhook),
        "--broker-addr",
        &addr(broker),
        "--pdp-addr",
        &addr(pdp),
    ]);
    let replica = Replica::spawn(&ns, "replica", &args, &[("KUBECONFIG", proxied.to_str().unwrap())]);
    let alive = || -> Result<(), String> {
        match replica.exited() {
            Some(status) => Err(format!("the replica exited: {status}; {}", replica.log_tail())),
            None => Ok(()),
        }
    };
    let readyz = |want_ready: bool| {
        let (alive, replica) = (&alive, &replica);
        move || async move {
            alive()?;
            match replica.probe_status("/readyz").await {
                Some(200) if want_ready => Ok(()),
                Some(s) if !want_ready && s != 200 => Ok(()),
                other => Err(format!("/readyz {other:?}")),
            }
        }
    };
    settle(Duration::from_secs(60), Duration::from_millis(200), "the replica ready", readyz(true)).await;
    assert!(proxy.accepted.load(Ordering::Relaxed) > 0, "the replica reaches the apiserver through the proxy");
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &ns);
    let create_agent = |name: &'static str| {
        let agents = &agents;
        async move {
            let start = Instant::now();
            let a: AgentIdentity = serde_json::from_value(json!({
                "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
                "metadata": {"name": name}, "spec": {"owner": "team-faults", "audiences": [TOOLS]},
            }))
            .unwrap();
            agents.create(&PostParams::default(), &a).await.unwrap();
            (a, start)
        }
    };
    let ready = |name: &'static str, timeout: Duration| {
        let (agents, alive) = (&agents, &alive);
        async move {
            settle(timeout, Duration::from_millis(200), &format!("agent {name} Ready"), || async {
                alive()?;
                let a = agents.get(name).await.map_err(|e| e.to_string())?;
                let ready = a.status.as_ref().is_some_and(|s| conditions::is_true(&s.conditions, "Ready"));
                if ready { Ok(()) } else { Err("not Ready".to_string()) }
            })
            .await
        }
    };
    let _ = create_agent("before").await;
    ready("before", Duration::from_secs(30)).await;

    // Cut.
    proxy.cut();
    let cut_at = Instant::now();
    settle(
        READINESS_WITHIN,
        Duration::from_millis(200),
        "/readyz not 200 while the apiserver is unreachable",
        readyz(false),
    )
    .await;
    let unready_after = cut_at.elapsed();
    // Created meanwhile (by the test, straight to the apiserver): the replica learns of it only once its
    // watches resume.
    let (_, during_created) = create_agent("during").await;
    let mut ready_during_cut = 0;
    while cut_at.elapsed() < CUT {
        alive().unwrap();
        if replica.probe_status("/readyz").await == Some(200) {
            ready_during_cut += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let refused = proxy.refused.load(Ordering::Relaxed);
    assert_eq!(ready_during_cut, 0, "/readyz answered 200 again while the apiserver was still unreachable");
    assert!(refused > 0, "the replica kept trying to reach the apiserver");

    // Restore.
    proxy.restore();
    let restored_at = Instant::now();
    settle(READINESS_WITHIN, Duration::from_millis(200), "/readyz 200 once the apiserver is back", readyz(true)).await;
    let ready_after = restored_at.elapsed();
    ready("during", Duration::from_secs(60)).await;
    let (during_after, during_took) = (restored_at.elapsed(), during_created.elapsed());
    let (_, after_created) = create_agent("after").await;
    ready("after", Duration::from_secs(60)).await;
    let after_took = after_created.elapsed();
    alive().unwrap();
    eprintln!(
        "apiserver cut for {CUT:?}: /readyz not 200 after {unready_after:?}; {refused} connections refused meanwhile; \
         restored: /readyz 200 after {ready_after:?}, the agent created during the cut Ready {during_after:?} after \
         the restore ({during_took:?} after its creation), a new agent Ready in {after_took:?}"
    );
}
