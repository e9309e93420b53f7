//! The broker restarted under clients: committed offsets survive a clean restart, and
//! `kill -9` during an acks=all produce loop loses no acknowledged record.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Node, client_script, python};
use weir_storage::{Storage, StorageConfig};

#[test]
fn committed_offsets_survive_a_restart() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for phase in ["before", "after"] {
        let node = Node::start(dir.path());
        let out = Command::new(&python)
            .arg(client_script("commit_resume.py"))
            .arg(node.kafka.to_string())
            .args(["resumed", phase])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{phase}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        node.stop();
    }
}

const KILL_CYCLES: usize = 5;

#[test]
fn kill_9_during_acks_all_produce_loses_no_acknowledged_record() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(String, u64)> = Vec::new();
    for cycle in 0..KILL_CYCLES {
        let node = Node::start(dir.path());
        let mut producer = Command::new(&python)
            .arg(client_script("produce_loop.py"))
            .arg(node.kafka.to_string())
            .args(["survivors", &format!("c{cycle}"), "100000"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = producer.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Let some acks through, then kill the broker at a moment that varies per cycle.
        let run_for = Duration::from_millis(300 + 170 * cycle as u64);
        let start = Instant::now();
        let mut this_cycle = 0;
        while start.elapsed() < run_for || this_cycle == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no acks in cycle {cycle}"
            );
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(5)) {
                acked.push(parse_ack(&line));
                this_cycle += 1;
            }
        }
        node.kill9();
        // Acks the producer printed before the kill still count.
        std::thread::sleep(Duration::from_millis(100));
        let _ = producer.kill();
        let _ = producer.wait();
        acked.extend(rx.try_iter().map(|l| parse_ack(&l)));

        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let log = storage.log("survivors", 0).unwrap();
        for (value, offset) in &acked {
            let records = log.read_records(*offset, 1).unwrap();
            let found = records.first().and_then(|r| r.value.clone());
            assert_eq!(
                found.as_deref(),
                Some(value.as_bytes()),
                "cycle {cycle}: acked {value} at offset {offset} is gone"
            );
        }
        storage.close().unwrap();
    }
    eprintln!(
        "{} acknowledged records checked over {KILL_CYCLES} kills",
        acked.len()
    );
    assert!(acked.len() > KILL_CYCLES * 10, "only {} acks", acked.len());
}

fn parse_ack(line: &str) -> (String, u64) {
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("acked"), "{line}");
    let value = parts.next().unwrap().to_string();
    let offset = parts.next().unwrap().parse().unwrap();
    (value, offset)
}
