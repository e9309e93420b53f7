//! Pipelines with state: an [`Operator`] (a continuous query the SQL engine made through a
//! [`Compiler`], or a plugin chain ending in an aggregate) driven step by step over the input
//! topic, its results appended to the output topic exactly once.
//!
//! A windowed operator's output depends on the order in which the partitions' records met (the
//! watermark is the minimum over partitions), so a replay after a crash could legitimately
//! close windows differently from the first run. The results of a step are therefore saved
//! with the checkpoint *before* they are appended: the checkpoint holds the operator's state,
//! the next input offset of every partition, a sequence number, and the step's output batches,
//! each carrying the header `weir.pipeline = <name>/sql/<sequence>` on its last record. On start
//! the runner restores the state and appends every batch of the checkpoint whose marker its log
//! does not hold yet. A step without results saves nothing (a replay of it is as good as the
//! first run), except once a second (less often for a state that takes long to save) so a
//! restart rereads little.
//!
//! Saving and appending run on a thread of their own while the operator works on the next
//! steps; a save starts once the one before it is appended, and a runner is dropped only once
//! its last save is appended. An operator may leave the making of its output records (for a
//! window, turning each result row into a JSON record) to that thread ([`Emitted::later`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_storage::{NewRecord, Record, Topics, Tree, holds_header, in_batches, now_ms};

use crate::Error;
use crate::parallel::in_parallel;
use crate::pipeline::{
    Counted, Failures, MARKER_HEADER, PipelineSpec, StartAt, Stats, Step, batch_with_marker,
    dead_letter, dead_letter_partitions, step_records,
};
use crate::registry::write_durably_with;

/// How often a running query saves its state when it has no results to append, at most; a
/// state that takes long to save is saved less often, so saving takes at most a tenth of the
/// time.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
const CHECKPOINT_SHARE: u32 = 10;

/// The running state of a continuous query.
pub trait Operator: Send {
    /// Takes the records one step read from each input partition (each in offset order);
    /// answers, for each partition in the same order, what its records produced or why they
    /// failed.
    fn push(&mut self, inputs: &[(u32, Vec<Record>)], now_ms: i64) -> Vec<Result<Emitted, String>>;
    /// Lets wall-clock time pass: a partition idle long enough stops holding windows open.
    fn tick(&mut self, now_ms: i64) -> Result<Emitted, String>;
    /// The state to save with a checkpoint.
    fn snapshot(&mut self) -> Result<Vec<u8>, String>;
    /// Takes back a state [`Operator::snapshot`] made.
    fn restore(&mut self, state: &[u8]) -> Result<(), String>;
    fn gauges(&self) -> Gauges;
}

/// What a push or tick produced.
#[derive(Default)]
pub struct Emitted {
    /// Records for the output topic.
    pub records: ByPartition,
    /// Records for the output topic after `records`, made on the save's thread while the
    /// operator goes on with the next step.
    pub later: Vec<Later>,
    /// Records of the push that came after their window closed.
    pub late: Vec<Dead>,
    /// Records of the push that a plugin failed on.
    pub failed: Vec<Dead>,
    /// A plugin call that failed, counted towards pausing the pipeline.
    pub failed_call: Option<String>,
}

/// Makes records of the output topic, or says why it cannot.
pub type Later = Box<dyn FnOnce() -> Result<ByPartition, String> + Send>;

impl Emitted {
    /// The records for the output topic, those to make later made now.
    pub fn made(self) -> Result<ByPartition, String> {
        let mut records = self.records;
        extend_by_partition(&mut records, make(self.later)?);
        Ok(records)
    }
}

/// Makes the records `later` promises, in order.
fn make(later: Vec<Later>) -> Result<ByPartition, String> {
    let mut records = ByPartition::new();
    for later in later {
        extend_by_partition(&mut records, later()?);
    }
    Ok(records)
}

/// Records by partition, each partition's in order.
pub type ByPartition = BTreeMap<u32, Vec<NewRecord>>;

/// Adds `more` records to `records`, each partition's after the ones it has.
pub fn extend_by_partition(records: &mut ByPartition, more: ByPartition) {
    for (partition, more) in more {
        append_records(records.entry(partition).or_default(), more);
    }
}

/// Adds `more` after `records`; moves them, without a copy, when there are none yet.
fn append_records(records: &mut Vec<NewRecord>, mut more: Vec<NewRecord>) {
    if records.is_empty() {
        *records = more;
    } else {
        records.append(&mut more);
    }
}

/// A record of a push that goes to the dead-letter topic.
#[derive(Debug)]
pub struct Dead {
    /// Its index in the push's slice of its partition.
    pub index: usize,
    /// What refused it: `sql` or a plugin's name.
    pub by: String,
    pub reason: String,
}

/// What a query reports about its state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub open_windows: u64,
    /// Groups over all open windows.
    pub open_groups: u64,
    /// The event time up to which windows have closed.
    pub watermark_ms: Option<i64>,
}

/// Makes the operator of a SQL pipeline from its spec ([`PipelineSpec::sql`]).
pub trait Compiler: Send + Sync {
    fn compile(&self, spec: &PipelineSpec) -> Result<Box<dyn Operator>, String>;
}

/// What a SQL pipeline saves in the metadata store. The operator's state and the step's
/// result batches are in the step's file ([`StepFiles`]), which keeps large states out of the
/// store; the record written to the store after the file is what makes a checkpoint count.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SqlCheckpoint {
    pub seq: u64,
    pub next_offsets: BTreeMap<u32, u64>,
    /// The batches of step `seq`, to be in their logs once the checkpoint is saved.
    pub pending: Vec<Pending>,
    /// Whether the state and batches are in the file of step `seq`; checkpoints of earlier
    /// versions have them inline, base64, in `state` and [`Pending::batch`].
    #[serde(default)]
    pub in_file: bool,
    /// The name of step `seq` in the step store; checkpoints of earlier versions name none,
    /// and their step is [`step_name`]`(seq)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state: String,
    /// The pipeline's counters, the step's results included.
    #[serde(default)]
    pub counted: Counted,
}

