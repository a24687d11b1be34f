//! Dedup of envelope uuids within their timeout, in amortised constant time per message.

use std::{
    collections::{HashMap, VecDeque},
    time::Instant,
};

/// Keys seen recently, each until its own expiry.
#[derive(Debug)]
pub struct Seen<K> {
    until: HashMap<K, Instant>,
    /// Keys in insertion order with the expiry they were inserted with. Expiries are not
    /// strictly ordered (timeouts differ per message), so an expired key may wait behind a
    /// live one for a while; lookups check the expiry, so that only costs memory.
    order: VecDeque<(Instant, K)>,
}

impl<K> Default for Seen<K> {
    fn default() -> Self {
        Self {
            until: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Seen<K> {
    /// True the first time `key` is offered within its window; records it until `until`.
    pub fn first(&mut self, key: K, now: Instant, until: Instant) -> bool {
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            if let Some((expiry, old)) = self.order.pop_front()
                && self.until.get(&old) == Some(&expiry)
            {
                self.until.remove(&old);
            }
        }
        match self.until.get(&key) {
            Some(expiry) if *expiry > now => false,
            _ => {
                self.until.insert(key.clone(), until);
                self.order.push_back((until, key));
                true
            }
        }
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
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
}
