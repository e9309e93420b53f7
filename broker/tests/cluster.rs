//! Three `weir serve` nodes joined as one cluster (`--cluster-db`, `--object-store`) on a real
//! Postgres and a shared object-store directory (and once on an S3-compatible server), driven by kcat, confluent-kafka and
//! kafka-python: records produced through one node are read through the others, offsets per
//! partition are unique and gap-free, lookups by time agree across nodes; when a node is killed
//! the others drop it from Metadata and still serve every record, and it comes back empty and
//! serves at once; without the database nothing is acknowledged. Consumer groups (confluent-kafka,
//! kafkajs) run across the nodes, and when a group's coordinator dies a live node takes the
//! group, its committed offsets and its stable generation; group requests over HTTP reach the coordinator through any
//! node. Topics are created with configs, reconfigured, grown, deleted and made again through
//! different nodes, and every node follows; SQL appends and `CREATE TABLE … AS SELECT` write to
//! the cluster's topics. ACL rules limited to a host hold for group requests one node sends on
//! to another.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::checker::{Findings, Traffic, final_commits, setting};
use common::pki::Pki;
use common::{
    Listeners, Node, eventually, have, kcat, kcat_as, kcat_output, metric, now_ms, output_text,
    python, run_client,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_cluster::lease::COMMIT_OFFSETS_MAX;
use weir_tests::cloud::{AzureServer, CloudStore};
use weir_tests::postgres::Postgres;
use weir_tests::s3::{GcsServer, S3Server};
use weir_tests::wasm::plugin_wasm;

const PARTITIONS: u32 = 3;

/// Nodes 0, 1 and 2 on one database and one object store: the store's directory, the
/// nodes' data directories (both removed when dropped) and the nodes.
fn three_nodes(db: &Postgres) -> (tempfile::TempDir, Vec<tempfile::TempDir>, Vec<Node>) {
    three_nodes_with(db, &[])
}

/// [`three_nodes`] with extra `weir serve` flags.
fn three_nodes_with(
    db: &Postgres,
    extra: &[&str],
) -> (tempfile::TempDir, Vec<tempfile::TempDir>, Vec<Node>) {
    let store = tempfile::tempdir().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = dirs
        .iter()
        .zip(0..)
        .map(|(dir, id)| {
            let store = store_url(store.path());
            start_node_with(dir.path(), &Listeners::any(), db, &store, id, extra)
        })
        .collect();
    (store, dirs, nodes)
}

fn start_node(data: &Path, db: &Postgres, store: &Path, id: u32) -> Node {
    start_node_on(data, &Listeners::any(), db, store, id)
}

/// A node on the given listeners, so it comes back on them after a restart.
fn start_node_on(data: &Path, on: &Listeners, db: &Postgres, store: &Path, id: u32) -> Node {
    start_node_with(data, on, db, &store_url(store), id, &[])
}

/// The URL of a store directory.
fn store_url(store: &Path) -> String {
    format!("file://{}", store.display())
}

/// A node on the store `store` names, with extra `weir serve` flags.
fn start_node_with(
    data: &Path,
    on: &Listeners,
    db: &Postgres,
    store: &str,
    id: u32,
    extra: &[&str],
) -> Node {
    let (url, id, partitions) = (db.url(), id.to_string(), PARTITIONS.to_string());
    let mut flags = vec![
        "--cluster-db",
        &url,
        "--object-store",
        store,
        "--node-id",
        &id,
        "--cluster-linger-ms",
        "5",
        "--default-partitions",
        &partitions,
    ];
    flags.extend_from_slice(extra);
    Node::start_on(data, on, &flags)
}

/// The broker ids a node's Metadata lists, from `kcat -L`.
fn brokers(node: &Node) -> Vec<String> {
    let listed = kcat(node, &["-L"], "");
    listed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("broker "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// Every record of `topic` read through `node`: partition → (offset, key, value), in order.
fn read_all(node: &Node, topic: &str) -> BTreeMap<u32, Vec<(u64, String, String)>> {
    let out = kcat(
        node,
        &[
            "-C",
            "-t",
            topic,
            "-o",
            "beginning",
            "-e",
            "-q",
            "-f",
            "%p|%o|%k|%s\n",
        ],
        "",
    );
    let mut by_partition: BTreeMap<u32, Vec<(u64, String, String)>> = BTreeMap::new();
    for line in out.lines() {
        let mut f = line.splitn(4, '|');
        let (p, o, k, v) = (f.next(), f.next(), f.next(), f.next());
        let (Some(p), Some(o), Some(k), Some(v)) = (p, o, k, v) else {
            panic!("unexpected kcat line {line:?}");
        };
        by_partition.entry(p.parse().unwrap()).or_default().push((
            o.parse().unwrap(),
            k.to_string(),
            v.to_string(),
        ));
    }
    by_partition
}

/// Checks that each partition holds offsets 0.. without a gap or a repeat, and that the values
/// read are exactly `sent`, once each.
fn assert_exactly(read: &BTreeMap<u32, Vec<(u64, String, String)>>, sent: &[String]) {
    let mut values: Vec<String> = Vec::new();
    for (partition, records) in read {
        let offsets: Vec<u64> = records.iter().map(|r| r.0).collect();
        let expected: Vec<u64> = (0..records.len() as u64).collect();
        assert_eq!(offsets, expected, "offsets of partition {partition}");
        values.extend(records.iter().map(|r| r.2.clone()));
    }
    values.sort();
    let mut sent = sent.to_vec();
    sent.sort();
    assert_eq!(values.len(), sent.len(), "records read vs sent");
    assert_eq!(values, sent);
}

#[test]
fn three_nodes_share_every_partition_through_postgres_and_the_object_store() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let Some(db) = Postgres::start() else {
        return;
    };
    let (store, _dirs, mut nodes) = three_nodes(&db);

    // Every node lists all three once their heartbeats are in.
    for node in &nodes {
        eventually(
            "every node lists three brokers",
            Duration::from_secs(20),
            || brokers(node) == ["0", "1", "2"],
        );
    }

    // `weir cluster status` through any node lists them all; a single node says it is one.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(["cluster", "status", "--server", &nodes[1].url()])
        .output()
        .unwrap();
    let printed = common::output_text(&status);
    assert!(status.status.success(), "{printed}");
    assert!(
        printed.starts_with("cluster mode, asked node 1, 3 live nodes"),
        "{printed}"
    );
    for node in &nodes {
        let row = format!("127.0.0.1 {}", node.kafka.port());
        let found = printed.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().skip(1).collect();
            words.join(" ") == row
        });
        assert!(found, "no row for {row}: {printed}");
    }
    assert!(printed.contains("\ndatabase      ok ("), "{printed}");
    assert!(printed.contains("\nobject store  ok ("), "{printed}");
    assert!(printed.contains(" live lease"), "{printed}");
    // With Postgres frozen, the status says so within the probe's timeout, and that the
    // store still answers.
    let cluster = |node: &Node| {
        weir_broker::cli::Client::new(&node.url(), None)
            .call("GET", "/v1/cluster", None)
            .unwrap()
    };
    db.pause();
    let frozen = cluster(&nodes[2]);
    db.resume();
    assert_eq!(frozen["database"]["ok"], false, "{frozen}");
    assert!(
        frozen["database"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no answer within")),
        "{frozen}"
    );
    assert_eq!(frozen["object_store"]["ok"], true, "{frozen}");
    assert!(frozen.get("leases").is_none(), "{frozen}");
    let lone = tempfile::tempdir().unwrap();
    let single = Node::start(lone.path());
    let status = cluster(&single);
    assert_eq!(status["mode"], "single");
    assert_eq!(status["nodes"].as_array().map(Vec::len), Some(1));
    assert!(status.get("database").is_none(), "{status}");
    drop(single);

    // Keyed records through node 0 (the topic is made on first use, three partitions), more
    // through node 1; librdkafka sends each partition's batches to the leader Metadata names,
    // so all three nodes take writes.
    let before = now_ms();
    let first: Vec<String> = (0..300).map(|i| format!("k{}:v{i}", i % 17)).collect();
    kcat(
        &nodes[0],
        &["-P", "-t", "shared", "-K", ":", "-z", "zstd"],
        &(first.join("\n") + "\n"),
    );
    let second: Vec<String> = (300..400).map(|i| format!("k{}:v{i}", i % 5)).collect();
    kcat(
        &nodes[1],
        &["-P", "-t", "shared", "-K", ":"],
        &(second.join("\n") + "\n"),
    );
    let sent: Vec<String> = first
        .iter()
        .chain(&second)
        .map(|r| r.split_once(':').unwrap().1.to_string())
        .collect();

    // Each node counts the records it took.
    let counted: f64 = nodes
        .iter()
        .map(|n| metric(n, "weir_records_in_total{topic=\"shared\"}"))
        .sum();
    assert_eq!(counted, 400.0);

    // Every node reads the same records at the same offsets.
    let read = read_all(&nodes[2], "shared");
    assert_exactly(&read, &sent);
    assert_eq!(read.len() as u32, PARTITIONS, "records in every partition");
    for node in &nodes[..2] {
        assert_eq!(read_all(node, "shared"), read);
    }
    // Keys keep to their partition whichever node took them.
    for records in read.values() {
        for (_, key, _) in records {
            let elsewhere = read
                .values()
                .filter(|rs| rs.iter().any(|(_, k, _)| k == key))
                .count();
            assert_eq!(elsewhere, 1, "key {key} is in one partition");
        }
    }

    // A lookup by time answers the same offset on every node: records from `before` on are
    // all of them.
    for node in &nodes {
        let out = kcat(
            node,
            &[
                "-C",
                "-t",
                "shared",
                "-p",
                "0",
                "-o",
                &format!("s@{before}"),
                "-e",
                "-q",
                "-f",
                "%o\n",
            ],
            "",
        );
        assert_eq!(out.lines().next(), Some("0"), "lookup by time: {out}");
    }

    // A consumer long-polling node 2 wakes when node 0 commits, not when its wait ends.
    kcat(&nodes[0], &["-P", "-t", "wake", "-p", "0"], "first\n");
    let waiting = std::process::Command::new("kcat")
        .args([
            "-b",
            &nodes[2].kafka.to_string(),
            "-C",
            "-t",
            "wake",
            "-p",
            "0",
        ])
        .args(["-o", "1", "-c", "1", "-q", "-X", "fetch.wait.max.ms=60000"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let produced = std::time::Instant::now();
    kcat(&nodes[0], &["-P", "-t", "wake", "-p", "0"], "second\n");
    let woken = waiting.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&woken.stdout), "second\n");
    assert!(
        produced.elapsed() < Duration::from_secs(20),
        "the waiting fetch was not woken by the commit: {:?}",
        produced.elapsed()
    );

    // Python clients, each through another node: topic creation, idempotent producers,
    // compression, headers, consuming back.
    if let Some(python) = python() {
        let out = run_client(
            &python,
            &nodes[1],
            "roundtrip.py",
            &["confluent", "py-confluent"],
            "round-tripped",
        );
        assert!(out.contains("200 records round-tripped"), "{out}");
        // kafka-python reads partition 0 of a topic it does not create: made with one
        // partition through node 0 first (CreateTopics).
        let create = "from confluent_kafka.admin import AdminClient, NewTopic; import sys; \
                      a = AdminClient({'bootstrap.servers': sys.argv[1]}); \
                      a.create_topics([NewTopic('py-kafka-python', 1)])['py-kafka-python'].result(30)";
        let out = std::process::Command::new(&python)
            .args(["-c", create, &nodes[0].kafka.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        let out = run_client(
            &python,
            &nodes[2],
            "roundtrip.py",
            &["kafka-python", "py-kafka-python"],
            "round-tripped",
        );
        assert!(out.contains("200 records round-tripped"), "{out}");
        // confluent-kafka's admin client deletes a topic through the cluster: no node lists it.
        let delete = "from confluent_kafka.admin import AdminClient; import sys; \
                      a = AdminClient({'bootstrap.servers': sys.argv[1]}); \
                      a.delete_topics(['py-kafka-python'])['py-kafka-python'].result(30)";
        let out = std::process::Command::new(&python)
            .args(["-c", delete, &nodes[0].kafka.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::output_text(&out));
        for node in &nodes {
            let listed = kcat(node, &["-L"], "");
            assert!(!listed.contains("\"py-kafka-python\""), "{listed}");
        }
        // What one client wrote through one node, another reads through a third.
        let offsets = kcat(
            &nodes[0],
            &[
                "-C",
                "-t",
                "py-confluent",
                "-o",
                "beginning",
                "-e",
                "-q",
                "-f",
                "%o\n",
            ],
            "",
        );
        let expected: String = (0..200).map(|o| format!("{o}\n")).collect();
        assert_eq!(offsets, expected);
    }

    // A killed node drops out of Metadata within the session timeout; the others serve
    // every record and take new ones.
    nodes.pop().unwrap().kill9();
    for node in &nodes {
        eventually("the killed node drops out", Duration::from_secs(30), || {
            brokers(node) == ["0", "1"]
        });
    }
    let third: Vec<String> = (400..450).map(|i| format!("k{}:v{i}", i % 3)).collect();
    kcat(
        &nodes[1],
        &["-P", "-t", "shared", "-K", ":"],
        &(third.join("\n") + "\n"),
    );
    let sent: Vec<String> = sent
        .into_iter()
        .chain(
            third
                .iter()
                .map(|r| r.split_once(':').unwrap().1.to_string()),
        )
        .collect();
    assert_exactly(&read_all(&nodes[0], "shared"), &sent);

    // The killed node, started again with its id on an empty data directory, serves at once:
    // it keeps nothing of its own.
    let fresh = tempfile::tempdir().unwrap();
    nodes.push(start_node(fresh.path(), &db, store.path(), 2));
    assert_exactly(&read_all(&nodes[2], "shared"), &sent);
    eventually(
        "the node is back in Metadata",
        Duration::from_secs(20),
        || brokers(&nodes[0]) == ["0", "1", "2"],
    );

    // SQL on any node lists the live nodes, itself marked.
    let sql = weir_broker::cli::Client::new(&nodes[1].url(), None);
    let expected: Vec<serde_json::Value> = nodes
        .iter()
        .zip(0..)
        .map(|(n, id)| serde_json::json!({"node_id": id, "kafka_port": n.kafka.port(), "this": id == 1}))
        .collect();
    eventually(
        "weir.nodes lists the three",
        Duration::from_secs(20),
        || {
            let listed = sql
                .call(
                    "POST",
                    "/v1/sql",
                    Some(&serde_json::json!({
                        "sql": "SELECT node_id, kafka_port, this FROM weir.nodes ORDER BY node_id"
                    })),
                )
                .unwrap();
            listed["rows"] == serde_json::Value::Array(expected.clone())
        },
    );

    // A node added to the running cluster (a new id) serves everything at once, and the
    // others list it; stopped cleanly, it leaves Metadata at once and takes nothing with it.
    let added_dir = tempfile::tempdir().unwrap();
    let added = start_node(added_dir.path(), &db, store.path(), 3);
    assert_exactly(&read_all(&added, "shared"), &sent);
    eventually("the added node is listed", Duration::from_secs(20), || {
        brokers(&nodes[1]) == ["0", "1", "2", "3"]
    });
    kcat(&added, &["-P", "-t", "shared", "-K", ":"], "k2:v-added\n");
    added.stop();
    // Within a heartbeat or so, well before its session would time out.
    eventually("the stopped node leaves", Duration::from_secs(5), || {
        brokers(&nodes[1]) == ["0", "1", "2"]
    });
    let sent: Vec<String> = sent.into_iter().chain(["v-added".to_string()]).collect();
    assert_exactly(&read_all(&nodes[0], "shared"), &sent);

    // Without the database a node acknowledges nothing: the producer is told it failed, and
    // once the database is back nothing of it was written; new records go in.
    db.stop();
    let refused = kcat_output(
        &nodes[0],
        &[
            "-P",
            "-t",
            "shared",
            "-K",
            ":",
            "-X",
            "message.timeout.ms=3000",
        ],
        "k1:while the database was down\n",
    );
    assert!(
        !refused.status.success(),
        "a produce without the database was acknowledged: {}",
        common::output_text(&refused)
    );
    db.start_again();
    kcat(&nodes[0], &["-P", "-t", "shared", "-K", ":"], "k1:v450\n");
    let sent: Vec<String> = sent.into_iter().chain(["v450".to_string()]).collect();
    assert_exactly(&read_all(&nodes[1], "shared"), &sent);
}

/// The `weir_group_leases` gauge of every node: how many groups each coordinates.
fn group_leases(nodes: &[Node]) -> Vec<f64> {
    nodes
        .iter()
        .map(|n| metric(n, "weir_group_leases"))
        .collect()
}

#[test]
fn three_nodes_on_an_s3_bucket_share_every_partition_and_outlive_a_node() {
    three_nodes_on(S3Server::start);
}

#[test]
fn three_nodes_on_a_gcs_bucket_share_every_partition_and_outlive_a_node() {
    three_nodes_on(GcsServer::start);
}

#[test]
fn three_nodes_on_an_azure_container_share_every_partition_and_outlive_a_node() {
    three_nodes_on(AzureServer::start);
}

/// [`three_nodes_share_every_partition_and_outlive_a_node`] on the store server `start`
/// starts, when kcat and the server are installed.
fn three_nodes_on<S: CloudStore>(start: fn() -> Option<S>) {
    if have("kcat", "apt-get install kcat")
        && let Some(bucket) = start()
    {
        three_nodes_share_every_partition_and_outlive_a_node(&bucket);
    }
}

/// Three nodes on `bucket`, of any cloud store, take keyed records through two of them, each
/// node writing its own objects there; every node reads every record, and when one dies the
/// others serve what it wrote from the bucket and take more.
fn three_nodes_share_every_partition_and_outlive_a_node(bucket: &dyn CloudStore) {
    let Some(db) = Postgres::start() else {
        return;
    };
    let options: Vec<String> = bucket
        .options()
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let mut flags: Vec<&str> = options
        .iter()
        .flat_map(|o| ["--object-store-option", o.as_str()])
        .collect();
    flags.extend(["--cluster-db-connections", "3"]);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let store = bucket.url("kafka");
    let mut nodes: Vec<Node> = dirs
        .iter()
        .zip(0..)
        .map(|(dir, id)| start_node_with(dir.path(), &Listeners::any(), &db, &store, id, &flags))
        .collect();
    for node in &nodes {
        eventually(
            "every node lists three brokers",
            Duration::from_secs(20),
            || brokers(node) == ["0", "1", "2"],
        );
    }

    // Keyed records through node 0 and node 1, each node taking its partitions' batches.
    let records: Vec<String> = (0..300).map(|i| format!("k{}:v{i}", i % 11)).collect();
    let (first, second) = records.split_at(200);
    kcat(
        &nodes[0],
        &["-P", "-t", "shared", "-K", ":", "-z", "zstd"],
        &(first.join("\n") + "\n"),
    );
    kcat(
        &nodes[1],
        &["-P", "-t", "shared", "-K", ":"],
        &(second.join("\n") + "\n"),
    );
    let sent: Vec<String> = records
        .iter()
        .map(|r| r.split_once(':').unwrap().1.to_string())
        .collect();
    let read = read_all(&nodes[2], "shared");
    assert_exactly(&read, &sent);
    assert_eq!(read.len() as u32, PARTITIONS, "records in every partition");
    assert_eq!(read_all(&nodes[0], "shared"), read);

    // The batches are objects in the bucket, under the URL's prefix, written by the nodes
    // that took them.
    let objects = bucket.keys("kafka/data/");
    assert!(!objects.is_empty(), "no objects under kafka/data/");
    for object in &objects {
        let writer = object.trim_start_matches("kafka/data/");
        assert!(
            ["0/", "1/", "2/"].iter().any(|n| writer.starts_with(n)),
            "{object}"
        );
    }

    // Consumers fetch each partition from its leader, the node that took its writes: that node
    // kept what it wrote, in memory and on disk, within the bounds the metrics show, and
    // answered from memory.
    let total = |nodes: &[Node], name: &str| nodes.iter().map(|n| metric(n, name)).sum::<f64>();
    assert!(total(&nodes, "weir_cluster_cache_reads_total{tier=\"memory\"}") > 0.0);
    assert!(total(&nodes, "weir_cluster_cache_bytes") > 0.0);
    assert!(total(&nodes, "weir_cluster_cache_disk_bytes") > 0.0);
    assert_eq!(
        metric(&nodes[0], "weir_cluster_cache_disk_bytes_max"),
        (1u64 << 30) as f64
    );
    assert_eq!(
        metric(&nodes[0], "weir_cluster_parked_bytes_max"),
        (128u64 << 20) as f64
    );
    // Each node's queries and transactions shared its three connections to the database.
    assert_eq!(
        metric(&nodes[0], "weir_cluster_db_connections_lent_max"),
        3.0
    );
    assert!(metric(&nodes[0], "weir_cluster_db_connections_lent") <= 3.0);

    // Node 0 dies: the others still serve every record, from the bucket, and take more.
    nodes.remove(0).kill9();
    for node in &nodes {
        eventually("the killed node drops out", Duration::from_secs(30), || {
            brokers(node) == ["1", "2"]
        });
    }
    kcat(&nodes[0], &["-P", "-t", "shared", "-K", ":"], "k1:after\n");
    let mut sent = sent;
    sent.push("after".to_string());
    assert_exactly(&read_all(&nodes[1], "shared"), &sent);
    // The partitions node 0 led moved to the others, which read its runs from the bucket.
    assert!(total(&nodes, "weir_cluster_cache_reads_total{tier=\"store\"}") > 0.0);
}

#[test]
fn consumer_groups_move_to_a_live_node_when_their_coordinator_dies_and_keep_their_offsets() {
    let Some(db) = Postgres::start() else {
        return;
    };
    let (Some(python), Some(modules)) = (python(), common::node_modules()) else {
        return;
    };
    let (_store, _dirs, mut nodes) = three_nodes(&db);
    eventually("every node lists three", Duration::from_secs(20), || {
        nodes.iter().all(|n| brokers(n).len() == 3)
    });

    // The whole group protocol through a cluster: members joining, splitting, leaving and
    // taking over, commits and a member resuming after them (confluent-kafka), and kafkajs's
    // group reading batches.
    let out = run_client(
        &python,
        &nodes[1],
        "groups.py",
        &["grouped", "range"],
        "groups ok",
    );
    assert!(out.contains("400 + 40 records"), "{out}");
    let js = std::process::Command::new("node")
        .arg(common::client_script("kafkajs.js"))
        .arg(nodes[2].kafka.to_string())
        .arg("from-js")
        .env("NODE_PATH", &modules)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&js.stdout).contains("kafkajs ok: 300 records"),
        "kafkajs: {}",
        common::output_text(&js)
    );

    // One node coordinates a group: the one holding its lease. A member commits 50 of 100.
    let before = group_leases(&nodes);
    assert_eq!(
        before.iter().sum::<f64>(),
        2.0,
        "two groups, one lease each"
    );
    run_client(
        &python,
        &nodes[0],
        "commit_resume.py",
        &["resumed", "before"],
        "before ok",
    );
    let after = group_leases(&nodes);
    let coordinator = (0..3)
        .find(|&i| after[i] == before[i] + 1.0)
        .unwrap_or_else(|| panic!("no node took the group: {before:?} then {after:?}"));

    // The coordinator dies without a word. Its lease runs out, a live node takes the group,
    // and a new member through another node resumes at the committed offset 50.
    nodes.remove(coordinator).kill9();
    run_client(
        &python,
        &nodes[0],
        "commit_resume.py",
        &["resumed", "after"],
        "after ok",
    );
    let moved = group_leases(&nodes);
    assert!(
        moved.iter().sum::<f64>() >= 1.0,
        "a live node coordinates the group now: {moved:?}"
    );

    // OffsetDelete on the cluster: a partition that cannot exist deletes nothing; partition 0
    // deletes its offset.
    let bootstrap = nodes[0].kafka.to_string();
    let committed = || final_commits(&python, &bootstrap, "resumed", "resume", 1);
    assert_eq!(committed(), BTreeMap::from([(0, 50)]));
    assert_eq!(offset_delete(&nodes, "resume", "resumed", -1), 0);
    assert_eq!(
        committed(),
        BTreeMap::from([(0, 50)]),
        "partition -1 is not 0"
    );
    assert_eq!(offset_delete(&nodes, "resume", "resumed", 0), 0);
    assert_eq!(committed(), BTreeMap::new());

    // A commit of more offsets than one transaction may carry is refused, each partition
    // INVALID_REQUEST, and nothing of it is written.
    let bulk = commit_many(&nodes[0], "bulk", "resumed", COMMIT_OFFSETS_MAX + 1);
    assert!(bulk.iter().all(|&code| code == 42), "{:?}", &bulk[..3]);
    assert!(final_commits(&python, &bootstrap, "resumed", "bulk", 1).is_empty());
    let fits = commit_many(&nodes[0], "bulk", "resumed", 3);
    assert_eq!(fits, [0, 0, 0]);
}

/// A stable group whose coordinator dies goes on at the node taking it over, in the same
/// generation: the dead coordinator left it on the group's lease, so its member's heartbeats,
/// its assignment and its commits are accepted there with no rebalance.
#[test]
fn a_stable_group_keeps_its_generation_when_its_coordinator_dies() {
    use bytes::Bytes;
    use common::group_member::Member;
    const COORDINATOR_NOT_AVAILABLE: i16 = 15;
    const NOT_COORDINATOR: i16 = 16;
    let Some(db) = Postgres::start() else {
        return;
    };
    let (_store, _dirs, mut nodes) = three_nodes(&db);
    eventually("every node lists three", Duration::from_secs(20), || {
        nodes.iter().all(|n| brokers(n).len() == 3)
    });
    assert_eq!(create_through(&nodes[0], "steady-input", 1, &[]), 0);
    let group = "steady";
    let mut home = None;
    eventually(
        "a node coordinates the group",
        Duration::from_secs(20),
        || {
            home = coordinator_of(&nodes, &nodes[0], group);
            home.is_some()
        },
    );
    let home = home.unwrap();

    let mut member = Member::connect(&nodes[home], group);
    member.join(30_000, 30_000);
    let mine = Bytes::from_static(b"partitions of mine");
    let synced = member.sync_with(&[(member.id.clone(), mine.clone())]);
    assert_eq!((synced.error_code, &synced.assignment), (0, &mine));
    let (id, generation) = (member.id.clone(), member.generation);
    // The coordinator left the stable generation on the lease before it answered the sync.
    let http = clients(&nodes);
    let lease_name = format!("group:{group}");
    let left = lease(&http[(home + 1) % 3], &lease_name).expect("the group's lease");
    assert_eq!(left["note"]["stable"]["generation"], generation, "{left}");
    assert_eq!(member.commit("steady-input"), 0);

    // Its coordinator dies. As a client does, the member finds the coordinator again and
    // heartbeats there until a live node has taken the group over.
    nodes.remove(home).kill9();
    eventually(
        "a live node coordinates the group",
        Duration::from_secs(60),
        || {
            let Some(at) = coordinator_of(&nodes, &nodes[0], group) else {
                return false;
            };
            member.stream = std::net::TcpStream::connect(nodes[at].kafka).unwrap();
            match member.heartbeat() {
                0 => true,
                COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR => false,
                code => panic!("the member lost its place: heartbeat error {code}"),
            }
        },
    );
    assert_eq!((&member.id, member.generation), (&id, generation));
    let again = member.sync_with(&[]);
    assert_eq!(
        (again.error_code, &again.assignment),
        (0, &mine),
        "the assignment it was given"
    );
    assert_eq!(member.commit("steady-input"), 0);
    // The node that took it over leaves it on the lease in turn.
    let http = clients(&nodes);
    eventually(
        "the taker leaves the group on the lease",
        Duration::from_secs(20),
        || {
            lease(&http[0], &lease_name).is_some_and(|l| {
                l["holder"] != home.to_string().as_str()
                    && l["note"]["stable"]["generation"] == generation
            })
        },
    );
}

/// A confluent-kafka member goes on through its coordinator's death as it would on Kafka: it
/// finds the node that took the group over and keeps its member id and its partitions, with
/// no revocation and no second assignment, and reads every record once.
#[test]
fn a_confluent_kafka_member_keeps_its_partitions_when_its_coordinator_dies() {
    use std::io::BufRead;
    let Some(db) = Postgres::start() else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let (_store, dirs, mut nodes) = three_nodes_with_input(&db);
    let http = clients(&nodes);
    produce_twenty(&http[0], 0, |i| format!("r{i}"));
    // Every node, as a client that must outlive any one of them is given.
    let bootstrap: Vec<String> = nodes.iter().map(|n| n.kafka.to_string()).collect();
    let (stop_file, member_log) = (
        dirs[0].path().join("stop"),
        dirs[0].path().join("member.log"),
    );
    let mut member = std::process::Command::new(&python)
        .arg(common::client_script("failover_member.py"))
        .arg(bootstrap.join(","))
        .arg("input")
        .arg(&stop_file)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&member_log).unwrap())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(member.stdout.take().unwrap()).lines();
    let logged = || std::fs::read_to_string(&member_log).unwrap_or_default();
    let first = lines.next().and_then(Result::ok);
    assert_eq!(first.as_deref(), Some("assigned"), "{}", logged());
    let lease_name = "group:steady-client";
    let mut home = None;
    eventually(
        "the generation is on the lease",
        Duration::from_secs(20),
        || {
            let Some(l) = lease(&http[0], lease_name) else {
                return false;
            };
            home = l["holder"].as_str().and_then(|h| h.parse::<usize>().ok());
            l["note"]["stable"].is_object()
        },
    );

    nodes.remove(home.expect("a holder")).kill9();
    let http = clients(&nodes);
    produce_twenty(&http[0], 20, |i| format!("r{i}"));
    std::fs::write(&stop_file, "40").unwrap();
    let last = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(member.wait().unwrap().success(), "{last}\n{}", logged());
    assert_eq!(
        last,
        "assigned 1 revoked 0 same member True read 40 distinct 40",
        "assignments, revocations and records of the member\n{}",
        logged()
    );
}

