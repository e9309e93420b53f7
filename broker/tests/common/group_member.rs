//! One consumer group member that speaks the classic group protocol itself, on its own
//! connection, so a test sees every error code a client would act on.

use std::net::TcpStream;

use bytes::Bytes;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{Node, kafka_call};

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// A member of `group`, talking to one node.
pub struct Member {
    pub stream: TcpStream,
    pub group: String,
    pub id: String,
    pub generation: i32,
}

impl Member {
    pub fn connect(node: &Node, group: &str) -> Member {
        Member {
            stream: TcpStream::connect(node.kafka).expect("connecting to the node"),
            group: group.to_string(),
            id: String::new(),
            generation: -1,
        }
    }

    /// JoinGroup v3 (no MEMBER_ID_REQUIRED round trip); blocks until the join phase ends.
    pub fn join(&mut self, session_ms: i32, rebalance_ms: i32) -> JoinGroupResponse {
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = s("range");
        protocol.metadata = Bytes::from_static(b"subscription");
        let mut request = JoinGroupRequest::default();
        request.group_id = GroupId(s(&self.group));
        request.session_timeout_ms = session_ms;
        request.rebalance_timeout_ms = rebalance_ms;
        request.member_id = s(&self.id);
        request.protocol_type = s("consumer");
        request.protocols.push(protocol);
        let response: JoinGroupResponse =
            kafka_call(&mut self.stream, ApiKey::JoinGroup, 3, &request);
        assert_eq!(response.error_code, 0, "join");
        self.id = response.member_id.to_string();
        self.generation = response.generation_id;
        response
    }

    /// SyncGroup v2; a leader hands each member of `assignments` its assignment.
    pub fn sync_with(&mut self, assignments: &[(String, Bytes)]) -> SyncGroupResponse {
        let mut request = SyncGroupRequest::default();
        request.group_id = GroupId(s(&self.group));
        request.generation_id = self.generation;
        request.member_id = s(&self.id);
        for (id, assignment) in assignments {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = s(id);
            a.assignment = assignment.clone();
            request.assignments.push(a);
        }
        kafka_call(&mut self.stream, ApiKey::SyncGroup, 2, &request)
    }

    /// SyncGroup v2; a leader hands every member an empty assignment.
    pub fn sync(&mut self, members: &[String]) -> i16 {
        let empty: Vec<(String, Bytes)> =
            members.iter().map(|m| (m.clone(), Bytes::new())).collect();
        self.sync_with(&empty).error_code
    }

    pub fn heartbeat(&mut self) -> i16 {
        let mut request = HeartbeatRequest::default();
        request.group_id = GroupId(s(&self.group));
        request.generation_id = self.generation;
        request.member_id = s(&self.id);
        let response: HeartbeatResponse =
            kafka_call(&mut self.stream, ApiKey::Heartbeat, 2, &request);
        response.error_code
    }

    /// OffsetCommit v6 of offset 1 on partition 0 of `topic`, for the member's generation.
    pub fn commit(&mut self, topic: &str) -> i16 {
        let mut partition = OffsetCommitRequestPartition::default();
        partition.committed_offset = 1;
        let mut t = OffsetCommitRequestTopic::default();
        t.name = TopicName(s(topic));
        t.partitions.push(partition);
        let mut request = OffsetCommitRequest::default();
        request.group_id = GroupId(s(&self.group));
        request.generation_id_or_member_epoch = self.generation;
        request.member_id = s(&self.id);
        request.topics.push(t);
        let response: OffsetCommitResponse =
            kafka_call(&mut self.stream, ApiKey::OffsetCommit, 6, &request);
        response.topics[0].partitions[0].error_code
    }
}
