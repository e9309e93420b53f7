//! The data directory: topics registered in the metadata store, one [`Log`] per partition, and
//! the background threads that flush `interval` logs, apply retention and compaction, and
//! deliver delayed records.

use crate::locks;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::compact::compact;
use crate::config::{LayerKey, LogConfig, known_keys, ms_i64};
use crate::delay::{Delays, Target};
use crate::error::{Result, StorageError};
use crate::log::{AppendInfo, Listener, Log, now_ms};
use crate::meta::{MetaStore, TopicMeta, Tree};
use crate::segment::{OPEN_SEGMENTS_MAX_DEFAULT, set_open_segments_max, sync_dir};
use crate::space::{DISK_FREE_BYTES_MIN_DEFAULT, DiskSpace};

/// Most partitions one topic may have.
pub const PARTITIONS_MAX: u32 = 10_000;
/// Default for the partitions of all topics together on one node.
pub const PARTITIONS_MAX_DEFAULT: u32 = 10_000;
/// Longest topic name, as in Kafka.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
const DELETING_SUFFIX: &str = ".deleting";

/// Settings of the data directory as a whole.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub data_dir: PathBuf,
    /// Config of a topic that sets nothing itself.
    pub log_defaults: LogConfig,
    /// How often retention and compaction run (`log.retention.check.interval.ms`).
    pub maintenance_interval_ms: u64,
    /// How often `interval` logs are checked for a due flush.
    pub flush_check_interval_ms: u64,
    /// Distinct keys a compaction pass may hold in memory per partition.
    pub compaction_keys_max: u64,
    /// Partitions of all topics together: each holds open files, mappings and a directory.
    pub partitions_max: u32,
    /// Free bytes below which appends and topic creation are refused.
    pub disk_free_bytes_min: u64,
    /// Closed segments of the process whose files may be open at once; the rest are opened
    /// again when read.
    pub open_segments_max: usize,
    /// Topic config keys other layers own (SQL's `value.format` and `value.schema`), checked
    /// with storage's own on every path that sets a topic's configs.
    pub layer_keys: Vec<LayerKey>,
    /// Delayed records that may wait at once, over all topics.
    pub delayed_records_max: u64,
}

/// Default of [`StorageConfig::delayed_records_max`].
pub const DELAYED_RECORDS_MAX_DEFAULT: u64 = 10_000_000;
/// Default of [`StorageConfig::maintenance_interval_ms`], as Kafka's
/// `log.retention.check.interval.ms`.
pub const MAINTENANCE_INTERVAL_MS_DEFAULT: u64 = 300_000;
/// How often the deliverer looks for due records.
const DELIVER_TICK: Duration = Duration::from_millis(10);

impl StorageConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageConfig {
            data_dir: data_dir.into(),
            log_defaults: LogConfig::default(),
            maintenance_interval_ms: MAINTENANCE_INTERVAL_MS_DEFAULT,
            flush_check_interval_ms: 100,
            compaction_keys_max: crate::COMPACTION_KEYS_MAX,
            partitions_max: PARTITIONS_MAX_DEFAULT,
            disk_free_bytes_min: DISK_FREE_BYTES_MIN_DEFAULT,
            open_segments_max: OPEN_SEGMENTS_MAX_DEFAULT,
            layer_keys: Vec::new(),
            delayed_records_max: DELAYED_RECORDS_MAX_DEFAULT,
        }
    }
}

/// What a background thread does on each tick.
type BackgroundWork = Box<dyn FnMut(&Storage) + Send>;

/// What became of a produced record set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Produced {
    /// Appended at these offsets.
    Appended(AppendInfo),
    /// Waiting in the delay log: these records get their offsets when they fall due.
    Delayed { records: u64 },
}

/// A callback told the topic, records and bytes of each append.
pub type TopicObserver = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// `observer` for the logs of one topic.
fn for_topic(observer: TopicObserver, topic: &str) -> crate::log::AppendObserver {
    let topic = topic.to_owned();
    Arc::new(move |records, bytes| observer(&topic, records, bytes))
}

/// A callback told the topic and partition of a log whose new records became readable.
pub type PartitionListener = Arc<dyn Fn(&str, u32) + Send + Sync>;

