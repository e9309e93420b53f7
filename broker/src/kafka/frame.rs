//! A response frame as it is sent: the encoded fields, with each large record set of a fetch
//! kept by reference to the segment file it lies in rather than copied into the frame. On a
//! plain TCP connection those go from the page cache to the socket with `sendfile`; through
//! TLS, which has to encrypt them, they are written from their mapping.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd};

use bytes::buf::UninitSlice;
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBufMut;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use weir_storage::LogFile;

use crate::metrics::Held;

/// Record sets smaller than this are copied into the frame: below it a system call of its own
/// costs more than the copy.
pub(crate) const LENT_BYTES_MIN: usize = 32 * 1024;

/// Record set bytes mapped from a segment file, and where in that file they are.
pub(crate) struct FileBytes {
    /// The bytes, mapped (and verified) from the file.
    pub bytes: Bytes,
    pub file: LogFile,
    pub position: u64,
    /// The node's count of lent record sets, held until the frame is written.
    pub _held: Held,
}

/// One piece of a frame.
enum Part {
    Copied(BytesMut),
    File(FileBytes),
}

/// An encoded response frame, size prefix included.
pub(crate) struct Frame {
    parts: Vec<Part>,
}

impl Frame {
    /// Writes the frame to `sink`, sending file parts the cheapest way it has; returns the
    /// bytes it sent from files.
    pub(crate) async fn write_to(&self, sink: &mut impl Sink) -> io::Result<u64> {
        let mut from_files = 0;
        for part in &self.parts {
            match part {
                Part::Copied(b) => sink.write_all(b).await?,
                Part::File(f) => from_files += sink.send_file(f).await?,
            }
        }
        Ok(from_files)
    }

    /// The frame's bytes in one buffer.
    #[cfg(test)]
    fn to_vec(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for part in &self.parts {
            match part {
                Part::Copied(b) => all.extend_from_slice(b),
                Part::File(f) => all.extend_from_slice(&f.bytes),
            }
        }
        all
    }
}

/// A connection's stream, as the frame writer sees it.
pub(crate) trait Sink: AsyncWrite + Unpin + Send {
    /// Writes the bytes of `part`; returns how many of them went straight from the file.
    fn send_file(&mut self, part: &FileBytes) -> impl Future<Output = io::Result<u64>> + Send;
}

impl Sink for TcpStream {
    async fn send_file(&mut self, part: &FileBytes) -> io::Result<u64> {
        let socket = self.as_raw_fd();
        let file = part.file.as_fd().as_raw_fd();
        let end = part.position + part.bytes.len() as u64;
        let mut position = part.position;
        while position < end {
            self.writable().await?;
            let sent = self.try_io(Interest::WRITABLE, || {
                let mut offset = libc::off_t::try_from(position)
                    .map_err(|_| io::Error::other("file position past off_t"))?;
                let count = usize::try_from(end - position).unwrap_or(usize::MAX);
                // SAFETY: both descriptors are open for the call (the stream and the `LogFile`
                // are borrowed), and `offset` is a valid, exclusively borrowed off_t.
                let sent = unsafe { libc::sendfile(socket, file, &mut offset, count) };
                usize::try_from(sent).map_err(|_| io::Error::last_os_error())
            });
            match sent {
                // The file ends before the bytes it was mapped with: it was cut under us.
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("segment file ends before byte {end} of a record set"),
                    ));
                }
                Ok(n) => position += n as u64,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(part.bytes.len() as u64)
    }
}

impl Sink for TlsStream<TcpStream> {
    async fn send_file(&mut self, part: &FileBytes) -> io::Result<u64> {
        self.write_all(&part.bytes).await?;
        Ok(0)
    }
}

/// Encodes a frame: a `kafka-protocol` buffer that copies what is encoded into it, except the
/// record sets it was lent, which it keeps as file parts when the encoder puts exactly them.
pub(crate) struct FrameBuf {
    parts: Vec<Part>,
    tail: BytesMut,
    /// Bytes in `parts`.
    done: usize,
    lent: Vec<FileBytes>,
}

impl FrameBuf {
    /// A buffer that starts with room for the size prefix; `capacity` is what the copied
    /// bytes are expected to need.
    pub(crate) fn new(capacity: usize) -> FrameBuf {
        let mut tail = BytesMut::with_capacity(capacity);
        tail.put_i32(0);
        FrameBuf {
            parts: Vec::new(),
            tail,
            done: 0,
            lent: Vec::new(),
        }
    }

    /// Offers `part`: if the encoder puts its bytes (the same memory, not an equal copy), the
    /// frame refers to the file instead of copying them.
    pub(crate) fn lend(&mut self, part: FileBytes) {
        self.lent.push(part);
    }

