//! Maps whose entries expire, pruned in amortised constant time per insert, and bounded
//! in count: the dedup of envelope uuids, and the record of which connection a relayed
//! message came from. When full, the oldest insertion goes first (counted by the owner
//! through [`ExpiringMap::evicted`]), so a flood cannot grow them without limit.

use std::{
    collections::{HashMap, VecDeque, hash_map},
    hash::Hash,
    time::Instant,
};

/// The maps' hasher: seeded per map (a peer cannot aim its uuids at one bucket) and
/// several times cheaper than SipHash on the 16-byte keys every message brings.
type Hasher = foldhash::fast::RandomState;

/// How many entries an [`ExpiringMap`] holds by default: at 100,000 messages a second
/// with a 5 s window, the window of every message.
pub const DEFAULT_CAPACITY: usize = 500_000;

/// Entries that live until their own expiry, at most `capacity` of them.
#[derive(Debug)]
pub struct ExpiringMap<K, V> {
    capacity: usize,
    evicted: u64,
    /// Stamps insertions, so that a queue entry names exactly the insertion it was made
    /// for (a replaced key leaves a stale queue entry behind).
    sequence: u64,
    entries: HashMap<K, Entry<V>, Hasher>,
    /// Insertions in order with their expiry. Expiries are not strictly ordered (they
    /// differ per entry), so an expired entry may wait behind a live one for a while;
    /// lookups check the expiry, so that only costs memory, and the queue is bounded.
    order: VecDeque<(Instant, u64, K)>,
}

#[derive(Debug)]
struct Entry<V> {
    until: Instant,
    sequence: u64,
    value: V,
}

impl<K, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl<K, V> ExpiringMap<K, V> {
    /// An empty map that holds at most `capacity` entries (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            evicted: 0,
            sequence: 0,
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// How many live entries were pushed out early because the map was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    /// Pops the oldest queue entry; removes its map entry when that is still the same
    /// insertion. Returns whether a queue entry was popped, and whether it was live.
    fn pop_oldest(&mut self, now: Instant) -> Option<bool> {
        let (_, sequence, key) = self.order.pop_front()?;
        Some(match self.entries.entry(key) {
            hash_map::Entry::Occupied(entry) if entry.get().sequence == sequence => {
                entry.remove().until > now
            }
            _ => false,
        })
    }

    /// Drops what expired at or before `now` from the front of the queue.
    fn prune(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(expiry, _, _)| *expiry <= now)
        {
            self.pop_oldest(now);
        }
    }

    /// Inserts (or replaces) `key` until `until`; when the map is full, the oldest
    /// insertion makes room.
    pub fn insert(&mut self, key: K, value: V, now: Instant, until: Instant) {
        self.prune(now);
        // Full, or the queue holds too many stale entries: drop from the front.
        while (self.entries.len() >= self.capacity && !self.entries.contains_key(&key))
            || self.order.len() >= self.capacity * 2
        {
            match self.pop_oldest(now) {
                Some(true) => self.evicted += 1,
                Some(false) => {}
                None => break,
            }
        }
        self.sequence += 1;
        self.entries.insert(
            key.clone(),
            Entry {
                until,
                sequence: self.sequence,
                value,
            },
        );
        self.order.push_back((until, self.sequence, key));
    }

    /// Removes `key`; its value when it was live.
    pub fn remove(&mut self, key: &K, now: Instant) -> Option<V> {
        self.entries
            .remove(key)
            .filter(|entry| entry.until > now)
            .map(|entry| entry.value)
    }

    /// The live value of `key`.
    pub fn get(&self, key: &K, now: Instant) -> Option<&V> {
        self.entries
            .get(key)
            .filter(|entry| entry.until > now)
            .map(|entry| &entry.value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A [`Seen`] key: 128 bits of two seeded hashes of what was offered, so that it serves
/// as its own hash in the map and a peer cannot aim its uuids at one bucket (nor, without
/// the seeds, make two keys collide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // The first half is a seeded hash already; the second only tells keys apart.
        state.write_u64(self.0);
    }
}

/// Keys seen recently, each until its own expiry: the per-message dedup. Compact (a key
/// and its expiry in 24 bytes, in the map and again in the queue; ~3x smaller than an
/// [`ExpiringMap`] of uuids), because at a high message rate it holds every message of
/// the last timeout and its lookups are the cache misses of the routing path.
#[derive(Debug)]
pub struct Seen {
    capacity: usize,
    evicted: u64,
    seeds: [foldhash::fast::RandomState; 2],
    /// Expiries are kept as milliseconds after this.
    epoch: Instant,
    /// Key -> expiry.
    entries: HashMap<Key, u64, std::hash::BuildHasherDefault<KeyHasher>>,
    /// Insertions in order with their expiry (not strictly ordered; see [`ExpiringMap`]).
    order: VecDeque<(u64, Key)>,
}

