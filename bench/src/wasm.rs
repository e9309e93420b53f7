//! WASM plugin benchmark: the same plugin logic through the sandbox and as native Rust, beside
//! a plain copy of the same bytes, measured in one run.
//!
//! ```sh
//! cargo run --release -p weir-bench --bin bench-wasm [-- --seconds 1]
//! ```
//!
//! Plugins: identity (a map that returns its record), `regex-filter` (pattern ` 5\d\d `) and
//! `nginx-to-json`, each built for plugin ABI versions 1 and 2, over nginx access lines of
//! ~200 B, in batches of 1, 100 and 10 000 records, on one thread. The native column calls the plugin crates' own functions (they are
//! rlibs too) on the same records; the copy column is `memcpy` of the batch's values, the floor
//! any transform pays. Then, in one process with a real data directory: deploy-to-first-record
//! (deploy, create a pipeline, append one record, see it in the output), hot swap (deploy a new
//! version, append a record only the new one keeps, see it), and resident memory per instance.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use weir::{Params, Record as GuestRecord};
use weir_runtime::{Init, Instance, PipelineSpec, Runtime, Sandbox, SandboxConfig};
use weir_storage::{BatchBuilder, Compression, NewRecord, Record, Storage, StorageConfig};
use weir_tests::wasm::{self, Abi};

mod proc_status;

const IDENTITY: &str = r#"
use weir::Record;

/// Returns each record as it is.
#[weir::map]
fn identity(r: Record) -> Record {
    r
}
"#;

/// A plugin parameter, key and value.
type Param<'a> = (&'a str, &'a str);

const REGEX: &str = r" 5\d\d ";

fn access_line(i: usize) -> String {
    let status = [200, 200, 301, 404, 500, 503][i % 6];
    format!(
        r#"10.1.{}.{} - - [01/Jan/2024:00:{:02}:{:02} +0000] "GET /api/v1/items/{i}?page=2 HTTP/1.1" {status} {} "https://example.com/search?q=weir" "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101""#,
        i % 200,
        i % 250,
        (i / 60) % 60,
        i % 60,
        i % 9000
    )
}

fn records(count: usize) -> Vec<Record> {
    (0..count)
        .map(|i| Record {
            offset: i as i64,
            timestamp: 1_704_067_200_000 + i as i64,
            key: None,
            value: Some(Bytes::from(access_line(i))),
            headers: Vec::new(),
        })
        .collect()
}

fn guest_record(r: &Record) -> GuestRecord<'_> {
    GuestRecord {
        key: r.key.as_deref().map(Cow::Borrowed),
        value: Cow::Borrowed(r.value.as_deref().unwrap_or_default()),
        headers: Vec::new(),
        timestamp: r.timestamp,
        offset: r.offset,
        partition: 0,
        topic: None,
        target_partition: None,
    }
}

/// What a pipeline keeps of a native result: owned bytes, as it would append them.
fn owned(r: &GuestRecord) -> NewRecord {
    NewRecord {
        timestamp: r.timestamp,
        key: r.key.as_deref().map(Bytes::copy_from_slice),
        value: Some(Bytes::copy_from_slice(&r.value)),
        headers: Vec::new(),
    }
}

fn plugin_error(e: weir::Error) -> anyhow::Error {
    anyhow::anyhow!("plugin failed: {e}")
}

/// The native form of each plugin, over one batch; returns how many records came out.
fn native(plugin: &str, batch: &[Record], params: &Params) -> anyhow::Result<usize> {
    let mut out = 0;
    for r in batch {
        let input = guest_record(r);
        match plugin {
            "identity" => {
                std::hint::black_box(owned(&input));
                out += 1;
            }
            "regex-filter" => {
                out +=
                    usize::from(regex_filter::regex_filter(&input, params).map_err(plugin_error)?)
            }
            _ => {
                std::hint::black_box(owned(
                    &nginx_to_json::nginx_to_json(input).map_err(plugin_error)?,
                ));
                out += 1;
            }
        }
    }
    Ok(out)
}

