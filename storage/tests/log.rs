//! Behaviour of a single partition log: round trips, index and time lookups, segment rolls,
//! retention, compaction, codecs, and concurrent appends.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use weir_storage::{
    BatchBuilder, CleanupPolicy, Compression, FlushPolicy, Header, Log, LogConfig, NewRecord,
    Record, StorageError, TimestampType, compact,
};

const T0: i64 = 1_700_000_000_000;

fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        index_bytes_max: 4096,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn record(key: &str, value: &str, timestamp: i64) -> NewRecord {
    NewRecord {
        timestamp,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(Bytes::copy_from_slice(value.as_bytes())),
        headers: vec![Header {
            key: "source".into(),
            value: Some(Bytes::from_static(b"test")),
        }],
    }
}

fn batch(compression: Compression, records: impl IntoIterator<Item = NewRecord>) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for r in records {
        b.push(r);
    }
    b.build().unwrap().to_vec()
}

/// Reads the whole log from its start, batch by batch, as a consumer would.
fn read_all(log: &Log) -> Vec<Record> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    loop {
        let records = log.read_records(offset, 1000).unwrap();
        let Some(last) = records.last() else {
            // An empty read past a compacted gap: move to the next offset.
            if offset < log.high_watermark() {
                offset += 1;
                continue;
            }
            return out;
        };
        offset = last.offset as u64 + 1;
        out.extend(records);
    }
}

fn open(dir: &std::path::Path, config: LogConfig) -> Log {
    Log::open(dir, config).unwrap()
}

#[test]
fn append_read_round_trip_across_segment_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let mut expected = Vec::new();
    for i in 0..400usize {
        let n = 1 + i % 4;
        let records: Vec<NewRecord> = (0..n)
            .map(|j| {
                let v = format!("value-{i}-{j}-{}", "x".repeat((i * 7 + j) % 90));
                record(&format!("k{i}"), &v, T0 + i as i64)
            })
            .collect();
        expected.extend(records.iter().map(|r| r.value.clone()));
        let info = log.append(&batch(Compression::None, records)).unwrap();
        assert_eq!(info.last_offset - info.base_offset + 1, n as u64);
    }
    assert!(
        log.segment_count() > 20,
        "segments: {}",
        log.segment_count()
    );
    assert_eq!(log.high_watermark(), expected.len() as u64);

    let check = |log: &Log| {
        let all = read_all(log);
        assert_eq!(all.len(), expected.len());
        for (i, r) in all.iter().enumerate() {
            assert_eq!(r.offset, i as i64);
            assert_eq!(r.value, expected[i]);
        }
        // Every offset can be read directly, through the index of its segment.
        for offset in 0..expected.len() as u64 {
            let records = log.read_records(offset, 1).unwrap();
            assert_eq!(records[0].offset, offset as i64, "read at {offset}");
            assert_eq!(records[0].value, expected[offset as usize]);
        }
    };
    check(&log);
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), small_config());
    check(&log);
    assert_eq!(log.log_end_offset(), expected.len() as u64);
}

#[test]
fn read_bounds_follow_kafka_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    for i in 0..10 {
        log.append(&batch(
            Compression::None,
            (0..3).map(|j| record("k", &format!("{i}-{j}"), T0)),
        ))
        .unwrap();
    }
    // The first batch is returned whole even when larger than the limit.
    let read = log.read(4, 1).unwrap();
    let slice = read.slice.unwrap();
    let bytes = slice.read().unwrap();
    assert_eq!(bytes.len() as u64, slice.len());
    // Mapped from the file rather than copied: the same bytes.
    assert_eq!(slice.map().unwrap(), bytes);
    let records = weir_storage::decode_records(&bytes).unwrap();
    assert_eq!(records.first().unwrap().offset, 3);
    assert_eq!(records.len(), 3);
    // At the high watermark: nothing, no error.
    assert!(log.read(30, 1 << 20).unwrap().slice.is_none());
    let err = log.read(31, 1 << 20).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::OffsetOutOfRange {
                offset: 31,
                high_watermark: 30,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn every_codec_reads_back_through_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let codecs = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];
    for (i, c) in codecs.iter().enumerate() {
        let records =
            (0..20).map(|j| record(&format!("k{j}"), &format!("{c:?}-{j}").repeat(20), T0 + j));
        let info = log.append(&batch(*c, records)).unwrap();
        assert_eq!(info.base_offset, i as u64 * 20);
    }
    let all = read_all(&log);
    assert_eq!(all.len(), 100);
    for (i, r) in all.iter().enumerate() {
        let c = codecs[i / 20];
        let j = i % 20;
        assert_eq!(
            r.value.as_deref(),
            Some(format!("{c:?}-{j}").repeat(20).as_bytes())
        );
        assert_eq!(r.headers[0].key, "source");
    }
}

