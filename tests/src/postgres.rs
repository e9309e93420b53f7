//! A throwaway PostgreSQL server: `initdb` in a temporary directory, `pg_ctl` on a free port of
//! 127.0.0.1, stopped and removed when dropped.
//!
//! Postgres refuses to run as root, so when the tests run as root the server runs as the
//! `postgres` user that Debian's package creates. The binaries are found in `$WEIR_PG_BIN`, else
//! in the newest `/usr/lib/postgresql/<version>/bin`. `./scripts/test` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A running server with trust authentication for the user `weir` on 127.0.0.1.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

impl Postgres {
    /// Starts a server. Without Postgres installed: fails in CI, and elsewhere says how to get
    /// it and returns `None` so the test can pass without it.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = binaries() else {
            crate::missing(
                "PostgreSQL server binaries",
                "apt-get install postgresql, or set WEIR_PG_BIN",
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("a temp dir for Postgres");
        if is_root() {
            chown_to_postgres(dir.path());
        }
        let port = crate::cloud::free_port();
        let server = Postgres { dir, bin, port };
        server.run(
            "initdb",
            &[
                "-D",
                &server.data().to_string_lossy(),
                "-U",
                "weir",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ],
        );
        server.start_again();
        Some(server)
    }

    /// A connection string for `tokio-postgres` and `psql`.
    pub fn url(&self) -> String {
        format!("postgres://weir@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts the server after [`Postgres::stop`], on the same port and data.
    pub fn start_again(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data().to_string_lossy(),
                "-l",
                &log.to_string_lossy(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop(&self) {
        let output = self.stop_now();
        assert!(
            output.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn stop_now(&self) -> std::process::Output {
        self.command("pg_ctl")
            .args([
                "-D",
                &self.data().to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .output()
            .expect("running pg_ctl")
    }

    /// Freezes the server and every backend (SIGSTOP), as a stalled machine would be.
    pub fn pause(&self) {
        assert!(self.signal_all("-STOP"), "no server to pause");
    }

    /// Lets a paused server run on (SIGCONT).
    pub fn resume(&self) {
        assert!(self.signal_all("-CONT"), "no server to resume");
    }

    /// Signals the postmaster and its children (the backends), not other servers. False when
    /// no server is running.
    fn signal_all(&self, signal: &str) -> bool {
        let Some(pid) = std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_string))
        else {
            return false;
        };
        let _ = Command::new("pkill").args([signal, "-P", &pid]).status();
        Command::new("kill")
            .args([signal, &pid])
            .status()
            .is_ok_and(|s| s.success())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The command for a server binary, as the `postgres` user when this process is root.
    fn command(&self, tool: &str) -> Command {
        let program = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let output = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {tool}: {e}"));
        assert!(
            output.status.success(),
            "{tool} {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A test that failed while the server was paused must not leave it frozen.
        self.signal_all("-CONT");
        self.stop_now();
    }
}

fn binaries() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("WEIR_PG_BIN") {
        return Some(PathBuf::from(bin));
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn chown_to_postgres(dir: &Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(dir)
        .status()
        .expect("running chown");
    assert!(status.success(), "chown postgres {}", dir.display());
}
