//! Produce and consume throughput through librdkafka (confluent-kafka with batching on, from
//! the Python environment `./scripts/test` installs), driven by `bench/clients/librdkafka_perf.py`.

use std::process::Command;

/// Records the librdkafka run produces and consumes.
pub const RECORDS: u64 = 200_000;

/// Produce and consume MB/s through librdkafka (confluent-kafka, batching on), or why not.
pub fn produce_consume(addr: &str, acks: &str) -> Result<(f64, f64), String> {
    // librdkafka may hang past its own timeouts on a broker it cannot talk to; ask kcat (the
    // same library) for metadata first, which fails fast with the reason.
    let probe = Command::new("kcat")
        .args(["-b", addr, "-L", "-m", "5"])
        .output()
        .map_err(|e| format!("cannot run kcat: {e}"))?;
    if !probe.status.success() {
        let stderr = String::from_utf8_lossy(&probe.stderr);
        let reason = stderr
            .lines()
            .find(|l| l.contains("FAIL") || l.contains("ERROR"))
            .and_then(|l| l.rsplit("]: ").next())
            .unwrap_or("no metadata");
        return Err(format!("librdkafka cannot use this broker: {reason}"));
    }
    let python = std::env::var("WEIR_PYTHON").unwrap_or_else(|_| "target/py/bin/python".into());
    let topic = format!("rdkafka-{acks}");
    let out = Command::new("timeout")
        .arg("120")
        .arg(&python)
        .arg("bench/clients/librdkafka_perf.py")
        .args([addr, &topic, &RECORDS.to_string(), acks])
        .output()
        .map_err(|e| format!("cannot run {python} (./scripts/test installs it): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut numbers = stdout
        .split_whitespace()
        .filter_map(|n| n.parse::<f64>().ok());
    match (out.status.success(), numbers.next(), numbers.next()) {
        (true, Some(p), Some(c)) => Ok((p, c)),
        _ if out.status.code() == Some(124) => Err("no answer within 120 s".into()),
        _ => Err(String::from_utf8_lossy(&out.stderr)
            .trim()
            .chars()
            .take(120)
            .collect()),
    }
}
