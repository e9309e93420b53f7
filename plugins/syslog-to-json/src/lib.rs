//! `syslog-to-json`: parses syslog lines — RFC 5424 and the older BSD format of RFC 3164 — into
//! JSON records with `facility`, `severity`, `timestamp`, `hostname`, `app`, `procid`, `msgid`,
//! `structured_data` and `message`. An RFC 5424 timestamp becomes the record's timestamp (RFC
//! 3164 ones carry no year and are kept as text). A line that does not parse is an error and
//! goes to the dead-letter topic.

use std::collections::BTreeMap;

use weir::serde_json::{Map, Value, json};
use weir::time::parse_rfc3339;
use weir::{Error, Record, Result};

const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

#[weir::map]
pub fn syslog_to_json(r: Record) -> Result<Record> {
    let line = r.value_str()?.trim_end_matches(['\r', '\n']);
    let (fields, timestamp_ms) = parse(line).ok_or_else(|| {
        Error::msg(format!(
            "not a syslog line: {:?}",
            line.chars().take(80).collect::<String>()
        ))
    })?;
    let mut out = Record::json(&fields)?;
    if let Some(ms) = timestamp_ms {
        out = out.with_timestamp(ms);
    }
    Ok(Record {
        key: r.key,
        headers: r.headers,
        timestamp: if timestamp_ms.is_some() {
            out.timestamp
        } else {
            r.timestamp
        },
        ..out
    })
}

fn nil(text: &str) -> Value {
    if text == "-" {
        Value::Null
    } else {
        Value::String(text.to_owned())
    }
}

fn parse(line: &str) -> Option<(Value, Option<i64>)> {
    let rest = line.strip_prefix('<')?;
    let close = rest.find('>')?;
    let pri: u8 = rest[..close].parse().ok().filter(|p| *p <= 191)?;
    let rest = &rest[close + 1..];
    let mut fields = Map::new();
    fields.insert("facility".into(), json!(pri / 8));
    fields.insert("severity".into(), json!(SEVERITIES[usize::from(pri % 8)]));
    let timestamp_ms = match rest.strip_prefix("1 ") {
        Some(rest) => parse_5424(rest, &mut fields)?,
        None => {
            parse_3164(rest, &mut fields)?;
            None
        }
    };
    Some((Value::Object(fields), timestamp_ms))
}

/// `TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA [MSG]`
fn parse_5424(rest: &str, fields: &mut Map<String, Value>) -> Option<Option<i64>> {
    let mut parts = rest.splitn(6, ' ');
    let timestamp = parts.next()?;
    for name in ["hostname", "app", "procid", "msgid"] {
        fields.insert(name.into(), nil(parts.next()?));
    }
    let tail = parts.next().unwrap_or("-");
    let (structured, message) = structured_data(tail)?;
    fields.insert("timestamp".into(), nil(timestamp));
    fields.insert("structured_data".into(), structured);
    fields.insert(
        "message".into(),
        Value::String(message.trim_start_matches('\u{feff}').to_owned()),
    );
    match timestamp {
        "-" => Some(None),
        t => parse_rfc3339(t).map(Some),
    }
}

/// `-` or `[id k="v" …][…]`, then the message.
fn structured_data(text: &str) -> Option<(Value, &str)> {
    if let Some(message) = text.strip_prefix('-') {
        return Some((Value::Null, message.strip_prefix(' ').unwrap_or(message)));
    }
    let mut elements: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut rest = text;
    while let Some(element) = rest.strip_prefix('[') {
        let (id, mut body) = element.split_at(element.find([' ', ']'])?);
        let params = elements.entry(id.to_owned()).or_default();
        loop {
            body = body.trim_start_matches(' ');
            if let Some(after) = body.strip_prefix(']') {
                rest = after;
                break;
            }
            let (name, value) = body.split_once("=\"")?;
            let mut escaped = false;
            let end = value.char_indices().find(|(_, c)| {
                let end = *c == '"' && !escaped;
                escaped = *c == '\\' && !escaped;
                end
            })?;
            params.insert(
                name.to_owned(),
                Value::String(
                    value[..end.0]
                        .replace("\\\"", "\"")
                        .replace("\\]", "]")
                        .replace("\\\\", "\\"),
                ),
            );
            body = &value[end.0 + 1..];
        }
    }
    let structured = elements
        .into_iter()
        .map(|(id, params)| (id, Value::Object(params)))
        .collect();
    Some((
        Value::Object(structured),
        rest.strip_prefix(' ').unwrap_or(rest),
    ))
}

