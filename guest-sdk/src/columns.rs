//! Records as columns, the layout of plugin ABI version 2 in both directions: plain
//! little-endian arrays and one blob each for keys, values, header keys and header values
//! (`schema/weir.fbs`, `Batch2` and `Output2`). The host writes a batch with [`Columns`] and reads
//! an answer with [`ColumnsRef`]; the guest does the reverse with the same two types, so both
//! sides check the layout the same way.

use std::ops::Range;

use crate::abi::Span;

/// Bit 31 of a `key_ends` entry: the record's key is null.
pub const NULL_KEY: u32 = 1 << 31;
/// Bit 31 of a `value_ends` entry of an answer: the record's value is its source record's
/// value, which the answer does not repeat (its end is the entry before's).
pub const SOURCE_VALUE: u32 = 1 << 31;

/// A record's value as [`Columns::push`] lays it out.
#[derive(Clone, Copy, Debug)]
pub enum Value<'v> {
    Bytes(&'v [u8]),
    /// In an answer: the value of the input record the answered one came from.
    OfSource,
}

/// The arrays of records as columns, by index into [`Columns::arrays`] and a [`ColumnsRef`]'s
/// spans: timestamps `[i64]`, then key, value and header ends `[u32]` (one per record), header
/// key and value ends `[u32]` (one per header), then the four blobs.
pub const TIMESTAMPS: usize = 0;
pub const KEY_ENDS: usize = 1;
pub const VALUE_ENDS: usize = 2;
pub const HEADER_ENDS: usize = 3;
pub const HEADER_KEY_ENDS: usize = 4;
pub const HEADER_VALUE_ENDS: usize = 5;
pub const KEYS: usize = 6;
pub const VALUES: usize = 7;
pub const HEADER_KEYS: usize = 8;
pub const HEADER_VALUES: usize = 9;
/// How many arrays records as columns take.
pub const ARRAYS: usize = 10;

/// Where [`Columns`] puts bytes: a growing `Vec`, or a [`Cursor`] over room already made.
pub trait Array {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);
    /// Bytes put so far.
    fn filled(&self) -> usize;
}

impl Array for Vec<u8> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }

    #[inline]
    fn filled(&self) -> usize {
        self.len()
    }
}

/// Writes into a slice sized beforehand ([`sizes`]); putting more than it holds panics.
#[derive(Debug)]
pub struct Cursor<'a> {
    room: &'a mut [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(room: &'a mut [u8]) -> Cursor<'a> {
        Cursor { room, at: 0 }
    }
}

impl Array for Cursor<'_> {
    #[inline]
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at + bytes.len();
        self.room[self.at..end].copy_from_slice(bytes);
        self.at = end;
    }

    #[inline]
    fn filled(&self) -> usize {
        self.at
    }
}

/// Records being laid out as columns. With `Vec`s (the default) the arrays grow as records are
/// pushed and are kept between batches for their capacity; with [`Cursor`]s they are written
/// straight into room sized by [`sizes`].
#[derive(Clone, Debug, Default)]
pub struct Columns<A = Vec<u8>> {
    arrays: [A; ARRAYS],
    records: u32,
    headers: u32,
}

/// The largest blob or array one batch or answer may hold, so every end fits below
/// [`NULL_KEY`].
pub const COLUMN_BYTES_MAX: usize = (NULL_KEY - 1) as usize;

/// The length of each array, in the order of [`Columns::arrays`], for `records` records with
/// `headers` headers in all whose keys, values, header keys and header values take `blobs`
/// bytes.
pub fn sizes(records: usize, headers: usize, blobs: [usize; 4]) -> [usize; ARRAYS] {
    let [keys, values, header_keys, header_values] = blobs;
    [
        records * 8,
        records * 4,
        records * 4,
        records * 4,
        headers * 4,
        headers * 4,
        keys,
        values,
        header_keys,
        header_values,
    ]
}

