//! Key compaction (`cleanup.policy=compact`): the holder of the `merge` lease keeps the last
//! record per key in each partition of a compacted topic, as a single node does in its closed
//! segments.
//!
//! What a single node's active segment is, a cluster's newest runs are: a pass looks at a
//! partition's runs below its *cut*, the first offset of a run in an object younger than the
//! given age and at most its newest run's, so the runs it reads are a prefix of the partition
//! that no flush changes any more, and the partition's last record is never removed. A pass reads those runs once to find each key's
//! latest offset, then again to rewrite the runs that hold superseded records: each batch keeps
//! its base offset and offset span with fewer records inside (the same rewrite as a single
//! node's, [`weir_storage::rewrite_batch`]); a batch left with no record goes, and its run is
//! split around the gap. The rewritten runs go into new objects of up to
//! [`MERGED_OBJECT_BYTES`] of the runs they replace, and the rows are swapped in one
//! transaction under the lease, given up (leaving the object to garbage collection) when
//! retention dropped some of the runs meanwhile. Tombstones stay for `delete.retention.ms`
//! after their batch's newest timestamp.
//!
//! Reading a whole partition is not free on an object store, so a partition is compacted only
//! once the bytes committed since its last pass (past its `clean_offset`) make at least
//! [`DIRTY_RATIO_MIN`] of its bytes below the cut, as Kafka's `min.cleanable.dirty.ratio`.

use std::path::Path;

use bytes::{Bytes, BytesMut};
use weir_storage::batch::{BatchHeader, for_each_batch};
use weir_storage::config::ms_i64;
use weir_storage::{LatestByKey, decode_records, rewrite_batch};

use crate::lease::{Lease, check_held, lost};
use crate::log::{Run, place_batches};
use crate::merge::{FOUND_COLUMNS, Found, MERGED_OBJECT_BYTES};
use crate::{ClusterError, Result, SharedLog};

/// A partition is compacted once the bytes past its last pass make this share of its bytes
/// below the cut: Kafka's default `min.cleanable.dirty.ratio`.
pub const DIRTY_RATIO_MIN: f64 = 0.5;

/// Rows of one partition one pass reads; the cut moves down to the last of them.
const COMPACT_ROWS_MAX: i64 = 100_000;

/// What one compaction pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compacted {
    /// Partitions read.
    pub partitions: u64,
    /// Runs rewritten, and the runs that replaced them.
    pub runs_before: u64,
    pub runs_after: u64,
    /// Records removed.
    pub records_removed: u64,
    /// Bytes of the runs rewritten, and of what replaced them.
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Per partition of topic `$1`: its cut (see the module) for objects younger than `$2` ms, or
/// its newest run's base offset when that is lower (the newest run is never compacted, so a
/// partition never ends in a gap a reader would wait at), the bytes of its runs below the cut
/// and those of them at or past where its last pass got to.
const DIRTY: &str = "
WITH young AS (
  SELECT b.partition, min(b.base_offset) AS cut
  FROM weir.batches b JOIN weir.objects o USING (object_id)
  WHERE b.topic_id = $1 AND o.created_at >= now() - $2::float8 * interval '1 millisecond'
  GROUP BY b.partition
), cuts AS (
  SELECT p.partition, p.clean_offset,
         least(coalesce(y.cut, p.next_offset),
               (SELECT max(l.base_offset) FROM weir.batches l
                WHERE l.topic_id = $1 AND l.partition = p.partition)) AS cut
  FROM weir.partitions p LEFT JOIN young y USING (partition)
  WHERE p.topic_id = $1
)
SELECT c.partition, c.cut, sum(b.byte_len)::bigint,
       coalesce(sum(b.byte_len) FILTER (WHERE b.base_offset >= c.clean_offset), 0)::bigint
FROM cuts c JOIN weir.batches b
  ON b.topic_id = $1 AND b.partition = c.partition AND b.last_offset < c.cut
GROUP BY c.partition, c.cut";

/// Rewritten runs waiting to be swapped in: the rows they replace and their new bytes.
#[derive(Default)]
struct Chunk {
    replaced: Vec<i64>,
    bytes_replaced: u64,
    runs: Vec<Run>,
    object: BytesMut,
    records_removed: u64,
}

