//! The HTTP listener: health, Prometheus metrics, and the `/v1` admin API (topics, JSON
//! produce and consume, groups with lag, plugins and pipelines). With an admin token set, every `/v1` call needs
//! `Authorization: Bearer <token>`, and `/metrics` needs it too unless a metrics token of its
//! own is set.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_runtime::partition_for_key;
use weir_storage::{
    BATCH_HEADER_BYTES, BatchBuilder, Compression, Header, NewRecord, Storage, StorageError,
    TopicMeta, Topics, in_batches,
};

use crate::acl::{Caller, Denied, Operation, ResourceType};
use crate::http::ingest::BodyKind;
use crate::http::tracked::Tracked;
use crate::kafka::logs::Logs;
use crate::metrics::IngestSource;
use crate::node::NodeContext;
use crate::tls::{Handshakes, Listener};

mod acls_api;
mod console;
mod forward;
mod groups_api;
mod ingest;
mod node_api;
pub mod otlp;
mod records_api;
pub mod remote_write;
mod runtime_api;
mod sql_api;
mod tracked;
mod users_api;
mod weigh;

pub use forward::Peers;
pub use records_api::{CONSUME_RECORDS_MAX, CONTAINS_BYTES_MAX, PAGE_BYTES_MAX, SCAN_BYTES_MAX};

/// Most records one produce request takes.
pub const PRODUCE_RECORDS_MAX: usize = 100_000;
/// Largest body of a produce request.
pub const PRODUCE_BODY_BYTES_MAX: usize = 16 << 20;

#[derive(Clone)]
struct AppState {
    node: NodeContext,
    token: Option<Arc<str>>,
    /// Guards `/metrics`: `--metrics-token`, else the admin token, else nothing.
    metrics_token: Option<Arc<str>>,
    /// Whether the listener speaks TLS: only then may a user send a password.
    tls: bool,
    /// Where the ingestion endpoints write when a request names no topic.
    ingest: Arc<IngestTopics>,
    /// On a cluster, how requests go on to the node that coordinates their group.
    peers: Option<Arc<Peers>>,
}

/// The topics the ingestion endpoints (Prometheus remote write, OTLP) write to when a request
/// names none with `?topic=`, and the partitions of one they make.
pub struct IngestTopics {
    pub metrics: String,
    pub logs: String,
    pub partitions: u32,
    /// Whether a missing topic is made on first use (`--auto-create-topics`).
    pub create: bool,
}

/// The bearer tokens the HTTP listener asks for.
pub struct Tokens {
    /// For every `/v1` call.
    pub admin: Option<String>,
    /// For `/metrics`; the admin token guards it when this is `None`.
    pub metrics: Option<String>,
}

/// An error answered as JSON `{"error": "..."}` with a status code.
#[derive(Clone, Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    fn unsupported(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            message: message.into(),
        }
    }
}

/// Seconds a client is asked to wait before sending again what the node could not take
/// (`Retry-After` on a 503), so shippers retry instead of dropping.
const RETRY_AFTER_SECONDS: u32 = 5;

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        let status = match &e {
            StorageError::UnknownTopic { .. } | StorageError::UnknownPartition { .. } => {
                StatusCode::NOT_FOUND
            }
            StorageError::TopicExists { .. } => StatusCode::CONFLICT,
            StorageError::InvalidTopicName { .. }
            | StorageError::InvalidConfig { .. }
            | StorageError::Batch(_)
            | StorageError::PartitionCount { .. }
            | StorageError::OffsetOutOfRange { .. } => StatusCode::BAD_REQUEST,
            StorageError::Offline { .. }
            | StorageError::Failed { .. }
            | StorageError::DiskLow { .. }
            | StorageError::DelayedFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            StorageError::TooManyPartitions { .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let response = (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response();
        with_retry_after(self.status, response)
    }
}

/// Asks a client answered 503 to retry after [`RETRY_AFTER_SECONDS`].
fn with_retry_after(status: StatusCode, mut response: Response) -> Response {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, RETRY_AFTER_SECONDS.into());
    }
    response
}

type ApiResult<T> = Result<T, ApiError>;

