//! A throwaway S3-compatible server: moto's server (`moto_server`, from PyPI) on a free port of
//! 127.0.0.1, holding its buckets in memory, stopped when dropped.
//!
//! `./scripts/test` installs it into the Python environment of the client tests
//! (`$WEIR_PYTHON`'s directory, else `target/py/bin`). It speaks S3's REST API (signed
//! requests, ranged GETs, listing, deletes), which is all a cluster's object store uses.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket every server starts with.
pub const BUCKET: &str = "weir";

/// A running server with the bucket [`BUCKET`].
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts a server and makes its bucket. Without moto installed: fails in CI, and
    /// elsewhere says how to get it and returns `None` so the test can pass without it.
    pub fn start() -> Option<S3Server> {
        let program = program();
        if !program.exists() {
            crate::missing(
                &program.display().to_string(),
                "pip install 'moto[s3,server]'",
            );
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        let server = S3Server { child, port };
        let deadline = Instant::now() + Duration::from_secs(60);
        // The bucket is made by an unsigned request, which moto accepts.
        loop {
            match server.request(&format!("PUT /{BUCKET} HTTP/1.1")) {
                Ok(status) if status.contains(" 200") => break,
                answer => assert!(
                    Instant::now() < deadline,
                    "moto_server on port {port} did not make the bucket: {answer:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Some(server)
    }

    /// The store URL of the bucket under `prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// The store options that reach this server (any credentials do).
    pub fn options(&self) -> Vec<(String, String)> {
        [
            ("aws_endpoint", format!("http://127.0.0.1:{}", self.port)),
            ("aws_allow_http", "true".to_string()),
            ("aws_region", "us-east-1".to_string()),
            ("aws_access_key_id", "weir".to_string()),
            ("aws_secret_access_key", "weir-secret".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Keys of the objects in the bucket under `prefix`.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let listing = self
            .request(&format!(
                "GET /{BUCKET}?list-type=2&max-keys=10000&prefix={prefix} HTTP/1.1"
            ))
            .expect("a listing");
        listing
            .split("<Key>")
            .skip(1)
            .filter_map(|part| part.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Sends one request line with no body and returns the whole answer.
    fn request(&self, line: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{line}\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `moto_server` beside the client tests' Python.
fn program() -> PathBuf {
    let python = std::env::var_os("WEIR_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/py/bin/python")
        });
    python.with_file_name("moto_server")
}
