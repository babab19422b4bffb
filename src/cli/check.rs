//! `agentid check`: the admission rules, offline, for GitOps CI and pre-commit.
//!
//! Exit codes: 0 nothing denied, 1 something denied, 2 unreadable or invalid input.

use std::io::Write;
use std::path::{Path, PathBuf};

use k8s_openapi::jiff::Timestamp;

use crate::core::admission::exceptions::ExceptionSet;
use crate::core::admission::offline::{self, CheckResult, Document, InputError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
    Sarif,
}

#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
    /// Namespace of objects that do not name one.
    #[arg(long, short, default_value = "default")]
    pub namespace: String,
    /// Admission exceptions file (the same format `agentid run --exceptions-file` takes).
    #[arg(long)]
    pub exceptions: Option<PathBuf>,
    /// YAML or JSON files, or directories (searched recursively for .yaml, .yml and .json).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn collect(path: &Path, out: &mut Vec<PathBuf>, errors: &mut Vec<InputError>) {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
            Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => {
                errors.push(InputError {
                    file: path.display().to_string(),
                    line: None,
                    message: format!("cannot read directory: {e}"),
                });
                return;
            }
        };
        entries.sort();
        for p in entries {
            let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir()
                || p.extension().and_then(|e| e.to_str()).is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
            {
                collect(&p, out, errors);
            }
        }
    } else {
        out.push(path.to_path_buf());
    }
}

/// Every object in `paths` (files, or directories searched recursively); unreadable input goes to `errors`.
pub fn read_documents(paths: &[PathBuf], errors: &mut Vec<InputError>) -> Vec<Document> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files, errors);
    }
    let mut docs: Vec<Document> = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        match std::fs::read_to_string(f) {
            Ok(text) => match offline::parse_file(&name, &text) {
                Ok(d) => docs.extend(d),
                Err(e) => errors.push(e),
            },
            Err(e) => errors.push(InputError { file: name, line: None, message: format!("cannot read: {e}") }),
        }
    }
    docs
}

/// Runs the check and writes the report to `out`; returns the exit code.
pub fn run(args: &CheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut errors = Vec::new();
    let exceptions = match &args.exceptions {
        None => ExceptionSet::default(),
        Some(p) => match std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| ExceptionSet::parse(&t)) {
            Ok(set) => set,
            Err(e) => {
                let _ = writeln!(err, "agentid check: {}: {e}", p.display());
                return 2;
            }
        },
    };
    let docs = read_documents(&args.paths, &mut errors);
    let (results, judge_errors) = offline::check(&docs, &args.namespace, &exceptions, Timestamp::now());
    errors.extend(judge_errors);

    let written = match args.output {
        Output::Text => write_text(out, &results),
        Output::Json => serde_json::to_writer_pretty(&mut *out, &Report { results: &results })
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out)),
        Output::Sarif => serde_json::to_writer_pretty(&mut *out, &offline::sarif(&results, env!("CARGO_PKG_VERSION")))
            .map_err(std::io::Error::other)
            .and_then(|_| writeln!(out)),
    };
    if let Err(e) = written {
        let _ = writeln!(err, "agentid check: cannot write the report: {e}");
        return 2;
    }
    for e in &errors {
        let _ = writeln!(err, "agentid check: {e}");
    }
    if !errors.is_empty() {
        2
    } else if results.iter().any(|r| r.verdict == "deny") {
        1
    } else {
        0
    }
}

#[derive(serde::Serialize)]
struct Report<'a> {
    results: &'a [CheckResult],
}

fn write_text(out: &mut dyn Write, results: &[CheckResult]) -> std::io::Result<()> {
    let denied = results.iter().filter(|r| r.verdict == "deny").count();
    for r in results {
        if r.verdict == "allow" {
            continue;
        }
        writeln!(out, "{}:{}: {} {}/{}: {}", r.file, r.line, r.kind, r.namespace, r.name, r.verdict.to_uppercase())?;
        for v in &r.violations {
            writeln!(out, "  {}", v.message)?;
        }
        for u in &r.exceptions {
            writeln!(out, "  [agentid/{}] {} waived by exception {:?}: {}", u.rule, u.path, u.exception, u.reason)?;
        }
    }
    writeln!(out, "{} workload(s) checked, {} denied", results.len(), denied)
}
