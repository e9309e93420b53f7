//! One pipeline's work: read a batch of an input partition, run it through the plugin chain,
//! append the results (and dead letters) to the output topics, checkpoint.
//!
//! Exactly once inside the broker: the last record of every batch a pipeline appends carries the
//! header `weir.pipeline = <name>/<input partition>/<last input offset of the step>`, and every
//! output record knows the input offset it came from. The checkpoint (next input offset, output
//! log ends) is written after the appends and may be lost in a crash; on start
//! the runner reads each output log from the end the checkpoint recorded, finds the markers, and
//! while replaying skips every output whose input offset a log already covers. Plugins must be
//! deterministic for this to hold (the same input gives the same output), as the SDK's kinds are.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir::Kind;
use weir_storage::{
    BatchBuilder, Compression, Header, NewRecord, PartitionSource, Record, Topics, Tree,
};

use crate::registry::{PluginVersion, Registry};
use crate::sandbox::{CallError, Init, Instance, Plugin};
use crate::{Error, partition_for_key};
use weir_storage::locks;

/// Header on the last record of each batch a pipeline appends.
pub const MARKER_HEADER: &str = "weir.pipeline";
/// Headers of a dead letter.
pub const ERROR_HEADER: &str = "weir.error";
pub const PLUGIN_HEADER: &str = "weir.plugin";
pub const SOURCE_HEADER: &str = "weir.source";

/// Input bytes read per step and partition.
pub(crate) const STEP_BYTES_MAX: u64 = 1 << 20;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PipelineSpec {
    pub name: String,
    pub from: String,
    #[serde(default)]
    pub through: Vec<String>,
    #[serde(default)]
    pub partition_by: Option<String>,
    pub to: Vec<String>,
    /// `earliest`, `latest`, an offset, or `@<timestamp ms>`.
    #[serde(default = "default_from_offset")]
    pub from_offset: String,
    /// Topic of records a plugin failed on; default `<name>.dlq`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// Records per plugin call.
    #[serde(default = "default_batch_records_max")]
    pub batch_records_max: u32,
    /// Failed calls in a row after which the pipeline pauses.
    #[serde(default = "default_failures_max")]
    pub failures_max: u32,
    /// The `CREATE PIPELINE` statement of a SQL pipeline, which has no plugins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    /// How far the watermark of an aggregating chain stays behind the least of its input
    /// partitions' largest event times.
    #[serde(default)]
    pub lateness_ms: i64,
    /// How long an input partition of an aggregating chain may be silent before it stops
    /// holding the watermark back.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: i64,
}

fn default_from_offset() -> String {
    "latest".into()
}
fn default_batch_records_max() -> u32 {
    PipelineSpec::BATCH_RECORDS_DEFAULT
}
fn default_failures_max() -> u32 {
    PipelineSpec::FAILURES_DEFAULT
}
fn default_idle_timeout_ms() -> i64 {
    PipelineSpec::IDLE_TIMEOUT_DEFAULT_MS
}

impl PipelineSpec {
    /// Records per plugin call when a spec does not say.
    pub const BATCH_RECORDS_DEFAULT: u32 = 1000;
    /// Failed calls in a row before a pipeline pauses, when a spec does not say.
    pub const FAILURES_DEFAULT: u32 = 5;
    /// How long a partition may be silent before it stops holding an aggregate's watermark
    /// back, when a spec does not say.
    pub const IDLE_TIMEOUT_DEFAULT_MS: i64 = 30_000;
    /// The longest lateness or idle timeout: a day.
    pub const WAIT_MAX_MS: i64 = 86_400_000;

    pub fn dead_letter_topic(&self) -> String {
        self.dead_letter
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", self.name))
    }
}

/// Where a pipeline starts reading a partition the first time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
}

impl StartAt {
    pub fn parse(text: &str) -> Result<StartAt, Error> {
        let bad = || {
            Error::Invalid(format!(
                "from offset {text:?}: expected earliest, latest, an offset or @<timestamp ms>"
            ))
        };
        Ok(match text {
            "earliest" => StartAt::Earliest,
            "latest" => StartAt::Latest,
            _ => match text.strip_prefix('@') {
                Some(ms) => StartAt::Timestamp(ms.parse().map_err(|_| bad())?),
                None => StartAt::Offset(text.parse().map_err(|_| bad())?),
            },
        })
    }

    pub(crate) fn resolve(self, log: &dyn PartitionSource) -> Result<u64, Error> {
        let (start, end) = log.offsets()?;
        Ok(match self {
            StartAt::Earliest => start,
            StartAt::Latest => end,
            StartAt::Offset(offset) => offset.clamp(start, end),
            StartAt::Timestamp(ms) => log
                .offset_for_timestamp(ms)?
                .map_or(end, |(offset, _)| offset),
        })
    }
}

