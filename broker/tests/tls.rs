//! TLS on every listener, with clients that verify a CA this test makes: confluent-kafka with
//! `security.protocol=SSL` and `SASL_SSL` (`clients/secured.py`), kafka-python and kafkajs with
//! the README's settings, kcat, curl `--cacert`, psql
//! `sslmode=verify-full` and the `weir` CLI with `--ca-cert`. A client that speaks plain text to
//! a TLS port, or does not trust the node's CA, fails at once with an error that says so; with
//! `--tls-client-ca`, a client without a certificate from that CA is turned away.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pki::Pki;
use common::{
    Node, client_script, eventually, have, node_modules, output_text, python, run_client,
    run_with_input,
};

const PASSWORD: &str = "a long and secret password";

fn start(dir: &Path, flags: &[String]) -> Node {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Node::start_with(&dir.join("data"), &flags)
}

/// A node with TLS from a fresh CA under `dir`, and `extra` flags.
fn tls_node(dir: &Path, extra: &[&str]) -> (Pki, Node) {
    let pki = Pki::new(dir, "weir-test");
    let mut flags = pki.serve_flags();
    flags.extend(extra.iter().map(|f| f.to_string()));
    let node = start(dir, &flags);
    (pki, node)
}

/// `key=value` settings for `clients/secured.py`.
fn settings(pairs: &[(&str, &Path)]) -> Vec<String> {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .collect()
}

fn args<'a>(topic: &'a str, mode: &'a str, settings: &'a [String]) -> Vec<&'a str> {
    [topic, mode]
        .into_iter()
        .chain(settings.iter().map(String::as_str))
        .collect()
}

