//! `agentid check` as a user runs it: the real binary on fixture files.

use std::process::Command;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .arg("check")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run agentid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn clean_manifests_exit_zero() {
    let (code, out, err) = check(&["tests/fixtures/check/good"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 workload(s) checked, 0 denied"), "{out}");
}

#[test]
fn denied_manifests_exit_one_with_rule_ids_in_json() {
    let (code, out, err) = check(&["-o", "json", "tests/fixtures/check/good", "tests/fixtures/check/bad/cronjob.yaml"]);
    assert_eq!(code, 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    let bad = results.iter().find(|r| r["verdict"] == "deny").unwrap();
    assert_eq!(bad["kind"], "CronJob");
    assert_eq!(bad["namespace"], "agents");
    assert_eq!(bad["name"], "nightly-report");
    let rules: Vec<&str> = bad["violations"].as_array().unwrap().iter().map(|v| v["rule"].as_str().unwrap()).collect();
    // The agent "reporter" is not among the inputs.
    assert_eq!(rules, vec!["static-secret-envfrom", "unknown-agent", "long-lived-token"]);
    assert_eq!(bad["violations"][0]["path"], "spec.jobTemplate.spec.template.spec.containers[0].envFrom[0]");
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
