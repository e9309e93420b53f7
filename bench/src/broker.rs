//! Broker benchmark: Weir beside tansu and the loopback limit, measured in one run.
//!
//! ```sh
//! cargo build --release --bin weir && \
//!   cargo run --release -p weir-bench --bin bench-broker [-- --seconds 5]
//! ```
//!
//! For 1 and 8 partitions and acks=1 and acks=all, one connection per partition sends produce
//! requests of 64 records of 1 KiB for a fixed time (request latency measured per request),
//! then one connection per partition fetches everything back. Each broker runs as its own
//! process on free loopback ports; the loopback limit is iperf3 on the same interface, the
//! disk's is `dd` writing requests of the same size, each fdatasynced, in the same directory.
//! RSS is read from /proc while idle and right after the produce load.

mod disk;
mod kafka_load;
mod librdkafka;
mod loopback;
mod ports;
mod proc_status;
mod records;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use kafka_load::Connection;
use ports::{free_port, wait_for_port};
use records::batch_of_1kib;
const RECORDS_PER_BATCH: usize = 64;
/// Bytes `dd` writes for the disk's figure.
const DD_BYTES: u64 = 256 << 20;

struct Args {
    seconds: u64,
    weir: PathBuf,
    tansu: Option<PathBuf>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        seconds: 5,
        weir: PathBuf::from("target/release/weir"),
        tansu: which("tansu"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => args.seconds = value.parse()?,
            "--weir" => args.weir = PathBuf::from(value),
            "--tansu" => args.tansu = Some(PathBuf::from(value)),
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

struct Broker {
    name: String,
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_weir(binary: &Path) -> anyhow::Result<Broker> {
    let dir = tempfile::tempdir_in("target")?;
    let port = free_port()?;
    let child = Command::new(binary)
        .args([
            "serve",
            "--kafka",
            &format!("127.0.0.1:{port}"),
            "--http",
            "127.0.0.1:0",
            "--pg",
            "off",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it with cargo build --release --bin weir)",
                binary.display()
            )
        })?;
    wait_for_port(port)?;
    Ok(Broker {
        name: "weir (fsync before ack)".into(),
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    })
}

fn start_tansu(binary: &Path, name: &str, storage: &str) -> anyhow::Result<Broker> {
    let dir = tempfile::tempdir_in("target")?;
    let port = free_port()?;
    // tansu resolves a sqlite path against its working directory.
    let child = Command::new(binary)
        .current_dir(dir.path())
        .arg("broker")
        .args(["--listener-url", &format!("tcp://127.0.0.1:{port}")])
        .args([
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{port}"),
        ])
        .args(["--storage-engine", storage])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    wait_for_port(port)?;
    Ok(Broker {
        name: name.to_string(),
        child,
        addr: format!("127.0.0.1:{port}"),
        _dir: dir,
    })
}

struct Run {
    produce_mb_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    consume_mb_s: f64,
    /// Share of the produced bytes the readers got back before giving up.
    consumed_share: f64,
    rss_loaded_mib: f64,
}

/// How long readers try to get back what was produced.
const CONSUME_GIVE_UP: Duration = Duration::from_secs(30);

fn run_case(broker: &Broker, partitions: i32, acks: i16, seconds: u64) -> anyhow::Result<Run> {
    let topic = format!(
        "bench-{partitions}-{}",
        if acks == 1 { "one" } else { "all" }
    );
    Connection::open(&broker.addr)?.create_topic(&topic, partitions)?;
    let batch = Arc::new(batch_of_1kib(
        RECORDS_PER_BATCH,
        weir_storage::Compression::None,
    )?);
    let addrs = [broker.addr.clone()];
    let produced = kafka_load::produce_for(
        &addrs,
        &topic,
        partitions,
        acks,
        &batch,
        Duration::from_secs(seconds),
    )?;
    let rss_loaded_mib = proc_status::memory_mib(&broker.child.id().to_string(), "VmRSS");
    let (consumed, consume_elapsed) = kafka_load::consume(
        &addrs,
        0,
        &topic,
        partitions,
        produced.bytes,
        CONSUME_GIVE_UP,
    )?;
    Ok(Run {
        produce_mb_s: produced.mb_s(),
        p50_ms: produced.percentile_ms(0.50),
        p99_ms: produced.percentile_ms(0.99),
        consume_mb_s: consumed as f64 / 1e6 / consume_elapsed.as_secs_f64(),
        consumed_share: consumed as f64 / produced.bytes.max(1) as f64,
        rss_loaded_mib,
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // The limit is what loopback can do at best.
    let loopback = loopback::best_of_three()?;
    println!("loopback (iperf3, one TCP stream, best of 3): {loopback:.0} MB/s");
    // The disk's figure for Weir's write pattern at one partition: each request's bytes
    // written, then fdatasynced before the next.
    let request_bytes =
        batch_of_1kib(RECORDS_PER_BATCH, weir_storage::Compression::None)?.len() as u64;
    let mut dd = Vec::new();
    for _ in 0..3 {
        dd.push(disk::dd_mb_s(
            Path::new("target"),
            request_bytes,
            DD_BYTES,
            true,
        )?);
    }
    let dd = dd.into_iter().fold(0.0, f64::max);
    println!(
        "disk (dd, {request_bytes}-byte writes each fdatasynced (oflag=dsync), {} MiB, best of 3): {dd:.0} MB/s",
        DD_BYTES >> 20
    );
    println!();

    let mut brokers: Vec<Box<dyn Fn() -> anyhow::Result<Broker>>> = Vec::new();
    let weir = args.weir.clone();
    brokers.push(Box::new(move || start_weir(&weir)));
    match &args.tansu {
        Some(tansu) => {
            let t = tansu.clone();
            brokers.push(Box::new(move || {
                start_tansu(&t, "tansu (memory)", "memory://tansu/")
            }));
            let t = tansu.clone();
            brokers.push(Box::new(move || {
                start_tansu(&t, "tansu (sqlite)", "sqlite://tansu.db")
            }));
        }
        None => eprintln!("tansu not found: `cargo install tansu` to compare"),
    }

    println!(
        "| broker | partitions | acks | produce MB/s | produce / dd | p50 ms | p99 ms | consume MB/s | consume / loopback | RSS idle MiB | RSS loaded MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for start in &brokers {
        for (partitions, acks) in [(1, 1), (1, -1), (8, 1), (8, -1)] {
            let broker = match start() {
                Ok(b) => b,
                Err(e) => {
                    println!("| (failed to start: {e:#}) | | | | | | | | | | |");
                    break;
                }
            };
            std::thread::sleep(Duration::from_millis(500));
            let idle = proc_status::memory_mib(&broker.child.id().to_string(), "VmRSS");
            match run_case(&broker, partitions, acks, args.seconds) {
                Ok(r) => {
                    let incomplete = if r.consumed_share < 0.9 {
                        format!(
                            " (only {:.0} % read back in {CONSUME_GIVE_UP:?})",
                            r.consumed_share * 100.0
                        )
                    } else {
                        String::new()
                    };
                    println!(
                        "| {} | {partitions} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0}{incomplete} | {:.2} | {idle:.0} | {:.0} |",
                        broker.name,
                        if acks == 1 { "1" } else { "all" },
                        r.produce_mb_s,
                        r.produce_mb_s / dd,
                        r.p50_ms,
                        r.p99_ms,
                        r.consume_mb_s,
                        r.consume_mb_s / loopback,
                        r.rss_loaded_mib
                    )
                }
                Err(e) => println!(
                    "| {} | {partitions} | {acks} | failed: {e:#} | | | | | | {idle:.0} | |",
                    broker.name
                ),
            }
        }
    }
    println!();
    println!(
        "librdkafka (confluent-kafka, linger.ms=5, batch.size=1 MB), {} records of 1 KiB to one partition:",
        librdkafka::RECORDS
    );
    println!();
    println!("| broker | acks | produce MB/s | consume MB/s |");
    println!("|---|---|---|---|");
    for start in &brokers {
        for acks in ["1", "all"] {
            let Ok(broker) = start() else { break };
            match librdkafka::produce_consume(&broker.addr, acks) {
                Ok((p, c)) => println!("| {} | {acks} | {p:.0} | {c:.0} |", broker.name),
                Err(e) => println!("| {} | {acks} | failed: {e} | |", broker.name),
            }
        }
    }
    Ok(())
}
