//! Kafka group APIs: requests to the coordinator ([`super::groups`]) and back. Fields a
//! response version does not carry are left at their defaults.

use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::Shared;
use super::groups::{
    CommittedOffset, GroupError, JoinOutcome, JoinRequest, Listed, OFFSET_METADATA_BYTES_MAX,
    Reply, SyncOutcome,
};
use super::handlers::{denial, text};
use crate::acl::{Caller, Operation, ResourceType};

/// The Kafka error code for a coordinator's refusal.
pub(crate) fn group_error_code(e: GroupError) -> i16 {
    match e {
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::MemberIdRequired => ResponseError::MemberIdRequired,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::OffsetMetadataTooLarge => ResponseError::OffsetMetadataTooLarge,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
        GroupError::Storage => ResponseError::KafkaStorageError,
        GroupError::NotCoordinator => ResponseError::NotCoordinator,
        GroupError::CoordinatorNotAvailable => ResponseError::CoordinatorNotAvailable,
        GroupError::InvalidRequest => ResponseError::InvalidRequest,
    }
    .code()
}

/// 0, or the Kafka error code of the refusal.
fn code(outcome: Result<(), GroupError>) -> i16 {
    outcome.err().map_or(0, group_error_code)
}

/// Longest a JoinGroup or SyncGroup waits for the rest of the group.
const GROUP_WAIT_MAX: Duration = Duration::from_secs(300);
/// FindCoordinator key type of a consumer group.
const KEY_TYPE_GROUP: i8 = 0;

pub(crate) fn find_coordinator(
    shared: &Shared,
    request: FindCoordinatorRequest,
    version: i16,
    caller: &Caller,
) -> FindCoordinatorResponse {
    let mut response = FindCoordinatorResponse::default();
    let error = |key: &str| {
        if request.key_type != KEY_TYPE_GROUP {
            // Transaction coordinators come with transactions.
            return ResponseError::CoordinatorNotAvailable.code();
        }
        caller
            .check(Operation::Describe, ResourceType::Group, key)
            .map_or_else(|denied| denial(&denied).0, |()| 0)
    };
    if version >= 4 {
        for key in &request.coordinator_keys {
            let mut c = CoordinatorEntry::default();
            let coordinator = shared.logs.coordinator(key);
            c.key = key.clone();
            c.node_id = BrokerId(coordinator.id);
            c.host = text(coordinator.host);
            c.port = i32::from(coordinator.port);
            c.error_code = error(key);
            response.coordinators.push(c);
        }
    } else {
        let coordinator = shared.logs.coordinator(&request.key);
        response.error_code = error(&request.key);
        response.node_id = BrokerId(coordinator.id);
        response.host = text(coordinator.host);
        response.port = i32::from(coordinator.port);
    }
    response
}

/// Makes sure this node acts for `group` before a join or a sync, which are answered on the
/// reactor: taking a group the node does not hold yet waits for the cluster database, so it
/// runs on the blocking pool.
async fn claimed(shared: &Shared, group: &str) -> Result<(), GroupError> {
    if shared.groups.held(group) {
        return Ok(());
    }
    let (groups, group) = (shared.groups.clone(), group.to_string());
    tokio::task::spawn_blocking(move || groups.claim(&group))
        .await
        .unwrap_or(Err(GroupError::Storage))
}

