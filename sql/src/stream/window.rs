//! Event-time windows as table functions: `TUMBLE(topic, time_column, size)` and
//! `HOP(topic, time_column, slide, size)` are the topic's table with two more columns,
//! `window_start` and `window_end`, one row per window a record falls in (one for a tumbling
//! window, `size / slide` for a hopping one). A record without a time is in no window.
//!
//! The same functions serve a one-off query (over the topic's log) and a continuous one (over
//! the records of one step); [`TableSource`] says which table is under the windows.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{
    DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMillisecondType, UInt32Type,
};
use datafusion::catalog::{Session, TableFunctionArgs, TableFunctionImpl};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;

use crate::value_schema::UTC;

/// Windows one record may fall in: `size / slide` of a hopping window.
pub const HOP_WINDOWS_MAX: i64 = 100;
/// The shortest window: a millisecond.
const SIZE_MS_MIN: i64 = 1;

pub const WINDOW_START: &str = "window_start";
pub const WINDOW_END: &str = "window_end";

/// How records are cut into windows, by the time in one column.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowSpec {
    pub topic: String,
    pub time_column: String,
    /// Milliseconds between window starts; the size for a tumbling window.
    pub slide_ms: i64,
    pub size_ms: i64,
}

impl WindowSpec {
    /// The starts of the windows a record at `t` falls in, latest first.
    fn starts(&self, t: i64) -> impl Iterator<Item = i64> + '_ {
        let last = t.div_euclid(self.slide_ms) * self.slide_ms;
        (0..)
            .map(move |k| last - k * self.slide_ms)
            .take_while(move |start| start + self.size_ms > t)
    }

    /// The end of the first window a record at `t` falls in: once it has closed, the record
    /// is late.
    pub fn first_end(&self, t: i64) -> i64 {
        self.starts(t)
            .last()
            .map_or(t, |start| start + self.size_ms)
    }

    /// The end of the window starting at `start`.
    pub fn end(&self, start: i64) -> i64 {
        start + self.size_ms
    }
}

/// Makes the table the windows are over, for a topic named in `TUMBLE(…)` or `HOP(…)`.
pub trait TableSource: fmt::Debug + Send + Sync {
    fn table(&self, window: &WindowSpec, session: &dyn Session) -> Result<Arc<dyn TableProvider>>;
}

/// `TUMBLE` (`hopping: false`) or `HOP`.
#[derive(Debug)]
pub struct WindowFunction {
    hopping: bool,
    source: Arc<dyn TableSource>,
}

impl WindowFunction {
    pub fn tumble(source: Arc<dyn TableSource>) -> WindowFunction {
        WindowFunction {
            hopping: false,
            source,
        }
    }

    pub fn hop(source: Arc<dyn TableSource>) -> WindowFunction {
        WindowFunction {
            hopping: true,
            source,
        }
    }

    fn usage(&self) -> &'static str {
        if self.hopping {
            "HOP(topic, time_column, slide, size), e.g. HOP(logs, timestamp, INTERVAL '1 minute', INTERVAL '5 minutes')"
        } else {
            "TUMBLE(topic, time_column, size), e.g. TUMBLE(logs, timestamp, INTERVAL '1 minute')"
        }
    }

    /// The window a call's arguments describe.
    pub fn spec(&self, args: &[Expr]) -> Result<WindowSpec> {
        let usage = || DataFusionError::Plan(format!("expected {}", self.usage()));
        let (topic, time_column, intervals) = match args {
            [topic, time, rest @ ..] if rest.len() == 1 + usize::from(self.hopping) => (
                name(topic).ok_or_else(usage)?,
                name(time).ok_or_else(usage)?,
                rest,
            ),
            _ => return Err(usage()),
        };
        let intervals = intervals
            .iter()
            .map(|e| interval_ms(e).ok_or_else(usage))
            .collect::<Result<Vec<i64>>>()?;
        let (slide_ms, size_ms) = match intervals.as_slice() {
            [size] => (*size, *size),
            [slide, size] => (*slide, *size),
            _ => return Err(usage()),
        };
        if slide_ms < SIZE_MS_MIN || size_ms < SIZE_MS_MIN {
            return Err(DataFusionError::Plan(
                "a window's size and slide are positive intervals of days, hours, minutes, seconds or milliseconds".into(),
            ));
        }
        if size_ms < slide_ms || size_ms / slide_ms > HOP_WINDOWS_MAX {
            return Err(DataFusionError::Plan(format!(
                "HOP: the size is 1 to {HOP_WINDOWS_MAX} times the slide"
            )));
        }
        Ok(WindowSpec {
            topic,
            time_column,
            slide_ms,
            size_ms,
        })
    }
}

