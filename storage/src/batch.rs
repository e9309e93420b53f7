//! Kafka RecordBatch v2: header parsing and validation, the builder used by internal writers,
//! and the record reader.
//!
//! Layout of a batch (big-endian), with the byte position of each field:
//!
//! ```text
//!  0 base_offset i64          27 base_timestamp i64      53 base_sequence i32
//!  8 batch_length i32         35 max_timestamp i64       57 record_count i32
//! 12 partition_leader_epoch   43 producer_id i64         61 records...
//! 16 magic i8 (= 2)           51 producer_epoch i16
//! 17 crc u32 (CRC32C of bytes 21..end)
//! 21 attributes i16
//! 23 last_offset_delta i32
//! ```
//!
//! The CRC does not cover `base_offset` or `partition_leader_epoch`, so the log rewrites them
//! without touching the rest: stored batches are the bytes the producer sent.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, BATCH_DECOMPRESSED_BYTES_MAX};
use crate::error::BatchError;

/// Bytes of a v2 batch header, up to and including the record count.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length` ends: `base_offset` and `batch_length` itself.
pub const BATCH_LENGTH_PREFIX_BYTES: usize = 12;

const POS_BATCH_LENGTH: usize = 8;
const POS_LEADER_EPOCH: usize = 12;
const POS_MAGIC: usize = 16;
const POS_CRC: usize = 17;
const POS_ATTRIBUTES: usize = 21;
const POS_LAST_OFFSET_DELTA: usize = 23;
const POS_BASE_TIMESTAMP: usize = 27;
const POS_MAX_TIMESTAMP: usize = 35;
const POS_PRODUCER_ID: usize = 43;
const POS_PRODUCER_EPOCH: usize = 51;
const POS_BASE_SEQUENCE: usize = 53;
const POS_RECORD_COUNT: usize = 57;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_LOG_APPEND_TIME: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;

/// Compression codec of a batch, as in the low three attribute bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_attributes(attributes: i16) -> Result<Self, BatchError> {
        Ok(match attributes & ATTR_COMPRESSION_MASK {
            0 => Compression::None,
            1 => Compression::Gzip,
            2 => Compression::Snappy,
            3 => Compression::Lz4,
            4 => Compression::Zstd,
            other => {
                return Err(BatchError::Decode {
                    reason: format!("unknown compression codec {other}"),
                });
            }
        })
    }

    fn attribute_bits(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

fn read_i16(buf: &[u8], pos: usize) -> i16 {
    i16::from_be_bytes([buf[pos], buf[pos + 1]])
}

fn read_i32(buf: &[u8], pos: usize) -> i32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[pos..pos + 4]);
    i32::from_be_bytes(b)
}

fn read_i64(buf: &[u8], pos: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[pos..pos + 8]);
    i64::from_be_bytes(b)
}

/// The fixed-size header of a v2 record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    /// Bytes after the `batch_length` field.
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub record_count: i32,
}

