//! `weir serve`: a node's lifetime, from opening the data directory to a clean shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_runtime::{Runtime, SandboxConfig};
use weir_sql::{QueryConfig, QueryEngine};
use weir_storage::{Storage, StorageConfig, Topics};

use crate::cluster::ClusterLogs;
use crate::error::{Error, Result, io, storage as storage_error, task};
use crate::kafka::groups::{self, Coordinator, GroupStore, LocalGroupStore};
use crate::kafka::logs::{Broker, LocalLogs, Logs};
use crate::kafka::{self, KafkaConfig};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::node::{BrokerState, NodeContext};
use crate::tls::Tls;

/// Largest Kafka request frame accepted (`socket.request.max.bytes`).
pub const REQUEST_BYTES_MAX: u32 = 100 * 1024 * 1024;

/// What `weir serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
    /// Address of the Kafka listener; port 0 picks a free port.
    pub kafka: SocketAddr,
    /// Host clients are told to connect to; the listener's IP when `None`.
    pub advertised_host: Option<String>,
    pub auto_create_topics: bool,
    pub kafka_auth: crate::kafka::KafkaAuth,
    pub super_users: Vec<String>,
    pub default_partitions: u32,
    /// Where ingested metrics (Prometheus remote write, OTLP) go when a request names no topic.
    pub metrics_topic: String,
    /// Where OTLP logs go when a request names no topic.
    pub logs_topic: String,
    /// Address of the HTTP listener; port 0 picks a free port.
    pub http: SocketAddr,
    /// Address of the Postgres wire listener; port 0 picks a free port, `None` serves none.
    pub pg: Option<SocketAddr>,
    /// When set, `/v1` HTTP calls need `Authorization: Bearer <token>` and Postgres
    /// connections the token as their password.
    pub admin_token: Option<String>,
    /// When set, `/metrics` needs `Authorization: Bearer <token>` with this token rather than
    /// the admin token.
    pub metrics_token: Option<String>,
    /// TLS on every listener when set.
    pub tls: Option<crate::tls::TlsFiles>,
    /// CPU time one plugin call (one batch) may take.
    pub plugin_timeout_ms: u64,
    /// Memory one plugin instance may grow to.
    pub plugin_memory_bytes_max: u64,
    /// Memory all running SQL queries may hold at once.
    pub sql_memory_bytes_max: u64,
    pub sql_cache_bytes_max: u64,
    /// Partitions of all topics together.
    pub partitions_max: u32,
    /// Free disk bytes below which writes and topic creation are refused.
    pub disk_free_bytes_min: u64,
    /// Closed segments whose files may be open at once.
    pub open_segments_max: usize,
    /// Kafka connections held at once.
    pub connections_max: u32,
    /// HTTP connections held at once.
    pub http_connections_max: u32,
    /// Delayed records that may wait at once.
    pub delayed_records_max: u64,
    /// Bytes of Kafka request frames read or handled at once.
    pub request_memory_bytes_max: u64,
    /// How often retention and compaction run.
    pub retention_check_ms: u64,
    /// The cluster this node joins; `None` serves topics from the data directory alone.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// A running node.
