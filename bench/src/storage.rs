//! Storage benchmark: Weir's partition log beside the same disk's raw figures, in one run.
//!
//! ```sh
//! cargo run --release -p weir-bench --bin bench-storage [-- --dir DIR --append-mib N --big-gib N]
//! ```
//!
//! Prints a Markdown table: append MB/s for 1 KiB records in 16 KiB and 1 MiB batches under
//! `flush.policy=interval` and `always` (1 and 4 writers), each next to `dd` writing the same
//! bytes with the same fsync pattern into the same directory; sequential read MB/s next to
//! `cat` of the same files from the page cache; open time of a small and a large log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use records::{RECORD_BYTES, batch_of_1kib};
use weir_storage::{Compression, FlushPolicy, Log, LogConfig};

mod disk;
mod records;

/// The batch `append_case` and friends write, as bytes the log may rewrite in place.
fn batch(records: usize, compression: Compression) -> anyhow::Result<Vec<u8>> {
    Ok(batch_of_1kib(records, compression)?.to_vec())
}
const MIB: u64 = 1 << 20;
/// 1024 records of 1 KiB plus their framing are a little over Kafka's default
/// `max.message.bytes`; the benchmark's topics allow them.
const BATCH_BYTES_MAX: u64 = 2 * MIB;

struct Args {
    dir: PathBuf,
    append_mib: u64,
    small_mib: u64,
    big_gib: u64,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        dir: PathBuf::from("target/bench-storage"),
        append_mib: 512,
        small_mib: 100,
        big_gib: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value),
            "--append-mib" => args.append_mib = value.parse()?,
            "--small-mib" => args.small_mib = value.parse()?,
            "--big-gib" => args.big_gib = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    Ok(args)
}

