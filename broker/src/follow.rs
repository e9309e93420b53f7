//! `weir produce TOPIC --follow FILE`: sends the lines appended to a growing file, as
//! `tail -F` prints them, and keeps going across log rotation. A file renamed away (logrotate's
//! default) is read to its end, then the new file at the path from its start; a file truncated
//! in place (`copytruncate`) is read again from its start; a path that does not exist yet is
//! waited for. Only complete lines are sent, except the last line of a rotated file. While the
//! node cannot take them (down, or answering 503), lines wait and are sent again.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{Client, PRODUCE_CHUNK_RECORDS, Target};
use crate::error::{Error, Result, io};

/// How often the file is looked at for new lines and rotation.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How long to wait before sending again what the node could not take.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);

/// Most bytes of a line kept while waiting for its end; a longer line is sent in parts.
pub const LINE_BYTES_MAX: usize = 1 << 20;

/// Most bytes read from the file at once, so a large file already there (`--from-beginning`)
/// is sent a part at a time rather than held whole.
pub const READ_BYTES_MAX: usize = 8 << 20;

/// A file followed by name.
pub struct Follower {
    path: PathBuf,
    /// The file being read, and its device and inode, once the path has existed.
    open: Option<(File, (u64, u64))>,
    /// Bytes read from the open file.
    position: u64,
    /// The start of a line whose end has not been written yet.
    partial: Vec<u8>,
}

impl Follower {
    /// Follows `path` from its current end, or from its start with `from_beginning` (a file
    /// that does not exist yet is read from its start once it does).
    pub fn new(path: &Path, from_beginning: bool) -> Result<Follower> {
        let mut follower = Follower {
            path: path.to_owned(),
            open: None,
            position: 0,
            partial: Vec::new(),
        };
        if follower.reopen()? && !from_beginning {
            let (file, _) = follower.open.as_mut().ok_or_else(|| gone(path))?;
            follower.position = file
                .seek(SeekFrom::End(0))
                .map_err(io(format!("reading {}", path.display())))?;
        }
        Ok(follower)
    }

    /// Opens the file now at the path, from its start; false when there is none.
    fn reopen(&mut self) -> Result<bool> {
        match File::open(&self.path) {
            Ok(file) => {
                let meta = file
                    .metadata()
                    .map_err(io(format!("reading {}", self.path.display())))?;
                self.open = Some((file, (meta.dev(), meta.ino())));
                self.position = 0;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::Io {
                what: format!("opening {}", self.path.display()),
                source: e,
            }),
        }
    }

    /// The lines written since the last call, across a rotation or a truncation, reading at
    /// most [`READ_BYTES_MAX`] of the file: the rest comes with the next calls.
    pub fn lines(&mut self) -> Result<Vec<String>> {
        let mut lines = Vec::new();
        if self.open.is_none() && !self.reopen()? {
            return Ok(lines);
        }
        if !self.read_into(&mut lines)? {
            return Ok(lines);
        }
        // A new file at the path: the old one was read to its end above.
        let at_path = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let current = self.open.as_ref().map(|(_, id)| *id);
        if at_path.is_some() && at_path != current {
            if !self.partial.is_empty() {
                lines.push(String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into());
            }
            if self.reopen()? {
                self.read_into(&mut lines)?;
            }
        }
        Ok(lines)
    }

    /// Reads the open file, up to [`READ_BYTES_MAX`], adding its complete lines to `lines`;
    /// true when it was read to its end.
    fn read_into(&mut self, lines: &mut Vec<String>) -> Result<bool> {
        let what = || format!("reading {}", self.path.display());
        let Some((file, _)) = self.open.as_mut() else {
            return Ok(true);
        };
        let len = file.metadata().map_err(io(what()))?.len();
        if len < self.position {
            // Truncated in place: what is there now was written since.
            file.seek(SeekFrom::Start(0)).map_err(io(what()))?;
            self.position = 0;
            self.partial.clear();
        }
        let mut bytes = Vec::new();
        let read = file
            .take(READ_BYTES_MAX as u64)
            .read_to_end(&mut bytes)
            .map_err(io(what()))?;
        self.position += read as u64;
        let mut rest = bytes.as_slice();
        while let Some(end) = rest.iter().position(|b| *b == b'\n') {
            self.partial.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = std::mem::take(&mut self.partial);
            push_line(lines, &line);
        }
        self.partial.extend_from_slice(rest);
        if self.partial.len() > LINE_BYTES_MAX {
            push_line(lines, &std::mem::take(&mut self.partial));
        }
        Ok(read < READ_BYTES_MAX)
    }
}

