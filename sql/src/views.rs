//! Views: `CREATE VIEW name AS SELECT …` keeps the query under a name in the metadata store, and
//! a statement that reads the name plans the query in its place (the topics' schema answers
//! for views after topics). A view may read topics, system tables and views that exist when it
//! is made; a view is never replaced and one that another reads cannot be dropped, so views
//! never form a cycle. `weir.views` lists them.
//!
//! Rights: making or dropping a view takes the right to create a topic of its name, and its
//! maker must be able to read what it reads; a statement that reads a view reads its query, so
//! it takes the rights to read what the view reads.

use std::sync::{Arc, OnceLock, Weak};

use datafusion::catalog::view::ViewTable;
use datafusion::common::{DataFusionError, TableReference};
use datafusion::datasource::TableProvider;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use weir_storage::{Bounded, Present, Tree, TreeSource};

use crate::access::{self, TableAccess, TableUse, check_table};
use crate::{Answer, Error, QueryEngine};

/// Views Weir keeps at most, on one node or across a cluster.
pub const VIEWS_MAX: usize = 256;

/// A view as the metadata store keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ViewDef {
    /// The `SELECT` it stands for.
    pub query: String,
    /// The tables and views the query reads, as a statement names them (`weir.` before a
    /// system table).
    pub reads: Vec<String>,
    pub created_ms: i64,
}

/// The tree that keeps the views.
pub const VIEWS_TREE: &str = "sql-views";

/// The views kept in `trees`: the node's metadata store, or a cluster's.
pub fn tree(trees: &dyn TreeSource) -> Result<Tree<ViewDef>, Error> {
    Ok(Tree::on(VIEWS_TREE, trees.backend(VIEWS_TREE)?))
}

/// What plans a view's query when a statement reads it: the node's session, set once it exists
/// (weakly, as the session holds the schema that holds this).
#[derive(Clone, Debug, Default)]
pub(crate) struct Planner(Arc<OnceLock<Weak<SessionContext>>>);

impl Planner {
    pub(crate) fn set(&self, context: &Arc<SessionContext>) {
        let _ = self.0.set(Arc::downgrade(context));
    }

    /// `view` as a table: its query, planned now.
    pub(crate) async fn table(
        &self,
        name: &str,
        view: ViewDef,
    ) -> datafusion::common::Result<Option<Arc<dyn TableProvider>>> {
        let Some(context) = self.0.get().and_then(Weak::upgrade) else {
            return Ok(None);
        };
        let plan = context
            .state()
            .create_logical_plan(&view.query)
            .await
            .map_err(|e| DataFusionError::Plan(format!("view {name}: {}", e.strip_backtrace())))?;
        Ok(Some(Arc::new(ViewTable::new(plan, Some(view.query)))))
    }
}

/// The tables and views `query` names, as it names them (a view's plan is its query's, so
/// the names are read from the text).
fn reads(context: &SessionContext, query: &str) -> Result<Vec<String>, Error> {
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let statement = state.sql_to_statement(query, &dialect)?;
    let mut names = Vec::new();
    for table in state.resolve_table_references(&statement)? {
        let name = match table.schema() {
            Some("weir") => format!("weir.{}", table.table()),
            _ => table.table().to_owned(),
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Whether `access` (everything when `None`) may make or drop view `name`: as it may a topic.
fn may_create(access: Option<&dyn TableAccess>, name: &str) -> Result<(), Error> {
    match access {
        Some(access) => check_table(
            access,
            &TableReference::partial("public", name),
            TableUse::Create,
        ),
        None => Ok(()),
    }
}

impl QueryEngine {
    /// `CREATE VIEW name AS query` for `access` (everything when `None`).
    pub(crate) async fn create_view(
        &self,
        name: String,
        query: String,
        access: Option<Arc<dyn TableAccess>>,
    ) -> Result<Answer, Error> {
        weir_storage::validate_topic_name(&name).map_err(|e| Error::Refused(e.to_string()))?;
        let views = tree(&*self.trees)?;
        if self.topics.topic(&name)?.is_some() {
            return Err(Error::Refused(format!("a topic named {name} exists")));
        }
        let exists = || {
            Error::Refused(format!(
                "view {name} exists; DROP VIEW {name} first to make it again"
            ))
        };
        if views.get(&name)?.is_some() {
            return Err(exists());
        }
        may_create(access.as_deref(), &name)?;
        let (_, plan) = self.planned(&query, access.clone()).await?;
        if let Some(access) = &access {
            access::check_plan(&plan, access.as_ref())?;
        }
        // Looked up and counted before the view is planned, and again by the bounded write,
        // which holds against another node making a view at the same moment.
        let too_many = || {
            Error::Refused(format!(
                "{VIEWS_MAX} views exist, the most Weir keeps; drop one first"
            ))
        };
        if views.count()? >= VIEWS_MAX {
            return Err(too_many());
        }
        let view = ViewDef {
            reads: reads(&self.context, &query)?,
            query,
            created_ms: weir_storage::now_ms(),
        };
        match views.insert_within([(name.clone(), &view)], VIEWS_MAX, Present::Refuse)? {
            Bounded::Stored => {}
            Bounded::Full { .. } => return Err(too_many()),
            Bounded::Present { .. } => return Err(exists()),
        }
        self.done("CREATE VIEW").await
    }

    /// `DROP VIEW [IF EXISTS] name` for `access` (everything when `None`).
    pub(crate) async fn drop_view(
        &self,
        name: String,
        if_exists: bool,
        access: Option<Arc<dyn TableAccess>>,
    ) -> Result<Answer, Error> {
        let views = tree(&*self.trees)?;
        if views.get(&name)?.is_none() {
            if if_exists {
                return self.done("DROP VIEW").await;
            }
            return Err(Error::Refused(format!("view {name} does not exist")));
        }
        may_create(access.as_deref(), &name)?;
        if let Some((reader, _)) = views
            .all()?
            .into_iter()
            .find(|(_, view)| view.reads.contains(&name))
        {
            return Err(Error::Refused(format!(
                "view {reader} reads view {name}; drop {reader} first"
            )));
        }
        views.remove(&name)?;
        self.done("DROP VIEW").await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use weir_storage::{Storage, StorageConfig};

    use super::*;
    use crate::QueryConfig;

    #[tokio::test]
    async fn a_view_past_the_bound_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let engine =
            QueryEngine::new(storage.clone(), None, None, &QueryConfig::default()).unwrap();
        let view = ViewDef {
            query: "SELECT 1 AS one".into(),
            reads: Vec::new(),
            created_ms: 0,
        };
        let views = tree(storage.meta()).unwrap();
        for i in 0..VIEWS_MAX {
            views.insert(&format!("v{i}"), &view).unwrap();
        }
        let Err(error) = engine.sql("CREATE VIEW one_more AS SELECT 1 AS one").await else {
            panic!("a view past the bound was made");
        };
        assert!(
            error
                .to_string()
                .contains("256 views exist, the most Weir keeps"),
            "{error}"
        );
        assert!(views.get("one_more").unwrap().is_none());
        // The ones kept are read as before.
        let answer = engine.sql("SELECT one FROM v255").await.unwrap();
        assert_eq!(answer.batches[0].num_rows(), 1);
    }
}
