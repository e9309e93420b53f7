//! SQL against a real node: JSON logs produced with kcat counted and grouped exactly, over HTTP
//! in every encoding and through `weir sql`; a consumer group's lag in `weir.groups` as it
//! consumes; errors with their message while the node goes on; columnar copies of closed
//! segments answering as the log does.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Node, create_topic, eventually, have, kafka_call, kcat, metric, started};
use serde_json::{Value, json};
use weir_broker::cli::Client;

fn sql_json(c: &Client, statement: &str) -> Value {
    c.call("POST", "/v1/sql", Some(&json!({ "sql": statement })))
        .unwrap()
}

fn weir(node: &Node, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .args(["--server", &node.url()])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What [`kcat_logs`] produced: 600 JSON lines and one junk line.
struct Logs {
    errors_by_host: [u64; 3],
    bytes_by_host: [u64; 3],
    not_found: u64,
}

/// A node with the typed topic `logs` (created with `weir topic create`) holding 600 JSON lines
/// produced with kcat: host i%3, status 200 except every 7th (500) and every 11th (404), bytes
/// i; then one line that is not JSON. `None` when kcat is missing outside CI.
fn kcat_logs() -> Option<(tempfile::TempDir, Node, Client, Logs)> {
    if !have("kcat", "apt-get install kcat") {
        return None;
    }
    let (dir, node, c) = started(&[]);
    let (ok, _, err) = weir(
        &node,
        &[
            "topic",
            "create",
            "logs",
            "--partitions",
            "3",
            "--value-format",
            "json",
            "--schema",
            "host TEXT, status INT, bytes BIGINT",
        ],
    );
    assert!(ok, "{err}");
    let mut lines = Vec::new();
    let mut logs = Logs {
        errors_by_host: [0; 3],
        bytes_by_host: [0; 3],
        not_found: 0,
    };
    for i in 0..600u64 {
        let status = if i % 7 == 0 {
            500
        } else if i % 11 == 0 {
            404
        } else {
            200
        };
        let host = i % 3;
        match status {
            500 => logs.errors_by_host[host as usize] += 1,
            404 => logs.not_found += 1,
            _ => {}
        }
        logs.bytes_by_host[host as usize] += i;
        lines.push(format!(
            r#"web-{host}:{{"host":"web-{host}","status":{status},"bytes":{i}}}"#
        ));
    }
    lines.push("junk:this is not json".into());
    kcat(
        &node,
        &["-P", "-t", "logs", "-K:"],
        &(lines.join("\n") + "\n"),
    );
    Some((dir, node, c, logs))
}

#[test]
fn json_logs_from_kcat_are_counted_exactly() {
    let Some((_dir, _node, c, logs)) = kcat_logs() else {
        return;
    };
    let answer = sql_json(
        &c,
        "SELECT host, count(*) AS errors FROM logs WHERE status >= 500 GROUP BY host ORDER BY host",
    );
    let rows: Vec<(String, u64)> = answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_string(),
                r["errors"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        (0..3)
            .map(|h| (format!("web-{h}"), logs.errors_by_host[h]))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        answer["columns"][0],
        json!({ "name": "host", "type": "Utf8" })
    );

    let answer = sql_json(
        &c,
        "SELECT count(*) AS n, count(status) AS parsed, sum(bytes) AS bytes FROM logs",
    );
    assert_eq!(
        answer["rows"][0],
        json!({ "n": 601, "parsed": 600, "bytes": logs.bytes_by_host.iter().sum::<u64>() })
    );
}

/// The error text of a statement that fails over `POST /v1/sql`.
fn sql_error(c: &Client, statement: &str) -> String {
    c.call("POST", "/v1/sql", Some(&json!({ "sql": statement })))
        .unwrap_err()
        .to_string()
}

#[test]
fn views_are_kept_read_like_tables_and_listed() {
    let Some((dir, node, c, logs)) = kcat_logs() else {
        return;
    };
    sql_json(
        &c,
        "CREATE VIEW errors AS SELECT host, count(*) AS errors FROM logs \
         WHERE status >= 500 GROUP BY host",
    );
    // A view over a view, through the CLI.
    let (ok, _, err) = weir(
        &node,
        &[
            "sql",
            "CREATE VIEW worst AS SELECT host, errors FROM errors ORDER BY errors DESC, host LIMIT 1",
        ],
    );
    assert!(ok, "{err}");
    let expected: Vec<Value> = (0..3)
        .map(|h| json!({ "host": format!("web-{h}"), "errors": logs.errors_by_host[h] }))
        .collect();
    let worst = expected
        .iter()
        .max_by_key(|r| {
            (
                r["errors"].as_u64(),
                std::cmp::Reverse(r["host"].to_string()),
            )
        })
        .unwrap()
        .clone();
    let rows = |c: &Client, statement: &str| sql_json(c, statement)["rows"].clone();
    assert_eq!(
        rows(&c, "SELECT * FROM errors ORDER BY host"),
        json!(expected)
    );
    assert_eq!(rows(&c, "SELECT * FROM worst"), json!([worst]));
    assert_eq!(
        rows(&c, "SELECT name, reads FROM weir.views ORDER BY name"),
        json!([{ "name": "errors", "reads": "logs" }, { "name": "worst", "reads": "errors" }])
    );

    // What cannot be made says why, and makes nothing.
    for (statement, why) in [
        ("CREATE VIEW errors AS SELECT 1", "view errors exists"),
        ("CREATE VIEW logs AS SELECT 1", "a topic named logs exists"),
        (
            "CREATE OR REPLACE VIEW errors AS SELECT 1",
            "a view is not replaced",
        ),
        (
            "CREATE VIEW typo AS SELECT * FROM logz",
            "table logz does not exist; did you mean logs?",
        ),
        (
            "CREATE VIEW ins AS INSERT INTO logs SELECT * FROM logs",
            "expected CREATE VIEW name AS SELECT",
        ),
        (
            "DROP VIEW errors",
            "view worst reads view errors; drop worst first",
        ),
        ("DROP VIEW nothing", "view nothing does not exist"),
    ] {
        let error = sql_error(&c, statement);
        assert!(error.contains(why), "{statement}: {error}");
    }
    assert_eq!(
        rows(&c, "SELECT count(*) AS n FROM weir.views"),
        json!([{ "n": 2 }])
    );

    // Views are kept in the metadata store: they are there after a restart.
    node.stop();
    let node = Node::start(dir.path());
    let c = Client::new(&node.url(), None);
    assert_eq!(rows(&c, "SELECT * FROM worst"), json!([worst]));
    sql_json(&c, "DROP VIEW worst");
    sql_json(&c, "DROP VIEW errors");
    sql_json(&c, "DROP VIEW IF EXISTS errors");
    assert!(sql_error(&c, "SELECT * FROM errors").contains("table errors does not exist"));
}

#[test]
fn sql_answers_in_csv_when_asked() {
    let Some((_dir, _node, c, logs)) = kcat_logs() else {
        return;
    };
    let csv = c
        .send_accepting(
            "POST",
            "/v1/sql",
            "text/plain",
            b"SELECT status, count(*) AS n FROM logs WHERE status = 404 GROUP BY status",
            "text/csv",
        )
        .unwrap();
    assert_eq!(
        csv,
        Value::String(format!("status,n\n404,{}\n", logs.not_found))
    );
}

#[test]
fn weir_sql_prints_a_table_and_its_shell_goes_on_after_an_error() {
    let Some((_dir, node, _c, logs)) = kcat_logs() else {
        return;
    };
    let (ok, table, err) = weir(
        &node,
        &[
            "sql",
            "SELECT host, sum(bytes) AS bytes FROM logs WHERE host = 'web-1' GROUP BY host",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        table.contains(&format!("| web-1 | {}", logs.bytes_by_host[1]))
            && table.contains("(1 row)"),
        "{table}"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.args(["sql", "--server", &node.url()]);
    let out = common::run_with_input(
        command,
        "SELECT count(*) AS n\nFROM logs;\nSELEC oops;\nSELECT 1 + 1 AS two;\n",
    );
    let shell = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shell.contains("| 601 |") && shell.contains("error:") && shell.contains("| 2   |"),
        "{shell}"
    );
}

#[test]
fn sql_mistakes_are_400s_with_the_message_and_the_node_goes_on() {
    let Some((_dir, _node, c, _logs)) = kcat_logs() else {
        return;
    };
    for (statement, message) in [
        ("SELEC host FROM logs", "Expected: an SQL statement"),
        ("SELECT * FROM nope", "nope"),
        ("SELECT nope FROM logs", "nope"),
        ("SELECT sum(host) FROM logs", "sum"),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "is not allowed",
        ),
    ] {
        let error = c
            .call("POST", "/v1/sql", Some(&json!({ "sql": statement })))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("400") && error.to_lowercase().contains(&message.to_lowercase()),
            "{statement}: {error}"
        );
    }
    assert_eq!(
        sql_json(&c, "SELECT count(*) AS n FROM logs")["rows"][0]["n"],
        601
    );
}

