//! Where messages are kept: a small trait, so that an embedded SQLite database serves one
//! machine and a server database can serve several nodes later without touching the hub.

mod chunk;
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
    /// Private messages between two users (names compared without regard to case), with ids
    /// above the third field: a guest sees only what was said since it took the name.
    Private(String, String, u64),
}

/// What a recipient's mailbox holds: messages and their bytes of text, all of them and those
/// of one sender.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mailbox {
    /// Messages kept for the recipient.
    pub messages: usize,
    /// Their bytes of text.
    pub bytes: usize,
    /// Messages among them from the sender.
    pub from_sender: usize,
    /// Their bytes of text.
    pub bytes_from_sender: usize,
}

/// A registered name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The name as registered.
    pub name: String,
    /// Its password's Argon2id hash, in PHC string form (never the password).
    pub hash: String,
    /// When it was registered, in milliseconds since the Unix epoch.
    pub created: u64,
    /// Private messages with ids up to this one were sent before the name was registered, to
    /// whoever used it then, and are not the account's.
    pub since_id: u64,
}

/// Persistent message history and accounts.
pub trait Store: Send + Sync + 'static {
    /// The highest message id stored, 0 if none: new ids continue after it.
    fn last_id(&self) -> Result<u64, StoreError>;

    /// Stores `messages` together, durably: when this returns, they survive a crash. The
    /// private messages whose ids are in `undelivered` are also kept for their recipient's
    /// next sign-in.
    fn append(&self, messages: &[Stored], undelivered: &[u64]) -> Result<(), StoreError>;

    /// Indexes for search some of the messages stored and not indexed yet, about `most` of
    /// them; true if more wait. A store may leave indexing for later, to be done by this when
    /// it is not busy storing: a search always sees every message stored all the same.
    fn index_waiting(&self, most: u64) -> Result<bool, StoreError>;

    /// Up to `limit` of the private messages kept for `name` with ids above `after`, oldest
    /// first. They stay kept until [`Store::mark_delivered`]: a session delivers them a page
    /// at a time, and what it had not sent when its connection broke comes again next time.
    fn undelivered(&self, name: &str, after: u64, limit: usize) -> Result<Vec<Stored>, StoreError>;

    /// Stops keeping the private messages kept for `name` with ids up to `through`.
    fn mark_delivered(&self, name: &str, through: u64) -> Result<(), StoreError>;

    /// What is kept for `recipient`, all told and from `sender` (names compared without
    /// regard to case), to bound the mailbox.
    fn mailbox(&self, recipient: &str, sender: &str) -> Result<Mailbox, StoreError>;

    /// The account of `name` (compared without regard to case), if it is registered.
    fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;

    /// Registers `name` with a password hash, owning private messages with ids above
    /// `since_id`; false if it is registered already.
    fn create_account(&self, name: &str, hash: &str, since_id: u64) -> Result<bool, StoreError>;

    /// Replaces the password hash of `name`; false if it is not registered.
    fn set_password(&self, name: &str, hash: &str) -> Result<bool, StoreError>;

    /// Removes the account of `name` and the messages kept for it; false if it is not
    /// registered.
    fn remove_account(&self, name: &str) -> Result<bool, StoreError>;

    /// Every account, by name.
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;

    /// The keys (names in ASCII lower case) of every account, with a mark of the database's
    /// state to pass back as `seen` next time. If nothing but this store has changed the
    /// database since `seen` (another process, `parley admin`, might have), the keys are
    /// `None`: whoever asks knows them already.
    fn account_keys(&self, seen: Option<u64>) -> Result<(u64, Option<Vec<String>>), StoreError>;

    /// Up to `limit` messages of `thread` with ids below `before` (all if `None`), oldest first.
    fn history(
        &self,
        thread: &Thread,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;

    /// Up to `limit` messages matching all of `words`, newest first, among those `user` may
    /// see: messages of `rooms`, and private messages from or to `user` with ids above
    /// `private_since`.
    fn search(
        &self,
        user: &str,
        rooms: &[String],
        private_since: u64,
        words: &str,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError>;
}
