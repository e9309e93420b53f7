//! A real process appends with fsync and is killed with SIGKILL at random moments; every batch
//! it reported as acknowledged must be readable after the log is reopened.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use weir_storage::{Log, LogConfig};
use weir_tests::value_for;

const CYCLES: usize = 25;

/// The writer process, killed if the test fails while it runs.
struct Writer(std::process::Child);

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn kill_9_never_loses_an_acknowledged_batch() {
    let seed: u64 = std::env::var("WEIR_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (set WEIR_KILL_SEED to repeat)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acked_end = 0u64;
    let mut total_acks = 0usize;
    for cycle in 0..CYCLES {
        let mut child = Writer(
            Command::new(env!("CARGO_BIN_EXE_crash-writer"))
                .arg(dir.path())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the child to open the log, then let it run a random while.
        let opened = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        let reopened_at: u64 = opened.strip_prefix("opened ").unwrap().parse().unwrap();
        assert!(
            reopened_at >= acked_end,
            "seed {seed} cycle {cycle}: reopened at {reopened_at}, but {acked_end} was acknowledged"
        );
        let run_for = Duration::from_millis(rng.random_range(5..250));
        let start = Instant::now();
        while start.elapsed() < run_for {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(1)) {
                acked_end = acked_end.max(parse_ack(&line));
                total_acks += 1;
            }
        }
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        // Acks printed before the kill still count.
        reader.join().unwrap();
        for line in rx.try_iter() {
            acked_end = acked_end.max(parse_ack(&line));
            total_acks += 1;
        }

        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        let end = log.log_end_offset();
        assert!(
            end >= acked_end,
            "seed {seed} cycle {cycle}: acked {acked_end}, log ends at {end}"
        );
        let mut offset = 0;
        while offset < end {
            for r in log.read_records(offset, 1 << 20).unwrap() {
                assert_eq!(r.offset as u64, offset, "seed {seed} cycle {cycle}");
                assert_eq!(r.value.as_deref(), Some(value_for(offset).as_bytes()));
                offset += 1;
            }
        }
    }
    eprintln!("{total_acks} acknowledgements over {CYCLES} kills, log ends at {acked_end}");
    assert!(
        total_acks > CYCLES * 5,
        "only {total_acks} acknowledgements: the writer did too little"
    );
}

fn parse_ack(line: &str) -> u64 {
    let mut parts = line.split_whitespace();
    assert_eq!(parts.next(), Some("acked"), "unexpected line {line:?}");
    let _first = parts.next();
    parts.next().unwrap().parse::<u64>().unwrap() + 1
}
