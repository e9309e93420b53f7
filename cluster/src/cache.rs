//! The node's cache of object byte ranges: a memory tier and an optional disk tier, each
//! bounded in bytes.
//!
//! Objects are never rewritten, so a cached range never goes stale: the tiers only evict,
//! least recently used first, to stay within their bounds. A range is looked for in memory,
//! then on disk, then read from the store; concurrent misses for the same range share one
//! read. A range read from the store, or written by this node's own flush, goes into both
//! tiers. The disk tier is a directory of one file per range, named after the range, so a
//! node started again keeps what it had cached; a file whose length is not its range's is
//! dropped.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use crate::{ClusterError, Result};

/// Default bound of the memory tier.
pub const CACHE_MEMORY_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// Suffix of a disk-tier file being written; such files left by a crash are removed at start.
const PARTIAL_SUFFIX: &str = ".partial";

/// An object's byte range.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct RangeKey {
    pub object: String,
    pub start: u64,
    pub len: u64,
}

impl RangeKey {
    /// The disk-tier file name: the object key with every byte but `[A-Za-z0-9_-]` written as
    /// `%XX`, then `.<start>.<len>`.
    fn file_name(&self) -> String {
        let mut name = String::with_capacity(self.object.len() + 24);
        for byte in self.object.bytes() {
            if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
                name.push(byte as char);
            } else {
                name.push_str(&format!("%{byte:02X}"));
            }
        }
        name.push_str(&format!(".{}.{}", self.start, self.len));
        name
    }

    /// The key a disk-tier file name stands for.
    fn from_file_name(name: &str) -> Option<RangeKey> {
        let mut parts = name.rsplitn(3, '.');
        let len = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let encoded = parts.next()?.as_bytes();
        let mut object = Vec::with_capacity(encoded.len());
        let mut i = 0;
        while i < encoded.len() {
            if encoded[i] == b'%' {
                let hex = std::str::from_utf8(encoded.get(i + 1..i + 3)?).ok()?;
                object.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            } else {
                object.push(encoded[i]);
                i += 1;
            }
        }
        Some(RangeKey {
            object: String::from_utf8(object).ok()?,
            start,
            len,
        })
    }
}

/// What the cache holds and has done, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    pub bytes: u64,
    pub bytes_max: u64,
    /// Bytes of the disk tier's files, with those being written.
    pub disk_bytes: u64,
    /// Bound of the disk tier; 0 when it is off.
    pub disk_bytes_max: u64,
    pub hits: u64,
    pub disk_hits: u64,
    /// Reads of the store: concurrent misses of one range count once.
    pub misses: u64,
}

/// Ranges held within a bound, least recently used evicted first. `T` is what an entry
/// holds: the bytes in memory, whether the file is written on disk.
struct Tier<T> {
    entries: HashMap<RangeKey, (T, u64)>,
    /// Last use → key, oldest first.
    by_use: BTreeMap<u64, RangeKey>,
    tick: u64,
    bytes: u64,
    bytes_max: u64,
}

impl<T> Tier<T> {
    fn new(bytes_max: u64) -> Tier<T> {
        Tier {
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
            tick: 0,
            bytes: 0,
            bytes_max,
        }
    }

    /// The entry of `key`, marked as used now.
    fn touch(&mut self, key: &RangeKey) -> Option<&mut T> {
        self.tick += 1;
        let (value, used) = self.entries.get_mut(key)?;
        let old = std::mem::replace(used, self.tick);
        self.by_use.remove(&old);
        self.by_use.insert(self.tick, key.clone());
        Some(value)
    }

    /// Adds `key` unless it is there or larger than the bound, evicting the least recently
    /// used entries to make room. Returns whether it was added, and the keys evicted.
    fn insert(&mut self, key: RangeKey, value: T) -> (bool, Vec<RangeKey>) {
        let mut evicted = Vec::new();
        if key.len > self.bytes_max || self.entries.contains_key(&key) {
            return (false, evicted);
        }
        while self.bytes + key.len > self.bytes_max {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if self.entries.remove(&oldest).is_some() {
                self.bytes -= oldest.len;
                evicted.push(oldest);
            }
        }
        self.tick += 1;
        self.by_use.insert(self.tick, key.clone());
        self.bytes += key.len;
        self.entries.insert(key, (value, self.tick));
        (true, evicted)
    }

