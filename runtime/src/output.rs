//! A plugin's answer to a batch, read back from guest memory: the flatbuffers `Output` of ABI
//! version 1, or the `Output2` envelope of version 2 with the columns it points at, verified,
//! every index it names checked against the batch it answers. Nothing here runs a plugin, so the
//! readers can be tested and fuzzed on their own.

use bytes::Bytes;
pub use weir::__rt::NO_SOURCE;
use weir::abi;
use weir::columns::{self, ColumnsRef};
use weir_storage::{Header, NewRecord, Record};

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
    if !partitions.is_empty() && partitions.len() != count {
        return Err(format!(
            "{} partitions for {count} records",
            partitions.len()
        ));
    }
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
/// batch of `inputs`, and the arrays it points at (together at most `bytes_max`). The keys,
/// values and header values of the records built are copied out once, a blob each; record
/// fields are slices of those, or a record's value is its input record's, shared, when the
/// answer marks it so ([`columns::SOURCE_VALUE`]).
pub fn read_v2(
    memory: &[u8],
    address: usize,
    len: usize,
    inputs: &[Record],
    bytes_max: u64,
) -> Result<Output, String> {
    let count = inputs.len();
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
    // None, or one for each record: `array` refuses any other length.
    let partitions = match partitions.len() {
        0 => Vec::new(),
        _ => {
            let array = columns::array(memory, partitions, count, 4, "partitions")?;
            (0..count).map(|i| columns::u32_at(array, i)).collect()
        }
    };
    let (failures, late) = failures(output.failures(), count)?;
    let built = output.records() as usize;
    let view = ColumnsRef::new(memory, built, output.headers() as usize, record_spans)?;
    let sources = columns::array(memory, sources, built, 4, "sources")?;
    let targets = columns::array(memory, targets, built, 4, "targets")?;
    let topics = columns::array(memory, topics, built, 4, "topics")?;
    let topic_names: Vec<&str> = output.topic_names().into_iter().flatten().collect();
    let [keys, values, header_keys, header_values] = view.blobs();
    let [keys, values, header_values] = [keys, values, header_values].map(Bytes::copy_from_slice);
    let mut records = Vec::with_capacity(built);
    let any_headers = output.headers() > 0;
    for i in 0..built {
        let headers = if !any_headers {
            Vec::new()
        } else {
            view.header_ranges(i)
                .map(|(key, value)| {
                    let key = std::str::from_utf8(&header_keys[key])
                        .map_err(|e| format!("header key of record {i} is not UTF-8: {e}"))?;
                    Ok(Header {
                        key: key.to_owned(),
                        value: Some(header_values.slice(value)),
                    })
                })
                .collect::<Result<Vec<_>, String>>()?
        };
        let topic = match columns::u32_at(topics, i) {
            NO_SOURCE => None,
            index => Some(
                topic_names
                    .get(index as usize)
                    .ok_or_else(|| format!("topic {index} of record {i} is not named"))?
                    .to_string(),
            ),
        };
        let source = source(columns::u32_at(sources, i), count, "record source")?;
        let value = if view.value_of_source(i) {
            let input = inputs
                .get(source as usize)
                .ok_or_else(|| format!("record {i} has the value of its source, but no source"))?;
            input.value.clone()
        } else {
            Some(values.slice(view.value_range(i)))
        };
        records.push(OutRecord {
            source,
            record: NewRecord {
                timestamp: view.timestamp(i),
                key: view.key_range(i).map(|r| keys.slice(r)),
                value,
                headers,
            },
            topic,
            partition: u32::try_from(columns::u32_at(targets, i) as i32).ok(),
        });
    }
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

#[cfg(test)]
mod tests {
    use flatbuffers::FlatBufferBuilder;
    use weir::columns::{Columns, Value, layout};

    use super::*;

    /// Guest memory holding an `Output2` at address 0 answering a map over `count` records:
    /// two records built, the second with value `second` and sent to topic "alerts" and
    /// partition 3.
    fn map_answer(sources: [u32; 2], second: Value) -> Vec<u8> {
        let mut columns = Columns::default();
        columns.push(
            Some(b"k"),
            Value::Bytes(b"first"),
            [(&b"h"[..], &b"v"[..])],
            5,
        );
        columns.push(None, second, [], 6);
        let le = |values: [u32; 2]| values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let answers: [Vec<u8>; 5] = [
            Vec::new(),
            Vec::new(),
            le(sources),
            le([u32::MAX, 3]),
            le([NO_SOURCE, 0]),
        ];
        let envelope = |base: usize| {
            let records = columns.arrays();
            let arrays: [&[u8]; 15] = std::array::from_fn(|i| {
                if i < 5 {
                    &answers[i][..]
                } else {
                    records[i - 5]
                }
            });
            let mut builder = FlatBufferBuilder::new();
            let spans = builder.create_vector(&layout(arrays.map(<[u8]>::len), base));
            let alerts = builder.create_string("alerts");
            let topic_names = Some(builder.create_vector(&[alerts]));
            let root = abi::Output2::create(
                &mut builder,
                &abi::Output2Args {
                    records: 2,
                    headers: 1,
                    spans: Some(spans),
                    topic_names,
                    ..Default::default()
                },
            );
            builder.finish(root, None);
            let mut memory = builder.finished_data().to_vec();
            for array in arrays {
                memory.extend_from_slice(array);
            }
            memory
        };
        // The envelope's length does not depend on where the arrays are.
        let length = envelope(0).len()
            - answers.iter().map(Vec::len).sum::<usize>()
            - columns.arrays().iter().map(|a| a.len()).sum::<usize>();
        envelope(length)
    }

    #[test]
    fn a_map_answer_reads_as_the_guest_built_it() {
        let memory = map_answer([0, 1], Value::Bytes(b"second"));
        let output = read_v2(&memory, 0, memory.len(), &inputs(2), 1 << 20).unwrap();
        assert_eq!(output.records.len(), 2);
        let [first, second] = &output.records[..] else {
            unreachable!()
        };
        assert_eq!((first.source, second.source), (0, 1));
        assert_eq!(first.record.key.as_deref(), Some(&b"k"[..]));
        assert_eq!(first.record.value.as_deref(), Some(&b"first"[..]));
        assert_eq!(first.record.headers[0].key, "h");
        assert_eq!(first.record.timestamp, 5);
        assert_eq!((first.topic.as_deref(), first.partition), (None, None));
        assert_eq!(second.record.key, None);
        assert_eq!(second.record.value.as_deref(), Some(&b"second"[..]));
        assert_eq!(second.topic.as_deref(), Some("alerts"));
        assert_eq!(second.partition, Some(3));
        assert!(output.kept.is_empty() && output.partitions.is_empty());
    }

    /// `count` input records, record `i` with value `in-i`.
    fn inputs(count: usize) -> Vec<Record> {
        (0..count)
            .map(|i| Record {
                offset: i as i64,
                timestamp: 0,
                key: None,
                value: Some(Bytes::from(format!("in-{i}"))),
                headers: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn a_value_marked_as_the_sources_is_the_input_records_value() {
        let memory = map_answer([0, 1], Value::OfSource);
        let inputs = inputs(2);
        let output = read_v2(&memory, 0, memory.len(), &inputs, 1 << 20).unwrap();
        let [first, second] = &output.records[..] else {
            unreachable!()
        };
        assert_eq!(first.record.value.as_deref(), Some(&b"first"[..]));
        assert_eq!(second.record.value, inputs[1].value);
        // Shared with the input, not copied.
        let (shared, input) = (second.record.value.as_ref(), inputs[1].value.as_ref());
        assert_eq!(shared.map(|v| v.as_ptr()), input.map(|v| v.as_ptr()));
        let orphan = map_answer([0, NO_SOURCE], Value::OfSource);
        let error = read_v2(&orphan, 0, orphan.len(), &inputs, 1 << 20).unwrap_err();
        assert!(
            error.contains("record 1 has the value of its source, but no source"),
            "{error}"
        );
    }

    #[test]
    fn an_answer_that_lies_is_refused_with_the_reason() {
        let memory = map_answer([0, 1], Value::Bytes(b"second"));
        let error = |memory: &[u8], count, bytes_max| {
            read_v2(memory, 0, memory.len(), &inputs(count), bytes_max).unwrap_err()
        };
        assert!(error(&memory, 1, 1 << 20).contains("record source 1"));
        assert!(error(&memory, 2, 64).contains("more than the limit of 64"));
        // Memory cut short: the last array lies outside it.
        let short = &memory[..memory.len() - 1];
        assert!(error(short, 2, 1 << 20).contains("outside"));
        let cut = read_v2(&memory, 0, 8, &inputs(2), 1 << 20).unwrap_err();
        assert!(cut.contains("does not parse"), "{cut}");
        let no_source = map_answer([NO_SOURCE, 1], Value::Bytes(b"second"));
        assert!(read_v2(&no_source, 0, no_source.len(), &inputs(2), 1 << 20).is_ok());
    }
}
