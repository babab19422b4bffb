//! The background scan (on the leader): workloads that already exist in governed namespaces — `enforce`,
//! `warn` and `audit` alike — are judged with the admission rules and exceptions
//! ([`crate::core::policyreport`]), and their findings published as one PolicyReport per resource.
//!
//! - Periodically (`--scan-interval`, default 10m, `0` off), and soon after (debounced) a change of the
//!   exceptions file, of any AgentIdentity, or of a namespace's enforcement mode.
//! - Reports are server-side applied (field manager `agentid-scan`) only when their findings changed (a
//!   digest in an annotation), and deleted when their resource is clean, gone, or its namespace is no
//!   longer governed. Each report has an ownerReference to its resource, so the garbage collector also
//!   removes it with the resource between scans.
//! - Workloads are listed a page (500) at a time and dropped once judged: memory stays flat with the
//!   number of workloads. A namespace where a list failed keeps its reports until a scan sees it whole.
//! - Nothing secret is logged or counted: messages are admission's, metrics carry kinds and reasons only.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, ReplicationController};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde_json::Value;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::api::AgentIdentity;
use crate::core::admission::exceptions::ExceptionSet;
use crate::core::admission::rules::AgentDirectory;
use crate::core::admission::verdict::Enforcement;
use crate::core::policyreport::{
    DIGEST_ANNOTATION, Governance, REPORT_SELECTOR, ReportApi, report, report_name, scan_object,
};
use crate::metrics::{KindLabels, Metrics, ReasonLabels};
use crate::webhook::agents::LiveDirectory;

/// Field manager of every report write.
pub const FIELD_MANAGER: &str = "agentid-scan";
/// Workloads listed per request.
const PAGE: u32 = 500;
/// Report writes in flight at once.
const CONCURRENT_WRITES: usize = 16;

/// `agentid run` flags of the scan.
#[derive(clap::Args, Debug, Clone)]
pub struct ScanFlags {
    /// How often the leader judges the workloads that already run in governed namespaces (enforce, warn and
    /// audit) and publishes PolicyReports; `0` turns the background scan off. Changes of the exceptions, an
    /// AgentIdentity or a namespace's mode also trigger a scan.
    #[arg(long, env = "AGENTID_SCAN_INTERVAL", default_value = "10m", value_parser = parse_interval)]
    pub scan_interval: Duration,
    /// The report API: `wgpolicyk8s.io` (PolicyReport v1alpha2: Kyverno's default, read by Policy Reporter)
    /// or `openreports.io` (Report v1alpha1, its successor).
    #[arg(long, env = "AGENTID_SCAN_REPORT_API", default_value = "wgpolicyk8s.io")]
    pub scan_report_api: ReportApi,
}

impl Default for ScanFlags {
    fn default() -> Self {
        ScanFlags { scan_interval: Duration::from_secs(600), scan_report_api: ReportApi::default() }
    }
}

/// `0` (off) or an agentid duration such as `10m`, `1h30m`.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    crate::api::duration::parse(s).map_err(|e| e.to_string())
}

/// Everything the scan needs to know.
#[derive(Debug, Clone)]
pub struct ScanConfig {
    /// Time between periodic scans; zero: no scan at all.
    pub interval: Duration,
    pub report_api: ReportApi,
    pub governance: Governance,
    /// The admission exceptions file, re-read every `reload_every`.
    pub exceptions_file: Option<PathBuf>,
    pub reload_every: Duration,
    /// Quiet time after a change before the rescan it triggers (changes come in bursts).
    pub debounce: Duration,
}

impl ScanConfig {
    /// The scan of `agentid run`: the namespaces the webhook judges (`--webhook-scope`,
    /// `--watch-namespace`, never the operator's), the exceptions it uses (`--exceptions-file`).
    pub fn from_args(args: &crate::cli::run::RunArgs) -> crate::Result<ScanConfig> {
        let scope = match &args.webhook_scope {
            Some(s) => Some(
                s.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| crate::Error::Config(format!("--webhook-scope {s:?}: expected key=value")))?,
            ),
            None => None,
        };
        Ok(ScanConfig {
            interval: args.scan.scan_interval,
            report_api: args.scan.scan_report_api,
            governance: Governance {
                operator_namespace: args.operator_namespace.clone(),
                scope,
                only_namespace: args.watch_namespace.clone(),
            },
            exceptions_file: args.exceptions_file.clone(),
            reload_every: Duration::from_secs(10),
            debounce: Duration::from_secs(2),
        })
    }
}

