//! Which nodes are alive, and which one Metadata names as a partition's leader.
//!
//! Every node keeps a `weir.nodes` row and renews its heartbeat; a row not renewed within the
//! session timeout is a dead node. Times are the database's (`now()`), so nodes' clocks need
//! not agree. Any node serves any partition: the leader is only where clients are sent first,
//! chosen by rendezvous hashing so that a node joining or leaving moves few partitions.

use crate::{Result, SharedLog};

/// How a node is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node_id: String,
    pub host: String,
    pub kafka_port: u16,
    pub http_port: u16,
    pub pg_port: u16,
}

impl SharedLog {
    /// Adds this node (or refreshes its row after a restart) with a fresh heartbeat.
    pub async fn register(&self, info: &NodeInfo) -> Result<()> {
        self.db()
            .await?
            .execute(
                "INSERT INTO weir.nodes (node_id, host, kafka_port, http_port, pg_port,
                   started_at, heartbeat_at)
                 VALUES ($1, $2, $3, $4, $5, now(), now())
                 ON CONFLICT (node_id) DO UPDATE SET host = $2, kafka_port = $3,
                   http_port = $4, pg_port = $5, started_at = now(), heartbeat_at = now()",
                &[
                    &self.node_id,
                    &info.host,
                    &i32::from(info.kafka_port),
                    &i32::from(info.http_port),
                    &i32::from(info.pg_port),
                ],
            )
            .await?;
        Ok(())
    }

    /// Renews this node's heartbeat.
    pub async fn heartbeat(&self) -> Result<()> {
        self.db()
            .await?
            .execute(
                "UPDATE weir.nodes SET heartbeat_at = now() WHERE node_id = $1",
                &[&self.node_id],
            )
            .await?;
        Ok(())
    }

    /// Removes this node at once, as on a clean shutdown.
    pub async fn leave(&self) -> Result<()> {
        self.db()
            .await?
            .execute(
                "DELETE FROM weir.nodes WHERE node_id = $1",
                &[&self.node_id],
            )
            .await?;
        Ok(())
    }

    /// The nodes whose heartbeat is younger than `session_timeout_ms`, by node id.
    pub async fn live_nodes(&self, session_timeout_ms: u64) -> Result<Vec<NodeInfo>> {
        let rows = self
            .db()
            .await?
            .query(
                "SELECT node_id, host, kafka_port, http_port, pg_port FROM weir.nodes
                 WHERE heartbeat_at > now() - make_interval(secs => $1::float8 / 1000)
                 ORDER BY node_id",
                &[&(session_timeout_ms as f64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| NodeInfo {
                node_id: r.get(0),
                host: r.get(1),
                kafka_port: port(r.get(2)),
                http_port: port(r.get(3)),
                pg_port: port(r.get(4)),
            })
            .collect())
    }
}

/// Ports are written from `u16`s; anything else in the table reads as 0 (unreachable).
fn port(value: i32) -> u16 {
    u16::try_from(value).unwrap_or(0)
}

/// The node Metadata names as the partition's leader: the one with the highest hash of
/// (topic, partition, node id). The same on every node that sees the same live nodes.
pub fn leader<'a>(topic: &str, partition: u32, nodes: &'a [NodeInfo]) -> Option<&'a NodeInfo> {
    leader_by(topic, partition, nodes, |node| node.node_id.as_str())
}

/// [`leader`] over any list of nodes, each known by `id`.
pub fn leader_by<'a, T, K: AsRef<[u8]> + Ord>(
    topic: &str,
    partition: u32,
    nodes: &'a [T],
    id: impl Fn(&'a T) -> K,
) -> Option<&'a T> {
    let mut key = Vec::with_capacity(topic.len() + 5 + 64);
    nodes.iter().max_by_key(|node| {
        let id = id(*node);
        key.clear();
        key.extend_from_slice(topic.as_bytes());
        key.push(0);
        key.extend_from_slice(&partition.to_be_bytes());
        key.extend_from_slice(id.as_ref());
        // Kafka's own stable hash: the same on every build and platform.
        (weir::murmur2(&key), id)
    })
}
