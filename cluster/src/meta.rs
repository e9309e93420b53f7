//! Small metadata trees every node shares (SCRAM users, ACL rules): rows of `weir.meta`, a JSON
//! value under a key per tree, as a lone node keeps them in sled.
//!
//! Each change commits with `NOTIFY weir_meta, '<tree>'`; every node's listener passes the
//! tree's name on to [`SharedLog::subscribe_meta`], so a node that keeps a copy in memory (the
//! ACL rules every request is checked against) reads it again. After the listener connects
//! again it passes on an empty name: any tree may have changed meanwhile.

use tokio::sync::broadcast;
use weir_storage::{Bounded, Present};

use crate::lease::{Lease, check_held};
use crate::{ClusterError, Result, SharedLog};

/// The channel metadata changes are announced on; the payload is the tree's name.
pub(crate) const META_CHANNEL: &str = "weir_meta";

/// Longest tree name, in bytes. With the key, it makes the table's index entry, which Postgres
/// keeps under about 2.7 kB.
pub const META_TREE_BYTES_MAX: usize = 64;

/// Longest key, in bytes: room for the longest ACL rule's key (two 512-byte names and its other
/// fields) with the tree name inside the index entry's limit.
pub const META_KEY_BYTES_MAX: usize = 2048;

/// Largest value, in bytes of JSON.
pub const META_VALUE_BYTES_MAX: usize = 1 << 20;

/// Changes a slow subscriber may fall behind by before it is told it lagged.
pub(crate) const META_QUEUE_MAX: usize = 256;

fn check_key(tree: &str, key: &str) -> Result<()> {
    for (what, text, max) in [
        ("tree name", tree, META_TREE_BYTES_MAX),
        ("key", key, META_KEY_BYTES_MAX),
    ] {
        if text.len() > max {
            return Err(ClusterError::InvalidRequest(format!(
                "a metadata {what} of {} bytes, allowed at most {max}",
                text.len()
            )));
        }
    }
    Ok(())
}

