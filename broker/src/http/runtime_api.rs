//! `/v1/plugins` and `/v1/pipelines`: deploy, roll back and delete plugins; create, watch,
//! pause, resume and delete pipelines.

use std::collections::BTreeMap;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use weir_runtime::{PipelineSpec, PipelineStatus, PluginMeta, PluginVersion, SandboxConfig};

use super::{ApiError, ApiResult, AppState, blocking};

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

async fn list_plugins(State(state): State<AppState>) -> ApiResult<Json<Vec<PluginMeta>>> {
    Ok(Json(state.node.runtime.registry().list()?))
}

async fn describe_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PluginMeta>> {
    Ok(Json(state.node.runtime.registry().get(&name)?))
}

/// `PUT /v1/plugins/{name}?key=value…`: the body is the module, the query its params.
async fn deploy_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(params): Query<BTreeMap<String, String>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PluginVersion>)> {
    let runtime = state.node.runtime.clone();
    let version = blocking(move || Ok(runtime.registry().deploy(&name, &body, params)?)).await?;
    Ok((StatusCode::CREATED, Json(version)))
}

#[derive(Deserialize, Default)]
struct Rollback {
    version: Option<u32>,
}

async fn rollback_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Option<Json<Rollback>>,
) -> ApiResult<Json<PluginVersion>> {
    let to = body.map(|Json(b)| b).unwrap_or_default().version;
    Ok(Json(state.node.runtime.registry().rollback(&name, to)?))
}

async fn delete_plugin(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.node.runtime.delete_plugin(&name)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_pipelines(State(state): State<AppState>) -> ApiResult<Json<Vec<PipelineStatus>>> {
    let runtime = state.node.runtime.clone();
    Ok(Json(
        blocking(move || Ok(runtime.pipelines().list()?)).await?,
    ))
}

async fn create_pipeline(
    State(state): State<AppState>,
    Json(spec): Json<PipelineSpec>,
) -> ApiResult<(StatusCode, Json<PipelineStatus>)> {
    // Creating spawns the pipeline's task, so it runs on the reactor (it only touches sled and
    // creates topics, both quick).
    let status = state.node.runtime.pipelines().create(spec)?;
    Ok((StatusCode::CREATED, Json(status)))
}

async fn describe_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatus>> {
    Ok(Json(state.node.runtime.pipelines().describe(&name)?))
}

async fn pause_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatus>> {
    Ok(Json(state.node.runtime.pipelines().pause(&name)?))
}

async fn resume_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<PipelineStatus>> {
    Ok(Json(state.node.runtime.pipelines().resume(&name)?))
}

async fn delete_pipeline(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    state.node.runtime.pipelines().delete(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
