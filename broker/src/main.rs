//! The `weir` binary: parses flags and wires the crates together.

use std::io::IsTerminal;
use std::net::SocketAddr;
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
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Where topics and metadata live.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    data_dir: PathBuf,
    /// Address of the Kafka protocol listener (port 0: any free port).
    #[arg(long, env = "WEIR_KAFKA", default_value = "127.0.0.1:9092")]
    kafka: SocketAddr,
    /// Host name clients are told to connect to; defaults to the listener's address.
    #[arg(long, env = "WEIR_ADVERTISED_HOST")]
    advertised_host: Option<String>,
    /// Create unknown topics when a client first uses them.
    #[arg(long, env = "WEIR_AUTO_CREATE_TOPICS", default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// Partitions of a topic created without a count.
    #[arg(long, env = "WEIR_DEFAULT_PARTITIONS", default_value_t = 1)]
    default_partitions: u32,
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
        Command::Serve(args) => serve(ServeConfig {
            data_dir: args.data_dir,
            kafka: args.kafka,
            advertised_host: args.advertised_host,
            auto_create_topics: args.auto_create_topics,
            default_partitions: args.default_partitions,
        }),
    }
}

fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let server = Server::start(&config).await?;
        shutdown_signal().await?;
        tracing::info!("shutting down");
        server.shutdown().await
    })
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