fn end(blob: &impl Array) -> u32 {
    // Blobs are bounded by guest memory (at most 4 GiB) and checked against
    // `COLUMN_BYTES_MAX` before they are sent; the cast cannot lose bits that matter.
    blob.filled() as u32
}

impl Columns {
    pub fn clear(&mut self) {
        for array in &mut self.arrays {
            array.clear();
        }
        self.records = 0;
        self.headers = 0;
    }

    /// The arrays, in the order of their index constants ([`TIMESTAMPS`] …).
    pub fn arrays(&self) -> [&[u8]; ARRAYS] {
        self.arrays.each_ref().map(Vec::as_slice)
    }

    /// A view of the columns as pushed, for reading them back; they are well formed by
    /// construction.
    pub fn view(&self) -> ColumnsRef<'_> {
        ColumnsRef::unchecked(self.records as usize, self.arrays())
    }
}

impl<'a> Columns<Cursor<'a>> {
    /// Columns written into `rooms`, one per array, each as long as [`sizes`] says.
    pub fn over(rooms: [&'a mut [u8]; ARRAYS]) -> Columns<Cursor<'a>> {
        Columns {
            arrays: rooms.map(Cursor::new),
            records: 0,
            headers: 0,
        }
    }
}

impl<A: Array> Columns<A> {
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

    pub fn push<'h>(
        &mut self,
        key: Option<&[u8]>,
        value: Value,
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
        timestamp: i64,
    ) {
        let arrays = &mut self.arrays;
        arrays[TIMESTAMPS].put(&timestamp.to_le_bytes());
        let key_end = match key {
            Some(key) => {
                arrays[KEYS].put(key);
                end(&arrays[KEYS])
            }
            None => end(&arrays[KEYS]) | NULL_KEY,
        };
        arrays[KEY_ENDS].put(&key_end.to_le_bytes());
        let value_end = match value {
            Value::Bytes(value) => {
                arrays[VALUES].put(value);
                end(&arrays[VALUES])
            }
            Value::OfSource => end(&arrays[VALUES]) | SOURCE_VALUE,
        };
        arrays[VALUE_ENDS].put(&value_end.to_le_bytes());
        for (key, value) in headers {
            arrays[HEADER_KEYS].put(key);
            arrays[HEADER_VALUES].put(value);
            let key_end = end(&arrays[HEADER_KEYS]);
            let value_end = end(&arrays[HEADER_VALUES]);
            arrays[HEADER_KEY_ENDS].put(&key_end.to_le_bytes());
            arrays[HEADER_VALUE_ENDS].put(&value_end.to_le_bytes());
            self.headers += 1;
        }
        arrays[HEADER_ENDS].put(&self.headers.to_le_bytes());
        self.records += 1;
    }
}

/// Entry `i` of a little-endian `u32` array whose length was checked.
#[inline]
pub fn u32_at(array: &[u8], i: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&array[i * 4..i * 4 + 4]);
    u32::from_le_bytes(word)
}

/// Entry `i` of a little-endian `i64` array whose length was checked.
#[inline]
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
    arrays: [&'a [u8]; ARRAYS],
}

/// Where the arrays of a [`ColumnsRef`] lie, in the order of [`Columns::arrays`].
pub type Spans<'s> = [&'s Span; ARRAYS];

