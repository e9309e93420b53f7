//! Columnar copies of closed segments (`docs/columnar-segments.md`): a Parquet file next to a
//! segment of a topic with a value schema, holding the rows a scan of that segment gives, with
//! what it copies in its metadata so a reader can tell a current copy from a stale one.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use weir_storage::{Storage, TopicMeta};

use crate::Error;
use crate::topic::columns::{RowBuilder, topic_schema, typed_columns};

/// Rows of a copy's row group: the unit its statistics prune.
pub const ROW_GROUP_ROWS: usize = 65_536;
/// Bytes of records read from the log at a time while copying.
const READ_BYTES: u64 = 1 << 20;
/// Rows of one Arrow batch handed to the writer.
const BATCH_ROWS: usize = 8192;

/// What a copy holds, from its metadata: offsets `[base, end)` of its segment, the records it
/// has, and the value schema its typed columns follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CopyInfo {
    pub base: u64,
    pub end: u64,
    pub records: u64,
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

fn value_schema(meta: &TopicMeta) -> String {
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
    let tmp = path.with_extension("parquet.tmp");
    let properties = WriterProperties::builder()
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .build();
    let file = File::create(&tmp).map_err(|e| io_error(&tmp, e))?;
    let mut writer = ArrowWriter::try_new(file, schema, Some(properties)).map_err(parquet_error)?;
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
    let info = CopyInfo {
        base,
        end,
        records,
        value_schema: value_schema(meta),
    };
    for (key, value) in [
        ("weir.base_offset", info.base.to_string()),
        ("weir.end_offset", info.end.to_string()),
        ("weir.records", info.records.to_string()),
        ("weir.value_schema", info.value_schema.clone()),
    ] {
        writer.append_key_value_metadata(KeyValue::new(key.to_owned(), value));
    }
    let mut file = writer.into_inner().map_err(parquet_error)?;
    file.flush().map_err(|e| io_error(&tmp, e))?;
    file.sync_all().map_err(|e| io_error(&tmp, e))?;
    std::fs::rename(&tmp, &path).map_err(|e| io_error(&path, e))?;
    File::open(log.dir())
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io_error(log.dir(), e))?;
    Ok(info)
}

/// What the copy at `path` says it holds; an error when it does not open as Parquet or lacks
/// the metadata a copy has.
pub fn read_info(path: &Path) -> Result<CopyInfo, Error> {
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(parquet_error)?;
    let metadata = reader.metadata().file_metadata();
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
        value_schema: value("weir.value_schema")?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::collections::BTreeMap;

    use bytes::Bytes;
    use datafusion::arrow::compute::concat_batches;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use weir_storage::{BatchBuilder, Compression, Header, NewRecord, StorageConfig};

    use super::*;

    #[test]
    fn a_copy_holds_the_rows_a_scan_of_its_segment_gives() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StorageConfig::new(dir.path());
        config.layer_keys = crate::topic_config_keys();
        let storage = Storage::open(config).unwrap();
        let configs = BTreeMap::from([
            ("value.format".to_owned(), "json".to_owned()),
            (
                "value.schema".to_owned(),
                "status INT, host TEXT".to_owned(),
            ),
            ("segment.bytes".to_owned(), "4096".to_owned()),
        ]);
        let meta = storage.create_topic("logs", 1, configs).unwrap();
        let log = storage.log("logs", 0).unwrap();
        for i in 0..200 {
            let value = match i % 5 {
                0 => None,
                1 => Some(Bytes::from("not json")),
                _ => Some(Bytes::from(format!(
                    r#"{{"status":{},"host":"h{}"}}"#,
                    200 + i,
                    i % 7
                ))),
            };
            let mut batch = BatchBuilder::new(Compression::None);
            batch.push(NewRecord {
                timestamp: 1_000 + i,
                key: (i % 3 != 0).then(|| Bytes::from(format!("k{i}"))),
                value,
                headers: vec![Header {
                    key: "n".into(),
                    value: Some(Bytes::from(i.to_string())),
                }],
            });
            log.append(&batch.build().unwrap()).unwrap();
        }
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

    #[test]
    fn a_file_that_is_not_a_copy_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.parquet");
        std::fs::write(&path, b"PAR1 not really").unwrap();
        assert!(matches!(read_info(&path), Err(Error::Columnar(_))));
    }
}
