//! `agentid check`: the admission rules over manifests instead of requests, and the lint of the
//! AgentIdentities and ToolGrants among them. Pure: callers read the files; this module parses text,
//! judges and locates every finding at the line and column of the field it names.
//!
//! Judging is two passes over the text so that input of any size is judged one document at a time:
//! [`agents_in`] collects the AgentIdentities (the known agents, which a workload anywhere in the input
//! may name), then [`check_text`] parses, judges and hands over one document after the other. Only the
//! documents that can hold an AgentIdentity are parsed in the first pass.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::exceptions::{ExceptionSet, ExceptionUse};
use super::lint::{self, LintConfig, LintRule};
use super::locate::{Locator, Position, Segment};
use super::rules::{AgentDirectory, RuleId, StaticDirectory, evaluate};
use super::workload::{from_object, redact};
use crate::api::{AgentIdentity, GROUP, ToolGrant};

const AGENTID_API_VERSION: &str = "agentid.dev/v1alpha1";

/// One object read from a file.
#[derive(Debug, Clone)]
pub struct Document {
    pub file: String,
    /// 1-based line where the document starts.
    pub line: usize,
    pub value: Value,
    /// Where the object sits in its document: empty, or `items[i]` of a List.
    pub item: Vec<Segment>,
}

/// Input that cannot be judged (exit code 2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
pub struct InputError {
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.file, self.message),
            None => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

fn is_separator(line: &str) -> bool {
    line == "---" || line.starts_with("--- ") || line.starts_with("---\t") || line.starts_with("---#")
}

/// Deeper nesting of YAML flow collections than this is refused before parsing: the parser's own
/// recursion limit (128) would refuse it too, but only after work quadratic in the depth (20,000 levels,
/// 40 KB, took 1.7 s; 200,000 did not finish in a minute). Far above anything a manifest needs.
pub const MAX_FLOW_NESTING: usize = 1000;

/// The line (1-based) where `[` and `{` not yet closed first go deeper than `max`, counted in one pass
/// over every character: quotes are not honoured, so text that merely contains brackets counts too (it
/// can only be counted deeper than it is, never shallower).
fn flow_nesting_beyond(text: &str, max: usize) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'\n' => line += 1,
            _ => {}
        }
    }
    None
}

fn is_json(text: &str) -> bool {
    let t = text.trim_start_matches('\u{feff}').trim_start();
    t.starts_with('{') || t.starts_with('[')
}

/// The YAML documents of `text` as (first line, text), split on `---` lines so that every document
/// knows its line. JSON text is one document.
pub fn split_documents(text: &str) -> Vec<(usize, &str)> {
    if is_json(text) {
        return vec![(1, text)];
    }
    let mut out = Vec::new();
    let (mut start_byte, mut start_line, mut offset) = (0usize, 1usize, 0usize);
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if is_separator(line.trim_end()) {
            out.push((start_line, &text[start_byte..offset]));
            start_byte = offset + line.len();
            start_line = i + 2;
        }
        offset += line.len();
    }
    out.push((start_line, &text[start_byte..]));
    out
}

