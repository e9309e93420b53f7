//! The query memory cap, held by every operator.
//!
//! DataFusion charges its memory pool for what sorts, joins and aggregations buffer, not for
//! the batches a projection or a scalar function builds: `repeat('x', 50000000)` over 40 rows
//! made 2.4 GB against a 512 MiB cap. Two pieces close that:
//!
//! - [`MeterOutputs`], the last physical optimizer rule, wraps every operator so each batch it
//!   emits is charged to the pool while it is the operator's latest; a batch the pool cannot
//!   take fails the query with "Resources exhausted".
//! - [`bounded_functions`] replace the scalar functions whose output size comes from an
//!   argument (`repeat`, `lpad`, `rpad`) with ones that work the size out first and refuse a
//!   call whose output would not fit the cap, before it allocates.

use std::any::Any;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PhysicalExpr, PlanProperties,
};
use futures::{Stream, StreamExt};

/// Wraps every operator of a physical plan in [`Metered`]. Runs last, so no other rule sees
/// the wrappers (which also hand downcasts through to the operator they wrap).
#[derive(Debug, Default)]
pub struct MeterOutputs;

impl PhysicalOptimizerRule for MeterOutputs {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if (node.as_ref() as &dyn Any).is::<Metered>() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(Metered { inner: node }) as _))
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "meter_outputs"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// An operator whose output batches are charged to the memory pool.
#[derive(Debug)]
pub struct Metered {
    inner: Arc<dyn ExecutionPlan>,
}

impl DisplayAs for Metered {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn downcast_delegate(&self) -> Option<&dyn ExecutionPlan> {
        Some(self.inner.as_ref())
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.inner.children()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        #[expect(deprecated)]
        let inner = self.inner.clone().with_new_children(children)?;
        Ok(Arc::new(Metered { inner }))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        self.inner.metrics()
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let reservation = MemoryConsumer::new(format!("{} output", self.inner.name()))
            .register(context.memory_pool());
        Ok(Box::pin(MeteredStream {
            inner: self.inner.execute(partition, context)?,
            reservation,
        }))
    }
}

/// Charges each batch to the pool as it passes; the charge moves to the next batch, and goes
/// when the stream does.
struct MeteredStream {
    inner: SendableRecordBatchStream,
    reservation: MemoryReservation,
}

impl Stream for MeteredStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.poll_next_unpin(cx);
        match polled {
            Poll::Ready(Some(Ok(batch))) => {
                let bytes = batch.get_array_memory_size();
                Poll::Ready(Some(self.reservation.try_resize(bytes).map(|()| batch)))
            }
            Poll::Ready(None) => {
                self.reservation.free();
                Poll::Ready(None)
            }
            other => other,
        }
    }
}

impl RecordBatchStream for MeteredStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

/// `repeat`, `lpad` and `rpad` that refuse, before allocating, a call whose output would pass
/// `bytes_max`.
pub fn bounded_functions(builtins: &[Arc<ScalarUDF>], bytes_max: usize) -> Vec<ScalarUDF> {
    builtins
        .iter()
        .filter_map(|f| {
            let size = match f.name() {
                "repeat" => OutputSize::Repeat,
                "lpad" | "rpad" => OutputSize::Pad,
                _ => return None,
            };
            // Volatile, so the planner never folds a call on literals into one value that a
            // projection then copies into every row, past this check.
            let signature =
                Signature::new(f.signature().type_signature.clone(), Volatility::Volatile);
            Some(ScalarUDF::new_from_impl(Bounded {
                inner: f.clone(),
                signature,
                size,
                bytes_max,
            }))
        })
        .collect()
}

/// How a function's output size follows from its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum OutputSize {
    /// `repeat(text, n)`: the text's bytes times n.
    Repeat,
    /// `lpad(text, n [, fill])`: n characters of up to four bytes.
    Pad,
}

#[derive(Debug)]
struct Bounded {
    inner: Arc<ScalarUDF>,
    signature: Signature,
    size: OutputSize,
    bytes_max: usize,
}

impl PartialEq for Bounded {
    fn eq(&self, other: &Self) -> bool {
        self.inner == other.inner && self.size == other.size && self.bytes_max == other.bytes_max
    }
}

impl Eq for Bounded {}

impl std::hash::Hash for Bounded {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.inner.hash(state);
        self.size.hash(state);
        self.bytes_max.hash(state);
    }
}

/// Per row of a call: the integer argument (0 for a null or a negative), or one value for a
/// scalar.
fn counts(value: &ColumnarValue) -> Result<Vec<u64>> {
    Ok(match value {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(n) => vec![n.unwrap_or(0).max(0) as u64],
            _ => vec![0],
        },
        ColumnarValue::Array(a) => {
            let a = datafusion::arrow::compute::cast(a, &DataType::Int64)?;
            let a = a.as_primitive::<Int64Type>();
            (0..a.len())
                .map(|i| {
                    if a.is_null(i) {
                        0
                    } else {
                        a.value(i).max(0) as u64
                    }
                })
                .collect()
        }
    })
}

/// Per row of a call: the bytes of the text argument, or one value for a scalar.
fn text_bytes(value: &ColumnarValue) -> Result<Vec<u64>> {
    let len = |t: Option<&str>| t.map_or(0, |t| t.len() as u64);
    Ok(match value {
        ColumnarValue::Scalar(s) => match s.cast_to(&DataType::Utf8)? {
            ScalarValue::Utf8(t) => vec![len(t.as_deref())],
            _ => vec![0],
        },
        ColumnarValue::Array(a) => match a.data_type() {
            DataType::Utf8 => a.as_string::<i32>().iter().map(len).collect(),
            DataType::LargeUtf8 => a.as_string::<i64>().iter().map(len).collect(),
            DataType::Utf8View => a.as_string_view().iter().map(len).collect(),
            _ => {
                let a = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                a.as_string::<i32>().iter().map(len).collect()
            }
        },
    })
}

impl Bounded {
    /// Bytes the call would produce over all its rows.
    fn output_bytes(&self, args: &ScalarFunctionArgs) -> Result<u64> {
        let rows = args.number_rows.max(1);
        let at = |values: &[u64], row: usize| values.get(row).or(values.first()).copied();
        let counts = counts(&args.args[1])?;
        let texts = match self.size {
            OutputSize::Repeat => text_bytes(&args.args[0])?,
            // Up to four bytes a character, whatever the text.
            OutputSize::Pad => vec![4],
        };
        let mut total = 0u64;
        for row in 0..rows {
            let bytes = at(&texts, row)
                .unwrap_or(0)
                .saturating_mul(at(&counts, row).unwrap_or(0));
            total = total.saturating_add(bytes);
        }
        Ok(total)
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> Result<datafusion::arrow::datatypes::FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if args.args.len() >= 2 {
            let bytes = self.output_bytes(&args)?;
            if bytes > self.bytes_max as u64 {
                return Err(DataFusionError::ResourcesExhausted(format!(
                    "{}() would build {bytes} bytes, more than the query memory limit of {} bytes",
                    self.name(),
                    self.bytes_max
                )));
            }
        }
        self.inner.invoke_with_args(args)
    }
}
