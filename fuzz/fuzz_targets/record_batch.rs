//! A produced batch as a log checks it before appending, and the read path over what the checks
//! accept: every batch that passes must decode, within the decompression bound. The input's
//! length field and CRC are set right before the checks, so the fuzzer explores what lies past
//! them (headers, codecs, records) instead of failing on the checksum.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_storage::batch::{BATCH_HEADER_BYTES, decode_records, validate_batch, validate_records};
use weir_storage::codec::BATCH_DECOMPRESSED_BYTES_MAX;

fuzz_target!(|data: &[u8]| {
    if data.len() < BATCH_HEADER_BYTES {
        return;
    }
    let mut batch = data.to_vec();
    let length = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    let Ok(header) = validate_batch(&batch, u64::MAX) else {
        return;
    };
    if validate_records(&header, &batch).is_ok() {
        let records =
            decode_records(&Bytes::from(batch)).expect("a batch the append checks accept decodes");
        assert_eq!(records.len(), header.record_count as usize);
        let bytes: usize = records
            .iter()
            .map(|r| r.value.as_ref().map_or(0, Bytes::len))
            .sum();
        assert!(bytes as u64 <= BATCH_DECOMPRESSED_BYTES_MAX);
    }
});
