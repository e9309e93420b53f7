//! Merging small objects: the holder of the `merge` lease rewrites the runs of a partition that
//! sit in small objects into one larger object of that partition alone.
//!
//! A flush writes one object for every partition it took records for, so a busy cluster writes
//! many small objects, each partition's run in one of them a `batches` row. Left alone, reading
//! a partition's history takes a GET per flush and Postgres keeps a row per flush. Merging
//! copies a partition's runs from objects smaller than [`SMALL_OBJECT_BYTES`] into a new object
//! of up to [`MERGED_OBJECT_BYTES`], joining runs whose offsets follow each other into runs of
//! up to [`MERGED_RUN_BYTES`], then swaps the rows in one transaction under the lease. The
//! record bytes are copied unchanged, so offsets, CRCs and idempotent producers' state stay as
//! they were. The old objects lose the merged bytes from their live bytes; one left with none
//! loses its row, and garbage collection deletes it.
//!
//! Only runs in objects older than the given age are merged: tailing readers find the newest
//! runs in their cache, which a merge would make them read again. Retention, which runs under
//! its own lease, may drop some of the runs while they are copied: the swap then finds fewer
//! rows than it copied and is given up, leaving the new object to garbage collection.

use std::time::Instant;

use bytes::BytesMut;
use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;
use tokio_postgres::types::ToSql;

use crate::lease::{Lease, check_held, lost};
use crate::log::{Run, write_footer};
use crate::retention::drop_batches;
use crate::{Result, SharedLog};

/// Objects smaller than this have their runs merged.
pub const SMALL_OBJECT_BYTES: u64 = 8 * 1024 * 1024;

/// Most bytes of runs one merged object takes.
pub const MERGED_OBJECT_BYTES: u64 = 64 * 1024 * 1024;

/// Largest run merging makes by joining runs. A read returns whole runs, so this bounds what a
/// fetch of one offset reads: Kafka consumers ask for 1 MiB per partition by default.
pub const MERGED_RUN_BYTES: u64 = 1024 * 1024;

/// Partitions one merge run looks at; the next run carries on.
pub const MERGE_PARTITIONS_MAX: i64 = 1_000;

/// Rows of one partition read to pick the runs one merge takes.
const MERGE_ROWS_MAX: i64 = 100_000;

/// What one merge run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Merged {
    /// Partitions whose runs moved into a new object.
    pub partitions: u64,
    /// Runs (`batches` rows) replaced, and the runs that replaced them.
    pub runs_before: u64,
    pub runs_after: u64,
    /// Bytes of runs copied.
    pub bytes: u64,
}

/// One run a merge or a compaction rewrites, as its row says.
pub(crate) struct Found {
    pub run: Run,
    /// Its object's key.
    pub key: String,
}

/// The columns [`Found::from_row`] reads, of `weir.batches b JOIN weir.objects o`.
pub(crate) const FOUND_COLUMNS: &str =
    "b.base_offset, b.last_offset, b.max_timestamp, o.key, b.byte_start, b.byte_len";

impl Found {
    /// A row of [`FOUND_COLUMNS`].
    pub(crate) fn from_row(row: &tokio_postgres::Row) -> Found {
        Found {
            run: Run {
                base_offset: row.get::<_, i64>(0) as u64,
                last_offset: row.get::<_, i64>(1) as u64,
                max_timestamp: row.get(2),
                byte_start: row.get::<_, i64>(4) as u64,
                byte_len: row.get::<_, i32>(5) as u64,
            },
            key: row.get(3),
        }
    }

    /// The run's bytes straight from the store: it is about to be replaced, and through the
    /// cache would only push out what readers use.
    pub(crate) async fn read(&self, log: &SharedLog) -> Result<bytes::Bytes> {
        let (start, len) = (self.run.byte_start, self.run.byte_len);
        Ok(log
            .store()
            .get_range(&ObjectPath::from(self.key.as_str()), start..start + len)
            .await?)
    }
}

impl SharedLog {
    /// One merge run: each partition with at least two runs in small objects older than
    /// `age_ms_min` gets its oldest such runs merged into one object, in its own transaction
    /// under the lease. The run stops as soon as the lease is not current.
    pub async fn merge_small_objects(&self, lease: &Lease, age_ms_min: i64) -> Result<Merged> {
        let small = SMALL_OBJECT_BYTES as i64;
        let partitions = self
            .db()
            .await?
            .query(
                "SELECT b.topic_id, b.partition FROM weir.batches b JOIN weir.objects o
                   USING (object_id)
                 WHERE o.bytes < $1
                   AND o.created_at < now() - $2::float8 * interval '1 millisecond'
                 GROUP BY b.topic_id, b.partition HAVING count(*) >= 2
                 ORDER BY b.topic_id, b.partition LIMIT $3",
                &[&small, &(age_ms_min as f64), &MERGE_PARTITIONS_MAX],
            )
            .await?;
        let mut merged = Merged::default();
        for row in partitions {
            if !lease.is_current() {
                return Err(lost(lease));
            }
            let (topic_id, partition): (i64, i32) = (row.get(0), row.get(1));
            if let Some((before, after, bytes)) = self
                .merge_partition(lease, topic_id, partition, age_ms_min)
                .await?
            {
                merged.partitions += 1;
                merged.runs_before += before;
                merged.runs_after += after;
                merged.bytes += bytes;
            }
        }
        Ok(merged)
    }

