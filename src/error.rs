//! Failure kinds of the operator. Each variant has a stable, low-cardinality
//! label for metrics ([`Error::metric_label`]); messages never carry secrets.

use crate::core::identity::PlanError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[source] kube::Error),

    #[error("finalizer failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),

    #[error("invalid object: {0}")]
    Plan(#[from] PlanError),

    #[error("serialization failed: {0}")]
    Serialization(#[from] serde_json::Error),

    #[error("configuration error: {0}")]
    Config(String),

    #[error("TLS error: {0}")]
    Tls(String),

    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),

    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl From<kube::Error> for Error {
    fn from(e: kube::Error) -> Self {
        Error::Kube(e)
    }
}

impl Error {
    /// A stable label for the `reason` of error metrics.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube(kube::Error::Api(s)) => format!("api_{}", s.reason.to_lowercase()),
            Error::Kube(_) => "kube_client".into(),
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e) | kube::runtime::finalizer::Error::CleanupFailed(e) => {
                    e.metric_label()
                }
                _ => "finalizer".into(),
            },
            Error::Plan(_) => "invalid_object".into(),
            Error::Serialization(_) => "serialization".into(),
            Error::Config(_) => "config".into(),
            Error::Tls(_) => "tls".into(),
            Error::Io(_) => "io".into(),
            Error::Timeout(_) => "timeout".into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
