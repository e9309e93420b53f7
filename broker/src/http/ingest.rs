//! Records sent by shippers and scripts over HTTP. `POST /v1/topics/{name}/records` takes, besides
//! its JSON body, newline-delimited bodies — `application/x-ndjson` (each line a JSON value) or
//! `text/plain` (each line as it is) — so `curl --data-binary @app.log` and webhooks work; the
//! Prometheus remote write and OTLP endpoints decode their bodies into records too.
//!
//! Every ingestion request goes the same way: its body is read within a bound (413 past it),
//! decoded whole — a malformed body is refused with a 400 naming the problem and nothing of it
//! is written — then appended; a topic that cannot take writes answers 503 with `Retry-After`.
//! Each source counts its records and requests, accepted and refused, at `/metrics`.

use std::collections::BTreeMap;
use std::io::Read as _;

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use weir_storage::NewRecord;

use super::{
    ApiError, ApiResult, AppState, PRODUCE_BODY_BYTES_MAX, PRODUCE_RECORDS_MAX, Placed, Produced,
};
use crate::acl::{Caller, Operation, ResourceType};
use crate::limits::{Limits, RequestMemory};
use crate::metrics::IngestSource;

/// Largest body an ingestion request may have once decompressed (`Content-Encoding: snappy`
/// or `gzip`); the compressed body is bounded by [`PRODUCE_BODY_BYTES_MAX`].
pub const DECODED_BODY_BYTES_MAX: usize = 64 << 20;

/// What a produce body is, by its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyKind {
    /// `{"records": [...]}` (`application/json`, or no type).
    Json,
    /// One record a line; `json` when each line must be a JSON value.
    Lines { json: bool },
}

impl BodyKind {
    pub(super) fn of(headers: &HeaderMap) -> Result<BodyKind, ApiError> {
        match content_type(headers).as_str() {
            "application/json" | "" => Ok(BodyKind::Json),
            "application/x-ndjson" | "application/jsonl" => Ok(BodyKind::Lines { json: true }),
            "text/plain" => Ok(BodyKind::Lines { json: false }),
            other => Err(ApiError::unsupported(format!(
                "content type {other} is not one records are sent in: application/json \
                 ({{\"records\": [...]}}), application/x-ndjson or text/plain (one record a line)"
            ))),
        }
    }
}

/// The media type of a request's `Content-Type`, lower case and without parameters; empty
/// when it has none.
pub(super) fn content_type(headers: &HeaderMap) -> String {
    let text = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = text.split(';').next().unwrap_or_default().trim();
    essence.to_ascii_lowercase()
}

/// The body of an ingestion request, or 413 when it is larger than the endpoint takes.
fn whole_body(body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(PRODUCE_BODY_BYTES_MAX),
        status => ApiError {
            status,
            message: rejection.body_text(),
        },
    })
}

fn too_large(bound: usize) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!(
            "the body is over {} MiB, the most one request takes; send it in parts",
            bound >> 20
        ),
    }
}

/// The body as sent before its `Content-Encoding` (`snappy` block format, `gzip`, or none),
/// within [`DECODED_BODY_BYTES_MAX`].
fn decompressed(headers: &HeaderMap, body: Bytes) -> ApiResult<Bytes> {
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "identity" | "" => Ok(body),
        "snappy" => {
            let len = snap::raw::decompress_len(&body)
                .map_err(|e| ApiError::bad_request(format!("not a snappy body: {e}")))?;
            if len > DECODED_BODY_BYTES_MAX {
                return Err(too_large(DECODED_BODY_BYTES_MAX));
            }
            snap::raw::Decoder::new()
                .decompress_vec(&body)
                .map(Bytes::from)
                .map_err(|e| ApiError::bad_request(format!("not a snappy body: {e}")))
        }
        "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .take(DECODED_BODY_BYTES_MAX as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::bad_request(format!("not a gzip body: {e}")))?;
            if out.len() > DECODED_BODY_BYTES_MAX {
                return Err(too_large(DECODED_BODY_BYTES_MAX));
            }
            Ok(Bytes::from(out))
        }
        other => Err(ApiError::unsupported(format!(
            "Content-Encoding {other} is not one this endpoint reads: snappy, gzip or none"
        ))),
    }
}

/// Where an ingestion request's records go: `?topic=NAME`, else the endpoint's topic.
#[derive(serde::Deserialize)]
pub(super) struct TopicParam {
    topic: Option<String>,
}

