//! Fixtures shared by the fuzz targets: the sample agents, grants and tasks of `config/samples` and
//! `tests/fixtures`, an exception set, and the decision point's snapshot built from them the way
//! `agentid decide` builds it.

use std::sync::{LazyLock, Once};

use agentid::api::{AgentIdentity, AgentTask, ToolGrant};
use agentid::core::admission::exceptions::ExceptionSet;
use agentid::core::admission::offline::{self, Document};
use agentid::core::admission::rules::StaticDirectory;
use agentid::core::pdp::caller::Caller;
use agentid::core::pdp::decide::MemoryUsage;
use agentid::core::pdp::{Snapshot, decide};
use agentid::pdp::Question;
use k8s_openapi::jiff::Timestamp;

/// Every manifest the fixtures come from.
pub const MANIFESTS: &[(&str, &str)] = &[
    ("agentidentity.yaml", include_str!("../../config/samples/agentidentity.yaml")),
    ("toolgrant.yaml", include_str!("../../config/samples/toolgrant.yaml")),
    ("agenttask.yaml", include_str!("../../config/samples/agenttask.yaml")),
    ("good-deployment.yaml", include_str!("../../config/samples/good-deployment.yaml")),
    ("good/agent.yaml", include_str!("../../tests/fixtures/check/good/agent.yaml")),
    ("kustomize/agent.yaml", include_str!("../../tests/fixtures/check/kustomize/agent.yaml")),
    ("kustomize/grant.yaml", include_str!("../../tests/fixtures/check/kustomize/grant.yaml")),
    ("decide/task.yaml", include_str!("../../tests/fixtures/decide/task.yaml")),
    ("fuzz-extra.yaml", EXTRA),
];

/// A grant with a condition, host and subdomain destinations and an argument-reading `when`, so the
/// decision step runs CEL and every kind of destination pattern on fuzzed requests.
const EXTRA: &str = r#"
apiVersion: agentid.dev/v1alpha1
kind: ToolGrant
metadata: {name: fuzz-conditional, namespace: agents}
spec:
  agentRef: {name: triage-bot}
  tools:
    - name: crm
      actions: [read, get, post]
      destinations: ["https://crm.internal/api/", "*.example.com", "tools.example.com:8443", "http://10.0.0.1/x"]
      maxDataSensitivity: confidential
  when: >-
    request.method in ['GET', 'POST'] && request.arguments.all(a, a.matches('^[a-z_]+$'))
    && (task == null || task.calls < 100) && (request.host == null || !request.host.endsWith('.evil'))
    && now > timestamp('2020-01-01T00:00:00Z')
---
apiVersion: agentid.dev/v1alpha1
kind: ToolGrant
metadata: {name: fuzz-approval, namespace: agents}
spec:
  agentRef: {name: triage-bot}
  tools:
    - name: payments.refund
      actions: ["*"]
      maxDataSensitivity: restricted
      risk: high
  approval: {required: true, approvers: {users: [alice]}}
"#;

fn documents() -> Vec<Document> {
    MANIFESTS.iter().flat_map(|(file, text)| offline::parse_file(file, text).unwrap_or_default()).collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> Vec<T> {
    documents()
        .into_iter()
        .filter(|d| d.value.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .filter_map(|d| serde_json::from_value(d.value).ok())
        .collect()
}

pub static AGENTS: LazyLock<Vec<AgentIdentity>> = LazyLock::new(|| of_kind("AgentIdentity"));

/// The agents as the webhook's cache sees them (ServiceAccounts in place).
pub static DIRECTORY: LazyLock<StaticDirectory> = LazyLock::new(|| StaticDirectory::new(AGENTS.iter(), "agents"));

pub static EXCEPTIONS: LazyLock<ExceptionSet> = LazyLock::new(|| {
    ExceptionSet::parse(
        r#"
exceptions:
  - {name: legacy, namespace: agents, workload: "billing*", rules: [static-secret-env, hardcoded-credential],
     reason: fuzz, expires: "2099-01-01T00:00:00Z"}
  - {name: pods, namespace: default, kind: Pod, workload: web, rules: [default-service-account],
     reason: fuzz, expires: "2099-01-01T00:00:00Z"}
"#,
    )
    .expect("fixture exceptions parse")
});

/// A fixed "now" for everything time-dependent, so a crash reproduces.
pub fn now() -> Timestamp {
    Timestamp::from_second(1_900_000_000).expect("valid timestamp")
}

/// The decision point's state for the fixtures, as `agentid decide` reconciles manifests.
pub static SNAPSHOT: LazyLock<Snapshot> = LazyLock::new(|| {
    agentid::core::pdp::offline::reconciled(
        AGENTS.clone(),
        of_kind::<ToolGrant>("ToolGrant"),
        of_kind::<AgentTask>("AgentTask"),
        "agents",
        "cluster.local",
        now(),
    )
});

/// The caller every fuzzed question comes from: the sample agent, optionally with a task-bound token.
pub fn caller(task: Option<&str>) -> Caller {
    Caller {
        namespace: "agents".into(),
        agent: "triage-bot".into(),
        agent_uid: "agent/agents/triage-bot".into(),
        spiffe_id: "spiffe://cluster.local/ns/agents/agent/triage-bot".into(),
        task: task.map(str::to_string),
        credential_id: None,
    }
}

/// What the decision point does with a decoded question once the caller is identified
/// (`PdpState::decide` without the token verification and the cross-replica budgets).
pub fn decide_question(q: &Question, bound_task: Option<&str>) {
    let Ok(req) = q.request_for(&caller(bound_task)) else { return };
    let d = decide(&req, &SNAPSHOT, &MemoryUsage::default(), now(), &Default::default());
    let _ = serde_json::to_string(&d.reasons.iter().map(|r| r.as_str()).collect::<Vec<_>>());
}

/// libFuzzer's panic hook aborts on every panic, also on those the code catches on purpose. The CEL
/// crate panics on some hostile input, and agentid catches exactly those (`condition.rs`,
/// `catch_unwind` around the parser and the interpreter). This hook tolerates a panic raised inside
/// the `cel` crate and aborts on any other, so a panic of agentid's own code is still a crash; an
/// uncaught CEL panic still aborts, through libfuzzer-sys's own `catch_unwind`.
pub fn tolerate_caught_cel_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_cel = info.location().is_some_and(|l| {
                let f = l.file().replace('\\', "/");
                f.contains("/cel-0.") || f.contains("/cel-parser") || f.contains("/antlr")
            });
            if !in_cel {
                previous(info);
            }
        }));
    });
}
