//! Per-log configuration, read from Kafka-style topic config keys.

use std::collections::BTreeMap;

use crate::error::{Result, StorageError};

/// When appended bytes are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// An append returns once its bytes are on disk; concurrent appends share one fsync.
    Always,
    /// Appends return once written to the page cache; a flush runs at least every `ms`.
    Interval { ms: u64 },
}

/// What retention does with old data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

/// Which timestamp a batch keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// Settings of one partition log. Field names follow the Kafka topic config they come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: the active segment rolls before it would grow past this.
    pub segment_bytes: u64,
    /// `segment.ms`: the active segment rolls once it is this old. At most `i64::MAX`, as every
    /// millisecond setting here.
    pub segment_ms: u64,
    /// `index.interval.bytes`: log bytes between two offset index entries.
    pub index_interval_bytes: u64,
    /// `segment.index.bytes`: size an index file is preallocated to; a full index rolls.
    pub index_bytes_max: u64,
    /// `retention.ms`: closed segments whose newest record is older are deleted; `None` keeps all.
    pub retention_ms: Option<u64>,
    /// `retention.bytes`: oldest closed segments are deleted while the log is larger.
    pub retention_bytes: Option<u64>,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long compaction keeps tombstones.
    pub delete_retention_ms: u64,
    /// `max.message.bytes`: largest batch accepted.
    pub batch_bytes_max: u64,
    /// `message.timestamp.type`.
    pub timestamp_type: TimestampType,
    /// `flush.policy` (`always` or `interval`) with `flush.ms`.
    pub flush_policy: FlushPolicy,
    /// `delivery.delay.ms`: records produced to the topic become visible this long after they
    /// arrive ([`crate::delay`]); 0 delivers at once.
    pub delivery_delay_ms: u64,
    /// `delivery.delay.max.ms`: the furthest ahead a record may ask to be delivered.
    pub delivery_delay_max_ms: u64,
}

/// Largest `segment.bytes` accepted: positions in the index are `u32`.
pub const SEGMENT_BYTES_MAX: u64 = u32::MAX as u64;
/// Smallest `segment.bytes` accepted, so a segment holds at least one header.
pub const SEGMENT_BYTES_MIN: u64 = 1024;
/// Bounds of `segment.index.bytes`. Index files grow on demand up to it, so the upper bound
/// caps a segment's index, not what an empty partition costs.
pub const SEGMENT_INDEX_BYTES_MIN: u64 = 4096;
pub const SEGMENT_INDEX_BYTES_MAX: u64 = 1 << 30;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            index_bytes_max: 10 << 20,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            cleanup_policy: CleanupPolicy {
                delete: true,
                compact: false,
            },
            delete_retention_ms: 24 * 3600 * 1000,
            batch_bytes_max: 1_048_588,
            timestamp_type: TimestampType::CreateTime,
            flush_policy: FlushPolicy::Always,
            delivery_delay_ms: 0,
            delivery_delay_max_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// A topic config key another layer owns: storage keeps its value with the topic and never
/// reads it; the owner checks it, on every path that sets a topic's configs.
#[derive(Clone, Debug)]
pub struct LayerKey {
    pub name: &'static str,
    /// The default as DescribeConfigs shows it.
    pub default: &'static str,
    /// Checks the key's value; it sees all of the topic's entries, for keys that go together.
    pub check: fn(value: &str, entries: &BTreeMap<String, String>) -> Result<(), String>,
}

/// Every topic config key this crate understands, with its default rendered as Kafka shows it.
pub fn known_keys() -> Vec<(&'static str, String)> {
    let d = LogConfig::default();
    vec![
        ("segment.bytes", d.segment_bytes.to_string()),
        ("segment.ms", d.segment_ms.to_string()),
        ("index.interval.bytes", d.index_interval_bytes.to_string()),
        ("segment.index.bytes", d.index_bytes_max.to_string()),
        ("retention.ms", "604800000".to_string()),
        ("retention.bytes", "-1".to_string()),
        ("cleanup.policy", "delete".to_string()),
        ("delete.retention.ms", d.delete_retention_ms.to_string()),
        ("max.message.bytes", d.batch_bytes_max.to_string()),
        ("message.timestamp.type", "CreateTime".to_string()),
        ("flush.policy", "always".to_string()),
        ("flush.ms", "1000".to_string()),
        ("delivery.delay.ms", d.delivery_delay_ms.to_string()),
        ("delivery.delay.max.ms", d.delivery_delay_max_ms.to_string()),
    ]
}

