//! One connection, from its first byte to its last: the handshake, requests, keepalive and an
//! orderly end.
//!
//! Each connection runs as a reader (this module's loop, which also carries out requests) and a
//! writer task that drains the session's [`Outbox`] into the socket. Replies and events travel
//! the same queue, so the writer is the only one touching the socket's write half, and a stalled
//! socket stalls only this connection's writer.
//!
//! One task running both, as `bench/floor`'s fastest shape does, was measured and dropped: it
//! saved 0.1 KiB per idle connection but cost 7% of fan-out to 100 receivers in alternating
//! runs, with fewer deliveries per read (31 against 38). A wake-up of either half polls both,
//! so, probably, the sender's session, woken by each confirmation it queues for itself, read
//! its socket sooner and in smaller bursts.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parley_proto::event::{Backlog, Bye, Event, PartReason, Private};
use parley_proto::frame::{PING_FRAME, PONG_FRAME, starts_with_frame};
use parley_proto::limits::{
    MAX_CLIENT_DESCRIPTION, MAX_DATA_CHUNK, MAX_HISTORY, MAX_PASSWORD_BYTES, MAX_TEXT_BYTES,
    SERVER_MAX_CONTROL_FRAME,
};
use parley_proto::names;
use parley_proto::reply::{error_frame, event_frame, ok_frame};
use parley_proto::request::{self, Empty, Hello, Messages, RoomList, Sent, Welcome};
use parley_proto::{DEFAULT_ROOM, SUPPORTED_VERSIONS};
use parley_proto::{ErrorCode, Frame, FrameCodec, FrameError, Request, RequestBody, RequestError};
use tokio::io::{AsyncRead, AsyncReadExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout};
use tokio_rustls::server::TlsStream;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ActiveGuard;
use crate::accounts::{self, Registry, Throttle};
use crate::config::Config;
use crate::files::Holder;
use crate::files::{OpenFile, SharedFolder};
use crate::flood::{self, Bucket, FloodLimit};
use crate::hub::{Hub, Refusal, SessionId};
use crate::outbox::{self, Halt, Halter, Outbox, Signal, Wakes};
use crate::recorder::{self, Receipt};
use crate::store::{Mailbox, Store, StoreError, Stored, Thread};
use crate::transfer::{Transfers, Upload};
use crate::web::Grants;
use crate::writer::{self, Sink};

/// After a session ends, how long its writer may take to deliver what is queued (the reply to
/// `quit`, a `bye`) before the socket is dropped anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// After the last frame is written, how long to wait for the peer to close its side.
const LINGER: Duration = Duration::from_secs(1);

/// Messages a session may have delivered but not yet confirmed (stored) before it stops
/// reading requests, and their most bytes of text: bounds what one connection holds in the
/// recorder's queue. The recorder commits every ~10 ms under load, so a sender at 35,000
/// messages a second has ~400 unconfirmed; at the bytes' bound, 64 of the longest.
const MAX_UNCONFIRMED: usize = 1024;
const MAX_UNCONFIRMED_TEXT: usize = 256 * 1024;

/// A new connection's read buffer, in bytes: enough for a `hello`, small because most
/// connections sit idle; it grows to the largest frame read, and is given back when silent.
const READ_BUFFER: usize = 512;

/// The read buffer of a client sending faster than it is read, in bytes. The buffer otherwise
/// stays the size of the largest frame, so a sender streaming small messages would be read two
/// or three at a time, and each small read makes a small burst for every receiver's writer.
const BUSY_READ_BUFFER: usize = 16 * 1024;

/// Most room messages said together as one burst (see [`Burst`]), and most bytes of text: a
/// burst is one buffer in every recipient's queue, so it stays far below the queue's limit.
const MAX_BURST: usize = 64;
const MAX_BURST_TEXT: usize = 64 * 1024;

/// Most pushes (one per recipient of each burst said) before the recipients' writers are
/// woken, even if more messages are already read: ~50 ns each, so the first recipient waits at most ~0.2 ms
/// longer than if each message woke them.
const MAX_DEFERRED_PUSHES: usize = 4096;

/// Locks for leaving kept messages (see `Context::mailbox_locks`): recipients rarely share one.
const MAILBOX_LOCKS: usize = 64;

/// What every session shares.
pub(crate) struct Context {
    pub(crate) hub: Hub,
    pub(crate) throttle: Throttle,
    /// Which names are registered, so that a guest's sign-in need not ask the store.
    pub(crate) registry: Registry,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) shared: Arc<SharedFolder>,
    pub(crate) config: Config,
    /// The tokens of browser sessions, for the HTTP file endpoints.
    pub(crate) grants: Grants,
    /// What the sessions' outgoing queues may hold, each and together.
    budget: Arc<outbox::Budget>,
    /// Cancelled when the server starts shutting down: HTTP connections then close.
    pub(crate) stopping: CancellationToken,
    /// Every session running, so that a shutdown reaches each, and so does its alarm.
    sessions: Mutex<Sessions>,
    next_session: AtomicU64,
    /// Where the server's clock for the sessions' alarms starts.
    epoch: Instant,
    /// Taken to leave a message in a mailbox, by the recipient's name (folded) hashed into
    /// one of these: its bounds are checked and the message stored before the next is
    /// checked, so that messages pipelined, or sent from many connections, cannot pass them.
    mailbox_locks: Box<[tokio::sync::Mutex<()>]>,
}

/// The sessions running, each by a handle that halts it.
#[derive(Default)]
struct Sessions {
    running: HashMap<SessionId, Halter>,
    /// Set by the shutdown: no session may start after it.
    closed: bool,
}

impl Context {
    pub(crate) fn new(
        config: Config,
        hub: Hub,
        store: Arc<dyn Store>,
        shared: SharedFolder,
    ) -> Self {
        // A socket that accepts nothing for the keepalive timeout, with frames waiting, is as
        // good as silent.
        let budget = outbox::Budget::new(
            config.max_queue_bytes,
            config.max_queued_total,
            config.keepalive_timeout,
        );
        Self {
            hub,
            throttle: Throttle::default(),
            registry: Registry::default(),
            store,
            shared: Arc::new(shared),
            config,
            grants: Grants::default(),
            budget,
            stopping: CancellationToken::new(),
            sessions: Mutex::default(),
            next_session: AtomicU64::new(1),
            epoch: Instant::now(),
            mailbox_locks: (0..MAILBOX_LOCKS).map(|_| Default::default()).collect(),
        }
    }

    /// The lock for leaving messages in `recipient`'s mailbox.
    fn mailbox_lock(&self, recipient: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(names::fold(recipient));
        &self.mailbox_locks[hash as usize % self.mailbox_locks.len()]
    }

    /// `at` on the clock of the sessions' alarms, in milliseconds, rounded up so that an alarm
    /// never rings early.
    fn alarm_time(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        since.as_nanos().div_ceil(1_000_000) as u64
    }

    /// `at` on the server's clock in microseconds, for flood control.
    fn clock_micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// The instant `micros` microseconds into the server's clock.
    fn instant_of(&self, micros: u64) -> Instant {
        self.epoch + Duration::from_micros(micros)
    }

