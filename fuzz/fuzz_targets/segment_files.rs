//! Index files and a recovery point that are whatever the input makes them, beside a log of
//! valid batches, as a crash, a bad disk or a careless hand can leave a partition: opening it
//! keeps what matches the log and rebuilds the rest, and every record reads back at its offset.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_storage::{BatchBuilder, Compression, Log, LogConfig, NewRecord};

fuzz_target!(|data: &[u8]| {
    // The first byte: how many batches the log holds; the next three cut the rest into the
    // offset index, the time index and the recovery point.
    let [batches, a, b, rest @ ..] = data else {
        return;
    };
    let cut = |x: u8| usize::from(x) * rest.len() / 256;
    let (first, second) = (cut(*a).min(cut(*b)), cut(*a).max(cut(*b)));
    let dir = tempfile::tempdir().expect("a temp dir");
    let path = |suffix: &str| dir.path().join(format!("{:020}.{suffix}", 0));
    let mut log = Vec::new();
    let mut offset = 0i64;
    for i in 0..usize::from(*batches % 64) {
        let mut b = BatchBuilder::new(Compression::None);
        for j in 0..=i % 3 {
            b.push(NewRecord {
                timestamp: 1_700_000_000_000 + (i * 10 + j) as i64,
                value: Some(Bytes::from(vec![b'v'; 100 + i * 40])),
                ..NewRecord::default()
            });
        }
        let mut batch = b.build().expect("a batch").to_vec();
        weir_storage::batch::set_base_offset(&mut batch, offset);
        offset += (i % 3 + 1) as i64;
        log.extend_from_slice(&batch);
    }
    std::fs::write(path("log"), &log).expect("writing the log");
    std::fs::write(path("index"), &rest[..first]).expect("writing the index");
    std::fs::write(path("timeindex"), &rest[first..second]).expect("writing the time index");
    std::fs::write(dir.path().join("recovery-point"), &rest[second..]).expect("writing");
    let config = LogConfig {
        index_interval_bytes: 128,
        ..LogConfig::default()
    };
    let log = Log::open(dir.path(), config).expect("a log of valid batches opens");
    assert_eq!(log.high_watermark(), offset as u64);
    for wanted in 0..offset {
        let records = log.read_records(wanted as u64, 1).expect("a record reads");
        assert_eq!(records.first().map(|r| r.offset), Some(wanted));
    }
    // Counts from batch headers find every record from any start, whatever the indexes say.
    let end = offset as u64;
    for start in 0..end {
        let (mut at, mut counted) = (start, 0);
        while at < end {
            let count = log.count_records(at, end, 1).expect("a count");
            assert!(count.next_offset > at, "a count moves on");
            counted += count.records();
            at = count.next_offset;
        }
        assert_eq!(counted, end - start);
    }
    let _ = log.offset_for_timestamp(1_700_000_000_100);
});
