//! The Kafka protocol listener.
//!
//! Each connection reads size-prefixed frames, decodes the request header and body with the
//! `kafka-protocol` crate, and answers in request order. A frame larger than
//! `request_bytes_max` is refused before its body is read; the body is read as it arrives,
//! holding the node's request memory ([`Limits`]) for the bytes received, and is walked against
//! the request's layout ([`shape`]) before it is decoded. A frame that does not decode closes
//! that connection with a log line and leaves every other connection alone. With TLS on, a
//! connection's handshake runs first, inside its share of the connection limit.

mod acl_api;
mod admin_api;
pub mod appends;
mod frame;
mod group_api;
pub mod groups;
mod handlers;
pub(crate) mod logs;
mod sasl_api;
pub mod shape;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use weir_storage::Storage;

use crate::error::{Error, Result, io};
use crate::limits::{Limits, RequestMemory};
use crate::metrics::Protocol;
use crate::tls::{self, Handshakes};
use frame::{Frame, FrameBuf, Sink};
use sasl_api::Session;

/// A connection's reason to close: what the client sent that cannot be read.
fn protocol(reason: impl Into<String>) -> Error {
    Error::Protocol(reason.into())
}

pub(crate) use handlers::record_count;
pub use handlers::supported_versions;

/// Time any frame body may take to arrive, on top of its size at the slowest rate accepted.
const FRAME_READ_TIMEOUT_BASE: Duration = Duration::from_secs(30);
/// Slowest rate a frame body may arrive at: 1 MiB/s.
const FRAME_READ_BYTES_PER_S_MIN: u64 = 1 << 20;
/// Bytes the frame buffer grows by at a time.
const FRAME_CHUNK_BYTES: usize = 64 * 1024;
/// How long a client of a SASL listener has, from connecting, to authenticate: a connection
/// that has not by then is closed, so clients that never sign in cannot hold the node's
/// connection slots.
const AUTHENTICATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Who may use the Kafka listener.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaAuth {
    /// Anyone who reaches the port.
    #[default]
    None,
    /// Users who authenticate with SASL first.
    Sasl,
}

/// Settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Host and port clients are told to connect to (Metadata).
    pub advertised: (String, u16),
    /// Create a topic on first use (Metadata or Produce), as Kafka's `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// Whether clients authenticate first.
    pub auth: KafkaAuth,
    /// Users who pass every ACL check.
    pub super_users: Vec<String>,
    /// Partitions of an auto-created topic.
    pub default_partitions: u32,
    /// `socket.request.max.bytes`: largest request frame accepted.
    pub request_bytes_max: u32,
}

/// What every connection shares.
pub(crate) struct Shared {
    storage: Arc<Storage>,
    /// The partitions the data path reads and writes.
    logs: Arc<dyn logs::Logs>,
    config: KafkaConfig,
    /// Wakes long-polling fetches when a partition they wait on gets new readable records.
    appends: Arc<appends::Appends>,
    groups: Arc<groups::Coordinator>,
    metrics: Arc<crate::metrics::Metrics>,
    limits: Arc<Limits>,
    users: Arc<crate::sasl::Users>,
    acls: Arc<crate::acl::Acls>,
}

