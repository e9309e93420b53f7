//! Cluster mode of `weir serve` (`--cluster-db` and `--object-store`): the Kafka data path on
//! the cluster's shared log (`weir-cluster`), the node's row in `weir.nodes` and its
//! heartbeat, and wake-ups of long-polling fetches when any node commits.
//!
//! Consumer groups: a node coordinates a group while it holds the lease `group:<id>` (taken
//! when a member first asks this node, renewed at the first heartbeat after a third of it has
//! run, given up when unused for [`GROUP_IDLE`] or when the node stops); FindCoordinator names
//! the holder. Committed offsets are written in Postgres under the lease, so a node that lost
//! it can no longer commit.
//!
//! Every [`GC_EVERY`] a node tries for the `gc` lease and, when it gets it, deletes the objects
//! no row references any more (failed flushes, deleted topics, runs retention dropped). Every
//! `--retention-check-ms` it tries for the `retention` lease and, holding it, drops the oldest
//! runs of partitions past their topic's `retention.ms` or `retention.bytes`. Every
//! [`MERGE_EVERY`] it tries for the `merge` lease and, holding it, merges the runs of each
//! partition that sit in small objects older than [`MERGE_AGE_MS`] into larger objects, then
//! keeps the last record per key in the runs of compacted topics older than that.
//!
//! The Kafka handlers run on the blocking pool; the shared log is async, so each call here
//! blocks that pool thread on the node's runtime until Postgres and the object store answer.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use weir_cluster::{
    Append, ClusterError, FlushConfig, Flusher, GroupOffset, Lease, NodeConfig, NodeInfo,
    SharedLog, Topic,
};
use weir_storage::{
    BatchError, Bounded, PartitionSize, PartitionSource, Present, Storage, StorageError, TopicMeta,
    Tree, TreeBackend, locks,
};

use crate::error::{Error, Result};
use crate::kafka::appends::Appends;
use crate::kafka::groups::{
    CommittedOffset, Elsewhere, GROUPS_MAX, GroupError, GroupNote, GroupStore, StableGroup, State,
};
use crate::kafka::logs::{
    Appended, Broker, ClusterHealth, ClusterStats, Logs, PartitionRead, TopicInfo, check_new_topic,
};
use crate::kafka::record_count;
use crate::metrics::Metrics;
use weir_cluster::status::PROBE_TIMEOUT;

mod pipelines;

/// How often a node renews its heartbeat and re-reads the live nodes.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A node whose heartbeat is older than this is left out of Metadata.
pub const SESSION_TIMEOUT_MS: u64 = 10_000;
/// How long a group's lease runs past its last renewal: a dead coordinator's groups move to
/// another node within this.
const GROUP_LEASE_MS: u64 = SESSION_TIMEOUT_MS;
/// A group lease no request used for this long is given up.
const GROUP_IDLE: Duration = Duration::from_secs(60);
/// How often a node tries for the `gc` lease and, holding it, deletes objects no row
/// references (failed flushes, deleted topics, runs retention dropped).
const GC_EVERY: Duration = Duration::from_secs(60);
/// How often a node tries for the `merge` lease and, holding it, merges partitions' runs out
/// of small objects.
const MERGE_EVERY: Duration = Duration::from_secs(60);
/// Runs in objects younger than this are not merged: tailing readers find them in the cache
/// of the node that wrote them.
const MERGE_AGE_MS: i64 = 5 * 60_000;
/// How long the lease of a background job (`gc`, `retention`, `merge`) runs past its last
/// renewal: a node that dies in a run holds the job up for at most this long.
const JOB_LEASE_MS: u64 = 30_000;
/// How often a running job's lease is renewed: three times a lease, so one slow renewal does
/// not stop the run (a job stops itself once its lease is no longer current).
const JOB_LEASE_RENEW: Duration = Duration::from_millis(JOB_LEASE_MS / 3);

/// How `weir serve` joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The cluster database: a `postgres://` URL or a key=value connection string.
    pub db_url: String,
    /// The object store every node shares (`file:///shared/dir`, `s3://bucket/prefix`).
    pub object_store: String,
    /// Settings of an S3 store, over the `AWS_*` environment variables.
    pub object_store_options: Vec<(String, String)>,
    /// The node's Kafka broker id, unique in the cluster.
    pub node_id: i32,
    /// `cluster.linger.ms`: longest a record set waits for others to share its flush.
    pub linger_ms: u64,
    /// `cluster.flush.bytes`: a flush goes out once its record sets make this many bytes.
    pub flush_bytes: u64,
    /// Bound of the memory tier of the node's cache of object byte ranges.
    pub cache_memory_bytes: u64,
    /// The directory of the cache's disk tier, and its bound (0: no disk tier).
    pub cache_dir: PathBuf,
    pub cache_disk_bytes: u64,
    /// Connections the node keeps to the cluster database at most.
    pub db_connections: usize,
    /// How often the node tries for the `retention` lease and, holding it, applies retention.
    pub retention_check_ms: u64,
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The node's handle on the cluster.
pub(crate) struct ClusterLogs {
    log: Arc<SharedLog>,
    flusher: Flusher,
    this: Broker,
    /// The live nodes as last read, by id; this node alone until the first heartbeat.
    live: RwLock<Vec<Broker>>,
    /// The HTTP listener (`host:port`) of each live node, by id, as last read.
    http: RwLock<HashMap<i32, String>>,
    runtime: Handle,
    /// Counts what the node appends.
    metrics: Arc<Metrics>,
    /// The group leases this node holds, by lease name.
    groups: Mutex<HashMap<String, HeldGroup>>,
    /// Claims of group leases asked of the cluster database and not yet answered: counted
    /// with the held ones against [`GROUPS_MAX`], so claims at once cannot pass it together.
    claiming: AtomicUsize,
    /// The pipeline leases this node holds (its turns at them), by lease name.
    pipelines: Mutex<HashMap<String, Lease>>,
    /// The node's own storage: its checks know every layer's topic config keys.
    storage: Arc<Storage>,
    /// How often the node tries for the `retention` lease.
    retention_check_ms: u64,
}

