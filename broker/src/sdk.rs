//! The plugin SDK (`weir-guest` and its macros) as this binary was built with it. `weir plugin
//! new` writes it out once into a versioned cache directory and points the new crate at it, so
//! a user with only the binary can write, test and build plugins.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use toml::{Table, Value};

use crate::error::{Error, Result, io};

const WORKSPACE_MANIFEST: &str = include_str!("../../Cargo.toml");

/// The SDK's manifests and sources, by their path inside the SDK directory.
const FILES: &[(&str, &str)] = &[
    ("Cargo.toml", include_str!("../../guest-sdk/Cargo.toml")),
    ("src/lib.rs", include_str!("../../guest-sdk/src/lib.rs")),
    ("src/__rt.rs", include_str!("../../guest-sdk/src/__rt.rs")),
    (
        "src/columns.rs",
        include_str!("../../guest-sdk/src/columns.rs"),
    ),
    (
        "src/abi_generated.rs",
        include_str!("../../guest-sdk/src/abi_generated.rs"),
    ),
    (
        "src/aggregate.rs",
        include_str!("../../guest-sdk/src/aggregate.rs"),
    ),
    (
        "src/json_field.rs",
        include_str!("../../guest-sdk/src/json_field.rs"),
    ),
    (
        "src/partition.rs",
        include_str!("../../guest-sdk/src/partition.rs"),
    ),
    (
        "src/record.rs",
        include_str!("../../guest-sdk/src/record.rs"),
    ),
    ("src/time.rs", include_str!("../../guest-sdk/src/time.rs")),
    (
        "macros/Cargo.toml",
        include_str!("../../guest-sdk/macros/Cargo.toml"),
    ),
    (
        "macros/src/lib.rs",
        include_str!("../../guest-sdk/macros/src/lib.rs"),
    ),
];

/// Where an SDK crate the SDK depends on sits inside the SDK directory.
const SDK_CRATES: &[(&str, &str)] = &[("weir-guest-macros", "macros")];