/// Records per second of `run` over batches of `size`, for about `seconds`.
fn rate(
    batch: &[Record],
    seconds: f64,
    mut run: impl FnMut(&[Record]) -> anyhow::Result<usize>,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed().as_secs_f64() < seconds {
        run(batch)?;
        done += batch.len() as u64;
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn copy_rate(batch: &[Record], seconds: f64) -> anyhow::Result<f64> {
    let mut buffer = Vec::with_capacity(
        batch
            .iter()
            .map(|r| r.value.as_ref().map_or(0, Bytes::len))
            .sum(),
    );
    rate(batch, seconds, |batch| {
        buffer.clear();
        for r in batch {
            buffer.extend_from_slice(r.value.as_deref().unwrap_or_default());
        }
        std::hint::black_box(&buffer);
        Ok(batch.len())
    })
}

fn instance(sandbox: &Sandbox, wasm: &[u8], params: &[(&str, &str)]) -> anyhow::Result<Instance> {
    let plugin = sandbox.load(wasm)?;
    let init = Init {
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        partitions: 1,
        state: None,
    };
    Ok(sandbox.instantiate(&plugin, &init)?)
}

/// Waits until `topic` partition 0 holds `count` records; returns when it did.
fn wait_for_output(storage: &Storage, topic: &str, count: u64) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if storage.topic(topic)?.is_some() && storage.log(topic, 0)?.high_watermark() >= count {
            return Ok(Instant::now());
        }
        anyhow::ensure!(Instant::now() < deadline, "no output in {topic} after 30 s");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn append(storage: &Storage, topic: &str, value: &str) -> anyhow::Result<()> {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.push(NewRecord {
        timestamp: weir_storage::now_ms(),
        key: None,
        value: Some(Bytes::from(value.to_owned())),
        headers: Vec::new(),
    });
    storage.log(topic, 0)?.append(&builder.build()?)?;
    Ok(())
}

/// (deploy-to-first-record, hot swap) in milliseconds, medians of `runs`.
fn deploy_latencies(regex_wasm: &[u8], runs: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir_in("target")?;
    let storage = Storage::open(StorageConfig::new(dir.path()))?;
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let runtime = Arc::new(Runtime::open(storage.clone(), SandboxConfig::default())?);
    let pipelines = runtime.pipelines().clone();
    storage.set_listener(Arc::new(move |_, _| pipelines.notify_append()));
    tokio.block_on(async { runtime.start() })?;
    let (mut first, mut swap) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (input, output, plugin) = (
            format!("in-{run}"),
            format!("out-{run}"),
            format!("errors-{run}"),
        );
        storage.create_topic(&input, 1, Default::default())?;
        let started = Instant::now();
        runtime.registry().deploy(
            &plugin,
            regex_wasm,
            [("pattern".to_string(), "ERROR".to_string())].into(),
        )?;
        let spec = PipelineSpec {
            name: format!("p-{run}"),
            from: input.clone(),
            through: vec![plugin.clone()],
            partition_by: None,
            to: vec![output.clone()],
            from_offset: "earliest".into(),
            dead_letter: None,
            batch_records_max: 1000,
            failures_max: 5,
            sql: None,
            lateness_ms: 0,
            idle_timeout_ms: PipelineSpec::IDLE_TIMEOUT_DEFAULT_MS,
        };
        let create_runtime = runtime.clone();
        tokio.block_on(async move { create_runtime.pipelines().create(spec, None) })?;
        append(&storage, &input, "ERROR first")?;
        first.push(wait_for_output(&storage, &output, 1)?.duration_since(started));
        // Version 2 keeps WARN too; the first WARN in the output was handled by it.
        let started = Instant::now();
        runtime.registry().deploy(
            &plugin,
            regex_wasm,
            [("pattern".to_string(), "ERROR|WARN".to_string())].into(),
        )?;
        append(&storage, &input, "WARN second")?;
        swap.push(wait_for_output(&storage, &output, 2)?.duration_since(started));
    }
    tokio.block_on(runtime.shutdown());
    storage.close()?;
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2].as_secs_f64() * 1e3
    };
    Ok((median(first), median(swap)))
}