    /// Merges the oldest runs of one partition that sit in small objects. Returns the runs
    /// before and after and the bytes copied, or `None` when there was nothing to merge or
    /// retention dropped some of the runs meanwhile.
    async fn merge_partition(
        &self,
        lease: &Lease,
        topic_id: i64,
        partition: i32,
        age_ms_min: i64,
    ) -> Result<Option<(u64, u64, u64)>> {
        let small = SMALL_OBJECT_BYTES as i64;
        let rows = self
            .db()
            .await?
            .query(
                &format!(
                    "SELECT {FOUND_COLUMNS}
                     FROM weir.batches b JOIN weir.objects o USING (object_id)
                     WHERE b.topic_id = $1 AND b.partition = $2 AND o.bytes < $3
                       AND o.created_at < now() - $4::float8 * interval '1 millisecond'
                     ORDER BY b.base_offset LIMIT $5"
                ),
                &[
                    &topic_id,
                    &partition,
                    &small,
                    &(age_ms_min as f64),
                    &MERGE_ROWS_MAX,
                ],
            )
            .await?;
        let mut found: Vec<Found> = Vec::new();
        let mut bytes = 0u64;
        for row in &rows {
            let f = Found::from_row(row);
            if !found.is_empty() && bytes + f.run.byte_len > MERGED_OBJECT_BYTES {
                break;
            }
            bytes += f.run.byte_len;
            found.push(f);
        }
        if found.len() < 2 {
            return Ok(None);
        }

        // The runs side by side in the new object; runs whose offsets follow each other join
        // while they stay within MERGED_RUN_BYTES.
        let mut object = BytesMut::with_capacity(bytes as usize + 40);
        let mut runs: Vec<Run> = Vec::new();
        for f in &found {
            let range = f.read(self).await?;
            match runs.last_mut() {
                Some(last)
                    if last.last_offset + 1 == f.run.base_offset
                        && last.byte_len + f.run.byte_len <= MERGED_RUN_BYTES =>
                {
                    last.last_offset = f.run.last_offset;
                    last.byte_len += f.run.byte_len;
                    last.max_timestamp = last.max_timestamp.max(f.run.max_timestamp);
                }
                _ => runs.push(Run {
                    byte_start: object.len() as u64,
                    ..f.run
                }),
            }
            object.extend_from_slice(&range);
        }
        let written = self.put_runs(topic_id, partition, object).await?;
        let bases: Vec<i64> = found.iter().map(|f| f.run.base_offset as i64).collect();
        if !self
            .swap_runs(lease, topic_id, partition, &bases, Some(&written), &runs)
            .await?
        {
            return Ok(None);
        }
        Ok(Some((found.len() as u64, runs.len() as u64, bytes)))
    }
}

/// A new object holding runs of one partition, written and waiting for its row.
pub(crate) struct Written {
    key: ObjectPath,
    at: Instant,
    bytes: i64,
    runs_bytes: i64,
}

impl SharedLog {
    /// Writes `object` (runs of one partition side by side) as a new object, with its footer.
    pub(crate) async fn put_runs(
        &self,
        topic_id: i64,
        partition: i32,
        mut object: BytesMut,
    ) -> Result<Written> {
        let runs_bytes = object.len() as u64;
        write_footer(&mut object, &[(topic_id, partition as u32, 0, runs_bytes)]);
        let bytes = object.len() as i64;
        let (key, at) = self.put_object(object.freeze()).await?;
        Ok(Written {
            key,
            at,
            bytes,
            runs_bytes: runs_bytes as i64,
        })
    }

    /// Replaces the runs of a partition at base offsets `replaced` with `runs` in the object
    /// `written` (none when no run is left), in one transaction under the lease. False, and
    /// nothing changes, when some of those rows are gone: retention dropped them meanwhile.
    pub(crate) async fn swap_runs(
        &self,
        lease: &Lease,
        topic_id: i64,
        partition: i32,
        replaced: &[i64],
        written: Option<&Written>,
        runs: &[Run],
    ) -> Result<bool> {
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        check_held(&tx, lease, &self.node_id).await?;
        let params: [&(dyn ToSql + Sync); 3] = [&topic_id, &partition, &replaced];
        let dropped = drop_batches(
            &tx,
            "topic_id = $1 AND partition = $2 AND base_offset = ANY($3)",
            &params,
        )
        .await?;
        if dropped.batches != replaced.len() as u64 {
            tx.rollback().await?;
            return Ok(false);
        }
        if let Some(written) = written {
            let object_id: i64 = tx
                .query_one(
                    "INSERT INTO weir.objects (key, bytes, live_bytes) VALUES ($1, $2, $3)
                     RETURNING object_id",
                    &[&written.key.as_ref(), &written.bytes, &written.runs_bytes],
                )
                .await?
                .get(0);
            for run in runs {
                run.insert(&tx, topic_id, partition, object_id).await?;
            }
            self.check_commit_time(written.at)?;
        }
        tx.commit().await?;
        Ok(true)
    }
}
