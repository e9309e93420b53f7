//! `/v1/acls`: the ACL rules SASL users are checked against, the same rules Kafka's CreateAcls,
//! DescribeAcls and DeleteAcls manage. Names are lower case (`topic`, `prefixed`,
//! `describe_configs`, `deny`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, ApiResult, AppState, blocking};
use crate::acl::{Acl, AclError, AclFilter};

impl From<AclError> for ApiError {
    fn from(e: AclError) -> Self {
        let status = match &e {
            AclError::Invalid(_) => StatusCode::BAD_REQUEST,
            AclError::TooMany { .. } => StatusCode::CONFLICT,
            AclError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/acls", get(list_acls).post(add_acls).delete(delete_acls))
}

/// One rule, or a list of them.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NewAcls {
    One(Acl),
    Many(Vec<Acl>),
}

async fn list_acls(
    State(state): State<AppState>,
    Query(filter): Query<AclFilter>,
) -> Json<Vec<Acl>> {
    Json(state.node.acls.list(&filter))
}

/// Adds the rules (201), all or none: each is checked before any is stored.
async fn add_acls(
    State(state): State<AppState>,
    Json(body): Json<NewAcls>,
) -> ApiResult<(StatusCode, Json<Vec<Acl>>)> {
    let acls = match body {
        NewAcls::One(acl) => vec![acl],
        NewAcls::Many(acls) => acls,
    };
    let store = state.node.acls.clone();
    blocking(move || {
        store.add(&acls)?;
        for acl in &acls {
            tracing::info!(%acl, "ACL added");
        }
        Ok((StatusCode::CREATED, Json(acls)))
    })
    .await
}

/// Deletes the rules the query matches and answers them. A query with no field would delete
/// every rule; that needs `?all=true`, so it is never an accident.
async fn delete_acls(
    State(state): State<AppState>,
    Query(filter): Query<AclFilter>,
    Query(all): Query<DeleteAll>,
) -> ApiResult<Json<Vec<Acl>>> {
    if filter.is_empty() && !all.all {
        return Err(ApiError::bad_request(
            "a delete with no filter removes every ACL: add ?all=true to mean it",
        ));
    }
    let store = state.node.acls.clone();
    blocking(move || {
        let gone = store.delete(&filter)?;
        for acl in &gone {
            tracing::info!(%acl, "ACL deleted");
        }
        Ok(Json(gone))
    })
    .await
}

#[derive(serde::Deserialize)]
struct DeleteAll {
    #[serde(default)]
    all: bool,
}
