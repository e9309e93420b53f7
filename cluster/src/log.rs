//! The shared log: partitions whose batches live in objects and whose offsets live in Postgres.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::broadcast;
use tokio_postgres::Transaction;
use weir_storage::PartitionSize;
use weir_storage::batch::{BatchHeader, set_base_offset, validate_record_set};
use weir_storage::producer::{Appended, ProducerStates};

use crate::cache::{CACHE_MEMORY_BYTES_DEFAULT, CacheStats, RangeCache, RangeKey};
use crate::lease::{Lease, check_held};
use crate::meta::META_QUEUE_MAX;
use crate::pool::{DB_CONNECTIONS_DEFAULT, Pool, PoolStats, Pooled, connect};
use crate::topics::TopicCache;
use crate::watch::{self, Advanced};
use crate::{ClusterError, Result, schema, store};

/// Largest object one flush writes. Larger flushes are split by the caller; the node's flush
/// buffer closes well before this (`cluster.flush.bytes`, 4 MiB by default).
pub const FLUSH_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Default for [`NodeConfig::flush_commit_ms_max`]: ten minutes, far longer than a flush.
pub const FLUSH_COMMIT_MS_MAX_DEFAULT: u64 = 600_000;

/// Default for [`NodeConfig::partitions_max`].
pub const CLUSTER_PARTITIONS_MAX_DEFAULT: u32 = 100_000;

/// Most `batches` rows one read looks at; each is one flush's worth of one partition.
pub const READ_ROWS_MAX: i64 = 64;

/// The last bytes of every object: its footer ends with this tag.
const FOOTER_TAG: &[u8; 8] = b"WEIROBJ1";

/// Record sets for one partition, as a producer sent them (base offsets are ignored).
#[derive(Debug, Clone)]
pub struct Append {
    pub topic: String,
    pub partition: u32,
    pub batches: Bytes,
}

/// What a read returns: whole batches with their offsets written in, and where the
/// partition's log stands.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub batches: Bytes,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// A record set that passed [`SharedLog::check`], ready for a flush.
#[derive(Debug, Clone)]
pub struct CheckedAppend {
    append: Append,
    headers: Vec<BatchHeader>,
    topic_id: i64,
    /// Offsets its batches span.
    offsets: u64,
    max_timestamp: i64,
}

impl CheckedAppend {
    /// Bytes of its record sets.
    pub fn bytes(&self) -> u64 {
        self.append.batches.len() as u64
    }
}

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The cluster database: a `postgres://` URL or a key=value connection string.
    pub db_url: String,
    /// The object store every node sees: `file:///<directory>` or `s3://<bucket>[/<prefix>]`.
    pub store_url: String,
    /// Settings of an S3 store (`aws_endpoint`, `aws_region`, `aws_allow_http`, …), over
    /// those of the `AWS_*` environment variables.
    pub store_options: Vec<(String, String)>,
    pub node_id: String,
    /// Bound of the memory tier of the cache of object byte ranges.
    pub cache_memory_bytes: u64,
    /// The directory of the cache's disk tier, which holds up to `cache_disk_bytes` of
    /// files; no disk tier without one, or with a bound of 0.
    pub cache_dir: Option<PathBuf>,
    pub cache_disk_bytes: u64,
    /// Longest a flush may take from writing its object to committing; garbage collection
    /// leaves alone objects younger than twice this.
    pub flush_commit_ms_max: u64,
    /// Most partitions of all topics together that this node lets the cluster grow to.
    pub partitions_max: u32,
    /// Connections the node keeps to the cluster database at most, 1 to
    /// [`DB_CONNECTIONS_MAX`](crate::DB_CONNECTIONS_MAX).
    pub db_connections: usize,
}

impl NodeConfig {
    pub fn new(db_url: &str, store_url: &str, node_id: &str) -> NodeConfig {
        NodeConfig {
            db_url: db_url.to_string(),
            store_url: store_url.to_string(),
            store_options: Vec::new(),
            node_id: node_id.to_string(),
            cache_memory_bytes: CACHE_MEMORY_BYTES_DEFAULT,
            cache_dir: None,
            cache_disk_bytes: 0,
            flush_commit_ms_max: FLUSH_COMMIT_MS_MAX_DEFAULT,
            partitions_max: CLUSTER_PARTITIONS_MAX_DEFAULT,
            db_connections: DB_CONNECTIONS_DEFAULT,
        }
    }
}

