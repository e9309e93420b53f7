//! The HTTP API and the `weir` CLI against a real node: topics, JSON produce and consume,
//! groups with lag, metrics, the admin token, and clear errors for bad requests.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Node, run_with_input, started};
use serde_json::{Value, json};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// (status, body) of a request; the body as JSON when it parses.
fn call(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let a = agent();
    let auth = token.map(|t| format!("Bearer {t}"));
    let response = match method {
        "GET" => {
            let mut r = a.get(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        "DELETE" => {
            let mut r = a.delete(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            r.call()
        }
        _ => {
            let mut r = a.post(url);
            if let Some(h) = &auth {
                r = r.header("Authorization", h);
            }
            match body {
                Some(b) => r.send_json(b),
                None => r.content_type("application/json").send("{not json"),
            }
        }
    };
    let mut response = response.unwrap();
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn weir(node: &Node, args: &[&str], input: &str) -> (bool, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.args(args).env("WEIR_SERVER", node.url());
    let out = run_with_input(command, input);
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Creates `events` (2 partitions, `retention.ms=60000`) over HTTP and posts 10 records keyed
/// `k0`–`k2` with a header `n`; answers where each record went.
fn post_events(url: &str) -> Vec<Value> {
    let (status, created) = call(
        "POST",
        &format!("{url}/v1/topics"),
        None,
        Some(json!({"name": "events", "partitions": 2, "configs": {"retention.ms": "60000"}})),
    );
    assert_eq!(status, 201, "{created}");
    let records: Vec<Value> = (0..10)
        .map(|i| json!({"key": format!("k{}", i % 3), "value": format!("event {i}"), "headers": {"n": i.to_string()}}))
        .collect();
    let (status, placed) = call(
        "POST",
        &format!("{url}/v1/topics/events/records"),
        None,
        Some(json!({ "records": records })),
    );
    assert_eq!(status, 200, "{placed}");
    placed["offsets"].as_array().unwrap().clone()
}

#[test]
fn http_creates_describes_and_deletes_topics() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    let (status, health) = call("GET", &format!("{url}/healthz"), None, None);
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    post_events(&url);
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/topics"),
        None,
        Some(json!({"name": "events"})),
    );
    assert_eq!(status, 409);
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/topics"),
        None,
        Some(json!({"name": "bad name"})),
    );
    assert_eq!(status, 400);

    let (status, detail) = call("GET", &format!("{url}/v1/topics/events"), None, None);
    assert_eq!(status, 200);
    assert_eq!(detail["configs"]["retention.ms"], "60000");
    let ends: u64 = detail["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum();
    assert_eq!(ends, 10);

    let (status, _) = call("DELETE", &format!("{url}/v1/topics/events"), None, None);
    assert_eq!(status, 204);
    let (status, _) = call("GET", &format!("{url}/v1/topics/events"), None, None);
    assert_eq!(status, 404);
    node.stop();
}

#[test]
fn http_records_keep_their_key_partition_and_headers() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    let placed = post_events(&url);
    assert_eq!(placed.len(), 10);
    // Same key, same partition.
    assert_eq!(placed[0]["partition"], placed[3]["partition"]);

    let mut values = Vec::new();
    for p in 0..2 {
        let (status, page) = call(
            "GET",
            &format!("{url}/v1/topics/events/records?partition={p}&offset=0&limit=100"),
            None,
            None,
        );
        assert_eq!(status, 200);
        for r in page["records"].as_array().unwrap() {
            values.push(r["value"].as_str().unwrap().to_string());
            let n = r["headers"][0][1].as_str().unwrap();
            assert_eq!(r["value"].as_str().unwrap(), format!("event {n}"));
        }
    }
    values.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("event {i}")).collect();
    expected.sort();
    assert_eq!(values, expected);
    node.stop();
}

#[test]
fn a_groups_committed_offsets_show_their_lag_in_the_api_and_metrics() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    post_events(&url);
    let (_, detail) = call("GET", &format!("{url}/v1/topics/events"), None, None);
    let (busiest, end) = detail["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().unwrap(),
                p["high_watermark"].as_i64().unwrap(),
            )
        })
        .max_by_key(|(_, end)| *end)
        .unwrap();
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/groups/readers/offsets"),
        None,
        Some(json!({"topic": "events", "partition": busiest, "offset": 1})),
    );
    assert_eq!(status, 204);
    let (_, group) = call("GET", &format!("{url}/v1/groups/readers"), None, None);
    assert_eq!(
        group["offsets"][0]["lag"].as_i64(),
        Some(end - 1),
        "{group}"
    );
    let (_, groups) = call("GET", &format!("{url}/v1/groups"), None, None);
    assert_eq!(groups[0]["group"], "readers");

    let (_, metrics) = call("GET", &format!("{url}/metrics"), None, None);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("weir_records_in_total{topic=\"events\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "weir_group_lag{{group=\"readers\",topic=\"events\",partition=\"{busiest}\"}} {}",
            end - 1
        )),
        "{metrics}"
    );
    // A deleted topic leaves the exposition.
    let (status, _) = call("DELETE", &format!("{url}/v1/topics/events"), None, None);
    assert_eq!(status, 204);
    let (_, metrics) = call("GET", &format!("{url}/metrics"), None, None);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(!metrics.contains("topic=\"events\""), "{metrics}");
    node.stop();
}