/// A claim of a group lease under way (see [`ClusterLogs::claim_slot`]).
struct ClaimSlot<'a>(&'a AtomicUsize);

impl Drop for ClaimSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct HeldGroup {
    lease: Lease,
    /// When a request last acted under it.
    used: Instant,
    /// How the group looks now, as JSON ([`GroupNote`]), and whether it is on the lease.
    note: Option<String>,
    noted: bool,
    /// The stable generation the lease's last holder left on it, until the coordinator takes
    /// it up.
    taken_over: Option<StableGroup>,
}

/// Forgets each lease of `lost` still held under the same epoch, saying who acts instead.
fn forget_lost<V>(
    held: &mut HashMap<String, V>,
    lost: Vec<Lease>,
    lease_of: impl Fn(&V) -> &Lease,
    instead: &str,
) {
    for lease in lost {
        tracing::warn!(lease = lease.name(), "lease lost; {instead}");
        if held
            .get(lease.name())
            .is_some_and(|h| lease_of(h).epoch() == lease.epoch())
        {
            held.remove(lease.name());
        }
    }
}

fn group_lease(group: &str) -> String {
    format!("{GROUP_LEASE_PREFIX}{group}")
}

/// The group a lease named by [`group_lease`] is for.
fn group_of(lease: &str) -> Option<&str> {
    lease.strip_prefix(GROUP_LEASE_PREFIX)
}

/// What the name of a group's lease starts with.
const GROUP_LEASE_PREFIX: &str = "group:";

fn cluster_error(what: &str) -> impl FnOnce(ClusterError) -> Error + '_ {
    move |e| Error::Invalid(format!("{what}: {e}"))
}

impl ClusterLogs {
    /// Connects to the cluster database (bringing its schema up to date) and the object store,
    /// and starts the node's flush buffer. `this` is the node as clients reach it.
    pub(crate) async fn open(
        config: &ClusterConfig,
        this: Broker,
        metrics: Arc<Metrics>,
        storage: Arc<Storage>,
    ) -> Result<Arc<ClusterLogs>> {
        let node = NodeConfig {
            cache_memory_bytes: config.cache_memory_bytes,
            cache_dir: Some(config.cache_dir.clone()),
            cache_disk_bytes: config.cache_disk_bytes,
            db_connections: config.db_connections,
            store_options: config.object_store_options.clone(),
            ..NodeConfig::new(
                &config.db_url,
                &config.object_store,
                &config.node_id.to_string(),
            )
        };
        let log = Arc::new(
            SharedLog::open_with(&node)
                .await
                .map_err(cluster_error("joining the cluster"))?,
        );
        let flusher = Flusher::start(
            log.clone(),
            FlushConfig {
                linger_ms: config.linger_ms,
                flush_bytes: config.flush_bytes,
            },
        )
        .map_err(cluster_error("starting the flush buffer"))?;
        Ok(Arc::new(ClusterLogs {
            log,
            flusher,
            live: RwLock::new(vec![this.clone()]),
            http: RwLock::new(HashMap::new()),
            this,
            runtime: Handle::current(),
            metrics,
            groups: Mutex::new(HashMap::new()),
            claiming: AtomicUsize::new(0),
            pipelines: Mutex::new(HashMap::new()),
            storage,
            retention_check_ms: config.retention_check_ms,
        }))
    }

    /// Registers the node in `weir.nodes`, then renews its heartbeat and wakes this node's
    /// long-polling fetches for every commit until `shutdown`, when the node leaves.
    pub(crate) async fn start(
        self: &Arc<Self>,
        ports: (u16, u16),
        appends: Arc<Appends>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<JoinHandle<()>> {
        let info = NodeInfo {
            node_id: self.this.id.to_string(),
            host: self.this.host.clone(),
            kafka_port: self.this.port,
            http_port: ports.0,
            pg_port: ports.1,
        };
        self.log
            .register(&info)
            .await
            .map_err(cluster_error("registering the node"))?;
        self.refresh_live().await;
        let jobs = self.clone();
        let mut jobs_shutdown = shutdown.clone();
        let retention_every = Duration::from_millis(self.retention_check_ms.max(1));
        tokio::spawn(async move {
            let mut gc = tokio::time::interval_at(tokio::time::Instant::now() + GC_EVERY, GC_EVERY);
            let mut retention = tokio::time::interval_at(
                tokio::time::Instant::now() + retention_every,
                retention_every,
            );
            let mut merge =
                tokio::time::interval_at(tokio::time::Instant::now() + MERGE_EVERY, MERGE_EVERY);
            for ticks in [&mut gc, &mut retention, &mut merge] {
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            loop {
                tokio::select! {
                    _ = jobs_shutdown.changed() => break,
                    _ = gc.tick() => jobs.collect_garbage().await,
                    _ = retention.tick() => jobs.enforce_retention().await,
                    _ = merge.tick() => jobs.merge_small_objects().await,
                }
            }
        });
        let node = self.clone();
        let mut appended = self.log.subscribe_appended();
        Ok(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(HEARTBEAT);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = ticks.tick() => {
                        if let Err(e) = node.log.heartbeat().await {
                            tracing::warn!(error = %e, "cluster heartbeat failed");
                        }
                        node.refresh_live().await;
                        node.renew_groups().await;
                        node.renew_pipelines().await;
                    }
                    advanced = appended.recv() => match advanced {
                        Ok(a) => {
                            if let Some(topic) = node.log.known_topic_name(a.topic_id) {
                                appends.appended(&topic, a.partition);
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => {
                            appended = node.log.subscribe_appended();
                        }
                    },
                }
            }
            node.release_groups(|_| true).await;
            node.release_pipelines().await;
            if let Err(e) = node.log.leave().await {
                tracing::warn!(error = %e, "leaving the cluster failed; the node drops out by its session timeout");
            }
        }))
    }

