//! The data directory as a whole: topics in the metadata store, partition logs on disk,
//! offline partitions, and the background maintenance thread.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_storage::{BatchBuilder, Compression, NewRecord, Storage, StorageConfig, StorageError};

fn append(storage: &Storage, topic: &str, partition: u32, value: &str) -> u64 {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(NewRecord {
        timestamp: 1_700_000_000_000,
        key: None,
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: Vec::new(),
    });
    let log = storage.log(topic, partition).unwrap();
    log.append(&b.build().unwrap()).unwrap().base_offset
}

fn configs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn topics_survive_restart_and_deletion_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let meta = storage
            .create_topic("logs", 2, configs(&[("retention.ms", "-1")]))
            .unwrap();
        assert_eq!(meta.partitions, 2);
        assert!(matches!(
            storage.create_topic("logs", 1, BTreeMap::new()),
            Err(StorageError::TopicExists { .. })
        ));
        append(&storage, "logs", 0, "a");
        append(&storage, "logs", 1, "b");
        storage.close().unwrap();
    }
    let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
    let topics = storage.list_topics().unwrap();
    assert_eq!(topics.len(), 1);
    assert_eq!(topics[0].configs["retention.ms"], "-1");
    assert_eq!(storage.log("logs", 1).unwrap().high_watermark(), 1);
    assert!(matches!(
        storage.log("logs", 2),
        Err(StorageError::UnknownPartition { partition: 2, .. })
    ));
    assert!(matches!(
        storage.log("nope", 0),
        Err(StorageError::UnknownTopic { .. })
    ));

    storage.delete_topic("logs").unwrap();
    assert!(storage.list_topics().unwrap().is_empty());
    assert!(!storage.partition_dir("logs", 0).exists());
    assert!(matches!(
        storage.delete_topic("logs"),
        Err(StorageError::UnknownTopic { .. })
    ));
    // A topic recreated under the same name starts empty.
    storage.create_topic("logs", 1, BTreeMap::new()).unwrap();
    assert_eq!(storage.log("logs", 0).unwrap().high_watermark(), 0);
}

#[test]
fn partitions_only_grow_and_configs_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
    storage.create_topic("metrics", 1, BTreeMap::new()).unwrap();
    assert_eq!(
        storage.create_partitions("metrics", 4).unwrap().partitions,
        4
    );
    assert_eq!(append(&storage, "metrics", 3, "x"), 0);
    assert!(matches!(
        storage.create_partitions("metrics", 2),
        Err(StorageError::PartitionCount {
            current: 4,
            requested: 2,
            ..
        })
    ));
    let err = storage
        .set_topic_configs("metrics", configs(&[("cleanup.policy", "sometimes")]))
        .unwrap_err();
    assert!(err.to_string().contains("cleanup.policy"), "{err}");
    let err = storage
        .create_topic("bad", 1, configs(&[("segment.bytes", "-5")]))
        .unwrap_err();
    assert!(err.to_string().contains("segment.bytes"), "{err}");
    assert!(storage.topic("bad").unwrap().is_none());
    assert!(matches!(
        storage.create_topic("no/slash", 1, BTreeMap::new()),
        Err(StorageError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        storage.create_topic("zero", 0, BTreeMap::new()),
        Err(StorageError::InvalidConfig { .. })
    ));
    storage
        .set_topic_configs("metrics", configs(&[("retention.bytes", "1000")]))
        .unwrap();
    assert_eq!(
        storage.log("metrics", 0).unwrap().config().retention_bytes,
        Some(1000)
    );
}

#[test]
fn a_partition_that_cannot_open_is_offline_and_the_rest_serve() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        storage.create_topic("t", 2, BTreeMap::new()).unwrap();
        append(&storage, "t", 0, "kept");
        storage.close().unwrap();
        std::fs::remove_dir_all(storage.partition_dir("t", 1)).unwrap();
    }
    let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
    let offline = storage.offline_partitions();
    assert_eq!(offline.len(), 1);
    assert_eq!((offline[0].0.as_str(), offline[0].1), ("t", 1));
    assert!(offline[0].2.contains("does not exist"), "{}", offline[0].2);
    assert!(matches!(
        storage.log("t", 1),
        Err(StorageError::Offline { .. })
    ));
    assert_eq!(
        storage
            .log("t", 0)
            .unwrap()
            .read_records(0, 100)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn background_thread_applies_retention() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = StorageConfig::new(dir.path());
    config.maintenance_interval_ms = 20;
    config.flush_check_interval_ms = 5;
    let storage = Storage::open(config).unwrap();
    storage
        .create_topic(
            "old",
            1,
            configs(&[("segment.bytes", "1024"), ("retention.ms", "1000")]),
        )
        .unwrap();
    // Records stamped long ago: every closed segment is past retention.
    for i in 0..40 {
        append(&storage, "old", 0, &format!("{i:0>100}"));
    }
    let log = storage.log("old", 0).unwrap();
    assert!(log.segment_count() > 3);
    storage.start_background();
    let deadline = Instant::now() + Duration::from_secs(20);
    while log.segment_count() > 1 {
        assert!(Instant::now() < deadline, "retention did not run");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(log.log_start_offset() > 0);
    storage.close().unwrap();
}
