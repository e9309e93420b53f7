//! `weir-broker`: the listeners of a Weir node and the `weir` binary that wires them together.
//!
//! [`serve::Server`] opens (and recovers) a data directory, runs the storage maintenance thread
//! (interval flushes, retention, compaction), serves the Kafka protocol ([`kafka`]) and the
//! HTTP admin API with Prometheus metrics ([`http`]), SQL over the Postgres wire protocol
//! ([`pg`]), each over TLS when
//! configured ([`tls`]), and closes every log cleanly on shutdown. This is the only crate that opens sockets, and the only one
//! that knows Kafka's wire types.

pub mod acl;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod follow;
pub mod history;
pub mod http;
pub mod kafka;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod pg;
pub mod plugin_cli;
pub mod sasl;
pub mod sdk;
pub mod serve;
pub mod tls;
