//! Pipelines on a cluster node. Their specs, their checkpoints and the plugin registry are rows
//! of `weir.meta`, their saved steps and the plugins' modules objects of the store, and each runs on the node holding its lease
//! `pipeline:<name>`: that node's turn at it. Every write a turn makes (appends to the
//! cluster's topics, checkpoints) is fenced by the lease, so a node that lost it writes
//! nothing, and the node taking it over reads everything its holder committed.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use weir_cluster::{Append, ClusterError, Lease};
use weir_runtime::continuous::StepStore;
use weir_runtime::{Error as RuntimeError, ModuleStore, PipelineHome, Turn, Turns};
use weir_storage::{
    PartitionSize, PartitionSource, StorageError, TopicMeta, Topics, TreeBackend, TreeSource, locks,
};

use super::{ClusterLogs, ClusterTree, forget_lost, storage_error};
use crate::kafka::record_count;

/// How long a pipeline's lease runs past its last renewal (once a third of it has passed): a
/// node that dies holds its pipelines up for at most this long.
const PIPELINE_LEASE_MS: u64 = 10_000;

fn pipeline_lease(pipeline: &str) -> String {
    format!("pipeline:{pipeline}")
}

/// What went wrong in the cluster, as the runtime reports it.
fn runtime_error(what: &str, e: ClusterError) -> RuntimeError {
    RuntimeError::Storage(StorageError::SharedMeta {
        tree: what.to_string(),
        reason: e.to_string(),
    })
}

impl ClusterLogs {
    /// Where the pipelines of this cluster node live.
    pub(crate) fn pipeline_home(self: &Arc<Self>) -> PipelineHome {
        PipelineHome {
            topics: self.clone(),
            trees: Arc::new(ClusterTrees {
                logs: self.clone(),
                fence: None,
            }),
            turns: Arc::new(ClusterTurns { logs: self.clone() }),
            modules: Arc::new(StoreModules { logs: self.clone() }),
        }
    }

    /// Renews, in one statement, the pipeline leases this node holds that a third of their term
    /// has passed since their last renewal; those lost are forgotten, so their pipelines stop
    /// before their next step.
    pub(super) async fn renew_pipelines(&self) {
        let mut leases: Vec<Lease> = locks::lock(&self.pipelines)
            .values()
            .filter(|l| l.renewal_due())
            .cloned()
            .collect();
        let lost = match self.log.renew_all(&mut leases).await {
            Ok(lost) => lost,
            Err(e) => {
                tracing::warn!(error = %e, "renewing pipeline leases failed");
                return;
            }
        };
        let mut held = locks::lock(&self.pipelines);
        forget_lost(&mut held, lost, |l| l, "another node may run its pipeline");
    }

    /// Gives back every pipeline lease this node holds, as it stops.
    pub(super) async fn release_pipelines(&self) {
        let held: Vec<Lease> = locks::lock(&self.pipelines)
            .drain()
            .map(|(_, l)| l)
            .collect();
        if let Err(e) = self.log.release_all(&held).await {
            tracing::warn!(error = %e, "giving the pipeline leases back failed");
        }
    }
}

/// The turns of a cluster node: the pipeline leases it holds.
struct ClusterTurns {
    logs: Arc<ClusterLogs>,
}

impl ClusterTurns {
    fn turn(&self, lease: Lease) -> Turn {
        Turn {
            topics: Arc::new(FencedTopics {
                logs: self.logs.clone(),
                lease: lease.clone(),
            }),
            trees: Arc::new(ClusterTrees {
                logs: self.logs.clone(),
                fence: Some(lease),
            }),
            steps: Arc::new(StoreSteps {
                logs: self.logs.clone(),
            }),
        }
    }
}

impl Turns for ClusterTurns {
    fn take(&self, pipeline: &str) -> Result<Option<Turn>, RuntimeError> {
        let name = pipeline_lease(pipeline);
        let held = locks::lock(&self.logs.pipelines).get(&name).cloned();
        if let Some(lease) = held.filter(Lease::is_current) {
            return Ok(Some(self.turn(lease)));
        }
        let taken = self
            .logs
            .block_on(self.logs.log.acquire(&name, PIPELINE_LEASE_MS))
            .map_err(|e| runtime_error("leases", e))?;
        Ok(taken.map(|lease| {
            tracing::info!(
                pipeline,
                epoch = lease.epoch(),
                "this node runs the pipeline"
            );
            locks::lock(&self.logs.pipelines).insert(name, lease.clone());
            self.turn(lease)
        }))
    }

    fn holds(&self, pipeline: &str) -> bool {
        locks::lock(&self.logs.pipelines)
            .get(&pipeline_lease(pipeline))
            .is_some_and(Lease::is_current)
    }

    fn give_back(&self, pipeline: &str) {
        let held = locks::lock(&self.logs.pipelines).remove(&pipeline_lease(pipeline));
        if let Some(lease) = held
            && let Err(e) = self.logs.block_on(self.logs.log.release(lease))
        {
            tracing::warn!(pipeline, error = %e, "giving the pipeline's lease back failed; it lapses");
        }
    }
}