    /// Where copied bytes go, for encoders that take a `BytesMut`: what they put is copied.
    pub(crate) fn copying(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// The frame, with its size prefix filled in.
    pub(crate) fn finish(mut self) -> Frame {
        let size = (self.offset() - 4) as i32;
        if !self.tail.is_empty() {
            self.parts.push(Part::Copied(self.tail));
        }
        if let Some(Part::Copied(first)) = self.parts.first_mut() {
            first[..4].copy_from_slice(&size.to_be_bytes());
        }
        Frame { parts: self.parts }
    }
}

// SAFETY: every method hands on to the tail's, which upholds the trait's contract.
unsafe impl BufMut for FrameBuf {
    fn remaining_mut(&self) -> usize {
        self.tail.remaining_mut()
    }

    unsafe fn advance_mut(&mut self, cnt: usize) {
        // SAFETY: the caller initialised `cnt` bytes of the tail's chunk, as the trait requires.
        unsafe { self.tail.advance_mut(cnt) }
    }

    fn chunk_mut(&mut self) -> &mut UninitSlice {
        self.tail.chunk_mut()
    }

    fn put_slice(&mut self, src: &[u8]) {
        let lent = (src.len() >= LENT_BYTES_MIN)
            .then(|| {
                self.lent
                    .iter()
                    .position(|l| l.bytes.as_ptr() == src.as_ptr() && l.bytes.len() == src.len())
            })
            .flatten();
        match lent {
            Some(i) => {
                let part = self.lent.swap_remove(i);
                self.done += self.tail.len() + part.bytes.len();
                if !self.tail.is_empty() {
                    self.parts.push(Part::Copied(self.tail.split()));
                }
                self.parts.push(Part::File(part));
            }
            None => self.tail.extend_from_slice(src),
        }
    }
}

impl ByteBufMut for FrameBuf {
    fn offset(&self) -> usize {
        self.done + self.tail.len()
    }

    /// Seeks within the bytes copied since the last file part, which is all message encoding
    /// does (it fills gaps only inside record batches, which it does not build here).
    fn seek(&mut self, offset: usize) {
        assert!(offset >= self.done, "seek into a lent record set");
        self.tail.resize(offset - self.done, 0);
    }

    fn range(&mut self, r: Range<usize>) -> &mut [u8] {
        assert!(r.start >= self.done, "range over a lent record set");
        &mut self.tail[r.start - self.done..r.end - self.done]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_holds_what_was_put_with_lent_bytes_by_reference() {
        let dir = tempfile::tempdir().unwrap();
        let log = weir_storage::Log::open(dir.path(), weir_storage::LogConfig::default()).unwrap();
        let mut batch = weir_storage::BatchBuilder::new(weir_storage::Compression::None);
        batch.push(weir_storage::NewRecord {
            timestamp: 1,
            key: None,
            value: Some(Bytes::from(vec![7u8; 100 * 1024])),
            headers: Vec::new(),
        });
        log.append(&batch.build().unwrap()).unwrap();
        let slice = log.read(0, 1 << 20).unwrap().slice.unwrap();
        let metrics = crate::metrics::Metrics::default();
        let bytes = slice.map().unwrap();
        let part = FileBytes {
            bytes: bytes.clone(),
            file: slice.file().unwrap(),
            position: slice.position(),
            _held: metrics.lend_fetch_set().unwrap(),
        };
        let small = Bytes::from(vec![1u8; 10]);
        let mut buf = FrameBuf::new(64);
        buf.lend(part);
        buf.put_i16(5);
        buf.put_slice(&small);
        buf.put_slice(&bytes[..]);
        buf.put_slice(&bytes[1..]);
        buf.put_u8(9);
        let frame = buf.finish();
        let mut want = Vec::new();
        let size = 2 + small.len() + 2 * bytes.len() - 1 + 1;
        want.extend_from_slice(&(size as i32).to_be_bytes());
        want.extend_from_slice(&5i16.to_be_bytes());
        want.extend_from_slice(&small);
        want.extend_from_slice(&bytes);
        want.extend_from_slice(&bytes[1..]);
        want.push(9);
        assert_eq!(frame.to_vec(), want);
        let files = frame
            .parts
            .iter()
            .filter(|p| matches!(p, Part::File(_)))
            .count();
        assert_eq!(
            files, 1,
            "only the lent bytes themselves are kept by reference"
        );
    }

    #[test]
    fn lent_record_sets_stop_at_the_node_bound_and_come_back_when_written() {
        let metrics = crate::metrics::Metrics::default();
        let held: Vec<_> = (0..crate::metrics::FETCH_LENT_SETS_MAX)
            .map(|_| metrics.lend_fetch_set().unwrap())
            .collect();
        assert!(metrics.lend_fetch_set().is_none(), "past the bound");
        assert_eq!(
            metrics.fetch_lent_sets(),
            crate::metrics::FETCH_LENT_SETS_MAX
        );
        drop(held);
        assert_eq!(metrics.fetch_lent_sets(), 0);
        assert!(metrics.lend_fetch_set().is_some());
    }
}
