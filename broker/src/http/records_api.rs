//! `GET /v1/topics/{name}/records`: a page of one partition's records as JSON, read by offset
//! forwards or backwards, optionally only those containing a text, never the whole topic. On a
//! cluster node the page reads the cluster's shared log.

use std::collections::VecDeque;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use base64::Engine as _;
use memchr::memmem::Finder;
use serde::Deserialize;
use weir_storage::{PartitionSource, Record};

use super::{ApiError, ApiResult, AppState, blocking, time_param};
use crate::acl::{Caller, Operation, ResourceType};

/// Most records one JSON consume returns.
pub const CONSUME_RECORDS_MAX: usize = 10_000;
/// Longest text a page may be asked to contain.
pub const CONTAINS_BYTES_MAX: usize = 1024;
/// Key and value bytes one page examines at most while looking for records that contain a
/// text; the page says how far it got, and the next page goes on from there. A backwards page
/// reads windows of at most the bytes left from the log file, so only compressed batches, which
/// decode to more, take it past the bound.
pub const SCAN_BYTES_MAX: u64 = 64 << 20;
/// Key and value bytes of the records one page answers at most (past it by one record at
/// most, so that a page always moves on).
pub const PAGE_BYTES_MAX: u64 = 8 << 20;
/// Bytes of the log one read takes.
const READ_BYTES: u64 = 1 << 20;

#[derive(Deserialize)]
pub(super) struct ConsumeQuery {
    #[serde(default)]
    partition: u32,
    offset: Option<u64>,
    /// Start at the first record at or after this time (epoch ms or RFC 3339) instead.
    timestamp: Option<String>,
    /// Page backwards instead: the records just before this offset.
    before: Option<u64>,
    limit: Option<usize>,
    /// Only records whose key, value or a header value holds these bytes (case-sensitive).
    contains: Option<String>,
}

pub(super) async fn consume(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Query(q): Query<ConsumeQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    caller.check(Operation::Read, ResourceType::Topic, &name)?;
    let limit = q.limit.unwrap_or(100).min(CONSUME_RECORDS_MAX);
    let time = q
        .timestamp
        .as_deref()
        .map(|text| time_param("timestamp", text))
        .transpose()?;
    let starts = [q.offset.is_some(), time.is_some(), q.before.is_some()];
    if starts.into_iter().filter(|&given| given).count() > 1 {
        return Err(ApiError::bad_request(
            "give one of offset, timestamp and before, not several",
        ));
    }
    let contains = q.contains.filter(|text| !text.is_empty());
    if let Some(text) = &contains
        && text.len() > CONTAINS_BYTES_MAX
    {
        return Err(ApiError::bad_request(format!(
            "contains is {} bytes; at most {CONTAINS_BYTES_MAX}",
            text.len()
        )));
    }
    let node = state.node.clone();
    blocking(move || {
        let log = node.topics.partition(&name, q.partition)?;
        let (log_start_offset, high_watermark) = log.offsets()?;
        let mut scan = Scan {
            log: log.as_ref(),
            finder: contains.as_deref().map(Finder::new),
            bytes: 0,
            records: 0,
        };
        let (page, from, next_offset) = match (q.offset, time, q.before) {
            (_, _, Some(before)) => {
                let stop = before.min(high_watermark);
                let (page, from) = scan.backwards(log_start_offset, stop, limit)?;
                (page, from, stop)
            }
            (offset, time, None) => {
                let from = match (offset, time) {
                    (Some(offset), _) => offset,
                    (_, Some(t)) => log
                        .offset_for_timestamp(t)?
                        .map_or(high_watermark, |(offset, _)| offset),
                    (None, None) => log_start_offset,
                };
                let mut page = Page::new(limit, PAGE_BYTES_MAX);
                let next = scan.forwards(from, high_watermark, &mut page, WhenFull::Stop)?;
                (page, from, next)
            }
        };
        let bytes_read = page.records.iter().map(|r| size(r.value.as_deref())).sum();
        node.metrics
            .consumed(&name, bytes_read, page.records.len() as u64);
        let records: Vec<_> = page
            .records
            .iter()
            .map(|r| record_json(q.partition, r))
            .collect();
        Ok(Json(serde_json::json!({
            "records": records,
            "next_offset": next_offset,
            "scanned_from": from,
            "records_scanned": scan.records,
            "high_watermark": high_watermark,
            "log_start_offset": log_start_offset,
        })))
    })
    .await
}

/// The records a page answers: at most `keep`, and no more key and value bytes than
/// `bytes_max` (past it by one record at most, so a page always moves on). They become JSON
/// only once the page is settled.
struct Page {
    records: VecDeque<Record>,
    bytes: u64,
    keep: usize,
    bytes_max: u64,
    /// Whether older matches were dropped to stay within the bounds.
    dropped: bool,
}

impl Page {
    fn new(keep: usize, bytes_max: u64) -> Page {
        Page {
            records: VecDeque::new(),
            bytes: 0,
            keep,
            bytes_max,
            dropped: false,
        }
    }

    fn full(&self) -> bool {
        self.records.len() >= self.keep || self.bytes >= self.bytes_max
    }

    fn push(&mut self, record: Record) {
        self.bytes += record_bytes(&record);
        self.records.push_back(record);
    }

    /// Drops the oldest records while the page is past its bounds.
    fn keep_newest(&mut self) {
        while self.records.len() > self.keep
            || (self.bytes > self.bytes_max && self.records.len() > 1)
        {
            if let Some(old) = self.records.pop_front() {
                self.bytes -= record_bytes(&old);
                self.dropped = true;
            }
        }
    }
}

