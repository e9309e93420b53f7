//! SQL pipelines on a real node: `CREATE PIPELINE … FROM TUMBLE(…)` over HTTP writes every
//! closed window once, equal to the same query run once over the finished data, through a
//! `kill -9` mid-run; late records go to the dead-letter topic; results that cannot be written
//! pause the pipeline, and a resume writes them once; `SHOW`, `DESCRIBE`, `ALTER` and `DROP
//! PIPELINE` through `weir sql`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Listeners, Node, eventually};
use serde_json::{Value, json};
use weir_broker::cli::Client;

/// 2024-01-01T00:00:00Z
const T0: i64 = 1_704_067_200_000;

fn sql(c: &Client, statement: &str) -> Result<Value, String> {
    c.call("POST", "/v1/sql", Some(&json!({ "sql": statement })))
        .map_err(|e| e.to_string())
}

/// Runs a statement that must succeed, such as `CREATE PIPELINE`.
fn run(c: &Client, statement: &str) {
    let answer = sql(c, statement);
    assert!(answer.is_ok(), "{statement}: {answer:?}");
}

fn rows(c: &Client, statement: &str) -> Vec<Value> {
    let answer = sql(c, statement).unwrap();
    answer["rows"].as_array().unwrap().clone()
}

/// Log lines `from..to`, a second apart in record time, on the partition `i % 2`: host
/// `web-{i % 4}`, status 500 for every third, bytes `i % 100`.
fn produce(c: &Client, from: i64, to: i64) {
    let records: Vec<Value> = (from..to)
        .map(|i| {
            let status = if i % 3 == 0 { 500 } else { 200 };
            let value =
                json!({ "host": format!("web-{}", i % 4), "status": status, "bytes": i % 100 });
            json!({ "value": value.to_string(), "partition": i % 2, "timestamp": T0 + i * 1000 })
        })
        .collect();
    for chunk in records.chunks(500) {
        c.call(
            "POST",
            "/v1/topics/logs/records",
            Some(&json!({ "records": chunk })),
        )
        .unwrap();
    }
}

const SELECT: &str = "SELECT window_start, window_end, host, count(*) AS errors, sum(bytes) AS bytes \
    FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') WHERE status >= 500 \
    GROUP BY window_start, window_end, host";

fn pipeline(c: &Client) -> Value {
    let rows = rows(
        c,
        "SELECT * FROM weir.pipelines WHERE name = 'errors_per_minute'",
    );
    rows.first().cloned().unwrap_or(Value::Null)
}

/// The typed topic `logs`, on two partitions.
fn create_logs(c: &Client) {
    c.call(
        "POST",
        "/v1/topics",
        Some(&json!({
            "name": "logs",
            "partitions": 2,
            "configs": { "value.format": "json", "value.schema": "host TEXT, status INT, bytes BIGINT" }
        })),
    )
    .unwrap();
}

fn start(dir: &std::path::Path, listeners: &Listeners) -> (Node, Client) {
    let node = Node::start_on(dir, listeners, &[]);
    let client = Client::new(&node.url(), None);
    (node, client)
}