#[test]
fn bad_http_requests_get_a_status_and_a_message() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    post_events(&url);
    let (status, body) = call("GET", &format!("{url}/v1/topics/nope/records"), None, None);
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/topics/events/records"),
        None,
        None,
    );
    assert!(
        (400..500).contains(&status),
        "malformed JSON answered {status}"
    );
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/topics/events/records"),
        None,
        Some(json!({"records": [{"value": "x", "partition": 9}]})),
    );
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("partition 9"),
        "{body}"
    );
    // A record too large for the topic's batches refuses the request before anything is
    // written, on every partition.
    let (status, created) = call(
        "POST",
        &format!("{url}/v1/topics"),
        None,
        Some(json!({"name": "small", "partitions": 2, "configs": {"max.message.bytes": "1024"}})),
    );
    assert_eq!(status, 201, "{created}");
    let fits: Vec<Value> = (0..20)
        .map(|i| json!({"value": format!("record {i}")}))
        .collect();
    let mut records = fits.clone();
    records.push(json!({"value": "x".repeat(2000)}));
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/topics/small/records"),
        None,
        Some(json!({ "records": records })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("record 20: "),
        "{body}"
    );
    let (_, read) = call(
        "GET",
        &format!("{url}/v1/topics/small/records?partition=0"),
        None,
        None,
    );
    assert_eq!(read["records"].as_array().unwrap().len(), 0, "{read}");
    // Records that fit go in batches within the bound.
    let records: Vec<Value> = (0..40)
        .map(|i| json!({"value": format!("{i:0>200}")}))
        .collect();
    let (status, body) = call(
        "POST",
        &format!("{url}/v1/topics/small/records"),
        None,
        Some(json!({ "records": records })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["offsets"].as_array().unwrap().len(), 40, "{body}");
    // The node goes on.
    assert_eq!(
        call("GET", &format!("{url}/v1/topics/events"), None, None).0,
        200
    );
    node.stop();
}

/// `curl` posting `file` to `url` with a content type: (status, headers, body).
fn curl_post(url: &str, content_type: &str, file: &std::path::Path) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D", "-", "-H"])
        .arg(format!("Content-Type: {content_type}"))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // Past the `100 Continue` curl asks for before a large body.
    let mut rest = text.as_str();
    let (head, body) = loop {
        let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
        if !head.contains(" 100 Continue") {
            break (head, body);
        }
        rest = body;
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_lowercase(), body.to_owned())
}

#[test]
fn curl_posts_a_log_file_one_record_a_line_and_bad_bodies_write_nothing() {
    if !common::have("curl", "apt-get install curl") {
        return;
    }
    let (dir, node, client) = started(&[]);
    common::create_topic(&client, "app", 2);
    let url = format!("{}/v1/topics/app/records", node.url());
    let count = || {
        let (status, rows) = call(
            "POST",
            &format!("{}/v1/sql", node.url()),
            None,
            Some(json!({"sql": "SELECT count(*) AS n, count(DISTINCT value) AS d FROM app"})),
        );
        assert_eq!(status, 200, "{rows}");
        (
            rows["rows"][0]["n"].as_i64().unwrap(),
            rows["rows"][0]["d"].as_i64().unwrap(),
        )
    };
    let files = tempfile::tempdir().unwrap();
    let log = files.path().join("app.log");
    // Lines as a log file has them, one with a Windows line end, and a blank one.
    let mut text: String = (0..1000).map(|i| format!("GET /page/{i} 200\n")).collect();
    text.push_str("\nlast line\r\n");
    std::fs::write(&log, &text).unwrap();
    let (status, _, body) = curl_post(&url, "text/plain", &log);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"records\":1001"), "{body}");
    assert_eq!(count(), (1001, 1001));

    let events = files.path().join("events.ndjson");
    std::fs::write(
        &events,
        "{\"level\":\"info\"}\n{\"level\":\"warn\"}\n{\"level\":\n",
    )
    .unwrap();
    let (status, _, body) = curl_post(&url, "application/x-ndjson", &events);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("line 3: not JSON"), "{body}");
    let (status, _, body) = curl_post(&url, "application/xml", &events);
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("application/x-ndjson"), "{body}");
    let big = files.path().join("big.log");
    std::fs::write(&big, "x".repeat(17 << 20)).unwrap();
    let (status, _, body) = curl_post(&url, "text/plain", &big);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("over 16 MiB"), "{body}");
    assert_eq!(count(), (1001, 1001), "refused bodies wrote nothing");
    node.stop();

    // A node that cannot take writes asks shippers to come back instead of dropping.
    let node = Node::start_with(dir.path(), &["--disk-free-min-mib", "1000000000"]);
    let url = format!("{}/v1/topics/app/records", node.url());
    let (status, head, body) = curl_post(&url, "text/plain", &log);
    assert_eq!(status, 503, "{body}");
    assert!(head.contains("retry-after: 5"), "{head}");
    node.stop();
}

