//! The node's cache of object byte ranges, bounded in bytes.
//!
//! Objects are never rewritten, so a cached range never goes stale: the cache only evicts,
//! least recently used first, to stay within `cache_memory_bytes`. Concurrent misses for the
//! same range share one read of the store.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::Result;

/// Default bound of the range cache.
pub const CACHE_MEMORY_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// An object's byte range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RangeKey {
    pub object: String,
    pub start: u64,
    pub len: u64,
}

/// What the cache holds and has done, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub bytes: u64,
    pub bytes_max: u64,
    pub hits: u64,
    /// Reads of the store: concurrent misses of one range count once.
    pub misses: u64,
}

struct Entry {
    bytes: Bytes,
    used: u64,
}

#[derive(Default)]
struct State {
    entries: HashMap<RangeKey, Entry>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, RangeKey>,
    tick: u64,
    /// Reads of the store under way, shared by everyone missing the same range.
    reading: HashMap<RangeKey, Arc<OnceCell<Bytes>>>,
    stats: CacheStats,
}

pub(crate) struct RangeCache {
    state: Mutex<State>,
}

impl RangeCache {
    pub fn new(bytes_max: u64) -> RangeCache {
        let mut state = State::default();
        state.stats.bytes_max = bytes_max;
        RangeCache {
            state: Mutex::new(state),
        }
    }

    pub fn stats(&self) -> CacheStats {
        weir_storage::locks::lock(&self.state).stats
    }

    /// The range from the cache, or from `read` (once, however many ask at the same time).
    pub async fn get<F>(&self, key: &RangeKey, read: impl FnOnce() -> F) -> Result<Bytes>
    where
        F: Future<Output = Result<Bytes>>,
    {
        let reading = {
            let mut s = weir_storage::locks::lock(&self.state);
            s.tick += 1;
            let tick = s.tick;
            if let Some(entry) = s.entries.get_mut(key) {
                let old = std::mem::replace(&mut entry.used, tick);
                let bytes = entry.bytes.clone();
                s.by_use.remove(&old);
                s.by_use.insert(tick, key.clone());
                s.stats.hits += 1;
                return Ok(bytes);
            }
            s.reading
                .entry(key.clone())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let result = reading
            .get_or_try_init(|| {
                weir_storage::locks::lock(&self.state).stats.misses += 1;
                read()
            })
            .await
            .cloned();
        let mut s = weir_storage::locks::lock(&self.state);
        if s.reading.get(key).is_some_and(|r| Arc::ptr_eq(r, &reading)) {
            s.reading.remove(key);
            if let Ok(bytes) = &result {
                s.insert(key.clone(), bytes.clone());
            }
        }
        result
    }
}

impl State {
    fn insert(&mut self, key: RangeKey, bytes: Bytes) {
        let len = bytes.len() as u64;
        if len > self.stats.bytes_max || self.entries.contains_key(&key) {
            return;
        }
        while self.stats.bytes + len > self.stats.bytes_max {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.stats.bytes -= evicted.bytes.len() as u64;
            }
        }
        self.tick += 1;
        self.by_use.insert(self.tick, key.clone());
        self.entries.insert(
            key,
            Entry {
                bytes,
                used: self.tick,
            },
        );
        self.stats.bytes += len;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_of_one_range_read_the_store_once() {
        let cache = RangeCache::new(1024);
        let key = RangeKey {
            object: "data/n1/a".to_string(),
            start: 0,
            len: 3,
        };
        let read = || async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Bytes::from_static(b"abc"))
        };
        let (a, b, c) = tokio::join!(
            cache.get(&key, read),
            cache.get(&key, read),
            cache.get(&key, read)
        );
        for got in [a, b, c] {
            assert_eq!(got.expect("read"), Bytes::from_static(b"abc"));
        }
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.hits, stats.bytes), (1, 0, 3));
        assert_eq!(
            cache.get(&key, read).await.expect("hit"),
            Bytes::from_static(b"abc")
        );
        assert_eq!(cache.stats().hits, 1);
    }

    #[tokio::test]
    async fn a_range_larger_than_the_cache_is_read_but_not_kept() {
        let cache = RangeCache::new(2);
        let key = RangeKey {
            object: "data/n1/a".to_string(),
            start: 0,
            len: 3,
        };
        let read = || async { Ok(Bytes::from_static(b"abc")) };
        assert_eq!(cache.get(&key, read).await.expect("read").len(), 3);
        assert_eq!(cache.get(&key, read).await.expect("read").len(), 3);
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.hits, stats.bytes), (2, 0, 0));
    }
}