/// The metrics of the scan (`agentid_scan_*`), registered into [`crate::metrics::Metrics`].
#[derive(Clone)]
pub struct ScanMetrics {
    pub duration: Histogram,
    pub resources: Family<KindLabels, Counter>,
    pub reports_written: Counter,
    pub reports_deleted: Counter,
    pub errors: Family<ReasonLabels, Counter>,
}

impl ScanMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = ScanMetrics {
            duration: Histogram::new(exponential_buckets(0.01, 2.0, 16)),
            resources: Family::default(),
            reports_written: Counter::default(),
            reports_deleted: Counter::default(),
            errors: Family::default(),
        };
        registry.register("scan_duration_seconds", "Duration of one background scan", m.duration.clone());
        registry.register("scan_resources", "Workloads judged by the background scan, by kind", m.resources.clone());
        registry.register(
            "scan_reports_written",
            "PolicyReports created or changed by the background scan",
            m.reports_written.clone(),
        );
        registry.register(
            "scan_reports_deleted",
            "PolicyReports deleted by the background scan (resource clean, gone or no longer governed)",
            m.reports_deleted.clone(),
        );
        registry.register(
            "scan_errors",
            "Background scan failures by reason (list, write, delete, reports_api_missing)",
            m.errors.clone(),
        );
        m
    }

    fn error(&self, reason: &str) {
        self.errors.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }
}

/// What one scan did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub namespaces: usize,
    pub resources: usize,
    pub with_findings: usize,
    pub written: usize,
    pub deleted: usize,
    pub errors: usize,
}

/// Every kind with a pod spec, as admission judges them.
fn workload_resources() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<ReplicationController>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<CronJob>(&()),
    ]
}

fn report_resource(api: ReportApi) -> ApiResource {
    ApiResource {
        group: api.group().into(),
        version: api.version().into(),
        api_version: api.api_version(),
        kind: api.kind().into(),
        plural: api.plural().into(),
    }
}

/// The scanner: its own AgentIdentity cache and exceptions, so it runs with or without the webhook.
pub struct Scanner {
    client: Client,
    config: ScanConfig,
    agents: Arc<dyn AgentDirectory + Send + Sync>,
    exceptions: RwLock<ExceptionSet>,
    metrics: ScanMetrics,
    wake: Notify,
}

impl Scanner {
    pub fn new(
        client: Client,
        config: ScanConfig,
        agents: Arc<dyn AgentDirectory + Send + Sync>,
        exceptions: ExceptionSet,
        metrics: ScanMetrics,
    ) -> Self {
        Scanner { client, config, agents, exceptions: RwLock::new(exceptions), metrics, wake: Notify::new() }
    }

    /// Asks for a rescan (after the debounce).
    pub fn trigger(&self) {
        self.wake.notify_one();
    }

