//! A ToolGrant's `when`: a CEL expression over the call, compiled once per grant
//! generation and evaluated on every decision.
//!
//! Variables (and nothing else: any other name is refused when the grant is
//! compiled, so a typo fails at admission instead of denying every call):
//!
//! | variable | fields |
//! |---|---|
//! | `request` | `tool`, `action`, `destination` (normalised, without query), `host`, `path`, `sensitivity` (`public` … `restricted`, the effective level), `method`, `arguments` (argument names: list of strings) |
//! | `agent` | `name`, `namespace`, `spiffeId`, `owner` |
//! | `task` | `name`, `purpose`, `calls` (allowed calls so far in the task); `task` is `null` outside a task |
//! | `grant` | `name` |
//! | `now` | the decision's time, a timestamp (`now.getHours()`) |
//!
//! Optional fields that are absent (`destination`, `host`, `path` and `method`; every `task` field outside a
//! task) are `null`, and `has(request.host)` is false for them. An unknown field (`request.hots`) or
//! function is refused at compile time too.
//!
//! Cost. `request.host` is compiled into a plain variable bound per evaluation, so a decision builds
//! only the fields its condition reads (no maps); `request` used as a whole is built as a map. Parsing
//! recurses deeply on long chains (`a.b.c…`), so it runs on one thread of its own with a large stack
//! (compiling blocks the caller for the parse: call it off async workers when that matters), and an
//! expression nested deeper than [`MAX_DEPTH`] is refused so that evaluation (also recursive) stays
//! shallow on any thread.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, LazyLock, mpsc};

