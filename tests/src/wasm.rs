//! Building plugins to WebAssembly for tests: the ready-made ones of `plugins/`, and crates a
//! test writes itself against the SDK. Everything is built with the `plugin` profile into
//! `target/wasm` (`target/wasm-abi-v1` for plugin ABI version 1), shared by all tests (cargo's lock serializes concurrent builds).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The root of the workspace.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The plugin ABI a module is built to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Abi {
    /// The SDK's default, version 2.
    Current,
    /// Version 1, the SDK's `abi-v1` feature, built into its own target directory so the two
    /// builds of one plugin never overwrite each other.
    V1,
}

fn cargo_build(dir: &Path, package: &str, abi: Abi) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir = workspace_dir().join("target").join(match abi {
        Abi::Current => "wasm",
        Abi::V1 => "wasm-abi-v1",
    });
    let features: &[&str] = match abi {
        Abi::Current => &[],
        Abi::V1 => &["--features", "weir/abi-v1"],
    };
    let output = Command::new(cargo)
        .current_dir(dir)
        .args([
            "build",
            "--quiet",
            "--profile",
            "plugin",
            "--target",
            "wasm32-unknown-unknown",
            "-p",
            package,
        ])
        .args(features)
        .arg("--target-dir")
        .arg(&target_dir)
        // Flags meant for the host build (coverage, sanitizers) do not apply to wasm.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "building plugin {package} to wasm failed (is the wasm32-unknown-unknown target installed? \
             `rustup target add wasm32-unknown-unknown`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let file = target_dir
        .join("wasm32-unknown-unknown/plugin")
        .join(format!("{}.wasm", package.replace('-', "_")));
    Ok(file)
}

/// Builds the ready-made plugin `plugins/<name>` and returns the path of its module.
pub fn plugin_wasm(name: &str) -> anyhow::Result<PathBuf> {
    plugin_wasm_for(name, Abi::Current)
}

/// Builds the ready-made plugin `plugins/<name>` to speak plugin ABI `abi`.
pub fn plugin_wasm_for(name: &str, abi: Abi) -> anyhow::Result<PathBuf> {
    cargo_build(&workspace_dir(), name, abi)
}

/// Builds a plugin crate made of `lib_rs` (depending on `weir` and `serde`) and returns its module.
/// The crate lives under `target/test-plugins/<name>`.
pub fn build_plugin_source(name: &str, lib_rs: &str) -> anyhow::Result<PathBuf> {
    build_plugin_source_for(name, lib_rs, Abi::Current)
}

/// [`build_plugin_source`], the module speaking plugin ABI `abi`.
pub fn build_plugin_source_for(name: &str, lib_rs: &str, abi: Abi) -> anyhow::Result<PathBuf> {
    let workspace = workspace_dir();
    let dir = workspace.join("target").join("test-plugins").join(name);
    std::fs::create_dir_all(dir.join("src"))?;
    let sdk = workspace.join("guest-sdk");
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\nweir = {{ package = \"weir-guest\", path = {sdk:?} }}\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
         [profile.plugin]\ninherits = \"release\"\nstrip = true\npanic = \"abort\"\n\n\
         # Not a member of the Weir workspace it sits in.\n[workspace]\n"
    );
    write_if_changed(&dir.join("Cargo.toml"), &manifest)?;
    write_if_changed(&dir.join("src/lib.rs"), lib_rs)?;
    // Share the workspace's lock file so the same dependency versions are used offline.
    let lock = workspace.join("Cargo.lock");
    if lock.exists() && !dir.join("Cargo.lock").exists() {
        std::fs::copy(&lock, dir.join("Cargo.lock"))?;
    }
    cargo_build(&dir, name, abi)
}

/// Keeps the modification time (and so cargo's fingerprint) when nothing changed.
fn write_if_changed(path: &Path, text: &str) -> anyhow::Result<()> {
    if std::fs::read_to_string(path).ok().as_deref() != Some(text) {
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// A module with every export of plugin ABI `abi_version`, a filter, whose `weir_process`
/// (param i32, result i64) has the body `process`: for hostile-plugin tests.
pub fn abi_module(abi_version: u32, process: &str) -> anyhow::Result<Vec<u8>> {
    Ok(wat::parse_str(format!(
        r#"(module
            (memory (export "memory") 2)
            (func (export "weir_abi_version") (result i32) i32.const {abi_version})
            (func (export "weir_kind") (result i32) i32.const 1)
            (func (export "weir_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "weir_init") (param i32) (result i64) i64.const 0)
            (func (export "weir_process") (param i32) (result i64) {process}))"#
    ))?)
}

/// Bodies of `weir_process` that misbehave, by name, for [`abi_module`].
pub const HOSTILE_BODIES: [(&str, &str); 4] = [
    ("loop", "(loop $forever br $forever) i64.const 0"),
    (
        "memory-bomb",
        "(loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) i64.const 0",
    ),
    ("trap", "unreachable"),
    ("huge-output", "i64.const 0x7fffffff"),
];
