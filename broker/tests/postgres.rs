//! SQL over the Postgres wire protocol with real clients. psql (the simple query protocol)
//! makes a topic with `CREATE TABLE … AS SELECT`, lists it with `\dt`, describes it with `\d`,
//! queries and inserts, and gets errors — syntax, unknown column, refused DDL — on a
//! connection that goes on. psycopg (the extended protocol) binds parameters and runs the
//! catalog and time-series queries Grafana's Postgres data source sends. With an admin token
//! the token is the password.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::{Node, have, python, run_with_input, started};

/// Minute-aligned start of the test's records: 2023-11-14T22:14:00Z.
const START_MS: i64 = 1_700_000_040_000;
const RECORDS: i64 = 120;

fn host(i: i64) -> String {
    format!("web-{}", i % 3)
}

fn status(i: i64) -> i64 {
    if i % 4 == 0 { 500 } else { 200 }
}

/// `CREATE TABLE logs … AS SELECT` over VALUES: one record every 5 s for 10 minutes.
fn create_logs() -> String {
    let rows: Vec<String> = (0..RECORDS)
        .map(|i| {
            format!(
                "('{}', {}, {}, to_timestamp_millis({}))",
                host(i),
                status(i),
                i * 10,
                START_MS + i * 5_000
            )
        })
        .collect();
    format!(
        "CREATE TABLE logs WITH (partitions = 3) AS SELECT * FROM (VALUES {}) AS t(host, status, bytes, \"timestamp\");\n",
        rows.join(", ")
    )
}