impl BatchHeader {
    /// Parses the header at the start of `buf` and checks what the header alone can tell:
    /// size, magic, and that the offset delta fits the record count. The CRC is checked by
    /// [`validate_batch`], which needs the whole batch.
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < BATCH_HEADER_BYTES {
            return Err(BatchError::TooShort {
                bytes: buf.len(),
                header_bytes: BATCH_HEADER_BYTES,
            });
        }
        let header = BatchHeader {
            base_offset: read_i64(buf, 0),
            batch_length: read_i32(buf, POS_BATCH_LENGTH),
            partition_leader_epoch: read_i32(buf, POS_LEADER_EPOCH),
            magic: buf[POS_MAGIC] as i8,
            crc: u32::from_be_bytes([
                buf[POS_CRC],
                buf[POS_CRC + 1],
                buf[POS_CRC + 2],
                buf[POS_CRC + 3],
            ]),
            attributes: read_i16(buf, POS_ATTRIBUTES),
            last_offset_delta: read_i32(buf, POS_LAST_OFFSET_DELTA),
            base_timestamp: read_i64(buf, POS_BASE_TIMESTAMP),
            max_timestamp: read_i64(buf, POS_MAX_TIMESTAMP),
            producer_id: read_i64(buf, POS_PRODUCER_ID),
            producer_epoch: read_i16(buf, POS_PRODUCER_EPOCH),
            base_sequence: read_i32(buf, POS_BASE_SEQUENCE),
            record_count: read_i32(buf, POS_RECORD_COUNT),
        };
        if header.magic != 2 {
            return Err(BatchError::BadMagic {
                magic: header.magic,
            });
        }
        let min_length = (BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES) as i32;
        if header.batch_length < min_length {
            return Err(BatchError::LengthMismatch {
                declared: i64::from(header.batch_length),
                available: buf.len() - BATCH_LENGTH_PREFIX_BYTES,
            });
        }
        // A compacted batch may hold fewer records than its offset span, never more.
        if header.last_offset_delta < 0
            || header.record_count < 0
            || header.record_count > header.last_offset_delta.saturating_add(1)
        {
            return Err(BatchError::BadOffsetDelta {
                last_offset_delta: header.last_offset_delta,
                record_count: header.record_count,
            });
        }
        Ok(header)
    }

    /// Bytes of the whole batch, header included.
    pub fn total_bytes(&self) -> u64 {
        BATCH_LENGTH_PREFIX_BYTES as u64 + self.batch_length as u64
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + i64::from(self.last_offset_delta)
    }

    /// Records the header says the batch holds.
    pub fn records(&self) -> u64 {
        self.record_count.max(0) as u64
    }

    /// Offsets the batch spans: `last_offset_delta + 1`.
    pub fn offset_count(&self) -> u64 {
        self.last_offset_delta as u64 + 1
    }

    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes)
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_LOG_APPEND_TIME != 0
    }
}

/// Validates the batch at the start of `buf`: header, length against the bytes present, size
/// limit, and CRC32C. Returns the header; the batch is `buf[..header.total_bytes()]`.
pub fn validate_batch(buf: &[u8], bytes_max: u64) -> Result<BatchHeader, BatchError> {
    let header = BatchHeader::parse(buf)?;
    let total = header.total_bytes();
    if total > bytes_max {
        return Err(BatchError::TooLarge {
            bytes: total,
            bytes_max,
        });
    }
    if total > buf.len() as u64 {
        return Err(BatchError::LengthMismatch {
            declared: i64::from(header.batch_length),
            available: buf.len() - BATCH_LENGTH_PREFIX_BYTES,
        });
    }
    let actual = crc32c::crc32c(&buf[POS_ATTRIBUTES..total as usize]);
    if actual != header.crc {
        return Err(BatchError::CrcMismatch {
            expected: header.crc,
            actual,
        });
    }
    Ok(header)
}

/// Validates a record set (one or more batches back to back, as in a Produce request) and
/// returns each batch's header. The set must end exactly at a batch boundary.
pub fn validate_record_set(
    buf: &[u8],
    batch_bytes_max: u64,
) -> Result<Vec<BatchHeader>, BatchError> {
    if buf.is_empty() {
        return Err(BatchError::Empty);
    }
    let mut headers = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let header = validate_batch(&buf[pos..], batch_bytes_max)?;
        pos += header.total_bytes() as usize;
        headers.push(header);
    }
    Ok(headers)
}

/// Writes `base_offset` into the batch at the start of `batch`. Not covered by the CRC.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Marks the batch as log-append-time stamped with `timestamp_ms` and recomputes its CRC,
/// as Kafka does for topics with `message.timestamp.type=LogAppendTime`.
pub fn set_log_append_time(batch: &mut [u8], header: &BatchHeader, timestamp_ms: i64) {
    let total = header.total_bytes() as usize;
    let (head, records) = batch[..total].split_at_mut(BATCH_HEADER_BYTES);
    stamp_log_append_time(head, records, header, timestamp_ms);
}

