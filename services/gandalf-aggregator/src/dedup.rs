//! Maps whose entries expire, pruned in amortised constant time per insert: the dedup of
//! envelope uuids, and the record of which connector a relayed message came from.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
    time::Instant,
};

/// Entries that live until their own expiry.
#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    entries: HashMap<K, (Instant, V)>,
    /// Keys in insertion order with the expiry they were inserted with. Expiries are not
    /// strictly ordered (they differ per entry), so an expired entry may wait behind a
    /// live one for a while; lookups check the expiry, so that only costs memory.
    order: VecDeque<(Instant, K)>,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// Drops what expired at or before `now` from the front of the queue.
    fn prune(&mut self, now: Instant) {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((expiry, key)) = self.order.pop_front()
                && self
                    .entries
                    .get(&key)
                    .is_some_and(|(until, _)| *until == expiry)
            {
                self.entries.remove(&key);
            }
        }
    }

    /// Inserts (or replaces) `key` until `until`.
    pub fn insert(&mut self, key: K, value: V, now: Instant, until: Instant) {
        self.prune(now);
        self.entries.insert(key.clone(), (until, value));
        self.order.push_back((until, key));
    }

    /// The live value of `key`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|(until, _)| *until > now)
            .map(|(_, value)| value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Keys seen recently, each until its own expiry.
#[derive(Debug)]
pub struct Seen<K>(ExpiringMap<K, ()>);

impl<K> Default for Seen<K> {
    fn default() -> Self {
        Self(ExpiringMap::default())
    }
}

impl<K: Hash + Eq + Clone> Seen<K> {
    /// True the first time `key` is offered within its window; records it until `until`.
    pub fn first(&mut self, key: K, now: Instant, until: Instant) -> bool {
        if self.0.get(&key, now).is_some() {
            return false;
        }
        self.0.insert(key, (), now, until);
        true
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_key_counts_once_within_its_window_and_again_after() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert!(seen.first("a", t0, t0 + second));
        assert!(!seen.first("a", t0 + second / 2, t0 + second * 2));
        assert!(
            seen.first("a", t0 + second * 2, t0 + second * 3),
            "expired, so new again"
        );
    }

    #[test]
    fn expired_keys_are_dropped_as_time_passes() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        for i in 0..10_000 {
            assert!(seen.first(i, t0, t0 + Duration::from_millis(10)));
        }
        assert_eq!(seen.len(), 10_000);
        assert!(seen.first(
            -1,
            t0 + Duration::from_millis(20),
            t0 + Duration::from_millis(30)
        ));
        assert_eq!(seen.len(), 1);
    }

    #[test]
    fn a_replaced_entry_outlives_its_first_expiry() {
        let mut map = ExpiringMap::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        map.insert("k", 1, t0, t0 + ms(10));
        map.insert("k", 2, t0 + ms(5), t0 + ms(50));
        // The first insertion's queue entry expires; the replacement stays.
        map.insert("other", 3, t0 + ms(20), t0 + ms(30));
        assert_eq!(map.get(&"k", t0 + ms(20)), Some(&2));
        assert_eq!(map.get(&"k", t0 + ms(60)), None);
    }
}
