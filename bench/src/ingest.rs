//! Ingestion benchmark: Prometheus remote write and OTLP/HTTP logs into one node, beside the
//! Kafka produce path carrying the same records (the ceiling of this node on this machine) and
//! the loopback limit, measured in one run.
//!
//! ```sh
//! cargo build --release --bin weir --bin bench-ingest && \
//!   target/release/bench-ingest [--seconds 5] [--clients 4]
//! ```
//!
//! Each client sends one request at a time for a fixed time: remote write requests of 2 000
//! series with one sample each (snappy-compressed protobuf, as Prometheus sends them), OTLP
//! export requests of 1 000 log records (protobuf), and Kafka produce requests of one batch of
//! the records those requests become (the same JSON values and keys). Every topic has 4
//! partitions; each Kafka client writes its own.
//!
//! Then delayed delivery: `--delayed` records (1 000 000) produced over Kafka in batches of
//! 1 000, each with `weir-deliver-at` spread over 20 s that start once all are scheduled, beside
//! the same records produced without a due time; the node's memory with all of them pending;
//! and how late each was appended (the topic stamps the append time) against its due time.

mod kafka_load;
mod loopback;
mod ports;
mod proc_status;
mod weir_node;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use kafka_load::Connection;
use prost::Message as _;
use serde_json::json;
use weir_broker::http::otlp::proto;
use weir_broker::http::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use weir_node::Node;
use weir_storage::delay::DELIVER_AT_HEADER;
use weir_storage::{BatchBuilder, Compression, Header, NewRecord, now_ms};

const SERIES_PER_REQUEST: usize = 2_000;
const LOGS_PER_REQUEST: usize = 1_000;
const PARTITIONS: i32 = 4;
const T0: i64 = 1_767_225_600_000;

