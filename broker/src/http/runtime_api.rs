//! `/v1/plugins` and `/v1/pipelines`: deploy, roll back and delete plugins (the admin token or
//! a super user); create, watch, pause, resume and delete pipelines. A SASL user may create a
//! pipeline when it may read the input, write every output and the dead-letter topic, and create
//! the topics that are missing; the pipeline then runs with that user's rights and pauses, with
//! the reason, when one is revoked. A user sees the pipelines whose topics it may describe and
//! manages its own.

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_runtime::{PipelineSpec, PipelineStatus, PluginMeta, PluginVersion, SandboxConfig};

use super::{ApiError, ApiResult, AppState, blocking};
use crate::acl::Caller;

// The API's own shapes of plugins and pipelines: what the registry and the pipelines keep in
// the metadata store may change without changing the API, and the reverse.

/// A plugin version as the API shows it.
#[derive(Serialize)]
struct VersionBody {
    version: u32,
    sha256: String,
    kind: String,
    abi_version: u32,
    size_bytes: u64,
    created_ms: i64,
    params: BTreeMap<String, String>,
}

impl From<PluginVersion> for VersionBody {
    fn from(v: PluginVersion) -> Self {
        VersionBody {
            version: v.version,
            sha256: v.sha256,
            kind: v.kind,
            abi_version: v.abi_version,
            size_bytes: v.size_bytes,
            created_ms: v.created_ms,
            params: v.params,
        }
    }
}

/// A plugin with every version as the API shows it.
#[derive(Serialize)]
struct PluginBody {
    name: String,
    /// The version pipelines run.
    active: u32,
    versions: Vec<VersionBody>,
}

impl From<PluginMeta> for PluginBody {
    fn from(p: PluginMeta) -> Self {
        PluginBody {
            name: p.name,
            active: p.active,
            versions: p.versions.into_iter().map(VersionBody::from).collect(),
        }
    }
}

/// A pipeline as `POST /v1/pipelines` takes it and the API shows it.
#[derive(Serialize, Deserialize)]
struct PipelineBody {
    name: String,
    from: String,
    #[serde(default)]
    through: Vec<String>,
    #[serde(default)]
    partition_by: Option<String>,
    to: Vec<String>,
    /// `earliest`, `latest`, an offset, or `@<timestamp ms>`.
    #[serde(default = "latest")]
    from_offset: String,
    #[serde(default)]
    dead_letter: Option<String>,
    /// Records per plugin call.
    #[serde(default = "batch_records_max")]
    batch_records_max: u32,
    /// Failed calls in a row after which the pipeline pauses.
    #[serde(default = "failures_max")]
    failures_max: u32,
    /// The statement of a SQL pipeline (made with `CREATE PIPELINE`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sql: Option<String>,
    /// How far an aggregate's watermark stays behind the input's event time.
    #[serde(default)]
    lateness_ms: i64,
    /// How long an input partition may be silent before it stops holding the watermark back.
    #[serde(default = "idle_timeout_ms")]
    idle_timeout_ms: i64,
}

fn latest() -> String {
    "latest".into()
}

fn batch_records_max() -> u32 {
    PipelineSpec::BATCH_RECORDS_DEFAULT
}

fn failures_max() -> u32 {
    PipelineSpec::FAILURES_DEFAULT
}

fn idle_timeout_ms() -> i64 {
    PipelineSpec::IDLE_TIMEOUT_DEFAULT_MS
}

impl From<PipelineBody> for PipelineSpec {
    fn from(b: PipelineBody) -> Self {
        PipelineSpec {
            name: b.name,
            from: b.from,
            through: b.through,
            partition_by: b.partition_by,
            to: b.to,
            from_offset: b.from_offset,
            dead_letter: b.dead_letter,
            batch_records_max: b.batch_records_max,
            failures_max: b.failures_max,
            sql: b.sql,
            lateness_ms: b.lateness_ms,
            idle_timeout_ms: b.idle_timeout_ms,
        }
    }
}

