//! Shared test fixtures: an in-process server, library clients, raw frame-level connections and
//! the `parley` binary as a child process. Every wait is bounded by [`WAIT`].

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use parley_client::{Client, ClientEvent, ConnectOptions, Events, RequestError};
use parley_proto::ErrorCode;
use parley_proto::request::{Join, Joined, Part};
use parley_proto::{Frame, FrameCodec, ServerMessage};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

pub use parley_proto::event::Event;
pub use parley_server::Config;

/// The longest any single expected thing may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// A server running in this process, sharing a fresh temporary folder.
pub struct TestServer {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<std::io::Result<()>>,
    pub shared: TempDir,
    /// The server's data folder, removed with it.
    data: TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with_config(Config::default()).await
    }

    /// A server without flood control, for tests that send faster than any person types
    /// (bursts, ordering under load, slow readers): flood control has its own, `flood.rs`.
    pub async fn unthrottled() -> Self {
        Self::with_config(Config {
            flood: None,
            ..Config::default()
        })
        .await
    }

    /// Starts a server with `config`, whatever its `shared_dir` and `data_dir`: each test has
    /// its own temporary folders. Plain TCP: the TLS tests use [`TestServer::with_tls`].
    pub async fn with_config(config: Config) -> Self {
        Self::with_tls(Config {
            tls: parley_server::TlsMode::Off,
            ..config
        })
        .await
    }

    /// Starts a server with `config`, its `tls` as given.
    pub async fn with_tls(config: Config) -> Self {
        let shared = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let config = Config {
            shared_dir: shared.path().to_owned(),
            data_dir: data.path().to_owned(),
            ..config
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(parley_server::serve(listener, config, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
            shared,
            data,
        }
    }

    /// Signs `name` in with the client library.
    pub async fn join(&self, name: &str) -> (Client, Events) {
        Client::connect(&self.options(name))
            .await
            .unwrap_or_else(|err| panic!("{name} could not sign in: {err}"))
    }

    pub fn options(&self, name: &str) -> ConnectOptions {
        ConnectOptions::new("127.0.0.1", self.addr.port(), name).plain()
    }

    /// The server's data folder (its database).
    pub fn data_path(&self) -> &std::path::Path {
        self.data.path()
    }

    pub async fn raw(&self) -> RawConn {
        RawConn::connect(self.addr).await
    }
}

/// Registers `name` with `password` through a guest session, and waits until it has signed
/// off, so that the name is free again.
pub async fn register(server: &TestServer, name: &str, password: &str) {
    let (client, mut events) = server.join(name).await;
    client
        .call(parley_proto::request::Register {
            password: password.into(),
        })
        .await
        .unwrap();
    client.quit().await.unwrap();
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Closed(_)).then_some(())
    })
    .await;
}

/// Puts `client` in `room`; the room's reply.
pub async fn join_room(client: &Client, room: &str) -> Joined {
    client.call(Join { room: room.into() }).await.unwrap()
}

/// Takes `client` out of `room`.
pub async fn part_room(client: &Client, room: &str) {
    client.call(Part { room: room.into() }).await.unwrap();
}

pub fn assert_refused<T: std::fmt::Debug>(result: Result<T, RequestError>, code: ErrorCode) {
    match result {
        Err(RequestError::Refused { code: got, .. }) if got == code => {}
        other => panic!("expected a refusal with {code}, got {other:?}"),
    }
}

/// The next event, failing the test if none comes within [`WAIT`].
pub async fn next_event(events: &mut Events) -> ClientEvent {
    timeout(WAIT, events.recv())
        .await
        .expect("no event within the wait")
        .expect("the event stream ended")
}

/// The next server event, which must not be the end of the connection.
pub async fn next_server_event(events: &mut Events) -> Event {
    match next_event(events).await {
        ClientEvent::Server(event) => event,
        ClientEvent::Closed(closed) => panic!("connection closed: {closed:?}"),
    }
}

/// Skips events until one matches, failing after [`WAIT`].
pub async fn wait_for<T>(
    events: &mut Events,
    mut pick: impl FnMut(&ClientEvent) -> Option<T>,
) -> T {
    timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("the event stream ended");
            if let Some(found) = pick(&event) {
                return found;
            }
            if let ClientEvent::Closed(closed) = event {
                panic!("connection closed while waiting: {closed:?}");
            }
        }
    })
    .await
    .expect("the awaited event did not come within the wait")
}

/// How long a transfer with [`ChatLatency::measure`] beside it may take, at most: its 80
/// messages may each take up to 2 s before the measurement fails.
pub const TRANSFER_AND_CHAT: Duration = Duration::from_secs(300);

/// Awaits `future` for at most [`WAIT`]; fails naming `what` if it takes longer.
pub async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// Waits until `events` has announced that each of `names` joined `room` (arrivals may come
/// one per event or many in one).
pub async fn await_arrivals(events: &mut Events, room: &str, names: &[&str]) {
    let mut missing: Vec<&str> = names.to_vec();
    while !missing.is_empty() {
        let arrived = wait_for(events, |event| match event {
            ClientEvent::Server(Event::Join(presence)) if presence.room == room => {
                Some(presence.users.clone())
            }
            _ => None,
        })
        .await;
        missing.retain(|name| !arrived.iter().any(|user| user == name));
    }
}