pub(crate) async fn join_group(
    shared: &Shared,
    request: JoinGroupRequest,
    client: (String, String),
    version: i16,
) -> JoinGroupResponse {
    let (client_id, client_host) = client;
    let join = JoinRequest {
        group: request.group_id.0.to_string(),
        member_id: request.member_id.to_string(),
        instance_id: request.group_instance_id.map(|s| s.to_string()),
        client_id,
        client_host,
        session_timeout_ms: request.session_timeout_ms,
        rebalance_timeout_ms: request.rebalance_timeout_ms,
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let member_id = join.member_id.clone();
    if let Err(e) = claimed(shared, &join.group).await {
        return join_response(JoinOutcome::error(e, &member_id), version);
    }
    let outcome = match shared.groups.join(join) {
        Reply::Now(now) => now,
        Reply::Later(waiter) => match tokio::time::timeout(GROUP_WAIT_MAX, waiter).await {
            Ok(Ok(outcome)) => outcome,
            _ => JoinOutcome {
                error: Some(GroupError::RebalanceInProgress),
                generation: -1,
                protocol_type: None,
                protocol: None,
                leader: String::new(),
                member_id,
                members: Vec::new(),
            },
        },
    };
    join_response(outcome, version)
}

fn join_response(outcome: JoinOutcome, version: i16) -> JoinGroupResponse {
    let mut response = JoinGroupResponse::default();
    response.error_code = outcome.error.map_or(0, group_error_code);
    response.generation_id = outcome.generation;
    if version >= 7 {
        response.protocol_type = outcome.protocol_type.map(text);
    }
    response.protocol_name = Some(text(outcome.protocol.unwrap_or_default()));
    response.leader = text(outcome.leader);
    response.member_id = text(outcome.member_id);
    for (id, instance, metadata) in outcome.members {
        let mut m = JoinGroupResponseMember::default();
        m.member_id = text(id);
        if version >= 5 {
            m.group_instance_id = instance.map(text);
        }
        m.metadata = metadata;
        response.members.push(m);
    }
    response
}

pub(crate) async fn sync_group(
    shared: &Shared,
    request: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let assignments = request
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    // Taking the group and leaving the generation the leader's assignments make stable may
    // wait for the cluster database: on the blocking pool.
    let groups = shared.groups.clone();
    let synced = tokio::task::spawn_blocking(move || {
        let (group, member) = (&request.group_id.0, &request.member_id);
        groups.claim(group)?;
        Ok(groups.sync(group, member, request.generation_id, assignments))
    })
    .await
    .unwrap_or(Err(GroupError::Storage));
    let outcome = match synced {
        Err(e) => SyncOutcome::error(e),
        Ok(Reply::Now(now)) => now,
        Ok(Reply::Later(waiter)) => match tokio::time::timeout(GROUP_WAIT_MAX, waiter).await {
            Ok(Ok(outcome)) => outcome,
            _ => SyncOutcome::error(GroupError::RebalanceInProgress),
        },
    };
    let mut response = SyncGroupResponse::default();
    response.error_code = outcome.error.map_or(0, group_error_code);
    if version >= 5 {
        response.protocol_type = outcome.protocol_type.map(text);
        response.protocol_name = outcome.protocol.map(text);
    }
    response.assignment = outcome.assignment;
    response
}

pub(crate) fn heartbeat(
    shared: &Shared,
    request: HeartbeatRequest,
    caller: &Caller,
) -> HeartbeatResponse {
    let mut response = HeartbeatResponse::default();
    if let Err(denied) = caller.check(Operation::Read, ResourceType::Group, &request.group_id) {
        response.error_code = denial(&denied).0;
        return response;
    }
    response.error_code = code(shared.groups.heartbeat(
        &request.group_id.0,
        &request.member_id,
        request.generation_id,
    ));
    response
}

pub(crate) fn leave_group(
    shared: &Shared,
    request: LeaveGroupRequest,
    version: i16,
    caller: &Caller,
) -> LeaveGroupResponse {
    if let Err(denied) = caller.check(Operation::Read, ResourceType::Group, &request.group_id) {
        let mut response = LeaveGroupResponse::default();
        response.error_code = denial(&denied).0;
        return response;
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        request
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.to_string(),
                    m.group_instance_id.as_ref().map(|s| s.to_string()),
                )
            })
            .collect()
    } else {
        vec![(request.member_id.to_string(), None)]
    };
    let outcomes = shared.groups.leave(&request.group_id.0, &members);
    let mut response = LeaveGroupResponse::default();
    if version >= 3 {
        for ((id, instance), outcome) in members.into_iter().zip(&outcomes) {
            let mut m = MemberResponse::default();
            m.member_id = text(id);
            m.group_instance_id = instance.map(text);
            m.error_code = code(*outcome);
            response.members.push(m);
        }
    } else {
        response.error_code = outcomes.first().map_or(0, |o| code(*o));
    }
    response
}