fn is_blank(chunk: &str) -> bool {
    chunk.lines().all(|l| {
        let l = l.trim_start_matches('\u{feff}').trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// The objects of one document (`first_line` is its line in `file`), unwrapping `kind: List`.
pub fn parse_document(file: &str, first_line: usize, chunk: &str) -> Result<Vec<Document>, InputError> {
    let err = |line: Option<usize>, message: String| InputError { file: file.to_string(), line, message };
    let mut docs = Vec::new();
    if is_blank(chunk) {
        return Ok(docs);
    }
    let v: Value = if is_json(chunk) {
        serde_json::from_str(chunk)
            .map_err(|e| err(Some(first_line + e.line().max(1) - 1), format!("invalid JSON: {e}")))?
    } else {
        if let Some(line) = flow_nesting_beyond(chunk, MAX_FLOW_NESTING) {
            return Err(err(
                Some(first_line + line - 1),
                format!("invalid YAML: flow collections ([ or {{) nested more than {MAX_FLOW_NESTING} deep"),
            ));
        }
        serde_norway::from_str(chunk).map_err(|e| {
            let line = e.location().map(|l| first_line + l.line().max(1) - 1).unwrap_or(first_line);
            err(Some(line), format!("invalid YAML: {e}"))
        })?
    };
    if v.is_null() {
        return Ok(docs);
    }
    // The object starts at its first line that is not blank or a comment.
    let skipped = chunk
        .lines()
        .take_while(|l| {
            let l = l.trim_start_matches('\u{feff}').trim();
            l.is_empty() || l.starts_with('#')
        })
        .count();
    let line = first_line + skipped;
    push_objects(file, line, v, &mut Vec::new(), &mut docs).map_err(|m| err(Some(line), m))?;
    Ok(docs)
}

/// Splits a YAML or JSON file into objects, unwrapping `kind: List`. Stops at the first invalid document.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Document>, InputError> {
    let mut docs = Vec::new();
    for (line, chunk) in split_documents(text) {
        docs.extend(parse_document(file, line, chunk)?);
    }
    Ok(docs)
}

fn push_objects(
    file: &str,
    line: usize,
    v: Value,
    item: &mut Vec<Segment>,
    out: &mut Vec<Document>,
) -> Result<(), String> {
    match v {
        Value::Object(mut m)
            if m.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
                && m.contains_key("items") =>
        {
            let Some(Value::Array(items)) = m.remove("items") else {
                return Err("`items` of a List must be an array".into());
            };
            item.push(Segment::Key("items".into()));
            for (i, it) in items.into_iter().enumerate() {
                item.push(Segment::Index(i));
                push_objects(file, line, it, item, out)?;
                item.pop();
            }
            item.pop();
            Ok(())
        }
        Value::Object(_) => {
            out.push(Document { file: file.to_string(), line, value: v, item: item.clone() });
            Ok(())
        }
        Value::Array(items) => {
            for (i, it) in items.into_iter().enumerate() {
                item.push(Segment::Index(i));
                push_objects(file, line, it, item, out)?;
                item.pop();
            }
            Ok(())
        }
        _ => Err("expected a Kubernetes object (a mapping with apiVersion and kind)".into()),
    }
}

/// Whether a document may hold an AgentIdentity. Cheap; never false for one that does: the kind is
/// written literally unless an escape sequence (which needs a backslash) spells it.
fn may_hold_agent(chunk: &str) -> bool {
    chunk.contains("AgentIdentity") || chunk.contains('\\')
}

fn is_kind(v: &Value, kind: &str) -> bool {
    v.get("apiVersion").and_then(Value::as_str) == Some(AGENTID_API_VERSION)
        && v.get("kind").and_then(Value::as_str) == Some(kind)
}

/// First pass: the AgentIdentities in `text`, parsing only documents that can hold one. Invalid
/// documents are skipped here; [`check_text`] reports them.
pub fn agents_in(text: &str, out: &mut Vec<AgentIdentity>) {
    if !may_hold_agent(text) {
        return;
    }
    for (line, chunk) in split_documents(text) {
        if !may_hold_agent(chunk) {
            continue;
        }
        let Ok(docs) = parse_document("", line, chunk) else { continue };
        for d in docs {
            if is_kind(&d.value, "AgentIdentity")
                && let Ok(a) = AgentIdentity::deserialize(&d.value)
            {
                out.push(a);
            }
        }
    }
}

/// How much a finding counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Denied (admission rules; lint rules with `--strict`): exit 1.
    Error,
    /// Reported, not denied (lint rules by default).
    Warning,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warning => "warning",
        }
    }
}

/// One finding (an admission violation or a lint finding) at one field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable rule id (admission [`RuleId`] or [`LintRule`]).
    pub rule: &'static str,
    pub level: Level,
    /// Field path in the object, e.g. `spec.template.spec.containers[0].env[1]`.
    pub path: String,
    /// `[agentid/<rule>] <Kind> <ns>/<name>: <path> <what>; fix: <how>`; never a secret.
    pub message: String,
    /// 1-based line of the field (of its nearest written ancestor when the field is missing).
    pub line: usize,
    /// 1-based column, when the field could be located.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// An exception that waived a violation, and where the waived field is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waived {
    #[serde(flatten)]
    pub waiver: ExceptionUse,
    pub line: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

