//! A seeded fault run: idempotent producers write through three nodes' flush buffers while the
//! schedule crashes Postgres (`pg_ctl stop -m immediate`) and freezes it (SIGSTOP), and the
//! nodes reach Postgres through a proxy that cuts some connections just after a `COMMIT`
//! succeeded, before the node hears of it: the flush is in the log but its producers got an
//! error. Producers retry every retriable error with the same sequence, on another node, until
//! acknowledged.
//! Afterwards every acknowledged record is in the log exactly once at its acknowledged offset,
//! offsets are gap-free, and nothing is in the log that was not acknowledged.
//!
//! `WEIR_CLUSTER_FAULT_SECONDS` sets the length (CI: 12 s; `scripts/soak`: longer) and
//! `WEIR_CLUSTER_FAULT_SEED` replays a schedule.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{cluster, values};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_cluster::{Append, FlushConfig, Flusher, SharedLog};
use weir_storage::batch::ProducerInfo;
use weir_storage::{BatchBuilder, Compression, NewRecord, decode_records};

const NODES: usize = 3;
const PRODUCERS: usize = 4;
const PARTITIONS: u32 = 2;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One producer's batch number `sequence`: two records named after it, so its first
/// sequence number is twice that.
fn batch(producer_id: i64, producer: usize, sequence: i32) -> Append {
    let mut builder = BatchBuilder::new(Compression::None).producer(ProducerInfo {
        producer_id,
        producer_epoch: 0,
        base_sequence: 2 * sequence,
    });
    for _ in 0..2 {
        builder.push(NewRecord {
            value: Some(Bytes::from(format!("p{producer}-{sequence}"))),
            ..NewRecord::default()
        });
    }
    Append {
        topic: "faults".to_string(),
        partition: producer as u32 % PARTITIONS,
        batches: builder.build().expect("a batch"),
    }
}

/// Share of successful `COMMIT` answers the proxy swallows, cutting the connection instead.
const COMMITS_CUT: f64 = 0.1;

