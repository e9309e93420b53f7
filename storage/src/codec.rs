//! The four codecs a record batch may be compressed with, as Kafka clients write them, and
//! decompression that stops at a bound.
//!
//! A 131 KB zstd batch can expand to gigabytes. Every decompression here writes into a buffer
//! that may not grow past [`BATCH_DECOMPRESSED_BYTES_MAX`], and at most
//! [`DECOMPRESSIONS_MAX`] run at once in the process, so decompressed bytes in flight stay
//! under their product whatever producers send.

use crate::locks;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex};

use crate::batch::Compression;
use crate::error::BatchError;

/// Largest decompressed body of one batch. Produce refuses a batch past it, so a stored batch
/// never needs more to be read. Kafka's default `max.message.bytes` is 1 MiB compressed; log
/// lines compress 5–20×, so this leaves room for the most compressible legitimate batches.
pub const BATCH_DECOMPRESSED_BYTES_MAX: u64 = 64 << 20;
/// Decompressions running at once in the process; more wait for a turn.
pub const DECOMPRESSIONS_MAX: usize = 4;

/// lz4 frames as Kafka clients write them: independent blocks, a middling level.
const LZ4_LEVEL: u32 = 4;
/// zstd level for batches Weir builds (Kafka's default).
const ZSTD_LEVEL: i32 = 3;
/// The snappy framing of Kafka's Java client (xerial `SnappyOutputStream`): a magic header,
/// then blocks of at most 32 KiB, each prefixed by its compressed length.
const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

fn encode_error(compression: Compression, e: impl std::fmt::Display) -> BatchError {
    BatchError::Encode {
        reason: format!("{compression:?} compression failed: {e}"),
    }
}

fn decode_error(compression: Compression, e: impl std::fmt::Display) -> BatchError {
    BatchError::Decode {
        reason: format!("{compression:?} decompression failed: {e}"),
    }
}

/// Appends `plain` to `out`, compressed.
pub(crate) fn compress(
    compression: Compression,
    plain: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    let fail = |e: std::io::Error| encode_error(compression, e);
    match compression {
        Compression::None => out.extend_from_slice(plain),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            encoder.write_all(plain).map_err(fail)?;
            encoder.finish().map_err(fail)?;
        }
        Compression::Snappy => {
            out.extend_from_slice(XERIAL_MAGIC);
            let mut encoder = snap::raw::Encoder::new();
            for block in plain.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .map_err(|e| encode_error(compression, e))?;
                out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
                out.extend_from_slice(&compressed);
            }
        }
        Compression::Lz4 => {
            let mut encoder = lz4::EncoderBuilder::new()
                .level(LZ4_LEVEL)
                .block_mode(lz4::BlockMode::Independent)
                .build(out)
                .map_err(fail)?;
            encoder.write_all(plain).map_err(fail)?;
            let (_, result) = encoder.finish();
            result.map_err(fail)?;
        }
        Compression::Zstd => {
            let compressed = zstd::bulk::compress(plain, ZSTD_LEVEL).map_err(fail)?;
            out.extend_from_slice(&compressed);
        }
    }
    Ok(())
}

/// A turn to decompress: at most [`DECOMPRESSIONS_MAX`] are out at once.
struct Turn;

static TURNS: Mutex<usize> = Mutex::new(0);
static TURN_FREED: Condvar = Condvar::new();

impl Turn {
    fn take() -> Turn {
        let mut taken = locks::lock(&TURNS);
        while *taken >= DECOMPRESSIONS_MAX {
            taken = locks::wait(&TURN_FREED, taken);
        }
        *taken += 1;
        Turn
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *locks::lock(&TURNS) -= 1;
        TURN_FREED.notify_one();
    }
}

/// Replaces the contents of `out` with `body` decompressed, refusing a body that would
/// expand past `bytes_max`. Runs only while it holds one of the process's decompression turns.
pub(crate) fn decompress(
    compression: Compression,
    body: &[u8],
    bytes_max: u64,
    out: &mut Vec<u8>,
) -> Result<(), BatchError> {
    out.clear();
    let _turn = Turn::take();
    let fail = |e: std::io::Error| decode_error(compression, e);
    match compression {
        Compression::None => {
            check_size(body.len() as u64, bytes_max)?;
            out.extend_from_slice(body);
        }
        Compression::Gzip => read_bounded(flate2::read::GzDecoder::new(body), bytes_max, out)
            .map_err(|e| e.or_io(fail))?,
        Compression::Lz4 => {
            let decoder = lz4::Decoder::new(body).map_err(fail)?;
            read_bounded(decoder, bytes_max, out).map_err(|e| e.or_io(fail))?
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(body).map_err(fail)?;
            read_bounded(decoder, bytes_max, out).map_err(|e| e.or_io(fail))?
        }
        Compression::Snappy => snappy(body, bytes_max, out)?,
    }
    Ok(())
}

