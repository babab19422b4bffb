//! `agentid run`: the operator — controllers, the admission webhook, probes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kube::{Api, Client};
use tracing::{error, info, warn};

use crate::api::AgentIdentity;
use crate::controller::leader::{self, LeaderConfig};
use crate::controller::{self, Context, OperatorConfig};
use crate::core::admission::exceptions::ExceptionSet;
use crate::core::admission::registration::{Endpoint, Registration};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pdp;
use crate::probes::{self, Readiness};
use crate::server::listener::Limits;
use crate::server::tls::{CertSource, Files, SelfManaged};
use crate::server::{self, ExtraListener, ServeConfig};
use crate::webhook::{self, WebhookState};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// SPIFFE trust domain for agents that do not set their own.
    #[arg(long, env = "AGENTID_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Address of the plain-HTTP health, readiness and metrics endpoints.
    #[arg(long, env = "AGENTID_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    pub probe_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "AGENTID_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Name of this replica (defaults to the pod name, then the host name).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,
    /// The operator's own namespace (its certificate Secret lives here; it is never judged).
    #[arg(long, env = "POD_NAMESPACE", default_value = "agentid-system")]
    pub operator_namespace: String,
    /// The operator's ServiceAccount (its own requests are never judged).
    #[arg(long, env = "AGENTID_SERVICE_ACCOUNT", default_value = "agentid")]
    pub service_account: String,

    /// Run controllers without leader election (only for a single replica).
    #[arg(long, env = "AGENTID_NO_LEADER_ELECT")]
    pub no_leader_elect: bool,

    /// Turn ToolGrants into RBAC even though this instance does not serve and register the ToolGrant
    /// escalation check (only when another instance or policy checks every ToolGrant's author).
    #[arg(long, env = "AGENTID_ALLOW_UNCHECKED_GRANTS")]
    pub allow_unchecked_grants: bool,

    /// Do not serve the admission webhook.
    #[arg(long, env = "AGENTID_NO_WEBHOOK")]
    pub no_webhook: bool,
    /// Address of the HTTPS admission endpoint.
    #[arg(long, env = "AGENTID_WEBHOOK_ADDR", default_value = "0.0.0.0:8443")]
    pub webhook_addr: SocketAddr,
    /// Address of the HTTPS task-token broker (agents reach this port only).
    #[arg(long, env = "AGENTID_BROKER_ADDR", default_value = "0.0.0.0:8444")]
    pub broker_addr: SocketAddr,
    /// Base URL the apiserver calls the webhook at (e.g. https://127.0.0.1:8443 for a local control plane).
    /// Without it the webhook configuration points at the Service `--webhook-service`.
    #[arg(long, env = "AGENTID_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Service in front of the operator (name; port 443) used when no --webhook-url is given.
    #[arg(long, env = "AGENTID_WEBHOOK_SERVICE", default_value = "agentid")]
    pub webhook_service: String,
    /// Name of the ValidatingWebhookConfiguration agentid keeps up to date.
    #[arg(long, env = "AGENTID_WEBHOOK_CONFIGURATION", default_value = "agentid")]
    pub webhook_configuration: String,
    /// Do not create or update the ValidatingWebhookConfiguration (something else manages it).
    #[arg(long, env = "AGENTID_NO_WEBHOOK_REGISTRATION")]
    pub no_webhook_registration: bool,
    /// Also require this `key=value` label on judged namespaces (to run several installs side by side).
    #[arg(long, env = "AGENTID_WEBHOOK_SCOPE")]
    pub webhook_scope: Option<String>,
    /// Serving certificate file (PEM), e.g. from cert-manager; reloaded on change. Default: self-managed.
    #[arg(long, env = "AGENTID_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving key file (PEM).
    #[arg(long, env = "AGENTID_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// CA bundle (PEM) to put into the webhook configuration when certificates come from files.
    #[arg(long, env = "AGENTID_CA_BUNDLE_FILE")]
    pub ca_bundle_file: Option<PathBuf>,
    /// Audience an agent's own projected ServiceAccount token must carry to ask for task tokens.
    #[arg(long, env = "AGENTID_TOKEN_AUDIENCE", default_value = "agentid")]
    pub token_audience: String,
    /// Admission exceptions file (YAML); reloaded on change.
    #[arg(long, env = "AGENTID_EXCEPTIONS_FILE")]
    pub exceptions_file: Option<PathBuf>,
    /// CA bundle (PEM) of the client certificate the apiserver presents to webhooks (its admission
    /// configuration's kubeConfigFile). When set, the admission listener accepts only connections with a
    /// client certificate signed by it, so nobody else can send it AdmissionReviews. Reloaded on change.
    #[arg(long, env = "AGENTID_WEBHOOK_CLIENT_CA_FILE")]
    pub webhook_client_ca_file: Option<PathBuf>,
    /// Groups whose members may lower or remove a namespace's agentid.dev/enforcement label
    /// (comma-separated). Everyone else may only raise it; a ValidatingAdmissionPolicy enforces this.
    #[arg(long, env = "AGENTID_ENFORCEMENT_ADMIN_GROUPS", value_delimiter = ',', default_value = "system:masters")]
    pub enforcement_admin_groups: Vec<String>,
    /// Do not install the policy that guards the enforcement label (anyone who may edit a namespace may
    /// then switch its admission off).
    #[arg(long, env = "AGENTID_NO_ENFORCEMENT_GUARD")]
    pub no_enforcement_guard: bool,
    /// Address of the HTTPS decision point (AuthZEN, forward-auth): gateways and agent frameworks ask it
    /// before every tool call.
    #[arg(long, env = "AGENTID_PDP_ADDR", default_value = "0.0.0.0:8445")]
    pub pdp_addr: SocketAddr,
    /// Audience an agent's own ServiceAccount token must carry to be accepted by the decision point
    /// (task tokens carry their task's audiences instead).
    #[arg(long, env = "AGENTID_PDP_AUDIENCE", default_value = "agentid-pdp")]
    pub pdp_audience: String,
    /// Sensitivity a tool call that states none is judged at.
    #[arg(long, env = "AGENTID_PDP_DEFAULT_SENSITIVITY", default_value = "internal", value_parser = parse_sensitivity)]
    pub pdp_default_sensitivity: crate::api::DataSensitivity,
    /// CA bundle (PEM) of enforcement points' client certificates. The decision point then verifies a
    /// client certificate when one is presented (agents keep calling with bearer tokens, without one).
    /// Reloaded on change.
    #[arg(long, env = "AGENTID_PDP_CLIENT_CA_FILE")]
    pub pdp_client_ca_file: Option<PathBuf>,
    /// A URI or DNS name in the client certificate of an enforcement point that terminates the agents'
    /// mTLS, whose ext_authz `source.principal` then identifies the agent without a token
    /// (comma-separated or repeated). Needs --pdp-client-ca-file.
    #[arg(long, env = "AGENTID_PDP_TRUSTED_PEP", value_delimiter = ',', requires = "pdp_client_ca_file")]
    pub pdp_trusted_pep: Vec<String>,
    /// Trust domains of mesh identities (`spiffe://<td>/ns/<ns>/sa/<sa>`) accepted from trusted
    /// enforcement points besides --trust-domain (comma-separated or repeated).
    #[arg(long, env = "AGENTID_PDP_MESH_TRUST_DOMAIN", value_delimiter = ',')]
    pub pdp_mesh_trust_domain: Vec<String>,
    #[command(flatten)]
    pub audit: crate::audit::AuditFlags,
    #[command(flatten)]
    pub scan: crate::scan::ScanFlags,
}

