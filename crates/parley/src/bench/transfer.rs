//! `parley bench transfer` and `parley bench chat-during-transfer`, through the client library
//! as the terminal client uses it: uploads send the file's BLAKE3 hash, downloads check it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use parley_client::{Chunk, Client, ClientEvent, ConnectOptions, Events};
use parley_proto::DEFAULT_ROOM;
use parley_proto::event::{Event, TransferStatus};
use parley_proto::request::Say;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::{CpuWindow, round1, round3};
use super::{Report, Target, latency_json, new_histogram};
use crate::server::parse_size;

/// Options of `parley bench transfer`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) target: Target,
    /// File size: bytes, or with a unit (K, M, G; powers of 1024).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Download without checking the hash, as `curl -o /dev/null` does: measures the server
    /// against a web server on the same work, rather than the client's checking too.
    #[arg(long)]
    no_verify: bool,
    /// Download this file of the shared folder, without uploading one first (--size is then
    /// not used): to measure downloads again and again from the page cache.
    #[arg(long, value_name = "PATH")]
    download: Option<String>,
}

/// Options of `parley bench chat-during-transfer`.
#[derive(clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Size of the file downloaded (again and again, until the chat is done).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// Messages sent each way.
    #[arg(short = 'm', long, default_value_t = 200)]
    messages: u64,
    /// Messages per second each way.
    #[arg(short = 'r', long, default_value_t = 20.0)]
    rate: f64,
}

/// Connects and signs in as `name`.
async fn connect(target: &Target, name: &str) -> anyhow::Result<(Client, Events)> {
    let mut options = ConnectOptions::new(target.host.to_string(), target.port, name);
    options.timeout = Duration::from_secs(target.connect_timeout);
    if target.no_tls {
        options = options.plain();
    }
    Ok(Client::connect(&options).await?)
}

/// Bytes of the benchmark file: a fixed pseudo-random block, so nothing along the way can
/// compress it, repeated.
fn block() -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..1 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// What one transfer measured.
struct Moved {
    seconds: f64,
    cpu: serde_json::Value,
    path: String,
}

/// Uploads `size` bytes as a new file; returns where it went.
async fn upload(client: &Client, size: u64, pid: Option<u32>) -> anyhow::Result<Moved> {
    let block = block();
    let name = format!("parley-bench-{size}.bin");
    let cpu = CpuWindow::start(pid);
    let started = Instant::now();
    let mut outgoing = client.upload("", &name, size).await?;
    let chunk = outgoing.info.max_chunk.min(block.len());
    let mut hasher = blake3::Hasher::new();
    let mut left = size;
    while left > 0 {
        let n = chunk.min(left as usize);
        let bytes = &block[..n];
        hasher.update(bytes);
        outgoing
            .send(bytes)
            .await
            .context("the server ended the upload")?;
        left -= n as u64;
    }
    let uploaded = outgoing
        .finish(hasher.finalize().to_hex().to_string())
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    Ok(Moved {
        seconds,
        cpu: cpu.finish(),
        path: uploaded.path,
    })
}

/// Downloads `path` whole, checking its hash if asked to; returns the bytes received.
async fn download(
    client: &Client,
    path: &str,
    verify: bool,
    stop: &CancellationToken,
) -> anyhow::Result<u64> {
    let mut incoming = client.download(path, 0).await?;
    let mut hasher = verify.then(blake3::Hasher::new);
    let mut received = 0u64;
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(received),
            chunk = incoming.next() => chunk,
        };
        match chunk {
            Some(Chunk::Data(bytes)) => {
                if let Some(hasher) = &mut hasher {
                    hasher.update(&bytes);
                }
                received += bytes.len() as u64;
            }
            Some(Chunk::End(end)) if end.status == TransferStatus::Complete => {
                let expected = end.blake3.unwrap_or_default();
                if let Some(hasher) = hasher
                    && hasher.finalize().to_hex().as_str() != expected
                {
                    bail!("the downloaded bytes do not match the server's hash");
                }
                if received != incoming.info.size {
                    bail!("{received} bytes downloaded of {}", incoming.info.size);
                }
                return Ok(received);
            }
            Some(Chunk::End(end)) => bail!(
                "the download ended: {}",
                end.message.unwrap_or_else(|| format!("{:?}", end.status))
            ),
            None => bail!("the connection closed during the download"),
        }
    }
}

/// Runs `transfer` on a thread of its own, as curl would. On two cores shared with the server,
/// a second thread of the bench's (one reading the socket, one hashing) costs more in switches
/// than it gains: downloads were 12% slower plain, 21% with TLS.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    tokio::task::spawn_blocking(move || super::thread_runtime()?.block_on(measure(args))).await?
}

async fn measure(args: Args) -> anyhow::Result<Report> {
    let (client, _events) = connect(&args.target, "bench-transfer").await?;
    let pid = args.target.pid;
    let (up, path) = match args.download.clone() {
        Some(path) => (None, path),
        None => {
            let up = upload(&client, args.size, pid).await?;
            let path = up.path.clone();
            (Some(up), path)
        }
    };
    let cpu = CpuWindow::start(pid);
    let started = Instant::now();
    let size = download(&client, &path, !args.no_verify, &CancellationToken::new()).await?;
    let down = Moved {
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu.finish(),
        path,
    };
    let _ = client.quit().await;
    let rate = |moved: &Moved| size as f64 / moved.seconds / 1e6;
    let moved = |moved: &Moved| json!({"seconds": round3(moved.seconds), "MBps": round1(rate(moved)), "cpu": moved.cpu});
    let uploaded = match &up {
        Some(up) => format!(
            "upload {:.0} MB/s (server CPU {}%), ",
            rate(up),
            up.cpu["server_pct"]
        ),
        None => String::new(),
    };
    let summary = format!(
        "transfer ({}): {size} bytes; {uploaded}download{} {:.0} MB/s (server CPU {}%); the file is in the shared folder as {}",
        if args.target.no_tls { "plain" } else { "TLS" },
        if args.no_verify { " (unchecked)" } else { "" },
        rate(&down),
        down.cpu["server_pct"],
        down.path,
    );
    let mut download = moved(&down);
    download["verified"] = json!(!args.no_verify);
    let json = json!({
        "mode": "transfer",
        "tls": !args.target.no_tls,
        "bytes": size,
        "upload": up.as_ref().map(moved),
        "download": download,
        "path": down.path,
        "complete": true,
    });
    Ok(Report { summary, json })
}

