//! The Parley chat server as a library.
//!
//! [`serve`] runs a server on a listener the caller has already bound, until a cancellation
//! token fires: tests bind `127.0.0.1:0` in-process, the binary binds what the user asked for.
//! Inside, each connection is a session ([`session`]) and a hub ([`hub`]) routes between them.

pub mod accounts;
mod addresses;
mod config;
mod files;
mod flood;
mod hub;
mod outbox;
mod recorder;
mod session;
pub mod store;
mod tls;
mod transfer;
mod web;
mod writer;

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use bytes::Bytes;
use parley_proto::ErrorCode;
use parley_proto::event::{Bye, Event};
use parley_proto::reply::event_frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub use addresses::{loopback, parse_networks};
pub use config::Config;
pub use flood::FloodLimit;
pub use ipnet::IpNet;
pub use tls::TlsMode;

use addresses::{Addresses, Refused};
use hub::Hub;
use recorder::Recorder;
use session::Context;
use store::{SqliteStore, Store};

/// After an accept error (typically the process is out of file descriptors), wait this long
/// before trying again instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves clients on `listener` until `shutdown` is cancelled; then tells every client that the
/// server is shutting down, waits up to [`Config::shutdown_grace`] for them to be told, and
/// returns. Fails at once if the shared folder cannot be created or opened.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let grace = config.shutdown_grace;
    let shared = files::SharedFolder::open(&config.shared_dir).map_err(|err| {
        std::io::Error::new(
            err.kind(),
            format!(
                "cannot open the shared folder {}: {err}",
                config.shared_dir.display()
            ),
        )
    })?;
    let store = open_store(&config.data_dir)?;
    let tls = tls::setup(&config.tls, &config.data_dir)?.map(Arc::new);
    match &tls {
        Some(tls) => info!("TLS certificate fingerprint (SHA-256): {}", tls.fingerprint),
        None => warn!("TLS is off: messages and passwords cross the network in clear"),
    }
    let last_id = store.last_id().map_err(std::io::Error::other)?;
    let (recorder, recording) = Recorder::start(store.clone(), config.keep_history)?;
    let (hub, presence) = Hub::new(last_id, recorder, config.roster_limit);
    info!("sharing the folder {}", config.shared_dir.display());
    info!("keeping data in {}", config.data_dir.display());
    let ctx = Arc::new(Context::new(config, hub, store, shared));
    // Read before the first sign-in, so that a crowd arriving at once finds it read.
    ctx.registry
        .refresh(&*ctx.store)
        .map_err(std::io::Error::other)?;
    tokio::spawn(announce_presence(Arc::downgrade(&ctx), presence));
    tokio::spawn(ring_alarms(Arc::downgrade(&ctx)));
    let tracker = TaskTracker::new();
    let addresses = Addresses::new(&ctx.config, Arc::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!("accepting a connection failed: {err}; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        tune(&stream);
        let admission = admission(&ctx.config, &addresses, peer);
        match &admission {
            Ok(_) => info!("{peer} connected"),
            Err(bye) => warn!("{peer} refused: {}", bye.message),
        }
        let (ctx, tls) = (ctx.clone(), tls.clone());
        let accepted = Accepted {
            peer,
            at: tokio::time::Instant::now(),
            tasks: tracker.clone(),
        };
        match tls {
            None => tracker.spawn(admit(stream, ctx, admission, accepted)),
            Some(tls) => tracker.spawn(secure(stream, tls, ctx, admission, accepted)),
        };
    }
    drop(listener);
    ctx.shut_down();
    tracker.close();
    if timeout(grace, tracker.wait()).await.is_err() {
        warn!("some connections did not close within {grace:?}; exiting anyway");
    }
    // The recorder stores what it was handed, then ends once the hub (in `ctx`) is gone.
    drop(ctx);
    let finished = tokio::task::spawn_blocking(move || recording.join());
    if timeout(grace, finished).await.is_err() {
        warn!("the message store did not finish within {grace:?}; exiting anyway");
    }
    Ok(())
}

