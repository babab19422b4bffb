//! `agentid report [--since 30d] [-o text|json|markdown|html] [--namespace NS] [--inventory FILE] FILES...`:
//! the least-privilege report (`crate::core::report`) from the audit trail and the cluster's
//! AgentIdentities, ToolGrants, AgentTasks and namespaces (or, with `--inventory`, from manifests, for
//! offline use). Exit 0, or 2 for unreadable input.

use std::io::Write;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{AgentIdentity, AgentTask, ToolGrant};
use crate::core::audit::Record;
use crate::core::report::{self, Inventory, Usage, render};

/// The namespace label that sets the enforcement mode.
const ENFORCEMENT_LABEL: &str = "agentid.dev/enforcement";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
    Markdown,
    Html,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ReportArgs {
    /// Only records of the last this long (e.g. `30d`, `24h`).
    #[arg(long, default_value = "30d")]
    pub since: String,
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: Format,
    /// Only agents (and namespaces) in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Read agents, grants, tasks and namespaces from this manifest file (YAML documents or a List)
    /// instead of the cluster.
    #[arg(long)]
    pub inventory: Option<PathBuf>,
    /// Trail segments of any number of replicas (or directories of them).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs `agentid report`; returns the exit code.
pub fn run(args: &ReportArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    match report_inner(args, Timestamp::now()) {
        Ok(text) => match out.write_all(text.as_bytes()) {
            Ok(()) => 0,
            Err(e) => {
                let _ = writeln!(err, "agentid report: cannot write the output: {e}");
                2
            }
        },
        Err(e) => {
            let _ = writeln!(err, "agentid report: {e}");
            2
        }
    }
}

/// `30d` → `720h` (windows of a report are usually days); anything else unchanged.
pub fn days_as_hours(s: &str) -> String {
    match s.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        Some(n) => format!("{}h", n.saturating_mul(24)),
        None => s.to_string(),
    }
}

/// Folds the records of `files` at or after `since` (RFC 3339); unparsable lines are counted, not fatal
/// (`agentid audit verify` is the integrity check).
pub fn fold(files: &[PathBuf], since: Option<&str>) -> Result<(Usage, u64), String> {
    let mut usage = Usage::default();
    let mut unreadable = 0u64;
    for f in super::audit::expand(files)? {
        super::audit::each_line(&f, |_, line, _| {
            if line.is_empty() {
                return;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) if since.is_none_or(|s| r.time.as_str() >= s) => usage.add(&r),
                Ok(_) => {}
                Err(_) => unreadable += 1,
            }
        })?;
    }
    Ok((usage, unreadable))
}

fn report_inner(args: &ReportArgs, now: Timestamp) -> Result<String, String> {
    let d = crate::api::duration::parse(&days_as_hours(&args.since)).map_err(|e| format!("--since: {e}"))?;
    let d = SignedDuration::try_from(d).map_err(|e| format!("--since: {e}"))?;
    let since = format!("{:.6}", now.checked_sub(d).map_err(|e| format!("--since: {e}"))?);
    let (usage, unreadable) = fold(&args.files, Some(&since))?;
    let mut inventory = match &args.inventory {
        Some(path) => inventory_from_file(path)?,
        None => inventory_from_cluster()?,
    };
    let mut usage = usage;
    if let Some(ns) = &args.namespace {
        inventory.retain_namespace(ns);
        usage.retain_namespace(ns);
    }
    let r = report::build(&inventory, &usage, Some(since), &format!("{now:.0}"));
    let mut text = match args.output {
        Format::Text => render::text(&r),
        Format::Markdown => render::markdown(&r),
        Format::Html => render::html(&r),
        Format::Json => serde_json::to_string_pretty(&r).map_err(|e| e.to_string())? + "\n",
    };
    if unreadable > 0 && args.output == Format::Text {
        text.push_str(&format!("\n({unreadable} unreadable lines skipped; run `agentid audit verify`)\n"));
    }
    Ok(text)
}

/// Namespaces that matter to the report: those of agents, plus those labeled with a mode.
fn namespaces_of(inv: &mut Inventory, labeled: Vec<(String, Option<String>)>) {
    let mut names: std::collections::BTreeMap<String, Option<String>> =
        labeled.into_iter().filter(|(_, m)| m.is_some()).collect();
    for a in &inv.agents {
        if let Some(ns) = &a.metadata.namespace {
            names.entry(ns.clone()).or_insert(None);
        }
    }
    inv.namespaces = names.into_iter().collect();
}

fn inventory_from_file(path: &PathBuf) -> Result<Inventory, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut inv = Inventory::default();
    let mut labeled = Vec::new();
    let mut docs: Vec<serde_json::Value> = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let v: serde_json::Value =
            serde::Deserialize::deserialize(doc).map_err(|e| format!("{}: {e}", path.display()))?;
        match v.get("items").and_then(|i| i.as_array()) {
            Some(items) if v["kind"].as_str().is_some_and(|k| k.ends_with("List")) => {
                docs.extend(items.iter().cloned())
            }
            _ if v.is_null() => {}
            _ => docs.push(v),
        }
    }
    for v in docs {
        let kind = v["kind"].as_str().unwrap_or_default().to_string();
        let bad = |e: serde_json::Error| format!("{}: a {kind}: {e}", path.display());
        match kind.as_str() {
            "AgentIdentity" => inv.agents.push(serde_json::from_value(v).map_err(bad)?),
            "ToolGrant" => inv.grants.push(serde_json::from_value(v).map_err(bad)?),
            "AgentTask" => inv.tasks.push(serde_json::from_value(v).map_err(bad)?),
            "Namespace" => {
                let n: Namespace = serde_json::from_value(v).map_err(bad)?;
                let mode = n.metadata.labels.as_ref().and_then(|l| l.get(ENFORCEMENT_LABEL)).cloned();
                labeled.push((n.metadata.name.unwrap_or_default(), mode));
            }
            _ => {}
        }
    }
    namespaces_of(&mut inv, labeled);
    Ok(inv)
}

fn inventory_from_cluster() -> Result<Inventory, String> {
    super::with_cluster(|client| async move {
        let lp = kube::api::ListParams::default();
        let err = |what: &str, e: kube::Error| format!("cannot list {what}: {e}");
        let mut inv = Inventory {
            agents: kube::Api::<AgentIdentity>::all(client.clone())
                .list(&lp)
                .await
                .map_err(|e| err("AgentIdentities", e))?
                .items,
            grants: kube::Api::<ToolGrant>::all(client.clone())
                .list(&lp)
                .await
                .map_err(|e| err("ToolGrants", e))?
                .items,
            tasks: kube::Api::<AgentTask>::all(client.clone()).list(&lp).await.map_err(|e| err("AgentTasks", e))?.items,
            namespaces: Vec::new(),
        };
        let labeled = kube::Api::<Namespace>::all(client)
            .list(&kube::api::ListParams::default().labels(ENFORCEMENT_LABEL))
            .await
            .map_err(|e| err("namespaces", e))?
            .items
            .into_iter()
            .map(|n| {
                let mode = n.metadata.labels.as_ref().and_then(|l| l.get(ENFORCEMENT_LABEL)).cloned();
                (n.metadata.name.unwrap_or_default(), mode)
            })
            .collect();
        namespaces_of(&mut inv, labeled);
        Ok(inv)
    })
}
