//! ACLs end to end: rules made with `weir acl add`, then the operation × allowed/denied matrix
//! driven by confluent-kafka as a user (`clients/acls.py`), and rules managed by a super user
//! through Kafka's CreateAcls, DescribeAcls and DeleteAcls. The rules survive a restart, and
//! `/metrics` shows how many there are beside their bound.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::{Command, Output};

use common::{Listeners, Node, output_text, python, run_client};

const PASSWORD: &str = "a password for the acl matrix";

fn weir(node: &Node, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .args(["--server", &node.url()])
        .output()
        .unwrap()
}

fn weir_ok(node: &Node, args: &[&str]) -> String {
    let out = weir(node, args);
    assert!(out.status.success(), "weir {args:?}: {}", output_text(&out));
    output_text(&out)
}

fn start(dir: &std::path::Path, listeners: &Listeners) -> Node {
    Node::start_on(
        dir,
        listeners,
        &["--kafka-auth", "sasl", "--super-users", "admin"],
    )
}

#[test]
fn each_operation_is_allowed_by_a_rule_and_denied_without_one() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let listeners = Listeners::fixed();
    let node = start(dir.path(), &listeners);
    for user in ["admin", "alice"] {
        weir_ok(&node, &["user", "add", user, "--password", PASSWORD]);
    }
    let client = weir_broker::cli::Client::new(&node.url(), None);
    for topic in ["orders", "secret", "logs-web", "logs-secret"] {
        common::create_topic(&client, topic, 1);
        let body = serde_json::json!({"records": [{"value": format!("a record of {topic}")}]});
        client
            .call("POST", &format!("/v1/topics/{topic}/records"), Some(&body))
            .unwrap();
    }
    let rules: [&[&str]; 6] = [
        &[
            "--operation",
            "read",
            "--operation",
            "write",
            "--topic",
            "orders",
        ],
        &[
            "--operation",
            "read",
            "--operation",
            "delete",
            "--operation",
            "alter",
            "--operation",
            "create",
            "--topic",
            "alice-",
            "--prefixed",
        ],
        &["--operation", "read", "--topic", "logs-", "--prefixed"],
        &["--operation", "read", "--topic", "logs-secret", "--deny"],
        &["--operation", "read", "--group", "alice-group"],
        &["--operation", "alter_configs", "--topic", "orders"],
    ];
    for rule in rules {
        let mut args = vec!["acl", "add", "--principal", "alice"];
        args.extend_from_slice(rule);
        weir_ok(&node, &args);
    }
    let listed = weir_ok(&node, &["acl", "list", "--principal", "alice"]);
    assert_eq!(listed.lines().count(), 1 + 10, "{listed}");
    assert!(
        listed.contains("logs-secret") && listed.contains("deny"),
        "{listed}"
    );

    run_client(&python, &node, "acls.py", &[PASSWORD], "acls ok");

    // A refusal names the operation and the resource in the node's log.
    node.wait_for("refused: user alice may not DESCRIBE topic \"secret\"");
    let metrics = client.send_accepting("GET", "/metrics", "text/plain", b"", "text/plain");
    let metrics = metrics.unwrap().as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("weir_acls 10\n"), "{metrics}");
    assert!(metrics.contains("weir_acls_max 10000\n"), "{metrics}");

    // The rules survive a restart; a delete names what it removed.
    node.stop();
    let node = start(dir.path(), &listeners);
    let matching = weir_ok(
        &node,
        &["acl", "list", "--topic", "alice-new", "--matching"],
    );
    assert!(
        matching.contains("alice-") && matching.contains("prefixed"),
        "{matching}"
    );
    let deleted = weir_ok(
        &node,
        &[
            "acl",
            "delete",
            "--principal",
            "alice",
            "--group",
            "alice-group",
        ],
    );
    assert!(deleted.contains("alice-group"), "{deleted}");
    let listed = weir_ok(&node, &["acl", "list"]);
    assert_eq!(listed.lines().count(), 1 + 9, "{listed}");
    let everything = weir(&node, &["acl", "delete"]);
    assert!(!everything.status.success(), "a delete with no filter ran");
    assert!(
        output_text(&everything).contains("every ACL"),
        "{}",
        output_text(&everything)
    );
}

#[test]
fn bad_rules_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path(), &Listeners::any());
    // One rule past the bound, in one request: refused whole, nothing stored.
    let rules: Vec<serde_json::Value> = (0..=weir_broker::acl::ACLS_MAX)
        .map(|i| {
            serde_json::json!({"resource_type": "topic", "resource_name": format!("t{i}"),
                               "principal": "User:alice", "operation": "read"})
        })
        .collect();
    let client = weir_broker::cli::Client::new(&node.url(), None);
    let err = client
        .call("POST", "/v1/acls", Some(&serde_json::Value::from(rules)))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("409") && err.contains("at most 10000"),
        "{err}"
    );
    assert_eq!(weir_ok(&node, &["acl", "list"]).lines().count(), 1);
    for (args, reason) in [
        (
            &[
                "acl",
                "add",
                "--principal",
                "alice",
                "--operation",
                "reed",
                "--topic",
                "t",
            ][..],
            "READ",
        ),
        (
            &["acl", "add", "--principal", "alice", "--operation", "read"],
            "--topic",
        ),
        (
            &[
                "acl",
                "add",
                "--principal",
                "alice",
                "--operation",
                "read",
                "--topic",
                "t",
                "--host",
                "example.com",
            ],
            "IP address",
        ),
        (
            &[
                "acl",
                "add",
                "--principal",
                "alice",
                "--operation",
                "read",
                "--topic",
                "*",
                "--prefixed",
            ],
            "prefixed",
        ),
    ] {
        let out = weir(&node, args);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            output_text(&out).contains(reason),
            "{args:?}: {}",
            output_text(&out)
        );
    }
}
