//! The OTLP messages the logs and metrics endpoints read (opentelemetry-proto, `v1`), decoded
//! from protobuf and from OTLP's JSON encoding: lowerCamelCase names, 64-bit integers as
//! numbers or strings, trace and span ids as hex, `bytesValue` as base64, oneofs as the one
//! field set. Fields the node does not keep (exemplars, flags, dropped counts, entity refs) are
//! skipped by both decoders.

use serde::{Deserialize, Deserializer};

use crate::http::weigh::Shape;

/// A message of both encodings: prost for protobuf, serde for JSON.
macro_rules! message {
    ($(#[$meta:meta])* struct $name:ident { $($body:tt)* }) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, prost::Message, Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $name { $($body)* }
    };
}

message! {
    struct ExportLogsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_logs: Vec<ResourceLogs>,
    }
}

message! {
    struct ResourceLogs {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_logs: Vec<ScopeLogs>,
    }
}

message! {
    struct ScopeLogs {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub log_records: Vec<LogRecord>,
    }
}

message! {
    struct LogRecord {
        #[prost(fixed64, tag = "1")]
        #[serde(deserialize_with = "integer")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "11")]
        #[serde(deserialize_with = "integer")]
        pub observed_time_unix_nano: u64,
        #[prost(int32, tag = "2")]
        pub severity_number: i32,
        #[prost(string, tag = "3")]
        pub severity_text: String,
        #[prost(message, optional, tag = "5")]
        pub body: Option<AnyValue>,
        #[prost(message, repeated, tag = "6")]
        pub attributes: Vec<KeyValue>,
        #[prost(bytes = "vec", tag = "9")]
        #[serde(deserialize_with = "hex")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "10")]
        #[serde(deserialize_with = "hex")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "12")]
        pub event_name: String,
    }
}

message! {
    struct ExportMetricsServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_metrics: Vec<ResourceMetrics>,
    }
}

message! {
    struct ResourceMetrics {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_metrics: Vec<ScopeMetrics>,
    }
}

message! {
    struct ScopeMetrics {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub metrics: Vec<Metric>,
    }
}

message! {
    struct Metric {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub description: String,
        #[prost(string, tag = "3")]
        pub unit: String,
        #[prost(oneof = "Data", tags = "5, 7, 9, 10, 11")]
        #[serde(flatten)]
        pub data: Option<Data>,
    }
}

/// What a metric holds.
#[derive(Clone, PartialEq, prost::Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Data {
    #[prost(message, tag = "5")]
    Gauge(Gauge),
    #[prost(message, tag = "7")]
    Sum(Sum),
    #[prost(message, tag = "9")]
    Histogram(Histogram),
    #[prost(message, tag = "10")]
    ExponentialHistogram(ExponentialHistogram),
    #[prost(message, tag = "11")]
    Summary(Summary),
}

message! {
    struct Gauge {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
    }
}

message! {
    struct Sum {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<NumberDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
        #[prost(bool, tag = "3")]
        pub is_monotonic: bool,
    }
}

message! {
    struct Histogram {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<HistogramDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }
}

message! {
    struct ExponentialHistogram {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<ExponentialHistogramDataPoint>,
        #[prost(int32, tag = "2")]
        pub aggregation_temporality: i32,
    }
}

message! {
    struct Summary {
        #[prost(message, repeated, tag = "1")]
        pub data_points: Vec<SummaryDataPoint>,
    }
}

message! {
    struct NumberDataPoint {
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "3")]
        #[serde(deserialize_with = "integer")]
        pub time_unix_nano: u64,
        #[prost(oneof = "Number", tags = "4, 6")]
        #[serde(flatten)]
        pub value: Option<Number>,
    }
}

/// A data point's value.
#[derive(Clone, Copy, PartialEq, prost::Oneof, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Number {
    #[prost(double, tag = "4")]
    AsDouble(f64),
    #[prost(sfixed64, tag = "6")]
    AsInt(#[serde(deserialize_with = "integer")] i64),
}

message! {
    struct HistogramDataPoint {
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "3")]
        #[serde(deserialize_with = "integer")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        #[serde(deserialize_with = "integer")]
        pub count: u64,
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        #[prost(fixed64, repeated, tag = "6")]
        #[serde(deserialize_with = "integers")]
        pub bucket_counts: Vec<u64>,
        #[prost(double, repeated, tag = "7")]
        pub explicit_bounds: Vec<f64>,
        #[prost(double, optional, tag = "11")]
        pub min: Option<f64>,
        #[prost(double, optional, tag = "12")]
        pub max: Option<f64>,
    }
}