/// Serves HTTP until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    node: NodeContext,
    tokens: Tokens,
    ingest: IngestTopics,
    tls: Option<crate::tls::Tls>,
    peers: Option<Peers>,
    mut shutdown: watch::Receiver<bool>,
) {
    let handshakes = tls.map(|tls| Handshakes::new(&tls, Listener::Http, node.metrics.clone()));
    let counters = node.metrics.clone();
    let connections_max = node.limits.http_connections_max();
    let state = AppState {
        node,
        metrics_token: tokens.metrics.or(tokens.admin.clone()).map(Arc::from),
        token: tokens.admin.map(Arc::from),
        tls: handshakes.is_some(),
        ingest: Arc::new(ingest),
        peers: peers.map(Arc::new),
    };
    // Plugins, users and ACLs change the node for everyone: the admin token or a super user
    // only.
    let admin = runtime_api::plugin_routes()
        .merge(users_api::routes())
        .merge(acls_api::routes())
        .route_layer(middleware::from_fn(require_admin));
    let v1 = Router::new()
        .route("/topics", get(list_topics).post(create_topic))
        .route("/topics/{name}", get(describe_topic).delete(delete_topic))
        .route(
            "/topics/{name}/configs",
            axum::routing::patch(alter_topic_configs),
        )
        .route(
            "/topics/{name}/records",
            get(records_api::consume)
                .post(produce)
                .layer(DefaultBodyLimit::max(PRODUCE_BODY_BYTES_MAX)),
        )
        .merge(otlp::routes())
        .merge(groups_api::routes())
        .merge(node_api::routes())
        .merge(sql_api::routes())
        .merge(runtime_api::pipeline_routes())
        .merge(admin)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    // Prometheus remote write sits where Prometheus-compatible receivers serve it, with the
    // same callers as /v1.
    let remote_write_api =
        remote_write::routes().layer(middleware::from_fn_with_state(state.clone(), authenticate));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/metrics",
            get(metrics).route_layer(middleware::from_fn_with_state(
                state.clone(),
                require_metrics_token,
            )),
        )
        .nest("/v1", v1)
        .nest("/api/v1", remote_write_api)
        .merge(console::routes())
        .with_state(state);
    let stop = async move {
        let _ = shutdown.changed().await;
    };
    let app = app
        .layer(middleware::from_fn(count_request))
        .into_make_service_with_connect_info::<Peer>();
    let served = match handshakes {
        None => {
            let listener = Tracked {
                inner: listener,
                metrics: counters,
                connections_max,
            };
            axum::serve(listener, app)
                .with_graceful_shutdown(stop)
                .await
        }
        Some(handshakes) => match handshakes.listen(listener) {
            Ok(listener) => {
                let listener = Tracked {
                    inner: listener,
                    metrics: counters,
                    connections_max,
                };
                axum::serve(listener, app)
                    .with_graceful_shutdown(stop)
                    .await
            }
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP listener failed");
    }
}

/// Who a `/v1` request comes from, put in its extensions as a [`Caller`]: without an admin
/// token, anyone; with one, the holder of the token (`Authorization: Bearer`), or a SASL user
/// with its password (`Authorization: Basic`, over TLS only), checked against the ACLs.
async fn authenticate(
    State(state): State<AppState>,
    ConnectInfo(Peer { addr: peer, .. }): ConnectInfo<Peer>,
    mut request: Request,
    next: Next,
) -> Response {
    let host = state.client_host(request.headers(), peer.ip()).await;
    request.extensions_mut().insert(forward::ClientHost(host));
    let caller = match (&state.token, basic_credentials(&request)) {
        (None, _) => Caller::Anyone,
        (Some(_), Some(credentials)) => match user_caller(&state, credentials, peer, host).await {
            Ok(caller) => caller,
            Err(refused) => return refused.into_response(),
        },
        (Some(token), None) => match refusal(Some(token), &request, "an admin token or a user") {
            Some(refused) => return refused,
            None => Caller::Anyone,
        },
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// The client of a connection, plain or TLS: its address and its entry in
/// `weir.connections`.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    connection: Arc<crate::metrics::Connection>,
}

impl<L> axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Tracked<L>>> for Peer
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, Tracked<L>>) -> Peer {
        Peer {
            addr: *stream.remote_addr(),
            connection: stream.io().connection.clone(),
        }
    }
}

