//! Cluster benchmark: the embedded node, one cluster node and three cluster nodes on this
//! machine, measured in one run beside the loopback and disk limits.
//!
//! ```sh
//! cargo build --release --bin weir && \
//!   cargo run --release -p weir-bench --bin bench-cluster [-- --seconds 10 --partitions 8]
//! ```
//!
//! Each setup starts fresh: its own PostgreSQL (`initdb` in a temp dir, as `cluster` tests do),
//! its own shared directory as the object store (`file://`), its nodes on free loopback ports.
//! One connection per partition sends acks=all produce requests of 64 records of 1 KiB for a
//! fixed time, each waiting for its answer; partition `p` goes through node `p % nodes`. Then
//! every partition is read back through another node than the one that wrote it (on three
//! nodes), so the readers' node fetches from the object store what the writer's node cached.
//! Postgres write transactions (from `pg_current_xact_id()`) and objects written (rows of
//! `weir.objects`) are counted over the produce phase; the nodes' cache reads by tier come from
//! `/metrics`. Last, librdkafka (batching, five requests in flight) produces and consumes one
//! partition through node 0.

mod disk;
mod kafka_load;
mod librdkafka;
mod loopback;
mod ports;
mod records;
mod weir_node;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kafka_load::Connection;
use weir_node::Node;
use weir_tests::postgres::Postgres;

const RECORDS_PER_BATCH: usize = 64;
/// Bytes `dd` writes for the disk's figure.
const DD_BYTES: u64 = 256 << 20;
/// How long readers try to get back what was produced.
const CONSUME_GIVE_UP: Duration = Duration::from_secs(60);

struct Args {
    seconds: u64,
    partitions: i32,
    weir: PathBuf,
    /// `--cluster-linger-ms` for the cluster nodes; the node's default when absent.
    linger_ms: Option<u64>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 10,
        partitions: 8,
        weir: PathBuf::from("target/release/weir"),
        linger_ms: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse()?,
            "--partitions" => args.partitions = value.parse()?,
            "--weir" => args.weir = PathBuf::from(value),
            "--linger-ms" => args.linger_ms = Some(value.parse()?),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

/// The nodes of one setup and what they run on.
struct Setup {
    name: String,
    nodes: Vec<Node>,
    /// The cluster's database; `None` for the embedded node.
    db: Option<Postgres>,
    _store: Option<tempfile::TempDir>,
}

impl Setup {
    fn embedded(binary: &Path) -> anyhow::Result<Setup> {
        Ok(Setup {
            name: "embedded node".into(),
            nodes: vec![Node::start(binary, &[])?],
            db: None,
            _store: None,
        })
    }

    fn cluster(binary: &Path, nodes: u32, linger_ms: Option<u64>) -> anyhow::Result<Setup> {
        let db = Postgres::start().context(
            "PostgreSQL server binaries missing: apt-get install postgresql (./scripts/test does)",
        )?;
        let store = tempfile::tempdir_in("target")?;
        let (url, store_url) = (db.url(), format!("file://{}", store.path().display()));
        let linger = linger_ms.map(|ms| ms.to_string());
        let started = (0..nodes)
            .map(|id| {
                let id = id.to_string();
                let mut flags = vec![
                    "--cluster-db",
                    &url,
                    "--object-store",
                    &store_url,
                    "--node-id",
                    &id,
                ];
                if let Some(ms) = &linger {
                    flags.extend(["--cluster-linger-ms", ms]);
                }
                Node::start(binary, &flags)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Setup {
            name: format!("cluster, {nodes} node{}", if nodes == 1 { "" } else { "s" }),
            nodes: started,
            db: Some(db),
            _store: Some(store),
        })
    }

    fn kafka(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.kafka.clone()).collect()
    }

    /// Postgres write transactions so far and objects written so far, on a cluster.
    fn counters(&self) -> anyhow::Result<Option<(u64, u64)>> {
        let Some(db) = &self.db else { return Ok(None) };
        let xid = psql(db, "SELECT pg_current_xact_id()::text::bigint")?;
        let objects = psql(db, "SELECT count(*) FROM weir.objects")?;
        Ok(Some((xid, objects)))
    }

