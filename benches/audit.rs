//! Cost of the audit trail: append (amortised, through the buffered writer and the pure chain alone),
//! `audit verify` throughput, and `audit timeline` over 1,000,000 records (two writers, half the
//! records of the agent asked about) and `agentid report` over the same records, printed as a table at the end.
//! `cargo bench --bench audit -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group};

use agentid::audit::{AuditConfig, AuditKeys, AuditMetrics, AuditTrail, FsyncPolicy};
use agentid::cli::audit::{Output, TimelineArgs, timeline_inner, verify_files};
use agentid::core::audit::{Chain, Event, Kind, Verifier, VerifyOptions};

/// A decision as the decision point records it.
fn event(i: u64) -> Event {
    let mut e = Event::new(Kind::Decision);
    e.actor = Some("spiffe://cluster.local/ns/agents/agent/triage-bot".into());
    e.namespace = Some("agents".into());
    e.agent = Some(if i.is_multiple_of(2) { "triage-bot".into() } else { "billing-bot".into() });
    e.task = Some(format!("task-{}", i / 1000));
    e.tool = Some("github.create_issue".into());
    e.action = Some("create".into());
    e.destination = Some("https://api.github.com/repos/acme/payments/issues".into());
    e.decision = Some("allow".into());
    e.reasons = vec!["granted".into()];
    e.grant = Some("triage-bot-tools".into());
    e.request = Some("9f2c4e7a1b3d5f6e8a0c2e4f6a8b0c2d".into());
    e.credential = Some("0d1e2f3a-4b5c-6d7e-8f90-a1b2c3d4e5f6".into());
    e
}

fn lines(n: u64) -> Vec<Vec<u8>> {
    let mut c = Chain::new("bench-1700000000-0001", "agentid-0");
    let mut out = Vec::new();
    for i in 0..n {
        c.append(event(i), format!("{i:032x}"), format!("2026-01-01T00:00:00.{:06}Z", i % 1_000_000), &mut out);
    }
    out.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("audit_append");
    g.throughput(Throughput::Elements(1));
    // The pure part: canonical JSON and SHA-256 of one record.
    g.bench_function("chain_only", |b| {
        let mut chain = Chain::new("bench", "r");
        let mut out = Vec::with_capacity(1 << 20);
        b.iter_batched_ref(
            || event(1),
            |e| {
                if out.len() > 1 << 20 {
                    out.clear();
                }
                chain.append(
                    e.clone(),
                    "0123456789abcdef0123456789abcdef".into(),
                    "2026-01-01T00:00:00.000000Z".into(),
                    &mut out,
                )
            },
            BatchSize::SmallInput,
        )
    });
    // Through the writer: try_record from the caller, batched writes to the file, checkpoints every 10,000
    // records; amortised over 20,000 records per iteration (waits until they are on disk).
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = AuditConfig::new(dir.path(), "bench");
    cfg.fsync = FsyncPolicy::MustRecord;
    cfg.queue = 1 << 16;
    let trail = rt.block_on(async {
        AuditTrail::open(cfg, AuditKeys::generate().unwrap().0, None, Arc::new(AuditMetrics::default())).unwrap().0
    });
    const N: u64 = 20_000;
    g.bench_function("writer_try_record_amortised", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters.div_ceil(N) {
                let events: Vec<Event> = (0..N).map(event).collect();
                let start = Instant::now();
                rt.block_on(async {
                    for e in events {
                        while !trail.try_record(e.clone()) {
                            tokio::task::yield_now().await;
                        }
                    }
                    trail.checkpoint().await.unwrap();
                });
                total += start.elapsed();
            }
            total.mul_f64(iters as f64 / (iters.div_ceil(N) * N) as f64)
        })
    });
    g.finish();
}

fn verify(c: &mut Criterion) {
    let l = lines(100_000);
    let mut g = c.benchmark_group("audit_verify");
    g.throughput(Throughput::Elements(l.len() as u64));
    g.sample_size(10);
    g.bench_function("100k_records_in_memory", |b| {
        b.iter(|| {
            let mut v = Verifier::new(VerifyOptions::default());
            v.begin_file("bench");
            for (i, x) in l.iter().enumerate() {
                v.push(i as u64 + 1, x, true);
            }
            black_box(v.finish())
        })
    });
    g.finish();
}

