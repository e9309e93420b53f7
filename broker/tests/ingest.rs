//! Metrics and logs from the programs teams run, into a real node: unprivileged rsyslog and
//! syslog-ng instances with `examples/rsyslog/weir.conf` and `examples/syslog-ng/weir.conf`
//! forward `logger` lines over Kafka into a `syslog-to-json` pipeline; a Prometheus started with `examples/prometheus/prometheus.yml` scrapes the node
//! and remote-writes to it; the OpenTelemetry Python SDK runs
//! `examples/opentelemetry/export.py`; curl posts the OTLP JSON example; `weir produce
//! --follow` tails a log file through a rename rotation. SQL then counts and
//! aggregates what landed, and `/metrics` counts each source.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{
    Node, eventually, have, metric, number, output_text, python, rfc3339, rows, started, syslog_ng,
};
use serde_json::{Value, json};
use weir_broker::cli::Client;

fn example(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(path)
}

/// A process killed when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A program from a Debian package, on the PATH or in `/usr/sbin` (not on every user's PATH).
fn program(name: &str, package: &str) -> Option<std::path::PathBuf> {
    let sbin = std::path::Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        return Some(sbin);
    }
    have(name, &format!("apt-get install {package}")).then(|| name.into())
}

/// A node running a pipeline `parse` from `syslog` (2 partitions) through `syslog-to-json` to
/// `syslog-json` (whose fields are typed columns), and a syslog daemon's example config pointed
/// at it, for an instance reading lines from `socket`.
struct Syslog {
    dir: tempfile::TempDir,
    node: Node,
    c: Client,
    socket: std::path::PathBuf,
    example: String,
}

impl Syslog {
    /// `None` when `logger` is missing.
    fn start(example_config: &str) -> Option<Syslog> {
        if !have("logger", "apt-get install bsdutils") {
            return None;
        }
        let (dir, node, c) = started(&[]);
        common::create_topic(&c, "syslog", 2);
        let schema = json!({"name": "syslog-json", "partitions": 1, "configs": {
            "value.format": "json",
            "value.schema": "app TEXT, hostname TEXT, severity TEXT, message TEXT"}});
        c.call("POST", "/v1/topics", Some(&schema)).unwrap();
        let wasm = std::fs::read(weir_tests::wasm::plugin_wasm("syslog-to-json").unwrap()).unwrap();
        c.send(
            "PUT",
            "/v1/plugins/syslog-to-json",
            "application/wasm",
            &wasm,
        )
        .unwrap();
        let spec = json!({"name": "parse", "from": "syslog", "through": ["syslog-to-json"],
                          "to": ["syslog-json"], "from_offset": "earliest"});
        c.call("POST", "/v1/pipelines", Some(&spec)).unwrap();
        let example = std::fs::read_to_string(example(example_config))
            .unwrap()
            .replace("localhost:9092", &node.kafka.to_string());
        Some(Syslog {
            socket: dir.path().join("log.sock"),
            dir,
            node,
            c,
            example,
        })
    }
}

