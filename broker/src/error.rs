//! The errors of the broker library. Each names what was being done and with what value;
//! `main.rs` prints them, the listeners log them or answer with them.

use std::path::PathBuf;

use weir_storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O step failed: what was being done, and why.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Storage {
        what: String,
        #[source]
        source: StorageError,
    },
    #[error("{what}: {source}")]
    Runtime {
        what: String,
        #[source]
        source: weir_runtime::Error,
    },
    #[error("{what}: {source}")]
    Users {
        what: String,
        #[source]
        source: crate::sasl::UserError,
    },
    #[error("{what}: {source}")]
    Acls {
        what: String,
        #[source]
        source: crate::acl::AclError,
    },
    #[error("{what}: {source}")]
    Sql {
        what: String,
        #[source]
        source: weir_sql::Error,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A Kafka client sent what this listener cannot read; that connection is closed.
    #[error("{0}")]
    Protocol(String),
    /// A node answered a CLI call with an error.
    #[error("{method} {path}: {status}: {message}")]
    Remote {
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    /// The CLI could not reach a node.
    #[error("cannot reach {url}: is `weir serve` running? ({reason})")]
    Unreachable { url: String, reason: String },
    /// A command's input is wrong: a flag, a file, a plugin crate.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A task on the blocking pool panicked or was cancelled.
    #[error("{what}: the task failed: {reason}")]
    Task { what: String, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err` for an I/O step: `io("reading input")`.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// `map_err` for a task on the blocking pool.
pub fn task(what: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Error {
    let what = what.into();
    move |e| Error::Task {
        what,
        reason: e.to_string(),
    }
}

/// `map_err` for a storage step.
pub fn storage(what: impl Into<String>) -> impl FnOnce(StorageError) -> Error {
    let what = what.into();
    move |source| Error::Storage { what, source }
}
