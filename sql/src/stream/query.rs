//! A continuous query, planned once by DataFusion and run a step at a time.
//!
//! The `SELECT` is planned over a [`Slot`] instead of the topic's log. A query without an
//! aggregate runs whole on each step's records. A windowed aggregate is cut where DataFusion
//! cuts it for parallel work: what is under the partial aggregate runs on each step's records,
//! and the partial aggregate's own expressions (group keys, arguments, `FILTER`) feed its rows
//! straight into the open windows' accumulators (DataFusion's own `GroupsAccumulator`s, so
//! every aggregate it has works); when the watermark passes a window's end, its accumulators
//! are evaluated and the rest of the plan (projection, `HAVING`) runs on the result. State is
//! bounded by the open windows and their groups, not by history.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, StringArray, StringBuilder,
    TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, filter_record_batch, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, SchemaProvider, Session};
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableProvider;
use datafusion::execution::TaskContext;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::{GroupsAccumulatorAdapter, PhysicalExpr};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, aggregate_expressions};
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::TryStreamExt;
use hashbrown::{DefaultHashBuilder, HashTable};
use weir_runtime::PipelineSpec;
use weir_runtime::continuous::{
    ByPartition, Compiler, Dead, Emitted, Gauges, Later, Operator, extend_by_partition,
};
use weir_runtime::parallel::in_parallel;
use weir_runtime::watermark::EventClock;
use weir_storage::{Record, Topics, locks};

use super::source::{Slot, SlotExec, SlotTable};
use super::statement::{Command, CreatePipeline, Options, parse};
use super::window::{TableSource, WINDOW_END, WINDOW_START, WindowSpec, times_ms};
use crate::Error;
use crate::functions::Functions;
use crate::runs::Runs;
use crate::sink::TopicSink;
use crate::topic::{RECORD_COLUMNS, RowBuilder, topic_schema, typed_columns};
use crate::value_schema::{TypedColumn, UTC};

/// Groups a windowed query holds in its open windows at most; a step that finds more fails,
/// and the pipeline pauses once that happens several times in a row.
pub const OPEN_GROUPS_MAX: u64 = 4_000_000;

/// The topic a continuous query reads, and its window: what planning its `SELECT` named.
#[derive(Debug)]
struct Sources {
    read: std::sync::Mutex<Option<(String, Option<WindowSpec>)>>,
    topics: Arc<dyn Topics>,
    slot: Arc<Slot>,
}

impl Sources {
    /// The step's records as topic `topic`'s table; a query reads one topic.
    fn table(&self, topic: &str, window: Option<&WindowSpec>) -> Result<Arc<dyn TableProvider>> {
        let meta = self
            .topics
            .existing_topic(topic)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let mut read = locks::lock(&self.read);
        match read.as_ref() {
            Some((seen, _)) if seen != topic => {
                return Err(DataFusionError::Plan(format!(
                    "a continuous query reads one topic; this one names {seen} and {topic}"
                )));
            }
            Some((_, Some(_))) if window.is_some() => {
                return Err(DataFusionError::Plan(
                    "a continuous query has one window".into(),
                ));
            }
            Some((_, Some(_))) => {}
            _ => *read = Some((topic.to_owned(), window.cloned())),
        }
        let typed = typed_columns(&meta).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Arc::new(SlotTable::new(
            self.slot.clone(),
            Arc::new(topic_schema(&typed)),
        )))
    }
}

impl TableSource for Sources {
    fn table(&self, window: &WindowSpec, _session: &dyn Session) -> Result<Arc<dyn TableProvider>> {
        Sources::table(self, &window.topic, Some(window))
    }
}

/// Topics as tables of a step's records.
#[derive(Debug)]
struct StepSchema(Arc<Sources>);

#[async_trait::async_trait]
impl SchemaProvider for StepSchema {
    fn table_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// Table functions' names are looked up here too before they are called: a name that is no
    /// topic is no table.
    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if !self.table_exist(name) {
            return Ok(None);
        }
        self.0.table(name, None).map(Some)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.0.topics.topic(name).ok().flatten().is_some()
    }
}

/// The aggregate of a windowed query, cut in two.
struct Aggregation {
    /// The plan above the final aggregate, reading the evaluated windows from `closed`.
    post: Arc<dyn ExecutionPlan>,
    closed: Arc<Slot>,
    functions: Vec<Arc<AggregateFunctionExpr>>,
    /// The group keys, each function's arguments and its `FILTER`, over a step's rows.
    keys: Vec<Arc<dyn PhysicalExpr>>,
    arguments: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    filters: Vec<Option<Arc<dyn PhysicalExpr>>>,
    /// The columns of each function's state in the partial aggregate's output.
    states: Vec<std::ops::Range<usize>>,
    groups: usize,
    /// The group column holding a window bound, and whether it is the start.
    window_column: usize,
    window_is_start: bool,
    converter: RowConverter,
    /// The partial aggregate's output: group columns, then states.
    partial_schema: SchemaRef,
    /// The final aggregate's output: group columns, then values.
    final_schema: SchemaRef,
    /// Output columns that key a result record: the group columns other than the window's.
    key_columns: Vec<String>,
}

