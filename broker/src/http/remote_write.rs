//! Prometheus remote write: `POST /api/v1/write` takes the snappy-compressed protobuf a
//! Prometheus (or an agent speaking its protocol) sends — `prometheus.WriteRequest` of
//! remote write 1.0, or `io.prometheus.write.v2.Request` of 2.0 when the `Content-Type` says
//! `proto=io.prometheus.write.v2.Request` — and appends each sample as a JSON record
//! `{"name", "labels", "value", "timestamp"}` to the metrics topic (`--metrics-topic`, or
//! `?topic=NAME`), keyed by its series so a series stays in one partition.
//!
//! Native histograms and exemplars are not kept; a sample whose value is not a finite number
//! (the staleness marker is a NaN) carries it as the string `NaN`, `+Inf` or `-Inf`.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Router, extract::DefaultBodyLimit};
use bytes::Bytes;
use prost::Message as _;
use serde::Serialize;
use serde::ser::SerializeMap as _;
use weir_storage::NewRecord;

use super::ingest::{self, Records, TopicParam};
use super::weigh::{self, Shape};
use super::{ApiError, ApiResult, AppState, PRODUCE_BODY_BYTES_MAX, Produced};
use crate::acl::Caller;
use crate::metrics::IngestSource;

/// The value schema of a metrics topic the node makes: the fields every sample record has
/// (the value as `sample`: `value` is the record's bytes), the two labels every scraped series
/// has, and the kind of an OTLP data point.
pub(super) const METRICS_SCHEMA: &str = r#"name TEXT, sample DOUBLE FROM value, labels JSON, job TEXT FROM "labels.job", instance TEXT FROM "labels.instance", kind TEXT"#;

/// The label holding a series' metric name.
const NAME_LABEL: &str = "__name__";

pub(super) fn routes() -> Router<AppState> {
    Router::new().route(
        "/write",
        post(write).layer(DefaultBodyLimit::max(PRODUCE_BODY_BYTES_MAX)),
    )
}

async fn write(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(topic): Query<TopicParam>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let version = Version::of(&headers);
    let received = version.clone().and_then(|version| {
        Ok(WriteBody {
            version,
            body: ingest::body(&headers, body)?,
        })
    });
    let topic = topic.or(&state.ingest.metrics);
    let placed = ingest::ingest(
        &state,
        caller,
        IngestSource::RemoteWrite,
        topic,
        Some(METRICS_SCHEMA),
        received,
    )
    .await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    if version? == Version::V2 {
        // 2.0 senders learn what was kept from these; histograms and exemplars are not.
        let written = response.headers_mut();
        written.insert(
            "X-Prometheus-Remote-Write-Samples-Written",
            HeaderValue::from(placed.len()),
        );
        for kind in ["Histograms", "Exemplars"] {
            let name = format!("X-Prometheus-Remote-Write-{kind}-Written");
            if let Ok(name) = axum::http::HeaderName::try_from(name) {
                written.insert(name, HeaderValue::from(0));
            }
        }
    }
    Ok(response)
}

/// The protocol version of a request, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    V1,
    V2,
}

impl Version {
    fn of(headers: &HeaderMap) -> ApiResult<Version> {
        let proto = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(';')
                    .find_map(|p| p.trim().strip_prefix("proto="))
                    .map(str::to_owned)
            });
        match ingest::content_type(headers).as_str() {
            "application/x-protobuf" | "" => {}
            other => {
                return Err(ApiError::unsupported(format!(
                    "content type {other}: remote write sends application/x-protobuf"
                )));
            }
        }
        match proto.as_deref() {
            None | Some("prometheus.WriteRequest") => Ok(Version::V1),
            Some("io.prometheus.write.v2.Request") => Ok(Version::V2),
            Some(other) => Err(ApiError::unsupported(format!(
                "remote write message {other}: this node reads prometheus.WriteRequest (1.0) \
                 and io.prometheus.write.v2.Request (2.0)"
            ))),
        }
    }
}

/// A remote write request, decompressed.
struct WriteBody {
    version: Version,
    body: Bytes,
}

impl ingest::Decode for WriteBody {
    fn weight(&self) -> ApiResult<usize> {
        let shape = match self.version {
            Version::V1 => &WRITE_REQUEST,
            Version::V2 => &REQUEST_V2,
        };
        weigh::protobuf(&self.body, shape).map_err(|e| malformed(self.version, e))
    }

