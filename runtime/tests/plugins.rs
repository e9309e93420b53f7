#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Every ready-made plugin, built to wasm and run through the sandbox as a pipeline runs it.

use bytes::Bytes;
use weir::__rt::NO_SOURCE;
use weir_runtime::{Init, Instance, Kind, Output, Sandbox, SandboxConfig, partition_for_key};
use weir_storage::{Header, Record};
use weir_tests::wasm::Abi;

fn instance(plugin: &str, params: &[(&str, &str)], state: Option<Vec<u8>>) -> (Kind, Instance) {
    instance_for(plugin, params, state, Abi::Current)
}

fn instance_for(
    plugin: &str,
    params: &[(&str, &str)],
    state: Option<Vec<u8>>,
    abi: Abi,
) -> (Kind, Instance) {
    let sandbox = Sandbox::new(SandboxConfig {
        instances_max: 8,
        ..Default::default()
    })
    .unwrap();
    let wasm = std::fs::read(weir_tests::wasm::plugin_wasm_for(plugin, abi).unwrap()).unwrap();
    let plugin = sandbox.load(&wasm).unwrap();
    let version = match abi {
        Abi::Current => 2,
        Abi::V1 => 1,
    };
    assert_eq!(plugin.abi_version(), version);
    let init = Init {
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        partitions: 4,
        state,
    };
    // The instance keeps what it needs of the sandbox alive.
    let instance = sandbox.instantiate(&plugin, &init).unwrap();
    (plugin.kind(), instance)
}

fn records(values: &[&str]) -> Vec<Record> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            offset: 100 + i as i64,
            timestamp: 1_000 + i as i64,
            key: None,
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            headers: Vec::new(),
        })
        .collect()
}

fn values(output: &Output) -> Vec<String> {
    output
        .records
        .iter()
        .map(|r| String::from_utf8(r.record.value.as_ref().unwrap().to_vec()).unwrap())
        .collect()
}

#[test]
fn json_filter_keeps_server_errors() {
    let (kind, mut instance) =
        instance("json-filter", &[("field", "status"), ("gte", "500")], None);
    assert_eq!(kind, Kind::Filter);
    let batch = records(&[
        r#"{"status":200}"#,
        r#"{"status":503}"#,
        "junk",
        r#"{"status":500}"#,
    ]);
    assert_eq!(instance.process(&batch, 0, false).unwrap().kept, vec![1, 3]);
}

