//! The statements about SQL pipelines, which DataFusion's parser does not know:
//!
//! ```sql
//! CREATE PIPELINE name AS INSERT INTO topic SELECT … [WITH (option = 'value', …)]
//! DROP PIPELINE [IF EXISTS] name
//! ALTER PIPELINE name PAUSE | RESUME
//! SHOW PIPELINES
//! DESCRIBE PIPELINE name
//! CREATE FUNCTION name AS PLUGIN 'plugin'
//! DROP FUNCTION [IF EXISTS] name
//! ```
//!
//! Options: `watermark_delay` and `idle_timeout` (intervals such as `'10 seconds'`), `start`
//! (`earliest`, `latest` or an RFC 3339 time).

use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{Statement, TableObject};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::Error;
use crate::create_as::topic_of;

/// How long the watermark stays behind the largest event time when a statement does not say.
pub const WATERMARK_DELAY_DEFAULT_MS: i64 = 5_000;
/// How long a partition may be silent before it stops holding the watermark back.
pub const IDLE_TIMEOUT_DEFAULT_MS: i64 = 30_000;
/// The longest watermark delay or idle timeout: a day.
const DELAY_MS_MAX: i64 = 86_400_000;

/// A statement about pipelines or functions.
pub enum Command {
    Create(CreatePipeline),
    Drop {
        name: String,
        if_exists: bool,
    },
    Alter {
        name: String,
        pause: bool,
    },
    Show,
    Describe(String),
    CreateFunction {
        name: String,
        plugin: String,
    },
    DropFunction {
        name: String,
        if_exists: bool,
    },
    /// `CREATE VIEW name AS query`
    CreateView {
        name: String,
        query: String,
    },
    DropView {
        name: String,
        if_exists: bool,
    },
}

#[derive(Clone, Debug, PartialEq)]
pub struct CreatePipeline {
    pub name: String,
    pub output: String,
    /// The `SELECT` that makes the output's rows.
    pub query: String,
    pub options: Options,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub watermark_delay_ms: i64,
    pub idle_timeout_ms: i64,
    /// Where reading starts, as a pipeline's `from_offset`: `earliest`, `latest`, `@<ms>`.
    pub start: String,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            watermark_delay_ms: WATERMARK_DELAY_DEFAULT_MS,
            idle_timeout_ms: IDLE_TIMEOUT_DEFAULT_MS,
            start: "latest".into(),
        }
    }
}

fn tokens(sql: &str) -> Option<Vec<Token>> {
    Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()
}

fn is_blank(token: &Token) -> bool {
    matches!(token, Token::Whitespace(_) | Token::SemiColon | Token::EOF)
}

fn word(token: &Token) -> Option<&str> {
    match token {
        Token::Word(w) => Some(w.value.as_str()),
        _ => None,
    }
}

fn keyword(token: &Token, expected: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(expected))
}

