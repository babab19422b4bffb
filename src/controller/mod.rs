//! The I/O shells around the pure core: kube-runtime controllers.
//! Each reconcile is fetch → `core` decides → apply → status.

pub mod deadlines;
pub mod identity;
pub mod leader;
pub mod runner;
pub mod task;
pub mod toolgrant;

use std::sync::Arc;

use futures::{Stream, StreamExt};
use kube::Client;
use kube::Resource;
use kube::runtime::events::{Recorder, Reporter};
use tracing::warn;

pub use runner::{Action, Key, Trigger};

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
    /// When grants and tasks change phase by the passing of time alone ([`deadlines`]).
    pub grant_deadlines: Arc<deadlines::Deadlines>,
    pub task_deadlines: Arc<deadlines::Deadlines>,
}

impl Context {
    pub fn new(client: Client, config: OperatorConfig, metrics: Arc<Metrics>) -> Self {
        let reporter = Reporter { controller: "agentid".into(), instance: Some(config.instance.clone()) };
        let recorder = Recorder::new(client.clone(), reporter);
        Self {
            client,
            config,
            recorder,
            metrics,
            audit: None,
            grant_deadlines: Default::default(),
            task_deadlines: Default::default(),
        }
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
    ///
    /// Each Event is created as it is, the way kube's [`Recorder`] creates a new one, but without its cache:
    /// that keeps every Event published in the last 6 minutes (to count repeats into a series), which while
    /// 10,000 objects converge holds tens of MiB for Events that never repeat (agentid publishes on
    /// transitions only).
    pub async fn publish<K: Resource<DynamicType = ()>>(&self, obj: &K, action: &str, events: &[PlannedEvent]) {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        let reference = obj.object_ref(&());
        let ns = reference.namespace.clone().unwrap_or_else(|| "default".into());
        let api: kube::Api<K8sEvent> = kube::Api::namespaced(self.client.clone(), &ns);
        for e in events {
            let now = k8s_openapi::jiff::Timestamp::now();
            let event = K8sEvent {
                action: Some(action.to_string()),
                reason: Some(e.reason.to_string()),
                note: Some(e.message.clone()),
                event_time: Some(MicroTime(now)),
                regarding: Some(reference.clone()),
                metadata: kube::api::ObjectMeta {
                    namespace: Some(ns.clone()),
                    name: Some(format!("{}.{:x}", reference.name.as_deref().unwrap_or("agentid"), now.as_nanosecond())),
                    ..Default::default()
                },
                reporting_controller: Some("agentid".into()),
                reporting_instance: Some(self.config.instance.clone()),
                type_: Some(if e.warning { "Warning" } else { "Normal" }.into()),
                ..Default::default()
            };
            if let Err(err) = api.create(&kube::api::PostParams::default(), &event).await {
                warn!(error = %err, reason = e.reason, "could not record Event");
            }
        }
    }
}

/// Reconciles of one controller in flight at most. Each waits on the apiserver for a few requests, so a few
/// dozen keep it as busy as it accepts; without a bound, a restart with 10,000 objects starts 10,000 at
/// once, and the memory those hold in flight sets the operator's peak (which its memory limit must cover).
pub const CONCURRENCY: usize = 32;

/// The longest one reconcile may take (a few requests, each normally milliseconds); then it is cut off,
/// counted as a `timeout` failure and run again.
pub const RECONCILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs one controller: `reconcile` for every object `triggers` names ([`runner`]), failures through
/// [`on_error`], until SIGTERM/SIGINT (then the running reconciles finish, for at most
/// [`runner::STOP_WAIT`]) or the triggers end.
pub async fn run<R, F>(kind: &'static str, ctx: Arc<Context>, triggers: impl Stream<Item = Trigger>, reconcile: R)
where
    R: Fn(Key, Arc<Context>) -> F,
    F: std::future::Future<Output = crate::Result<Action>>,
{
    let reconcile = |key: Key| {
        let ctx = ctx.clone();
        let fut = reconcile(key.clone(), ctx.clone());
        async move {
            // The client sets no read timeout: a request on a connection that went dead would hold this
            // object (and one of the CONCURRENCY slots) for good. A reconcile is idempotent, so one cut off
            // at an await is simply run again.
            match within(RECONCILE_TIMEOUT, fut).await {
                Ok(action) => action,
                Err(error) => on_error(kind, &key, &error, &ctx),
            }
        }
    };
    runner::run(kind, triggers, CONCURRENCY, reconcile, crate::signal::shutdown()).await;
}

/// `reconcile`'s result, or [`crate::Error::Timeout`] once `limit` has passed (the reconcile is dropped).
async fn within(
    limit: std::time::Duration,
    reconcile: impl std::future::Future<Output = crate::Result<Action>>,
) -> crate::Result<Action> {
    tokio::time::timeout(limit, reconcile).await.unwrap_or(Err(crate::Error::Timeout(limit)))
}

/// Finalizer that lets agentid remove what it created before one of its objects goes.
pub const FINALIZER: &str = "agentid.dev/cleanup";

/// What the finalizer-driven reconciles need of an agentid kind (namespaced, readable, patchable).
pub trait AgentidObject:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + serde::Serialize
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
}

impl<K> AgentidObject for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::Serialize
        + serde::de::DeserializeOwned
        + std::fmt::Debug
{
}

/// One reconcile of the object `key` names: read as it is now ([`fetch`]; gone meanwhile: its deletion was
/// handled by the reconcile before it went), then [`reconcile_with_finalizer`].
pub async fn reconcile_key<K, A, FA, C, FC>(
    ctx: &Context,
    kind: &str,
    key: &Key,
    apply: A,
    cleanup: C,
) -> crate::Result<Action>
where
    K: AgentidObject,
    A: FnOnce(Arc<K>) -> FA,
    FA: std::future::Future<Output = crate::Result<Action>>,
    C: FnOnce(Arc<K>) -> FC,
    FC: std::future::Future<Output = crate::Result<()>>,
{
    match fetch(ctx, key).await? {
        Some(obj) => reconcile_with_finalizer(ctx, kind, Arc::new(obj), apply, cleanup).await,
        None => Ok(Action::await_change()),
    }
}

/// One reconcile of a namespaced agentid object through the cleanup finalizer, timed and counted.
pub async fn reconcile_with_finalizer<K, A, FA, C, FC>(
    ctx: &Context,
    kind: &str,
    obj: Arc<K>,
    apply: A,
    cleanup: C,
) -> crate::Result<Action>
where
    K: AgentidObject,
    A: FnOnce(Arc<K>) -> FA,
    FA: std::future::Future<Output = crate::Result<Action>>,
    C: FnOnce(Arc<K>) -> FC,
    FC: std::future::Future<Output = crate::Result<()>>,
{
    use kube::runtime::finalizer::{Error as FinalizerError, Event as FinalizerEvent, finalizer};
    let started = std::time::Instant::now();
    let ns = obj
        .meta()
        .namespace
        .clone()
        .ok_or(crate::Error::Plan(crate::core::identity::PlanError::MissingField("metadata.namespace")))?;
    let api: kube::Api<K> = kube::Api::namespaced(ctx.client.clone(), &ns);
    let res = if obj.meta().deletion_timestamp.is_some() {
        // Cleanup, then the finalizer comes off (nothing to do when it is not there).
        let name = obj.meta().name.clone();
        let done = kube::runtime::controller::Action::await_change();
        let removed = finalizer(&api, FINALIZER, obj, |event| async move {
            match event {
                FinalizerEvent::Cleanup(o) => cleanup(o).await.map(|()| done),
                FinalizerEvent::Apply(_) => Ok(done),
            }
        })
        .await
        .map(|_| Action::await_change());
        match removed {
            // Gone already: another replica (a leader that just lost its lease, or died after its write) ran
            // the cleanup and removed the finalizer, and the apiserver deleted the object, which this cache
            // had not seen yet. The cleanup ran here too and found nothing of its own left: done, not failed.
            Err(FinalizerError::RemoveFinalizer(kube::Error::Api(s))) if s.code == 404 => {
                tracing::debug!(kind, ?name, "object gone before its finalizer came off here: cleaned up already");
                Ok(Action::await_change())
            }
            other => other,
        }
    } else {
        // A new object: the finalizer goes on first, then the same reconcile applies it (the finalizer write
        // wakes no second reconcile, see `spec_or_deletion`).
        match with_finalizer(&api, obj).await {
            Ok(o) => apply(o).await.map_err(FinalizerError::ApplyFailed),
            Err(e) => Err(e),
        }
    }
    .map_err(|e| crate::Error::Finalizer(Box::new(e)));
    ctx.metrics.reconciled(kind, started.elapsed().as_secs_f64());
    res
}

fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.meta().finalizers.iter().flatten().any(|f| f == FINALIZER)
}