impl<'a> ColumnsRef<'a> {
    /// Records from arrays in the order of [`Columns::arrays`], taken as they are.
    fn unchecked(count: usize, arrays: [&'a [u8]; ARRAYS]) -> ColumnsRef<'a> {
        ColumnsRef { count, arrays }
    }

    /// Reads `count` records with `headers` headers from the arrays at `spans` inside `memory`.
    pub fn new(
        memory: &'a [u8],
        count: usize,
        headers: usize,
        spans: Spans,
    ) -> Result<ColumnsRef<'a>, String> {
        // (entries, bytes per entry, name) of each array; a blob has any length.
        let shapes = [
            (count, 8, "timestamps"),
            (count, 4, "key_ends"),
            (count, 4, "value_ends"),
            (count, 4, "header_ends"),
            (headers, 4, "header_key_ends"),
            (headers, 4, "header_value_ends"),
            (0, 0, "keys"),
            (0, 0, "values"),
            (0, 0, "header_keys"),
            (0, 0, "header_values"),
        ];
        let mut arrays: [&[u8]; ARRAYS] = [&[]; ARRAYS];
        for ((slot, span), (entries, width, what)) in arrays.iter_mut().zip(spans).zip(shapes) {
            *slot = array(memory, span, entries, width, what)?;
        }
        let columns = ColumnsRef::unchecked(count, arrays);
        // (ends array, mask of its ends, what they end inside)
        let ends = [
            (KEY_ENDS, !NULL_KEY, arrays[KEYS].len()),
            (VALUE_ENDS, !SOURCE_VALUE, arrays[VALUES].len()),
            (HEADER_ENDS, u32::MAX, headers),
            (HEADER_KEY_ENDS, u32::MAX, arrays[HEADER_KEYS].len()),
            (HEADER_VALUE_ENDS, u32::MAX, arrays[HEADER_VALUES].len()),
        ];
        for (index, mask, limit) in ends {
            check_ends(arrays[index], mask, limit, shapes[index].2)?;
        }
        Ok(columns)
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Entry `i` of an ends array as a range: from the previous entry's end to its own.
    #[inline]
    fn range(ends: &[u8], i: usize, mask: u32) -> Range<usize> {
        let start = if i == 0 {
            0
        } else {
            u32_at(ends, i - 1) & mask
        };
        start as usize..(u32_at(ends, i) & mask) as usize
    }

    #[inline]
    pub fn timestamp(&self, i: usize) -> i64 {
        i64_at(self.arrays[TIMESTAMPS], i)
    }

    /// Where record `i`'s key lies in the keys blob; `None` for a null key.
    #[inline]
    pub fn key_range(&self, i: usize) -> Option<Range<usize>> {
        let ends = self.arrays[KEY_ENDS];
        (u32_at(ends, i) & NULL_KEY == 0).then(|| Self::range(ends, i, !NULL_KEY))
    }

    /// Where record `i`'s value lies in the values blob; an empty range for a value of its
    /// source ([`ColumnsRef::value_of_source`]).
    #[inline]
    pub fn value_range(&self, i: usize) -> Range<usize> {
        Self::range(self.arrays[VALUE_ENDS], i, !SOURCE_VALUE)
    }

    /// Whether record `i` of an answer has its source record's value ([`SOURCE_VALUE`]).
    #[inline]
    pub fn value_of_source(&self, i: usize) -> bool {
        u32_at(self.arrays[VALUE_ENDS], i) & SOURCE_VALUE != 0
    }

    /// Where record `i`'s headers lie: (key range in the header keys blob, value range in the
    /// header values blob), in order.
    pub fn header_ranges(
        &self,
        i: usize,
    ) -> impl Iterator<Item = (Range<usize>, Range<usize>)> + use<'a> {
        let headers = Self::range(self.arrays[HEADER_ENDS], i, u32::MAX);
        let key_ends = self.arrays[HEADER_KEY_ENDS];
        let value_ends = self.arrays[HEADER_VALUE_ENDS];
        headers.map(move |h| {
            (
                Self::range(key_ends, h, u32::MAX),
                Self::range(value_ends, h, u32::MAX),
            )
        })
    }

    pub fn key(&self, i: usize) -> Option<&'a [u8]> {
        self.key_range(i).map(|r| &self.arrays[KEYS][r])
    }

    pub fn value(&self, i: usize) -> &'a [u8] {
        &self.arrays[VALUES][self.value_range(i)]
    }

    pub fn headers(&self, i: usize) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + use<'a> {
        let (keys, values) = (self.arrays[HEADER_KEYS], self.arrays[HEADER_VALUES]);
        self.header_ranges(i)
            .map(move |(k, v)| (&keys[k], &values[v]))
    }

    /// The keys, values, header keys and header values blobs, for a reader that slices them.
    pub fn blobs(&self) -> [&'a [u8]; 4] {
        [KEYS, VALUES, HEADER_KEYS, HEADER_VALUES].map(|i| self.arrays[i])
    }
}

