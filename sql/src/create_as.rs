//! `CREATE TABLE name [WITH (partitions = N)] AS SELECT …`: a new topic holding a query's rows.
//!
//! The topic gets `value.format=json` and a `value.schema` with one typed column per column of
//! the query that is not a record column; every row becomes one record, its value the JSON
//! object of those columns. Record columns keep their meaning, as in `INSERT`: a `value` column
//! is copied as the record's value, `key`, `timestamp` and `partition` place the record. The
//! rows go in with the same `INSERT` path, so a failed query leaves no topic behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SQLOptions;
use datafusion::sql::parser::{DFParserBuilder, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    CreateTableOptions, Expr, ObjectName, ObjectNamePart, SqlOption, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use crate::access::{TableAccess, TableUse, check_plan, check_table};
use crate::topic::RECORD_COLUMNS;
use crate::value_schema::ColumnKind;
use crate::{Answer, Error, QueryEngine};

/// A parsed `CREATE TABLE … AS SELECT`.
pub(crate) struct CreateAs {
    topic: String,
    partitions: Option<u32>,
    if_not_exists: bool,
    query: String,
}

impl CreateAs {
    /// Whether `access` allows creating the topic and reading every table of the query.
    pub(crate) async fn check(
        &self,
        engine: &QueryEngine,
        access: &dyn TableAccess,
    ) -> Result<(), Error> {
        let topic = datafusion::common::TableReference::partial("public", self.topic.as_str());
        check_table(access, &topic, TableUse::Create)?;
        let plan = engine
            .context
            .state()
            .create_logical_plan(&self.query)
            .await?;
        check_plan(&plan, access)
    }
}

/// The `CREATE TABLE … AS SELECT` that `sql` is, if it is one. Text that does not parse is
/// left to the query path, which reports the error.
pub(crate) fn parse(sql: &str) -> Result<Option<CreateAs>, Error> {
    let Ok(mut parser) = DFParserBuilder::new(sql)
        .with_dialect(&PostgreSqlDialect {})
        .build()
    else {
        return Ok(None);
    };
    let Ok(statements) = parser.parse_statements() else {
        return Ok(None);
    };
    let statements = Vec::from(statements);
    let [DfStatement::Statement(statement)] = statements.as_slice() else {
        return Ok(None);
    };
    let Statement::CreateTable(create) = statement.as_ref() else {
        return Ok(None);
    };
    let Some(query) = &create.query else {
        return Ok(None);
    };
    let refuse = |what: &str| {
        Err(Error::Schema(format!(
            "CREATE TABLE … AS SELECT makes a topic; {what} is not supported"
        )))
    };
    if create.or_replace {
        return refuse("OR REPLACE");
    }
    if !create.columns.is_empty() {
        return refuse("a column list (name the columns in the SELECT)");
    }
    let topic = topic_of(&create.name)?;
    let partitions = match &create.table_options {
        CreateTableOptions::None => None,
        CreateTableOptions::With(options) => partitions_option(options)?,
        _ => return refuse("an option other than WITH (partitions = N)"),
    };
    Ok(Some(CreateAs {
        topic,
        partitions,
        if_not_exists: create.if_not_exists,
        query: query.to_string(),
    }))
}

/// The topic a table name in a statement names.
pub(crate) fn topic_of(name: &ObjectName) -> Result<String, Error> {
    let parts: Vec<&str> = name
        .0
        .iter()
        .map(|part| match part {
            ObjectNamePart::Identifier(ident) => Ok(ident.value.as_str()),
            ObjectNamePart::Function(_) => Err(Error::Schema(format!("{name}: not a topic name"))),
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [topic] | ["public", topic] | ["weir", "public", topic] => Ok((*topic).to_owned()),
        _ => Err(Error::Schema(format!(
            "{name}: topics live in the schema public"
        ))),
    }
}

/// `partitions = N` from `WITH (…)`, the one option a topic made by SQL takes.
fn partitions_option(options: &[SqlOption]) -> Result<Option<u32>, Error> {
    let mut partitions = None;
    for option in options {
        let count = match option {
            SqlOption::KeyValue {
                key,
                value: Expr::Value(value),
            } if key.value.eq_ignore_ascii_case("partitions") => match &value.value {
                Value::Number(n, _) => n.parse::<u32>().ok().filter(|n| (1..=10_000).contains(n)),
                _ => None,
            },
            _ => None,
        };
        match count {
            Some(count) => partitions = Some(count),
            None => {
                return Err(Error::Schema(format!(
                    "WITH ({option}): the only option is partitions = N, N from 1 to 10000"
                )));
            }
        }
    }
    Ok(partitions)
}

/// The value-schema type a column of `data_type` is stored as.
fn column_kind(data_type: &DataType) -> Option<ColumnKind> {
    Some(match data_type {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnKind::Text,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => ColumnKind::SmallInt,
        DataType::Int32 | DataType::UInt16 => ColumnKind::Int,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => ColumnKind::BigInt,
        DataType::Float16 | DataType::Float32 => ColumnKind::Real,
        DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            ColumnKind::Double
        }
        DataType::Boolean => ColumnKind::Boolean,
        DataType::Timestamp(..) => ColumnKind::Timestamp,
        _ => return None,
    })
}

/// The configs of a topic that holds rows of `fields`: `value.format=json` and a `value.schema`
/// with one typed column per field that is not a record column.
pub(crate) fn typed_configs(
    fields: &datafusion::arrow::datatypes::Fields,
) -> Result<BTreeMap<String, String>, Error> {
    let mut typed = Vec::new();
    for field in fields {
        let name = field.name();
        if RECORD_COLUMNS.contains(&name.as_str()) {
            continue;
        }
        if name.contains([',', '.', '"']) {
            return Err(Error::Schema(format!(
                "column {name:?}: name it with AS (a topic's column names hold no `,`, `.` or `\"`)"
            )));
        }
        let kind = column_kind(field.data_type()).ok_or_else(|| {
            Error::Schema(format!(
                "column {name:?} is {}, which a topic cannot hold: cast it to TEXT, BIGINT, DOUBLE, BOOLEAN or TIMESTAMP",
                field.data_type()
            ))
        })?;
        typed.push(format!("{name} {}", kind.name()));
    }
    let mut configs = BTreeMap::new();
    if !typed.is_empty() {
        configs.insert("value.format".to_owned(), "json".to_owned());
        configs.insert("value.schema".to_owned(), typed.join(", "));
    }
    Ok(configs)
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl QueryEngine {
    /// Makes the topic and fills it with the query's rows, read as `viewer` sees them; who
    /// may do so was checked before.
    pub(crate) async fn create_topic_as(
        &self,
        create: CreateAs,
        viewer: Option<Arc<dyn TableAccess>>,
    ) -> Result<Answer, Error> {
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = self
            .context
            .sql_with_options(&create.query, read_only)
            .await?;
        let fields = frame.schema().fields();
        let columns: Vec<String> = fields.iter().map(|f| quote(f.name())).collect();
        let configs = typed_configs(fields)?;
        let partitions = create.partitions.unwrap_or(self.default_partitions);
        if create.if_not_exists && self.topics.existing_topic(&create.topic).is_ok() {
            let (state, plan) = self
                .planned("SELECT CAST(0 AS BIGINT) AS count", None)
                .await?;
            return Self::collect(state, plan).await;
        }
        // An existing topic is refused here, with storage's own error.
        let (topics, topic) = (self.topics.clone(), create.topic.clone());
        on_blocking_pool(move || topics.create_topic(&topic, partitions, configs)).await?;
        let insert = format!(
            "INSERT INTO {} ({}) {}",
            quote(&create.topic),
            columns.join(", "),
            create.query
        );
        let inserted = match self.planned(&insert, viewer).await {
            Ok((state, plan)) => Self::collect(state, plan).await,
            Err(e) => Err(e),
        };
        if inserted.is_err() {
            let (topics, topic) = (self.topics.clone(), create.topic.clone());
            on_blocking_pool(move || topics.delete_topic(&topic)).await?;
        }
        inserted
    }
}

/// Runs storage work that blocks (creating or deleting a topic) on the blocking pool.
pub(crate) async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> weir_storage::Result<T> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(move || weir_storage::reactor::blocking(f))
        .await
        .map_err(|e| Error::Query(datafusion::error::DataFusionError::External(Box::new(e))))?
        .map_err(Error::Storage)
}
