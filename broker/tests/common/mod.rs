//! Starting a real `weir serve` on a temp data directory and a free port.

#![allow(dead_code)] // each test file uses its own part of these helpers

pub mod checker;
pub mod group_member;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The opening of most broker tests: a fresh temp data directory, a node on it started with
/// `extra` flags, and an HTTP client for the node. Check the clients a test needs with
/// [`have`] (or [`python`], [`node_modules`]) first.
pub fn started(extra: &[&str]) -> (tempfile::TempDir, Node, weir_broker::cli::Client) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let node = Node::start_with(dir.path(), extra);
    let client = weir_broker::cli::Client::new(&node.url(), None);
    (dir, node, client)
}

/// Addresses for a node's listeners.
pub struct Listeners {
    pub kafka: String,
    pub http: String,
    pub pg: String,
}

impl Listeners {
    /// Any free port for each.
    pub fn any() -> Listeners {
        let any = "127.0.0.1:0".to_string();
        Listeners {
            kafka: any.clone(),
            http: any.clone(),
            pg: any,
        }
    }

    /// Free ports picked now, to keep across restarts; three different ones, as each is held
    /// until all are picked.
    pub fn fixed() -> Listeners {
        let held: Vec<std::net::TcpListener> = (0..3)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let port = |i: usize| held[i].local_addr().expect("a bound address").to_string();
        Listeners {
            kafka: port(0),
            http: port(1),
            pg: port(2),
        }
    }
}

/// A `weir serve` process, killed if the test ends before it exits.
pub struct Node {
    pub child: Child,
    pub log: mpsc::Receiver<String>,
    pub kafka: SocketAddr,
    pub http: SocketAddr,
    pub pg: SocketAddr,
    /// Log lines up to "Kafka listener ready".
    pub startup: Vec<String>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // A node that died on its own (not by a test's SIGKILL), or whose test failed, says
        // what it last logged in the test's output.
        let died = self.child.try_wait().ok().flatten().filter(|status| {
            !status.success() && std::os::unix::process::ExitStatusExt::signal(status) != Some(9)
        });
        if died.is_some() || std::thread::panicking() {
            match died {
                Some(status) => eprintln!("the node exited with {status}; its last log lines:"),
                None => eprintln!("the test failed; the node's last log lines:"),
            }
            let lines: Vec<String> = self.log.try_iter().collect();
            for line in &lines[lines.len().saturating_sub(40)..] {
                eprintln!("  {line}");
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts a node on `data_dir` with its listeners on free ports.
    pub fn start(data_dir: &Path) -> Node {
        Node::start_with(data_dir, &[])
    }

    /// [`Node::start`] with extra `weir serve` flags.
    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Node {
        Node::start_on(data_dir, &Listeners::any(), extra)
    }

    /// Starts a node with its listeners on the given addresses, so a restart keeps them.
    pub fn start_on(data_dir: &Path, listeners: &Listeners, extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(["serve", "--kafka", &listeners.kafka])
            .args(["--http", &listeners.http])
            .args(["--pg", &listeners.pg])
            .arg("--data-dir")
            .arg(data_dir)
            .args(extra)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting weir serve");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut node = Node {
            child,
            log: rx,
            kafka: "127.0.0.1:0".parse().expect("an address"),
            http: "127.0.0.1:0".parse().expect("an address"),
            pg: "127.0.0.1:0".parse().expect("an address"),
            startup: Vec::new(),
        };
        let ready = loop {
            let Ok(line) = node.log.recv_timeout(Duration::from_secs(60)) else {
                panic!(
                    "the node did not start; its log lines:\n{}",
                    node.startup.join("\n")
                );
            };
            node.startup.push(line.clone());
            if line.contains("Kafka listener ready") {
                break line;
            }
        };
        node.kafka = logged_addr(&ready);
        let http = node
            .startup
            .iter()
            .find(|l| l.contains("HTTP listener ready"))
            .expect("the HTTP listener starts before the Kafka one");
        node.http = logged_addr(http);
        if let Some(pg) = node
            .startup
            .iter()
            .find(|l| l.contains("Postgres listener ready"))
        {
            node.pg = logged_addr(pg);
        }
        node
    }

    /// Base URL of the HTTP listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The next log line containing `needle`, within a minute.
    pub fn wait_for(&self, needle: &str) -> String {
        loop {
            let line = self
                .log
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// A field of the node's `/proc/<pid>/status` in KiB: `VmRSS:`, `VmHWM:` (peak RSS).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the node's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Sends a signal (`-TERM`, `-INT`) to the node.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success());
    }

    /// SIGKILL: the node dies mid-work, with no shutdown at all.
    pub fn kill9(mut self) {
        self.child.kill().expect("killing weir");
        self.child.wait().expect("waiting for weir");
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) {
        self.signal("-TERM");
        self.wait_for("shut down cleanly");
        assert!(self.child.wait().expect("waiting for weir").success());
    }
}

/// Fails loudly in CI when a client the tests need is missing; elsewhere says how to get it
/// and returns false so the test can pass without it.
pub fn have(tool: &str, install: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        weir_tests::missing(tool, &format!("install it with `{install}`"));
    }
    found
}

/// A client environment `./scripts/test` installs: `$env_var` if set, else `default` under the
/// workspace, when `ready` accepts it. Missing fails in CI and is reported (`None`) elsewhere.
fn installed(
    env_var: &str,
    default: &str,
    what: &str,
    ready: impl Fn(&Path) -> bool,
) -> Option<std::path::PathBuf> {
    let candidate = std::env::var_os(env_var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(default)
        });
    if ready(&candidate) {
        return Some(candidate);
    }
    weir_tests::missing(
        &format!("{what} at {}", candidate.display()),
        "run ./scripts/test once",
    );
    None
}

