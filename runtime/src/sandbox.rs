//! The wasmtime host: compiling and validating plugin modules, and calling them under limits.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, Linker, Memory, Module, PoolingAllocationConfig,
    Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};
use weir::columns::{self, Array, COLUMN_BYTES_MAX, Columns, Cursor, Value, layout};
use weir::{Kind, abi};
use weir_storage::Record;

use crate::Error;
use crate::output::Output;

/// The ABI versions this host speaks (see `weir::__rt::ABI_VERSION`).
pub const ABI_VERSIONS: [u32; 2] = [1, 2];

/// How often the epoch advances; deadlines are whole ticks.
const EPOCH_TICK_MS: u64 = 10;

/// Limits of every plugin call and instance.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// CPU time one call (one batch) may take before it is interrupted.
    pub call_timeout_ms: u64,
    /// Linear memory one instance may grow to.
    pub memory_bytes_max: u64,
    /// Size of a module accepted for upload.
    pub module_bytes_max: u64,
    /// Size of the `Output` one call may return.
    pub output_bytes_max: u64,
    /// Instances alive at once (slots of the pooling allocator).
    pub instances_max: u32,
    /// Where compiled modules are kept between runs; `None` compiles every time.
    pub cache_dir: Option<PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            call_timeout_ms: 100,
            memory_bytes_max: 64 << 20,
            module_bytes_max: 32 << 20,
            output_bytes_max: 32 << 20,
            instances_max: 256,
            cache_dir: None,
        }
    }
}

/// A compiled, validated plugin module.
#[derive(Clone)]
pub struct Plugin {
    module: Module,
    kind: Kind,
    sha256: String,
    abi_version: u32,
}

impl Plugin {
    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    pub fn abi_version(&self) -> u32 {
        self.abi_version
    }
}

