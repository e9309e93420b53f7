//! Keyed accumulators over tumbling windows of event time.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, Params, Record, Result};

/// One tumbling window: `[start_ms, end_ms)` of record timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Window {
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A keyed, windowed accumulator. The SDK keeps one value per (window, key), feeds it the records
/// of that key whose timestamp falls in the window, and calls [`Aggregate::finish`] once the
/// window has closed. A pipeline runs one instance of an aggregate over all its input
/// partitions, so a key has one accumulator per window whatever partitions its records come
/// from. Windows close when the pipeline's watermark (the least of the partitions' largest event
/// times, less the pipeline's `lateness_ms`; a partition idle for the pipeline's
/// `idle_timeout_ms` does not hold it back) passes `end_ms + lateness_ms`. A record for a
/// window that has already closed fails with "late record" (and goes to the dead-letter topic,
/// counted as late). The host saves the open windows with the input offsets, so a restart
/// continues them.
///
/// Parameters read by the SDK: `window_ms` (default 60000) and `lateness_ms` (default 0, added
/// to the pipeline's).
///
/// ```
/// use weir::{Aggregate, Params, Record, Result, Window};
///
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// struct Count(u64);
///
/// #[weir::aggregate]
/// impl Aggregate for Count {
///     fn key(r: &Record, _params: &Params) -> Result<Option<String>> {
///         Ok(r.key_str().map(str::to_owned))
///     }
///     fn add(&mut self, _r: &Record, _params: &Params) -> Result<()> {
///         self.0 += 1;
///         Ok(())
///     }
///     fn finish(&self, key: &str, window: Window, _params: &Params) -> Result<Record<'static>> {
///         Ok(Record::new(format!("{key} {} {}", window.start_ms, self.0)).with_key(key))
///     }
/// }
/// ```
pub trait Aggregate: Default + Serialize + DeserializeOwned {
    /// The group of a record; `None` skips the record.
    fn key(r: &Record, params: &Params) -> Result<Option<String>>;
    /// Folds one record into the accumulator of its window and key.
    fn add(&mut self, r: &Record, params: &Params) -> Result<()>;
    /// The record emitted for a closed window.
    fn finish(&self, key: &str, window: Window, params: &Params) -> Result<Record<'static>>;
}

/// The open windows of one aggregate instance; serialized as its snapshot.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct Windows<A: Aggregate> {
    window_ms: i64,
    lateness_ms: i64,
    /// Windows ending at or before this have been emitted.
    closed_until_ms: i64,
    #[serde(with = "entries")]
    open: BTreeMap<(Window, String), A>,
}

/// JSON object keys are strings, so the open windows are kept as a list of entries.
mod entries {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer, K: Serialize, V: Serialize>(
        map: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D, K, V>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        D: Deserializer<'de>,
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
    {
        Vec::<(K, V)>::deserialize(d).map(|entries| entries.into_iter().collect())
    }
}

impl<A: Aggregate> Windows<A> {
    pub(crate) fn new(params: &Params) -> Result<Windows<A>> {
        let window_ms: i64 = params.parse_or("window_ms", 60_000)?;
        let lateness_ms: i64 = params.parse_or("lateness_ms", 0)?;
        if window_ms <= 0 || lateness_ms < 0 {
            return Err(Error::msg(format!(
                "window_ms={window_ms} must be positive and lateness_ms={lateness_ms} not negative"
            )));
        }
        Ok(Windows {
            window_ms,
            lateness_ms,
            closed_until_ms: i64::MIN,
            open: BTreeMap::new(),
        })
    }

    /// Adds `r` to the accumulator of its window and key; a record whose window has closed is
    /// an error whose message begins with `late record`.
    pub(crate) fn add(&mut self, r: &Record, params: &Params) -> Result<()> {
        let start_ms = r.timestamp - r.timestamp.rem_euclid(self.window_ms);
        let window = Window {
            start_ms,
            end_ms: start_ms.saturating_add(self.window_ms),
        };
        if window.end_ms <= self.closed_until_ms {
            return Err(Error::msg(format!(
                "{LATE}: timestamp {} is in window [{}, {}) which has closed",
                r.timestamp, window.start_ms, window.end_ms
            )));
        }
        if let Some(key) = A::key(r, params)? {
            self.open.entry((window, key)).or_default().add(r, params)?;
        }
        Ok(())
    }