/// The Python with the Kafka client packages (`WEIR_PYTHON`, else `target/py`).
pub fn python() -> Option<std::path::PathBuf> {
    installed(
        "WEIR_PYTHON",
        "target/py/bin/python",
        "Python with Kafka clients",
        |p| p.exists(),
    )
}

/// syslog-ng unpacked from its Debian packages (`WEIR_SYSLOG_NG`, else `target/syslog-ng`):
/// it conflicts with rsyslog as an installed package.
pub fn syslog_ng() -> Option<std::path::PathBuf> {
    installed("WEIR_SYSLOG_NG", "target/syslog-ng", "syslog-ng", |p| {
        p.join("usr/sbin/syslog-ng").exists()
    })
}

/// The `node_modules` with kafkajs (`WEIR_NODE_MODULES`, else `target/node`).
pub fn node_modules() -> Option<std::path::PathBuf> {
    installed(
        "WEIR_NODE_MODULES",
        "target/node/node_modules",
        "kafkajs",
        |p| p.join("kafkajs").exists() && have("node", "apt-get install nodejs"),
    )
}

/// Path of a script under `tests/clients/`.
pub fn client_script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `tests/clients/<script>` with `python` against the node's Kafka listener; it must
/// succeed and print `done`. Answers what it printed.
pub fn run_client(python: &Path, node: &Node, script: &str, args: &[&str], done: &str) -> String {
    let out = Command::new(python)
        .arg(client_script(script))
        .arg(node.kafka.to_string())
        .args(args)
        .output()
        .expect("starting a Python client");
    let printed = output_text(&out);
    assert!(out.status.success(), "{script}: {printed}");
    assert!(printed.contains(done), "{script}: {printed}");
    printed
}

/// What a finished command printed, standard output then standard error.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn logged_addr(line: &str) -> SocketAddr {
    line.split("addr=")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

/// Runs `command` with `input` on its standard input and returns its output.
pub fn run_with_input(command: Command, input: &str) -> std::process::Output {
    run_with_input_bytes(command, input.as_bytes())
}

/// Runs `command` with `input` on its standard input and returns its output.
pub fn run_with_input_bytes(mut command: Command, input: &[u8]) -> std::process::Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the command");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin is piped"), input)
        .expect("writing the input");
    child.wait_with_output().expect("waiting for the command")
}

