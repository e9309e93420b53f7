//! Counters and latency histograms of a node, rendered in the Prometheus text format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use weir_storage::locks;

use weir_runtime::PipelineStatus;

/// Upper bounds (seconds) of the request latency histogram buckets.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a topic (or the node's topics together) took in and gave out since the node started.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub bytes_in: u64,
    pub records_in: u64,
    pub bytes_out: u64,
    pub records_out: u64,
}

impl Totals {
    pub fn plus(self, other: &Totals) -> Totals {
        Totals {
            bytes_in: self.bytes_in + other.bytes_in,
            records_in: self.records_in + other.records_in,
            bytes_out: self.bytes_out + other.bytes_out,
            records_out: self.records_out + other.records_out,
        }
    }
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Counts per bucket (not cumulative), plus the overflow bucket at the end.
    buckets: [u64; LATENCY_BUCKETS_S.len() + 1],
    sum_s: f64,
    count: u64,
}

/// One consumer group partition's position, for the lag gauge.
pub struct GroupLag {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub lag: i64,
}

#[derive(Default)]
pub struct Metrics {
    topics: Mutex<HashMap<String, Totals>>,
    requests: Mutex<BTreeMap<String, Histogram>>,
    connections: Mutex<BTreeMap<u64, ConnectionInfo>>,
    next_connection: AtomicU64,
    connections_refused: AtomicU64,
    http_connections_refused: AtomicU64,
    pg_connections_refused: AtomicU64,
    /// Connections past a listener's limit being told so now (HTTP and Postgres).
    connection_refusals: Arc<AtomicU64>,
    authentication_failures: AtomicU64,
    authentication_timeouts: AtomicU64,
    /// Failed TLS handshakes on the Kafka and the HTTP listener.
    tls_handshake_failures: [AtomicU64; 2],
    /// Certificate reloads that loaded, and that failed.
    certificate_reloads: [AtomicU64; 2],
    /// Per ingestion source: records accepted and refused, requests accepted and refused.
    ingested: [[AtomicU64; 4]; IngestSource::ALL.len()],
    /// Long-polling fetches waiting now, and the times one was woken by an append.
    fetches_waiting: Arc<AtomicU64>,
    fetch_wakeups: AtomicU64,
    /// Record bytes fetches sent from segment files with `sendfile`.
    fetch_sendfile_bytes: AtomicU64,
    /// Runs of the cluster's partitions, and their bytes, that this node's retention dropped.
    retention_runs: AtomicU64,
    retention_bytes: AtomicU64,
    merged_runs: AtomicU64,
    compacted_records: AtomicU64,
    compacted_bytes: AtomicU64,
    merged_bytes: AtomicU64,
    /// Record sets unsent response frames hold by reference to their segment files.
    fetch_lent_sets: Arc<AtomicU64>,
}

/// Record sets the node's unsent fetch responses may hold by reference at once. Each keeps its
/// segment file open and mapped until the client has read it, so a client that stops reading
/// would otherwise make the node keep files (a fetch may name thousands of partitions); past
/// the bound, record sets are copied into the response instead.
pub const FETCH_LENT_SETS_MAX: u64 = 1024;

/// Connections past a listener's limit the node answers at once with the reason (HTTP's 503,
/// Postgres's SQLSTATE 53300). A Postgres refusal waits up to 5 s for the client's startup
/// message, so without a bound a flood of silent connections past the limit would hold as many
/// sockets; past it, a refused connection is closed at once, unanswered.
pub const CONNECTION_REFUSALS_MAX: u64 = 64;

/// One of a count held, given back when dropped: a record set a response frame holds by
/// reference (`weir_fetch_lent_sets`), a connection being refused (`weir_connection_refusals`),
/// a long-polling fetch waiting (`weir_fetches_waiting`).
pub struct Held(Arc<AtomicU64>);

impl Held {
    /// One more of `count`, which has no bound.
    fn count(count: &Arc<AtomicU64>) -> Held {
        count.fetch_add(1, Ordering::Relaxed);
        Held(count.clone())
    }

