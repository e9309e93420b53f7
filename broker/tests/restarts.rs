//! The broker restarted under clients: committed offsets survive a clean restart. (`kill -9`
//! under producers, a group and a pipeline is `crash_consistency.rs`.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;

use common::{Node, client_script, python};

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
