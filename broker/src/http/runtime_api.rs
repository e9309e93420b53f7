//! `/v1/plugins` and `/v1/pipelines`: deploy, roll back and delete plugins; create, watch,
//! pause, resume and delete pipelines.

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_runtime::{PipelineSpec, PipelineStatus, PluginMeta, PluginVersion, SandboxConfig};

use super::{ApiError, ApiResult, AppState, blocking};

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
        }
    }
}

/// A pipeline's spec, state and counters as the API shows them.
#[derive(Serialize)]
struct PipelineStatusBody {
    spec: PipelineBody,
    /// `running`, `paused` or `starting`.
    status: String,
    reason: Option<String>,
    created_ms: i64,
    lag: u64,
    records_in: u64,
    records_out: u64,
    dropped: u64,
    dead_lettered: u64,
    batches: u64,
    failed_calls: u64,
    last_error: Option<String>,
    plugins: Vec<String>,
}

impl From<PipelineStatus> for PipelineStatusBody {
    fn from(p: PipelineStatus) -> Self {
        PipelineStatusBody {
            spec: p.spec.into(),
            status: p.status,
            reason: p.reason,
            created_ms: p.created_ms,
            lag: p.lag,
            records_in: p.records_in,
            records_out: p.records_out,
            dropped: p.dropped,
            dead_lettered: p.dead_lettered,
            batches: p.batches,
            failed_calls: p.failed_calls,
            last_error: p.last_error,
            plugins: p.plugins,
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

pub(super) fn routes() -> Router<AppState> {
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

async fn list_pipelines(State(state): State<AppState>) -> ApiResult<Json<Vec<PipelineStatusBody>>> {
    let runtime = state.node.runtime.clone();
    let pipelines = blocking(move || Ok(runtime.pipelines().list()?)).await?;
    Ok(Json(
        pipelines
            .into_iter()
            .map(PipelineStatusBody::from)
            .collect(),
    ))
}

async fn create_pipeline(
    State(state): State<AppState>,
    Json(body): Json<PipelineBody>,
) -> ApiResult<(StatusCode, Json<PipelineStatusBody>)> {
    // Creating makes the output topics (fsynced); the pipeline's task is spawned from the
    // blocking pool, which knows the runtime.
    let runtime = state.node.runtime.clone();
    let status = blocking(move || Ok(runtime.pipelines().create(body.into())?)).await?;
    Ok((StatusCode::CREATED, Json(status.into())))
}

async fn describe_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatusBody>> {
    Ok(Json(state.node.runtime.pipelines().describe(&name)?.into()))
}

async fn pause_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatusBody>> {
    let runtime = state.node.runtime.clone();
    let status = blocking(move || Ok(runtime.pipelines().pause(&name)?)).await?;
    Ok(Json(status.into()))
}

async fn resume_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatusBody>> {
    let runtime = state.node.runtime.clone();
    let status = blocking(move || Ok(runtime.pipelines().resume(&name)?)).await?;
    Ok(Json(status.into()))
}

async fn delete_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.node.runtime.pipelines().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
