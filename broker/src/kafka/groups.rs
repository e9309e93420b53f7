//! The consumer group coordinator (Kafka's classic group protocol).
//!
//! Membership lives in memory; committed offsets live in a [`GroupStore`] (the metadata
//! store's tree `group-offsets` on a lone node, the cluster database in a cluster), so they
//! survive restarts while members simply rejoin. In a cluster a node acts for a group only
//! while it holds the group's lease; the state it built under an earlier hold is dropped, and
//! requests it may not act on are answered NOT_COORDINATOR. The coordinator leaves each stable
//! generation (its members and their assignments) on the group's lease, so a node taking the
//! group over goes on with that generation: its members' heartbeats and commits are accepted
//! without a rebalance. Assignment is done
//! by the group leader on the client side: the coordinator passes the chosen protocol's
//! metadata to the leader and its assignments back to every member, so range, round-robin and
//! cooperative-sticky assignors all work.
//!
//! A rebalance starts when a member joins, leaves or misses its session timeout. Members learn
//! of it from their next heartbeat (REBALANCE_IN_PROGRESS) and rejoin; the join completes when
//! every member has rejoined or the rebalance timeout passes, dropping those that did not.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use weir_storage::locks;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use weir_storage::{StorageError, Tree};

/// Bounds on a member's session timeout, as Kafka's `group.min/max.session.timeout.ms`.
pub const SESSION_TIMEOUT_MS_MIN: i32 = 1_000;
pub const SESSION_TIMEOUT_MS_MAX: i32 = 1_800_000;
/// How long a new group waits for more members before its first assignment
/// (`group.initial.rebalance.delay.ms`).
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_millis(300);
/// Largest metadata string stored with a committed offset (`offset.metadata.max.bytes`).
pub const OFFSET_METADATA_BYTES_MAX: usize = weir_cluster::OFFSET_METADATA_BYTES_MAX;
/// Most members one group may have.
pub const GROUP_MEMBERS_MAX: usize = 1000;
/// Most groups with members (or members being admitted) the coordinator holds at once.
pub const GROUPS_MAX: usize = 10_000;
/// Most bytes of protocol metadata one member may join with (all its protocols together); a
/// cooperative-sticky subscription listing 100 000 owned partitions takes about 1 MiB.
pub const MEMBER_METADATA_BYTES_MAX: usize = 1 << 20;
/// Most bytes of member metadata and assignments all groups together may hold.
pub const GROUPS_METADATA_BYTES_MAX: u64 = 256 << 20;
/// Most bytes of assignment a leader may hand one member: a cooperative-sticky assignment of
/// 100 000 partitions takes about 1 MiB, as its subscription does.
pub const MEMBER_ASSIGNMENT_BYTES_MAX: usize = MEMBER_METADATA_BYTES_MAX;

pub const OFFSETS_TREE: &str = "group-offsets";

pub use crate::metrics::GroupLag;

/// A committed offset as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl State {
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
        }
    }
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    assignment: Bytes,
    last_seen: Instant,
    /// Rejoined during the current rebalance.
    joined: bool,
    join_waiter: Option<oneshot::Sender<JoinOutcome>>,
    sync_waiter: Option<oneshot::Sender<SyncOutcome>>,
}

struct Group {
    state: State,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet, each until its deadline
    /// (the session timeout it asked for).
    pending: HashMap<String, Instant>,
    rebalance_deadline: Option<Instant>,
    /// The rebalance started from an empty group: it waits for the initial delay rather than
    /// completing as soon as the members it knows have joined.
    initial: bool,
    /// The epoch of the hold on the group under which this state was built.
    epoch: i64,
    /// State, generation and members count as last reported to the store.
    reported: Option<(State, i32, usize)>,
    /// Bytes of metadata and assignments its members held when last counted, part of `held`.
    bytes: u64,
    /// What all the coordinator's groups hold together.
    held: HeldBytes,
}

/// Bytes of member metadata and assignments all of a coordinator's groups hold, kept as a
/// running total so that admitting a join does not walk every group. Each group adds what it
/// holds when it counts its members again, and takes it away when it is dropped.
#[derive(Clone, Default)]
struct HeldBytes(Arc<AtomicU64>);

impl HeldBytes {
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.held.0.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Group {
    fn new(epoch: i64, held: HeldBytes) -> Self {
        Group {
            epoch,
            bytes: 0,
            held,
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            initial: false,
            reported: None,
        }
    }

    /// Counts the bytes its members hold again, after members came, went or changed their
    /// metadata or assignments, and moves the coordinator's total by the difference.
    fn recount(&mut self) {
        let bytes = self.metadata_bytes();
        self.held.0.fetch_add(bytes, Ordering::Relaxed);
        self.held.0.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = bytes;
    }

    /// The group `name` as it is left for other nodes, if it changed since it was last.
    fn changed(&mut self, name: &str) -> Option<GroupNote> {
        let seen = (self.state, self.generation, self.members.len());
        if self.reported == Some(seen) {
            return None;
        }
        self.reported = Some(seen);
        Some(GroupNote {
            listing: listing(name, Some(self)),
            stable: StableGroup::of(self),
        })
    }

    /// Bytes of metadata and assignments its members hold.
    fn metadata_bytes(&self) -> u64 {
        self.members
            .values()
            .map(|m| (m.metadata_bytes() + m.assignment.len()) as u64)
            .sum()
    }
}

impl Member {
    fn metadata_bytes(&self) -> usize {
        self.protocols.iter().map(|(n, m)| n.len() + m.len()).sum()
    }
}

/// What a JoinGroup must carry, whatever the group.
fn check_join(r: &JoinRequest) -> Result<(), GroupError> {
    if r.group.is_empty() {
        return Err(GroupError::InvalidGroupId);
    }
    if !(SESSION_TIMEOUT_MS_MIN..=SESSION_TIMEOUT_MS_MAX).contains(&r.session_timeout_ms) {
        return Err(GroupError::InvalidSessionTimeout);
    }
    if r.protocols.is_empty() || r.protocol_type.is_empty() {
        return Err(GroupError::InconsistentGroupProtocol);
    }
    Ok(())
}

/// Whether the coordinator has room for the join: its metadata within the member's bound and
/// what all groups `held`, a new group within the number of groups.
fn admit(groups: &HashMap<String, Group>, held: u64, r: &JoinRequest) -> Result<(), GroupError> {
    let metadata_bytes: usize = r.protocols.iter().map(|(n, m)| n.len() + m.len()).sum();
    if metadata_bytes > MEMBER_METADATA_BYTES_MAX
        || held + metadata_bytes as u64 > GROUPS_METADATA_BYTES_MAX
    {
        tracing::warn!(
            group = r.group,
            metadata_bytes,
            member_metadata_bytes_max = MEMBER_METADATA_BYTES_MAX,
            groups_metadata_bytes = held,
            groups_metadata_bytes_max = GROUPS_METADATA_BYTES_MAX,
            "join refused: member metadata past its bound"
        );
        return Err(GroupError::GroupMaxSizeReached);
    }
    if !groups.contains_key(&r.group) && groups.len() >= GROUPS_MAX {
        tracing::warn!(
            group = r.group,
            groups_max = GROUPS_MAX,
            "join refused: the coordinator holds its limit of groups"
        );
        return Err(GroupError::GroupMaxSizeReached);
    }
    Ok(())
}

/// Whether the leader's `assignments` fit the bounds: each within the member's, and all groups
/// together, with these in place of the group's current ones, within what all may hold.
fn assignments_fit(
    group: &Group,
    assignments: &[(String, Bytes)],
    held: u64,
) -> Result<(), GroupError> {
    let largest = assignments.iter().map(|(_, a)| a.len()).max().unwrap_or(0);
    let current: u64 = group
        .members
        .values()
        .map(|m| m.assignment.len() as u64)
        .sum();
    let incoming: u64 = assignments
        .iter()
        .filter(|(id, _)| group.members.contains_key(id))
        .map(|(_, a)| a.len() as u64)
        .sum();
    let after = held.saturating_sub(current) + incoming;
    if largest > MEMBER_ASSIGNMENT_BYTES_MAX || after > GROUPS_METADATA_BYTES_MAX {
        tracing::warn!(
            assignment_bytes = largest,
            member_assignment_bytes_max = MEMBER_ASSIGNMENT_BYTES_MAX,
            groups_metadata_bytes = after,
            groups_metadata_bytes_max = GROUPS_METADATA_BYTES_MAX,
            "sync refused: the leader's assignments pass their bound"
        );
        return Err(GroupError::GroupMaxSizeReached);
    }
    Ok(())
}

impl Group {
    /// A member joins with the group's protocol type and at least one protocol the current
    /// members speak (a lone member rejoining may change them).
    fn check_protocols(&self, r: &JoinRequest) -> Result<(), GroupError> {
        if self
            .protocol_type
            .as_deref()
            .is_some_and(|t| t != r.protocol_type)
            && !self.members.is_empty()
        {
            return Err(GroupError::InconsistentGroupProtocol);
        }
        if let Some(first) = self.members.values().next() {
            let shared = r
                .protocols
                .iter()
                .any(|(name, _)| first.protocols.iter().any(|(n, _)| n == name));
            let rejoining_alone =
                self.members.len() == 1 && self.members.contains_key(&r.member_id);
            if !shared && !rejoining_alone {
                return Err(GroupError::InconsistentGroupProtocol);
            }
        }
        Ok(())
    }

