//! Where tables come from: [`TopicSchema`] (`public`: every topic, looked up when a query names
//! it, so a topic created a moment ago is a table) and [`SystemSchema`] (`weir`: the node's own
//! state, read fresh for every scan and filtered for the statement's [`Viewer`]).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::common::DataFusionError;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use weir_runtime::Runtime;
use weir_storage::{Storage, Topics, TreeSource};

use crate::access::{TableAccess, Viewer};
use crate::topic::TopicTable;
use crate::views::{self, Planner, ViewDef};

/// What the broker knows that storage and the runtime do not: groups and connections.
pub trait NodeSource: Send + Sync + 'static {
    /// Every committed offset of every group, with the partition's end.
    fn group_rows(&self) -> Vec<GroupRow>;
    /// Every open client connection: Kafka, Postgres and HTTP.
    fn connection_rows(&self) -> Vec<ConnectionRow>;
    /// The live nodes as Kafka's Metadata lists them: this node alone unless it is in a cluster.
    fn node_rows(&self) -> Vec<NodeRow>;
}

#[derive(Clone, Debug, PartialEq)]
pub struct NodeRow {
    /// The Kafka broker id.
    pub node_id: i32,
    pub host: String,
    pub kafka_port: i32,
    /// Whether it is the node answering the query.
    pub this: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GroupRow {
    pub group: String,
    pub state: String,
    pub members: i32,
    pub topic: String,
    pub partition: i32,
    pub committed_offset: i64,
    pub end_offset: Option<i64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionRow {
    /// `kafka`, `postgres` or `http`.
    pub protocol: String,
    pub peer: String,
    pub client_id: Option<String>,
    pub connected_ms: i64,
    pub requests: i64,
}

/// The `public` schema: the topics, then the views.
pub struct TopicSchema {
    topics: Arc<dyn Topics>,
    /// Holds the views.
    trees: Arc<dyn TreeSource>,
    views: Planner,
    /// Where topic scans keep the columns they decode from active segments.
    cache: Option<Arc<crate::topic::ActiveCache>>,
}

impl std::fmt::Debug for TopicSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicSchema").finish_non_exhaustive()
    }
}

impl TopicSchema {
    pub(crate) fn new(
        topics: Arc<dyn Topics>,
        trees: Arc<dyn TreeSource>,
        views: Planner,
        cache: Option<Arc<crate::topic::ActiveCache>>,
    ) -> TopicSchema {
        TopicSchema {
            topics,
            trees,
            views,
            cache,
        }
    }

    fn view(&self, name: &str) -> Option<ViewDef> {
        views::tree(&*self.trees).ok()?.get(name).ok().flatten()
    }
}

#[async_trait]
impl SchemaProvider for TopicSchema {
    fn table_names(&self) -> Vec<String> {
        let topics = self.topics.list_topics().unwrap_or_default();
        let views = views::tree(&*self.trees).and_then(|t| Ok(t.all()?));
        topics
            .into_iter()
            .map(|t| t.name)
            .chain(views.unwrap_or_default().into_iter().map(|(name, _)| name))
            .collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let Some(meta) = self
            .topics
            .topic(name)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return match self.view(name) {
                Some(view) => self.views.table(name, view).await,
                None => Ok(None),
            };
        };
        let table = TopicTable::new(self.topics.clone(), &meta)
            .map_err(|e| DataFusionError::Plan(format!("topic {name}: {e}")))?
            .with_cache(self.cache.clone());
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.topics.topic(name).ok().flatten().is_some() || self.view(name).is_some()
    }
}

/// The `weir` schema: `topics`, `partitions`, `groups`, `plugins`, `pipelines`, `connections`.
#[derive(Clone)]
pub struct SystemSchema {
    topics: Arc<dyn Topics>,
    storage: Arc<Storage>,
    /// Holds the functions and the views.
    trees: Arc<dyn TreeSource>,
    runtime: Option<Arc<Runtime>>,
    node: Option<Arc<dyn NodeSource>>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSchema")
    }
}

/// Which rows of a system table are built: every row, a viewer's, or none (to learn the
/// table's columns).
#[derive(Clone, Copy)]
enum Shown<'a> {
    All,
    To(&'a dyn TableAccess),
    Nothing,
}

