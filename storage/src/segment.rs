//! One segment: a log file of whole record batches, its offset index and its time index.

use crate::locks;
use std::fs::{File, OpenOptions};
use std::io::IoSlice;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use bytes::Bytes;

use crate::batch::{BATCH_HEADER_BYTES, BatchHeader, validate_batch};
use crate::config::LogConfig;
use crate::error::{BatchError, Result, StorageError};
use crate::index::{MmapIndex, OffsetEntry, TimeEntry};

pub(crate) const LOG_SUFFIX: &str = "log";
pub(crate) const INDEX_SUFFIX: &str = "index";
pub(crate) const TIME_INDEX_SUFFIX: &str = "timeindex";

/// Bytes read at a time when scanning a segment during recovery or index rebuilds.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

pub(crate) fn segment_path(dir: &Path, base_offset: u64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}.{suffix}"))
}

/// The log, index and time index files of the segment at `base_offset`.
pub(crate) fn segment_paths(dir: &Path, base_offset: u64) -> [PathBuf; 3] {
    [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX]
        .map(|suffix| segment_path(dir, base_offset, suffix))
}

/// Fsyncs a directory so that file creations, renames and deletions in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StorageError::io(dir))
}

/// Writer-side bookkeeping for building a segment's indexes while batches are appended.
///
/// The offset and time indexes get an entry at the same batches: one every
/// `index.interval.bytes` of log. The time entry at a batch holds the largest timestamp of all
/// batches before it, so "every batch before relative offset R has timestamps <= T" holds for
/// each entry (T, R), and timestamps never decrease along the index.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IndexCursor {
    bytes_since_index: u64,
    max_timestamp: i64,
}

impl IndexCursor {
    pub fn new() -> Self {
        IndexCursor {
            bytes_since_index: 0,
            max_timestamp: -1,
        }
    }
}

/// Where the log was last known to be fsynced, written after syncs without an fsync of its
/// own: a stale checkpoint only makes recovery scan more, never trust unsynced bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecoveryPoint {
    pub base_offset: u64,
    pub position: u64,
}

/// Where a scan of a segment's batches stopped.
#[derive(Debug)]
pub(crate) struct ScanEnd {
    /// Position after the last valid batch.
    pub position: u64,
    /// Offset after the last valid batch.
    pub next_offset: u64,
    /// Why the scan stopped before the end of the file, if it did.
    pub stopped: Option<String>,
}

pub(crate) struct Segment {
    base_offset: u64,
    dir: PathBuf,
    /// Bytes of whole batches in the file.
    size: AtomicU64,
    /// Bytes from the start of the file whose batches this process knows to be sound: it wrote
    /// them after checking them, or read them back and checked their CRCs. Starts at 0 for a
    /// segment opened from disk, so what an earlier process (or the disk since) left there is
    /// checked when first read; always at a batch boundary.
    checked: AtomicU64,
    /// Offset after the last batch of the segment.
    next_offset: AtomicU64,
    /// Largest batch timestamp in the segment, -1 when empty.
    max_timestamp: AtomicI64,
    created_ms: i64,
    files: RwLock<Slot>,
}

/// The open log file and index mappings of a segment.
struct Files {
    file: File,
    index: RwLock<MmapIndex<OffsetEntry>>,
    time_index: RwLock<MmapIndex<TimeEntry>>,
    /// [`CLOCK`] at the last use, for the open-segment budget's eviction.
    last_used: AtomicU64,
}

/// A segment's log file held open for a reader outside the storage, such as a socket sending
/// straight from the page cache. While it is held the descriptor stays open, whatever the
/// open-segment budget does; the bytes below the segment's size when it was taken never change.
#[derive(Clone)]
pub struct LogFile(Arc<Files>);

impl AsFd for LogFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.file.as_fd()
    }
}

/// Where a segment's files are: held for as long as it takes appends, or in the process's
/// budget of open closed segments, which may close them while nobody uses them.
enum Slot {
    Pinned(Arc<Files>),
    Budgeted(Weak<Files>),
}

/// Default of [`set_open_segments_max`].
pub const OPEN_SEGMENTS_MAX_DEFAULT: usize = 1024;
static OPEN_SEGMENTS_MAX: AtomicUsize = AtomicUsize::new(OPEN_SEGMENTS_MAX_DEFAULT);
/// Closed segments whose files are open, least recently used first to go.
static OPEN_SEGMENTS: Mutex<Vec<Arc<Files>>> = Mutex::new(Vec::new());
static CLOCK: AtomicU64 = AtomicU64::new(0);

