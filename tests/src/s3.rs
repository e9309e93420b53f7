//! Throwaway servers of moto (from PyPI) on a free port of 127.0.0.1, holding their buckets in
//! memory, stopped when dropped:
//!
//! - [`S3Server`]: moto's own server (`moto_server`), speaking S3's REST API (signed requests,
//!   ranged GETs, listing, deletes), which is all a cluster's object store uses;
//! - [`GcsServer`]: the same server answering Google Cloud Storage's XML API, which is S3's with
//!   an OAuth bearer token in place of AWS's signature.
//!
//! `./scripts/test` installs moto into the Python environment of the client tests
//! (`$WEIR_PYTHON`'s directory, else `target/py/bin`).

use crate::cloud::{
    BUCKET, CloudStore, Process, beside_python, elements, free_port, ready, request, spawn,
};

/// A running server with the bucket [`BUCKET`].
pub struct S3Server {
    _process: Process,
    port: u16,
}

/// moto's server, as `moto_server` builds it, behind one step: a request with no token (the
/// GCS client, with OAuth turned off, sends an empty one or none) is given a placeholder, since
/// moto reads every `Authorization` header as AWS's, fails on one of a single word and refuses
/// to read an object without one. moto checks no signature or token.
const GCS_SERVER: &str = "
import sys
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

app = DomainDispatcherApplication(create_backend_app)

def with_token(environ, start_response):
    if environ.get('HTTP_AUTHORIZATION', '').strip() in ('', 'Bearer'):
        environ['HTTP_AUTHORIZATION'] = 'Bearer emulator'
    return app(environ, start_response)

run_simple('127.0.0.1', int(sys.argv[1]), with_token, threaded=True)
";

impl S3Server {
    /// Starts a server and makes its bucket. Without moto installed: fails in CI, and
    /// elsewhere says how to get it and returns `None` so the test can pass without it.
    pub fn start() -> Option<S3Server> {
        S3Server::start_with(|port| {
            spawn(
                &beside_python("moto_server"),
                &["-H", "127.0.0.1", "-p", &port.to_string()],
            )
        })
    }

    /// Starts the server `run` spawns on the port it is given, and makes its bucket.
    fn start_with(run: impl FnOnce(u16) -> Process) -> Option<S3Server> {
        let program = beside_python("moto_server");
        if !program.exists() {
            crate::missing(
                &program.display().to_string(),
                "pip install 'moto[s3,server]'",
            );
            return None;
        }
        let port = free_port();
        let server = S3Server {
            _process: run(port),
            port,
        };
        // The bucket is made by an unsigned request, which moto accepts.
        let make = || request(port, &format!("PUT /{BUCKET} HTTP/1.1"), b"");
        ready("moto_server", make, "HTTP/1.1 200");
        Some(server)
    }
}

impl CloudStore for S3Server {
    fn url(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Any credentials do.
    fn options(&self) -> Vec<(String, String)> {
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

    fn keys(&self, prefix: &str) -> Vec<String> {
        let line = format!("GET /{BUCKET}?list-type=2&max-keys=10000&prefix={prefix} HTTP/1.1");
        elements(&request(self.port, &line, b"").expect("a listing"), "Key")
    }
}

/// A running server with the bucket [`BUCKET`], reached as Google Cloud Storage.
pub struct GcsServer(S3Server);

impl GcsServer {
    /// Starts a server and makes its bucket; without moto, as [`S3Server::start`].
    pub fn start() -> Option<GcsServer> {
        let server = S3Server::start_with(|port| {
            spawn(
                &beside_python("python"),
                &["-c", GCS_SERVER, &port.to_string()],
            )
        })?;
        Some(GcsServer(server))
    }
}

impl CloudStore for GcsServer {
    fn url(&self, prefix: &str) -> String {
        format!("gs://{BUCKET}/{prefix}")
    }

    /// A service account key that turns OAuth off: the client sends an empty bearer token.
    fn options(&self) -> Vec<(String, String)> {
        let key = r#"{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": ""}"#;
        [
            (
                "google_base_url",
                format!("http://127.0.0.1:{}", self.0.port),
            ),
            ("google_allow_http", "true".to_string()),
            ("google_service_account_key", key.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        self.0.keys(prefix)
    }
}