/// One node's handle on the cluster's partitions.
pub struct SharedLog {
    /// The node's connections, each opened again when it is found closed.
    db: Pool,
    /// Partitions advanced by any node's flush, from the node's listener.
    pub(crate) appended: Arc<broadcast::Sender<Advanced>>,
    /// Names of the metadata trees changed, as the listener hears them.
    pub(crate) meta_changed: Arc<broadcast::Sender<String>>,
    /// The topics this node has looked up.
    pub(crate) topics: Arc<TopicCache>,
    store: Arc<dyn ObjectStore>,
    cache: RangeCache,
    flush_commit_max: Duration,
    pub(crate) partitions_max: u32,
    pub(crate) node_id: String,
}

/// Record sets of one partition accepted in a flush and side by side in its object: one
/// `batches` row.
pub(crate) struct Run {
    pub base_offset: u64,
    pub last_offset: u64,
    pub byte_start: u64,
    pub byte_len: u64,
    pub max_timestamp: i64,
}

impl Run {
    /// Writes the run's `batches` row, in object `object_id`.
    pub(crate) async fn insert(
        &self,
        tx: &Transaction<'_>,
        topic_id: i64,
        partition: i32,
        object_id: i64,
    ) -> Result<()> {
        tx.execute(
            "INSERT INTO weir.batches (topic_id, partition, base_offset, last_offset,
               max_timestamp, object_id, byte_start, byte_len)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            &[
                &topic_id,
                &partition,
                &(self.base_offset as i64),
                &(self.last_offset as i64),
                &self.max_timestamp,
                &object_id,
                &(self.byte_start as i64),
                &(self.byte_len as i32),
            ],
        )
        .await?;
        Ok(())
    }
}

impl SharedLog {
    /// [`SharedLog::open_with`] with the default settings.
    pub async fn open(db_url: &str, store_url: &str, node_id: &str) -> Result<SharedLog> {
        SharedLog::open_with(&NodeConfig::new(db_url, store_url, node_id)).await
    }

    /// Connects to the cluster database, brings its schema up to date, and opens the object
    /// store.
    pub async fn open_with(config: &NodeConfig) -> Result<SharedLog> {
        let mut db = connect(&config.db_url).await?;
        schema::migrate(&mut db).await?;
        let topics = Arc::new(TopicCache::default());
        let (meta_changed, _) = broadcast::channel(META_QUEUE_MAX);
        let meta_changed = Arc::new(meta_changed);
        Ok(SharedLog {
            appended: watch::listen(&config.db_url, topics.clone(), meta_changed.clone()),
            meta_changed,
            db: Pool::new(&config.db_url, config.db_connections, db)?,
            topics,
            store: store::open(&config.store_url, &config.store_options)?,
            cache: RangeCache::new(
                config.cache_memory_bytes,
                config
                    .cache_dir
                    .as_deref()
                    .map(|dir| (dir, config.cache_disk_bytes)),
            )?,
            flush_commit_max: Duration::from_millis(config.flush_commit_ms_max),
            partitions_max: config.partitions_max,
            node_id: config.node_id.clone(),
        })
    }

    pub(crate) fn store(&self) -> &dyn ObjectStore {
        self.store.as_ref()
    }

    pub(crate) fn flush_commit_max(&self) -> Duration {
        self.flush_commit_max
    }