impl From<PipelineSpec> for PipelineBody {
    fn from(s: PipelineSpec) -> Self {
        PipelineBody {
            name: s.name,
            from: s.from,
            through: s.through,
            partition_by: s.partition_by,
            to: s.to,
            from_offset: s.from_offset,
            dead_letter: s.dead_letter,
            batch_records_max: s.batch_records_max,
            failures_max: s.failures_max,
            sql: s.sql,
            lateness_ms: s.lateness_ms,
            idle_timeout_ms: s.idle_timeout_ms,
        }
    }
}

/// A pipeline's spec, state and counters as the API shows them.
#[derive(Serialize)]
struct PipelineStatusBody {
    spec: PipelineBody,
    /// `running`, `paused`, `starting`, or `standby` on a cluster node while another node
    /// runs it.
    status: String,
    reason: Option<String>,
    created_ms: i64,
    /// The user whose rights the pipeline runs with; absent for the node's own.
    owner: Option<String>,
    lag: u64,
    records_in: u64,
    records_out: u64,
    dropped: u64,
    dead_lettered: u64,
    batches: u64,
    failed_calls: u64,
    last_error: Option<String>,
    /// When the last error happened (ms since the epoch).
    last_error_ms: Option<i64>,
    plugins: Vec<String>,
    late_records: u64,
    open_windows: u64,
    open_groups: u64,
    watermark_ms: Option<i64>,
}

impl From<PipelineStatus> for PipelineStatusBody {
    fn from(p: PipelineStatus) -> Self {
        PipelineStatusBody {
            spec: p.spec.into(),
            status: p.status,
            reason: p.reason,
            created_ms: p.created_ms,
            owner: p.owner.map(|owner| owner.user),
            lag: p.lag,
            records_in: p.records_in,
            records_out: p.records_out,
            dropped: p.dropped,
            dead_lettered: p.dead_lettered,
            batches: p.batches,
            failed_calls: p.failed_calls,
            last_error: p.last_error,
            last_error_ms: p.last_error_ms,
            plugins: p.plugins,
            late_records: p.late_records,
            open_windows: p.open_windows,
            open_groups: p.open_groups,
            watermark_ms: p.watermark_ms,
        }
    }
}

impl From<weir_runtime::Error> for ApiError {
    fn from(e: weir_runtime::Error) -> Self {
        use weir_runtime::Error;
        match e {
            Error::Storage(e) => e.into(),
            Error::Invalid(_) | Error::Batch(_) => ApiError::bad_request(e.to_string()),
            Error::NotFound(_) => ApiError {
                status: StatusCode::NOT_FOUND,
                message: e.to_string(),
            },
            Error::Conflict(_) => ApiError {
                status: StatusCode::CONFLICT,
                message: e.to_string(),
            },
            Error::Engine(_) | Error::Io { .. } => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message: e.to_string(),
            },
        }
    }
}

/// Plugin routes: behind the admin check.
pub(super) fn plugin_routes() -> Router<AppState> {
    // A module upload may be as large as the sandbox accepts (and a little more, so an
    // oversized one gets the sandbox's message rather than a bare 413).
    let upload_bytes_max = SandboxConfig::default().module_bytes_max as usize + 1;
    Router::new()
        .route("/plugins", get(list_plugins))
        .route(
            "/plugins/{name}",
            get(describe_plugin)
                .put(deploy_plugin)
                .delete(delete_plugin)
                .layer(DefaultBodyLimit::max(upload_bytes_max)),
        )
        .route("/plugins/{name}/rollback", post(rollback_plugin))
}

/// Pipeline routes: each checks its caller.
pub(super) fn pipeline_routes() -> Router<AppState> {
    Router::new()
        .route("/pipelines", get(list_pipelines).post(create_pipeline))
        .route(
            "/pipelines/{name}",
            get(describe_pipeline).delete(delete_pipeline),
        )
        .route("/pipelines/{name}/pause", post(pause_pipeline))
        .route("/pipelines/{name}/resume", post(resume_pipeline))
}

async fn list_plugins(State(state): State<AppState>) -> ApiResult<Json<Vec<PluginBody>>> {
    let plugins = state.node.runtime.registry().list()?;
    Ok(Json(plugins.into_iter().map(PluginBody::from).collect()))
}

