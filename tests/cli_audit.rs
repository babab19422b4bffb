//! `agentid audit verify` and `agentid audit timeline` as an investigator runs them: the real binary over a
//! trail written by the real writer, then tampered with each way.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use agentid::audit::{AuditConfig, AuditKeys, AuditMetrics, AuditTrail};
use agentid::core::audit::{Event, Kind};

fn agentid(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agentid")).args(args).output().expect("run agentid");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

struct Trail {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    segments: Vec<PathBuf>,
    checkpoints: PathBuf,
    public_key: String,
}

/// 30 records (20 of agents/bot in tasks t1 and t2, 10 of agents/other), a checkpoint after record 10
/// and one at the end; one segment unless `segment_bytes` is small.
fn write_trail(segment_bytes: u64) -> Trail {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (segments, checkpoints, public_key) = rt.block_on(async {
        let mut cfg = AuditConfig::new(dir.path(), "agentid-0");
        cfg.segment_bytes = segment_bytes;
        let keys = AuditKeys::generate().unwrap().0;
        let (trail, writer) = AuditTrail::open(cfg, keys, None, Arc::new(AuditMetrics::default())).unwrap();
        for i in 0..30 {
            let mut e = Event::new(if i % 7 == 3 { Kind::TaskTokenIssued } else { Kind::Decision });
            e.namespace = Some("agents".into());
            e.agent = Some(if i % 3 == 2 { "other".into() } else { "bot".into() });
            e.task = Some(if i < 15 { "t1".into() } else { "t2".into() });
            e.actor = Some("spiffe://cluster.local/ns/agents/agent/bot".into());
            if e.kind == Kind::Decision {
                e.tool = Some("github.create_issue".into());
                e.action = Some("create".into());
                e.destination = Some(format!("https://api.github.com/repos/acme/r{i}/issues"));
                e.decision = Some(if i % 4 == 0 { "deny".into() } else { "allow".into() });
                e.reasons = vec![if i % 4 == 0 { "destination-not-granted".into() } else { "granted".into() }];
            } else {
                e.decision = Some("issued".into());
                e.credential = Some(trail.fingerprint("the-token"));
            }
            trail.record(e).await.unwrap();
            if i == 9 {
                trail.checkpoint().await.unwrap().unwrap();
            }
        }
        trail.checkpoint().await.unwrap().unwrap();
        let segments: Vec<PathBuf> = (0..).map(|i| trail.segment_path(i)).take_while(|p| p.exists()).collect();
        let out = (segments, trail.checkpoints_path(), trail.public_key().to_string());
        drop(trail);
        writer.await.unwrap();
        out
    });
    Trail { dir: dir.path().to_path_buf(), _dir: dir, segments, checkpoints, public_key }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(String::from).collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(p, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

fn verify(t: &Trail) -> (i32, String, String) {
    agentid(&["audit", "verify", "--checkpoints", s(&t.checkpoints), s(&t.segments[0])])
}

#[test]
fn an_intact_trail_verifies() {
    let t = write_trail(64 << 20);
    assert_eq!(t.segments.len(), 1);
    let (code, out, err) = agentid(&[
        "audit",
        "verify",
        "--checkpoints",
        s(&t.checkpoints),
        "--public-key",
        &t.public_key,
        s(&t.segments[0]),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "INTACT: 30 records in 1 chain(s), 2 checkpoint(s) verified");
    assert!(err.is_empty(), "{err}");
    // No secret in the trail: the token's fingerprint only.
    let text = std::fs::read_to_string(&t.segments[0]).unwrap();
    assert!(!text.contains("the-token"));
}

#[test]
fn rotated_segments_verify_as_one_chain_from_their_directory() {
    let t = write_trail(2_000);
    assert!(t.segments.len() > 2, "{:?}", t.segments);
    let (code, out, err) = agentid(&["audit", "verify", "--checkpoints", s(&t.checkpoints), s(&t.dir)]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("INTACT: 30 records"), "{out}");
    // A whole segment removed: the next one does not link.
    let (code, out, _) =
        agentid(&["audit", "verify", "--checkpoints", s(&t.checkpoints), s(&t.segments[0]), s(&t.segments[2])]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(&format!("TAMPERED: {}:1: ", s(&t.segments[2]))), "{out}");
    assert!(out.contains("deleted"), "{out}");
}

#[test]
fn a_modified_record_is_named() {
    let t = write_trail(64 << 20);
    let mut l = lines(&t.segments[0]);
    assert!(l[5].contains("\"allow\""), "{}", l[5]);
    l[5] = l[5].replace("\"allow\"", "\"deny\"").replace("\"granted\"", "\"destination-not-granted\"");
    write_lines(&t.segments[0], &l);
    let (code, out, err) = verify(&t);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.starts_with(&format!("TAMPERED: {}:6: seq 5: modified:", s(&t.segments[0]))), "{out}");
}

#[test]
fn a_deleted_record_is_named() {
    let t = write_trail(64 << 20);
    let mut l = lines(&t.segments[0]);
    l.remove(12);
    write_lines(&t.segments[0], &l);
    let (code, out, _) = verify(&t);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("TAMPERED: {}:13: seq 13: deleted:", s(&t.segments[0]))), "{out}");
    assert!(out.contains("seq 12 are missing"), "{out}");
}

#[test]
fn an_inserted_record_is_named() {
    let t = write_trail(64 << 20);
    let mut l = lines(&t.segments[0]);
    let copy = l[3].clone();
    l.insert(20, copy);
    write_lines(&t.segments[0], &l);
    let (code, out, _) = verify(&t);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("TAMPERED: {}:21: seq 3: inserted:", s(&t.segments[0]))), "{out}");
}

