//! The guest half of the ABI, called by the exports the plugin macros generate.
//!
//! Protocol, all through the module's exported memory: the host calls `weir_alloc(len)`, writes
//! `len` bytes of a flatbuffers `Init` or `Batch` at the returned address, then calls
//! `weir_init(len)` or `weir_process(len)`. Both answer with a packed `(address << 32) | length`:
//! `weir_process` of an `Output`, `weir_init` of an error message (0 when it succeeded). An
//! answer stays valid until the next call. After a trap the host may call `weir_panic_message`
//! for the panic text, packed the same way.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;

use flatbuffers::{FlatBufferBuilder, WIPOffset};

use crate::abi;
use crate::aggregate::{LATE, Windows};
use crate::{Aggregate, Error, Params, Record, Result};

/// Version of the ABI this SDK speaks; the host refuses modules exporting another.
pub const ABI_VERSION: u32 = 1;

/// The source of an output record or failure that no record of the batch made: a window the
/// watermark closed.
pub const NO_SOURCE: u32 = u32::MAX;

#[derive(Default)]
struct Guest {
    input: Vec<u8>,
    output: FlatBufferBuilder<'static>,
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

pub fn alloc(len: u32) -> u32 {
    GUEST.with_borrow_mut(|guest| {
        guest.input.clear();
        guest.input.resize(len as usize, 0);
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

/// What one call produces, built into the output buffer as records come.
#[derive(Default)]
struct Collected {
    kept: Vec<u32>,
    records: Vec<WIPOffset<abi::OutRecord<'static>>>,
    partitions: Vec<u32>,
    /// (source, message, whether the record came after its window closed)
    failures: Vec<(u32, String, bool)>,
}

/// Where the answer for one input record goes.
pub struct Sink<'s> {
    output: &'s mut FlatBufferBuilder<'static>,
    collected: &'s mut Collected,
    source: u32,
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

    fn push(&mut self, r: &Record) {
        let output = &mut *self.output;
        let key = r.key.as_deref().map(|k| output.create_vector(k));
        let value = Some(output.create_vector(&r.value));
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|(k, v)| {
                let args = abi::HeaderArgs {
                    key: Some(output.create_string(k)),
                    value: Some(output.create_vector(v)),
                };
                abi::Header::create(output, &args)
            })
            .collect();
        let headers = (!headers.is_empty()).then(|| output.create_vector(&headers));
        let topic = r.topic.as_deref().map(|t| output.create_string(t));
        let partition = r.target_partition.map_or(-1, |p| p as i32);
        let args = abi::OutRecordArgs {
            source: self.source,
            key,
            value,
            headers,
            timestamp: r.timestamp,
            topic,
            partition,
        };
        self.collected
            .records
            .push(abi::OutRecord::create(output, &args));
    }
}

/// What an aggregate does once a batch's records are in: close windows, take a snapshot.
type End<'e> = &'e mut dyn FnMut(
    &abi::Batch,
    &Params,
    &mut Option<Box<dyn Any>>,
    &mut Sink,
) -> Option<Vec<u8>>;

/// The end of a batch of a kind without state.
fn no_end(
    _: &abi::Batch,
    _: &Params,
    _: &mut Option<Box<dyn Any>>,
    _: &mut Sink,
) -> Option<Vec<u8>> {
    None
}

/// Runs `each` over the records of the batch in the input buffer, then `end`, and answers with
/// the `Output`.
fn process(
    len: u32,
    mut each: impl for<'r> FnMut(Record<'r>, &Params, u32, &mut Option<Box<dyn Any>>, &mut Sink),
    end: End,
) -> u64 {
    GUEST.with_borrow_mut(|guest| {
        let Guest {
            input,
            output,
            params,
            partitions,
            aggregate,
            ..
        } = guest;
        output.reset();
        let mut collected = Collected::default();
        let mut state = None;
        match flatbuffers::root::<abi::Batch>(&input[..len as usize]) {
            Ok(batch) => {
                for (index, r) in batch.records().into_iter().flatten().enumerate() {
                    let mut sink = Sink {
                        output,
                        collected: &mut collected,
                        source: index as u32,
                    };
                    each(record(r), params, *partitions, aggregate, &mut sink);
                }
                let mut sink = Sink {
                    output,
                    collected: &mut collected,
                    source: NO_SOURCE,
                };
                state = end(&batch, params, aggregate, &mut sink);
            }
            Err(e) => {
                collected
                    .failures
                    .push((NO_SOURCE, format!("Batch does not parse: {e}"), false))
            }
        }
        finish(output, collected, state)
    })
}

fn record(r: abi::Record<'_>) -> Record<'_> {
    let headers = r.headers().into_iter().flatten();
    Record {
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
    }
}

fn finish(
    output: &mut FlatBufferBuilder<'static>,
    collected: Collected,
    state: Option<Vec<u8>>,
) -> u64 {
    let kept = Some(output.create_vector(&collected.kept));
    let records = Some(output.create_vector(&collected.records));
    let partitions = Some(output.create_vector(&collected.partitions));
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
    let failures = Some(output.create_vector(&failures));
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
            Ok(partition) => sink.collected.partitions.push(partition),
            Err(error) => {
                sink.collected.partitions.push(u32::MAX);
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
    let mut end = |batch: &abi::Batch,
                   params: &Params,
                   state: &mut Option<Box<dyn Any>>,
                   sink: &mut Sink| {
        let windows = match windows::<A>(state) {
            Ok(windows) => windows,
            Err(error) => {
                sink.fail(error);
                return None;
            }
        };
        let watermark = match batch.watermark() {
            i64::MIN => batch
                .records()
                .into_iter()
                .flatten()
                .map(|r| r.timestamp())
                .max(),
            watermark => Some(watermark),
        };
        for (key, window, accumulator) in watermark.map(|w| windows.close(w)).unwrap_or_default() {
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
        batch.snapshot().then(|| {
            serde_json::to_vec(windows)
                .unwrap_or_else(|e| panic!("aggregate state does not serialize: {e}"))
        })
    };
    process(len, each, &mut end)
}
