//! Cost of one runtime decision (pure: no I/O), with 1,000 agents × 20 grants
//! loaded, with 10 and with 10,000 grants in one namespace (flat: grants are
//! indexed by agent and tool), and with a three-clause `when`.
//! `cargo bench --bench pdp -- --warm-up-time 1 --measurement-time 3`.

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use std::hint::black_box;

use agentid::api::{AgentIdentity, AgentTask, ToolGrant};
use agentid::core::pdp::condition::{Activation, AgentView, Condition, RequestView, TaskView};
use agentid::core::pdp::{
    Charge, DecideConfig, DecisionRequest, Destination, MemoryUsage, Outcome, ReasonCode, Snapshot, decide,
};

const WHEN: &str = "request.host.endsWith('.internal') && request.sensitivity != 'restricted' && task.calls < 100";

fn agent(ns: &str, name: &str) -> AgentIdentity {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentIdentity",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"owner": "team", "audiences": ["https://tools.example.com"], "tokenTTL": "15m"},
        "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "IdentityReady", "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}))
    .unwrap()
}

/// Grant `i` of `agent`: tool `tool-<i>`, read/list, on `https://api-<i>.internal/v1/`.
fn grant(ns: &str, agent: &str, i: usize, when: Option<&str>) -> ToolGrant {
    let mut spec = json!({
        "agentRef": {"name": agent},
        "tools": [{"name": format!("tool-{i}"), "actions": ["read", "list"],
            "destinations": [format!("https://api-{i}.internal/v1/"), "*.cdn.example.com"],
            "maxDataSensitivity": "confidential"}],
        "validUntil": "2030-01-01T00:00:00Z",
        "limits": {"maxCallsPerSession": 1000, "callsPerMinute": 600}});
    if let Some(when) = when {
        spec["when"] = json!(when);
    }
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
        "metadata": {"name": format!("{agent}-g{i}"), "namespace": ns, "uid": format!("uid-{agent}-g{i}"), "generation": 1},
        "spec": spec, "status": {"phase": "Active"}}))
    .unwrap()
}

fn task(ns: &str, name: &str, agent: &str) -> AgentTask {
    serde_json::from_value(json!({
        "apiVersion": "agentid.dev/v1alpha1", "kind": "AgentTask",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
        "spec": {"agentRef": {"name": agent}, "purpose": "bench", "audiences": ["https://tools.example.com"], "ttl": "12h"},
        "status": {"phase": "Active", "issuedAt": "2026-01-01T00:00:00Z", "expiresAt": "2026-01-01T12:00:00Z",
            "anchor": format!("agentid-task-{name}")}}))
    .unwrap()
}

/// `agents` agents in namespace `agents`, `per_agent` grants each, one task each; `agent-0`'s grants carry
/// `when` if given.
fn world(agents: usize, per_agent: usize, when: Option<&str>) -> Snapshot {
    let mut a = Vec::with_capacity(agents);
    let mut g = Vec::with_capacity(agents * per_agent);
    let mut t = Vec::with_capacity(agents);
    for n in 0..agents {
        let name = format!("agent-{n}");
        a.push(agent("agents", &name));
        for i in 0..per_agent {
            g.push(grant("agents", &name, i, if n == 0 { when } else { None }));
        }
        t.push(task("agents", &format!("task-{n}"), &name));
    }
    let snap = Snapshot::build(&a, &g, &t, "cluster.local");
    assert_eq!(snap.len(), (agents, agents * per_agent, agents));
    snap
}

fn request(tool: &str, destination: &str) -> DecisionRequest {
    DecisionRequest {
        namespace: "agents".into(),
        agent: "agent-0".into(),
        agent_uid: Some("uid-agent-0".into()),
        task: Some("task-0".into()),
        tool: tool.into(),
        action: "read".into(),
        destination: Some(destination.into()),
        sensitivity: None,
        method: Some("GET".into()),
        argument_names: vec!["id".into(), "fields".into()],
    }
}

