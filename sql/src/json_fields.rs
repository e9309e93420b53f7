//! The top-level fields of a JSON object, found without building it: one pass checks that the
//! whole text is well-formed JSON and hands back the raw text of the fields asked for.
//!
//! Strings, where most of a log record's bytes are, are crossed eight bytes at a time (one word
//! tested at once for a quote, a backslash or a control character); the rest of the grammar is
//! checked byte by byte.

/// How deep arrays and objects may nest, the top-level object counting as one; deeper values
/// are refused, as `serde_json` refuses them.
pub const JSON_DEPTH_MAX: usize = 128;

/// Fills `slots` (one per key of `keys`) with the raw JSON text of the top-level fields of
/// `bytes` those keys name, the last one when a name repeats; the others are skipped unbuilt.
/// False, with the slots to be ignored, when `bytes` is not one JSON object or a field read
/// is not UTF-8.
pub fn raw_fields<'v>(bytes: &'v [u8], keys: &[String], slots: &mut [Option<&'v str>]) -> bool {
    slots.fill(None);
    let mut scan = Scan { text: bytes, at: 0 };
    let object = scan.expect(b'{').and_then(|()| scan.object(1, keys, slots));
    object.is_some() && {
        scan.space();
        scan.at == bytes.len()
    }
}

/// A position in a JSON text; each step answers `None` when the text is not JSON there.
struct Scan<'v> {
    text: &'v [u8],
    at: usize,
}

impl<'v> Scan<'v> {
    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.at) {
            self.at += 1;
        }
    }

    /// The next byte after white space, consumed.
    fn next(&mut self) -> Option<u8> {
        self.space();
        let b = *self.text.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        (self.next()? == b).then_some(())
    }

    /// An object whose opening brace was just consumed, inside `depth` open containers
    /// counting itself; the text of its fields named by `keys` goes into `slots`.
    fn object(
        &mut self,
        depth: usize,
        keys: &[String],
        slots: &mut [Option<&'v str>],
    ) -> Option<()> {
        if depth > JSON_DEPTH_MAX {
            return None;
        }
        if self.close_or_first(b'}')? {
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            let (name, escaped) = self.string_body()?;
            self.expect(b':')?;
            self.space();
            let start = self.at;
            self.value(depth)?;
            if let Some(slot) = position(keys, name, escaped) {
                slots[slot] = Some(std::str::from_utf8(&self.text[start..self.at]).ok()?);
            }
            if self.item_end(b'}')? {
                return Some(());
            }
        }
    }

    /// An array whose opening bracket was just consumed, inside `depth` open containers
    /// counting itself.
    fn array(&mut self, depth: usize) -> Option<()> {
        if depth > JSON_DEPTH_MAX {
            return None;
        }
        if self.close_or_first(b']')? {
            return Some(());
        }
        loop {
            self.value(depth)?;
            if self.item_end(b']')? {
                return Some(());
            }
        }
    }

    /// Just after an opening bracket: true when `close` follows at once (the container is
    /// empty and closed), false when a first item follows.
    fn close_or_first(&mut self, close: u8) -> Option<bool> {
        self.space();
        let empty = *self.text.get(self.at)? == close;
        self.at += usize::from(empty);
        Some(empty)
    }

    /// After an item: true at the container's closing bracket `close`, false at a comma.
    fn item_end(&mut self, close: u8) -> Option<bool> {
        match self.next()? {
            b',' => Some(false),
            b if b == close => Some(true),
            _ => None,
        }
    }

    /// One value, inside `depth` open containers.
    fn value(&mut self, depth: usize) -> Option<()> {
        match self.next()? {
            b'"' => self.string_body().map(drop),
            b'{' => self.object(depth + 1, &[], &mut []),
            b'[' => self.array(depth + 1),
            b't' => self.word(b"rue"),
            b'f' => self.word(b"alse"),
            b'n' => self.word(b"ull"),
            b'-' | b'0'..=b'9' => {
                self.at -= 1;
                self.number()
            }
            _ => None,
        }
    }

    fn word(&mut self, rest: &[u8]) -> Option<()> {
        let end = self.at + rest.len();
        (self.text.get(self.at..end)? == rest).then_some(())?;
        self.at = end;
        Some(())
    }

    /// A number: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<()> {
        self.at += usize::from(self.text[self.at] == b'-');
        match self.text.get(self.at)? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.text.get(self.at) == Some(&b'.') {
            self.at += 1;
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.text.get(self.at) {
            self.at += 1;
            self.at += usize::from(matches!(self.text.get(self.at), Some(b'+' | b'-')));
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_digit) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    /// The rest of a string whose opening quote was just consumed: its text between the quotes
    /// and whether that holds an escape.
    fn string_body(&mut self) -> Option<(&'v [u8], bool)> {
        let start = self.at;
        let mut escaped = false;
        loop {
            self.at = special(self.text, self.at)?;
            let b = self.text[self.at];
            self.at += 1;
            if b == b'"' {
                return Some((&self.text[start..self.at - 1], escaped));
            }
            if b != b'\\' {
                return None;
            }
            escaped = true;
            match *self.text.get(self.at)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    let hex = self.text.get(self.at + 1..self.at + 5)?;
                    hex.iter().all(u8::is_ascii_hexdigit).then_some(())?;
                    self.at += 5;
                }
                _ => return None,
            }
        }
    }
}