    fn remove(&mut self, key: &RangeKey) -> Option<T> {
        let (value, used) = self.entries.remove(key)?;
        self.by_use.remove(&used);
        self.bytes -= key.len;
        Some(value)
    }
}

struct State {
    memory: Tier<Bytes>,
    /// Whether each range's file is written (false while it is being written).
    disk: Tier<bool>,
    /// Reads of the store under way, shared by everyone missing the same range.
    reading: HashMap<RangeKey, Arc<OnceCell<Bytes>>>,
    hits: u64,
    disk_hits: u64,
    misses: u64,
}

pub(crate) struct RangeCache {
    state: Arc<Mutex<State>>,
    /// The disk tier's directory, when it is on.
    dir: Option<PathBuf>,
}

impl RangeCache {
    /// A cache of `memory_bytes` in memory and, when `disk` names a directory and a bound
    /// above 0, that many bytes of files in it (made if missing; files of an earlier run are
    /// kept within the bound).
    pub fn new(memory_bytes: u64, disk: Option<(&Path, u64)>) -> Result<RangeCache> {
        let mut state = State {
            memory: Tier::new(memory_bytes),
            disk: Tier::new(0),
            reading: HashMap::new(),
            hits: 0,
            disk_hits: 0,
            misses: 0,
        };
        let dir = match disk {
            Some((dir, bytes_max)) if bytes_max > 0 => {
                state.disk.bytes_max = bytes_max;
                let refused = |e: std::io::Error| {
                    ClusterError::Config(format!("cache directory {}: {e}", dir.display()))
                };
                std::fs::create_dir_all(dir).map_err(refused)?;
                for file in load(dir, &mut state.disk).map_err(refused)? {
                    let _ = std::fs::remove_file(file);
                }
                Some(dir.to_path_buf())
            }
            _ => None,
        };
        Ok(RangeCache {
            state: Arc::new(Mutex::new(state)),
            dir,
        })
    }

    pub fn stats(&self) -> CacheStats {
        let s = weir_storage::locks::lock(&self.state);
        CacheStats {
            bytes: s.memory.bytes,
            bytes_max: s.memory.bytes_max,
            disk_bytes: s.disk.bytes,
            disk_bytes_max: s.disk.bytes_max,
            hits: s.hits,
            disk_hits: s.disk_hits,
            misses: s.misses,
        }
    }

    /// The range from the cache, or from `read` (once, however many ask at the same time).
    pub async fn get<F>(&self, key: &RangeKey, read: impl FnOnce() -> F) -> Result<Bytes>
    where
        F: Future<Output = Result<Bytes>>,
    {
        let reading = {
            let mut s = weir_storage::locks::lock(&self.state);
            if let Some(bytes) = s.memory.touch(key) {
                let bytes = bytes.clone();
                s.hits += 1;
                return Ok(bytes);
            }
            s.reading
                .entry(key.clone())
                .or_insert_with(|| Arc::new(OnceCell::new()))
                .clone()
        };
        let result = reading
            .get_or_try_init(|| async {
                if let Some(bytes) = self.read_disk(key).await {
                    weir_storage::locks::lock(&self.state).disk_hits += 1;
                    return Ok(bytes);
                }
                weir_storage::locks::lock(&self.state).misses += 1;
                let read = read().await;
                if let Ok(bytes) = &read
                    && bytes.len() as u64 == key.len
                {
                    self.write_disk(key, bytes);
                }
                read
            })
            .await
            .cloned();
        let mut s = weir_storage::locks::lock(&self.state);
        if s.reading.get(key).is_some_and(|r| Arc::ptr_eq(r, &reading)) {
            s.reading.remove(key);
            if let Ok(bytes) = &result
                && bytes.len() as u64 == key.len
            {
                s.memory.insert(key.clone(), bytes.clone());
            }
        }
        result
    }

    /// Keeps a range this node wrote, as if it had been read.
    pub fn keep(&self, key: RangeKey, bytes: Bytes) {
        if bytes.len() as u64 != key.len {
            return;
        }
        self.write_disk(&key, &bytes);
        weir_storage::locks::lock(&self.state)
            .memory
            .insert(key, bytes);
    }

