//! `weir serve` as a user runs it: recovers an existing data directory, shuts down cleanly on
//! SIGTERM and SIGINT, and refuses a data directory it cannot use with a clear message.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use weir_storage::{BatchBuilder, Compression, NewRecord, Storage, StorageConfig};

/// A `weir serve` process, killed if the test ends before it exits.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data_dir: &std::path::Path) -> (Node, mpsc::Receiver<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["serve", "--data-dir"])
        .arg(data_dir)
        .env("WEIR_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Node(child), rx)
}

fn wait_for(rx: &mpsc::Receiver<String>, needle: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    }
}

fn signal(node: &Node, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &node.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

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
        log.append(&mut b.build().unwrap().to_vec()).unwrap();
        storage.close().unwrap();
    }
    for sig in ["-TERM", "-INT"] {
        let (mut node, rx) = start(dir.path());
        let ready = wait_for(&rx, "storage ready");
        assert!(
            ready.contains("topics=1") && ready.contains("partitions=3"),
            "{ready}"
        );
        signal(&node, sig);
        wait_for(&rx, "shut down cleanly");
        assert!(node.0.wait().unwrap().success());
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
