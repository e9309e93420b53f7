//! JSON functions over JSON text (`value_text`, a `JSON` column): `json_get_str`,
//! `json_get_int`, `json_get_float`, `json_get_bool`, `json_get_json`, `json_as_text`,
//! `json_contains`, `json_length`, `json_object_keys`, `json_get` (a JSON value of any kind, for
//! use inside an expression), and the operators `->` (the field's JSON text, as `json_get_json`)
//! and `->>` (its text, as `json_as_text`), which chain: `value_text -> 'a' ->> 'b'`.

use std::sync::Arc;

use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{Expr, ScalarUDF};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::BinaryOperator;
use datafusion_functions_json::udfs;

/// Registers the JSON functions and operators.
pub(crate) fn register(context: &mut SessionContext) -> Result<()> {
    for udf in [
        udfs::json_get_udf(),
        udfs::json_get_str_udf(),
        udfs::json_get_int_udf(),
        udfs::json_get_float_udf(),
        udfs::json_get_bool_udf(),
        udfs::json_get_json_udf(),
        udfs::json_get_array_udf(),
        udfs::json_as_text_udf(),
        udfs::json_contains_udf(),
        udfs::json_length_udf(),
        udfs::json_object_keys_udf(),
    ] {
        context.register_udf(udf)?;
    }
    context.register_expr_planner(Arc::new(Operators))
}

/// Plans `->` and `->>` over JSON text into text, so an answer of them reaches every client
/// encoding (JSON, CSV, the Postgres wire) as it is.
#[derive(Debug)]
struct Operators;

impl ExprPlanner for Operators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let (func, symbol): (Arc<ScalarUDF>, &str) = match expr.op {
            BinaryOperator::Arrow => (udfs::json_get_json_udf(), "->"),
            BinaryOperator::LongArrow => (udfs::json_as_text_udf(), "->>"),
            _ => return Ok(PlannerResult::Original(expr)),
        };
        // Named as written (`value_text -> 'a'`), not after the function.
        let name = format!("{} {symbol} {}", written(&expr.left), written(&expr.right));
        let call = Expr::ScalarFunction(ScalarFunction::new_udf(func, vec![expr.left, expr.right]));
        Ok(PlannerResult::Planned(call.alias(name)))
    }
}

/// An operand as a user wrote it, near enough for a column title.
fn written(expr: &Expr) -> String {
    match expr {
        Expr::Column(column) => column.name.clone(),
        Expr::Literal(ScalarValue::Utf8(Some(text)), _) => format!("'{text}'"),
        Expr::Alias(alias) => alias.name.clone(),
        other => other.schema_name().to_string(),
    }
}