impl Shown<'_> {
    fn topic(self, name: &str) -> bool {
        match self {
            Shown::All => true,
            Shown::To(access) => access.sees_topic(name),
            Shown::Nothing => false,
        }
    }

    fn group(self, name: &str) -> bool {
        match self {
            Shown::All => true,
            Shown::To(access) => access.sees_group(name),
            Shown::Nothing => false,
        }
    }

    /// Whether any row is built: none when only the table's columns are wanted, so planning a
    /// statement reads nothing it throws away. Rows about the node as a whole are all shown to
    /// who may read their table.
    fn any(self) -> bool {
        !matches!(self, Shown::Nothing)
    }
}

pub const SYSTEM_TABLES: [&str; 10] = [
    "topics",
    "partitions",
    "groups",
    "plugins",
    "pipelines",
    "connections",
    "nodes",
    "functions",
    "delayed",
    "views",
];

impl SystemSchema {
    pub fn new(
        topics: Arc<dyn Topics>,
        storage: Arc<Storage>,
        trees: Arc<dyn TreeSource>,
        runtime: Option<Arc<Runtime>>,
        node: Option<Arc<dyn NodeSource>>,
    ) -> SystemSchema {
        SystemSchema {
            topics,
            storage,
            trees,
            runtime,
            node,
        }
    }

    /// The current rows of system table `name` that `shown` lets through.
    fn build(&self, name: &str, shown: Shown) -> Result<Option<RecordBatch>, crate::Error> {
        Ok(Some(match name {
            "topics" => self.topics(shown)?,
            "partitions" => self.partitions(shown)?,
            "groups" => self.groups(shown)?,
            "plugins" => self.plugins(shown)?,
            "pipelines" => self.pipelines(shown)?,
            "connections" => self.connections(shown)?,
            "nodes" => self.nodes(shown)?,
            "functions" => self.functions(shown)?,
            "delayed" => self.delayed(shown)?,
            "views" => self.views(shown)?,
            _ => return Ok(None),
        }))
    }

    fn shown_topics(&self, shown: Shown) -> Result<Vec<weir_storage::TopicMeta>, crate::Error> {
        if !shown.any() {
            return Ok(Vec::new());
        }
        let mut topics = self.topics.list_topics()?;
        topics.retain(|t| shown.topic(&t.name));
        Ok(topics)
    }

    fn topics(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let topics = self.shown_topics(shown)?;
        Table::new(&topics)
            .text("name", |t| t.name.clone())
            .int32("partitions", |t| t.partitions as i32)
            .text_or_null("value_format", |t| t.configs.get("value.format").cloned())
            .text("configs", |t| {
                serde_json::to_string(&t.configs).unwrap_or_default()
            })
            .build()
    }

    fn partitions(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let mut rows = Vec::new();
        for t in self.shown_topics(shown)? {
            // A partition offline since recovery is left out.
            for (p, size) in self.topics.partition_sizes(&t)? {
                rows.push((t.name.clone(), p, size));
            }
        }
        Table::new(&rows)
            .text("topic", |(topic, _, _)| topic.clone())
            .int32("partition", |(_, p, _)| *p as i32)
            .int64("start_offset", |(_, _, size)| size.log_start_offset as i64)
            .int64("end_offset", |(_, _, size)| size.high_watermark as i64)
            .int64("bytes", |(_, _, size)| size.bytes as i64)
            .int64("segments", |(_, _, size)| size.pieces as i64)
            .build()
    }

    /// Records waiting for delayed delivery, by topic and the minute they fall due in.
    fn delayed(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let mut rows = if shown.any() {
            self.storage.delays().pending_by_minute()
        } else {
            Vec::new()
        };
        rows.retain(|r| shown.topic(&r.topic));
        Table::new(&rows)
            .text("topic", |r| r.topic.clone())
            .timestamp_ms("due_minute", |r| r.minute_ms)
            .int64("records", |r| r.records as i64)
            .timestamp_ms("next_due", |r| r.next_due_ms)
            .build()
    }

    fn groups(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let mut rows = match &self.node {
            Some(node) if shown.any() => node.group_rows(),
            _ => Vec::new(),
        };
        rows.retain(|r| shown.group(&r.group) && shown.topic(&r.topic));
        Table::new(&rows)
            .text("group_id", |r| r.group.clone())
            .text("state", |r| r.state.clone())
            .int32("members", |r| r.members)
            .text("topic", |r| r.topic.clone())
            .int32("partition", |r| r.partition)
            .int64("committed_offset", |r| r.committed_offset)
            .int64_or_null("end_offset", |r| r.end_offset)
            .int64_or_null("lag", |r| {
                r.end_offset.map(|end| (end - r.committed_offset).max(0))
            })
            .build()
    }