/// The node FindCoordinator through `via` names for `group`, as an index of `nodes`; `None`
/// when it answers an error or names a node not among them.
fn coordinator_of(nodes: &[Node], via: &Node, group: &str) -> Option<usize> {
    use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
    let mut request = FindCoordinatorRequest::default();
    request.key = text(group);
    let response: FindCoordinatorResponse = call(via, ApiKey::FindCoordinator, 3, &request);
    if response.error_code != 0 {
        return None;
    }
    nodes
        .iter()
        .position(|n| i32::from(n.kafka.port()) == response.port)
}

/// Commits offset 7 for partition 0 of `topic`, `count` times over in one OffsetCommit outside
/// any group membership; each entry's error code.
fn commit_many(node: &Node, group: &str, topic: &str, count: usize) -> Vec<i16> {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.to_string()));
    request.generation_id_or_member_epoch = -1;
    let mut t = OffsetCommitRequestTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    let mut p = OffsetCommitRequestPartition::default();
    p.committed_offset = 7;
    t.partitions = vec![p; count];
    request.topics.push(t);
    let mut stream = std::net::TcpStream::connect(node.kafka).unwrap();
    let response: OffsetCommitResponse =
        common::kafka_call(&mut stream, ApiKey::OffsetCommit, 8, &request);
    response.topics[0]
        .partitions
        .iter()
        .map(|p| p.error_code)
        .collect()
}

