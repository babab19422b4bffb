//! Keeps the decision point's state current from watches: AgentIdentities, ToolGrants and AgentTasks
//! into the [`Snapshot`](crate::core::pdp::Snapshot), and the metadata of the ServiceAccounts and anchor
//! Secrets agentid created (for the uids tokens are bound to). A change takes effect with the next
//! decision after its watch event: completing a task, suspending an agent or a grant's expiry needs no
//! token cache to run out.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::{Stream, StreamExt};
use kube::api::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use super::PdpState;
use crate::api::{AGENT_LABEL, AgentIdentity, AgentTask, MANAGED_BY, MANAGED_BY_LABEL, ToolGrant};
use crate::core::pdp::caller::{AccountEntry, AnchorEntry};
use crate::core::relist::Relist;
use crate::core::task::TASK_LABEL;
use crate::core::uid::Uid;
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};

/// Number of watches that must list before the decision point is ready.
const WATCHES: usize = 5;

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Applies watch events of one kind: `apply` for each object seen, `remove` for each key gone (deleted, or
/// missing from a re-list: `held` says what the state holds of this kind, so no second copy of every key is
/// kept here). Marks one more watch as synced after its first listing.
async fn follow<K, S>(
    stream: S,
    synced: Arc<AtomicUsize>,
    state: Arc<PdpState>,
    key: fn(&K) -> Option<(String, String)>,
    apply: fn(&PdpState, &K),
    remove: fn(&PdpState, &str, &str),
    held: fn(&PdpState) -> Vec<(String, String)>,
) where
    S: Stream<Item = Result<Event<K>, watcher::Error>>,
{
    futures::pin_mut!(stream);
    // The keys of a re-list in progress (only while it lasts).
    let mut relisted = Relist::default();
    let mut first = true;
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => relisted.start(),
            Ok(Event::InitApply(o)) => {
                if let Some(k) = key(&o) {
                    relisted.listed(k);
                }
                apply(&state, &o);
            }
            Ok(Event::InitDone) => {
                for (ns, name) in relisted.gone(&held(&state)) {
                    remove(&state, &ns, &name);
                }
                if first {
                    first = false;
                    synced.fetch_add(1, Ordering::AcqRel);
                    state.mark_ready_if(synced.load(Ordering::Acquire) >= WATCHES);
                }
            }
            Ok(Event::Apply(o)) => apply(&state, &o),
            Ok(Event::Delete(o)) => {
                if let Some((ns, name)) = key(&o) {
                    remove(&state, &ns, &name);
                }
            }
            Err(e) => warn!(error = %e, "decision point watch error (retrying)"),
        }
    }
}

fn key_of<K: Resource>(o: &K) -> Option<(String, String)> {
    Some((o.meta().namespace.clone()?, o.meta().name.clone()?))
}

fn owner_uid<K: Resource>(o: &K, kind: &str) -> Option<(String, String)> {
    o.meta().owner_references.as_ref()?.iter().find(|r| r.kind == kind).map(|r| (r.name.clone(), r.uid.clone()))
}

impl PdpState {
    fn mark_ready_if(&self, all_synced: bool) {
        if all_synced && self.keys.current().is_some() {
            self.ready.store(true, Ordering::Release);
        }
    }
}