impl SharedLog {
    /// One compaction pass over every topic whose cleanup policy compacts, as of `now_ms`,
    /// leaving alone runs in objects younger than `age_ms_min`. A partition's key map is
    /// bounded by `keys_max`. The pass stops as soon as the lease is not current.
    pub async fn compact_topics(
        &self,
        lease: &Lease,
        now_ms: i64,
        age_ms_min: i64,
        keys_max: u64,
    ) -> Result<Compacted> {
        let mut compacted = Compacted::default();
        for topic in self.topics_now().await? {
            let config = topic.log_config();
            if !config.cleanup_policy.compact {
                continue;
            }
            let horizon = now_ms.saturating_sub(ms_i64(config.delete_retention_ms));
            let rows = self
                .db()
                .await?
                .query(DIRTY, &[&topic.id, &(age_ms_min as f64)])
                .await?;
            for row in rows {
                let (partition, cut, bytes, dirty): (i32, i64, i64, i64) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                if dirty == 0 || (dirty as f64) < bytes as f64 * DIRTY_RATIO_MIN {
                    continue;
                }
                if !lease.is_current() {
                    return Err(lost(lease));
                }
                let at = Partition {
                    topic_id: topic.id,
                    topic: &topic.name,
                    partition,
                };
                let done = self
                    .compact_partition(lease, &at, cut, horizon, keys_max)
                    .await?;
                compacted.partitions += 1;
                compacted.runs_before += done.runs_before;
                compacted.runs_after += done.runs_after;
                compacted.records_removed += done.records_removed;
                compacted.bytes_before += done.bytes_before;
                compacted.bytes_after += done.bytes_after;
            }
        }
        Ok(compacted)
    }

    /// Compacts one partition's runs below `cut`, then moves its `clean_offset` to the cut.
    async fn compact_partition(
        &self,
        lease: &Lease,
        at: &Partition<'_>,
        cut: i64,
        horizon: i64,
        keys_max: u64,
    ) -> Result<Compacted> {
        let rows = self
            .db()
            .await?
            .query(
                &format!(
                    "SELECT {FOUND_COLUMNS}
                     FROM weir.batches b JOIN weir.objects o USING (object_id)
                     WHERE b.topic_id = $1 AND b.partition = $2 AND b.last_offset < $3
                     ORDER BY b.base_offset LIMIT $4"
                ),
                &[&at.topic_id, &at.partition, &cut, &COMPACT_ROWS_MAX],
            )
            .await?;
        let found: Vec<Found> = rows.iter().map(Found::from_row).collect();
        // A full page moves the cut down to its end: what the pass reads stays a prefix.
        let cut = match found.last() {
            Some(last) if found.len() as i64 == COMPACT_ROWS_MAX => last.run.last_offset as i64 + 1,
            _ => cut,
        };

        let mut latest = LatestByKey::default();
        for f in &found {
            let batches = self.placed(f).await?;
            latest.note(decode_records(&batches).map_err(|e| corrupt(f, e))?);
            if latest.keys() > keys_max {
                return Err(ClusterError::CompactionKeys {
                    topic: at.topic.to_string(),
                    partition: at.partition as u32,
                    keys_max,
                });
            }
        }

        let mut done = Compacted::default();
        let mut chunk = Chunk::default();
        for f in &found {
            let batches = self.placed(f).await?;
            let Some(Rewritten { runs, removed }) = rewrite_run(f, &batches, &latest, horizon)?
            else {
                continue;
            };
            if !chunk.replaced.is_empty()
                && chunk.bytes_replaced + f.run.byte_len > MERGED_OBJECT_BYTES
            {
                self.swap_in(lease, at, std::mem::take(&mut chunk), &mut done)
                    .await?;
            }
            chunk.replaced.push(f.run.base_offset as i64);
            chunk.bytes_replaced += f.run.byte_len;
            chunk.records_removed += removed;
            for (mut run, bytes) in runs {
                run.byte_start = chunk.object.len() as u64;
                chunk.object.extend_from_slice(&bytes);
                chunk.runs.push(run);
            }
        }
        if !chunk.replaced.is_empty() {
            self.swap_in(lease, at, chunk, &mut done).await?;
        }

        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        check_held(&tx, lease, &self.node_id).await?;
        tx.execute(
            "UPDATE weir.partitions SET clean_offset = $3
             WHERE topic_id = $1 AND partition = $2 AND clean_offset < $3",
            &[&at.topic_id, &at.partition, &cut],
        )
        .await?;
        tx.commit().await?;
        Ok(done)
    }