/// Waits until `syslog-json` holds `lines` lines of `app` — and no more — parsed, with none
/// dead-lettered.
fn parsed_exactly(c: &Client, app: &str, lines: i64) {
    let count = format!("SELECT count(*) FROM \"syslog-json\" WHERE app = '{app}'");
    eventually(
        &format!("{lines} parsed lines"),
        Duration::from_secs(60),
        || number(c, &count) >= lines,
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(number(c, &count), lines, "each line once");
    let distinct = format!(
        "SELECT count(DISTINCT message) FROM \"syslog-json\" WHERE app = '{app}' \
         AND message LIKE 'line %' AND severity = 'warning'"
    );
    let sample = rows(c, "SELECT value_text FROM \"syslog-json\" LIMIT 1");
    assert_eq!(number(c, &distinct), lines, "{sample:?}");
    let status = c.call("GET", "/v1/pipelines/parse", None).unwrap();
    assert_eq!(status["dead_lettered"], 0, "{status}");
}

#[test]
fn rsyslog_forwards_logger_lines_through_a_syslog_pipeline_counted_exactly_by_sql() {
    let Some(rsyslogd) = program("rsyslogd", "rsyslog rsyslog-kafka") else {
        return;
    };
    let Some(Syslog {
        dir,
        node,
        c,
        socket,
        example,
    }) = Syslog::start("rsyslog/weir.conf")
    else {
        return;
    };
    // An unprivileged instance: its own work directory, pid file and socket for `logger`.
    let config = format!(
        "global(workDirectory=\"{work}\")\n\
         module(load=\"imuxsock\" SysSock.Use=\"off\")\n\
         input(type=\"imuxsock\" Socket=\"{socket}\")\n{example}",
        work = dir.path().display(),
        socket = socket.display(),
    );
    let config_path = dir.path().join("rsyslog.conf");
    std::fs::write(&config_path, config).unwrap();
    let _rsyslog = Running(
        Command::new(rsyslogd)
            .arg("-n")
            .arg("-f")
            .arg(&config_path)
            .arg("-i")
            .arg(dir.path().join("rsyslog.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting rsyslogd"),
    );
    eventually("rsyslog's socket", Duration::from_secs(20), || {
        socket.exists()
    });
    send_lines(&socket, "weir-test", 200);
    parsed_exactly(&c, "weir-test", 200);
    node.stop();
}

/// Sends `lines` lines `line <i>` tagged `app` at warning to the syslog socket `socket`.
fn send_lines(socket: &std::path::Path, app: &str, lines: i64) {
    for i in 0..lines {
        let out = Command::new("logger")
            .args([
                "-u",
                &socket.to_string_lossy(),
                "-t",
                app,
                "-p",
                "user.warning",
            ])
            .arg(format!("line {i}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", output_text(&out));
    }
}

#[test]
fn syslog_ng_forwards_logger_lines_through_a_syslog_pipeline_counted_exactly_by_sql() {
    let Some(root) = syslog_ng() else {
        return;
    };
    let Some(Syslog {
        dir,
        node,
        c,
        socket,
        example,
    }) = Syslog::start("syslog-ng/weir.conf")
    else {
        return;
    };
    // The example's log path reads s_src: here a socket for `logger`.
    let config = format!(
        "@version: 3.38\nsource s_src {{ unix-dgram(\"{}\"); }};\n{example}",
        socket.display()
    );
    let config_path = dir.path().join("syslog-ng.conf");
    std::fs::write(&config_path, config).unwrap();
    let libraries = [
        "usr/lib/x86_64-linux-gnu",
        "lib/x86_64-linux-gnu",
        "usr/lib/syslog-ng",
    ]
    .map(|d| root.join(d).display().to_string())
    .join(":");
    let path = |name: &str| dir.path().join(name).display().to_string();
    let _syslog_ng = Running(
        Command::new(root.join("usr/sbin/syslog-ng"))
            .env("LD_LIBRARY_PATH", libraries)
            .arg("-F")
            .arg(format!("--cfgfile={}", config_path.display()))
            .arg(format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            ))
            .arg(format!("--persist-file={}", path("syslog-ng.persist")))
            .arg(format!("--pidfile={}", path("syslog-ng.pid")))
            .arg(format!("--control={}", path("syslog-ng.ctl")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting syslog-ng"),
    );
    eventually("syslog-ng's socket", Duration::from_secs(20), || {
        socket.exists()
    });
    send_lines(&socket, "weir-test", 200);
    parsed_exactly(&c, "weir-test", 200);
    node.stop();
}

#[test]
fn prometheus_scrapes_the_node_and_remote_writes_every_sample_into_a_topic() {
    if !have("prometheus", "apt-get install prometheus") {
        return;
    }
    let (dir, node, c) = started(&[]);
    let config = std::fs::read_to_string(example("prometheus/prometheus.yml"))
        .unwrap()
        .replace("localhost:8080", &node.http.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s");
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let _prometheus = Running(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prometheus").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus"),
    );
    // `up` is written for every scrape; the node's own counters only when the scrape parsed.
    let scraped = "SELECT count(*) FROM metrics WHERE name = 'weir_ingest_records_total' \
                   AND job = 'weir'";
    eventually(
        "samples of the node's own metrics",
        Duration::from_secs(90),
        || c.call("GET", "/v1/topics/metrics", None).is_ok() && number(&c, scraped) > 0,
    );
    let up = rows(
        &c,
        "SELECT instance, min(sample) AS low, max(sample) AS high, count(*) AS samples \
         FROM metrics WHERE name = 'up' GROUP BY instance",
    );
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["instance"], node.http.to_string());
    assert_eq!(
        (up[0]["low"].as_f64(), up[0]["high"].as_f64()),
        (Some(1.0), Some(1.0))
    );
    // Keyed by series: every sample of one series is on one partition, in time order.
    let record = rows(
        &c,
        "SELECT key_text, value_text FROM metrics WHERE name = 'up' LIMIT 1",
    );
    let value: Value = serde_json::from_str(record[0]["value_text"].as_str().unwrap()).unwrap();
    assert_eq!(
        record[0]["key_text"],
        format!("up{{instance=\"{}\",job=\"weir\"}}", node.http)
    );
    assert_eq!(value["labels"]["job"], "weir");
    assert!(value["timestamp"].as_i64().unwrap() > 0, "{value}");
    let accepted = metric(
        &node,
        "weir_ingest_records_total{source=\"prometheus_remote_write\",result=\"accepted\"}",
    );
    assert!(accepted >= 1.0, "{accepted}");
    node.stop();
}

#[test]
fn the_opentelemetry_sdk_exports_logs_and_metrics_into_topics() {
    let Some(python) = python() else {
        return;
    };
    let (_dir, node, c) = started(&["--default-partitions", "2"]);
    let out = Command::new(python)
        .arg(example("opentelemetry/export.py"))
        .arg("50")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", node.url())
        .output()
        .expect("running the OpenTelemetry example");
    let printed = output_text(&out);
    assert!(out.status.success(), "{printed}");
    assert!(printed.contains("exported 50 log records"), "{printed}");
    // Every log record, once, with the resource's attributes beside its own.
    let by_severity = rows(
        &c,
        "SELECT severity_text, count(*) AS n FROM logs WHERE \"service.name\" = 'checkout' \
         GROUP BY severity_text ORDER BY severity_text",
    );
    assert_eq!(
        by_severity,
        [
            json!({"severity_text": "ERROR", "n": 10}),
            json!({"severity_text": "INFO", "n": 40})
        ]
    );
    let failed = rows(
        &c,
        "SELECT body, value_text FROM logs WHERE body = 'payment 5 failed'",
    );
    assert_eq!(failed.len(), 1, "{failed:?}");
    let value: Value = serde_json::from_str(failed[0]["value_text"].as_str().unwrap()).unwrap();
    assert_eq!(value["payment.id"], 5, "{value}");
    assert_eq!(value["deployment.environment"], "example", "{value}");
    assert_eq!(value["scope.name"], "checkout.payments", "{value}");
    // The counter's two series and the histogram, as sample-shaped records.
    let payments = rows(
        &c,
        "SELECT labels, sample FROM metrics WHERE name = 'payments' ORDER BY sample",
    );
    let counts: Vec<(Value, i64)> = payments
        .iter()
        .map(|r| {
            let labels: Value = serde_json::from_str(r["labels"].as_str().unwrap()).unwrap();
            (
                labels["result"].clone(),
                r["sample"].as_f64().unwrap() as i64,
            )
        })
        .collect();
    assert_eq!(counts, [(json!("failed"), 10), (json!("done"), 40)]);
    let histogram = rows(
        &c,
        "SELECT value_text FROM metrics WHERE name = 'payment_latency'",
    );
    let histogram: Value =
        serde_json::from_str(histogram[0]["value_text"].as_str().unwrap()).unwrap();
    assert_eq!(histogram["kind"], "histogram");
    assert_eq!(histogram["count"], 50);
    let logs_accepted = metric(
        &node,
        "weir_ingest_records_total{source=\"otlp_logs\",result=\"accepted\"}",
    );
    assert_eq!(logs_accepted, 50.0);
    node.stop();
}

/// (status, content type, body) of a curl POST.
fn curl_post(url: &str, headers: &[&str], body: &[u8]) -> (u16, String, Vec<u8>) {
    let mut command = Command::new("curl");
    command.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code} %{content_type}",
        "-X",
        "POST",
    ]);
    for h in headers {
        command.args(["-H", h]);
    }
    command.args(["--data-binary", "@-", url]);
    let out = common::run_with_input_bytes(command, body);
    let text = out.stdout;
    let split = text.iter().rposition(|b| *b == b'\n').unwrap();
    let trailer = String::from_utf8_lossy(&text[split + 1..]).into_owned();
    let (status, content_type) = trailer.split_once(' ').unwrap();
    (
        status.parse().unwrap(),
        content_type.to_string(),
        text[..split].to_vec(),
    )
}

