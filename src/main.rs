use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing::error;

use agentid::api;
use agentid::cli::run::RunArgs;
use agentid::telemetry::{self, LogFormat};

#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    Run(Box<RunArgs>),
    /// Print the CRDs (or write them into a directory).
    Crdgen {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Judge manifests offline with the admission rules (exit 0 ok, 1 denied, 2 invalid input).
    Check(agentid::cli::check::CheckArgs),
    /// Decide a tool call over manifests, as the decision point would (exit 0 allow, 1 deny or approval
    /// required, 2 bad input).
    Decide(agentid::cli::decide::DecideArgs),
    /// Check (`verify`) and read (`timeline`) the tamper-evident audit trail.
    Audit(agentid::cli::audit::AuditArgs),
    /// The least-privilege report: per agent, what it was granted against what it used (from the audit
    /// trail and the cluster), with findings tagged by framework (docs/frameworks.md).
    Report(agentid::cli::report::ReportArgs),
    /// Print the version.
    Version,
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
        Command::Check(args) => ExitCode::from(agentid::cli::check::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )),
        Command::Decide(args) => ExitCode::from(agentid::cli::decide::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )),
        Command::Audit(args) => ExitCode::from(agentid::cli::audit::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )),
        Command::Report(args) => ExitCode::from(agentid::cli::report::run(
            &args,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )),
        Command::Run(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            let result = rt.block_on(agentid::cli::run::run(*args));
            // Stop every task first, so that nothing a task logs while it is torn down (a request cut
            // off mid-flight) lands after the line that says why agentid stopped.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            match result {
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
