//! WebAssembly functions in SQL: `CREATE FUNCTION name AS PLUGIN 'plugin'` makes a deployed
//! scalar plugin (`#[weir::scalar]`) callable as `name(text)` in any query, one-off or
//! continuous. A call sends the non-NULL texts of a batch through the sandbox, with its limits,
//! [`CALL_ROWS_MAX`] at a time, to the plugin's active version; a NULL text or a `None` answer
//! is NULL. A call that traps or hits a limit fails the query with the plugin's name and error.
//! The functions are kept in the metadata store and listed in `weir.functions`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use datafusion::arrow::array::{Array, AsArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use serde::{Deserialize, Serialize};
use weir_runtime::{Init, Instance, Kind, PluginVersion, Registry, Runtime};
use weir_storage::{Bounded, Present, Record, Tree, TreeSource, locks, now_ms};

use crate::Error;

/// Texts sent to a plugin in one call.
pub const CALL_ROWS_MAX: usize = 1000;
/// The tree that keeps the functions.
pub const FUNCTIONS_TREE: &str = "sql-functions";
/// Functions Weir keeps at most, on one node or across a cluster.
pub const FUNCTIONS_MAX: usize = 256;

/// A function as it is kept.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FunctionDef {
    pub plugin: String,
    pub created_ms: i64,
}

/// The node's SQL functions made of plugins.
pub struct Functions {
    tree: Tree<FunctionDef>,
    registry: Arc<Registry>,
}

impl Functions {
    /// The functions kept in `trees`: the node's metadata store, or a cluster's.
    pub fn open(runtime: &Runtime, trees: &dyn TreeSource) -> Result<Functions, Error> {
        Ok(Functions {
            tree: Tree::on(FUNCTIONS_TREE, trees.backend(FUNCTIONS_TREE)?),
            registry: runtime.registry().clone(),
        })
    }

    pub fn list(&self) -> Result<Vec<(String, FunctionDef)>, Error> {
        Ok(self.tree.all()?)
    }

    /// Every kept function, as DataFusion calls it.
    pub fn udfs(&self) -> Result<Vec<ScalarUDF>, Error> {
        Ok(self
            .list()?
            .into_iter()
            .map(|(name, def)| self.udf(&name, &def.plugin))
            .collect())
    }

    fn udf(&self, name: &str, plugin: &str) -> ScalarUDF {
        ScalarUDF::new_from_impl(PluginFunction {
            name: name.to_owned(),
            plugin: plugin.to_owned(),
            registry: self.registry.clone(),
            signature: Signature::string(1, Volatility::Immutable),
            instance: Mutex::new(None),
        })
    }

    /// Keeps function `name` of scalar plugin `plugin`.
    pub fn create(&self, name: &str, plugin: &str) -> Result<(), Error> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(Error::Refused(format!(
                "function name {name:?}: 1 to 64 of a-z, 0-9 and _, not starting with a digit"
            )));
        }
        if self.tree.get(name)?.is_some() {
            return Err(function_exists(name));
        }
        // Looked up and counted before the plugin is, and again by the bounded write, which
        // holds against another node making a function at the same moment.
        if self.tree.count()? >= FUNCTIONS_MAX {
            return Err(too_many_functions());
        }
        let (_, module) = self.registry.active(plugin)?;
        if module.kind() != Kind::Scalar {
            return Err(Error::Refused(format!(
                "plugin {plugin} is a {}, not a scalar function (#[weir::scalar])",
                module.kind().name()
            )));
        }
        let def = FunctionDef {
            plugin: plugin.to_owned(),
            created_ms: now_ms(),
        };
        match self
            .tree
            .insert_within([(name.to_owned(), &def)], FUNCTIONS_MAX, Present::Refuse)?
        {
            Bounded::Stored => Ok(()),
            Bounded::Full { .. } => Err(too_many_functions()),
            Bounded::Present { .. } => Err(function_exists(name)),
        }
    }

    /// Forgets function `name`; answers whether it existed.
    pub fn drop_function(&self, name: &str) -> Result<bool, Error> {
        Ok(self.tree.remove(name)?)
    }
}

fn function_exists(name: &str) -> Error {
    Error::Refused(format!("function {name} already exists"))
}

fn too_many_functions() -> Error {
    Error::Refused(format!(
        "{FUNCTIONS_MAX} functions exist, the most Weir keeps; drop one first"
    ))
}

