//! The shared log against a real Postgres (started by each test) and a store in a temp dir.

mod common;

use bytes::Bytes;
use common::{
    append, batch, cluster, flush, node, node_giving_up_after, node_with, objects_of_n1,
    remove_objects, two_nodes, values,
};
use futures::future::join_all;
use std::collections::BTreeMap;
use std::time::Duration;
use weir_tests::cloud::{AzureServer, CloudStore};
use weir_tests::postgres::Postgres;
use weir_tests::s3::{GcsServer, S3Server};

use weir_cluster::{Append, ClusterError, Collected, NodeConfig, SharedLog, Trimmed};
use weir_storage::batch::ProducerInfo;
use weir_storage::{
    BatchBuilder, Bounded, Compression, NewRecord, Present, Record, decode_records,
};

/// Every record of a partition, read from offset 0 in small reads.
async fn read_all(log: &SharedLog, topic: &str, partition: u32) -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    let mut offset = 0u64;
    loop {
        let fetched = log
            .read(topic, partition, offset, 200)
            .await
            .expect("a read");
        if fetched.batches.is_empty() {
            assert_eq!(
                offset, fetched.high_watermark,
                "an empty read ends at the end"
            );
            return records;
        }
        for record in decode_records(&fetched.batches).expect("valid batches") {
            if record.offset >= offset as i64 {
                records.push(record);
            }
        }
        offset = records.last().expect("a record").offset as u64 + 1;
    }
}

#[tokio::test]
async fn flushes_assign_offsets_in_order_and_reads_write_them_into_valid_batches() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let log = node(&pg, &store_url, 3).await;

    let bases = flush(
        &log,
        &[
            append("logs", 0, &["a0", "a1"]),
            append("logs", 1, &["b0"]),
            append("logs", 0, &["a2", "a3", "a4"]),
        ],
    )
    .await
    .expect("flush");
    assert_eq!(bases, vec![0, 0, 2]);
    let bases = flush(&log, &[append("logs", 0, &["a5"])])
        .await
        .expect("second flush");
    assert_eq!(bases, vec![5]);

    // decode_records checks every CRC: writing the offsets in leaves them valid.
    let fetched = log.read("logs", 0, 0, 1 << 20).await.expect("read");
    assert_eq!(fetched.high_watermark, 6);
    assert_eq!(fetched.log_start_offset, 0);
    let expected: Vec<(i64, String)> = (0..6).map(|i| (i, format!("a{i}"))).collect();
    assert_eq!(
        values(&decode_records(&fetched.batches).expect("valid")),
        expected
    );

    // From the middle of a batch: that batch and the rest, none before it.
    let fetched = log.read("logs", 0, 3, 1 << 20).await.expect("read at 3");
    let from_three = values(&decode_records(&fetched.batches).expect("valid"));
    assert_eq!(from_three.first().map(|v| v.0), Some(2));
    assert_eq!(from_three.last().map(|v| v.0), Some(5));

    // A byte budget smaller than one flush still returns that flush, and only it.
    let fetched = log.read("logs", 0, 0, 1).await.expect("small read");
    let first = values(&decode_records(&fetched.batches).expect("valid"));
    assert_eq!(
        first.iter().map(|v| v.0).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );

    let fetched = log.read("logs", 1, 0, 1 << 20).await.expect("read p1");
    assert_eq!(
        values(&decode_records(&fetched.batches).expect("valid")),
        vec![(0, "b0".to_string())]
    );
    let at_end = log.read("logs", 0, 6, 1 << 20).await.expect("read at end");
    assert!(at_end.batches.is_empty());
    let past = log.read("logs", 0, 7, 1 << 20).await;
    assert!(
        matches!(past, Err(ClusterError::OffsetOutOfRange { end: 6, .. })),
        "{past:?}"
    );
    let empty = log.read("logs", 2, 0, 1 << 20).await.expect("read p2");
    assert!(empty.batches.is_empty());
    assert_eq!(empty.high_watermark, 0);
}

const FLUSHES: usize = 40;

/// [`FLUSHES`] flushes of two records to each of `order`'s partitions of `shared`; returns
/// (partition, base offset, first value) of every acknowledged append.
async fn flush_many(log: &SharedLog, node: &str, order: [u32; 2]) -> Vec<(u32, u64, String)> {
    let mut acked = Vec::new();
    for i in 0..FLUSHES {
        let appends: Vec<Append> = order
            .iter()
            .map(|p| Append {
                topic: "shared".to_string(),
                partition: *p,
                batches: batch(&[format!("{node}-{i}-{p}-x"), format!("{node}-{i}-{p}-y")]),
            })
            .collect();
        let bases = flush(log, &appends).await.expect("flush");
        for (append, base) in appends.iter().zip(bases) {
            acked.push((
                append.partition,
                base,
                format!("{node}-{i}-{}-x", append.partition),
            ));
        }
    }
    acked
}

#[tokio::test]
async fn nodes_flushing_the_same_partitions_together_get_unique_gap_free_offsets() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let url = pg.url();
    let (a, b) = tokio::join!(
        SharedLog::open(&url, &store_url, "n1"),
        SharedLog::open(&url, &store_url, "n2"),
    );
    let (a, b) = (a.expect("open n1"), b.expect("open n2"));
    a.create_topic("shared", 2, &Default::default())
        .await
        .expect("create");

    // The nodes name the partitions in opposite orders: locking them as given would deadlock.
    let (acked_a, acked_b) =
        tokio::join!(flush_many(&a, "n1", [0, 1]), flush_many(&b, "n2", [1, 0]));

    for partition in 0..2u32 {
        let records = read_all(&a, "shared", partition).await;
        let offsets: Vec<i64> = records.iter().map(|r| r.offset).collect();
        let expected: Vec<i64> = (0..(2 * 2 * FLUSHES) as i64).collect();
        assert_eq!(
            offsets, expected,
            "partition {partition}: unique and gap-free"
        );
        let read = values(&records);
        for (p, base, value) in acked_a.iter().chain(&acked_b) {
            if *p == partition {
                assert_eq!(
                    read[*base as usize],
                    (*base as i64, value.clone()),
                    "acknowledged at {base}"
                );
            }
        }
        // Both nodes read the same partition the same way.
        assert_eq!(values(&read_all(&b, "shared", partition).await), read);
    }
}

/// Two records from an idempotent producer.
fn idempotent(producer_id: i64, epoch: i16, sequence: i32, value: &str) -> Append {
    let mut builder = BatchBuilder::new(Compression::None).producer(ProducerInfo {
        producer_id,
        producer_epoch: epoch,
        base_sequence: sequence,
    });
    for _ in 0..2 {
        builder.push(NewRecord {
            value: Some(Bytes::from(value.to_string())),
            ..NewRecord::default()
        });
    }
    Append {
        topic: "logs".to_string(),
        partition: 0,
        batches: builder.build().expect("a batch"),
    }
}

