//! `nginx-to-json`: parses nginx (and Apache) access-log lines, in the `combined` or `common`
//! format, into JSON records. The record's timestamp becomes the request time, so windows over
//! the output use event time; the key is kept. A line that does not parse is an error and goes
//! to the pipeline's dead-letter topic.
//!
//! `10.0.0.1 - bob [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "-" "curl/8"`
//! becomes `{"remote_addr":"10.0.0.1","remote_user":"bob","time":"10/Oct/2000:13:55:36 -0700",
//! "method":"GET","path":"/a.gif","protocol":"HTTP/1.0","status":200,"bytes":2326,
//! "referer":null,"user_agent":"curl/8"}`.

use serde::Serialize;
use weir::time::{CivilTime, month_number, parse_utc_offset};
use weir::{Error, Record, Result};

#[weir::map]
pub fn nginx_to_json(r: Record) -> Result<Record> {
    let line = r.value_str()?.trim_end();
    let (mut fields, timestamp_ms) = parse(line)
        .ok_or_else(|| Error::msg(format!("not an access-log line: {:?}", truncate(line))))?;
    fields.host = r.key_str();
    let out = Record::json(&fields)?.with_timestamp(timestamp_ms);
    Ok(Record {
        key: r.key,
        headers: r.headers,
        ..out
    })
}

/// One line's fields, borrowed from the line and written out as JSON in this order: no value
/// is copied or built on the way.
#[derive(Serialize)]
struct AccessLine<'a> {
    remote_addr: &'a str,
    remote_user: Option<&'a str>,
    time: &'a str,
    method: Option<&'a str>,
    path: Option<&'a str>,
    protocol: Option<&'a str>,
    status: u16,
    bytes: u64,
    referer: Option<&'a str>,
    user_agent: Option<&'a str>,
    /// The record's key, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
}

fn truncate(line: &str) -> &str {
    let end = (0..=line.len().min(80))
        .rev()
        .find(|i| line.is_char_boundary(*i))
        .unwrap_or(0);
    &line[..end]
}

/// A cursor over one line.
struct Line<'a> {
    rest: &'a str,
}

impl<'a> Line<'a> {
    fn token(&mut self) -> Option<&'a str> {
        let rest = self.rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        let (token, rest) = rest.split_at(end);
        self.rest = rest;
        (!token.is_empty()).then_some(token)
    }

    /// `open … close`, not unescaping (nginx escapes `"` as `\x22`).
    fn delimited(&mut self, open: char, close: char) -> Option<&'a str> {
        let rest = self.rest.trim_start_matches(' ').strip_prefix(open)?;
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                c if c == close && !escaped => {
                    self.rest = &rest[i + c.len_utf8()..];
                    return Some(&rest[..i]);
                }
                _ => escaped = false,
            }
        }
        None
    }
}

/// nginx writes `-` for a field it has no value for.
fn dash_is_null(text: &str) -> Option<&str> {
    (text != "-").then_some(text)
}

/// The fields of a line and its time in Unix milliseconds.
fn parse(line: &str) -> Option<(AccessLine<'_>, i64)> {
    let mut cursor = Line { rest: line };
    let remote_addr = cursor.token()?;
    let _ident = cursor.token()?;
    let remote_user = cursor.token()?;
    let time = cursor.delimited('[', ']')?;
    let request = cursor.delimited('"', '"')?;
    let status: u16 = cursor.token()?.parse().ok()?;
    let bytes = match cursor.token()? {
        "-" => 0,
        n => n.parse::<u64>().ok()?,
    };
    let referer = cursor.delimited('"', '"');
    let user_agent = cursor.delimited('"', '"');
    let mut parts = request.splitn(3, ' ');
    let (method, path, protocol) = (parts.next(), parts.next(), parts.next());
    let fields = AccessLine {
        remote_addr,
        remote_user: dash_is_null(remote_user),
        time,
        method: method.filter(|m| *m != "-"),
        path,
        protocol,
        status,
        bytes,
        referer: referer.and_then(dash_is_null),
        user_agent: user_agent.and_then(dash_is_null),
        host: None,
    };
    Some((fields, parse_time(time)?))
}