/// Runs kcat against `node` with `input` on its standard input, whatever it answers.
pub fn kcat_output(node: &Node, args: &[&str], input: &str) -> std::process::Output {
    let mut command = Command::new("kcat");
    command.arg("-b").arg(node.kafka.to_string()).args(args);
    run_with_input(command, input)
}

/// kcat against `node` as `user` with the SASL `mechanism`; its output.
pub fn kcat_as(
    node: &Node,
    mechanism: &str,
    user: &str,
    password: &str,
    args: &[&str],
    input: &str,
) -> std::process::Output {
    let mut command = Command::new("kcat");
    command
        .arg("-b")
        .arg(node.kafka.to_string())
        .args(["-X", "security.protocol=SASL_PLAINTEXT"])
        .args(["-X", &format!("sasl.mechanisms={mechanism}")])
        .args(["-X", &format!("sasl.username={user}")])
        .args(["-X", &format!("sasl.password={password}")])
        .args(args);
    run_with_input(command, input)
}

/// Runs kcat against `node` with `input` on its standard input; fails the test if kcat does.
pub fn kcat(node: &Node, args: &[&str], input: &str) -> String {
    let out = kcat_output(node, args, input);
    assert!(
        out.status.success(),
        "kcat {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("kcat prints UTF-8 here")
}

/// Creates a topic through the HTTP API.
pub fn create_topic(c: &weir_broker::cli::Client, name: &str, partitions: u32) {
    let body = serde_json::json!({ "name": name, "partitions": partitions });
    c.call("POST", "/v1/topics", Some(&body))
        .unwrap_or_else(|e| panic!("creating topic {name}: {e:#}"));
}

/// Sends `request` as API `key` at `version`, with a header naming the client `weir-tests`,
/// and decodes the response.
pub fn kafka_call<Req, Resp>(
    stream: &mut std::net::TcpStream,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    request: &Req,
) -> Resp
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    let request = kafka_request(key, version, request);
    let response = kafka_round_trip(stream, &request);
    kafka_response(key, version, response)
}

/// CreatePartitions growing `topic` to `count` partitions through `node`: the error code.
pub fn grow_topic(node: &Node, topic: &str, count: i32) -> i16 {
    use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
    use kafka_protocol::messages::{
        ApiKey, CreatePartitionsRequest, CreatePartitionsResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut t = CreatePartitionsTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.count = count;
    let mut request = CreatePartitionsRequest::default();
    request.topics.push(t);
    request.timeout_ms = 10_000;
    let mut stream = std::net::TcpStream::connect(node.kafka).expect("connecting to the node");
    let response: CreatePartitionsResponse =
        kafka_call(&mut stream, ApiKey::CreatePartitions, 1, &request);
    response.results[0].error_code
}

/// Sends one produce request (acks=all) of `records` for one partition: the partition's error
/// code and base offset.
pub fn produce(
    stream: &mut std::net::TcpStream,
    topic: &str,
    partition: i32,
    records: bytes::Bytes,
) -> (i16, i64) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let mut data = PartitionProduceData::default();
    data.index = partition;
    data.records = Some(records);
    let mut t = TopicProduceData::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    t.partition_data.push(data);
    let mut request = ProduceRequest::default();
    request.acks = -1;
    request.timeout_ms = 5000;
    request.topic_data.push(t);
    let response: ProduceResponse = kafka_call(stream, ApiKey::Produce, 7, &request);
    let answer = &response.responses[0].partition_responses[0];
    (answer.error_code, answer.base_offset)
}

/// The bytes of `request` as API `key` at `version` after the length prefix, with a header
/// naming the client `weir-tests`.
pub fn kafka_request<Req: kafka_protocol::protocol::Encodable>(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    request: &Req,
) -> bytes::BytesMut {
    use kafka_protocol::messages::RequestHeader;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let mut header = RequestHeader::default();
    header.request_api_key = key as i16;
    header.request_api_version = version;
    header.correlation_id = 1;
    header.client_id = Some(StrBytes::from_static_str("weir-tests"));
    let mut body = bytes::BytesMut::new();
    header
        .encode(&mut body, key.request_header_version(version))
        .expect("encoding a request header");
    request
        .encode(&mut body, version)
        .expect("encoding a request");
    body
}

