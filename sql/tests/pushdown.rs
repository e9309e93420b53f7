#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Pushdown proven from the scan's own counters (`records_read`, `reads` in EXPLAIN ANALYZE):
//! offset, partition and timestamp filters read only what they need, and LIMIT stops the read.

mod common;

use std::sync::Arc;

use common::{append, record};
use weir_sql::{QueryConfig, QueryEngine};
use weir_storage::{Compression, Storage, StorageConfig};

const T0: i64 = 1_704_067_200_000;
/// Records per partition, in batches of 100, one second apart.
const RECORDS: i64 = 10_000;

struct Fixture {
    _dir: tempfile::TempDir,
    engine: QueryEngine,
}

/// These tests count what scans decode from the log: the columns kept from active segments
/// would answer a query run again without decoding (the cache has tests of its own).
fn fixture() -> Fixture {
    fixture_with(&QueryConfig {
        cache_bytes_max: 0,
        ..QueryConfig::default()
    })
}

fn fixture_with(config: &QueryConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig {
        layer_keys: weir_sql::topic_config_keys(),
        ..StorageConfig::new(dir.path())
    })
    .unwrap();
    storage.create_topic("big", 2, Default::default()).unwrap();
    for partition in 0..2 {
        for batch in 0..RECORDS / 100 {
            let records = (0..100)
                .map(|i| {
                    record(
                        T0 + (batch * 100 + i) * 1000,
                        None,
                        &format!("v{}", batch * 100 + i),
                        &[],
                    )
                })
                .collect();
            append(&storage, "big", partition, Compression::None, records);
        }
    }
    let engine = QueryEngine::new(Arc::clone(&storage), None, None, config).unwrap();
    Fixture { _dir: dir, engine }
}

/// (answer as text, records the scan went over) of a query: decoded or counted from headers.
async fn run(engine: &QueryEngine, sql: &str) -> (String, u64) {
    let (text, scan) = run_counted(engine, sql).await;
    (text, scan.read + scan.counted)
}

/// Records a scan decoded (`read`) and counted from batch headers without decoding them.
struct Scanned {
    read: u64,
    counted: u64,
}

async fn run_counted(engine: &QueryEngine, sql: &str) -> (String, Scanned) {
    let answer = engine.sql(sql).await.unwrap();
    let text = String::from_utf8(answer.encode(weir_sql::Encoding::Csv).unwrap()).unwrap();
    let plan = engine.sql(&format!("EXPLAIN ANALYZE {sql}")).await.unwrap();
    let plan = String::from_utf8(plan.encode(weir_sql::Encoding::Csv).unwrap()).unwrap();
    let line = plan
        .lines()
        .find(|l| l.contains("TopicScan"))
        .unwrap_or_else(|| panic!("no TopicScan in {plan}"));
    let scanned = Scanned {
        read: metric(line, "records_read"),
        counted: metric(line, "records_counted"),
    };
    (text, scanned)
}

