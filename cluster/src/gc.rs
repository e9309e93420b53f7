//! Garbage collection: objects in the store that no row of the database references.
//!
//! A flush writes its object before its transaction; when the transaction fails the object
//! stays behind, referenced by nothing. The node holding the `gc` lease lists the store and
//! deletes such objects once they are older than twice the longest a flush may take to
//! commit ([`NodeConfig::flush_commit_ms_max`](crate::NodeConfig)), since a flush past that
//! gives up instead of committing: an object still being committed is never deleted.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

use crate::lease::{Lease, lost};
use crate::{Result, SharedLog};

/// Objects one collection run looks at; the next run carries on.
pub const GC_OBJECTS_MAX: usize = 10_000;

/// Keys asked about in one query.
const KEYS_PER_QUERY: usize = 1_000;

/// What one collection run deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Collected {
    pub objects: u64,
    pub bytes: u64,
}

impl SharedLog {
    /// Deletes objects that no row references and that are old enough to be the leftovers of
    /// failed flushes. Runs under the `gc` lease and stops as soon as the lease is not current.
    pub async fn collect_garbage(&self, lease: &Lease) -> Result<Collected> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let age_ms_min = 2 * self.flush_commit_max().as_millis() as i64;
        let prefix = ObjectPath::from("data");
        let mut old: Vec<(String, u64)> = Vec::new();
        let mut listed = self.store().list(Some(&prefix));
        while let Some(meta) = listed.try_next().await? {
            if now_ms - meta.last_modified.timestamp_millis() > age_ms_min {
                old.push((meta.location.to_string(), meta.size));
                if old.len() == GC_OBJECTS_MAX {
                    break;
                }
            }
        }
        let mut collected = Collected::default();
        for chunk in old.chunks(KEYS_PER_QUERY) {
            if !lease.is_current() {
                return Err(lost(lease));
            }
            let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
            let referenced: Vec<String> = self
                .db()
                .await?
                .query("SELECT key FROM weir.objects WHERE key = ANY($1)", &[&keys])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for (key, size) in chunk {
                if referenced.contains(key) {
                    continue;
                }
                self.store().delete(&ObjectPath::from(key.as_str())).await?;
                collected.objects += 1;
                collected.bytes += size;
            }
        }
        Ok(collected)
    }
}
