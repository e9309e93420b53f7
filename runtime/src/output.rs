//! A plugin's answer to a batch, read back from guest memory: the flatbuffers `Output` of ABI
//! version 1, or the `Output2` envelope of version 2 with the columns it points at, verified,
//! every index it names checked against the batch it answers. Nothing here runs a plugin, so the
//! readers can be tested and fuzzed on their own.

use bytes::Bytes;
pub use weir::__rt::NO_SOURCE;
use weir::abi;
use weir::columns::{self, ColumnsRef};
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

/// `index` when it names one of the `count` input records.
fn in_range(index: u32, count: usize, what: &str) -> Result<u32, String> {
    if (index as usize) < count {
        Ok(index)
    } else {
        Err(format!(
            "{what} {index} is not an index of the {count} input records"
        ))
    }
}

/// `index` when it names an input record or none ([`NO_SOURCE`]).
fn source(index: u32, count: usize, what: &str) -> Result<u32, String> {
    match index {
        NO_SOURCE => Ok(NO_SOURCE),
        index => in_range(index, count, what),
    }
}

/// An answer's failures, (source, message), and the sources of those that are late records.
type Failures = (Vec<(u32, String)>, Vec<u32>);

/// The failures of an answer, checked.
fn failures<'a>(
    failures: Option<flatbuffers::Vector<'a, flatbuffers::ForwardsUOffset<abi::Failure<'a>>>>,
    count: usize,
) -> Result<Failures, String> {
    let mut late = Vec::new();
    let failures = failures
        .into_iter()
        .flatten()
        .map(|f| {
            let source = source(f.source(), count, "failure source")?;
            if f.late() {
                late.push(source);
            }
            Ok((source, f.message().unwrap_or_default().to_owned()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok((failures, late))
}

/// A partitioner's answer: none, or one partition for each of the `count` records.
fn check_partitions(partitions: &[u32], count: usize) -> Result<(), String> {
    if partitions.is_empty() || partitions.len() == count {
        Ok(())
    } else {
        Err(format!(
            "{} partitions for {count} records",
            partitions.len()
        ))
    }
}

/// Parses and checks an `Output` answering a batch of `count` records; an error says what is
/// wrong with it. Record fields are slices of `bytes` (one copy of the answer, none per record).
pub fn read(bytes: &Bytes, count: usize) -> Result<Output, String> {
    let output =
        flatbuffers::root::<abi::Output>(bytes).map_err(|e| format!("does not parse: {e}"))?;
    let kept = output
        .kept()
        .into_iter()
        .flatten()
        .map(|i| in_range(i, count, "kept"))
        .collect::<Result<Vec<_>, String>>()?;
    let partitions: Vec<u32> = output.partitions().into_iter().flatten().collect();
    check_partitions(&partitions, count)?;
    let (failures, late) = failures(output.failures(), count)?;
    let records = output
        .records()
        .into_iter()
        .flatten()
        .map(|r| {
            let bytes = |v: Option<flatbuffers::Vector<u8>>| v.map(|v| bytes.slice_ref(v.bytes()));
            let headers = r.headers().into_iter().flatten();
            Ok(OutRecord {
                source: source(r.source(), count, "record source")?,
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

/// Parses and checks an `Output2` envelope at `address`+`len` of guest `memory`, answering a
/// batch of `count` records, and the arrays it points at (together at most `bytes_max`). The
/// keys, values and header values of the records built are copied out once, a blob each;
/// record fields are slices of those.
pub fn read_v2(
    memory: &[u8],
    address: usize,
    len: usize,
    count: usize,
    bytes_max: u64,
) -> Result<Output, String> {
    if len as u64 > bytes_max {
        return Err(format!(
            "{len} bytes of output, more than the limit of {bytes_max}"
        ));
    }
    let envelope = memory
        .get(address..address.saturating_add(len))
        .ok_or_else(|| format!("answer at {address}+{len} is outside memory"))?;
    let output =
        flatbuffers::root::<abi::Output2>(envelope).map_err(|e| format!("does not parse: {e}"))?;
    let [
        selected,
        partitions,
        sources,
        targets,
        topics,
        record_spans @ ..,
    ] = columns::spans::<15>(output.spans())?;
    let total = [selected, partitions, sources, targets, topics]
        .iter()
        .chain(&record_spans)
        .map(|s| u64::from(s.len()))
        .sum::<u64>()
        + len as u64;
    if total > bytes_max {
        return Err(format!(
            "{total} bytes of output, more than the limit of {bytes_max}"
        ));
    }
    let selected = columns::array(memory, selected, 0, 0, "selected")?;
    if selected.len() > count.div_ceil(8) {
        return Err(format!(
            "selection of {} bytes for {count} records",
            selected.len()
        ));
    }
    let kept = (0..selected.len() * 8)
        .filter(|i| selected[i / 8] & (1 << (i % 8)) != 0)
        .map(|i| in_range(i as u32, count, "kept"))
        .collect::<Result<Vec<_>, String>>()?;
    let partitions = match partitions.len() {
        0 => Vec::new(),
        _ => {
            let array = columns::array(memory, partitions, count, 4, "partitions")?;
            (0..count).map(|i| columns::u32_at(array, i)).collect()
        }
    };
    check_partitions(&partitions, count)?;
    let (failures, late) = failures(output.failures(), count)?;
    let built = output.records() as usize;
    let view = ColumnsRef::new(memory, built, output.headers() as usize, record_spans)?;
    let sources = columns::array(memory, sources, built, 4, "sources")?;
    let targets = columns::array(memory, targets, built, 4, "targets")?;
    let topics = columns::array(memory, topics, built, 4, "topics")?;
    let topic_names: Vec<&str> = output.topic_names().into_iter().flatten().collect();
    let [keys, values, header_keys, header_values] = view.blobs();
    let [keys, values, header_values] = [keys, values, header_values].map(Bytes::copy_from_slice);
    let records = (0..built)
        .map(|i| {
            let headers = view
                .header_ranges(i)
                .map(|(key, value)| {
                    let key = std::str::from_utf8(&header_keys[key])
                        .map_err(|e| format!("header key of record {i} is not UTF-8: {e}"))?;
                    Ok(Header {
                        key: key.to_owned(),
                        value: Some(header_values.slice(value)),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            let topic = match columns::u32_at(topics, i) {
                NO_SOURCE => None,
                index => Some(
                    topic_names
                        .get(index as usize)
                        .ok_or_else(|| format!("topic {index} of record {i} is not named"))?
                        .to_string(),
                ),
            };
            Ok(OutRecord {
                source: source(columns::u32_at(sources, i), count, "record source")?,
                record: NewRecord {
                    timestamp: view.timestamp(i),
                    key: view.key_range(i).map(|r| keys.slice(r)),
                    value: Some(values.slice(view.value_range(i))),
                    headers,
                },
                topic,
                partition: u32::try_from(columns::u32_at(targets, i) as i32).ok(),
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
