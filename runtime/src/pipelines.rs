//! The set of pipelines: their specs in the metadata store, one tokio task each that runs its
//! [`Runner`] step by step on the blocking pool (wasm calls and fsyncs never run on the reactor
//! threads), pause/resume/delete, and status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use weir::Kind;
use weir_storage::{Topics, Tree, TreeSource, now_ms};

use crate::Error;
use crate::continuous::{Compiler, OperatorRunner, SqlCheckpoint, StepStore};
use crate::pipeline::{
    Checkpoint, Counted, PipelineSpec, Runner, StartAt, Stats, Step, checkpoint_key,
};
use crate::registry::{Registry, validate_plugin_name};
use crate::windowed::{self, PluginWindows};
use weir_storage::locks;

/// Pipelines one broker runs at most.
pub const PIPELINES_MAX: usize = 256;
/// How long an idle pipeline sleeps when no append wakes it.
const IDLE_POLL_MS: u64 = 200;
/// How often a node asks for its turn at a pipeline another node runs.
const ELSEWHERE_POLL_MS: u64 = 1000;
/// How long a deletion waits for the node running the pipeline to give its turn up.
const TURN_WAIT: Duration = Duration::from_secs(30);
/// How long a pipeline waits after a storage error before it tries again.
const RETRY_MS: u64 = 1000;

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Stored {
    spec: PipelineSpec,
    paused: bool,
    reason: Option<String>,
    /// When the reason was given.
    #[serde(default)]
    reason_ms: Option<i64>,
    created_ms: i64,
    #[serde(default)]
    owner: Option<Owner>,
}

/// The user a pipeline was created by, and the host it connected from: the pipeline reads and
/// writes with that user's rights. A pipeline created with the node's own rights (an open node,
/// the admin token, a super user) has none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub user: String,
    pub host: String,
}

/// Whether an owner may still do what its pipeline does (read the input, write the outputs and
/// the dead-letter topic); the error says what it may no longer do. The broker answers from
/// its ACLs, before every step, so a revoked right pauses the pipeline with the reason.
pub trait Rights: Send + Sync {
    fn check(&self, owner: &Owner, spec: &PipelineSpec) -> Result<(), String>;
}

/// What `describe` and `list` report.
#[derive(Clone, Debug, PartialEq)]
pub struct PipelineStatus {
    pub spec: PipelineSpec,
    /// `running`, `paused`, `starting`, or `standby` on a node of a cluster while another
    /// node runs it.
    pub status: String,
    pub reason: Option<String>,
    pub created_ms: i64,
    pub owner: Option<Owner>,
    pub lag: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub failed_calls: u64,
    pub last_error: Option<String>,
    /// When the last error happened (ms since the epoch).
    pub last_error_ms: Option<i64>,
    pub plugins: Vec<String>,
    /// Records of a SQL pipeline that came after their window closed.
    pub late_records: u64,
    pub open_windows: u64,
    /// Groups over a SQL pipeline's open windows.
    pub open_groups: u64,
    /// The event time up to which a SQL pipeline's windows have closed.
    pub watermark_ms: Option<i64>,
}

/// What a pipeline's task steps: a plugin chain or a continuous query.
trait Steps: Send {
    fn step(&mut self) -> Result<Step, Error>;
}

impl Steps for Runner {
    fn step(&mut self) -> Result<Step, Error> {
        Runner::step(self)
    }
}

impl Steps for OperatorRunner {
    fn step(&mut self) -> Result<Step, Error> {
        OperatorRunner::step(self)
    }
}

/// What a pipeline's task shares with the rest of the broker.
#[derive(Default)]
struct Control {
    stop: AtomicBool,
    paused: AtomicBool,
    /// Another node of the cluster has the turn at the pipeline.
    elsewhere: AtomicBool,
    /// This node took the turn at the pipeline and has not given it back.
    turn: AtomicBool,
    /// Made on the first step (it reads the outputs to resume) and dropped when paused.
    runner: Mutex<Option<Box<dyn Steps>>>,
}