/// The value of a counter line of `/metrics` fetched with curl over TLS.
fn metric(node: &Node, pki: &Pki, line_start: &str) -> u64 {
    let out = curl(node, pki, &["/metrics"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in /metrics: {text}"))
}

/// curl to the node's HTTP listener as `https://localhost`, trusting `pki`'s CA and presenting
/// its client certificate (which a node without `--tls-client-ca` does not ask for).
fn curl(node: &Node, pki: &Pki, args: &[&str]) -> std::process::Output {
    let (path, rest) = args.split_first().unwrap();
    Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca)
        .arg("--cert")
        .arg(&pki.client_cert)
        .arg("--key")
        .arg(&pki.client_key)
        .args(rest)
        .arg(format!("https://localhost:{}{path}", node.http.port()))
        .output()
        .unwrap()
}

/// One HTTPS API call with curl: `auth` are curl's flags (`-u user:password`, a bearer header);
/// answers the status and the body.
fn api(
    node: &Node,
    pki: &Pki,
    auth: &[&str],
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (String, String) {
    let mut args = vec![path, "-X", method, "-w", "\n%{http_code}"];
    args.extend_from_slice(auth);
    if let Some(body) = body {
        args.extend(["-H", "content-type: application/json", "-d", body]);
    }
    let out = curl(node, pki, &args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.to_string(), body.to_string())
}

/// The body of an answer that must have status `want`.
fn expect((status, body): (String, String), want: &str) -> String {
    assert_eq!(status, want, "{body}");
    body
}

#[test]
fn kafka_clients_speak_ssl_and_a_plain_text_or_untrusting_client_fails_at_once() {
    let (Some(python), true) = (python(), have("kcat", "apt-get install kcat")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "weir-test");
    let stranger = Pki::new(dir.path(), "stranger");
    let node = start(dir.path(), &pki.serve_flags());

    let ssl = settings(&[("ssl.ca.location", &pki.ca)]);
    let mut ssl_args = vec!["security.protocol=SSL".to_string()];
    ssl_args.extend(ssl);
    run_client(
        &python,
        &node,
        "secured.py",
        &args("tls-topic", "roundtrip", &ssl_args),
        "roundtrip ok",
    );

    // kcat reads back what confluent-kafka wrote, over TLS.
    let mut kcat = Command::new("kcat");
    kcat.arg("-b")
        .arg(format!("localhost:{}", node.kafka.port()))
        .args(["-X", "security.protocol=ssl", "-X"])
        .arg(format!("ssl.ca.location={}", pki.ca.display()))
        .args(["-C", "-t", "tls-topic", "-e", "-q", "-f", "%s\n"]);
    let out = run_with_input(kcat, "");
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 50);

    // Record sets large enough to go out from the segment files on a plain connection are
    // encrypted from their mapping here: byte exact, and none of them sent with sendfile.
    let kcat_tls = |args: &[&str], input: &str| {
        let mut kcat = Command::new("kcat");
        kcat.arg("-b")
            .arg(format!("localhost:{}", node.kafka.port()))
            .args(["-X", "security.protocol=ssl", "-X"])
            .arg(format!("ssl.ca.location={}", pki.ca.display()))
            .args(args);
        let out = run_with_input(kcat, input);
        assert!(out.status.success(), "{}", output_text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let lines: String = (0..5_000)
        .map(|i| format!("{i:05} {}\n", "0123456789".repeat(1 + i % 50)))
        .collect();
    kcat_tls(&["-P", "-t", "tls-big"], &lines);
    let read = kcat_tls(&["-C", "-t", "tls-big", "-e", "-f", "%s\n"], "");
    assert!(
        read == lines,
        "what kcat read over TLS differs from what it wrote"
    );
    assert_eq!(metric(&node, &pki, "weir_fetch_sendfile_bytes_total "), 0);

    // A client that does not trust the node's CA: a verification error, no record delivered.
    let untrusting = settings(&[("ssl.ca.location", &stranger.ca)]);
    let mut untrusting_args = vec!["security.protocol=SSL".to_string()];
    untrusting_args.extend(untrusting);
    let printed = run_client(
        &python,
        &node,
        "secured.py",
        &args("tls-topic", "refused", &untrusting_args),
        "refused:",
    );
    assert!(printed.contains("certificate verify failed"), "{printed}");

    // Plain text to the TLS port fails within seconds, and the node says why in its log.
    let started = Instant::now();
    let mut plain = Command::new("kcat");
    plain
        .arg("-b")
        .arg(node.kafka.to_string())
        .args(["-L", "-m", "5"]);
    let out = run_with_input(plain, "");
    assert!(!out.status.success(), "plain text listed topics over TLS");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "kcat took {:?} to fail",
        started.elapsed()
    );
    node.wait_for("spoke plain text");
}

#[test]
fn sasl_ssl_and_client_certificates_are_enforced() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "weir-test");
    let stranger = Pki::new(dir.path(), "stranger");
    let mut flags = pki.serve_flags();
    flags.extend(["--tls-client-ca".into(), pki.ca.display().to_string()]);
    flags.extend(["--kafka-auth".into(), "sasl".into()]);
    let node = start(dir.path(), &flags);
    // The CLI with and without its certificate.
    let weir = |extra: &[&Path]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_weir"));
        command
            .args(["topic", "list", "--server"])
            .arg(format!("https://localhost:{}", node.http.port()))
            .arg("--ca-cert")
            .arg(&pki.ca);
        if let [cert, key] = extra {
            command
                .arg("--client-cert")
                .arg(cert)
                .arg("--client-key")
                .arg(key);
        }
        command.output().unwrap()
    };
    let listed = weir(&[&pki.client_cert, &pki.client_key]);
    assert!(listed.status.success(), "{}", output_text(&listed));
    let anonymous = weir(&[]);
    assert!(!anonymous.status.success(), "{}", output_text(&anonymous));
    let plain_curl = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&pki.ca)
        .arg(format!("https://localhost:{}/healthz", node.http.port()))
        .output()
        .unwrap();
    assert!(
        !plain_curl.status.success(),
        "no client certificate, yet: {}",
        output_text(&plain_curl)
    );
    // curl presents the client certificate.
    let user = curl(
        &node,
        &pki,
        &[
            "/v1/users",
            "-H",
            "content-type: application/json",
            "-d",
            &format!("{{\"name\":\"alice\",\"password\":\"{PASSWORD}\"}}"),
            "-w",
            " %{http_code}",
        ],
    );
    assert!(
        String::from_utf8_lossy(&user.stdout).ends_with(" 201"),
        "{}",
        output_text(&user)
    );
    let rules = r#"[{"resource_type":"topic","resource_name":"sasl-ssl","principal":"User:alice","operation":"all"},
                    {"resource_type":"group","resource_name":"sasl-ssl-group","principal":"User:alice","operation":"read"}]"#;
    let granted = curl(
        &node,
        &pki,
        &[
            "/v1/acls",
            "-H",
            "content-type: application/json",
            "-d",
            rules,
            "-w",
            " %{http_code}",
        ],
    );
    assert!(
        String::from_utf8_lossy(&granted.stdout).ends_with(" 201"),
        "{}",
        output_text(&granted)
    );

    let client_cert = settings(&[
        ("ssl.ca.location", &pki.ca),
        ("ssl.certificate.location", &pki.client_cert),
        ("ssl.key.location", &pki.client_key),
    ]);
    let sasl = [
        "security.protocol=SASL_SSL",
        "sasl.mechanisms=SCRAM-SHA-512",
        "sasl.username=alice",
    ]
    .map(String::from);
    let mut roundtrip: Vec<String> = sasl.to_vec();
    roundtrip.push(format!("sasl.password={PASSWORD}"));
    roundtrip.extend(client_cert.iter().cloned());
    run_client(
        &python,
        &node,
        "secured.py",
        &args("sasl-ssl", "roundtrip", &roundtrip),
        "roundtrip ok",
    );

    // Without a client certificate, or with one from another CA: the handshake fails.
    for (what, certificate) in [
        ("no client certificate", vec![]),
        (
            "a stranger's certificate",
            settings(&[
                ("ssl.certificate.location", &stranger.client_cert),
                ("ssl.key.location", &stranger.client_key),
            ]),
        ),
    ] {
        let mut refused = sasl.to_vec();
        refused.push(format!("sasl.password={PASSWORD}"));
        refused.extend(settings(&[("ssl.ca.location", &pki.ca)]));
        refused.extend(certificate);
        let printed = run_client(
            &python,
            &node,
            "secured.py",
            &args("sasl-ssl", "refused", &refused),
            "refused:",
        );
        assert!(printed.contains("SSL"), "{what}: {printed}");
    }
    // The right certificate with the wrong password: TLS passes, SASL refuses.
    let mut wrong: Vec<String> = sasl.to_vec();
    wrong.push("sasl.password=guess".into());
    wrong.extend(client_cert.iter().cloned());
    let printed = run_client(
        &python,
        &node,
        "secured.py",
        &args("sasl-ssl", "refused", &wrong),
        "refused:",
    );
    assert!(printed.contains("uthentication failed"), "{printed}");
    let failures = metric(
        &node,
        &pki,
        "weir_tls_handshake_failures_total{listener=\"kafka\"}",
    );
    assert!(failures >= 2, "{failures} Kafka handshake failures counted");
}

