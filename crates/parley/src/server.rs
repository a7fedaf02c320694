//! `parley server [PORT]`: binds, serves until Ctrl-C or SIGTERM, tells every client the server
//! is shutting down, and exits 0.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use parley_server::{Config, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

/// The port the earlier tools' users will try first.
pub const DEFAULT_PORT: u16 = 12300;

#[derive(clap::Args)]
pub struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(value_name = "PORT")]
    port: Option<u16>,
    /// Port to listen on; the same as the PORT argument.
    #[arg(
        long = "port",
        id = "port_option",
        value_name = "PORT",
        conflicts_with = "port"
    )]
    port_option: Option<u16>,
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Most connections held at once.
    #[arg(long, default_value_t = Config::default().max_connections, value_name = "N")]
    max_connections: usize,
    /// The folder to share (created if missing).
    #[arg(
        long,
        env = "SERVER_SHARED_FILES",
        default_value = "SharedFiles",
        value_name = "DIR"
    )]
    shared_dir: PathBuf,
    /// Seconds of silence (N) after which a client is pinged; it is dropped after 3N+1 seconds.
    #[arg(long, default_value_t = 3, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let port = args.port.or(args.port_option).unwrap_or(DEFAULT_PORT);
    let listener = TcpListener::bind((args.host.as_str(), port))
        .await
        .with_context(|| format!("cannot listen on {}:{port}", args.host))?;
    let address = listener.local_addr()?;
    println!("Parley server listening on {address} (Ctrl-C stops it)");

    let keepalive = Duration::from_secs(args.keepalive);
    let config = Config {
        max_connections: args.max_connections,
        keepalive_interval: keepalive,
        keepalive_timeout: keepalive * 3 + Duration::from_secs(1),
        shared_dir: args.shared_dir,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    serve(listener, config, shutdown).await?;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Cancels `shutdown` on Ctrl-C (SIGINT) or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    info!("shutting down: telling every client");
    shutdown.cancel();
}
