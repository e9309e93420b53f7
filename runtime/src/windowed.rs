//! Plugin pipelines that aggregate: the chain's stateless plugins run on each input partition's
//! records, then one instance of the aggregate takes the records of every partition, so a key
//! has one accumulator per window whatever partition its records come from. Its windows close
//! on the pipeline's watermark ([`EventClock`]: the least of the partitions' largest event
//! times less `lateness_ms`, an idle partition left out after `idle_timeout_ms`), which lets a
//! backfill from `earliest` run through history without its partitions' differences in pace
//! making records late.
//!
//! The pipeline runs on the [`OperatorRunner`](crate::continuous::OperatorRunner) of SQL
//! pipelines, so the aggregate's state, the clock and every partition's input offset are saved
//! together with the results they made, exactly once. Every call of the aggregate answers with
//! its state; after a failed call a new instance continues from the state of the last good one.

use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use weir::Kind;
use weir_storage::{Record, Topics, locks};

use crate::continuous::{ByPartition, Dead, Emitted, Gauges, Operator};
use crate::pipeline::{Item, PipelineSpec, Stage, StagesOutcome, Stats, run_chain};
use crate::registry::Registry;
use crate::watermark::EventClock;
use crate::{Error, partition_for_key};

/// What a snapshot of a plugin aggregate holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    clock: EventClock,
    /// The aggregate's own state, base64.
    state: String,
    /// The watermark the aggregate was last given.
    sent_ms: Option<i64>,
}

pub(crate) struct PluginWindows {
    spec: PipelineSpec,
    registry: Arc<Registry>,
    generation: u64,
    /// The stateless plugins before the aggregate, then the aggregate.
    stages: Vec<Stage>,
    /// Partitions of the output topic, what an aggregate's keyless results spread over.
    partitions: u32,
    clock: EventClock,
    stats: Arc<Stats>,
    /// The aggregate's state after its last good call.
    state: Vec<u8>,
    sent_ms: Option<i64>,
}

/// Whether `spec` is a plugin pipeline whose chain holds an aggregate.
pub(crate) fn aggregates(registry: &Registry, spec: &PipelineSpec) -> bool {
    spec.sql.is_none()
        && spec.through.iter().any(|name| {
            registry
                .active(name)
                .is_ok_and(|(_, plugin)| plugin.kind() == Kind::Aggregate)
        })
}

/// The aggregate that ends `stages`.
fn aggregate(stages: &mut [Stage]) -> Result<&mut Stage, String> {
    stages
        .last_mut()
        .filter(|s| s.plugin.kind() == Kind::Aggregate)
        .ok_or_else(|| "the chain has no aggregate".to_string())
}

/// Checks the shape of an aggregating chain: the aggregate last, one output topic, no
/// partitioner (results are keyed by their group).
pub(crate) fn check(registry: &Registry, spec: &PipelineSpec) -> Result<(), Error> {
    let kinds = spec
        .through
        .iter()
        .map(|name| Ok((name, registry.active(name)?.1.kind())))
        .collect::<Result<Vec<_>, Error>>()?;
    let Some(position) = kinds.iter().position(|(_, kind)| *kind == Kind::Aggregate) else {
        return Ok(());
    };
    let refuse = |why: String| Err(Error::Invalid(why));
    let aggregate = kinds[position].0;
    if position + 1 != kinds.len() {
        return refuse(format!(
            "plugin {aggregate} is an aggregate and must be the last plugin of the chain; \
             shape its results in a second pipeline that reads its output"
        ));
    }
    if spec.to.len() != 1 || spec.partition_by.is_some() {
        return refuse(format!(
            "a pipeline ending in the aggregate {aggregate} writes one output topic, keyed by \
             group, without --partition-by"
        ));
    }
    Ok(())
}