    /// Runs `job` under the lease `name` if no other node holds it, renewing the lease while
    /// the job runs, then gives the lease back. `None` when another node holds it or it could
    /// not be taken.
    async fn under_lease<T>(
        &self,
        name: &str,
        job: impl AsyncFnOnce(&Lease) -> weir_cluster::Result<T>,
    ) -> Option<weir_cluster::Result<T>> {
        let lease = match self.log.acquire(name, JOB_LEASE_MS).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(lease = name, error = %e, "taking a lease failed");
                return None;
            }
        };
        let renewing = async {
            let mut held = lease.clone();
            loop {
                tokio::time::sleep(JOB_LEASE_RENEW).await;
                if let Err(e) = self.log.renew(&mut held).await {
                    // The job stops on its own once the lease is no longer current, and its
                    // writes are fenced by the epoch meanwhile.
                    tracing::warn!(lease = name, error = %e, "renewing a job's lease failed");
                    break;
                }
            }
            std::future::pending::<std::convert::Infallible>().await
        };
        let done = tokio::select! {
            done = job(&lease) => done,
            never = renewing => match never {},
        };
        if let Err(e) = self.log.release(lease).await {
            tracing::warn!(lease = name, error = %e, "releasing a lease failed; it expires");
        }
        Some(done)
    }

    /// One garbage collection, if no other node holds the `gc` lease.
    async fn collect_garbage(&self) {
        match self
            .under_lease("gc", async |lease| self.log.collect_garbage(lease).await)
            .await
        {
            Some(Ok(collected)) if collected.objects > 0 => tracing::info!(
                objects = collected.objects,
                bytes = collected.bytes,
                "deleted objects no row references"
            ),
            Some(Err(e)) => tracing::warn!(error = %e, "garbage collection failed"),
            _ => {}
        }
    }

    /// One retention run over the cluster's topics, if no other node holds the `retention`
    /// lease.
    async fn enforce_retention(&self) {
        let now_ms = weir_storage::now_ms();
        match self
            .under_lease("retention", async |lease| {
                self.log.enforce_retention(lease, now_ms).await
            })
            .await
        {
            Some(Ok(trimmed)) => {
                self.metrics
                    .retention_trimmed(trimmed.batches, trimmed.bytes);
                if trimmed.batches > 0 {
                    tracing::info!(
                        partitions = trimmed.partitions,
                        runs = trimmed.batches,
                        bytes = trimmed.bytes,
                        "retention dropped the oldest runs"
                    );
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "retention failed"),
            None => {}
        }
    }

    /// One merge run over the cluster's partitions, then one key compaction pass over its
    /// compacted topics, if no other node holds the `merge` lease.
    async fn merge_small_objects(&self) {
        let now_ms = weir_storage::now_ms();
        match self
            .under_lease("merge", async |lease| {
                let merged = self.log.merge_small_objects(lease, MERGE_AGE_MS).await?;
                let compacted = self
                    .log
                    .compact_topics(
                        lease,
                        now_ms,
                        MERGE_AGE_MS,
                        weir_storage::COMPACTION_KEYS_MAX,
                    )
                    .await;
                Ok((merged, compacted))
            })
            .await
        {
            Some(Ok((merged, compacted))) => {
                self.merged(merged);
                match compacted {
                    Ok(compacted) => self.compacted(compacted),
                    Err(e) => tracing::warn!(error = %e, "key compaction failed"),
                }
            }
            Some(Err(e)) => tracing::warn!(error = %e, "merging small objects failed"),
            None => {}
        }
    }

    /// Counts and logs what a merge run did.
    fn merged(&self, merged: weir_cluster::Merged) {
        self.metrics.merged(merged.runs_before, merged.bytes);
        if merged.partitions > 0 {
            tracing::info!(
                partitions = merged.partitions,
                runs_before = merged.runs_before,
                runs_after = merged.runs_after,
                bytes = merged.bytes,
                "merged runs out of small objects"
            );
        }
    }

    /// Counts and logs what a key compaction pass did.
    fn compacted(&self, c: weir_cluster::Compacted) {
        let saved = c.bytes_before.saturating_sub(c.bytes_after);
        self.metrics.compacted(c.records_removed, saved);
        if c.records_removed > 0 {
            tracing::info!(
                partitions = c.partitions,
                runs_before = c.runs_before,
                runs_after = c.runs_after,
                records_removed = c.records_removed,
                bytes_before = c.bytes_before,
                bytes_after = c.bytes_after,
                "compacted"
            );
        }
    }

    /// Re-reads the live nodes; keeps the last list when the database cannot be read.
    async fn refresh_live(&self) {
        match self.log.live_nodes(SESSION_TIMEOUT_MS).await {
            Ok(nodes) => {
                let nodes: Vec<(i32, NodeInfo)> = nodes
                    .into_iter()
                    .filter_map(|n| Some((n.node_id.parse().ok()?, n)))
                    .collect();
                let http = nodes
                    .iter()
                    .map(|(id, n)| (*id, host_port(&n.host, n.http_port)))
                    .collect();
                let mut live: Vec<Broker> = nodes
                    .into_iter()
                    .map(|(id, n)| Broker {
                        id,
                        host: n.host,
                        port: n.kafka_port,
                    })
                    .collect();
                if !live.contains(&self.this) {
                    live.push(self.this.clone());
                }
                live.sort_by_key(|b| b.id);
                *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
                *self.http.write().unwrap_or_else(|e| e.into_inner()) = http;
            }
            Err(e) => tracing::warn!(error = %e, "reading the live nodes failed"),
        }
    }

    /// Renews, in one statement, the group leases in use that a third of their term has passed
    /// since their last renewal: each row is written about every 4 s, not every heartbeat.
    /// Those lost (the node was cut off past the lease) are forgotten, so the coordinator
    /// drops their groups.
    async fn renew_groups(&self) {
        self.release_groups(|h| h.used.elapsed() > GROUP_IDLE).await;
        let mut leases: Vec<Lease> = locks::lock(&self.groups)
            .values()
            .filter(|h| h.lease.renewal_due())
            .map(|h| h.lease.clone())
            .collect();
        let lost = match self.log.renew_all(&mut leases).await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::warn!(error = %e, "renewing group leases failed");
                return;
            }
        };
        {
            let mut held = locks::lock(&self.groups);
            forget_lost(&mut held, lost, |h| &h.lease, "another node coordinates it");
            for lease in leases {
                if let Some(h) = held.get_mut(lease.name())
                    && h.lease.epoch() == lease.epoch()
                {
                    h.lease = lease;
                }
            }
        }
        self.leave_notes(None).await;
    }

    /// Leaves on their leases the group states that changed since they were last left there:
    /// of every group, or of the one whose lease `only` names.
    async fn leave_notes(&self, only: Option<&str>) {
        let notes: Vec<(Lease, String)> = locks::lock(&self.groups)
            .iter()
            .filter(|(name, h)| !h.noted && only.is_none_or(|o| o == name.as_str()))
            .filter_map(|(_, h)| Some((h.lease.clone(), h.note.clone()?)))
            .collect();
        if notes.is_empty() {
            return;
        }
        let refs: Vec<(&Lease, &str)> = notes.iter().map(|(l, n)| (l, n.as_str())).collect();
        if let Err(e) = self.log.note_leases(&refs).await {
            tracing::warn!(error = %e, "leaving the groups' states on their leases failed");
            return;
        }
        let mut held = locks::lock(&self.groups);
        for (lease, note) in notes {
            if let Some(h) = held.get_mut(lease.name())
                && h.note.as_ref() == Some(&note)
            {
                h.noted = true;
            }
        }
    }

    /// Gives up the group leases `which` picks, in one statement, so other nodes can take them
    /// at once.
    async fn release_groups(&self, which: impl Fn(&HeldGroup) -> bool) {
        let released: Vec<Lease> = locks::lock(&self.groups)
            .extract_if(|_, h| which(h))
            .map(|(_, h)| h.lease)
            .collect();
        if let Err(e) = self.log.release_all(&released).await {
            tracing::warn!(error = %e, "releasing group leases failed; they expire");
        }
    }

    /// The lease under which this node acts for `group`, if it holds one still current.
    fn group_lease(&self, group: &str) -> Result<Lease, GroupError> {
        let mut held = locks::lock(&self.groups);
        match held.get_mut(&group_lease(group)) {
            Some(h) if h.lease.is_current() => {
                h.used = Instant::now();
                Ok(h.lease.clone())
            }
            _ => Err(GroupError::NotCoordinator),
        }
    }

    /// Room for one more group lease under [`GROUPS_MAX`], held leases and claims under way
    /// counted together, kept until the slot is dropped (after the lease joins the held ones).
    fn claim_slot(&self, group: &str) -> Result<ClaimSlot<'_>, GroupError> {
        let held = locks::lock(&self.groups);
        let room = self
            .claiming
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |claiming| {
                (held.len() + claiming < GROUPS_MAX).then_some(claiming + 1)
            });
        if room.is_err() {
            tracing::warn!(
                group,
                groups_max = GROUPS_MAX,
                "group refused: the node holds its limit of group leases"
            );
            return Err(GroupError::GroupMaxSizeReached);
        }
        Ok(ClaimSlot(&self.claiming))
    }

    /// The live node `holder` names; when none, the one rendezvous hashing picks for the group
    /// `key` among `brokers`.
    fn coordinator_among(&self, key: &str, holder: Option<String>, brokers: &[Broker]) -> Broker {
        if let Some(node) =
            holder.and_then(|node| brokers.iter().find(|b| b.id.to_string() == node).cloned())
        {
            return node;
        }
        weir_cluster::leader_by(key, u32::MAX, brokers, |b| b.id.to_be_bytes())
            .cloned()
            .unwrap_or_else(|| self.this.clone())
    }

    /// [`block_on`] on the node's runtime.
    fn block_on<T>(&self, call: impl Future<Output = T>) -> T {
        block_on(&self.runtime, call)
    }

    /// [`ClusterLogs::block_on`] with the error a Kafka handler answers.
    fn wait<T>(
        &self,
        call: impl Future<Output = weir_cluster::Result<T>>,
        topic: &str,
        partition: u32,
    ) -> Result<T, StorageError> {
        self.block_on(call)
            .map_err(|e| storage_error(e, topic, partition))
    }
}