    /// What the node's range cache holds and has done.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// A connection to the cluster database, once one of the node's is free; a closed one is
    /// opened again first (the database restarted, or the network dropped it). A failure to
    /// reconnect is retriable.
    pub(crate) async fn db(&self) -> Result<Pooled<'_>> {
        self.db.get().await
    }

    /// What the node's connections to the cluster database are doing.
    pub fn db_stats(&self) -> PoolStats {
        self.db.stats()
    }

    /// Checks a record set as a node does before it parks it for a flush: the topic and
    /// partition exist, and every batch's header, length, CRC and size bound hold.
    pub async fn check(&self, append: Append) -> Result<CheckedAppend> {
        let topic = self.topic_of(&append.topic, append.partition).await?;
        let bytes = append.batches.len() as u64;
        if bytes > FLUSH_BYTES_MAX {
            return Err(ClusterError::FlushTooLarge {
                bytes,
                bytes_max: FLUSH_BYTES_MAX,
            });
        }
        let headers =
            validate_record_set(&append.batches, topic.batch_bytes_max).map_err(|source| {
                ClusterError::Batch {
                    topic: append.topic.clone(),
                    partition: append.partition,
                    source,
                }
            })?;
        Ok(CheckedAppend {
            topic_id: topic.id,
            offsets: headers.iter().map(BatchHeader::offset_count).sum(),
            max_timestamp: headers.iter().map(|h| h.max_timestamp).max().unwrap_or(-1),
            headers,
            append,
        })
    }

    /// Writes the checked record sets as one object and assigns their offsets in one
    /// transaction. Answers each append, in the order given, once committed: its base offset,
    /// the original base offset of a retried one, or why its producer's sequence refuses it.
    /// An error of the whole flush leaves no offset assigned.
    ///
    /// Under a `fence`, the transaction first checks that this node still holds that lease
    /// (its row locked `FOR SHARE`, as offset commits do): a node that lost it appends nothing
    /// and gets [`ClusterError::LeaseLost`], and a node taking the lease meanwhile waits for
    /// the commit, so it reads what the flush appended.
    pub async fn flush(
        &self,
        appends: &[CheckedAppend],
        fence: Option<&Lease>,
    ) -> Result<Vec<Result<u64>>> {
        if appends.is_empty() {
            return Ok(Vec::new());
        }
        let bytes: u64 = appends.iter().map(CheckedAppend::bytes).sum();
        if bytes > FLUSH_BYTES_MAX {
            return Err(ClusterError::FlushTooLarge {
                bytes,
                bytes_max: FLUSH_BYTES_MAX,
            });
        }

        // Group by partition in (topic id, partition) order: the object holds each partition's
        // record sets side by side, and the transaction locks partitions in this order so two
        // nodes flushing the same partitions never deadlock.
        let mut groups: BTreeMap<(i64, u32), Vec<usize>> = BTreeMap::new();
        for (index, checked) in appends.iter().enumerate() {
            let key = (checked.topic_id, checked.append.partition);
            groups.entry(key).or_default().push(index);
        }
        let mut object = BytesMut::with_capacity(bytes as usize + 28 * groups.len() + 12);
        let mut starts = vec![0u64; appends.len()];
        let mut footer = Vec::with_capacity(groups.len());
        for (&(topic_id, partition), indexes) in &groups {
            let group_start = object.len() as u64;
            for &index in indexes {
                starts[index] = object.len() as u64;
                object.extend_from_slice(&appends[index].append.batches);
            }
            footer.push((
                topic_id,
                partition,
                group_start,
                object.len() as u64 - group_start,
            ));
        }
        write_footer(&mut object, &footer);
        let object_bytes = object.len() as i64;
        let object = object.freeze();
        let (key, written_at) = self.put_object(object.clone()).await?;

        // The database is not held while the object is written: reads go on meanwhile.
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        if let Some(lease) = fence {
            check_held(&tx, lease, &self.node_id).await?;
        }
        let object_id: i64 = tx
            .query_one(
                "INSERT INTO weir.objects (key, bytes, live_bytes) VALUES ($1, $2, 0)
                 RETURNING object_id",
                &[&key.as_ref(), &object_bytes],
            )
            .await?
            .get(0);
        let mut answers: Vec<Result<u64>> = Vec::with_capacity(appends.len());
        answers.resize_with(appends.len(), || Ok(0));
        let mut live_bytes = 0u64;
        // Byte ranges of the rows written: readers ask for exactly these.
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        for (&(topic_id, partition), indexes) in &groups {
            let row = tx
                .query_opt(
                    "SELECT next_offset FROM weir.partitions
                     WHERE topic_id = $1 AND partition = $2 FOR UPDATE",
                    &[&topic_id, &(partition as i32)],
                )
                .await?;
            let Some(row) = row else {
                // The topic was deleted since these record sets were checked.
                for &index in indexes {
                    let append = &appends[index].append;
                    answers[index] = Err(self.unknown_partition(&append.topic, partition));
                }
                continue;
            };
            let next: i64 = row.get(0);
            let partition = partition as i32;
            let mut producers = load_producers(&tx, topic_id, partition, appends, indexes).await?;
            let mut offset = next as u64;
            // Accepted record sets next to each other in the object make one row.
            let mut runs: Vec<Run> = Vec::new();
            let mut previous_accepted = false;
            for &index in indexes {
                let checked = &appends[index];
                match producers.check_set(&checked.headers) {
                    Ok(None) => {}
                    Ok(Some((original, _))) => {
                        answers[index] = Ok(original);
                        previous_accepted = false;
                        continue;
                    }
                    Err(e) => {
                        answers[index] = Err(ClusterError::Producer(e));
                        previous_accepted = false;
                        continue;
                    }
                }
                answers[index] = Ok(offset);
                let mut batch_base = offset;
                for header in &checked.headers {
                    producers.record(&BatchHeader {
                        base_offset: batch_base as i64,
                        ..*header
                    });
                    batch_base += header.offset_count();
                }
                match runs.last_mut() {
                    Some(run) if previous_accepted => {
                        run.last_offset = offset + checked.offsets - 1;
                        run.byte_len += checked.bytes();
                        run.max_timestamp = run.max_timestamp.max(checked.max_timestamp);
                    }
                    _ => runs.push(Run {
                        base_offset: offset,
                        last_offset: offset + checked.offsets - 1,
                        byte_start: starts[index],
                        byte_len: checked.bytes(),
                        max_timestamp: checked.max_timestamp,
                    }),
                }
                previous_accepted = true;
                offset += checked.offsets;
                live_bytes += checked.bytes();
            }
            for run in &runs {
                ranges.push((run.byte_start, run.byte_len));
                run.insert(&tx, topic_id, partition, object_id).await?;
            }
            let max_timestamp = runs.iter().map(|r| r.max_timestamp).max().unwrap_or(-1);
            tx.execute(
                "UPDATE weir.partitions SET next_offset = $3,
                   max_timestamp = greatest(max_timestamp, $4)
                 WHERE topic_id = $1 AND partition = $2",
                &[&topic_id, &partition, &(offset as i64), &max_timestamp],
            )
            .await?;
            save_producers(&tx, topic_id, partition, &producers).await?;
            if !runs.is_empty() {
                // Delivered to every node's listener at commit, not before.
                tx.execute(
                    "SELECT pg_notify($1, $2)",
                    &[
                        &watch::CHANNEL,
                        &watch::payload(topic_id, partition, offset),
                    ],
                )
                .await?;
            }
        }
        // An object nothing was taken from (every record set a retry, refused, or for a
        // deleted topic) keeps no row, so garbage collection takes it.
        if live_bytes == 0 {
            tx.execute(
                "DELETE FROM weir.objects WHERE object_id = $1",
                &[&object_id],
            )
            .await?;
        } else {
            tx.execute(
                "UPDATE weir.objects SET live_bytes = $2 WHERE object_id = $1",
                &[&object_id, &(live_bytes as i64)],
            )
            .await?;
        }
        // Past this, give up and let the producer retry.
        self.check_commit_time(written_at)?;
        tx.commit().await?;
        // Readers of what was just written, most often tailing consumers, find it in the
        // cache. A copy, so the cache never holds the whole object for one range's sake.
        for (start, len) in ranges {
            let range = object.slice(start as usize..(start + len) as usize);
            let key = RangeKey {
                object: key.to_string(),
                start,
                len,
            };
            self.cache.keep(key, Bytes::copy_from_slice(&range));
        }
        Ok(answers)
    }

    /// A new idempotent producer id, unique across the cluster.
    pub async fn new_producer_id(&self) -> Result<i64> {
        let row = self
            .db()
            .await?
            .query_one("SELECT nextval('weir.producer_ids')", &[])
            .await?;
        Ok(row.get(0))
    }

    /// Reads whole batches from `offset` on, at most `bytes_max` bytes of them unless the first
    /// batch alone is larger (a reader must always be able to move on). An offset below the log
    /// start offset (retention dropped it) or past the end is out of range.
    pub async fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        bytes_max: u64,
    ) -> Result<Fetched> {
        let db = self.db().await?;
        let unknown = || self.unknown_partition(topic, partition);
        let row = db
            .query_opt(
                "SELECT p.topic_id, p.next_offset, p.log_start_offset
                 FROM weir.partitions p JOIN weir.topics t USING (topic_id)
                 WHERE t.name = $1 AND p.partition = $2",
                &[&topic, &(partition as i32)],
            )
            .await?
            .ok_or_else(unknown)?;
        let topic_id: i64 = row.get(0);
        let high_watermark = row.get::<_, i64>(1) as u64;
        let log_start_offset = row.get::<_, i64>(2) as u64;
        if offset > high_watermark || offset < log_start_offset {
            return Err(ClusterError::OffsetOutOfRange {
                topic: topic.to_string(),
                partition,
                offset,
                start: log_start_offset,
                end: high_watermark,
            });
        }
        let rows = db
            .query(
                "SELECT b.base_offset, b.last_offset, o.key, b.byte_start, b.byte_len
                 FROM weir.batches b JOIN weir.objects o USING (object_id)
                 WHERE b.topic_id = $1 AND b.partition = $2 AND b.last_offset >= $3
                 ORDER BY b.base_offset LIMIT $4",
                &[
                    &topic_id,
                    &(partition as i32),
                    &(offset as i64),
                    &READ_ROWS_MAX,
                ],
            )
            .await?;
        drop(db);
        let mut out = BytesMut::new();
        for row in rows {
            let base: i64 = row.get(0);
            let last: i64 = row.get(1);
            let key: String = row.get(2);
            let start = row.get::<_, i64>(3) as u64;
            let len = row.get::<_, i32>(4) as u64;
            if !out.is_empty() && out.len() as u64 + len > bytes_max {
                break;
            }
            let range = self.read_range(&key, start, len).await?;
            place_batches(&range, base, last, offset, &mut out).map_err(|reason| {
                ClusterError::CorruptObject {
                    key: key.clone(),
                    reason,
                }
            })?;
        }
        Ok(Fetched {
            batches: out.freeze(),
            high_watermark,
            log_start_offset,
        })
    }

    /// Bytes `start..start + len` of an object, through the cache.
    pub(crate) async fn read_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes> {
        let range_key = RangeKey {
            object: key.to_string(),
            start,
            len,
        };
        self.cache
            .get(&range_key, || async {
                let path = ObjectPath::from(key);
                Ok(self.store.get_range(&path, start..start + len).await?)
            })
            .await
    }

    /// Writes a new object of this node under a key no other write uses, and returns the key
    /// and when it was written. Until a transaction gives it a row it is garbage: see
    /// [`SharedLog::check_commit_time`].
    pub(crate) async fn put_object(&self, object: Bytes) -> Result<(ObjectPath, Instant)> {
        let key = ObjectPath::from(format!(
            "data/{}/{}",
            self.node_id,
            uuid::Uuid::now_v7().simple()
        ));
        let written_at = Instant::now();
        self.store.put(&key, PutPayload::from_bytes(object)).await?;
        Ok((key, written_at))
    }

    /// Refuses to commit a row for an object written at `written_at` once the flush commit
    /// bound has passed: garbage collection may by then take the object for a failed write's
    /// leftover and delete it.
    pub(crate) fn check_commit_time(&self, written_at: Instant) -> Result<()> {
        if written_at.elapsed() > self.flush_commit_max {
            return Err(ClusterError::FlushFailed(format!(
                "the flush took longer than {} ms to commit",
                self.flush_commit_max.as_millis()
            )));
        }
        Ok(())
    }

    /// A partition's log start offset and end (next offset), as committed now.
    pub async fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64)> {
        let topic_id = self.topic_id(topic, partition).await?;
        let row = self
            .db()
            .await?
            .query_opt(
                "SELECT log_start_offset, next_offset FROM weir.partitions
                 WHERE topic_id = $1 AND partition = $2",
                &[&topic_id, &(partition as i32)],
            )
            .await?
            .ok_or_else(|| self.unknown_partition(topic, partition))?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    /// Where a reader stepping backwards from `end` starts to read about `bytes` bytes: the
    /// base offset of the oldest committed run such that it and the runs after it, up to the
    /// one holding `end - 1`, take at most `bytes`. When not even that run fits, `end`, or with
    /// `at_least_one` that run's base offset, so that a reader always moves on. Never below
    /// the log start offset; looks back over at most [`READ_ROWS_MAX`] runs.
    pub async fn offset_bytes_before(
        &self,
        topic: &str,
        partition: u32,
        end: u64,
        bytes: u64,
        at_least_one: bool,
    ) -> Result<u64> {
        let (start, high_watermark) = self.offsets(topic, partition).await?;
        let end = end.min(high_watermark);
        if end <= start {
            return Ok(start);
        }
        let topic_id = self.topic_id(topic, partition).await?;
        let rows = self
            .db()
            .await?
            .query(
                "SELECT base_offset, sum(byte_len) OVER (ORDER BY base_offset DESC)::bigint
                 FROM weir.batches
                 WHERE topic_id = $1 AND partition = $2 AND base_offset < $3
                 ORDER BY base_offset DESC LIMIT $4",
                &[
                    &topic_id,
                    &(partition as i32),
                    &(end as i64),
                    &READ_ROWS_MAX,
                ],
            )
            .await?;
        let runs: Vec<(u64, u64)> = rows
            .iter()
            .map(|r| (r.get::<_, i64>(0) as u64, r.get::<_, i64>(1) as u64))
            .collect();
        let fitting = runs.iter().take_while(|(_, tail)| *tail <= bytes).last();
        Ok(match (fitting, runs.first()) {
            (Some((base, _)), _) => (*base).max(start),
            (None, Some((base, _))) if at_least_one => (*base).max(start),
            _ => end,
        })
    }

    /// Where a partition's log stands and what it holds.
    pub async fn partition_size(&self, topic: &str, partition: u32) -> Result<PartitionSize> {
        let topic_id = self.topic_id(topic, partition).await?;
        let mut sizes = self.sizes(topic_id, Some(partition)).await?;
        sizes
            .pop()
            .map(|(_, size)| size)
            .ok_or_else(|| self.unknown_partition(topic, partition))
    }

    /// Where each partition of a topic stands and what it holds, in partition order, read in
    /// one query.
    pub async fn partition_sizes(&self, topic: &str) -> Result<Vec<(u32, PartitionSize)>> {
        let topic_id = self.topic_id(topic, 0).await?;
        self.sizes(topic_id, None).await
    }

    /// The sizes of the topic's partitions, or of `partition` alone.
    async fn sizes(
        &self,
        topic_id: i64,
        partition: Option<u32>,
    ) -> Result<Vec<(u32, PartitionSize)>> {
        let rows = self
            .db()
            .await?
            .query(
                "SELECT p.partition, p.log_start_offset, p.next_offset, b.bytes, b.pieces
                 FROM weir.partitions p,
                   LATERAL (SELECT coalesce(sum(byte_len), 0)::bigint AS bytes,
                                   count(*) AS pieces
                            FROM weir.batches
                            WHERE topic_id = p.topic_id AND partition = p.partition) b
                 WHERE p.topic_id = $1 AND ($2::int IS NULL OR p.partition = $2)
                 ORDER BY p.partition",
                &[&topic_id, &partition.map(|p| p as i32)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|row| {
                let at = |i: usize| row.get::<_, i64>(i) as u64;
                let size = PartitionSize {
                    log_start_offset: at(1),
                    high_watermark: at(2),
                    bytes: at(3),
                    pieces: at(4),
                };
                (row.get::<_, i32>(0) as u32, size)
            })
            .collect())
    }

    /// The first batch holding a record stamped at or after `timestamp`: its base offset and
    /// largest timestamp (Kafka's ListOffsets by time, to the batch), or `None` when every
    /// record is older.
    pub async fn offset_for_timestamp(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>> {
        let topic_id = self.topic_id(topic, partition).await?;
        let row = self
            .db()
            .await?
            .query_opt(
                "SELECT base_offset, byte_len FROM weir.batches
                 WHERE topic_id = $1 AND partition = $2 AND max_timestamp >= $3
                 ORDER BY base_offset LIMIT 1",
                &[&topic_id, &(partition as i32), &timestamp],
            )
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (base, len) = (row.get::<_, i64>(0) as u64, row.get::<_, i32>(1) as u64);
        // The row is one flush's run of batches: the first of them late enough answers.
        let run = self.read(topic, partition, base, len).await?;
        let mut batches = &run.batches[..];
        while let Ok(header) = BatchHeader::parse(batches) {
            if header.max_timestamp >= timestamp {
                return Ok(Some((header.base_offset as u64, header.max_timestamp)));
            }
            batches = batches
                .get(header.total_bytes() as usize..)
                .unwrap_or_default();
        }
        Ok(None)
    }
}

/// Copies the batches of one row's byte range into `out`, from the first batch that holds
/// `offset` on, with their offsets written in: the row's first batch starts at `base`, each
/// next one where the previous ended. The batches must cover exactly `base..=last`.
pub(crate) fn place_batches(
    range: &[u8],
    base: i64,
    last: i64,
    offset: u64,
    out: &mut BytesMut,
) -> std::result::Result<(), String> {
    let mut pos = 0usize;
    let mut next = base;
    while pos < range.len() {
        let header = BatchHeader::parse(&range[pos..]).map_err(|e| e.to_string())?;
        let end = pos + header.total_bytes() as usize;
        if end > range.len() {
            return Err(format!(
                "batch at byte {pos} of the range runs past its end ({} bytes)",
                range.len()
            ));
        }
        let batch_last = next + i64::from(header.last_offset_delta);
        if batch_last >= offset as i64 {
            let at = out.len();
            out.extend_from_slice(&range[pos..end]);
            set_base_offset(&mut out[at..], next);
        }
        next = batch_last + 1;
        pos = end;
    }
    if next != last + 1 {
        return Err(format!(
            "batches cover offsets {base} to {}, the row says {base} to {last}",
            next - 1
        ));
    }
    Ok(())
}

/// Appends the footer: per partition (topic id u64, partition u32, byte start u64, byte length
/// u64), then the entry count (u32) and [`FOOTER_TAG`], all big-endian. It lets an object be
/// read without the database when debugging; reads go by the `batches` rows.
pub(crate) fn write_footer(object: &mut BytesMut, entries: &[(i64, u32, u64, u64)]) {
    for &(topic_id, partition, start, len) in entries {
        object.extend_from_slice(&(topic_id as u64).to_be_bytes());
        object.extend_from_slice(&partition.to_be_bytes());
        object.extend_from_slice(&start.to_be_bytes());
        object.extend_from_slice(&len.to_be_bytes());
    }
    object.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    object.extend_from_slice(FOOTER_TAG);
}

/// The remembered batches of the idempotent producers among `indexes`' record sets.
async fn load_producers(
    tx: &Transaction<'_>,
    topic_id: i64,
    partition: i32,
    appends: &[CheckedAppend],
    indexes: &[usize],
) -> Result<ProducerStates> {
    let mut ids: Vec<i64> = indexes
        .iter()
        .flat_map(|&i| appends[i].headers.iter())
        .filter(|h| h.producer_id >= 0 && h.base_sequence >= 0)
        .map(|h| h.producer_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut states = ProducerStates::default();
    if ids.is_empty() {
        return Ok(states);
    }
    let rows = tx
        .query(
            "SELECT producer_id, producer_epoch, first_sequence, last_sequence, base_offset,
               last_offset
             FROM weir.producer_batches
             WHERE topic_id = $1 AND partition = $2 AND producer_id = ANY($3)
             ORDER BY producer_id, base_offset",
            &[&topic_id, &partition, &ids],
        )
        .await?;
    for row in rows {
        let batch = Appended {
            first_sequence: row.get(2),
            last_sequence: row.get(3),
            base_offset: row.get::<_, i64>(4) as u64,
            last_offset: row.get::<_, i64>(5) as u64,
        };
        states.restore(row.get(0), row.get(1), batch);
    }
    Ok(states)
}

/// Replaces the remembered batches of every producer in `states` with what it holds now.
async fn save_producers(
    tx: &Transaction<'_>,
    topic_id: i64,
    partition: i32,
    states: &ProducerStates,
) -> Result<()> {
    for producer_id in states.producer_ids() {
        tx.execute(
            "DELETE FROM weir.producer_batches
             WHERE topic_id = $1 AND partition = $2 AND producer_id = $3",
            &[&topic_id, &partition, &producer_id],
        )
        .await?;
        let Some((epoch, batches)) = states.window(producer_id) else {
            continue;
        };
        for b in batches {
            tx.execute(
                "INSERT INTO weir.producer_batches (topic_id, partition, producer_id,
                   producer_epoch, first_sequence, last_sequence, base_offset, last_offset)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                &[
                    &topic_id,
                    &partition,
                    &producer_id,
                    &epoch,
                    &b.first_sequence,
                    &b.last_sequence,
                    &(b.base_offset as i64),
                    &(b.last_offset as i64),
                ],
            )
            .await?;
        }
    }
    Ok(())
}
