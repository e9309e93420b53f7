//! The record batches both benchmarks write: 1 KiB records, uncompressed unless a case says.

use bytes::Bytes;
use weir_storage::{BatchBuilder, Compression, NewRecord};

pub const RECORD_BYTES: usize = 1024;

/// One batch of `records` records of 1 KiB with varied bytes, compressed with `compression`.
pub fn batch_of_1kib(records: usize, compression: Compression) -> anyhow::Result<Bytes> {
    let mut b = BatchBuilder::new(compression);
    for i in 0..records {
        let value: Vec<u8> = (0..RECORD_BYTES)
            .map(|j| ((i * 31 + j) % 251) as u8)
            .collect();
        b.push(NewRecord {
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
            value: Some(Bytes::from(value)),
            headers: Vec::new(),
        });
    }
    Ok(b.build()?)
}
