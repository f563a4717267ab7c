//! A bounded map whose entries expire: what was recently closed, by 4-tuple. At most
//! `cap` entries (the oldest goes first, counted in `evicted`), each kept `keep_ns`
//! of the inputs' own clock. Shared by the owners of closed connections
//! ([`crate::pipeline::recent`]) and the server closes of the keep-alive race
//! ([`super::reuse`]).
//!
//! Every closed connection is inserted and almost none is ever looked up (only a
//! reset or an error on the same 4-tuple asks), so an insert is a push on a
//! time-ordered ring, no hashing; the index by key is built for the entries inserted
//! since, at the first lookup that needs them.

use std::{collections::VecDeque, hash::Hash};

use super::conn::FxMap;

pub struct ExpiringMap<K, V> {
    /// Entries oldest first: key, time, value (`None` once removed).
    ring: VecDeque<(K, u64, Option<V>)>,
    /// Sequence number of `ring[0]`.
    front: u64,
    /// Key -> sequence number of its newest entry, for the entries before `indexed`.
    index: FxMap<K, u64>,
    indexed: u64,
    /// Entries that hold a value.
    values: usize,
    cap: usize,
    keep_ns: u64,
    /// Entries dropped before their time because the map was full (an entry a newer
    /// one for the same key had replaced included).
    pub evicted: u64,
}

impl<K: Copy + Eq + Hash, V> ExpiringMap<K, V> {
    pub fn new(cap: usize, keep_ns: u64) -> Self {
        Self {
            ring: VecDeque::new(),
            front: 0,
            index: FxMap::default(),
            indexed: 0,
            values: 0,
            cap: cap.max(1),
            keep_ns,
            evicted: 0,
        }
    }

    /// Drops the oldest entry; whether it held a value.
    fn pop_front(&mut self) -> bool {
        let Some((key, _, value)) = self.ring.pop_front() else {
            return false;
        };
        let seq = self.front;
        self.front += 1;
        if seq < self.indexed && self.index.get(&key) == Some(&seq) {
            self.index.remove(&key);
        }
        if value.is_some() {
            self.values -= 1;
        }
        value.is_some()
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(_, at, _)) = self.ring.front() {
            if at.saturating_add(self.keep_ns) > now {
                break;
            }
            self.pop_front();
        }
    }

    pub fn insert(&mut self, key: K, at_ns: u64, value: V) {
        self.expire(at_ns);
        if self.ring.len() >= self.cap && self.pop_front() {
            self.evicted += 1;
        }
        self.ring.push_back((key, at_ns, Some(value)));
        self.values += 1;
    }

    /// Indexes the entries inserted since the last lookup.
    fn catch_up(&mut self) {
        let end = self.front + self.ring.len() as u64;
        for seq in self.indexed.max(self.front)..end {
            let at = usize::try_from(seq - self.front).unwrap_or(usize::MAX);
            if let Some((key, _, Some(_))) = self.ring.get(at) {
                self.index.insert(*key, seq);
            }
        }
        self.indexed = end;
    }

    /// The position in the ring of `key`'s newest entry.
    fn position(&mut self, key: &K) -> Option<usize> {
        self.catch_up();
        let seq = *self.index.get(key)?;
        usize::try_from(seq - self.front).ok()
    }

    /// The live entry for `key` at time `now`.
    pub fn get(&mut self, key: &K, now: u64) -> Option<(u64, &V)> {
        self.expire(now);
        let at = self.position(key)?;
        let (_, t, value) = self.ring.get(at)?;
        value.as_ref().map(|v| (*t, v))
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let at = self.position(key)?;
        self.index.remove(key);
        let value = self.ring.get_mut(at)?.2.take();
        if value.is_some() {
            self.values -= 1;
        }
        value
    }

    /// Entries that hold a value.
    pub fn len(&self) -> usize {
        self.values
    }

    pub fn is_empty(&self) -> bool {
        self.values == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_entry_of_a_key_is_found_until_it_expires() {
        let mut m = ExpiringMap::new(8, 100);
        m.insert(1, 0, "a");
        m.insert(2, 10, "b");
        m.insert(1, 20, "c");
        assert_eq!(m.get(&1, 30), Some((20, &"c")));
        assert_eq!(m.get(&2, 30), Some((10, &"b")));
        // Entries inserted after a lookup are found by the next one.
        m.insert(2, 40, "d");
        assert_eq!(m.get(&2, 50), Some((40, &"d")));
        assert_eq!(m.get(&1, 119), Some((20, &"c")));
        assert_eq!(m.get(&1, 120), None, "kept 100 ns");
        assert_eq!(m.get(&3, 120), None);
    }

    #[test]
    fn a_removed_entry_is_gone_and_older_ones_of_its_key_do_not_return() {
        let mut m = ExpiringMap::new(8, 100);
        m.insert(1, 0, "old");
        m.insert(1, 5, "new");
        assert_eq!(m.len(), 2);
        assert_eq!(m.remove(&1), Some("new"));
        assert_eq!(m.get(&1, 6), None);
        assert_eq!(m.remove(&1), None);
        assert_eq!(m.len(), 1, "the replaced entry waits for its time");
        m.insert(1, 7, "again");
        assert_eq!(m.get(&1, 8), Some((7, &"again")));
    }

    #[test]
    fn a_full_map_drops_its_oldest_and_counts_it() {
        let mut m = ExpiringMap::new(3, 1_000);
        for k in 0..5u32 {
            m.insert(k, u64::from(k), k);
        }
        assert_eq!(m.evicted, 2);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&0, 10), None);
        assert_eq!(m.get(&1, 10), None);
        assert_eq!(m.get(&4, 10), Some((4, &4)));
        // Evicting an indexed entry takes it out of the index too.
        for k in 5..8u32 {
            m.insert(k, u64::from(k), k);
        }
        assert_eq!(m.get(&4, 10), None);
        assert_eq!(m.get(&7, 10), Some((7, &7)));
        // Expiry is no loss.
        let before = m.evicted;
        m.insert(9, 5_000, 9);
        assert_eq!(m.evicted, before);
        assert_eq!(m.len(), 1);
    }
}
