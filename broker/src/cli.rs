//! The `weir` commands that talk to a running node over its HTTP API: topics, produce,
//! consume and groups.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::error::{Error, Result, io};

/// The items of a PEM file that `pick` keeps; none is an error naming the file.
fn pem_items<T>(
    path: &std::path::Path,
    pick: impl Fn(ureq::tls::PemItem<'static>) -> Option<T>,
) -> Result<Vec<T>> {
    let file_error = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| file_error(e.to_string()))?;
    let mut items = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        let item = item.map_err(|e| file_error(format!("reading PEM: {e}")))?;
        items.extend(pick(item));
    }
    if items.is_empty() {
        return Err(file_error(
            "holds no PEM block of the kind needed here".into(),
        ));
    }
    Ok(items)
}

/// TLS trusting the CAs in the PEM file `ca` (the platform's when `None`), and presenting the
/// certificate and key of `identity` when a server asks for one.
pub(crate) fn tls_config(
    ca: Option<&std::path::Path>,
    identity: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<ureq::tls::TlsConfig> {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = ca {
        let roots = pem_items(ca, |item| match item {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })?;
        tls = tls.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
    }
    if let Some((cert, key)) = identity {
        let chain = pem_items(cert, |item| match item {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })?;
        let mut keys = pem_items(key, |item| match item {
            ureq::tls::PemItem::PrivateKey(key) => Some(key),
            _ => None,
        })?;
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(
            &chain,
            keys.swap_remove(0),
        )));
    }
    Ok(tls.build())
}

/// An HTTP agent that hands every status to its caller and gives up on a request after a
/// minute.
pub(crate) fn agent(tls: ureq::tls::TlsConfig) -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .tls_config(tls)
        .build()
        .into()
}

/// Lines sent per produce request.
pub const PRODUCE_CHUNK_RECORDS: usize = 1000;
/// Records asked for per consume request.
const CONSUME_CHUNK_RECORDS: usize = 1000;
/// Pause between polls when a followed topic has nothing new.
const IDLE_POLL: Duration = Duration::from_millis(300);

/// An HTTP client for one node.
pub struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    /// A client for `server`; an `https://` server must have a certificate from a public CA.
    pub fn new(server: &str, token: Option<String>) -> Self {
        Self::with_tls(server, token, ureq::tls::TlsConfig::default())
    }

    /// A client for an `https://` server whose certificate the CAs in the PEM file `ca` signed,
    /// presenting the certificate and key of `identity` when the node asks for one.
    pub fn with_tls_files(
        server: &str,
        token: Option<String>,
        ca: Option<&std::path::Path>,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<Self> {
        Ok(Self::with_tls(server, token, tls_config(ca, identity)?))
    }

    fn with_tls(server: &str, token: Option<String>, tls: ureq::tls::TlsConfig) -> Self {
        Client {
            base: server.trim_end_matches('/').to_string(),
            token,
            agent: agent(tls),
        }
    }

    /// Sends a request and returns the JSON answer (`Null` for an empty one); an HTTP error
    /// becomes an error carrying the server's message.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let body = match body {
            Some(value) => serde_json::to_vec(value)
                .map_err(|e| Error::Invalid(format!("request body: {e}")))?,
            None if method == "POST" => b"null".to_vec(),
            None => Vec::new(),
        };
        self.send(method, path, "application/json", &body)
    }

    /// Sends `body` as is, with its content type.
    pub fn send(&self, method: &str, path: &str, content_type: &str, body: &[u8]) -> Result<Value> {
        self.send_accepting(method, path, content_type, body, "application/json")
    }

    /// [`Client::send`] asking for the answer as `accept`; a non-JSON answer is a `Value::String`.
    pub fn send_accepting(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
        accept: &str,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let request = ureq::http::Request::builder()
            .method(method)
            .uri(&url)
            .header("Content-Type", content_type)
            .header("Accept", accept);
        let request = match &auth {
            Some(a) => request.header("Authorization", a),
            None => request,
        };
        let request = request
            .body(body.to_vec())
            .map_err(|e| Error::Invalid(format!("bad request to {url}: {e}")))?;
        let mut response = self.agent.run(request).map_err(|e| Error::Unreachable {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = value
                .get("error")
                .and_then(Value::as_str)
                .map_or_else(|| value.to_string(), str::to_string);
            return Err(Error::Remote {
                method: method.to_string(),
                path: path.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        Ok(value)
    }
}

/// `key=value` pairs of repeated flags.
pub fn parse_pairs(what: &str, pairs: &[String]) -> Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| Error::Invalid(format!("{what} {p:?} is not key=value")))
        })
        .collect()
}

pub fn topic_create(c: &Client, name: &str, partitions: u32, configs: &[String]) -> Result<()> {
    let body = json!({ "name": name, "partitions": partitions, "configs": parse_pairs("config", configs)? });
    c.call("POST", "/v1/topics", Some(&body))?;
    println!("created topic {name} with {partitions} partitions");
    Ok(())
}

