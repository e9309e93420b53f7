//! A partition log: an ordered list of segments, the last of which takes appends.

use crate::locks;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::batch::{
    BATCH_HEADER_BYTES, BatchHeader, Record, decode_record_at, decode_records, decode_records_from,
    set_base_offset, stamp_log_append_time, validate_batch, validate_record_set, validate_records,
};
use crate::config::{FlushPolicy, LogConfig, TimestampType, ms_i64};
use crate::error::{BatchError, Result, StorageError};
use crate::producer::ProducerStates;
use crate::segment::{IndexCursor, LogFile, RecoveryPoint, Segment, segment_paths, sync_dir};
use crate::space::DiskSpace;

const RECOVERY_POINT_FILE: &str = "recovery-point";
const RECOVERY_POINT_BYTES: usize = 20;
/// How often, at most, the recovery point is rewritten after an fsync.
const RECOVERY_POINT_INTERVAL_MS: i64 = 1000;

/// Wall-clock milliseconds since the Unix epoch, as Kafka timestamps count them.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A time as Kafka timestamps count it, from epoch milliseconds or an RFC 3339 text such as
/// `2026-11-30T12:00:00Z`; `None` for anything else.
pub fn parse_time_ms(text: &str) -> Option<i64> {
    let text = text.trim();
    text.parse::<i64>()
        .ok()
        .or_else(|| weir::time::parse_rfc3339(text))
}

/// Offsets assigned to an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: u64,
    pub last_offset: u64,
    /// Set when the log stamps batches with the append time (`LogAppendTime`).
    pub log_append_time_ms: Option<i64>,
}

/// Whole batches of one segment, located in its file, for a reader to send or load.
#[derive(Debug, Clone)]
pub struct FileSlice {
    segment: Arc<Segment>,
    position: u64,
    len: u64,
    next_offset: u64,
    /// Records in its batches, as their headers count them.
    records: u64,
}

impl FileSlice {
    pub fn position(&self) -> u64 {
        self.position
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset after the last batch of the slice: where the next read continues.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Records in the slice's batches (control records included), from the headers the read
    /// went through, so counting them touches none of the slice's bytes.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Loads the bytes, every batch's CRC checked once (see [`FileSlice::map`]).
    pub fn read(&self) -> Result<Bytes> {
        self.verified(self.segment.read_bytes(self.position, self.len)?)
    }

    /// The bytes mapped from the segment file rather than copied: what a fetch sends. The
    /// mapping covers only bytes below the high watermark when the read started, which the log
    /// never rewrites in place. Every batch's CRC is checked once in the process's life: when
    /// it is appended, or on its first read once the segment is opened from disk. Bytes
    /// already checked are neither checked again nor touched, so a socket sending them from the
    /// page cache is the only reader.
    pub fn map(&self) -> Result<Bytes> {
        let unchecked = self.segment.checked() < self.position + self.len;
        self.verified(self.segment.map_bytes(self.position, self.len, unchecked)?)
    }

    /// The segment file the slice lies in, held open: the slice is its bytes from
    /// [`FileSlice::position`], for a socket to send from the page cache.
    pub fn file(&self) -> Result<LogFile> {
        self.segment.log_file()
    }

    /// `bytes`, once the CRCs of their batches past the segment's checked mark are checked;
    /// the mark then moves past them.
    fn verified(&self, bytes: Bytes) -> Result<Bytes> {
        let checked = self.segment.checked().saturating_sub(self.position);
        let from = checked.min(bytes.len() as u64) as usize;
        let mut pos = from;
        while pos < bytes.len() {
            match validate_batch(&bytes[pos..], u64::MAX) {
                Ok(h) => pos += h.total_bytes() as usize,
                Err(e) => {
                    return Err(StorageError::Corrupt {
                        path: self.segment.log_path(),
                        position: self.position + pos as u64,
                        reason: e.to_string(),
                    });
                }
            }
        }
        self.segment
            .mark_checked(self.position + from as u64, self.position + pos as u64);
        Ok(bytes)
    }
}

/// Records of a range counted by [`Log::count_records`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordCount {
    /// Records of batches wholly inside the range, from their headers.
    pub whole: u64,
    /// Records in the range of batches the range cuts, decoded.
    pub decoded: u64,
    pub next_offset: u64,
}

impl RecordCount {
    pub fn records(&self) -> u64 {
        self.whole + self.decoded
    }
}

/// The answer to a read: batches (possibly none) and the log's bounds at the time of the read.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub slice: Option<FileSlice>,
    pub high_watermark: u64,
    pub log_start_offset: u64,
}

/// What readers may see. Replaced as a whole, so a reader's snapshot is consistent.
#[derive(Debug, Clone)]
struct View {
    segments: Arc<Vec<Arc<Segment>>>,
    log_start_offset: u64,
    /// Offsets below it are readable. It sits at a batch boundary: `hw_position` in the segment
    /// with base offset `hw_segment`.
    high_watermark: u64,
    hw_segment: u64,
    hw_position: u64,
}