impl SqlCheckpoint {
    /// The name of its step in the step store.
    fn step_name(&self) -> String {
        self.step.clone().unwrap_or_else(|| step_name(self.seq))
    }
}

/// One output batch of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    pub topic: String,
    pub partition: u32,
    /// Which of the step's batches for this partition it is: its marker ends with it.
    pub chunk: usize,
    /// The log's end before the batch: its marker is at or after it.
    pub from: u64,
    /// Only in checkpoints of earlier versions: the batch as appended, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub batch: String,
}

/// The first bytes of a step file.
const STEP_FILE_MAGIC: &[u8; 8] = b"WEIRSQL1";

/// Where SQL pipelines and aggregating chains keep the files of their saved steps, one per
/// pipeline and sequence number: on a lone node, a directory ([`StepDir`]).
pub trait StepStore: Send + Sync {
    /// Writes step `seq` of `pipeline`, the concatenation of `parts`, durably: it is whole
    /// once this returns, and absent or not readable after a crash before. Answers the name
    /// the step is read by, which its checkpoint keeps: a store where a writer that lost its
    /// turn may still write gives each write a name of its own, so that writer never
    /// replaces the step a checkpoint names.
    fn write(&self, pipeline: &str, seq: u64, parts: &[&[u8]]) -> Result<String, Error>;
    /// The bytes of `pipeline`'s step named `name`.
    fn read(&self, pipeline: &str, name: &str) -> Result<Vec<u8>, Error>;
    /// Removes every step of `pipeline` but the one named `name`: those of earlier
    /// checkpoints, and one a crash cut short of its checkpoint. One left behind only costs
    /// space.
    fn keep_only(&self, pipeline: &str, name: &str);
    /// Removes every step of `pipeline`, with the pipeline.
    fn remove(&self, pipeline: &str) -> Result<(), Error>;
}

/// Steps as files of a directory, `<dir>/<pipeline>/<seq>.step`; a node's is
/// `<data dir>/sql-pipelines` ([`STEPS_DIR`]).
pub struct StepDir {
    dir: PathBuf,
}

impl StepDir {
    pub fn new(dir: PathBuf) -> StepDir {
        StepDir { dir }
    }

    fn pipeline_dir(&self, pipeline: &str) -> PathBuf {
        self.dir.join(pipeline)
    }

    pub fn path(&self, pipeline: &str, name: &str) -> PathBuf {
        self.pipeline_dir(pipeline).join(name)
    }
}

/// One step's records of every partition of `spec`'s input that has any from `next_offsets`,
/// read in parallel.
fn read(
    topics: &dyn Topics,
    spec: &PipelineSpec,
    next_offsets: &BTreeMap<u32, u64>,
) -> Result<Inputs, Error> {
    let mut behind = Vec::new();
    for (&partition, &next) in next_offsets {
        let log = topics.partition(&spec.from, partition)?;
        if next < log.offsets()?.1 {
            behind.push((partition, log, next));
        }
    }
    let records_max = spec.batch_records_max;
    let read = in_parallel(behind, |(partition, log, next)| {
        step_records(&*log, next, records_max).map(|records| (partition, records))
    });
    let mut inputs = read.into_iter().collect::<Result<Inputs, Error>>()?;
    inputs.retain(|(_, records)| !records.is_empty());
    Ok(inputs)
}

/// The name of step `seq` in a directory, and of a checkpoint's step that names none (saved
/// by an earlier version).
pub fn step_name(seq: u64) -> String {
    format!("{seq:020}.step")
}

impl StepStore for StepDir {
    /// A lone node has one writer: the name is the sequence number's.
    fn write(&self, pipeline: &str, seq: u64, parts: &[&[u8]]) -> Result<String, Error> {
        let dir = self.pipeline_dir(pipeline);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let name = step_name(seq);
        write_durably_with(&self.path(pipeline, &name), |file| {
            parts.iter().try_for_each(|part| file.write_all(part))
        })?;
        Ok(name)
    }

    fn read(&self, pipeline: &str, name: &str) -> Result<Vec<u8>, Error> {
        let path = self.path(pipeline, name);
        std::fs::read(&path).map_err(|e| Error::io(&path, e))
    }

    fn keep_only(&self, pipeline: &str, name: &str) {
        let Ok(entries) = std::fs::read_dir(self.pipeline_dir(pipeline)) else {
            return;
        };
        let keep = self.path(pipeline, name);
        for entry in entries.flatten() {
            let path = entry.path();
            if path == keep {
                continue;
            }
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %e, "cannot remove an old step file");
            }
        }
    }

    fn remove(&self, pipeline: &str) -> Result<(), Error> {
        let dir = self.pipeline_dir(pipeline);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&dir, e)),
            _ => Ok(()),
        }
    }
}

/// The saved steps of one SQL pipeline, in a [`StepStore`]: each the operator's state and the
/// step's result batches, under a CRC-32C. Only the step of the checkpoint in the metadata
/// store (`checkpoints`) is kept.
#[derive(Clone)]
pub struct StepFiles {
    store: Arc<dyn StepStore>,
    checkpoints: Tree<SqlCheckpoint>,
    pipeline: String,
}

impl StepFiles {
    pub fn new(
        store: Arc<dyn StepStore>,
        checkpoints: Tree<SqlCheckpoint>,
        pipeline: &str,
    ) -> StepFiles {
        StepFiles {
            store,
            checkpoints,
            pipeline: pipeline.to_string(),
        }
    }

    /// Writes step `seq` durably; answers its name.
    fn write(&self, seq: u64, state: &[u8], batches: &[&[u8]]) -> Result<String, Error> {
        let parts = || std::iter::once(state).chain(batches.iter().copied());
        let crc = parts().fold(0, |crc, part| {
            let crc = crc32c::crc32c_append(crc, &(part.len() as u64).to_le_bytes());
            crc32c::crc32c_append(crc, part)
        });
        let crc = crc.to_le_bytes();
        let lengths: Vec<[u8; 8]> = parts().map(|p| (p.len() as u64).to_le_bytes()).collect();
        let mut framed: Vec<&[u8]> = vec![STEP_FILE_MAGIC, &crc];
        for (length, part) in lengths.iter().zip(parts()) {
            framed.push(length);
            framed.push(part);
        }
        self.store.write(&self.pipeline, seq, &framed)
    }