pub fn topic_list(c: &Client) -> Result<()> {
    let topics = c.call("GET", "/v1/topics", None)?;
    println!("{:<40} {:>10}", "TOPIC", "PARTITIONS");
    for t in topics.as_array().into_iter().flatten() {
        println!(
            "{:<40} {:>10}",
            t["name"].as_str().unwrap_or(""),
            t["partitions"].to_string()
        );
    }
    Ok(())
}

/// Sets `configs` (`key=value`) and returns `deleted` to their defaults, then prints every
/// config of the topic.
pub fn topic_alter(c: &Client, name: &str, configs: &[String], deleted: &[String]) -> Result<()> {
    if configs.is_empty() && deleted.is_empty() {
        return Err(Error::Invalid(
            "nothing to alter: give --config key=value or --delete-config key".into(),
        ));
    }
    let set = parse_pairs("config", configs)?;
    let t = c.call(
        "PATCH",
        &format!("/v1/topics/{name}/configs"),
        Some(&json!({ "set": set, "delete": deleted })),
    )?;
    print_configs(&t);
    Ok(())
}

/// Every config of a topic as `GET /v1/topics/{name}` shows them: value, default, source.
fn print_configs(topic: &Value) {
    println!("{:<32} {:<24} {:<24} SOURCE", "CONFIG", "VALUE", "DEFAULT");
    for entry in topic["all_configs"].as_array().into_iter().flatten() {
        let [name, value, default, source] =
            ["name", "value", "default", "source"].map(|k| entry[k].as_str().unwrap_or(""));
        println!("{name:<32} {value:<24} {default:<24} {source}");
    }
}

/// Prints `value` as indented JSON (what `--json` asks of a describe command).
pub(crate) fn print_json(value: &Value) {
    println!("{value:#}");
}

pub fn topic_describe(c: &Client, name: &str, as_json: bool) -> Result<()> {
    let t = c.call("GET", &format!("/v1/topics/{name}"), None)?;
    if as_json {
        print_json(&t);
        return Ok(());
    }
    println!("topic {name} (id {})\n", t["id"].as_str().unwrap_or(""));
    print_configs(&t);
    println!();
    println!(
        "{:>9} {:>16} {:>16} {:>14} {:>8}",
        "PARTITION", "START", "END", "BYTES", "SEGMENTS"
    );
    for p in t["partitions"].as_array().into_iter().flatten() {
        let [partition, start, end, bytes, segments] = [
            "partition",
            "log_start_offset",
            "high_watermark",
            "size_bytes",
            "segments",
        ]
        .map(|k| p[k].to_string());
        println!("{partition:>9} {start:>16} {end:>16} {bytes:>14} {segments:>8}");
    }
    let delayed = &t["delayed"];
    if let Some(records) = delayed["records"].as_u64().filter(|n| *n > 0) {
        let next = delayed["next_due_ms"].as_i64().unwrap_or_default();
        println!("\ndelayed: {records} records waiting, the next due at {next} (epoch ms)");
    }
    Ok(())
}

pub fn topic_delete(c: &Client, name: &str) -> Result<()> {
    c.call("DELETE", &format!("/v1/topics/{name}"), None)?;
    println!("deleted topic {name}");
    Ok(())
}

/// Creates `name` or gives it a new password.
pub fn user_set(c: &Client, name: &str, password: &str) -> Result<()> {
    let body = json!({ "name": name, "password": password });
    c.call("POST", "/v1/users", Some(&body))?;
    println!("set the password of user {name}");
    Ok(())
}

pub fn user_list(c: &Client) -> Result<()> {
    let users = c.call("GET", "/v1/users", None)?;
    println!("{:<32} MECHANISMS", "USER");
    for u in users.as_array().into_iter().flatten() {
        let mechanisms: Vec<&str> = u["mechanisms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!(
            "{:<32} {}",
            u["name"].as_str().unwrap_or(""),
            mechanisms.join(",")
        );
    }
    Ok(())
}

/// `User:<name>` for a bare name; a principal with a type is kept as it is.
pub fn principal(name: &str) -> String {
    if name.contains(':') {
        name.to_string()
    } else {
        format!("User:{name}")
    }
}

pub fn acl_add(c: &Client, acls: &[crate::acl::Acl]) -> Result<()> {
    let body = serde_json::to_value(acls).map_err(|e| Error::Invalid(e.to_string()))?;
    c.call("POST", "/v1/acls", Some(&body))?;
    for acl in acls {
        println!("added: {acl}");
    }
    Ok(())
}

fn acl_query(filter: &crate::acl::AclFilter) -> Result<String> {
    serde_urlencoded::to_string(filter).map_err(|e| Error::Invalid(e.to_string()))
}

