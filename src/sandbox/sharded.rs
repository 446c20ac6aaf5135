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
pub struct IdMap<V> {
    uuids: HashMap<[u8; 16], V>,
    texts: HashMap<Box<str>, V>,
}

impl<V> Default for IdMap<V> {
    fn default() -> Self {
        IdMap {
            uuids: HashMap::new(),
            texts: HashMap::new(),
        }
    }
}

impl<V> IdMap<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        match compact::uuid(key) {
            Some(b) => self.uuids.get(&b),
            None => self.texts.get(key),
        }
    }

    pub fn insert(&mut self, key: &str, v: V) {
        match compact::uuid(key) {
            Some(b) => self.uuids.insert(b, v),
            None => self.texts.insert(key.into(), v),
        };
    }

    pub fn len(&self) -> usize {
        self.uuids.len() + self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.uuids = HashMap::new();
        self.texts = HashMap::new();
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
}