#[test]
fn windows_are_written_once_each_through_a_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let listeners = Listeners::fixed();
    let (node, c) = start(dir.path(), &listeners);
    create_logs(&c);
    produce(&c, 0, 3000);
    run(
        &c,
        &format!(
            "CREATE PIPELINE errors_per_minute AS INSERT INTO errors_per_minute_out {SELECT} \
             WITH (watermark_delay = '10 seconds', idle_timeout = '2 seconds', start = 'earliest')"
        ),
    );
    // The output topic was made with the query's columns.
    let topics = rows(
        &c,
        "SELECT configs FROM weir.topics WHERE name = 'errors_per_minute_out'",
    );
    let configs = topics[0]["configs"].as_str().unwrap();
    assert!(
        configs.contains(
            "window_start TIMESTAMP, window_end TIMESTAMP, host TEXT, errors BIGINT, bytes BIGINT"
        ),
        "{configs}"
    );
    eventually("windows to close", Duration::from_secs(60), || {
        pipeline(&c)["records_out"].as_i64().unwrap_or(0) > 0
    });
    // Killed three times while it works through more input, at different points of a step.
    let (mut node, mut c) = (node, c);
    for (round, pause_ms) in [(1, 20), (2, 150), (3, 400)] {
        produce(&c, 2000 + round * 1000, 3000 + round * 1000);
        std::thread::sleep(Duration::from_millis(pause_ms));
        node.kill9();
        (node, c) = start(dir.path(), &listeners);
    }
    produce(&c, 6000, 7200);
    // Idle for 2 s, the partitions stop holding windows open: every window up to the last
    // event time less the delay closes.
    let last_end = T0 + 7199 * 1000 - 10_000;
    eventually("the last windows to close", Duration::from_secs(90), || {
        pipeline(&c)["watermark_ms"].as_i64() == Some(last_end) && pipeline(&c)["lag"] == 0
    });
    let status = pipeline(&c);
    assert_eq!(status["kind"], "sql");
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(status["late_records"], 0);
    // Counters are kept with the checkpoint: they go on across the kills instead of counting
    // only what came after the last one.
    assert!(status["records_in"].as_u64() >= Some(7200), "{status}");
    let written = rows(
        &c,
        "SELECT window_start, window_end, host, errors, bytes FROM errors_per_minute_out \
         ORDER BY window_start, host",
    );
    let expected = rows(
        &c,
        &format!(
            "SELECT * FROM ({SELECT}) WHERE window_end <= to_timestamp_millis({last_end}) \
             ORDER BY window_start, host"
        ),
    );
    assert_eq!(expected.len(), 119 * 4, "119 closed minutes of 4 hosts");
    let extra: Vec<&Value> = written.iter().filter(|w| !expected.contains(w)).collect();
    let missing: Vec<&Value> = expected.iter().filter(|e| !written.contains(e)).collect();
    assert!(
        extra.is_empty() && missing.is_empty() && written.len() == expected.len(),
        "every window once: {} written, {} expected; not expected: {extra:?}; missing: {missing:?}",
        written.len(),
        expected.len()
    );
    drop(node);
}

