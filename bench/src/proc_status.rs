//! Memory figures of a process, from `/proc/<pid>/status`.

/// Field `field` (`VmRSS`, `VmHWM`, …) of process `pid` (`"self"` for this one) in MiB; 0 when
/// the file or the field is missing.
pub fn memory_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}