/// A metadata tree kept in the cluster's database (`weir.meta`), so every node shares it: the
/// SCRAM users and ACL rules of a cluster.
struct ClusterTree {
    log: Arc<SharedLog>,
    runtime: Handle,
    tree: String,
    /// The lease its writes are made under, if any.
    fence: Option<Lease>,
}

impl ClusterTree {
    fn call<T>(
        &self,
        call: impl Future<Output = weir_cluster::Result<T>>,
    ) -> weir_storage::Result<T> {
        block_on(&self.runtime, call).map_err(|e| StorageError::SharedMeta {
            tree: self.tree.clone(),
            reason: e.to_string(),
        })
    }
}

impl TreeBackend for ClusterTree {
    fn get(&self, key: &str) -> weir_storage::Result<Option<Vec<u8>>> {
        self.call(self.log.meta_get(&self.tree, key))
    }

    /// Every write commits in the database: `durable` or not, it is durable.
    fn insert(&self, key: &str, value: Vec<u8>, _durable: bool) -> weir_storage::Result<()> {
        self.call(
            self.log
                .meta_put(&self.tree, key, &value, self.fence.as_ref()),
        )
    }

    fn compare_and_set(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> weir_storage::Result<bool> {
        self.call(self.log.meta_compare_and_set(
            &self.tree,
            key,
            expected,
            &value,
            self.fence.as_ref(),
        ))
    }

    fn remove(&self, key: &str, _durable: bool) -> weir_storage::Result<bool> {
        self.call(self.log.meta_remove(&self.tree, key))
    }

    fn scan_prefix(&self, prefix: &str) -> weir_storage::Result<Vec<(String, Vec<u8>)>> {
        self.call(self.log.meta_scan(&self.tree, prefix))
    }

    fn count(&self) -> weir_storage::Result<usize> {
        self.call(self.log.meta_len(&self.tree))
    }

    fn insert_within(
        &self,
        entries: Vec<(String, Vec<u8>)>,
        max: usize,
        present: Present,
    ) -> weir_storage::Result<Bounded> {
        self.call(self.log.meta_put_within(&self.tree, &entries, max, present))
    }
}

impl ClusterLogs {
    /// The metadata tree `name` as every node of the cluster shares it.
    pub(crate) fn tree<V: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Tree<V> {
        let backend = ClusterTree {
            log: self.log.clone(),
            runtime: self.runtime.clone(),
            tree: name.to_string(),
            fence: None,
        };
        Tree::on(name, Arc::new(backend))
    }

