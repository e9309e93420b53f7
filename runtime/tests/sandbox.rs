#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! The sandbox against real modules: a plugin built with the SDK, and hostile modules written in
//! WebAssembly text that loop, eat memory, trap, answer garbage or speak another ABI.

use bytes::Bytes;
use weir_runtime::{CallError, Init, Kind, Sandbox, SandboxConfig};
use weir_storage::{Header, Record};

fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        call_timeout_ms: 50,
        memory_bytes_max: 4 << 20,
        instances_max: 16,
        ..Default::default()
    })
    .unwrap()
}

pub fn record(offset: i64, value: &str) -> Record {
    Record {
        offset,
        timestamp: 1_700_000_000_000 + offset,
        key: Some(Bytes::from(format!("k{offset}"))),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![Header {
            key: "h".into(),
            value: Some(Bytes::from_static(b"v")),
        }],
    }
}

fn params(pairs: &[(&str, &str)]) -> Init {
    Init {
        params: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        partitions: 3,
        state: None,
    }
}

fn module(abi_version: u32, process: &str) -> Vec<u8> {
    weir_tests::wasm::abi_module(abi_version, process).unwrap()
}

#[test]
fn regex_filter_keeps_matching_records() {
    let wasm = std::fs::read(weir_tests::wasm::plugin_wasm("regex-filter").unwrap()).unwrap();
    let sandbox = sandbox();
    let plugin = sandbox.load(&wasm).unwrap();
    assert_eq!(plugin.kind(), Kind::Filter);
    assert_eq!(plugin.abi_version(), 2);
    let mut instance = sandbox
        .instantiate(&plugin, &params(&[("pattern", r" 5\d\d ")]))
        .unwrap();
    let batch = [
        record(10, "GET / 200 12"),
        record(11, "GET /x 503 0"),
        record(12, "POST /y 500 3"),
    ];
    let output = instance.process(&batch, 0, false).unwrap();
    assert_eq!(output.kept, vec![1, 2]);
    assert!(output.failures.is_empty() && output.records.is_empty());
    // The same instance serves the next batch.
    let output = instance.process(&batch[..1], 0, false).unwrap();
    assert!(output.kept.is_empty());
}

#[test]
fn plugin_errors_name_the_record_they_failed_on() {
    let wasm = std::fs::read(weir_tests::wasm::plugin_wasm("regex-filter").unwrap()).unwrap();
    let sandbox = sandbox();
    let plugin = sandbox.load(&wasm).unwrap();
    // No pattern: every record fails with the plugin's message.
    let mut instance = sandbox.instantiate(&plugin, &params(&[])).unwrap();
    let output = instance
        .process(&[record(0, "a"), record(1, "b")], 0, false)
        .unwrap();
    assert_eq!(output.failures.len(), 2);
    assert_eq!(output.failures[1].0, 1);
    assert!(
        output.failures[0].1.contains("\"pattern\" is required"),
        "{:?}",
        output.failures
    );
}

/// What a hostile call must fail with.
type Expect = fn(&CallError) -> bool;

#[test]
fn hostile_calls_fail_alone() {
    let sandbox = sandbox();
    let expectations: [Expect; 4] = [
        |e| matches!(e, CallError::Deadline(50)),
        |e| matches!(e, CallError::Memory(_)),
        |e| matches!(e, CallError::Trap(m) if m.contains("unreachable")),
        |e| matches!(e, CallError::BadOutput(m) if m.contains("more than the limit")),
    ];
    let garbage: (&str, &str, Expect) = (
        "garbage output",
        "i64.const 3",
        |e| matches!(e, CallError::BadOutput(m) if m.contains("does not parse")),
    );
    let hostile = weir_tests::wasm::HOSTILE_BODIES
        .iter()
        .zip(expectations)
        .map(|((name, body), expect)| (*name, *body, expect));
    let cases: Vec<(&str, &str, Expect)> = hostile.chain(std::iter::once(garbage)).collect();
    let good = std::fs::read(weir_tests::wasm::plugin_wasm("regex-filter").unwrap()).unwrap();
    let good = sandbox.load(&good).unwrap();
    let mut good = sandbox
        .instantiate(&good, &params(&[("pattern", "x")]))
        .unwrap();
    let versions = weir_runtime::ABI_VERSIONS;
    let cases = cases
        .iter()
        .flat_map(|case| versions.iter().map(move |version| (case, *version)));
    for ((name, body, expected), version) in cases {
        let plugin = sandbox.load(&module(version, body)).unwrap();
        let mut instance = sandbox.instantiate(&plugin, &params(&[])).unwrap();
        let started = std::time::Instant::now();
        let error = instance.process(&[record(0, "x")], 0, false).unwrap_err();
        assert!(
            expected(&error),
            "{name}, ABI {version}: unexpected {error:?}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{name} took {:?}",
            started.elapsed()
        );
        // A fresh instance of the same module starts, and other instances are untouched.
        sandbox.instantiate(&plugin, &params(&[])).unwrap();
        assert_eq!(
            good.process(&[record(0, "x")], 0, false).unwrap().kept,
            vec![0],
            "after {name}"
        );
    }
}

#[test]
fn modules_that_are_not_plugins_are_refused_with_the_reason() {
    let sandbox = sandbox();
    let check = |wasm: &[u8], expected: &str| {
        let error = sandbox
            .load(wasm)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            error.contains(expected),
            "expected {expected:?} in {error:?}"
        );
    };
    check(b"\x7fELF not wasm at all", "not a WebAssembly module");
    check(b"\0asm\x01\0\0\0\x05garbage", "does not compile");
    check(&module(99, "i64.const 0"), "ABI version 99");
    check(
        &wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap(),
        "does not export `weir_abi_version`",
    );
    check(
        &wat::parse_str(r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32))))"#)
            .unwrap(),
        "imports wasi_snapshot_preview1.fd_write",
    );
    let small = Sandbox::new(SandboxConfig {
        module_bytes_max: 100,
        ..Default::default()
    })
    .unwrap();
    let error = small
        .load(&module(1, "i64.const 0"))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("more than the limit of 100"), "{error}");
}

#[test]
fn only_accepted_modules_are_cached_compiled() {
    let cache = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    let cached = || std::fs::read_dir(cache.path()).unwrap().count();
    // Refused after compiling: another ABI, a missing export, an import.
    for refused in [
        module(99, "i64.const 0"),
        wat::parse_str(r#"(module (memory (export "memory") 1))"#).unwrap(),
    ] {
        assert!(sandbox.load(&refused).is_err());
        assert_eq!(cached(), 0, "a refused module left a compiled file");
    }
    let wasm = std::fs::read(weir_tests::wasm::plugin_wasm("regex-filter").unwrap()).unwrap();
    sandbox.load(&wasm).unwrap();
    assert_eq!(cached(), 1);
    // Loaded again, from the cache.
    sandbox.load(&wasm).unwrap();
    assert_eq!(cached(), 1);
}
