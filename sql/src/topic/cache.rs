//! Decoded columns of each partition's active segment, kept between queries.
//!
//! A closed segment is read from its columnar copy ([`crate::columnar`]); the active segment
//! has none, so every query parsed its records again: most of what a full scan costs once
//! copies exist, and all of what a query over the last minutes costs. [`ActiveCache`] keeps
//! the columns queries built from active segments, in chunks of offsets, so the next query
//! reads them without parsing and decodes only what was appended since.
//!
//! A chunk holds every record of its offsets (a scan's timestamp bound is applied when it reads
//! a chunk), so any query over those offsets can use it. It holds the columns some query read,
//! and gains the others when a query reads them.
//!
//! The records of a segment never change while it is active: the log only appends to it, and
//! compaction rewrites closed segments only. An entry is keyed by topic id, partition, segment
//! base and value schema, so a topic made again or a schema changed is never served old rows,
//! and a partition's entries for older segments are dropped when a query finds a newer one.
//! The bytes held are bounded (`--sql-cache-mib`): past the bound the least recently used
//! segments go, and a chunk that does not fit is used by its query and not kept.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use datafusion::arrow::array::{Array, ArrayRef};

/// Rows of one chunk, at most: a chunk that ends short is rebuilt with what was appended after
/// it, so the chunks of a growing segment stay this large.
pub(super) const CHUNK_ROWS: usize = 8192;

/// The segment an entry holds chunks of.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct SegmentKey {
    pub(super) topic_id: [u8; 16],
    pub(super) partition: u32,
    pub(super) base: u64,
    /// The value schema the typed columns were built under.
    pub(super) value_schema: String,
}

/// The rows of the offsets `[first, next)` of a segment, with some of the topic's columns.
#[derive(Debug)]
pub(super) struct Chunk {
    pub(super) first: u64,
    pub(super) next: u64,
    /// Each row's offset, rising.
    pub(super) offsets: Vec<i64>,
    /// Each row's timestamp, in milliseconds.
    pub(super) timestamps: Vec<i64>,
    /// Columns by their index in the topic's schema.
    pub(super) columns: BTreeMap<usize, ArrayRef>,
}

impl Chunk {
    pub(super) fn rows(&self) -> usize {
        self.offsets.len()
    }

    /// Whether every column of `projection` is built.
    pub(super) fn holds(&self, projection: &[usize]) -> bool {
        self.lacking(projection).next().is_none()
    }

    /// The columns of `projection` not built.
    pub(super) fn lacking<'a>(
        &'a self,
        projection: &'a [usize],
    ) -> impl Iterator<Item = usize> + 'a {
        (projection.iter().copied()).filter(|i| !self.columns.contains_key(i))
    }

    /// This chunk with the columns of `other` too, when `other` holds the same rows.
    pub(super) fn joined(&self, other: &Chunk) -> Option<Chunk> {
        let same =
            (self.first, self.next, &self.offsets) == (other.first, other.next, &other.offsets);
        same.then(|| Chunk {
            first: self.first,
            next: self.next,
            offsets: self.offsets.clone(),
            timestamps: self.timestamps.clone(),
            columns: (self.columns.iter())
                .chain(&other.columns)
                .map(|(i, c)| (*i, c.clone()))
                .collect(),
        })
    }

    fn bytes(&self) -> usize {
        (self.offsets.capacity() + self.timestamps.capacity()) * size_of::<i64>()
            + self
                .columns
                .values()
                .map(|c| c.get_array_memory_size())
                .sum::<usize>()
    }
}

/// What the cache holds at an offset.
pub(super) enum Lookup {
    /// The chunk whose offsets hold it.
    Hit(Arc<Chunk>),
    /// No chunk holds it: the chunk just before it, and where the next chunk starts.
    Miss {
        before: Option<Arc<Chunk>>,
        next_first: Option<u64>,
    },
}

/// Decoded columns of active segments; see the module doc.
#[derive(Debug)]
pub struct ActiveCache {
    bytes_max: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    segments: HashMap<SegmentKey, Segment>,
    bytes: usize,
    /// Rises with each use, for the least recently used segment.
    clock: u64,
}

#[derive(Debug, Default)]
struct Segment {
    /// Chunks by their first offset. Two queries building at once can leave chunks whose
    /// offsets overlap; each still holds the log's rows of its own offsets.
    chunks: BTreeMap<u64, Arc<Chunk>>,
    bytes: usize,
    used: u64,
}

