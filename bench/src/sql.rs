//! SQL benchmark: the same queries over the same JSON log records through Weir (a topic with
//! typed JSON columns, queried in this process, first from its log, then again once the
//! columnar copies of its closed segments are built, then by a fresh engine that keeps the
//! columns it decodes from the active segments between queries) and through DuckDB (the records as an
//! NDJSON file, then as one Parquet file DuckDB writes from it, queried by the `duckdb` Python
//! package), measured in one run.
//!
//! ```sh
//! cargo run --release -p weir-bench --bin bench-sql [-- --records 10000000 --runs 3]
//! ```
//!
//! DuckDB comes from PyPI into `target/bench-py` on the first run. Every query runs `--runs`
//! times on each side; the table shows the median wall time, and the cached engine's first
//! run. The records are written to a
//! 4-partition topic through the storage API (batches of 1000, no compression, 64 MiB
//! segments) and, the same lines, to `records.ndjson`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use weir_sql::{QueryConfig, QueryEngine};

mod proc_status;
use weir_storage::{BatchBuilder, Compression, NewRecord, Storage, StorageConfig};

const PARTITIONS: u32 = 4;
/// The records span this much event time; the last 1 % is the last minute.
const SPAN_MS: i64 = 100 * 60_000;
const T0: i64 = 1_704_067_200_000;
/// Segment size of the topic: closed segments are what get columnar copies.
const SEGMENT_BYTES: u64 = 64 << 20;

struct Query {
    name: &'static str,
    weir: String,
    duckdb: String,
}

fn queries(last_minute_ms: i64) -> Vec<Query> {
    let since = format!("to_timestamp_millis({last_minute_ms})");
    let last_30_ms = last_minute_ms + 60_000 - 30 * 60_000;
    let since_30 = format!("to_timestamp_millis({last_30_ms})");
    vec![
        Query {
            name: "count(*)",
            weir: "SELECT count(*) FROM logs".into(),
            duckdb: "SELECT count(*) FROM logs".into(),
        },
        Query {
            name: "GROUP BY status",
            weir: "SELECT status, count(*) FROM logs GROUP BY status ORDER BY status".into(),
            duckdb: "SELECT status, count(*) FROM logs GROUP BY status ORDER BY status".into(),
        },
        Query {
            name: "last minute (1 %)",
            weir: format!(r#"SELECT count(*), sum(bytes) FROM logs WHERE "timestamp" > {since}"#),
            duckdb: format!("SELECT count(*), sum(bytes) FROM logs WHERE ts > {last_minute_ms}"),
        },
        Query {
            name: "top 5 hosts by bytes",
            weir: "SELECT host, sum(bytes) AS b FROM logs GROUP BY host ORDER BY b DESC LIMIT 5"
                .into(),
            duckdb: "SELECT host, sum(bytes) AS b FROM logs GROUP BY host ORDER BY b DESC LIMIT 5"
                .into(),
        },
        Query {
            name: "last 30 minutes by status (30 %)",
            weir: format!(
                r#"SELECT status, count(*) FROM logs WHERE "timestamp" > {since_30} GROUP BY status ORDER BY status"#
            ),
            duckdb: format!(
                "SELECT status, count(*) FROM logs WHERE ts > {last_30_ms} GROUP BY status ORDER BY status"
            ),
        },
    ]
}

/// Line `i` of `records`; timestamps spread evenly over [`SPAN_MS`].
fn line(i: u64, records: u64) -> (i64, String) {
    let status = [200, 200, 200, 200, 301, 304, 404, 500, 502, 503][(i % 10) as usize];
    let ts = T0 + (i as i64 * SPAN_MS) / records.max(1) as i64;
    let value = format!(
        r#"{{"host":"web-{:02}","status":{status},"bytes":{},"method":"GET","path":"/api/v1/items/{}?page={}","ua":"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0","ts":{ts}}}"#,
        (i * 7919) % 50,
        (i * 104_729) % 65_536,
        i % 100_000,
        i % 17
    );
    (ts, value)
}

fn fill(storage: &Storage, ndjson: &Path, records: u64) -> anyhow::Result<(u64, i64)> {
    let configs = [
        ("value.format".to_string(), "json".to_string()),
        (
            "value.schema".to_string(),
            "host TEXT, status INT, bytes BIGINT, method TEXT, path TEXT".to_string(),
        ),
        ("flush.policy".to_string(), "interval".to_string()),
        ("segment.bytes".to_string(), SEGMENT_BYTES.to_string()),
    ];
    storage.create_topic("logs", PARTITIONS, configs.into_iter().collect())?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(ndjson)?);
    let mut bytes = 0u64;
    let mut last_ts = 0;
    for chunk_start in (0..records).step_by(1000) {
        let partition = ((chunk_start / 1000) % u64::from(PARTITIONS)) as u32;
        let mut builder = BatchBuilder::new(Compression::None);
        for i in chunk_start..(chunk_start + 1000).min(records) {
            let (ts, value) = line(i, records);
            writeln!(file, "{value}")?;
            bytes += value.len() as u64;
            last_ts = ts;
            builder.push(NewRecord {
                timestamp: ts,
                key: None,
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
            });
        }
        storage.log("logs", partition)?.append(&builder.build()?)?;
    }
    file.flush()?;
    for (_, _, log) in storage.logs() {
        log.flush()?;
    }
    Ok((bytes, last_ts))
}

