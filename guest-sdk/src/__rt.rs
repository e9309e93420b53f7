//! The guest half of the ABI, called by the exports the plugin macros generate.
//!
//! Protocol, all through the module's exported memory: the host calls `weir_alloc(len)`, writes
//! `len` bytes of a flatbuffers `Init` or of a batch at the returned address, then calls
//! `weir_init(len)` or `weir_process(len)`. Both answer with a packed `(address << 32) | length`:
//! `weir_process` of its answer, `weir_init` of an error message (0 when it succeeded). An
//! answer stays valid until the next call. After a trap the host may call `weir_panic_message`
//! for the panic text, packed the same way.
//!
//! The batch and its answer are those of the version in `weir_abi_version`: a `Batch` and an
//! `Output` in version 1; in version 2 a length-prefixed `Batch2` envelope followed by the
//! columns it points into, and an `Output2` envelope pointing at arrays in guest memory.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::abi;
use crate::aggregate::{LATE, Windows};
use crate::columns::{self, Columns, ColumnsRef, Value};
use crate::{Aggregate, Error, Params, Record, Result};

/// Version of the ABI this SDK speaks: 2 (columnar batches), or 1 with the `abi-v1` feature, for
/// brokers that speak only version 1.
pub const ABI_VERSION: u32 = if cfg!(feature = "abi-v1") { 1 } else { 2 };

/// The source of an output record or failure that no record of the batch made: a window the
/// watermark closed.
pub const NO_SOURCE: u32 = u32::MAX;

#[derive(Default)]
struct Guest {
    input: Vec<u8>,
    output: FlatBufferBuilder<'static>,
    collected: Collected,
    params: Params,
    partitions: u32,
    error: String,
    aggregate: Option<Box<dyn Any>>,
}

thread_local! {
    static GUEST: RefCell<Guest> = RefCell::new(Guest::default());
    static PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

fn pack(bytes: &[u8]) -> u64 {
    ((bytes.as_ptr() as usize as u64) << 32) | bytes.len() as u64
}

/// Room for the host's next `len` bytes. The buffer only grows: the host overwrites the bytes
/// a call reads, so they need no zeroing.
pub fn alloc(len: u32) -> u32 {
    GUEST.with_borrow_mut(|guest| {
        if guest.input.len() < len as usize {
            guest.input.resize(len as usize, 0);
        }
        guest.input.as_mut_ptr() as usize as u32
    })
}

pub fn panic_message() -> u64 {
    PANIC.with_borrow(|message| pack(message.as_bytes()))
}

pub fn init(len: u32) -> u64 {
    init_with(len, |_| Ok(None))
}

pub fn init_aggregate<A: Aggregate + 'static>(len: u32) -> u64 {
    init_with(len, |init| {
        let params = params(init);
        let windows: Windows<A> = match init.state() {
            Some(state) if !state.is_empty() => serde_json::from_slice(state.bytes())
                .map_err(|e| Error::msg(format!("aggregate state does not parse: {e}")))?,
            _ => Windows::new(&params)?,
        };
        Ok(Some(Box::new(windows) as Box<dyn Any>))
    })
}

fn init_with(len: u32, aggregate: impl FnOnce(&abi::Init) -> Result<Option<Box<dyn Any>>>) -> u64 {
    std::panic::set_hook(Box::new(|info| {
        PANIC.with_borrow_mut(|message| *message = info.to_string())
    }));
    GUEST.with_borrow_mut(|guest| {
        let result = flatbuffers::root::<abi::Init>(&guest.input[..len as usize])
            .map_err(|e| Error::msg(format!("Init does not parse: {e}")))
            .and_then(|init| Ok((params(&init), init.partitions(), aggregate(&init)?)));
        match result {
            Ok((params, partitions, aggregate)) => {
                guest.params = params;
                guest.partitions = partitions;
                guest.aggregate = aggregate;
                0
            }
            Err(error) => {
                guest.error = error.to_string();
                pack(guest.error.as_bytes())
            }
        }
    })
}

fn params(init: &abi::Init) -> Params {
    let pairs = init.params().into_iter().flatten();
    Params::from_pairs(pairs.map(|p| (p.key().unwrap_or_default(), p.value().unwrap_or_default())))
}