#[test]
fn system_tables_follow_a_consumer_group() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let (_dir, node, c) = started(&[]);
    create_topic(&c, "events", 1);
    let values: Vec<String> = (0..50).map(|i| format!("event {i}")).collect();
    kcat(&node, &["-P", "-t", "events"], &(values.join("\n") + "\n"));

    let lag = |c: &Client| -> Option<i64> {
        let rows = sql_json(
            c,
            "SELECT lag, committed_offset, end_offset FROM weir.groups WHERE group_id = 'readers' AND topic = 'events'",
        );
        rows["rows"]
            .as_array()
            .unwrap()
            .first()
            .map(|r| r["lag"].as_i64().unwrap())
    };
    assert_eq!(lag(&c), None);
    // A group member reads 20 records and commits them on its way out.
    let out = kcat(
        &node,
        &[
            "-G",
            "readers",
            "-c",
            "20",
            "-X",
            "auto.offset.reset=earliest",
            "events",
        ],
        "",
    );
    assert_eq!(out.lines().count(), 20, "{out}");
    assert_eq!(lag(&c), Some(30));
    kcat(&node, &["-P", "-t", "events"], "late 1\nlate 2\n");
    assert_eq!(lag(&c), Some(32));
    let out = kcat(&node, &["-G", "readers", "-c", "32", "events"], "");
    assert_eq!(out.lines().count(), 32, "{out}");
    assert_eq!(lag(&c), Some(0));

    let partitions = sql_json(
        &c,
        "SELECT end_offset, segments FROM weir.partitions WHERE topic = 'events'",
    );
    assert_eq!(
        partitions["rows"][0],
        json!({ "end_offset": 52, "segments": 1 })
    );
    let topics = sql_json(&c, "SELECT name, partitions FROM weir.topics");
    assert_eq!(
        topics["rows"],
        json!([{ "name": "events", "partitions": 1 }])
    );
}

