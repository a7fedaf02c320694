//! `parley bench fanout`: N receivers in one room, S senders, B-byte messages; a closed loop
//! with at most W messages in flight, or a fixed rate. The method is the one of the independent
//! load generator the anchors were measured with: each payload carries a sequence number and
//! its send time (taken just before the write), latency is measured when the receiver's read
//! returns, into an HDR histogram.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::{BufMut, BytesMut};
use hdrhistogram::Histogram;
use parley_proto::{Frame, FrameRef};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, Semaphore};
use tokio::task::LocalSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::{self, CpuWindow, round1, round3};
use super::wire::{Dialer, Stream};
use super::{Report, Target, latency_json, new_histogram, thread_runtime};

/// Marks a benchmark payload: `~PB<seq:16 hex>.<send time ns:16 hex>.` then padding.
const MARKER: &[u8] = b"~PB";
const HEADER_BYTES: usize = 3 + 16 + 1 + 16 + 1;

/// Options of `parley bench fanout`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Receivers in the room.
    #[arg(short = 'n', long, default_value_t = 100)]
    receivers: usize,
    /// Senders in the room.
    #[arg(short = 's', long, default_value_t = 1)]
    senders: usize,
    /// Messages to send, over all senders.
    #[arg(short = 'm', long, default_value_t = 100_000)]
    messages: u64,
    /// Message size in bytes (at least 37).
    #[arg(short = 'b', long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(HEADER_BYTES as u64..=4096))]
    bytes: u64,
    /// Messages per sender in flight (sent but not yet delivered to every receiver); 0 leaves
    /// only TCP's backpressure.
    #[arg(short = 'w', long, default_value_t = 64)]
    window: u64,
    /// Send at this fixed rate (messages per second over all senders) instead of a closed loop.
    #[arg(short = 'r', long, default_value_t = 0.0)]
    rate: f64,
    /// The room to use.
    #[arg(long, default_value = "bench")]
    room: String,
    /// Seconds to wait for outstanding deliveries after the last send.
    #[arg(long, default_value_t = 5)]
    drain_timeout: u64,
}

/// What senders and receivers share.
struct Shared {
    epoch: Instant,
    receivers: u64,
    /// Messages allowed in flight over all senders; 0 for no limit.
    in_flight: u64,
    sent: AtomicU64,
    delivered: AtomicU64,
    /// When the last delivery was read, in ns since `epoch`.
    last_delivery: AtomicU64,
    /// When the first message was sent, in ns since `epoch`.
    first_send: AtomicU64,
    /// Messages the drain waits to see delivered; none until the senders are done.
    expected: AtomicU64,
    /// Wakes a sender waiting for room in the window, and the drain.
    progress: Notify,
    /// How many wait on `progress`: receivers wake them only then, since a wake-up crosses
    /// threads and a receiver reads hundreds of thousands of times a second.
    waiting: AtomicUsize,
    ready: AtomicUsize,
    setup: Notify,
    failure: Mutex<Option<String>>,
    stop: CancellationToken,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn fail(&self, err: anyhow::Error) {
        self.failure
            .lock()
            .unwrap()
            .get_or_insert_with(|| format!("{err:#}"));
        self.setup.notify_one();
    }

    /// Counts `got` more deliveries and wakes whoever waits for them.
    fn deliver(&self, got: u64) {
        // SeqCst on both sides of `waiting`: a waiter counts itself, then looks at
        // `delivered`; this adds to `delivered`, then looks at `waiting`. One of the two sees
        // the other's write, so no wake-up is lost.
        let delivered = self.delivered.fetch_add(got, Ordering::SeqCst) + got;
        if self.waiting.load(Ordering::SeqCst) == 0 {
            return;
        }
        // Until the senders are done, a sender waits for the window; then the drain waits for
        // the last delivery.
        let woken = match self.expected.load(Ordering::SeqCst) {
            u64::MAX => self.window_open(),
            expected => delivered >= expected,
        };
        if woken {
            self.progress.notify_one();
        }
    }

    /// Resolves once `ready` holds, woken by deliveries. Dropped while waiting (the drain's
    /// deadline), it stops counting itself as waiting.
    async fn wait_until(&self, ready: impl Fn(&Self) -> bool) {
        /// Counts one waiter for as long as it lives.
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        while !ready(self) {
            let woken = self.progress.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            self.waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.waiting);
            if !ready(self) {
                woken.await;
            }
        }
    }

    fn window_open(&self) -> bool {
        let sent = self.sent.load(Ordering::Acquire);
        let delivered_to_all = self.delivered.load(Ordering::SeqCst) / self.receivers;
        sent.saturating_sub(delivered_to_all) < self.in_flight
    }
}

