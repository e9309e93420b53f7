#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Continuous queries without a node: records pushed a step at a time give the rows the same
//! statement gives as a one-off query over the finished data, through a snapshot and restore;
//! late records are set aside with their reason; what cannot run continuously is refused.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::append;
use serde_json::Value;
use weir_runtime::continuous::{Emitted, Operator};
use weir_sql::stream::Query;
use weir_sql::stream::statement::{Command, parse};
use weir_sql::{Encoding, QueryConfig, QueryEngine};
use weir_storage::{Compression, NewRecord, Record, Storage, StorageConfig};

/// 2024-01-01T00:00:00Z
const T0: i64 = 1_704_067_200_000;

fn json(schema: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("value.format".to_string(), "json".to_string()),
        ("value.schema".to_string(), schema.to_string()),
    ])
}

fn storage(dir: &tempfile::TempDir) -> Arc<Storage> {
    let storage = Storage::open(StorageConfig {
        layer_keys: weir_sql::topic_config_keys(),
        ..StorageConfig::new(dir.path())
    })
    .unwrap();
    storage
        .create_topic(
            "logs",
            2,
            json("host TEXT, status INT, bytes BIGINT, at TIMESTAMP"),
        )
        .unwrap();
    storage
}

/// The event time of line `i`: `i` seconds, up to 20 s early or late.
fn event_time(i: i64) -> i64 {
    let jitter = (i * 7919) % 41 - 20;
    T0 + i * 1000 + jitter * 1000
}

/// `count` log lines a second apart in event time, each up to 20 s early or late, spread
/// over two partitions.
fn fill(storage: &Storage, count: i64) -> BTreeMap<u32, Vec<Record>> {
    let mut by_partition: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
    for i in 0..count {
        let at = event_time(i);
        let status = [200, 500, 503][(i % 3) as usize];
        let value = serde_json::json!({
            "host": format!("web-{}", i % 5),
            "status": status,
            "bytes": i % 100,
            "at": at,
        });
        by_partition
            .entry((i % 2) as u32)
            .or_default()
            .push(NewRecord {
                timestamp: T0 + i * 1000,
                key: None,
                value: Some(value.to_string().into()),
                headers: Vec::new(),
            });
    }
    let mut read = BTreeMap::new();
    for (partition, records) in by_partition {
        append(storage, "logs", partition, Compression::None, records);
        let log = storage.log("logs", partition).unwrap();
        read.insert(partition, log.read_records(0, u64::MAX >> 1).unwrap());
    }
    read
}

async fn plan(storage: &Arc<Storage>, sql: &str) -> Result<Query, weir_sql::Error> {
    let Some(Command::Create(create)) = parse(sql)? else {
        panic!("not a CREATE PIPELINE: {sql}");
    };
    Query::plan(storage.clone(), &create, None).await
}

/// Pushes one partition's records as a step of their own.
fn push(
    query: &mut Query,
    partition: u32,
    records: &[Record],
    now_ms: i64,
) -> Result<Emitted, String> {
    let mut out = query.push(&[(partition, records.to_vec())], now_ms);
    assert_eq!(out.len(), 1, "one answer for one partition");
    out.remove(0)
}

/// The JSON objects of a one-off query's rows.
async fn rows(storage: &Arc<Storage>, sql: &str) -> Vec<Value> {
    let engine = QueryEngine::new(storage.clone(), None, None, &QueryConfig::default()).unwrap();
    let answer = engine.sql(sql).await.unwrap();
    let body: Value = serde_json::from_slice(&answer.encode(Encoding::Json).unwrap()).unwrap();
    body["rows"].as_array().unwrap().clone()
}

/// The JSON values of records emitted by partition.
fn values(emitted: &[(u32, Vec<NewRecord>)]) -> Vec<Value> {
    emitted
        .iter()
        .flat_map(|(_, records)| records)
        .map(|r| serde_json::from_slice(r.value.as_deref().unwrap()).unwrap())
        .collect()
}