/// Progress of one input partition, saved after every step.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Checkpoint {
    pub next_offset: u64,
    /// End offset of every output log (`topic/partition`) when the checkpoint was taken.
    pub outputs: BTreeMap<String, u64>,
    /// The pipeline's counters when the checkpoint was taken.
    #[serde(default)]
    pub counted: Counted,
}

/// A pipeline's counters as of a checkpoint, saved with it so that they go on from there after
/// a restart or a pause instead of starting again from zero.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    pub records_in: u64,
    pub records_out: u64,
    pub dropped: u64,
    pub dead_lettered: u64,
    pub batches: u64,
    pub failed_calls: u64,
    pub late: u64,
}

impl Counted {
    /// Each counter of both, added.
    pub fn plus(self, other: Counted) -> Counted {
        Counted {
            records_in: self.records_in + other.records_in,
            records_out: self.records_out + other.records_out,
            dropped: self.dropped + other.dropped,
            dead_lettered: self.dead_lettered + other.dead_lettered,
            batches: self.batches + other.batches,
            failed_calls: self.failed_calls + other.failed_calls,
            late: self.late + other.late,
        }
    }

    /// Each counter, the larger of both.
    pub fn max_each(self, other: Counted) -> Counted {
        let [a, b] = [self.fields(), other.fields()];
        let max = |i: usize| a[i].max(b[i]);
        Counted {
            records_in: max(0),
            records_out: max(1),
            dropped: max(2),
            dead_lettered: max(3),
            batches: max(4),
            failed_calls: max(5),
            late: max(6),
        }
    }

    /// The counters with the stats they come from, in one order.
    fn fields(self) -> [u64; 7] {
        [
            self.records_in,
            self.records_out,
            self.dropped,
            self.dead_lettered,
            self.batches,
            self.failed_calls,
            self.late,
        ]
    }
}

/// Counters of a running pipeline.
pub struct Stats {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub dropped: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub batches: AtomicU64,
    pub failed_calls: AtomicU64,
    /// The last error and when it happened (ms since the epoch).
    pub last_error: std::sync::Mutex<Option<(String, i64)>>,
    /// Plugin versions in use, as `name@version`.
    pub versions: std::sync::Mutex<Vec<String>>,
    /// Records of a SQL pipeline that came after their window closed.
    pub late: AtomicU64,
    pub open_windows: AtomicU64,
    pub open_groups: AtomicU64,
    /// The watermark of a SQL pipeline, `i64::MIN` while it has none.
    pub watermark_ms: AtomicI64,
    /// Whether a runner on this node has taken up the counters its pipeline's last checkpoint
    /// kept and counts on from them, each step's once its output is in the logs: while it
    /// does, these counters are the pipeline's. A checkpoint that saves a step with its output
    /// still to append counts that output already.
    pub taken_up: AtomicBool,
}

impl Default for Stats {
    fn default() -> Stats {
        Stats {
            records_in: AtomicU64::default(),
            records_out: AtomicU64::default(),
            dropped: AtomicU64::default(),
            dead_lettered: AtomicU64::default(),
            batches: AtomicU64::default(),
            failed_calls: AtomicU64::default(),
            last_error: Default::default(),
            versions: Default::default(),
            late: AtomicU64::default(),
            open_windows: AtomicU64::default(),
            open_groups: AtomicU64::default(),
            watermark_ms: AtomicI64::new(i64::MIN),
            taken_up: AtomicBool::new(false),
        }
    }
}

impl Stats {
    fn counters(&self) -> [&AtomicU64; 7] {
        [
            &self.records_in,
            &self.records_out,
            &self.dropped,
            &self.dead_lettered,
            &self.batches,
            &self.failed_calls,
            &self.late,
        ]
    }

    /// The counters now, as a checkpoint keeps them.
    pub(crate) fn counted(&self) -> Counted {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Counted {
            records_in: get(&self.records_in),
            records_out: get(&self.records_out),
            dropped: get(&self.dropped),
            dead_lettered: get(&self.dead_lettered),
            batches: get(&self.batches),
            failed_calls: get(&self.failed_calls),
            late: get(&self.late),
        }
    }

    /// Brings each counter up to what a checkpoint kept (counters only grow, so the latest of
    /// several checkpoints wins whatever order they come in).
    pub(crate) fn resume_from(&self, counted: Counted) {
        for (counter, saved) in self.counters().into_iter().zip(counted.fields()) {
            counter.fetch_max(saved, Ordering::Relaxed);
        }
    }

