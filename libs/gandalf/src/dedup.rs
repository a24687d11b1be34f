//! Bounded sets and maps whose entries expire. [`Seen`], the dedup of envelope uuids: a
//! fixed table, one cache line per offer. [`ExpiringMap`], the record of which connection
//! a relayed message came from: pruned in amortised constant time per insert, bounded in
//! count, the oldest insertion going first when full (counted through
//! [`ExpiringMap::evicted`]). A flood grows neither without limit.

use std::{
    collections::{HashMap, VecDeque, hash_map},
    hash::Hash,
    time::Instant,
};

/// The maps' hasher: seeded per map (a peer cannot aim its uuids at one bucket) and
/// several times cheaper than SipHash on the 16-byte keys every message brings.
type Hasher = foldhash::fast::RandomState;

/// How many entries an [`ExpiringMap`] or a [`Seen`] holds by default: at 100,000 messages
/// a second with a 5 s window, the window of every message.
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

/// How many ways a [`Seen`] bucket has: four tags and four expiries fill one cache line.
const WAYS: usize = 4;
/// The `u64`s of one bucket: its tags, then their expiries.
const BUCKET: usize = 2 * WAYS;

/// Keys seen recently, each until its own expiry: the per-message dedup. A
/// set-associative table of fixed size, so that an offer is one cache line read and
/// written, with no expiry queue and nothing to grow: at a high message rate the set holds
/// every message of the last timeout, and its lookups are the cache misses of the routing
/// path. A key is 128 bits of two seeded hashes of what was offered (the first picks the
/// bucket, the second is the tag), so a peer cannot aim its uuids at one bucket nor, without
/// the seeds, make two keys collide.
///
/// Bounded in bytes: the table holds at least twice `capacity` slots of 16 bytes, rounded
/// up to a power of two of buckets (16 MiB for the default capacity), allocated zeroed, so
/// the pages an idle set never touches cost nothing. When all the
/// slots of a key's bucket are live, the one that expires first is forgotten (counted by
/// [`Seen::evicted`]); with `capacity` live keys that is at most about 4% of them (2% at
/// the usual load), and what is forgotten is the key closest to leaving anyway.
#[derive(Debug)]
pub struct Seen {
    evicted: u64,
    seeds: [foldhash::fast::RandomState; 2],
    /// Expiries are kept as milliseconds after this, plus one: zero means a free slot.
    epoch: Instant,
    /// The buckets, each [`BUCKET`] words: `[tag; WAYS]` then `[expiry; WAYS]`. A few
    /// words more than needed, so that the buckets can start on a cache line.
    words: Vec<u64>,
    /// Where the first bucket starts in `words`: the first word on a 64-byte boundary.
    start: usize,
    /// 64 minus log2 of the number of buckets (a power of two): a bucket is the top bits
    /// of the first hash times an odd constant, which mixes every bit of it into them.
    shift: u32,
}

impl Default for Seen {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }
}

impl Seen {
    /// Room for about `capacity` live keys (at least one bucket).
    pub fn with_capacity(capacity: usize) -> Self {
        let buckets = (capacity.saturating_mul(2) / WAYS)
            .max(1)
            .next_power_of_two();
        // Zeroed words come from a zeroed allocation: untouched pages stay unmapped.
        let words = vec![0u64; buckets * BUCKET + BUCKET - 1];
        let start = words.as_ptr().align_offset(64).min(BUCKET - 1);
        Self {
            evicted: 0,
            seeds: Default::default(),
            epoch: Instant::now(),
            words,
            start,
            shift: 64 - buckets.trailing_zeros(),
        }
    }

