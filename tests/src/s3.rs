//! A throwaway S3-compatible server: moto's server (`moto_server`, from PyPI) on a free port of
//! 127.0.0.1, holding its buckets in memory, stopped when dropped.
//!
//! `./scripts/test` installs it into the Python environment of the client tests
//! (`$WEIR_PYTHON`'s directory, else `target/py/bin`). It speaks S3's REST API (signed
//! requests, ranged GETs, listing, deletes), which is all a cluster's object store uses.

use crate::cloud::{
    BUCKET, CloudStore, Process, beside_python, elements, free_port, ready, request, spawn,
};

/// A running server with the bucket [`BUCKET`].
pub struct S3Server {
    _process: Process,
    port: u16,
}

impl S3Server {
    /// Starts a server and makes its bucket. Without moto installed: fails in CI, and
    /// elsewhere says how to get it and returns `None` so the test can pass without it.
    pub fn start() -> Option<S3Server> {
        let program = beside_python("moto_server");
        if !program.exists() {
            crate::missing(
                &program.display().to_string(),
                "pip install 'moto[s3,server]'",
            );
            return None;
        }
        let port = free_port();
        let process = spawn(&program, &["-H", "127.0.0.1", "-p", &port.to_string()]);
        let server = S3Server {
            _process: process,
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