/// Bytes of the log files under `dir` and the time one pass of reading them takes (the second of two passes, so
/// from the page cache like the queries): the machine's limit for a scan of these files.
fn read_all(dir: &Path) -> anyhow::Result<(u64, Duration)> {
    fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                files(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "log") {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut paths = Vec::new();
    files(dir, &mut paths)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut pass = || -> anyhow::Result<(u64, Duration)> {
        let started = Instant::now();
        let mut total = 0u64;
        for path in &paths {
            let mut file = std::fs::File::open(path)?;
            loop {
                let n = std::io::Read::read(&mut file, &mut buffer)?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
        }
        Ok((total, started.elapsed()))
    };
    pass()?;
    pass()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// The Python with `duckdb`, installed into `target/bench-py` when missing.
fn duckdb_python() -> anyhow::Result<PathBuf> {
    let venv = PathBuf::from("target/bench-py");
    let python = venv.join("bin/python");
    if !python.exists() {
        let status = Command::new("python3")
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!("python3 -m venv failed");
        }
    }
    let has = Command::new(&python)
        .args(["-c", "import duckdb"])
        .stderr(std::process::Stdio::null())
        .status()?
        .success();
    if !has {
        let status = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "duckdb==2.0.0"])
            .status()?;
        if !status.success() {
            bail!("pip install duckdb failed");
        }
    }
    Ok(python)
}

const DUCKDB_SCRIPT: &str = r#"
import duckdb, json, os, statistics, sys, time
path, runs, copies = sys.argv[1], int(sys.argv[2]), sys.argv[3]
queries = json.loads(sys.stdin.read())
con = duckdb.connect()
con.execute("SET enable_progress_bar = false")
columns = "{'host':'VARCHAR','status':'INTEGER','bytes':'BIGINT','method':'VARCHAR','path':'VARCHAR','ua':'VARCHAR','ts':'BIGINT'}"
def run():
    out = []
    for q in queries:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            rows = con.execute(q).fetchall()
            times.append(time.perf_counter() - started)
        out.append({"seconds": statistics.median(times), "rows": [[str(c) for c in r] for r in rows]})
    return out