use cel::common::ast::{CallExpr, EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::objects::{Key, Map};
use cel::parser::{ParseErrors, Parser};
use cel::{Context, Value};
use k8s_openapi::jiff::Timestamp;

use super::destination::Destination;
use crate::api::DataSensitivity;

/// Longest condition accepted, in bytes (the CRD's own limit).
pub const MAX_CONDITION_LEN: usize = 4096;
/// Deepest expression tree accepted.
pub const MAX_DEPTH: usize = 48;
/// Stack of the thread that parses a condition: long chains recurse once per link in the parser.
const COMPILE_STACK_BYTES: usize = 64 << 20;
/// Longest error message passed on from the CEL library.
const MAX_MESSAGE_LEN: usize = 300;

/// Why a condition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConditionError {
    #[error("the condition is empty")]
    Empty,
    #[error("the condition is longer than {MAX_CONDITION_LEN} bytes")]
    TooLong,
    #[error("the condition does not parse: {0}")]
    Parse(String),
    #[error("the condition is nested too deeply (more than {MAX_DEPTH} levels)")]
    TooDeep,
    #[error("unknown variable {0:?}: a condition can use request, agent, task, grant and now")]
    UnknownVariable(String),
    #[error("{variable} has no field {field:?}; its fields are: {fields}")]
    UnknownField { variable: &'static str, field: String, fields: String },
    #[error("unknown function {0:?}")]
    UnknownFunction(String),
    #[error("{0} is not supported in conditions")]
    Unsupported(&'static str),
    #[error("the condition could not be compiled: {0}")]
    Internal(&'static str),
}

/// Checks a `when` expression the way the decision point will compile it: for admission.
pub fn validate_when(src: &str) -> Result<(), String> {
    Condition::compile(src).map(|_| ()).map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Var {
    Request,
    Agent,
    Task,
    Grant,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        match name {
            "request" => Some(Var::Request),
            "agent" => Some(Var::Agent),
            "task" => Some(Var::Task),
            "grant" => Some(Var::Grant),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Var::Request => "request",
            Var::Agent => "agent",
            Var::Task => "task",
            Var::Grant => "grant",
        }
    }
}

const NOW: &str = "now";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Tool,
    Action,
    Destination,
    Host,
    Path,
    Sensitivity,
    Method,
    Arguments,
    AgentName,
    AgentNamespace,
    SpiffeId,
    Owner,
    TaskName,
    Purpose,
    Calls,
    GrantName,
}

struct FieldDef {
    var: Var,
    name: &'static str,
    /// The variable `var.name` becomes; `@` cannot start a CEL identifier, so no user name collides.
    flat: &'static str,
    field: Field,
}

const FIELDS: &[FieldDef] = &[
    FieldDef { var: Var::Request, name: "tool", flat: "@request.tool", field: Field::Tool },
    FieldDef { var: Var::Request, name: "action", flat: "@request.action", field: Field::Action },
    FieldDef { var: Var::Request, name: "destination", flat: "@request.destination", field: Field::Destination },
    FieldDef { var: Var::Request, name: "host", flat: "@request.host", field: Field::Host },
    FieldDef { var: Var::Request, name: "path", flat: "@request.path", field: Field::Path },
    FieldDef { var: Var::Request, name: "sensitivity", flat: "@request.sensitivity", field: Field::Sensitivity },
    FieldDef { var: Var::Request, name: "method", flat: "@request.method", field: Field::Method },
    FieldDef { var: Var::Request, name: "arguments", flat: "@request.arguments", field: Field::Arguments },
    FieldDef { var: Var::Agent, name: "name", flat: "@agent.name", field: Field::AgentName },
    FieldDef { var: Var::Agent, name: "namespace", flat: "@agent.namespace", field: Field::AgentNamespace },
    FieldDef { var: Var::Agent, name: "spiffeId", flat: "@agent.spiffeId", field: Field::SpiffeId },
    FieldDef { var: Var::Agent, name: "owner", flat: "@agent.owner", field: Field::Owner },
    FieldDef { var: Var::Task, name: "name", flat: "@task.name", field: Field::TaskName },
    FieldDef { var: Var::Task, name: "purpose", flat: "@task.purpose", field: Field::Purpose },
    FieldDef { var: Var::Task, name: "calls", flat: "@task.calls", field: Field::Calls },
    FieldDef { var: Var::Grant, name: "name", flat: "@grant.name", field: Field::GrantName },
];

/// Functions and operators the evaluator provides (`cel` 0.13's default context); anything else would
/// fail on every call.
const FUNCTIONS: &[&str] = &[
    "_?_:_",
    "_&&_",
    "_||_",
    "!_",
    "-_",
    "_-_",
    "_+_",
    "_*_",
    "_/_",
    "_%_",
    "_==_",
    "_!=_",
    "_>=_",
    "_<=_",
    "_>_",
    "_<_",
    "_[_]",
    "_[?_]",
    "_?._",
    "@in",
    "@not_strictly_false",
    "contains",
    "size",
    "max",
    "min",
    "startsWith",
    "endsWith",
    "string",
    "bytes",
    "double",
    "int",
    "uint",
    "value",
    "hasValue",
    "or",
    "orValue",
    "matches",
    "duration",
    "timestamp",
    "getFullYear",
    "getMonth",
    "getDayOfYear",
    "getDayOfMonth",
    "getDate",
    "getDayOfWeek",
    "getHours",
    "getMinutes",
    "getSeconds",
    "getMilliseconds",
];

/// Functions called on the `optional` namespace (`optional.of(x)`).
const OPTIONAL_FUNCTIONS: &[&str] = &["of", "none", "ofNonZeroValue"];

/// What one evaluation binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Binding {
    Field(&'static FieldDef),
    Whole(Var),
    Now,
}

impl std::fmt::Debug for FieldDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.flat)
    }
}

impl PartialEq for FieldDef {
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field
    }
}

impl Eq for FieldDef {}

/// A compiled `when` condition.
#[derive(Debug, Clone)]
pub struct Condition {
    source: String,
    expr: IdedExpr,
    bindings: Vec<Binding>,
}

/// The request as a condition sees it.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub tool: &'a str,
    pub action: &'a str,
    pub destination: Option<&'a Destination>,
    /// The effective sensitivity (the request's, or the configured default).
    pub sensitivity: DataSensitivity,
    pub method: Option<&'a str>,
    pub arguments: &'a [String],
}

