//! Records sent by shippers and scripts over HTTP: `POST /v1/topics/{name}/records` takes, besides
//! its JSON body, newline-delimited bodies — `application/x-ndjson` (each line a JSON value) or
//! `text/plain` (each line as it is) — so `curl --data-binary @app.log` and webhooks work.
//!
//! A body is checked whole before anything is written: a bad line refuses the request with its
//! line number, and nothing of it is appended.

use axum::http::{HeaderMap, header};
use bytes::Bytes;

use super::{ApiError, PRODUCE_RECORDS_MAX};

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
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Ok(BodyKind::Json);
        };
        let text = value.to_str().unwrap_or_default();
        let essence = text.split(';').next().unwrap_or_default().trim();
        match essence.to_ascii_lowercase().as_str() {
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

/// The records of a newline-delimited body: one a line, without its line break (`\n` or
/// `\r\n`); empty lines are skipped. With `json`, a line that is not JSON refuses the body.
pub(super) fn lines(body: &Bytes, json: bool) -> Result<Vec<Bytes>, ApiError> {
    let mut records = Vec::new();
    let mut start = 0;
    for (number, line) in body.split(|b| *b == b'\n').enumerate() {
        let end = start + line.len();
        let text = line.strip_suffix(b"\r").unwrap_or(line);
        let record = body.slice(start..start + text.len());
        start = end + 1;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if records.len() == PRODUCE_RECORDS_MAX {
            return Err(ApiError::bad_request(format!(
                "more than {PRODUCE_RECORDS_MAX} records in one request; send the rest in another"
            )));
        }
        if json && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(text) {
            return Err(ApiError::bad_request(format!(
                "line {}: not JSON ({e}); nothing was written",
                number + 1
            )));
        }
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use axum::http::HeaderValue;

    use super::*;

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