/// Sets how many closed segments of the process may have their files open at once (each
/// holds a descriptor and up to two mappings). Active segments always have theirs.
pub fn set_open_segments_max(max: usize) {
    OPEN_SEGMENTS_MAX.store(max.max(1), Ordering::Relaxed);
}

/// Closed segments whose files are open now.
pub fn open_segments() -> usize {
    locks::lock(&OPEN_SEGMENTS).len()
}

impl Files {
    fn touch(&self) {
        self.last_used
            .store(CLOCK.fetch_add(1, Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Opens a closed segment's log read-only and its sealed indexes.
    fn open_closed(dir: &Path, base_offset: u64) -> Result<Files> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = File::open(&log_path).map_err(StorageError::io(&log_path))?;
        Ok(Files::new(
            file,
            (
                MmapIndex::open_read_only(&segment_path(dir, base_offset, INDEX_SUFFIX))?,
                MmapIndex::open_read_only(&segment_path(dir, base_offset, TIME_INDEX_SUFFIX))?,
            ),
        ))
    }

    fn new(file: File, (index, time_index): Indexes) -> Files {
        Files {
            file,
            index: RwLock::new(index),
            time_index: RwLock::new(time_index),
            last_used: AtomicU64::new(CLOCK.fetch_add(1, Ordering::Relaxed)),
        }
    }

    /// Puts the files in the budget, closing those of the least recently used segment when it
    /// is full (they stay open until readers still holding them finish).
    fn budget(files: Arc<Files>) {
        let mut open = locks::lock(&OPEN_SEGMENTS);
        let max = OPEN_SEGMENTS_MAX.load(Ordering::Relaxed);
        while open.len() >= max {
            let oldest = open
                .iter()
                .enumerate()
                .min_by_key(|(_, f)| f.last_used.load(Ordering::Relaxed))
                .map(|(i, _)| i);
            match oldest {
                Some(i) => drop(open.swap_remove(i)),
                None => break,
            }
        }
        open.push(files);
    }

    /// Takes the files out of the budget, closing them once no reader holds them.
    fn unbudget(files: &Arc<Files>) {
        locks::lock(&OPEN_SEGMENTS).retain(|f| !Arc::ptr_eq(f, files));
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // Poisoned or not, the slot says where the files are (see `crate::locks`).
        let slot = self.files.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Slot::Budgeted(weak) = slot
            && let Some(files) = weak.upgrade()
        {
            Files::unbudget(&files);
        }
    }
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("base_offset", &self.base_offset)
            .field("size", &self.size())
            .field("next_offset", &self.next_offset())
            .finish()
    }
}

/// How far a segment's batches reach.
#[derive(Debug, Clone, Copy)]
struct Extent {
    size: u64,
    next_offset: u64,
    max_timestamp: i64,
}

impl Extent {
    fn empty(base_offset: u64) -> Self {
        Extent {
            size: 0,
            next_offset: base_offset,
            max_timestamp: -1,
        }
    }
}

type Indexes = (MmapIndex<OffsetEntry>, MmapIndex<TimeEntry>);

impl Segment {
    fn assemble(
        dir: &Path,
        base_offset: u64,
        file: File,
        indexes: Indexes,
        extent: Extent,
        created_ms: i64,
    ) -> Segment {
        Segment {
            base_offset,
            dir: dir.to_path_buf(),
            size: AtomicU64::new(extent.size),
            checked: AtomicU64::new(0),
            next_offset: AtomicU64::new(extent.next_offset),
            max_timestamp: AtomicI64::new(extent.max_timestamp),
            created_ms,
            files: RwLock::new(Slot::Pinned(Arc::new(Files::new(file, indexes)))),
        }
    }

    /// The segment's open files, opened again if the budget closed them.
    fn files(&self) -> Result<Arc<Files>> {
        let found = match &*locks::read(&self.files) {
            Slot::Pinned(f) => Some(f.clone()),
            Slot::Budgeted(w) => w.upgrade(),
        };
        if let Some(files) = found {
            files.touch();
            return Ok(files);
        }
        let mut slot = locks::write(&self.files);
        if let Slot::Budgeted(w) = &*slot
            && let Some(files) = w.upgrade()
        {
            return Ok(files);
        }
        let files = Arc::new(Files::open_closed(&self.dir, self.base_offset)?);
        *slot = Slot::Budgeted(Arc::downgrade(&files));
        Files::budget(files.clone());
        Ok(files)
    }

