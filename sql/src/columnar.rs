//! Columnar copies of closed segments (`docs/columnar-segments.md`): a Parquet file next to a
//! segment of a topic with a value schema, holding the rows a scan of that segment gives, with
//! what it copies in its metadata so a reader can tell a current copy from a stale one.

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{FileMetaData, KeyValue};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use weir_storage::{Storage, TopicMeta, locks};

use crate::Error;
use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::datatypes::TimestampMillisecondType;
use datafusion::arrow::error::ArrowError;

use crate::topic::columns::{RecordColumn, RowBuilder, topic_schema, typed_columns};

/// Rows of a copy's row group: the unit its statistics prune.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Bytes of records read from the log at a time while copying.
const READ_BYTES: u64 = 1 << 20;
/// Rows of one Arrow batch handed to the writer.
const BATCH_ROWS: usize = 8192;

/// What a copy holds, from its metadata: offsets `[base, end)` of its segment, the records it
/// has, the size of the segment file it was made from (compaction rewrites a segment smaller,
/// which makes its copy stale), and the value schema its typed columns follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyInfo {
    pub base: u64,
    pub end: u64,
    pub records: u64,
    pub segment_bytes: u64,
    pub value_schema: String,
}

/// Where the copy of the segment at `base` of the partition in `dir` lives.
pub fn copy_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.parquet"))
}

fn io_error(path: &Path, error: std::io::Error) -> Error {
    Error::Columnar(format!("{}: {error}", path.display()))
}

fn parquet_error(error: parquet::errors::ParquetError) -> Error {
    Error::Columnar(error.to_string())
}

/// The value schema a topic's typed columns follow, as a copy records it.
pub fn value_schema(meta: &TopicMeta) -> String {
    meta.configs
        .get("value.schema")
        .cloned()
        .unwrap_or_default()
}

/// Writes the copy of `partition`'s records at offsets `[base, end)` (a closed segment), whole
/// or not at all: to a temporary file, synced, then renamed over the copy's path.
pub fn write_copy(
    storage: &Storage,
    meta: &TopicMeta,
    partition: u32,
    base: u64,
    end: u64,
) -> Result<CopyInfo, Error> {
    let log = storage.log(&meta.name, partition)?;
    let typed = typed_columns(meta)?;
    let schema = Arc::new(topic_schema(&typed));
    let rows = RowBuilder::new(schema.clone(), (0..schema.fields().len()).collect(), typed);
    let path = copy_path(log.dir(), base);
    let segment = log.segment_file(base);
    let segment_bytes = std::fs::metadata(&segment)
        .map_err(|e| io_error(&segment, e))?
        .len();
    let tmp = path.with_extension("parquet.tmp");
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    let writer = ArrowWriter::try_new(file, schema, Some(properties)).map_err(parquet_error);
    let written = writer
        .and_then(|writer| write_rows(writer, &log, &rows, (partition, base, end)))
        .and_then(|(writer, records)| {
            let info = CopyInfo {
                base,
                end,
                records,
                segment_bytes,
                value_schema: value_schema(meta),
            };
            finish(writer, &tmp, &info)?;
            Ok(info)
        });
    let info = match written {
        Ok(info) => info,
        Err(error) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(error);
        }
    };
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
    File::open(log.dir())
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error(log.dir(), e))?;
    Ok(info)
}

