//! SASL on the Kafka listener with real clients: users made with `weir user add`, kcat with
//! PLAIN and SCRAM-SHA-256, confluent-kafka with SCRAM-SHA-512 (`clients/secured.py`) and its
//! admin client managing credentials as a super user (`clients/scram_admin.py`). The right
//! password produces and consumes; a wrong one and a client without SASL are refused with a
//! clear error; the users survive a restart; passwords never show in the API.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::{Command, Output};

use common::{Node, have, kcat_as, output_text as text, python, run_client, run_with_input};

const PASSWORD: &str = "correct horse battery staple";

fn start(dir: &std::path::Path) -> Node {
    let node = Node::start_with(dir, &["--kafka-auth", "sasl"]);
    allow_everything(&node);
    node
}

/// ACLs that let every user do anything with topics and groups: these tests are about who
/// gets in, `acls.rs` about what they may do once in.
fn allow_everything(node: &Node) {
    for resource in ["--topic", "--group"] {
        let args = [
            "acl",
            "add",
            "--principal",
            "User:*",
            "--operation",
            "all",
            resource,
            "*",
        ];
        weir_ok(node, &args, "");
    }
}

fn weir(node: &Node, args: &[&str], input: &str) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
    command.args(args).args(["--server", &node.url()]);
    run_with_input(command, input)
}

/// Runs `weir` against `node`, failing the test when it fails; answers what it printed.
fn weir_ok(node: &Node, args: &[&str], input: &str) -> String {
    let out = weir(node, args, input);
    assert!(out.status.success(), "weir {args:?}: {}", text(&out));
    text(&out)
}

#[test]
fn kcat_produces_and_consumes_with_plain_and_scram_and_is_refused_without() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    weir_ok(&node, &["user", "add", "alice"], &format!("{PASSWORD}\n"));

    let lines: String = (0..20).map(|i| format!("line {i}\n")).collect();
    let produced = kcat_as(
        &node,
        "SCRAM-SHA-256",
        "alice",
        PASSWORD,
        &["-P", "-t", "secured"],
        &lines,
    );
    assert!(produced.status.success(), "{}", text(&produced));
    let consumed = kcat_as(
        &node,
        "PLAIN",
        "alice",
        PASSWORD,
        &["-C", "-t", "secured", "-e", "-q"],
        "",
    );
    assert!(consumed.status.success(), "{}", text(&consumed));
    assert_eq!(String::from_utf8_lossy(&consumed.stdout), lines);

    let wrong = kcat_as(
        &node,
        "SCRAM-SHA-256",
        "alice",
        "guess",
        &["-L", "-m", "5"],
        "",
    );
    assert!(!wrong.status.success(), "a wrong password listed topics");
    assert!(
        text(&wrong).contains("uthentication failed"),
        "{}",
        text(&wrong)
    );
    let unknown = kcat_as(&node, "PLAIN", "mallory", PASSWORD, &["-L", "-m", "5"], "");
    assert!(!unknown.status.success(), "an unknown user listed topics");
    assert!(
        text(&unknown).contains("uthentication failed"),
        "{}",
        text(&unknown)
    );

    let mut plain = Command::new("kcat");
    plain.args(["-b", &node.kafka.to_string(), "-L", "-m", "3"]);
    let without = run_with_input(plain, "");
    assert!(
        !without.status.success(),
        "a client without SASL listed topics:\n{}",
        text(&without)
    );

    let mut response = ureq::get(&format!("{}/metrics", node.url()))
        .call()
        .unwrap();
    let metrics = response.body_mut().read_to_string().unwrap();
    let failures: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("weir_sasl_authentication_failures_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(failures >= 2, "{metrics}");
    assert!(
        metrics.contains("\nweir_users 1\n") && metrics.contains("\nweir_users_max 10000\n"),
        "{metrics}"
    );
    node.stop();
}