/// The groups of one open window and their accumulators.
struct Groups {
    /// Each group's key's hash and index, found by its key; the hash is kept so the table
    /// grows without hashing the keys again.
    table: HashTable<(u64, usize)>,
    hasher: DefaultHashBuilder,
    /// The groups' keys (rows of the row converter), group `i`'s at index `i`.
    keys: Runs,
    accumulators: Vec<Box<dyn GroupsAccumulator>>,
}

/// Room for groups to reserve.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Room {
    groups: usize,
    key_bytes: usize,
}

impl Room {
    /// The room a new window makes: as much as the largest open window holds (`largest`), cut
    /// to what the bound on open groups leaves once the open windows' `held` room (used or
    /// not) is counted, so reserving never holds more than the bound allows.
    fn for_new_window(largest: Room, held: usize, open_groups_max: u64) -> Room {
        let left = usize::try_from(open_groups_max)
            .unwrap_or(usize::MAX)
            .saturating_sub(held);
        let groups = largest.groups.min(left);
        Room {
            groups,
            key_bytes: largest.key_bytes / largest.groups.max(1) * groups,
        }
    }
}

/// Rows for the windows' groups: a step's rows, or states saved by a snapshot.
struct Part<'a> {
    converter: &'a RowConverter,
    window: ArrayRef,
    keys: Vec<ArrayRef>,
    /// Each function's arguments, or its state columns.
    values: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<ArrayRef>>,
    feed: Feed,
}

/// What a [`Part`] holds, and so how its accumulators take it.
#[derive(Clone, Copy)]
enum Feed {
    /// A step's rows: each function's arguments, for `update_batch`.
    Rows,
    /// Saved states, for `merge_batch`.
    States,
}

impl Part<'_> {
    /// The part of these rows only.
    fn take(&self, rows: &UInt32Array) -> Result<Self> {
        let some = |columns: &[ArrayRef]| -> Result<Vec<ArrayRef>> {
            Ok(columns
                .iter()
                .map(|c| take(c, rows, None))
                .collect::<std::result::Result<_, _>>()?)
        };
        Ok(Part {
            converter: self.converter,
            window: take(&self.window, rows, None)?,
            keys: some(&self.keys)?,
            values: self.values.iter().map(|v| some(v)).collect::<Result<_>>()?,
            filters: self
                .filters
                .iter()
                .map(|f| f.as_ref().map(|f| take(f, rows, None)).transpose())
                .collect::<std::result::Result<_, _>>()?,
            feed: self.feed,
        })
    }
}

