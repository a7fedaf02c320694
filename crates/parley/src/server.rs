//! `parley server [PORT]`: binds, serves until Ctrl-C or SIGTERM, tells every client the server
//! is shutting down, and exits 0.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use parley_server::{Config, FloodLimit, IpNet, TlsMode, parse_networks, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
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
    /// Most connections held at once from one address (IPv6: one /64); 0: no limit.
    #[arg(long, default_value_t = Config::default().max_connections_per_address, value_name = "N")]
    max_connections_per_address: usize,
    /// Most new connections one address may open a minute (a burst of N, then one every
    /// 60/N s); 0: no limit.
    #[arg(long, default_value_t = Config::default().max_new_connections_per_minute, value_name = "N")]
    max_new_connections_per_minute: u32,
    /// Networks the per-address limits do not apply to, CIDR[,CIDR...]; '' or none: no
    /// exemptions.
    #[arg(long, default_value = "127.0.0.0/8,::1", value_name = "CIDR,...", value_parser = parse_exempt)]
    limit_exempt: Exempt,
    /// The folder to share (created if missing).
    #[arg(
        long,
        env = "SERVER_SHARED_FILES",
        default_value = "SharedFiles",
        value_name = "DIR"
    )]
    shared_dir: PathBuf,
    /// Largest upload accepted: bytes, or with a unit (K, M, G, T; powers of 1024).
    #[arg(long, default_value = "4G", value_name = "SIZE", value_parser = parse_size)]
    max_upload: u64,
    /// Free disk space uploads may not eat into.
    #[arg(long, default_value = "1G", value_name = "SIZE", value_parser = parse_size)]
    disk_reserve: u64,
    /// Seconds an upload may go without progress (16 KiB, or its end) before it is cancelled
    /// and the disk space it was promised given back.
    #[arg(long, default_value_t = 30, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    upload_idle_timeout: u64,
    /// Disk space the uploads in progress of one connection may hold promised at once.
    #[arg(long, default_value = "8G", value_name = "SIZE", value_parser = parse_size)]
    max_reserved_per_connection: u64,
    /// Disk space the uploads in progress from one address (IPv6: one /64) may hold promised
    /// at once.
    #[arg(long, default_value = "16G", value_name = "SIZE", value_parser = parse_size)]
    max_reserved_per_address: u64,
    /// Where the server keeps its data (the message database), created if missing.
    #[arg(long, default_value = "parley-data", value_name = "DIR")]
    data_dir: PathBuf,
    /// How many of a room's last messages a client is shown on entering it.
    #[arg(long, default_value_t = 50, value_name = "N")]
    backlog: usize,
    /// Plain TCP instead of TLS: messages and passwords cross the network in clear.
    #[arg(long, env = "PARLEY_NO_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    no_tls: bool,
    /// Serve this certificate chain (PEM) instead of a self-signed one; needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Do not store room messages (no backlog, history or search); private messages to
    /// registered users who are offline are still kept until delivered.
    #[arg(long)]
    no_history: bool,
    /// Accept registered names only: no guests.
    #[arg(long)]
    require_account: bool,
    /// Accept uploads whose names start with '.' (hidden files).
    #[arg(long)]
    allow_hidden_uploads: bool,
    /// Seconds of silence (N) after which a client is pinged; it is dropped after 3N+1 seconds.
    #[arg(long, default_value_t = 3, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    keepalive: u64,
    /// Bytes waiting to be sent to all clients together, at most: past it, those furthest
    /// behind (over 256 KiB) are cut off as too slow.
    #[arg(long, default_value = "512M", value_name = "SIZE", value_parser = parse_size)]
    max_queued_total: u64,
    /// Private messages kept for one offline registered user, at most (one sender: a
    /// quarter); past it senders get `mailbox_full`.
    #[arg(long, default_value_t = Config::default().mailbox_max as u64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    mailbox_max: u64,
    /// Bytes of text kept for one offline registered user, at most (one sender: a quarter).
    #[arg(long, default_value = "4M", value_name = "SIZE", value_parser = parse_size)]
    mailbox_max_bytes: u64,
    /// Requests a second one client may make once its burst is spent; more are delayed, and
    /// a client that keeps on is disconnected. 0 turns flood control off.
    #[arg(long, env = "PARLEY_FLOOD_RATE", default_value_t = FloodLimit::default().rate, value_name = "N", value_parser = parse_rate)]
    flood_rate: f64,
    /// Requests one client may make at once, after a quiet spell, before --flood-rate holds.
    #[arg(long, default_value_t = FloodLimit::default().burst, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    flood_burst: u32,
}

