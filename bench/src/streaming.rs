//! Continuous SQL benchmark: a 1-minute tumbling count and sum by key, run as a SQL pipeline
//! over events produced through the Kafka listener, beside the same query run once as a batch
//! query over the same data (the ceiling), measured in one run.
//!
//! ```sh
//! cargo build --release --bin weir && cargo run --release -p weir-bench --bin bench-streaming \
//!   [-- --keys 10000,1000000 --events 5000000 --seconds 300 --rate 50000]
//! ```
//!
//! For each key count, a fresh node (release `weir serve`, its own temp data directory) gets a
//! 4-partition topic of JSON events `{"k": "key-N", "v": N}`, and:
//!
//! 1. `--events` events are produced (four connections, acks=1, batches of 500) with event times
//!    spread over the ten minutes before the last one;
//! 2. the ceiling: the pipeline's `SELECT` run once over them through `POST /v1/sql`;
//! 3. catching up: the pipeline is created with `start = 'earliest'` and timed until it has
//!    handled them all — its sustained rate, as it closes those ten windows on the way;
//! 4. live: for `--seconds`, events stamped with the wall clock at `--rate` per second; every
//!    second the output topic is checked, so a window's result delay (from the window's end to
//!    its rows being readable) is known to a second; the node's RSS every minute and its peak
//!    (`VmHWM`). A record's latency from append to its window's result is that delay plus its
//!    distance to its window's end (up to a minute).
//!
//! ```sql
//! CREATE PIPELINE per_key AS INSERT INTO per_key_out
//! SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total
//! FROM TUMBLE(events, timestamp, INTERVAL '1 minute') GROUP BY window_start, window_end, k
//! WITH (watermark_delay = '0 seconds', idle_timeout = '5 seconds', start = 'earliest')
//! ```

mod kafka_load;
mod ports;
mod proc_status;
mod weir_node;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use kafka_load::Connection;
use weir_node::Node;
use weir_storage::{BatchBuilder, Compression, NewRecord};

const PARTITIONS: i32 = 4;
const EVENTS_PER_BATCH: usize = 500;
const WINDOW_MS: i64 = 60_000;

const SELECT: &str = "SELECT window_start, window_end, k, count(*) AS n, sum(v) AS total \
    FROM TUMBLE(events, timestamp, INTERVAL '1 minute') GROUP BY window_start, window_end, k";

