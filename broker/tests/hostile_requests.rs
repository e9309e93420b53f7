//! Requests a hostile client sends the Kafka and HTTP listeners, each with the same input that
//! once killed the node, lost acknowledged data or made it hold too much. After each, the node
//! answers with an error (or closes that one connection) and goes on serving.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{
    Node, create_topic, eventually, kafka_call, kafka_receive, kafka_request, kafka_response,
    kafka_send, started,
};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use serde_json::json;
use weir_broker::cli::Client;
use weir_storage::Compression;
use weir_tests::hostile::{Forge, one_record_batch, zstd_bomb};

fn s(text: &str) -> StrBytes {
    StrBytes::from_string(text.to_string())
}

fn produce(stream: &mut TcpStream, topic: &str, records: Vec<u8>) -> i16 {
    common::produce(stream, topic, 0, Bytes::from(records)).0
}

/// The node still answers ApiVersions on a new connection.
fn still_serving(node: &Node) {
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let response: ApiVersionsResponse = kafka_call(
        &mut stream,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    assert_eq!(response.error_code, 0);
}

/// The value of a metric line `name value` on `/metrics`.
fn metric(node: &Node, name: &str) -> u64 {
    let text = ureq::get(format!("{}/metrics", node.url()))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Reads until the node closes the connection (or a minute passes).
fn closed_by_node(stream: &mut TcpStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn an_array_claiming_two_billion_entries_closes_one_connection_only() {
    let (_dir, node, _) = started(&[]);
    // Metadata v1: api key 3, version 1, correlation id, null client id, then a topics array of
    // 2 147 483 647 entries: 18 bytes in all.
    let mut frame = vec![0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 7, 0xff, 0xff];
    frame.extend_from_slice(&i32::MAX.to_be_bytes());
    // The same in a flexible version (Metadata v12, header v2: an empty tag section).
    let mut flexible = vec![0, 3, 0, 12, 0, 0, 0, 8, 0xff, 0xff, 0];
    flexible.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    let mut flexible_frame = (flexible.len() as u32).to_be_bytes().to_vec();
    flexible_frame.extend_from_slice(&flexible);
    for bytes in [frame, flexible_frame] {
        let mut stream = TcpStream::connect(node.kafka).unwrap();
        stream.write_all(&bytes).unwrap();
        assert!(closed_by_node(&mut stream));
        node.wait_for("malformed request body");
        still_serving(&node);
    }
}

#[test]
fn a_compression_bomb_is_refused_and_reads_go_on() {
    let (_dir, node, c) = started(&[]);
    c.call(
        "POST",
        "/v1/topics",
        Some(&json!({"name": "bombed", "partitions": 1, "configs": {"cleanup.policy": "compact"}})),
    )
    .unwrap();
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    assert_eq!(
        produce(
            &mut stream,
            "bombed",
            one_record_batch(Compression::Zstd, b"before")
        ),
        0
    );
    // 1 GiB of zeros in a few kilobytes: MESSAGE_TOO_LARGE, nothing written.
    let bomb = zstd_bomb(1 << 30);
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    assert_eq!(produce(&mut stream, "bombed", bomb), 10);
    let records = c
        .call(
            "GET",
            "/v1/topics/bombed/records?partition=0&offset=0",
            None,
        )
        .unwrap();
    assert_eq!(records["records"].as_array().unwrap().len(), 1, "{records}");
    assert!(
        node.status_kib("VmHWM:") < 1 << 20,
        "the node's peak memory passed 1 GiB"
    );
    node.stop();
}

#[test]
fn offsets_past_a_segments_u32_range_are_refused_and_survive_a_restart() {
    let (dir, node, _) = started(&[]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    assert_eq!(
        produce(
            &mut stream,
            "wide",
            one_record_batch(Compression::None, b"acked")
        ),
        0
    );
    // Three one-record batches each claiming 2^31 offsets: once acknowledged, then cut by
    // recovery, the high watermark falling back.
    let wide = Forge::new(&one_record_batch(Compression::None, b"v"))
        .last_offset_delta(i32::MAX)
        .build();
    let three = [wide.clone(), wide.clone(), wide].concat();
    assert_eq!(produce(&mut stream, "wide", three), 2, "CORRUPT_MESSAGE");
    node.kill9();
    let node = Node::start(dir.path());
    let c = Client::new(&node.url(), None);
    let topic = c.call("GET", "/v1/topics/wide", None).unwrap();
    assert_eq!(topic["partitions"][0]["high_watermark"], 1, "{topic}");
    node.stop();
}

#[test]
fn a_poison_batch_is_refused_and_every_reader_still_reads() {
    let (_dir, node, _) = started(&[]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let good = one_record_batch(Compression::None, b"good");
    assert_eq!(produce(&mut stream, "poison", good.clone()), 0);
    // A valid CRC over records that are garbage.
    let poison = Forge::new(&good).body(&[0xff; 24]).build();
    assert_eq!(produce(&mut stream, "poison", poison), 2, "CORRUPT_MESSAGE");
    assert_eq!(produce(&mut stream, "poison", good), 0);
    let c = Client::new(&node.url(), None);
    let answer = c
        .call(
            "POST",
            "/v1/sql",
            Some(&json!({"sql": "SELECT count(*) AS n FROM poison"})),
        )
        .unwrap();
    assert_eq!(answer["rows"][0]["n"], 2, "{answer}");
    if common::have("kcat", "apt-get install kcat") {
        let out = common::kcat(&node, &["-C", "-t", "poison", "-o", "beginning", "-e"], "");
        assert_eq!(out, "good\ngood\n");
    }
}

#[test]
fn creations_past_the_node_partition_limit_are_refused_and_empty_partitions_are_cheap() {
    let (dir, node, _) = started(&["--partitions-max", "100"]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let create = |stream: &mut TcpStream, name: &str, partitions: i32, configs: &[(&str, &str)]| {
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(s(name));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        for (k, v) in configs {
            let mut c = CreatableTopicConfig::default();
            c.name = s(k);
            c.value = Some(s(v));
            topic.configs.push(c);
        }
        let mut request = CreateTopicsRequest::default();
        request.topics.push(topic);
        request.timeout_ms = 60_000;
        let response: CreateTopicsResponse = kafka_call(stream, ApiKey::CreateTopics, 5, &request);
        let result = &response.topics[0];
        (
            result.error_code,
            result
                .error_message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
        )
    };
    let started = Instant::now();
    let (code, message) = create(&mut stream, "huge", 10_000, &[]);
    assert_eq!(code, 44, "POLICY_VIOLATION: {message}");
    assert!(message.contains("limit of 100"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!dir.path().join("topics/huge-0").exists());
    let (code, message) = create(
        &mut stream,
        "odd",
        1,
        &[("segment.index.bytes", "99999999999")],
    );
    assert_eq!(code, 40, "INVALID_CONFIG: {message}");
    assert_eq!(create(&mut stream, "small", 4, &[]).0, 0);
    // An empty partition: an empty log and a page per index.
    let partition = dir.path().join("topics/small-0");
    let bytes: u64 = std::fs::read_dir(&partition)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(bytes <= 3 * 4096, "an empty partition holds {bytes} bytes");
    assert_eq!(metric(&node, "weir_partitions"), 4);
    assert_eq!(metric(&node, "weir_partitions_max"), 100);
}

#[test]
fn a_fetch_naming_one_partition_a_hundred_times_stays_within_its_max_bytes() {
    let (_dir, node, c) = started(&[]);
    create_topic(&c, "many", 1);
    let value = "x".repeat(1000);
    for _ in 0..40 {
        let records: Vec<_> = (0..50).map(|_| json!({"value": value})).collect();
        c.call(
            "POST",
            "/v1/topics/many/records",
            Some(&json!({"records": records})),
        )
        .unwrap();
    }
    let mut partition = FetchPartition::default();
    partition.partition_max_bytes = 1 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(s("many"));
    topic.partitions = vec![partition; 100];
    let mut request = FetchRequest::default();
    request.max_bytes = 1 << 20;
    request.max_wait_ms = 0;
    request.topics.push(topic);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let response: FetchResponse = kafka_call(&mut stream, ApiKey::Fetch, 12, &request);
    let total: usize = response.responses[0]
        .partitions
        .iter()
        .map(|p| p.records.as_ref().map_or(0, Bytes::len))
        .sum();
    assert!(total > 0);
    assert!(total <= 1 << 20, "{total} record bytes for max_bytes 1 MiB");
}

#[test]
fn a_client_that_stops_reading_holds_no_more_record_sets_than_the_bound() {
    use weir_broker::metrics::FETCH_LENT_SETS_MAX;
    let (_dir, node, c) = started(&[]);
    create_topic(&c, "big", 1);
    let value = "v".repeat(40_000);
    c.call(
        "POST",
        "/v1/topics/big/records",
        Some(&json!({"records": [{"value": value}]})),
    )
    .unwrap();
    // One fetch naming the partition more times than the bound, each read large enough to be
    // sent from the file; the client sends it and stops reading.
    let mut partition = FetchPartition::default();
    partition.partition_max_bytes = 1 << 20;
    let mut topic = FetchTopic::default();
    topic.topic = TopicName(s("big"));
    topic.partitions = vec![partition; FETCH_LENT_SETS_MAX as usize + 100];
    let mut request = FetchRequest::default();
    request.max_bytes = i32::MAX;
    request.max_wait_ms = 0;
    request.topics.push(topic);
    let body = kafka_request(ApiKey::Fetch, 12, &request);
    let mut stalled = TcpStream::connect(node.kafka).unwrap();
    kafka_send(&mut stalled, &body);
    eventually(
        "the lent record sets at their bound",
        Duration::from_secs(60),
        || metric(&node, "weir_fetch_lent_sets") == FETCH_LENT_SETS_MAX,
    );
    assert_eq!(
        metric(&node, "weir_fetch_lent_sets_max"),
        FETCH_LENT_SETS_MAX
    );
    // Another consumer is served meanwhile, its record set copied.
    let mut other = request.clone();
    other.topics[0].partitions.truncate(1);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let answer: FetchResponse = kafka_call(&mut stream, ApiKey::Fetch, 12, &other);
    let first = answer.responses[0].partitions[0].records.clone().unwrap();
    assert!(first.len() > 40_000);
    // The stalled client reads its answer whole: every naming got the same records.
    let answer: FetchResponse = kafka_response(ApiKey::Fetch, 12, kafka_receive(&mut stalled));
    let partitions = &answer.responses[0].partitions;
    assert_eq!(partitions.len(), FETCH_LENT_SETS_MAX as usize + 100);
    assert!(
        partitions
            .iter()
            .all(|p| p.records.as_ref() == Some(&first))
    );
    eventually(
        "the lent record sets released",
        Duration::from_secs(60),
        || metric(&node, "weir_fetch_lent_sets") == 0,
    );
}

#[test]
fn a_long_poll_wakes_only_for_the_partitions_it_reads() {
    let (_dir, node, c) = started(&[]);
    create_topic(&c, "quiet", 2);
    create_topic(&c, "busy", 1);
    let kafka = node.kafka;
    let long_poll = |max_wait_ms: i32| {
        std::thread::spawn(move || {
            let mut partition = FetchPartition::default();
            partition.partition_max_bytes = 1 << 20;
            let mut topic = FetchTopic::default();
            topic.topic = TopicName(s("quiet"));
            topic.partitions = vec![partition];
            let mut request = FetchRequest::default();
            request.max_bytes = 1 << 20;
            request.min_bytes = 1;
            request.max_wait_ms = max_wait_ms;
            request.topics.push(topic);
            let mut stream = TcpStream::connect(kafka).unwrap();
            let started = Instant::now();
            let response: FetchResponse = kafka_call(&mut stream, ApiKey::Fetch, 12, &request);
            let records = response.responses[0].partitions[0].records.clone();
            (records.map_or(0, |r| r.len()), started.elapsed())
        })
    };
    let post = |topic: &str, partition: u32| {
        let body = json!({"records": [{"value": "x", "partition": partition}]});
        c.call("POST", &format!("/v1/topics/{topic}/records"), Some(&body))
            .unwrap();
    };
    let waiting = |node: &Node| {
        eventually("the fetch waits", Duration::from_secs(10), || {
            metric(node, "weir_fetches_waiting") == 1
        })
    };

    // Appends to another topic and to another partition of the one read wake nothing.
    let fetch = long_poll(1500);
    waiting(&node);
    for _ in 0..20 {
        post("busy", 0);
        post("quiet", 1);
    }
    assert_eq!(fetch.join().unwrap().0, 0);
    assert_eq!(metric(&node, "weir_fetch_wakeups_total"), 0);

    // An append to the partition read answers the fetch then, not at its deadline.
    let fetch = long_poll(60_000);
    waiting(&node);
    post("quiet", 0);
    let (bytes, elapsed) = fetch.join().unwrap();
    assert!(
        bytes > 0 && elapsed < Duration::from_secs(30),
        "{bytes} B after {elapsed:?}"
    );
    assert_eq!(metric(&node, "weir_fetch_wakeups_total"), 1);
    assert_eq!(metric(&node, "weir_fetches_waiting"), 0);
}

#[test]
fn join_group_metadata_past_its_bound_is_refused() {
    let (_dir, node, _) = started(&[]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let mut protocol = JoinGroupRequestProtocol::default();
    protocol.name = s("range");
    protocol.metadata = Bytes::from(vec![0u8; 50 << 20]);
    let mut request = JoinGroupRequest::default();
    request.group_id = GroupId(s("heavy"));
    request.session_timeout_ms = 30_000;
    request.rebalance_timeout_ms = 30_000;
    request.protocol_type = s("consumer");
    request.protocols.push(protocol);
    let response: JoinGroupResponse = kafka_call(&mut stream, ApiKey::JoinGroup, 3, &request);
    assert_eq!(response.error_code, 81, "GROUP_MAX_SIZE_REACHED");
    assert_eq!(metric(&node, "weir_groups_metadata_bytes"), 0);
    still_serving(&node);
}

#[test]
fn unfinished_frames_hold_no_more_than_the_request_memory() {
    let (_dir, node, _) = started(&["--request-memory-mib", "64"]);
    // Twenty connections each announce a 32 MiB frame and send 1 MiB of it.
    let chunk = vec![0u8; 1 << 20];
    let open: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(node.kafka).unwrap();
            stream.write_all(&(32u32 << 20).to_be_bytes()).unwrap();
            stream.write_all(&chunk).unwrap();
            stream
        })
        .collect();
    eventually(
        "two frames hold the request memory",
        Duration::from_secs(30),
        || metric(&node, "weir_request_memory_bytes") == 64 << 20,
    );
    assert!(
        node.status_kib("VmRSS:") < 400 << 10,
        "{} KiB resident",
        node.status_kib("VmRSS:")
    );
    drop(open);
    eventually(
        "the frames of closed connections give their memory back",
        Duration::from_secs(30),
        || metric(&node, "weir_request_memory_bytes") == 0,
    );
    still_serving(&node);
}

#[test]
fn tiny_segments_keep_open_files_within_the_budget() {
    let (_dir, node, c) = started(&["--open-segments-max", "16"]);
    c.call(
        "POST",
        "/v1/topics",
        Some(&json!({"name": "tiny", "partitions": 1, "configs": {"segment.bytes": "1024"}})),
    )
    .unwrap();
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let value = vec![b'v'; 600];
    for _ in 0..200 {
        assert_eq!(
            produce(
                &mut stream,
                "tiny",
                one_record_batch(Compression::None, &value)
            ),
            0
        );
    }
    let fds = std::fs::read_dir(format!("/proc/{}/fd", node.child.id()))
        .unwrap()
        .count();
    assert!(fds < 120, "{fds} open files for 200 segments");
    assert!(metric(&node, "weir_open_segments") <= 16);
    // Every segment still reads, its files opened again on demand.
    let answer = c
        .call(
            "POST",
            "/v1/sql",
            Some(&json!({"sql": "SELECT count(*) AS n FROM tiny"})),
        )
        .unwrap();
    assert_eq!(answer["rows"][0]["n"], 200, "{answer}");
    assert!(metric(&node, "weir_open_segments") <= 16);
    assert_eq!(
        produce(
            &mut stream,
            "other",
            one_record_batch(Compression::None, b"fine")
        ),
        0
    );
}

#[test]
fn a_topic_name_of_32767_characters_gets_an_error_answer() {
    let (_dir, node, _) = started(&[]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let name = "n".repeat(32_767);
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(s(&name));
    topic.num_partitions = 1;
    topic.replication_factor = 1;
    let mut request = CreateTopicsRequest::default();
    request.topics.push(topic);
    let response: CreateTopicsResponse = kafka_call(&mut stream, ApiKey::CreateTopics, 5, &request);
    assert_eq!(response.topics[0].error_code, 17, "INVALID_TOPIC_EXCEPTION");
    let message = response.topics[0].error_message.as_ref().unwrap();
    assert!(message.len() < 2048, "{} bytes of message", message.len());
    // The same connection goes on.
    let mut metadata = MetadataRequest::default();
    let mut wanted = metadata_request::MetadataRequestTopic::default();
    wanted.name = Some(TopicName(s(&name)));
    metadata.topics = Some(vec![wanted]);
    metadata.allow_auto_topic_creation = true;
    let response: MetadataResponse = kafka_call(&mut stream, ApiKey::Metadata, 9, &metadata);
    assert_eq!(response.topics[0].error_code, 17);
}

/// The error code of setting `key=value` on the existing topic `r` through each Kafka path:
/// CreateTopics (a new topic), AlterConfigs, IncrementalAlterConfigs.
fn kafka_config_codes(stream: &mut TcpStream, key: &str, value: &str) -> [i16; 3] {
    let mut topic = CreatableTopic::default();
    topic.name = TopicName(s("fresh"));
    topic.num_partitions = 1;
    topic.replication_factor = 1;
    let mut c = CreatableTopicConfig::default();
    c.name = s(key);
    c.value = Some(s(value));
    topic.configs.push(c);
    let mut create = CreateTopicsRequest::default();
    create.topics.push(topic);
    let created: CreateTopicsResponse = kafka_call(stream, ApiKey::CreateTopics, 5, &create);

    let mut config = alter_configs_request::AlterableConfig::default();
    config.name = s(key);
    config.value = Some(s(value));
    let mut resource = alter_configs_request::AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = s("r");
    resource.configs.push(config);
    let mut alter = AlterConfigsRequest::default();
    alter.resources.push(resource);
    let altered: AlterConfigsResponse = kafka_call(stream, ApiKey::AlterConfigs, 1, &alter);

    let mut config = incremental_alter_configs_request::AlterableConfig::default();
    config.name = s(key);
    config.value = Some(s(value));
    let mut resource = incremental_alter_configs_request::AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = s("r");
    resource.configs.push(config);
    let mut incremental = IncrementalAlterConfigsRequest::default();
    incremental.resources.push(resource);
    let incremented: IncrementalAlterConfigsResponse =
        kafka_call(stream, ApiKey::IncrementalAlterConfigs, 1, &incremental);
    [
        created.topics[0].error_code,
        altered.responses[0].error_code,
        incremented.responses[0].error_code,
    ]
}

#[test]
fn bad_config_values_are_refused_on_every_path() {
    let (_dir, node, c) = started(&[]);
    create_topic(&c, "r", 1);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    for (key, value) in [
        // Past i64::MAX these used to wrap to -1 and delete or roll everything.
        ("retention.ms", "18446744073709551615"),
        ("segment.ms", "18446744073709551615"),
        ("segment.index.bytes", "99999999999"),
        // SQL's keys, checked by SQL wherever they are set.
        ("value.schema", "host NOTATYPE"),
        ("value.format", "xml"),
        // A schema is read from JSON values: without value.format=json it would be ignored.
        ("value.schema", "host TEXT"),
    ] {
        let err = c
            .call(
                "POST",
                "/v1/topics",
                Some(&json!({"name": "h", "partitions": 1, "configs": {key: value}})),
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("400") && err.contains(key),
            "HTTP {key}={value}: {err}"
        );
        let cli = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args([
                "topic",
                "create",
                "cli",
                "--config",
                &format!("{key}={value}"),
            ])
            .args(["--server", &node.url()])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&cli.stderr);
        assert!(
            !cli.status.success() && stderr.contains(key),
            "CLI {key}: {stderr}"
        );
        assert_eq!(
            kafka_config_codes(&mut stream, key, value),
            [40; 3],
            "INVALID_CONFIG from CreateTopics, AlterConfigs, IncrementalAlterConfigs: {key}"
        );
    }
    let topics = c.call("GET", "/v1/topics", None).unwrap();
    assert_eq!(topics.as_array().unwrap().len(), 1, "{topics}");
}

#[test]
fn http_connections_past_the_limit_are_answered_503_and_counted() {
    let (_dir, node, _) = started(&["--http-connections-max", "3"]);
    // Three connections, each answered once and kept open.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(node.http).unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: weir\r\n\r\n")
                .unwrap();
            let mut answer = [0u8; 12];
            stream.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"HTTP/1.1 200");
            stream
        })
        .collect();
    let mut extra = TcpStream::connect(node.http).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("--http-connections-max"), "{answer}");
    drop(held);
    // Until the node sees the held connections closed, a new one is refused too.
    let mut refused_while_closing = 0;
    eventually(
        "the held connections close",
        Duration::from_secs(10),
        || match ureq::get(format!("{}/healthz", node.url())).call() {
            Ok(_) => true,
            Err(ureq::Error::StatusCode(503)) => {
                refused_while_closing += 1;
                false
            }
            Err(e) => panic!("GET /healthz: {e}"),
        },
    );
    assert_eq!(
        metric(&node, "weir_http_connections_refused_total"),
        1 + refused_while_closing
    );
    assert_eq!(metric(&node, "weir_http_connections_max"), 3);
    still_serving(&node);
}

#[test]
fn a_refused_plugin_leaves_no_compiled_file() {
    let (dir, node, _) = started(&[]);
    let module = weir_tests::wasm::abi_module(99, "i64.const 0").unwrap();
    let response = ureq::put(format!("{}/v1/plugins/odd", node.url()))
        .config()
        .http_status_as_error(false)
        .build()
        .send(&module[..])
        .unwrap();
    assert_eq!(response.status(), 400);
    let cache = dir.path().join("plugin-cache");
    let left = std::fs::read_dir(&cache).map_or(0, |d| d.count());
    assert_eq!(left, 0, "files left in {}", cache.display());
}

#[test]
fn connections_past_the_limit_are_closed_on_accept_and_counted() {
    let (_dir, node, _) = started(&["--connections-max", "3"]);
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(node.kafka).unwrap())
        .collect();
    eventually("three connections held", Duration::from_secs(10), || {
        metric(&node, "weir_connections") == 3
    });
    let mut extra = TcpStream::connect(node.kafka).unwrap();
    assert!(closed_by_node(&mut extra));
    assert_eq!(metric(&node, "weir_connections_refused_total"), 1);
    assert_eq!(metric(&node, "weir_connections_max"), 3);
    drop(held);
    eventually(
        "the held connections close",
        Duration::from_secs(10),
        || metric(&node, "weir_connections") == 0,
    );
    still_serving(&node);
}

#[test]
fn below_the_free_space_mark_produce_is_refused_reads_go_on_and_health_says_so() {
    let dir = tempfile::tempdir().unwrap();
    {
        let node = Node::start(dir.path());
        let mut stream = TcpStream::connect(node.kafka).unwrap();
        let batch = one_record_batch(Compression::None, b"kept");
        assert_eq!(produce(&mut stream, "full", batch), 0);
        node.stop();
    }
    // A mark no disk can meet: the node serves, but cannot write.
    let node = Node::start_with(dir.path(), &["--disk-free-min-mib", "1000000000"]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    let batch = one_record_batch(Compression::None, b"refused");
    assert_eq!(
        produce(&mut stream, "full", batch),
        56,
        "KAFKA_STORAGE_ERROR"
    );
    let health = ureq::get(format!("{}/healthz", node.url()))
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .unwrap();
    assert_eq!(health.status(), 503);
    let body: serde_json::Value =
        serde_json::from_str(&health.into_body().read_to_string().unwrap()).unwrap();
    assert_eq!(body["status"], "cannot_write", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("low-water mark"));
    let c = Client::new(&node.url(), None);
    let records = c
        .call("GET", "/v1/topics/full/records?partition=0&offset=0", None)
        .unwrap();
    assert_eq!(records["records"][0]["value"], "kept", "{records}");
}