/// Writes the rows at offsets `[base, end)` of `partition`'s `log` with `writer`; answers it, to
/// be finished, and the rows written.
fn write_rows(
    mut writer: ArrowWriter<File>,
    log: &weir_storage::Log,
    rows: &RowBuilder,
    (partition, base, end): (u32, u64, u64),
) -> Result<(ArrowWriter<File>, u64), Error> {
    let mut offset = base;
    let mut records = 0u64;
    let mut pending = Vec::new();
    while offset < end {
        let read = log.read_records(offset, READ_BYTES)?;
        let Some(last) = read.last() else { break };
        offset = u64::try_from(last.offset).unwrap_or(0).saturating_add(1);
        pending.extend(
            read.into_iter()
                .filter(|r| u64::try_from(r.offset).is_ok_and(|o| o >= base && o < end)),
        );
        while pending.len() >= BATCH_ROWS || (offset >= end && !pending.is_empty()) {
            let take = pending.len().min(BATCH_ROWS);
            let batch: Vec<_> = pending.drain(..take).collect();
            records += batch.len() as u64;
            writer
                .write(&rows.build(i64::from(partition), &batch)?)
                .map_err(parquet_error)?;
        }
    }
    Ok((writer, records))
}

/// Ends the copy `writer` holds with what it copies in its metadata, synced to `tmp`.
fn finish(mut writer: ArrowWriter<File>, tmp: &Path, info: &CopyInfo) -> Result<(), Error> {
    for (key, value) in [
        ("weir.base_offset", info.base.to_string()),
        ("weir.end_offset", info.end.to_string()),
        ("weir.records", info.records.to_string()),
        ("weir.segment_bytes", info.segment_bytes.to_string()),
        ("weir.value_schema", info.value_schema.clone()),
    ] {
        writer.append_key_value_metadata(KeyValue::new(key.to_owned(), value));
    }
    let mut file = writer.into_inner().map_err(parquet_error)?;
    file.flush().map_err(|e| io_error(tmp, e))?;
    file.sync_all().map_err(|e| io_error(tmp, e))
}

/// A reader of the rows at offsets `[start, stop)` of the segment `[base, end)` of `log` from
/// its copy with timestamps within `timestamp_ms` (inclusive), the table's columns `projection`
/// (indexes into the topic schema, any order) as `projected`; `None` when there is no copy that
/// holds exactly that segment under `value_schema` with one row per offset (a compacted
/// segment has gaps and is read from the log). Row groups whose timestamp statistics miss the
/// bounds are not read.
pub(crate) fn open_rows(
    log: &weir_storage::Log,
    (base, end): (u64, u64),
    (start, stop): (u64, u64),
    timestamp_ms: (i64, i64),
    value_schema: &str,
    (projection, projected): (&[usize], &datafusion::arrow::datatypes::SchemaRef),
    batch_rows: usize,
) -> Result<Option<CopyRows>, Error> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::{
        ArrowPredicateFn, ParquetRecordBatchReaderBuilder, RowFilter, RowSelection, RowSelector,
    };
    if start < base || stop > end || start >= stop {
        return Ok(None);
    }
    let path = copy_path(log.dir(), base);
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&path, e)),
    };
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet_error)?;
    let info = info_of(builder.metadata().file_metadata(), &path)?;
    // One row per offset: a compacted segment has gaps and is read from the log.
    if !copies(&info, log, (base, end), value_schema) || info.records != end - base {
        return Ok(None);
    }
    let mut sorted = projection.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mask = ProjectionMask::roots(builder.parquet_schema(), sorted.iter().copied());
    let mut selection = RowSelection::from(vec![
        RowSelector::skip((start - base) as usize),
        RowSelector::select((stop - start) as usize),
    ]);
    if timestamp_ms != (i64::MIN, i64::MAX) {
        let column = builder
            .schema()
            .index_of(RecordColumn::Timestamp.name())
            .map_err(|e| Error::Columnar(format!("{}: {e}", path.display())))?;
        selection =
            selection.intersection(&row_groups_within(builder.metadata(), column, timestamp_ms));
        let (low, high) = timestamp_ms;
        let within = ArrowPredicateFn::new(
            ProjectionMask::roots(builder.parquet_schema(), [column]),
            move |batch| {
                let times = batch
                    .column(0)
                    .as_primitive_opt::<TimestampMillisecondType>()
                    .ok_or_else(|| ArrowError::SchemaError("timestamp is not in ms".into()))?;
                Ok(times
                    .iter()
                    .map(|t| Some(t.is_some_and(|t| (low..=high).contains(&t))))
                    .collect::<BooleanArray>())
            },
        );
        builder = builder.with_row_filter(RowFilter::new(vec![Box::new(within)]));
    }
    let reader = builder
        .with_projection(mask)
        .with_row_selection(selection)
        .with_batch_size(batch_rows)
        .build()
        .map_err(parquet_error)?;
    // Columns come in the file's order; the scan wants the projection's.
    let order = projection
        .iter()
        .map(|index| sorted.binary_search(index).unwrap_or(0))
        .collect();
    Ok(Some(CopyRows {
        reader,
        order,
        projected: projected.clone(),
        stop,
    }))
}

