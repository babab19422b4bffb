//! The controllers' clock: which objects to look at again because time passed (a grant's `validFrom` or
//! `validUntil`, a task's expiry), and when.
//!
//! kube's `Action::requeue` would do it with a timer entry per object in the controller's scheduler (about
//! 450 bytes each: the request twice, in a hash map and in a delay queue, with a reason that can hold a whole
//! API resource description), and a monotonic timer, so a boundary days away had to be clamped to a resync
//! lest a wall-clock step delay it. Here each deadline is one ordered entry of wall-clock seconds and the
//! object's namespace and name, read every [`TICK`]: exact to the second, whatever the clock did meanwhile.
//!
//! The same deadline set twice is kept once. A deadline left behind by a change (a grant's `validUntil`
//! moved) fires once to a reconcile that finds nothing to do. The deadlines of an object are forgotten when
//! the watch says it was deleted (a deleted grant valid until 2099 would otherwise be kept until then); one
//! deleted while the watch was down fires once, to a reconcile that finds it gone.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use k8s_openapi::jiff::Timestamp;

use super::{Key, Trigger};

/// How often the clock is read.
pub const TICK: Duration = Duration::from_secs(1);

/// One deadline: (unix seconds, namespace, name).
type Entry = (i64, Box<str>, Box<str>);

/// Deadlines of one kind of object, in time order.
#[derive(Default)]
pub struct Deadlines {
    due: Mutex<BTreeSet<Entry>>,
}

impl Deadlines {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<Entry>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Look at `namespace/name` again at `at`, rounded up to the second (never early).
    pub fn at(&self, namespace: &str, name: &str, at: Timestamp) {
        let secs = at.as_second() + i64::from(at.subsec_nanosecond() > 0);
        self.lock().insert((secs, namespace.into(), name.into()));
    }

    /// The objects due at `now`, in time order; they are removed.
    pub fn take_due(&self, now: Timestamp) -> Vec<(Box<str>, Box<str>)> {
        let mut due = self.lock();
        let mut out = Vec::new();
        while let Some(first) = due.first()
            && first.0 <= now.as_second()
        {
            let (_, ns, name) = due.pop_first().expect("first exists");
            out.push((ns, name));
        }
        out
    }

    /// Forgets the deadlines of `namespace/name` (deleted). Runs through all deadlines: deletions are rare
    /// next to the reconciles that set deadlines, and an index by name would double each entry.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().retain(|(_, ns, n)| !(**ns == *namespace && **n == *name));
    }

    /// Follows the watch of the objects these deadlines are of: a deleted one's deadlines go.
    pub fn observe<K: kube::Resource>(&self, event: &kube::runtime::watcher::Event<K>) {
        if let kube::runtime::watcher::Event::Delete(o) = event
            && let (Some(ns), Some(name)) = (o.meta().namespace.as_deref(), o.meta().name.as_deref())
        {
            self.forget(ns, name);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The objects of `deadlines` as they fall due, as triggers: read every [`TICK`].
pub fn due(deadlines: Arc<Deadlines>) -> impl Stream<Item = Trigger> + Send {
    use futures::StreamExt;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold(ticks, move |mut ticks| {
        let deadlines = deadlines.clone();
        async move {
            ticks.tick().await;
            let due = deadlines.take_due(Timestamp::now());
            let keys = due.into_iter().map(|(ns, name)| Ok(Key::new(ns, name)));
            Some((futures::stream::iter(keys), ticks))
        }
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn names(v: Vec<(Box<str>, Box<str>)>) -> Vec<String> {
        v.into_iter().map(|(ns, n)| format!("{ns}/{n}")).collect()
    }

    #[test]
    fn deadlines_fall_due_in_time_order_once_and_never_early() {
        let d = Deadlines::default();
        d.at("a", "late", t(20));
        d.at("a", "early", t(10));
        d.at("b", "early", t(10));
        d.at("a", "early", t(10)); // the same deadline again: kept once
        let half = t(5).checked_add(k8s_openapi::jiff::SignedDuration::from_millis(500)).unwrap();
        d.at("a", "fraction", half); // rounded up: due at t(6), not t(5)
        assert_eq!(d.len(), 4);
        assert!(d.take_due(t(4)).is_empty());
        assert!(d.take_due(t(5)).is_empty(), "never before its instant");
        assert_eq!(names(d.take_due(t(6))), ["a/fraction"]);
        assert_eq!(names(d.take_due(t(15))), ["a/early", "b/early"]);
        assert!(d.take_due(t(15)).is_empty(), "taken once");
        // A wall clock that jumped far ahead: everything due comes out at once.
        assert_eq!(names(d.take_due(t(10_000))), ["a/late"]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_moved_deadline_leaves_one_stale_entry_and_deleted_objects_are_forgotten() {
        let d = Deadlines::default();
        d.at("a", "g", t(100));
        d.at("a", "g", t(50)); // validUntil moved earlier: both fire, the later one to a reconcile with nothing to do
        d.at("a", "deleted", t(4_000_000_000));
        d.at("a", "deleted", t(3_000_000_000));
        d.at("b", "deleted", t(3_000_000_000));
        let mut gone = crate::api::test_agent("deleted");
        gone.metadata.namespace = Some("a".into());
        d.observe(&kube::runtime::watcher::Event::Apply(gone.clone()));
        assert_eq!(d.len(), 5, "a change forgets nothing");
        d.observe(&kube::runtime::watcher::Event::Delete(gone));
        assert_eq!(d.len(), 3, "both of a/deleted, not b/deleted");
        assert_eq!(names(d.take_due(t(100))), ["a/g", "a/g"]);
    }

    #[tokio::test]
    async fn the_stream_hands_out_what_is_due() {
        use futures::StreamExt;
        let d = Arc::new(Deadlines::default());
        d.at("a", "now", Timestamp::now().checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(10)).unwrap());
        d.at("a", "later", Timestamp::now().checked_add(k8s_openapi::jiff::SignedDuration::from_hours(1)).unwrap());
        let mut due = Box::pin(due(d.clone()));
        let first = tokio::time::timeout(Duration::from_secs(5), due.next()).await.unwrap().unwrap().unwrap();
        assert_eq!(first, Key::new("a", "now"));
        assert_eq!(d.len(), 1, "the later one waits");
    }
}
