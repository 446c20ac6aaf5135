//! A map split into independently locked shards, so that no request waits on one global lock:
//! the emulations keep their payments and requests in these.

use std::collections::HashMap;
use std::sync::Mutex;

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
            shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    pub fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, V>> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
        self.shards[(h % self.shards.len() as u64) as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    pub fn clear(&self) {
        for s in &self.shards {
            s.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }
}
