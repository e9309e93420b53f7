//! `weir-cluster`: the storage of cluster mode, where nodes keep nothing of their own.
//!
//! `docs/cluster.md` is the design. Record batches are written once to an object store and
//! Postgres orders every write:
//!
//! - [`SharedLog::open`] connects to Postgres, brings the `weir` schema up to date
//!   ([`schema`], one transaction under an advisory lock) and opens the object store: a
//!   directory every node sees (`file:///shared/dir`) or an S3 bucket (`s3://bucket/prefix`).
//! - [`SharedLog::check`] checks a record set before it waits for a flush (the partition
//!   exists; every batch's header, length, CRC and size bound).
//! - [`SharedLog::flush`] takes the checked record sets of any partitions, writes them as **one
//!   object** under a key no other write uses, then assigns their offsets in **one Postgres
//!   transaction** (`partitions.next_offset` locked in a fixed order, one `batches` row per
//!   partition). Only a committed flush returns offsets; an object whose transaction failed is
//!   referenced by no row.
//! - [`Flusher`] is the node's flush buffer: record sets for any partitions wait up to
//!   `linger_ms` or until they make `flush_bytes`, then go out in one flush; each caller gets
//!   its own base offset.
//! - [`SharedLog::read`] finds the rows covering an offset, reads their byte ranges from the
//!   store and writes each batch's base offset into its header on the way out (the CRC does
//!   not cover it), so a client sees the batches as a single node would return them. Ranges
//!   come through the node's cache, bounded in bytes ([`CacheStats`]).
//! - [`SharedLog::wait_for_end`] is a long poll: it wakes when any node commits to the
//!   partition (Postgres `LISTEN`/`NOTIFY`, one listening connection per node).
//! - [`membership`]: nodes register and renew a heartbeat; the live ones are those renewed
//!   within the session timeout, and [`leader`] spreads partitions over them.
//! - [`lease`]: one node at a time acts for a name (a group's coordinator, a pipeline, a
//!   background job), fenced by an epoch; [`SharedLog::commit_offsets`] writes a group's
//!   offsets only while its lease holds.
//! - Topics ([`SharedLog::create_topic`], [`SharedLog::delete_topic`],
//!   [`SharedLog::create_partitions`], [`SharedLog::set_topic_configs`]) change through any
//!   node in one transaction each and are announced on `LISTEN`/`NOTIFY`, so every node's
//!   cache of them forgets the old copy.
//! - [`retention`]: the holder of the `retention` lease drops the oldest runs of each partition
//!   past its topic's `retention.ms` or `retention.bytes` and moves its log start offset.
//! - Small metadata trees every node shares (SCRAM users, ACL rules): [`SharedLog::meta_put`]
//!   and its siblings, each change announced so nodes holding a copy read it again.
//! - [`merge`]: the holder of the `merge` lease copies a partition's runs out of small objects
//!   into one larger object of that partition, and swaps the rows in one transaction; under
//!   the same lease, [`compact`] keeps the last record per key in compacted topics.
//! - [`gc`]: the holder of the `gc` lease deletes objects no row references (the leftovers of
//!   failed flushes, and objects retention or a topic deletion emptied) once no flush can
//!   still be committing them.
//!
//! Several nodes share one database and one store; the transaction is what makes their
//! offsets unique and gap-free. This crate knows nothing of Kafka requests or sockets.

mod cache;
pub mod compact;
mod error;
pub mod flusher;
pub mod gc;
pub mod lease;
mod log;
pub mod membership;
pub mod merge;
mod meta;
pub mod modules;
mod pool;
pub mod retention;
pub mod schema;
pub mod status;
pub mod steps;
mod store;
mod topics;
mod watch;

pub use cache::{CACHE_MEMORY_BYTES_DEFAULT, CacheStats};
pub use compact::Compacted;
pub use error::{ClusterError, Result};
pub use flusher::{FlushConfig, Flusher};
pub use gc::Collected;
pub use lease::{GroupOffset, LEASE_NOTE_BYTES_MAX, Lease, OFFSET_METADATA_BYTES_MAX};
pub use log::{
    Append, CLUSTER_PARTITIONS_MAX_DEFAULT, CheckedAppend, FLUSH_BYTES_MAX,
    FLUSH_COMMIT_MS_MAX_DEFAULT, Fetched, NodeConfig, READ_ROWS_MAX, SharedLog,
};
pub use membership::{NodeInfo, leader, leader_by};
pub use merge::Merged;
pub use meta::{META_KEY_BYTES_MAX, META_TREE_BYTES_MAX, META_VALUE_BYTES_MAX};
pub use pool::{DB_CONNECTIONS_DEFAULT, DB_CONNECTIONS_MAX, PoolStats};
pub use retention::Trimmed;
pub use topics::{TOPIC_CONFIG_BYTES_MAX, TOPIC_CONFIGS_MAX, Topic};
pub use watch::Advanced;
