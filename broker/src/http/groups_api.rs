//! `/v1/groups`: consumer groups with their members and lag, offsets committed by consumers
//! outside the group protocol, and the two changes an operator makes to an idle group: deleting
//! it and moving its offsets.

use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::forward::Head;
use super::{ApiError, ApiResult, AppState, blocking, time_param};
use crate::acl::{Caller, Operation, ResourceType};
use crate::kafka::groups::{CommittedOffset, GroupError};
use crate::node::NodeContext;

/// Most partitions one reset names.
const RESET_PARTITIONS_MAX: usize = 10_000;

impl From<GroupError> for ApiError {
    fn from(e: GroupError) -> Self {
        let status = match e {
            GroupError::GroupIdNotFound => StatusCode::NOT_FOUND,
            GroupError::NonEmptyGroup | GroupError::GroupSubscribedToTopic => StatusCode::CONFLICT,
            GroupError::OffsetMetadataTooLarge
            | GroupError::InvalidGroupId
            | GroupError::InvalidRequest => StatusCode::BAD_REQUEST,
            // Another node of the cluster holds the group; asking again may reach it.
            GroupError::NotCoordinator | GroupError::CoordinatorNotAvailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError {
            status,
            message: e.to_string(),
        }
    }
}

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/groups", get(list_groups))
        .route("/groups/{id}", get(describe_group).delete(delete_group))
        .route("/groups/{id}/offsets", post(commit_offset))
        .route("/groups/{id}/reset-offsets", post(reset_offsets))
}

/// Every group: on a cluster, each as the node coordinating it sees it.
async fn list_groups(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<Json<Value>> {
    let node = state.node.clone();
    let groups = blocking(move || Ok(node.groups.list()?.groups)).await?;
    let out: Vec<Value> = groups
        .into_iter()
        .filter(|g| caller.may(Operation::Describe, ResourceType::Group, &g.group))
        .map(|g| {
            json!({
                "group": g.group,
                "state": g.state.name(),
                "protocol_type": g.protocol_type,
                "members": g.members,
            })
        })
        .collect();
    Ok(Json(Value::Array(out)))
}

/// `group {id} does not exist` unless it has members or committed offsets.
fn known_group(node: &NodeContext, id: &str) -> ApiResult<()> {
    let members = node.groups.describe(id).members.len();
    if members == 0 && node.groups.committed_all(id)?.is_empty() {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("group {id} does not exist"),
        });
    }
    Ok(())
}

/// Refuses a change to a group with active members: they own its offsets. A commit from outside
/// the group protocol is refused with IllegalGeneration exactly while the group has members.
fn idle_group(node: &NodeContext, id: &str, change: &str) -> ApiResult<()> {
    match node.groups.commit_check(id, "", -1) {
        Ok(()) => Ok(()),
        Err(GroupError::IllegalGeneration) => Err(ApiError {
            status: StatusCode::CONFLICT,
            message: format!(
                "group {id} has active members; stop its consumers before you {change}"
            ),
        }),
        Err(e) => Err(e.into()),
    }
}

async fn describe_group(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    head: Head,
) -> ApiResult<Response> {
    caller.check(Operation::Describe, ResourceType::Group, &id)?;
    if let Some(answer) = state.at_coordinator(&id, head, Vec::new()).await? {
        return Ok(answer);
    }
    let node = state.node.clone();
    blocking(move || {
        known_group(&node, &id)?;
        let g = node.groups.describe(&id);
        let offsets: Vec<Value> = node
            .group_positions(&id)?
            .iter()
            .map(|p| {
                json!({
                    "topic": p.topic,
                    "partition": p.partition,
                    "committed": p.committed,
                    "end": p.end,
                    "lag": p.lag(),
                })
            })
            .collect();
        let members: Vec<Value> = g
            .members
            .iter()
            .map(|m| {
                let assignment = m.consumer_assignment().map(|topics| {
                    topics
                        .into_iter()
                        .map(
                            |(topic, partitions)| json!({"topic": topic, "partitions": partitions}),
                        )
                        .collect::<Vec<_>>()
                });
                json!({
                    "member_id": m.member_id,
                    "instance_id": m.instance_id,
                    "client_id": m.client_id,
                    "client_host": m.client_host,
                    "assignment": assignment,
                })
            })
            .collect();
        Ok(Json(json!({
            "group": g.group,
            "state": g.state.name(),
            "protocol": g.protocol,
            "members": members,
            "offsets": offsets,
        }))
        .into_response())
    })
    .await
}

