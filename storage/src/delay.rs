//! Delayed delivery: records that become visible in their topic only when due.
//!
//! A record asks for it with the header `weir-deliver-at` (epoch milliseconds or an RFC 3339
//! time) or `weir-delay-ms`; a topic asks for it for every record with `delivery.delay.ms`.
//!
//! - [`Delays::schedule`] appends such records to the delay log (`<data-dir>/delayed/records`,
//!   fsynced like any partition), each with two headers of its own: `weir.delay.due` (its due
//!   time) and `weir.delay.to` (`<partition>/<topic>`), and adds them to the due index.
//! - The due index is in memory: a record's due time, delay-log offset and target, about 40
//!   bytes a pending record. It is rebuilt on start by reading the delay log and leaving out
//!   what the delivered bitmaps mark.
//! - The delivered bitmaps (`<data-dir>/delayed/delivered/<segment base>.bits`) hold one bit
//!   per record of each delay-log segment, set once the record is in its partition (or dropped
//!   because the partition is gone). A segment below the lowest pending record is deleted with
//!   its bitmap.
//! - [`Delays::deliver_due`] takes the due records in order and appends them to their
//!   partitions (one batch per partition and round, in due-time order, each record at a new
//!   offset). Before appending it saves the round in the metadata store (key `round` of the
//!   tree `delayed`, flushed), and the last record of each batch carries the header
//!   `weir.delayed` = the delay-log offset of that record; after the appends it sets and
//!   fsyncs the records' bits. When the node starts after a crash between the two, each
//!   partition of the saved round is searched for its marker and the bits of the batches found
//!   are set, so every record is delivered once.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::batch::{Header, NewRecord, Record, in_batches};
use crate::config::{FlushPolicy, LogConfig, ms_i64};
use crate::error::{BatchError, Result, StorageError};
use crate::log::{Log, now_ms};
use crate::segment::sync_dir;
use crate::{BatchBuilder, Compression, locks};

/// Header naming when a record is due: epoch milliseconds or an RFC 3339 time.
pub const DELIVER_AT_HEADER: &str = "weir-deliver-at";
/// Header naming how many milliseconds after it arrives a record is due.
pub const DELAY_MS_HEADER: &str = "weir-delay-ms";
/// Header on the last record of each delivered batch: the delay-log offset of that record.
pub const DELIVERED_HEADER: &str = "weir.delayed";
/// Header the delay log keeps on each record: its due time, epoch milliseconds.
const DUE_HEADER: &str = "weir.delay.due";
/// Header the delay log keeps on each record: `<partition>/<topic>`.
const TARGET_HEADER: &str = "weir.delay.to";
/// Most records one delivery round appends; the rest wait for the next round.
pub const ROUND_RECORDS_MAX: usize = 10_000;
/// Largest batch the delay log takes; a record set a partition accepted always fits.
const DELAY_BATCH_BYTES_MAX: u64 = 64 << 20;
/// Most records in one batch of the delay log.
const DELAY_BATCH_RECORDS: usize = 32;

/// Whether a header key asks for delayed delivery.
pub fn is_delay_header(key: &[u8]) -> bool {
    key == DELIVER_AT_HEADER.as_bytes() || key == DELAY_MS_HEADER.as_bytes()
}

/// When a record produced at `now` is due: its last delay header, else the topic's
/// `delivery.delay.ms`. Refused when the header does not parse or asks for more than
/// `delivery.delay.max.ms` ahead.
pub fn due_time(headers: &[Header], config: &LogConfig, now: i64) -> Result<i64, BatchError> {
    let invalid = |reason: String| BatchError::Invalid { reason };
    let asked = headers
        .iter()
        .rev()
        .find(|h| is_delay_header(h.key.as_bytes()));
    let due = match asked {
        None => now.saturating_add(ms_i64(config.delivery_delay_ms)),
        Some(h) => {
            let text = h
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(str::trim)
                .unwrap_or_default();
            if h.key == DELAY_MS_HEADER {
                let ms = text.parse::<u64>().map_err(|_| {
                    invalid(format!(
                        "header {DELAY_MS_HEADER} = {text:?}: expected milliseconds, a \
                         non-negative integer"
                    ))
                })?;
                now.saturating_add(ms_i64(ms))
            } else {
                crate::log::parse_time_ms(text).ok_or_else(|| {
                    invalid(format!(
                        "header {DELIVER_AT_HEADER} = {text:?}: expected epoch milliseconds \
                             or an RFC 3339 time such as 2026-11-30T12:00:00Z"
                    ))
                })?
            }
        }
    };
    let ahead = due.saturating_sub(now);
    if ahead > ms_i64(config.delivery_delay_max_ms) {
        return Err(invalid(format!(
            "due in {ahead} ms, more than the topic's delivery.delay.max.ms ({})",
            config.delivery_delay_max_ms
        )));
    }
    Ok(due)
}