/// `10/Oct/2000:13:55:36 -0700`
fn parse_time(text: &str) -> Option<i64> {
    let (date_time, zone) = text.split_once(' ')?;
    let mut parts = date_time.split([':', '/']);
    let mut next = || parts.next();
    let day = next()?.parse().ok()?;
    let month = month_number(next()?)?;
    let year = next()?.parse().ok()?;
    let (hour, minute, second) = (
        next()?.parse().ok()?,
        next()?.parse().ok()?,
        next()?.parse().ok()?,
    );
    let time = CivilTime {
        year,
        month,
        day,
        hour,
        minute,
        second,
        millisecond: 0,
        offset_minutes: parse_utc_offset(zone)?,
    };
    time.unix_ms()
}

#[cfg(test)]
mod tests {
    use weir::serde_json::Value;

    use super::*;

    const COMBINED: &str = r#"10.0.0.1 - bob [10/Oct/2000:13:55:36 -0700] "GET /a.gif?x=1 HTTP/1.0" 503 2326 "http://e.com/" "Mozilla/5.0 (X11; \"q\")""#;

    #[test]
    fn parses_a_combined_line() {
        let out = nginx_to_json(Record::new(COMBINED).with_key("web-1")).unwrap();
        let v: Value = out.value_json().unwrap();
        assert_eq!(v["remote_addr"], "10.0.0.1");
        assert_eq!(v["remote_user"], "bob");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a.gif?x=1");
        assert_eq!(v["protocol"], "HTTP/1.0");
        assert_eq!(v["status"], 503);
        assert_eq!(v["bytes"], 2326);
        assert_eq!(v["referer"], "http://e.com/");
        assert_eq!(v["user_agent"], r#"Mozilla/5.0 (X11; \"q\")"#);
        assert_eq!(v["host"], "web-1");
        assert_eq!(out.timestamp, 971_211_336_000);
        assert_eq!(out.key_str(), Some("web-1"));
    }

    #[test]
    fn writes_the_fields_in_the_documented_order() {
        let line = r#"10.0.0.1 - bob [10/Oct/2000:13:55:36 -0700] "GET /a.gif HTTP/1.0" 200 2326 "-" "curl/8""#;
        let out = nginx_to_json(Record::new(line)).unwrap();
        assert_eq!(
            out.value_str().unwrap(),
            r#"{"remote_addr":"10.0.0.1","remote_user":"bob","time":"10/Oct/2000:13:55:36 -0700","method":"GET","path":"/a.gif","protocol":"HTTP/1.0","status":200,"bytes":2326,"referer":null,"user_agent":"curl/8"}"#
        );
    }

    #[test]
    fn parses_a_common_line_with_dashes() {
        let out = nginx_to_json(Record::new(
            r#"::1 - - [01/Jan/2024:00:00:00 +0000] "-" 400 - "#,
        ))
        .unwrap();
        let v: Value = out.value_json().unwrap();
        assert_eq!(v["remote_user"], Value::Null);
        assert_eq!(v["method"], Value::Null);
        assert_eq!(v["bytes"], 0);
        assert_eq!(v["user_agent"], Value::Null);
        assert_eq!(out.timestamp, 1_704_067_200_000);
    }

    #[test]
    fn other_lines_are_errors() {
        for line in [
            "",
            "hello world",
            r#"1.2.3.4 - - [bad time] "GET / HTTP/1.1" 200 1"#,
            r#"1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET /" abc 1"#,
        ] {
            let error = nginx_to_json(Record::new(line)).unwrap_err();
            assert!(
                error.message().starts_with("not an access-log line"),
                "{line}: {error}"
            );
        }
    }
}
