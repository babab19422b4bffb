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

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose apiserver serves OIDC discovery and a JWKS with one key, and counts the requests.
    fn apiserver() -> (Client, Arc<Mutex<Vec<String>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            let path = req.uri().path().to_string();
            log.lock().unwrap().push(path.clone());
            let body = match path.as_str() {
                "/.well-known/openid-configuration" => r#"{"issuer": "https://kubernetes.default.svc"}"#,
                _ => r#"{"keys": [{"kid": "k1", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
            };
            async move {
                Ok::<_, std::convert::Infallible>(
                    axum::http::Response::builder()
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(body.as_bytes().to_vec()))
                        .unwrap(),
                )
            }
        });
        (Client::new(svc, "default"), seen)
    }

    /// Tokens naming unknown keys make the decision point fetch the keys at most once per MIN_REFRESH
    /// (threat model: a flood of tokens with made-up key ids must not become a flood on the apiserver).
    #[tokio::test]
    async fn unknown_keys_fetch_at_most_once_per_min_refresh() {
        let (client, seen) = apiserver();
        let source = KeySource::new(client);
        assert!(source.refresh_for_unknown_key().await, "the first unknown key fetches");
        assert_eq!(*seen.lock().unwrap(), ["/.well-known/openid-configuration", "/openid/v1/jwks"]);
        let keys = source.current().expect("keys loaded");
        assert_eq!((keys.issuer.as_str(), keys.keys.keys.len()), ("https://kubernetes.default.svc", 1));
        for _ in 0..100 {
            assert!(!source.refresh_for_unknown_key().await, "within MIN_REFRESH: no fetch");
        }
        assert_eq!(seen.lock().unwrap().len(), 2, "no request to the apiserver within MIN_REFRESH");
        // Once MIN_REFRESH has passed, the next unknown key fetches again.
        *source.last_fetch.lock().unwrap() = Some(Instant::now() - MIN_REFRESH - Duration::from_millis(1));
        assert!(source.refresh_for_unknown_key().await);
        assert_eq!(seen.lock().unwrap().len(), 4);
    }
}