/// Asserts that no event arrives for a short while (used to check that something was *not*
/// delivered, after a later event proved the server had already routed it).
pub async fn assert_quiet(events: &mut Events) {
    if let Ok(event) = timeout(Duration::from_millis(200), events.recv()).await {
        panic!("expected no event, got {event:?}");
    }
}

/// A connection speaking raw frames, for testing what a misbehaving client can do.
pub struct RawConn {
    pub frames: FramedRead<tokio::net::tcp::OwnedReadHalf, FrameCodec>,
    pub write: tokio::net::tcp::OwnedWriteHalf,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, write) = stream.into_split();
        Self {
            frames: FramedRead::new(read, FrameCodec::client()),
            write,
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.write.write_all(bytes).await.unwrap();
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_bytes(&parley_proto::control_frame(&value)).await;
    }

    pub async fn hello(&mut self, name: &str) -> Value {
        self.send_json(json!({"id": 0, "type": "hello", "versions": [1], "name": name}))
            .await;
        let reply = self.recv_json().await;
        assert_eq!(reply["type"], "ok", "hello refused: {reply}");
        reply
    }

    /// The next control message as JSON, answering pings on the way; fails after [`WAIT`]
    /// in all, however many pings come meanwhile.
    pub async fn recv_json(&mut self) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.next()).await {
                Err(_) => panic!("no control message within the wait"),
                Ok(Some(Ok(Frame::Control(json)))) => {
                    // Also check that it decodes with the protocol crate.
                    ServerMessage::decode(&json).expect("the server sent an undecodable message");
                    return serde_json::from_slice(&json).unwrap();
                }
                Ok(Some(Ok(Frame::Ping))) => self.send_bytes(&Frame::Pong.to_bytes()).await,
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(err))) => panic!("an undecodable frame from the server: {err}"),
                Ok(None) => panic!("the connection closed before a control message"),
            }
        }
    }

    /// The next frame, `None` at end of stream.
    pub async fn recv_frame(&mut self) -> Option<Frame> {
        timeout(WAIT, self.frames.next())
            .await
            .expect("no frame within the wait")
            .map(|frame| frame.expect("an undecodable frame from the server"))
    }

    /// Asserts that the server closes the connection next (after any pings), within [`WAIT`].
    pub async fn expect_closed(&mut self) {
        let closed = tokio::time::timeout(WAIT, async {
            loop {
                match self.frames.next().await {
                    None => return,
                    Some(Ok(Frame::Ping | Frame::Pong)) => {}
                    Some(other) => panic!("expected the connection to close, got {other:?}"),
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the connection stayed open");
    }
}

/// The `parley` binary under test.
pub fn parley() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        // Plain TCP unless a test says otherwise: the TLS tests remove this.
        .env("PARLEY_NO_TLS", "1")
        .kill_on_drop(true);
    command
}

/// A running `parley` process with line-by-line access to its stdout.
pub struct Proc {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines<BufReader<ChildStdout>>,
    /// Every stdout line read so far, for failure messages.
    pub seen: Vec<String>,
    /// The process's working directory, removed when it is dropped.
    pub dir: TempDir,
}

impl Proc {
    /// Runs `parley` with `args` in a fresh temporary working directory.
    pub fn spawn(args: &[&str]) -> Self {
        Self::spawn_with(args, &[])
    }

    /// The same, with extra environment variables.
    pub fn spawn_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(tempfile::tempdir().unwrap(), args, env)
    }

    /// Runs `parley` with `args` in `dir`, an earlier process's working directory.
    pub fn spawn_in(dir: TempDir, args: &[&str]) -> Self {
        Self::launch(dir, args, &[])
    }

    /// Runs `parley` with TLS left on (the test environment otherwise turns it off).
    pub fn launch_tls(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(tempfile::tempdir().unwrap(), args, env, true)
    }

    fn launch(dir: TempDir, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start(dir, args, env, false)
    }

    fn start(dir: TempDir, args: &[&str], env: &[(&str, &str)], tls: bool) -> Self {
        let mut command = parley();
        if tls {
            command.env_remove("PARLEY_NO_TLS");
        }
        let mut child = command
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir.path())
            .spawn()
            .expect("parley runs");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
            seen: Vec::new(),
            dir,
        }
    }

    /// Starts `parley server 0` on 127.0.0.1 and returns it with the address it printed.
    pub async fn server() -> (Self, SocketAddr) {
        Self::server_with(&[]).await
    }

    /// `parley server` without flood control (`--flood-rate 0`, as the benchmarks run it),
    /// for tests that send faster than any person types.
    pub async fn unthrottled_server() -> (Self, SocketAddr) {
        Self::server_with(&["--flood-rate", "0"]).await
    }

    /// `parley server` on a free port of 127.0.0.1 with `extra` arguments.
    async fn server_with(extra: &[&str]) -> (Self, SocketAddr) {
        let args = [&["server", "0", "--host", "127.0.0.1"], extra].concat();
        let mut server = Self::spawn(&args);
        let line = server.expect_line(|l| l.contains("listening on")).await;
        let addr = line
            .split_whitespace()
            .find_map(|word| word.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        // Logged once the shared folder exists, so tests may put files in it.
        server
            .expect_line(|l| l.contains("sharing the folder"))
            .await;
        (server, addr)
    }

    /// Starts `parley client <name>` against `addr` and waits for its welcome line.
    pub async fn client(name: &str, addr: SocketAddr) -> Self {
        let port = addr.port().to_string();
        let mut proc = Self::spawn(&["client", name, "127.0.0.1", &port]);
        proc.expect_line(|l| l.starts_with("Connected to")).await;
        proc
    }

    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
    }

    /// Closes stdin: end of input.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Reads stdout until a line matches; fails after [`WAIT`] or at end of output.
    pub async fn expect_line(&mut self, mut matches: impl FnMut(&str) -> bool) -> String {
        let found = timeout(WAIT, async {
            while let Some(line) = self.stdout.next_line().await.unwrap() {
                self.seen.push(line.clone());
                if matches(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            Ok(None) => panic!(
                "output ended without the expected line; saw {:#?}",
                self.seen
            ),
            Err(_) => panic!(
                "the expected line did not come within the wait; saw {:#?}",
                self.seen
            ),
        }
    }

    /// Waits for the process to exit (stdin stays open: close it first to mean end of input);
    /// returns its exit code, all its stdout and its stderr.
    pub async fn finish(mut self) -> (i32, String, String) {
        let mut stdout = self.seen.join("\n");
        timeout(WAIT, async {
            while let Ok(Some(line)) = self.stdout.next_line().await {
                stdout.push('\n');
                stdout.push_str(line.as_str());
            }
        })
        .await
        .expect("the process did not close its output within the wait");
        let output = timeout(WAIT, self.child.wait_with_output())
            .await
            .expect("the process did not exit within the wait")
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            stdout,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("the process is running")
    }
}

/// Sends a Unix signal ("TERM", "KILL", ...) to a process.
pub fn signal(pid: u32, signal: &str) {
    use nix::sys::signal::{Signal, kill};
    let signal: Signal = format!("SIG{signal}").parse().expect("a signal name");
    kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("the signal was sent");
}

/// Chat to and from a busy client, measured: the worst delay from the server accepting a message
/// to `busy` receiving it, and the median and worst round trip of `busy`'s own messages.
pub struct ChatLatency {
    pub worst_delivery: Duration,
    pub median_round_trip: Duration,
    pub worst_round_trip: Duration,
}

impl ChatLatency {
    /// 40 exchanges between `other` and `busy`, 10 ms apart; `what` names the situation in the
    /// printed record. Fails if any message took 2 s: far less than the multi-gigabyte transfer
    /// it runs beside, so chat waiting behind the transfer would fail it, yet loose enough for
    /// two cores busy with the rest of the suite (the printed figures are the measurement;
    /// loaded runs reach ~0.3 s, a quiet one stays under 0.1 s).
    pub async fn measure(
        what: &str,
        busy: &Client,
        busy_events: &mut Events,
        other: &Client,
    ) -> ChatLatency {
        use parley_proto::request::Say;
        use std::time::{Instant, SystemTime, UNIX_EPOCH};
        let say = |text: String| Say {
            room: "lobby".into(),
            text,
        };
        let mut worst_delivery = Duration::ZERO;
        let mut round_trips = Vec::new();
        for i in 0..40 {
            within(
                "a message to the busy one",
                other.call(say(format!("to the busy one {i}"))),
            )
            .await
            .unwrap();
            let message = wait_for(busy_events, |e| match e {
                ClientEvent::Server(Event::Message(m)) => Some(m.clone()),
                _ => None,
            })
            .await;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            worst_delivery =
                worst_delivery.max(Duration::from_millis(now.saturating_sub(message.ts)));
            let sent = Instant::now();
            within(
                "a message from the busy one",
                busy.call(say(format!("from the busy one {i}"))),
            )
            .await
            .unwrap();
            round_trips.push(sent.elapsed());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        round_trips.sort();
        let latency = ChatLatency {
            worst_delivery,
            median_round_trip: round_trips[round_trips.len() / 2],
            worst_round_trip: *round_trips.last().unwrap(),
        };
        // For the record; docs/benchmarks.md will track this properly.
        eprintln!(
            "chat during {what}: delivery worst {:?}; request round trip median {:?}, worst {:?}",
            latency.worst_delivery, latency.median_round_trip, latency.worst_round_trip
        );
        let limit = Duration::from_secs(2);
        assert!(
            latency.worst_delivery < limit,
            "a message took {:?} to arrive",
            latency.worst_delivery
        );
        assert!(
            latency.worst_round_trip < limit,
            "a request took {:?}",
            latency.worst_round_trip
        );
        latency
    }
}