/// Adds a line without its `\r`; blank lines are skipped, as `POST …/records` does.
fn push_line(lines: &mut Vec<String>, line: &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.iter().all(u8::is_ascii_whitespace) {
        lines.push(String::from_utf8_lossy(line).into_owned());
    }
}

fn gone(path: &Path) -> Error {
    Error::Invalid(format!("{} went away while being opened", path.display()))
}

/// Whether sending again may succeed: the node is unreachable, busy or cannot write for now.
fn transient(e: &Error) -> bool {
    matches!(e, Error::Unreachable { .. })
        || matches!(e, Error::Remote { status, .. } if *status == 429 || *status >= 500)
}

/// Sends the lines appended to `path` to `target`, forever: a failure the node may recover
/// from is retried, any other ends it. The file is read again only once what was read is sent,
/// and lines are sent [`PRODUCE_CHUNK_RECORDS`] a request, so a line the node took is never sent
/// twice and at most one read's lines wait in memory.
pub fn follow(c: &Client, target: &Target, path: &Path, from_beginning: bool) -> Result<()> {
    let mut follower = Follower::new(path, from_beginning)?;
    let mut waiting: Vec<String> = Vec::new();
    loop {
        if waiting.is_empty() {
            waiting = follower.lines()?;
        }
        if waiting.is_empty() {
            std::thread::sleep(POLL_INTERVAL);
            continue;
        }
        let request = waiting.len().min(PRODUCE_CHUNK_RECORDS);
        match crate::cli::produce_lines(c, target, &waiting[..request]) {
            Ok(()) => drop(waiting.drain(..request)),
            Err(e) if transient(&e) => {
                eprintln!("{e}; sending {} lines again shortly", waiting.len());
                std::thread::sleep(RETRY_INTERVAL);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

    use std::io::Write as _;

    use super::*;

    fn append(path: &Path, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn follows_a_file_through_rename_rotation_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut f = Follower::new(&path, true).unwrap();
        assert!(f.lines().unwrap().is_empty(), "no file yet");
        append(&path, "a\nb\r\n\npart");
        assert_eq!(f.lines().unwrap(), ["a", "b"]);
        append(&path, "ial\nc");
        assert_eq!(f.lines().unwrap(), ["partial"]);
        // Renamed away; the writer still appends to it; then a new file at the path.
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        append(&dir.path().join("app.log.1"), "d\nlast");
        assert_eq!(f.lines().unwrap(), ["cd"]);
        append(&path, "new 1\n");
        assert_eq!(f.lines().unwrap(), ["last", "new 1"]);
        // Copied and truncated in place.
        std::fs::write(&path, "").unwrap();
        assert!(f.lines().unwrap().is_empty());
        append(&path, "after\n");
        assert_eq!(f.lines().unwrap(), ["after"]);
    }

    #[test]
    fn starts_at_the_end_unless_from_the_beginning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, "old\n");
        let mut f = Follower::new(&path, false).unwrap();
        append(&path, "new\n");
        assert_eq!(f.lines().unwrap(), ["new"]);
        assert_eq!(
            Follower::new(&path, true).unwrap().lines().unwrap(),
            ["old", "new"]
        );
    }

    #[test]
    fn a_large_file_is_read_a_part_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let line = "y".repeat(999);
        let count = 2 * READ_BYTES_MAX / 1000 + 10;
        append(&path, &format!("{line}\n").repeat(count));
        let mut f = Follower::new(&path, true).unwrap();
        let mut parts = Vec::new();
        loop {
            let lines = f.lines().unwrap();
            if lines.is_empty() {
                break;
            }
            assert!(lines.iter().all(|l| *l == line));
            parts.push(lines.len());
        }
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert_eq!(parts.iter().sum::<usize>(), count);
    }

    #[test]
    fn a_line_past_the_bound_is_sent_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, &"x".repeat(LINE_BYTES_MAX + 1));
        let lines = Follower::new(&path, true).unwrap().lines().unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].len(), LINE_BYTES_MAX + 1);
    }
}