/// Flushes record sets together and returns each one's answer.
async fn answers(log: &SharedLog, appends: &[Append]) -> Vec<Result<u64, String>> {
    let mut checked = Vec::new();
    for append in appends {
        checked.push(log.check(append.clone()).await.expect("checked"));
    }
    let answers = log.flush(&checked, None).await.expect("flushed");
    answers
        .into_iter()
        .map(|a| a.map_err(|e| e.to_string()))
        .collect()
}

#[tokio::test]
async fn a_retried_batch_is_answered_with_its_original_offset_on_any_node() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let id = a.new_producer_id().await.expect("an id");
    assert_ne!(b.new_producer_id().await.expect("another id"), id);

    let first = idempotent(id, 0, 0, "first");
    assert_eq!(answers(&a, std::slice::from_ref(&first)).await, vec![Ok(0)]);
    // The retry reaches another node, which finds the batch in the database.
    assert_eq!(answers(&b, std::slice::from_ref(&first)).await, vec![Ok(0)]);

    // In one flush: a new batch, a retry, the next batch, and a gap in sequences.
    let got = answers(
        &b,
        &[
            idempotent(id, 0, 2, "second"),
            first,
            idempotent(id, 0, 4, "third"),
            idempotent(id, 0, 9, "gap"),
        ],
    )
    .await;
    assert_eq!(got[..3], [Ok(2), Ok(0), Ok(4)]);
    let gap = got[3].as_ref().expect_err("a gap is refused");
    assert!(gap.contains("expected 6") && gap.contains("9"), "{gap}");

    // A new epoch starts at sequence 0 and fences the old one.
    assert_eq!(
        answers(&a, &[idempotent(id, 1, 0, "fourth")]).await,
        vec![Ok(6)]
    );
    let fenced = answers(&b, &[idempotent(id, 0, 6, "fenced")]).await;
    let fenced = fenced[0].as_ref().expect_err("an old epoch is fenced");
    assert!(fenced.contains("epoch 0"), "{fenced}");

    let fetched = a.read("logs", 0, 0, 1 << 20).await.expect("read");
    assert_eq!(fetched.high_watermark, 8);
    let read: Vec<(i64, String)> = values(&decode_records(&fetched.batches).expect("valid"));
    let expected: Vec<(i64, String)> = ["first", "second", "third", "fourth"]
        .iter()
        .flat_map(|v| [v.to_string(), v.to_string()])
        .enumerate()
        .map(|(i, v)| (i as i64, v))
        .collect();
    assert_eq!(
        read, expected,
        "each batch once, nothing of the refused ones"
    );
}

#[tokio::test]
async fn bad_record_sets_are_refused_before_anything_is_written() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let log = node(&pg, &store_url, 3).await;

    let good = append("logs", 0, &["fine"]);
    let mut corrupt = append("logs", 1, &["flipped"]);
    let mut bytes = corrupt.batches.to_vec();
    *bytes.last_mut().expect("a byte") ^= 0xff;
    corrupt.batches = Bytes::from(bytes);
    let result = flush(&log, &[good.clone(), corrupt]).await;
    let message = result.expect_err("a corrupt batch is refused").to_string();
    assert!(
        message.contains("logs-1") && message.contains("CRC"),
        "{message}"
    );

    let result = flush(&log, &[good.clone(), append("logs", 3, &["x"])]).await;
    assert!(
        matches!(
            result,
            Err(ClusterError::UnknownPartition { partition: 3, .. })
        ),
        "{result:?}"
    );
    let result = flush(&log, &[append("nope", 0, &["x"])]).await;
    assert!(
        matches!(result, Err(ClusterError::UnknownPartition { .. })),
        "{result:?}"
    );
    let truncated = Append {
        batches: good.batches.slice(..good.batches.len() - 1),
        ..good.clone()
    };
    assert!(matches!(
        flush(&log, &[truncated]).await,
        Err(ClusterError::Batch { .. })
    ));

    assert!(
        !store.path().join("data").exists(),
        "no object was written for a refused flush"
    );
    let fetched = log.read("logs", 0, 0, 1 << 20).await.expect("read");
    assert_eq!(fetched.high_watermark, 0);
    assert_eq!(flush(&log, &[good]).await.expect("a good flush"), vec![0]);
}

#[tokio::test]
async fn a_flush_the_database_did_not_commit_returns_a_retriable_error_and_no_offsets() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    // Flushes give up after 300 ms; garbage is what is older than 600 ms.
    let log = node_giving_up_after(&pg, &store_url, 300, 1).await;
    let objects = || objects_of_n1(store.path());

    // The database is down: the flush fails before writing anything.
    pg.stop();
    let err = flush(&log, &[append("logs", 0, &["lost"])])
        .await
        .expect_err("no database, no acknowledgement");
    assert!(err.is_retriable(), "{err}");
    assert_eq!(objects(), 0);
    pg.start_again();

    // The transaction aborts after the object is written (a trigger refuses the row).
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    db.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused by the test'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON weir.batches EXECUTE FUNCTION refuse();",
    )
    .await
    .expect("a refusing trigger");
    // The node's connection died with the server; it reconnects on its next use.
    let err = flush(&log, &[append("logs", 0, &["lost"])])
        .await
        .expect_err("an aborted transaction acknowledges nothing");
    assert!(
        err.is_retriable() && err.to_string().contains("refused by the test"),
        "{err}"
    );
    assert_eq!(
        objects(),
        1,
        "the object is written, referenced by no row: garbage"
    );
    let fetched = log.read("logs", 0, 0, 1 << 20).await.expect("read");
    assert_eq!(fetched.high_watermark, 0);
    assert!(fetched.batches.is_empty());

    db.batch_execute("DROP TRIGGER refuse ON weir.batches")
        .await
        .expect("drop the trigger");
    assert_eq!(
        flush(&log, &[append("logs", 0, &["kept"])])
            .await
            .expect("flush"),
        vec![0]
    );

    // A flush slower to commit than its bound gives up: nothing is assigned.
    db.batch_execute(
        "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
         CREATE TRIGGER slow BEFORE INSERT ON weir.batches FOR EACH ROW EXECUTE FUNCTION slow();",
    )
    .await
    .expect("a slow trigger");
    let err = flush(&log, &[append("logs", 0, &["slow"])])
        .await
        .expect_err("too slow to commit");
    assert!(
        err.is_retriable() && err.to_string().contains("300 ms"),
        "{err}"
    );
    db.batch_execute("DROP TRIGGER slow ON weir.batches")
        .await
        .expect("drop the trigger");
    assert_eq!(objects(), 3, "two leftovers and one committed object");

    // The holder of the gc lease deletes the leftovers once they are old enough, and only them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gc = common::taken(&log, "gc", 10_000).await;
    let collected = log.collect_garbage(&gc).await.expect("collect");
    assert_eq!(collected.objects, 2, "{collected:?}");
    assert_eq!(objects(), 1);
    let fresh = SharedLog::open(&pg.url(), &store_url, "n2")
        .await
        .expect("open n2");
    let fetched = fresh.read("logs", 0, 0, 1 << 20).await.expect("read");
    assert_eq!(
        values(&decode_records(&fetched.batches).expect("valid")),
        vec![(0, "kept".to_string())],
        "read from the store by a node with an empty cache"
    );
    assert_eq!(
        log.collect_garbage(&gc).await.expect("collect"),
        Collected::default()
    );
}