impl Groups {
    /// A window's empty groups, with room for `room`'s groups and key bytes: the windows of a
    /// query mostly see the same keys, and a table grown one doubling at a time moves every
    /// group it holds on each.
    fn new(aggregation: &Aggregation, room: Room) -> Result<Groups> {
        let Room { groups, key_bytes } = room;
        let accumulators = aggregation
            .functions
            .iter()
            .map(|function| {
                if function.groups_accumulator_supported() {
                    function.create_groups_accumulator()
                } else {
                    let function = function.clone();
                    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
                        function.create_accumulator()
                    })) as Box<dyn GroupsAccumulator>)
                }
            })
            .collect::<Result<_>>()?;
        Ok(Groups {
            table: HashTable::with_capacity(groups),
            hasher: DefaultHashBuilder::default(),
            keys: Runs::with_capacity(groups, key_bytes),
            accumulators,
        })
    }

    fn len(&self) -> usize {
        self.keys.count()
    }

    fn room(&self) -> Room {
        Room {
            groups: self.len(),
            key_bytes: self.keys.bytes(),
        }
    }

    /// Groups this window has room for, used or not.
    fn held(&self) -> usize {
        self.keys.room()
    }

    /// Adds a part's rows, all of this window, to their groups.
    fn add(&mut self, part: &Part) -> Result<()> {
        let rows = part.converter.convert_columns(&part.keys)?;
        let mut indices = Vec::with_capacity(rows.num_rows());
        let Groups {
            table,
            hasher,
            keys,
            ..
        } = self;
        for row in rows.iter() {
            let key: &[u8] = row.as_ref();
            let hash = hasher.hash_one(key);
            let found = table.find(hash, |&(h, i)| h == hash && keys.get(i) == key);
            let index = match found {
                Some(&(_, index)) => index,
                None => {
                    let index = keys.count();
                    keys.push(key);
                    table.insert_unique(hash, (hash, index), |&(h, _)| h);
                    index
                }
            };
            indices.push(index);
        }
        let total = self.len();
        for ((accumulator, values), filter) in self
            .accumulators
            .iter_mut()
            .zip(&part.values)
            .zip(&part.filters)
        {
            match part.feed {
                Feed::States => accumulator.merge_batch(values, &indices, total)?,
                Feed::Rows => {
                    let filter = filter.as_ref().map(|f| f.as_boolean());
                    accumulator.update_batch(values, &indices, filter, total)?;
                }
            }
        }
        Ok(())
    }

    fn group_columns(&self, aggregation: &Aggregation) -> Result<Vec<ArrayRef>> {
        let parser = aggregation.converter.parser();
        Ok(aggregation
            .converter
            .convert_rows((0..self.len()).map(|i| parser.parse(self.keys.get(i))))?)
    }

    /// The window's result rows, as the final aggregate makes them.
    fn finish(mut self, aggregation: &Aggregation) -> Result<RecordBatch> {
        let mut columns = self.group_columns(aggregation)?;
        for accumulator in &mut self.accumulators {
            columns.push(accumulator.evaluate(EmitTo::All)?);
        }
        Ok(RecordBatch::try_new(
            aggregation.final_schema.clone(),
            columns,
        )?)
    }

    /// The window's state as rows of the partial aggregate's output. Taking a state empties an
    /// accumulator, so each is given its state back, group `i` at index `i` as before.
    fn state(&mut self, aggregation: &Aggregation) -> Result<RecordBatch> {
        let mut columns = self.group_columns(aggregation)?;
        let total = self.len();
        let indices: Vec<usize> = (0..total).collect();
        for accumulator in &mut self.accumulators {
            let state = accumulator.state(EmitTo::All)?;
            accumulator.merge_batch(&state, &indices, total)?;
            columns.extend(state);
        }
        Ok(RecordBatch::try_new(
            aggregation.partial_schema.clone(),
            columns,
        )?)
    }
}

/// A step with fewer records than this builds its rows on one thread.
const PARALLEL_RECORDS_MIN: usize = 1024;

pub struct Query {
    topics: Arc<dyn Topics>,
    source: String,
    output: String,
    window: Option<WindowSpec>,
    options: Options,
    /// Builds the rows of the columns the plan reads, and the window's time.
    rows: RowBuilder,
    time_index: Option<usize>,
    input: Arc<Slot>,
    /// The whole plan, or the partial aggregate and what is under it.
    pre: Arc<dyn ExecutionPlan>,
    aggregation: Option<Aggregation>,
    output_schema: SchemaRef,
    task: Arc<TaskContext>,
    sink: Option<(Arc<TopicSink>, u32)>,
    windows: BTreeMap<(i64, i64), Groups>,
    clock: EventClock,
    open_groups_max: u64,
}

/// Plan nodes a continuous query cannot have, and why.
fn refused(plan: &dyn ExecutionPlan) -> Option<&'static str> {
    let name = plan.name();
    if name.contains("Sort") {
        Some("ORDER BY has no end in a stream; order the results when you read them")
    } else if name.contains("Limit") {
        Some("LIMIT has no end in a stream; limit the results when you read them")
    } else if name.contains("Window") && name != "WindowExec" {
        Some("OVER (…) window functions do not run in a continuous query; use TUMBLE or HOP")
    } else if plan.children().len() > 1 {
        Some("a continuous query reads one topic: joins and unions are not supported")
    } else {
        None
    }
}