    /// Keeps `error` as the last one, seen at `at_ms`.
    pub(crate) fn note_error_at(&self, error: String, at_ms: i64) {
        *locks::lock(&self.last_error) = Some((error, at_ms));
    }

    pub(crate) fn note_error(&self, error: String) {
        self.note_error_at(error, weir_storage::now_ms());
    }
}

/// One plugin of a pipeline's chain.
pub(crate) struct Stage {
    pub(crate) name: String,
    pub(crate) version: PluginVersion,
    pub(crate) plugin: Plugin,
    /// The live instance, shared by all partitions.
    instance: Option<Instance>,
}

impl Stage {
    pub(crate) fn new(name: String, version: PluginVersion, plugin: Plugin) -> Stage {
        Stage {
            name,
            version,
            plugin,
            instance: None,
        }
    }

    /// `name@version`, as statuses and errors name it.
    pub(crate) fn label(&self) -> String {
        format!("{}@{}", self.name, self.version.version)
    }

    /// The live instance, made first if there is none: with the version's params, `partitions`
    /// partitions to spread over and an aggregate's saved `state` (copied only then).
    pub(crate) fn instance(
        &mut self,
        registry: &Registry,
        partitions: u32,
        state: Option<&[u8]>,
    ) -> Result<&mut Instance, CallError> {
        if self.instance.is_none() {
            let params = self
                .version
                .params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let init = Init {
                params,
                partitions,
                state: state.map(<[u8]>::to_vec),
            };
            self.instance = Some(registry.sandbox().instantiate(&self.plugin, &init)?);
        }
        self.instance
            .as_mut()
            .ok_or_else(|| CallError::Init("no instance".into()))
    }

    /// Drops the instance, after a failed call left it in doubt.
    pub(crate) fn forget_instance(&mut self) {
        self.instance = None;
    }
}

/// A record on its way through the chain.
#[derive(Clone)]
pub(crate) struct Item {
    /// Index in the step's input.
    pub(crate) origin: usize,
    pub(crate) record: Record,
    topic: Option<String>,
    partition: Option<u32>,
}

impl Item {
    /// Record `origin` of a step's input, before any stage.
    pub(crate) fn input(origin: usize, record: &Record) -> Item {
        Item {
            origin,
            record: record.clone(),
            topic: None,
            partition: None,
        }
    }
}

pub(crate) struct DeadLetter {
    pub(crate) origin: usize,
    pub(crate) plugin: String,
    pub(crate) message: String,
}

/// What a step's records became after a chain of stages.
pub(crate) struct StagesOutcome {
    pub(crate) items: Vec<Item>,
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) failed_call: Option<String>,
}

/// The state of one pipeline between steps; owned by its task.
pub struct Runner {
    spec: PipelineSpec,
    topics: Arc<dyn Topics>,
    registry: Arc<Registry>,
    checkpoints: Tree<Checkpoint>,
    stages: Vec<Stage>,
    generation: u64,
    /// Per input partition: its checkpoint and, while replaying after a restart, the highest
    /// input offset each output log already covers.
    cursors: BTreeMap<u32, (Checkpoint, HashMap<String, i64>)>,
    stats: Arc<Stats>,
    failures: Failures,
}

/// What a step tells the task driving the runner.
pub enum Step {
    /// Records were read; step again.
    Worked,
    /// Nothing to read.
    Idle,
    /// Too many failed calls in a row (or a plugin vanished); pause with this reason.
    Pause(String),
    /// Another node of the cluster runs the pipeline now.
    Elsewhere,
}

/// One partition of an output topic (or the dead-letter topic): topic, partition, its log.
type OutputLog = (String, u32, Arc<dyn PartitionSource>);

