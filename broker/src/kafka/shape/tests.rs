use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use super::*;

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

/// Encodes `request` at every version the table serves and walks it: every version the crate
/// can encode the request in must walk to exactly its end. Returns how many versions encoded.
fn walks_exactly<T: Encodable>(api: ApiKey, request: &T) -> usize {
    let (min, max) = message(api).expect("served").versions;
    let mut encoded = 0;
    for version in min..=max {
        let mut buf = BytesMut::new();
        if request.encode(&mut buf, version).is_err() {
            continue;
        }
        encoded += 1;
        let body = buf.freeze();
        let mut walk = Walk {
            body: &body,
            at: 0,
            version,
            flexible: version >= message(api).unwrap().flexible_from,
            elements: 0,
        };
        walk.fields(message(api).unwrap().fields)
            .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
        assert_eq!(walk.at, body.len(), "{api:?} v{version} walked short");
    }
    encoded
}

fn tags() -> std::collections::BTreeMap<i32, Bytes> {
    [(7, Bytes::from_static(b"tagged"))].into()
}

#[test]
fn table_serves_the_versions_the_broker_advertises() {
    for (api, m) in &table::MESSAGES {
        assert_eq!(
            crate::kafka::supported_versions(*api),
            Some(m.versions),
            "{api:?}"
        );
    }
    assert_eq!(table::MESSAGES.len(), 31);
}

#[test]
fn default_requests_walk_to_their_end() {
    macro_rules! each {
        ($($api:ident => $ty:ty),* $(,)?) => {$(
            assert!(walks_exactly(ApiKey::$api, &<$ty>::default()) > 0, stringify!($api));
        )*};
    }
    each!(
        Produce => ProduceRequest, Fetch => FetchRequest, ListOffsets => ListOffsetsRequest,
        Metadata => MetadataRequest, ApiVersions => ApiVersionsRequest,
        CreateTopics => CreateTopicsRequest, InitProducerId => InitProducerIdRequest,
        FindCoordinator => FindCoordinatorRequest, JoinGroup => JoinGroupRequest,
        SyncGroup => SyncGroupRequest, Heartbeat => HeartbeatRequest,
        LeaveGroup => LeaveGroupRequest, OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest, ListGroups => ListGroupsRequest,
        DescribeGroups => DescribeGroupsRequest, DeleteGroups => DeleteGroupsRequest,
        OffsetDelete => OffsetDeleteRequest, DeleteTopics => DeleteTopicsRequest,
        CreatePartitions => CreatePartitionsRequest, DescribeConfigs => DescribeConfigsRequest,
        AlterConfigs => AlterConfigsRequest,
        IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
        DescribeCluster => DescribeClusterRequest,
    );
}