#[test]
fn admin_token_guards_v1_and_metrics_but_not_health() {
    let (_dir, node, _) = started(&["--admin-token", "s3cret"]);
    let url = node.url();
    assert_eq!(call("GET", &format!("{url}/metrics"), None, None).0, 401);
    assert_eq!(
        call("GET", &format!("{url}/metrics"), Some("s3cret"), None).0,
        200
    );
    assert_eq!(call("GET", &format!("{url}/v1/topics"), None, None).0, 401);
    let (status, wrong) = call("GET", &format!("{url}/v1/topics"), Some("wrong"), None);
    assert_eq!(status, 401);
    assert!(
        wrong["error"]
            .as_str()
            .unwrap()
            .contains("token sent is wrong"),
        "{wrong}"
    );
    assert_eq!(
        call("GET", &format!("{url}/v1/topics"), Some("s3cret"), None).0,
        200
    );
    assert_eq!(call("GET", &format!("{url}/healthz"), None, None).0, 200);
    // The CLI passes the token along, and says what is wrong without it.
    let (ok, _, err) = weir(&node, &["topic", "list"], "");
    assert!(
        !ok && err.contains("401") && err.contains("admin token"),
        "{err}"
    );
    let (ok, _, err) = weir(&node, &["topic", "list", "--token", "guess"], "");
    assert!(!ok && err.contains("token sent is wrong"), "{err}");
    let (ok, out, err) = weir(&node, &["topic", "list", "--token", "s3cret"], "");
    assert!(ok, "{err}");
    assert!(out.contains("TOPIC"));
    node.stop();
}

#[test]
fn a_metrics_token_guards_metrics_instead_of_the_admin_token() {
    let (_dir, node, _) = started(&["--admin-token", "s3cret", "--metrics-token", "scrape"]);
    let url = format!("{}/metrics", node.url());
    assert_eq!(call("GET", &url, None, None).0, 401);
    assert_eq!(call("GET", &url, Some("s3cret"), None).0, 401);
    let (status, body) = call("GET", &url, Some("scrape"), None);
    assert_eq!(status, 200);
    assert!(body.to_string().contains("weir_connections_max"), "{body}");
    // The metrics token opens nothing else.
    let topics = format!("{}/v1/topics", node.url());
    assert_eq!(call("GET", &topics, Some("scrape"), None).0, 401);
}

/// Runs `weir` against `node`, failing the test when it fails; answers its stdout.
fn run_ok(node: &Node, args: &[&str], input: &str) -> String {
    let (ok, out, err) = weir(node, args, input);
    assert!(ok, "weir {args:?} failed: {err}");
    out
}

#[test]
fn cli_creates_lists_describes_and_deletes_topics() {
    let (_dir, node, _) = started(&[]);
    run_ok(
        &node,
        &[
            "topic",
            "create",
            "lines",
            "--partitions",
            "2",
            "--config",
            "retention.ms=600000",
        ],
        "",
    );
    assert!(run_ok(&node, &["topic", "list"], "").contains("lines"));
    let described = run_ok(&node, &["topic", "describe", "lines"], "");
    let config = |text: &str, key: &str| -> Vec<String> {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no {key} in {text}"));
        line.split_whitespace().map(String::from).collect()
    };
    // Every config with the value in force, its default and where the value comes from.
    assert_eq!(
        config(&described, "retention.ms"),
        ["retention.ms", "600000", "604800000", "topic"]
    );
    assert_eq!(config(&described, "cleanup.policy")[3], "default");

    // Set one, return another to its default; a bad value changes nothing.
    let altered = run_ok(
        &node,
        &[
            "topic",
            "alter",
            "lines",
            "--config",
            "segment.ms=3600000",
            "--delete-config",
            "retention.ms",
        ],
        "",
    );
    assert_eq!(
        config(&altered, "segment.ms")[1..],
        ["3600000", "604800000", "topic"]
    );
    assert_eq!(config(&altered, "retention.ms")[3], "default");
    let (ok, _, err) = weir(
        &node,
        &["topic", "alter", "lines", "--config", "retention.ms=soon"],
        "",
    );
    assert!(!ok && err.contains("retention.ms"), "{err}");
    let (ok, _, err) = weir(&node, &["topic", "alter", "lines"], "");
    assert!(!ok && err.contains("nothing to alter"), "{err}");
    let described = run_ok(&node, &["topic", "describe", "lines"], "");
    assert_eq!(config(&described, "segment.ms")[1], "3600000");
    assert_eq!(config(&described, "retention.ms")[3], "default");
    let (ok, _, err) = weir(&node, &["topic", "create", "lines"], "");
    assert!(!ok && err.contains("already exists"), "{err}");
    run_ok(&node, &["topic", "delete", "lines"], "");
    let (ok, _, err) = weir(&node, &["topic", "describe", "lines"], "");
    assert!(!ok && err.contains("does not exist"), "{err}");
    node.stop();
}

