//! Log compaction (`cleanup.policy=compact`): keeps the last record per key in closed segments.
//!
//! A pass reads every closed segment to find each key's latest offset, then rewrites the closed
//! segments that hold superseded records. Offsets never change: a rewritten batch keeps its base
//! offset and offset span, with fewer records inside. Tombstones (null values) are kept for
//! `delete.retention.ms` after their batch's newest timestamp, so consumers see the delete.
//!
//! A cleaned segment is built in `cleaned/` beside the log, fsynced, then committed by an empty
//! `<base>.swap` marker; its files are then renamed over the originals. Opening a log finishes
//! a committed swap and discards an uncommitted one, so a crash leaves either the old segment
//! or the new one, never a mix.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::{
    BatchBuilder, BatchHeader, NewRecord, ProducerInfo, Record, decode_batch_records,
    set_base_offset, set_log_append_time,
};
use crate::config::ms_i64;
use crate::error::{Result, StorageError};
use crate::log::Log;
use crate::segment::{IndexCursor, Segment, segment_paths, sync_dir};

const CLEANED_DIR: &str = "cleaned";
const SWAP_SUFFIX: &str = "swap";

/// Distinct keys a compaction pass holds in memory per partition, by default.
pub const COMPACTION_KEYS_MAX: u64 = 10_000_000;

/// Each key's latest offset over the records a compaction pass has seen, and so which records
/// the pass keeps.
#[derive(Debug, Default)]
pub struct LatestByKey {
    latest: HashMap<Bytes, i64>,
}

impl LatestByKey {
    /// Notes records, in offset order.
    pub fn note(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            if let Some(key) = r.key {
                self.latest.insert(key, r.offset);
            }
        }
    }

    /// Distinct keys noted.
    pub fn keys(&self) -> u64 {
        self.latest.len() as u64
    }

    /// Whether compaction keeps record `r` of batch `h`: a record without a key, or its key's
    /// latest record; a tombstone (no value) only while its batch's newest timestamp is at or
    /// after `tombstone_horizon` (`delete.retention.ms` before now), so consumers see the delete.
    pub fn keeps(&self, r: &Record, h: &BatchHeader, tombstone_horizon: i64) -> bool {
        match &r.key {
            None => true,
            Some(k) => {
                self.latest.get(k) == Some(&r.offset)
                    && (r.value.is_some() || h.max_timestamp >= tombstone_horizon)
            }
        }
    }
}

/// What a compaction pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactionResult {
    pub segments_rewritten: u64,
    pub records_removed: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Compacts the closed segments of `log`. `keys_max` bounds the key map held in memory.
pub fn compact(log: &Log, now: i64, keys_max: u64) -> Result<CompactionResult> {
    let config = log.config();
    if !config.cleanup_policy.compact {
        return Ok(CompactionResult::default());
    }
    let _maintenance = log.maintenance_lock();
    let segments = log.segments();
    let closed = &segments[..segments.len() - 1];
    if closed.is_empty() {
        return Ok(CompactionResult::default());
    }
    let latest = latest_offsets(log, closed, keys_max)?;
    let tombstone_horizon = now.saturating_sub(ms_i64(config.delete_retention_ms));
    let keep = |r: &Record, h: &BatchHeader| latest.keeps(r, h, tombstone_horizon);

    let mut result = CompactionResult::default();
    let mut replacements = Vec::new();
    for (i, segment) in closed.iter().enumerate() {
        let removable = removable(segment, &keep)?;
        if removable == 0 {
            continue;
        }
        let next_base = segments[i + 1].base_offset();
        let cleaned_size = write_cleaned(log, segment, next_base, now, &keep)?;
        result.segments_rewritten += 1;
        result.records_removed += removable;
        result.bytes_before += segment.size();
        result.bytes_after += cleaned_size;
        commit_cleaned(log.dir(), segment.base_offset())?;
        replacements.push(Arc::new(Segment::open_closed(
            log.dir(),
            segment.base_offset(),
            next_base,
        )?));
    }
    if !replacements.is_empty() {
        log.replace_segments(replacements);
        tracing::info!(
            log = %log.dir().display(),
            segments = result.segments_rewritten,
            records_removed = result.records_removed,
            bytes_before = result.bytes_before,
            bytes_after = result.bytes_after,
            "compacted"
        );
    }
    Ok(result)
}

/// Each key's latest offset in the closed segments; refused past `keys_max` keys.
fn latest_offsets(log: &Log, closed: &[Arc<Segment>], keys_max: u64) -> Result<LatestByKey> {
    let mut latest = LatestByKey::default();
    for segment in closed {
        segment.visit_batches(|h, batch| {
            latest.note(decode(h, batch, &segment.log_path())?);
            if latest.keys() > keys_max {
                return Err(StorageError::CompactionKeys {
                    path: log.dir().to_path_buf(),
                    keys_max,
                });
            }
            Ok(())
        })?;
    }
    Ok(latest)
}

/// How many records of `segment` compaction would remove.
fn removable(segment: &Segment, keep: &impl Fn(&Record, &BatchHeader) -> bool) -> Result<u64> {
    let mut removable = 0u64;
    segment.visit_batches(|h, batch| {
        if !h.is_control() {
            let records = decode(h, batch, &segment.log_path())?;
            removable += records.iter().filter(|r| !keep(r, h)).count() as u64;
        }
        Ok(())
    })?;
    Ok(removable)
}

