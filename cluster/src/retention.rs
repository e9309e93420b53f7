//! Retention: the holder of the `retention` lease drops the oldest runs of each partition past
//! its topic's `retention.ms` or `retention.bytes`, as a single node deletes its oldest
//! segments, and moves the partition's log start offset to the first run kept.
//!
//! A run (one `batches` row, the partition's part of one flush) is what a segment is on a
//! single node: retention drops whole runs from the start of the partition and never splits
//! one. Time retention drops the runs before the first whose newest record is at most
//! `retention.ms` old; size retention drops a run while the runs after it hold at least
//! `retention.bytes`. Unlike a single node's active segment, the newest run is not kept for its
//! own sake: a partition whose every record is past `retention.ms` ends up empty, its log start
//! offset at its end. Dropped bytes come off their objects' live bytes, and an object left with
//! none loses its row, so that garbage collection deletes it.

use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;
use weir_storage::config::ms_i64;

use crate::lease::{Lease, check_held, lost};
use crate::{Result, SharedLog};

/// What one retention run dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Trimmed {
    /// Partitions whose log start offset moved.
    pub partitions: u64,
    /// Runs (`batches` rows) dropped.
    pub batches: u64,
    /// Bytes of the runs dropped.
    pub bytes: u64,
}

/// Per partition of topic `$1` that has runs: its first run's base offset and the base offset
/// retention keeps from, given the oldest newest-record time kept (`$2`, none for no time
/// retention) and the bytes kept (`$3`, none for no size retention). The end of the partition
/// when nothing is kept.
const KEEP_FROM: &str = "
WITH runs AS (
  SELECT partition, base_offset, max_timestamp,
         coalesce(sum(byte_len) OVER (PARTITION BY partition ORDER BY base_offset DESC
                                      ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
           AS bytes_after
  FROM weir.batches WHERE topic_id = $1
)
SELECT p.partition, min(r.base_offset),
       greatest(
         CASE WHEN $2::bigint IS NULL THEN 0
              ELSE coalesce(min(r.base_offset) FILTER (WHERE r.max_timestamp >= $2),
                            p.next_offset) END,
         CASE WHEN $3::bigint IS NULL THEN 0
              ELSE coalesce(min(r.base_offset) FILTER (WHERE r.bytes_after < $3),
                            p.next_offset) END)
FROM weir.partitions p JOIN runs r ON r.partition = p.partition
WHERE p.topic_id = $1
GROUP BY p.partition, p.next_offset";

impl SharedLog {
    /// One retention run over every topic whose cleanup policy deletes, as of `now_ms`. Each
    /// partition is trimmed in its own transaction under the lease; the run stops as soon as
    /// the lease is not current.
    pub async fn enforce_retention(&self, lease: &Lease, now_ms: i64) -> Result<Trimmed> {
        let mut trimmed = Trimmed::default();
        for topic in self.topics_now().await? {
            let config = topic.log_config();
            if !config.cleanup_policy.delete
                || (config.retention_ms.is_none() && config.retention_bytes.is_none())
            {
                continue;
            }
            let oldest_kept: Option<i64> = config
                .retention_ms
                .map(|ms| now_ms.saturating_sub(ms_i64(ms)));
            let bytes_kept: Option<i64> = config
                .retention_bytes
                .map(|bytes| i64::try_from(bytes).unwrap_or(i64::MAX));
            let rows = self
                .db()
                .await?
                .query(KEEP_FROM, &[&topic.id, &oldest_kept, &bytes_kept])
                .await?;
            for row in rows {
                let (partition, first, keep_from): (i32, i64, i64) =
                    (row.get(0), row.get(1), row.get(2));
                if keep_from <= first {
                    continue;
                }
                if !lease.is_current() {
                    return Err(lost(lease));
                }
                let dropped = self.trim(lease, topic.id, partition, keep_from).await?;
                trimmed.partitions += 1;
                trimmed.batches += dropped.batches;
                trimmed.bytes += dropped.bytes;
            }
        }
        Ok(trimmed)
    }

    /// Drops the runs of one partition below `keep_from` and moves its log start offset there,
    /// in one transaction under the lease. A flush committing meanwhile appends at or past the
    /// end `keep_from` was computed from, so it loses nothing.
    async fn trim(
        &self,
        lease: &Lease,
        topic_id: i64,
        partition: i32,
        keep_from: i64,
    ) -> Result<Dropped> {
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        check_held(&tx, lease, &self.node_id).await?;
        tx.execute(
            "UPDATE weir.partitions SET log_start_offset = $3
             WHERE topic_id = $1 AND partition = $2 AND log_start_offset < $3",
            &[&topic_id, &partition, &keep_from],
        )
        .await?;
        let dropped = drop_batches(
            &tx,
            "topic_id = $1 AND partition = $2 AND base_offset < $3",
            &[&topic_id, &partition, &keep_from],
        )
        .await?;
        tx.commit().await?;
        Ok(dropped)
    }
}

/// Runs and bytes [`drop_batches`] deleted.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Dropped {
    pub batches: u64,
    pub bytes: u64,
}

/// Deletes the `batches` rows `filter` picks (a condition on their columns, over `params`),
/// takes their bytes off their objects' live bytes and deletes the rows of objects left with
/// none, so that garbage collection deletes those objects. The objects' rows are locked in id
/// order first: two such deletions sharing objects never deadlock.
pub(crate) async fn drop_batches(
    tx: &Transaction<'_>,
    filter: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Dropped> {
    tx.execute(
        &format!(
            "SELECT 1 FROM weir.objects
             WHERE object_id IN (SELECT object_id FROM weir.batches WHERE {filter})
             ORDER BY object_id FOR UPDATE"
        ),
        params,
    )
    .await?;
    let rows = tx
        .query(
            &format!(
                "WITH gone AS (
                   DELETE FROM weir.batches WHERE {filter} RETURNING object_id, byte_len
                 ), per_object AS (
                   SELECT object_id, count(*) AS runs, sum(byte_len) AS bytes
                   FROM gone GROUP BY object_id
                 )
                 UPDATE weir.objects o SET live_bytes = o.live_bytes - p.bytes
                 FROM per_object p WHERE o.object_id = p.object_id
                 RETURNING o.object_id, o.live_bytes, p.runs, p.bytes"
            ),
            params,
        )
        .await?;
    let mut dropped = Dropped::default();
    let mut emptied: Vec<i64> = Vec::new();
    for row in &rows {
        if row.get::<_, i64>(1) <= 0 {
            emptied.push(row.get(0));
        }
        dropped.batches += row.get::<_, i64>(2) as u64;
        dropped.bytes += row.get::<_, i64>(3) as u64;
    }
    if !emptied.is_empty() {
        tx.execute(
            "DELETE FROM weir.objects o WHERE o.object_id = ANY($1)
               AND NOT EXISTS (SELECT 1 FROM weir.batches b WHERE b.object_id = o.object_id)",
            &[&emptied],
        )
        .await?;
    }
    Ok(dropped)
}