/// The rows of the row groups whose statistics of `column` (timestamps) may hold a time within
/// `[low, high]`; a group without statistics is kept.
fn row_groups_within(
    metadata: &parquet::file::metadata::ParquetMetaData,
    column: usize,
    (low, high): (i64, i64),
) -> parquet::arrow::arrow_reader::RowSelection {
    use parquet::arrow::arrow_reader::RowSelector;
    use parquet::file::statistics::Statistics;
    let selectors: Vec<RowSelector> = metadata
        .row_groups()
        .iter()
        .map(|group| {
            let rows = usize::try_from(group.num_rows()).unwrap_or(0);
            let outside = match group.column(column).statistics() {
                Some(Statistics::Int64(s)) => {
                    s.max_opt().is_some_and(|max| *max < low)
                        || s.min_opt().is_some_and(|min| *min > high)
                }
                _ => false,
            };
            if outside {
                RowSelector::skip(rows)
            } else {
                RowSelector::select(rows)
            }
        })
        .collect();
    selectors.into()
}

/// Rows read from a copy, in the scan's column order.
pub(crate) struct CopyRows {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    order: Vec<usize>,
    projected: datafusion::arrow::datatypes::SchemaRef,
    /// The offset after the last row it reads.
    pub(crate) stop: u64,
}

impl CopyRows {
    /// The next batch of rows, `None` once they are all read.
    pub(crate) fn next_batch(
        &mut self,
    ) -> Result<Option<datafusion::arrow::record_batch::RecordBatch>, Error> {
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| Error::Columnar(e.to_string()))?;
        let columns = self
            .order
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let options = datafusion::arrow::record_batch::RecordBatchOptions::new()
            .with_row_count(Some(batch.num_rows()));
        datafusion::arrow::record_batch::RecordBatch::try_new_with_options(
            self.projected.clone(),
            columns,
            &options,
        )
        .map(Some)
        .map_err(|e| Error::Columnar(e.to_string()))
    }
}

/// Whether closed segments of the topic get copies: it has a value schema and
/// `columnar.enabled` is not `false`.
pub fn enabled(meta: &TopicMeta) -> bool {
    !value_schema(meta).is_empty()
        && meta
            .configs
            .get("columnar.enabled")
            .is_none_or(|v| v != "false")
}

/// Whether the copy at `path` is current for the segment `[base, end)` of `log` under
/// `value_schema`.
fn is_current(
    log: &weir_storage::Log,
    path: &Path,
    segment: (u64, u64),
    value_schema: &str,
) -> bool {
    read_info(path).is_ok_and(|info| copies(&info, log, segment, value_schema))
}

/// Whether `info` describes a copy of the segment `[base, end)` of `log` as it is now, under
/// `value_schema`.
fn copies(
    info: &CopyInfo,
    log: &weir_storage::Log,
    (base, end): (u64, u64),
    value_schema: &str,
) -> bool {
    let segment_bytes = std::fs::metadata(log.segment_file(base)).map(|m| m.len());
    info.base == base
        && info.end == end
        && segment_bytes.is_ok_and(|bytes| bytes == info.segment_bytes)
        && info.value_schema == value_schema
}

