//! `agentid check`: the admission rules and the grant lint, offline, for GitOps CI and pre-commit.
//! A thin shell over [`crate::core::admission::offline`]: reads files (or standard input for `-`) and
//! writes the report as it goes.
//!
//! Exit codes: 0 nothing denied, 1 something denied, 2 unreadable or invalid input.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::api::duration;
use crate::core::admission::exceptions::ExceptionSet;
use crate::core::admission::lint::LintConfig;
use crate::core::admission::offline::{
    self, CheckOptions, CheckResult, Checker, Document, InputError, Level, SARIF_TAIL, Subject,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// `file:line:col: level: message`, one line per finding, then a summary.
    Text,
    /// `{"results": [...], "summary": {...}}`: every judged object with its findings.
    Json,
    /// SARIF 2.1.0 (code scanning).
    Sarif,
    /// GitHub Actions annotations (`::error file=…,line=…,col=…::message`).
    Github,
    /// JUnit XML: one test case per judged object.
    Junit,
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
    /// Findings of the AgentIdentity/ToolGrant lint are errors (exit 1) instead of warnings.
    #[arg(long)]
    pub strict: bool,
    /// Longest validity of a ToolGrant before `grant-too-long` (a duration such as 168h).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub max_grant_duration: Duration,
    /// File name reported for standard input (`-`), e.g. the file the manifests were rendered from.
    #[arg(long, default_value = "-")]
    pub stdin_name: String,
    /// YAML or JSON files, directories (searched recursively for .yaml, .yml and .json), or `-` for
    /// standard input (multi-document, as `helm template` and `kustomize build` print).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    duration::parse(s).map_err(|e| e.to_string())
}

fn is_stdin(p: &Path) -> bool {
    p.as_os_str() == "-"
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

fn read_stdin() -> Result<String, String> {
    let mut text = String::new();
    std::io::stdin().lock().read_to_string(&mut text).map_err(|e| format!("cannot read standard input: {e}"))?;
    Ok(text)
}

/// Every object in `paths` (files, directories searched recursively, `-` for standard input);
/// unreadable input goes to `errors`.
pub fn read_documents(paths: &[PathBuf], errors: &mut Vec<InputError>) -> Vec<Document> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files, errors);
    }
    let mut docs: Vec<Document> = Vec::new();
    for f in &files {
        let name = f.display().to_string();
        let text = if is_stdin(f) {
            read_stdin()
        } else {
            std::fs::read_to_string(f).map_err(|e| format!("cannot read: {e}"))
        };
        match text {
            Ok(text) => match offline::parse_file(&name, &text) {
                Ok(d) => docs.extend(d),
                Err(e) => errors.push(e),
            },
            Err(message) => errors.push(InputError { file: name, line: None, message }),
        }
    }
    docs
}

/// Counts for the summary and the exit code.
#[derive(Debug, Default)]
struct Stats {
    workloads: usize,
    denied: usize,
    linted: usize,
    errors: usize,
    warnings: usize,
    results: usize,
}

/// Writes results as they come.
struct Report<'a> {
    out: &'a mut dyn Write,
    format: Output,
    stats: Stats,
    /// JUnit needs the counts before its test cases.
    junit: String,
    sarif_results: usize,
    failed: Option<std::io::Error>,
}