impl Query {
    /// Plans `create`'s `SELECT` over the records of a step.
    pub async fn plan(
        topics: Arc<dyn Topics>,
        create: &CreatePipeline,
        functions: Option<&Functions>,
    ) -> Result<Query, Error> {
        let sources = Arc::new(Sources {
            read: Default::default(),
            topics: topics.clone(),
            slot: Default::default(),
        });
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_default_catalog_and_schema("weir", "public");
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(Vec::new())
            .build();
        let mut context = SessionContext::new_with_state(state);
        crate::json::register(&mut context)?;
        let catalog = Arc::new(MemoryCatalogProvider::new());
        catalog.register_schema("public", Arc::new(StepSchema(sources.clone())))?;
        context.register_catalog("weir", catalog);
        super::window::register(&context, sources.clone());
        for udf in functions
            .map(Functions::udfs)
            .transpose()?
            .into_iter()
            .flatten()
        {
            context.register_udf(udf);
        }
        let state = context.state();
        let logical = state.create_logical_plan(&create.query).await?;
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false)
            .verify_plan(&logical)?;
        let physical = state.create_physical_plan(&logical).await?;
        let Some((source, window)) = locks::lock(&sources.read).clone() else {
            return Err(Error::Refused(
                "a continuous query reads a topic: FROM topic or FROM TUMBLE(topic, …)".into(),
            ));
        };
        let closed = Arc::new(Slot::default());
        let (top, split) = cut(physical, &closed)?;
        let output_schema = top.schema();
        let (pre, aggregation) = match split {
            None => (top, None),
            Some(aggregate) => {
                let window = window.as_ref().ok_or_else(|| {
                    Error::Refused(
                        "an aggregate over a stream needs a window: FROM TUMBLE(topic, time_column, size) … GROUP BY window_start, …"
                            .into(),
                    )
                })?;
                let (aggregation, under_partial) =
                    Aggregation::new(&aggregate, top, closed, window)?;
                (under_partial, Some(aggregation))
            }
        };
        let meta = topics.existing_topic(&source)?;
        let typed = typed_columns(&meta)?;
        let input_schema: SchemaRef = Arc::new(topic_schema(&typed));
        // Only the columns the plan reads are built from the records, and the window's time.
        let mut wanted = sources.slot.wanted();
        if let Some(w) = &window {
            wanted.insert(w.time_column.clone());
        }
        let projection: Vec<usize> = (0..input_schema.fields().len())
            .filter(|i| wanted.contains(input_schema.field(*i).name()))
            .collect();
        let time_index = match &window {
            Some(w) => projection
                .iter()
                .position(|i| input_schema.field(*i).name() == &w.time_column),
            None => None,
        };
        Ok(Query {
            topics,
            source,
            output: create.output.clone(),
            window,
            options: create.options.clone(),
            rows: RowBuilder::new(
                Arc::new(
                    input_schema
                        .project(&projection)
                        .map_err(|e| Error::Query(e.into()))?,
                ),
                projection,
                typed,
            ),
            time_index,
            input: sources.slot.clone(),
            pre,
            aggregation,
            output_schema,
            task: Arc::new(TaskContext::from(&state)),
            sink: None,
            windows: BTreeMap::new(),
            clock: EventClock::new(meta.partitions, weir_storage::now_ms()),
            open_groups_max: OPEN_GROUPS_MAX,
        })
    }

    /// The query with another bound on the groups of its open windows.
    pub fn with_open_groups_max(self, open_groups_max: u64) -> Query {
        Query {
            open_groups_max,
            ..self
        }
    }

    /// The topic the query reads.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The columns of the query's rows.
    pub fn output_schema(&self) -> &SchemaRef {
        &self.output_schema
    }

    fn run(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Vec<RecordBatch>> {
        let stream = plan.execute(0, self.task.clone())?;
        futures::executor::block_on(stream.try_collect::<Vec<_>>())
    }

    /// Moves the watermark (see [`EventClock`]).
    fn advance(&mut self, now_ms: i64) {
        let options = &self.options;
        self.clock
            .advance(now_ms, options.watermark_delay_ms, options.idle_timeout_ms);
    }

    /// Evaluates every window whose end the watermark passed, oldest first. Their rows become
    /// records later, on the thread that saves them, while the next records are added.
    fn close(&mut self) -> Result<Vec<Later>> {
        let mut out: Vec<Later> = Vec::new();
        let Some(watermark) = self.clock.watermark_ms() else {
            return Ok(out);
        };
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().0 > watermark {
                break;
            }
            let ((end, _), groups) = entry.remove_entry();
            let Some(aggregation) = &self.aggregation else {
                break;
            };
            aggregation.closed.put(groups.finish(aggregation)?);
            let batches = self.run(&aggregation.post)?;
            let key_columns = aggregation.key_columns.clone();
            let (sink, partitions) = self.sink()?;
            let sink = sink.clone();
            out.push(Box::new(move || {
                // The rows of a window with many groups become records on every core.
                let records = in_parallel(batches, |batch| {
                    let batch = with_key_and_time(batch, &key_columns, end)?;
                    sink.records(&batch, partitions)
                });
                let mut made = ByPartition::new();
                for records in records {
                    extend_by_partition(&mut made, records.map_err(said)?);
                }
                Ok(made)
            }));
        }
        Ok(out)
    }

    /// The sink that turns result rows into records of the output topic, and its partitions.
    fn sink(&mut self) -> Result<(&Arc<TopicSink>, u32)> {
        let (sink, partitions) = match self.sink.take() {
            Some(made) => made,
            None => {
                let meta = self
                    .topics
                    .existing_topic(&self.output)
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let typed =
                    typed_columns(&meta).map_err(|e| DataFusionError::Plan(e.to_string()))?;
                let sink = Arc::new(TopicSink::new(
                    self.topics.clone(),
                    self.output.clone(),
                    Arc::new(topic_schema(&typed)),
                    typed,
                ));
                (sink, meta.partitions)
            }
        };
        Ok((&self.sink.insert((sink, partitions)).0, partitions))
    }

    /// The output records of rows of a query without windows.
    fn records(&mut self, batch: RecordBatch) -> Result<ByPartition> {
        let (sink, partitions) = self.sink()?;
        sink.records(&batch, partitions)
    }

    /// Takes the rows built from one step's records of `partition`.
    fn push_batch(&mut self, partition: u32, batch: RecordBatch, now_ms: i64) -> Result<Emitted> {
        let mut emitted = Emitted::default();
        let (Some(time_index), Some(window), Some(_)) =
            (self.time_index, self.window.clone(), &self.aggregation)
        else {
            // Without an aggregate, each record's rows are written as it comes.
            self.input.put(batch);
            for batch in self.run(&self.pre.clone())? {
                let records = self.records(batch)?;
                extend_by_partition(&mut emitted.records, records);
            }
            return Ok(emitted);
        };
        let open = self.open_groups();
        if open >= self.open_groups_max {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "{open} groups in open windows, the most a pipeline holds ({}): \
                 lower the watermark delay, the window size or the number of groups",
                self.open_groups_max
            )));
        }
        let times = times_ms(batch.column(time_index))?;
        let mut keep = Vec::with_capacity(times.len());
        let mut latest = None;
        for (row, t) in times.iter().enumerate() {
            let on_time = match (t, self.clock.watermark_ms()) {
                (None, _) => {
                    emitted.late.push(Dead {
                        index: row,
                        by: "sql".into(),
                        reason: format!("no event time: column {} is NULL", window.time_column),
                    });
                    false
                }
                (Some(t), Some(watermark)) if window.first_end(t) <= watermark => {
                    emitted.late.push(Dead {
                        index: row,
                        by: "sql".into(),
                        reason: format!(
                            "late: event time {} is behind the watermark {}; its window has closed",
                            ms_text(t),
                            ms_text(watermark)
                        ),
                    });
                    false
                }
                (Some(t), _) => {
                    latest = latest.max(Some(t));
                    true
                }
            };
            keep.push(on_time);
        }
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))?;
        self.input.put(kept);
        for rows in self.run(&self.pre.clone())? {
            if let (Some(aggregation), Some(window)) = (&self.aggregation, &self.window) {
                add(
                    &mut self.windows,
                    self.open_groups_max,
                    aggregation,
                    window,
                    aggregation.rows(&rows)?,
                )?;
            }
        }
        self.clock.saw(partition, latest, now_ms);
        self.advance(now_ms);
        emitted.later = self.close()?;
        Ok(emitted)
    }

    fn open_groups(&self) -> u64 {
        self.windows.values().map(|g| g.len() as u64).sum()
    }

    fn snapshot_bytes(&mut self) -> Result<Vec<u8>> {
        // Besides the windows' states, a snapshot holds the clock.
        let header =
            serde_json::to_vec(&self.clock).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend(header);
        let Some(aggregation) = &self.aggregation else {
            return Ok(bytes);
        };
        let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(
            &mut bytes,
            &aggregation.partial_schema,
        )?;
        for groups in self.windows.values_mut() {
            writer.write(&groups.state(aggregation)?)?;
        }
        writer.finish()?;
        drop(writer);
        Ok(bytes)
    }

    fn restore_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        let bad = |what: &str| DataFusionError::Execution(format!("saved state: {what}"));
        let length = bytes
            .get(..8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
            .ok_or_else(|| bad("too short"))?;
        let end = usize::try_from(length)
            .ok()
            .and_then(|l| l.checked_add(8))
            .filter(|e| *e <= bytes.len())
            .ok_or_else(|| bad("header length"))?;
        let clock: EventClock =
            serde_json::from_slice(&bytes[8..end]).map_err(|e| bad(&e.to_string()))?;
        self.clock.restore(clock, weir_storage::now_ms());
        self.windows.clear();
        if self.aggregation.is_none() || end == bytes.len() {
            return Ok(());
        }
        let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
            Cursor::new(&bytes[end..]),
            None,
        )?;
        let (Some(aggregation), Some(window)) = (&self.aggregation, &self.window) else {
            return Ok(());
        };
        for state in reader {
            add(
                &mut self.windows,
                self.open_groups_max,
                aggregation,
                window,
                aggregation.states(&state?),
            )?;
        }
        Ok(())
    }
}