con.execute(f"CREATE VIEW logs AS SELECT * FROM read_ndjson('{path}', columns={columns})")
ndjson = run()
parquet = path + ".parquet"
con.execute(f"COPY (SELECT * FROM read_ndjson('{path}', columns={columns})) TO '{parquet}' (FORMAT parquet, COMPRESSION zstd)")
con.execute(f"CREATE OR REPLACE VIEW logs AS SELECT * FROM read_parquet('{parquet}')")
out = {"ndjson": ndjson, "parquet": run(), "parquet_bytes": os.path.getsize(parquet)}
out["copies_rows"] = con.execute(f"SELECT count(*) FROM read_parquet('{copies}')").fetchone()[0]
# VmHWM of this process image (ru_maxrss would carry the parent's peak across exec).
out["peak_rss_mib"] = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
print(json.dumps(out))
"#;

/// What one engine did with one query: its first run, the median of its runs, its answer.
struct Timed {
    first: Duration,
    median: Duration,
    rows: String,
}

/// Each query run `runs` times in a row, with its answer as CSV.
fn run_weir(
    tokio: &tokio::runtime::Runtime,
    engine: &QueryEngine,
    queries: &[Query],
    runs: usize,
) -> anyhow::Result<Vec<Timed>> {
    let mut results = Vec::new();
    for q in queries {
        let mut times = Vec::new();
        let mut rows = String::new();
        for _ in 0..runs {
            let started = Instant::now();
            let answer = tokio.block_on(engine.sql(&q.weir))?;
            times.push(started.elapsed());
            rows = String::from_utf8(answer.encode(weir_sql::Encoding::Csv)?)?;
        }
        results.push(Timed {
            first: times.first().copied().unwrap_or_default(),
            median: median(times),
            rows,
        });
    }
    Ok(results)
}