#[test]
fn field_partitioner_places_like_kafka() {
    let (kind, mut instance) = instance("field-partitioner", &[("field", "host")], None);
    assert_eq!(kind, Kind::Partitioner);
    let hosts = ["web-1", "web-2", "db-7", "cache-3"];
    let lines: Vec<String> = hosts
        .iter()
        .map(|h| format!(r#"{{"host":"{h}"}}"#))
        .collect();
    let batch = records(&lines.iter().map(String::as_str).collect::<Vec<_>>());
    let output = instance.process(&batch, 0, false).unwrap();
    let expected: Vec<u32> = hosts
        .iter()
        .map(|h| partition_for_key(h.as_bytes(), 4))
        .collect();
    assert_eq!(output.partitions, expected);
}

#[test]
fn nginx_to_json_parses_and_rejects() {
    let (kind, mut instance) = instance("nginx-to-json", &[], None);
    assert_eq!(kind, Kind::Map);
    let batch = records(&[
        r#"10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET /a HTTP/1.1" 503 12 "-" "curl/8""#,
        "garbage",
    ]);
    let output = instance.process(&batch, 0, false).unwrap();
    assert_eq!(output.records.len(), 1);
    assert_eq!(output.records[0].source, 0);
    assert_eq!(output.records[0].record.timestamp, 971_211_336_000);
    assert!(
        values(&output)[0].contains(r#""status":503"#),
        "{:?}",
        values(&output)
    );
    assert_eq!(output.failures.len(), 1);
    assert_eq!(output.failures[0].0, 1);
    assert!(output.failures[0].1.contains("not an access-log line"));
}

#[test]
fn syslog_to_json_parses_both_formats() {
    let (_, mut instance) = instance("syslog-to-json", &[], None);
    let batch = records(&[
        "<34>1 2003-10-11T22:14:15.003Z host su - ID47 - failed",
        "<13>Feb  5 17:32:18 10.0.0.99 sshd[4123]: Accepted",
        "nope",
    ]);
    let output = instance.process(&batch, 0, false).unwrap();
    let values = values(&output);
    assert_eq!(values.len(), 2);
    assert!(
        values[0].contains(r#""severity":"crit""#) && values[1].contains(r#""app":"sshd""#),
        "{values:?}"
    );
    assert_eq!(output.records[0].record.timestamp, 1_065_910_455_003);
    assert_eq!(
        output.failures.iter().map(|f| f.0).collect::<Vec<_>>(),
        vec![2]
    );
}

#[test]
fn metrics_rollup_emits_closed_windows_and_resumes_from_its_state() {
    let params = [("key", "status"), ("value", "bytes"), ("window_ms", "1000")];
    let (kind, mut first) = instance("metrics-rollup", &params, None);
    assert_eq!(kind, Kind::Aggregate);
    let line = |ts: i64, status: u16, bytes: u32| Record {
        offset: ts,
        timestamp: ts,
        key: None,
        value: Some(Bytes::from(format!(
            r#"{{"status":{status},"bytes":{bytes}}}"#
        ))),
        headers: Vec::new(),
    };
    // Window [0, 1000): two 500s and a 200; nothing closes yet.
    let output = first
        .process(
            &[line(10, 500, 5), line(20, 200, 1), line(30, 500, 7)],
            0,
            true,
        )
        .unwrap();
    assert!(output.records.is_empty());
    let state = output.state.clone().unwrap();
    // A new instance restored from the snapshot continues the window.
    let (_, mut second) = instance("metrics-rollup", &params, Some(state));
    let output = second
        .process(&[line(900, 500, 3), line(1500, 404, 1)], 0, true)
        .unwrap();
    let mut first_closed = values(&output);
    first_closed.sort();
    assert_eq!(first_closed.len(), 2, "{first_closed:?}");
    assert!(
        first_closed[0].contains(r#""status":"200""#) && first_closed[0].contains(r#""count":1"#),
        "{first_closed:?}"
    );
    assert!(
        first_closed[1].contains(r#""status":"500""#)
            && first_closed[1].contains(r#""count":3"#)
            && first_closed[1].contains(r#""sum":15.0"#),
        "{first_closed:?}"
    );
    // Both were closed by the batch's event time, not made from one of its records, and are
    // stamped with the window start.
    assert!(
        output
            .records
            .iter()
            .all(|r| r.source == NO_SOURCE && r.record.timestamp == 0)
    );
    // A record for the closed window is late.
    let output = second.process(&[line(999, 500, 1)], 0, true).unwrap();
    assert!(
        output.failures[0].1.contains("late record"),
        "{:?}",
        output.failures
    );
    assert_eq!(output.late, [0]);
    // Given a watermark, only the watermark closes windows: event time 5000 does not close
    // [1000, 2000) while the watermark is at 1999, and 2000 does.
    let output = second
        .aggregate(
            &[line(1200, 500, 1), line(5000, 500, 1)],
            &[0, 1],
            Some(1999),
        )
        .unwrap();
    assert!(output.records.is_empty(), "{:?}", output.records);
    let output = second.aggregate(&[], &[], Some(2000)).unwrap();
    let closed = values(&output);
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(
        closed
            .iter()
            .all(|v| v.contains(r#""window_start_ms":1000"#) && v.contains(r#""count":1"#)),
        "{closed:?}"
    );
}

/// Records of every shape the layouts must carry: null, empty and present keys, null and empty
/// values, headers with null, empty and binary values, and values each plugin reads or refuses.
fn mixed_records() -> Vec<Record> {
    let values = [
        r#"{"status":503,"bytes":10,"host":"web-1","path":"/users/42/orders"}"#,
        r#"127.0.0.1 - - [10/Oct/2024:13:55:36 +0000] "GET /a/7 HTTP/1.1" 500 12 "-" "curl/8""#,
        "<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8",
        "",
        "not json at all",
        r#"{"status":200,"bytes":3,"host":"db-2","path":"/"}"#,
        "\u{0}\u{ff} binary?",
        "/users/42/orders?page=2",
    ];
    (0..40)
        .map(|i| Record {
            offset: 7 + i as i64,
            timestamp: 1_000 * i as i64,
            key: match i % 3 {
                0 => None,
                1 => Some(Bytes::new()),
                _ => Some(Bytes::from(format!("key-{i}"))),
            },
            value: (i % 11 != 10).then(|| Bytes::from(values[i % values.len()])),
            headers: (0..i % 4)
                .map(|h| Header {
                    key: format!("h{h}"),
                    value: match h {
                        0 => None,
                        1 => Some(Bytes::new()),
                        _ => Some(Bytes::from_static(&[0, 159, 255])),
                    },
                })
                .collect(),
        })
        .collect()
}

#[test]
fn every_plugin_answers_the_same_under_both_abi_versions() {
    let plugins: [(&str, &[(&str, &str)]); 7] = [
        ("regex-filter", &[("pattern", " 5[0-9][0-9] ")]),
        ("json-filter", &[("field", "status"), ("gte", "500")]),
        ("field-partitioner", &[("field", "host")]),
        ("nginx-to-json", &[]),
        ("syslog-to-json", &[]),
        ("url-path", &[]),
        (
            "metrics-rollup",
            &[("key", "status"), ("value", "bytes"), ("window_ms", "5000")],
        ),
    ];
    let records = mixed_records();
    for (plugin, params) in plugins {
        let (kind, mut v1) = instance_for(plugin, params, None, Abi::V1);
        let (_, mut v2) = instance_for(plugin, params, None, Abi::Current);
        // Whole batches, one record, none, and the rest, on the same two instances.
        for batch in [&records[..], &records[3..4], &records[..0], &records[4..]] {
            let (one, two) = if kind == Kind::Aggregate {
                let partitions: Vec<u32> = (0..batch.len() as u32).map(|p| p % 3).collect();
                let watermark = batch.last().map(|r| r.timestamp - 7_000);
                (
                    v1.aggregate(batch, &partitions, watermark).unwrap(),
                    v2.aggregate(batch, &partitions, watermark).unwrap(),
                )
            } else {
                (
                    v1.process(batch, 2, false).unwrap(),
                    v2.process(batch, 2, false).unwrap(),
                )
            };
            assert_eq!(one, two, "{plugin} on {} records", batch.len());
            let answered = one.kept.len() + one.records.len() + one.partitions.len();
            assert!(
                batch.len() < 4 || answered + one.failures.len() > 0,
                "{plugin} answered nothing: {one:?}"
            );
        }
    }
}

/// A flat-map that passes each record on, then a copy whose value it changed, then (for
/// records with a value) one whose value is a part of the input's.
const PASS_ON: &str = r#"
use weir::Record;

#[weir::flat_map]
fn pass_on(r: Record) -> Vec<Record> {
    let mut changed = r.clone();
    changed.value.to_mut().extend_from_slice(b"!");
    let mut out = vec![r.clone(), changed];
    if r.value.len() > 1 {
        let mut part = r.clone();
        part.value = match r.value {
            std::borrow::Cow::Borrowed(v) => std::borrow::Cow::Borrowed(&v[1..]),
            std::borrow::Cow::Owned(v) => std::borrow::Cow::Owned(v[1..].to_vec()),
        };
        out.push(part);
    }
    out
}
"#;

#[test]
fn a_value_passed_on_unchanged_is_shared_with_the_input_not_copied() {
    let sandbox = Sandbox::new(SandboxConfig::default()).unwrap();
    let instance = |abi| {
        let path = weir_tests::wasm::build_plugin_source_for("pass-on", PASS_ON, abi).unwrap();
        let plugin = sandbox.load(&std::fs::read(path).unwrap()).unwrap();
        sandbox.instantiate(&plugin, &Init::default()).unwrap()
    };
    let (mut v1, mut v2) = (instance(Abi::V1), instance(Abi::Current));
    let records = mixed_records();
    let one = v1.process(&records, 0, false).unwrap();
    let two = v2.process(&records, 0, false).unwrap();
    assert_eq!(one, two);
    let mut shared = 0;
    for out in &two.records {
        let input = &records[out.source as usize];
        let value = out.record.value.as_deref().unwrap_or_default();
        let input_value = input.value.as_deref().unwrap_or_default();
        // Only the record passed on whole shares the input's bytes.
        let same_bytes = !value.is_empty() && std::ptr::eq(value, input_value);
        assert_eq!(
            same_bytes,
            value == input_value && !value.is_empty(),
            "{out:?}"
        );
        shared += usize::from(same_bytes);
    }
    let with_value = records
        .iter()
        .filter(|r| r.value.as_ref().is_some_and(|v| !v.is_empty()));
    assert_eq!(shared, with_value.count());
}