    fn plugins(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let plugins = match &self.runtime {
            Some(runtime) if shown.any() => runtime.registry().list()?,
            _ => Vec::new(),
        };
        let rows: Vec<_> = plugins.iter().map(|p| (p, p.active_version())).collect();
        Table::new(&rows)
            .text("name", |(p, _)| p.name.clone())
            .text_or_null("kind", |(_, v)| v.map(|v| v.kind.clone()))
            .int64("version", |(p, _)| i64::from(p.active))
            .int64("versions", |(p, _)| p.versions.len() as i64)
            .text_or_null("sha256", |(_, v)| v.map(|v| v.sha256.clone()))
            .int64_or_null("size_bytes", |(_, v)| v.map(|v| v.size_bytes as i64))
            .int64_or_null("abi_version", |(_, v)| v.map(|v| i64::from(v.abi_version)))
            .text_or_null("params", |(_, v)| {
                v.map(|v| serde_json::to_string(&v.params).unwrap_or_default())
            })
            .build()
    }

    /// The SQL functions made of plugins (`CREATE FUNCTION … AS PLUGIN`).
    fn functions(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let functions = match &self.runtime {
            Some(runtime) if shown.any() => {
                crate::functions::Functions::open(runtime, &*self.trees)?.list()?
            }
            _ => Vec::new(),
        };
        Table::new(&functions)
            .text("name", |(name, _)| name.clone())
            .text("plugin", |(_, f)| f.plugin.clone())
            .int64("created_ms", |(_, f)| f.created_ms)
            .build()
    }

    /// A view is shown to who may see a topic of its name.
    fn views(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let mut views = match shown.any() {
            true => views::tree(&*self.trees)?.all()?,
            false => Vec::new(),
        };
        views.retain(|(name, _)| shown.topic(name));
        Table::new(&views)
            .text("name", |(name, _)| name.clone())
            .text("query", |(_, v)| v.query.clone())
            .text("reads", |(_, v)| v.reads.join(","))
            .int64("created_ms", |(_, v)| v.created_ms)
            .build()
    }

    /// A pipeline is shown to who may describe its source and every output.
    fn pipelines(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let mut pipelines = match &self.runtime {
            Some(runtime) if shown.any() => runtime.pipelines().list()?,
            _ => Vec::new(),
        };
        pipelines.retain(|p| shown.topic(&p.spec.from) && p.spec.to.iter().all(|t| shown.topic(t)));
        Table::new(&pipelines)
            .text("name", |p| p.spec.name.clone())
            .text("status", |p| p.status.clone())
            .text("source", |p| p.spec.from.clone())
            .text("plugins", |p| p.plugins.join(","))
            .text("outputs", |p| p.spec.to.join(","))
            .int64("lag", |p| p.lag as i64)
            .int64("records_in", |p| p.records_in as i64)
            .int64("records_out", |p| p.records_out as i64)
            .int64("dropped", |p| p.dropped as i64)
            .int64("dead_lettered", |p| p.dead_lettered as i64)
            .int64("failed_calls", |p| p.failed_calls as i64)
            .boolean("paused", |p| p.status == "paused")
            .text_or_null("last_error", |p| p.last_error.clone())
            .int64_or_null("last_error_ms", |p| p.last_error_ms)
            .text_or_null("owner", |p| p.owner.as_ref().map(|o| o.user.clone()))
            .text("kind", |p| {
                if p.spec.sql.is_some() {
                    "sql"
                } else {
                    "plugins"
                }
                .to_owned()
            })
            .text_or_null("sql", |p| p.spec.sql.clone())
            .int64("late_records", |p| p.late_records as i64)
            .int64("open_windows", |p| p.open_windows as i64)
            .int64("open_groups", |p| p.open_groups as i64)
            .int64_or_null("watermark_ms", |p| p.watermark_ms)
            .build()
    }

    fn connections(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let rows = match &self.node {
            Some(node) if shown.any() => node.connection_rows(),
            _ => Vec::new(),
        };
        Table::new(&rows)
            .text("protocol", |r| r.protocol.clone())
            .text("peer", |r| r.peer.clone())
            .text_or_null("client_id", |r| r.client_id.clone())
            .int64("connected_ms", |r| r.connected_ms)
            .int64("requests", |r| r.requests)
            .build()
    }