#[test]
fn cli_moves_records_from_files_and_stdin_and_groups_resume() {
    let (dir, node, _) = started(&[]);
    run_ok(
        &node,
        &["topic", "create", "lines", "--partitions", "2"],
        "",
    );
    let file = dir.path().join("input.txt");
    std::fs::write(
        &file,
        (0..500).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();
    run_ok(
        &node,
        &["produce", "lines", "--file", file.to_str().unwrap()],
        "",
    );
    run_ok(
        &node,
        &["produce", "lines", "--key", "k"],
        "keyed a\nkeyed b\n",
    );

    let all = run_ok(
        &node,
        &["consume", "lines", "--from-beginning", "--exit"],
        "",
    );
    let mut got: Vec<&str> = all.lines().collect();
    got.sort();
    let mut expected: Vec<String> = (0..500).map(|i| format!("line {i}")).collect();
    expected.extend(["keyed a".to_string(), "keyed b".to_string()]);
    expected.sort();
    assert_eq!(got, expected.iter().map(String::as_str).collect::<Vec<_>>());

    // A group resumes where it stopped, and the next read sees only the rest.
    let first = run_ok(
        &node,
        &[
            "consume",
            "lines",
            "--from-beginning",
            "--group",
            "g",
            "--max",
            "100",
        ],
        "",
    );
    let rest = run_ok(&node, &["consume", "lines", "--group", "g", "--exit"], "");
    assert_eq!(first.lines().count() + rest.lines().count(), 502);
    let groups = run_ok(&node, &["groups"], "");
    assert!(groups.contains('g') && groups.contains("Empty"), "{groups}");
    node.stop();
}

/// `weir topic list | head -1`: a reader that goes away ends the command quietly, with no
/// panic about a broken pipe.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;

    let (_dir, node, _) = started(&[]);
    for topic in ["one", "two"] {
        let (ok, _, err) = weir(&node, &["topic", "create", topic], "");
        assert!(ok, "{err}");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["topic", "list"])
        .env("WEIR_SERVER", node.url())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader is gone before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "{err}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    node.stop();
}

/// `weir consume` of a whole topic, printed with `args`.
fn consume_with(node: &Node, topic: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec!["consume", topic, "--exit"];
    all.extend_from_slice(args);
    let out = run_ok(node, &all, "");
    out.lines().map(String::from).collect()
}

#[test]
fn cli_produces_keys_and_headers_and_consumes_with_a_format() {
    let (_dir, node, _) = started(&[]);
    run_ok(&node, &["topic", "create", "kv"], "");
    run_ok(
        &node,
        &["produce", "kv", "--key-separator", ":", "-H", "src=cli"],
        "a:1\nb:2:3\nplain\n",
    );
    run_ok(
        &node,
        &["produce", "kv", "--json"],
        r#"{"key": "j", "value": {"n": 1}, "headers": {"h": "x"}}"#,
    );
    assert_eq!(
        consume_with(
            &node,
            "kv",
            &["--from-beginning", "--format", "%o %k|%v|%h %%"]
        ),
        [
            "0 a|1|src=cli %",
            "1 b|2:3|src=cli %",
            "2 |plain|src=cli %",
            "3 j|{\"n\":1}|h=x %"
        ]
    );
    // From an offset, from the end, and as JSON a line that `weir produce --json` takes back.
    assert_eq!(
        consume_with(
            &node,
            "kv",
            &["--offset", "1", "--max", "1", "--format", "%v"]
        ),
        ["2:3"]
    );
    let last: Vec<Value> = consume_with(&node, "kv", &["--offset", "-1", "--json"])
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(last.len(), 1, "{last:?}");
    assert_eq!(
        (
            &last[0]["topic"],
            &last[0]["offset"],
            &last[0]["key"],
            &last[0]["headers"]
        ),
        (&json!("kv"), &json!(3), &json!("j"), &json!([["h", "x"]]))
    );
    let dump = run_ok(
        &node,
        &["consume", "kv", "--from-beginning", "--exit", "--json"],
        "",
    );
    run_ok(&node, &["topic", "create", "copy"], "");
    run_ok(&node, &["produce", "copy", "--json"], &dump);
    let format = ["--from-beginning", "--format", "%k %v %h %T"];
    assert_eq!(
        consume_with(&node, "copy", &format),
        consume_with(&node, "kv", &format)
    );

    // From a time, as RFC 3339 or epoch milliseconds, on one partition.
    run_ok(
        &node,
        &["topic", "create", "times", "--partitions", "2"],
        "",
    );
    let timed: String = [(1, "one"), (2, "two"), (3, "three")]
        .iter()
        .map(|(s, v)| {
            format!(
                "{{\"value\": \"{v}\", \"timestamp\": {}, \"partition\": 1}}\n",
                s * 1000
            )
        })
        .collect();
    run_ok(&node, &["produce", "times", "--json"], &timed);
    assert_eq!(
        consume_with(&node, "times", &["--from-time", "1970-01-01T00:00:02Z"]),
        ["two", "three"]
    );
    assert_eq!(
        consume_with(&node, "times", &["--from-time", "3000", "--partition", "1"]),
        ["three"]
    );
    assert!(consume_with(&node, "times", &["--from-beginning", "--partition", "0"]).is_empty());

    // Mistakes say what is wrong and send nothing.
    for (args, input, says) in [
        (
            &["consume", "times", "--partition", "5", "--exit"][..],
            "",
            "has no partition 5",
        ),
        (
            &["consume", "kv", "--exit", "--format", "%x"],
            "",
            "%x is not a field",
        ),
        (
            &["consume", "kv", "--exit", "--from-time", "soon"],
            "",
            "RFC 3339",
        ),
        (
            &["produce", "kv", "--json"],
            "{\"value\": \"ok\"}\nnot json\n",
            "not a JSON object",
        ),
        (
            &["produce", "kv", "-H", "novalue"],
            "x\n",
            "is not key=value",
        ),
    ] {
        let (ok, _, err) = weir(&node, args, input);
        assert!(!ok && err.contains(says), "weir {args:?}: {err}");
    }
    assert_eq!(consume_with(&node, "kv", &["--from-beginning"]).len(), 4);
    node.stop();
}

