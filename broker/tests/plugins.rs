//! WASM plugins and pipelines against a real node: an nginx → filter → rollup pipeline fed and
//! read by kcat; a plugin written here with the SDK, deployed by HTTP, CLI and plugin
//! directory, hot-swapped mid-stream; hostile plugins; and `kill -9` during a pipeline run.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Node, consume_all, create_topic, eventually, have, kcat, started};
use serde_json::{Value, json};
use weir_broker::cli::Client;
use weir_tests::wasm::{
    Abi, HOSTILE_BODIES, abi_module, build_plugin_source, plugin_wasm, plugin_wasm_for,
};

fn client(node: &Node) -> Client {
    Client::new(&node.url(), None)
}

/// How long a pipeline or the plugin watcher gets to catch up.
const MINUTE: Duration = Duration::from_secs(60);

fn deploy(c: &Client, name: &str, wasm: &[u8], params: &str) -> Value {
    let path = if params.is_empty() {
        format!("/v1/plugins/{name}")
    } else {
        format!("/v1/plugins/{name}?{params}")
    };
    c.send("PUT", &path, "application/wasm", wasm).unwrap()
}

/// Deploys the ready-made plugin `plugins/<krate>` as `name`.
fn deploy_ready_made(c: &Client, name: &str, krate: &str, params: &str) -> Value {
    deploy(
        c,
        name,
        &std::fs::read(plugin_wasm(krate).unwrap()).unwrap(),
        params,
    )
}

fn create_pipeline(c: &Client, spec: Value) -> Value {
    c.call("POST", "/v1/pipelines", Some(&spec)).unwrap()
}

fn status(c: &Client, pipeline: &str) -> Value {
    c.call("GET", &format!("/v1/pipelines/{pipeline}"), None)
        .unwrap()
}

/// Waits until the pipeline has read everything written to its input so far.
fn wait_caught_up(c: &Client, pipeline: &str) {
    eventually(&format!("pipeline {pipeline} to catch up"), MINUTE, || {
        status(c, pipeline)["lag"] == 0
    });
}

/// Records in every partition of `topic` together.
fn topic_end(c: &Client, topic: &str) -> u64 {
    let described = c.call("GET", &format!("/v1/topics/{topic}"), None).unwrap();
    described["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["high_watermark"].as_u64().unwrap())
        .sum()
}

fn produce(c: &Client, topic: &str, records: &[Value]) {
    c.call(
        "POST",
        &format!("/v1/topics/{topic}/records"),
        Some(&json!({ "records": records })),
    )
    .unwrap();
}

fn header<'v>(record: &'v Value, key: &str) -> Option<&'v str> {
    record["headers"].as_array()?.iter().find(|h| h[0] == key)?[1].as_str()
}

/// An access-log line at `minute` (from 2024-01-01 00:00 UTC) plus `second`.
fn access_line(minute: u32, second: u32, path: &str, status: u16, bytes: u64) -> String {
    format!(
        r#"10.0.0.{second} - - [01/Jan/2024:00:{minute:02}:{second:02} +0000] "GET {path} HTTP/1.1" {status} {bytes} "-" "curl/8.5""#
    )
}

const JAN_2024_MS: i64 = 1_704_067_200_000;

