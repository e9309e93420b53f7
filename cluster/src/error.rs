use weir_storage::BatchError;

pub type Result<T> = std::result::Result<T, ClusterError>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster database: {}", db_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("object store {url:?}: {reason}")]
    StoreUrl { url: String, reason: String },
    #[error(
        "cluster database schema is at version {found}, newer than this node knows ({known}): upgrade the node"
    )]
    SchemaTooNew { found: i32, known: i32 },
    #[error("topic {0:?} already exists")]
    TopicExists(String),
    #[error("invalid topic: {0}")]
    InvalidTopic(String),
    #[error("unknown topic: {0}")]
    UnknownTopic(String),
    #[error("topic {topic} has {current} partitions; it can only grow, not to {requested}")]
    PartitionCount {
        topic: String,
        current: u32,
        requested: u32,
    },
    #[error(
        "{topic}: {requested} more partitions would make {} in the cluster, allowed {partitions_max}",
        *current + u64::from(*requested)
    )]
    TooManyPartitions {
        topic: String,
        requested: u32,
        current: u64,
        partitions_max: u32,
    },
    /// A name, count or size from a client outside its bound.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("unknown topic or partition: {topic}-{partition}")]
    UnknownPartition { topic: String, partition: u32 },
    #[error("record set for {topic}-{partition}: {source}")]
    Batch {
        topic: String,
        partition: u32,
        source: BatchError,
    },
    /// An idempotent producer's sequence or epoch refuses the record set.
    #[error(transparent)]
    Producer(weir_storage::StorageError),
    #[error("flush of {bytes} bytes is larger than the bound of {bytes_max}")]
    FlushTooLarge { bytes: u64, bytes_max: u64 },
    #[error(
        "offset {offset} is outside {topic}-{partition}: its log runs from {start} to its end at {end}"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: u64,
        /// The log start offset: retention dropped what was below it.
        start: u64,
        end: u64,
    },
    /// The flush a record set waited for failed (the database or the store); nothing of it
    /// was acknowledged.
    #[error("flush failed: {0}")]
    FlushFailed(String),
    /// The lease is no longer this node's at this epoch: it must stop acting for it.
    #[error("lease {name:?} at epoch {epoch} is no longer held by this node")]
    LeaseLost { name: String, epoch: i64 },
    #[error("cluster settings: {0}")]
    Config(String),
    #[error("object {key}: {reason}")]
    CorruptObject { key: String, reason: String },
    /// A compaction pass over a partition found more distinct keys than it may hold.
    #[error(
        "compacting {topic}-{partition}: more than {keys_max} distinct keys; the pass was given up"
    )]
    CompactionKeys {
        topic: String,
        partition: u32,
        keys_max: u64,
    },
}

impl ClusterError {
    /// Whether a client should retry the request: the database or the store failed, not the
    /// request. A flush that failed this way acknowledged nothing.
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            ClusterError::Db(_) | ClusterError::Store(_) | ClusterError::FlushFailed(_)
        )
    }
}

/// The server's own message when there is one (`tokio_postgres` says only "db error").
fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}"),
            None => e.to_string(),
        },
    }
}
