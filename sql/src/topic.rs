//! A topic as a table: [`TopicTable`] (the `TableProvider`) plans a [`TopicScan`] (the
//! `ExecutionPlan`), one DataFusion partition per topic partition.
//!
//! Filters on `partition` (`=`, `IN`), `offset` and `timestamp` (comparisons, `BETWEEN`) are
//! pushed down *exactly*: they pick the partitions read, where a read starts (the offset
//! index, or the time index for a lower timestamp bound) and where it stops (an upper offset
//! bound), and the scan drops every row outside them, so DataFusion does not filter again. A
//! `LIMIT` stops each partition's read once it has that many rows; unused columns are never
//! built (values are parsed as JSON only when a typed column is read). The high watermark of
//! every partition is fixed when the query is planned: a query sees a snapshot.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use weir_storage::{Record, Storage, TopicMeta};

use crate::value_schema::{
    ColumnBuilder, TypedColumn, UTC, field_keys, parse_fields, parse_value_schema,
};

/// The columns every topic has, in order; typed columns follow.
pub const RECORD_COLUMNS: [&str; 8] = [
    "partition",
    "offset",
    "timestamp",
    "key",
    "value",
    "headers",
    "key_text",
    "value_text",
];

/// Rows per record batch a scan produces.
const BATCH_ROWS: usize = 8192;
/// Bytes asked of the log by a partition's first read; each further read asks twice as much,
/// up to [`READ_BYTES_MAX`], so a short range or a small LIMIT decodes little.
const READ_BYTES_FIRST: u64 = 4 << 10;
const READ_BYTES_MAX: u64 = 1 << 20;

fn headers_type() -> DataType {
    let fields = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ]);
    DataType::List(Arc::new(Field::new("item", DataType::Struct(fields), true)))
}

/// The schema of a topic: the record columns, then the declared ones.
pub fn topic_schema(typed: &[TypedColumn]) -> Schema {
    let mut fields = vec![
        // Nullable, so an INSERT may name only the columns it sets.
        Field::new("partition", DataType::Int32, true),
        Field::new("offset", DataType::Int64, true),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            true,
        ),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", headers_type(), true),
        Field::new("key_text", DataType::Utf8, true),
        Field::new("value_text", DataType::Utf8, true),
    ];
    fields.extend(typed.iter().map(TypedColumn::field));
    Schema::new(fields)
}

/// The typed columns a topic declares (`value.format=json` and `value.schema`).
pub fn typed_columns(meta: &TopicMeta) -> Result<Vec<TypedColumn>, crate::Error> {
    match (
        meta.configs.get("value.format").map(String::as_str),
        meta.configs.get("value.schema"),
    ) {
        (Some("json"), Some(schema)) => parse_value_schema(schema),
        _ => Ok(Vec::new()),
    }
}

#[derive(Debug)]
pub struct TopicTable {
    storage: Arc<Storage>,
    topic: String,
    schema: SchemaRef,
    typed: Vec<TypedColumn>,
}

impl TopicTable {
    pub fn new(storage: Arc<Storage>, meta: &TopicMeta) -> Result<TopicTable, crate::Error> {
        let typed = typed_columns(meta)?;
        Ok(TopicTable {
            storage,
            topic: meta.name.clone(),
            schema: Arc::new(topic_schema(&typed)),
            typed,
        })
    }
}

/// What the pushed-down filters allow; every bound is inclusive.
#[derive(Clone, Debug)]
struct Bounds {
    partitions: Option<BTreeSet<i64>>,
    offset: (i64, i64),
    timestamp_ms: (i64, i64),
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            partitions: None,
            offset: (i64::MIN, i64::MAX),
            timestamp_ms: (i64::MIN, i64::MAX),
        }
    }
}