impl Report<'_> {
    fn begin(&mut self) -> std::io::Result<()> {
        match self.format {
            Output::Json => self.out.write_all(b"{\"results\": ["),
            Output::Sarif => self.out.write_all(offline::sarif_head(env!("CARGO_PKG_VERSION")).as_bytes()),
            Output::Text | Output::Github | Output::Junit => Ok(()),
        }
    }

    fn result(&mut self, r: &CheckResult) {
        if self.failed.is_some() {
            return;
        }
        if let Err(e) = self.write_result(r) {
            self.failed = Some(e);
        }
    }

    fn write_result(&mut self, r: &CheckResult) -> std::io::Result<()> {
        let first = self.stats.results == 0;
        let s = &mut self.stats;
        s.results += 1;
        match r.subject {
            Subject::Workload => s.workloads += 1,
            Subject::Grant => s.linted += 1,
        }
        if r.subject == Subject::Workload && r.verdict == "deny" {
            s.denied += 1;
        }
        for f in &r.violations {
            match f.level {
                Level::Error => s.errors += 1,
                Level::Warning => s.warnings += 1,
            }
        }
        match self.format {
            Output::Text => {
                for f in &r.violations {
                    writeln!(self.out, "{}: {}: {}", at(&r.file, f.line, f.column), f.level.as_str(), f.message)?;
                }
                for w in &r.exceptions {
                    let u = &w.waiver;
                    writeln!(
                        self.out,
                        "{}: waived: [agentid/{}] {} by exception {:?}: {}",
                        at(&r.file, w.line, w.column),
                        u.rule,
                        u.path,
                        u.exception,
                        u.reason
                    )?;
                }
                Ok(())
            }
            Output::Json => {
                self.out.write_all(if first { b"\n" } else { b",\n" })?;
                serde_json::to_writer(&mut *self.out, r).map_err(std::io::Error::other)
            }
            Output::Sarif => {
                for f in &r.violations {
                    if self.sarif_results > 0 {
                        self.out.write_all(b",")?;
                    }
                    self.sarif_results += 1;
                    serde_json::to_writer(&mut *self.out, &offline::sarif_result(r, f))
                        .map_err(std::io::Error::other)?;
                }
                Ok(())
            }
            Output::Github => {
                for f in &r.violations {
                    writeln!(self.out, "{}", offline::github_annotation(r, f))?;
                }
                Ok(())
            }
            Output::Junit => {
                junit_case(&mut self.junit, r);
                Ok(())
            }
        }
    }

    fn end(&mut self, errors: &[InputError]) -> std::io::Result<()> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let s = &self.stats;
        match self.format {
            Output::Text => writeln!(
                self.out,
                "{} workload(s) checked, {} denied; {} AgentIdentity/ToolGrant object(s) linted; {} error(s), {} warning(s)",
                s.workloads, s.denied, s.linted, s.errors, s.warnings
            ),
            Output::Json => {
                let summary = serde_json::json!({
                    "workloads": s.workloads, "denied": s.denied, "linted": s.linted,
                    "errors": s.errors, "warnings": s.warnings, "inputErrors": errors,
                });
                writeln!(self.out, "\n], \"summary\": {summary}}}")
            }
            Output::Sarif => writeln!(self.out, "{SARIF_TAIL}"),
            Output::Github => {
                for e in errors {
                    let mut props = format!("file={}", offline::github_escape(&e.file, true));
                    if let Some(l) = e.line {
                        props.push_str(&format!(",line={l}"));
                    }
                    writeln!(self.out, "::error {props}::{}", offline::github_escape(&e.message, false))?;
                }
                Ok(())
            }
            Output::Junit => {
                let mut body = std::mem::take(&mut self.junit);
                for e in errors {
                    body.push_str(&format!(
                        "    <testcase classname=\"{}\" name=\"input\"><error message=\"{}\"/></testcase>\n",
                        xml(&e.file),
                        xml(&e.to_string())
                    ));
                }
                let failed_cases = body.matches("<failure ").count();
                write!(
                    self.out,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"agentid check\" tests=\"{t}\" failures=\"{f}\" errors=\"{e}\">\n  <testsuite name=\"agentid check\" tests=\"{t}\" failures=\"{f}\" errors=\"{e}\">\n{body}  </testsuite>\n</testsuites>\n",
                    t = s.results + errors.len(),
                    f = failed_cases,
                    e = errors.len(),
                )
            }
        }
    }
}

