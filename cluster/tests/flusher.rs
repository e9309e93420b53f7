//! The node's flush buffer against a real Postgres and a store in a temp dir.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{append, cluster, node, values};
use futures::future::join_all;
use weir_cluster::{ClusterError, FlushConfig, Flusher};
use weir_storage::decode_records;

fn objects(store: &tempfile::TempDir) -> usize {
    std::fs::read_dir(store.path().join("data").join("n1")).map_or(0, |dir| dir.count())
}

#[tokio::test]
async fn record_sets_parked_together_go_out_in_one_object_and_each_gets_its_offset() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let log = Arc::new(node(&pg, &store_url, 2).await);
    // A linger far longer than the test takes to park them all.
    let config = FlushConfig {
        linger_ms: 1_000,
        ..FlushConfig::default()
    };
    let flusher = Flusher::start(log.clone(), config).expect("start");

    let names: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
    let parked = names
        .iter()
        .enumerate()
        .map(|(i, name)| flusher.append(append("logs", (i % 2) as u32, &[name, name])));
    let answers = join_all(parked).await;
    assert_eq!(objects(&store), 1, "ten record sets, one flush");

    for partition in 0..2u32 {
        let fetched = log.read("logs", partition, 0, 1 << 20).await.expect("read");
        let read = values(&decode_records(&fetched.batches).expect("valid"));
        assert_eq!(read.len(), 10);
        for (i, answer) in answers.iter().enumerate() {
            if (i % 2) as u32 == partition {
                let base = *answer.as_ref().expect("acknowledged") as usize;
                assert_eq!(read[base].1, names[i]);
                assert_eq!(read[base + 1].1, names[i]);
            }
        }
    }
}

#[tokio::test]
async fn a_full_buffer_flushes_before_its_linger_and_a_bad_record_set_fails_alone() {
    let Some((pg, store, store_url)) = cluster() else {
        return;
    };
    let log = Arc::new(node(&pg, &store_url, 1).await);
    // Every record set fills the buffer: none waits out the minute of linger.
    let config = FlushConfig {
        linger_ms: 60_000,
        flush_bytes: 1,
    };
    let flusher = Flusher::start(log.clone(), config).expect("start");
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        flusher.append(append("logs", 0, &["a"])),
    )
    .await
    .expect("flushed by size, not by the linger");
    assert_eq!(first.expect("acknowledged"), 0);

    let mut corrupt = append("logs", 0, &["b"]);
    let mut bytes = corrupt.batches.to_vec();
    *bytes.last_mut().expect("a byte") ^= 1;
    corrupt.batches = bytes.into();
    let refused = flusher.append(corrupt).await;
    assert!(
        matches!(refused, Err(ClusterError::Batch { .. })),
        "{refused:?}"
    );
    let next = flusher.append(append("logs", 0, &["c"])).await;
    assert_eq!(next.expect("acknowledged"), 1);
    assert_eq!(objects(&store), 2);

    for config in [
        FlushConfig {
            linger_ms: 60_001,
            flush_bytes: 1,
        },
        FlushConfig {
            linger_ms: 1,
            flush_bytes: 0,
        },
        FlushConfig {
            linger_ms: 1,
            flush_bytes: 64 * 1024 * 1024 + 1,
        },
    ] {
        let result = Flusher::start(log.clone(), config);
        assert!(matches!(result, Err(ClusterError::Config(_))), "{config:?}");
    }
}

#[tokio::test]
async fn a_failed_flush_answers_every_parked_record_set_with_a_retriable_error() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let log = Arc::new(node(&pg, &store_url, 1).await);
    let config = FlushConfig {
        linger_ms: 500,
        ..FlushConfig::default()
    };
    let flusher = Flusher::start(log.clone(), config).expect("start");
    // Checked while the database is up (the topic is then known to the node), flushed after
    // it went down.
    assert_eq!(
        flusher
            .append(append("logs", 0, &["up"]))
            .await
            .expect("ok"),
        0
    );
    let parked = join_all((0..3).map(|_| flusher.append(append("logs", 0, &["x"]))));
    let stop = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        pg.stop();
    };
    let (answers, ()) = tokio::join!(parked, stop);
    for answer in answers {
        let err = answer.expect_err("not committed, not acknowledged");
        assert!(err.is_retriable(), "{err}");
    }
}