impl PluginWindows {
    pub(crate) fn new(
        spec: PipelineSpec,
        registry: Arc<Registry>,
        topics: &dyn Topics,
        stats: Arc<Stats>,
    ) -> Result<PluginWindows, Error> {
        let input = topics.existing_topic(&spec.from)?.partitions;
        let partitions = topics.existing_topic(&spec.to[0])?.partitions;
        let mut windows = PluginWindows {
            spec,
            registry,
            generation: u64::MAX,
            stages: Vec::new(),
            partitions,
            clock: EventClock::new(input, weir_storage::now_ms()),
            stats,
            state: Vec::new(),
            sent_ms: None,
        };
        windows.refresh()?;
        Ok(windows)
    }

    /// Picks up new plugin versions between steps; a new version of the aggregate continues
    /// from the state of the old one.
    fn refresh(&mut self) -> Result<(), Error> {
        let generation = self.registry.generation();
        if generation == self.generation {
            return Ok(());
        }
        let mut old = std::mem::take(&mut self.stages);
        for name in &self.spec.through {
            let (version, plugin) = self.registry.active(name)?;
            let position = old
                .iter()
                .position(|s| s.name == *name && s.version == version);
            self.stages.push(match position {
                Some(position) => old.swap_remove(position),
                None => Stage::new(name.clone(), version, plugin),
            });
        }
        check(&self.registry, &self.spec)?;
        *locks::lock(&self.stats.versions) = self.stages.iter().map(Stage::label).collect();
        self.generation = generation;
        Ok(())
    }

    /// Calls the aggregate with `records` (record `i` from partition `partitions[i]`) and the
    /// watermark; keeps its state when the call works, drops the instance when it fails.
    fn call(
        &mut self,
        records: &[Record],
        partitions: &[u32],
        watermark: Option<i64>,
    ) -> Result<crate::Output, String> {
        let output_partitions = self.partitions;
        let stage = aggregate(&mut self.stages)?;
        let label = stage.label();
        let called = stage
            .instance(&self.registry, output_partitions, Some(&self.state))
            .and_then(|instance| instance.aggregate(records, partitions, watermark));
        match called {
            Ok(output) => {
                if let Some(state) = &output.state {
                    self.state.clone_from(state);
                }
                self.sent_ms = watermark;
                Ok(output)
            }
            Err(error) => {
                stage.forget_instance();
                Err(format!("{label}: {error}"))
            }
        }
    }

    /// The aggregate's results, by the output partition each goes to.
    fn results(&self, output: &crate::Output) -> ByPartition {
        let mut results = ByPartition::new();
        for out in &output.records {
            let partition = match (out.partition, &out.record.key) {
                (Some(p), _) if p < self.partitions => p,
                (_, Some(key)) => partition_for_key(key, self.partitions),
                (_, None) => 0,
            };
            results
                .entry(partition)
                .or_default()
                .push(out.record.clone());
        }
        results
    }

    /// The watermark as of `now_ms`, if it moved past the one the aggregate was last given.
    fn moved(&mut self, now_ms: i64) -> Option<i64> {
        let spec = &self.spec;
        let watermark = self
            .clock
            .advance(now_ms, spec.lateness_ms, spec.idle_timeout_ms);
        watermark.filter(|w| Some(*w) > self.sent_ms)
    }
}