/// What the receivers saw.
struct Received {
    histogram: Histogram<u64>,
    per_receiver: Vec<u64>,
    reads: u64,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    if args.receivers == 0 || args.senders == 0 {
        bail!("fanout needs at least one receiver and one sender");
    }
    let dialer = Dialer::new(&args.target)?;
    let rss_before = args.target.pid.and_then(probe::rss_kib);
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        receivers: args.receivers as u64,
        in_flight: args.window * args.senders as u64,
        sent: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        last_delivery: AtomicU64::new(0),
        first_send: AtomicU64::new(u64::MAX),
        expected: AtomicU64::new(u64::MAX),
        progress: Notify::new(),
        waiting: AtomicUsize::new(0),
        ready: AtomicUsize::new(0),
        setup: Notify::new(),
        failure: Mutex::new(None),
        stop: CancellationToken::new(),
    });
    let args = Arc::new(args);
    let receivers = spawn_receivers(dialer.clone(), args.clone(), shared.clone())?;

    let setup_started = Instant::now();
    let deadline = setup_started + Duration::from_secs(args.target.timeout);
    loop {
        let woken = shared.setup.notified();
        if let Some(failure) = shared.failure.lock().unwrap().clone() {
            shared.stop.cancel();
            bail!("setting up the receivers failed: {failure}");
        }
        if shared.ready.load(Ordering::Acquire) == args.receivers {
            break;
        }
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            shared.stop.cancel();
            bail!(
                "only {} of {} receivers were in the room within {} s",
                shared.ready.load(Ordering::Acquire),
                args.receivers,
                args.target.timeout
            );
        }
    }
    let setup_s = setup_started.elapsed().as_secs_f64();

    let cpu = CpuWindow::start(args.target.pid);
    let (senders, sent_report) = spawn_senders(dialer, args.clone(), shared.clone())?;
    let sent_report = sent_report.await.map_err(|_| {
        shared.stop.cancel();
        anyhow::anyhow!("the sender thread failed")
    });
    let sent_report = match sent_report.and_then(|sent| sent) {
        Ok(sent) => sent,
        Err(err) => {
            shared.stop.cancel();
            return Err(err);
        }
    };
    let sent = shared.sent.load(Ordering::Acquire);
    let expected = sent * args.receivers as u64;
    shared.expected.store(expected, Ordering::SeqCst);
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    let all_delivered =
        shared.wait_until(|shared| shared.delivered.load(Ordering::SeqCst) >= expected);
    // Whatever is still missing at the deadline is reported as lost.
    let _ = tokio::time::timeout_at(drain_deadline, all_delivered).await;
    let cpu = cpu.finish();
    let rss_after = args.target.pid.and_then(probe::rss_kib);
    shared.stop.cancel();
    let _ = tokio::task::spawn_blocking(move || senders.join()).await;
    let received = tokio::task::spawn_blocking(move || receivers.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the receiver thread panicked"))?;

    let delivered = shared.delivered.load(Ordering::Acquire);
    let first = shared.first_send.load(Ordering::Acquire);
    let last = shared.last_delivery.load(Ordering::Acquire);
    let elapsed = last.saturating_sub(first) as f64 / 1e9;
    let per_second = if elapsed > 0.0 {
        delivered as f64 / elapsed
    } else {
        0.0
    };
    let lost = expected.saturating_sub(delivered);
    let histogram = &received.histogram;
    let summary = format!(
        "fanout: {} receivers, {} sender(s), {} B, {}: {:.0} deliveries/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, lost {lost}, server CPU {}%",
        args.receivers,
        args.senders,
        args.bytes,
        if args.rate > 0.0 {
            format!("{} msg/s", args.rate)
        } else {
            format!("window {}", args.window)
        },
        per_second,
        histogram.value_at_quantile(0.5) as f64 / 1e6,
        histogram.value_at_quantile(0.99) as f64 / 1e6,
        histogram.max() as f64 / 1e6,
        cpu["server_pct"],
    );
    let json = json!({
        "mode": "fanout",
        "tls": !args.target.no_tls,
        "receivers": args.receivers,
        "senders": args.senders,
        "bytes": args.bytes,
        "window": args.window,
        "rate": args.rate,
        "messages": args.messages,
        "sent": sent,
        "send_errors": sent_report.errors,
        "expected": expected,
        "received": delivered,
        "lost": lost,
        "complete": lost == 0 && sent == args.messages,
        "per_receiver_min": received.per_receiver.iter().min(),
        "per_receiver_max": received.per_receiver.iter().max(),
        "deliveries_per_s": per_second.round(),
        "deliveries_per_read": round1(delivered as f64 / received.reads.max(1) as f64),
        "elapsed_s": round3(elapsed),
        "setup_s": round3(setup_s),
        "max_send_lag_ms": round3(sent_report.max_lag_ns as f64 / 1e6),
        "lat_us": latency_json(histogram),
        "cpu": cpu,
        "server_rss_kib": {"before": rss_before, "after": rss_after},
    });
    Ok(Report { summary, json })
}