/// Prints rules as a table.
fn print_acls(acls: &Value) {
    println!(
        "{:<10} {:<24} {:<9} {:<20} {:<16} {:<17} PERMISSION",
        "RESOURCE", "NAME", "PATTERN", "PRINCIPAL", "HOST", "OPERATION"
    );
    for a in acls.as_array().into_iter().flatten() {
        let field = |k: &str| a[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<10} {:<24} {:<9} {:<20} {:<16} {:<17} {}",
            field("resource_type"),
            field("resource_name"),
            field("pattern_type"),
            field("principal"),
            field("host"),
            field("operation"),
            field("permission")
        );
    }
}

pub fn acl_list(c: &Client, filter: &crate::acl::AclFilter) -> Result<()> {
    let acls = c.call("GET", &format!("/v1/acls?{}", acl_query(filter)?), None)?;
    print_acls(&acls);
    Ok(())
}

pub fn acl_delete(c: &Client, filter: &crate::acl::AclFilter) -> Result<()> {
    if filter.is_empty() {
        return Err(Error::Invalid(
            "name a principal, a resource or an operation: a delete with no filter would remove every ACL".into(),
        ));
    }
    let gone = c.call("DELETE", &format!("/v1/acls?{}", acl_query(filter)?), None)?;
    println!("deleted:");
    print_acls(&gone);
    Ok(())
}

pub fn user_delete(c: &Client, name: &str) -> Result<()> {
    c.call("DELETE", &format!("/v1/users/{name}"), None)?;
    println!("deleted user {name}");
    Ok(())
}

/// Where `weir produce` sends its lines, and how a line becomes a record.
pub struct Target<'a> {
    pub topic: &'a str,
    pub key: Option<&'a str>,
    pub partition: Option<u32>,
    /// A line is `key<separator>value`; a line without it is a value with `key`.
    pub key_separator: Option<&'a str>,
    /// Headers of every record.
    pub headers: &'a BTreeMap<String, String>,
    /// Each line is a JSON object with `value` and optionally `key`, `headers` (an object, or
    /// `[name, value]` pairs as `weir consume --json` prints them), `partition`, `timestamp`.
    pub json: bool,
}

impl Target<'_> {
    /// The produce API's record for one line.
    fn record(&self, line: &str) -> Result<Value> {
        let mut record = if self.json {
            json_line(line)?
        } else {
            match self.key_separator.and_then(|sep| line.split_once(sep)) {
                Some((key, value)) => json!({ "key": key, "value": value }),
                None => json!({ "value": line }),
            }
        };
        if let (Some(k), None) = (self.key, record.get("key")) {
            record["key"] = json!(k);
        }
        if let (Some(p), None) = (self.partition, record.get("partition")) {
            record["partition"] = json!(p);
        }
        if !self.headers.is_empty() {
            let headers = record["headers"].as_object_mut();
            let mut merged = headers.cloned().unwrap_or_default();
            for (k, v) in self.headers {
                merged.insert(k.clone(), json!(v));
            }
            record["headers"] = Value::Object(merged);
        }
        Ok(record)
    }
}

/// A `weir produce --json` line as a record of the produce API: a value or key that is not a
/// string is sent as its JSON text; headers may be an object or `[name, value]` pairs.
fn json_line(line: &str) -> Result<Value> {
    let invalid = |why: String| Error::Invalid(format!("line {line:?}: {why}"));
    let Value::Object(fields) = serde_json::from_str::<Value>(line)
        .map_err(|e| invalid(format!("not a JSON object: {e}")))?
    else {
        return Err(invalid("not a JSON object".into()));
    };
    let mut record = serde_json::Map::new();
    for (name, value) in fields {
        let value = match (name.as_str(), value) {
            (_, Value::Null) => continue,
            ("key" | "value", Value::String(text)) => Value::String(text),
            ("key" | "value", other) => Value::String(other.to_string()),
            ("headers", Value::Object(headers)) => Value::Object(headers),
            ("headers", Value::Array(pairs)) => {
                let mut headers = serde_json::Map::new();
                for pair in pairs {
                    match pair.as_array().map(Vec::as_slice) {
                        Some([Value::String(k), v]) => {
                            headers.insert(k.clone(), json!(v.as_str().unwrap_or_default()));
                        }
                        _ => return Err(invalid(format!("header {pair} is not [name, value]"))),
                    }
                }
                Value::Object(headers)
            }
            ("partition" | "timestamp", number @ Value::Number(_)) => number,
            // What `weir consume --json` adds about where a record was.
            ("offset" | "topic", _) => continue,
            (name, value) => return Err(invalid(format!("unexpected field {name}: {value}"))),
        };
        record.insert(name, value);
    }
    Ok(Value::Object(record))
}

