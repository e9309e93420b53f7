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
pub use crate::json_fields::{JSON_DEPTH_MAX, raw_fields};

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

/// One typed column of a batch of JSON values, from the raw text of their top-level fields:
/// `slots` holds `keys.len()` slots a value, as [`raw_fields`] filled them, and `keys` holds
/// the column's path and the path's first part. A field that is missing, or of a type the
/// column cannot take, gives NULL.
pub fn typed_column(column: &TypedColumn, keys: &[String], slots: &[Option<&str>]) -> ArrayRef {
    let at = |key: &str| keys.iter().position(|k| k == key);
    let whole = at(&column.path);
    let nested = column
        .path
        .split_once('.')
        .and_then(|(first, rest)| Some((at(first)?, rest)));
    let per_value = keys.len().max(1);
    let mut b = ColumnBuilder::new(column, slots.len() / per_value);
    for fields in slots.chunks(per_value) {
        let whole = whole.and_then(|i| fields[i]);
        match (whole, nested.and_then(|(i, rest)| Some((fields[i]?, rest)))) {
            (Some(raw), _) => match plain(raw) {
                Some(found) => b.append(found),
                None => b.append(Found::of(parse(raw).as_ref())),
            },
            (None, Some((raw, rest))) => {
                let value = parse(raw);
                b.append(Found::of(value.as_ref().and_then(|v| walk(v, rest))));
            }
            (None, None) => b.append(Found::Missing),
        }
    }
    b.finish()
}

fn parse(raw: &str) -> Option<Value> {
    serde_json::from_str(raw).ok()
}

/// The value under the dotted `path` inside `value`: object fields by name, array items by
/// index.
fn walk<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => items.get(part.parse::<usize>().ok()?),
        _ => None,
    })
}