    /// The state and batches of the step named `name`, checked whole.
    fn read(&self, name: &str) -> Result<(Vec<u8>, Vec<Vec<u8>>), Error> {
        let bytes = self.store.read(&self.pipeline, name)?;
        let bad = |what: &str| {
            Error::Invalid(format!(
                "saved step {name} of pipeline {}: {what}; the pipeline cannot resume from it",
                self.pipeline
            ))
        };
        let (magic, rest) = bytes.split_at_checked(8).ok_or_else(|| bad("too short"))?;
        let (crc, mut body) = rest.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        if magic != STEP_FILE_MAGIC {
            return Err(bad("not a step file"));
        }
        if crc != crc32c::crc32c(body).to_le_bytes() {
            return Err(bad("checksum mismatch"));
        }
        let mut parts = Vec::new();
        while !body.is_empty() {
            let (length, rest) = body.split_at_checked(8).ok_or_else(|| bad("truncated"))?;
            let length = u64::from_le_bytes(length.try_into().unwrap_or_default());
            let length = usize::try_from(length)
                .ok()
                .filter(|l| *l <= rest.len())
                .ok_or_else(|| bad("a length past its end"))?;
            parts.push(rest[..length].to_vec());
            body = &rest[length..];
        }
        if parts.is_empty() {
            return Err(bad("no state"));
        }
        let state = parts.remove(0);
        Ok((state, parts))
    }

    /// Removes every step but `checkpoint`'s.
    fn keep_only(&self, checkpoint: &SqlCheckpoint) {
        self.store
            .keep_only(&self.pipeline, &checkpoint.step_name());
    }

    /// Saves a checkpoint: its step, then its record in the metadata store naming the step;
    /// then drops the steps it replaces.
    fn commit(
        &self,
        checkpoint: &mut SqlCheckpoint,
        state: &[u8],
        batches: &[&[u8]],
    ) -> Result<(), Error> {
        checkpoint.step = Some(self.write(checkpoint.seq, state, batches)?);
        self.checkpoints.insert(&self.pipeline, checkpoint)?;
        self.keep_only(checkpoint);
        Ok(())
    }

    /// The state and batches `checkpoint` saved.
    fn load(&self, checkpoint: &SqlCheckpoint) -> Result<(Vec<u8>, Vec<Vec<u8>>), Error> {
        if checkpoint.in_file {
            return self.read(&checkpoint.step_name());
        }
        let decode = |text: &str| {
            b64()
                .decode(text)
                .map_err(|e| Error::Invalid(format!("saved state: {e}")))
        };
        let batches = checkpoint
            .pending
            .iter()
            .map(|p| decode(&p.batch))
            .collect::<Result<_, _>>()?;
        Ok((decode(&checkpoint.state)?, batches))
    }
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

pub struct OperatorRunner {
    spec: PipelineSpec,
    topics: Arc<dyn Topics>,
    files: StepFiles,
    operator: Box<dyn Operator>,
    stats: Arc<Stats>,
    seq: u64,
    next_offsets: BTreeMap<u32, u64>,
    /// Input read since the last checkpoint.
    unsaved: bool,
    saved_at: Instant,
    /// How long the last save took.
    save_took: Duration,
    /// The save in progress.
    saving: Option<Saving>,
    /// The operator's gauges after the last step, until the saves before it are appended.
    unshown: Option<Gauges>,
    failures: Failures,
    /// The next step's records, read while the operator worked on this step's.
    ahead: Option<ReadAhead>,
    /// Why the results of a step saved on its thread could not be made. The runner stops
    /// there: the pipeline pauses, and resumes from the checkpoint before that step.
    unmade: Option<String>,
}

/// Records read ahead, and the offsets they were read from.
struct ReadAhead {
    from: BTreeMap<u32, u64>,
    read: Result<Vec<(u32, Vec<Record>)>, Error>,
}

/// Inputs per partition, each partition's records in offset order.
type Inputs = Vec<(u32, Vec<Record>)>;

/// A step's results by log, dead letters included.
type Outputs = BTreeMap<(String, u32), Vec<NewRecord>>;

/// A checkpoint to save, and the results to append once it is saved.
struct Save {
    /// The checkpoint, its `pending` batches still to list.
    checkpoint: SqlCheckpoint,
    state: Vec<u8>,
    outputs: Outputs,
    /// Records of the output topic `output` still to make, after those in `outputs`.
    later: Vec<Later>,
    output: String,
}

/// What a save did.
enum Saved {
    /// Saved and appended: how long saving took, and how many records it made.
    Done { took: Duration, made: u64 },
    /// Nothing saved or appended: the step's results could not be made, for this reason.
    Unmade(String),
}

/// A save on its thread, which answers how long it took, and what it adds to the stats once
/// it is appended.
struct Saving {
    thread: JoinHandle<Result<Saved, Error>>,
    results: Counted,
    snapshot_took: Duration,
}

impl Save {
    /// Makes the records still to make, builds the results' marked batches, saves them with
    /// the checkpoint, then appends them: each log's batches in order, the logs side by side
    /// so their syncs overlap.
    fn run(mut self, files: &StepFiles, topics: &dyn Topics) -> Result<Saved, Error> {
        let started = Instant::now();
        let seq = self.checkpoint.seq;
        let records = match make(self.later) {
            Ok(records) => records,
            Err(reason) => return Ok(Saved::Unmade(reason)),
        };
        let made = records.values().map(|r| r.len() as u64).sum::<u64>();
        self.checkpoint.counted.records_out += made;
        add_outputs(&mut self.outputs, &self.output, records);
        let mut chunks = Vec::with_capacity(self.outputs.len());
        for ((topic, partition), records) in self.outputs {
            // Where a restart looks for these batches: the end of what is acknowledged now.
            let from = topics.partition(&topic, partition)?.offsets()?.1;
            let bytes_max = topics.batch_bytes_max(&topic)?;
            for (chunk, records) in in_batches(records, bytes_max.saturating_sub(MARKER_ROOM))
                .into_iter()
                .enumerate()
            {
                chunks.push((marker(&files.pipeline, seq, chunk), records));
                self.checkpoint.pending.push(Pending {
                    topic: topic.clone(),
                    partition,
                    chunk,
                    from,
                    batch: String::new(),
                });
            }
        }
        let batches = in_parallel(chunks, |(marker, records)| {
            batch_with_marker(records, &Bytes::from(marker))
        })
        .into_iter()
        .collect::<Result<Vec<Bytes>, Error>>()?;
        let bytes: Vec<&[u8]> = batches.iter().map(|batch| batch.as_ref()).collect();
        files.commit(&mut self.checkpoint, &self.state, &bytes)?;
        let took = started.elapsed();
        let mut by_log: BTreeMap<(&str, u32), Vec<Bytes>> = BTreeMap::new();
        for (pending, batch) in self.checkpoint.pending.iter().zip(batches) {
            by_log
                .entry((&pending.topic, pending.partition))
                .or_default()
                .push(batch);
        }
        in_parallel(
            by_log.into_iter().collect(),
            |((topic, partition), batches)| {
                batches
                    .into_iter()
                    .try_for_each(|batch| topics.append(topic, partition, batch).map(drop))
            },
        )
        .into_iter()
        .collect::<Result<(), _>>()?;
        Ok(Saved::Done { took, made })
    }
}

/// The marker of batch `chunk` of a partition's results of step `seq` of `pipeline`.
fn marker(pipeline: &str, seq: u64, chunk: usize) -> String {
    format!("{pipeline}/sql/{seq}/{chunk}")
}

impl OperatorRunner {
    pub fn new(
        spec: PipelineSpec,
        topics: Arc<dyn Topics>,
        (checkpoints, steps): (Tree<SqlCheckpoint>, Arc<dyn StepStore>),
        mut operator: Box<dyn Operator>,
        stats: Arc<Stats>,
    ) -> Result<OperatorRunner, Error> {
        let checkpoint = checkpoints.get(&spec.name)?.unwrap_or_default();
        stats.resume_from(checkpoint.counted);
        let files = StepFiles::new(steps, checkpoints, &spec.name);
        let (state, batches) = match checkpoint.seq {
            0 => Default::default(),
            _ => files.load(&checkpoint)?,
        };
        files.keep_only(&checkpoint);
        if !state.is_empty() {
            operator.restore(&state).map_err(Error::Invalid)?;
        }
        let mut runner = OperatorRunner {
            spec,
            topics,
            files,
            operator,
            stats,
            seq: checkpoint.seq,
            next_offsets: checkpoint.next_offsets.clone(),
            unsaved: false,
            saved_at: Instant::now(),
            save_took: Duration::ZERO,
            saving: None,
            unshown: None,
            failures: Failures::default(),
            ahead: None,
            unmade: None,
        };
        runner.finish_appends(&checkpoint, batches)?;
        runner.open_partitions()?;
        // Only now is every step the saved counters count in the logs.
        runner.stats.taken_up.store(true, Ordering::Release);
        Ok(runner)
    }