fn fresh_dir(root: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let dir = root.join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs per case; the table shows medians.
const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Writes back every dirty page so the next measurement starts from a quiet disk.
fn settle() -> anyhow::Result<()> {
    let status = Command::new("sync").status().context("running sync")?;
    if !status.success() {
        bail!("sync failed: {status}");
    }
    Ok(())
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

/// What one append case writes.
#[derive(Clone, Copy)]
struct Case {
    records: usize,
    compression: Compression,
    policy: FlushPolicy,
    writers: usize,
    total_bytes: u64,
}

/// Appends `total_bytes` of batches (as written: compressed bytes for a compressed case) of
/// `records` records from `writers` threads.
fn append_case(root: &Path, case: Case) -> anyhow::Result<f64> {
    let Case {
        records,
        compression,
        policy,
        writers,
        total_bytes,
    } = case;
    let dir = fresh_dir(root, "append")?;
    let config = LogConfig {
        flush_policy: policy,
        retention_ms: None,
        batch_bytes_max: BATCH_BYTES_MAX,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(&dir, config)?);
    let template = batch(records, compression)?;
    let per_writer = (total_bytes / template.len() as u64 / writers as u64).max(1);
    let start = Instant::now();
    let handles: Vec<_> = (0..writers)
        .map(|_| {
            let log = log.clone();
            let buf = template.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for _ in 0..per_writer {
                    log.append(&buf)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    log.flush()?;
    let elapsed = start.elapsed();
    let bytes = per_writer * writers as u64 * template.len() as u64;
    drop(log);
    std::fs::remove_dir_all(&dir)?;
    Ok(mb_per_s(bytes, elapsed))
}

/// The batches `append_case` writes, written by a plain `write` loop into one file with the
/// same fsync pattern: what the OS gives for these exact bytes without a log around them.
fn plain_case(root: &Path, case: Case, per_write_sync: bool) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = root.join("plain.out");
    let template = batch(case.records, case.compression)?;
    let total_bytes = case.total_bytes;
    let count = (total_bytes / template.len() as u64).max(1);
    let start = Instant::now();
    let mut file = std::fs::File::create(&path)?;
    for _ in 0..count {
        file.write_all(&template)?;
        if per_write_sync {
            file.sync_data()?;
        }
    }
    file.sync_data()?;
    let elapsed = start.elapsed();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(mb_per_s(count * template.len() as u64, elapsed))
}

/// Fills a log of about `bytes` bytes with 1 MiB batches under the interval policy.
fn fill_log(dir: &Path, bytes: u64) -> anyhow::Result<()> {
    let config = LogConfig {
        flush_policy: FlushPolicy::Interval { ms: 1000 },
        retention_ms: None,
        batch_bytes_max: BATCH_BYTES_MAX,
        ..LogConfig::default()
    };
    let log = Log::open(dir, config)?;
    let buf = batch(1024, Compression::None)?;
    let n = bytes / buf.len() as u64;
    for _ in 0..n {
        log.append(&buf)?;
    }
    log.close()?;
    Ok(())
}

/// Reads the whole log through `Log::read` (CRC-checked), returning MB/s and bytes read.
fn read_log(dir: &Path) -> anyhow::Result<(f64, u64)> {
    let log = Log::open(dir, LogConfig::default())?;
    let start = Instant::now();
    let mut offset = 0;
    let mut bytes = 0u64;
    while let Some(slice) = log.read(offset, MIB)?.slice {
        bytes += slice.read()?.len() as u64;
        offset = slice.next_offset();
    }
    Ok((mb_per_s(bytes, start.elapsed()), bytes))
}

/// `cat` of the log's segment files to /dev/null, returning MB/s.
fn cat_log(dir: &Path) -> anyhow::Result<f64> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    let bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
        .sum();
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg("cat \"$@\" > /dev/null")
        .arg("cat")
        .args(&files)
        .status()?;
    if !status.success() {
        bail!("cat failed: {status}");
    }
    Ok(mb_per_s(bytes, start.elapsed()))
}

/// Median of `runs` timed opens (clean shutdown before each).
fn open_time(dir: &Path, runs: usize) -> anyhow::Result<Duration> {
    let mut times = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let log = Log::open(dir, LogConfig::default())?;
        times.push(start.elapsed());
        log.close()?;
    }
    times.sort();
    Ok(times[times.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.dir)?;
    let root = args.dir.canonicalize()?;
    let total = args.append_mib * MIB;
    // An fsync per 16 KiB write is slow on most disks: measure it on a smaller volume.
    let synced_small = (total / 8).max(16 * MIB);

    println!("storage benchmark, data in {}", root.display());
    println!();
    println!(
        "| case | Weir | dd, same block size and fsync pattern | Weir / dd | same batches by a plain write loop | Weir / plain |"
    );
    println!("|---|---|---|---|---|---|");
    let interval = FlushPolicy::Interval { ms: 1000 };
    let case = |records, compression, policy, writers, total_bytes| Case {
        records,
        compression,
        policy,
        writers,
        total_bytes,
    };
    let none = Compression::None;
    let cases = [
        (
            "append 16 KiB batches, interval",
            case(16, none, interval, 1, total),
        ),
        (
            "append 1 MiB batches, interval",
            case(1024, none, interval, 1, total),
        ),
        (
            "append 16 KiB batches, always, 1 writer",
            case(16, none, FlushPolicy::Always, 1, synced_small),
        ),
        (
            "append 16 KiB batches, always, 4 writers",
            case(16, none, FlushPolicy::Always, 4, synced_small),
        ),
        (
            "append 1 MiB batches, always, 1 writer",
            case(1024, none, FlushPolicy::Always, 1, total),
        ),
        (
            "append 1 MiB batches, always, 4 writers",
            case(1024, none, FlushPolicy::Always, 4, total),
        ),
        // Compressed batches are decompressed to check their records before the append.
        (
            "append 1 MiB of records as an lz4 batch, interval",
            case(1024, Compression::Lz4, interval, 1, total / 8),
        ),
        (
            "append 1 MiB of records as a zstd batch, interval",
            case(1024, Compression::Zstd, interval, 1, total / 8),
        ),
    ];
    for (name, case) in cases {
        // Alternate the three, each starting with no dirty pages, and keep the medians: the
        // disk's write-back state otherwise decides more than the code does.
        let per_write_sync = case.policy == FlushPolicy::Always;
        let block = (case.records * RECORD_BYTES) as u64;
        let mut weir = Vec::new();
        let mut raw = Vec::new();
        let mut plain = Vec::new();
        for _ in 0..RUNS {
            settle()?;
            weir.push(append_case(&root, case)?);
            if case.compression == Compression::None {
                settle()?;
                raw.push(disk::dd_mb_s(
                    &root,
                    block,
                    case.total_bytes,
                    per_write_sync,
                )?);
            }
            settle()?;
            plain.push(plain_case(&root, case, per_write_sync)?);
        }
        let (weir, plain) = (median(weir), median(plain));
        let dd = if raw.is_empty() {
            "| |".to_string()
        } else {
            let raw = median(raw);
            format!("{raw:.0} MB/s | {:.2} |", weir / raw)
        };
        println!(
            "| {name} | {weir:.0} MB/s | {dd} {plain:.0} MB/s | {:.2} |",
            weir / plain
        );
    }

    let small = fresh_dir(&root, "small")?;
    fill_log(&small, args.small_mib * MIB)?;
    // Warm the page cache, then time both readers over the same files.
    cat_log(&small)?;
    let mut cats = Vec::new();
    let mut reads = Vec::new();
    let mut bytes = 0;
    for _ in 0..RUNS {
        cats.push(cat_log(&small)?);
        let (mb, b) = read_log(&small)?;
        reads.push(mb);
        bytes = b;
    }
    let (cat, weir_read) = (median(cats), median(reads));
    println!(
        "| sequential read, {} MB, page cache | {weir_read:.0} MB/s | {cat:.0} MB/s (cat) | {:.2} | | |",
        bytes / 1_000_000,
        weir_read / cat
    );

    let big = fresh_dir(&root, "big")?;
    fill_log(&big, args.big_gib * 1024 * MIB)?;
    let small_open = open_time(&small, 5)?;
    let big_open = open_time(&big, 5)?;
    println!(
        "| open, {} MiB log vs {} GiB log (median of 5) | {:.2} ms vs {:.2} ms | | {:.2} | | |",
        args.small_mib,
        args.big_gib,
        small_open.as_secs_f64() * 1e3,
        big_open.as_secs_f64() * 1e3,
        big_open.as_secs_f64() / small_open.as_secs_f64()
    );
    std::fs::remove_dir_all(&small)?;
    std::fs::remove_dir_all(&big)?;
    Ok(())
}