impl Bounds {
    fn keeps(&self, partition: i64, r: &Record) -> bool {
        self.partitions
            .as_ref()
            .is_none_or(|set| set.contains(&partition))
            && (self.offset.0..=self.offset.1).contains(&r.offset)
            && (self.timestamp_ms.0..=self.timestamp_ms.1).contains(&r.timestamp)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Bounded {
    Partition,
    Offset,
    Timestamp,
}

/// The column a filter side names, looking through casts (DataFusion casts `timestamp` to the
/// unit of the literal it is compared with).
fn bounded_column(expr: &Expr) -> Option<Bounded> {
    match expr {
        Expr::Column(c) => match c.name.as_str() {
            "partition" => Some(Bounded::Partition),
            "offset" => Some(Bounded::Offset),
            "timestamp" => Some(Bounded::Timestamp),
            _ => None,
        },
        Expr::Cast(cast)
            if matches!(
                cast.field.data_type(),
                DataType::Timestamp(..) | DataType::Int64 | DataType::Int32
            ) =>
        {
            bounded_column(&cast.expr).filter(|b| {
                *b != Bounded::Timestamp
                    || matches!(cast.field.data_type(), DataType::Timestamp(..))
            })
        }
        _ => None,
    }
}

/// A literal as (value, units per millisecond as a divisor, or milliseconds per unit as a
/// multiplier): integers are plain, timestamps carry their unit.
fn literal(expr: &Expr, column: Bounded) -> Option<(i64, i64, i64)> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let timestamp = column == Bounded::Timestamp;
    let integer = |v: i64| (!timestamp).then_some((v, 1, 1));
    match value {
        ScalarValue::Int8(Some(v)) => integer(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => integer(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => integer(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => integer(*v),
        ScalarValue::UInt8(Some(v)) => integer(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => integer(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => integer(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => integer(i64::try_from(*v).ok()?),
        ScalarValue::TimestampSecond(Some(v), _) if timestamp => Some((*v, 1, 1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) if timestamp => Some((*v, 1, 1)),
        ScalarValue::TimestampMicrosecond(Some(v), _) if timestamp => Some((*v, 1000, 1)),
        ScalarValue::TimestampNanosecond(Some(v), _) if timestamp => Some((*v, 1_000_000, 1)),
        _ => None,
    }
}

fn flip(op: Operator) -> Option<Operator> {
    Some(match op {
        Operator::Eq => Operator::Eq,
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        _ => return None,
    })
}

/// Narrows `bounds` by `column op literal`; false when the form is not one this scan serves.
fn apply_comparison(
    bounds: &mut Bounds,
    column: Bounded,
    op: Operator,
    (value, divisor, multiplier): (i64, i64, i64),
) -> bool {
    // Inclusive bounds in the column's unit (milliseconds for timestamps).
    let floor = value.saturating_mul(multiplier).div_euclid(divisor);
    let ceil = if value.saturating_mul(multiplier).rem_euclid(divisor) == 0 {
        floor
    } else {
        floor.saturating_add(1)
    };
    let (low, high) = match op {
        Operator::Eq => (ceil, floor),
        Operator::Gt => (floor.saturating_add(1), i64::MAX),
        Operator::GtEq => (ceil, i64::MAX),
        Operator::Lt => (i64::MIN, ceil.saturating_sub(1)),
        Operator::LtEq => (i64::MIN, floor),
        _ => return false,
    };
    let range = match column {
        Bounded::Offset => &mut bounds.offset,
        Bounded::Timestamp => &mut bounds.timestamp_ms,
        Bounded::Partition => {
            if op != Operator::Eq {
                return false;
            }
            let set = BTreeSet::from([value]);
            bounds.partitions = Some(match bounds.partitions.take() {
                Some(known) => known.intersection(&set).copied().collect(),
                None => set,
            });
            return true;
        }
    };
    *range = (range.0.max(low), range.1.min(high));
    true
}

/// Folds `filter` into `bounds` when it is a form the scan serves exactly.
fn analyze(filter: &Expr, bounds: &mut Bounds) -> bool {
    match filter {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            // Both sides must be served for the conjunction to be exact; try on a copy.
            let mut narrowed = bounds.clone();
            let served = analyze(left, &mut narrowed) && analyze(right, &mut narrowed);
            if served {
                *bounds = narrowed;
            }
            served
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (column, op, value) = match (bounded_column(left), bounded_column(right)) {
                (Some(column), None) => (column, *op, literal(right, column)),
                (None, Some(column)) => match flip(*op) {
                    Some(op) => (column, op, literal(left, column)),
                    None => return false,
                },
                _ => return false,
            };
            value.is_some_and(|value| apply_comparison(bounds, column, op, value))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let Some(column) = bounded_column(expr) else {
                return false;
            };
            let (Some(low), Some(high)) = (literal(low, column), literal(high, column)) else {
                return false;
            };
            let mut narrowed = bounds.clone();
            let served = apply_comparison(&mut narrowed, column, Operator::GtEq, low)
                && apply_comparison(&mut narrowed, column, Operator::LtEq, high);
            if served {
                *bounds = narrowed;
            }
            served
        }
        Expr::InList(list)
            if !list.negated && bounded_column(&list.expr) == Some(Bounded::Partition) =>
        {
            let values: Option<BTreeSet<i64>> = list
                .list
                .iter()
                .map(|e| literal(e, Bounded::Partition).map(|(v, _, _)| v))
                .collect();
            let Some(values) = values else { return false };
            bounds.partitions = Some(match bounds.partitions.take() {
                Some(known) => known.intersection(&values).copied().collect(),
                None => values,
            });
            true
        }
        _ => false,
    }
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if analyze(f, &mut Bounds::default()) {
                    TableProviderFilterPushDown::Exact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    /// `INSERT INTO topic …`: see [`crate::sink::TopicSink`].
    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(DataFusionError::Plan(format!(
                "a topic is append-only; {insert_op} is not possible"
            )));
        }
        let sink = crate::sink::TopicSink::new(
            self.storage.clone(),
            self.topic.clone(),
            self.schema.clone(),
            self.typed.clone(),
        );
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let mut bounds = Bounds::default();
        for filter in filters {
            analyze(filter, &mut bounds);
        }
        let meta = self.storage.existing_topic(&self.topic).map_err(external)?;
        let mut ranges = Vec::new();
        for partition in 0..meta.partitions {
            if !bounds
                .partitions
                .as_ref()
                .is_none_or(|set| set.contains(&i64::from(partition)))
            {
                continue;
            }
            let log = self.storage.log(&self.topic, partition).map_err(external)?;
            // The snapshot: nothing appended after planning is read.
            let end = log
                .high_watermark()
                .min(u64::try_from(bounds.offset.1).map_or(0, |o| o.saturating_add(1)));
            let mut start = log
                .log_start_offset()
                .max(u64::try_from(bounds.offset.0).unwrap_or(0));
            if bounds.timestamp_ms.0 > i64::MIN {
                start = match log
                    .offset_for_timestamp(bounds.timestamp_ms.0)
                    .map_err(external)?
                {
                    Some((offset, _)) => start.max(offset),
                    None => end,
                };
            }
            ranges.push((
                PartitionRange {
                    partition,
                    start,
                    end,
                },
                log.segment_base_offsets(),
            ));
        }
        let ranges = split_at_segments(ranges, state.config().target_partitions());
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projected = Arc::new(self.schema.project(&projection)?);
        let partitions = ranges.len().max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected.clone()),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Arc::new(TopicScan {
            storage: self.storage.clone(),
            topic: self.topic.clone(),
            ranges,
            bounds,
            projection,
            projected,
            typed: self.typed.clone(),
            limit,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

pub(crate) fn external(e: impl std::error::Error + Send + Sync + 'static) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Cuts the ranges of partitions with several segments at segment starts, so that the scan
/// has about `target` ranges to read in parallel: each non-empty range gets up to
/// `target / ranges` pieces, cut at evenly spaced segment starts.
fn split_at_segments(
    ranges: Vec<(PartitionRange, Vec<u64>)>,
    target: usize,
) -> Vec<PartitionRange> {
    let live = ranges
        .iter()
        .filter(|(r, _)| r.start < r.end)
        .count()
        .max(1);
    let pieces_max = (target / live).max(1);
    let mut out = Vec::new();
    for (range, bases) in ranges {
        let cuts: Vec<u64> = bases
            .into_iter()
            .filter(|b| *b > range.start && *b < range.end)
            .collect();
        let pieces = pieces_max.min(cuts.len() + 1);
        let mut start = range.start;
        // The cut indexes rise strictly, since `pieces <= cuts.len() + 1`.
        for piece in 1..pieces {
            let cut = cuts[piece * cuts.len() / pieces];
            out.push(PartitionRange {
                end: cut,
                start,
                ..range
            });
            start = cut;
        }
        out.push(PartitionRange { start, ..range });
    }
    out
}

/// The offsets `[start, end)` of one partition a scan reads.
#[derive(Clone, Copy, Debug)]
struct PartitionRange {
    partition: u32,
    start: u64,
    end: u64,
}

#[derive(Debug)]
pub struct TopicScan {
    storage: Arc<Storage>,
    topic: String,
    ranges: Vec<PartitionRange>,
    bounds: Bounds,
    /// Indexes into the table schema of the columns produced.
    projection: Vec<usize>,
    projected: SchemaRef,
    typed: Vec<TypedColumn>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
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
        let reader = PartitionReader {
            storage: self.storage.clone(),
            topic: self.topic.clone(),
            range: self.ranges.get(partition).copied(),
            bounds: self.bounds.clone(),
            projection: self.projection.clone(),
            schema: self.projected.clone(),
            typed: self.typed.clone(),
            json_keys: field_keys(&self.typed, &self.projection),
            rows_left: self.limit.unwrap_or(usize::MAX),
            pending: std::collections::VecDeque::new(),
            read_bytes: READ_BYTES_FIRST,
            records_read: MetricBuilder::new(&self.metrics).counter("records_read", partition),
            batches_read: MetricBuilder::new(&self.metrics).counter("reads", partition),
        };
        let stream = futures::stream::unfold(Some(reader), |reader| async move {
            let mut reader = reader?;
            let read = tokio::task::spawn_blocking(move || {
                let batch = reader.next_batch();
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
    storage: Arc<Storage>,
    topic: String,
    range: Option<PartitionRange>,
    bounds: Bounds,
    projection: Vec<usize>,
    schema: SchemaRef,
    typed: Vec<TypedColumn>,
    /// The top-level JSON fields the projected typed columns read; empty when they read none.
    json_keys: Vec<String>,
    rows_left: usize,
    /// Records decoded by the last read and not yet used: a batch of rows can end inside one.
    pending: std::collections::VecDeque<Record>,
    read_bytes: u64,
    records_read: Count,
    batches_read: Count,
}

impl PartitionReader {
    fn next_batch(&mut self) -> datafusion::common::Result<Option<RecordBatch>> {
        let Some(range) = self.range.as_mut() else {
            return Ok(None);
        };
        let log = self
            .storage
            .log(&self.topic, range.partition)
            .map_err(external)?;
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
        build_batch(
            &self.schema,
            &self.projection,
            &self.typed,
            &self.json_keys,
            partition,
            &rows,
        )
        .map(Some)
    }
}

fn text(bytes: Option<&[u8]>) -> Option<&str> {
    bytes.and_then(|b| std::str::from_utf8(b).ok())
}

/// The projected columns of `rows`.
fn build_batch(
    schema: &SchemaRef,
    projection: &[usize],
    typed: &[TypedColumn],
    json_keys: &[String],
    partition: i64,
    rows: &[Record],
) -> datafusion::common::Result<RecordBatch> {
    // Only the fields the projected typed columns read are built from each value.
    let parsed: Vec<Option<serde_json::Value>> = if json_keys.is_empty() {
        Vec::new()
    } else {
        rows.iter()
            .map(|r| parse_fields(r.value.as_ref()?, json_keys))
            .collect()
    };
    let n = rows.len();
    let columns: Vec<ArrayRef> = projection
        .iter()
        .map(|index| -> ArrayRef {
            match *index {
                0 => {
                    let mut b = Int32Builder::with_capacity(n);
                    b.append_slice(&vec![partition as i32; n]);
                    Arc::new(b.finish())
                }
                1 => Arc::new(datafusion::arrow::array::Int64Array::from_iter_values(
                    rows.iter().map(|r| r.offset),
                )),
                2 => {
                    let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
                    rows.iter().for_each(|r| b.append_value(r.timestamp));
                    Arc::new(b.finish())
                }
                3 | 4 => {
                    let mut b = BinaryBuilder::with_capacity(n, 0);
                    for r in rows {
                        b.append_option(if *index == 3 {
                            r.key.as_deref()
                        } else {
                            r.value.as_deref()
                        });
                    }
                    Arc::new(b.finish())
                }
                5 => {
                    let DataType::List(item) = headers_type() else {
                        unreachable!("headers are a list")
                    };
                    let DataType::Struct(fields) = item.data_type().clone() else {
                        unreachable!("of structs")
                    };
                    let entries = StructBuilder::new(
                        fields,
                        vec![
                            Box::new(StringBuilder::new()),
                            Box::new(BinaryBuilder::new()),
                        ],
                    );
                    let mut b = ListBuilder::new(entries).with_field(item);
                    for r in rows {
                        for h in &r.headers {
                            let entry = b.values();
                            if let Some(k) = entry.field_builder::<StringBuilder>(0) {
                                k.append_value(&h.key);
                            }
                            if let Some(v) = entry.field_builder::<BinaryBuilder>(1) {
                                v.append_option(h.value.as_deref());
                            }
                            entry.append(true);
                        }
                        b.append(true);
                    }
                    Arc::new(b.finish())
                }
                6 | 7 => {
                    let mut b = StringBuilder::with_capacity(n, 0);
                    for r in rows {
                        b.append_option(text(if *index == 6 {
                            r.key.as_deref()
                        } else {
                            r.value.as_deref()
                        }));
                    }
                    Arc::new(b.finish())
                }
                typed_index => {
                    let column = &typed[typed_index - RECORD_COLUMNS.len()];
                    let mut b = ColumnBuilder::new(column, n);
                    parsed.iter().for_each(|v| b.append(v.as_ref()));
                    b.finish()
                }
            }
        })
        .collect();
    let options = RecordBatchOptions::new().with_row_count(Some(n));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}
