//! One function per Kafka API: request in, response out. Storage errors become Kafka error
//! codes here; nothing a client sends can make these panic.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

use bytes::Bytes;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsRequest, CreateTopicsResponse, FetchRequest,
    FetchResponse, InitProducerIdRequest, InitProducerIdResponse, JoinGroupResponse,
    ListOffsetsRequest, ListOffsetsResponse, MetadataRequest, MetadataResponse, ProduceRequest,
    ProduceResponse, ProducerId, RequestHeader, RequestKind, ResponseKind, SyncGroupResponse,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use weir_storage::{BatchError, StorageError};

use super::frame::FileBytes;
use super::logs::{Appended, TopicInfo, check_new_topic};
use super::{Shared, acl_api, admin_api, group_api};
use crate::acl::{Caller, Denied, Operation, ResourceType};
use crate::error::{Error, Result, task};

pub(crate) use super::logs::NODE_ID;
pub(crate) const CLUSTER_ID: &str = "weir";
/// Upper bound on a fetch's wait, whatever the client asks.
const FETCH_WAIT_MS_MAX: u64 = 30_000;
/// Upper bound on a fetch response's record bytes, whatever the client asks: Kafka's
/// `fetch.max.bytes` default, 55 MiB. Only a single batch larger than it is sent whole, as the
/// first of a response.
pub const FETCH_BYTES_MAX: u64 = 57_671_680;

/// Every API this broker serves, with the versions it implements; ApiVersions advertises
/// exactly these.
const SUPPORTED: [(ApiKey, i16, i16); 31] = [
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::DeleteTopics, 0, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

/// The versions of `key` this broker implements; `None` for APIs it does not serve.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|&(_, min, max)| (min, max))
}

/// Answers a request. Fetches (which long-poll) and group joins and syncs (which wait for the
/// rest of the group) wait on the reactor; every other API reads or writes the disk or the
/// metadata store, so it runs on the blocking pool, never on a reactor thread.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    request: Option<RequestKind>,
    header: &RequestHeader,
    peer: std::net::SocketAddr,
    caller: Caller,
) -> Result<Option<Answer>> {
    let version = header.request_api_version;
    let response = match request {
        Some(RequestKind::Fetch(r)) => {
            let (response, lent) = fetch(shared, r, &caller).await;
            return Ok(Some(Answer {
                kind: ResponseKind::Fetch(response),
                lent,
            }));
        }
        Some(RequestKind::JoinGroup(r)) => {
            if let Err(denied) = caller.check(Operation::Read, ResourceType::Group, &r.group_id) {
                let mut response = JoinGroupResponse::default();
                response.error_code = denial(&denied).0;
                return Ok(Some(ResponseKind::JoinGroup(response).into()));
            }
            let client_id = header
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default();
            let client = (client_id, format!("/{}", peer.ip()));
            ResponseKind::JoinGroup(group_api::join_group(shared, r, client, version).await)
        }
        Some(RequestKind::SyncGroup(r)) => {
            if let Err(denied) = caller.check(Operation::Read, ResourceType::Group, &r.group_id) {
                let mut response = SyncGroupResponse::default();
                response.error_code = denial(&denied).0;
                return Ok(Some(ResponseKind::SyncGroup(response).into()));
            }
            ResponseKind::SyncGroup(group_api::sync_group(shared, r, version).await)
        }
        request => {
            let shared = shared.clone();
            let version = header.request_api_version;
            let answered = blocking("answering a request", move || {
                handle_blocking(&shared, request, version, &caller)
            })
            .await?;
            return answered.map(|r| r.map(Answer::from));
        }
    };
    Ok(Some(response.into()))
}

/// Runs a request's work that blocks (writes and their fsyncs, metadata, database round
/// trips). A connection answers one request at a time, so on a multi-threaded runtime the work
/// runs on the connection's own thread, which first hands its other tasks to another: a
/// produce's answer then waits for no thread to wake. On a current-thread runtime it goes to
/// the blocking pool. Either way a panic in `work` is the error of `what`.
async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    let work = move || weir_storage::reactor::blocking(work);
    if Handle::current().runtime_flavor() != RuntimeFlavor::MultiThread {
        return tokio::task::spawn_blocking(work).await.map_err(task(what));
    }
    std::panic::catch_unwind(AssertUnwindSafe(|| tokio::task::block_in_place(work))).map_err(
        |panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".to_owned());
            Error::Task {
                what: what.to_owned(),
                reason,
            }
        },
    )
}