pub fn parse_sensitivity(s: &str) -> std::result::Result<crate::api::DataSensitivity, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("{s:?}: expected public, internal, confidential or restricted"))
}

/// One line for an API error: the apiserver's message, not a debug dump.
fn api_reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// This replica's name: `--instance`, the pod name, the host name, or the process id.
pub fn instance_name(args: &RunArgs) -> String {
    args.instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("agentid-{}", std::process::id()))
}

impl RunArgs {
    fn registration(&self) -> Result<Option<Registration>> {
        if self.no_webhook_registration {
            return Ok(None);
        }
        let endpoint = match &self.webhook_url {
            Some(url) => Endpoint::Url(url.clone()),
            None => Endpoint::Service {
                namespace: self.operator_namespace.clone(),
                name: self.webhook_service.clone(),
                port: 443,
            },
        };
        let scope = match &self.webhook_scope {
            Some(s) => {
                let (k, v) = s
                    .split_once('=')
                    .ok_or_else(|| Error::Config(format!("--webhook-scope {s:?}: expected key=value")))?;
                Some((k.to_string(), v.to_string()))
            }
            None => None,
        };
        Ok(Some(Registration {
            name: self.webhook_configuration.clone(),
            endpoint,
            ca_bundle: Vec::new(),
            operator_namespace: self.operator_namespace.clone(),
            operator_user: Some(format!("system:serviceaccount:{}:{}", self.operator_namespace, self.service_account)),
            scope,
            only_namespace: self.watch_namespace.clone(),
            timeout_seconds: 5,
            enforcement_admins: (!self.no_enforcement_guard).then(|| {
                self.enforcement_admin_groups.iter().map(|g| g.trim().to_string()).filter(|g| !g.is_empty()).collect()
            }),
        }))
    }