    /// How many live keys were forgotten early because their bucket was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// True the first time `key` is offered within its window; records it until `until`.
    pub fn first(&mut self, key: impl Hash, now: Instant, until: Instant) -> bool {
        use std::hash::BuildHasher;
        let (index, tag) = (self.seeds[0].hash_one(&key), self.seeds[1].hash_one(&key));
        let (now, until) = (self.ms(now), self.ms(until));
        let index = index
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .checked_shr(self.shift)
            .unwrap_or(0);
        let index = usize::try_from(index).unwrap_or(0);
        let at = self.start + index * BUCKET;
        let (tags, expiries) = self.words[at..at + BUCKET].split_at_mut(WAYS);
        let mut victim = 0;
        for way in 0..WAYS {
            if expiries[way] > now && tags[way] == tag {
                return false;
            }
            if expiries[way] < expiries[victim] {
                victim = way;
            }
        }
        if expiries[victim] > now {
            self.evicted += 1;
        }
        tags[victim] = tag;
        expiries[victim] = until;
        true
    }

    /// How many keys are live at `now`: a scan of the whole table, for tests and
    /// diagnostics, not for the routing path.
    pub fn live(&self, now: Instant) -> usize {
        let now = self.ms(now);
        self.words[self.start..]
            .chunks_exact(BUCKET)
            .flat_map(|bucket| &bucket[WAYS..])
            .filter(|expiry| **expiry > now)
            .count()
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX - 1)
            + 1
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
        assert_eq!(seen.live(t0), 10_000);
        assert_eq!(seen.evicted(), 0, "far below the capacity");
        let later = t0 + Duration::from_millis(20);
        assert_eq!(seen.live(later), 0);
        for i in 0..10_000 {
            assert!(seen.first(i, later, later + Duration::from_millis(10)));
        }
        assert_eq!(seen.evicted(), 0, "expired slots are free again");
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
    fn a_full_bucket_forgets_the_key_that_expires_first() {
        // Capacity 1: one bucket, so every key lands in it.
        let mut seen = Seen::with_capacity(1);
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        for (key, expiry) in [("a", 40), ("b", 10), ("c", 30), ("d", 20)] {
            assert!(seen.first(key, t0, at(expiry)));
        }
        assert_eq!(seen.evicted(), 0);
        assert!(seen.first("e", t0, at(50)));
        assert_eq!(seen.evicted(), 1);
        assert!(!seen.first("a", t0, at(60)), "a is still held");
        assert!(!seen.first("e", t0, at(60)), "e is held");
        assert!(seen.first("b", t0, at(60)), "b expired first: forgotten");
        assert_eq!(seen.evicted(), 2, "b came back in place of d");
        assert_eq!(seen.live(t0), 4);
    }

    #[test]
    fn the_table_is_bounded_in_bytes_and_holds_its_capacity() {
        let capacity = 100_000;
        let mut seen = Seen::with_capacity(capacity);
        assert!(
            seen.words.len() * 8 <= capacity * 2 * 16 * 2,
            "{} words",
            seen.words.len()
        );
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(60);
        for i in 0..capacity {
            assert!(seen.first(i, t0, later));
        }
        // Twice the slots the capacity asks for: at the limit a few buckets overflow.
        // (at this capacity the table has 262,144 slots: ~2% of the keys are forgotten)
        let lost = seen.evicted();
        assert!(
            lost < capacity as u64 / 25,
            "{lost} of {capacity} forgotten at the limit"
        );
        let held = (0..capacity).filter(|i| !seen.first(i, t0, later)).count();
        assert!(
            held > capacity * 95 / 100,
            "{held} of {capacity} still held"
        );
        // A flood far past the capacity stays in the same table and forgets the oldest
        // keys first (those that expire first): the newest are held, but for the rare
        // bucket that five of them land in.
        let words = seen.words.len();
        let until = |i: usize| later + Duration::from_millis(i as u64);
        for i in capacity..capacity * 10 {
            seen.first(i, t0, until(i));
        }
        assert_eq!(seen.words.len(), words);
        let newest = (capacity * 10 - 10_000..capacity * 10)
            .filter(|i| !seen.first(i, t0, until(*i)))
            .count();
        assert!(newest > 9_990, "{newest} of the newest 10,000 held");
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