/// [`set_log_append_time`] for a batch in two pieces: a copy of its header (`head`, the first
/// [`BATCH_HEADER_BYTES`]), which is rewritten, and the bytes after it, read only for the CRC.
pub fn stamp_log_append_time(
    head: &mut [u8],
    records: &[u8],
    header: &BatchHeader,
    timestamp_ms: i64,
) {
    let attributes = header.attributes | ATTR_LOG_APPEND_TIME;
    head[POS_ATTRIBUTES..POS_ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    head[POS_MAX_TIMESTAMP..POS_MAX_TIMESTAMP + 8].copy_from_slice(&timestamp_ms.to_be_bytes());
    let crc = crc32c::crc32c(&head[POS_ATTRIBUTES..BATCH_HEADER_BYTES]);
    let crc = crc32c::crc32c_append(crc, records);
    head[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// One record header. Keys may repeat within a record, as in Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// A record to be written by [`BatchBuilder`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

impl NewRecord {
    /// Bytes the record takes in a batch at most: its key, value and headers, with room for
    /// the varints and attributes around them.
    pub fn bytes_in_batch(&self) -> usize {
        let bytes = |b: &Option<Bytes>| b.as_ref().map_or(0, Bytes::len);
        32 + bytes(&self.key)
            + bytes(&self.value)
            + self
                .headers
                .iter()
                .map(|h| 8 + h.key.len() + bytes(&h.value))
                .sum::<usize>()
    }
}

/// `records` cut, in order, into runs that each fit one batch of at most `batch_bytes_max`
/// bytes (a topic's `max.message.bytes`); a record too large for any batch is a run of its own.
pub fn in_batches(records: Vec<NewRecord>, batch_bytes_max: u64) -> Vec<Vec<NewRecord>> {
    let room = usize::try_from(batch_bytes_max)
        .unwrap_or(usize::MAX)
        .saturating_sub(BATCH_HEADER_BYTES);
    let mut runs: Vec<Vec<NewRecord>> = Vec::new();
    let mut bytes = 0;
    for record in records {
        let size = record.bytes_in_batch();
        match runs.last_mut() {
            Some(run) if bytes + size <= room => {
                run.push(record);
                bytes += size;
            }
            _ => {
                runs.push(vec![record]);
                bytes = size;
            }
        }
    }
    runs
}

/// Producer identity carried in a batch header; `NONE` for plain producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl ProducerInfo {
    pub const NONE: ProducerInfo = ProducerInfo {
        producer_id: -1,
        producer_epoch: -1,
        base_sequence: -1,
    };
}

/// Builds one v2 batch for internal writers (HTTP produce, pipelines, SQL sinks, compaction).
///
/// Records carry offset deltas; the log assigns the base offset on append.
#[derive(Debug, Clone)]
pub struct BatchBuilder {
    compression: Compression,
    producer: ProducerInfo,
    /// (offset delta, record); deltas strictly increase.
    records: Vec<(i32, NewRecord)>,
    last_offset_delta: Option<i32>,
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            producer: ProducerInfo::NONE,
            records: Vec::new(),
            last_offset_delta: None,
        }
    }

    pub fn producer(mut self, producer: ProducerInfo) -> Self {
        self.producer = producer;
        self
    }

    /// Adds a record at the next offset delta.
    pub fn push(&mut self, record: NewRecord) {
        let delta = self.records.last().map_or(0, |(d, _)| d + 1);
        self.records.push((delta, record));
    }

    /// Adds a record at an explicit offset delta, leaving a gap as compaction does.
    /// Deltas must strictly increase.
    pub fn push_at(&mut self, offset_delta: i32, record: NewRecord) {
        assert!(
            self.records.last().is_none_or(|(d, _)| *d < offset_delta),
            "offset deltas must increase"
        );
        self.records.push((offset_delta, record));
    }

    /// Keeps the batch's offset span up to `last_offset_delta` even when the records pushed end
    /// earlier, so a compacted batch still covers the offsets of the original.
    pub fn last_offset_delta(&mut self, last_offset_delta: i32) {
        self.last_offset_delta = Some(last_offset_delta);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Encodes the batch with base offset 0.
    pub fn build(&self) -> Result<Bytes, BatchError> {
        if self.records.is_empty() {
            return Err(BatchError::Empty);
        }
        let base_timestamp = self
            .records
            .iter()
            .map(|(_, r)| r.timestamp)
            .min()
            .unwrap_or(-1);
        let max_timestamp = self
            .records
            .iter()
            .map(|(_, r)| r.timestamp)
            .max()
            .unwrap_or(-1);
        let records_last_delta = self.records.last().map_or(0, |(d, _)| *d);
        let last_offset_delta = self
            .last_offset_delta
            .unwrap_or(records_last_delta)
            .max(records_last_delta);

        let mut plain = BytesMut::new();
        for (delta, record) in &self.records {
            encode_record(
                &mut plain,
                *delta,
                record.timestamp - base_timestamp,
                record,
            )?;
        }
        let mut body = Vec::new();
        codec::compress(self.compression, &plain, &mut body)?;

        let record_count = i32::try_from(self.records.len()).map_err(|_| BatchError::Encode {
            reason: format!("{} records do not fit one batch", self.records.len()),
        })?;
        let batch_length = i32::try_from(
            BATCH_HEADER_BYTES - BATCH_LENGTH_PREFIX_BYTES + body.len(),
        )
        .map_err(|_| BatchError::Encode {
            reason: format!("{} bytes of records do not fit one batch", body.len()),
        })?;
        let mut out = BytesMut::with_capacity(BATCH_HEADER_BYTES + body.len());
        out.put_i64(0);
        out.put_i32(batch_length);
        out.put_i32(-1);
        out.put_i8(2);
        out.put_u32(0);
        out.put_i16(self.compression.attribute_bits());
        out.put_i32(last_offset_delta);
        out.put_i64(base_timestamp);
        out.put_i64(max_timestamp);
        out.put_i64(self.producer.producer_id);
        out.put_i16(self.producer.producer_epoch);
        out.put_i32(self.producer.base_sequence);
        out.put_i32(record_count);
        out.put_slice(&body);
        let crc = crc32c::crc32c(&out[POS_ATTRIBUTES..]);
        out[POS_CRC..POS_CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Ok(out.freeze())
    }
}

fn put_varint(buf: &mut BytesMut, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn varint_len(value: i64) -> usize {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_varbytes(buf: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(buf, -1),
        Some(b) => {
            put_varint(buf, b.len() as i64);
            buf.put_slice(b);
        }
    }
}

fn varbytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => varint_len(-1),
        Some(b) => varint_len(b.len() as i64) + b.len(),
    }
}

fn encode_record(
    buf: &mut BytesMut,
    offset_delta: i32,
    timestamp_delta: i64,
    record: &NewRecord,
) -> Result<(), BatchError> {
    let key = record.key.as_deref();
    let value = record.value.as_deref();
    let mut body_len = 1 // attributes
        + varint_len(timestamp_delta)
        + varint_len(i64::from(offset_delta))
        + varbytes_len(key)
        + varbytes_len(value)
        + varint_len(record.headers.len() as i64);
    for h in &record.headers {
        body_len += varbytes_len(Some(h.key.as_bytes())) + varbytes_len(h.value.as_deref());
    }
    if body_len > i32::MAX as usize {
        return Err(BatchError::Encode {
            reason: format!("record of {body_len} bytes is too large"),
        });
    }
    put_varint(buf, body_len as i64);
    buf.put_i8(0);
    put_varint(buf, timestamp_delta);
    put_varint(buf, i64::from(offset_delta));
    put_varbytes(buf, key);
    put_varbytes(buf, value);
    put_varint(buf, record.headers.len() as i64);
    for h in &record.headers {
        put_varbytes(buf, Some(h.key.as_bytes()));
        put_varbytes(buf, h.value.as_deref());
    }
    Ok(())
}

/// Reads the fields of records, checking every length against what remains.
struct Cursor<'a> {
    buf: &'a [u8],
}