    /// Calls `changed` with the name of each metadata tree any node changes from now on, and
    /// with an empty name when any tree may have changed unheard, until `shutdown`. It runs on
    /// a reactor thread and may read the cluster (its calls hand the thread's other work over).
    pub(crate) fn on_meta_change(
        &self,
        changed: impl Fn(&str) + Send + 'static,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut changes = self.log.subscribe_meta();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.changed() => break,
                    change = changes.recv() => match change {
                        Ok(tree) => changed(&tree),
                        Err(broadcast::error::RecvError::Lagged(_)) => changed(""),
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        });
    }
}

/// Runs a shared-log call to its end, blocking the calling thread: a blocking-pool thread, or a
/// reactor thread that hands its other work to the rest of the runtime meanwhile (a system
/// table's scan reads the cluster from one).
fn block_on<T>(runtime: &Handle, call: impl Future<Output = T>) -> T {
    tokio::task::block_in_place(|| runtime.block_on(call))
}

/// The storage error a Kafka handler answers for a cluster error. What went wrong in the
/// database or the store (never the request) is a partition offline, which clients retry.
fn storage_error(e: ClusterError, topic: &str, partition: u32) -> StorageError {
    match e {
        ClusterError::UnknownPartition { topic, partition } => {
            StorageError::UnknownPartition { topic, partition }
        }
        ClusterError::OffsetOutOfRange {
            offset, start, end, ..
        } => StorageError::OffsetOutOfRange {
            offset,
            log_start_offset: start,
            high_watermark: end,
        },
        ClusterError::Batch { source, .. } => StorageError::Batch(source),
        ClusterError::Producer(e) => e,
        ClusterError::TopicExists(name) => StorageError::TopicExists { name },
        ClusterError::UnknownTopic(name) => StorageError::UnknownTopic { name },
        ClusterError::PartitionCount {
            topic,
            current,
            requested,
        } => StorageError::PartitionCount {
            name: topic,
            current,
            requested,
        },
        ClusterError::TooManyPartitions {
            requested,
            current,
            partitions_max,
            ..
        } => StorageError::TooManyPartitions {
            requested,
            current: u32::try_from(current).unwrap_or(u32::MAX),
            partitions_max,
        },
        ClusterError::InvalidTopic(reason) | ClusterError::InvalidRequest(reason) => {
            StorageError::InvalidTopicName {
                name: topic.to_string(),
                reason,
            }
        }
        ClusterError::FlushTooLarge { bytes, bytes_max } => {
            StorageError::Batch(BatchError::TooLarge { bytes, bytes_max })
        }
        e => StorageError::Offline {
            topic: topic.to_string(),
            partition,
            reason: e.to_string(),
        },
    }
}

/// Kafka's topic id for the cluster's numeric one.
fn kafka_topic_id(id: i64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(0, id as u64)
}

fn topic_info(topic: Arc<Topic>) -> TopicInfo {
    TopicInfo {
        id: kafka_topic_id(topic.id),
        partitions: topic.partitions,
    }
}

/// A cluster topic as the node's storage would describe it.
fn topic_meta(t: &Topic) -> TopicMeta {
    TopicMeta {
        name: t.name.clone(),
        id: kafka_topic_id(t.id).into_bytes(),
        partitions: t.partitions,
        configs: t.configs.clone(),
        created_ms: t.created_ms,
    }
}

impl std::fmt::Debug for ClusterLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterLogs")
            .field("node_id", &self.this.id)
            .finish_non_exhaustive()
    }
}