    /// The files of a segment that takes appends; `None` once it is closed.
    fn pinned(&self) -> Option<Arc<Files>> {
        match &*locks::read(&self.files) {
            Slot::Pinned(f) => Some(f.clone()),
            Slot::Budgeted(_) => None,
        }
    }

    /// Hands a closed segment's files to the budget, which may close them while unused.
    fn release(&self) {
        let mut slot = locks::write(&self.files);
        if let Slot::Pinned(files) = &*slot {
            let files = files.clone();
            *slot = Slot::Budgeted(Arc::downgrade(&files));
            Files::budget(files);
        }
    }

    /// Creates the files of a new, empty active segment. The caller fsyncs the directory.
    pub fn create(dir: &Path, base_offset: u64, index_bytes_max: u64, now_ms: i64) -> Result<Self> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&log_path)
            .map_err(StorageError::io(&log_path))?;
        Ok(Segment::assemble(
            dir,
            base_offset,
            file,
            fresh_indexes(dir, base_offset, index_bytes_max)?,
            Extent::empty(base_offset),
            now_ms,
        ))
    }

    /// Opens a closed segment whose successor starts at `next_offset`. Its indexes were sealed
    /// when it closed; they get an O(1) sanity check and are rebuilt by a scan if it fails.
    pub fn open_closed(dir: &Path, base_offset: u64, next_offset: u64) -> Result<Self> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = open_log(&log_path)?;
        let size = file.metadata().map_err(StorageError::io(&log_path))?.len();
        let span = next_offset.saturating_sub(base_offset);
        let index =
            MmapIndex::<OffsetEntry>::open_read_only(&segment_path(dir, base_offset, INDEX_SUFFIX))
                .ok()
                .filter(|idx| {
                    // Memory-only pass over the mapping: cheap next to opening the files.
                    idx.valid_prefix(|prev, e| {
                        u64::from(e.position) < size
                            && u64::from(e.relative_offset) < span
                            && prev.is_none_or(|p| {
                                e.relative_offset > p.relative_offset && e.position > p.position
                            })
                    }) == idx.len()
                });
        let time_index = MmapIndex::<TimeEntry>::open_read_only(&segment_path(
            dir,
            base_offset,
            TIME_INDEX_SUFFIX,
        ))
        .ok()
        .filter(|idx| {
            idx.valid_prefix(|prev, e| {
                u64::from(e.relative_offset) <= span
                    && prev.is_none_or(|p| {
                        e.timestamp >= p.timestamp && e.relative_offset >= p.relative_offset
                    })
            }) == idx.len()
        });
        match (index, time_index) {
            (Some(index), Some(time_index)) if time_index.len() == index.len() + 1 => {
                // The sealed time index ends with the segment's largest timestamp.
                let max_timestamp = time_index.last().map_or(-1, |e| e.timestamp);
                let extent = Extent {
                    size,
                    next_offset,
                    max_timestamp,
                };
                let segment =
                    Segment::assemble(dir, base_offset, file, (index, time_index), extent, 0);
                segment.release();
                Ok(segment)
            }
            _ => {
                tracing::warn!(
                    segment = %log_path.display(),
                    "index missing or inconsistent with the log; rebuilding it"
                );
                let segment = Segment::rebuild(dir, base_offset, next_offset, file, size)?;
                segment.seal()?;
                Ok(segment)
            }
        }
    }

    /// Opens the last segment of a log after a crash or shutdown. Index entries are kept while
    /// both indexes agree, point inside the file, and lie before the recovery point (when there
    /// is one for this segment); every batch after the last kept entry is read and verified
    /// (length, CRC, offsets), indexed again, and the file is cut after the last valid one.
    /// The work is proportional to the unsynced tail, not to the size of the log.
    pub fn recover_active(
        dir: &Path,
        base_offset: u64,
        config: &LogConfig,
        recovery_point: Option<RecoveryPoint>,
        now_ms: i64,
    ) -> Result<(Self, IndexCursor)> {
        let log_path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = open_log(&log_path)?;
        let file_len = file.metadata().map_err(StorageError::io(&log_path))?.len();
        let mut index = MmapIndex::<OffsetEntry>::open_writable(
            &segment_path(dir, base_offset, INDEX_SUFFIX),
            config.index_bytes_max,
        )?;
        let mut time_index = MmapIndex::<TimeEntry>::open_writable(
            &segment_path(dir, base_offset, TIME_INDEX_SUFFIX),
            config.index_bytes_max,
        )?;
        // Index entries are trusted only below the recovery point. Without one for this
        // segment (it was created after the last recovery point reached the disk, or the point
        // is lost) the whole segment is scanned.
        let trusted_bytes = match recovery_point {
            Some(p) if p.base_offset == base_offset => p.position,
            _ => 0,
        };

        let valid = trusted_entries(
            (&index, &time_index),
            &file,
            file_len,
            trusted_bytes,
            base_offset,
        );
        // The scan starts at the last kept entry, which it indexes again.
        let mut cursor = IndexCursor::new();
        let (start_position, start_offset) = match valid.checked_sub(1) {
            Some(last) => {
                let e = index.entry(last);
                cursor.max_timestamp = time_index.entry(last).timestamp;
                (
                    u64::from(e.position),
                    base_offset + u64::from(e.relative_offset),
                )
            }
            None => (0, base_offset),
        };
        // Zero the stale entries so a later recovery cannot mistake them for valid ones.
        let keep = valid.saturating_sub(1);
        index.truncate(keep);
        time_index.truncate(keep);
        let extent = Extent {
            size: start_position,
            next_offset: start_offset,
            max_timestamp: cursor.max_timestamp,
        };
        let segment =
            Segment::assemble(dir, base_offset, file, (index, time_index), extent, now_ms);
        if keep > 0 {
            // Re-create the entry the scan starts at: the interval had been reached there.
            cursor.bytes_since_index = u64::MAX;
        }
        let end = segment.scan(&mut cursor, config.index_interval_bytes, file_len, true)?;
        if let Some(reason) = &end.stopped {
            segment.cut_tail(end.position, file_len, reason)?;
        }
        segment.size.store(end.position, Ordering::Release);
        segment
            .next_offset
            .store(end.next_offset, Ordering::Release);
        tracing::debug!(
            segment = %log_path.display(),
            scanned_from = start_position,
            size = end.position,
            "recovered active segment"
        );
        Ok((segment, cursor))
    }

    /// Rebuilds both indexes of a segment by scanning all of it.
    fn rebuild(
        dir: &Path,
        base_offset: u64,
        next_offset: u64,
        file: File,
        size: u64,
    ) -> Result<Self> {
        // One entry per 4 KiB of log at most, plus the closing time entry.
        let index_bytes_max = (size / 4096 + 2) * 12;
        let indexes = fresh_indexes(dir, base_offset, index_bytes_max)?;
        let segment = Segment::assemble(
            dir,
            base_offset,
            file,
            indexes,
            Extent::empty(base_offset),
            0,
        );
        let mut cursor = IndexCursor::new();
        let end = segment.scan(&mut cursor, 4096, size, false)?;
        if let Some(reason) = end.stopped {
            return Err(StorageError::Corrupt {
                path: segment.log_path(),
                position: end.position,
                reason,
            });
        }
        if end.next_offset > next_offset {
            return Err(StorageError::Corrupt {
                path: segment.log_path(),
                position: end.position,
                reason: format!(
                    "segment ends at offset {} but the next segment starts at {next_offset}",
                    end.next_offset
                ),
            });
        }
        segment.size.store(end.position, Ordering::Release);
        // Compaction may have removed the segment's last records; its span still ends where the
        // next segment begins.
        segment.next_offset.store(next_offset, Ordering::Release);
        segment.finish_time_index(&cursor);
        Ok(segment)
    }

    /// Scans and verifies batches from the segment's current size up to `limit`, indexing each.
    /// The base offset is not covered by the CRC, so it is checked against the offsets before
    /// it: batches of an active segment are `contiguous`; a compacted one may have gaps.
    fn scan(
        &self,
        cursor: &mut IndexCursor,
        index_interval_bytes: u64,
        limit: u64,
        contiguous: bool,
    ) -> Result<ScanEnd> {
        let files = self.files()?;
        let mut position = self.size();
        let mut next_offset = self.next_offset();
        let mut chunk: Vec<u8> = Vec::new();
        let mut chunk_start = position;
        let stopped = loop {
            if position >= limit {
                break None;
            }
            let chunk_end = chunk_start + chunk.len() as u64;
            if position + BATCH_HEADER_BYTES as u64 > chunk_end || chunk.is_empty() {
                let want = (limit - position).min(SCAN_CHUNK_BYTES as u64) as usize;
                chunk.resize(want, 0);
                read_exact_at(&files.file, &mut chunk, position, &self.log_path())?;
                chunk_start = position;
            }
            let rel = (position - chunk_start) as usize;
            let header = match BatchHeader::parse(&chunk[rel..]) {
                Ok(h) => h,
                Err(e) => break Some(format!("{e}")),
            };
            let total = header.total_bytes();
            if position + total > limit {
                break Some(format!(
                    "batch of {total} bytes at position {position} runs past the end of the file at {limit}"
                ));
            }
            if rel + total as usize > chunk.len() {
                chunk.resize(
                    total.max(SCAN_CHUNK_BYTES as u64).min(limit - position) as usize,
                    0,
                );
                read_exact_at(&files.file, &mut chunk, position, &self.log_path())?;
                chunk_start = position;
            }
            let rel = (position - chunk_start) as usize;
            if let Err(e) = validate_batch(&chunk[rel..rel + total as usize], u64::MAX) {
                break Some(format!("{e}"));
            }
            let misplaced = if contiguous {
                header.base_offset != next_offset as i64
            } else {
                header.base_offset < next_offset as i64
            };
            if misplaced || header.last_offset() - self.base_offset as i64 > i64::from(u32::MAX) {
                break Some(format!(
                    "batch at position {position} has base offset {}, expected {next_offset}",
                    header.base_offset
                ));
            }
            self.index_batch(cursor, &header, position, index_interval_bytes);
            position += total;
            next_offset = header.last_offset() as u64 + 1;
        };
        Ok(ScanEnd {
            position,
            next_offset,
            stopped,
        })
    }

    /// Truncates the log file to `position`. The bytes cut are first copied beside the segment
    /// (up to a limit), so an operator can inspect what recovery removed.
    fn cut_tail(&self, position: u64, file_len: u64, reason: &str) -> Result<()> {
        const SAVED_BYTES_MAX: u64 = 64 << 20;
        let log_path = self.log_path();
        let cut = file_len - position;
        let saved = cut.min(SAVED_BYTES_MAX);
        let saved_path = log_path.with_extension(format!("log.cut-at-{position}"));
        let files = self.files()?;
        let mut bytes = vec![0u8; saved as usize];
        read_exact_at(&files.file, &mut bytes, position, &log_path)?;
        std::fs::write(&saved_path, &bytes).map_err(StorageError::io(&saved_path))?;
        files
            .file
            .set_len(position)
            .map_err(StorageError::io(&log_path))?;
        files.file.sync_all().map_err(StorageError::io(&log_path))?;
        sync_dir(&self.dir)?;
        tracing::warn!(
            segment = %log_path.display(),
            position,
            bytes_cut = cut,
            saved_to = %saved_path.display(),
            reason,
            "recovery truncated the log tail"
        );
        Ok(())
    }

    /// Updates the indexes for a batch written at `position`. Entries are sparse: one pair
    /// per `index_interval_bytes` of log.
    pub fn index_batch(
        &self,
        cursor: &mut IndexCursor,
        header: &BatchHeader,
        position: u64,
        index_interval_bytes: u64,
    ) {
        if cursor.bytes_since_index > index_interval_bytes
            && let Some(files) = self.reserve_index_entry()
        {
            let relative_offset = (header.base_offset as u64 - self.base_offset) as u32;
            locks::write(&files.index).push(OffsetEntry {
                relative_offset,
                position: position as u32,
            });
            locks::write(&files.time_index).push(TimeEntry {
                timestamp: cursor.max_timestamp,
                relative_offset,
            });
            cursor.bytes_since_index = 0;
        }
        cursor.bytes_since_index = cursor
            .bytes_since_index
            .saturating_add(header.total_bytes());
        if header.max_timestamp > cursor.max_timestamp {
            cursor.max_timestamp = header.max_timestamp;
            self.max_timestamp
                .store(header.max_timestamp, Ordering::Release);
        }
    }

    /// Room for `entries` more index entries within the limit, keeping one time entry for the
    /// seal.
    fn index_room(files: &Files, entries: usize) -> bool {
        locks::read(&files.index).has_room(entries)
            && locks::read(&files.time_index).has_room(entries + 1)
    }

    /// Makes room for one more entry in both indexes (and the closing time entry), growing
    /// their files. A disk that cannot take the growth leaves the index sparser, which costs
    /// lookups a longer scan and loses nothing: indexes are derived data.
    fn reserve_index_entry(&self) -> Option<Arc<Files>> {
        let files = self.pinned()?;
        if !Self::index_room(&files, 1) {
            return None;
        }
        let grown = locks::write(&files.index)
            .reserve(1)
            .and_then(|offsets| Ok(offsets && locks::write(&files.time_index).reserve(2)?));
        let grown = grown.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "index could not grow; it stays sparser");
            false
        });
        grown.then_some(files)
    }

    /// Appends the closing time index entry: the segment's largest timestamp at its end, so a
    /// sealed segment knows its maximum. Without room for it the index is rebuilt when the
    /// segment is next opened.
    pub fn finish_time_index(&self, cursor: &IndexCursor) {
        let Some(files) = self.pinned() else {
            return;
        };
        let mut time_index = locks::write(&files.time_index);
        match time_index.reserve(1) {
            Ok(true) => time_index.push(TimeEntry {
                timestamp: cursor.max_timestamp,
                relative_offset: (self.next_offset() - self.base_offset) as u32,
            }),
            Ok(false) => {
                tracing::warn!(segment = %self.log_path().display(), "time index full; it will be rebuilt")
            }
            Err(e) => tracing::warn!(error = %e, "time index could not grow; it will be rebuilt"),
        }
    }

    /// True when the indexes cannot take another entry: the segment must roll.
    pub fn indexes_full(&self) -> bool {
        self.pinned()
            .is_none_or(|files| !Self::index_room(&files, 1))
    }

    /// Writes `bytes` (whole batches) at the end of the log file. On failure the file is cut
    /// back to its previous size so no partial batch stays behind.
    pub fn write(&self, bytes: &[u8]) -> Result<u64> {
        self.write_parts(&mut [IoSlice::new(bytes)])
    }

    /// [`Segment::write`] of bytes given in pieces, one after the other, written with
    /// `pwritev` so they are not first gathered into one buffer.
    pub fn write_parts(&self, parts: &mut [IoSlice<'_>]) -> Result<u64> {
        let position = self.size();
        let files = self.files()?;
        if let Err(e) = write_all_vectored_at(&files.file, parts, position) {
            let _ = files.file.set_len(position);
            return Err(StorageError::Io {
                path: self.log_path(),
                source: e,
            });
        }
        Ok(position)
    }

    /// Makes `bytes` written by [`Segment::write`] visible in the segment's bookkeeping. What
    /// is written is checked first (a producer's batches) or built here (a compacted copy), so
    /// it counts as checked.
    pub fn commit_write(&self, bytes: u64, next_offset: u64) {
        let before = self.size.fetch_add(bytes, Ordering::AcqRel);
        self.mark_checked(before, before + bytes);
        self.next_offset.store(next_offset, Ordering::Release);
    }

    /// Bytes from the start of the file known to be sound: a reader checks only what lies past.
    pub fn checked(&self) -> u64 {
        self.checked.load(Ordering::Acquire)
    }

    /// Records that the batches in `from..to` are sound; the mark moves only when they adjoin
    /// what was already known, so it never passes a byte nobody checked.
    pub fn mark_checked(&self, from: u64, to: u64) {
        let _ = self
            .checked
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (from <= c && c < to).then_some(to)
            });
    }

    /// fdatasync of the log file: data and size, which is what recovery needs.
    pub fn sync(&self) -> Result<()> {
        self.files()?
            .file
            .sync_data()
            .map_err(StorageError::io(self.log_path()))
    }

    /// Closes the segment for appends: fsyncs the log and seals both indexes.
    pub fn seal(&self) -> Result<()> {
        self.sync()?;
        let files = self.files()?;
        locks::write(&files.index).seal()?;
        locks::write(&files.time_index).seal()?;
        drop(files);
        self.release();
        Ok(())
    }

    /// Writes index pages back on clean shutdown.
    pub fn flush_indexes(&self) -> Result<()> {
        let files = self.files()?;
        locks::read(&files.index).flush()?;
        locks::read(&files.time_index).flush()
    }

    pub fn base_offset(&self) -> u64 {
        self.base_offset
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> u64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub fn log_path(&self) -> PathBuf {
        segment_path(&self.dir, self.base_offset, LOG_SUFFIX)
    }

    /// Every file of the segment.
    pub fn paths(&self) -> [PathBuf; 3] {
        segment_paths(&self.dir, self.base_offset)
    }

    /// Position of the last indexed batch starting at or before `offset`.
    pub fn lookup(&self, offset: u64) -> Result<u64> {
        let rel = offset
            .saturating_sub(self.base_offset)
            .min(u64::from(u32::MAX)) as u32;
        self.last_indexed(|e| e.relative_offset <= rel)
    }

    /// Position of the last indexed batch starting at or before `position`.
    pub fn lookup_position(&self, position: u64) -> Result<u64> {
        let position = position.min(u64::from(u32::MAX)) as u32;
        self.last_indexed(|e| e.position <= position)
    }

    /// Position of the last offset index entry for which `le` holds (true for a prefix), or 0.
    fn last_indexed(&self, le: impl Fn(&OffsetEntry) -> bool) -> Result<u64> {
        Ok(locks::read(&self.files()?.index)
            .last_where(le)
            .map_or(0, |e| u64::from(e.position)))
    }

    /// Offset from which a scan for the first record at or after `timestamp` may start: every
    /// batch before it has only smaller timestamps.
    pub fn lookup_time(&self, timestamp: i64) -> Result<u64> {
        let entry = locks::read(&self.files()?.time_index).last_where(|e| e.timestamp < timestamp);
        Ok(entry.map_or(self.base_offset, |e| {
            self.base_offset + u64::from(e.relative_offset)
        }))
    }

    /// Header of the batch at `position`, or `None` when fewer than a header's bytes remain
    /// before `limit`.
    pub fn header_at(&self, position: u64, limit: u64) -> Result<Option<BatchHeader>> {
        read_header(&self.files()?.file, position, limit).map_err(|e| match e {
            HeaderError::Io(source) => StorageError::Io {
                path: self.log_path(),
                source,
            },
            HeaderError::Batch(e) => StorageError::Corrupt {
                path: self.log_path(),
                position,
                reason: e.to_string(),
            },
        })
    }

    /// Calls `f` with every batch of the segment, in order, each verified against its CRC.
    pub fn visit_batches(
        &self,
        mut f: impl FnMut(&BatchHeader, Bytes) -> Result<()>,
    ) -> Result<()> {
        let size = self.size();
        let mut position = 0;
        while let Some(h) = self.header_at(position, size)? {
            let bytes = self.read_bytes(position, h.total_bytes().min(size - position))?;
            let header = validate_batch(&bytes, u64::MAX).map_err(|e| StorageError::Corrupt {
                path: self.log_path(),
                position,
                reason: e.to_string(),
            })?;
            f(&header, bytes)?;
            position += h.total_bytes();
        }
        Ok(())
    }

    /// Maps `len` bytes at `position` of the log file read-only; with `populate`, which pays
    /// when every byte is about to be read, the pages are mapped in at once rather than faulted
    /// in one by one.
    pub fn map_bytes(&self, position: u64, len: u64, populate: bool) -> Result<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        const PAGE_BYTES: u64 = 4096;
        let start = position - position % PAGE_BYTES;
        let skip = (position - start) as usize;
        // SAFETY: the range lies below the segment's size when the read began; the log only
        // appends past it, and files are replaced by rename or unlinked, never truncated under
        // a reader, so the mapped bytes stay valid for the mapping's life.
        let mut options = memmap2::MmapOptions::new();
        if populate {
            options.populate();
        }
        let map = unsafe {
            options
                .offset(start)
                .len(skip + len as usize)
                .map(&self.files()?.file)
        }
        .map_err(StorageError::io(self.log_path()))?;
        Ok(Bytes::from_owner(map).slice(skip..))
    }

    /// The log file, held open.
    pub fn log_file(&self) -> Result<LogFile> {
        Ok(LogFile(self.files()?))
    }

    /// Reads `len` bytes at `position`.
    pub fn read_bytes(&self, position: u64, len: u64) -> Result<Bytes> {
        let mut buf = vec![0u8; len as usize];
        read_exact_at(&self.files()?.file, &mut buf, position, &self.log_path())?;
        Ok(Bytes::from(buf))
    }
}

