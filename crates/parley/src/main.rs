//! `parley`: the one binary. `parley server` runs a chat server; `parley client` joins one.
//!
//! Each subcommand module owns its clap `Args` and a `run(args)`. Usage mistakes are clap's to
//! report (a usage message, exit 2); every other failure is one sentence on stderr and a
//! non-zero exit, never a backtrace.

mod admin;
mod bench;
mod client;
mod oneshot;
mod secrets;
mod server;
mod transfers;

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

/// jemalloc rather than the system's allocator. A server holds thousands of connections, each
/// a handful of small objects that live long (its tasks, its queue, its socket's
/// registration). jemalloc keeps each size class in slabs of its own, with no header per
/// object: measured, an idle connection costs 2.35 KiB instead of 2.8, and fan-out to 100
/// receivers is 10% faster (docs/benchmarks.md, "The allocator"). Its background thread
/// returns pages freed by connections gone quiet to the system within seconds; without it,
/// jemalloc returns them only as the process goes on allocating and freeing, which an idle
/// server hardly does.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Self-hosted chat and file sharing.
#[derive(Parser)]
#[command(name = "parley", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a chat server.
    Server(server::Args),
    /// Join a chat server from this terminal (or a script: one command per input line).
    Client(client::Args),
    /// List a shared folder, then exit (for scripts).
    Files(oneshot::FilesArgs),
    /// Download a shared file, then exit (for scripts).
    Download(oneshot::DownloadArgs),
    /// Share a local file, then exit (for scripts).
    Upload(oneshot::UploadArgs),
    /// Manage accounts (works while the server runs or is stopped).
    #[command(subcommand)]
    Admin(admin::Command),
    /// Measure a running server (loopback only): fan-out, idle memory, join storms, transfers.
    #[command(subcommand)]
    Bench(bench::Command),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Server(_) = cli.command
        && std::env::var_os("TOKIO_WORKER_THREADS").is_none()
    {
        builder.worker_threads(server::worker_threads());
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("parley: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(args).await,
            Command::Client(args) => client::run(args).await,
            Command::Files(args) => oneshot::files(args).await,
            Command::Download(args) => oneshot::download(args).await,
            Command::Upload(args) => oneshot::upload(args).await,
            Command::Admin(command) => admin::run(command),
            Command::Bench(command) => bench::run(command).await,
        }
    });
    // Do not wait for the thread blocked reading stdin: the client may end because the server
    // went away while the user has typed nothing.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("parley: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Prints clap's message, followed by the usage line when clap left it out (it does for a bad
/// value, such as a port that is not a number), and picks the exit code: 0 for --help and
/// --version, 2 for mistakes.
fn usage_error(err: clap::Error) -> ExitCode {
    let _ = err.print();
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return ExitCode::SUCCESS;
    }
    if !err.render().to_string().contains("Usage:") {
        let mut command = Cli::command();
        command.build();
        let subcommand = std::env::args().nth(1).unwrap_or_default();
        let usage = match command.find_subcommand_mut(&subcommand) {
            Some(sub) => sub.render_usage(),
            None => command.render_usage(),
        };
        eprintln!("\n{usage}");
    }
    ExitCode::from(2)
}