    /// Appends the batches of a saved step whose marker their logs lack (a crash came between
    /// saving the checkpoint and appending).
    fn finish_appends(
        &self,
        checkpoint: &SqlCheckpoint,
        batches: Vec<Vec<u8>>,
    ) -> Result<(), Error> {
        if batches.len() != checkpoint.pending.len() {
            return Err(Error::Invalid(format!(
                "saved step {} of pipeline {} has {} batches for {} appends",
                checkpoint.seq,
                self.spec.name,
                batches.len(),
                checkpoint.pending.len()
            )));
        }
        for (pending, batch) in checkpoint.pending.iter().zip(batches) {
            let log = self.topics.partition(&pending.topic, pending.partition)?;
            let marker = marker(&self.spec.name, checkpoint.seq, pending.chunk);
            if holds_header(&*log, pending.from, MARKER_HEADER, marker.as_bytes())? {
                continue;
            }
            tracing::info!(pipeline = %self.spec.name, topic = %pending.topic, partition = pending.partition, "appending the results of the step before a restart");
            self.topics
                .append(&pending.topic, pending.partition, batch.into())?;
        }
        Ok(())
    }

    /// Gives every input partition seen the first time its start offset, saved at once so a
    /// replay starts there too.
    fn open_partitions(&mut self) -> Result<(), Error> {
        let partitions = self.topics.existing_topic(&self.spec.from)?.partitions;
        let start = StartAt::parse(&self.spec.from_offset)?;
        let mut opened = false;
        for partition in 0..partitions {
            if self.next_offsets.contains_key(&partition) {
                continue;
            }
            let log = self.topics.partition(&self.spec.from, partition)?;
            self.next_offsets.insert(partition, start.resolve(&*log)?);
            opened = true;
        }
        if opened {
            self.save(Outputs::new(), Vec::new(), 0)?;
        }
        Ok(())
    }

    /// This step's records: those read ahead when they are from where the step starts, or
    /// read now.
    fn inputs(&mut self) -> Result<Inputs, Error> {
        if let Some(ahead) = self.ahead.take()
            && ahead.from == self.next_offsets
            && let Ok(inputs) = ahead.read
            && !inputs.is_empty()
        {
            return Ok(inputs);
        }
        read(&*self.topics, &self.spec, &self.next_offsets)
    }

