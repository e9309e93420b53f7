//! Records as columns, the layout of plugin ABI version 2 in both directions: plain
//! little-endian arrays and one blob each for keys, values, header keys and header values
//! (`schema/weir.fbs`, `Batch2` and `Output2`). The host writes a batch with [`Columns`] and reads
//! an answer with [`ColumnsRef`]; the guest does the reverse with the same two types, so both
//! sides check the layout the same way.

use std::ops::Range;

use crate::abi::Span;

/// Bit 31 of a `key_ends` entry: the record's key is null.
pub const NULL_KEY: u32 = 1 << 31;

/// Records being laid out as columns; the arrays are kept between batches for their capacity.
#[derive(Clone, Debug, Default)]
pub struct Columns {
    pub timestamps: Vec<u8>,
    pub key_ends: Vec<u8>,
    pub value_ends: Vec<u8>,
    pub header_ends: Vec<u8>,
    pub header_key_ends: Vec<u8>,
    pub header_value_ends: Vec<u8>,
    pub keys: Vec<u8>,
    pub values: Vec<u8>,
    pub header_keys: Vec<u8>,
    pub header_values: Vec<u8>,
    records: u32,
    headers: u32,
}

/// The largest blob or array one batch or answer may hold, so every end fits below
/// [`NULL_KEY`].
pub const COLUMN_BYTES_MAX: usize = (NULL_KEY - 1) as usize;

fn end(blob: &[u8]) -> u32 {
    // Blobs are bounded by guest memory (at most 4 GiB) and checked against
    // `COLUMN_BYTES_MAX` before they are sent; the cast cannot lose bits that matter.
    blob.len() as u32
}

impl Columns {
    pub fn clear(&mut self) {
        for array in self.arrays_mut() {
            array.clear();
        }
        self.records = 0;
        self.headers = 0;
    }

    fn arrays_mut(&mut self) -> [&mut Vec<u8>; 10] {
        [
            &mut self.timestamps,
            &mut self.key_ends,
            &mut self.value_ends,
            &mut self.header_ends,
            &mut self.header_key_ends,
            &mut self.header_value_ends,
            &mut self.keys,
            &mut self.values,
            &mut self.header_keys,
            &mut self.header_values,
        ]
    }

    /// The arrays in the order of [`ColumnsRef::new`]'s spans.
    pub fn arrays(&self) -> [&[u8]; 10] {
        [
            &self.timestamps,
            &self.key_ends,
            &self.value_ends,
            &self.header_ends,
            &self.header_key_ends,
            &self.header_value_ends,
            &self.keys,
            &self.values,
            &self.header_keys,
            &self.header_values,
        ]
    }

    /// Records pushed since the last [`Columns::clear`].
    pub fn len(&self) -> u32 {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Headers of all records pushed.
    pub fn header_count(&self) -> u32 {
        self.headers
    }

    /// The largest blob, to check against [`COLUMN_BYTES_MAX`] before the columns are sent.
    pub fn largest_blob(&self) -> usize {
        self.arrays().iter().map(|a| a.len()).max().unwrap_or(0)
    }

    pub fn push<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        timestamp: i64,
    ) {
        self.timestamps.extend_from_slice(&timestamp.to_le_bytes());
        let key_end = match key {
            Some(key) => {
                self.keys.extend_from_slice(key);
                end(&self.keys)
            }
            None => end(&self.keys) | NULL_KEY,
        };
        self.key_ends.extend_from_slice(&key_end.to_le_bytes());
        self.values.extend_from_slice(value);
        self.value_ends
            .extend_from_slice(&end(&self.values).to_le_bytes());
        for (key, value) in headers {
            self.header_keys.extend_from_slice(key);
            self.header_values.extend_from_slice(value);
            self.header_key_ends
                .extend_from_slice(&end(&self.header_keys).to_le_bytes());
            self.header_value_ends
                .extend_from_slice(&end(&self.header_values).to_le_bytes());
            self.headers += 1;
        }
        self.header_ends
            .extend_from_slice(&self.headers.to_le_bytes());
        self.records += 1;
    }

    /// A view of the columns as pushed, for reading them back.
    pub fn view(&self) -> ColumnsRef<'_> {
        let [
            timestamps,
            key_ends,
            value_ends,
            header_ends,
            header_key_ends,
            header_value_ends,
            keys,
            values,
            header_keys,
            header_values,
        ] = self.arrays();
        ColumnsRef {
            count: self.records as usize,
            timestamps,
            key_ends,
            value_ends,
            header_ends,
            header_key_ends,
            header_value_ends,
            keys,
            values,
            header_keys,
            header_values,
        }
    }
}

/// Entry `i` of a little-endian `u32` array whose length was checked.
pub fn u32_at(array: &[u8], i: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&array[i * 4..i * 4 + 4]);
    u32::from_le_bytes(word)
}

