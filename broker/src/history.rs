//! What the node did over the last minutes, sampled every [`SAMPLE_INTERVAL`] from its own
//! counters: produce and consume rates, each pipeline's output rate and each consumer group's
//! lag, for `GET /v1/node/history` and the console's charts; and each topic's rates over the
//! last interval. Held in memory only; a restart starts it empty.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use weir_storage::locks;

use crate::metrics::{GroupLag, Totals};

/// How often the node takes a sample.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Samples kept: 15 minutes of them.
pub const SAMPLES_MAX: usize = 180;

/// Consumer groups (and pipelines) a sample keeps a series for (the first by name). A node may
/// hold many; the history keeps its memory bounded by `SAMPLES_MAX × SERIES_MAX` numbers each.
pub const SERIES_MAX: usize = 1024;

/// The node's counters at one moment.
#[derive(Default)]
pub struct Reading {
    pub topics: HashMap<String, Totals>,
    /// Records each pipeline wrote.
    pub pipelines: HashMap<String, u64>,
}

/// Bytes and records per second, in and out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rates {
    pub produced_bytes_per_s: f64,
    pub produced_records_per_s: f64,
    pub consumed_bytes_per_s: f64,
    pub consumed_records_per_s: f64,
}

impl Rates {
    fn between(before: &Totals, after: &Totals, seconds: f64) -> Rates {
        // A deleted topic takes its counters away: a drop reads as no traffic, not as less.
        let rate = |after: u64, before: u64| after.saturating_sub(before) as f64 / seconds;
        Rates {
            produced_bytes_per_s: rate(after.bytes_in, before.bytes_in),
            produced_records_per_s: rate(after.records_in, before.records_in),
            consumed_bytes_per_s: rate(after.bytes_out, before.bytes_out),
            consumed_records_per_s: rate(after.records_out, before.records_out),
        }
    }
}

/// One sample: rates over the interval before `time_ms`, and the lag at `time_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    #[serde(flatten)]
    pub rates: Rates,
    /// Records each pipeline wrote per second.
    pub pipeline_records_out_per_s: BTreeMap<String, f64>,
    /// Records behind the end, summed over each group's committed partitions.
    pub group_lag: BTreeMap<String, i64>,
    /// Series left out of `group_lag` and `pipeline_records_out_per_s` for [`SERIES_MAX`].
    pub series_left_out: usize,
}

/// The node's recent past.
pub struct History {
    started: Instant,
    samples: Mutex<VecDeque<Sample>>,
    /// The counters at the last sample, to take rates from.
    last: Mutex<Option<(Instant, Reading)>>,
    /// Each topic's rates over the last interval.
    topic_rates: Mutex<BTreeMap<String, Rates>>,
}

impl Default for History {
    fn default() -> Self {
        History {
            started: Instant::now(),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES_MAX)),
            last: Mutex::new(None),
            topic_rates: Mutex::default(),
        }
    }
}

/// Keeps the first [`SERIES_MAX`] entries of `series`; answers how many went.
fn bounded<V>(series: &mut BTreeMap<String, V>) -> usize {
    let left_out = series.len().saturating_sub(SERIES_MAX);
    if let Some(first) = series.keys().nth(SERIES_MAX).cloned() {
        series.split_off(&first);
    }
    left_out
}

