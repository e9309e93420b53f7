//! Idempotent producer state of one log: per producer id, its epoch and its last batches'
//! sequence ranges, so a retried batch is answered with its original offsets instead of being
//! written twice, and a gap in sequences is refused.

use std::collections::{HashMap, VecDeque};

use crate::batch::BatchHeader;
use crate::{Result, StorageError};

/// Batches remembered per producer, as Kafka's `max.in.flight.requests.per.connection` bound.
pub const PRODUCER_BATCHES_MAX: usize = 5;

/// One remembered batch of a producer: its sequence range and where it was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub first_sequence: i32,
    pub last_sequence: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

#[derive(Debug, Default)]
struct Producer {
    epoch: i16,
    batches: VecDeque<Appended>,
}

/// What to do with a batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
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

/// The idempotent producers of one partition.
#[derive(Debug, Default)]
pub struct ProducerStates {
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

    /// Checks a record set's batches in order. `Some` is a retry of a set that is one batch
    /// already written, answered with its original (base, last) offsets; an error is a gap in
    /// sequences, a duplicate inside a larger set, or a fenced epoch.
    pub fn check_set(&self, headers: &[BatchHeader]) -> Result<Option<(u64, u64)>> {
        for h in headers {
            match self.check(h) {
                Verdict::Append => {}
                Verdict::Duplicate {
                    base_offset,
                    last_offset,
                } if headers.len() == 1 => return Ok(Some((base_offset, last_offset))),
                Verdict::Duplicate { .. } => {
                    return Err(StorageError::DuplicateSequence {
                        producer_id: h.producer_id,
                        sequence: h.base_sequence,
                    });
                }
                Verdict::OutOfOrder { expected, received } => {
                    return Err(StorageError::OutOfOrderSequence {
                        producer_id: h.producer_id,
                        expected,
                        received,
                    });
                }
                Verdict::StaleEpoch { current, received } => {
                    return Err(StorageError::ProducerFenced {
                        producer_id: h.producer_id,
                        current,
                        received,
                    });
                }
            }
        }
        Ok(None)
    }

    /// Puts back a batch remembered elsewhere (oldest first), as [`ProducerStates::record`]
    /// would have left it.
    pub fn restore(&mut self, producer_id: i64, epoch: i16, batch: Appended) {
        let p = self.producers.entry(producer_id).or_default();
        if epoch != p.epoch {
            p.epoch = epoch;
            p.batches.clear();
        }
        p.batches.push_back(batch);
        while p.batches.len() > PRODUCER_BATCHES_MAX {
            p.batches.pop_front();
        }
    }

    /// The producers remembered, in no particular order.
    pub fn producer_ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.producers.keys().copied()
    }

    /// A producer's epoch and remembered batches, oldest first.
    pub fn window(&self, producer_id: i64) -> Option<(i16, impl Iterator<Item = &Appended>)> {
        let p = self.producers.get(&producer_id)?;
        Some((p.epoch, p.batches.iter()))
    }

    /// Records a batch that is now in the log (with its assigned base offset).
    pub fn record(&mut self, h: &BatchHeader) {
        if h.producer_id < 0 || h.base_sequence < 0 {
            return;
        }
        let batch = Appended {
            first_sequence: h.base_sequence,
            last_sequence: last_sequence(h),
            base_offset: h.base_offset as u64,
            last_offset: h.last_offset() as u64,
        };
        self.restore(h.producer_id, h.producer_epoch, batch);
    }
}