/// A JSON field as a column reads it.
#[derive(Clone, Copy)]
enum Found<'a> {
    /// Absent or `null`.
    Missing,
    Str(&'a str),
    Int(i64),
    /// A number that is not an `i64`, with the value it came from.
    Float(f64, &'a Value),
    Bool(bool),
    /// An array or an object.
    Other(&'a Value),
}

impl<'a> Found<'a> {
    fn of(value: Option<&'a Value>) -> Found<'a> {
        match value {
            None | Some(Value::Null) => Found::Missing,
            Some(Value::String(s)) => Found::Str(s),
            Some(Value::Bool(b)) => Found::Bool(*b),
            Some(v @ Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Found::Int(i),
                (None, Some(f)) => Found::Float(f, v),
                (None, None) => Found::Other(v),
            },
            Some(other) => Found::Other(other),
        }
    }
}

/// The field a raw JSON text is when its text alone says, without parsing it into a value: a
/// string with no escape, an integer in plain digits, `true`, `false` or `null`.
fn plain(raw: &str) -> Option<Found<'_>> {
    match raw.as_bytes().first()? {
        b'"' => raw
            .strip_prefix('"')?
            .strip_suffix('"')
            .filter(|s| !s.contains('\\'))
            .map(Found::Str),
        b'n' => (raw == "null").then_some(Found::Missing),
        b't' => (raw == "true").then_some(Found::Bool(true)),
        b'f' => (raw == "false").then_some(Found::Bool(false)),
        _ => {
            // Digits with no leading zero (`-0` is a float to JSON parsers).
            let digits = raw.strip_prefix('-').unwrap_or(raw);
            let plain = (raw == "0" || !digits.starts_with('0'))
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit());
            plain.then(|| raw.parse().ok().map(Found::Int)).flatten()
        }
    }
}

/// Builds one typed column, a field at a time.
struct ColumnBuilder {
    kind: ColumnKind,
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
    fn new(column: &TypedColumn, capacity: usize) -> ColumnBuilder {
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
            kind: column.kind,
            builder,
        }
    }

    /// Appends the column's value from `record` (the parsed JSON value, if it parsed).
    fn append(&mut self, found: Found<'_>) {
        let integer = match found {
            Found::Int(n) => Some(n),
            Found::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        let float = match found {
            Found::Int(n) => Some(n as f64),
            Found::Float(f, _) => Some(f),
            Found::Str(s) => s.trim().parse().ok(),
            _ => None,
        };
        match &mut self.builder {
            Builder::Text(b) => match found {
                Found::Missing => b.append_null(),
                Found::Str(s) if self.kind == ColumnKind::Text => b.append_value(s),
                Found::Str(s) => b.append_value(Value::from(s).to_string()),
                Found::Int(n) => b.append_value(n.to_string()),
                Found::Bool(v) => b.append_value(v.to_string()),
                Found::Float(_, v) | Found::Other(v) => b.append_value(v.to_string()),
            },
            Builder::SmallInt(b) => b.append_option(integer.and_then(|n| i16::try_from(n).ok())),
            Builder::Int(b) => b.append_option(integer.and_then(|n| i32::try_from(n).ok())),
            Builder::BigInt(b) => b.append_option(integer),
            Builder::Real(b) => b.append_option(float.map(|f| f as f32)),
            Builder::Double(b) => b.append_option(float),
            Builder::Boolean(b) => b.append_option(match found {
                Found::Bool(v) => Some(v),
                _ => None,
            }),
            Builder::Timestamp(b) => b.append_option(match found {
                Found::Str(s) => weir::time::parse_rfc3339(s),
                Found::Int(n) => Some(n),
                _ => None,
            }),
        }
    }

    fn finish(&mut self) -> ArrayRef {
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
    use datafusion::arrow::array::Array;
    use datafusion::arrow::util::display::array_value_to_string;

    use super::*;

    /// Each column of `schema` over `values`, every row shown as text (`NULL` for null).
    fn columns(schema: &[TypedColumn], values: &[&str]) -> Vec<Vec<String>> {
        let projection: Vec<usize> = (0..schema.len())
            .map(|i| crate::topic::RECORD_COLUMNS.len() + i)
            .collect();
        let keys = field_keys(schema, &projection);
        let mut slots = vec![None; values.len() * keys.len()];
        for (text, fields) in values.iter().zip(slots.chunks_mut(keys.len())) {
            if !raw_fields(text.as_bytes(), &keys, fields) {
                fields.fill(None);
            }
        }
        schema
            .iter()
            .map(|column| {
                let array = typed_column(column, &keys, &slots);
                (0..array.len())
                    .map(|i| match array.is_null(i) {
                        true => "NULL".to_owned(),
                        false => array_value_to_string(&array, i).unwrap(),
                    })
                    .collect()
            })
            .collect()
    }

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
        assert_eq!(
            super::tests::columns(&columns[1..], &[r#"{"labels": {"job": "node"}}"#]),
            [["node"]]
        );
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
    fn every_type_reads_what_its_json_holds_and_null_otherwise() {
        let schema = parse_value_schema(
            "t TEXT, i INT, s SMALLINT, b BIGINT, r REAL, d DOUBLE, ok BOOLEAN, at TIMESTAMP, j JSON",
        )
        .unwrap();
        let row = |v: &str| {
            format!(
                r#"{{"t": {v}, "i": {v}, "s": {v}, "b": {v}, "r": {v}, "d": {v}, "ok": {v}, "at": {v}, "j": {v}}}"#
            )
        };
        let values: Vec<String> = [
            "503",
            "-7",
            r#""404""#,
            r#"" 12 ""#,
            r#""oops""#,
            r#""tab\tquote\"""#,
            r#""2024-01-01T00:00:00Z""#,
            "1.5",
            "1e3",
            "-0",
            "40000",
            "9223372036854775808",
            "true",
            "null",
            "[1, {\"a\": 2}]",
        ]
        .iter()
        .map(|v| row(v))
        .collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let got = columns(&schema, &values);
        let expect = |column: &str, rows: [&str; 15]| {
            let at = schema.iter().position(|c| c.name == column).unwrap();
            assert_eq!(got[at], rows, "column {column}");
        };
        let n = "NULL";
        expect(
            "t",
            [
                "503",
                "-7",
                "404",
                " 12 ",
                "oops",
                "tab\tquote\"",
                "2024-01-01T00:00:00Z",
                "1.5",
                "1000.0",
                "-0.0",
                "40000",
                "9223372036854775808",
                "true",
                n,
                r#"[1,{"a":2}]"#,
            ],
        );
        expect(
            "i",
            [
                "503", "-7", "404", "12", n, n, n, n, n, n, "40000", n, n, n, n,
            ],
        );
        expect(
            "s",
            ["503", "-7", "404", "12", n, n, n, n, n, n, n, n, n, n, n],
        );
        expect(
            "b",
            [
                "503", "-7", "404", "12", n, n, n, n, n, n, "40000", n, n, n, n,
            ],
        );
        expect(
            "r",
            [
                "503.0",
                "-7.0",
                "404.0",
                "12.0",
                n,
                n,
                n,
                "1.5",
                "1000.0",
                "-0.0",
                "40000.0",
                "9.223372e18",
                n,
                n,
                n,
            ],
        );
        expect(
            "d",
            [
                "503.0",
                "-7.0",
                "404.0",
                "12.0",
                n,
                n,
                n,
                "1.5",
                "1000.0",
                "-0.0",
                "40000.0",
                "9.223372036854776e18",
                n,
                n,
                n,
            ],
        );
        expect("ok", [n, n, n, n, n, n, n, n, n, n, n, n, "true", n, n]);
        expect(
            "at",
            [
                "1970-01-01T00:00:00.503Z",
                "1969-12-31T23:59:59.993Z",
                n,
                n,
                n,
                n,
                "2024-01-01T00:00:00Z",
                n,
                n,
                n,
                "1970-01-01T00:00:40Z",
                n,
                n,
                n,
                n,
            ],
        );
        expect(
            "j",
            [
                "503",
                "-7",
                r#""404""#,
                r#"" 12 ""#,
                r#""oops""#,
                r#""tab\tquote\"""#,
                r#""2024-01-01T00:00:00Z""#,
                "1.5",
                "1000.0",
                "-0.0",
                "40000",
                "9223372036854775808",
                "true",
                n,
                r#"[1,{"a":2}]"#,
            ],
        );
    }

    #[test]
    fn what_plain_text_says_is_what_parsing_says() {
        let mut texts: Vec<String> = [
            "0",
            "-0",
            "7",
            "-7",
            "00",
            "0.0",
            "1e2",
            "-",
            "01",
            "+1",
            "true",
            "false",
            "null",
            "\"\"",
            "\"x\"",
            "\" 5 \"",
            "\"a\\u0041\"",
            "\"\\n\"",
            "[]",
            "{}",
            " 12 ",
            "\"é\"",
        ]
        .iter()
        .map(|t| t.to_string())
        .collect();
        for n in [
            i64::MIN,
            i64::MIN + 1,
            -1_000_000_007,
            32_767,
            32_768,
            i64::MAX,
        ] {
            texts.push(n.to_string());
            texts.push(format!("\"{n}\""));
        }
        texts.push("9223372036854775808".into());
        texts.push("-9223372036854775809".into());
        let kinds = [
            ColumnKind::Text,
            ColumnKind::SmallInt,
            ColumnKind::Int,
            ColumnKind::BigInt,
            ColumnKind::Real,
            ColumnKind::Double,
            ColumnKind::Boolean,
            ColumnKind::Timestamp,
            ColumnKind::Json,
        ];
        for kind in kinds {
            let column = TypedColumn {
                name: "c".into(),
                kind,
                path: "c".into(),
            };
            for text in &texts {
                if serde_json::from_str::<Value>(text).is_err() {
                    assert!(
                        plain(text).is_none() || text.trim() != text,
                        "{text} is not JSON"
                    );
                    continue;
                }
                let raw = text.trim();
                let Some(found) = plain(raw) else {
                    continue;
                };
                let (mut fast, mut parsed) = (
                    ColumnBuilder::new(&column, 1),
                    ColumnBuilder::new(&column, 1),
                );
                fast.append(found);
                parsed.append(Found::of(parse(raw).as_ref()));
                assert_eq!(
                    fast.finish().to_data(),
                    parsed.finish().to_data(),
                    "{kind:?} of {text}"
                );
            }
        }
    }

    #[test]
    fn values_that_are_not_one_object_fill_no_column() {
        let schema = parse_value_schema("status INT").unwrap();
        let got = columns(
            &schema,
            &[
                r#"{"status": 1}"#,
                r#"{"status": 1, "status": 2}"#,
                "[1, 2]",
                r#"{"status": 1} trailing"#,
                r#"{"status": "#,
                r#"{"status": 1, "other": tru}"#,
                "not json",
            ],
        );
        assert_eq!(got, [["1", "2", "NULL", "NULL", "NULL", "NULL", "NULL"]]);
    }

    #[test]
    fn only_the_fields_read_are_built() {
        let schema = parse_value_schema("\"req.method\" TEXT, status INT, \"a.b\" TEXT").unwrap();
        let projection: Vec<usize> = (0..crate::topic::RECORD_COLUMNS.len() + 3).collect();
        let keys = field_keys(&schema, &projection);
        assert_eq!(keys, ["req.method", "req", "status", "a.b", "a"]);
        assert!(field_keys(&schema, &[0, 1, 7]).is_empty());
        let text = r#"{"req":{"method":"GET","path":"/x"},"ua":{"deep":[1,2,{"x":null}]},"status":200,"a.b":"flat","s\u0074atus":1}"#;
        let mut slots = vec![None; keys.len()];
        assert!(raw_fields(text.as_bytes(), &keys, &mut slots));
        // An escaped name is the name it spells: the last `status` is read.
        assert_eq!(
            slots,
            [
                None,
                Some(r#"{"method":"GET","path":"/x"}"#),
                Some("1"),
                Some(r#""flat""#),
                None
            ]
        );
        assert_eq!(
            columns(&schema, &[text, r#"{"req": {"method": ["x"]}}"#]),
            [["GET", r#"["x"]"#], ["1", "NULL"], ["flat", "NULL"]]
        );
    }
}
