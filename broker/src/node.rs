//! What every listener of a node shares ([`NodeContext`]), and the views of it the listeners
//! and the SQL system tables read: group positions and lag, the bounded resources for
//! `/metrics`, groups and connections for `weir.groups` and `weir.connections`.

use std::sync::Arc;

use weir_runtime::Runtime;
use weir_sql::{ConnectionRow, GroupRow, NodeRow, NodeSource, QueryEngine};
use weir_storage::{Storage, StorageError};

use crate::kafka::groups::{self, Coordinator, GroupLag, GroupListing};
use crate::kafka::logs::{Logs, NODE_ID};
use crate::limits::Limits;
use crate::metrics::{Bound, Metrics, Protocol};

/// What every listener of a node shares.
#[derive(Clone)]
pub struct NodeContext {
    pub storage: Arc<Storage>,
    pub groups: Arc<Coordinator>,
    pub metrics: Arc<Metrics>,
    /// The partitions the Kafka data path reads and writes: the data directory's, or the
    /// cluster's.
    pub(crate) logs: Arc<dyn crate::kafka::logs::Logs>,
    /// The topics SQL and the HTTP record pages read, and SQL appends to: the data directory's, or
    /// the cluster's.
    pub topics: Arc<dyn weir_storage::Topics>,
    pub runtime: Arc<Runtime>,
    pub sql: Arc<QueryEngine>,
    pub limits: Arc<Limits>,
    /// The users SASL authenticates.
    pub users: Arc<crate::sasl::Users>,
    /// Who may do what, for SASL users.
    pub acls: Arc<crate::acl::Acls>,
    /// Users who pass every ACL check.
    pub super_users: Arc<[String]>,
    /// Wakes long-polling fetches when a partition they wait on gets new readable records.
    pub appends: Arc<crate::kafka::appends::Appends>,
    /// What the columnar copy builder did, for `/metrics`.
    pub columnar: Arc<weir_sql::columnar::BuilderStats>,
    /// Rates and lag over the last minutes, and the time since the node started.
    pub history: Arc<crate::history::History>,
}

/// A group's committed offset on one partition, beside the partition's end.
pub struct GroupPosition {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// The partition's high watermark; `None` when the partition is gone or offline.
    pub end: Option<i64>,
}

impl GroupPosition {
    /// Records between the committed offset and the end.
    pub fn lag(&self) -> Option<i64> {
        self.end.map(|end| (end - self.committed).max(0))
    }
}

/// Every committed offset of `group` with its partition's end.
fn group_positions(
    logs: &dyn Logs,
    groups: &Coordinator,
    group: &str,
) -> Result<Vec<GroupPosition>, StorageError> {
    Ok(groups
        .committed_all(group)?
        .into_iter()
        .map(|(topic, partition, committed)| GroupPosition {
            end: logs
                .offsets(&topic, partition.max(0) as u32)
                .ok()
                .map(|(_, end)| end as i64),
            topic,
            partition,
            committed: committed.offset,
        })
        .collect())
}

/// Every group (as ListGroups shows it) with the positions of its committed partitions: what
/// `/metrics` lag and `weir.groups` are both made from.
fn all_group_positions(
    logs: &dyn Logs,
    groups: &Coordinator,
) -> Vec<(GroupListing, Vec<GroupPosition>)> {
    groups
        .list()
        .unwrap_or_default()
        .groups
        .into_iter()
        .map(|g| {
            let positions = group_positions(logs, groups, &g.group).unwrap_or_default();
            (g, positions)
        })
        .collect()
}

impl NodeContext {
    /// Every committed offset of `group` with its partition's end.
    pub fn group_positions(&self, group: &str) -> Result<Vec<GroupPosition>, StorageError> {
        group_positions(self.logs.as_ref(), &self.groups, group)
    }

