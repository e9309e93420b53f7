//! The records of one step as a table: a continuous query is planned once over a [`Slot`], and
//! each step puts the batch it read into the slot and runs the plan again.

use std::fmt;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use weir_storage::locks;

/// Batches waiting to be read by the next run of a plan. A batch holds at least the columns
/// the plan's scans asked for, found by name; [`Slot::wanted`] says which those are.
#[derive(Debug, Default)]
pub struct Slot {
    batches: Mutex<Vec<RecordBatch>>,
    wanted: Mutex<std::collections::BTreeSet<String>>,
}

impl Slot {
    pub fn put(&self, batch: RecordBatch) {
        locks::lock(&self.batches).push(batch);
    }

    fn take(&self) -> Vec<RecordBatch> {
        std::mem::take(&mut *locks::lock(&self.batches))
    }

    /// The columns the scans planned over this slot read.
    pub fn wanted(&self) -> std::collections::BTreeSet<String> {
        locks::lock(&self.wanted).clone()
    }
}

/// A table whose rows are whatever the slot holds when the plan runs.
#[derive(Debug)]
pub struct SlotTable {
    slot: Arc<Slot>,
    schema: SchemaRef,
}

impl SlotTable {
    pub fn new(slot: Arc<Slot>, schema: SchemaRef) -> SlotTable {
        SlotTable { slot, schema }
    }
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let exec = SlotExec::new(self.slot.clone(), self.schema.clone(), projection.cloned())?;
        locks::lock(&self.slot.wanted)
            .extend(exec.schema.fields().iter().map(|f| f.name().clone()));
        Ok(Arc::new(exec))
    }
}

/// Reads the slot's batches, projected to its columns by name.
#[derive(Debug)]
pub struct SlotExec {
    slot: Arc<Slot>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl SlotExec {
    pub fn new(
        slot: Arc<Slot>,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<SlotExec> {
        let schema = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema,
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(SlotExec {
            slot,
            schema,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SlotExec")
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &str {
        "SlotExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "a slot has one partition, not {partition}"
            )));
        }
        let batches: Vec<Result<RecordBatch>> = self
            .slot
            .take()
            .into_iter()
            .map(|batch| {
                let columns = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| Ok(batch.schema().index_of(f.name())?))
                    .collect::<Result<Vec<usize>>>()?;
                let projected = batch.project(&columns)?;
                Ok(RecordBatch::try_new(
                    self.schema.clone(),
                    projected.columns().to_vec(),
                )?)
            })
            .collect();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            futures::stream::iter(batches),
        )))
    }
}
