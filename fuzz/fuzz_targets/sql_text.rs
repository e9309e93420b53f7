//! Statement text as the HTTP and Postgres listeners take it: the token check, the parser,
//! the statement check, then planning over the node's catalog (a topic with typed columns). A
//! statement may fail with an error; it may not panic or overflow a stack.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use weir_sql::{QueryConfig, QueryEngine};
use weir_storage::{Storage, StorageConfig};

struct Fixture {
    runtime: tokio::runtime::Runtime,
    engine: QueryEngine,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let storage = Storage::open(StorageConfig {
            layer_keys: weir_sql::topic_config_keys(),
            ..StorageConfig::new(dir.path())
        })
        .expect("a data directory");
        let configs = [
            ("value.format", "json"),
            ("value.schema", "host TEXT, status INT, bytes BIGINT"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        storage.create_topic("logs", 2, configs).expect("a topic");
        let engine =
            QueryEngine::new(storage, None, None, &QueryConfig::default()).expect("a query engine");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        Fixture {
            runtime,
            engine,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let fixture = fixture();
    let _ = fixture.runtime.block_on(fixture.engine.plan(sql));
});
