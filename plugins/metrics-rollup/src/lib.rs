//! `metrics-rollup`: per key and tumbling window of event time, the count of records and the
//! sum, min, max and average of a numeric JSON field. Parameters: `key` (JSON field to group
//! by, e.g. `status`), `value` (numeric field, optional: without it only `count` is kept),
//! `window_ms` (default 60000) and `lateness_ms` (default 0).
//!
//! Emits, when a window closes, `{"status":"503","window_start_ms":…,"window_end_ms":…,
//! "count":…,"sum":…,"min":…,"max":…,"avg":…}` keyed by the group. The group's field is named
//! after the last part of `key` (`request.status` gives `status`), or `group_key` when that
//! name is one of the other fields or a column every topic has (`key`, `value`, `timestamp`,
//! …), so the output topic can carry a value schema and be queried with typed columns.

use serde::{Deserialize, Serialize};
use weir::serde_json::{Value, json};
use weir::{Aggregate, Params, Record, Result, Window};

#[derive(Default, Serialize, Deserialize)]
pub struct Rollup {
    count: u64,
    sum: f64,
    min: Option<f64>,
    max: Option<f64>,
}

/// Names the results use for something else: their own fields and the columns of every topic.
const TAKEN: [&str; 15] = [
    "window_start_ms",
    "window_end_ms",
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "key",
    "key_text",
    "value",
    "value_text",
    "timestamp",
    "offset",
    "partition",
    "headers",
];

/// The field of the results that holds the group: the last part of the `key` path.
fn group_field(key: &str) -> &str {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.is_empty() || TAKEN.contains(&last) {
        "group_key"
    } else {
        last
    }
}

fn field_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[weir::aggregate]
impl Aggregate for Rollup {
    fn key(r: &Record, params: &Params) -> Result<Option<String>> {
        let field = params.require("key")?;
        Ok(Some(
            r.value_field(field)?
                .map_or_else(|| "null".to_owned(), |v| field_text(&v)),
        ))
    }

    fn add(&mut self, r: &Record, params: &Params) -> Result<()> {
        self.count += 1;
        if let Some(field) = params.get("value")
            && let Some(n) = r
                .value_field(field)?
                .and_then(|v| v.as_f64().or_else(|| field_text(&v).parse().ok()))
        {
            self.sum += n;
            self.min = Some(self.min.map_or(n, |m| m.min(n)));
            self.max = Some(self.max.map_or(n, |m| m.max(n)));
        }
        Ok(())
    }

    fn finish(&self, key: &str, window: Window, params: &Params) -> Result<Record<'static>> {
        let mut out = json!({
            group_field(params.require("key")?): key,
            "window_start_ms": window.start_ms,
            "window_end_ms": window.end_ms,
            "count": self.count,
        });
        if params.get("value").is_some() {
            out["sum"] = json!(self.sum);
            out["min"] = json!(self.min);
            out["max"] = json!(self.max);
            out["avg"] = json!(if self.count == 0 {
                0.0
            } else {
                self.sum / self.count as f64
            });
        }
        Ok(Record::json(&out)?.with_key(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ts: i64, status: u16, bytes: u64) -> Record<'static> {
        Record::json(&json!({"status": status, "bytes": bytes}))
            .unwrap()
            .with_timestamp(ts)
    }

    #[test]
    fn accumulates_and_finishes_a_window() {
        let params = Params::from_pairs([("key", "status"), ("value", "bytes")]);
        let mut rollup = Rollup::default();
        for bytes in [10, 30, 20] {
            let r = record(1000, 500, bytes);
            assert_eq!(Rollup::key(&r, &params).unwrap().as_deref(), Some("500"));
            rollup.add(&r, &params).unwrap();
        }
        let out = rollup
            .finish(
                "500",
                Window {
                    start_ms: 0,
                    end_ms: 60_000,
                },
                &params,
            )
            .unwrap();
        let v: Value = out.value_json().unwrap();
        assert_eq!(v["count"], 3);
        assert_eq!(v["sum"], 60.0);
        assert_eq!(v["min"], 10.0);
        assert_eq!(v["max"], 30.0);
        assert_eq!(v["avg"], 20.0);
        assert_eq!(out.key_str(), Some("500"));
    }

    #[test]
    fn count_only_without_a_value_field() {
        let params = Params::from_pairs([("key", "status")]);
        let mut rollup = Rollup::default();
        rollup.add(&record(0, 200, 1), &params).unwrap();
        let v: Value = rollup
            .finish(
                "200",
                Window {
                    start_ms: 0,
                    end_ms: 1,
                },
                &params,
            )
            .unwrap()
            .value_json()
            .unwrap();
        assert_eq!(v["count"], 1);
        assert!(v.get("sum").is_none());
    }

    #[test]
    fn the_group_field_never_takes_a_column_name() {
        assert_eq!(group_field("status"), "status");
        assert_eq!(group_field("request.host"), "host");
        for taken in ["key", "http.timestamp", "count", "value"] {
            assert_eq!(group_field(taken), "group_key", "{taken}");
        }
    }

    #[test]
    fn records_that_are_not_json_are_errors() {
        let params = Params::from_pairs([("key", "status")]);
        assert!(Rollup::key(&Record::new("nope"), &params).is_err());
    }
}
