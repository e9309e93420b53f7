//! The crash/consistency checker: idempotent acks=all producers, a committing consumer group and
//! a pipeline run while a seeded schedule `kill -9`s the node and starts it again. Afterwards
//! the data directory is read back and checked:
//!
//! - acked-but-lost: every record a producer was told is written is at its offset;
//! - duplicates: no record is in the topic twice (the producers are idempotent);
//! - reorders: per key, records are in the order they were produced;
//! - committed-offset regressions: no confirmed commit is followed by a lower one, and the
//!   group's final committed offsets are at least the last confirmed;
//! - pipeline gaps: the pipeline's output holds every input record exactly once.
//!
//! `WEIR_CHECK_CYCLES` sets the number of kills (20 by default; `scripts/soak` runs hundreds)
//! and `WEIR_CHECK_SEED` the schedule's seed; the seed is printed, so a failure can be replayed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::checker::{Findings, Traffic, final_commits, setting};
use common::{Listeners, Node, eventually, python};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use weir_broker::cli::Client;
use weir_storage::{Record, Storage, StorageConfig};

const TOPIC: &str = "events";
const OUTPUT: &str = "events-copy";
const GROUP: &str = "checker";
const PARTITIONS: u32 = 3;
const PRODUCERS: usize = 2;
const KEYS: usize = 4;

/// Every record of every partition of `topic`, by partition, in offset order.
fn read_topic(storage: &Storage, topic: &str) -> Vec<Vec<Record>> {
    (0..PARTITIONS)
        .map(|p| {
            let log = storage.log(topic, p).unwrap();
            let mut out = Vec::new();
            let mut offset = log.log_start_offset();
            while offset < log.high_watermark() {
                let records = log.read_records(offset, 1 << 20).unwrap();
                let Some(last) = records.last() else {
                    break;
                };
                offset = last.offset as u64 + 1;
                out.extend(records);
            }
            out
        })
        .collect()
}

fn text(value: &Option<bytes::Bytes>) -> String {
    String::from_utf8_lossy(value.as_deref().unwrap_or_default()).into_owned()
}

/// Each partition's (offset, value), in offset order.
fn values(partitions: &[Vec<Record>]) -> Vec<Vec<(i64, String)>> {
    partitions
        .iter()
        .map(|records| records.iter().map(|r| (r.offset, text(&r.value))).collect())
        .collect()
}

#[test]
fn kill_9_loses_no_acked_record_duplicates_none_and_leaves_no_gap() {
    let Some(python) = python() else {
        return;
    };
    let cycles = setting("WEIR_CHECK_CYCLES", 20);
    let seed = setting("WEIR_CHECK_SEED", weir_storage::now_ms() as u64);
    eprintln!("crash checker: seed {seed}, {cycles} kills (WEIR_CHECK_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let listeners = Listeners::fixed();
    let mut node = Node::start_on(dir.path(), &listeners, &[]);
    let c = Client::new(&node.url(), None);
    for topic in [TOPIC, OUTPUT] {
        common::create_topic(&c, topic, PARTITIONS);
    }
    let wasm = std::fs::read(weir_tests::wasm::plugin_wasm("regex-filter").unwrap()).unwrap();
    c.send(
        "PUT",
        "/v1/plugins/copy?pattern=.",
        "application/wasm",
        &wasm,
    )
    .unwrap();
    c.call(
        "POST",
        "/v1/pipelines",
        Some(
            &json!({"name": "copy", "from": TOPIC, "through": ["copy"], "to": [OUTPUT],
                     "from_offset": "earliest"}),
        ),
    )
    .unwrap();

    let bootstrap = listeners.kafka.clone();
    let producers: Vec<Traffic> = (0..PRODUCERS)
        .map(|id| {
            Traffic::start(
                &python,
                &[
                    "produce",
                    &bootstrap,
                    TOPIC,
                    &id.to_string(),
                    &KEYS.to_string(),
                ],
            )
        })
        .collect();
    let consumer = Traffic::start(&python, &["consume", &bootstrap, TOPIC, GROUP]);

    for cycle in 0..cycles {
        // Let the clients make progress, then kill at a moment the seed picks.
        let acked_before: usize = producers.iter().map(Traffic::count).sum();
        eventually(
            &format!("cycle {cycle}: acks after the restart"),
            Duration::from_secs(60),
            || producers.iter().map(Traffic::count).sum::<usize>() > acked_before,
        );
        std::thread::sleep(Duration::from_millis(rng.random_range(100..1500)));
        node.kill9();
        std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
        node = Node::start_on(dir.path(), &listeners, &[]);
    }

    let (acks, commits) = Traffic::stop_all(producers, consumer);
    let c = Client::new(&node.url(), None);
    eventually("the pipeline to catch up", Duration::from_secs(120), || {
        c.call("GET", "/v1/pipelines/copy", None).unwrap()["lag"] == 0
    });
    let finals = final_commits(&python, &bootstrap, TOPIC, GROUP, PARTITIONS);
    node.stop();

    let storage = Storage::open(StorageConfig::new(dir.path())).unwrap();
    let input = read_topic(&storage, TOPIC);
    let output = read_topic(&storage, OUTPUT);
    let mut f = Findings::default();

    let seen = f.check_records(&values(&input), &acks);
    f.check_commits(&commits, &finals);
    let copied: Vec<String> = output.iter().flatten().map(|r| text(&r.value)).collect();
    f.check_piped(&seen, &copied);

    eprintln!("crash checker: seed {seed}, {cycles} kills: {f:?}");
    assert!(
        f.acked >= cycles as usize * 10 && f.commits >= cycles as usize && f.piped > 0,
        "too little work to check: {f:?}"
    );
    assert_eq!(
        (f.lost, f.duplicates, f.reorders, f.regressions, f.gaps),
        (0, 0, 0, 0, 0),
        "seed {seed}: {f:?}"
    );
}