/// What the builder did and found, for the node's metrics: copies written and failed since
/// start; after the last pass, the copies on disk and their bytes, the closed segments still
/// without a current copy, and whether builds wait for free disk space.
#[derive(Debug, Default)]
pub struct BuilderStats {
    builds: AtomicU64,
    failures: AtomicU64,
    files: AtomicU64,
    bytes: AtomicU64,
    waiting: AtomicU64,
    disk_short: AtomicBool,
    /// Segments whose copy failed, by topic, partition, base and size: read from the log and
    /// not tried again until the segment changes or the node restarts; forgotten once the
    /// segment is gone.
    failed: Mutex<HashSet<(String, u32, u64, u64)>>,
}

/// A reading of [`BuilderStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuilderSnapshot {
    pub builds: u64,
    pub failures: u64,
    pub files: u64,
    pub bytes: u64,
    pub waiting: u64,
    pub disk_short: bool,
}

impl BuilderStats {
    pub fn snapshot(&self) -> BuilderSnapshot {
        BuilderSnapshot {
            builds: self.builds.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            files: self.files.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            disk_short: self.disk_short.load(Ordering::Relaxed),
        }
    }
}

/// One pass of the builder: for every partition of every topic with copies enabled, writes
/// the copy of each closed segment that has none or a stale one, at most `builds_max` of them,
/// newest segments first; removes copies (and unfinished `.parquet.tmp` files) whose segment is
/// gone or whose topic no longer wants copies. A copy is not started unless the disk keeps its
/// low-water mark with the segment's size to spare; a copy that fails is logged, counted and
/// not tried again. Answers the copies written.
pub fn build_missing(
    storage: &Storage,
    builds_max: usize,
    stats: &BuilderStats,
) -> Result<usize, Error> {
    let (mut built, mut files, mut bytes, mut waiting) = (0, 0, 0, 0);
    let mut disk_short = false;
    // Failed segments still there, so the list forgets the ones that are gone.
    let mut looked = HashSet::new();
    for meta in storage.list_topics()? {
        let wanted = enabled(&meta);
        let schema = value_schema(&meta);
        for partition in 0..meta.partitions {
            let log = storage.log(&meta.name, partition)?;
            let bases = log.segment_base_offsets();
            let kept = remove_orphans(&log, if wanted { &bases } else { &[] })?;
            files += kept.len() as u64;
            bytes += kept.iter().map(|(_, size)| size).sum::<u64>();
            if !wanted {
                continue;
            }
            for pair in bases.windows(2).rev() {
                let (base, end) = (pair[0], pair[1]);
                let path = copy_path(log.dir(), base);
                if is_current(&log, &path, (base, end), &schema) {
                    continue;
                }
                let segment_bytes =
                    std::fs::metadata(log.segment_file(base)).map_or(0, |m| m.len());
                let key = (meta.name.clone(), partition, base, segment_bytes);
                if locks::lock(&stats.failed).contains(&key) {
                    looked.insert(key);
                    continue;
                }
                let space = storage.space();
                if space.free_bytes() < space.free_bytes_min().saturating_add(segment_bytes) {
                    disk_short = true;
                }
                if built >= builds_max || disk_short {
                    waiting += 1;
                    continue;
                }
                let replaced = kept.iter().find(|(b, _)| *b == base).map_or(0, |(_, s)| *s);
                match write_copy(storage, &meta, partition, base, end) {
                    Ok(_) => {
                        built += 1;
                        stats.builds.fetch_add(1, Ordering::Relaxed);
                        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                        files += u64::from(replaced == 0);
                        bytes = bytes - replaced + size;
                    }
                    Err(error) => {
                        tracing::warn!(topic = %meta.name, partition, base, %error, "columnar copy failed; the segment is read from the log");
                        stats.failures.fetch_add(1, Ordering::Relaxed);
                        looked.insert(key.clone());
                        locks::lock(&stats.failed).insert(key);
                    }
                }
            }
        }
    }
    if disk_short != stats.disk_short.swap(disk_short, Ordering::Relaxed) {
        if disk_short {
            tracing::warn!(
                "columnar copies wait: free disk space is too close to its low-water mark"
            );
        } else {
            tracing::info!("columnar copies resume: free disk space is back");
        }
    }
    locks::lock(&stats.failed).retain(|key| looked.contains(key));
    stats.files.store(files, Ordering::Relaxed);
    stats.bytes.store(bytes, Ordering::Relaxed);
    stats.waiting.store(waiting, Ordering::Relaxed);
    Ok(built)
}

