//! Record batches a hostile or broken producer sends: forged headers and bodies under a valid
//! CRC, and compression bombs.

use std::io::Write;

use bytes::Bytes;
use weir_storage::batch::BATCH_HEADER_BYTES;
use weir_storage::{BatchBuilder, Compression, NewRecord};

/// A well-formed batch of one record with key `k` and `value`.
pub fn one_record_batch(compression: Compression, value: &[u8]) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    b.push(NewRecord {
        timestamp: 1_700_000_000_000,
        key: Some(Bytes::from_static(b"k")),
        value: Some(Bytes::copy_from_slice(value)),
        headers: Vec::new(),
    });
    b.build().expect("a one-record batch builds").to_vec()
}

/// Rewrites a batch's header fields or body and gives the result a valid CRC, as a producer
/// that means harm can.
pub struct Forge<'a> {
    batch: &'a [u8],
    attributes: Option<i16>,
    last_offset_delta: Option<i32>,
    record_count: Option<i32>,
    body: Option<&'a [u8]>,
}

impl<'a> Forge<'a> {
    pub fn new(batch: &'a [u8]) -> Self {
        Forge {
            batch,
            attributes: None,
            last_offset_delta: None,
            record_count: None,
            body: None,
        }
    }

    pub fn attributes(mut self, attributes: i16) -> Self {
        self.attributes = Some(attributes);
        self
    }

    pub fn last_offset_delta(mut self, delta: i32) -> Self {
        self.last_offset_delta = Some(delta);
        self
    }

    pub fn record_count(mut self, count: i32) -> Self {
        self.record_count = Some(count);
        self
    }

    /// The bytes after the header: the (compressed) records.
    pub fn body(mut self, body: &'a [u8]) -> Self {
        self.body = Some(body);
        self
    }

    pub fn build(self) -> Vec<u8> {
        let mut out = self.batch[..BATCH_HEADER_BYTES].to_vec();
        out.extend_from_slice(self.body.unwrap_or(&self.batch[BATCH_HEADER_BYTES..]));
        let length = i32::try_from(out.len() - 12).expect("a batch under 2 GiB");
        out[8..12].copy_from_slice(&length.to_be_bytes());
        if let Some(a) = self.attributes {
            out[21..23].copy_from_slice(&a.to_be_bytes());
        }
        if let Some(d) = self.last_offset_delta {
            out[23..27].copy_from_slice(&d.to_be_bytes());
        }
        if let Some(n) = self.record_count {
            out[57..61].copy_from_slice(&n.to_be_bytes());
        }
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A zstd batch of one record whose value is `value_bytes` zeros: a few kilobytes on the wire
/// however large the value, and a valid batch in every other respect.
pub fn zstd_bomb(value_bytes: u64) -> Vec<u8> {
    let mut record = vec![0u8]; // attributes
    put_varint(&mut record, 0); // timestamp delta
    put_varint(&mut record, 0); // offset delta
    put_varint(&mut record, -1); // null key
    put_varint(&mut record, value_bytes as i64);
    let mut tail = Vec::new();
    put_varint(&mut tail, 0); // no headers
    let mut plain = Vec::new();
    put_varint(
        &mut plain,
        (record.len() as u64 + value_bytes + tail.len() as u64) as i64,
    );
    plain.extend_from_slice(&record);
    let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("a zstd encoder");
    encoder.write_all(&plain).expect("compressing");
    let zeros = vec![0u8; 1 << 20];
    let mut left = value_bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        encoder.write_all(&zeros[..n]).expect("compressing");
        left -= n as u64;
    }
    encoder.write_all(&tail).expect("compressing");
    let body = encoder.finish().expect("compressing");
    Forge::new(&one_record_batch(Compression::Zstd, b"v"))
        .body(&body)
        .build()
}