#[test]
fn otlp_json_from_curl_lands_and_bad_exports_are_refused_with_a_status() {
    if !have("curl", "apt-get install curl") {
        return;
    }
    let (_dir, node, c) = started(&[]);
    let logs = format!("{}/v1/logs", node.url());
    let example = std::fs::read(example("opentelemetry/log.json")).unwrap();
    let json = "Content-Type: application/json";
    let (status, _, body) = curl_post(&format!("{logs}?topic=app-logs"), &[json], &example);
    assert_eq!((status, body.as_slice()), (200, &b"{}"[..]));
    let landed = rows(
        &c,
        "SELECT timestamp, severity_text, \"service.name\" AS service FROM \"app-logs\"",
    );
    assert_eq!(
        landed,
        [
            json!({"timestamp": "2026-01-01T00:00:00Z", "severity_text": "ERROR", "service": "checkout"})
        ]
    );
    // Malformed: 400 with a Status naming the problem, in the request's encoding; nothing written.
    let (status, _, body) = curl_post(&logs, &[json], br#"{"resourceLogs": 7}"#);
    let status_body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status, status_body["code"].as_i64()),
        (400, Some(3)),
        "{status_body}"
    );
    assert!(
        status_body["message"]
            .as_str()
            .unwrap()
            .contains("not an OTLP JSON export request"),
        "{status_body}"
    );
    let (status, content_type, body) = curl_post(
        &logs,
        &["Content-Type: application/x-protobuf"],
        b"\x0a\xff\x01",
    );
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/x-protobuf")
    );
    assert!(String::from_utf8_lossy(&body).contains("not an OTLP protobuf export request"));
    let (status, _, _) = curl_post(&logs, &["Content-Type: text/csv"], b"a,b");
    assert_eq!(status, 415);
    // Remote write with a body that is not snappy.
    let write = format!("{}/api/v1/write", node.url());
    let (status, _, body) = curl_post(
        &write,
        &[
            "Content-Type: application/x-protobuf",
            "Content-Encoding: snappy",
        ],
        b"\xff\xff\xff\xff\xff",
    );
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        rows(&c, "SELECT count(*) AS n FROM \"app-logs\"")[0]["n"],
        1,
        "a refused export wrote nothing"
    );
    assert!(
        c.call("GET", "/v1/topics/logs", None).is_err(),
        "nothing made the default topic"
    );
    let refused = |source: &str| {
        metric(
            &node,
            &format!("weir_ingest_requests_total{{source=\"{source}\",result=\"refused\"}}"),
        )
    };
    // The two malformed bodies and the one of an unknown type.
    assert_eq!(refused("otlp_logs"), 3.0);
    assert_eq!(refused("prometheus_remote_write"), 1.0);
    node.stop();
}

