//! kafkajs against a real `weir serve`: gzip produce with keys and headers, and a consumer
//! group reading with `eachBatch` (`clients/kafkajs.js` checks every record).

mod common;

use std::process::Command;

use common::{Node, client_script, node_modules};

#[test]
fn kafkajs_gzip_produce_and_group_each_batch() {
    let Some(modules) = node_modules() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a temp dir");
    let node = Node::start(dir.path());
    let out = Command::new("node")
        .arg(client_script("kafkajs.js"))
        .arg(node.kafka.to_string())
        .arg("from-js")
        .env("NODE_PATH", modules)
        .output()
        .expect("running node");
    assert!(
        out.status.success(),
        "kafkajs failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("kafkajs ok: 300 records"));
    node.stop();
}