/// What one call produces, gathered as records come; the arrays are kept between calls for
/// their capacity.
#[derive(Default)]
struct Collected {
    /// Filters: sources of the records kept.
    kept: Vec<u32>,
    /// Maps, filter-maps, flat-maps, scalars and aggregates: the records built, with their
    /// sources, target partitions (`i32`, -1 for none) and topics (`u32` indexes into
    /// `topic_names`, [`NO_SOURCE`] for none), little-endian.
    records: Columns,
    sources: Vec<u8>,
    targets: Vec<u8>,
    topics: Vec<u8>,
    topic_names: Vec<String>,
    /// Partitioners: one `u32` per record, little-endian.
    partitions: Vec<u8>,
    /// (source, message, whether the record came after its window closed)
    failures: Vec<(u32, String, bool)>,
    /// Version 2 filters: the selection bitmap made from `kept`.
    selected: Vec<u8>,
}

impl Collected {
    fn clear(&mut self) {
        self.kept.clear();
        self.records.clear();
        for array in [
            &mut self.sources,
            &mut self.targets,
            &mut self.topics,
            &mut self.partitions,
            &mut self.selected,
        ] {
            array.clear();
        }
        self.topic_names.clear();
        self.failures.clear();
    }
}

/// Where the answer for one input record goes.
pub struct Sink<'s> {
    collected: &'s mut Collected,
    source: u32,
    /// Where the input record's value lies, to know a record that passes it on unchanged;
    /// an empty slice for no input record.
    source_value: *const [u8],
}

impl Sink<'_> {
    fn keep(&mut self) {
        self.collected.kept.push(self.source);
    }

    fn fail(&mut self, error: Error) {
        let message = error.to_string();
        let late = message.starts_with(LATE);
        self.collected.failures.push((self.source, message, late));
    }

    fn partition(&mut self, partition: u32) {
        self.collected
            .partitions
            .extend_from_slice(&partition.to_le_bytes());
    }

    fn push(&mut self, r: &Record) {
        let collected = &mut *self.collected;
        let headers = r.headers.iter().map(|(k, v)| (k.as_bytes(), &**v));
        // Version 2 answers a value borrowed whole from the input record with a mark, not its
        // bytes: the host has them already.
        let value = match &r.value {
            Cow::Borrowed(value)
                if ABI_VERSION == 2
                    && !value.is_empty()
                    && std::ptr::eq(*value, self.source_value) =>
            {
                Value::OfSource
            }
            value => Value::Bytes(value),
        };
        collected
            .records
            .push(r.key.as_deref(), value, headers, r.timestamp);
        collected
            .sources
            .extend_from_slice(&self.source.to_le_bytes());
        let target = r.target_partition.map_or(-1, |p| p as i32);
        collected.targets.extend_from_slice(&target.to_le_bytes());
        let topic = r.topic.as_deref().map_or(NO_SOURCE, |topic| {
            let names = &mut collected.topic_names;
            let index = names
                .iter()
                .position(|name| name == topic)
                .unwrap_or_else(|| {
                    names.push(topic.to_owned());
                    names.len() - 1
                });
            index as u32
        });
        collected.topics.extend_from_slice(&topic.to_le_bytes());
    }
}

/// What the batch asks of an aggregate once its records are in.
struct BatchEnd {
    snapshot: bool,
    /// The host's watermark, or the batch's largest event time when it sent none.
    watermark: Option<i64>,
}

/// What an aggregate does once a batch's records are in: close windows, take a snapshot.
type End<'e> =
    &'e mut dyn FnMut(&BatchEnd, &Params, &mut Option<Box<dyn Any>>, &mut Sink) -> Option<Vec<u8>>;

/// The end of a batch of a kind without state.
fn no_end(_: &BatchEnd, _: &Params, _: &mut Option<Box<dyn Any>>, _: &mut Sink) -> Option<Vec<u8>> {
    None
}

/// Runs `each` over the records of the batch in the input buffer, then `end`, and answers with
/// the `Output` (or `Output2`) of the version this SDK speaks.
fn process(
    len: u32,
    mut each: impl for<'r> FnMut(Record<'r>, &Params, u32, &mut Option<Box<dyn Any>>, &mut Sink),
    end: End,
) -> u64 {
    GUEST.with_borrow_mut(|guest| {
        let Guest {
            input,
            output,
            collected,
            params,
            partitions,
            aggregate,
            ..
        } = guest;
        collected.clear();
        let mut state = None;
        let mut latest = None::<i64>;
        let read = |source: u32, r: Record| {
            latest = Some(latest.map_or(r.timestamp, |t| t.max(r.timestamp)));
            let source_value: *const [u8] = &*r.value;
            let mut sink = Sink {
                collected,
                source,
                source_value,
            };
            each(r, params, *partitions, aggregate, &mut sink);
        };
        let input = &input[..len as usize];
        let batch = if ABI_VERSION == 1 {
            read_batch_v1(input, read)
        } else {
            read_batch_v2(input, read)
        };
        match batch {
            Ok((snapshot, watermark)) => {
                let mut sink = Sink {
                    collected,
                    source: NO_SOURCE,
                    source_value: &[],
                };
                let watermark = if watermark == i64::MIN {
                    latest
                } else {
                    Some(watermark)
                };
                let batch = BatchEnd {
                    snapshot,
                    watermark,
                };
                state = end(&batch, params, aggregate, &mut sink);
            }
            Err(e) => collected.failures.push((NO_SOURCE, e, false)),
        }
        if ABI_VERSION == 1 {
            finish_v1(output, collected, state)
        } else {
            finish_v2(output, collected, state)
        }
    })
}

