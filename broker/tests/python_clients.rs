//! confluent-kafka and kafka-python against a real `weir serve`: each produces records with
//! keys, headers (repeated keys included) and compression, then consumes them back from the
//! beginning; `clients/roundtrip.py` checks every byte.

mod common;

use std::process::Command;

use common::{Node, python};

fn roundtrip(client: &str) {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let node = Node::start(dir.path());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/roundtrip.py");
    let out = Command::new(python)
        .arg(script)
        .arg(node.kafka.to_string())
        .arg(client)
        .arg(format!("roundtrip-{client}"))
        .output()
        .expect("running the Python client");
    assert!(
        out.status.success(),
        "{client} round trip failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("200 records round-tripped"));
    node.stop();
}

#[test]
fn confluent_kafka_round_trips_records_byte_exact() {
    roundtrip("confluent");
}

#[test]
fn kafka_python_round_trips_records_byte_exact() {
    roundtrip("kafka-python");
}