/// The engine every plugin runs in, with a thread that advances the epoch for deadlines.
pub struct Sandbox {
    engine: Engine,
    config: SandboxConfig,
    ticker_stop: Arc<AtomicBool>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Sandbox {
    pub fn new(config: SandboxConfig) -> Result<Sandbox, Error> {
        let mut pooling = PoolingAllocationConfig::new();
        pooling
            .total_core_instances(config.instances_max)
            .total_memories(config.instances_max)
            .total_tables(config.instances_max)
            .max_memory_size(config.memory_bytes_max as usize);
        let mut wasm = Config::new();
        wasm.epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
        let engine = Engine::new(&wasm).map_err(|e| Error::Engine(e.to_string()))?;
        if let Some(dir) = &config.cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let stop = ticker_stop.clone();
        let ticking = engine.clone();
        std::thread::Builder::new()
            .name("weir-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(EPOCH_TICK_MS));
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| Error::Engine(format!("cannot start the epoch thread: {e}")))?;
        Ok(Sandbox {
            engine,
            config,
            ticker_stop,
        })
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Compiles `wasm` (or loads it from the cache) and checks it is a plugin this host can run:
    /// no imports, the ABI exports, a known ABI version and plugin kind.
    pub fn load(&self, wasm: &[u8]) -> Result<Plugin, Error> {
        if wasm.len() as u64 > self.config.module_bytes_max {
            return Err(Error::Invalid(format!(
                "module is {} bytes, more than the limit of {}",
                wasm.len(),
                self.config.module_bytes_max
            )));
        }
        if !wasm.starts_with(b"\0asm") {
            return Err(Error::Invalid(
                "not a WebAssembly module (no \\0asm magic)".into(),
            ));
        }
        let sha256 = sha256_hex(wasm);
        let cached = self.cache_path(&sha256);
        let (module, from_cache) = self.compile(wasm, cached.as_deref())?;
        match self.check(module, sha256) {
            Ok(plugin) => {
                if let (Some(path), false) = (&cached, from_cache) {
                    write_cache(&plugin.module, path);
                }
                Ok(plugin)
            }
            Err(e) => {
                // A refused module leaves nothing behind, not even an entry cached before.
                if let Some(path) = cached.filter(|_| from_cache) {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Checks a compiled module is a plugin this host can run: no imports, the ABI exports, an
    /// ABI version it speaks and a kind it knows.
    fn check(&self, module: Module, sha256: String) -> Result<Plugin, Error> {
        if let Some(import) = module.imports().next() {
            return Err(Error::Invalid(format!(
                "module imports {}.{}; plugins may import nothing (no WASI, no host functions)",
                import.module(),
                import.name()
            )));
        }
        for export in [
            "memory",
            "weir_abi_version",
            "weir_kind",
            "weir_alloc",
            "weir_init",
            "weir_process",
        ] {
            if module.get_export(export).is_none() {
                return Err(Error::Invalid(format!(
                    "module does not export `{export}`; build plugins with the weir SDK macros"
                )));
            }
        }
        let mut store = self.store();
        let instance = Linker::new(&self.engine)
            .instantiate(&mut store, &module)
            .map_err(|e| Error::Invalid(format!("module does not instantiate: {e}")))?;
        let mut call = |name: &str| -> Result<u32, Error> {
            store.set_epoch_deadline(self.deadline_ticks());
            instance
                .get_typed_func::<(), u32>(&mut store, name)
                .and_then(|f| f.call(&mut store, ()))
                .map_err(|e| Error::Invalid(format!("`{name}` failed: {e}")))
        };
        let abi_version = call("weir_abi_version")?;
        if !ABI_VERSIONS.contains(&abi_version) {
            return Err(Error::Invalid(format!(
                "module speaks plugin ABI version {abi_version}; this broker speaks {ABI_VERSIONS:?}, rebuild it with a matching weir SDK"
            )));
        }
        let kind_value = call("weir_kind")?;
        let kind = Kind::from_u32(kind_value).ok_or_else(|| {
            Error::Invalid(format!("module exports unknown plugin kind {kind_value}"))
        })?;
        Ok(Plugin {
            module,
            kind,
            sha256,
            abi_version,
        })
    }

    /// Where the compiled form of the module with this digest is cached, if anywhere.
    fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        self.config
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{sha256}.cwasm")))
    }

    /// The module, from the cache when it holds it (then `true`), else compiled.
    fn compile(&self, wasm: &[u8], cached: Option<&Path>) -> Result<(Module, bool), Error> {
        if let Some(path) = cached.filter(|path| path.exists()) {
            // SAFETY: the cache directory holds only files this host serialized from modules it
            // compiled and accepted itself (named by the sha256 of their source); a file from
            // another wasmtime version is refused by `deserialize_file` and compiled again below.
            match unsafe { Module::deserialize_file(&self.engine, path) } {
                Ok(module) => return Ok((module, true)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "compiled plugin cache entry refused")
                }
            }
        }
        let module = Module::new(&self.engine, wasm)
            .map_err(|e| Error::Invalid(format!("module does not compile: {e}")))?;
        Ok((module, false))
    }

    fn store(&self) -> Store<StoreLimits> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.config.memory_bytes_max as usize)
            .trap_on_grow_failure(true)
            .instances(1)
            .build();
        let mut store = Store::new(&self.engine, limits);
        store.limiter(|limits| limits);
        store.epoch_deadline_trap();
        store
    }

    fn deadline_ticks(&self) -> u64 {
        self.config.call_timeout_ms.div_ceil(EPOCH_TICK_MS).max(1)
    }

    /// A fresh instance of `plugin`, initialized with its params (and an aggregate's state).
    pub fn instantiate(&self, plugin: &Plugin, init: &Init) -> Result<Instance, CallError> {
        let mut store = self.store();
        let instance = Linker::new(&self.engine)
            .instantiate(&mut store, &plugin.module)
            .map_err(|e| CallError::from_wasmtime("instantiate", e))?;
        let export_error = |e: wasmtime::Error| CallError::Trap(format!("missing export: {e}"));
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or_else(|| CallError::Trap("missing export: memory".into()))?;
        let mut instance = Instance {
            memory,
            alloc: instance
                .get_typed_func(&mut store, "weir_alloc")
                .map_err(export_error)?,
            init: instance
                .get_typed_func(&mut store, "weir_init")
                .map_err(export_error)?,
            process: instance
                .get_typed_func(&mut store, "weir_process")
                .map_err(export_error)?,
            panic_message: instance
                .get_typed_func(&mut store, "weir_panic_message")
                .ok(),
            store,
            deadline_ticks: self.deadline_ticks(),
            output_bytes_max: self.config.output_bytes_max,
            abi_version: plugin.abi_version,
            builder: FlatBufferBuilder::new(),
        };
        instance.init(init)?;
        Ok(instance)
    }
}

/// What an instance is started with.
#[derive(Clone, Debug, Default)]
pub struct Init {
    pub params: Vec<(String, String)>,
    pub partitions: u32,
    pub state: Option<Vec<u8>>,
}

/// Why a call failed; the instance that failed must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("plugin ran past its deadline of {0} ms")]
    Deadline(u64),
    #[error("plugin hit its memory limit: {0}")]
    Memory(String),
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin output is invalid: {0}")]
    BadOutput(String),
    #[error("plugin failed to start: {0}")]
    Init(String),
}

impl CallError {
    fn from_wasmtime(step: &str, error: wasmtime::Error) -> CallError {
        let text = format!("{step}: {error:#}");
        match error.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => CallError::Deadline(0),
            _ if text.contains("forcing trap when growing memory") => CallError::Memory(text),
            _ => CallError::Trap(text),
        }
    }
}