#[tokio::test]
async fn nodes_migrate_once_and_refuse_a_schema_newer_than_they_know() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let log = SharedLog::open(&pg.url(), &store_url, "n1")
        .await
        .expect("open");
    log.create_topic("kept", 1, &Default::default())
        .await
        .expect("create");
    drop(log);
    // A second start finds the schema current and its data in place.
    let log = SharedLog::open(&pg.url(), &store_url, "n2")
        .await
        .expect("reopen");
    assert!(matches!(
        log.create_topic("kept", 1, &Default::default()).await,
        Err(ClusterError::TopicExists(_))
    ));

    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    db.execute("UPDATE weir.schema_version SET version = version + 1", &[])
        .await
        .expect("a newer schema");
    let err = SharedLog::open(&pg.url(), &store_url, "n3")
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("upgrade the node"), "{err}");
}

#[tokio::test]
async fn topic_names_partition_counts_and_store_urls_are_checked() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let log = SharedLog::open(&pg.url(), &store_url, "n1")
        .await
        .expect("open");
    for (name, partitions) in [("", 1), ("logs", 0), ("logs", 10_001), ("bad/name", 1)] {
        let result = log
            .create_topic(name, partitions, &Default::default())
            .await;
        assert!(
            matches!(result, Err(ClusterError::InvalidTopic(_))),
            "{name:?} {partitions}: {result:?}"
        );
    }
    // The cluster's partitions together stay within the bound; at the bound, names still
    // answer that they exist.
    let config = NodeConfig {
        partitions_max: 10,
        ..NodeConfig::new(&pg.url(), &store_url, "n2")
    };
    let small = SharedLog::open_with(&config).await.expect("open");
    small
        .create_topic("logs", 6, &Default::default())
        .await
        .expect("6 of 10");
    let over = small.create_topic("metrics", 5, &Default::default()).await;
    assert!(
        matches!(&over, Err(e @ ClusterError::TooManyPartitions { .. }) if e.to_string().contains("allowed 10")),
        "{over:?}"
    );
    small
        .create_topic("metrics", 4, &Default::default())
        .await
        .expect("10 of 10");
    assert!(matches!(
        small.create_topic("logs", 1, &Default::default()).await,
        Err(ClusterError::TopicExists(_))
    ));
    for url in [
        "ftp://bucket/prefix",
        "file://relative/dir",
        "s3:///prefix",
        "az://",
    ] {
        let err = SharedLog::open(&pg.url(), url, "n1")
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(url), "{err}");
    }
    let with_option = |url: &str, key: &str| NodeConfig {
        store_options: vec![(key.to_string(), "x".to_string())],
        ..NodeConfig::new(&pg.url(), url, "n1")
    };
    for (config, named) in [
        (with_option(&store_url, "aws_region"), "takes no options"),
        (
            with_option("s3://bucket/prefix", "aws_colour"),
            "\"aws_colour\" is not an S3 store option",
        ),
        (
            with_option("az://container/prefix", "google_bucket"),
            "\"google_bucket\" is not an Azure store option",
        ),
        (
            with_option("gs://bucket/prefix", "azure_container_name"),
            "\"azure_container_name\" is not a Google Cloud Storage store option",
        ),
    ] {
        let err = SharedLog::open_with(&config).await.err().expect("refused");
        assert!(err.to_string().contains(named), "{err}");
    }
    drop(store);
}

/// Node `n1` with a cache with room for one flush's range (a batch of one 300-byte record),
/// not two, and one such flush in each of the two partitions of `logs`. Returns the value.
async fn small_cache(pg: &Postgres, store_url: &str) -> (SharedLog, String) {
    let value = "v".repeat(300);
    let config = NodeConfig {
        cache_memory_bytes: 500,
        ..NodeConfig::new(&pg.url(), store_url, "n1")
    };
    let log = node_with(&config, 2).await;
    for partition in 0..2 {
        flush(&log, &[append("logs", partition, &[&value])])
            .await
            .expect("flush");
    }
    (log, value)
}

#[tokio::test]
async fn reads_come_from_a_cache_that_outlives_the_object() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let (log, value) = small_cache(&pg, &store_url).await;

    let reads = join_all((0..5).map(|_| log.read("logs", 0, 0, 1 << 20))).await;
    for read in reads {
        assert_eq!(
            decode_records(&read.expect("read").batches)
                .expect("valid")
                .len(),
            1
        );
    }
    let stats = log.cache_stats();
    assert_eq!(
        stats.misses, 1,
        "five reads, one read of the store: {stats:?}"
    );
    assert!(stats.bytes > 0 && stats.bytes <= 500, "{stats:?}");

    // With every object gone from the store, p0 is still read: from the cache.
    remove_objects(&store);
    let cached = log
        .read("logs", 0, 0, 1 << 20)
        .await
        .expect("a cached read");
    assert_eq!(
        values(&decode_records(&cached.batches).expect("valid"))[0].1,
        value
    );
    assert_eq!(log.cache_stats().hits, stats.hits + 1);

    // p1 went from the cache when p0 was read: its miss fails (the object is gone), and p0
    // stays cached.
    assert!(log.read("logs", 1, 0, 1 << 20).await.is_err());
    assert!(log.read("logs", 0, 0, 1 << 20).await.is_ok());
    assert!(log.cache_stats().bytes <= 500);
}

#[tokio::test]
async fn the_cache_evicts_the_least_recently_read_range_to_stay_within_its_bound() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let (log, _) = small_cache(&pg, &store_url).await;
    // The node keeps what it wrote: its last flush, of p1, is read from the cache.
    log.read("logs", 1, 0, 1 << 20).await.expect("read p1");
    let stats = log.cache_stats();
    assert_eq!((stats.misses, stats.hits), (0, 1));
    log.read("logs", 0, 0, 1 << 20)
        .await
        .expect("read p0: evicts p1");
    log.read("logs", 1, 0, 1 << 20)
        .await
        .expect("read p1: evicts p0");
    let stats = log.cache_stats();
    assert_eq!((stats.misses, stats.hits), (2, 1));
    assert!(stats.bytes <= 500, "{stats:?}");

    remove_objects(&store);
    assert!(
        log.read("logs", 1, 0, 1 << 20).await.is_ok(),
        "p1 is cached"
    );
    let evicted = log.read("logs", 0, 0, 1 << 20).await;
    assert!(
        matches!(evicted, Err(ClusterError::Store(_))),
        "p0 was evicted: {evicted:?}"
    );
}