struct Running {
    stats: Arc<Stats>,
    control: Arc<Control>,
    task: tokio::task::JoinHandle<()>,
}

pub struct Pipelines {
    /// Where pipelines read and write.
    topics: Arc<dyn Topics>,
    /// Which pipelines this node runs.
    turns: Arc<dyn Turns>,
    registry: Arc<Registry>,
    tree: Tree<Stored>,
    checkpoints: Tree<Checkpoint>,
    sql_checkpoints: Tree<SqlCheckpoint>,
    running: Mutex<HashMap<String, Running>>,
    appended: watch::Sender<u64>,
    rights: std::sync::OnceLock<Arc<dyn Rights>>,
    compiler: std::sync::OnceLock<Arc<dyn Compiler>>,
}

/// Where a node's pipelines live: the topics they read, the trees that keep them, their
/// checkpoints and the plugin registry, the plugins' modules, and which pipelines this node
/// runs (its turns, through which they write).
pub struct PipelineHome {
    pub topics: Arc<dyn Topics>,
    pub trees: Arc<dyn TreeSource>,
    pub turns: Arc<dyn Turns>,
    pub modules: Arc<dyn crate::ModuleStore>,
}

/// This node's turn at running one pipeline: what its runner reads and writes through while
/// the turn lasts. On a cluster its writes are fenced by the pipeline's lease, so a node
/// whose turn ended cannot append or save a checkpoint.
#[derive(Clone)]
pub struct Turn {
    pub topics: Arc<dyn Topics>,
    pub trees: Arc<dyn TreeSource>,
    pub steps: Arc<dyn StepStore>,
}

/// Which node runs each pipeline: a lone node runs them all ([`EveryTurn`]); on a cluster,
/// the node holding the pipeline's lease.
pub trait Turns: Send + Sync {
    /// This node's turn at `pipeline`, taken when no node has it; `None` while another node
    /// has it.
    fn take(&self, pipeline: &str) -> Result<Option<Turn>, Error>;
    /// Whether this node still has the turn it took at `pipeline`; asked before every step.
    fn holds(&self, pipeline: &str) -> bool;
    /// Gives the turn at `pipeline` back, if this node has it: the pipeline is paused or
    /// deleted, or the node stops.
    fn give_back(&self, pipeline: &str);
}

/// Every turn of a lone node: it runs every pipeline, through the same topics and trees.
pub struct EveryTurn(pub Turn);

impl Turns for EveryTurn {
    fn take(&self, _pipeline: &str) -> Result<Option<Turn>, Error> {
        Ok(Some(self.0.clone()))
    }

    fn holds(&self, _pipeline: &str) -> bool {
        true
    }

    fn give_back(&self, _pipeline: &str) {}
}

/// The trees of a pipeline's checkpoints, as a turn writes them.
struct CheckpointTrees {
    checkpoints: Tree<Checkpoint>,
    sql_checkpoints: Tree<SqlCheckpoint>,
}

impl CheckpointTrees {
    fn of(trees: &dyn TreeSource) -> Result<CheckpointTrees, Error> {
        Ok(CheckpointTrees {
            checkpoints: Tree::on(CHECKPOINTS_TREE, trees.backend(CHECKPOINTS_TREE)?),
            sql_checkpoints: Tree::on(SQL_CHECKPOINTS_TREE, trees.backend(SQL_CHECKPOINTS_TREE)?),
        })
    }
}

/// The trees of the pipelines and of their checkpoints.
pub const PIPELINES_TREE: &str = "pipelines";
const CHECKPOINTS_TREE: &str = "pipeline-checkpoints";
const SQL_CHECKPOINTS_TREE: &str = "pipeline-sql-checkpoints";