/// The pipeline or function statement `sql` is, if it is one; `None` leaves it to the query
/// path.
pub fn parse(sql: &str) -> Result<Option<Command>, Error> {
    let Some(all) = tokens(sql) else {
        return Ok(None);
    };
    let solid: Vec<&Token> = all.iter().filter(|t| !is_blank(t)).collect();
    let is = |i: usize, expected: &str| solid.get(i).is_some_and(|t| keyword(t, expected));
    let name_at = |i: usize| -> Result<String, Error> {
        solid
            .get(i)
            .and_then(|t| word(t))
            .map(str::to_owned)
            .ok_or_else(|| Error::Refused("expected a name".into()))
    };
    let ends_at = |i: usize, usage: &str| -> Result<(), Error> {
        match solid.len() == i {
            true => Ok(()),
            false => Err(Error::Refused(format!("expected {usage}"))),
        }
    };
    // `DROP <kind> [IF EXISTS] name`: the name and whether it may be missing.
    let dropped = |kind: &str| -> Result<(String, bool), Error> {
        let if_exists = is(2, "IF") && is(3, "EXISTS");
        let at = if if_exists { 4 } else { 2 };
        let name = name_at(at)?;
        ends_at(at + 1, &format!("DROP {kind} [IF EXISTS] name"))?;
        Ok((name, if_exists))
    };
    if is(0, "SHOW") && is(1, "PIPELINES") {
        ends_at(2, "SHOW PIPELINES")?;
        return Ok(Some(Command::Show));
    }
    if (is(0, "DESCRIBE") || is(0, "DESC")) && is(1, "PIPELINE") {
        let name = name_at(2)?;
        ends_at(3, "DESCRIBE PIPELINE name")?;
        return Ok(Some(Command::Describe(name)));
    }
    if is(0, "DROP") && is(1, "PIPELINE") {
        let (name, if_exists) = dropped("PIPELINE")?;
        return Ok(Some(Command::Drop { name, if_exists }));
    }
    if is(0, "ALTER") && is(1, "PIPELINE") {
        let name = name_at(2)?;
        let pause = match () {
            () if is(3, "PAUSE") => true,
            () if is(3, "RESUME") => false,
            () => {
                return Err(Error::Refused(
                    "expected ALTER PIPELINE name PAUSE or ALTER PIPELINE name RESUME".into(),
                ));
            }
        };
        ends_at(4, "ALTER PIPELINE name PAUSE|RESUME")?;
        return Ok(Some(Command::Alter { name, pause }));
    }
    if is(0, "CREATE") && is(1, "FUNCTION") {
        let usage = "CREATE FUNCTION name AS PLUGIN 'plugin'";
        let plugin = match solid.get(5) {
            Some(Token::SingleQuotedString(plugin)) if is(3, "AS") && is(4, "PLUGIN") => plugin,
            _ => return Err(Error::Refused(format!("expected {usage}"))),
        };
        let name = name_at(2)?;
        ends_at(6, usage)?;
        return Ok(Some(Command::CreateFunction {
            name,
            plugin: plugin.clone(),
        }));
    }
    if is(0, "DROP") && is(1, "FUNCTION") {
        let (name, if_exists) = dropped("FUNCTION")?;
        return Ok(Some(Command::DropFunction { name, if_exists }));
    }
    if is(0, "DROP") && is(1, "VIEW") {
        let (name, if_exists) = dropped("VIEW")?;
        return Ok(Some(Command::DropView { name, if_exists }));
    }
    if is(0, "CREATE") && is(1, "OR") && is(2, "REPLACE") && is(3, "VIEW") {
        return Err(Error::Refused(
            "a view is not replaced (a view that others read would change under them): DROP VIEW name, then CREATE VIEW name AS SELECT …".into(),
        ));
    }
    if is(0, "CREATE") && is(1, "VIEW") {
        let (name, body) = named_body(&all, VIEW_USAGE)?;
        let (text, statement) = one_statement(body, VIEW_USAGE)?;
        if !matches!(statement, Statement::Query(_)) {
            return Err(Error::Refused(VIEW_USAGE.into()));
        }
        return Ok(Some(Command::CreateView { name, query: text }));
    }
    if is(0, "CREATE") && is(1, "PIPELINE") {
        return create(&all).map(|c| Some(Command::Create(c)));
    }
    Ok(None)
}

const VIEW_USAGE: &str = "expected CREATE VIEW name AS SELECT …";

/// `tokens` as text and as the one SQL statement they must be.
fn one_statement(tokens: &[Token], usage: &str) -> Result<(String, Statement), Error> {
    let text: String = tokens.iter().map(ToString::to_string).collect();
    let mut parser = DFParserBuilder::new(text.as_str())
        .with_dialect(&PostgreSqlDialect {})
        .build()?;
    let statements = Vec::from(parser.parse_statements()?);
    match <[DfStatement; 1]>::try_from(statements) {
        Ok([DfStatement::Statement(statement)]) => Ok((text, *statement)),
        _ => Err(Error::Refused(usage.into())),
    }
}

