//! Where tables come from: [`TopicSchema`] (`public`: every topic, looked up when a query names
//! it, so a topic created a moment ago is a table) and [`SystemSchema`] (`weir`: the node's own
//! state, read fresh for every query).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::SchemaProvider;
use datafusion::common::DataFusionError;
use datafusion::datasource::{MemTable, TableProvider};
use weir_runtime::Runtime;
use weir_storage::Storage;

use crate::topic::TopicTable;

/// What the broker knows that storage and the runtime do not: groups and connections.
pub trait NodeSource: Send + Sync + 'static {
    /// Every committed offset of every group, with the partition's end.
    fn group_rows(&self) -> Vec<GroupRow>;
    /// Every open Kafka connection.
    fn connection_rows(&self) -> Vec<ConnectionRow>;
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
    pub peer: String,
    pub client_id: Option<String>,
    pub connected_ms: i64,
    pub requests: i64,
}

#[derive(Debug)]
pub struct TopicSchema {
    storage: Arc<Storage>,
}

impl TopicSchema {
    pub fn new(storage: Arc<Storage>) -> TopicSchema {
        TopicSchema { storage }
    }
}

#[async_trait]
impl SchemaProvider for TopicSchema {
    fn table_names(&self) -> Vec<String> {
        self.storage
            .list_topics()
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    async fn table(
        &self,
        name: &str,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let Some(meta) = self
            .storage
            .topic(name)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(None);
        };
        let table = TopicTable::new(self.storage.clone(), &meta)
            .map_err(|e| DataFusionError::Plan(format!("topic {name}: {e}")))?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.storage.topic(name).ok().flatten().is_some()
    }
}

/// The `weir` schema: `topics`, `partitions`, `groups`, `plugins`, `pipelines`, `connections`.
pub struct SystemSchema {
    storage: Arc<Storage>,
    runtime: Option<Arc<Runtime>>,
    node: Option<Arc<dyn NodeSource>>,
}

impl std::fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemSchema")
    }
}

pub const SYSTEM_TABLES: [&str; 6] = [
    "topics",
    "partitions",
    "groups",
    "plugins",
    "pipelines",
    "connections",
];

impl SystemSchema {
    pub fn new(
        storage: Arc<Storage>,
        runtime: Option<Arc<Runtime>>,
        node: Option<Arc<dyn NodeSource>>,
    ) -> SystemSchema {
        SystemSchema {
            storage,
            runtime,
            node,
        }
    }