/// Accepts connections until `shutdown` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    node: crate::node::NodeContext,
    config: KafkaConfig,
    tls: Option<crate::tls::Tls>,
    mut shutdown: watch::Receiver<bool>,
) {
    let crate::node::NodeContext {
        storage,
        logs,
        groups,
        metrics,
        limits,
        appends,
        users,
        acls,
        ..
    } = node;
    let handshakes = tls.map(|tls| Handshakes::new(&tls, tls::Listener::Kafka, metrics.clone()));
    let shared = Arc::new(Shared {
        storage,
        logs,
        config,
        appends,
        groups,
        metrics,
        limits,
        users,
        acls,
    });
    let ticker = shared.clone();
    let mut tick_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(std::time::Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = interval.tick() => ticker.groups.tick(std::time::Instant::now()),
                _ = tick_shutdown.changed() => return,
            }
        }
    });
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if shared.metrics.connections(Protocol::Kafka) >= i64::from(shared.limits.connections_max()) {
                        shared.metrics.connection_refused();
                        tracing::debug!(%peer, connections_max = shared.limits.connections_max(), "connection refused: the node holds its limit of connections");
                        drop(stream);
                        continue;
                    }
                    let shared = shared.clone();
                    let shutdown = shutdown.clone();
                    let handshakes = handshakes.clone();
                    tokio::spawn(async move {
                        let open = shared.metrics.connection(Protocol::Kafka, peer);
                        let id = open.id();
                        stream.set_nodelay(true).ok();
                        let served = match handshakes {
                            None => connection(stream, peer, id, shared.clone(), shutdown).await,
                            Some(handshakes) => match handshakes.accept(stream, peer).await {
                                Some(stream) => connection(stream, peer, id, shared.clone(), shutdown).await,
                                None => Ok(()),
                            },
                        };
                        if let Err(e) = served {
                            tracing::info!(%peer, error = %format!("{e:#}"), "closing Kafka connection");
                        }
                        drop(open);
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a Kafka connection failed"),
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    mut stream: impl AsyncRead + Sink,
    peer: SocketAddr,
    id: u64,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    tracing::debug!(%peer, "Kafka connection opened");
    let mut session = Session::default();
    let authenticate_by = tokio::time::Instant::now() + AUTHENTICATION_TIMEOUT;
    loop {
        let mut size = [0u8; 4];
        let unauthenticated = shared.config.auth == KafkaAuth::Sasl && session.user.is_none();
        let deadline = async {
            if unauthenticated {
                tokio::time::sleep_until(authenticate_by).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            read = stream.read_exact(&mut size) => match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(io("reading a request size")(e)),
            },
            () = deadline => {
                shared.metrics.authentication_timed_out();
                return Err(protocol(format!(
                    "not authenticated within {} s of connecting",
                    AUTHENTICATION_TIMEOUT.as_secs()
                )));
            }
            _ = shutdown.changed() => return Ok(()),
        }
        let size = i32::from_be_bytes(size);
        if size < 0 || size as u32 > shared.config.request_bytes_max {
            return Err(protocol(format!(
                "request frame of {size} bytes refused: the limit (socket.request.max.bytes) is {} bytes",
                shared.config.request_bytes_max
            )));
        }
        let (frame, memory) = read_frame(&mut stream, size as u32, &shared.limits).await?;
        let Some(response) = handle_frame(frame, &shared, &mut session, peer, id).await? else {
            continue;
        };
        if session.failed.is_some() {
            tokio::time::sleep(crate::sasl::FAILED_AUTHENTICATION_DELAY).await;
        }
        let from_files = response
            .write_to(&mut stream)
            .await
            .map_err(io("writing a response"))?;
        shared.metrics.fetch_sent_from_files(from_files);
        drop(memory);
        if let Some(reason) = session.failed.take() {
            return Err(protocol(format!("SASL authentication failed: {reason}")));
        }
    }
}

/// Reads a frame body of `size` bytes. The frame's share of request memory is held first, all
/// of it, so two half-read frames never wait on each other; the buffer then grows with the
/// bytes that arrive. A client must send the body within [`frame_read_timeout`], or a
/// client that stalls inside a frame would hold request memory for good.
async fn read_frame(
    stream: &mut (impl AsyncRead + Unpin),
    size: u32,
    limits: &Limits,
) -> Result<(Bytes, RequestMemory)> {
    let mut memory = RequestMemory::none();
    limits.hold_request_memory(&mut memory, size).await;
    let mut frame = BytesMut::new();
    let timeout = frame_read_timeout(size);
    let read = async {
        while frame.len() < size as usize {
            let want = (size as usize - frame.len()).min(FRAME_CHUNK_BYTES) as u64;
            frame.reserve(want as usize);
            let read = (&mut *stream).take(want).read_buf(&mut frame).await;
            if read.map_err(io("reading a request frame"))? == 0 {
                return Err(protocol(format!(
                    "connection closed inside a request frame, at byte {} of {size}",
                    frame.len()
                )));
            }
        }
        Ok(())
    };
    tokio::time::timeout(timeout, read).await.map_err(|_| {
        protocol(format!(
            "request frame of {size} bytes not received within {} s",
            timeout.as_secs()
        ))
    })??;
    Ok((frame.freeze(), memory))
}

/// Time a frame body of `size` bytes may take to arrive: [`FRAME_READ_TIMEOUT_BASE`] plus the
/// time at [`FRAME_READ_BYTES_PER_S_MIN`].
fn frame_read_timeout(size: u32) -> Duration {
    FRAME_READ_TIMEOUT_BASE + Duration::from_secs(u64::from(size) / FRAME_READ_BYTES_PER_S_MIN)
}

/// Decodes one request frame and returns the whole response frame, or `None` for a produce
/// with `acks=0`, which gets no answer.
async fn handle_frame(
    mut frame: Bytes,
    shared: &Arc<Shared>,
    session: &mut Session,
    peer: SocketAddr,
    connection_id: u64,
) -> Result<Option<Frame>> {
    if frame.len() < 4 {
        return Err(protocol(format!(
            "request frame of {} bytes is too short for a header",
            frame.len()
        )));
    }
    let api_key = i16::from_be_bytes([frame[0], frame[1]]);
    let api_version = i16::from_be_bytes([frame[2], frame[3]]);
    let key =
        ApiKey::try_from(api_key).map_err(|()| protocol(format!("unknown API key {api_key}")))?;
    let supported = supported_versions(key);
    let in_range = supported.is_some_and(|(min, max)| (min..=max).contains(&api_version));
    if !in_range && key != ApiKey::ApiVersions {
        return Err(protocol(format!(
            "{key:?} version {api_version} is not supported"
        )));
    }
    // An ApiVersions request newer than ours is answered in v0 with UNSUPPORTED_VERSION, so the
    // client can retry with a version we know; its header is read as v1, which every version
    // starts with.
    let header_version = if in_range {
        key.request_header_version(api_version)
    } else {
        1
    };
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| protocol(format!("{key:?} v{api_version}: bad request header: {e:#}")))?;
    shared
        .metrics
        .connection_request(connection_id, header.client_id.as_deref());
    let (request, version) = if in_range {
        shape::check(key, api_version, &frame).map_err(|e| {
            protocol(format!(
                "{key:?} v{api_version}: malformed request body: {e}"
            ))
        })?;
        let request = RequestKind::decode(key, &mut frame, api_version)
            .map_err(|e| protocol(format!("{key:?} v{api_version}: bad request body: {e:#}")))?;
        (Some(request), api_version)
    } else {
        (None, 0)
    };
    let started = std::time::Instant::now();
    let handled = match request {
        Some(RequestKind::SaslHandshake(r)) => Ok(Some(
            ResponseKind::SaslHandshake(session.handshake(shared.config.auth, &r, version)).into(),
        )),
        Some(RequestKind::SaslAuthenticate(r)) => session
            .authenticate(shared, r, peer)
            .await
            .map(|r| Some(ResponseKind::SaslAuthenticate(r).into())),
        request => {
            session.admit(shared.config.auth, key)?;
            let caller = session.caller(shared, peer);
            match request {
                Some(RequestKind::DescribeUserScramCredentials(r)) => {
                    sasl_api::describe_credentials(shared, &caller, r)
                        .await
                        .map(|r| Some(ResponseKind::DescribeUserScramCredentials(r).into()))
                }
                Some(RequestKind::AlterUserScramCredentials(r)) => {
                    sasl_api::alter_credentials(shared, &caller, r)
                        .await
                        .map(|r| Some(ResponseKind::AlterUserScramCredentials(r).into()))
                }
                request => handlers::handle(shared, request, &header, peer, caller).await,
            }
        }
    };
    shared
        .metrics
        .request(&format!("{key:?}"), started.elapsed());
    let Some(answer) = handled? else {
        return Ok(None);
    };
    let mut response_header = ResponseHeader::default();
    response_header.correlation_id = header.correlation_id;
    let header_version = key.response_header_version(version);
    // Sized up front: a fetch response may copy megabytes, and growing the buffer would copy
    // them again at every doubling.
    let mut out = FrameBuf::new(answer.copied_bytes_hint());
    for part in answer.lent {
        out.lend(part);
    }
    let encoding = |e| protocol(format!("{key:?} v{version}: response: {e:#}"));
    response_header
        .encode(&mut out, header_version)
        .map_err(encoding)?;
    match &answer.kind {
        ResponseKind::Fetch(fetch) => fetch.encode(&mut out, version),
        // The crate encodes the other kinds into a `BytesMut` only; they lend nothing.
        kind => kind.encode(out.copying(), version),
    }
    .map_err(encoding)?;
    Ok(Some(out.finish()))
}