    /// Pushes `inputs` into the operator while the records after them are read ahead.
    fn push(&mut self, inputs: &Inputs) -> Vec<Result<Emitted, String>> {
        if inputs.is_empty() {
            return self.operator.push(inputs, now_ms());
        }
        let mut from = self.next_offsets.clone();
        for (partition, records) in inputs {
            if let Some(last) = records.last() {
                from.insert(*partition, last.offset as u64 + 1);
            }
        }
        let (topics, spec, operator) = (&*self.topics, &self.spec, &mut self.operator);
        let (results, read) = std::thread::scope(|scope| {
            let reading = scope.spawn(|| read(topics, spec, &from));
            let results = operator.push(inputs, now_ms());
            let read = reading
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            (results, read)
        });
        self.ahead = Some(ReadAhead { from, read });
        results
    }

    /// Reads one batch of every partition, feeds the operator, and starts saving and appending
    /// what it produced. A step with nothing to do answers once every save is appended. Once
    /// the results of a step cannot be made, every step answers a pause with the reason:
    /// nothing of that step is saved, so the pipeline resumes from the checkpoint before it.
    pub fn step(&mut self) -> Result<Step, Error> {
        if let Some(reason) = &self.unmade {
            return Ok(Step::Pause(reason.clone()));
        }
        self.work().or_else(|error| match &self.unmade {
            Some(reason) => Ok(Step::Pause(reason.clone())),
            None => Err(error),
        })
    }

    /// A step, as [`OperatorRunner::step`] describes it.
    fn work(&mut self) -> Result<Step, Error> {
        self.open_partitions()?;
        let mut worked = false;
        let mut outputs = Outputs::new();
        let mut failed = None;
        let mut late = 0;
        let mut later = Vec::new();
        let dead_letter_topic = self.spec.dead_letter_topic();
        let dead_partitions = dead_letter_partitions(&*self.topics, &self.spec)?;
        let output = self.spec.to[0].clone();
        let inputs = self.inputs()?;
        let results = self.push(&inputs);
        for ((partition, records), result) in inputs.iter().zip(results) {
            self.next_offsets
                .insert(*partition, records[records.len() - 1].offset as u64 + 1);
            worked = true;
            let dead = outputs
                .entry((dead_letter_topic.clone(), partition % dead_partitions))
                .or_default();
            match result {
                Ok(emitted) => {
                    late += emitted.late.len() as u64;
                    failed = emitted.failed_call.or(failed);
                    for letter in emitted.late.into_iter().chain(emitted.failed) {
                        dead.push(dead_letter(
                            &self.spec.from,
                            *partition,
                            &records[letter.index],
                            letter.reason,
                            letter.by,
                        ));
                    }
                    add_outputs(&mut outputs, &output, emitted.records);
                    later.extend(emitted.later);
                }
                Err(error) => {
                    for record in records {
                        dead.push(dead_letter(
                            &self.spec.from,
                            *partition,
                            record,
                            error.clone(),
                            "sql".into(),
                        ));
                    }
                    failed = Some(error);
                }
            }
            self.stats
                .records_in
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        match self.operator.tick(now_ms()) {
            Ok(emitted) => {
                failed = emitted.failed_call.or(failed);
                worked |= !emitted.records.is_empty() || !emitted.later.is_empty();
                add_outputs(&mut outputs, &output, emitted.records);
                later.extend(emitted.later);
            }
            Err(error) => failed = Some(error),
        }
        outputs.retain(|_, records| !records.is_empty());
        self.unsaved |= worked;
        let due = CHECKPOINT_EVERY.max(self.save_took * CHECKPOINT_SHARE);
        if !outputs.is_empty()
            || !later.is_empty()
            || (self.unsaved && self.saved_at.elapsed() >= due)
        {
            self.save(outputs, later, late)?;
        }
        self.unshown = Some(self.operator.gauges());
        if !worked {
            self.settle()?;
        }
        if self.saving.is_none() {
            self.show_gauges();
        }
        if let Some(reason) = self.count_failure(failed) {
            return Ok(Step::Pause(reason));
        }
        Ok(if worked { Step::Worked } else { Step::Idle })
    }

    /// Saves the operator's state and the input offsets as the next sequence number with the
    /// step's `outputs`, then appends them; `late` records of the step are among the dead
    /// letters. Both happen on a thread of their own while the next steps run: the next save
    /// waits for this one ([`OperatorRunner::settle`]).
    fn save(&mut self, outputs: Outputs, later: Vec<Later>, late: u64) -> Result<(), Error> {
        self.settle()?;
        let started = Instant::now();
        let state = self.operator.snapshot().map_err(Error::Invalid)?;
        let dead_letter_topic = self.spec.dead_letter_topic();
        let mut results = Counted {
            late,
            ..Counted::default()
        };
        for ((topic, _), records) in &outputs {
            let count = records.len() as u64;
            if *topic == dead_letter_topic {
                results.dead_lettered += count;
            } else {
                results.records_out += count;
            }
        }
        let save = Save {
            checkpoint: SqlCheckpoint {
                seq: self.seq + 1,
                next_offsets: self.next_offsets.clone(),
                pending: Vec::new(),
                in_file: true,
                step: None,
                state: String::new(),
                counted: self.stats.counted().plus(results),
            },
            state,
            outputs,
            later,
            output: self.spec.to[0].clone(),
        };
        let snapshot_took = started.elapsed();
        let (files, topics) = (self.files.clone(), self.topics.clone());
        let thread = std::thread::Builder::new()
            .name("weir-sql-save".into())
            .spawn(move || save.run(&files, &*topics))
            .map_err(|e| Error::Invalid(format!("cannot start saving a step: {e}")))?;
        self.saving = Some(Saving {
            thread,
            results,
            snapshot_took,
        });
        self.seq += 1;
        self.unsaved = false;
        self.saved_at = Instant::now();
        Ok(())
    }

    /// Waits for the save in progress, if any, and counts its results, which are in their
    /// logs now.
    fn settle(&mut self) -> Result<(), Error> {
        let Some(saving) = self.saving.take() else {
            return Ok(());
        };
        let saved = saving
            .thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let (took, made) = match saved {
            Saved::Done { took, made } => (took, made),
            Saved::Unmade(reason) => {
                let reason = format!("the results of a step cannot be written: {reason}");
                self.unmade = Some(reason.clone());
                return Err(Error::Invalid(reason));
            }
        };
        let mut results = saving.results;
        results.records_out += made;
        let count = |counter: &AtomicU64, n| counter.fetch_add(n, Ordering::Relaxed);
        count(&self.stats.records_out, results.records_out);
        count(&self.stats.dead_lettered, results.dead_lettered);
        count(&self.stats.late, results.late);
        self.save_took = saving.snapshot_took + took;
        self.show_gauges();
        Ok(())
    }

    /// Shows the gauges of the last step: its watermark says which windows' results are in
    /// the output, so they wait for the save in progress.
    fn show_gauges(&mut self) {
        let Some(gauges) = self.unshown.take() else {
            return;
        };
        self.stats
            .open_windows
            .store(gauges.open_windows, Ordering::Relaxed);
        self.stats
            .open_groups
            .store(gauges.open_groups, Ordering::Relaxed);
        self.stats
            .watermark_ms
            .store(gauges.watermark_ms.unwrap_or(i64::MIN), Ordering::Relaxed);
    }

    /// Counts a failed step; answers why the pipeline pauses once too many came in a row.
    fn count_failure(&mut self, failed: Option<String>) -> Option<String> {
        self.failures
            .count(&self.spec, &self.stats, failed, "failed batches")
    }
}

/// A runner stops once its last save is whole and appended, so the next runner of the
/// pipeline (after a pause, or on another node once this one gives its turn back) starts from
/// a checkpoint no save of this one follows.
impl Drop for OperatorRunner {
    fn drop(&mut self) {
        if let Err(error) = self.settle() {
            tracing::warn!(pipeline = %self.spec.name, %error, "the last step's save or append failed; the pipeline resumes from its last checkpoint");
        }
        self.stats.taken_up.store(false, Ordering::Release);
    }
}

/// Adds records of the output topic `topic`, by partition, to a step's `outputs`.
fn add_outputs(outputs: &mut Outputs, topic: &str, records: ByPartition) {
    for (partition, records) in records {
        append_records(
            outputs.entry((topic.to_owned(), partition)).or_default(),
            records,
        );
    }
}

/// The directory under the data directory where SQL pipelines keep their saved steps.
pub const STEPS_DIR: &str = "sql-pipelines";

/// Bytes kept free in each batch of results for the marker header on its last record.
const MARKER_ROOM: u64 = 256;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use weir_storage::{BatchBuilder, Compression, Storage, StorageConfig};

