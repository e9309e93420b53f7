//! The `weir` binary: parses flags and wires the crates together.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use weir_broker::serve::{ServeConfig, Server};

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "A Kafka-compatible stream broker with WASM plugins and SQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node on a data directory until SIGINT or SIGTERM.
    Serve {
        /// Where topics and metadata live.
        #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
        data_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match Cli::parse().command {
        Command::Serve { data_dir } => serve(ServeConfig { data_dir }),
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let server = Server::start(&config)
        .with_context(|| format!("opening data directory {}", config.data_dir.display()))?;
    runtime.block_on(shutdown_signal())?;
    tracing::info!("shutting down");
    server.shutdown().context("closing the data directory")
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