/// Where a delayed record goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Target {
    pub topic: String,
    pub partition: u32,
}

impl Target {
    fn encode(&self) -> String {
        format!("{}/{}", self.partition, self.topic)
    }

    fn decode(text: &[u8]) -> Option<Target> {
        let text = std::str::from_utf8(text).ok()?;
        let (partition, topic) = text.split_once('/')?;
        Some(Target {
            topic: topic.to_string(),
            partition: partition.parse().ok()?,
        })
    }
}

/// A pending record's place in the due index: due time first, so the index reads in due order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Due {
    at: i64,
    offset: u64,
}

/// The pending records, in due order, with their targets interned.
#[derive(Default)]
struct DueIndex {
    due: BTreeMap<Due, u32>,
    targets: Vec<Target>,
    target_ids: HashMap<Target, u32>,
}

impl DueIndex {
    fn insert(&mut self, due: Due, target: &Target) {
        let id = match self.target_ids.get(target) {
            Some(id) => *id,
            None => {
                let id = self.targets.len() as u32;
                self.targets.push(target.clone());
                self.target_ids.insert(target.clone(), id);
                id
            }
        };
        self.due.insert(due, id);
    }

    /// The records due at `now`, at most `max`, in due order.
    fn due_at(&self, now: i64, max: usize) -> Vec<(Due, Target)> {
        self.due
            .iter()
            .take_while(|(d, _)| d.at <= now)
            .take(max)
            .map(|(d, id)| (*d, self.targets[*id as usize].clone()))
            .collect()
    }

    fn lowest_offset(&self) -> Option<u64> {
        self.due.keys().map(|d| d.offset).min()
    }
}

/// Which records of the delay log are delivered: a bitmap per delay-log segment, in memory and
/// in `<dir>/<segment base>.bits`.
struct Delivered {
    dir: PathBuf,
    /// By segment base offset: the file and its bytes.
    maps: BTreeMap<u64, (File, Vec<u8>)>,
}

impl Delivered {
    fn open(dir: &Path) -> Result<Delivered> {
        std::fs::create_dir_all(dir).map_err(StorageError::io(dir))?;
        let mut maps = BTreeMap::new();
        for entry in std::fs::read_dir(dir).map_err(StorageError::io(dir))? {
            let path = entry.map_err(StorageError::io(dir))?.path();
            let base = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".bits"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(base) = base {
                let bytes = std::fs::read(&path).map_err(StorageError::io(&path))?;
                let file = open_bits(&path)?;
                maps.insert(base, (file, bytes));
            }
        }
        Ok(Delivered {
            dir: dir.to_path_buf(),
            maps,
        })
    }

    fn is_set(&self, bases: &[u64], offset: u64) -> bool {
        let Some(base) = segment_of(bases, offset) else {
            return false;
        };
        let bit = offset - base;
        self.maps
            .get(&base)
            .and_then(|(_, bytes)| bytes.get((bit / 8) as usize))
            .is_some_and(|byte| byte & (1 << (bit % 8)) != 0)
    }