/// Writes every byte of `parts` at `position`, a `pwritev` of at most [`IOV_MAX`] pieces at a
/// time, going on after short writes.
fn write_all_vectored_at(
    file: &File,
    mut parts: &mut [IoSlice<'_>],
    mut position: u64,
) -> std::io::Result<()> {
    /// Pieces one `pwritev` takes on Linux.
    const IOV_MAX: usize = 1024;
    IoSlice::advance_slices(&mut parts, 0);
    while !parts.is_empty() {
        let take = parts.len().min(IOV_MAX);
        match rustix::io::pwritev(file, &parts[..take], position) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                position += n as u64;
                IoSlice::advance_slices(&mut parts, n);
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn fresh_indexes(dir: &Path, base_offset: u64, bytes_max: u64) -> Result<Indexes> {
    Ok((
        fresh_index(dir, base_offset, INDEX_SUFFIX, bytes_max)?,
        fresh_index(dir, base_offset, TIME_INDEX_SUFFIX, bytes_max)?,
    ))
}

fn fresh_index<E: crate::index::IndexEntry>(
    dir: &Path,
    base_offset: u64,
    suffix: &str,
    bytes_max: u64,
) -> Result<MmapIndex<E>> {
    let path = segment_path(dir, base_offset, suffix);
    // A leftover file from an earlier segment with this base would carry stale entries.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StorageError::Io { path, source: e }),
    }
    let mut index = MmapIndex::open_writable(&path, bytes_max)?;
    index.truncate(0);
    Ok(index)
}

fn open_log(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(StorageError::io(path))
}

fn read_exact_at(file: &File, buf: &mut [u8], position: u64, path: &Path) -> Result<()> {
    file.read_exact_at(buf, position)
        .map_err(StorageError::io(path))
}

enum HeaderError {
    Io(std::io::Error),
    Batch(BatchError),
}

/// How many leading entries of a recovering segment's indexes to keep: both valid and in order,
/// below the recovery point's `trusted_bytes`, naming the same batches, the last pointing at a
/// batch that starts at its offset; anything past them is a page that never reached the disk.
fn trusted_entries(
    (index, time_index): (&MmapIndex<OffsetEntry>, &MmapIndex<TimeEntry>),
    file: &File,
    file_len: u64,
    trusted_bytes: u64,
    base_offset: u64,
) -> usize {
    let mut valid = index
        .valid_prefix(|prev, e| {
            e.position > 0
                && u64::from(e.position) < file_len.min(trusted_bytes.saturating_add(1))
                && prev.is_none_or(|p| {
                    e.relative_offset > p.relative_offset && e.position > p.position
                })
        })
        .min(time_index.len());
    valid = valid
        .min(time_index.valid_prefix(|prev, t| prev.is_none_or(|p| t.timestamp >= p.timestamp)));
    valid = (0..valid)
        .find(|&i| index.entry(i).relative_offset != time_index.entry(i).relative_offset)
        .unwrap_or(valid);
    while valid > 0 {
        let e = index.entry(valid - 1);
        let expected = (base_offset + u64::from(e.relative_offset)) as i64;
        let starts_batch = read_header(file, u64::from(e.position), file_len)
            .ok()
            .flatten()
            .is_some_and(|h| h.base_offset == expected);
        if starts_batch {
            break;
        }
        valid -= 1;
    }
    valid
}

fn read_header(
    file: &File,
    position: u64,
    limit: u64,
) -> std::result::Result<Option<BatchHeader>, HeaderError> {
    if position + BATCH_HEADER_BYTES as u64 > limit {
        return Ok(None);
    }
    let mut buf = [0u8; BATCH_HEADER_BYTES];
    file.read_exact_at(&mut buf, position)
        .map_err(HeaderError::Io)?;
    BatchHeader::parse(&buf)
        .map(Some)
        .map_err(HeaderError::Batch)
}