/// A response, and the record sets it holds that the frame may send from their files.
pub(crate) struct Answer {
    pub kind: ResponseKind,
    pub lent: Vec<FileBytes>,
}

impl Answer {
    /// Bytes the frame will copy, near enough to size its buffer once: the record bytes of a
    /// fetch that are not sent from their files, plus room for the fields around them.
    pub(crate) fn copied_bytes_hint(&self) -> usize {
        const FIELDS_BYTES: usize = 4096;
        match &self.kind {
            ResponseKind::Fetch(f) => {
                let records: usize = f
                    .responses
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .map(|p| p.records.as_ref().map_or(0, |r| r.len()) + 128)
                    .sum();
                let lent: usize = self.lent.iter().map(|l| l.bytes.len()).sum();
                FIELDS_BYTES + records.saturating_sub(lent)
            }
            _ => FIELDS_BYTES,
        }
    }
}

impl From<ResponseKind> for Answer {
    fn from(kind: ResponseKind) -> Answer {
        Answer {
            kind,
            lent: Vec::new(),
        }
    }
}

/// The APIs that touch the disk or the metadata store; runs on the blocking pool.
fn handle_blocking(
    shared: &Shared,
    request: Option<RequestKind>,
    version: i16,
    caller: &Caller,
) -> Result<Option<ResponseKind>> {
    let response = match request {
        None => ResponseKind::ApiVersions(api_versions(ResponseError::UnsupportedVersion.code())),
        Some(RequestKind::ApiVersions(_)) => ResponseKind::ApiVersions(api_versions(0)),
        Some(RequestKind::Metadata(r)) => {
            ResponseKind::Metadata(metadata(shared, r, version, caller))
        }
        Some(RequestKind::Produce(r)) => {
            let acks = r.acks;
            let response = produce(shared, r, caller);
            if acks == 0 {
                return Ok(None);
            }
            ResponseKind::Produce(response)
        }
        Some(RequestKind::ListOffsets(r)) => {
            ResponseKind::ListOffsets(list_offsets(shared, r, caller))
        }
        Some(RequestKind::CreateTopics(r)) => {
            ResponseKind::CreateTopics(create_topics(shared, r, version, caller))
        }
        Some(RequestKind::InitProducerId(r)) => {
            ResponseKind::InitProducerId(init_producer_id(shared, r, caller))
        }
        Some(RequestKind::FindCoordinator(r)) => {
            ResponseKind::FindCoordinator(group_api::find_coordinator(shared, r, version, caller))
        }
        Some(RequestKind::Heartbeat(r)) => {
            ResponseKind::Heartbeat(group_api::heartbeat(shared, r, caller))
        }
        Some(RequestKind::LeaveGroup(r)) => {
            ResponseKind::LeaveGroup(group_api::leave_group(shared, r, version, caller))
        }
        Some(RequestKind::OffsetCommit(r)) => {
            ResponseKind::OffsetCommit(group_api::offset_commit(shared, r, caller))
        }
        Some(RequestKind::OffsetFetch(r)) => {
            ResponseKind::OffsetFetch(group_api::offset_fetch(shared, r, version, caller))
        }
        Some(RequestKind::ListGroups(r)) => {
            ResponseKind::ListGroups(group_api::list_groups(shared, r, version, caller))
        }
        Some(RequestKind::DescribeGroups(r)) => {
            ResponseKind::DescribeGroups(group_api::describe_groups(shared, r, version, caller))
        }
        Some(RequestKind::DeleteGroups(r)) => {
            ResponseKind::DeleteGroups(group_api::delete_groups(shared, r, caller))
        }
        Some(RequestKind::OffsetDelete(r)) => {
            ResponseKind::OffsetDelete(group_api::offset_delete(shared, r, caller))
        }
        Some(RequestKind::DeleteTopics(r)) => {
            ResponseKind::DeleteTopics(admin_api::delete_topics(shared, r, version, caller))
        }
        Some(RequestKind::CreatePartitions(r)) => {
            ResponseKind::CreatePartitions(admin_api::create_partitions(shared, r, caller))
        }
        Some(RequestKind::DescribeConfigs(r)) => {
            ResponseKind::DescribeConfigs(admin_api::describe_configs(shared, r, caller))
        }
        Some(RequestKind::AlterConfigs(r)) => {
            ResponseKind::AlterConfigs(admin_api::alter_configs(shared, r, caller))
        }
        Some(RequestKind::IncrementalAlterConfigs(r)) => ResponseKind::IncrementalAlterConfigs(
            admin_api::incremental_alter_configs(shared, r, caller),
        ),
        Some(RequestKind::CreateAcls(r)) => {
            ResponseKind::CreateAcls(acl_api::create_acls(shared, r, caller))
        }
        Some(RequestKind::DescribeAcls(r)) => {
            ResponseKind::DescribeAcls(acl_api::describe_acls(shared, r, caller))
        }
        Some(RequestKind::DeleteAcls(r)) => {
            ResponseKind::DeleteAcls(acl_api::delete_acls(shared, r, caller))
        }
        Some(RequestKind::DescribeCluster(r)) => {
            ResponseKind::DescribeCluster(admin_api::describe_cluster(shared, r))
        }
        // The frame reader refuses the APIs missing from `SUPPORTED` before decoding.
        Some(_) => {
            return Err(Error::Protocol(
                "a request of an API this broker does not serve".into(),
            ));
        }
    };
    Ok(Some(response))
}