fn malformed(what: impl std::fmt::Display) -> BatchError {
    BatchError::Decode {
        reason: format!("malformed record: {what}"),
    }
}

impl<'a> Cursor<'a> {
    fn varint(&mut self) -> Result<i64, BatchError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some((&byte, rest)) = self.buf.split_first() else {
                return Err(malformed("varint runs past the end"));
            };
            self.buf = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(((value >> 1) as i64) ^ -((value & 1) as i64));
            }
        }
        Err(malformed("varint longer than 10 bytes"))
    }

    /// A length that must fit in what remains; -1 is null where `nullable`.
    fn length(&mut self, what: &str, nullable: bool) -> Result<Option<usize>, BatchError> {
        match self.varint()? {
            -1 if nullable => Ok(None),
            len if len < 0 || len > self.buf.len() as i64 => Err(malformed(format_args!(
                "{what} {len} with {} bytes left",
                self.buf.len()
            ))),
            len => Ok(Some(len as usize)),
        }
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        head
    }

    fn bytes(&mut self, what: &str) -> Result<Option<&'a [u8]>, BatchError> {
        Ok(self.length(what, true)?.map(|len| self.take(len)))
    }
}

/// One record's fields, borrowed from its batch's (decompressed) body.
struct RawRecord<'a> {
    timestamp_delta: i64,
    offset_delta: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: usize,
    /// The encoded headers, already checked.
    headers: &'a [u8],
    /// Whether a header asks for delayed delivery ([`crate::delay`]).
    delay_header: bool,
}