struct Writer {
    active: Arc<Segment>,
    cursor: IndexCursor,
    next_offset: u64,
    /// Built on the first append from an idempotent producer, so logs that never see one
    /// open without reading their batch headers.
    producers: Option<ProducerStates>,
}

struct SyncState {
    synced_offset: u64,
    last_flush_ms: i64,
    recovery_point_written_ms: i64,
}

/// Counts of what one retention pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionResult {
    pub segments_deleted: u64,
    pub bytes_deleted: u64,
}

/// One partition's log. Appends are serialized; reads run concurrently with them and see
/// everything below the high watermark at the time they start.
pub struct Log {
    dir: PathBuf,
    config: RwLock<LogConfig>,
    writer: Mutex<Writer>,
    view: RwLock<View>,
    sync: Mutex<SyncState>,
    /// Serializes retention and compaction, which remove or replace closed segments.
    maintenance: Mutex<()>,
    recovery_point: File,
    failed: AtomicBool,
    /// Called whenever the high watermark moves, so waiting readers can wake up.
    listener: RwLock<Option<Listener>>,
    /// Told the records and bytes of every append, whoever appends.
    observer: RwLock<Option<AppendObserver>>,
    /// The data directory's free-space mark, when the log belongs to a [`crate::Storage`].
    space: OnceLock<Arc<DiskSpace>>,
}

/// A callback run when new records become readable.
pub type Listener = Arc<dyn Fn() + Send + Sync>;

/// A callback told the records and bytes of each append (a producer's retry of a batch already
/// written is not one).
pub type AppendObserver = Arc<dyn Fn(u64, u64) + Send + Sync>;

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