/// Lays arrays of these lengths out one after another from `base`: the span of each.
pub fn layout<const N: usize>(lengths: [usize; N], base: usize) -> [Span; N] {
    let mut at = base;
    lengths.map(|len| {
        let span = Span::new(at as u32, len as u32);
        at += len;
        span
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spans(columns: &Columns) -> [Span; 10] {
        layout(columns.arrays().map(<[u8]>::len), 0)
    }

    fn flat(columns: &Columns) -> Vec<u8> {
        columns.arrays().concat()
    }

    #[test]
    fn records_read_back_as_pushed() {
        let mut columns = Columns::default();
        columns.push(
            Some(b"k1"),
            Value::Bytes(b"first"),
            [(&b"h"[..], &b"v"[..])],
            10,
        );
        columns.push(None, Value::Bytes(b""), [], -1);
        columns.push(
            Some(b""),
            Value::Bytes(b"third"),
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
    fn a_value_of_the_source_takes_no_bytes() {
        let mut columns = Columns::default();
        columns.push(None, Value::Bytes(b"first"), [], 1);
        columns.push(None, Value::OfSource, [], 2);
        columns.push(None, Value::Bytes(b"third"), [], 3);
        let memory = flat(&columns);
        let view = ColumnsRef::new(&memory, 3, 0, spans(&columns).each_ref()).unwrap();
        assert_eq!(view.arrays[VALUES], b"firstthird");
        assert!(!view.value_of_source(0) && view.value_of_source(1));
        assert_eq!(view.value(1), b"");
        assert_eq!(view.value(2), b"third");
    }

    #[test]
    fn columns_written_into_room_sized_beforehand_equal_grown_ones() {
        /// A record's key, value and headers.
        type Parts<'a> = (Option<&'a [u8]>, &'a [u8], &'a [(&'a [u8], &'a [u8])]);
        let records: [Parts; 3] = [
            (Some(b"k1"), b"first", &[(b"h", b"v")]),
            (None, b"", &[]),
            (Some(b""), b"third", &[(b"a", b""), (b"b", b"2")]),
        ];
        let mut grown: Columns = Columns::default();
        for (key, value, headers) in records {
            grown.push(key, Value::Bytes(value), headers.iter().copied(), 7);
        }
        let blobs = [KEYS, VALUES, HEADER_KEYS, HEADER_VALUES].map(|i| grown.arrays[i].len());
        let sizes = sizes(3, 3, blobs);
        let mut room = vec![0; sizes.iter().sum()];
        let mut rest = &mut room[..];
        let rooms = sizes.map(|size| {
            let (room, after) = std::mem::take(&mut rest).split_at_mut(size);
            rest = after;
            room
        });
        let mut written = Columns::over(rooms);
        for (key, value, headers) in records {
            written.push(key, Value::Bytes(value), headers.iter().copied(), 7);
        }
        assert_eq!(room, flat(&grown));
    }

    #[test]
    fn a_layout_that_lies_is_refused() {
        let mut columns = Columns::default();
        columns.push(Some(b"key"), Value::Bytes(b"value"), [], 1);
        columns.push(Some(b"k"), Value::Bytes(b"v"), [], 2);
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
        swapped.arrays[VALUE_ENDS].rotate_left(4);
        let memory = flat(&swapped);
        assert!(ColumnsRef::new(&memory, 2, 0, spans).is_err());
        // An end past its blob.
        let mut long = columns.clone();
        long.arrays[VALUES].pop();
        let memory = flat(&long);
        let spans = layout(long.arrays().map(<[u8]>::len), 0);
        assert!(ColumnsRef::new(&memory, 2, 0, spans.each_ref()).is_err());
    }
}
