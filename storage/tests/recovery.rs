//! Recovery and bad input: torn tails, damaged indexes, garbage in segments, empty segments,
//! missing directories, a full disk, and a seeded crash simulation.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use weir_storage::{
    BatchBuilder, Compression, FlushPolicy, Log, LogConfig, NewRecord, StorageError,
};

const T0: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 8192,
        index_interval_bytes: 512,
        index_bytes_max: 4096,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// One batch whose record values are `first..first+n` as text.
fn batch(first: u64, n: u64, compression: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for v in first..first + n {
        b.push(NewRecord {
            timestamp: T0 + v as i64,
            key: Some(Bytes::from(format!("key-{}", v % 17))),
            value: Some(Bytes::from(format!(
                "{v}:{}",
                "p".repeat((v % 50) as usize)
            ))),
            headers: Vec::new(),
        });
    }
    b.build().unwrap().to_vec()
}

/// Writes `records` records in batches of 1..=5 and returns the offset after the last.
fn fill(log: &Log, records: u64) -> u64 {
    let mut next = log.log_end_offset();
    let end = next + records;
    while next < end {
        let n = (1 + next % 5).min(end - next);
        let info = log.append(&batch(next, n, Compression::None)).unwrap();
        assert_eq!(info.base_offset, next);
        next = info.last_offset + 1;
    }
    next
}

/// Asserts the log holds exactly the records `0..end` with the values `fill` wrote.
fn assert_prefix(log: &Log, end: u64) {
    assert_eq!(log.high_watermark(), end);
    let mut offset = 0;
    while offset < end {
        let records = log.read_records(offset, 4096).unwrap();
        assert!(!records.is_empty(), "nothing read at {offset}");
        for r in records {
            assert_eq!(r.offset as u64, offset);
            let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
            assert_eq!(value.split(':').next().unwrap(), offset.to_string());
            offset += 1;
        }
    }
}

fn segment_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

#[test]
fn recovery_truncates_torn_tail_and_keeps_the_cut_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let end = fill(&log, 300);
    drop(log);
    let last = segment_files(dir.path(), ".log").pop().unwrap();
    let garbage = b"half a batch and then the power went";
    let mut bytes = std::fs::read(&last).unwrap();
    let good_len = bytes.len();
    bytes.extend_from_slice(garbage);
    std::fs::write(&last, &bytes).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_prefix(&log, end);
    assert_eq!(std::fs::metadata(&last).unwrap().len() as usize, good_len);
    let cut = segment_files(dir.path(), &format!(".log.cut-at-{good_len}"));
    assert_eq!(std::fs::read(&cut[0]).unwrap(), garbage);
    assert_eq!(fill(&log, 10), end + 10);
}

#[test]
fn recovery_drops_a_half_written_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    fill(&log, 100);
    let before_last = log.log_end_offset();
    log.append(&batch(before_last, 5, Compression::Lz4))
        .unwrap();
    drop(log);
    let last = segment_files(dir.path(), ".log").pop().unwrap();
    let len = std::fs::metadata(&last).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&last).unwrap();
    file.set_len(len - 7).unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    assert_prefix(&log, before_last);
}

#[test]
fn corrupt_or_missing_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let end = fill(&log, 600);
    log.close().unwrap();
    drop(log);
    let indexes = segment_files(dir.path(), ".index");
    let time_indexes = segment_files(dir.path(), ".timeindex");
    assert!(indexes.len() >= 4);
    // Garbage over a closed index, a truncated one, a deleted time index, and garbage over
    // the active segment's index.
    std::fs::write(&indexes[0], vec![0xAB; 64]).unwrap();
    std::fs::write(&indexes[1], vec![0x01; 13]).unwrap();
    std::fs::remove_file(&time_indexes[2]).unwrap();
    let active = indexes.last().unwrap();
    let mut bytes = std::fs::read(active).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().take(64) {
        *b = (i * 37) as u8;
    }
    std::fs::write(active, bytes).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    assert_prefix(&log, end);
    for offset in 0..end {
        assert_eq!(
            log.read_records(offset, 1).unwrap()[0].offset as u64,
            offset
        );
    }
    assert_eq!(
        log.offset_for_timestamp(T0 + 250).unwrap(),
        Some((250, T0 + 250))
    );
}

