//! The group coordinator's rules over the wire, as Kafka's are: which group states accept an
//! offset commit, and how fast a group recovers when its leader dies.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::{Duration, Instant};

use common::group_member::Member;
use common::{Node, eventually, kafka_call, started};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

const GROUP: &str = "rules";
const REBALANCE_IN_PROGRESS: i16 = 27;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
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
    let mut a = Member::connect(node, GROUP);
    a.join(a_session_ms, 60_000);
    let id = a.id.clone();
    assert_eq!(a.sync(&[id]), 0);
    let b = in_background(Member::connect(node, GROUP), |m| m.join(30_000, 60_000));
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
    assert_eq!(a.commit("t"), 0);
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
        a.commit("t"),
        0,
        "a commit while the group prepares a rebalance"
    );
    // Rejoined, not yet synced: CompletingRebalance refuses, as the member does not know its
    // new assignment.
    a.join(30_000, 60_000);
    assert_eq!(a.commit("t"), REBALANCE_IN_PROGRESS);
    let id = a.id.clone();
    assert_eq!(a.sync(&[id]), 0);
    assert_eq!(a.commit("t"), 0);
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
