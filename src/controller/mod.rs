//! The I/O shells around the pure core: kube-runtime controllers.
//! Each reconcile is fetch → `core` decides → apply → status.

pub mod identity;
pub mod leader;
pub mod task;
pub mod toolgrant;

use std::sync::Arc;

use kube::Client;
use kube::Resource;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::warn;

use crate::core::identity::PlannedEvent;
use crate::metrics::Metrics;

/// Operator-wide settings.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// SPIFFE trust domain of agents that do not set their own.
    pub trust_domain: String,
    /// Identity of this replica, for Events and leader election.
    pub instance: String,
    /// Watch only this namespace (a namespace-scoped install); all namespaces when `None`.
    pub watch_namespace: Option<String>,
}

impl OperatorConfig {
    /// An `Api` over the namespaces this operator watches.
    pub fn api<K>(&self, client: Client) -> kube::Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        match &self.watch_namespace {
            Some(ns) => kube::Api::namespaced(client, ns),
            None => kube::Api::all(client),
        }
    }
}

/// Shared state of every reconcile.
pub struct Context {
    pub client: Client,
    pub config: OperatorConfig,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "agentid".into(), instance: Some(config.instance.clone()) };
        let recorder = Recorder::new(client.clone(), reporter);
        Self { client, config, recorder, metrics }
    }

    /// Writes `new` as the status of `obj` when it differs from `old` (steady state costs no writes),
    /// removing fields `new` leaves out, then publishes the planned Events.
    pub async fn write_status<K, S>(
        &self,
        obj: &K,
        old: Option<&S>,
        new: &S,
        events: &[PlannedEvent],
    ) -> crate::Result<()>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        S: serde::Serialize + PartialEq,
    {
        if old == Some(new) {
            return Ok(());
        }
        let api: kube::Api<K> =
            kube::Api::namespaced(self.client.clone(), obj.meta().namespace.as_deref().unwrap_or_default());
        let patch = crate::core::status::merge_patch(old, new);
        let name = obj.meta().name.clone().unwrap_or_default();
        api.patch_status(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await?;
        self.publish(obj, "Reconcile", events).await;
        Ok(())
    }

    /// Publishes planned Events. Failing to record an Event never fails a reconcile.
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, action: &str, events: &[PlannedEvent]) {
        let reference = obj.object_ref(&());
        for e in events {
            let ev = Event {
                type_: if e.warning { EventType::Warning } else { EventType::Normal },
                reason: e.reason.to_string(),
                note: Some(e.message.clone()),
                action: action.to_string(),
                secondary: None,
            };
            if let Err(err) = self.recorder.publish(&ev, &reference).await {
                warn!(error = %err, reason = e.reason, "could not record Event");
            }
        }
    }
}
