//! Deploy by dropping a file: `<data-dir>/plugins/NAME.wasm` becomes (a new version of) plugin
//! `NAME`, with params from `NAME.params` (`key=value` lines) when that file exists. A module
//! that is refused leaves its reason in `NAME.error`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use crate::Error;
use crate::registry::Registry;

/// A file is deployed once it has not changed for this long (a copy in progress is not read).
const SETTLE_MS: u64 = 200;

/// Watches `dir` until the returned watcher is dropped.
pub fn watch_plugin_dir(
    dir: &Path,
    registry: Arc<Registry>,
) -> Result<notify::RecommendedWatcher, Error> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (events, receiver) = mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            for path in event.paths {
                let _ = events.send(path);
            }
        }
    })
    .map_err(|e| Error::Engine(format!("cannot watch {}: {e}", dir.display())))?;
    watcher
        .watch(dir, RecursiveMode::NonRecursive)
        .map_err(|e| Error::Engine(format!("cannot watch {}: {e}", dir.display())))?;
    // Files dropped while the broker was down.
    let existing: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect();
    std::thread::Builder::new()
        .name("weir-plugin-dir".into())
        .spawn(move || settle_and_deploy(&receiver, existing, &registry))
        .map_err(|e| Error::Engine(format!("cannot start the plugin directory thread: {e}")))?;
    Ok(watcher)
}

/// The `NAME.wasm` a changed path stands for (a changed `NAME.params` redeploys `NAME.wasm`).
fn module_of(path: &Path) -> Option<PathBuf> {
    match path.extension()?.to_str()? {
        "wasm" => Some(path.to_path_buf()),
        "params" => Some(path.with_extension("wasm")),
        _ => None,
    }
}

fn settle_and_deploy(
    receiver: &mpsc::Receiver<PathBuf>,
    existing: Vec<PathBuf>,
    registry: &Registry,
) {
    let mut pending: HashMap<PathBuf, Instant> = existing
        .iter()
        .filter_map(|p| module_of(p))
        .map(|p| (p, Instant::now()))
        .collect();
    loop {
        match receiver.recv_timeout(Duration::from_millis(SETTLE_MS / 2)) {
            Ok(path) => {
                if let Some(module) = module_of(&path) {
                    pending.insert(module, Instant::now());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The watcher was dropped: the broker is shutting down.
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let settled: Vec<PathBuf> = pending
            .iter()
            .filter(|(_, changed)| changed.elapsed() >= Duration::from_millis(SETTLE_MS))
            .map(|(path, _)| path.clone())
            .collect();
        for path in settled {
            pending.remove(&path);
            if path.exists() {
                deploy_file(&path, registry);
            }
        }
    }
}

fn deploy_file(path: &Path, registry: &Registry) {
    let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
        return;
    };
    let error_path = path.with_extension("error");
    let result = std::fs::read(path)
        .map_err(|e| Error::io(path, e))
        .and_then(|wasm| Ok((wasm, read_params(&path.with_extension("params"))?)))
        .and_then(|(wasm, params)| registry.deploy(name, &wasm, params));
    match result {
        Ok(version) => {
            tracing::info!(plugin = name, version = version.version, path = %path.display(), "deployed from the plugin directory");
            let _ = std::fs::remove_file(&error_path);
        }
        Err(e) => {
            tracing::warn!(plugin = name, path = %path.display(), error = %e, "plugin file refused");
            // Written whole, then renamed: whoever sees the file sees the reason.
            let partial = path.with_extension("error.partial");
            let written = std::fs::write(&partial, format!("{e}\n"))
                .and_then(|()| std::fs::rename(&partial, &error_path));
            if let Err(write) = written {
                tracing::warn!(path = %error_path.display(), error = %write, "cannot write the refusal reason");
            }
        }
    }
}

/// `key=value` lines; blank lines and `#` comments are skipped. A missing file is no params.
pub fn read_params(path: &Path) -> Result<BTreeMap<String, String>, Error> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            parse_param(line).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
        })
        .collect()
}

/// One `key=value`.
pub fn parse_param(text: &str) -> Result<(String, String), Error> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.to_owned()))
        }
        _ => Err(Error::Invalid(format!(
            "parameter {text:?}: expected key=value"
        ))),
    }
}