#[tokio::test]
async fn the_disk_tier_of_the_cache_serves_a_node_started_again() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let cache_dir = tempfile::tempdir().expect("a cache dir");
    let config = NodeConfig {
        cache_memory_bytes: 0,
        cache_dir: Some(cache_dir.path().join("ranges")),
        cache_disk_bytes: 1 << 20,
        ..NodeConfig::new(&pg.url(), &store_url, "n1")
    };
    let log = node_with(&config, 1).await;
    flush(&log, &[append("logs", 0, &["a", "b"])])
        .await
        .expect("flush");
    // The node wrote its flush's range to the disk tier, in the background.
    let files = || match std::fs::read_dir(cache_dir.path().join("ranges")) {
        Ok(dir) => dir
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| !name.ends_with(".partial"))
            .count(),
        Err(_) => 0,
    };
    eventually("the range is on disk", async || files() == 1).await;
    drop(log);

    // Started again with every object gone from the store, the node reads from its disk.
    remove_objects(&store);
    let log = SharedLog::open_with(&config).await.expect("open again");
    let fetched = log.read("logs", 0, 0, 1 << 20).await.expect("read");
    assert_eq!(
        values(&decode_records(&fetched.batches).expect("valid")),
        vec![(0, "a".to_string()), (1, "b".to_string())]
    );
    let stats = log.cache_stats();
    assert_eq!((stats.disk_hits, stats.misses), (1, 0), "{stats:?}");
    assert_eq!(stats.disk_bytes_max, 1 << 20);
}

/// Waits until `done` holds; the announcements of topic changes reach other nodes at commit.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within 5 s");
}

#[tokio::test]
async fn topics_change_through_one_node_and_the_others_follow() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let configs = [("max.message.bytes".to_string(), "200".to_string())].into();
    a.create_topic("events", 1, &configs).await.expect("create");

    // Node b caches the topic and checks a record set against its bound.
    let topic = b.topic("events").await.expect("read").expect("exists");
    assert_eq!((topic.partitions, topic.batch_bytes_max), (1, 200));
    let long = "x".repeat(300);
    assert!(matches!(
        b.check(append("events", 0, &[&long])).await,
        Err(ClusterError::Batch { .. })
    ));
    flush(&b, &[append("events", 0, &["first"])])
        .await
        .expect("a flush");

    // New configs reach node b's cache by announcement.
    a.set_topic_configs("events", &Default::default())
        .await
        .expect("configs");
    eventually("b sees the default bound", async || {
        b.topic("events")
            .await
            .expect("read")
            .expect("exists")
            .batch_bytes_max
            > 200
    })
    .await;
    flush(&b, &[append("events", 0, &[&long])])
        .await
        .expect("a long record fits the default bound");

    // Grown on node a: node b appends to a new partition at once, its copy being stale or not.
    a.create_partitions("events", 3).await.expect("grow");
    assert_eq!(
        flush(&b, &[append("events", 2, &["new partition"])])
            .await
            .expect("a flush"),
        vec![0]
    );
    assert!(matches!(
        a.create_partitions("events", 2).await,
        Err(ClusterError::PartitionCount { current: 3, .. })
    ));

    // Node b checked a record set; node a deletes the topic and makes it again before b's
    // flush: the flush answers an unknown partition for it and assigns nothing.
    let checked = b
        .check(append("events", 0, &["stale"]))
        .await
        .expect("checked");
    a.delete_topic("events").await.expect("delete");
    a.create_topic("events", 1, &Default::default())
        .await
        .expect("made again");
    let answers = b.flush(&[checked], None).await.expect("the flush commits");
    assert!(
        matches!(answers[..], [Err(ClusterError::UnknownPartition { .. })]),
        "{answers:?}"
    );
    // The topic made again starts empty, through either node.
    assert_eq!(
        flush(&b, &[append("events", 0, &["again"])])
            .await
            .expect("a flush"),
        vec![0]
    );
    for node in [&a, &b] {
        assert_eq!(
            values(&read_all(node, "events", 0).await),
            vec![(0, "again".to_string())]
        );
    }
    assert!(matches!(
        a.delete_topic("missing").await,
        Err(ClusterError::UnknownTopic(_))
    ));
    // The deleted topic's only objects lost their rows: garbage collection takes them.
    let (db, connection) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let dead: i64 = db
        .query_one(
            "SELECT count(*) FROM weir.objects o
             WHERE NOT EXISTS (SELECT 1 FROM weir.batches b WHERE b.object_id = o.object_id)",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(dead, 0, "objects rows with no batches left");
}

/// One record of `value`, stamped `timestamp`, for a partition of `topic`.
fn stamped(topic: &str, partition: u32, value: &str, timestamp: i64) -> Append {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(NewRecord {
        timestamp,
        value: Some(Bytes::from(value.to_string())),
        ..NewRecord::default()
    });
    Append {
        topic: topic.to_string(),
        partition,
        batches: builder.build().expect("a batch"),
    }
}

