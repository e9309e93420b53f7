//! confluent-kafka and kafka-python against a real `weir serve`. `clients/roundtrip.py`:
//! each client produces records with keys, headers (repeated keys included) and compression,
//! then consumes them back from the beginning, checking every byte. `clients/groups.py`: a
//! confluent-kafka group of two splits a topic, one leaves, the other takes over; committed
//! offsets are where a new member resumes — once per assignor. `clients/admin.py`:
//! kafka-python's admin client creates, describes, alters and deletes topics, adds
//! partitions, looks up offsets by time and lists groups with their offsets.

mod common;

use std::process::Command;

use common::{Node, python};

/// Runs `clients/<script>` against a fresh node and returns its standard output.
fn run(script: &str, args: &[&str]) -> Option<String> {
    let python = python()?;
    let dir = tempfile::tempdir().expect("a temp dir");
    let node = Node::start(dir.path());
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python)
        .arg(path)
        .arg(node.kafka.to_string())
        .args(args)
        .output()
        .expect("running the Python client");
    assert!(
        out.status.success(),
        "{script} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    node.stop();
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn roundtrip(client: &str) {
    if let Some(out) = run("roundtrip.py", &[client, &format!("roundtrip-{client}")]) {
        assert!(out.contains("200 records round-tripped"), "{out}");
    }
}

fn group(assignor: &str) {
    if let Some(out) = run("groups.py", &["grouped", assignor]) {
        assert!(out.contains("groups ok, 400 + 40 records"), "{out}");
    }
}

#[test]
fn kafka_python_admin_creates_describes_alters_and_deletes() {
    if let Some(out) = run("admin.py", &[]) {
        assert!(out.contains("admin ok"), "{out}");
    }
}

#[test]
fn confluent_group_splits_takes_over_and_resumes_with_range() {
    group("range");
}

#[test]
fn confluent_group_splits_takes_over_and_resumes_with_roundrobin() {
    group("roundrobin");
}

#[test]
fn confluent_group_splits_takes_over_and_resumes_with_cooperative_sticky() {
    group("cooperative-sticky");
}

#[test]
fn confluent_kafka_round_trips_records_byte_exact() {
    roundtrip("confluent");
}

#[test]
fn kafka_python_round_trips_records_byte_exact() {
    roundtrip("kafka-python");
}
