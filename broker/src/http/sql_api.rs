//! `POST /v1/sql`: the statement in the body (plain text, or JSON `{"sql": "…"}`, recognised by
//! its content type or, whatever the type, by its opening brace: no statement starts so), the answer
//! in the encoding the `Accept` header asks for: JSON (default), CSV, an Arrow IPC stream, or a
//! text table (`text/plain`, what `weir sql` prints).

use axum::Router;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use weir_sql::Encoding;

use super::{ApiError, ApiResult, AppState};
use crate::acl::Caller;

/// Largest statement accepted.
pub const STATEMENT_BYTES_MAX: usize = 1 << 20;

impl From<weir_sql::Error> for ApiError {
    fn from(e: weir_sql::Error) -> Self {
        use weir_sql::Error;
        match e {
            Error::Storage(e) => e.into(),
            Error::Runtime(e) => e.into(),
            // Syntax, planning, type and resource errors are the statement's fault.
            Error::Query(_) | Error::Schema(_) | Error::Refused(_) => {
                ApiError::bad_request(e.to_string())
            }
            Error::Denied(message) => ApiError {
                status: StatusCode::FORBIDDEN,
                message,
            },
            // Scans read around a copy that fails; only the node's own files can fail so.
            Error::Columnar(message) => ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                message,
            },
        }
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/sql", post(run_sql))
}

fn statement(headers: &HeaderMap, body: &[u8]) -> ApiResult<String> {
    if body.len() > STATEMENT_BYTES_MAX {
        return Err(ApiError::bad_request(format!(
            "statement of {} bytes, more than {STATEMENT_BYTES_MAX}",
            body.len()
        )));
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"))
        || body.trim_ascii_start().starts_with(b"{");
    if json {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))?;
        value["sql"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad_request("expected {\"sql\": \"…\"}"))
    } else {
        String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("the statement is not UTF-8"))
    }
}

async fn run_sql(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let sql = statement(&headers, &body)?;
    let encoding = Encoding::from_accept(
        headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let answer = state.node.sql.sql_as(&sql, caller.table_access()).await?;
    let body = answer.encode(encoding)?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        body,
    )
        .into_response())
}
