//! Small bounded caches with a time to live. Unwrapped keys live here only
//! briefly: the TTL bounds how long a key disabled elsewhere (another server,
//! or an external manager that revoked it) stays usable, and every value is
//! a zeroizing [`SecretKey`](crate::aead::SecretKey) wiped when evicted.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    map: Mutex<HashMap<K, (V, Instant)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            ttl,
            capacity: capacity.max(1),
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, k: &K) -> Option<V> {
        let mut map = self.map.lock().ok()?;
        match map.get(k) {
            Some((v, at)) if at.elapsed() < self.ttl => Some(v.clone()),
            Some(_) => {
                map.remove(k);
                None
            }
            None => None,
        }
    }

    pub fn put(&self, k: K, v: V) {
        if self.ttl.is_zero() {
            return;
        }
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= self.capacity && !map.contains_key(&k) {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| at.elapsed() < ttl);
            if map.len() >= self.capacity {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(o) = oldest {
                    map.remove(&o);
                }
            }
        }
        map.insert(k, (v, Instant::now()));
    }

    pub fn remove_where(&self, f: impl Fn(&K, &V) -> bool) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|k, (v, _)| !f(k, v));
        }
    }

    pub fn clear(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let c = TtlCache::new(Duration::from_millis(50), 2);
        c.put(1, "a");
        c.put(2, "b");
        c.put(3, "c");
        assert_eq!(c.get(&1), None, "the oldest entry made room");
        assert_eq!(c.get(&3), Some("c"));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get(&3), None);
        let off = TtlCache::new(Duration::ZERO, 2);
        off.put(1, 1);
        assert_eq!(off.get(&1), None);
    }
}
