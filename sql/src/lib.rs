//! `weir-sql`: SQL over Weir topics with Apache DataFusion.
//!
//! - [`QueryEngine`] holds one DataFusion session whose default schema (`public`) is
//!   [`TopicSchema`]: every topic is a table with `partition`, `offset`, `timestamp`, `key`,
//!   `value`, `headers`, `key_text`, `value_text`, plus the typed columns a topic declares with
//!   `value.format=json` and `value.schema` (parsed by [`value_schema`]; a value that does not
//!   fit is NULL, never a failed query). `weir` is [`SystemSchema`]: `weir.topics`,
//!   `weir.partitions`, `weir.groups`, `weir.plugins`, `weir.pipelines`, `weir.connections`,
//!   `weir.nodes`, `weir.functions`.
//! - [`stream`]: `TUMBLE` and `HOP` windows, and `CREATE PIPELINE`, the continuous queries the
//!   runtime runs as pipelines; [`functions`]: scalar plugins as SQL functions.
//! - [`topic`] is the table provider and its scan: filters on partition, offset and timestamp
//!   are served by the log's indexes, `LIMIT` stops the read, unused columns are not built.
//! - Every query runs under a memory cap. `CREATE TABLE … AS SELECT` makes a topic; other DDL
//!   and session statements are refused (a query cannot register files or change settings).
//! - `pg_catalog` and the Postgres functions clients call are installed, so `psql` and
//!   Grafana find their way around when the broker serves this session over Postgres wire.
//!
//! Architecture invariant: reads logs through `weir-storage` and plugin state through
//! `weir-runtime`; it opens no socket — the broker serves it over HTTP and Postgres wire.

pub mod access;
pub mod catalog;
pub mod columnar;
mod create_as;
pub mod functions;
pub mod guard;
mod json;
mod json_fields;
pub mod memory;
mod postgres;
mod runs;
pub mod sink;
pub mod stream;
#[cfg(test)]
mod test_records;
pub mod topic;
pub mod value_schema;
pub mod views;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::common::utils::datafusion_strsim::levenshtein;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::Statement;
use weir_runtime::Runtime;
use weir_storage::{LayerKey, Storage, StorageError, Topics, TreeSource, locks};

pub use access::{TableAccess, TableUse, Viewer};

pub use catalog::{
    ConnectionRow, GroupRow, NodeRow, NodeSource, SYSTEM_TABLES, SystemSchema, TopicSchema,
};
pub use value_schema::parse_value_schema;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("value schema: {0}")]
    Schema(String),
    #[error("{0}")]
    Refused(String),
    /// The caller may not use a table the statement names.
    #[error("{0}")]
    Denied(String),
    #[error("{0}")]
    Query(#[from] DataFusionError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Runtime(#[from] weir_runtime::Error),
    /// Writing or reading a columnar copy of a segment.
    #[error("columnar copy: {0}")]
    Columnar(String),
}

/// The topic config keys SQL owns, for [`weir_storage::StorageConfig::layer_keys`]:
/// `value.format` (`none` or `json`) and `value.schema` (typed columns, checked by
/// [`parse_value_schema`], and only with `value.format=json`: the columns are parsed from JSON
/// values), and `columnar.enabled` (`true` or `false`: whether closed segments of a topic with a
/// value schema get columnar copies, [`columnar`]). Storage keeps them with the topic; the SQL
/// tables read them.
pub fn topic_config_keys() -> Vec<LayerKey> {
    vec![
        LayerKey {
            name: "value.format",
            default: "none",
            check: |value, _| match value {
                "none" | "json" => Ok(()),
                _ => Err("expected none or json".into()),
            },
        },
        LayerKey {
            name: "value.schema",
            default: "",
            check: |value, entries| {
                let json = entries.get("value.format").is_some_and(|f| f == "json");
                if !value.is_empty() && !json {
                    return Err("a schema's columns are parsed from JSON values: set \
                                value.format=json with it (weir topic create --value-format json)"
                        .into());
                }
                parse_value_schema(value)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        },
        LayerKey {
            name: "columnar.enabled",
            default: "true",
            check: |value, _| match value {
                "true" | "false" => Ok(()),
                _ => Err("expected true or false".into()),
            },
        },
    ]
}

/// Limits of the query engine.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    /// Memory all running queries may hold at once; a query that needs more fails.
    pub memory_bytes_max: usize,
    /// Partitions DataFusion spreads work over.
    pub target_partitions: usize,
    /// Partitions of a topic `CREATE TABLE … AS SELECT` makes without `WITH (partitions = N)`.
    pub default_partitions: u32,
    /// Bytes of columns decoded from active segments that scans keep for the next query
    /// ([`topic::ActiveCache`]); 0 keeps none.
    pub cache_bytes_max: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_bytes_max: 512 << 20,
            target_partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            default_partitions: 1,
            cache_bytes_max: 128 << 20,
        }
    }
}

