//! The group coordinator's rules over the wire, as Kafka's are: which group states accept an
//! offset commit, and how fast a group recovers when its leader dies.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Node, eventually, kafka_call, started};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const GROUP: &str = "rules";
const REBALANCE_IN_PROGRESS: i16 = 27;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// One group member on its own connection.
struct Member {
    stream: TcpStream,
    id: String,
    generation: i32,
}

impl Member {
    fn connect(node: &Node) -> Member {
        Member {
            stream: TcpStream::connect(node.kafka).unwrap(),
            id: String::new(),
            generation: -1,
        }
    }

    /// JoinGroup v3 (no MEMBER_ID_REQUIRED round trip); blocks until the join phase ends.
    fn join(&mut self, session_ms: i32, rebalance_ms: i32) -> JoinGroupResponse {
        let mut protocol = JoinGroupRequestProtocol::default();
        protocol.name = s("range");
        protocol.metadata = Bytes::from_static(b"subscription");
        let mut request = JoinGroupRequest::default();
        request.group_id = GroupId(s(GROUP));
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

    /// SyncGroup v2; the leader hands every member an empty assignment.
    fn sync(&mut self, members: &[String]) -> i16 {
        let mut request = SyncGroupRequest::default();
        request.group_id = GroupId(s(GROUP));
        request.generation_id = self.generation;
        request.member_id = s(&self.id);
        for id in members {
            let mut a = SyncGroupRequestAssignment::default();
            a.member_id = s(id);
            request.assignments.push(a);
        }
        let response: SyncGroupResponse =
            kafka_call(&mut self.stream, ApiKey::SyncGroup, 2, &request);
        response.error_code
    }

    fn heartbeat(&mut self) -> i16 {
        let mut request = HeartbeatRequest::default();
        request.group_id = GroupId(s(GROUP));
        request.generation_id = self.generation;
        request.member_id = s(&self.id);
        let response: HeartbeatResponse =
            kafka_call(&mut self.stream, ApiKey::Heartbeat, 2, &request);
        response.error_code
    }

    /// OffsetCommit v6 of offset 1 on partition 0 of `t`, for the member's generation.
    fn commit(&mut self) -> i16 {
        let mut partition = OffsetCommitRequestPartition::default();
        partition.committed_offset = 1;
        let mut topic = OffsetCommitRequestTopic::default();
        topic.name = TopicName(s("t"));
        topic.partitions.push(partition);
        let mut request = OffsetCommitRequest::default();
        request.group_id = GroupId(s(GROUP));
        request.generation_id_or_member_epoch = self.generation;
        request.member_id = s(&self.id);
        request.topics.push(topic);
        let response: OffsetCommitResponse =
            kafka_call(&mut self.stream, ApiKey::OffsetCommit, 6, &request);
        response.topics[0].partitions[0].error_code
    }
}

/// Runs `f` on a thread: a join blocks until the rest of the group has joined too.
fn in_background<T: Send + 'static>(
    mut member: Member,
    f: impl FnOnce(&mut Member) -> T + Send + 'static,
) -> std::thread::JoinHandle<(Member, T)> {
    std::thread::spawn(move || {
        let out = f(&mut member);
        (member, out)
    })
}

/// Two members, stable at one generation, `a` the leader: `a` forms the group alone, then `b`
/// joins and `a` rejoins when its heartbeat says so, as a client does.
fn stable_pair(node: &Node, a_session_ms: i32) -> (Member, Member) {
    let mut a = Member::connect(node);
    a.join(a_session_ms, 60_000);
    let id = a.id.clone();
    assert_eq!(a.sync(&[id]), 0);
    let b = in_background(Member::connect(node), |m| m.join(30_000, 60_000));
    eventually(
        "the first member hears of the rebalance",
        Duration::from_secs(30),
        || a.heartbeat() == REBALANCE_IN_PROGRESS,
    );
    let joined = a.join(a_session_ms, 60_000);
    assert_eq!(joined.leader.to_string(), a.id);
    let (b, _) = b.join().unwrap();
    assert_eq!(a.generation, b.generation);
    let members = vec![a.id.clone(), b.id.clone()];
    let follower = in_background(b, |m| m.sync(&[]));
    assert_eq!(a.sync(&members), 0);
    let (b, code) = follower.join().unwrap();
    assert_eq!(code, 0);
    (a, b)
}

#[test]
fn commits_follow_kafkas_rule_in_every_group_state() {
    let (_dir, node, _) = started(&[]);
    common::create_topic(&weir_broker::cli::Client::new(&node.url(), None), "t", 1);
    let (mut a, b) = stable_pair(&node, 30_000);
    // Stable: accepted.
    assert_eq!(a.commit(), 0);
    // The other member leaves: PreparingRebalance. A member of the current generation may
    // still commit what it has processed (cooperative consumers do, before rejoining).
    let mut request = LeaveGroupRequest::default();
    request.group_id = GroupId(s(GROUP));
    request.member_id = s(&b.id);
    let mut b_stream = b.stream;
    let left: LeaveGroupResponse = kafka_call(&mut b_stream, ApiKey::LeaveGroup, 1, &request);
    assert_eq!(left.error_code, 0);
    assert_eq!(a.heartbeat(), REBALANCE_IN_PROGRESS);
    assert_eq!(
        a.commit(),
        0,
        "a commit while the group prepares a rebalance"
    );
    // Rejoined, not yet synced: CompletingRebalance refuses, as the member does not know its
    // new assignment.
    a.join(30_000, 60_000);
    assert_eq!(a.commit(), REBALANCE_IN_PROGRESS);
    let id = a.id.clone();
    assert_eq!(a.sync(&[id]), 0);
    assert_eq!(a.commit(), 0);
}

#[test]
fn when_the_leader_dies_the_survivor_leads_without_waiting_for_the_rebalance_timeout() {
    let (_dir, node, _) = started(&[]);
    // The leader's session is two seconds; the rebalance timeout sixty.
    let (leader, mut survivor) = stable_pair(&node, 2_000);
    drop(leader);
    let dead = Instant::now();
    while survivor.heartbeat() != REBALANCE_IN_PROGRESS {
        assert!(
            dead.elapsed() < Duration::from_secs(30),
            "the leader never expired"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let rejoined = Instant::now();
    let joined = survivor.join(30_000, 60_000);
    assert!(
        rejoined.elapsed() < Duration::from_secs(20),
        "the survivor waited {:?} for its join, as if the group were new",
        rejoined.elapsed()
    );
    assert_eq!(joined.leader.to_string(), survivor.id);
    assert_eq!(joined.members.len(), 1);
    let id = survivor.id.clone();
    assert_eq!(survivor.sync(&[id]), 0);
}
