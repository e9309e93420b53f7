//! What the cluster tests share: a Postgres and a store directory, and record sets to flush.

#![allow(dead_code)] // each test binary uses its own part

use bytes::Bytes;
use weir_cluster::{Append, Lease, NodeConfig, SharedLog};
use weir_storage::{BatchBuilder, Compression, NewRecord, Record};
use weir_tests::postgres::Postgres;

pub fn batch(values: &[String]) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for (i, value) in values.iter().enumerate() {
        builder.push(NewRecord {
            timestamp: 1_700_000_000_000 + i as i64,
            value: Some(Bytes::from(value.clone())),
            ..NewRecord::default()
        });
    }
    builder.build().expect("a batch")
}

pub fn append(topic: &str, partition: u32, values: &[&str]) -> Append {
    let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    Append {
        topic: topic.to_string(),
        partition,
        batches: batch(&values),
    }
}

pub fn values(records: &[Record]) -> Vec<(i64, String)> {
    records
        .iter()
        .map(|r| {
            let value = r.value.as_ref().expect("a value");
            (r.offset, String::from_utf8_lossy(value).into_owned())
        })
        .collect()
}

/// Checks the record sets, then flushes them together.
pub async fn flush(log: &SharedLog, appends: &[Append]) -> weir_cluster::Result<Vec<u64>> {
    let mut checked = Vec::new();
    for append in appends {
        checked.push(log.check(append.clone()).await?);
    }
    log.flush(&checked, None).await?.into_iter().collect()
}

/// The lease `name` for `ms`, taken by `log`: the test expects it free.
pub async fn taken(log: &SharedLog, name: &str, ms: u64) -> Lease {
    log.acquire(name, ms)
        .await
        .expect("acquire")
        .unwrap_or_else(|| panic!("lease {name} was not taken: another node holds it"))
}

/// A server, a store directory and its URL; `None` when Postgres is missing outside CI.
pub fn cluster() -> Option<(Postgres, tempfile::TempDir, String)> {
    let pg = Postgres::start()?;
    let store = tempfile::tempdir().expect("a store dir");
    let url = format!("file://{}", store.path().display());
    Some((pg, store, url))
}

/// Node `n1` with the topic `logs` of `partitions` partitions.
pub async fn node(pg: &Postgres, store_url: &str, partitions: u32) -> SharedLog {
    node_with(&NodeConfig::new(&pg.url(), store_url, "n1"), partitions).await
}

/// A node opened with `config`, with the topic `logs` of `partitions` partitions.
pub async fn node_with(config: &NodeConfig, partitions: u32) -> SharedLog {
    let log = SharedLog::open_with(config).await.expect("open");
    log.create_topic("logs", partitions, &Default::default())
        .await
        .expect("create");
    log
}

/// Nodes `n1` and `n2` of one cluster, with the topic `logs` of `partitions` partitions.
pub async fn two_nodes(pg: &Postgres, store_url: &str, partitions: u32) -> (SharedLog, SharedLog) {
    let a = node(pg, store_url, partitions).await;
    let b = SharedLog::open(&pg.url(), store_url, "n2")
        .await
        .expect("open n2");
    (a, b)
}

/// Deletes every object node `n1` wrote.
pub fn remove_objects(store: &tempfile::TempDir) {
    for object in std::fs::read_dir(store.path().join("data").join("n1")).expect("objects") {
        std::fs::remove_file(object.expect("an object").path()).expect("remove");
    }
}

/// Node `n1` whose flushes give up `commit_ms` after their object's write, so that garbage
/// is what is older than twice that, with the topic `logs` of `partitions` partitions.
pub async fn node_giving_up_after(
    pg: &Postgres,
    store_url: &str,
    commit_ms: u64,
    partitions: u32,
) -> SharedLog {
    let config = NodeConfig {
        flush_commit_ms_max: commit_ms,
        ..NodeConfig::new(&pg.url(), store_url, "n1")
    };
    node_with(&config, partitions).await
}

/// How many objects of node `n1` the store directory holds.
pub fn objects_of_n1(store: &std::path::Path) -> usize {
    std::fs::read_dir(store.join("data").join("n1")).map_or(0, |d| d.count())
}
