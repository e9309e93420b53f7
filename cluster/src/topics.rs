//! Topics of the cluster: rows of `weir.topics` and `weir.partitions`, created, grown, given
//! configs and deleted through any node, and each node's cache of them.
//!
//! Changes run in one transaction under a table lock that serializes them (reads go on), and
//! announce the topic on [`TOPICS_CHANNEL`] at commit; every node's listener then forgets its
//! cached copy, so the next request reads the new one. A node that missed announcements (its
//! listening connection dropped) forgets every topic when it listens again. Until an
//! announcement arrives a node may act on its old copy; the flush, offsets and long polls look
//! the partition up in the transaction they run and answer an unknown partition when it is gone,
//! forgetting the topic there too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use tokio_postgres::Transaction;
use weir_storage::config::known_keys;
use weir_storage::{LogConfig, PARTITIONS_MAX, locks, validate_topic_name};

use crate::retention::drop_batches;
use crate::{ClusterError, Result, SharedLog};

/// The channel topic changes are announced on; the payload is the topic's name.
pub(crate) const TOPICS_CHANNEL: &str = "weir_topics";

/// Most explicit configs one topic may carry.
pub const TOPIC_CONFIGS_MAX: usize = 64;

/// Longest config key or value, in bytes.
pub const TOPIC_CONFIG_BYTES_MAX: usize = 4096;

/// A topic as the cluster database keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub id: i64,
    pub name: String,
    pub partitions: u32,
    /// Configs set explicitly (Kafka keys); defaults are not stored.
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
    /// Largest record set a producer may send (`max.message.bytes`).
    pub batch_bytes_max: u64,
}

/// The columns [`topic_of_row`] reads, in its order.
const TOPIC_COLUMNS: &str = "topic_id, name, partitions,
    (extract(epoch FROM created_at) * 1000)::bigint,
    array(SELECT key FROM jsonb_each_text(configs) ORDER BY key),
    array(SELECT value FROM jsonb_each_text(configs) ORDER BY key)";

fn topic_of_row(row: &tokio_postgres::Row) -> Topic {
    let keys: Vec<String> = row.get(4);
    let values: Vec<String> = row.get(5);
    let configs: BTreeMap<String, String> = keys.into_iter().zip(values).collect();
    Topic {
        id: row.get(0),
        name: row.get(1),
        partitions: row.get::<_, i32>(2) as u32,
        created_ms: row.get(3),
        batch_bytes_max: log_config(&configs).batch_bytes_max,
        configs,
    }
}

/// What a node knows of the topics it has looked up.
#[derive(Default)]
pub(crate) struct TopicCache {
    by_name: Mutex<HashMap<String, Arc<Topic>>>,
    /// Names by id: ids are never reused, so these stay true after a deletion.
    names: Mutex<HashMap<i64, String>>,
}

impl TopicCache {
    fn get(&self, name: &str) -> Option<Arc<Topic>> {
        locks::lock(&self.by_name).get(name).cloned()
    }

    fn insert(&self, topic: Arc<Topic>) {
        locks::lock(&self.names).insert(topic.id, topic.name.clone());
        locks::lock(&self.by_name).insert(topic.name.clone(), topic);
    }

    /// Drops the cached copy of `name`, as an announcement or a missing partition says.
    pub(crate) fn forget(&self, name: &str) {
        locks::lock(&self.by_name).remove(name);
    }

    /// Drops every cached topic: announcements may have been missed.
    pub(crate) fn forget_all(&self) {
        locks::lock(&self.by_name).clear();
    }

    fn name(&self, id: i64) -> Option<String> {
        locks::lock(&self.names).get(&id).cloned()
    }
}