/// A partition of an OffsetCommit and its own error code, if it was refused before the commit.
type PartitionRefusal = (i32, Option<i16>);

pub(crate) fn offset_commit(
    shared: &Shared,
    request: OffsetCommitRequest,
    caller: &Caller,
) -> OffsetCommitResponse {
    let group = request.group_id.0.to_string();
    let check = match caller.check(Operation::Read, ResourceType::Group, &group) {
        Err(denied) => Err(denial(&denied).0),
        Ok(()) => shared
            .groups
            .commit_check(
                &group,
                &request.member_id,
                request.generation_id_or_member_epoch,
            )
            .map_err(group_error_code),
    };
    let now = weir_storage::now_ms();
    // Each partition's own refusal, or `None` while it joins the group's one commit.
    let mut answers: Vec<(TopicName, Vec<PartitionRefusal>)> = Vec::new();
    let mut offsets = Vec::new();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let allowed = caller.check(Operation::Read, ResourceType::Topic, &name);
        let mut partitions = Vec::with_capacity(topic.partitions.len());
        for p in topic.partitions {
            let refused = if let Err(code) = check {
                Some(code)
            } else if let Err(denied) = &allowed {
                Some(denial(denied).0)
            } else if p.partition_index < 0
                || !shared.logs.readable(&name, p.partition_index as u32)
            {
                Some(ResponseError::UnknownTopicOrPartition.code())
            } else if p
                .committed_metadata
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
            {
                Some(group_error_code(GroupError::OffsetMetadataTooLarge))
            } else {
                offsets.push((
                    name.clone(),
                    p.partition_index,
                    CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.map(|m| m.to_string()),
                        commit_ms: now,
                    },
                ));
                None
            };
            partitions.push((p.partition_index, refused));
        }
        answers.push((topic.name, partitions));
    }
    let committed = if offsets.is_empty() {
        0
    } else {
        code(shared.groups.commit(&group, &offsets))
    };
    let mut response = OffsetCommitResponse::default();
    for (name, partitions) in answers {
        let mut t = OffsetCommitResponseTopic::default();
        t.name = name;
        for (index, refused) in partitions {
            let mut r = OffsetCommitResponsePartition::default();
            r.partition_index = index;
            r.error_code = refused.unwrap_or(committed);
            t.partitions.push(r);
        }
        response.topics.push(t);
    }
    response
}

/// Committed offsets of one group for the requested partitions (all when `None`), as
/// (topic, [(partition, offset or None, error)]).
type FetchedTopic = (String, Vec<FetchedPartition>);
type FetchedPartition = (i32, Option<CommittedOffset>, i16);