#[test]
fn a_node_takes_no_more_group_leases_than_its_bound() {
    use kafka_protocol::messages::{ApiKey, GroupId, HeartbeatRequest, HeartbeatResponse};
    let Some(db) = Postgres::start() else {
        return;
    };
    let (store, dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let node = start_node(dir.path(), &db, store.path(), 0);
    let bound = metric(&node, "weir_group_leases_max") as usize;
    assert!(bound > 0, "the bound is on /metrics");
    // A heartbeat takes the group's lease, then finds no such member: the group holds nothing
    // else, so the lease alone is what a refusal can come from.
    let heartbeat = |stream: &mut std::net::TcpStream, group: &str| {
        let mut request = HeartbeatRequest::default();
        request.group_id = GroupId(text(group));
        request.member_id = text("m");
        let response: HeartbeatResponse =
            common::kafka_call(stream, ApiKey::Heartbeat, 4, &request);
        response.error_code
    };
    const CALLERS: usize = 8;
    let kafka = node.kafka;
    std::thread::scope(|s| {
        for caller in 0..CALLERS {
            let heartbeat = &heartbeat;
            s.spawn(move || {
                let mut stream = std::net::TcpStream::connect(kafka).unwrap();
                for g in (caller..bound).step_by(CALLERS) {
                    let code = heartbeat(&mut stream, &format!("g{g}"));
                    assert_eq!(code, 25, "UNKNOWN_MEMBER_ID for group g{g}");
                }
            });
        }
    });
    assert_eq!(metric(&node, "weir_group_leases"), bound as f64);
    let mut stream = std::net::TcpStream::connect(node.kafka).unwrap();
    assert_eq!(
        heartbeat(&mut stream, "one-too-many"),
        81,
        "GROUP_MAX_SIZE_REACHED past the bound"
    );
    assert_eq!(
        heartbeat(&mut stream, "g0"),
        25,
        "a held group still answers"
    );
    assert_eq!(metric(&node, "weir_group_leases"), bound as f64);
    // A lease is renewed once a third of its 10 s has run, not at every 1 s heartbeat: the
    // time left on it falls below 8 s between renewals, and never to the last third, where
    // its holder would stop acting.
    let http = weir_broker::cli::Client::new(&node.url(), None);
    let mut left = Vec::new();
    for _ in 0..30 {
        let g0 = lease(&http, "group:g0").expect("g0's lease is listed");
        left.push(g0["expires_in_ms"].as_i64().unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let least = *left.iter().min().unwrap();
    assert!(
        (3_400..8_000).contains(&least),
        "ms left on the lease over 6 s: {left:?}"
    );
    assert_eq!(heartbeat(&mut stream, "g0"), 25, "g0 is still held here");
    // The refused group's lease was never taken: another node may take it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = start_node(other_dir.path(), &db, store.path(), 1);
    let mut to_other = std::net::TcpStream::connect(other.kafka).unwrap();
    assert_eq!(heartbeat(&mut to_other, "one-too-many"), 25);
    assert_eq!(metric(&other, "weir_group_leases"), 1.0);
    // A node that stops gives all its group leases back: the other takes any of them at once.
    node.stop();
    assert_eq!(heartbeat(&mut to_other, &format!("g{}", bound - 1)), 25);
    assert_eq!(metric(&other, "weir_group_leases"), 2.0);
    let summary = weir_broker::cli::Client::new(&other.url(), None)
        .call("GET", "/v1/cluster", None)
        .unwrap();
    let groups: Vec<&str> = summary["leases"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["name"].as_str()?.strip_prefix("group:"))
        .collect();
    let last = format!("g{}", bound - 1);
    assert_eq!(groups, [last.as_str(), "one-too-many"], "{summary}");
}

/// The groups ListGroups through `node` lists.
fn list_groups(node: &Node) -> Vec<String> {
    use kafka_protocol::messages::{ApiKey, ListGroupsRequest, ListGroupsResponse};
    let response: ListGroupsResponse =
        call(node, ApiKey::ListGroups, 4, &ListGroupsRequest::default());
    assert_eq!(response.error_code, 0);
    response
        .groups
        .iter()
        .map(|g| g.group_id.to_string())
        .collect()
}

/// Sends OffsetDelete for one partition to the node coordinating `group` (the others answer
/// NOT_COORDINATOR); the partition's error code.
fn offset_delete(nodes: &[Node], group: &str, topic: &str, partition: i32) -> i16 {
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, GroupId, OffsetDeleteRequest, OffsetDeleteResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;
    const NOT_COORDINATOR: i16 = 16;
    let mut request = OffsetDeleteRequest::default();
    request.group_id = GroupId(StrBytes::from_string(group.to_string()));
    let mut t = OffsetDeleteRequestTopic::default();
    t.name = TopicName(StrBytes::from_string(topic.to_string()));
    let mut p = OffsetDeleteRequestPartition::default();
    p.partition_index = partition;
    t.partitions.push(p);
    request.topics.push(t);
    for node in nodes {
        let mut stream = std::net::TcpStream::connect(node.kafka).unwrap();
        let response: OffsetDeleteResponse =
            common::kafka_call(&mut stream, ApiKey::OffsetDelete, 0, &request);
        let code = response.topics[0].partitions[0].error_code;
        if response.error_code == 0 && code != NOT_COORDINATOR {
            return code;
        }
    }
    panic!("no node coordinates {group}");
}

/// The cluster's consistency check: idempotent acks=all producers, a committing consumer group
/// and a plugin pipeline copying every record, bootstrapped from all three nodes, while a seeded
/// schedule `kill -9`s a node and starts it again, and once pauses Postgres (SIGSTOP).
/// Afterwards every acknowledged record is at its offset once, offsets per partition run from 0
/// without a gap, per key the records are in order, no confirmed commit was followed by a lower
/// one, and the pipeline's output holds every record once, whichever nodes ran it.
/// `WEIR_CLUSTER_CHECK_CYCLES` sets the kills (20 by default), `WEIR_CHECK_SEED` replays a
/// schedule; both are printed.
#[test]
fn acknowledged_records_and_commits_survive_nodes_killed_on_a_seeded_schedule() {
    const TOPIC: &str = "events";
    const GROUP: &str = "checker";
    const COPIED: &str = "copied";
    let Some(db) = Postgres::start() else {
        return;
    };
    let Some(python) = python() else {
        return;
    };
    let cycles = setting("WEIR_CLUSTER_CHECK_CYCLES", 20);
    let seed = setting("WEIR_CHECK_SEED", now_ms() as u64);
    eprintln!("cluster checker: seed {seed}, {cycles} kills (WEIR_CHECK_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let store = tempfile::tempdir().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let listeners: Vec<Listeners> = (0..3).map(|_| Listeners::fixed()).collect();
    let start =
        |i: usize| start_node_on(dirs[i].path(), &listeners[i], &db, store.path(), i as u32);
    let mut nodes: Vec<Node> = (0..3).map(start).collect();
    kcat(&nodes[0], &["-P", "-t", TOPIC, "-p", "0"], "warm:0\n");
    // A pipeline copying every record, made through other nodes than the one it may run on.
    let http = clients(&nodes);
    let copied = serde_json::json!({ "name": COPIED, "partitions": PARTITIONS });
    http[0].call("POST", "/v1/topics", Some(&copied)).unwrap();
    let wasm = std::fs::read(plugin_wasm("regex-filter").unwrap()).unwrap();
    let path = "/v1/plugins/copy?pattern=.";
    http[1]
        .send("PUT", path, "application/wasm", &wasm)
        .unwrap();
    let spec = serde_json::json!({ "name": "copy", "from": TOPIC, "through": ["copy"],
                                   "to": [COPIED], "from_offset": "earliest" });
    http[2].call("POST", "/v1/pipelines", Some(&spec)).unwrap();
    let bootstrap = listeners
        .iter()
        .map(|l| l.kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let producers: Vec<Traffic> = (0..2)
        .map(|id| {
            Traffic::start(
                &python,
                &["produce", &bootstrap, TOPIC, &id.to_string(), "4"],
            )
        })
        .collect();
    let consumer = Traffic::start(&python, &["consume", &bootstrap, TOPIC, GROUP]);

    let pause_at = rng.random_range(0..cycles.max(1));
    for cycle in 0..cycles {
        let acked_before: usize = producers.iter().map(Traffic::count).sum();
        eventually(
            &format!("cycle {cycle}: acks go on"),
            Duration::from_secs(60),
            || {
                if let Some(fatal) = producers.iter().find_map(Traffic::fatal) {
                    panic!("seed {seed}, cycle {cycle}: a producer stopped: {fatal}");
                }
                producers.iter().map(Traffic::count).sum::<usize>() > acked_before
            },
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
        if cycle == pause_at {
            db.pause();
            std::thread::sleep(Duration::from_millis(rng.random_range(500..3000)));
            db.resume();
        }
        let victim = rng.random_range(0..3);
        eprintln!(
            "{:.1} cycle {cycle}: kill node {victim}",
            now_ms() as f64 / 1000.0
        );
        nodes.remove(victim).kill9();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..1000)));
        nodes.insert(victim, start(victim));
    }

    // On a loaded machine the group may not have settled between kills; once they stop, wait
    // for its commits, so the commit checks below have work to check.
    eventually(
        &format!("seed {seed}: the consumer commits"),
        Duration::from_secs(60),
        || consumer.count() >= cycles as usize,
    );
    let (acks, commits) = Traffic::stop_all(producers, consumer);
    let finals = final_commits(&python, &bootstrap, TOPIC, GROUP, PARTITIONS);
    let http = clients(&nodes);
    eventually(
        &format!("seed {seed}: the pipeline catches up"),
        Duration::from_secs(120),
        || {
            let listed = pipeline_on_each(&http, "copy");
            listed
                .iter()
                .any(|p| p["status"] == "running" && p["lag"] == 0)
        },
    );
    // Each partition's (offset, value) of `topic`; offsets that do not run 0.. are a gap.
    let mut gaps = 0;
    let mut read = |topic: &str| -> Vec<Vec<(i64, String)>> {
        let read = read_all(&nodes[1], topic);
        (0..PARTITIONS)
            .map(|p| {
                let records = read.get(&p).cloned().unwrap_or_default();
                let offsets: Vec<u64> = records.iter().map(|r| r.0).collect();
                if offsets != (0..records.len() as u64).collect::<Vec<_>>() {
                    gaps += 1;
                    eprintln!("{topic} {p}: offsets are not 0..{}", records.len());
                }
                records
                    .into_iter()
                    .map(|(offset, _, value)| (offset as i64, value))
                    .collect()
            })
            .collect()
    };
    let input = read(TOPIC);
    let output: Vec<String> = read(COPIED).into_iter().flatten().map(|r| r.1).collect();
    let mut f = Findings::default();
    let seen = f.check_records(&input, &acks);
    f.check_commits(&commits, &finals);
    f.check_piped(&seen, &output);
    f.gaps += gaps;
    eprintln!("cluster checker: seed {seed}, {cycles} kills: {f:?}");
    assert!(
        f.acked >= cycles as usize * 10 && f.commits >= cycles as usize && f.piped > 0,
        "too little work to check: {f:?}"
    );
    assert_eq!(
        (f.lost, f.duplicates, f.reorders, f.regressions, f.gaps),
        (0, 0, 0, 0, 0),
        "seed {seed}: {f:?}"
    );
}

/// One admin or produce request to one node, answered.
fn call<Req, Resp>(
    node: &Node,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    r: &Req,
) -> Resp
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    let mut stream = std::net::TcpStream::connect(node.kafka).unwrap();
    common::kafka_call(&mut stream, key, version, r)
}

fn text(s: &str) -> kafka_protocol::protocol::StrBytes {
    kafka_protocol::protocol::StrBytes::from_string(s.to_string())
}

/// CreateTopics through `node`: the topic's error code.
fn create_through(node: &Node, topic: &str, partitions: i32, configs: &[(&str, &str)]) -> i16 {
    use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
    use kafka_protocol::messages::{ApiKey, CreateTopicsRequest, CreateTopicsResponse, TopicName};
    let mut t = CreatableTopic::default();
    t.name = TopicName(text(topic));
    t.num_partitions = partitions;
    t.replication_factor = 1;
    for (key, value) in configs {
        let mut c = CreatableTopicConfig::default();
        c.name = text(key);
        c.value = Some(text(value));
        t.configs.push(c);
    }
    let mut request = CreateTopicsRequest::default();
    request.topics.push(t);
    request.timeout_ms = 10_000;
    let response: CreateTopicsResponse = call(node, ApiKey::CreateTopics, 5, &request);
    response.topics[0].error_code
}

/// The configs set explicitly on `topic`, as DescribeConfigs through `node` answers them.
fn configs_through(node: &Node, topic: &str) -> BTreeMap<String, String> {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::{ApiKey, DescribeConfigsRequest, DescribeConfigsResponse};
    const TOPIC_CONFIG: i8 = 1;
    let mut resource = DescribeConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = text(topic);
    let mut request = DescribeConfigsRequest::default();
    request.resources.push(resource);
    let response: DescribeConfigsResponse = call(node, ApiKey::DescribeConfigs, 1, &request);
    let result = &response.results[0];
    assert_eq!(result.error_code, 0, "{:?}", result.error_message);
    result
        .configs
        .iter()
        .filter(|c| c.config_source == TOPIC_CONFIG)
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_deref().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// IncrementalAlterConfigs setting one key of `topic` through `node`: the error code.
fn set_config_through(node: &Node, topic: &str, key: &str, value: &str) -> i16 {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        ApiKey, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
    };
    let mut config = AlterableConfig::default();
    config.name = text(key);
    config.value = Some(text(value));
    let mut resource = AlterConfigsResource::default();
    resource.resource_type = 2;
    resource.resource_name = text(topic);
    resource.configs.push(config);
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources.push(resource);
    let response: IncrementalAlterConfigsResponse =
        call(node, ApiKey::IncrementalAlterConfigs, 0, &request);
    response.responses[0].error_code
}

/// DeleteTopics through `node`: the topic's error code.
fn delete_through(node: &Node, topic: &str) -> i16 {
    use kafka_protocol::messages::{ApiKey, DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
    let mut request = DeleteTopicsRequest::default();
    request.topic_names.push(TopicName(text(topic)));
    request.timeout_ms = 10_000;
    let response: DeleteTopicsResponse = call(node, ApiKey::DeleteTopics, 4, &request);
    response.responses[0].error_code
}

/// Produces one record of `value` to a partition through `node`: error code and base offset.
fn produce_through(node: &Node, topic: &str, partition: i32, value: &str) -> (i16, i64) {
    let batch =
        weir_tests::hostile::one_record_batch(weir_storage::Compression::None, value.as_bytes());
    let mut stream = std::net::TcpStream::connect(node.kafka).unwrap();
    common::produce(&mut stream, topic, partition, batch.into())
}

/// Topics made, configured, grown, deleted and made again, each step through another node:
/// every node answers from the cluster's topics, never a copy of its own, and a node that
/// cached a topic before it changed acts on the new one.
#[test]
fn topics_are_configured_grown_and_deleted_through_any_node() {
    const MESSAGE_TOO_LARGE: i16 = 10;
    const INVALID_PARTITIONS: i16 = 37;
    const INVALID_CONFIG: i16 = 40;
    const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let Some(db) = Postgres::start() else {
        return;
    };
    let (_store, _dirs, nodes) = three_nodes(&db);

    assert_eq!(
        create_through(&nodes[0], "orders", 1, &[("max.message.bytes", "1000")]),
        0
    );
    for node in &nodes[1..] {
        let expected = [("max.message.bytes".to_string(), "1000".to_string())].into();
        assert_eq!(configs_through(node, "orders"), expected);
    }
    assert_eq!(produce_through(&nodes[2], "orders", 0, "first"), (0, 0));
    let long = "x".repeat(2000);
    assert_eq!(
        produce_through(&nodes[1], "orders", 0, &long).0,
        MESSAGE_TOO_LARGE
    );

    // A new bound set through node 2 reaches node 1, which cached the old one.
    assert_eq!(
        set_config_through(&nodes[2], "orders", "max.message.bytes", "100000"),
        0
    );
    let mut appended = (0, 0);
    eventually(
        "node 1 takes the new bound",
        Duration::from_secs(10),
        || {
            appended = produce_through(&nodes[1], "orders", 0, &long);
            appended.0 == 0
        },
    );
    assert_eq!(appended, (0, 1));
    assert_eq!(
        set_config_through(&nodes[0], "orders", "cleanup.policy", "sometimes"),
        INVALID_CONFIG
    );
    assert_eq!(
        configs_through(&nodes[0], "orders")["max.message.bytes"],
        "100000"
    );

    // Grown through node 1; node 2 appends to a new partition at once.
    assert_eq!(common::grow_topic(&nodes[1], "orders", 3), 0);
    assert_eq!(
        common::grow_topic(&nodes[0], "orders", 2),
        INVALID_PARTITIONS
    );
    assert_eq!(produce_through(&nodes[2], "orders", 2, "grown"), (0, 0));
    // Metadata answers from each node's copy, which the change's announcement refreshes.
    for node in &nodes {
        eventually(
            "Metadata lists 3 partitions",
            Duration::from_secs(10),
            || kcat(node, &["-L", "-t", "orders"], "").contains("with 3 partitions"),
        );
    }

    // Deleted through node 0 and made again through node 1: node 2, which cached the old
    // topic, appends to the new one from offset 0, and every node reads only that record.
    assert_eq!(delete_through(&nodes[0], "orders"), 0);
    assert_eq!(
        delete_through(&nodes[1], "orders"),
        UNKNOWN_TOPIC_OR_PARTITION
    );
    assert_eq!(create_through(&nodes[1], "orders", 1, &[]), 0);
    let mut appended = (0, 0);
    eventually(
        "node 2 appends to the new topic",
        Duration::from_secs(10),
        || {
            appended = produce_through(&nodes[2], "orders", 0, "again");
            appended.0 == 0
        },
    );
    assert_eq!(appended, (0, 0));
    for node in &nodes {
        let read = read_all(node, "orders");
        let values: Vec<&str> = read.values().flatten().map(|r| r.2.as_str()).collect();
        assert_eq!(values, ["again"]);
        assert!(configs_through(node, "orders").is_empty());
    }

    // The HTTP API (and so `weir topic`) on the same topics, each call through another node.
    let http = clients(&nodes);
    let body = serde_json::json!({
        "name": "audit", "partitions": 2, "configs": { "retention.ms": "3600000" }
    });
    let made = http[2].call("POST", "/v1/topics", Some(&body)).unwrap();
    assert_eq!(made["partitions"], 2, "{made}");
    let listed = http[0].call("GET", "/v1/topics", None).unwrap();
    let orders = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "orders")
        .unwrap_or_else(|| panic!("orders is not listed: {listed}"));
    assert_eq!(orders["records"], 1, "{orders}");
    assert!(orders["size_bytes"].as_u64().unwrap() > 0, "{orders}");
    let changes = serde_json::json!({ "set": { "max.message.bytes": "5000" } });
    let altered = http[1]
        .call("PATCH", "/v1/topics/audit/configs", Some(&changes))
        .unwrap();
    assert_eq!(altered["configs"]["retention.ms"], "3600000", "{altered}");
    assert_eq!(
        configs_through(&nodes[0], "audit")["max.message.bytes"],
        "5000"
    );
    let described = http[0].call("GET", "/v1/topics/orders", None).unwrap();
    assert_eq!(
        described["partitions"][0]["high_watermark"], 1,
        "{described}"
    );
    // Records produced over HTTP through one node are read through another.
    let body = serde_json::json!({ "records": [{ "value": "over http", "partition": 0 }] });
    let placed = http[1]
        .call("POST", "/v1/topics/orders/records", Some(&body))
        .unwrap();
    assert_eq!(placed["offsets"][0]["offset"], 1, "{placed}");
    let read = read_all(&nodes[2], "orders");
    assert_eq!(read[&0][1].2, "over http");
    http[0].call("DELETE", "/v1/topics/audit", None).unwrap();
    let gone = http[2].call("GET", "/v1/topics/audit", None).unwrap_err();
    assert!(gone.to_string().contains("404"), "{gone}");
}

/// The values of a page of `GET /v1/topics/{name}/records`.
fn page_values(page: &serde_json::Value) -> Vec<String> {
    let records = page["records"].as_array();
    let records = records.unwrap_or_else(|| panic!("no records in {page}"));
    records
        .iter()
        .map(|r| r["value"].as_str().unwrap().to_string())
        .collect()
}

/// Records produced through each node are paged over HTTP and queried with SQL through the
/// others: both read the cluster's shared log, never the node's own storage.
#[test]
fn record_pages_and_sql_read_the_cluster_through_any_node() {
    use serde_json::json;
    /// 2024-01-01T00:00:00Z
    const T0: i64 = 1_704_067_200_000;
    let Some(db) = Postgres::start() else {
        return;
    };
    // Retention runs every half second, for the end of the test.
    let (_store, _dirs, nodes) = three_nodes_with(&db, &["--retention-check-ms", "500"]);
    let http = clients(&nodes);
    // Kept whatever the records' age until the end, where retention takes them.
    let made = json!({ "name": "events", "partitions": 2, "configs": { "retention.ms": "-1" } });
    http[0].call("POST", "/v1/topics", Some(&made)).unwrap();
    // Three runs of ten records, each produced through another node: event i on partition
    // i % 2, stamped i seconds after T0.
    for run in 0..3i64 {
        let records: Vec<serde_json::Value> = (run * 10..run * 10 + 10)
            .map(|i| {
                json!({
                    "key": format!("k{i}"), "value": format!("event-{i}"),
                    "partition": i % 2, "timestamp": T0 + i * 1000,
                })
            })
            .collect();
        let body = json!({ "records": records });
        http[run as usize]
            .call("POST", "/v1/topics/events/records", Some(&body))
            .unwrap();
    }
    let page = |node: usize, query: &str| {
        let path = format!("/v1/topics/events/records?{query}");
        http[node].call("GET", &path, None).unwrap()
    };
    let events =
        |numbers: &[i64]| -> Vec<String> { numbers.iter().map(|i| format!("event-{i}")).collect() };

    // Forwards from the start.
    let first = page(1, "partition=0&limit=4");
    assert_eq!(page_values(&first), events(&[0, 2, 4, 6]), "{first}");
    assert_eq!(first["next_offset"], 4, "{first}");
    assert_eq!(first["high_watermark"], 15, "{first}");
    // Backwards from the end, over two runs.
    let last = page(2, "partition=1&before=15&limit=7");
    assert_eq!(
        page_values(&last),
        events(&[17, 19, 21, 23, 25, 27, 29]),
        "{last}"
    );
    assert_eq!(last["scanned_from"], 8, "{last}");
    // From a time, and only what holds a text.
    let timed = page(0, &format!("partition=0&timestamp={}&limit=2", T0 + 20_000));
    assert_eq!(page_values(&timed), events(&[20, 22]), "{timed}");
    let found = page(1, "partition=1&contains=event-13");
    assert_eq!(page_values(&found), events(&[13]), "{found}");
    assert_eq!(found["records_scanned"], 15, "{found}");
    let missing = http[1].call("GET", "/v1/topics/nothing/records", None);
    let missing = missing.unwrap_err().to_string();
    assert!(missing.contains("404"), "{missing}");

    // SQL through node 2 sees every record, whichever node took it.
    let rows_at = |node: usize, statement: &str| {
        let answer = http[node]
            .call("POST", "/v1/sql", Some(&json!({ "sql": statement })))
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
        answer["rows"].clone()
    };
    let rows = |statement: &str| rows_at(2, statement);
    assert_eq!(
        rows("SELECT count(*) AS n FROM events"),
        json!([{ "n": 30 }])
    );
    assert_eq!(
        rows(
            "SELECT key_text, value_text FROM events \
             WHERE partition = 1 AND \"offset\" >= 13 ORDER BY \"offset\""
        ),
        json!([
            { "key_text": "k27", "value_text": "event-27" },
            { "key_text": "k29", "value_text": "event-29" },
        ])
    );
    let since = format!(
        "SELECT count(*) AS n FROM events WHERE \"timestamp\" >= to_timestamp_millis({})",
        T0 + 20_000
    );
    assert_eq!(rows(&since), json!([{ "n": 10 }]));
    assert_eq!(
        rows(
            "SELECT partition, start_offset, end_offset, segments FROM weir.partitions \
             WHERE topic = 'events' ORDER BY partition"
        ),
        json!([
            { "partition": 0, "start_offset": 0, "end_offset": 15, "segments": 3 },
            { "partition": 1, "start_offset": 0, "end_offset": 15, "segments": 3 },
        ])
    );
    assert_eq!(
        rows("SELECT partitions FROM weir.topics WHERE name = 'events'"),
        json!([{ "partitions": 2 }])
    );
    // SQL appends are flushed like any produce: a topic made by CREATE TABLE … AS SELECT
    // through node 0 and a row inserted through node 2 are read through node 1.
    rows_at(
        0,
        "CREATE TABLE late WITH (partitions = 2) AS \
         SELECT value_text AS event, partition AS source FROM events WHERE \"offset\" >= 13",
    );
    rows_at(2, "INSERT INTO late (event, source) VALUES ('from-sql', 9)");
    assert_eq!(
        rows_at(1, "SELECT event, source FROM late ORDER BY event"),
        json!([
            { "event": "event-26", "source": 0 },
            { "event": "event-27", "source": 1 },
            { "event": "event-28", "source": 0 },
            { "event": "event-29", "source": 1 },
            { "event": "from-sql", "source": 9 },
        ])
    );
    assert_eq!(
        rows_at(1, "SELECT partitions FROM weir.topics WHERE name = 'late'"),
        json!([{ "partitions": 2 }])
    );
    // A CREATE TABLE … AS SELECT whose rows fail once the topic is made leaves no topic
    // behind on the cluster.
    let broken = "CREATE TABLE broken AS SELECT CAST(value_text AS INT) AS n FROM events";
    let failed = http[0].call("POST", "/v1/sql", Some(&json!({ "sql": broken })));
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(
        rows_at(
            1,
            "SELECT count(*) AS n FROM weir.topics WHERE name = 'broken'"
        ),
        json!([{ "n": 0 }])
    );
    assert_eq!(
        rows("SELECT count(*) AS n FROM events"),
        json!([{ "n": 30 }])
    );
    // A pipeline through a plugin no node deployed is refused, naming it, and nothing is made.
    let spec = json!({ "name": "copy", "from": "events", "to": ["copied"], "through": ["x"] });
    let refused = http[1].call("POST", "/v1/pipelines", Some(&spec));
    let refused = refused.unwrap_err().to_string();
    assert!(refused.contains("plugin x does not exist"), "{refused}");
    assert_eq!(
        rows("SELECT count(*) AS n FROM weir.topics WHERE name = 'copied'"),
        json!([{ "n": 0 }])
    );

    // Back to the default retention of 7 days, every run (stamped in 2024) is past it: the
    // node holding the retention lease drops them all, and every node reads the new start.
    let reset = json!({ "set": {}, "delete": ["retention.ms"] });
    http[0]
        .call("PATCH", "/v1/topics/events/configs", Some(&reset))
        .unwrap();
    let starts = || -> Vec<u64> {
        let topic = http[1].call("GET", "/v1/topics/events", None).unwrap();
        let partitions = topic["partitions"].as_array().unwrap().iter();
        partitions
            .map(|p| p["log_start_offset"].as_u64().unwrap())
            .collect()
    };
    eventually(
        "retention drops the expired runs",
        Duration::from_secs(20),
        || starts() == [15, 15],
    );
    assert_eq!(
        rows("SELECT count(*) AS n FROM events"),
        json!([{ "n": 0 }])
    );
    let earliest = kcat(&nodes[0], &["-Q", "-t", "events:1:-2"], "");
    assert!(earliest.contains("offset 15"), "{earliest}");
    let dropped: f64 = nodes
        .iter()
        .map(|n| metric(n, "weir_cluster_retention_runs_dropped_total"))
        .sum();
    assert_eq!(dropped, 6.0, "three runs of two partitions, dropped once");
}

/// An HTTP client of each node.
fn clients(nodes: &[Node]) -> Vec<weir_broker::cli::Client> {
    let client = |n: &Node| weir_broker::cli::Client::new(&n.url(), None);
    nodes.iter().map(client).collect()
}

/// [`three_nodes`], with a topic `input` of two partitions.
fn three_nodes_with_input(db: &Postgres) -> (tempfile::TempDir, Vec<tempfile::TempDir>, Vec<Node>) {
    let (store, dirs, nodes) = three_nodes(db);
    let made = serde_json::json!({ "name": "input", "partitions": 2 });
    let created = clients(&nodes)[0].call("POST", "/v1/topics", Some(&made));
    created.unwrap();
    (store, dirs, nodes)
}

/// Produces records `from..from + 20` of `input` through `client`, record `i` to partition
/// `i % 2` with the value `value(i)`.
fn produce_twenty(client: &weir_broker::cli::Client, from: usize, value: impl Fn(usize) -> String) {
    let records: Vec<serde_json::Value> = (from..from + 20)
        .map(|i| serde_json::json!({ "value": value(i), "partition": i % 2 }))
        .collect();
    let body = serde_json::json!({ "records": records });
    client
        .call("POST", "/v1/topics/input/records", Some(&body))
        .unwrap();
}

/// The rows `statement` answers through `client`.
fn sql_rows(
    client: &weir_broker::cli::Client,
    statement: &str,
) -> anyhow::Result<serde_json::Value> {
    let sql = serde_json::json!({ "sql": statement });
    Ok(client.call("POST", "/v1/sql", Some(&sql))?["rows"].clone())
}

/// The node holding lease `name`, as the cluster summary of `client`'s node names it.
fn lease_holder(client: &weir_broker::cli::Client, name: &str) -> Option<String> {
    let lease = lease(client, name)?;
    lease["holder"].as_str().map(str::to_string)
}

/// Lease `name` as the cluster's status through `client` shows it.
fn lease(client: &weir_broker::cli::Client, name: &str) -> Option<serde_json::Value> {
    let summary = client.call("GET", "/v1/cluster", None).ok()?;
    let leases = summary["leases"].as_array()?.clone();
    leases.into_iter().find(|l| l["name"] == name)
}

/// Pipeline `name` as each node lists it (`null` where it is not listed).
fn pipeline_on_each(http: &[weir_broker::cli::Client], name: &str) -> Vec<serde_json::Value> {
    let listed = |client: &weir_broker::cli::Client| {
        let listed = client.call("GET", "/v1/pipelines", None).unwrap();
        let found = listed
            .as_array()
            .and_then(|l| l.iter().find(|p| p["spec"]["name"] == name).cloned());
        found.unwrap_or_default()
    };
    http.iter().map(listed).collect()
}

/// The status of pipeline `name` on each node (`none` where it is not listed).
fn pipeline_statuses(http: &[weir_broker::cli::Client], name: &str) -> Vec<String> {
    let status = |p: serde_json::Value| p["status"].as_str().unwrap_or("none").to_string();
    pipeline_on_each(http, name)
        .into_iter()
        .map(status)
        .collect()
}

/// Waits until node `home` runs pipeline `name` and every other node stands by.
fn runs_only_on(http: &[weir_broker::cli::Client], name: &str, home: usize) {
    eventually("every node lists it", Duration::from_secs(10), || {
        let statuses = pipeline_statuses(http, name);
        (0..http.len()).all(|n| statuses[n] == if n == home { "running" } else { "standby" })
    });
}

/// Waits until every node, the one running pipeline `name` and those standing by, shows it
/// with `records_in` and `records_out`: standing by, as of its runner's last checkpoint.
fn counts_everywhere(http: &[weir_broker::cli::Client], name: &str, records_in: u64, out: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let seen: Vec<_> = pipeline_on_each(http, name)
            .iter()
            .map(|p| (p["records_in"].as_u64(), p["records_out"].as_u64()))
            .collect();
        if seen.iter().all(|c| *c == (Some(records_in), Some(out))) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pipeline {name}: (records in, out) on each node {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Drops pipeline `name` through `http[0]` and waits until no node lists it; its lease is
/// given back.
fn dropped_everywhere(http: &[weir_broker::cli::Client], name: &str) {
    sql_rows(&http[0], &format!("DROP PIPELINE {name}")).unwrap();
    eventually("no node lists it", Duration::from_secs(10), || {
        pipeline_statuses(http, name).iter().all(|s| s == "none")
    });
    assert_eq!(lease_holder(&http[1], &format!("pipeline:{name}")), None);
}

/// A SQL pipeline on a cluster runs on the node holding its lease, reading and writing the
/// cluster's topics; every node lists it. When that node dies, a live node takes the lease
/// over and goes on from the checkpoint, and every result is written once. Dropped through
/// any node, it stops everywhere.
#[test]
fn a_sql_pipeline_runs_on_one_node_and_moves_to_a_live_one_when_it_dies() {
    use serde_json::json;
    let Some(db) = Postgres::start() else {
        return;
    };
    let (_store, _dirs, mut nodes) = three_nodes_with_input(&db);
    let http = clients(&nodes);
    let statement = "CREATE PIPELINE shout AS INSERT INTO shouted \
         SELECT upper(value_text) AS loud FROM input WITH (start = 'earliest')";
    sql_rows(&http[1], statement).unwrap();
    let event = |i| format!("event-{i}");
    let counted = |client: &weir_broker::cli::Client| {
        sql_rows(
            client,
            "SELECT count(*) AS n, count(DISTINCT loud) AS d FROM shouted",
        )
    };
    produce_twenty(&http[2], 0, event);
    eventually(
        "the results of the first records",
        Duration::from_secs(30),
        || counted(&http[0]).is_ok_and(|rows| rows == json!([{ "n": 20, "d": 20 }])),
    );
    let upper = sql_rows(&http[2], "SELECT loud FROM shouted WHERE loud = 'EVENT-7'");
    assert_eq!(upper.unwrap(), json!([{ "loud": "EVENT-7" }]));

    // One node holds the lease and runs it; the others list it standing by.
    let home: usize = lease_holder(&http[0], "pipeline:shout")
        .expect("a holder")
        .parse()
        .unwrap();
    runs_only_on(&http, "shout", home);
    counts_everywhere(&http, "shout", 20, 20);

    // Its node dies; a live node takes the lease over once it lapses and goes on.
    nodes.remove(home).kill9();
    let http = clients(&nodes);
    produce_twenty(&http[0], 20, event);
    eventually("a live node takes over", Duration::from_secs(40), || {
        counted(&http[1]).is_ok_and(|rows| rows == json!([{ "n": 40, "d": 40 }]))
    });
    let taker = lease_holder(&http[0], "pipeline:shout").expect("a holder");
    assert_ne!(
        taker,
        home.to_string(),
        "the dead node's lease was taken over"
    );
    assert_eq!(counted(&http[0]).unwrap(), json!([{ "n": 40, "d": 40 }]));
    // The taker's counters go on from the checkpoint it took over.
    counts_everywhere(&http, "shout", 40, 40);

    // Dropped through either node, it stops everywhere and its lease is given back.
    dropped_everywhere(&http, "shout");
}

/// A plugin deployed through one node is the cluster's: its module is kept in the object
/// store and its versions in Postgres, so a pipeline made through another node runs it on
/// whichever node holds the pipeline's lease. A new version deployed through a node that does
/// not run the pipeline is swapped in by the node that does, between batches; when that node
/// dies, the node taking over runs the new version, and every record is filtered once.
#[test]
fn a_plugin_deployed_through_one_node_runs_and_swaps_on_the_node_running_its_pipeline() {
    use serde_json::json;
    let Some(db) = Postgres::start() else {
        return;
    };
    let (store, _dirs, mut nodes) = three_nodes_with_input(&db);
    let http = clients(&nodes);
    let wasm = std::fs::read(plugin_wasm("regex-filter").unwrap()).unwrap();
    let deploy = |client: &weir_broker::cli::Client, pattern: &str| {
        let path = format!("/v1/plugins/picks?pattern={pattern}");
        client
            .send("PUT", &path, "application/wasm", &wasm)
            .unwrap()
    };
    let first = deploy(&http[0], "keep");
    let sha256 = first["sha256"].as_str().expect("a digest").to_string();
    assert!(
        store.path().join(format!("plugins/{sha256}.wasm")).exists(),
        "the module is in the object store"
    );
    let spec = json!({ "name": "picked", "from": "input", "through": ["picks"],
                       "to": ["picked"], "from_offset": "earliest" });
    http[1].call("POST", "/v1/pipelines", Some(&spec)).unwrap();
    // Even records are kept, odd ones dropped: the first version keeps the even ones.
    let event = |i: usize| format!("{}-{i}", if i.is_multiple_of(2) { "keep" } else { "drop" });
    let picked = |client: &weir_broker::cli::Client| {
        let rows = sql_rows(client, "SELECT value_text AS v FROM picked ORDER BY v")?;
        let values = rows.as_array().cloned().unwrap_or_default().into_iter();
        anyhow::Ok(
            values
                .map(|r| r["v"].as_str().unwrap_or("").to_string())
                .collect::<Vec<_>>(),
        )
    };
    let expected = |versions: &[(usize, &str)]| -> Vec<String> {
        let mut all: Vec<String> = versions
            .iter()
            .flat_map(|&(from, kept)| {
                (from..from + 20)
                    .map(event)
                    .filter(move |v| v.starts_with(kept))
            })
            .collect();
        all.sort();
        all
    };
    produce_twenty(&http[2], 0, event);
    let want = expected(&[(0, "keep")]);
    eventually("the first version's picks", Duration::from_secs(30), || {
        picked(&http[0]).is_ok_and(|got| got == want)
    });
    let home: usize = lease_holder(&http[0], "pipeline:picked")
        .expect("a holder")
        .parse()
        .unwrap();
    runs_only_on(&http, "picked", home);
    counts_everywhere(&http, "picked", 20, 10);
    // The records the pipeline appended are counted on the node that appended them.
    let appended = |n: &Node| metric(n, "weir_records_in_total{topic=\"picked\"}");
    assert_eq!(appended(&nodes[home]), 10.0);
    assert_eq!(nodes.iter().map(appended).sum::<f64>(), 10.0);

    // Version 2, deployed through another node, is what the running node swaps to.
    let other = (home + 1) % 3;
    assert_eq!(deploy(&http[other], "drop")["version"], 2);
    for client in &http {
        let plugin = client.call("GET", "/v1/plugins/picks", None).unwrap();
        assert_eq!(plugin["active"], 2, "every node sees the new version");
    }
    eventually("the running node swaps", Duration::from_secs(20), || {
        pipeline_on_each(&http, "picked")[home]["plugins"] == json!(["picks@2"])
    });
    produce_twenty(&http[other], 20, event);
    let want = expected(&[(0, "keep"), (20, "drop")]);
    eventually(
        "the second version's picks",
        Duration::from_secs(30),
        || picked(&http[0]).is_ok_and(|got| got == want),
    );

    // Its node dies; the node taking over runs version 2 from where it stopped.
    nodes.remove(home).kill9();
    let http = clients(&nodes);
    produce_twenty(&http[0], 40, event);
    let want = expected(&[(0, "keep"), (20, "drop"), (40, "drop")]);
    eventually("a live node takes over", Duration::from_secs(40), || {
        picked(&http[1]).is_ok_and(|got| got == want)
    });
    let taker = lease_holder(&http[0], "pipeline:picked").expect("a holder");
    assert_ne!(taker, home.to_string());
    counts_everywhere(&http, "picked", 60, 30);
    // Two deploys through two nodes at once each make a version of their own.
    let made = std::thread::scope(|s| {
        let deploys = [(0, "left"), (1, "right")].map(|(n, pattern)| {
            let deploy = &deploy;
            let client = &http[n];
            s.spawn(move || deploy(client, pattern)["version"].as_u64())
        });
        deploys.map(|d| d.join().unwrap().expect("a version"))
    });
    assert!(made == [3, 4] || made == [4, 3], "versions {made:?}");
    let plugin = http[1].call("GET", "/v1/plugins/picks", None).unwrap();
    let versions = plugin["versions"].as_array().map(Vec::len);
    assert_eq!(versions, Some(4), "{plugin}");
    // A plugin in use stays; once its pipeline is dropped, it goes.
    let refused = http[0].call("DELETE", "/v1/plugins/picks", None);
    assert!(refused.unwrap_err().to_string().contains("409"));
    dropped_everywhere(&http, "picked");
    http[1].call("DELETE", "/v1/plugins/picks", None).unwrap();
    let gone = http[0].call("GET", "/v1/plugins/picks", None);
    assert!(gone.unwrap_err().to_string().contains("404"));
}

/// SQL functions and views are the cluster's: made through one node, each is listed and
/// callable through every node, and dropped through another, it is gone from every node.
#[test]
fn sql_functions_and_views_made_through_one_node_hold_on_every_node() {
    use serde_json::json;
    let Some(db) = Postgres::start() else {
        return;
    };
    let (_store, _dirs, nodes) = three_nodes_with_input(&db);
    let http = clients(&nodes);
    produce_twenty(&http[0], 0, |i| format!("/users/{i}/orders?page=2"));
    let wasm = std::fs::read(plugin_wasm("url-path").unwrap()).unwrap();
    let deployed = http[0].send("PUT", "/v1/plugins/paths", "application/wasm", &wasm);
    deployed.unwrap();
    sql_rows(&http[1], "CREATE FUNCTION url_path AS PLUGIN 'paths'").unwrap();
    sql_rows(
        &http[0],
        "CREATE VIEW routes AS SELECT url_path(value_text) AS route FROM input",
    )
    .unwrap();
    let routes = "SELECT route, count(*) AS n FROM routes GROUP BY route";
    for client in &http {
        eventually(
            "every node calls the function",
            Duration::from_secs(10),
            || {
                sql_rows(client, "SELECT url_path('/a/123') AS r")
                    .is_ok_and(|rows| rows == json!([{ "r": "/a/:id" }]))
            },
        );
        assert_eq!(
            sql_rows(client, routes).unwrap(),
            json!([{ "route": "/users/:id/orders", "n": 20 }])
        );
        assert_eq!(
            sql_rows(client, "SELECT name, plugin FROM weir.functions").unwrap(),
            json!([{ "name": "url_path", "plugin": "paths" }])
        );
        assert_eq!(
            sql_rows(client, "SELECT name FROM weir.views").unwrap(),
            json!([{ "name": "routes" }])
        );
    }
    sql_rows(&http[2], "DROP VIEW routes").unwrap();
    sql_rows(&http[2], "DROP FUNCTION url_path").unwrap();
    for client in &http {
        eventually(
            "every node forgets the function",
            Duration::from_secs(10),
            || {
                sql_rows(client, "SELECT url_path('/a/123') AS r")
                    .is_err_and(|e| e.to_string().contains("url_path"))
            },
        );
        let gone = sql_rows(client, routes).unwrap_err().to_string();
        assert!(gone.contains("routes"), "{gone}");
        assert_eq!(
            sql_rows(client, "SELECT count(*) AS n FROM weir.functions").unwrap(),
            json!([{ "n": 0 }])
        );
    }
}

/// Users and ACL rules are the cluster's: made through one node, they hold on every node, and
/// a rule changed through one node is checked by the others at once.
#[test]
fn users_and_acls_made_through_one_node_hold_on_every_node() {
    const PASSWORD: &str = "a password the cluster keeps";
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let Some(db) = Postgres::start() else {
        return;
    };
    let store = tempfile::tempdir().unwrap();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let auth = ["--kafka-auth", "sasl"];
    let nodes: Vec<Node> = dirs
        .iter()
        .zip(0..)
        .map(|(dir, id)| {
            let store = store_url(store.path());
            start_node_with(dir.path(), &Listeners::any(), &db, &store, id, &auth)
        })
        .collect();
    let weir = |node: &Node, args: &[&str]| -> String {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(args)
            .args(["--server", &node.url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "weir {args:?}: {}", output_text(&out));
        output_text(&out)
    };
    let as_alice = |node: &Node, args: &[&str], input: &str| {
        let out = kcat_as(node, "SCRAM-SHA-256", "alice", PASSWORD, args, input);
        (out.status.success(), output_text(&out))
    };

    weir(&nodes[0], &["user", "add", "alice", "--password", PASSWORD]);
    let users = weir(&nodes[1], &["user", "list"]);
    assert!(users.contains("alice"), "{users}");
    weir(
        &nodes[1],
        &["topic", "create", "orders", "--partitions", "1"],
    );

    // Alice logs in through the other node, but no rule lets her write yet.
    let produce = ["-P", "-t", "orders", "-X", "message.timeout.ms=5000"];
    let (_, refused) = as_alice(&nodes[1], &produce, "refused\n");
    assert!(refused.contains("uthorization failed"), "{refused}");
    let client = weir_broker::cli::Client::new(&nodes[0].url(), None);
    let orders = client.call("GET", "/v1/topics/orders", None).unwrap();
    assert_eq!(orders["partitions"][0]["high_watermark"], 0, "{orders}");

    // A rule made through node 0 reaches node 1's checks.
    let rule = [
        "acl",
        "add",
        "--principal",
        "alice",
        "--operation",
        "write",
        "--operation",
        "read",
        "--topic",
        "orders",
    ];
    weir(&nodes[0], &rule);
    eventually("node 1 reads the new rule", Duration::from_secs(10), || {
        weir(&nodes[1], &["acl", "list", "--principal", "alice"]).contains("orders")
    });
    let (produced, out) = as_alice(&nodes[1], &produce, "an order\n");
    assert!(produced, "{out}");
    let (consumed, out) = as_alice(&nodes[0], &["-C", "-t", "orders", "-e", "-q"], "");
    assert!(consumed && out == "an order\n", "{out}");

    // Deleted through node 1, the user logs in nowhere.
    weir(&nodes[1], &["user", "delete", "alice"]);
    let (listed, out) = as_alice(&nodes[0], &["-L", "-m", "5"], "");
    assert!(!listed && out.contains("uthentication failed"), "{out}");
    for node in &nodes {
        assert_eq!(metric(node, "weir_acls "), 2.0, "read, write on one topic");
    }
}

/// The status of an HTTP call: 200 for any success, else what the node answered.
fn status(answer: weir_broker::error::Result<serde_json::Value>) -> u16 {
    match answer {
        Ok(_) => 200,
        Err(weir_broker::error::Error::Remote { status, .. }) => status,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn group_requests_through_any_node_are_answered_by_the_node_coordinating_the_group() {
    use serde_json::json;
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let Some(db) = Postgres::start() else {
        return;
    };
    let (_store, _dirs, nodes) = three_nodes(&db);
    eventually("every node lists three", Duration::from_secs(20), || {
        nodes.iter().all(|n| brokers(n).len() == 3)
    });
    let http = clients(&nodes);
    let made = json!({ "name": "held", "partitions": 2 });
    http[0].call("POST", "/v1/topics", Some(&made)).unwrap();
    let records: Vec<serde_json::Value> = (0..40)
        .map(|i| json!({ "value": format!("r{i}"), "partition": i % 2 }))
        .collect();
    let body = json!({ "records": records });
    http[1]
        .call("POST", "/v1/topics/held/records", Some(&body))
        .unwrap();
    let describe = |node: usize| http[node].call("GET", "/v1/groups/tools", None);
    // (members, committed offset of each partition) as `node` describes the group.
    let seen = |node: usize| {
        let group = describe(node).unwrap();
        let offsets = common::committed_offsets(&group);
        (group["members"].as_array().unwrap().len(), offsets)
    };

    // A commit through each node in turn: one node takes the group, and the others send the
    // later commits on to it.
    for (i, c) in http.iter().enumerate() {
        let commit = json!({ "topic": "held", "partition": 0, "offset": i + 1 });
        c.call("POST", "/v1/groups/tools/offsets", Some(&commit))
            .unwrap_or_else(|e| panic!("commit through node {i}: {e}"));
    }
    let leases = group_leases(&nodes);
    assert_eq!(
        leases.iter().sum::<f64>(),
        1.0,
        "one coordinator: {leases:?}"
    );
    let home = leases.iter().position(|&l| l == 1.0).unwrap();
    let other = (home + 1) % 3;
    for node in 0..3 {
        assert_eq!(
            seen(node),
            (0, BTreeMap::from([(0, 3)])),
            "through node {node}"
        );
    }

    // Resets through each node, a dry run first; every node then reads what the last one set.
    for (i, c) in http.iter().enumerate() {
        let to = 10 + i as i64;
        let dry = json!({ "topic": "held", "to_offset": to, "dry_run": true });
        let answer = c
            .call("POST", "/v1/groups/tools/reset-offsets", Some(&dry))
            .unwrap_or_else(|e| panic!("dry reset through node {i}: {e}"));
        assert_eq!(answer["offsets"][1]["after"], to, "{answer}");
        let reset = json!({ "topic": "held", "to_offset": to });
        c.call("POST", "/v1/groups/tools/reset-offsets", Some(&reset))
            .unwrap_or_else(|e| panic!("reset through node {i}: {e}"));
        for node in 0..3 {
            assert_eq!(
                seen(node).1,
                BTreeMap::from([(0, to), (1, to)]),
                "reset through {i}, read through {node}"
            );
        }
    }

    // A request another node already sent on is answered where it lands: a node that does
    // not coordinate the group says so rather than send it further.
    let forwarded = ureq::post(format!("{}/v1/groups/tools/offsets", nodes[other].url()))
        .header("Weir-Forwarded-By", "7")
        .header("Content-Type", "application/json")
        .send(json!({ "topic": "held", "partition": 0, "offset": 1 }).to_string());
    assert!(
        matches!(forwarded, Err(ureq::Error::StatusCode(503))),
        "{forwarded:?}"
    );

    // A consumer joins through a node that does not coordinate the group. Every node then
    // describes its member, and refuses to move offsets under it.
    let mut member = std::process::Command::new("kcat")
        .args(["-b", &nodes[other].kafka.to_string(), "-G", "tools", "held"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    eventually(
        "every node describes the member",
        Duration::from_secs(30),
        || (0..3).all(|node| seen(node).0 == 1),
    );
    for (i, c) in http.iter().enumerate() {
        let reset = json!({ "topic": "held", "to_earliest": true });
        let refused = c.call("POST", "/v1/groups/tools/reset-offsets", Some(&reset));
        assert_eq!(status(refused), 409, "reset through node {i}");
        assert_eq!(status(c.call("DELETE", "/v1/groups/tools", None)), 409);
    }
    // The list and `weir.groups` through any node show the group as its coordinator sees
    // it, which leaves the group's state on its lease at the next renewal: one member, in a
    // state other than Empty (it may be rebalancing still).
    let listed = |node: usize| {
        let list = http[node].call("GET", "/v1/groups", None).unwrap();
        let tools: Vec<(serde_json::Value, serde_json::Value)> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|g| g["group"] == "tools")
            .map(|g| (g["members"].clone(), g["state"].clone()))
            .collect();
        let sql = json!({ "sql": "SELECT DISTINCT members, state FROM weir.groups WHERE group_id = 'tools'" });
        let rows = http[node].call("POST", "/v1/sql", Some(&sql)).unwrap()["rows"].clone();
        let rows: Vec<(serde_json::Value, serde_json::Value)> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["members"].clone(), r["state"].clone()))
            .collect();
        (tools, rows)
    };
    let coordinated = |seen: &[(serde_json::Value, serde_json::Value)]| matches!(seen, [(members, state)] if *members == json!(1) && *state != json!("Empty"));
    eventually(
        "every node lists the group as its coordinator sees it",
        Duration::from_secs(10),
        || {
            (0..3).all(|node| {
                let (list, rows) = listed(node);
                coordinated(&list) && coordinated(&rows)
            })
        },
    );
    // The cluster's status names the lease, its holder and the note it left.
    let summary = http[other].call("GET", "/v1/cluster", None).unwrap();
    let lease = summary["leases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "group:tools")
        .unwrap_or_else(|| panic!("no lease of the group: {summary}"))
        .clone();
    assert_eq!(lease["holder"], json!(home.to_string()), "{summary}");
    assert_eq!(lease["note"]["members"], json!(1), "{summary}");
    // Kafka's ListGroups: as on Kafka, only the group's coordinator lists it.
    let listing: Vec<bool> = nodes
        .iter()
        .map(|n| list_groups(n).contains(&"tools".to_string()))
        .collect();
    let expected: Vec<bool> = (0..3).map(|node| node == home).collect();
    assert_eq!(listing, expected, "ListGroups lists it at node {home} only");
    // It leaves on SIGTERM; then the group is deleted through a node that does not hold it,
    // and no node knows it after.
    let term = std::process::Command::new("kill")
        .args(["-TERM", &member.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    member.wait().unwrap();
    eventually("the member left", Duration::from_secs(30), || {
        (0..3).all(|node| seen(node).0 == 0)
    });
    assert_eq!(
        status(http[other].call("DELETE", "/v1/groups/tools", None)),
        200
    );
    for node in 0..3 {
        assert_eq!(status(describe(node)), 404, "through node {node}");
    }
}

/// One HTTPS call with curl to `node` from `source` (an address of the loopback network),
/// trusting `pki`'s CA; `args` are curl's further flags. Answers the status and the body.
fn https(
    node: &Node,
    pki: &Pki,
    source: &str,
    method: &str,
    path: &str,
    args: &[&str],
) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(&pki.ca)
        .args(["--interface", source, "-X", method, "-w", "\n%{http_code}"])
        .args(args)
        .arg(format!("https://127.0.0.1:{}{path}", node.http.port()))
        .output()
        .unwrap();
    let text = output_text(&out);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        status
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("curl: {text}")),
        body.to_string(),
    )
}

#[test]
fn acl_host_rules_hold_for_group_requests_sent_on_to_the_coordinator() {
    const TOKEN: &str = "an admin token";
    const PASSWORD: &str = "alice's password";
    if !have("curl", "apt-get install curl") {
        return;
    }
    let Some(db) = Postgres::start() else {
        return;
    };
    let (store, certs) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::new(certs.path(), "cluster");
    // Each node presents its certificate with the CA's, so that the nodes, which trust the
    // CAs in their own certificate file, trust each other when one sends a request on.
    let chain = certs.path().join("chain.pem");
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    std::fs::write(&chain, pem(&pki.cert) + &pem(&pki.ca)).unwrap();
    let (chain, key) = (chain.display().to_string(), pki.key.display().to_string());
    let flags = [
        "--tls-cert",
        &chain,
        "--tls-key",
        &key,
        "--admin-token",
        TOKEN,
    ];
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes: Vec<Node> = dirs
        .iter()
        .zip(0..)
        .map(|(dir, id)| {
            let store = store_url(store.path());
            start_node_with(dir.path(), &Listeners::any(), &db, &store, id, &flags)
        })
        .collect();
    let bearer = format!("Authorization: Bearer {TOKEN}");
    let admin = |node: &Node, method: &str, path: &str, body: &str| {
        let mut args = vec!["-H", &bearer];
        if !body.is_empty() {
            args.extend(["-H", "Content-Type: application/json", "-d", body]);
        }
        let (status, answer) = https(node, &pki, "127.0.0.1", method, path, &args);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    };
    eventually("both nodes are live", Duration::from_secs(20), || {
        nodes
            .iter()
            .all(|n| admin(n, "GET", "/v1/cluster", "").matches("\"id\"").count() == 2)
    });

    // A commit by the admin makes one node coordinate the group.
    admin(
        &nodes[0],
        "POST",
        "/v1/topics",
        r#"{"name": "held", "partitions": 1}"#,
    );
    let commit = r#"{"topic": "held", "partition": 0, "offset": 1}"#;
    admin(&nodes[0], "POST", "/v1/groups/tools/offsets", commit);
    let leases: Vec<bool> = nodes
        .iter()
        .map(|n| admin(n, "GET", "/metrics", "").contains("\nweir_group_leases 1\n"))
        .collect();
    assert_eq!(leases.iter().filter(|&&l| l).count(), 1, "{leases:?}");
    let home = leases.iter().position(|&l| l).unwrap();

    // Alice may describe the group from 127.0.0.2 only; the rule reaches both nodes.
    let alice = format!(r#"{{"name": "alice", "password": "{PASSWORD}"}}"#);
    admin(&nodes[0], "POST", "/v1/users", &alice);
    let rule = r#"{"resource_type": "group", "resource_name": "tools",
        "principal": "User:alice", "host": "127.0.0.2", "operation": "describe"}"#;
    admin(&nodes[0], "POST", "/v1/acls", rule);
    eventually("both nodes hold the rule", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| admin(n, "GET", "/v1/acls", "").contains("127.0.0.2"))
    });
    let user = format!("alice:{PASSWORD}");
    let describe = |node: &Node, source: &str, extra: &[&str]| {
        let mut args = vec!["-u", user.as_str()];
        args.extend_from_slice(extra);
        https(node, &pki, source, "GET", "/v1/groups/tools", &args)
    };

    // From her host, through either node: the node that does not coordinate the group sends
    // the request on with her host, and the coordinator checks the rule against that host,
    // not against the address of the node that sent it.
    for (i, node) in nodes.iter().enumerate() {
        let (status, answer) = describe(node, "127.0.0.2", &[]);
        assert_eq!(
            status, 200,
            "through node {i} (coordinator {home}): {answer}"
        );
        assert!(answer.contains("\"held\""), "{answer}");
    }
    // From another host, through either node: refused.
    for (i, node) in nodes.iter().enumerate() {
        let (status, answer) = describe(node, "127.0.0.3", &[]);
        assert_eq!(status, 403, "through node {i}: {answer}");
    }
    // A client cannot name its own host: the coordinator believes the name only from a node.
    let forged = [
        "-H",
        "Weir-Forwarded-By: 7",
        "-H",
        "Weir-Forwarded-For: 127.0.0.2",
    ];
    let (status, answer) = describe(&nodes[home], "127.0.0.3", &forged);
    assert_eq!(status, 403, "{answer}");
}
