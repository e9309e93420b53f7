//! Errors of the storage crate. Every variant names the file, offset or value it is about.

use std::path::PathBuf;

/// Why a record batch was refused. Nothing is written when one of these is returned.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("record batch too short: {bytes} bytes, a v2 header needs {header_bytes}")]
    TooShort { bytes: usize, header_bytes: usize },
    #[error("record batch magic {magic} is not supported, only magic 2 is")]
    BadMagic { magic: i8 },
    #[error("record batch length field says {declared} bytes but {available} bytes follow it")]
    LengthMismatch { declared: i64, available: usize },
    #[error("record batch of {bytes} bytes is larger than the limit of {bytes_max} bytes")]
    TooLarge { bytes: u64, bytes_max: u64 },
    #[error(
        "record batch CRC mismatch: header says {expected:#010x}, content gives {actual:#010x}"
    )]
    CrcMismatch { expected: u32, actual: u32 },
    #[error("record batch has last offset delta {last_offset_delta} for {record_count} records")]
    BadOffsetDelta {
        last_offset_delta: i32,
        record_count: i32,
    },
    #[error("record set is empty")]
    Empty,
    #[error("record batch could not be decoded: {reason}")]
    Decode { reason: String },
    #[error("record batch decompresses to more than {bytes_max} bytes")]
    DecompressedTooLarge { bytes_max: u64 },
    #[error("record batch refused: {reason}")]
    Invalid { reason: String },
    #[error("record batch could not be encoded: {reason}")]
    Encode { reason: String },
}

/// Errors of logs, segments and the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("log directory {path} does not exist")]
    MissingDirectory { path: PathBuf },
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("{path}: corrupt data at position {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error(
        "offset {offset} is out of range: log holds offsets {log_start_offset}..{high_watermark}"
    )]
    OffsetOutOfRange {
        offset: u64,
        log_start_offset: u64,
        high_watermark: u64,
    },
    #[error("log {path} failed an fsync earlier and refuses writes until it is reopened")]
    Failed { path: PathBuf },
    #[error("invalid config {key}={value}: {reason}")]
    InvalidConfig {
        key: String,
        value: String,
        reason: String,
    },
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },
    #[error("topic {name} already exists")]
    TopicExists { name: String },
    #[error("topic {name} does not exist")]
    UnknownTopic { name: String },
    #[error("partition {topic}-{partition} does not exist")]
    UnknownPartition { topic: String, partition: u32 },
    #[error(
        "topic {name} has {current} partitions; the count can only grow, not become {requested}"
    )]
    PartitionCount {
        name: String,
        current: u32,
        requested: u32,
    },
    #[error("partition {topic}-{partition} is offline: {reason}")]
    Offline {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("producer {producer_id}: sequence {received} out of order, expected {expected}")]
    OutOfOrderSequence {
        producer_id: i64,
        expected: i32,
        received: i32,
    },
    #[error("producer {producer_id}: batch at sequence {sequence} repeats part of a record set")]
    DuplicateSequence { producer_id: i64, sequence: i32 },
    #[error("producer {producer_id}: epoch {received} is older than the current epoch {current}")]
    ProducerFenced {
        producer_id: i64,
        current: i16,
        received: i16,
    },
    #[error(
        "free disk space is {free_bytes} bytes, below the low-water mark of {free_bytes_min}; writes are refused until space is freed"
    )]
    DiskLow {
        free_bytes: u64,
        free_bytes_min: u64,
    },
    #[error(
        "{requested} more partitions would make {} on this node, past its limit of {partitions_max}",
        current + requested
    )]
    TooManyPartitions {
        requested: u32,
        current: u32,
        partitions_max: u32,
    },
    #[error(
        "{pending} delayed records are waiting, the node's limit (--delayed-records-max {pending_max}); try again once some are delivered"
    )]
    DelayedFull { pending: u64, pending_max: u64 },
    #[error("compaction of {path} needs more than {keys_max} distinct keys")]
    CompactionKeys { path: PathBuf, keys_max: u64 },
    #[error("metadata store: {0}")]
    Meta(#[from] sled::Error),
    /// Other writers kept changing a key between an update's read and its write.
    #[error("key {key:?} of tree {tree} changed under {tries} updates in a row; try again")]
    Contended {
        tree: String,
        key: String,
        tries: usize,
    },
    /// A tree kept in a cluster's database could not be read or written.
    #[error("cluster metadata, tree {tree}: {reason}")]
    SharedMeta { tree: String, reason: String },
    #[error("metadata value under {key:?} in tree {tree}: {source}")]
    MetaValue {
        tree: String,
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StorageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StorageError {
        let path = path.into();
        move |source| StorageError::Io { path, source }
    }

    /// True when the error came from the disk being full, or from the low-water mark.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.raw_os_error() == Some(28))
            || matches!(self, StorageError::DiskLow { .. })
    }
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
