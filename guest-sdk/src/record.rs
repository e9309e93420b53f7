//! What a plugin function sees and returns: [`Record`], [`Params`] and [`Error`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

/// A record as a plugin sees it. Fields borrow from the batch the host passed in; a plugin that
/// changes a field replaces the borrowed bytes with owned ones.
///
/// ```
/// use weir::Record;
///
/// let r = Record::new("GET /index.html 200").with_key("web-1").with_header("source", "nginx");
/// assert_eq!(r.value_str().unwrap(), "GET /index.html 200");
/// assert_eq!(r.key.as_deref(), Some(&b"web-1"[..]));
/// assert_eq!(r.header("source"), Some(&b"nginx"[..]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// `None` is a null key.
    pub key: Option<Cow<'a, [u8]>>,
    pub value: Cow<'a, [u8]>,
    pub headers: Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
    /// Milliseconds since the Unix epoch; a new record has -1, which the host replaces with the
    /// time of the append.
    pub timestamp: i64,
    /// Offset in the input topic; -1 for a record a plugin made.
    pub offset: i64,
    /// Partition of the input topic; -1 for a record a plugin made.
    pub partition: i32,
    /// Output topic; `None` sends the record to the pipeline's first output topic.
    pub topic: Option<String>,
    /// Output partition; `None` lets the pipeline's partitioner (or the key hash) choose.
    pub target_partition: Option<u32>,
}

impl<'a> Record<'a> {
    /// A record with a value, no key, no headers and the append time as timestamp.
    pub fn new(value: impl Into<Vec<u8>>) -> Record<'a> {
        Record {
            key: None,
            value: Cow::Owned(value.into()),
            headers: Vec::new(),
            timestamp: -1,
            offset: -1,
            partition: -1,
            topic: None,
            target_partition: None,
        }
    }

    /// A record whose value is `value` serialized as JSON.
    ///
    /// ```
    /// let r = weir::Record::json(&serde_json::json!({"status": 200})).unwrap();
    /// assert_eq!(r.value_str().unwrap(), r#"{"status":200}"#);
    /// ```
    pub fn json(value: &impl serde::Serialize) -> Result<Record<'a>> {
        Ok(Record::new(serde_json::to_vec(value)?))
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(Cow::Owned(key.into()));
        self
    }

    pub fn with_value(mut self, value: impl Into<Vec<u8>>) -> Self {
        self.value = Cow::Owned(value.into());
        self
    }

    pub fn with_header(mut self, key: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers
            .push((Cow::Owned(key.to_owned()), Cow::Owned(value.into())));
        self
    }

    pub fn with_timestamp(mut self, timestamp_ms: i64) -> Self {
        self.timestamp = timestamp_ms;
        self
    }

    /// Sends the record to another of the pipeline's output topics.
    pub fn to_topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    /// The value as UTF-8 text.
    pub fn value_str(&self) -> Result<&str> {
        std::str::from_utf8(&self.value).map_err(|e| Error::msg(format!("value is not UTF-8: {e}")))
    }

    /// The key as UTF-8 text; `None` for a null key or one that is not UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The value parsed as JSON, into any type that implements `Deserialize`.
    ///
    /// ```
    /// let r = weir::Record::new(r#"{"status": 503}"#);
    /// let v: serde_json::Value = r.value_json().unwrap();
    /// assert_eq!(v["status"], 503);
    /// ```
    pub fn value_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.value)
            .map_err(|e| Error::msg(format!("value is not JSON: {e}")))
    }

    /// The value at a dotted `path` (as [`json_path`] reads it) in the value parsed as JSON,
    /// `None` when there is nothing there. Only that field is built, which makes it cheaper than
    /// [`Record::value_json`] when a plugin reads one or two fields of a document.
    ///
    /// ```
    /// let r = weir::Record::new(r#"{"request": {"method": "GET"}, "status": 503}"#);
    /// assert_eq!(r.value_field("request.method").unwrap(), Some(serde_json::json!("GET")));
    /// assert_eq!(r.value_field("missing").unwrap(), None);
    /// assert!(weir::Record::new("not json").value_field("status").is_err());
    /// ```
    pub fn value_field(&self, path: &str) -> Result<Option<serde_json::Value>> {
        crate::json_field::field_at(&self.value, path)
            .map_err(|e| Error::msg(format!("value is not JSON: {e}")))
    }

    /// The value of the first header named `key`.
    pub fn header(&self, key: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| &**v)
    }
}

/// Deploy-time parameters of a plugin (`weir plugin deploy … --param pattern=ERROR`).
///
/// ```
/// let params = weir::Params::from_pairs([("pattern", "ERROR")]);
/// assert_eq!(params.get("pattern"), Some("ERROR"));
/// assert!(params.require("field").is_err());
/// assert_eq!(params.parse_or("window_ms", 60_000u64).unwrap(), 60_000);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params {
    values: BTreeMap<String, String>,
}

impl Params {
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Params {
        Params {
            values: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// The parameter, or an error naming it when it was not given.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key)
            .ok_or_else(|| Error::msg(format!("parameter {key:?} is required")))
    }

    /// The parameter parsed as `T`, or `default` when it was not given.
    pub fn parse_or<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(text) => text
                .parse()
                .map_err(|e| Error::msg(format!("parameter {key}={text:?}: {e}"))),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The error a plugin function returns; the host sends the record it failed on to the
/// pipeline's dead-letter topic with this message in the `weir.error` header.
///
/// Any `std::error::Error` converts into it, so `?` works on parse errors and the like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    message: String,
}

impl Error {
    pub fn msg(message: impl Into<String>) -> Error {
        Error {
            message: message.into(),
        }
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Error {
        Error::msg(error.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The value at a dotted `path` (`"request.method"`, `"tags.0"`) inside a JSON value.
///
/// ```
/// let v = serde_json::json!({"request": {"method": "GET"}, "tags": ["a", "b"]});
/// assert_eq!(weir::json_path(&v, "request.method"), Some(&serde_json::json!("GET")));
/// assert_eq!(weir::json_path(&v, "tags.1"), Some(&serde_json::json!("b")));
/// assert_eq!(weir::json_path(&v, "missing.field"), None);
/// ```
pub fn json_path<'v>(value: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    path.split('.')
        .filter(|part| !part.is_empty())
        .try_fold(value, |value, part| match value {
            serde_json::Value::Object(map) => map.get(part),
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?),
            _ => None,
        })
}