    /// How often [`Context::ring_alarms`] should run: a tenth of the shortest wait a session
    /// sets its alarm for (300 ms by default), so none rings more than that late.
    pub(crate) fn alarm_tick(&self) -> Duration {
        let config = &self.config;
        let shortest = config
            .handshake_timeout
            .min(config.keepalive_interval)
            .min(config.keepalive_timeout);
        (shortest / 10).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// Rings the alarm of every session whose alarm is due. One task does this for all
    /// sessions, every [`Context::alarm_tick`]: a timer in each session's task made every
    /// idle connection 128 bytes larger, while looking at an alarm is one atomic read.
    pub(crate) fn ring_alarms(&self) {
        let now = self.alarm_time(Instant::now());
        for halter in self.sessions.lock().unwrap().running.values() {
            halter.ring(now);
        }
    }

    /// Halts every session for a shutdown, and every session that tries to start from now on.
    pub(crate) fn shut_down(&self) {
        self.stopping.cancel();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.closed = true;
        for halter in sessions.running.values() {
            halter.shut_down();
        }
    }

    /// Counts session `id` as running until its [`Session`] is dropped, unless the server is
    /// shutting down, in which case the session is halted at once.
    fn enter(&self, id: SessionId, outbox: &Outbox) {
        let mut sessions = self.sessions.lock().unwrap();
        let halter = outbox.halter();
        if sessions.closed {
            halter.shut_down();
        } else {
            sessions.running.insert(id, halter);
        }
    }
}

/// Why a session ended.
enum End {
    /// The client sent `quit`.
    Quit,
    /// The client closed the connection without `quit`.
    Closed,
    /// Reading failed (a reset, a broken pipe).
    Broken(std::io::Error),
    /// Writing failed: the peer is gone.
    WriteFailed,
    /// The client did not sign in in time.
    HandshakeTimeout,
    /// Nothing heard from the client for the keepalive timeout.
    Timeout,
    /// The client's outgoing queue overflowed.
    TooSlow,
    /// The server is shutting down.
    Shutdown,
    /// The client went on sending past the flood control's delay.
    Flooding(FloodLimit),
    /// The client broke the protocol; it is told why in a `bye`.
    Violation(ErrorCode, String),
    /// The handshake was refused; the error reply is already queued.
    Refused(String),
}

impl End {
    /// The `bye` to send, if the client should get one.
    fn bye(&self) -> Option<Bytes> {
        let (code, message) = match self {
            End::HandshakeTimeout => (
                ErrorCode::HandshakeTimeout,
                "No hello arrived in time; closing.".to_owned(),
            ),
            End::Timeout => (
                ErrorCode::Timeout,
                "Nothing heard from the client within the keepalive timeout; closing.".to_owned(),
            ),
            End::Shutdown => (
                ErrorCode::Shutdown,
                "The server is shutting down.".to_owned(),
            ),
            End::TooSlow => (
                ErrorCode::TooSlow,
                "You fell too far behind reading what the server sent; disconnected.".to_owned(),
            ),
            End::Flooding(limit) => (
                ErrorCode::Flooding,
                format!(
                    "You sent requests faster than this server allows ({} a second after a burst of {}) for too long; disconnected.",
                    limit.rate, limit.burst
                ),
            ),
            End::Violation(code, message) => (*code, message.clone()),
            End::Quit | End::Closed | End::Broken(_) | End::WriteFailed | End::Refused(_) => {
                return None;
            }
        };
        Some(event_frame(&Event::Bye(Bye { code, message })))
    }

    /// What the others are told, or `None` when nobody should be (the server is stopping).
    fn part_reason(&self) -> Option<PartReason> {
        Some(match self {
            End::Quit => PartReason::Quit,
            End::Closed | End::Broken(_) | End::WriteFailed => PartReason::Lost,
            End::Timeout | End::HandshakeTimeout => PartReason::Timeout,
            End::TooSlow => PartReason::TooSlow,
            End::Flooding(_) => PartReason::Flooding,
            End::Violation(..) | End::Refused(_) => PartReason::ProtocolError,
            End::Shutdown => return None,
        })
    }
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            End::Quit => f.write_str("quit"),
            End::Closed => f.write_str("connection closed"),
            End::Broken(err) => write!(f, "connection broken: {err}"),
            End::WriteFailed => f.write_str("connection broken while writing"),
            End::HandshakeTimeout => f.write_str("did not sign in in time"),
            End::Timeout => f.write_str("keepalive timeout"),
            End::TooSlow => f.write_str("too slow reading, outgoing queue full"),
            End::Shutdown => f.write_str("server shutting down"),
            End::Flooding(_) => f.write_str("flooding, past the delay flood control grants"),
            End::Violation(code, message) => write!(f, "protocol error ({code}): {message}"),
            End::Refused(message) => write!(f, "refused: {message}"),
        }
    }
}

/// A connection as the session needs it: a read half and a [`Sink`] to write to.
pub(crate) trait Transport: Send + 'static {
    type Reader: AsyncRead + Send + Unpin + 'static;
    type Writer: Sink;
    /// Whether the connection is encrypted (TLS).
    const SECURE: bool;

    fn split(self) -> (Self::Reader, Self::Writer);
}

/// Plain TCP: the write half can send files from the page cache.
impl Transport for TcpStream {
    type Reader = OwnedReadHalf;
    type Writer = OwnedWriteHalf;
    const SECURE: bool = false;

    fn split(self) -> (OwnedReadHalf, OwnedWriteHalf) {
        self.into_split()
    }
}

/// TLS: both halves share the encryption state.
impl Transport for Box<TlsStream<TcpStream>> {
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;
    const SECURE: bool = true;

    fn split(self) -> (ReadHalf<Self>, WriteHalf<Self>) {
        tokio::io::split(self)
    }
}

/// A browser's WebSocket, relayed through an in-memory pipe (see `web::socket`).
impl Transport for tokio::io::DuplexStream {
    type Reader = ReadHalf<Self>;
    type Writer = WriteHalf<Self>;
    // Whatever the page's connection was, the session's own pipe is in memory.
    const SECURE: bool = false;

    fn split(self) -> (ReadHalf<Self>, WriteHalf<Self>) {
        tokio::io::split(self)
    }
}

/// How a connection came to its session.
pub(crate) enum Arrival {
    /// Over the native protocol, with its first byte if it was read to tell the protocol.
    Native { read_ahead: Option<u8> },
    /// Over a browser's WebSocket: given a token for the HTTP file endpoints at sign-in.
    Browser,
}

/// Runs one connection to its end; `accepted` is when its TCP connection was accepted, so a
/// TLS handshake and the sign-in share one handshake timeout. `active` counts the connection
/// among the server's until then.
pub(crate) fn run<S>(
    stream: S,
    peer: SocketAddr,
    ctx: Arc<Context>,
    accepted: Instant,
    active: ActiveGuard,
    arrival: Arrival,
) -> impl Future<Output = ()> + Send
where
    S: Transport,
{
    // Everything is set up before the future is made, so that it holds what it uses and not
    // also the arguments it was made from: an async function keeps both, in every
    // connection's task, for as long as the session runs.
    let (read_half, write_half) = stream.split();
    // Until sign-in only control and keepalive frames are accepted: a data frame is refused
    // from its header, so an anonymous connection can make the server hold little.
    let anonymous = FrameCodec::with_limits(SERVER_MAX_CONTROL_FRAME, 0);
    // A `hello` is a few hundred bytes; the buffer grows for larger frames as they come.
    let mut frames = FramedRead::with_capacity(read_half, anonymous, READ_BUFFER);
    let web = match arrival {
        Arrival::Native { read_ahead } => {
            frames.read_buffer_mut().extend(read_ahead);
            false
        }
        Arrival::Browser => true,
    };
    let (outbox, queue) = ctx.budget.channel();
    let transfers_outbox = outbox.clone();
    let writer = tokio::spawn(writer::write_loop(write_half, queue));

    let id = ctx.next_session.fetch_add(1, Ordering::Relaxed);
    ctx.enter(id, &outbox);
    let mut session = Session {
        id,
        ctx,
        outbox,
        name: None,
        last_heard: accepted,
        ping_sent: false,
        peer,
        private_since: 0,
        registered: false,
        web,
        transfers: Transfers::new(transfers_outbox, S::Writer::ZERO_COPY),
        unconfirmed: Unconfirmed::default(),
        busy: None,
    };
    async move {
        let end = session.read_loop(&mut frames).await;
        // Boxed: what follows the end waits too, and the connection's task would otherwise
        // keep room for it all its life.
        Box::pin(finish(session, frames, writer, active, end)).await;
    }
}

/// Ends a session that ended for `end`: says what was read, answers a peer that can still
/// read, signs out, and waits (a bounded time) for the writer to deliver the last frames.
async fn finish<R: AsyncRead + Unpin>(
    mut session: Session,
    frames: FramedRead<R, FrameCodec>,
    mut writer: tokio::task::JoinHandle<()>,
    active: ActiveGuard,
    end: End,
) {
    // Messages read before the end are said, as they would have been had more followed,
    // and a peer that can still read is answered: a refused message's error waits in
    // `unconfirmed` behind the confirmations before it.
    session.say_burst();
    if !matches!(end, End::Broken(_) | End::WriteFailed | End::TooSlow) {
        let _ = timeout(FLUSH_TIMEOUT, session.confirm_all()).await;
    }
    if session.web {
        session.ctx.grants.revoke(session.id);
    }

    match &session.name {
        Some(name) => {
            session.ctx.hub.sign_out(session.id, end.part_reason());
            info!("{name} ({}) left: {end}", session.peer);
        }
        None => info!("{} left without signing in: {end}", session.peer),
    }
    if let Some(bye) = end.bye() {
        session.outbox.push_last(bye);
    }
    drop(session);
    // The writer ends once it has written the bye; a client too slow to read gets it only
    // if it reads within the flush timeout.
    if timeout(FLUSH_TIMEOUT, &mut writer).await.is_err() {
        writer.abort();
        let _ = writer.await;
    }
    if !matches!(end, End::Closed | End::Broken(_) | End::WriteFailed) {
        linger(frames.into_inner()).await;
    }
    drop(active);
}