#[test]
fn open_connections_are_a_table() {
    use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse};

    let (_dir, node, c) = started(&[]);
    let mut stream = std::net::TcpStream::connect(node.kafka).unwrap();
    for _ in 0..3 {
        let _: ApiVersionsResponse = kafka_call(
            &mut stream,
            ApiKey::ApiVersions,
            3,
            &ApiVersionsRequest::default(),
        );
    }
    // A psql session that stays open until its input ends.
    let psql = have("psql", "apt-get install postgresql-client").then(|| {
        let mut psql = Command::new("psql")
            .args(["-X", "-q", "-h", &node.pg.ip().to_string()])
            .args([
                "-p",
                &node.pg.port().to_string(),
                "-U",
                "weir",
                "-d",
                "weir",
            ])
            .env("PGAPPNAME", "weir-tests-psql")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut input = psql.stdin.take().unwrap();
        std::io::Write::write_all(&mut input, b"SELECT 1;\n").unwrap();
        (psql, input)
    });
    let by_protocol = |protocol: &str| -> Vec<Value> {
        sql_json(
            &c,
            &format!(
                "SELECT client_id, requests, peer FROM weir.connections \
                 WHERE protocol = '{protocol}'"
            ),
        )["rows"]
            .as_array()
            .unwrap()
            .clone()
    };
    let kafka = by_protocol("kafka");
    assert_eq!(kafka.len(), 1, "{kafka:?}");
    assert_eq!(
        (
            kafka[0]["client_id"].as_str(),
            kafka[0]["requests"].as_i64()
        ),
        (Some("weir-tests"), Some(3))
    );
    assert_eq!(
        kafka[0]["peer"].as_str().unwrap(),
        stream.local_addr().unwrap().to_string()
    );
    // The query itself came over HTTP, on a connection the client keeps open.
    let http = by_protocol("http");
    assert!(
        http.iter().any(|row| row["client_id"]
            .as_str()
            .is_some_and(|agent| agent.starts_with("ureq"))
            && row["requests"].as_i64() >= Some(2)),
        "{http:?}"
    );
    if let Some((mut psql, input)) = psql {
        eventually(
            "psql's statement is counted",
            std::time::Duration::from_secs(10),
            || {
                by_protocol("postgres").first().is_some_and(|row| {
                    row["client_id"] == "weir-tests-psql" && row["requests"].as_i64() >= Some(1)
                })
            },
        );
        drop(input);
        psql.wait().unwrap();
    }
    drop(stream);
    eventually(
        "closed connections leave weir.connections",
        std::time::Duration::from_secs(10),
        || by_protocol("kafka").is_empty() && by_protocol("postgres").is_empty(),
    );
}