#[derive(Debug, Clone, Copy)]
pub struct AgentView<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spiffe_id: &'a str,
    pub owner: &'a str,
}

#[derive(Debug, Clone, Copy)]
pub struct TaskView<'a> {
    pub name: &'a str,
    pub purpose: &'a str,
    /// Allowed calls in the task so far.
    pub calls: u64,
}

/// Everything a condition may read: borrowed, so building one costs nothing; a condition converts only
/// the fields it uses.
#[derive(Debug, Clone, Copy)]
pub struct Activation<'a> {
    pub request: RequestView<'a>,
    pub agent: AgentView<'a>,
    pub task: Option<TaskView<'a>>,
    pub grant: &'a str,
    pub now: Timestamp,
}

/// The lower-case name of a sensitivity level, as written in ToolGrants.
pub fn sensitivity_name(s: DataSensitivity) -> &'static str {
    match s {
        DataSensitivity::Public => "public",
        DataSensitivity::Internal => "internal",
        DataSensitivity::Confidential => "confidential",
        DataSensitivity::Restricted => "restricted",
    }
}

/// The context every evaluation starts from: built-in functions, no variables.
static ROOT: LazyLock<Context<'static>> = LazyLock::new(Context::default);

type CompileJob = (String, mpsc::Sender<Result<Condition, ConditionError>>);

/// The thread conditions are parsed on, started on first use: parsing recurses once per link of a
/// chain (`a.b.c…`), deeper than a runtime worker's stack allows, and a thread per compile would cost
/// more than the compile itself.
static COMPILER: LazyLock<Option<mpsc::Sender<CompileJob>>> = LazyLock::new(|| {
    let (jobs, queue) = mpsc::channel::<CompileJob>();
    std::thread::Builder::new()
        .name("agentid-cel-compile".to_string())
        .stack_size(COMPILE_STACK_BYTES)
        .spawn(move || {
            for (source, reply) in queue {
                // The caller may have gone away: nothing to do then.
                let _ = reply.send(compile_caught(source));
            }
        })
        .ok()
        .map(|_| jobs)
});

const PARSER_FAILED: ConditionError = ConditionError::Internal("the CEL parser failed on it (nested too deeply?)");

/// [`compile_here`], with a panic in the CEL parser (it has some on hostile input) turned into an error.
fn compile_caught(source: String) -> Result<Condition, ConditionError> {
    catch_unwind(AssertUnwindSafe(|| compile_here(source))).unwrap_or(Err(PARSER_FAILED))
}