impl TopicParam {
    pub(super) fn or(self, default: &str) -> String {
        self.topic.unwrap_or_else(|| default.to_string())
    }
}

/// How an ingestion endpoint's topic is made when it does not exist yet: with JSON values of
/// this schema (`value.schema`), so SQL reads them as typed columns.
pub(super) type MadeWith = Option<&'static str>;

/// The body of an ingestion request as sent, before its `Content-Encoding`: 413 past
/// [`PRODUCE_BODY_BYTES_MAX`] as received or [`DECODED_BODY_BYTES_MAX`] decompressed.
pub(super) fn body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    decompressed(headers, whole_body(body)?)
}

/// Most bytes the records of one ingestion request take. Records may copy what they share (a
/// series' labels into each of its samples, a resource's attributes into each of its log
/// records), so they can be far larger than the body they came from.
pub const RECORDS_BYTES_MAX: usize = 64 << 20;

/// The records an ingestion request decodes into: at most [`PRODUCE_RECORDS_MAX`] of them
/// (400 past it) taking at most [`RECORDS_BYTES_MAX`] (413 past it).
pub(super) struct Records {
    pub(super) produced: Vec<Produced>,
    bytes: usize,
    /// How a sender sends fewer records a request, said when there are too many.
    fewer: &'static str,
}

impl Records {
    pub(super) fn new(fewer: &'static str) -> Records {
        Records {
            produced: Vec::new(),
            bytes: 0,
            fewer,
        }
    }

    pub(super) fn push(&mut self, produced: Produced) -> ApiResult<()> {
        let fewer = self.fewer;
        if self.produced.len() == PRODUCE_RECORDS_MAX {
            return Err(ApiError::bad_request(format!(
                "more than {PRODUCE_RECORDS_MAX} records in one request; {fewer}"
            )));
        }
        self.bytes += produced.record.bytes_in_batch();
        if self.bytes > RECORDS_BYTES_MAX {
            return Err(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "the records of this request take more than {} MiB; {fewer}",
                    RECORDS_BYTES_MAX >> 20
                ),
            });
        }
        self.produced.push(produced);
        Ok(())
    }
}

/// The body of an ingestion request, received and not decoded yet.
pub(super) trait Decode: Send + 'static {
    /// An upper bound of the bytes decoding it allocates (see [`weigh`](super::weigh)); refuses
    /// a body that cannot be decoded.
    fn weight(&self) -> ApiResult<usize>;

    /// Its records.
    fn records(self) -> ApiResult<Records>;
}

/// Decodes an ingestion request's records from what was `received` (its body and what its
/// headers said, or why they were refused) and appends them to `topic`, counting the request
/// and its records under `source`: all are written or none. The body is weighed first, and
/// what decoding it takes is held from the node's request memory while it is decoded. With
/// `made_with`, a missing topic is made first (with the node's default partitions) when the
/// node makes topics on first use and the caller may create it.
pub(super) async fn ingest<B: Decode>(
    state: &AppState,
    caller: Caller,
    source: IngestSource,
    topic: String,
    made_with: MadeWith,
    received: ApiResult<B>,
) -> ApiResult<Vec<Placed>> {
    let node = state.node.clone();
    let partitions = state.ingest.partitions;
    let made_with = made_with.filter(|_| state.ingest.create);
    let mut records = 0;
    let written = async {
        caller.check(Operation::Write, ResourceType::Topic, &topic)?;
        let body = received?;
        let (body, weight) = super::blocking(move || {
            let weight = body.weight()?;
            Ok((body, weight))
        })
        .await?;
        let _held = hold_decode_memory(&node.limits, weight).await?;
        let logs = node.logs.clone();
        // A body refused while decoding counts no records; one refused while appending, all.
        let (count, written) = super::blocking(move || {
            let produced = body.records()?.produced;
            let count = produced.len() as u64;
            let made = match made_with.filter(|_| caller.check_create_topic(&topic).is_ok()) {
                Some(schema) => {
                    let configs = BTreeMap::from([
                        ("value.format".to_string(), "json".to_string()),
                        ("value.schema".to_string(), schema.to_string()),
                    ]);
                    logs.topic_or_create(&topic, partitions, configs).map(drop)
                }
                None => Ok(()),
            };
            let written = made
                .map_err(ApiError::from)
                .and_then(|()| super::append_produced(logs.as_ref(), &topic, produced));
            Ok((count, written))
        })
        .await?;
        records = count;
        written
    }
    .await;
    node.metrics.ingested(source, records, written.is_ok());
    written
}