#[test]
fn a_lone_node_lists_itself_in_weir_nodes() {
    let (_dir, node, c) = started(&[]);
    let nodes = sql_json(&c, "SELECT node_id, host, kafka_port, this FROM weir.nodes");
    assert_eq!(
        nodes["rows"],
        json!([{"node_id": 0, "host": "127.0.0.1", "kafka_port": node.kafka.port(), "this": true}])
    );
}

/// `curl -d '{"sql": …}'` sends a form content type; the body is JSON all the same.
#[test]
fn a_json_body_is_read_as_json_whatever_its_content_type() {
    let (_dir, _node, c) = started(&[]);
    for content_type in ["application/x-www-form-urlencoded", "text/plain"] {
        let answer = c
            .send_accepting(
                "POST",
                "/v1/sql",
                content_type,
                br#" {"sql": "SELECT 41 + 1 AS answer"}"#,
                "application/json",
            )
            .unwrap();
        assert_eq!(answer["rows"][0]["answer"], 42, "{content_type}: {answer}");
    }
}

/// Rows a SQL `INSERT` appends count in `/metrics` as a producer's records do.
#[test]
fn sql_inserts_count_as_records_in() {
    let (_dir, _node, c) = started(&[]);
    create_topic(&c, "notes", 1);
    let inserted = sql_json(
        &c,
        "INSERT INTO notes (value) VALUES ('one'), ('two'), ('three')",
    );
    assert_eq!(inserted["rows"][0]["count"], 3, "{inserted}");
    let metrics = c.call("GET", "/metrics", None).unwrap();
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("weir_records_in_total{topic=\"notes\"} 3\n"),
        "{metrics}"
    );
}

