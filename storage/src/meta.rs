//! The metadata store: sled under `<data-dir>/meta`, with typed trees.
//!
//! Each tree maps string keys to JSON-encoded values of one type. This crate owns the `topics`
//! tree; later layers open their own (group offsets, producer ids, plugins, pipelines) with
//! [`MetaStore::tree`]. Every write is flushed before it returns: metadata changes are rare and
//! must survive a crash as soon as they are acknowledged.

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Result, StorageError};

/// A topic as registered in the metadata store.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicMeta {
    pub name: String,
    /// Random 16-byte id, as Kafka's topic ids.
    pub id: [u8; 16],
    pub partitions: u32,
    /// Topic configs set explicitly (Kafka keys); defaults are not stored.
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
}

/// Where a tree's entries live: JSON-encoded values under string keys. sled on a lone node
/// ([`MetaStore::tree`]); a cluster keeps them in its database, so every node sees one tree.
pub trait TreeBackend: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Stores `value` under `key`; when `durable`, it is on disk before this returns.
    fn insert(&self, key: &str, value: Vec<u8>, durable: bool) -> Result<()>;
    /// Removes `key`; returns whether it was there. `durable` as for [`TreeBackend::insert`].
    fn remove(&self, key: &str, durable: bool) -> Result<bool>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// How many entries the tree holds.
    fn count(&self) -> Result<usize>;
    /// Stores every entry durably, all or none, unless the tree would then hold more than `max`
    /// entries (a key already there counts once), or a key is there and `present` says to
    /// refuse. The checks and the write are one step, so callers racing, on this node or on
    /// other nodes of a cluster, never pass `max` together, nor both make one new key.
    fn insert_within(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        max: usize,
        present: Present,
    ) -> Result<Bounded>;
    /// Stores `value` under `key` durably if the key still holds `expected` (`None`: it is
    /// absent), and answers whether it did. Of callers racing from the same `expected`, on this
    /// node or on other nodes of a cluster, one succeeds.
    fn compare_and_set(&self, key: &str, expected: Option<&[u8]>, value: Vec<u8>) -> Result<bool>;
}

/// Tries of [`Tree::update`] before it gives up on a key other writers keep changing.
pub const UPDATE_TRIES_MAX: usize = 16;

/// Opens the backends of trees by name: a node's [`MetaStore`], or a cluster's database.
pub trait TreeSource: Send + Sync {
    fn backend(&self, name: &str) -> Result<Arc<dyn TreeBackend>>;
}

/// What [`TreeBackend::insert_within`] does with a key the tree holds already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Present {
    /// Its value is replaced.
    Replace,
    /// Nothing is stored: the key was made first, maybe by another node.
    Refuse,
}

/// What [`TreeBackend::insert_within`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bounded {
    Stored,
    /// Nothing was stored: the tree held `existing` entries, and the new keys would have
    /// passed the bound.
    Full {
        existing: usize,
    },
    /// Nothing was stored: the tree holds `key` already, and [`Present::Refuse`] was asked.
    Present {
        key: String,
    },
}

/// Why [`TreeBackend::insert_within`] stores nothing, if it does not: `keys` are the keys of
/// its entries, `held` those of them the tree holds, among its `existing` entries.
pub fn refused(
    keys: &[&str],
    held: &[String],
    existing: usize,
    max: usize,
    present: Present,
) -> Option<Bounded> {
    if let (Present::Refuse, Some(key)) = (present, held.first()) {
        return Some(Bounded::Present { key: key.clone() });
    }
    let held: BTreeSet<&str> = held.iter().map(String::as_str).collect();
    let new: BTreeSet<&str> = keys
        .iter()
        .copied()
        .filter(|key| !held.contains(key))
        .collect();
    (existing + new.len() > max).then_some(Bounded::Full { existing })
}

/// A tree of values of type `V` under string keys.
pub struct Tree<V> {
    name: String,
    backend: Arc<dyn TreeBackend>,
    _value: PhantomData<fn() -> V>,
}

impl<V> Clone for Tree<V> {
    fn clone(&self) -> Self {
        Tree {
            name: self.name.clone(),
            backend: self.backend.clone(),
            _value: PhantomData,
        }
    }
}