/// Removes the copies in `log`'s directory of segments not among `closed_bases` (the active
/// segment has no copy), and unfinished temporary files; answers the base and size of each copy
/// kept.
fn remove_orphans(log: &weir_storage::Log, bases: &[u64]) -> Result<Vec<(u64, u64)>, Error> {
    let closed = &bases[..bases.len().saturating_sub(1)];
    let entries = std::fs::read_dir(log.dir()).map_err(|e| io_error(log.dir(), e))?;
    let mut kept = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(log.dir(), e))?;
        let path = entry.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let orphan = if name.ends_with(".parquet.tmp") {
            true
        } else if let Some(base) = name.strip_suffix(".parquet") {
            match base.parse::<u64>() {
                Ok(base) if closed.contains(&base) => {
                    kept.push((base, entry.metadata().map_or(0, |m| m.len())));
                    false
                }
                _ => true,
            }
        } else {
            false
        };
        if orphan {
            std::fs::remove_file(&path).map_err(|e| io_error(&path, e))?;
        }
    }
    Ok(kept)
}

/// What the copy at `path` says it holds; an error when it does not open as Parquet or lacks
/// the metadata a copy has.
pub fn read_info(path: &Path) -> Result<CopyInfo, Error> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    info_of(reader.metadata().file_metadata(), path)
}