/// One page's read of a partition: what it looks for and what it has examined so far.
struct Scan<'a> {
    log: &'a dyn PartitionSource,
    finder: Option<Finder<'a>>,
    bytes: u64,
    records: u64,
}

/// What a scan does with a page that is full.
#[derive(Clone, Copy, PartialEq)]
enum WhenFull {
    /// Stops: the page holds the first matches (paging forwards). Stops too once
    /// [`SCAN_BYTES_MAX`] bytes were examined.
    Stop,
    /// Goes on to the end, keeping the last matches (one window of a backwards page).
    KeepNewest,
}

impl Scan<'_> {
    /// Examines the records from `from` up to `to`, adding those that match to `page`; answers
    /// the offset after the last record examined.
    fn forwards(
        &mut self,
        from: u64,
        to: u64,
        page: &mut Page,
        when_full: WhenFull,
    ) -> weir_storage::Result<u64> {
        let stops = |scan: &Self, page: &Page| {
            when_full == WhenFull::Stop && (page.full() || scan.bytes >= SCAN_BYTES_MAX)
        };
        let mut offset = from;
        while offset < to && !stops(self, page) {
            let batch = self.log.read_records(offset, READ_BYTES)?;
            if batch.is_empty() {
                // A gap left by compaction.
                offset += 1;
                continue;
            }
            for r in batch {
                if r.offset as u64 >= to || stops(self, page) {
                    break;
                }
                offset = r.offset as u64 + 1;
                self.records += 1;
                self.bytes += record_bytes(&r);
                if self.matches(&r) {
                    page.push(r);
                    if when_full == WhenFull::KeepNewest {
                        page.keep_newest();
                    }
                }
            }
        }
        Ok(offset)
    }

    /// The last matching records before `stop`, read window by window backwards from it;
    /// answers them in offset order with the lowest offset examined, where an older page goes
    /// on from. Searching, a window takes at most the log bytes left of the examined bound;
    /// otherwise at most `keep` offsets and twice the bytes left of the page's own bound (the
    /// log holds more than keys and values). The first window takes at least one batch, so that
    /// a page always moves on.
    fn backwards(
        &mut self,
        start: u64,
        stop: u64,
        keep: usize,
    ) -> weir_storage::Result<(Page, u64)> {
        let mut page = Page::new(keep, PAGE_BYTES_MAX);
        let mut from = stop;
        while !page.full() && from > start && self.bytes < SCAN_BYTES_MAX {
            let (bytes_left, begin_min) = if self.finder.is_some() {
                (SCAN_BYTES_MAX - self.bytes, start)
            } else {
                (
                    2 * PAGE_BYTES_MAX.saturating_sub(page.bytes),
                    from.saturating_sub(keep as u64).max(start),
                )
            };
            let begin = self
                .log
                .offset_bytes_before(from, bytes_left, self.records == 0)?
                .max(begin_min);
            if begin >= from {
                break;
            }
            let mut window = Page::new(
                keep - page.records.len(),
                PAGE_BYTES_MAX.saturating_sub(page.bytes),
            );
            self.forwards(begin, from, &mut window, WhenFull::KeepNewest)?;
            from = begin;
            if window.dropped {
                // Older matches in this window, if any, are left for the next page.
                from = window.records.front().map_or(begin, |r| r.offset as u64);
            }
            page.bytes += window.bytes;
            for record in window.records.into_iter().rev() {
                page.records.push_front(record);
            }
        }
        Ok((page, from))
    }

    fn matches(&self, r: &Record) -> bool {
        let Some(finder) = &self.finder else {
            return true;
        };
        let holds = |bytes: Option<&[u8]>| bytes.is_some_and(|b| finder.find(b).is_some());
        holds(r.key.as_deref())
            || holds(r.value.as_deref())
            || r.headers.iter().any(|h| holds(h.value.as_deref()))
    }
}

fn size(bytes: Option<&[u8]>) -> u64 {
    bytes.map_or(0, |b| b.len() as u64)
}

/// The key and value bytes of a record, what the page and scan bounds count.
fn record_bytes(r: &Record) -> u64 {
    size(r.key.as_deref()) + size(r.value.as_deref())
}

fn record_json(partition: u32, r: &Record) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    out.insert("partition".into(), partition.into());
    out.insert("offset".into(), r.offset.into());
    out.insert("timestamp".into(), r.timestamp.into());
    put_bytes(&mut out, "key", r.key.as_deref());
    put_bytes(&mut out, "value", r.value.as_deref());
    let headers: Vec<serde_json::Value> = r
        .headers
        .iter()
        .map(|h| serde_json::json!([h.key, h.value.as_ref().map(|v| String::from_utf8_lossy(v))]))
        .collect();
    out.insert("headers".into(), headers.into());
    serde_json::Value::Object(out)
}

/// Bytes as text when they are UTF-8, else base64 under a `_base64` field.
fn put_bytes(
    out: &mut serde_json::Map<String, serde_json::Value>,
    field: &str,
    bytes: Option<&[u8]>,
) {
    let value = match bytes {
        None => serde_json::Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => serde_json::Value::String(s.to_string()),
            Err(_) => {
                let encoded = base64::engine::general_purpose::STANDARD.encode(b);
                out.insert(
                    format!("{field}_base64"),
                    serde_json::Value::String(encoded),
                );
                return;
            }
        },
    };
    out.insert(field.to_string(), value);
}
