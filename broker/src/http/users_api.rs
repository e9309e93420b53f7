//! `/v1/users`: the users SASL authenticates on the Kafka listener. Passwords go in and never
//! come out; a user is listed with the mechanisms it has credentials for.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiResult, AppState, blocking};
use crate::sasl::UserError;

impl From<UserError> for ApiError {
    fn from(e: UserError) -> Self {
        let status = match &e {
            UserError::Invalid(_) => StatusCode::BAD_REQUEST,
            UserError::Unknown(_) => StatusCode::NOT_FOUND,
            UserError::TooMany => StatusCode::CONFLICT,
            UserError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

#[derive(Serialize)]
struct UserBody {
    name: String,
    mechanisms: Vec<String>,
}

#[derive(Deserialize)]
struct NewUser {
    name: String,
    password: String,
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/users", get(list_users).post(set_user))
        .route("/users/{name}", delete(delete_user))
}

async fn list_users(State(state): State<AppState>) -> ApiResult<Json<Vec<UserBody>>> {
    let users = state.node.users.clone();
    let list = blocking(move || Ok(users.list()?)).await?;
    Ok(Json(
        list.into_iter()
            .map(|(name, credentials)| UserBody {
                name,
                mechanisms: credentials.scram.into_keys().collect(),
            })
            .collect(),
    ))
}

/// Creates a user (201) or gives one a new password (200); the key derivation runs on the
/// blocking pool.
async fn set_user(
    State(state): State<AppState>,
    Json(body): Json<NewUser>,
) -> ApiResult<StatusCode> {
    let users = state.node.users.clone();
    blocking(move || {
        let existed = users.get(&body.name)?.is_some();
        users.set_password(&body.name, &body.password)?;
        tracing::info!(user = %body.name, "user credentials set");
        Ok(if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        })
    })
    .await
}

async fn delete_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let users = state.node.users.clone();
    blocking(move || Ok(users.delete(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}