async fn describe_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginBody>> {
    Ok(Json(state.node.runtime.registry().get(&name)?.into()))
}

/// `PUT /v1/plugins/{name}?key=value…`: the body is the module, the query its params.
async fn deploy_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<VersionBody>)> {
    let runtime = state.node.runtime.clone();
    let version = blocking(move || Ok(runtime.registry().deploy(&name, &body, params)?)).await?;
    Ok((StatusCode::CREATED, Json(version.into())))
}

#[derive(Deserialize, Default)]
struct Rollback {
    version: Option<u32>,
}

async fn rollback_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<Rollback>>,
) -> ApiResult<Json<VersionBody>> {
    let to = body.map(|Json(b)| b).unwrap_or_default().version;
    let runtime = state.node.runtime.clone();
    let version = blocking(move || Ok(runtime.registry().rollback(&name, to)?)).await?;
    Ok(Json(version.into()))
}

async fn delete_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let runtime = state.node.runtime.clone();
    blocking(move || Ok(runtime.delete_plugin(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_pipelines(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Vec<PipelineStatusBody>>> {
    let runtime = state.node.runtime.clone();
    let pipelines = blocking(move || Ok(runtime.pipelines().list()?)).await?;
    Ok(Json(
        pipelines
            .into_iter()
            .filter(|p| caller.sees_pipeline(&p.spec))
            .map(PipelineStatusBody::from)
            .collect(),
    ))
}

async fn create_pipeline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<PipelineBody>,
) -> ApiResult<(StatusCode, Json<PipelineStatusBody>)> {
    if body.sql.is_some() {
        return Err(ApiError::bad_request(
            "a SQL pipeline is made with CREATE PIPELINE … AS INSERT INTO … SELECT …, sent to POST /v1/sql",
        ));
    }
    let spec = PipelineSpec::from(body);
    caller.check_pipeline(&spec)?;
    // Creating makes the output topics (fsynced); the pipeline's task is spawned from the
    // blocking pool, which knows the runtime.
    let (runtime, storage) = (state.node.runtime.clone(), state.node.storage.clone());
    let status = blocking(move || {
        for topic in spec
            .to
            .iter()
            .chain(std::iter::once(&spec.dead_letter_topic()))
        {
            if storage.topic(topic)?.is_none() {
                caller.check_create_topic(topic)?;
            }
        }
        Ok(runtime.pipelines().create(spec, caller.owner())?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(status.into())))
}

/// Pipeline `name` when the caller may see it, and whether it may manage it too.
fn shown_pipeline(
    state: &AppState,
    caller: &Caller,
    name: &str,
    manage: bool,
) -> ApiResult<PipelineStatus> {
    let status = state.node.runtime.pipelines().describe(name)?;
    if !caller.sees_pipeline(&status.spec) {
        // As for a pipeline that does not exist: its name tells nothing.
        return Err(
            weir_runtime::Error::NotFound(format!("pipeline {name} does not exist")).into(),
        );
    }
    if manage && !caller.manages(status.owner.as_ref()) {
        return Err(ApiError {
            status: StatusCode::FORBIDDEN,
            message: format!(
                "pipeline {name} is not yours: its owner, the admin token or one of \
                 --super-users manages it"
            ),
        });
    }
    Ok(status)
}

async fn describe_pipeline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatusBody>> {
    let status = blocking(move || shown_pipeline(&state, &caller, &name, false)).await?;
    Ok(Json(status.into()))
}

async fn pause_pipeline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatusBody>> {
    let status = blocking(move || {
        shown_pipeline(&state, &caller, &name, true)?;
        Ok(state.node.runtime.pipelines().pause(&name)?)
    })
    .await?;
    Ok(Json(status.into()))
}

async fn resume_pipeline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatusBody>> {
    let status = blocking(move || {
        shown_pipeline(&state, &caller, &name, true)?;
        Ok(state.node.runtime.pipelines().resume(&name)?)
    })
    .await?;
    Ok(Json(status.into()))
}

async fn delete_pipeline(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let checked = state.clone();
    let name = blocking(move || shown_pipeline(&checked, &caller, &name, true))
        .await?
        .spec
        .name;
    state.node.runtime.pipelines().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