#[test]
fn nginx_lines_become_per_minute_error_counts() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let (_dir, node, _) = started(&[]);
    let c = client(&node);
    create_topic(&c, "access", 1);
    deploy_ready_made(&c, "nginx-to-json", "nginx-to-json", "");
    deploy_ready_made(&c, "server-errors", "json-filter", "field=status&gte=500");
    deploy_ready_made(
        &c,
        "per-status",
        "metrics-rollup",
        "key=status&value=bytes&window_ms=60000",
    );
    create_pipeline(
        &c,
        json!({ "name": "errors-per-minute", "from": "access", "through": ["nginx-to-json", "server-errors", "per-status"],
                "to": ["errors-per-minute"], "from_offset": "earliest" }),
    );

    // Minutes 0..3, 20 requests each: 8×200, 4×404, 4×500, 4×503, with bytes = the second.
    let statuses = [200, 200, 404, 500, 503];
    let mut lines = Vec::new();
    let mut expected: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for minute in 0..3 {
        for second in 0..20 {
            let status = statuses[second as usize % 5];
            lines.push(access_line(
                minute,
                second,
                &format!("/m{minute}/{second}"),
                status,
                u64::from(second),
            ));
            if status >= 500 {
                let entry = expected
                    .entry((JAN_2024_MS + i64::from(minute) * 60_000, status.to_string()))
                    .or_default();
                entry.0 += 1;
                entry.1 += u64::from(second);
            }
        }
    }
    lines.push("this is not an access log line".into());
    lines.push("GET / HTTP/1.1".into());
    // A 500 at minute 10 closes the windows of minutes 0..3 (and opens one that stays open).
    lines.push(access_line(10, 0, "/late", 500, 1));
    kcat(&node, &["-P", "-t", "access"], &(lines.join("\n") + "\n"));
    wait_caught_up(&c, "errors-per-minute");

    let out = kcat(
        &node,
        &[
            "-C",
            "-t",
            "errors-per-minute",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%k\t%s\n",
        ],
        "",
    );
    let mut got: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for line in out.lines() {
        let (key, value) = line.split_once('\t').unwrap();
        let v: Value = serde_json::from_str(value).unwrap();
        assert_eq!(v["status"], key);
        assert_eq!(
            v["window_end_ms"].as_i64().unwrap() - v["window_start_ms"].as_i64().unwrap(),
            60_000
        );
        let previous = got.insert(
            (v["window_start_ms"].as_i64().unwrap(), key.to_string()),
            (
                v["count"].as_u64().unwrap(),
                v["sum"].as_f64().unwrap() as u64,
            ),
        );
        assert!(previous.is_none(), "window emitted twice: {line}");
    }
    assert_eq!(got, expected);
    assert_eq!(expected.len(), 6);

    // The two lines that are not access-log lines are dead letters, with the reason.
    let dead = consume_all(&c, "errors-per-minute.dlq", 0);
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0]["value"], "this is not an access log line");
    assert!(
        header(&dead[0], "weir.error")
            .unwrap()
            .starts_with("not an access-log line")
    );
    assert_eq!(header(&dead[0], "weir.plugin"), Some("nginx-to-json"));
    assert_eq!(header(&dead[1], "weir.source"), Some("access/0/61"));
    let s = status(&c, "errors-per-minute");
    assert_eq!(
        (s["records_in"].as_u64(), s["dead_lettered"].as_u64()),
        (Some(63), Some(2)),
        "{s}"
    );
    assert_eq!(s["status"], "running");
}

const NO_DEBUG: &str = r#"
use weir::{Params, Record};

const DROPPED: &[&str] = &[WORDS];

/// Drops lines that contain one of the words.
#[weir::filter]
fn no_debug(r: &Record, _params: &Params) -> bool {
    let line = String::from_utf8_lossy(&r.value);
    !DROPPED.iter().any(|word| line.contains(word))
}
"#;

/// How a test deploys a plugin version.
#[derive(Clone, Copy, Debug)]
enum DeployPath {
    Http,
    Cli,
    Directory,
}

