//! Leader election: only the replica holding the Lease runs controllers;
//! every replica serves HTTPS. A killed leader's Lease runs out after
//! `duration` and a follower takes over within one retry period.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::core::lease::{self, LeaseAction};
use crate::error::Result;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub duration: Duration,
    /// How often to renew (leader) or retry (follower).
    pub retry: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            name: "agentid-leader".into(),
            identity: identity.into(),
            duration: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// Reads the Lease and writes what [`lease::decide`] says; returns whether we lead now.
async fn try_lead(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool> {
    // A request that hangs must not outlive the Lease: give up in time and count it as a failure.
    match tokio::time::timeout(cfg.retry, try_lead_once(api, cfg)).await {
        Ok(r) => r,
        Err(_) => Err(crate::Error::Config("Lease request timed out".into())),
    }
}

async fn try_lead_once(api: &Api<Lease>, cfg: &LeaderConfig) -> Result<bool> {
    let current = api.get_opt(&cfg.name).await?;
    let action = lease::decide(
        current.as_ref(),
        &cfg.name,
        &cfg.namespace,
        &cfg.identity,
        Timestamp::now(),
        cfg.duration.as_secs() as i32,
    );
    let res = match &action {
        LeaseAction::Create(l) => api.create(&PostParams::default(), l).await.map(|_| ()),
        LeaseAction::Renew(l) | LeaseAction::Acquire(l) => {
            api.replace(&cfg.name, &PostParams::default(), l).await.map(|_| ())
        }
        LeaseAction::Follow { .. } => return Ok(false),
    };
    match res {
        Ok(()) => {
            if matches!(action, LeaseAction::Acquire(_) | LeaseAction::Create(_)) {
                info!(lease = %cfg.name, identity = %cfg.identity, "became leader");
            }
            Ok(true)
        }
        // Someone else wrote first (409 conflict or 409 already exists): not us this time.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Waits until this replica leads, then keeps renewing in the background. The
/// returned receiver turns `false` if leadership is lost (renewals failed for
/// longer than the Lease lasts, or another replica took it).
pub async fn acquire(client: Client, cfg: LeaderConfig) -> watch::Receiver<bool> {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        match try_lead(&api, &cfg).await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "leader election: cannot read or write the Lease"),
        }
        tokio::time::sleep(cfg.retry).await;
    }
    let (tx, rx) = watch::channel(true);
    tokio::spawn(async move {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(cfg.retry).await;
            match try_lead(&api, &cfg).await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    warn!(lease = %cfg.name, "leadership lost to another replica");
                    let _ = tx.send(false);
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "leader election: renewal failed");
                    // Stop before the Lease can run out, so two leaders never overlap.
                    if last_renewal.elapsed() + cfg.retry >= cfg.duration {
                        let _ = tx.send(false);
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Hands the Lease over on graceful shutdown, so a follower need not wait for it to run out.
pub async fn release(client: Client, cfg: &LeaderConfig) {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    if let Ok(Some(current)) = api.get_opt(&cfg.name).await
        && let Some(released) = lease::release(&current, &cfg.identity)
    {
        match api.replace(&cfg.name, &PostParams::default(), &released).await {
            Ok(_) => info!(lease = %cfg.name, "leadership released"),
            Err(e) => warn!(error = %e, "could not release the Lease"),
        }
    }
}