/// Reads a version 1 `Batch`, handing each record to `each`; answers (snapshot, watermark).
fn read_batch_v1(input: &[u8], mut each: impl FnMut(u32, Record)) -> Result<(bool, i64), String> {
    let batch =
        flatbuffers::root::<abi::Batch>(input).map_err(|e| format!("Batch does not parse: {e}"))?;
    for (index, r) in batch.records().into_iter().flatten().enumerate() {
        let headers = r.headers().into_iter().flatten();
        let record = Record {
            key: r.key().map(|k| Cow::Borrowed(k.bytes())),
            value: Cow::Borrowed(r.value().map(|v| v.bytes()).unwrap_or_default()),
            headers: headers
                .map(|h| {
                    let value = h.value().map(|v| v.bytes()).unwrap_or_default();
                    (
                        Cow::Borrowed(h.key().unwrap_or_default()),
                        Cow::Borrowed(value),
                    )
                })
                .collect(),
            timestamp: r.timestamp(),
            offset: r.offset(),
            partition: r.partition(),
            topic: None,
            target_partition: None,
        };
        each(index as u32, record);
    }
    Ok((batch.snapshot(), batch.watermark()))
}

/// Reads a version 2 call buffer, `[u32 envelope length][Batch2][columns]`, checking the
/// columns once; then hands each record, slices of the columns, to `each`.
fn read_batch_v2(input: &[u8], mut each: impl FnMut(u32, Record)) -> Result<(bool, i64), String> {
    let (length, rest) = input
        .split_first_chunk::<4>()
        .ok_or("Batch2 is shorter than its length prefix")?;
    let (envelope, columns) = rest
        .split_at_checked(u32::from_le_bytes(*length) as usize)
        .ok_or("Batch2 envelope is longer than the buffer")?;
    let batch = flatbuffers::root::<abi::Batch2>(envelope)
        .map_err(|e| format!("Batch2 does not parse: {e}"))?;
    let count = batch.count() as usize;
    let [offsets, partitions, record_spans @ ..] = columns::spans::<12>(batch.spans())?;
    let view = ColumnsRef::new(columns, count, batch.headers() as usize, record_spans)?;
    let offsets = columns::array(columns, offsets, count, 8, "offsets")?;
    let partitions = columns::array(columns, partitions, count, 4, "partitions")?;
    let any_headers = batch.headers() > 0;
    for i in 0..count {
        let headers = if any_headers {
            view.headers(i)
                .map(|(k, v)| (String::from_utf8_lossy(k), Cow::Borrowed(v)))
                .collect()
        } else {
            Vec::new()
        };
        let record = Record {
            key: view.key(i).map(Cow::Borrowed),
            value: Cow::Borrowed(view.value(i)),
            headers,
            timestamp: view.timestamp(i),
            offset: columns::i64_at(offsets, i),
            partition: columns::u32_at(partitions, i) as i32,
            topic: None,
            target_partition: None,
        };
        each(i as u32, record);
    }
    Ok((batch.snapshot(), batch.watermark()))
}

fn failures<'b>(
    output: &mut FlatBufferBuilder<'b>,
    collected: &Collected,
) -> WIPOffset<flatbuffers::Vector<'b, flatbuffers::ForwardsUOffset<abi::Failure<'b>>>> {
    let failures: Vec<_> = collected
        .failures
        .iter()
        .map(|(source, message, late)| {
            let message = Some(output.create_string(message));
            abi::Failure::create(
                output,
                &abi::FailureArgs {
                    source: *source,
                    message,
                    late: *late,
                },
            )
        })
        .collect();
    output.create_vector(&failures)
}