/// What was judged in one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// A Pod or a workload with a pod template: the admission rules.
    Workload,
    /// An AgentIdentity or a ToolGrant: the lint.
    Grant,
}

/// The result for one object.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    pub file: String,
    /// Line where the object starts.
    pub line: usize,
    #[serde(skip)]
    pub subject: Subject,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `deny` when an error remains, `warn` for warnings only or when exceptions waived every violation,
    /// else `allow`.
    pub verdict: &'static str,
    pub violations: Vec<Finding>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exceptions: Vec<Waived>,
}

/// Options of a check.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    pub default_namespace: String,
    pub exceptions: ExceptionSet,
    /// Lint findings are errors instead of warnings.
    pub strict: bool,
    pub lint: LintConfig,
}

/// Judges documents against the agents of the whole input.
#[derive(Debug, Clone)]
pub struct Checker {
    directory: StaticDirectory,
    options: CheckOptions,
    now: Timestamp,
}

impl Checker {
    /// `agents`: every AgentIdentity of the input ([`agents_in`]).
    pub fn new(agents: &[AgentIdentity], options: CheckOptions, now: Timestamp) -> Checker {
        Checker { directory: StaticDirectory::new(agents.iter(), &options.default_namespace), options, now }
    }

    fn namespace_of(&self, v: &Value) -> String {
        v.get("metadata")
            .and_then(|m| m.get("namespace"))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&self.options.default_namespace)
            .to_string()
    }

    /// Judges one object; `None` for objects that are neither workloads nor agentid kinds, and for
    /// YAML that is no Kubernetes object at all (no apiVersion, no kind: CI configs, Helm values).
    /// Findings are located at the document's start until [`locate`] places them.
    pub fn judge(&self, d: &Document) -> Result<Option<CheckResult>, InputError> {
        let v = &d.value;
        let input_error = |message: String| InputError { file: d.file.clone(), line: Some(d.line), message };
        if v.get("apiVersion").is_none() && v.get("kind").is_none() {
            return Ok(None);
        }
        if v.get("apiVersion").and_then(Value::as_str).is_some_and(|a| a.starts_with(GROUP)) {
            return self.lint(d, v).map_err(input_error);
        }
        let mut w = match from_object(v) {
            Ok(Some(w)) => w,
            Ok(None) => return Ok(None),
            Err(e) => return Err(input_error(e.to_string())),
        };
        if w.namespace.is_none() {
            w.namespace = Some(self.options.default_namespace.clone());
        }
        let (violations, used) = self.options.exceptions.apply(&w, evaluate(&w, &self.directory), self.now);
        let violations: Vec<Finding> = violations
            .into_iter()
            .map(|x| Finding {
                rule: x.rule.as_str(),
                level: Level::Error,
                path: x.path,
                message: x.message,
                line: d.line,
                column: None,
            })
            .collect();
        let exceptions: Vec<Waived> =
            used.into_iter().map(|waiver| Waived { waiver, line: d.line, column: None }).collect();
        Ok(Some(CheckResult {
            file: d.file.clone(),
            line: d.line,
            subject: Subject::Workload,
            verdict: verdict(&violations, !exceptions.is_empty()),
            kind: w.kind,
            namespace: w.namespace.unwrap_or_default(),
            name: w.name,
            violations,
            exceptions,
        }))
    }

    fn lint(&self, d: &Document, v: &Value) -> Result<Option<CheckResult>, String> {
        let ns = self.namespace_of(v);
        let (kind, findings) = if is_kind(v, "AgentIdentity") {
            let a = AgentIdentity::deserialize(v)
                .map_err(|e| format!("invalid AgentIdentity: {}", redact(&e.to_string())))?;
            ("AgentIdentity", lint::lint_identity(&a, &ns))
        } else if is_kind(v, "ToolGrant") {
            let g = ToolGrant::deserialize(v).map_err(|e| format!("invalid ToolGrant: {}", redact(&e.to_string())))?;
            let sa = self.directory.agent(&ns, &g.spec.agent_ref.name).map(|a| a.service_account);
            ("ToolGrant", lint::lint_grant(&g, &ns, sa.as_deref(), &self.options.lint, self.now))
        } else {
            return Ok(None);
        };
        let level = if self.options.strict { Level::Error } else { Level::Warning };
        let violations: Vec<Finding> = findings
            .into_iter()
            .map(|f| Finding {
                rule: f.rule.as_str(),
                level,
                path: f.path,
                message: f.message,
                line: d.line,
                column: None,
            })
            .collect();
        let name = v.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or_default();
        Ok(Some(CheckResult {
            file: d.file.clone(),
            line: d.line,
            subject: Subject::Grant,
            kind: kind.to_string(),
            namespace: ns,
            name: name.to_string(),
            verdict: verdict(&violations, false),
            violations,
            exceptions: Vec::new(),
        }))
    }
}

