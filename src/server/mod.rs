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
    /// CA bundle (PEM file) of client certificates this listener verifies when a client presents one
    /// (optional client authentication; the routes see the verified names as
    /// [`listener::PeerIdentity`]).
    pub client_ca: Option<PathBuf>,
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

/// Where the servers listen, and how to stop them gracefully.
#[derive(Debug, Clone)]
pub struct Listening {
    pub webhook: SocketAddr,
    pub extra: Vec<(&'static str, SocketAddr)>,
    pub drain: listener::Drain,
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
            .map_err(|e| Error::Tls(format!("cannot read the client CA {}: {e}", p.display()))),
    }
}

/// One listener's TLS: its handle and where its client CA comes from.
struct TlsSlot {
    name: &'static str,
    handle: TlsHandle,
    client_ca: Option<PathBuf>,
    /// Whether a client certificate is required (the admission listener) or only verified when
    /// presented.
    required: bool,
    /// The client CA the current configuration was built with.
    current_ca: Option<Vec<u8>>,
}

impl TlsSlot {
    async fn new(
        name: &'static str,
        material: &TlsMaterial,
        client_ca: Option<PathBuf>,
        required: bool,
    ) -> Result<Self> {
        let current_ca = read_client_ca(&client_ca).await?;
        let handle = TlsHandle::new(tls::server_config_with(material, current_ca.as_deref(), required)?);
        Ok(TlsSlot { name, handle, client_ca, required, current_ca })
    }

    /// Rebuilds the configuration when the certificate or the client CA changed.
    async fn reload(&mut self, material: &TlsMaterial, material_changed: bool) {
        let fresh_ca = match read_client_ca(&self.client_ca).await {
            Ok(ca) => ca,
            Err(e) => {
                warn!(listener = self.name, error = %e, "could not read the client CA; keeping the current one");
                self.current_ca.clone()
            }
        };
        if !material_changed && fresh_ca == self.current_ca {
            return;
        }
        match tls::server_config_with(material, fresh_ca.as_deref(), self.required) {
            Ok(c) => {
                self.handle.set(c);
                self.current_ca = fresh_ca;
            }
            Err(e) => {
                warn!(listener = self.name, error = %e, "could not reload TLS; keeping the current configuration")
            }
        }
    }
}

/// Serves every listener over TLS until the process ends: loads the certificate, starts listening,
/// proves TLS works (then marks the webhook ready), registers the webhook, and reloads renewed
/// certificates (and a changed client CA) without a restart.
pub async fn serve(client: Client, app: Router, mut cfg: ServeConfig, ready: Arc<Readiness>) -> Result<Listening> {
    let material = cfg.certs.load(&client).await?;
    let main_slot = TlsSlot::new("webhook", &material, cfg.client_ca.clone(), true).await?;
    let client_auth = main_slot.current_ca.is_some();
    let drain = listener::Drain::default();
    let mut main = Listener::bind("webhook", cfg.addr, main_slot.handle.clone(), app, cfg.limits)?;
    main.metrics = cfg.metrics.clone();
    main.drain = Some(drain.subscribe());
    let addr = main.local_addr()?;
    let mut slots = vec![main_slot];
    let mut extra = Vec::new();
    for x in std::mem::take(&mut cfg.extra) {
        let slot = TlsSlot::new(x.name, &material, x.client_ca, false).await?;
        let mut l = Listener::bind(x.name, x.addr, slot.handle.clone(), x.app, cfg.limits)?;
        l.metrics = cfg.metrics.clone();
        l.drain = Some(drain.subscribe());
        let bound = l.local_addr()?;
        info!(listener = x.name, addr = %bound, client_certificates = slot.current_ca.is_some(), "serving over TLS");
        extra.push((x.name, bound));
        slots.push(slot);
        tokio::spawn(l.run());
    }
    tokio::spawn(main.run());
    info!(%addr, client_auth, "serving admission webhook over TLS");

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

    tokio::spawn(reload_loop(client, cfg, slots, material));
    Ok(Listening { webhook: addr, extra, drain })
}

async fn reload_loop(client: Client, mut cfg: ServeConfig, mut slots: Vec<TlsSlot>, mut current: TlsMaterial) {
    loop {
        tokio::time::sleep(cfg.reload_interval).await;
        let fresh = match cfg.certs.load(&client).await {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, "could not load the webhook certificate; keeping the current one");
                continue;
            }
        };
        let changed = fresh != current;
        if changed && let Err(e) = tls::server_config(&fresh, None) {
            warn!(error = %e, "could not reload the webhook certificate; keeping the current one");
            continue;
        }
        for slot in &mut slots {
            slot.reload(&fresh, changed).await;
        }
        if !changed {
            continue;
        }
        info!(not_after = ?fresh.not_after, "webhook certificate reloaded");
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