fn sorted(mut rows: Vec<Value>) -> Vec<Value> {
    rows.sort_by_key(|row| row.to_string());
    rows
}

const ERRORS_PER_MINUTE: &str = "CREATE PIPELINE errors_per_minute AS \
    INSERT INTO out \
    SELECT window_start, window_end, host, count(*) AS errors, sum(bytes) AS bytes \
    FROM TUMBLE(logs, at, INTERVAL '1 minute') \
    WHERE status >= 500 \
    GROUP BY window_start, window_end, host \
    WITH (watermark_delay = '30 seconds', start = 'earliest')";

const ERRORS_BY_HOST: &str = "SELECT window_start, window_end, host, count(*) AS errors, \
    sum(bytes) AS bytes FROM WINDOWS WHERE status >= 500 GROUP BY window_start, window_end, host";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_windows_closed_by_the_watermark_equal_the_one_off_query() {
    let windows = "TUMBLE(logs, at, INTERVAL '1 minute')";
    windows_equal_the_one_off_query(&ERRORS_BY_HOST.replace("WINDOWS", windows)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_closed_by_the_watermark_equal_the_one_off_query() {
    let windows = "HOP(logs, at, INTERVAL '20 seconds', INTERVAL '1 minute')";
    windows_equal_the_one_off_query(&ERRORS_BY_HOST.replace("WINDOWS", windows)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_counts_averages_extremes_and_having_equal_the_one_off_query() {
    windows_equal_the_one_off_query(
        "SELECT window_end, count(DISTINCT host) AS hosts, avg(bytes) AS mean, \
         max(status) AS worst, min(bytes) AS least, CAST(window_end AS TEXT) AS end_text \
         FROM TUMBLE(logs, at, INTERVAL '30 seconds') \
         GROUP BY window_end HAVING count(*) > 1",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_and_ordered_aggregates_over_computed_keys_equal_the_one_off_query() {
    windows_equal_the_one_off_query(
        "SELECT window_start, window_end, status / 100 AS class, \
         count(*) FILTER (WHERE bytes > 50) AS big, \
         sum(bytes) FILTER (WHERE host = 'web-1') AS from_one, \
         first_value(bytes ORDER BY bytes DESC) AS most \
         FROM TUMBLE(logs, at, INTERVAL '1 minute') \
         GROUP BY window_start, window_end, status / 100",
    )
    .await;
}

async fn windows_equal_the_one_off_query(select: &str) {
    let statement = format!(
        "CREATE PIPELINE errors_per_minute AS INSERT INTO out {select} \
         WITH (watermark_delay = '30 seconds', start = 'earliest')"
    );
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let input = fill(&storage, 2000);
    // The output topic takes its columns from the query, as CREATE PIPELINE makes it.
    let mut query = plan(&storage, &statement).await.unwrap();
    let columns: Vec<String> = query
        .output_schema()
        .fields()
        .iter()
        .map(|f| {
            let kind = match f.data_type() {
                datafusion::arrow::datatypes::DataType::Timestamp(..) => "TIMESTAMP",
                datafusion::arrow::datatypes::DataType::Utf8 => "TEXT",
                datafusion::arrow::datatypes::DataType::Float64 => "DOUBLE",
                _ => "BIGINT",
            };
            format!("{} {kind}", f.name())
        })
        .collect();
    storage
        .create_topic("out", 2, json(&columns.join(", ")))
        .unwrap();
    let mut emitted = Vec::new();
    let now = weir_storage::now_ms();
    // Steps of both partitions, a first large one (its rows built in parallel) and then 50
    // records each; halfway, the state goes through a snapshot into a new operator, as after
    // a restart.
    let bounds = [0, 600, 650, 700, 750, 800, 850, 900, 950, 1000];
    for (step, range) in bounds.windows(2).enumerate() {
        if step == 3 {
            // A checkpoint the operator goes on from: its state stays whole.
            let open = query.gauges();
            query.snapshot().unwrap();
            assert_eq!(query.gauges(), open);
        }
        if step == 5 {
            let state = query.snapshot().unwrap();
            assert!(query.gauges().open_windows > 0);
            query = plan(&storage, &statement).await.unwrap();
            query.restore(&state).unwrap();
        }
        let inputs: Vec<(u32, Vec<Record>)> = input
            .iter()
            .map(|(partition, records)| (*partition, records[range[0]..range[1]].to_vec()))
            .collect();
        for out in query.push(&inputs, now) {
            let out = out.unwrap();
            assert!(out.late.is_empty(), "{:?}", out.late);
            emitted.extend(out.made().unwrap());
        }
    }
    // Once both partitions are idle the watermark is the latest event time less the delay.
    let idle = query.tick(now + 31_000).unwrap();
    emitted.extend(idle.made().unwrap());
    let watermark = query.gauges().watermark_ms.unwrap();
    let latest = (0..2000).map(event_time).max().unwrap();
    assert_eq!(
        watermark,
        latest - 30_000,
        "the largest event time less the delay"
    );

    let expected = rows(
        &storage,
        &format!("SELECT * FROM ({select}) WHERE window_end <= to_timestamp_millis({watermark})"),
    )
    .await;
    assert!(
        expected.len() > 60,
        "{} rows of closed windows",
        expected.len()
    );
    assert_eq!(sorted(values(&emitted)), sorted(expected));
    // Result records are keyed by host, in the partition of their key, and stamped with their
    // window's end.
    for (partition, records) in &emitted {
        for record in records {
            let value: Value = serde_json::from_slice(record.value.as_deref().unwrap()).unwrap();
            let key = record.key.as_deref();
            assert_eq!(key, value["host"].as_str().map(str::as_bytes));
            if let Some(key) = key {
                assert_eq!(*partition, weir_runtime::partition_for_key(key, 2));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_behind_the_watermark_are_late_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let input = fill(&storage, 400);
    storage.create_topic("out", 1, BTreeMap::new()).unwrap();
    let mut query = plan(&storage, ERRORS_PER_MINUTE).await.unwrap();
    let now = weir_storage::now_ms();
    // Partition 0 alone holds the watermark once partition 1 has been idle for 30 s.
    push(&mut query, 0, &input[&0], now).unwrap();
    query.tick(now + 30_000).unwrap();
    let watermark = query.gauges().watermark_ms.unwrap();
    let out = push(&mut query, 1, &input[&1][..20], now + 30_000).unwrap();
    assert_eq!(
        out.late.len(),
        20,
        "the first 40 s of partition 1 are behind {watermark}"
    );
    assert!(
        out.late[0].reason.contains("behind the watermark"),
        "{}",
        out.late[0].reason
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_naming_a_partition_the_output_lacks_fail_when_their_records_are_made() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let input = fill(&storage, 400);
    storage.create_topic("out", 1, BTreeMap::new()).unwrap();
    let statement = "CREATE PIPELINE by_partition AS INSERT INTO out \
        SELECT window_start, window_end, partition, count(*) AS n \
        FROM TUMBLE(logs, at, INTERVAL '1 minute') \
        GROUP BY window_start, window_end, partition \
        WITH (watermark_delay = '0 seconds', start = 'earliest')";
    let mut query = plan(&storage, statement).await.unwrap();
    let now = weir_storage::now_ms();
    let mut emitted = query.push(&[(0, input[&0].clone()), (1, input[&1].clone())], now);
    emitted.push(query.tick(now + 31_000));
    // The windows close on the operator's thread; their records are made later, and those of
    // partition 1 have nowhere to go.
    let made: Vec<Result<_, String>> = emitted.into_iter().map(|e| e.unwrap().made()).collect();
    let error = made.iter().find_map(|m| m.as_ref().err()).unwrap();
    assert!(
        error.contains("partition 1 of topic out does not exist"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_its_bound_on_open_groups_refuses_the_next_batch() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let input = fill(&storage, 400);
    storage.create_topic("out", 1, BTreeMap::new()).unwrap();
    let query = plan(&storage, ERRORS_PER_MINUTE).await.unwrap();
    let mut query = query.with_open_groups_max(5);
    // 200 records of partition 0 span four minutes of 5 hosts: past 5 groups.
    push(&mut query, 0, &input[&0][..100], 0).unwrap();
    let before = query.gauges();
    assert!(before.open_groups >= 5, "{before:?}");
    let error = push(&mut query, 0, &input[&0][100..], 0).err().unwrap();
    assert!(
        error.contains("groups in open windows, the most a pipeline holds (5)"),
        "{error}"
    );
    assert_eq!(query.gauges(), before, "the refused batch changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_without_aggregate_runs_record_by_record() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    let input = fill(&storage, 300);
    storage
        .create_topic("errors", 2, json("host TEXT, status INT"))
        .unwrap();
    let sql =
        "CREATE PIPELINE p AS INSERT INTO errors SELECT host, status FROM logs WHERE status = 503";
    let mut query = plan(&storage, sql).await.unwrap();
    let mut emitted = Vec::new();
    for (partition, records) in &input {
        emitted.extend(push(&mut query, *partition, records, 0).unwrap().records);
    }
    let expected = rows(&storage, "SELECT host, status FROM logs WHERE status = 503").await;
    assert_eq!(expected.len(), 100);
    assert_eq!(sorted(values(&emitted)), sorted(expected));

    // Windows without an aggregate: each row with the bounds of its windows, as it comes.
    storage
        .create_topic("stamped", 1, json("host TEXT, window_start TIMESTAMP"))
        .unwrap();
    let sql = "CREATE PIPELINE q AS INSERT INTO stamped SELECT host, window_start \
               FROM HOP(logs, at, INTERVAL '30 seconds', INTERVAL '1 minute') WHERE status = 503";
    let mut query = plan(&storage, sql).await.unwrap();
    let mut emitted = Vec::new();
    for (partition, records) in &input {
        emitted.extend(push(&mut query, *partition, records, 0).unwrap().records);
    }
    let expected = rows(
        &storage,
        "SELECT host, window_start FROM HOP(logs, at, INTERVAL '30 seconds', INTERVAL '1 minute') \
         WHERE status = 503",
    )
    .await;
    assert_eq!(expected.len(), 200, "two windows a record");
    assert_eq!(sorted(values(&emitted)), sorted(expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_run_continuously_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let storage = storage(&dir);
    storage.create_topic("other", 1, BTreeMap::new()).unwrap();
    for (select, expected) in [
        (
            "SELECT host, count(*) FROM logs GROUP BY host",
            "needs a window",
        ),
        (
            "SELECT host, count(*) FROM TUMBLE(logs, at, INTERVAL '1 minute') GROUP BY host",
            "groups by its window",
        ),
        ("SELECT host FROM logs ORDER BY host", "ORDER BY"),
        ("SELECT host FROM logs LIMIT 3", "LIMIT"),
        (
            "SELECT l.host FROM logs l JOIN other o ON l.key = o.key",
            "reads one topic",
        ),
        ("SELECT nope FROM logs", "nope"),
        (
            "SELECT * FROM TUMBLE(logs, host, INTERVAL '1 minute')",
            "not a TIMESTAMP",
        ),
        ("SELECT * FROM missing", "missing"),
    ] {
        let sql = format!("CREATE PIPELINE p AS INSERT INTO out {select}");
        let error = plan(&storage, &sql).await.err().map(|e| e.to_string());
        let error = error.unwrap_or_default();
        assert!(error.contains(expected), "{select}: {error}");
    }
}
