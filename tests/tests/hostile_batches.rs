//! What a hostile or broken producer can send a log through storage's public API, and what the
//! data directory holds for a client: every case is refused before anything is written, and
//! the node's limits hold.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeMap;

use bytes::Bytes;
use weir_storage::batch::{BATCH_HEADER_BYTES, BatchHeader};
use weir_storage::codec::BATCH_DECOMPRESSED_BYTES_MAX;
use weir_storage::{
    BatchBuilder, BatchError, Compression, Log, LogConfig, NewRecord, Storage, StorageConfig,
    StorageError,
};
use weir_tests::hostile::{Forge, one_record_batch, zstd_bomb};

/// The append is refused with an error `matches` accepts, and the log is as it was.
fn refused(log: &Log, batches: Vec<u8>, matches: impl Fn(&StorageError) -> bool) {
    let before = (log.high_watermark(), log.size_bytes());
    let err = log.append(&batches).unwrap_err();
    assert!(matches(&err), "unexpected error: {err}");
    assert_eq!((log.high_watermark(), log.size_bytes()), before);
}

fn batch_error(err: &StorageError) -> Option<&BatchError> {
    match err {
        StorageError::Batch(e) => Some(e),
        _ => None,
    }
}

#[test]
fn a_poison_batch_with_a_valid_crc_is_refused_and_the_log_stays_readable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    log.append(&one_record_batch(Compression::None, b"good"))
        .unwrap();
    let good = one_record_batch(Compression::None, b"value");
    // The record's length varint claims ten 0xff bytes: "varint longer than 10 bytes".
    let garbage = [0xffu8; 24];
    refused(&log, Forge::new(&good).body(&garbage).build(), |e| {
        matches!(batch_error(e), Some(BatchError::Decode { .. }))
    });
    // A record that ends before its declared length.
    let mut short = good[BATCH_HEADER_BYTES..].to_vec();
    short.truncate(short.len() - 3);
    refused(&log, Forge::new(&good).body(&short).build(), |e| {
        matches!(batch_error(e), Some(BatchError::Decode { .. }))
    });
    // Bytes after the last record.
    let mut long = good[BATCH_HEADER_BYTES..].to_vec();
    long.extend_from_slice(&[0, 0, 0]);
    refused(&log, Forge::new(&good).body(&long).build(), |e| {
        matches!(batch_error(e), Some(BatchError::Decode { .. }))
    });
    // A header count of a million in a record of a few bytes.
    let mut headers = good[BATCH_HEADER_BYTES..].to_vec();
    let last = headers.len() - 1;
    assert_eq!(
        headers[last], 0,
        "the record ends with its zero header count"
    );
    headers[last] = 0x80;
    headers.extend_from_slice(&[0x89, 0x7a]);
    headers[0] += 4; // the record's length varint (small, so one byte, zigzag: +2 per byte)
    refused(&log, Forge::new(&good).body(&headers).build(), |e| {
        matches!(batch_error(e), Some(BatchError::Decode { .. }))
    });
    // What was acknowledged before still reads.
    let records = log.read_records(0, 1 << 20).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value.as_deref(), Some(&b"good"[..]));
}

#[test]
fn offset_spans_that_do_not_match_the_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let good = one_record_batch(Compression::None, b"value");
    // One record claiming 2^31 offsets, three times in one Produce: once accepted, recovery
    // cut the third and the high watermark fell.
    let wide = Forge::new(&good).last_offset_delta(i32::MAX).build();
    let mut three = wide.clone();
    three.extend_from_slice(&wide);
    three.extend_from_slice(&wide);
    refused(&log, three, |e| {
        matches!(batch_error(e), Some(BatchError::BadOffsetDelta { .. }))
    });
    refused(&log, Forge::new(&good).record_count(0).build(), |e| {
        matches!(batch_error(e), Some(BatchError::BadOffsetDelta { .. }))
    });
    // Two records whose offset deltas are 0 and 5 in a batch that says it spans two.
    let mut b = BatchBuilder::new(Compression::None);
    for delta in [0, 5] {
        b.push_at(
            delta,
            NewRecord {
                timestamp: 1,
                value: Some(Bytes::from_static(b"v")),
                ..NewRecord::default()
            },
        );
    }
    let gapped = b.build().unwrap().to_vec();
    refused(
        &log,
        Forge::new(&gapped).last_offset_delta(1).build(),
        |e| matches!(batch_error(e), Some(BatchError::Invalid { .. })),
    );
    assert_eq!(log.high_watermark(), 0);
}

#[test]
fn control_batches_from_producers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let good = one_record_batch(Compression::None, b"value");
    refused(&log, Forge::new(&good).attributes(0x20).build(), |e| {
        matches!(batch_error(e), Some(BatchError::Invalid { .. }))
    });
}