fn check_size(bytes: u64, bytes_max: u64) -> Result<(), BatchError> {
    if bytes > bytes_max {
        return Err(BatchError::DecompressedTooLarge { bytes_max });
    }
    Ok(())
}

/// Why a bounded read stopped.
enum ReadError {
    TooLarge(BatchError),
    Io(std::io::Error),
}

impl ReadError {
    fn or_io(self, io: impl FnOnce(std::io::Error) -> BatchError) -> BatchError {
        match self {
            ReadError::TooLarge(e) => e,
            ReadError::Io(e) => io(e),
        }
    }
}

fn read_bounded(reader: impl Read, bytes_max: u64, out: &mut Vec<u8>) -> Result<(), ReadError> {
    // One byte past the bound tells a body that ends exactly there from one that goes on.
    reader
        .take(bytes_max.saturating_add(1))
        .read_to_end(out)
        .map_err(ReadError::Io)?;
    check_size(out.len() as u64, bytes_max).map_err(ReadError::TooLarge)
}

/// Snappy as Kafka clients send it: xerial-framed blocks (Java) or one raw block (librdkafka
/// may send either). Each block declares its decompressed length, checked before anything is
/// allocated for it.
fn snappy(body: &[u8], bytes_max: u64, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let fail = |e: &dyn std::fmt::Display| decode_error(Compression::Snappy, e);
    let mut decoder = snap::raw::Decoder::new();
    let mut block = |compressed: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
        let len = snap::raw::decompress_len(compressed).map_err(|e| fail(&e))?;
        check_size(out.len() as u64 + len as u64, bytes_max)?;
        let start = out.len();
        out.resize(start + len, 0);
        let written = decoder
            .decompress(compressed, &mut out[start..])
            .map_err(|e| fail(&e))?;
        out.truncate(start + written);
        Ok(())
    };
    let Some(mut rest) = body.strip_prefix(XERIAL_MAGIC) else {
        return block(body, out);
    };
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(fail(&"block length cut short"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len > tail.len() {
            return Err(fail(&format!(
                "block of {len} bytes with {} bytes left",
                tail.len()
            )));
        }
        let (compressed, next) = tail.split_at(len);
        block(compressed, out)?;
        rest = next;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    #[test]
    fn every_codec_round_trips_up_to_the_bound_and_refuses_past_it() {
        let plain: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_be_bytes())
            .collect();
        for compression in ALL {
            let mut packed = Vec::new();
            compress(compression, &plain, &mut packed).unwrap();
            let mut out = Vec::new();
            decompress(compression, &packed, plain.len() as u64, &mut out).unwrap();
            assert_eq!(out, plain, "{compression:?}");
            let err = decompress(compression, &packed, plain.len() as u64 - 1, &mut out);
            assert_eq!(
                err,
                Err(BatchError::DecompressedTooLarge {
                    bytes_max: plain.len() as u64 - 1
                }),
                "{compression:?}"
            );
        }
    }

    #[test]
    fn a_compression_bomb_stops_at_the_bound() {
        // 1 GiB of zeros packs into about 40 KB of zstd; reading it stops after 1 MiB + 1.
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            encoder.write_all(&zeros).unwrap();
        }
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 200_000, "{}", bomb.len());
        let mut out = Vec::new();
        let err = decompress(Compression::Zstd, &bomb, 1 << 20, &mut out).unwrap_err();
        assert_eq!(err, BatchError::DecompressedTooLarge { bytes_max: 1 << 20 });
        assert!(out.capacity() < 8 << 20, "{}", out.capacity());
    }

    #[test]
    fn raw_snappy_declaring_a_huge_length_is_refused_before_allocating() {
        // A raw snappy block whose varint length header says 4 GiB - 1.
        let body = [0xff, 0xff, 0xff, 0xff, 0x0f, 0x00];
        let mut out = Vec::new();
        let err = decompress(Compression::Snappy, &body, 64 << 20, &mut out).unwrap_err();
        assert_eq!(
            err,
            BatchError::DecompressedTooLarge {
                bytes_max: 64 << 20
            }
        );
        assert_eq!(out.capacity(), 0);
    }

    #[test]
    fn garbage_is_a_decode_error_for_every_codec() {
        for compression in &ALL[1..] {
            let mut out = Vec::new();
            let err = decompress(*compression, b"\x01\x02garbage", 1 << 20, &mut out);
            assert!(
                matches!(err, Err(BatchError::Decode { .. })),
                "{compression:?}: {err:?}"
            );
        }
    }
}