/// 1,000,000 records from two writers into `dir`; returns the files.
fn write_million(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for w in 0..2u64 {
        let chain = format!("agentid-{w}-1700000000-0001");
        let path = dir.join(format!("{chain}.000000.jsonl"));
        let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
        let mut c = Chain::new(chain, format!("agentid-{w}"));
        let mut out = Vec::with_capacity(1 << 16);
        for i in 0..500_000u64 {
            let t = i * 2 + w;
            let time = format!(
                "2026-01-01T{:02}:{:02}:{:02}.{:06}Z",
                t / 3_600_000_000 % 24,
                t / 60_000_000 % 60,
                t / 1_000_000 % 60,
                t % 1_000_000
            );
            c.append(event(i), format!("{t:032x}"), time, &mut out);
            if out.len() > 60_000 {
                f.write_all(&out).unwrap();
                out.clear();
            }
        }
        f.write_all(&out).unwrap();
        f.flush().unwrap();
        files.push(path);
    }
    files
}

fn table() {
    let dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let files = write_million(dir.path());
    let written = t.elapsed();
    let size: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();

    let t = Instant::now();
    let report = verify_files(&files, &[], VerifyOptions::default()).unwrap();
    let verify = t.elapsed();
    assert!(report.intact() && report.records == 1_000_000, "{report:?}");

    let args = |output| TimelineArgs {
        agent: "agents/triage-bot".into(),
        task: None,
        since: None,
        output,
        files: vec![dir.path().to_path_buf()],
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut timings = Vec::new();
    for output in [Output::Text, Output::Json] {
        let mut sink = CountingSink::default();
        let t = Instant::now();
        timeline_inner(&args(output), &mut sink, now).unwrap();
        timings.push((output, t.elapsed(), sink.lines));
    }
    // The least-privilege report over the same million records (fold + build + render as text).
    let t = Instant::now();
    let (usage, _) = agentid::cli::report::fold(&[dir.path().to_path_buf()], None).unwrap();
    let inventory = report_inventory();
    let r = agentid::core::report::build(&inventory, &usage, None, "2026-01-02T00:00:00Z");
    let text = agentid::core::report::render::text(&r);
    let report_took = t.elapsed();
    assert!(text.contains("triage-bot") && usage.records == 1_000_000, "{text}");
    println!();
    println!("| 1,000,000 records ({:.0} MB, 2 writers) | time | rate |", size as f64 / 1e6);
    println!("|---|---|---|");
    println!(
        "| write (pure chain + buffered file) | {:.2} s | {:.0} records/s |",
        written.as_secs_f64(),
        1e6 / written.as_secs_f64()
    );
    println!(
        "| audit verify (files, no checkpoints) | {:.2} s | {:.0} records/s |",
        verify.as_secs_f64(),
        1e6 / verify.as_secs_f64()
    );
    println!(
        "| agentid report (fold 1,000,000 records, build, text) | {:.2} s | {:.0} records/s |",
        report_took.as_secs_f64(),
        1e6 / report_took.as_secs_f64()
    );
    for (output, took, n) in timings {
        println!(
            "| audit timeline -o {output:?} ({n} lines) | {:.2} s | {:.0} records/s |",
            took.as_secs_f64(),
            1e6 / took.as_secs_f64()
        );
    }
}

/// The two agents of the bench's records and the grant their decisions name.
fn report_inventory() -> agentid::core::report::Inventory {
    fn yaml<T: serde::de::DeserializeOwned>(y: &str) -> T {
        serde_norway::from_str(y).unwrap()
    }
    agentid::core::report::Inventory {
        agents: ["triage-bot", "billing-bot"]
            .iter()
            .map(|n| {
                yaml(&format!(
                    "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {{name: {n}, namespace: agents}}\nspec: {{owner: team, audiences: [a]}}"
                ))
            })
            .collect(),
        grants: vec![yaml(
            "apiVersion: agentid.dev/v1alpha1\nkind: ToolGrant\nmetadata: {name: triage-bot-tools, namespace: agents}\nspec: {agentRef: {name: triage-bot}, tools: [{name: github.create_issue, actions: [create, close], destinations: ['https://api.github.com/repos/acme/'], maxDataSensitivity: internal}]}",
        )],
        tasks: vec![],
        namespaces: vec![("agents".into(), Some("enforce".into()))],
    }
}

#[derive(Default)]
struct CountingSink {
    lines: u64,
}

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

criterion_group!(benches, append, verify);

fn main() {
    benches();
    criterion::Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    table();
}