/// `listener` for the log of one partition.
fn for_partition(listener: PartitionListener, topic: &str, partition: u32) -> Listener {
    let topic = topic.to_owned();
    Arc::new(move || listener(&topic, partition))
}

type PartitionKey = (String, u32);
/// Open logs by topic, then partition: looked up by `&str` on every produce and fetch, so
/// without building a key.
type LogMap = HashMap<String, BTreeMap<u32, Arc<Log>>>;

/// Checks a topic name against Kafka's rules.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("the name is empty".to_string())
    } else if name == "." || name == ".." {
        Some("'.' and '..' are not allowed".to_string())
    } else if name.len() > TOPIC_NAME_BYTES_MAX {
        Some(format!("longer than {TOPIC_NAME_BYTES_MAX} characters"))
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("character {c:?} is not one of a-z A-Z 0-9 . _ -"))
    };
    match reason {
        Some(reason) => Err(StorageError::InvalidTopicName {
            name: shortened(name),
            reason,
        }),
        None => Ok(()),
    }
}

/// A name as an error shows it: whole when it is short, else its start and its length.
fn shortened(name: &str) -> String {
    const SHOWN_CHARS: usize = 64;
    match name.char_indices().nth(SHOWN_CHARS) {
        None => name.to_string(),
        Some((cut, _)) => format!("{}… ({} bytes)", &name[..cut], name.len()),
    }
}

/// All topics and partition logs under one data directory.
pub struct Storage {
    config: StorageConfig,
    meta: MetaStore,
    topics: Tree<TopicMeta>,
    logs: RwLock<LogMap>,
    offline: RwLock<HashMap<PartitionKey, String>>,
    /// Serializes topic creation, deletion and changes.
    admin: Mutex<()>,
    /// The background threads (maintenance, delayed delivery) and how to stop each.
    background: Mutex<Vec<(Sender<()>, JoinHandle<()>)>>,
    delays: Delays,
    listener: RwLock<Option<PartitionListener>>,
    observer: RwLock<Option<TopicObserver>>,
    space: Arc<DiskSpace>,
}

impl Storage {
    /// Opens the data directory, creating it if needed, and recovers every partition log.
    /// A partition that fails to open is reported by [`Storage::offline_partitions`] and the
    /// rest are served.
    pub fn open(config: StorageConfig) -> Result<Arc<Storage>> {
        let topics_dir = config.data_dir.join("topics");
        std::fs::create_dir_all(&topics_dir).map_err(StorageError::io(&topics_dir))?;
        set_open_segments_max(config.open_segments_max);
        let meta = MetaStore::open(&config.data_dir.join("meta"))?;
        let topics = meta.topics()?;
        let space = Arc::new(DiskSpace::new(
            &config.data_dir,
            config.disk_free_bytes_min,
        )?);
        let delays = Delays::open(
            &config.data_dir.join("delayed"),
            &meta,
            config.delayed_records_max,
        )?;
        let storage = Storage {
            delays,
            space,
            config,
            meta,
            topics,
            logs: RwLock::new(HashMap::new()),
            offline: RwLock::new(HashMap::new()),
            admin: Mutex::new(()),
            background: Mutex::new(Vec::new()),
            listener: RwLock::new(None),
            observer: RwLock::new(None),
        };
        storage.remove_leftover_deletions()?;
        for (_, topic) in storage.topics.all()? {
            let log_config = storage.log_config(&topic.configs);
            for partition in 0..topic.partitions {
                let key = (topic.name.clone(), partition);
                let opened = match &log_config {
                    Ok(c) => Log::open(&storage.partition_dir(&topic.name, partition), c.clone()),
                    Err(e) => Err(StorageError::InvalidConfig {
                        key: "topic config".into(),
                        value: topic.name.clone(),
                        reason: e.to_string(),
                    }),
                };
                match opened {
                    Ok(log) => {
                        storage.add_log(&key.0, key.1, log);
                    }
                    Err(e) => {
                        tracing::error!(topic = %topic.name, partition, error = %e, "partition is offline");
                        locks::write(&storage.offline).insert(key, e.to_string());
                    }
                }
            }
        }
        storage
            .delays
            .recover(|t| storage.open_log(&t.topic, t.partition))?;
        Ok(Arc::new(storage))
    }

