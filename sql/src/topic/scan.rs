//! The plan that reads a topic: [`TopicScan`], one DataFusion partition per range of offsets,
//! each read by a [`PartitionReader`] on the blocking pool.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::BooleanArray;
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::DataFusionError;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use weir_storage::{PartitionSource, Record, Topics};

use super::bounds::Bounds;
use super::cache::{ActiveCache, CHUNK_ROWS, Chunk, Lookup, SegmentKey};
use super::columns::RowBuilder;
use super::external;
use crate::value_schema::TypedColumn;

/// Rows per record batch a scan produces.
const BATCH_ROWS: usize = 8192;
/// Bytes asked of the log by a partition's first read; each further read asks twice as much,
/// up to [`READ_BYTES_MAX`], so a short range or a small LIMIT decodes little.
const READ_BYTES_FIRST: u64 = 4 << 10;
const READ_BYTES_MAX: u64 = 1 << 20;
/// Bytes of batches one count walks from headers; it reads no record it does not decode.
const COUNT_BYTES: u64 = 64 << 20;
/// Rows with no columns a scan that reads no column emits at once, at most (one count past it).
const COUNT_ROWS_MAX: u64 = 1 << 20;

/// The offsets `[start, end)` of one partition a scan reads.
#[derive(Clone, Copy, Debug)]
pub(super) struct PartitionRange {
    pub(super) partition: u32,
    pub(super) start: u64,
    pub(super) end: u64,
}

#[derive(Debug)]
pub struct TopicScan {
    pub(super) topics: Arc<dyn Topics>,
    pub(super) topic: String,
    pub(super) ranges: Vec<PartitionRange>,
    pub(super) bounds: Bounds,
    /// Indexes into the table schema of the columns produced.
    pub(super) projection: Vec<usize>,
    pub(super) projected: SchemaRef,
    pub(super) typed: Vec<TypedColumn>,
    /// The table's schema, which `projection` indexes.
    pub(super) schema: SchemaRef,
    pub(super) topic_id: [u8; 16],
    /// Where columns decoded from active segments are kept between queries.
    pub(super) cache: Option<Arc<ActiveCache>>,
    /// Each partition's segment bases when the scan was planned.
    pub(super) segments: Arc<BTreeMap<u32, Vec<u64>>>,
    pub(super) value_schema: String,
    pub(super) limit: Option<usize>,
    pub(super) properties: Arc<PlanProperties>,
    pub(super) metrics: ExecutionPlanMetricsSet,
}