    /// The member id of the static member with the request's `group.instance.id`, if any.
    fn static_member(&self, r: &JoinRequest) -> Option<String> {
        let instance = r.instance_id.as_ref()?;
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
            .map(|(id, _)| id.clone())
    }

    /// A static member coming back (a restart with the same `group.instance.id`) keeps its
    /// member id and, while the group is stable and it is not the leader, its assignment: no
    /// rebalance, as KIP-345 intends. The answer, when that is the case.
    fn rejoin_in_place(&mut self, id: &str, r: &JoinRequest, now: Instant) -> Option<JoinOutcome> {
        let unchanged = self
            .members
            .get(id)
            .is_some_and(|m| m.protocols == r.protocols);
        if self.state != State::Stable || !unchanged || self.leader.as_deref() == Some(id) {
            return None;
        }
        if let Some(m) = self.members.get_mut(id) {
            m.last_seen = now;
            m.session_timeout = Duration::from_millis(r.session_timeout_ms as u64);
        }
        Some(JoinOutcome {
            error: None,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: id.to_string(),
            members: Vec::new(),
        })
    }

    /// Makes `member_id` a joined member with the request's settings and protocols, starts or
    /// joins a rebalance, and returns where its answer will come.
    fn enter(
        &mut self,
        member_id: String,
        r: JoinRequest,
        now: Instant,
    ) -> oneshot::Receiver<JoinOutcome> {
        let (tx, rx) = oneshot::channel();
        let member = self
            .members
            .entry(member_id.clone())
            .or_insert_with(|| Member {
                instance_id: r.instance_id.clone(),
                client_id: r.client_id.clone(),
                client_host: r.client_host.clone(),
                session_timeout: Duration::ZERO,
                rebalance_timeout: Duration::ZERO,
                protocols: Vec::new(),
                assignment: Bytes::new(),
                last_seen: now,
                joined: false,
                join_waiter: None,
                sync_waiter: None,
            });
        member.session_timeout = Duration::from_millis(r.session_timeout_ms as u64);
        member.rebalance_timeout =
            Duration::from_millis(r.rebalance_timeout_ms.max(r.session_timeout_ms) as u64);
        member.protocols = r.protocols;
        member.last_seen = now;
        member.joined = true;
        member.join_waiter = Some(tx);
        self.protocol_type = Some(r.protocol_type);
        match self.state {
            State::PreparingRebalance => {}
            State::Empty => {
                self.state = State::PreparingRebalance;
                self.rebalance_deadline = Some(now + INITIAL_REBALANCE_DELAY);
                self.initial = true;
            }
            State::CompletingRebalance | State::Stable => {
                start_rebalance(self, now);
                if let Some(m) = self.members.get_mut(&member_id) {
                    m.joined = true;
                }
            }
        }
        try_complete_join(self, now);
        rx
    }
}

/// An answer now, or one that arrives when the rest of the group has caught up.
pub enum Reply<T> {
    Now(T),
    Later(oneshot::Receiver<T>),
}

/// What a JoinGroup gets back.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub error: Option<GroupError>,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// For the leader: every member with its metadata for the chosen protocol.
    pub members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinOutcome {
    pub(crate) fn error(error: GroupError, member_id: &str) -> Self {
        JoinOutcome {
            error: Some(error),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
        }
    }
}

/// What a SyncGroup gets back.
#[derive(Debug, Clone)]
pub struct SyncOutcome {
    pub error: Option<GroupError>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Bytes,
}

impl SyncOutcome {
    pub(crate) fn error(error: GroupError) -> Self {
        SyncOutcome {
            error: Some(error),
            protocol_type: None,
            protocol: None,
            assignment: Bytes::new(),
        }
    }
}

/// A JoinGroup request, reduced to what the coordinator needs.
pub struct JoinRequest {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a new member first gets its id with MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// What the coordinator holds, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupsUsage {
    pub groups: usize,
    /// Groups this node holds the lease of, in a cluster.
    pub leases: usize,
    pub largest_members: usize,
    pub metadata_bytes: u64,
}

/// A member as DescribeGroups shows it.
pub struct MemberView {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Bytes,
    pub assignment: Bytes,
}

impl MemberView {
    /// The partitions the leader assigned this member, per topic, read from the assignment
    /// in Kafka's consumer protocol (versions 0 to 3). `None` when the group speaks another
    /// protocol or the bytes are not a consumer assignment; an empty list before the first
    /// assignment. The bytes come from a client: every count is checked against the bytes
    /// left before anything is kept.
    pub fn consumer_assignment(&self) -> Option<Vec<(String, Vec<i32>)>> {
        let mut rest: &[u8] = &self.assignment;
        if rest.is_empty() {
            return Some(Vec::new());
        }
        let mut take = |n: usize| -> Option<&[u8]> {
            let (taken, left) = rest.split_at_checked(n)?;
            rest = left;
            Some(taken)
        };
        let version = i16::from_be_bytes(take(2)?.try_into().ok()?);
        if !(0..=3).contains(&version) {
            return None;
        }
        let topics = i32::from_be_bytes(take(4)?.try_into().ok()?);
        let mut assigned = Vec::new();
        // A topic is at least a 2-byte name length and a 4-byte partition count.
        for _ in 0..usize::try_from(topics).unwrap_or(0) {
            let name_len = i16::from_be_bytes(take(2)?.try_into().ok()?);
            let name = std::str::from_utf8(take(usize::try_from(name_len).ok()?)?).ok()?;
            let count = i32::from_be_bytes(take(4)?.try_into().ok()?);
            let count = usize::try_from(count).unwrap_or(0);
            // Four bytes a partition: a count past the bytes left is refused before it sizes
            // anything.
            let partitions = take(count.checked_mul(4)?)?;
            let partitions = partitions
                .chunks_exact(4)
                .map(|p| i32::from_be_bytes([p[0], p[1], p[2], p[3]]))
                .collect();
            assigned.push((name.to_owned(), partitions));
        }
        Some(assigned)
    }
}

/// A group as the lists show it (ListGroups, `GET /v1/groups`, `weir.groups`, `/metrics`):
/// on a cluster, as the node coordinating it last reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupListing {
    pub group: String,
    pub state: State,
    pub protocol_type: String,
    pub members: usize,
}

/// What a node reads of the groups other nodes act for (see [`GroupStore::listed_elsewhere`]).
#[derive(Debug, Default)]
pub struct Elsewhere {
    /// The groups other nodes act for, as they last reported them.
    pub listings: Vec<GroupListing>,
    /// The node holding each group's live lease, this one included, by group.
    pub holders: HashMap<String, String>,
}

/// Every group, as [`Coordinator::list`] finds them.
#[derive(Debug, Default)]
pub struct Listed {
    pub groups: Vec<GroupListing>,
    /// The node holding each group's live lease, by group: read with the listing, so a caller
    /// working out which groups this node coordinates asks the cluster database no more.
    pub holders: HashMap<String, String>,
}

/// What the coordinator leaves on a group's lease for the other nodes: the group as the lists
/// show it, and, when stable, its generation, for a node taking the group over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupNote {
    #[serde(flatten)]
    pub listing: GroupListing,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<StableGroup>,
}

/// A stable generation of a group, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StableGroup {
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: Vec<SavedMember>,
}

/// A member of a stable generation, as saved; metadata and assignment in base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SavedMember {
    id: String,
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: u64,
    rebalance_timeout_ms: u64,
    protocols: Vec<(String, String)>,
    assignment: String,
}

impl StableGroup {
    /// The generation `group` is in, if stable.
    fn of(group: &Group) -> Option<StableGroup> {
        use base64::Engine as _;
        let b64 = |bytes: &Bytes| base64::engine::general_purpose::STANDARD.encode(bytes);
        (group.state == State::Stable).then(|| StableGroup {
            generation: group.generation,
            protocol_type: group.protocol_type.clone(),
            protocol: group.protocol.clone(),
            leader: group.leader.clone(),
            members: group
                .members
                .iter()
                .map(|(id, m)| SavedMember {
                    id: id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    session_timeout_ms: m.session_timeout.as_millis() as u64,
                    rebalance_timeout_ms: m.rebalance_timeout.as_millis() as u64,
                    protocols: m
                        .protocols
                        .iter()
                        .map(|(n, b)| (n.clone(), b64(b)))
                        .collect(),
                    assignment: b64(&m.assignment),
                })
                .collect(),
        })
    }