/// Counts a request of its connection in `weir.connections`, by the client's `User-Agent`.
async fn count_request(
    ConnectInfo(peer): ConnectInfo<Peer>,
    request: Request,
    next: Next,
) -> Response {
    let agent = request
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    peer.connection.request(agent);
    next.run(request).await
}

/// The user and password of `Authorization: Basic`, if the request carries one.
fn basic_credentials(request: &Request) -> Option<Result<(String, String), ApiError>> {
    let encoded = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Basic ")?;
    let malformed = || unauthorized("Authorization: Basic needs base64 of user:password");
    Some(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| {
                let (user, password) = text.split_once(':')?;
                Some((user.to_string(), password.to_string()))
            })
            .ok_or_else(malformed),
    )
}

fn unauthorized(message: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        message: message.into(),
    }
}

/// A SASL user, once its password checks out (on the blocking pool: a key derivation).
async fn user_caller(
    state: &AppState,
    credentials: Result<(String, String), ApiError>,
    peer: SocketAddr,
    host: IpAddr,
) -> ApiResult<Caller> {
    if !state.tls {
        return Err(unauthorized(
            "a user's password is accepted over TLS only: start the node with --tls-cert and \
             --tls-key, or use the admin token",
        ));
    }
    let (user, password) = credentials?;
    if let Err(reason) = state.node.users.check_password(&user, password).await {
        tracing::info!(%peer, %reason, "HTTP client failed to authenticate");
        state.node.metrics.authentication_failed();
        return Err(unauthorized(crate::sasl::AUTHENTICATION_FAILED));
    }
    Ok(Caller::User {
        super_user: state.node.super_users.contains(&user),
        name: user,
        host,
        acls: state.node.acls.clone(),
    })
}

/// Lets through the admin token's holder and super users only.
async fn require_admin(
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    match &caller {
        Caller::User {
            name,
            super_user: false,
            ..
        } => ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "user {name} may not manage plugins, users or ACLs: that takes the \
                 admin token or one of --super-users"
            ),
        }
        .into_response(),
        _ => next.run(request).await,
    }
}

impl From<Denied> for ApiError {
    fn from(denied: Denied) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            message: denied.to_string(),
        }
    }
}

async fn require_metrics_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match refusal(state.metrics_token.as_deref(), &request, "a metrics token") {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// A 401 for a request that does not carry `Authorization: Bearer <token>` when a token is set,
/// saying whether the token was missing or wrong.
fn refusal(token: Option<&str>, request: &Request, what: &str) -> Option<Response> {
    let token = token?;
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let message = match presented {
        Some(p) if crate::auth::token_matches(token, p) => return None,
        Some(_) => "the token sent is wrong: this node has another".to_owned(),
        None => format!("this node needs {what}: send Authorization: Bearer <token>"),
    };
    Some(
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            message,
        }
        .into_response(),
    )
}

/// `200 {"status":"ok",…}` while the node can take writes; `503 {"status":"cannot_write",
/// "reason":…}` while it cannot (disk below the low-water mark, a failed fsync), though it still
/// serves reads.
async fn healthz(State(state): State<AppState>) -> Response {
    let storage = &state.node.storage;
    let offline = storage.offline_partitions().len();
    let free = storage.space().free_bytes();
    match storage.write_refusal() {
        None => Json(serde_json::json!({
            "status": "ok",
            "offline_partitions": offline,
            "disk_free_bytes": free,
        }))
        .into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "cannot_write",
                "reason": reason,
                "offline_partitions": offline,
                "disk_free_bytes": free,
            })),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let node = state.node.clone();
    // Lags, pipelines, topics and the user count read the metadata store: off the reactor.
    let (lags, pipelines, bounds) = tokio::task::spawn_blocking(move || {
        weir_storage::reactor::blocking(|| {
            if let Ok(names) = node.logs.topic_names() {
                node.metrics.retain_topics(&names.into_iter().collect());
            }
            let pipelines = node.runtime.pipelines().list().unwrap_or_default();
            (node.group_lags(), pipelines, node.bounds())
        })
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], {
        let mut text = state.node.metrics.render(&lags, &pipelines, &bounds);
        crate::metrics::render_delays(&mut text, &state.node.storage.delays().stats());
        crate::metrics::render_columnar(&mut text, &state.node.columnar.snapshot());
        if let Some(cluster) = state.node.logs.cluster_stats() {
            crate::metrics::render_cluster(&mut text, &cluster);
        }
        text
    })
}

