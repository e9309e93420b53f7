//! Where the Kafka data path reads and writes: the node's own segmented logs, or the cluster's
//! shared log. Produce, Fetch, ListOffsets, Metadata, CreateTopics, InitProducerId and
//! FindCoordinator go through [`Logs`]; nothing in them knows which one answers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use weir_storage::{LogFile, Produced, Storage, StorageError, TopicMeta, Topics, locks};

use super::frame::LENT_BYTES_MIN;

/// A broker as Metadata, FindCoordinator and DescribeCluster name it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Broker {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

/// What the data path needs to know of a topic.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TopicInfo {
    /// Kafka's topic id.
    pub id: uuid::Uuid,
    pub partitions: u32,
}

impl From<&TopicMeta> for TopicInfo {
    fn from(meta: &TopicMeta) -> TopicInfo {
        TopicInfo {
            id: uuid::Uuid::from_bytes(meta.id),
            partitions: meta.partitions,
        }
    }
}

/// What a successful append reports: base offset, log append time, log start offset; -1 for
/// the first two when the records wait for delayed delivery, -1 for a time or start offset the
/// log does not know.
pub(crate) type Appended = (i64, i64, i64);

/// Whole batches read from a partition, and where its log stands.
pub(crate) struct PartitionRead {
    pub high_watermark: u64,
    pub log_start_offset: u64,
    pub records: Option<Bytes>,
    /// Records in `records`, counted from the batch headers the read went through.
    pub record_count: u64,
    /// The file and position the records were read from, when they are large enough to be
    /// sent from it.
    pub file: Option<(LogFile, u64)>,
}

/// What a cluster node holds on the way to and from the shared log, for `/metrics`.
pub(crate) struct ClusterStats {
    pub cache: weir_cluster::CacheStats,
    /// Bytes of record sets waiting for a flush or in one, and their bound.
    pub parked_bytes: u64,
    pub parked_bytes_max: u64,
    /// The node's connections to the cluster database.
    pub db: weir_cluster::PoolStats,
}

/// The cluster as `weir cluster status` shows it, through one node.
pub struct ClusterHealth {
    pub database: weir_cluster::status::Probe,
    pub object_store: weir_cluster::status::Probe,
    /// The live leases, at most [`weir_cluster::status::LEASES_LISTED_MAX`], and how many
    /// there are; `None` when the database did not answer.
    pub leases: Option<(Vec<weir_cluster::status::LeaseRow>, i64)>,
}

