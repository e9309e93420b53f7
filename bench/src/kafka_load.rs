//! A small Kafka load generator on the `kafka-protocol` crate: produce requests of prebuilt
//! batches with latency per request, and fetch loops that read a partition to its end.
//! It talks to any Kafka-compatible broker, so Weir and its peers are driven the same way.

#![allow(dead_code)] // each benchmark uses its own part of it

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
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

/// What a timed produce load did.
pub struct Produced {
    /// Record-set bytes acknowledged.
    pub bytes: u64,
    pub elapsed: Duration,
    /// Each request's round trip, sorted.
    pub latencies: Vec<Duration>,
}

impl Produced {
    pub fn mb_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// The `p` quantile (0 to 1) of the round trips, in milliseconds.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i].as_secs_f64() * 1e3
    }
}

/// Sends `batch` to each of `partitions` partitions of `topic` on a connection of its own,
/// partition `p` through `addrs[p % addrs.len()]`, one request at a time (each waits for its
/// answer), for `time`.
pub fn produce_for(
    addrs: &[String],
    topic: &str,
    partitions: i32,
    acks: i16,
    batch: &Arc<Bytes>,
    time: Duration,
) -> anyhow::Result<Produced> {
    let start = Instant::now();
    let deadline = start + time;
    let writers: Vec<_> = (0..partitions)
        .map(|p| {
            let addr = addrs[p as usize % addrs.len()].clone();
            let (topic, batch) = (topic.to_string(), batch.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, Vec<Duration>)> {
                let mut c = Connection::open(&addr)?;
                let mut bytes = 0u64;
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    latencies.push(c.produce(&topic, p, acks, &batch)?);
                    bytes += batch.len() as u64;
                }
                Ok((bytes, latencies))
            })
        })
        .collect();
    let mut produced = Produced {
        bytes: 0,
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
    };
    for w in writers {
        let (bytes, l) = w.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
        produced.bytes += bytes;
        produced.latencies.extend(l);
    }
    produced.elapsed = start.elapsed();
    produced.latencies.sort();
    Ok(produced)
}

/// Reads each of `partitions` partitions of `topic` from offset 0 on a connection of its own,
/// partition `p` through `addrs[(p + shift) % addrs.len()]`, until nine tenths of `bytes`
/// (split evenly over the partitions) arrived or `give_up` passed. Returns the bytes read and
/// the time taken.
pub fn consume(
    addrs: &[String],
    shift: usize,
    topic: &str,
    partitions: i32,
    bytes: u64,
    give_up: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let target = bytes / partitions as u64;
    let readers: Vec<_> = (0..partitions)
        .map(|p| {
            let addr = addrs[(p as usize + shift) % addrs.len()].clone();
            let topic = topic.to_string();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut c = Connection::open(&addr)?;
                let (mut bytes, mut offset) = (0u64, 0i64);
                while bytes < target * 9 / 10 && start.elapsed() < give_up {
                    let (b, next) = c.fetch(&topic, p, offset, 8 << 20)?;
                    bytes += b;
                    offset = next;
                }
                Ok(bytes)
            })
        })
        .collect();
    let mut consumed = 0u64;
    for r in readers {
        consumed += r.join().map_err(|_| anyhow::anyhow!("reader panicked"))??;
    }
    Ok((consumed, start.elapsed()))
}