    /// One more of `count`, unless it is at `max` already.
    fn take(count: &Arc<AtomicU64>, max: u64) -> Option<Held> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Held(count.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where records sent over HTTP come from: each has its own counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngestSource {
    /// `POST /v1/topics/{name}/records`.
    Records,
    /// Prometheus remote write, `POST /api/v1/write`.
    RemoteWrite,
    /// OTLP/HTTP logs, `POST /v1/logs`.
    OtlpLogs,
    /// OTLP/HTTP metrics, `POST /v1/metrics`.
    OtlpMetrics,
}

impl IngestSource {
    const ALL: [IngestSource; 4] = [
        IngestSource::Records,
        IngestSource::RemoteWrite,
        IngestSource::OtlpLogs,
        IngestSource::OtlpMetrics,
    ];

    /// The `source` label.
    pub fn name(self) -> &'static str {
        match self {
            IngestSource::Records => "http_records",
            IngestSource::RemoteWrite => "prometheus_remote_write",
            IngestSource::OtlpLogs => "otlp_logs",
            IngestSource::OtlpMetrics => "otlp_metrics",
        }
    }
}

/// A resource clients can make the node hold: how much is held now, and its bound.
pub struct Bound {
    /// Metric name without the `weir_` prefix; the bound is `weir_<name>_<bound_suffix>`.
    pub name: &'static str,
    pub help: &'static str,
    pub used: u64,
    pub bound: u64,
    /// `max` for a ceiling, `min` for a floor (free disk space).
    pub bound_suffix: &'static str,
}

/// The protocol of a listener clients connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Kafka,
    Postgres,
    Http,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Kafka => "kafka",
            Protocol::Postgres => "postgres",
            Protocol::Http => "http",
        }
    }
}

/// One open client connection.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectionInfo {
    pub protocol: Protocol,
    pub peer: String,
    /// What the client calls itself in its latest request: a Kafka `client.id`, a Postgres
    /// `application_name`, an HTTP `User-Agent`.
    pub client_id: Option<String>,
    pub connected_ms: i64,
    pub requests: u64,
}

/// The most characters of what a client calls itself (a Kafka `client.id`, a Postgres
/// `application_name`, an HTTP `User-Agent`) that `weir.connections` keeps; the rest is cut.
pub const CLIENT_ID_CHARS_MAX: usize = 256;

/// An open connection, listed in `weir.connections` until it is dropped.
pub struct Connection {
    metrics: Arc<Metrics>,
    id: u64,
}

