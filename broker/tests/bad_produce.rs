//! Produce requests a client should never send, answered with the right Kafka error codes
//! while the broker goes on serving: a batch with a bad CRC, a truncated batch, an invalid
//! topic name, a partition that does not exist.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::TcpStream;

use bytes::Bytes;
use common::started;
use weir_storage::{BatchBuilder, Compression, NewRecord};

/// Sends one produce request and returns the error code of its one partition.
fn produce(stream: &mut TcpStream, topic: &str, partition: i32, records: Bytes) -> i16 {
    common::produce(stream, topic, partition, records).0
}

fn batch() -> Vec<u8> {
    let mut b = BatchBuilder::new(Compression::None);
    b.push(NewRecord {
        timestamp: 1,
        key: None,
        value: Some(Bytes::from_static(b"fine")),
        headers: Vec::new(),
    });
    b.build().unwrap().to_vec()
}

#[test]
fn bad_produce_requests_get_kafka_error_codes() {
    let (dir, node, _) = started(&[]);
    let mut stream = TcpStream::connect(node.kafka).unwrap();

    let good = batch();
    assert_eq!(produce(&mut stream, "t", 0, Bytes::from(good.clone())), 0);

    let mut bad_crc = good.clone();
    let last = bad_crc.len() - 1;
    bad_crc[last] ^= 0xff;
    assert_eq!(
        produce(&mut stream, "t", 0, Bytes::from(bad_crc)),
        2,
        "CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce(
            &mut stream,
            "t",
            0,
            Bytes::from(good[..good.len() - 3].to_vec())
        ),
        2,
        "a truncated batch is CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce(&mut stream, "no good!", 0, Bytes::from(good.clone())),
        17,
        "INVALID_TOPIC_EXCEPTION"
    );
    assert_eq!(
        produce(&mut stream, "t", 7, Bytes::from(good.clone())),
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );

    // Same connection, still served; nothing bad was written.
    assert_eq!(produce(&mut stream, "t", 0, Bytes::from(good)), 0);
    node.stop();
    let storage =
        weir_storage::Storage::open(weir_storage::StorageConfig::new(dir.path())).unwrap();
    let records = storage
        .log("t", 0)
        .unwrap()
        .read_records(0, 1 << 20)
        .unwrap();
    assert_eq!(records.len(), 2);
    assert!(storage.topic("no good!").unwrap().is_none());
}
