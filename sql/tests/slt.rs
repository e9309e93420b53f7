#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! The `.slt` files under `tests/slt/` (sqllogictest) over topics this test fills: JSON logs
//! on two partitions with headers, a host table to join, and gzip-compressed plain text.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use common::{append, record};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use weir_runtime::{Runtime, SandboxConfig};
use weir_sql::stream::ContinuousQueries;
use weir_sql::{QueryConfig, QueryEngine};
use weir_storage::{Compression, NewRecord, Storage, StorageConfig};

/// 2024-01-01T00:00:00Z
const T0: i64 = 1_704_067_200_000;

fn fill(storage: &Storage) {
    let json = |schema: &str| {
        BTreeMap::from([
            ("value.format".to_string(), "json".to_string()),
            ("value.schema".to_string(), schema.to_string()),
        ])
    };
    storage
        .create_topic(
            "logs",
            2,
            json("host TEXT, status INT, bytes BIGINT, path TEXT"),
        )
        .unwrap();
    // 12 requests: partition 0 gets web-1 and web-2, partition 1 gets web-3; one line is not JSON.
    let lines = [
        (0, "web-1", 200, 100, "/"),
        (0, "web-1", 500, 0, "/api"),
        (0, "web-2", 200, 300, "/"),
        (0, "web-2", 503, 0, "/api"),
        (0, "web-1", 200, 50, "/img"),
        (1, "web-3", 404, 10, "/missing"),
        (1, "web-3", 200, 700, "/"),
        (1, "web-3", 500, 0, "/api"),
        (0, "web-2", 200, 120, "/"),
        (1, "web-3", 200, 80, "/img"),
        (0, "web-1", 502, 0, "/api"),
    ];
    let mut by_partition: BTreeMap<u32, Vec<NewRecord>> = BTreeMap::new();
    for (i, (partition, host, status, bytes, path)) in lines.iter().enumerate() {
        let value =
            format!(r#"{{"host":"{host}","status":{status},"bytes":{bytes},"path":"{path}"}}"#);
        let level = if *status >= 500 { "error" } else { "info" };
        let r = record(
            T0 + i as i64 * 60_000,
            Some(host),
            &value,
            &[("level", level), ("source", "nginx")],
        );
        by_partition.entry(*partition).or_default().push(r);
    }
    by_partition
        .get_mut(&1)
        .unwrap()
        .push(record(T0 + 11 * 60_000, None, "not json at all", &[]));
    for (partition, records) in by_partition {
        append(storage, "logs", partition, Compression::None, records);
    }

    storage
        .create_topic("hosts", 1, json("host TEXT, region TEXT"))
        .unwrap();
    let hosts = [("web-1", "eu"), ("web-2", "eu"), ("web-3", "us")];
    let records = hosts
        .iter()
        .map(|(h, r)| {
            record(
                T0,
                Some(h),
                &format!(r#"{{"host":"{h}","region":"{r}"}}"#),
                &[],
            )
        })
        .collect();
    append(storage, "hosts", 0, Compression::None, records);

    storage
        .create_topic(
            "sink",
            2,
            json("host TEXT, status INT, size BIGINT FROM bytes"),
        )
        .unwrap();

    storage.create_topic("raw", 1, BTreeMap::new()).unwrap();
    let records = (0..5)
        .map(|i| record(T0 + i, None, &format!("line {i}"), &[]))
        .collect();
    append(storage, "raw", 0, Compression::Gzip, records);
}

struct Db {
    engine: Arc<QueryEngine>,
}

#[async_trait::async_trait]
impl AsyncDB for Db {
    type Error = weir_sql::Error;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, Self::Error> {
        let answer = self.engine.sql(sql).await?;
        let options = FormatOptions::default().with_null("NULL");
        let mut rows = Vec::new();
        for batch in &answer.batches {
            let formatters: Vec<ArrayFormatter> = batch
                .columns()
                .iter()
                .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
                .collect::<Result<_, _>>()
                .map_err(datafusion::common::DataFusionError::from)?;
            for row in 0..batch.num_rows() {
                rows.push(
                    formatters
                        .iter()
                        .map(|f| f.value(row).to_string())
                        .collect(),
                );
            }
        }
        Ok(DBOutput::Rows {
            types: vec![DefaultColumnType::Any; answer.schema.fields().len()],
            rows,
        })
    }

    async fn shutdown(&mut self) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_files_pass() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig {
        layer_keys: weir_sql::topic_config_keys(),
        ..StorageConfig::new(dir.path())
    })
    .unwrap();
    fill(&storage);
    // Pipelines for the `CREATE PIPELINE` statements; no plugins are deployed.
    let runtime = Arc::new(Runtime::open(storage.clone(), SandboxConfig::default()).unwrap());
    let engine = Arc::new(
        QueryEngine::new(
            storage.clone(),
            Some(runtime.clone()),
            None,
            &QueryConfig::default(),
        )
        .unwrap(),
    );
    runtime
        .pipelines()
        .set_compiler(Arc::new(ContinuousQueries::new(
            storage.clone(),
            engine.functions().cloned(),
        )));
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut names: Vec<_> = std::fs::read_dir(&files)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    names.sort();
    assert!(names.len() >= 3, "slt files missing in {}", files.display());
    for file in names {
        let engine = engine.clone();
        let mut runner = sqllogictest::Runner::new(move || {
            let engine = engine.clone();
            async move { Ok(Db { engine }) }
        });
        if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
    }
    runtime.pipelines().shutdown().await;
    storage.close().unwrap();
}
