//! How much memory decoding an ingestion body takes, found before it is decoded. A body's
//! wire size says little: an empty OTLP log record is two bytes of protobuf and a few hundred
//! decoded, and `{}` is three bytes of JSON and a whole record decoded. So each body is walked
//! first, cheaply and without allocating, and its weight is held from the node's request memory
//! (`--request-memory-mib`) while it is decoded.

use prost::encoding::decode_varint;

/// What a protobuf message decodes into, for weighing.
pub struct Shape {
    /// Bytes of the decoded message itself.
    pub bytes: usize,
    /// Its fields that are messages, by field number.
    pub messages: &'static [(u32, &'static Shape)],
    /// Its repeated number fields: each value is at most eight bytes decoded, and packed, at
    /// least one on the wire.
    pub numbers: &'static [u32],
    /// Its repeated string and bytes fields: each value is a vector besides its bytes.
    pub strings: &'static [u32],
}

impl Shape {
    /// A message of `T` whose fields are neither messages nor repeated numbers or strings.
    pub const fn leaf<T>() -> Shape {
        Shape {
            bytes: size_of::<T>(),
            messages: &[],
            numbers: &[],
            strings: &[],
        }
    }
}

/// Bytes a value of a repeated number field takes decoded, its vector grown by doubling.
const NUMBER_BYTES: usize = 2 * size_of::<u64>();

/// Bytes a value of a repeated string field takes decoded besides its text.
const STRING_BYTES: usize = 2 * size_of::<Vec<u8>>();

/// Deepest nesting of messages read, as the protobuf decoder's own recursion limit.
const DEPTH_MAX: usize = 100;

/// Bytes of a JSON value that is neither an object nor an array, besides its text.
const JSON_VALUE_BYTES: usize = 64;

/// An upper bound of the bytes decoding `body` as a message of `shape` allocates: each message
/// twice its size (vectors grow by doubling), each string or bytes field its length, each value
/// of a repeated field what its vector holds of it. Other fields cost what their length is (a
/// decoder skips unknown ones, but a string is copied). Refuses a body that is not protobuf.
pub fn protobuf(body: &[u8], shape: &Shape) -> Result<usize, String> {
    message(body, shape, 0).map(|weight| weight + 2 * shape.bytes)
}

fn message(mut body: &[u8], shape: &Shape, depth: usize) -> Result<usize, String> {
    if depth > DEPTH_MAX {
        return Err(format!("messages nested more than {DEPTH_MAX} deep"));
    }
    let mut weight = 0usize;
    while !body.is_empty() {
        let key = decode_varint(&mut body).map_err(|e| e.to_string())?;
        let field = u32::try_from(key >> 3).unwrap_or(0);
        if field == 0 {
            return Err("field number 0".to_string());
        }
        let wire = key & 7;
        if matches!(wire, 0 | 1 | 5) && shape.numbers.contains(&field) {
            weight = weight.saturating_add(NUMBER_BYTES);
        }
        let skip = match wire {
            0 => {
                decode_varint(&mut body).map_err(|e| e.to_string())?;
                0
            }
            1 => 8,
            5 => 4,
            2 => {
                let len = decode_varint(&mut body).map_err(|e| e.to_string())?;
                let len = usize::try_from(len)
                    .ok()
                    .filter(|len| *len <= body.len())
                    .ok_or_else(|| format!("field {field} is longer than the message"))?;
                let (inner, _) = body.split_at(len);
                weight = weight.saturating_add(
                    match shape.messages.iter().find(|(number, _)| *number == field) {
                        Some((_, child)) => {
                            message(inner, child, depth + 1)?.saturating_add(2 * child.bytes)
                        }
                        None if shape.numbers.contains(&field) => len.saturating_mul(NUMBER_BYTES),
                        None if shape.strings.contains(&field) => len.saturating_add(STRING_BYTES),
                        None => len,
                    },
                );
                len
            }
            _ => {
                return Err(format!(
                    "field {field} has wire type {wire}, which is not read"
                ));
            }
        };
        if skip > body.len() {
            return Err(format!("field {field} is cut short"));
        }
        body = &body[skip..];
    }
    Ok(weight)
}

/// An upper bound of the bytes decoding `body` as JSON into typed values allocates: every object
/// or array twice `element_bytes` (the largest value it may become, in a vector grown by
/// doubling), every other value [`JSON_VALUE_BYTES`], and the text of the body. Does not check
/// that it is JSON.
pub fn json(body: &[u8], element_bytes: usize) -> usize {
    let (mut elements, mut values) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for byte in body {
        match (in_string, byte) {
            (true, _) if escaped => escaped = false,
            (true, b'\\') => escaped = true,
            (true, b'"') => in_string = false,
            (true, _) => {}
            (false, b'"') => in_string = true,
            (false, b'{' | b'[') => elements += 1,
            (false, b',' | b':') => values += 1,
            (false, _) => {}
        }
    }
    body.len()
        .saturating_add(elements.saturating_mul(2 * element_bytes))
        .saturating_add(values.saturating_mul(JSON_VALUE_BYTES))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use prost::encoding::encode_varint;

    use super::*;

    static INNER: Shape = Shape {
        bytes: 100,
        messages: &[(1, &INNER)],
        numbers: &[3],
        strings: &[5],
    };
    static OUTER: Shape = Shape {
        bytes: 10,
        messages: &[(2, &INNER)],
        ..Shape::leaf::<()>()
    };

    fn field(number: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_varint(u64::from(number) << 3 | 2, &mut out);
        encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn an_empty_message_weighs_what_it_decodes_into() {
        let body = field(2, &[]).repeat(1000);
        // The request, then a thousand empty messages of 100 bytes, vectors grown by doubling.
        assert_eq!(protobuf(&body, &OUTER).unwrap(), 20 + 1000 * 200);
    }

    #[test]
    fn strings_weigh_their_length_and_repeated_values_what_their_vectors_hold() {
        let mut inner = field(4, b"hello");
        inner.extend(field(5, b"hello"));
        inner.extend(field(3, &[1, 2, 3]));
        inner.extend([3 << 3, 7]);
        let body = field(2, &inner);
        let weight = 20 + 200 + 5 + (STRING_BYTES + 5) + 3 * NUMBER_BYTES + NUMBER_BYTES;
        assert_eq!(protobuf(&body, &OUTER).unwrap(), weight);
    }

    #[test]
    fn bodies_that_are_not_protobuf_or_nest_too_deep_are_refused() {
        assert!(protobuf(&[0x12, 0x05, 0x01], &OUTER).is_err(), "cut short");
        assert!(protobuf(&[0x0b], &OUTER).is_err(), "a group");
        assert!(protobuf(&[0x00, 0x00], &OUTER).is_err(), "field 0");
        let deep = (0..=DEPTH_MAX).fold(Vec::new(), |inner, _| field(1, &inner));
        let error = protobuf(&field(2, &deep), &OUTER).err().unwrap();
        assert!(error.contains("nested more than 100"), "{error}");
    }

    #[test]
    fn json_weighs_its_elements_and_values_but_not_what_strings_hold() {
        assert_eq!(json(b"[{},{}]", 100), 7 + 600 + JSON_VALUE_BYTES);
        assert_eq!(json(br#"{"a{[,:\"":1}"#, 100), 13 + 200 + JSON_VALUE_BYTES);
    }
}
