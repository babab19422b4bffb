use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use kube::{Api, Client};
use tracing::{error, info};

use agentid::api::{self, AgentIdentity};
use agentid::controller::{self, Context, OperatorConfig};
use agentid::metrics::Metrics;
use agentid::probes::{self, Readiness};
use agentid::telemetry::{self, LogFormat};

/// agentid: runtime identities for AI agents on Kubernetes.
#[derive(Parser)]
#[command(name = "agentid", version, about)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "AGENTID_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the cluster in KUBECONFIG (or the in-cluster config).
    Run(RunArgs),
    /// Print the CRDs (or write them into a directory).
    Crdgen {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(clap::Args)]
struct RunArgs {
    /// SPIFFE trust domain for agents that do not set their own.
    #[arg(long, env = "AGENTID_TRUST_DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Address of the plain-HTTP health, readiness and metrics endpoints.
    #[arg(long, env = "AGENTID_PROBE_ADDR", default_value = "0.0.0.0:8080")]
    probe_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "AGENTID_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Name of this replica (defaults to the pod name, then the host name).
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);
    match cli.command {
        Command::Version => {
            println!("agentid {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Command::Crdgen { out_dir } => crdgen(out_dir),
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            match rt.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = %e, "agentid stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn crdgen(out_dir: Option<PathBuf>) -> ExitCode {
    let files = api::crd_files();
    match out_dir {
        None => {
            for (i, (_, yaml)) in files.iter().enumerate() {
                if i > 0 {
                    println!("---");
                }
                print!("{yaml}");
            }
        }
        Some(dir) => {
            for (name, yaml) in files {
                let path = dir.join(name);
                if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, yaml)) {
                    eprintln!("agentid crdgen: cannot write {}: {e}", path.display());
                    return ExitCode::from(2);
                }
                println!("wrote {}", path.display());
            }
        }
    }
    ExitCode::SUCCESS
}

async fn run(args: RunArgs) -> agentid::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await?;
    let instance = args
        .instance
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("agentid-{}", std::process::id()));
    let config = OperatorConfig { trust_domain: args.trust_domain, instance, watch_namespace: args.watch_namespace };
    let metrics = Arc::new(Metrics::default());
    let readiness = Arc::new(Readiness::default());

    let listener = tokio::net::TcpListener::bind(args.probe_addr).await?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    let probe_app = probes::router(metrics.clone(), readiness.clone());
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, probe_app).await {
            error!(error = %e, "probe server stopped");
        }
    });

    // Fail fast, with a clear message, when the CRDs are not installed.
    Api::<AgentIdentity>::all(client.clone()).list(&kube::api::ListParams::default().limit(1)).await.map_err(|e| {
        agentid::Error::Config(format!(
            "cannot list AgentIdentities (are the CRDs installed? `agentid crdgen | kubectl apply -f -`): {e}"
        ))
    })?;

    let ctx = Arc::new(Context::new(client, config, metrics));
    readiness.controllers.store(true, Ordering::Release);
    info!(trust_domain = %ctx.config.trust_domain, "agentid operator started");
    controller::identity::run(ctx).await;
    info!("agentid operator stopped");
    Ok(())
}