/// Announces each room's arrivals and departures when they are due. Holds the context weakly:
/// it ends once the server has stopped and the hub, with its end of the channel, is gone.
async fn announce_presence(
    ctx: std::sync::Weak<Context>,
    mut due: tokio::sync::mpsc::UnboundedReceiver<hub::Announcement>,
) {
    while let Some((room, at)) = due.recv().await {
        tokio::time::sleep_until(at).await;
        match ctx.upgrade() {
            Some(ctx) => ctx.hub.announce_presence(&room),
            None => return,
        }
    }
}

/// Rings the sessions' alarms as they fall due (see [`Context::ring_alarms`]). Holds the
/// context weakly: it ends once the server has stopped.
async fn ring_alarms(ctx: std::sync::Weak<Context>) {
    let Some(tick) = ctx.upgrade().map(|ctx| ctx.alarm_tick()) else {
        return;
    };
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match ctx.upgrade() {
            Some(ctx) => ctx.ring_alarms(),
            None => return,
        }
    }
}

/// Decides at accept whether a connection from `peer` is served: not when the server holds
/// its maximum of connections, nor when `peer`'s address holds its share or opened new ones
/// too fast. The `bye` says which.
fn admission(
    config: &Config,
    addresses: &Addresses,
    peer: std::net::SocketAddr,
) -> Result<ActiveGuard, Bye> {
    if addresses.active() >= config.max_connections {
        return Err(Bye {
            code: ErrorCode::ServerFull,
            message: format!(
                "The server holds its maximum of {} connections; try again later.",
                config.max_connections
            ),
        });
    }
    match addresses.admit(peer.ip()) {
        Ok(guard) => Ok(ActiveGuard(guard)),
        Err(Refused(message)) => Err(Bye {
            code: ErrorCode::TooManyConnections,
            message,
        }),
    }
}

/// Opens the message database in `data_dir`, creating both if missing.
fn open_store(data_dir: &std::path::Path) -> std::io::Result<Arc<dyn Store>> {
    let cannot = |err: &dyn std::fmt::Display| {
        std::io::Error::other(format!(
            "cannot open the database in {}: {err}",
            data_dir.display()
        ))
    };
    std::fs::create_dir_all(data_dir).map_err(|err| cannot(&err))?;
    let store = SqliteStore::open(&data_dir.join("parley.db")).map_err(|err| cannot(&err))?;
    Ok(Arc::new(store))
}

/// Unsent bytes the kernel may hold per connection before the writer is told to wait. Without
/// a bound, a download fills megabytes of socket buffer and a chat message queued after it waits
/// for all of them; with it, the writer keeps the data in its own queue, where chat overtakes.
pub const NOTSENT_LOWAT: u32 = 128 * 1024;

/// Socket options for a chat connection: no Nagle delay for small frames, and little unsent data
/// queued in the kernel ahead of a chat message.
fn tune(stream: &TcpStream) {
    // Chat frames are small and latency matters more than packing them.
    let _ = stream.set_nodelay(true);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let _ = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT);
}

/// A connection just accepted: who, when, and where its tasks are tracked.
struct Accepted {
    peer: std::net::SocketAddr,
    /// The TLS handshake and the sign-in share one handshake timeout from here.
    at: tokio::time::Instant,
    tasks: TaskTracker,
}

/// Completes the TLS handshake, then admits the connection as [`admit`] does.
async fn secure(
    stream: TcpStream,
    tls: Arc<tls::Tls>,
    ctx: Arc<Context>,
    admission: Result<ActiveGuard, Bye>,
    accepted: Accepted,
) {
    // The TLS handshake counts against the time allowed to sign in; a connection that is only
    // to be told it is refused gets a short one.
    let limit = match admission {
        Ok(_) => ctx.config.handshake_timeout,
        Err(_) => Duration::from_secs(1),
    };
    let peer = accepted.peer;
    // Boxed: a handshake's state is kilobytes, needed only until the session starts.
    match Box::pin(timeout(limit, tls.acceptor.accept(stream))).await {
        // Boxed: the session keeps the TLS state on the heap anyway (split puts the stream
        // in an `Arc`), and a task holding it inline would be that much larger.
        Ok(Ok(secured)) => admit(Box::new(secured), ctx, admission, accepted).await,
        Ok(Err(err)) => info!("{peer} left: TLS handshake failed: {err}"),
        Err(_) => info!("{peer} left: no TLS handshake within {limit:?}"),
    }
}

