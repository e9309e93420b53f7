//! `INSERT INTO topic …`: rows become records appended to the topic.
//!
//! A row's value is `value` (bytes) or else `value_text`, or else — for a topic with typed
//! columns — a JSON object of the typed columns it sets; its key is `key` or `key_text`; its
//! timestamp the `timestamp` column or the time of the insert. A row that names a `partition`
//! goes there; a keyed row goes where Kafka's default partitioner would put its key; the others
//! are spread round-robin. `offset` and `headers` are assigned by the log and ignored.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, DictionaryArray, Int32Array, RecordBatch, StringBuilder,
};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int32Type, SchemaRef, TimestampMillisecondType,
};
use datafusion::arrow::json::writer::{EncoderOptions, NullableEncoder, make_encoder};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::DataFusionError;
use datafusion::datasource::sink::DataSink;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType};
use futures::StreamExt;
use weir_runtime::continuous::ByPartition;
use weir_storage::{BatchBuilder, Compression, NewRecord, Topics, now_ms};

use crate::runs::Runs;
use crate::topic::{RECORD_COLUMNS, external};
use crate::value_schema::TypedColumn;

/// Records appended per batch written to a partition.
const BATCH_RECORDS_MAX: usize = 1000;
/// Rows whose JSON objects size the buffer for all of a batch's.
const SIZING_ROWS: usize = 64;

pub struct TopicSink {
    topics: Arc<dyn Topics>,
    topic: String,
    schema: SchemaRef,
    typed: Vec<TypedColumn>,
    next_partition: AtomicU32,
}

impl fmt::Debug for TopicSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicSink({})", self.topic)
    }
}

impl DisplayAs for TopicSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TopicSink: topic={}", self.topic)
    }
}

impl TopicSink {
    pub fn new(
        topics: Arc<dyn Topics>,
        topic: String,
        schema: SchemaRef,
        typed: Vec<TypedColumn>,
    ) -> TopicSink {
        TopicSink {
            topics,
            topic,
            schema,
            typed,
            next_partition: AtomicU32::new(0),
        }
    }

    /// The typed columns of each row as one JSON object, the value the row's record carries when
    /// it sets neither `value` nor `value_text` (`None` for a row that sets none of them); `None`
    /// for a topic without typed columns.
    fn typed_values(
        &self,
        batch: &RecordBatch,
    ) -> datafusion::common::Result<Option<Vec<Option<Bytes>>>> {
        if self.typed.is_empty() {
            return Ok(None);
        }
        let projection: Vec<usize> = self
            .typed
            .iter()
            .filter_map(|c| batch.schema().index_of(&c.name).ok())
            .collect();
        let typed = batch.project(&projection)?;
        let columns: Vec<ArrayRef> = typed
            .columns()
            .iter()
            .map(times_as_text)
            .collect::<datafusion::common::Result<_>>()?;
        // Each column under the field it reads (`sample DOUBLE FROM value` writes `value`).
        let fields: Vec<_> = typed
            .schema()
            .fields()
            .iter()
            .zip(&columns)
            .map(|(f, column)| {
                let path = self
                    .typed
                    .iter()
                    .find(|c| &c.name == f.name())
                    .map(|c| c.path.clone());
                f.as_ref()
                    .clone()
                    .with_data_type(column.data_type().clone())
                    .with_name(path.unwrap_or_else(|| f.name().clone()))
            })
            .collect();
        let rows = batch.num_rows();
        let fields: Vec<FieldRef> = fields.into_iter().map(Arc::new).collect();
        let options = EncoderOptions::default().with_explicit_nulls(false);
        let mut object = fields
            .iter()
            .zip(&columns)
            .map(|(field, column)| MemberJson::new(field, column.as_ref(), &options))
            .collect::<datafusion::common::Result<Vec<_>>>()?;
        // Every row's object in one buffer, which the values share; sized from the first rows.
        let mut objects = Runs::with_capacity(rows, SIZING_ROWS.min(rows) * 64);
        for row in 0..rows {
            objects.push_with(|text| write_object(&mut object, row, text));
            if row + 1 == SIZING_ROWS {
                objects.reserve_bytes(
                    (objects.bytes() / SIZING_ROWS + 1) * (rows - SIZING_ROWS) * 9 / 8,
                );
            }
        }
        Ok(Some(
            objects
                .into_shared()
                .map(|object| (object.as_ref() != b"{}").then_some(object))
                .collect(),
        ))
    }