fn verdict(findings: &[Finding], waived: bool) -> &'static str {
    if findings.iter().any(|f| f.level == Level::Error) {
        "deny"
    } else if waived || !findings.is_empty() {
        "warn"
    } else {
        "allow"
    }
}

/// Places the result's object and findings at their lines and columns. `locator` reads the document
/// the object came from; `item` is where the object sits in it (`items[i]` of a List).
pub fn locate(r: &mut CheckResult, locator: &Locator, item: &[Segment]) {
    let place = |path: &str| -> (Option<Position>, bool) { (locator.find(item, path), locator.has(item, path)) };
    if let (Some(p), _) = place("") {
        r.line = p.line;
    }
    for f in &mut r.violations {
        if let (Some(p), exact) = place(&f.path) {
            f.line = p.line;
            // The column of an ancestor would point at another field: give it only for the field itself.
            f.column = exact.then_some(p.column);
        }
    }
    for w in &mut r.exceptions {
        if let (Some(p), exact) = place(&w.waiver.path) {
            w.line = p.line;
            w.column = exact.then_some(p.column);
        }
    }
}

/// Second pass over one file (or standard input): parses, judges and locates one document after the
/// other and hands every result to `emit`, in input order. Errors go to `errors`; judging goes on with
/// the next document.
pub fn check_text(
    checker: &Checker,
    file: &str,
    text: &str,
    emit: &mut dyn FnMut(CheckResult),
    errors: &mut Vec<InputError>,
) {
    for (first_line, chunk) in split_documents(text) {
        let docs = match parse_document(file, first_line, chunk) {
            Ok(d) => d,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut results: Vec<(CheckResult, Vec<Segment>)> = Vec::new();
        for d in docs {
            match checker.judge(&d) {
                Ok(Some(r)) => results.push((r, d.item)),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        let located = |(r, item): &(CheckResult, Vec<Segment>)| {
            !r.violations.is_empty() || !r.exceptions.is_empty() || !item.is_empty()
        };
        if results.iter().any(located) {
            let wanted = results.iter().filter(|x| located(x)).flat_map(|(r, item)| {
                let paths = r.violations.iter().map(|f| f.path.as_str());
                let paths = paths.chain(r.exceptions.iter().map(|w| w.waiver.path.as_str())).chain([""]);
                paths.map(move |p| (item.as_slice(), p))
            });
            let locator = Locator::for_paths(chunk, first_line, wanted);
            for (r, item) in &mut results {
                if !r.violations.is_empty() || !r.exceptions.is_empty() || !item.is_empty() {
                    locate(r, &locator, item);
                }
            }
        }
        for (r, _) in results {
            emit(r);
        }
    }
}

/// Every rule `agentid check` reports: (id, summary, default level).
pub fn all_rules() -> Vec<(&'static str, &'static str, Level)> {
    let admission = RuleId::ALL.iter().map(|r| (r.as_str(), r.summary(), Level::Error));
    let lint = LintRule::ALL.iter().map(|r| (r.as_str(), r.summary(), Level::Warning));
    admission.chain(lint).collect()
}

/// SARIF 2.1.0 for code-scanning UIs, written as a stream: [`sarif_head`], then one
/// [`sarif_result`] per finding (comma-separated), then [`sarif_tail`].
pub fn sarif_head(version: &str) -> String {
    let rules: Vec<Value> = all_rules()
        .into_iter()
        .map(|(id, summary, level)| {
            serde_json::json!({
                "id": id,
                "name": id,
                "shortDescription": {"text": summary},
                "defaultConfiguration": {"level": level.as_str()},
            })
        })
        .collect();
    let tool = serde_json::json!({"driver": {"name": "agentid", "version": version, "informationUri": "https://agentid.dev", "rules": rules}});
    format!(
        "{{\"$schema\":\"https://json.schemastore.org/sarif-2.1.0.json\",\"version\":\"2.1.0\",\"runs\":[{{\"tool\":{tool},\"results\":["
    )
}

/// The end of [`sarif_head`].
pub const SARIF_TAIL: &str = "]}]}";

/// One SARIF result: the finding at its line and column.
pub fn sarif_result(r: &CheckResult, f: &Finding) -> Value {
    let rule_index = all_rules().iter().position(|(id, ..)| *id == f.rule);
    let mut region = serde_json::json!({"startLine": f.line});
    if let Some(c) = f.column {
        region["startColumn"] = c.into();
    }
    serde_json::json!({
        "ruleId": f.rule,
        "ruleIndex": rule_index,
        "level": f.level.as_str(),
        "message": {"text": f.message},
        "locations": [{
            "physicalLocation": {
                "artifactLocation": {"uri": r.file},
                "region": region,
            },
            "logicalLocations": [{"fullyQualifiedName": format!("{}/{}/{}:{}", r.kind, r.namespace, r.name, f.path)}],
        }],
    })
}

/// Escapes text for a GitHub Actions workflow command (`::error …::<data>`); `property` for the
/// `file=`, `title=` values, which also escape `:` and `,`.
pub fn github_escape(s: &str, property: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            ':' if property => out.push_str("%3A"),
            ',' if property => out.push_str("%2C"),
            c => out.push(c),
        }
    }
    out
}

/// One GitHub Actions annotation for a finding.
pub fn github_annotation(r: &CheckResult, f: &Finding) -> String {
    let mut props = format!("file={},line={}", github_escape(&r.file, true), f.line);
    if let Some(c) = f.column {
        props.push_str(&format!(",col={c}"));
    }
    props.push_str(&format!(",title={}", github_escape(&format!("agentid/{}", f.rule), true)));
    format!("::{} {props}::{}", f.level.as_str(), github_escape(&f.message, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_flow_collections_are_refused_before_the_parser_sees_them() {
        let bomb = format!("kind: ConfigMap\ndata:\n  x: {}{}\n", "[".repeat(200_000), "]".repeat(200_000));
        let e = parse_document("bomb.yaml", 1, &bomb).unwrap_err();
        assert_eq!(e.line, Some(3), "{e:?}");
        assert!(e.message.contains("nested more than 1000 deep"), "{e:?}");
        // Brackets that close, and text with brackets, are fine.
        let nested = vec!["[1, [2, {a: [3]}]]"; 500].join(", ");
        let fine = format!("kind: ConfigMap\ndata:\n  x: '{}'\n  y: [{nested}]\n", "[".repeat(900));
        assert!(parse_document("fine.yaml", 1, &fine).is_ok());
        assert_eq!(flow_nesting_beyond("[[]]\n[[[", 2), Some(2));
        assert_eq!(flow_nesting_beyond("]]]][[", 2), None, "closing brackets never go below zero");
    }

    const MANIFESTS: &str = r#"# agents
apiVersion: agentid.dev/v1alpha1
kind: AgentIdentity
metadata: {name: billing, namespace: agents}
spec: {owner: team, audiences: [x]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: good, namespace: agents}
spec:
  template:
    metadata: {labels: {agentid.dev/agent: billing}}
    spec:
      serviceAccountName: agent-billing
      automountServiceAccountToken: false
      containers: [{name: app, image: x}]
---
apiVersion: v1
kind: List
items:
- apiVersion: batch/v1
  kind: Job
  metadata: {name: bad, namespace: agents}
  spec:
    template:
      spec:
        containers: [{name: app, image: x, envFrom: [{secretRef: {name: s}}]}]
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
"#;

    fn now() -> Timestamp {
        Timestamp::from_second(1_900_000_000).unwrap()
    }

    fn options() -> CheckOptions {
        CheckOptions { default_namespace: "default".into(), ..Default::default() }
    }

    /// Both passes over one text.
    fn check(file: &str, text: &str, options: CheckOptions) -> (Vec<CheckResult>, Vec<InputError>) {
        let mut agents = Vec::new();
        agents_in(text, &mut agents);
        let checker = Checker::new(&agents, options, now());
        let (mut results, mut errors) = (Vec::new(), Vec::new());
        check_text(&checker, file, text, &mut |r| results.push(r), &mut errors);
        (results, errors)
    }

    #[test]
    fn judges_workloads_with_agents_from_the_same_inputs() {
        let docs = parse_file("m.yaml", MANIFESTS).unwrap();
        assert_eq!(docs.len(), 4);
        assert_eq!((docs[0].line, docs[1].line, docs[2].line), (2, 7, 18));
        assert_eq!(docs[2].item, vec![Segment::Key("items".into()), Segment::Index(0)]);
        let (results, errors) = check("m.yaml", MANIFESTS, options());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(results.len(), 3);
        // The agent's owner "team" is a placeholder: a lint warning, not a denial.
        assert_eq!((results[0].kind.as_str(), results[0].verdict), ("AgentIdentity", "warn"));
        assert_eq!(results[0].violations[0].rule, "owner-unaccountable");
        assert_eq!((results[0].violations[0].line, results[0].violations[0].column), (5, Some(8)));
        assert_eq!((results[1].name.as_str(), results[1].verdict), ("good", "allow"));
        assert_eq!((results[2].name.as_str(), results[2].verdict), ("bad", "deny"));
        assert_eq!(results[2].line, 21, "a List item starts at its own line");
        let rules: Vec<_> = results[2].violations.iter().map(|v| v.rule).collect();
        assert_eq!(rules, vec!["static-secret-envfrom", "default-service-account"]);
        let at: Vec<_> = results[2].violations.iter().map(|v| (v.line, v.column)).collect();
        // envFrom[0] is the flow mapping on line 27; serviceAccountName is not written: the pod spec's key.
        assert_eq!(at, vec![(27, Some(54)), (26, None)]);
        let json = serde_json::to_value(&results[2]).unwrap();
        assert_eq!(json["violations"][0]["rule"], "static-secret-envfrom");
        assert_eq!(json["violations"][0]["level"], "error");
        assert_eq!(json["violations"][0]["path"], "spec.template.spec.containers[0].envFrom[0]");
        assert_eq!(json["violations"][0]["line"], 27);
        assert_eq!(json["violations"][0]["column"], 54);
        assert_eq!(json["line"], 21);
    }

    #[test]
    fn strict_turns_lint_warnings_into_denials() {
        let (results, _) = check("m.yaml", MANIFESTS, CheckOptions { strict: true, ..options() });
        assert_eq!(results[0].verdict, "deny");
        assert_eq!(results[0].violations[0].level, Level::Error);
    }

    #[test]
    fn agents_later_in_the_input_are_known() {
        let text = MANIFESTS.split("---\n").collect::<Vec<_>>();
        let reordered = format!("{}---\n{}", text[1], text[0]);
        let (results, errors) = check("r.yaml", &reordered, options());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!((results[0].name.as_str(), results[0].verdict), ("good", "allow"));
    }

    #[test]
    fn invalid_input_names_file_and_line() {
        let e = parse_file("bad.yaml", "apiVersion: v1\nkind: Pod\n---\nmetadata: [unclosed\n").unwrap_err();
        assert_eq!(e.file, "bad.yaml");
        assert!(e.line.unwrap() >= 4, "{e}");
        let e = parse_file("bad.json", "{\n \"a\": \n}").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(parse_file("s.yaml", "just a string\n").is_err());
        let (_, errors) =
            check("p.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: 5}\n", options());
        assert!(errors[0].to_string().starts_with("p.yaml:1: Pod p: spec is not a valid pod spec"), "{}", errors[0]);
        // Judging goes on after an invalid document.
        let text = "a: [\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n";
        let (results, errors) = check("two.yaml", text, options());
        assert_eq!((results.len(), errors.len()), (1, 1));
        assert_eq!(results[0].violations[0].rule, "default-service-account");
        assert_eq!(results[0].violations[0].line, 6);
        // An invalid AgentIdentity is an input error, without its values.
        let text =
            "apiVersion: agentid.dev/v1alpha1\nkind: AgentIdentity\nmetadata: {name: a}\nspec: {owner: [sk-secret]}\n";
        let (_, errors) = check("a.yaml", text, options());
        assert!(errors[0].message.starts_with("invalid AgentIdentity"), "{}", errors[0]);
        assert!(!errors[0].message.contains("sk-secret"), "{}", errors[0]);
    }

    #[test]
    fn yaml_that_is_no_kubernetes_object_is_skipped() {
        let (results, errors) = check("ci.yaml", "on: push\njobs: {build: {runs-on: x}}\n", options());
        assert!(results.is_empty() && errors.is_empty(), "{errors:?}");
        let (_, errors) = check("k.yaml", "apiVersion: v1\nmetadata: {name: x}\n", options());
        assert_eq!(errors.len(), 1);
    }

    #[test]
    fn json_files_and_empty_documents() {
        let json = r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[]}}]}"#;
        let docs = parse_file("a.json", json).unwrap();
        assert_eq!(docs.len(), 1);
        assert!(parse_file("e.yaml", "---\n# nothing\n---\n").unwrap().is_empty());
        let (results, _) = check("a.json", json, options());
        assert_eq!((results[0].violations[0].line, results[0].violations[0].column), (1, None));
    }

    #[test]
    fn splitting_keeps_lines_and_never_copies() {
        let docs = split_documents("a: 1\n---\nb: 2\n--- # c\nc: 3");
        assert_eq!(docs, vec![(1, "a: 1\n"), (3, "b: 2\n"), (5, "c: 3")]);
        assert_eq!(split_documents(""), vec![(1, "")]);
        assert_eq!(split_documents("---\n"), vec![(1, ""), (2, "")]);
    }

    #[test]
    fn only_documents_that_may_hold_agents_are_read_in_the_first_pass() {
        let mut agents = Vec::new();
        agents_in("apiVersion: v1\nkind: Pod\n---\nnot: [valid\n", &mut agents);
        assert!(agents.is_empty());
        agents_in(MANIFESTS, &mut agents);
        assert_eq!(agents.len(), 1);
        // An escaped kind is still found.
        let escaped = "apiVersion: agentid.dev/v1alpha1\nkind: \"Agent\\x49dentity\"\nmetadata: {name: e}\nspec: {owner: team-a, audiences: [x]}\n";
        agents_in(escaped, &mut agents);
        assert_eq!(agents.len(), 2);
    }

    #[test]
    fn sarif_and_github_output_carry_lines_and_columns() {
        let (results, _) = check("m.yaml", MANIFESTS, options());
        let mut text = sarif_head("0.1.0");
        let items: Vec<String> =
            results.iter().flat_map(|r| r.violations.iter().map(move |f| sarif_result(r, f).to_string())).collect();
        text.push_str(&items.join(","));
        text.push_str(SARIF_TAIL);
        let s: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(s["version"], "2.1.0");
        assert_eq!(
            s["runs"][0]["tool"]["driver"]["rules"].as_array().unwrap().len(),
            RuleId::ALL.len() + LintRule::ALL.len()
        );
        let r = &s["runs"][0]["results"][1];
        assert_eq!(r["ruleId"], "static-secret-envfrom");
        assert_eq!(r["level"], "error");
        assert_eq!(r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"], "m.yaml");
        assert_eq!(r["locations"][0]["physicalLocation"]["region"]["startLine"], 27);
        assert_eq!(r["locations"][0]["physicalLocation"]["region"]["startColumn"], 54);
        let w = &s["runs"][0]["results"][0];
        assert_eq!((w["ruleId"].as_str(), w["level"].as_str()), (Some("owner-unaccountable"), Some("warning")));
        let rule = &s["runs"][0]["tool"]["driver"]["rules"][w["ruleIndex"].as_u64().unwrap() as usize];
        assert_eq!(rule["id"], "owner-unaccountable");

        let a = github_annotation(&results[2], &results[2].violations[0]);
        assert!(
            a.starts_with("::error file=m.yaml,line=27,col=54,title=agentid/static-secret-envfrom::[agentid/static-secret-envfrom] Job agents/bad: "),
            "{a}"
        );
        assert_eq!(github_escape("a:b,c%\n", true), "a%3Ab%2Cc%25%0A");
    }
}
