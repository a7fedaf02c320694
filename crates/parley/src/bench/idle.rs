//! `parley bench idle`: K signed-in connections that say nothing (they answer pings); the
//! server's resident memory before and after, per connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::probe::{self, round1, round3};
use super::wire::Dialer;
use super::{Report, Target};

/// Options of `parley bench idle`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Connections to hold.
    #[arg(short = 'k', long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to wait after setting up before reading the server's memory.
    #[arg(long, default_value_t = 3)]
    settle: u64,
    /// Seconds to hold the connections after that; the memory is read again at the end.
    #[arg(long, default_value_t = 5)]
    hold: u64,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    let Some(pid) = args.target.pid else {
        bail!("idle measures the server's memory: give its process id with --pid");
    };
    let before =
        probe::rss_kib(pid).with_context(|| format!("cannot read the memory of process {pid}"))?;
    let own_before = probe::own_rss_kib().unwrap_or(0);
    let dialer = Dialer::new(&args.target)?;
    let connecting = Arc::new(Semaphore::new(args.target.conn_concurrency as usize));
    let signed_in = Arc::new(AtomicUsize::new(0));
    let alive = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let started = Instant::now();
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel::<anyhow::Error>(1);
    for index in 0..args.connections {
        let (dialer, connecting, signed_in, alive) = (
            dialer.clone(),
            connecting.clone(),
            signed_in.clone(),
            alive.clone(),
        );
        let (stop, failed_tx) = (stop.clone(), failed_tx.clone());
        tasks.spawn(async move {
            let connected = async {
                let permit = connecting.acquire().await?;
                let (conn, _) = dialer.sign_in(index, &format!("i{index}")).await?;
                drop(permit);
                anyhow::Ok(conn)
            };
            let mut conn = match stop.run_until_cancelled(connected).await {
                Some(Ok(conn)) => conn,
                Some(Err(err)) => {
                    let _ = failed_tx.try_send(err.context(format!("connection i{index}")));
                    return;
                }
                None => return,
            };
            signed_in.fetch_add(1, Ordering::AcqRel);
            alive.fetch_add(1, Ordering::AcqRel);
            // Reads only to answer pings; whatever else comes (presence) is dropped.
            stop.run_until_cancelled(async { while let Ok(Some(_)) = conn.next_frame().await {} })
                .await;
            alive.fetch_sub(1, Ordering::AcqRel);
        });
    }
    drop(failed_tx);
    tasks.close();
    let deadline = started + Duration::from_secs(args.target.timeout);
    loop {
        if signed_in.load(Ordering::Acquire) == args.connections {
            break;
        }
        let tick = tokio::time::sleep(Duration::from_millis(20));
        tokio::select! {
            Some(err) = failed.recv() => {
                stop.cancel();
                return Err(err);
            }
            _ = tick => {}
        }
        if Instant::now() >= deadline {
            stop.cancel();
            bail!(
                "only {} of {} connections signed in within {} s",
                signed_in.load(Ordering::Acquire),
                args.connections,
                args.target.timeout
            );
        }
    }
    let setup_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = probe::rss_kib(pid).context("the server exited")?;
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let held = probe::rss_kib(pid).context("the server exited")?;
    let still_alive = alive.load(Ordering::Acquire);
    let own_after = probe::own_rss_kib().unwrap_or(0);
    stop.cancel();
    tasks.wait().await;

    let k = args.connections as f64;
    let per_conn = after.saturating_sub(before) as f64 / k;
    let per_conn_held = held.saturating_sub(before) as f64 / k;
    let summary = format!(
        "idle: {} connections ({}) set up in {:.2} s; server memory {:.2} KiB per connection ({:.2} after holding {} s); {} still connected",
        args.connections,
        if args.target.no_tls { "plain" } else { "TLS" },
        setup_s,
        per_conn,
        per_conn_held,
        args.hold,
        still_alive,
    );
    let json = json!({
        "mode": "idle",
        "tls": !args.target.no_tls,
        "connections": args.connections,
        "alive_at_end": still_alive,
        "setup_s": round3(setup_s),
        "server_rss_kib": {"before": before, "after": after, "held": held},
        "server_kib_per_conn": round3(per_conn),
        "server_kib_per_conn_held": round3(per_conn_held),
        "bench_kib_per_conn": round1(own_after.saturating_sub(own_before) as f64 / k),
        "complete": still_alive == args.connections,
    });
    Ok(Report { summary, json })
}