    /// One full scan.
    pub async fn scan_once(&self) -> ScanStats {
        let started = Instant::now();
        let now = Timestamp::now();
        let mut stats = ScanStats::default();
        let reports_ar = report_resource(self.config.report_api);
        let reports: Api<DynamicObject> = match &self.config.governance.only_namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &reports_ar),
            None => Api::all_with(self.client.clone(), &reports_ar),
        };
        // What exists: (namespace, name) → findings digest.
        let existing = match self.existing_reports(&reports).await {
            Ok(e) => e,
            Err(e) => {
                let label =
                    if matches!(&e, kube::Error::Api(s) if s.code == 404) { "reports_api_missing" } else { "list" };
                warn!(api = %self.config.report_api.api_version(), error = %reason(&e),
                    "background scan: cannot list reports (is the {} CRD installed?)", self.config.report_api.kind());
                self.metrics.error(label);
                stats.errors += 1;
                return stats;
            }
        };
        let (governed, in_scope) = match self.governed_namespaces().await {
            Ok(g) => g,
            Err(e) => {
                warn!(error = %reason(&e), "background scan: cannot list namespaces");
                self.metrics.error("list");
                stats.errors += 1;
                return stats;
            }
        };
        stats.namespaces = governed.len();
        let exceptions = self.exceptions.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut wanted: HashSet<(String, String)> = HashSet::new();
        let mut incomplete: HashSet<String> = HashSet::new();
        for (ns, mode) in &governed {
            for ar in workload_resources() {
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &ar);
                let mut lp = ListParams::default().limit(PAGE);
                loop {
                    let page = match api.list(&lp).await {
                        Ok(p) => p,
                        Err(e) => {
                            warn!(namespace = %ns, kind = %ar.kind, error = %reason(&e), "background scan: list failed");
                            self.metrics.error("list");
                            stats.errors += 1;
                            incomplete.insert(ns.clone());
                            break;
                        }
                    };
                    let mut writes = Vec::new();
                    self.metrics
                        .resources
                        .get_or_create(&KindLabels { kind: ar.kind.clone() })
                        .inc_by(page.items.len() as u64);
                    for obj in page.items {
                        let value = as_object(obj, &ar);
                        stats.resources += 1;
                        let Some(scan) = scan_object(&value, ns, *mode, self.agents.as_ref(), &exceptions, now) else {
                            continue;
                        };
                        let Some(body) = report(&scan, self.config.report_api, now) else { continue };
                        stats.with_findings += 1;
                        let name = report_name(&scan.subject.uid);
                        let digest = body
                            .pointer(&format!("/metadata/annotations/{}", DIGEST_ANNOTATION.replace('/', "~1")))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        let key = (ns.clone(), name.clone());
                        let unchanged = existing.get(&key).is_some_and(|d| d.is_some() && *d == digest);
                        wanted.insert(key);
                        if !unchanged {
                            writes.push((name, body));
                        }
                    }
                    let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &reports_ar);
                    let pp = PatchParams::apply(FIELD_MANAGER).force();
                    let results: Vec<bool> = futures::stream::iter(writes)
                        .map(|(name, body)| {
                            let (api, pp) = (&api, &pp);
                            async move {
                                match api.patch(&name, pp, &Patch::Apply(&body)).await {
                                    Ok(_) => true,
                                    Err(e) => {
                                        warn!(namespace = %ns, report = %name, error = %reason(&e), "background scan: report not written");
                                        false
                                    }
                                }
                            }
                        })
                        .buffer_unordered(CONCURRENT_WRITES)
                        .collect()
                        .await;
                    for ok in results {
                        if ok {
                            stats.written += 1;
                            self.metrics.reports_written.inc();
                        } else {
                            stats.errors += 1;
                            self.metrics.error("write");
                        }
                    }
                    match page.metadata.continue_.filter(|c| !c.is_empty()) {
                        Some(token) => lp = lp.continue_token(&token),
                        None => break,
                    }
                }
            }
        }
        let stale: Vec<(String, String)> = existing
            .into_keys()
            .filter(|key| !wanted.contains(key))
            .filter(|(ns, _)| in_scope.contains(ns) && !incomplete.contains(ns))
            .collect();
        let reports_ar = &reports_ar;
        let results: Vec<bool> = futures::stream::iter(stale)
            .map(|(ns, name)| async move {
                let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, reports_ar);
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => true,
                    Err(kube::Error::Api(s)) if s.code == 404 => true,
                    Err(e) => {
                        warn!(namespace = %ns, report = %name, error = %reason(&e), "background scan: report not deleted");
                        false
                    }
                }
            })
            .buffer_unordered(CONCURRENT_WRITES)
            .collect()
            .await;
        for ok in results {
            if ok {
                stats.deleted += 1;
                self.metrics.reports_deleted.inc();
            } else {
                stats.errors += 1;
                self.metrics.error("delete");
            }
        }
        self.metrics.duration.observe(started.elapsed().as_secs_f64());
        stats
    }

    async fn existing_reports(
        &self,
        api: &Api<DynamicObject>,
    ) -> Result<HashMap<(String, String), Option<String>>, kube::Error> {
        let mut out = HashMap::new();
        let mut lp = ListParams::default().labels(REPORT_SELECTOR).limit(PAGE);
        loop {
            let page = api.list_metadata(&lp).await?;
            for r in page.items {
                let digest = r.metadata.annotations.as_ref().and_then(|a| a.get(DIGEST_ANNOTATION)).cloned();
                if let (Some(ns), Some(name)) = (r.metadata.namespace, r.metadata.name) {
                    out.insert((ns, name), digest);
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => lp = lp.continue_token(&token),
                None => return Ok(out),
            }
        }
    }

    /// The governed namespaces with their modes, and every namespace in this installation's scope.
    async fn governed_namespaces(&self) -> Result<(Vec<(String, Enforcement)>, HashSet<String>), kube::Error> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = match &self.config.governance.only_namespace {
            Some(ns) => {
                let lp = ListParams::default().fields(&format!("metadata.name={ns}"));
                api.list_metadata(&lp).await?.items
            }
            None => api.list_metadata(&ListParams::default()).await?.items,
        };
        let mut governed = Vec::new();
        let mut in_scope = HashSet::new();
        for n in list {
            let (Some(name), labels) = (n.metadata.name, n.metadata.labels.unwrap_or_default()) else { continue };
            if !self.config.governance.in_scope(&name, &labels) {
                continue;
            }
            if let Some(mode) = self.config.governance.mode(&name, &labels) {
                governed.push((name.clone(), mode));
            }
            in_scope.insert(name);
        }
        Ok((governed, in_scope))
    }

    /// Re-reads the exceptions file every `reload_every`; a changed, valid file triggers a rescan.
    async fn reload_exceptions(&self, path: PathBuf) {
        let mut last = std::fs::read_to_string(&path).ok();
        loop {
            tokio::time::sleep(self.config.reload_every).await;
            let now = std::fs::read_to_string(&path).ok();
            if now == last {
                continue;
            }
            match ExceptionSet::parse(now.as_deref().unwrap_or("")) {
                Ok(set) => {
                    *self.exceptions.write().unwrap_or_else(|p| p.into_inner()) = set;
                    last = now;
                    info!("background scan: exceptions changed, rescanning");
                    self.trigger();
                }
                Err(e) => {
                    warn!(error = %e, "background scan: invalid exceptions file; keeping the previous exceptions")
                }
            }
        }
    }

    /// Triggers a rescan when a namespace's mode (as the scan sees it) changes.
    async fn watch_namespaces(&self) {
        let api: Api<PartialObjectMeta<Namespace>> = Api::all(self.client.clone());
        let mut modes: HashMap<String, Option<Enforcement>> = HashMap::new();
        let stream = watcher(api, watcher::Config::default()).backoff(crate::controller::watch_backoff());
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            let (ns, live) = match event {
                Ok(watcher::Event::InitApply(n)) => {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    let mode = self.config.governance.mode(&name, &n.metadata.labels.clone().unwrap_or_default());
                    modes.insert(name, mode);
                    continue;
                }
                Ok(watcher::Event::Apply(n)) => (n, true),
                Ok(watcher::Event::Delete(n)) => (n, false),
                Ok(_) => continue,
                Err(e) => {
                    warn!(error = %e, "background scan: namespace watch error (retrying)");
                    continue;
                }
            };
            let name = ns.metadata.name.clone().unwrap_or_default();
            let mode =
                if live { self.config.governance.mode(&name, &ns.metadata.labels.unwrap_or_default()) } else { None };
            if modes.insert(name.clone(), mode).flatten() != mode {
                info!(namespace = %name, mode = ?mode.map(|m| m.as_str()), "background scan: namespace mode changed, rescanning");
                self.trigger();
            }
        }
    }

    /// Scans now, then every interval and after every (debounced) trigger; never returns.
    pub async fn run_loop(self: Arc<Self>) {
        loop {
            let stats = self.scan_once().await;
            info!(
                namespaces = stats.namespaces,
                resources = stats.resources,
                with_findings = stats.with_findings,
                written = stats.written,
                deleted = stats.deleted,
                errors = stats.errors,
                "background scan done"
            );
            tokio::select! {
                _ = tokio::time::sleep(self.config.interval) => {}
                _ = self.wake.notified() => {
                    tokio::time::sleep(self.config.debounce).await;
                }
            }
        }
    }
}