    use super::*;

    /// Writes every record it is given to partition 0 of the output, `copies` times, making
    /// them on the save's thread, where a record `unwritable` fails them; its state counts them.
    struct Echo {
        seen: u64,
        copies: usize,
    }

    impl Operator for Echo {
        fn push(&mut self, inputs: &[(u32, Vec<Record>)], _: i64) -> Vec<Result<Emitted, String>> {
            inputs
                .iter()
                .map(|(_, records)| {
                    self.seen += records.len() as u64;
                    let records: Vec<NewRecord> = records
                        .iter()
                        .flat_map(|r| std::iter::repeat_n(r, self.copies))
                        .map(|r| NewRecord {
                            timestamp: r.timestamp,
                            key: None,
                            value: r.value.clone(),
                            headers: Vec::new(),
                        })
                        .collect();
                    let later: Later = Box::new(move || {
                        if records
                            .iter()
                            .any(|r| r.value.as_deref() == Some(b"unwritable"))
                        {
                            return Err("a record reads `unwritable`".into());
                        }
                        Ok(ByPartition::from([(0, records)]))
                    });
                    Ok(Emitted {
                        later: vec![later],
                        ..Emitted::default()
                    })
                })
                .collect()
        }
        fn tick(&mut self, _: i64) -> Result<Emitted, String> {
            Ok(Emitted::default())
        }
        fn snapshot(&mut self) -> Result<Vec<u8>, String> {
            Ok(self.seen.to_le_bytes().to_vec())
        }
        fn restore(&mut self, state: &[u8]) -> Result<(), String> {
            self.seen = u64::from_le_bytes(state.try_into().map_err(|_| "8 bytes")?);
            Ok(())
        }
        fn gauges(&self) -> Gauges {
            Gauges::default()
        }
    }

    fn spec() -> PipelineSpec {
        PipelineSpec {
            failures_max: 5,
            sql: Some("CREATE PIPELINE echo AS INSERT INTO out SELECT * FROM in".into()),
            ..PipelineSpec::in_to_out("echo", 100)
        }
    }

    fn append(storage: &Storage, topic: &str, values: &[&str]) {
        let mut builder = BatchBuilder::new(Compression::None);
        for value in values {
            builder.push(NewRecord {
                timestamp: 1,
                key: None,
                value: Some(Bytes::copy_from_slice(value.as_bytes())),
                headers: Vec::new(),
            });
        }
        let batch = builder.build().unwrap().to_vec();
        storage.log(topic, 0).unwrap().append(&batch).unwrap();
    }

    /// A node's storage with the topics of the echo pipeline, and its checkpoints.
    struct Fixture {
        _dir: tempfile::TempDir,
        storage: Arc<Storage>,
        checkpoints: Tree<SqlCheckpoint>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
            for topic in ["in", "out", "echo.dlq"] {
                storage.create_topic(topic, 1, BTreeMap::new()).unwrap();
            }
            let checkpoints = storage.meta().tree("sql").unwrap();
            Fixture {
                _dir: dir,
                storage,
                checkpoints,
            }
        }

        /// The echo pipeline's runner, as a (re)start makes it.
        fn open(&self, spec: PipelineSpec, copies: usize) -> Result<OperatorRunner, Error> {
            self.open_on(spec, copies, self.steps())
        }

        /// [`Fixture::open`] with its steps in `steps`.
        fn open_on(
            &self,
            spec: PipelineSpec,
            copies: usize,
            steps: Arc<dyn StepStore>,
        ) -> Result<OperatorRunner, Error> {
            OperatorRunner::new(
                spec,
                self.storage.clone(),
                (self.checkpoints.clone(), steps),
                Box::new(Echo { seen: 0, copies }),
                Arc::new(Stats::default()),
            )
        }

