//! Filling topics for the SQL tests.

#![allow(dead_code)] // each test file uses its own part of these helpers
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use bytes::Bytes;
use weir_storage::{BatchBuilder, Compression, Header, NewRecord, Storage};

pub fn append(
    storage: &Storage,
    topic: &str,
    partition: u32,
    compression: Compression,
    records: Vec<NewRecord>,
) {
    let mut builder = BatchBuilder::new(compression);
    records.into_iter().for_each(|r| builder.push(r));
    storage
        .log(topic, partition)
        .unwrap()
        .append(&builder.build().unwrap())
        .unwrap();
}

pub fn record(
    timestamp: i64,
    key: Option<&str>,
    value: &str,
    headers: &[(&str, &str)],
) -> NewRecord {
    NewRecord {
        timestamp,
        key: key.map(|k| Bytes::from(k.to_string())),
        value: Some(Bytes::from(value.to_string())),
        headers: headers
            .iter()
            .map(|(k, v)| Header {
                key: k.to_string(),
                value: Some(Bytes::from(v.to_string())),
            })
            .collect(),
    }
}