fn parse_segment_base(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

impl Log {
    /// Opens the log in `dir`, which must exist, recovering its last segment.
    pub fn open(dir: &Path, config: LogConfig) -> Result<Log> {
        if !dir.is_dir() {
            return Err(StorageError::MissingDirectory {
                path: dir.to_path_buf(),
            });
        }
        crate::compact::finish_interrupted_swaps(dir)?;
        let now = now_ms();
        let bases = segment_bases(dir, &config, now)?;
        let (recovery_point, rp_file) = open_recovery_point(dir)?;

        let mut segments = Vec::with_capacity(bases.len());
        for pair in bases.windows(2) {
            segments.push(Arc::new(Segment::open_closed(dir, pair[0], pair[1])?));
        }
        let last_base = *bases.last().unwrap_or(&0);
        let (active, cursor) =
            Segment::recover_active(dir, last_base, &config, recovery_point, now)?;
        // What recovery kept may have been only in the page cache; make it durable before
        // anyone reads it as acknowledged.
        active.sync()?;
        let active = Arc::new(active);
        segments.push(active.clone());
        let next_offset = active.next_offset();
        let log_start_offset = segments.first().map_or(0, |s| s.base_offset());
        let view = View {
            segments: Arc::new(segments),
            log_start_offset,
            high_watermark: next_offset,
            hw_segment: active.base_offset(),
            hw_position: active.size(),
        };
        let log = Log {
            dir: dir.to_path_buf(),
            config: RwLock::new(config),
            writer: Mutex::new(Writer {
                active: active.clone(),
                cursor,
                next_offset,
                producers: None,
            }),
            view: RwLock::new(view),
            sync: Mutex::new(SyncState {
                synced_offset: next_offset,
                last_flush_ms: now,
                recovery_point_written_ms: now,
            }),
            maintenance: Mutex::new(()),
            recovery_point: rp_file,
            failed: AtomicBool::new(false),
            listener: RwLock::new(None),
            observer: RwLock::new(None),
            space: OnceLock::new(),
        };
        log.write_recovery_point(RecoveryPoint {
            base_offset: active.base_offset(),
            position: active.size(),
        })?;
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log file of the segment at `base` (whether or not it exists).
    pub fn segment_file(&self, base: u64) -> PathBuf {
        crate::segment::segment_path(&self.dir, base, crate::segment::LOG_SUFFIX)
    }

    pub fn config(&self) -> LogConfig {
        locks::read(&self.config).clone()
    }

    /// Replaces the config; takes effect with the next append, roll or maintenance pass.
    pub fn set_config(&self, config: LogConfig) {
        *locks::write(&self.config) = config;
    }

    fn view(&self) -> View {
        locks::read(&self.view).clone()
    }

    fn update_view(&self, f: impl FnOnce(&mut View)) {
        f(&mut locks::write(&self.view));
    }

    pub fn log_start_offset(&self) -> u64 {
        self.view().log_start_offset
    }

    /// Offset after the last readable record.
    pub fn high_watermark(&self) -> u64 {
        self.view().high_watermark
    }

    /// Offset the next append gets.
    pub fn log_end_offset(&self) -> u64 {
        locks::lock(&self.writer).next_offset
    }

    /// Bytes of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.view().segments.iter().map(|s| s.size()).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.view().segments.len()
    }

    /// The first offset of every segment, oldest first.
    pub fn segment_base_offsets(&self) -> Vec<u64> {
        self.view()
            .segments
            .iter()
            .map(|s| s.base_offset())
            .collect()
    }

    /// Appends a record set (whole v2 batches back to back, as a producer sends them). The
    /// batches are validated first; on any error nothing is written. Base offsets (and, for
    /// `LogAppendTime` logs, timestamps) are set in copies of the batch headers, written with
    /// the rest of `batches` in one `pwritev`: the record set itself is neither changed nor
    /// copied. With the `always` flush policy this returns once the bytes are fsynced.
    pub fn append(&self, batches: &[u8]) -> Result<AppendInfo> {
        let checked = self.check(batches)?;
        self.append_set(batches, checked)
    }

    /// Validates a record set as [`Log::append`] does, without writing it, so a caller can
    /// look at what it holds before deciding where it goes.
    pub fn check(&self, batches: &[u8]) -> Result<CheckedSet> {
        check_record_set(batches, self.config())
    }

    /// Appends a record set [`Log::check`] accepted.
    pub fn append_set(&self, batches: &[u8], checked: CheckedSet) -> Result<AppendInfo> {
        crate::reactor::check("appending to a log");
        self.append_at_checked(batches, checked, now_ms())
    }

    /// Runs `write`, which puts a record set this log checked somewhere else (the delay log),
    /// as if the set were appended here for its idempotent producers: a retry of a set already
    /// written is answered `None` without writing, a gap in sequences is refused, and once
    /// `write` succeeds the producers' next sequences follow the set. The sequences are kept
    /// in memory only: after a restart they are rebuilt from what the log holds.
    pub fn write_elsewhere<T>(
        &self,
        checked: &CheckedSet,
        write: impl FnOnce() -> Result<T>,
    ) -> Result<Option<T>> {
        if checked.headers.iter().all(|h| h.producer_id < 0) {
            return write().map(Some);
        }
        let mut w = locks::lock(&self.writer);
        if check_producers(&mut w, &checked.headers)?.is_some() {
            return Ok(None);
        }
        let written = write()?;
        if let Some(producers) = &mut w.producers {
            for h in &checked.headers {
                producers.record(h);
            }
        }
        Ok(Some(written))
    }

    /// [`Log::append`] at a given wall-clock time, for deterministic tests.
    pub fn append_at(&self, batches: &[u8], now: i64) -> Result<AppendInfo> {
        let checked = self.check(batches)?;
        self.append_at_checked(batches, checked, now)
    }

    fn append_at_checked(
        &self,
        batches: &[u8],
        checked: CheckedSet,
        now: i64,
    ) -> Result<AppendInfo> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StorageError::Failed {
                path: self.dir.clone(),
            });
        }
        if let Some(space) = self.space.get() {
            space.check()?;
        }
        let appended = self.write_set(batches, checked, now);
        if let (Err(e), Some(space)) = (&appended, self.space.get())
            && e.is_disk_full()
        {
            // Measure now rather than at the next tick, so the next append is refused cleanly.
            let _ = space.measure();
        }
        appended
    }

    /// True once an fsync failed: the log refuses writes until it is opened again.
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Sets the free-space mark appends check first; once per log.
    pub fn set_space(&self, space: Arc<DiskSpace>) {
        let _ = self.space.set(space);
    }

    fn write_set(&self, batches: &[u8], checked: CheckedSet, now: i64) -> Result<AppendInfo> {
        let CheckedSet {
            headers,
            span,
            config,
            ..
        } = checked;
        let mut w = locks::lock(&self.writer);
        if let Some(retry) = check_producers(&mut w, &headers)? {
            return Ok(retry);
        }
        let total = batches.len() as u64;
        let active = &w.active;
        let relative_end = w.next_offset + span - active.base_offset();
        if active.size() > 0
            && (active.size() + total > config.segment_bytes
                || now.saturating_sub(active.created_ms()) >= ms_i64(config.segment_ms)
                || active.indexes_full()
                || relative_end > u64::from(u32::MAX))
        {
            self.roll(&mut w, &config, now)?;
        }
        let base_offset = w.next_offset;
        let log_append_time = config.timestamp_type == TimestampType::LogAppendTime;
        let (assigned, heads) = assign_offsets(
            batches,
            &headers,
            base_offset,
            log_append_time.then_some(now),
        );
        let next_offset = assigned
            .last()
            .map_or(base_offset, |h| h.last_offset() as u64 + 1);
        let mut parts = Vec::with_capacity(2 * assigned.len());
        let mut pos = 0usize;
        for (h, head) in assigned.iter().zip(heads.chunks_exact(BATCH_HEADER_BYTES)) {
            let end = pos + h.total_bytes() as usize;
            parts.push(IoSlice::new(head));
            parts.push(IoSlice::new(&batches[pos + BATCH_HEADER_BYTES..end]));
            pos = end;
        }
        let position = w.active.write_parts(&mut parts)?;
        let active = w.active.clone();
        let mut batch_position = position;
        for h in &assigned {
            active.index_batch(
                &mut w.cursor,
                h,
                batch_position,
                config.index_interval_bytes,
            );
            batch_position += h.total_bytes();
        }
        active.commit_write(total, next_offset);
        w.next_offset = next_offset;
        if let Some(producers) = &mut w.producers {
            for h in &assigned {
                producers.record(h);
            }
        }
        match config.flush_policy {
            FlushPolicy::Interval { ms } => {
                self.publish(next_offset, active.base_offset(), active.size());
                drop(w);
                let due = now.saturating_sub(locks::lock(&self.sync).last_flush_ms) >= ms_i64(ms);
                if due {
                    self.flush_at(now)?;
                }
            }
            FlushPolicy::Always => {
                drop(w);
                self.sync_to(next_offset, now)?;
            }
        }
        let observer = locks::read(&self.observer).clone();
        if let Some(observer) = observer {
            observer(next_offset - base_offset, total);
        }
        Ok(AppendInfo {
            base_offset,
            last_offset: next_offset - 1,
            log_append_time_ms: log_append_time.then_some(now),
        })
    }

    /// Closes the active segment and starts a new one at the next offset. The new segment's
    /// files are created (and the directory fsynced) before the old one is sealed, so a failure
    /// leaves the old segment active and the log usable.
    fn roll(&self, w: &mut Writer, config: &LogConfig, now: i64) -> Result<()> {
        let base = w.next_offset;
        let next = match Segment::create(&self.dir, base, config.index_bytes_max, now)
            .and_then(|s| sync_dir(&self.dir).map(|()| s))
        {
            Ok(s) => Arc::new(s),
            Err(e) => {
                for p in segment_paths(&self.dir, base) {
                    let _ = std::fs::remove_file(p);
                }
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut w.active, next.clone());
        old.finish_time_index(&w.cursor);
        if let Err(e) = old.seal() {
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        w.cursor = IndexCursor::new();
        self.update_view(|v| {
            let mut segments = (*v.segments).clone();
            segments.push(next.clone());
            v.segments = Arc::new(segments);
            // Everything in the old segment is on disk now.
            if v.high_watermark <= base {
                v.high_watermark = base;
                v.hw_segment = base;
                v.hw_position = 0;
            }
        });
        self.write_recovery_point(RecoveryPoint {
            base_offset: base,
            position: 0,
        })?;
        tracing::debug!(log = %self.dir.display(), base_offset = base, "rolled segment");
        Ok(())
    }

    /// Sets the callback run whenever new records become readable.
    pub fn set_observer(&self, observer: Option<AppendObserver>) {
        *locks::write(&self.observer) = observer;
    }

    pub fn set_listener(&self, listener: Option<Listener>) {
        *locks::write(&self.listener) = listener;
    }

    /// Moves the high watermark forward (never back) and tells the listener.
    fn publish(&self, offset: u64, segment: u64, position: u64) {
        let mut moved = false;
        self.update_view(|v| {
            if offset > v.high_watermark {
                v.high_watermark = offset;
                v.hw_segment = segment;
                v.hw_position = position;
                moved = true;
            }
        });
        if moved {
            let listener = locks::read(&self.listener).clone();
            if let Some(listener) = listener {
                listener();
            }
        }
    }

    /// Group commit: returns once every byte up to `target` is fsynced. The first caller in
    /// fsyncs everything written so far; callers queued behind it usually find their bytes
    /// covered and return without an fsync of their own.
    fn sync_to(&self, target: u64, now: i64) -> Result<()> {
        let mut s = locks::lock(&self.sync);
        if s.synced_offset >= target {
            return Ok(());
        }
        self.sync_locked(&mut s, now)
    }

    fn sync_locked(&self, s: &mut SyncState, now: i64) -> Result<()> {
        if self.failed.load(Ordering::Acquire) {
            return Err(StorageError::Failed {
                path: self.dir.clone(),
            });
        }
        let (segment, offset, position) = {
            let w = locks::lock(&self.writer);
            (w.active.clone(), w.next_offset, w.active.size())
        };
        if let Err(e) = segment.sync() {
            // After a failed fsync the kernel may have dropped the dirty pages; what the file
            // holds is unknown until recovery reads it again.
            self.failed.store(true, Ordering::Release);
            return Err(e);
        }
        s.synced_offset = s.synced_offset.max(offset);
        s.last_flush_ms = now;
        self.publish(offset, segment.base_offset(), position);
        if now - s.recovery_point_written_ms >= RECOVERY_POINT_INTERVAL_MS {
            s.recovery_point_written_ms = now;
            self.write_recovery_point(RecoveryPoint {
                base_offset: segment.base_offset(),
                position,
            })?;
        }
        Ok(())
    }

    /// Fsyncs everything appended so far.
    pub fn flush(&self) -> Result<()> {
        crate::reactor::check("flushing a log");
        self.flush_at(now_ms())
    }

    fn flush_at(&self, now: i64) -> Result<()> {
        let mut s = locks::lock(&self.sync);
        if s.synced_offset >= self.log_end_offset() {
            s.last_flush_ms = now;
            return Ok(());
        }
        self.sync_locked(&mut s, now)
    }

    /// Flushes when the `interval` policy's time has come; called by a background timer.
    pub fn flush_if_due(&self, now: i64) -> Result<()> {
        if let FlushPolicy::Interval { ms } = self.config().flush_policy {
            let last = locks::lock(&self.sync).last_flush_ms;
            if now.saturating_sub(last) >= ms_i64(ms) {
                return self.flush_at(now);
            }
        }
        Ok(())
    }

    /// Flushes data and index pages and records the recovery point: a clean shutdown.
    pub fn close(&self) -> Result<()> {
        self.flush()?;
        let w = locks::lock(&self.writer);
        w.active.flush_indexes()?;
        self.write_recovery_point(RecoveryPoint {
            base_offset: w.active.base_offset(),
            position: w.active.size(),
        })?;
        self.recovery_point
            .sync_data()
            .map_err(StorageError::io(self.dir.join(RECOVERY_POINT_FILE)))
    }

    fn write_recovery_point(&self, p: RecoveryPoint) -> Result<()> {
        let mut buf = [0u8; RECOVERY_POINT_BYTES];
        buf[..8].copy_from_slice(&p.base_offset.to_be_bytes());
        buf[8..16].copy_from_slice(&p.position.to_be_bytes());
        let crc = crc32c::crc32c(&buf[..16]);
        buf[16..].copy_from_slice(&crc.to_be_bytes());
        self.recovery_point
            .write_all_at(&buf, 0)
            .map_err(StorageError::io(self.dir.join(RECOVERY_POINT_FILE)))
    }

    /// Reads whole batches starting with the one that holds `offset`, up to `bytes_max` bytes
    /// (at least one batch, however large, so a consumer always makes progress). Batches come
    /// from one segment; a reader continues at the offset after the last batch returned.
    pub fn read(&self, offset: u64, bytes_max: u64) -> Result<ReadResult> {
        crate::reactor::check("reading a log");
        self.read_batches(offset, bytes_max, true, &mut |_, _| {})
    }

    /// [`Log::read`] that returns no batch rather than one larger than `bytes_max`: for the
    /// partitions of a fetch after the first that returned data, which must fit what is left
    /// of the fetch's budget.
    pub fn read_fitting(&self, offset: u64, bytes_max: u64) -> Result<ReadResult> {
        crate::reactor::check("reading a log");
        self.read_batches(offset, bytes_max, false, &mut |_, _| {})
    }

    /// Finds the batches a read returns, calling `seen` with the position and header of each
    /// one it takes (the headers are read from the file to find where the slice ends).
    fn read_batches(
        &self,
        offset: u64,
        bytes_max: u64,
        at_least_one: bool,
        seen: &mut dyn FnMut(u64, &BatchHeader),
    ) -> Result<ReadResult> {
        let view = self.view();
        let result = |slice| ReadResult {
            slice,
            high_watermark: view.high_watermark,
            log_start_offset: view.log_start_offset,
        };
        if offset < view.log_start_offset || offset > view.high_watermark {
            return Err(StorageError::OffsetOutOfRange {
                offset,
                log_start_offset: view.log_start_offset,
                high_watermark: view.high_watermark,
            });
        }
        if offset == view.high_watermark {
            return Ok(result(None));
        }
        let first = view
            .segments
            .partition_point(|s| s.base_offset() <= offset)
            .saturating_sub(1);
        for (i, segment) in view.segments.iter().enumerate().skip(first) {
            let limit = match segment.base_offset().cmp(&view.hw_segment) {
                std::cmp::Ordering::Less => segment.size(),
                std::cmp::Ordering::Equal => view.hw_position,
                std::cmp::Ordering::Greater => break,
            };
            let mut pos = if i == first {
                segment.lookup(offset)?
            } else {
                0
            };
            // An index entry that does not land on a batch at or before `offset` is damaged;
            // fall back to scanning the segment from its start.
            let lands = segment
                .header_at(pos, limit)
                .ok()
                .flatten()
                .is_some_and(|h| h.base_offset <= offset as i64);
            if pos > 0 && !lands {
                tracing::warn!(segment = %segment.log_path().display(), offset, "index entry does not match the log; scanning");
                pos = 0;
            }
            let mut start = None;
            while let Some(h) = segment.header_at(pos, limit)? {
                if h.last_offset() >= offset as i64 {
                    start = Some((pos, h));
                    break;
                }
                pos += h.total_bytes();
            }
            let Some((start, first)) = start else {
                continue;
            };
            if !at_least_one && first.total_bytes() > bytes_max {
                return Ok(result(None));
            }
            seen(start, &first);
            let mut end = start + first.total_bytes();
            let mut next_offset = first.last_offset() as u64 + 1;
            let mut records = first.records();
            while let Some(h) = segment.header_at(end, limit)? {
                if end + h.total_bytes() - start > bytes_max {
                    break;
                }
                seen(end, &h);
                end += h.total_bytes();
                next_offset = h.last_offset() as u64 + 1;
                records += h.records();
            }
            return Ok(result(Some(FileSlice {
                segment: segment.clone(),
                position: start,
                len: end - start,
                next_offset,
                records,
            })));
        }
        Ok(result(None))
    }

    /// Where a reader stepping backwards from `end` starts to read at most `bytes` bytes of
    /// the log: the base offset of the oldest batch such that it and the batches after it up to
    /// `end` take at most `bytes`, never reaching into an older segment. When not even the batch
    /// just before `end` fits, the answer is `end` itself, or with `at_least_one` that batch's
    /// base offset, so that a reader always moves on. Never below the log start offset.
    pub fn offset_bytes_before(&self, end: u64, bytes: u64, at_least_one: bool) -> Result<u64> {
        crate::reactor::check("reading a log");
        let view = self.view();
        let end = end.min(view.high_watermark);
        if end <= view.log_start_offset {
            return Ok(view.log_start_offset);
        }
        let last = end - 1;
        // The batch that holds `last`, found as any read finds it.
        let mut last_base = last;
        let read =
            self.read_batches(last, 0, true, &mut |_, h| last_base = h.base_offset as u64)?;
        let Some(held) = read.slice else {
            return Ok(end);
        };
        let segment = &held.segment;
        let end_pos = held.position + held.len;
        let target = end_pos.saturating_sub(bytes);
        let mut pos = segment.lookup_position(target)?;
        while let Some(h) = segment.header_at(pos, end_pos)? {
            if pos >= target {
                return Ok((h.base_offset as u64)
                    .max(segment.base_offset())
                    .max(view.log_start_offset)
                    .min(last));
            }
            pos += h.total_bytes();
        }
        Ok(if at_least_one { last_base } else { end })
    }

    /// Reads and decodes records from `offset` on, up to about `bytes_max` bytes of batches.
    /// Records before `offset` in the first batch are left out.
    pub fn read_records(&self, offset: u64, bytes_max: u64) -> Result<Vec<Record>> {
        self.read_records_at_most(offset, bytes_max, usize::MAX)
    }

    /// [`Log::read_records`], decoding no batch after the one that brings the records to
    /// `records_max`.
    pub fn read_records_at_most(
        &self,
        offset: u64,
        bytes_max: u64,
        records_max: usize,
    ) -> Result<Vec<Record>> {
        crate::reactor::check("reading a log");
        let read = self.read(offset, bytes_max)?;
        let Some(slice) = read.slice else {
            return Ok(Vec::new());
        };
        Ok(decode_records_from(
            &slice.read()?,
            offset as i64,
            records_max,
        )?)
    }

    /// How many records `[start, end)` holds, over about `bytes_max` bytes of batches from
    /// `start`: a batch wholly inside the range counts by its header's record count, its records
    /// unread; a batch the range cuts is read and decoded. Control batches hold no records.
    /// `next_offset` is where a following call goes on; it reaches `end` when the range is done.
    pub fn count_records(&self, start: u64, end: u64, bytes_max: u64) -> Result<RecordCount> {
        crate::reactor::check("reading a log");
        let (first, last) = (start as i64, end as i64 - 1);
        let mut count = RecordCount {
            whole: 0,
            decoded: 0,
            next_offset: end,
        };
        if start >= end {
            return Ok(count);
        }
        let mut cut = Vec::new();
        let read = self.read_batches(start, bytes_max, true, &mut |position, h| {
            if h.is_control() || h.last_offset() < first || h.base_offset > last {
                return;
            }
            if h.base_offset >= first && h.last_offset() <= last {
                count.whole += h.records();
            } else {
                cut.push((position, h.total_bytes(), h.records()));
            }
        })?;
        let Some(slice) = read.slice else {
            return Ok(count);
        };
        for (position, len, records) in cut {
            let batch = FileSlice {
                position,
                len,
                records,
                ..slice.clone()
            };
            count.decoded += decode_records(&batch.read()?)?
                .iter()
                .filter(|r| (first..=last).contains(&r.offset))
                .count() as u64;
        }
        count.next_offset = slice.next_offset.min(end);
        Ok(count)
    }

    /// The record at `offset`, decoding only it; `None` past the high watermark or in a gap
    /// compaction left.
    pub fn read_record(&self, offset: u64) -> Result<Option<Record>> {
        crate::reactor::check("reading a log");
        let Some(slice) = self.read(offset, 1)?.slice else {
            return Ok(None);
        };
        Ok(decode_record_at(&slice.read()?, offset as i64)?)
    }

    /// The first record whose timestamp is at or after `timestamp`, as `(offset, timestamp)`;
    /// `None` when every readable record is older (Kafka's ListOffsets by time).
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>> {
        let view = self.view();
        for segment in view.segments.iter() {
            if segment.max_timestamp() < timestamp || segment.base_offset() >= view.high_watermark {
                continue;
            }
            let mut offset = segment.lookup_time(timestamp)?.max(view.log_start_offset);
            while offset < view.high_watermark {
                let records = self.read_records(offset, 1)?;
                let Some(last) = records.last() else {
                    break;
                };
                if let Some(r) = records.iter().find(|r| r.timestamp >= timestamp) {
                    return Ok(Some((r.offset as u64, r.timestamp)));
                }
                offset = last.offset as u64 + 1;
                if offset >= segment.next_offset() {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// Deletes closed segments from the start of the log while they are older than
    /// `retention.ms` (by their newest record) or the log is larger than `retention.bytes`.
    /// The active segment is never deleted; the log start offset moves to the first segment
    /// kept.
    pub fn enforce_retention(&self, now: i64) -> Result<RetentionResult> {
        let config = self.config();
        if !config.cleanup_policy.delete {
            return Ok(RetentionResult::default());
        }
        let _maintenance = locks::lock(&self.maintenance);
        let w = locks::lock(&self.writer);
        let view = self.view();
        let closed = &view.segments[..view.segments.len() - 1];
        let mut total: u64 = view.segments.iter().map(|s| s.size()).sum();
        let mut doomed = 0usize;
        for segment in closed {
            let too_old = config
                .retention_ms
                .is_some_and(|ms| segment.max_timestamp() < now.saturating_sub(ms_i64(ms)));
            let too_big = config
                .retention_bytes
                .is_some_and(|bytes| total - segment.size() >= bytes);
            if !(too_old || too_big) {
                break;
            }
            total -= segment.size();
            doomed += 1;
        }
        drop(w);
        let result = self.delete_first_segments(doomed)?;
        if result.segments_deleted > 0 {
            tracing::info!(
                log = %self.dir.display(),
                segments = result.segments_deleted,
                bytes = result.bytes_deleted,
                log_start_offset = self.log_start_offset(),
                "retention deleted segments"
            );
        }
        Ok(result)
    }

    /// Deletes the closed segments that hold only offsets below `offset`, for a log whose
    /// owner knows what it still needs (the delay log).
    pub fn delete_segments_below(&self, offset: u64) -> Result<RetentionResult> {
        let _maintenance = locks::lock(&self.maintenance);
        let view = self.view();
        let doomed = view.segments[1..]
            .iter()
            .take_while(|next| next.base_offset() <= offset)
            .count();
        self.delete_first_segments(doomed)
    }

    /// Deletes the first `doomed` segments (never the active one) and moves the log start
    /// offset to the first kept. The caller holds the maintenance lock.
    fn delete_first_segments(&self, doomed: usize) -> Result<RetentionResult> {
        if doomed == 0 {
            return Ok(RetentionResult::default());
        }
        let w = locks::lock(&self.writer);
        let view = self.view();
        let doomed = doomed.min(view.segments.len() - 1);
        let removed: Vec<Arc<Segment>> = view.segments[..doomed].to_vec();
        self.update_view(|v| {
            let kept: Vec<Arc<Segment>> = v.segments[doomed..].to_vec();
            v.log_start_offset = kept[0].base_offset();
            v.segments = Arc::new(kept);
        });
        drop(w);
        let mut result = RetentionResult::default();
        for segment in &removed {
            result.segments_deleted += 1;
            result.bytes_deleted += segment.size();
            for path in segment.paths() {
                match std::fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => return Err(StorageError::Io { path, source }),
                }
            }
        }
        sync_dir(&self.dir)?;
        Ok(result)
    }

    /// Whether a record at or after offset `from` carries the header `key` = `value`: how a
    /// writer that appends before it records its progress finds, after a crash, whether an
    /// append it was making landed.
    pub fn holds_header(&self, from: u64, key: &str, value: &[u8]) -> Result<bool> {
        crate::source::holds_header(self, from, key, value)
    }

    /// All segments, oldest first; the last one is active and there is always one.
    pub(crate) fn segments(&self) -> Arc<Vec<Arc<Segment>>> {
        self.view().segments
    }

    pub(crate) fn maintenance_lock(&self) -> MutexGuard<'_, ()> {
        locks::lock(&self.maintenance)
    }

    /// Puts compacted segments in place of the originals with the same base offsets.
    pub(crate) fn replace_segments(&self, replacements: Vec<Arc<Segment>>) {
        let _w = locks::lock(&self.writer);
        self.update_view(|v| {
            let mut segments = (*v.segments).clone();
            for new in replacements {
                if let Some(slot) = segments
                    .iter_mut()
                    .find(|s| s.base_offset() == new.base_offset())
                {
                    *slot = new;
                }
            }
            v.segments = Arc::new(segments);
        });
    }
}

/// A record set [`Log::check`] validated: its batch headers, the offsets it spans, whether a
/// record asks for delayed delivery, and the log's config it was checked against (the one its
/// append follows).
#[derive(Debug)]
pub struct CheckedSet {
    headers: Vec<BatchHeader>,
    span: u64,
    delay_header: bool,
    config: LogConfig,
}

impl CheckedSet {
    /// Whether a record carries `weir-deliver-at` or `weir-delay-ms`.
    pub fn delay_header(&self) -> bool {
        self.delay_header
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }
}

/// Validates a record set before anything is written (every batch's header, CRC and records;
/// the set's size against the segment).
fn check_record_set(batches: &[u8], config: LogConfig) -> Result<CheckedSet> {
    let headers = validate_record_set(batches, config.batch_bytes_max)?;
    let mut pos = 0usize;
    let mut delay_header = false;
    for h in &headers {
        delay_header |= validate_records(h, &batches[pos..])?;
        pos += h.total_bytes() as usize;
    }
    let total = batches.len() as u64;
    if total > config.segment_bytes {
        return Err(BatchError::TooLarge {
            bytes: total,
            bytes_max: config.segment_bytes,
        }
        .into());
    }
    // Each offset takes a record of at least seven bytes and a record set fits in one
    // segment, so the span fits a segment's u32 relative offsets.
    let span: u64 = headers.iter().map(BatchHeader::offset_count).sum();
    if span > u64::from(u32::MAX) {
        return Err(BatchError::Invalid {
            reason: format!("record set spans {span} offsets, more than one segment holds"),
        }
        .into());
    }
    Ok(CheckedSet {
        headers,
        span,
        delay_header,
        config,
    })
}

/// Checks idempotent producers' sequences under the writer lock. `Some` is a retry of a batch
/// already written, answered with its original offsets and nothing written.
fn check_producers(w: &mut Writer, headers: &[BatchHeader]) -> Result<Option<AppendInfo>> {
    if w.producers.is_none() && headers.iter().any(|h| h.producer_id >= 0) {
        w.producers = Some(producer_states(&w.active)?);
    }
    let Some(producers) = &w.producers else {
        return Ok(None);
    };
    Ok(producers
        .check_set(headers)?
        .map(|(base_offset, last_offset)| AppendInfo {
            base_offset,
            last_offset,
            log_append_time_ms: None,
        }))
}

/// Writes each batch's base offset (and, with `log_append_time`, its timestamp and CRC) into
/// `batches`, from `base_offset` on; returns the headers as written.
/// The headers of `batches` with offsets from `base_offset` (and the append time, for
/// `LogAppendTime` logs): parsed, and as bytes to write in place of each batch's first
/// [`BATCH_HEADER_BYTES`], back to back.
fn assign_offsets(
    batches: &[u8],
    headers: &[BatchHeader],
    base_offset: u64,
    log_append_time: Option<i64>,
) -> (Vec<BatchHeader>, Vec<u8>) {
    let mut assigned = Vec::with_capacity(headers.len());
    let mut heads = vec![0u8; headers.len() * BATCH_HEADER_BYTES];
    let mut pos = 0usize;
    let mut offset = base_offset;
    for (h, head) in headers
        .iter()
        .zip(heads.chunks_exact_mut(BATCH_HEADER_BYTES))
    {
        let batch = &batches[pos..pos + h.total_bytes() as usize];
        head.copy_from_slice(&batch[..BATCH_HEADER_BYTES]);
        set_base_offset(head, offset as i64);
        let mut h = *h;
        h.base_offset = offset as i64;
        if let Some(now) = log_append_time {
            stamp_log_append_time(head, &batch[BATCH_HEADER_BYTES..], &h, now);
            h.max_timestamp = now;
        }
        assigned.push(h);
        pos += h.total_bytes() as usize;
        offset += h.offset_count();
    }
    (assigned, heads)
}

/// Rebuilds idempotent producer state from the batch headers of the active segment. Producers
/// whose last batches are only in older segments are treated as new.
fn producer_states(active: &Segment) -> Result<ProducerStates> {
    let mut states = ProducerStates::default();
    let size = active.size();
    let mut position = 0;
    while let Some(h) = active.header_at(position, size)? {
        states.record(&h);
        position += h.total_bytes();
    }
    Ok(states)
}

/// The base offsets of a log's segments, in order; a log without any gets its first segment.
fn segment_bases(dir: &Path, config: &LogConfig, now: i64) -> Result<Vec<u64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(StorageError::io(dir))? {
        let entry = entry.map_err(StorageError::io(dir))?;
        if let Some(base) = entry.file_name().to_str().and_then(parse_segment_base) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    if bases.is_empty() {
        Segment::create(dir, 0, config.index_bytes_max, now)?;
        sync_dir(dir)?;
        bases.push(0);
    }
    Ok(bases)
}

/// The recovery point a log last wrote, if it can be read, and its file, open for the next one.
fn open_recovery_point(dir: &Path) -> Result<(Option<RecoveryPoint>, File)> {
    let path = dir.join(RECOVERY_POINT_FILE);
    let recovery_point = read_recovery_point(&path)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(StorageError::io(&path))?;
    if recovery_point.is_none() {
        sync_dir(dir)?;
    }
    Ok((recovery_point, file))
}

/// `None` when there is no recovery point, or it is torn or corrupt: then nothing is trusted.
fn read_recovery_point(path: &Path) -> Result<Option<RecoveryPoint>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StorageError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if bytes.is_empty() {
        return Ok(None);
    }
    let valid = bytes.len() == RECOVERY_POINT_BYTES
        && crc32c::crc32c(&bytes[..16]).to_be_bytes() == bytes[16..20];
    if !valid {
        tracing::warn!(path = %path.display(), "recovery point is damaged; the last segment will be scanned in full");
        return Ok(None);
    }
    let mut base = [0u8; 8];
    base.copy_from_slice(&bytes[..8]);
    let mut position = [0u8; 8];
    position.copy_from_slice(&bytes[8..16]);
    Ok(Some(RecoveryPoint {
        base_offset: u64::from_be_bytes(base),
        position: u64::from_be_bytes(position),
    }))
}