fn api_versions(error_code: i16) -> ApiVersionsResponse {
    let mut response = ApiVersionsResponse::default();
    response.error_code = error_code;
    for (key, min, max) in SUPPORTED {
        let mut v = ApiVersion::default();
        v.api_key = key as i16;
        v.min_version = min;
        v.max_version = max;
        response.api_keys.push(v);
    }
    response
}

/// Longest error message put in a response: a message carries its own subject (a topic name,
/// a config value), and a response string may not pass 32 767 bytes.
const ERROR_MESSAGE_CHARS_MAX: usize = 1024;

/// An error message for a response, cut to [`ERROR_MESSAGE_CHARS_MAX`] characters.
pub(crate) fn error_message(message: impl Into<String>) -> StrBytes {
    let mut message = message.into();
    if let Some((cut, _)) = message.char_indices().nth(ERROR_MESSAGE_CHARS_MAX) {
        message.truncate(cut);
        message.push('…');
    }
    StrBytes::from_string(message)
}

/// A response string from text the broker owns.
pub(crate) fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Kafka's error code and message for a refusal by the ACLs.
pub(crate) fn denial(denied: &Denied) -> (i16, Option<StrBytes>) {
    let code = match denied.resource_type {
        ResourceType::Topic => ResponseError::TopicAuthorizationFailed,
        ResourceType::Group => ResponseError::GroupAuthorizationFailed,
        ResourceType::Cluster => ResponseError::ClusterAuthorizationFailed,
    };
    (code.code(), Some(error_message(denied.to_string())))
}

/// The Kafka error code for a storage error.
pub(crate) fn error_code(e: &StorageError) -> i16 {
    match e {
        StorageError::UnknownTopic { .. } | StorageError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        StorageError::Batch(
            BatchError::TooLarge { .. } | BatchError::DecompressedTooLarge { .. },
        ) => ResponseError::MessageTooLarge.code(),
        StorageError::Batch(BatchError::Invalid { .. }) => ResponseError::InvalidRecord.code(),
        StorageError::Batch(_) | StorageError::Corrupt { .. } => {
            ResponseError::CorruptMessage.code()
        }
        StorageError::TooManyPartitions { .. } => ResponseError::PolicyViolation.code(),
        StorageError::InvalidTopicName { .. } => ResponseError::InvalidTopicException.code(),
        StorageError::TopicExists { .. } => ResponseError::TopicAlreadyExists.code(),
        StorageError::InvalidConfig { .. } => ResponseError::InvalidConfig.code(),
        StorageError::PartitionCount { .. } => ResponseError::InvalidPartitions.code(),
        StorageError::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
        StorageError::DuplicateSequence { .. } => ResponseError::DuplicateSequenceNumber.code(),
        StorageError::ProducerFenced { .. } => ResponseError::InvalidProducerEpoch.code(),
        StorageError::Offline { .. }
        | StorageError::Io { .. }
        | StorageError::Failed { .. }
        | StorageError::DiskLow { .. }
        | StorageError::DelayedFull { .. } => ResponseError::KafkaStorageError.code(),
        _ => ResponseError::UnknownServerError.code(),
    }
}