/// Entry `i` of a little-endian `i64` array whose length was checked.
pub fn i64_at(array: &[u8], i: usize) -> i64 {
    let mut word = [0; 8];
    word.copy_from_slice(&array[i * 8..i * 8 + 8]);
    i64::from_le_bytes(word)
}

/// The `N` spans of an envelope's `spans` vector; another number is an error.
pub fn spans<'a, const N: usize>(
    spans: Option<flatbuffers::Vector<'a, Span>>,
) -> Result<[&'a Span; N], String> {
    let spans = spans.ok_or("the envelope has no spans")?;
    if spans.len() != N {
        return Err(format!("{} spans, not {N}", spans.len()));
    }
    Ok(std::array::from_fn(|i| spans.get(i)))
}

/// The bytes of `span` inside `memory`, checked to hold `count` entries of `width` bytes (any
/// length when `width` is 0: a blob).
pub fn array<'a>(
    memory: &'a [u8],
    span: &Span,
    count: usize,
    width: usize,
    what: &str,
) -> Result<&'a [u8], String> {
    let (start, len) = (span.start() as usize, span.len() as usize);
    let bytes = memory
        .get(start..start.saturating_add(len))
        .ok_or_else(|| format!("{what} at {start}+{len} is outside the buffer"))?;
    if width != 0 && Some(len) != count.checked_mul(width) {
        return Err(format!(
            "{what} holds {len} bytes, not {count} entries of {width}"
        ));
    }
    Ok(bytes)
}

/// Checks the ends of a `u32` array (masked by `mask`) never decrease and stay within `limit`.
fn check_ends(ends: &[u8], mask: u32, limit: usize, what: &str) -> Result<(), String> {
    let mut previous = 0;
    for i in 0..ends.len() / 4 {
        let end = u32_at(ends, i) & mask;
        if end < previous {
            return Err(format!(
                "{what}[{i}] = {end} is before the entry ahead of it"
            ));
        }
        previous = end;
    }
    if previous as usize > limit {
        return Err(format!("{what} end at {previous} past its {limit} bytes"));
    }
    Ok(())
}

/// Records laid out as columns, checked once: every array holds its count of entries, every
/// ends array is non-decreasing and ends inside its blob. Reading record `i < len()` cannot
/// fail after that.
#[derive(Clone, Copy, Debug)]
pub struct ColumnsRef<'a> {
    count: usize,
    timestamps: &'a [u8],
    key_ends: &'a [u8],
    value_ends: &'a [u8],
    header_ends: &'a [u8],
    header_key_ends: &'a [u8],
    header_value_ends: &'a [u8],
    keys: &'a [u8],
    values: &'a [u8],
    header_keys: &'a [u8],
    header_values: &'a [u8],
}

/// Where the arrays of a [`ColumnsRef`] lie, in the order of [`Columns::arrays`].
pub type Spans<'s> = [&'s Span; 10];

impl<'a> ColumnsRef<'a> {
    /// Reads `count` records with `headers` headers from the arrays at `spans` inside `memory`.
    pub fn new(
        memory: &'a [u8],
        count: usize,
        headers: usize,
        spans: Spans,
    ) -> Result<ColumnsRef<'a>, String> {
        let [
            timestamps,
            key_ends,
            value_ends,
            header_ends,
            header_key_ends,
            header_value_ends,
            keys,
            values,
            header_keys,
            header_values,
        ] = spans;
        let columns = ColumnsRef {
            count,
            timestamps: array(memory, timestamps, count, 8, "timestamps")?,
            key_ends: array(memory, key_ends, count, 4, "key_ends")?,
            value_ends: array(memory, value_ends, count, 4, "value_ends")?,
            header_ends: array(memory, header_ends, count, 4, "header_ends")?,
            header_key_ends: array(memory, header_key_ends, headers, 4, "header_key_ends")?,
            header_value_ends: array(memory, header_value_ends, headers, 4, "header_value_ends")?,
            keys: array(memory, keys, 0, 0, "keys")?,
            values: array(memory, values, 0, 0, "values")?,
            header_keys: array(memory, header_keys, 0, 0, "header_keys")?,
            header_values: array(memory, header_values, 0, 0, "header_values")?,
        };
        check_ends(columns.key_ends, !NULL_KEY, columns.keys.len(), "key_ends")?;
        check_ends(
            columns.value_ends,
            u32::MAX,
            columns.values.len(),
            "value_ends",
        )?;
        check_ends(columns.header_ends, u32::MAX, headers, "header_ends")?;
        check_ends(
            columns.header_key_ends,
            u32::MAX,
            columns.header_keys.len(),
            "header_key_ends",
        )?;
        check_ends(
            columns.header_value_ends,
            u32::MAX,
            columns.header_values.len(),
            "header_value_ends",
        )?;
        Ok(columns)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `i` of an ends array as a range: from the previous entry's end to its own.
    fn range(ends: &[u8], i: usize, mask: u32) -> Range<usize> {
        let start = if i == 0 {
            0
        } else {
            u32_at(ends, i - 1) & mask
        };
        start as usize..(u32_at(ends, i) & mask) as usize
    }