/// Whether a manifest value is `{ workspace = true, … }`: inherited from the workspace.
fn inherited(value: &Value) -> bool {
    value
        .get("workspace")
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// An SDK manifest made standalone: the fields and dependencies it inherits from the workspace
/// written in full, SDK crates found by a path inside the SDK directory, no workspace lints.
fn standalone(manifest: &str, workspace: &Table) -> Result<String> {
    let invalid = |what: String| Error::Invalid(format!("the SDK built into weir: {what}"));
    let mut doc: Table = manifest
        .parse()
        .map_err(|e| invalid(format!("a manifest does not parse: {e}")))?;
    let shared = |section: &str, key: &str| -> Result<Value> {
        workspace
            .get("workspace")
            .and_then(|w| w.get(section))
            .and_then(|s| s.get(key))
            .cloned()
            .ok_or_else(|| invalid(format!("the workspace has no {section}.{key}")))
    };
    if let Some(Value::Table(package)) = doc.get_mut("package") {
        for (key, value) in package.iter_mut() {
            if inherited(value) {
                *value = shared("package", key)?;
            }
        }
    }
    if let Some(Value::Table(dependencies)) = doc.get_mut("dependencies") {
        for (name, value) in dependencies.iter_mut() {
            if !inherited(value) {
                continue;
            }
            let mut resolved = match SDK_CRATES.iter().find(|(crate_name, _)| crate_name == name) {
                Some((_, path)) => Table::from_iter([("path".into(), Value::from(*path))]),
                None => match shared("dependencies", name)? {
                    Value::String(version) => {
                        Table::from_iter([("version".into(), Value::from(version))])
                    }
                    Value::Table(table) => table,
                    other => return Err(invalid(format!("dependency {name} is {other}"))),
                },
            };
            // What the member adds to the inherited entry (features, optional).
            if let Value::Table(own) = value {
                for (key, extra) in own.iter().filter(|(key, _)| *key != "workspace") {
                    resolved.insert(key.clone(), extra.clone());
                }
            }
            *value = Value::Table(resolved);
        }
    }
    doc.remove("lints");
    doc.remove("dev-dependencies");
    toml::to_string(&doc).map_err(|e| invalid(format!("writing a manifest: {e}")))
}

/// The SDK's files as they are written: sources as they are, manifests standalone.
fn files() -> Result<Vec<(&'static str, String)>> {
    let workspace: Table = WORKSPACE_MANIFEST
        .parse()
        .map_err(|e| Error::Invalid(format!("the workspace manifest built into weir: {e}")))?;
    FILES
        .iter()
        .map(|(path, text)| {
            let text = if path.ends_with("Cargo.toml") {
                standalone(text, &workspace)?
            } else {
                (*text).to_string()
            };
            Ok((*path, text))
        })
        .collect()
}

/// The cache directory the SDK goes in: `$XDG_CACHE_HOME/weir/sdk`, else `~/.cache/weir/sdk`.
fn cache_root() -> Result<PathBuf> {
    let base = match (std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME")) {
        (Some(cache), _) if !cache.is_empty() => PathBuf::from(cache),
        (_, Some(home)) => Path::new(&home).join(".cache"),
        _ => {
            return Err(Error::Invalid(
                "neither XDG_CACHE_HOME nor HOME is set: pass --sdk with a directory for the \
                 weir SDK"
                    .into(),
            ));
        }
    };
    Ok(base.join("weir").join("sdk"))
}

/// The SDK of this binary in the cache, written there the first time: `weir-guest-<version>-
/// <hash of its files>`, so binaries built from different sources never share a directory.
pub fn installed() -> Result<PathBuf> {
    let files = files()?;
    let mut hash = Sha256::new();
    for (path, text) in &files {
        hash.update(path.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
        hash.update([0]);
    }
    let digest: String = hash.finalize()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let root = cache_root()?;
    let dir = root.join(format!("weir-guest-{}-{digest}", env!("CARGO_PKG_VERSION")));
    if dir.is_dir() {
        return Ok(dir);
    }
    // Written whole beside it, then renamed: a directory under the final name is complete.
    let partial = root.join(format!(".partial-{}", std::process::id()));
    let write = |path: &Path, text: &str| -> Result<()> {
        std::fs::create_dir_all(path.parent().unwrap_or(&partial))
            .and_then(|()| std::fs::write(path, text))
            .map_err(io(format!("writing {}", path.display())))
    };
    for (path, text) in &files {
        write(&partial.join(path), text)?;
    }
    if let Err(e) = std::fs::rename(&partial, &dir) {
        let _ = std::fs::remove_dir_all(&partial);
        // Another `weir plugin new` wrote it at the same time.
        if !dir.is_dir() {
            return Err(io(format!("moving the SDK to {}", dir.display()))(e));
        }
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    /// Every file of the SDK's crates is built in, so the written SDK is the whole SDK.
    #[test]
    fn every_sdk_source_is_built_in() {
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-sdk");
        let mut on_disk = Vec::new();
        for dir in ["src", "macros/src"] {
            for entry in std::fs::read_dir(sdk.join(dir)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                on_disk.push(format!("{dir}/{name}"));
            }
        }
        on_disk.extend(["Cargo.toml".into(), "macros/Cargo.toml".into()]);
        on_disk.sort();
        let mut built_in: Vec<String> = FILES.iter().map(|(p, _)| p.to_string()).collect();
        built_in.sort();
        assert_eq!(built_in, on_disk);
    }

    #[test]
    fn manifests_stand_alone() {
        let files = files().unwrap();
        let manifest = &files.iter().find(|(p, _)| *p == "Cargo.toml").unwrap().1;
        assert!(!manifest.contains("workspace"), "{manifest}");
        let doc: Table = manifest.parse().unwrap();
        assert_eq!(doc["package"]["name"].as_str(), Some("weir-guest"));
        assert_eq!(
            doc["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(
            doc["dependencies"]["weir-guest-macros"]["path"].as_str(),
            Some("macros")
        );
        assert!(
            doc["dependencies"]["serde"]["version"].is_str(),
            "{manifest}"
        );
    }
}
