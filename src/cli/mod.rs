//! Subcommands of the `agentid` binary that are more than a line.

pub mod audit;
pub mod check;
pub mod decide;
pub mod report;
pub mod run;

/// Runs `f` with a client for the cluster of KUBECONFIG (or the pod's), on a runtime of its own: for the
/// offline subcommands that read a few objects. Errors are messages for the user.
pub(crate) fn with_cluster<T, F, Fut>(f: F) -> Result<T, String>
where
    F: FnOnce(kube::Client) -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = kube::Client::try_default().await.map_err(|e| format!("cannot reach the cluster: {e}"))?;
        f(client).await
    })
}
