//! `/v1/node`: what this node is and holds now, `/v1/node/history`: its rates and consumer
//! group lags over the last minutes ([`crate::history`]), and `/v1/cluster`: the nodes of its
//! cluster. They describe the whole node, so a SASL user needs `describe` on the cluster.

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
}

async fn describe_cluster(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<ClusterSummary>> {
    caller.check(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME)?;
    let logs = state.node.logs.clone();
    blocking(move || {
        let id = logs.cluster_node_id();
        Ok(Json(ClusterSummary {
            mode: if id.is_some() { "cluster" } else { "single" },
            node_id: id.unwrap_or(crate::kafka::logs::NODE_ID),
            nodes: logs.brokers(),
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
            groups: node.groups.list()?.len(),
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
