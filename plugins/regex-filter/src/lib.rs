//! `regex-filter`: keeps the records whose value matches `pattern`, or drops them with
//! `mode=drop`.
//!
//! ```text
//! weir plugin deploy errors target/wasm32-unknown-unknown/release/regex_filter.wasm --param pattern='5\d\d'
//! ```

use std::cell::RefCell;

use regex::Regex;
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
    let text = String::from_utf8_lossy(&r.value);
    let matched = PATTERN.with_borrow_mut(|cached| -> Result<bool> {
        if cached.as_ref().is_none_or(|(source, _)| source != pattern) {
            let regex =
                Regex::new(pattern).map_err(|e| Error::msg(format!("pattern {pattern:?}: {e}")))?;
            *cached = Some((pattern.to_owned(), regex));
        }
        Ok(cached
            .as_ref()
            .is_some_and(|(_, regex)| regex.is_match(&text)))
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