#[test]
fn counts_from_batch_headers_match_the_records_read() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        ..small_config()
    };
    let log = open(dir.path(), config);
    for i in 0..60i64 {
        let compression = [Compression::None, Compression::Lz4][i as usize % 2];
        let n = 1 + i % 7;
        // Keys repeat within and across batches, so compaction leaves gaps inside batches.
        let records = (0..n).map(|j| record(&format!("k{}", (i + j) % 5), "v", T0 + i));
        log.append(&batch(compression, records)).unwrap();
    }
    let before = read_all(&log).len();
    compact(&log, T0 + 100, 1_000_000).unwrap();
    assert!(read_all(&log).len() < before, "compaction left no gap");
    for i in 0..40i64 {
        let records = (0..1 + i % 5).map(|j| record(&format!("new{i}-{j}"), &"v".repeat(60), T0));
        log.append(&batch(Compression::None, records)).unwrap();
    }
    assert!(log.segment_count() > 3, "{} segments", log.segment_count());
    let offsets: Vec<u64> = read_all(&log).iter().map(|r| r.offset as u64).collect();
    let end = log.high_watermark();
    let count = |start: u64, stop: u64, bytes_max: u64| {
        let (mut at, mut whole, mut decoded) = (start, 0, 0);
        while at < stop {
            let c = log.count_records(at, stop, bytes_max).unwrap();
            assert!(
                c.next_offset > at && c.next_offset <= stop,
                "{c:?} from {at}"
            );
            (at, whole, decoded) = (c.next_offset, whole + c.whole, decoded + c.decoded);
        }
        (whole, decoded)
    };
    // The whole log: every batch counted from its header.
    let (whole, decoded) = count(0, end, 1 << 20);
    assert_eq!((whole, decoded), (offsets.len() as u64, 0));
    for start in (0..end).step_by(7) {
        for stop in (start + 1..=end).step_by(11) {
            let expected = offsets.iter().filter(|o| (start..stop).contains(o)).count() as u64;
            let (whole, decoded) = count(start, stop, 300);
            assert_eq!(whole + decoded, expected, "[{start}, {stop})");
        }
    }
}

