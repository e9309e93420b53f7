//! The saved steps of pipelines that keep state (SQL pipelines, aggregating plugin chains), as
//! objects of the store every node sees: `pipelines/<pipeline>/<seq>-<unique>.step`.
//!
//! Each write gets a name of its own, which the pipeline's checkpoint keeps. A node that lost
//! a pipeline's lease and writes a step late therefore never replaces the step a checkpoint
//! names: its checkpoint is refused (it is written under the lease), and its step is left for
//! the holder to delete. Garbage collection lists `data/` only, so it never takes a step.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::{ClusterError, Result, SharedLog};

/// Where the steps of every pipeline are kept in the store.
const STEPS_PREFIX: &str = "pipelines";

/// Longest pipeline name a step's key takes, in bytes: pipeline names are at most 128.
pub const STEP_PIPELINE_BYTES_MAX: usize = 128;

fn pipeline_prefix(pipeline: &str) -> Result<ObjectPath> {
    if pipeline.is_empty()
        || pipeline.len() > STEP_PIPELINE_BYTES_MAX
        || pipeline.starts_with('.')
        || pipeline.contains('/')
    {
        return Err(ClusterError::InvalidRequest(format!(
            "pipeline name {pipeline:?}: 1 to {STEP_PIPELINE_BYTES_MAX} bytes, no '/', not \
             starting with '.'"
        )));
    }
    Ok(ObjectPath::from_iter([STEPS_PREFIX, pipeline]))
}

fn step_key(pipeline: &str, name: &str) -> Result<ObjectPath> {
    let valid = name.ends_with(".step") && !name.starts_with('.') && !name.contains('/');
    if !valid {
        return Err(ClusterError::InvalidRequest(format!(
            "{name:?} is no step name"
        )));
    }
    Ok(pipeline_prefix(pipeline)?.join(name))
}

impl SharedLog {
    /// Writes step `seq` of `pipeline` whole (a store's put is all or nothing) under a name
    /// no other write has; answers the name.
    pub async fn put_step(&self, pipeline: &str, seq: u64, bytes: Bytes) -> Result<String> {
        let name = format!("{seq:020}-{}.step", uuid::Uuid::now_v7().simple());
        let key = step_key(pipeline, &name)?;
        self.store()
            .put(&key, PutPayload::from_bytes(bytes))
            .await?;
        Ok(name)
    }

    /// The step of `pipeline` named `name`.
    pub async fn get_step(&self, pipeline: &str, name: &str) -> Result<Bytes> {
        let key = step_key(pipeline, name)?;
        Ok(self.store().get(&key).await?.bytes().await?)
    }

    /// Deletes every step of `pipeline` but the one named `keep` (all of them with `None`);
    /// answers how many it deleted.
    pub async fn delete_steps(&self, pipeline: &str, keep: Option<&str>) -> Result<usize> {
        let prefix = pipeline_prefix(pipeline)?;
        let keep = keep.map(|name| step_key(pipeline, name)).transpose()?;
        let listed: Vec<ObjectPath> = self
            .store()
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        let mut deleted = 0;
        for key in listed {
            if Some(&key) != keep.as_ref() {
                self.store().delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}