/// Holds `weight` bytes of the node's request memory, waiting while other requests hold it;
/// 413 when it is more than all of it.
async fn hold_decode_memory(limits: &Limits, weight: usize) -> ApiResult<RequestMemory> {
    let all = limits.request_memory_bytes_max();
    let bytes = u32::try_from(weight)
        .ok()
        .filter(|bytes| u64::from(*bytes) <= all)
        .ok_or_else(|| ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            message: format!(
                "decoding this body may take {} MiB, more than the {} MiB of request memory \
                 this node has (--request-memory-mib); send it in parts",
                weight.div_ceil(1 << 20),
                all >> 20
            ),
        })?;
    let mut held = RequestMemory::none();
    limits.hold_request_memory(&mut held, bytes).await;
    Ok(held)
}

/// The records of a newline-delimited body, stamped `now`: one a line, without its line break
/// (`\n` or `\r\n`); empty lines are skipped. With `json`, a line that is not JSON refuses the
/// body.
pub(super) fn lines(body: &Bytes, json: bool, now: i64) -> ApiResult<Records> {
    let mut records = Records::new("send the rest in another");
    let mut start = 0;
    for (number, line) in body.split(|b| *b == b'\n').enumerate() {
        let end = start + line.len();
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        let value = body.slice(start..start + text.len());
        start = end + 1;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if json && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            return Err(ApiError::bad_request(format!(
                "line {}: not JSON ({e}); nothing was written",
                number + 1
            )));
        }
        records.push(Produced {
            partition: None,
            record: NewRecord {
                timestamp: now,
                key: None,
                value: Some(value),
                headers: Vec::new(),
            },
        })?;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use axum::http::HeaderValue;

    use super::*;

    fn lines(body: &Bytes, json: bool) -> ApiResult<Vec<Bytes>> {
        let records = super::lines(body, json, 0)?;
        Ok(records
            .produced
            .into_iter()
            .filter_map(|p| p.record.value)
            .collect())
    }

    #[test]
    fn lines_are_records_without_their_breaks_and_blank_lines_are_skipped() {
        let body = Bytes::from_static(b"first\r\n\nsecond\n  \nthird");
        let records = lines(&body, false).unwrap();
        assert_eq!(records, ["first", "second", "third"].map(Bytes::from));
    }

    #[test]
    fn a_body_of_more_lines_than_the_bound_is_refused() {
        let body = Bytes::from("x\n".repeat(PRODUCE_RECORDS_MAX + 1));
        let error = lines(&body, false).err().unwrap();
        assert!(
            error.message.contains("more than 100000 records"),
            "{}",
            error.message
        );
        let body = Bytes::from("x\n".repeat(PRODUCE_RECORDS_MAX));
        assert_eq!(lines(&body, false).unwrap().len(), PRODUCE_RECORDS_MAX);
    }

    #[test]
    fn records_past_their_bytes_are_refused_with_413() {
        let line = "y".repeat(1 << 10);
        let body = Bytes::from(format!("{line}\n").repeat((RECORDS_BYTES_MAX >> 10) + 1));
        let error = lines(&body, false).err().unwrap();
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            error.message.contains("more than 64 MiB"),
            "{}",
            error.message
        );
    }

    #[test]
    fn a_line_that_is_not_json_refuses_the_body_with_its_number() {
        let body = Bytes::from_static(b"{\"a\":1}\n\n{\"a\":\n");
        let error = lines(&body, true).err().unwrap();
        assert!(
            error.message.starts_with("line 3: not JSON"),
            "{}",
            error.message
        );
        assert_eq!(lines(&body, false).unwrap().len(), 2);
    }

    #[test]
    fn the_content_type_says_how_records_are_sent() {
        let kind = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            BodyKind::of(&headers)
        };
        assert_eq!(BodyKind::of(&HeaderMap::new()).unwrap(), BodyKind::Json);
        assert_eq!(
            kind("application/json; charset=utf-8").unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            kind("application/x-ndjson").unwrap(),
            BodyKind::Lines { json: true }
        );
        assert_eq!(
            kind("text/plain; charset=utf-8").unwrap(),
            BodyKind::Lines { json: false }
        );
        let refused = kind("application/xml").err().unwrap();
        assert_eq!(
            refused.status,
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }
}
