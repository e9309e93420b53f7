//! Which tables a statement uses, checked before it runs: a statement run on behalf of a user
//! reads, writes or creates only the tables its [`TableAccess`] allows, subqueries included,
//! and sees only the rows of the system tables that name what it may describe ([`Viewer`]).

use std::sync::{Arc, OnceLock};

use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;
use weir_runtime::{Owner, PipelineSpec};

use crate::Error;

/// What a statement does with a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableUse {
    Read,
    /// `INSERT INTO` it.
    Write,
    /// `CREATE TABLE … AS SELECT` makes it.
    Create,
}

/// Decides, per table, whether a statement may use it. `schema` is `public` for topics and
/// `weir` for the system tables; the error says why not.
pub trait TableAccess: Send + Sync {
    fn check(&self, schema: &str, table: &str, usage: TableUse) -> Result<(), String>;
    /// Whether the rows about topic `name` are shown.
    fn sees_topic(&self, name: &str) -> bool;
    /// Whether the rows about consumer group `name` are shown.
    fn sees_group(&self, name: &str) -> bool;
    /// Who a pipeline the caller creates runs as; `None` for a caller with the node's rights.
    fn runs_as(&self) -> Option<Owner>;
    /// Whether the caller may create pipeline `spec`: read its input, write its outputs.
    fn may_run(&self, spec: &PipelineSpec) -> Result<(), String>;
    /// Whether the caller may pause, resume or drop a pipeline run by `owner`.
    fn may_manage(&self, owner: Option<&Owner>) -> bool;
}

/// Who a statement runs for, kept in its session's config where the system tables read it when
/// they are scanned. Unset, every row is shown (the admin token, an open node). A Postgres
/// connection sets it once its client has signed in.
#[derive(Default)]
pub struct Viewer(OnceLock<Arc<dyn TableAccess>>);

impl Viewer {
    pub fn of(access: Arc<dyn TableAccess>) -> Viewer {
        let viewer = Viewer::default();
        viewer.set(access);
        viewer
    }

    /// Sets who views; a viewer that is already set keeps its first value.
    pub fn set(&self, access: Arc<dyn TableAccess>) {
        let _ = self.0.set(access);
    }

    pub(crate) fn access(&self) -> Option<&dyn TableAccess> {
        self.0.get().map(|access| access.as_ref())
    }
}

/// The schema and table of a reference; an unqualified name is a topic.
fn parts(table: &TableReference) -> (&str, &str) {
    (table.schema().unwrap_or("public"), table.table())
}

pub(crate) fn check_table(
    access: &dyn TableAccess,
    table: &TableReference,
    usage: TableUse,
) -> Result<(), Error> {
    let (schema, name) = parts(table);
    access.check(schema, name, usage).map_err(Error::Denied)
}

/// Checks every table `plan` reads or writes, in subqueries too.
pub fn check_plan(plan: &LogicalPlan, access: &dyn TableAccess) -> Result<(), Error> {
    let mut refused = None;
    plan.apply_with_subqueries(|node| {
        let used = match node {
            LogicalPlan::TableScan(scan) => Some((&scan.table_name, TableUse::Read)),
            LogicalPlan::Dml(dml) => Some((&dml.table_name, TableUse::Write)),
            _ => None,
        };
        if let Some((table, usage)) = used
            && let Err(e) = check_table(access, table, usage)
        {
            refused = Some(e);
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    refused.map_or(Ok(()), Err)
}
