//! `weir-tests`: black-box tests that run real processes.
//!
//! `src/bin/crash-writer.rs` is a child process for the storage kill test: it appends to a
//! log with fsync and reports every acknowledged offset on stdout, so the parent can `kill -9`
//! it at any moment and check the log against what was acknowledged.
//!
//! The value written for offset `n` is [`value_for`]`(n)`, so a reader can check any record
//! without knowing what the writer did.
//!
//! [`wasm`] builds plugins to WebAssembly for the tests that deploy them; [`hostile`] forges
//! the record batches a hostile producer sends; [`postgres`] runs a throwaway PostgreSQL server, [`s3`] and [`cloud`] throwaway servers of
//! the S3, Google Cloud Storage and Azure Blob APIs.

/// The value the crash writer stores at `offset`.
pub fn value_for(offset: u64) -> String {
    format!("record-{offset}-{}", "x".repeat((offset % 200) as usize))
}

/// Reports something a test needs that is not installed: fails in CI (`CI` set), where
/// `./scripts/test` installs everything; elsewhere says how to get it, so the test can return
/// without it. `install` is how to get it.
pub fn missing(what: &str, install: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{what} is missing in CI; ./scripts/test installs it ({install})"
    );
    eprintln!("{what} not found: {install} (./scripts/test does) to run this test");
}

pub mod cloud;
pub mod hostile;
pub mod postgres;
pub mod s3;
pub mod wasm;