fn at(file: &str, line: usize, column: Option<usize>) -> String {
    match column {
        Some(c) => format!("{file}:{line}:{c}"),
        None => format!("{file}:{line}"),
    }
}

fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && !matches!(c, '\n' | '\t' | '\r') => {}
            c => out.push(c),
        }
    }
    out
}

fn junit_case(body: &mut String, r: &CheckResult) {
    let name = format!("{} {}/{}", r.kind, r.namespace, r.name);
    body.push_str(&format!(
        "    <testcase classname=\"{}\" name=\"{}\" file=\"{}\" line=\"{}\">\n",
        xml(&r.file),
        xml(&name),
        xml(&r.file),
        r.line
    ));
    let errors: Vec<_> = r.violations.iter().filter(|f| f.level == Level::Error).collect();
    if let Some(first) = errors.first() {
        let text: Vec<String> =
            errors.iter().map(|f| format!("{}: {}", at(&r.file, f.line, f.column), f.message)).collect();
        body.push_str(&format!(
            "      <failure type=\"{}\" message=\"{}\">{}</failure>\n",
            first.rule,
            xml(&first.message),
            xml(&text.join("\n"))
        ));
    }
    let warnings: Vec<String> = r
        .violations
        .iter()
        .filter(|f| f.level == Level::Warning)
        .map(|f| format!("warning: {}: {}", at(&r.file, f.line, f.column), f.message))
        .collect();
    if !warnings.is_empty() {
        body.push_str(&format!("      <system-out>{}</system-out>\n", xml(&warnings.join("\n"))));
    }
    body.push_str("    </testcase>\n");
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
    let mut files = Vec::new();
    for p in &args.paths {
        collect(p, &mut files, &mut errors);
    }
    // Standard input can be read only once: keep it for the second pass. Files are read again.
    let mut stdin: Option<Result<String, String>> = None;
    if files.iter().any(|f| is_stdin(f)) {
        stdin = Some(read_stdin());
    }

    // First pass: the agents of the whole input.
    let mut agents = Vec::new();
    for f in &files {
        if is_stdin(f) {
            if let Some(Ok(text)) = &stdin {
                offline::agents_in(text, &mut agents);
            }
        } else if let Ok(text) = std::fs::read_to_string(f) {
            offline::agents_in(&text, &mut agents);
        }
    }
    let options = CheckOptions {
        default_namespace: args.namespace.clone(),
        exceptions,
        strict: args.strict,
        lint: LintConfig { max_grant_duration: args.max_grant_duration },
    };
    let checker = Checker::new(&agents, options, Timestamp::now());
    drop(agents);

    // Second pass: judge and report one document after the other.
    let mut report = Report {
        out,
        format: args.output,
        stats: Stats::default(),
        junit: String::new(),
        sarif_results: 0,
        failed: None,
    };
    if let Err(e) = report.begin() {
        let _ = writeln!(err, "agentid check: cannot write the report: {e}");
        return 2;
    }
    let mut stdin_done = false;
    for f in &files {
        let (name, text) = if is_stdin(f) {
            if stdin_done {
                continue;
            }
            stdin_done = true;
            (args.stdin_name.clone(), stdin.take().unwrap_or_else(|| Ok(String::new())))
        } else {
            (f.display().to_string(), std::fs::read_to_string(f).map_err(|e| format!("cannot read: {e}")))
        };
        match text {
            Ok(text) => offline::check_text(&checker, &name, &text, &mut |r| report.result(&r), &mut errors),
            Err(message) => errors.push(InputError { file: name, line: None, message }),
        }
    }
    if let Err(e) = report.end(&errors) {
        let _ = writeln!(err, "agentid check: cannot write the report: {e}");
        return 2;
    }
    for e in &errors {
        let _ = writeln!(err, "agentid check: {e}");
    }
    if !errors.is_empty() {
        2
    } else if report.stats.errors > 0 {
        1
    } else {
        0
    }
}
