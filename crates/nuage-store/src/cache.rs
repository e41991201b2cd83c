//! A small in-process read cache for rows that every request reads and few
//! requests change (tokens, role inputs, projects).
//!
//! Each entry is stamped with the time it was read and an epoch counter
//! taken *before* the read; a change through this process bumps the epoch
//! after its commit, so an entry read before the change is never served
//! again. Other processes sharing a PostgreSQL database are seen within
//! [`CACHE_TTL`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a cached row may be reused when another process could have
/// changed it.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 50_000;

/// Entries stamped with when and at which epoch they were read.
pub struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (Instant, u64, V)>>,
}

impl<K: std::hash::Hash + Eq, V: Clone> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: std::hash::Hash + Eq, V: Clone> TtlCache<K, V> {
    pub fn new() -> Self {
        TtlCache {
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, k: &K, epoch: u64) -> Option<V> {
        let map = self.map.lock().ok()?;
        map.get(k)
            .filter(|(at, e, _)| *e == epoch && at.elapsed() < CACHE_TTL)
            .map(|(_, _, v)| v.clone())
    }

    /// Stores `v`, read at `epoch` (which the caller took before reading).
    pub fn put(&self, k: K, epoch: u64, v: V) {
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= CACHE_MAX {
                map.clear();
            }
            map.insert(k, (Instant::now(), epoch, v));
        }
    }

    pub fn update(&self, k: &K, f: impl FnOnce(&mut V)) {
        if let Ok(mut map) = self.map.lock() {
            if let Some((_, _, v)) = map.get_mut(k) {
                f(v);
            }
        }
    }
}

/// A change counter: read it before reading rows to cache, bump it after
/// committing a change to them.
#[derive(Default, Debug)]
pub struct Epoch(AtomicU64);

impl Epoch {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub fn bump(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}
