//! A plugin's answer as the host reads it from guest memory: any bytes, answering a batch of a
//! size the input picks, read both as a version 1 `Output` and as guest memory holding a version
//! 2 `Output2` envelope at its start, whose spans point anywhere in it and which may mark a
//! value as its input record's. Reading refuses what does not verify, lies about its arrays or
//! names records the batch does not have (a record or failure may name none: a window the
//! watermark closed), and never panics.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use weir_runtime::output::{NO_SOURCE, Output};
use weir_storage::Record;

fuzz_target!(|data: &[u8]| {
    let [count, rest @ ..] = data else {
        return;
    };
    let count = usize::from(*count);
    if let Ok(output) = weir_runtime::output::read(&Bytes::copy_from_slice(rest), count) {
        check(&output, count);
    }
    let inputs = vec![
        Record {
            offset: 0,
            timestamp: 0,
            key: None,
            value: Some(Bytes::from_static(b"input")),
            headers: Vec::new(),
        };
        count
    ];
    if let Ok(output) = weir_runtime::output::read_v2(rest, 0, rest.len(), &inputs, 1 << 20) {
        check(&output, count);
    }
});

fn check(output: &Output, count: usize) {
    assert!(output.kept.iter().all(|&i| (i as usize) < count));
    let named = |source: u32| source == NO_SOURCE || (source as usize) < count;
    assert!(output.records.iter().all(|r| named(r.source)));
    assert!(output.failures.iter().all(|(source, _)| named(*source)));
    assert!(
        output
            .late
            .iter()
            .all(|l| output.failures.iter().any(|(source, _)| source == l))
    );
    assert!(output.partitions.is_empty() || output.partitions.len() == count);
}