    /// Closes the windows that end at or before `watermark_ms` less `lateness_ms`; returns them
    /// as (key, window, accumulator), oldest first.
    pub(crate) fn close(&mut self, watermark_ms: i64) -> Vec<(String, Window, A)> {
        let closed_until_ms = watermark_ms.saturating_sub(self.lateness_ms);
        if closed_until_ms <= self.closed_until_ms {
            return Vec::new();
        }
        self.closed_until_ms = closed_until_ms;
        let mut closed = Vec::new();
        while let Some(entry) = self.open.first_entry() {
            if entry.key().0.end_ms > closed_until_ms {
                break;
            }
            let ((window, key), accumulator) = entry.remove_entry();
            closed.push((key, window, accumulator));
        }
        closed
    }
}

/// How the message of a record that came after its window closed begins.
pub(crate) const LATE: &str = "late record";

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Serialize, Deserialize)]
    struct Count(u64);

    impl Aggregate for Count {
        fn key(r: &Record, _params: &Params) -> Result<Option<String>> {
            Ok(r.key_str().map(str::to_owned))
        }
        fn add(&mut self, _r: &Record, _params: &Params) -> Result<()> {
            self.0 += 1;
            Ok(())
        }
        fn finish(&self, key: &str, window: Window, _params: &Params) -> Result<Record<'static>> {
            Ok(Record::new(format!("{key}@{}={}", window.start_ms, self.0)))
        }
    }

    fn at(ts: i64, key: &str) -> Record<'static> {
        Record::new("").with_key(key).with_timestamp(ts)
    }

    /// Feeds records one by one, each a watermark at its own timestamp, returning what each
    /// one closed as `key@start=count`.
    fn feed(
        windows: &mut Windows<Count>,
        records: &[Record],
        params: &Params,
    ) -> Vec<Result<Vec<String>>> {
        records
            .iter()
            .map(|r| {
                windows.add(r, params)?;
                Ok(windows
                    .close(r.timestamp)
                    .iter()
                    .map(|(key, window, count)| format!("{key}@{}={}", window.start_ms, count.0))
                    .collect())
            })
            .collect()
    }

    #[test]
    fn windows_close_when_event_time_passes_their_end() {
        let params = Params::from_pairs([("window_ms", "10")]);
        let mut windows = Windows::<Count>::new(&params).unwrap();
        let got = feed(
            &mut windows,
            &[at(1, "a"), at(5, "b"), at(9, "a"), at(10, "a"), at(25, "b")],
            &params,
        );
        let got: Vec<Vec<String>> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got[..3], [Vec::<String>::new(), vec![], vec![]]);
        assert_eq!(got[3], ["a@0=2", "b@0=1"]);
        assert_eq!(got[4], ["a@10=1"]);
    }

    #[test]
    fn late_records_are_errors_and_lateness_waits_for_them() {
        let params = Params::from_pairs([("window_ms", "10")]);
        let mut windows = Windows::<Count>::new(&params).unwrap();
        let got = feed(&mut windows, &[at(12, "a"), at(3, "a")], &params);
        assert!(
            got[1]
                .as_ref()
                .unwrap_err()
                .message()
                .starts_with("late record: timestamp 3")
        );

        let params = Params::from_pairs([("window_ms", "10"), ("lateness_ms", "5")]);
        let mut windows = Windows::<Count>::new(&params).unwrap();
        let got = feed(
            &mut windows,
            &[at(12, "a"), at(3, "a"), at(15, "a")],
            &params,
        );
        assert_eq!(got[1].as_ref().unwrap(), &Vec::<String>::new());
        assert_eq!(got[2].as_ref().unwrap(), &["a@0=1"]);
    }

    #[test]
    fn only_the_watermark_closes_windows() {
        let params = Params::from_pairs([("window_ms", "10")]);
        let mut windows = Windows::<Count>::new(&params).unwrap();
        // A partition far ahead does not close the window another one is still filling.
        for r in [at(3, "a"), at(95, "a"), at(4, "a")] {
            windows.add(&r, &params).unwrap();
        }
        assert!(windows.close(9).is_empty());
        windows.add(&at(9, "a"), &params).unwrap();
        let closed = windows.close(10);
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].1.start_ms, closed[0].2.0), (0, 3));
        assert!(windows.add(&at(8, "a"), &params).is_err());
        // An older watermark closes nothing again.
        assert!(windows.close(5).is_empty());
        assert_eq!(windows.close(100).len(), 1);
    }

    #[test]
    fn a_snapshot_continues_where_it_was_taken() {
        let params = Params::from_pairs([("window_ms", "10")]);
        let mut windows = Windows::<Count>::new(&params).unwrap();
        feed(&mut windows, &[at(1, "a"), at(2, "a")], &params);
        let snapshot = serde_json::to_vec(&windows).unwrap();
        let mut restored: Windows<Count> = serde_json::from_slice(&snapshot).unwrap();
        let got = feed(&mut restored, &[at(3, "a"), at(11, "a")], &params);
        assert_eq!(got[1].as_ref().unwrap(), &["a@0=3"]);
    }

    #[test]
    fn bad_window_parameters_are_refused() {
        for (key, value) in [
            ("window_ms", "0"),
            ("window_ms", "soon"),
            ("lateness_ms", "-1"),
        ] {
            assert!(
                Windows::<Count>::new(&Params::from_pairs([(key, value)])).is_err(),
                "{key}={value}"
            );
        }
    }
}
