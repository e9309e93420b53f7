//! Typed columns parsed out of JSON values: the `value.schema` topic config
//! (`host TEXT, status INT, bytes BIGINT`) and how one JSON value fills them.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use serde_json::Value;

use crate::Error;

/// Zone of every timestamp column: UTC, in the form `now()` uses, so they compare directly.
pub const UTC: &str = "+00:00";

/// Columns a topic declares on top of the record columns.
pub const TYPED_COLUMNS_MAX: usize = 256;

/// One declared column.
#[derive(Clone, Debug, PartialEq)]
pub struct TypedColumn {
    pub name: String,
    pub kind: ColumnKind,
    /// The JSON field it reads and writes: its name, unless the schema says `FROM field`.
    pub path: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    SmallInt,
    Int,
    BigInt,
    Real,
    Double,
    Boolean,
    /// Milliseconds since the epoch, or an RFC 3339 string.
    Timestamp,
    /// The field's JSON text, whatever it holds.
    Json,
}

impl ColumnKind {
    fn parse(name: &str) -> Option<ColumnKind> {
        Some(match name.to_ascii_uppercase().as_str() {
            "TEXT" | "VARCHAR" | "STRING" => ColumnKind::Text,
            "SMALLINT" | "INT2" => ColumnKind::SmallInt,
            "INT" | "INTEGER" | "INT4" => ColumnKind::Int,
            "BIGINT" | "INT8" => ColumnKind::BigInt,
            "REAL" | "FLOAT4" => ColumnKind::Real,
            "DOUBLE" | "FLOAT8" | "FLOAT" => ColumnKind::Double,
            "BOOLEAN" | "BOOL" => ColumnKind::Boolean,
            "TIMESTAMP" | "TIMESTAMPTZ" => ColumnKind::Timestamp,
            "JSON" => ColumnKind::Json,
            _ => return None,
        })
    }

    /// The type's name in a value schema.
    pub fn name(self) -> &'static str {
        match self {
            ColumnKind::Text => "TEXT",
            ColumnKind::SmallInt => "SMALLINT",
            ColumnKind::Int => "INT",
            ColumnKind::BigInt => "BIGINT",
            ColumnKind::Real => "REAL",
            ColumnKind::Double => "DOUBLE",
            ColumnKind::Boolean => "BOOLEAN",
            ColumnKind::Timestamp => "TIMESTAMP",
            ColumnKind::Json => "JSON",
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            ColumnKind::Text | ColumnKind::Json => DataType::Utf8,
            ColumnKind::SmallInt => DataType::Int16,
            ColumnKind::Int => DataType::Int32,
            ColumnKind::BigInt => DataType::Int64,
            ColumnKind::Real => DataType::Float32,
            ColumnKind::Double => DataType::Float64,
            ColumnKind::Boolean => DataType::Boolean,
            ColumnKind::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into())),
        }
    }
}

impl TypedColumn {
    pub fn field(&self) -> Field {
        Field::new(&self.name, self.kind.data_type(), true)
    }
}

/// Parses `name TYPE, name TYPE, …`; names are the JSON fields read (a dotted name reads a
/// nested field: `"request.method" TEXT`), unless a column says which with `FROM field`
/// (`sample DOUBLE FROM value` reads the field `value`, which as a name would clash with the
/// record column).
pub fn parse_value_schema(text: &str) -> Result<Vec<TypedColumn>, Error> {
    let mut columns: Vec<TypedColumn> = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (declared, path) = match part.to_ascii_uppercase().rfind(" FROM ") {
            Some(at) => (
                part[..at].trim(),
                Some(part[at + 6..].trim().trim_matches('"')),
            ),
            None => (part, None),
        };
        if path.is_some_and(str::is_empty) {
            return Err(Error::Schema(format!("{part:?}: FROM names no field")));
        }
        let (name, kind) = declared
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| Error::Schema(format!("{part:?}: expected `name TYPE`")))?;
        let name = name.trim().trim_matches('"');
        let kind = ColumnKind::parse(kind.trim()).ok_or_else(|| {
            Error::Schema(format!(
                "{part:?}: unknown type {kind:?}; use TEXT, SMALLINT, INT, BIGINT, REAL, DOUBLE, BOOLEAN, TIMESTAMP or JSON"
            ))
        })?;
        if name.is_empty() {
            return Err(Error::Schema(format!("{part:?}: the column has no name")));
        }
        if crate::topic::RECORD_COLUMNS.contains(&name) || columns.iter().any(|c| c.name == name) {
            return Err(Error::Schema(format!(
                "column {name:?} is declared twice or is a record column"
            )));
        }
        columns.push(TypedColumn {
            name: name.to_owned(),
            kind,
            path: path.unwrap_or(name).to_owned(),
        });
    }
    if columns.len() > TYPED_COLUMNS_MAX {
        return Err(Error::Schema(format!(
            "{} columns, more than {TYPED_COLUMNS_MAX}",
            columns.len()
        )));
    }
    Ok(columns)
}

