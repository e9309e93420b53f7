//! Node-wide bounds on what clients can make the listeners hold: Kafka, HTTP and Postgres
//! connections and the memory of request frames being read or handled. Each bound and its use is a gauge on
//! `/metrics`, beside the storage and group bounds.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Postgres connections held at once, as Postgres's own default `max_connections`: each holds
/// a copy of the SQL session state.
pub const PG_CONNECTIONS_MAX: usize = 100;

pub struct Limits {
    request_memory: Arc<Semaphore>,
    request_memory_bytes_max: u64,
    connections_max: u32,
    http_connections_max: u32,
    pg_connections: Arc<Semaphore>,
}

/// Memory of request frames held on behalf of one request; given back when dropped.
pub struct RequestMemory(Option<OwnedSemaphorePermit>);

impl RequestMemory {
    pub fn none() -> Self {
        RequestMemory(None)
    }

    fn add(&mut self, more: OwnedSemaphorePermit) {
        match &mut self.0 {
            Some(held) => held.merge(more),
            None => self.0 = Some(more),
        }
    }
}

impl Limits {
    pub fn new(
        request_memory_bytes_max: u64,
        connections_max: u32,
        http_connections_max: u32,
    ) -> Limits {
        let permits = usize::try_from(request_memory_bytes_max)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        Limits {
            request_memory: Arc::new(Semaphore::new(permits)),
            request_memory_bytes_max: permits as u64,
            connections_max,
            http_connections_max,
            pg_connections: Arc::new(Semaphore::new(PG_CONNECTIONS_MAX)),
        }
    }

    /// A Postgres connection's slot, held while it is open; `None` when all are taken.
    pub fn pg_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.pg_connections.clone().try_acquire_owned().ok()
    }

    /// Postgres connections open now.
    pub fn pg_connections(&self) -> usize {
        PG_CONNECTIONS_MAX - self.pg_connections.available_permits()
    }

    /// Waits until `bytes` more of request memory are free and adds them to `held`. A request
    /// larger than all of it takes all of it.
    pub async fn hold_request_memory(&self, held: &mut RequestMemory, bytes: u32) {
        let bytes = u64::from(bytes).min(self.request_memory_bytes_max) as u32;
        // The semaphore is never closed, so acquiring fails only if it were.
        if let Ok(permit) = self.request_memory.clone().acquire_many_owned(bytes).await {
            held.add(permit);
        }
    }

    pub fn request_memory_bytes_max(&self) -> u64 {
        self.request_memory_bytes_max
    }

    pub fn request_memory_bytes(&self) -> u64 {
        self.request_memory_bytes_max - self.request_memory.available_permits() as u64
    }

    pub fn connections_max(&self) -> u32 {
        self.connections_max
    }

    pub fn http_connections_max(&self) -> u32 {
        self.http_connections_max
    }
}