/// A query's result, collected.
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Answer {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

pub struct QueryEngine {
    context: Arc<SessionContext>,
    /// The topics tables read, and `CREATE TABLE … AS` makes.
    topics: Arc<dyn Topics>,
    /// Where views and functions are kept: the runtime's trees (a cluster's, on a cluster),
    /// or the node's metadata store.
    trees: Arc<dyn TreeSource>,
    runtime: Option<Arc<Runtime>>,
    functions: Option<Arc<functions::Functions>>,
    /// The functions of `functions` registered in the session, by name.
    registered: Mutex<BTreeSet<String>>,
    default_partitions: u32,
    memory_bytes_max: usize,
    /// Columns decoded from active segments, kept between queries.
    cache: Option<Arc<topic::ActiveCache>>,
}

impl QueryEngine {
    /// An engine over the node's own topics in `storage`.
    pub fn new(
        storage: Arc<Storage>,
        runtime: Option<Arc<Runtime>>,
        node: Option<Arc<dyn NodeSource>>,
        config: &QueryConfig,
    ) -> Result<QueryEngine, Error> {
        QueryEngine::reading(storage.clone(), storage, runtime, node, config)
    }

    /// An engine whose tables are the topics of `topics` (a cluster's, say), with the views,
    /// functions and pipelines of `runtime` (kept where its pipelines are), or of the node's
    /// `storage` without one.
    pub fn reading(
        topics: Arc<dyn Topics>,
        storage: Arc<Storage>,
        runtime: Option<Arc<Runtime>>,
        node: Option<Arc<dyn NodeSource>>,
        config: &QueryConfig,
    ) -> Result<QueryEngine, Error> {
        let session = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(config.target_partitions.max(1))
            .with_default_catalog_and_schema("weir", "public");
        let limits = RuntimeEnvBuilder::new()
            .with_memory_limit(config.memory_bytes_max, 1.0)
            .build_arc()?;
        let state = SessionStateBuilder::new()
            .with_config(session)
            .with_runtime_env(limits)
            .with_default_features()
            .with_physical_optimizer_rule(Arc::new(memory::MeterOutputs))
            .build();
        let mut context = SessionContext::new_with_state(state);
        json::register(&mut context)?;
        for bounded in memory::bounded_functions(
            &datafusion::functions::all_default_functions(),
            config.memory_bytes_max,
        ) {
            context.register_udf(bounded);
        }
        let catalog = Arc::new(datafusion::catalog::MemoryCatalogProvider::new());
        use datafusion::catalog::CatalogProvider as _;
        let trees: Arc<dyn TreeSource> = match &runtime {
            Some(runtime) => runtime.trees().clone(),
            None => Arc::new(storage.meta().clone()),
        };
        let planner = views::Planner::default();
        let cache = (config.cache_bytes_max > 0)
            .then(|| Arc::new(topic::ActiveCache::new(config.cache_bytes_max)));
        catalog.register_schema(
            "public",
            Arc::new(TopicSchema::new(
                topics.clone(),
                trees.clone(),
                planner.clone(),
                cache.clone(),
            )),
        )?;
        catalog.register_schema(
            "weir",
            Arc::new(SystemSchema::new(
                topics.clone(),
                storage.clone(),
                trees.clone(),
                runtime.clone(),
                node,
            )),
        )?;
        let windows = Arc::new(stream::WindowTables {
            topics: topics.clone(),
        });
        stream::window::register(&context, windows);
        let functions = match &runtime {
            Some(runtime) => Some(Arc::new(functions::Functions::open(runtime, &*trees)?)),
            None => None,
        };
        context.register_catalog("weir", catalog);
        // `pg_catalog` and the Postgres functions psql and Grafana call.
        datafusion_pg_catalog::pg_catalog::setup_pg_catalog(
            &context,
            "weir",
            datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider,
        )
        .map_err(|e| Error::Query(*e))?;
        postgres::register(&context);
        let context = Arc::new(context);
        planner.set(&context);
        let engine = QueryEngine {
            context,
            topics,
            trees,
            runtime,
            functions,
            registered: Mutex::default(),
            default_partitions: config.default_partitions.max(1),
            memory_bytes_max: config.memory_bytes_max,
            cache,
        };
        engine.sync_functions()?;
        Ok(engine)
    }

    /// Registers the kept functions in the session, and forgets the dropped ones: at start,
    /// after a change here, and when another node of a cluster changed them.
    pub fn sync_functions(&self) -> Result<(), Error> {
        let Some(functions) = &self.functions else {
            return Ok(());
        };
        let kept = functions.udfs()?;
        let mut registered = locks::lock(&self.registered);
        let names: BTreeSet<String> = kept.iter().map(|udf| udf.name().to_string()).collect();
        for gone in registered.difference(&names) {
            self.context.deregister_udf(gone);
        }
        for udf in kept {
            self.context.register_udf(udf);
        }
        *registered = names;
        Ok(())
    }

    /// Bytes the running queries hold in the memory pool, and the pool's limit.
    pub fn memory_usage(&self) -> (usize, usize) {
        (
            self.context.runtime_env().memory_pool.reserved(),
            self.memory_bytes_max,
        )
    }

    /// Bytes of decoded active-segment columns kept between queries, and their bound.
    pub fn cache_usage(&self) -> (usize, usize) {
        self.cache.as_ref().map_or((0, 0), |c| c.usage())
    }

    /// The SQL functions made of plugins, on a node with a runtime.
    pub fn functions(&self) -> Option<&Arc<functions::Functions>> {
        self.functions.as_ref()
    }

    /// The DataFusion session every interface runs its statements on.
    pub fn context(&self) -> &Arc<SessionContext> {
        &self.context
    }

    /// Plans and runs one statement, collecting its result.
    pub async fn sql(&self, sql: &str) -> Result<Answer, Error> {
        self.sql_as(sql, None).await
    }

    /// [`QueryEngine::sql`] on behalf of a caller whose `access` decides which tables the
    /// statement may read, write or create, and which rows of the system tables it sees; `None`
    /// allows every table and row.
    pub async fn sql_as(
        &self,
        sql: &str,
        access: Option<Arc<dyn TableAccess>>,
    ) -> Result<Answer, Error> {
        guard::check_text(sql)?;
        match stream::statement::parse(sql)? {
            Some(stream::statement::Command::CreateView { name, query }) => {
                return Box::pin(self.create_view(name, query, access)).await;
            }
            Some(stream::statement::Command::DropView { name, if_exists }) => {
                return self.drop_view(name, if_exists, access).await;
            }
            Some(statement) => return Box::pin(self.command(statement, sql, access)).await,
            None => {}
        }
        if let Some(create) = create_as::parse(sql)? {
            if let Some(access) = &access {
                create.check(self, access.as_ref()).await?;
            }
            return self.create_topic_as(create, access).await;
        }
        let (state, plan) = self.planned(sql, access.clone()).await?;
        if let Some(access) = access {
            access::check_plan(&plan, access.as_ref())?;
        }
        Self::collect(state, plan).await
    }

    /// Plans `sql` in the session state it runs in: the node's, with `viewer` as its [`Viewer`].
    async fn planned(
        &self,
        sql: &str,
        viewer: Option<Arc<dyn TableAccess>>,
    ) -> Result<(SessionState, LogicalPlan), Error> {
        let mut state = self.context.state();
        if let Some(access) = viewer {
            state
                .config_mut()
                .set_extension(Arc::new(Viewer::of(access)));
        }
        let plan = self.logical_plan(&state, sql).await?;
        Ok((state, plan))
    }

    /// Runs a planned query, `INSERT` or `EXPLAIN` and collects its answer.
    async fn collect(state: SessionState, plan: LogicalPlan) -> Result<Answer, Error> {
        let frame = DataFrame::new(state, plan);
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await?;
        Ok(Answer { schema, batches })
    }

    /// Checks a statement ([`guard`]) and plans it: anything but a query, `INSERT`, `EXPLAIN`
    /// or `SHOW` is refused before planning, and DataFusion's own options refuse DDL and
    /// session statements again.
    async fn logical_plan(&self, state: &SessionState, sql: &str) -> Result<LogicalPlan, Error> {
        let dialect = state.config().options().sql_parser.dialect;
        let statement = state.sql_to_statement(sql, &dialect)?;
        guard::check_statement(&statement)?;
        let insert = insert_target(&statement);
        let plan = match (state.statement_to_plan(statement).await, insert) {
            (Ok(plan), _) => plan,
            (Err(e), Some(insert)) if e.strip_backtrace().contains(COLUMN_COUNT_MISMATCH) => {
                return Err(self.insert_column_count(insert).await);
            }
            (Err(e), _) => return Err(self.unknown_table(e)),
        };
        SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_statements(false)
            .verify_plan(&plan)?;
        Ok(plan)
    }

    /// DataFusion's refusal of an `INSERT` whose query gives another number of columns than
    /// it writes, said with the columns the table has and how to name the ones a query sets.
    async fn insert_column_count(&self, (table, named): (String, usize)) -> Error {
        let columns = match self.context.table_provider(table.as_str()).await {
            Ok(provider) => provider
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
            Err(_) => String::new(),
        };
        let usage = format!("INSERT INTO {table} (value_text) SELECT …");
        Error::Refused(if named == 0 {
            format!(
                "INSERT INTO {table} without a column list must give every column of {table}, \
                 in order ({columns}); name the columns the query gives instead, as in {usage}"
            )
        } else {
            format!(
                "INSERT INTO {table} names {named} column(s) but its query gives another number; \
                 give one per named column (the columns of {table}: {columns})"
            )
        })
    }

    /// A planning error about a table no schema holds, said plainly and with the nearest table
    /// name when one is close (`table logz does not exist; did you mean logs?`); any other
    /// error as it is.
    fn unknown_table(&self, e: DataFusionError) -> Error {
        let message = e.strip_backtrace();
        let Some((_, rest)) = message.split_once("table '") else {
            return e.into();
        };
        let Some((resolved, _)) = rest.split_once("' not found") else {
            return e.into();
        };
        let typed = resolved
            .strip_prefix("weir.public.")
            .or_else(|| resolved.strip_prefix("weir."))
            .unwrap_or(resolved);
        let nearest = self
            .table_names()
            .into_iter()
            .map(|known| (levenshtein(typed, &known), known))
            .min();
        let hint = match nearest {
            Some((distance, known)) if distance <= (typed.len() / 3).max(2) => {
                format!("; did you mean {known}?")
            }
            _ => String::new(),
        };
        Error::Refused(format!("table {typed} does not exist{hint}"))
    }

    /// Every table a statement may name: the topics, and the system tables as `weir.NAME`.
    pub fn table_names(&self) -> Vec<String> {
        let Some(catalog) = self.context.catalog("weir") else {
            return Vec::new();
        };
        let mut names = Vec::new();
        for (schema, prefix) in [("public", ""), ("weir", "weir.")] {
            if let Some(provider) = catalog.schema(schema) {
                names.extend(
                    provider
                        .table_names()
                        .into_iter()
                        .map(|table| format!("{prefix}{table}")),
                );
            }
        }
        names
    }

    /// Checks and plans a statement down to its physical plan without running it: every step
    /// a statement goes through before it reads a topic.
    pub async fn plan(&self, sql: &str) -> Result<Arc<dyn ExecutionPlan>, Error> {
        guard::check_text(sql)?;
        let state = self.context.state();
        let plan = self.logical_plan(&state, sql).await?;
        Ok(state.create_physical_plan(&plan).await?)
    }
}

/// How DataFusion's planner words an `INSERT` whose query gives another number of columns
/// than the statement writes.
const COLUMN_COUNT_MISMATCH: &str = "Column count doesn't match insert query";

/// The table an `INSERT` writes, as written, and how many columns it names (0 for none).
fn insert_target(statement: &DfStatement) -> Option<(String, usize)> {
    let DfStatement::Statement(statement) = statement else {
        return None;
    };
    let Statement::Insert(insert) = statement.as_ref() else {
        return None;
    };
    Some((insert.table.to_string(), insert.columns.len()))
}

/// How an answer is sent back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// `{"columns": [{"name", "type"}], "rows": [{column: value}]}`
    Json,
    /// RFC 4180 with a header line.
    Csv,
    /// The Arrow IPC stream format.
    ArrowStream,
    /// An aligned text table, as a terminal shows it.
    Table,
}