/// The partitions behind the Kafka listener.
pub(crate) trait Logs: Send + Sync {
    /// This node's broker id when it is a node of a cluster; `None` for a single node.
    fn cluster_node_id(&self) -> Option<i32>;
    /// The brokers clients may connect to, by id.
    fn brokers(&self) -> Vec<Broker>;
    /// The broker Metadata names as the partition's leader, out of `brokers`.
    fn leader(&self, brokers: &[Broker], topic: &str, partition: u32) -> i32;
    /// The broker that coordinates the group `key`.
    fn coordinator(&self, key: &str) -> Broker;
    /// Which of `groups` this node coordinates, as FindCoordinator would answer, in order,
    /// given the node holding each group's live lease (`holders`, by group, as
    /// [`Coordinator::list`](super::groups::Coordinator::list) read them).
    fn coordinates(&self, groups: &[String], _holders: &HashMap<String, String>) -> Vec<bool> {
        vec![true; groups.len()]
    }
    /// The HTTP listener (`host:port`) of the node coordinating the group `key` when that is
    /// another node of the cluster; `None` when it is this one. May wait for the cluster
    /// database.
    fn coordinator_http(&self, key: &str) -> Option<String>;
    /// The HTTP listeners (`host:port`) of the other live nodes of the cluster; none for a
    /// single node.
    fn peers_http(&self) -> Vec<String> {
        Vec::new()
    }
    /// What the node holds for the cluster; `None` for a single node.
    fn cluster_stats(&self) -> Option<ClusterStats> {
        None
    }
    /// Whether the cluster's database and object store answer this node, and the cluster's
    /// leases; `None` for a single node. Waits for the answers: never on a reactor thread.
    fn cluster_health(&self) -> Option<ClusterHealth> {
        None
    }
    fn topic(&self, name: &str) -> Result<Option<TopicInfo>, StorageError>;
    fn topic_names(&self) -> Result<Vec<String>, StorageError>;
    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StorageError>;
    /// The topic, created with `partitions` and `configs` if it does not exist (when another
    /// caller creates it at the same time, theirs).
    fn topic_or_create(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StorageError>;
    /// The largest record set the topic takes (`max.message.bytes`).
    fn batch_bytes_max(&self, topic: &str) -> Result<u64, StorageError>;
    /// A topic with its explicit configs, as it stands now.
    fn topic_meta(&self, name: &str) -> Result<Option<TopicMeta>, StorageError>;
    /// [`Logs::topic_meta`] of a topic that must exist: [`StorageError::UnknownTopic`] if not.
    fn existing_topic(&self, name: &str) -> Result<TopicMeta, StorageError> {
        self.topic_meta(name)?
            .ok_or_else(|| StorageError::UnknownTopic {
                name: name.to_string(),
            })
    }
    /// Deletes a topic with its records.
    fn delete_topic(&self, name: &str) -> Result<(), StorageError>;
    /// Grows a topic to `partitions` partitions.
    fn create_partitions(&self, name: &str, partitions: u32) -> Result<(), StorageError>;
    /// Replaces a topic's explicit configs (Kafka's AlterConfigs), once they pass the checks.
    fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), StorageError>;
    /// Whether the partition exists and can be read now.
    fn readable(&self, topic: &str, partition: u32) -> bool;
    /// Appends a producer's record set, once it is durable.
    fn append(&self, topic: &str, partition: u32, records: Bytes)
    -> Result<Appended, StorageError>;
    /// Whole batches from `offset` on within `limit` bytes; when `first`, the first batch is
    /// returned even if it alone is larger (the response's first, so a consumer moves on).
    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limit: u64,
        first: bool,
    ) -> Result<PartitionRead, StorageError>;
    /// The log start offset and the high watermark.
    fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), StorageError>;
    /// The first offset stamped at or after `timestamp`, with its timestamp.
    fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>, StorageError>;
    /// A producer id never handed out before.
    fn new_producer_id(&self) -> Result<i64, StorageError>;
}

/// Whether `create_topic` would accept a topic made with `name` and `configs`: the name's
/// rules, and each config checked by the layer that owns its key (the node's storage knows
/// them all).
pub(crate) fn check_new_topic(
    storage: &Storage,
    name: &str,
    configs: &BTreeMap<String, String>,
) -> Result<(), StorageError> {
    weir_storage::validate_topic_name(name)?;
    storage.check_topic_configs(configs).map(|_| ())
}

/// The only broker of a single node.
pub(crate) const NODE_ID: i32 = 0;

const PRODUCER_IDS_TREE: &str = "producer-ids";
const NEXT_PRODUCER_ID: &str = "next";

/// The node's own segmented logs.
pub(crate) struct LocalLogs {
    storage: Arc<Storage>,
    advertised: (String, u16),
    /// Serializes producer id allocation.
    producer_ids: Mutex<()>,
}

impl LocalLogs {
    pub(crate) fn new(storage: Arc<Storage>, advertised: (String, u16)) -> LocalLogs {
        LocalLogs {
            storage,
            advertised,
            producer_ids: Mutex::new(()),
        }
    }

    fn this(&self) -> Broker {
        Broker {
            id: NODE_ID,
            host: self.advertised.0.clone(),
            port: self.advertised.1,
        }
    }
}

impl Logs for LocalLogs {
    fn cluster_node_id(&self) -> Option<i32> {
        None
    }

    fn brokers(&self) -> Vec<Broker> {
        vec![self.this()]
    }

