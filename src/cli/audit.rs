//! `agentid audit`: check the audit trail and read it.
//!
//! * `agentid audit verify FILES... [--checkpoints FILE|cluster]`: recomputes the chain and checks every
//!   checkpoint. Exit 0 intact, 1 tampered (the first bad record is named), 2 unreadable input.
//! * `agentid audit timeline --agent NS/NAME [--task T] [--since 24h] [-o text|json] FILES...`: what the
//!   agent did and was refused, chronologically, one line per event. Exit 0, or 2 for unreadable input.
//!
//! A directory among FILES stands for its `*.jsonl` segments, in name order (which is chain order).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::core::audit::timeline::{self, Filter, Joined, Merge};
use crate::core::audit::{Checkpoint, Record, Report, Verifier, VerifyOptions};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct AuditArgs {
    #[command(subcommand)]
    pub command: AuditCommand,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum AuditCommand {
    /// Recompute the hash chain and check the signed checkpoints (exit 0 intact, 1 tampered, 2 unreadable).
    Verify(VerifyArgs),
    /// Everything one agent did and was refused, in time order.
    Timeline(TimelineArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct VerifyArgs {
    /// Checkpoints: a checkpoints file (JSON lines, `<chain>.checkpoints`), or `cluster` for the
    /// AuditCheckpoint objects in --namespace. Repeatable. Without checkpoints, truncation of a chain's end
    /// cannot be detected.
    #[arg(long)]
    pub checkpoints: Vec<String>,
    /// Namespace of the AuditCheckpoints (`--checkpoints cluster`).
    #[arg(long, default_value = "agentid-system")]
    pub namespace: String,
    /// The Ed25519 public key (base64) every checkpoint must be signed by.
    #[arg(long)]
    pub public_key: Option<String>,
    /// Accept chains whose first record given is not seq 0 (older segments deleted by retention).
    #[arg(long)]
    pub partial: bool,
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
    /// Trail segments, in chain order (or directories of them).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TimelineArgs {
    /// The agent: `NAMESPACE/NAME`.
    #[arg(long)]
    pub agent: String,
    /// Only this AgentTask.
    #[arg(long)]
    pub task: Option<String>,
    /// Only the last this long (e.g. `24h`, `90m`).
    #[arg(long)]
    pub since: Option<String>,
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
    /// Trail segments of any number of replicas (or directories of them).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs `agentid audit ...`; returns the exit code.
pub fn run(args: &AuditArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match &args.command {
        AuditCommand::Verify(a) => verify(a, out, err),
        AuditCommand::Timeline(a) => timeline(a, out, err),
    }
}

/// FILES with directories expanded to their `*.jsonl`, sorted.
pub(crate) fn expand(files: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut all = Vec::new();
    for f in files {
        if f.is_dir() {
            let mut segs: Vec<PathBuf> = std::fs::read_dir(f)
                .map_err(|e| format!("{}: {e}", f.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
                .collect();
            segs.sort();
            all.extend(segs);
        } else {
            all.push(f.clone());
        }
    }
    Ok(all)
}

/// Reads `path` line by line: `(1-based line, bytes without newline, terminated by a newline)`.
pub(crate) fn each_line(path: &Path, mut f: impl FnMut(u64, &[u8], bool)) -> Result<(), String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::with_capacity(1024);
    let mut n = 0u64;
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf).map_err(|e| format!("{}: {e}", path.display()))?;
        if got == 0 {
            return Ok(());
        }
        n += 1;
        let terminated = buf.last() == Some(&b'\n');
        if terminated {
            buf.pop();
        }
        f(n, &buf, terminated);
    }
}

fn load_checkpoints(args: &VerifyArgs) -> Result<Vec<(Checkpoint, String)>, String> {
    let mut all = Vec::new();
    for source in &args.checkpoints {
        if source == "cluster" {
            all.extend(cluster_checkpoints(&args.namespace)?);
            continue;
        }
        let path = Path::new(source);
        let mut bad = None;
        each_line(path, |n, line, _| {
            if bad.is_some() || line.iter().all(u8::is_ascii_whitespace) {
                return;
            }
            match serde_json::from_slice::<Checkpoint>(line) {
                Ok(cp) => all.push((cp, format!("{}:{n}", path.display()))),
                Err(e) => bad = Some(format!("{}:{n}: not a checkpoint: {e}", path.display())),
            }
        })?;
        if let Some(b) = bad {
            return Err(b);
        }
    }
    Ok(all)
}

fn cluster_checkpoints(namespace: &str) -> Result<Vec<(Checkpoint, String)>, String> {
    super::with_cluster(|client| async move {
        let api: kube::Api<crate::api::AuditCheckpoint> = kube::Api::namespaced(client, namespace);
        let list = api
            .list(&kube::api::ListParams::default())
            .await
            .map_err(|e| format!("cannot list AuditCheckpoints in {namespace}: {e}"))?;
        Ok(list
            .items
            .into_iter()
            .map(|o| {
                let name = format!("AuditCheckpoint {namespace}/{}", o.metadata.name.as_deref().unwrap_or(""));
                (o.spec.to_checkpoint(), name)
            })
            .collect())
    })
}

/// Verifies `files` against `checkpoints`: the report, or why the input could not be read.
pub fn verify_files(
    files: &[PathBuf],
    checkpoints: &[(Checkpoint, String)],
    options: VerifyOptions,
) -> Result<Report, String> {
    let mut v = Verifier::new(options);
    for (cp, source) in checkpoints {
        v.add_checkpoint(cp, source);
    }
    for f in files {
        v.begin_file(&f.display().to_string());
        each_line(f, |n, line, terminated| v.push(n, line, terminated))?;
    }
    Ok(v.finish())
}

fn verify(args: &VerifyArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let input = expand(&args.files).and_then(|files| Ok((files, load_checkpoints(args)?)));
    let (files, checkpoints) = match input {
        Ok(x) => x,
        Err(e) => {
            let _ = writeln!(err, "agentid audit verify: {e}");
            return 2;
        }
    };
    let options = VerifyOptions { partial: args.partial, trusted_key: args.public_key.clone() };
    let report = match verify_files(&files, &checkpoints, options) {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "agentid audit verify: {e}");
            return 2;
        }
    };
    let _ = match args.output {
        Output::Json => {
            let mut v = serde_json::to_value(&report).unwrap_or_default();
            v["intact"] = serde_json::Value::Bool(report.intact());
            writeln!(out, "{v}")
        }
        Output::Text => print_report(&report, out),
    };
    for w in &report.warnings {
        let _ = writeln!(err, "warning: {w}");
    }
    if report.intact() { 0 } else { 1 }
}

fn print_report(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let summary = format!(
        "{} records in {} chain(s), {} checkpoint(s) verified{}",
        r.records,
        r.chains,
        r.checkpoints_verified,
        if r.checkpoints_not_covered > 0 {
            format!(", {} not covered by these files", r.checkpoints_not_covered)
        } else {
            String::new()
        }
    );
    match r.findings.first() {
        None => writeln!(out, "INTACT: {summary}"),
        Some(first) => {
            writeln!(out, "TAMPERED: {first}")?;
            for f in &r.findings[1..] {
                writeln!(out, "  also: {f}")?;
            }
            writeln!(out, "({summary})")
        }
    }
}

/// The records of one chain, from its files in order, filtered.
struct ChainRecords {
    files: Vec<PathBuf>,
    next_file: usize,
    reader: Option<BufReader<File>>,
    buf: Vec<u8>,
    filter: Filter,
    needle: String,
    errors: std::rc::Rc<std::cell::RefCell<Vec<String>>>,
}

impl Iterator for ChainRecords {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        loop {
            let Some(reader) = self.reader.as_mut() else {
                let path = self.files.get(self.next_file)?.clone();
                self.next_file += 1;
                match File::open(&path) {
                    Ok(f) => self.reader = Some(BufReader::with_capacity(1 << 16, f)),
                    Err(e) => self.errors.borrow_mut().push(format!("{}: {e}", path.display())),
                }
                continue;
            };
            self.buf.clear();
            match reader.read_until(b'\n', &mut self.buf) {
                Ok(0) => {
                    self.reader = None;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let name = self.files.get(self.next_file - 1).map(|p| p.display().to_string());
                    self.errors.borrow_mut().push(format!("{}: {e}", name.unwrap_or_default()));
                    self.reader = None;
                    continue;
                }
            }
            // Cheap pre-filter before parsing: the agent's name must be on the line.
            let Ok(line) = std::str::from_utf8(&self.buf) else { continue };
            if !line.contains(&self.needle) {
                continue;
            }
            if let Ok(r) = serde_json::from_str::<Record>(line.trim_end())
                && self.filter.matches(&r)
            {
                return Some(r);
            }
        }
    }
}

