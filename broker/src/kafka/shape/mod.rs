//! The wire layout of every request the broker serves, and a walk over a request body that
//! checks every count and length against the bytes that follow it.
//!
//! The `kafka-protocol` crate sizes each array's `Vec` from the count on the wire before it reads
//! an element, so an 18-byte request claiming 2³¹ entries asks the allocator for gigabytes and
//! aborts the process. A request body is walked here first: an array may claim no more elements
//! than bytes remain (every element takes at least one), a string or byte field no more bytes,
//! and a whole request at most [`REQUEST_ELEMENTS_MAX`] array elements, which bounds what its
//! decoded form can take in memory. Only a body that passes is handed to the crate's decoder.
//!
//! The layout comes from Apache Kafka's message definitions through
//! `scripts/kafka-request-shapes`, which writes `table.rs`.

mod table;

use kafka_protocol::messages::ApiKey;

/// Array elements one request may hold, over all its arrays. A decoded element takes tens of
/// bytes where its encoding may take two, so this, not the frame size, bounds the memory a
/// request's decoded form holds: a Produce to 200 000 partitions, or Metadata for as many topics,
/// is far past what a client sends.
pub const REQUEST_ELEMENTS_MAX: u64 = 200_000;

/// How one field is encoded.
#[derive(Debug)]
pub(crate) enum Kind {
    /// Integers, booleans, floats and UUIDs: this many bytes.
    Fixed(u8),
    /// A string: i16 length, or unsigned varint length + 1 in flexible versions; -1 / 0 is null.
    String,
    /// Bytes or records: i32 length, or unsigned varint length + 1 in flexible versions.
    Bytes,
    /// An array: i32 count, or unsigned varint count + 1 in flexible versions.
    Array(&'static Kind),
    /// A struct: its fields in order, then tagged fields in flexible versions.
    Struct(&'static [Field]),
}

/// A field present in versions `since..=until`.
#[derive(Debug)]
pub(crate) struct Field {
    since: i16,
    until: i16,
    kind: Kind,
}

/// A request body: the versions the broker serves and the first flexible one.
#[derive(Debug)]
pub(crate) struct Message {
    versions: (i16, i16),
    flexible_from: i16,
    fields: &'static [Field],
}

/// Why a request body was refused before decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("{api:?} v{version} is not a request this broker walks")]
    Unknown { api: ApiKey, version: i16 },
    #[error("request ends at byte {at}, inside a field")]
    Truncated { at: usize },
    #[error("varint at byte {at} is longer than 5 bytes")]
    LongVarint { at: usize },
    #[error("length {length} at byte {at} is negative")]
    NegativeLength { at: usize, length: i64 },
    #[error("array at byte {at} claims {count} elements but only {remaining} bytes follow")]
    ArrayTooLong {
        at: usize,
        count: u64,
        remaining: usize,
    },
    #[error("request holds more than {elements_max} array elements")]
    TooManyElements { elements_max: u64 },
}

/// Every API the table walks, with the versions it walks.
pub fn served() -> impl Iterator<Item = (ApiKey, (i16, i16))> {
    table::MESSAGES.iter().map(|(api, m)| (*api, m.versions))
}

/// The layout of `api` requests, if the broker serves the API.
pub(crate) fn message(api: ApiKey) -> Option<&'static Message> {
    table::MESSAGES
        .iter()
        .find(|(key, _)| *key == api)
        .map(|(_, m)| m)
}

/// Walks a request body (the bytes after the request header) of `api` at `version`. Bytes after
/// the last field are left alone, as the decoder leaves them.
pub fn check(api: ApiKey, version: i16, body: &[u8]) -> Result<(), ShapeError> {
    let message = message(api)
        .filter(|m| (m.versions.0..=m.versions.1).contains(&version))
        .ok_or(ShapeError::Unknown { api, version })?;
    let mut walk = Walk {
        body,
        at: 0,
        version,
        flexible: version >= message.flexible_from,
        elements: 0,
    };
    walk.fields(message.fields)
}

struct Walk<'a> {
    body: &'a [u8],
    at: usize,
    version: i16,
    flexible: bool,
    elements: u64,
}

impl Walk<'_> {
    fn remaining(&self) -> usize {
        self.body.len() - self.at
    }

    fn skip(&mut self, bytes: usize) -> Result<(), ShapeError> {
        if bytes > self.remaining() {
            return Err(ShapeError::Truncated {
                at: self.body.len(),
            });
        }
        self.at += bytes;
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], ShapeError> {
        let start = self.at;
        self.skip(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(&self.body[start..self.at]);
        Ok(out)
    }

    fn uvarint(&mut self) -> Result<u32, ShapeError> {
        let start = self.at;
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.take::<1>()?;
            value |= u32::from(b & 0x7f) << (i * 7);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(ShapeError::LongVarint { at: start })
    }

    /// A length or count: i16 or i32 in classic versions, unsigned varint + 1 in flexible ones.
    /// `None` is null.
    fn length(&mut self, classic_bytes: usize) -> Result<Option<u64>, ShapeError> {
        let at = self.at;
        let length = if self.flexible {
            i64::from(self.uvarint()?) - 1
        } else if classic_bytes == 2 {
            i64::from(i16::from_be_bytes(self.take()?))
        } else {
            i64::from(i32::from_be_bytes(self.take()?))
        };
        match length {
            -1 => Ok(None),
            n if n < 0 => Err(ShapeError::NegativeLength { at, length: n }),
            n => Ok(Some(n as u64)),
        }
    }

    fn fields(&mut self, fields: &[Field]) -> Result<(), ShapeError> {
        for field in fields {
            if (field.since..=field.until).contains(&self.version) {
                self.kind(&field.kind)?;
            }
        }
        if self.flexible {
            self.tagged()?;
        }
        Ok(())
    }

    fn kind(&mut self, kind: &Kind) -> Result<(), ShapeError> {
        match kind {
            Kind::Fixed(bytes) => self.skip(usize::from(*bytes)),
            Kind::String => self.sized(2),
            Kind::Bytes => self.sized(4),
            Kind::Array(element) => {
                let at = self.at;
                let Some(count) = self.length(4)? else {
                    return Ok(());
                };
                if count > self.remaining() as u64 {
                    return Err(ShapeError::ArrayTooLong {
                        at,
                        count,
                        remaining: self.remaining(),
                    });
                }
                self.elements += count;
                if self.elements > REQUEST_ELEMENTS_MAX {
                    return Err(ShapeError::TooManyElements {
                        elements_max: REQUEST_ELEMENTS_MAX,
                    });
                }
                for _ in 0..count {
                    self.kind(element)?;
                }
                Ok(())
            }
            Kind::Struct(fields) => self.fields(fields),
        }
    }

    fn sized(&mut self, classic_bytes: usize) -> Result<(), ShapeError> {
        match self.length(classic_bytes)? {
            None => Ok(()),
            Some(bytes) => {
                let bytes = usize::try_from(bytes).map_err(|_| ShapeError::Truncated {
                    at: self.body.len(),
                })?;
                self.skip(bytes)
            }
        }
    }

    /// The tagged-field section of a flexible struct: a count, then tag, size and value each.
    /// The decoder reads tags it knows as their types; none of those in the versions served
    /// holds an array (the table's script refuses to write one that does).
    fn tagged(&mut self) -> Result<(), ShapeError> {
        let count = self.uvarint()?;
        for _ in 0..count {
            self.uvarint()?;
            let size = self.uvarint()?;
            self.skip(size as usize)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