fn main() -> anyhow::Result<()> {
    let mut seconds = 1.0;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--seconds" => seconds = args.next().context("--seconds needs a value")?.parse()?,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    eprintln!("building plugins to wasm…");
    let build = |abi: Abi| -> anyhow::Result<[Vec<u8>; 3]> {
        Ok([
            std::fs::read(wasm::build_plugin_source_for("identity", IDENTITY, abi)?)?,
            std::fs::read(wasm::plugin_wasm_for("regex-filter", abi)?)?,
            std::fs::read(wasm::plugin_wasm_for("nginx-to-json", abi)?)?,
        ])
    };
    let version_1 = build(Abi::V1)?;
    let version_2 = build(Abi::Current)?;
    let [identity, regex, nginx] = &version_2;
    let sandbox = Sandbox::new(SandboxConfig {
        instances_max: 128,
        ..Default::default()
    })?;
    let params = Params::from_pairs([("pattern", REGEX)]);
    let regex_params = [("pattern", REGEX)];
    let names = ["identity", "regex-filter", "nginx-to-json"];
    let plugin_params: [&[Param]; 3] = [&[], &regex_params, &[]];
    let all = records(10_000);
    let mean_bytes = all
        .iter()
        .map(|r| r.value.as_ref().map_or(0, Bytes::len))
        .sum::<usize>() as f64
        / all.len() as f64;

    println!("# WASM plugins vs native Rust (records of {mean_bytes:.0} B, one thread)\n");
    println!(
        "| plugin | batch | ABI 1 ns/rec | ABI 2 ns/rec | ABI 2 rec/s | native ns/rec | ABI 1 / native | ABI 2 / native | copy rec/s (limit) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let plugins = names
        .iter()
        .zip(&version_1)
        .zip(&version_2)
        .zip(plugin_params);
    for (((name, wasm_v1), wasm_v2), plugin_params) in plugins {
        let mut v1 = instance(&sandbox, wasm_v1, plugin_params)?;
        let mut v2 = instance(&sandbox, wasm_v2, plugin_params)?;
        for size in [1, 100, 10_000] {
            let batch = &all[..size];
            let v1_rate = rate(batch, seconds, |batch| {
                Ok(v1.process(batch, 0, false)?.kept.len())
            })?;
            let v2_rate = rate(batch, seconds, |batch| {
                Ok(v2.process(batch, 0, false)?.kept.len())
            })?;
            let native_rate = rate(batch, seconds, |batch| native(name, batch, &params))?;
            let copy = copy_rate(batch, seconds)?;
            println!(
                "| {name} | {size} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.2}× | {:.0} |",
                1e9 / v1_rate,
                1e9 / v2_rate,
                v2_rate,
                1e9 / native_rate,
                native_rate / v1_rate,
                native_rate / v2_rate,
                copy
            );
        }
    }

    let (first, swap) = deploy_latencies(regex, 5)?;
    let instances_count = 50;
    let before = proc_status::memory_mib("self", "VmRSS");
    let mut live = Vec::new();
    for _ in 0..instances_count {
        let mut instance = instance(&sandbox, nginx, &[])?;
        instance.process(&all[..100], 0, false)?;
        live.push(instance);
    }
    let per_instance = (proc_status::memory_mib("self", "VmRSS") - before).max(0.0) * 1024.0
        / instances_count as f64;
    drop(live);
    println!("\n| measure | value |");
    println!("|---|---:|");
    println!(
        "| deploy → first record out (validate, compile, pipeline start), median of 5 | {first:.1} ms |"
    );
    println!(
        "| hot swap: deploy → first record handled by the new version, median of 5 | {swap:.1} ms |"
    );
    println!(
        "| resident memory per nginx-to-json instance after a 100-record batch ({instances_count} live) | {per_instance:.0} KiB |"
    );
    println!(
        "| module sizes: identity / regex-filter / nginx-to-json | {} / {} / {} KiB |",
        identity.len() / 1024,
        regex.len() / 1024,
        nginx.len() / 1024
    );
    Ok(())
}
