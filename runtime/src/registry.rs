//! The plugin registry: every deploy is a version (sha256 of the module plus its params) kept
//! in the tree `plugins`; the modules themselves are kept by sha256 in a [`ModuleStore`]:
//! `<data-dir>/plugin-store/<sha256>.wasm` on a single node, the object store on a cluster.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use weir_storage::{Tree, TreeSource, now_ms};

use crate::Error;
use crate::sandbox::{Plugin, Sandbox, sha256_hex};
use weir_storage::locks;

/// The tree that keeps the plugins and their versions.
pub const PLUGINS_TREE: &str = "plugins";

/// Versions kept per plugin; the oldest are forgotten (their modules stay if still in use).
pub const VERSIONS_MAX: usize = 64;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginVersion {
    pub version: u32,
    pub sha256: String,
    pub kind: String,
    pub abi_version: u32,
    pub size_bytes: u64,
    pub created_ms: i64,
    pub params: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginMeta {
    pub name: String,
    /// The version pipelines run.
    pub active: u32,
    pub versions: Vec<PluginVersion>,
}

impl PluginMeta {
    pub fn active_version(&self) -> Option<&PluginVersion> {
        self.versions.iter().find(|v| v.version == self.active)
    }
}

/// Where a registry keeps its modules, by sha256. A module is never changed once kept, so a
/// store may be shared by every node of a cluster.
pub trait ModuleStore: Send + Sync {
    /// Keeps `wasm` durably under `sha256`, its digest.
    fn put(&self, sha256: &str, wasm: &[u8]) -> Result<(), Error>;
    /// The module kept under `sha256`.
    fn get(&self, sha256: &str) -> Result<Vec<u8>, Error>;
}

/// Modules as files of one directory, `<sha256>.wasm`.
pub struct ModuleDir {
    dir: PathBuf,
}

impl ModuleDir {
    /// The modules in `dir`, made if missing.
    pub fn open(dir: PathBuf) -> Result<ModuleDir, Error> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(ModuleDir { dir })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.wasm"))
    }
}

impl ModuleStore for ModuleDir {
    fn put(&self, sha256: &str, wasm: &[u8]) -> Result<(), Error> {
        write_durably(&self.path(sha256), wasm)
    }

    fn get(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        let path = self.path(sha256);
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    }
}

pub struct Registry {
    sandbox: Arc<Sandbox>,
    tree: Tree<PluginMeta>,
    modules: Arc<dyn ModuleStore>,
    /// Bumped on every change (here, or told of by [`Registry::changed`]), so pipelines notice
    /// a new version between batches cheaply.
    generation: AtomicU64,
    /// Compiled modules by sha256.
    loaded: Mutex<HashMap<String, Plugin>>,
}

pub fn validate_plugin_name(name: &str) -> Result<(), Error> {
    let valid = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !name.starts_with('.');
    if valid {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "plugin name {name:?}: use 1 to 128 of a-z, A-Z, 0-9, '.', '_', '-', not starting with '.'"
        )))
    }
}

impl Registry {
    /// The registry kept in `trees` with its modules in `modules`.
    pub fn open_in(
        trees: &dyn TreeSource,
        modules: Arc<dyn ModuleStore>,
        sandbox: Arc<Sandbox>,
    ) -> Result<Registry, Error> {
        Ok(Registry {
            sandbox,
            tree: Tree::on(PLUGINS_TREE, trees.backend(PLUGINS_TREE)?),
            modules,
            generation: AtomicU64::new(0),
            loaded: Mutex::new(HashMap::new()),
        })
    }

