//! The disk's own figure for a write pattern: `dd` into a given directory.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

/// MB/s of `dd` writing `total_bytes` of zeros in `block`-byte writes to a file in `dir`;
/// `per_write_sync` uses `oflag=dsync` (an fdatasync per write), otherwise one
/// `conv=fdatasync` at the end.
pub fn dd_mb_s(
    dir: &Path,
    block: u64,
    total_bytes: u64,
    per_write_sync: bool,
) -> anyhow::Result<f64> {
    let file = dir.join("dd.out");
    let count = (total_bytes / block).max(1);
    let mut cmd = Command::new("dd");
    cmd.arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .arg(format!("bs={block}"))
        .arg(format!("count={count}"))
        .arg(if per_write_sync {
            "oflag=dsync"
        } else {
            "conv=fdatasync"
        })
        .arg("status=none");
    let start = Instant::now();
    let status = cmd.status().context("running dd")?;
    let elapsed = start.elapsed();
    if !status.success() {
        bail!("dd failed: {status}");
    }
    std::fs::remove_file(&file)?;
    Ok((block * count) as f64 / 1e6 / elapsed.as_secs_f64())
}