#[tokio::test]
async fn retention_drops_the_oldest_runs_by_time_and_size_under_its_lease() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    // Objects older than 200 ms that no row names are garbage. `logs` keeps the default
    // retention of 7 days.
    let log = node_giving_up_after(&pg, &store_url, 100, 1).await;
    let now = weir_storage::now_ms();
    let ancient = 1_700_000_000_000;
    let configs = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    let sized_run = |i: u32| stamped("sized", 0, &format!("s{i}"), now);
    let run_bytes = sized_run(0).batches.len();
    log.create_topic("timed", 2, &configs(&[("retention.ms", "60000".into())]))
        .await
        .expect("timed");
    let keep_two_runs = configs(&[
        ("retention.ms", "-1".into()),
        ("retention.bytes", (2 * run_bytes).to_string()),
    ]);
    log.create_topic("sized", 1, &keep_two_runs)
        .await
        .expect("sized");
    let compacted = configs(&[("cleanup.policy", "compact".into())]);
    log.create_topic("compacted", 1, &compacted)
        .await
        .expect("compacted");

    // Five flushes, one object each. Dropped: all of the first two objects and part of the third.
    let flushes = [
        vec![
            stamped("timed", 0, "t0", now - 120_000),
            stamped("timed", 1, "u0", now - 120_000),
            stamped("logs", 0, "l0", ancient),
        ],
        vec![stamped("timed", 0, "t1", now - 90_000), sized_run(0)],
        vec![stamped("timed", 0, "t2", now - 10_000), sized_run(1)],
        vec![sized_run(2), stamped("compacted", 0, "c0", ancient)],
        vec![sized_run(3)],
    ];
    let mut dropped_bytes = 0;
    for (i, appends) in flushes.iter().enumerate() {
        flush(&log, appends).await.expect("flush");
        dropped_bytes += match i {
            0 | 1 => appends.iter().map(|a| a.batches.len()).sum(),
            2 => appends[1].batches.len(),
            _ => 0,
        };
    }
    let objects = || objects_of_n1(store.path());
    assert_eq!(objects(), 5);

    let lease = common::taken(&log, "retention", 10_000).await;
    let trimmed = log.enforce_retention(&lease, now).await.expect("retention");
    assert_eq!(
        trimmed,
        Trimmed {
            partitions: 4,
            batches: 6,
            bytes: dropped_bytes as u64,
        }
    );
    let offsets =
        async |topic: &str, partition: u32| log.offsets(topic, partition).await.expect("offsets");
    assert_eq!(
        offsets("timed", 0).await,
        (2, 3),
        "the runs before the first recent one"
    );
    assert_eq!(
        offsets("timed", 1).await,
        (1, 1),
        "every run expired: empty"
    );
    assert_eq!(
        offsets("logs", 0).await,
        (1, 1),
        "the default retention applies"
    );
    assert_eq!(
        offsets("sized", 0).await,
        (2, 4),
        "the newest runs holding 2 runs' bytes"
    );
    assert_eq!(
        offsets("compacted", 0).await,
        (0, 1),
        "a compacted topic keeps its runs"
    );

    // Below the start is out of range; from it, only what was kept.
    let below = log.read("timed", 0, 1, 1 << 20).await;
    assert!(
        matches!(
            below,
            Err(ClusterError::OffsetOutOfRange {
                start: 2,
                end: 3,
                ..
            })
        ),
        "{below:?}"
    );
    assert_eq!(read_all_from(&log, "sized", 0, 2).await, ["s2", "s3"]);
    assert_eq!(read_all_from(&log, "timed", 0, 2).await, ["t2"]);
    let emptied = log.read("timed", 1, 1, 1 << 20).await.expect("read at end");
    assert!(emptied.batches.is_empty());

    // A second run has nothing left to drop.
    assert_eq!(
        log.enforce_retention(&lease, now).await.expect("again"),
        Trimmed::default()
    );

    // The two emptied objects go with the next garbage collection, the others stay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gc = common::taken(&log, "gc", 10_000).await;
    assert_eq!(log.collect_garbage(&gc).await.expect("collect").objects, 2);
    assert_eq!(objects(), 3);
    assert_eq!(read_all_from(&log, "compacted", 0, 0).await, ["c0"]);

    // A node that gave the lease up drops nothing once another node holds it.
    flush(&log, &[stamped("timed", 1, "u1", now - 120_000)])
        .await
        .expect("flush");
    log.release(lease.clone()).await.expect("release");
    let other = SharedLog::open(&pg.url(), &store_url, "n2")
        .await
        .expect("open n2");
    let taken = common::taken(&other, "retention", 10_000).await;
    let fenced = log.enforce_retention(&lease, now).await;
    assert!(
        matches!(fenced, Err(ClusterError::LeaseLost { .. })),
        "{fenced:?}"
    );
    assert_eq!(offsets("timed", 1).await, (1, 2));
    let trimmed = other
        .enforce_retention(&taken, now)
        .await
        .expect("n2 runs it");
    assert_eq!((trimmed.partitions, trimmed.batches), (1, 1));
    assert_eq!(offsets("timed", 1).await, (2, 2));
}

/// The values of a partition from `offset` to its end.
async fn read_all_from(log: &SharedLog, topic: &str, partition: u32, offset: u64) -> Vec<String> {
    let fetched = log
        .read(topic, partition, offset, 1 << 20)
        .await
        .expect("read");
    let records = decode_records(&fetched.batches).expect("valid batches");
    values(&records)
        .into_iter()
        .filter(|(o, _)| *o as u64 >= offset)
        .map(|(_, v)| v)
        .collect()
}

#[tokio::test]
async fn metadata_trees_keep_keys_and_values_within_their_bounds() {
    use weir_cluster::{META_KEY_BYTES_MAX, META_TREE_BYTES_MAX, META_VALUE_BYTES_MAX};
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let log = node(&pg, &store_url, 1).await;
    let longest = "k".repeat(META_KEY_BYTES_MAX);
    log.meta_put("acls", &longest, b"{\"n\": 1}", None)
        .await
        .expect("the longest key");
    assert_eq!(
        log.meta_get("acls", &longest)
            .await
            .expect("get")
            .as_deref(),
        Some(&b"{\"n\": 1}"[..])
    );
    let bounded = |e: ClusterError| matches!(e, ClusterError::InvalidRequest(_));
    let long_key = "k".repeat(META_KEY_BYTES_MAX + 1);
    let refused = log
        .meta_put("acls", &long_key, b"1", None)
        .await
        .expect_err("key");
    assert!(bounded(refused), "a key past its bound");
    let long_tree = "t".repeat(META_TREE_BYTES_MAX + 1);
    let refused = log
        .meta_put(&long_tree, "k", b"1", None)
        .await
        .expect_err("tree");
    assert!(bounded(refused), "a tree name past its bound");
    let big = format!("\"{}\"", "v".repeat(META_VALUE_BYTES_MAX));
    let refused = log
        .meta_put("acls", "k", big.as_bytes(), None)
        .await
        .expect_err("value");
    assert!(bounded(refused), "a value past its bound");
    assert_eq!(
        log.meta_len("acls").await.expect("len"),
        1,
        "nothing refused was kept"
    );
}

