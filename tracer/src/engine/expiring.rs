//! A bounded map whose entries expire: what was recently closed, by 4-tuple. At most
//! `cap` entries (the oldest goes first, counted in `evicted`), each kept `keep_ns`
//! of the inputs' own clock. Shared by the owners of closed connections
//! ([`crate::pipeline::recent`]) and the server closes of the keep-alive race
//! ([`super::reuse`]).

use std::{collections::VecDeque, hash::Hash};

use super::conn::FxMap;

pub struct ExpiringMap<K, V> {
    map: FxMap<K, (u64, V)>,
    /// Insertion order with times; entries whose key was re-inserted later are stale
    /// and skipped.
    order: VecDeque<(K, u64)>,
    cap: usize,
    keep_ns: u64,
    /// Entries dropped before their time because the map was full.
    pub evicted: u64,
}

impl<K: Copy + Eq + Hash, V> ExpiringMap<K, V> {
    pub fn new(cap: usize, keep_ns: u64) -> Self {
        Self {
            map: FxMap::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
            keep_ns,
            evicted: 0,
        }
    }

    fn live(&self, key: &K, at: u64) -> bool {
        self.map.get(key).is_some_and(|(a, _)| *a == at)
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(key, at)) = self.order.front() {
            if at.saturating_add(self.keep_ns) > now {
                break;
            }
            self.order.pop_front();
            if self.live(&key, at) {
                self.map.remove(&key);
            }
        }
    }

    pub fn insert(&mut self, key: K, at_ns: u64, value: V) {
        self.expire(at_ns);
        if !self.map.contains_key(&key) && self.map.len() >= self.cap {
            // The oldest live entry goes (stale order entries are skipped).
            while let Some((old, at)) = self.order.pop_front() {
                if self.live(&old, at) {
                    self.map.remove(&old);
                    self.evicted += 1;
                    break;
                }
            }
        }
        self.map.insert(key, (at_ns, value));
        self.order.push_back((key, at_ns));
        if self.order.len() > 2 * self.cap {
            let map = &self.map;
            self.order
                .retain(|(k, at)| map.get(k).is_some_and(|(a, _)| a == at));
        }
    }

    /// The live entry for `key` at time `now`.
    pub fn get(&mut self, key: &K, now: u64) -> Option<(u64, &V)> {
        self.expire(now);
        self.map.get(key).map(|(at, v)| (*at, v))
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|(_, v)| v)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
