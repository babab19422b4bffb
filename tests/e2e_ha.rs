//! High availability with two real operator processes: only the Lease holder
//! reconciles; kill it and the other takes over.
#![cfg(feature = "e2e")]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use support::*;

use agentid::api::AgentIdentity;
use agentid::core::conditions;

struct Replica {
    name: String,
    child: Killed,
    probe: u16,
}

fn spawn(name: &str, ns: &str) -> Replica {
    let probe = free_port();
    let log = std::fs::File::create(std::env::temp_dir().join(format!("agentid-ha-{ns}-{name}.log"))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["run", "--no-webhook", "--watch-namespace", ns, "--operator-namespace", ns, "--instance", name])
        .args(["--probe-addr", &format!("127.0.0.1:{probe}")])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start agentid");
    Replica { name: name.into(), child: Killed(child), probe }
}

/// `agentid_reconciles_total{kind="AgentIdentity"}` of a replica (0 when absent).
async fn reconciles(r: &Replica) -> u64 {
    let body = tokio::task::spawn_blocking({
        let port = r.probe;
        move || -> Option<String> {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            Some(out)
        }
    })
    .await
    .unwrap()
    .unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with("agentid_reconciles_total{kind=\"AgentIdentity\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

async fn holder(api: &Api<Lease>) -> Option<String> {
    api.get_opt("agentid-leader").await.ok()??.spec?.holder_identity
}

async fn create_agent(agents: &Api<AgentIdentity>, name: &str) {
    let a: AgentIdentity = from_yaml(&format!(
        "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {name}}}\nspec: {{owner: team, audiences: [x]}}"
    ));
    agents.create(&PostParams::default(), &a).await.unwrap();
}

async fn ready(agents: &Api<AgentIdentity>, name: &str) {
    wait_until(Duration::from_secs(30), &format!("{name} Ready"), || async {
        let a = agents.get(name).await.ok()?;
        conditions::is_true(&a.status?.conditions, "Ready").then_some(())
    })
    .await
}

/// Two replicas in `env`'s namespace, once one leads and has made agent `one` Ready: the replicas, the
/// leader's index, and the Lease and AgentIdentity APIs.
async fn two_replicas_one_leading(env: &TestEnv) -> (Vec<Replica>, usize, Api<Lease>, Api<AgentIdentity>) {
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let agents: Api<AgentIdentity> = Api::namespaced(env.client.clone(), &env.ns);
    let replicas = vec![spawn("replica-a", &env.ns), spawn("replica-b", &env.ns)];
    let first = wait_until(Duration::from_secs(30), "a leader", || async { holder(&leases).await }).await;
    create_agent(&agents, "one").await;
    ready(&agents, "one").await;
    let leader_idx = if replicas[0].name == first { 0 } else { 1 };
    (replicas, leader_idx, leases, agents)
}

#[tokio::test]
async fn only_the_leader_reconciles_and_a_follower_takes_over() {
    let env = env("ha").await;
    let (mut replicas, leader_idx, leases, agents) = two_replicas_one_leading(&env).await;
    let follower_idx = 1 - leader_idx;
    // The Ready status is written inside the reconcile, which is counted once it returns: wait for the count.
    wait_until(Duration::from_secs(10), "the leader counts its reconcile", || async {
        (reconciles(&replicas[leader_idx]).await > 0).then_some(())
    })
    .await;
    assert_eq!(reconciles(&replicas[follower_idx]).await, 0, "the follower must not reconcile");

    // Kill the leader outright (no graceful hand-over): the follower takes over once the Lease runs out.
    let killed_at = Instant::now();
    let mut dead = replicas.remove(leader_idx);
    dead.child.0.kill().unwrap();
    dead.child.0.wait().unwrap();
    let survivor = &replicas[0];
    let second = wait_until(Duration::from_secs(30), "a new leader", || async {
        holder(&leases).await.filter(|h| *h == survivor.name)
    })
    .await;
    let failover = killed_at.elapsed();
    assert_eq!(second, survivor.name);
    create_agent(&agents, "two").await;
    ready(&agents, "two").await;
    wait_until(Duration::from_secs(10), "the new leader counts its reconciles", || async {
        (reconciles(survivor).await > 0).then_some(())
    })
    .await;
    eprintln!("failover took {failover:?} (Lease 10 s, retry 2 s)");
}

/// SIGTERM (how the kubelet stops a pod); `None` when the process has not exited within `within`.
fn terminate(child: &mut std::process::Child, within: Duration) -> Option<(std::process::ExitStatus, Duration)> {
    let sent = Instant::now();
    let ok = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success();
    assert!(ok, "kill -TERM {}", child.id());
    while sent.elapsed() < within {
        if let Some(status) = child.try_wait().unwrap() {
            return Some((status, sent.elapsed()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test]
async fn sigterm_hands_leadership_over_at_once_and_stops_a_waiting_follower() {
    let env = env("ha-term").await;
    let (mut replicas, leader_idx, leases, agents) = two_replicas_one_leading(&env).await;

    // The leader stops cleanly and releases the Lease: the follower leads well before the Lease (10 s)
    // would have run out.
    let mut leaving = replicas.remove(leader_idx);
    let (status, took) = terminate(&mut leaving.child.0, Duration::from_secs(15)).expect("the leader ignored SIGTERM");
    assert!(status.success(), "the leader exited with {status} on SIGTERM");
    let survivor = replicas[0].name.clone();
    let handed = wait_until(Duration::from_secs(30), "the follower to lead", || async {
        holder(&leases).await.filter(|h| *h == survivor)
    })
    .await;
    assert_eq!(handed, survivor);
    let after = Instant::now();
    let failover = took + after.elapsed();
    assert!(failover < Duration::from_secs(8), "hand-over took {failover:?}: the Lease was not released");
    create_agent(&agents, "two").await;
    ready(&agents, "two").await;

    // A follower waiting for the Lease stops at once too.
    let mut waiting = spawn("replica-c", &env.ns);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, follower_took) =
        terminate(&mut waiting.child.0, Duration::from_secs(15)).expect("a waiting follower ignored SIGTERM");
    assert!(status.success(), "the follower exited with {status} on SIGTERM");
    assert_eq!(holder(&leases).await.as_deref(), Some(survivor.as_str()), "a follower's exit must not touch the Lease");
    eprintln!(
        "leader stopped {took:?} after SIGTERM, hand-over {failover:?}; waiting follower stopped in {follower_took:?}"
    );
}