struct Args {
    seconds: u64,
    clients: usize,
    delayed: usize,
    weir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 5,
        clients: 4,
        delayed: 1_000_000,
        weir: PathBuf::from("target/release/weir"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse()?,
            "--clients" => args.clients = value.parse()?,
            "--delayed" => args.delayed = value.parse()?,
            "--weir" => args.weir = PathBuf::from(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

/// What a workload sends: its request bodies (one per client), the records each becomes, and
/// how to send one.
struct Load {
    name: &'static str,
    records_per_request: usize,
    bytes_per_request: usize,
}

struct Outcome {
    records_per_s: f64,
    body_mb_s: f64,
}

/// Runs `send` from `clients` threads for `seconds`; each call sends one request.
fn drive(
    clients: usize,
    seconds: u64,
    load: &Load,
    send: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<Outcome> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let requests: Vec<anyhow::Result<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|client| {
                let send = &send;
                s.spawn(move || -> anyhow::Result<u64> {
                    let mut sent = 0;
                    while Instant::now() < deadline {
                        send(client)?;
                        sent += 1;
                    }
                    Ok(sent)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0;
    for r in requests {
        total += r?;
    }
    Ok(Outcome {
        records_per_s: (total as usize * load.records_per_request) as f64 / elapsed,
        body_mb_s: (total as usize * load.bytes_per_request) as f64 / elapsed / 1e6,
    })
}

/// A remote write request of one sample per series, and the (key, JSON value) records it
/// becomes.
fn remote_write_request(client: usize) -> (Vec<u8>, Vec<(String, String)>) {
    let mut request = WriteRequest::default();
    let mut records = Vec::new();
    for i in 0..SERIES_PER_REQUEST {
        let labels = [
            ("__name__", format!("http_requests_total_{}", i % 50)),
            ("code", ["200", "404", "500"][i % 3].to_string()),
            ("instance", format!("host-{client}-{}:9100", i / 50)),
            ("job", "bench".to_string()),
        ];
        let value = (i * 7) as f64;
        let timestamp = T0 + i as i64;
        let key = format!(
            "{}{{code=\"{}\",instance=\"{}\",job=\"{}\"}}",
            labels[0].1, labels[1].1, labels[2].1, labels[3].1
        );
        let json = json!({"name": labels[0].1, "labels": {"code": labels[1].1,
            "instance": labels[2].1, "job": labels[3].1}, "value": value, "timestamp": timestamp});
        records.push((key, json.to_string()));
        request.timeseries.push(TimeSeries {
            labels: labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.to_string(),
                    value: value.clone(),
                })
                .collect(),
            samples: vec![Sample { value, timestamp }],
        });
    }
    let body = snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .unwrap_or_default();
    (body, records)
}

/// An OTLP logs export request of `LOGS_PER_REQUEST` records, and the JSON records it becomes.
fn otlp_logs_request(client: usize) -> (Vec<u8>, Vec<(String, String)>) {
    let text = |s: &str| proto::AnyValue {
        value: Some(proto::Value::String(s.to_string())),
    };
    let attribute = |key: &str, value: proto::AnyValue| proto::KeyValue {
        key: key.to_string(),
        value: Some(value),
    };
    let mut logs = Vec::new();
    let mut records = Vec::new();
    for i in 0..LOGS_PER_REQUEST {
        let body = format!(
            "GET /api/orders/{i} answered 200 in {} ms for client {client}",
            i % 97
        );
        let timestamp = T0 + i as i64;
        logs.push(proto::LogRecord {
            time_unix_nano: timestamp as u64 * 1_000_000,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(text(&body)),
            attributes: vec![
                attribute("http.route", text("/api/orders/{id}")),
                attribute(
                    "http.status_code",
                    proto::AnyValue {
                        value: Some(proto::Value::Int(200)),
                    },
                ),
            ],
            ..Default::default()
        });
        let json = json!({"service.name": "orders", "host.name": format!("host-{client}"),
            "scope.name": "bench", "http.route": "/api/orders/{id}", "http.status_code": 200,
            "timestamp": timestamp, "severity_text": "INFO", "severity_number": 9, "body": body});
        records.push((String::new(), json.to_string()));
    }
    let request = proto::ExportLogsServiceRequest {
        resource_logs: vec![proto::ResourceLogs {
            resource: Some(proto::Resource {
                attributes: vec![
                    attribute("service.name", text("orders")),
                    attribute("host.name", text(&format!("host-{client}"))),
                ],
            }),
            scope_logs: vec![proto::ScopeLogs {
                scope: Some(proto::InstrumentationScope {
                    name: "bench".into(),
                    ..Default::default()
                }),
                log_records: logs,
            }],
        }],
    };
    (request.encode_to_vec(), records)
}

/// One Kafka record batch of `records`.
fn batch(records: &[(String, String)]) -> anyhow::Result<Bytes> {
    batch_with(records, |_| Vec::new())
}

/// One Kafka record batch of `records`, record `i` with the headers `headers(i)`.
fn batch_with(
    records: &[(String, String)],
    headers: impl Fn(usize) -> Vec<Header>,
) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new(Compression::None);
    for (i, (key, value)) in records.iter().enumerate() {
        b.push(NewRecord {
            timestamp: T0 + i as i64,
            key: (!key.is_empty()).then(|| Bytes::from(key.clone())),
            value: Some(Bytes::from(value.clone())),
            headers: headers(i),
        });
    }
    Ok(b.build()?)
}

fn post(
    agent: &ureq::Agent,
    url: &str,
    content_type: &str,
    encoding: Option<&str>,
    body: &[u8],
) -> anyhow::Result<()> {
    let mut request = agent.post(url).header("Content-Type", content_type);
    if let Some(encoding) = encoding {
        request = request.header("Content-Encoding", encoding);
    }
    let response = request.send(body)?;
    if !response.status().is_success() {
        bail!("{url}: {}", response.status());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let loopback = loopback::best_of_three()?;
    println!("loopback (iperf3, one TCP stream, best of 3): {loopback:.0} MB/s");
    println!(
        "{} clients, one request in flight each, {} s a case; topics of {PARTITIONS} partitions",
        args.clients, args.seconds
    );
    println!();
    let node = Node::start(&args.weir, &["--default-partitions", "4"])?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut kafka = Connection::open(&node.kafka)?;
    for topic in ["kafka-metrics", "kafka-logs"] {
        kafka.create_topic(topic, PARTITIONS)?;
    }
    let metrics: Vec<_> = (0..args.clients).map(remote_write_request).collect();
    let logs: Vec<_> = (0..args.clients).map(otlp_logs_request).collect();

    println!(
        "| path | records a request | request body KB | records/s | body MB/s | records/s ÷ Kafka produce of the same records | body MB/s ÷ loopback |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (name, requests, topic, url, content_type, encoding) in [
        (
            "Prometheus remote write (snappy protobuf)",
            &metrics,
            "kafka-metrics",
            format!("{}/api/v1/write", node.http),
            "application/x-protobuf",
            Some("snappy"),
        ),
        (
            "OTLP/HTTP logs (protobuf)",
            &logs,
            "kafka-logs",
            format!("{}/v1/logs", node.http),
            "application/x-protobuf",
            None,
        ),
    ] {
        let load = Load {
            name,
            records_per_request: requests[0].1.len(),
            bytes_per_request: requests[0].0.len(),
        };
        let ingest = drive(args.clients, args.seconds, &load, |client| {
            post(&agent, &url, content_type, encoding, &requests[client].0)
        })?;
        let batches: Vec<Bytes> = requests
            .iter()
            .map(|(_, records)| batch(records))
            .collect::<anyhow::Result<_>>()?;
        let kafka_load = Load {
            name: "Kafka produce",
            records_per_request: load.records_per_request,
            bytes_per_request: batches[0].len(),
        };
        let connections: Vec<std::sync::Mutex<Connection>> = (0..args.clients)
            .map(|_| Connection::open(&node.kafka).map(std::sync::Mutex::new))
            .collect::<anyhow::Result<_>>()?;
        let produce = drive(args.clients, args.seconds, &kafka_load, |client| {
            let mut connection = connections[client]
                .lock()
                .map_err(|_| anyhow::anyhow!("a client panicked"))?;
            connection.produce(topic, client as i32 % PARTITIONS, 1, &batches[client])?;
            Ok(())
        })?;
        for (label, outcome, load) in [
            (load.name, &ingest, &load),
            ("Kafka produce, same records", &produce, &kafka_load),
        ] {
            println!(
                "| {label} | {} | {:.0} | {:.0} | {:.1} | {:.2} | {:.3} |",
                load.records_per_request,
                load.bytes_per_request as f64 / 1e3,
                outcome.records_per_s,
                outcome.body_mb_s,
                outcome.records_per_s / produce.records_per_s,
                outcome.body_mb_s / loopback
            );
        }
    }
    let pid = node.child.id().to_string();
    println!();
    println!(
        "node RSS after the run: {:.0} MiB (peak {:.0} MiB)",
        proc_status::memory_mib(&pid, "VmRSS"),
        proc_status::memory_mib(&pid, "VmHWM")
    );
    delayed_delivery(&args, &node)
}

/// Records a delayed-delivery batch holds.
const DELAYED_BATCH_RECORDS: usize = 1_000;
/// Due times of the delayed records spread over this long.
const DELAYED_SPREAD_MS: i64 = 20_000;

/// Schedules `args.delayed` records for delivery 20 s apart at most, beside the same records
/// produced at once, then waits for them and reports how late they came.
fn delayed_delivery(args: &Args, node: &Node) -> anyhow::Result<()> {
    let pid = node.child.id().to_string();
    let (topic, ceiling_topic) = ("delayed", "undelayed");
    for name in [topic, ceiling_topic] {
        node.call(
            "POST",
            "/v1/topics",
            json!({
                "name": name,
                "partitions": PARTITIONS,
                "configs": { "message.timestamp.type": "LogAppendTime" },
            }),
        )?;
    }
    let batches = args.delayed.div_ceil(DELAYED_BATCH_RECORDS);
    let total = (batches * DELAYED_BATCH_RECORDS) as i64;
    // The ceiling first, at its pace the due times start once scheduling is surely over.
    let values = |b: usize| -> Vec<(String, String)> {
        (0..DELAYED_BATCH_RECORDS)
            .map(|i| {
                let n = b * DELAYED_BATCH_RECORDS + i;
                let value = json!({"job": n, "kind": "reminder", "user": format!("u{}", n % 9973)});
                (format!("{:013}", 0), value.to_string())
            })
            .collect()
    };
    let undelayed: Vec<Bytes> = (0..batches)
        .map(|b| batch(&values(b)))
        .collect::<anyhow::Result<_>>()?;
    let load = Load {
        name: "Kafka produce, same records, no due time",
        records_per_request: DELAYED_BATCH_RECORDS,
        bytes_per_request: undelayed[0].len(),
    };
    let ceiling = send_all(args.clients, node, ceiling_topic, &undelayed, &load)?;
    drop(undelayed);
    let schedule_estimate_ms = (args.delayed as f64 / ceiling.records_per_s * 1e3) as i64;
    let due_from = now_ms() + 10_000 + 20 * schedule_estimate_ms;
    // The same records, each keyed by its due time (13 digits, as the ceiling's keys) and
    // asking for it: due times not in the order of production.
    let delayed: Vec<Bytes> = (0..batches)
        .map(|b| {
            let mut records = values(b);
            let due = |i: usize| {
                let n = (b * DELAYED_BATCH_RECORDS + i) as i64;
                due_from + (n * 7919 % total) * DELAYED_SPREAD_MS / total
            };
            for (i, (key, _)) in records.iter_mut().enumerate() {
                *key = format!("{:013}", due(i));
            }
            batch_with(&records, |i| {
                vec![Header {
                    key: DELIVER_AT_HEADER.into(),
                    value: Some(Bytes::from(due(i).to_string())),
                }]
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let delayed_load = Load {
        name: "Kafka produce with weir-deliver-at (scheduled)",
        records_per_request: DELAYED_BATCH_RECORDS,
        bytes_per_request: delayed[0].len(),
    };
    let scheduled = send_all(args.clients, node, topic, &delayed, &delayed_load)?;
    let scheduled_at = now_ms();
    let pending_rss = proc_status::memory_mib(&pid, "VmRSS");
    drop(delayed);
    println!();
    println!(
        "Delayed delivery: {total} records of about {} B in batches of {DELAYED_BATCH_RECORDS}, \
         due over {} s starting {:.1} s after the last was scheduled",
        load.bytes_per_request / DELAYED_BATCH_RECORDS,
        DELAYED_SPREAD_MS / 1000,
        (due_from - scheduled_at) as f64 / 1e3
    );
    println!();
    println!("| path | records/s | records/s ÷ Kafka produce of the same records |");
    println!("|---|---|---|");
    for (label, outcome) in [(delayed_load.name, &scheduled), (load.name, &ceiling)] {
        println!(
            "| {label} | {:.0} | {:.2} |",
            outcome.records_per_s,
            outcome.records_per_s / ceiling.records_per_s
        );
    }
    if scheduled_at >= due_from {
        println!("(scheduling ended after the first record was due: lateness includes it)");
    }
    println!();
    println!("node RSS with {total} records pending: {pending_rss:.0} MiB");
    let deadline = Instant::now()
        + Duration::from_millis((due_from + DELAYED_SPREAD_MS - now_ms()).max(0) as u64)
        + Duration::from_secs(120);
    loop {
        let described = node.call("GET", &format!("/v1/topics/{topic}"), json!(null))?;
        let visible: u64 = described["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["high_watermark"].as_u64())
            .sum();
        if visible as i64 >= total {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{visible} of {total} delayed records delivered 2 minutes after the last was due"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Lateness: the append time the topic stamped less the due time, in whole milliseconds.
    let rows = node.sql(&format!(
        "SELECT CAST(timestamp AS BIGINT) - CAST(key_text AS BIGINT) AS late, count(*) AS n \
         FROM {topic} GROUP BY 1 ORDER BY 1"
    ))?;
    let histogram: Vec<(i64, i64)> = rows
        .iter()
        .filter_map(|r| Some((r["late"].as_i64()?, r["n"].as_i64()?)))
        .collect();
    let quantile = |q: f64| {
        let wanted = (q * total as f64).ceil() as i64;
        let mut seen = 0;
        histogram
            .iter()
            .find(|(_, n)| {
                seen += n;
                seen >= wanted
            })
            .map_or(i64::MAX, |(late, _)| *late)
    };
    let early = histogram
        .iter()
        .filter(|(l, _)| *l < 0)
        .map(|(_, n)| n)
        .sum::<i64>();
    println!(
        "delivery lateness (append time − due time): p50 {} ms, p99 {} ms, max {} ms; {early} records early",
        quantile(0.5),
        quantile(0.99),
        histogram.last().map_or(0, |(l, _)| *l)
    );
    println!(
        "node RSS after delivery: {:.0} MiB (peak {:.0} MiB)",
        proc_status::memory_mib(&pid, "VmRSS"),
        proc_status::memory_mib(&pid, "VmHWM")
    );
    Ok(())
}

/// Sends every batch once over Kafka, spread over `clients` connections, each to its own
/// partition.
fn send_all(
    clients: usize,
    node: &Node,
    topic: &str,
    batches: &[Bytes],
    load: &Load,
) -> anyhow::Result<Outcome> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..clients)
            .map(|client| {
                let next = &next;
                s.spawn(move || -> anyhow::Result<()> {
                    let mut connection = Connection::open(&node.kafka)?;
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(batch) = batches.get(i) else {
                            return Ok(());
                        };
                        connection.produce(topic, client as i32 % PARTITIONS, 1, batch)?;
                    }
                })
            })
            .collect();
        for w in workers {
            w.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("a client panicked")))?;
        }
        Ok(())
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Outcome {
        records_per_s: (batches.len() * load.records_per_request) as f64 / elapsed,
        body_mb_s: (batches.len() * load.bytes_per_request) as f64 / elapsed / 1e6,
    })
}
