//! SQL pipelines on a real node: `CREATE PIPELINE … FROM TUMBLE(…)` over HTTP writes every
//! closed window once, equal to the same query run once over the finished data, through a
//! `kill -9` mid-run; late records go to the dead-letter topic; `SHOW`, `DESCRIBE`, `ALTER`
//! and `DROP PIPELINE` through `weir sql`.

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
    produce(&c, 0, 3000);
    let created = sql(
        &c,
        &format!(
            "CREATE PIPELINE errors_per_minute AS INSERT INTO errors_per_minute_out {SELECT} \
             WITH (watermark_delay = '10 seconds', idle_timeout = '2 seconds', start = 'earliest')"
        ),
    );
    assert!(created.is_ok(), "{created:?}");
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
    let (ok, out) = weir(&node, &["sql", "DROP PIPELINE errors_per_minute"]);
    assert!(ok, "{out}");
    assert_eq!(pipeline(&c), Value::Null);
    let (ok, out) = weir(&node, &["sql", "DROP PIPELINE errors_per_minute"]);
    assert!(!ok && out.contains("does not exist"), "{out}");
    let (ok, out) = weir(&node, &["sql", "DROP PIPELINE IF EXISTS errors_per_minute"]);
    assert!(ok, "{out}");
}