        fn steps_dir(&self) -> StepDir {
            StepDir::new(self.storage.data_dir().join(STEPS_DIR))
        }

        fn steps(&self) -> Arc<dyn StepStore> {
            Arc::new(self.steps_dir())
        }

        fn saved(&self) -> SqlCheckpoint {
            self.checkpoints.get("echo").unwrap().unwrap()
        }

        /// Saves `checkpoint` with `state` and `batches` as the runner does.
        fn commit(&self, checkpoint: &SqlCheckpoint, state: &[u8], batches: &[&[u8]]) {
            StepFiles::new(self.steps(), self.checkpoints.clone(), "echo")
                .commit(&mut checkpoint.clone(), state, batches)
                .unwrap();
        }

        /// The values of the output from `offset` on.
        fn out_values(&self, offset: u64) -> Vec<Bytes> {
            self.storage
                .log("out", 0)
                .unwrap()
                .read_records(offset, 1 << 20)
                .unwrap()
                .into_iter()
                .filter_map(|r| r.value)
                .collect()
        }
    }

    /// A batch of `values` marked as batch `chunk` of step `seq`'s results.
    fn marked(seq: u64, chunk: usize, values: &[&str]) -> Vec<u8> {
        let records = values
            .iter()
            .map(|v| NewRecord {
                timestamp: 1,
                key: None,
                value: Some(Bytes::copy_from_slice(v.as_bytes())),
                headers: Vec::new(),
            })
            .collect();
        batch_with_marker(records, &Bytes::from(format!("echo/sql/{seq}/{chunk}")))
            .unwrap()
            .to_vec()
    }

    fn pending(chunk: usize, from: u64) -> Pending {
        Pending {
            topic: "out".into(),
            partition: 0,
            chunk,
            from,
            batch: String::new(),
        }
    }

    #[test]
    fn results_that_cannot_be_made_pause_the_pipeline_and_nothing_of_their_step_is_saved() {
        let node = Fixture::new();
        append(&node.storage, "in", &["a", "b"]);
        let mut runner = node.open(spec(), 1).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        assert!(matches!(runner.step().unwrap(), Step::Idle));
        let saved = node.saved();
        append(&node.storage, "in", &["unwritable", "c"]);
        // The step hands its results to the save's thread; the next step hears they failed.
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        for _ in 0..2 {
            let Ok(Step::Pause(reason)) = runner.step() else {
                panic!("a runner whose results failed pauses");
            };
            assert!(
                reason.contains("results of a step cannot be written")
                    && reason.contains("`unwritable`"),
                "{reason}"
            );
        }
        drop(runner);
        let after = node.saved();
        assert_eq!(
            (after.seq, &after.next_offsets),
            (saved.seq, &saved.next_offsets)
        );
        assert_eq!(node.out_values(0), ["a", "b"]);
        // Resumed, the pipeline takes the failed step again from the checkpoint before it.
        let mut runner = node.open(spec(), 1).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        assert!(matches!(runner.step().unwrap(), Step::Pause(_)));
    }

    #[test]
    fn results_larger_than_a_batch_are_appended_in_several_each_once() {
        let node = Fixture::new();
        let spec = || PipelineSpec {
            batch_records_max: 1000,
            ..spec()
        };
        // 900 records of 1 KiB, each written three times: 2.7 MiB of results in one step, over
        // storage's 1 MiB a batch.
        let value = "x".repeat(1024);
        append(&node.storage, "in", &vec![value.as_str(); 900]);
        let mut runner = node.open(spec(), 3).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        assert!(matches!(runner.step().unwrap(), Step::Idle));
        let out = node.storage.log("out", 0).unwrap();
        assert_eq!(out.high_watermark(), 2700);
        drop(runner);

        // A crash after the first of two saved batches was appended: only the second follows.
        let mut saved = node.saved();
        let from = out.log_end_offset();
        saved.seq += 1;
        let batches = [0, 1].map(|chunk| marked(saved.seq, chunk, &[&format!("chunk {chunk}")]));
        saved.pending = vec![pending(0, from), pending(1, from)];
        node.commit(&saved, &[], &[&batches[0], &batches[1]]);
        out.append(&batches[0].clone()).unwrap();
        drop(node.open(spec(), 3).unwrap());
        drop(node.open(spec(), 3).unwrap());
        assert_eq!(
            node.out_values(2700),
            ["chunk 0", "chunk 1"].map(Bytes::from).to_vec()
        );
    }