/// An aggregating chain saved by a version that ran one aggregate per input partition goes on
/// from those partitions' offsets; the windows they had open start again empty.
fn adopt_partition_checkpoints(trees: &CheckpointTrees, spec: &PipelineSpec) -> Result<(), Error> {
    if trees.sql_checkpoints.get(&spec.name)?.is_some() {
        return Ok(());
    }
    let old = trees.checkpoints.scan_prefix(&format!("{}/", spec.name))?;
    if old.is_empty() {
        return Ok(());
    }
    let mut adopted = SqlCheckpoint::default();
    for (key, checkpoint) in old {
        let partition = key.rsplit('/').next().and_then(|p| p.parse().ok());
        if let Some(partition) = partition {
            adopted
                .next_offsets
                .insert(partition, checkpoint.next_offset);
            adopted.counted = checkpoint.counted.max_each(adopted.counted);
        }
        trees.checkpoints.remove(&key)?;
    }
    tracing::warn!(pipeline = %spec.name, "the aggregate now runs over all input partitions; it goes on from their offsets and the windows open at the upgrade start empty");
    trees.sql_checkpoints.insert(&spec.name, &adopted)?;
    Ok(())
}

fn validate_pipeline_name(name: &str) -> Result<(), Error> {
    validate_plugin_name(name).map_err(|_| {
        Error::Invalid(format!("pipeline name {name:?}: use 1 to 128 of a-z, A-Z, 0-9, '.', '_', '-', not starting with '.'"))
    })
}

impl Pipelines {
    /// The pipelines of `home`.
    pub fn open(home: PipelineHome, registry: Arc<Registry>) -> Result<Arc<Pipelines>, Error> {
        let CheckpointTrees {
            checkpoints,
            sql_checkpoints,
        } = CheckpointTrees::of(&*home.trees)?;
        Ok(Arc::new(Pipelines {
            tree: Tree::on(PIPELINES_TREE, home.trees.backend(PIPELINES_TREE)?),
            checkpoints,
            sql_checkpoints,
            topics: home.topics,
            turns: home.turns,
            registry,
            running: Mutex::new(HashMap::new()),
            appended: watch::Sender::new(0),
            rights: std::sync::OnceLock::new(),
            compiler: std::sync::OnceLock::new(),
        }))
    }

    /// What makes the operators of SQL pipelines; set once, before [`Pipelines::start_all`].
    /// Without it, SQL pipelines wait with an error.
    pub fn set_compiler(&self, compiler: Arc<dyn Compiler>) {
        let _ = self.compiler.set(compiler);
    }

    /// The runner of `spec` during `turn`, which resumes from its checkpoints.
    fn runner(
        &self,
        spec: PipelineSpec,
        stats: Arc<Stats>,
        turn: Turn,
    ) -> Result<Box<dyn Steps>, Error> {
        let trees = CheckpointTrees::of(&*turn.trees)?;
        if windowed::aggregates(&self.registry, &spec) {
            adopt_partition_checkpoints(&trees, &spec)?;
            let operator = PluginWindows::new(
                spec.clone(),
                self.registry.clone(),
                &*turn.topics,
                stats.clone(),
            )?;
            let runner = OperatorRunner::new(
                spec,
                turn.topics,
                (trees.sql_checkpoints, turn.steps),
                Box::new(operator),
                stats,
            )?;
            return Ok(Box::new(runner));
        }
        if spec.sql.is_none() {
            let runner = Runner::new(
                spec,
                turn.topics,
                self.registry.clone(),
                trees.checkpoints,
                stats,
            )?;
            return Ok(Box::new(runner));
        }
        let compiler = self.compiler.get().ok_or_else(|| {
            Error::Invalid("this node runs no SQL engine for SQL pipelines".into())
        })?;
        let operator = compiler.compile(&spec).map_err(Error::Invalid)?;
        let runner = OperatorRunner::new(
            spec,
            turn.topics,
            (trees.sql_checkpoints, turn.steps),
            operator,
            stats,
        )?;
        Ok(Box::new(runner))
    }

