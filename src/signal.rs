//! How a replica learns it should stop.

use tracing::warn;

/// Resolves on SIGTERM (how the kubelet stops a pod) or SIGINT. Every caller gets its own registration, so
/// each of them sees the signal.
pub async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await
            }
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