/// Bounded puts made by two nodes at once leave the tree at its bound exactly; a put past the
/// bound keeps nothing of itself, and a key already there counts once. Of puts racing on two
/// nodes to make one new key, one makes it.
#[tokio::test]
async fn bounded_metadata_puts_racing_on_two_nodes_stop_at_the_bound() {
    const MAX: usize = 25;
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let puts = (0..40).map(|i| {
        let log = if i % 2 == 0 { &a } else { &b };
        let entry = vec![(format!("user-{i:02}"), b"{}".to_vec())];
        async move {
            log.meta_put_within("users", &entry, MAX, Present::Replace)
                .await
                .expect("put")
        }
    });
    let answers = join_all(puts).await;
    let stored = answers.iter().filter(|a| **a == Bounded::Stored).count();
    assert_eq!(stored, MAX, "{answers:?}");
    assert_eq!(a.meta_len("users").await.expect("len"), MAX);

    let there = a.meta_scan("users", "").await.expect("scan")[0].0.clone();
    let both = [
        (there.clone(), b"{\"v\":2}".to_vec()),
        ("new".to_string(), b"{}".to_vec()),
    ];
    assert_eq!(
        b.meta_put_within("users", &both, MAX, Present::Replace)
            .await
            .expect("put"),
        Bounded::Full { existing: MAX }
    );
    assert_eq!(a.meta_get("users", "new").await.expect("get"), None);
    assert_eq!(
        a.meta_get("users", &there).await.expect("get").as_deref(),
        Some(&b"{}"[..]),
        "nothing of a refused put is kept"
    );
    assert_eq!(
        b.meta_put_within("users", &both[..1], MAX, Present::Replace)
            .await
            .expect("put"),
        Bounded::Stored,
        "a key already there takes no room"
    );
    assert_eq!(
        a.meta_get("users", &there).await.expect("get").as_deref(),
        Some(&b"{\"v\": 2}"[..])
    );

    a.meta_remove("users", &there).await.expect("remove");
    let makes = (0..8).map(|i| {
        let log = if i % 2 == 0 { &a } else { &b };
        let entry = vec![(there.clone(), format!("{{\"v\":{i}}}").into_bytes())];
        async move {
            log.meta_put_within("users", &entry, MAX, Present::Refuse)
                .await
                .expect("put")
        }
    });
    let made = join_all(makes).await;
    let refused = Bounded::Present { key: there };
    assert_eq!(
        made.iter().filter(|m| **m == Bounded::Stored).count(),
        1,
        "{made:?}"
    );
    assert_eq!(
        made.iter().filter(|m| **m == refused).count(),
        7,
        "{made:?}"
    );
}

/// Compare-and-set writes made by two nodes at once: each task reads a list, adds its own
/// number and writes it back only if the list is still what it read, else reads again; every
/// number ends in the list once. The expected value compares as JSON, whatever its spacing.
#[tokio::test]
async fn metadata_compare_and_set_racing_on_two_nodes_loses_no_write() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let writes = (0..20).map(|i: u32| {
        let log = if i.is_multiple_of(2) { &a } else { &b };
        async move {
            loop {
                let old = log.meta_get("plugins", "p").await.expect("get");
                let mut list: Vec<u32> = match &old {
                    Some(text) => serde_json::from_slice(text).expect("a list"),
                    None => Vec::new(),
                };
                list.push(i);
                let new = serde_json::to_vec(&list).expect("json");
                let set = log.meta_compare_and_set("plugins", "p", old.as_deref(), &new, None);
                if set.await.expect("compare and set") {
                    break;
                }
            }
        }
    });
    join_all(writes).await;
    let text = a
        .meta_get("plugins", "p")
        .await
        .expect("get")
        .expect("a value");
    let stored: Vec<u32> = serde_json::from_slice(&text).expect("a list");
    let mut list = stored.clone();
    list.sort();
    assert_eq!(list, (0..20).collect::<Vec<_>>(), "every write once");

    let absent = b.meta_compare_and_set("plugins", "p", None, b"[]", None);
    assert!(!absent.await.expect("cas"), "the key is there");
    let stale = b.meta_compare_and_set("plugins", "p", Some(b"[1]"), b"[]", None);
    assert!(!stale.await.expect("cas"), "not the value there");
    let spaced = serde_json::to_string_pretty(&stored).expect("json");
    let same = b.meta_compare_and_set("plugins", "p", Some(spaced.as_bytes()), b"[]", None);
    assert!(same.await.expect("cas"), "the same JSON, spaced otherwise");
    assert_eq!(
        a.meta_get("plugins", "p").await.expect("get").as_deref(),
        Some(&b"[]"[..])
    );
}

#[tokio::test]
async fn an_s3_bucket_holds_the_objects_nodes_share_and_collect() {
    if let Some(s3) = S3Server::start() {
        a_bucket_holds_the_objects_nodes_share_and_collect(Box::new(s3)).await;
    }
}

#[tokio::test]
async fn a_gcs_bucket_holds_the_objects_nodes_share_and_collect() {
    if let Some(gcs) = GcsServer::start() {
        a_bucket_holds_the_objects_nodes_share_and_collect(Box::new(gcs)).await;
    }
}

#[tokio::test]
async fn an_azure_container_holds_the_objects_nodes_share_and_collect() {
    if let Some(azure) = AzureServer::start() {
        a_bucket_holds_the_objects_nodes_share_and_collect(Box::new(azure)).await;
    }
}

/// Two nodes on `bucket`, of any cloud store, flush to it, read each other's objects back,
/// collect garbage from it, and refuse a flush with a retriable error once it is gone.
async fn a_bucket_holds_the_objects_nodes_share_and_collect(bucket: Box<dyn CloudStore>) {
    let Some(pg) = Postgres::start() else {
        return;
    };
    let url = bucket.url("cluster");
    // Flushes give up after 300 ms; garbage is what is older than 600 ms.
    let config = |node: &str| NodeConfig {
        store_options: bucket.options(),
        flush_commit_ms_max: 300,
        ..NodeConfig::new(&pg.url(), &url, node)
    };
    let a = node_with(&config("n1"), 2).await;
    let b = SharedLog::open_with(&config("n2")).await.expect("open n2");
    a.create_topic("gone", 1, &Default::default())
        .await
        .expect("create");

    let mut sent: Vec<Vec<String>> = vec![Vec::new(); 2];
    for i in 0..5 {
        let appends: Vec<Append> = (0..2)
            .map(|p| append("logs", p, &[&format!("p{p}-{i}a"), &format!("p{p}-{i}b")]))
            .collect();
        let bases = flush(&a, &appends).await.expect("flush to the store");
        assert_eq!(bases, vec![2 * i as u64; 2]);
        for (p, append) in appends.iter().enumerate() {
            let records = decode_records(&append.batches).expect("valid");
            sent[p].extend(values(&records).into_iter().map(|(_, v)| v));
        }
    }
    flush(&b, &[append("gone", 0, &["doomed"])])
        .await
        .expect("flush to the store");
    let mut objects = bucket.keys("cluster/data/");
    objects.sort();
    assert_eq!(objects.len(), 6, "one object per flush: {objects:?}");
    assert_eq!(
        objects
            .iter()
            .filter(|k| k.starts_with("cluster/data/n1/"))
            .count(),
        5,
        "{objects:?}"
    );

    // The other node, its cache empty, reads every record back from the bucket.
    for p in 0..2u32 {
        let read = values(&read_all(&b, "logs", p).await);
        let offsets: Vec<i64> = read.iter().map(|r| r.0).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<i64>>(), "partition {p}");
        let read: Vec<String> = read.into_iter().map(|r| r.1).collect();
        assert_eq!(read, sent[p as usize], "partition {p}");
    }

    // A deleted topic's object is garbage: the holder of the gc lease deletes it from the
    // bucket once no flush can still be committing it, and leaves the others.
    a.delete_topic("gone").await.expect("delete");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gc = common::taken(&a, "gc", 10_000).await;
    let collected = a.collect_garbage(&gc).await.expect("collect");
    assert_eq!(collected.objects, 1, "{collected:?}");
    let mut left = bucket.keys("cluster/data/");
    left.sort();
    assert_eq!(left.len(), 5, "{left:?}");
    assert!(left.iter().all(|k| objects.contains(k)));
    assert!(left.iter().all(|k| k.starts_with("cluster/data/n1/")));

    // Without the store a flush is refused with a retriable error, and nothing is assigned.
    drop(bucket);
    let err = flush(&a, &[append("logs", 0, &["lost"])])
        .await
        .expect_err("no store, no acknowledgement");
    assert!(err.is_retriable(), "{err}");
    let at_end = a
        .read("logs", 0, 10, 1 << 20)
        .await
        .expect("read at the end");
    assert_eq!(at_end.high_watermark, 10);
}