    /// The group again, under the hold `epoch`, its members seen `now`; `None` when a saved
    /// value is not one (bytes not base64, a timeout out of its bounds, too many members).
    fn restore(self, epoch: i64, held: HeldBytes, now: Instant) -> Option<Group> {
        use base64::Engine as _;
        let bytes = |text: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .ok()
                .map(Bytes::from)
        };
        let session = SESSION_TIMEOUT_MS_MIN as u64..=SESSION_TIMEOUT_MS_MAX as u64;
        if self.members.is_empty() || self.members.len() > GROUP_MEMBERS_MAX {
            return None;
        }
        let mut members = BTreeMap::new();
        for m in self.members {
            if !session.contains(&m.session_timeout_ms) {
                return None;
            }
            let protocols = m
                .protocols
                .iter()
                .map(|(n, b)| Some((n.clone(), bytes(b)?)))
                .collect::<Option<Vec<_>>>()?;
            let member = Member {
                instance_id: m.instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout: Duration::from_millis(m.session_timeout_ms),
                rebalance_timeout: Duration::from_millis(m.rebalance_timeout_ms),
                protocols,
                assignment: bytes(&m.assignment)?,
                last_seen: now,
                joined: false,
                join_waiter: None,
                sync_waiter: None,
            };
            members.insert(m.id, member);
        }
        let mut group = Group::new(epoch, held);
        group.state = State::Stable;
        group.generation = self.generation;
        group.protocol_type = self.protocol_type;
        group.protocol = self.protocol;
        group.leader = self.leader;
        group.members = members;
        group.recount();
        Some(group)
    }
}

/// A group as DescribeGroups shows it.
pub struct GroupView {
    pub group: String,
    pub state: State,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberView>,
}

/// Where a node keeps its groups' committed offsets, and whether it may act for a group.
pub trait GroupStore: Send + Sync {
    /// The epoch under which this node acts for `group` now, asking no one; `None` when it
    /// does not hold the group.
    fn held(&self, group: &str) -> Option<i64>;
    /// Takes `group` for this node unless another node holds it: the epoch it acts under, or
    /// `Err(NotCoordinator)`. May wait for the cluster database: never on a reactor thread.
    fn claim(&self, group: &str) -> Result<i64, GroupError>;
    /// Commits offsets (topic, partition, offset) of `group`; in a cluster all or none, on a
    /// lone node one after the other, each written or not.
    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), GroupError>;
    /// Every committed offset of a group: (topic, partition, offset).
    fn committed_all(
        &self,
        group: &str,
    ) -> Result<Vec<(String, i32, CommittedOffset)>, StorageError>;
    /// Deletes a group's offsets: of one partition, or all; whether there were any.
    fn delete(&self, group: &str, only: Option<(&str, i32)>) -> Result<bool, GroupError>;
    /// The groups with committed offsets.
    fn group_ids(&self) -> Result<Vec<String>, StorageError>;
    /// How many groups this node holds a lease on (none without a cluster).
    fn leases(&self) -> usize;
    /// Tells the other nodes how a group this node acts for looks now. Never waits; a lone
    /// node has no one to tell.
    fn report(&self, _note: &GroupNote) {}
    /// [`GroupStore::report`], told before this returns: for a change a node taking the group
    /// over must not miss, such as members leaving a stable generation. May wait for the
    /// cluster database.
    fn report_now(&self, note: &GroupNote) {
        self.report(note);
    }
    /// The stable generation the node that held `group` before this node took it over last
    /// reported, once. Never waits; none on a lone node.
    fn taken_over(&self, _group: &str) -> Option<StableGroup> {
        None
    }
    /// The groups other nodes act for, as they last reported them, and who holds every
    /// group's lease, read together. May wait for the cluster database; none on a lone node.
    fn listed_elsewhere(&self) -> Result<Elsewhere, StorageError> {
        Ok(Elsewhere::default())
    }
}

/// The offsets of a node that runs alone, in its metadata store; it acts for every group.
pub struct LocalGroupStore {
    offsets: Tree<CommittedOffset>,
}

impl LocalGroupStore {
    pub fn new(offsets: Tree<CommittedOffset>) -> Self {
        LocalGroupStore { offsets }
    }
}

/// Logs a failed write of a group's offsets; the client hears a storage error.
fn store_failed(group: &str, what: &str, e: &StorageError) -> GroupError {
    tracing::error!(group, error = %e, "{what} failed");
    GroupError::Storage
}

impl GroupStore for LocalGroupStore {
    fn held(&self, _group: &str) -> Option<i64> {
        Some(0)
    }

    fn claim(&self, _group: &str) -> Result<i64, GroupError> {
        Ok(0)
    }

    fn commit(
        &self,
        group: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), GroupError> {
        for (topic, partition, offset) in offsets {
            self.offsets
                .insert(&offset_key(group, topic, *partition), offset)
                .map_err(|e| store_failed(group, "offset commit", &e))?;
        }
        Ok(())
    }

    fn committed_all(
        &self,
        group: &str,
    ) -> Result<Vec<(String, i32, CommittedOffset)>, StorageError> {
        let mut out = Vec::new();
        for (key, value) in self.offsets.scan_prefix(&group_prefix(group))? {
            let mut parts = key.splitn(3, '\u{0}').skip(1);
            let (Some(topic), Some(partition)) = (parts.next(), parts.next()) else {
                continue;
            };
            if let Ok(partition) = partition.parse() {
                out.push((topic.to_string(), partition, value));
            }
        }
        Ok(out)
    }

    fn delete(&self, group: &str, only: Option<(&str, i32)>) -> Result<bool, GroupError> {
        let failed = |e: StorageError| store_failed(group, "deleting offsets", &e);
        if let Some((topic, partition)) = only {
            return self
                .offsets
                .remove(&offset_key(group, topic, partition))
                .map_err(failed);
        }
        let entries = self
            .offsets
            .scan_prefix(&group_prefix(group))
            .map_err(failed)?;
        for (key, _) in &entries {
            self.offsets.remove(key).map_err(failed)?;
        }
        Ok(!entries.is_empty())
    }

    fn group_ids(&self) -> Result<Vec<String>, StorageError> {
        let mut ids: Vec<String> = self
            .offsets
            .all()?
            .into_iter()
            .filter_map(|(key, _)| key.split('\u{0}').next().map(str::to_string))
            .collect();
        ids.dedup();
        Ok(ids)
    }

    fn leases(&self) -> usize {
        0
    }
}

pub struct Coordinator {
    groups: Mutex<HashMap<String, Group>>,
    held: HeldBytes,
    store: Arc<dyn GroupStore>,
    next_member: AtomicU64,
}

/// Why the coordinator refused a group operation. The Kafka listener answers each with its error
/// code, the HTTP API with a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("the group id is empty")]
    InvalidGroupId,
    #[error(
        "the session timeout is outside {SESSION_TIMEOUT_MS_MIN}..={SESSION_TIMEOUT_MS_MAX} ms"
    )]
    InvalidSessionTimeout,
    #[error("the member's protocols do not match the group's")]
    InconsistentGroupProtocol,
    #[error("the member id is not one of the group's")]
    UnknownMemberId,
    #[error("a new member joins again with the member id it was given")]
    MemberIdRequired,
    #[error("the group, or the coordinator, holds its limit of members or metadata")]
    GroupMaxSizeReached,
    #[error("the generation is not the group's current one")]
    IllegalGeneration,
    #[error("the group is rebalancing")]
    RebalanceInProgress,
    #[error("the group still has members")]
    NonEmptyGroup,
    #[error("the group does not exist")]
    GroupIdNotFound,
    #[error("offset metadata longer than {OFFSET_METADATA_BYTES_MAX} bytes")]
    OffsetMetadataTooLarge,
    #[error("the group has members, which may read the topic")]
    GroupSubscribedToTopic,
    #[error("the metadata store failed")]
    Storage,
    #[error("another node coordinates the group")]
    NotCoordinator,
    #[error("the cluster database cannot be reached")]
    CoordinatorNotAvailable,
    #[error("the request passes a bound of the cluster (offsets in one commit)")]
    InvalidRequest,
}

/// Where a group's offsets start in the tree: its id, then a NUL.
fn group_prefix(group: &str) -> String {
    format!("{group}\u{0}")
}

fn offset_key(group: &str, topic: &str, partition: i32) -> String {
    format!("{group}\u{0}{topic}\u{0}{partition:010}")
}