#[test]
fn reordered_records_are_named() {
    let t = write_trail(64 << 20);
    let mut l = lines(&t.segments[0]);
    l.swap(6, 8);
    write_lines(&t.segments[0], &l);
    let (code, out, _) = verify(&t);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("TAMPERED: {}:7: seq 8: reordered:", s(&t.segments[0]))), "{out}");
}

#[test]
fn truncation_is_detected_against_the_last_checkpoint() {
    let t = write_trail(64 << 20);
    let l = lines(&t.segments[0]);
    write_lines(&t.segments[0], &l[..25]);
    let (code, out, _) = verify(&t);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with(&format!("TAMPERED: {}:26: seq 25: truncated:", s(&t.segments[0]))), "{out}");
    assert!(out.contains("25..29"), "{out}");
    // Without checkpoints the cut goes unnoticed, and verify says it could not tell.
    let (code, out, err) = agentid(&["audit", "verify", s(&t.segments[0])]);
    assert_eq!(code, 0, "{out}");
    assert!(err.contains("truncation of its end cannot be detected"), "{err}");
}

#[test]
fn a_forged_checkpoint_is_refused() {
    let t = write_trail(64 << 20);
    // The trail cut back and the last checkpoint edited to match: its signature no longer verifies.
    let l = lines(&t.segments[0]);
    write_lines(&t.segments[0], &l[..25]);
    let mut cps = lines(&t.checkpoints);
    let mut last: serde_json::Value = serde_json::from_str(cps.last().unwrap()).unwrap();
    let head = agentid::core::audit::Hash::of_line(l[24].as_bytes()).to_hex();
    last["seq"] = 24.into();
    last["head"] = head.into();
    *cps.last_mut().unwrap() = last.to_string();
    write_lines(&t.checkpoints, &cps);
    let (code, out, _) = verify(&t);
    assert_eq!(code, 1, "{out}");
    assert!(out.starts_with("TAMPERED: seq 24: forged-checkpoint:"), "{out}");
    assert!(out.contains("signature does not verify"), "{out}");
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused_when_the_key_is_given() {
    let t = write_trail(64 << 20);
    let other = write_trail(64 << 20);
    let (code, out, _) = agentid(&[
        "audit",
        "verify",
        "--checkpoints",
        s(&t.checkpoints),
        "--public-key",
        &other.public_key,
        s(&t.segments[0]),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("forged-checkpoint: checkpoint"), "{out}");
    assert!(out.contains("another key"), "{out}");
}

#[test]
fn unreadable_input_exits_two() {
    let t = write_trail(64 << 20);
    let (code, _, err) = agentid(&["audit", "verify", "/nonexistent/trail.jsonl"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/trail.jsonl"), "{err}");
    std::fs::write(&t.checkpoints, "garbage\n").unwrap();
    let (code, _, err) = verify(&t);
    assert_eq!(code, 2);
    assert!(err.contains(":1: not a checkpoint"), "{err}");
}

#[test]
fn verify_speaks_json() {
    let t = write_trail(64 << 20);
    let mut l = lines(&t.segments[0]);
    l.remove(3);
    write_lines(&t.segments[0], &l);
    let (code, out, _) =
        agentid(&["audit", "verify", "-o", "json", "--checkpoints", s(&t.checkpoints), s(&t.segments[0])]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["intact"], false);
    assert_eq!(v["findings"][0]["kind"], "deleted");
    assert_eq!(v["findings"][0]["seq"], 4);
    assert_eq!(v["findings"][0]["location"]["line"], 4);
}

#[test]
fn the_timeline_shows_what_one_agent_did() {
    let t = write_trail(2_000);
    let (code, out, err) = agentid(&["audit", "timeline", "--agent", "agents/bot", s(&t.dir)]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 20, "{out}");
    let mut sorted = rows.clone();
    sorted.sort();
    assert_eq!(rows, sorted, "chronological");
    assert!(rows[0].contains("decision            deny  github.create_issue create https://api.github.com/repos/acme/r0/issues  task=t1  reasons=destination-not-granted"), "{}", rows[0]);
    assert!(
        rows.iter().any(|r| r.contains("task-token-issued   issued  task=t1") && r.contains("credential=")),
        "{out}"
    );
    assert!(!out.contains("/r2/"), "agents/other's records are not shown");

    let (code, out, _) = agentid(&[
        "audit",
        "timeline",
        "--agent",
        "agents/bot",
        "--task",
        "t2",
        "--since",
        "1h",
        "-o",
        "json",
        s(&t.dir),
    ]);
    assert_eq!(code, 0);
    let recs: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(recs.len(), 10);
    assert!(recs.iter().all(|r| r["task"] == "t2" && r["agent"] == "bot"));

    let (code, _, err) = agentid(&["audit", "timeline", "--agent", "bot", s(&t.dir)]);
    assert_eq!(code, 2);
    assert!(err.contains("NAMESPACE/NAME"), "{err}");
    let (code, _, _) = agentid(&["audit", "timeline", "--agent", "agents/bot", "/nonexistent"]);
    assert_eq!(code, 2);
}
