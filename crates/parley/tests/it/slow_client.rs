//! A client that stops reading never delays anyone else, and cannot make the server's memory
//! grow without bound: past its queue limit it is cut off, and the others are told.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parley_client::{Client, ClientEvent, Events};
use parley_proto::event::{Event, PartReason};
use parley_proto::request::{Say, Users};

use tokio::io::AsyncWriteExt;

use crate::support::*;

const SENDERS: usize = 4;

/// Sends `per_sender` messages of `size` bytes from each of [`SENDERS`] clients at once.
async fn flood(senders: &[Client], per_sender: usize, size: usize) {
    let mut tasks = Vec::new();
    for (s, sender) in senders.iter().enumerate() {
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_sender {
                let mut text = format!("{s}:{i}:");
                text.extend(std::iter::repeat_n('x', size - text.len()));
                sender
                    .call(Say {
                        room: "lobby".into(),
                        text,
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// Counts flooded messages per sender, checking that each sender's arrive complete and in order.
struct Tally([usize; SENDERS]);

impl Tally {
    fn new() -> Self {
        Self([0; SENDERS])
    }

    /// Records one message; returns its index within its sender's sequence.
    fn record(&mut self, text: &str) -> usize {
        let mut parts = text.splitn(3, ':');
        let s: usize = parts.next().unwrap().parse().unwrap();
        let i: usize = parts.next().unwrap().parse().unwrap();
        assert_eq!(
            i, self.0[s],
            "messages from sender {s} out of order or missing"
        );
        self.0[s] += 1;
        i
    }

    fn total(&self) -> usize {
        self.0.iter().sum()
    }
}

/// Receives every flooded message, checks per-sender order, and returns the worst delay
/// between the server accepting a message and its arrival here.
async fn receive_all(events: &mut Events, per_sender: usize) -> Duration {
    let mut tally = Tally::new();
    let mut worst = Duration::ZERO;
    while tally.total() < SENDERS * per_sender {
        let message = wait_for(events, |event| match event {
            ClientEvent::Server(Event::Message(m)) => Some(m.clone()),
            _ => None,
        })
        .await;
        tally.record(&message.text);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        worst = worst.max(Duration::from_millis(now.saturating_sub(message.ts)));
    }
    worst
}

async fn senders(server: &TestServer) -> Vec<Client> {
    let mut senders = Vec::new();
    for s in 0..SENDERS {
        senders.push(server.join(&format!("sender{s}")).await.0);
    }
    senders
}

#[tokio::test]
async fn a_stalled_reader_does_not_delay_the_others() {
    // A queue limit far above what is sent: the stalled client stays connected throughout, so
    // the others' progress cannot come from it being cut off. Nor may the keepalive cut it
    // off: it reads nothing, so it answers no ping, and on a loaded machine the flood can last
    // longer than the default timeout.
    let server = TestServer::with_config(Config {
        flood: None,
        max_queue_bytes: 256 << 20,
        keepalive_timeout: Duration::from_secs(120),
        ..Config::default()
    })
    .await;
    let mut stalled = server.raw().await;
    stalled.hello("stalled").await;
    let (watcher, mut watcher_events) = server.join("watcher").await;
    let senders = senders(&server).await;

    // 32 MiB: far more than the kernel's socket buffers can absorb for the stalled client.
    let per_sender = 2_000;
    let (_, worst) = tokio::join!(
        flood(&senders, per_sender, 4096),
        receive_all(&mut watcher_events, per_sender)
    );
    assert!(
        worst < Duration::from_secs(5),
        "a message took {worst:?} to arrive"
    );
    let online = watcher.call(Users::default()).await.unwrap().users;
    assert!(online.contains(&"stalled".to_owned()), "{online:?}");
    drop(stalled);
}

/// The server's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_client_too_far_behind_is_cut_off_and_memory_stays_bounded() {
    // The real binary, so its memory is its own and nothing else in this test process.
    let (server, addr) = Proc::unthrottled_server().await;
    let port = addr.port();
    let join = |name: &'static str| async move {
        Client::connect(&parley_client::ConnectOptions::new("127.0.0.1", port, name).plain())
            .await
            .unwrap()
    };

    let mut stalled = RawConn::connect(addr).await;
    stalled.hello("stalled").await;
    // Once cut off, the stalled client starts reading again: past the frames already on their
    // way, the server's last word is a bye saying why, and then the connection closes.
    let (wake, woken) = tokio::sync::oneshot::channel::<()>();
    let stalled = tokio::spawn(async move {
        woken.await.unwrap();
        loop {
            let message = stalled.recv_json().await;
            if message["type"] == "bye" {
                stalled.expect_closed().await;
                return message;
            }
        }
    });
    let mut wake = Some(wake);
    let (_watcher, mut watcher_events) = join("watcher").await;
    let mut senders = Vec::new();
    for name in ["sender0", "sender1", "sender2", "sender3"] {
        senders.push(join(name).await.0);
    }
    let before = rss_kib(server.pid());

    // 64 MiB through the server, 64 times the stalled client's 1 MiB queue limit.
    let per_sender = 4_000;
    let mut peak = before;
    let mut cut_off = false;
    let receive = async {
        let mut tally = Tally::new();
        while tally.total() < SENDERS * per_sender {
            match next_server_event(&mut watcher_events).await {
                Event::Message(m) => {
                    if tally.record(&m.text).is_multiple_of(500) {
                        peak = peak.max(rss_kib(server.pid()));
                    }
                }
                Event::Part(d) if d.users == ["stalled"] => {
                    assert_eq!(d.reason, PartReason::TooSlow);
                    cut_off = true;
                    let _ = wake.take().map(|wake| wake.send(()));
                }
                Event::Join(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    };
    tokio::join!(flood(&senders, per_sender, 4096), receive);
    assert!(cut_off, "the stalled client was never cut off");
    let growth_mib = (peak.saturating_sub(before)) / 1024;
    assert!(
        growth_mib < 24,
        "the server grew by {growth_mib} MiB while 64 MiB flowed"
    );
    let bye = tokio::time::timeout(WAIT, stalled).await.unwrap().unwrap();
    assert_eq!(bye["code"], "too_slow", "{bye}");
}

/// A connection that signs in as `name` with a receive buffer of 2 KiB, so that the server's
/// socket soon accepts nothing more while it reads nothing.
async fn tight_reader(server: &TestServer, name: &str) -> RawConn {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(2048).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (read, write) = stream.into_split();
    let mut raw = RawConn {
        frames: tokio_util::codec::FramedRead::new(read, parley_proto::FrameCodec::client()),
        write,
    };
    raw.hello(name).await;
    raw
}

/// Pipelines `count` room messages of `size` bytes from `raw`, then reads their replies.
async fn pipeline(raw: &mut RawConn, count: u64, size: usize) {
    let text = "y".repeat(size);
    for id in 1..=count {
        raw.send_json(serde_json::json!({"id": id, "type": "say", "room": "lobby", "text": text}))
            .await;
    }
    let mut confirmed = 0;
    while confirmed < count {
        if raw.recv_json().await["type"] == "ok" {
            confirmed += 1;
        }
    }
}

/// Waits until `events` tells that `name` was cut off as too slow.
async fn cut_off(events: &mut Events, name: &str) {
    let reason = wait_for(events, |event| match event {
        ClientEvent::Server(Event::Part(part)) if part.users.iter().any(|u| u == name) => {
            Some(part.reason)
        }
        _ => None,
    })
    .await;
    assert_eq!(
        reason,
        PartReason::TooSlow,
        "{name} left, but not as too slow"
    );
}

#[tokio::test]
async fn a_reader_that_takes_nothing_is_cut_off_though_it_answers_pings() {
    // Within its queue's limit, and heard from: only its socket, taking nothing while output
    // waits for the keepalive timeout, tells that it reads nothing.
    let server = TestServer::with_config(Config {
        flood: None,
        keepalive_interval: Duration::from_millis(300),
        keepalive_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    let (_watcher, mut watcher_events) = server.join("watcher").await;
    let mut stalled = tight_reader(&server, "stalled").await;
    // It answers pings without reading them: a pong now and then is all the server hears.
    let pongs = tokio::spawn(async move {
        for _ in 0..100 {
            if stalled
                .write
                .write_all(&parley_proto::Frame::Pong.to_bytes())
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut sender = server.raw().await;
    sender.hello("sender").await;
    // 600 KB for it, under its queue's 1 MiB.
    pipeline(&mut sender, 300, 2000).await;
    cut_off(&mut watcher_events, "stalled").await;
    pongs.abort();
}

#[tokio::test]
async fn many_slow_readers_together_hold_no_more_than_the_total_allowed() {
    // Each within its own limit and its keepalive; together over the total.
    let server = TestServer::with_config(Config {
        flood: None,
        max_queued_total: 512 * 1024,
        keepalive_interval: Duration::from_secs(60),
        keepalive_timeout: Duration::from_secs(120),
        ..Config::default()
    })
    .await;
    let (_reader, mut reader_events) = server.join("reader").await;
    let mut stalled = Vec::new();
    for n in 0..4 {
        stalled.push(tight_reader(&server, &format!("stalled{n}")).await);
    }
    await_arrivals(
        &mut reader_events,
        "lobby",
        &["stalled0", "stalled1", "stalled2", "stalled3"],
    )
    .await;
    let mut sender = server.raw().await;
    sender.hello("sender").await;
    await_arrivals(&mut reader_events, "lobby", &["sender"]).await;
    // 600 KB for each, under its queue's 1 MiB; over 2 MB for the four.
    let sending = tokio::spawn(async move { pipeline(&mut sender, 300, 2000).await });
    // The one that reads gets everything, and is not cut off; one of the stalled ones is.
    let mut received = 0;
    let mut cut = 0;
    while received < 300 || cut == 0 {
        match next_server_event(&mut reader_events).await {
            Event::Message(message) if message.from == "sender" => received += 1,
            Event::Part(part) if part.users[0].starts_with("stalled") => {
                assert_eq!(part.reason, PartReason::TooSlow);
                cut += 1;
            }
            _ => {}
        }
    }
    within("the sender's confirmations", sending).await.unwrap();
    drop(stalled);
}