/// Config entries of a request as a map; entries without a value are left out.
pub(crate) fn config_map<'a>(
    entries: impl Iterator<Item = (&'a StrBytes, Option<&'a StrBytes>)>,
) -> BTreeMap<String, String> {
    entries
        .filter_map(|(name, value)| value.map(|v| (name.to_string(), v.to_string())))
        .collect()
}

/// The topic, created on first use when the listener allows it and the caller may create it.
fn topic_or_create(
    shared: &Shared,
    name: &str,
    caller: &Caller,
) -> Result<TopicInfo, StorageError> {
    if let Some(topic) = shared.logs.topic(name)? {
        return Ok(topic);
    }
    if !shared.config.auto_create_topics || caller.check_create_topic(name).is_err() {
        return Err(StorageError::UnknownTopic {
            name: name.to_string(),
        });
    }
    shared
        .logs
        .topic_or_create(name, shared.config.default_partitions, BTreeMap::new())
}

fn metadata(
    shared: &Shared,
    request: MetadataRequest,
    version: i16,
    caller: &Caller,
) -> MetadataResponse {
    let mut response = MetadataResponse::default();
    let brokers = shared.logs.brokers();
    for b in &brokers {
        let mut broker = MetadataResponseBroker::default();
        broker.node_id = BrokerId(b.id);
        broker.host = StrBytes::from_string(b.host.clone());
        broker.port = i32::from(b.port);
        response.brokers.push(broker);
    }
    response.cluster_id = Some(StrBytes::from_static_str(CLUSTER_ID));
    response.controller_id = BrokerId(brokers.first().map_or(NODE_ID, |b| b.id));

    let names: Vec<(String, bool)> = match request.topics {
        // All topics the caller may describe; never auto-created.
        None => match shared.logs.topic_names() {
            Ok(names) => names
                .into_iter()
                .filter(|name| caller.may(Operation::Describe, ResourceType::Topic, name))
                .map(|name| (name, false))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "listing topics for Metadata failed");
                Vec::new()
            }
        },
        Some(topics) => topics
            .into_iter()
            .filter_map(|t| {
                t.name
                    .map(|n| (n.0.to_string(), request.allow_auto_topic_creation))
            })
            .collect(),
    };
    for (name, create) in names {
        let mut topic = MetadataResponseTopic::default();
        topic.name = Some(TopicName(StrBytes::from_string(name.clone())));
        if let Err(denied) = caller.check(Operation::Describe, ResourceType::Topic, &name) {
            topic.error_code = denial(&denied).0;
            response.topics.push(topic);
            continue;
        }
        let found = if create {
            topic_or_create(shared, &name, caller)
        } else {
            shared
                .logs
                .topic(&name)
                .and_then(|t| t.ok_or_else(|| StorageError::UnknownTopic { name: name.clone() }))
        };
        match found {
            Ok(info) => {
                if version >= 10 {
                    topic.topic_id = info.id;
                }
                for p in 0..info.partitions {
                    let mut partition = MetadataResponsePartition::default();
                    let leader = BrokerId(shared.logs.leader(&brokers, &name, p));
                    partition.partition_index = p as i32;
                    partition.leader_id = leader;
                    partition.replica_nodes = vec![leader];
                    partition.isr_nodes = vec![leader];
                    if !shared.logs.readable(&name, p) {
                        partition.error_code = ResponseError::KafkaStorageError.code();
                    }
                    topic.partitions.push(partition);
                }
            }
            Err(e) => {
                tracing::debug!(topic = name, error = %e, "metadata for a missing topic");
                topic.error_code = error_code(&e);
            }
        }
        response.topics.push(topic);
    }
    response
}