/// Adds a part's rows to the groups of the windows they are of, opening windows as needed.
fn add(
    windows: &mut BTreeMap<(i64, i64), Groups>,
    open_groups_max: u64,
    aggregation: &Aggregation,
    window: &WindowSpec,
    part: Part,
) -> Result<()> {
    let bounds = times_ms(&part.window)?;
    let mut by_window: BTreeMap<(i64, i64), Vec<u32>> = BTreeMap::new();
    for (row, bound) in bounds.iter().enumerate() {
        let Some(bound) = bound else { continue };
        let (start, end) = if aggregation.window_is_start {
            (bound, window.end(bound))
        } else {
            (bound - window.size_ms, bound)
        };
        by_window.entry((end, start)).or_default().push(row as u32);
    }
    let whole = by_window.len() == 1 && bounds.null_count() == 0;
    for (key, rows) in by_window {
        let room = if windows.contains_key(&key) {
            Room::default()
        } else {
            Room::for_new_window(
                windows.values().map(Groups::room).max().unwrap_or_default(),
                windows.values().map(Groups::held).sum(),
                open_groups_max,
            )
        };
        let groups = match windows.entry(key) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(Groups::new(aggregation, room)?)
            }
        };
        if whole {
            groups.add(&part)?;
        } else {
            groups.add(&part.take(&UInt32Array::from(rows))?)?;
        }
    }
    Ok(())
}