fn usage() -> MemoryUsage {
    let mut u = MemoryUsage::default();
    let req = request("tool-7", "https://api-7.internal/v1/items/42");
    let charge = Charge { grant: "agent-0-g7".into(), task: Some("task-0".into()), minute: Some(0) };
    for _ in 0..5 {
        u.record(&req, &charge);
    }
    u
}

fn benches(c: &mut Criterion) {
    let now: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
    let cfg = DecideConfig::default();
    let usage = usage();
    let allow = request("tool-7", "https://api-7.internal/v1/items/42?expand=owner");
    let deny_destination = request("tool-7", "https://api-7.internal/admin/");
    let deny_tool = request("tool-99", "https://api-7.internal/v1/items/42");

    let mut group = c.benchmark_group("decide");
    let big = world(1000, 20, None);
    let d = decide(&allow, &big, &usage, now, &cfg);
    assert_eq!(d.outcome, Outcome::Allow, "{d:?}");
    group.bench_function("1000 agents x 20 grants/allow", |b| {
        b.iter(|| decide(black_box(&allow), &big, &usage, now, &cfg))
    });
    let d = decide(&deny_destination, &big, &usage, now, &cfg);
    assert_eq!(d.reasons, vec![ReasonCode::DestinationNotGranted], "{d:?}");
    group.bench_function("1000 agents x 20 grants/deny destination (with explanation)", |b| {
        b.iter(|| decide(black_box(&deny_destination), &big, &usage, now, &cfg))
    });
    let d = decide(&deny_tool, &big, &usage, now, &cfg);
    assert_eq!(d.reasons, vec![ReasonCode::NoGrantForTool], "{d:?}");
    group.bench_function("1000 agents x 20 grants/deny no grant for tool", |b| {
        b.iter(|| decide(black_box(&deny_tool), &big, &usage, now, &cfg))
    });
    drop(big);

    for (agents, per_agent) in [(1, 10), (500, 20)] {
        let snap = world(agents, per_agent, None);
        let grants = agents * per_agent;
        assert!(decide(&allow, &snap, &usage, now, &cfg).is_allowed());
        group.bench_function(format!("{grants} grants in one namespace/allow"), |b| {
            b.iter(|| decide(black_box(&allow), &snap, &usage, now, &cfg))
        });
    }

    let with_when = world(1000, 20, Some(WHEN));
    assert!(decide(&allow, &with_when, &usage, now, &cfg).is_allowed());
    group.bench_function("1000 agents x 20 grants/allow with 3-clause when", |b| {
        b.iter(|| decide(black_box(&allow), &with_when, &usage, now, &cfg))
    });
    group.finish();

    let condition = Condition::compile(WHEN).unwrap();
    let destination = Destination::parse("https://api-7.internal/v1/items/42").unwrap();
    let arguments = vec!["id".to_string()];
    let activation = Activation {
        request: RequestView {
            tool: "tool-7",
            action: "read",
            destination: Some(&destination),
            sensitivity: agentid::api::DataSensitivity::Internal,
            method: Some("GET"),
            arguments: &arguments,
        },
        agent: AgentView {
            name: "agent-0",
            namespace: "agents",
            spiffe_id: "spiffe://x/ns/agents/agent/agent-0",
            owner: "team",
        },
        task: Some(TaskView { name: "task-0", purpose: "bench", calls: 5 }),
        grant: "agent-0-g7",
        now,
    };
    assert_eq!(condition.evaluate(&activation), Ok(true));
    c.bench_function("condition/evaluate 3 clauses", |b| b.iter(|| condition.evaluate(black_box(&activation))));
    c.bench_function("condition/compile 3 clauses", |b| b.iter(|| Condition::compile(black_box(WHEN))));
    c.bench_function("destination/parse", |b| {
        b.iter(|| Destination::parse(black_box("https://API-7.internal:443/v1/./items/%34%32?expand=owner")))
    });
}

criterion_group!(pdp, benches);
criterion_main!(pdp);
