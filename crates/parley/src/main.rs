//! `parley`: the one binary. `parley server` runs a chat server; `parley client` joins one.
//!
//! Each subcommand module owns its clap `Args` and a `run(args)`. Usage mistakes are clap's to
//! report (a usage message, exit 2); every other failure is one sentence on stderr and a
//! non-zero exit, never a backtrace.

mod client;
mod server;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
        }
    });
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("parley: {err:#}");
            ExitCode::FAILURE
        }
    }
}