/// Parses the next record: its length, then fields that must fill exactly that length.
fn next_record<'a>(body: &mut Cursor<'a>) -> Result<RawRecord<'a>, BatchError> {
    let len = body.length("record length", false)?.unwrap_or_default();
    let mut rec = Cursor {
        buf: body.take(len),
    };
    if rec.buf.is_empty() {
        return Err(malformed("empty record"));
    }
    rec.take(1); // attributes: unused in v2
    let timestamp_delta = rec.varint()?;
    let offset_delta = rec.varint()?;
    let key = rec.bytes("key length")?;
    let value = rec.bytes("value length")?;
    // A header takes at least two bytes: an empty key and a null value.
    let header_count = rec.varint()?;
    if header_count < 0 || header_count > rec.buf.len() as i64 / 2 {
        return Err(malformed(format_args!(
            "{header_count} headers in {} bytes",
            rec.buf.len()
        )));
    }
    let headers = rec.buf;
    let mut delay_header = false;
    for _ in 0..header_count {
        let Some(key) = rec.bytes("header key length")? else {
            return Err(malformed("null header key"));
        };
        delay_header |= crate::delay::is_delay_header(key);
        rec.bytes("header value length")?;
    }
    if !rec.buf.is_empty() {
        return Err(malformed(format_args!(
            "{} bytes after the headers of a record of {len} bytes",
            rec.buf.len()
        )));
    }
    Ok(RawRecord {
        timestamp_delta,
        offset_delta,
        key,
        value,
        header_count: header_count as usize,
        headers,
        delay_header,
    })
}