    /// Who decides whether owners keep their rights; set once, before [`Pipelines::start_all`].
    /// Without it, owned pipelines run unchecked.
    pub fn set_rights(&self, rights: Arc<dyn Rights>) {
        let _ = self.rights.set(rights);
    }

    /// Why `owner` may no longer run `spec`, if it may not.
    fn revoked(&self, owner: Option<&Owner>, spec: &PipelineSpec) -> Option<String> {
        let (owner, rights) = (owner?, self.rights.get()?);
        rights
            .check(owner, spec)
            .err()
            .map(|reason| format!("its owner lost a right it needs: {reason}"))
    }

    /// Starts the task of every stored pipeline; call from inside a tokio runtime.
    pub fn start_all(self: &Arc<Self>) -> Result<(), Error> {
        self.sync()
    }

    /// Follows the stored pipelines as any node of a cluster changes them: starts the task of
    /// each one this node has none for, stops the tasks of deleted ones, and pauses or
    /// resumes each as stored. Call from inside a tokio runtime.
    pub fn sync(self: &Arc<Self>) -> Result<(), Error> {
        let stored: HashMap<String, Stored> = self.tree.all()?.into_iter().collect();
        let mut running = locks::lock(&self.running);
        running.retain(|name, r| {
            let kept = stored.contains_key(name);
            if !kept {
                // The task ends after its step, and gives its turn back.
                r.control.stop.store(true, Ordering::Release);
            }
            kept
        });
        let new: Vec<&Stored> = stored
            .iter()
            .filter_map(|(name, s)| match running.get(name) {
                Some(r) => {
                    r.control.paused.store(s.paused, Ordering::Release);
                    None
                }
                None => Some(s),
            })
            .collect();
        drop(running);
        for stored in new {
            self.spawn(stored);
        }
        Ok(())
    }