/// The cluster's topics, as SQL and the HTTP record pages read them.
impl weir_storage::Topics for ClusterLogs {
    fn list_topics(&self) -> Result<Vec<TopicMeta>, StorageError> {
        let topics = self.wait(self.log.topics_now(), "", 0)?;
        Ok(topics.iter().map(|t| topic_meta(t)).collect())
    }

    fn topic(&self, name: &str) -> Result<Option<TopicMeta>, StorageError> {
        Logs::topic_meta(self, name)
    }

    fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn PartitionSource>, StorageError> {
        self.wait(self.log.topic_of(topic, partition), topic, partition)?;
        Ok(Arc::new(ClusterPartition {
            log: self.log.clone(),
            runtime: self.runtime.clone(),
            topic: topic.to_string(),
            partition,
        }))
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, StorageError> {
        Logs::create_topic(self, name, partitions, configs)?;
        Logs::topic_meta(self, name)?
            .ok_or_else(|| StorageError::UnknownTopic { name: name.into() })
    }

    fn delete_topic(&self, name: &str) -> Result<(), StorageError> {
        Logs::delete_topic(self, name)
    }

    fn batch_bytes_max(&self, topic: &str) -> Result<u64, StorageError> {
        Logs::batch_bytes_max(self, topic)
    }

    fn append(&self, topic: &str, partition: u32, batches: Bytes) -> Result<u64, StorageError> {
        let (base, _, _) = Logs::append(self, topic, partition, batches)?;
        Ok(base as u64)
    }

    /// Read in one query; a topic deleted meanwhile has none left to read.
    fn partition_sizes(
        &self,
        topic: &TopicMeta,
    ) -> Result<Vec<(u32, PartitionSize)>, StorageError> {
        match self.wait(self.log.partition_sizes(&topic.name), &topic.name, 0) {
            Err(StorageError::UnknownTopic { .. } | StorageError::UnknownPartition { .. }) => {
                Ok(Vec::new())
            }
            sizes => sizes,
        }
    }
}

/// One partition of the cluster's shared log, read on the calling thread.
struct ClusterPartition {
    log: Arc<SharedLog>,
    runtime: Handle,
    topic: String,
    partition: u32,
}

impl ClusterPartition {
    fn wait<T>(
        &self,
        call: impl Future<Output = weir_cluster::Result<T>>,
    ) -> Result<T, StorageError> {
        block_on(&self.runtime, call).map_err(|e| storage_error(e, &self.topic, self.partition))
    }
}

impl PartitionSource for ClusterPartition {
    fn offsets(&self) -> Result<(u64, u64), StorageError> {
        self.wait(self.log.offsets(&self.topic, self.partition))
    }

    fn size(&self) -> Result<PartitionSize, StorageError> {
        self.wait(self.log.partition_size(&self.topic, self.partition))
    }

    fn read_records_at_most(
        &self,
        offset: u64,
        bytes_max: u64,
        records_max: usize,
    ) -> Result<Vec<weir_storage::Record>, StorageError> {
        let fetched = self.wait(
            self.log
                .read(&self.topic, self.partition, offset, bytes_max),
        )?;
        Ok(weir_storage::decode_records_from(
            &fetched.batches,
            offset as i64,
            records_max,
        )?)
    }

    fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>, StorageError> {
        self.wait(
            self.log
                .offset_for_timestamp(&self.topic, self.partition, timestamp),
        )
    }

    /// Counts by batch headers: only batches the range cuts are decoded.
    fn count_records(
        &self,
        start: u64,
        end: u64,
        bytes_max: u64,
    ) -> Result<weir_storage::RecordCount, StorageError> {
        if start >= end {
            return Ok(weir_storage::RecordCount {
                whole: 0,
                decoded: 0,
                next_offset: end,
            });
        }
        let fetched = self.wait(self.log.read(&self.topic, self.partition, start, bytes_max))?;
        Ok(weir_storage::count_records_in(
            &fetched.batches,
            start,
            end,
        )?)
    }

    fn offset_bytes_before(
        &self,
        end: u64,
        bytes: u64,
        at_least_one: bool,
    ) -> Result<u64, StorageError> {
        self.wait(self.log.offset_bytes_before(
            &self.topic,
            self.partition,
            end,
            bytes,
            at_least_one,
        ))
    }
}

impl Logs for ClusterLogs {
    fn cluster_node_id(&self) -> Option<i32> {
        Some(self.this.id)
    }

    fn brokers(&self) -> Vec<Broker> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn leader(&self, brokers: &[Broker], topic: &str, partition: u32) -> i32 {
        weir_cluster::leader_by(topic, partition, brokers, |b| b.id.to_be_bytes())
            .map_or(self.this.id, |b| b.id)
    }

    /// The live node holding the group's lease; when none does, the one rendezvous hashing
    /// picks, which takes the lease when the group's first request reaches it.
    fn coordinator(&self, key: &str) -> Broker {
        let brokers = self.brokers();
        if self.held(key).is_some() {
            return self.this.clone();
        }
        let holder = match self.block_on(self.log.lease_holder(&group_lease(key))) {
            Ok(holder) => holder.map(|(node, _)| node),
            Err(e) => {
                tracing::warn!(group = key, error = %e, "reading the group's lease failed");
                None
            }
        };
        self.coordinator_among(key, holder, &brokers)
    }

    fn coordinates(&self, groups: &[String], holders: &HashMap<String, String>) -> Vec<bool> {
        let brokers = self.brokers();
        groups
            .iter()
            .map(|group| {
                self.held(group).is_some() || {
                    let holder = holders.get(group).cloned();
                    self.coordinator_among(group, holder, &brokers).id == self.this.id
                }
            })
            .collect()
    }

