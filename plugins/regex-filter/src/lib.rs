//! `regex-filter`: keeps the records whose value matches `pattern`, or drops them with
//! `mode=drop`.
//!
//! The pattern runs over the value's bytes, so a value need not be valid UTF-8 and is not
//! checked or copied first. Unicode classes (`.`, `\w`, `\d`) match only well-formed UTF-8;
//! `(?-u:.)` matches any byte.
//!
//! ```text
//! weir plugin deploy errors target/wasm32-unknown-unknown/release/regex_filter.wasm --param pattern='5\d\d'
//! ```

use std::cell::RefCell;

use regex::bytes::Regex;
use weir::{Error, Params, Record, Result};

thread_local! {
    /// The compiled pattern, built once per instance (and again if the pattern differs, as it
    /// can between native tests).
    static PATTERN: RefCell<Option<(String, Regex)>> = const { RefCell::new(None) };
}

#[weir::filter]
pub fn regex_filter(r: &Record, params: &Params) -> Result<bool> {
    let pattern = params.require("pattern")?;
    let keep = match params.get("mode").unwrap_or("keep") {
        "keep" => true,
        "drop" => false,
        other => return Err(Error::msg(format!("mode={other:?}: expected keep or drop"))),
    };
    let matched = PATTERN.with_borrow_mut(|cached| -> Result<bool> {
        if cached.as_ref().is_none_or(|(source, _)| source != pattern) {
            let regex =
                Regex::new(pattern).map_err(|e| Error::msg(format!("pattern {pattern:?}: {e}")))?;
            *cached = Some((pattern.to_owned(), regex));
        }
        Ok(cached
            .as_ref()
            .is_some_and(|(_, regex)| regex.is_match(&r.value)))
    })?;
    Ok(matched == keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(line: &str, params: &[(&str, &str)]) -> Result<bool> {
        regex_filter(
            &Record::new(line),
            &Params::from_pairs(params.iter().copied()),
        )
    }

    #[test]
    fn keeps_matching_values() {
        assert_eq!(check("GET / 503", &[("pattern", r"\s5\d\d$")]), Ok(true));
        assert_eq!(check("GET / 200", &[("pattern", r"\s5\d\d$")]), Ok(false));
    }

    #[test]
    fn drop_mode_inverts() {
        assert_eq!(
            check("DEBUG x", &[("pattern", "DEBUG"), ("mode", "drop")]),
            Ok(false)
        );
        assert_eq!(
            check("INFO x", &[("pattern", "DEBUG"), ("mode", "drop")]),
            Ok(true)
        );
    }

    #[test]
    fn values_need_not_be_utf8() {
        let value = b"host=\xff\xfe status=503".as_slice();
        let r = Record::new(value);
        let params = |pattern| Params::from_pairs([("pattern", pattern)]);
        assert_eq!(regex_filter(&r, &params(r"status=5\d\d")), Ok(true));
        assert_eq!(regex_filter(&r, &params(r"host=(?-u:.)")), Ok(true));
        assert_eq!(regex_filter(&r, &params(r"host=\w")), Ok(false));
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(
            check("x", &[])
                .unwrap_err()
                .message()
                .contains("\"pattern\" is required")
        );
        assert!(
            check("x", &[("pattern", "(")])
                .unwrap_err()
                .message()
                .contains("pattern \"(\"")
        );
        assert!(check("x", &[("pattern", "x"), ("mode", "maybe")]).is_err());
    }
}