    pub fn sandbox(&self) -> &Arc<Sandbox> {
        &self.sandbox
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Another node of the cluster changed the registry: pipelines read their plugins' active
    /// versions again before their next batch.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Validates and stores `wasm` as the new active version of `name`. Deploying what is already
    /// active (same module, same params) changes nothing and returns that version.
    pub fn deploy(
        &self,
        name: &str,
        wasm: &[u8],
        params: BTreeMap<String, String>,
    ) -> Result<PluginVersion, Error> {
        validate_plugin_name(name)?;
        let plugin = self.sandbox.load(wasm)?;
        let mut module_stored = false;
        // Read, changed and written as one step, so two nodes deploying at once each get a
        // version of their own.
        let (version, new) = self.tree.update(name, |meta| {
            let mut meta = meta.unwrap_or_else(|| PluginMeta {
                name: name.to_owned(),
                active: 0,
                versions: Vec::new(),
            });
            if let Some(active) = meta.active_version()
                && active.sha256 == plugin.sha256()
                && active.params == params
            {
                return Ok((None, (active.clone(), false)));
            }
            if !module_stored {
                self.modules.put(plugin.sha256(), wasm)?;
                module_stored = true;
            }
            let version = PluginVersion {
                version: meta.versions.iter().map(|v| v.version).max().unwrap_or(0) + 1,
                sha256: plugin.sha256().to_owned(),
                kind: plugin.kind().name().to_owned(),
                abi_version: plugin.abi_version(),
                size_bytes: wasm.len() as u64,
                created_ms: now_ms(),
                params: params.clone(),
            };
            meta.active = version.version;
            meta.versions.push(version.clone());
            if meta.versions.len() > VERSIONS_MAX {
                meta.versions.remove(0);
            }
            Ok::<_, Error>((Some(meta), (version, true)))
        })?;
        if new {
            locks::lock(&self.loaded).insert(plugin.sha256().to_owned(), plugin);
            self.changed();
            tracing::info!(plugin = name, version = version.version, sha256 = %version.sha256, kind = %version.kind, "plugin deployed");
        }
        Ok(version)
    }

    /// Makes `to` (default: the version before the active one) active again.
    pub fn rollback(&self, name: &str, to: Option<u32>) -> Result<PluginVersion, Error> {
        let target = self.tree.update(name, |meta| {
            let mut meta =
                meta.ok_or_else(|| Error::NotFound(format!("plugin {name} does not exist")))?;
            let target = match to {
                Some(version) => meta.versions.iter().find(|v| v.version == version),
                None => meta
                    .versions
                    .iter()
                    .filter(|v| v.version < meta.active)
                    .max_by_key(|v| v.version),
            };
            let target = target.cloned().ok_or_else(|| {
                let known: Vec<u32> = meta.versions.iter().map(|v| v.version).collect();
                Error::NotFound(format!("plugin {name} has no version {to:?} to roll back to (versions {known:?}, active {})", meta.active))
            })?;
            meta.active = target.version;
            Ok::<_, Error>((Some(meta), target))
        })?;
        self.changed();
        tracing::info!(
            plugin = name,
            version = target.version,
            "plugin rolled back"
        );
        Ok(target)
    }

    pub fn delete(&self, name: &str) -> Result<(), Error> {
        if !self.tree.remove(name)? {
            return Err(Error::NotFound(format!("plugin {name} does not exist")));
        }
        self.changed();
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<PluginMeta>, Error> {
        Ok(self.tree.all()?.into_iter().map(|(_, meta)| meta).collect())
    }

    pub fn get(&self, name: &str) -> Result<PluginMeta, Error> {
        self.tree
            .get(name)?
            .ok_or_else(|| Error::NotFound(format!("plugin {name} does not exist")))
    }

    /// The active version of `name` and its compiled module.
    pub fn active(&self, name: &str) -> Result<(PluginVersion, Plugin), Error> {
        let meta = self.get(name)?;
        let version = meta
            .active_version()
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("plugin {name} has no active version")))?;
        let plugin = self.module(&version.sha256)?;
        Ok((version, plugin))
    }

    fn module(&self, sha256: &str) -> Result<Plugin, Error> {
        if let Some(plugin) = locks::lock(&self.loaded).get(sha256) {
            return Ok(plugin.clone());
        }
        let wasm = self.modules.get(sha256)?;
        if sha256_hex(&wasm) != sha256 {
            return Err(Error::Invalid(format!(
                "module {sha256}: its content does not match its sha256"
            )));
        }
        let plugin = self.sandbox.load(&wasm)?;
        locks::lock(&self.loaded).insert(sha256.to_owned(), plugin.clone());
        Ok(plugin)
    }
}

/// Writes `bytes` to `path` through a temporary file, fsyncing the file and its directory.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    write_durably_with(path, |file| file.write_all(bytes))
}

/// Writes what `write` puts in a file to `path` through a temporary file, fsyncing the file
/// and its directory.
pub(crate) fn write_durably_with(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    let written = || -> std::io::Result<()> {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        write(&mut file)?;
        file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    written().map_err(|e| Error::io(path, e))
}
