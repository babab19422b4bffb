//! What a new user types first, tried against the real apiserver: the names the README and the demo
//! print, and `agentid run` without its namespace.
#![cfg(feature = "e2e")]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

#[tokio::test]
async fn the_names_users_type_work() {
    let _env = env("firsthour").await;
    for names in [
        "agentidentities",
        "agi",
        "toolgrants",
        "tg",
        "agenttasks",
        "agt",
        "agentid",
        "agentidentity,toolgrant,agenttask",
    ] {
        let out = Command::new("kubectl").args(["get", names, "-A"]).output().expect("kubectl on PATH");
        assert!(out.status.success(), "kubectl get {names} -A: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn run_without_the_operator_namespace_says_what_is_missing_in_one_line() {
    let _env = env("firsthour-run").await;
    let port = free_port;
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .args(["run", "--operator-namespace", "no-such-namespace-for-agentid"])
        .args(["--probe-addr", &format!("127.0.0.1:{}", port())])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_until(Duration::from_secs(30), "agentid run exits", || {
        let s = child.try_wait().unwrap();
        async move { s }
    })
    .await;
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("the operator namespace \"no-such-namespace-for-agentid\" does not exist: create it"),
        "{err}"
    );
    assert!(!err.contains("ErrorResponse {"), "no debug dumps: {err}");
}
