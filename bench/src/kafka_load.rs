//! A small Kafka load generator on the `kafka-protocol` crate: produce requests of prebuilt
//! batches with latency per request, and fetch loops that read a partition to its end.
//! It talks to any Kafka-compatible broker, so Weir and its peers are driven the same way.

#![allow(dead_code)] // each benchmark uses its own part of it

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

const PRODUCE_VERSION: i16 = 7;
const FETCH_VERSION: i16 = 11;
const CREATE_TOPICS_VERSION: i16 = 4;

/// One connection, one request at a time.
pub struct Connection {
    stream: TcpStream,
    correlation: i32,
    /// Every response is read into this one buffer (taken back once the last response is
    /// dropped), so a fetch loop does not map and fault in fresh pages for each response, as a
    /// real consumer's buffers do not.
    buffer: BytesMut,
}

impl Connection {
    pub fn open(addr: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Connection {
            stream,
            correlation: 0,
            buffer: BytesMut::new(),
        })
    }

    fn round_trip<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> anyhow::Result<Resp> {
        self.correlation += 1;
        let mut header = RequestHeader::default();
        header.request_api_key = key as i16;
        header.request_api_version = version;
        header.correlation_id = self.correlation;
        header.client_id = Some(StrBytes::from_static_str("weir-bench"));
        let mut body = BytesMut::new();
        header.encode(&mut body, key.request_header_version(version))?;
        request.encode(&mut body, version)?;
        let mut frame = (body.len() as i32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        self.stream.write_all(&frame)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        self.buffer.clear();
        self.buffer
            .resize(i32::from_be_bytes(size).max(0) as usize, 0);
        self.stream.read_exact(&mut self.buffer)?;
        let mut response = self.buffer.split().freeze();
        let header = ResponseHeader::decode(&mut response, key.response_header_version(version))?;
        if header.correlation_id != self.correlation {
            bail!(
                "correlation id {} for request {}",
                header.correlation_id,
                self.correlation
            );
        }
        Resp::decode(&mut response, version)
    }

    pub fn create_topic(&mut self, name: &str, partitions: i32) -> anyhow::Result<()> {
        let mut topic = CreatableTopic::default();
        topic.name = TopicName(StrBytes::from_string(name.to_string()));
        topic.num_partitions = partitions;
        topic.replication_factor = 1;
        let mut request = CreateTopicsRequest::default();
        request.topics.push(topic);
        request.timeout_ms = 30_000;
        let response: CreateTopicsResponse =
            self.round_trip(ApiKey::CreateTopics, CREATE_TOPICS_VERSION, &request)?;
        for t in response.topics {
            // 36: the topic exists already, fine for a rerun.
            if t.error_code != 0 && t.error_code != 36 {
                bail!(
                    "creating {name}: error {} {:?}",
                    t.error_code,
                    t.error_message
                );
            }
        }
        Ok(())
    }

    /// Sends one produce request with `batch` for `partition`; returns the round-trip time.
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        acks: i16,
        batch: &Bytes,
    ) -> anyhow::Result<Duration> {
        let mut data = PartitionProduceData::default();
        data.index = partition;
        data.records = Some(batch.clone());
        let mut topic_data = TopicProduceData::default();
        topic_data.name = TopicName(StrBytes::from_string(topic.to_string()));
        topic_data.partition_data.push(data);
        let mut request = ProduceRequest::default();
        request.acks = acks;
        request.timeout_ms = 30_000;
        request.topic_data.push(topic_data);
        let start = Instant::now();
        let response: ProduceResponse =
            self.round_trip(ApiKey::Produce, PRODUCE_VERSION, &request)?;
        let elapsed = start.elapsed();
        for t in &response.responses {
            for p in &t.partition_responses {
                if p.error_code != 0 {
                    bail!("produce to {topic}-{partition}: error {}", p.error_code);
                }
            }
        }
        Ok(elapsed)
    }

    /// Fetches `partition` from `offset`; returns record bytes and the offset after them.
    pub fn fetch(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        bytes_max: i32,
    ) -> anyhow::Result<(u64, i64)> {
        let mut p = FetchPartition::default();
        p.partition = partition;
        p.fetch_offset = offset;
        p.partition_max_bytes = bytes_max;
        let mut t = FetchTopic::default();
        t.topic = TopicName(StrBytes::from_string(topic.to_string()));
        t.partitions.push(p);
        let mut request = FetchRequest::default();
        request.max_wait_ms = 100;
        request.min_bytes = 1;
        request.max_bytes = bytes_max;
        request.topics.push(t);
        let response: FetchResponse = self.round_trip(ApiKey::Fetch, FETCH_VERSION, &request)?;
        let mut bytes = 0u64;
        let mut next = offset;
        for t in response.responses {
            for p in t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "fetch {topic}-{partition} at {offset}: error {}",
                        p.error_code
                    );
                }
                let Some(records) = p.records else { continue };
                bytes += records.len() as u64;
                let mut pos = 0;
                // Whole batches; a truncated last one is read again next time.
                while let Ok(h) = weir_storage::batch::BatchHeader::parse(&records[pos..]) {
                    if pos + h.total_bytes() as usize > records.len() {
                        break;
                    }
                    next = next.max(h.last_offset() + 1);
                    pos += h.total_bytes() as usize;
                    if pos >= records.len() {
                        break;
                    }
                }
            }
        }
        Ok((bytes, next))
    }
}