    /// The current contents of system table `name`.
    fn build(&self, name: &str) -> Result<Option<RecordBatch>, crate::Error> {
        let text =
            |values: Vec<Option<String>>| -> ArrayRef { Arc::new(StringArray::from(values)) };
        let int = |values: Vec<i64>| -> ArrayRef { Arc::new(Int64Array::from(values)) };
        let field =
            |name: &str, data_type: DataType, nullable: bool| Field::new(name, data_type, nullable);
        let (fields, columns): (Vec<Field>, Vec<ArrayRef>) = match name {
            "topics" => {
                let topics = self.storage.list_topics()?;
                (
                    vec![
                        field("name", DataType::Utf8, false),
                        field("partitions", DataType::Int32, false),
                        field("value_format", DataType::Utf8, true),
                        field("configs", DataType::Utf8, false),
                    ],
                    vec![
                        text(topics.iter().map(|t| Some(t.name.clone())).collect()),
                        Arc::new(Int32Array::from(
                            topics
                                .iter()
                                .map(|t| t.partitions as i32)
                                .collect::<Vec<_>>(),
                        )),
                        text(
                            topics
                                .iter()
                                .map(|t| t.configs.get("value.format").cloned())
                                .collect(),
                        ),
                        text(
                            topics
                                .iter()
                                .map(|t| {
                                    Some(serde_json::to_string(&t.configs).unwrap_or_default())
                                })
                                .collect(),
                        ),
                    ],
                )
            }
            "partitions" => {
                let mut rows = Vec::new();
                for t in self.storage.list_topics()? {
                    for p in 0..t.partitions {
                        let log = self.storage.log(&t.name, p)?;
                        rows.push((
                            t.name.clone(),
                            p,
                            log.log_start_offset(),
                            log.high_watermark(),
                            log.size_bytes(),
                            log.segment_count(),
                        ));
                    }
                }
                (
                    vec![
                        field("topic", DataType::Utf8, false),
                        field("partition", DataType::Int32, false),
                        field("start_offset", DataType::Int64, false),
                        field("end_offset", DataType::Int64, false),
                        field("bytes", DataType::Int64, false),
                        field("segments", DataType::Int64, false),
                    ],
                    vec![
                        text(rows.iter().map(|r| Some(r.0.clone())).collect()),
                        Arc::new(Int32Array::from(
                            rows.iter().map(|r| r.1 as i32).collect::<Vec<_>>(),
                        )),
                        int(rows.iter().map(|r| r.2 as i64).collect()),
                        int(rows.iter().map(|r| r.3 as i64).collect()),
                        int(rows.iter().map(|r| r.4 as i64).collect()),
                        int(rows.iter().map(|r| r.5 as i64).collect()),
                    ],
                )
            }
            "groups" => {
                let rows = self
                    .node
                    .as_ref()
                    .map(|n| n.group_rows())
                    .unwrap_or_default();
                (
                    vec![
                        field("group_id", DataType::Utf8, false),
                        field("state", DataType::Utf8, false),
                        field("members", DataType::Int32, false),
                        field("topic", DataType::Utf8, false),
                        field("partition", DataType::Int32, false),
                        field("committed_offset", DataType::Int64, false),
                        field("end_offset", DataType::Int64, true),
                        field("lag", DataType::Int64, true),
                    ],
                    vec![
                        text(rows.iter().map(|r| Some(r.group.clone())).collect()),
                        text(rows.iter().map(|r| Some(r.state.clone())).collect()),
                        Arc::new(Int32Array::from(
                            rows.iter().map(|r| r.members).collect::<Vec<_>>(),
                        )),
                        text(rows.iter().map(|r| Some(r.topic.clone())).collect()),
                        Arc::new(Int32Array::from(
                            rows.iter().map(|r| r.partition).collect::<Vec<_>>(),
                        )),
                        int(rows.iter().map(|r| r.committed_offset).collect()),
                        Arc::new(Int64Array::from(
                            rows.iter().map(|r| r.end_offset).collect::<Vec<_>>(),
                        )),
                        Arc::new(Int64Array::from(
                            rows.iter()
                                .map(|r| r.end_offset.map(|end| (end - r.committed_offset).max(0)))
                                .collect::<Vec<_>>(),
                        )),
                    ],
                )
            }
            "plugins" => {
                let plugins = match &self.runtime {
                    Some(runtime) => runtime.registry().list()?,
                    None => Vec::new(),
                };
                let active: Vec<_> = plugins
                    .iter()
                    .map(|p| p.active_version().cloned())
                    .collect();
                (
                    vec![
                        field("name", DataType::Utf8, false),
                        field("kind", DataType::Utf8, true),
                        field("version", DataType::Int64, false),
                        field("versions", DataType::Int64, false),
                        field("sha256", DataType::Utf8, true),
                        field("size_bytes", DataType::Int64, true),
                        field("params", DataType::Utf8, true),
                    ],
                    vec![
                        text(plugins.iter().map(|p| Some(p.name.clone())).collect()),
                        text(
                            active
                                .iter()
                                .map(|v| v.as_ref().map(|v| v.kind.clone()))
                                .collect(),
                        ),
                        int(plugins.iter().map(|p| i64::from(p.active)).collect()),
                        int(plugins.iter().map(|p| p.versions.len() as i64).collect()),
                        text(
                            active
                                .iter()
                                .map(|v| v.as_ref().map(|v| v.sha256.clone()))
                                .collect(),
                        ),
                        Arc::new(Int64Array::from(
                            active
                                .iter()
                                .map(|v| v.as_ref().map(|v| v.size_bytes as i64))
                                .collect::<Vec<_>>(),
                        )),
                        text(
                            active
                                .iter()
                                .map(|v| {
                                    v.as_ref().map(|v| {
                                        serde_json::to_string(&v.params).unwrap_or_default()
                                    })
                                })
                                .collect(),
                        ),
                    ],
                )
            }
            "pipelines" => {
                let pipelines = match &self.runtime {
                    Some(runtime) => runtime.pipelines().list()?,
                    None => Vec::new(),
                };
                (
                    vec![
                        field("name", DataType::Utf8, false),
                        field("status", DataType::Utf8, false),
                        field("source", DataType::Utf8, false),
                        field("plugins", DataType::Utf8, false),
                        field("outputs", DataType::Utf8, false),
                        field("lag", DataType::Int64, false),
                        field("records_in", DataType::Int64, false),
                        field("records_out", DataType::Int64, false),
                        field("dropped", DataType::Int64, false),
                        field("dead_lettered", DataType::Int64, false),
                        field("failed_calls", DataType::Int64, false),
                        field("paused", DataType::Boolean, false),
                        field("last_error", DataType::Utf8, true),
                    ],
                    vec![
                        text(
                            pipelines
                                .iter()
                                .map(|p| Some(p.spec.name.clone()))
                                .collect(),
                        ),
                        text(pipelines.iter().map(|p| Some(p.status.clone())).collect()),
                        text(
                            pipelines
                                .iter()
                                .map(|p| Some(p.spec.from.clone()))
                                .collect(),
                        ),
                        text(
                            pipelines
                                .iter()
                                .map(|p| Some(p.plugins.join(",")))
                                .collect(),
                        ),
                        text(
                            pipelines
                                .iter()
                                .map(|p| Some(p.spec.to.join(",")))
                                .collect(),
                        ),
                        int(pipelines.iter().map(|p| p.lag as i64).collect()),
                        int(pipelines.iter().map(|p| p.records_in as i64).collect()),
                        int(pipelines.iter().map(|p| p.records_out as i64).collect()),
                        int(pipelines.iter().map(|p| p.dropped as i64).collect()),
                        int(pipelines.iter().map(|p| p.dead_lettered as i64).collect()),
                        int(pipelines.iter().map(|p| p.failed_calls as i64).collect()),
                        Arc::new(BooleanArray::from(
                            pipelines
                                .iter()
                                .map(|p| p.status == "paused")
                                .collect::<Vec<_>>(),
                        )),
                        text(pipelines.iter().map(|p| p.last_error.clone()).collect()),
                    ],
                )
            }
            "connections" => {
                let rows = self
                    .node
                    .as_ref()
                    .map(|n| n.connection_rows())
                    .unwrap_or_default();
                (
                    vec![
                        field("peer", DataType::Utf8, false),
                        field("client_id", DataType::Utf8, true),
                        field("connected_ms", DataType::Int64, false),
                        field("requests", DataType::Int64, false),
                    ],
                    vec![
                        text(rows.iter().map(|r| Some(r.peer.clone())).collect()),
                        text(rows.iter().map(|r| r.client_id.clone()).collect()),
                        int(rows.iter().map(|r| r.connected_ms).collect()),
                        int(rows.iter().map(|r| r.requests).collect()),
                    ],
                )
            }
            _ => return Ok(None),
        };
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(DataFusionError::from)?;
        Ok(Some(batch))
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
        let Some(batch) = self
            .build(name)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
        else {
            return Ok(None);
        };
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        SYSTEM_TABLES.contains(&name)
    }
}