#[test]
fn requests_with_nested_arrays_walk_to_their_end() {
    let mut topic = metadata_request::MetadataRequestTopic::default();
    topic.name = Some(TopicName(s("logs")));
    let mut metadata = MetadataRequest::default();
    metadata.topics = Some(vec![topic.clone(), topic]);
    assert!(walks_exactly(ApiKey::Metadata, &metadata) > 0);
    metadata.unknown_tagged_fields = tags();
    assert!(walks_exactly(ApiKey::Metadata, &metadata) > 0);

    let mut partition = produce_request::PartitionProduceData::default();
    partition.index = 3;
    partition.records = Some(Bytes::from_static(b"not a batch, only bytes"));
    let mut topic = produce_request::TopicProduceData::default();
    topic.name = TopicName(s("logs"));
    topic.partition_data = vec![partition.clone(), partition];
    let mut produce = ProduceRequest::default();
    produce.topic_data = vec![topic];
    assert!(walks_exactly(ApiKey::Produce, &produce) > 0);

    let mut partition = fetch_request::FetchPartition::default();
    partition.fetch_offset = 42;
    partition.partition_max_bytes = 1 << 20;
    let mut topic = fetch_request::FetchTopic::default();
    topic.topic = TopicName(s("logs"));
    topic.partitions = vec![partition.clone(), partition];
    let mut fetch = FetchRequest::default();
    fetch.topics = vec![topic];
    assert!(walks_exactly(ApiKey::Fetch, &fetch) > 0);
    let mut forgotten = fetch_request::ForgottenTopic::default();
    forgotten.topic = TopicName(s("old"));
    forgotten.partitions = vec![1, 2, 3];
    fetch.forgotten_topics_data = vec![forgotten];
    fetch.cluster_id = Some(s("weir"));
    assert!(walks_exactly(ApiKey::Fetch, &fetch) > 0);

    let mut partition = offset_commit_request::OffsetCommitRequestPartition::default();
    partition.committed_offset = 7;
    partition.committed_metadata = Some(s("meta"));
    let mut topic = offset_commit_request::OffsetCommitRequestTopic::default();
    topic.name = TopicName(s("logs"));
    topic.partitions = vec![partition];
    let mut commit = OffsetCommitRequest::default();
    commit.group_id = GroupId(s("g"));
    commit.topics = vec![topic];
    assert!(walks_exactly(ApiKey::OffsetCommit, &commit) > 0);

    let mut protocol = join_group_request::JoinGroupRequestProtocol::default();
    protocol.name = s("range");
    protocol.metadata = Bytes::from_static(&[0, 1, 0, 0, 0, 1, 0, 4, b'l', b'o', b'g', b's']);
    let mut join = JoinGroupRequest::default();
    join.protocols = vec![protocol.clone(), protocol];
    assert!(walks_exactly(ApiKey::JoinGroup, &join) > 0);

    let mut assignment = sync_group_request::SyncGroupRequestAssignment::default();
    assignment.member_id = s("m-1");
    assignment.assignment = Bytes::from_static(b"assigned");
    let mut sync = SyncGroupRequest::default();
    sync.assignments = vec![assignment];
    assert!(walks_exactly(ApiKey::SyncGroup, &sync) > 0);

    let mut config = create_topics_request::CreatableTopicConfig::default();
    config.name = s("retention.ms");
    config.value = Some(s("1000"));
    let mut assignment = create_topics_request::CreatableReplicaAssignment::default();
    assignment.broker_ids = vec![BrokerId(0)];
    let mut topic = create_topics_request::CreatableTopic::default();
    topic.name = TopicName(s("logs"));
    topic.num_partitions = 3;
    topic.configs = vec![config];
    topic.assignments = vec![assignment];
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![topic];
    assert!(walks_exactly(ApiKey::CreateTopics, &create) > 0);

    let mut topic = offset_fetch_request::OffsetFetchRequestTopic::default();
    topic.name = TopicName(s("logs"));
    topic.partition_indexes = vec![0, 1, 2];
    let mut fetch_offsets = OffsetFetchRequest::default();
    fetch_offsets.topics = Some(vec![topic]);
    assert!(walks_exactly(ApiKey::OffsetFetch, &fetch_offsets) > 0);
    let mut topics = offset_fetch_request::OffsetFetchRequestTopics::default();
    topics.name = TopicName(s("logs"));
    topics.partition_indexes = vec![4];
    let mut group = offset_fetch_request::OffsetFetchRequestGroup::default();
    group.group_id = GroupId(s("g"));
    group.topics = Some(vec![topics]);
    let mut fetch_groups = OffsetFetchRequest::default();
    fetch_groups.groups = vec![group];
    assert!(walks_exactly(ApiKey::OffsetFetch, &fetch_groups) > 0);

    let mut member = leave_group_request::MemberIdentity::default();
    member.member_id = s("m-1");
    let mut leave = LeaveGroupRequest::default();
    leave.members = vec![member];
    assert!(walks_exactly(ApiKey::LeaveGroup, &leave) > 0);

    let mut resource = describe_configs_request::DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = s("logs");
    resource.configuration_keys = Some(vec![s("retention.ms")]);
    let mut describe = DescribeConfigsRequest::default();
    describe.resources = vec![resource];
    assert!(walks_exactly(ApiKey::DescribeConfigs, &describe) > 0);

    let mut config = incremental_alter_configs_request::AlterableConfig::default();
    config.name = s("retention.ms");
    config.value = Some(s("1000"));
    let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
    resource.resource_name = s("logs");
    resource.configs = vec![config];
    let mut alter = IncrementalAlterConfigsRequest::default();
    alter.resources = vec![resource];
    assert!(walks_exactly(ApiKey::IncrementalAlterConfigs, &alter) > 0);

    let mut config = alter_configs_request::AlterableConfig::default();
    config.name = s("retention.ms");
    let mut resource = alter_configs_request::AlterConfigsResource::default();
    resource.configs = vec![config];
    let mut alter = AlterConfigsRequest::default();
    alter.resources = vec![resource];
    assert!(walks_exactly(ApiKey::AlterConfigs, &alter) > 0);

    let mut partition = list_offsets_request::ListOffsetsPartition::default();
    partition.timestamp = -2;
    let mut topic = list_offsets_request::ListOffsetsTopic::default();
    topic.name = TopicName(s("logs"));
    topic.partitions = vec![partition];
    let mut list = ListOffsetsRequest::default();
    list.topics = vec![topic];
    assert!(walks_exactly(ApiKey::ListOffsets, &list) > 0);

    let mut delete = DeleteTopicsRequest::default();
    delete.topic_names = vec![TopicName(s("logs"))];
    assert!(walks_exactly(ApiKey::DeleteTopics, &delete) > 0);
    let mut state = delete_topics_request::DeleteTopicState::default();
    state.name = Some(TopicName(s("logs")));
    let mut delete = DeleteTopicsRequest::default();
    delete.topics = vec![state];
    assert!(walks_exactly(ApiKey::DeleteTopics, &delete) > 0);

    let mut assignment = create_partitions_request::CreatePartitionsAssignment::default();
    assignment.broker_ids = vec![BrokerId(0)];
    let mut topic = create_partitions_request::CreatePartitionsTopic::default();
    topic.name = TopicName(s("logs"));
    topic.count = 4;
    topic.assignments = Some(vec![assignment]);
    let mut grow = CreatePartitionsRequest::default();
    grow.topics = vec![topic];
    assert!(walks_exactly(ApiKey::CreatePartitions, &grow) > 0);

    let mut partition = offset_delete_request::OffsetDeleteRequestPartition::default();
    partition.partition_index = 1;
    let mut topic = offset_delete_request::OffsetDeleteRequestTopic::default();
    topic.name = TopicName(s("logs"));
    topic.partitions = vec![partition];
    let mut offset_delete = OffsetDeleteRequest::default();
    offset_delete.topics = vec![topic];
    assert!(walks_exactly(ApiKey::OffsetDelete, &offset_delete) > 0);

    let mut groups = DescribeGroupsRequest::default();
    groups.groups = vec![GroupId(s("a")), GroupId(s("b"))];
    assert!(walks_exactly(ApiKey::DescribeGroups, &groups) > 0);
    let mut delete_groups = DeleteGroupsRequest::default();
    delete_groups.groups_names = vec![GroupId(s("a"))];
    assert!(walks_exactly(ApiKey::DeleteGroups, &delete_groups) > 0);
    let mut list_groups = ListGroupsRequest::default();
    list_groups.states_filter = vec![s("Stable")];
    assert!(walks_exactly(ApiKey::ListGroups, &list_groups) > 0);
}

