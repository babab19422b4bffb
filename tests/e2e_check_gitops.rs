//! `agentid check` where GitOps pipelines run it: behind `helm template` and `kubectl kustomize` on
//! standard input, and as a pre-commit hook (the real pre-commit from PyPI, installed by
//! e2e/tools/pre-commit.sh into .cache). Needs no cluster, but helm and kubectl from `make tools` and
//! Python for pre-commit, so it runs with the integration tests (`make test`); a missing tool fails the
//! test, it is never skipped.
#![cfg(feature = "e2e")]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A tool from .cache/bin (built by `make tools`), else from PATH.
fn tool(name: &str) -> PathBuf {
    let cached = root().join(".cache/bin").join(name);
    if cached.is_file() {
        return cached;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| panic!("{name} not found in .cache/bin or on PATH: run `make tools`"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `agentid check ARGS` with `input` on standard input.
fn check_stdin(args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_agentid"))
        .arg("check")
        .args(args)
        .current_dir(root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run agentid");
    let mut pipe = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

#[test]
fn helm_template_piped_into_check() {
    let rendered = run(Command::new(tool("helm")).current_dir(root()).args([
        "template",
        "agentid",
        "charts/agentid",
        "--namespace",
        "agentid-system",
        "--kube-version",
        "1.36.3",
    ]));
    assert!(rendered.status.success(), "helm template: {}", text(&rendered.stderr));
    let (code, out, err) = check_stdin(&["-o", "json", "-"], &rendered.stdout);
    assert_eq!(code, 0, "the chart's own operator passes its rules: {out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let results = v["results"].as_array().unwrap();
    let operator = results.iter().find(|r| r["kind"] == "Deployment").expect("the operator Deployment is judged");
    assert_eq!((operator["namespace"].as_str(), operator["verdict"].as_str()), (Some("agentid-system"), Some("allow")));
    assert_eq!(operator["file"], "-");

    // The same chart rendered with a static Secret in the operator's env is refused at the right line.
    let bad = text(&rendered.stdout).replacen(
        "          env:\n",
        "          env:\n            - name: LEAKED\n              valueFrom: {secretKeyRef: {name: s, key: k}}\n",
        1,
    );
    assert_ne!(bad, text(&rendered.stdout), "the chart's Deployment has an env list");
    let want_line = bad.lines().position(|l| l == "            - name: LEAKED").unwrap() + 1;
    let (code, out, _) = check_stdin(&["--stdin-name", "chart.yaml", "-"], bad.as_bytes());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("chart.yaml:{want_line}:15: error: [agentid/static-secret-env]")), "{out}");
}

#[test]
fn kubectl_kustomize_piped_into_check() {
    let rendered =
        run(Command::new(tool("kubectl")).current_dir(root()).args(["kustomize", "tests/fixtures/check/kustomize"]));
    assert!(rendered.status.success(), "kubectl kustomize: {}", text(&rendered.stderr));
    let yaml = text(&rendered.stdout);
    // kustomize sorts the AgentIdentity after the Deployment that names it: the agent is still known.
    let deployment = yaml.find("kind: Deployment").unwrap();
    assert!(yaml.find("kind: AgentIdentity").unwrap() > deployment, "{yaml}");
    let line_of = |needle: &str| yaml.lines().position(|l| l.trim_end() == needle).unwrap() + 1;
    let secret = line_of("        - name: DB_PASSWORD");
    let destination = line_of("    - https://api.github.com");

    let (code, out, err) = check_stdin(&["-"], &rendered.stdout);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(
        lines[0]
            .starts_with(&format!("-:{secret}:11: error: [agentid/static-secret-env] Deployment agents/triage-bot: ")),
        "{out}"
    );
    assert!(lines[1].contains("warning: [agentid/grant-no-expiry] ToolGrant agents/triage-bot-tools"), "{out}");
    assert!(lines[2].starts_with(&format!("-:{destination}:7: warning: [agentid/destination-whole-host]")), "{out}");
    assert_eq!(
        lines[3],
        "1 workload(s) checked, 1 denied; 2 AgentIdentity/ToolGrant object(s) linted; 1 error(s), 2 warning(s)"
    );

    let (code, sarif, _) = check_stdin(&["-o", "sarif", "--stdin-name", "rendered.yaml", "-"], &rendered.stdout);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&sarif).unwrap();
    let r = &v["runs"][0]["results"][0];
    assert_eq!(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "rendered.yaml");
    assert_eq!(r["locations"][0]["physicalLocation"]["region"]["startLine"], secret);
}

fn git(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["-c", "user.name=agentid test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"])
        .args(["-c", "init.defaultBranch=main"])
        .args(args))
}

fn must(out: Output, what: &str) -> Output {
    assert!(out.status.success(), "{what}: {}{}", text(&out.stdout), text(&out.stderr));
    out
}

#[test]
fn pre_commit_refuses_a_bad_commit_and_passes_a_good_one() {
    let script = root().join("e2e/tools/pre-commit.sh");
    let found = must(run(&mut Command::new(&script)), "e2e/tools/pre-commit.sh");
    let pre_commit = PathBuf::from(text(&found.stdout).trim());
    assert!(pre_commit.is_file(), "{pre_commit:?}");

    let tmp = tempfile::tempdir().unwrap();
    // The hook repository: this repository's .pre-commit-hooks.yaml, committed, as a consumer pins it.
    let hooks = tmp.path().join("hooks");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::copy(root().join(".pre-commit-hooks.yaml"), hooks.join(".pre-commit-hooks.yaml")).unwrap();
    must(git(&hooks, &["init", "-q"]), "git init");
    must(git(&hooks, &["add", "."]), "git add");
    must(git(&hooks, &["commit", "-q", "-m", "hooks"]), "git commit");
    let rev = text(&must(git(&hooks, &["rev-parse", "HEAD"]), "rev-parse").stdout).trim().to_string();

    let work = tmp.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    must(git(&work, &["init", "-q"]), "git init");
    let config =
        format!("repos:\n  - repo: {}\n    rev: {rev}\n    hooks:\n      - id: agentid-check\n", hooks.display());
    std::fs::write(work.join(".pre-commit-config.yaml"), config).unwrap();
    std::fs::write(work.join("README.md"), "manifests\n").unwrap();
    must(git(&work, &["add", "."]), "git add");
    must(git(&work, &["commit", "-q", "-m", "init"]), "git commit");

    // `language: system`: the hook runs the agentid on PATH, here the binary under test.
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_agentid")).parent().unwrap().to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())),
    )
    .unwrap();
    let pc_home = tmp.path().join("pre-commit-home");
    let with_env = |mut c: Command| -> Command {
        c.current_dir(&work)
            .env("PATH", &path)
            .env("PRE_COMMIT_HOME", &pc_home)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1");
        c
    };
    let mut install = with_env(Command::new(&pre_commit));
    must(run(install.arg("install")), "pre-commit install");

    let commit = |message: &str| -> Output {
        let mut c = with_env(Command::new("git"));
        c.args(["-c", "user.name=agentid test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"])
            .args(["commit", "-m", message]);
        run(&mut c)
    };

    // A bad manifest: the commit is refused, naming the rule, the file and the line.
    std::fs::copy(root().join("tests/fixtures/check/lines/multi.yaml"), work.join("billing.yaml")).unwrap();
    must(git(&work, &["add", "billing.yaml"]), "git add");
    let refused = commit("bad");
    let said = format!("{}{}", text(&refused.stdout), text(&refused.stderr));
    assert!(!refused.status.success(), "the bad commit went through: {said}");
    assert!(said.contains("agentid check"), "{said}");
    assert!(said.contains("billing.yaml:30:15: error: [agentid/static-secret-env]"), "{said}");
    let head = text(&must(git(&work, &["log", "--format=%s"]), "git log").stdout);
    assert_eq!(head.trim(), "init", "nothing was committed");

    // A good manifest (with a lint warning, which does not fail the commit): it passes.
    must(git(&work, &["rm", "-q", "--cached", "billing.yaml"]), "git rm");
    std::fs::remove_file(work.join("billing.yaml")).unwrap();
    std::fs::copy(root().join("tests/fixtures/check/good/agent.yaml"), work.join("agent.yaml")).unwrap();
    must(git(&work, &["add", "agent.yaml"]), "git add");
    let passed = commit("good");
    let said = format!("{}{}", text(&passed.stdout), text(&passed.stderr));
    assert!(passed.status.success(), "the good commit was refused: {said}");
    assert!(said.contains("agentid check") && said.contains("Passed"), "{said}");
    let head = text(&must(git(&work, &["log", "--format=%s"]), "git log").stdout);
    assert_eq!(head.lines().next(), Some("good"));
}