/// Sends lines of `input` as records (one per line), with the target's key and partition.
pub fn produce(
    c: &Client,
    target: &Target,
    input: &mut dyn BufRead,
    progress: Option<indicatif::ProgressBar>,
) -> Result<u64> {
    let mut sent = 0u64;
    let mut chunk = Vec::with_capacity(PRODUCE_CHUNK_RECORDS);
    for line in input.lines() {
        let line = line.map_err(io("reading input"))?;
        if let Some(p) = &progress {
            p.inc(line.len() as u64 + 1);
        }
        chunk.push(line);
        if chunk.len() == PRODUCE_CHUNK_RECORDS {
            produce_lines(c, target, &chunk)?;
            sent += chunk.len() as u64;
            chunk.clear();
        }
    }
    produce_lines(c, target, &chunk)?;
    sent += chunk.len() as u64;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    Ok(sent)
}

/// Sends `lines` as records, with the target's key and partition, in requests of at most
/// [`PRODUCE_CHUNK_RECORDS`].
pub fn produce_lines(c: &Client, target: &Target, lines: &[String]) -> Result<()> {
    for chunk in lines.chunks(PRODUCE_CHUNK_RECORDS) {
        let records = chunk
            .iter()
            .map(|line| target.record(line))
            .collect::<Result<Vec<Value>>>()?;
        let body = json!({ "records": records });
        c.call(
            "POST",
            &format!("/v1/topics/{}/records", target.topic),
            Some(&body),
        )?;
    }
    Ok(())
}

/// Where `weir consume` starts in each partition it reads (a group's committed offset wins).
pub enum Start {
    /// Only records that arrive from now on.
    End,
    Beginning,
    /// This offset; a negative one counts back from the end (`-10`: the last ten records).
    Offset(i64),
    /// The first record at or after this time (epoch ms or RFC 3339).
    Time(String),
}

/// How `weir consume` prints a record.
pub enum Output {
    /// The value alone.
    Value,
    /// The pieces of a `--format`.
    Format(Vec<Piece>),
    /// One JSON object a line, as `GET /v1/topics/{name}/records` answers them, with the topic.
    Json,
}

/// Text, or a field of the record, in a `--format`.
pub enum Piece {
    Text(String),
    Field(Field),
}

/// A field of a record a `--format` prints.
#[derive(Clone, Copy)]
pub enum Field {
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
}

impl Field {
    /// The field a `%` letter names.
    fn of(letter: char) -> Option<Field> {
        Some(match letter {
            't' => Field::Topic,
            'p' => Field::Partition,
            'o' => Field::Offset,
            'k' => Field::Key,
            'v' => Field::Value,
            'T' => Field::Timestamp,
            'h' => Field::Headers,
            _ => return None,
        })
    }
}

impl Output {
    /// A `--format`: `%t` topic, `%p` partition, `%o` offset, `%k` key, `%v` value, `%T`
    /// timestamp (ms), `%h` headers as `name=value,…`, `%%` a percent sign; `\n` and `\t`
    /// escapes. A record ends with a newline unless the format ends with one.
    pub fn format(format: &str) -> Result<Output> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars();
        while let Some(ch) = chars.next() {
            if ch != '%' && ch != '\\' {
                text.push(ch);
                continue;
            }
            match (ch, chars.next()) {
                ('%', Some(letter)) if Field::of(letter).is_some() => {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                    pieces.extend(Field::of(letter).map(Piece::Field));
                }
                ('\\', Some('n')) => text.push('\n'),
                ('\\', Some('t')) => text.push('\t'),
                (marker, Some(other)) if other == marker => text.push(marker),
                (marker, other) => {
                    return Err(Error::Invalid(format!(
                        "--format {format:?}: {marker}{} is not a field; use %t %p %o %k %v %T \
                         %h, %% for a percent sign, \\n and \\t",
                        other.map(String::from).unwrap_or_default()
                    )));
                }
            }
        }
        if !text.ends_with('\n') {
            text.push('\n');
        }
        pieces.push(Piece::Text(text));
        Ok(Output::Format(pieces))
    }
}

/// Options of `weir consume`.
pub struct ConsumeOptions<'a> {
    pub start: Start,
    /// Read only this partition; every one when absent.
    pub partition: Option<u32>,
    pub group: Option<&'a str>,
    /// Stop once every partition is read to its end.
    pub exit_at_end: bool,
    /// Stop after this many records.
    pub max_records: Option<u64>,
    pub output: Output,
}

/// A group's committed offsets on `topic`, by partition; none for a group that does not exist
/// yet.
fn committed_offsets(c: &Client, group: &str, topic: &str) -> Result<BTreeMap<u64, u64>> {
    let mut committed = BTreeMap::new();
    match c.call("GET", &format!("/v1/groups/{group}"), None) {
        Ok(group) => {
            for off in group["offsets"].as_array().into_iter().flatten() {
                let position = (off["partition"].as_u64(), off["committed"].as_u64());
                if let (true, (Some(p), Some(o))) = (off["topic"] == topic, position) {
                    committed.insert(p, o);
                }
            }
        }
        // A new group starts like a plain consumer.
        Err(Error::Remote { status: 404, .. }) => {}
        Err(e) => return Err(e),
    }
    Ok(committed)
}