/// A topic or column named by an identifier or a string.
fn name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Column(column) if column.relation.is_none() => Some(column.name.clone()),
        Expr::Literal(ScalarValue::Utf8(Some(text)), _) => Some(text.clone()),
        _ => None,
    }
}

/// Milliseconds of a constant interval without months (a month has no fixed length).
fn interval_ms(expr: &Expr) -> Option<i64> {
    match expr {
        Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(v)), _) if v.months == 0 => {
            Some(i64::from(v.days) * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        Expr::Literal(ScalarValue::IntervalDayTime(Some(v)), _) => {
            Some(i64::from(v.days) * 86_400_000 + i64::from(v.milliseconds))
        }
        _ => None,
    }
}

impl TableFunctionImpl for WindowFunction {
    fn call_with_args(&self, args: TableFunctionArgs) -> Result<Arc<dyn TableProvider>> {
        let spec = self.spec(args.exprs())?;
        let inner = self.source.table(&spec, args.session())?;
        Ok(Arc::new(WindowTable::new(inner, spec)?))
    }
}

/// Registers `TUMBLE` and `HOP` over `source`. DataFusion looks a table function up by its name
/// as written, so both cases are registered.
pub fn register(context: &datafusion::prelude::SessionContext, source: Arc<dyn TableSource>) {
    for name in ["tumble", "TUMBLE"] {
        context.register_udtf(name, Arc::new(WindowFunction::tumble(source.clone())));
    }
    for name in ["hop", "HOP"] {
        context.register_udtf(name, Arc::new(WindowFunction::hop(source.clone())));
    }
}

/// A table with its rows cut into windows.
#[derive(Debug)]
pub struct WindowTable {
    inner: Arc<dyn TableProvider>,
    spec: WindowSpec,
    time_index: usize,
    schema: SchemaRef,
}

