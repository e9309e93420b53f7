//! Continuous SQL: `CREATE PIPELINE name AS INSERT INTO topic SELECT …` keeps a query running
//! over a topic as a pipeline, writing its rows into another topic; `TUMBLE` and `HOP` cut a
//! topic into event-time windows, in one-off queries too.
//!
//! [`statement`] parses the pipeline statements, [`window`] is the window functions, [`query`]
//! the operator the runtime drives (through [`weir_runtime::continuous`]), `source` the table a
//! step's records are read from.

mod query;
mod source;
pub mod statement;
pub mod window;

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result};
use datafusion::datasource::TableProvider;
use weir_runtime::PipelineSpec;
use weir_storage::Topics;

pub use query::{ContinuousQueries, OPEN_GROUPS_MAX, Query};
use statement::{Command, CreatePipeline};
use window::{TableSource, WindowSpec};

use crate::access::{TableAccess, TableUse, Viewer, check_table};
use crate::create_as::{on_blocking_pool, typed_configs};
use crate::topic::{TopicTable, typed_columns};
use crate::{Answer, Error, QueryEngine};

/// Records a SQL pipeline reads from a partition per step (a step also stops at 1 MiB): a
/// query runs on batches the size of a scan's.
const STEP_RECORDS_MAX: u32 = 8192;

/// Windows over a topic's log, for one-off queries; the statement's viewer must may read it.
#[derive(Debug)]
pub(crate) struct WindowTables {
    pub(crate) topics: Arc<dyn Topics>,
}

impl TableSource for WindowTables {
    fn table(&self, window: &WindowSpec, session: &dyn Session) -> Result<Arc<dyn TableProvider>> {
        let viewer = session.config().get_extension::<Viewer>();
        if let Some(access) = viewer.as_deref().and_then(Viewer::access) {
            let table =
                datafusion::common::TableReference::partial("public", window.topic.as_str());
            check_table(access, &table, TableUse::Read)
                .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        }
        let meta = self
            .topics
            .existing_topic(&window.topic)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let table = TopicTable::new(self.topics.clone(), &meta)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        Ok(Arc::new(table))
    }
}

impl QueryEngine {
    /// Runs a pipeline statement for `access` (everything when `None`).
    pub(crate) async fn command(
        &self,
        statement: Command,
        sql: &str,
        access: Option<Arc<dyn TableAccess>>,
    ) -> Result<Answer, Error> {
        let runtime = self
            .runtime
            .clone()
            .ok_or_else(|| Error::Refused("this node runs no pipelines".into()))?;
        let pipelines = runtime.pipelines().clone();
        let quoted = |name: &str| name.replace('\'', "''");
        match statement {
            Command::Show => {
                self.sql_as("SELECT name, kind, status, source, outputs, lag, records_in, records_out, late_records, open_windows, watermark_ms, last_error FROM weir.pipelines ORDER BY name", access).await
            }
            Command::Describe(name) => {
                pipelines.describe(&name)?;
                let sql = format!("SELECT * FROM weir.pipelines WHERE name = '{}'", quoted(&name));
                self.sql_as(&sql, access).await
            }
            Command::Alter { name, pause } => {
                let status = pipelines.describe(&name)?;
                if let Some(access) = &access
                    && !access.may_manage(status.owner.as_ref())
                {
                    return Err(Error::Denied(format!("pipeline {name} is not yours to change")));
                }
                on_blocking(move || if pause { pipelines.pause(&name) } else { pipelines.resume(&name) }).await?;
                self.done(if pause { "ALTER PIPELINE PAUSE" } else { "ALTER PIPELINE RESUME" }).await
            }
            Command::Drop { name, if_exists } => {
                let status = match pipelines.describe(&name) {
                    Ok(status) => status,
                    Err(weir_runtime::Error::NotFound(_)) if if_exists => return self.done("DROP PIPELINE").await,
                    Err(e) => return Err(e.into()),
                };
                if let Some(access) = &access
                    && !access.may_manage(status.owner.as_ref())
                {
                    return Err(Error::Denied(format!("pipeline {name} is not yours to drop")));
                }
                pipelines.delete(&name).await?;
                self.done("DROP PIPELINE").await
            }
            Command::CreateFunction { name, plugin } => {
                let functions = self.node_functions(access.as_deref())?;
                functions.create(&name, &plugin)?;
                self.sync_functions()?;
                self.done("CREATE FUNCTION").await
            }
            Command::DropFunction { name, if_exists } => {
                let functions = self.node_functions(access.as_deref())?;
                if !functions.drop_function(&name)? && !if_exists {
                    return Err(Error::Refused(format!("function {name} does not exist")));
                }
                self.sync_functions()?;
                self.done("DROP FUNCTION").await
            }
            Command::Create(create) => {
                self.create_pipeline(create, access, sql, pipelines).await
            }
            Command::CreateView { name, query } => self.create_view(name, query, access).await,
            Command::DropView { name, if_exists } => self.drop_view(name, if_exists, access).await,
        }
    }