impl DisplayAs for TopicScan {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|r| format!("{}:{}..{}", r.partition, r.start, r.end))
            .collect();
        write!(
            f,
            "TopicScan: topic={}, offsets=[{}]",
            self.topic,
            ranges.join(", ")
        )?;
        if let Some(limit) = self.limit {
            write!(f, ", limit={limit}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for TopicScan {
    fn name(&self) -> &str {
        "TopicScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::common::Result<TreeNodeRecursion>,
    ) -> datafusion::common::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::common::Result<SendableRecordBatchStream> {
        // A query that reads no column and keeps every record of the range (`count(*)`, or
        // with filters on `partition` and `offset` only, which the range already applies)
        // needs only how many records there are: batch headers say, unread.
        let counts_only = self.projection.is_empty() && !self.bounds.bounds_time();
        let reader = PartitionReader {
            topics: self.topics.clone(),
            source: None,
            topic: self.topic.clone(),
            range: self.ranges.get(partition).copied(),
            bounds: self.bounds.clone(),
            rows: RowBuilder::new(
                self.projected.clone(),
                self.projection.clone(),
                self.typed.clone(),
            ),
            rows_left: self.limit.unwrap_or(usize::MAX),
            schema: self.schema.clone(),
            typed: self.typed.clone(),
            topic_id: self.topic_id,
            cache: self.cache.clone(),
            segments: self.segments.clone(),
            value_schema: self.value_schema.clone(),
            projection: self.projection.clone(),
            projected: self.projected.clone(),
            copy: None,
            // A topic without a value schema has no copies.
            no_copy_before: if self.value_schema.is_empty() {
                u64::MAX
            } else {
                0
            },
            pending: VecDeque::new(),
            read_bytes: READ_BYTES_FIRST,
            counts_only,
            records_read: MetricBuilder::new(&self.metrics).counter("records_read", partition),
            records_counted: MetricBuilder::new(&self.metrics)
                .counter("records_counted", partition),
            batches_read: MetricBuilder::new(&self.metrics).counter("reads", partition),
            records_from_copies: MetricBuilder::new(&self.metrics)
                .counter("records_from_copies", partition),
            records_from_cache: MetricBuilder::new(&self.metrics)
                .counter("records_from_cache", partition),
            copies_refused: MetricBuilder::new(&self.metrics).counter("copies_refused", partition),
        };
        let stream = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            let read = tokio::task::spawn_blocking(move || {
                let batch = weir_storage::reactor::blocking(|| reader.next_batch());
                (reader, batch)
            })
            .await;
            match read {
                Ok((reader, Ok(Some(batch)))) => Some((Ok(batch), Some(reader))),
                Ok((_, Ok(None))) => None,
                Ok((_, Err(e))) => Some((Err(e), None)),
                Err(e) => Some((Err(DataFusionError::External(Box::new(e))), None)),
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.projected.clone(),
            stream,
        )))
    }
}

/// Reads one partition's range into record batches, on the blocking pool.
struct PartitionReader {
    topics: Arc<dyn Topics>,
    /// The partition the range reads, opened on first use.
    source: Option<Arc<dyn PartitionSource>>,
    topic: String,
    range: Option<PartitionRange>,
    bounds: Bounds,
    rows: RowBuilder,
    rows_left: usize,
    schema: SchemaRef,
    typed: Vec<TypedColumn>,
    topic_id: [u8; 16],
    cache: Option<Arc<ActiveCache>>,
    segments: Arc<BTreeMap<u32, Vec<u64>>>,
    value_schema: String,
    projection: Vec<usize>,
    projected: SchemaRef,
    /// The columnar copy being read, for the closed segment the range is in.
    copy: Option<crate::columnar::CopyRows>,
    /// The offsets below this one are read from the log: their segment has no copy to read.
    no_copy_before: u64,
    /// Records decoded by the last read and not yet used: a batch of rows can end inside one.
    pending: VecDeque<Record>,
    read_bytes: u64,
    /// Rows are counted from batch headers, with no column built.
    counts_only: bool,
    /// Records decoded.
    records_read: Count,
    /// Records counted from batch headers, not decoded.
    records_counted: Count,
    batches_read: Count,
    /// Rows read from columnar copies instead of the log.
    records_from_copies: Count,
    /// Rows read from the columns of active segments kept by earlier queries, not decoded.
    records_from_cache: Count,
    /// Columnar copies that did not open, read from the log instead.
    copies_refused: Count,
}

impl PartitionReader {
    /// The partition the range reads, opened on first use; `None` once the range is done.
    fn source(&mut self) -> datafusion::common::Result<Option<Arc<dyn PartitionSource>>> {
        let Some(range) = self.range else {
            return Ok(None);
        };
        if self.source.is_none() {
            let source = self
                .topics
                .partition(&self.topic, range.partition)
                .map_err(external)?;
            self.source = Some(source);
        }
        Ok(self.source.clone())
    }