/// Where the first byte at or after `at` that a string cannot hold as it is lies: a quote, a
/// backslash or a control character. Eight bytes are tested at a time.
fn special(text: &[u8], mut at: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // Flags the bytes of `word` below `n`. A borrow can flag a byte wrongly only above one
    // rightly flagged, so the lowest flagged byte is always right, and it is the only one used
    // (also of the three tests together: each one's lowest is right, so theirs is too).
    let below = |word: u64, n: u8| word.wrapping_sub(ONES * u64::from(n)) & !word & HIGH;
    let equal = |word: u64, b: u8| below(word ^ (ONES * u64::from(b)), 1);
    while let Some(chunk) = text.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let found = equal(word, b'"') | equal(word, b'\\') | below(word, 0x20);
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = text.get(at..)?;
    let found = tail
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
    Some(at + found)
}

/// Which of `keys` a field name is: its text between the quotes, decoded first when it holds
/// an escape.
fn position(keys: &[String], name: &[u8], escaped: bool) -> Option<usize> {
    if !escaped || keys.is_empty() {
        return keys.iter().position(|k| k.as_bytes() == name);
    }
    let mut quoted = Vec::with_capacity(name.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(name);
    quoted.push(b'"');
    let name: String = serde_json::from_slice(&quoted).ok()?;
    keys.iter().position(|k| *k == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `text` passes the scan, asking for no field.
    fn scans(text: &str) -> bool {
        raw_fields(text.as_bytes(), &[], &mut [])
    }

    #[test]
    fn accepts_what_serde_json_accepts_and_refuses_what_it_refuses() {
        let texts = [
            "{}",
            " { } ",
            r#"{"a":1}"#,
            r#"{"a":-0.5e+10,"b":[],"c":{},"d":[1,[2,[3]],{"e":null}],"f":true,"g":false}"#,
            r#"{"s":"tab\tnew\nquote\"back\\slash\/\u00e9\uD83D\uDE00"}"#,
            "{\"s\":\"é ü 日本\"}",
            "{\"a\":1}\n",
            "{\"a\"\t:\r\n1 , \"b\" : 2 }",
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"a":1e}"#,
            r#"{"a":-}"#,
            r#"{"a":+1}"#,
            r#"{"a":tru}"#,
            r#"{"a":nul}"#,
            r#"{"a":truex}"#,
            r#"{"a":1,}"#,
            r#"{,"a":1}"#,
            r#"{"a" 1}"#,
            r#"{"a":1 "b":2}"#,
            r#"{"a":[1,]}"#,
            r#"{"a":[1 2]}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":{"b":1,}}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12"}"#,
            r#"{"a":"\u12G4"}"#,
            "{\"a\":\"raw\nnewline\"}",
            r#"{"a":"open}"#,
            r#"{"a":1"#,
            r#"{"a":[1}"#,
            r#"{"a":{"b":1]}"#,
            r#"{a:1}"#,
            r#"{"a":1}}"#,
            r#"{"a":1} x"#,
            "[1]",
            "1",
            "",
            "   ",
            "{",
            "{\"a\":\"\\",
        ];
        for text in texts {
            let serde = serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
                && text.trim_start().starts_with('{');
            assert_eq!(scans(text), serde, "{text:?}");
        }
    }

    #[test]
    fn finds_the_first_byte_a_string_cannot_hold_wherever_it_lies_in_a_word() {
        let plain = |b: u8| b != b'"' && b != b'\\' && b >= 0x20;
        let fills: Vec<u8> = (0..=255u8).filter(|&b| plain(b)).collect();
        for fill in fills {
            for len in 0..20 {
                for (at, special_byte) in
                    (0..len).flat_map(|at| [b'"', b'\\', 0x00, 0x1f, b'\n'].map(|b| (at, b)))
                {
                    let mut text = vec![fill; len];
                    text[at] = special_byte;
                    // A second special byte further on must not be found first.
                    if at + 3 < len {
                        text[at + 3] = b'"';
                    }
                    for start in 0..=at {
                        assert_eq!(special(&text, start), Some(at), "{text:?} from {start}");
                    }
                }
                assert_eq!(special(&vec![fill; len], 0), None);
            }
        }
    }

    #[test]
    fn refuses_nesting_deeper_than_the_bound() {
        let nested = |depth: usize| {
            let inner = depth - 1;
            format!("{{\"a\":{}{}}}", "[".repeat(inner), "]".repeat(inner))
        };
        assert!(scans(&nested(JSON_DEPTH_MAX)));
        assert!(!scans(&nested(JSON_DEPTH_MAX + 1)));
        // Far deeper than any stack would take, refused without recursing that far.
        assert!(!scans(&nested(1_000_000)));
    }

    #[test]
    fn reads_the_last_of_a_repeated_name_and_decodes_escaped_names() {
        let keys = ["status".to_owned(), "host".to_owned(), "none".to_owned()];
        let mut slots = [None; 3];
        let text = r#"{"status" : 1, "host":  "a\"b" , "s\u0074atus":[2, {"x":3}] }"#;
        assert!(raw_fields(text.as_bytes(), &keys, &mut slots));
        assert_eq!(slots, [Some(r#"[2, {"x":3}]"#), Some(r#""a\"b""#), None]);
    }
}
