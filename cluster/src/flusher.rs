//! The node's flush buffer: record sets for any partitions wait together and go out as one
//! object and one transaction.
//!
//! A produce request's record sets are checked ([`SharedLog::check`]) and parked; the buffer
//! flushes when its oldest record set has waited `linger_ms` or it holds `flush_bytes`. Each
//! caller gets its base offset once the flush committed, or a retriable error if it did not.
//! Bytes parked across the node are bounded by [`QUEUE_BYTES_MAX`]: past it, callers wait for
//! room, which holds producers back instead of growing memory.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::{Instant, timeout_at};

use crate::{Append, CheckedAppend, ClusterError, FLUSH_BYTES_MAX, Result, SharedLog};

/// Bytes of record sets parked on one node, waiting for a flush or in one.
pub const QUEUE_BYTES_MAX: u64 = 2 * FLUSH_BYTES_MAX;

/// Longest `linger_ms` accepted.
pub const LINGER_MS_MAX: u64 = 60_000;

/// When the buffer flushes (`[cluster]` `linger_ms` and `flush_bytes` in the config).
#[derive(Debug, Clone, Copy)]
pub struct FlushConfig {
    pub linger_ms: u64,
    pub flush_bytes: u64,
}

impl Default for FlushConfig {
    fn default() -> Self {
        FlushConfig {
            linger_ms: 50,
            flush_bytes: 4 * 1024 * 1024,
        }
    }
}

/// A parked record set and where its answer goes.
struct Parked {
    checked: CheckedAppend,
    done: oneshot::Sender<Result<u64>>,
    /// Its share of [`QUEUE_BYTES_MAX`], given back when it is answered.
    _room: OwnedSemaphorePermit,
}

/// The flush buffer of one node, flushing on a task of its own.
pub struct Flusher {
    log: Arc<SharedLog>,
    parked: mpsc::UnboundedSender<Parked>,
    room: Arc<Semaphore>,
}

impl Flusher {
    pub fn start(log: Arc<SharedLog>, config: FlushConfig) -> Result<Flusher> {
        if config.linger_ms > LINGER_MS_MAX {
            return Err(ClusterError::Config(format!(
                "linger_ms {} is more than {LINGER_MS_MAX}",
                config.linger_ms
            )));
        }
        if config.flush_bytes == 0 || config.flush_bytes > FLUSH_BYTES_MAX {
            return Err(ClusterError::Config(format!(
                "flush_bytes {} is outside 1 to {FLUSH_BYTES_MAX}",
                config.flush_bytes
            )));
        }
        let (parked, queue) = mpsc::unbounded_channel();
        tokio::spawn(run(log.clone(), config, queue));
        Ok(Flusher {
            log,
            parked,
            room: Arc::new(Semaphore::new(QUEUE_BYTES_MAX as usize)),
        })
    }

    /// Bytes of record sets parked now, waiting for a flush or in one.
    pub fn parked_bytes(&self) -> u64 {
        QUEUE_BYTES_MAX - self.room.available_permits() as u64
    }

    /// Checks `append`, parks it, and returns its base offset once its flush committed.
    pub async fn append(&self, append: Append) -> Result<u64> {
        let checked = self.log.check(append).await?;
        // A record set larger than a flush is refused by the flush itself; it still takes no
        // more room than there is.
        let bytes = checked.bytes().min(QUEUE_BYTES_MAX) as u32;
        let room = self
            .room
            .clone()
            .acquire_many_owned(bytes)
            .await
            .map_err(|_| stopped())?;
        let (done, answer) = oneshot::channel();
        self.parked
            .send(Parked {
                checked,
                done,
                _room: room,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ClusterError {
    ClusterError::FlushFailed("the node's flush buffer stopped".to_string())
}

/// Gathers parked record sets into flushes until every [`Flusher`] handle is gone.
async fn run(log: Arc<SharedLog>, config: FlushConfig, mut queue: mpsc::UnboundedReceiver<Parked>) {
    let linger = Duration::from_millis(config.linger_ms);
    let mut carried: Option<Parked> = None;
    loop {
        let first = match carried.take() {
            Some(parked) => parked,
            None => match queue.recv().await {
                Some(parked) => parked,
                None => return,
            },
        };
        let deadline = Instant::now() + linger;
        let mut bytes = first.checked.bytes();
        let mut flush = vec![first];
        while bytes < config.flush_bytes {
            let Ok(Some(next)) = timeout_at(deadline, queue.recv()).await else {
                break;
            };
            // What would push the object past its bound starts the next flush.
            if bytes + next.checked.bytes() > FLUSH_BYTES_MAX {
                carried = Some(next);
                break;
            }
            bytes += next.checked.bytes();
            flush.push(next);
        }
        // The record sets go to the flush; each answer (and its share of room) waits here.
        let (checked, waiting): (Vec<CheckedAppend>, Vec<_>) = flush
            .into_iter()
            .map(|p| (p.checked, (p.done, p._room)))
            .unzip();
        match log.flush(&checked, None).await {
            Ok(bases) => {
                for ((done, _room), base) in waiting.into_iter().zip(bases) {
                    let _ = done.send(base);
                }
            }
            Err(e) => {
                let reason = e.to_string();
                for (done, _room) in waiting {
                    let _ = done.send(Err(ClusterError::FlushFailed(reason.clone())));
                }
            }
        }
    }
}