    fn records(self) -> ApiResult<Records> {
        samples(self.version, &self.body)
    }
}

fn malformed(version: Version, e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("not a remote write request ({version:?}): {e}"))
}

/// The records of a decompressed request: one a sample.
fn samples(version: Version, body: &[u8]) -> ApiResult<Records> {
    let mut out = Records::new("lower queue_config.max_samples_per_send");
    match version {
        Version::V1 => {
            let request = WriteRequest::decode(body).map_err(|e| malformed(version, e))?;
            for series in &request.timeseries {
                let labels: Vec<(&str, &str)> = series
                    .labels
                    .iter()
                    .map(|l| (l.name.as_str(), l.value.as_str()))
                    .collect();
                push_series(&mut out, &labels, &series.samples)?;
            }
        }
        Version::V2 => {
            let request = RequestV2::decode(body).map_err(|e| malformed(version, e))?;
            for (n, series) in request.timeseries.iter().enumerate() {
                let labels = series
                    .labels_refs
                    .chunks(2)
                    .map(|pair| match pair {
                        [name, value] => Some((
                            request.symbols.get(*name as usize)?.as_str(),
                            request.symbols.get(*value as usize)?.as_str(),
                        )),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        ApiError::bad_request(format!(
                            "series {n}: labels_refs must be pairs of indexes into the {} symbols",
                            request.symbols.len()
                        ))
                    })?;
                push_series(&mut out, &labels, &series.samples)?;
            }
        }
    }
    Ok(out)
}

/// Adds the records of one series' samples, keyed by the series.
fn push_series(out: &mut Records, labels: &[(&str, &str)], samples: &[Sample]) -> ApiResult<()> {
    let name = labels
        .iter()
        .find(|(n, _)| *n == NAME_LABEL)
        .map_or("", |(_, v)| v);
    let others: Vec<(&str, &str)> = labels
        .iter()
        .filter(|(n, _)| *n != NAME_LABEL)
        .copied()
        .collect();
    let key = Bytes::from(series_key(name, &others));
    for sample in samples {
        let record = SampleRecord {
            name,
            labels: Labels(&others),
            value: Number(sample.value),
            timestamp: sample.timestamp,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| ApiError::bad_request(format!("sample of {name}: {e}")))?;
        out.push(Produced {
            partition: None,
            record: NewRecord {
                timestamp: sample.timestamp,
                key: Some(key.clone()),
                value: Some(Bytes::from(value)),
                headers: Vec::new(),
            },
        })?;
    }
    Ok(())
}

/// A series as Prometheus writes it: `name{label="value",…}`, labels in the order sent (sorted
/// by name, as senders must).
fn series_key(name: &str, labels: &[(&str, &str)]) -> String {
    let mut key = name.to_string();
    key.push('{');
    for (i, (label, value)) in labels.iter().enumerate() {
        if i > 0 {
            key.push(',');
        }
        key.push_str(label);
        key.push_str("=\"");
        key.push_str(&value.replace('\\', "\\\\").replace('"', "\\\""));
        key.push('"');
    }
    key.push('}');
    key
}

/// The JSON value of a sample record.
#[derive(Serialize)]
struct SampleRecord<'a> {
    name: &'a str,
    labels: Labels<'a>,
    value: Number,
    timestamp: i64,
}

struct Labels<'a>(&'a [(&'a str, &'a str)]);

impl Serialize for Labels<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// A sample value: a JSON number, or `NaN`, `+Inf`, `-Inf` as strings (JSON has none of them).
pub(super) struct Number(pub(super) f64);

impl Serialize for Number {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            v if v.is_finite() => s.serialize_f64(v),
            v if v.is_nan() => s.serialize_str("NaN"),
            v if v > 0.0 => s.serialize_str("+Inf"),
            _ => s.serialize_str("-Inf"),
        }
    }
}

// The messages of remote write 1.0 (`prometheus.WriteRequest`); fields this node does not
// keep (metadata, exemplars, native histograms) are skipped by the decoder.

#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The same in both versions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    /// Milliseconds since the epoch.
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

// The messages of remote write 2.0 (`io.prometheus.write.v2.Request`): labels are pairs of
// indexes into a table of strings.