/// Answers with a version 1 `Output`: the records built become `OutRecord` tables.
fn finish_v1(
    output: &mut FlatBufferBuilder<'static>,
    collected: &Collected,
    state: Option<Vec<u8>>,
) -> u64 {
    output.reset();
    let view = collected.records.view();
    let records: Vec<_> = (0..view.len())
        .map(|i| {
            let key = view.key(i).map(|k| output.create_vector(k));
            let value = Some(output.create_vector(view.value(i)));
            let headers: Vec<_> = view
                .headers(i)
                .map(|(k, v)| {
                    let args = abi::HeaderArgs {
                        key: Some(output.create_string(&String::from_utf8_lossy(k))),
                        value: Some(output.create_vector(v)),
                    };
                    abi::Header::create(output, &args)
                })
                .collect();
            let headers = (!headers.is_empty()).then(|| output.create_vector(&headers));
            let topic = columns::u32_at(&collected.topics, i);
            let topic = collected
                .topic_names
                .get(topic as usize)
                .map(|t| output.create_string(t));
            let args = abi::OutRecordArgs {
                source: columns::u32_at(&collected.sources, i),
                key,
                value,
                headers,
                timestamp: view.timestamp(i),
                topic,
                partition: columns::u32_at(&collected.targets, i) as i32,
            };
            abi::OutRecord::create(output, &args)
        })
        .collect();
    let records = Some(output.create_vector(&records));
    let kept = Some(output.create_vector(&collected.kept));
    let partitions: Vec<u32> = (0..collected.partitions.len() / 4)
        .map(|i| columns::u32_at(&collected.partitions, i))
        .collect();
    let partitions = Some(output.create_vector(&partitions));
    let failures = Some(failures(output, collected));
    let state = state.map(|s| output.create_vector(&s));
    let args = abi::OutputArgs {
        kept,
        records,
        partitions,
        failures,
        state,
    };
    let root = abi::Output::create(output, &args);
    output.finish(root, None);
    pack(output.finished_data())
}

/// Where `array` lies in guest memory.
fn span(array: &[u8]) -> abi::Span {
    abi::Span::new(array.as_ptr() as usize as u32, array.len() as u32)
}

/// Answers with a version 2 `Output2` whose spans point at the collected arrays, which stay
/// as they are until the next call.
fn finish_v2(
    output: &mut FlatBufferBuilder<'static>,
    collected: &mut Collected,
    state: Option<Vec<u8>>,
) -> u64 {
    output.reset();
    if let Some(last) = collected.kept.last() {
        collected.selected.resize(*last as usize / 8 + 1, 0);
        for &i in &collected.kept {
            collected.selected[i as usize / 8] |= 1 << (i % 8);
        }
    }
    let topic_names: Vec<_> = collected
        .topic_names
        .iter()
        .map(|t| output.create_string(t))
        .collect();
    let topic_names = Some(output.create_vector(&topic_names));
    let failures = Some(failures(output, collected));
    let state = state.map(|s| output.create_vector(&s));
    let records = &collected.records;
    let answers = [
        &collected.selected[..],
        &collected.partitions,
        &collected.sources,
        &collected.targets,
        &collected.topics,
    ];
    let arrays = records.arrays();
    let spans: [abi::Span; 15] =
        std::array::from_fn(|i| span(if i < 5 { answers[i] } else { arrays[i - 5] }));
    let args = abi::Output2Args {
        records: records.len(),
        headers: records.header_count(),
        spans: Some(output.create_vector(&spans)),
        topic_names,
        failures,
        state,
    };
    let root = abi::Output2::create(output, &args);
    output.finish(root, None);
    pack(output.finished_data())
}

/// What a filter function may return.
pub trait FilterResult {
    fn into_result(self) -> Result<bool>;
}
impl FilterResult for bool {
    fn into_result(self) -> Result<bool> {
        Ok(self)
    }
}
impl FilterResult for Result<bool> {
    fn into_result(self) -> Result<bool> {
        self
    }
}

/// What a map, filter-map or flat-map function may return: 0..N records, or an error.
pub trait MapResult {
    fn emit(self, sink: &mut Sink);
}
impl MapResult for Record<'_> {
    fn emit(self, sink: &mut Sink) {
        sink.push(&self);
    }
}
impl MapResult for Option<Record<'_>> {
    fn emit(self, sink: &mut Sink) {
        if let Some(r) = self {
            sink.push(&r);
        }
    }
}
impl MapResult for Vec<Record<'_>> {
    fn emit(self, sink: &mut Sink) {
        self.iter().for_each(|r| sink.push(r));
    }
}
impl<T: MapResult> MapResult for Result<T> {
    fn emit(self, sink: &mut Sink) {
        match self {
            Ok(records) => records.emit(sink),
            Err(error) => sink.fail(error),
        }
    }
}