    fn cert_source(&self) -> CertSource {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => CertSource::Files(Files {
                cert: cert.clone(),
                key: key.clone(),
                ca_bundle: self.ca_bundle_file.clone(),
            }),
            _ => {
                let svc = format!("{}.{}.svc", self.webhook_service, self.operator_namespace);
                CertSource::SelfManaged(SelfManaged {
                    namespace: self.operator_namespace.clone(),
                    secret_name: format!("{}-webhook-tls", self.webhook_configuration),
                    sans: vec!["127.0.0.1".into(), "localhost".into(), svc.clone(), format!("{svc}.cluster.local")],
                    validity: Duration::from_secs(90 * 24 * 3600),
                })
            }
        }
    }
}

fn load_exceptions(path: &Option<PathBuf>) -> Result<ExceptionSet> {
    match path {
        None => Ok(ExceptionSet::default()),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).map_err(|e| Error::Config(format!("cannot read {}: {e}", p.display())))?;
            ExceptionSet::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
        }
    }
}

/// Runs the operator until SIGTERM/SIGINT.
pub async fn run(args: RunArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let instance = instance_name(&args);
    let config = OperatorConfig {
        trust_domain: args.trust_domain.clone(),
        instance,
        watch_namespace: args.watch_namespace.clone(),
    };
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());
    readiness.webhook_enabled.store(!args.no_webhook, Ordering::Release);

    let listener = tokio::net::TcpListener::bind(args.probe_addr).await?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let probe_app = probes::router(metrics.clone(), readiness.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, probe_app).await {
            error!(error = %e, "probe server stopped");
        }
    });

    // Fail fast, with a clear message, when the CRDs are not installed.
    config.api::<AgentIdentity>(client.clone()).list(&kube::api::ListParams::default().limit(1)).await.map_err(
        |e| {
            Error::Config(format!(
                "cannot list AgentIdentities (are the CRDs installed? `agentid crdgen | kubectl apply -f -`): {}",
                api_reason(&e)
            ))
        },
    )?;
    // Ready only while the apiserver answers: cut off from it, the caches admission, the broker and the
    // decision point answer from go stale (the watches behind them retry on their own).
    tokio::spawn(probes::watch_apiserver(
        readiness.clone(),
        {
            let client = client.clone();
            move || {
                let client = client.clone();
                async move { client.apiserver_version().await.is_ok() }
            }
        },
        probes::APISERVER_CHECK_INTERVAL,
        probes::APISERVER_GRACE,
    ));
    // The Lease and the certificate Secret live in the operator's namespace: say so if it is missing.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match namespaces.get_opt(&args.operator_namespace).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return Err(Error::Config(format!(
                "the operator namespace {ns:?} does not exist: create it (`kubectl create namespace {ns}`) or pass --operator-namespace",
                ns = args.operator_namespace
            )));
        }
        // Without permission to read namespaces, find out later (the first write says what is wrong).
        Err(e) => warn!(error = %api_reason(&e), "could not check the operator namespace"),
    }

    let (mut trail, mut listening, mut agents) = (None, None, None);
    if !args.no_webhook {
        let serving = serve_webhook(&args, client.clone(), metrics.clone(), readiness.clone()).await?;
        (trail, listening, agents) = (serving.audit, Some(serving.listening), Some(serving.agents));
    }

    let mut ctx = Context::new(client.clone(), config, metrics);
    ctx.audit = trail.clone();
    let ctx = Arc::new(ctx);
    let metrics_for_scan = ctx.metrics.clone();
    // Followers are ready too: they serve the webhook and the token endpoint.
    readiness.controllers.store(true, Ordering::Release);
    let leader = (!args.no_leader_elect).then(|| LeaderConfig::new(&args.operator_namespace, &ctx.config.instance));
    // A follower told to stop (a rolling upgrade, a drained node) stops at once instead of waiting for the
    // kubelet's SIGKILL at the end of the grace period.
    let acquired = match &leader {
        Some(cfg) => {
            info!(lease = %cfg.name, namespace = %cfg.namespace, identity = %cfg.identity, "waiting to become leader");
            tokio::select! {
                rx = leader::acquire(client.clone(), cfg.clone()) => Some(Some(rx)),
                _ = crate::signal::shutdown() => None,
            }
        }
        None => Some(None),
    };
    let result = match acquired {
        Some(lost) => lead(&args, client.clone(), ctx, metrics_for_scan, agents, leader.as_ref(), lost).await,
        None => {
            info!("stopping before having led");
            Ok(())
        }
    };
    // Stopping: requests in flight (admission, tokens, decisions) are answered and clients are told to
    // reconnect elsewhere, instead of failing with the connection when the process ends.
    if let Some(l) = listening {
        let drained = l.drain.drain(DRAIN_WITHIN).await;
        info!(all_answered = drained, "listeners drained");
    }
    // A last signed checkpoint, so the trail's end is covered by a signature and not by the chain alone.
    if let Some(trail) = trail {
        match trail.checkpoint().await {
            Ok(_) => info!("audit trail: final checkpoint written"),
            Err(e) => warn!(error = %e, "audit trail: no final checkpoint"),
        }
    }
    result?;
    info!("agentid operator stopped");
    Ok(())
}