#[test]
fn http_and_the_cli_speak_https_and_plain_http_is_told_so() {
    if !have("curl", "apt-get install curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "weir-test");
    let stranger = Pki::new(dir.path(), "stranger");
    let node = start(dir.path(), &pki.serve_flags());

    let health = curl(&node, &pki, &["/healthz", "-w", " %{http_code}"]);
    assert!(health.status.success(), "{}", output_text(&health));
    assert!(
        String::from_utf8_lossy(&health.stdout).ends_with(" 200"),
        "{}",
        output_text(&health)
    );
    let untrusting = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(&stranger.ca)
        .arg(format!("https://localhost:{}/healthz", node.http.port()))
        .output()
        .unwrap();
    assert_eq!(
        untrusting.status.code(),
        Some(60),
        "{}",
        output_text(&untrusting)
    );

    let plain = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", " %{http_code}"])
        .arg(format!("http://{}/healthz", node.http))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&plain.stdout);
    assert!(
        said.contains("speaks HTTPS") && said.ends_with(" 400"),
        "{}",
        output_text(&plain)
    );
    let failures = metric(
        &node,
        &pki,
        "weir_tls_handshake_failures_total{listener=\"http\"}",
    );
    assert!(failures >= 2, "{failures} HTTP handshake failures counted");

    let weir = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .arg("--server")
            .arg(format!("https://localhost:{}", node.http.port()))
            .output()
            .unwrap()
    };
    let ca = pki.ca.to_str().unwrap();
    let created = weir(&["topic", "create", "over-https", "--ca-cert", ca]);
    assert!(created.status.success(), "{}", output_text(&created));
    let listed = weir(&["topic", "list", "--ca-cert", ca]);
    assert!(
        output_text(&listed).contains("over-https"),
        "{}",
        output_text(&listed)
    );
    // Without the CA the CLI refuses the node's certificate rather than talk to it.
    let refused = weir(&["topic", "list"]);
    assert!(!refused.status.success(), "{}", output_text(&refused));
}

