//! OpenTelemetry over HTTP: `POST /v1/logs` and `POST /v1/metrics` take OTLP export requests,
//! protobuf (`application/x-protobuf`) or JSON (`application/json`), optionally gzipped, and
//! append one JSON record per log record or data point to the logs topic (`--logs-topic`) or
//! the metrics topic (`--metrics-topic`), or to `?topic=NAME`.
//!
//! Attributes are flattened into plain JSON: a log record carries its resource's, its scope's
//! and its own attributes as top-level fields under their names (`"service.name": "checkout"`;
//! the record's own win a clash), beside `timestamp` (epoch ms), `severity_text`,
//! `severity_number`, `body`, `trace_id` and `span_id`. A data point is shaped as a Prometheus
//! sample — `name`, `labels` (resource, scope and point attributes), `value`, `timestamp` — so
//! both share a metrics topic, plus `kind`, `unit`, and for histograms and summaries `count`,
//! `sum` and their buckets or quantiles; it is keyed by its series.

use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Extension, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use bytes::Bytes;
use prost::Message as _;
use serde_json::{Map, Value as Json, json};
use weir_storage::NewRecord;

use super::ingest::{self, Records, TopicParam};
use super::remote_write::{METRICS_SCHEMA, Number};
use super::weigh;
use super::{ApiError, ApiResult, AppState, PRODUCE_BODY_BYTES_MAX, Produced};
use crate::acl::Caller;
use crate::metrics::IngestSource;

pub mod proto;

use proto::{AnyValue, KeyValue, Value};

/// How an exporter sends fewer records a request.
const FEWER: &str = "export smaller batches";

/// The value schema of a logs topic the node makes.
const LOGS_SCHEMA: &str = r#"severity_text TEXT, severity_number INT, body TEXT, "service.name" TEXT, trace_id TEXT, span_id TEXT"#;

pub(super) fn routes() -> Router<AppState> {
    let route = |signal: Signal| {
        post(
            move |state, caller, topic: Query<TopicParam>, headers, body| {
                export(signal, state, caller, topic.0, headers, body)
            },
        )
        .layer(DefaultBodyLimit::max(PRODUCE_BODY_BYTES_MAX))
    };
    Router::new()
        .route("/logs", route(Signal::Logs))
        .route("/metrics", route(Signal::Metrics))
}

/// What an export request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Logs,
    Metrics,
}

impl Signal {
    fn source(self) -> IngestSource {
        match self {
            Signal::Logs => IngestSource::OtlpLogs,
            Signal::Metrics => IngestSource::OtlpMetrics,
        }
    }

    /// The topic a request naming none goes to.
    fn topic(self, topics: &super::IngestTopics) -> &str {
        match self {
            Signal::Logs => &topics.logs,
            Signal::Metrics => &topics.metrics,
        }
    }

    /// The value schema of a topic the node makes for it.
    fn schema(self) -> &'static str {
        match self {
            Signal::Logs => LOGS_SCHEMA,
            Signal::Metrics => METRICS_SCHEMA,
        }
    }

    /// What its export request decodes into.
    fn shape(self) -> &'static weigh::Shape {
        match self {
            Signal::Logs => &proto::EXPORT_LOGS,
            Signal::Metrics => &proto::EXPORT_METRICS,
        }
    }

    /// The records of a request's body.
    fn records(self, encoding: Encoding, body: &[u8]) -> ApiResult<Records> {
        match self {
            Signal::Logs => log_records(encoding.decode(body)?),
            Signal::Metrics => data_points(encoding.decode(body)?),
        }
    }
}

/// How a request's body is encoded; its answer is encoded the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> ApiResult<Encoding> {
        match ingest::content_type(headers).as_str() {
            "application/x-protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            other => Err(ApiError::unsupported(format!(
                "content type {other:?}: OTLP/HTTP sends application/x-protobuf or application/json"
            ))),
        }
    }

    fn decode<M: prost::Message + Default + serde::de::DeserializeOwned>(
        self,
        body: &[u8],
    ) -> ApiResult<M> {
        match self {
            Encoding::Protobuf => M::decode(body).map_err(|e| self.malformed(e)),
            Encoding::Json => serde_json::from_slice(body).map_err(|e| self.malformed(e)),
        }
    }

    /// The refusal of a body that is not an export request in this encoding.
    fn malformed(self, e: impl std::fmt::Display) -> ApiError {
        let name = match self {
            Encoding::Protobuf => "protobuf",
            Encoding::Json => "JSON",
        };
        ApiError::bad_request(format!("not an OTLP {name} export request: {e}"))
    }

    /// The answer to an export all of whose records were written: an empty export response.
    fn accepted(self) -> Response {
        match self {
            Encoding::Protobuf => (
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::<u8>::new(),
            )
                .into_response(),
            Encoding::Json => axum::Json(json!({})).into_response(),
        }
    }
}