/// Whether this instance turns ToolGrants into RBAC: only when it serves and registers the ToolGrant
/// escalation check itself (so no grant carries permissions its author lacks), or when told that something
/// else checks every grant (`--allow-unchecked-grants`).
fn grants_become_rbac(args: &RunArgs) -> bool {
    (!args.no_webhook && !args.no_webhook_registration) || args.allow_unchecked_grants
}

/// `--audit-apiserver-events` writes what is posted to the admission listener into agents' timelines: only
/// when that listener requires the apiserver's client certificate, and there is a trail to write to.
fn audit_ingest_allowed(args: &RunArgs) -> Result<()> {
    if args.audit.audit_dir.is_none() {
        return Err(Error::Config("--audit-apiserver-events needs --audit-dir".into()));
    }
    if args.webhook_client_ca_file.is_none() {
        return Err(Error::Config(
            "--audit-apiserver-events needs --webhook-client-ca-file: only the apiserver, with its client certificate, may post audit events".into(),
        ));
    }
    Ok(())
}

/// How long a stopping replica waits for its connections to finish (the chart's grace period is 30 s,
/// 5 s of which the preStop sleep takes).
const DRAIN_WITHIN: Duration = Duration::from_secs(10);

/// The leader's work until a signal stops it (then the Lease is released, so a follower takes over
/// at once) or the Lease is lost (then an error: the process exits and competes again when restarted).
async fn lead(
    args: &RunArgs,
    client: Client,
    ctx: Arc<Context>,
    metrics_for_scan: Arc<Metrics>,
    agents: Option<Arc<webhook::agents::LiveDirectory>>,
    leader: Option<&LeaderConfig>,
    mut lost: Option<tokio::sync::watch::Receiver<bool>>,
) -> Result<()> {
    info!(trust_domain = %ctx.config.trust_domain, "agentid controllers started");
    let controllers = async {
        if grants_become_rbac(args) {
            tokio::join!(
                controller::identity::run(ctx.clone()),
                controller::toolgrant::run(ctx.clone()),
                controller::task::run(ctx)
            );
        } else {
            warn!(
                "ToolGrants are not turned into RBAC: this instance does not serve the ToolGrant escalation check \
                 (--no-webhook / --no-webhook-registration). Pass --allow-unchecked-grants if something else checks them."
            );
            tokio::join!(controller::identity::run(ctx.clone()), controller::task::run(ctx));
        }
    };
    // The background scan: PolicyReports for the workloads that already run (leader only, like the controllers).
    let scan = crate::scan::run(client.clone(), crate::scan::ScanConfig::from_args(args)?, metrics_for_scan, agents);
    // The controllers drain and end on the signal by themselves; the scan loops until told.
    let scan = async {
        tokio::select! {
            _ = scan => {}
            _ = crate::signal::shutdown() => {}
        }
    };
    let controllers = async { tokio::join!(controllers, scan) };
    let leadership_lost = async {
        match lost.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|leads| !*leads).await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    let result = tokio::select! {
        _ = controllers => Ok(()),
        _ = leadership_lost => Err(Error::Config("leadership lost; exiting so that a fresh start competes again".into())),
    };
    if let (Some(cfg), Ok(())) = (leader, &result) {
        leader::release(client, cfg).await;
    }
    result
}