/// `obj` with the cleanup finalizer on: as it is when it has it, else after adding it. When the add races an
/// earlier reconcile's (this cache has not seen that write yet: 409/422), the object as it is now, if it has
/// the finalizer.
async fn with_finalizer<K>(
    api: &kube::Api<K>,
    obj: Arc<K>,
) -> Result<Arc<K>, kube::runtime::finalizer::Error<crate::Error>>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    use kube::runtime::finalizer::{Error as FinalizerError, finalizer};
    if has_finalizer(obj.as_ref()) {
        return Ok(obj);
    }
    // Without the finalizer and not being deleted, `finalizer` only adds it (it runs no reconcile).
    let added = finalizer(api, FINALIZER, obj.clone(), |_| async {
        Ok::<_, crate::Error>(kube::runtime::controller::Action::await_change())
    })
    .await;
    match added {
        Ok(_) => Ok(obj),
        Err(FinalizerError::AddFinalizer(kube::Error::Api(s))) if matches!(s.code, 409 | 422) => {
            let name = obj.meta().name.clone().unwrap_or_default();
            match api.get_opt(&name).await {
                Ok(Some(now))
                    if now.meta().uid == obj.meta().uid
                        && has_finalizer(&now)
                        && now.meta().deletion_timestamp.is_none() =>
                {
                    Ok(Arc::new(now))
                }
                _ => Err(FinalizerError::AddFinalizer(kube::Error::Api(s))),
            }
        }
        Err(e) => Err(e),
    }
}

