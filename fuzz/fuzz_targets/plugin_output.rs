//! A plugin's answer as the host reads it from guest memory: any bytes, answering a batch of a
//! size the input picks. Reading refuses what does not verify or names records the batch does
//! not have, and never panics.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [count, rest @ ..] = data else {
        return;
    };
    let count = usize::from(*count);
    if let Ok(output) = weir_runtime::output::read(&Bytes::copy_from_slice(rest), count) {
        assert!(output.kept.iter().all(|&i| (i as usize) < count));
        assert!(output.records.iter().all(|r| (r.source as usize) < count));
        assert!(output.partitions.is_empty() || output.partitions.len() == count);
    }
});
