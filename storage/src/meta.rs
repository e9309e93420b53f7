//! The metadata store: sled under `<data-dir>/meta`, with typed trees.
//!
//! Each tree maps string keys to JSON-encoded values of one type. This crate owns the `topics`
//! tree; later layers open their own (group offsets, producer ids, plugins, pipelines) with
//! [`MetaStore::tree`]. Every write is flushed before it returns: metadata changes are rare and
//! must survive a crash as soon as they are acknowledged.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;
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

    /// Stores `value` under `key` durably.
    pub fn insert(&self, key: &str, value: &V) -> Result<()> {
        self.backend.insert(key, self.encode(key, value)?, true)
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
}

/// A tree of the node's sled database.
struct SledTree {
    tree: sled::Tree,
    db: sled::Db,
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
}

/// The sled database holding all metadata.
#[derive(Clone)]
pub struct MetaStore {
    db: sled::Db,
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
                Ok(db) => return Ok(MetaStore { db }),
                Err(e) if is_lock_held(&e) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Opens (creating) the tree `name` holding values of type `V`.
    pub fn tree<V: Serialize + DeserializeOwned>(&self, name: &str) -> Result<Tree<V>> {
        let backend = SledTree {
            tree: self.db.open_tree(name)?,
            db: self.db.clone(),
        };
        Ok(Tree::on(name, Arc::new(backend)))
    }

    pub fn topics(&self) -> Result<Tree<TopicMeta>> {
        self.tree("topics")
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
