//! TLS on the node's listeners with rustls: one certificate chain and key serve the Kafka, HTTP
//! and Postgres listeners, and an optional CA makes every client present a certificate it
//! signed. Kafka and HTTP connections are TLS from their first byte; Postgres clients ask for
//! it with an SSLRequest, as libpq does, and are refused when they do not. The certificate and
//! key are read again when their files change, so a renewed certificate is served without a
//! restart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Time a client has, from connecting, to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate and key files are checked for a change.
pub const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// The first byte of every TLS connection: a record of content type `handshake`.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The node's certificate chain, its own certificate first.
    pub cert: PathBuf,
    /// The private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// When set, clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// The loaded certificate and key, ready to make each listener's acceptor.
#[derive(Clone)]
pub struct Tls {
    config: Arc<ServerConfig>,
    certificate: Arc<NodeCertificate>,
}

impl Tls {
    /// Reads and checks the files; an error names the file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> Result<Tls> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS: {e}")))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(path)? {
                    roots.add(cert).map_err(|e| {
                        file_error(path, format!("not a usable CA certificate: {e}"))
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| file_error(path, format!("client CA: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certificate = Arc::new(NodeCertificate::load(files, provider)?);
        let config = builder.with_cert_resolver(certificate.clone());
        Ok(Tls {
            config: Arc::new(config),
            certificate,
        })
    }

    /// Reads the certificate and key again whenever their files change, until `shutdown`: a
    /// pair that loads is served to the next handshakes; one that does not is logged and the
    /// pair before it kept. Each is counted in `metrics`.
    pub fn reload_on_change(&self, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
        let certificate = self.certificate.clone();
        tokio::spawn(async move {
            let mut seen = certificate.stamp();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(CERTIFICATE_CHECK_INTERVAL) => {}
                    _ = shutdown.changed() => return,
                }
                let stamp = certificate.stamp();
                if stamp == seen {
                    continue;
                }
                seen = stamp;
                let loading = certificate.clone();
                let loaded = tokio::task::spawn_blocking(move || loading.reload()).await;
                match loaded {
                    Ok(Ok(())) => {
                        metrics.certificate_reloaded(true);
                        tracing::info!(cert = %certificate.files.cert.display(), "TLS certificate reloaded");
                    }
                    Ok(Err(e)) => {
                        metrics.certificate_reloaded(false);
                        tracing::error!(error = %e, "TLS certificate not reloaded; still serving the one before");
                    }
                    Err(e) => tracing::error!(error = %e, "reloading the TLS certificate failed"),
                }
            }
        });
    }

    /// An acceptor that offers `alpn` (in order of preference) to clients that ask.
    pub fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let mut config = (*self.config).clone();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// The node's certificate chain and key, as last loaded from their files.
#[derive(Debug)]
struct NodeCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl NodeCertificate {
    fn load(files: &TlsFiles, provider: Arc<CryptoProvider>) -> Result<NodeCertificate> {
        let current = RwLock::new(Arc::new(certified_key(files, &provider)?));
        Ok(NodeCertificate {
            files: files.clone(),
            provider,
            current,
        })
    }

    fn reload(&self) -> Result<()> {
        let loaded = Arc::new(certified_key(&self.files, &self.provider)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = loaded;
        Ok(())
    }

    /// When the files last changed and how long they are: what tells a renewal.
    fn stamp(&self) -> [Option<(SystemTime, u64)>; 2] {
        [&self.files.cert, &self.files.key].map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
    }
}

impl ResolvesServerCert for NodeCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// The chain and key of `files`, checked to go together.
fn certified_key(files: &TlsFiles, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        file_error(
            &files.key,
            format!("no private key read from it (PEM PKCS#8, PKCS#1 or SEC1 expected): {e}"),
        )
    })?;
    CertifiedKey::from_der(certificates(&files.cert)?, key, provider).map_err(|e| {
        file_error(
            &files.key,
            format!("does not go with {}: {e}", files.cert.display()),
        )
    })
}

/// Every certificate of a PEM file; none is an error.
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| file_error(path, format!("reading PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(
            path,
            "holds no certificate (a PEM `BEGIN CERTIFICATE` block expected)".into(),
        ));
    }
    Ok(certs)
}

