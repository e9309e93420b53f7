//! `weir serve` as a user runs it: recovers an existing data directory, shuts down cleanly on
//! SIGTERM and SIGINT, and refuses a data directory it cannot use with a clear message.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use bytes::Bytes;
use common::Node;
use weir_storage::{BatchBuilder, Compression, NewRecord, Storage, StorageConfig};

#[test]
fn serve_recovers_existing_topics_and_stops_cleanly_on_signals() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        storage.create_topic("logs", 3, BTreeMap::new()).unwrap();
        let log = storage.log("logs", 1).unwrap();
        let mut b = BatchBuilder::new(Compression::None);
        b.push(NewRecord {
            timestamp: 1,
            key: None,
            value: Some(Bytes::from_static(b"hello")),
            headers: Vec::new(),
        });
        log.append(&b.build().unwrap()).unwrap();
        storage.close().unwrap();
    }
    for sig in ["-TERM", "-INT"] {
        let mut node = Node::start(dir.path());
        let ready = node
            .startup
            .iter()
            .find(|l| l.contains("storage ready"))
            .unwrap();
        assert!(
            ready.contains("topics=1") && ready.contains("partitions=3"),
            "{ready}"
        );
        node.signal(sig);
        node.wait_for("shut down cleanly");
        assert!(node.child.wait().unwrap().success());
    }
    let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
    let records = storage
        .log("logs", 1)
        .unwrap()
        .read_records(0, 1 << 20)
        .unwrap();
    assert_eq!(records[0].value.as_deref(), Some(b"hello".as_slice()));
}

#[test]
fn serve_refuses_an_unusable_data_dir_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--data-dir"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("opening data directory") && stderr.contains("not-a-dir"),
        "{stderr}"
    );
}

#[test]
fn serve_reads_a_config_file_and_flags_win_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weir.toml");
    // The ports here are overridden by the test's flags; the token is not.
    std::fs::write(
        &config,
        "kafka = \"127.0.0.1:1\"\nhttp = \"127.0.0.1:1\"\nadmin_token = \"from-file\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let node = Node::start_with(&data, &["--config", config.to_str().unwrap()]);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let url = format!("{}/v1/topics", node.url());
    assert_eq!(agent.get(&url).call().unwrap().status().as_u16(), 401);
    let authorized = agent
        .get(&url)
        .header("Authorization", "Bearer from-file")
        .call()
        .unwrap();
    assert_eq!(authorized.status().as_u16(), 200);
    node.stop();

    std::fs::write(&config, "kafka_port = 9\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("kafka_port") && stderr.contains("weir.toml"),
        "{stderr}"
    );
}