impl<V: Serialize + DeserializeOwned> Tree<V> {
    /// The tree `name` kept by `backend`.
    pub fn on(name: &str, backend: Arc<dyn TreeBackend>) -> Tree<V> {
        Tree {
            name: name.to_string(),
            backend,
            _value: PhantomData,
        }
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<V> {
        serde_json::from_slice(bytes).map_err(|source| StorageError::MetaValue {
            tree: self.name.clone(),
            key: key.to_string(),
            source,
        })
    }

    fn encode(&self, key: &str, value: &V) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|source| StorageError::MetaValue {
            tree: self.name.clone(),
            key: key.to_string(),
            source,
        })
    }

    pub fn get(&self, key: &str) -> Result<Option<V>> {
        match self.backend.get(key)? {
            Some(bytes) => self.decode(key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Reads `key`, lets `change` make its new value from the value read, and stores that
    /// durably unless another writer (on this node or another node of a cluster) changed the key
    /// in between; then it reads and tries again, at most [`UPDATE_TRIES_MAX`] times. `change`
    /// answers the new value, or `None` to leave the key as it is, and what `update` answers.
    pub fn update<T, E: From<StorageError>>(
        &self,
        key: &str,
        mut change: impl FnMut(Option<V>) -> std::result::Result<(Option<V>, T), E>,
    ) -> std::result::Result<T, E> {
        for _ in 0..UPDATE_TRIES_MAX {
            let old = self.backend.get(key)?;
            let current = match &old {
                Some(bytes) => Some(self.decode(key, bytes)?),
                None => None,
            };
            let (new, answer) = change(current)?;
            let Some(new) = new else {
                return Ok(answer);
            };
            let bytes = self.encode(key, &new)?;
            if self.backend.compare_and_set(key, old.as_deref(), bytes)? {
                return Ok(answer);
            }
        }
        Err(StorageError::Contended {
            tree: self.name.clone(),
            key: key.to_string(),
            tries: UPDATE_TRIES_MAX,
        }
        .into())
    }

    /// Stores `value` under `key` durably.
    pub fn insert(&self, key: &str, value: &V) -> Result<()> {
        self.backend.insert(key, self.encode(key, value)?, true)
    }

    /// Stores `value` under `key` durably if no writer (on this node or another node of a
    /// cluster) stored one first; answers whether this one was stored.
    pub fn insert_new(&self, key: &str, value: &V) -> Result<bool> {
        self.backend
            .compare_and_set(key, None, self.encode(key, value)?)
    }

    /// Stores `value` under `key`; on sled it reaches the disk with the next flush (sled
    /// flushes on its own every 500 ms), so a crash may lose it. For values that may safely go
    /// back in time.
    pub fn insert_unflushed(&self, key: &str, value: &V) -> Result<()> {
        self.backend.insert(key, self.encode(key, value)?, false)
    }

    /// Removes `key` durably; returns whether it was there.
    pub fn remove(&self, key: &str) -> Result<bool> {
        self.backend.remove(key, true)
    }

    /// Removes `key`; the removal reaches the disk with the next flush, as
    /// [`Tree::insert_unflushed`].
    pub fn remove_unflushed(&self, key: &str) -> Result<()> {
        self.backend.remove(key, false).map(|_| ())
    }

    /// Every entry whose key starts with `prefix`, in key order.
    pub fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, V)>> {
        self.backend
            .scan_prefix(prefix)?
            .into_iter()
            .map(|(k, v)| {
                let value = self.decode(&k, &v)?;
                Ok((k, value))
            })
            .collect()
    }

    pub fn all(&self) -> Result<Vec<(String, V)>> {
        self.scan_prefix("")
    }

    /// How many entries the tree holds, without decoding them.
    pub fn count(&self) -> Result<usize> {
        self.backend.count()
    }

    /// Stores every entry durably, all or none, unless the tree would then hold more than `max`
    /// entries, or `present` refuses a key it holds; see [`TreeBackend::insert_within`].
    pub fn insert_within<'a>(
        &self,
        entries: impl IntoIterator<Item = (String, &'a V)>,
        max: usize,
        present: Present,
    ) -> Result<Bounded>
    where
        V: 'a,
    {
        let encoded = entries
            .into_iter()
            .map(|(key, value)| {
                let bytes = self.encode(&key, value)?;
                Ok((key, bytes))
            })
            .collect::<Result<Vec<_>>>()?;
        self.backend.insert_within(encoded, max, present)
    }
}

/// A tree of the node's sled database.
struct SledTree {
    tree: sled::Tree,
    db: sled::Db,
    /// Held while a bounded insert counts and writes; one for the whole store.
    bounded: Arc<Mutex<()>>,
}

impl TreeBackend for SledTree {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.tree.get(key.as_bytes())?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &str, value: Vec<u8>, durable: bool) -> Result<()> {
        self.tree.insert(key.as_bytes(), value)?;
        if durable {
            self.db.flush()?;
        }
        Ok(())
    }

    fn remove(&self, key: &str, durable: bool) -> Result<bool> {
        let existed = self.tree.remove(key.as_bytes())?.is_some();
        if durable {
            self.db.flush()?;
        }
        Ok(existed)
    }

    fn scan_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(prefix.as_bytes()) {
            let (k, v) = item?;
            out.push((String::from_utf8_lossy(&k).into_owned(), v.to_vec()));
        }
        Ok(out)
    }

    fn count(&self) -> Result<usize> {
        Ok(self.tree.len())
    }

    fn insert_within(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        max: usize,
        present: Present,
    ) -> Result<Bounded> {
        let _one_at_a_time = crate::locks::lock(&self.bounded);
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let mut held = Vec::new();
        for key in &keys {
            if self.tree.contains_key(key.as_bytes())? {
                held.push(key.to_string());
            }
        }
        if let Some(refused) = refused(&keys, &held, self.tree.len(), max, present) {
            return Ok(refused);
        }
        let mut batch = sled::Batch::default();
        for (key, value) in entries {
            batch.insert(key.as_bytes(), value);
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(Bounded::Stored)
    }

    fn compare_and_set(&self, key: &str, expected: Option<&[u8]>, value: Vec<u8>) -> Result<bool> {
        let swapped = self
            .tree
            .compare_and_swap(key.as_bytes(), expected, Some(value))?;
        if swapped.is_err() {
            return Ok(false);
        }
        self.db.flush()?;
        Ok(true)
    }
}