/// Error policy shared by the controllers: log, count by reason, retry in 10 s.
pub fn on_error(kind: &str, key: &Key, error: &crate::Error, ctx: &Context) -> Action {
    // Adding the finalizer is an optimistic write ("finalizers still absent"); when a reconcile ran
    // from a cache that had not yet seen our own earlier write, the apiserver refuses it (409/422).
    // That is a race, not a failure: look again shortly, without an error metric or a warning.
    if let crate::Error::Finalizer(inner) = error
        && let kube::runtime::finalizer::Error::AddFinalizer(kube::Error::Api(s)) = inner.as_ref()
        && matches!(s.code, 409 | 422)
    {
        tracing::debug!(kind, name = %key.name, "finalizer write raced the cache; retrying");
        return Action::requeue(std::time::Duration::from_millis(500));
    }
    warn!(kind, namespace = %key.namespace, name = %key.name, error = %error, "reconcile failed");
    ctx.metrics.reconcile_failed(kind, error.metric_label());
    Action::requeue(std::time::Duration::from_secs(10))
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

// ------------------------------------------------------------------ watch streams, cut to what matters

/// Drops what no reconcile reads and only costs memory in a cache: managedFields (often half of a small
/// object) and kubectl's last-applied copy of the whole object.
pub fn strip_metadata(meta: &mut kube::api::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove("kubectl.kubernetes.io/last-applied-configuration");
        if a.is_empty() {
            meta.annotations = None;
        }
    }
}

/// What of an agentid object can change its reconcile's outcome: its spec (`metadata.generation`, which
/// status writes, finalizers and labels leave alone) and whether it is being deleted. Own status writes and
/// the finalizer write therefore trigger no further reconcile.
pub fn spec_or_deletion<K: Resource>(obj: &K) -> u64 {
    let m = obj.meta();
    hash_of(&(m.generation, m.deletion_timestamp.is_some()))
}

fn hash_of<T: std::hash::Hash>(t: &T) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(t)
}

/// How every watch of agentid retries after an error: 0.8 s doubling to at most 5 s, with jitter,
/// reset after 2 min without errors. kube's default goes up to 30 s: after an apiserver restart the
/// watches came back 16–21 s later (tests/e2e_restart.rs), and meanwhile admission and the decision
/// point answered from caches that did not yet know of a suspended agent. A few watches per replica
/// every 5 s is little load for an apiserver that is coming back.
pub fn watch_backoff() -> impl kube::runtime::utils::Backoff + 'static {
    use std::time::Duration;
    let exponential = backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(5))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times();
    kube::runtime::utils::ResetTimerBackoff::new(
        kube::runtime::watcher::ExponentialBackoff::from(exponential),
        Duration::from_secs(120),
    )
}

/// The controller's own objects: watched whole, and a trigger for each change of spec or deletion only
/// ([`Changes::of_own`], which sees the whole object: its uid tells a re-created object from the old one).
/// Nothing of them is kept: a reconcile reads its object from the apiserver ([`fetch`]). `observe` sees every
/// watch event first (to keep an index).
pub fn main_stream<K>(
    api: kube::Api<K>,
    mut observe: impl FnMut(&kube::runtime::watcher::Event<K>) + Send + 'static,
) -> impl Stream<Item = Trigger> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let mut changes = Changes::<K>::of_own();
    watcher::watcher(api, watcher::Config::default()).backoff(watch_backoff()).filter_map(move |ev| {
        let out = match ev {
            Ok(event) => {
                observe(&event);
                changes.on(event).and_then(|o| Key::of(o.meta())).map(Ok)
            }
            Err(e) => Some(Err(e)),
        };
        futures::future::ready(out)
    })
}