thread_local! {
    /// Decompressed bodies of batches being checked, reused between calls on one thread.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}
/// A scratch buffer larger than this is given back after use rather than kept for the next.
const SCRATCH_KEPT_BYTES_MAX: usize = 4 << 20;

/// Checks every record of a batch a producer sent, as Kafka does before it appends: the batch
/// is not a control batch, it holds as many records as offsets, it decompresses within
/// [`BATCH_DECOMPRESSED_BYTES_MAX`], and its records carry consecutive offset deltas and fill
/// the body exactly, every length and count inside them within the bytes that hold it.
/// Answers whether a record carries a header asking for delayed delivery.
pub fn validate_records(header: &BatchHeader, batch: &[u8]) -> Result<bool, BatchError> {
    if header.is_control() {
        return Err(BatchError::Invalid {
            reason: "control batches are written by the broker, not by producers".into(),
        });
    }
    if header.record_count < 1 || header.record_count - 1 != header.last_offset_delta {
        return Err(BatchError::BadOffsetDelta {
            last_offset_delta: header.last_offset_delta,
            record_count: header.record_count,
        });
    }
    let body = &batch[BATCH_HEADER_BYTES..header.total_bytes() as usize];
    let check = |plain: &[u8]| {
        let mut cur = Cursor { buf: plain };
        let mut delayed = false;
        for i in 0..header.record_count {
            let record = next_record(&mut cur)?;
            delayed |= record.delay_header;
            if record.offset_delta != i64::from(i) {
                return Err(BatchError::Invalid {
                    reason: format!(
                        "record {i} has offset delta {}; deltas must count up from 0",
                        record.offset_delta
                    ),
                });
            }
        }
        if !cur.buf.is_empty() {
            return Err(malformed(format_args!(
                "{} bytes after the last of {} records",
                cur.buf.len(),
                header.record_count
            )));
        }
        Ok(delayed)
    };
    match header.compression()? {
        Compression::None => check(body),
        compression => SCRATCH.with(|scratch| {
            let mut plain = scratch.borrow_mut();
            let result =
                codec::decompress(compression, body, BATCH_DECOMPRESSED_BYTES_MAX, &mut plain)
                    .and_then(|()| check(&plain));
            if plain.capacity() > SCRATCH_KEPT_BYTES_MAX {
                *plain = Vec::new();
            }
            result
        }),
    }
}

/// Decodes every record of every batch in `batches` (whole batches back to back, as a log read
/// returns them), checking each CRC first and decompressing where needed. Control batches
/// (transaction markers) are skipped: they hold no user records.
pub fn decode_records(batches: &Bytes) -> Result<Vec<Record>, BatchError> {
    decode_records_from(batches, i64::MIN, usize::MAX)
}

/// [`decode_records`] of the records at or after `offset`; those before it are stepped over,
/// not built (a read starts at the batch that holds its first offset). Batches are checked and
/// decoded until `records_max` records are: the batch that reaches it is decoded whole, the
/// ones after it are not looked at.
pub fn decode_records_from(
    batches: &Bytes,
    offset: i64,
    records_max: usize,
) -> Result<Vec<Record>, BatchError> {
    let mut out = Vec::new();
    for_each_batch_while(batches, |header, body| {
        if !header.is_control() && header.last_offset() >= offset {
            decode_batch_records_where(header, body, &mut out, |o| o >= offset)?;
        }
        Ok(out.len() < records_max)
    })?;
    Ok(out)
}

/// How many records of `batches` (whole batches back to back, as a read returns them) fall in
/// `[start, end)`: a batch wholly inside counts by its header's record count, unread; a batch
/// the range cuts is decoded. Control batches hold no records. `next_offset` is where the
/// batches end, or `end` when they reach past it or there are none.
pub fn count_records_in(
    batches: &Bytes,
    start: u64,
    end: u64,
) -> Result<crate::RecordCount, BatchError> {
    let (first, last) = (start as i64, end as i64 - 1);
    let mut count = crate::RecordCount {
        whole: 0,
        decoded: 0,
        next_offset: end,
    };
    let mut cut = Vec::new();
    for_each_batch(batches, |header, batch| {
        count.next_offset = (header.last_offset().saturating_add(1).max(0) as u64).min(end);
        if header.is_control() || header.last_offset() < first || header.base_offset > last {
            return Ok(());
        }
        if header.base_offset >= first && header.last_offset() <= last {
            count.whole += header.records();
            Ok(())
        } else {
            decode_batch_records_where(header, batch, &mut cut, |o| (first..=last).contains(&o))
        }
    })?;
    count.decoded = cut.len() as u64;
    Ok(count)
}

/// Calls `f` with each validated batch header and its full bytes.
pub fn for_each_batch(
    batches: &Bytes,
    mut f: impl FnMut(&BatchHeader, Bytes) -> Result<(), BatchError>,
) -> Result<(), BatchError> {
    for_each_batch_while(batches, |header, batch| f(header, batch).map(|()| true))
}

/// [`for_each_batch`] until `f` answers `false`; the batches after that one are not checked.
fn for_each_batch_while(
    batches: &Bytes,
    mut f: impl FnMut(&BatchHeader, Bytes) -> Result<bool, BatchError>,
) -> Result<(), BatchError> {
    let mut pos = 0usize;
    while pos < batches.len() {
        let header = validate_batch(&batches[pos..], u64::MAX)?;
        let end = pos + header.total_bytes() as usize;
        if !f(&header, batches.slice(pos..end))? {
            break;
        }
        pos = end;
    }
    Ok(())
}

/// Decodes the records of one validated batch into `out`. Keys, values and header values are
/// slices of the batch (or of its decompressed body), not copies.
pub fn decode_batch_records(
    header: &BatchHeader,
    batch: Bytes,
    out: &mut Vec<Record>,
) -> Result<(), BatchError> {
    decode_batch_records_where(header, batch, out, |_| true)
}

/// The record at `offset` in `batches` (whole batches back to back), decoding only it: the
/// others of its batch are stepped over without building them. `None` when no batch holds it.
pub fn decode_record_at(batches: &Bytes, offset: i64) -> Result<Option<Record>, BatchError> {
    let mut found = Vec::new();
    for_each_batch(batches, |header, batch| {
        if found.is_empty()
            && !header.is_control()
            && (header.base_offset..=header.last_offset()).contains(&offset)
        {
            decode_batch_records_where(header, batch, &mut found, |o| o == offset)?;
        }
        Ok(())
    })?;
    Ok(found.pop())
}

/// [`decode_batch_records`] of the records whose offset `keep` accepts.
fn decode_batch_records_where(
    header: &BatchHeader,
    batch: Bytes,
    out: &mut Vec<Record>,
    keep: impl Fn(i64) -> bool,
) -> Result<(), BatchError> {
    let body = batch.slice(BATCH_HEADER_BYTES..);
    let plain = match header.compression()? {
        Compression::None => body,
        compression => {
            let mut plain = Vec::new();
            codec::decompress(compression, &body, BATCH_DECOMPRESSED_BYTES_MAX, &mut plain)?;
            Bytes::from(plain)
        }
    };
    let slice = |b: Option<&[u8]>| b.map(|b| plain.slice_ref(b));
    let mut cur = Cursor { buf: &plain };
    // Each record takes at least seven bytes, so the count cannot ask for more room than the
    // body could fill.
    out.reserve((header.record_count.max(0) as usize).min(plain.len() / 7));
    for _ in 0..header.record_count {
        let record = next_record(&mut cur)?;
        let offset = header.base_offset.wrapping_add(record.offset_delta);
        if !keep(offset) {
            continue;
        }
        let mut headers = Vec::with_capacity(record.header_count);
        let mut raw = Cursor {
            buf: record.headers,
        };
        for _ in 0..record.header_count {
            let key = raw.bytes("header key length")?.unwrap_or_default();
            headers.push(Header {
                key: String::from_utf8_lossy(key).into_owned(),
                value: slice(raw.bytes("header value length")?),
            });
        }
        let timestamp = if header.is_log_append_time() {
            header.max_timestamp
        } else {
            header.base_timestamp.wrapping_add(record.timestamp_delta)
        };
        out.push(Record {
            offset,
            timestamp,
            key: slice(record.key),
            value: slice(record.value),
            headers,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: usize) -> NewRecord {
        NewRecord {
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: if i % 7 == 3 {
                None
            } else {
                Some(Bytes::from(format!("value-{i}-").repeat(i % 5 + 1)))
            },
            headers: vec![
                Header {
                    key: "h".into(),
                    value: Some(Bytes::from_static(b"1")),
                },
                Header {
                    key: "h".into(),
                    value: None,
                },
            ],
        }
    }

    #[test]
    fn one_record_is_decoded_by_its_offset_alone() {
        let mut set = Vec::new();
        for (base, n) in [(10i64, 3usize), (13, 4)] {
            let mut builder = BatchBuilder::new(Compression::Lz4);
            (0..n).for_each(|i| builder.push(record(base as usize + i)));
            let mut batch = builder.build().unwrap().to_vec();
            set_base_offset(&mut batch, base);
            set.extend_from_slice(&batch);
        }
        let set = Bytes::from(set);
        let all = decode_records(&set).unwrap();
        for r in &all {
            assert_eq!(decode_record_at(&set, r.offset).unwrap().as_ref(), Some(r));
        }
        assert_eq!(decode_record_at(&set, 9).unwrap(), None);
        assert_eq!(decode_record_at(&set, 17).unwrap(), None);
    }

    #[test]
    fn records_in_a_range_count_by_headers_and_decode_only_cut_batches() {
        let mut set = Vec::new();
        for (base, n) in [(10i64, 3usize), (13, 4)] {
            let mut builder = BatchBuilder::new(Compression::Zstd);
            (0..n).for_each(|i| builder.push(record(base as usize + i)));
            let mut batch = builder.build().unwrap().to_vec();
            set_base_offset(&mut batch, base);
            set.extend_from_slice(&batch);
        }
        let set = Bytes::from(set);
        let count = |start, end| {
            let c = count_records_in(&set, start, end).unwrap();
            (c.whole, c.decoded, c.next_offset)
        };
        assert_eq!(count(10, 17), (7, 0, 17));
        assert_eq!(count(13, 20), (4, 0, 17));
        assert_eq!(count(11, 15), (0, 4, 15));
        assert_eq!(count(0, 13), (3, 0, 13));
        assert_eq!(count(17, 20), (0, 0, 17));
        assert_eq!(
            count_records_in(&Bytes::new(), 3, 9).unwrap().next_offset,
            9
        );
    }

    #[test]
    fn a_read_for_some_records_stops_at_the_batch_that_has_them() {
        let mut set = Vec::new();
        // The third batch fails its check: only a decode that reaches it sees that.
        for (base, n) in [(10i64, 3usize), (13, 4), (17, 1)] {
            let mut builder = BatchBuilder::new(Compression::None);
            (0..n).for_each(|i| builder.push(record(base as usize + i)));
            let mut batch = builder.build().unwrap().to_vec();
            set_base_offset(&mut batch, base);
            set.extend_from_slice(&batch);
        }
        let last = set.len() - 1;
        set[last] ^= 0xff;
        let set = Bytes::from(set);
        let offsets = |offset, most| -> Vec<i64> {
            decode_records_from(&set, offset, most)
                .unwrap()
                .iter()
                .map(|r| r.offset)
                .collect()
        };
        assert_eq!(offsets(10, 1), vec![10, 11, 12]);
        assert_eq!(offsets(11, 2), vec![11, 12]);
        assert_eq!(offsets(11, 3), vec![11, 12, 13, 14, 15, 16]);
        assert!(decode_records_from(&set, 11, 7).is_err());
    }

    #[test]
    fn every_codec_round_trips() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut b = BatchBuilder::new(compression);
            for i in 0..50 {
                b.push(record(i));
            }
            let batch = b.build().unwrap();
            let header = validate_batch(&batch, u64::MAX).unwrap();
            assert_eq!(header.compression().unwrap(), compression);
            assert_eq!(header.record_count, 50);
            assert_eq!(header.last_offset_delta, 49);
            let records = decode_records(&batch).unwrap();
            assert_eq!(records.len(), 50);
            for (i, r) in records.iter().enumerate() {
                let expected = record(i);
                assert_eq!(r.offset, i as i64);
                assert_eq!(r.timestamp, expected.timestamp);
                assert_eq!(r.key, expected.key);
                assert_eq!(r.value, expected.value);
                assert_eq!(r.headers, expected.headers);
            }
        }
    }

    #[test]
    fn base_offset_rewrite_keeps_crc_valid() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(record(1));
        let mut batch = b.build().unwrap().to_vec();
        set_base_offset(&mut batch, 1234);
        let header = validate_batch(&batch, u64::MAX).unwrap();
        assert_eq!(header.base_offset, 1234);
        let records = decode_records(&Bytes::from(batch)).unwrap();
        assert_eq!(records[0].offset, 1234);
    }

    #[test]
    fn log_append_time_rewrites_timestamps_and_crc() {
        let mut b = BatchBuilder::new(Compression::Lz4);
        b.push(record(1));
        b.push(record(2));
        let mut batch = b.build().unwrap().to_vec();
        let header = validate_batch(&batch, u64::MAX).unwrap();
        set_log_append_time(&mut batch, &header, 42);
        let header = validate_batch(&batch, u64::MAX).unwrap();
        assert!(header.is_log_append_time());
        let records = decode_records(&Bytes::from(batch)).unwrap();
        assert!(records.iter().all(|r| r.timestamp == 42));
    }

    #[test]
    fn corrupt_batches_are_refused_with_their_reason() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(record(1));
        let batch = b.build().unwrap().to_vec();

        let check = |bytes: &[u8], expected: &dyn Fn(&BatchError) -> bool| {
            let err = validate_record_set(bytes, 1 << 20).unwrap_err();
            assert!(expected(&err), "unexpected error {err:?}");
        };
        check(&[], &|e| matches!(e, BatchError::Empty));
        check(&batch[..30], &|e| matches!(e, BatchError::TooShort { .. }));
        check(&batch[..batch.len() - 1], &|e| {
            matches!(e, BatchError::LengthMismatch { .. })
        });
        let mut flipped = batch.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        check(&flipped, &|e| matches!(e, BatchError::CrcMismatch { .. }));
        let mut magic = batch.clone();
        magic[POS_MAGIC] = 1;
        check(&magic, &|e| matches!(e, BatchError::BadMagic { magic: 1 }));
        let mut trailing = batch.clone();
        trailing.extend_from_slice(&[0; 5]);
        check(&trailing, &|e| matches!(e, BatchError::TooShort { .. }));
        let err = validate_record_set(&batch, 20).unwrap_err();
        assert!(matches!(err, BatchError::TooLarge { bytes_max: 20, .. }));
    }

    #[test]
    fn compacted_batch_keeps_its_offset_span() {
        let mut b = BatchBuilder::new(Compression::Zstd);
        b.push_at(2, record(2));
        b.push_at(5, record(5));
        b.last_offset_delta(9);
        let batch = b.build().unwrap();
        let header = validate_batch(&batch, u64::MAX).unwrap();
        assert_eq!(header.last_offset_delta, 9);
        assert_eq!(header.record_count, 2);
        let offsets: Vec<i64> = decode_records(&batch)
            .unwrap()
            .iter()
            .map(|r| r.offset)
            .collect();
        assert_eq!(offsets, vec![2, 5]);
    }
}