message! {
    struct ExponentialHistogramDataPoint {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "3")]
        #[serde(deserialize_with = "integer")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        #[serde(deserialize_with = "integer")]
        pub count: u64,
        #[prost(double, optional, tag = "5")]
        pub sum: Option<f64>,
        #[prost(sint32, tag = "6")]
        pub scale: i32,
        #[prost(fixed64, tag = "7")]
        #[serde(deserialize_with = "integer")]
        pub zero_count: u64,
        #[prost(message, optional, tag = "8")]
        pub positive: Option<Buckets>,
        #[prost(message, optional, tag = "9")]
        pub negative: Option<Buckets>,
        #[prost(double, optional, tag = "12")]
        pub min: Option<f64>,
        #[prost(double, optional, tag = "13")]
        pub max: Option<f64>,
    }
}

message! {
    struct Buckets {
        #[prost(sint32, tag = "1")]
        pub offset: i32,
        #[prost(uint64, repeated, tag = "2")]
        #[serde(deserialize_with = "integers")]
        pub bucket_counts: Vec<u64>,
    }
}

message! {
    struct SummaryDataPoint {
        #[prost(message, repeated, tag = "7")]
        pub attributes: Vec<KeyValue>,
        #[prost(fixed64, tag = "3")]
        #[serde(deserialize_with = "integer")]
        pub time_unix_nano: u64,
        #[prost(fixed64, tag = "4")]
        #[serde(deserialize_with = "integer")]
        pub count: u64,
        #[prost(double, tag = "5")]
        pub sum: f64,
        #[prost(message, repeated, tag = "6")]
        pub quantile_values: Vec<ValueAtQuantile>,
    }
}

message! {
    struct ValueAtQuantile {
        #[prost(double, tag = "1")]
        pub quantile: f64,
        #[prost(double, tag = "2")]
        pub value: f64,
    }
}

message! {
    struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
}

message! {
    struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
        #[prost(message, repeated, tag = "3")]
        pub attributes: Vec<KeyValue>,
    }
}

message! {
    struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
}

message! {
    struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 5, 6, 7")]
        #[serde(flatten)]
        pub value: Option<Value>,
    }
}

/// An attribute's or a log body's value.
#[derive(Clone, PartialEq, prost::Oneof, Deserialize)]
pub enum Value {
    #[prost(string, tag = "1")]
    #[serde(rename = "stringValue")]
    String(String),
    #[prost(bool, tag = "2")]
    #[serde(rename = "boolValue")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    #[serde(rename = "intValue")]
    Int(#[serde(deserialize_with = "integer")] i64),
    #[prost(double, tag = "4")]
    #[serde(rename = "doubleValue")]
    Double(f64),
    #[prost(message, tag = "5")]
    #[serde(rename = "arrayValue")]
    Array(ArrayValue),
    #[prost(message, tag = "6")]
    #[serde(rename = "kvlistValue")]
    Kvlist(KeyValueList),
    #[prost(bytes = "vec", tag = "7")]
    #[serde(rename = "bytesValue")]
    Bytes(#[serde(deserialize_with = "base64")] Vec<u8>),
}

message! {
    struct ArrayValue {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<AnyValue>,
    }
}

message! {
    struct KeyValueList {
        #[prost(message, repeated, tag = "1")]
        pub values: Vec<KeyValue>,
    }
}

/// A 64-bit integer OTLP JSON may send as a number or as a decimal string.
#[derive(Deserialize)]
#[serde(untagged)]
enum Integer<T> {
    Number(T),
    Text(String),
}

impl<T: std::str::FromStr> Integer<T> {
    fn value<E: serde::de::Error>(self) -> Result<T, E> {
        match self {
            Integer::Number(n) => Ok(n),
            Integer::Text(text) => text
                .parse()
                .map_err(|_| E::custom(format!("{text:?} is not an integer"))),
        }
    }
}

fn integer<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + std::str::FromStr,
{
    Integer::<T>::deserialize(d)?.value()
}

fn integers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    Vec::<Integer<u64>>::deserialize(d)?
        .into_iter()
        .map(Integer::value)
        .collect()
}

fn hex<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let text = String::deserialize(d)?;
    let digit = |c: u8| char::from(c).to_digit(16);
    if text.len() % 2 != 0 {
        return Err(serde::de::Error::custom(format!("{text:?} is not hex")));
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not hex")))
}

fn base64<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    use base64::Engine as _;
    let text = String::deserialize(d)?;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| serde::de::Error::custom(format!("bytesValue is not base64: {e}")))
}

// What each message decodes into, for weighing a protobuf body before decoding it.

