//! What the layers above the logs (SQL, the HTTP record pages) read and write topics through,
//! wherever their batches are kept: the node's own segmented logs ([`Storage`] and [`Log`]), or
//! a cluster's shared log, which the broker puts behind the same two traits.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::batch::Record;
use crate::error::{Result, StorageError};
use crate::log::{Log, RecordCount};
use crate::meta::TopicMeta;
use crate::storage::Storage;

/// Where a partition's log stands and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSize {
    pub log_start_offset: u64,
    pub high_watermark: u64,
    /// Bytes of its record batches.
    pub bytes: u64,
    /// The pieces they are kept in: segment files on a lone node, object ranges (`batches`
    /// rows) in a cluster.
    pub pieces: u64,
}

/// The topics a reader can see.
pub trait Topics: Send + Sync + std::fmt::Debug {
    fn list_topics(&self) -> Result<Vec<TopicMeta>>;
    fn topic(&self, name: &str) -> Result<Option<TopicMeta>>;
    /// A topic that must exist: [`StorageError::UnknownTopic`] if not.
    fn existing_topic(&self, name: &str) -> Result<TopicMeta> {
        self.topic(name)?.ok_or_else(|| StorageError::UnknownTopic {
            name: name.to_string(),
        })
    }
    /// One partition of a topic, to read.
    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<dyn PartitionSource>>;
    /// Where each partition of `topic` stands and what it holds, by partition; a partition that
    /// cannot be read now (offline since recovery) is left out.
    fn partition_sizes(&self, topic: &TopicMeta) -> Result<Vec<(u32, PartitionSize)>> {
        Ok((0..topic.partitions)
            .filter_map(|p| {
                let size = self.partition(&topic.name, p).and_then(|log| log.size());
                Some((p, size.ok()?))
            })
            .collect())
    }
    /// Makes a topic of `partitions` partitions with `configs`, once they pass the checks.
    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta>;
    /// The topic `name`, made with `partitions` and `configs` if it does not exist yet (by this
    /// call or another's meanwhile).
    fn topic_or_create(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta> {
        if let Some(meta) = self.topic(name)? {
            return Ok(meta);
        }
        match self.create_topic(name, partitions, configs) {
            Err(StorageError::TopicExists { .. }) => self.existing_topic(name),
            made => made,
        }
    }
    /// Deletes a topic and its records.
    fn delete_topic(&self, name: &str) -> Result<()>;
    /// The largest record set `topic` takes (`max.message.bytes`).
    fn batch_bytes_max(&self, topic: &str) -> Result<u64>;
    /// Appends a record set (whole batches) to a partition and answers once it is durable, with
    /// the offset of its first record.
    fn append(&self, topic: &str, partition: u32, batches: Bytes) -> Result<u64>;
}

/// One partition's records, read by offset.
pub trait PartitionSource: Send + Sync {
    /// The log start offset and the high watermark, now.
    fn offsets(&self) -> Result<(u64, u64)>;
    /// Where the partition stands now and what it holds.
    fn size(&self) -> Result<PartitionSize>;
    /// Decoded records from `offset` on, up to about `bytes_max` bytes of batches (at least one
    /// batch); none before `offset`.
    fn read_records(&self, offset: u64, bytes_max: u64) -> Result<Vec<Record>> {
        self.read_records_at_most(offset, bytes_max, usize::MAX)
    }
    /// [`PartitionSource::read_records`], decoding no batch after the one that brings the
    /// records to `records_max`.
    fn read_records_at_most(
        &self,
        offset: u64,
        bytes_max: u64,
        records_max: usize,
    ) -> Result<Vec<Record>>;
    /// The first offset stamped at or after `timestamp`, with its timestamp.
    fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>>;
    /// Where a reader stepping backwards from `end` starts to read about `bytes` bytes; see
    /// [`Log::offset_bytes_before`].
    fn offset_bytes_before(&self, end: u64, bytes: u64, at_least_one: bool) -> Result<u64>;
    /// How many records `[start, end)` holds, over about `bytes_max` bytes from `start`; see
    /// [`Log::count_records`]. Unless a source counts from batch headers, by decoding.
    fn count_records(&self, start: u64, end: u64, bytes_max: u64) -> Result<RecordCount> {
        let records = if start < end {
            self.read_records(start, bytes_max)?
        } else {
            Vec::new()
        };
        let next_offset = records
            .last()
            .map_or(end, |r| (r.offset as u64).saturating_add(1).min(end));
        let decoded = records
            .iter()
            .filter(|r| (start..end).contains(&(r.offset as u64)))
            .count() as u64;
        Ok(RecordCount {
            whole: 0,
            decoded,
            next_offset,
        })
    }
    /// The base offsets of the partition's segments, where a scan may cut its reads; none when
    /// the source has no segments.
    fn segment_base_offsets(&self) -> Vec<u64> {
        Vec::new()
    }
    /// The segmented log itself, when the partition is one (its closed segments may have
    /// columnar copies).
    fn log(&self) -> Option<&Log> {
        None
    }
}

/// Whether `source` holds, from offset `from` on, a record with header `key` set to `value`.
pub fn holds_header(
    source: &(impl PartitionSource + ?Sized),
    from: u64,
    key: &str,
    value: &[u8],
) -> Result<bool> {
    /// Bytes read at a time while looking.
    const READ_BYTES: u64 = 4 << 20;
    let (start, end) = source.offsets()?;
    let mut offset = from.max(start);
    while offset < end {
        let records = source.read_records(offset, READ_BYTES)?;
        let Some(last) = records.last() else { break };
        offset = last.offset as u64 + 1;
        let found = records
            .iter()
            .flat_map(|r| &r.headers)
            .any(|h| h.key == key && h.value.as_deref() == Some(value));
        if found {
            return Ok(true);
        }
    }
    Ok(false)
}

impl Topics for Storage {
    fn list_topics(&self) -> Result<Vec<TopicMeta>> {
        Storage::list_topics(self)
    }

