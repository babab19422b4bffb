//! Memory of the decision point's state: RSS added by a Snapshot of 10,000 agents × 5 grants (each with
//! two tools and a destination) and 10,000 tasks, built through the same upserts the watches use.
//! `cargo bench --bench pdp_memory` prints one table; `cargo test --benches` runs a small size.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use agentid::api::{
    AgentIdentity, AgentIdentitySpec, AgentIdentityStatus, AgentRef, AgentTask, AgentTaskSpec, AgentTaskStatus,
    DataSensitivity, GrantPhase, Risk, TaskPhase, Tool, ToolGrant, ToolGrantSpec, ToolGrantStatus,
};
use agentid::core::pdp::Snapshot;

/// Counts live heap bytes, to tell what the snapshot holds from what the allocator keeps around.
struct Counting;
static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}
#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> usize {
    LIVE.load(std::sync::atomic::Ordering::Relaxed)
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn agent(ns: &str, name: &str) -> AgentIdentity {
    let mut a = AgentIdentity::new(
        name,
        AgentIdentitySpec {
            owner: "team-payments".into(),
            description: Some("files issues for the payments team".into()),
            service_account_name: None,
            audiences: vec!["https://tools.example.com".into()],
            token_ttl: "10m".into(),
            trust_domain: None,
            suspended: false,
            delegation: Default::default(),
            session_limits: None,
        },
    );
    a.metadata.namespace = Some(ns.into());
    a.metadata.uid = Some(format!("00000000-0000-0000-0000-{:012}", name.len()));
    a.status = Some(AgentIdentityStatus {
        service_account_name: Some(format!("agent-{name}")),
        spiffe_id: Some(format!("spiffe://cluster.local/ns/{ns}/agent/{name}")),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: "True".into(),
            reason: "IdentityReady".into(),
            message: format!("ServiceAccount agent-{name} carries spiffe://cluster.local/ns/{ns}/agent/{name}"),
            observed_generation: Some(1),
            last_transition_time: Time(Timestamp::now()),
        }],
        observed_generation: Some(1),
    });
    a
}

fn grant(ns: &str, name: &str, agent: &str, i: usize) -> ToolGrant {
    let tool = |n: String, d: String| Tool {
        name: n,
        actions: vec!["read".into(), "create".into()],
        destinations: vec![d],
        max_data_sensitivity: DataSensitivity::Internal,
        risk: Risk::Low,
    };
    let mut g = ToolGrant::new(
        name,
        ToolGrantSpec {
            agent_ref: AgentRef { name: agent.into() },
            tools: vec![
                tool(format!("tool-{i}"), format!("https://api{i}.example.com/v1/")),
                tool(format!("tool-{i}-b"), "*.internal.example.com".into()),
            ],
            kubernetes_rules: vec![],
            approval: None,
            valid_from: None,
            valid_until: None,
            limits: None,
            when: None,
        },
    );
    g.metadata.namespace = Some(ns.into());
    g.metadata.uid = Some(format!("uid-{name}"));
    g.metadata.generation = Some(1);
    g.status = Some(ToolGrantStatus { phase: Some(GrantPhase::Active), ..Default::default() });
    g
}

fn task(ns: &str, name: &str, agent: &str) -> AgentTask {
    let mut t = AgentTask::new(
        name,
        AgentTaskSpec {
            agent_ref: AgentRef { name: agent.into() },
            purpose: "triage support ticket".into(),
            audiences: vec!["https://tools.example.com".into()],
            ttl: "1h".into(),
            completed: false,
        },
    );
    t.metadata.namespace = Some(ns.into());
    t.metadata.uid = Some(format!("uid-{name}"));
    t.status = Some(AgentTaskStatus {
        phase: Some(TaskPhase::Active),
        issued_at: Some(Time(Timestamp::now())),
        anchor: Some(format!("agentid-task-{name}")),
        ..Default::default()
    });
    t
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let agents = if full { 10_000 } else { 200 };
    // The objects first (as the watches hold them, briefly), then the snapshot alone is measured.
    let inputs: Vec<(AgentIdentity, Vec<ToolGrant>, AgentTask)> = (0..agents)
        .map(|a| {
            let ns = format!("team-{}", a % 100);
            let name = format!("agent-{a}");
            let grants = (0..5).map(|g| grant(&ns, &format!("{name}-grant-{g}"), &name, g)).collect();
            (agent(&ns, &name), grants, task(&ns, &format!("{name}-task"), &name))
        })
        .collect();
    let before = rss_kib();
    let live_before = live();
    let mut snap = Snapshot::new("cluster.local");
    let mut parts = [0usize; 3];
    for (ag, gs, t) in &inputs {
        let l0 = live();
        snap.upsert_agent(ag);
        let l1 = live();
        gs.iter().for_each(|g| snap.upsert_grant(g));
        let l2 = live();
        snap.upsert_task(t);
        let l3 = live();
        parts[0] += l1.wrapping_sub(l0);
        parts[1] += l2.wrapping_sub(l1);
        parts[2] += l3.wrapping_sub(l2);
    }
    let after = rss_kib();
    let held = live().saturating_sub(live_before);
    let (a, g, t) = snap.len();
    let mib = (after.saturating_sub(before)) as f64 / 1024.0;
    println!(
        "\n| decision point state | agents | grants | tasks | heap held | RSS added | heap per agent (5 grants, 1 task) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| Snapshot | {a} | {g} | {t} | {:.1} MiB | {mib:.1} MiB | {:.1} KiB |",
        held as f64 / 1048576.0,
        held as f64 / 1024.0 / a.max(1) as f64
    );
    println!(
        "\nof which agents {:.1} MiB, grants (with the index) {:.1} MiB, tasks {:.1} MiB",
        parts[0] as f64 / 1048576.0,
        parts[1] as f64 / 1048576.0,
        parts[2] as f64 / 1048576.0
    );
    std::hint::black_box(&snap);
}
