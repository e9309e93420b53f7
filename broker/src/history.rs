//! What the node did over the last minutes, sampled every [`SAMPLE_INTERVAL`] from its own
//! counters: produce and consume rates and each consumer group's lag, for
//! `GET /v1/node/history` and the console's charts. Held in memory only; a restart starts it
//! empty.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_storage::locks;

use crate::metrics::{GroupLag, Totals};

/// How often the node takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept: 15 minutes of them.
pub const SAMPLES_MAX: usize = 180;

/// Consumer groups whose lag a sample keeps (the first by name). A node may hold many groups;
/// the history keeps its memory bounded by `SAMPLES_MAX × GROUP_SERIES_MAX` numbers.
pub const GROUP_SERIES_MAX: usize = 1024;

/// One sample: rates over the interval before `time_ms`, and the lag at `time_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    pub produced_bytes_per_s: f64,
    pub produced_records_per_s: f64,
    pub consumed_bytes_per_s: f64,
    pub consumed_records_per_s: f64,
    /// Records behind the end, summed over each group's committed partitions.
    pub group_lag: BTreeMap<String, i64>,
    /// Groups left out of `group_lag` for [`GROUP_SERIES_MAX`].
    pub groups_left_out: usize,
}

/// The node's recent past.
pub struct History {
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
    /// The counters at the last sample, to take rates from.
    last: Mutex<Option<(Instant, Totals)>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES_MAX)),
            last: Mutex::new(None),
        }
    }
}

impl History {
    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes a sample of `totals` (the node's counters now) and `lags`; the first call only
    /// remembers the counters, as a rate needs two readings.
    pub fn sample(&self, now: Instant, time_ms: i64, totals: Totals, lags: &[GroupLag]) {
        let previous = locks::lock(&self.last).replace((now, totals));
        let Some((then, before)) = previous else {
            return;
        };
        let seconds = now.duration_since(then).as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        // A deleted topic takes its counters away: a drop reads as no traffic, not as less.
        let rate = |after: u64, before: u64| after.saturating_sub(before) as f64 / seconds;
        let mut group_lag = BTreeMap::new();
        for lag in lags {
            *group_lag.entry(lag.group.clone()).or_insert(0) += lag.lag;
        }
        let groups_left_out = group_lag.len().saturating_sub(GROUP_SERIES_MAX);
        if groups_left_out > 0 {
            let first_left_out = group_lag.keys().nth(GROUP_SERIES_MAX).cloned();
            if let Some(first) = first_left_out {
                group_lag.split_off(&first);
            }
        }
        let sample = Sample {
            time_ms,
            produced_bytes_per_s: rate(totals.bytes_in, before.bytes_in),
            produced_records_per_s: rate(totals.records_in, before.records_in),
            consumed_bytes_per_s: rate(totals.bytes_out, before.bytes_out),
            consumed_records_per_s: rate(totals.records_out, before.records_out),
            group_lag,
            groups_left_out,
        };
        let mut samples = locks::lock(&self.samples);
        if samples.len() == SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        locks::lock(&self.samples).iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(bytes_in: u64, records_in: u64) -> Totals {
        Totals {
            bytes_in,
            records_in,
            bytes_out: 0,
            records_out: 0,
        }
    }

    fn lag(group: &str, lag: i64) -> GroupLag {
        GroupLag {
            group: group.into(),
            topic: "t".into(),
            partition: 0,
            lag,
        }
    }

    #[test]
    fn rates_come_from_two_readings_and_the_oldest_sample_goes_first() {
        let history = History::default();
        let start = Instant::now();
        history.sample(start, 0, totals(0, 0), &[]);
        assert!(history.samples().is_empty(), "one reading makes no rate");
        for i in 1..=SAMPLES_MAX as u64 + 3 {
            let at = start + SAMPLE_INTERVAL * i as u32;
            history.sample(at, i as i64, totals(i * 5000, i * 50), &[]);
        }
        let samples = history.samples();
        assert_eq!(samples.len(), SAMPLES_MAX);
        assert_eq!(samples[0].time_ms, 4, "the three oldest went");
        assert_eq!(samples[0].produced_bytes_per_s, 1000.0);
        assert_eq!(samples[0].produced_records_per_s, 10.0);
        // A deleted topic's counters leave: the total drops, and the rate reads zero.
        let later = start + SAMPLE_INTERVAL * 200;
        history.sample(later, 999, totals(10, 1), &[]);
        assert_eq!(history.samples().last().unwrap().produced_bytes_per_s, 0.0);
    }

    #[test]
    fn group_lag_is_summed_per_group_and_bounded() {
        let history = History::default();
        let start = Instant::now();
        history.sample(start, 0, totals(0, 0), &[]);
        let mut lags = vec![lag("a", 3), lag("a", 4), lag("b", 1)];
        lags.extend((0..GROUP_SERIES_MAX + 5).map(|i| lag(&format!("z{i:05}"), 1)));
        history.sample(start + SAMPLE_INTERVAL, 1, totals(0, 0), &lags);
        let sample = history.samples().pop().unwrap();
        assert_eq!(sample.group_lag["a"], 7);
        assert_eq!(sample.group_lag["b"], 1);
        assert_eq!(sample.group_lag.len(), GROUP_SERIES_MAX);
        assert_eq!(sample.groups_left_out, 7);
    }
}
