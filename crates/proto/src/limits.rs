//! Every number that bounds what a peer may send or make the other side hold.
//!
//! Both sides enforce these before allocating; docs/protocol.md lists them in its "Limits" table.

/// Longest control frame a server accepts from a client, counting the kind byte and JSON.
/// Requests are small (the longest is a 4 KiB message plus framing); 64 KiB leaves room for
/// growth while keeping what an idle attacker can make the server buffer per connection small.
pub const SERVER_MAX_CONTROL_FRAME: usize = 64 * 1024;

/// Longest control frame a client accepts from a server. Replies can list every user online
/// (tens of thousands of names), so this is far larger than the other direction.
pub const CLIENT_MAX_CONTROL_FRAME: usize = 16 * 1024 * 1024;

/// Longest data frame in either direction: kind byte, 4-byte transfer id and up to
/// [`MAX_DATA_CHUNK`] bytes of file.
pub const MAX_DATA_FRAME: usize = 1 + 4 + MAX_DATA_CHUNK;

/// Most file bytes in one data frame. 256 KiB keeps per-frame overhead negligible while a chat
/// message never waits behind more than one such frame on the sender's side.
pub const MAX_DATA_CHUNK: usize = 256 * 1024;

/// Most transfers one connection may run at once.
pub const MAX_TRANSFERS: usize = 8;

/// Longest message text, in bytes of UTF-8.
pub const MAX_TEXT_BYTES: usize = 4096;

/// Longest user or room name, in characters (names are ASCII, so also bytes).
pub const MAX_NAME_CHARS: usize = 32;

/// Most rooms one user may be in at once.
pub const MAX_ROOMS_PER_USER: usize = 32;

/// Longest client software description in `hello`, in bytes.
pub const MAX_CLIENT_DESCRIPTION: usize = 128;

/// The roster limit a server uses unless configured otherwise (see `Welcome::roster_limit`).
/// A list pane shows a few dozen names; past a few hundred people search instead of scrolling,
/// and naming each arrival to everyone would cost N² names as a large room fills.
pub const DEFAULT_ROSTER_LIMIT: usize = 200;

/// Most stored messages one `history` or `search` reply carries.
pub const MAX_HISTORY: usize = 500;

/// Shortest password an account may have, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Longest password, in bytes: hashing is deliberately costly, so its input is bounded.
pub const MAX_PASSWORD_BYTES: usize = 1024;