/// Records by partition as (partition, record) pairs.
fn ms_text(ms: i64) -> String {
    datafusion::common::ScalarValue::TimestampMillisecond(Some(ms), Some(UTC.into())).to_string()
}

/// Adds a `key_text` (from the key columns) and a `timestamp` (the window's end) to result rows
/// that have none.
fn with_key_and_time(
    batch: RecordBatch,
    key_columns: &[String],
    window_end: i64,
) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    let has = |name: &str| schema.index_of(name).is_ok();
    let keys: Vec<ArrayRef> = key_columns
        .iter()
        .filter_map(|name| batch.column_by_name(name))
        .map(|c| cast(c, &DataType::Utf8))
        .collect::<std::result::Result<_, _>>()?;
    if !keys.is_empty() && !has("key") && !has("key_text") {
        let text: ArrayRef = match keys.as_slice() {
            [one] => one.clone(),
            _ => {
                let keys: Vec<&StringArray> = keys.iter().map(|k| k.as_string::<i32>()).collect();
                let mut text = StringBuilder::new();
                for row in 0..batch.num_rows() {
                    let parts: Vec<Option<&str>> = keys
                        .iter()
                        .map(|k| (!k.is_null(row)).then(|| k.value(row)))
                        .collect();
                    text.append_value(serde_json::json!(parts).to_string());
                }
                Arc::new(text.finish())
            }
        };
        fields.push(Field::new("key_text", DataType::Utf8, true));
        columns.push(text);
    }
    if !has("timestamp") {
        let times =
            TimestampMillisecondArray::from(vec![window_end; batch.num_rows()]).with_timezone(UTC);
        fields.push(Field::new("timestamp", times.data_type().clone(), false));
        columns.push(Arc::new(times));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

type Plan = Arc<dyn ExecutionPlan>;

/// Finds the final aggregate of `plan`: answers the plan with the final aggregate replaced by a
/// read of `closed`, and the final aggregate; or the plan as it is when it has none.
fn cut(plan: Plan, closed: &Arc<Slot>) -> Result<(Plan, Option<Plan>), Error> {
    if let Some(why) = refused(plan.as_ref()) {
        return Err(Error::Refused(why.into()));
    }
    if let Some(aggregate) = plan.downcast_ref::<AggregateExec>()
        && *aggregate.mode() == AggregateMode::Final
    {
        let read = SlotExec::new(closed.clone(), plan.schema(), None)?;
        let mut under = aggregate.input().clone();
        // A second aggregate under this one (DISTINCT in a subquery, nested GROUP BY).
        loop {
            if under
                .downcast_ref::<AggregateExec>()
                .is_some_and(|a| *a.mode() == AggregateMode::Final)
            {
                return Err(Error::Refused(
                    "a continuous query aggregates once: nested GROUP BY or DISTINCT over an aggregate is not supported".into(),
                ));
            }
            match under.children().first() {
                Some(child) => under = (*child).clone(),
                None => break,
            }
        }
        return Ok((Arc::new(read), Some(plan)));
    }
    let Some(child) = plan.children().first().map(|c| (*c).clone()) else {
        return Ok((plan, None));
    };
    let (child, aggregate) = cut(child, closed)?;
    if aggregate.is_none() {
        return Ok((plan, None));
    }
    Ok((replace_children_if_necessary(plan, vec![child])?, aggregate))
}

impl Aggregation {
    /// The aggregation of `final_plan`, and the plan under its partial aggregate (what runs on
    /// a step's rows).
    fn new(
        final_plan: &Arc<dyn ExecutionPlan>,
        post: Arc<dyn ExecutionPlan>,
        closed: Arc<Slot>,
        window: &WindowSpec,
    ) -> Result<(Aggregation, Plan), Error> {
        let aggregate = final_plan
            .downcast_ref::<AggregateExec>()
            .ok_or_else(|| Error::Refused("not an aggregate".into()))?;
        let partial_plan = aggregate.input().clone();
        let partial = partial_plan
            .downcast_ref::<AggregateExec>()
            .filter(|p| *p.mode() == AggregateMode::Partial)
            .ok_or_else(|| Error::Refused("a final aggregate without its partial one".into()))?;
        let partial_schema = partial_plan.schema();
        let final_schema = final_plan.schema();
        let groups = aggregate.group_expr().expr().len();
        if aggregate.group_expr().has_grouping_set() {
            return Err(Error::Refused(
                "GROUPING SETS, CUBE and ROLLUP are not supported in a continuous query".into(),
            ));
        }
        let names: Vec<&str> = final_schema.fields()[..groups]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        let (window_column, window_is_start) = match (
            names.iter().position(|n| *n == WINDOW_START),
            names.iter().position(|n| *n == WINDOW_END),
        ) {
            (Some(start), _) => (start, true),
            (None, Some(end)) => (end, false),
            (None, None) => {
                return Err(Error::Refused(format!(
                    "a windowed aggregate groups by its window: GROUP BY window_start, window_end, … (the window is {} ms over column {})",
                    window.size_ms, window.time_column
                )));
            }
        };
        let functions = partial.aggr_expr().to_vec();
        let keys = partial.group_expr().input_exprs();
        let arguments = aggregate_expressions(&functions, partial.mode(), 0)?;
        let filters = partial.filter_expr().to_vec();
        let mut states = Vec::with_capacity(functions.len());
        let mut at = groups;
        for function in &functions {
            let width = function.state_fields()?.len();
            states.push(at..at + width);
            at += width;
        }
        let converter = RowConverter::new(
            partial_schema.fields()[..groups]
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(|e| Error::Query(e.into()))?;
        let key_columns = names
            .iter()
            .filter(|n| **n != WINDOW_START && **n != WINDOW_END)
            .filter(|n| post.schema().index_of(n).is_ok())
            .map(|n| (*n).to_owned())
            .collect();
        let aggregation = Aggregation {
            post,
            closed,
            functions,
            keys,
            arguments,
            filters,
            states,
            groups,
            window_column,
            window_is_start,
            converter,
            partial_schema,
            final_schema,
            key_columns,
        };
        Ok((aggregation, partial.input().clone()))
    }

    /// A step's rows, from the plan under the partial aggregate, for the windows' groups.
    fn rows(&self, rows: &RecordBatch) -> Result<Part<'_>> {
        let evaluate = |exprs: &[Arc<dyn PhysicalExpr>]| -> Result<Vec<ArrayRef>> {
            exprs
                .iter()
                .map(|e| e.evaluate(rows)?.into_array(rows.num_rows()))
                .collect()
        };
        let keys = evaluate(&self.keys)?;
        let filters = self
            .filters
            .iter()
            .map(|f| Ok(evaluate(f.as_slice())?.pop()))
            .collect::<Result<Vec<_>>>()?;
        if let Some(filter) = filters
            .iter()
            .flatten()
            .find(|f| f.as_boolean_opt().is_none())
        {
            return Err(DataFusionError::Plan(format!(
                "an aggregate's FILTER is {}, not a boolean",
                filter.data_type()
            )));
        }
        Ok(Part {
            converter: &self.converter,
            window: keys[self.window_column].clone(),
            keys,
            values: self
                .arguments
                .iter()
                .map(|a| evaluate(a))
                .collect::<Result<_>>()?,
            filters,
            feed: Feed::Rows,
        })
    }

    /// States a snapshot saved: rows of the partial aggregate's output.
    fn states(&self, saved: &RecordBatch) -> Part<'_> {
        let columns = saved.columns();
        Part {
            converter: &self.converter,
            window: columns[self.window_column].clone(),
            keys: columns[..self.groups].to_vec(),
            values: self
                .states
                .iter()
                .map(|s| columns[s.clone()].to_vec())
                .collect(),
            filters: vec![None; self.states.len()],
            feed: Feed::States,
        }
    }
}