fn main() -> anyhow::Result<()> {
    let (mut records, mut runs) = (10_000_000u64, 3usize);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--records" => records = value.parse()?,
            "--runs" => runs = value.parse()?,
            _ => bail!("unknown flag {flag}"),
        }
    }
    let python = duckdb_python()?;
    let dir = tempfile::tempdir_in("target")?;
    let ndjson = dir.path().join("records.ndjson");
    let storage = Storage::open(StorageConfig {
        layer_keys: weir_sql::topic_config_keys(),
        ..StorageConfig::new(dir.path().join("data"))
    })?;
    eprintln!("writing {records} records…");
    let started = Instant::now();
    let (bytes, last_ts) = fill(&storage, &ndjson, records)?;
    eprintln!("written in {:.1} s", started.elapsed().as_secs_f64());
    let (log_bytes, read_time) = read_all(&dir.path().join("data"))?;
    let last_minute_ms = last_ts - 60_000;
    let queries = queries(last_minute_ms);

    let tokio = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Without the cache of active segments' columns, so that the log and copies columns
    // measure what each query parses; the cached engine is a fresh one, after the copies.
    let uncached = QueryConfig {
        cache_bytes_max: 0,
        ..QueryConfig::default()
    };
    let engine = QueryEngine::new(Arc::clone(&storage), None, None, &uncached)?;
    let weir_results = run_weir(&tokio, &engine, &queries, runs)?;
    eprintln!("building columnar copies…");
    let started = Instant::now();
    let stats = weir_sql::columnar::BuilderStats::default();
    weir_sql::columnar::build_missing(&storage, usize::MAX, &stats)?;
    let (build_time, built) = (started.elapsed(), stats.snapshot());
    let copied_results = run_weir(&tokio, &engine, &queries, runs)?;
    let cached = QueryEngine::new(Arc::clone(&storage), None, None, &QueryConfig::default())?;
    let cached_results = run_weir(&tokio, &cached, &queries, runs)?;
    let (cache_bytes, _) = cached.cache_usage();
    let weir_peak = proc_status::memory_mib("self", "VmHWM");

    let sql: Vec<&str> = queries.iter().map(|q| q.duckdb.as_str()).collect();
    let mut child = Command::new(&python)
        .args(["-c", DUCKDB_SCRIPT])
        .arg(&ndjson)
        .arg(runs.to_string())
        .arg(dir.path().join("data/topics/*/*.parquet"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(serde_json::to_string(&sql)?.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("duckdb script failed");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let duck: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("the duckdb script's answer: {stdout}"))?;

    println!(
        "# SQL over {records} JSON log records ({:.0} B each, {:.2} GB), median of {runs}\n",
        bytes as f64 / records as f64,
        bytes as f64 / 1e9
    );
    println!(
        "| query | Weir (log) | Weir (copies) | Weir (copies + cache), first run | Weir (copies + cache) \
         | DuckDB (NDJSON) | DuckDB (Parquet) | Weir log / DuckDB NDJSON \
         | Weir copies / DuckDB NDJSON | Weir copies + cache / DuckDB NDJSON \
         | Weir copies / DuckDB Parquet | Weir copies + cache / DuckDB Parquet | Weir answer |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    let full_scan = weir_results[1].median.as_secs_f64();
    for (i, q) in queries.iter().enumerate() {
        let (log, copied, cached) = (&weir_results[i], &copied_results[i], &cached_results[i]);
        for (source, other) in [("copies", copied), ("copies and cache", cached)] {
            if other.rows != log.rows {
                bail!(
                    "{}: the {source} answer {:?}, the log {:?}",
                    q.name,
                    other.rows,
                    log.rows
                );
            }
        }
        let seconds = |source: &str| duck[source][i]["seconds"].as_f64().unwrap_or(f64::NAN);
        let (ndjson_s, parquet_s) = (seconds("ndjson"), seconds("parquet"));
        let (log_s, copies_s, cached_s) = (
            log.median.as_secs_f64(),
            copied.median.as_secs_f64(),
            cached.median.as_secs_f64(),
        );
        println!(
            "| {} | {log_s:.3} s | {copies_s:.3} s | {:.3} s | {cached_s:.3} s | {ndjson_s:.3} s \
             | {parquet_s:.3} s | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {} |",
            q.name,
            cached.first.as_secs_f64(),
            log_s / ndjson_s,
            copies_s / ndjson_s,
            cached_s / ndjson_s,
            copies_s / parquet_s,
            cached_s / parquet_s,
            log.rows.lines().nth(1).unwrap_or("")
        );
    }
    println!(
        "\ncolumnar copies: {} files, {:.2} GB, built in {:.1} s; the closed segments they copy \
         hold all but the active segment of each partition; DuckDB reads {} rows from them. \
         DuckDB's Parquet file: {:.2} GB",
        built.files,
        built.bytes as f64 / 1e9,
        build_time.as_secs_f64(),
        duck["copies_rows"],
        duck["parquet_bytes"].as_f64().unwrap_or(f64::NAN) / 1e9
    );
    println!(
        "columns of the active segments the cache held after the runs: {:.1} MiB",
        cache_bytes as f64 / f64::from(1 << 20)
    );
    let share = |results: &[Timed]| {
        results[2].median.as_secs_f64() / results[1].median.as_secs_f64() * 100.0
    };
    println!(
        "last-minute query / GROUP BY status full scan: from the log {:.1} %, with copies {:.1} %, \
         with copies and cache {:.1} %",
        share(&weir_results),
        share(&copied_results),
        share(&cached_results)
    );
    let limit = log_bytes as f64 / read_time.as_secs_f64();
    let scan = log_bytes as f64 / full_scan;
    println!(
        "machine limit, reading the topic's {:.2} GB of files from the page cache: {:.2} GB/s; \
         the GROUP BY status scan goes through them at {:.2} GB/s ({:.1} % of it)",
        log_bytes as f64 / 1e9,
        limit / 1e9,
        scan / 1e9,
        scan / limit * 100.0
    );
    println!(
        "peak RSS: Weir process {:.0} MiB (includes writing the data); DuckDB process {:.0} MiB",
        weir_peak,
        duck["peak_rss_mib"].as_f64().unwrap_or(0.0)
    );
    println!(
        "DuckDB answers: {}",
        duck["ndjson"]
            .as_array()
            .map(|q| q
                .iter()
                .map(|q| q["rows"].to_string())
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default()
    );
    storage.close()?;
    Ok(())
}