    /// Wakes idle pipelines; the broker calls it on every append.
    pub fn notify_append(&self) {
        self.appended
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// Makes the pipeline, its missing output topics and its dead-letter topic, and starts it;
    /// it runs with `owner`'s rights (see [`Owner`]).
    pub fn create(
        self: &Arc<Self>,
        spec: PipelineSpec,
        owner: Option<Owner>,
    ) -> Result<PipelineStatus, Error> {
        validate_pipeline_name(&spec.name)?;
        if self.tree.get(&spec.name)?.is_some() {
            return Err(already_exists(&spec.name));
        }
        if locks::lock(&self.running).len() >= PIPELINES_MAX {
            return Err(Error::Invalid(format!(
                "{PIPELINES_MAX} pipelines exist, the most one broker runs"
            )));
        }
        self.check(&spec)?;
        let input = self.topics.existing_topic(&spec.from)?;
        for topic in &spec.to {
            self.topics
                .topic_or_create(topic, input.partitions, Default::default())?;
        }
        self.topics
            .topic_or_create(&spec.dead_letter_topic(), 1, Default::default())?;
        let stored = Stored {
            spec,
            paused: false,
            reason: None,
            reason_ms: None,
            created_ms: now_ms(),
            owner,
        };
        if !self.tree.insert_new(&stored.spec.name, &stored)? {
            return Err(already_exists(&stored.spec.name));
        }
        tracing::info!(pipeline = %stored.spec.name, from = %stored.spec.from, to = ?stored.spec.to, "pipeline created");
        self.spawn(&stored);
        self.describe(&stored.spec.name)
    }

    /// Checks what can be checked before anything is created.
    fn check(&self, spec: &PipelineSpec) -> Result<(), Error> {
        if spec.to.is_empty() {
            return Err(Error::Invalid(
                "a pipeline needs at least one output topic (--to)".into(),
            ));
        }
        if spec.to.contains(&spec.from) || spec.dead_letter_topic() == spec.from {
            return Err(Error::Invalid(format!(
                "pipeline {} would read its own output {}",
                spec.name, spec.from
            )));
        }
        for topic in spec
            .to
            .iter()
            .chain(std::iter::once(&spec.dead_letter_topic()))
        {
            weir_storage::validate_topic_name(topic)?;
        }
        StartAt::parse(&spec.from_offset)?;
        if spec.batch_records_max == 0 || spec.failures_max == 0 {
            return Err(Error::Invalid(
                "batch_records_max and failures_max must be at least 1".into(),
            ));
        }
        for name in &spec.through {
            let (_, plugin) = self.registry.active(name)?;
            match plugin.kind() {
                Kind::Partitioner => {
                    return Err(Error::Invalid(format!(
                        "plugin {name} is a partitioner; give it as --partition-by"
                    )));
                }
                Kind::Scalar => {
                    return Err(Error::Invalid(format!(
                        "plugin {name} is a scalar function; call it from SQL after CREATE FUNCTION {name} AS PLUGIN '{name}'"
                    )));
                }
                _ => {}
            }
        }
        for (what, ms) in [
            ("lateness_ms", spec.lateness_ms),
            ("idle_timeout_ms", spec.idle_timeout_ms),
        ] {
            if !(0..=PipelineSpec::WAIT_MAX_MS).contains(&ms) {
                return Err(Error::Invalid(format!(
                    "{what}={ms}: give 0 to {} (a day)",
                    PipelineSpec::WAIT_MAX_MS
                )));
            }
        }
        windowed::check(&self.registry, spec)?;
        if let Some(name) = &spec.partition_by {
            let (_, plugin) = self.registry.active(name)?;
            if plugin.kind() != Kind::Partitioner {
                return Err(Error::Invalid(format!(
                    "plugin {name} is a {}, not a partitioner",
                    plugin.kind().name()
                )));
            }
        }
        Ok(())
    }

    /// Starts the task of a stored pipeline unless this node runs one for it already: a
    /// pipeline made here is seen by [`Pipelines::sync`] too, as soon as it is stored, and
    /// two tasks of one pipeline on one node would share its turn and both write.
    fn spawn(self: &Arc<Self>, stored: &Stored) {
        let mut running = locks::lock(&self.running);
        if running.contains_key(&stored.spec.name) {
            return;
        }
        let stats = Arc::new(Stats::default());
        if let Some(reason) = &stored.reason {
            stats.note_error_at(
                reason.clone(),
                stored.reason_ms.unwrap_or(stored.created_ms),
            );
        }
        let control = Arc::new(Control::default());
        control.paused.store(stored.paused, Ordering::Release);
        let task = tokio::spawn(self.clone().drive(
            stored.spec.clone(),
            stored.owner.clone(),
            stats.clone(),
            control.clone(),
        ));
        running.insert(
            stored.spec.name.clone(),
            Running {
                stats,
                control,
                task,
            },
        );
    }

    /// The task of one pipeline: step while there is work, sleep until an append when idle;
    /// before each step, check that its owner still has the rights it runs with.
    async fn drive(
        self: Arc<Self>,
        spec: PipelineSpec,
        owner: Option<Owner>,
        stats: Arc<Stats>,
        control: Arc<Control>,
    ) {
        let mut appended = self.appended.subscribe();
        while !control.stop.load(Ordering::Acquire) {
            if control.paused.load(Ordering::Acquire) {
                // Drop the instances while paused; a resume starts from the checkpoint.
                self.end_turn(&spec.name, &control).await;
                tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)).await;
                continue;
            }
            if let Some(reason) = self.revoked(owner.as_ref(), &spec) {
                self.pause_for(&spec.name, reason);
                tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)).await;
                continue;
            }
            let (step_control, step_spec, step_self, step_stats) =
                (control.clone(), spec.clone(), self.clone(), stats.clone());
            let step = tokio::task::spawn_blocking(move || {
                weir_storage::reactor::blocking(|| {
                    let mut runner = locks::lock(&step_control.runner);
                    let took = &step_control.turn;
                    if took.load(Ordering::Acquire) && !step_self.turns.holds(&step_spec.name) {
                        tracing::warn!(pipeline = %step_spec.name, "this node's turn at the pipeline ended; another node may run it now");
                        took.store(false, Ordering::Release);
                        *runner = None;
                    }
                    if runner.is_none() {
                        let turn = step_self.turns.take(&step_spec.name)?;
                        took.store(turn.is_some(), Ordering::Release);
                        step_control
                            .elsewhere
                            .store(turn.is_none(), Ordering::Release);
                        let Some(turn) = turn else {
                            return Ok(Step::Elsewhere);
                        };
                        *runner = Some(step_self.runner(step_spec, step_stats, turn)?);
                    }
                    match runner.as_mut() {
                        Some(runner) => runner.step(),
                        None => Ok(Step::Idle),
                    }
                })
            })
            .await;
            match step {
                Ok(Ok(Step::Worked)) => {}
                Ok(Ok(Step::Idle)) => {
                    tokio::select! {
                        _ = appended.changed() => {}
                        () = tokio::time::sleep(Duration::from_millis(IDLE_POLL_MS)) => {}
                    }
                }
                Ok(Ok(Step::Elsewhere)) => {
                    tokio::time::sleep(Duration::from_millis(ELSEWHERE_POLL_MS)).await;
                }
                Ok(Ok(Step::Pause(reason))) => self.pause_for(&spec.name, reason),
                Ok(Err(error)) => {
                    tracing::warn!(pipeline = %spec.name, %error, "pipeline step failed; retrying");
                    stats.note_error(error.to_string());
                    drop_runner(&control).await;
                    tokio::time::sleep(Duration::from_millis(RETRY_MS)).await;
                }
                Err(join) => {
                    let reason = format!("pipeline step panicked: {join}");
                    tracing::error!(pipeline = %spec.name, %reason);
                    drop_runner(&control).await;
                    if let Err(e) = self.set_paused(&spec.name, true, Some(reason)) {
                        tracing::error!(pipeline = %spec.name, error = %e, "cannot record the pause");
                    }
                }
            }
        }
        self.end_turn(&spec.name, &control).await;
    }

    /// Drops the pipeline's runner and gives back the turn this node took at it, if any.
    async fn end_turn(&self, name: &str, control: &Control) {
        drop_runner(control).await;
        if control.turn.swap(false, Ordering::AcqRel) {
            self.turns.give_back(name);
        }
    }

    /// Pauses a pipeline that cannot go on, keeping why for its status.
    fn pause_for(&self, name: &str, reason: String) {
        tracing::warn!(pipeline = %name, %reason, "pipeline paused");
        if let Err(e) = self.set_paused(name, true, Some(reason)) {
            tracing::error!(pipeline = %name, error = %e, "cannot record the pause");
        }
    }

    fn set_paused(&self, name: &str, paused: bool, reason: Option<String>) -> Result<(), Error> {
        let mut stored = self.stored(name)?;
        let now = now_ms();
        stored.paused = paused;
        stored.reason = reason.clone();
        stored.reason_ms = reason.is_some().then_some(now);
        self.tree.insert(name, &stored)?;
        if let Some(running) = locks::lock(&self.running).get(name) {
            running.control.paused.store(paused, Ordering::Release);
            if let Some(reason) = reason {
                running.stats.note_error_at(reason, now);
            }
        }
        Ok(())
    }

    pub fn pause(&self, name: &str) -> Result<PipelineStatus, Error> {
        self.set_paused(name, true, Some("paused by request".into()))?;
        self.describe(name)
    }

    pub fn resume(&self, name: &str) -> Result<PipelineStatus, Error> {
        self.set_paused(name, false, None)?;
        self.describe(name)
    }

    /// Stops and forgets the pipeline; its topics stay. It is paused first, so the node
    /// running it (this one, or another of a cluster once it hears of it) stops it and gives
    /// its turn back; its checkpoints and saved steps are then removed under that turn, which
    /// no other node can write under any more.
    pub async fn delete(&self, name: &str) -> Result<(), Error> {
        self.set_paused(name, true, Some("being deleted".into()))?;
        let running = locks::lock(&self.running).remove(name);
        if let Some(running) = running {
            running.control.stop.store(true, Ordering::Release);
            let _ = running.task.await;
        }
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        let turn = loop {
            let (turns, pipeline) = (self.turns.clone(), name.to_string());
            let taken = tokio::task::spawn_blocking(move || turns.take(&pipeline))
                .await
                .map_err(|e| Error::Invalid(format!("taking the turn at {name}: {e}")))??;
            if taken.is_some() || tokio::time::Instant::now() >= deadline {
                break taken;
            }
            tokio::time::sleep(Duration::from_millis(ELSEWHERE_POLL_MS)).await;
        };
        let Some(turn) = turn else {
            return Err(Error::Conflict(format!(
                "pipeline {name}: the node running it did not stop within {} s; it is paused, \
                 delete it again",
                TURN_WAIT.as_secs()
            )));
        };
        let cleared = (|| {
            let trees = CheckpointTrees::of(&*turn.trees)?;
            for (key, _) in trees.checkpoints.scan_prefix(&format!("{name}/"))? {
                trees.checkpoints.remove(&key)?;
            }
            trees.sql_checkpoints.remove(name)?;
            turn.steps.remove(name)?;
            self.tree.remove(name)?;
            Ok::<_, Error>(())
        })();
        self.turns.give_back(name);
        cleared?;
        tracing::info!(pipeline = name, "pipeline deleted");
        Ok(())
    }

    fn stored(&self, name: &str) -> Result<Stored, Error> {
        self.tree
            .get(name)?
            .ok_or_else(|| Error::NotFound(format!("pipeline {name} does not exist")))
    }

    pub fn describe(&self, name: &str) -> Result<PipelineStatus, Error> {
        let stored = self.stored(name)?;
        let running = locks::lock(&self.running);
        let running = running.get(name);
        let stats = running.map(|r| r.stats.clone()).unwrap_or_default();
        let (lag, saved) = self.progress(&stored.spec)?;
        // The counters of the runner on this node, once it has taken up those its checkpoint
        // kept: a checkpoint may count a step whose output is still being appended. Else, on a
        // node of a cluster that does not run the pipeline or before the runner starts, those
        // saved with the last checkpoint; counters only grow.
        let here = running.is_some_and(|r| !r.control.elsewhere.load(Ordering::Acquire));
        let counted = match here && stats.taken_up.load(Ordering::Acquire) {
            true => stats.counted(),
            false => stats.counted().max_each(saved),
        };
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let last_error = locks::lock(&stats.last_error).clone();
        Ok(PipelineStatus {
            status: match (stored.paused, running) {
                (true, _) => "paused",
                (false, Some(r)) if r.control.elsewhere.load(Ordering::Acquire) => "standby",
                (false, Some(_)) => "running",
                (false, None) => "starting",
            }
            .into(),
            reason: stored.reason.clone(),
            created_ms: stored.created_ms,
            owner: stored.owner.clone(),
            lag,
            records_in: counted.records_in,
            records_out: counted.records_out,
            dropped: counted.dropped,
            dead_lettered: counted.dead_lettered,
            batches: counted.batches,
            failed_calls: counted.failed_calls,
            last_error: last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_ms: last_error.map(|(_, at)| at),
            plugins: locks::lock(&stats.versions).clone(),
            late_records: counted.late,
            open_windows: get(&stats.open_windows),
            open_groups: get(&stats.open_groups),
            watermark_ms: Some(stats.watermark_ms.load(Ordering::Relaxed))
                .filter(|w| *w != i64::MIN),
            spec: stored.spec,
        })
    }

    /// Records of the input not yet processed, and the counters saved with the checkpoints.
    fn progress(&self, spec: &PipelineSpec) -> Result<(u64, Counted), Error> {
        let Some(input) = self.topics.topic(&spec.from)? else {
            return Ok((0, Counted::default()));
        };
        // SQL pipelines and aggregating chains keep one checkpoint for all partitions.
        let sql = self.sql_checkpoints.get(&spec.name)?;
        let mut saved = sql.as_ref().map(|c| c.counted).unwrap_or_default();
        let mut lag = 0;
        for partition in 0..input.partitions {
            let (start, end) = self.topics.partition(&spec.from, partition)?.offsets()?;
            let next = match &sql {
                Some(checkpoint) => checkpoint
                    .next_offsets
                    .get(&partition)
                    .copied()
                    .unwrap_or(0),
                None => {
                    let checkpoint = self
                        .checkpoints
                        .get(&checkpoint_key(&spec.name, partition))?
                        .unwrap_or_default();
                    saved = saved.max_each(checkpoint.counted);
                    checkpoint.next_offset
                }
            };
            lag += end.saturating_sub(next.max(start));
        }
        Ok((lag, saved))
    }

    pub fn list(&self) -> Result<Vec<PipelineStatus>, Error> {
        self.tree
            .all()?
            .into_iter()
            .map(|(name, _)| self.describe(&name))
            .collect()
    }

    /// Names of the pipelines that run `plugin`.
    pub fn users_of(&self, plugin: &str) -> Result<Vec<String>, Error> {
        Ok(self
            .tree
            .all()?
            .into_iter()
            .filter(|(_, s)| {
                s.spec
                    .through
                    .iter()
                    .chain(&s.spec.partition_by)
                    .any(|p| p == plugin)
            })
            .map(|(name, _)| name)
            .collect())
    }

    /// Stops every pipeline task, letting a step in progress finish.
    pub async fn shutdown(&self) {
        let running: Vec<Running> = locks::lock(&self.running).drain().map(|(_, r)| r).collect();
        for r in &running {
            r.control.stop.store(true, Ordering::Release);
        }
        self.notify_append();
        for r in running {
            let _ = r.task.await;
        }
    }
}

