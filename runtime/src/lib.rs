//! `weir-runtime`: the WebAssembly host of Weir.
//!
//! - [`Sandbox`] holds the wasmtime engine (cranelift, pooling allocator, compiled modules cached
//!   on disk) and the limits: a CPU deadline per call through epoch interruption, a memory cap
//!   per instance through `StoreLimits`, a bound on output size. [`Sandbox::load`] validates a
//!   module (no imports, the ABI exports, a known ABI version and kind); an [`Instance`] runs one
//!   batch per call through the flatbuffers ABI of `weir-guest`. A failed call is a
//!   [`CallError`]; the instance is dropped and made again.
//! - [`Registry`] keeps every deployed version (sha256, kind, params) in the metadata store and
//!   the modules in a [`ModuleStore`] (`<data-dir>/plugin-store/` on a single node);
//!   [`watch_plugin_dir`] deploys files dropped into `<data-dir>/plugins/`.
//! - [`Pipelines`] runs each pipeline (input topic → plugins → output topics) as a tokio task
//!   whose steps run on the blocking pool; [`pipeline`] explains how a step appends exactly once.
//!
//! Architecture invariant: this crate builds on `weir-storage` and `weir-guest` and never opens a
//! socket; the broker exposes it over HTTP and the CLI.

pub mod continuous;
pub mod output;
pub mod parallel;
pub mod pipeline;
mod pipelines;
mod registry;
mod sandbox;
mod watch;
pub mod watermark;
mod windowed;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use weir_storage::locks;

pub use output::{OutRecord, Output};
pub use pipeline::{Checkpoint, PipelineSpec, StartAt};
pub use pipelines::{
    EveryTurn, Owner, PIPELINES_MAX, PIPELINES_TREE, PipelineHome, PipelineStatus, Pipelines,
    Rights, Turn, Turns,
};
pub use registry::{
    ModuleDir, ModuleStore, PLUGINS_TREE, PluginMeta, PluginVersion, Registry, VERSIONS_MAX,
    validate_plugin_name,
};
pub use sandbox::{
    ABI_VERSIONS, CallError, Init, Instance, Plugin, Sandbox, SandboxConfig, sha256_hex,
};
pub use watch::{parse_param, read_params, watch_plugin_dir};
pub use weir::{Kind, partition_for_key};
use weir_storage::{BatchError, Storage, StorageError, TreeSource};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something a user sent that cannot be accepted, with the reason.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("wasm engine: {0}")]
    Engine(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Batch(#[from] BatchError),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The registry, the pipelines and the plugin directory of one broker.
pub struct Runtime {
    registry: Arc<Registry>,
    /// The trees of the pipeline home: the node's metadata store, or the cluster's.
    trees: Arc<dyn TreeSource>,
    pipelines: Arc<Pipelines>,
    watcher: Mutex<Option<notify::RecommendedWatcher>>,
    plugin_dir: PathBuf,
}

impl Runtime {
    /// Opens the registry and the pipelines of the node's own storage; compiled modules are
    /// cached in `<data-dir>/plugin-cache`.
    pub fn open(storage: Arc<Storage>, config: SandboxConfig) -> Result<Runtime, Error> {
        Runtime::open_with(storage, config, None)
    }

    /// [`Runtime::open`] with the registry and the pipelines in `home` (a cluster's), or in
    /// the node's own storage without one.
    pub fn open_with(
        storage: Arc<Storage>,
        mut config: SandboxConfig,
        home: Option<PipelineHome>,
    ) -> Result<Runtime, Error> {
        config
            .cache_dir
            .get_or_insert_with(|| storage.data_dir().join("plugin-cache"));
        let sandbox = Arc::new(Sandbox::new(config)?);
        let plugin_dir = storage.data_dir().join("plugins");
        let home = match home {
            Some(home) => home,
            None => {
                let modules = ModuleDir::open(storage.data_dir().join("plugin-store"))?;
                let turn = Turn {
                    topics: storage.clone(),
                    trees: Arc::new(storage.meta().clone()),
                    steps: Arc::new(continuous::StepDir::new(
                        storage.data_dir().join(continuous::STEPS_DIR),
                    )),
                };
                PipelineHome {
                    topics: turn.topics.clone(),
                    trees: turn.trees.clone(),
                    turns: Arc::new(EveryTurn(turn)),
                    modules: Arc::new(modules),
                }
            }
        };
        let registry = Arc::new(Registry::open_in(
            &*home.trees,
            home.modules.clone(),
            sandbox,
        )?);
        let trees = home.trees.clone();
        let pipelines = Pipelines::open(home, registry.clone())?;
        Ok(Runtime {
            registry,
            trees,
            pipelines,
            watcher: Mutex::new(None),
            plugin_dir,
        })
    }

    /// Starts the stored pipelines and the plugin directory watcher; call inside a tokio runtime.
    pub fn start(&self) -> Result<(), Error> {
        *locks::lock(&self.watcher) =
            Some(watch_plugin_dir(&self.plugin_dir, self.registry.clone())?);
        self.pipelines.start_all()
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Where the node keeps what every node of a cluster shares: the trees of its pipeline
    /// home.
    pub fn trees(&self) -> &Arc<dyn TreeSource> {
        &self.trees
    }

    pub fn pipelines(&self) -> &Arc<Pipelines> {
        &self.pipelines
    }

    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    /// Deletes a plugin no pipeline uses.
    pub fn delete_plugin(&self, name: &str) -> Result<(), Error> {
        let users = self.pipelines.users_of(name)?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "plugin {name} is used by pipelines {users:?}; delete them first"
            )));
        }
        self.registry.delete(name)
    }

    pub async fn shutdown(&self) {
        locks::lock(&self.watcher).take();
        self.pipelines.shutdown().await;
    }
}