/// Changes of the children of kind `C` that agentid labelled as its own (watched as metadata only), as triggers
/// for their owners of kind `K`: only someone else's change or deletion of one wakes its owner
/// ([`Changes::of_children`]).
pub fn children<K, C>(ctx: &Context) -> futures::stream::BoxStream<'static, Trigger>
where
    K: Resource<DynamicType = ()>,
    C: AgentidObject + Send + Sync + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let api: kube::Api<kube::api::PartialObjectMeta<C>> = ctx.config.api(ctx.client.clone());
    let owned =
        watcher::Config::default().labels(&format!("{}={}", crate::api::MANAGED_BY_LABEL, crate::api::MANAGED_BY));
    owners_of::<K, _>(Changes::of_children().filter(watcher::watcher(api, owned).backoff(watch_backoff()))).boxed()
}

/// The triggers of a controller whose objects (grants, tasks) name an agent in `spec.agentRef` (`agent_ref`):
/// - their own changes ([`main_stream`]); each is indexed by the agent it names, and its deadlines are
///   forgotten when it goes;
/// - the changes of those agents that can change their phase ([`crate::core::identity::dependents_fingerprint`]:
///   the agent appears or goes, is suspended or resumed, changes its audiences, its ServiceAccount comes into
///   place), nothing else of an agent;
/// - their `deadlines` as they fall due;
/// - `children` ([`children`]).
pub fn agent_dependents<K>(
    ctx: &Context,
    deadlines: Arc<deadlines::Deadlines>,
    agent_ref: fn(&K) -> &str,
    children: Vec<futures::stream::BoxStream<'static, Trigger>>,
) -> impl Stream<Item = Trigger> + Send + 'static
where
    K: AgentidObject + Send + Sync + 'static,
{
    use kube::runtime::{WatchStreamExt, watcher};
    let agents: kube::Api<crate::api::AgentIdentity> = ctx.config.api(ctx.client.clone());
    let agent_changes = Changes::new(crate::core::identity::dependents_fingerprint, true)
        .filter(watcher::watcher(agents, watcher::Config::default()).backoff(watch_backoff()));
    let index = Arc::new(std::sync::Mutex::new(AgentRefIndex::default()));
    let observed = index.clone();
    let forget = deadlines.clone();
    let own = main_stream(ctx.config.api::<K>(ctx.client.clone()), move |e| {
        observed.lock().unwrap_or_else(|p| p.into_inner()).observe(e, agent_ref);
        forget.observe(e);
    });
    let mut streams =
        vec![own.boxed(), AgentRefIndex::triggers(index, agent_changes).boxed(), deadlines::due(deadlines).boxed()];
    streams.extend(children);
    futures::stream::select_all(streams)
}