fn file_error(path: &Path, reason: String) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason,
    }
}

/// A listener that speaks TLS from the first byte: Kafka or HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Kafka,
    Http,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::Kafka => "kafka",
            Listener::Http => "http",
        }
    }

    /// What a client that speaks plain text to this listener is told before it is closed.
    fn plaintext_reply(self) -> Option<String> {
        match self {
            // A Kafka client cannot be told anything before its request is understood.
            Listener::Kafka => None,
            Listener::Http => {
                let body = "This port speaks HTTPS: connect with https://\n";
                Some(format!(
                    "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n\
                     Connection: close\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ))
            }
        }
    }
}

/// Runs TLS handshakes for one listener, counting and logging those that fail.
#[derive(Clone)]
pub struct Handshakes {
    acceptor: TlsAcceptor,
    listener: Listener,
    metrics: Arc<Metrics>,
}

impl Handshakes {
    pub fn new(tls: &Tls, listener: Listener, metrics: Arc<Metrics>) -> Handshakes {
        let alpn: &[&[u8]] = match listener {
            Listener::Kafka => &[],
            Listener::Http => &[b"http/1.1"],
        };
        Handshakes {
            acceptor: tls.acceptor(alpn),
            listener,
            metrics,
        }
    }

    /// The TLS stream of a client that completes its handshake within [`HANDSHAKE_TIMEOUT`];
    /// `None` for one that does not, after logging why. A client whose first byte cannot
    /// start TLS is told so when its protocol allows and closed at once, not left waiting.
    pub async fn accept(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<TlsStream<TcpStream>> {
        let handshake = async {
            let mut first = [0u8; 1];
            let read = tcp.peek(&mut first).await.map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("the client closed the connection before a TLS handshake".into());
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                if let Some(reply) = self.listener.plaintext_reply() {
                    // Read the request first: closing with it unread would reset the
                    // connection, and the client could lose the reply.
                    let mut request = [0u8; 4096];
                    let _ = tcp.read(&mut request).await;
                    let _ = tcp.write_all(reply.as_bytes()).await;
                }
                let _ = tcp.shutdown().await;
                return Err(format!(
                    "the client spoke plain text (first byte {:#04x}) to a TLS listener; it \
                     needs TLS turned on (Kafka clients: security.protocol=SSL or SASL_SSL)",
                    first[0]
                ));
            }
            self.acceptor.accept(tcp).await.map_err(|e| e.to_string())
        };
        let outcome = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "no TLS handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            )),
        };
        match outcome {
            Ok(stream) => Some(stream),
            Err(reason) => {
                self.metrics.tls_handshake_failed(self.listener);
                tracing::info!(%peer, listener = self.listener.name(), %reason, "TLS handshake failed");
                None
            }
        }
    }

    /// An `axum` listener over `tcp` that hands on connections once their handshake is done;
    /// handshakes run concurrently, so a slow client holds up nobody else.
    pub fn listen(self, tcp: TcpListener) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (ready, incoming) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    accepted = tcp.accept() => accepted,
                    () = ready.closed() => return,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let handshakes = self.clone();
                        let ready = ready.clone();
                        tokio::spawn(async move {
                            if let Some(stream) = handshakes.accept(stream, peer).await {
                                let _ = ready.send((stream, peer)).await;
                            }
                        });
                    }
                    Err(e) => {
                        tracing::warn!(listener = self.listener.name(), error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(TlsListener { incoming, local })
    }
}

/// Connections whose TLS handshake is done, for `axum::serve`.
pub struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(connection) => connection,
            // The accepting task ends only when this listener is dropped, so this is never
            // reached while it is polled; waiting forever is the honest answer if it were.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
