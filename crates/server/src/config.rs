//! The server's tunables, with defaults fit for a small self-hosted server.

use std::path::PathBuf;
use std::time::Duration;

use parley_proto::limits::DEFAULT_ROSTER_LIMIT;

use crate::flood::FloodLimit;
use crate::tls::TlsMode;

/// How a server behaves; [`Config::default`] is what `parley server` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Connections held at once; one more is told `server_full` and closed.
    pub max_connections: usize,
    /// Connections held at once from one address (an IPv6 address counts by its /64); one
    /// more is told `too_many_connections` and closed. 0: no limit. Every connection counts,
    /// signed in or not, native, TLS or HTTP.
    pub max_connections_per_address: usize,
    /// New connections one address may open per minute, as a token bucket: this many at
    /// once, then one every 60/N seconds; beyond, `too_many_connections`. 0: no limit.
    pub max_new_connections_per_minute: u32,
    /// Networks the two limits above do not apply to; loopback by default, so that local
    /// benchmarks and tests of thousands of connections run.
    pub limit_exempt: Vec<ipnet::IpNet>,
    /// Time a new connection has to send a valid `hello`.
    pub handshake_timeout: Duration,
    /// The server pings a client it has heard nothing from for this long.
    pub keepalive_interval: Duration,
    /// ... and drops it after this long without hearing anything. Detects dead peers and
    /// half-open connections (a lost network, a powered-off machine) within seconds.
    pub keepalive_timeout: Duration,
    /// Bytes a client's outgoing queue may hold before the client is cut off as too slow.
    /// 1 MiB is over 2,000 messages of typical size: far more than a healthy client ever lags.
    pub max_queue_bytes: usize,
    /// Bytes the outgoing queues of all clients may hold together: once reached, a client
    /// holding more than 256 KiB of them is cut off as too slow. Many slow readers, each within
    /// [`Config::max_queue_bytes`], cannot take more memory than this between them.
    pub max_queued_total: usize,
    /// On shutdown, how long connections get to receive their `bye` before being dropped.
    pub shutdown_grace: Duration,
    /// The folder whose files are shared; created if missing.
    pub shared_dir: PathBuf,
    /// Largest upload accepted, in bytes.
    pub max_upload: u64,
    /// Free disk space an upload may not eat into, in bytes: the server refuses uploads that
    /// would leave less than this on the shared folder's file system.
    pub disk_reserve: u64,
    /// How long an upload may go without progress (less than [`MIN_PROGRESS`] bytes, or its
    /// `finish` once all has come) while the server waits for it, before it is cancelled and
    /// its disk space given back: else a client could hold its promise of space forever.
    ///
    /// [`MIN_PROGRESS`]: crate::transfer::MIN_PROGRESS
    pub upload_idle_timeout: Duration,
    /// Bytes the uploads in progress of one connection may hold promised at once (a browser's
    /// HTTP uploads count against its session). Beside the disk reserve, it keeps a few
    /// connections from promising themselves all of the disk.
    pub max_reserved_per_connection: u64,
    /// Bytes the uploads in progress from one address may hold promised at once (IPv6
    /// addresses counted by their /64): many connections from one place are one holder.
    pub max_reserved_per_address: u64,
    /// Whether uploads may have names starting with `.` (hidden files on Unix).
    pub allow_hidden_uploads: bool,
    /// The folder holding the server's own data (the message database); created if missing.
    pub data_dir: PathBuf,
    /// How many of a room's last messages a client is shown on entering it.
    pub backlog: usize,
    /// Refuse names that are not registered accounts (no guests).
    pub require_account: bool,
    /// How connections are secured; TLS with a self-signed certificate by default.
    pub tls: TlsMode,
    /// Store room messages and private messages to people online (history, backlog, search).
    /// Off, only private messages kept for offline recipients are stored: a server for
    /// ephemeral chat, and the baseline that shows what storing history costs.
    pub keep_history: bool,
    /// The most names one list carries (the online list, a room's members, a page of `users`),
    /// and the largest room whose arrivals and departures are announced by name; a larger room
    /// announces only its size. See [`DEFAULT_ROSTER_LIMIT`].
    pub roster_limit: usize,
    /// Private messages kept for one offline registered user, at most; past it a `msg` to
    /// them is refused with `mailbox_full`. One sender may hold a quarter of it.
    pub mailbox_max: usize,
    /// Bytes of text kept for one offline registered user, at most; one sender may hold a
    /// quarter of it, so that no one sender can fill the mailbox alone.
    pub mailbox_max_bytes: usize,
    /// How fast one session may make requests (see [`FloodLimit`]); `None` turns flood
    /// control off, as the benchmarks do.
    pub flood: Option<FloodLimit>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_connections_per_address: 64,
            max_new_connections_per_minute: 120,
            limit_exempt: crate::addresses::loopback(),
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(3),
            keepalive_timeout: Duration::from_secs(10),
            max_queue_bytes: 1024 * 1024,
            max_queued_total: 512 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(5),
            shared_dir: PathBuf::from("SharedFiles"),
            max_upload: 4 << 30,
            disk_reserve: 1 << 30,
            upload_idle_timeout: Duration::from_secs(30),
            max_reserved_per_connection: 8 << 30,
            max_reserved_per_address: 16 << 30,
            allow_hidden_uploads: false,
            data_dir: PathBuf::from("parley-data"),
            backlog: 50,
            require_account: false,
            tls: TlsMode::SelfSigned,
            keep_history: true,
            roster_limit: DEFAULT_ROSTER_LIMIT,
            flood: Some(FloodLimit::default()),
            mailbox_max: 1000,
            mailbox_max_bytes: 4 << 20,
        }
    }
}