    fn leader(&self, _brokers: &[Broker], _topic: &str, _partition: u32) -> i32 {
        NODE_ID
    }

    fn coordinator(&self, _key: &str) -> Broker {
        self.this()
    }

    fn coordinator_http(&self, _key: &str) -> Option<String> {
        None
    }

    fn topic(&self, name: &str) -> Result<Option<TopicInfo>, StorageError> {
        Ok(self.storage.topic(name)?.as_ref().map(TopicInfo::from))
    }

    fn topic_names(&self) -> Result<Vec<String>, StorageError> {
        Ok(self
            .storage
            .list_topics()?
            .into_iter()
            .map(|t| t.name)
            .collect())
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StorageError> {
        let meta = self.storage.create_topic(name, partitions, configs)?;
        Ok(TopicInfo::from(&meta))
    }

    fn topic_or_create(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StorageError> {
        let meta = Topics::topic_or_create(&*self.storage, name, partitions, configs)?;
        Ok(TopicInfo::from(&meta))
    }

    fn batch_bytes_max(&self, topic: &str) -> Result<u64, StorageError> {
        Topics::batch_bytes_max(&*self.storage, topic)
    }

    fn topic_meta(&self, name: &str) -> Result<Option<TopicMeta>, StorageError> {
        self.storage.topic(name)
    }

    fn delete_topic(&self, name: &str) -> Result<(), StorageError> {
        self.storage.delete_topic(name)
    }

    fn create_partitions(&self, name: &str, partitions: u32) -> Result<(), StorageError> {
        self.storage.create_partitions(name, partitions).map(|_| ())
    }

    fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        self.storage.set_topic_configs(name, configs).map(|_| ())
    }

    fn readable(&self, topic: &str, partition: u32) -> bool {
        self.storage.log(topic, partition).is_ok()
    }

    fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
    ) -> Result<Appended, StorageError> {
        let produced = self.storage.produce(topic, partition, &records)?;
        let log_start_offset = self.storage.log(topic, partition)?.log_start_offset() as i64;
        Ok(match produced {
            Produced::Appended(info) => (
                info.base_offset as i64,
                info.log_append_time_ms.unwrap_or(-1),
                log_start_offset,
            ),
            Produced::Delayed { .. } => (-1, -1, log_start_offset),
        })
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limit: u64,
        first: bool,
    ) -> Result<PartitionRead, StorageError> {
        let log = self.storage.log(topic, partition)?;
        let read = if first {
            log.read(offset, limit.max(1))?
        } else {
            log.read_fitting(offset, limit)?
        };
        let (records, record_count, file) = match &read.slice {
            Some(slice) => {
                let bytes = slice.map()?;
                let file = (bytes.len() >= LENT_BYTES_MIN)
                    .then(|| slice.file().map(|f| (f, slice.position())))
                    .transpose()?;
                (Some(bytes), slice.records(), file)
            }
            None => (None, 0, None),
        };
        Ok(PartitionRead {
            high_watermark: read.high_watermark,
            log_start_offset: read.log_start_offset,
            records,
            record_count,
            file,
        })
    }

    fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), StorageError> {
        let log = self.storage.log(topic, partition)?;
        Ok((log.log_start_offset(), log.high_watermark()))
    }

    fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>, StorageError> {
        self.storage
            .log(topic, partition)?
            .offset_for_timestamp(timestamp)
    }

    /// The next unused id from a counter in the metadata store, persisted before it is handed
    /// out, so ids are never reused across restarts.
    fn new_producer_id(&self) -> Result<i64, StorageError> {
        let _guard = locks::lock(&self.producer_ids);
        let tree = self.storage.meta().tree::<i64>(PRODUCER_IDS_TREE)?;
        let id = tree.get(NEXT_PRODUCER_ID)?.unwrap_or(0);
        tree.insert(NEXT_PRODUCER_ID, &(id + 1))?;
        Ok(id)
    }
}