    /// The node's functions, which only a caller with the node's rights changes.
    fn node_functions(
        &self,
        access: Option<&dyn TableAccess>,
    ) -> Result<&Arc<crate::functions::Functions>, Error> {
        if access.is_some_and(|a| !a.may_manage(None)) {
            return Err(Error::Denied(
                "functions are the node's: an admin or a super user creates and drops them".into(),
            ));
        }
        self.functions
            .as_ref()
            .ok_or_else(|| Error::Refused("this node runs no plugins".into()))
    }

    /// An answer of one row naming what was done.
    pub(crate) async fn done(&self, what: &str) -> Result<Answer, Error> {
        let (state, plan) = self
            .planned(&format!("SELECT '{what}' AS done"), None)
            .await?;
        Self::collect(state, plan).await
    }

    /// Plans the query (which checks it), makes the output topic if it is missing, and starts
    /// the pipeline; a failure leaves nothing behind.
    async fn create_pipeline(
        &self,
        create: CreatePipeline,
        access: Option<Arc<dyn TableAccess>>,
        sql: &str,
        pipelines: Arc<weir_runtime::Pipelines>,
    ) -> Result<Answer, Error> {
        let query = Query::plan(self.topics.clone(), &create, self.functions.as_deref()).await?;
        let source = query.source().to_owned();
        let spec = PipelineSpec {
            name: create.name.clone(),
            from: source.clone(),
            through: Vec::new(),
            partition_by: None,
            to: vec![create.output.clone()],
            from_offset: create.options.start.clone(),
            dead_letter: None,
            batch_records_max: STEP_RECORDS_MAX,
            failures_max: PipelineSpec::FAILURES_DEFAULT,
            sql: Some(sql.trim().trim_end_matches(';').trim_end().to_owned()),
            lateness_ms: create.options.watermark_delay_ms,
            idle_timeout_ms: create.options.idle_timeout_ms,
        };
        if let Some(access) = &access {
            access.may_run(&spec).map_err(Error::Denied)?;
            for topic in [&create.output, &spec.dead_letter_topic()] {
                if self.topics.topic(topic)?.is_none() {
                    let table =
                        datafusion::common::TableReference::partial("public", topic.as_str());
                    check_table(access.as_ref(), &table, TableUse::Create)?;
                }
            }
        }
        let made = match self.topics.topic(&create.output)? {
            Some(meta) => {
                query::output_fits(query.output_schema(), &typed_columns(&meta)?)?;
                false
            }
            None => {
                let configs = typed_configs(query.output_schema().fields())?;
                let partitions = self.topics.existing_topic(&source)?.partitions;
                let (topics, topic) = (self.topics.clone(), create.output.clone());
                on_blocking_pool(move || topics.create_topic(&topic, partitions, configs)).await?;
                true
            }
        };
        let owner = access.as_ref().and_then(|a| a.runs_as());
        let created = on_blocking(move || pipelines.create(spec, owner)).await;
        if created.is_err() && made {
            let (topics, topic) = (self.topics.clone(), create.output.clone());
            on_blocking_pool(move || topics.delete_topic(&topic)).await?;
        }
        created?;
        self.done("CREATE PIPELINE").await
    }
}

/// Runs runtime work that blocks on the blocking pool.
async fn on_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, weir_runtime::Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || weir_storage::reactor::blocking(f))
        .await
        .map_err(|e| Error::Query(DataFusionError::External(Box::new(e))))?
        .map_err(Error::Runtime)
}