impl WindowTable {
    fn new(inner: Arc<dyn TableProvider>, spec: WindowSpec) -> Result<WindowTable> {
        let inner_schema = inner.schema();
        let time_index = inner_schema.index_of(&spec.time_column).map_err(|_| {
            DataFusionError::Plan(format!(
                "topic {} has no column {}: a window needs `timestamp` or a TIMESTAMP column of its value schema",
                spec.topic, spec.time_column
            ))
        })?;
        if !matches!(
            inner_schema.field(time_index).data_type(),
            DataType::Timestamp(..)
        ) {
            return Err(DataFusionError::Plan(format!(
                "column {} of topic {} is {}, not a TIMESTAMP: a window needs a time column",
                spec.time_column,
                spec.topic,
                inner_schema.field(time_index).data_type()
            )));
        }
        let mut fields: Vec<Field> = inner_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        for name in [WINDOW_START, WINDOW_END] {
            if inner_schema.index_of(name).is_ok() {
                return Err(DataFusionError::Plan(format!(
                    "topic {} has a column {name}, which a window adds",
                    spec.topic
                )));
            }
            fields.push(Field::new(name, window_type(), false));
        }
        Ok(WindowTable {
            inner,
            spec,
            time_index,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    pub fn spec(&self) -> &WindowSpec {
        &self.spec
    }
}

fn window_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let columns = self.inner.schema().fields().len();
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut inner_projection: Vec<usize> = wanted
            .iter()
            .copied()
            .filter(|i| *i < columns)
            .chain([self.time_index])
            .collect();
        inner_projection.sort_unstable();
        inner_projection.dedup();
        let child = self
            .inner
            .scan(state, Some(&inner_projection), &[], None)
            .await?;
        let position = |column: usize| inner_projection.iter().position(|i| *i == column);
        let outputs = wanted
            .iter()
            .map(|&i| match i.checked_sub(columns) {
                None => Output::Column(position(i).unwrap_or_default()),
                Some(0) => Output::Start,
                Some(_) => Output::End,
            })
            .collect();
        let schema = Arc::new(self.schema.project(&wanted)?);
        Ok(Arc::new(WindowExec::new(
            child,
            self.spec.clone(),
            position(self.time_index).unwrap_or_default(),
            outputs,
            schema,
        )))
    }
}

/// A column of a [`WindowExec`]'s output.
#[derive(Clone, Copy, Debug)]
enum Output {
    Column(usize),
    Start,
    End,
}

/// Repeats each row of its child once per window it falls in, adding the window's bounds.
#[derive(Debug)]
pub struct WindowExec {
    child: Arc<dyn ExecutionPlan>,
    spec: WindowSpec,
    time_index: usize,
    outputs: Vec<Output>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl WindowExec {
    fn new(
        child: Arc<dyn ExecutionPlan>,
        spec: WindowSpec,
        time_index: usize,
        outputs: Vec<Output>,
        schema: SchemaRef,
    ) -> WindowExec {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            child.properties().partitioning.clone(),
            child.properties().emission_type,
            child.properties().boundedness,
        );
        WindowExec {
            child,
            spec,
            time_index,
            outputs,
            schema,
            properties: Arc::new(properties),
        }
    }
}

/// The event times of a time column, in milliseconds.
pub fn times_ms(column: &ArrayRef) -> Result<TimestampMillisecondArray> {
    let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    Ok(ms.as_primitive::<TimestampMillisecondType>().clone())
}

/// `batch` cut into windows by the time in column `time_index`.
fn assign(
    batch: &RecordBatch,
    spec: &WindowSpec,
    time_index: usize,
    outputs: &[Output],
    schema: &SchemaRef,
) -> Result<RecordBatch> {
    let times = times_ms(batch.column(time_index))?;
    let mut rows = Vec::with_capacity(batch.num_rows());
    let mut starts = Vec::with_capacity(batch.num_rows());
    for (row, t) in times.iter().enumerate() {
        let Some(t) = t else { continue };
        for start in spec.starts(t) {
            rows.push(row as u32);
            starts.push(start);
        }
    }
    let rows = datafusion::arrow::array::PrimitiveArray::<UInt32Type>::from(rows);
    let ends: Vec<i64> = starts.iter().map(|s| spec.end(*s)).collect();
    let bound = |values: Vec<i64>| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from(values).with_timezone(UTC))
    };
    let (starts, ends) = (bound(starts), bound(ends));
    let columns = outputs
        .iter()
        .map(|output| match output {
            Output::Column(i) => Ok(take(batch.column(*i), &rows, None)?),
            Output::Start => Ok(starts.clone()),
            Output::End => Ok(ends.clone()),
        })
        .collect::<Result<Vec<_>>>()?;
    let options =
        datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows.len()));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

impl DisplayAs for WindowExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WindowExec: time={}, slide={}ms, size={}ms",
            self.spec.time_column, self.spec.slide_ms, self.spec.size_ms
        )
    }
}

impl ExecutionPlan for WindowExec {
    fn name(&self) -> &str {
        "WindowExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.child]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [child] = children
            .try_into()
            .map_err(|_| DataFusionError::Internal("a window has one child".into()))?;
        Ok(Arc::new(WindowExec::new(
            child,
            self.spec.clone(),
            self.time_index,
            self.outputs.clone(),
            self.schema.clone(),
        )))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let input = self.child.execute(partition, context)?;
        let (spec, time_index, outputs, schema) = (
            self.spec.clone(),
            self.time_index,
            self.outputs.clone(),
            self.schema.clone(),
        );
        let out_schema = schema.clone();
        let stream = input.map(move |batch| assign(&batch?, &spec, time_index, &outputs, &schema));
        Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, stream)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(slide_ms: i64, size_ms: i64) -> WindowSpec {
        WindowSpec {
            topic: "t".into(),
            time_column: "timestamp".into(),
            slide_ms,
            size_ms,
        }
    }

    #[test]
    fn a_record_falls_in_size_over_slide_windows() {
        let tumble = spec(60, 60);
        assert_eq!(tumble.starts(125).collect::<Vec<_>>(), [120]);
        assert_eq!(tumble.starts(-1).collect::<Vec<_>>(), [-60]);
        assert_eq!(tumble.first_end(125), 180);
        let hop = spec(10, 30);
        assert_eq!(hop.starts(25).collect::<Vec<_>>(), [20, 10, 0]);
        assert_eq!(hop.starts(30).collect::<Vec<_>>(), [30, 20, 10]);
        assert_eq!(hop.first_end(25), 30);
    }
}