/// Starts the receivers on a thread of their own: they connect, sign in and join the room, then
/// read until stopped.
fn spawn_receivers(
    dialer: Arc<Dialer>,
    args: Arc<Args>,
    shared: Arc<Shared>,
) -> anyhow::Result<std::thread::JoinHandle<Received>> {
    let runtime = thread_runtime()?;
    let thread = std::thread::Builder::new()
        .name("receivers".into())
        .spawn(move || {
            let histogram = Rc::new(RefCell::new(new_histogram()));
            let counts = Rc::new(RefCell::new(vec![0u64; args.receivers]));
            let reads = Rc::new(RefCell::new(0u64));
            let local = LocalSet::new();
            let connecting = Arc::new(Semaphore::new(args.target.conn_concurrency as usize));
            for index in 0..args.receivers {
                let (dialer, args, shared) = (dialer.clone(), args.clone(), shared.clone());
                let (histogram, counts, reads) = (histogram.clone(), counts.clone(), reads.clone());
                let connecting = connecting.clone();
                local.spawn_local(async move {
                    let stop = shared.stop.clone();
                    let received = stop
                        .run_until_cancelled(receive(
                            index,
                            &dialer,
                            &args,
                            &shared,
                            &histogram,
                            &counts,
                            &reads,
                            &connecting,
                        ))
                        .await;
                    if let Some(Err(err)) = received {
                        shared.fail(err.context(format!("receiver r{index}")));
                    }
                });
            }
            local.block_on(&runtime, shared.stop.cancelled());
            drop(local);
            Received {
                histogram: histogram.replace(new_histogram()),
                per_receiver: counts.take(),
                reads: reads.take(),
            }
        })?;
    Ok(thread)
}

#[allow(clippy::too_many_arguments)]
async fn receive(
    index: usize,
    dialer: &Dialer,
    args: &Args,
    shared: &Shared,
    histogram: &RefCell<Histogram<u64>>,
    counts: &RefCell<Vec<u64>>,
    reads: &RefCell<u64>,
    connecting: &Semaphore,
) -> anyhow::Result<()> {
    let permit = connecting.acquire().await?;
    let (mut conn, _) = dialer.sign_in(index, &format!("r{index}")).await?;
    conn.call("join", json!({"room": args.room}), |_| {})
        .await?;
    drop(permit);
    shared.ready.fetch_add(1, Ordering::AcqRel);
    shared.setup.notify_one();
    let marker = memchr::memmem::Finder::new(MARKER);
    loop {
        if conn.fill().await? == 0 {
            bail!("the server closed the connection");
        }
        let now = shared.now_ns();
        let (mut got, mut pings) = (0, 0);
        {
            let mut latencies = histogram.borrow_mut();
            conn.scan(|frame| match frame {
                // Only live messages: a backlog from an earlier run holds markers too.
                FrameRef::Control(json) if json.starts_with(br#"{"type":"message""#) => {
                    if let Some(sent_at) = send_time(&marker, json) {
                        // A clock that went backwards would be a bug; clamp rather than panic.
                        let _ = latencies.record(now.saturating_sub(sent_at).max(1));
                        got += 1;
                    }
                }
                FrameRef::Ping => pings += 1,
                _ => {}
            })?;
        }
        for _ in 0..pings {
            conn.pong().await?;
        }
        *reads.borrow_mut() += 1;
        if got > 0 {
            counts.borrow_mut()[index] += got;
            shared.last_delivery.fetch_max(now, Ordering::AcqRel);
            shared.deliver(got);
        }
    }
}

/// The send time carried by a benchmark payload in `json`, if it holds one; `marker` finds
/// [`MARKER`].
fn send_time(marker: &memchr::memmem::Finder<'_>, json: &[u8]) -> Option<u64> {
    let at = marker.find(json)? + MARKER.len() + 17;
    let digits = json.get(at..at + 16)?;
    digits.iter().try_fold(0u64, |time, &digit| {
        Some(time << 4 | u64::from((digit as char).to_digit(16)?))
    })
}

/// What the senders report.
struct Sent {
    errors: u64,
    max_lag_ns: u64,
}