fn fetch_group_offsets(
    shared: &Shared,
    group: &str,
    topics: Option<Vec<(String, Vec<i32>)>>,
    caller: &Caller,
) -> Result<Vec<FetchedTopic>, i16> {
    if let Err(denied) = caller.check(Operation::Describe, ResourceType::Group, group) {
        return Err(denial(&denied).0);
    }
    // One read of the group's offsets, whatever the number of partitions asked about.
    let committed: std::collections::BTreeMap<(String, i32), CommittedOffset> = shared
        .groups
        .committed_all(group)
        .map_err(|e| {
            tracing::error!(group, error = %e, "reading committed offsets failed");
            ResponseError::KafkaStorageError.code()
        })?
        .into_iter()
        .map(|(topic, partition, offset)| ((topic, partition), offset))
        .collect();
    let Some(topics) = topics else {
        // All topics: those the caller may not describe are left out.
        let mut by_topic: std::collections::BTreeMap<String, Vec<FetchedPartition>> =
            std::collections::BTreeMap::new();
        for ((topic, partition), offset) in committed {
            if caller.may(Operation::Describe, ResourceType::Topic, &topic) {
                by_topic
                    .entry(topic)
                    .or_default()
                    .push((partition, Some(offset), 0));
            }
        }
        return Ok(by_topic.into_iter().collect());
    };
    Ok(topics
        .into_iter()
        .map(|(topic, partitions)| {
            let allowed = caller.check(Operation::Describe, ResourceType::Topic, &topic);
            let entries = partitions
                .into_iter()
                .map(|p| match &allowed {
                    Err(denied) => (p, None, denial(denied).0),
                    Ok(()) => (p, committed.get(&(topic.clone(), p)).cloned(), 0),
                })
                .collect();
            (topic, entries)
        })
        .collect())
}

/// Offset, leader epoch and metadata as OffsetFetch reports them; -1 where nothing is committed.
fn committed_fields(committed: Option<CommittedOffset>) -> (i64, i32, Option<StrBytes>) {
    match committed {
        Some(c) => (
            c.offset,
            c.leader_epoch,
            Some(text(c.metadata.unwrap_or_default())),
        ),
        None => (-1, -1, Some(text(""))),
    }
}

pub(crate) fn offset_fetch(
    shared: &Shared,
    request: OffsetFetchRequest,
    version: i16,
    caller: &Caller,
) -> OffsetFetchResponse {
    let mut response = OffsetFetchResponse::default();
    if version >= 8 {
        for g in request.groups {
            let mut group = OffsetFetchResponseGroup::default();
            group.group_id = g.group_id.clone();
            let topics = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes))
                    .collect()
            });
            match fetch_group_offsets(shared, &g.group_id.0, topics, caller) {
                Ok(topics) => {
                    for (name, partitions) in topics {
                        let mut t = OffsetFetchResponseTopics::default();
                        t.name = TopicName(text(name));
                        for (index, committed, error) in partitions {
                            let mut p = OffsetFetchResponsePartitions::default();
                            (p.committed_offset, p.committed_leader_epoch, p.metadata) =
                                committed_fields(committed);
                            (p.partition_index, p.error_code) = (index, error);
                            t.partitions.push(p);
                        }
                        group.topics.push(t);
                    }
                }
                Err(code) => group.error_code = code,
            }
            response.groups.push(group);
        }
        return response;
    }
    let topics = request.topics.map(|ts| {
        ts.into_iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes))
            .collect()
    });
    match fetch_group_offsets(shared, &request.group_id.0, topics, caller) {
        Ok(topics) => {
            for (name, partitions) in topics {
                let mut t = OffsetFetchResponseTopic::default();
                t.name = TopicName(text(name));
                for (index, committed, error) in partitions {
                    let mut p = OffsetFetchResponsePartition::default();
                    let (offset, epoch, metadata) = committed_fields(committed);
                    (p.committed_offset, p.metadata) = (offset, metadata);
                    if version >= 5 {
                        p.committed_leader_epoch = epoch;
                    }
                    (p.partition_index, p.error_code) = (index, error);
                    t.partitions.push(p);
                }
                response.topics.push(t);
            }
        }
        Err(code) if version >= 2 => response.error_code = code,
        Err(_) => {}
    }
    response
}

