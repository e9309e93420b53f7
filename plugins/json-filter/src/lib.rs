//! `json-filter`: keeps records whose JSON value has `field` (a dotted path) matching one test:
//! `equals`, `not_equals`, `contains` (text), or `gt`/`gte`/`lt`/`lte` (numbers).
//! Records that are not JSON, or lack the field, are dropped.
//!
//! ```text
//! weir plugin deploy server-errors json_filter.wasm --param field=status --param gte=500
//! ```

use weir::serde_json::Value;
use weir::{Error, Params, Record, Result};

/// The comparisons, by parameter name.
const TESTS: [&str; 7] = ["equals", "not_equals", "contains", "gt", "gte", "lt", "lte"];

#[weir::filter]
pub fn json_filter(r: &Record, params: &Params) -> Result<bool> {
    let field = params.require("field")?;
    let mut given = TESTS
        .iter()
        .filter_map(|name| Some((*name, params.get(name)?)));
    let (test, expected) = given
        .next()
        .ok_or_else(|| Error::msg(format!("one of the parameters {TESTS:?} is required")))?;
    let Ok(Some(actual)) = r.value_field(field) else {
        return Ok(false);
    };
    let text = match &actual {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let number = |bound: &str| -> Result<Option<(f64, f64)>> {
        let bound: f64 = bound
            .parse()
            .map_err(|_| Error::msg(format!("{test}={bound:?} is not a number")))?;
        Ok(actual
            .as_f64()
            .or_else(|| text.parse().ok())
            .map(|n| (n, bound)))
    };
    Ok(match test {
        "equals" => text == expected,
        "not_equals" => text != expected,
        "contains" => text.contains(expected),
        "gt" => number(expected)?.is_some_and(|(n, b)| n > b),
        "gte" => number(expected)?.is_some_and(|(n, b)| n >= b),
        "lt" => number(expected)?.is_some_and(|(n, b)| n < b),
        _ => number(expected)?.is_some_and(|(n, b)| n <= b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(value: &str, params: &[(&str, &str)]) -> Result<bool> {
        json_filter(
            &Record::new(value),
            &Params::from_pairs(params.iter().copied()),
        )
    }

    #[test]
    fn compares_numbers_and_text() {
        let line = r#"{"status": 503, "host": "web-1", "req": {"path": "/api/x"}}"#;
        assert_eq!(
            check(line, &[("field", "status"), ("gte", "500")]),
            Ok(true)
        );
        assert_eq!(
            check(line, &[("field", "status"), ("lt", "500")]),
            Ok(false)
        );
        assert_eq!(
            check(line, &[("field", "status"), ("equals", "503")]),
            Ok(true)
        );
        assert_eq!(
            check(line, &[("field", "host"), ("equals", "web-1")]),
            Ok(true)
        );
        assert_eq!(
            check(line, &[("field", "host"), ("not_equals", "web-1")]),
            Ok(false)
        );
        assert_eq!(
            check(line, &[("field", "req.path"), ("contains", "/api/")]),
            Ok(true)
        );
    }

    #[test]
    fn numbers_in_strings_compare_as_numbers() {
        assert_eq!(
            check(
                r#"{"status": "404"}"#,
                &[("field", "status"), ("gt", "400")]
            ),
            Ok(true)
        );
    }

    #[test]
    fn records_without_the_field_are_dropped() {
        assert_eq!(
            check("not json", &[("field", "status"), ("gte", "500")]),
            Ok(false)
        );
        assert_eq!(
            check(r#"{"other": 1}"#, &[("field", "status"), ("gte", "500")]),
            Ok(false)
        );
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(check("{}", &[("gte", "1")]).is_err());
        assert!(check("{}", &[("field", "status")]).is_err());
        assert!(check(r#"{"status": 1}"#, &[("field", "status"), ("gte", "many")]).is_err());
    }
}