fn deploy_by(path: DeployPath, node: &Node, data_dir: &Path, name: &str, wasm: &[u8]) {
    match path {
        DeployPath::Http => {
            deploy(&client(node), name, wasm, "");
        }
        DeployPath::Cli => {
            let file = data_dir
                .parent()
                .unwrap()
                .join(format!("{name}-upload.wasm"));
            std::fs::write(&file, wasm).unwrap();
            let out = Command::new(env!("CARGO_BIN_EXE_weir"))
                .args(["plugin", "deploy", name])
                .arg(&file)
                .args(["--server", &node.url()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "weir plugin deploy: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(&format!("deployed {name} version"))
            );
        }
        DeployPath::Directory => {
            let dir = data_dir.join("plugins");
            let tmp = dir.join(format!("{name}.tmp"));
            std::fs::write(&tmp, wasm).unwrap();
            std::fs::rename(&tmp, dir.join(format!("{name}.wasm"))).unwrap();
        }
    }
}

fn active_version(c: &Client, name: &str) -> Option<u64> {
    c.call("GET", &format!("/v1/plugins/{name}"), None).ok()?["active"].as_u64()
}

const LEVELS: [&str; 4] = ["DEBUG", "INFO", "WARN", "ERROR"];

#[test]
fn a_plugin_built_for_abi_version_1_swaps_to_its_version_2_build_and_back() {
    let (_dir, node, _) = started(&[]);
    let c = client(&node);
    create_topic(&c, "lines", 1);
    let build = |abi| std::fs::read(plugin_wasm_for("regex-filter", abi).unwrap()).unwrap();
    let abi_version = |c: &Client| {
        let query = "SELECT version, abi_version FROM weir.plugins WHERE name = 'errors'";
        c.call("POST", "/v1/sql", Some(&json!({ "sql": query })))
            .unwrap()["rows"][0]
            .clone()
    };
    deploy(&c, "errors", &build(Abi::V1), "pattern=ERROR");
    assert_eq!(abi_version(&c), json!({ "version": 1, "abi_version": 1 }));
    create_pipeline(
        &c,
        json!({ "name": "errors", "from": "lines", "through": ["errors"], "to": ["errors-out"],
                "from_offset": "earliest" }),
    );
    let steps = [
        (
            "version 1 module",
            None,
            json!({ "version": 1, "abi_version": 1 }),
        ),
        (
            "hot swap",
            Some(Abi::Current),
            json!({ "version": 2, "abi_version": 2 }),
        ),
        ("rollback", None, json!({ "version": 1, "abi_version": 1 })),
    ];
    for (kept, (step, swap, expected)) in (1..).zip(steps) {
        match swap {
            Some(abi) => {
                deploy(&c, "errors", &build(abi), "pattern=ERROR");
            }
            None if kept > 1 => {
                c.call("POST", "/v1/plugins/errors/rollback", Some(&json!({})))
                    .unwrap();
            }
            None => {}
        }
        assert_eq!(abi_version(&c), expected, "after the {step}");
        let records = [
            json!({ "value": format!("ERROR in step {kept}"), "key": "k", "headers": { "h": "v" } }),
            json!({ "value": "INFO fine" }),
        ];
        produce(&c, "lines", &records);
        wait_caught_up(&c, "errors");
        let out = consume_all(&c, "errors-out", 0);
        let values: Vec<&str> = out.iter().map(|r| r["value"].as_str().unwrap()).collect();
        let expected: Vec<String> = (1..=kept).map(|k| format!("ERROR in step {k}")).collect();
        assert_eq!(values, expected, "after the {step}");
        let last = out.last().unwrap();
        assert_eq!(last["key"], "k", "after the {step}: {last}");
        assert_eq!(header(last, "h"), Some("v"), "after the {step}: {last}");
    }
}

#[test]
fn a_plugin_deployed_three_ways_is_hot_swapped_without_loss_or_repeat() {
    let v1 = std::fs::read(
        build_plugin_source("no-debug", &NO_DEBUG.replace("WORDS", r#""DEBUG""#)).unwrap(),
    )
    .unwrap();
    let v2 = std::fs::read(
        build_plugin_source("no-debug", &NO_DEBUG.replace("WORDS", r#""DEBUG", "INFO""#)).unwrap(),
    )
    .unwrap();
    assert_ne!(v1, v2);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let node = Node::start(&data_dir);
    let c = client(&node);
    for path in [DeployPath::Http, DeployPath::Cli, DeployPath::Directory] {
        let tag = format!("{path:?}").to_lowercase();
        let (plugin, input, output) = (
            format!("no-debug-{tag}"),
            format!("app-{tag}"),
            format!("quiet-{tag}"),
        );
        create_topic(&c, &input, 1);
        deploy_by(path, &node, &data_dir, &plugin, &v1);
        eventually(&format!("{plugin} version 1"), MINUTE, || {
            active_version(&c, &plugin) == Some(1)
        });
        let versions = c
            .call("GET", &format!("/v1/plugins/{plugin}"), None)
            .unwrap();
        let sha256 = versions["versions"][0]["sha256"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            data_dir
                .join(format!("plugin-cache/{sha256}.cwasm"))
                .exists(),
            "compiled module cached"
        );
        assert!(
            data_dir
                .join(format!("plugin-store/{sha256}.wasm"))
                .exists(),
            "module kept"
        );
        create_pipeline(
            &c,
            json!({ "name": tag, "from": input, "through": [plugin], "to": [output], "from_offset": "earliest" }),
        );

        let record = |i: usize| json!({ "value": format!("{i} {} line", LEVELS[i % 4]) });
        let first: Vec<Value> = (0..1000).map(record).collect();
        produce(&c, &input, &first);
        wait_caught_up(&c, &tag);
        // More goes in, a chunk every 10 ms, while version 2 is deployed, and for 20 chunks
        // after the swap is seen.
        let swapped = Arc::new(AtomicBool::new(false));
        let rest = std::thread::spawn({
            let (url, input, swapped) = (node.url(), input.clone(), swapped.clone());
            move || {
                let c = Client::new(&url, None);
                let (mut next, mut after_swap) = (1000, 0);
                while after_swap < 20 {
                    produce(
                        &c,
                        &input,
                        &(next..next + 100).map(record).collect::<Vec<_>>(),
                    );
                    next += 100;
                    after_swap += usize::from(swapped.load(Ordering::Acquire));
                    std::thread::sleep(Duration::from_millis(10));
                }
                next
            }
        });
        // Swap while records flow: once the input holds more than before the producer began.
        eventually("records produced before the swap", MINUTE, || {
            topic_end(&c, &input) > 1000
        });
        deploy_by(path, &node, &data_dir, &plugin, &v2);
        eventually(&format!("{plugin} version 2"), MINUTE, || {
            active_version(&c, &plugin) == Some(2)
        });
        swapped.store(true, Ordering::Release);
        let total = rest.join().unwrap();
        wait_caught_up(&c, &tag);

        // Output = version 1 applied to offsets before some S and version 2 from S on, each
        // input record at most once and in order.
        let got: Vec<usize> = consume_all(&c, &output, 0)
            .iter()
            .map(|r| {
                r["value"]
                    .as_str()
                    .unwrap()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect();
        let last_info = got
            .iter()
            .copied()
            .filter(|i| i % 4 == 1)
            .max()
            .unwrap_or(0);
        let switch = (last_info + 1..=total)
            .find(|i| i % 4 == 1)
            .unwrap_or(total);
        let expected: Vec<usize> = (0..total)
            .filter(|i| i % 4 != 0 && (i % 4 != 1 || *i < switch))
            .collect();
        assert_eq!(got, expected, "{path:?}: not one version per record");
        assert!(
            switch > 1000 && switch < total,
            "{path:?}: the swap was not mid-stream (switch at {switch})"
        );
        let s = status(&c, &tag);
        assert_eq!(s["plugins"], json!([format!("{plugin}@2")]), "{s}");
        assert_eq!(s["records_in"].as_u64(), Some(total as u64));
        assert_eq!(s["dropped"].as_u64(), Some((total - expected.len()) as u64));
    }
    // Rollback through the CLI brings version 1 back.
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args([
            "plugin",
            "rollback",
            "no-debug-cli",
            "--server",
            &node.url(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(active_version(&c, "no-debug-cli"), Some(1));
    // A file that is not a module is refused, with the reason next to it.
    std::fs::write(data_dir.join("plugins/broken.wasm"), b"not wasm").unwrap();
    eventually("broken.error", MINUTE, || {
        data_dir.join("plugins/broken.error").exists()
    });
    let reason = std::fs::read_to_string(data_dir.join("plugins/broken.error")).unwrap();
    assert!(reason.contains("not a WebAssembly module"), "{reason}");
}

#[test]
fn hostile_plugins_fail_alone_and_pause_their_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        dir.path(),
        &["--plugin-timeout-ms", "50", "--plugin-memory-mib", "16"],
    );
    let c = client(&node);
    create_topic(&c, "in", 1);
    deploy_ready_made(&c, "everything", "regex-filter", "pattern=.");
    create_pipeline(
        &c,
        json!({ "name": "healthy", "from": "in", "through": ["everything"], "to": ["healthy-out"], "from_offset": "earliest" }),
    );
    for (name, body) in HOSTILE_BODIES {
        deploy(&c, name, &abi_module(1, body).unwrap(), "");
        create_pipeline(
            &c,
            json!({ "name": name, "from": "in", "through": [name], "to": [format!("{name}-out")], "from_offset": "earliest" }),
        );
    }
    // One record per step, so every hostile pipeline makes one failing call per record.
    for i in 0..6 {
        produce(&c, "in", &[json!({ "value": format!("record {i}") })]);
        eventually("every pipeline to take the record", MINUTE, || {
            std::iter::once("healthy")
                .chain(HOSTILE_BODIES.iter().map(|(n, _)| *n))
                .all(|p| {
                    let s = status(&c, p);
                    s["lag"] == 0 || s["status"] == "paused"
                })
        });
    }
    assert_eq!(consume_all(&c, "healthy-out", 0).len(), 6);
    assert_eq!(status(&c, "healthy")["status"], "running");
    let reasons = [
        ("loop", "deadline of 50 ms"),
        ("memory-bomb", "memory limit"),
        ("trap", "unreachable"),
        ("huge-output", "more than the limit"),
    ];
    for (name, reason) in reasons {
        let s = status(&c, name);
        assert_eq!(s["status"], "paused", "{name}: {s}");
        let why = s["reason"].as_str().unwrap();
        assert!(
            why.contains("5 failed calls in a row") && why.contains(reason),
            "{name}: {why}"
        );
        // The five failed batches are dead letters with the error; the sixth record waits.
        let dead = consume_all(&c, &format!("{name}.dlq"), 0);
        assert_eq!(dead.len(), 5, "{name}");
        assert!(
            header(&dead[0], "weir.error").unwrap().contains(reason),
            "{name}: {:?}",
            dead[0]
        );
        assert_eq!(s["lag"], 1, "{name}: {s}");
        assert!(consume_all(&c, &format!("{name}-out"), 0).is_empty());
    }
    // Modules that are not plugins never get in.
    for (wasm, reason) in [
        (abi_module(99, "i64.const 0").unwrap(), "ABI version 99"),
        (b"\x7fELF".to_vec(), "not a WebAssembly module"),
    ] {
        let error = c
            .send("PUT", "/v1/plugins/bad", "application/wasm", &wasm)
            .unwrap_err()
            .to_string();
        assert!(error.contains("400") && error.contains(reason), "{error}");
    }
    // A paused pipeline resumes on request (and fails again, here).
    assert_eq!(
        c.call("POST", "/v1/pipelines/trap/resume", None).unwrap()["status"],
        "running"
    );
    assert_eq!(c.call("GET", "/healthz", None).unwrap()["status"], "ok");
}

/// An aggregate runs over all input partitions: one row per key and window whichever
/// partitions the key's records came from; records out of order within `lateness_ms` are
/// counted, a partition silent for `idle_timeout_ms` stops holding windows open, a record after
/// its window closed is dead-lettered as late, and the output topic, given a value schema, is
/// queried with typed columns.
#[test]
fn an_aggregate_counts_each_key_once_over_all_partitions() {
    let (_dir, node, _) = started(&[]);
    let c = client(&node);
    create_topic(&c, "logs", 2);
    let schema = "host TEXT, window_start_ms BIGINT, count BIGINT, sum DOUBLE";
    let body = json!({ "name": "per-host", "partitions": 2,
                       "configs": { "value.format": "json", "value.schema": schema } });
    c.call("POST", "/v1/topics", Some(&body)).unwrap();
    deploy_ready_made(
        &c,
        "per-host",
        "metrics-rollup",
        "key=host&value=bytes&window_ms=60000",
    );
    // (partition, host, seconds after T0, bytes): partition 0 runs to 3:10 and is out of order
    // by 10 s at 0:50/0:40; partition 1 stops at 1:35.
    let at = |partition: u32, host: &str, second: i64, bytes: u64| {
        json!({ "value": json!({ "host": host, "bytes": bytes }).to_string(),
                "partition": partition, "timestamp": JAN_2024_MS + second * 1000 })
    };
    produce(
        &c,
        "logs",
        &[
            at(0, "a", 10, 1),
            at(0, "a", 50, 2),
            at(0, "a", 40, 4),
            at(0, "a", 80, 8),
            at(0, "a", 130, 16),
            at(0, "a", 190, 32),
            at(1, "a", 30, 64),
            at(1, "b", 45, 128),
            at(1, "a", 95, 256),
        ],
    );
    create_pipeline(
        &c,
        json!({ "name": "per-host", "from": "logs", "through": ["per-host"], "to": ["per-host"],
                "from_offset": "earliest", "lateness_ms": 30_000, "idle_timeout_ms": 2000 }),
    );
    // Once partition 1 has been silent for 2 s the watermark is 3:10 - 30 s: minutes 0 and 1
    // close, minute 2 stays open.
    let query = "SELECT host, window_start_ms, count, sum FROM \"per-host\" \
                 ORDER BY window_start_ms, host";
    let rows = |c: &Client| {
        c.call("POST", "/v1/sql", Some(&json!({ "sql": query })))
            .unwrap()["rows"]
            .clone()
    };
    eventually("minutes 0 and 1 to close", MINUTE, || {
        rows(&c).as_array().is_some_and(|r| r.len() == 3)
    });
    let minute = |m: i64| JAN_2024_MS + m * 60_000;
    assert_eq!(
        rows(&c),
        json!([
            { "host": "a", "window_start_ms": minute(0), "count": 4, "sum": 71.0 },
            { "host": "b", "window_start_ms": minute(0), "count": 1, "sum": 128.0 },
            { "host": "a", "window_start_ms": minute(1), "count": 2, "sum": 264.0 },
        ])
    );
    let s = status(&c, "per-host");
    assert_eq!(s["plugins"], json!(["per-host@1"]), "{s}");
    assert!(
        s["watermark_ms"].as_i64() >= Some(JAN_2024_MS + 160_000),
        "{s}"
    );

    // A record for minute 0 now is late: dead-lettered with the reason, counted, not added.
    produce(&c, "logs", &[at(1, "a", 20, 512)]);
    eventually("the late record", MINUTE, || {
        status(&c, "per-host")["late_records"] == 1
    });
    let dead = consume_all(&c, "per-host.dlq", 0);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        header(&dead[0], "weir.error").is_some_and(|e| e.starts_with("late record")),
        "{dead:?}"
    );
    assert_eq!(header(&dead[0], "weir.plugin"), Some("per-host"));
    assert_eq!(rows(&c).as_array().map(Vec::len), Some(3));

    // An aggregate must end its chain.
    deploy_ready_made(&c, "to-json", "nginx-to-json", "");
    let refused = c
        .call(
            "POST",
            "/v1/pipelines",
            Some(
                &json!({ "name": "bad", "from": "logs", "through": ["per-host", "to-json"],
                          "to": ["bad-out"] }),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(refused.contains("must be the last plugin"), "{refused}");
    // Lateness and idle timeout are bounded by a day.
    for field in ["lateness_ms", "idle_timeout_ms"] {
        let refused = c
            .call(
                "POST",
                "/v1/pipelines",
                Some(
                    &json!({ "name": "slow", "from": "logs", "through": ["per-host"],
                              "to": ["slow-out"], field: 86_400_001 }),
                ),
            )
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains(&format!("{field}=86400001: give 0 to 86400000")),
            "{refused}"
        );
    }
    assert!(
        !topic_exists(&c, "slow-out"),
        "a refused pipeline makes no topic"
    );
}

/// Whether a topic of that name exists.
fn topic_exists(c: &Client, topic: &str) -> bool {
    c.call("GET", &format!("/v1/topics/{topic}"), None).is_ok()
}

#[test]
fn kill_9_during_a_pipeline_run_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = Node::start(dir.path());
    let c = client(&node);
    create_topic(&c, "access", 2);
    let total = 60_000usize;
    let statuses = [200, 301, 404, 500];
    // Partition p gets every other line; line i is at i/20 seconds, so windows of 60 s close
    // as the input advances.
    let seconds = |i: usize| (i / 20) as u32;
    let line = |i: usize| {
        let text = access_line(
            seconds(i) / 60,
            seconds(i) % 60,
            &format!("/p/{i}"),
            statuses[i % 4],
            1,
        );
        json!({ "value": text, "partition": i % 2 })
    };
    for chunk in (0..total).collect::<Vec<_>>().chunks(5000) {
        produce(
            &c,
            "access",
            &chunk.iter().map(|i| line(*i)).collect::<Vec<_>>(),
        );
    }
    deploy_ready_made(&c, "nginx-to-json", "nginx-to-json", "");
    deploy_ready_made(
        &c,
        "per-status",
        "metrics-rollup",
        "key=status&window_ms=60000",
    );
    let spec = |name: &str, through: Value| json!({ "name": name, "from": "access", "through": through, "to": [name], "from_offset": "earliest" });
    create_pipeline(&c, spec("parsed", json!(["nginx-to-json"])));
    create_pipeline(&c, spec("rolled", json!(["nginx-to-json", "per-status"])));

    for cycle in 0..3 {
        let c = client(&node);
        // Kill once this run has made progress but before it is done.
        eventually("progress", MINUTE, || {
            status(&c, "parsed")["records_in"].as_u64().unwrap() >= 2000
        });
        let lag = status(&c, "parsed")["lag"].as_u64().unwrap();
        assert!(
            lag > 0,
            "cycle {cycle}: finished before the kill; make the input larger"
        );
        node.kill9();
        node = Node::start(dir.path());
    }
    let c = client(&node);
    wait_caught_up(&c, "parsed");
    wait_caught_up(&c, "rolled");
    // Counters are kept with the checkpoints: they count the runs before the kills too.
    let counted = status(&c, "parsed");
    assert!(
        counted["records_in"].as_u64() >= Some(total as u64),
        "{counted}"
    );
    assert!(
        counted["records_out"].as_u64() >= Some(total as u64),
        "{counted}"
    );

    // parsed: every input line exactly once, in input order within each partition.
    for partition in 0..2 {
        let paths: Vec<usize> = consume_all(&c, "parsed", partition)
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
                v["path"].as_str().unwrap()[3..].parse().unwrap()
            })
            .collect();
        let expected: Vec<usize> = (0..total).filter(|i| i % 2 == partition as usize).collect();
        assert_eq!(
            paths.len(),
            expected.len(),
            "partition {partition}: duplicates or gaps"
        );
        assert_eq!(paths, expected, "partition {partition}");
    }
    // rolled: each closed (window, status) counted once, with the exact count. Partition 0 has
    // the statuses 200 and 404, partition 1 the others, so no pair comes from both.
    let mut expected: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for partition in 0..2 {
        let lines: Vec<usize> = (0..total).filter(|i| i % 2 == partition).collect();
        let last_ms = JAN_2024_MS + i64::from(seconds(*lines.last().unwrap())) * 1000;
        for i in lines {
            let window = JAN_2024_MS + i64::from(seconds(i) / 60) * 60_000;
            if window + 60_000 <= last_ms {
                *expected
                    .entry((window, statuses[i % 4].to_string()))
                    .or_default() += 1;
            }
        }
    }
    let mut got: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for output_partition in 0..2 {
        for r in consume_all(&c, "rolled", output_partition) {
            let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
            let window = (
                v["window_start_ms"].as_i64().unwrap(),
                v["status"].as_str().unwrap().to_string(),
            );
            let previous = got.insert(window, v["count"].as_u64().unwrap());
            assert!(previous.is_none(), "window emitted twice: {v}");
        }
    }
    assert!(
        consume_all(&c, "rolled.dlq", 0).is_empty(),
        "no record is late or failed"
    );
    assert_eq!(got.len(), 196);
    assert_eq!(got, expected);
}

const ROUTER: &str = r#"
use weir::{Record, Result};

/// Even numbers to `evens`, odd ones to `odds`, and a note about multiples of three to
/// `threes`; 7 asks for a topic the pipeline does not write.
#[weir::flat_map]
fn route(r: Record) -> Result<Vec<Record>> {
    let n: u64 = r.value_str()?.trim().parse()?;
    let topic = match n {
        7 => "sevens",
        n if n % 2 == 0 => "evens",
        _ => "odds",
    };
    let mut out = vec![r.clone().to_topic(topic)];
    if n % 3 == 0 {
        out.push(Record::new(format!("{n} is a multiple of 3")).to_topic("threes"));
    }
    Ok(out)
}
"#;

#[test]
fn a_flat_map_routes_records_to_several_topics() {
    let wasm = std::fs::read(build_plugin_source("router", ROUTER).unwrap()).unwrap();
    let (_dir, node, _) = started(&[]);
    let c = client(&node);
    create_topic(&c, "numbers", 1);
    assert_eq!(deploy(&c, "router", &wasm, "")["kind"], "flat_map");
    create_pipeline(
        &c,
        json!({ "name": "split", "from": "numbers", "through": ["router"], "to": ["evens", "odds", "threes"], "from_offset": "earliest" }),
    );
    let mut records: Vec<Value> = (1..=30)
        .map(|n| json!({ "value": n.to_string() }))
        .collect();
    records.push(json!({ "value": "x" }));
    produce(&c, "numbers", &records);
    wait_caught_up(&c, "split");
    let values = |topic: &str| -> Vec<String> {
        consume_all(&c, topic, 0)
            .iter()
            .map(|r| r["value"].as_str().unwrap().to_string())
            .collect()
    };
    let numbers = |keep: fn(&u64) -> bool| -> Vec<String> {
        (1..=30u64).filter(keep).map(|n| n.to_string()).collect()
    };
    assert_eq!(values("evens"), numbers(|n| n % 2 == 0));
    assert_eq!(values("odds"), numbers(|n| n % 2 == 1 && *n != 7));
    assert_eq!(
        values("threes"),
        (1..=10)
            .map(|k| format!("{} is a multiple of 3", 3 * k))
            .collect::<Vec<_>>()
    );
    let dead = consume_all(&c, "split.dlq", 0);
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|r| {
            (
                r["value"].as_str().unwrap(),
                header(r, "weir.error").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            ("7", "topic sevens is not an output of pipeline split"),
            ("x", "invalid digit found in string")
        ]
    );
    let metrics = c.call("GET", "/metrics", None).unwrap();
    let metrics = metrics.as_str().unwrap();
    for line in [
        "weir_pipeline_records_in_total{pipeline=\"split\"} 31",
        "weir_pipeline_dead_lettered_total{pipeline=\"split\"} 2",
        "weir_pipeline_lag{pipeline=\"split\"} 0",
        // What a pipeline appends counts as records in, as a producer's appends do.
        "weir_records_in_total{topic=\"numbers\"} 31",
        "weir_records_in_total{topic=\"evens\"} 15",
        "weir_records_in_total{topic=\"threes\"} 10",
        "weir_records_in_total{topic=\"split.dlq\"} 2",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    // The status says the last error and when it happened; the CLI, how long ago.
    let status = c.call("GET", "/v1/pipelines/split", None).unwrap();
    let at = status["last_error_ms"].as_i64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(at <= now && now - at < 60_000, "{status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("invalid digit"),
        "{status}"
    );
    let listed = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["pipeline", "list", "--server", &node.url()])
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(" s ago) dead-lettered: router: invalid digit"),
        "{listed}"
    );
}

#[test]
fn a_scaffolded_plugin_builds_deploys_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let weir = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            // Share the compiled dependencies of the other plugin builds.
            .env(
                "CARGO_TARGET_DIR",
                weir_tests::wasm::workspace_dir().join("target/wasm"),
            )
            // Where `weir plugin new` writes the SDK built into the binary.
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "weir {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let crates = dir.path().to_str().unwrap();
    assert!(
        weir(&["plugin", "new", "shout", "--kind", "map", "--dir", crates])
            .contains("created map plugin shout")
    );
    // The crate depends on the SDK the binary carries, written out standalone: it builds with
    // nothing of this repository around it.
    let sdk_root = dir.path().join("cache/weir/sdk");
    let sdks: Vec<PathBuf> = std::fs::read_dir(&sdk_root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(sdks.len(), 1, "{sdks:?}");
    let sdk_manifest = std::fs::read_to_string(sdks[0].join("Cargo.toml")).unwrap();
    assert!(!sdk_manifest.contains("workspace"), "{sdk_manifest}");
    let manifest = std::fs::read_to_string(dir.path().join("shout/Cargo.toml")).unwrap();
    assert!(
        manifest.contains(&format!("path = {:?}", sdks[0].canonicalize().unwrap())),
        "{manifest}"
    );
    std::fs::copy(
        weir_tests::wasm::workspace_dir().join("Cargo.lock"),
        dir.path().join("shout/Cargo.lock"),
    )
    .unwrap();
    let built = weir(&["plugin", "build", &format!("{crates}/shout")]);
    let wasm_path = built.lines().last().unwrap().trim().to_string();
    assert!(wasm_path.ends_with("release/shout.wasm"), "{built}");

    let node = Node::start(&dir.path().join("data"));
    let c = client(&node);
    let deployed = weir(&[
        "plugin",
        "deploy",
        "shout",
        &wasm_path,
        "--server",
        &node.url(),
    ]);
    assert!(
        deployed.contains("deployed shout version 1 (map"),
        "{deployed}"
    );
    create_topic(&c, "quiet", 1);
    weir(&[
        "pipeline",
        "create",
        "loud",
        "--from",
        "quiet",
        "--through",
        "shout",
        "--to",
        "loud",
        "--from-offset",
        "earliest",
        "--server",
        &node.url(),
    ]);
    produce(
        &c,
        "quiet",
        &[json!({ "value": "hello" }), json!({ "value": "wasm" })],
    );
    wait_caught_up(&c, "loud");
    let got: Vec<Value> = consume_all(&c, "loud", 0)
        .iter()
        .map(|r| r["value"].clone())
        .collect();
    assert_eq!(got, [json!("HELLO"), json!("WASM")]);
    let listed = weir(&["pipeline", "list", "--server", &node.url()]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("loud") && l.contains("running")),
        "{listed}"
    );
    assert!(weir(&["pipeline", "pause", "loud", "--server", &node.url()]).contains("is paused"));
    weir(&["pipeline", "delete", "loud", "--server", &node.url()]);
    weir(&["plugin", "delete", "shout", "--server", &node.url()]);
    assert!(!weir(&["plugin", "list", "--server", &node.url()]).contains("shout"));
}

#[test]
fn every_scaffolded_kind_tests_its_function_natively() {
    let dir = tempfile::tempdir().unwrap();
    let crates = dir.path().to_str().unwrap();
    for kind in [
        "filter",
        "map",
        "filter_map",
        "flat_map",
        "partitioner",
        "aggregate",
        "scalar",
    ] {
        let name = format!("scaffold-{}", kind.replace('_', "-"));
        let made = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["plugin", "new", &name, "--kind", kind, "--dir", crates])
            .env("XDG_CACHE_HOME", dir.path().join("cache"))
            .output()
            .unwrap();
        assert!(made.status.success(), "weir plugin new --kind {kind}");
        let root = dir.path().join(&name);
        std::fs::copy(
            weir_tests::wasm::workspace_dir().join("Cargo.lock"),
            root.join("Cargo.lock"),
        )
        .unwrap();
        let tested = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&root)
            .args(["test", "--quiet"])
            // Share the compiled dependencies of the other plugin builds.
            .env(
                "CARGO_TARGET_DIR",
                weir_tests::wasm::workspace_dir().join("target/scaffolds"),
            )
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&tested.stdout);
        assert!(
            tested.status.success() && stdout.contains("1 passed"),
            "the {kind} scaffold's test: {stdout}\n{}",
            String::from_utf8_lossy(&tested.stderr)
        );
    }
}