    /// The records of one batch of rows, by partition.
    pub(crate) fn records(
        &self,
        batch: &RecordBatch,
        partitions: u32,
    ) -> datafusion::common::Result<ByPartition> {
        let column = |name: &str| BytesColumn::of(batch.column_by_name(name));
        let (key, key_text) = (column("key"), column("key_text"));
        let (value, value_text) = (column("value"), column("value_text"));
        let key_at = |row| {
            let key = key.as_ref().and_then(|c| c.at(row));
            key.or_else(|| key_text.as_ref().and_then(|c| c.at(row)))
        };
        let times = batch
            .column_by_name("timestamp")
            .and_then(|a| a.as_primitive_opt::<TimestampMillisecondType>());
        let partition_of = batch.column_by_name("partition");
        let rows = batch.num_rows();
        // Where each row goes first, so that each partition's records are gathered once.
        let mut counts = vec![0usize; partitions as usize];
        let mut targets = Vec::with_capacity(rows);
        for row in 0..rows {
            let partition = match partition_of.filter(|a| !a.is_null(row)) {
                Some(array) => {
                    let p = array
                        .as_primitive_opt::<Int32Type>()
                        .map_or(-1, |p| p.value(row));
                    u32::try_from(p).ok().filter(|p| *p < partitions).ok_or_else(|| {
                        DataFusionError::Execution(format!("partition {p} of topic {} does not exist ({partitions} partitions)", self.topic))
                    })?
                }
                None => match key_at(row) {
                    Some(key) => weir_runtime::partition_for_key(key, partitions),
                    None => self.next_partition.fetch_add(1, Ordering::Relaxed) % partitions.max(1),
                },
            };
            let Some(count) = counts.get_mut(partition as usize) else {
                return Err(DataFusionError::Execution(format!(
                    "topic {} has no partition {partition} ({partitions} partitions)",
                    self.topic
                )));
            };
            *count += 1;
            targets.push(partition);
        }
        let typed_json = self.typed_values(batch)?;
        let mut by_partition: Vec<Vec<NewRecord>> =
            counts.into_iter().map(Vec::with_capacity).collect();
        let now = now_ms();
        // Every target is one of `by_partition`'s, as counted.
        for (row, partition) in targets.into_iter().enumerate() {
            let shared = |c: &Option<BytesColumn>| c.as_ref()?.shared(row);
            let value = shared(&value)
                .or_else(|| shared(&value_text))
                .or_else(|| typed_json.as_ref()?.get(row)?.clone());
            let timestamp = times
                .filter(|t| !t.is_null(row))
                .map_or(now, |t| t.value(row));
            let record = NewRecord {
                timestamp,
                key: shared(&key).or_else(|| shared(&key_text)),
                value,
                headers: Vec::new(),
            };
            if let Some(records) = by_partition.get_mut(partition as usize) {
                records.push(record);
            }
        }
        Ok((0..)
            .zip(by_partition)
            .filter(|(_, records)| !records.is_empty())
            .collect())
    }
}

/// A column of bytes or text, its values copied once into a buffer the records share.
struct BytesColumn<'a> {
    array: &'a ArrayRef,
    offsets: &'a [i32],
    shared: Bytes,
}

impl<'a> BytesColumn<'a> {
    /// `None` where the column is missing or of another type.
    fn of(array: Option<&'a ArrayRef>) -> Option<BytesColumn<'a>> {
        let array = array?;
        let (offsets, values) = match array.data_type() {
            DataType::Binary => {
                let a = array.as_binary::<i32>();
                (a.value_offsets(), a.values().as_slice())
            }
            DataType::Utf8 => {
                let a = array.as_string::<i32>();
                (a.value_offsets(), a.values().as_slice())
            }
            _ => return None,
        };
        let (first, last) = (offsets.first()?, offsets.last()?);
        let shared = Bytes::copy_from_slice(&values[*first as usize..*last as usize]);
        Some(BytesColumn {
            array,
            offsets,
            shared,
        })
    }

    /// Row `row`'s bytes; `None` where it is NULL.
    fn at(&self, row: usize) -> Option<&[u8]> {
        Some(&self.shared[self.range(row)?])
    }

    /// Row `row`'s bytes, sharing the column's buffer; `None` where it is NULL.
    fn shared(&self, row: usize) -> Option<Bytes> {
        Some(self.shared.slice(self.range(row)?))
    }

    /// Where row `row` lies in the shared buffer.
    fn range(&self, row: usize) -> Option<std::ops::Range<usize>> {
        let base = self.offsets[0] as usize;
        (!self.array.is_null(row))
            .then(|| self.offsets[row] as usize - base..self.offsets[row + 1] as usize - base)
    }
}

/// One member of the JSON objects [`TopicSink::typed_values`] writes, as arrow's JSON writer
/// writes it: its key, then each row's value, a member whose value is null left out.
struct MemberJson<'a> {
    /// The key's text and a colon.
    key: Vec<u8>,
    value: ValueJson<'a>,
}