/// The decision point's state, kept current by its own watches; ready (and the probe with it) once
/// they have listed and the issuer's keys are loaded.
pub fn start_pdp(args: &RunArgs, client: Client, metrics: Arc<Metrics>, ready: Arc<Readiness>) -> Arc<pdp::PdpState> {
    let replica = instance_name(args);
    let config = pdp::PdpConfig {
        audience: args.pdp_audience.clone(),
        decide: crate::core::pdp::DecideConfig { default_sensitivity: args.pdp_default_sensitivity },
        replica: replica.clone(),
        trusted_peps: args.pdp_trusted_pep.clone(),
        mesh_trust_domains: args.pdp_mesh_trust_domain.clone(),
    };
    let budgets = Arc::new(pdp::budget::Budgets::new(client.clone(), &replica));
    tokio::spawn(budgets.clone().report_periodically(Duration::from_secs(5)));
    let keys = Arc::new(pdp::keys::KeySource::new(client.clone()));
    let state = Arc::new(pdp::PdpState::new(config, &args.trust_domain, keys, budgets, metrics));
    ready.pdp_enabled.store(true, Ordering::Release);
    let synced = pdp::watch::start(client, args.watch_namespace.clone(), state.clone());
    tokio::spawn(async move {
        synced.await;
        info!("decision point ready");
        ready.pdp.store(true, Ordering::Release);
    });
    state
}

/// Starts the agent cache, the exceptions reloader and the HTTPS admission endpoint.
pub async fn start_webhook(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
) -> Result<server::Listening> {
    Ok(serve_webhook(args, client, metrics, ready).await?.listening)
}

/// What [`serve_webhook`] started.
pub struct Serving {
    pub listening: server::Listening,
    /// The audit trail (with `--audit-dir`), for a last checkpoint at shutdown.
    pub audit: Option<Arc<crate::audit::AuditTrail>>,
    /// The AgentIdentities admission judges with (the background scan reads the same).
    pub agents: Arc<webhook::agents::LiveDirectory>,
}