    fn coordinator_http(&self, key: &str) -> Option<String> {
        let home = self.coordinator(key);
        if home.id == self.this.id {
            return None;
        }
        let http = self.http.read().unwrap_or_else(|e| e.into_inner());
        http.get(&home.id).cloned()
    }

    fn peers_http(&self) -> Vec<String> {
        let http = self.http.read().unwrap_or_else(|e| e.into_inner());
        let mut peers: Vec<(i32, String)> = http
            .iter()
            .filter(|(id, _)| **id != self.this.id)
            .map(|(id, home)| (*id, home.clone()))
            .collect();
        peers.sort();
        peers.into_iter().map(|(_, home)| home).collect()
    }

    fn cluster_stats(&self) -> Option<ClusterStats> {
        Some(ClusterStats {
            cache: self.log.cache_stats(),
            parked_bytes: self.flusher.parked_bytes(),
            parked_bytes_max: weir_cluster::flusher::QUEUE_BYTES_MAX,
            db: self.log.db_stats(),
        })
    }

    fn cluster_health(&self) -> Option<ClusterHealth> {
        let log = &self.log;
        Some(self.block_on(async {
            let (database, object_store) = tokio::join!(log.probe_database(), log.probe_store());
            let leases = match database.error {
                Some(_) => None,
                None => tokio::time::timeout(PROBE_TIMEOUT, log.leases())
                    .await
                    .ok()
                    .and_then(|listed| listed.ok()),
            };
            ClusterHealth {
                database,
                object_store,
                leases,
            }
        }))
    }

    fn topic(&self, name: &str) -> Result<Option<TopicInfo>, StorageError> {
        Ok(self.wait(self.log.topic(name), name, 0)?.map(topic_info))
    }

    fn topic_names(&self) -> Result<Vec<String>, StorageError> {
        self.wait(self.log.topic_names(), "", 0)
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StorageError> {
        check_new_topic(&self.storage, name, &configs)?;
        self.wait(self.log.create_topic(name, partitions, &configs), name, 0)?;
        self.topic(name)?
            .ok_or_else(|| StorageError::UnknownTopic { name: name.into() })
    }

    fn topic_or_create(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicInfo, StorageError> {
        if let Some(topic) = self.topic(name)? {
            return Ok(topic);
        }
        match self.create_topic(name, partitions, configs) {
            // Another node made it first.
            Err(StorageError::TopicExists { .. }) => self
                .topic(name)?
                .ok_or_else(|| StorageError::UnknownTopic { name: name.into() }),
            made => made,
        }
    }

    fn batch_bytes_max(&self, topic: &str) -> Result<u64, StorageError> {
        let found = self.wait(self.log.topic(topic), topic, 0)?;
        found
            .map(|t| t.batch_bytes_max)
            .ok_or_else(|| StorageError::UnknownTopic { name: topic.into() })
    }

    fn topic_meta(&self, name: &str) -> Result<Option<TopicMeta>, StorageError> {
        let topic = self.wait(self.log.topic_now(name), name, 0)?;
        Ok(topic.as_deref().map(topic_meta))
    }

    fn delete_topic(&self, name: &str) -> Result<(), StorageError> {
        self.wait(self.log.delete_topic(name), name, 0)?;
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    fn create_partitions(&self, name: &str, partitions: u32) -> Result<(), StorageError> {
        self.wait(self.log.create_partitions(name, partitions), name, 0)
    }

    fn set_topic_configs(
        &self,
        name: &str,
        configs: BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        self.storage.check_topic_configs(&configs)?;
        self.wait(self.log.set_topic_configs(name, &configs), name, 0)
    }

    fn readable(&self, topic: &str, partition: u32) -> bool {
        self.block_on(self.log.topic_of(topic, partition)).is_ok()
    }

    fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Bytes,
    ) -> Result<Appended, StorageError> {
        let (bytes, count) = (records.len() as u64, record_count(&records));
        let append = Append {
            topic: topic.to_string(),
            partition,
            batches: records,
        };
        let base = self.wait(self.flusher.append(append), topic, partition)?;
        self.metrics.produced(topic, bytes, count);
        Ok((base as i64, -1, -1))
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        limit: u64,
        first: bool,
    ) -> Result<PartitionRead, StorageError> {
        let read = self.log.read(topic, partition, offset, limit.max(1));
        let fetched = self.wait(read, topic, partition)?;
        let fits = first || fetched.batches.len() as u64 <= limit;
        let records = (fits && !fetched.batches.is_empty()).then_some(fetched.batches);
        Ok(PartitionRead {
            high_watermark: fetched.high_watermark,
            log_start_offset: fetched.log_start_offset,
            record_count: records.as_deref().map_or(0, record_count),
            records,
            file: None,
        })
    }

    fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), StorageError> {
        self.wait(self.log.offsets(topic, partition), topic, partition)
    }

    fn offset_at(
        &self,
        topic: &str,
        partition: u32,
        timestamp: i64,
    ) -> Result<Option<(u64, i64)>, StorageError> {
        let found = self.log.offset_for_timestamp(topic, partition, timestamp);
        self.wait(found, topic, partition)
    }

    fn new_producer_id(&self) -> Result<i64, StorageError> {
        self.wait(self.log.new_producer_id(), "", 0)
    }
}

/// What a group request hears when the cluster could not do it.
fn group_error(group: &str, e: ClusterError) -> GroupError {
    match e {
        ClusterError::LeaseLost { .. } => GroupError::NotCoordinator,
        ClusterError::InvalidRequest(reason) => {
            tracing::info!(group, reason, "a group request refused");
            GroupError::InvalidRequest
        }
        e if e.is_retriable() => {
            tracing::warn!(group, error = %e, "the cluster database is out of reach");
            GroupError::CoordinatorNotAvailable
        }
        e => {
            tracing::error!(group, error = %e, "a group's offsets could not be written");
            GroupError::Storage
        }
    }
}

/// A committed offset as the cluster database keeps it.
fn group_offset((topic, partition, o): &(String, i32, CommittedOffset)) -> GroupOffset {
    GroupOffset {
        leader_epoch: o.leader_epoch,
        metadata: o.metadata.clone(),
        commit_ms: o.commit_ms,
        ..GroupOffset::new(topic, *partition as u32, o.offset)
    }
}

impl GroupStore for ClusterLogs {
    fn held(&self, group: &str) -> Option<i64> {
        self.group_lease(group).ok().map(|l| l.epoch())
    }

