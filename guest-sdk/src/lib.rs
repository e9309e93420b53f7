//! `weir-guest`: the SDK for Weir plugins, built to `wasm32-unknown-unknown`.
//!
//! It will define the record type plugins see, the attribute macros that turn plain functions
//! into filters, maps, partitioners and aggregates, and the flatbuffers ABI (one call per batch)
//! shared with the host. It never depends on a host crate.