/// Runs `script` through psql on one connection; returns (success, stdout, stderr).
fn psql(node: &Node, password: &str, script: &str) -> (bool, String, String) {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=0", "-f", "-"])
        .args(["-h", &node.pg.ip().to_string()])
        .args(["-p", &node.pg.port().to_string()])
        .args(["-U", "weir", "-d", "weir"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10");
    let out = run_with_input(command, script);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn psql_creates_lists_describes_queries_and_survives_errors() {
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    let (_dir, node, _) = started(&[]);
    let mut expected_errors = [0; 3];
    for i in 0..RECORDS {
        if status(i) == 500 {
            expected_errors[(i % 3) as usize] += 1;
        }
    }

    let script = create_logs()
        + r"\dt
\d logs
SELECT host, count(*) AS errors FROM logs WHERE status >= 500 GROUP BY host ORDER BY host;
SELEC 1;
SELECT nope FROM logs;
DROP TABLE logs;
CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd';
COPY logs TO '/tmp/weir-copy';
SELECT 'still serving', count(*) FROM logs;
CREATE TABLE errors AS SELECT host, count(*) AS n FROM logs WHERE status >= 500 GROUP BY host;
CREATE TABLE errors AS SELECT 1 AS n;
INSERT INTO errors (host, n) VALUES ('web-9', 7);
SELECT host, n FROM errors ORDER BY host;
SELECT count(*) AS leaked FROM information_schema.tables WHERE table_name = 'leak';
CREATE VIEW errors_by_host AS SELECT host, count(*) AS errors FROM logs WHERE status >= 500 GROUP BY host;
SELECT * FROM errors_by_host ORDER BY host;
";
    let (ok, out, err) = psql(&node, "", &script);
    assert!(ok, "psql failed:\n{out}\n{err}");

    // The topic made by CREATE TABLE … AS SELECT, listed and described.
    assert!(out.contains("SELECT 120"), "{out}");
    assert!(out.contains("public|logs|table|"), "\\dt:\n{out}");
    for column in [
        "host|text",
        "status|bigint",
        "bytes|bigint",
        "timestamp|timestamp",
    ] {
        assert!(out.contains(column), "\\d logs lacks {column}:\n{out}");
    }
    let grouped: String = (0..3)
        .map(|h| format!("web-{h}|{}\n", expected_errors[h]))
        .collect();
    // The same answer again through a view made over psql, as a dashboard names a query.
    assert_eq!(
        out.matches(&format!("host|errors\n{grouped}(3 rows)"))
            .count(),
        2,
        "{out}"
    );
    assert!(out.contains("CREATE VIEW"), "{out}");

    // Each bad statement has its error; the connection goes on and nothing leaked.
    let errors: Vec<&str> = err.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 6, "one error per bad statement:\n{err}");
    assert!(errors[0].contains("SELEC"), "{err}");
    assert!(errors[1].contains("nope"), "{err}");
    assert!(errors[2].contains("DROP TABLE is not allowed"), "{err}");
    assert!(errors[4].contains("COPY"), "{err}");
    assert!(errors[5].contains("already exists"), "{err}");
    assert!(out.contains(&format!("still serving|{RECORDS}")), "{out}");
    assert!(out.contains("leaked\n0\n"), "{out}");

    // A second CREATE TABLE … AS SELECT and an INSERT into its topic.
    assert!(out.contains("SELECT 3\n"), "{out}");
    assert!(out.contains("INSERT 0 1"), "{out}");
    assert!(
        out.contains(&format!("host|n\n{grouped}web-9|7\n(4 rows)")),
        "{out}"
    );
    node.stop();
}

#[test]
fn extended_protocol_and_grafana_queries_with_the_admin_token() {
    let (Some(python), true) = (python(), have("psql", "apt-get install postgresql-client")) else {
        return;
    };
    let (_dir, node, _) = started(&["--admin-token", "s3cret"]);

    let (ok, _, err) = psql(&node, "wrong", "SELECT 1;\n");
    assert!(!ok, "a wrong password is refused");
    assert!(
        err.to_lowercase()
            .contains("password authentication failed"),
        "{err}"
    );
    let (ok, out, err) = psql(&node, "s3cret", &create_logs());
    assert!(ok && out.contains("SELECT 120"), "{out}\n{err}");

    let script = format!("{}/tests/clients/postgres.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(script)
        .arg(node.pg.ip().to_string())
        .arg(node.pg.port().to_string())
        .arg("s3cret")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "postgres.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: std::collections::HashMap<&str, &str> =
        stdout.lines().filter_map(|l| l.split_once('=')).collect();

    let web_1_errors = (0..RECORDS)
        .filter(|i| i % 3 == 1 && status(*i) == 500)
        .count();
    assert_eq!(answers["errors_web_1"], web_1_errors.to_string());
    assert_eq!(answers["tables"], "logs");
    assert_eq!(answers["health"], "1");
    assert_eq!(answers["version"], "1600");
    // information_schema names Postgres's types, so Grafana's query builder finds the time
    // column.
    assert_eq!(
        answers["columns"],
        "\"offset\":bigint,bytes:bigint,headers:ARRAY,host:text,key:bytea,key_text:text,\
         partition:integer,status:bigint,timestamp:timestamp with time zone,value:bytea,\
         value_text:text"
    );
    let series: String = (0..10)
        .map(|m| format!("{}:12", START_MS / 1000 + m * 60))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(answers["series"], series);
    assert!(
        answers["error"].contains("missing_column"),
        "{}",
        answers["error"]
    );
    assert_eq!(answers["after_error"], RECORDS.to_string());
    node.stop();
}

/// Past `PG_CONNECTIONS_MAX` (100) open connections a client is refused with Postgres's own
/// "too many connections" error; once one closes, the next gets in. A refusal waits for the
/// client's startup message, so at most `CONNECTION_REFUSALS_MAX` (64) are answered at once:
/// past that, silent connections cannot make the node hold their sockets, and the next one is
/// closed at once, unanswered.
#[test]
fn connections_past_the_limit_are_refused_with_the_reason() {
    use std::io::Read as _;
    use std::net::TcpStream;
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    let (_dir, node, _) = started(&[]);
    let held: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(node.pg).unwrap())
        .collect();
    let wait = std::time::Duration::from_secs(10);
    common::eventually("100 connections held", wait, || {
        common::metric(&node, "weir_pg_connections ") == 100.0
            && common::metric(&node, "weir_pg_connections_max ") == 100.0
    });
    let (ok, _, err) = psql(&node, "", "SELECT 1;");
    assert!(
        !ok && err.contains("too many Postgres connections"),
        "{err}"
    );

    let silent: Vec<TcpStream> = (0..72)
        .map(|_| TcpStream::connect(node.pg).unwrap())
        .collect();
    common::eventually("refusals answered up to their bound", wait, || {
        common::metric(&node, "weir_connection_refusals ") == 64.0
    });
    assert_eq!(common::metric(&node, "weir_connection_refusals_max "), 64.0);
    let mut late = TcpStream::connect(node.pg).unwrap();
    late.set_read_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let read = late.read(&mut [0; 64]);
    assert!(
        matches!(read, Ok(0)),
        "a connection past the refusals' bound is closed unanswered: {read:?}"
    );
    let refused = common::metric(&node, "weir_pg_connections_refused_total ");
    assert!(
        refused >= 74.0,
        "psql, 72 silent clients and the late one: {refused}"
    );
    drop(silent);
    drop(held);
    common::eventually("a slot freed", wait, || psql(&node, "", "SELECT 1;").0);
}

/// The statement of the continuous SQL documentation, as a psql user types it.
#[test]
fn psql_creates_shows_and_drops_a_sql_pipeline() {
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    let (_dir, node, _) = started(&[]);
    let script = create_logs()
        + r"CREATE PIPELINE errors_per_minute AS
INSERT INTO errors_per_minute_out
SELECT window_start, window_end, host, count(*) AS errors, sum(bytes) AS bytes
FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')
WHERE status >= 500
GROUP BY window_start, window_end, host
WITH (watermark_delay = '10 seconds', idle_timeout = '1 second', start = 'earliest');
SHOW PIPELINES;
CREATE PIPELINE errors_per_minute AS INSERT INTO x SELECT * FROM logs;
";
    let (_, out, err) = psql(&node, "", &script);
    assert!(out.contains("CREATE PIPELINE"), "{out}{err}");
    assert!(
        out.contains("errors_per_minute|sql|running|logs|errors_per_minute_out"),
        "{out}"
    );
    assert!(
        err.contains("pipeline errors_per_minute already exists"),
        "{err}"
    );
    // Ten minutes of records, 5 s apart: once idle, the windows up to 9:45 + 5 s - 10 s close.
    let query = "SELECT count(*) AS windows, sum(errors) AS errors FROM errors_per_minute_out;\n";
    common::eventually(
        "nine closed minutes",
        std::time::Duration::from_secs(30),
        || psql(&node, "", query).1.contains("27|27"),
    );
    let (_, out, err) = psql(
        &node,
        "",
        "DROP PIPELINE errors_per_minute;\nSHOW PIPELINES;\n",
    );
    assert!(
        out.contains("DROP PIPELINE") && !out.contains("errors_per_minute|"),
        "{out}{err}"
    );
}
