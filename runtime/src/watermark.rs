//! The watermark of a windowed pipeline: how far event time has surely come over all its input
//! partitions, so that a window ending before it can be closed and emitted once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Event-time progress of one input partition.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
struct PartitionTime {
    max_event_ms: Option<i64>,
    /// Wall-clock time of its last records; not saved (a restart counts as activity).
    #[serde(skip)]
    last_active_ms: i64,
}

/// The largest event time seen on each input partition, and the watermark they make: the least
/// of the active partitions' largest event times (a partition silent for the idle timeout does
/// not count), less a delay. The watermark never goes back. Serialized with a pipeline's state.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventClock {
    partitions: BTreeMap<u32, PartitionTime>,
    watermark_ms: Option<i64>,
}

impl EventClock {
    /// A clock over `partitions` input partitions, each active as of `now_ms` with no event
    /// time yet (so a partition that has not spoken holds the watermark back until it idles).
    pub fn new(partitions: u32, now_ms: i64) -> EventClock {
        let mut clock = EventClock::default();
        for partition in 0..partitions {
            clock.saw(partition, None, now_ms);
        }
        clock
    }

    /// Notes records of `partition` read at `now_ms`, the latest event time among them `latest`.
    pub fn saw(&mut self, partition: u32, latest: Option<i64>, now_ms: i64) {
        let time = self.partitions.entry(partition).or_default();
        time.max_event_ms = time.max_event_ms.max(latest);
        time.last_active_ms = now_ms;
    }

    /// Moves the watermark as of `now_ms`; answers it.
    pub fn advance(&mut self, now_ms: i64, delay_ms: i64, idle_timeout_ms: i64) -> Option<i64> {
        let active: Vec<Option<i64>> = self
            .partitions
            .values()
            .filter(|p| now_ms - p.last_active_ms < idle_timeout_ms)
            .map(|p| p.max_event_ms)
            .collect();
        let reached = if active.is_empty() {
            self.partitions
                .values()
                .filter_map(|p| p.max_event_ms)
                .max()
        } else {
            active
                .into_iter()
                .collect::<Option<Vec<i64>>>()
                .and_then(|t| t.into_iter().min())
        };
        let candidate = reached.map(|t| t.saturating_sub(delay_ms));
        self.watermark_ms = self.watermark_ms.max(candidate);
        self.watermark_ms
    }

    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Takes back what a snapshot of the clock kept, each of its partitions active as of
    /// `now_ms`; partitions it did not know stay as they are.
    pub fn restore(&mut self, saved: EventClock, now_ms: i64) {
        for (partition, time) in saved.partitions {
            self.saw(partition, time.max_event_ms, now_ms);
        }
        self.watermark_ms = saved.watermark_ms;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    #[test]
    fn the_slowest_active_partition_holds_the_watermark() {
        let mut clock = EventClock::new(2, 0);
        clock.saw(0, Some(100), 0);
        assert_eq!(
            clock.advance(0, 10, 1000),
            None,
            "partition 1 has not spoken"
        );
        clock.saw(1, Some(50), 0);
        assert_eq!(clock.advance(0, 10, 1000), Some(40));
        // Partition 1 falls silent: after the idle timeout partition 0 alone moves it.
        clock.saw(0, Some(200), 900);
        assert_eq!(clock.advance(1500, 10, 1000), Some(190));
        // It never goes back, even when the silent partition speaks again with old times.
        clock.saw(1, Some(60), 1600);
        assert_eq!(clock.advance(1600, 10, 1000), Some(190));
    }

    #[test]
    fn a_restored_clock_keeps_event_times_and_restarts_idleness() {
        let mut clock = EventClock::new(2, 0);
        clock.saw(0, Some(100), 0);
        clock.saw(1, Some(70), 0);
        clock.advance(0, 0, 1000);
        let saved = weir::serde_json::to_vec(&clock).unwrap();
        let mut clock = EventClock::new(3, 5000);
        clock.restore(weir::serde_json::from_slice(&saved).unwrap(), 5000);
        assert_eq!(clock.watermark_ms(), Some(70));
        // The partition added since holds it until it speaks or idles.
        assert_eq!(clock.advance(5100, 0, 1000), Some(70));
        clock.saw(0, Some(300), 6200);
        clock.saw(1, Some(250), 6200);
        assert_eq!(clock.advance(6200, 0, 1000), Some(250));
    }
}
