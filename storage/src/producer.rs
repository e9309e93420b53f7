//! Idempotent producer state of one log: per producer id, its epoch and its last batches'
//! sequence ranges, so a retried batch is answered with its original offsets instead of being
//! written twice, and a gap in sequences is refused.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;

/// Batches remembered per producer, as Kafka's `max.in.flight.requests.per.connection` bound.
pub const PRODUCER_BATCHES_MAX: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Appended {
    first_sequence: i32,
    last_sequence: i32,
    base_offset: u64,
    last_offset: u64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Appended>,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Append,
    /// Already in the log at these offsets.
    Duplicate {
        base_offset: u64,
        last_offset: u64,
    },
    OutOfOrder {
        expected: i32,
        received: i32,
    },
    StaleEpoch {
        current: i16,
        received: i16,
    },
}

#[derive(Debug, Default)]
pub(crate) struct ProducerStates {
    producers: HashMap<i64, Producer>,
}

fn last_sequence(h: &BatchHeader) -> i32 {
    // Sequences wrap at i32::MAX, as in Kafka.
    ((i64::from(h.base_sequence) + i64::from(h.last_offset_delta)) % (i64::from(i32::MAX) + 1))
        as i32
}

fn next_sequence(sequence: i32) -> i32 {
    if sequence == i32::MAX {
        0
    } else {
        sequence + 1
    }
}

impl ProducerStates {
    /// Whether `h` (from an idempotent producer: `producer_id >= 0`) may be appended.
    pub fn check(&self, h: &BatchHeader) -> Verdict {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return Verdict::Append;
        }
        let Some(p) = self.producers.get(&h.producer_id) else {
            // A producer we have no record of (new, or its batches are gone with old
            // segments): its first batch starts the window.
            return Verdict::Append;
        };
        if h.producer_epoch < p.epoch {
            return Verdict::StaleEpoch {
                current: p.epoch,
                received: h.producer_epoch,
            };
        }
        if h.producer_epoch > p.epoch {
            return if h.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder {
                    expected: 0,
                    received: h.base_sequence,
                }
            };
        }
        let last = last_sequence(h);
        if let Some(b) = p
            .batches
            .iter()
            .find(|b| b.first_sequence == h.base_sequence && b.last_sequence == last)
        {
            return Verdict::Duplicate {
                base_offset: b.base_offset,
                last_offset: b.last_offset,
            };
        }
        let expected = p
            .batches
            .back()
            .map_or(h.base_sequence, |b| next_sequence(b.last_sequence));
        if h.base_sequence == expected {
            Verdict::Append
        } else {
            Verdict::OutOfOrder {
                expected,
                received: h.base_sequence,
            }
        }
    }

    /// Records a batch that is now in the log (with its assigned base offset).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let p = self.producers.entry(h.producer_id).or_default();
        if h.producer_epoch != p.epoch {
            p.epoch = h.producer_epoch;
            p.batches.clear();
        }
        p.batches.push_back(Appended {
            first_sequence: h.base_sequence,
            last_sequence: last_sequence(h),
            base_offset: h.base_offset as u64,
            last_offset: h.last_offset() as u64,
        });
        while p.batches.len() > PRODUCER_BATCHES_MAX {
            p.batches.pop_front();
        }
    }
}