#[test]
fn stepping_back_by_bytes_takes_the_batches_that_fit_within_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    // (base offset, last offset, bytes) of each batch, of 1 to 5 records of varied sizes.
    let mut batches = Vec::new();
    for i in 0..80usize {
        let records = (0..1 + i % 5).map(|j| record("k", &"v".repeat(10 + (i * 37 + j) % 300), T0));
        let bytes = batch(Compression::None, records);
        let placed = log.append(&bytes).unwrap();
        batches.push((placed.base_offset, placed.last_offset, bytes.len() as u64));
    }
    let bases = log.segment_base_offsets();
    assert!(bases.len() > 4, "{} segments", bases.len());
    let segment_of = |offset: u64| bases.iter().rev().find(|&&b| b <= offset).copied();
    // What the answer must be: the oldest batch from which the batches up to the one holding
    // `end - 1`, all in its segment, take at most `bytes`.
    let expected = |end: u64, bytes: u64, at_least_one: bool| {
        let k = batches.iter().position(|b| b.1 >= end - 1).unwrap();
        let mut taken = None;
        let mut sum = 0;
        for j in (0..=k).rev() {
            let (base, _, len) = batches[j];
            if segment_of(base) != segment_of(end - 1) || sum + len > bytes {
                break;
            }
            sum += len;
            taken = Some(base);
        }
        match taken {
            Some(base) => base,
            None if at_least_one => batches[k].0,
            None => end,
        }
    };
    let high_watermark = log.high_watermark();
    for end in 1..=high_watermark {
        for bytes in [0, 100, 700, 1500, 4096, 1 << 20] {
            for at_least_one in [false, true] {
                assert_eq!(
                    log.offset_bytes_before(end, bytes, at_least_one).unwrap(),
                    expected(end, bytes, at_least_one),
                    "end {end}, {bytes} bytes, at least one: {at_least_one}"
                );
            }
        }
    }
    assert_eq!(log.offset_bytes_before(0, 100, true).unwrap(), 0);
    assert_eq!(
        log.offset_bytes_before(u64::MAX, 1 << 20, false).unwrap(),
        expected(high_watermark, 1 << 20, false)
    );
}

#[test]
fn timestamp_lookup_finds_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small_config());
    let mut stamps = Vec::new();
    for i in 0..300i64 {
        // Mostly increasing, with some records arriving late.
        let ts = if i % 13 == 5 {
            T0 + i * 10 - 95
        } else {
            T0 + i * 10
        };
        stamps.push(ts);
        log.append(&batch(Compression::None, [record("k", &i.to_string(), ts)]))
            .unwrap();
    }
    for target in (T0 - 50..T0 + 3050).step_by(7) {
        let expected = stamps
            .iter()
            .position(|&ts| ts >= target)
            .map(|o| (o as u64, stamps[o]));
        assert_eq!(
            log.offset_for_timestamp(target).unwrap(),
            expected,
            "target {target}"
        );
    }
    log.close().unwrap();
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(
        log.offset_for_timestamp(T0 + 1500).unwrap(),
        Some((150, T0 + 1500))
    );
}

#[test]
fn log_append_time_stamps_batches() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        timestamp_type: TimestampType::LogAppendTime,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let info = log
        .append_at(
            &batch(
                Compression::Gzip,
                [record("a", "1", 5), record("b", "2", 6)],
            ),
            T0,
        )
        .unwrap();
    assert_eq!(info.log_append_time_ms, Some(T0));
    assert!(read_all(&log).iter().all(|r| r.timestamp == T0));
}

#[test]
fn retention_deletes_old_and_excess_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        retention_ms: Some(60_000),
        ..small_config()
    };
    let log = open(dir.path(), config.clone());
    // 100 records written an hour ago, then 100 recent ones.
    for i in 0..200i64 {
        let ts = if i < 100 { T0 - 3_600_000 } else { T0 };
        log.append_at(
            &batch(Compression::None, [record("k", &"v".repeat(200), ts)]),
            T0,
        )
        .unwrap();
    }
    let segments_before = log.segment_count();
    let result = log.enforce_retention(T0).unwrap();
    assert!(result.segments_deleted > 0);
    assert_eq!(
        log.segment_count(),
        segments_before - result.segments_deleted as usize
    );
    // Only segments holding nothing but old records went.
    let start = log.log_start_offset();
    assert!(start > 0 && start <= 100, "log start {start}");
    assert_eq!(read_all(&log).first().unwrap().offset as u64, start);
    assert!(matches!(
        log.read(0, 100),
        Err(StorageError::OffsetOutOfRange { .. })
    ));

    // By size: keep at most ~3 segments' worth.
    log.set_config(LogConfig {
        retention_ms: None,
        retention_bytes: Some(3 * 4096),
        ..config.clone()
    });
    log.enforce_retention(T0).unwrap();
    assert!(
        log.size_bytes() <= 3 * 4096 + 4096,
        "size {}",
        log.size_bytes()
    );
    assert_eq!(log.high_watermark(), 200);

    // Everything old: all closed segments go, the active one stays and the log is usable.
    log.set_config(LogConfig {
        retention_ms: Some(0),
        ..config
    });
    log.enforce_retention(T0 + 10).unwrap();
    assert_eq!(log.segment_count(), 1);
    drop(log);
    let log = open(dir.path(), small_config());
    assert_eq!(log.log_start_offset(), read_all(&log)[0].offset as u64);
    assert_eq!(
        log.append(&batch(Compression::None, [record("k", "v", T0)]))
            .unwrap()
            .base_offset,
        200
    );
}