impl Operator for PluginWindows {
    fn push(&mut self, inputs: &[(u32, Vec<Record>)], now_ms: i64) -> Vec<Result<Emitted, String>> {
        if inputs.is_empty() {
            // Results go with an input's answer; a watermark that moved on its own is a tick's.
            return Vec::new();
        }
        if let Err(error) = self.refresh() {
            let error = format!("cannot load plugins: {error}");
            return inputs.iter().map(|_| Err(error.clone())).collect();
        }
        let mut emitted: Vec<Emitted> = inputs.iter().map(|_| Emitted::default()).collect();
        // The records that reach the aggregate, with where they came from.
        let (mut batch, mut partitions, mut origins) = (Vec::new(), Vec::new(), Vec::new());
        for (input, (partition, records)) in inputs.iter().enumerate() {
            let items = records
                .iter()
                .enumerate()
                .map(|(origin, r)| Item::input(origin, r))
                .collect();
            let before = self.stages.len().saturating_sub(1);
            let StagesOutcome {
                items,
                dead,
                failed_call,
            } = run_chain(
                &self.registry,
                &mut self.stages[..before],
                items,
                *partition,
                self.partitions,
            );
            let out = &mut emitted[input];
            out.failed.extend(dead.into_iter().map(|d| Dead {
                index: d.origin,
                by: d.plugin,
                reason: d.message,
            }));
            out.failed_call = failed_call;
            let latest = items.iter().map(|item| item.record.timestamp).max();
            self.clock.saw(*partition, latest, now_ms);
            for item in items {
                batch.push(item.record);
                partitions.push(*partition);
                origins.push((input, item.origin));
            }
        }
        let watermark = self.moved(now_ms).or(self.sent_ms);
        if batch.is_empty() && watermark == self.sent_ms {
            return emitted.into_iter().map(Ok).collect();
        }
        let name = self.spec.through.last().cloned().unwrap_or_default();
        match self.call(&batch, &partitions, watermark) {
            Ok(output) => {
                for (source, reason) in &output.failures {
                    let Some(&(input, index)) = origins.get(*source as usize) else {
                        // No record of the batch (`NO_SOURCE`): a window that did not finish,
                        // the plugin's fault, not a record's.
                        if let Some(first) = emitted.first_mut() {
                            first.failed_call = Some(format!("{name}: {reason}"));
                        }
                        continue;
                    };
                    let dead = Dead {
                        index,
                        by: name.clone(),
                        reason: reason.clone(),
                    };
                    if output.late.contains(source) {
                        emitted[input].late.push(dead);
                    } else {
                        emitted[input].failed.push(dead);
                    }
                }
                if let Some(first) = emitted.first_mut() {
                    first.records = self.results(&output);
                }
            }
            Err(error) => {
                for (input, index) in origins {
                    emitted[input].failed.push(Dead {
                        index,
                        by: name.clone(),
                        reason: error.clone(),
                    });
                    emitted[input].failed_call = Some(error.clone());
                }
            }
        }
        emitted.into_iter().map(Ok).collect()
    }

    fn tick(&mut self, now_ms: i64) -> Result<Emitted, String> {
        let Some(watermark) = self.moved(now_ms) else {
            return Ok(Emitted::default());
        };
        let output = self.call(&[], &[], Some(watermark))?;
        // A window that did not finish fails the call; the windows that did are results.
        let name = self.spec.through.last().cloned().unwrap_or_default();
        Ok(Emitted {
            records: self.results(&output),
            failed_call: output
                .failures
                .first()
                .map(|(_, reason)| format!("{name}: {reason}")),
            ..Emitted::default()
        })
    }

    fn snapshot(&mut self) -> Result<Vec<u8>, String> {
        let saved = Saved {
            clock: self.clock.clone(),
            state: base64::engine::general_purpose::STANDARD.encode(&self.state),
            sent_ms: self.sent_ms,
        };
        weir::serde_json::to_vec(&saved).map_err(|e| e.to_string())
    }

    fn restore(&mut self, bytes: &[u8]) -> Result<(), String> {
        let saved: Saved = weir::serde_json::from_slice(bytes)
            .map_err(|e| format!("saved state of the aggregate: {e}"))?;
        self.state = base64::engine::general_purpose::STANDARD
            .decode(&saved.state)
            .map_err(|e| format!("saved state of the aggregate: {e}"))?;
        self.clock.restore(saved.clock, weir_storage::now_ms());
        self.sent_ms = saved.sent_ms;
        // A new instance starts from the restored state.
        if let Ok(stage) = aggregate(&mut self.stages) {
            stage.forget_instance();
        }
        Ok(())
    }

    fn gauges(&self) -> Gauges {
        Gauges {
            watermark_ms: self.clock.watermark_ms(),
            ..Gauges::default()
        }
    }
}