/// Where `consume` starts in each partition it reads: a group's committed offset, else where
/// the options say, within the partition's start and end.
fn start_positions(c: &Client, topic: &str, o: &ConsumeOptions) -> Result<Vec<(u64, u64)>> {
    let detail = c.call("GET", &format!("/v1/topics/{topic}"), None)?;
    let mut partitions = detail["partitions"].as_array().cloned().unwrap_or_default();
    if let Some(only) = o.partition {
        partitions.retain(|p| p["partition"].as_u64() == Some(u64::from(only)));
        if partitions.is_empty() {
            return Err(Error::Invalid(format!(
                "topic {topic} has no partition {only}"
            )));
        }
    }
    let committed = match o.group {
        Some(g) => committed_offsets(c, g, topic)?,
        None => BTreeMap::new(),
    };
    let mut positions = Vec::with_capacity(partitions.len());
    for p in &partitions {
        let index = p["partition"].as_u64().unwrap_or(0);
        let first = p["log_start_offset"].as_u64().unwrap_or(0);
        let end = p["high_watermark"].as_u64().unwrap_or(0);
        let start = match (committed.get(&index), &o.start) {
            (Some(offset), _) => *offset,
            (None, Start::End) => end,
            (None, Start::Beginning) => first,
            (None, Start::Offset(n)) if *n < 0 => end.saturating_sub(n.unsigned_abs()),
            (None, Start::Offset(n)) => n.unsigned_abs(),
            (None, Start::Time(t)) => {
                let query = serde_urlencoded::to_string([
                    ("partition", index.to_string()),
                    ("timestamp", t.clone()),
                    ("limit", "0".to_string()),
                ])
                .map_err(|e| Error::Invalid(e.to_string()))?;
                let answer = c.call("GET", &format!("/v1/topics/{topic}/records?{query}"), None)?;
                answer["next_offset"].as_u64().unwrap_or(end)
            }
        };
        positions.push((index, start.clamp(first, end.max(first))));
    }
    Ok(positions)
}

/// A record as `GET /v1/topics/{name}/records` answers it, printed as `output` asks.
fn print_record(out: &mut dyn Write, topic: &str, r: &Value, output: &Output) -> Result<()> {
    let bytes = |field: &str| {
        r[field]
            .as_str()
            .or_else(|| r[format!("{field}_base64")].as_str())
            .unwrap_or("")
            .to_string()
    };
    let text = match output {
        Output::Value => bytes("value") + "\n",
        Output::Json => {
            let mut record = r.clone();
            record["topic"] = json!(topic);
            format!("{record}\n")
        }
        Output::Format(pieces) => {
            let mut text = String::new();
            for piece in pieces {
                match piece {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Field(Field::Topic) => text.push_str(topic),
                    Piece::Field(Field::Key) => text.push_str(&bytes("key")),
                    Piece::Field(Field::Value) => text.push_str(&bytes("value")),
                    Piece::Field(Field::Headers) => text.push_str(&headers_text(&r["headers"])),
                    Piece::Field(Field::Partition) => text.push_str(&r["partition"].to_string()),
                    Piece::Field(Field::Offset) => text.push_str(&r["offset"].to_string()),
                    Piece::Field(Field::Timestamp) => text.push_str(&r["timestamp"].to_string()),
                }
            }
            text
        }
    };
    out.write_all(text.as_bytes())
        .map_err(io("writing records"))
}

/// Headers as `name=value,…`.
fn headers_text(headers: &Value) -> String {
    let pairs: Vec<String> = headers
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| {
            let value = pair[1].as_str().unwrap_or_default();
            format!("{}={value}", pair[0].as_str().unwrap_or_default())
        })
        .collect();
    pairs.join(",")
}

pub fn consume(c: &Client, topic: &str, o: &ConsumeOptions, out: &mut dyn Write) -> Result<u64> {
    let mut positions = start_positions(c, topic, o)?;
    let mut printed = 0u64;
    loop {
        let mut progressed = false;
        let mut at_end = true;
        for (partition, offset) in positions.iter_mut() {
            let answer = c.call(
                "GET",
                &format!(
                    "/v1/topics/{topic}/records?partition={partition}&offset={offset}&limit={CONSUME_CHUNK_RECORDS}"
                ),
                None,
            )?;
            let mut stopped_early = false;
            for r in answer["records"].as_array().into_iter().flatten() {
                if o.max_records.is_some_and(|m| printed >= m) {
                    stopped_early = true;
                    break;
                }
                print_record(out, topic, r, &o.output)?;
                printed += 1;
                if let Some(next) = r["offset"].as_u64() {
                    *offset = next + 1;
                }
                progressed = true;
            }
            // Past a compacted gap, unless the record limit stopped us inside the answer.
            if !stopped_early && answer["next_offset"].as_u64().is_some_and(|n| n > *offset) {
                *offset = answer["next_offset"].as_u64().unwrap_or(*offset);
            }
            if *offset < answer["high_watermark"].as_u64().unwrap_or(0) {
                at_end = false;
            }
            if let Some(g) = o.group {
                let body = json!({ "topic": topic, "partition": partition, "offset": offset });
                c.call("POST", &format!("/v1/groups/{g}/offsets"), Some(&body))?;
            }
        }
        out.flush().map_err(io("writing records"))?;
        if o.max_records.is_some_and(|m| printed >= m) || (o.exit_at_end && at_end) {
            return Ok(printed);
        }
        if !progressed {
            std::thread::sleep(IDLE_POLL);
        }
    }
}