pub(crate) fn list_groups(
    shared: &Shared,
    request: ListGroupsRequest,
    version: i16,
    caller: &Caller,
) -> ListGroupsResponse {
    let mut response = ListGroupsResponse::default();
    let Listed { groups, holders } = match shared.groups.list() {
        Ok(listed) => listed,
        Err(e) => {
            tracing::error!(error = %e, "listing groups failed");
            response.error_code = ResponseError::KafkaStorageError.code();
            return response;
        }
    };
    // As a Kafka broker does, each node lists the groups it coordinates; clients ask every
    // node and merge.
    let names: Vec<String> = groups.iter().map(|g| g.group.clone()).collect();
    let here = shared.logs.coordinates(&names, &holders);
    for (g, _) in groups.into_iter().zip(here).filter(|(_, here)| *here) {
        if !caller.may(Operation::Describe, ResourceType::Group, &g.group) {
            continue;
        }
        let state = g.state.name();
        if !request.states_filter.is_empty()
            && !request
                .states_filter
                .iter()
                .any(|s| s.eq_ignore_ascii_case(state))
        {
            continue;
        }
        let mut listed = ListedGroup::default();
        listed.group_id = GroupId(text(g.group));
        listed.protocol_type = text(g.protocol_type);
        if version >= 4 {
            listed.group_state = text(state);
        }
        if version >= 5 {
            listed.group_type = text("classic");
        }
        response.groups.push(listed);
    }
    response
}

pub(crate) fn describe_groups(
    shared: &Shared,
    request: DescribeGroupsRequest,
    version: i16,
    caller: &Caller,
) -> DescribeGroupsResponse {
    let mut response = DescribeGroupsResponse::default();
    for id in request.groups {
        if let Err(denied) = caller.check(Operation::Describe, ResourceType::Group, &id) {
            let mut d = DescribedGroup::default();
            d.group_id = id.clone();
            d.error_code = denial(&denied).0;
            response.groups.push(d);
            continue;
        }
        let g = shared.groups.describe(&id.0);
        let mut d = DescribedGroup::default();
        d.group_id = id.clone();
        d.group_state = text(g.state.name());
        d.protocol_type = text(g.protocol_type);
        d.protocol_data = text(g.protocol);
        for m in g.members {
            let mut member = DescribedGroupMember::default();
            member.member_id = text(m.member_id);
            if version >= 4 {
                member.group_instance_id = m.instance_id.map(text);
            }
            member.client_id = text(m.client_id);
            member.client_host = text(m.client_host);
            member.member_metadata = m.metadata;
            member.member_assignment = m.assignment;
            d.members.push(member);
        }
        response.groups.push(d);
    }
    response
}

pub(crate) fn delete_groups(
    shared: &Shared,
    request: DeleteGroupsRequest,
    caller: &Caller,
) -> DeleteGroupsResponse {
    let mut response = DeleteGroupsResponse::default();
    for id in request.groups_names {
        let mut r = DeletableGroupResult::default();
        r.error_code = match caller.check(Operation::Delete, ResourceType::Group, &id) {
            Err(denied) => denial(&denied).0,
            Ok(()) => code(shared.groups.delete(&id.0)),
        };
        r.group_id = id;
        response.results.push(r);
    }
    response
}

pub(crate) fn offset_delete(
    shared: &Shared,
    request: OffsetDeleteRequest,
    caller: &Caller,
) -> OffsetDeleteResponse {
    let mut response = OffsetDeleteResponse::default();
    if let Err(denied) = caller.check(Operation::Delete, ResourceType::Group, &request.group_id) {
        response.error_code = denial(&denied).0;
        return response;
    }
    for topic in request.topics {
        let mut t = OffsetDeleteResponseTopic::default();
        t.name = topic.name.clone();
        let allowed = caller.check(Operation::Read, ResourceType::Topic, &topic.name);
        for p in topic.partitions {
            let mut r = OffsetDeleteResponsePartition::default();
            r.partition_index = p.partition_index;
            r.error_code = match &allowed {
                Err(denied) => denial(denied).0,
                Ok(()) => code(shared.groups.delete_offset(
                    &request.group_id.0,
                    &topic.name.0,
                    p.partition_index,
                )),
            };
            t.partitions.push(r);
        }
        response.topics.push(t);
    }
    response
}
