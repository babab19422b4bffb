//! The AgentIdentities that admission and the background scan look up, kept from one watch as the few
//! fields admission reads ([`AgentInfo`]), indexed by name and by ServiceAccount. A cache of whole
//! objects cost about 2 KB per agent and copy, and finding the agent of a ServiceAccount walked every
//! agent of the cluster on each admission of an agent pod.

use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tracing::warn;

use crate::api::AgentIdentity;
use crate::core::admission::rules::{AgentDirectory, AgentInfo, StaticDirectory};
use crate::core::relist::Relist;

/// An [`AgentDirectory`] kept current by [`LiveDirectory::follow`].
pub struct LiveDirectory {
    dir: RwLock<StaticDirectory>,
    /// Whether the first listing is in.
    synced: watch::Sender<bool>,
    /// Counts the changes seen after the first listing (each a reason to rescan).
    changes: watch::Sender<u64>,
    /// The agents seen in the listing under way (a re-list after a watch gap ends by dropping the rest).
    relisted: std::sync::Mutex<Relist>,
}

impl Default for LiveDirectory {
    fn default() -> Self {
        LiveDirectory {
            dir: RwLock::default(),
            synced: watch::Sender::new(false),
            changes: watch::Sender::new(0),
            relisted: Default::default(),
        }
    }
}

fn key(a: &AgentIdentity) -> (String, String) {
    (a.namespace().unwrap_or_default(), a.name_any())
}

impl LiveDirectory {
    /// Applies one watch event. No I/O: tests feed events directly.
    pub fn apply(&self, event: Event<AgentIdentity>) {
        let mut dir = self.dir.write().unwrap_or_else(|p| p.into_inner());
        let mut relisted = self.relisted.lock().unwrap_or_else(|p| p.into_inner());
        match event {
            Event::Init => relisted.start(),
            Event::InitApply(a) => {
                let (ns, name) = key(&a);
                dir.upsert(&ns, AgentInfo::from_identity(&a));
                relisted.listed((ns, name));
            }
            Event::InitDone => {
                for (ns, name) in relisted.gone(dir.keys()) {
                    dir.remove(&ns, &name);
                }
                drop(dir);
                if self.synced.send_replace(true) {
                    // A re-list after a gap: whatever happened meanwhile may change what the scan finds.
                    self.changes.send_modify(|n| *n += 1);
                }
            }
            Event::Apply(a) => {
                let (ns, _) = key(&a);
                dir.upsert(&ns, AgentInfo::from_identity(&a));
                drop(dir);
                self.changes.send_modify(|n| *n += 1);
            }
            Event::Delete(a) => {
                let (ns, name) = key(&a);
                dir.remove(&ns, &name);
                drop(dir);
                self.changes.send_modify(|n| *n += 1);
            }
        }
    }

    /// Applies the events of `stream` until it ends (a watcher's never does); errors are logged, the
    /// watcher retries with its backoff.
    pub async fn follow(&self, stream: impl Stream<Item = Result<Event<AgentIdentity>, watcher::Error>>) {
        futures::pin_mut!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(e) => self.apply(e),
                Err(e) => warn!(error = %e, "AgentIdentity watch error (retrying)"),
            }
        }
    }

    /// Follows the AgentIdentities of `api` (all namespaces, or one).
    pub async fn watch(&self, api: Api<AgentIdentity>) {
        self.follow(watcher::watcher(api, watcher::Config::default()).backoff(crate::controller::watch_backoff())).await
    }

    /// Returns once the first listing is in.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// Changes after the first listing: `changed()` resolves on each.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

impl AgentDirectory for LiveDirectory {
    fn agent(&self, namespace: &str, name: &str) -> Option<AgentInfo> {
        self.dir.read().unwrap_or_else(|p| p.into_inner()).agent(namespace, name)
    }

    fn agent_of_service_account(&self, namespace: &str, service_account: &str) -> Option<String> {
        self.dir.read().unwrap_or_else(|p| p.into_inner()).agent_of_service_account(namespace, service_account)
    }

    fn claimants_of_service_account(&self, namespace: &str, service_account: &str) -> Vec<String> {
        self.dir.read().unwrap_or_else(|p| p.into_inner()).claimants_of_service_account(namespace, service_account)
    }
}

/// Starts following `api` on the runtime and returns the directory once its first listing is in.
pub async fn start(api: Api<AgentIdentity>) -> Arc<LiveDirectory> {
    let dir = Arc::new(LiveDirectory::default());
    let follower = dir.clone();
    tokio::spawn(async move { follower.watch(api).await });
    dir.wait_synced().await;
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(ns: &str, name: &str, in_place: bool) -> AgentIdentity {
        let mut a = crate::api::test_agent(name);
        a.metadata.namespace = Some(ns.into());
        if in_place {
            a.status = Some(crate::api::AgentIdentityStatus {
                service_account_name: Some(a.service_account_name()),
                ..Default::default()
            });
        }
        a
    }

    #[test]
    fn follows_applies_deletions_and_relists() {
        let d = LiveDirectory::default();
        let changes = d.subscribe();
        d.apply(Event::Init);
        d.apply(Event::InitApply(agent("ns", "a", true)));
        d.apply(Event::InitApply(agent("ns", "b", false)));
        assert!(!*d.synced.borrow(), "not synced before the listing ends");
        d.apply(Event::InitDone);
        assert!(*d.synced.borrow());
        assert_eq!(*changes.borrow(), 0, "the first listing is not a change");
        assert_eq!(d.agent_of_service_account("ns", "agent-a").as_deref(), Some("a"));
        assert_eq!(d.agent_of_service_account("ns", "agent-b"), None, "not in place");
        assert_eq!(d.claimants_of_service_account("ns", "agent-b"), ["b"]);

        d.apply(Event::Apply(agent("ns", "b", true)));
        assert_eq!(d.agent_of_service_account("ns", "agent-b").as_deref(), Some("b"));
        d.apply(Event::Delete(agent("ns", "a", true)));
        assert_eq!(d.agent("ns", "a"), None);
        assert_eq!(*changes.borrow(), 2);

        // A re-list after a gap that no longer has b (deleted meanwhile) but has c.
        d.apply(Event::Init);
        d.apply(Event::InitApply(agent("ns", "c", true)));
        assert!(d.agent("ns", "b").is_some(), "kept until the re-list ends");
        d.apply(Event::InitDone);
        assert_eq!(d.agent("ns", "b"), None);
        assert!(d.agent("ns", "c").is_some());
        assert_eq!(d.dir.read().unwrap().len(), 1);
        assert_eq!(*changes.borrow(), 3, "a re-list counts as a change");
    }
}