    /// The range's file, if the disk tier has it written. A file that cannot be read or has
    /// the wrong length is dropped, and the range read from the store instead.
    async fn read_disk(&self, key: &RangeKey) -> Option<Bytes> {
        let dir = self.dir.as_ref()?;
        if !weir_storage::locks::lock(&self.state)
            .disk
            .touch(key)
            .is_some_and(|written| *written)
        {
            return None;
        }
        let path = dir.join(key.file_name());
        let read = tokio::task::spawn_blocking(move || std::fs::read(path)).await;
        match read {
            Ok(Ok(bytes)) if bytes.len() as u64 == key.len => Some(Bytes::from(bytes)),
            _ => {
                self.forget_disk(key);
                None
            }
        }
    }

    /// Writes the range to the disk tier, when it is on, in the background: room is made
    /// first (the files of ranges used least recently are deleted), then the file is written
    /// under a temporary name and renamed. A write that fails gives its room back.
    fn write_disk(&self, key: &RangeKey, bytes: &Bytes) {
        let Some(dir) = self.dir.clone() else {
            return;
        };
        let evicted = {
            let mut s = weir_storage::locks::lock(&self.state);
            let (added, evicted) = s.disk.insert(key.clone(), false);
            if !added {
                return;
            }
            evicted
        };
        let (state, key, bytes) = (self.state.clone(), key.clone(), bytes.clone());
        tokio::task::spawn_blocking(move || {
            for old in evicted {
                let _ = std::fs::remove_file(dir.join(old.file_name()));
            }
            let path = dir.join(key.file_name());
            let partial = dir.join(format!("{}{PARTIAL_SUFFIX}", key.file_name()));
            let written =
                std::fs::write(&partial, &bytes).and_then(|()| std::fs::rename(&partial, &path));
            let leftover = {
                let mut s = weir_storage::locks::lock(&state);
                if written.is_err() {
                    s.disk.remove(&key);
                    Some(partial)
                } else if let Some((done, _)) = s.disk.entries.get_mut(&key) {
                    *done = true;
                    None
                } else {
                    // Evicted while it was written: its room went to another range.
                    Some(path)
                }
            };
            if let Some(file) = leftover {
                let _ = std::fs::remove_file(file);
            }
        });
    }

    fn forget_disk(&self, key: &RangeKey) {
        let removed = weir_storage::locks::lock(&self.state).disk.remove(key);
        if let (Some(_), Some(dir)) = (removed, &self.dir) {
            let _ = std::fs::remove_file(dir.join(key.file_name()));
        }
    }
}

