//! `/v1/node`: what this node is and holds now, `/v1/node/history`: its rates and consumer
//! group lags over the last minutes ([`crate::history`]), and `/v1/cluster`: the nodes of its
//! cluster, its leases, and whether its database and object store answer. They describe the
//! whole node, so a SASL user needs `describe` on the cluster.

use std::collections::BTreeMap;

use axum::extract::{Extension, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::{ApiResult, AppState, blocking};
use crate::acl::{CLUSTER_NAME, Caller, Operation, ResourceType};
use crate::history::{Rates, SAMPLE_INTERVAL, SAMPLES_MAX, Sample};
use crate::metrics::{Protocol, Totals};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/node", get(describe_node))
        .route("/node/history", get(node_history))
        .route("/cluster", get(describe_cluster))
}

#[derive(Serialize)]
struct ClusterSummary {
    /// `cluster` for a node of a cluster, `single` for a node on its own.
    mode: &'static str,
    /// This node's broker id.
    node_id: i32,
    /// The live nodes, by id, as Metadata lists them.
    nodes: Vec<crate::kafka::logs::Broker>,
    /// On a cluster: whether its database and object store answer this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    database: Option<ProbeView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    object_store: Option<ProbeView>,
    /// On a cluster whose database answers: the live leases by name (at most
    /// [`weir_cluster::status::LEASES_LISTED_MAX`]), and how many there are.
    #[serde(skip_serializing_if = "Option::is_none")]
    leases: Option<Vec<LeaseView>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leases_total: Option<i64>,
}

#[derive(Serialize)]
struct ProbeView {
    ok: bool,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<weir_cluster::status::Probe> for ProbeView {
    fn from(p: weir_cluster::status::Probe) -> Self {
        ProbeView {
            ok: p.error.is_none(),
            latency_ms: (p.latency_ms * 100.0).round() / 100.0,
            error: p.error,
        }
    }
}

#[derive(Serialize)]
struct LeaseView {
    name: String,
    holder: String,
    epoch: i64,
    expires_in_ms: i64,
    /// What the holder reports, as JSON when it is JSON (a group's state and members).
    note: Option<serde_json::Value>,
}

impl From<weir_cluster::status::LeaseRow> for LeaseView {
    fn from(l: weir_cluster::status::LeaseRow) -> Self {
        LeaseView {
            note: l
                .note
                .map(|n| serde_json::from_str(&n).unwrap_or(serde_json::Value::String(n))),
            name: l.name,
            holder: l.holder,
            epoch: l.epoch,
            expires_in_ms: l.expires_in_ms,
        }
    }
}

async fn describe_cluster(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<ClusterSummary>> {
    caller.check(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME)?;
    let logs = state.node.logs.clone();
    blocking(move || {
        let id = logs.cluster_node_id();
        let health = logs.cluster_health();
        let (database, object_store, leases) = match health {
            Some(h) => (
                Some(h.database.into()),
                Some(h.object_store.into()),
                h.leases,
            ),
            None => (None, None, None),
        };
        let leases_total = leases.as_ref().map(|(_, total)| *total);
        Ok(Json(ClusterSummary {
            mode: if id.is_some() { "cluster" } else { "single" },
            node_id: id.unwrap_or(crate::kafka::logs::NODE_ID),
            nodes: logs.brokers(),
            database,
            object_store,
            leases: leases.map(|(rows, _)| rows.into_iter().map(LeaseView::from).collect()),
            leases_total,
        }))
    })
    .await
}

#[derive(Serialize)]
struct Connections {
    kafka: i64,
    http: i64,
    postgres: i64,
}

#[derive(Serialize)]
struct NodeSummary {
    version: &'static str,
    uptime_seconds: u64,
    topics: usize,
    partitions: u64,
    offline_partitions: usize,
    /// Bytes of every partition's segments.
    size_bytes: u64,
    disk_free_bytes: u64,
    connections: Connections,
    /// Bytes and records taken in and given out since the node started.
    totals: Totals,
    pipelines: usize,
    groups: usize,
}

async fn describe_node(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<NodeSummary>> {
    caller.check(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME)?;
    let node = state.node.clone();
    blocking(move || {
        let topics = node.topics.list_topics()?;
        let mut partitions = 0u64;
        let mut size_bytes = 0u64;
        for topic in &topics {
            partitions += u64::from(topic.partitions);
            // A partition offline since recovery has no log to weigh.
            for (_, size) in node.topics.partition_sizes(topic)? {
                size_bytes += size.bytes;
            }
        }
        let metrics = &node.metrics;
        Ok(Json(NodeSummary {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: node.history.uptime().as_secs(),
            topics: topics.len(),
            partitions,
            offline_partitions: node.storage.offline_partitions().len(),
            size_bytes,
            disk_free_bytes: node.storage.space().free_bytes(),
            connections: Connections {
                kafka: metrics.connections(Protocol::Kafka),
                http: metrics.connections(Protocol::Http),
                postgres: metrics.connections(Protocol::Postgres),
            },
            totals: metrics.totals(),
            pipelines: node.runtime.pipelines().list().map_or(0, |p| p.len()),
            groups: node.groups.list()?.groups.len(),
        }))
    })
    .await
}

#[derive(Serialize)]
struct NodeHistory {
    interval_seconds: u64,
    samples_max: usize,
    samples: Vec<Sample>,
    /// Each topic's rates over the last interval.
    topics: BTreeMap<String, Rates>,
}

async fn node_history(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<NodeHistory>> {
    caller.check(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME)?;
    Ok(Json(NodeHistory {
        interval_seconds: SAMPLE_INTERVAL.as_secs(),
        samples_max: SAMPLES_MAX,
        samples: state.node.history.samples(),
        topics: state
            .node
            .history
            .topic_rates()
            .into_iter()
            .filter(|(topic, _)| caller.may(Operation::Describe, ResourceType::Topic, topic))
            .collect(),
    }))
}