pub(in crate::http) static EXPORT_LOGS: Shape = Shape {
    messages: &[(1, &RESOURCE_LOGS)],
    ..Shape::leaf::<ExportLogsServiceRequest>()
};
static RESOURCE_LOGS: Shape = Shape {
    messages: &[(1, &RESOURCE), (2, &SCOPE_LOGS)],
    ..Shape::leaf::<ResourceLogs>()
};
static SCOPE_LOGS: Shape = Shape {
    messages: &[(1, &SCOPE), (2, &LOG_RECORD)],
    ..Shape::leaf::<ScopeLogs>()
};
static LOG_RECORD: Shape = Shape {
    messages: &[(5, &ANY_VALUE), (6, &KEY_VALUE)],
    ..Shape::leaf::<LogRecord>()
};
pub(in crate::http) static EXPORT_METRICS: Shape = Shape {
    messages: &[(1, &RESOURCE_METRICS)],
    ..Shape::leaf::<ExportMetricsServiceRequest>()
};
static RESOURCE_METRICS: Shape = Shape {
    messages: &[(1, &RESOURCE), (2, &SCOPE_METRICS)],
    ..Shape::leaf::<ResourceMetrics>()
};
static SCOPE_METRICS: Shape = Shape {
    messages: &[(1, &SCOPE), (2, &METRIC)],
    ..Shape::leaf::<ScopeMetrics>()
};
static METRIC: Shape = Shape {
    messages: &[
        (5, &NUMBER_POINTS),
        (7, &NUMBER_POINTS),
        (9, &HISTOGRAM),
        (10, &EXPONENTIAL_HISTOGRAM),
        (11, &SUMMARY),
    ],
    ..Shape::leaf::<Metric>()
};
static NUMBER_POINTS: Shape = Shape {
    messages: &[(1, &NUMBER_POINT)],
    ..Shape::leaf::<Sum>()
};
static NUMBER_POINT: Shape = Shape {
    messages: &[(7, &KEY_VALUE)],
    ..Shape::leaf::<NumberDataPoint>()
};
static HISTOGRAM: Shape = Shape {
    messages: &[(1, &HISTOGRAM_POINT)],
    ..Shape::leaf::<Histogram>()
};
static HISTOGRAM_POINT: Shape = Shape {
    messages: &[(9, &KEY_VALUE)],
    numbers: &[6, 7],
    ..Shape::leaf::<HistogramDataPoint>()
};
static EXPONENTIAL_HISTOGRAM: Shape = Shape {
    messages: &[(1, &EXPONENTIAL_POINT)],
    ..Shape::leaf::<ExponentialHistogram>()
};
static EXPONENTIAL_POINT: Shape = Shape {
    messages: &[(1, &KEY_VALUE), (8, &BUCKETS), (9, &BUCKETS)],
    ..Shape::leaf::<ExponentialHistogramDataPoint>()
};
static BUCKETS: Shape = Shape {
    numbers: &[2],
    ..Shape::leaf::<Buckets>()
};
static SUMMARY: Shape = Shape {
    messages: &[(1, &SUMMARY_POINT)],
    ..Shape::leaf::<Summary>()
};
static SUMMARY_POINT: Shape = Shape {
    messages: &[(7, &KEY_VALUE), (6, &QUANTILE)],
    ..Shape::leaf::<SummaryDataPoint>()
};
static QUANTILE: Shape = Shape::leaf::<ValueAtQuantile>();
static RESOURCE: Shape = Shape {
    messages: &[(1, &KEY_VALUE)],
    ..Shape::leaf::<Resource>()
};
static SCOPE: Shape = Shape {
    messages: &[(3, &KEY_VALUE)],
    ..Shape::leaf::<InstrumentationScope>()
};
static KEY_VALUE: Shape = Shape {
    messages: &[(2, &ANY_VALUE)],
    ..Shape::leaf::<KeyValue>()
};
static ANY_VALUE: Shape = Shape {
    messages: &[(5, &ARRAY_VALUE), (6, &KEY_VALUE_LIST)],
    ..Shape::leaf::<AnyValue>()
};
static ARRAY_VALUE: Shape = Shape {
    messages: &[(1, &ANY_VALUE)],
    ..Shape::leaf::<ArrayValue>()
};
static KEY_VALUE_LIST: Shape = Shape {
    messages: &[(1, &KEY_VALUE)],
    ..Shape::leaf::<KeyValueList>()
};

/// The largest message of either export, which any JSON object or array of a body may become.
pub(in crate::http) const ELEMENT_BYTES_MAX: usize = {
    let sizes = [
        size_of::<ResourceLogs>(),
        size_of::<ScopeLogs>(),
        size_of::<LogRecord>(),
        size_of::<ResourceMetrics>(),
        size_of::<ScopeMetrics>(),
        size_of::<Metric>(),
        size_of::<NumberDataPoint>(),
        size_of::<HistogramDataPoint>(),
        size_of::<ExponentialHistogramDataPoint>(),
        size_of::<SummaryDataPoint>(),
        size_of::<InstrumentationScope>(),
        size_of::<KeyValue>(),
        size_of::<AnyValue>(),
    ];
    let mut largest = 0;
    let mut i = 0;
    while i < sizes.len() {
        if sizes[i] > largest {
            largest = sizes[i];
        }
        i += 1;
    }
    largest
};
