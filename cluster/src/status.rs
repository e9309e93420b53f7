//! What `weir cluster status` shows of the cluster as one node sees it: the live leases and
//! their holders, and whether the database and the object store answer it.

use std::time::{Duration, Instant};

use object_store::ObjectStoreExt;
use object_store::path::Path as ObjectPath;

pub use crate::lease::LeaseRow;
use crate::{Result, SharedLog};

/// Most leases one status lists; the count says how many there are in all.
pub const LEASES_LISTED_MAX: i64 = 1000;

/// Longest a probe of the database or the store waits for its answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The key the store probe asks for. No object has it: a store that answers "not found"
/// answers.
const PROBE_KEY: &str = "weir-probe";

/// Whether a service answered one request, and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Why it did not answer; `None` when it did.
    pub error: Option<String>,
    pub latency_ms: f64,
}

impl SharedLog {
    /// The live leases by name, at most [`LEASES_LISTED_MAX`], and how many there are.
    pub async fn leases(&self) -> Result<(Vec<LeaseRow>, i64)> {
        let total: i64 = self
            .db()
            .await?
            .query_one(
                "SELECT count(*) FROM weir.leases WHERE expires_at > now()",
                &[],
            )
            .await?
            .get(0);
        let leases = self.live_leases("", Some(LEASES_LISTED_MAX)).await?;
        Ok((leases, total))
    }

    /// One round trip to the database through the node's connection.
    pub async fn probe_database(&self) -> Probe {
        probe(async {
            self.db().await?.query_one("SELECT 1", &[]).await?;
            Ok(())
        })
        .await
    }

    /// One request to the object store: the metadata of a key no object has.
    pub async fn probe_store(&self) -> Probe {
        probe(async {
            match self.store().head(&ObjectPath::from(PROBE_KEY)).await {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }
}

async fn probe(ask: impl Future<Output = Result<()>>) -> Probe {
    let started = Instant::now();
    let error = match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e.to_string()),
        Err(_) => Some(format!("no answer within {PROBE_TIMEOUT:?}")),
    };
    Probe {
        error,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
    }
}