impl Operator for Query {
    fn push(
        &mut self,
        inputs: &[(u32, Vec<Record>)],
        now_ms: i64,
    ) -> Vec<std::result::Result<Emitted, String>> {
        // Building rows from records is most of a step's work, and each partition's are
        // built on their own; the rest runs in order.
        let rows = &self.rows;
        let build =
            |(partition, records): &(u32, Vec<Record>)| rows.build(i64::from(*partition), records);
        let records: usize = inputs.iter().map(|(_, records)| records.len()).sum();
        let batches = if records >= PARALLEL_RECORDS_MIN {
            in_parallel(inputs.iter().collect(), build)
        } else {
            inputs.iter().map(build).collect()
        };
        inputs
            .iter()
            .zip(batches)
            .map(|((partition, _), batch)| {
                batch
                    .and_then(|batch| self.push_batch(*partition, batch, now_ms))
                    .map_err(said)
            })
            .collect()
    }

    fn tick(&mut self, now_ms: i64) -> std::result::Result<Emitted, String> {
        if self.aggregation.is_none() {
            return Ok(Emitted::default());
        }
        self.advance(now_ms);
        let later = self.close().map_err(said)?;
        Ok(Emitted {
            later,
            ..Emitted::default()
        })
    }

    fn snapshot(&mut self) -> std::result::Result<Vec<u8>, String> {
        self.snapshot_bytes().map_err(said)
    }