/// One live instance of a plugin with its own memory.
pub struct Instance {
    store: Store<StoreLimits>,
    memory: Memory,
    alloc: TypedFunc<u32, u32>,
    init: TypedFunc<u32, u64>,
    process: TypedFunc<u32, u64>,
    panic_message: Option<TypedFunc<(), u64>>,
    deadline_ticks: u64,
    output_bytes_max: u64,
    abi_version: u32,
    builder: FlatBufferBuilder<'static>,
}

impl Instance {
    fn init(&mut self, init: &Init) -> Result<(), CallError> {
        let builder = &mut self.builder;
        builder.reset();
        let params: Vec<_> = init
            .params
            .iter()
            .map(|(k, v)| {
                let args = abi::ParamArgs {
                    key: Some(builder.create_string(k)),
                    value: Some(builder.create_string(v)),
                };
                abi::Param::create(builder, &args)
            })
            .collect();
        let params = Some(builder.create_vector(&params));
        let state = init.state.as_ref().map(|s| builder.create_vector(s));
        let root = abi::Init::create(
            builder,
            &abi::InitArgs {
                params,
                partitions: init.partitions,
                state,
            },
        );
        builder.finish(root, None);
        let answer = self.call_v1(self.init.clone(), "weir_init")?;
        if answer.is_empty() {
            Ok(())
        } else {
            Err(CallError::Init(
                String::from_utf8_lossy(&answer).into_owned(),
            ))
        }
    }

    /// Runs the plugin over `records` of `partition`; `snapshot` asks an aggregate for its state.
    pub fn process(
        &mut self,
        records: &[Record],
        partition: i32,
        snapshot: bool,
    ) -> Result<Output, CallError> {
        self.run(records, &|_| partition, snapshot, None)
    }

    /// Runs an aggregate over `records`, record `i` from input partition `partitions[i]`, then
    /// lets it close the windows `watermark` passed; answers with its state.
    pub fn aggregate(
        &mut self,
        records: &[Record],
        partitions: &[u32],
        watermark: Option<i64>,
    ) -> Result<Output, CallError> {
        let partition = |i: usize| partitions.get(i).map_or(-1, |p| *p as i32);
        self.run(records, &partition, true, watermark)
    }

    fn run(
        &mut self,
        records: &[Record],
        partition: &dyn Fn(usize) -> i32,
        snapshot: bool,
        watermark: Option<i64>,
    ) -> Result<Output, CallError> {
        if self.abi_version == 1 {
            self.run_v1(records, partition, snapshot, watermark)
        } else {
            self.run_v2(records, partition, snapshot, watermark)
        }
    }