/// A counter of an EXPLAIN ANALYZE line, which DataFusion prints rounded: `records_read=200`
/// or `records_read=20.00 K`.
fn metric(line: &str, name: &str) -> u64 {
    let shown = line
        .split(&format!("{name}="))
        .nth(1)
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let shown: String = shown
        .chars()
        .take_while(|c| *c != ',' && *c != ']')
        .collect();
    let (number, unit) = shown.split_once(' ').unwrap_or((shown.as_str(), ""));
    let scale = match unit {
        "" => 1.0,
        "K" => 1e3,
        "M" => 1e6,
        other => panic!("unit {other:?} in {line}"),
    };
    (number.parse::<f64>().unwrap() * scale).round() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_filters_read_only_the_tail() {
    let f = fixture();
    let (answer, read) = run(
        &f.engine,
        r#"SELECT count(*) FROM big WHERE "offset" >= 9900"#,
    )
    .await;
    assert_eq!(answer, "count(*)\n200\n");
    // The last batch of 100 of each partition, and at most a batch more of each: nothing near
    // the start of the 10 000 is decoded.
    assert!((200..=400).contains(&read), "read {read} records for 200");
    let (answer, read) = run(
        &f.engine,
        r#"SELECT count(*) FROM big WHERE partition = 1 AND "offset" BETWEEN 5000 AND 5049"#,
    )
    .await;
    assert_eq!(answer, "count(*)\n50\n");
    assert!(
        (50..=200).contains(&read),
        "read {read} records for 50 (batches of 100)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_ranges_start_at_the_time_index() {
    let f = fixture();
    // The last 1 %: records 9900.. of each partition.
    let since = "2024-01-01T00:00:00Z";
    let sql = format!(
        r#"SELECT count(*) FROM big WHERE "timestamp" >= TIMESTAMP '{since}' + INTERVAL '9900 seconds'"#
    );
    let (answer, read) = run(&f.engine, &sql).await;
    assert_eq!(answer, "count(*)\n200\n");
    assert!(
        read <= 2 * 200,
        "read {read} records for 200 (the time index is sparse, a batch or two more is fine)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_stops_the_scan() {
    let f = fixture();
    let (answer, read) = run(
        &f.engine,
        "SELECT value_text FROM big WHERE partition = 0 LIMIT 5",
    )
    .await;
    assert_eq!(answer.lines().count(), 6, "{answer}");
    assert!(read <= 300, "read {read} records of 10 000 for LIMIT 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfiltered_scans_read_everything_once() {
    let f = fixture();
    let (answer, read) = run(&f.engine, "SELECT count(*) FROM big").await;
    assert_eq!(answer, "count(*)\n20000\n");
    assert_eq!(read, 20_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_that_reads_no_column_counts_batch_headers() {
    let f = fixture();
    let (answer, scan) = run_counted(&f.engine, "SELECT count(*) FROM big").await;
    assert_eq!(answer, "count(*)\n20000\n");
    assert_eq!((scan.read, scan.counted), (0, 20_000));
    // A range that cuts two batches of 100: those two are decoded, the batches between counted.
    let (answer, scan) = run_counted(
        &f.engine,
        r#"SELECT count(*) FROM big WHERE partition = 1 AND "offset" BETWEEN 5050 AND 6049"#,
    )
    .await;
    assert_eq!(answer, "count(*)\n1000\n");
    assert_eq!((scan.read, scan.counted), (100, 900));
    // A LIMIT on a query with no column stops the count.
    let (answer, _) = run_counted(
        &f.engine,
        "SELECT count(*) FROM (SELECT 1 FROM big LIMIT 7)",
    )
    .await;
    assert_eq!(answer, "count(*)\n7\n");
    // A column read, or a bound on time, decodes every record it keeps.
    let (answer, scan) = run_counted(&f.engine, "SELECT count(value_text) FROM big").await;
    assert_eq!(answer, "count(big.value_text)\n20000\n");
    assert_eq!((scan.read, scan.counted), (20_000, 0));
    let (answer, scan) = run_counted(
        &f.engine,
        r#"SELECT count(*) FROM big WHERE "timestamp" < TIMESTAMP '2024-01-01T00:00:10Z'"#,
    )
    .await;
    assert_eq!(answer, "count(*)\n20\n");
    assert_eq!(scan.counted, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_the_memory_cap_fails_alone() {
    let f = fixture_with(&QueryConfig {
        memory_bytes_max: 64 << 10,
        ..QueryConfig::default()
    });
    // 10 000 distinct groups need more than 64 KiB of aggregation state.
    let error = f
        .engine
        .sql("SELECT value_text, count(*) AS n FROM big GROUP BY value_text")
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(error.contains("Resources exhausted"), "{error}");
    // The engine goes on with queries that fit.
    let (answer, _) = run(&f.engine, r#"SELECT count(*) FROM big WHERE "offset" < 10"#).await;
    assert_eq!(answer, "count(*)\n20\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_of_many_segments_is_scanned_in_parallel_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig {
        layer_keys: weir_sql::topic_config_keys(),
        ..StorageConfig::new(dir.path())
    })
    .unwrap();
    let configs = [("segment.bytes".to_string(), "16384".to_string())];
    storage
        .create_topic("segmented", 1, configs.into_iter().collect())
        .unwrap();
    for batch in 0..RECORDS / 100 {
        let records = (0..100)
            .map(|i| {
                record(
                    T0 + batch * 100 + i,
                    None,
                    &format!("v{}", batch * 100 + i),
                    &[],
                )
            })
            .collect();
        append(&storage, "segmented", 0, Compression::None, records);
    }
    let segments = storage.log("segmented", 0).unwrap().segment_count();
    assert!(segments >= 8, "{segments} segments");
    let config = QueryConfig {
        target_partitions: 4,
        ..QueryConfig::default()
    };
    let engine = QueryEngine::new(Arc::clone(&storage), None, None, &config).unwrap();

    let plan = engine
        .sql("EXPLAIN SELECT count(*) FROM segmented")
        .await
        .unwrap();
    let plan = String::from_utf8(plan.encode(weir_sql::Encoding::Csv).unwrap()).unwrap();
    let scan = plan.lines().find(|l| l.contains("TopicScan")).unwrap();
    let ranges = scan.split("offsets=[").nth(1).unwrap();
    let ranges: Vec<&str> = ranges.split(']').next().unwrap().split(", ").collect();
    assert_eq!(ranges.len(), 4, "{scan}");
    assert!(
        ranges[0].starts_with("0:0..") && ranges[3].ends_with("..10000"),
        "{scan}"
    );

    // Every record once, in any of the ranges.
    let (answer, read) = run(&engine, "SELECT count(*), sum(\"offset\") FROM segmented").await;
    assert_eq!(
        answer,
        format!(
            "count(*),sum(segmented.offset)\n10000,{}\n",
            9999 * 10000 / 2
        )
    );
    assert_eq!(read, 10_000);
    let (answer, _) = run(
        &engine,
        "SELECT count(*) FROM segmented WHERE \"offset\" >= 2500 AND \"offset\" < 7500",
    )
    .await;
    assert_eq!(answer, "count(*)\n5000\n");
}