    fn write_logs(&self) -> std::sync::RwLockWriteGuard<'_, LogMap> {
        locks::write(&self.logs)
    }

    fn read_logs(&self) -> std::sync::RwLockReadGuard<'_, LogMap> {
        locks::read(&self.logs)
    }

    fn add_log(&self, topic: &str, partition: u32, log: Log) {
        log.set_space(self.space.clone());
        let observer = locks::read(&self.observer).clone();
        log.set_observer(observer.map(|o| for_topic(o, topic)));
        let listener = locks::read(&self.listener).clone();
        log.set_listener(listener.map(|l| for_partition(l, topic, partition)));
        self.write_logs()
            .entry(topic.to_string())
            .or_default()
            .insert(partition, Arc::new(log));
    }

    fn open_log(&self, topic: &str, partition: u32) -> Option<Arc<Log>> {
        self.read_logs()
            .get(topic)
            .and_then(|partitions| partitions.get(&partition))
            .cloned()
    }

    fn topics_dir(&self) -> PathBuf {
        self.config.data_dir.join("topics")
    }

    pub fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.topics_dir().join(format!("{topic}-{partition}"))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// The metadata store, for layers that keep their own trees in it.
    pub fn meta(&self) -> &MetaStore {
        &self.meta
    }

    fn remove_leftover_deletions(&self) -> Result<()> {
        let dir = self.topics_dir();
        for entry in std::fs::read_dir(&dir).map_err(StorageError::io(&dir))? {
            let entry = entry.map_err(StorageError::io(&dir))?;
            if entry
                .file_name()
                .to_string_lossy()
                .ends_with(DELETING_SUFFIX)
            {
                let path = entry.path();
                std::fs::remove_dir_all(&path).map_err(StorageError::io(&path))?;
            }
        }
        sync_dir(&dir)
    }

    pub fn topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        self.topics.get(name)
    }

    /// The topic, or [`StorageError::UnknownTopic`].
    pub fn existing_topic(&self, name: &str) -> Result<TopicMeta> {
        self.topics
            .get(name)?
            .ok_or_else(|| StorageError::UnknownTopic {
                name: name.to_string(),
            })
    }

    pub fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        Ok(self.topics.all()?.into_iter().map(|(_, t)| t).collect())
    }

    /// Partitions that failed to open, with the reason.
    pub fn offline_partitions(&self) -> Vec<(String, u32, String)> {
        let offline = locks::read(&self.offline);
        let mut out: Vec<_> = offline
            .iter()
            .map(|((t, p), reason)| (t.clone(), *p, reason.clone()))
            .collect();
        out.sort();
        out
    }

    /// The log of one partition.
    pub fn log(&self, topic: &str, partition: u32) -> Result<Arc<Log>> {
        if let Some(log) = self.open_log(topic, partition) {
            return Ok(log);
        }
        let offline = locks::read(&self.offline);
        if let Some(reason) = offline.get(&(topic.to_string(), partition)) {
            return Err(StorageError::Offline {
                topic: topic.to_string(),
                partition,
                reason: reason.clone(),
            });
        }
        self.existing_topic(topic)?;
        Err(StorageError::UnknownPartition {
            topic: topic.to_string(),
            partition,
        })
    }

    /// Sets the callback told the topic, records and bytes of every append to any log, present
    /// and future: produce, pipelines and SQL `INSERT` alike.
    pub fn set_append_observer(&self, observer: TopicObserver) {
        *locks::write(&self.observer) = Some(observer.clone());
        for (topic, _, log) in self.logs() {
            log.set_observer(Some(for_topic(observer.clone(), &topic)));
        }
    }

    /// Sets the callback told the topic and partition of every log (present and future) whose
    /// new records become readable.
    pub fn set_listener(&self, listener: PartitionListener) {
        *locks::write(&self.listener) = Some(listener.clone());
        for (topic, partition, log) in self.logs() {
            log.set_listener(Some(for_partition(listener.clone(), &topic, partition)));
        }
    }

    /// Every open partition log.
    pub fn logs(&self) -> Vec<(String, u32, Arc<Log>)> {
        let mut out: Vec<_> = self
            .read_logs()
            .iter()
            .flat_map(|(t, partitions)| {
                partitions
                    .iter()
                    .map(|(p, log)| (t.clone(), *p, log.clone()))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    fn check_partitions(name: &str, partitions: u32) -> Result<()> {
        if partitions == 0 || partitions > PARTITIONS_MAX {
            return Err(StorageError::InvalidConfig {
                key: "partitions".into(),
                value: partitions.to_string(),
                reason: format!("topic {name} needs 1..={PARTITIONS_MAX} partitions"),
            });
        }
        Ok(())
    }

    /// Checks a topic's config entries: storage's own keys by their ranges, other layers' keys
    /// by their owners' checks; any other key is refused. Returns the log settings they make.
    pub fn check_topic_configs(&self, entries: &BTreeMap<String, String>) -> Result<LogConfig> {
        for (key, value) in entries {
            if let Some(layer) = self.config.layer_keys.iter().find(|l| l.name == key) {
                (layer.check)(value, entries).map_err(|reason| StorageError::InvalidConfig {
                    key: key.clone(),
                    value: value.clone(),
                    reason,
                })?;
            }
        }
        self.log_config(entries)
    }

    /// The log settings of config entries, other layers' keys left out.
    fn log_config(&self, entries: &BTreeMap<String, String>) -> Result<LogConfig> {
        let own: BTreeMap<String, String> = entries
            .iter()
            .filter(|(k, _)| !self.config.layer_keys.iter().any(|l| l.name == k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        LogConfig::from_entries(&self.config.log_defaults, &own)
    }

    /// Every topic config key, storage's and other layers', with its default.
    pub fn topic_config_keys(&self) -> Vec<(&'static str, String)> {
        let mut keys = known_keys();
        keys.extend(
            self.config
                .layer_keys
                .iter()
                .map(|l| (l.name, l.default.to_string())),
        );
        keys
    }

    /// Partitions of all topics, open or offline.
    pub fn partition_count(&self) -> u32 {
        let open: usize = self.read_logs().values().map(BTreeMap::len).sum();
        let offline = locks::read(&self.offline).len();
        u32::try_from(open + offline).unwrap_or(u32::MAX)
    }

    pub fn partitions_max(&self) -> u32 {
        self.config.partitions_max
    }

    pub fn open_segments_max(&self) -> usize {
        self.config.open_segments_max
    }

    /// Checks that `requested` more partitions fit the node's limit and the disk.
    fn check_room(&self, requested: u32) -> Result<()> {
        self.space.check()?;
        let current = self.partition_count();
        if current.saturating_add(requested) > self.config.partitions_max {
            return Err(StorageError::TooManyPartitions {
                requested,
                current,
                partitions_max: self.config.partitions_max,
            });
        }
        Ok(())
    }

    /// Why appends would be refused now, if they would: free space below the mark, or logs
    /// whose fsync failed.
    pub fn write_refusal(&self) -> Option<String> {
        if let Err(e) = self.space.check() {
            return Some(e.to_string());
        }
        let failed: Vec<String> = self
            .logs()
            .into_iter()
            .filter(|(_, _, log)| log.is_failed())
            .map(|(topic, partition, _)| format!("{topic}-{partition}"))
            .collect();
        (!failed.is_empty()).then(|| {
            format!(
                "an fsync failed on {} partitions ({}); they refuse writes until the node restarts",
                failed.len(),
                failed.join(", ")
            )
        })
    }

    /// The free-space low-water mark of the data directory.
    pub fn space(&self) -> &DiskSpace {
        &self.space
    }

    /// Opens fresh logs for partitions `from..to` of `name`, removing any leftover directory.
    fn create_logs(&self, name: &str, from: u32, to: u32, config: &LogConfig) -> Result<()> {
        for partition in from..to {
            let dir = self.partition_dir(name, partition);
            if dir.exists() {
                // Left by a creation that crashed before its metadata was written.
                std::fs::remove_dir_all(&dir).map_err(StorageError::io(&dir))?;
            }
            std::fs::create_dir_all(&dir).map_err(StorageError::io(&dir))?;
            let log = Log::open(&dir, config.clone())?;
            self.add_log(name, partition, log);
        }
        sync_dir(&self.topics_dir())
    }

    /// Creates a topic. Its directories are created first and the metadata written last, so a
    /// crash in between leaves no topic (and the directories are replaced on the next try).
    pub fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta> {
        crate::reactor::check("creating a topic");
        validate_topic_name(name)?;
        Self::check_partitions(name, partitions)?;
        let log_config = self.check_topic_configs(&configs)?;
        let _admin = locks::lock(&self.admin);
        if self.topics.get(name)?.is_some() {
            return Err(StorageError::TopicExists {
                name: name.to_string(),
            });
        }
        self.check_room(partitions)?;
        self.create_logs(name, 0, partitions, &log_config)?;
        let meta = TopicMeta {
            name: name.to_string(),
            id: random_id(),
            partitions,
            configs,
            created_ms: now_ms(),
        };
        self.topics.insert(name, &meta)?;
        tracing::info!(topic = name, partitions, "created topic");
        Ok(meta)
    }

    /// Deletes a topic: the metadata first (so it is gone even if a crash interrupts the rest),
    /// then its directories, renamed aside and removed.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        crate::reactor::check("deleting a topic");
        let _admin = locks::lock(&self.admin);
        let meta = self.existing_topic(name)?;
        self.topics.remove(name)?;
        self.write_logs().remove(name);
        for partition in 0..meta.partitions {
            let key = (name.to_string(), partition);
            locks::write(&self.offline).remove(&key);
            let dir = self.partition_dir(name, partition);
            let aside = dir.with_file_name(format!("{name}-{partition}{DELETING_SUFFIX}"));
            match std::fs::rename(&dir, &aside) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StorageError::Io { path: dir, source }),
            }
        }
        sync_dir(&self.topics_dir())?;
        self.remove_leftover_deletions()?;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    /// Grows a topic to `partitions` partitions.
    pub fn create_partitions(&self, name: &str, partitions: u32) -> Result<TopicMeta> {
        crate::reactor::check("adding partitions");
        Self::check_partitions(name, partitions)?;
        let _admin = locks::lock(&self.admin);
        let mut meta = self.existing_topic(name)?;
        if partitions <= meta.partitions {
            return Err(StorageError::PartitionCount {
                name: name.to_string(),
                current: meta.partitions,
                requested: partitions,
            });
        }
        let log_config = self.log_config(&meta.configs)?;
        self.check_room(partitions - meta.partitions)?;
        self.create_logs(name, meta.partitions, partitions, &log_config)?;
        meta.partitions = partitions;
        self.topics.insert(name, &meta)?;
        Ok(meta)
    }

    /// Replaces a topic's explicit configs (Kafka's AlterConfigs semantics); the logs use the
    /// new values from their next append or maintenance pass.
    pub fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta> {
        crate::reactor::check("changing topic configs");
        let log_config = self.check_topic_configs(&configs)?;
        let _admin = locks::lock(&self.admin);
        let mut meta = self.existing_topic(name)?;
        meta.configs = configs;
        self.topics.insert(name, &meta)?;
        for partition in 0..meta.partitions {
            if let Some(log) = self.open_log(name, partition) {
                log.set_config(log_config.clone());
            }
        }
        Ok(meta)
    }

    /// Flushes logs whose `interval` has passed. Returns the number of errors.
    pub fn flush_due(&self, now: i64) -> usize {
        let mut errors = 0;
        for (topic, partition, log) in self.logs() {
            if let Err(e) = log.flush_if_due(now) {
                errors += 1;
                tracing::error!(topic, partition, error = %e, "flush failed");
            }
        }
        errors
    }

    /// One retention and compaction pass over every log. Returns the number of errors.
    pub fn run_maintenance(&self, now: i64) -> usize {
        let mut errors = 0;
        if let Err(e) = self.delays.trim() {
            errors += 1;
            tracing::error!(error = %e, "trimming the delay log failed");
        }
        for (topic, partition, log) in self.logs() {
            if let Err(e) = log.enforce_retention(now) {
                errors += 1;
                tracing::error!(topic, partition, error = %e, "retention failed");
            }
            if let Err(e) = compact(&log, now, self.config.compaction_keys_max) {
                errors += 1;
                tracing::error!(topic, partition, error = %e, "compaction failed");
            }
        }
        errors
    }

    /// Starts the background threads: interval flushes, retention and compaction on one,
    /// delayed delivery on the other.
    pub fn start_background(self: &Arc<Self>) {
        let mut slot = locks::lock(&self.background);
        if !slot.is_empty() {
            return;
        }
        let tick = Duration::from_millis(self.config.flush_check_interval_ms.max(1));
        let maintenance_ms = ms_i64(self.config.maintenance_interval_ms);
        let mut last_maintenance = now_ms();
        let threads: [(&str, Duration, BackgroundWork); 2] = [
            (
                "weir-storage",
                tick,
                Box::new(move |storage| {
                    let now = now_ms();
                    if let Err(e) = storage.space.measure() {
                        tracing::warn!(error = %e, "measuring free disk space failed");
                    }
                    storage.flush_due(now);
                    if now - last_maintenance >= maintenance_ms {
                        last_maintenance = now;
                        storage.run_maintenance(now);
                    }
                }),
            ),
            (
                "weir-delays",
                DELIVER_TICK,
                Box::new(|storage| storage.deliver_delayed()),
            ),
        ];
        for (name, tick, mut work) in threads {
            let (stop, stopped) = mpsc::channel::<()>();
            let storage = Arc::downgrade(self);
            let handle = std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    loop {
                        match stopped.recv_timeout(tick) {
                            Err(RecvTimeoutError::Timeout) => {}
                            _ => return,
                        }
                        let Some(storage) = storage.upgrade() else {
                            return;
                        };
                        work(&storage);
                    }
                });
            match handle {
                Ok(handle) => slot.push((stop, handle)),
                Err(e) => {
                    tracing::error!(error = %e, thread = name, "could not start a storage thread")
                }
            }
        }
    }

    /// Delivers the delayed records that are due, a round at a time while rounds come full.
    fn deliver_delayed(&self) {
        loop {
            let delivered = self
                .delays
                .deliver_due(now_ms(), |t| self.open_log(&t.topic, t.partition));
            match delivered {
                Ok(n) if n == crate::delay::ROUND_RECORDS_MAX => {}
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "delayed delivery failed");
                    return;
                }
            }
        }
    }

    /// Delayed delivery: its counters, limit and pending records.
    pub fn delays(&self) -> &Delays {
        &self.delays
    }

    /// Appends a record set a producer sent, unless it asks for delayed delivery (a record
    /// carries `weir-deliver-at` or `weir-delay-ms`, or the topic sets `delivery.delay.ms`):
    /// then its records wait in the delay log until due ([`crate::delay`]).
    pub fn produce(&self, topic: &str, partition: u32, batches: &[u8]) -> Result<Produced> {
        let log = self.log(topic, partition)?;
        let checked = log.check(batches)?;
        if !checked.delay_header() && checked.config().delivery_delay_ms == 0 {
            return log.append_set(batches, checked).map(Produced::Appended);
        }
        self.space.check()?;
        let target = Target {
            topic: topic.to_string(),
            partition,
        };
        let records = log.write_elsewhere(&checked, || {
            self.delays
                .schedule(&target, batches, checked.config(), now_ms())
        })?;
        // `None`: a producer's retry of records already waiting.
        Ok(Produced::Delayed {
            records: records.unwrap_or(0),
        })
    }

    /// Stops the background thread and closes every log cleanly.
    pub fn close(&self) -> Result<()> {
        let background = std::mem::take(&mut *locks::lock(&self.background));
        for (stop, handle) in background {
            let _ = stop.send(());
            let _ = handle.join();
        }
        if let Err(e) = self.delays.close() {
            tracing::error!(error = %e, "closing the delay log failed");
        }
        let mut first_error = None;
        for (topic, partition, log) in self.logs() {
            if let Err(e) = log.close() {
                tracing::error!(topic, partition, error = %e, "close failed");
                first_error.get_or_insert(e);
            }
        }
        self.meta.flush()?;
        first_error.map_or(Ok(()), Err)
    }
}

/// 16 random bytes from the OS, for topic ids.
fn random_id() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut id = [0u8; 16];
    for chunk in id.chunks_mut(8) {
        // RandomState is seeded from the OS's random source per instance.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_i64(now_ms());
        chunk.copy_from_slice(&h.finish().to_be_bytes());
    }
    id
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("data_dir", &self.data_dir())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["logs", "a.b_c-d", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "white space", &"x".repeat(250)] {
            assert!(matches!(
                validate_topic_name(bad),
                Err(StorageError::InvalidTopicName { .. })
            ));
        }
    }
}
