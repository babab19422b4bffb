//! A ToolGrant's `when` condition: validated, compiled and evaluated against a request, with and
//! without a task. Input: the condition; the request's fields are fixed.
#![no_main]

use agentid::api::DataSensitivity;
use agentid::core::pdp::condition::{Activation, AgentView, RequestView, TaskView};
use agentid::core::pdp::{Condition, Destination, validate_when};
use agentid_fuzz::now;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    agentid_fuzz::tolerate_caught_cel_panics();
    let Ok(src) = std::str::from_utf8(data) else { return };
    let _ = validate_when(src);
    let Ok(c) = Condition::compile(src) else { return };
    let destination = Destination::parse("https://crm.internal:8443/api/contacts?q=1").ok();
    let arguments = vec!["fields".to_string(), "limit".to_string()];
    let request = RequestView {
        tool: "crm",
        action: "read",
        destination: destination.as_ref(),
        sensitivity: DataSensitivity::Internal,
        method: Some("GET"),
        arguments: &arguments,
    };
    let agent = AgentView {
        name: "triage-bot",
        namespace: "agents",
        spiffe_id: "spiffe://cluster.local/ns/agents/agent/triage-bot",
        owner: "team-payments",
    };
    let task = TaskView { name: "t1", purpose: "triage ticket 42", calls: 3 };
    for task in [Some(task), None] {
        let act = Activation { request, agent, task, grant: "crm-read", now: now() };
        let _ = c.evaluate(&act);
    }
    let empty = RequestView { destination: None, method: None, arguments: &[], ..request };
    let _ = c.evaluate(&Activation { request: empty, agent, task: None, grant: "", now: now() });
});