/// Forwards connections to `upstream`, cutting a connection instead of passing on a reply
/// that reports a finished `COMMIT`, for [`COMMITS_CUT`] of them, counting them in `cut`.
/// Returns its port.
async fn commit_cutting_proxy(upstream: u16, seed: u64, cut: Arc<AtomicU64>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = listener.local_addr().expect("an address").port();
    tokio::spawn(async move {
        let mut connection = 0u64;
        while let Ok((client, _)) = listener.accept().await {
            connection += 1;
            let mut rng = StdRng::seed_from_u64(seed ^ connection.rotate_left(17));
            let cut = cut.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    return;
                };
                // Without it, each small message waits for the peer's delayed acknowledgement.
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let upward = tokio::io::copy(&mut client_read, &mut server_write);
                let downward = async {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = server_read.read(&mut buf).await?;
                        if n == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        // CommandComplete carries the tag "COMMIT\0".
                        let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                        if commit && rng.random_bool(COMMITS_CUT) {
                            cut.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        client_write.write_all(&buf[..n]).await?;
                    }
                };
                // Whichever side ends first ends the connection (both halves are dropped).
                tokio::select! {
                    _ = upward => {}
                    _ = downward => {}
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_database_crashes_and_pauses_exactly_once() {
    let Some((pg, _store, store_url)) = cluster() else {
        return;
    };
    let seed = env_u64("WEIR_CLUSTER_FAULT_SEED", weir_storage::now_ms() as u64);
    let seconds = env_u64("WEIR_CLUSTER_FAULT_SECONDS", 12);
    eprintln!("fault run: seed {seed}, {seconds} s (WEIR_CLUSTER_FAULT_SEED={seed} replays it)");
    let url = pg.url();
    let cut = Arc::new(AtomicU64::new(0));
    let proxy = commit_cutting_proxy(pg.port(), seed, cut.clone()).await;
    let proxied = format!("postgres://weir@127.0.0.1:{proxy}/postgres");
    // Set up directly: the proxy may cut any commit, this one too.
    let first = SharedLog::open(&url, &store_url, "reader")
        .await
        .expect("open");
    first
        .create_topic("faults", PARTITIONS, &Default::default())
        .await
        .expect("create");
    let mut flushers = Vec::new();
    for n in 0..NODES {
        // Opening commits a migration, which the proxy may cut too: a node starts again.
        let mut opened = None;
        for _ in 0..20 {
            if let Ok(log) = SharedLog::open(&proxied, &store_url, &format!("n{n}")).await {
                opened = Some(log);
                break;
            }
        }
        let log = Arc::new(opened.expect("a node opens within 20 tries"));
        let config = FlushConfig {
            linger_ms: 20,
            ..FlushConfig::default()
        };
        flushers.push(Arc::new(Flusher::start(log, config).expect("flusher")));
    }
    let mut ids = Vec::new();
    for _ in 0..PRODUCERS {
        ids.push(first.new_producer_id().await.expect("a producer id"));
    }

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for (producer, &id) in ids.iter().enumerate() {
        let flushers = flushers.clone();
        let stop = stop.clone();
        let mut rng = StdRng::seed_from_u64(seed ^ producer as u64);
        producers.push(tokio::spawn(async move {
            // (sequence, base offset) of every acknowledged batch, and the retries made.
            let mut acked = Vec::new();
            let mut retries = 0u64;
            let mut sequence = 0i32;
            while !stop.load(Ordering::Relaxed) {
                let append = batch(id, producer, sequence);
                loop {
                    let node = &flushers[rng.random_range(0..NODES)];
                    match node.append(append.clone()).await {
                        Ok(base) => {
                            acked.push((sequence, base));
                            break;
                        }
                        Err(e) if e.is_retriable() => {
                            retries += 1;
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => panic!("producer {producer}: {e}"),
                    }
                }
                sequence += 1;
            }
            (acked, retries)
        }));
    }

    let mut rng = StdRng::seed_from_u64(seed);
    let (mut crashes, mut pauses) = (0, 0);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(300..1_500))).await;
        let down = Duration::from_millis(rng.random_range(100..1_000));
        let pg_ref = &pg;
        if rng.random_bool(0.5) {
            pg_ref.stop();
            tokio::time::sleep(down).await;
            pg_ref.start_again();
            crashes += 1;
        } else {
            pg_ref.pause();
            tokio::time::sleep(down).await;
            pg_ref.resume();
            pauses += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked_by: HashMap<String, u64> = HashMap::new();
    let (mut acked_total, mut retries_total) = (0, 0);
    for (producer, task) in producers.into_iter().enumerate() {
        let (acked, retries) = task.await.expect("a producer");
        retries_total += retries;
        acked_total += acked.len();
        for (sequence, base) in acked {
            acked_by.insert(format!("p{producer}-{sequence}"), base);
        }
    }
    eprintln!(
        "fault run: seed {seed}: {crashes} crashes, {pauses} pauses, {} commits cut, {acked_total} batches acknowledged, {retries_total} retries",
        cut.load(Ordering::Relaxed)
    );
    assert!(crashes + pauses >= 3, "the schedule made too few faults");
    assert!(cut.load(Ordering::Relaxed) >= 1, "no commit was cut");
    assert!(
        acked_total >= 20,
        "too little work to prove anything: {acked_total}"
    );

    let reader = SharedLog::open(&url, &store_url, "checker")
        .await
        .expect("open");
    let mut seen: HashMap<String, i64> = HashMap::new();
    for partition in 0..PARTITIONS {
        let mut offset = 0u64;
        loop {
            let fetched = reader
                .read("faults", partition, offset, 1 << 20)
                .await
                .expect("read");
            if fetched.batches.is_empty() {
                break;
            }
            let records = decode_records(&fetched.batches).expect("valid batches");
            for (record_offset, value) in values(&records) {
                if record_offset < offset as i64 {
                    continue;
                }
                assert_eq!(record_offset, offset as i64, "partition {partition}: a gap");
                offset += 1;
                // Two records per batch: the first one's offset is the batch's.
                if let Some(first) = seen.get(&value) {
                    assert_eq!(
                        record_offset,
                        first + 1,
                        "seed {seed}: batch {value} is in the log twice"
                    );
                } else {
                    seen.insert(value, record_offset);
                }
            }
        }
    }
    for (value, base) in &acked_by {
        assert_eq!(
            seen.get(value),
            Some(&(*base as i64)),
            "seed {seed}: acknowledged batch {value} at {base}"
        );
    }
    assert_eq!(
        seen.len(),
        acked_by.len(),
        "seed {seed}: the log holds batches never acknowledged"
    );
}