impl Connection {
    /// The id [`Metrics::connection_request`] takes.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Counts a request of the connection, remembering what the client calls itself.
    pub fn request(&self, client_id: Option<&str>) {
        self.metrics.connection_request(self.id, client_id);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        locks::lock(&self.metrics.connections).remove(&self.id);
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Updates a topic's counters; the name is copied only the first time it is seen.
    fn update(&self, topic: &str, f: impl FnOnce(&mut Totals)) {
        let mut topics = locks::lock(&self.topics);
        match topics.get_mut(topic) {
            Some(c) => f(c),
            None => f(topics.entry(topic.to_string()).or_default()),
        }
    }

    pub fn produced(&self, topic: &str, bytes: u64, records: u64) {
        self.update(topic, |c| {
            c.bytes_in += bytes;
            c.records_in += records;
        });
    }

    /// Forgets the counters of topics that no longer exist, so a deleted topic leaves the
    /// exposition (a topic made again under its name starts from zero, as Prometheus expects of
    /// a counter that resets).
    pub fn retain_topics(&self, existing: &std::collections::HashSet<String>) {
        locks::lock(&self.topics).retain(|name, _| existing.contains(name));
    }

    /// Every topic's counters (topics deleted since left out).
    pub fn topic_totals(&self) -> HashMap<String, Totals> {
        locks::lock(&self.topics).clone()
    }

    /// The counters of every topic added up.
    pub fn totals(&self) -> Totals {
        locks::lock(&self.topics)
            .values()
            .fold(Totals::default(), |sum, c| sum.plus(c))
    }

    pub fn consumed(&self, topic: &str, bytes: u64, records: u64) {
        self.update(topic, |c| {
            c.bytes_out += bytes;
            c.records_out += records;
        });
    }

    pub fn request(&self, api: &str, elapsed: Duration) {
        let s = elapsed.as_secs_f64();
        let mut requests = locks::lock(&self.requests);
        let h = requests.entry(api.to_string()).or_default();
        let i = LATENCY_BUCKETS_S
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(LATENCY_BUCKETS_S.len());
        h.buckets[i] += 1;
        h.sum_s += s;
        h.count += 1;
    }

    /// Registers a connection of a client at `peer`, open until the answer is dropped.
    pub fn connection(self: &Arc<Self>, protocol: Protocol, peer: SocketAddr) -> Connection {
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let info = ConnectionInfo {
            protocol,
            peer: peer.to_string(),
            client_id: None,
            connected_ms: weir_storage::now_ms(),
            requests: 0,
        };
        locks::lock(&self.connections).insert(id, info);
        Connection {
            metrics: self.clone(),
            id,
        }
    }

    /// Counts a request on connection `id`, remembering the client's id.
    pub fn connection_request(&self, id: u64, client_id: Option<&str>) {
        // What a client calls itself is its to choose: kept only up to a bound.
        let client_id = client_id.map(|name| match name.char_indices().nth(CLIENT_ID_CHARS_MAX) {
            Some((end, _)) => &name[..end],
            None => name,
        });
        if let Some(info) = locks::lock(&self.connections).get_mut(&id) {
            info.requests += 1;
            if info.client_id.as_deref() != client_id {
                info.client_id = client_id.map(str::to_string);
            }
        }
    }

    /// Counts a connection closed on accept because the node held its limit.
    pub fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a long-polling fetch waiting until the guard is dropped.
    pub fn fetch_waiting(&self) -> Held {
        Held::count(&self.fetches_waiting)
    }

    /// A hold on one more record set lent to a response frame, unless the node holds
    /// [`FETCH_LENT_SETS_MAX`] already.
    pub fn lend_fetch_set(&self) -> Option<Held> {
        Held::take(&self.fetch_lent_sets, FETCH_LENT_SETS_MAX)
    }

    /// Answers a connection refused past a listener's limit with `answer` (which owns it), on
    /// a task of its own, unless [`CONNECTION_REFUSALS_MAX`] are being answered: then `answer`
    /// is dropped unrun, closing the connection at once.
    pub fn answer_refusal(&self, answer: impl Future<Output = ()> + Send + 'static) {
        if let Some(held) = Held::take(&self.connection_refusals, CONNECTION_REFUSALS_MAX) {
            tokio::spawn(async move {
                answer.await;
                drop(held);
            });
        }
    }

    /// Refused connections being answered now.
    pub fn connection_refusals(&self) -> u64 {
        self.connection_refusals.load(Ordering::Relaxed)
    }

    /// Record sets unsent response frames hold by reference now.
    pub fn fetch_lent_sets(&self) -> u64 {
        self.fetch_lent_sets.load(Ordering::Relaxed)
    }

    /// Counts a waiting fetch woken by an append to a partition it reads.
    pub fn fetch_woken(&self) {
        self.fetch_wakeups.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts record bytes a fetch sent from segment files with `sendfile`.
    pub fn fetch_sent_from_files(&self, bytes: u64) {
        self.fetch_sendfile_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts runs of the cluster's partitions, and their bytes, that retention dropped.
    pub fn retention_trimmed(&self, runs: u64, bytes: u64) {
        self.retention_runs.fetch_add(runs, Ordering::Relaxed);
        self.retention_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts runs of the cluster's partitions, and their bytes, merged out of small objects.
    pub fn merged(&self, runs: u64, bytes: u64) {
        self.merged_runs.fetch_add(runs, Ordering::Relaxed);
        self.merged_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts records of the cluster's compacted topics that key compaction removed, and the
    /// bytes it saved.
    pub fn compacted(&self, records: u64, bytes: u64) {
        self.compacted_records.fetch_add(records, Ordering::Relaxed);
        self.compacted_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts an HTTP connection refused on accept because the node held its limit.
    pub fn http_connection_refused(&self) {
        self.http_connections_refused
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Postgres connection refused on accept because the node held its limit.
    pub fn pg_connection_refused(&self) {
        self.pg_connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Kafka client that failed SASL authentication.
    pub fn authentication_failed(&self) {
        self.authentication_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Kafka client closed for not authenticating in time.
    pub fn authentication_timed_out(&self) {
        self.authentication_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a reload of the TLS certificate and key, `loaded` or not.
    pub fn certificate_reloaded(&self, loaded: bool) {
        self.certificate_reloads[usize::from(!loaded)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a client whose TLS handshake failed on `listener`.
    pub fn tls_handshake_failed(&self, listener: crate::tls::Listener) {
        self.tls_handshake_failures[listener as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request of an ingestion source and its records: all written when `accepted`,
    /// none otherwise (a refused request writes nothing).
    pub fn ingested(&self, source: IngestSource, records: u64, accepted: bool) {
        let counters = &self.ingested[source as usize];
        let (records_at, request_at) = if accepted { (0, 2) } else { (1, 3) };
        counters[records_at].fetch_add(records, Ordering::Relaxed);
        counters[request_at].fetch_add(1, Ordering::Relaxed);
    }

    /// Open connections of one protocol.
    pub fn connections(&self, protocol: Protocol) -> i64 {
        locks::lock(&self.connections)
            .values()
            .filter(|c| c.protocol == protocol)
            .count() as i64
    }

    pub fn connection_list(&self) -> Vec<ConnectionInfo> {
        locks::lock(&self.connections).values().cloned().collect()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(
        &self,
        lags: &[GroupLag],
        pipelines: &[PipelineStatus],
        bounds: &[Bound],
    ) -> String {
        let mut out = String::new();
        self.render_topic_counters(&mut out);
        self.render_request_durations(&mut out);
        render_bounds(&mut out, bounds);
        for (name, help, count) in [
            (
                "weir_connections_refused_total",
                "Kafka connections closed on accept because the node held its limit.",
                &self.connections_refused,
            ),
            (
                "weir_http_connections_refused_total",
                "HTTP connections refused on accept because the node held its limit (answered 503 while fewer than weir_connection_refusals_max are being answered).",
                &self.http_connections_refused,
            ),
            (
                "weir_pg_connections_refused_total",
                "Postgres connections refused on accept because the node held its limit (answered SQLSTATE 53300 while fewer than weir_connection_refusals_max are being answered).",
                &self.pg_connections_refused,
            ),
            (
                "weir_sasl_authentication_failures_total",
                "Kafka clients refused by SASL authentication.",
                &self.authentication_failures,
            ),
            (
                "weir_sasl_authentication_timeouts_total",
                "Kafka connections closed for not authenticating in time after connecting.",
                &self.authentication_timeouts,
            ),
            (
                "weir_fetch_wakeups_total",
                "Long-polling fetches woken by an append to a partition they read.",
                &self.fetch_wakeups,
            ),
            (
                "weir_fetch_sendfile_bytes_total",
                "Record bytes fetches sent from segment files to the socket with sendfile, not copied.",
                &self.fetch_sendfile_bytes,
            ),
            (
                "weir_cluster_retention_runs_dropped_total",
                "Runs (one flush's records of one partition) of the cluster's topics that this node's retention dropped.",
                &self.retention_runs,
            ),
            (
                "weir_cluster_retention_bytes_dropped_total",
                "Bytes of the runs of the cluster's topics that this node's retention dropped.",
                &self.retention_bytes,
            ),
            (
                "weir_cluster_merged_runs_total",
                "Runs of the cluster's topics that this node moved out of small objects into larger ones.",
                &self.merged_runs,
            ),
            (
                "weir_cluster_merged_bytes_total",
                "Bytes of the runs this node moved out of small objects into larger ones.",
                &self.merged_bytes,
            ),
            (
                "weir_cluster_compacted_records_total",
                "Records of the cluster's compacted topics that this node's key compaction removed (superseded by a later record of the same key).",
                &self.compacted_records,
            ),
            (
                "weir_cluster_compacted_bytes_total",
                "Bytes this node's key compaction saved in the cluster's compacted topics.",
                &self.compacted_bytes,
            ),
        ] {
            let _ = writeln!(
                &mut out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let name = "weir_fetches_waiting";
        let _ = writeln!(
            &mut out,
            "# HELP {name} Long-polling fetches waiting for records.\n# TYPE {name} gauge\n{name} {}",
            self.fetches_waiting.load(Ordering::Relaxed)
        );
        let name = "weir_tls_handshake_failures_total";
        let _ = writeln!(
            &mut out,
            "# HELP {name} Clients whose TLS handshake failed, per listener.\n# TYPE {name} counter"
        );
        for listener in [crate::tls::Listener::Kafka, crate::tls::Listener::Http] {
            let _ = writeln!(
                &mut out,
                "{name}{{listener=\"{}\"}} {}",
                listener.name(),
                self.tls_handshake_failures[listener as usize].load(Ordering::Relaxed)
            );
        }
        let name = "weir_tls_certificate_reloads_total";
        let _ = writeln!(
            &mut out,
            "# HELP {name} Changes of the TLS certificate files read again, by result.\n# TYPE {name} counter"
        );
        for (result, count) in ["loaded", "failed"].iter().zip(&self.certificate_reloads) {
            let _ = writeln!(
                &mut out,
                "{name}{{result=\"{result}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        self.render_ingested(&mut out);
        render_group_lags(&mut out, lags);
        render_pipelines(&mut out, pipelines);
        out
    }

    /// Records and requests of each ingestion source, accepted and refused.
    fn render_ingested(&self, out: &mut String) {
        for (name, what, first) in [
            ("weir_ingest_records_total", "Records", 0),
            ("weir_ingest_requests_total", "Requests", 2),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {what} sent to the HTTP ingestion endpoints, per source, written \
                 (accepted) or not (refused).\n# TYPE {name} counter"
            );
            for source in IngestSource::ALL {
                let counters = &self.ingested[source as usize];
                for (result, at) in [("accepted", first), ("refused", first + 1)] {
                    let _ = writeln!(
                        out,
                        "{name}{{source=\"{}\",result=\"{result}\"}} {}",
                        source.name(),
                        counters[at].load(Ordering::Relaxed)
                    );
                }
            }
        }
    }

    /// Bytes and records in and out, per topic.
    fn render_topic_counters(&self, out: &mut String) {
        let topics: BTreeMap<String, Totals> = locks::lock(&self.topics)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        type Counter = (&'static str, &'static str, fn(&Totals) -> u64);
        let counters: [Counter; 4] = [
            ("weir_bytes_in_total", "Record batch bytes appended", |c| {
                c.bytes_in
            }),
            ("weir_records_in_total", "Records appended", |c| {
                c.records_in
            }),
            (
                "weir_bytes_out_total",
                "Record batch bytes sent to consumers",
                |c| c.bytes_out,
            ),
            ("weir_records_out_total", "Records sent to consumers", |c| {
                c.records_out
            }),
        ];
        for (name, help, get) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}, per topic.\n# TYPE {name} counter"
            );
            for (topic, c) in &topics {
                let _ = writeln!(out, "{name}{{topic=\"{}\"}} {}", label(topic), get(c));
            }
        }
    }

    /// The latency histogram of Kafka requests, per API.
    fn render_request_durations(&self, out: &mut String) {
        let name = "weir_request_duration_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time to answer a Kafka request, per API.\n# TYPE {name} histogram"
        );
        for (api, h) in locks::lock(&self.requests).iter() {
            let api = label(api);
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_S.iter().enumerate() {
                cumulative += h.buckets[i];
                let _ = writeln!(
                    out,
                    "{name}_bucket{{api=\"{api}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "{name}_bucket{{api=\"{api}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "{name}_sum{{api=\"{api}\"}} {}", h.sum_s);
            let _ = writeln!(out, "{name}_count{{api=\"{api}\"}} {}", h.count);
        }
    }
}

/// Each bounded resource beside its bound.
fn render_bounds(out: &mut String, bounds: &[Bound]) {
    for b in bounds {
        let (name, suffix) = (b.name, b.bound_suffix);
        let _ = writeln!(
            out,
            "# HELP weir_{name} {}.\n# TYPE weir_{name} gauge\nweir_{name} {}\n\
                 # HELP weir_{name}_{suffix} Bound of weir_{name}.\n\
                 # TYPE weir_{name}_{suffix} gauge\nweir_{name}_{suffix} {}",
            b.help, b.used, b.bound
        );
    }
}

/// Records between each group's committed offsets and the partition ends.
fn render_group_lags(out: &mut String, lags: &[GroupLag]) {
    let name = "weir_group_lag";
    let _ = writeln!(
        out,
        "# HELP {name} Records between a group's committed offset and the partition end.\n# TYPE {name} gauge"
    );
    for l in lags {
        let _ = writeln!(
            out,
            "{name}{{group=\"{}\",topic=\"{}\",partition=\"{}\"}} {}",
            label(&l.group),
            label(&l.topic),
            l.partition,
            l.lag
        );
    }
}

/// Counters of delayed delivery; its pending records are among the bounds.
pub fn render_delays(out: &mut String, stats: &weir_storage::delay::DelayStats) {
    for (name, kind, help, value) in [
        (
            "weir_delayed_records_scheduled_total",
            "counter",
            "Records produced for delayed delivery",
            &stats.scheduled,
        ),
        (
            "weir_delayed_records_delivered_total",
            "counter",
            "Delayed records appended to their topic when due",
            &stats.delivered,
        ),
        (
            "weir_delayed_records_dropped_total",
            "counter",
            "Delayed records whose partition was gone when they fell due",
            &stats.dropped,
        ),
        (
            "weir_delayed_delivery_lateness_ms",
            "gauge",
            "How late after its due time the last delivered batch went out",
            &stats.last_lateness_ms,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {}",
            value.load(Ordering::Relaxed)
        );
    }
}

/// Where a cluster node's reads of object ranges were answered from, and how often it waited
/// for a connection to the cluster database.
pub(crate) fn render_cluster(out: &mut String, cluster: &crate::kafka::logs::ClusterStats) {
    let name = "weir_cluster_db_connection_waits_total";
    let _ = writeln!(
        out,
        "# HELP {name} Queries and transactions that found every connection to the cluster database lent and waited for one.\n# TYPE {name} counter\n{name} {}",
        cluster.db.waits
    );
    let stats = &cluster.cache;
    let name = "weir_cluster_cache_reads_total";
    let _ = writeln!(
        out,
        "# HELP {name} Reads of object ranges, by where they were answered: the cache's memory tier, its disk tier, or the object store.\n# TYPE {name} counter"
    );
    for (tier, count) in [
        ("memory", stats.hits),
        ("disk", stats.disk_hits),
        ("store", stats.misses),
    ] {
        let _ = writeln!(out, "{name}{{tier=\"{tier}\"}} {count}");
    }
}

/// What the columnar copy builder did and found (`weir_sql::columnar`); the copies' disk is
/// bounded by the node's free-space low-water mark.
pub fn render_columnar(out: &mut String, stats: &weir_sql::columnar::BuilderSnapshot) {
    for (name, kind, help, value) in [
        (
            "weir_columnar_builds_total",
            "counter",
            "Columnar copies of closed segments written",
            stats.builds,
        ),
        (
            "weir_columnar_build_failures_total",
            "counter",
            "Columnar copies that failed; their segments are read from the log",
            stats.failures,
        ),
        (
            "weir_columnar_files",
            "gauge",
            "Columnar copies on disk",
            stats.files,
        ),
        (
            "weir_columnar_bytes",
            "gauge",
            "Bytes of columnar copies on disk",
            stats.bytes,
        ),
        (
            "weir_columnar_builds_waiting",
            "gauge",
            "Closed segments of columnar topics without a current copy",
            stats.waiting,
        ),
        (
            "weir_columnar_disk_short",
            "gauge",
            "1 while copies wait because free disk space is near its low-water mark",
            u64::from(stats.disk_short),
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}.\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// Counters and gauges of every pipeline, from its status.
fn render_pipelines(out: &mut String, pipelines: &[PipelineStatus]) {
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&PipelineStatus) -> u64,
    );
    let series: [Series; 11] = [
        (
            "weir_pipeline_records_in_total",
            "counter",
            "Input records a pipeline handled",
            |p| p.records_in,
        ),
        (
            "weir_pipeline_records_out_total",
            "counter",
            "Records a pipeline appended to its outputs",
            |p| p.records_out,
        ),
        (
            "weir_pipeline_dropped_total",
            "counter",
            "Input records a pipeline's plugins dropped",
            |p| p.dropped,
        ),
        (
            "weir_pipeline_dead_lettered_total",
            "counter",
            "Records sent to a pipeline's dead-letter topic",
            |p| p.dead_lettered,
        ),
        (
            "weir_pipeline_failed_calls_total",
            "counter",
            "Plugin calls that trapped or hit a limit",
            |p| p.failed_calls,
        ),
        (
            "weir_pipeline_lag",
            "gauge",
            "Input records a pipeline has not handled yet",
            |p| p.lag,
        ),
        (
            "weir_pipeline_paused",
            "gauge",
            "1 when a pipeline is paused",
            |p| u64::from(p.status == "paused"),
        ),
        (
            "weir_pipeline_late_records_total",
            "counter",
            "Records a SQL pipeline dead-lettered because their window had closed",
            |p| p.late_records,
        ),
        (
            "weir_pipeline_open_windows",
            "gauge",
            "Windows a SQL pipeline holds open",
            |p| p.open_windows,
        ),
        (
            "weir_pipeline_open_groups",
            "gauge",
            "Groups a SQL pipeline holds over its open windows; weir_pipeline_open_groups_max is the bound",
            |p| p.open_groups,
        ),
        (
            "weir_pipeline_watermark_ms",
            "gauge",
            "Event time (ms since the epoch) up to which a SQL pipeline's windows have closed; 0 before the first",
            |p| p.watermark_ms.map_or(0, |w| u64::try_from(w).unwrap_or(0)),
        ),
    ];
    let max = weir_sql::stream::OPEN_GROUPS_MAX;
    let _ = writeln!(
        out,
        "# HELP weir_pipeline_open_groups_max Groups one SQL pipeline may hold over its open windows.\n# TYPE weir_pipeline_open_groups_max gauge\nweir_pipeline_open_groups_max {max}"
    );
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}.\n# TYPE {name} {kind}");
        for p in pipelines {
            let _ = writeln!(
                out,
                "{name}{{pipeline=\"{}\"}} {}",
                label(&p.spec.name),
                get(p)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_client_name_is_kept_only_up_to_its_bound() {
        let m = Arc::new(Metrics::default());
        let open = m.connection(Protocol::Http, "127.0.0.1:1".parse().expect("an address"));
        open.request(Some(&"é".repeat(CLIENT_ID_CHARS_MAX * 40)));
        let kept = m.connection_list()[0].client_id.clone().unwrap_or_default();
        assert_eq!(kept, "é".repeat(CLIENT_ID_CHARS_MAX));
        open.request(Some("short"));
        assert_eq!(m.connection_list()[0].client_id.as_deref(), Some("short"));
        assert_eq!(m.connection_list()[0].requests, 2);
    }

    #[test]
    fn render_has_counters_histograms_and_gauges() {
        let m = Arc::new(Metrics::default());
        m.produced("logs", 100, 3);
        m.consumed("logs", 50, 2);
        m.request("Produce", Duration::from_millis(3));
        m.request("Produce", Duration::from_secs(20));
        let _open = m.connection(Protocol::Kafka, "127.0.0.1:1".parse().expect("an address"));
        let text = m.render(
            &[GroupLag {
                group: "g".into(),
                topic: "logs".into(),
                partition: 0,
                lag: 7,
            }],
            &[],
            &[Bound {
                name: "connections",
                help: "Open Kafka connections",
                used: m.connections(Protocol::Kafka) as u64,
                bound: 10,
                bound_suffix: "max",
            }],
        );
        for line in [
            "weir_bytes_in_total{topic=\"logs\"} 100",
            "weir_records_out_total{topic=\"logs\"} 2",
            "weir_request_duration_seconds_bucket{api=\"Produce\",le=\"0.005\"} 1",
            "weir_request_duration_seconds_bucket{api=\"Produce\",le=\"+Inf\"} 2",
            "weir_request_duration_seconds_count{api=\"Produce\"} 2",
            "weir_connections 1",
            "weir_connections_max 10",
            "weir_group_lag{group=\"g\",topic=\"logs\",partition=\"0\"} 7",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