/// Decodes and appends one export request. A refusal is answered as OTLP asks: a
/// `google.rpc.Status` in the request's encoding, with the HTTP status saying whether a retry
/// may succeed (503, with `Retry-After`) or not (400, 413, 415).
async fn export(
    signal: Signal,
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    topic: TopicParam,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let encoding = Encoding::of(&headers);
    let received = encoding.clone().and_then(|encoding| {
        Ok(ExportBody {
            signal,
            encoding,
            body: ingest::body(&headers, body)?,
        })
    });
    let topic = topic.or(signal.topic(&state.ingest));
    let written = ingest::ingest(
        &state,
        caller,
        signal.source(),
        topic,
        Some(signal.schema()),
        received,
    )
    .await;
    // A body of no known encoding is answered in JSON.
    let encoding = encoding.unwrap_or(Encoding::Json);
    match written {
        Ok(_) => encoding.accepted(),
        Err(error) => refusal(error, encoding),
    }
}

/// An export request, decompressed.
struct ExportBody {
    signal: Signal,
    encoding: Encoding,
    body: Bytes,
}

impl ingest::Decode for ExportBody {
    fn weight(&self) -> ApiResult<usize> {
        match self.encoding {
            Encoding::Protobuf => weigh::protobuf(&self.body, self.signal.shape())
                .map_err(|e| Encoding::Protobuf.malformed(e)),
            Encoding::Json => Ok(weigh::json(&self.body, proto::ELEMENT_BYTES_MAX)),
        }
    }

    fn records(self) -> ApiResult<Records> {
        self.signal.records(self.encoding, &self.body)
    }
}

/// An error as an OTLP `Status` in `encoding`.
fn refusal(error: ApiError, encoding: Encoding) -> Response {
    // The gRPC codes OTLP/HTTP borrows: INVALID_ARGUMENT, UNAVAILABLE, RESOURCE_EXHAUSTED,
    // PERMISSION_DENIED, UNAUTHENTICATED, NOT_FOUND, else INTERNAL.
    let code = match error.status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => 3,
        StatusCode::SERVICE_UNAVAILABLE => 14,
        StatusCode::PAYLOAD_TOO_LARGE => 8,
        StatusCode::FORBIDDEN => 7,
        StatusCode::UNAUTHORIZED => 16,
        StatusCode::NOT_FOUND => 5,
        _ => 13,
    };
    let body = match encoding {
        Encoding::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            Status {
                code,
                message: error.message.clone(),
            }
            .encode_to_vec(),
        )
            .into_response(),
        Encoding::Json => {
            axum::Json(json!({ "code": code, "message": error.message })).into_response()
        }
    };
    super::with_retry_after(error.status, (error.status, body).into_response())
}

/// `google.rpc.Status`, without details.
#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// Fields of a record, in the order they are set: a later one replaces an earlier one.
type Fields = Map<String, Json>;

/// Sets each attribute as a field under its name.
fn put_attributes(fields: &mut Fields, attributes: &[KeyValue]) {
    for KeyValue { key, value } in attributes {
        fields.insert(key.clone(), any_value(value.as_ref()));
    }
}

/// The attributes of a resource and a scope (`scope.name`, `scope.version` and its own).
fn context(
    resource: Option<&proto::Resource>,
    scope: Option<&proto::InstrumentationScope>,
) -> Fields {
    let mut fields = Fields::new();
    if let Some(resource) = resource {
        put_attributes(&mut fields, &resource.attributes);
    }
    if let Some(scope) = scope {
        for (name, value) in [
            ("scope.name", &scope.name),
            ("scope.version", &scope.version),
        ] {
            if !value.is_empty() {
                fields.insert(name.to_string(), Json::String(value.clone()));
            }
        }
        put_attributes(&mut fields, &scope.attributes);
    }
    fields
}