#[tokio::test]
async fn runs_in_small_objects_merge_into_one_object_per_partition_and_read_the_same() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    // Garbage is what is older than 600 ms.
    let log = node_giving_up_after(&pg, &store_url, 300, 2).await;
    // Ten flushes, each one object holding a run of each partition; record i is stamped i s.
    for i in 0..10i64 {
        let appends: Vec<Append> = (0..2)
            .map(|p| stamped("logs", p, &format!("p{p}-{i}"), 1000 * i))
            .collect();
        flush(&log, &appends).await.expect("flush");
    }
    let objects = || objects_of_n1(store.path());
    assert_eq!(objects(), 10);
    let before: Vec<Vec<(i64, String)>> = join_all((0..2).map(|p| read_all(&log, "logs", p)))
        .await
        .iter()
        .map(|records| values(records))
        .collect();

    let lease = common::taken(&log, "merge", 10_000).await;
    let merged = log.merge_small_objects(&lease, 0).await.expect("merge");
    assert_eq!(
        (merged.partitions, merged.runs_before, merged.runs_after),
        (2, 20, 2),
        "{merged:?}"
    );
    // Nothing is left to merge: each partition has one run.
    assert_eq!(
        log.merge_small_objects(&lease, 0).await.expect("merge"),
        Default::default()
    );

    // A node with an empty cache reads the same records at the same offsets, from the merged
    // objects, and finds a time in the middle of a merged run.
    let fresh = SharedLog::open(&pg.url(), &store_url, "n2")
        .await
        .expect("open n2");
    for p in 0..2u32 {
        assert_eq!(
            values(&read_all(&fresh, "logs", p).await),
            before[p as usize]
        );
        let at = fresh
            .offset_for_timestamp("logs", p, 4500)
            .await
            .expect("by time");
        assert_eq!(at, Some((5, 5000)));
    }
    assert_eq!(fresh.cache_stats().misses, 2, "one GET per partition");

    // The old objects have no rows left; garbage collection deletes them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let gc = common::taken(&log, "gc", 10_000).await;
    let collected = log.collect_garbage(&gc).await.expect("collect");
    assert_eq!(collected.objects, 10, "{collected:?}");
    assert_eq!(objects(), 2);

    // A later run and the merged one, still small, merge again: the offsets follow each
    // other, so they join into one run.
    flush(&log, &[stamped("logs", 0, "p0-10", 10_000)])
        .await
        .expect("flush");
    let merged = log.merge_small_objects(&lease, 0).await.expect("merge");
    assert_eq!(
        (merged.partitions, merged.runs_before, merged.runs_after),
        (1, 2, 1),
        "{merged:?}"
    );
    let mut expected = before[0].clone();
    expected.push((10, "p0-10".to_string()));
    assert_eq!(values(&read_all(&fresh, "logs", 0).await), expected);

    // A node that gave the lease up merges nothing once another node holds it.
    flush(&log, &[stamped("logs", 1, "p1-10", 10_000)])
        .await
        .expect("flush");
    log.release(lease.clone()).await.expect("release");
    let taken = common::taken(&fresh, "merge", 10_000).await;
    let fenced = log.merge_small_objects(&lease, 0).await;
    assert!(
        matches!(fenced, Err(ClusterError::LeaseLost { .. })),
        "{fenced:?}"
    );
    let merged = fresh.merge_small_objects(&taken, 0).await.expect("merge");
    assert_eq!((merged.partitions, merged.runs_after), (1, 1), "{merged:?}");
}

/// One batch of keyed records (a `None` value is a tombstone) for partition 0 of `topic`.
fn keyed(topic: &str, records: &[(Option<&str>, Option<&str>)]) -> Append {
    let mut builder = BatchBuilder::new(Compression::None);
    for (key, value) in records {
        builder.push(NewRecord {
            timestamp: weir_storage::now_ms(),
            key: key.map(|k| Bytes::from(k.to_string())),
            value: value.map(|v| Bytes::from(v.to_string())),
            ..NewRecord::default()
        });
    }
    Append {
        topic: topic.to_string(),
        partition: 0,
        batches: builder.build().expect("a batch"),
    }
}

/// A record read back as (offset, key, value), `None` for a missing key or value.
fn keyed_values(records: &[Record]) -> Vec<(i64, Option<String>, Option<String>)> {
    let text = |b: &Option<Bytes>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
    records
        .iter()
        .map(|r| (r.offset, text(&r.key), text(&r.value)))
        .collect()
}