/// Reads and discards what the peer still sends, until it closes or [`LINGER`] passes. Closing
/// a socket with unread input makes TCP send a reset, which can destroy the `bye` or error
/// reply just written before the peer reads it.
pub(crate) async fn linger<R: AsyncRead + Unpin>(mut read_half: R) {
    // On the heap: a buffer here would make every connection's task this much larger.
    let mut discard = vec![0u8; 4096];
    let _ = timeout(LINGER, async {
        while matches!(read_half.read(&mut discard).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Room messages read one after another, to one room, and not yet said. They are said
/// together once the read that brought them is handled, or before any other request: the hub
/// encodes them into one buffer that every recipient shares, so each recipient gets one push
/// and one slice of a write for the whole burst. Their replies wait in order behind those of
/// earlier requests, as every confirmation does.
#[derive(Default)]
struct Burst {
    room: String,
    /// The requests' ids and their texts' length, in the order read.
    requests: Vec<(u64, usize)>,
    texts: Vec<String>,
    /// The texts' length in bytes, against [`MAX_BURST_TEXT`].
    text_bytes: usize,
}

struct Session {
    id: SessionId,
    ctx: Arc<Context>,
    outbox: Outbox,
    /// Set once `hello` succeeds. A `Box<str>`, 8 bytes smaller than a `String`: this struct
    /// lives in every connection's task, whose size steps by 128 bytes.
    name: Option<Box<str>>,
    last_heard: Instant,
    ping_sent: bool,
    peer: SocketAddr,
    /// Private messages with ids up to this one belong to earlier holders of a guest name.
    private_since: u64,
    /// Signed in with a registered name: only those have messages kept while offline.
    registered: bool,
    /// A browser's session, over the WebSocket.
    web: bool,
    /// Downloads in progress; dropped (and so stopped) with the session.
    transfers: Transfers,
    /// Messages delivered and not yet stored. The session reads on meanwhile, so a sender's
    /// rate is not one message per disk commit.
    unconfirmed: Unconfirmed,
    /// What a busy session holds: made by the first request, given back when the client
    /// falls silent with nothing in it (an idle connection holds none).
    busy: Option<Box<Busy>>,
}

/// What a session that makes requests holds, apart so that an idle one holds none of it: in
/// one box, each a field of the session would make every connection's task larger, and its
/// size steps by 128 bytes.
#[derive(Default)]
struct Busy {
    /// Room messages read and not yet said.
    burst: Burst,
    /// The writers of those this session's messages went to, woken once the messages that
    /// arrived together are all read (or [`MAX_DEFERRED_PUSHES`] frames went out).
    wakes: Wakes,
    /// Flood control's state.
    lag: Lag,
    /// The id of the last kept message sent, while the page it ends waits to be written
    /// (see [`Session::deliver_mail`]).
    mail: Option<u64>,
    /// Set when that page is written: the session sends the next.
    mail_written: bool,
}

/// A session's flood control: its allowance, and the requests it holds back.
#[derive(Default)]
struct Lag {
    bucket: Bucket,
    /// Requests read and held back, in order, as their frames: one that falls due is read
    /// again as the next frame, so that it takes the same way as every other.
    delayed: VecDeque<Bytes>,
    /// The bytes of their frames, against [`flood::MAX_DELAYED_BYTES`].
    bytes: usize,
    /// When the first may run, if any waits.
    due_at: Option<Instant>,
    /// Set when the first was taken to run: the frame the session carries out next is it.
    released: bool,
}

/// Dropped, even by a panic, a session no longer counts as running (see [`Context::enter`]):
/// the guard is the session itself, which holds the context and its id already, rather than
/// a guard of its own in every connection's task.
impl Drop for Session {
    fn drop(&mut self) {
        self.ctx.sessions.lock().unwrap().running.remove(&self.id);
    }
}

impl Session {
    async fn read_loop<R>(&mut self, frames: &mut FramedRead<R, FrameCodec>) -> End
    where
        R: AsyncRead + Unpin,
    {
        // The alarm is set again only when it rings, so a busy connection costs nothing per
        // frame: on ringing it checks how long the client has really been silent.
        self.set_alarm(self.last_heard + self.ctx.config.handshake_timeout);
        loop {
            if self.busy.as_ref().is_some_and(|busy| busy.mail_written) {
                Box::pin(self.deliver_mail()).await;
            }
            let burst_read = !starts_with_frame(frames.read_buffer());
            if burst_read || self.unconfirmed.full_with(self.gathered()) {
                self.say_burst();
            }
            let pushed = self.busy.as_ref().map(|busy| &busy.wakes);
            if pushed.is_some_and(|wakes| {
                !wakes.is_empty()
                    && (wakes.pushed() >= MAX_DEFERRED_PUSHES
                        || self.unconfirmed.is_full()
                        || burst_read)
            }) {
                // The burst is read, or reading waits for the store: either way the next
                // request must be waited for.
                self.wake();
            }
            let signed_in = self.name.is_some();
            // A block of its own: what is read moves into the boxed step below, and the loop's
            // state keeps no room for it across the waits that follow (40 bytes each).
            {
                // A request flood control delayed, once due, comes before the next frame: it
                // is read again, as a frame (see `Session::take_due`). A branch of the select,
                // so that the loop's state keeps one place for what is read (a second would
                // be 40 bytes more of every connection's task).
                let due = !self.unconfirmed.is_full() && self.is_due();
                let next = tokio::select! {
                    biased;
                    () = std::future::ready(()), if due => {
                        Some(Ok(Frame::Control(self.take_due())))
                    }
                    signal = self.outbox.signalled() => {
                        match signal {
                            Signal::Halt(Halt::Shutdown) => return End::Shutdown,
                            Signal::Halt(Halt::TooSlow) => return End::TooSlow,
                            Signal::Halt(Halt::WriteFailed) => return End::WriteFailed,
                            Signal::Alarm => {}
                            // The page of kept messages sent last is written: the next goes,
                            // at the top of the loop. Sent from here, its wait would keep room
                            // beside the select's in every connection's task (24 bytes).
                            Signal::Written => {
                                if let Some(busy) = &mut self.busy {
                                    busy.mail_written = true;
                                }
                                continue;
                            }
                        }
                        match self.keepalive() {
                            Ok(wake_at) => self.set_alarm(wake_at),
                            Err(end) => return end,
                        }
                        // Flood control's delayed requests wait for the same alarm: a timer of
                        // their own would be room in every session's loop.
                        if let Some(due) = self.busy.as_ref().and_then(|busy| busy.lag.due_at) {
                            self.outbox.advance_alarm(self.ctx.alarm_time(due));
                        }
                        if self.ping_sent {
                            self.give_back_room(frames);
                        }
                        continue;
                    }
                    stored = self.unconfirmed.oldest_stored(), if !self.unconfirmed.is_empty() => {
                        self.confirm_oldest(stored);
                        continue;
                    }
                    next = frames.next(), if !self.unconfirmed.is_full() => next,
                };
                if !due {
                    self.last_heard = Instant::now();
                    self.ping_sent = false;
                }
                let frame = match next {
                    None => return End::Closed,
                    Some(Ok(frame)) => {
                        // More is already waiting behind this frame: the client is streaming.
                        let buffer = frames.read_buffer_mut();
                        if !buffer.is_empty() && buffer.capacity() < BUSY_READ_BUFFER {
                            buffer.reserve(BUSY_READ_BUFFER - buffer.len());
                        }
                        frame
                    }
                    Some(Err(FrameError::Io(err))) => return End::Broken(err),
                    Some(Err(err @ FrameError::TooLarge { .. })) => {
                        return End::Violation(
                            ErrorCode::FrameTooLarge,
                            format!("{err}; closing."),
                        );
                    }
                    Some(Err(err)) => {
                        return End::Violation(ErrorCode::BadFrame, format!("{err}; closing."));
                    }
                };
                match frame {
                    Frame::Ping => self.outbox.push(Bytes::from_static(&PONG_FRAME)),
                    // The answer to a ping, which only a client silent for a while is sent:
                    // what the ping itself took (the queue's room, the read buffer) is given
                    // back once it has served.
                    Frame::Pong => self.give_back_room(frames),
                    // Boxed: carrying out a request takes kilobytes of state, which an idle
                    // connection, waiting in this loop, should not hold. The frame moves into the
                    // box, so the loop holds no room for it either.
                    frame => {
                        if let Some(end) = Box::pin(self.carry_out(frame)).await {
                            return end;
                        }
                    }
                }
            }
            if !signed_in && self.name.is_some() {
                *frames.decoder_mut() = FrameCodec::server();
                // Most connections go quiet once signed in: the hello's buffer is not kept.
                release_read_buffer(frames);
                self.set_alarm(self.last_heard + self.ctx.config.keepalive_interval);
                Box::pin(self.after_sign_in()).await;
            }
        }
    }

    /// Gives back what a busy connection holds and a silent one does not need: the read
    /// buffer, which grew to hold the largest frame read, the outgoing queue's room, the room
    /// for a burst's wake-ups and for unconfirmed messages. Each grows again, from nothing,
    /// when frames come.
    fn give_back_room<R>(&mut self, frames: &mut FramedRead<R, FrameCodec>) {
        release_read_buffer(frames);
        self.outbox.shrink();
        if let Some(busy) = &mut self.busy {
            busy.wakes = Wakes::default();
        }
        self.unconfirmed.shrink();
        let now = self.ctx.clock_micros(Instant::now());
        if self.busy.as_ref().is_some_and(|busy| {
            busy.burst.requests.is_empty()
                && busy.lag.delayed.is_empty()
                && busy.lag.bucket.is_full(now)
                && busy.mail.is_none()
        }) {
            self.busy = None;
        }
    }

    /// Wakes the writers this session's messages went to since the last wake.
    fn wake(&mut self) {
        if let Some(busy) = &mut self.busy {
            busy.wakes.wake();
        }
    }

    /// The name signed in with (empty before `hello`).
    fn me(&self) -> String {
        self.name.as_deref().unwrap_or_default().to_owned()
    }

    /// Carries out a data or control frame; `Some` ends the session.
    async fn carry_out(&mut self, frame: Frame) -> Option<End> {
        match frame {
            Frame::Data { transfer, payload } => {
                // Storing the data may wait; the messages before it may not. A refused one is
                // answered before the data, which may end its upload.
                if self.say_burst() {
                    self.confirm_all().await;
                }
                self.wake();
                if let Some(end) = self.transfers.receive(transfer, payload).await {
                    self.outbox.push(end);
                }
                None
            }
            Frame::Control(json) => self.handle(json).await,
            Frame::Ping | Frame::Pong => None,
        }
    }

    /// Adds a room message to the burst being read. A burst holds one room's messages: one
    /// for another room says the burst first. A full burst is said at once.
    fn gather(&mut self, request: u64, say: request::Say) {
        if self
            .busy
            .as_ref()
            .is_some_and(|busy| !busy.burst.requests.is_empty() && busy.burst.room != say.room)
        {
            self.say_burst();
        }
        let burst = &mut self.busy.get_or_insert_default().burst;
        if burst.requests.is_empty() {
            burst.room = say.room;
        }
        burst.text_bytes += say.text.len();
        burst.requests.push((request, say.text.len()));
        burst.texts.push(say.text);
        if burst.requests.len() >= MAX_BURST || burst.text_bytes >= MAX_BURST_TEXT {
            self.say_burst();
        }
    }

    /// Room messages read and not yet said, and their bytes of text.
    fn gathered(&self) -> (usize, usize) {
        self.busy.as_ref().map_or((0, 0), |busy| {
            (busy.burst.requests.len(), busy.burst.text_bytes)
        })
    }

    /// Says the room messages gathered so far, in one buffer for all recipients; their
    /// replies wait in `unconfirmed` behind those of earlier requests. True if any was
    /// refused.
    fn say_burst(&mut self) -> bool {
        let Some(Busy { burst, wakes, .. }) = self.busy.as_deref_mut() else {
            return false;
        };
        if burst.requests.is_empty() {
            return false;
        }
        let mut refused = false;
        burst.text_bytes = 0;
        let said = self
            .ctx
            .hub
            .say(self.id, &burst.room, burst.texts.drain(..), wakes);
        for ((request, text_bytes), result) in burst.requests.drain(..).zip(said) {
            match result {
                Ok((sent, receipt)) => self.unconfirmed.push(
                    request,
                    receipt,
                    ok_frame::<request::Say>(request, &sent),
                    text_bytes,
                ),
                // Settled at once: its error leaves in its turn, after earlier confirmations.
                Err(refusal) => {
                    refused = true;
                    self.unconfirmed.push(
                        request,
                        recorder::settled(),
                        error_frame(request, refusal.code, &refusal.message),
                        0,
                    );
                }
            }
        }
        refused
    }

    /// Waits for the oldest unconfirmed message to be stored, then queues its confirmation (or
    /// the error saying it was delivered but not stored).
    async fn confirm_next(&mut self) {
        let stored = self.unconfirmed.oldest_stored().await;
        self.confirm_oldest(stored);
    }

    /// Waits until every message delivered so far is confirmed (or reported not stored).
    async fn confirm_all(&mut self) {
        while !self.unconfirmed.is_empty() {
            self.confirm_next().await;
        }
    }

    /// Queues the oldest unconfirmed message's confirmation, given whether it was `stored`.
    fn confirm_oldest(&mut self, stored: Result<(), Refusal>) {
        let Some((id, confirmation)) = self.unconfirmed.pop() else {
            return;
        };
        match stored {
            Ok(()) => self.outbox.push(confirmation),
            Err(refusal) => self
                .outbox
                .push(error_frame(id, refusal.code, &refusal.message)),
        }
    }

    /// Sets the session's alarm to ring at `at`.
    fn set_alarm(&self, at: Instant) {
        self.outbox.set_alarm(self.ctx.alarm_time(at));
    }

    /// Called when the alarm rings: pings a quiet client, gives up on a silent one, and says
    /// when to look again.
    fn keepalive(&mut self) -> Result<Instant, End> {
        let config = &self.ctx.config;
        if self.name.is_none() {
            return Err(End::HandshakeTimeout);
        }
        let silent = self.last_heard.elapsed();
        if silent >= config.keepalive_timeout {
            return Err(End::Timeout);
        }
        if silent >= config.keepalive_interval && !self.ping_sent {
            self.outbox.push(Bytes::from_static(&PING_FRAME));
            self.ping_sent = true;
        }
        Ok(if self.ping_sent {
            self.last_heard + config.keepalive_timeout
        } else {
            self.last_heard + config.keepalive_interval
        })
    }

    /// Carries out one control frame; `Some` ends the session. Requests are carried out one at
    /// a time, so replies leave in the order the requests came.
    async fn handle(&mut self, json: Bytes) -> Option<End> {
        let request = match Request::decode(&json) {
            Ok(request) => request,
            Err(RequestError {
                id: Some(id),
                code,
                message,
            }) => {
                self.say_burst();
                self.confirm_all().await;
                self.outbox.push(error_frame(id, code, &message));
                return self.name.is_none().then_some(End::Refused(message));
            }
            Err(RequestError { message, .. }) => {
                return Some(End::Violation(
                    ErrorCode::BadFrame,
                    format!("A control frame must hold a request with an id. {message}"),
                ));
            }
        };
        if self.name.is_none() {
            return self.hello(request).await;
        }
        if let Some(limit) = self.ctx.config.flood {
            let now = self.ctx.clock_micros(Instant::now());
            let lag = &mut self.busy.get_or_insert_default().lag;
            let counts = flood::counts(&request.body);
            if std::mem::take(&mut lag.released) {
                // Due, so its token is there; should the clock's rounding make it early, it
                // runs all the same, on the next request's account.
                if counts && lag.bucket.take(&limit, now).is_err() {
                    lag.bucket.force(&limit);
                }
                let end = self.execute(request).await;
                self.after_delayed(limit);
                return end;
            }
            // Behind requests already delayed, every request waits, to keep the order.
            let wait = match (lag.delayed.is_empty(), counts) {
                (false, _) => Err(0),
                (true, true) => lag.bucket.take(&limit, now),
                (true, false) => Ok(()),
            };
            if let Err(until) = wait {
                return self.delay(json, until, limit);
            }
        }
        self.execute(request).await
    }

    /// Holds `request` (its frame `bytes` long) back until `until` (microseconds of the
    /// server's clock), behind those held already; `Some` ends a session that went on
    /// sending past what flood control delays.
    fn delay(&mut self, json: Bytes, until: u64, limit: FloodLimit) -> Option<End> {
        let bytes = json.len();
        let at = self.ctx.instant_of(until);
        let lag = &mut self.busy.get_or_insert_default().lag;
        if lag.delayed.len() >= limit.max_delayed() || lag.bytes + bytes > flood::MAX_DELAYED_BYTES
        {
            return Some(End::Flooding(limit));
        }
        if lag.delayed.is_empty() {
            lag.due_at = Some(at);
            self.outbox.advance_alarm(self.ctx.alarm_time(at));
        }
        lag.bytes += bytes;
        lag.delayed.push_back(json);
        None
    }

    /// Whether the first request flood control delayed is due. The alarm wakes the session
    /// when one falls due (see [`Session::delay`]).
    fn is_due(&self) -> bool {
        self.busy.as_ref().map(|busy| &busy.lag).is_some_and(|lag| {
            !lag.delayed.is_empty() && lag.due_at.is_some_and(|due| due <= Instant::now())
        })
    }

    /// Takes the first request flood control delayed, which [`Session::is_due`]; it is read
    /// again as the next frame.
    fn take_due(&mut self) -> Bytes {
        let Some(lag) = self.busy.as_mut().map(|busy| &mut busy.lag) else {
            return Bytes::new();
        };
        let json = lag.delayed.pop_front().unwrap_or_default();
        lag.bytes -= json.len();
        lag.due_at = None;
        lag.released = true;
        json
    }

    /// After a delayed request ran: says when the next may.
    fn after_delayed(&mut self, limit: FloodLimit) {
        // Delayed messages come one by one: each is said at once, not gathered with the
        // next, which waits for its turn.
        self.say_burst();
        self.wake();
        let now = Instant::now();
        let ctx = &self.ctx;
        let due = self.busy.as_mut().and_then(|busy| {
            let lag = &mut busy.lag;
            if lag.delayed.is_empty() {
                // A flood's room is not kept.
                lag.delayed = VecDeque::new();
                return None;
            }
            // The next waits for a token even if it will not take one (the few that do not
            // count): what it is, is known only once it is read again.
            let due = ctx.instant_of(lag.bucket.allowed_at(&limit, ctx.clock_micros(now)));
            lag.due_at = Some(due);
            Some(due)
        });
        if let Some(due) = due {
            self.outbox.advance_alarm(self.ctx.alarm_time(due));
        }
    }

    /// Carries out a request of a signed-in session; `Some` ends the session.
    async fn execute(&mut self, request: Request) -> Option<End> {
        if !matches!(request.body, RequestBody::Say(_)) {
            // Only a room message is quick enough to keep a burst's recipients waiting.
            self.say_burst();
            self.wake();
        }
        if !matches!(request.body, RequestBody::Say(_) | RequestBody::Msg(_)) {
            // Replies leave in the order requests came: earlier messages are confirmed first.
            self.confirm_all().await;
        }
        let id = request.id;
        let hub = &self.ctx.hub;
        let reply = match request.body {
            RequestBody::Hello(_) => Err(Refusal {
                code: ErrorCode::AlreadySignedIn,
                message: "This connection is already signed in.".into(),
            }),
            // Said with the messages read together with it; confirmed to the sender only once
            // stored. The confirmation waits in `unconfirmed` while the next requests are read.
            RequestBody::Say(say) => {
                self.gather(id, say);
                return None;
            }
            RequestBody::Msg(msg) => match (msg.text.len(), self.msg(msg).await) {
                (text_bytes, Ok((sent, receipt))) => {
                    let confirmation = ok_frame::<request::Msg>(id, &sent);
                    self.unconfirmed.push(id, receipt, confirmation, text_bytes);
                    return None;
                }
                (_, Err(refusal)) => Err(refusal),
            },
            RequestBody::Register(register) => self
                .register(register)
                .await
                .map(|()| ok_frame::<request::Register>(id, &Empty {})),
            RequestBody::Passwd(passwd) => self
                .passwd(passwd)
                .await
                .map(|()| ok_frame::<request::Passwd>(id, &Empty {})),
            RequestBody::History(history) => self
                .history(history)
                .await
                .map(|messages| ok_frame::<request::History>(id, &Messages { messages })),
            RequestBody::Search(search) => self
                .search(search)
                .await
                .map(|messages| ok_frame::<request::Search>(id, &Messages { messages })),
            RequestBody::Join(join) => {
                // The hub queues the reply itself, ahead of the room's next event.
                let mut room = None;
                match hub.join(self.id, &join.room, |joined| {
                    room = Some(joined.room.clone());
                    ok_frame::<request::Join>(id, joined)
                }) {
                    Ok(()) => {
                        if let Some(room) = room {
                            self.send_backlog(room).await;
                        }
                        return None;
                    }
                    Err(refusal) => Err(refusal),
                }
            }
            RequestBody::Part(part) => hub
                .part(self.id, &part.room)
                .map(|room| ok_frame::<request::Part>(id, &request::Parted { room })),
            RequestBody::Rooms(_) => Ok(ok_frame::<request::Rooms>(
                id,
                &RoomList {
                    rooms: hub.rooms(self.id),
                },
            )),
            RequestBody::Users(users) => hub
                .users(users.room.as_deref(), users.after.as_deref())
                .map(|list| ok_frame::<request::Users>(id, &list)),
            RequestBody::List(list) => {
                let (shared, user) = (self.ctx.shared.clone(), self.me());
                // File system calls block; they run on tokio's blocking pool.
                tokio::task::spawn_blocking(move || shared.list(&user, &list.path))
                    .await
                    .unwrap_or_else(|err| {
                        Err(Refusal {
                            code: ErrorCode::NoSuchFile,
                            message: format!("Listing failed: {err}."),
                        })
                    })
                    .map(|listing| ok_frame::<request::List>(id, &listing))
            }
            RequestBody::Download(download) => match self.download(download).await {
                Ok((downloading, file)) => {
                    // The reply goes out first: the writer prefers control frames, and the
                    // transfer starts only once its reply is queued.
                    self.outbox
                        .push(ok_frame::<request::Download>(id, &downloading));
                    let request::Downloading {
                        transfer,
                        offset,
                        window,
                        ..
                    } = downloading;
                    let shared = self.ctx.shared.clone();
                    self.transfers
                        .start_download(transfer, file, offset, window, shared);
                    return None;
                }
                Err(refusal) => Err(refusal),
            },
            RequestBody::DownloadProgress(progress) => {
                (self.transfers).download_progress(progress.transfer, progress.received);
                Ok(ok_frame::<request::DownloadProgress>(id, &Empty {}))
            }
            RequestBody::Cancel(cancel) => match self.transfers.cancel(cancel.transfer).await {
                Ok(upload_end) => {
                    self.outbox.push(ok_frame::<request::Cancel>(id, &Empty {}));
                    if let Some(end) = upload_end {
                        self.outbox.push(end);
                    }
                    return None;
                }
                Err(refusal) => Err(refusal),
            },
            RequestBody::Upload(upload) => {
                let transfer = upload.transfer;
                self.upload(upload).await.map(|()| {
                    let uploading = request::Uploading {
                        transfer,
                        max_chunk: MAX_DATA_CHUNK,
                        window: crate::transfer::UPLOAD_WINDOW,
                    };
                    ok_frame::<request::Upload>(id, &uploading)
                })
            }
            RequestBody::Finish(finish) => self
                .finish(finish)
                .await
                .map(|uploaded| ok_frame::<request::Finish>(id, &uploaded)),
            RequestBody::Quit(_) => {
                self.outbox.push(ok_frame::<request::Quit>(id, &Empty {}));
                return Some(End::Quit);
            }
        };
        let frame = match reply {
            Ok(frame) => frame,
            Err(refusal) => {
                // A refused message is answered after the confirmations before it.
                self.confirm_all().await;
                error_frame(id, refusal.code, &refusal.message)
            }
        };
        self.outbox.push(frame);
        None
    }

    /// A private message: delivered if its recipient is online, kept for their next sign-in if
    /// they are a registered user who is not.
    async fn msg(&self, msg: request::Msg) -> Result<(Sent, Receipt), Refusal> {
        let hub = &self.ctx.hub;
        match hub.msg(self.id, &msg.to, msg.text.clone()) {
            Err(refusal) if refusal.code == ErrorCode::NotFound => {
                let _turn = self.ctx.mailbox_lock(&msg.to).lock().await;
                let store = self.ctx.store.clone();
                let (lookup, sender) = (msg.to.clone(), self.me());
                let found = read(move || match store.account(&lookup)? {
                    Some(account) => {
                        let mailbox = store.mailbox(&account.name, &sender)?;
                        Ok(Some((account, mailbox)))
                    }
                    None => Ok(None),
                });
                let Some((account, mailbox)) = found.await? else {
                    return Err(refusal);
                };
                self.check_mailbox(&account.name, &mailbox, msg.text.len())?;
                let (sent, receipt) = hub.msg_offline(self.id, &account.name, msg.text)?;
                if !sent.queued {
                    return Ok((sent, receipt));
                }
                // Stored before the lock is let go, so the next check counts it.
                match receipt.await {
                    Ok(Ok(())) => Ok((sent, recorder::settled())),
                    Ok(Err(reason)) => Err(storage_failed(reason)),
                    Err(_) => Err(storage_failed("the recorder stopped".into())),
                }
            }
            other => other,
        }
    }

    /// Refuses a message of `text_bytes` to `to` if their mailbox is full, or holds as much
    /// from this sender as one sender may: a quarter of its bounds, so that others can still
    /// leave messages there however much one sends.
    fn check_mailbox(&self, to: &str, mailbox: &Mailbox, text_bytes: usize) -> Result<(), Refusal> {
        let config = &self.ctx.config;
        let (most, most_bytes) = (config.mailbox_max.max(1), config.mailbox_max_bytes);
        let full = |message: String| {
            Err(Refusal {
                code: ErrorCode::MailboxFull,
                message,
            })
        };
        if mailbox.messages >= most || mailbox.bytes + text_bytes > most_bytes {
            return full(format!(
                "{to}'s mailbox is full ({} messages kept, at most {most} or {most_bytes} bytes); try again once {to} has signed in.",
                mailbox.messages
            ));
        }
        let (share, share_bytes) = (most.div_ceil(SENDER_SHARE), most_bytes / SENDER_SHARE);
        if mailbox.from_sender >= share || mailbox.bytes_from_sender + text_bytes > share_bytes {
            return full(format!(
                "You have left {to} as much as one sender may ({share} messages or {share_bytes} bytes); the rest must wait until {to} has signed in."
            ));
        }
        Ok(())
    }

    /// Sends the last messages of `room` as a `backlog` event, if there are any. The hub keeps
    /// the event until the room's next message, so a crowd entering at once (a server restart,
    /// a class starting) reads the store once, not once each.
    async fn send_backlog(&mut self, room: String) {
        let count = self.ctx.config.backlog.min(MAX_HISTORY);
        if count == 0 || !self.ctx.config.keep_history {
            return;
        }
        let hub = &self.ctx.hub;
        let backlog = match hub.cached_backlog(&room) {
            Some(backlog) => backlog,
            None => {
                let stored = hub.stored_through();
                let store = self.ctx.store.clone();
                let thread = Thread::Room(room.clone());
                let read = tokio::task::spawn_blocking(move || store.history(&thread, None, count));
                let messages = match read.await {
                    Ok(Ok(messages)) => messages,
                    Ok(Err(err)) => return warn!("reading the backlog of #{room} failed: {err}"),
                    Err(err) => return warn!("reading the backlog of #{room} failed: {err}"),
                };
                let backlog = (!messages.is_empty()).then(|| {
                    let messages = fit(messages, Keep::Last);
                    event_frame(&Event::Backlog(Backlog {
                        room: room.clone(),
                        messages,
                    }))
                });
                hub.cache_backlog(&room, stored, backlog.clone());
                backlog
            }
        };
        if let Some(backlog) = backlog {
            self.outbox.push(backlog);
        }
    }

    /// Stored messages of a room the client is in, or of its private conversation with someone.
    async fn history(&self, history: request::History) -> Result<Vec<Stored>, Refusal> {
        let me = self.me();
        let thread = match (history.with, history.room) {
            (Some(with), _) => Thread::Private(me, with, self.private_since),
            (None, Some(room)) => {
                let room = parley_proto::names::canonical_room(&room);
                names::validate_room_name(&room).map_err(|err| Refusal {
                    code: ErrorCode::InvalidRoom,
                    message: format!("The room name {room:?} is not allowed: {err}."),
                })?;
                if !self.ctx.hub.rooms_of(self.id).contains(&room) {
                    return Err(Refusal {
                        code: ErrorCode::NotInRoom,
                        message: format!("You are not in #{room}; /join it to read its history."),
                    });
                }
                Thread::Room(room)
            }
            (None, None) => {
                return Err(Refusal {
                    code: ErrorCode::BadRequest,
                    message: "Name a room or a user whose history to read.".into(),
                });
            }
        };
        let limit = history.limit.clamp(1, MAX_HISTORY);
        let store = self.ctx.store.clone();
        let found = read(move || store.history(&thread, history.before, limit)).await?;
        Ok(fit(found, Keep::Last))
    }

    /// Stored messages the client may see (its rooms' and its private ones) with all `words`.
    async fn search(&self, search: request::Search) -> Result<Vec<Stored>, Refusal> {
        let me = self.me();
        let rooms = self.ctx.hub.rooms_of(self.id);
        let limit = search.limit.clamp(1, MAX_HISTORY);
        let store = self.ctx.store.clone();
        let since = self.private_since;
        let found = read(move || store.search(&me, &rooms, since, &search.words, limit)).await?;
        Ok(fit(found, Keep::First))
    }

    /// Opens the file a `download` asks for and says what will come.
    async fn download(
        &mut self,
        download: request::Download,
    ) -> Result<(request::Downloading, OpenFile), Refusal> {
        self.transfers.check_new(download.transfer)?;
        let (shared, user) = (self.ctx.shared.clone(), self.me());
        let path = download.path;
        let file = tokio::task::spawn_blocking(move || shared.open_file(&user, &path))
            .await
            .unwrap_or_else(|err| {
                Err(Refusal {
                    code: ErrorCode::NoSuchFile,
                    message: format!("Opening the file failed: {err}."),
                })
            })?;
        let offset = if download.offset > file.size {
            0
        } else {
            download.offset
        };
        Ok((
            request::Downloading {
                transfer: download.transfer,
                path: file.path.clone(),
                name: file.name.clone(),
                size: file.size,
                offset,
                window: download.window,
            },
            file,
        ))
    }

    /// Checks an `upload` and prepares its staged file.
    async fn upload(&mut self, upload: request::Upload) -> Result<(), Refusal> {
        self.transfers.check_new(upload.transfer)?;
        let user = self.name.as_deref().unwrap_or_default();
        let (config, shared) = (&self.ctx.config, &self.ctx.shared);
        let holder = Holder::new(self.id, self.peer.ip(), !self.registered);
        let prepared = Upload::prepare(
            config,
            shared,
            user,
            &holder,
            upload.folder,
            upload.name,
            upload.size,
        )
        .await?;
        let idle = config.upload_idle_timeout;
        self.transfers.start_upload(upload.transfer, prepared, idle);
        Ok(())
    }

    /// Verifies a complete upload, moves it into the shared folder and tells everyone.
    async fn finish(&mut self, finish: request::Finish) -> Result<request::Uploaded, Refusal> {
        let (upload, hash) = self
            .transfers
            .take_verified(finish.transfer, &finish.blake3)
            .await?;
        let user = self.me();
        let uploaded = upload.publish(hash, &user).await?;
        let (path, size) = (&uploaded.path, uploaded.size);
        info!("{user} shared {path:?} ({size} bytes)");
        self.ctx.hub.announce_shared(self.id, &user, path, size);
        Ok(uploaded)
    }

    /// The first request must be a `hello` that the server accepts; anything else ends the
    /// session after an error reply.
    async fn hello(&mut self, request: Request) -> Option<End> {
        let id = request.id;
        match self.sign_in(request).await {
            Ok(()) => None,
            Err(refusal) => {
                self.outbox
                    .push(error_frame(id, refusal.code, &refusal.message));
                Some(End::Refused(refusal.message))
            }
        }
    }

    async fn sign_in(&mut self, request: Request) -> Result<(), Refusal> {
        let id = request.id;
        let refuse = |code, message: String| Err(Refusal { code, message });
        let RequestBody::Hello(hello) = request.body else {
            return refuse(
                ErrorCode::HandshakeRequired,
                "Sign in with a hello request first.".into(),
            );
        };
        if hello
            .client
            .as_ref()
            .is_some_and(|c| c.len() > MAX_CLIENT_DESCRIPTION)
        {
            return refuse(
                ErrorCode::BadRequest,
                format!(
                    "The client description can be at most {MAX_CLIENT_DESCRIPTION} bytes long."
                ),
            );
        }
        let Some(version) = negotiate(&hello.versions) else {
            return refuse(
                ErrorCode::UnsupportedVersion,
                format!(
                    "This server speaks protocol version {SUPPORTED_VERSIONS:?}; the client offered {:?}. Upgrade the older side.",
                    hello.versions
                ),
            );
        };
        (self.private_since, self.registered) = self
            .authenticate(&hello.name, hello.password.as_deref())
            .await?;
        let config = &self.ctx.config;
        let token = self.web.then(Grants::new_token);
        let welcome = |room: &str, online: Vec<String>, online_count: usize| {
            ok_frame::<Hello>(
                id,
                &Welcome {
                    version,
                    server: concat!("parley/", env!("CARGO_PKG_VERSION")).into(),
                    name: hello.name.clone(),
                    room: room.into(),
                    online,
                    online_count,
                    roster_limit: config.roster_limit.max(1),
                    keepalive_ms: config.keepalive_interval.as_millis() as u64,
                    timeout_ms: config.keepalive_timeout.as_millis() as u64,
                    max_text: MAX_TEXT_BYTES,
                    token: token.clone(),
                },
            )
        };
        // Granted before the welcome can leave, so the page may use the token at once.
        if let Some(token) = &token {
            // The page's HTTP uploads hold disk space as this session's own.
            let holder = Holder::new(self.id, self.peer.ip(), !self.registered);
            (self.ctx.grants).grant(token.clone(), self.id, &hello.name, holder);
        }
        let signed_in = self
            .ctx
            .hub
            .sign_in(self.id, &hello.name, self.outbox.clone(), welcome);
        if signed_in.is_err() && token.is_some() {
            self.ctx.grants.revoke(self.id);
        }
        signed_in?;
        debug!(client = ?hello.client, "signed in as {}", hello.name);
        self.name = Some(hello.name.into_boxed_str());
        Ok(())
    }

    /// Lets a guest name through (unless the server requires accounts) and a registered name
    /// only with its password; failures slow down the next tries for that name and address.
    /// Returns where the name's private history starts (ids above it are the name's), and
    /// whether the name is registered.
    async fn authenticate(
        &self,
        name: &str,
        password: Option<&str>,
    ) -> Result<(u64, bool), Refusal> {
        names::validate_user_name(name).map_err(|err| Refusal {
            code: ErrorCode::InvalidName,
            message: format!("The name {name:?} is not allowed: {err}."),
        })?;
        // A guest's name, known as such a moment ago, needs no trip to the store. A password
        // says its sender believes the name registered: the store is asked then, so an
        // account just made by `parley admin` works at once.
        let account = if password.is_none() && self.ctx.registry.surely_unregistered(name) {
            None
        } else {
            let ctx = self.ctx.clone();
            let lookup = name.to_owned();
            read(move || {
                ctx.registry.refresh(&*ctx.store)?;
                ctx.store.account(&lookup)
            })
            .await?
        };
        let Some(account) = account else {
            if self.ctx.config.require_account {
                return Err(Refusal {
                    code: ErrorCode::AccountRequired,
                    message: "This server accepts registered names only; ask its administrator for an account.".into(),
                });
            }
            // A guest name is anyone's: its private history starts with this session.
            return Ok((self.ctx.hub.last_id(), false));
        };
        let Some(password) = password else {
            return Err(Refusal {
                code: ErrorCode::AuthFailed,
                message: format!("The name {name} is registered: sign in with its password."),
            });
        };
        self.check_password(name, password, account.hash).await?;
        Ok((account.since_id, true))
    }

    /// Checks `password` against `hash` in its turn: guesses at one name wait in line, each
    /// slowed down by recent failures for the name or the address, and a failure is counted
    /// before the next in line is checked; then the check waits for one of the server's
    /// permits for Argon2 runs. Before sign-in both waits count against the handshake
    /// timeout, whose alarm is set already; signed in (`passwd`), the wait is
    /// bounded anyway: the line is fair, and everyone ahead is a sign-in that its own
    /// handshake timeout ends.
    async fn check_password(
        &self,
        name: &str,
        password: &str,
        hash: String,
    ) -> Result<(), Refusal> {
        let folded = names::fold(name);
        let keys = [format!("name:{folded}"), format!("ip:{}", self.peer.ip())];
        let throttle = &self.ctx.throttle;
        let turn = async {
            let turn = throttle.turn(&folded, &keys).await;
            (turn, throttle.permit().await)
        };
        let (_turn, permit) = if self.name.is_some() {
            turn.await
        } else {
            tokio::select! {
                turn = turn => turn,
                // Seen here, the alarm is the handshake's. The session ends after the
                // refusal, as after any failed `hello`.
                signal = self.outbox.signalled() => {
                    let (code, message) = match signal {
                        // No kept message is sent before sign-in, so `Written` is not
                        // seen here: it is counted with the alarm only to be whole.
                        Signal::Alarm | Signal::Written => (
                            ErrorCode::HandshakeTimeout,
                            format!("No sign-in in time: tries for {name} wait in line; closing."),
                        ),
                        // The connection ends for the halt's reason; the reply is only
                        // read after a shutdown, the other halts being a dead or stalled peer.
                        Signal::Halt(Halt::Shutdown) => {
                            (ErrorCode::Shutdown, "The server is shutting down.".to_owned())
                        }
                        Signal::Halt(Halt::TooSlow | Halt::WriteFailed) => {
                            (ErrorCode::TooSlow, "The connection stalled; closing.".to_owned())
                        }
                    };
                    return Err(Refusal { code, message });
                }
            }
        };
        // Hashing is costly on purpose: what is longer than any password can be is refused
        // without feeding it to Argon2.
        if password.len() > MAX_PASSWORD_BYTES {
            throttle.failed(&keys);
            return Err(Refusal {
                code: ErrorCode::AuthFailed,
                message: format!("Wrong password for {name}."),
            });
        }
        if throttle.verify(permit, password.to_owned(), hash).await {
            throttle.succeeded(&keys);
            return Ok(());
        }
        throttle.failed(&keys);
        warn!("a wrong password for {name} from {}", self.peer);
        Err(Refusal {
            code: ErrorCode::AuthFailed,
            message: format!("Wrong password for {name}."),
        })
    }

    /// After signing in: the lobby's backlog, then private messages kept while offline.
    async fn after_sign_in(&mut self) {
        self.send_backlog(DEFAULT_ROOM.to_owned()).await;
        // Messages are kept only for registered names (`msg` to an offline guest is refused).
        if !self.registered {
            return;
        }
        let store = self.ctx.store.clone();
        let name = self.me();
        match read(move || store.undelivered(&name, 0, MAIL_PAGE)).await {
            Ok(page) => self.send_mail(page),
            Err(refusal) => warn!("delivering kept messages failed: {}", refusal.message),
        }
    }

    /// Once the last page of kept messages is written: marks it delivered and sends the next.
    /// What a broken connection had not written stays kept for the next sign-in (at most the
    /// page being written comes twice); nothing kept waits in the queue, so none is lost to
    /// an overflow, however many are kept.
    async fn deliver_mail(&mut self) {
        let Some(through) = self.busy.as_mut().and_then(|busy| {
            busy.mail_written = false;
            busy.mail.take()
        }) else {
            return;
        };
        let store = self.ctx.store.clone();
        let name = self.me();
        let next = read(move || {
            store.mark_delivered(&name, through)?;
            store.undelivered(&name, through, MAIL_PAGE)
        });
        match next.await {
            Ok(page) => self.send_mail(page),
            Err(refusal) => warn!("delivering kept messages failed: {}", refusal.message),
        }
    }

    /// Sends as much of `page` as fits in a page's bytes (one message at least), and asks
    /// to be told once it is written.
    fn send_mail(&mut self, page: Vec<Stored>) {
        let budget = (self.ctx.config.max_queue_bytes / 4).min(MAIL_PAGE_BYTES);
        let mut bytes = 0;
        let mut last = None;
        for message in page {
            let private = event_frame(&Event::Private(Private {
                id: message.id,
                ts: message.ts,
                from: message.from,
                to: message.to.unwrap_or_default(),
                text: message.text,
            }));
            if last.is_some() && bytes + private.len() > budget {
                break;
            }
            bytes += private.len();
            last = Some(message.id);
            self.outbox.push(private);
        }
        if let Some(last) = last {
            self.busy.get_or_insert_default().mail = Some(last);
            self.outbox.signal_when_written();
        }
    }

    /// `register`: the signed-in name becomes an account.
    async fn register(&self, register: request::Register) -> Result<(), Refusal> {
        accounts::check_strength(&register.password)?;
        let name = self.me();
        let hash = hash_password(&self.ctx.throttle, register.password).await?;
        let store = self.ctx.store.clone();
        let owner = name.clone();
        // The account owns what this session saw, not what earlier guests of the name did.
        let since = self.private_since;
        if !read(move || store.create_account(&owner, &hash, since)).await? {
            return Err(Refusal {
                code: ErrorCode::AlreadyRegistered,
                message: format!(
                    "The name {name} is registered already; /passwd changes its password."
                ),
            });
        }
        self.ctx.registry.made(&name);
        info!("{name} registered");
        Ok(())
    }

    /// `passwd`: a new password for the signed-in account, given the current one.
    async fn passwd(&self, passwd: request::Passwd) -> Result<(), Refusal> {
        let name = self.me();
        let store = self.ctx.store.clone();
        let lookup = name.clone();
        let Some(account) = read(move || store.account(&lookup)).await? else {
            return Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!("The name {name} is not registered; /register it first."),
            });
        };
        self.check_password(&name, &passwd.old, account.hash)
            .await?;
        accounts::check_strength(&passwd.new)?;
        let hash = hash_password(&self.ctx.throttle, passwd.new).await?;
        let store = self.ctx.store.clone();
        let owner = name.clone();
        if !read(move || store.set_password(&owner, &hash)).await? {
            return Err(Refusal {
                code: ErrorCode::BadRequest,
                message: format!("The name {name} is no longer registered."),
            });
        }
        Ok(())
    }
}

/// One sender may hold at most 1/this of a recipient's mailbox.
const SENDER_SHARE: usize = 4;

/// Kept messages read for one page of their delivery, at most, and the most bytes of events
/// a page may queue (a quarter of the queue's limit if that is less): a page is all the
/// queue holds of them, far below its limit.
const MAIL_PAGE: usize = 64;
const MAIL_PAGE_BYTES: usize = 64 * 1024;

/// The most a reply or event of stored messages may take of a client's outgoing queue: well
/// within it, so that long messages never make a history reply cut the client off as too slow.
const MESSAGES_BUDGET: usize = 256 * 1024;

/// Which end of a list of messages to keep when it is too big to send.
enum Keep {
    First,
    Last,
}

/// Drops messages from one end until the rest fit in [`MESSAGES_BUDGET`].
fn fit(mut messages: Vec<Stored>, keep: Keep) -> Vec<Stored> {
    // Each message costs what it takes as JSON, escapes included, plus a separator.
    let cost = |m: &Stored| serde_json::to_vec(m).map_or(usize::MAX / 2, |json| json.len() + 1);
    let fitting = |messages: &mut dyn Iterator<Item = &Stored>| {
        let mut total = 0;
        messages
            .take_while(|m| {
                total += cost(m);
                total <= MESSAGES_BUDGET
            })
            .count()
    };
    let fits = match keep {
        Keep::First => fitting(&mut messages.iter()),
        Keep::Last => fitting(&mut messages.iter().rev()),
    };
    match keep {
        Keep::First => messages.truncate(fits),
        Keep::Last => {
            messages.drain(..messages.len() - fits);
        }
    }
    messages
}

/// Hashes a password on the blocking pool, within the server's bound on Argon2 runs.
async fn hash_password(throttle: &Throttle, password: String) -> Result<String, Refusal> {
    throttle.hash(password).await.map_err(storage_failed)
}

/// Gives back `frames`' read buffer if it holds nothing; reading grows it again as needed.
fn release_read_buffer<R>(frames: &mut FramedRead<R, FrameCodec>) {
    if frames.read_buffer().is_empty() {
        *frames.read_buffer_mut() = BytesMut::new();
    }
}

/// A session's messages delivered and not yet stored, oldest first, each with its request
/// id, its receipt, the confirmation to send once stored and its bytes of text; bounded by
/// [`MAX_UNCONFIRMED`] and [`MAX_UNCONFIRMED_TEXT`].
#[derive(Default)]
struct Unconfirmed {
    waiting: VecDeque<(u64, Receipt, Bytes, usize)>,
    /// Their text, held in the recorder's queue until stored.
    text_bytes: usize,
}

impl Unconfirmed {
    fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether the bounds are reached: no more requests are read until the oldest is stored.
    fn is_full(&self) -> bool {
        self.full_with((0, 0))
    }

    /// Whether the bounds are reached once `(messages, text_bytes)` more wait.
    fn full_with(&self, (messages, text_bytes): (usize, usize)) -> bool {
        self.waiting.len() + messages >= MAX_UNCONFIRMED
            || self.text_bytes + text_bytes >= MAX_UNCONFIRMED_TEXT
    }

    fn push(&mut self, request: u64, receipt: Receipt, confirmation: Bytes, text_bytes: usize) {
        self.text_bytes += text_bytes;
        self.waiting
            .push_back((request, receipt, confirmation, text_bytes));
    }

    /// Gives back the room a burst of messages made, if none waits now.
    fn shrink(&mut self) {
        if self.waiting.is_empty() {
            self.waiting = VecDeque::new();
        }
    }

    /// Takes the oldest: its request id and its confirmation.
    fn pop(&mut self) -> Option<(u64, Bytes)> {
        let (request, _, confirmation, text_bytes) = self.waiting.pop_front()?;
        self.text_bytes -= text_bytes;
        Some((request, confirmation))
    }

    /// Waits for the oldest to be stored (none waiting counts as stored).
    async fn oldest_stored(&mut self) -> Result<(), Refusal> {
        let Some((_, receipt, _, _)) = self.waiting.front_mut() else {
            return Ok(());
        };
        match receipt.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(reason)) => Err(storage_failed(reason)),
            Err(_) => Err(storage_failed("the recorder stopped".into())),
        }
    }
}