/// `value` as the JSON text the `jsonb` column takes, once it is within its bound.
fn value_text(value: &[u8]) -> Result<&str> {
    if value.len() > META_VALUE_BYTES_MAX {
        return Err(ClusterError::InvalidRequest(format!(
            "a metadata value of {} bytes, allowed at most {META_VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    std::str::from_utf8(value)
        .map_err(|e| ClusterError::InvalidRequest(format!("a metadata value: {e}")))
}

/// When a write to a metadata key goes ahead.
enum Expect<'a> {
    /// Whatever the key holds.
    Anything,
    /// Only if the key is absent.
    Absent,
    /// Only if the key holds this value (JSON, compared as JSON).
    Value(&'a [u8]),
}

/// Puts `value` (JSON text) under `key` in `tree`, inside `tx`.
async fn put(
    tx: &tokio_postgres::Transaction<'_>,
    tree: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO weir.meta (tree, key, value) VALUES ($1, $2, $3::text::jsonb)
         ON CONFLICT (tree, key) DO UPDATE SET value = excluded.value",
        &[&tree, &key, &value],
    )
    .await?;
    Ok(())
}

impl SharedLog {
    /// The value under `key` in `tree`, as JSON.
    pub async fn meta_get(&self, tree: &str, key: &str) -> Result<Option<Vec<u8>>> {
        check_key(tree, key)?;
        let row = self
            .db()
            .await?
            .query_opt(
                "SELECT value::text FROM weir.meta WHERE tree = $1 AND key = $2",
                &[&tree, &key],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, String>(0).into_bytes()))
    }

    /// Stores `value` (JSON) under `key` in `tree`, committed before this returns. Under a
    /// `fence`, only while this node holds that lease, as [`SharedLog::flush`] does.
    pub async fn meta_put(
        &self,
        tree: &str,
        key: &str,
        value: &[u8],
        fence: Option<&Lease>,
    ) -> Result<()> {
        let written = self.meta_write(tree, key, value, Expect::Anything, fence);
        written.await.map(|_| ())
    }

    /// Stores every entry in `tree`, all or none, unless the tree would then hold more than
    /// `max` entries (a key already there counts once), or a key is there and `present`
    /// refuses it. A transaction-scoped advisory lock on the tree makes the checks and the
    /// writes one step across every node, so nodes racing never pass `max` together, nor
    /// both make one new key.
    pub async fn meta_put_within(
        &self,
        tree: &str,
        entries: &[(String, Vec<u8>)],
        max: usize,
        present: Present,
    ) -> Result<Bounded> {
        let mut texts = Vec::with_capacity(entries.len());
        for (key, value) in entries {
            check_key(tree, key)?;
            texts.push(value_text(value)?);
        }
        check_key(tree, "")?;
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        let lock = format!("weir.meta/{tree}");
        tx.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&lock],
        )
        .await?;
        let existing = tx
            .query_one("SELECT count(*) FROM weir.meta WHERE tree = $1", &[&tree])
            .await?
            .get::<_, i64>(0) as usize;
        let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
        let held: Vec<String> = tx
            .query(
                "SELECT key FROM weir.meta WHERE tree = $1 AND key = ANY($2)",
                &[&tree, &keys],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(refused) = weir_storage::refused(&keys, &held, existing, max, present) {
            return Ok(refused);
        }
        for (key, text) in keys.iter().zip(&texts) {
            put(&tx, tree, key, text).await?;
        }
        announce(&tx, tree).await?;
        tx.commit().await?;
        Ok(Bounded::Stored)
    }

    /// Stores `value` (JSON) under `key` in `tree` if the key still holds `expected` (`None`:
    /// it is absent; values compare as JSON), and answers whether it did. Postgres checks the
    /// row and writes it in one statement, so of nodes racing from the same `expected`, one
    /// succeeds. Under a `fence`, only while this node holds that lease.
    pub async fn meta_compare_and_set(
        &self,
        tree: &str,
        key: &str,
        expected: Option<&[u8]>,
        value: &[u8],
        fence: Option<&Lease>,
    ) -> Result<bool> {
        let expect = match expected {
            None => Expect::Absent,
            Some(old) => Expect::Value(old),
        };
        self.meta_write(tree, key, value, expect, fence).await
    }

    /// Stores `value` under `key` in `tree` if the key holds what `expect` says, and answers
    /// whether it did; the change is announced at commit.
    async fn meta_write(
        &self,
        tree: &str,
        key: &str,
        value: &[u8],
        expect: Expect<'_>,
        fence: Option<&Lease>,
    ) -> Result<bool> {
        check_key(tree, key)?;
        let text = value_text(value)?;
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        if let Some(lease) = fence {
            check_held(&tx, lease, &self.node_id).await?;
        }
        let written = match expect {
            Expect::Anything => {
                put(&tx, tree, key, text).await?;
                1
            }
            Expect::Absent => {
                tx.execute(
                    "INSERT INTO weir.meta (tree, key, value) VALUES ($1, $2, $3::text::jsonb)
                     ON CONFLICT (tree, key) DO NOTHING",
                    &[&tree, &key, &text],
                )
                .await?
            }
            Expect::Value(old) => {
                let old = value_text(old)?;
                tx.execute(
                    "UPDATE weir.meta SET value = $3::text::jsonb
                     WHERE tree = $1 AND key = $2 AND value = $4::text::jsonb",
                    &[&tree, &key, &text, &old],
                )
                .await?
            }
        };
        if written == 0 {
            return Ok(false);
        }
        announce(&tx, tree).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes `key` from `tree`; whether it was there.
    pub async fn meta_remove(&self, tree: &str, key: &str) -> Result<bool> {
        check_key(tree, key)?;
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        let removed = tx
            .execute(
                "DELETE FROM weir.meta WHERE tree = $1 AND key = $2",
                &[&tree, &key],
            )
            .await?;
        if removed > 0 {
            announce(&tx, tree).await?;
        }
        tx.commit().await?;
        Ok(removed > 0)
    }

    /// Every entry of `tree` whose key starts with `prefix`, in key order (bytewise, as sled
    /// orders them).
    pub async fn meta_scan(&self, tree: &str, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        check_key(tree, prefix)?;
        let rows = self
            .db()
            .await?
            .query(
                "SELECT key, value::text FROM weir.meta
                 WHERE tree = $1 AND starts_with(key, $2) ORDER BY key COLLATE \"C\"",
                &[&tree, &prefix],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get::<_, String>(1).into_bytes()))
            .collect())
    }

    /// How many entries `tree` holds.
    pub async fn meta_len(&self, tree: &str) -> Result<usize> {
        check_key(tree, "")?;
        let row = self
            .db()
            .await?
            .query_one("SELECT count(*) FROM weir.meta WHERE tree = $1", &[&tree])
            .await?;
        Ok(row.get::<_, i64>(0) as usize)
    }

    /// The names of the trees any node changes from now on, as this node's listener hears
    /// them; an empty name when any tree may have changed unheard (the listener reconnected).
    pub fn subscribe_meta(&self) -> broadcast::Receiver<String> {
        self.meta_changed.subscribe()
    }
}

/// Tells every node's listener, at commit, that `tree` changed.
async fn announce(tx: &tokio_postgres::Transaction<'_>, tree: &str) -> Result<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&META_CHANNEL, &tree])
        .await?;
    Ok(())
}