/// Drops a pipeline's runner on a blocking thread: a continuous query's waits for its last
/// save.
async fn drop_runner(control: &Control) {
    let runner = locks::lock(&control.runner).take();
    if let Some(runner) = runner
        && let Err(e) =
            tokio::task::spawn_blocking(move || weir_storage::reactor::blocking(|| drop(runner)))
                .await
    {
        tracing::error!(error = %e, "dropping a pipeline's runner panicked");
    }
}

fn already_exists(pipeline: &str) -> Error {
    Error::Conflict(format!("pipeline {pipeline} already exists"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::collections::BTreeMap;

    use weir_storage::{Storage, StorageConfig};

    use super::*;
    use crate::sandbox::SandboxConfig;

    /// On a cluster, a pipeline made through this node is seen by [`Pipelines::sync`] too, as
    /// soon as it is stored, maybe before `create` starts its task; the node still runs one
    /// task for it, since two would share its turn and both write its output.
    #[tokio::test(flavor = "current_thread")]
    async fn a_pipeline_seen_again_as_it_starts_runs_one_task() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
        storage.create_topic("in", 1, BTreeMap::new()).unwrap();
        let runtime = crate::Runtime::open(storage, SandboxConfig::default()).unwrap();
        let pipelines = runtime.pipelines().clone();
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();

        let spec = PipelineSpec::in_to_out("copy", 10);
        pipelines.create(spec.clone(), None).unwrap();
        assert_eq!(tasks(), before + 1, "create starts the pipeline's task");
        // What a `sync` that read the new row first started would be started again.
        let stored = pipelines.stored("copy").unwrap();
        pipelines.spawn(&stored);
        pipelines.sync().unwrap();
        assert_eq!(tasks(), before + 1, "one task runs the pipeline");

        let again = pipelines.create(spec, None).unwrap_err();
        assert!(
            again.to_string().contains("pipeline copy already exists"),
            "{again}"
        );
        pipelines.shutdown().await;
        assert_eq!(tasks(), before, "no task outlives the shutdown");
    }
}
