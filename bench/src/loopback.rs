//! The loopback limit of this machine: what one TCP stream carries over 127.0.0.1 (iperf3).

use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::ports::free_port;

/// The loopback limit in MB/s: the best of three two-second iperf3 runs.
pub fn best_of_three() -> anyhow::Result<f64> {
    let mut best = 0.0f64;
    for _ in 0..3 {
        best = best.max(loopback_mb_s(2)?);
    }
    Ok(best)
}

/// Loopback throughput in MB/s, from iperf3.
fn loopback_mb_s(seconds: u64) -> anyhow::Result<f64> {
    let port = free_port()?;
    let mut server = Command::new("iperf3")
        .args(["-s", "-1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting iperf3 (apt-get install iperf3)")?;
    // A probe connection would be taken as the one test this server runs: wait instead.
    std::thread::sleep(Duration::from_millis(500));
    let out = Command::new("iperf3")
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ])
        .output()?;
    let _ = server.wait();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let bits = json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .context("iperf3 printed no result")?;
    Ok(bits / 8.0 / 1e6)
}