/// The shell as a psql user drives it: help, `\dt`, `\d NAME`, `\timing`, a table name typo
/// answered with the table meant, values shown as text, NULL as `NULL`, and `\q`.
#[test]
fn the_sql_shell_knows_its_commands_and_names_the_table_meant() {
    let (_dir, node, c) = started(&[]);
    create_topic(&c, "notes", 1);
    for value in ["'hello'", "X'FFFE'", "NULL"] {
        sql_json(&c, &format!("INSERT INTO notes (value) VALUES ({value})"));
    }
    let shell = |input: &str| -> String {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command.args(["sql", "--server", &node.url()]);
        let out = common::run_with_input(command, input);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = shell(
        "help\n\\dt\n\\d notes\n\\d weir.topics\n\\d notez\nSELECT * FROM notez;\n\\timing\n\
         SELECT value, key_text FROM notes ORDER BY \"offset\";\n\\timing\nSELECT 1 AS one;\n\
         \\nope\n\\q\nSELECT 'after quit' AS never;\n",
    );
    let after = |marker: &str| -> &str {
        let at = out
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in {out}"));
        &out[at..]
    };
    assert!(out.contains("\\dt") && out.contains("\\timing"), "{out}");
    let listed = after("| name ");
    assert!(listed.contains("| notes | 1 "), "{out}");
    let columns = after("| column_name ");
    for column in ["| offset ", "| timestamp ", "| value_text ", "| headers "] {
        assert!(columns.contains(column), "{column} in {out}");
    }
    assert!(out.contains("| partitions "), "{out}");
    assert_eq!(
        out.matches("error: ").count(),
        2,
        "\\d notez and the query of notez: {out}"
    );
    assert_eq!(
        out.matches("table notez does not exist; did you mean notes?")
            .count(),
        2,
        "{out}"
    );
    let rows = after("Timing is on.");
    for row in ["| hello ", "| \\xfffe ", "| NULL  "] {
        assert!(rows.contains(row), "{row} in {out}");
    }
    assert!(rows.contains("| NULL     |"), "a NULL key_text: {out}");
    assert_eq!(out.matches("Time: ").count(), 1, "{out}");
    assert!(out.contains("Timing is off."), "{out}");
    assert!(out.contains("unknown command \\nope; type help"), "{out}");
    assert!(!out.contains("after quit"), "{out}");
    assert_eq!(shell("exit\nSELECT 'after exit' AS never;\n"), "");

    // The same hint over HTTP, for a system table.
    let error = c
        .call(
            "POST",
            "/v1/sql",
            Some(&json!({ "sql": "SELECT * FROM weir.topicz" })),
        )
        .unwrap_err()
        .to_string();
    assert!(error.contains("did you mean weir.topics?"), "{error}");
}

/// Closed segments of a topic with a value schema get Parquet copies in the background; a query
/// answers the same from them as from the log, reading them where it can; turning the feature
/// off removes them, and `/metrics` follows.
#[test]
fn columnar_copies_answer_as_the_log_does_and_go_when_turned_off() {
    let (dir, node, c) = started(&[]);
    let configs = [
        "value.format=json",
        "value.schema=status INT, host TEXT",
        "segment.bytes=1024",
        "columnar.enabled=false",
    ]
    .map(String::from);
    weir_broker::cli::topic_create(&c, "logs", 1, &configs).unwrap();
    for round in 0..30 {
        let values: Vec<String> = (0..10)
            .map(|i| {
                let n = round * 10 + i;
                match n % 7 {
                    0 => "(NULL)".to_owned(),
                    1 => "('not json')".to_owned(),
                    _ => format!(r#"('{{"status":{},"host":"h{}"}}')"#, 200 + n % 5, n % 3),
                }
            })
            .collect();
        sql_json(
            &c,
            &format!("INSERT INTO logs (value) VALUES {}", values.join(", ")),
        );
    }
    let queries = [
        r#"SELECT "offset", status, host, value FROM logs ORDER BY "offset""#,
        "SELECT status, count(*) AS n, max(host) AS h FROM logs GROUP BY status ORDER BY status",
        r#"SELECT count(*) AS n FROM logs WHERE "offset" BETWEEN 33 AND 251"#,
    ];
    let answers = || queries.map(|q| sql_json(&c, q)["rows"].clone());
    let from_log = answers();
    assert_eq!(from_log[0].as_array().map(Vec::len), Some(300));
    let partition = dir.path().join("topics/logs-0");
    let files = |extension: &str| {
        std::fs::read_dir(&partition)
            .unwrap()
            .filter(|e| {
                let path = e.as_ref().unwrap().path();
                path.extension().is_some_and(|x| x == extension)
            })
            .count()
    };
    let copies = || files("parquet");
    // Every segment but the active one.
    let closed = || files("log") - 1;
    assert_eq!(copies(), 0, "off for this topic");
    assert!(closed() >= 5, "{} closed segments", closed());

    weir_broker::cli::topic_alter(&c, "logs", &["columnar.enabled=true".into()], &[]).unwrap();
    eventually(
        "every closed segment copied",
        Duration::from_secs(60),
        || {
            metric(&node, "weir_columnar_files ") as usize == closed()
                && metric(&node, "weir_columnar_builds_waiting ") == 0.0
        },
    );
    assert_eq!(copies(), closed());
    assert!(metric(&node, "weir_columnar_bytes ") > 0.0);
    assert_eq!(metric(&node, "weir_columnar_build_failures_total "), 0.0);
    assert_eq!(answers(), from_log);
    let explained = sql_json(&c, "EXPLAIN ANALYZE SELECT count(status) FROM logs").to_string();
    assert!(explained.contains("records_from_copies="), "{explained}");
    assert!(!explained.contains("records_from_copies=0"), "{explained}");

    weir_broker::cli::topic_alter(&c, "logs", &["columnar.enabled=false".into()], &[]).unwrap();
    eventually(
        "copies removed when turned off",
        Duration::from_secs(60),
        || copies() == 0 && metric(&node, "weir_columnar_files ") == 0.0,
    );
}

/// Scans keep the columns they decode from the active segment, within `--sql-cache-mib`: a query
/// run again reads them without decoding, answers the same after appends, and `/metrics` shows
/// the bytes held beside the bound.
#[test]
fn columns_of_the_active_segment_are_kept_within_their_bound() {
    let (_dir, node, c) = started(&["--sql-cache-mib", "1"]);
    let configs = ["value.format=json", "value.schema=status INT, host TEXT"].map(String::from);
    weir_broker::cli::topic_create(&c, "logs", 1, &configs).unwrap();
    let insert = |from: usize, count: usize| {
        let values: Vec<String> = (from..from + count)
            .map(|n| {
                let (status, host, pad) = (200 + n % 5, n % 3, "x".repeat(300));
                format!(r#"('{{"status":{status},"host":"h{host}","pad":"{pad}"}}')"#)
            })
            .collect();
        sql_json(
            &c,
            &format!("INSERT INTO logs (value) VALUES {}", values.join(", ")),
        );
    };
    insert(0, 500);
    let query = "SELECT status, count(*) AS n, max(host) AS h FROM logs GROUP BY status \
                 ORDER BY status";
    let first = sql_json(&c, query)["rows"].clone();
    assert_eq!(sql_json(&c, query)["rows"], first);
    assert_eq!(
        first[0],
        json!({"status": 200, "n": 100, "h": "h2"}),
        "{first}"
    );
    let held = metric(&node, "weir_sql_cache_bytes ");
    assert!(held > 0.0, "{held}");
    assert_eq!(
        metric(&node, "weir_sql_cache_bytes_max "),
        f64::from(1 << 20)
    );
    let explained = sql_json(&c, &format!("EXPLAIN ANALYZE {query}")).to_string();
    assert!(explained.contains("records_from_cache=500"), "{explained}");
    assert!(explained.contains("records_read=0"), "{explained}");

    // What is appended is decoded once and joins what is kept.
    insert(500, 500);
    assert_eq!(
        sql_json(&c, query)["rows"][0],
        json!({"status": 200, "n": 200, "h": "h2"})
    );
    let explained = sql_json(&c, &format!("EXPLAIN ANALYZE {query}")).to_string();
    // Counts show as "1.00 K" past a thousand.
    assert!(
        explained.contains("records_from_cache=1.00 K"),
        "{explained}"
    );
    // Whole values of a few thousand records need more than the bound: what is held stays
    // under it, and the answers are whole.
    for round in 0..4 {
        insert(1000 + round * 500, 500);
        let all = sql_json(&c, "SELECT * FROM logs");
        assert_eq!(
            all["rows"].as_array().map(Vec::len),
            Some(1500 + round * 500)
        );
        assert!(metric(&node, "weir_sql_cache_bytes ") <= f64::from(1 << 20));
    }
}