fn log_key(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

pub fn checkpoint_key(pipeline: &str, partition: u32) -> String {
    format!("{pipeline}/{partition}")
}

impl Runner {
    pub fn new(
        spec: PipelineSpec,
        topics: Arc<dyn Topics>,
        registry: Arc<Registry>,
        checkpoints: Tree<Checkpoint>,
        stats: Arc<Stats>,
    ) -> Result<Runner, Error> {
        let mut runner = Runner {
            spec,
            topics,
            registry,
            checkpoints,
            stages: Vec::new(),
            generation: u64::MAX,
            cursors: BTreeMap::new(),
            stats,
            failures: Failures::default(),
        };
        runner.refresh_plugins()?;
        runner.open_cursors()?;
        Ok(runner)
    }

    fn output_logs(&self) -> Result<Vec<OutputLog>, Error> {
        let mut logs = Vec::new();
        for topic in self
            .spec
            .to
            .iter()
            .chain(std::iter::once(&self.spec.dead_letter_topic()))
        {
            let meta = self.topics.existing_topic(topic)?;
            for partition in 0..meta.partitions {
                logs.push((
                    topic.clone(),
                    partition,
                    self.topics.partition(topic, partition)?,
                ));
            }
        }
        Ok(logs)
    }

    /// Loads each input partition's checkpoint (creating one at `from_offset` for a partition seen
    /// the first time) and scans the outputs written after it for this pipeline's markers.
    fn open_cursors(&mut self) -> Result<(), Error> {
        let partitions = self.topics.existing_topic(&self.spec.from)?.partitions;
        let outputs = self.output_logs()?;
        for partition in 0..partitions {
            if self.cursors.contains_key(&partition) {
                continue;
            }
            let key = checkpoint_key(&self.spec.name, partition);
            let checkpoint = match self.checkpoints.get(&key)? {
                Some(checkpoint) => checkpoint,
                None => {
                    let start = StartAt::parse(&self.spec.from_offset)?;
                    let checkpoint = Checkpoint {
                        next_offset: start
                            .resolve(&*self.topics.partition(&self.spec.from, partition)?)?,
                        outputs: outputs
                            .iter()
                            .map(|(t, p, log)| Ok((log_key(t, *p), log.offsets()?.1)))
                            .collect::<Result<_, Error>>()?,
                        counted: Counted::default(),
                    };
                    // Durably: replays after a crash start from here.
                    self.checkpoints.insert(&key, &checkpoint)?;
                    checkpoint
                }
            };
            let mut covered = HashMap::new();
            let marker_prefix = format!("{}/{partition}/", self.spec.name);
            for (topic, output_partition, log) in &outputs {
                let name = log_key(topic, *output_partition);
                let (start, end) = log.offsets()?;
                let mut offset = checkpoint
                    .outputs
                    .get(&name)
                    .copied()
                    .unwrap_or(0)
                    .max(start);
                while offset < end {
                    let records = log.read_records(offset, STEP_BYTES_MAX)?;
                    let Some(last) = records.last() else { break };
                    offset = last.offset as u64 + 1;
                    for header in records
                        .iter()
                        .flat_map(|r| &r.headers)
                        .filter(|h| h.key == MARKER_HEADER)
                    {
                        let value = header.value.as_deref().unwrap_or_default();
                        let covered_offset = std::str::from_utf8(value)
                            .ok()
                            .and_then(|v| v.strip_prefix(&marker_prefix))
                            .and_then(|v| v.parse::<i64>().ok());
                        if let Some(covered_offset) = covered_offset {
                            let entry = covered.entry(name.clone()).or_insert(covered_offset);
                            *entry = (*entry).max(covered_offset);
                        }
                    }
                }
            }
            if !covered.is_empty() {
                tracing::info!(pipeline = %self.spec.name, partition, ?covered, "replaying after a restart; outputs already written are skipped");
            }
            self.stats.resume_from(checkpoint.counted);
            self.cursors.insert(partition, (checkpoint, covered));
        }
        Ok(())
    }

    /// Picks up new plugin versions; called between batches.
    fn refresh_plugins(&mut self) -> Result<(), Error> {
        let generation = self.registry.generation();
        if generation == self.generation {
            return Ok(());
        }
        let names: Vec<&String> = self
            .spec
            .through
            .iter()
            .chain(&self.spec.partition_by)
            .collect();
        let mut stages = Vec::with_capacity(names.len());
        let mut old: Vec<Option<Stage>> = std::mem::take(&mut self.stages)
            .into_iter()
            .map(Some)
            .collect();
        for (index, name) in names.into_iter().enumerate() {
            let (version, plugin) = self.registry.active(name)?;
            let kept = old
                .get_mut(index)
                .and_then(Option::take)
                .filter(|stage| stage.version == version);
            stages.push(match kept {
                Some(stage) => stage,
                None => {
                    if self.generation != u64::MAX {
                        tracing::info!(pipeline = %self.spec.name, plugin = %name, version = version.version, "switching plugin version between batches");
                    }
                    Stage::new(name.clone(), version, plugin)
                }
            });
        }
        *locks::lock(&self.stats.versions) = stages
            .iter()
            .map(|s| format!("{}@{}", s.name, s.version.version))
            .collect();
        self.stages = stages;
        self.generation = generation;
        Ok(())
    }

    /// Processes at most one batch of every input partition.
    pub fn step(&mut self) -> Result<Step, Error> {
        if self.registry.generation() != self.generation
            && crate::windowed::aggregates(&self.registry, &self.spec)
        {
            // The task makes the runner again, one that runs the aggregate over all partitions.
            return Err(Error::Invalid(format!(
                "a plugin of pipeline {} is now an aggregate; it starts again over all input partitions",
                self.spec.name
            )));
        }
        if let Err(e) = self.refresh_plugins() {
            return Ok(Step::Pause(format!("cannot load plugins: {e}")));
        }
        self.open_cursors()?;
        let mut worked = false;
        let partitions: Vec<u32> = self.cursors.keys().copied().collect();
        for partition in partitions {
            let log = self.topics.partition(&self.spec.from, partition)?;
            let next_offset = self
                .cursors
                .get(&partition)
                .map_or(0, |(c, _)| c.next_offset);
            let records = step_records(&*log, next_offset, self.spec.batch_records_max)?;
            if records.is_empty() {
                continue;
            }
            worked = true;
            if let Some(reason) = self.process(partition, records)? {
                return Ok(Step::Pause(reason));
            }
        }
        Ok(if worked { Step::Worked } else { Step::Idle })
    }

    fn process(&mut self, partition: u32, records: Vec<Record>) -> Result<Option<String>, Error> {
        let outcome = self.run_stages(partition, &records)?;
        let last_offset = records.last().map_or(-1, |r| r.offset);
        self.append(
            partition,
            &records,
            outcome.items,
            outcome.dead,
            last_offset,
        )?;
        self.stats
            .records_in
            .fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.checkpoint(partition, last_offset)?;
        Ok(self.count_failure(outcome.failed_call))
    }

    /// Runs a step's records through the chain of stages.
    fn run_stages(&mut self, partition: u32, records: &[Record]) -> Result<StagesOutcome, Error> {
        let first_partitions = self.topics.existing_topic(&self.spec.to[0])?.partitions;
        let items = records
            .iter()
            .enumerate()
            .map(|(origin, r)| Item::input(origin, r))
            .collect();
        Ok(run_chain(
            &self.registry,
            &mut self.stages,
            items,
            partition,
            first_partitions,
        ))
    }

    /// Records that the partition's step up to `last_offset` is done, with the output log ends a
    /// replay after a crash starts from.
    fn checkpoint(&mut self, partition: u32, last_offset: i64) -> Result<(), Error> {
        let outputs = self.output_logs()?;
        let (checkpoint, covered) = self.cursors.entry(partition).or_default();
        checkpoint.next_offset = last_offset as u64 + 1;
        // Steps run one partition after another, so every count so far is of checkpointed work.
        checkpoint.counted = self.stats.counted();
        // While a replay skips what a log already holds, that log's end is past outputs of
        // inputs not checkpointed yet: the checkpoint keeps where the replay found them, so a
        // crash during the replay finds them again. Once the replay passes them, the log's end
        // covers only checkpointed inputs.
        covered.retain(|_, offset| *offset > last_offset);
        checkpoint.outputs = outputs
            .iter()
            .map(|(t, p, log)| {
                let key = log_key(t, *p);
                let at = match covered.contains_key(&key) {
                    true => checkpoint.outputs.get(&key).copied().unwrap_or(0),
                    false => log.offsets()?.1,
                };
                Ok((key, at))
            })
            .collect::<Result<_, Error>>()?;
        self.checkpoints
            .insert_unflushed(&checkpoint_key(&self.spec.name, partition), checkpoint)?;
        Ok(())
    }

    /// Counts a failed call; answers why the pipeline pauses once too many came in a row.
    fn count_failure(&mut self, failed_call: Option<String>) -> Option<String> {
        self.failures
            .count(&self.spec, &self.stats, failed_call, "failed calls")
    }

    /// Groups the step's results by output log and appends them, skipping what a log already
    /// holds from before a restart.
    fn append(
        &mut self,
        partition: u32,
        inputs: &[Record],
        items: Vec<Item>,
        dead: Vec<DeadLetter>,
        last_offset: i64,
    ) -> Result<(), Error> {
        let covered = self
            .cursors
            .get(&partition)
            .map(|(_, covered)| covered.clone())
            .unwrap_or_default();
        let already_in = |topic: &str, p: u32, origin: usize| {
            inputs[origin].offset <= covered.get(&log_key(topic, p)).copied().unwrap_or(-1)
        };
        let mut groups: BTreeMap<(String, u32), Vec<NewRecord>> = BTreeMap::new();
        let mut dead_letters = Vec::new();
        let mut out_count = 0u64;
        let mut handled = std::collections::HashSet::new();
        let mut partition_counts: HashMap<String, u32> = HashMap::new();
        for item in items {
            let topic = item
                .topic
                .clone()
                .unwrap_or_else(|| self.spec.to[0].clone());
            match self.route(&topic, &item, partition, &mut partition_counts)? {
                Ok(p) => {
                    out_count += 1;
                    handled.insert(item.origin);
                    if !already_in(&topic, p, item.origin) {
                        let r = item.record;
                        let new = NewRecord {
                            timestamp: r.timestamp,
                            key: r.key,
                            value: r.value,
                            headers: r.headers,
                        };
                        groups.entry((topic, p)).or_default().push(new);
                    }
                }
                Err(message) => dead_letters.push(DeadLetter {
                    origin: item.origin,
                    plugin: "pipeline".into(),
                    message,
                }),
            }
        }
        dead_letters.extend(dead);
        let dead_count = dead_letters.len() as u64;
        let last_letter = dead_letters
            .last()
            .map(|l| format!("{}: {}", l.plugin, l.message));
        let dead_letter_topic = self.spec.dead_letter_topic();
        let dead_partition = partition % dead_letter_partitions(&*self.topics, &self.spec)?;
        for letter in dead_letters {
            handled.insert(letter.origin);
            if !already_in(&dead_letter_topic, dead_partition, letter.origin) {
                let record = dead_letter(
                    &self.spec.from,
                    partition,
                    &inputs[letter.origin],
                    letter.message,
                    letter.plugin,
                );
                groups
                    .entry((dead_letter_topic.clone(), dead_partition))
                    .or_default()
                    .push(record);
            }
        }
        let marker = Bytes::from(format!("{}/{partition}/{last_offset}", self.spec.name));
        self.write(groups, &marker)?;
        self.stats
            .records_out
            .fetch_add(out_count, Ordering::Relaxed);
        self.stats
            .dead_lettered
            .fetch_add(dead_count, Ordering::Relaxed);
        if let Some(error) = last_letter {
            self.stats.note_error(format!("dead-lettered: {error}"));
        }
        let dropped = inputs.len().saturating_sub(handled.len()) as u64;
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        Ok(())
    }

    /// The partition of output `topic` an item goes to, or why it cannot go there.
    fn route(
        &self,
        topic: &str,
        item: &Item,
        input_partition: u32,
        partition_counts: &mut HashMap<String, u32>,
    ) -> Result<Result<u32, String>, Error> {
        if !self.spec.to.iter().any(|t| t == topic) {
            return Ok(Err(format!(
                "topic {topic} is not an output of pipeline {}",
                self.spec.name
            )));
        }
        // Looked up once per output topic and step, not once per record.
        let partitions = match partition_counts.get(topic) {
            Some(count) => *count,
            None => {
                let count = self.topics.existing_topic(topic)?.partitions;
                partition_counts.insert(topic.to_string(), count);
                count
            }
        };
        Ok(match item.partition {
            Some(p) if p >= partitions => Err(format!(
                "partition {p} of {topic} does not exist ({partitions} partitions)"
            )),
            Some(p) => Ok(p),
            None => Ok(match item.record.key.as_deref() {
                Some(key) => partition_for_key(key, partitions),
                // Keyless records keep their input partition's order, and a replay puts them
                // where the first run did.
                None => input_partition % partitions.max(1),
            }),
        })
    }

    /// Appends each output log's records as one batch, the last record carrying the marker.
    fn write(
        &self,
        groups: BTreeMap<(String, u32), Vec<NewRecord>>,
        marker: &Bytes,
    ) -> Result<(), Error> {
        for ((topic, p), records) in groups {
            let batch = batch_with_marker(records, marker)?;
            self.topics.append(&topic, p, batch)?;
        }
        Ok(())
    }
}

/// The records a step reads from `log` at `next_offset` (or the log's start, if later): up to
/// [`STEP_BYTES_MAX`] bytes and `records_max` records; none when it is at the end.
pub(crate) fn step_records(
    log: &dyn PartitionSource,
    next_offset: u64,
    records_max: u32,
) -> Result<Vec<Record>, Error> {
    let (start, end) = log.offsets()?;
    let next_offset = next_offset.max(start);
    if next_offset >= end {
        return Ok(Vec::new());
    }
    let records_max = records_max.max(1) as usize;
    let mut records = log.read_records_at_most(next_offset, STEP_BYTES_MAX, records_max)?;
    records.retain(|r| r.offset as u64 >= next_offset);
    records.truncate(records_max);
    Ok(records)
}

/// Failures in a row of a pipeline's steps.
#[derive(Default)]
pub(crate) struct Failures {
    in_row: u32,
}

impl Failures {
    /// Counts the failure of a step (`None` when it worked); answers why the pipeline pauses
    /// once `spec.failures_max` came in a row. `what` names them: `failed calls`.
    pub(crate) fn count(
        &mut self,
        spec: &PipelineSpec,
        stats: &Stats,
        failed: Option<String>,
        what: &str,
    ) -> Option<String> {
        let Some(error) = failed else {
            self.in_row = 0;
            return None;
        };
        stats.failed_calls.fetch_add(1, Ordering::Relaxed);
        stats.note_error(error.clone());
        self.in_row += 1;
        tracing::warn!(pipeline = %spec.name, %error, "a batch failed; it went to the dead-letter topic");
        if self.in_row < spec.failures_max {
            return None;
        }
        self.in_row = 0;
        Some(format!(
            "{} {what} in a row, last: {error}",
            spec.failures_max
        ))
    }
}

/// `records` as one batch, the last record carrying the header `weir.pipeline = marker`.
pub(crate) fn batch_with_marker(records: Vec<NewRecord>, marker: &Bytes) -> Result<Bytes, Error> {
    let mut builder = BatchBuilder::new(Compression::None);
    let count = records.len();
    for (index, mut record) in records.into_iter().enumerate() {
        if index + 1 == count {
            record.headers.push(Header {
                key: MARKER_HEADER.into(),
                value: Some(marker.clone()),
            });
        }
        builder.push(record);
    }
    Ok(builder.build()?)
}

/// Partitions of `spec`'s dead-letter topic (at least one to spread over).
pub(crate) fn dead_letter_partitions(
    topics: &dyn Topics,
    spec: &PipelineSpec,
) -> Result<u32, Error> {
    Ok(topics
        .existing_topic(&spec.dead_letter_topic())?
        .partitions
        .max(1))
}

/// Input record `input` of partition `partition` of topic `from` as a dead letter: its own
/// headers plus why, what failed on it, and where it came from.
pub(crate) fn dead_letter(
    from: &str,
    partition: u32,
    input: &Record,
    message: String,
    failed: String,
) -> NewRecord {
    let mut headers = input.headers.clone();
    let source = format!("{from}/{partition}/{}", input.offset);
    for (key, value) in [
        (ERROR_HEADER, message),
        (PLUGIN_HEADER, failed),
        (SOURCE_HEADER, source),
    ] {
        headers.push(Header {
            key: key.into(),
            value: Some(Bytes::from(value)),
        });
    }
    NewRecord {
        timestamp: input.timestamp,
        key: input.key.clone(),
        value: input.value.clone(),
        headers,
    }
}

/// Runs `items` of input `partition` through `stages`, stopping at the first failed call, whose
/// items become dead letters. `partitions` is what a partitioner spreads over.
pub(crate) fn run_chain(
    registry: &Registry,
    stages: &mut [Stage],
    mut items: Vec<Item>,
    partition: u32,
    partitions: u32,
) -> StagesOutcome {
    let mut dead = Vec::new();
    for stage in stages {
        if items.is_empty() {
            break;
        }
        let records: Vec<Record> = items.iter().map(|item| item.record.clone()).collect();
        let called = stage
            .instance(registry, partitions, None)
            .and_then(|instance| instance.process(&records, partition as i32, false));
        match called {
            Ok(output) => items = apply(stage, items, output, &mut dead),
            Err(error) => {
                stage.forget_instance();
                let message = error.to_string();
                dead.extend(items.into_iter().map(|item| DeadLetter {
                    origin: item.origin,
                    plugin: stage.name.clone(),
                    message: message.clone(),
                }));
                return StagesOutcome {
                    items: Vec::new(),
                    dead,
                    failed_call: Some(format!("{}: {message}", stage.label())),
                };
            }
        }
    }
    StagesOutcome {
        items,
        dead,
        failed_call: None,
    }
}

/// The items after one stage: what a filter kept, what a map made, where a partitioner put them.
pub(crate) fn apply(
    stage: &Stage,
    items: Vec<Item>,
    output: crate::Output,
    dead: &mut Vec<DeadLetter>,
) -> Vec<Item> {
    for (source, message) in &output.failures {
        if let Some(item) = items.get(*source as usize) {
            dead.push(DeadLetter {
                origin: item.origin,
                plugin: stage.name.clone(),
                message: message.clone(),
            });
        }
    }
    match stage.plugin.kind() {
        Kind::Filter => output
            .kept
            .iter()
            .filter_map(|i| items.get(*i as usize).cloned())
            .collect(),
        Kind::Partitioner => items
            .into_iter()
            .zip(output.partitions)
            .filter(|(_, p)| *p != u32::MAX)
            .map(|(item, p)| Item {
                partition: Some(p),
                ..item
            })
            .collect(),
        // A scalar function is refused at create; a new version of a map may still be one.
        Kind::Map | Kind::FilterMap | Kind::FlatMap | Kind::Aggregate | Kind::Scalar => output
            .records
            .into_iter()
            .filter_map(|out| {
                let source = items.get(out.source as usize)?;
                let r = out.record;
                let timestamp = if r.timestamp < 0 {
                    source.record.timestamp
                } else {
                    r.timestamp
                };
                Some(Item {
                    origin: source.origin,
                    record: Record {
                        offset: source.record.offset,
                        timestamp,
                        key: r.key,
                        value: r.value,
                        headers: r.headers,
                    },
                    topic: out.topic.or_else(|| source.topic.clone()),
                    partition: out.partition.or(source.partition),
                })
            })
            .collect(),
    }
}

#[cfg(test)]
impl PipelineSpec {
    /// A pipeline from topic `in` to topic `out` through no plugin, from the earliest offset.
    pub(crate) fn in_to_out(name: &str, batch_records_max: u32) -> PipelineSpec {
        PipelineSpec {
            name: name.into(),
            from: "in".into(),
            through: Vec::new(),
            partition_by: None,
            to: vec!["out".into()],
            from_offset: "earliest".into(),
            dead_letter: None,
            batch_records_max,
            failures_max: PipelineSpec::FAILURES_DEFAULT,
            sql: None,
            lateness_ms: 0,
            idle_timeout_ms: PipelineSpec::IDLE_TIMEOUT_DEFAULT_MS,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::collections::BTreeMap;

    use weir_storage::{Storage, StorageConfig};

    use super::*;
    use crate::sandbox::{Sandbox, SandboxConfig};

    /// A pipeline copying `in` to `out` ten records a step, as a node after a restart makes it.
    fn runner(
        storage: &Arc<Storage>,
        registry: &Arc<Registry>,
        checkpoints: &Tree<Checkpoint>,
    ) -> Runner {
        let spec = PipelineSpec::in_to_out("copy", 10);
        let stats = Arc::new(Stats::default());
        Runner::new(
            spec,
            storage.clone(),
            registry.clone(),
            checkpoints.clone(),
            stats,
        )
        .unwrap()
    }

    #[test]
    fn a_crash_during_a_replay_repeats_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Arc::new(Storage::open(StorageConfig::new(dir.path())).unwrap());
        for topic in ["in", "out", "copy.dlq"] {
            storage.create_topic(topic, 1, BTreeMap::new()).unwrap();
        }
        let mut inputs = BatchBuilder::new(Compression::None);
        for i in 0..30 {
            inputs.push(NewRecord {
                timestamp: i,
                key: None,
                value: Some(Bytes::from(i.to_string())),
                headers: Vec::new(),
            });
        }
        storage
            .log("in", 0)
            .unwrap()
            .append(&inputs.build().unwrap())
            .unwrap();
        let sandbox = Arc::new(Sandbox::new(SandboxConfig::default()).unwrap());
        let modules = crate::ModuleDir::open(dir.path().join("plugin-store")).unwrap();
        let registry =
            Arc::new(Registry::open_in(storage.meta(), Arc::new(modules), sandbox).unwrap());
        let checkpoints: Tree<Checkpoint> = storage.meta().tree("checkpoints").unwrap();
        let key = checkpoint_key("copy", 0);

        // Two steps are written, but the crash loses both checkpoints (they are not flushed).
        let mut first = runner(&storage, &registry, &checkpoints);
        first.open_cursors().unwrap();
        let start = checkpoints.get(&key).unwrap().unwrap();
        first.step().unwrap();
        first.step().unwrap();
        checkpoints.insert(&key, &start).unwrap();
        // The replay skips the first step's outputs and checkpoints; the crash keeps that one.
        runner(&storage, &registry, &checkpoints).step().unwrap();
        // The next run finds the second step's outputs still written, and goes on.
        let mut last = runner(&storage, &registry, &checkpoints);
        while let Step::Worked = last.step().unwrap() {}

        let out = storage.log("out", 0).unwrap();
        let values: Vec<String> = out
            .read_records(0, u64::MAX)
            .unwrap()
            .iter()
            .map(|r| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        let want: Vec<String> = (0..30).map(|i| i.to_string()).collect();
        assert_eq!(values, want);
    }
}