    /// Every resource clients can make the node hold, with its bound, for `/metrics`.
    pub fn bounds(&self) -> Vec<Bound> {
        let bound = |name, help, used: u64, bound: u64| Bound {
            name,
            help,
            used,
            bound,
            bound_suffix: "max",
        };
        let space = self.storage.space();
        let delays = self.storage.delays().stats();
        let groups = self.groups.usage();
        let (sql_bytes, sql_bytes_max) = self.sql.memory_usage();
        let (cache_bytes, cache_bytes_max) = self.sql.cache_usage();
        let mut bounds = vec![
            bound(
                "groups",
                "Consumer groups with members held by the coordinator",
                groups.groups as u64,
                groups::GROUPS_MAX as u64,
            ),
            bound(
                "group_leases",
                "Consumer group leases this cluster node holds (0 on a lone node)",
                groups.leases as u64,
                groups::GROUPS_MAX as u64,
            ),
            bound(
                "group_members_largest",
                "Members of the largest consumer group",
                groups.largest_members as u64,
                groups::GROUP_MEMBERS_MAX as u64,
            ),
            bound(
                "groups_metadata_bytes",
                "Bytes of member metadata and assignments the coordinator holds",
                groups.metadata_bytes,
                groups::GROUPS_METADATA_BYTES_MAX,
            ),
            bound(
                "sql_memory_bytes",
                "Bytes running SQL queries hold in the query memory pool",
                sql_bytes as u64,
                sql_bytes_max as u64,
            ),
            bound(
                "sql_cache_bytes",
                "Bytes of columns SQL scans decoded from active segments, kept for the next query",
                cache_bytes as u64,
                cache_bytes_max as u64,
            ),
            bound(
                "password_checks",
                "Password checks (SASL PLAIN, HTTP basic authentication, Postgres) running",
                self.users.checks_running() as u64,
                crate::sasl::PASSWORD_CHECKS_MAX as u64,
            ),
            bound(
                "connections",
                "Open Kafka connections",
                self.metrics.connections(Protocol::Kafka).max(0) as u64,
                u64::from(self.limits.connections_max()),
            ),
            bound(
                "http_connections",
                "Open HTTP connections",
                self.metrics.connections(Protocol::Http).max(0) as u64,
                u64::from(self.limits.http_connections_max()),
            ),
            bound(
                "pg_connections",
                "Open Postgres connections",
                self.limits.pg_connections() as u64,
                crate::limits::PG_CONNECTIONS_MAX as u64,
            ),
            bound(
                "request_memory_bytes",
                "Bytes of Kafka request frames being read or handled",
                self.limits.request_memory_bytes(),
                self.limits.request_memory_bytes_max(),
            ),
            bound(
                "partitions",
                "Partitions of all topics",
                u64::from(self.storage.partition_count()),
                u64::from(self.storage.partitions_max()),
            ),
            bound(
                "users",
                "Users SASL authenticates (0 while the store of users cannot be read)",
                self.users.count().unwrap_or(0) as u64,
                crate::sasl::USERS_MAX as u64,
            ),
            bound(
                "acls",
                "ACL rules",
                self.acls.count() as u64,
                crate::acl::ACLS_MAX as u64,
            ),
            bound(
                "open_segments",
                "Closed segments whose files are open",
                weir_storage::open_segments() as u64,
                self.storage.open_segments_max() as u64,
            ),
            bound(
                "fetch_lent_sets",
                "Record sets unsent fetch responses hold by reference to their segment files; past the max they are copied",
                self.metrics.fetch_lent_sets(),
                crate::metrics::FETCH_LENT_SETS_MAX,
            ),
            bound(
                "connection_refusals",
                "Connections past the HTTP or Postgres limit being told why; past the max they are closed unanswered",
                self.metrics.connection_refusals(),
                crate::metrics::CONNECTION_REFUSALS_MAX,
            ),
            bound(
                "delayed_records",
                "Delayed records waiting to be delivered",
                delays.pending.load(std::sync::atomic::Ordering::Relaxed),
                self.storage.delays().pending_max(),
            ),
            Bound {
                name: "disk_free_bytes",
                help: "Free bytes of the data directory's file system; below the min, writes are refused",
                used: space.free_bytes(),
                bound: space.free_bytes_min(),
                bound_suffix: "min",
            },
        ];
        if let Some(cluster) = self.logs.cluster_stats() {
            bounds.extend([
                bound(
                    "cluster_cache_bytes",
                    "Bytes of object ranges the memory tier of the cluster cache holds",
                    cluster.cache.bytes,
                    cluster.cache.bytes_max,
                ),
                bound(
                    "cluster_cache_disk_bytes",
                    "Bytes of object ranges the disk tier of the cluster cache holds (a max of 0: no disk tier)",
                    cluster.cache.disk_bytes,
                    cluster.cache.disk_bytes_max,
                ),
                bound(
                    "cluster_parked_bytes",
                    "Bytes of record sets waiting for a flush to the cluster or in one; past the max, produce waits",
                    cluster.parked_bytes,
                    cluster.parked_bytes_max,
                ),
                bound(
                    "cluster_db_connections_lent",
                    "Connections to the cluster database lent to a query or transaction now; past the max, callers wait",
                    cluster.db.lent,
                    cluster.db.lent_max,
                ),
            ]);
        }
        bounds
    }

    /// Lag of every committed partition of every group.
    pub fn group_lags(&self) -> Vec<GroupLag> {
        all_group_positions(self.logs.as_ref(), &self.groups)
            .into_iter()
            .flat_map(|(g, positions)| {
                positions.into_iter().filter_map(move |p| {
                    Some(GroupLag {
                        lag: p.lag()?,
                        group: g.group.clone(),
                        topic: p.topic,
                        partition: p.partition,
                    })
                })
            })
            .collect()
    }
}

/// What the SQL system tables `weir.groups`, `weir.connections` and `weir.nodes` read from
/// the broker.
pub(crate) struct BrokerState {
    pub groups: Arc<Coordinator>,
    pub metrics: Arc<Metrics>,
    pub logs: Arc<dyn Logs>,
}

impl NodeSource for BrokerState {
    fn node_rows(&self) -> Vec<NodeRow> {
        let this = self.logs.cluster_node_id().unwrap_or(NODE_ID);
        self.logs
            .brokers()
            .into_iter()
            .map(|b| NodeRow {
                node_id: b.id,
                host: b.host,
                kafka_port: i32::from(b.port),
                this: b.id == this,
            })
            .collect()
    }

    fn group_rows(&self) -> Vec<GroupRow> {
        all_group_positions(self.logs.as_ref(), &self.groups)
            .into_iter()
            .flat_map(|(g, positions)| {
                positions.into_iter().map(move |p| GroupRow {
                    group: g.group.clone(),
                    state: g.state.name().to_string(),
                    members: g.members as i32,
                    topic: p.topic,
                    partition: p.partition,
                    committed_offset: p.committed,
                    end_offset: p.end,
                })
            })
            .collect()
    }

    fn connection_rows(&self) -> Vec<ConnectionRow> {
        self.metrics
            .connection_list()
            .into_iter()
            .map(|c| ConnectionRow {
                protocol: c.protocol.name().to_string(),
                peer: c.peer,
                client_id: c.client_id,
                connected_ms: c.connected_ms,
                requests: c.requests as i64,
            })
            .collect()
    }
}
