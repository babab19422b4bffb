//! `agentid decide`: the decision point's decision over manifests, for reviewing a ToolGrant in a pull
//! request ("would this grant let the agent make that call?").
//!
//! Exit codes: 0 allowed, 1 denied or approval required, 2 bad input.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::jiff::Timestamp;
use serde::de::DeserializeOwned;

use crate::api::{AgentIdentity, AgentTask, DataSensitivity, ToolGrant};
use crate::core::admission::offline::InputError;
use crate::core::pdp::{self, DecideConfig, DecisionRequest, MemoryUsage, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DecideArgs {
    /// The calling agent: `NAMESPACE/NAME`, or `NAME` in --namespace.
    #[arg(long)]
    pub agent: String,
    /// The tool called.
    #[arg(long)]
    pub tool: String,
    /// The action on the tool.
    #[arg(long)]
    pub action: String,
    /// The URL the call goes to.
    #[arg(long)]
    pub destination: Option<String>,
    /// Sensitivity of the data the call touches (public, internal, confidential, restricted).
    #[arg(long, value_parser = super::run::parse_sensitivity)]
    pub sensitivity: Option<DataSensitivity>,
    /// The AgentTask the call is part of (it must be among the inputs).
    #[arg(long)]
    pub task: Option<String>,
    /// Namespace of objects that name none.
    #[arg(long, short, default_value = "default")]
    pub namespace: String,
    /// Sensitivity of a call that states none.
    #[arg(long, default_value = "internal", value_parser = super::run::parse_sensitivity)]
    pub default_sensitivity: DataSensitivity,
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Output,
    /// YAML or JSON files, or directories, with the AgentIdentities, ToolGrants and AgentTasks.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

fn of_kind<T: DeserializeOwned>(
    docs: &[crate::core::admission::offline::Document],
    kind: &str,
    errors: &mut Vec<InputError>,
) -> Vec<T> {
    docs.iter()
        .filter(|d| d.value.get("kind").and_then(|k| k.as_str()) == Some(kind))
        .filter_map(|d| match serde_json::from_value(d.value.clone()) {
            Ok(o) => Some(o),
            Err(e) => {
                let message =
                    format!("not a valid {kind}: {}", crate::core::admission::workload::redact(&e.to_string()));
                errors.push(InputError { file: d.file.clone(), line: Some(d.line), message });
                None
            }
        })
        .collect()
}

pub fn run(args: &DecideArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut errors = Vec::new();
    let docs = super::check::read_documents(&args.paths, &mut errors);
    let agents: Vec<AgentIdentity> = of_kind(&docs, "AgentIdentity", &mut errors);
    let grants: Vec<ToolGrant> = of_kind(&docs, "ToolGrant", &mut errors);
    let tasks: Vec<AgentTask> = of_kind(&docs, "AgentTask", &mut errors);
    let (namespace, agent) = match args.agent.split_once('/') {
        Some((ns, name)) => (ns.to_string(), name.to_string()),
        None => (args.namespace.clone(), args.agent.clone()),
    };
    for e in &errors {
        let _ = writeln!(err, "agentid decide: {e}");
    }
    if !errors.is_empty() {
        return 2;
    }
    let now = Timestamp::now();
    let snap = pdp::offline::reconciled(agents, grants, tasks, &args.namespace, "cluster.local", now);
    if snap.agent(&namespace, &agent).is_none() {
        let _ = writeln!(err, "agentid decide: no AgentIdentity {namespace}/{agent} among the inputs");
        return 2;
    }
    if let Some(t) = &args.task
        && snap.task(&namespace, t).is_none()
    {
        let _ = writeln!(err, "agentid decide: no AgentTask {namespace}/{t} among the inputs");
        return 2;
    }
    let req = DecisionRequest {
        namespace,
        agent,
        agent_uid: None,
        task: args.task.clone(),
        tool: args.tool.clone(),
        action: args.action.clone(),
        destination: args.destination.clone(),
        sensitivity: args.sensitivity,
        method: None,
        argument_names: Vec::new(),
    };
    let cfg = DecideConfig { default_sensitivity: args.default_sensitivity };
    let d = pdp::decide(&req, &snap, &MemoryUsage::default(), now, &cfg);
    let reasons: Vec<&str> = d.reasons.iter().map(|r| r.as_str()).collect();
    let written = match args.output {
        Output::Json => {
            let v = serde_json::json!({"decision": d.outcome.as_str(), "reasons": reasons, "grant": d.grant, "explanation": d.explanation});
            writeln!(out, "{}", serde_json::to_string_pretty(&v).unwrap_or_default())
        }
        Output::Text => match d.outcome {
            Outcome::Allow => writeln!(out, "ALLOW by grant {}", d.grant.as_deref().unwrap_or("?")),
            _ => writeln!(out, "{} ({}): {}", d.outcome.as_str().to_uppercase(), reasons.join(", "), d.explanation),
        },
    };
    if let Err(e) = written {
        let _ = writeln!(err, "agentid decide: cannot write: {e}");
        return 2;
    }
    if d.outcome == Outcome::Allow { 0 } else { 1 }
}
