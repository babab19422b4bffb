//! Budgets for work that costs the apiserver (SubjectAccessReviews, TokenReviews): token buckets,
//! per key or global, and a short-lived memory of refused tokens. Pure: the caller passes the time.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    pub fn new(per_second: f64, burst: u32) -> Self {
        TokenBucket { per_second, burst: f64::from(burst), tokens: f64::from(burst), last: None }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Takes `n` tokens if there are that many.
    pub fn try_take(&mut self, n: u32, now: Instant) -> bool {
        self.refill(now);
        let n = f64::from(n);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// One token bucket per key (a peer address), with at most `max_keys` keys remembered: full buckets
/// are forgotten first (they hold nothing), and a flood of new keys beyond that is refused.
#[derive(Debug)]
pub struct KeyedBuckets<K> {
    buckets: HashMap<K, TokenBucket>,
    per_second: f64,
    burst: u32,
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> KeyedBuckets<K> {
    pub fn new(per_second: f64, burst: u32, max_keys: usize) -> Self {
        KeyedBuckets { buckets: HashMap::new(), per_second, burst, max_keys }
    }

    pub fn try_take(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets.entry(key.clone()).or_insert_with(|| TokenBucket::new(per_second, burst)).try_take(1, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Remembers keys (hashes of refused tokens) for `ttl`, at most `max` of them.
#[derive(Debug)]
pub struct ExpiringSet<K> {
    until: HashMap<K, Instant>,
    ttl: Duration,
    max: usize,
}

impl<K: Hash + Eq> ExpiringSet<K> {
    pub fn new(ttl: Duration, max: usize) -> Self {
        ExpiringSet { until: HashMap::new(), ttl, max }
    }

    pub fn insert(&mut self, key: K, now: Instant) {
        if self.until.len() >= self.max {
            self.until.retain(|_, until| *until > now);
            if self.until.len() >= self.max {
                // Still full of live entries: forget them all rather than grow (the cache only saves work).
                self.until.clear();
            }
        }
        self.until.insert(key, now + self.ttl);
    }

    pub fn contains(&self, key: &K, now: Instant) -> bool {
        self.until.get(key).is_some_and(|until| *until > now)
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, 5);
        assert!((0..5).all(|_| b.try_take(1, t0)));
        assert!(!b.try_take(1, t0));
        assert!(b.try_take(1, t0 + Duration::from_millis(100)), "one token per 100 ms");
        assert!(!b.try_take(1, t0 + Duration::from_millis(100)));
        assert!(!b.try_take(6, t0 + Duration::from_secs(60)), "never more than the burst");
        assert!(b.try_take(5, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn keyed_buckets_are_per_key_and_bounded() {
        let t0 = Instant::now();
        let mut k = KeyedBuckets::new(1.0, 2, 3);
        assert!(k.try_take(&"a", t0) && k.try_take(&"a", t0));
        assert!(!k.try_take(&"a", t0));
        assert!(k.try_take(&"b", t0), "another peer has its own budget");
        assert!(k.try_take(&"c", t0));
        assert!(!k.try_take(&"d", t0), "a fourth key while three are in use is refused");
        // Later the buckets are full again, so they are forgotten to make room.
        assert!(k.try_take(&"d", t0 + Duration::from_secs(10)));
        assert!(k.len() <= 3);
    }

    #[test]
    fn expiring_sets_forget_after_their_ttl_and_stay_bounded() {
        let t0 = Instant::now();
        let mut s = ExpiringSet::new(Duration::from_secs(10), 2);
        s.insert(1, t0);
        assert!(s.contains(&1, t0 + Duration::from_secs(9)));
        assert!(!s.contains(&1, t0 + Duration::from_secs(10)));
        s.insert(2, t0);
        s.insert(3, t0);
        assert!(s.len() <= 2);
    }
}
