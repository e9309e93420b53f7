//! Connections of the HTTP listener, listed in `weir.connections` while they are open: a
//! listener that registers each connection it accepts, and a stream that unregisters it when
//! the connection ends. Past `--http-connections-max` open at once, a new connection is
//! answered `503 Service Unavailable` and closed (closed unanswered while the node answers
//! [`CONNECTION_REFUSALS_MAX`](crate::metrics::CONNECTION_REFUSALS_MAX) refusals already).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::metrics::{Connection, Metrics, Protocol};

/// A listener whose accepted connections are registered with the node's metrics.
pub(super) struct Tracked<L> {
    pub inner: L,
    pub metrics: Arc<Metrics>,
    /// Connections held at once.
    pub connections_max: u32,
}

/// How long a refused connection is given to take its answer.
const REFUSAL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers a connection past the bound with a 503 that says why, then closes it.
async fn refuse(mut io: impl AsyncWrite + Unpin, connections_max: u32) {
    let body = format!(
        "too many HTTP connections: this node serves {connections_max} at once (--http-connections-max)\n"
    );
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await
    })
    .await;
}

impl<L> axum::serve::Listener for Tracked<L>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    type Io = TrackedIo<L::Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, SocketAddr) {
        loop {
            let (io, peer) = self.inner.accept().await;
            if self.metrics.connections(Protocol::Http) >= i64::from(self.connections_max) {
                self.metrics.http_connection_refused();
                tracing::debug!(%peer, connections_max = self.connections_max, "HTTP connection refused: the node holds its limit of connections");
                self.metrics
                    .answer_refusal(refuse(io, self.connections_max));
                continue;
            }
            let connection = Arc::new(self.metrics.connection(Protocol::Http, peer));
            return (TrackedIo { io, connection }, peer);
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection's stream, registered until it is dropped.
pub(super) struct TrackedIo<T> {
    io: T,
    pub connection: Arc<Connection>,
}

impl<T: AsyncRead + Unpin> AsyncRead for TrackedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TrackedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