#[test]
fn with_an_admin_token_the_ingestion_endpoints_need_it() {
    let (_dir, node, _c) = started(&["--admin-token", "s3cret"]);
    let example = std::fs::read(example("opentelemetry/log.json")).unwrap();
    for (path, content_type) in [
        ("/v1/logs", "application/json"),
        ("/v1/metrics", "application/json"),
        ("/api/v1/write", "application/x-protobuf"),
    ] {
        let url = format!("{}{path}", node.url());
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let response = agent
            .post(&url)
            .content_type(content_type)
            .send(&example[..])
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let client = Client::new(&node.url(), Some("s3cret".into()));
    let written = client.send("POST", "/v1/logs", "application/json", &example);
    assert!(written.is_ok(), "{written:?}");
    node.stop();
}

#[test]
fn weir_produce_follow_tails_a_file_through_rotation_sending_each_line_once() {
    let (dir, node, c) = started(&[]);
    common::create_topic(&c, "app", 2);
    let log = dir.path().join("app.log");
    let write = |path: &std::path::Path, from: i64, to: i64| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        for i in from..to {
            std::io::Write::write_all(&mut f, format!("line {i}\n").as_bytes()).unwrap();
        }
    };
    write(&log, 0, 10);
    let _follow = Running(
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["produce", "app", "--from-beginning", "--follow"])
            .arg(&log)
            .env("WEIR_SERVER", node.url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let count = "SELECT count(*) FROM app";
    eventually("the lines already there", Duration::from_secs(30), || {
        number(&c, count) == 10
    });
    write(&log, 10, 20);
    eventually("appended lines", Duration::from_secs(30), || {
        number(&c, count) == 20
    });
    // logrotate: renamed away, a last line written to the old file, then a new file.
    std::fs::rename(&log, dir.path().join("app.log.1")).unwrap();
    write(&dir.path().join("app.log.1"), 20, 21);
    std::thread::sleep(Duration::from_millis(500));
    write(&log, 21, 30);
    eventually("lines of both files", Duration::from_secs(30), || {
        number(&c, count) >= 30
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(number(&c, count), 30);
    assert_eq!(number(&c, "SELECT count(DISTINCT value_text) FROM app"), 30);
    node.stop();
}

#[test]
fn every_query_of_the_grafana_dashboard_answers_over_the_postgres_listener() {
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    assert_eq!(rfc3339(1_767_225_600_000), "2026-01-01T00:00:00Z");
    let (_dir, node, c) = started(&[]);
    let access = json!({"name": "access", "partitions": 2, "configs": {
        "value.format": "json",
        "value.schema": "host TEXT, method TEXT, path TEXT, status INT, bytes BIGINT"}});
    c.call("POST", "/v1/topics", Some(&access)).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let records: Vec<Value> = (0..60)
        .map(|i| {
            let status = if i % 4 == 0 { 500 } else { 200 };
            let value = json!({"host": format!("web-{}", i % 3), "method": "GET",
                               "path": "/", "status": status, "bytes": 100});
            json!({"key": format!("web-{}", i % 3), "value": value.to_string(),
                   "timestamp": now - 1_800_000 + i * 30_000})
        })
        .collect();
    c.call(
        "POST",
        "/v1/topics/access/records",
        Some(&json!({ "records": records })),
    )
    .unwrap();
    c.call(
        "POST",
        "/v1/groups/dashboard/offsets",
        Some(&json!({"topic": "access", "partition": 0, "offset": 1})),
    )
    .unwrap();
    let pipeline = "CREATE PIPELINE errors AS INSERT INTO errors_out \
        SELECT window_start, host, count(*) AS errors \
        FROM TUMBLE(access, timestamp, INTERVAL '1 minute') WHERE status >= 500 \
        GROUP BY window_start, window_end, host WITH (start = 'earliest')";
    c.call("POST", "/v1/sql", Some(&json!({ "sql": pipeline })))
        .unwrap();
    eventually(
        "the pipeline to read access",
        Duration::from_secs(30),
        || c.call("GET", "/v1/pipelines/errors", None).unwrap()["records_in"] == 60,
    );

    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(example("grafana/dashboards/weir.json")).unwrap())
            .unwrap();
    let (from, to) = (rfc3339(now - 3_600_000), rfc3339(now + 60_000));
    let time_filter = regex::Regex::new(r"\$__timeFilter\(([^)]+)\)").unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert_eq!(panels.len(), 4);
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        for target in panel["targets"].as_array().unwrap() {
            let sql = target["rawSql"].as_str().unwrap();
            let sql = time_filter.replace_all(sql, format!("$1 BETWEEN '{from}' AND '{to}'"));
            assert!(
                !sql.contains("$__"),
                "{title}: a macro the test does not expand"
            );
            let mut command = Command::new("psql");
            command
                .args(["-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=1", "-f", "-"])
                .args(["-h", &node.pg.ip().to_string()])
                .args(["-p", &node.pg.port().to_string()])
                .args(["-U", "weir", "-d", "weir"]);
            let out = common::run_with_input(command, &format!("{sql};\n"));
            let printed = output_text(&out);
            assert!(out.status.success(), "{title}: {printed}");
            let lines: Vec<&str> = printed.lines().collect();
            let rows = lines.len().saturating_sub(2);
            assert!(rows >= 1, "{title} answered no rows: {printed}");
            if target["format"] == "time_series" {
                assert!(lines[0].starts_with("time|"), "{title}: {printed}");
            }
            if title == "Requests and errors per minute" {
                // Every request of the last hour, once, and every fourth an error.
                let total = |column: usize| -> i64 {
                    lines[1..=rows]
                        .iter()
                        .map(|l| l.split('|').nth(column).unwrap().parse::<i64>().unwrap())
                        .sum()
                };
                assert_eq!((total(1), total(2)), (60, 15), "{printed}");
            }
        }
    }
    node.stop();
}

/// (status, `Retry-After`, body as text) of a POST with `headers`.
fn post(url: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Option<String>, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send(body).unwrap();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    // Protobuf answers are read as text too: the message in them is.
    let bytes = response.body_mut().read_to_vec().unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (response.status().as_u16(), retry_after, text)
}

#[test]
fn ingestion_refuses_bodies_past_their_bounds_and_asks_for_a_retry_when_it_cannot_write() {
    let (_dir, node, c) = started(&[]);
    let (logs, write) = (
        format!("{}/v1/logs", node.url()),
        format!("{}/api/v1/write", node.url()),
    );
    let json = [("Content-Type", "application/json")];
    let (status, _, text) = post(&logs, &json, &vec![b' '; 17 << 20]);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("over 16 MiB"), "{text}");
    // Small bodies that claim or inflate past 64 MiB.
    let mut snappy_bomb = Vec::new();
    prost::encoding::encode_varint(100 << 20, &mut snappy_bomb);
    snappy_bomb.extend([0x00, b'x']);
    let protobuf = ("Content-Type", "application/x-protobuf");
    let (status, _, text) = post(
        &write,
        &[protobuf, ("Content-Encoding", "snappy")],
        &snappy_bomb,
    );
    assert_eq!(status, 413, "{text}");
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..70 {
        std::io::Write::write_all(&mut gzip, &[b' '; 1 << 20]).unwrap();
    }
    let gzip_bomb = gzip.finish().unwrap();
    assert!(gzip_bomb.len() < 1 << 20);
    let (status, _, text) = post(&logs, &[json[0], ("Content-Encoding", "gzip")], &gzip_bomb);
    assert_eq!(status, 413, "{text}");
    // Small bodies that decode into far more: two million empty log records in 4 MiB of
    // protobuf, five million empty records in 15 MiB of JSON.
    let wrapped = |field: u8, inner: &[u8]| {
        let mut out = vec![field << 3 | 2];
        prost::encoding::encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(inner);
        out
    };
    let empty_logs = wrapped(1, &wrapped(2, &[0x12, 0x00].repeat(2_000_000)));
    let (status, _, text) = post(&logs, &[protobuf], &empty_logs);
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("--request-memory-mib"), "{text}");
    let empty_records = format!("{{\"records\":[{}{{}}]}}", "{},".repeat(5_000_000 - 1));
    let records = format!("{}/v1/topics/logs/records", node.url());
    let (status, _, text) = post(&records, &json, empty_records.as_bytes());
    assert_eq!(status, 413, "{text}");
    assert!(
        c.call("GET", "/v1/topics/logs", None).is_err(),
        "nothing was made"
    );
    let example = std::fs::read(example("opentelemetry/log.json")).unwrap();
    let (status, _, text) = post(&logs, &json, &example);
    assert_eq!(status, 200, "the node still serves: {text}");
    node.stop();

    // A node that cannot write: shippers are asked to retry.
    let (_dir, node, _c) = started(&["--disk-free-min-mib", "1000000000"]);
    let empty_write = snap::raw::Encoder::new().compress_vec(b"").unwrap();
    let (status, retry_after, text) = post(
        &format!("{}/api/v1/write", node.url()),
        &[protobuf, ("Content-Encoding", "snappy")],
        &empty_write,
    );
    assert_eq!((status, retry_after.as_deref()), (503, Some("5")), "{text}");
    let (status, retry_after, text) = post(&format!("{}/v1/logs", node.url()), &json, &example);
    assert_eq!((status, retry_after.as_deref()), (503, Some("5")), "{text}");
    let status_body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status_body["code"], 14, "UNAVAILABLE: {text}");
    node.stop();
}