#[test]
fn users_survive_a_restart_and_their_passwords_never_show() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    weir_ok(&node, &["user", "add", "bob", "--password", PASSWORD], "");
    node.stop();

    let node = start(dir.path());
    let listing = weir_ok(&node, &["user", "list"], "");
    assert!(
        listing.contains("bob") && listing.contains("SCRAM-SHA-256,SCRAM-SHA-512"),
        "{listing}"
    );
    assert!(!listing.contains(PASSWORD), "{listing}");
    let listed = kcat_as(
        &node,
        "SCRAM-SHA-512",
        "bob",
        PASSWORD,
        &["-L", "-m", "5"],
        "",
    );
    assert!(listed.status.success(), "{}", text(&listed));

    weir_ok(&node, &["user", "delete", "bob"], "");
    let refused = kcat_as(
        &node,
        "SCRAM-SHA-512",
        "bob",
        PASSWORD,
        &["-L", "-m", "5"],
        "",
    );
    assert!(!refused.status.success(), "a deleted user listed topics");
    let again = weir(&node, &["user", "delete", "bob"], "");
    assert!(
        !again.status.success() && text(&again).contains("does not exist"),
        "{}",
        text(&again)
    );
    node.stop();
}

#[test]
fn confluent_kafka_uses_scram_sha_512_and_a_wrong_password_is_refused() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    weir_ok(&node, &["user", "add", "carol", "--password", PASSWORD], "");
    let sasl = [
        "security.protocol=SASL_PLAINTEXT",
        "sasl.mechanisms=SCRAM-SHA-512",
        "sasl.username=carol",
    ];
    let right = format!("sasl.password={PASSWORD}");
    let mut args = vec!["sasl-topic", "roundtrip", right.as_str()];
    args.extend(sasl);
    run_client(&python, &node, "secured.py", &args, "roundtrip ok");
    let mut args = vec!["sasl-topic", "refused", "sasl.password=not the password"];
    args.extend(sasl);
    let printed = run_client(&python, &node, "secured.py", &args, "refused:");
    assert!(printed.contains("uthentication failed"), "{printed}");
    node.stop();
}

#[test]
fn confluent_kafka_admin_manages_credentials_as_a_super_user_only() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let node = Node::start_with(
        dir.path(),
        &["--kafka-auth", "sasl", "--super-users", "root"],
    );
    allow_everything(&node);
    weir_ok(&node, &["user", "add", "root", "--password", PASSWORD], "");
    weir_ok(&node, &["user", "add", "erin", "--password", "erin's"], "");
    let args = ["root", PASSWORD, "erin", "erin's"];
    run_client(&python, &node, "scram_admin.py", &args, "scram admin ok");
    node.stop();
}

/// A client that connects and never authenticates is closed (it may still ask ApiVersions),
/// so such clients cannot keep the node's connection slots; the close is counted.
#[test]
fn a_client_that_never_authenticates_is_closed() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let node = start(dir.path());
    let connected = Instant::now();
    let mut socket = std::net::TcpStream::connect(node.kafka).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // ApiVersions v0: api key 18, version 0, correlation id 7, no client id.
    let mut request = vec![0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 7, 0xff, 0xff];
    socket.write_all(&request).unwrap();
    let mut size = [0u8; 4];
    socket.read_exact(&mut size).unwrap();
    request.resize(u32::from_be_bytes(size) as usize, 0);
    socket.read_exact(&mut request).unwrap();
    assert_eq!(request[..4], [0, 0, 0, 7], "the answer to ApiVersions");

    let mut rest = Vec::new();
    let read = socket.read_to_end(&mut rest);
    let waited = connected.elapsed();
    assert!(
        read.is_ok() && rest.is_empty(),
        "the node closed the connection: {read:?} {rest:?}"
    );
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(30),
        "closed after {waited:?}"
    );
    let mut response = ureq::get(&format!("{}/metrics", node.url()))
        .call()
        .unwrap();
    let metrics = response.body_mut().read_to_string().unwrap();
    assert!(
        metrics.contains("\nweir_sasl_authentication_timeouts_total 1\n")
            && metrics.contains("\nweir_password_checks_max 4\n"),
        "{metrics}"
    );
    node.stop();
}