impl Condition {
    /// Parses and checks a condition. Refuses variables other than `request`, `agent`, `task`, `grant`
    /// and `now`, unknown fields of those, unknown functions and expressions nested deeper than
    /// [`MAX_DEPTH`]. Costs tens of microseconds: compile once per grant generation.
    pub fn compile(src: &str) -> Result<Condition, ConditionError> {
        if src.trim().is_empty() {
            return Err(ConditionError::Empty);
        }
        if src.len() > MAX_CONDITION_LEN {
            return Err(ConditionError::TooLong);
        }
        let (reply, answer) = mpsc::channel();
        let job = (src.to_string(), reply);
        let job = match COMPILER.as_ref() {
            Some(worker) => match worker.send(job) {
                Ok(()) => return answer.recv().unwrap_or(Err(ConditionError::Internal("the compile thread stopped"))),
                Err(mpsc::SendError(job)) => job,
            },
            None => job,
        };
        // No compile thread (it could not be started): a thread of its own for this one.
        let (source, _) = job;
        let worker = std::thread::Builder::new()
            .name("agentid-cel-compile".to_string())
            .stack_size(COMPILE_STACK_BYTES)
            .spawn(move || compile_caught(source));
        match worker {
            Ok(handle) => handle.join().unwrap_or(Err(PARSER_FAILED)),
            Err(_) => Err(ConditionError::Internal("no thread to parse on")),
        }
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates the condition. Anything but a bool result is an error, and so is any evaluation error
    /// (the caller denies on both).
    pub fn evaluate(&self, act: &Activation<'_>) -> Result<bool, String> {
        let mut ctx = ROOT.new_inner_scope();
        for binding in &self.bindings {
            match *binding {
                Binding::Field(def) => ctx.add_variable_from_value(def.flat, field_value(def.field, act)),
                Binding::Whole(var) => ctx.add_variable_from_value(var.name(), whole_value(var, act)),
                Binding::Now => ctx.add_variable_from_value(NOW, timestamp_value(act.now)),
            }
        }
        let result = catch_unwind(AssertUnwindSafe(|| Value::resolve(&self.expr, &ctx)));
        match result {
            Ok(Ok(Value::Bool(b))) => Ok(b),
            Ok(Ok(other)) => Err(format!("the condition evaluated to a {}, not a bool", other.type_of())),
            Ok(Err(e)) => Err(truncate(e.to_string())),
            Err(_) => Err("the condition could not be evaluated".to_string()),
        }
    }
}

fn str_value(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

fn opt_value(s: Option<&str>) -> Value {
    s.map_or(Value::Null, str_value)
}

fn field_value(field: Field, act: &Activation<'_>) -> Value {
    let r = &act.request;
    let task = act.task.as_ref();
    match field {
        Field::Tool => str_value(r.tool),
        Field::Action => str_value(r.action),
        Field::Destination => r.destination.map_or(Value::Null, |d| Value::String(Arc::new(d.to_string()))),
        Field::Host => opt_value(r.destination.map(Destination::host)),
        Field::Path => opt_value(r.destination.map(Destination::path)),
        Field::Sensitivity => str_value(sensitivity_name(r.sensitivity)),
        Field::Method => opt_value(r.method),
        Field::Arguments => Value::List(Arc::new(r.arguments.iter().map(|a| str_value(a)).collect())),
        Field::AgentName => str_value(act.agent.name),
        Field::AgentNamespace => str_value(act.agent.namespace),
        Field::SpiffeId => str_value(act.agent.spiffe_id),
        Field::Owner => str_value(act.agent.owner),
        Field::TaskName => opt_value(task.map(|t| t.name)),
        Field::Purpose => opt_value(task.map(|t| t.purpose)),
        Field::Calls => task.map_or(Value::Null, |t| Value::Int(i64::try_from(t.calls).unwrap_or(i64::MAX))),
        Field::GrantName => str_value(act.grant),
    }
}

fn whole_value(var: Var, act: &Activation<'_>) -> Value {
    if var == Var::Task && act.task.is_none() {
        return Value::Null;
    }
    let map: HashMap<Key, Value> = FIELDS
        .iter()
        .filter(|def| def.var == var)
        .map(|def| (Key::String(Arc::new(def.name.to_string())), field_value(def.field, act)))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

fn timestamp_value(now: Timestamp) -> Value {
    let nanos = u32::try_from(now.subsec_nanosecond()).unwrap_or(0);
    chrono::DateTime::from_timestamp(now.as_second(), nanos).map_or(Value::Null, |t| Value::Timestamp(t.fixed_offset()))
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn parse_error(errors: ParseErrors) -> ConditionError {
    let Some(first) = errors.errors.first() else {
        return ConditionError::Parse("syntax error".to_string());
    };
    if first.msg.contains("Recursion limit") {
        return ConditionError::TooDeep;
    }
    // ParseError's own Display pads a caret line by the column, which may be negative: build the message here.
    let msg = first.msg.lines().next().unwrap_or_default().to_string();
    ConditionError::Parse(truncate(format!("line {}, column {}: {msg}", first.pos.0, first.pos.1)))
}

/// Runs on the compile thread, so deep recursion (the parser's and ours) and the drop of a refused deep
/// tree stay off the caller's stack.
fn compile_here(source: String) -> Result<Condition, ConditionError> {
    let parser = Parser::new().max_recursion_depth(u16::try_from(MAX_DEPTH).unwrap_or(u16::MAX));
    let mut expr = parser.parse(&source).map_err(parse_error)?;
    if !within_depth(&expr, MAX_DEPTH) {
        return Err(ConditionError::TooDeep);
    }
    let mut checker = Checker { scopes: Vec::new(), bindings: Vec::new() };
    checker.visit(&mut expr)?;
    Ok(Condition { source, expr, bindings: checker.bindings })
}

fn within_depth(e: &IdedExpr, budget: usize) -> bool {
    let Some(budget) = budget.checked_sub(1) else {
        return false;
    };
    match &e.expr {
        Expr::Unspecified | Expr::Ident(_) | Expr::Literal(_) => true,
        Expr::Call(call) => {
            call.target.as_deref().is_none_or(|t| within_depth(t, budget))
                && call.args.iter().all(|a| within_depth(a, budget))
        }
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
            .into_iter()
            .all(|x| within_depth(x, budget)),
        Expr::List(list) => list.elements.iter().all(|x| within_depth(x, budget)),
        Expr::Map(map) => map.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => within_depth(&m.key, budget) && within_depth(&m.value, budget),
            EntryExpr::StructField(f) => within_depth(&f.value, budget),
        }),
        Expr::Struct(s) => s.entries.iter().all(|entry| match &entry.expr {
            EntryExpr::MapEntry(m) => within_depth(&m.key, budget) && within_depth(&m.value, budget),
            EntryExpr::StructField(f) => within_depth(&f.value, budget),
        }),
        Expr::Select(s) => within_depth(&s.operand, budget),
    }
}

/// Checks names and rewrites `var.field` into the flat variable bound at evaluation.
struct Checker {
    /// Names bound by enclosing comprehensions (`x` in `list.exists(x, …)`).
    scopes: Vec<String>,
    bindings: Vec<Binding>,
}

impl Checker {
    fn bound(&self, name: &str) -> bool {
        self.scopes.iter().any(|s| s == name)
    }

    fn bind(&mut self, b: Binding) {
        if !self.bindings.contains(&b) {
            self.bindings.push(b);
        }
    }

    fn visit(&mut self, e: &mut IdedExpr) -> Result<(), ConditionError> {
        let id = e.id;
        match &mut e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => {
                if self.bound(name) {
                    return Ok(());
                }
                match Var::parse(name) {
                    Some(var) => self.bind(Binding::Whole(var)),
                    None if name == NOW => self.bind(Binding::Now),
                    None => return Err(ConditionError::UnknownVariable(name.clone())),
                }
                Ok(())
            }
            Expr::Select(select) => {
                let root = match &select.operand.expr {
                    Expr::Ident(name) if !self.bound(name) => Some(name.as_str()),
                    _ => None,
                };
                if root == Some(NOW) {
                    return Err(ConditionError::UnknownField {
                        variable: NOW,
                        field: select.field.clone(),
                        fields: "none (now is a timestamp: use now.getHours() and the like)".to_string(),
                    });
                }
                let Some(var) = root.and_then(Var::parse) else {
                    return self.visit(&mut select.operand);
                };
                let Some(def) = FIELDS.iter().find(|d| d.var == var && d.name == select.field) else {
                    let fields: Vec<&str> = FIELDS.iter().filter(|d| d.var == var).map(|d| d.name).collect();
                    return Err(ConditionError::UnknownField {
                        variable: var.name(),
                        field: select.field.clone(),
                        fields: fields.join(", "),
                    });
                };
                self.bind(Binding::Field(def));
                let test = select.test;
                let flat = IdedExpr { id, expr: Expr::Ident(def.flat.to_string()) };
                e.expr = if test {
                    // has(var.field): absent optional fields are bound to null.
                    Expr::Call(CallExpr {
                        func_name: "_!=_".to_string(),
                        target: None,
                        args: vec![flat, IdedExpr { id, expr: Expr::Literal(LiteralValue::Null) }],
                    })
                } else {
                    flat.expr
                };
                Ok(())
            }
            Expr::Call(call) => {
                let optional_namespace = matches!(
                    call.target.as_deref().map(|t| &t.expr),
                    Some(Expr::Ident(n)) if n == "optional" && !self.bound(n)
                );
                if optional_namespace {
                    if !OPTIONAL_FUNCTIONS.contains(&call.func_name.as_str()) {
                        return Err(ConditionError::UnknownFunction(format!("optional.{}", call.func_name)));
                    }
                } else {
                    if !FUNCTIONS.contains(&call.func_name.as_str()) {
                        return Err(ConditionError::UnknownFunction(call.func_name.clone()));
                    }
                    if let Some(target) = call.target.as_deref_mut() {
                        self.visit(target)?;
                    }
                }
                call.args.iter_mut().try_for_each(|a| self.visit(a))
            }
            Expr::Comprehension(c) => {
                // The range and the initial accumulator are evaluated outside the comprehension's scope.
                self.visit(&mut c.iter_range)?;
                self.visit(&mut c.accu_init)?;
                let depth = self.scopes.len();
                self.scopes.push(c.iter_var.clone());
                self.scopes.extend(c.iter_var2.clone());
                self.scopes.push(c.accu_var.clone());
                let inner =
                    [&mut c.loop_cond, &mut c.loop_step, &mut c.result].into_iter().try_for_each(|x| self.visit(x));
                self.scopes.truncate(depth);
                inner
            }
            Expr::List(list) => list.elements.iter_mut().try_for_each(|x| self.visit(x)),
            Expr::Map(map) => map.entries.iter_mut().try_for_each(|entry| match &mut entry.expr {
                EntryExpr::MapEntry(m) => {
                    self.visit(&mut m.key)?;
                    self.visit(&mut m.value)
                }
                EntryExpr::StructField(_) => Err(ConditionError::Unsupported("a field in a map literal")),
            }),
            Expr::Struct(_) => Err(ConditionError::Unsupported("message construction")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    struct Fixture {
        destination: Destination,
        arguments: Vec<String>,
    }

    fn fixture() -> Fixture {
        Fixture {
            destination: Destination::parse("https://crm.internal/api/contacts?x=1").unwrap(),
            arguments: vec!["contact_id".into(), "fields".into()],
        }
    }

    fn activation(f: &Fixture, with_task: bool, with_destination: bool) -> Activation<'_> {
        Activation {
            request: RequestView {
                tool: "crm",
                action: "read",
                destination: with_destination.then_some(&f.destination),
                sensitivity: DataSensitivity::Internal,
                method: with_destination.then_some("GET"),
                arguments: &f.arguments,
            },
            agent: AgentView {
                name: "triage",
                namespace: "agents",
                spiffe_id: "spiffe://cluster.local/ns/agents/agent/triage",
                owner: "team-payments",
            },
            task: with_task.then_some(TaskView { name: "t1", purpose: "triage issue 1234", calls: 7 }),
            grant: "crm-read",
            // 2030-03-17T17:46:40Z
            now: t(1_900_000_000),
        }
    }

    fn eval(src: &str, with_task: bool, with_destination: bool) -> Result<bool, String> {
        let f = fixture();
        let c = Condition::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
        c.evaluate(&activation(&f, with_task, with_destination))
    }

    #[test]
    fn evaluates_over_every_variable() {
        let truths = [
            "request.tool == 'crm' && request.action == 'read'",
            "request.destination == 'https://crm.internal/api/contacts'",
            "request.host == 'crm.internal' && request.host.endsWith('.internal')",
            "request.path.startsWith('/api/')",
            "request.sensitivity == 'internal'",
            "request.sensitivity in ['public', 'internal']",
            "request.method == 'GET'",
            "'contact_id' in request.arguments && size(request.arguments) == 2",
            "request.arguments.all(a, a.matches('^[a-z_]+$'))",
            "!request.arguments.exists(a, a == 'password')",
            "agent.name == 'triage' && agent.namespace == 'agents' && agent.owner == 'team-payments'",
            "agent.spiffeId.startsWith('spiffe://cluster.local/')",
            "task != null && task.name == 't1' && task.purpose.contains('1234') && task.calls < 10",
            "grant.name == 'crm-read'",
            "now > timestamp('2030-01-01T00:00:00Z') && now.getHours() == 17",
            "has(request.host) && has(request.method)",
            "request.tool == 'crm' ? true : false",
            "request['tool'] == 'crm' && request.tool == 'crm'",
            "[request.tool, agent.name].exists(x, x == 'triage')",
            "{'a': request.tool}.a == 'crm'",
            "optional.of(request.tool).hasValue()",
            // A comprehension variable may shadow a variable's name.
            "request.arguments.exists(request, request == 'fields')",
        ];
        for src in truths {
            assert_eq!(eval(src, true, true), Ok(true), "{src}");
        }
        let falsehoods =
            ["request.host == 'evil.net'", "task.calls >= 10", "request.sensitivity == 'restricted'", "false"];
        for src in falsehoods {
            assert_eq!(eval(src, true, true), Ok(false), "{src}");
        }
    }

    #[test]
    fn absent_values_are_null() {
        let cases = [
            ("task == null", Ok(true)),
            ("task != null && task.calls < 10", Ok(false)),
            ("task == null || task.calls < 10", Ok(true)),
            ("task.name == 't1'", Ok(false)),
            ("task.calls == null", Ok(true)),
            ("has(request.host)", Ok(false)),
            ("request.host == null && request.destination == null && request.method == null", Ok(true)),
        ];
        for (src, want) in cases {
            assert_eq!(eval(src, false, false), want, "{src}");
        }
        // Comparing null with a number, or calling a method on it, is an error (the caller denies).
        assert!(eval("task.calls < 10", false, false).is_err());
        assert!(eval("request.host.endsWith('.internal')", false, false).is_err());
    }

    #[test]
    fn non_bool_results_and_runtime_failures_are_errors() {
        for src in ["request.tool", "1 + 1", "request.arguments", "null"] {
            let err = eval(src, true, true).unwrap_err();
            assert!(err.contains("not a bool"), "{src}: {err}");
        }
        for src in ["1 / 0 == 1", "request.tool + 1 == 2", "request['nope'] == 1", "int('x') == 1"] {
            assert!(eval(src, true, true).is_err(), "{src}");
        }
        let long = format!("request['{}'] == 1", "x".repeat(2000));
        let err = eval(&long, true, true).unwrap_err();
        assert!(err.chars().count() <= MAX_MESSAGE_LEN + 1, "{}", err.len());
    }

    #[test]
    fn refuses_what_the_decision_point_cannot_supply() {
        use ConditionError as E;
        fn unknown_field(variable: &'static str, field: &'static str) -> impl Fn(&ConditionError) -> bool {
            move |e| matches!(e, E::UnknownField { variable: v, field: f, .. } if *v == variable && f == field)
        }
        type Check = Box<dyn Fn(&ConditionError) -> bool>;
        let cases: Vec<(&str, Check)> = vec![
            ("", Box::new(|e| *e == E::Empty)),
            ("   ", Box::new(|e| *e == E::Empty)),
            ("user.name == 'x'", Box::new(|e| *e == E::UnknownVariable("user".into()))),
            ("request.host == target", Box::new(|e| *e == E::UnknownVariable("target".into()))),
            ("session.calls < 3", Box::new(|e| *e == E::UnknownVariable("session".into()))),
            ("[1].exists(x, x == y)", Box::new(|e| *e == E::UnknownVariable("y".into()))),
            // A comprehension variable is not in scope outside it.
            ("[1].exists(x, x == 1) && x == 1", Box::new(|e| *e == E::UnknownVariable("x".into()))),
            ("request.hots == 'a'", Box::new(unknown_field("request", "hots"))),
            ("has(request.body)", Box::new(unknown_field("request", "body"))),
            ("agent.email == 'a'", Box::new(unknown_field("agent", "email"))),
            ("task.uid == 'a'", Box::new(unknown_field("task", "uid"))),
            ("grant.agent == 'a'", Box::new(unknown_field("grant", "agent"))),
            ("now.seconds > 1", Box::new(unknown_field("now", "seconds"))),
            ("request.host.endswith('x')", Box::new(|e| *e == E::UnknownFunction("endswith".into()))),
            ("exec('rm')", Box::new(|e| *e == E::UnknownFunction("exec".into()))),
            ("optional.some(1).hasValue()", Box::new(|e| *e == E::UnknownFunction("optional.some".into()))),
            ("google.protobuf.Struct{}", Box::new(|e| matches!(e, E::Unsupported(_) | E::Parse(_)))),
            ("request.host ==", Box::new(|e| matches!(e, E::Parse(_)))),
            ("(", Box::new(|e| matches!(e, E::Parse(_)))),
        ];
        for (src, ok) in cases {
            match Condition::compile(src) {
                Ok(_) => panic!("{src:?} compiled"),
                Err(e) => assert!(ok(&e), "{src:?}: {e:?}"),
            }
        }
        let msg = validate_when("request.hots == 'a'").unwrap_err();
        assert!(msg.contains("hots") && msg.contains("host, path"), "{msg}");
        assert!(validate_when("request.host.endsWith('.internal')").is_ok());
        assert!(validate_when(&"a".repeat(MAX_CONDITION_LEN + 1)).unwrap_err().contains("longer"));
    }

    #[test]
    fn hostile_shapes_are_refused_without_overflowing_the_stack() {
        let n = MAX_CONDITION_LEN / 2 - 2;
        let hostile = [
            format!("{}true{}", "(".repeat(n), ")".repeat(n)),
            format!("{}true{}", "[".repeat(n), "]".repeat(n)),
            format!("request{}", ".tool".repeat(n / 5)),
            format!("1{} == 1", "+1".repeat(n - 5)),
            format!("request.arguments{}", "[0]".repeat(n / 3)),
            format!("request.tool{}", ".size()".repeat(n / 8)),
            format!("{}1{} == 1", "size(".repeat(n / 5), ")".repeat(n / 5)),
            format!("{}1", "true ? 1 : ".repeat(n / 11)),
            format!("{}true", "!".repeat(n * 2 - 4)),
        ];
        // Run on a small stack, like a runtime worker's: compiling must not depend on the caller's stack.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let results: Vec<_> = hostile.iter().map(|src| Condition::compile(src).map(|_| ())).collect();
                // The compile thread survives a panicking parse.
                assert!(Condition::compile("request.tool == 'crm'").is_ok());
                results
            })
            .unwrap();
        let results = handle.join().unwrap();
        for (i, r) in results.iter().enumerate() {
            // `!!!…true` is a flat negation in CEL's grammar: it compiles, and is harmless.
            if i == 8 {
                assert!(r.is_ok(), "{r:?}");
            } else {
                // The nested conditional trips an overflow in the parser's own depth counter (a panic in
                // debug builds): caught on the compile thread and refused like the rest.
                let refused =
                    matches!(r, Err(ConditionError::TooDeep | ConditionError::Parse(_) | ConditionError::Internal(_)));
                assert!(refused, "{i}: {r:?}");
            }
        }
    }

    #[test]
    fn binds_only_what_it_reads() {
        let c = Condition::compile("request.host.endsWith('.internal') && task.calls < 100").unwrap();
        let flat: Vec<&str> = c
            .bindings
            .iter()
            .map(|b| match b {
                Binding::Field(def) => def.flat,
                Binding::Whole(v) => v.name(),
                Binding::Now => NOW,
            })
            .collect();
        assert_eq!(flat, vec!["@request.host", "@task.calls"]);
        let c = Condition::compile("request.tool == 'a' || request.tool == 'b' || size(request) > 0").unwrap();
        assert_eq!(c.bindings, vec![Binding::Field(&FIELDS[0]), Binding::Whole(Var::Request)]);
        assert_eq!(c.source(), "request.tool == 'a' || request.tool == 'b' || size(request) > 0");
    }

    #[test]
    fn compiled_conditions_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Condition>();
    }
}