#[test]
fn topics_an_ingestion_request_names_are_made_within_the_node_s_bounds() {
    let example = std::fs::read(example("opentelemetry/log.json")).unwrap();
    let json = [("Content-Type", "application/json")];
    let (_dir, node, c) = started(&["--partitions-max", "2"]);
    let logs_into = |topic: &str| {
        post(
            &format!("{}/v1/logs?topic={topic}", node.url()),
            &json,
            &example,
        )
    };
    for topic in ["alpha", "beta"] {
        let (status, _, text) = logs_into(topic);
        assert_eq!(status, 200, "{text}");
        assert_eq!(number(&c, &format!("SELECT count(*) FROM {topic}")), 1);
    }
    let (status, _, text) = logs_into("gamma");
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("partitions"), "{text}");
    assert!(c.call("GET", "/v1/topics/gamma", None).is_err());
    node.stop();

    // A node that makes no topics on first use makes none for ingestion either.
    let (_dir, node, c) = started(&["--auto-create-topics", "false"]);
    let logs = format!("{}/v1/logs", node.url());
    let (status, _, text) = post(&logs, &json, &example);
    assert_eq!(status, 404, "{text}");
    assert!(c.call("GET", "/v1/topics/logs", None).is_err());
    common::create_topic(&c, "logs", 1);
    let (status, _, text) = post(&logs, &json, &example);
    assert_eq!(status, 200, "{text}");
    assert_eq!(number(&c, "SELECT count(*) FROM logs"), 1);
    node.stop();
}