/// The scaffold names the wasm target in its `rust-toolchain.toml`, and `weir plugin build` on
/// a toolchain without that target says the command that adds it instead of failing in cargo.
#[test]
fn plugin_build_says_how_to_add_a_missing_wasm_target() {
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let crates = dir.path().to_str().unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "new", "bare", "--kind", "filter", "--dir", crates])
        .env("XDG_CACHE_HOME", dir.path().join("cache"))
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let toolchain = std::fs::read_to_string(dir.path().join("bare/rust-toolchain.toml")).unwrap();
    assert!(
        toolchain.contains(r#"targets = ["wasm32-unknown-unknown"]"#),
        "{toolchain}"
    );

    // A toolchain whose sysroot has no wasm32-unknown-unknown standard library.
    let sysroot = dir.path().join("sysroot");
    std::fs::create_dir_all(sysroot.join("lib/rustlib/x86_64-unknown-linux-gnu")).unwrap();
    let rustc = dir.path().join("rustc");
    std::fs::write(&rustc, format!("#!/bin/sh\necho {}\n", sysroot.display())).unwrap();
    std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
    let built = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["plugin", "build", &format!("{crates}/bare")])
        .env("RUSTC", &rustc)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&built.stderr);
    assert!(
        !built.status.success() && said.contains("rustup target add wasm32-unknown-unknown"),
        "{said}"
    );
}