    /// A run's batches straight from the store, each with its base offset set.
    async fn placed(&self, f: &Found) -> Result<Bytes> {
        let range = f.read(self).await?;
        let mut out = BytesMut::with_capacity(range.len());
        let (base, last) = (f.run.base_offset as i64, f.run.last_offset as i64);
        place_batches(&range, base, last, f.run.base_offset, &mut out).map_err(|reason| {
            ClusterError::CorruptObject {
                key: f.key.clone(),
                reason,
            }
        })?;
        Ok(out.freeze())
    }

    /// Writes a chunk's object and swaps its runs for the rows they replace, in one
    /// transaction under the lease; nothing changes when retention dropped some of those rows.
    async fn swap_in(
        &self,
        lease: &Lease,
        at: &Partition<'_>,
        chunk: Chunk,
        done: &mut Compacted,
    ) -> Result<()> {
        let runs_bytes = chunk.object.len() as u64;
        // A chunk whose records all went needs no object.
        let written = if chunk.runs.is_empty() {
            None
        } else {
            Some(
                self.put_runs(at.topic_id, at.partition, chunk.object)
                    .await?,
            )
        };
        let (topic_id, partition) = (at.topic_id, at.partition);
        if self
            .swap_runs(
                lease,
                topic_id,
                partition,
                &chunk.replaced,
                written.as_ref(),
                &chunk.runs,
            )
            .await?
        {
            done.runs_before += chunk.replaced.len() as u64;
            done.runs_after += chunk.runs.len() as u64;
            done.records_removed += chunk.records_removed;
            done.bytes_before += chunk.bytes_replaced;
            done.bytes_after += runs_bytes;
        }
        Ok(())
    }
}

/// The partition a pass works on.
struct Partition<'a> {
    topic_id: i64,
    topic: &'a str,
    partition: i32,
}

fn corrupt(f: &Found, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::CorruptObject {
        key: f.key.clone(),
        reason: e.to_string(),
    }
}

/// A run rewritten with only the records compaction keeps.
struct Rewritten {
    /// The runs it became (offsets and max timestamp set, byte starts to be set by the
    /// caller), split where a batch went, each with its bytes.
    runs: Vec<(Run, BytesMut)>,
    /// Records removed.
    removed: u64,
}

/// A run's batches with only the records `latest` keeps; `None` when every record stays.
fn rewrite_run(
    f: &Found,
    batches: &Bytes,
    latest: &LatestByKey,
    horizon: i64,
) -> Result<Option<Rewritten>> {
    let keep = |r: &weir_storage::Record, h: &BatchHeader| latest.keeps(r, h, horizon);
    let path = Path::new(&f.key);
    let mut runs: Vec<(Run, BytesMut)> = Vec::new();
    let mut removed = 0u64;
    let mut changed = false;
    let mut error = None;
    for_each_batch(batches, |h, batch| {
        let rewritten = match rewrite_batch(h, batch, path, &keep) {
            Ok(r) => r,
            Err(e) => {
                error = Some(e);
                return Ok(());
            }
        };
        let records = if h.is_control() { 0 } else { h.record_count };
        let Some(bytes) = rewritten else {
            removed += records as u64;
            changed = true;
            return Ok(());
        };
        let header = BatchHeader::parse(&bytes)?;
        if header.record_count != h.record_count {
            removed += (h.record_count - header.record_count) as u64;
            changed = true;
        }
        let (base, last) = (h.base_offset as u64, h.last_offset() as u64);
        match runs.last_mut() {
            Some((run, out)) if run.last_offset + 1 == base => {
                run.last_offset = last;
                run.max_timestamp = run.max_timestamp.max(header.max_timestamp);
                run.byte_len += bytes.len() as u64;
                out.extend_from_slice(&bytes);
            }
            _ => runs.push((
                Run {
                    base_offset: base,
                    last_offset: last,
                    max_timestamp: header.max_timestamp,
                    byte_start: 0,
                    byte_len: bytes.len() as u64,
                },
                BytesMut::from(&bytes[..]),
            )),
        }
        Ok(())
    })
    .map_err(|e| corrupt(f, e))?;
    if let Some(e) = error {
        return Err(corrupt(f, e));
    }
    Ok(changed.then_some(Rewritten { runs, removed }))
}