struct Args {
    seconds: u64,
    keys: Vec<u64>,
    events: u64,
    rate: u64,
    weir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 300,
        keys: vec![10_000, 1_000_000],
        events: 5_000_000,
        rate: 50_000,
        weir: PathBuf::from("target/release/weir"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse()?,
            "--keys" => {
                args.keys = value
                    .split(',')
                    .map(|k| k.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--events" => args.events = value.parse()?,
            "--rate" => args.rate = value.parse()?,
            "--weir" => args.weir = PathBuf::from(value),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// One batch of events, keys drawn from `keys` by a counter, stamped `at`.
fn batch(keys: u64, counter: &mut u64, at: i64) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new(Compression::None);
    for _ in 0..EVENTS_PER_BATCH {
        *counter = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let key = (*counter >> 11) % keys;
        let value = format!(r#"{{"k":"key-{key}","v":{}}}"#, *counter % 1000);
        b.push(NewRecord {
            timestamp: at,
            key: None,
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
        });
    }
    Ok(b.build()?)
}

fn percentile(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1e3
}

struct Run {
    keys: u64,
    ceiling_rate: f64,
    ceiling_s: f64,
    catch_up_rate: f64,
    catch_up_s: f64,
    live_produced_rate: f64,
    live_handled_rate: f64,
    lag_end: u64,
    delays_s: (f64, f64, usize),
    rss_mib: Vec<f64>,
    peak_mib: f64,
}

/// Produces from four connections until `until` says stop; `stamp(batch number)` is the
/// event time of a batch, `pace` the least time between two batches of one connection.
fn produce(
    kafka: &str,
    keys: u64,
    until: impl Fn(u64) -> bool + Send + Sync + 'static,
    stamp: impl Fn(u64) -> i64 + Send + Sync + 'static,
    pace: Duration,
) -> anyhow::Result<u64> {
    let (until, stamp) = (Arc::new(until), Arc::new(stamp));
    let batches = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let producers: Vec<_> = (0..PARTITIONS)
        .map(|p| {
            let (addr, batches, sent) = (kafka.to_string(), batches.clone(), sent.clone());
            let (until, stamp) = (until.clone(), stamp.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut c = Connection::open(&addr)?;
                let mut counter = p as u64;
                let mut next = Instant::now();
                loop {
                    let n = batches.fetch_add(1, Ordering::Relaxed);
                    if until(n) {
                        return Ok(());
                    }
                    c.produce("events", p, 1, &batch(keys, &mut counter, stamp(n))?)?;
                    sent.fetch_add(EVENTS_PER_BATCH as u64, Ordering::Relaxed);
                    next += pace;
                    if let Some(wait) = next.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
            })
        })
        .collect();
    for p in producers {
        p.join()
            .map_err(|_| anyhow::anyhow!("a producer panicked"))??;
    }
    Ok(sent.load(Ordering::Relaxed))
}

fn handled(node: &Node) -> anyhow::Result<u64> {
    Ok(node.pipeline()?["records_in"].as_u64().unwrap_or(0))
}

fn run(args: &Args, keys: u64) -> anyhow::Result<Run> {
    let node = Node::start(&args.weir, &[])?;
    node.call(
        "POST",
        "/v1/topics",
        serde_json::json!({
            "name": "events",
            "partitions": PARTITIONS,
            "configs": { "value.format": "json", "value.schema": "k TEXT, v BIGINT" }
        }),
    )?;
    // 1. The backlog: ten minutes of event time, ending a minute ago.
    let batches = args.events.div_ceil(EVENTS_PER_BATCH as u64);
    let first = now_ms() - 11 * WINDOW_MS;
    let backlog = produce(
        &node.kafka,
        keys,
        move |n| n >= batches,
        move |n| first + (n as i64 * 10 * WINDOW_MS) / batches as i64,
        Duration::ZERO,
    )?;
    // 2. The ceiling.
    let started = Instant::now();
    let rows = node.sql(&format!(
        "SELECT count(*) AS groups, sum(n) AS events FROM ({SELECT})"
    ))?;
    let ceiling_s = started.elapsed().as_secs_f64();
    let counted = rows.first().and_then(|r| r["events"].as_u64()).unwrap_or(0);
    if counted != backlog {
        bail!("the batch query counted {counted} events of {backlog}");
    }
    // 3. Catching up.
    let started = Instant::now();
    node.sql(&format!(
        "CREATE PIPELINE per_key AS INSERT INTO per_key_out {SELECT} \
         WITH (watermark_delay = '0 seconds', idle_timeout = '5 seconds', start = 'earliest')"
    ))?;
    while handled(&node)? < backlog {
        if started.elapsed() > Duration::from_secs(3600) {
            bail!(
                "the pipeline handled {} of {backlog} events in an hour",
                handled(&node)?
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let catch_up_s = started.elapsed().as_secs_f64();
    // 4. Live, in the background while the output is watched.
    let pid = node.child.id().to_string();
    let seconds = args.seconds;
    let live_start = Instant::now();
    let pace = Duration::from_secs_f64(
        EVENTS_PER_BATCH as f64 * PARTITIONS as f64 / args.rate.max(1) as f64,
    );
    let kafka = node.kafka.clone();
    let producer = std::thread::spawn(move || {
        produce(
            &kafka,
            keys,
            move |_| live_start.elapsed() >= Duration::from_secs(seconds),
            |_| now_ms(),
            pace,
        )
    });
    let handled_before = handled(&node)?;
    // Windows close in order, each at once, so output that grows at time R holds the window
    // that ended at the last minute boundary before R.
    let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
    let mut output_end = 0;
    let mut rss = Vec::new();
    let mut next_rss = Instant::now() + Duration::from_secs(60);
    while !producer.is_finished() {
        std::thread::sleep(Duration::from_secs(1));
        let ends = node
            .sql("SELECT sum(end_offset) AS e FROM weir.partitions WHERE topic = 'per_key_out'")?;
        let end = ends.first().and_then(|r| r["e"].as_i64()).unwrap_or(0);
        if end > output_end {
            output_end = end;
            let now = now_ms();
            seen.entry(now / WINDOW_MS * WINDOW_MS).or_insert(now);
        }
        if Instant::now() >= next_rss {
            rss.push(proc_status::memory_mib(&pid, "VmRSS"));
            next_rss += Duration::from_secs(60);
        }
    }
    let live_produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producers panicked"))??;
    let live_s = live_start.elapsed().as_secs_f64();
    let live_handled = handled(&node)? - handled_before;
    let lag_end = node.pipeline()?["lag"].as_u64().unwrap_or(0);
    // Only windows that ended while the live phase ran (the backlog's closed before).
    let live_from = now_ms() - (live_s * 1e3) as i64;
    let mut delays: Vec<i64> = seen
        .iter()
        .filter(|(end, _)| **end > live_from)
        .map(|(end, seen_at)| seen_at - end)
        .collect();
    delays.sort_unstable();
    Ok(Run {
        keys,
        ceiling_rate: backlog as f64 / ceiling_s,
        ceiling_s,
        catch_up_rate: backlog as f64 / catch_up_s,
        catch_up_s,
        live_produced_rate: live_produced as f64 / live_s,
        live_handled_rate: live_handled as f64 / live_s,
        lag_end,
        delays_s: (
            percentile(&delays, 0.5),
            percentile(&delays, 0.99),
            delays.len(),
        ),
        rss_mib: rss,
        peak_mib: proc_status::memory_mib(&pid, "VmHWM"),
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut runs = Vec::new();
    for &keys in &args.keys {
        eprintln!(
            "{keys} keys: {} events, then {} s live…",
            args.events, args.seconds
        );
        runs.push(run(&args, keys)?);
    }
    println!(
        "# 1-minute tumbling count and sum by key, {PARTITIONS} partitions: {} events caught up, then {} s live at {} events/s",
        args.events, args.seconds, args.rate
    );
    println!();
    println!(
        "| keys | batch ceiling | pipeline catching up | pipeline / ceiling | live: produced/s, handled/s, lag at end | result after window end p50 / p99 (windows) | RSS each minute | peak RSS |"
    );
    println!("|---:|---:|---:|---:|---|---|---|---:|");
    for r in &runs {
        let rss: Vec<String> = r.rss_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!(
            "| {} | {:.0}/s ({:.1} s) | {:.0}/s ({:.1} s) | {:.2} | {:.0}, {:.0}, {} | {:.0} s / {:.0} s ({}) | {} MiB | {:.0} MiB |",
            r.keys,
            r.ceiling_rate,
            r.ceiling_s,
            r.catch_up_rate,
            r.catch_up_s,
            r.catch_up_rate / r.ceiling_rate,
            r.live_produced_rate,
            r.live_handled_rate,
            r.lag_end,
            r.delays_s.0,
            r.delays_s.1,
            r.delays_s.2,
            rss.join(", "),
            r.peak_mib
        );
    }
    Ok(())
}
