//! The free-space low-water mark of the data directory's file system.
//!
//! Below the mark, appends and topic creation are refused ([`StorageError::DiskLow`]) while
//! reads go on, so a full disk never takes the metadata store or a half-written segment with
//! it: there is room left to recover, compact and delete. The storage thread measures the free
//! space every tick; an append that meets a full disk anyway measures it at once.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::{Result, StorageError};

/// Default low-water mark: writes stop this far before the file system is full.
pub const DISK_FREE_BYTES_MIN_DEFAULT: u64 = 256 << 20;

/// Free bytes of the data directory's file system against the low-water mark.
#[derive(Debug)]
pub struct DiskSpace {
    dir: PathBuf,
    free_bytes_min: u64,
    free_bytes: AtomicU64,
    low: AtomicBool,
}

impl DiskSpace {
    /// Measures the file system of `dir` once.
    pub fn new(dir: &Path, free_bytes_min: u64) -> Result<DiskSpace> {
        let space = DiskSpace {
            dir: dir.to_path_buf(),
            free_bytes_min,
            free_bytes: AtomicU64::new(u64::MAX),
            low: AtomicBool::new(false),
        };
        space.measure()?;
        Ok(space)
    }

    /// Reads the free space again; returns whether writes may go on.
    pub fn measure(&self) -> Result<bool> {
        let stat = rustix::fs::statvfs(&self.dir).map_err(|e| StorageError::Io {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        let free = stat.f_bavail.saturating_mul(stat.f_frsize);
        self.free_bytes.store(free, Ordering::Relaxed);
        let low = free < self.free_bytes_min;
        let was_low = self.low.swap(low, Ordering::AcqRel);
        if low && !was_low {
            tracing::error!(
                dir = %self.dir.display(),
                free_bytes = free,
                free_bytes_min = self.free_bytes_min,
                "free disk space is below the low-water mark; writes are refused, reads go on"
            );
        } else if was_low && !low {
            tracing::info!(dir = %self.dir.display(), free_bytes = free, "free disk space is back above the low-water mark; writes resume");
        }
        Ok(!low)
    }

    /// `Err(DiskLow)` while free space is below the mark.
    pub fn check(&self) -> Result<()> {
        if self.low.load(Ordering::Acquire) {
            return Err(StorageError::DiskLow {
                free_bytes: self.free_bytes(),
                free_bytes_min: self.free_bytes_min,
            });
        }
        Ok(())
    }

    pub fn free_bytes(&self) -> u64 {
        self.free_bytes.load(Ordering::Relaxed)
    }

    pub fn free_bytes_min(&self) -> u64 {
        self.free_bytes_min
    }
}
