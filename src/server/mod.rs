//! The HTTPS servers of agentid in one place: listeners, limits and TLS (certificates, client
//! authentication, reload). Each concern brings its own router — admission (`crate::webhook`), the
//! task-token broker (`crate::webhook::tokens`), the decision point — on its own port, so network
//! policy can separate who may reach which.

pub mod listener;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use kube::Client;
use tracing::{info, warn};

use crate::core::admission::registration::Registration;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::probes::Readiness;
use listener::{Limits, Listener, TlsHandle};
use tls::{CertSource, TlsMaterial};

/// A listener besides the admission endpoint (the token broker, the decision point).
pub struct ExtraListener {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub app: Router,
}

/// How the HTTPS endpoints are served and the admission webhook registered.
pub struct ServeConfig {
    /// Address of the admission endpoint.
    pub addr: SocketAddr,
    /// Further listeners with their own routes, kept apart so that network policy can let agents reach
    /// the broker without reaching the admission endpoints.
    pub extra: Vec<ExtraListener>,
    pub certs: CertSource,
    /// CA bundle (PEM file) of the client certificate the apiserver presents when it calls webhooks;
    /// when set, the admission listener refuses every connection without such a certificate.
    pub client_ca: Option<PathBuf>,
    /// Registration of the ValidatingWebhookConfiguration; `None` leaves it to someone else.
    pub registration: Option<Registration>,
    /// Host name (or IP) the self-check connects with; must be in the certificate.
    pub self_check_name: String,
    /// How often certificates are looked at again.
    pub reload_interval: Duration,
    pub limits: Limits,
    pub metrics: Option<Arc<Metrics>>,
}

/// Where the servers listen.
#[derive(Debug, Clone)]
pub struct Listening {
    pub webhook: SocketAddr,
    pub extra: Vec<(&'static str, SocketAddr)>,
}

impl Listening {
    /// The address of the extra listener `name`.
    pub fn of(&self, name: &str) -> Option<SocketAddr> {
        self.extra.iter().find(|(n, _)| *n == name).map(|(_, a)| *a)
    }
}

async fn read_client_ca(path: &Option<PathBuf>) -> Result<Option<Vec<u8>>> {
    match path {
        None => Ok(None),
        Some(p) => tokio::fs::read(p)
            .await
            .map(Some)
            .map_err(|e| Error::Tls(format!("cannot read the webhook client CA {}: {e}", p.display()))),
    }
}

/// Serves every listener over TLS until the process ends: loads the certificate, starts listening,
/// proves TLS works (then marks the webhook ready), registers the webhook, and reloads renewed
/// certificates (and a changed client CA) without a restart.
pub async fn serve(client: Client, app: Router, mut cfg: ServeConfig, ready: Arc<Readiness>) -> Result<Listening> {
    let material = cfg.certs.load(&client).await?;
    let client_ca = read_client_ca(&cfg.client_ca).await?;
    let webhook_tls = TlsHandle::new(tls::server_config(&material, client_ca.as_deref())?);
    let plain_tls = TlsHandle::new(tls::server_config(&material, None)?);
    let mut main = Listener::bind("webhook", cfg.addr, webhook_tls.clone(), app, cfg.limits)?;
    main.metrics = cfg.metrics.clone();
    let addr = main.local_addr()?;
    let mut extra = Vec::new();
    for x in std::mem::take(&mut cfg.extra) {
        let mut l = Listener::bind(x.name, x.addr, plain_tls.clone(), x.app, cfg.limits)?;
        l.metrics = cfg.metrics.clone();
        let bound = l.local_addr()?;
        info!(listener = x.name, addr = %bound, "serving over TLS");
        extra.push((x.name, bound));
        tokio::spawn(l.run());
    }
    tokio::spawn(main.run());
    info!(%addr, client_auth = client_ca.is_some(), "serving admission webhook over TLS");

    if let Some(ca) = &material.ca_pem {
        let mut last = None;
        for _ in 0..50 {
            match tls::self_check(addr, ca, &cfg.self_check_name).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(e) = last {
            return Err(Error::Tls(format!("webhook does not serve TLS as expected: {e}")));
        }
    }
    if let (Some(reg), Some(ca)) = (cfg.registration.as_mut(), &material.ca_pem) {
        reg.ca_bundle = ca.clone();
        crate::webhook::register(&client, reg).await?;
    }
    ready.webhook.store(true, Ordering::Release);

    let handles = Handles { webhook: webhook_tls, plain: plain_tls };
    tokio::spawn(reload_loop(client, cfg, handles, material, client_ca));
    Ok(Listening { webhook: addr, extra })
}

struct Handles {
    webhook: TlsHandle,
    plain: TlsHandle,
}

async fn reload_loop(
    client: Client,
    mut cfg: ServeConfig,
    handles: Handles,
    mut current: TlsMaterial,
    mut client_ca: Option<Vec<u8>>,
) {
    loop {
        tokio::time::sleep(cfg.reload_interval).await;
        let fresh = match cfg.certs.load(&client).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "could not load the webhook certificate; keeping the current one");
                continue;
            }
        };
        let fresh_ca = match read_client_ca(&cfg.client_ca).await {
            Ok(ca) => ca,
            Err(e) => {
                warn!(error = %e, "could not read the webhook client CA; keeping the current one");
                client_ca.clone()
            }
        };
        if fresh == current && fresh_ca == client_ca {
            continue;
        }
        let configs = tls::server_config(&fresh, fresh_ca.as_deref())
            .and_then(|w| tls::server_config(&fresh, None).map(|p| (w, p)));
        match configs {
            Ok((w, p)) => {
                handles.webhook.set(w);
                handles.plain.set(p);
            }
            Err(e) => {
                warn!(error = %e, "could not reload the webhook certificate; keeping the current one");
                continue;
            }
        }
        info!(not_after = ?fresh.not_after, "webhook certificate reloaded");
        client_ca = fresh_ca;
        if fresh.ca_pem != current.ca_pem
            && let (Some(reg), Some(ca)) = (cfg.registration.as_mut(), &fresh.ca_pem)
        {
            reg.ca_bundle = ca.clone();
            if let Err(e) = crate::webhook::register(&client, reg).await {
                warn!(error = %e, "could not update the webhook caBundle");
                continue;
            }
        }
        current = fresh;
    }
}