    /// Reads of object ranges over all nodes, by tier: memory, disk, store.
    fn cache_reads(&self) -> anyhow::Result<[u64; 3]> {
        let mut reads = [0; 3];
        for node in &self.nodes {
            let out = Command::new("curl")
                .args(["-sS", &format!("{}/metrics", node.http)])
                .output()
                .context("running curl")?;
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                for (i, tier) in ["memory", "disk", "store"].iter().enumerate() {
                    let name = format!("weir_cluster_cache_reads_total{{tier=\"{tier}\"}} ");
                    if let Some(n) = line.strip_prefix(&name) {
                        reads[i] += n.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
        Ok(reads)
    }
}

/// One number a query answers.
fn psql(db: &Postgres, query: &str) -> anyhow::Result<u64> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-p", &db.port().to_string()])
        .args(["-U", "weir", "-d", "postgres", "-Atc", query])
        .output()
        .context("running psql (apt-get install postgresql-client)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim()
        .parse()
        .with_context(|| format!("{query}: {text} {}", String::from_utf8_lossy(&out.stderr)))
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let loopback = loopback::best_of_three()?;
    println!("loopback (iperf3, one TCP stream, best of 3): {loopback:.0} MB/s");
    let batch = Arc::new(records::batch_of_1kib(
        RECORDS_PER_BATCH,
        weir_storage::Compression::None,
    )?);
    let request_bytes = batch.len() as u64;
    let mut dd = 0.0f64;
    for _ in 0..3 {
        dd = dd.max(disk::dd_mb_s(
            Path::new("target"),
            request_bytes,
            DD_BYTES,
            true,
        )?);
    }
    println!(
        "disk (dd, {request_bytes}-byte writes each fdatasynced, {} MiB, best of 3): {dd:.0} MB/s",
        DD_BYTES >> 20
    );
    println!(
        "load: {} partitions, one connection each, acks=all, {} s; cluster linger: {}",
        args.partitions,
        args.seconds,
        args.linger_ms
            .map_or("the node's default".to_string(), |ms| format!("{ms} ms"))
    );
    println!();
    println!(
        "| setup | produce MB/s | produce / dd | p50 ms | p99 ms | consume MB/s | consume / loopback | Postgres write tx/s | objects/s | cache reads memory / disk / store | librdkafka produce MB/s | librdkafka consume MB/s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    let setups: [&dyn Fn() -> anyhow::Result<Setup>; 3] = [
        &|| Setup::embedded(&args.weir),
        &|| Setup::cluster(&args.weir, 1, args.linger_ms),
        &|| Setup::cluster(&args.weir, 3, args.linger_ms),
    ];
    for start in setups {
        let setup = start()?;
        match run(&setup, &args, &batch, Limits { loopback, dd }) {
            Ok(row) => println!(
                "| {} | {row} | {} |",
                setup.name,
                match librdkafka::produce_consume(&setup.nodes[0].kafka, "all") {
                    Ok((p, c)) => format!("{p:.0} | {c:.0}"),
                    Err(e) => format!("failed: {e} |"),
                }
            ),
            Err(e) => println!("| {} | failed: {e:#} |||||||||||", setup.name),
        }
    }
    Ok(())
}

/// The machine's limits, in MB/s.
struct Limits {
    loopback: f64,
    dd: f64,
}

/// The Kafka-protocol part of one setup's row.
fn run(
    setup: &Setup,
    args: &Args,
    batch: &Arc<bytes::Bytes>,
    limits: Limits,
) -> anyhow::Result<String> {
    let addrs = setup.kafka();
    let topic = "bench";
    Connection::open(&addrs[0])?.create_topic(topic, args.partitions)?;
    let before = setup.counters()?;
    let produced = kafka_load::produce_for(
        &addrs,
        topic,
        args.partitions,
        -1,
        batch,
        Duration::from_secs(args.seconds),
    )?;
    let after = setup.counters()?;
    let reads_before = setup.cache_reads()?;
    let (consumed, elapsed) = kafka_load::consume(
        &addrs,
        1,
        topic,
        args.partitions,
        produced.bytes,
        CONSUME_GIVE_UP,
    )?;
    let reads = setup.cache_reads()?;
    let consume_mb_s = consumed as f64 / 1e6 / elapsed.as_secs_f64();
    let short = if consumed < produced.bytes * 9 / 10 {
        format!(
            " (only {:.0} % read back in {CONSUME_GIVE_UP:?})",
            consumed as f64 * 100.0 / produced.bytes.max(1) as f64
        )
    } else {
        String::new()
    };
    let seconds = produced.elapsed.as_secs_f64();
    let (tx, objects) = match (before, after) {
        (Some((x0, o0)), Some((x1, o1))) => (
            format!("{:.0}", (x1 - x0) as f64 / seconds),
            format!("{:.1}", (o1 - o0) as f64 / seconds),
        ),
        _ => ("–".into(), "–".into()),
    };
    let cache = if setup.db.is_some() {
        format!(
            "{} / {} / {}",
            reads[0] - reads_before[0],
            reads[1] - reads_before[1],
            reads[2] - reads_before[2]
        )
    } else {
        "–".into()
    };
    Ok(format!(
        "{:.1} | {:.2} | {:.1} | {:.1} | {consume_mb_s:.0}{short} | {:.2} | {tx} | {objects} | {cache}",
        produced.mb_s(),
        produced.mb_s() / limits.dd,
        produced.percentile_ms(0.50),
        produced.percentile_ms(0.99),
        consume_mb_s / limits.loopback,
    ))
}