/// The name and the statement after `AS` of `CREATE <kind> name AS …`, without trailing blanks.
fn named_body<'t>(all: &'t [Token], usage: &str) -> Result<(String, &'t [Token]), Error> {
    let usage = || Error::Refused(usage.into());
    let mut solid_seen = 0;
    let mut name = None;
    let mut body_start = None;
    for (index, token) in all.iter().enumerate() {
        if is_blank(token) {
            continue;
        }
        solid_seen += 1;
        match solid_seen {
            3 => name = word(token).map(str::to_owned),
            4 if keyword(token, "AS") => {
                body_start = Some(index + 1);
                break;
            }
            4 => return Err(usage()),
            _ => {}
        }
    }
    let (name, body_start) = (name.ok_or_else(usage)?, body_start.ok_or_else(usage)?);
    let mut body = &all[body_start..];
    while body.last().is_some_and(is_blank) {
        body = &body[..body.len() - 1];
    }
    Ok((name, body))
}

const CREATE_USAGE: &str =
    "expected CREATE PIPELINE name AS INSERT INTO topic SELECT … [WITH (option = 'value', …)]";

fn create(all: &[Token]) -> Result<CreatePipeline, Error> {
    let usage = || Error::Refused(CREATE_USAGE.into());
    // CREATE, PIPELINE, name, AS: the statement is what follows.
    let (name, body) = named_body(all, CREATE_USAGE)?;
    let (body, options) = match trailing_with(body) {
        Some(at) => (&body[..at], options(&body[at..])?),
        None => (body, Options::default()),
    };
    let (_, statement) = one_statement(body, CREATE_USAGE)?;
    let Statement::Insert(insert) = &statement else {
        return Err(usage());
    };
    let (TableObject::TableName(table), Some(source)) = (&insert.table, &insert.source) else {
        return Err(usage());
    };
    if !insert.columns.is_empty() {
        return Err(Error::Refused(
            "CREATE PIPELINE … INSERT INTO topic takes no column list: name the columns in the SELECT".into(),
        ));
    }
    Ok(CreatePipeline {
        name,
        output: topic_of(table)?,
        query: source.to_string(),
        options,
    })
}

/// Where a trailing `WITH (…)` starts in `body`, if it ends with one.
fn trailing_with(body: &[Token]) -> Option<usize> {
    if !matches!(body.last(), Some(Token::RParen)) {
        return None;
    }
    let mut depth = 0i32;
    for index in (0..body.len()).rev() {
        match &body[index] {
            Token::RParen => depth += 1,
            Token::LParen => {
                depth -= 1;
                if depth == 0 {
                    let before = body[..index].iter().rposition(|t| !is_blank(t))?;
                    return keyword(&body[before], "WITH").then_some(before);
                }
            }
            _ => {}
        }
    }
    None
}

/// The options of `WITH (key = 'value', …)`.
fn options(with: &[Token]) -> Result<Options, Error> {
    let solid: Vec<&Token> = with.iter().filter(|t| !is_blank(t)).collect();
    let inner = &solid[2..solid.len() - 1];
    let mut options = Options::default();
    for option in inner.split(|t| matches!(t, Token::Comma)) {
        let (key, value) = match option {
            [Token::Word(key), Token::Eq, value] => (key.value.to_ascii_lowercase(), value),
            _ => {
                return Err(Error::Refused(format!(
                    "WITH ({}): expected key = 'value'",
                    option
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                )));
            }
        };
        let value = match value {
            Token::SingleQuotedString(text) => text.clone(),
            Token::Number(text, _) => text.clone(),
            Token::Word(w) => w.value.clone(),
            other => {
                return Err(Error::Refused(format!(
                    "WITH ({key} = {other}): expected a quoted value"
                )));
            }
        };
        match key.as_str() {
            "watermark_delay" => options.watermark_delay_ms = delay_ms(&key, &value)?,
            "idle_timeout" => options.idle_timeout_ms = delay_ms(&key, &value)?,
            "start" => options.start = start(&value)?,
            _ => {
                return Err(Error::Refused(format!(
                    "WITH ({key} = …): the options are watermark_delay, idle_timeout and start"
                )));
            }
        }
    }
    Ok(options)
}