impl Coordinator {
    pub fn new(store: Arc<dyn GroupStore>) -> Self {
        Coordinator {
            groups: Mutex::new(HashMap::new()),
            held: HeldBytes::default(),
            store,
            next_member: AtomicU64::new(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        locks::lock(&self.groups)
    }

    /// Whether this node acts for `group` now, asking no one (see [`GroupStore::held`]).
    pub fn held(&self, group: &str) -> bool {
        self.store.held(group).is_some()
    }

    /// Takes `group` for this node if it can (see [`GroupStore::claim`]).
    pub fn claim(&self, group: &str) -> Result<(), GroupError> {
        self.store.claim(group).map(|_| ())
    }

    /// The groups, for acting on `group_id` under `epoch`: its state from an earlier hold
    /// (whose members have since had another coordinator) is dropped first, and the stable
    /// generation the group's previous coordinator left is taken up.
    fn lock_for(
        &self,
        group_id: &str,
        epoch: i64,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Group>> {
        let mut groups = self.lock();
        if groups.get(group_id).is_some_and(|g| g.epoch != epoch) {
            groups.remove(group_id);
        }
        if !groups.contains_key(group_id)
            && let Some(saved) = self.store.taken_over(group_id)
        {
            let generation = saved.generation;
            match saved.restore(epoch, self.held.clone(), Instant::now()) {
                // Held within the bounds a join is admitted under (its bytes already counted).
                Some(group)
                    if groups.len() < GROUPS_MAX
                        && self.held.get() <= GROUPS_METADATA_BYTES_MAX =>
                {
                    tracing::info!(
                        group = group_id,
                        generation,
                        members = group.members.len(),
                        "the group goes on with the generation its last coordinator left"
                    );
                    groups.insert(group_id.to_string(), group);
                }
                Some(_) => tracing::warn!(
                    group = group_id,
                    groups_max = GROUPS_MAX,
                    groups_metadata_bytes_max = GROUPS_METADATA_BYTES_MAX,
                    "no room for the generation the group's last coordinator left; members rejoin"
                ),
                None => tracing::warn!(
                    group = group_id,
                    "the generation the group's last coordinator left is not one; members rejoin"
                ),
            }
        }
        groups
    }

    /// The epoch to act on `group_id` under, asking no one: for the APIs answered on the
    /// reactor, whose callers claimed the group first.
    fn acting(&self, group_id: &str) -> Result<i64, GroupError> {
        self.store.held(group_id).ok_or(GroupError::NotCoordinator)
    }

    /// Handles a JoinGroup: either an answer now, or a receiver for the answer once the
    /// rebalance completes.
    pub fn join(&self, r: JoinRequest) -> Reply<JoinOutcome> {
        match self.try_join(r) {
            Ok(waiting) => Reply::Later(waiting),
            Err(answer) => Reply::Now(*answer),
        }
    }

    /// The join's steps; `Err` is an answer given at once (a refusal, a member id to use, or a
    /// returning static member's place).
    fn try_join(&self, r: JoinRequest) -> Result<oneshot::Receiver<JoinOutcome>, Box<JoinOutcome>> {
        let asked_id = r.member_id.clone();
        let refuse = |e| Box::new(JoinOutcome::error(e, &asked_id));
        check_join(&r).map_err(refuse)?;
        let epoch = self.acting(&r.group).map_err(refuse)?;
        let now = Instant::now();
        let mut groups = self.lock_for(&r.group, epoch);
        admit(&groups, self.held.get(), &r).map_err(refuse)?;
        let group = groups
            .entry(r.group.clone())
            .or_insert_with(|| Group::new(epoch, self.held.clone()));
        group.check_protocols(&r).map_err(refuse)?;
        let static_id = group.static_member(&r);
        if let Some(id) = &static_id
            && let Some(answer) = group.rejoin_in_place(id, &r, now)
        {
            return Err(Box::new(answer));
        }
        let member_id = self.member_id(group, &r, static_id, now)?;
        if !group.members.contains_key(&member_id) && group.members.len() >= GROUP_MEMBERS_MAX {
            return Err(refuse(GroupError::GroupMaxSizeReached));
        }
        let waiting = group.enter(member_id, r, now);
        group.recount();
        Ok(waiting)
    }

    /// The id the joining member goes by: its own, a returning static member's, or a new one —
    /// which a client of JoinGroup v4+ is first told (MEMBER_ID_REQUIRED) and joins again with.
    fn member_id(
        &self,
        group: &mut Group,
        r: &JoinRequest,
        static_id: Option<String>,
        now: Instant,
    ) -> Result<String, Box<JoinOutcome>> {
        let refuse = |e, id: &str| Box::new(JoinOutcome::error(e, id));
        if !r.member_id.is_empty() {
            if group.members.contains_key(&r.member_id)
                || group.pending.remove(&r.member_id).is_some()
            {
                return Ok(r.member_id.clone());
            }
            return Err(refuse(GroupError::UnknownMemberId, &r.member_id));
        }
        if let Some(id) = static_id {
            return Ok(id);
        }
        let prefix = if r.client_id.is_empty() {
            "member"
        } else {
            &r.client_id
        };
        // Members another node gave ids to may be in the group (taken over from it).
        let id = loop {
            let n = self.next_member.fetch_add(1, Ordering::Relaxed);
            let id = format!("{prefix}-{n}");
            if !group.members.contains_key(&id) && !group.pending.contains_key(&id) {
                break id;
            }
        };
        if r.require_known_member_id && r.instance_id.is_none() {
            if group.pending.len() >= GROUP_MEMBERS_MAX {
                return Err(refuse(GroupError::GroupMaxSizeReached, &r.member_id));
            }
            let deadline = now + Duration::from_millis(r.session_timeout_ms as u64);
            group.pending.insert(id.clone(), deadline);
            return Err(refuse(GroupError::MemberIdRequired, &id));
        }
        Ok(id)
    }

    /// Handles a SyncGroup: the leader's assignments are handed to every member. May wait for
    /// the cluster database: never on a reactor thread.
    pub fn sync(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
        assignments: Vec<(String, Bytes)>,
    ) -> Reply<SyncOutcome> {
        let epoch = match self.acting(group_id) {
            Ok(epoch) => epoch,
            Err(e) => return Reply::Now(SyncOutcome::error(e)),
        };
        let mut groups = self.lock_for(group_id, epoch);
        let Some(group) = groups.get_mut(group_id) else {
            return Reply::Now(SyncOutcome::error(GroupError::UnknownMemberId));
        };
        if !group.members.contains_key(member_id) {
            return Reply::Now(SyncOutcome::error(GroupError::UnknownMemberId));
        }
        if generation != group.generation {
            return Reply::Now(SyncOutcome::error(GroupError::IllegalGeneration));
        }
        let outcome = |g: &Group, assignment: Bytes| SyncOutcome {
            error: None,
            protocol_type: g.protocol_type.clone(),
            protocol: g.protocol.clone(),
            assignment,
        };
        match group.state {
            State::Empty | State::PreparingRebalance => {
                Reply::Now(SyncOutcome::error(GroupError::RebalanceInProgress))
            }
            State::Stable => {
                let assignment = group.members[member_id].assignment.clone();
                Reply::Now(outcome(group, assignment))
            }
            State::CompletingRebalance => {
                if group.leader.as_deref() == Some(member_id) {
                    let fits = assignments_fit(group, &assignments, self.held.get());
                    if let Err(e) = fits {
                        return Reply::Now(SyncOutcome::error(e));
                    }
                }
                let (tx, rx) = oneshot::channel();
                if let Some(m) = group.members.get_mut(member_id) {
                    m.sync_waiter = Some(tx);
                    m.last_seen = Instant::now();
                }
                if group.leader.as_deref() == Some(member_id) {
                    let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
                    for (id, m) in group.members.iter_mut() {
                        m.assignment = by_member.remove(id).unwrap_or_default();
                    }
                    group.recount();
                    group.state = State::Stable;
                    let waiting: Vec<_> = group
                        .members
                        .values_mut()
                        .filter_map(|m| Some((m.sync_waiter.take()?, m.assignment.clone())))
                        .collect();
                    let answers: Vec<_> = waiting
                        .into_iter()
                        .map(|(waiter, assignment)| (waiter, outcome(group, assignment)))
                        .collect();
                    // No member hears its assignment before the generation is where a node
                    // taking the group over finds it. Told with the lock let go (the store may
                    // wait).
                    let note = group.changed(group_id);
                    drop(groups);
                    if let Some(note) = note {
                        self.store.report_now(&note);
                    }
                    for (waiter, answer) in answers {
                        let _ = waiter.send(answer);
                    }
                }
                Reply::Later(rx)
            }
        }
    }

    /// Handles a Heartbeat; the error code tells the member whether to rejoin.
    pub fn heartbeat(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let epoch = self.store.claim(group_id)?;
        let mut groups = self.lock_for(group_id, epoch);
        let Some(group) = groups.get_mut(group_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        let Some(member) = group.members.get_mut(member_id) else {
            return Err(GroupError::UnknownMemberId);
        };
        member.last_seen = Instant::now();
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        match group.state {
            State::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ => Ok(()),
        }
    }

    /// Handles a LeaveGroup for each (member id, instance id); returns an error code per member.
    pub fn leave(
        &self,
        group_id: &str,
        members: &[(String, Option<String>)],
    ) -> Vec<Result<(), GroupError>> {
        let epoch = match self.store.claim(group_id) {
            Ok(epoch) => epoch,
            Err(e) => return vec![Err(e); members.len()],
        };
        let now = Instant::now();
        let mut groups = self.lock_for(group_id, epoch);
        let Some(group) = groups.get_mut(group_id) else {
            return vec![Err(GroupError::UnknownMemberId); members.len()];
        };
        let mut codes = Vec::with_capacity(members.len());
        for (member_id, instance_id) in members {
            let id = if member_id.is_empty() {
                instance_id.as_ref().and_then(|instance| {
                    group
                        .members
                        .iter()
                        .find(|(_, m)| m.instance_id.as_ref() == Some(instance))
                        .map(|(id, _)| id.clone())
                })
            } else {
                Some(member_id.clone())
            };
            match id.and_then(|id| group.members.remove(&id)) {
                Some(_) => codes.push(Ok(())),
                None => codes.push(Err(GroupError::UnknownMemberId)),
            }
        }
        after_departure(group, now);
        group.recount();
        // The generation left on the lease is over: a node taking the group over must not
        // wait for members that left. Told with the lock let go (the store may wait).
        if let Some(note) = group.changed(group_id) {
            drop(groups);
            self.store.report_now(&note);
        }
        codes
    }

    /// Expires members that missed their session timeout and completes rebalances whose
    /// deadline passed. Called periodically.
    pub fn tick(&self, now: Instant) {
        let mut groups = self.lock();
        for (name, group) in groups.iter_mut() {
            let expired: Vec<String> = group
                .members
                .iter()
                .filter(|(_, m)| {
                    m.join_waiter.is_none() && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            if !expired.is_empty() {
                for id in &expired {
                    group.members.remove(id);
                }
                tracing::info!(group = name, members = ?expired, "session timeout; members removed");
                after_departure(group, now);
            }
            group.pending.retain(|_, deadline| *deadline > now);
            if group.state == State::PreparingRebalance {
                try_complete_join(group, now);
            }
            group.recount();
        }
        // An empty group keeps nothing worth memory: its committed offsets are in the store.
        // A group whose hold this node lost is another node's now.
        groups.retain(|name, g| {
            let kept = !(g.state == State::Empty && g.members.is_empty() && g.pending.is_empty())
                && self.store.held(name) == Some(g.epoch);
            if let Some(note) = g.changed(name) {
                self.store.report(&note);
            }
            kept
        });
    }

    /// What the coordinator holds: groups in memory, the members of the largest, and the
    /// bytes of metadata and assignments all members hold.
    pub fn usage(&self) -> GroupsUsage {
        let groups = self.lock();
        debug_assert_eq!(
            self.held.get(),
            groups.values().map(Group::metadata_bytes).sum::<u64>(),
            "the running total of bytes the groups hold"
        );
        GroupsUsage {
            groups: groups.len(),
            leases: self.store.leases(),
            largest_members: groups.values().map(|g| g.members.len()).max().unwrap_or(0),
            metadata_bytes: self.held.get(),
        }
    }

    /// Every group with committed offsets or members: those this node acts for as it sees
    /// them, the others as the node acting for them reported them.
    pub fn list(&self) -> Result<Listed, StorageError> {
        // The store first: it may wait for the cluster database, and the reactor's tick takes
        // the lock.
        let mut names = self.store.group_ids()?;
        let Elsewhere { listings, holders } = self.store.listed_elsewhere()?;
        let elsewhere: HashMap<String, GroupListing> =
            listings.into_iter().map(|l| (l.group.clone(), l)).collect();
        let groups = self.lock();
        names.extend(groups.keys().cloned());
        names.extend(elsewhere.keys().cloned());
        names.sort();
        names.dedup();
        let groups = names
            .into_iter()
            .map(|n| {
                let here = groups
                    .get(&n)
                    .filter(|g| self.store.held(&n) == Some(g.epoch));
                match (here, elsewhere.get(&n)) {
                    (None, Some(there)) => there.clone(),
                    _ => listing(&n, here),
                }
            })
            .collect();
        Ok(Listed { groups, holders })
    }

    pub fn describe(&self, group_id: &str) -> GroupView {
        let groups = self.lock();
        view(group_id, groups.get(group_id))
    }

    /// Deletes an empty group and its committed offsets. The lock is never held while the
    /// store works: that may wait for the cluster database, and the reactor's tick takes it.
    pub fn delete(&self, group_id: &str) -> Result<(), GroupError> {
        let epoch = self.store.claim(group_id)?;
        self.check_empty(group_id, epoch, GroupError::NonEmptyGroup)?;
        let had_offsets = self.store.delete(group_id, None)?;
        let mut groups = self.lock_for(group_id, epoch);
        let known = groups.get(group_id).is_some_and(|g| g.members.is_empty())
            && groups.remove(group_id).is_some();
        if !had_offsets && !known {
            return Err(GroupError::GroupIdNotFound);
        }
        Ok(())
    }

    /// `refusal` when the group has members now.
    fn check_empty(
        &self,
        group_id: &str,
        epoch: i64,
        refusal: GroupError,
    ) -> Result<(), GroupError> {
        let groups = self.lock_for(group_id, epoch);
        match groups.get(group_id) {
            Some(g) if !g.members.is_empty() => Err(refusal),
            _ => Ok(()),
        }
    }

    /// Checks that a member may commit for `generation` (`< 0`: a consumer outside any group,
    /// allowed only while the group has no members).
    pub fn commit_check(
        &self,
        group_id: &str,
        member_id: &str,
        generation: i32,
    ) -> Result<(), GroupError> {
        let epoch = self.store.claim(group_id)?;
        let groups = self.lock_for(group_id, epoch);
        let Some(group) = groups.get(group_id).filter(|g| !g.members.is_empty()) else {
            return if generation < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        };
        if generation < 0 {
            return Err(GroupError::IllegalGeneration);
        }
        if !group.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation != group.generation {
            return Err(GroupError::IllegalGeneration);
        }
        // Kafka's rule: a member of the current generation may commit while the group is
        // stable and while it prepares a rebalance (cooperative consumers commit what they give
        // up before rejoining); only between the join and the sync, when the member has not yet
        // learned its new assignment, is the commit refused.
        if group.state == State::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// Commits offsets (topic, partition, offset) of a group, all or none, after
    /// [`Coordinator::commit_check`].
    pub fn commit(
        &self,
        group_id: &str,
        offsets: &[(String, i32, CommittedOffset)],
    ) -> Result<(), GroupError> {
        if offsets.iter().any(|(_, _, o)| {
            o.metadata
                .as_ref()
                .is_some_and(|m| m.len() > OFFSET_METADATA_BYTES_MAX)
        }) {
            return Err(GroupError::OffsetMetadataTooLarge);
        }
        self.store.commit(group_id, offsets)
    }

    /// Every committed offset of a group: (topic, partition, offset).
    pub fn committed_all(
        &self,
        group_id: &str,
    ) -> Result<Vec<(String, i32, CommittedOffset)>, StorageError> {
        self.store.committed_all(group_id)
    }

    pub fn delete_offset(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Result<(), GroupError> {
        let epoch = self.store.claim(group_id)?;
        self.check_empty(group_id, epoch, GroupError::GroupSubscribedToTopic)?;
        self.store.delete(group_id, Some((topic, partition)))?;
        Ok(())
    }
}

fn listing(name: &str, group: Option<&Group>) -> GroupListing {
    GroupListing {
        group: name.to_string(),
        state: group.map_or(State::Empty, |g| g.state),
        protocol_type: group
            .and_then(|g| g.protocol_type.clone())
            .unwrap_or_else(|| "consumer".to_string()),
        members: group.map_or(0, |g| g.members.len()),
    }
}

fn view(name: &str, group: Option<&Group>) -> GroupView {
    let Some(g) = group else {
        return GroupView {
            group: name.to_string(),
            state: State::Empty,
            protocol_type: "consumer".to_string(),
            protocol: String::new(),
            members: Vec::new(),
        };
    };
    let protocol = g.protocol.clone().unwrap_or_default();
    GroupView {
        group: name.to_string(),
        state: g.state,
        protocol_type: g
            .protocol_type
            .clone()
            .unwrap_or_else(|| "consumer".to_string()),
        members: g
            .members
            .iter()
            .map(|(id, m)| MemberView {
                member_id: id.clone(),
                instance_id: m.instance_id.clone(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                metadata: m
                    .protocols
                    .iter()
                    .find(|(n, _)| *n == protocol)
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default(),
                assignment: m.assignment.clone(),
            })
            .collect(),
        protocol,
    }
}

/// Moves a group into PreparingRebalance: every member must rejoin before the deadline.
fn start_rebalance(group: &mut Group, now: Instant) {
    let timeout = group
        .members
        .values()
        .map(|m| m.rebalance_timeout)
        .max()
        .unwrap_or(Duration::ZERO);
    group.state = State::PreparingRebalance;
    group.rebalance_deadline = Some(now + timeout);
    for m in group.members.values_mut() {
        m.joined = m.join_waiter.is_some();
        // Members waiting for their assignment must rejoin instead.
        if let Some(waiter) = m.sync_waiter.take() {
            let _ = waiter.send(SyncOutcome::error(GroupError::RebalanceInProgress));
        }
    }
}

/// After members left or expired: rebalance the rest, or empty the group.
fn after_departure(group: &mut Group, now: Instant) {
    if group.members.is_empty() {
        group.state = State::Empty;
        group.generation += 1;
        group.leader = None;
        group.protocol = None;
        group.rebalance_deadline = None;
        return;
    }
    if group
        .leader
        .as_ref()
        .is_some_and(|l| !group.members.contains_key(l))
    {
        group.leader = None;
    }
    if group.state != State::PreparingRebalance {
        start_rebalance(group, now);
    }
    try_complete_join(group, now);
}

/// Completes the join phase once every member has rejoined, or at the deadline, dropping
/// members that did not rejoin.
fn try_complete_join(group: &mut Group, now: Instant) {
    if group.state != State::PreparingRebalance {
        return;
    }
    let all_joined = group.members.values().all(|m| m.joined);
    let deadline_passed = group.rebalance_deadline.is_none_or(|d| now >= d);
    // A group that lost its leader is not starting afresh: once the members it has rejoin, a
    // new leader is chosen among them, as Kafka does.
    if !(deadline_passed || (all_joined && !group.initial)) {
        return;
    }
    group.members.retain(|_, m| m.joined);
    group.initial = false;
    if group.members.is_empty() {
        group.state = State::Empty;
        group.rebalance_deadline = None;
        return;
    }
    group.generation += 1;
    group.rebalance_deadline = None;
    // The protocol: the first of the leader's choices that every member supports.
    let leader = group
        .leader
        .clone()
        .filter(|l| group.members.contains_key(l))
        .or_else(|| group.members.keys().next().cloned())
        .unwrap_or_default();
    let choices: Vec<String> = group
        .members
        .get(&leader)
        .map(|m| m.protocols.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let protocol = choices.into_iter().find(|name| {
        group
            .members
            .values()
            .all(|m| m.protocols.iter().any(|(n, _)| n == name))
    });
    group.leader = Some(leader.clone());
    group.protocol = protocol.clone();
    group.state = State::CompletingRebalance;
    let roster: Vec<(String, Option<String>, Bytes)> = group
        .members
        .iter()
        .map(|(id, m)| {
            let metadata = m
                .protocols
                .iter()
                .find(|(n, _)| Some(n) == protocol.as_ref())
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
            (id.clone(), m.instance_id.clone(), metadata)
        })
        .collect();
    for (id, m) in group.members.iter_mut() {
        m.joined = false;
        m.last_seen = now;
        m.assignment = Bytes::new();
        if let Some(waiter) = m.join_waiter.take() {
            let outcome = JoinOutcome {
                error: protocol
                    .is_none()
                    .then_some(GroupError::InconsistentGroupProtocol),
                generation: group.generation,
                protocol_type: group.protocol_type.clone(),
                protocol: protocol.clone(),
                leader: leader.clone(),
                member_id: id.clone(),
                members: if *id == leader {
                    roster.clone()
                } else {
                    Vec::new()
                },
            };
            let _ = waiter.send(outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member_assigned(assignment: Vec<u8>) -> MemberView {
        MemberView {
            member_id: "m".into(),
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            metadata: Bytes::new(),
            assignment: Bytes::from(assignment),
        }
    }

    #[test]
    fn a_consumer_assignment_is_read_and_a_hostile_one_refused() {
        // Version 1, topics "ab" → [0, 2] and "c" → [], no user data.
        let mut bytes = vec![0, 1, 0, 0, 0, 2];
        bytes.extend([0, 2, b'a', b'b', 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2]);
        bytes.extend([0, 1, b'c', 0, 0, 0, 0]);
        bytes.extend([0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            member_assigned(bytes.clone()).consumer_assignment(),
            Some(vec![("ab".into(), vec![0, 2]), ("c".into(), vec![])])
        );
        assert_eq!(member_assigned(vec![]).consumer_assignment(), Some(vec![]));
        // 2³¹ - 1 partitions in 12 bytes, a torn name, an unknown version: none read.
        let huge = vec![0, 0, 0, 0, 0, 1, 0, 0, 0x7f, 0xff, 0xff, 0xff];
        assert_eq!(member_assigned(huge).consumer_assignment(), None);
        assert_eq!(
            member_assigned(bytes[..9].to_vec()).consumer_assignment(),
            None
        );
        assert_eq!(
            member_assigned(vec![0, 9, 0, 0, 0, 0]).consumer_assignment(),
            None
        );
    }

    fn coordinator() -> (tempfile::TempDir, Coordinator) {
        let dir = tempfile::tempdir().unwrap();
        let meta = weir_storage::MetaStore::open(&dir.path().join("meta")).unwrap();
        let tree = meta.tree(OFFSETS_TREE).unwrap();
        (dir, Coordinator::new(Arc::new(LocalGroupStore::new(tree))))
    }

    fn join(c: &Coordinator, member_id: &str, session_ms: i32) -> Reply<JoinOutcome> {
        join_group(c, "g", member_id, session_ms)
    }

    fn join_group(
        c: &Coordinator,
        group: &str,
        member_id: &str,
        session_ms: i32,
    ) -> Reply<JoinOutcome> {
        c.join(JoinRequest {
            group: group.into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: "test".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: session_ms,
            rebalance_timeout_ms: session_ms,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
            require_known_member_id: false,
        })
    }

    fn later<T>(reply: Reply<T>) -> oneshot::Receiver<T> {
        match reply {
            Reply::Later(rx) => rx,
            Reply::Now(_) => panic!("expected to wait for the group"),
        }
    }

    #[test]
    fn members_join_sync_and_an_expired_member_triggers_a_rebalance() {
        let (_dir, c) = coordinator();
        let start = Instant::now();
        let mut a = later(join(&c, "", 60_000));
        // The first join waits for the initial delay, in case more members come.
        assert!(a.try_recv().is_err());
        c.tick(start + INITIAL_REBALANCE_DELAY + Duration::from_millis(50));
        let first = a.try_recv().unwrap();
        assert_eq!((first.error, first.generation), (None, 1));
        assert_eq!(first.leader, first.member_id);
        assert_eq!(first.members.len(), 1);
        let a_id = first.member_id.clone();

        // An assignment past the member's bound is refused, and the leader may sync again.
        let too_large = Bytes::from(vec![0u8; MEMBER_ASSIGNMENT_BYTES_MAX + 1]);
        let Reply::Now(refused) = c.sync("g", &a_id, 1, vec![(a_id.clone(), too_large)]) else {
            panic!("an assignment past its bound is refused at once");
        };
        assert_eq!(refused.error, Some(GroupError::GroupMaxSizeReached));
        assert_eq!(c.describe("g").state, State::CompletingRebalance);
        let assignment = Bytes::from_static(b"all partitions");
        let mut synced = later(c.sync("g", &a_id, 1, vec![(a_id.clone(), assignment.clone())]));
        assert_eq!(synced.try_recv().unwrap().assignment, assignment);
        assert_eq!(c.heartbeat("g", &a_id, 1), Ok(()));

        // A second member joins: the first learns of the rebalance from its heartbeat.
        let mut b = later(join(&c, "", 1_000));
        assert_eq!(
            c.heartbeat("g", &a_id, 1),
            Err(GroupError::RebalanceInProgress)
        );
        let mut a = later(join(&c, &a_id, 60_000));
        let (ja, jb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!((ja.generation, jb.generation), (2, 2));
        assert_eq!(ja.members.len(), 2, "the leader sees every member");
        assert!(jb.members.is_empty());
        let b_id = jb.member_id.clone();
        assert_eq!(
            c.heartbeat("g", &b_id, 1),
            Err(GroupError::IllegalGeneration)
        );
        let mut sb = later(c.sync("g", &b_id, 2, Vec::new()));
        let _sa = later(c.sync(
            "g",
            &a_id,
            2,
            vec![
                (a_id.clone(), Bytes::from_static(b"p0")),
                (b_id.clone(), Bytes::from_static(b"p1")),
            ],
        ));
        assert_eq!(sb.try_recv().unwrap().assignment, Bytes::from_static(b"p1"));

        // The second member stops heartbeating: past its session it is removed and the group
        // rebalances; a commit from the old generation is refused.
        c.tick(Instant::now() + Duration::from_millis(1_500));
        assert_eq!(c.heartbeat("g", &b_id, 2), Err(GroupError::UnknownMemberId));
        assert_eq!(
            c.heartbeat("g", &a_id, 2),
            Err(GroupError::RebalanceInProgress)
        );
        // Kafka's rule: the current generation may commit while a rebalance is prepared.
        assert_eq!(c.commit_check("g", &a_id, 2), Ok(()));
        let mut a = later(join(&c, &a_id, 60_000));
        let alone = a.try_recv().unwrap();
        assert_eq!((alone.generation, alone.members.len()), (3, 1));
        // Between the join and the sync the member does not know its assignment yet.
        assert_eq!(c.describe("g").state, State::CompletingRebalance);
        assert_eq!(
            c.commit_check("g", &a_id, 3),
            Err(GroupError::RebalanceInProgress)
        );
        assert_eq!(
            c.commit_check("g", &a_id, 2),
            Err(GroupError::IllegalGeneration)
        );
        let _synced = later(c.sync("g", &a_id, 3, vec![(a_id.clone(), Bytes::new())]));
        assert_eq!(c.describe("g").state, State::Stable);
        assert_eq!(c.commit_check("g", &a_id, 3), Ok(()));

        // Leaving empties the group; its offsets stay until the group is deleted.
        let offset = CommittedOffset {
            offset: 42,
            leader_epoch: -1,
            metadata: Some("m".into()),
            commit_ms: 0,
        };
        assert_eq!(c.commit("g", &[("t".into(), 0, offset.clone())]), Ok(()));
        assert_eq!(c.delete("g"), Err(GroupError::NonEmptyGroup));
        assert_eq!(c.leave("g", &[(a_id, None)]), vec![Ok(())]);
        assert_eq!(c.describe("g").state, State::Empty);
        assert_eq!(c.committed_all("g").unwrap(), vec![("t".into(), 0, offset)]);
        assert_eq!(c.delete("g"), Ok(()));
        assert_eq!(c.committed_all("g").unwrap(), vec![]);
        assert_eq!(c.delete("g"), Err(GroupError::GroupIdNotFound));
    }

    /// Two members, stable at generation 2; returns (leader id, follower id).
    fn stable_pair(c: &Coordinator, leader_session_ms: i32) -> (String, String) {
        let mut a = later(join(c, "", leader_session_ms));
        c.tick(Instant::now() + INITIAL_REBALANCE_DELAY + Duration::from_millis(50));
        let a_id = a.try_recv().unwrap().member_id;
        let _sa = later(c.sync("g", &a_id, 1, vec![(a_id.clone(), Bytes::new())]));
        let mut b = later(join(c, "", 60_000));
        let mut a = later(join(c, &a_id, leader_session_ms));
        let (ja, jb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        assert_eq!(ja.leader, a_id);
        let b_id = jb.member_id;
        let _sb = later(c.sync("g", &b_id, 2, Vec::new()));
        let assignments = vec![
            (a_id.clone(), Bytes::from_static(b"pa")),
            (b_id.clone(), Bytes::from_static(b"pb")),
        ];
        let _sa = later(c.sync("g", &a_id, 2, assignments));
        assert_eq!(c.describe("g").state, State::Stable);
        (a_id, b_id)
    }

    #[test]
    fn assignments_are_bounded_by_what_all_groups_may_hold_with_them_in_place() {
        let (_dir, c) = coordinator();
        let (a, b) = stable_pair(&c, 60_000);
        let groups = c.lock();
        let group = &groups["g"];
        // The group holds its members' metadata and the two 2-byte assignments.
        let held = c.held.get();
        let assignments = |bytes: usize| {
            vec![
                (a.clone(), Bytes::from(vec![0u8; bytes])),
                (b.clone(), Bytes::from(vec![0u8; bytes])),
            ]
        };
        // Other groups hold all but 1000 bytes of the bound: the current assignments (4
        // bytes) make way for the new ones, so 1004 bytes of them fit, and no byte more.
        let others = GROUPS_METADATA_BYTES_MAX - held - 1000;
        let fit = |bytes| assignments_fit(group, &assignments(bytes), held + others);
        assert_eq!(fit(2), Ok(()));
        assert_eq!(fit(502), Ok(()));
        assert_eq!(fit(503), Err(GroupError::GroupMaxSizeReached));
        // An assignment for a member the group does not have is not held, so not counted.
        let stranger = vec![("stranger".to_string(), Bytes::from(vec![0u8; 1 << 20]))];
        assert_eq!(
            assignments_fit(group, &stranger, GROUPS_METADATA_BYTES_MAX),
            Ok(())
        );
    }

    #[test]
    fn when_the_leader_dies_the_survivor_leads_as_soon_as_it_rejoins() {
        let (_dir, c) = coordinator();
        let (leader, survivor) = stable_pair(&c, 1_000);
        // The leader stops heartbeating; the survivor keeps going.
        let past_leader_session = Instant::now() + Duration::from_millis(1_500);
        assert_eq!(c.heartbeat("g", &survivor, 2), Ok(()));
        c.tick(past_leader_session);
        assert!(
            c.describe("g")
                .members
                .iter()
                .all(|m| m.member_id != leader)
        );
        assert_eq!(
            c.heartbeat("g", &survivor, 2),
            Err(GroupError::RebalanceInProgress)
        );
        // The survivor's rejoin completes the rebalance at once: no wait for the rebalance
        // timeout (60 s here) as if the group were new.
        let mut rejoin = later(join(&c, &survivor, 60_000));
        let outcome = rejoin.try_recv().unwrap();
        assert_eq!((outcome.error, outcome.generation), (None, 3));
        assert_eq!(outcome.leader, survivor);
        assert_eq!(outcome.members.len(), 1);
    }

    #[test]
    fn metadata_past_its_bounds_is_refused_and_empty_groups_leave_memory() {
        let (_dir, c) = coordinator();
        let Reply::Now(big) = c.join(JoinRequest {
            group: "g".into(),
            member_id: String::new(),
            instance_id: None,
            client_id: "big".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from(vec![0u8; 50 << 20]))],
            require_known_member_id: false,
        }) else {
            panic!("metadata past the bound is refused at once");
        };
        assert_eq!(big.error, Some(GroupError::GroupMaxSizeReached));
        let (a, _) = stable_pair(&c, 60_000);
        assert_eq!(c.usage().groups, 1);
        assert_eq!(c.usage().largest_members, 2);
        // Each member: the protocol's name and metadata ("range", "meta"), its assignment.
        assert_eq!(c.usage().metadata_bytes, 2 * (5 + 4 + 2));
        let mut members: Vec<(String, Option<String>)> = c
            .describe("g")
            .members
            .into_iter()
            .map(|m| (m.member_id, None))
            .collect();
        let last = members.split_off(1);
        assert_eq!(c.leave("g", &members), vec![Ok(())]);
        // The member that left holds nothing from then on; the one left keeps its assignment
        // until the rebalance its leaving started completes.
        assert_eq!(c.usage().metadata_bytes, 5 + 4 + 2);
        assert_eq!(c.leave("g", &last), vec![Ok(())]);
        assert_eq!(c.usage().metadata_bytes, 0);
        c.tick(Instant::now());
        assert_eq!(
            c.usage(),
            GroupsUsage {
                groups: 0,
                leases: 0,
                largest_members: 0,
                metadata_bytes: 0
            }
        );
        assert_eq!(c.describe("g").state, State::Empty);
        assert_eq!(
            c.commit_check("g", &a, 2),
            Err(GroupError::IllegalGeneration)
        );
    }

    #[test]
    fn a_new_group_past_the_groups_bound_is_refused_until_one_leaves_memory() {
        let (_dir, c) = coordinator();
        let mut first = (0..GROUPS_MAX)
            .map(|n| later(join_group(&c, &format!("g{n}"), "", 60_000)))
            .collect::<Vec<_>>()
            .swap_remove(0);
        assert_eq!(c.usage().groups, GROUPS_MAX);
        let Reply::Now(refused) = join_group(&c, "one-too-many", "", 60_000) else {
            panic!("a group past the bound is refused at once");
        };
        assert_eq!(refused.error, Some(GroupError::GroupMaxSizeReached));
        // A group already held still takes members.
        let _second = later(join_group(&c, "g1", "", 60_000));
        assert_eq!(c.usage().groups, GROUPS_MAX);

        c.tick(Instant::now() + INITIAL_REBALANCE_DELAY + Duration::from_millis(50));
        let joined = first.try_recv().unwrap();
        assert_eq!(joined.error, None);
        assert_eq!(c.leave("g0", &[(joined.member_id, None)]), vec![Ok(())]);
        c.tick(Instant::now());
        assert_eq!(c.usage().groups, GROUPS_MAX - 1);
        let _admitted = later(join_group(&c, "one-too-many", "", 60_000));
        assert_eq!(c.usage().groups, GROUPS_MAX);
    }

    #[test]
    fn a_static_member_that_comes_back_keeps_its_assignment_without_a_rebalance() {
        let (_dir, c) = coordinator();
        let static_join = |instance: &str, member_id: &str| {
            c.join(JoinRequest {
                group: "g".into(),
                member_id: member_id.into(),
                instance_id: Some(instance.into()),
                client_id: "svc".into(),
                client_host: "/127.0.0.1".into(),
                session_timeout_ms: 30_000,
                rebalance_timeout_ms: 30_000,
                protocol_type: "consumer".into(),
                protocols: vec![("range".into(), Bytes::from_static(b"meta"))],
                require_known_member_id: true,
            })
        };
        let mut a = later(static_join("a", ""));
        let mut b = later(static_join("b", ""));
        c.tick(Instant::now() + INITIAL_REBALANCE_DELAY + Duration::from_millis(50));
        let (ja, jb) = (a.try_recv().unwrap(), b.try_recv().unwrap());
        let (leader, follower) = if ja.leader == ja.member_id {
            (ja, jb)
        } else {
            (jb, ja)
        };
        let assignments = vec![
            (leader.member_id.clone(), Bytes::from_static(b"p0")),
            (follower.member_id.clone(), Bytes::from_static(b"p1")),
        ];
        let _follower_sync = later(c.sync("g", &follower.member_id, leader.generation, Vec::new()));
        let _leader_sync = later(c.sync("g", &leader.member_id, leader.generation, assignments));
        assert_eq!(c.describe("g").state, State::Stable);

        // The follower restarts: same instance id, no member id.
        let instance = c
            .describe("g")
            .members
            .iter()
            .find(|m| m.member_id == follower.member_id)
            .and_then(|m| m.instance_id.clone())
            .unwrap();
        let Reply::Now(back) = static_join(&instance, "") else {
            panic!("a returning static member is answered at once");
        };
        assert_eq!((back.error, back.generation), (None, leader.generation));
        assert_eq!(back.member_id, follower.member_id);
        assert_eq!(c.describe("g").state, State::Stable);
        let Reply::Now(assignment) = c.sync("g", &back.member_id, back.generation, Vec::new())
        else {
            panic!("a stable group answers a sync at once");
        };
        assert_eq!(assignment.assignment, Bytes::from_static(b"p1"));
    }

    #[test]
    fn a_new_member_gets_its_id_first_and_unknown_ids_are_refused() {
        let (_dir, c) = coordinator();
        let request = |member_id: &str| JoinRequest {
            group: "g".into(),
            member_id: member_id.into(),
            instance_id: None,
            client_id: "cli".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 10_000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::new())],
            require_known_member_id: true,
        };
        let Reply::Now(first) = c.join(request("")) else {
            panic!("a new member is told its id at once");
        };
        assert_eq!(first.error, Some(GroupError::MemberIdRequired));
        assert!(first.member_id.starts_with("cli-"));
        assert!(matches!(c.join(request(&first.member_id)), Reply::Later(_)));
        let Reply::Now(unknown) = c.join(request("made-up")) else {
            panic!("an unknown member id is refused at once");
        };
        assert_eq!(unknown.error, Some(GroupError::UnknownMemberId));
        let Reply::Now(bad) = c.join(JoinRequest {
            session_timeout_ms: 10,
            ..request("")
        }) else {
            panic!("a bad session timeout is refused at once");
        };
        assert_eq!(bad.error, Some(GroupError::InvalidSessionTimeout));
    }

    /// A node's offsets, as a cluster node hands a group over: what the coordinator reports is
    /// kept, and a generation left by another coordinator is handed over once.
    struct Handover {
        offsets: LocalGroupStore,
        reported: Mutex<Option<GroupNote>>,
        left: Mutex<Option<StableGroup>>,
    }

    impl GroupStore for Handover {
        fn held(&self, group: &str) -> Option<i64> {
            self.offsets.held(group)
        }
        fn claim(&self, group: &str) -> Result<i64, GroupError> {
            self.offsets.claim(group)
        }
        fn commit(
            &self,
            group: &str,
            offsets: &[(String, i32, CommittedOffset)],
        ) -> Result<(), GroupError> {
            self.offsets.commit(group, offsets)
        }
        fn committed_all(
            &self,
            group: &str,
        ) -> Result<Vec<(String, i32, CommittedOffset)>, StorageError> {
            self.offsets.committed_all(group)
        }
        fn delete(&self, group: &str, only: Option<(&str, i32)>) -> Result<bool, GroupError> {
            self.offsets.delete(group, only)
        }
        fn group_ids(&self) -> Result<Vec<String>, StorageError> {
            self.offsets.group_ids()
        }
        fn leases(&self) -> usize {
            0
        }
        fn report(&self, note: &GroupNote) {
            *locks::lock(&self.reported) = Some(note.clone());
        }
        fn taken_over(&self, _group: &str) -> Option<StableGroup> {
            locks::lock(&self.left).take()
        }
    }

    fn handover(dir: &tempfile::TempDir, left: Option<StableGroup>) -> Arc<Handover> {
        let meta = weir_storage::MetaStore::open(&dir.path().join("meta")).unwrap();
        Arc::new(Handover {
            offsets: LocalGroupStore::new(meta.tree(OFFSETS_TREE).unwrap()),
            reported: Mutex::new(None),
            left: Mutex::new(left),
        })
    }

    /// The stable generation a coordinator leaves is taken up by the next one: its members'
    /// heartbeats and commits under that generation are accepted with no rebalance, a
    /// stranger is not, and a new member gets an id none of them has. A member leaving ends
    /// the generation left, before the leave is answered.
    #[test]
    fn a_stable_generation_left_by_one_coordinator_goes_on_at_the_next() {
        let (first_dir, next_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let first_store = handover(&first_dir, None);
        let first = Coordinator::new(first_store.clone());
        let (a, b) = stable_pair(&first, 60_000);
        first.tick(Instant::now());
        let note = locks::lock(&first_store.reported).clone().unwrap();
        assert_eq!(note.listing.state, State::Stable);
        // As the lease carries it: JSON.
        let text = serde_json::to_string(&note).unwrap();
        let left: GroupNote = serde_json::from_str(&text).unwrap();
        assert_eq!(left.stable.as_ref().map(|s| s.generation), Some(2));
        // A member leaving ends the generation, and the store hears of it at once.
        let describe_before = first.describe("g");
        assert_eq!(first.leave("g", &[(b.clone(), None)]), vec![Ok(())]);
        let after_leave = locks::lock(&first_store.reported).clone().unwrap();
        assert_eq!((after_leave.listing.members, after_leave.stable), (1, None));

        let next = Coordinator::new(handover(&next_dir, left.stable));
        assert_eq!(next.heartbeat("g", &a, 2), Ok(()));
        assert_eq!(next.heartbeat("g", &b, 2), Ok(()));
        assert_eq!(next.usage().metadata_bytes, 2 * (5 + 4 + 2));
        assert_eq!(next.commit_check("g", &b, 2), Ok(()));
        assert_eq!(
            next.commit_check("g", &b, 1),
            Err(GroupError::IllegalGeneration)
        );
        assert_eq!(
            next.heartbeat("g", "stranger", 2),
            Err(GroupError::UnknownMemberId)
        );
        let (before, after) = (describe_before, next.describe("g"));
        assert_eq!(after.state, State::Stable);
        assert_eq!(
            (&after.protocol_type, &after.protocol),
            (&before.protocol_type, &before.protocol)
        );
        let members = |v: &GroupView| -> Vec<(String, Bytes, Bytes)> {
            v.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.clone(),
                        m.metadata.clone(),
                        m.assignment.clone(),
                    )
                })
                .collect()
        };
        assert_eq!(members(&after), members(&before));

        // The next coordinator numbers its members from 1 as the first did; a new member
        // still joins as a third.
        let _joining = later(join(&next, "", 60_000));
        assert_eq!(next.describe("g").members.len(), 3);
        assert_eq!(
            next.heartbeat("g", &a, 2),
            Err(GroupError::RebalanceInProgress)
        );
    }
}