/// The sled database holding all metadata.
#[derive(Clone)]
pub struct MetaStore {
    db: sled::Db,
    /// Taken by bounded inserts into any of its trees.
    bounded: Arc<Mutex<()>>,
}

/// How long [`MetaStore::open`] waits for a lock still held by a store of
/// this process that is closing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Whether sled refused to open because another handle holds the file lock.
fn is_lock_held(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

impl MetaStore {
    ///
    /// sled releases its file lock only when its background threads let go
    /// of the database, a moment after the last handle is dropped; a store
    /// reopened at once (a restart inside one process) waits for that, up
    /// to [`LOCK_WAIT`], and then reports the lock held.
    pub fn open(path: &Path) -> Result<MetaStore> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match sled::Config::new().path(path).open() {
                Ok(db) => {
                    return Ok(MetaStore {
                        db,
                        bounded: Arc::new(Mutex::new(())),
                    });
                }
                Err(e) if is_lock_held(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens (creating) the tree `name` holding values of type `V`.
    pub fn tree<V: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Tree<V>> {
        Ok(Tree::on(name, self.backend(name)?))
    }

    pub fn topics(&self) -> Result<Tree<TopicMeta>> {
        self.tree("topics")
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

impl TreeSource for MetaStore {
    fn backend(&self, name: &str) -> Result<Arc<dyn TreeBackend>> {
        Ok(Arc::new(SledTree {
            tree: self.db.open_tree(name)?,
            db: self.db.clone(),
            bounded: self.bounded.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Updates from many threads at once through two handles on one tree each count once: a
    /// write that raced another is made again from the value the other left.
    #[test]
    fn updates_racing_each_count_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta")).unwrap();
        let handles: [Tree<Vec<u32>>; 2] = [store.tree("log").unwrap(), store.tree("log").unwrap()];
        std::thread::scope(|s| {
            for i in 0..8u32 {
                let tree = &handles[i as usize % 2];
                s.spawn(move || {
                    for j in 0..20 {
                        let appended = tree.update("k", |seen| {
                            let mut seen = seen.unwrap_or_default();
                            seen.push(i * 100 + j);
                            Ok::<_, StorageError>((Some(seen), ()))
                        });
                        appended.unwrap();
                    }
                });
            }
        });
        let mut seen = handles[0].get("k").unwrap().unwrap();
        seen.sort();
        let all: Vec<u32> = (0..8)
            .flat_map(|i| (0..20).map(move |j| i * 100 + j))
            .collect();
        assert_eq!(seen, all, "each update once");
        // An update that leaves the key as it is writes nothing.
        let kept = handles[1].update("k", |_| Ok::<_, StorageError>((None, 7)));
        assert_eq!(kept.unwrap(), 7);
        assert_eq!(handles[0].get("k").unwrap().unwrap().len(), 160);
        let backend = &handles[0].backend;
        assert!(!backend.compare_and_set("k", None, b"[1]".to_vec()).unwrap());
    }

    /// Bounded inserts from many threads at once into two handles on one tree stop at the
    /// bound exactly; an insert past it keeps nothing, and a key already there counts once.
    /// Of inserts racing to make one new key, one makes it.
    #[test]
    fn bounded_inserts_racing_stop_at_the_bound() {
        const MAX: usize = 25;
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta")).unwrap();
        let handles: [Tree<u32>; 2] = [store.tree("users").unwrap(), store.tree("users").unwrap()];
        let stored = std::thread::scope(|s| {
            let threads: Vec<_> = (0..40u32)
                .map(|i| {
                    let tree = &handles[i as usize % 2];
                    s.spawn(move || {
                        let entry = [(format!("u{i:02}"), &i)];
                        tree.insert_within(entry, MAX, Present::Replace).unwrap()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|b| *b == Bounded::Stored)
                .count()
        });
        assert_eq!(stored, MAX);
        let tree = &handles[0];
        assert_eq!(tree.count().unwrap(), MAX);
        let (there, _) = tree.all().unwrap().remove(0);
        let both = [(there.clone(), &100), ("new".to_string(), &101)];
        assert_eq!(
            tree.insert_within(both.clone(), MAX, Present::Replace)
                .unwrap(),
            Bounded::Full { existing: MAX }
        );
        assert_eq!(tree.get("new").unwrap(), None);
        assert_ne!(tree.get(&there).unwrap(), Some(100));
        assert_eq!(
            tree.insert_within(both.iter().take(1).cloned(), MAX, Present::Replace)
                .unwrap(),
            Bounded::Stored
        );
        assert_eq!(tree.get(&there).unwrap(), Some(100));

        tree.remove(&there).unwrap();
        let made = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8u32)
                .map(|i| {
                    let (tree, key) = (&handles[i as usize % 2], there.clone());
                    s.spawn(move || tree.insert_within([(key, &i)], MAX, Present::Refuse))
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap().unwrap())
                .collect::<Vec<_>>()
        });
        let refused = Bounded::Present { key: there.clone() };
        assert_eq!(
            made.iter().filter(|b| **b == Bounded::Stored).count(),
            1,
            "{made:?}"
        );
        assert_eq!(
            made.iter().filter(|b| **b == refused).count(),
            7,
            "{made:?}"
        );
        assert_eq!(
            tree.insert_within(both, MAX, Present::Refuse).unwrap(),
            refused,
            "a refused key keeps the others out too"
        );
        assert_eq!(tree.get("new").unwrap(), None);
    }

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let store = MetaStore::open(&path).unwrap();
            let topics = store.topics().unwrap();
            topics
                .insert(
                    "logs",
                    &TopicMeta {
                        name: "logs".into(),
                        id: [7; 16],
                        partitions: 3,
                        configs: [("retention.ms".to_string(), "1000".to_string())].into(),
                        created_ms: 5,
                    },
                )
                .unwrap();
            let offsets = store.tree::<u64>("group-offsets").unwrap();
            offsets.insert("g/logs/0", &42).unwrap();
            offsets.insert("g/logs/1", &43).unwrap();
            offsets.insert("h/logs/0", &1).unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        let topic = store.topics().unwrap().get("logs").unwrap().unwrap();
        assert_eq!(topic.partitions, 3);
        assert_eq!(topic.configs["retention.ms"], "1000");
        let offsets = store.tree::<u64>("group-offsets").unwrap();
        let g: Vec<u64> = offsets
            .scan_prefix("g/")
            .unwrap()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        assert_eq!(g, vec![42, 43]);
        assert!(offsets.remove("h/logs/0").unwrap());
        assert_eq!(offsets.get("h/logs/0").unwrap(), None);
    }

    #[test]
    fn a_value_of_the_wrong_type_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = MetaStore::open(&dir.path().join("meta")).unwrap();
        store
            .tree::<String>("t")
            .unwrap()
            .insert("k", &"text".to_string())
            .unwrap();
        let err = store.tree::<u64>("t").unwrap().get("k").unwrap_err();
        assert!(
            matches!(err, StorageError::MetaValue { ref tree, .. } if tree == "t"),
            "{err}"
        );
    }
}
