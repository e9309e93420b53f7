//! A Weir node a benchmark starts: the release binary on free loopback ports with a fresh data
//! directory, stopped when dropped.

#![allow(dead_code)] // each benchmark uses its own part of it

use std::path::Path;
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};

use crate::ports::{free_port, wait_for_port};

pub struct Node {
    pub child: Child,
    /// The Kafka listener, `127.0.0.1:<port>`.
    pub kafka: String,
    /// The HTTP listener, `http://127.0.0.1:<port>`.
    pub http: String,
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// Starts `binary serve` on free ports and a fresh data directory, with `extra` flags.
    pub fn start(binary: &Path, extra: &[&str]) -> anyhow::Result<Node> {
        let dir = tempfile::tempdir_in("target")?;
        let (kafka, http) = (free_port()?, free_port()?);
        let child = Command::new(binary)
            .args(["serve", "--kafka", &format!("127.0.0.1:{kafka}")])
            .args(["--http", &format!("127.0.0.1:{http}"), "--pg", "off"])
            .args(extra)
            .arg("--data-dir")
            .arg(dir.path())
            .env("WEIR_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (cargo build --release --bin weir)",
                    binary.display()
                )
            })?;
        wait_for_port(kafka)?;
        wait_for_port(http)?;
        Ok(Node {
            child,
            kafka: format!("127.0.0.1:{kafka}"),
            http: format!("http://127.0.0.1:{http}"),
            _dir: dir,
        })
    }

    /// Calls the HTTP API with a JSON body; its error when it answers one.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.http);
        let out = Command::new("curl")
            .args([
                "-sS",
                "-X",
                method,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ])
            .arg(&url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child
                    .stdin
                    .take()
                    .map(|mut stdin| stdin.write_all(body.to_string().as_bytes()))
                    .transpose()?;
                child.wait_with_output()
            })
            .context("running curl")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{url}: {text}"))?;
        if let Some(error) = value.get("error") {
            bail!("{url}: {error}");
        }
        Ok(value)
    }

    /// The rows of a SQL statement.
    pub fn sql(&self, statement: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let answer = self.call("POST", "/v1/sql", serde_json::json!({ "sql": statement }))?;
        Ok(answer["rows"].as_array().cloned().unwrap_or_default())
    }

    /// The input count, lag and watermark of the node's one pipeline.
    pub fn pipeline(&self) -> anyhow::Result<serde_json::Value> {
        let rows = self.sql("SELECT records_in, lag, watermark_ms FROM weir.pipelines")?;
        rows.into_iter().next().context("no pipeline")
    }
}