/// Starts the senders on a thread of their own; they sign in, join, and send their share, then
/// report and keep their connections open until stopped (closing a socket with unread replies
/// would reset it, destroying messages the server has not read yet).
#[allow(clippy::type_complexity)]
fn spawn_senders(
    dialer: Arc<Dialer>,
    args: Arc<Args>,
    shared: Arc<Shared>,
) -> anyhow::Result<(
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<anyhow::Result<Sent>>,
)> {
    let runtime = thread_runtime()?;
    let (report, reported) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("senders".into())
        .spawn(move || {
            let local = LocalSet::new();
            let stop = shared.stop.clone();
            let sent = local.block_on(&runtime, async move {
                let mut conns = Vec::new();
                for k in 0..args.senders {
                    let index = args.receivers + k;
                    let (mut conn, _) = dialer.sign_in(index, &format!("s{k}")).await?;
                    conn.call("join", json!({"room": args.room}), |_| {})
                        .await?;
                    conns.push(conn);
                }
                let errors = Rc::new(RefCell::new(0u64));
                let started = Instant::now();
                let mut tasks = Vec::new();
                for (k, conn) in conns.into_iter().enumerate() {
                    let (mut reader, mut writer) = conn.split();
                    let replies = shared.stop.clone();
                    let errors = errors.clone();
                    // Replies confirm storage; only errors matter here.
                    tokio::task::spawn_local(async move {
                        replies
                            .run_until_cancelled(async {
                                while let Ok(Some(frame)) = reader.next_frame().await {
                                    if let Frame::Control(json) = frame
                                        && super::wire::frame_type(&json) == Some(b"error")
                                    {
                                        *errors.borrow_mut() += 1;
                                    }
                                }
                            })
                            .await
                    });
                    let (args, shared) = (args.clone(), shared.clone());
                    tasks.push(tokio::task::spawn_local(async move {
                        send(k, &mut writer, &args, &shared, started).await
                    }));
                }
                let mut max_lag_ns = 0;
                for task in tasks {
                    max_lag_ns = max_lag_ns.max(task.await??);
                }
                let errors = *errors.borrow();
                Ok(Sent { errors, max_lag_ns })
            });
            let _ = report.send(sent);
            local.block_on(&runtime, stop.cancelled());
        })?;
    Ok((thread, reported))
}

/// Sends sender `k`'s share of the messages; returns how late it was at worst (fixed rate).
async fn send(
    k: usize,
    writer: &mut tokio::io::WriteHalf<Stream>,
    args: &Args,
    shared: &Shared,
    started: Instant,
) -> anyhow::Result<u64> {
    let padding = "x".repeat(args.bytes as usize - HEADER_BYTES);
    let mut frame = BytesMut::with_capacity(256 + args.bytes as usize);
    let mut max_lag_ns = 0;
    let mut seq = k as u64;
    while seq < args.messages {
        if args.rate > 0.0 {
            let due = started + Duration::from_secs_f64(seq as f64 / args.rate);
            tokio::time::sleep_until(due).await;
            max_lag_ns = max_lag_ns.max(Instant::now().duration_since(due).as_nanos() as u64);
        } else if args.window > 0 {
            shared.wait_until(Shared::window_open).await;
            // Pass the wake-up on: another sender may be waiting too.
            if shared.waiting.load(Ordering::SeqCst) > 0 {
                shared.progress.notify_one();
            }
        }
        let now = shared.now_ns();
        shared.first_send.fetch_min(now, Ordering::AcqRel);
        frame.clear();
        frame.put_u32(0);
        frame.put_u8(parley_proto::frame::FrameKind::Control as u8);
        frame.put_slice(
            format!(
                r#"{{"type":"say","id":{},"room":"{}","text":"~PB{seq:016x}.{now:016x}.{padding}"}}"#,
                seq + 1,
                args.room
            )
            .as_bytes(),
        );
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        writer
            .write_all(&frame)
            .await
            .context("sending a message failed")?;
        shared.sent.fetch_add(1, Ordering::AcqRel);
        seq += args.senders as u64;
    }
    Ok(max_lag_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_time_is_read_back_from_a_payload() {
        let marker = memchr::memmem::Finder::new(MARKER);
        let json = br#"{"type":"message","text":"~PB000000000000002a.00000000000f4240.xxxx"}"#;
        assert_eq!(send_time(&marker, json), Some(1_000_000));
        assert_eq!(
            send_time(&marker, br#"{"type":"message","text":"hi"}"#),
            None
        );
        assert_eq!(send_time(&marker, br#"{"text":"~PB00"}"#), None);
        let bad = br#"{"text":"~PB000000000000002a.00000000000f424x.xxxx"}"#;
        assert_eq!(send_time(&marker, bad), None, "not hexadecimal");
    }

    #[test]
    fn header_bytes_match_the_format() {
        let text = format!("~PB{:016x}.{:016x}.", 1u64, 2u64);
        assert_eq!(text.len(), HEADER_BYTES);
    }
}