pub struct Server {
    storage: Arc<Storage>,
    runtime: Arc<Runtime>,
    kafka_addr: SocketAddr,
    http_addr: SocketAddr,
    pg_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Opens the data directory, recovering every partition log, starts the storage
    /// maintenance thread and the Kafka listener.
    pub async fn start(config: &ServeConfig) -> Result<Server> {
        // Debug builds stop at a storage call that would block a thread polling futures.
        weir_storage::reactor::set_runtime_probe(|| tokio::runtime::Handle::try_current().is_ok());
        let tls = config.tls.as_ref().map(Tls::load).transpose()?;
        let storage = open_storage(config).await?;
        let (kafka_listener, kafka_addr) = bind("Kafka", config.kafka).await?;
        let limits = Arc::new(Limits::new(
            config.request_memory_bytes_max,
            config.connections_max,
            config.http_connections_max,
        ));
        let kafka_config = kafka_config(config, kafka_addr, &limits);
        let metrics = Arc::new(Metrics::default());
        let cluster = match &config.cluster {
            Some(cluster) => {
                let (host, port) = kafka_config.advertised.clone();
                let this = Broker {
                    id: cluster.node_id,
                    host,
                    port,
                };
                Some(ClusterLogs::open(cluster, this, metrics.clone(), storage.clone()).await?)
            }
            None => None,
        };
        let peers = match &cluster {
            Some(_) => Some(crate::http::Peers::new(config.tls.as_ref())?),
            None => None,
        };
        let logs: Arc<dyn Logs> = match &cluster {
            Some(cluster) => cluster.clone(),
            None => Arc::new(LocalLogs::new(
                storage.clone(),
                kafka_config.advertised.clone(),
            )),
        };
        let topics: Arc<dyn Topics> = match &cluster {
            Some(cluster) => cluster.clone(),
            None => storage.clone(),
        };
        let group_store: Arc<dyn GroupStore> = match &cluster {
            Some(cluster) => cluster.clone(),
            None => Arc::new(LocalGroupStore::new(
                storage
                    .meta()
                    .tree(groups::OFFSETS_TREE)
                    .map_err(storage_error("opening the committed offsets"))?,
            )),
        };
        let runtime = start_runtime(&storage, config, cluster.as_ref()).await?;
        let node = node_context(
            storage.clone(),
            runtime.clone(),
            limits,
            config,
            metrics,
            (logs, topics, group_store),
            cluster.as_deref(),
        )?;
        let (http_listener, http_addr) = bind("HTTP", config.http).await?;
        let (pg_listener, pg_addr) = match config.pg {
            Some(addr) => {
                let (listener, addr) = bind("Postgres (--pg off serves none)", addr).await?;
                (Some(listener), Some(addr))
            }
            None => (None, None),
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        if let Some(tls) = &tls {
            tls.reload_on_change(node.metrics.clone(), shutdown_rx.clone());
        }
        let mut tasks = Vec::new();
        if let Some(cluster) = &cluster {
            // ACL rules are checked from memory, pipelines run from the list each node keeps,
            // plugins are held compiled and SQL functions registered in the session: all read
            // again when any node changes them.
            let acls = node.acls.clone();
            let pipelines = runtime.pipelines().clone();
            let registry = runtime.registry().clone();
            let sql = node.sql.clone();
            cluster.on_meta_change(
                move |tree| {
                    if (tree.is_empty() || tree == crate::acl::ACLS_TREE)
                        && let Err(e) = acls.reload()
                    {
                        tracing::warn!(error = %e, "reading the cluster's ACL rules failed");
                    }
                    if tree.is_empty() || tree == weir_runtime::PLUGINS_TREE {
                        registry.changed();
                    }
                    if (tree.is_empty() || tree == weir_sql::functions::FUNCTIONS_TREE)
                        && let Err(e) = sql.sync_functions()
                    {
                        tracing::warn!(error = %e, "reading the cluster's SQL functions failed");
                    }
                    if (tree.is_empty() || tree == weir_runtime::PIPELINES_TREE)
                        && let Err(e) = pipelines.sync()
                    {
                        tracing::warn!(error = %e, "reading the cluster's pipelines failed");
                    }
                },
                shutdown_rx.clone(),
            );
            let ports = (http_addr.port(), pg_addr.map_or(0, |a| a.port()));
            let appends = node.appends.clone();
            tasks.push(cluster.start(ports, appends, shutdown_rx.clone()).await?);
        }
        tasks.extend([
            tokio::spawn(kafka::serve(
                kafka_listener,
                node.clone(),
                kafka_config,
                tls.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(crate::http::serve(
                http_listener,
                node.clone(),
                crate::http::Tokens {
                    admin: config.admin_token.clone(),
                    metrics: config.metrics_token.clone(),
                },
                crate::http::IngestTopics {
                    metrics: config.metrics_topic.clone(),
                    logs: config.logs_topic.clone(),
                    partitions: config.default_partitions.max(1),
                    create: config.auto_create_topics,
                },
                tls.clone(),
                peers,
                shutdown_rx.clone(),
            )),
        ]);
        tasks.push(tokio::spawn(take_samples(
            node.clone(),
            shutdown_rx.clone(),
        )));
        tasks.push(tokio::spawn(build_columnar_copies(
            storage.clone(),
            node.columnar.clone(),
            shutdown_rx.clone(),
        )));
        if let Some(listener) = pg_listener {
            tasks.push(tokio::spawn(crate::pg::serve(
                listener,
                node,
                config.admin_token.clone(),
                tls.clone(),
                shutdown_rx,
            )));
        }
        runtime.start().map_err(|source| Error::Runtime {
            what: "starting pipelines".into(),
            source,
        })?;
        let tls_on = tls.is_some();
        tracing::info!(addr = %http_addr, tls = tls_on, "HTTP listener ready");
        if let Some(addr) = pg_addr {
            tracing::info!(%addr, tls = tls_on, "Postgres listener ready");
        }
        tracing::info!(addr = %kafka_addr, tls = tls_on, "Kafka listener ready");
        Ok(Server {
            storage,
            runtime,
            kafka_addr,
            http_addr,
            pg_addr,
            shutdown,
            tasks,
        })
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    pub fn kafka_addr(&self) -> SocketAddr {
        self.kafka_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn pg_addr(&self) -> Option<SocketAddr> {
        self.pg_addr
    }

    /// Stops the listeners, then closes every log: flushed data, flushed indexes and a current
    /// recovery point, so the next start scans nothing.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.runtime.shutdown().await;
        let storage = self.storage;
        let closing = "closing the data directory";
        tokio::task::spawn_blocking(move || weir_storage::reactor::blocking(|| storage.close()))
            .await
            .map_err(task(closing))?
            .map_err(storage_error(closing))?;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}

/// Binds a listener, and says which one failed and where if it cannot.
async fn bind(what: &str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let binding = format!("binding the {what} listener to {addr}");
    let listener = TcpListener::bind(addr).await.map_err(io(&binding))?;
    let local = listener.local_addr().map_err(io(&binding))?;
    Ok((listener, local))
}

/// Samples the node's rates and lags into its history every
/// [`crate::history::SAMPLE_INTERVAL`] until shutdown.
async fn take_samples(node: NodeContext, mut shutdown: watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(crate::history::SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = ticks.tick() => {}
        }
        let node = node.clone();
        // Lags and pipelines read the metadata store: off the reactor.
        let sampled = tokio::task::spawn_blocking(move || {
            weir_storage::reactor::blocking(|| {
                let lags = node.group_lags();
                let pipelines = node.runtime.pipelines().list().unwrap_or_default();
                let reading = crate::history::Reading {
                    topics: node.metrics.topic_totals(),
                    pipelines: pipelines
                        .into_iter()
                        .map(|p| (p.spec.name, p.records_out))
                        .collect(),
                };
                let time_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                node.history
                    .sample(std::time::Instant::now(), time_ms, reading, &lags);
            })
        })
        .await;
        if let Err(e) = sampled {
            tracing::warn!(error = %e, "history sample failed");
        }
    }
}

/// How long the columnar builder rests after a pass that found nothing to build.
const COLUMNAR_IDLE: Duration = Duration::from_secs(10);

/// Writes columnar copies of closed segments (`weir_sql::columnar`) in the background, one at a
/// time on the blocking pool, until shutdown; a copy being written is finished first.
async fn build_columnar_copies(
    storage: Arc<Storage>,
    stats: Arc<weir_sql::columnar::BuilderStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (pass, stats) = (storage.clone(), stats.clone());
        let built = tokio::task::spawn_blocking(move || {
            weir_storage::reactor::blocking(|| weir_sql::columnar::build_missing(&pass, 1, &stats))
        })
        .await;
        let rest = match built {
            Ok(Ok(1)) => Duration::ZERO,
            Ok(Ok(_)) => COLUMNAR_IDLE,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "columnar copy not built; trying again later");
                COLUMNAR_IDLE
            }
            Err(e) => {
                tracing::warn!(error = %e, "columnar builder task failed; trying again later");
                COLUMNAR_IDLE
            }
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(rest) => {}
        }
    }
}

/// Opens (and recovers) the data directory and starts its maintenance thread.
async fn open_storage(config: &ServeConfig) -> Result<Arc<Storage>> {
    let storage_config = StorageConfig {
        partitions_max: config.partitions_max,
        disk_free_bytes_min: config.disk_free_bytes_min,
        open_segments_max: config.open_segments_max,
        delayed_records_max: config.delayed_records_max,
        maintenance_interval_ms: config.retention_check_ms,
        layer_keys: weir_sql::topic_config_keys(),
        ..StorageConfig::new(&config.data_dir)
    };
    let opening = format!("opening data directory {}", config.data_dir.display());
    let storage = tokio::task::spawn_blocking(move || {
        weir_storage::reactor::blocking(|| Storage::open(storage_config))
    })
    .await
    .map_err(task(&opening))?
    .map_err(storage_error(&opening))?;
    let topics = storage
        .list_topics()
        .map_err(storage_error("listing topics"))?;
    let partitions: u32 = topics.iter().map(|t| t.partitions).sum();
    for (topic, partition, reason) in storage.offline_partitions() {
        tracing::error!(topic, partition, reason, "partition offline");
    }
    storage.start_background();
    tracing::info!(
        data_dir = %config.data_dir.display(),
        topics = topics.len(),
        partitions,
        offline = storage.offline_partitions().len(),
        "storage ready"
    );
    Ok(storage)
}

/// The Kafka listener's settings, for a listener bound to `addr`.
fn kafka_config(config: &ServeConfig, addr: SocketAddr, limits: &Limits) -> KafkaConfig {
    let host = config
        .advertised_host
        .clone()
        .unwrap_or_else(|| addr.ip().to_string());
    KafkaConfig {
        advertised: (host, addr.port()),
        auto_create_topics: config.auto_create_topics,
        auth: config.kafka_auth,
        super_users: config.super_users.clone(),
        default_partitions: config.default_partitions.max(1),
        // A frame must fit in the request memory, or it would wait for room forever.
        request_bytes_max: u64::from(REQUEST_BYTES_MAX).min(limits.request_memory_bytes_max())
            as u32,
    }
}

/// Opens the plugin registry and pipelines (they start once the listeners do): a cluster
/// node's pipelines are the cluster's.
async fn start_runtime(
    storage: &Arc<Storage>,
    config: &ServeConfig,
    cluster: Option<&Arc<ClusterLogs>>,
) -> Result<Arc<Runtime>> {
    let sandbox = SandboxConfig {
        call_timeout_ms: config.plugin_timeout_ms,
        memory_bytes_max: config.plugin_memory_bytes_max,
        ..SandboxConfig::default()
    };
    let storage = storage.clone();
    let home = cluster.map(ClusterLogs::pipeline_home);
    let starting = "starting the plugin runtime";
    let runtime = tokio::task::spawn_blocking(move || {
        weir_storage::reactor::blocking(|| Runtime::open_with(storage, sandbox, home))
    })
    .await
    .map_err(task(starting))?
    .map_err(|source| Error::Runtime {
        what: starting.into(),
        source,
    })?;
    Ok(Arc::new(runtime))
}

/// The group coordinator (on the node's offsets store), metrics and SQL engine, and what every
/// listener shares; storage's append listener wakes long-polling fetches and pipelines.
/// The tree `name` of the node's users or ACL rules: in the cluster's database on a cluster
/// node, so that every node authenticates and authorizes alike; in the data directory otherwise.
fn security_tree<V: serde::Serialize + serde::de::DeserializeOwned>(
    storage: &Storage,
    cluster: Option<&ClusterLogs>,
    name: &str,
) -> weir_storage::Result<weir_storage::Tree<V>> {
    match cluster {
        Some(cluster) => Ok(cluster.tree(name)),
        None => storage.meta().tree(name),
    }
}

fn node_context(
    storage: Arc<Storage>,
    runtime: Arc<Runtime>,
    limits: Arc<Limits>,
    config: &ServeConfig,
    metrics: Arc<Metrics>,
    (logs, topics, group_store): (Arc<dyn Logs>, Arc<dyn Topics>, Arc<dyn GroupStore>),
    cluster: Option<&ClusterLogs>,
) -> Result<NodeContext> {
    let groups = Arc::new(Coordinator::new(group_store));
    let state = BrokerState {
        groups: groups.clone(),
        metrics: metrics.clone(),
        logs: logs.clone(),
    };
    let sql = QueryEngine::reading(
        topics.clone(),
        storage.clone(),
        Some(runtime.clone()),
        Some(Arc::new(state)),
        &QueryConfig {
            memory_bytes_max: usize::try_from(config.sql_memory_bytes_max).unwrap_or(usize::MAX),
            cache_bytes_max: usize::try_from(config.sql_cache_bytes_max).unwrap_or(usize::MAX),
            default_partitions: config.default_partitions.max(1),
            ..QueryConfig::default()
        },
    )
    .map_err(|source| Error::Sql {
        what: "starting the SQL engine".into(),
        source,
    })?;
    let counted = metrics.clone();
    storage.set_append_observer(Arc::new(move |topic, records, bytes| {
        counted.produced(topic, bytes, records);
    }));
    let appends = Arc::new(crate::kafka::appends::Appends::default());
    let waker = appends.clone();
    let pipelines = runtime.pipelines().clone();
    storage.set_listener(Arc::new(move |topic, partition| {
        waker.appended(topic, partition);
        pipelines.notify_append();
    }));
    let users = security_tree(&storage, cluster, crate::sasl::USERS_TREE)
        .map_err(crate::sasl::UserError::from)
        .and_then(crate::sasl::Users::open)
        .map_err(|e| Error::Users {
            what: "opening the users".into(),
            source: e,
        })?;
    let acls = security_tree(&storage, cluster, crate::acl::ACLS_TREE)
        .map_err(crate::acl::AclError::from)
        .and_then(crate::acl::Acls::open)
        .map_err(|e| Error::Acls {
            what: "opening the ACLs".into(),
            source: e,
        })?;
    let acls = Arc::new(acls);
    let super_users: Arc<[String]> = config.super_users.clone().into();
    runtime
        .pipelines()
        .set_compiler(Arc::new(weir_sql::stream::ContinuousQueries::new(
            topics.clone(),
            sql.functions().cloned(),
        )));
    runtime
        .pipelines()
        .set_rights(Arc::new(crate::acl::PipelineRights {
            acls: acls.clone(),
            super_users: super_users.clone(),
        }));
    Ok(NodeContext {
        logs,
        topics,
        acls,
        super_users,
        storage,
        groups,
        metrics,
        runtime,
        sql: Arc::new(sql),
        limits,
        users: Arc::new(users),
        appends,
        columnar: Arc::default(),
        history: Arc::default(),
    })
}
