//! Where messages are kept: a small trait, so that an embedded SQLite database serves one
//! machine and a server database can serve several nodes later without touching the hub.

mod sqlite;

pub use sqlite::SqliteStore;

pub use parley_proto::event::Stored;

/// A storage failure, for the log and for the user's error reply.
#[derive(Debug, thiserror::Error)]
#[error("the message store failed: {0}")]
pub struct StoreError(String);

impl StoreError {
    pub(crate) fn new(err: impl std::fmt::Display) -> Self {
        Self(err.to_string())
    }
}

/// Which messages a history query asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Thread {
    /// Messages of a room.
    Room(String),
    /// Private messages between two users (names compared without regard to case).
    Private(String, String),
}

/// Persistent message history.
pub trait Store: Send + Sync + 'static {
    /// The highest message id stored, 0 if none: new ids continue after it.
    fn last_id(&self) -> Result<u64, StoreError>;

    /// Stores `messages` together, durably: when this returns, they survive a crash.
    fn append(&self, messages: &[Stored]) -> Result<(), StoreError>;

    /// Up to `limit` messages of `thread` with ids below `before` (all if `None`), oldest first.
    fn history(
        &self,
        thread: &Thread,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Up to `limit` messages matching all of `words`, newest first, among those `user` may
    /// see: messages of `rooms`, and private messages from or to `user`.
    fn search(
        &self,
        user: &str,
        rooms: &[String],
        words: &str,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;
}