#[test]
fn a_compression_bomb_is_refused_on_append() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    // One record whose value is 96 MiB of zeros, zstd-compressed to a few kilobytes: past the
    // decompressed bound, though the batch is far below max.message.bytes.
    let bomb = zstd_bomb(BATCH_DECOMPRESSED_BYTES_MAX + (32 << 20));
    assert!(BatchHeader::parse(&bomb).unwrap().total_bytes() < 64 << 10);
    refused(&log, bomb, |e| {
        matches!(
            batch_error(e),
            Some(BatchError::DecompressedTooLarge { .. })
        )
    });
}

#[test]
fn an_empty_partition_costs_a_page_per_index_and_indexes_grow_as_needed() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        index_interval_bytes: 0,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config.clone()).unwrap();
    let index_bytes = |suffix: &str| {
        std::fs::metadata(dir.path().join(format!("{:020}.{suffix}", 0)))
            .unwrap()
            .len()
    };
    assert_eq!(index_bytes("index"), 4096);
    assert_eq!(index_bytes("timeindex"), 4092);
    // An entry per batch: 2000 entries outgrow the first page of both indexes.
    for i in 0..2000 {
        log.append(&one_record_batch(
            Compression::None,
            format!("v{i}").as_bytes(),
        ))
        .unwrap();
    }
    assert!(index_bytes("index") >= 2000 * 8, "{}", index_bytes("index"));
    drop(log);
    let log = Log::open(dir.path(), config).unwrap();
    for offset in [0u64, 999, 1999] {
        let records = log.read_records(offset, 1).unwrap();
        assert_eq!(records[0].offset, offset as i64);
        assert_eq!(
            records[0].value.as_deref(),
            Some(format!("v{offset}").as_bytes())
        );
    }
}

#[test]
fn closed_segments_close_their_files_past_the_budget_and_reopen_on_read() {
    let dir = tempfile::tempdir().unwrap();
    weir_storage::set_open_segments_max(3);
    let config = LogConfig {
        segment_bytes: 1024,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).unwrap();
    let value = vec![b'x'; 600];
    for _ in 0..40 {
        log.append(&one_record_batch(Compression::None, &value))
            .unwrap();
    }
    assert!(log.segment_count() >= 40);
    assert!(weir_storage::open_segments() <= 3);
    // Every segment reads back, though at most three closed ones are open at a time.
    for offset in 0..40u64 {
        let records = log.read_records(offset, 1).unwrap();
        assert_eq!(records[0].offset, offset as i64);
        assert!(weir_storage::open_segments() <= 3);
    }
    weir_storage::set_open_segments_max(weir_storage::OPEN_SEGMENTS_MAX_DEFAULT);
}

fn append_one(storage: &Storage, topic: &str) -> Result<u64, StorageError> {
    let log = storage.log(topic, 0)?;
    log.append(&one_record_batch(Compression::None, b"v"))
        .map(|info| info.base_offset)
}

#[test]
fn below_the_free_space_mark_writes_and_creations_are_refused_and_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    {
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        storage.create_topic("logs", 1, BTreeMap::new()).unwrap();
        append_one(&storage, "logs").unwrap();
        storage.close().unwrap();
    }
    let storage = Storage::open(StorageConfig {
        disk_free_bytes_min: u64::MAX,
        ..StorageConfig::new(dir.path())
    })
    .unwrap();
    assert!(matches!(
        append_one(&storage, "logs"),
        Err(StorageError::DiskLow { .. })
    ));
    assert!(matches!(
        storage.create_topic("more", 1, BTreeMap::new()),
        Err(StorageError::DiskLow { .. })
    ));
    let log = storage.log("logs", 0).unwrap();
    assert_eq!(log.read_records(0, 1 << 20).unwrap().len(), 1);
    assert!(storage.space().check().is_err());
}

#[test]
fn the_node_wide_partition_limit_holds_across_topics() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig {
        partitions_max: 5,
        ..StorageConfig::new(dir.path())
    })
    .unwrap();
    storage.create_topic("a", 3, BTreeMap::new()).unwrap();
    let err = storage.create_topic("b", 3, BTreeMap::new()).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::TooManyPartitions {
                requested: 3,
                current: 3,
                partitions_max: 5
            }
        ),
        "{err}"
    );
    assert!(storage.topic("b").unwrap().is_none());
    assert!(matches!(
        storage.create_partitions("a", 6),
        Err(StorageError::TooManyPartitions { .. })
    ));
    storage.create_topic("b", 2, BTreeMap::new()).unwrap();
    assert_eq!(storage.partition_count(), 5);
}
