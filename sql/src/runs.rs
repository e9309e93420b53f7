//! Byte strings laid end to end in one buffer, each found by its index: one allocation for
//! many small texts instead of one each.

use bytes::Bytes;

/// Byte strings laid end to end: run `i` ends at `ends[i]` and starts where run `i - 1` ends.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Runs {
    /// Room for `runs` runs of `bytes` bytes in all.
    pub(crate) fn with_capacity(runs: usize, bytes: usize) -> Runs {
        Runs {
            bytes: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(runs),
        }
    }

    /// Adds the run `write` writes at the end of the buffer.
    pub(crate) fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.bytes);
        self.ends.push(self.bytes.len());
    }

    pub(crate) fn push(&mut self, run: &[u8]) {
        self.push_with(|bytes| bytes.extend_from_slice(run));
    }

    /// Run `i`.
    pub(crate) fn get(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |j| self.ends[j]);
        &self.bytes[start..self.ends[i]]
    }

    /// How many runs there are.
    pub(crate) fn count(&self) -> usize {
        self.ends.len()
    }

    /// The runs' bytes, all together.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes.len()
    }

    /// How many runs there is room for without growing.
    pub(crate) fn room(&self) -> usize {
        self.ends.capacity()
    }

    /// Makes room for `more` bytes of runs.
    pub(crate) fn reserve_bytes(&mut self, more: usize) {
        self.bytes.reserve(more);
    }

    /// Each run, in order, as a slice of one buffer they all share.
    pub(crate) fn into_shared(self) -> impl Iterator<Item = Bytes> {
        let shared = Bytes::from(self.bytes);
        let mut start = 0;
        self.ends.into_iter().map(move |end| {
            let run = shared.slice(start..end);
            start = end;
            run
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_found_by_index_and_shared_in_order() {
        let mut runs = Runs::with_capacity(4, 8);
        runs.push(b"ab");
        runs.push(b"");
        runs.push_with(|b| b.extend_from_slice(b"cde"));
        assert_eq!((runs.count(), runs.bytes()), (3, 5));
        assert_eq!(
            [runs.get(0), runs.get(1), runs.get(2)],
            [&b"ab"[..], b"", b"cde"]
        );
        assert!(runs.room() >= 4);
        let shared: Vec<Bytes> = runs.into_shared().collect();
        assert_eq!(shared, [&b"ab"[..], b"", b"cde"]);
    }
}
