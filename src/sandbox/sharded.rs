//! Maps split into independently locked shards, so that no request waits on one global lock:
//! the emulations keep their payments and requests in these. `ShardedIds` is for maps with a
//! million keys that are mostly UUIDs (Paysend's invoiceIds and paymentIds): those are kept as
//! their 16 bytes, any other key as its text.

use super::compact;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

const SHARDS: usize = 32;

fn index(key: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    (h % SHARDS as u64) as usize
}

/// A map split into independently locked shards: no global lock on the request path.
pub struct Sharded<V> {
    shards: Vec<Mutex<HashMap<String, V>>>,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> Sharded<V> {
    pub fn new() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn shard(&self, key: &str) -> MutexGuard<'_, HashMap<String, V>> {
        self.shards[index(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

/// A map by id: a UUID key as its 16 bytes, any other as its text.
///
/// UUID keys live in a sorted array, searched by bisection, and a small hash map of the latest
/// ones that is merged into the array when it grows past a sixteenth of it: a hash table holds
/// between 1.14 and 2.29 times its entries' bytes (its size is a power of two, at most 7/8
/// full) — for a million payments up to ~100 bytes more per entry than an array cut to size.
/// Each merge moves the array once, so an insert costs ~16 moves of an entry, amortised.
pub struct IdMap<V> {
    sorted: Vec<([u8; 16], V)>,
    recent: HashMap<[u8; 16], V>,
    texts: HashMap<Box<str>, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            sorted: Vec::new(),
            recent: HashMap::new(),
            texts: HashMap::new(),
        }
    }
}

impl<V> IdMap<V> {
    /// `recent` is merged when it holds this many, or a sixteenth of `sorted` if more.
    const MERGE_AT: usize = 256;

    pub fn get(&self, key: &str) -> Option<&V> {
        match compact::uuid(key) {
            Some(b) => self.recent.get(&b).or_else(|| {
                self.sorted
                    .binary_search_by(|(k, _)| k.cmp(&b))
                    .ok()
                    .map(|i| &self.sorted[i].1)
            }),
            None => self.texts.get(key),
        }
    }

    /// Inserts or replaces.
    pub fn insert(&mut self, key: &str, v: V) {
        let Some(b) = compact::uuid(key) else {
            self.texts.insert(key.into(), v);
            return;
        };
        self.recent.insert(b, v);
        if self.recent.len() >= Self::MERGE_AT.max(self.sorted.len() / 16) {
            self.merge();
        }
    }

    /// `recent` into `sorted` (a key in both takes the recent value).
    fn merge(&mut self) {
        let mut recent: Vec<([u8; 16], V)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|e| e.0);
        let old = std::mem::take(&mut self.sorted);
        let mut merged = Vec::with_capacity(old.len() + recent.len());
        let mut old = old.into_iter().peekable();
        for (k, v) in recent {
            while let Some(o) = old.next_if(|(ok, _)| *ok < k) {
                merged.push(o);
            }
            old.next_if(|(ok, _)| *ok == k);
            merged.push((k, v));
        }
        merged.extend(old);
        self.sorted = merged;
    }

    pub fn len(&self) -> usize {
        let fresh = self
            .recent
            .keys()
            .filter(|k| self.sorted.binary_search_by(|(s, _)| s.cmp(k)).is_err());
        self.sorted.len() + fresh.count() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        *self = IdMap::default();
    }
}

/// [`IdMap`]s in independently locked shards, picked by the key's text.
pub struct ShardedIds<V> {
    shards: Vec<Mutex<IdMap<V>>>,
}

impl<V> Default for ShardedIds<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> ShardedIds<V> {
    pub fn new() -> Self {
        ShardedIds {
            shards: (0..SHARDS).map(|_| Mutex::new(IdMap::default())).collect(),
        }
    }

    pub fn shard(&self, key: &str) -> MutexGuard<'_, IdMap<V>> {
        self.shards[index(key)]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uuid_key_and_a_text_key_are_both_found_by_their_text() {
        let m: ShardedIds<u32> = ShardedIds::new();
        let key = crate::keys::task_key("k", "n");
        m.shard(&key).insert(&key, 1);
        m.shard("inv-1").insert("inv-1", 2);
        assert_eq!(m.shard(&key).get(&key), Some(&1));
        assert_eq!(m.shard("inv-1").get("inv-1"), Some(&2));
        assert_eq!(m.shard(&key.to_uppercase()).get(&key.to_uppercase()), None);
        m.clear();
        assert_eq!(m.shard(&key).get(&key), None);
    }

    #[test]
    fn every_key_is_found_with_its_latest_value_across_merges() {
        let mut m: IdMap<usize> = IdMap::default();
        let keys: Vec<String> = (0..3000)
            .map(|i| crate::keys::task_key("k", &i.to_string()))
            .collect();
        for (i, k) in keys.iter().enumerate() {
            m.insert(k, i);
        }
        assert!(m.sorted.len() > 2000, "merged: {}", m.sorted.len());
        for (i, k) in keys.iter().enumerate().step_by(7) {
            m.insert(k, i + 10_000);
        }
        m.merge();
        assert_eq!(m.len(), 3000, "a replaced key is still one key");
        for (i, k) in keys.iter().enumerate() {
            let want = if i % 7 == 0 { i + 10_000 } else { i };
            assert_eq!(m.get(k), Some(&want), "{k}");
        }
        assert_eq!(m.get(&crate::keys::task_key("k", "none")), None);
    }
}