    fn claim(&self, group: &str) -> Result<i64, GroupError> {
        if let Some(epoch) = self.held(group) {
            return Ok(epoch);
        }
        let _slot = self.claim_slot(group)?;
        let name = group_lease(group);
        match self.block_on(self.log.acquire_noted(&name, GROUP_LEASE_MS)) {
            Ok(Some((lease, prior))) => {
                let epoch = lease.epoch();
                let used = Instant::now();
                let taken_over = prior.and_then(|note| {
                    serde_json::from_str::<GroupNote>(&note)
                        .inspect_err(
                            |e| tracing::warn!(group, error = %e, "a group's note is not one"),
                        )
                        .ok()?
                        .stable
                });
                let held = HeldGroup {
                    lease,
                    used,
                    note: None,
                    noted: false,
                    taken_over,
                };
                locks::lock(&self.groups).insert(name, held);
                Ok(epoch)
            }
            Ok(None) => Err(GroupError::NotCoordinator),
            Err(ClusterError::InvalidRequest(_)) => Err(GroupError::InvalidGroupId),
            Err(e) => Err(group_error(group, e)),
        }
    }

    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), GroupError> {
        let lease = self.group_lease(group)?;
        let offsets: Vec<GroupOffset> = offsets.iter().map(group_offset).collect();
        self.block_on(self.log.commit_offsets(&lease, group, &offsets))
            .map_err(|e| group_error(group, e))
    }

    fn committed_all(
        &self,
        group: &str,
    ) -> Result<Vec<(String, i32, CommittedOffset)>, StorageError> {
        let offsets = self.wait(self.log.committed_offsets(group), "", 0)?;
        Ok(offsets
            .into_iter()
            .map(|o| {
                let committed = CommittedOffset {
                    offset: o.offset,
                    leader_epoch: o.leader_epoch,
                    metadata: o.metadata,
                    commit_ms: o.commit_ms,
                };
                (o.topic, o.partition as i32, committed)
            })
            .collect())
    }

    fn delete(&self, group: &str, only: Option<(&str, i32)>) -> Result<bool, GroupError> {
        let lease = self.group_lease(group)?;
        let only = match only {
            // No such partition, so nothing committed for it: as on a lone node.
            Some((_, partition)) if partition < 0 => return Ok(false),
            Some((topic, partition)) => Some((topic, partition as u32)),
            None => None,
        };
        match self.block_on(self.log.delete_offsets(&lease, group, only)) {
            Ok(deleted) => Ok(deleted > 0),
            Err(ClusterError::UnknownPartition { .. }) => Ok(false),
            Err(e) => Err(group_error(group, e)),
        }
    }

    fn group_ids(&self) -> Result<Vec<String>, StorageError> {
        self.wait(self.log.group_ids(), "", 0)
    }

    fn report(&self, note: &GroupNote) {
        let group = &note.listing.group;
        let fits = serde_json::to_string(note)
            .ok()
            .filter(|text| text.len() <= weir_cluster::LEASE_NOTE_BYTES_MAX);
        // A generation too large to leave is not: a node taking the group over then has its
        // members rejoin.
        let listed_only = || {
            let listing = GroupNote {
                listing: note.listing.clone(),
                stable: None,
            };
            serde_json::to_string(&listing).ok()
        };
        let Some(note) = fits.or_else(listed_only) else {
            return;
        };
        if let Some(h) = locks::lock(&self.groups).get_mut(&group_lease(group))
            && h.note.as_ref() != Some(&note)
        {
            h.note = Some(note);
            h.noted = false;
        }
    }

    fn listed_elsewhere(&self) -> Result<Elsewhere, StorageError> {
        let this = self.this.id.to_string();
        let leases = self.wait(self.log.live_leases(GROUP_LEASE_PREFIX, None), "", 0)?;
        let holders = leases
            .iter()
            .filter_map(|l| Some((group_of(&l.name)?.to_string(), l.holder.clone())))
            .collect();
        let listings = leases
            .into_iter()
            .filter(|l| l.holder != this)
            .filter_map(|l| {
                let listing = serde_json::from_str::<GroupNote>(l.note.as_deref()?)
                    .inspect_err(
                        |e| tracing::warn!(lease = l.name, error = %e, "a group's note is not one"),
                    )
                    .ok()?
                    .listing;
                // An empty group adds nothing to the offsets' list of names.
                (listing.state != State::Empty || listing.members > 0).then_some(listing)
            })
            .collect();
        Ok(Elsewhere { listings, holders })
    }

    fn leases(&self) -> usize {
        locks::lock(&self.groups).len()
    }

    fn report_now(&self, note: &GroupNote) {
        self.report(note);
        let lease = group_lease(&note.listing.group);
        self.block_on(self.leave_notes(Some(&lease)));
    }

    fn taken_over(&self, group: &str) -> Option<StableGroup> {
        let mut held = locks::lock(&self.groups);
        held.get_mut(&group_lease(group))?.taken_over.take()
    }
}