    fn next_batch(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        if self.counts_only {
            return self.next_count();
        }
        if let Some(batch) = self.next_copied()? {
            return Ok(Some(batch));
        }
        if let Some(batch) = self.next_cached()? {
            return Ok(Some(batch));
        }
        let Some(log) = self.source()? else {
            return Ok(None);
        };
        let Some(range) = self.range.as_mut() else {
            return Ok(None);
        };
        let partition = i64::from(range.partition);
        let mut rows = Vec::new();
        let want = BATCH_ROWS.min(self.rows_left);
        while rows.len() < want && range.start < range.end {
            if self.pending.is_empty() {
                let records = log
                    .read_records(range.start, self.read_bytes)
                    .map_err(external)?;
                self.read_bytes = (self.read_bytes * 2).min(READ_BYTES_MAX);
                self.batches_read.add(1);
                self.records_read.add(records.len());
                let Some(last) = records.last() else { break };
                let next = u64::try_from(last.offset).unwrap_or(0).saturating_add(1);
                self.pending.extend(
                    records
                        .into_iter()
                        .filter(|r| u64::try_from(r.offset).is_ok_and(|o| o >= range.start)),
                );
                if self.pending.is_empty() {
                    // Past a gap that compaction left.
                    range.start = next.min(range.end);
                    continue;
                }
            }
            let Some(r) = self.pending.pop_front() else {
                break;
            };
            let offset = u64::try_from(r.offset).unwrap_or(0);
            if offset >= range.end {
                range.start = range.end;
                break;
            }
            range.start = offset + 1;
            if self.bounds.keeps(partition, &r) {
                rows.push(r);
            }
        }
        if rows.is_empty() {
            self.range = None;
            return Ok(None);
        }
        self.rows_left -= rows.len();
        if self.rows_left == 0 {
            self.range = None;
        }
        self.rows.build(partition, &rows).map(Some)
    }

    /// The next rows from a columnar copy, when the range's next offsets lie in a closed
    /// segment that has a current one (the range applies the partition and offset bounds, the
    /// copy's reader the timestamp bounds); `None` to read the log.
    fn next_copied(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let Some(source) = self.source()? else {
            return Ok(None);
        };
        // Only a segmented log's closed segments have copies.
        let Some(log) = source.log() else {
            return Ok(None);
        };
        let Some(range) = self.range.as_mut() else {
            return Ok(None);
        };
        if !self.pending.is_empty() || range.start < self.no_copy_before {
            return Ok(None);
        }
        loop {
            if let Some(copy) = self.copy.as_mut() {
                if let Some(batch) = copy.next_batch().map_err(external)? {
                    let batch = batch.slice(0, batch.num_rows().min(self.rows_left));
                    self.rows_left -= batch.num_rows();
                    self.records_from_copies.add(batch.num_rows());
                    if self.rows_left == 0 {
                        self.range = None;
                    }
                    return Ok(Some(batch));
                }
                range.start = copy.stop;
                self.copy = None;
            }
            if range.start >= range.end {
                return Ok(None);
            }
            let bases = self
                .segments
                .get(&range.partition)
                .map_or(&[][..], Vec::as_slice);
            let at = bases.partition_point(|b| *b <= range.start);
            let (Some(&base), Some(&end)) =
                (at.checked_sub(1).and_then(|i| bases.get(i)), bases.get(at))
            else {
                // The segment that was active when the scan was planned: never copied.
                self.no_copy_before = u64::MAX;
                return Ok(None);
            };
            let copy = crate::columnar::open_rows(
                log,
                (base, end),
                (range.start, range.end.min(end)),
                self.bounds.timestamp_ms,
                &self.value_schema,
                (&self.projection, &self.projected),
                BATCH_ROWS,
            );
            match copy {
                Ok(Some(copy)) => self.copy = Some(copy),
                Ok(None) => {
                    self.no_copy_before = end;
                    return Ok(None);
                }
                // A copy that does not open is read around: the log holds the same rows.
                Err(_) => {
                    self.copies_refused.add(1);
                    self.no_copy_before = end;
                    return Ok(None);
                }
            }
        }
    }