/// Deletes a group without members and its committed offsets.
async fn delete_group(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    head: Head,
) -> ApiResult<Response> {
    caller.check(Operation::Delete, ResourceType::Group, &id)?;
    if let Some(answer) = state.at_coordinator(&id, head, Vec::new()).await? {
        return Ok(answer);
    }
    let node = state.node.clone();
    blocking(move || {
        known_group(&node, &id)?;
        idle_group(&node, &id, "delete it")?;
        node.groups.delete(&id)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

#[derive(Deserialize, Serialize)]
struct CommitBody {
    topic: String,
    partition: i32,
    offset: i64,
}

fn commit(node: &NodeContext, id: &str, topic: &str, partition: i32, offset: i64) -> ApiResult<()> {
    let committed = CommittedOffset {
        offset,
        leader_epoch: -1,
        metadata: None,
        commit_ms: weir_storage::now_ms(),
    };
    node.groups
        .commit(id, &[(topic.to_string(), partition, committed)])
        .map_err(|e| {
            let mut error = ApiError::from(e);
            error.message = format!("commit to group {id} failed: {}", error.message);
            error
        })
}

/// Commits an offset for a consumer outside any group protocol (as `weir consume --group`
/// does); refused while the group has members.
async fn commit_offset(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    head: Head,
    Json(body): Json<CommitBody>,
) -> ApiResult<Response> {
    caller.check(Operation::Read, ResourceType::Group, &id)?;
    caller.check(Operation::Read, ResourceType::Topic, &body.topic)?;
    if let Some(answer) = state.at_coordinator(&id, head, json_body(&body)?).await? {
        return Ok(answer);
    }
    let node = state.node.clone();
    blocking(move || {
        node.topics
            .partition(&body.topic, body.partition.max(0) as u32)?;
        idle_group(&node, &id, "commit outside the Kafka protocol")?;
        commit(&node, &id, &body.topic, body.partition, body.offset)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

/// `body` as the JSON another node reads again.
fn json_body(body: &impl Serialize) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(body).map_err(|e| ApiError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("writing the request again: {e}"),
    })
}

/// A `POST /v1/groups/{id}/reset-offsets` body: the flags of `weir groups reset-offsets`.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct ResetBody {
    topic: String,
    /// The partitions to move; every partition of the topic when empty.
    #[serde(default)]
    partitions: Vec<u32>,
    #[serde(default)]
    to_earliest: bool,
    #[serde(default)]
    to_latest: bool,
    /// Epoch milliseconds or RFC 3339: the first record at or after it.
    to_datetime: Option<String>,
    to_offset: Option<i64>,
    shift_by: Option<i64>,
    /// Answer what would change and change nothing.
    #[serde(default)]
    dry_run: bool,
}

/// Where a reset moves each partition's committed offset.
enum ResetTo {
    Earliest,
    Latest,
    Time(i64),
    Offset(i64),
    ShiftBy(i64),
}

impl ResetBody {
    fn target(&self) -> ApiResult<ResetTo> {
        let time = self
            .to_datetime
            .as_deref()
            .map(|text| time_param("to_datetime", text))
            .transpose()?;
        let targets: Vec<ResetTo> = [
            self.to_earliest.then_some(ResetTo::Earliest),
            self.to_latest.then_some(ResetTo::Latest),
            time.map(ResetTo::Time),
            self.to_offset.map(ResetTo::Offset),
            self.shift_by.map(ResetTo::ShiftBy),
        ]
        .into_iter()
        .flatten()
        .collect();
        let mut targets = targets.into_iter();
        match (targets.next(), targets.next()) {
            (Some(target), None) => Ok(target),
            _ => Err(ApiError::bad_request(
                "give exactly one of to_earliest, to_latest, to_datetime, to_offset, shift_by",
            )),
        }
    }
}

/// One partition's committed offset before and after a reset.
#[derive(Serialize)]
struct Moved {
    topic: String,
    partition: u32,
    before: Option<i64>,
    after: i64,
}

/// Moves the committed offsets of an idle group on one topic, always within each partition's
/// start and end; with `dry_run`, only answers where they would go.
async fn reset_offsets(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    head: Head,
    Json(body): Json<ResetBody>,
) -> ApiResult<Response> {
    caller.check(Operation::Read, ResourceType::Group, &id)?;
    caller.check(Operation::Describe, ResourceType::Topic, &body.topic)?;
    let target = body.target()?;
    if body.partitions.len() > RESET_PARTITIONS_MAX {
        return Err(ApiError::bad_request(format!(
            "{} partitions named; at most {RESET_PARTITIONS_MAX}",
            body.partitions.len()
        )));
    }
    if let Some(answer) = state.at_coordinator(&id, head, json_body(&body)?).await? {
        return Ok(answer);
    }
    let node = state.node.clone();
    blocking(move || {
        known_group(&node, &id)?;
        idle_group(&node, &id, "reset its offsets")?;
        let topic = &body.topic;
        let meta = node.topics.existing_topic(topic)?;
        let partitions = if body.partitions.is_empty() {
            (0..meta.partitions).collect()
        } else {
            body.partitions.clone()
        };
        let committed = node.groups.committed_all(&id)?;
        let mut moved = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let log = node.topics.partition(topic, partition)?;
            let (start, end) = log.offsets()?;
            let (start, end) = (start as i64, end as i64);
            let before = committed
                .iter()
                .find(|(t, p, _)| t == topic && *p == partition as i32)
                .map(|(_, _, c)| c.offset);
            let after = match target {
                ResetTo::Earliest => start,
                ResetTo::Latest => end,
                ResetTo::Time(t) => log
                    .offset_for_timestamp(t)?
                    .map_or(end, |(offset, _)| offset as i64),
                ResetTo::Offset(offset) => offset,
                ResetTo::ShiftBy(n) => before.unwrap_or(start).saturating_add(n),
            }
            .clamp(start, end);
            moved.push(Moved {
                topic: topic.clone(),
                partition,
                before,
                after,
            });
        }
        if !body.dry_run {
            // Checked again right before writing: a consumer may have joined meanwhile.
            idle_group(&node, &id, "reset its offsets")?;
            for m in &moved {
                commit(&node, &id, topic, m.partition as i32, m.after)?;
            }
        }
        Ok(Json(json!({
            "group": id,
            "dry_run": body.dry_run,
            "offsets": moved,
        }))
        .into_response())
    })
    .await
}
