//! The floor: the least a tokio task-per-connection pub/sub server does, speaking just enough of
//! Redis's protocol (SUBSCRIBE, PUBLISH, PING) for loadgen's `redis` mode.
//!
//! It is an experiment, not a product: measured next to Redis and Parley, it tells how much of
//! Parley's cost is the architecture (tasks, wake-ups, one socket write per receiver) and how
//! much is Parley's own. So it does nothing beyond that: no auth, no history, no TLS. Three
//! write paths can be chosen (`--mode`), from Parley's design to Redis's; see `README.md`.
//! This file holds the runtime and the three connection shapes; `conn` reads and executes
//! commands, `hub` delivers, `resp` decodes and encodes.

mod conn;
mod hub;
mod resp;

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

use crate::conn::Conn;
use crate::hub::{Hub, MAX_IOV, Peer, Take, advance};

/// A minimal Redis-pub/sub-compatible fan-out server on 127.0.0.1.
#[derive(Parser)]
struct Args {
    /// Port to listen on.
    #[arg(long)]
    port: u16,
    /// How deliveries reach the socket.
    #[arg(long, value_enum, default_value_t = Mode::TwoTasks)]
    mode: Mode,
    /// One thread instead of Parley's two-worker runtime.
    #[arg(long)]
    current_thread: bool,
}

/// How deliveries reach the socket.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// A reader task and a writer task per connection, as Parley does.
    TwoTasks,
    /// One task per connection, reading and writing.
    OneTask,
    /// The publisher writes into each subscriber's socket itself, as Redis does.
    Direct,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = if args.current_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(2);
        builder
    };
    let result = builder.enable_all().build().and_then(|runtime| {
        runtime.block_on(async {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port)).await?;
            eprintln!(
                "floor: {:?} on {} (pid {})",
                args.mode,
                listener.local_addr()?,
                std::process::id()
            );
            tokio::select! {
                () = accept_loop(listener, args.mode) => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            Ok(())
        })
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("floor: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn accept_loop(listener: TcpListener, mode: Mode) {
    let hub = Arc::new(Hub::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, most likely: back off instead of spinning.
                eprintln!("floor: accept: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Small frames, latency matters: as Redis and Parley.
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        // One spawn per mode, not one future with a match inside: each task is then only as
        // large as its own mode needs, which is what the idle measurement sees.
        match mode {
            Mode::TwoTasks => tokio::spawn(two_tasks(stream, hub)),
            Mode::OneTask => tokio::spawn(one_task(stream, hub)),
            Mode::Direct => tokio::spawn(direct(stream, hub)),
        };
    }
}

/// Parley's shape: this task reads, a second one drains the queue into the socket.
async fn two_tasks(stream: TcpStream, hub: Arc<Hub>) {
    let (read, write) = stream.into_split();
    let mut conn = Conn::new(hub, Peer::new(None));
    let mut writer = tokio::spawn(write_loop(conn.peer.clone(), write));
    loop {
        tokio::select! {
            ready = read.readable() => {
                if !matches!(ready.and_then(|()| conn.on_readable(&read)), Ok(true)) {
                    break;
                }
            }
            // The writer stops early only when writing failed or the peer was cut off.
            _ = &mut writer => break,
        }
    }
    // Unsubscribes and lets the writer finish what is queued, then stop.
    drop(conn);
}

async fn write_loop(peer: Arc<Peer>, mut write: OwnedWriteHalf) -> io::Result<()> {
    loop {
        match peer.take() {
            Take::Frames(mut frames) => write_frames(&mut write, &mut frames).await?,
            Take::Wait => peer.ready().await,
            Take::Stop => return Ok(()),
        }
    }
}

/// One task per connection: the same queue, drained by the task that also reads.
async fn one_task(stream: TcpStream, hub: Arc<Hub>) {
    let (read, mut write) = stream.into_split();
    let mut conn = Conn::new(hub, Peer::new(None));
    let peer = conn.peer.clone();
    loop {
        let open = tokio::select! {
            ready = read.readable() => ready.and_then(|()| conn.on_readable(&read)),
            () = peer.ready() => write_queued(&peer, &mut write).await,
        };
        if !matches!(open, Ok(true)) {
            break;
        }
    }
    drop(conn);
    let _ = write_queued(&peer, &mut write).await;
}

/// Writes everything queued; false once the connection is to end.
async fn write_queued(peer: &Peer, write: &mut OwnedWriteHalf) -> io::Result<bool> {
    loop {
        match peer.take() {
            Take::Frames(mut frames) => write_frames(write, &mut frames).await?,
            Take::Wait => return Ok(true),
            Take::Stop => return Ok(false),
        }
    }
}

/// Writes `frames` with as few system calls as `writev` allows.
async fn write_frames(write: &mut OwnedWriteHalf, frames: &mut VecDeque<Bytes>) -> io::Result<()> {
    while !frames.is_empty() {
        // A fresh Vec each time: kept in the task, it would be memory per idle connection.
        let slices: Vec<IoSlice<'_>> = frames
            .iter()
            .take(MAX_IOV)
            .map(|f| IoSlice::new(f))
            .collect();
        let written = write.write_vectored(&slices).await?;
        drop(slices);
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        advance(frames, written);
    }
    Ok(())
}

/// Redis's shape: publishers write into the socket themselves; this task only reads, and writes
/// what the kernel did not take when the socket becomes writable again.
async fn direct(stream: TcpStream, hub: Arc<Hub>) {
    let (read, write) = stream.into_split();
    let mut conn = Conn::new(hub, Peer::new(Some(write)));
    let peer = conn.peer.clone();
    loop {
        let open = tokio::select! {
            ready = read.readable() => ready.and_then(|()| conn.on_readable(&read)),
            () = peer.ready() => peer.flush_direct().await,
        };
        if !matches!(open, Ok(true)) {
            break;
        }
    }
    drop(conn);
    let _ = peer.flush_direct().await;
}