/// The offsets `weir groups describe --json` shows for `group`: (partition, committed).
fn committed(node: &Node, group: &str) -> Vec<(i64, i64)> {
    let described: Value =
        serde_json::from_str(&run_ok(node, &["groups", "describe", group, "--json"], "")).unwrap();
    common::committed_offsets(&described).into_iter().collect()
}

#[test]
fn cli_describes_deletes_and_resets_idle_groups() {
    let (_dir, node, _) = started(&[]);
    run_ok(&node, &["topic", "create", "t", "--partitions", "2"], "");
    let early: String = (0..5)
        .map(|i| {
            format!(
                "{{\"value\": \"{i}\", \"timestamp\": {}, \"partition\": 0}}\n",
                1000 + i
            )
        })
        .collect();
    run_ok(&node, &["produce", "t", "--json"], &early);
    run_ok(&node, &["produce", "t", "--partition", "1"], "a\nb\nc\n");
    run_ok(
        &node,
        &[
            "consume",
            "t",
            "--from-beginning",
            "--group",
            "g",
            "--max",
            "3",
        ],
        "",
    );
    assert_eq!(committed(&node, "g"), [(0, 3), (1, 0)]);
    let table = run_ok(&node, &["groups", "describe", "g"], "");
    let row = |p: &str| -> Vec<String> {
        let line = table
            .lines()
            .find(|l| l.starts_with('t') && l.split_whitespace().nth(1) == Some(p))
            .unwrap_or_else(|| panic!("no partition {p} in {table}"));
        line.split_whitespace().map(String::from).collect()
    };
    assert_eq!(row("0"), ["t", "0", "3", "5", "2"]);
    assert_eq!(row("1"), ["t", "1", "0", "3", "3"]);

    let reset = |to: &[&str]| -> String {
        let mut args = vec!["groups", "reset-offsets", "g", "--topic", "t"];
        args.extend_from_slice(to);
        run_ok(&node, &args, "")
    };
    let preview = reset(&["--to-earliest", "--dry-run"]);
    assert!(preview.contains("dry run"), "{preview}");
    let moved: Vec<Vec<&str>> = preview
        .lines()
        .filter(|l| l.starts_with("t "))
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(moved, [["t", "0", "3", "0"], ["t", "1", "0", "0"]]);
    assert_eq!(committed(&node, "g"), [(0, 3), (1, 0)]);
    reset(&["--shift-by", "-2"]);
    assert_eq!(committed(&node, "g"), [(0, 1), (1, 0)]);
    reset(&["--shift-by", "10"]);
    assert_eq!(committed(&node, "g"), [(0, 5), (1, 3)]);
    reset(&["--to-offset", "1", "--partition", "1"]);
    assert_eq!(committed(&node, "g"), [(0, 5), (1, 1)]);
    reset(&[
        "--to-datetime",
        "1970-01-01T00:00:01.003Z",
        "--partition",
        "0",
    ]);
    assert_eq!(committed(&node, "g"), [(0, 3), (1, 1)]);
    reset(&["--to-earliest"]);
    assert_eq!(committed(&node, "g"), [(0, 0), (1, 0)]);
    reset(&["--to-latest"]);
    assert_eq!(committed(&node, "g"), [(0, 5), (1, 3)]);

    for (args, says) in [
        (
            &["groups", "describe", "nobody"][..],
            "group nobody does not exist",
        ),
        (
            &["groups", "delete", "nobody"],
            "group nobody does not exist",
        ),
        (
            &[
                "groups",
                "reset-offsets",
                "nobody",
                "--topic",
                "t",
                "--to-latest",
            ],
            "does not exist",
        ),
        (
            &[
                "groups",
                "reset-offsets",
                "g",
                "--topic",
                "nope",
                "--to-latest",
            ],
            "nope",
        ),
        (
            &["groups", "reset-offsets", "g", "--topic", "t"],
            "--to-earliest",
        ),
        (
            &[
                "groups",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest",
            ],
            "cannot be used with",
        ),
        (
            &[
                "groups",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-datetime",
                "later",
            ],
            "RFC 3339",
        ),
    ] {
        let (ok, _, err) = weir(&node, args, "");
        assert!(!ok && err.contains(says), "weir {args:?}: {err}");
    }
    let (status, answer) = call(
        "POST",
        &format!("{}/v1/groups/g/reset-offsets", node.url()),
        None,
        Some(json!({"topic": "t"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("exactly one of"),
        "{answer}"
    );
    // A reset names at most 10 000 partitions; more is refused before anything is read.
    let many: Vec<u32> = (0..10_001).collect();
    let (status, answer) = call(
        "POST",
        &format!("{}/v1/groups/g/reset-offsets", node.url()),
        None,
        Some(json!({"topic": "t", "partitions": many, "to_earliest": true})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("at most 10000"),
        "{answer}"
    );

    // A group with a live member is its consumers' to move: refused until they leave.
    if common::have("kcat", "apt-get install kcat") {
        let mut member = Command::new("kcat")
            .args(["-b", &node.kafka.to_string(), "-G", "g", "t"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Once the group has synced, the API shows which partitions the member holds.
        common::eventually(
            "kcat joins g and is assigned t",
            Duration::from_secs(30),
            || {
                let (_, group) = call("GET", &format!("{}/v1/groups/g", node.url()), None, None);
                group["members"][0]["assignment"] == json!([{"topic": "t", "partitions": [0, 1]}])
            },
        );
        for args in [
            &["groups", "delete", "g"][..],
            &[
                "groups",
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
            ],
        ] {
            let (ok, _, err) = weir(&node, args, "");
            assert!(
                !ok && err.contains("active members"),
                "weir {args:?}: {err}"
            );
        }
        // SIGTERM: kcat leaves the group as it closes.
        let killed = Command::new("kill")
            .args(["-TERM", &member.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        member.wait().unwrap();
    }
    common::eventually("g has no members", Duration::from_secs(60), || {
        weir(&node, &["groups", "delete", "g"], "").0
    });
    let (ok, _, err) = weir(&node, &["groups", "describe", "g"], "");
    assert!(!ok && err.contains("does not exist"), "{err}");
    node.stop();
}

/// The `offset` of each record of a records page.
fn page_offsets(page: &Value) -> Vec<i64> {
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["offset"].as_i64().unwrap())
        .collect()
}

/// Makes topic `name` with one partition holding `values` in order, `per_request` records a
/// produce request (each request is a batch of its own).
fn topic_of(url: &str, name: &str, values: &[String], per_request: usize) {
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/topics"),
        None,
        Some(json!({ "name": name })),
    );
    assert_eq!(status, 201);
    for chunk in values.chunks(per_request) {
        let records: Vec<Value> = chunk.iter().map(|v| json!({ "value": v })).collect();
        let (status, placed) = call(
            "POST",
            &format!("{url}/v1/topics/{name}/records"),
            None,
            Some(json!({ "records": records })),
        );
        assert_eq!(status, 200, "{placed}");
    }
}

/// A records page of `topic` the API answers to `query`.
fn records_page(url: &str, topic: &str, query: &str) -> Value {
    let (status, page) = call(
        "GET",
        &format!("{url}/v1/topics/{topic}/records?{query}"),
        None,
        None,
    );
    assert_eq!(status, 200, "{query}: {page}");
    page
}

#[test]
fn records_page_backwards_from_an_offset() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    // Three produce requests make three batches, so pages start inside a batch.
    let values: Vec<String> = (0..249).map(|i| format!("r{i}")).collect();
    topic_of(&url, "paged", &values, 83);
    let page = |query: &str| records_page(&url, "paged", &format!("limit=100&{query}"));
    let newest = page(&format!("before={}", u64::MAX));
    assert_eq!(page_offsets(&newest), (149..249).collect::<Vec<_>>());
    assert_eq!(newest["next_offset"], 249);
    assert_eq!(newest["high_watermark"], 249);
    assert_eq!(newest["log_start_offset"], 0);
    assert_eq!(newest["records"][0]["value"], "r149");
    let older = page("before=149");
    assert_eq!(page_offsets(&older), (49..149).collect::<Vec<_>>());
    let oldest = page("before=49");
    assert_eq!(page_offsets(&oldest), (0..49).collect::<Vec<_>>());
    assert!(page_offsets(&page("before=0")).is_empty());
    // Forwards again from where a page ended.
    let forwards = page(&format!("offset={}", oldest["next_offset"]));
    assert_eq!(page_offsets(&forwards), (49..149).collect::<Vec<_>>());
    let (status, both) = call(
        "GET",
        &format!("{url}/v1/topics/paged/records?offset=3&before=9"),
        None,
        None,
    );
    assert_eq!(status, 400);
    assert!(both["error"].as_str().unwrap().contains("before"), "{both}");
    node.stop();
}

/// Records of the topic searched for a text: several backwards steps of the node's search.
const SEARCHED_RECORDS: usize = 30_000;

#[test]
fn records_pages_find_a_text_forwards_and_backwards_through_the_partition() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    let value = |i: usize| format!("r{i}");
    let values: Vec<String> = (0..SEARCHED_RECORDS).map(value).collect();
    topic_of(&url, "searched", &values, 10_000);
    // One record holds the text in a header only.
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/topics/searched/records"),
        None,
        Some(json!({"records": [{"value": "x", "headers": {"trace": "needle-in-header"}}]})),
    );
    assert_eq!(status, 200);
    let page =
        |query: &str| records_page(&url, "searched", &format!("limit=100&contains=99&{query}"));
    let expected: Vec<i64> = (0..SEARCHED_RECORDS)
        .filter(|&i| value(i).contains("99"))
        .map(|i| i as i64)
        .collect();
    // Forwards, page after page, every match once and in order.
    let mut found = Vec::new();
    let mut offset = 0;
    loop {
        let forwards = page(&format!("offset={offset}"));
        assert_eq!(forwards["scanned_from"], offset);
        found.extend(page_offsets(&forwards));
        offset = forwards["next_offset"].as_u64().unwrap();
        if offset >= forwards["high_watermark"].as_u64().unwrap() {
            break;
        }
    }
    assert_eq!(found, expected);
    // Backwards from the newest, each page going on from where the last one stopped.
    let mut found = Vec::new();
    let mut before = u64::MAX;
    loop {
        let backwards = page(&format!("before={before}"));
        let offsets = page_offsets(&backwards);
        assert!(offsets.len() <= 100);
        found.splice(0..0, offsets);
        before = backwards["scanned_from"].as_u64().unwrap();
        if before == 0 {
            break;
        }
    }
    assert_eq!(found, expected);
    let (_, header) = call(
        "GET",
        &format!("{url}/v1/topics/searched/records?contains=needle-in-header"),
        None,
        None,
    );
    assert_eq!(page_offsets(&header), vec![SEARCHED_RECORDS as i64]);
    assert_eq!(header["records_scanned"], SEARCHED_RECORDS + 1);
    let long = "x".repeat(weir_broker::http::CONTAINS_BYTES_MAX + 1);
    let (status, refused) = call(
        "GET",
        &format!("{url}/v1/topics/searched/records?contains={long}"),
        None,
        None,
    );
    assert_eq!(status, 400);
    assert!(
        refused["error"].as_str().unwrap().contains("at most"),
        "{refused}"
    );
    node.stop();
}

#[test]
fn record_pages_stop_at_their_byte_bounds() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    const VALUE_BYTES: usize = 512 << 10;
    // More than one search page examines.
    const RECORDS: i64 = 140;
    let values: Vec<String> = (0..RECORDS)
        .map(|i| format!("{i:04}{}", "v".repeat(VALUE_BYTES - 4)))
        .collect();
    topic_of(&url, "large", &values, 20);
    let per_page = (weir_broker::http::PAGE_BYTES_MAX as usize / VALUE_BYTES) as i64;
    let page = |query: &str| records_page(&url, "large", &format!("limit=100&{query}"));
    let first = page("offset=0");
    assert_eq!(page_offsets(&first), (0..per_page).collect::<Vec<_>>());
    assert_eq!(first["next_offset"], per_page);
    let newest = page(&format!("before={}", u64::MAX));
    assert_eq!(
        page_offsets(&newest),
        (RECORDS - per_page..RECORDS).collect::<Vec<_>>()
    );
    assert_eq!(newest["scanned_from"], RECORDS - per_page);
    // A search for a text no record holds stops at its examined-bytes bound and says where;
    // the next page goes on to the end.
    let per_search = (weir_broker::http::SCAN_BYTES_MAX as usize / VALUE_BYTES) as i64;
    let searched = page("contains=absent&offset=0");
    assert!(page_offsets(&searched).is_empty());
    assert_eq!(searched["records_scanned"], per_search);
    assert_eq!(searched["next_offset"], per_search);
    let rest = page(&format!("contains=absent&offset={per_search}"));
    assert_eq!(rest["records_scanned"], RECORDS - per_search);
    assert_eq!(rest["next_offset"], RECORDS);
    // Backwards, a search reads windows of the log no larger than what is left of its bound:
    // the newest batches (one record each) that fit in 64 MiB with their headers, then the next
    // page the rest.
    let back = page(&format!("contains=absent&before={RECORDS}"));
    assert!(page_offsets(&back).is_empty());
    let per_back = back["records_scanned"].as_i64().unwrap();
    assert!(
        (per_search - 1..=per_search).contains(&per_back),
        "{per_back}"
    );
    assert_eq!(back["scanned_from"], RECORDS - per_back);
    let older = page(&format!("contains=absent&before={}", RECORDS - per_back));
    assert_eq!(older["records_scanned"], RECORDS - per_back);
    assert_eq!(older["scanned_from"], 0);
    node.stop();
}

#[test]
fn the_node_endpoint_counts_what_the_node_holds_and_its_history_the_rates() {
    let (_dir, node, _) = started(&[]);
    let url = node.url();
    let placed = post_events(&url);
    assert_eq!(placed.len(), 10);
    let (status, _) = call(
        "POST",
        &format!("{url}/v1/topics"),
        None,
        Some(json!({"name": "empty", "partitions": 3})),
    );
    assert_eq!(status, 201);
    let (status, topics) = call("GET", &format!("{url}/v1/topics"), None, None);
    assert_eq!(status, 200);
    let events = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "events")
        .unwrap();
    assert_eq!(events["records"], 10);
    let events_bytes = events["size_bytes"].as_u64().unwrap();
    assert!(events_bytes > 10 * "event 0".len() as u64, "{events}");

    let (status, summary) = call("GET", &format!("{url}/v1/node"), None, None);
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(summary["topics"], 2);
    assert_eq!(summary["partitions"], 5);
    assert_eq!(summary["offline_partitions"], 0);
    assert_eq!(summary["size_bytes"].as_u64().unwrap(), events_bytes);
    assert_eq!(summary["totals"]["records_in"], 10);
    assert!(summary["connections"]["http"].as_i64().unwrap() >= 1);
    assert_eq!(summary["connections"]["kafka"], 0);
    assert!(summary["disk_free_bytes"].as_u64().unwrap() > 0);

    // A sample every 5 s: the ten records show as a rate in one of the first samples, and
    // the rates over the samples add up to them.
    let history = || call("GET", &format!("{url}/v1/node/history"), None, None).1;
    let mut last = Value::Null;
    common::eventually(
        "a sample with the produced records",
        Duration::from_secs(20),
        || {
            last = history();
            last["samples"].as_array().unwrap().len() >= 2
        },
    );
    assert_eq!(last["interval_seconds"], 5);
    assert_eq!(last["samples_max"], 180);
    let samples = last["samples"].as_array().unwrap();
    let produced: f64 = samples
        .iter()
        .map(|s| s["produced_records_per_s"].as_f64().unwrap() * 5.0)
        .sum();
    assert!(
        (8.5..=11.5).contains(&produced),
        "{produced} records in {last}"
    );
    assert!(samples[0]["time_ms"].as_i64().unwrap() < samples[1]["time_ms"].as_i64().unwrap());
    // Each topic's rates over the last interval (the records came before it: none now).
    assert_eq!(
        last["topics"]["events"]["produced_records_per_s"], 0.0,
        "{last}"
    );
    node.stop();
}

/// (status, content type, content security policy, body) of a GET.
fn get_file(url: &str) -> (u16, String, String, String) {
    let mut response = agent().get(url).call().unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (content_type, policy) = (header("content-type"), header("content-security-policy"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap();
    (status, content_type, policy, body)
}

#[test]
fn the_console_is_served_from_the_binary_without_a_token_and_the_api_still_asks_for_one() {
    let (_dir, node, _) = started(&["--admin-token", "s3cret"]);
    let url = node.url();
    let (status, content_type, policy, page) = get_file(&format!("{url}/ui"));
    assert_eq!(status, 200, "/ui leads to the console page");
    assert!(content_type.starts_with("text/html"), "{content_type}");
    assert!(policy.contains("default-src 'self'"), "{policy}");
    assert!(page.contains(r#"src="app.js""#), "{page}");
    // Every file the page names is served, with its type.
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("style.css", "text/css"),
        ("vendor/uplot/uPlot.iife.min.js", "text/javascript"),
        ("vendor/uplot/uPlot.min.css", "text/css"),
        ("vendor/uplot/LICENSE", "text/plain"),
    ] {
        assert!(
            file.starts_with("vendor/uplot/LICENSE") || page.contains(file),
            "{file} is not on the page"
        );
        let (status, content_type, _, body) = get_file(&format!("{url}/ui/{file}"));
        assert_eq!(status, 200, "{file}");
        assert!(content_type.starts_with(kind), "{file}: {content_type}");
        assert!(!body.is_empty(), "{file}");
    }
    assert_eq!(get_file(&format!("{url}/ui/../Cargo.toml")).0, 404);
    assert_eq!(get_file(&format!("{url}/ui/secrets.js")).0, 404);
    // The data stays behind the token.
    assert_eq!(call("GET", &format!("{url}/v1/node"), None, None).0, 401);
    assert_eq!(
        call(
            "GET",
            &format!("{url}/v1/node/history"),
            Some("s3cret"),
            None
        )
        .0,
        200
    );
    node.stop();
}