    fn topic(&self, name: &str) -> Result<Option<TopicMeta>> {
        Storage::topic(self, name)
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<dyn PartitionSource>> {
        Ok(self.log(topic, partition)?)
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta> {
        Storage::create_topic(self, name, partitions, configs)
    }

    fn delete_topic(&self, name: &str) -> Result<()> {
        Storage::delete_topic(self, name)
    }

    fn batch_bytes_max(&self, topic: &str) -> Result<u64> {
        Ok(self.log(topic, 0)?.config().batch_bytes_max)
    }

    fn append(&self, topic: &str, partition: u32, batches: Bytes) -> Result<u64> {
        Ok(self.log(topic, partition)?.append(&batches)?.base_offset)
    }
}

impl PartitionSource for Log {
    fn offsets(&self) -> Result<(u64, u64)> {
        Ok((self.log_start_offset(), self.high_watermark()))
    }

    fn size(&self) -> Result<PartitionSize> {
        Ok(PartitionSize {
            log_start_offset: self.log_start_offset(),
            high_watermark: self.high_watermark(),
            bytes: self.size_bytes(),
            pieces: self.segment_count() as u64,
        })
    }

    fn read_records_at_most(
        &self,
        offset: u64,
        bytes_max: u64,
        records_max: usize,
    ) -> Result<Vec<Record>> {
        Log::read_records_at_most(self, offset, bytes_max, records_max)
    }

    fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(u64, i64)>> {
        Log::offset_for_timestamp(self, timestamp)
    }

    fn offset_bytes_before(&self, end: u64, bytes: u64, at_least_one: bool) -> Result<u64> {
        Log::offset_bytes_before(self, end, bytes, at_least_one)
    }

    fn count_records(&self, start: u64, end: u64, bytes_max: u64) -> Result<RecordCount> {
        Log::count_records(self, start, end, bytes_max)
    }

    fn segment_base_offsets(&self) -> Vec<u64> {
        Log::segment_base_offsets(self)
    }

    fn log(&self) -> Option<&Log> {
        Some(self)
    }
}