/// The first record of a file: its chain and first seq (to order a chain's segments).
fn first_record(path: &Path) -> Result<Option<(String, u64)>, String> {
    let file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut line = String::new();
    BufReader::new(file).read_line(&mut line).map_err(|e| format!("{}: {e}", path.display()))?;
    if line.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str::<Record>(line.trim_end()) {
        Ok(r) => Ok(Some((r.chain, r.seq))),
        Err(e) => Err(format!("{}:1: not an audit record: {e}", path.display())),
    }
}

fn timeline(args: &TimelineArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match timeline_inner(args, out, Timestamp::now()) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "agentid audit timeline: {e}");
            2
        }
    }
}

/// The timeline of `args` as of `now`, written to `out`.
pub fn timeline_inner(args: &TimelineArgs, out: &mut dyn Write, now: Timestamp) -> Result<(), String> {
    let (namespace, agent) =
        Filter::parse_agent(&args.agent).ok_or_else(|| format!("--agent {:?}: expected NAMESPACE/NAME", args.agent))?;
    let since = match &args.since {
        None => None,
        Some(s) => {
            let d =
                crate::api::duration::parse(&super::report::days_as_hours(s)).map_err(|e| format!("--since: {e}"))?;
            let d = SignedDuration::try_from(d).map_err(|e| format!("--since: {e}"))?;
            let t = now.checked_sub(d).map_err(|e| format!("--since: {e}"))?;
            Some(format!("{t:.6}"))
        }
    };
    let filter = Filter { namespace, agent: agent.clone(), task: args.task.clone(), since };
    // Group the files by chain, each chain's segments by their first seq.
    let mut chains: std::collections::BTreeMap<String, Vec<(u64, PathBuf)>> = Default::default();
    for f in expand(&args.files)? {
        if let Some((chain, seq)) = first_record(&f)? {
            chains.entry(chain).or_default().push((seq, f));
        }
    }
    let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let streams: Vec<ChainRecords> = chains
        .into_values()
        .map(|mut files| {
            files.sort();
            ChainRecords {
                files: files.into_iter().map(|(_, f)| f).collect(),
                next_file: 0,
                reader: None,
                buf: Vec::with_capacity(1024),
                // Task and time are filtered after the join (an API call names no task of its own).
                filter: Filter { task: None, since: None, ..filter.clone() },
                needle: format!("\"agent\":{}", serde_json::Value::String(agent.clone())),
                errors: errors.clone(),
            }
        })
        .collect();
    let mut w = std::io::BufWriter::with_capacity(1 << 16, out);
    for r in Joined::new(Merge::new(streams), filter) {
        let res = match args.output {
            Output::Text => writeln!(w, "{}", timeline::text_line(&r)),
            Output::Json => {
                let mut line = r.canonical();
                line.push(b'\n');
                w.write_all(&line)
            }
        };
        res.map_err(|e| format!("cannot write the output: {e}"))?;
    }
    w.flush().map_err(|e| format!("cannot write the output: {e}"))?;
    let errors = errors.borrow();
    match errors.first() {
        Some(e) => Err(e.clone()),
        None => Ok(()),
    }
}