/// Marks a benchmark chat message: `~PB<send time ns:16 hex>`.
fn stamp(epoch: Instant) -> String {
    format!("~PB{:016x}", epoch.elapsed().as_nanos() as u64)
}

fn stamped(text: &str) -> Option<u64> {
    u64::from_str_radix(text.strip_prefix("~PB")?.get(..16)?, 16).ok()
}

/// Records the latency of every stamped room message arriving on `events` until `stop`.
async fn receive(mut events: Events, epoch: Instant, stop: CancellationToken) -> Histogram<u64> {
    let mut histogram = new_histogram();
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return histogram,
            event = events.recv() => event,
        };
        match event {
            Some(ClientEvent::Server(Event::Message(message))) => {
                if let Some(sent) = stamped(&message.text) {
                    let now = epoch.elapsed().as_nanos() as u64;
                    let _ = histogram.record(now.saturating_sub(sent).max(1));
                }
            }
            Some(ClientEvent::Closed(_)) | None => return histogram,
            Some(_) => {}
        }
    }
}

/// Sends `messages` stamped messages at `rate` per second; returns the confirmation latencies.
async fn chat(client: Client, messages: u64, rate: f64, epoch: Instant) -> Histogram<u64> {
    let started = Instant::now();
    let mut confirmations = tokio::task::JoinSet::new();
    for i in 0..messages {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let client = client.clone();
        confirmations.spawn(async move {
            let sent = Instant::now();
            let say = Say {
                room: DEFAULT_ROOM.to_owned(),
                text: stamp(epoch),
            };
            client.call(say).await.map(|_| sent.elapsed())
        });
    }
    let mut histogram = new_histogram();
    while let Some(confirmed) = confirmations.join_next().await {
        if let Ok(Ok(latency)) = confirmed {
            let _ = histogram.record((latency.as_nanos() as u64).max(1));
        }
    }
    histogram
}

/// Runs `chat-during-transfer`.
pub async fn run_chat(args: ChatArgs) -> anyhow::Result<Report> {
    if args.rate <= 0.0 {
        bail!("--rate must be above 0");
    }
    let (downloader, downloader_events) = connect(&args.target, "bench-downloader").await?;
    let (talker, talker_events) = connect(&args.target, "bench-talker").await?;
    let file = upload(&talker, args.size, None).await?.path;
    let epoch = Instant::now();
    let stop = CancellationToken::new();
    let to_downloader = tokio::spawn(receive(downloader_events, epoch, stop.clone()));
    let from_downloader = tokio::spawn(receive(talker_events, epoch, stop.clone()));
    let downloaded = Arc::new(AtomicU64::new(0));
    let downloads = {
        let (client, stop, downloaded, file) = (
            downloader.clone(),
            stop.clone(),
            downloaded.clone(),
            file.clone(),
        );
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let bytes = download(&client, &file, true, &stop).await?;
                downloaded.fetch_add(bytes, Ordering::AcqRel);
            }
            anyhow::Ok(())
        })
    };
    let cpu = CpuWindow::start(args.target.pid);
    let started = Instant::now();
    let (talker_confirm, downloader_confirm) = tokio::join!(
        chat(talker.clone(), args.messages, args.rate, epoch),
        chat(downloader.clone(), args.messages, args.rate, epoch),
    );
    // Let the last messages arrive (they are confirmed, so already sent to everyone).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.finish();
    stop.cancel();
    downloads.await??;
    let to_downloader = to_downloader.await?;
    let from_downloader = from_downloader.await?;
    let _ = tokio::join!(downloader.quit(), talker.quit());
    let mbps = downloaded.load(Ordering::Acquire) as f64 / seconds / 1e6;
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1e6;
    let summary = format!(
        "chat-during-transfer ({}): downloading at {:.0} MB/s; to the downloader p50 {:.2} ms p99 {:.2} ms; from it p50 {:.2} ms p99 {:.2} ms; its confirmations p99 {:.2} ms",
        if args.target.no_tls { "plain" } else { "TLS" },
        mbps,
        ms(&to_downloader, 0.5),
        ms(&to_downloader, 0.99),
        ms(&from_downloader, 0.5),
        ms(&from_downloader, 0.99),
        ms(&downloader_confirm, 0.99),
    );
    let complete = to_downloader.len() == args.messages && from_downloader.len() == args.messages;
    let json = json!({
        "mode": "chat-during-transfer",
        "tls": !args.target.no_tls,
        "messages": args.messages,
        "rate": args.rate,
        "download_MBps": round1(mbps),
        "to_downloader_us": latency_json(&to_downloader),
        "from_downloader_us": latency_json(&from_downloader),
        "downloader_confirm_us": latency_json(&downloader_confirm),
        "talker_confirm_us": latency_json(&talker_confirm),
        "window_s": round3(seconds),
        "cpu": cpu,
        "complete": complete,
    });
    Ok(Report { summary, json })
}