/// Prints the nodes of the cluster the node belongs to (`GET /v1/cluster`), whether its
/// database and object store answer, and its leases; or its JSON.
pub fn cluster_status(c: &Client, as_json: bool) -> Result<()> {
    let cluster = c.call("GET", "/v1/cluster", None)?;
    if as_json {
        print_json(&cluster);
        return Ok(());
    }
    let nodes = cluster["nodes"].as_array().cloned().unwrap_or_default();
    println!(
        "{} mode, asked node {}, {} live node{}\n",
        cluster["mode"].as_str().unwrap_or(""),
        cluster["node_id"],
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" }
    );
    println!("{:>8} {:<40} {:>6}", "NODE", "HOST", "KAFKA");
    for n in &nodes {
        println!(
            "{:>8} {:<40} {:>6}",
            n["id"].to_string(),
            n["host"].as_str().unwrap_or(""),
            n["port"].to_string()
        );
    }
    for (name, probe) in [
        ("database", &cluster["database"]),
        ("object store", &cluster["object_store"]),
    ] {
        if probe.is_null() {
            continue;
        }
        let answer = match probe["error"].as_str() {
            None => "ok".to_string(),
            Some(error) => format!("FAILING: {error}"),
        };
        println!(
            "{}{name:<13} {answer} ({} ms)",
            if name == "database" { "\n" } else { "" },
            probe["latency_ms"]
        );
    }
    let Some(leases) = cluster["leases"].as_array() else {
        return Ok(());
    };
    println!(
        "\n{} live lease{}",
        cluster["leases_total"],
        if leases.len() == 1 { "" } else { "s" }
    );
    println!(
        "{:<40} {:>8} {:>6} {:>10}  NOTE",
        "LEASE", "HOLDER", "EPOCH", "EXPIRES IN"
    );
    for l in leases {
        let note = match &l["note"] {
            serde_json::Value::Null => String::new(),
            serde_json::Value::String(text) => text.clone(),
            group if group["state"].is_string() => {
                let members = group["members"].as_u64().unwrap_or(0);
                format!(
                    "{}, {members} member{}",
                    group["state"].as_str().unwrap_or(""),
                    if members == 1 { "" } else { "s" }
                )
            }
            other => other.to_string(),
        };
        println!(
            "{:<40} {:>8} {:>6} {:>9.1}s  {note}",
            l["name"].as_str().unwrap_or(""),
            l["holder"].as_str().unwrap_or(""),
            l["epoch"].to_string(),
            l["expires_in_ms"].as_f64().unwrap_or(0.0) / 1000.0,
        );
    }
    Ok(())
}

