//! `weir-broker`: the listeners of a Weir node and the `weir` binary that wires them together.
//!
//! Today it serves the storage layer: [`serve::Server`] opens (and recovers) a data directory,
//! runs the storage maintenance thread (interval flushes, retention, compaction) and closes
//! every log cleanly on shutdown. The Kafka, HTTP and Postgres listeners grow here; this is the
//! only crate that opens sockets.

pub mod serve;