#[test]
fn psql_verifies_the_node_and_plain_connections_are_refused() {
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (pki, node) = tls_node(dir.path(), &[]);
    let psql = |sslmode: &str| {
        let conninfo = format!(
            "host=localhost port={} user=weir dbname=weir sslmode={sslmode} sslrootcert={}",
            node.pg.port(),
            pki.ca.display()
        );
        Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "SELECT 40 + 2", &conninfo])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap()
    };
    let verified = psql("verify-full");
    assert!(verified.status.success(), "{}", output_text(&verified));
    assert_eq!(String::from_utf8_lossy(&verified.stdout).trim(), "42");
    let plain = psql("disable");
    assert!(!plain.status.success(), "a plain connection ran a query");
    assert!(
        output_text(&plain).contains("TLS connections only"),
        "{}",
        output_text(&plain)
    );
}

#[test]
fn unreadable_tls_files_stop_the_start_with_their_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "weir-test");
    let missing = dir.path().join("missing.pem");
    let cert = pki.cert.to_str().unwrap();
    let key = pki.key.to_str().unwrap();
    for (flags, named) in [
        (
            vec!["--tls-cert", missing.to_str().unwrap(), "--tls-key", key],
            "missing.pem",
        ),
        // A certificate given as the key, and a key given as the certificate.
        (vec!["--tls-cert", cert, "--tls-key", cert], "node.pem"),
        (vec!["--tls-cert", key, "--tls-key", key], "node.key"),
        (vec!["--tls-cert", cert], "--tls-key"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--kafka", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--pg", "off", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(&flags)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flags:?} started");
        assert!(
            output_text(&out).contains(named),
            "{flags:?}: {}",
            output_text(&out)
        );
    }
}

