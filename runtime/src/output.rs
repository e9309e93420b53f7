//! A plugin's answer to a batch, read back from guest memory: the flatbuffers `Output` of the
//! ABI, verified, every index it names checked against the batch it answers. Nothing here runs
//! a plugin, so the reader can be tested and fuzzed on its own.

use bytes::Bytes;
pub use weir::__rt::NO_SOURCE;
use weir::abi;
use weir_storage::{Header, NewRecord};

/// One record a plugin produced.
#[derive(Clone, Debug, PartialEq)]
pub struct OutRecord {
    /// Index of the input record it came from; [`NO_SOURCE`] for a window the watermark closed.
    pub source: u32,
    pub record: NewRecord,
    pub topic: Option<String>,
    pub partition: Option<u32>,
}

/// The answer to one batch, checked against the batch it answers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Output {
    pub kept: Vec<u32>,
    pub records: Vec<OutRecord>,
    /// One per input record for a partitioner (`u32::MAX` where it failed), else empty.
    pub partitions: Vec<u32>,
    /// (source, message); the source is [`NO_SOURCE`] when no input record failed (a window
    /// that did not finish).
    pub failures: Vec<(u32, String)>,
    /// The sources of the failures that are records after their window closed.
    pub late: Vec<u32>,
    pub state: Option<Vec<u8>>,
}

/// Parses and checks an `Output` answering a batch of `count` records; an error says what is
/// wrong with it. Record fields are slices of `bytes` (one copy of the answer, none per record).
pub fn read(bytes: &Bytes, count: usize) -> Result<Output, String> {
    let output =
        flatbuffers::root::<abi::Output>(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let in_range = |index: u32, what: &str| {
        if (index as usize) < count {
            Ok(index)
        } else {
            Err(format!(
                "{what} {index} is not an index of the {count} input records"
            ))
        }
    };
    let source = |index: u32, what: &str| match index {
        NO_SOURCE => Ok(NO_SOURCE),
        index => in_range(index, what),
    };
    let kept = output
        .kept()
        .into_iter()
        .flatten()
        .map(|i| in_range(i, "kept"))
        .collect::<Result<Vec<_>, String>>()?;
    let partitions: Vec<u32> = output.partitions().into_iter().flatten().collect();
    if !partitions.is_empty() && partitions.len() != count {
        return Err(format!(
            "{} partitions for {count} records",
            partitions.len()
        ));
    }
    let mut late = Vec::new();
    let failures = output
        .failures()
        .into_iter()
        .flatten()
        .map(|f| {
            let source = source(f.source(), "failure source")?;
            if f.late() {
                late.push(source);
            }
            Ok((source, f.message().unwrap_or_default().to_owned()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    let records = output
        .records()
        .into_iter()
        .flatten()
        .map(|r| {
            let bytes = |v: Option<flatbuffers::Vector<u8>>| v.map(|v| bytes.slice_ref(v.bytes()));
            let headers = r.headers().into_iter().flatten();
            Ok(OutRecord {
                source: source(r.source(), "record source")?,
                record: NewRecord {
                    timestamp: r.timestamp(),
                    key: bytes(r.key()),
                    value: bytes(r.value()),
                    headers: headers
                        .map(|h| Header {
                            key: h.key().unwrap_or_default().to_owned(),
                            value: bytes(h.value()),
                        })
                        .collect(),
                },
                topic: r.topic().map(str::to_owned),
                partition: u32::try_from(r.partition()).ok(),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let state = output.state().map(|s| s.bytes().to_vec());
    Ok(Output {
        kept,
        records,
        partitions,
        failures,
        late,
        state,
    })
}
