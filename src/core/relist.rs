//! What a watch's re-list leaves behind. After a gap a kube watcher lists everything again (`Init`, one
//! `InitApply` per object, `InitDone`) without saying what was deleted meanwhile: whatever a follower holds
//! that the listing did not name is gone. Both followers of live state (the admission webhook's agent
//! directory and the decision point's snapshot) keep one of these per watch.

use std::collections::HashSet;

/// The (namespace, name) keys of the re-list under way; empty, holding no memory, between re-lists.
#[derive(Debug, Default)]
pub struct Relist(HashSet<(String, String)>);

impl Relist {
    /// `Init`: a re-list starts (one cut short by another gap is forgotten).
    pub fn start(&mut self) {
        self.0 = HashSet::new();
    }

    /// `InitApply`: the re-list names this object.
    pub fn listed(&mut self, key: (String, String)) {
        self.0.insert(key);
    }

    /// `InitDone`: of the keys the follower holds, those the re-list did not name, to remove (only those are
    /// copied). Forgets the listing.
    pub fn gone<'a>(&mut self, held: impl IntoIterator<Item = &'a (String, String)>) -> Vec<(String, String)> {
        let listed = std::mem::take(&mut self.0);
        held.into_iter().filter(|k| !listed.contains(*k)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(name: &str) -> (String, String) {
        ("ns".into(), name.into())
    }

    #[test]
    fn what_the_relist_did_not_name_is_gone_and_the_listing_is_forgotten() {
        let mut r = Relist::default();
        r.start();
        r.listed(k("a"));
        r.listed(k("c"));
        assert_eq!(r.gone(&[k("a"), k("b"), k("c"), k("d")]), [k("b"), k("d")]);
        // The next re-list starts from nothing: a key listed last time is not listed now.
        r.start();
        r.listed(k("b"));
        assert_eq!(r.gone(&[k("a"), k("b")]), [k("a")]);
        // A re-list cut short by another gap: only the new one counts.
        r.start();
        r.listed(k("a"));
        r.start();
        r.listed(k("b"));
        assert_eq!(r.gone(&[k("a"), k("b")]), [k("a")]);
    }

    #[test]
    fn an_empty_relist_removes_everything_held() {
        let mut r = Relist::default();
        r.start();
        assert_eq!(r.gone(&[k("a")]), [k("a")]);
        assert!(r.gone(&[]).is_empty());
    }
}
