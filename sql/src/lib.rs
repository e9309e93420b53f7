//! `weir-sql`: topics as DataFusion tables.
//!
//! It will hold the catalog (one table per topic, typed columns from a declared value schema),
//! the scan that pushes partition, offset and timestamp filters down to the segment indexes,
//! the system tables (`weir.topics`, `weir.partitions`, `weir.groups`, …) and continuous
//! queries. The Postgres-wire and HTTP listeners in `weir-broker` call into it.