/// Triggers for the objects of kind `K` that own the changed children in `changes` ([`runner::owners`]).
pub fn owners_of<K, C>(
    changes: impl Stream<Item = Result<C, kube::runtime::watcher::Error>> + Send + 'static,
) -> impl Stream<Item = Trigger> + Send + 'static
where
    K: Resource<DynamicType = ()>,
    C: Resource,
{
    changes.flat_map(|c| {
        let keys: Vec<Trigger> = match c {
            Ok(child) => runner::owners::<K>(child.meta()).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(keys)
    })
}

/// The object `key` names (`None`: gone), with what no reconcile reads stripped ([`strip_metadata`]).
///
/// Read from the apiserver's watch cache (`resourceVersion=0`), not through to etcd: the watch event that
/// started this reconcile came from that cache, so it holds at least that version, and the reconcile sees
/// what a reflector cache of whole objects would have shown it. A quorum read here made 1,000 agents + 1,000
/// grants converge in 32.5 s instead of 25.8 s (`AGENTID_BENCH_SECTIONS=1 make bench-cluster`, 2 cores).
pub async fn fetch<K>(ctx: &Context, key: &Key) -> crate::Result<Option<K>>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: kube::Api<K> = kube::Api::namespaced(ctx.client.clone(), &key.namespace);
    match api.get_with(&key.name, &kube::api::GetParams::any()).await {
        Ok(mut o) => {
            strip_metadata(o.meta_mut());
            Ok(Some(o))
        }
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Which watch events of one kind are worth a reconcile: an object whose fingerprint changed since it was
/// last seen, and every deletion. `first_sight` says whether an object seen for the first time counts; for
/// the children agentid creates it does not (the reconcile that created one already decided on it, and its
/// creation would only wake that reconcile again), so only someone else's later change or deletion of a
/// child wakes its owner. Keeps 16 bytes per object (hashes), never the object.
pub struct Changes<K> {
    seen: std::collections::HashMap<u64, u64>,
    fingerprint: fn(&K) -> u64,
    first_sight: bool,
    deletions: bool,
}

impl<K: Resource> Changes<K> {
    pub fn new(fingerprint: fn(&K) -> u64, first_sight: bool) -> Self {
        Self { seen: Default::default(), fingerprint, first_sight, deletions: true }
    }

    /// A controller's own objects: a new object and a change of spec or deletion timestamp count
    /// ([`spec_or_deletion`]); their deletion does not (the finalizer's cleanup ran before, and the object is
    /// gone from the cache a reconcile would read it from).
    pub fn of_own() -> Self {
        Self { deletions: false, ..Self::new(spec_or_deletion::<K>, true) }
    }

    /// Children of agentid's: a change is a new resourceVersion; the first sight does not count.
    pub fn of_children() -> Self {
        Self::new(|o| hash_of(&o.meta().resource_version), false)
    }

    fn key(o: &K) -> u64 {
        let m = o.meta();
        hash_of(&(&m.namespace, &m.name, &m.uid))
    }

    /// The objects of `event` worth a reconcile.
    pub fn on(&mut self, event: kube::runtime::watcher::Event<K>) -> Option<K> {
        use kube::runtime::watcher::Event;
        match event {
            Event::Init | Event::InitDone => None,
            Event::InitApply(o) | Event::Apply(o) => {
                let f = (self.fingerprint)(&o);
                match self.seen.insert(Self::key(&o), f) {
                    Some(old) if old == f => None,
                    Some(_) => Some(o),
                    None => self.first_sight.then_some(o),
                }
            }
            Event::Delete(o) => {
                self.seen.remove(&Self::key(&o));
                self.deletions.then_some(o)
            }
        }
    }

    /// `events` cut to those worth a reconcile (watch errors pass, for the controller's backoff).
    pub fn filter<S>(mut self, events: S) -> impl Stream<Item = Result<K, kube::runtime::watcher::Error>> + Send
    where
        S: Stream<Item = Result<kube::runtime::watcher::Event<K>, kube::runtime::watcher::Error>> + Send,
        K: Send + 'static,
    {
        events.filter_map(move |ev| {
            futures::future::ready(match ev {
                Ok(e) => self.on(e).map(Ok),
                Err(e) => Some(Err(e)),
            })
        })
    }
}

/// The objects that name an agent in `spec.agentRef` (grants, tasks), by (namespace, agent): the objects to
/// look at again when the agent changes, without a scan of the whole cache. Kept from the watch events of
/// those objects; a superset at worst (a stale entry only costs a reconcile that changes nothing). A grant
/// whose `agentRef` is edited (a task's cannot be) stays listed under its old agent too, until the watch
/// re-lists: one name per such edit, not worth a map from every object to its agent.
///
/// Small per agent, since it holds an entry for every agent with a grant or a task: the key is a 64-bit hash
/// of (namespace, agent) instead of the two strings, and the names per agent are a sorted `Vec` of boxed
/// strings (an agent has a few grants and tasks; a `BTreeSet` allocates a node of eleven slots for the first
/// one). Two agents whose keys collide (a 64-bit hash: about 3 in 10^12 at 10,000 agents) share one list: each
/// agent's change then also wakes the other's objects' names in its own namespace, which a reconcile finds
/// absent or unchanged; and when both have an object of the same name, deleting one drops the other from the
/// list until it changes or the watch re-lists.
#[derive(Default)]
pub struct AgentRefIndex {
    by_agent: AgentRefs,
    relisted: Option<AgentRefs>,
}

type AgentRefs = std::collections::HashMap<u64, Vec<Box<str>>>;

impl AgentRefIndex {
    fn key(namespace: &str, agent: &str) -> u64 {
        hash_of(&(namespace, agent))
    }

    fn insert(map: &mut AgentRefs, key: u64, name: &str) {
        let names = map.entry(key).or_default();
        if let Err(at) = names.binary_search_by(|n| (**n).cmp(name)) {
            names.insert(at, name.into());
        }
    }

    /// Follows one watch event of the objects `agent_ref` reads the agent's name from.
    pub fn observe<K: Resource>(&mut self, event: &kube::runtime::watcher::Event<K>, agent_ref: fn(&K) -> &str) {
        use kube::runtime::watcher::Event;
        fn parts<K: Resource>(o: &K, agent_ref: fn(&K) -> &str) -> Option<(u64, &str)> {
            let m = o.meta();
            Some((AgentRefIndex::key(m.namespace.as_deref()?, agent_ref(o)), m.name.as_deref()?))
        }
        match event {
            Event::Init => self.relisted = Some(Default::default()),
            Event::InitApply(o) => {
                if let (Some(map), Some((key, name))) = (self.relisted.as_mut(), parts(o, agent_ref)) {
                    Self::insert(map, key, name);
                }
            }
            Event::InitDone => {
                if let Some(map) = self.relisted.take() {
                    self.by_agent = map;
                }
            }
            Event::Apply(o) => {
                if let Some((key, name)) = parts(o, agent_ref) {
                    Self::insert(&mut self.by_agent, key, name);
                }
            }
            Event::Delete(o) => {
                if let Some((key, name)) = parts(o, agent_ref)
                    && let Some(names) = self.by_agent.get_mut(&key)
                {
                    names.retain(|n| **n != *name);
                    if names.is_empty() {
                        self.by_agent.remove(&key);
                    }
                }
            }
        }
    }

    /// The objects that name `agent`.
    pub fn of(&self, agent: &impl Resource) -> Vec<Key> {
        let m = agent.meta();
        let (Some(ns), Some(name)) = (m.namespace.as_deref(), m.name.as_deref()) else { return Vec::new() };
        self.by_agent
            .get(&Self::key(ns, name))
            .map(|names| names.iter().map(|n| Key::new(ns, &**n)).collect())
            .unwrap_or_default()
    }

    /// Triggers for the objects that name each changed agent in `agents`.
    pub fn triggers<A: Resource>(
        index: Arc<std::sync::Mutex<Self>>,
        agents: impl Stream<Item = Result<A, kube::runtime::watcher::Error>> + Send + 'static,
    ) -> impl Stream<Item = Trigger> + Send + 'static {
        agents.flat_map(move |a| {
            let keys: Vec<Trigger> = match a {
                Ok(agent) => index.lock().unwrap_or_else(|p| p.into_inner()).of(&agent).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(keys)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AgentIdentity, ToolGrant};
    use kube::runtime::watcher::Event;

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_that_hangs_is_cut_off_as_a_timeout() {
        let hung = within(RECONCILE_TIMEOUT, std::future::pending()).await;
        assert!(matches!(hung, Err(crate::Error::Timeout(d)) if d == RECONCILE_TIMEOUT), "{hung:?}");
        assert_eq!(hung.unwrap_err().metric_label(), "timeout");
        let quick = within(RECONCILE_TIMEOUT, async { Ok(Action::await_change()) }).await;
        assert!(quick.is_ok());
    }

    fn obj(name: &str, rv: &str) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.metadata.resource_version = Some(rv.into());
        a
    }

    fn names(out: Option<AgentIdentity>) -> Option<String> {
        out.and_then(|o| o.metadata.name)
    }

    /// A client whose apiserver answers every request with `status` and the JSON `body`, and records each
    /// request as `METHOD path`.
    fn scripted_client(status: u16, body: serde_json::Value) -> (Client, Arc<std::sync::Mutex<Vec<String>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        let svc = tower::service_fn(move |req: axum::http::Request<kube::client::Body>| {
            log.lock().unwrap().push(format!("{} {}", req.method(), req.uri().path()));
            let body = serde_json::to_vec(&body).unwrap();
            async move {
                Ok::<_, std::convert::Infallible>(
                    axum::http::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(kube::client::Body::from(body))
                        .unwrap(),
                )
            }
        });
        (Client::new(svc, "default"), seen)
    }

    fn context(client: Client) -> Context {
        let config = OperatorConfig { trust_domain: "td".into(), instance: "test".into(), watch_namespace: None };
        Context::new(client, config, Arc::new(Metrics::default()))
    }

    /// An agent being deleted, with agentid's finalizer still on.
    fn deleting_agent() -> AgentIdentity {
        let mut agent = crate::api::test_agent("a");
        agent.metadata.namespace = Some("agents".into());
        agent.metadata.finalizers = Some(vec![FINALIZER.into()]);
        agent.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        agent
    }

    #[tokio::test]
    async fn an_object_gone_before_its_finalizer_came_off_is_cleaned_up_not_failed() {
        // After a leader change: the old leader removed the finalizer and the apiserver deleted the object;
        // this replica's cache still shows it being deleted, with the finalizer.
        let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "NotFound", "code": 404, "message": "agentidentities \"a\" not found"});
        let (client, seen) = scripted_client(404, not_found);
        let (ctx, agent) = (context(client), deleting_agent());
        let cleaned = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cleaned.clone();
        let res = reconcile_with_finalizer(
            &ctx,
            "AgentIdentity",
            Arc::new(agent),
            |_| async { Ok(Action::await_change()) },
            |_| async move {
                c.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(())
            },
        )
        .await;
        assert!(res.is_ok(), "{res:?}");
        assert!(cleaned.load(std::sync::atomic::Ordering::SeqCst), "the cleanup ran first");
        assert_eq!(
            *seen.lock().unwrap(),
            vec!["PATCH /apis/agentid.dev/v1alpha1/namespaces/agents/agentidentities/a".to_string()]
        );

        // Any other failure to remove the finalizer is still one.
        let (client, _) = scripted_client(
            500,
            serde_json::json!({"kind": "Status", "apiVersion": "v1",
            "status": "Failure", "reason": "InternalError", "code": 500, "message": "boom"}),
        );
        let (ctx, agent) = (context(client), deleting_agent());
        let res = reconcile_with_finalizer(
            &ctx,
            "AgentIdentity",
            Arc::new(agent),
            |_| async { Ok(Action::await_change()) },
            |_| async { Ok(()) },
        )
        .await;
        assert!(res.is_err());
    }

    #[tokio::test]
    async fn changed_agents_and_children_become_triggers_for_the_objects_they_concern() {
        fn agent_ref(g: &ToolGrant) -> &str {
            g.spec.agent_ref.name.as_str()
        }
        let index = Arc::new(std::sync::Mutex::new(AgentRefIndex::default()));
        index.lock().unwrap().observe(&Event::Apply(grant("g1", "billing")), agent_ref);
        index.lock().unwrap().observe(&Event::Apply(grant("g2", "billing")), agent_ref);
        let mut billing = crate::api::test_agent("billing");
        billing.metadata.namespace = Some("agents".into());
        let agents = futures::stream::iter(vec![Ok(billing), Ok(crate::api::test_agent("nobody"))]);
        let keys: Vec<Key> = AgentRefIndex::triggers(index, agents).map(|t| t.unwrap()).collect::<Vec<_>>().await;
        assert_eq!(keys, [Key::new("agents", "g1"), Key::new("agents", "g2")]);

        let mut sa = crate::api::test_agent("sa");
        sa.metadata.namespace = Some("agents".into());
        sa.metadata.owner_references = Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "agentid.dev/v1alpha1".into(),
            kind: "AgentIdentity".into(),
            name: "billing".into(),
            uid: "u".into(),
            ..Default::default()
        }]);
        let keys: Vec<Key> = owners_of::<AgentIdentity, _>(futures::stream::iter(vec![Ok(sa)]))
            .map(|t| t.unwrap())
            .collect::<Vec<_>>()
            .await;
        assert_eq!(keys, [Key::new("agents", "billing")]);
    }

    #[test]
    fn a_child_wakes_its_owner_only_when_someone_changes_or_deletes_it() {
        let mut c = Changes::<AgentIdentity>::of_children();
        // created by the reconcile that wanted it: its first sight wakes nothing, nor does seeing it again
        assert_eq!(names(c.on(Event::Apply(obj("a", "1")))), None);
        assert_eq!(names(c.on(Event::InitApply(obj("a", "1")))), None);
        assert_eq!(names(c.on(Event::Init)), None);
        // changed by someone: wakes
        assert_eq!(names(c.on(Event::Apply(obj("a", "2")))), Some("a".into()));
        // deleted: wakes, and its successor is a first sight again
        assert_eq!(names(c.on(Event::Delete(obj("a", "2")))), Some("a".into()));
        assert_eq!(names(c.on(Event::Apply(obj("a", "3")))), None);
    }

    #[test]
    fn with_first_sight_a_new_object_counts_and_an_unchanged_fingerprint_does_not() {
        let mut c = Changes::<AgentIdentity>::new(|a| u64::from(a.spec.suspended), true);
        assert_eq!(names(c.on(Event::Apply(obj("a", "1")))), Some("a".into()));
        assert_eq!(names(c.on(Event::Apply(obj("a", "2")))), None);
        let mut suspended = obj("a", "3");
        suspended.spec.suspended = true;
        assert_eq!(names(c.on(Event::Apply(suspended))), Some("a".into()));
    }

    #[test]
    fn own_objects_wake_when_new_or_their_spec_or_deletion_changes_never_when_gone() {
        let mut c = Changes::<AgentIdentity>::of_own();
        let mut a = obj("a", "1");
        a.metadata.generation = Some(1);
        assert_eq!(names(c.on(Event::InitApply(a.clone()))), Some("a".into()));
        // status write, finalizer added: same generation
        let mut b = a.clone();
        b.metadata.resource_version = Some("2".into());
        b.metadata.finalizers = Some(vec![FINALIZER.into()]);
        assert_eq!(names(c.on(Event::Apply(b.clone()))), None);
        b.metadata.generation = Some(2);
        assert_eq!(names(c.on(Event::Apply(b.clone()))), Some("a".into()));
        b.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        ));
        assert_eq!(names(c.on(Event::Apply(b.clone()))), Some("a".into()));
        assert_eq!(names(c.on(Event::Delete(b))), None);
        // recreated under the same name (a new uid): new again
        let mut again = obj("a", "9");
        again.metadata.uid = Some("another-uid".into());
        again.metadata.generation = Some(1);
        assert_eq!(names(c.on(Event::Apply(again))), Some("a".into()));
    }

    #[test]
    fn spec_or_deletion_ignores_status_finalizers_and_labels() {
        let mut a = obj("a", "1");
        a.metadata.generation = Some(1);
        let base = spec_or_deletion(&a);
        let mut b = a.clone();
        b.metadata.finalizers = Some(vec![FINALIZER.into()]);
        b.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        b.status = Some(Default::default());
        assert_eq!(spec_or_deletion(&b), base);
        b.metadata.generation = Some(2);
        assert_ne!(spec_or_deletion(&b), base);
        let mut c = a.clone();
        c.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
        ));
        assert_ne!(spec_or_deletion(&c), base);
    }

    #[test]
    fn strip_metadata_drops_managed_fields_and_last_applied_only() {
        let mut a = obj("a", "1");
        a.metadata.managed_fields = Some(vec![Default::default()]);
        a.metadata.annotations = Some(
            [
                ("kubectl.kubernetes.io/last-applied-configuration".to_string(), "{}".to_string()),
                ("keep".to_string(), "me".to_string()),
            ]
            .into(),
        );
        strip_metadata(&mut a.metadata);
        assert_eq!(a.metadata.managed_fields, None);
        assert_eq!(a.metadata.annotations, Some([("keep".to_string(), "me".to_string())].into()));
    }

    fn grant(name: &str, agent: &str) -> ToolGrant {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "agentid.dev/v1alpha1", "kind": "ToolGrant",
            "metadata": {"name": name, "namespace": "agents"},
            "spec": {"agentRef": {"name": agent}, "tools": [], "kubernetesRules": []}
        }))
        .expect("ToolGrant")
    }

    fn refs(i: &AgentRefIndex, agent: &str) -> Vec<String> {
        i.of(&crate::api::test_agent(agent)).into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn agent_ref_index_follows_applies_deletes_and_relists() {
        fn agent_ref(g: &ToolGrant) -> &str {
            g.spec.agent_ref.name.as_str()
        }
        let mut i = AgentRefIndex::default();
        i.observe(&Event::Apply(grant("g1", "billing")), agent_ref);
        i.observe(&Event::Apply(grant("g2", "billing")), agent_ref);
        i.observe(&Event::Apply(grant("g3", "triage")), agent_ref);
        assert_eq!(refs(&i, "billing"), ["g1", "g2"]);
        assert_eq!(refs(&i, "triage"), ["g3"]);
        assert!(refs(&i, "nobody").is_empty());
        // the same agent name in another namespace is another agent
        let mut elsewhere = grant("g9", "billing");
        elsewhere.metadata.namespace = Some("other".into());
        i.observe(&Event::Apply(elsewhere), agent_ref);
        assert_eq!(refs(&i, "billing"), ["g1", "g2"]);
        i.observe(&Event::Delete(grant("g1", "billing")), agent_ref);
        assert_eq!(refs(&i, "billing"), ["g2"]);
        // a re-list replaces the index once it is complete
        i.observe(&Event::Init, agent_ref);
        i.observe(&Event::InitApply(grant("g4", "billing")), agent_ref);
        assert_eq!(refs(&i, "billing"), ["g2"]);
        i.observe(&Event::InitDone, agent_ref);
        assert_eq!(refs(&i, "billing"), ["g4"]);
        assert!(refs(&i, "triage").is_empty());
    }
}