impl Default for Seen {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Seen {
    /// At most `capacity` keys (at least one); when full the oldest is forgotten first.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            evicted: 0,
            seeds: Default::default(),
            epoch: Instant::now(),
            entries: HashMap::default(),
            order: VecDeque::new(),
        }
    }

    /// How many keys were forgotten early because the set was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// True the first time `key` is offered within its window; records it until `until`.
    pub fn first(&mut self, key: impl Hash, now: Instant, until: Instant) -> bool {
        use std::hash::BuildHasher;
        let key = Key(self.seeds[0].hash_one(&key), self.seeds[1].hash_one(&key));
        let (now, until) = (self.ms(now), self.ms(until));
        // Expired entries leave from the front; a full set, or a queue grown long with
        // stale entries, drops its oldest.
        while self.order.front().is_some_and(|(expiry, _)| *expiry <= now) {
            self.pop_oldest(now);
        }
        while self.entries.len() >= self.capacity || self.order.len() >= self.capacity * 2 {
            match self.pop_oldest(now) {
                Some(true) => self.evicted += 1,
                Some(false) => {}
                None => break,
            }
        }
        match self.entries.entry(key) {
            hash_map::Entry::Occupied(entry) if *entry.get() > now => return false,
            // Expired, its queue entry not reached yet: that one is stale now.
            hash_map::Entry::Occupied(mut entry) => {
                entry.insert(until);
            }
            hash_map::Entry::Vacant(entry) => {
                entry.insert(until);
            }
        }
        self.order.push_back((until, key));
        true
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    /// Pops the oldest queue entry and removes its key unless the key was recorded again
    /// since (another expiry). Whether a queue entry was popped, and whether it was live.
    fn pop_oldest(&mut self, now: u64) -> Option<bool> {
        let (expiry, key) = self.order.pop_front()?;
        Some(match self.entries.entry(key) {
            hash_map::Entry::Occupied(entry) if *entry.get() == expiry => entry.remove() > now,
            _ => false,
        })
    }
}

/// The hash of a [`Key`], which is already one: its first half.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl std::hash::Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // [`Key`] hashes through `write_u64`; anything else is folded in.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
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
    fn a_key_offered_again_after_its_expiry_keeps_its_new_one() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        assert!(seen.first("long", t0, t0 + ms(100)));
        assert!(seen.first("k", t0, t0 + ms(10)));
        // Expired, though its queue entry waits behind "long": new again, until 220.
        assert!(seen.first("k", t0 + ms(20), t0 + ms(220)));
        // "long" and k's first queue entry leave; k's second expiry stands.
        assert!(seen.first("x", t0 + ms(150), t0 + ms(300)));
        assert!(!seen.first("k", t0 + ms(160), t0 + ms(400)));
        assert!(
            seen.first("k", t0 + ms(230), t0 + ms(400)),
            "expired at 220"
        );
    }

    #[test]
    fn parts_of_a_key_tell_keys_apart() {
        let mut seen = Seen::default();
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(1);
        assert!(seen.first(("u", 1u64), t0, later));
        assert!(seen.first(("u", 2u64), t0, later));
        assert!(!seen.first(("u", 1u64), t0, later));
        assert!(seen.first("u", t0, later));
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

    #[test]
    fn a_full_map_forgets_its_oldest_entry_first() {
        let mut seen = Seen::with_capacity(3);
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        for key in ["a", "b", "c", "d"] {
            assert!(seen.first(key, t0, later));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen.evicted(), 1);
        assert!(seen.first("a", t0, later), "a was the oldest: forgotten");
        assert!(!seen.first("d", t0, later), "d is still held");
    }

    #[test]
    fn replacing_one_key_over_and_over_keeps_the_queue_bounded() {
        let mut map = ExpiringMap::with_capacity(4);
        let t0 = Instant::now();
        for i in 0..1000 {
            map.insert("k", i, t0, t0 + Duration::from_secs(60));
        }
        assert!(map.order.len() <= 8, "{}", map.order.len());
        assert_eq!(map.get(&"k", t0), Some(&999));
    }
}
