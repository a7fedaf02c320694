//! `parley bench`: drives a running server over the native protocol and measures it, like
//! `nats bench`. Every scenario is bounded in count and time, talks only to a loopback address,
//! prints a human summary on stderr and one JSON line on stdout (for scripts and
//! docs/benchmarks.md).

mod fanout;
mod idle;
mod probe;
mod storm;
mod transfer;
mod wire;

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::bail;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::server::DEFAULT_PORT;

/// The scenarios.
#[derive(clap::Subcommand)]
pub enum Command {
    /// N receivers in one room, S senders: deliveries per second and end-to-end latency.
    Fanout(fanout::Args),
    /// K signed-in idle connections: the server's memory per connection.
    Idle(idle::Args),
    /// K clients connect, sign in and join one room at once: time until all are in, and
    /// whether everyone's list of who is in the room is right.
    JoinStorm(storm::Args),
    /// Upload, then download, a large file: throughput and CPU on both sides.
    Transfer(transfer::Args),
    /// Chat latency to and from a client while it downloads at full speed.
    ChatDuringTransfer(transfer::ChatArgs),
}

/// Where the server under test is, and the limits every scenario shares.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// The server's port.
    #[arg(short = 'p', long, default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// The server's address: loopback only (127.0.0.1 or ::1), benchmarks never leave the
    /// machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Plain TCP, for a server run with --no-tls.
    #[arg(long, env = "PARLEY_NO_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_tls: bool,
    /// The server's process id, to report its CPU use and memory.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    /// Seconds one connection may take to connect and sign in.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub connect_timeout: u64,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 64, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub conn_concurrency: u64,
}

/// What a scenario found.
pub struct Report {
    /// One or two lines for people.
    pub summary: String,
    /// Everything measured, for scripts.
    pub json: serde_json::Value,
}

/// Runs a scenario and prints its report.
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let target = match &command {
        Command::Fanout(args) => args.target(),
        Command::Idle(args) => args.target(),
        Command::JoinStorm(args) => args.target(),
        Command::Transfer(args) => args.target(),
        Command::ChatDuringTransfer(args) => args.target(),
    };
    if !target.host.is_loopback() {
        bail!(
            "parley bench only measures servers on this machine; {} is not a loopback address (use 127.0.0.1 or ::1)",
            target.host
        );
    }
    let timeout = std::time::Duration::from_secs(target.timeout);
    crate::server::raise_file_limit();
    let scenario = async {
        match command {
            Command::Fanout(args) => fanout::run(args).await,
            Command::Idle(args) => idle::run(args).await,
            Command::JoinStorm(args) => storm::run(args).await,
            Command::Transfer(args) => transfer::run(args).await,
            Command::ChatDuringTransfer(args) => transfer::run_chat(args).await,
        }
    };
    let Ok(report) = tokio::time::timeout(timeout, scenario).await else {
        bail!(
            "the benchmark did not finish within {} s (--timeout)",
            timeout.as_secs()
        );
    };
    let report = report?;
    eprintln!("{}", report.summary);
    println!("{}", report.json);
    Ok(ExitCode::SUCCESS)
}

/// Every scenario's options start with the target.
trait Scenario {
    fn target(&self) -> &Target;
}

macro_rules! scenario {
    ($($args:ty),*) => {$(
        impl Scenario for $args {
            fn target(&self) -> &Target {
                &self.target
            }
        }
    )*};
}
scenario!(
    fanout::Args,
    idle::Args,
    storm::Args,
    transfer::Args,
    transfer::ChatArgs
);

/// A histogram of latencies in nanoseconds, 1 ns to 10 minutes, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// A latency histogram (ns) as JSON, in microseconds.
fn latency_json(histogram: &Histogram<u64>) -> serde_json::Value {
    let us = |ns: u64| probe::round1(ns as f64 / 1e3);
    json!({
        "count": histogram.len(),
        "p50": us(histogram.value_at_quantile(0.5)),
        "p90": us(histogram.value_at_quantile(0.9)),
        "p99": us(histogram.value_at_quantile(0.99)),
        "p999": us(histogram.value_at_quantile(0.999)),
        "max": us(histogram.max()),
        "mean": probe::round1(histogram.mean() / 1e3),
    })
}

/// A single-threaded runtime for one side of a scenario (its receivers, or its senders), so the
/// instrument uses a known number of threads.
fn thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