/// One line for an API error: the apiserver's message and code, not a debug dump.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// A listed item as the full object admission sees (list items carry no apiVersion and kind).
fn as_object(obj: DynamicObject, ar: &ApiResource) -> Value {
    let mut v = serde_json::to_value(&obj).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("apiVersion".into(), Value::String(ar.api_version.clone()));
        m.insert("kind".into(), Value::String(ar.kind.clone()));
    }
    v
}

/// Starts the scan with its own AgentIdentity cache, namespace watch and exceptions reloader; returns when
/// the scan is off (interval zero), otherwise runs until the future is dropped (leadership lost).
/// `agents`: the admission webhook's directory of AgentIdentities, when this process serves admission over the
/// same namespaces (it then follows one watch, not two); `None`: the scan follows its own.
pub async fn run(client: Client, config: ScanConfig, metrics: Arc<Metrics>, agents: Option<Arc<LiveDirectory>>) {
    if config.interval.is_zero() {
        info!("background scan off (--scan-interval 0)");
        return;
    }
    let exceptions = match &config.exceptions_file {
        Some(p) => match std::fs::read_to_string(p).map_err(|e| e.to_string()).and_then(|t| ExceptionSet::parse(&t)) {
            Ok(set) => set,
            Err(e) => {
                warn!(error = %e, "background scan: exceptions not loaded; scanning without until the file is valid");
                ExceptionSet::default()
            }
        },
        None => ExceptionSet::default(),
    };
    // Without a shared directory, one of its own and the watch that feeds it.
    let (agents, own_watch) = match agents {
        Some(shared) => (shared, None),
        None => {
            let api: Api<AgentIdentity> = match &config.governance.only_namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            (Arc::new(LiveDirectory::default()), Some(api))
        }
    };
    let scanner = Arc::new(Scanner::new(client, config.clone(), agents.clone(), exceptions, metrics.scan.clone()));
    // AgentIdentity changes (added, changed, status, deleted) trigger a rescan; the initial list does not.
    let agents_watch = {
        let (scanner, agents) = (scanner.clone(), agents.clone());
        let mut changes = agents.subscribe();
        async move {
            let rescan = async move {
                while changes.changed().await.is_ok() {
                    scanner.trigger();
                }
            };
            match own_watch {
                Some(api) => {
                    tokio::join!(agents.watch(api), rescan);
                }
                None => rescan.await,
            }
        }
    };
    let reload = {
        let scanner = scanner.clone();
        async move {
            match config.exceptions_file.clone() {
                Some(path) => scanner.reload_exceptions(path).await,
                None => std::future::pending().await,
            }
        }
    };
    let namespaces = {
        let scanner = scanner.clone();
        async move { scanner.watch_namespaces().await }
    };
    let main = async move {
        agents.wait_synced().await;
        info!(interval = ?config.interval, api = %config.report_api.api_version(), "background scan started");
        scanner.run_loop().await;
    };
    tokio::join!(agents_watch, reload, namespaces, main);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_parse_and_zero_means_off() {
        assert_eq!(parse_interval("0"), Ok(Duration::ZERO));
        assert_eq!(parse_interval("10m"), Ok(Duration::from_secs(600)));
        assert!(parse_interval("soon").is_err());
        assert_eq!(ScanFlags::default().scan_interval, Duration::from_secs(600));
    }

    #[test]
    fn listed_items_get_their_kind_back() {
        use kube::Resource;
        let ar = ApiResource::erase::<Deployment>(&());
        let obj: DynamicObject = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d", "namespace": "n"}, "spec": {"template": {"spec": {"containers": []}}}}))
        .unwrap();
        let v = as_object(obj, &ar);
        assert_eq!((v["apiVersion"].as_str(), v["kind"].as_str()), (Some("apps/v1"), Some("Deployment")));
        assert_eq!(v["spec"]["template"]["spec"]["containers"], serde_json::json!([]));
        assert!(Deployment::kind(&()) == "Deployment");
    }
}