pub fn groups(c: &Client) -> Result<()> {
    let groups = c.call("GET", "/v1/groups", None)?;
    println!(
        "{:<32} {:<20} {:>8} {:>12}",
        "GROUP", "STATE", "MEMBERS", "LAG"
    );
    for g in groups.as_array().into_iter().flatten() {
        let id = g["group"].as_str().unwrap_or("");
        let lag: i64 = c
            .call("GET", &format!("/v1/groups/{id}"), None)
            .map(|d| {
                d["offsets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|o| o["lag"].as_i64())
                    .sum()
            })
            .unwrap_or(0);
        println!(
            "{:<32} {:<20} {:>8} {:>12}",
            id,
            g["state"].as_str().unwrap_or(""),
            g["members"].to_string(),
            lag
        );
    }
    Ok(())
}

/// Prints a group's state, members and committed offsets with their lag, or its JSON.
pub fn group_describe(c: &Client, id: &str, as_json: bool) -> Result<()> {
    let g = c.call("GET", &format!("/v1/groups/{id}"), None)?;
    if as_json {
        print_json(&g);
        return Ok(());
    }
    let text = |v: &Value| v.as_str().unwrap_or("").to_string();
    println!(
        "group {id}: {} ({} members, protocol {})\n",
        text(&g["state"]),
        g["members"].as_array().map_or(0, Vec::len),
        text(&g["protocol"])
    );
    println!("{:<40} {:<24} {:<24} HOST", "MEMBER", "INSTANCE", "CLIENT");
    for m in g["members"].as_array().into_iter().flatten() {
        let [member, instance, client, host] =
            ["member_id", "instance_id", "client_id", "client_host"].map(|k| text(&m[k]));
        println!("{member:<40} {instance:<24} {client:<24} {host}");
    }
    println!();
    println!(
        "{:<32} {:>9} {:>14} {:>14} {:>10}",
        "TOPIC", "PARTITION", "COMMITTED", "END", "LAG"
    );
    for o in g["offsets"].as_array().into_iter().flatten() {
        let [partition, committed, end, lag] =
            ["partition", "committed", "end", "lag"].map(|k| o[k].to_string());
        println!(
            "{:<32} {partition:>9} {committed:>14} {end:>14} {lag:>10}",
            text(&o["topic"])
        );
    }
    Ok(())
}

pub fn group_delete(c: &Client, id: &str) -> Result<()> {
    c.call("DELETE", &format!("/v1/groups/{id}"), None)?;
    println!("deleted group {id} and its committed offsets");
    Ok(())
}

/// Where `weir groups reset-offsets` moves a group's offsets: exactly one of the fields, as
/// `POST /v1/groups/{id}/reset-offsets` takes them.
#[derive(serde::Serialize)]
pub struct Reset {
    pub topic: String,
    pub partitions: Vec<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub to_earliest: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub to_latest: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_datetime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_offset: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift_by: Option<i64>,
    pub dry_run: bool,
}

/// Moves an idle group's offsets on a topic and prints each partition's before and after.
pub fn group_reset(c: &Client, id: &str, reset: &Reset) -> Result<()> {
    let body = serde_json::to_value(reset).map_err(|e| Error::Invalid(e.to_string()))?;
    let answer = c.call(
        "POST",
        &format!("/v1/groups/{id}/reset-offsets"),
        Some(&body),
    )?;
    println!(
        "{:<32} {:>9} {:>14} {:>14}",
        "TOPIC", "PARTITION", "BEFORE", "AFTER"
    );
    for o in answer["offsets"].as_array().into_iter().flatten() {
        let before = o["before"]
            .as_i64()
            .map_or("-".to_string(), |b| b.to_string());
        println!(
            "{:<32} {:>9} {before:>14} {:>14}",
            o["topic"].as_str().unwrap_or(""),
            o["partition"].to_string(),
            o["after"].to_string()
        );
    }
    if reset.dry_run {
        println!("\ndry run: nothing was changed");
    }
    Ok(())
}

/// Runs one statement and prints the answer as a table.
pub fn sql(c: &Client, statement: &str) -> Result<()> {
    let answer = c.send_accepting(
        "POST",
        "/v1/sql",
        "text/plain",
        statement.as_bytes(),
        "text/plain",
    )?;
    print!("{}", answer.as_str().unwrap_or_default());
    Ok(())
}

/// Where the shell's lines come from.
pub trait ShellInput {
    /// The next line, `None` at the end of the input; `continued` when a statement is open.
    fn line(&mut self, continued: bool) -> Result<Option<String>>;

    /// A statement the shell ran, for the history.
    fn ran(&mut self, _statement: &str) {}
}

/// Lines read as they come, without prompts (a pipe or a file).
pub struct Piped<R>(pub R);

impl<R: BufRead> ShellInput for Piped<R> {
    fn line(&mut self, _continued: bool) -> Result<Option<String>> {
        let mut line = String::new();
        let read = self
            .0
            .read_line(&mut line)
            .map_err(io("reading statements"))?;
        Ok((read > 0).then_some(line))
    }
}

/// A terminal: line editing, and a history kept in `~/.weir_sql_history`.
pub struct Terminal {
    editor: rustyline::DefaultEditor,
    history: Option<std::path::PathBuf>,
}

impl Terminal {
    pub fn open() -> Result<Terminal> {
        let mut editor = rustyline::DefaultEditor::new()
            .map_err(|e| Error::Invalid(format!("cannot edit lines on this terminal: {e}")))?;
        let history = std::env::var_os("HOME")
            .map(|home| std::path::Path::new(&home).join(".weir_sql_history"));
        if let Some(path) = &history {
            // A missing history file is a first run.
            let _ = editor.load_history(path);
        }
        Ok(Terminal { editor, history })
    }
}

impl ShellInput for Terminal {
    fn line(&mut self, continued: bool) -> Result<Option<String>> {
        use rustyline::error::ReadlineError;
        let prompt = if continued { "   ...> " } else { "weir=> " };
        match self.editor.readline(prompt) {
            Ok(line) => Ok(Some(line + "\n")),
            // Ctrl-C drops the line being typed, as in psql.
            Err(ReadlineError::Interrupted) => Ok(Some(String::new())),
            Err(ReadlineError::Eof) => Ok(None),
            Err(e) => Err(Error::Invalid(format!("reading a line: {e}"))),
        }
    }

    fn ran(&mut self, statement: &str) {
        let _ = self.editor.add_history_entry(statement);
        if let Some(path) = &self.history
            && let Err(e) = self.editor.save_history(path)
        {
            eprintln!("history not saved to {}: {e}", path.display());
        }
    }
}

/// What `help` in the SQL shell prints.
const SHELL_HELP: &str = "\
Statements end with ';' and may span lines. Besides SQL:
  \\dt          list topics (tables) with their partitions and value format
  \\d NAME      the columns of a topic or system table (weir.topics, weir.groups, ...)
  \\timing      print how long each statement took (again to stop)
  help, \\?     this text
  \\q, exit     leave the shell (so does Ctrl-D)
Start with: SELECT * FROM weir.topics;  SELECT * FROM TOPIC LIMIT 10;";

/// A name as a SQL identifier: `weir.NAME` is a system table, anything else a topic.
fn quoted_table(name: &str) -> String {
    let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
    match name.split_once('.') {
        Some(("weir", table)) => format!("weir.{}", quote(table)),
        _ => quote(name),
    }
}

/// What a shell line that is not SQL asks for.
enum ShellCommand {
    Quit,
    Help,
    Timing,
    /// SQL to run in its place.
    Run(String),
    /// The columns of a table.
    Describe(String),
    Unknown(String),
}

impl ShellCommand {
    /// The command a line is, when no statement is open and the line is one.
    fn of(line: &str) -> Option<ShellCommand> {
        let line = line.trim().trim_end_matches(';').trim_end();
        let (word, arg) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let arg = arg.trim();
        Some(match (word.to_ascii_lowercase().as_str(), arg) {
            ("\\q" | "exit" | "quit", "") => ShellCommand::Quit,
            ("help" | "\\?" | "\\h", "") => ShellCommand::Help,
            ("\\timing", "") => ShellCommand::Timing,
            ("\\dt", "") => ShellCommand::Run(
                "SELECT name, partitions, value_format FROM weir.topics ORDER BY name".into(),
            ),
            ("\\d", "") => ShellCommand::Unknown("\\d needs a table: \\d NAME".into()),
            ("\\d", name) => ShellCommand::Describe(name.to_string()),
            (word, _) if word.starts_with('\\') => {
                ShellCommand::Unknown(format!("unknown command {word}; type help"))
            }
            _ => return None,
        })
    }
}

/// Statements read from `input` (each ends with `;`), run one by one; an error is printed and
/// the shell goes on. A line that is a shell command (`help`, `\\q`, `\\dt`, `\\d NAME`,
/// `\\timing`) is run as one when no statement is open.
pub fn sql_shell(c: &Client, input: &mut dyn ShellInput) -> Result<()> {
    let mut statement = String::new();
    let mut timing = false;
    let run = |text: &str, timing: bool| {
        let started = std::time::Instant::now();
        match sql(c, text) {
            Ok(()) if timing => {
                println!("Time: {:.3} ms", started.elapsed().as_secs_f64() * 1000.0);
            }
            Ok(()) => {}
            Err(e) => println!("error: {e:#}"),
        }
    };
    while let Some(line) = input.line(!statement.is_empty())? {
        if statement.trim().is_empty()
            && let Some(command) = ShellCommand::of(&line)
        {
            statement.clear();
            input.ran(line.trim());
            match command {
                ShellCommand::Quit => return Ok(()),
                ShellCommand::Help => println!("{SHELL_HELP}"),
                ShellCommand::Timing => {
                    timing = !timing;
                    println!("Timing is {}.", if timing { "on" } else { "off" });
                }
                ShellCommand::Run(sql) => run(&sql, timing),
                // A query of the table first, so a name that is not one says so (and which
                // table was meant) rather than answer no columns.
                ShellCommand::Describe(name) => match check(c, &name) {
                    Ok(()) => run(&columns_query(&name), timing),
                    Err(e) => println!("error: {e:#}"),
                },
                ShellCommand::Unknown(message) => println!("{message}"),
            }
            continue;
        }
        statement.push_str(&line);
        if line.trim_end().ends_with(';') {
            let text = std::mem::take(&mut statement);
            input.ran(text.trim());
            run(text.trim(), timing);
        }
    }
    if !statement.trim().is_empty() {
        sql(c, statement.trim())?;
    }
    Ok(())
}

/// Whether `table` is a table a statement may read: its error when it is not.
fn check(c: &Client, table: &str) -> Result<()> {
    let statement = format!("SELECT * FROM {} LIMIT 0", quoted_table(table));
    c.send("POST", "/v1/sql", "text/plain", statement.as_bytes())
        .map(|_| ())
}

/// The query `\\d NAME` runs: the table's columns with their types.
fn columns_query(name: &str) -> String {
    let (schema, table) = match name.split_once('.') {
        Some(("weir", table)) => ("weir", table),
        _ => ("public", name),
    };
    let literal = |text: &str| format!("'{}'", text.replace('\'', "''"));
    format!(
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns \
         WHERE table_schema = {} AND table_name = {} ORDER BY ordinal_position",
        literal(schema),
        literal(table)
    )
}