/// `Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`
fn parse_3164(rest: &str, fields: &mut Map<String, Value>) -> Option<()> {
    let timestamp = rest.get(..15)?;
    let valid_time = weir::time::month_number(&timestamp[..3]).is_some()
        && timestamp.as_bytes()[9] == b':'
        && timestamp.as_bytes()[12] == b':';
    if !valid_time {
        return None;
    }
    let rest = rest[15..].strip_prefix(' ')?;
    let (hostname, rest) = rest.split_once(' ')?;
    let (tag, message) = match rest.split_once(": ") {
        Some((tag, message)) if !tag.contains(' ') => (tag, message),
        _ => ("", rest),
    };
    let (app, procid) = match tag.split_once('[') {
        Some((app, pid)) => (app, pid.strip_suffix(']')),
        None => (tag, None),
    };
    fields.insert("timestamp".into(), Value::String(timestamp.to_owned()));
    fields.insert("hostname".into(), Value::String(hostname.to_owned()));
    fields.insert(
        "app".into(),
        if app.is_empty() {
            Value::Null
        } else {
            Value::String(app.to_owned())
        },
    );
    fields.insert(
        "procid".into(),
        procid.map_or(Value::Null, |p| Value::String(p.to_owned())),
    );
    fields.insert("msgid".into(), Value::Null);
    fields.insert("structured_data".into(), Value::Null);
    fields.insert("message".into(), Value::String(message.to_owned()));
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_line(line: &str) -> (Value, i64) {
        let out = syslog_to_json(Record::new(line)).unwrap();
        (out.value_json().unwrap(), out.timestamp)
    }

    #[test]
    fn parses_rfc5424() {
        let (v, ts) = parse_line(
            "<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed for lonvick on /dev/pts/8",
        );
        assert_eq!(v["facility"], 4);
        assert_eq!(v["severity"], "crit");
        assert_eq!(v["hostname"], "mymachine.example.com");
        assert_eq!(v["app"], "su");
        assert_eq!(v["procid"], Value::Null);
        assert_eq!(v["msgid"], "ID47");
        assert_eq!(v["message"], "'su root' failed for lonvick on /dev/pts/8");
        assert_eq!(ts, 1_065_910_455_003);
    }

    #[test]
    fn parses_rfc5424_structured_data() {
        let (v, _) = parse_line(
            r#"<165>1 2003-10-11T22:14:15.003-07:00 host evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="App\"x\""][examplePriority@32473 class="high"] An application event"#,
        );
        assert_eq!(v["structured_data"]["exampleSDID@32473"]["iut"], "3");
        assert_eq!(
            v["structured_data"]["exampleSDID@32473"]["eventSource"],
            "App\"x\""
        );
        assert_eq!(
            v["structured_data"]["examplePriority@32473"]["class"],
            "high"
        );
        assert_eq!(v["message"], "An application event");
        assert_eq!(v["severity"], "notice");
    }

    #[test]
    fn parses_rfc3164() {
        let (v, ts) =
            parse_line("<13>Feb  5 17:32:18 10.0.0.99 sshd[4123]: Accepted publickey for root");
        assert_eq!(v["facility"], 1);
        assert_eq!(v["severity"], "notice");
        assert_eq!(v["timestamp"], "Feb  5 17:32:18");
        assert_eq!(v["hostname"], "10.0.0.99");
        assert_eq!(v["app"], "sshd");
        assert_eq!(v["procid"], "4123");
        assert_eq!(v["message"], "Accepted publickey for root");
        assert_eq!(
            ts, -1,
            "no year in RFC 3164: the record keeps its own timestamp"
        );
    }

    #[test]
    fn other_lines_are_errors() {
        for line in [
            "",
            "hello",
            "<999>1 - - - - - -",
            "<13>Xyz  5 17:32:18 h m",
            "<34>1 yesterday h a p m - x",
        ] {
            assert!(syslog_to_json(Record::new(line)).is_err(), "{line}");
        }
    }
}