impl Encoding {
    /// The encoding an `Accept` header asks for; JSON when it names none of them.
    pub fn from_accept(accept: &str) -> Encoding {
        let wants = |kind: &str| accept.split(',').any(|part| part.trim().starts_with(kind));
        if wants("application/vnd.apache.arrow.stream") {
            Encoding::ArrowStream
        } else if wants("text/csv") {
            Encoding::Csv
        } else if wants("text/plain") {
            Encoding::Table
        } else {
            Encoding::Json
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Csv => "text/csv",
            Encoding::ArrowStream => "application/vnd.apache.arrow.stream",
            Encoding::Table => "text/plain; charset=utf-8",
        }
    }
}

/// A batch as a person reads it in a text table: bytes (a record's `value`, `key`) as text
/// when they are UTF-8, as `\\x` and hex digits when they are not.
fn readable(batch: &RecordBatch) -> Result<RecordBatch, datafusion::arrow::error::ArrowError> {
    use datafusion::arrow::array::{Array, AsArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if !matches!(
            field.data_type(),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView
        ) {
            fields.push(field.clone());
            columns.push(column.clone());
            continue;
        }
        let bytes = datafusion::arrow::compute::cast(column, &DataType::Binary)?;
        let text: StringArray = bytes
            .as_binary::<i32>()
            .iter()
            .map(|value| {
                value.map(|b| match std::str::from_utf8(b) {
                    Ok(text) => text.to_string(),
                    Err(_) => b.iter().fold(String::from("\\x"), |mut hex, byte| {
                        hex.push_str(&format!("{byte:02x}"));
                        hex
                    }),
                })
            })
            .collect();
        fields.push(Arc::new(Field::new(
            field.name(),
            DataType::Utf8,
            field.is_nullable(),
        )));
        columns.push(Arc::new(text) as Arc<dyn Array>);
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

impl Answer {
    pub fn encode(&self, encoding: Encoding) -> Result<Vec<u8>, Error> {
        use datafusion::arrow::error::ArrowError;
        let arrow = |e: ArrowError| Error::Query(DataFusionError::ArrowError(Box::new(e), None));
        let batches: Vec<&RecordBatch> = self.batches.iter().collect();
        Ok(match encoding {
            Encoding::Json => {
                let mut writer = datafusion::arrow::json::ArrayWriter::new(Vec::new());
                writer.write_batches(&batches).map_err(arrow)?;
                writer.finish().map_err(arrow)?;
                let rows = writer.into_inner();
                let rows: serde_json::Value = if rows.is_empty() {
                    serde_json::json!([])
                } else {
                    serde_json::from_slice(&rows).map_err(|e| Error::Schema(e.to_string()))?
                };
                let columns: Vec<serde_json::Value> = self
                    .schema
                    .fields()
                    .iter()
                    .map(|f| serde_json::json!({ "name": f.name(), "type": f.data_type().to_string() }))
                    .collect();
                serde_json::to_vec(&serde_json::json!({ "columns": columns, "rows": rows }))
                    .map_err(|e| Error::Schema(e.to_string()))?
            }
            Encoding::Csv => {
                let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(Vec::new());
                for batch in &batches {
                    writer.write(batch).map_err(arrow)?;
                }
                if batches.is_empty() {
                    let names: Vec<&str> = self
                        .schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect();
                    return Ok(format!("{}\n", names.join(",")).into_bytes());
                }
                writer.into_inner()
            }
            Encoding::ArrowStream => {
                let mut writer =
                    datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &self.schema)
                        .map_err(arrow)?;
                for batch in &batches {
                    writer.write(batch).map_err(arrow)?;
                }
                writer.finish().map_err(arrow)?;
                writer.into_inner().map_err(arrow)?
            }
            Encoding::Table => {
                let shown = self
                    .batches
                    .iter()
                    .map(readable)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(arrow)?;
                let options =
                    datafusion::arrow::util::display::FormatOptions::default().with_null("NULL");
                let table = datafusion::arrow::util::pretty::pretty_format_batches_with_options(
                    &shown, &options,
                )
                .map_err(arrow)?;
                let rows = self.rows();
                format!(
                    "{table}\n({rows} row{})\n",
                    if rows == 1 { "" } else { "s" }
                )
                .into_bytes()
            }
        })
    }
}
