//! Throwaway servers of the cloud object stores a cluster keeps its data in, each on a free port
//! of 127.0.0.1 with one bucket (or container) named [`BUCKET`], holding it in memory (Azurite in a temporary directory), stopped
//! when dropped:
//!
//! - S3: moto's server ([`crate::s3::S3Server`]);
//! - Google Cloud Storage: the same server, answering Google's XML API ([`crate::s3::GcsServer`]);
//! - Azure Blob Storage: Azurite ([`AzureServer`]), Microsoft's own emulator, from npm.
//!
//! `./scripts/test` installs both. Each speaks its store's REST API (ranged reads,
//! listings, deletes), which is all a cluster's object store uses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, KeyInit, Mac};

/// The bucket (or container) every server starts with.
pub const BUCKET: &str = "weir";

/// A store server a cluster's nodes can be pointed at.
pub trait CloudStore {
    /// The store URL of the bucket under `prefix`.
    fn url(&self, prefix: &str) -> String;
    /// The store options that reach this server.
    fn options(&self) -> Vec<(String, String)>;
    /// Keys of the objects in the bucket under `prefix`, as the server lists them.
    fn keys(&self, prefix: &str) -> Vec<String>;
}

/// A free port of 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A server process, killed when dropped.
pub(crate) struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `program` with `args`, its output dropped.
pub(crate) fn spawn(program: &PathBuf, args: &[&str]) -> Process {
    let child = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
    Process(child)
}

/// Asks `make` again until its answer starts with `ok` (a status line), for at most a minute:
/// the server is starting.
pub(crate) fn ready(what: &str, mut make: impl FnMut() -> std::io::Result<String>, ok: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match make() {
            Ok(answer) if answer.starts_with(ok) => return,
            answer => assert!(
                Instant::now() < deadline,
                "{what} did not make the bucket: {answer:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends one HTTP/1.1 request (`head` is the request line and any headers, without the blank
/// line) with `body`, and returns the whole answer.
pub(crate) fn request(port: u16, head: &str, body: &[u8]) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "{head}\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// The texts between each `<tag>` and `</tag>` of `xml`.
pub(crate) fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|part| part.split(close.as_str()).next())
        .map(str::to_string)
        .collect()
}

/// A program beside the client tests' Python (`$WEIR_PYTHON`, else `target/py/bin/python`).
pub(crate) fn beside_python(name: &str) -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python")
        });
    python.with_file_name(name)
}

/// Azurite's account and its published key: every Azurite has them.
const AZURITE_ACCOUNT: &str = "devstoreaccount1";
const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// The storage API version the requests of the harness speak.
const AZURE_API_VERSION: &str = "2021-08-06";

/// A running Azurite (its Blob service) with the container [`BUCKET`].
pub struct AzureServer {
    _process: Process,
    port: u16,
    _workspace: tempfile::TempDir,
}

impl AzureServer {
    /// Starts a server and makes its container. Without it installed: fails in CI, and
    /// elsewhere says how to get it and returns `None`.
    pub fn start() -> Option<AzureServer> {
        let modules = std::env::var_os("WEIR_NODE_MODULES")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/node/node_modules")
            });
        let program = modules.join(".bin/azurite-blob");
        if !program.exists() {
            crate::missing(&program.display().to_string(), "npm install azurite");
            return None;
        }
        let workspace = tempfile::tempdir().expect("a workspace");
        let port = free_port();
        let port_arg = port.to_string();
        let location = workspace.path().display().to_string();
        let process = spawn(
            &program,
            &[
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port_arg,
                "--location",
                &location,
                "--disableTelemetry",
                "--skipApiVersionCheck",
                "--silent",
            ],
        );
        let server = AzureServer {
            _process: process,
            port,
            _workspace: workspace,
        };
        let make = || server.signed("PUT", &[("restype", "container")]);
        ready("Azurite", make, "HTTP/1.1 201");
        Some(server)
    }

    /// Sends a request on the container, with `query`, signed with the account's shared key.
    fn signed(&self, method: &str, query: &[(&str, &str)]) -> std::io::Result<String> {
        let date = httpdate::fmt_http_date(SystemTime::now());
        let path = format!("/{AZURITE_ACCOUNT}/{BUCKET}");
        let mut sorted = query.to_vec();
        sorted.sort();
        let resource: String = sorted.iter().map(|(k, v)| format!("\n{k}:{v}")).collect();
        let to_sign = format!(
            "{method}\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{AZURE_API_VERSION}\n\
             /{AZURITE_ACCOUNT}{path}{resource}"
        );
        let key = BASE64.decode(AZURITE_KEY).expect("the key is base64");
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
        mac.update(to_sign.as_bytes());
        let signature = BASE64.encode(mac.finalize().into_bytes());
        let query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let head = format!(
            "{method} {path}?{} HTTP/1.1\r\nx-ms-date: {date}\r\nx-ms-version: {AZURE_API_VERSION}\r\n\
             Authorization: SharedKey {AZURITE_ACCOUNT}:{signature}",
            query.join("&")
        );
        request(self.port, &head, b"")
    }
}

impl CloudStore for AzureServer {
    fn url(&self, prefix: &str) -> String {
        format!("az://{BUCKET}/{prefix}")
    }

    fn options(&self) -> Vec<(String, String)> {
        [
            ("azure_storage_account_name", AZURITE_ACCOUNT.to_string()),
            ("azure_storage_account_key", AZURITE_KEY.to_string()),
            (
                "azure_storage_endpoint",
                format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port),
            ),
            ("azure_allow_http", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        let query = [
            ("comp", "list"),
            ("prefix", prefix),
            ("restype", "container"),
        ];
        let listing = self.signed("GET", &query).expect("a listing");
        assert!(listing.starts_with("HTTP/1.1 200"), "{listing}");
        elements(&listing, "Name")
    }
}