/// Decodes a response frame (after its length) to API `key` at `version`.
pub fn kafka_response<Resp: kafka_protocol::protocol::Decodable>(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    mut response: bytes::Bytes,
) -> Resp {
    use kafka_protocol::messages::ResponseHeader;
    use kafka_protocol::protocol::Decodable;
    ResponseHeader::decode(&mut response, key.response_header_version(version))
        .expect("a response header");
    Resp::decode(&mut response, version).expect("a response")
}

/// Waits until `done` holds, checking every 20 ms; fails the test after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends one length-prefixed Kafka request and returns the response frame after its length.
pub fn kafka_round_trip(stream: &mut std::net::TcpStream, request: &[u8]) -> bytes::Bytes {
    kafka_send(stream, request);
    kafka_receive(stream)
}

/// Sends one request frame: its length, then `request`, in one write (two would wait on each
/// other's acknowledgement, Nagle's algorithm against delayed ACKs, 40 ms a request).
pub fn kafka_send(stream: &mut std::net::TcpStream, request: &[u8]) {
    use std::io::Write;
    let length = i32::try_from(request.len()).expect("a request under 2 GiB");
    let mut frame = Vec::with_capacity(4 + request.len());
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(request);
    stream.write_all(&frame).expect("sending a request");
}

/// Reads one response frame, answering the bytes after its length.
pub fn kafka_receive(stream: &mut std::net::TcpStream) -> bytes::Bytes {
    use std::io::Read;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("a response length");
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response).expect("a response");
    bytes::Bytes::from(response)
}

/// The rows a SQL statement answers over `POST /v1/sql`.
pub fn rows(c: &weir_broker::cli::Client, statement: &str) -> Vec<serde_json::Value> {
    let answer = c
        .call(
            "POST",
            "/v1/sql",
            Some(&serde_json::json!({ "sql": statement })),
        )
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    answer["rows"].as_array().cloned().unwrap_or_default()
}

/// The first column of the first row of a query answering one number.
pub fn number(c: &weir_broker::cli::Client, statement: &str) -> i64 {
    let rows = rows(c, statement);
    let row = rows.first().and_then(serde_json::Value::as_object);
    row.and_then(|r| r.values().next())
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0)
}

/// The value of a series in the node's `/metrics`, 0 when absent.
pub fn metric(node: &Node, series: &str) -> f64 {
    let text = ureq::get(format!("{}/metrics", node.url()))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .expect("the metrics text");
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `ms` since the epoch as Grafana writes times into `$__timeFilter`: `2026-01-01T00:00:00Z`.
pub fn rfc3339(ms: i64) -> String {
    let (days, seconds) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000) / 1000);
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

/// Every record of one partition, through the HTTP consume API.
pub fn consume_all(
    c: &weir_broker::cli::Client,
    topic: &str,
    partition: u32,
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let page = c
            .call(
                "GET",
                &format!(
                    "/v1/topics/{topic}/records?partition={partition}&offset={offset}&limit=10000"
                ),
                None,
            )
            .expect("a consume page");
        let records = page["records"].as_array().cloned().unwrap_or_default();
        offset = page["next_offset"]
            .as_u64()
            .expect("next_offset in a consume page");
        if records.is_empty() {
            return out;
        }
        out.extend(records);
    }
}

/// Wall-clock milliseconds since the epoch, as record timestamps count them.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The committed offset of each partition in a group's describe answer (`GET
/// /v1/groups/{id}`, `weir groups describe --json`), by partition.
pub fn committed_offsets(described: &serde_json::Value) -> std::collections::BTreeMap<i64, i64> {
    described["offsets"]
        .as_array()
        .expect("offsets")
        .iter()
        .map(|o| {
            (
                o["partition"].as_i64().expect("partition"),
                o["committed"].as_i64().expect("committed"),
            )
        })
        .collect()
}