/// One function: a plugin called a batch at a time.
struct PluginFunction {
    name: String,
    plugin: String,
    registry: Arc<Registry>,
    signature: Signature,
    /// An instance of the version it was made of, kept between calls.
    instance: Mutex<Option<(PluginVersion, Instance)>>,
}

impl std::fmt::Debug for PluginFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginFunction({} of {})", self.name, self.plugin)
    }
}

impl PartialEq for PluginFunction {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.plugin == other.plugin
    }
}

impl Eq for PluginFunction {}

impl Hash for PluginFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state);
        self.plugin.hash(state);
    }
}

impl PluginFunction {
    fn failed(
        &self,
        version: Option<&PluginVersion>,
        error: impl std::fmt::Display,
    ) -> DataFusionError {
        let plugin = match version {
            Some(v) => format!("{}@{}", self.plugin, v.version),
            None => self.plugin.clone(),
        };
        DataFusionError::Execution(format!("function {} (plugin {plugin}): {error}", self.name))
    }

    /// The answers of the plugin's active version to `texts`, one per text.
    fn call(&self, texts: &[&str]) -> Result<Vec<Option<Bytes>>> {
        let (version, module) = self
            .registry
            .active(&self.plugin)
            .map_err(|e| self.failed(None, e))?;
        let mut cached = locks::lock(&self.instance);
        if cached.as_ref().is_none_or(|(v, _)| *v != version) {
            let init = Init {
                params: version.params.clone().into_iter().collect(),
                partitions: 1,
                state: None,
            };
            let instance = self
                .registry
                .sandbox()
                .instantiate(&module, &init)
                .map_err(|e| self.failed(Some(&version), e))?;
            *cached = Some((version.clone(), instance));
        }
        let Some((_, instance)) = cached.as_mut() else {
            return Err(self.failed(Some(&version), "no instance"));
        };
        let records: Vec<Record> = texts
            .iter()
            .enumerate()
            .map(|(i, text)| Record {
                offset: i as i64,
                timestamp: -1,
                key: None,
                value: Some(Bytes::copy_from_slice(text.as_bytes())),
                headers: Vec::new(),
            })
            .collect();
        let output = match instance.process(&records, -1, false) {
            Ok(output) => output,
            Err(error) => {
                // A failed instance is not called again.
                *cached = None;
                return Err(self.failed(Some(&version), error));
            }
        };
        if let Some((source, message)) = output.failures.first() {
            let text = texts.get(*source as usize).copied().unwrap_or_default();
            let shown: String = text.chars().take(80).collect();
            return Err(self.failed(Some(&version), format!("{message} (on {shown:?})")));
        }
        let mut answers = vec![None; texts.len()];
        for out in output.records {
            if let Some(answer) = answers.get_mut(out.source as usize) {
                *answer = out.record.value;
            }
        }
        Ok(answers)
    }
}

impl ScalarUDFImpl for PluginFunction {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return Err(DataFusionError::Plan(format!(
                "{} takes one text",
                self.name
            )));
        };
        let array = cast(&arg.to_array(args.number_rows)?, &DataType::Utf8)?;
        let texts = array.as_string::<i32>();
        let mut out = StringBuilder::with_capacity(texts.len(), 0);
        let rows: Vec<usize> = (0..texts.len()).filter(|r| !texts.is_null(*r)).collect();
        let mut answers = vec![None; texts.len()];
        for chunk in rows.chunks(CALL_ROWS_MAX) {
            let values: Vec<&str> = chunk.iter().map(|r| texts.value(*r)).collect();
            for (row, answer) in chunk.iter().zip(self.call(&values)?) {
                answers[*row] = answer;
            }
        }
        for answer in answers {
            out.append_option(answer.as_deref().map(String::from_utf8_lossy));
        }
        Ok(ColumnarValue::Array(std::sync::Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::sync::Arc;

    use weir_runtime::{Runtime, SandboxConfig};
    use weir_storage::{Storage, StorageConfig};

    use super::{FUNCTIONS_MAX, FunctionDef, Functions};

    #[test]
    fn a_function_past_the_bound_is_refused_before_its_plugin_is_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        let runtime = Runtime::open(Arc::clone(&storage), SandboxConfig::default()).unwrap();
        let functions = Functions::open(&runtime, storage.meta()).unwrap();
        let def = FunctionDef {
            plugin: "url-path".into(),
            created_ms: 0,
        };
        for i in 0..FUNCTIONS_MAX {
            functions.tree.insert(&format!("f{i}"), &def).unwrap();
        }
        let error = functions.create("one_more", "url-path").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("256 functions exist, the most Weir keeps"),
            "{error}"
        );
    }
}