/// An OTLP value as plain JSON: strings, booleans and numbers as themselves, arrays and
/// key-value lists as arrays and objects, bytes as base64; an unset value as null.
fn any_value(value: Option<&AnyValue>) -> Json {
    match value.and_then(|v| v.value.as_ref()) {
        None => Json::Null,
        Some(Value::String(s)) => Json::String(s.clone()),
        Some(Value::Bool(b)) => Json::Bool(*b),
        Some(Value::Int(i)) => Json::from(*i),
        Some(Value::Double(d)) => double(*d),
        Some(Value::Array(a)) => Json::Array(a.values.iter().map(|v| any_value(Some(v))).collect()),
        Some(Value::Kvlist(list)) => {
            let mut fields = Fields::new();
            put_attributes(&mut fields, &list.values);
            Json::Object(fields)
        }
        Some(Value::Bytes(bytes)) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(bytes))
        }
    }
}

/// A float as JSON: a number, or `NaN`, `+Inf`, `-Inf` as strings.
fn double(value: f64) -> Json {
    serde_json::to_value(Number(value)).unwrap_or(Json::Null)
}

/// Epoch milliseconds of a time in nanoseconds, or of `fallback` when it is unset.
fn millis(unix_nano: u64, fallback: i64) -> i64 {
    match unix_nano {
        0 => fallback,
        nanos => i64::try_from(nanos / 1_000_000).unwrap_or(i64::MAX),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        // Writing to a String does not fail.
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One record per log record.
fn log_records(request: proto::ExportLogsServiceRequest) -> ApiResult<Records> {
    let now = weir_storage::now_ms();
    let mut out = Records::new(FEWER);
    for resource_logs in &request.resource_logs {
        for scope_logs in &resource_logs.scope_logs {
            let shared = context(resource_logs.resource.as_ref(), scope_logs.scope.as_ref());
            for log in &scope_logs.log_records {
                let mut fields = shared.clone();
                put_attributes(&mut fields, &log.attributes);
                let timestamp =
                    millis(log.time_unix_nano, millis(log.observed_time_unix_nano, now));
                fields.insert("timestamp".into(), Json::from(timestamp));
                if !log.severity_text.is_empty() {
                    fields.insert(
                        "severity_text".into(),
                        Json::String(log.severity_text.clone()),
                    );
                }
                if log.severity_number != 0 {
                    fields.insert("severity_number".into(), Json::from(log.severity_number));
                }
                if !log.event_name.is_empty() {
                    fields.insert("event_name".into(), Json::String(log.event_name.clone()));
                }
                fields.insert("body".into(), any_value(log.body.as_ref()));
                for (name, id) in [("trace_id", &log.trace_id), ("span_id", &log.span_id)] {
                    if !id.is_empty() {
                        fields.insert(name.into(), Json::String(hex(id)));
                    }
                }
                out.push(Produced {
                    partition: None,
                    record: NewRecord {
                        timestamp,
                        key: None,
                        value: Some(Bytes::from(Json::Object(fields).to_string())),
                        headers: Vec::new(),
                    },
                })?;
            }
        }
    }
    Ok(out)
}

/// One record per data point, keyed by its series (name and labels).
fn data_points(request: proto::ExportMetricsServiceRequest) -> ApiResult<Records> {
    use proto::Data;
    let now = weir_storage::now_ms();
    let mut out = Records::new(FEWER);
    for resource_metrics in &request.resource_metrics {
        for scope_metrics in &resource_metrics.scope_metrics {
            let shared = context(
                resource_metrics.resource.as_ref(),
                scope_metrics.scope.as_ref(),
            );
            for metric in &scope_metrics.metrics {
                let mut point = |attributes: &[KeyValue], time_unix_nano: u64, fields: Json| {
                    let mut labels = shared.clone();
                    put_attributes(&mut labels, attributes);
                    let timestamp = millis(time_unix_nano, now);
                    let key = format!("{}{}", metric.name, Json::Object(labels.clone()));
                    let mut record = json!({
                        "name": metric.name,
                        "labels": labels,
                        "timestamp": timestamp,
                    });
                    if let (Json::Object(record), Json::Object(fields)) = (&mut record, fields) {
                        record.extend(fields);
                        if !metric.unit.is_empty() {
                            record.insert("unit".into(), Json::String(metric.unit.clone()));
                        }
                    }
                    out.push(Produced {
                        partition: None,
                        record: NewRecord {
                            timestamp,
                            key: Some(Bytes::from(key)),
                            value: Some(Bytes::from(record.to_string())),
                            headers: Vec::new(),
                        },
                    })
                };
                let number = |value: Option<proto::Number>| match value {
                    Some(proto::Number::AsDouble(d)) => double(d),
                    Some(proto::Number::AsInt(i)) => Json::from(i),
                    None => Json::Null,
                };
                let temporality = |t: i32| match t {
                    1 => "delta",
                    2 => "cumulative",
                    _ => "unspecified",
                };
                match &metric.data {
                    None => {}
                    Some(Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            point(
                                &p.attributes,
                                p.time_unix_nano,
                                json!({
                                    "kind": "gauge", "value": number(p.value),
                                }),
                            )?;
                        }
                    }
                    Some(Data::Sum(sum)) => {
                        for p in &sum.data_points {
                            point(
                                &p.attributes,
                                p.time_unix_nano,
                                json!({
                                    "kind": "sum", "value": number(p.value),
                                    "monotonic": sum.is_monotonic,
                                    "temporality": temporality(sum.aggregation_temporality),
                                }),
                            )?;
                        }
                    }
                    Some(Data::Histogram(histogram)) => {
                        for p in &histogram.data_points {
                            let buckets: Vec<Json> = p
                                .bucket_counts
                                .iter()
                                .enumerate()
                                .map(|(i, count)| {
                                    let le = p
                                        .explicit_bounds
                                        .get(i)
                                        .map_or(Json::from("+Inf"), |b| double(*b));
                                    json!({ "le": le, "count": count })
                                })
                                .collect();
                            point(
                                &p.attributes,
                                p.time_unix_nano,
                                json!({
                                    "kind": "histogram", "count": p.count, "sum": p.sum.map(double),
                                    "min": p.min.map(double), "max": p.max.map(double),
                                    "buckets": buckets,
                                    "temporality": temporality(histogram.aggregation_temporality),
                                }),
                            )?;
                        }
                    }
                    Some(Data::ExponentialHistogram(histogram)) => {
                        for p in &histogram.data_points {
                            let side = |b: &Option<proto::Buckets>| {
                                b.as_ref().map(|b| json!({ "offset": b.offset, "bucket_counts": b.bucket_counts }))
                            };
                            point(
                                &p.attributes,
                                p.time_unix_nano,
                                json!({
                                    "kind": "exponential_histogram", "count": p.count,
                                    "sum": p.sum.map(double), "min": p.min.map(double),
                                    "max": p.max.map(double), "scale": p.scale,
                                    "zero_count": p.zero_count, "positive": side(&p.positive),
                                    "negative": side(&p.negative),
                                    "temporality": temporality(histogram.aggregation_temporality),
                                }),
                            )?;
                        }
                    }
                    Some(Data::Summary(summary)) => {
                        for p in &summary.data_points {
                            let quantiles: Vec<Json> = p
                                .quantile_values
                                .iter()
                                .map(|q| json!({ "quantile": double(q.quantile), "value": double(q.value) }))
                                .collect();
                            point(
                                &p.attributes,
                                p.time_unix_nano,
                                json!({
                                    "kind": "summary", "count": p.count, "sum": double(p.sum),
                                    "quantiles": quantiles,
                                }),
                            )?;
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn values(records: &[Produced]) -> Vec<Json> {
        records
            .iter()
            .map(|p| serde_json::from_slice(p.record.value.as_deref().unwrap()).unwrap())
            .collect()
    }

    const LOGS_JSON: &str = r#"{"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "checkout"}},
            {"key": "host.cpus", "value": {"intValue": "8"}}]},
        "scopeLogs": [{
            "scope": {"name": "app.log", "version": "1.2"},
            "logRecords": [{
                "timeUnixNano": "1700000000123456789",
                "severityNumber": 17,
                "severityText": "ERROR",
                "traceId": "5b8efff798038103d269b633813fc60c",
                "spanId": "eee19b7ec3c1b174",
                "body": {"stringValue": "payment failed"},
                "attributes": [
                    {"key": "http.status", "value": {"intValue": 502}},
                    {"key": "service.name", "value": {"stringValue": "overridden"}},
                    {"key": "tags", "value": {"arrayValue": {"values": [{"boolValue": true}, {"doubleValue": 0.5}]}}},
                    {"key": "raw", "value": {"bytesValue": "AQI="}}]
            }, {
                "observedTimeUnixNano": 1700000001000000000,
                "body": {"kvlistValue": {"values": [{"key": "a", "value": {"stringValue": "b"}}]}}
            }]
        }]
    }]}"#;

    #[test]
    fn a_log_record_is_flat_json_with_its_resource_and_scope() {
        let request = Encoding::Json.decode(LOGS_JSON.as_bytes()).unwrap();
        let records = log_records(request).unwrap().produced;
        assert_eq!(records[0].record.timestamp, 1_700_000_000_123);
        assert_eq!(records[1].record.timestamp, 1_700_000_001_000);
        let values = values(&records);
        assert_eq!(
            values[0],
            json!({
                "service.name": "overridden", "host.cpus": 8, "scope.name": "app.log",
                "scope.version": "1.2", "http.status": 502, "tags": [true, 0.5], "raw": "AQI=",
                "timestamp": 1_700_000_000_123_i64, "severity_text": "ERROR",
                "severity_number": 17, "body": "payment failed",
                "trace_id": "5b8efff798038103d269b633813fc60c", "span_id": "eee19b7ec3c1b174",
            })
        );
        assert_eq!(values[1]["body"], json!({"a": "b"}));
        assert_eq!(values[1]["service.name"], "checkout");
    }

    #[test]
    fn empty_log_records_weigh_what_they_decode_into() {
        let count = 100_000;
        let request = proto::ExportLogsServiceRequest {
            resource_logs: vec![proto::ResourceLogs {
                resource: None,
                scope_logs: vec![proto::ScopeLogs {
                    scope: None,
                    log_records: vec![proto::LogRecord::default(); count],
                }],
            }],
        };
        let body = request.encode_to_vec();
        assert!(body.len() < 3 * count, "{}", body.len());
        let weight = weigh::protobuf(&body, Signal::Logs.shape()).unwrap();
        assert!(weight >= count * size_of::<proto::LogRecord>(), "{weight}");
        let json = serde_json::to_string(&json!({ "resourceLogs": [{ "scopeLogs": [{
            "logRecords": vec![json!({}); count] }] }] }))
        .unwrap();
        assert!(weigh::json(json.as_bytes(), proto::ELEMENT_BYTES_MAX) >= weight);
    }

    #[test]
    fn protobuf_and_json_give_the_same_records() {
        let request: proto::ExportLogsServiceRequest =
            Encoding::Json.decode(LOGS_JSON.as_bytes()).unwrap();
        let protobuf = Encoding::Protobuf.decode(&request.encode_to_vec()).unwrap();
        assert_eq!(
            values(&log_records(protobuf).unwrap().produced),
            values(&log_records(request).unwrap().produced)
        );
    }

    #[test]
    fn data_points_are_shaped_as_samples_keyed_by_series() {
        let body = r#"{"resourceMetrics": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "api"}}]},
            "scopeMetrics": [{"metrics": [
                {"name": "requests", "unit": "1", "sum": {"aggregationTemporality": 2,
                    "isMonotonic": true, "dataPoints": [
                    {"asInt": "12", "timeUnixNano": "2000000", "attributes": [
                        {"key": "code", "value": {"stringValue": "500"}}]},
                    {"asInt": "3", "timeUnixNano": "3000000", "attributes": [
                        {"key": "code", "value": {"stringValue": "500"}}]}]}},
                {"name": "latency", "histogram": {"aggregationTemporality": 1, "dataPoints": [
                    {"count": "3", "sum": 0.7, "bucketCounts": ["1", "2"],
                     "explicitBounds": [0.25], "timeUnixNano": "4000000"}]}},
                {"name": "temperature", "gauge": {"dataPoints": [{"asDouble": 21.5}]}}
            ]}]
        }]}"#;
        let records = data_points(Encoding::Json.decode(body.as_bytes()).unwrap())
            .unwrap()
            .produced;
        assert_eq!(records.len(), 4);
        assert_eq!(records[0].record.key, records[1].record.key);
        assert_ne!(records[0].record.key, records[2].record.key);
        assert_eq!(records[0].record.timestamp, 2);
        let values = values(&records);
        assert_eq!(
            values[0],
            json!({"name": "requests", "labels": {"service.name": "api", "code": "500"},
                "value": 12, "timestamp": 2, "kind": "sum", "monotonic": true,
                "temporality": "cumulative", "unit": "1"})
        );
        assert_eq!(
            values[2]["buckets"],
            json!([{"le": 0.25, "count": 1}, {"le": "+Inf", "count": 2}])
        );
        assert_eq!(values[2]["temporality"], "delta");
        assert_eq!(values[3]["value"], 21.5);
    }

    #[test]
    fn a_malformed_export_is_refused_naming_the_problem() {
        let error = Encoding::Json
            .decode::<proto::ExportLogsServiceRequest>(br#"{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"timeUnixNano": "soon"}]}]}]}"#)
            .err()
            .unwrap();
        assert!(
            error.message.contains("\"soon\" is not an integer"),
            "{}",
            error.message
        );
        let error = Encoding::Protobuf
            .decode::<proto::ExportLogsServiceRequest>(b"\x0a\xff")
            .err()
            .unwrap();
        assert!(
            error.message.starts_with("not an OTLP protobuf"),
            "{}",
            error.message
        );
    }
}