/// Starts the watches (and the key refresh) and returns a future that resolves once the state is
/// complete enough to decide: every watch listed and the issuer's keys loaded.
pub fn start(client: Client, namespace: Option<String>, state: Arc<PdpState>) -> impl Future<Output = ()> {
    let synced = Arc::new(AtomicUsize::new(0));
    let ns = namespace.as_deref();
    let cfg = watcher::Config::default;
    let managed = || watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
    let strip = |m: &mut kube::api::ObjectMeta| {
        m.managed_fields = None;
        if let Some(a) = m.annotations.as_mut() {
            a.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
    };

    let agents = watcher::watcher(api::<AgentIdentity>(&client, ns), cfg())
        .backoff(crate::controller::watch_backoff())
        .modify(move |o| strip(&mut o.metadata));
    tokio::spawn(follow(
        agents,
        synced.clone(),
        state.clone(),
        key_of,
        |s, o| s.snapshot.write().unwrap_or_else(|p| p.into_inner()).upsert_agent(o),
        |s, ns, n| s.snapshot.write().unwrap_or_else(|p| p.into_inner()).remove_agent(ns, n),
        |s| s.snapshot.read().unwrap_or_else(|p| p.into_inner()).agent_keys(),
    ));
    let grants = watcher::watcher(api::<ToolGrant>(&client, ns), cfg())
        .backoff(crate::controller::watch_backoff())
        .modify(move |o| strip(&mut o.metadata));
    tokio::spawn(follow(
        grants,
        synced.clone(),
        state.clone(),
        key_of,
        |s, o| s.snapshot.write().unwrap_or_else(|p| p.into_inner()).upsert_grant(o),
        |s, ns, n| s.snapshot.write().unwrap_or_else(|p| p.into_inner()).remove_grant(ns, n),
        |s| s.snapshot.read().unwrap_or_else(|p| p.into_inner()).grant_keys(),
    ));
    let tasks = watcher::watcher(api::<AgentTask>(&client, ns), cfg())
        .backoff(crate::controller::watch_backoff())
        .modify(move |o| strip(&mut o.metadata));
    tokio::spawn(follow(
        tasks,
        synced.clone(),
        state.clone(),
        key_of,
        |s, o| s.snapshot.write().unwrap_or_else(|p| p.into_inner()).upsert_task(o),
        |s, ns, n| {
            s.snapshot.write().unwrap_or_else(|p| p.into_inner()).remove_task(ns, n);
            s.usage.lock().unwrap_or_else(|p| p.into_inner()).forget_task(ns, n);
            s.budgets.forget(ns, n);
        },
        |s| s.snapshot.read().unwrap_or_else(|p| p.into_inner()).task_keys(),
    ));
    let accounts = watcher::watcher(api::<PartialObjectMeta<ServiceAccount>>(&client, ns), managed())
        .backoff(crate::controller::watch_backoff());
    tokio::spawn(follow(
        accounts,
        synced.clone(),
        state.clone(),
        key_of::<PartialObjectMeta<ServiceAccount>>,
        |s, o| {
            let (Some((ns, name)), Some(agent), Some((_, agent_uid))) =
                (key_of(o), o.labels().get(AGENT_LABEL).cloned(), owner_uid(o, "AgentIdentity"))
            else {
                return;
            };
            let entry =
                AccountEntry { uid: Uid::new(&o.uid().unwrap_or_default()), agent, agent_uid: agent_uid.into() };
            s.accounts.write().unwrap_or_else(|p| p.into_inner()).insert(&ns, &name, entry);
        },
        |s, ns, n| {
            s.accounts.write().unwrap_or_else(|p| p.into_inner()).remove(ns, n);
        },
        |s| s.accounts.read().unwrap_or_else(|p| p.into_inner()).keys(),
    ));
    let anchors = watcher::watcher(
        api::<PartialObjectMeta<Secret>>(&client, ns),
        watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY},{TASK_LABEL}")),
    )
    .backoff(crate::controller::watch_backoff());
    tokio::spawn(follow(
        anchors,
        synced.clone(),
        state.clone(),
        key_of::<PartialObjectMeta<Secret>>,
        |s, o| {
            let (Some((ns, name)), Some((task, task_uid))) = (key_of(o), owner_uid(o, "AgentTask")) else { return };
            let entry = AnchorEntry { uid: Uid::new(&o.uid().unwrap_or_default()), task, task_uid: task_uid.into() };
            s.anchors.write().unwrap_or_else(|p| p.into_inner()).insert(&ns, &name, entry);
        },
        |s, ns, n| {
            s.anchors.write().unwrap_or_else(|p| p.into_inner()).remove(ns, n);
        },
        |s| s.anchors.read().unwrap_or_else(|p| p.into_inner()).keys(),
    ));

    let keys = state.keys.clone();
    tokio::spawn(keys.clone().refresh_periodically());
    async move {
        loop {
            if keys.current().is_none()
                && let Err(e) = keys.fetch().await
            {
                warn!(error = %e, "could not load the ServiceAccount issuer keys (retrying)");
            }
            state.mark_ready_if(synced.load(Ordering::Acquire) >= WATCHES);
            if state.is_ready() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// The state, for tests: how many ServiceAccounts and anchors are known.
pub fn counts(state: &PdpState) -> (usize, usize) {
    let a = state.accounts.read().unwrap_or_else(|p| p.into_inner()).len();
    let b = state.anchors.read().unwrap_or_else(|p| p.into_inner()).len();
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdp::budget::Budgets;
    use crate::pdp::keys::{IssuerKeys, KeySource};

    fn state() -> Arc<PdpState> {
        let keys = KeySource::fixed(IssuerKeys { issuer: "iss".into(), keys: Default::default() });
        Arc::new(PdpState::new(
            Default::default(),
            "cluster.local",
            Arc::new(keys),
            Arc::new(Budgets::local()),
            Arc::new(crate::metrics::Metrics::default()),
        ))
    }

    fn agent(name: &str) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.metadata.namespace = Some("agents".into());
        a
    }

    fn agents(s: &PdpState) -> Vec<String> {
        let mut k: Vec<String> = s.snapshot.read().unwrap().agent_keys().into_iter().map(|(_, n)| n).collect();
        k.sort();
        k
    }

    /// Waits (at most 5 s) until the agents held are `want`.
    async fn holds(s: &PdpState, want: &[&str]) {
        for _ in 0..500 {
            if agents(s) == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(agents(s), want);
    }

    #[tokio::test]
    async fn a_relist_removes_what_it_no_longer_lists_and_a_delete_removes_at_once() {
        let s = state();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let synced = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(follow(
            rx,
            synced.clone(),
            s.clone(),
            key_of,
            |s, o: &AgentIdentity| s.snapshot.write().unwrap().upsert_agent(o),
            |s, ns, n| s.snapshot.write().unwrap().remove_agent(ns, n),
            |s| s.snapshot.read().unwrap().agent_keys(),
        ));
        let send = |e: Event<AgentIdentity>| tx.unbounded_send(Ok(e)).unwrap();
        send(Event::Init);
        for n in ["a", "b", "c"] {
            send(Event::InitApply(agent(n)));
        }
        send(Event::InitDone);
        send(Event::Apply(agent("d")));
        send(Event::Delete(agent("a")));
        holds(&s, &["b", "c", "d"]).await;
        assert_eq!(synced.load(Ordering::Acquire), 1);
        // A watch gap: b and d went meanwhile, e came. Until the re-list is complete nothing is removed,
        // then exactly what it did not list.
        send(Event::Init);
        send(Event::InitApply(agent("c")));
        send(Event::InitApply(agent("e")));
        holds(&s, &["b", "c", "d", "e"]).await;
        send(Event::InitDone);
        holds(&s, &["c", "e"]).await;
        assert_eq!(synced.load(Ordering::Acquire), 1, "a re-list is not a second watch synced");
        drop(tx);
        task.await.unwrap();
    }
}