/// Runs blocking storage work off the async reactor.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> ApiResult<T> + Send + 'static,
) -> ApiResult<T> {
    tokio::task::spawn_blocking(move || weir_storage::reactor::blocking(f))
        .await
        .map_err(|e| ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("task failed: {e}"),
        })?
}

#[derive(Serialize)]
struct TopicSummary {
    name: String,
    partitions: u32,
    configs: BTreeMap<String, String>,
    /// Bytes of the topic's segments.
    size_bytes: u64,
    /// Offsets between each partition's start and end, summed: the records held, less any
    /// compaction removed.
    records: u64,
}

impl TopicSummary {
    fn of(topics: &dyn Topics, t: TopicMeta) -> Result<TopicSummary, StorageError> {
        let (mut size_bytes, mut records) = (0, 0);
        // A partition offline since recovery has no log to weigh.
        for (_, size) in topics.partition_sizes(&t)? {
            size_bytes += size.bytes;
            records += size.high_watermark - size.log_start_offset;
        }
        Ok(TopicSummary {
            name: t.name,
            partitions: t.partitions,
            configs: t.configs,
            size_bytes,
            records,
        })
    }
}

async fn list_topics(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<TopicSummary>>> {
    let topics = state.node.topics.clone();
    blocking(move || {
        let mut listed = Vec::new();
        for meta in topics.list_topics()? {
            if !caller.may(Operation::Describe, ResourceType::Topic, &meta.name) {
                continue;
            }
            listed.push(TopicSummary::of(topics.as_ref(), meta)?);
        }
        Ok(Json(listed))
    })
    .await
}

#[derive(Deserialize)]
struct CreateTopic {
    name: String,
    #[serde(default = "one")]
    partitions: u32,
    #[serde(default)]
    configs: BTreeMap<String, String>,
}

fn one() -> u32 {
    1
}

async fn create_topic(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<CreateTopic>,
) -> ApiResult<(StatusCode, Json<TopicSummary>)> {
    caller.check_create_topic(&body.name)?;
    let node = state.node.clone();
    let topic = blocking(move || {
        node.logs
            .create_topic(&body.name, body.partitions, body.configs)?;
        let meta = node.logs.existing_topic(&body.name)?;
        Ok(TopicSummary::of(node.topics.as_ref(), meta)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(topic)))
}

#[derive(Serialize)]
struct PartitionDetail {
    partition: u32,
    log_start_offset: u64,
    high_watermark: u64,
    size_bytes: u64,
    /// Segment files on a lone node; object ranges in a cluster.
    segments: u64,
}

#[derive(Serialize)]
struct TopicDetail {
    name: String,
    id: String,
    /// The configs set on the topic.
    configs: BTreeMap<String, String>,
    /// Every config key: the value in force, its default, and whether the topic sets it.
    all_configs: Vec<ConfigEntry>,
    partitions: Vec<PartitionDetail>,
    /// Records waiting for delayed delivery into the topic.
    delayed: DelayedDetail,
}

#[derive(Serialize)]
struct DelayedDetail {
    records: u64,
    /// The earliest due time, epoch milliseconds.
    next_due_ms: Option<i64>,
}

#[derive(Serialize)]
struct ConfigEntry {
    name: &'static str,
    value: String,
    default: String,
    /// `topic` when set on the topic, `default` otherwise.
    source: &'static str,
}

/// Every config key of a topic whose explicit configs are `configs`.
fn all_configs(storage: &Storage, configs: &BTreeMap<String, String>) -> Vec<ConfigEntry> {
    storage
        .topic_config_keys()
        .into_iter()
        .map(|(name, default)| match configs.get(name) {
            Some(value) => ConfigEntry {
                name,
                value: value.clone(),
                default,
                source: "topic",
            },
            None => ConfigEntry {
                name,
                value: default.clone(),
                default,
                source: "default",
            },
        })
        .collect()
}

/// `PATCH /v1/topics/{name}/configs`: keys to set and keys to return to their default, as
/// Kafka's IncrementalAlterConfigs; checked as a whole before anything changes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigChanges {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

async fn alter_topic_configs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(changes): Json<ConfigChanges>,
) -> ApiResult<Json<TopicDetail>> {
    caller.check(Operation::AlterConfigs, ResourceType::Topic, &name)?;
    if let Some(key) = changes.delete.iter().find(|k| changes.set.contains_key(*k)) {
        return Err(ApiError::bad_request(format!(
            "{key} is both set and deleted"
        )));
    }
    let logs = state.node.logs.clone();
    let altered = name.clone();
    blocking(move || {
        let mut configs = logs.existing_topic(&altered)?.configs;
        for key in &changes.delete {
            configs.remove(key);
        }
        configs.extend(changes.set);
        logs.set_topic_configs(&altered, configs)?;
        Ok(())
    })
    .await?;
    tracing::info!(topic = %name, "topic configs altered");
    describe_topic(State(state), Extension(caller), Path(name)).await
}

async fn describe_topic(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<TopicDetail>> {
    caller.check(Operation::Describe, ResourceType::Topic, &name)?;
    let node = state.node.clone();
    blocking(move || {
        let meta = node.logs.existing_topic(&name)?;
        let minutes = node.storage.delays().pending_by_minute();
        let minutes = minutes.iter().filter(|m| m.topic == name);
        let delayed = DelayedDetail {
            records: minutes.clone().map(|m| m.records).sum(),
            next_due_ms: minutes.map(|m| m.next_due_ms).min(),
        };
        // A partition offline since recovery is left out.
        let partitions = node
            .topics
            .partition_sizes(&meta)?
            .into_iter()
            .map(|(partition, size)| PartitionDetail {
                partition,
                log_start_offset: size.log_start_offset,
                high_watermark: size.high_watermark,
                size_bytes: size.bytes,
                segments: size.pieces,
            })
            .collect();
        Ok(Json(TopicDetail {
            id: uuid::Uuid::from_bytes(meta.id).to_string(),
            name: meta.name,
            all_configs: all_configs(&node.storage, &meta.configs),
            configs: meta.configs,
            partitions,
            delayed,
        }))
    })
    .await
}

async fn delete_topic(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    caller.check(Operation::Delete, ResourceType::Topic, &name)?;
    let logs = state.node.logs.clone();
    blocking(move || Ok(logs.delete_topic(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct ProduceRecord {
    key: Option<String>,
    value: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    partition: Option<u32>,
    timestamp: Option<i64>,
}

#[derive(Deserialize)]
struct ProduceBody {
    records: Vec<ProduceRecord>,
}

#[derive(Serialize)]
struct Placed {
    partition: u32,
    /// `None` while the record waits for delayed delivery: it gets its offset when due.
    offset: Option<u64>,
}

/// A record of a produce request, and the partition it names if it names one.
struct Produced {
    partition: Option<u32>,
    record: NewRecord,
}

async fn produce(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let kind = BodyKind::of(&headers);
    let received = kind.clone().and_then(|kind| {
        Ok(ProduceRequest {
            kind,
            body: ingest::body(&headers, body)?,
        })
    });
    let placed =
        ingest::ingest(&state, caller, IngestSource::Records, name, None, received).await?;
    Ok(Json(match kind? {
        BodyKind::Json => serde_json::json!({ "offsets": placed }),
        BodyKind::Lines { .. } => serde_json::json!({ "records": placed.len() }),
    }))
}

/// A `POST /v1/topics/{name}/records` body.
struct ProduceRequest {
    kind: BodyKind,
    body: Bytes,
}

impl ingest::Decode for ProduceRequest {
    fn weight(&self) -> ApiResult<usize> {
        Ok(match self.kind {
            BodyKind::Json => weigh::json(&self.body, size_of::<ProduceRecord>()),
            // Records are slices of the body.
            BodyKind::Lines { .. } => {
                let lines = self.body.iter().filter(|b| **b == b'\n').count() + 1;
                lines.min(PRODUCE_RECORDS_MAX) * size_of::<Produced>()
            }
        })
    }

    fn records(self) -> ApiResult<ingest::Records> {
        let now = weir_storage::now_ms();
        let BodyKind::Lines { json } = self.kind else {
            let body: ProduceBody = serde_json::from_slice(&self.body).map_err(|e| {
                ApiError::bad_request(format!("not a produce body {{\"records\": [...]}}: {e}"))
            })?;
            let mut records = ingest::Records::new("send the rest in another");
            for r in body.records {
                records.push(Produced {
                    partition: r.partition,
                    record: NewRecord {
                        timestamp: r.timestamp.unwrap_or(now),
                        key: r.key.map(Bytes::from),
                        value: r.value.map(Bytes::from),
                        headers: r
                            .headers
                            .into_iter()
                            .map(|(key, v)| Header {
                                key,
                                value: Some(Bytes::from(v)),
                            })
                            .collect(),
                    },
                })?;
            }
            return Ok(records);
        };
        ingest::lines(&self.body, json, now)
    }
}

/// Appends the records of a produce request, each where it asks to go: its partition, its
/// key's, or else round-robin; in batches within the topic's `max.message.bytes`. A record
/// naming a partition the topic lacks, or too large for a batch, refuses the request before
/// anything is written. Answers where each went, in the request's order.
fn append_produced(logs: &dyn Logs, name: &str, produced: Vec<Produced>) -> ApiResult<Vec<Placed>> {
    let meta = logs
        .topic(name)?
        .ok_or_else(|| StorageError::UnknownTopic { name: name.into() })?;
    let batch_bytes_max = logs.batch_bytes_max(name)?;
    let mut by_partition: BTreeMap<u32, Vec<(usize, NewRecord)>> = BTreeMap::new();
    for (i, Produced { partition, record }) in produced.into_iter().enumerate() {
        let bytes = record.bytes_in_batch() + BATCH_HEADER_BYTES;
        if bytes as u64 > batch_bytes_max {
            return Err(ApiError::bad_request(format!(
                "record {i}: {bytes} bytes in a batch, over topic {name}'s max.message.bytes \
                 ({batch_bytes_max}); nothing was written"
            )));
        }
        let partition = match (partition, &record.key) {
            (Some(p), _) if p >= meta.partitions => {
                return Err(ApiError::bad_request(format!(
                    "record {i}: partition {p} does not exist; topic {name} has {}",
                    meta.partitions
                )));
            }
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, meta.partitions),
            (None, None) => i as u32 % meta.partitions,
        };
        by_partition.entry(partition).or_default().push((i, record));
    }
    let mut placed: Vec<(usize, Placed)> = Vec::new();
    for (partition, records) in by_partition {
        let (order, records): (Vec<usize>, Vec<NewRecord>) = records.into_iter().unzip();
        let mut order = order.into_iter();
        for run in in_batches(records, batch_bytes_max) {
            let mut builder = BatchBuilder::new(Compression::None);
            let order: Vec<usize> = order.by_ref().take(run.len()).collect();
            run.into_iter().for_each(|r| builder.push(r));
            let batch = builder.build().map_err(StorageError::from)?;
            // A base offset of -1: the records wait for delayed delivery.
            let (base_offset, _, _) = logs.append(name, partition, batch)?;
            for (n, i) in order.into_iter().enumerate() {
                let offset = u64::try_from(base_offset).ok().map(|base| base + n as u64);
                placed.push((i, Placed { partition, offset }));
            }
        }
    }
    placed.sort_by_key(|(i, _)| *i);
    Ok(placed.into_iter().map(|(_, p)| p).collect())
}

/// A time a request names by `field`, in epoch milliseconds or RFC 3339.
fn time_param(field: &str, text: &str) -> ApiResult<i64> {
    weir_storage::parse_time_ms(text).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field} {text:?}: expected epoch milliseconds or an RFC 3339 time such as \
             2026-11-30T12:00:00Z"
        ))
    })
}
