//! SQL a hostile or careless client sends over HTTP and Postgres wire: statements that once
//! overflowed a worker's stack, passed the memory cap, wrote files, or kept a core busy for a
//! client that was gone. Each is refused or stopped, and the node answers the next query.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Node, eventually, have, run_with_input, started};
use serde_json::json;
use weir_broker::cli::Client;

/// Runs a statement over `POST /v1/sql`; the error text when it fails.
fn sql(c: &Client, statement: &str) -> Result<serde_json::Value, String> {
    c.call("POST", "/v1/sql", Some(&json!({ "sql": statement })))
        .map_err(|e| e.to_string())
}

fn answers_the_next_query(c: &Client) {
    assert_eq!(sql(c, "SELECT 41 + 1 AS n").unwrap()["rows"][0]["n"], 42);
}

/// CPU seconds the process has used, from `/proc/<pid>/stat` (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which ends with ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// psql on `node`, reading its statements from standard input.
fn psql(node: &Node) -> Command {
    let mut command = Command::new("psql");
    command
        .args(["-X", "-A", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .args(["-h", &node.pg.ip().to_string()])
        .args(["-p", &node.pg.port().to_string()])
        .args(["-U", "weir", "-d", "weir"])
        .env("PGCONNECT_TIMEOUT", "10");
    command
}

#[test]
fn long_expressions_are_refused_over_http_and_postgres_wire() {
    let (_dir, node, c) = started(&[]);
    let deep = format!("SELECT {}", vec!["1"; 3000].join("+"));
    let err = sql(&c, &deep).unwrap_err();
    assert!(
        err.contains("400") && err.contains("deeper than 256"),
        "{err}"
    );
    // A statement near the 1 MiB limit, all one chain: refused before it is parsed.
    let longest = format!("SELECT {}", vec!["1"; 400_000].join("+"));
    let err = sql(&c, &longest).unwrap_err();
    assert!(
        err.contains("400") && err.contains("4096 operators"),
        "{err}"
    );
    answers_the_next_query(&c);
    if have("psql", "apt-get install postgresql-client") {
        for statement in [&deep, &longest] {
            let out = run_with_input(psql(&node), &format!("{statement};\n"));
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                stderr.contains("deeper than 256") || stderr.contains("4096 operators"),
                "{stderr}"
            );
        }
        answers_the_next_query(&c);
    }
}

#[test]
fn a_query_building_more_than_the_memory_cap_is_refused_before_it_builds() {
    let (_dir, node, c) = started(&[]);
    let err = sql(
        &c,
        "SELECT max(length(s)) FROM (SELECT repeat('x', 50000000) AS s FROM generate_series(1, 40))",
    )
    .unwrap_err();
    assert!(err.contains("400") && err.contains("would build"), "{err}");
    assert!(
        node.status_kib("VmHWM:") < 512 << 10,
        "peak RSS {} KiB against a 512 MiB cap",
        node.status_kib("VmHWM:")
    );
    // Inside the cap the same functions work.
    let answer = sql(
        &c,
        "SELECT length(repeat('ab', 1000)) AS n, lpad('7', 3, '0') AS p",
    )
    .unwrap();
    assert_eq!(answer["rows"][0]["n"], 2000);
    assert_eq!(answer["rows"][0]["p"], "007");
}

#[test]
fn copy_to_a_file_is_refused_over_http() {
    let (dir, _node, c) = started(&[]);
    let target = dir.path().join("copied.csv");
    let err = sql(
        &c,
        &format!("COPY (SELECT 'x') TO '{}' STORED AS CSV", target.display()),
    )
    .unwrap_err();
    assert!(err.contains("400") && err.contains("not allowed"), "{err}");
    assert!(!target.exists(), "COPY wrote {}", target.display());
    answers_the_next_query(&c);
}

#[test]
fn a_runaway_query_stops_when_its_postgres_client_hangs_up() {
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    let (_dir, node, _) = started(&[]);
    let pid = node.child.id();
    let before = cpu_seconds(pid);
    let mut client = psql(&node)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT count(*) FROM generate_series(1, 100000000000);\n")
        .unwrap();
    eventually(
        "the query to keep a core busy",
        Duration::from_secs(30),
        || cpu_seconds(pid) - before > 1.0,
    );
    client.kill().unwrap();
    client.wait().unwrap();
    node.wait_for("Postgres client hung up");
    // Once cancelled, the node idles: well under a tenth of a core over two seconds.
    eventually("the node to go idle", Duration::from_secs(30), || {
        let start = cpu_seconds(pid);
        std::thread::sleep(Duration::from_secs(2));
        cpu_seconds(pid) - start < 0.2
    });
    answers_the_next_query(&Client::new(&node.url(), None));
}