#[test]
fn compaction_keeps_the_last_value_per_key_and_expires_tombstones() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        delete_retention_ms: 1000,
        ..small_config()
    };
    let log = open(dir.path(), config.clone());
    // Every record written: (key, offset, value).
    let mut written: Vec<(String, u64, Option<String>)> = Vec::new();
    let mut offset = 0u64;
    for round in 0..30 {
        let records: Vec<NewRecord> = (0..8)
            .map(|k| {
                let key = format!("key-{k}");
                let mut r = record(&key, &format!("round-{round}"), T0 + round);
                if k == 3 && round == 29 - 10 {
                    r.value = None; // tombstone, later overwritten
                }
                if k == 5 && round == 15 {
                    r.value = None; // final tombstone
                }
                if k == 5 && round > 15 {
                    r.key = Some(Bytes::from_static(b"key-5b"));
                }
                r
            })
            .collect();
        for r in &records {
            let key = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
            let value = r
                .value
                .as_ref()
                .map(|v| String::from_utf8(v.to_vec()).unwrap());
            written.push((key, offset, value));
            offset += 1;
        }
        let codec = if round % 2 == 0 {
            Compression::Zstd
        } else {
            Compression::None
        };
        log.append(&batch(codec, records)).unwrap();
    }
    let before = read_all(&log).len();
    let active_base = *log_segment_bases(dir.path()).last().unwrap();
    assert!(
        active_base > 15 * 8 + 5,
        "the tombstone must sit in a closed segment"
    );
    // Compaction works on closed segments: the last record of each key before the active one.
    let mut last: BTreeMap<String, (u64, Option<String>)> = BTreeMap::new();
    for (key, o, value) in written.iter().filter(|w| w.1 < active_base) {
        last.insert(key.clone(), (*o, value.clone()));
    }

    // Tombstones still within delete.retention.ms stay.
    let result = compact(&log, T0 + 100, 1_000_000).unwrap();
    assert!(result.segments_rewritten > 0);
    assert!(result.bytes_after < result.bytes_before);
    let check = |log: &Log, tombstones_kept: bool| {
        let all = read_all(log);
        assert!(all.len() < before);
        let mut seen: HashMap<String, u64> = HashMap::new();
        for r in &all {
            let key = String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap();
            if (r.offset as u64) < active_base {
                let (last_offset, last_value) = &last[&key];
                // In compacted segments only the last record of a key survives.
                assert_eq!(r.offset as u64, *last_offset, "stale record for {key}");
                let value = r
                    .value
                    .as_ref()
                    .map(|v| String::from_utf8(v.to_vec()).unwrap());
                assert_eq!(value, *last_value);
            }
            assert!(
                seen.insert(key.clone(), r.offset as u64)
                    .is_none_or(|prev| prev < r.offset as u64)
            );
        }
        let tombstone = all
            .iter()
            .any(|r| r.key.as_deref() == Some(b"key-5".as_slice()));
        assert_eq!(tombstone, tombstones_kept);
    };
    check(&log, true);
    // Offsets never change: the high watermark and the next offset stay.
    assert_eq!(log.high_watermark(), offset);

    let result = compact(&log, T0 + 60_000, 1_000_000).unwrap();
    assert!(result.records_removed >= 1);
    check(&log, false);
    drop(log);
    let log = open(dir.path(), config);
    check(&log, false);
    assert_eq!(
        log.append(&batch(Compression::None, [record("z", "z", T0)]))
            .unwrap()
            .base_offset,
        offset
    );
}