fn produce(shared: &Shared, request: ProduceRequest, caller: &Caller) -> ProduceResponse {
    let mut response = ProduceResponse::default();
    let transactional = request.transactional_id.is_some();
    for topic_data in request.topic_data {
        let name = topic_data.name.0.to_string();
        let mut topic_response = TopicProduceResponse::default();
        topic_response.name = topic_data.name.clone();
        let allowed = caller.check(Operation::Write, ResourceType::Topic, &name);
        let meta = match &allowed {
            Ok(()) => topic_or_create(shared, &name, caller),
            Err(_) => Err(StorageError::UnknownTopic { name: name.clone() }),
        };
        for partition_data in topic_data.partition_data {
            let mut p = PartitionProduceResponse::default();
            p.index = partition_data.index;
            p.base_offset = -1;
            p.log_append_time_ms = -1;
            p.log_start_offset = -1;
            let result = match (&meta, partition_data.records) {
                _ if transactional => Err(ResponseError::TransactionalIdAuthorizationFailed.code()),
                _ if allowed.is_err() => Err(ResponseError::TopicAuthorizationFailed.code()),
                (Err(e), _) => Err(error_code(e)),
                (Ok(_), None) => Err(ResponseError::CorruptMessage.code()),
                (Ok(_), Some(records)) => append(shared, &name, partition_data.index, records)
                    .map_err(|e| {
                        p.error_message = Some(error_message(e.to_string()));
                        error_code(&e)
                    }),
            };
            match result {
                Ok((base_offset, log_append_time_ms, log_start_offset)) => {
                    p.base_offset = base_offset;
                    p.log_append_time_ms = log_append_time_ms;
                    p.log_start_offset = log_start_offset;
                }
                Err(code) => p.error_code = code,
            }
            topic_response.partition_responses.push(p);
        }
        response.responses.push(topic_response);
    }
    response
}