/// [`start_webhook`], also handing back the audit trail and the directory of agents.
pub async fn serve_webhook(
    args: &RunArgs,
    client: Client,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
) -> Result<Serving> {
    // Admission judges workloads in every watched namespace, so it caches their AgentIdentities.
    let agents_api: Api<AgentIdentity> = match &args.watch_namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let agents = webhook::agents::start(agents_api).await;

    let state = Arc::new(WebhookState::new(
        agents.clone(),
        Arc::new(webhook::SubjectAccessReviewer(client.clone())),
        Arc::new(webhook::ApiServiceAccounts(client.clone())),
        load_exceptions(&args.exceptions_file)?,
        metrics,
    ));
    if let Some(path) = args.exceptions_file.clone() {
        let state = state.clone();
        tokio::spawn(async move {
            let mut last = std::fs::read_to_string(&path).ok();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = std::fs::read_to_string(&path).ok();
                if now == last {
                    continue;
                }
                match ExceptionSet::parse(now.as_deref().unwrap_or("")) {
                    Ok(set) => {
                        info!(exceptions = set.exceptions.len(), "admission exceptions reloaded");
                        *state.exceptions.write().unwrap_or_else(|p| p.into_inner()) = set;
                        last = now;
                    }
                    Err(e) => warn!(error = %e, "invalid exceptions file; keeping the previous exceptions"),
                }
            }
        });
    }
    // Files and the self-managed Secret alike: a renewed, deleted or broken certificate is taken up (and a
    // deleted or broken Secret written again) within 10 s, for one read per replica.
    let reload_interval = Duration::from_secs(10);
    // Self-managed certificates name localhost; files (e.g. cert-manager) usually name the Service.
    let self_check_name = match args.tls_cert_file {
        Some(_) => format!("{}.{}.svc", args.webhook_service, args.operator_namespace),
        None => "localhost".to_string(),
    };
    if args.tls_cert_file.is_some() && args.ca_bundle_file.is_none() && !args.no_webhook_registration {
        return Err(Error::Config(
            "--tls-cert-file needs --ca-bundle-file to register the webhook (or --no-webhook-registration when something else keeps the caBundle)".into(),
        ));
    }
    let broker =
        Arc::new(webhook::tokens::Broker::new(client.clone(), args.token_audience.clone(), state.metrics.clone()));
    let pdp = start_pdp(args, client.clone(), state.metrics.clone(), ready.clone());
    // The tamper-evident trail (with --audit-dir): every task token is recorded before it is handed
    // out (no record, no token), every decision is recorded without holding the decision up.
    let trail = crate::audit::start(
        &args.audit,
        client.clone(),
        &args.operator_namespace,
        &instance_name(args),
        &state.metrics,
    )
    .await
    .map_err(|e| Error::Config(format!("audit trail: {e}")))?;
    if let Some(trail) = &trail {
        info!(dir = ?args.audit.audit_dir, "audit trail open");
        let _ = broker.audit.set(trail.clone());
        let _ = pdp.audit.set(trail.clone());
        let _ = state.audit.set(trail.clone());
    }
    let cfg = ServeConfig {
        addr: args.webhook_addr,
        extra: vec![
            ExtraListener {
                name: "broker",
                addr: args.broker_addr,
                app: webhook::tokens::router(broker),
                client_ca: None,
            },
            ExtraListener {
                name: "pdp",
                addr: args.pdp_addr,
                app: pdp::grpc::interfaces(pdp),
                client_ca: args.pdp_client_ca_file.clone(),
            },
        ],
        certs: args.cert_source(),
        client_ca: args.webhook_client_ca_file.clone(),
        registration: args.registration()?,
        self_check_name,
        reload_interval,
        limits: Limits::default(),
        metrics: Some(state.metrics.clone()),
    };
    let mut app = webhook::router(state.clone());
    if args.audit.audit_apiserver_events {
        audit_ingest_allowed(args)?;
        // Allowed means --audit-dir was given, and the trail exists exactly then.
        if let Some(trail) = trail.clone() {
            let ingest = crate::audit::ingest::IngestState {
                trail,
                agents: state.agents.clone(),
                trust_domain: args.trust_domain.clone(),
            };
            app = app.merge(crate::audit::ingest::router(Arc::new(ingest)));
            info!(path = crate::audit::ingest::PATH, "taking the apiserver's audit events");
        }
    }
    Ok(Serving { listening: server::serve(client, app, cfg, ready).await?, audit: trail, agents })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn args(flags: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("agentid").chain(flags.iter().copied())).unwrap().run
    }

    /// Threat model (ToolGrant escalation): an instance that does not check ToolGrants' authors does not
    /// turn them into RBAC unless told that something else checks them.
    #[test]
    fn grants_become_rbac_only_where_they_are_checked() {
        assert!(grants_become_rbac(&args(&[])));
        assert!(!grants_become_rbac(&args(&["--no-webhook"])));
        assert!(!grants_become_rbac(&args(&["--no-webhook-registration"])));
        assert!(grants_become_rbac(&args(&["--no-webhook", "--allow-unchecked-grants"])));
        assert!(grants_become_rbac(&args(&["--no-webhook-registration", "--allow-unchecked-grants"])));
    }

    /// Threat model (forged audit events): the apiserver's audit events are taken only on a listener that
    /// requires the apiserver's client certificate.
    #[test]
    fn apiserver_audit_events_need_the_client_certificate_and_a_trail() {
        let no_ca = audit_ingest_allowed(&args(&["--audit-apiserver-events", "--audit-dir", "/tmp/a"]));
        assert!(no_ca.unwrap_err().to_string().contains("--webhook-client-ca-file"));
        let no_dir = audit_ingest_allowed(&args(&["--audit-apiserver-events", "--webhook-client-ca-file", "/ca.crt"]));
        assert!(no_dir.unwrap_err().to_string().contains("--audit-dir"));
        let both = ["--audit-apiserver-events", "--audit-dir", "/tmp/a", "--webhook-client-ca-file", "/ca.crt"];
        assert!(audit_ingest_allowed(&args(&both)).is_ok());
    }
}