/// Writes the cleaned copy of `segment` into `cleaned/`, fsynced; answers its size.
fn write_cleaned(
    log: &Log,
    segment: &Segment,
    next_base: u64,
    now: i64,
    keep: &impl Fn(&Record, &BatchHeader) -> bool,
) -> Result<u64> {
    let config = log.config();
    let cleaned_dir = log.dir().join(CLEANED_DIR);
    std::fs::create_dir_all(&cleaned_dir).map_err(StorageError::io(&cleaned_dir))?;
    let cleaned = Segment::create(
        &cleaned_dir,
        segment.base_offset(),
        config.index_bytes_max,
        now,
    )?;
    let mut cursor = IndexCursor::new();
    segment.visit_batches(|h, batch| {
        let Some(bytes) = rewrite_batch(h, batch, &segment.log_path(), keep)? else {
            return Ok(());
        };
        let position = cleaned.write(&bytes)?;
        let mut header = *h;
        header.batch_length = (bytes.len() - crate::batch::BATCH_LENGTH_PREFIX_BYTES) as i32;
        cleaned.index_batch(&mut cursor, &header, position, config.index_interval_bytes);
        cleaned.commit_write(bytes.len() as u64, h.last_offset() as u64 + 1);
        Ok(())
    })?;
    cleaned.commit_write(0, next_base);
    cleaned.finish_time_index(&cursor);
    cleaned.seal()?;
    Ok(cleaned.size())
}

/// Commits the cleaned segment at `base` with its swap marker, then renames it over the original.
fn commit_cleaned(dir: &Path, base: u64) -> Result<()> {
    let cleaned_dir = dir.join(CLEANED_DIR);
    let marker = cleaned_dir.join(format!("{base:020}.{SWAP_SUFFIX}"));
    sync_dir(&cleaned_dir)?;
    std::fs::write(&marker, b"").map_err(StorageError::io(&marker))?;
    sync_dir(&cleaned_dir)?;
    swap_in(dir, base)
}

fn decode(h: &BatchHeader, batch: Bytes, path: &Path) -> Result<Vec<Record>> {
    let mut records = Vec::new();
    if !h.is_control() {
        decode_batch_records(h, batch, &mut records).map_err(|e| StorageError::Corrupt {
            path: path.to_path_buf(),
            position: 0,
            reason: format!("batch at offset {}: {e}", h.base_offset),
        })?;
    }
    Ok(records)
}

/// The batch with only the records `keep` accepts: the original bytes when all stay, a
/// re-encoded batch with the same base offset, span, codec and producer when some go, `None`
/// when none stay. Control batches stay as they are. `path` names where the batch is from, in
/// the error when it cannot be decoded.
pub fn rewrite_batch(
    h: &BatchHeader,
    batch: Bytes,
    path: &Path,
    keep: &impl Fn(&Record, &BatchHeader) -> bool,
) -> Result<Option<Bytes>> {
    if h.is_control() {
        return Ok(Some(batch));
    }
    let records = decode(h, batch.clone(), path)?;
    let kept: Vec<&Record> = records.iter().filter(|r| keep(r, h)).collect();
    if kept.len() == records.len() {
        return Ok(Some(batch));
    }
    if kept.is_empty() {
        return Ok(None);
    }
    let compression = h.compression()?;
    let mut builder = BatchBuilder::new(compression).producer(ProducerInfo {
        producer_id: h.producer_id,
        producer_epoch: h.producer_epoch,
        base_sequence: h.base_sequence,
    });
    for r in kept {
        builder.push_at(
            (r.offset - h.base_offset) as i32,
            NewRecord {
                timestamp: r.timestamp,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: r.headers.clone(),
            },
        );
    }
    builder.last_offset_delta(h.last_offset_delta);
    let mut bytes = builder.build()?.to_vec();
    set_base_offset(&mut bytes, h.base_offset);
    if h.is_log_append_time() {
        let header = BatchHeader::parse(&bytes)?;
        set_log_append_time(&mut bytes, &header, h.max_timestamp);
    }
    Ok(Some(Bytes::from(bytes)))
}

/// Renames a committed cleaned segment over the original, then drops its marker.
fn swap_in(dir: &Path, base_offset: u64) -> Result<()> {
    let cleaned_dir = dir.join(CLEANED_DIR);
    // Indexes first, the log last: until the log moves, the marker still commits the swap.
    let from = segment_paths(&cleaned_dir, base_offset);
    let to = segment_paths(dir, base_offset);
    for (src, dst) in from.iter().zip(&to).rev() {
        match std::fs::rename(src, dst) {
            Ok(()) => {}
            // Moved before a crash interrupted the swap.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::Io {
                    path: src.clone(),
                    source,
                });
            }
        }
    }
    sync_dir(dir)?;
    let marker = cleaned_dir.join(format!("{base_offset:020}.{SWAP_SUFFIX}"));
    std::fs::remove_file(&marker).map_err(StorageError::io(&marker))?;
    sync_dir(&cleaned_dir)
}

/// On open: finishes committed swaps and discards cleaned segments that were never committed.
pub(crate) fn finish_interrupted_swaps(dir: &Path) -> Result<()> {
    let cleaned_dir = dir.join(CLEANED_DIR);
    let entries = match std::fs::read_dir(&cleaned_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(StorageError::Io {
                path: cleaned_dir,
                source,
            });
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(StorageError::io(&cleaned_dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    for name in &names {
        if let Some(base) = name
            .strip_suffix(&format!(".{SWAP_SUFFIX}"))
            .and_then(|b| b.parse::<u64>().ok())
        {
            tracing::warn!(dir = %dir.display(), base_offset = base, "finishing an interrupted compaction swap");
            swap_in(dir, base)?;
        }
    }
    std::fs::remove_dir_all(&cleaned_dir).map_err(StorageError::io(&cleaned_dir))?;
    sync_dir(dir)
}
