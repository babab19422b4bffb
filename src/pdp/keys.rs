//! The ServiceAccount issuer's signing keys, fetched from the apiserver (OIDC discovery and JWKS) so that
//! tokens are verified locally — no TokenReview on the hot path. Fetched again every few minutes, and at
//! once (at most every [`MIN_REFRESH`]) when a token names a key that is not known yet (key rotation).

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use kube::Client;
use serde::Deserialize;
use tracing::{info, warn};

use crate::core::jwt::KeySet;
use crate::error::{Error, Result};

/// Shortest interval between two fetches caused by unknown keys.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Interval of the periodic fetch.
pub const PERIODIC_REFRESH: Duration = Duration::from_secs(300);

/// The issuer and its keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerKeys {
    pub issuer: String,
    pub keys: KeySet,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
}

/// Where the decision point gets the issuer's keys.
pub struct KeySource {
    client: Option<Client>,
    current: RwLock<Option<Arc<IssuerKeys>>>,
    last_fetch: Mutex<Option<Instant>>,
}

impl KeySource {
    pub fn new(client: Client) -> Self {
        KeySource { client: Some(client), current: RwLock::new(None), last_fetch: Mutex::new(None) }
    }

    /// Fixed keys (tests and benchmarks): never fetched.
    pub fn fixed(keys: IssuerKeys) -> Self {
        KeySource { client: None, current: RwLock::new(Some(Arc::new(keys))), last_fetch: Mutex::new(None) }
    }

    pub fn current(&self) -> Option<Arc<IssuerKeys>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fetches the issuer and its keys now.
    pub async fn fetch(&self) -> Result<()> {
        let Some(client) = &self.client else { return Ok(()) };
        *self.last_fetch.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let get = |path: &str| {
            axum::http::Request::get(path).body(Vec::new()).map_err(|e| Error::Config(format!("{path}: {e}")))
        };
        let discovery = client.request_text(get("/.well-known/openid-configuration")?).await?;
        let discovery: Discovery = serde_json::from_str(&discovery)?;
        let jwks = client.request_text(get("/openid/v1/jwks")?).await?;
        let keys = KeySet::parse(jwks.as_bytes()).map_err(Error::Config)?;
        let fresh = IssuerKeys { issuer: discovery.issuer, keys };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.as_deref() != Some(&fresh) {
            info!(issuer = %fresh.issuer, keys = fresh.keys.keys.len(), "ServiceAccount issuer keys loaded");
            *current = Some(Arc::new(fresh));
        }
        Ok(())
    }

    /// Fetches again because a token named an unknown key, unless that happened within [`MIN_REFRESH`].
    /// Returns whether it fetched.
    pub async fn refresh_for_unknown_key(&self) -> bool {
        {
            let mut last = self.last_fetch.lock().unwrap_or_else(|p| p.into_inner());
            if last.is_some_and(|t| t.elapsed() < MIN_REFRESH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "could not fetch the ServiceAccount issuer keys");
                false
            }
        }
    }

    /// Fetches every [`PERIODIC_REFRESH`] until the process ends.
    pub async fn refresh_periodically(self: Arc<Self>) {
        loop {
            tokio::time::sleep(PERIODIC_REFRESH).await;
            if let Err(e) = self.fetch().await {
                warn!(error = %e, "could not refresh the ServiceAccount issuer keys; keeping the current ones");
            }
        }
    }
}