#[test]
fn garbage_in_a_closed_segment_is_a_typed_error_on_read_and_the_rest_serves() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let end = fill(&log, 600);
    log.close().unwrap();
    drop(log);
    let first = &segment_files(dir.path(), ".log")[0];
    let mut bytes = std::fs::read(first).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 40] {
        *b ^= 0x5A;
    }
    std::fs::write(first, bytes).unwrap();

    let log = Log::open(dir.path(), config()).unwrap();
    let mut errors = 0;
    let mut readable = 0;
    for offset in 0..end {
        match log.read_records(offset, 1) {
            Ok(records) => {
                assert_eq!(records[0].offset as u64, offset);
                readable += 1;
            }
            Err(StorageError::Corrupt { path, .. }) => {
                assert_eq!(&path, first);
                errors += 1;
            }
            Err(e) => panic!("unexpected error at {offset}: {e}"),
        }
    }
    assert!(
        errors > 0 && readable > end as usize / 2,
        "{errors} errors, {readable} readable"
    );
    // Appends go on.
    assert_eq!(fill(&log, 5), end + 5);
}

/// The bytes of the batches a read of up to `bytes_max` bytes from `offset` returns, mapped
/// as a fetch sends them.
fn fetch(log: &Log, offset: u64, bytes_max: u64) -> Result<Bytes, StorageError> {
    log.read(offset, bytes_max)?.slice.unwrap().map()
}

/// Flips the last byte of the batch holding `offset` in the segment file `file`, in place:
/// its header stays whole, so reads still find the batch, but its CRC no longer matches.
fn damage(log: &Log, file: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let slice = log.read(offset, 1).unwrap().slice.unwrap();
    let at = slice.position() + slice.len() - 1;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut byte = [0u8];
    f.read_exact_at(&mut byte, at).unwrap();
    f.write_all_at(&[byte[0] ^ 0xFF], at).unwrap();
}

#[test]
fn a_batch_is_checked_once_when_appended_or_on_its_first_read_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    fill(&log, 600);
    let files = segment_files(dir.path(), ".log");
    assert!(files.len() >= 3, "{} segments", files.len());
    let base =
        |file: &Path| -> u64 { file.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let second = base(&files[1]);

    // Checked on the way in, so a fetch does not read it again: damage done on disk since is
    // for the clients' CRC checks, and for the node's next start, to find.
    damage(&log, &files[0], 0);
    assert!(fetch(&log, 0, 1).is_ok());
    log.close().unwrap();
    drop(log);

    let log = Log::open(dir.path(), config()).unwrap();
    // Opened from disk: the first read checks, finds the damage, and checks again next time.
    for _ in 0..2 {
        match fetch(&log, 0, 1) {
            Err(StorageError::Corrupt { path, position, .. }) => {
                assert_eq!(path, files[0]);
                assert_eq!(position, 0);
            }
            other => panic!("damage not found: {other:?}"),
        }
    }
    // A segment read whole once is not checked again.
    let whole = fetch(&log, second, 1 << 20).unwrap();
    damage(&log, &files[1], second);
    assert_eq!(fetch(&log, second, 1 << 20).unwrap().len(), whole.len());
    // What no read has covered yet still is.
    let third = base(&files[2]);
    damage(&log, &files[2], third);
    assert!(matches!(
        fetch(&log, third, 1),
        Err(StorageError::Corrupt { .. })
    ));
}

#[test]
fn garbage_in_the_active_segment_is_cut_and_saved() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let end = fill(&log, 200);
    drop(log);
    let file = segment_files(dir.path(), ".log").pop().unwrap();
    let original = std::fs::read(&file).unwrap();
    let mut bytes = original.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xFF;
    std::fs::write(&file, &bytes).unwrap();

    let log = Log::open(dir.path(), LogConfig::default()).unwrap();
    let kept = log.high_watermark();
    assert!(kept > 0 && kept < end);
    assert_prefix(&log, kept);
    // The bytes cut are kept beside the segment, so nothing is destroyed.
    let kept_len = std::fs::metadata(&file).unwrap().len() as usize;
    let cut = segment_files(dir.path(), &format!(".log.cut-at-{kept_len}"));
    assert_eq!(std::fs::read(&cut[0]).unwrap(), bytes[kept_len..]);
}

#[test]
fn zero_length_segment_opens_as_empty() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), config()).unwrap();
    let end = fill(&log, 50);
    log.close().unwrap();
    drop(log);
    // A crash right after a roll: an empty segment with empty indexes.
    let base = format!("{end:020}");
    for suffix in ["log", "index", "timeindex"] {
        std::fs::write(dir.path().join(format!("{base}.{suffix}")), b"").unwrap();
    }
    let log = Log::open(dir.path(), config()).unwrap();
    assert_prefix(&log, end);
    assert_eq!(fill(&log, 20), end + 20);
    drop(log);
    let log = Log::open(dir.path(), config()).unwrap();
    assert_prefix(&log, end + 20);
}