#[derive(Clone, PartialEq, prost::Message)]
struct RequestV2 {
    #[prost(string, repeated, tag = "4")]
    symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    timeseries: Vec<TimeSeriesV2>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TimeSeriesV2 {
    #[prost(uint32, repeated, tag = "1")]
    labels_refs: Vec<u32>,
    #[prost(message, repeated, tag = "2")]
    samples: Vec<Sample>,
}

// What each message decodes into, for weighing a body before decoding it.

static WRITE_REQUEST: Shape = Shape {
    messages: &[(1, &TIME_SERIES)],
    ..Shape::leaf::<WriteRequest>()
};
static TIME_SERIES: Shape = Shape {
    messages: &[(1, &LABEL), (2, &SAMPLE)],
    ..Shape::leaf::<TimeSeries>()
};
static LABEL: Shape = Shape::leaf::<Label>();
static SAMPLE: Shape = Shape::leaf::<Sample>();
static REQUEST_V2: Shape = Shape {
    messages: &[(5, &TIME_SERIES_V2)],
    strings: &[4],
    ..Shape::leaf::<RequestV2>()
};
static TIME_SERIES_V2: Shape = Shape {
    messages: &[(2, &SAMPLE)],
    numbers: &[1],
    ..Shape::leaf::<TimeSeriesV2>()
};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn value_of(p: &Produced) -> serde_json::Value {
        serde_json::from_slice(p.record.value.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn a_v1_request_is_one_record_a_sample_keyed_by_its_series() {
        let label = |name: &str, value: &str| Label {
            name: name.into(),
            value: value.into(),
        };
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![
                    label(NAME_LABEL, "up"),
                    label("instance", "a:9100"),
                    label("job", "node \"x\""),
                ],
                samples: vec![
                    Sample {
                        value: 1.0,
                        timestamp: 1_000,
                    },
                    Sample {
                        value: f64::NAN,
                        timestamp: 2_000,
                    },
                ],
            }],
        };
        let records = samples(Version::V1, &request.encode_to_vec())
            .unwrap()
            .produced;
        assert_eq!(records.len(), 2);
        assert_eq!(
            records[0].record.key.as_deref().unwrap(),
            br#"up{instance="a:9100",job="node \"x\""}"#
        );
        assert_eq!(records[1].record.key, records[0].record.key);
        assert_eq!(
            value_of(&records[0]),
            serde_json::json!({"name": "up", "labels": {"instance": "a:9100", "job": "node \"x\""},
                "value": 1.0, "timestamp": 1000})
        );
        assert_eq!(value_of(&records[1])["value"], "NaN");
        assert_eq!(records[1].record.timestamp, 2_000);
    }

    #[test]
    fn a_v2_request_reads_its_labels_from_the_symbols() {
        let request = RequestV2 {
            symbols: ["", NAME_LABEL, "http_requests_total", "code", "500"]
                .map(String::from)
                .to_vec(),
            timeseries: vec![TimeSeriesV2 {
                labels_refs: vec![1, 2, 3, 4],
                samples: vec![Sample {
                    value: 7.0,
                    timestamp: 5,
                }],
            }],
        };
        let records = samples(Version::V2, &request.encode_to_vec())
            .unwrap()
            .produced;
        assert_eq!(
            value_of(&records[0]),
            serde_json::json!({"name": "http_requests_total", "labels": {"code": "500"},
                "value": 7.0, "timestamp": 5})
        );
        let broken = RequestV2 {
            timeseries: vec![TimeSeriesV2 {
                labels_refs: vec![1, 9],
                samples: Vec::new(),
            }],
            ..request
        };
        let error = samples(Version::V2, &broken.encode_to_vec()).err().unwrap();
        assert!(
            error.message.contains("series 0: labels_refs"),
            "{}",
            error.message
        );
    }

    #[test]
    fn samples_that_copy_their_labels_past_the_bound_are_refused() {
        let request = WriteRequest {
            timeseries: vec![TimeSeries {
                labels: vec![Label {
                    name: "big".into(),
                    value: "v".repeat(1 << 20),
                }],
                samples: vec![Sample::default(); 100],
            }],
        };
        let body = request.encode_to_vec();
        let weight = weigh::protobuf(&body, &WRITE_REQUEST).unwrap();
        assert!(weight < 2 << 20, "the body itself decodes small: {weight}");
        let error = samples(Version::V1, &body).err().unwrap();
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            error.message.contains("max_samples_per_send"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_body_that_is_not_protobuf_is_refused_naming_the_problem() {
        let error = samples(Version::V1, b"\xff\xff\xff").err().unwrap();
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert!(
            error.message.starts_with("not a remote write request"),
            "{}",
            error.message
        );
    }
}
