//! Records the unit tests write to topics with a value schema.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use weir_storage::{Header, NewRecord, Storage, StorageConfig, TopicMeta};

/// A node's storage in a temp dir with the topic `logs` of `partitions` partitions: JSON values
/// of the schema `status INT, host TEXT`, and the topic configs `configs` too.
pub(crate) fn logs_topic(
    partitions: u32,
    configs: &[(&str, &str)],
) -> (tempfile::TempDir, Arc<Storage>, TopicMeta) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut config = StorageConfig::new(dir.path());
    config.layer_keys = crate::topic_config_keys();
    let storage = Storage::open(config).expect("storage");
    let configs = [
        ("value.format", "json"),
        ("value.schema", "status INT, host TEXT"),
    ]
    .iter()
    .chain(configs)
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect::<BTreeMap<_, _>>();
    let meta = storage
        .create_topic("logs", partitions, configs)
        .expect("topic logs");
    (dir, storage, meta)
}

/// Record `i`: keyed `k<i>` but every third one with no key, one header `n` = `i`.
pub(crate) fn record(i: i64, timestamp: i64, value: Option<Bytes>) -> NewRecord {
    NewRecord {
        timestamp,
        key: (i % 3 != 0).then(|| Bytes::from(format!("k{i}"))),
        value,
        headers: vec![Header {
            key: "n".into(),
            value: Some(Bytes::from(i.to_string())),
        }],
    }
}

/// A value by `kind`: 0 none, 1 text that is not JSON, else `{"status":…,"host":"h…"}`.
pub(crate) fn value(kind: i64, status: i64, host: i64) -> Option<Bytes> {
    match kind {
        0 => None,
        1 => Some(Bytes::from("not json")),
        _ => Some(Bytes::from(format!(
            r#"{{"status":{status},"host":"h{host}"}}"#
        ))),
    }
}