fn storage_failed(reason: String) -> Refusal {
    Refusal {
        code: ErrorCode::StorageFailed,
        message: format!(
            "The server delivered your message but could not store it ({reason}); it may be missing from history."
        ),
    }
}

/// Runs a store read on the blocking pool.
async fn read<T: Send + 'static>(
    query: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, Refusal> {
    match tokio::task::spawn_blocking(query).await {
        Ok(Ok(found)) => Ok(found),
        Ok(Err(err)) => Err(Refusal {
            code: ErrorCode::StorageFailed,
            message: format!("The server could not read its database: {err}."),
        }),
        Err(err) => Err(Refusal {
            code: ErrorCode::StorageFailed,
            message: format!("The server could not read its database: {err}."),
        }),
    }
}

/// The highest version both sides speak.
fn negotiate(offered: &[u16]) -> Option<u16> {
    offered
        .iter()
        .copied()
        .filter(|v| SUPPORTED_VERSIONS.contains(v))
        .max()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use crate::outbox;
    use crate::recorder::Recorder;
    use crate::store::SqliteStore;

    #[test]
    fn unconfirmed_messages_are_bounded_by_count_and_by_text() {
        let mut short = Unconfirmed::default();
        for id in 0..MAX_UNCONFIRMED as u64 - 1 {
            assert!(!short.is_full(), "{id} wait");
            short.push(id, recorder::settled(), Bytes::new(), 10);
        }
        assert!(!short.is_full());
        assert!(short.full_with((1, 10)), "one more reaches the count");

        let mut long = Unconfirmed::default();
        let mut waiting = 0;
        while !long.is_full() {
            long.push(waiting, recorder::settled(), Bytes::new(), 4096);
            waiting += 1;
        }
        assert_eq!(waiting as usize, MAX_UNCONFIRMED_TEXT / 4096);
        // Confirming the oldest makes room for its text again.
        assert_eq!(long.pop().map(|(id, _)| id), Some(0));
        assert!(!long.is_full());
        assert!(long.full_with((0, 4096)));
        while long.pop().is_some() {}
        assert_eq!(long.text_bytes, 0);
        long.shrink();
        assert_eq!(
            long.waiting.capacity(),
            0,
            "an empty queue's room is given back"
        );
    }

    /// A tokio task is a cell of a 32-byte header, 16 bytes of the scheduler's handle and the
    /// task's id, the future with an 8-byte tag for its stage, and a 48-byte trailer, rounded
    /// up to a multiple of 128 bytes; the session's future is also wrapped by the server's task
    /// tracker (8 bytes more), the writer's is not. Every idle plain connection is one session
    /// task and one writer task, so each future's budget is what keeps its cell at 512 and
    /// 384 bytes (docs/benchmarks.md, "Idle memory under 2 KiB").
    const SESSION_FUTURE_BUDGET: usize = 512 - 32 - 16 - 16 - 48;
    const WRITER_FUTURE_BUDGET: usize = 384 - 32 - 16 - 8 - 48;

    #[tokio::test]
    async fn an_idle_connections_tasks_stay_within_their_size_classes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("parley.db")).unwrap());
        let (recorder, recording) = Recorder::start(store.clone(), true).unwrap();
        let (hub, _presence) = Hub::new(0, recorder, 100);
        let shared = SharedFolder::open(dir.path()).unwrap();
        let ctx = Arc::new(Context::new(Config::default(), hub, store, shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = listener.accept().await.unwrap();

        // The writer is made apart, over the client's end: the session's own is spawned.
        let (_read_half, write_half) = client.into_split();
        let (_outbox, queue) = outbox::channel(1024);
        let writer = writer::write_loop(write_half, queue);
        let session = run(
            stream,
            peer,
            ctx.clone(),
            Instant::now(),
            ActiveGuard::new(&Arc::new(AtomicUsize::new(0))),
            Arrival::Native { read_ahead: None },
        );
        let (session_size, writer_size) = (size_of_val(&session), size_of_val(&writer));
        eprintln!("SIZE {session_size} {}", size_of::<Session>());
        assert!(
            session_size <= SESSION_FUTURE_BUDGET,
            "a plain session's future is {session_size} bytes, over its budget of {SESSION_FUTURE_BUDGET}"
        );
        assert!(
            writer_size <= WRITER_FUTURE_BUDGET,
            "a plain writer's future is {writer_size} bytes, over its budget of {WRITER_FUTURE_BUDGET}"
        );
        drop((session, writer));
        drop(ctx);
        tokio::task::spawn_blocking(move || recording.join())
            .await
            .unwrap()
            .unwrap();
    }
}