/// Takes the files an earlier run left in `dir` into `tier`, oldest written first so the
/// newest are kept within the bound. Returns the files to delete: partial writes, names that
/// are not ranges, lengths that are not their range's, and what the bound evicts.
fn load(dir: &Path, tier: &mut Tier<bool>) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut gone = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let meta = entry.metadata()?;
        let key = entry
            .file_name()
            .to_str()
            .filter(|name| !name.ends_with(PARTIAL_SUFFIX))
            .and_then(RangeKey::from_file_name);
        match key {
            Some(key) if meta.is_file() && meta.len() == key.len => {
                found.push((meta.modified().ok(), key));
            }
            _ => gone.push(path),
        }
    }
    found.sort_by_key(|(modified, _)| *modified);
    for (_, key) in found {
        let name = key.file_name();
        let (added, evicted) = tier.insert(key, true);
        if !added {
            gone.push(dir.join(name));
        }
        gone.extend(evicted.iter().map(|k| dir.join(k.file_name())));
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_misses_of_one_range_read_the_store_once() {
        let cache = RangeCache::new(1024, None).expect("a cache");
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
        let cache = RangeCache::new(2, None).expect("a cache");
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

    fn range(object: &str, len: u64) -> RangeKey {
        RangeKey {
            object: object.to_string(),
            start: 7,
            len,
        }
    }

    /// Waits until the disk tier has the range's file written.
    async fn written(cache: &RangeCache, key: &RangeKey) {
        for _ in 0..500 {
            let done = weir_storage::locks::lock(&cache.state)
                .disk
                .entries
                .get(key)
                .is_some_and(|(written, _)| *written);
            if done {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{key:?} never written to disk");
    }

    /// The names of the files in `dir`, sorted.
    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("the dir")
            .map(|e| {
                e.expect("a file")
                    .file_name()
                    .into_string()
                    .expect("a name")
            })
            .collect();
        names.sort();
        names
    }

    async fn never() -> Result<Bytes> {
        panic!("read from the store, not the disk tier")
    }

    async fn from_store(bytes: &'static [u8]) -> Result<Bytes> {
        Ok(Bytes::from_static(bytes))
    }

    #[tokio::test]
    async fn the_disk_tier_keeps_ranges_memory_cannot_within_its_own_bound() {
        let dir = tempfile::tempdir().expect("a dir");
        // No room in memory; room for three 3-byte ranges on disk.
        let cache = RangeCache::new(0, Some((dir.path(), 10))).expect("a cache");
        let keys: Vec<RangeKey> = (0..4).map(|i| range(&format!("data/n1/{i}"), 3)).collect();
        assert_eq!(
            cache
                .get(&keys[0], || from_store(b"abc"))
                .await
                .expect("read"),
            Bytes::from_static(b"abc")
        );
        written(&cache, &keys[0]).await;
        let again = cache.get(&keys[0], never).await.expect("read");
        assert_eq!(again, Bytes::from_static(b"abc"));
        let stats = cache.stats();
        assert_eq!((stats.misses, stats.disk_hits, stats.hits), (1, 1, 0));
        assert_eq!((stats.disk_bytes, stats.disk_bytes_max), (3, 10));

        // Three more ranges: the least recently used one's file goes.
        for key in &keys[1..] {
            cache.get(key, || from_store(b"xyz")).await.expect("read");
            written(&cache, key).await;
        }
        assert_eq!(cache.stats().disk_bytes, 9);
        let files = names(dir.path());
        let mut expected: Vec<String> = keys[1..].iter().map(RangeKey::file_name).collect();
        expected.sort();
        assert_eq!(files, expected);
        assert_eq!(files[0], "data%2Fn1%2F1.7.3");
        assert_eq!(RangeKey::from_file_name(&files[0]), Some(keys[1].clone()));
        cache
            .get(&keys[0], || from_store(b"abc"))
            .await
            .expect("read");
        assert_eq!(cache.stats().misses, 5);
    }

    #[tokio::test]
    async fn a_node_started_again_keeps_its_disk_tier_and_drops_bad_files() {
        let dir = tempfile::tempdir().expect("a dir");
        let (kept, short, changed) = (range("a", 3), range("b", 3), range("c", 3));
        {
            let cache = RangeCache::new(0, Some((dir.path(), 100))).expect("a cache");
            for key in [&kept, &short, &changed] {
                cache.keep(key.clone(), Bytes::from_static(b"abc"));
                written(&cache, key).await;
            }
        }
        // A crash left a partial write and a file cut short; a stranger's file is there too.
        std::fs::write(dir.path().join("d.7.3.partial"), b"ab").expect("write");
        std::fs::write(dir.path().join(short.file_name()), b"ab").expect("write");
        std::fs::write(dir.path().join("notes.txt"), b"hello").expect("write");

        let cache = RangeCache::new(0, Some((dir.path(), 100))).expect("a cache");
        assert_eq!(cache.stats().disk_bytes, 6, "two whole files kept");
        let files = names(dir.path());
        assert_eq!(files, [kept.file_name(), changed.file_name()]);
        let read = cache.get(&kept, never).await.expect("read");
        assert_eq!(read, Bytes::from_static(b"abc"));

        // A file that changed length since is dropped, and the range read from the store.
        std::fs::write(dir.path().join(changed.file_name()), b"abcd").expect("write");
        let read = cache
            .get(&changed, || from_store(b"abc"))
            .await
            .expect("read");
        assert_eq!(read, Bytes::from_static(b"abc"));
        let stats = cache.stats();
        assert_eq!((stats.disk_hits, stats.misses), (1, 1));
    }
}
