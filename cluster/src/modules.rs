//! The modules of deployed plugins, as objects of the store every node sees:
//! `plugins/<sha256>.wasm`. A module's key is its digest, so a module is never changed once
//! written, and deploying it again (from any node) writes the same bytes. Garbage collection
//! lists `data/` only, so it never takes a module.

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};

use crate::{ClusterError, Result, SharedLog};

/// Where the modules are kept in the store.
const MODULES_PREFIX: &str = "plugins";

fn module_key(sha256: &str) -> Result<ObjectPath> {
    let digest = sha256.len() == 64
        && sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !digest {
        return Err(ClusterError::InvalidRequest(format!(
            "{sha256:?} is no sha256 digest (64 lowercase hex digits)"
        )));
    }
    Ok(ObjectPath::from_iter([
        MODULES_PREFIX,
        &format!("{sha256}.wasm"),
    ]))
}

impl SharedLog {
    /// Keeps the module whose digest is `sha256`; the store's put is all or nothing.
    pub async fn put_module(&self, sha256: &str, wasm: Bytes) -> Result<()> {
        let key = module_key(sha256)?;
        self.store().put(&key, PutPayload::from_bytes(wasm)).await?;
        Ok(())
    }

    /// The module whose digest is `sha256`.
    pub async fn get_module(&self, sha256: &str) -> Result<Bytes> {
        let key = module_key(sha256)?;
        Ok(self.store().get(&key).await?.bytes().await?)
    }
}
