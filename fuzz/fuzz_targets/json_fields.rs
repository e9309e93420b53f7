//! The scan that reads typed columns' fields out of JSON values, against `serde_json`: on any
//! UTF-8 text with fewer open brackets than the nesting bound, it accepts exactly the single
//! JSON objects `serde_json` accepts, and each field it hands back is one whole JSON value lying
//! in the text. On any other input it must only not crash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use weir_sql::value_schema::{JSON_DEPTH_MAX, raw_fields};

fuzz_target!(|data: &[u8]| {
    let keys = ["a".to_owned(), "status".to_owned(), "é".to_owned()];
    let mut slots = [None; 3];
    let accepted = raw_fields(data, &keys, &mut slots);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let opening = data.iter().filter(|&&b| b == b'[' || b == b'{').count();
    if opening <= JSON_DEPTH_MAX {
        let serde =
            text.trim_start().starts_with('{') && serde_json::from_str::<IgnoredAny>(text).is_ok();
        assert_eq!(accepted, serde, "{text:?}");
    }
    if accepted {
        let range = data.as_ptr_range();
        for field in slots.into_iter().flatten() {
            assert!(
                range.contains(&field.as_ptr()),
                "{field:?} lies in the text"
            );
            assert!(
                serde_json::from_str::<IgnoredAny>(field).is_ok() && field.trim() == field,
                "{field:?} is one JSON value"
            );
        }
    }
});