/// A topic's settings of the log layer: its configs over the defaults, where they set them.
fn log_config(configs: &BTreeMap<String, String>) -> LogConfig {
    let storage_keys = known_keys();
    let own: BTreeMap<String, String> = configs
        .iter()
        .filter(|(k, _)| storage_keys.iter().any(|(known, _)| known == k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let defaults = LogConfig::default();
    LogConfig::from_entries(&defaults, &own).unwrap_or(defaults)
}

impl Topic {
    /// The topic's settings of the log layer (retention, cleanup policy, record set bound).
    pub fn log_config(&self) -> LogConfig {
        log_config(&self.configs)
    }
}

/// Refuses configs past the bounds of their count and sizes; their keys and values are checked
/// by the node against every layer's keys before they get here.
fn check_configs(name: &str, configs: &BTreeMap<String, String>) -> Result<()> {
    if configs.len() > TOPIC_CONFIGS_MAX {
        return Err(ClusterError::InvalidRequest(format!(
            "{name}: {} configs, allowed at most {TOPIC_CONFIGS_MAX}",
            configs.len()
        )));
    }
    match configs
        .iter()
        .find(|(k, v)| k.len().max(v.len()) > TOPIC_CONFIG_BYTES_MAX)
    {
        Some((key, _)) => Err(ClusterError::InvalidRequest(format!(
            "{name}: config {key:?} is longer than {TOPIC_CONFIG_BYTES_MAX} bytes"
        ))),
        None => Ok(()),
    }
}

fn check_partitions(name: &str, partitions: u32) -> Result<()> {
    if partitions == 0 || partitions > PARTITIONS_MAX {
        return Err(ClusterError::InvalidTopic(format!(
            "{name}: {partitions} partitions, allowed 1 to {PARTITIONS_MAX}"
        )));
    }
    Ok(())
}

fn unknown_topic(name: &str) -> ClusterError {
    ClusterError::UnknownTopic(name.to_string())
}

/// Takes the lock topic changes run under and answers the partitions of every topic together.
async fn lock_topics(tx: &Transaction<'_>) -> Result<u64> {
    // Changes one at a time, so two cannot both pass the partition bound; reads go on.
    tx.batch_execute("LOCK TABLE weir.topics IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let row = tx
        .query_one("SELECT coalesce(sum(partitions), 0) FROM weir.topics", &[])
        .await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// Tells every node's listener, at commit, that `name` changed.
async fn announce(tx: &Transaction<'_>, name: &str) -> Result<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&TOPICS_CHANNEL, &name])
        .await?;
    Ok(())
}

impl SharedLog {
    /// Refuses `more` partitions when the cluster's would pass
    /// [`NodeConfig::partitions_max`](crate::NodeConfig).
    fn check_room(&self, name: &str, existing: u64, more: u32) -> Result<()> {
        let total = existing + u64::from(more);
        if total > u64::from(self.partitions_max) {
            return Err(ClusterError::TooManyPartitions {
                topic: name.to_string(),
                requested: more,
                current: existing,
                partitions_max: self.partitions_max,
            });
        }
        Ok(())
    }

    /// Creates a topic with `partitions` partitions, each starting at offset 0, and its
    /// explicit configs, if the cluster's partitions stay within
    /// [`NodeConfig::partitions_max`](crate::NodeConfig).
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        validate_topic_name(name).map_err(|e| ClusterError::InvalidTopic(e.to_string()))?;
        check_partitions(name, partitions)?;
        check_configs(name, configs)?;
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        let existing = lock_topics(&tx).await?;
        if tx
            .query_opt("SELECT 1 FROM weir.topics WHERE name = $1", &[&name])
            .await?
            .is_some()
        {
            return Err(ClusterError::TopicExists(name.to_string()));
        }
        self.check_room(name, existing, partitions)?;
        let (keys, values): (Vec<&str>, Vec<&str>) = configs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .unzip();
        let row = tx
            .query_one(
                "INSERT INTO weir.topics (name, partitions, configs)
                 VALUES ($1, $2, jsonb_object($3::text[], $4::text[]))
                 RETURNING topic_id",
                &[&name, &(partitions as i32), &keys, &values],
            )
            .await?;
        let topic_id: i64 = row.get(0);
        tx.execute(
            "INSERT INTO weir.partitions (topic_id, partition)
             SELECT $1, p FROM generate_series(0, $2 - 1) AS p",
            &[&topic_id, &(partitions as i32)],
        )
        .await?;
        // A node may still hold a deleted topic of the same name.
        announce(&tx, name).await?;
        tx.commit().await?;
        self.topics.forget(name);
        Ok(())
    }

    /// Deletes a topic with its records, idempotent-producer state and committed offsets. Its
    /// objects stay until garbage collection finds no row referencing them; a flush committing
    /// to the topic finishes first.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        lock_topics(&tx).await?;
        let topic_id: i64 = tx
            .query_opt("SELECT topic_id FROM weir.topics WHERE name = $1", &[&name])
            .await?
            .ok_or_else(|| unknown_topic(name))?
            .get(0);
        // In the order flushes lock partitions, so a flush and a deletion never deadlock.
        tx.execute(
            "SELECT 1 FROM weir.partitions WHERE topic_id = $1 ORDER BY partition FOR UPDATE",
            &[&topic_id],
        )
        .await?;
        tx.execute(
            "DELETE FROM weir.producer_batches WHERE topic_id = $1",
            &[&topic_id],
        )
        .await?;
        tx.execute(
            "DELETE FROM weir.group_offsets WHERE topic_id = $1",
            &[&topic_id],
        )
        .await?;
        drop_batches(&tx, "topic_id = $1", &[&topic_id]).await?;
        tx.execute(
            "DELETE FROM weir.partitions WHERE topic_id = $1",
            &[&topic_id],
        )
        .await?;
        tx.execute("DELETE FROM weir.topics WHERE topic_id = $1", &[&topic_id])
            .await?;
        announce(&tx, name).await?;
        tx.commit().await?;
        self.topics.forget(name);
        Ok(())
    }

    /// Grows a topic to `partitions` partitions; the new ones start at offset 0.
    pub async fn create_partitions(&self, name: &str, partitions: u32) -> Result<()> {
        check_partitions(name, partitions)?;
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        let existing = lock_topics(&tx).await?;
        let row = tx
            .query_opt(
                "SELECT topic_id, partitions FROM weir.topics WHERE name = $1",
                &[&name],
            )
            .await?
            .ok_or_else(|| unknown_topic(name))?;
        let (topic_id, current): (i64, i32) = (row.get(0), row.get(1));
        let current = current as u32;
        if partitions <= current {
            return Err(ClusterError::PartitionCount {
                topic: name.to_string(),
                current,
                requested: partitions,
            });
        }
        self.check_room(name, existing, partitions - current)?;
        tx.execute(
            "UPDATE weir.topics SET partitions = $2 WHERE topic_id = $1",
            &[&topic_id, &(partitions as i32)],
        )
        .await?;
        tx.execute(
            "INSERT INTO weir.partitions (topic_id, partition)
             SELECT $1, p FROM generate_series($2, $3 - 1) AS p",
            &[&topic_id, &(current as i32), &(partitions as i32)],
        )
        .await?;
        announce(&tx, name).await?;
        tx.commit().await?;
        self.topics.forget(name);
        Ok(())
    }

    /// Replaces a topic's explicit configs (Kafka's AlterConfigs); keys left out return to
    /// their defaults.
    pub async fn set_topic_configs(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<()> {
        check_configs(name, configs)?;
        let (keys, values): (Vec<&str>, Vec<&str>) = configs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .unzip();
        let mut db = self.db().await?;
        let tx = db.transaction().await?;
        let changed = tx
            .execute(
                "UPDATE weir.topics SET configs = jsonb_object($2::text[], $3::text[])
                 WHERE name = $1",
                &[&name, &keys, &values],
            )
            .await?;
        if changed == 0 {
            return Err(unknown_topic(name));
        }
        announce(&tx, name).await?;
        tx.commit().await?;
        self.topics.forget(name);
        Ok(())
    }

    /// A topic from the node's cache, or read from the database (and cached) when the cache
    /// does not hold it.
    pub async fn topic(&self, name: &str) -> Result<Option<Arc<Topic>>> {
        if let Some(known) = self.topics.get(name) {
            return Ok(Some(known));
        }
        self.topic_now(name).await
    }

    /// A topic as the database holds it now, refreshing the node's cache.
    pub async fn topic_now(&self, name: &str) -> Result<Option<Arc<Topic>>> {
        let row = self
            .db()
            .await?
            .query_opt(
                &format!("SELECT {TOPIC_COLUMNS} FROM weir.topics WHERE name = $1"),
                &[&name],
            )
            .await?;
        let Some(row) = row else {
            self.topics.forget(name);
            return Ok(None);
        };
        let topic = Arc::new(topic_of_row(&row));
        self.topics.insert(topic.clone());
        Ok(Some(topic))
    }

    /// Every topic as the database holds it now, in name order, refreshing the node's cache.
    pub async fn topics_now(&self) -> Result<Vec<Arc<Topic>>> {
        let rows = self
            .db()
            .await?
            .query(
                &format!("SELECT {TOPIC_COLUMNS} FROM weir.topics ORDER BY name"),
                &[],
            )
            .await?;
        let topics: Vec<Arc<Topic>> = rows.iter().map(|r| Arc::new(topic_of_row(r))).collect();
        for topic in &topics {
            self.topics.insert(topic.clone());
        }
        Ok(topics)
    }

    /// A topic that has `partition`; an unknown topic or partition is an error naming it. A
    /// partition past the cached count is looked up again: the topic may have grown.
    pub async fn topic_of(&self, topic: &str, partition: u32) -> Result<Arc<Topic>> {
        let known = match self.topic(topic).await? {
            Some(t) if partition >= t.partitions => self.topic_now(topic).await?,
            known => known,
        };
        match known {
            Some(t) if partition < t.partitions => Ok(t),
            _ => Err(self.unknown_partition(topic, partition)),
        }
    }

    /// The id of a topic that has `partition`, as [`SharedLog::topic_of`] finds it.
    pub(crate) async fn topic_id(&self, topic: &str, partition: u32) -> Result<i64> {
        Ok(self.topic_of(topic, partition).await?.id)
    }

    /// The error for a partition found missing, forgetting the topic's cached copy: it was
    /// deleted, perhaps made again.
    pub(crate) fn unknown_partition(&self, topic: &str, partition: u32) -> ClusterError {
        self.topics.forget(topic);
        ClusterError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        }
    }

    /// The name of a topic this node has looked up by name before.
    pub fn known_topic_name(&self, topic_id: i64) -> Option<String> {
        self.topics.name(topic_id)
    }

    /// The names of every topic, in order.
    pub async fn topic_names(&self) -> Result<Vec<String>> {
        let rows = self
            .db()
            .await?
            .query("SELECT name FROM weir.topics ORDER BY name", &[])
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
