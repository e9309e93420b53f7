//! kcat (librdkafka) against a real `weir serve`: metadata, produce with keys, headers and
//! compression, consume from offsets, lookups by time, a restart in between, and bad frames.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{Node, have, kcat, metric, now_ms, started};

const CONSUME_FORMAT: &str = "%o|%k|%s|%h\n";

#[test]
fn kcat_produces_and_consumes_byte_exact_across_a_restart() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let (dir, node, _) = started(&[]);

    let before = now_ms();
    kcat(
        &node,
        &["-P", "-t", "logs", "-K", ":"],
        "k1:first line\nk2:second line\n",
    );
    kcat(
        &node,
        &[
            "-P",
            "-t",
            "logs",
            "-H",
            "source=web",
            "-H",
            "n=1",
            "-z",
            "zstd",
        ],
        "no key here\nwith: colon\n",
    );
    kcat(
        &node,
        &["-P", "-t", "logs", "-z", "gzip", "-K", ":"],
        "k3:\u{e9}t\u{e9} \u{2603}\n",
    );
    let after = now_ms();

    let expected = "0|k1|first line|\n\
                    1|k2|second line|\n\
                    2||no key here|source=web,n=1\n\
                    3||with: colon|source=web,n=1\n\
                    4|k3|\u{e9}t\u{e9} \u{2603}|\n";
    let consume = |node: &Node, offset: &str| {
        kcat(
            node,
            &["-C", "-t", "logs", "-o", offset, "-e", "-f", CONSUME_FORMAT],
            "",
        )
    };
    assert_eq!(consume(&node, "beginning"), expected);
    assert_eq!(
        consume(&node, "3"),
        expected
            .lines()
            .skip(3)
            .map(|l| format!("{l}\n"))
            .collect::<String>()
    );
    assert_eq!(consume(&node, "-1"), "4|k3|\u{e9}t\u{e9} \u{2603}|\n");

    // Metadata names the topic, its partition and this broker.
    let metadata = kcat(&node, &["-L"], "");
    assert!(
        metadata.contains(&format!("broker 0 at {}", node.kafka)),
        "{metadata}"
    );
    assert!(
        metadata.contains("topic \"logs\" with 1 partitions"),
        "{metadata}"
    );

    // Offsets by time: before everything is offset 0, after everything is the end (-1).
    let by_time = |node: &Node, ts: i64| kcat(node, &["-Q", "-t", &format!("logs:0:{ts}")], "");
    assert!(
        by_time(&node, before - 1000).contains("offset 0"),
        "{}",
        by_time(&node, before - 1000)
    );
    assert!(by_time(&node, after + 60_000).contains("offset -1"));

    node.stop();
    let node = Node::start(dir.path());
    assert_eq!(consume(&node, "beginning"), expected);
    kcat(&node, &["-P", "-t", "logs"], "after restart\n");
    assert!(consume(&node, "5").starts_with("5||after restart|"));
    node.stop();
}

/// Sends raw bytes on a fresh connection and reports whether the broker closed it.
#[test]
fn a_large_topic_reads_back_byte_exact_sent_from_the_segment_files() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let (_dir, node, c) = started(&[]);
    // Small segments, so fetches read closed segments (opened again through the budget) and
    // stop at segment ends.
    c.call(
        "POST",
        "/v1/topics",
        Some(&serde_json::json!({
            "name": "big", "partitions": 1, "configs": {"segment.bytes": "1048576"}
        })),
    )
    .unwrap();
    let lines: String = (0..20_000)
        .map(|i| format!("{i:06} {}\n", "abcdefghij".repeat(1 + i % 40)))
        .collect();
    kcat(&node, &["-P", "-t", "big"], &lines);
    let read = kcat(&node, &["-C", "-t", "big", "-e", "-f", "%s\n"], "");
    assert!(read == lines, "what kcat read differs from what it wrote");
    let sent = metric(&node, "weir_fetch_sendfile_bytes_total");
    assert!(
        sent >= lines.len() as f64 / 2.0,
        "{sent} bytes went out with sendfile for {} bytes of values",
        lines.len()
    );
}

fn closed_after(node: &Node, bytes: &[u8]) -> bool {
    let mut stream = TcpStream::connect(node.kafka).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(0) | Err(_))
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

#[test]
fn bad_frames_close_only_their_connection() {
    if !have("kcat", "apt-get install kcat") {
        return;
    }
    let (_dir, node, _) = started(&[]);
    kcat(&node, &["-P", "-t", "t"], "kept\n");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("negative length", (-5i32).to_be_bytes().to_vec()),
        ("huge length", (i32::MAX).to_be_bytes().to_vec()),
        (
            "unknown api key",
            frame(&[0x7f, 0x00, 0, 0, 0, 0, 0, 1, 0, 0]),
        ),
        (
            "unsupported version",
            frame(&[0, 0, 0x7f, 0, 0, 0, 0, 1, 0, 0]),
        ),
        ("truncated header", frame(&[0, 3])),
        (
            "truncated body",
            frame(&[0, 3, 0, 9, 0, 0, 0, 1, 0, 0, 0xff]),
        ),
    ];
    for (name, bytes) in cases {
        assert!(
            closed_after(&node, &bytes),
            "{name}: connection stayed open"
        );
        node.wait_for("closing Kafka connection");
    }
    // A frame cut short by the client closing: the broker notices and moves on.
    {
        let mut stream = TcpStream::connect(node.kafka).unwrap();
        stream.write_all(&100i32.to_be_bytes()).unwrap();
        stream.write_all(&[0, 18]).unwrap();
    }
    node.wait_for("closing Kafka connection");
    // Everyone else is served as before.
    let out = kcat(
        &node,
        &["-C", "-t", "t", "-o", "beginning", "-e", "-f", "%s\n"],
        "",
    );
    assert_eq!(out, "kept\n");
    node.stop();
}
