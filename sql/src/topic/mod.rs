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
//!
//! `columns` holds the schema and builds columns from records, `bounds` analyses filters,
//! `scan` is the plan and its per-partition readers; this module plans.

mod bounds;
mod cache;
pub(crate) mod columns;
mod scan;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::DataFusionError;
use datafusion::datasource::sink::DataSinkExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
use datafusion::physical_plan::{ExecutionPlan, Partitioning, PlanProperties};
use weir_storage::{TopicMeta, Topics};

use crate::value_schema::TypedColumn;
use bounds::{Bounds, analyze};
pub use cache::ActiveCache;
pub(crate) use columns::RowBuilder;
pub use columns::{RECORD_COLUMNS, topic_schema, typed_columns};
use scan::PartitionRange;
pub use scan::TopicScan;

#[derive(Debug)]
pub struct TopicTable {
    /// Where the table reads and `INSERT INTO` appends.
    topics: Arc<dyn Topics>,
    topic: String,
    schema: SchemaRef,
    typed: Vec<TypedColumn>,
    /// The value schema's text: a columnar copy made under another is not read.
    value_schema: String,
    topic_id: [u8; 16],
    /// Where scans keep the columns they decode from active segments.
    cache: Option<Arc<ActiveCache>>,
}

impl TopicTable {
    /// The topic `meta` of `topics`.
    pub fn new(topics: Arc<dyn Topics>, meta: &TopicMeta) -> Result<TopicTable, crate::Error> {
        let typed = typed_columns(meta)?;
        Ok(TopicTable {
            topics,
            topic: meta.name.clone(),
            schema: Arc::new(topic_schema(&typed)),
            typed,
            value_schema: crate::columnar::value_schema(meta),
            topic_id: meta.id,
            cache: None,
        })
    }

    /// The table, its scans keeping what they decode from active segments in `cache`.
    pub fn with_cache(self, cache: Option<Arc<ActiveCache>>) -> TopicTable {
        TopicTable { cache, ..self }
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
            self.topics.clone(),
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
        // Finding where a time bound starts reads the log: on the blocking pool.
        let (topics, topic, read_bounds) =
            (self.topics.clone(), self.topic.clone(), bounds.clone());
        let ranges = tokio::task::spawn_blocking(move || {
            weir_storage::reactor::blocking(|| {
                partition_ranges(topics.as_ref(), &topic, &read_bounds)
            })
        })
        .await
        .map_err(|e| DataFusionError::External(Box::new(e)))??;
        let segments = ranges
            .iter()
            .map(|(range, bases)| (range.partition, bases.clone()))
            .collect();
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
            topics: self.topics.clone(),
            topic: self.topic.clone(),
            ranges,
            bounds,
            projection,
            projected,
            typed: self.typed.clone(),
            schema: self.schema.clone(),
            topic_id: self.topic_id,
            cache: self.cache.clone(),
            segments: Arc::new(segments),
            value_schema: self.value_schema.clone(),
            limit,
            properties: Arc::new(properties),
            metrics: ExecutionPlanMetricsSet::new(),
        }))
    }
}

/// The offsets of each partition `bounds` lets a scan read, with the partition's segment
/// starts; the high watermarks taken now are the query's snapshot.
fn partition_ranges(
    topics: &dyn Topics,
    topic: &str,
    bounds: &Bounds,
) -> datafusion::common::Result<Vec<(PartitionRange, Vec<u64>)>> {
    let meta = topics.existing_topic(topic).map_err(external)?;
    let mut ranges = Vec::new();
    for partition in 0..meta.partitions {
        if !bounds
            .partitions
            .as_ref()
            .is_none_or(|set| set.contains(&i64::from(partition)))
        {
            continue;
        }
        let log = topics.partition(topic, partition).map_err(external)?;
        let (log_start_offset, high_watermark) = log.offsets().map_err(external)?;
        // The snapshot: nothing appended after planning is read.
        let end =
            high_watermark.min(u64::try_from(bounds.offset.1).map_or(0, |o| o.saturating_add(1)));
        let mut start = log_start_offset.max(u64::try_from(bounds.offset.0).unwrap_or(0));
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
    Ok(ranges)
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