#[test]
fn missing_directory_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("gone-0");
    let err = Log::open(&missing, config()).unwrap_err();
    assert!(
        matches!(err, StorageError::MissingDirectory { ref path } if *path == missing),
        "{err}"
    );

    // The directory vanishing under an open log: appends fail at the next roll, typed.
    let inner = dir.path().join("logs-0");
    std::fs::create_dir(&inner).unwrap();
    let log = Log::open(&inner, config()).unwrap();
    fill(&log, 10);
    std::fs::remove_dir_all(&inner).unwrap();
    let mut failed = None;
    for i in 0..200 {
        if let Err(e) = log.append(&batch(1000 + i, 5, Compression::None)) {
            failed = Some(e);
            break;
        }
    }
    let err = failed.expect("appends kept succeeding without a directory");
    assert!(matches!(err, StorageError::Io { .. }), "{err}");
}

/// A small tmpfs mounted for the test, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(bytes: u64) -> Result<SmallDisk, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("mount exited with {status}"));
        }
        Ok(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn full_disk_refuses_appends_without_losing_acked_data() {
    let disk = match SmallDisk::mount(512 * 1024) {
        Ok(d) => d,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("full-disk test needs root to mount a tmpfs ({e}); run the suite as root");
            return;
        }
        Err(e) => panic!("cannot mount a small tmpfs for the full-disk test: {e}"),
    };
    let dir = disk.dir.path().join("logs-0");
    std::fs::create_dir(&dir).unwrap();
    let cfg = LogConfig {
        segment_bytes: 64 * 1024,
        index_bytes_max: 8192,
        ..config()
    };
    let log = Log::open(&dir, cfg.clone()).unwrap();
    let mut acked = 0u64;
    let err = loop {
        match log.append(&batch(acked, 10, Compression::None)) {
            Ok(info) => acked = info.last_offset + 1,
            Err(e) => break e,
        }
        assert!(acked < 1_000_000, "a 512 KiB disk never filled up");
    };
    assert!(err.is_disk_full(), "expected a disk-full error, got {err}");
    assert!(acked > 1000);
    // The broker keeps serving reads.
    assert_prefix(&log, acked);
    // Still full: still a clean error, still nothing half-written.
    assert!(
        log.append(&batch(acked, 10, Compression::None))
            .unwrap_err()
            .is_disk_full()
    );
    drop(log);

    let log = Log::open(&dir, cfg.clone()).unwrap();
    assert_prefix(&log, acked);
    // Space comes back (an operator deletes something): appends work again.
    let closed = segment_files(&dir, ".log");
    let _ = log.enforce_retention(i64::MAX);
    drop(log);
    let mut cfg_small = cfg;
    cfg_small.retention_bytes = Some(64 * 1024);
    let log = Log::open(&dir, cfg_small).unwrap();
    log.enforce_retention(T0).unwrap();
    assert!(segment_files(&dir, ".log").len() < closed.len());
    let next = log.append(&batch(acked, 10, Compression::None)).unwrap();
    assert_eq!(next.base_offset, acked);
}

/// What one crash scenario did: the work a run must show so that an empty history cannot pass.
#[derive(Default)]
struct Work {
    appends: u64,
    flushes: u64,
    /// Records checked in the reopened logs, over every life.
    recovered: u64,
}