    fn restore(&mut self, state: &[u8]) -> std::result::Result<(), String> {
        self.restore_bytes(state).map_err(said)
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            open_windows: self.windows.len() as u64,
            open_groups: self.open_groups(),
            watermark_ms: self.clock.watermark_ms(),
        }
    }
}

/// What went wrong, as the runtime shows it in a pipeline's status: DataFusion's message
/// without the kind of error it begins with (`Execution error: `).
fn said(e: DataFusionError) -> String {
    e.message().into_owned()
}

/// Makes the operators of SQL pipelines for the runtime.
pub struct ContinuousQueries {
    topics: Arc<dyn Topics>,
    functions: Option<Arc<Functions>>,
}

impl ContinuousQueries {
    /// Queries over `topics` that may call `functions`.
    pub fn new(topics: Arc<dyn Topics>, functions: Option<Arc<Functions>>) -> ContinuousQueries {
        ContinuousQueries { topics, functions }
    }
}

impl Compiler for ContinuousQueries {
    fn compile(&self, spec: &PipelineSpec) -> std::result::Result<Box<dyn Operator>, String> {
        let sql = spec.sql.as_deref().ok_or("not a SQL pipeline")?;
        let Some(Command::Create(create)) = parse(sql).map_err(|e| e.to_string())? else {
            return Err(format!(
                "pipeline {}: its statement is not a CREATE PIPELINE",
                spec.name
            ));
        };
        let handle = tokio::runtime::Handle::try_current().map_err(|e| e.to_string())?;
        let query = handle
            .block_on(Query::plan(
                self.topics.clone(),
                &create,
                self.functions.as_deref(),
            ))
            .map_err(|e| format!("pipeline {}: {e}", spec.name))?;
        Ok(Box::new(query))
    }
}

/// Whether a result column keeps its meaning in an output topic: a record column, or one of
/// the topic's typed columns. A topic without a value schema takes only record columns: any
/// other column would be left out of its records.
pub(crate) fn output_fits(output: &Schema, typed: &[TypedColumn]) -> Result<(), Error> {
    for field in output.fields() {
        let name = field.name();
        if !RECORD_COLUMNS.contains(&name.as_str()) && !typed.iter().any(|c| &c.name == name) {
            let fix = if typed.is_empty() {
                "it has no value.schema: set one, select the value as `value` or `value_text`"
            } else {
                "add it to its value.schema"
            };
            return Err(Error::Refused(format!(
                "the output topic has no column {name}: {fix}, or write to a new topic (CREATE PIPELINE makes it with the query's columns)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Room;

    #[test]
    fn a_new_window_reserves_no_more_than_the_bound_on_open_groups_leaves() {
        let largest = Room {
            groups: 1000,
            key_bytes: 16_000,
        };
        assert_eq!(Room::for_new_window(largest, 1024, 1_000_000), largest);
        // Other windows already hold room for 999 600 groups: 400 are left.
        assert_eq!(
            Room::for_new_window(largest, 999_600, 1_000_000),
            Room {
                groups: 400,
                key_bytes: 6400
            }
        );
        assert_eq!(
            Room::for_new_window(largest, 2_000_000, 1_000_000),
            Room::default()
        );
        assert_eq!(
            Room::for_new_window(Room::default(), 0, 1_000_000),
            Room::default()
        );
    }
}