/// What a partitioner function may return.
pub trait PartitionResult {
    fn into_result(self) -> Result<u32>;
}
impl PartitionResult for u32 {
    fn into_result(self) -> Result<u32> {
        Ok(self)
    }
}
impl PartitionResult for Result<u32> {
    fn into_result(self) -> Result<u32> {
        self
    }
}

pub fn filter<R: FilterResult>(len: u32, f: impl Fn(&Record, &Params) -> R) -> u64 {
    let each = |r: Record, params: &Params, _, _: &mut _, sink: &mut Sink| match f(&r, params)
        .into_result()
    {
        Ok(true) => sink.keep(),
        Ok(false) => {}
        Err(error) => sink.fail(error),
    };
    process(len, each, &mut no_end)
}

/// What a scalar function may return: a text, or none (SQL's NULL), or an error.
pub trait ScalarResult {
    fn into_result(self) -> Result<Option<String>>;
}
impl ScalarResult for String {
    fn into_result(self) -> Result<Option<String>> {
        Ok(Some(self))
    }
}
impl ScalarResult for Option<String> {
    fn into_result(self) -> Result<Option<String>> {
        Ok(self)
    }
}
impl<T: ScalarResult> ScalarResult for Result<T> {
    fn into_result(self) -> Result<Option<String>> {
        self.and_then(ScalarResult::into_result)
    }
}

/// A scalar function: each record's value is one argument; each answer is a record whose
/// source is its argument's, none for NULL.
pub fn scalar<R: ScalarResult>(len: u32, f: impl Fn(&str, &Params) -> R) -> u64 {
    let each = |r: Record, params: &Params, _, _: &mut _, sink: &mut Sink| match r
        .value_str()
        .and_then(|v| f(v, params).into_result())
    {
        Ok(Some(text)) => sink.push(&Record::new(text)),
        Ok(None) => {}
        Err(error) => sink.fail(error),
    };
    process(len, each, &mut no_end)
}

/// Maps, filter-maps and flat-maps differ only in how many records their function may return.
pub fn map(len: u32, f: impl for<'r> Fn(Record<'r>, &Params, &mut Sink)) -> u64 {
    process(len, |r, params, _, _, sink| f(r, params, sink), &mut no_end)
}

pub fn partitioner<R: PartitionResult>(len: u32, f: impl Fn(&Record, u32, &Params) -> R) -> u64 {
    let each = |r: Record, params: &Params, partitions, _: &mut _, sink: &mut Sink| {
        let partition = f(&r, partitions, params)
            .into_result()
            .and_then(|partition| {
                if partition < partitions {
                    Ok(partition)
                } else {
                    Err(Error::msg(format!(
                        "partition {partition} is out of range 0..{partitions}"
                    )))
                }
            });
        match partition {
            Ok(partition) => sink.partition(partition),
            Err(error) => {
                sink.partition(u32::MAX);
                sink.fail(error);
            }
        }
    };
    process(len, each, &mut no_end)
}

/// The open windows of an aggregate instance.
fn windows<A: Aggregate + 'static>(state: &mut Option<Box<dyn Any>>) -> Result<&mut Windows<A>> {
    state
        .as_mut()
        .and_then(|s| s.downcast_mut::<Windows<A>>())
        .ok_or_else(|| Error::msg("aggregate called before weir_init"))
}

pub fn aggregate<A: Aggregate + 'static>(len: u32) -> u64 {
    let each =
        |r: Record, params: &Params, _, state: &mut Option<Box<dyn Any>>, sink: &mut Sink| {
            if let Err(error) = windows::<A>(state).and_then(|w| w.add(&r, params)) {
                sink.fail(error);
            }
        };
    let mut end =
        |batch: &BatchEnd, params: &Params, state: &mut Option<Box<dyn Any>>, sink: &mut Sink| {
            let windows = match windows::<A>(state) {
                Ok(windows) => windows,
                Err(error) => {
                    sink.fail(error);
                    return None;
                }
            };
            for (key, window, accumulator) in batch
                .watermark
                .map(|w| windows.close(w))
                .unwrap_or_default()
            {
                accumulator
                    .finish(&key, window, params)
                    .map(|out| {
                        if out.timestamp < 0 {
                            out.with_timestamp(window.start_ms)
                        } else {
                            out
                        }
                    })
                    .emit(sink);
            }
            // A state type that does not serialize is a bug of the plugin: trap, with the reason.
            batch.snapshot.then(|| {
                serde_json::to_vec(windows)
                    .unwrap_or_else(|e| panic!("aggregate state does not serialize: {e}"))
            })
        };
    process(len, each, &mut end)
}
