//! The consistency checker's parts shared by the single-node and the cluster runs: traffic
//! processes (`clients/crash_traffic.py`) whose confirmed acks and commits are collected, and
//! the checks run on what the topic holds afterwards.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use super::client_script;

/// A traffic process and the lines it printed.
pub struct Traffic {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: std::thread::JoinHandle<()>,
}

impl Traffic {
    pub fn start(python: &Path, args: &[&str]) -> Traffic {
        let mut child = Command::new(python)
            .arg(client_script("crash_traffic.py"))
            .args(args)
            .stdout(Stdio::piped())
            // The consumer's notes land in the test's output, shown when it fails.
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting crash_traffic.py");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().expect("the lines").push(line);
            }
        });
        Traffic {
            child,
            lines,
            reader,
        }
    }

    pub fn count(&self) -> usize {
        self.lines.lock().expect("the lines").len()
    }

    /// The fatal error the client stopped on, if it did.
    pub fn fatal(&self) -> Option<String> {
        let lines = self.lines.lock().expect("the lines");
        lines.iter().rev().find(|l| l.starts_with("fatal")).cloned()
    }

    /// Stops the producers and the consumer: the producers' lines, then the consumer's. Fails
    /// the test if a producer stopped on a fatal error.
    pub fn stop_all(producers: Vec<Traffic>, consumer: Traffic) -> (Vec<String>, Vec<String>) {
        let acks: Vec<String> = producers.into_iter().flat_map(Traffic::stop).collect();
        let commits = consumer.stop();
        assert!(
            acks.iter().all(|l| !l.starts_with("fatal")),
            "a producer hit a fatal error: {:?}",
            acks.iter().find(|l| l.starts_with("fatal"))
        );
        (acks, commits)
    }

    pub fn stop(mut self) -> Vec<String> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader ends at the end of the output: every line written is in by then.
        self.reader.join().expect("the reader");
        self.lines.lock().expect("the lines").clone()
    }
}

/// A number from the environment, else `default`.
pub fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The committed offsets `crash_traffic.py commits` prints: partition → offset.
pub fn final_commits(
    python: &Path,
    bootstrap: &str,
    topic: &str,
    group: &str,
    partitions: u32,
) -> BTreeMap<u32, i64> {
    let out = Command::new(python)
        .arg(client_script("crash_traffic.py"))
        .args(["commits", bootstrap, topic, group, &partitions.to_string()])
        .output()
        .expect("running crash_traffic.py commits");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace().skip(1);
            Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
        })
        .collect()
}

/// What the checks found; every count but the work done must be zero.
#[derive(Debug, Default)]
pub struct Findings {
    pub acked: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub reorders: usize,
    pub commits: usize,
    pub regressions: usize,
    pub piped: usize,
    pub gaps: usize,
}

impl Findings {
    /// Checks the producers' records: `input` holds each partition's (offset, value) in offset
    /// order. Every acknowledged record is at its offset (else lost), no value is there twice,
    /// and per key the values are in the order produced. Returns the values seen.
    pub fn check_records(
        &mut self,
        input: &[Vec<(i64, String)>],
        acks: &[String],
    ) -> HashSet<String> {
        let by_offset: HashMap<(u32, i64), &String> = input
            .iter()
            .enumerate()
            .flat_map(|(p, records)| records.iter().map(move |(o, v)| ((p as u32, *o), v)))
            .collect();
        for line in acks {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ["acked", key, seq, partition, offset] = fields[..] else {
                continue;
            };
            self.acked += 1;
            let at = (
                partition.parse().expect("a partition"),
                offset.parse().expect("an offset"),
            );
            if by_offset.get(&at).map(|v| v.as_str()) != Some(&format!("{key}:{seq}")) {
                self.lost += 1;
                eprintln!(
                    "lost: {key}:{seq} acked at {at:?}, found {:?}",
                    by_offset.get(&at)
                );
            }
        }
        let mut seen = HashSet::new();
        for records in input {
            let mut last: HashMap<&str, u64> = HashMap::new();
            for (_, value) in records {
                if !seen.insert(value.clone()) {
                    self.duplicates += 1;
                    eprintln!("duplicate: {value}");
                }
                let (key, seq) = value.rsplit_once(':').expect("key:seq");
                let seq: u64 = seq.parse().expect("a sequence number");
                if last.get(key).is_some_and(|&prev| seq <= prev) {
                    self.reorders += 1;
                }
                last.insert(key, seq);
            }
        }
        seen
    }

    /// Checks a pipeline that copies every record: `copied` (its output's values) holds each
    /// of the input's `seen` values once. A value missing is a gap, one there twice a duplicate.
    pub fn check_piped(&mut self, seen: &HashSet<String>, copied: &[String]) {
        self.piped = copied.len();
        let mut once = HashSet::new();
        for value in copied {
            if !once.insert(value) {
                self.duplicates += 1;
                eprintln!("piped twice: {value}");
            }
        }
        for value in seen.iter().filter(|v| !once.contains(v)) {
            self.gaps += 1;
            eprintln!("not piped: {value}");
        }
    }

    /// Checks the confirmed commits: none is followed by a lower one for its partition, and the
    /// group's `finals` are at least the last confirmed.
    pub fn check_commits(&mut self, commits: &[String], finals: &BTreeMap<u32, i64>) {
        let mut confirmed: BTreeMap<u32, i64> = BTreeMap::new();
        for line in commits {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let ["committed", partition, offset] = fields[..] else {
                continue;
            };
            self.commits += 1;
            let (partition, offset): (u32, i64) = (
                partition.parse().expect("a partition"),
                offset.parse().expect("an offset"),
            );
            let best = confirmed.entry(partition).or_insert(offset);
            if offset < *best {
                self.regressions += 1;
                eprintln!("regression: partition {partition} committed {offset} after {best}");
            }
            *best = (*best).max(offset);
        }
        for (partition, best) in &confirmed {
            if finals.get(partition).is_none_or(|now| now < best) {
                self.regressions += 1;
                eprintln!(
                    "regression: partition {partition} ends at {:?}, {best} was confirmed",
                    finals.get(partition)
                );
            }
        }
    }
}