/// The top-level fields of a JSON object that `keys` names, the others skipped without being
/// built; `None` when `bytes` is not a JSON object. Typed columns read their paths from it as
/// from the whole value (`keys` holds each column's name and the first part of a dotted one).
pub fn parse_fields(bytes: &[u8], keys: &[String]) -> Option<Value> {
    use serde::de::DeserializeSeed;
    let mut input = serde_json::Deserializer::from_slice(bytes);
    let value = Fields(keys).deserialize(&mut input).ok()?;
    input.end().ok()?;
    Some(value)
}

/// The top-level field names read by the typed columns among `projection` (indexes into the
/// table's columns, record columns first).
pub fn field_keys(typed: &[TypedColumn], projection: &[usize]) -> Vec<String> {
    let columns = projection
        .iter()
        .filter_map(|i| typed.get(i.checked_sub(crate::topic::RECORD_COLUMNS.len())?));
    let mut keys: Vec<String> = Vec::new();
    for column in columns {
        let first = column.path.split('.').next().unwrap_or_default();
        for key in [column.path.as_str(), first] {
            if !keys.iter().any(|k| k == key) {
                keys.push(key.to_owned());
            }
        }
    }
    keys
}

struct Fields<'k>(&'k [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Fields<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Fields<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key_seed(Key(self.0))? {
            match key {
                Some(key) => {
                    out.insert(key, map.next_value()?);
                }
                None => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// A field name, kept only when it is one of the keys.
struct Key<'k>(&'k [String]);

impl<'de> serde::de::DeserializeSeed<'de> for Key<'_> {
    type Value = Option<String>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<String>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for Key<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<String>, E> {
        Ok(self.0.iter().any(|k| k == key).then(|| key.to_owned()))
    }
}

fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    value.get(path).or_else(|| {
        path.split('.').try_fold(value, |v, part| match v {
            Value::Object(map) => map.get(part),
            Value::Array(items) => items.get(part.parse::<usize>().ok()?),
            _ => None,
        })
    })
}

/// Builds one typed column from JSON values; a value that is missing, not JSON or of another
/// type gives NULL.
pub struct ColumnBuilder {
    column: TypedColumn,
    builder: Builder,
}