/// One crash scenario: appends with flushes at random points, then the files are damaged the
/// way a crash can damage them (unsynced tail lost, torn or garbled; index pages lost), then
/// the log is reopened.
fn crash_scenario(seed: u64) -> Work {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_bytes: rng.random_range(2048..16384),
        index_interval_bytes: rng.random_range(0..1024),
        index_bytes_max: 4096,
        flush_policy: FlushPolicy::Interval { ms: u64::MAX / 4 },
        ..config()
    };
    let mut acked = 0u64;
    let mut work = Work::default();
    for _life in 0..rng.random_range(1..4) {
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        assert!(
            log.log_end_offset() >= acked,
            "seed {seed}: acked data lost on reopen"
        );
        let mut written = log.log_end_offset();
        // Opening fsyncs what recovery kept.
        let at_open = segment_files(dir.path(), ".log").pop().unwrap();
        let len = std::fs::metadata(&at_open).unwrap().len();
        let mut synced_len = (at_open.to_string_lossy().into_owned(), len);
        for _ in 0..rng.random_range(10..120) {
            let n = rng.random_range(1..8);
            let codec =
                [Compression::None, Compression::Snappy, Compression::Zstd][rng.random_range(0..3)];
            let info = log.append(&batch(written, n, codec)).unwrap();
            written = info.last_offset + 1;
            work.appends += 1;
            if rng.random_bool(0.2) {
                log.flush().unwrap();
                acked = written;
                work.flushes += 1;
                let last = segment_files(dir.path(), ".log").pop().unwrap();
                let len = std::fs::metadata(&last).unwrap().len();
                synced_len = (last.to_string_lossy().into_owned(), len);
            }
        }
        drop(log);
        // A roll fsyncs the segment it closes: everything before the last segment is durable.
        let last = segment_files(dir.path(), ".log").pop().unwrap();
        let base: u64 = last.file_stem().unwrap().to_string_lossy().parse().unwrap();
        acked = acked.max(base);
        let synced = if synced_len.0 == last.to_string_lossy() {
            synced_len.1
        } else {
            0
        };
        damage_unsynced(&mut rng, &last, synced);
        for suffix in [".index", ".timeindex"] {
            let index = last.with_extension(&suffix[1..]);
            damage_index(&mut rng, &index);
        }
        if rng.random_bool(0.2) {
            let _ = std::fs::remove_file(dir.path().join("recovery-point"));
        }
        let log = Log::open(dir.path(), cfg.clone()).unwrap();
        let end = log.log_end_offset();
        assert!(
            end >= acked,
            "seed {seed}: acked up to {acked}, recovered up to {end}"
        );
        assert!(
            end <= written,
            "seed {seed}: recovered {end} past written {written}"
        );
        assert_prefix(&log, end);
        work.recovered += end;
        acked = end;
    }
    assert!(work.appends >= 10, "seed {seed}: {} appends", work.appends);
    work
}

fn damage_unsynced(rng: &mut StdRng, file: &Path, synced: u64) {
    let mut bytes = std::fs::read(file).unwrap();
    let len = bytes.len() as u64;
    match rng.random_range(0..5) {
        0 => {} // page cache made it
        1 => bytes.truncate(rng.random_range(synced..=len) as usize),
        2 => {
            // Garbage after the unsynced part.
            let extra: Vec<u8> = (0..rng.random_range(1..300))
                .map(|_| rng.random())
                .collect();
            bytes.extend(extra);
        }
        3 if len > synced => {
            // Garbled unsynced bytes.
            for _ in 0..rng.random_range(1..10) {
                let at = rng.random_range(synced..len) as usize;
                bytes[at] = rng.random();
            }
        }
        _ => {
            // Unsynced tail lost, zeros where the file was extended.
            let cut = rng.random_range(synced..=len) as usize;
            for b in &mut bytes[cut..] {
                *b = 0;
            }
        }
    }
    std::fs::write(file, bytes).unwrap();
}

fn damage_index(rng: &mut StdRng, file: &Path) {
    let Ok(mut bytes) = std::fs::read(file) else {
        return;
    };
    match rng.random_range(0..4) {
        0 => {}
        1 => {
            // A page of the index never reached the disk.
            let pages = bytes.len().div_ceil(4096).max(1);
            let page = rng.random_range(0..pages) * 4096;
            let end = (page + 4096).min(bytes.len());
            bytes[page.min(end)..end].fill(0);
        }
        2 => bytes.truncate(rng.random_range(0..=bytes.len())),
        _ => {
            let _ = std::fs::remove_file(file);
            return;
        }
    }
    std::fs::write(file, bytes).unwrap();
}

#[test]
fn crash_simulation_keeps_exactly_a_prefix_with_every_acked_record() {
    let seeds: u64 = std::env::var("WEIR_CRASH_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let first: u64 = std::env::var("WEIR_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xC0FFEE);
    let mut total = Work::default();
    for seed in first..first + seeds {
        let Ok(work) = std::panic::catch_unwind(|| crash_scenario(seed)) else {
            panic!("crash scenario failed; rerun with WEIR_CRASH_SEED={seed} WEIR_CRASH_SEEDS=1");
        };
        total.appends += work.appends;
        total.flushes += work.flushes;
        total.recovered += work.recovered;
    }
    // Each scenario appends 10 to 120 batches a life and flushes a fifth of the time: a run
    // that checked less than this did not simulate much.
    assert!(
        total.appends >= 10 * seeds && total.flushes >= seeds / 2 && total.recovered >= 10 * seeds,
        "{seeds} scenarios did too little: {} appends, {} flushes, {} records recovered",
        total.appends,
        total.flushes,
        total.recovered
    );
}