/// Appends (waiting until it is durable) or schedules delayed records.
fn append(
    shared: &Shared,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> Result<Appended, StorageError> {
    let partition = u32::try_from(partition).map_err(|_| StorageError::UnknownPartition {
        topic: topic.to_string(),
        partition: u32::MAX,
    })?;
    shared
        .logs
        .append(topic, partition, records)
        .inspect_err(|e| tracing::warn!(topic, partition, error = %e, "produce refused"))
}

/// Answers a fetch, with the record sets a frame may send from their files.
async fn fetch(
    shared: &Arc<Shared>,
    request: FetchRequest,
    caller: &Caller,
) -> (FetchResponse, Vec<FileBytes>) {
    let wait = Duration::from_millis((request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MS_MAX));
    let deadline = Instant::now() + wait;
    let min_bytes = request.min_bytes.max(0) as u64;
    let request = Arc::new(request);
    // Found when the fetch first has to wait: most fetches find their bytes on the first read.
    let mut waits: Option<Vec<Arc<Notify>>> = None;
    loop {
        // Register for wake-ups before reading, so an append between the read and the wait
        // is not missed.
        let notified: Vec<_> = waits
            .iter()
            .flatten()
            .map(|n| Box::pin(n.notified()))
            .collect();
        // Reads map segment files (and check the CRCs of batches not checked yet): on the
        // blocking pool.
        let read = {
            let (shared, request, caller) = (shared.clone(), request.clone(), caller.clone());
            tokio::task::spawn_blocking(move || {
                weir_storage::reactor::blocking(|| fetch_once(&shared, &request, &caller))
            })
            .await
        };
        let fetched = match read {
            Ok(fetched) => fetched,
            Err(e) => {
                tracing::error!(error = %e, "fetch task failed");
                return (FetchResponse::default(), Vec::new());
            }
        };
        let now = Instant::now();
        if fetched.bytes >= min_bytes.max(1) || now >= deadline || min_bytes == 0 {
            return (fetched.response, fetched.lent);
        }
        if waits.is_none() {
            // Read again once registered, before the first wait.
            drop(notified);
            waits = Some(wake_ups(shared, &request).await);
            continue;
        }
        let _waiting = shared.metrics.fetch_waiting();
        let woken = !notified.is_empty()
            && tokio::time::timeout(deadline - now, futures::future::select_all(notified))
                .await
                .is_ok();
        if woken {
            shared.metrics.fetch_woken();
        } else {
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

/// The wake-ups of the partitions a fetch reads, each once and only if it exists: an append
/// elsewhere does not wake the fetch, and the names a client sends add no entry.
async fn wake_ups(shared: &Arc<Shared>, request: &FetchRequest) -> Vec<Arc<Notify>> {
    let read: BTreeSet<(String, u32)> = request
        .topics
        .iter()
        .flat_map(|t| {
            let name: &str = &t.topic.0;
            let partitions = t.partitions.iter();
            partitions
                .filter_map(move |p| Some((name.to_owned(), u32::try_from(p.partition).ok()?)))
        })
        .collect();
    // Whether a partition exists may take a database round trip: on the blocking pool.
    let readable = {
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            weir_storage::reactor::blocking(|| {
                read.into_iter()
                    .filter(|(topic, partition)| shared.logs.readable(topic, *partition))
                    .collect::<Vec<_>>()
            })
        })
        .await
        .unwrap_or_default()
    };
    readable
        .iter()
        .map(|(topic, partition)| shared.appends.of(topic, *partition))
        .collect()
}

/// What one pass over a fetch's partitions found.
struct Fetched {
    response: FetchResponse,
    /// Record bytes the response carries.
    bytes: u64,
    /// Its record sets large enough to be sent from their files.
    lent: Vec<FileBytes>,
}

/// One pass over the requested partitions.
fn fetch_once(shared: &Shared, request: &FetchRequest, caller: &Caller) -> Fetched {
    let mut response = FetchResponse::default();
    let mut budget = (request.max_bytes.max(0) as u64).min(FETCH_BYTES_MAX);
    let mut total = 0u64;
    let mut lent = Vec::new();
    for topic in &request.topics {
        let name = topic.topic.0.to_string();
        let mut topic_response = FetchableTopicResponse::default();
        topic_response.topic = topic.topic.clone();
        topic_response.topic_id = topic.topic_id;
        let allowed = caller.check(Operation::Read, ResourceType::Topic, &name);
        for partition in &topic.partitions {
            let mut p = PartitionData::default();
            p.partition_index = partition.partition;
            p.high_watermark = -1;
            p.last_stable_offset = -1;
            p.log_start_offset = -1;
            if let Err(denied) = &allowed {
                p.error_code = denial(denied).0;
                p.records = Some(Bytes::new());
                topic_response.partitions.push(p);
                continue;
            }
            let read = u32::try_from(partition.partition)
                .map_err(|_| StorageError::UnknownPartition {
                    topic: name.clone(),
                    partition: u32::MAX,
                })
                .and_then(|index| {
                    let Ok(offset) = u64::try_from(partition.fetch_offset) else {
                        let (log_start_offset, high_watermark) =
                            shared.logs.offsets(&name, index)?;
                        return Err(StorageError::OffsetOutOfRange {
                            offset: 0,
                            log_start_offset,
                            high_watermark,
                        });
                    };
                    // The first batch of the response is sent even past the budget, so a
                    // consumer always makes progress; after it, a partition gets only what
                    // fits in what is left (as Kafka does, KIP-74), however often the request
                    // names it.
                    let limit = (partition.partition_max_bytes.max(0) as u64).min(budget);
                    shared.logs.read(&name, index, offset, limit, total == 0)
                });
            match read {
                Ok(read) => {
                    let bytes = read.records;
                    if let (Some(b), Some((file, position))) = (&bytes, read.file)
                        && let Some(held) = shared.metrics.lend_fetch_set()
                    {
                        lent.push(FileBytes {
                            bytes: b.clone(),
                            file,
                            position,
                            _held: held,
                        });
                    }
                    p.high_watermark = read.high_watermark as i64;
                    p.last_stable_offset = read.high_watermark as i64;
                    p.log_start_offset = read.log_start_offset as i64;
                    let len = bytes.as_ref().map_or(0, |b| b.len() as u64);
                    if bytes.is_some() {
                        shared.metrics.consumed(&name, len, read.record_count);
                    }
                    total += len;
                    budget = budget.saturating_sub(len);
                    p.records = Some(bytes.unwrap_or_default());
                }
                Err(e) => {
                    if let StorageError::OffsetOutOfRange {
                        log_start_offset,
                        high_watermark,
                        ..
                    } = &e
                    {
                        p.high_watermark = *high_watermark as i64;
                        p.last_stable_offset = *high_watermark as i64;
                        p.log_start_offset = *log_start_offset as i64;
                    }
                    p.error_code = error_code(&e);
                    p.records = Some(Bytes::new());
                }
            }
            topic_response.partitions.push(p);
        }
        response.responses.push(topic_response);
    }
    Fetched {
        response,
        bytes: total,
        lent,
    }
}

/// Records in whole batches back to back, from their headers.
pub(crate) fn record_count(batches: &[u8]) -> u64 {
    let mut pos = 0;
    let mut records = 0u64;
    while let Ok(h) = weir_storage::batch::BatchHeader::parse(&batches[pos..]) {
        records += h.records();
        pos += h.total_bytes() as usize;
        if pos >= batches.len() {
            break;
        }
    }
    records
}

/// Kafka's special timestamps in ListOffsets.
const LATEST_TIMESTAMP: i64 = -1;
const EARLIEST_TIMESTAMP: i64 = -2;

fn list_offsets(
    shared: &Shared,
    request: ListOffsetsRequest,
    caller: &Caller,
) -> ListOffsetsResponse {
    let mut response = ListOffsetsResponse::default();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut topic_response = ListOffsetsTopicResponse::default();
        topic_response.name = topic.name.clone();
        let allowed = caller.check(Operation::Describe, ResourceType::Topic, &name);
        for partition in topic.partitions {
            let mut p = ListOffsetsPartitionResponse::default();
            p.partition_index = partition.partition_index;
            p.timestamp = -1;
            p.offset = -1;
            if let Err(denied) = &allowed {
                p.error_code = denial(denied).0;
                topic_response.partitions.push(p);
                continue;
            }
            let found = u32::try_from(partition.partition_index)
                .map_err(|_| StorageError::UnknownTopic { name: name.clone() })
                .and_then(|i| match partition.timestamp {
                    LATEST_TIMESTAMP => Ok(Some((shared.logs.offsets(&name, i)?.1, -1))),
                    EARLIEST_TIMESTAMP => Ok(Some((shared.logs.offsets(&name, i)?.0, -1))),
                    ts => shared.logs.offset_at(&name, i, ts),
                });
            match found {
                Ok(Some((offset, timestamp))) => {
                    p.offset = offset as i64;
                    p.timestamp = timestamp;
                }
                Ok(None) => {}
                Err(e) => p.error_code = error_code(&e),
            }
            topic_response.partitions.push(p);
        }
        response.topics.push(topic_response);
    }
    response
}

fn create_topics(
    shared: &Shared,
    request: CreateTopicsRequest,
    version: i16,
    caller: &Caller,
) -> CreateTopicsResponse {
    let mut response = CreateTopicsResponse::default();
    for topic in request.topics {
        let name = topic.name.0.to_string();
        let mut result = CreatableTopicResult::default();
        result.name = topic.name.clone();
        let partitions = if topic.num_partitions == -1 {
            shared.config.default_partitions as i32
        } else {
            topic.num_partitions
        };
        let configs = config_map(topic.configs.iter().map(|c| (&c.name, c.value.as_ref())));
        let outcome = if let Err(denied) = caller.check_create_topic(&name) {
            let (code, _) = denial(&denied);
            Err((code, denied.to_string()))
        } else if partitions < 1 {
            Err((
                ResponseError::InvalidPartitions.code(),
                format!("{partitions} partitions requested, at least 1 needed"),
            ))
        } else if topic.replication_factor > 1 {
            Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "replication factor {} requested, this node has no replicas",
                    topic.replication_factor
                ),
            ))
        } else if request.validate_only {
            check_new_topic(&shared.storage, &name, &configs)
                .map(|()| None)
                .map_err(|e| (error_code(&e), e.to_string()))
        } else {
            shared
                .logs
                .create_topic(&name, partitions as u32, configs)
                .map(Some)
                .map_err(|e| (error_code(&e), e.to_string()))
        };
        match outcome {
            Ok(meta) => {
                if version >= 5 {
                    result.num_partitions = partitions;
                    result.replication_factor = 1;
                }
                if let Some(info) = meta.filter(|_| version >= 7) {
                    result.topic_id = info.id;
                }
            }
            Err((code, message)) => {
                result.error_code = code;
                if version >= 5 {
                    result.num_partitions = -1;
                    result.replication_factor = -1;
                }
                result.error_message = Some(error_message(message));
            }
        }
        response.topics.push(result);
    }
    response
}

/// Hands out a new producer id (epoch 0) for an idempotent producer, never reused across
/// restarts. Transactions are not served: a transactional id is refused.
fn init_producer_id(
    shared: &Shared,
    request: InitProducerIdRequest,
    caller: &Caller,
) -> InitProducerIdResponse {
    let mut response = InitProducerIdResponse::default();
    response.producer_id = ProducerId(-1);
    response.producer_epoch = -1;
    if request.transactional_id.is_some() {
        response.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
        return response;
    }
    if let Err(denied) = caller.check_idempotent_write() {
        response.error_code = denial(&denied).0;
        return response;
    }
    match shared.logs.new_producer_id() {
        Ok(id) => {
            response.producer_id = ProducerId(id);
            response.producer_epoch = 0;
        }
        Err(e) => {
            tracing::error!(error = %e, "allocating a producer id failed");
            response.error_code = error_code(&e);
        }
    }
    response
}