/// The cluster's topics as a turn writes them: each append is one flush of its own, fenced by
/// the pipeline's lease.
#[derive(Debug)]
struct FencedTopics {
    logs: Arc<ClusterLogs>,
    lease: Lease,
}

impl Topics for FencedTopics {
    fn list_topics(&self) -> Result<Vec<TopicMeta>, StorageError> {
        self.logs.list_topics()
    }

    fn topic(&self, name: &str) -> Result<Option<TopicMeta>, StorageError> {
        Topics::topic(&*self.logs, name)
    }

    fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<dyn PartitionSource>, StorageError> {
        self.logs.partition(topic, partition)
    }

    fn partition_sizes(
        &self,
        topic: &TopicMeta,
    ) -> Result<Vec<(u32, PartitionSize)>, StorageError> {
        self.logs.partition_sizes(topic)
    }

    fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        configs: BTreeMap<String, String>,
    ) -> Result<TopicMeta, StorageError> {
        Topics::create_topic(&*self.logs, name, partitions, configs)
    }

    fn delete_topic(&self, name: &str) -> Result<(), StorageError> {
        Topics::delete_topic(&*self.logs, name)
    }

    fn batch_bytes_max(&self, topic: &str) -> Result<u64, StorageError> {
        Topics::batch_bytes_max(&*self.logs, topic)
    }

    fn append(&self, topic: &str, partition: u32, batches: Bytes) -> Result<u64, StorageError> {
        let log = &self.logs.log;
        let (bytes, count) = (batches.len() as u64, record_count(&batches));
        let append = Append {
            topic: topic.to_string(),
            partition,
            batches,
        };
        let flushed = self.logs.block_on(async {
            let checked = log.check(append).await?;
            let mut answers = log.flush(&[checked], Some(&self.lease)).await?;
            answers.remove(0)
        });
        let base = flushed.map_err(|e| storage_error(e, topic, partition))?;
        // Counted as any append is, where it was made.
        self.logs.metrics.produced(topic, bytes, count);
        Ok(base)
    }
}

/// The cluster's metadata trees (`weir.meta`); a turn's writes are fenced by its lease.
struct ClusterTrees {
    logs: Arc<ClusterLogs>,
    fence: Option<Lease>,
}

impl TreeSource for ClusterTrees {
    fn backend(&self, name: &str) -> Result<Arc<dyn TreeBackend>, StorageError> {
        Ok(Arc::new(ClusterTree {
            log: self.logs.log.clone(),
            runtime: self.logs.runtime.clone(),
            tree: name.to_string(),
            fence: self.fence.clone(),
        }))
    }
}

/// Saved steps as objects of the cluster's store, each write under a name of its own.
struct StoreSteps {
    logs: Arc<ClusterLogs>,
}

impl StepStore for StoreSteps {
    fn write(&self, pipeline: &str, seq: u64, parts: &[&[u8]]) -> Result<String, RuntimeError> {
        let bytes = Bytes::from(parts.concat());
        self.logs
            .block_on(self.logs.log.put_step(pipeline, seq, bytes))
            .map_err(|e| runtime_error("steps", e))
    }

    fn read(&self, pipeline: &str, name: &str) -> Result<Vec<u8>, RuntimeError> {
        let bytes = self
            .logs
            .block_on(self.logs.log.get_step(pipeline, name))
            .map_err(|e| runtime_error("steps", e))?;
        Ok(bytes.to_vec())
    }

    fn keep_only(&self, pipeline: &str, name: &str) {
        let deleted = self
            .logs
            .block_on(self.logs.log.delete_steps(pipeline, Some(name)));
        if let Err(e) = deleted {
            tracing::warn!(pipeline, error = %e, "cannot delete old saved steps");
        }
    }

    fn remove(&self, pipeline: &str) -> Result<(), RuntimeError> {
        self.logs
            .block_on(self.logs.log.delete_steps(pipeline, None))
            .map(drop)
            .map_err(|e| runtime_error("steps", e))
    }
}

/// Plugin modules as objects of the cluster's store, so a plugin deployed through any node runs
/// on every node.
struct StoreModules {
    logs: Arc<ClusterLogs>,
}

impl ModuleStore for StoreModules {
    fn put(&self, sha256: &str, wasm: &[u8]) -> Result<(), RuntimeError> {
        let wasm = Bytes::copy_from_slice(wasm);
        self.logs
            .block_on(self.logs.log.put_module(sha256, wasm))
            .map_err(|e| runtime_error("plugin modules", e))
    }

    fn get(&self, sha256: &str) -> Result<Vec<u8>, RuntimeError> {
        let wasm = self
            .logs
            .block_on(self.logs.log.get_module(sha256))
            .map_err(|e| runtime_error("plugin modules", e))?;
        Ok(wasm.to_vec())
    }
}
