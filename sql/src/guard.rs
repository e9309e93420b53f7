//! What a statement must be before it is planned: one that reads topics, or writes rows into
//! one (`INSERT`), never one that reaches the file system (`COPY … TO`, `CREATE EXTERNAL
//! TABLE`); and no deeper than [`SQL_EXPR_DEPTH_MAX`] nested expressions and subqueries, since
//! planning and evaluating a tree recurses once per level and a worker thread's stack is finite.

use std::ops::ControlFlow;

use datafusion::sql::parser::Statement as DfStatement;
use datafusion::sql::sqlparser::ast::{Expr, Query, Statement, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::Error;

/// Deepest nesting of expressions and subqueries a statement may have. `SELECT 1+1+…+1` nests
/// one level per `+`; hand-written and generated queries stay in the tens.
pub const SQL_EXPR_DEPTH_MAX: usize = 256;
/// Most operators one expression may chain, counted on the statement's tokens before it is
/// parsed. The parser reads a chain without recursing, but the tree it builds is one level
/// deeper per operator, and dropping a tree recurses once per level: a 1 MiB statement of
/// `1+1+…` would overflow the stack when its tree is dropped, so it is refused unparsed.
pub const SQL_OPERATOR_CHAIN_MAX: usize = 4096;

/// Refuses statement text whose expressions chain more than [`SQL_OPERATOR_CHAIN_MAX`]
/// operators: operators are counted per parenthesis level, a comma or a clause keyword ending
/// the chain, and the chains of enclosing levels add up. Text that does not tokenize is left
/// to the parser to report.
pub fn check_text(sql: &str) -> Result<(), Error> {
    let Ok(tokens) = Tokenizer::new(&GenericDialect {}, sql).tokenize() else {
        return Ok(());
    };
    let mut chains: Vec<usize> = vec![0];
    for token in &tokens {
        match token {
            Token::LParen => chains.push(0),
            Token::RParen if chains.len() > 1 => {
                chains.pop();
            }
            Token::Comma => {
                if let Some(last) = chains.last_mut() {
                    *last = 0;
                }
            }
            Token::Word(word) if ENDS_CHAIN.contains(&word.keyword) => {
                if let Some(last) = chains.last_mut() {
                    *last = 0;
                }
            }
            Token::Word(word) if !OPERATOR_WORDS.contains(&word.keyword) => {}
            Token::Whitespace(_)
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::Placeholder(_)
            | Token::Period
            | Token::SemiColon => {}
            _ => {
                if let Some(last) = chains.last_mut() {
                    *last += 1;
                }
                if chains.iter().sum::<usize>() > SQL_OPERATOR_CHAIN_MAX {
                    return Err(Error::Refused(format!(
                        "the statement chains more than {SQL_OPERATOR_CHAIN_MAX} operators in one expression"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Keywords that end an expression: a new clause or branch starts.
const ENDS_CHAIN: [Keyword; 19] = [
    Keyword::SELECT,
    Keyword::FROM,
    Keyword::WHERE,
    Keyword::GROUP,
    Keyword::HAVING,
    Keyword::ORDER,
    Keyword::LIMIT,
    Keyword::OFFSET,
    Keyword::UNION,
    Keyword::EXCEPT,
    Keyword::INTERSECT,
    Keyword::JOIN,
    Keyword::ON,
    Keyword::WHEN,
    Keyword::THEN,
    Keyword::ELSE,
    Keyword::VALUES,
    Keyword::WITH,
    Keyword::RETURNING,
];

/// Keywords that join two expressions into one.
const OPERATOR_WORDS: [Keyword; 7] = [
    Keyword::AND,
    Keyword::OR,
    Keyword::LIKE,
    Keyword::ILIKE,
    Keyword::IS,
    Keyword::IN,
    Keyword::BETWEEN,
];

fn refuse(what: impl std::fmt::Display) -> Error {
    Error::Refused(format!(
        "{what} is not allowed: SQL here runs queries, INSERT INTO a topic, EXPLAIN and SHOW, \
         and CREATE TABLE … AS SELECT"
    ))
}

/// Checks a statement as DataFusion's parser returns it.
pub fn check_statement(statement: &DfStatement) -> Result<(), Error> {
    match statement {
        DfStatement::Statement(s) => check_sql_statement(s),
        DfStatement::Explain(explain) => check_statement(&explain.statement),
        DfStatement::CopyTo(_) => Err(refuse("COPY … TO (it writes files)")),
        DfStatement::CreateExternalTable(_) => {
            Err(refuse("CREATE EXTERNAL TABLE (it reads files)"))
        }
        other => Err(refuse(first_words(&other.to_string()))),
    }
}

/// Checks a statement as sqlparser returns it (the Postgres listener's hook sees these).
pub fn check_sql_statement(statement: &Statement) -> Result<(), Error> {
    match statement {
        Statement::Query(_)
        | Statement::Insert(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ExplainTable { .. } => {}
        Statement::Explain { statement, .. } => check_sql_statement(statement)?,
        Statement::Copy { .. } => return Err(refuse("COPY (it reads and writes files)")),
        other => return Err(refuse(first_words(&other.to_string()))),
    }
    check_depth(statement)
}

/// Refuses a statement nested deeper than [`SQL_EXPR_DEPTH_MAX`]. The walk stops at the bound,
/// so it never recurses deeper than the planner is then allowed to.
pub fn check_depth(statement: &Statement) -> Result<(), Error> {
    struct Depth(usize);
    impl Depth {
        fn enter(&mut self) -> ControlFlow<()> {
            self.0 += 1;
            if self.0 > SQL_EXPR_DEPTH_MAX {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
        fn leave(&mut self) -> ControlFlow<()> {
            self.0 -= 1;
            ControlFlow::Continue(())
        }
    }
    impl Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.leave()
        }
        fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
            self.leave()
        }
    }
    match statement.visit(&mut Depth(0)) {
        ControlFlow::Continue(()) => Ok(()),
        ControlFlow::Break(()) => Err(Error::Refused(format!(
            "the statement nests expressions or subqueries deeper than {SQL_EXPR_DEPTH_MAX} levels"
        ))),
    }
}

fn first_words(text: &str) -> String {
    text.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::DFParserBuilder;

    use super::*;

    fn check(sql: &str) -> Result<(), Error> {
        let mut parser = DFParserBuilder::new(sql).build().expect("a parser");
        let statement = parser.parse_statement().expect("a statement");
        check_statement(&statement)
    }

    #[test]
    fn queries_inserts_and_explains_pass() {
        for sql in [
            "SELECT 1",
            "SELECT * FROM logs WHERE value_text LIKE '%x%'",
            "INSERT INTO logs (value) VALUES ('a')",
            "EXPLAIN SELECT 1",
            "SHOW TABLES",
            &format!("SELECT {}", vec!["1"; 200].join("+")),
        ] {
            check(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn statements_that_reach_files_are_refused() {
        for sql in [
            "COPY (SELECT 'x') TO '/tmp/x.csv' STORED AS CSV",
            "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/etc/passwd'",
            "EXPLAIN COPY (SELECT 1) TO '/tmp/y' STORED AS CSV",
            "DROP TABLE logs",
            "SET datafusion.execution.batch_size = 1",
        ] {
            let err = check(sql).unwrap_err();
            assert!(matches!(err, Error::Refused(_)), "{sql}: {err}");
        }
    }

    #[test]
    fn chains_too_long_to_parse_safely_are_refused_from_their_tokens() {
        let deep = format!("SELECT {}", vec!["1"; 500_000].join("+"));
        let err = check_text(&deep).unwrap_err();
        assert!(err.to_string().contains("4096 operators"), "{err}");
        // Many short expressions are fine, however many there are.
        let wide = format!("SELECT {}", vec!["a + 1"; 10_000].join(", "));
        check_text(&wide).unwrap();
        let nested_wide = format!("SELECT f({})", vec!["(b * 2) - 1"; 5_000].join(", "));
        check_text(&nested_wide).unwrap();
    }

    #[test]
    fn deep_expressions_are_refused_before_planning() {
        let deep = format!("SELECT {}", vec!["1"; 3000].join("+"));
        let err = check(&deep).unwrap_err();
        assert!(err.to_string().contains("deeper than 256"), "{err}");
        let nested = format!("SELECT {}1{}", "(".repeat(40), ")".repeat(40));
        check(&nested).unwrap();
    }
}