enum Builder {
    Text(StringBuilder),
    SmallInt(Int16Builder),
    Int(Int32Builder),
    BigInt(Int64Builder),
    Real(Float32Builder),
    Double(Float64Builder),
    Boolean(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    pub fn new(column: &TypedColumn, capacity: usize) -> ColumnBuilder {
        let builder = match column.kind {
            ColumnKind::Text | ColumnKind::Json => {
                Builder::Text(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnKind::SmallInt => Builder::SmallInt(Int16Builder::with_capacity(capacity)),
            ColumnKind::Int => Builder::Int(Int32Builder::with_capacity(capacity)),
            ColumnKind::BigInt => Builder::BigInt(Int64Builder::with_capacity(capacity)),
            ColumnKind::Real => Builder::Real(Float32Builder::with_capacity(capacity)),
            ColumnKind::Double => Builder::Double(Float64Builder::with_capacity(capacity)),
            ColumnKind::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnKind::Timestamp => Builder::Timestamp(
                TimestampMillisecondBuilder::with_capacity(capacity).with_timezone(UTC),
            ),
        };
        ColumnBuilder {
            column: column.clone(),
            builder,
        }
    }

    /// Appends the column's value from `record` (the parsed JSON value, if it parsed).
    pub fn append(&mut self, record: Option<&Value>) {
        let value = record
            .and_then(|v| lookup(v, &self.column.path))
            .filter(|v| !v.is_null());
        let integer = |v: &Value| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        };
        let float = |v: &Value| {
            v.as_f64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
        };
        match &mut self.builder {
            Builder::Text(b) => match value {
                Some(Value::String(s)) if self.column.kind == ColumnKind::Text => b.append_value(s),
                Some(other) => b.append_value(other.to_string()),
                None => b.append_null(),
            },
            Builder::SmallInt(b) => {
                b.append_option(value.and_then(integer).and_then(|n| i16::try_from(n).ok()))
            }
            Builder::Int(b) => {
                b.append_option(value.and_then(integer).and_then(|n| i32::try_from(n).ok()))
            }
            Builder::BigInt(b) => b.append_option(value.and_then(integer)),
            Builder::Real(b) => b.append_option(value.and_then(float).map(|f| f as f32)),
            Builder::Double(b) => b.append_option(value.and_then(float)),
            Builder::Boolean(b) => b.append_option(value.and_then(Value::as_bool)),
            Builder::Timestamp(b) => b.append_option(value.and_then(|v| match v {
                Value::String(s) => weir::time::parse_rfc3339(s),
                other => other.as_i64(),
            })),
        }
    }

    pub fn finish(&mut self) -> ArrayRef {
        match &mut self.builder {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::SmallInt(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::BigInt(b) => Arc::new(b.finish()),
            Builder::Real(b) => Arc::new(b.finish()),
            Builder::Double(b) => Arc::new(b.finish()),
            Builder::Boolean(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_schema() {
        let columns = parse_value_schema(
            "host TEXT, status int, bytes BIGINT, \"req.method\" TEXT, at TIMESTAMP",
        )
        .unwrap();
        let names: Vec<_> = columns.iter().map(|c| (c.name.as_str(), c.kind)).collect();
        assert_eq!(
            names,
            [
                ("host", ColumnKind::Text),
                ("status", ColumnKind::Int),
                ("bytes", ColumnKind::BigInt),
                ("req.method", ColumnKind::Text),
                ("at", ColumnKind::Timestamp)
            ]
        );
    }

    #[test]
    fn a_column_reads_another_field_with_from() {
        let columns =
            parse_value_schema(r#"sample DOUBLE FROM value, job TEXT from "labels.job""#).unwrap();
        let read: Vec<_> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind, c.path.as_str()))
            .collect();
        assert_eq!(
            read,
            [
                ("sample", ColumnKind::Double, "value"),
                ("job", ColumnKind::Text, "labels.job")
            ]
        );
        let mut builder = ColumnBuilder::new(&columns[1], 1);
        builder.append(Some(&serde_json::json!({"labels": {"job": "node"}})));
        let array = builder.finish();
        let texts = array
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        assert_eq!(texts.value(0), "node");
        assert_eq!(
            field_keys(&columns, &[crate::topic::RECORD_COLUMNS.len()]),
            ["value"]
        );
    }

    #[test]
    fn refuses_bad_schemas_with_the_reason() {
        for (text, reason) in [
            ("host", "expected `name TYPE`"),
            ("host NUMBER", "unknown type \"NUMBER\""),
            ("a INT, a TEXT", "declared twice"),
            ("offset BIGINT", "record column"),
            ("v DOUBLE FROM \"\"", "FROM names no field"),
        ] {
            let error = parse_value_schema(text).unwrap_err().to_string();
            assert!(error.contains(reason), "{text}: {error}");
        }
    }

    #[test]
    fn values_that_do_not_fit_are_null() {
        let column = TypedColumn {
            name: "status".into(),
            kind: ColumnKind::Int,
            path: "status".into(),
        };
        let mut builder = ColumnBuilder::new(&column, 4);
        for text in [
            r#"{"status": 503}"#,
            r#"{"status": "404"}"#,
            r#"{"status": "oops"}"#,
            "not json",
        ] {
            let value: Option<Value> = serde_json::from_str(text).ok();
            builder.append(value.as_ref());
        }
        let array = builder.finish();
        let array = array
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int32Array>()
            .unwrap();
        assert_eq!(
            array.iter().collect::<Vec<_>>(),
            [Some(503), Some(404), None, None]
        );
    }

    #[test]
    fn only_the_fields_read_are_built() {
        let schema = parse_value_schema("\"req.method\" TEXT, status INT, \"a.b\" TEXT").unwrap();
        let projection: Vec<usize> = (0..crate::topic::RECORD_COLUMNS.len() + 3).collect();
        let keys = field_keys(&schema, &projection);
        assert_eq!(keys, ["req.method", "req", "status", "a.b", "a"]);
        assert!(field_keys(&schema, &[0, 1, 7]).is_empty());
        let text = br#"{"req":{"method":"GET","path":"/x"},"ua":{"deep":[1,2,{"x":null}]},"status":200,"a.b":"flat","s\u0074atus2":1}"#;
        let value = parse_fields(text, &keys).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"req":{"method":"GET","path":"/x"},"status":200,"a.b":"flat"})
        );
        let method = ColumnBuilder::new(&schema[0], 1);
        let mut method = method;
        method.append(Some(&value));
        let array = method.finish();
        let array = array
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        assert_eq!(array.value(0), "GET");
        assert_eq!(parse_fields(b"[1, 2]", &keys), None);
        assert_eq!(parse_fields(b"{\"status\": 1} trailing", &keys), None);
        assert_eq!(parse_fields(b"{\"status\": ", &keys), None);
    }
}
