//! `weir serve`: a node's lifetime, from opening the data directory to a clean shutdown.

use std::path::PathBuf;
use std::sync::Arc;

use weir_storage::{Storage, StorageConfig, StorageError};

/// What `weir serve` needs to start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub data_dir: PathBuf,
}

/// A running node.
pub struct Server {
    storage: Arc<Storage>,
}

impl Server {
    /// Opens the data directory, recovering every partition log, and starts the storage
    /// maintenance thread.
    pub fn start(config: &ServeConfig) -> Result<Server, StorageError> {
        let storage = Storage::open(StorageConfig::new(&config.data_dir))?;
        let topics = storage.list_topics()?;
        let partitions: u32 = topics.iter().map(|t| t.partitions).sum();
        for (topic, partition, reason) in storage.offline_partitions() {
            tracing::error!(topic, partition, reason, "partition offline");
        }
        storage.start_background();
        tracing::info!(
            data_dir = %config.data_dir.display(),
            topics = topics.len(),
            partitions,
            offline = storage.offline_partitions().len(),
            "storage ready"
        );
        Ok(Server { storage })
    }

    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }

    /// Stops maintenance and closes every log: flushed data, flushed indexes and a current
    /// recovery point, so the next start scans nothing.
    pub fn shutdown(self) -> Result<(), StorageError> {
        self.storage.close()?;
        tracing::info!("shut down cleanly");
        Ok(())
    }
}