enum ValueJson<'a> {
    /// Each row's value written by arrow's encoder.
    Each(NullableEncoder<'a>),
    /// A dictionary-coded column (a window's bounds): each distinct value's text written once
    /// (`texts`, value `i` at index `i`), then copied for each row pointing to it.
    Coded {
        nulls: Option<NullBuffer>,
        keys: Vec<usize>,
        texts: Runs,
    },
}

impl<'a> MemberJson<'a> {
    fn new(
        field: &'a FieldRef,
        column: &'a dyn Array,
        options: &'a EncoderOptions,
    ) -> datafusion::common::Result<Self> {
        let key = serde_json::to_vec(field.name())
            .map_err(|e| DataFusionError::Execution(format!("a column's name as JSON: {e}")))?;
        let key = [key.as_slice(), b":"].concat();
        let Some(coded) = column.as_any_dictionary_opt() else {
            let value = ValueJson::Each(make_encoder(field, column, options)?);
            return Ok(MemberJson { key, value });
        };
        let values = coded.values();
        let mut encoder = make_encoder(field, values.as_ref(), options)?;
        let mut texts = Runs::with_capacity(values.len(), 0);
        for i in 0..values.len() {
            texts.push_with(|text| match encoder.is_null(i) {
                true => text.extend_from_slice(b"null"),
                false => encoder.encode(i, text),
            });
        }
        let value = ValueJson::Coded {
            nulls: column.nulls().cloned(),
            // No values (no rows, or only nulls) leaves no key to normalise: none is read.
            keys: match values.is_empty() {
                true => vec![0; column.len()],
                false => coded.normalized_keys(),
            },
            texts,
        };
        Ok(MemberJson { key, value })
    }

    fn is_null(&self, row: usize) -> bool {
        match &self.value {
            ValueJson::Each(encoder) => encoder.is_null(row),
            ValueJson::Coded { nulls, .. } => nulls.as_ref().is_some_and(|n| n.is_null(row)),
        }
    }

    fn write_value(&mut self, row: usize, out: &mut Vec<u8>) {
        match &mut self.value {
            ValueJson::Each(encoder) => encoder.encode(row, out),
            ValueJson::Coded { keys, texts, .. } => out.extend_from_slice(texts.get(keys[row])),
        }
    }
}

/// Row `row`'s object of `members` into `out`: `{}` when every member is null.
fn write_object(members: &mut [MemberJson], row: usize, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut first = true;
    for member in members.iter_mut().filter(|m| !m.is_null(row)) {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(&member.key);
        member.write_value(row, out);
    }
    out.push(b'}');
}

/// `column`'s times as text, as arrow's JSON writer writes them, each time formatted once for
/// a run of equal times (a window's result rows share its bounds), in a dictionary; other
/// columns as they are.
fn times_as_text(column: &ArrayRef) -> datafusion::common::Result<ArrayRef> {
    let Some(times) = column.as_primitive_opt::<TimestampMillisecondType>() else {
        return Ok(column.clone());
    };
    let options = FormatOptions::new().with_display_error(true);
    let formatter = ArrayFormatter::try_new(column.as_ref(), &options)?;
    // Each run's text once, in a dictionary the rows point into.
    let mut texts = StringBuilder::new();
    let mut rows = Vec::with_capacity(times.len());
    let mut last: Option<(i64, i32)> = None;
    for row in 0..times.len() {
        if times.is_null(row) {
            rows.push(None);
            continue;
        }
        let time = times.value(row);
        let text = match last {
            Some((at, text)) if at == time => text,
            _ => {
                let text = i32::try_from(texts.len()).map_err(|_| {
                    DataFusionError::Execution(format!("{} times in one batch", texts.len()))
                })?;
                texts.append_value(formatter.value(row).to_string());
                last = Some((time, text));
                text
            }
        };
        rows.push(Some(text));
    }
    let texts: ArrayRef = Arc::new(texts.finish());
    Ok(Arc::new(DictionaryArray::try_new(
        Int32Array::from(rows),
        texts,
    )?))
}

