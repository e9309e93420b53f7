//! What Postgres clients (psql, Grafana, drivers) ask of the catalog that DataFusion answers
//! its own way: `current_setting(name)`, which Grafana calls to learn the server's version, and
//! `information_schema.columns.data_type` in Postgres's type names (`bigint`, `text`,
//! `timestamp with time zone`) rather than Arrow's, so a query builder knows a time column.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, TypeSignature, Volatility, create_udf,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::prelude::SessionContext;

/// The Postgres version the listener reports (`server_version`), as `current_setting` answers
/// it.
const SERVER_VERSION: &str = "16.6";
const SERVER_VERSION_NUM: &str = "160006";

/// Registers `current_setting` and the rewrite of `information_schema.columns`.
pub fn register(context: &SessionContext) {
    context.register_udf(ScalarUDF::from(CurrentSetting::default()));
    context.add_analyzer_rule(Arc::new(PostgresColumnTypes));
}

/// The value of a setting a Postgres client reads, for the few a client of this node may ask.
fn setting(name: &str) -> Option<&'static str> {
    Some(match name.to_ascii_lowercase().as_str() {
        "server_version" => SERVER_VERSION,
        "server_version_num" => SERVER_VERSION_NUM,
        "search_path" => "public",
        "timezone" => "UTC",
        "client_encoding" | "server_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "standard_conforming_strings" => "on",
        "integer_datetimes" => "on",
        "max_identifier_length" => "63",
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        _ => return None,
    })
}

/// `current_setting(name [, missing_ok])`: a setting's value; an unknown one is an error, or
/// NULL with `missing_ok`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CurrentSetting {
    signature: Signature,
}

impl Default for CurrentSetting {
    fn default() -> Self {
        CurrentSetting {
            signature: Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![DataType::Utf8]),
                    TypeSignature::Exact(vec![DataType::Utf8, DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
        }
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let names = args.args[0].to_array(rows)?;
        let names = names.as_string::<i32>();
        let missing_ok = match args.args.get(1) {
            Some(flag) => Some(flag.to_array(rows)?),
            None => None,
        };
        let mut values = Vec::with_capacity(rows);
        for row in 0..rows {
            if names.is_null(row) {
                values.push(None);
                continue;
            }
            let name = names.value(row);
            let value = setting(name);
            let tolerated = missing_ok
                .as_ref()
                .is_some_and(|flags| flags.as_boolean().value(row));
            if value.is_none() && !tolerated {
                return Err(DataFusionError::Execution(format!(
                    "unrecognized configuration parameter \"{name}\""
                )));
            }
            values.push(value);
        }
        Ok(match values.as_slice() {
            [one]
                if args
                    .args
                    .iter()
                    .all(|a| matches!(a, ColumnarValue::Scalar(_))) =>
            {
                ColumnarValue::Scalar(ScalarValue::Utf8(one.map(str::to_string)))
            }
            _ => ColumnarValue::Array(Arc::new(StringArray::from(values))),
        })
    }
}

/// The Postgres name of a type as Arrow writes it, or the name unchanged when it is not one.
fn postgres_type_name(arrow: &str) -> String {
    let Ok(data_type) = arrow.parse::<DataType>() else {
        return arrow.to_string();
    };
    match data_type {
        DataType::Boolean => "boolean",
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        DataType::Int64 | DataType::UInt32 => "bigint",
        DataType::UInt64 | DataType::Decimal128(..) | DataType::Decimal256(..) => "numeric",
        DataType::Float16 | DataType::Float32 => "real",
        DataType::Float64 => "double precision",
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text",
        DataType::Binary
        | DataType::LargeBinary
        | DataType::BinaryView
        | DataType::FixedSizeBinary(_) => "bytea",
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone",
        DataType::Timestamp(_, None) => "timestamp without time zone",
        DataType::Date32 | DataType::Date64 => "date",
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone",
        DataType::Interval(_) | DataType::Duration(_) => "interval",
        DataType::List(_)
        | DataType::LargeList(_)
        | DataType::FixedSizeList(..)
        | DataType::ListView(_)
        | DataType::LargeListView(_) => "ARRAY",
        DataType::Struct(_) | DataType::Map(..) | DataType::Union(..) => "USER-DEFINED",
        _ => return arrow.to_string(),
    }
    .to_string()
}

/// Reads `information_schema.columns` through a projection that names each column's type as
/// Postgres does. Applied to a plan twice, the second pass changes nothing a client sees:
/// a Postgres name is not an Arrow one and stays as it is.
#[derive(Debug)]
struct PostgresColumnTypes;

impl AnalyzerRule for PostgresColumnTypes {
    fn name(&self) -> &str {
        "postgres_column_types"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let rename = create_udf(
            "postgres_type_name",
            vec![DataType::Utf8],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                let names = ColumnarValue::values_to_arrays(args)?;
                let names: StringArray = names[0]
                    .as_string::<i32>()
                    .iter()
                    .map(|name| name.map(postgres_type_name))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(names)))
            }),
        );
        plan.transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            let columns_table = scan.table_name.schema() == Some("information_schema")
                && scan.table_name.table() == "columns";
            if !columns_table {
                return Ok(Transformed::no(node));
            }
            let exprs: Vec<Expr> = scan
                .projected_schema
                .iter()
                .map(|(qualifier, field)| {
                    let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
                    if field.name() == "data_type" {
                        rename
                            .call(vec![column])
                            .alias_qualified(qualifier.cloned(), "data_type")
                    } else {
                        column
                    }
                })
                .collect();
            let projection = Projection::try_new(exprs, Arc::new(node))?;
            Ok(Transformed::yes(LogicalPlan::Projection(projection)))
        })
        .map(|t| t.data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_types_get_postgres_names() {
        for (arrow, postgres) in [
            ("Int64", "bigint"),
            ("Int32", "integer"),
            ("Utf8", "text"),
            ("Binary", "bytea"),
            ("Float64", "double precision"),
            ("Timestamp(ms, \"+00:00\")", "timestamp with time zone"),
            ("Timestamp(ms)", "timestamp without time zone"),
            (
                "List(Struct(\"key\": non-null Utf8, \"value\": Binary))",
                "ARRAY",
            ),
            ("bigint", "bigint"),
        ] {
            let data_type = arrow.parse::<DataType>().map(|t| t.to_string());
            assert_eq!(
                postgres_type_name(arrow),
                postgres,
                "{arrow}: {data_type:?}"
            );
        }
    }
}
