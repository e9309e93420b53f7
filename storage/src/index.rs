//! Sparse, memory-mapped segment indexes.
//!
//! An index file is a flat array of fixed-size big-endian entries. The active segment's index
//! is mapped writable and grows on demand, doubling from [`INDEX_INITIAL_BYTES`] up to
//! `segment.index.bytes`, so an empty partition costs a page per index, not the whole limit;
//! unwritten entries are zero. When a segment closes, its index is flushed and truncated to the
//! entries it holds, and is mapped read-only from then on. Lookups are binary searches over the
//! mapping.
//!
//! Indexes are derived data: they are never fsynced on the append path, and recovery rebuilds
//! any part of them that does not match the log.

use std::fs::{File, OpenOptions};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapMut};

use crate::error::{Result, StorageError};

/// Bytes an active index starts with: one page.
pub(crate) const INDEX_INITIAL_BYTES: u64 = 4096;

/// A fixed-size index entry.
pub(crate) trait IndexEntry: Copy {
    const BYTES: usize;
    fn read(b: &[u8]) -> Self;
    fn write(&self, b: &mut [u8]);
}

/// Offset index entry: offset relative to the segment base → byte position in the log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

impl IndexEntry for OffsetEntry {
    const BYTES: usize = 8;
    fn read(b: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            position: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
    fn write(&self, b: &mut [u8]) {
        b[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        b[4..8].copy_from_slice(&self.position.to_be_bytes());
    }
}

/// Time index entry: the largest timestamp seen so far in the segment, and the relative offset
/// of the batch from which on it is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TimeEntry {
    pub timestamp: i64,
    pub relative_offset: u32,
}

impl IndexEntry for TimeEntry {
    const BYTES: usize = 12;
    fn read(b: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[..8]);
        TimeEntry {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
        }
    }
    fn write(&self, b: &mut [u8]) {
        b[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        b[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }
}

/// Sizes `file` to `len` bytes with the disk blocks reserved. A store through the mapping into
/// a hole of a sparse file needs a block at fault time, and a full disk then kills the process
/// with SIGBUS; reserving up front turns that into an error here.
fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    file.set_len(len)?;
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), 0, len) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) => {
            // No fallocate on this file system: write the zeros.
            use std::os::unix::fs::FileExt;
            let zeros = vec![0u8; 64 * 1024];
            let mut pos = 0;
            while pos < len {
                let n = (len - pos).min(zeros.len() as u64) as usize;
                file.write_all_at(&zeros[..n], pos)?;
                pos += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

enum Mapping {
    /// Zero-length file: nothing to map.
    Empty,
    ReadOnly(Mmap),
    Writable(MmapMut),
}

impl Mapping {
    fn bytes(&self) -> &[u8] {
        match self {
            Mapping::Empty => &[],
            Mapping::ReadOnly(m) => m,
            Mapping::Writable(m) => m,
        }
    }
}

/// An index file mapped into memory. It keeps no file descriptor: growing and sealing, both
/// rare, open the file by its path again.
pub(crate) struct MmapIndex<E: IndexEntry> {
    path: PathBuf,
    map: Mapping,
    entries: usize,
    /// Bytes a writable index may grow to.
    bytes_max: u64,
    _entry: PhantomData<E>,
}

fn open_rw(path: &Path, create: bool) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(StorageError::io(path))
}

impl<E: IndexEntry> MmapIndex<E> {
    /// Opens (creating if needed) a writable index that may grow to `bytes_max`. All entries
    /// in the file are taken as valid; callers validate with [`MmapIndex::valid_prefix`] and
    /// [`MmapIndex::truncate`].
    pub fn open_writable(path: &Path, bytes_max: u64) -> Result<Self> {
        let file = open_rw(path, true)?;
        let len = file.metadata().map_err(StorageError::io(path))?.len();
        let len = len - len % E::BYTES as u64;
        let bytes_max = bytes_max.max(len);
        let bytes_max = bytes_max - bytes_max % E::BYTES as u64;
        let initial = INDEX_INITIAL_BYTES.min(bytes_max);
        let initial = initial - initial % E::BYTES as u64;
        let mut index = MmapIndex {
            path: path.to_path_buf(),
            map: Mapping::Empty,
            entries: (len / E::BYTES as u64) as usize,
            bytes_max,
            _entry: PhantomData,
        };
        index.map_to(&file, len.max(initial))?;
        Ok(index)
    }

    /// Sizes the file to `len` bytes, blocks reserved, and maps all of it writable.
    fn map_to(&mut self, file: &File, len: u64) -> Result<()> {
        let io = || StorageError::io(&self.path);
        preallocate(file, len).map_err(io())?;
        // SAFETY: the file is private to this process's log directory; no other process writes
        // it. Stores through an earlier mapping of the file are in the page cache and visible
        // through this one; a mapping stays valid after its descriptor is closed.
        let map = unsafe { MmapMut::map_mut(file) }.map_err(io())?;
        self.map = Mapping::Writable(map);
        Ok(())
    }

    /// Makes room for `more` entries, growing the file and its mapping (doubling, up to the
    /// limit). False when the limit does not allow it; an error when the disk does not.
    pub fn reserve(&mut self, more: usize) -> Result<bool> {
        let Mapping::Writable(m) = &self.map else {
            return Ok(false);
        };
        let needed = ((self.entries + more) * E::BYTES) as u64;
        if needed <= m.len() as u64 {
            return Ok(true);
        }
        if needed > self.bytes_max {
            return Ok(false);
        }
        let grown = (m.len() as u64 * 2).max(needed).min(self.bytes_max);
        let file = open_rw(&self.path, false)?;
        self.map_to(&file, grown - grown % E::BYTES as u64)?;
        Ok(true)
    }

    /// Opens a closed segment's index read-only. A file whose size is not a whole number of
    /// entries is refused.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        let io = || StorageError::io(path);
        let file = File::open(path).map_err(io())?;
        let len = file.metadata().map_err(io())?.len();
        if len % E::BYTES as u64 != 0 {
            return Err(StorageError::Corrupt {
                path: path.to_path_buf(),
                position: len,
                reason: format!("index size {len} is not a multiple of {} bytes", E::BYTES),
            });
        }
        let map = if len == 0 {
            Mapping::Empty
        } else {
            // SAFETY: as in `map_to`; closed indexes are never written again.
            Mapping::ReadOnly(unsafe { Mmap::map(&file) }.map_err(io())?)
        };
        Ok(MmapIndex {
            path: path.to_path_buf(),
            map,
            entries: (len / E::BYTES as u64) as usize,
            bytes_max: len,
            _entry: PhantomData,
        })
    }

    pub fn len(&self) -> usize {
        self.entries
    }

    /// True when `more` entries fit within the index's limit.
    pub fn has_room(&self, more: usize) -> bool {
        match &self.map {
            Mapping::Writable(_) => ((self.entries + more) * E::BYTES) as u64 <= self.bytes_max,
            _ => false,
        }
    }

    pub fn entry(&self, i: usize) -> E {
        E::read(&self.map.bytes()[i * E::BYTES..(i + 1) * E::BYTES])
    }

    pub fn last(&self) -> Option<E> {
        self.entries.checked_sub(1).map(|i| self.entry(i))
    }

    /// Number of leading entries for which `valid(previous, entry)` holds.
    pub fn valid_prefix(&self, mut valid: impl FnMut(Option<E>, E) -> bool) -> usize {
        let mut prev = None;
        for i in 0..self.entries {
            let e = self.entry(i);
            if !valid(prev, e) {
                return i;
            }
            prev = Some(e);
        }
        self.entries
    }

    /// Index of the last entry for which `le(entry)` holds, given that `le` is true for a
    /// prefix of the entries (binary search).
    pub fn last_where(&self, le: impl Fn(&E) -> bool) -> Option<E> {
        let (mut lo, mut hi) = (0usize, self.entries);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if le(&self.entry(mid)) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1).map(|i| self.entry(i))
    }

    pub fn push(&mut self, e: E) {
        let i = self.entries;
        match &mut self.map {
            Mapping::Writable(m) => {
                assert!(
                    (i + 1) * E::BYTES <= m.len(),
                    "index {} is full",
                    self.path.display()
                );
                e.write(&mut m[i * E::BYTES..(i + 1) * E::BYTES]);
                self.entries += 1;
            }
            _ => panic!("index {} is read-only", self.path.display()),
        }
    }

    /// Drops entries from `entries` on and zeroes them, so a later recovery cannot mistake them
    /// for valid ones. Zeroing stops at the first entry that is already zero: the preallocated
    /// space after the last entry ever written is zero, and touching it would fault in pages
    /// for nothing.
    pub fn truncate(&mut self, entries: usize) {
        if let Mapping::Writable(m) = &mut self.map {
            let capacity = m.len() / E::BYTES;
            for i in entries..capacity {
                let slot = &mut m[i * E::BYTES..(i + 1) * E::BYTES];
                if slot.iter().all(|&b| b == 0) {
                    break;
                }
                slot.fill(0);
            }
        }
        self.entries = self.entries.min(entries);
    }

    /// Flushes and fsyncs the entries, truncates the file to them and remaps it read-only:
    /// the index of a segment that no longer takes appends.
    pub fn seal(&mut self) -> Result<()> {
        let io = || StorageError::io(&self.path);
        if let Mapping::Writable(m) = &self.map {
            m.flush().map_err(io())?;
        }
        self.map = Mapping::Empty;
        let file = open_rw(&self.path, false)?;
        let used = (self.entries * E::BYTES) as u64;
        file.set_len(used).map_err(io())?;
        file.sync_all().map_err(io())?;
        self.bytes_max = used;
        if used > 0 {
            // SAFETY: as in `open_read_only`.
            self.map = Mapping::ReadOnly(unsafe { Mmap::map(&file) }.map_err(io())?);
        }
        Ok(())
    }

    /// Writes dirty index pages back without waiting for the disk; used on clean shutdown so the
    /// next recovery finds a current index.
    pub fn flush(&self) -> Result<()> {
        if let Mapping::Writable(m) = &self.map {
            m.flush().map_err(StorageError::io(&self.path))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_greatest_entry_at_or_below() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = MmapIndex::<OffsetEntry>::open_writable(&path, 4096).unwrap();
        for i in 1..=100u32 {
            idx.push(OffsetEntry {
                relative_offset: i * 10,
                position: i * 1000,
            });
        }
        assert_eq!(idx.last_where(|e| e.relative_offset <= 5), None);
        for target in 10..=1010u32 {
            let e = idx.last_where(|e| e.relative_offset <= target).unwrap();
            assert_eq!(e.relative_offset, (target / 10).min(100) * 10);
        }
        idx.seal().unwrap();
        drop(idx);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 800);
        let idx = MmapIndex::<OffsetEntry>::open_read_only(&path).unwrap();
        assert_eq!(idx.len(), 100);
        assert_eq!(idx.last().unwrap().position, 100_000);
    }

    #[test]
    fn truncate_zeroes_stale_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.timeindex");
        let mut idx = MmapIndex::<TimeEntry>::open_writable(&path, 1200).unwrap();
        for i in 0..10 {
            idx.push(TimeEntry {
                timestamp: i,
                relative_offset: i as u32,
            });
        }
        idx.truncate(4);
        drop(idx);
        let idx = MmapIndex::<TimeEntry>::open_writable(&path, 1200).unwrap();
        // 100 slots are preallocated; the first four hold data, the rest are zero.
        assert_eq!(idx.len(), 100);
        assert_eq!(
            idx.valid_prefix(|p, e| p.is_none_or(|p| e.timestamp > p.timestamp)),
            4
        );
    }
}