    /// Sets the bits of `offsets` and writes and fsyncs the bytes it changed.
    fn set(&mut self, bases: &[u64], offsets: impl Iterator<Item = u64>) -> Result<()> {
        // By segment base: the first and last byte changed.
        let mut touched: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for offset in offsets {
            let Some(base) = segment_of(bases, offset) else {
                continue;
            };
            let (_, bytes) = match self.maps.entry(base) {
                std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::btree_map::Entry::Vacant(e) => {
                    let path = self.dir.join(format!("{base:020}.bits"));
                    e.insert((open_bits(&path)?, Vec::new()))
                }
            };
            let bit = offset - base;
            let at = (bit / 8) as usize;
            if bytes.len() <= at {
                bytes.resize(at + 1, 0);
            }
            bytes[at] |= 1 << (bit % 8);
            let range = touched.entry(base).or_insert((at, at));
            *range = (range.0.min(at), range.1.max(at));
        }
        for (base, (first, last)) in touched {
            if let Some((file, bytes)) = self.maps.get(&base) {
                let io = StorageError::io(&self.dir);
                file.write_all_at(&bytes[first..=last], first as u64)
                    .and_then(|()| file.sync_data())
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    /// Forgets the bitmaps of segments below `first_kept`.
    fn remove_below(&mut self, first_kept: u64) -> Result<()> {
        let gone: Vec<u64> = self.maps.range(..first_kept).map(|(b, _)| *b).collect();
        for base in &gone {
            self.maps.remove(base);
            let path = self.dir.join(format!("{base:020}.bits"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StorageError::Io { path, source }),
            }
        }
        if !gone.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn open_bits(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(StorageError::io(path))
}

/// The base of the segment holding `offset`, among `bases` in ascending order.
fn segment_of(bases: &[u64], offset: u64) -> Option<u64> {
    let i = bases.partition_point(|b| *b <= offset);
    i.checked_sub(1).map(|i| bases[i])
}

/// The key, in the tree `delayed`, of the round under way.
const ROUND_KEY: &str = "round";

/// One batch of a delivery round: where it goes, the target log's end before the round, the
/// marker its last record carries, and the records it delivers.
#[derive(Debug, Serialize, Deserialize)]
struct Delivery {
    target: Target,
    from: u64,
    marker: u64,
    records: Vec<Due>,
}

/// The batches of the delivery round under way, saved before the first is appended.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Round {
    deliveries: Vec<Delivery>,
}

/// Counters of delayed delivery, for `/metrics`.
#[derive(Debug, Default)]
pub struct DelayStats {
    /// Records waiting.
    pub pending: AtomicU64,
    pub scheduled: AtomicU64,
    pub delivered: AtomicU64,
    /// Records whose topic or partition was gone when they fell due.
    pub dropped: AtomicU64,
    /// How late, in milliseconds, the last delivered record was.
    pub last_lateness_ms: AtomicU64,
}

/// Pending records of one topic due in one minute, for `weir.delayed`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingMinute {
    pub topic: String,
    /// Start of the minute, epoch milliseconds.
    pub minute_ms: i64,
    pub records: u64,
    /// The earliest due time in the minute.
    pub next_due_ms: i64,
}

/// The delay log, its index and the deliverer's state.
pub struct Delays {
    log: Log,
    index: Mutex<DueIndex>,
    delivered: Mutex<Delivered>,
    rounds: crate::meta::Tree<Round>,
    /// Most records that may wait at once.
    pending_max: u64,
    /// Held while records are appended and indexed, and while the log is trimmed, so a
    /// trim never deletes records not indexed yet.
    writing: Mutex<()>,
    /// One delivery round at a time.
    delivering: Mutex<()>,
    stats: Arc<DelayStats>,
}

impl Delays {
    /// Opens the delay log and the delivered bitmaps under `dir`, and rebuilds the due index
    /// from them. A round a crash interrupted is finished by [`Delays::recover`].
    pub(crate) fn open(
        dir: &Path,
        meta: &crate::meta::MetaStore,
        pending_max: u64,
    ) -> Result<Delays> {
        let config = LogConfig {
            batch_bytes_max: DELAY_BATCH_BYTES_MAX,
            retention_ms: None,
            flush_policy: FlushPolicy::Always,
            ..LogConfig::default()
        };
        let records_dir = dir.join("records");
        std::fs::create_dir_all(&records_dir).map_err(StorageError::io(&records_dir))?;
        let log = Log::open(&records_dir, config)?;
        let delivered = Delivered::open(&dir.join("delivered"))?;
        let index = rebuild_index(&log, &delivered)?;
        let stats = DelayStats::default();
        stats
            .pending
            .store(index.due.len() as u64, Ordering::Relaxed);
        Ok(Delays {
            log,
            index: Mutex::new(index),
            delivered: Mutex::new(delivered),
            rounds: meta.tree("delayed")?,
            pending_max,
            writing: Mutex::new(()),
            delivering: Mutex::new(()),
            stats: Arc::new(stats),
        })
    }

    pub fn stats(&self) -> Arc<DelayStats> {
        self.stats.clone()
    }

    pub fn pending_max(&self) -> u64 {
        self.pending_max
    }

    /// Makes the records of a validated record set wait in the delay log, each until its due
    /// time; answers how many. Nothing is written when one is refused.
    pub(crate) fn schedule(
        &self,
        target: &Target,
        batches: &[u8],
        config: &LogConfig,
        now: i64,
    ) -> Result<u64> {
        let records = crate::batch::decode_records(&Bytes::copy_from_slice(batches))?;
        let mut due = Vec::with_capacity(records.len());
        for record in &records {
            due.push(due_time(&record.headers, config, now)?);
        }
        let count = records.len() as u64;
        let to = Bytes::from(target.encode());
        let new: Vec<NewRecord> = records
            .into_iter()
            .zip(&due)
            .map(|(r, at)| {
                let mut record = new_record(r);
                record.headers.push(Header {
                    key: DUE_HEADER.into(),
                    value: Some(Bytes::from(at.to_string())),
                });
                record.headers.push(Header {
                    key: TARGET_HEADER.into(),
                    value: Some(to.clone()),
                });
                record
            })
            .collect();
        // Small batches, so the deliverer decodes little besides the records it wants.
        let mut set = Vec::new();
        for run in in_batches(new, DELAY_BATCH_BYTES_MAX) {
            let mut run = run.into_iter().peekable();
            while run.peek().is_some() {
                let mut builder = BatchBuilder::new(Compression::None);
                run.by_ref()
                    .take(DELAY_BATCH_RECORDS)
                    .for_each(|r| builder.push(r));
                set.extend_from_slice(&builder.build()?);
            }
        }
        let _writing = locks::lock(&self.writing);
        let pending = self.stats.pending.load(Ordering::Relaxed);
        if pending + count > self.pending_max {
            return Err(StorageError::DelayedFull {
                pending,
                pending_max: self.pending_max,
            });
        }
        let base = self.log.append(&set)?.base_offset;
        let mut index = locks::lock(&self.index);
        for (&at, offset) in due.iter().zip(base..) {
            index.insert(Due { at, offset }, target);
        }
        self.stats.pending.fetch_add(count, Ordering::Relaxed);
        self.stats.scheduled.fetch_add(count, Ordering::Relaxed);
        Ok(count)
    }

    /// Appends the records due at `now` (at most [`ROUND_RECORDS_MAX`]) to their partitions;
    /// answers how many were delivered. `log_of` gives a target's log, or `None` when the
    /// topic or partition is gone (its records are dropped and counted).
    pub(crate) fn deliver_due(
        &self,
        now: i64,
        log_of: impl Fn(&Target) -> Option<Arc<Log>>,
    ) -> Result<usize> {
        let _delivering = locks::lock(&self.delivering);
        let due = locks::lock(&self.index).due_at(now, ROUND_RECORDS_MAX);
        if due.is_empty() {
            return Ok(0);
        }
        let mut by_target: BTreeMap<Target, Vec<Due>> = BTreeMap::new();
        for (d, t) in due {
            by_target.entry(t).or_default().push(d);
        }
        let mut records = self.records_at(by_target.values().flatten().map(|d| d.offset))?;
        let mut round = Round::default();
        // Per partition, its batches in due order.
        let mut batches: Vec<(Arc<Log>, Vec<Vec<u8>>)> = Vec::new();
        let mut gone: Vec<Due> = Vec::new();
        for (target, dues) in by_target {
            let Some(log) = log_of(&target) else {
                tracing::warn!(
                    topic = %target.topic,
                    partition = target.partition,
                    records = dues.len(),
                    "delayed records dropped: their partition no longer exists"
                );
                gone.extend(dues);
                continue;
            };
            let from = log.log_end_offset();
            let mut kept: Vec<Due> = Vec::with_capacity(dues.len());
            let mut new: Vec<NewRecord> = Vec::with_capacity(dues.len());
            for d in dues {
                match records.remove(&d.offset) {
                    Some(record) => {
                        kept.push(d);
                        new.push(delivered_record(record));
                    }
                    None => gone.push(d),
                }
            }
            let mut dues = kept.into_iter();
            let mut built = Vec::new();
            for run in in_batches(new, log.config().batch_bytes_max) {
                let run_dues: Vec<Due> = dues.by_ref().take(run.len()).collect();
                let marker = run_dues.last().map_or(0, |d| d.offset);
                let mut builder = BatchBuilder::new(Compression::None);
                let last = run.len() - 1;
                for (i, mut record) in run.into_iter().enumerate() {
                    if i == last {
                        record.headers.push(Header {
                            key: DELIVERED_HEADER.to_string(),
                            value: Some(Bytes::from(marker.to_string())),
                        });
                    }
                    builder.push(record);
                }
                built.push(builder.build()?.to_vec());
                round.deliveries.push(Delivery {
                    target: target.clone(),
                    from,
                    marker,
                    records: run_dues,
                });
            }
            batches.push((log, built));
        }
        self.save_round(&round)?;
        let counts: Vec<usize> = batches.iter().map(|(_, b)| b.len()).collect();
        // Partitions are written side by side, so a round costs one fsync, not one a partition.
        let appended: Vec<Vec<Result<()>>> = std::thread::scope(|scope| {
            let writers: Vec<_> = batches
                .into_iter()
                .map(|(log, batches)| scope.spawn(move || append_in_order(&log, batches)))
                .collect();
            writers
                .into_iter()
                .map(|w| w.join().unwrap_or_default())
                .collect()
        });
        let mut done: Vec<Due> = Vec::new();
        let mut failed = None;
        let mut deliveries = round.deliveries.iter();
        for (results, count) in appended.into_iter().zip(counts) {
            let target_deliveries: Vec<&Delivery> = deliveries.by_ref().take(count).collect();
            for (result, delivery) in results.into_iter().zip(target_deliveries) {
                match result {
                    Ok(()) => {
                        let lateness = now_ms().saturating_sub(delivery.records[0].at).max(0);
                        self.stats
                            .last_lateness_ms
                            .store(lateness as u64, Ordering::Relaxed);
                        done.extend(&delivery.records);
                    }
                    Err(e) => {
                        tracing::warn!(
                            topic = %delivery.target.topic,
                            partition = delivery.target.partition,
                            error = %e,
                            "delivering delayed records failed; they stay pending"
                        );
                        failed = Some(e);
                    }
                }
            }
        }
        let delivered = done.len();
        self.stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        self.stats
            .dropped
            .fetch_add(gone.len() as u64, Ordering::Relaxed);
        done.extend(gone);
        self.forget(&done, true)?;
        match failed {
            Some(e) if delivered == 0 => Err(e),
            _ => Ok(delivered),
        }
    }

    /// The records at `offsets` of the delay log, each read alone: records due together are
    /// seldom neighbours there.
    fn records_at(&self, offsets: impl Iterator<Item = u64>) -> Result<HashMap<u64, Record>> {
        let mut found = HashMap::new();
        for offset in offsets {
            match self.log.read_record(offset)? {
                Some(record) => {
                    found.insert(offset, record);
                }
                None => tracing::error!(offset, "a pending delayed record is missing"),
            }
        }
        Ok(found)
    }

    fn save_round(&self, round: &Round) -> Result<()> {
        self.rounds.insert(ROUND_KEY, round)
    }

    /// Marks delivered (or dropped) records: their bits set and fsynced, out of the index,
    /// and with `round_done` the saved round removed.
    fn forget(&self, records: &[Due], round_done: bool) -> Result<()> {
        let bases = self.log.segment_base_offsets();
        locks::lock(&self.delivered).set(&bases, records.iter().map(|d| d.offset))?;
        let mut index = locks::lock(&self.index);
        let mut removed = 0;
        for due in records {
            removed += u64::from(index.due.remove(due).is_some());
        }
        drop(index);
        self.stats.pending.fetch_sub(removed, Ordering::Relaxed);
        if round_done {
            // Not flushed: a round found again on start is searched for and marked again.
            self.rounds.remove_unflushed(ROUND_KEY)?;
        }
        Ok(())
    }

    /// Finishes the round a crash interrupted: the records of each batch whose marker is in
    /// its partition were delivered, and are marked so; the rest stay pending.
    pub(crate) fn recover(&self, log_of: impl Fn(&Target) -> Option<Arc<Log>>) -> Result<()> {
        let Some(round) = self.rounds.get(ROUND_KEY)? else {
            return Ok(());
        };
        let mut delivered: Vec<Due> = Vec::new();
        for d in round.deliveries {
            let landed = match log_of(&d.target) {
                Some(log) => {
                    log.holds_header(d.from, DELIVERED_HEADER, d.marker.to_string().as_bytes())?
                }
                None => false,
            };
            if landed {
                delivered.extend(d.records);
            }
        }
        tracing::info!(
            records = delivered.len(),
            "finished the delayed-delivery round a stop interrupted"
        );
        self.forget(&delivered, true)
    }

    /// Deletes the delay log's segments (and their bitmaps) below the lowest pending record.
    pub(crate) fn trim(&self) -> Result<()> {
        let _writing = locks::lock(&self.writing);
        let lowest = locks::lock(&self.index)
            .lowest_offset()
            .unwrap_or_else(|| self.log.log_end_offset());
        self.log.delete_segments_below(lowest)?;
        let first_kept = self.log.segment_base_offsets()[0];
        locks::lock(&self.delivered).remove_below(first_kept)
    }

    /// Pending records by topic and due minute, in due order within each topic.
    pub fn pending_by_minute(&self) -> Vec<PendingMinute> {
        let index = locks::lock(&self.index);
        let mut minutes: BTreeMap<(&str, i64), PendingMinute> = BTreeMap::new();
        for (due, id) in &index.due {
            let topic = index.targets[*id as usize].topic.as_str();
            let minute_ms = due.at - due.at.rem_euclid(60_000);
            let row = minutes
                .entry((topic, minute_ms))
                .or_insert_with(|| PendingMinute {
                    topic: topic.to_string(),
                    minute_ms,
                    records: 0,
                    next_due_ms: due.at,
                });
            row.records += 1;
            row.next_due_ms = row.next_due_ms.min(due.at);
        }
        minutes.into_values().collect()
    }

    pub(crate) fn close(&self) -> Result<()> {
        self.log.close()
    }
}

/// The due index of the records in `log` that `delivered` does not mark.
fn rebuild_index(log: &Log, delivered: &Delivered) -> Result<DueIndex> {
    /// Bytes read at a time.
    const READ_BYTES: u64 = 4 << 20;
    let bases = log.segment_base_offsets();
    let mut index = DueIndex::default();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let records = log.read_records(offset, READ_BYTES)?;
        let Some(last) = records.last() else { break };
        offset = last.offset as u64 + 1;
        for r in records {
            let offset = r.offset as u64;
            if delivered.is_set(&bases, offset) {
                continue;
            }
            let header = |key: &str| {
                r.headers
                    .iter()
                    .rev()
                    .find(|h| h.key == key)
                    .and_then(|h| h.value.clone())
            };
            let due =
                header(DUE_HEADER).and_then(|v| std::str::from_utf8(&v).ok()?.parse::<i64>().ok());
            let target = header(TARGET_HEADER).and_then(|v| Target::decode(&v));
            match (due, target) {
                (Some(at), Some(target)) => index.insert(Due { at, offset }, &target),
                _ => tracing::error!(offset, "a delayed record without its due time or target"),
            }
        }
    }
    Ok(index)
}

/// Appends a partition's batches of a round in order, stopping at the first that fails so no
/// record goes ahead of one due before it.
fn append_in_order(log: &Log, batches: Vec<Vec<u8>>) -> Vec<Result<()>> {
    let mut results = Vec::with_capacity(batches.len());
    for batch in batches {
        let result = log.append(&batch).map(drop);
        let failed = result.is_err();
        results.push(result);
        if failed {
            break;
        }
    }
    results
}

/// A produced record, to be written to the delay log as it came.
fn new_record(r: Record) -> NewRecord {
    NewRecord {
        timestamp: r.timestamp,
        key: r.key,
        value: r.value,
        headers: r.headers,
    }
}

/// A record read back from the delay log, to be written to its topic: without the delay log's
/// headers, and without its delay headers (they are served), so a copy of it produced
/// elsewhere is not delayed again.
fn delivered_record(r: Record) -> NewRecord {
    let mut record = new_record(r);
    record.headers.retain(|h| {
        !is_delay_header(h.key.as_bytes()) && h.key != DUE_HEADER && h.key != TARGET_HEADER
    });
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(key: &str, value: &str) -> Vec<Header> {
        vec![Header {
            key: key.into(),
            value: Some(Bytes::from(value.to_string())),
        }]
    }

    #[test]
    fn due_times_come_from_the_headers_or_the_topic() {
        let config = LogConfig {
            delivery_delay_ms: 500,
            delivery_delay_max_ms: 10_000,
            ..LogConfig::default()
        };
        let now = 1_000_000;
        assert_eq!(due_time(&[], &config, now).unwrap(), now + 500);
        let h = header(DELAY_MS_HEADER, "250");
        assert_eq!(due_time(&h, &config, now).unwrap(), now + 250);
        let h = header(DELIVER_AT_HEADER, "1002000");
        assert_eq!(due_time(&h, &config, now).unwrap(), 1_002_000);
        let h = header(DELIVER_AT_HEADER, "1970-01-01T00:16:41Z");
        assert_eq!(due_time(&h, &config, now).unwrap(), 1_001_000);
        for (k, v, says) in [
            (DELAY_MS_HEADER, "-1", "non-negative"),
            (DELAY_MS_HEADER, "soon", "expected milliseconds"),
            (DELIVER_AT_HEADER, "tomorrow", "RFC 3339"),
            (DELAY_MS_HEADER, "10001", "delivery.delay.max.ms (10000)"),
        ] {
            let err = due_time(&header(k, v), &config, now).unwrap_err();
            assert!(err.to_string().contains(says), "{k}={v}: {err}");
        }
    }

    use crate::batch::ProducerInfo;
    use crate::{Produced, Storage, StorageConfig};

    /// A batch of `values` due `delay_ms` after they arrive (no header when `None`).
    fn batch(values: &[&str], delay_ms: Option<u64>, producer: ProducerInfo) -> Vec<u8> {
        let mut builder = BatchBuilder::new(Compression::None).producer(producer);
        for v in values {
            builder.push(NewRecord {
                timestamp: 1,
                key: None,
                value: Some(Bytes::from(v.to_string())),
                headers: delay_ms
                    .map(|ms| header(DELAY_MS_HEADER, &ms.to_string()))
                    .unwrap_or_default(),
            });
        }
        builder.build().unwrap().to_vec()
    }

    fn values(storage: &Storage, topic: &str) -> Vec<String> {
        let log = storage.log(topic, 0).unwrap();
        log.read_records(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap()).into_owned())
            .collect()
    }

    fn deliver(storage: &Storage, at: i64) -> usize {
        storage
            .delays()
            .deliver_due(at, |t| storage.log(&t.topic, t.partition).ok())
            .unwrap()
    }

    #[test]
    fn an_idempotent_producer_goes_on_after_delayed_records_and_its_retries_wait_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        storage.create_topic("t", 1, BTreeMap::new()).unwrap();
        let producer = |base_sequence| ProducerInfo {
            producer_id: 7,
            producer_epoch: 0,
            base_sequence,
        };
        let delayed = batch(&["later-1", "later-2"], Some(0), producer(0));
        let first = storage.produce("t", 0, &delayed).unwrap();
        assert_eq!(first, Produced::Delayed { records: 2 });
        // The retry of the same batch is answered, and does not wait a second time.
        let retry = storage.produce("t", 0, &delayed).unwrap();
        assert_eq!(retry, Produced::Delayed { records: 0 });
        // The producer's next batch follows the delayed one's sequences.
        let next = storage.produce("t", 0, &batch(&["now"], None, producer(2)));
        assert!(matches!(next, Ok(Produced::Appended(_))), "{next:?}");
        let gap = storage.produce("t", 0, &batch(&["gap"], None, producer(9)));
        assert!(
            matches!(gap, Err(StorageError::OutOfOrderSequence { .. })),
            "{gap:?}"
        );
        assert_eq!(deliver(&storage, now_ms() + 10), 2);
        assert_eq!(values(&storage, "t"), ["now", "later-1", "later-2"]);
        assert_eq!(storage.delays().stats().pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_round_cut_short_by_a_crash_is_finished_once_on_start() {
        let dir = tempfile::tempdir().unwrap();
        let now = now_ms();
        {
            let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
            storage.create_topic("a", 1, BTreeMap::new()).unwrap();
            storage.create_topic("b", 1, BTreeMap::new()).unwrap();
            for (topic, v) in [("a", "a1"), ("b", "b1"), ("a", "a2")] {
                let set = batch(&[v], Some(0), ProducerInfo::NONE);
                storage.produce(topic, 0, &set).unwrap();
            }
            // A crash after the round was saved and partition a appended, before b was and
            // before the records were marked delivered: done by hand here.
            let delays = storage.delays();
            let mut round = Round::default();
            for (topic, records) in [("a", vec![0, 2]), ("b", vec![1])] {
                let dues: Vec<Due> = locks::lock(&delays.index)
                    .due
                    .keys()
                    .filter(|d| records.contains(&d.offset))
                    .copied()
                    .collect();
                round.deliveries.push(Delivery {
                    target: Target {
                        topic: topic.into(),
                        partition: 0,
                    },
                    from: 0,
                    marker: *records.last().unwrap(),
                    records: dues,
                });
            }
            delays.save_round(&round).unwrap();
            let mut builder = BatchBuilder::new(Compression::None);
            for (i, v) in ["a1", "a2"].iter().enumerate() {
                let mut r = NewRecord {
                    timestamp: now,
                    value: Some(Bytes::from(v.to_string())),
                    ..NewRecord::default()
                };
                if i == 1 {
                    r.headers = header(DELIVERED_HEADER, "2");
                }
                builder.push(r);
            }
            let log = storage.log("a", 0).unwrap();
            log.append(&builder.build().unwrap()).unwrap();
            storage.close().unwrap();
        }
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        assert_eq!(storage.delays().stats().pending.load(Ordering::Relaxed), 1);
        assert_eq!(deliver(&storage, now_ms() + 10), 1);
        assert_eq!(values(&storage, "a"), ["a1", "a2"]);
        assert_eq!(values(&storage, "b"), ["b1"]);
    }

    #[test]
    fn the_delay_log_is_trimmed_below_the_lowest_pending_record() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        storage.create_topic("t", 1, BTreeMap::new()).unwrap();
        let delays = storage.delays();
        let set = batch(&["early"], Some(0), ProducerInfo::NONE);
        storage.produce("t", 0, &set).unwrap();
        // Later records in later segments: the first can go once "early" is delivered.
        delays.log.set_config(LogConfig {
            segment_bytes: 1200,
            ..delays.log.config()
        });
        for i in 0..4 {
            let set = batch(
                &["x".repeat(1050).as_str()],
                Some(60_000 + i * 10_000),
                ProducerInfo::NONE,
            );
            storage.produce("t", 0, &set).unwrap();
        }
        delays.trim().unwrap();
        assert_eq!(delays.log.log_start_offset(), 0);
        assert_eq!(deliver(&storage, now_ms() + 10), 1);
        delays.trim().unwrap();
        assert!(delays.log.log_start_offset() > 0);
        let pending = |d: &Delays| -> u64 { d.pending_by_minute().iter().map(|m| m.records).sum() };
        assert_eq!(pending(delays), 4);
        let bitmaps = || {
            std::fs::read_dir(dir.path().join("delayed/delivered"))
                .unwrap()
                .count()
        };
        assert_eq!(
            bitmaps(),
            0,
            "the delivered record's segment went with its bitmap"
        );
        // Delivered one more, then opened again: the index is rebuilt without it.
        assert_eq!(deliver(&storage, now_ms() + 60_010), 1);
        assert_eq!(bitmaps(), 1);
        storage.close().unwrap();
        drop(storage);
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        assert_eq!(pending(storage.delays()), 3);
        // What is still pending is still readable.
        assert_eq!(deliver(&storage, now_ms() + 100_000), 3);
        assert_eq!(values(&storage, "t").len(), 5);
    }

    #[test]
    fn past_the_pending_limit_produce_is_refused_until_records_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig {
            delayed_records_max: 3,
            ..StorageConfig::new(dir.path())
        };
        let storage = Storage::open(config).unwrap();
        storage.create_topic("t", 1, BTreeMap::new()).unwrap();
        let two = || batch(&["1", "2"], Some(0), ProducerInfo::NONE);
        storage.produce("t", 0, &two()).unwrap();
        let refused = storage.produce("t", 0, &two()).unwrap_err();
        assert!(
            refused.to_string().contains("--delayed-records-max 3"),
            "{refused}"
        );
        assert_eq!(storage.delays().stats().pending.load(Ordering::Relaxed), 2);
        assert_eq!(deliver(&storage, now_ms() + 10), 2);
        storage.produce("t", 0, &two()).unwrap();
        assert_eq!(storage.delays().stats().pending.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn targets_and_segments_are_found_from_what_is_stored() {
        let t = Target {
            topic: "logs/with.dots".into(),
            partition: 3,
        };
        assert_eq!(Target::decode(t.encode().as_bytes()), Some(t));
        assert_eq!(Target::decode(b"x/logs"), None);
        let bases = [0, 100, 250];
        assert_eq!(segment_of(&bases, 0), Some(0));
        assert_eq!(segment_of(&bases, 99), Some(0));
        assert_eq!(segment_of(&bases, 100), Some(100));
        assert_eq!(segment_of(&bases, 1000), Some(250));
        assert_eq!(segment_of(&[10], 5), None);
    }
}