    fn run_v1(
        &mut self,
        records: &[Record],
        partition: &dyn Fn(usize) -> i32,
        snapshot: bool,
        watermark: Option<i64>,
    ) -> Result<Output, CallError> {
        let builder = &mut self.builder;
        builder.reset();
        let records_fb: Vec<_> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let key = r.key.as_ref().map(|k| builder.create_vector(k));
                let value = r.value.as_ref().map(|v| builder.create_vector(v));
                let headers: Vec<_> = r
                    .headers
                    .iter()
                    .map(|h| {
                        let key = Some(builder.create_string(&h.key));
                        let value = h.value.as_ref().map(|v| builder.create_vector(v));
                        abi::Header::create(builder, &abi::HeaderArgs { key, value })
                    })
                    .collect();
                let headers = (!headers.is_empty()).then(|| builder.create_vector(&headers));
                let args = abi::RecordArgs {
                    offset: r.offset,
                    timestamp: r.timestamp,
                    partition: partition(i),
                    key,
                    value,
                    headers,
                };
                abi::Record::create(builder, &args)
            })
            .collect();
        let records_fb = Some(builder.create_vector(&records_fb));
        let root = abi::Batch::create(
            builder,
            &abi::BatchArgs {
                records: records_fb,
                snapshot,
                watermark: watermark.unwrap_or(i64::MIN),
            },
        );
        builder.finish(root, None);
        let answer = self.call_v1(self.process.clone(), "weir_process")?;
        crate::output::read(&answer, records.len()).map_err(CallError::BadOutput)
    }

    /// Version 2: the records as columns behind a `Batch2` envelope, written straight into
    /// guest memory; the answer read in place from guest memory.
    fn run_v2(
        &mut self,
        records: &[Record],
        partition: &dyn Fn(usize) -> i32,
        snapshot: bool,
        watermark: Option<i64>,
    ) -> Result<Output, CallError> {
        // Every array's length first, so the envelope and the room in guest memory are made
        // before a byte of the records is written.
        let (mut headers, mut blobs) = (0, [0; 4]);
        for r in records {
            blobs[0] += r.key.as_ref().map_or(0, Bytes::len);
            blobs[1] += r.value.as_ref().map_or(0, Bytes::len);
            for h in &r.headers {
                headers += 1;
                blobs[2] += h.key.len();
                blobs[3] += h.value.as_ref().map_or(0, Bytes::len);
            }
        }
        let count = records.len();
        let record_sizes = columns::sizes(count, headers, blobs);
        let sizes: [usize; 12] = std::array::from_fn(|i| match i {
            0 => count * 8,
            1 => count * 4,
            i => record_sizes[i - 2],
        });
        if sizes.iter().any(|&size| size > COLUMN_BYTES_MAX) {
            return Err(CallError::Trap(format!(
                "batch of {count} records is too large for one call"
            )));
        }
        let spans = layout(sizes, 0);
        let builder = &mut self.builder;
        builder.reset();
        let spans = builder.create_vector(&spans);
        let args = abi::Batch2Args {
            count: count as u32,
            headers: headers as u32,
            snapshot,
            watermark: watermark.unwrap_or(i64::MIN),
            spans: Some(spans),
        };
        let root = abi::Batch2::create(builder, &args);
        builder.finish(root, None);
        let envelope = builder.finished_data();
        let columns_start = 4 + envelope.len();
        let len = columns_start + sizes.iter().sum::<usize>();
        let write = |buffer: &mut [u8]| {
            let (head, mut rest) = buffer.split_at_mut(columns_start);
            head[..4].copy_from_slice(&(envelope.len() as u32).to_le_bytes());
            head[4..].copy_from_slice(envelope);
            let rooms = sizes.map(|size| {
                let (room, after) = std::mem::take(&mut rest).split_at_mut(size);
                rest = after;
                room
            });
            let [offsets, partitions, record_rooms @ ..] = rooms;
            let (mut offsets, mut partitions) = (Cursor::new(offsets), Cursor::new(partitions));
            let mut columns = Columns::over(record_rooms);
            for (i, r) in records.iter().enumerate() {
                let headers = r.headers.iter().map(|h| {
                    let value = h.value.as_deref().unwrap_or_default();
                    (h.key.as_bytes(), value)
                });
                let value = r.value.as_deref().unwrap_or_default();
                columns.push(r.key.as_deref(), Value::Bytes(value), headers, r.timestamp);
                offsets.put(&r.offset.to_le_bytes());
                partitions.put(&partition(i).to_le_bytes());
            }
        };
        let (process, alloc, memory) = (self.process.clone(), self.alloc.clone(), self.memory);
        let (address, answer_len) = call(
            &mut self.store,
            self.deadline_ticks,
            (alloc, memory),
            process,
            len,
            write,
        )
        .map_err(|e| self.explain("weir_process", e))?;
        crate::output::read_v2(
            memory.data(&self.store),
            address,
            answer_len,
            records,
            self.output_bytes_max,
        )
        .map_err(CallError::BadOutput)
    }

    /// Copies the finished builder into guest memory, calls `function` and copies its answer out.
    fn call_v1(&mut self, function: TypedFunc<u32, u64>, name: &str) -> Result<Bytes, CallError> {
        let input = self.builder.finished_data();
        let write = |buffer: &mut [u8]| buffer.copy_from_slice(input);
        let guest = (self.alloc.clone(), self.memory);
        let (address, len) = call(
            &mut self.store,
            self.deadline_ticks,
            guest,
            function,
            input.len(),
            write,
        )
        .map_err(|e| self.explain(name, e))?;
        if len as u64 > self.output_bytes_max {
            return Err(CallError::BadOutput(format!(
                "{len} bytes of output, more than the limit of {}",
                self.output_bytes_max
            )));
        }
        self.memory
            .data(&self.store)
            .get(address..address.saturating_add(len))
            .map(Bytes::copy_from_slice)
            .ok_or_else(|| {
                CallError::BadOutput(format!("answer at {address}+{len} is outside memory"))
            })
    }

    /// Turns a failed call into its reason, with the guest's panic message when there is one.
    fn explain(&mut self, name: &str, error: wasmtime::Error) -> CallError {
        match CallError::from_wasmtime(name, error) {
            CallError::Deadline(_) => CallError::Deadline(self.deadline_ticks * EPOCH_TICK_MS),
            CallError::Trap(text) => {
                let panic = self.panic_message.clone().and_then(|f| {
                    self.store.set_epoch_deadline(self.deadline_ticks);
                    let packed = f.call(&mut self.store, ()).ok()?;
                    let (address, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
                    let bytes = self
                        .memory
                        .data(&self.store)
                        .get(address..address.checked_add(len)?)?;
                    (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
                });
                CallError::Trap(panic.map_or(text.clone(), |panic| format!("{text}: {panic}")))
            }
            other => other,
        }
    }
}

/// Has `weir_alloc` (of `guest`) make room for `len` bytes, lets `write` fill them in guest
/// memory, calls `function` with `len` and answers where its answer lies: (address, length).
fn call(
    store: &mut Store<StoreLimits>,
    deadline_ticks: u64,
    (alloc, memory): (TypedFunc<u32, u32>, Memory),
    function: TypedFunc<u32, u64>,
    len: usize,
    write: impl FnOnce(&mut [u8]),
) -> wasmtime::Result<(usize, usize)> {
    let len32 = u32::try_from(len)
        .map_err(|_| wasmtime::Error::msg(format!("batch of {len} bytes is too large")))?;
    store.set_epoch_deadline(deadline_ticks);
    let address = alloc.call(&mut *store, len32)? as usize;
    let buffer = memory
        .data_mut(&mut *store)
        .get_mut(address..address.saturating_add(len))
        .ok_or_else(|| {
            wasmtime::Error::msg(format!("weir_alloc answered {address}, outside memory"))
        })?;
    write(buffer);
    let packed = function.call(&mut *store, len32)?;
    Ok(((packed >> 32) as usize, (packed & 0xffff_ffff) as usize))
}

/// Caches a compiled module that passed [`Sandbox::load`]'s checks. A cache that cannot be
/// written only costs a compile next time.
fn write_cache(module: &Module, path: &Path) {
    let written = module
        .serialize()
        .map_err(|e| e.to_string())
        .and_then(|bytes| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| e.to_string())
        });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot cache compiled plugin");
    }
}
