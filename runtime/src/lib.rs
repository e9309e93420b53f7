//! `weir-runtime`: the WebAssembly host of Weir.
//!
//! It will hold the plugin registry (versions by sha256 in the metadata store), the wasmtime
//! engine with its sandbox limits (a CPU deadline per call through epoch interruption, a memory
//! cap per instance), hot reload of new plugin versions between batches, and the pipeline
//! executor that reads an input topic, runs a chain of plugins and appends to output topics
//! exactly once. It builds on `weir-storage` and never opens sockets.