    /// The next rows from the cache of decoded active segments, when the range's next offsets
    /// lie in the segment that was active when the scan was planned; what the cache lacks is
    /// decoded from the log and kept. `None` to read the log, or when the range is done.
    fn next_cached(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let Some(cache) = self.cache.clone() else {
            return Ok(None);
        };
        let Some(source) = self.source()? else {
            return Ok(None);
        };
        let (Some(range), Some(_)) = (self.range, source.log()) else {
            return Ok(None);
        };
        let base = self
            .segments
            .get(&range.partition)
            .and_then(|bases| bases.last().copied());
        // A LIMIT smaller than a chunk reads the few records it needs from the log.
        let cached =
            |b: &u64| range.start >= *b && self.pending.is_empty() && self.rows_left >= CHUNK_ROWS;
        let Some(base) = base.filter(cached) else {
            return Ok(None);
        };
        let key = SegmentKey {
            topic_id: self.topic_id,
            partition: range.partition,
            base,
            value_schema: self.value_schema.clone(),
        };
        let mut start = range.start;
        while start < range.end {
            let (chunk, hit) = self.chunk_at(&cache, &key, &*source, (start, range.end))?;
            let from = chunk.offsets.partition_point(|o| *o < start as i64);
            let to = chunk.offsets.partition_point(|o| *o < range.end as i64);
            let to = to.min(from + BATCH_ROWS.min(self.rows_left));
            start = chunk
                .offsets
                .get(to)
                .map_or(chunk.next, |o| *o as u64)
                .clamp(start + 1, range.end);
            if let Some(batch) = self.rows_of(&chunk, from..to)? {
                self.range = (start < range.end).then_some(PartitionRange { start, ..range });
                self.rows_left -= batch.num_rows();
                if hit {
                    self.records_from_cache.add(batch.num_rows());
                }
                if self.rows_left == 0 {
                    self.range = None;
                }
                return Ok(Some(batch));
            }
        }
        self.range = None;
        Ok(None)
    }

    /// The chunk of `key`'s segment holding offset `start` with this scan's columns, and
    /// whether the cache held it so; what it lacks is decoded from the log (up to `end`) and
    /// kept.
    fn chunk_at(
        &self,
        cache: &ActiveCache,
        key: &SegmentKey,
        source: &dyn PartitionSource,
        (start, end): (u64, u64),
    ) -> datafusion::common::Result<(Arc<Chunk>, bool)> {
        let partition = key.partition;
        match cache.find(key, start) {
            Lookup::Hit(chunk) if chunk.holds(&self.projection) => Ok((chunk, true)),
            Lookup::Hit(chunk) => {
                // Built by queries that read other columns: this one's are added.
                let missing: Vec<usize> = chunk.lacking(&self.projection).collect();
                let offsets = (chunk.first, chunk.next);
                let built = self.decode(source, partition, offsets, &missing)?;
                let Some(joined) = chunk.joined(&built) else {
                    // Not the rows the chunk holds: this query reads the log's, unkept.
                    let built = self.decode(source, partition, offsets, &self.projection)?;
                    return Ok((built, false));
                };
                let joined = Arc::new(joined);
                cache.keep(key, joined.clone());
                Ok((joined, false))
            }
            Lookup::Miss { before, next_first } => {
                // A short chunk just before is built again with what follows it.
                let (first, columns) = match before {
                    Some(c) if c.next == start && c.rows() < CHUNK_ROWS => {
                        let lacking = c.lacking(&self.projection);
                        (c.first, c.columns.keys().copied().chain(lacking).collect())
                    }
                    _ => (start, self.projection.clone()),
                };
                let until = next_first.map_or(end, |n| n.min(end));
                let built = self.decode(source, partition, (first, until), &columns)?;
                if built.rows() > 0 {
                    cache.keep(key, built.clone());
                }
                Ok((built, false))
            }
        }
    }