fn invalid(key: &str, value: &str, reason: impl Into<String>) -> StorageError {
    StorageError::InvalidConfig {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// A millisecond setting as the signed clock arithmetic it meets; values past `i64::MAX`
/// (which parsing refuses) saturate instead of turning negative.
pub fn ms_i64(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Largest value of a millisecond or byte setting: Kafka reads them as a Java `long`.
const LONG_MAX: u64 = i64::MAX as u64;
/// Largest value of a setting Kafka reads as a Java `int`.
const INT_MAX: u64 = i32::MAX as u64;

/// An integer within `min..=max`; the message names the range, so a value past it (say
/// `18446744073709551615`) is refused instead of wrapping.
fn parse_in(key: &str, value: &str, min: u64, max: u64) -> Result<u64> {
    value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            invalid(
                key,
                value,
                format!("expected an integer within {min}..={max}"),
            )
        })
}

/// `-1` means unlimited, as in Kafka.
fn parse_limit(key: &str, value: &str) -> Result<Option<u64>> {
    match value.trim() {
        "-1" => Ok(None),
        v => parse_in(key, v, 0, LONG_MAX).map(Some),
    }
}

impl LogConfig {
    /// Builds a config from topic config entries over `base`. Unknown keys are refused so a typo
    /// does not silently keep the default; keys of other layers are left to
    /// [`crate::Storage::check_topic_configs`], which drops them before calling this.
    pub fn from_entries(base: &LogConfig, entries: &BTreeMap<String, String>) -> Result<LogConfig> {
        let mut c = base.clone();
        let mut flush_ms = match base.flush_policy {
            FlushPolicy::Interval { ms } => ms,
            FlushPolicy::Always => 1000,
        };
        let mut interval = matches!(base.flush_policy, FlushPolicy::Interval { .. });
        for (key, value) in entries {
            let v = value.as_str();
            match key.as_str() {
                "segment.bytes" => {
                    c.segment_bytes = parse_in(key, v, SEGMENT_BYTES_MIN, SEGMENT_BYTES_MAX)?
                }
                "segment.ms" => c.segment_ms = parse_in(key, v, 1, LONG_MAX)?,
                "index.interval.bytes" => c.index_interval_bytes = parse_in(key, v, 0, INT_MAX)?,
                "segment.index.bytes" => {
                    c.index_bytes_max =
                        parse_in(key, v, SEGMENT_INDEX_BYTES_MIN, SEGMENT_INDEX_BYTES_MAX)?
                }
                "retention.ms" => c.retention_ms = parse_limit(key, v)?,
                "retention.bytes" => c.retention_bytes = parse_limit(key, v)?,
                "cleanup.policy" => {
                    let mut policy = CleanupPolicy {
                        delete: false,
                        compact: false,
                    };
                    for part in v.split(',').map(str::trim) {
                        match part {
                            "delete" => policy.delete = true,
                            "compact" => policy.compact = true,
                            _ => return Err(invalid(key, v, "expected delete, compact or both")),
                        }
                    }
                    c.cleanup_policy = policy;
                }
                "delete.retention.ms" => c.delete_retention_ms = parse_in(key, v, 0, LONG_MAX)?,
                "max.message.bytes" => c.batch_bytes_max = parse_in(key, v, 64, INT_MAX)?,
                "message.timestamp.type" => {
                    c.timestamp_type = match v {
                        "CreateTime" => TimestampType::CreateTime,
                        "LogAppendTime" => TimestampType::LogAppendTime,
                        _ => return Err(invalid(key, v, "expected CreateTime or LogAppendTime")),
                    }
                }
                "flush.policy" => {
                    interval = match v {
                        "always" => false,
                        "interval" => true,
                        _ => return Err(invalid(key, v, "expected always or interval")),
                    }
                }
                "flush.ms" => flush_ms = parse_in(key, v, 1, LONG_MAX)?,
                "delivery.delay.ms" => c.delivery_delay_ms = parse_in(key, v, 0, LONG_MAX)?,
                "delivery.delay.max.ms" => c.delivery_delay_max_ms = parse_in(key, v, 0, LONG_MAX)?,
                _ => return Err(invalid(key, v, "unknown topic config")),
            }
        }
        if c.delivery_delay_ms > c.delivery_delay_max_ms {
            let key = "delivery.delay.ms";
            return Err(invalid(
                key,
                &c.delivery_delay_ms.to_string(),
                format!(
                    "more than delivery.delay.max.ms ({})",
                    c.delivery_delay_max_ms
                ),
            ));
        }
        c.flush_policy = if interval {
            FlushPolicy::Interval { ms: flush_ms }
        } else {
            FlushPolicy::Always
        };
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn kafka_keys_parse() {
        let c = LogConfig::from_entries(
            &LogConfig::default(),
            &entries(&[
                ("segment.bytes", "1048576"),
                ("retention.ms", "-1"),
                ("retention.bytes", "5000000"),
                ("cleanup.policy", "compact,delete"),
                ("flush.policy", "interval"),
                ("flush.ms", "250"),
                ("message.timestamp.type", "LogAppendTime"),
            ]),
        )
        .unwrap();
        assert_eq!(c.segment_bytes, 1 << 20);
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.retention_bytes, Some(5_000_000));
        assert!(c.cleanup_policy.compact && c.cleanup_policy.delete);
        assert_eq!(c.flush_policy, FlushPolicy::Interval { ms: 250 });
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
    }

    #[test]
    fn the_largest_values_kafka_takes_are_kept_exactly() {
        let c = LogConfig::from_entries(
            &LogConfig::default(),
            &entries(&[
                ("retention.ms", "9223372036854775807"),
                ("segment.ms", "9223372036854775807"),
            ]),
        )
        .unwrap();
        assert_eq!(c.retention_ms, Some(i64::MAX as u64));
        assert_eq!(c.segment_ms, i64::MAX as u64);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (k, v) in [
            ("segment.bytes", "12"),
            ("segment.bytes", "lots"),
            ("cleanup.policy", "shred"),
            ("no.such.key", "1"),
            // Past i64::MAX these used to wrap to -1 and delete or roll everything.
            ("retention.ms", "18446744073709551615"),
            ("retention.ms", "9223372036854775808"),
            ("segment.ms", "18446744073709551615"),
            ("segment.ms", "0"),
            ("retention.bytes", "-2"),
            ("delete.retention.ms", "18446744073709551615"),
            ("flush.ms", "18446744073709551615"),
            ("segment.index.bytes", "99999999999"),
            ("max.message.bytes", "4294967296"),
            ("index.interval.bytes", "4294967296"),
            ("delivery.delay.ms", "604800001"),
            ("delivery.delay.ms", "-5"),
        ] {
            let err =
                LogConfig::from_entries(&LogConfig::default(), &entries(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
    }
}