/// What a copy's metadata says it holds.
fn info_of(metadata: &FileMetaData, path: &Path) -> Result<CopyInfo, Error> {
    let value = |key: &str| {
        metadata
            .key_value_metadata()
            .into_iter()
            .flatten()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .ok_or_else(|| Error::Columnar(format!("{}: no {key} in its metadata", path.display())))
    };
    let number = |key: &str| {
        value(key)?
            .parse::<u64>()
            .map_err(|e| Error::Columnar(format!("{}: {key}: {e}", path.display())))
    };
    Ok(CopyInfo {
        base: number("weir.base_offset")?,
        end: number("weir.end_offset")?,
        records: number("weir.records")?,
        segment_bytes: number("weir.segment_bytes")?,
        value_schema: value("weir.value_schema")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use datafusion::arrow::compute::concat_batches;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use weir_storage::{BatchBuilder, Compression, StorageConfig};

    use super::*;

    /// A topic `logs` with a value schema, 200 records over several small segments: null and
    /// non-JSON values, null keys, a header each.
    fn logs_topic() -> (tempfile::TempDir, Arc<Storage>, TopicMeta) {
        let (dir, storage, meta) = crate::test_records::logs_topic(1, &[("segment.bytes", "4096")]);
        let log = storage.log("logs", 0).unwrap();
        for i in 0..200 {
            let mut batch = BatchBuilder::new(Compression::None);
            let value = crate::test_records::value(i % 5, 200 + i, i % 7);
            batch.push(crate::test_records::record(i, 1_000 + i, value));
            log.append(&batch.build().unwrap()).unwrap();
        }
        (dir, storage, meta)
    }

    #[test]
    fn a_copy_holds_the_rows_a_scan_of_its_segment_gives() {
        let (_dir, storage, meta) = logs_topic();
        let log = storage.log("logs", 0).unwrap();
        let bases = log.segment_base_offsets();
        assert!(bases.len() > 2, "{bases:?}");
        let (base, end) = (bases[1], bases[2]);
        let info = write_copy(&storage, &meta, 0, base, end).unwrap();
        assert_eq!(info.records, end - base);
        let path = copy_path(log.dir(), base);
        assert_eq!(read_info(&path).unwrap(), info);
        assert!(!path.with_extension("parquet.tmp").exists());

        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let copied: Vec<_> = reader.map(Result::unwrap).collect();
        let typed = typed_columns(&meta).unwrap();
        let schema = Arc::new(topic_schema(&typed));
        let expected = RowBuilder::new(schema.clone(), (0..schema.fields().len()).collect(), typed)
            .build(
                0,
                &log.read_records(base, 1 << 20).unwrap()[..(end - base) as usize],
            )
            .unwrap();
        let copied = concat_batches(&schema, &copied).unwrap();
        assert_eq!(copied, expected);
    }

    #[tokio::test]
    async fn queries_answer_the_same_from_copies_and_from_the_log() {
        let (_dir, storage, meta) = logs_topic();
        let engine =
            crate::QueryEngine::new(storage.clone(), None, None, &crate::QueryConfig::default())
                .unwrap();
        let queries = [
            r#"SELECT * FROM logs ORDER BY "offset""#,
            "SELECT status, count(*), min(host) FROM logs GROUP BY status ORDER BY status",
            r#"SELECT host, "offset" FROM logs WHERE "offset" >= 30 AND "offset" < 170 ORDER BY "offset""#,
            r#"SELECT count(*) FROM (SELECT "offset" FROM logs LIMIT 7)"#,
            r#"SELECT "offset", host, timestamp FROM logs WHERE timestamp >= to_timestamp_millis(1050) AND timestamp < to_timestamp_millis(1150) ORDER BY "offset""#,
            "SELECT count(status), max(host) FROM logs WHERE timestamp < to_timestamp_millis(1033)",
            r#"SELECT min("offset"), count(*) FROM logs WHERE timestamp > to_timestamp_millis(1170)"#,
        ];
        let answers = async |engine: &crate::QueryEngine| {
            let mut texts = Vec::new();
            for query in queries {
                let answer = engine.sql(query).await.unwrap();
                texts.push(
                    datafusion::arrow::util::pretty::pretty_format_batches(&answer.batches)
                        .unwrap()
                        .to_string(),
                );
            }
            texts
        };
        let from_log = answers(&engine).await;
        let log = storage.log("logs", 0).unwrap();
        let bases = log.segment_base_offsets();
        let stats = BuilderStats::default();
        assert_eq!(
            build_missing(&storage, usize::MAX, &stats).unwrap(),
            bases.len() - 1
        );
        let built = stats.snapshot();
        assert_eq!(built.builds, bases.len() as u64 - 1);
        assert_eq!(built.files, bases.len() as u64 - 1);
        assert!(built.bytes > 0 && built.waiting == 0 && built.failures == 0);
        assert_eq!(
            build_missing(&storage, usize::MAX, &stats).unwrap(),
            0,
            "all current"
        );
        assert!(
            !copy_path(log.dir(), bases[bases.len() - 1]).exists(),
            "the active one"
        );
        assert_eq!(answers(&engine).await, from_log);
        let explain = async |query: &str| {
            let explained = engine
                .sql(&format!("EXPLAIN ANALYZE {query}"))
                .await
                .unwrap();
            datafusion::arrow::util::pretty::pretty_format_batches(&explained.batches)
                .unwrap()
                .to_string()
        };
        let text = explain("SELECT count(status) FROM logs").await;
        assert!(text.contains("records_from_copies="), "{text}");
        assert!(!text.contains("records_from_copies=0"), "{text}");
        // A time bound reads the copies' rows within it.
        let text = explain("SELECT count(status) FROM logs WHERE timestamp BETWEEN to_timestamp_millis(1040) AND to_timestamp_millis(1059)").await;
        assert!(text.contains("records_from_copies=20,"), "{text}");
        // Copies that hold another segment are read around, not trusted, and built again.
        let first = copy_path(log.dir(), bases[0]);
        for base in &bases[1..bases.len() - 1] {
            std::fs::copy(&first, copy_path(log.dir(), *base)).unwrap();
        }
        std::fs::write(log.dir().join("00000000000000000001.parquet.tmp"), b"cut").unwrap();
        std::fs::write(copy_path(log.dir(), bases[1]), b"PAR1 torn").unwrap();
        assert_eq!(answers(&engine).await, from_log);
        let text = explain("SELECT count(status) FROM logs").await;
        assert!(text.contains("copies_refused=1,"), "{text}");
        assert_eq!(
            build_missing(&storage, 2, &stats).unwrap(),
            2,
            "at most the bound"
        );
        assert_eq!(stats.snapshot().waiting, bases.len() as u64 - 4);
        assert_eq!(stats.snapshot().files, bases.len() as u64 - 1);
        assert_eq!(
            build_missing(&storage, usize::MAX, &stats).unwrap(),
            bases.len() - 4
        );
        assert!(!log.dir().join("00000000000000000001.parquet.tmp").exists());
        assert_eq!(answers(&engine).await, from_log);
        // A topic that no longer wants copies loses them.
        let mut configs = meta.configs.clone();
        configs.insert("columnar.enabled".into(), "false".into());
        storage.set_topic_configs("logs", configs).unwrap();
        assert_eq!(build_missing(&storage, usize::MAX, &stats).unwrap(), 0);
        assert_eq!((stats.snapshot().files, stats.snapshot().bytes), (0, 0));
        let left = std::fs::read_dir(log.dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "parquet")
            })
            .count();
        assert_eq!(left, 0);
    }

    #[test]
    fn copies_go_with_the_segments_retention_deletes() {
        let (_dir, storage, meta) = logs_topic();
        let stats = BuilderStats::default();
        build_missing(&storage, usize::MAX, &stats).unwrap();
        let log = storage.log("logs", 0).unwrap();
        let before = log.segment_base_offsets();
        let mut configs = meta.configs.clone();
        configs.insert("retention.bytes".into(), "8192".into());
        storage.set_topic_configs("logs", configs).unwrap();
        let log = storage.log("logs", 0).unwrap();
        log.enforce_retention(i64::MAX).unwrap();
        let after = log.segment_base_offsets();
        assert!(after.len() < before.len(), "{before:?} {after:?}");
        assert_eq!(build_missing(&storage, usize::MAX, &stats).unwrap(), 0);
        let mut copied: Vec<u64> = std::fs::read_dir(log.dir())
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".parquet")?.parse().ok()
            })
            .collect();
        copied.sort_unstable();
        assert_eq!(copied, after[..after.len() - 1]);
        assert_eq!(stats.snapshot().files, copied.len() as u64);
    }

    #[test]
    fn copies_wait_while_the_disk_is_near_its_low_water_mark() {
        let (dir, storage, _) = logs_topic();
        let closed = storage.log("logs", 0).unwrap().segment_base_offsets().len() - 1;
        drop(storage);
        let mut config = StorageConfig::new(dir.path());
        config.layer_keys = crate::topic_config_keys();
        config.disk_free_bytes_min = u64::MAX / 2;
        let storage = Storage::open(config).unwrap();
        let stats = BuilderStats::default();
        assert_eq!(build_missing(&storage, usize::MAX, &stats).unwrap(), 0);
        let waiting = stats.snapshot();
        assert!(waiting.disk_short);
        assert_eq!((waiting.waiting, waiting.files), (closed as u64, 0));
    }

    #[test]
    fn a_file_that_is_not_a_copy_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"PAR1 not really").unwrap();
        assert!(matches!(read_info(&path), Err(Error::Columnar(_))));
    }
}