#[tokio::test]
async fn key_compaction_keeps_the_last_record_per_key_at_its_offset_under_the_merge_lease() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let log = node(&pg, &store_url, 1).await;
    let compact: BTreeMap<String, String> =
        [("cleanup.policy".to_string(), "compact".to_string())].into();
    log.create_topic("table", 1, &compact)
        .await
        .expect("create");
    // Five flushes, one run each: offsets 0-2, 3-4, 5-6, 7 and 8.
    for records in [
        &[
            (Some("a"), Some("a0")),
            (Some("b"), Some("b0")),
            (Some("c"), Some("c0")),
        ][..],
        &[(Some("a"), Some("a1")), (Some("b"), Some("b1"))],
        &[(Some("a"), Some("a2")), (None, Some("no key"))],
        &[(Some("b"), None)],
        &[(Some("d"), Some("d0"))],
    ] {
        flush(&log, &[keyed("table", records)])
            .await
            .expect("flush");
    }
    // `logs` deletes rather than compacts: a pass leaves it alone.
    flush(&log, &[append("logs", 0, &["x", "x"])])
        .await
        .expect("flush");
    flush(&log, &[append("logs", 0, &["y"])])
        .await
        .expect("flush");

    let lease = common::taken(&log, "merge", 10_000).await;
    let now = weir_storage::now_ms();
    // A partition with more distinct keys than the bound is given up, unchanged.
    let refused = log.compact_topics(&lease, now, 0, 2).await;
    assert!(
        matches!(
            refused,
            Err(ClusterError::CompactionKeys { keys_max: 2, .. })
        ),
        "{refused:?}"
    );

    let done = log
        .compact_topics(&lease, now, 0, 100)
        .await
        .expect("compact");
    // Superseded: a0, b0, a1, b1 (by the tombstone). Run 0-2 keeps c0 alone, run 3-4 goes
    // whole; the others change nothing, and the newest run (d0) is never read.
    assert_eq!(
        (
            done.partitions,
            done.records_removed,
            done.runs_before,
            done.runs_after
        ),
        (1, 4, 2, 1),
        "{done:?}"
    );
    assert!(done.bytes_after < done.bytes_before, "{done:?}");
    let s = |v: &str| Some(v.to_string());
    let expected = vec![
        (2, s("c"), s("c0")),
        (5, s("a"), s("a2")),
        (6, None, s("no key")),
        (7, s("b"), None),
        (8, s("d"), s("d0")),
    ];
    // A node with an empty cache reads the kept records at their offsets, across the gaps.
    let fresh = SharedLog::open(&pg.url(), &store_url, "n2")
        .await
        .expect("open n2");
    assert_eq!(keyed_values(&read_all(&fresh, "table", 0).await), expected);
    assert_eq!(fresh.offsets("table", 0).await.expect("offsets"), (0, 9));
    assert_eq!(read_all(&fresh, "logs", 0).await.len(), 3);

    // Nothing new: the next pass reads nothing. One small run does not make the partition
    // dirty enough either.
    assert_eq!(
        log.compact_topics(&lease, now, 0, 100)
            .await
            .expect("compact"),
        Default::default()
    );
    flush(&log, &[keyed("table", &[(Some("a"), Some("a3"))])])
        .await
        .expect("flush");
    flush(&log, &[keyed("table", &[(Some("e"), Some("e0"))])])
        .await
        .expect("flush");
    assert_eq!(
        log.compact_topics(&lease, now, 0, 100)
            .await
            .expect("compact"),
        Default::default()
    );

    // Past `delete.retention.ms` (a day by default) the tombstone goes too, once enough is
    // new: ten more runs of `e` make the partition dirty.
    for i in 1..=10 {
        flush(
            &log,
            &[keyed("table", &[(Some("e"), Some(&format!("e{i}")))])],
        )
        .await
        .expect("flush");
    }
    let later = now + 2 * 86_400_000;
    let done = log
        .compact_topics(&lease, later, 0, 100)
        .await
        .expect("compact");
    // a2, the tombstone and e0 to e8.
    assert_eq!(done.records_removed, 11, "{done:?}");
    let kept = keyed_values(&read_all(&fresh, "table", 0).await);
    assert_eq!(
        kept,
        vec![
            (2, s("c"), s("c0")),
            (6, None, s("no key")),
            (8, s("d"), s("d0")),
            (9, s("a"), s("a3")),
            // The newest run is not read, so e9 is the latest `e` the pass knew of.
            (19, s("e"), s("e9")),
            (20, s("e"), s("e10")),
        ]
    );

    // A node that gave the lease up compacts nothing once another node holds it.
    log.release(lease.clone()).await.expect("release");
    let _taken = common::taken(&fresh, "merge", 10_000).await;
    for i in 11..=30 {
        flush(
            &log,
            &[keyed("table", &[(Some("e"), Some(&format!("e{i}")))])],
        )
        .await
        .expect("flush");
    }
    let stale = log.compact_topics(&lease, later, 0, 100).await;
    assert!(
        matches!(stale, Err(ClusterError::LeaseLost { .. })),
        "{stale:?}"
    );
    assert_eq!(read_all(&fresh, "table", 0).await.len(), 26);
}

#[tokio::test]
async fn pipeline_steps_are_kept_in_the_store_each_write_under_a_name_of_its_own() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let put = async |node: &SharedLog, pipeline: &str, bytes: &'static [u8]| {
        let put = node.put_step(pipeline, 7, Bytes::from_static(bytes)).await;
        put.expect("put")
    };
    let first = put(&a, "errors", b"one").await;
    let again = put(&b, "errors", b"two").await;
    let other = put(&a, "other", b"three").await;
    assert_ne!(first, again, "two writes of one step have two names");
    assert_eq!(b.get_step("errors", &first).await.expect("get"), "one");
    assert_eq!(a.get_step("errors", &again).await.expect("get"), "two");

    let deleted = a
        .delete_steps("errors", Some(&again))
        .await
        .expect("delete");
    assert_eq!(deleted, 1);
    assert!(b.get_step("errors", &first).await.is_err(), "deleted");
    assert_eq!(b.get_step("errors", &again).await.expect("kept"), "two");
    assert_eq!(
        b.get_step("other", &other).await.expect("untouched"),
        "three"
    );
    assert_eq!(a.delete_steps("errors", None).await.expect("delete"), 1);
    assert!(a.get_step("errors", &again).await.is_err(), "deleted");

    for pipeline in ["", "../data", ".hidden", &"p".repeat(129)] {
        let refused = a.put_step(pipeline, 1, Bytes::new()).await;
        assert!(
            matches!(refused, Err(ClusterError::InvalidRequest(_))),
            "{pipeline:?}: {refused:?}"
        );
    }
    for name in ["x", "../other/x.step", ".step"] {
        let refused = a.get_step("other", name).await;
        assert!(
            matches!(refused, Err(ClusterError::InvalidRequest(_))),
            "{name:?}: {refused:?}"
        );
    }
}

/// A plugin module put through one node is read through another under its digest; a key that
/// is no digest is refused before the store is touched.
#[tokio::test]
async fn plugin_modules_are_kept_in_the_store_under_their_digest() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let (a, b) = two_nodes(&pg, &store_url, 1).await;
    let digest = "0123456789abcdef".repeat(4);
    a.put_module(&digest, Bytes::from_static(b"\0asm"))
        .await
        .expect("put");
    assert_eq!(b.get_module(&digest).await.expect("get"), "\0asm");
    let missing = "f".repeat(64);
    assert!(b.get_module(&missing).await.is_err(), "never put");
    for key in [
        "",
        "../data/x",
        &digest.to_uppercase(),
        &format!("{digest}0"),
    ] {
        let refused = a.put_module(key, Bytes::new()).await;
        assert!(
            matches!(refused, Err(ClusterError::InvalidRequest(_))),
            "{key:?}: {refused:?}"
        );
    }
}