fn log_segment_bases(dir: &std::path::Path) -> Vec<u64> {
    let mut bases: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".log").and_then(|s| s.parse().ok())
        })
        .collect();
    bases.sort();
    bases
}

#[test]
fn concurrent_appends_share_fsyncs_and_get_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(open(
        dir.path(),
        LogConfig {
            flush_policy: FlushPolicy::Always,
            segment_bytes: 64 * 1024,
            ..LogConfig::default()
        },
    ));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                (0..100)
                    .map(|i| {
                        log.append(&batch(
                            Compression::None,
                            [record(&format!("t{t}"), &format!("{t}-{i}"), T0)],
                        ))
                        .unwrap()
                        .base_offset
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut offsets: Vec<u64> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    offsets.sort();
    assert_eq!(offsets, (0..400).collect::<Vec<u64>>());
    // Every acknowledged append is readable: the high watermark covers them all.
    assert_eq!(log.high_watermark(), 400);
    let values: std::collections::HashSet<_> =
        read_all(&log).into_iter().map(|r| r.value).collect();
    assert_eq!(values.len(), 400);
}

#[test]
fn interval_policy_flushes_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            flush_policy: FlushPolicy::Interval { ms: 50 },
            ..LogConfig::default()
        },
    );
    log.append_at(&batch(Compression::None, [record("k", "v", T0)]), T0)
        .unwrap();
    // Visible before any fsync under the interval policy.
    assert_eq!(log.high_watermark(), 1);
    log.flush_if_due(T0 + 10).unwrap();
    log.flush_if_due(T0 + 100).unwrap();
    assert_eq!(read_all(&log).len(), 1);
}

#[test]
fn oversized_and_corrupt_batches_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(
        dir.path(),
        LogConfig {
            batch_bytes_max: 500,
            ..LogConfig::default()
        },
    );
    let err = log
        .append(&batch(
            Compression::None,
            [record("k", &"v".repeat(600), T0)],
        ))
        .unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Batch(weir_storage::BatchError::TooLarge { .. })
        ),
        "{err}"
    );
    let good = batch(Compression::None, [record("k", "v", T0)]);
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 2] ^= 1;
    // A good batch followed by a corrupt one: the whole set is refused.
    let mut set = good.clone();
    set.extend_from_slice(&bad);
    let err = log.append(&set).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::Batch(weir_storage::BatchError::CrcMismatch { .. })
        ),
        "{err}"
    );
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
    assert_eq!(log.append(&good).unwrap().base_offset, 0);
}

#[test]
fn segment_ms_rolls_an_old_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_ms: 60_000,
        ..LogConfig::default()
    };
    let log = open(dir.path(), config);
    let now = weir_now();
    log.append_at(&batch(Compression::None, [record("k", "a", T0)]), now)
        .unwrap();
    log.append_at(
        &batch(Compression::None, [record("k", "b", T0)]),
        now + 59_000,
    )
    .unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append_at(
        &batch(Compression::None, [record("k", "c", T0)]),
        now + 61_000,
    )
    .unwrap();
    assert_eq!(log.segment_count(), 2);
    assert_eq!(read_all(&log).len(), 3);
}