    /// The rows `rows` of `chunk` the timestamp bound keeps, with the projected columns; `None`
    /// when it keeps none.
    fn rows_of(
        &self,
        chunk: &Chunk,
        rows: std::ops::Range<usize>,
    ) -> datafusion::common::Result<Option<RecordBatch>> {
        let columns = self
            .projection
            .iter()
            .map(|i| match chunk.columns.get(i) {
                Some(column) => Ok(column.slice(rows.start, rows.len())),
                None => Err(DataFusionError::Internal(format!(
                    "column {i} missing from a cached chunk"
                ))),
            })
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        let batch = RecordBatch::try_new_with_options(self.projected.clone(), columns, &options)?;
        let timestamps = &chunk.timestamps[rows];
        let batch = if !self.bounds.bounds_time()
            || timestamps.iter().all(|t| self.bounds.keeps_timestamp(*t))
        {
            batch
        } else {
            let keep: BooleanArray = timestamps
                .iter()
                .map(|t| Some(self.bounds.keeps_timestamp(*t)))
                .collect();
            filter_record_batch(&batch, &keep)?
        };
        Ok((batch.num_rows() > 0).then_some(batch))
    }

    /// A chunk of every record of the offsets `[first, until)` of `partition`, or of its first
    /// [`CHUNK_ROWS`], with the columns `columns` (indexes into the table's schema) decoded
    /// from the log.
    fn decode(
        &self,
        source: &dyn PartitionSource,
        partition: u32,
        (first, until): (u64, u64),
        columns: &[usize],
    ) -> datafusion::common::Result<Arc<Chunk>> {
        let mut records = Vec::new();
        let mut next = first;
        while records.len() < CHUNK_ROWS && next < until {
            let read = source
                .read_records(next, READ_BYTES_MAX)
                .map_err(external)?;
            self.batches_read.add(1);
            self.records_read.add(read.len());
            let Some(last) = read.last() else {
                next = until;
                break;
            };
            let after = u64::try_from(last.offset).map_or(until, |o| o + 1);
            let wanted = |r: &Record| u64::try_from(r.offset).is_ok_and(|o| o >= next && o < until);
            records.extend(
                read.into_iter()
                    .filter(wanted)
                    .take(CHUNK_ROWS - records.len()),
            );
            next = match records.last() {
                Some(r) if records.len() == CHUNK_ROWS => r.offset as u64 + 1,
                _ => after.clamp(next + 1, until),
            };
        }
        let schema = Arc::new(self.schema.project(columns)?);
        let built = RowBuilder::new(schema, columns.to_vec(), self.typed.clone())
            .build(i64::from(partition), &records)?;
        Ok(Arc::new(Chunk {
            first,
            next,
            offsets: records.iter().map(|r| r.offset).collect(),
            timestamps: records.iter().map(|r| r.timestamp).collect(),
            columns: columns
                .iter()
                .copied()
                .zip(built.columns().iter().cloned())
                .collect(),
        }))
    }

    /// Rows with no columns, as many as the range holds records, counted from batch headers.
    fn next_count(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let Some(log) = self.source()? else {
            return Ok(None);
        };
        let Some(range) = self.range.as_mut() else {
            return Ok(None);
        };
        let mut rows = 0u64;
        while rows < COUNT_ROWS_MAX && range.start < range.end {
            let count = log
                .count_records(range.start, range.end, COUNT_BYTES)
                .map_err(external)?;
            self.batches_read.add(1);
            self.records_counted.add(count.whole as usize);
            self.records_read.add(count.decoded as usize);
            rows += count.records();
            range.start = count.next_offset;
        }
        let rows = usize::try_from(rows).map_or(self.rows_left, |r| r.min(self.rows_left));
        self.rows_left -= rows;
        if rows == 0 || self.rows_left == 0 || range.start >= range.end {
            self.range = None;
        }
        if rows == 0 {
            return Ok(None);
        }
        self.rows.without_columns(rows).map(Some)
    }
}