/// Log lines waiting for stdout, at most; past them, lines are dropped (and counted).
const LOG_QUEUE_LINES: usize = 16_384;

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Log lines reach stdout from a thread of their own, through a bounded queue. Whoever runs
    // the server may stop reading its output (a paused pager, a stalled pipe), and writing to
    // a full pipe would stop the thread that logged, the accept loop's included: everyone
    // would wait for the log. Dropping lines is the lesser harm. Flushed when `_flushed` drops.
    let (log, _flushed) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .thread_name("parley-log")
        .finish(std::io::stdout());
    let dropped = log.error_counter();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .with_writer(log)
        .init();
    raise_file_limit();
    let port = args.port.or(args.port_option).unwrap_or(DEFAULT_PORT);
    let listener = listen(&args.host, port)
        .await
        .with_context(|| format!("cannot listen on {}:{port}", args.host))?;
    let address = listener.local_addr()?;
    println!("Parley server listening on {address} (Ctrl-C stops it)");
    let scheme = if args.no_tls { "http" } else { "https" };
    // Listening on every interface: the page is at any of the machine's addresses.
    let shown = match address.ip().is_unspecified() {
        true => format!(
            "{scheme}://localhost:{}/ (or this machine's address)",
            address.port()
        ),
        false => format!("{scheme}://{address}/"),
    };
    println!("Browsers: {shown}");
    // The runtime's own count: threads named `tokio-rt-worker` in /proc include the blocking
    // pool's, and a thread just spawned carries its parent's name until it sets its own.
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    info!("running {workers} worker threads (TOKIO_WORKER_THREADS to change)");

    let keepalive = Duration::from_secs(args.keepalive);
    let config = Config {
        max_connections: args.max_connections,
        max_connections_per_address: args.max_connections_per_address,
        max_new_connections_per_minute: args.max_new_connections_per_minute,
        limit_exempt: args.limit_exempt.0,
        keepalive_interval: keepalive,
        keepalive_timeout: keepalive * 3 + Duration::from_secs(1),
        shared_dir: args.shared_dir,
        max_upload: args.max_upload,
        disk_reserve: args.disk_reserve,
        upload_idle_timeout: Duration::from_secs(args.upload_idle_timeout),
        max_reserved_per_connection: args.max_reserved_per_connection,
        max_reserved_per_address: args.max_reserved_per_address,
        allow_hidden_uploads: args.allow_hidden_uploads,
        data_dir: args.data_dir,
        backlog: args.backlog,
        require_account: args.require_account,
        keep_history: !args.no_history,
        max_queued_total: usize::try_from(args.max_queued_total).unwrap_or(usize::MAX),
        mailbox_max: args.mailbox_max as usize,
        mailbox_max_bytes: usize::try_from(args.mailbox_max_bytes).unwrap_or(usize::MAX),
        flood: (args.flood_rate > 0.0).then_some(FloodLimit {
            rate: args.flood_rate,
            burst: args.flood_burst,
        }),
        tls: match (args.no_tls, args.tls_cert, args.tls_key) {
            (true, _, _) => TlsMode::Off,
            (false, Some(cert), Some(key)) => TlsMode::Files { cert, key },
            _ => TlsMode::SelfSigned,
        },
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    // On a worker, not this thread (the runtime's own): accepting there handed each new
    // connection across threads, a wake-up per connection. With one worker, as on two cores,
    // a join storm of 10,000 was all in after 0.76 s rather than 0.98 (medians, six pairs).
    tokio::spawn(serve(listener, config, shutdown))
        .await
        .map_err(std::io::Error::other)??;
    let dropped = dropped.dropped_lines();
    if dropped > 0 {
        warn!("{dropped} log lines were dropped: the output was not read fast enough");
    }
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

/// Parses a rate of requests a second: a number from 0 (off) to a million.
fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if (0.0..=1e6).contains(&rate) => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate: give requests a second, from 0 (off) to 1000000"
        )),
    }
}

/// The networks of `--limit-exempt`: one value holding a list, where clap would make a `Vec`
/// field an option given many times.
#[derive(Clone)]
struct Exempt(Vec<IpNet>);

fn parse_exempt(text: &str) -> Result<Exempt, String> {
    parse_networks(text).map(Exempt)
}

/// Parses `1048576`, `512K`, `4G`, `1.5GiB` and the like (units are powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as 4G or 500M"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        other => return Err(format!("unknown unit {other:?}; use K, M, G or T")),
    };
    Ok((number * (1u64 << shift) as f64) as u64)
}

/// The server's worker threads: one per core but one, at least one. The core left over is for
/// the threads beside the workers (the history recorder, file reads and hashing) and, on a
/// small machine, for whatever else runs there. On two cores with the clients on the same
/// machine, one worker delivered 40% more to 100 receivers and 19% more to 1,000 than two,
/// which woke each other and contended with the recorder (docs/benchmarks.md, "A session of
/// its own"). `TOKIO_WORKER_THREADS` overrides it, as tokio reads it.
pub fn worker_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    cores.saturating_sub(1).max(1)
}

/// Raises this process's open-file limit as far as it may go: every connection is a
/// descriptor, and the soft limit is often 1,024. A privileged process may raise the hard limit
/// too (up to the kernel's `fs.nr_open`); any other goes up to its hard limit.
pub fn raise_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    const WANTED: u64 = 1 << 20;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if hard < WANTED && setrlimit(Resource::RLIMIT_NOFILE, WANTED, WANTED).is_ok() {
        return;
    }
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Connections the kernel may hold complete but not yet accepted: the most this machine
/// allows by default (`net.core.somaxconn`). The usual 1,024 overflowed when thousands of
/// clients connected at once, and a connection refused that way is retried by its client's
/// kernel only a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// Listens on the first address `host` names, as `TcpListener::bind` would, with a longer
/// queue of connections waiting to be accepted.
async fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    let mut last = None;
    for address in tokio::net::lookup_host((host, port)).await? {
        let socket = match address {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        match socket
            .bind(address)
            .and_then(|()| socket.listen(LISTEN_BACKLOG))
        {
            Ok(listener) => return Ok(listener),
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host name has no address")
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes_with_units() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_size("2 MB"), Ok(2 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("3X").is_err());
    }
}