impl ActiveCache {
    /// A cache holding at most `bytes_max` bytes of columns.
    pub fn new(bytes_max: usize) -> ActiveCache {
        ActiveCache {
            bytes_max,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes of columns held, and the bound.
    pub fn usage(&self) -> (usize, usize) {
        (self.lock().bytes, self.bytes_max)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What is held at `offset` of `key`'s segment.
    pub(super) fn find(&self, key: &SegmentKey, offset: u64) -> Lookup {
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        let Some(segment) = inner.segments.get_mut(key) else {
            return Lookup::Miss {
                before: None,
                next_first: None,
            };
        };
        segment.used = clock;
        let before = segment
            .chunks
            .range(..=offset)
            .next_back()
            .map(|(_, c)| c.clone());
        match before {
            Some(chunk) if chunk.next > offset => Lookup::Hit(chunk),
            before => Lookup::Miss {
                before,
                next_first: segment
                    .chunks
                    .range(offset..)
                    .next()
                    .map(|(first, _)| *first),
            },
        }
    }

    /// Keeps `chunk` in `key`'s segment, in place of the chunk with the same first offset, when
    /// it fits the bound once less recently used segments are dropped.
    pub(super) fn keep(&self, key: &SegmentKey, chunk: Arc<Chunk>) {
        let bytes = chunk.bytes();
        if bytes > self.bytes_max {
            return;
        }
        let mut inner = self.lock();
        inner.clock += 1;
        let clock = inner.clock;
        if !inner.segments.contains_key(key) {
            // A newer segment of the partition: the older ones are closed, read from copies.
            let older: Vec<SegmentKey> = inner
                .segments
                .keys()
                .filter(|k| k.topic_id == key.topic_id && k.partition == key.partition)
                .cloned()
                .collect();
            for k in older {
                inner.drop_segment(&k);
            }
        }
        let segment = inner.segments.entry(key.clone()).or_default();
        segment.used = clock;
        if let Some(replaced) = segment.chunks.remove(&chunk.first) {
            let freed = replaced.bytes();
            segment.bytes -= freed;
            inner.bytes -= freed;
        }
        while inner.bytes + bytes > self.bytes_max {
            let oldest = inner
                .segments
                .iter()
                .filter(|(k, _)| *k != key)
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone());
            let Some(oldest) = oldest else { break };
            inner.drop_segment(&oldest);
        }
        if inner.bytes + bytes > self.bytes_max {
            return;
        }
        inner.bytes += bytes;
        let segment = inner.segments.entry(key.clone()).or_default();
        segment.bytes += bytes;
        segment.chunks.insert(chunk.first, chunk);
    }
}

impl Inner {
    fn drop_segment(&mut self, key: &SegmentKey) {
        if let Some(segment) = self.segments.remove(key) {
            self.bytes -= segment.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use datafusion::arrow::array::Int32Array;
    use weir_storage::{BatchBuilder, Compression, Storage};

    use super::*;
    use crate::{QueryConfig, QueryEngine};

    fn key(partition: u32, base: u64) -> SegmentKey {
        SegmentKey {
            topic_id: [7; 16],
            partition,
            base,
            value_schema: String::new(),
        }
    }

    fn chunk(first: u64, rows: usize) -> Arc<Chunk> {
        let offsets: Vec<i64> = (first as i64..).take(rows).collect();
        let column: ArrayRef = Arc::new(Int32Array::from(vec![1; rows]));
        Arc::new(Chunk {
            first,
            next: first + rows as u64,
            timestamps: offsets.clone(),
            offsets,
            columns: BTreeMap::from([(9, column)]),
        })
    }

    #[test]
    fn finds_the_chunk_holding_an_offset_or_what_lies_around_it() {
        let cache = ActiveCache::new(usize::MAX);
        let k = key(0, 100);
        cache.keep(&k, chunk(100, 10));
        cache.keep(&k, chunk(120, 10));
        assert!(matches!(cache.find(&k, 105), Lookup::Hit(c) if c.first == 100));
        assert!(matches!(cache.find(&k, 129), Lookup::Hit(c) if c.first == 120));
        assert!(matches!(
            cache.find(&k, 112),
            Lookup::Miss { before: Some(c), next_first: Some(120) } if c.first == 100
        ));
        assert!(matches!(
            cache.find(&k, 130),
            Lookup::Miss { before: Some(c), next_first: None } if c.first == 120
        ));
        assert!(matches!(
            cache.find(&key(0, 130), 130),
            Lookup::Miss {
                before: None,
                next_first: None
            }
        ));
        assert!(chunk(0, 1).holds(&[9]) && !chunk(0, 1).holds(&[9, 10]));
        let mut other = Arc::into_inner(chunk(100, 10)).unwrap();
        other.columns = BTreeMap::from([(10, other.columns[&9].clone())]);
        assert!(chunk(100, 10).joined(&other).unwrap().holds(&[9, 10]));
        assert!(chunk(100, 9).joined(&other).is_none(), "other rows");
    }

    #[test]
    fn holds_no_more_than_its_bound_dropping_the_least_recently_used() {
        let one = chunk(0, 1000).bytes();
        let cache = ActiveCache::new(one * 2);
        cache.keep(&key(0, 0), chunk(0, 1000));
        cache.keep(&key(1, 0), chunk(0, 1000));
        assert_eq!(cache.usage().0, one * 2);
        // Partition 0 used last: partition 1 goes for partition 2.
        assert!(matches!(cache.find(&key(0, 0), 5), Lookup::Hit(_)));
        cache.keep(&key(2, 0), chunk(0, 1000));
        assert!(matches!(cache.find(&key(1, 0), 5), Lookup::Miss { .. }));
        assert!(matches!(cache.find(&key(0, 0), 5), Lookup::Hit(_)));
        assert_eq!(cache.usage(), (one * 2, one * 2));
        // A chunk larger than the bound is not kept, and drops nothing.
        cache.keep(&key(3, 0), chunk(0, 3000));
        assert_eq!(cache.usage().0, one * 2);
        assert!(matches!(cache.find(&key(3, 0), 5), Lookup::Miss { .. }));
        // Replacing a chunk frees the one it replaces.
        cache.keep(&key(0, 0), chunk(0, 1000));
        assert_eq!(cache.usage().0, one * 2);
        // A newer segment of a partition drops the older one's chunks.
        cache.keep(&key(0, 1000), chunk(1000, 10));
        assert!(matches!(cache.find(&key(0, 0), 5), Lookup::Miss { .. }));
        assert_eq!(cache.usage().0, one + chunk(1000, 10).bytes());
    }

    /// Appends `count` records to each partition of `logs` from record `from` on: null and
    /// non-JSON values, null keys, timestamps that go back now and then.
    fn append(storage: &Storage, from: i64, count: i64) {
        for partition in 0..2 {
            let log = storage.log("logs", partition).unwrap();
            for start in (from..from + count).step_by(100) {
                let mut batch = BatchBuilder::new(Compression::None);
                for i in start..(start + 100).min(from + count) {
                    let value = crate::test_records::value(i % 11, 200 + i % 7, i % 13);
                    let timestamp = 1_000 + i - (i % 10) * 3;
                    batch.push(crate::test_records::record(i, timestamp, value));
                }
                log.append(&batch.build().unwrap()).unwrap();
            }
        }
    }

    async fn answer(engine: &QueryEngine, query: &str) -> String {
        let answer = engine.sql(query).await.unwrap();
        datafusion::arrow::util::pretty::pretty_format_batches(&answer.batches)
            .unwrap()
            .to_string()
    }

    #[tokio::test]
    async fn scans_answer_the_same_with_kept_columns_as_from_the_log_while_it_grows() {
        let (_dir, storage, _) = crate::test_records::logs_topic(2, &[]);
        let engine = |cache_bytes_max| {
            let config = QueryConfig {
                cache_bytes_max,
                ..QueryConfig::default()
            };
            QueryEngine::new(storage.clone(), None, None, &config).unwrap()
        };
        // From the log alone; with room for every chunk; with room for about one.
        let (log, kept, tight) = (engine(0), engine(64 << 20), engine(400 << 10));
        let mut records = 0;
        for round in [7000, 5000, 130, 1, 9000] {
            append(&storage, records, round);
            records += round;
            let recent = 1_000 + records - 2500;
            let queries = [
                "SELECT partition, count(*), sum(status), min(host), max(host), count(value), \
                 sum(length(value_text)), count(key_text) FROM logs GROUP BY partition \
                 ORDER BY partition"
                    .to_owned(),
                format!(
                    "SELECT partition, count(*), sum(status), min(\"offset\"), max(host) FROM \
                     logs WHERE timestamp >= to_timestamp_millis({recent}) GROUP BY partition \
                     ORDER BY partition"
                ),
                r#"SELECT "offset", status, host, key_text, headers FROM logs WHERE partition = 1 AND "offset" >= 8185 AND "offset" < 8200 ORDER BY "offset""#.to_owned(),
                "SELECT count(*), count(host) FROM (SELECT host FROM logs LIMIT 9000)".to_owned(),
                format!(
                    "SELECT \"offset\", timestamp, status FROM logs WHERE partition = 0 AND \
                     timestamp BETWEEN to_timestamp_millis({recent}) AND \
                     to_timestamp_millis({}) ORDER BY \"offset\"",
                    recent + 20
                ),
            ];
            for query in &queries {
                let expected = answer(&log, query).await;
                for _ in 0..2 {
                    assert_eq!(answer(&kept, query).await, expected, "{query}");
                    assert_eq!(answer(&tight, query).await, expected, "{query}");
                }
            }
            let (held, bound) = tight.cache_usage();
            assert!(held > 0 && held <= bound, "{held} of {bound}");
        }
        assert_eq!(log.cache_usage(), (0, 0));
        // Run again, a full scan reads every row from what the first run kept.
        let full = "SELECT count(status) FROM logs";
        answer(&kept, full).await;
        let explained = answer(&kept, &format!("EXPLAIN ANALYZE {full}")).await;
        assert!(explained.contains("records_from_cache="), "{explained}");
        assert!(!explained.contains("records_from_cache=0"), "{explained}");
        assert!(explained.contains("records_read=0"), "{explained}");
    }
}
