//! A topic's columns: the record columns every topic has, in one list, then the typed columns
//! its value schema declares; and how a batch of records becomes those columns.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, Int32Array, Int64Array, ListBuilder, StringBuilder, StructBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use weir_storage::{Record, TopicMeta};

use crate::value_schema::{
    TypedColumn, UTC, field_keys, parse_value_schema, raw_fields, typed_column,
};

/// The columns every topic has; [`RecordColumn::ALL`] is their order in a topic's schema.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordColumn {
    Partition,
    Offset,
    Timestamp,
    Key,
    Value,
    Headers,
    KeyText,
    ValueText,
}

impl RecordColumn {
    pub const ALL: [RecordColumn; 8] = [
        RecordColumn::Partition,
        RecordColumn::Offset,
        RecordColumn::Timestamp,
        RecordColumn::Key,
        RecordColumn::Value,
        RecordColumn::Headers,
        RecordColumn::KeyText,
        RecordColumn::ValueText,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            RecordColumn::Partition => "partition",
            RecordColumn::Offset => "offset",
            RecordColumn::Timestamp => "timestamp",
            RecordColumn::Key => "key",
            RecordColumn::Value => "value",
            RecordColumn::Headers => "headers",
            RecordColumn::KeyText => "key_text",
            RecordColumn::ValueText => "value_text",
        }
    }

    fn data_type(self) -> DataType {
        match self {
            RecordColumn::Partition => DataType::Int32,
            RecordColumn::Offset => DataType::Int64,
            RecordColumn::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
            RecordColumn::Key | RecordColumn::Value => DataType::Binary,
            RecordColumn::Headers => headers_type(),
            RecordColumn::KeyText | RecordColumn::ValueText => DataType::Utf8,
        }
    }

    /// The column of `rows`, all read from `partition`.
    fn array(self, partition: i64, rows: &[Record]) -> ArrayRef {
        let n = rows.len();
        match self {
            RecordColumn::Partition => Arc::new(Int32Array::from(vec![partition as i32; n])),
            RecordColumn::Offset => {
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.offset)))
            }
            RecordColumn::Timestamp => {
                let mut b = TimestampMillisecondBuilder::with_capacity(n).with_timezone(UTC);
                rows.iter().for_each(|r| b.append_value(r.timestamp));
                Arc::new(b.finish())
            }
            RecordColumn::Key | RecordColumn::Value => {
                let mut b = BinaryBuilder::with_capacity(n, 0);
                rows.iter().for_each(|r| b.append_option(self.bytes(r)));
                Arc::new(b.finish())
            }
            RecordColumn::KeyText | RecordColumn::ValueText => {
                let mut b = StringBuilder::with_capacity(n, 0);
                for r in rows {
                    b.append_option(self.bytes(r).and_then(|b| std::str::from_utf8(b).ok()));
                }
                Arc::new(b.finish())
            }
            RecordColumn::Headers => headers_array(rows),
        }
    }

    /// The key or value bytes a key or value column shows.
    fn bytes(self, r: &Record) -> Option<&[u8]> {
        match self {
            RecordColumn::Key | RecordColumn::KeyText => r.key.as_deref(),
            _ => r.value.as_deref(),
        }
    }
}

/// The record columns' names, in schema order.
pub const RECORD_COLUMNS: [&str; RecordColumn::ALL.len()] = {
    let mut names = [""; RecordColumn::ALL.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = RecordColumn::ALL[i].name();
        i += 1;
    }
    names
};

fn headers_type() -> DataType {
    let fields = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ]);
    DataType::List(Arc::new(Field::new("item", DataType::Struct(fields), true)))
}

fn headers_array(rows: &[Record]) -> ArrayRef {
    let DataType::List(item) = headers_type() else {
        unreachable!("headers are a list")
    };
    let DataType::Struct(fields) = item.data_type().clone() else {
        unreachable!("of structs")
    };
    let entries = StructBuilder::new(
        fields,
        vec![
            Box::new(StringBuilder::new()),
            Box::new(BinaryBuilder::new()),
        ],
    );
    let mut b = ListBuilder::new(entries).with_field(item);
    for r in rows {
        for h in &r.headers {
            let entry = b.values();
            if let Some(k) = entry.field_builder::<StringBuilder>(0) {
                k.append_value(&h.key);
            }
            if let Some(v) = entry.field_builder::<BinaryBuilder>(1) {
                v.append_option(h.value.as_deref());
            }
            entry.append(true);
        }
        b.append(true);
    }
    Arc::new(b.finish())
}

/// The schema of a topic: the record columns, then the declared ones.
pub fn topic_schema(typed: &[TypedColumn]) -> Schema {
    // Nullable, so an INSERT may name only the columns it sets.
    let record = RecordColumn::ALL
        .iter()
        .map(|c| Field::new(c.name(), c.data_type(), true));
    Schema::new(
        record
            .chain(typed.iter().map(TypedColumn::field))
            .collect::<Vec<_>>(),
    )
}

/// The typed columns a topic declares (`value.format=json` and `value.schema`).
pub fn typed_columns(meta: &TopicMeta) -> Result<Vec<TypedColumn>, crate::Error> {
    match (
        meta.configs.get("value.format").map(String::as_str),
        meta.configs.get("value.schema"),
    ) {
        (Some("json"), Some(schema)) => parse_value_schema(schema),
        _ => Ok(Vec::new()),
    }
}

/// Builds rows of a topic's records: the columns read (indexes into [`topic_schema`]), their
/// schema, the topic's typed columns and the JSON fields the read ones take from a value.
pub(crate) struct RowBuilder {
    schema: SchemaRef,
    projection: Vec<usize>,
    typed: Vec<TypedColumn>,
    /// The top-level JSON fields the projected typed columns read; empty when they read none.
    json_keys: Vec<String>,
}

impl RowBuilder {
    /// `schema` is the projected one.
    pub(crate) fn new(schema: SchemaRef, projection: Vec<usize>, typed: Vec<TypedColumn>) -> Self {
        RowBuilder {
            json_keys: field_keys(&typed, &projection),
            schema,
            projection,
            typed,
        }
    }

    /// `rows` rows of a projection with no column.
    pub(crate) fn without_columns(&self, rows: usize) -> datafusion::common::Result<RecordBatch> {
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            Vec::new(),
            &options,
        )?)
    }

    /// The projected columns of `rows`, records of partition `partition`.
    pub(crate) fn build(
        &self,
        partition: i64,
        rows: &[Record],
    ) -> datafusion::common::Result<RecordBatch> {
        let RowBuilder {
            schema,
            projection,
            typed,
            json_keys,
        } = self;
        // Only the fields the projected typed columns read are taken from each value, as raw
        // text: `json_keys.len()` slots a row.
        let mut slots = vec![None; rows.len() * json_keys.len()];
        if !json_keys.is_empty() {
            for (r, fields) in rows.iter().zip(slots.chunks_mut(json_keys.len())) {
                let object = r
                    .value
                    .as_ref()
                    .is_some_and(|v| raw_fields(v, json_keys, fields));
                if !object {
                    fields.fill(None);
                }
            }
        }
        let columns = projection
            .iter()
            .map(|&index| match RecordColumn::ALL.get(index) {
                Some(column) => column.array(partition, rows),
                None => typed_column(&typed[index - RECORD_COLUMNS.len()], json_keys, &slots),
            })
            .collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            columns,
            &options,
        )?)
    }
}