    pub fn timestamp(&self, i: usize) -> i64 {
        i64_at(self.timestamps, i)
    }

    /// Where record `i`'s key lies in the keys blob; `None` for a null key.
    pub fn key_range(&self, i: usize) -> Option<Range<usize>> {
        (u32_at(self.key_ends, i) & NULL_KEY == 0).then(|| Self::range(self.key_ends, i, !NULL_KEY))
    }

    pub fn value_range(&self, i: usize) -> Range<usize> {
        Self::range(self.value_ends, i, u32::MAX)
    }

    /// Where record `i`'s headers lie: (key range in the header keys blob, value range in the
    /// header values blob), in order.
    pub fn header_ranges(
        &self,
        i: usize,
    ) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + use<'a> {
        let headers = Self::range(self.header_ends, i, u32::MAX);
        let (key_ends, value_ends) = (self.header_key_ends, self.header_value_ends);
        headers.map(move |h| {
            (
                Self::range(key_ends, h, u32::MAX),
                Self::range(value_ends, h, u32::MAX),
            )
        })
    }

    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.key_range(i).map(|r| &self.keys[r])
    }

    pub fn value(&self, i: usize) -> &'a [u8] {
        &self.values[self.value_range(i)]
    }

    pub fn headers(&self, i: usize) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let (keys, values) = (self.header_keys, self.header_values);
        self.header_ranges(i)
            .map(move |(k, v)| (&keys[k], &values[v]))
    }

    /// The keys, values, header keys and header values blobs, for a reader that slices them.
    pub fn blobs(&self) -> [&'a [u8]; 4] {
        [self.keys, self.values, self.header_keys, self.header_values]
    }
}

/// Lays arrays out one after another from `base`: the span of each.
pub fn layout<const N: usize>(arrays: [&[u8]; N], base: usize) -> [Span; N] {
    let mut at = base;
    arrays.map(|array| {
        let span = Span::new(at as u32, array.len() as u32);
        at += array.len();
        span
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(columns: &Columns) -> [Span; 10] {
        layout(columns.arrays(), 0)
    }

    fn flat(columns: &Columns) -> Vec<u8> {
        columns.arrays().concat()
    }

    #[test]
    fn records_read_back_as_pushed() {
        let mut columns = Columns::default();
        columns.push(Some(b"k1"), b"first", [(&b"h"[..], &b"v"[..])], 10);
        columns.push(None, b"", [], -1);
        columns.push(
            Some(b""),
            b"third",
            [(&b"a"[..], &b""[..]), (&b"b"[..], &b"2"[..])],
            30,
        );
        let memory = flat(&columns);
        let spans = spans(&columns);
        let view = ColumnsRef::new(&memory, 3, 3, spans.each_ref()).unwrap();
        assert_eq!(view.len(), 3);
        assert_eq!(view.key(0), Some(&b"k1"[..]));
        assert_eq!(view.key(1), None);
        assert_eq!(view.key(2), Some(&b""[..]));
        assert_eq!(view.value(0), b"first");
        assert_eq!(view.value(1), b"");
        assert_eq!(view.timestamp(1), -1);
        let headers: Vec<_> = view.headers(2).collect();
        assert_eq!(headers, [(&b"a"[..], &b""[..]), (&b"b"[..], &b"2"[..])]);
        assert_eq!(view.headers(1).count(), 0);
        let own = columns.view();
        assert_eq!(own.value(2), b"third");
    }

    #[test]
    fn a_layout_that_lies_is_refused() {
        let mut columns = Columns::default();
        columns.push(Some(b"key"), b"value", [], 1);
        columns.push(Some(b"k"), b"v", [], 2);
        let memory = flat(&columns);
        let spans = spans(&columns);
        let spans = spans.each_ref();
        assert!(
            ColumnsRef::new(&memory, 3, 0, spans).is_err(),
            "wrong count"
        );
        assert!(
            ColumnsRef::new(&memory, 2, 1, spans).is_err(),
            "wrong header count"
        );
        assert!(ColumnsRef::new(&memory[..memory.len() - 1], 2, 0, spans).is_err());
        // Value ends out of order.
        let mut swapped = columns.clone();
        swapped.value_ends.rotate_left(4);
        let memory = flat(&swapped);
        assert!(ColumnsRef::new(&memory, 2, 0, spans).is_err());
        // An end past its blob.
        let mut long = columns.clone();
        long.values.pop();
        let memory = flat(&long);
        let spans = layout(long.arrays(), 0);
        assert!(ColumnsRef::new(&memory, 2, 0, spans.each_ref()).is_err());
    }
}
