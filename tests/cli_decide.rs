//! `agentid decide` as a reviewer runs it: the real binary over the sample manifests.

use std::process::Command;

fn decide(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .arg("decide")
        .args(args)
        .args(["config/samples/agentidentity.yaml", "config/samples/toolgrant.yaml", "tests/fixtures/decide/task.yaml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run agentid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const CALL: [&str; 8] =
    ["--agent", "agents/triage-bot", "--tool", "github.create_issue", "--action", "create", "--task", "triage-42"];

#[test]
fn a_granted_call_is_allowed() {
    let (code, out, err) =
        decide(&[&CALL[..], &["--destination", "https://api.github.com/repos/acme/payments/issues"]].concat());
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "ALLOW by grant triage-bot-tools");
}

#[test]
fn an_ungranted_call_is_denied_with_its_reason() {
    let (code, out, err) = decide(
        &[&CALL[..], &["--destination", "https://api.github.com/repos/acme/billing/issues", "-o", "json"]].concat(),
    );
    assert_eq!(code, 1, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["reasons"][0], "destination-not-granted");
    assert_eq!(v["grant"], "triage-bot-tools");
    // The sample agent has session limits: a call outside a task cannot be counted.
    let (code, out, _) =
        decide(&["--agent", "agents/triage-bot", "--tool", "github.create_issue", "--action", "create"]);
    assert_eq!(code, 1);
    assert!(out.starts_with("DENY (task-required)"), "{out}");
}

#[test]
fn bad_input_exits_two() {
    let (code, _, err) = decide(&["--agent", "agents/nobody", "--tool", "t", "--action", "a"]);
    assert_eq!(code, 2);
    assert!(err.contains("no AgentIdentity agents/nobody"), "{err}");
    let (code, _, err) = decide(&["--agent", "agents/triage-bot", "--tool", "t", "--action", "a", "--task", "nope"]);
    assert_eq!(code, 2, "{err}");
}