    #[test]
    fn results_saved_but_not_appended_before_a_crash_are_appended_once_on_start() {
        let node = Fixture::new();
        append(&node.storage, "in", &["a", "b", "c"]);
        let mut runner = node.open(spec(), 1).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        let out = node.storage.log("out", 0).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Idle));
        assert_eq!(out.high_watermark(), 3);
        drop(runner);

        // A crash after the checkpoint of the next step was saved, before its append.
        let mut saved = node.saved();
        saved.seq += 1;
        saved.pending = vec![pending(0, out.log_end_offset())];
        let batch = marked(saved.seq, 0, &["d", "e"]);
        node.commit(&saved, &5u64.to_le_bytes(), &[&batch]);

        drop(node.open(spec(), 1).unwrap());
        assert_eq!(out.high_watermark(), 5, "the saved results were appended");
        let mut runner = node.open(spec(), 1).unwrap();
        assert_eq!(out.high_watermark(), 5, "and only once");
        assert!(matches!(runner.step().unwrap(), Step::Idle));
        append(&node.storage, "in", &["f"]);
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        drop(runner);
        assert_eq!(
            node.out_values(0),
            ["a", "b", "c", "d", "e", "f"].map(Bytes::from).to_vec()
        );
    }

    #[test]
    fn a_damaged_step_file_is_refused_and_files_a_crash_left_are_removed() {
        let node = Fixture::new();
        append(&node.storage, "in", &["a"]);
        let mut runner = node.open(spec(), 1).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        drop(runner);
        let seq = node.saved().seq;
        let files = node.steps_dir();
        // A save the crash cut short of the store: its file is not the checkpoint's.
        std::fs::write(files.path("echo", &step_name(seq + 1)), b"half").unwrap();
        drop(node.open(spec(), 1).unwrap());
        assert!(files.path("echo", &step_name(seq)).exists());
        assert!(
            !files.path("echo", &step_name(seq + 1)).exists(),
            "the file of no checkpoint is gone"
        );

        let mut bytes = std::fs::read(files.path("echo", &step_name(seq))).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(files.path("echo", &step_name(seq)), bytes).unwrap();
        let error = node.open(spec(), 1).err().unwrap().to_string();
        assert!(error.contains("checksum mismatch"), "{error}");
    }

    /// Steps in memory under `<pipeline>/<seq>-<write>`: each write named apart, as a store
    /// that nodes share names them.
    #[derive(Default)]
    struct NamedApart {
        steps: std::sync::Mutex<BTreeMap<String, Vec<u8>>>,
        writes: std::sync::atomic::AtomicU64,
    }

    impl StepStore for NamedApart {
        fn write(&self, pipeline: &str, seq: u64, parts: &[&[u8]]) -> Result<String, Error> {
            let write = self.writes.fetch_add(1, Ordering::Relaxed);
            let name = format!("{seq}-{write}");
            let mut steps = self.steps.lock().unwrap();
            steps.insert(format!("{pipeline}/{name}"), parts.concat());
            Ok(name)
        }
        fn read(&self, pipeline: &str, name: &str) -> Result<Vec<u8>, Error> {
            let steps = self.steps.lock().unwrap();
            let step = steps.get(&format!("{pipeline}/{name}")).cloned();
            step.ok_or_else(|| Error::NotFound(format!("step {name}")))
        }
        fn keep_only(&self, pipeline: &str, name: &str) {
            let keep = format!("{pipeline}/{name}");
            let mut steps = self.steps.lock().unwrap();
            steps.retain(|key, _| *key == keep || !key.starts_with(&format!("{pipeline}/")));
        }
        fn remove(&self, pipeline: &str) -> Result<(), Error> {
            self.keep_only(pipeline, "");
            Ok(())
        }
    }

    #[test]
    fn a_checkpoint_reads_the_step_it_names_not_a_later_write_of_its_number() {
        let node = Fixture::new();
        let store = Arc::new(NamedApart::default());
        append(&node.storage, "in", &["a", "b"]);
        let mut runner = node.open_on(spec(), 1, store.clone()).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        drop(runner);
        let saved = node.saved();
        assert_eq!(saved.step.as_deref(), Some("2-1"), "{saved:?}");

        // A writer whose turn ended writes the same step again; its checkpoint is refused.
        let stale = StepFiles::new(store.clone(), node.checkpoints.clone(), "echo");
        stale.write(saved.seq, &99u64.to_le_bytes(), &[]).unwrap();
        let mut runner = node.open_on(spec(), 1, store.clone()).unwrap();
        assert_eq!(
            runner.operator.snapshot().unwrap(),
            2u64.to_le_bytes(),
            "the state of the step the checkpoint names"
        );
        let kept: Vec<String> = store.steps.lock().unwrap().keys().cloned().collect();
        assert_eq!(kept, ["echo/2-1"], "the other write is gone");
    }

    /// A store whose writes fail while `failing` is set.
    #[derive(Default)]
    struct Failing {
        failing: std::sync::atomic::AtomicBool,
        steps: NamedApart,
    }

    impl StepStore for Failing {
        fn write(&self, pipeline: &str, seq: u64, parts: &[&[u8]]) -> Result<String, Error> {
            if self.failing.load(Ordering::Relaxed) {
                return Err(Error::Invalid("the disk is full".into()));
            }
            self.steps.write(pipeline, seq, parts)
        }
        fn read(&self, pipeline: &str, name: &str) -> Result<Vec<u8>, Error> {
            self.steps.read(pipeline, name)
        }
        fn keep_only(&self, pipeline: &str, name: &str) {
            self.steps.keep_only(pipeline, name);
        }
        fn remove(&self, pipeline: &str) -> Result<(), Error> {
            self.steps.remove(pipeline)
        }
    }

    #[test]
    fn a_save_that_fails_fails_a_later_step_and_its_results_come_once_from_a_restart() {
        let node = Fixture::new();
        let store = Arc::new(Failing::default());
        let mut runner = node.open_on(spec(), 1, store.clone()).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Idle));
        store.failing.store(true, Ordering::Relaxed);
        append(&node.storage, "in", &["a", "b"]);
        // The step's save fails on its own thread; the step after hears of it.
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        let Err(error) = runner.step() else {
            panic!("the failed save went unheard");
        };
        assert!(error.to_string().contains("the disk is full"), "{error}");
        drop(runner);
        assert!(node.out_values(0).is_empty(), "nothing appended unsaved");

        store.failing.store(false, Ordering::Relaxed);
        let mut runner = node.open_on(spec(), 1, store.clone()).unwrap();
        assert!(matches!(runner.step().unwrap(), Step::Worked));
        assert!(matches!(runner.step().unwrap(), Step::Idle));
        assert_eq!(node.out_values(0), ["a", "b"].map(Bytes::from).to_vec());
    }

    #[test]
    fn checkpoints_with_state_inline_are_still_read() {
        let node = Fixture::new();
        let saved = SqlCheckpoint {
            seq: 2,
            next_offsets: BTreeMap::from([(0, 0)]),
            pending: vec![Pending {
                batch: b64().encode(marked(2, 0, &["saved"])),
                ..pending(0, 0)
            }],
            in_file: false,
            step: None,
            state: b64().encode(7u64.to_le_bytes()),
            counted: Counted::default(),
        };
        node.checkpoints.insert("echo", &saved).unwrap();
        let runner = node.open(spec(), 1).unwrap();
        assert_eq!(runner.seq, 2);
        assert_eq!(node.out_values(0), [Bytes::from("saved")]);
    }
}