fn weir(node: &Node, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .args(["--server", &node.url()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn late_records_are_dead_lettered_and_pipelines_are_managed_with_sql() {
    let dir = tempfile::tempdir().unwrap();
    let (node, c) = start(dir.path(), &Listeners::any());
    create_logs(&c);
    let (ok, out) = weir(
        &node,
        &[
            "sql",
            &format!(
                "CREATE PIPELINE errors_per_minute AS INSERT INTO out {SELECT} \
                 WITH (watermark_delay = '0 seconds', idle_timeout = '1 hour')"
            ),
        ],
    );
    assert!(ok, "{out}");
    produce(&c, 0, 600);
    // The least of the partitions' last event times: 598 s on partition 0.
    eventually("windows to close", Duration::from_secs(30), || {
        pipeline(&c)["watermark_ms"].as_i64() == Some(T0 + 598 * 1000)
    });
    // Ten minutes behind the watermark: late, on either partition.
    produce(&c, 0, 10);
    eventually("late records", Duration::from_secs(30), || {
        pipeline(&c)["late_records"] == 10
    });
    let letters = rows(
        &c,
        "SELECT CAST(headers[1]['value'] AS VARCHAR) AS error FROM \"errors_per_minute.dlq\"",
    );
    assert_eq!(letters.len(), 10);
    let error = letters[0]["error"].as_str().unwrap();
    assert!(error.contains("behind the watermark"), "{error}");

    let (ok, out) = weir(&node, &["sql", "SHOW PIPELINES"]);
    assert!(
        ok && out.contains("errors_per_minute") && out.contains("sql"),
        "{out}"
    );
    let (ok, out) = weir(&node, &["sql", "DESCRIBE PIPELINE errors_per_minute"]);
    assert!(ok && out.contains("TUMBLE(logs, timestamp"), "{out}");
    let (ok, out) = weir(&node, &["sql", "ALTER PIPELINE errors_per_minute PAUSE"]);
    assert!(ok, "{out}");
    assert_eq!(pipeline(&c)["status"], "paused");
    let (ok, out) = weir(&node, &["pipeline", "list"]);
    assert!(ok && out.contains("errors_per_minute"), "{out}");
    let (ok, out) = weir(&node, &["sql", "ALTER PIPELINE errors_per_minute RESUME"]);
    assert!(ok, "{out}");
    assert_eq!(pipeline(&c)["status"], "running");
    // A statement that cannot run is refused whole: no pipeline, no output topic.
    let refused = sql(
        &c,
        "CREATE PIPELINE counts AS INSERT INTO counts_out SELECT host, count(*) FROM logs GROUP BY host",
    );
    assert!(refused.unwrap_err().contains("needs a window"));
    assert!(rows(&c, "SELECT name FROM weir.topics WHERE name = 'counts_out'").is_empty());
    // The state is saved in one file beside the metadata, which goes with the pipeline.
    let steps = dir.path().join("sql-pipelines/errors_per_minute");
    let files = std::fs::read_dir(&steps).unwrap().count();
    assert_eq!(files, 1, "only the last checkpoint's file is kept");
    let (ok, out) = weir(&node, &["sql", "DROP PIPELINE errors_per_minute"]);
    assert!(ok, "{out}");
    assert_eq!(pipeline(&c), Value::Null);
    assert!(!steps.exists(), "{} outlived its pipeline", steps.display());
    let (ok, out) = weir(&node, &["sql", "DROP PIPELINE errors_per_minute"]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = weir(&node, &["sql", "DROP PIPELINE IF EXISTS errors_per_minute"]);
    assert!(ok, "{out}");
}

const BY_PARTITION: &str = "SELECT window_start, window_end, partition, count(*) AS n \
    FROM TUMBLE(logs, timestamp, INTERVAL '1 minute') GROUP BY window_start, window_end, partition";

#[test]
fn results_that_cannot_be_written_pause_the_pipeline_until_the_output_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let (node, c) = start(dir.path(), &Listeners::any());
    create_logs(&c);
    // One partition, where the query's `partition` column routes rows to two.
    c.call(
        "POST",
        "/v1/topics",
        Some(&json!({
            "name": "by_partition_out",
            "partitions": 1,
            "configs": {
                "value.format": "json",
                "value.schema": "window_start TIMESTAMP, window_end TIMESTAMP, n BIGINT"
            }
        })),
    )
    .unwrap();
    produce(&c, 0, 600);
    run(
        &c,
        &format!(
            "CREATE PIPELINE by_partition AS INSERT INTO by_partition_out {BY_PARTITION} \
             WITH (watermark_delay = '0 seconds', idle_timeout = '1 hour', start = 'earliest')"
        ),
    );
    let status = || {
        rows(
            &c,
            "SELECT * FROM weir.pipelines WHERE name = 'by_partition'",
        )[0]
        .clone()
    };
    eventually("the pipeline to pause", Duration::from_secs(30), || {
        status()["status"] == "paused"
    });
    let paused = status();
    let reason = paused["last_error"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "the results of a step cannot be written: partition 1 of topic by_partition_out does not exist"
        ),
        "{paused}"
    );
    // Nothing of the failed step was saved: no window, on either partition.
    let written = rows(&c, "SELECT count(*) AS n FROM by_partition_out");
    assert_eq!(written[0]["n"], 0);
    assert_eq!(paused["records_out"], 0, "{paused}");

    // With the partition there, a resume takes the step again from the checkpoint before it.
    assert_eq!(common::grow_topic(&node, "by_partition_out", 2), 0);
    run(&c, "ALTER PIPELINE by_partition RESUME");
    // The least of the partitions' last event times is 598 s, on partition 0: nine minutes
    // have closed.
    eventually("the windows to be written", Duration::from_secs(30), || {
        status()["watermark_ms"].as_i64() == Some(T0 + 598 * 1000)
    });
    assert_eq!(status()["status"], "running");
    let windows = rows(
        &c,
        "SELECT window_start, partition, n FROM by_partition_out ORDER BY window_start, partition",
    );
    let last_end = T0 + 540 * 1000;
    let expected = rows(
        &c,
        &format!(
            "SELECT window_start, partition, n FROM ({BY_PARTITION}) \
             WHERE window_end <= to_timestamp_millis({last_end}) ORDER BY window_start, partition"
        ),
    );
    assert_eq!(
        expected.len(),
        9 * 2,
        "nine closed minutes of two partitions"
    );
    assert_eq!(windows, expected, "every window once, on its own partition");
    drop(node);
}

/// A scalar plugin that fails on `boom` and traps on `trap`.
const FRAGILE: &str = r#"
#[weir::scalar]
pub fn fragile(v: &str) -> weir::Result<Option<String>> {
    match v {
        "trap" => panic!("trapped on purpose"),
        "boom" => Err(weir::Error::msg("boom is not a word")),
        _ => Ok(Some(v.to_uppercase())),
    }
}
"#;

#[test]
fn a_wasm_scalar_function_runs_in_one_off_and_continuous_queries() {
    let url_path = std::fs::read(weir_tests::wasm::plugin_wasm("url-path").unwrap()).unwrap();
    let fragile =
        std::fs::read(weir_tests::wasm::build_plugin_source("fragile", FRAGILE).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let listeners = Listeners::fixed();
    let (node, c) = start(dir.path(), &listeners);
    c.send("PUT", "/v1/plugins/url-path", "application/wasm", &url_path)
        .unwrap();
    c.send("PUT", "/v1/plugins/fragile", "application/wasm", &fragile)
        .unwrap();
    c.call(
        "POST",
        "/v1/topics",
        Some(&json!({
            "name": "requests",
            "partitions": 2,
            "configs": { "value.format": "json", "value.schema": "path TEXT" }
        })),
    )
    .unwrap();
    let paths = [
        "/users/1/orders/7",
        "/users/22",
        "/health",
        "/users/333/orders/9?x=1",
    ];
    let records: Vec<Value> = (0..400)
        .map(|i| {
            let value = json!({ "path": paths[i % 4] }).to_string();
            json!({ "value": value, "partition": i % 2, "timestamp": T0 + i as i64 * 1000 })
        })
        .collect();
    c.call(
        "POST",
        "/v1/topics/requests/records",
        Some(&json!({ "records": records })),
    )
    .unwrap();

    sql(&c, "CREATE FUNCTION url_path AS PLUGIN 'url-path'").unwrap();
    sql(&c, "CREATE FUNCTION fragile AS PLUGIN 'fragile'").unwrap();
    let refused = sql(&c, "CREATE FUNCTION regex AS PLUGIN 'nothing'").unwrap_err();
    assert!(
        refused.contains("plugin nothing does not exist"),
        "{refused}"
    );
    let listed = rows(&c, "SELECT name, plugin FROM weir.functions ORDER BY name");
    assert_eq!(
        listed,
        [
            json!({"name": "fragile", "plugin": "fragile"}),
            json!({"name": "url_path", "plugin": "url-path"})
        ]
    );
    // In SELECT and WHERE of a one-off query.
    let routes = rows(
        &c,
        "SELECT url_path(path) AS route, count(*) AS n FROM requests \
         WHERE url_path(path) <> '/health' GROUP BY route ORDER BY route",
    );
    assert_eq!(
        routes,
        [
            json!({"route": "/users/:id", "n": 100}),
            json!({"route": "/users/:id/orders/:id", "n": 200})
        ]
    );
    // A failed call fails the query with the function, the plugin and its message.
    let failed = sql(
        &c,
        "SELECT fragile(x) FROM (VALUES ('a'), ('boom')) AS t(x)",
    )
    .unwrap_err();
    assert!(
        failed.contains("function fragile (plugin fragile@1): boom is not a word"),
        "{failed}"
    );
    let trapped = sql(&c, "SELECT fragile(x) FROM (VALUES ('trap')) AS t(x)").unwrap_err();
    assert!(
        trapped.contains("function fragile (plugin fragile@1)"),
        "{trapped}"
    );
    let after = rows(&c, "SELECT fragile('ok') AS shout");
    assert_eq!(
        after,
        [json!({"shout": "OK"})],
        "the next call gets a new instance"
    );

    // In a continuous query, per minute and route, through a restart.
    sql(
        &c,
        "CREATE PIPELINE routes AS INSERT INTO routes_out \
         SELECT window_start, url_path(path) AS route, count(*) AS requests \
         FROM TUMBLE(requests, timestamp, INTERVAL '1 minute') \
         WHERE url_path(path) <> '/health' GROUP BY window_start, url_path(path) \
         WITH (watermark_delay = '0 seconds', idle_timeout = '1 second', start = 'earliest')",
    )
    .unwrap();
    node.kill9();
    let (_node, c) = start(dir.path(), &listeners);
    let expected = rows(
        &c,
        "SELECT window_start, url_path(path) AS route, count(*) AS requests \
         FROM TUMBLE(requests, timestamp, INTERVAL '1 minute') \
         WHERE window_end <= to_timestamp_millis(1704067599000) AND url_path(path) <> '/health' \
         GROUP BY window_start, url_path(path) ORDER BY window_start, route",
    );
    assert_eq!(expected.len(), 6 * 2, "six closed minutes of two routes");
    eventually(
        "the windows of the pipeline",
        Duration::from_secs(30),
        || rows(&c, "SELECT count(*) AS n FROM routes_out")[0]["n"] == 12,
    );
    let written = rows(
        &c,
        "SELECT window_start, route, requests FROM routes_out ORDER BY window_start, route",
    );
    assert_eq!(written, expected);
    sql(&c, "DROP FUNCTION fragile").unwrap();
    let gone = sql(&c, "SELECT fragile('x')").unwrap_err();
    assert!(gone.contains("fragile"), "{gone}");
    run(&c, "DROP FUNCTION IF EXISTS fragile");
}
