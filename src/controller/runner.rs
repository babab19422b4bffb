//! Runs one controller's reconciles from a stream of triggers: what kube-runtime's `Controller` did for
//! agentid, without its cache of objects.
//!
//! A reconcile reads its object from the apiserver ([`super::fetch`]), so all a trigger needs to carry is
//! the object's namespace and name ([`Key`]); nothing is kept per object between reconciles (kube's
//! `Controller` needs a reflector `Store` with an entry of about 0.6 KB per object, which at 10,000 agents,
//! grants and tasks was the largest single part of the operator's memory).
//!
//! The rules are kube's:
//! - an object is reconciled by one reconcile at a time; a trigger while it runs runs it once more after;
//! - triggers of an object that waits to run are merged into one;
//! - [`Action::requeue`] runs it again after that long, unless something runs it sooner;
//! - at most `concurrency` reconciles run at once;
//! - on shutdown no new reconcile starts, and those running finish (for at most [`STOP_WAIT`]).
//!
//! The scheduling itself is [`Queue`], a plain value with no clock or I/O of its own, tested as such.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

/// Which object a trigger is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub namespace: String,
    pub name: String,
}

impl Key {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Key { namespace: namespace.into(), name: name.into() }
    }

    /// The key of a namespaced object (`None` without a name or namespace).
    pub fn of(meta: &kube::api::ObjectMeta) -> Option<Self> {
        Some(Key { namespace: meta.namespace.clone()?, name: meta.name.clone()? })
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What a reconcile asks for next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Action {
    requeue_after: Option<Duration>,
}

impl Action {
    /// Run again after `after`, unless a trigger runs it sooner.
    pub const fn requeue(after: Duration) -> Self {
        Action { requeue_after: Some(after) }
    }

    /// Run again only when a trigger says so.
    pub const fn await_change() -> Self {
        Action { requeue_after: None }
    }

    pub const fn requeue_after(&self) -> Option<Duration> {
        self.requeue_after
    }
}

/// The scheduling state of one controller: which objects wait to run, which run, which run again after,
/// and the requeue timers. Holds only objects with something pending.
#[derive(Debug, Default)]
pub struct Queue {
    /// In the order their first trigger came.
    ready: VecDeque<Key>,
    /// The keys in `ready`.
    queued: HashSet<Key>,
    running: HashSet<Key>,
    /// Running, and triggered since they started: they run again when they end.
    again: HashSet<Key>,
    timers: BTreeSet<(Instant, Key)>,
    timer_of: HashMap<Key, Instant>,
}

impl Queue {
    /// `key` should run: now if it is not running, else once more when it ends. A timer of it goes (this
    /// run is sooner).
    pub fn trigger(&mut self, key: Key) {
        self.cancel_timer(&key);
        if self.running.contains(&key) {
            self.again.insert(key);
        } else if !self.queued.contains(&key) {
            self.queued.insert(key.clone());
            self.ready.push_back(key);
        }
    }

    /// The next object to run, marked running.
    pub fn start(&mut self) -> Option<Key> {
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// `key`'s reconcile ended at `now` asking for `action`. Triggered while it ran: it is ready again
    /// (that run decides the next requeue); else the requeue, if any, is set.
    pub fn done(&mut self, key: Key, action: Action, now: Instant) {
        self.running.remove(&key);
        if self.again.remove(&key) {
            self.trigger(key);
        } else if let Some(after) = action.requeue_after {
            // A requeue too far to represent is no requeue (the next trigger runs it).
            if let Some(at) = now.checked_add(after) {
                self.schedule(key, at);
            }
        }
    }

    /// Runs `key` at `at`. Only `done` sets a timer, and a key that runs has none (its trigger cancelled
    /// it), so there is no earlier timer to weigh against; one is replaced all the same.
    fn schedule(&mut self, key: Key, at: Instant) {
        self.cancel_timer(&key);
        self.timers.insert((at, key.clone()));
        self.timer_of.insert(key, at);
    }

    fn cancel_timer(&mut self, key: &Key) {
        if let Some(at) = self.timer_of.remove(key) {
            self.timers.remove(&(at, key.clone()));
        }
    }

    /// When the next timer falls due.
    pub fn next_timer(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Triggers every object whose timer is due at `now`.
    pub fn fire(&mut self, now: Instant) {
        while let Some((at, _)) = self.timers.first()
            && *at <= now
        {
            if let Some((_, key)) = self.timers.pop_first() {
                self.timer_of.remove(&key);
                self.trigger(key);
            }
        }
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Objects with something pending (waiting, running or with a timer).
    pub fn len(&self) -> usize {
        let mut keys: HashSet<&Key> = self.queued.iter().collect();
        keys.extend(self.running.iter());
        keys.extend(self.timer_of.keys());
        keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A trigger: an object to reconcile, or the error of a watch (logged; the watch retries on its own).
pub type Trigger = Result<Key, kube::runtime::watcher::Error>;

/// How long a stopping controller waits for its running reconciles before it drops them (each is
/// idempotent: the next leader runs it again). Well inside a pod's default 30 s grace period, which must
/// also cover releasing the Lease and draining the listeners.
pub const STOP_WAIT: Duration = Duration::from_secs(10);

/// Runs `reconcile` for the objects `triggers` names, by the rules of [`Queue`], until `shutdown` resolves
/// (then the running reconciles finish, for at most [`STOP_WAIT`]) or the triggers end.
pub async fn run<S, R, F>(
    kind: &'static str,
    triggers: S,
    concurrency: usize,
    mut reconcile: R,
    shutdown: impl Future<Output = ()>,
) where
    S: Stream<Item = Trigger>,
    R: FnMut(Key) -> F,
    F: Future<Output = Action>,
{
    let mut queue = Queue::default();
    let mut running = FuturesUnordered::new();
    let mut triggers = std::pin::pin!(triggers.fuse());
    let mut shutdown = std::pin::pin!(shutdown);
    // Set once stopping: when the running reconciles are dropped if they have not finished.
    let mut stop_by: Option<Instant> = None;
    let concurrency = concurrency.max(1);
    loop {
        let stopping = stop_by.is_some();
        while !stopping && queue.running() < concurrency {
            let Some(key) = queue.start() else { break };
            let reconciled = reconcile(key.clone());
            running.push(async move { (key, reconciled.await) });
        }
        if stopping && running.is_empty() {
            break;
        }
        let timer = queue.next_timer();
        tokio::select! {
            biased;
            () = &mut shutdown, if !stopping => {
                tracing::debug!(kind, running = queue.running(), "controller stopping");
                stop_by = Some(Instant::now() + STOP_WAIT);
            }
            () = tokio::time::sleep_until(stop_by.unwrap_or_else(Instant::now)), if stopping => {
                tracing::warn!(kind, running = queue.running(), "controller stopped with reconciles still running");
                break;
            }
            Some((key, action)) = running.next(), if !running.is_empty() => {
                queue.done(key, action, Instant::now());
            }
            trigger = triggers.next(), if !stopping => match trigger {
                Some(Ok(key)) => queue.trigger(key),
                Some(Err(error)) => tracing::warn!(kind, %error, "watch failed; it retries"),
                None => stop_by = Some(Instant::now() + STOP_WAIT),
            },
            () = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() && !stopping => {
                queue.fire(Instant::now());
            }
        }
    }
}

/// The objects of kind `K` that own `child` (its owner references of that kind, in its namespace): the
/// objects a change of the child wakes.
pub fn owners<K: kube::Resource<DynamicType = ()>>(child: &kube::api::ObjectMeta) -> Vec<Key> {
    let (kind, api_version) = (K::kind(&()), K::api_version(&()));
    let Some(ns) = child.namespace.as_deref() else { return Vec::new() };
    child
        .owner_references
        .iter()
        .flatten()
        .filter(|o| o.kind == kind && o.api_version == api_version)
        .map(|o| Key::new(ns, o.name.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn k(name: &str) -> Key {
        Key::new("ns", name)
    }

    fn start_all(q: &mut Queue) -> Vec<String> {
        std::iter::from_fn(|| q.start()).map(|k| k.name).collect()
    }

    #[test]
    fn triggers_of_a_waiting_object_merge_and_run_in_order() {
        let mut q = Queue::default();
        q.trigger(k("a"));
        q.trigger(k("b"));
        q.trigger(k("a"));
        assert_eq!(start_all(&mut q), ["a", "b"]);
        assert_eq!(q.running(), 2);
        assert!(q.start().is_none());
    }

    #[test]
    fn an_object_runs_once_at_a_time_and_once_more_if_triggered_meanwhile() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.trigger(k("a"));
        assert_eq!(start_all(&mut q), ["a"]);
        q.trigger(k("a"));
        q.trigger(k("a"));
        assert!(q.start().is_none(), "not while it runs");
        // its requeue is dropped: the run after decides again
        q.done(k("a"), Action::requeue(Duration::from_secs(5)), now);
        assert_eq!(q.next_timer(), None);
        assert_eq!(start_all(&mut q), ["a"]);
        q.done(k("a"), Action::await_change(), now);
        assert!(q.is_empty());
    }

    #[test]
    fn a_requeue_runs_after_its_delay_and_a_trigger_sooner_replaces_it() {
        let now = Instant::now();
        let mut q = Queue::default();
        q.trigger(k("a"));
        q.start();
        q.done(k("a"), Action::requeue(Duration::from_secs(10)), now);
        assert_eq!(q.next_timer(), Some(now + Duration::from_secs(10)));
        q.fire(now + Duration::from_secs(9));
        assert!(q.start().is_none(), "not early");
        q.fire(now + Duration::from_secs(10));
        assert_eq!(start_all(&mut q), ["a"]);
        assert_eq!(q.next_timer(), None, "fired once");
        // a requeue, then a trigger before it: runs now, and the timer is gone
        q.done(k("a"), Action::requeue(Duration::from_secs(10)), now);
        q.trigger(k("a"));
        assert_eq!(q.next_timer(), None);
        assert_eq!(start_all(&mut q), ["a"]);
        q.done(k("a"), Action::await_change(), now);
        assert!(q.is_empty());
    }

    #[test]
    fn a_requeue_too_far_to_represent_is_no_requeue() {
        let mut q = Queue::default();
        q.trigger(k("a"));
        q.start();
        q.done(k("a"), Action::requeue(Duration::MAX), Instant::now());
        assert_eq!(q.next_timer(), None);
        assert!(q.is_empty());
    }

    #[test]
    fn owners_are_the_owner_references_of_the_kind_in_the_childs_namespace() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        let owner = |kind: &str, api_version: &str, name: &str| OwnerReference {
            kind: kind.into(),
            api_version: api_version.into(),
            name: name.into(),
            uid: "u".into(),
            ..Default::default()
        };
        let child = kube::api::ObjectMeta {
            namespace: Some("agents".into()),
            owner_references: Some(vec![
                owner("AgentIdentity", "agentid.dev/v1alpha1", "billing"),
                owner("AgentIdentity", "other.example/v1", "impostor"),
                owner("ToolGrant", "agentid.dev/v1alpha1", "g"),
            ]),
            ..Default::default()
        };
        assert_eq!(owners::<crate::api::AgentIdentity>(&child), [Key::new("agents", "billing")]);
        assert!(owners::<crate::api::AgentIdentity>(&kube::api::ObjectMeta::default()).is_empty());
    }

    /// A reconcile that records when each run starts and ends, taking `hold` each.
    fn recorder(
        log: Arc<Mutex<Vec<String>>>,
        hold: Duration,
        action: Action,
    ) -> impl FnMut(Key) -> std::pin::Pin<Box<dyn Future<Output = Action> + Send>> {
        move |key| {
            let log = log.clone();
            Box::pin(async move {
                log.lock().unwrap().push(format!("start {}", key.name));
                tokio::time::sleep(hold).await;
                log.lock().unwrap().push(format!("end {}", key.name));
                action
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_bounds_concurrency_reruns_a_retriggered_object_and_finishes_on_shutdown() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = futures::channel::mpsc::unbounded::<Trigger>();
        for name in ["a", "b", "c"] {
            tx.unbounded_send(Ok(k(name))).unwrap();
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        let runner = tokio::spawn(run(
            "Test",
            rx,
            2,
            recorder(log.clone(), Duration::from_secs(1), Action::await_change()),
            shutdown,
        ));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(*log.lock().unwrap(), ["start a", "start b"], "two at once");
        tx.unbounded_send(Ok(k("a"))).unwrap(); // while a runs
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let seen = log.lock().unwrap().clone();
        assert_eq!(seen[..4], ["start a", "start b", "end a", "end b"]);
        assert!(seen[4..].contains(&"start c".to_string()) && seen[4..].contains(&"start a".to_string()), "{seen:?}");
        // on shutdown a running reconcile finishes, a trigger after it starts nothing, and the loop ends
        tx.unbounded_send(Ok(k("d"))).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop_tx.send(()).unwrap();
        tokio::task::yield_now().await;
        let _ = tx.unbounded_send(Ok(k("late")));
        tokio::time::timeout(Duration::from_secs(5), runner).await.expect("ends").unwrap();
        let seen = log.lock().unwrap().clone();
        assert!(seen.ends_with(&["start d".to_string(), "end d".to_string()]), "{seen:?}");
        assert!(!seen.iter().any(|s| s.contains("late")), "{seen:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_runs_a_requeue_after_its_delay() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = futures::channel::mpsc::unbounded::<Trigger>();
        tx.unbounded_send(Ok(k("a"))).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let runner = tokio::spawn(run(
            "Test",
            rx,
            4,
            recorder(log.clone(), Duration::ZERO, Action::requeue(Duration::from_secs(30))),
            async move {
                let _ = stop_rx.await;
            },
        ));
        tokio::time::sleep(Duration::from_secs(29)).await;
        assert_eq!(log.lock().unwrap().len(), 2, "once, then waits");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(*log.lock().unwrap(), ["start a", "end a", "start a", "end a"]);
        stop_tx.send(()).unwrap();
        runner.await.unwrap();
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stopping_loop_waits_for_a_hung_reconcile_only_so_long() {
        let (tx, rx) = futures::channel::mpsc::unbounded::<Trigger>();
        tx.unbounded_send(Ok(k("hung"))).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let started = Instant::now();
        let runner = tokio::spawn(run("Test", rx, 4, |_key| std::future::pending::<Action>(), async move {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop_tx.send(()).unwrap();
        tokio::time::sleep(STOP_WAIT - Duration::from_millis(100)).await;
        assert!(!runner.is_finished(), "waits for the running reconcile first");
        tokio::time::timeout(Duration::from_secs(1), runner).await.expect("then stops").unwrap();
        assert!(started.elapsed() >= STOP_WAIT + Duration::from_secs(1));
        drop(tx);
    }
}