impl History {
    /// Time since the node started.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Takes a sample of `reading` (the node's counters now) and `lags`; the first call only
    /// remembers the counters, as a rate needs two readings.
    pub fn sample(&self, now: Instant, time_ms: i64, reading: Reading, lags: &[GroupLag]) {
        let mut last = locks::lock(&self.last);
        let previous = last.replace((now, Reading::default()));
        let Some((then, before)) = previous else {
            *last = Some((now, reading));
            return;
        };
        let seconds = now.duration_since(then).as_secs_f64().max(f64::EPSILON);
        let sum = |topics: &HashMap<String, Totals>| {
            topics
                .values()
                .fold(Totals::default(), |sum, t| sum.plus(t))
        };
        let rates = Rates::between(&sum(&before.topics), &sum(&reading.topics), seconds);
        let topic_rates = reading
            .topics
            .iter()
            .map(|(name, after)| {
                let before = before.topics.get(name).copied().unwrap_or_default();
                (name.clone(), Rates::between(&before, after, seconds))
            })
            .collect();
        let mut pipeline_records_out_per_s: BTreeMap<String, f64> = reading
            .pipelines
            .iter()
            .map(|(name, &out)| {
                let before = before.pipelines.get(name).copied().unwrap_or_default();
                (name.clone(), out.saturating_sub(before) as f64 / seconds)
            })
            .collect();
        let mut group_lag = BTreeMap::new();
        for lag in lags {
            *group_lag.entry(lag.group.clone()).or_insert(0) += lag.lag;
        }
        let series_left_out = bounded(&mut group_lag) + bounded(&mut pipeline_records_out_per_s);
        *last = Some((now, reading));
        drop(last);
        *locks::lock(&self.topic_rates) = topic_rates;
        let mut samples = locks::lock(&self.samples);
        if samples.len() == SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back(Sample {
            time_ms,
            rates,
            pipeline_records_out_per_s,
            group_lag,
            series_left_out,
        });
    }

    /// The samples kept, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        locks::lock(&self.samples).iter().cloned().collect()
    }

    /// Each topic's rates over the last interval.
    pub fn topic_rates(&self) -> BTreeMap<String, Rates> {
        locks::lock(&self.topic_rates).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Topic `t` at `bytes_in` and `records_in`, and pipeline `p` having written `out`.
    fn reading(bytes_in: u64, records_in: u64, out: u64) -> Reading {
        let totals = Totals {
            bytes_in,
            records_in,
            bytes_out: 0,
            records_out: 0,
        };
        Reading {
            topics: HashMap::from([("t".to_owned(), totals)]),
            pipelines: HashMap::from([("p".to_owned(), out)]),
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
        history.sample(start, 0, reading(0, 0, 0), &[]);
        assert!(history.samples().is_empty(), "one reading makes no rate");
        for i in 1..=SAMPLES_MAX as u64 + 3 {
            let at = start + SAMPLE_INTERVAL * i as u32;
            history.sample(at, i as i64, reading(i * 5000, i * 50, i * 10), &[]);
        }
        let samples = history.samples();
        assert_eq!(samples.len(), SAMPLES_MAX);
        assert_eq!(samples[0].time_ms, 4, "the three oldest went");
        assert_eq!(samples[0].rates.produced_bytes_per_s, 1000.0);
        assert_eq!(samples[0].rates.produced_records_per_s, 10.0);
        assert_eq!(samples[0].pipeline_records_out_per_s["p"], 2.0);
        assert_eq!(history.topic_rates()["t"].produced_records_per_s, 10.0);
        // A deleted topic's counters leave: the total drops, and the rate reads zero.
        let later = start + SAMPLE_INTERVAL * 200;
        history.sample(later, 999, reading(10, 1, 0), &[]);
        let last = history.samples().pop().unwrap();
        assert_eq!(last.rates.produced_bytes_per_s, 0.0);
        assert_eq!(last.pipeline_records_out_per_s["p"], 0.0);
    }

    #[test]
    fn group_lag_is_summed_per_group_and_bounded() {
        let history = History::default();
        let start = Instant::now();
        history.sample(start, 0, Reading::default(), &[]);
        let mut lags = vec![lag("a", 3), lag("a", 4), lag("b", 1)];
        lags.extend((0..SERIES_MAX + 5).map(|i| lag(&format!("z{i:05}"), 1)));
        history.sample(start + SAMPLE_INTERVAL, 1, Reading::default(), &lags);
        let sample = history.samples().pop().unwrap();
        assert_eq!(sample.group_lag["a"], 7);
        assert_eq!(sample.group_lag["b"], 1);
        assert_eq!(sample.group_lag.len(), SERIES_MAX);
        assert_eq!(sample.series_left_out, 7);
    }
}