    fn nodes(&self, shown: Shown) -> Result<RecordBatch, crate::Error> {
        let rows = match &self.node {
            Some(node) if shown.any() => node.node_rows(),
            _ => Vec::new(),
        };
        Table::new(&rows)
            .int32("node_id", |r| r.node_id)
            .text("host", |r| r.host.clone())
            .int32("kafka_port", |r| r.kafka_port)
            .boolean("this", |r| r.this)
            .build()
    }
}

/// A system table built column by column from its rows: each column a name, a type and how a
/// row fills it.
struct Table<'r, R> {
    rows: &'r [R],
    fields: Vec<Field>,
    columns: Vec<ArrayRef>,
}

impl<'r, R> Table<'r, R> {
    fn new(rows: &'r [R]) -> Self {
        Table {
            rows,
            fields: Vec::new(),
            columns: Vec::new(),
        }
    }

    fn column(mut self, name: &str, data_type: DataType, nullable: bool, array: ArrayRef) -> Self {
        self.fields.push(Field::new(name, data_type, nullable));
        self.columns.push(array);
        self
    }

    fn text(self, name: &str, f: impl Fn(&R) -> String) -> Self {
        let array = StringArray::from_iter_values(self.rows.iter().map(f));
        self.column(name, DataType::Utf8, false, Arc::new(array))
    }

    fn text_or_null(self, name: &str, f: impl Fn(&R) -> Option<String>) -> Self {
        let array: StringArray = self.rows.iter().map(f).collect();
        self.column(name, DataType::Utf8, true, Arc::new(array))
    }

    fn int32(self, name: &str, f: impl Fn(&R) -> i32) -> Self {
        let array = Int32Array::from_iter_values(self.rows.iter().map(f));
        self.column(name, DataType::Int32, false, Arc::new(array))
    }

    fn int64(self, name: &str, f: impl Fn(&R) -> i64) -> Self {
        let array = Int64Array::from_iter_values(self.rows.iter().map(f));
        self.column(name, DataType::Int64, false, Arc::new(array))
    }

    fn int64_or_null(self, name: &str, f: impl Fn(&R) -> Option<i64>) -> Self {
        let array: Int64Array = self.rows.iter().map(f).collect();
        self.column(name, DataType::Int64, true, Arc::new(array))
    }

    /// Milliseconds since the epoch as a UTC timestamp.
    fn timestamp_ms(self, name: &str, f: impl Fn(&R) -> i64) -> Self {
        let array = TimestampMillisecondArray::from_iter_values(self.rows.iter().map(f))
            .with_timezone("UTC");
        let data_type = array.data_type().clone();
        self.column(name, data_type, false, Arc::new(array))
    }

    fn boolean(self, name: &str, f: impl Fn(&R) -> bool) -> Self {
        let array: BooleanArray = self.rows.iter().map(|r| Some(f(r))).collect();
        self.column(name, DataType::Boolean, false, Arc::new(array))
    }

    fn build(self) -> Result<RecordBatch, crate::Error> {
        RecordBatch::try_new(Arc::new(Schema::new(self.fields)), self.columns)
            .map_err(|e| DataFusionError::from(e).into())
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        SYSTEM_TABLES.iter().map(|t| t.to_string()).collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let Some(columns) = self
            .build(name, Shown::Nothing)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(None);
        };
        Ok(Some(Arc::new(SystemTable {
            name: name.to_owned(),
            schema: columns.schema(),
            system: self.clone(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        SYSTEM_TABLES.contains(&name)
    }
}

/// One system table, built when a statement scans it, with the rows its [`Viewer`] may see.
#[derive(Debug)]
struct SystemTable {
    name: String,
    schema: SchemaRef,
    system: SystemSchema,
}

#[async_trait]
impl TableProvider for SystemTable {
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
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let viewer = state.config().get_extension::<Viewer>();
        let shown = match viewer.as_deref().and_then(Viewer::access) {
            Some(access) => Shown::To(access),
            None => Shown::All,
        };
        let batch = self
            .system
            .build(&self.name, shown)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .ok_or_else(|| DataFusionError::Plan(format!("no system table {}", self.name)))?;
        MemorySourceConfig::try_new_exec(&[vec![batch]], self.schema.clone(), projection.cloned())
            .map(|exec| exec as Arc<dyn ExecutionPlan>)
    }
}
