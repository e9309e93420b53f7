//! Appends batches to the log in the directory given as the only argument, forever, with the
//! `always` flush policy, printing `acked <first> <last>` after each append returns. The log is
//! reopened where a killed predecessor left it. Segments are small so rolls happen often.

use std::io::Write;

use anyhow::Context;
use bytes::Bytes;
use weir_storage::{BatchBuilder, Compression, FlushPolicy, Log, LogConfig, NewRecord};
use weir_tests::value_for;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).context("usage: crash-writer DIR")?;
    let config = LogConfig {
        segment_bytes: 256 * 1024,
        flush_policy: FlushPolicy::Always,
        ..LogConfig::default()
    };
    let log = Log::open(dir.as_ref(), config)?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "opened {}", log.log_end_offset())?;
    stdout.flush()?;
    loop {
        let first = log.log_end_offset();
        let count = 1 + first % 20;
        let mut builder = BatchBuilder::new(if first % 3 == 0 {
            Compression::Zstd
        } else {
            Compression::None
        });
        for offset in first..first + count {
            builder.push(NewRecord {
                timestamp: offset as i64,
                key: Some(Bytes::from(offset.to_string())),
                value: Some(Bytes::from(value_for(offset))),
                headers: Vec::new(),
            });
        }
        let batch = builder.build()?.to_vec();
        let info = log.append(&batch)?;
        anyhow::ensure!(
            info.base_offset == first,
            "offset {} != {first}",
            info.base_offset
        );
        writeln!(stdout, "acked {} {}", info.base_offset, info.last_offset)?;
        stdout.flush()?;
    }
}
