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
    /// The audit trail (with `--audit-dir`): lifecycle changes are recorded in it.
    pub audit: Option<Arc<crate::audit::AuditTrail>>,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "agentid".into(), instance: Some(config.instance.clone()) };
        let recorder = Recorder::new(client.clone(), reporter);
        Self { client, config, recorder, metrics, audit: None }
    }

    /// Records a lifecycle change in the audit trail, if there is one (without waiting; a full trail
    /// counts the drop).
    pub fn audit(&self, event: Option<crate::core::audit::Event>) {
        if let (Some(trail), Some(e)) = (&self.audit, event) {
            trail.try_record(e);
        }
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

/// Finalizer that lets agentid remove what it created before one of its objects goes.
pub const FINALIZER: &str = "agentid.dev/cleanup";

/// One reconcile of a namespaced agentid object through the cleanup finalizer, timed and counted.
pub async fn reconcile_with_finalizer<K, A, FA, C, FC>(
    ctx: &Context,
    kind: &str,
    obj: Arc<K>,
    apply: A,
    cleanup: C,
) -> crate::Result<kube::runtime::controller::Action>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    A: FnOnce(Arc<K>) -> FA,
    FA: std::future::Future<Output = crate::Result<kube::runtime::controller::Action>>,
    C: FnOnce(Arc<K>) -> FC,
    FC: std::future::Future<Output = crate::Result<kube::runtime::controller::Action>>,
{
    use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
    let started = std::time::Instant::now();
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(crate::Error::Plan(crate::core::identity::PlanError::MissingField("metadata.namespace")))?;
    let api: kube::Api<K> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let res = finalizer(&api, FINALIZER, obj, |event| async move {
        match event {
            FinalizerEvent::Apply(o) => apply(o).await,
            FinalizerEvent::Cleanup(o) => cleanup(o).await,
        }
    })
    .await
    .map_err(|e| crate::Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(kind, started.elapsed().as_secs_f64());
    res
}

/// Error policy shared by the controllers: log, count by reason, retry in 10 s.
pub fn on_error<K: Resource>(
    kind: &str,
    obj: &K,
    error: &crate::Error,
    ctx: &Context,
) -> kube::runtime::controller::Action {
    // Adding the finalizer is an optimistic write ("finalizers still absent"); when a reconcile ran
    // from a cache that had not yet seen our own earlier write, the apiserver refuses it (409/422).
    // That is a race, not a failure: look again shortly, without an error metric or a warning.
    if let crate::Error::Finalizer(inner) = error
        && let kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s)) = inner.as_ref()
        && matches!(s.code, 409 | 422)
    {
        tracing::debug!(kind, name = ?obj.meta().name, "finalizer write raced the cache; retrying");
        return kube::runtime::controller::Action::requeue(std::time::Duration::from_millis(500));
    }
    warn!(kind, namespace = ?obj.meta().namespace, name = ?obj.meta().name, error = %error, "reconcile failed");
    ctx.metrics.reconcile_failed(kind, error.metric_label());
    kube::runtime::controller::Action::requeue(std::time::Duration::from_secs(10))
}

/// Drives a controller's result stream to its end (shutdown), logging each outcome at debug level.
pub async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = Result<(kube::runtime::reflector::ObjectRef<T>, kube::runtime::controller::Action), E>>,
    T: Resource,
    T::DynamicType: Eq + std::hash::Hash + Clone,
    E: std::fmt::Display,
{
    use futures::StreamExt;
    stream
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj.name, namespace = ?obj.namespace, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

/// Deletes exactly the object that was fetched (uid precondition), so a newer object of the same
/// name is never removed by mistake; an object already gone is fine.
pub async fn delete_exactly<K>(api: &kube::Api<K>, obj: &K) -> crate::Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let dp = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions { uid: obj.meta().uid.clone(), resource_version: None }),
        ..Default::default()
    };
    match api.delete(obj.meta().name.as_deref().unwrap_or_default(), &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