fn weir_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn an_interrupted_compaction_swap_is_finished_or_discarded_on_open() {
    let config = LogConfig {
        cleanup_policy: CleanupPolicy {
            delete: false,
            compact: true,
        },
        ..small_config()
    };
    let live = tempfile::tempdir().unwrap();
    let log = open(live.path(), config.clone());
    for i in 0..400 {
        log.append(&batch(
            Compression::None,
            [record(&format!("k{}", i % 5), &i.to_string(), T0)],
        ))
        .unwrap();
    }
    log.close().unwrap();
    // Two copies from before compaction.
    let committed = tempfile::tempdir().unwrap();
    let uncommitted = tempfile::tempdir().unwrap();
    copy_dir(live.path(), committed.path());
    copy_dir(live.path(), uncommitted.path());
    let before = read_all(&log);
    compact(&log, T0, 1000).unwrap();
    let after = read_all(&log);
    assert!(after.len() < before.len());
    drop(log);

    // A crash after the commit marker: the cleaned first segment waits in cleaned/.
    let first = log_segment_bases(live.path())[0];
    for dir in [committed.path(), uncommitted.path()] {
        let cleaned = dir.join("cleaned");
        std::fs::create_dir(&cleaned).unwrap();
        for suffix in ["log", "index", "timeindex"] {
            let name = format!("{first:020}.{suffix}");
            std::fs::copy(live.path().join(&name), cleaned.join(&name)).unwrap();
        }
    }
    std::fs::write(
        committed.path().join(format!("cleaned/{first:020}.swap")),
        b"",
    )
    .unwrap();

    let log = open(committed.path(), config.clone());
    let second = log_segment_bases(committed.path())[1];
    let in_first = |records: &[Record]| -> Vec<i64> {
        records
            .iter()
            .map(|r| r.offset)
            .filter(|&o| (o as u64) < second)
            .collect()
    };
    assert_eq!(in_first(&read_all(&log)), in_first(&after));
    assert!(!committed.path().join("cleaned").exists());

    // Without the marker the cleaned files are discarded and the original stays.
    let log = open(uncommitted.path(), config);
    assert_eq!(in_first(&read_all(&log)), in_first(&before));
    assert!(!uncommitted.path().join("cleaned").exists());
}

fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, values: &[&str]) -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None).producer(weir_storage::batch::ProducerInfo {
        producer_id,
        producer_epoch: epoch,
        base_sequence: sequence,
    });
    for v in values {
        b.push(record("k", v, T0));
    }
    b.build().unwrap().to_vec()
}

#[test]
fn duplicate_batch_returns_original_offset_and_gaps_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), LogConfig::default());
    let first = log
        .append(&idempotent_batch(7, 0, 0, &["a", "b", "c"]))
        .unwrap();
    assert_eq!((first.base_offset, first.last_offset), (0, 2));
    let second = log.append(&idempotent_batch(7, 0, 3, &["d", "e"])).unwrap();
    assert_eq!((second.base_offset, second.last_offset), (3, 4));
    // Another producer interleaves.
    log.append(&idempotent_batch(8, 0, 0, &["x"])).unwrap();

    // A retry of either batch in the window: the original offsets, nothing written.
    let retry = log
        .append(&idempotent_batch(7, 0, 0, &["a", "b", "c"]))
        .unwrap();
    assert_eq!((retry.base_offset, retry.last_offset), (0, 2));
    assert_eq!(log.log_end_offset(), 6);

    // A gap in sequences is refused, naming what was expected.
    let err = log.append(&idempotent_batch(7, 0, 9, &["z"])).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::OutOfOrderSequence {
                producer_id: 7,
                expected: 5,
                received: 9
            }
        ),
        "{err}"
    );
    // A new epoch starts again at 0; the old epoch is fenced from then on.
    log.append(&idempotent_batch(7, 1, 0, &["f"])).unwrap();
    let err = log.append(&idempotent_batch(7, 0, 5, &["g"])).unwrap_err();
    assert!(
        matches!(
            err,
            StorageError::ProducerFenced {
                current: 1,
                received: 0,
                ..
            }
        ),
        "{err}"
    );

    // The window is rebuilt from the log after a restart.
    drop(log);
    let log = open(dir.path(), LogConfig::default());
    let retry = log.append(&idempotent_batch(7, 1, 0, &["f"])).unwrap();
    assert_eq!(retry.base_offset, 6);
    assert_eq!(
        log.append(&idempotent_batch(7, 1, 1, &["h"]))
            .unwrap()
            .base_offset,
        7
    );
    assert_eq!(read_all(&log).len(), 8);
}