#[test]
fn users_sign_in_over_https_and_postgres_and_are_held_to_their_acls() {
    if !have("curl", "apt-get install curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (pki, node) = tls_node(
        dir.path(),
        &["--kafka-auth", "sasl", "--admin-token", "s3cret"],
    );
    let as_admin = ["-H", "Authorization: Bearer s3cret"];
    let call = |auth: &[&str], method: &str, path: &str, body: Option<&str>| {
        api(&node, &pki, auth, method, path, body)
    };
    let ok = expect;
    ok(
        call(
            &as_admin,
            "POST",
            "/v1/users",
            Some(r#"{"name":"bob","password":"bobs password"}"#),
        ),
        "201",
    );
    for topic in ["visible", "hidden"] {
        let create = format!(r#"{{"name":"{topic}","partitions":1}}"#);
        ok(call(&as_admin, "POST", "/v1/topics", Some(&create)), "201");
        let records = r#"{"records":[{"value":"one"},{"value":"two"}]}"#;
        ok(
            call(
                &as_admin,
                "POST",
                &format!("/v1/topics/{topic}/records"),
                Some(records),
            ),
            "200",
        );
    }
    let rule = r#"{"resource_type":"topic","resource_name":"visible","principal":"User:bob","operation":"read"}"#;
    ok(call(&as_admin, "POST", "/v1/acls", Some(rule)), "201");

    let bob = ["-u", "bob:bobs password"];
    let listed = ok(call(&bob, "GET", "/v1/topics", None), "200");
    assert!(
        listed.contains("visible") && !listed.contains("hidden"),
        "{listed}"
    );
    ok(
        call(&bob, "GET", "/v1/topics/visible/records?offset=0", None),
        "200",
    );
    let refused = ok(
        call(&bob, "GET", "/v1/topics/hidden/records?offset=0", None),
        "403",
    );
    assert!(
        refused.contains(r#"may not READ topic \"hidden\""#),
        "{refused}"
    );
    let refused = ok(
        call(
            &bob,
            "POST",
            "/v1/topics/visible/records",
            Some(r#"{"records":[{"value":"x"}]}"#),
        ),
        "403",
    );
    assert!(
        refused.contains(r#"may not WRITE topic \"visible\""#),
        "{refused}"
    );
    let counted = ok(
        call(
            &bob,
            "POST",
            "/v1/sql",
            Some(r#"{"sql":"SELECT count(*) AS n FROM visible"}"#),
        ),
        "200",
    );
    assert!(counted.contains("\"n\":2"), "{counted}");
    // The system tables show bob the rows of the topics he may describe, and nothing more.
    for table in ["weir.topics", "weir.partitions"] {
        let sql = format!("SELECT * FROM {table}");
        let body = serde_json::json!({ "sql": sql }).to_string();
        let rows = ok(call(&bob, "POST", "/v1/sql", Some(&body)), "200");
        assert!(
            rows.contains("\"visible\"") && !rows.contains("hidden"),
            "{table}: {rows}"
        );
        let rows = ok(call(&as_admin, "POST", "/v1/sql", Some(&body)), "200");
        assert!(rows.contains("\"hidden\""), "{table}: {rows}");
    }
    for sql in [
        "SELECT * FROM hidden",
        "SELECT * FROM visible WHERE value IN (SELECT value FROM hidden)",
        "SELECT * FROM weir.connections",
        "INSERT INTO visible (value) VALUES ('x')",
        "CREATE TABLE copied AS SELECT value FROM visible",
    ] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let refused = ok(call(&bob, "POST", "/v1/sql", Some(&body)), "403");
        assert!(refused.contains("user bob may not"), "{sql}: {refused}");
    }
    // Pipelines and functions in SQL: a pipeline bob makes reads and writes only what he may,
    // the admin's pipeline is not his to pause or drop, and functions are the node's.
    let admins = serde_json::json!({
        "sql": "CREATE PIPELINE admins AS INSERT INTO admins_out SELECT offset FROM hidden"
    })
    .to_string();
    ok(call(&as_admin, "POST", "/v1/sql", Some(&admins)), "200");
    for (sql, reason) in [
        (
            "CREATE PIPELINE bobs AS INSERT INTO hidden SELECT value FROM visible",
            "user bob may not WRITE topic",
        ),
        (
            "CREATE PIPELINE bobs AS INSERT INTO visible SELECT value FROM hidden",
            "user bob may not",
        ),
        ("ALTER PIPELINE admins PAUSE", "not yours to change"),
        ("DROP PIPELINE admins", "not yours to drop"),
        (
            "CREATE FUNCTION f AS PLUGIN 'url-path'",
            "functions are the node's",
        ),
    ] {
        let body = serde_json::json!({ "sql": sql }).to_string();
        let refused = ok(call(&bob, "POST", "/v1/sql", Some(&body)), "403");
        assert!(refused.contains(reason), "{sql}: {refused}");
    }
    let shown = serde_json::json!({ "sql": "SHOW PIPELINES" }).to_string();
    let pipelines = ok(call(&as_admin, "POST", "/v1/sql", Some(&shown)), "200");
    assert!(
        pipelines.contains("admins") && !pipelines.contains("bobs"),
        "{pipelines}"
    );
    let refused = ok(call(&bob, "GET", "/v1/acls", None), "403");
    assert!(refused.contains("super-users"), "{refused}");
    let wrong = ok(call(&["-u", "bob:guess"], "GET", "/v1/topics", None), "401");
    assert!(wrong.contains("authentication failed"), "{wrong}");
    ok(call(&[], "GET", "/v1/topics", None), "401");

    // The same user and rules over Postgres.
    if !have("psql", "apt-get install postgresql-client") {
        return;
    }
    let psql = |password: &str, sql: &str| {
        let conninfo = format!(
            "host=localhost port={} user=bob dbname=weir sslmode=verify-full sslrootcert={}",
            node.pg.port(),
            pki.ca.display()
        );
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-c", sql, &conninfo])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        (out.status.success(), output_text(&out))
    };
    let (counted, text) = psql("bobs password", "SELECT count(*) FROM visible");
    assert!(counted && text.trim() == "2", "{text}");
    let (listed, text) = psql("bobs password", "SELECT name FROM weir.topics");
    assert!(listed && text.trim() == "visible", "{text}");
    for sql in ["SELECT * FROM hidden", "SELECT * FROM weir.connections"] {
        let (ran, text) = psql("bobs password", sql);
        assert!(!ran && text.contains("user bob may not"), "{sql}: {text}");
    }
    let (ran, text) = psql("guess", "SELECT 1");
    assert!(
        !ran && text.contains("assword authentication failed"),
        "{text}"
    );
}

#[test]
fn a_password_over_plain_http_is_refused() {
    let (_dir, node, _) = common::started(&["--kafka-auth", "sasl", "--admin-token", "s3cret"]);
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-u",
            "bob:secret",
            "-w",
            " %{http_code}",
        ])
        .arg(format!("{}/v1/topics", node.url()))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.ends_with(" 401") && said.contains("over TLS only"),
        "{said}"
    );
}

#[test]
fn a_pipeline_runs_with_its_creators_rights_and_pauses_when_one_is_revoked() {
    if !have("curl", "apt-get install curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (pki, node) = tls_node(
        dir.path(),
        &["--kafka-auth", "sasl", "--admin-token", "s3cret"],
    );
    let admin = ["-H", "Authorization: Bearer s3cret"];
    let carol = ["-u", "carol:carols password"];
    let call = |auth: &[&str], method: &str, path: &str, body: Option<&str>| {
        api(&node, &pki, auth, method, path, body)
    };
    let user = r#"{"name":"carol","password":"carols password"}"#;
    expect(call(&admin, "POST", "/v1/users", Some(user)), "201");
    for topic in ["src", "secret"] {
        let create = format!(r#"{{"name":"{topic}","partitions":1}}"#);
        expect(call(&admin, "POST", "/v1/topics", Some(&create)), "201");
    }
    let produce = |value: &str| {
        let records = format!(r#"{{"records":[{{"value":"{value}"}}]}}"#);
        expect(
            call(&admin, "POST", "/v1/topics/src/records", Some(&records)),
            "200",
        );
    };
    produce("one");
    produce("two");
    // carol reads src and may write and create every topic named out…
    let rules = r#"[
        {"resource_type":"topic","resource_name":"src","principal":"User:carol","operation":"read"},
        {"resource_type":"topic","resource_name":"out","pattern_type":"prefixed","principal":"User:carol","operation":"write"},
        {"resource_type":"topic","resource_name":"out","pattern_type":"prefixed","principal":"User:carol","operation":"create"}
    ]"#;
    expect(call(&admin, "POST", "/v1/acls", Some(rules)), "201");
    let pipeline = |name: &str, from: &str| {
        format!(
            r#"{{"name":"{name}","from":"{from}","to":["{name}-copied"],"from_offset":"earliest"}}"#
        )
    };
    for (name, from, why) in [
        ("out-stolen", "secret", r#"may not READ topic \"secret\""#),
        (
            "elsewhere",
            "src",
            r#"may not WRITE topic \"elsewhere-copied\""#,
        ),
    ] {
        let body = pipeline(name, from);
        let refused = expect(call(&carol, "POST", "/v1/pipelines", Some(&body)), "403");
        assert!(refused.contains(why), "{refused}");
    }
    let created = expect(
        call(
            &carol,
            "POST",
            "/v1/pipelines",
            Some(&pipeline("out", "src")),
        ),
        "201",
    );
    assert!(created.contains(r#""owner":"carol""#), "{created}");

    let copied = || {
        let body = r#"{"sql":"SELECT count(*) AS n FROM \"out-copied\""}"#;
        let answer = expect(call(&admin, "POST", "/v1/sql", Some(body)), "200");
        let rows: serde_json::Value = serde_json::from_str(&answer).unwrap();
        rows["rows"][0]["n"].as_i64().unwrap()
    };
    let status = || {
        let body = expect(call(&admin, "GET", "/v1/pipelines/out", None), "200");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    eventually(
        "the pipeline to copy two records",
        Duration::from_secs(30),
        || copied() == 2,
    );

    let listed = expect(call(&carol, "GET", "/v1/pipelines", None), "200");
    assert!(listed.contains(r#""name":"out""#), "{listed}");

    // Revoking carol's write pauses the pipeline with the reason (it checks before every batch,
    // and at least every idle poll), and what is written after is not copied.
    expect(
        call(
            &admin,
            "DELETE",
            "/v1/acls?principal=User:carol&operation=write",
            None,
        ),
        "200",
    );
    eventually("the pipeline to pause", Duration::from_secs(30), || {
        status()["status"] == "paused"
    });
    let reason = status()["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("its owner lost a right") && reason.contains("may not WRITE topic"),
        "{reason}"
    );
    produce("three");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(copied(), 2);

    // With the right back, carol resumes it and the record written meanwhile is copied.
    let write = r#"{"resource_type":"topic","resource_name":"out","pattern_type":"prefixed","principal":"User:carol","operation":"write"}"#;
    expect(call(&admin, "POST", "/v1/acls", Some(write)), "201");
    expect(
        call(&carol, "POST", "/v1/pipelines/out/resume", None),
        "200",
    );
    eventually(
        "the resumed pipeline to copy the third record",
        Duration::from_secs(30),
        || copied() == 3,
    );
    assert_eq!(status()["status"], "running");

    // A user who may describe none of its topics is told it does not exist.
    let dave = r#"{"name":"dave","password":"daves password"}"#;
    expect(call(&admin, "POST", "/v1/users", Some(dave)), "201");
    let daves = ["-u", "dave:daves password"];
    let hidden = expect(call(&daves, "GET", "/v1/pipelines/out", None), "404");
    assert!(hidden.contains("does not exist"), "{hidden}");
    let listed = expect(call(&daves, "GET", "/v1/pipelines", None), "200");
    assert_eq!(listed, "[]");
    // One who may describe them sees it, but may not pause what is not its own.
    let describe = r#"{"resource_type":"topic","resource_name":"*","principal":"User:dave","operation":"describe"}"#;
    expect(call(&admin, "POST", "/v1/acls", Some(describe)), "201");
    expect(call(&daves, "GET", "/v1/pipelines/out", None), "200");
    let refused = expect(call(&daves, "POST", "/v1/pipelines/out/pause", None), "403");
    assert!(refused.contains("is not yours"), "{refused}");
    expect(call(&carol, "DELETE", "/v1/pipelines/out", None), "204");
}

/// The settings the README gives for kafka-python and kafkajs, over SASL_SSL with SCRAM-SHA-512:
/// each client's own round trip (`clients/roundtrip.py`, `clients/kafkajs.js`) passes with them.
#[test]
fn kafka_python_and_kafkajs_sign_in_with_the_readme_settings() {
    let (Some(python), Some(modules)) = (python(), node_modules()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (pki, node) = tls_node(
        dir.path(),
        &["--kafka-auth", "sasl", "--super-users", "alice"],
    );
    let user = format!(r#"{{"name":"alice","password":"{PASSWORD}"}}"#);
    expect(
        api(&node, &pki, &[], "POST", "/v1/users", Some(&user)),
        "201",
    );

    let ca = pki.ca.display().to_string();
    let settings = [
        "security_protocol=SASL_SSL".to_owned(),
        "sasl_mechanism=SCRAM-SHA-512".to_owned(),
        "sasl_plain_username=alice".to_owned(),
        format!("sasl_plain_password={PASSWORD}"),
        format!("ssl_cafile={ca}"),
    ];
    let mut args = vec!["kafka-python", "secured-python"];
    args.extend(settings.iter().map(String::as_str));
    run_client(
        &python,
        &node,
        "roundtrip.py",
        &args,
        "200 records round-tripped",
    );

    let out = Command::new("node")
        .arg(client_script("kafkajs.js"))
        .arg(node.kafka.to_string())
        .args(["secured-js", &ca, "alice", PASSWORD])
        .env("NODE_PATH", modules)
        .output()
        .unwrap();
    let printed = output_text(&out);
    assert!(
        out.status.success() && printed.contains("kafkajs ok: 300 records"),
        "{printed}"
    );
}

/// A renewed certificate written over the files is served without a restart; a broken one is
/// refused and the one before kept.
#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    if !have("curl", "apt-get install curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (pki, node) = tls_node(dir.path(), &[]);
    let healthy = |trusting: &Pki| curl(&node, trusting, &["/healthz"]).status.success();
    assert!(healthy(&pki));

    let renewed = Pki::new(dir.path(), "renewed");
    std::fs::copy(&renewed.key, &pki.key).unwrap();
    std::fs::copy(&renewed.cert, &pki.cert).unwrap();
    eventually("the renewed certificate", Duration::from_secs(30), || {
        healthy(&renewed)
    });
    assert!(!healthy(&pki), "the old certificate is still served");
    assert_eq!(
        metric(
            &node,
            &renewed,
            "weir_tls_certificate_reloads_total{result=\"loaded\"} "
        ),
        1
    );

    // A check that fell between the two copies saw a key without its certificate: refused too.
    let failed = || {
        metric(
            &node,
            &renewed,
            "weir_tls_certificate_reloads_total{result=\"failed\"} ",
        )
    };
    let failed_before = failed();
    std::fs::write(&pki.key, "not a key").unwrap();
    eventually(
        "the broken key to be refused",
        Duration::from_secs(30),
        || failed() > failed_before,
    );
    assert!(
        healthy(&renewed),
        "the last good certificate is no longer served"
    );
}