/// `'10 seconds'`, `'1 minute'`, `'500 ms'`, `'2h'`: milliseconds.
fn delay_ms(key: &str, text: &str) -> Result<i64, Error> {
    let bad = || {
        Error::Refused(format!(
            "{key} = '{text}': expected a duration such as '10 seconds', '1 minute' or '500 milliseconds', at most a day"
        ))
    };
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let count: i64 = text[..split].parse().map_err(|_| bad())?;
    let unit = match text[split..].trim().to_ascii_lowercase().as_str() {
        "ms" | "millisecond" | "milliseconds" => 1,
        "" | "s" | "sec" | "second" | "seconds" => 1_000,
        "m" | "min" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        _ => return Err(bad()),
    };
    let ms = count.checked_mul(unit).ok_or_else(bad)?;
    if ms > DELAY_MS_MAX {
        return Err(bad());
    }
    Ok(ms)
}

/// `earliest`, `latest` or an RFC 3339 time, as a pipeline's `from_offset`.
fn start(text: &str) -> Result<String, Error> {
    match text.to_ascii_lowercase().as_str() {
        "earliest" | "latest" => Ok(text.to_ascii_lowercase()),
        _ => {
            let time = datafusion::common::ScalarValue::Utf8(Some(text.to_owned()))
                .cast_to(&datafusion::arrow::datatypes::DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Millisecond,
                    None,
                ))
                .ok();
            match time {
                Some(datafusion::common::ScalarValue::TimestampMillisecond(Some(ms), _)) => {
                    Ok(format!("@{ms}"))
                }
                _ => Err(Error::Refused(format!(
                    "start = '{text}': expected earliest, latest or an RFC 3339 time such as 2026-11-30T12:00:00Z"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use super::*;

    fn created(sql: &str) -> CreatePipeline {
        match parse(sql).unwrap() {
            Some(Command::Create(c)) => c,
            _ => panic!("not a CREATE PIPELINE: {sql}"),
        }
    }

    #[test]
    fn create_pipeline_takes_the_insert_and_its_options() {
        let c = created(
            "CREATE PIPELINE errors_per_minute AS\nINSERT INTO errors_per_minute_out\n\
             SELECT window_start, window_end, host, count(*) AS errors\n\
             FROM TUMBLE(logs, timestamp, INTERVAL '1 minute')\nWHERE status >= 500\n\
             GROUP BY window_start, window_end, host\n\
             WITH (watermark_delay = '10 seconds', start = 'earliest');",
        );
        assert_eq!(c.name, "errors_per_minute");
        assert_eq!(c.output, "errors_per_minute_out");
        assert!(
            c.query
                .contains("TUMBLE(logs, timestamp, INTERVAL '1 minute')")
        );
        assert!(!c.query.contains("watermark_delay"));
        assert_eq!(c.options.watermark_delay_ms, 10_000);
        assert_eq!(c.options.start, "earliest");
        assert_eq!(c.options.idle_timeout_ms, IDLE_TIMEOUT_DEFAULT_MS);
        let c = created("create pipeline p as insert into o select * from i");
        assert_eq!(c.options, Options::default());
        let c = created(
            "CREATE PIPELINE p AS INSERT INTO o SELECT * FROM i WITH (start = '2026-01-01T00:00:00Z')",
        );
        assert_eq!(c.options.start, "@1767225600000");
    }

    #[test]
    fn bad_statements_say_what_is_expected() {
        for (sql, expected) in [
            (
                "CREATE PIPELINE p INSERT INTO o SELECT 1",
                "CREATE PIPELINE name AS",
            ),
            ("CREATE PIPELINE p AS SELECT 1", "CREATE PIPELINE name AS"),
            (
                "CREATE PIPELINE p AS INSERT INTO o SELECT 1 WITH (watermark_delay = 'soon')",
                "expected a duration",
            ),
            (
                "CREATE PIPELINE p AS INSERT INTO o SELECT 1 WITH (colour = 'red')",
                "the options are",
            ),
            ("ALTER PIPELINE p STOP", "PAUSE or"),
            ("DROP PIPELINE", "expected a name"),
            (
                "CREATE FUNCTION f AS 'x'",
                "CREATE FUNCTION name AS PLUGIN 'plugin'",
            ),
        ] {
            let error = parse(sql).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(error.contains(expected), "{sql}: {error}");
        }
        assert!(matches!(
            parse("drop pipeline if exists p").unwrap(),
            Some(Command::Drop {
                if_exists: true,
                ..
            })
        ));
        assert!(parse("SELECT 1").unwrap().is_none());
    }
}
