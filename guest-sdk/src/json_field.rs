//! Reading one field of a JSON document without building the rest: [`crate::Record::value_field`].

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

/// The value at a dotted `path` (as [`crate::json_path`] reads it) in a JSON document, built
/// alone: the rest of the document is read through, so a document that is not JSON is an error,
/// but not kept.
pub(crate) fn field_at(json: &[u8], path: &str) -> serde_json::Result<Option<Value>> {
    let mut document = serde_json::Deserializer::from_slice(json);
    let found = Walk { path }.deserialize(&mut document)?;
    document.end()?;
    Ok(found)
}

/// The path's next part and the parts after it; empty parts are skipped, as [`crate::json_path`]
/// skips them.
fn next_part(path: &str) -> Option<(&str, &str)> {
    let path = path.trim_start_matches('.');
    (!path.is_empty()).then(|| path.split_once('.').unwrap_or((path, "")))
}

/// Reads a JSON value, building only what lies at `path` within it.
struct Walk<'p> {
    path: &'p str,
}

impl<'de> DeserializeSeed<'de> for Walk<'_> {
    type Value = Option<Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<Value>, D::Error> {
        match next_part(self.path) {
            None => serde::Deserialize::deserialize(d).map(Some),
            Some(_) => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Walk<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<Value>, A::Error> {
        let Some((name, rest)) = next_part(self.path) else {
            return Ok(None);
        };
        // A name given twice keeps its last value, as a parsed object does.
        let mut found = None;
        while let Some(matches) = map.next_key_seed(KeyIs(name))? {
            if matches {
                found = map.next_value_seed(Walk { path: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Option<Value>, A::Error> {
        let wanted =
            next_part(self.path).and_then(|(i, rest)| Some((i.parse::<usize>().ok()?, rest)));
        let mut found = None;
        let mut index = 0;
        loop {
            match wanted {
                Some((i, rest)) if i == index => {
                    match items.next_element_seed(Walk { path: rest })? {
                        Some(value) => found = value,
                        None => break,
                    }
                }
                _ => {
                    if items.next_element::<IgnoredAny>()?.is_none() {
                        break;
                    }
                }
            }
            index += 1;
        }
        Ok(found)
    }

    // A scalar has no fields: the path goes on past it, so there is nothing there.
    fn visit_bool<E>(self, _: bool) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_str<E>(self, _: &str) -> Result<Option<Value>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<Value>, E> {
        Ok(None)
    }
}

/// Whether an object's next name is the one wanted, read without copying it.
struct KeyIs<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object's name")
    }

    fn visit_str<E>(self, name: &str) -> Result<bool, E> {
        Ok(name == self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_is_read_as_a_parsed_document_would_give_it() {
        let line = r#"{"a": {"b": [1, {"c": "x\"y"}, 3]}, "n": null, "a.b": 7, "d": 1, "d": 2}"#;
        for path in [
            "a",
            "a.b",
            "a.b.0",
            "a.b.1.c",
            "a.b.2",
            "a.b.3",
            "a.b.x",
            "n",
            "n.m",
            "d",
            "a..b",
            ".a.b.1",
            "a.b.1.c.z",
            "",
        ] {
            let parsed: Value = serde_json::from_str(line).unwrap();
            assert_eq!(
                field_at(line.as_bytes(), path).unwrap(),
                crate::json_path(&parsed, path).cloned(),
                "{path}"
            );
        }
        // The rest of the document is still read: a record that is not valid JSON has no fields.
        assert!(field_at(br#"{"status": 503, "x": }"#, "status").is_err());
        assert!(field_at(br#"{"status": 503} trailing"#, "status").is_err());
    }
}
