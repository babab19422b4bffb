//! `agentid check` as a user runs it: the real binary on fixture files and on standard input.
//! (`helm template`, `kubectl kustomize` and pre-commit: tests/e2e_check_gitops.rs.)

use std::io::Write;
use std::process::{Command, Stdio};

fn check(args: &[&str]) -> (i32, String, String) {
    check_stdin(args, None)
}

/// Runs `agentid check ARGS` with `stdin` piped in.
fn check_stdin(args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentid");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let text = text.to_string();
        std::thread::spawn(move || pipe.write_all(text.as_bytes()));
    }
    let out = child.wait_with_output().expect("agentid exits");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const MULTI: &str = "tests/fixtures/check/lines/multi.yaml";

fn fixture(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap()
}

/// (rule, line, column) of every finding in tests/fixtures/check/lines/multi.yaml, checked by hand:
/// the `- name: DB_PASSWORD` item, the literal token in `args`, the `serviceAccountName` key.
const MULTI_FINDINGS: [(&str, usize, usize); 3] =
    [("static-secret-env", 30, 15), ("hardcoded-credential", 42, 25), ("shared-service-account", 38, 3)];

#[test]
fn clean_manifests_exit_zero() {
    let (code, out, err) = check(&["tests/fixtures/check/good"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 workload(s) checked, 0 denied; 1 AgentIdentity/ToolGrant object(s) linted"), "{out}");
}

#[test]
fn denied_manifests_exit_one_with_rule_ids_in_json() {
    let (code, out, err) = check(&["-o", "json", "tests/fixtures/check/good", "tests/fixtures/check/bad/cronjob.yaml"]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    // The AgentIdentity (linted, clean), its Deployment and the CronJob.
    assert_eq!(results.len(), 3);
    assert_eq!(results[0]["kind"], "AgentIdentity");
    assert_eq!(results[0]["verdict"], "allow");
    assert_eq!(v["summary"]["denied"], 1);
    let bad = results.iter().find(|r| r["verdict"] == "deny").unwrap();
    assert_eq!(bad["kind"], "CronJob");
    assert_eq!(bad["namespace"], "agents");
    assert_eq!(bad["name"], "nightly-report");
    let rules: Vec<&str> = bad["violations"].as_array().unwrap().iter().map(|v| v["rule"].as_str().unwrap()).collect();
    // The agent "reporter" is not among the inputs.
    assert_eq!(rules, vec!["static-secret-envfrom", "unknown-agent", "long-lived-token"]);
    assert_eq!(bad["violations"][0]["path"], "spec.jobTemplate.spec.template.spec.containers[0].envFrom[0]");
    assert_eq!((bad["violations"][0]["line"].as_u64(), bad["violations"][0]["column"].as_u64()), (Some(17), Some(23)));
    assert_eq!(bad["violations"][0]["level"], "error");
    for key in ["file", "kind", "namespace", "name", "verdict", "violations"] {
        assert!(bad.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn sarif_output_is_sarif() {
    let (code, out, _) = check(&["--output", "sarif", "tests/fixtures/check/bad"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert_eq!(v["runs"][0]["results"][0]["ruleId"], "static-secret-envfrom");
    assert_eq!(v["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"], 17);
}

#[test]
fn invalid_input_exits_two_naming_file_and_line() {
    let (code, _, err) = check(&["tests/fixtures/check/invalid/broken.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("tests/fixtures/check/invalid/broken.yaml:"), "{err}");
    assert!(err.contains("invalid YAML"), "{err}");
    let (code, _, err) = check(&["tests/fixtures/check/does-not-exist.yaml"]);
    assert_eq!(code, 2);
    assert!(err.contains("does-not-exist.yaml: cannot read"), "{err}");
}

#[test]
fn dash_reads_standard_input() {
    let text = fixture(MULTI);
    let (code, out, err) = check_stdin(&["-"], Some(&text));
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with("-:30:15: error: [agentid/static-secret-env] Deployment agents/billing: "), "{out}");
    assert!(out.contains("2 workload(s) checked, 2 denied"), "{out}");
    // Named as the file it was rendered from, mixed with files.
    let (code, out, _) = check_stdin(&["--stdin-name", "rendered.yaml", "tests/fixtures/check/good", "-"], Some(&text));
    assert_eq!(code, 1);
    assert!(out.contains("rendered.yaml:42:25: error: [agentid/hardcoded-credential]"), "{out}");
    assert!(out.contains("3 workload(s) checked, 2 denied"), "{out}");
    // `kind: List` (what `kubectl get -o yaml` prints), JSON too.
    let list = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p, namespace: a}\n  spec:\n    containers: [{name: c, image: x}]\n";
    let (code, out, _) = check_stdin(&["-"], Some(list));
    assert_eq!(code, 1);
    assert!(out.starts_with("-:7: error: [agentid/default-service-account] Pod a/p: spec.serviceAccountName"), "{out}");
    let json =
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"serviceAccountName":"s","containers":[]}}"#;
    let (code, out, _) = check_stdin(&["-"], Some(json));
    assert_eq!(code, 0, "{out}");
    // Empty input and invalid input.
    assert_eq!(check_stdin(&["-"], Some("")).0, 0);
    let (code, _, err) = check_stdin(&["--stdin-name", "x.yaml", "-"], Some("a: [\n"));
    assert_eq!(code, 2);
    assert!(err.contains("x.yaml:"), "{err}");
}

#[test]
fn findings_point_at_their_fields_in_every_format() {
    let (code, text, _) = check(&[MULTI]);
    assert_eq!(code, 1);
    for (rule, line, col) in MULTI_FINDINGS {
        assert!(text.contains(&format!("{MULTI}:{line}:{col}: error: [agentid/{rule}] ")), "{rule}: {text}");
    }

    let (_, json, _) = check(&["-o", "json", MULTI]);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let found: Vec<(String, u64, u64)> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["violations"].as_array().unwrap().clone())
        .map(|f| (f["rule"].as_str().unwrap().to_string(), f["line"].as_u64().unwrap(), f["column"].as_u64().unwrap()))
        .collect();
    let want: Vec<(String, u64, u64)> =
        MULTI_FINDINGS.iter().map(|(r, l, c)| (r.to_string(), *l as u64, *c as u64)).collect();
    assert_eq!(found, want);
    let lines: Vec<u64> = v["results"].as_array().unwrap().iter().map(|r| r["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![2, 11, 34], "each object at the line where it starts");

    let (_, sarif, _) = check(&["-o", "sarif", MULTI]);
    let v: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    let found: Vec<(String, u64, u64)> = v["runs"][0]["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let region = &r["locations"][0]["physicalLocation"]["region"];
            (
                r["ruleId"].as_str().unwrap().to_string(),
                region["startLine"].as_u64().unwrap(),
                region["startColumn"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(found, want);

    let (code, gh, _) = check(&["-o", "github", MULTI]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = gh.lines().collect();
    assert_eq!(lines.len(), 3, "{gh}");
    for ((rule, line, col), got) in MULTI_FINDINGS.iter().zip(&lines) {
        let want = format!("::error file={MULTI},line={line},col={col},title=agentid/{rule}::[agentid/{rule}] ");
        assert!(got.starts_with(&want), "{got}");
    }

    let (code, junit, _) = check(&["-o", "junit", MULTI]);
    assert_eq!(code, 1);
    assert!(junit.starts_with("<?xml"), "{junit}");
    assert!(junit.contains(r#"<testsuite name="agentid check" tests="3" failures="2" errors="0">"#), "{junit}");
    assert!(junit.contains(r#"<failure type="static-secret-env""#), "{junit}");
    assert!(junit.contains(&format!("{MULTI}:30:15: [agentid/static-secret-env]")), "{junit}");
}

#[test]
fn grants_are_linted_as_warnings_and_denied_with_strict() {
    let (code, out, err) = check(&["tests/fixtures/check/lint"]);
    assert_eq!(code, 0, "warnings alone pass: {out}{err}");
    for (rule, at) in [
        ("grant-no-expiry", "broad-grant.yaml:7:"),
        ("tool-wildcard", "broad-grant.yaml:11:7:"),
        ("destination-everything", "broad-grant.yaml:13:11:"),
        ("destination-whole-host", "broad-grant.yaml:15:11:"),
        ("kubernetes-rule-wildcard", "broad-grant.yaml:27:15:"),
        ("risk-without-approval", "broad-grant.yaml:19:7:"),
        ("approval-self", "broad-grant.yaml:30:15:"),
        ("owner-unaccountable", "loose-agent.yaml:8:3:"),
        ("delegation-unbounded", "loose-agent.yaml:12:5:"),
        ("token-ttl-max", "loose-agent.yaml:10:3:"),
    ] {
        let line =
            out.lines().find(|l| l.contains(&format!("[agentid/{rule}]"))).unwrap_or_else(|| panic!("{rule}: {out}"));
        assert!(line.contains(at) && line.contains(" warning: ") && line.contains("; fix: "), "{line}");
    }
    let (code, out, _) = check(&["--strict", "tests/fixtures/check/lint"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(": error: [agentid/grant-no-expiry]"), "{out}");

    let (_, sarif, _) = check(&["-o", "sarif", "tests/fixtures/check/lint/loose-agent.yaml"]);
    let v: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(v["runs"][0]["results"][0]["level"], "warning");
    let (_, gh, _) = check(&["-o", "github", "tests/fixtures/check/lint/loose-agent.yaml"]);
    assert!(gh.starts_with("::warning file="), "{gh}");

    // A ToolGrant valid until 2030 is too long for a 1h maximum; a bad duration is refused.
    let (code, out, _) = check(&["--max-grant-duration", "1h", "config/samples/toolgrant.yaml"]);
    assert_eq!(code, 0);
    assert!(out.contains("[agentid/grant-too-long] ToolGrant agents/triage-bot-tools: spec.validUntil is "), "{out}");
    let (code, _, err) = check(&["--max-grant-duration", "a week", "config/samples/toolgrant.yaml"]);
    assert_eq!(code, 2, "{err}");
}
