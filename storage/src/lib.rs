//! `weir-storage`: the partition logs and the metadata store of a Weir broker.
//!
//! - [`Storage`] owns a data directory: topics registered in the sled [`MetaStore`] under
//!   `<data-dir>/meta`, and one [`Log`] per partition under `<data-dir>/topics/<topic>-<p>/`.
//! - [`Log`] is an ordered list of segments. [`Log::append`] takes Kafka RecordBatch v2 bytes
//!   as a producer sent them, validates them (header, length, CRC32C), assigns offsets by
//!   rewriting each batch's base offset, and writes them to the active segment; with the
//!   default `always` flush policy it returns once the bytes are fsynced, and concurrent
//!   appends share one fsync. [`Log::read`] returns whole batches located in a segment file
//!   ([`FileSlice`]) for zero-copy sends; [`Log::offset_for_timestamp`] serves ListOffsets.
//! - Each segment is `<base offset, 20 digits>.log` with a sparse offset index (`.index`) and
//!   time index (`.timeindex`), memory-mapped and binary-searched.
//! - [`batch`] parses and validates batch headers, builds batches for internal writers
//!   ([`BatchBuilder`]) and decodes records, compressed or not ([`decode_records`]).
//! - [`delay`]: records produced with a due time wait in the delay log until they are due
//!   ([`Storage::produce`]).
//! - Retention ([`Log::enforce_retention`]) deletes whole closed segments; compaction
//!   ([`compact()`]) keeps the last record per key. [`Storage::start_background`] runs both.
//!
//! - [`Topics`] and [`PartitionSource`]: what readers above the logs read through, so that
//!   they read a cluster's shared log the same way.
//!
//! This crate knows nothing of sockets, Kafka requests, WASM or SQL. `storage/README.md` states
//! the durability guarantees and the write path.

pub mod batch;
pub mod codec;
mod compact;
pub mod config;
pub mod delay;
mod error;
mod index;
pub mod locks;
mod log;
pub mod meta;
pub mod producer;
pub mod reactor;
mod segment;
mod source;
mod space;
mod storage;

pub use batch::{
    BATCH_HEADER_BYTES, BatchBuilder, Compression, Header, NewRecord, Record, count_records_in,
    decode_records, decode_records_from, in_batches,
};
pub use compact::{COMPACTION_KEYS_MAX, CompactionResult, LatestByKey, compact, rewrite_batch};
pub use config::{CleanupPolicy, FlushPolicy, LayerKey, LogConfig, TimestampType};
pub use error::{BatchError, Result, StorageError};
pub use log::{
    AppendInfo, AppendObserver, CheckedSet, FileSlice, Listener, Log, ReadResult, RecordCount,
    RetentionResult, now_ms, parse_time_ms,
};
pub use meta::{Bounded, MetaStore, Present, TopicMeta, Tree, TreeBackend, TreeSource, refused};
pub use producer::PRODUCER_BATCHES_MAX;
pub use segment::{LogFile, OPEN_SEGMENTS_MAX_DEFAULT, open_segments, set_open_segments_max};
pub use source::{PartitionSize, PartitionSource, Topics, holds_header};
pub use space::{DISK_FREE_BYTES_MIN_DEFAULT, DiskSpace};
pub use storage::{
    DELAYED_RECORDS_MAX_DEFAULT, MAINTENANCE_INTERVAL_MS_DEFAULT, PARTITIONS_MAX,
    PARTITIONS_MAX_DEFAULT, PartitionListener, Produced, Storage, StorageConfig, TopicObserver,
    validate_topic_name,
};