#[test]
fn an_array_claiming_more_elements_than_bytes_is_refused() {
    // Metadata v1: topics array of i32::MAX entries, and nothing after it.
    let err = check(ApiKey::Metadata, 1, &[0x7f, 0xff, 0xff, 0xff]).unwrap_err();
    assert_eq!(
        err,
        ShapeError::ArrayTooLong {
            at: 0,
            count: i32::MAX as u64,
            remaining: 0
        }
    );
    // The same in a flexible version, as a varint.
    let err = check(ApiKey::Metadata, 12, &[0xff, 0xff, 0xff, 0xff, 0x0f]).unwrap_err();
    assert!(matches!(err, ShapeError::ArrayTooLong { .. }), "{err}");
    // Nested: one Produce topic whose partition array claims 1 000 000 entries.
    let mut body = vec![0xff, 0xff, 0, 1, 0, 0, 0x75, 0x30, 0, 0, 0, 1, 0, 1, b't'];
    body.extend_from_slice(&1_000_000i32.to_be_bytes());
    body.extend_from_slice(&[0; 64]);
    let err = check(ApiKey::Produce, 3, &body).unwrap_err();
    assert!(
        matches!(err, ShapeError::ArrayTooLong { at: 15, .. }),
        "{err}"
    );
}

#[test]
fn too_many_elements_in_one_request_are_refused() {
    // DeleteGroups v0 with REQUEST_ELEMENTS_MAX + 1 empty group ids, two bytes each.
    let count = REQUEST_ELEMENTS_MAX as i32 + 1;
    let mut body = count.to_be_bytes().to_vec();
    body.resize(4 + 2 * count as usize, 0);
    let err = check(ApiKey::DeleteGroups, 0, &body).unwrap_err();
    assert_eq!(
        err,
        ShapeError::TooManyElements {
            elements_max: REQUEST_ELEMENTS_MAX
        }
    );
}

#[test]
fn short_and_malformed_fields_are_refused() {
    let check_err = |api, version, body: &[u8], expected: ShapeError| {
        assert_eq!(check(api, version, body).unwrap_err(), expected);
    };
    // A string longer than the body.
    check_err(
        ApiKey::FindCoordinator,
        0,
        &[0, 9, b'g'],
        ShapeError::Truncated { at: 3 },
    );
    // A negative string length other than null.
    check_err(
        ApiKey::FindCoordinator,
        0,
        &[0xff, 0xfe],
        ShapeError::NegativeLength { at: 0, length: -2 },
    );
    // A varint that never ends.
    check_err(
        ApiKey::DescribeCluster,
        0,
        &[0, 0x80, 0x80, 0x80, 0x80, 0x80],
        ShapeError::LongVarint { at: 1 },
    );
    // A version the broker does not serve.
    check_err(
        ApiKey::Fetch,
        13,
        &[],
        ShapeError::Unknown {
            api: ApiKey::Fetch,
            version: 13,
        },
    );
}