/// Tells the connection's protocol and starts serving it, or tells a refused connection why.
async fn admit<S>(
    stream: S,
    ctx: Arc<Context>,
    admission: Result<ActiveGuard, Bye>,
    accepted: Accepted,
) where
    S: session::Transport + tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    match admission {
        Ok(guard) => route(stream, ctx, guard, accepted).await,
        Err(bye) => refuse(stream, bye).await,
    }
}

/// Reads a connection's first byte to tell its protocol, then serves it in a task of its own.
/// A browser speaks first, with a request whose method is capital letters (`GET`); a native
/// client speaks first too, with a frame whose length's first byte is 0 (no frame a client may
/// send is 16 MiB long). A capital letter there would announce a frame over 1 GiB, so no
/// native client loses anything by it; other bytes stay native and get the protocol's own
/// `bye`. The wait counts against the handshake timeout: a connection that sends nothing
/// meets the native session's timeout, and its `bye`.
///
/// A new task, because a task is as large as its largest state for as long as it lives: the
/// session's task holds the session alone, not also room for this wait, for an HTTP
/// connection, or for the TLS handshake (measured: 0.46 KiB more per idle connection
/// otherwise).
async fn route<S>(mut stream: S, ctx: Arc<Context>, guard: ActiveGuard, accepted: Accepted)
where
    S: session::Transport + tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let Accepted { peer, at, tasks } = accepted;
    let mut first = [0u8; 1];
    let deadline = at + ctx.config.handshake_timeout;
    let read = tokio::select! {
        read = tokio::time::timeout_at(deadline, stream.read(&mut first)) => read,
        // Stopping: the session starts halted, and says so.
        () = ctx.stopping.cancelled() => Ok(Ok(0)),
    };
    let read_ahead = match read {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            let stall = ctx.config.keepalive_timeout;
            let stream = web::Rewind::new(first[0], stream, stall);
            let http = web::serve(stream, peer, ctx, guard, S::SECURE, tasks.clone());
            tasks.spawn(http);
            return;
        }
        Ok(Ok(1)) => Some(first[0]),
        // Closed, broken or silent: the session reads the same and says so.
        _ => None,
    };
    let arrival = session::Arrival::Native { read_ahead };
    tasks.spawn(session::run(stream, peer, ctx, at, guard, arrival));
}

/// Tells a connection over a limit why it is refused (`bye`), then closes it.
async fn refuse<S>(mut stream: S, bye: Bye)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let bye: Bytes = event_frame(&Event::Bye(bye));
    let written = timeout(Duration::from_secs(1), async {
        stream.write_all(&bye).await?;
        stream.shutdown().await
    })
    .await;
    if let Ok(Ok(())) = written {
        session::linger(stream).await;
    }
}

/// Counts a connection as active for as long as it lives: among the server's, and, unless
/// its address is exempt, among its address's (see [`addresses::Place`]).
pub(crate) struct ActiveGuard(addresses::Guard);

/// What a connection counts against, for connections that start more (a WebSocket, which
/// takes over its HTTP connection's place).
#[derive(Clone)]
pub(crate) struct Counter(Arc<addresses::Place>);

/// A count of the server's alone, for sessions started without an accept loop (tests).
impl From<Arc<AtomicUsize>> for Counter {
    fn from(active: Arc<AtomicUsize>) -> Self {
        Self(addresses::Guard::unlimited(active))
    }
}

impl ActiveGuard {
    /// Counts one more connection against `counter`, without asking whether it may: the
    /// limits were applied at accept.
    pub(crate) fn new(counter: &(impl Clone + Into<Counter>)) -> Self {
        Self(addresses::Guard::enter(&counter.clone().into().0))
    }

    /// The count this guard is part of, for connections that start more (a WebSocket).
    fn counter(&self) -> Counter {
        Counter(self.0.place())
    }
}