#[async_trait]
impl DataSink for TopicSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::common::Result<u64> {
        debug_assert!(
            RECORD_COLUMNS
                .iter()
                .all(|c| self.schema.index_of(c).is_ok())
        );
        let partitions = self
            .topics
            .existing_topic(&self.topic)
            .map_err(external)?
            .partitions;
        let mut written = 0u64;
        while let Some(batch) = data.next().await {
            for (partition, records) in self.records(&batch?, partitions)? {
                for chunk in records.chunks(BATCH_RECORDS_MAX) {
                    let mut builder = BatchBuilder::new(Compression::None);
                    chunk.iter().cloned().for_each(|r| builder.push(r));
                    let batch = builder.build().map_err(external)?;
                    let (topics, topic) = (self.topics.clone(), self.topic.clone());
                    tokio::task::spawn_blocking(move || {
                        weir_storage::reactor::blocking(|| topics.append(&topic, partition, batch))
                    })
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?
                    .map_err(external)?;
                    written += chunk.len() as u64;
                }
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use datafusion::arrow::array::{
        DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampMillisecondArray,
    };
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::json::writer::LineDelimited;
    use weir_storage::{Storage, StorageConfig};

    use super::*;
    use crate::value_schema::{UTC, parse_value_schema};

    /// A sink into topic `out` of a node in `dir`, whose values have the schema `value_schema`.
    fn sink(dir: &tempfile::TempDir, value_schema: &str) -> TopicSink {
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let typed = parse_value_schema(value_schema).unwrap();
        let schema = Arc::new(crate::topic::topic_schema(&typed));
        TopicSink::new(storage, "out".into(), schema, typed)
    }

    #[test]
    fn typed_values_write_times_as_the_json_writer_does() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(&dir, "at TIMESTAMP, n BIGINT, s TEXT, x DOUBLE");
        let times = [
            Some(0),
            Some(0),
            None,
            Some(1_700_000_000_123),
            Some(-1),
            Some(-1),
        ];
        let at = TimestampMillisecondArray::from(times.to_vec()).with_timezone(UTC);
        let n = Int64Array::from(vec![1, 2, 3, 4, 5, 6]);
        let s = StringArray::from(vec![
            Some("plain"),
            Some("a \"quote\""),
            None,
            Some("back\\slash\nand a tab\t"),
            Some("\u{1}ünïcode"),
            None,
        ]);
        let x = Float64Array::from(vec![Some(0.5), None, None, Some(-1e300), Some(3.0), None]);
        let fields = vec![
            Field::new("at", at.data_type().clone(), true),
            Field::new("n", DataType::Int64, true),
            Field::new("s", DataType::Utf8, true),
            Field::new("x", DataType::Float64, true),
        ];
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            vec![Arc::new(at), Arc::new(n), Arc::new(s), Arc::new(x)],
        )
        .unwrap();

        let values = sink.typed_values(&batch).unwrap().unwrap();

        let mut writer = datafusion::arrow::json::WriterBuilder::new()
            .with_explicit_nulls(false)
            .build::<_, LineDelimited>(Vec::new());
        writer.write(&batch).unwrap();
        writer.finish().unwrap();
        let expected = String::from_utf8(writer.into_inner()).unwrap();
        let written: Vec<&str> = values
            .iter()
            .map(|v| std::str::from_utf8(v.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(written, expected.lines().collect::<Vec<_>>());
        assert_eq!(written[2], r#"{"n":3}"#);
        assert!(
            written[1].contains(r#""s":"a \"quote\"""#),
            "{}",
            written[1]
        );
        assert!(
            written[5].contains("1969-12-31T23:59:59.999"),
            "{}",
            written[5]
        );
    }

    #[test]
    fn a_dictionary_column_with_no_values_writes_no_member() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(&dir, "n BIGINT, s TEXT");
        let batch = |n: Vec<i64>| {
            let keys = Int32Array::from(vec![None; n.len()]);
            let s = DictionaryArray::new(keys, Arc::new(StringArray::from(Vec::<&str>::new())));
            let fields = vec![
                Field::new("n", DataType::Int64, true),
                Field::new("s", s.data_type().clone(), true),
            ];
            let columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(n)), Arc::new(s)];
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
        };

        let values = sink.typed_values(&batch(vec![1, 2])).unwrap().unwrap();
        let written: Vec<&[u8]> = values.iter().map(|v| v.as_deref().unwrap()).collect();
        assert_eq!(written, [br#"{"n":1}"#, br#"{"n":2}"#]);
        let none = sink.typed_values(&batch(Vec::new())).unwrap().unwrap();
        assert!(none.is_empty());
    }
}
