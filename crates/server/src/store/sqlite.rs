//! The embedded store: one SQLite database file in the data folder, in WAL mode.
//!
//! Schema changes are numbered migrations applied in order at open, tracked by SQLite's
//! `user_version`.
//!
//! What is stored is shaped by what storing costs while messages are delivered: SQLite's cost
//! is per row and per index entry far more than per byte. So a room's messages are kept as
//! [`chunk`]s, the messages one room received in one commit as one row. Private messages, a
//! small part of the traffic, keep a row each: they are looked up by who sent them to whom,
//! and kept one by one for recipients who are offline.
//!
//! Full-text search uses an FTS5 index with a document per chunk (and per private message).
//! A document matching a search is a chunk where the words occur; the messages of the chunk
//! that match are found by the same tokenizer over the chunk's messages alone, in a small
//! in-memory index. The index is filled later than messages are stored: the recorder fills it
//! when it has nothing to store, and each commit fills a step of it while [`INDEX_BOUND`]
//! messages wait. A search first indexes whatever waits, so it always sees everything stored.
//! `search_index` records how far the index reaches.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::chunk;
use super::{Account, Mailbox, Store, StoreError, Stored, Thread};

impl From<rusqlite::Error> for StoreError {
    fn from(err: rusqlite::Error) -> Self {
        Self::new(err)
    }
}

/// A column of an unexpected type: a database changed by something other than Parley.
impl From<rusqlite::types::FromSqlError> for StoreError {
    fn from(err: rusqlite::types::FromSqlError) -> Self {
        Self::new(err)
    }
}

/// A step of the schema, from its index in [`MIGRATIONS`] to the next version.
enum Migration {
    Sql(&'static str),
    /// A step SQL alone does not say.
    Code(fn(&Connection) -> rusqlite::Result<()>),
}

impl Migration {
    fn apply(&self, db: &Connection) -> rusqlite::Result<()> {
        match self {
            Self::Sql(sql) => db.execute_batch(sql),
            Self::Code(step) => step(db),
        }
    }
}

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: &[Migration] = &[
    // 1: messages, their indexes and the full-text index.
    Migration::Sql(
        "CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        ts INTEGER NOT NULL,
        room TEXT,
        sender TEXT NOT NULL,
        sender_key TEXT NOT NULL,
        recipient TEXT,
        recipient_key TEXT,
        text TEXT NOT NULL
    );
    CREATE INDEX messages_by_room ON messages (room, id);
    CREATE INDEX messages_by_pair ON messages (sender_key, recipient_key, id);
    CREATE VIRTUAL TABLE messages_text USING fts5 (text, content = 'messages', content_rowid = 'id');
    CREATE TRIGGER messages_indexed AFTER INSERT ON messages BEGIN
        INSERT INTO messages_text (rowid, text) VALUES (new.id, new.text);
    END;",
    ),
    // 2: accounts, and private messages kept for recipients who were offline.
    Migration::Sql(
        "CREATE TABLE accounts (
        name_key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL,
        created INTEGER NOT NULL
    );
    CREATE TABLE undelivered (
        recipient_key TEXT NOT NULL,
        message_id INTEGER NOT NULL REFERENCES messages (id),
        PRIMARY KEY (recipient_key, message_id)
    );",
    ),
    // 3: where an account's private history starts (messages sent to earlier guests of the
    // name stay theirs).
    Migration::Sql("ALTER TABLE accounts ADD COLUMN since_id INTEGER NOT NULL DEFAULT 0;"),
    // 4: the full-text index is filled in bulk; the trigger had indexed every message so far.
    Migration::Sql(
        "DROP TRIGGER messages_indexed;
    CREATE TABLE search_index (through INTEGER NOT NULL);
    INSERT INTO search_index (through) SELECT coalesce(max(id), 0) FROM messages;",
    ),
    // 5: only private messages are looked up by sender and recipient, so only they are in that
    // index: a room message, most of what is stored, updates one index fewer (~0.8 of ~4 µs).
    Migration::Sql(
        "DROP INDEX messages_by_pair;
    CREATE INDEX messages_by_pair ON messages (sender_key, recipient_key, id)
        WHERE recipient_key IS NOT NULL;",
    ),
    // 6: room messages move into chunks, and the search index, a document per chunk, is
    // built again from nothing (by the recorder, or by the first search).
    Migration::Code(into_chunks),
    // 7: the search index merges its segments only once a level holds 16 (FTS5's
    // `crisismerge`), not a little at every write from 4 on (`automerge`): under load that
    // never pauses, its merging was a sixth of the recorder's work, and a search looks
    // through a few more segments (at most 15 a level), a few microseconds each.
    Migration::Sql("INSERT INTO search (search, rank) VALUES ('automerge', 0);"),
];

/// Schema 6: a chunk row per room and up to [`CHUNK_MOST`] messages of it; the search index
/// of a row per message makes way for one of a document per chunk.
fn into_chunks(db: &Connection) -> rusqlite::Result<()> {
    db.execute_batch(
        "CREATE TABLE chunks (
            last_id INTEGER PRIMARY KEY,
            room TEXT NOT NULL,
            body BLOB NOT NULL
        );
        CREATE INDEX chunks_by_room ON chunks (room, last_id);",
    )?;
    {
        let mut rows = db.prepare(&format!(
            "SELECT {COLUMNS} FROM messages WHERE room IS NOT NULL ORDER BY room, id"
        ))?;
        let mut insert =
            db.prepare("INSERT INTO chunks (last_id, room, body) VALUES (?1, ?2, ?3)")?;
        let mut room = String::new();
        let mut last_id = 0;
        let mut count = 0;
        let mut body = Vec::new();
        for message in rows.query_map([], stored)? {
            let message = message?;
            let message_room = message.room.as_deref().unwrap_or_default();
            if count == CHUNK_MOST || (count > 0 && message_room != room) {
                insert.execute(params![last_id as i64, room, body])?;
                (count, body) = (0, Vec::new());
            }
            if count == 0 {
                message_room.clone_into(&mut room);
            }
            chunk::encode(&message, &mut body);
            (last_id, count) = (message.id, count + 1);
        }
        if count > 0 {
            insert.execute(params![last_id as i64, room, body])?;
        }
    }
    db.execute_batch(
        "DELETE FROM messages WHERE room IS NOT NULL;
        DROP INDEX messages_by_room;
        DROP TABLE messages_text;
        CREATE VIRTUAL TABLE search USING fts5 (text, content = '');
        UPDATE search_index SET through = 0;",
    )
}

/// Most messages in a chunk made from a database of an earlier schema; the recorder's chunks
/// hold what arrived for a room within one commit, at most its batch (512).
const CHUNK_MOST: usize = 512;

/// How many stored messages (counted by id) may wait to be indexed for search before each
/// commit also indexes [`INDEX_STEP`] of them. A search indexes whatever waits first, so this
/// bounds how long a search may take after a long burst (~0.3 s); bursts shorter than it cost
/// no indexing while they last.
#[cfg(not(test))]
const INDEX_BOUND: u64 = 1 << 18;
/// Tests reach the bound with fewer messages.
#[cfg(test)]
const INDEX_BOUND: u64 = 1 << 12;

/// How many messages (counted by id) a commit indexes while too many wait: a few milliseconds
/// of work, several times what a commit stores, so that indexing keeps up without holding
/// up any commit for long.
const INDEX_STEP: u64 = 4096;

/// The SQLite store. One connection behind a std mutex: every call is a short, blocking
/// database operation made from a blocking thread, never from the async runtime.
pub struct SqliteStore {
    db: Mutex<Connection>,
}

impl SqliteStore {
    /// The key up to which documents are indexed for search, for tests of who indexes when.
    #[cfg(test)]
    pub(crate) fn indexed_through(&self) -> u64 {
        indexed_through(&self.db.lock().unwrap()).unwrap()
    }

    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut db = Connection::open(path).map_err(StoreError::new)?;
        // `parley admin` may use the database while the server runs, or starts: wait for the
        // other's transaction rather than fail. Set first, so that it covers the pragmas too.
        db.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(StoreError::new)?;
        // WAL: readers do not block the writer. synchronous=NORMAL in WAL mode keeps every
        // committed transaction through a crash of the process (kill -9); only a power loss
        // can take the last few, which FULL would keep at the cost of an fsync per commit.
        when_free(|| db.pragma_update(None, "journal_mode", "WAL")).map_err(StoreError::new)?;
        db.pragma_update(None, "synchronous", "NORMAL")
            .map_err(StoreError::new)?;
        // Copy the WAL into the database every 8,192 pages (32 MiB) rather than SQLite's 1,000:
        // the pages each commit rewrites (the tables' last leaves, the search index's merged
        // segments) are copied once per checkpoint, and the checkpoint ends in an fsync. A
        // tenth of the recorder's work under load at 1,000. The WAL file is kept at most twice
        // that size once checkpointed.
        db.pragma_update(None, "wal_autocheckpoint", 8192)
            .map_err(StoreError::new)?;
        db.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(StoreError::new)?;
        let version = when_free(|| migrate(&mut db)).map_err(StoreError::new)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::new(format!(
                "the database is at schema version {version}, newer than this server knows ({}); \
                 upgrade the server",
                MIGRATIONS.len()
            )));
        }
        // Where a search looks for the words among a matching chunk's messages: in memory,
        // this connection's own, emptied for each chunk.
        db.execute_batch("CREATE VIRTUAL TABLE temp.probe USING fts5 (text)")
            .map_err(StoreError::new)?;
        Ok(Self { db: Mutex::new(db) })
    }
}

/// Runs `step` until the database is not busy with another connection, for up to 5 s. The
/// busy timeout covers most waits, but SQLite answers "busy" at once, without waiting, where
/// waiting could deadlock: two connections that both read the journal mode (or the schema
/// version) and then both want to change it. One of them must let go and start again.
fn when_free<T>(mut step: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match step() {
            Err(rusqlite::Error::SqliteFailure(err, _))
                if matches!(
                    err.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            done => return done,
        }
    }
}

/// Brings the schema up to date in one immediate transaction: a second process opening the
/// same database at the same moment (`parley admin` beside a starting server) waits for it,
/// then reads the new version and has nothing left to do. Returns the version found, which
/// is left alone if it is newer than this server knows.
fn migrate(db: &mut Connection) -> rusqlite::Result<usize> {
    let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version = tx.pragma_query_value(None, "user_version", |row| row.get::<_, i64>(0))? as usize;
    if version >= MIGRATIONS.len() {
        return Ok(version);
    }
    for migration in &MIGRATIONS[version..] {
        migration.apply(&tx)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()?;
    Ok(version)
}

fn stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    Ok(Stored {
        id: row.get::<_, i64>(0)? as u64,
        ts: row.get::<_, i64>(1)? as u64,
        room: row.get(2)?,
        from: row.get(3)?,
        to: row.get(4)?,
        text: row.get(5)?,
    })
}

fn account(row: &rusqlite::Row<'_>) -> rusqlite::Result<Account> {
    Ok(Account {
        name: row.get(0)?,
        hash: row.get(1)?,
        created: row.get::<_, i64>(2)? as u64,
        since_id: row.get::<_, i64>(3)? as u64,
    })
}

/// The key up to which documents are indexed for search: a chunk's key is its last
/// message's id, a private message's its own.
fn indexed_through(db: &Connection) -> Result<u64, StoreError> {
    let through = db
        .prepare_cached("SELECT through FROM search_index")?
        .query_row([], |row| row.get::<_, i64>(0))?;
    Ok(through as u64)
}

/// The highest message id stored, 0 if none.
fn last_key(db: &Connection) -> Result<u64, StoreError> {
    let last = db
        .prepare_cached(
            "SELECT max(coalesce((SELECT max(id) FROM messages), 0), \
             coalesce((SELECT max(last_id) FROM chunks), 0))",
        )?
        .query_row([], |row| row.get::<_, i64>(0))?;
    Ok(last as u64)
}

/// Indexes for search the documents not indexed yet, those with keys up to `most` past what
/// is indexed (all if `None`); true if more wait. Writes nothing when nothing waits, so a
/// search then stays a read.
///
/// Keys only grow: a chunk's key is above every id stored before its commit. So everything
/// up to the recorded key is indexed and everything above it is not.
fn index_waiting(db: &Connection, most: Option<u64>) -> Result<bool, StoreError> {
    let through = indexed_through(db)?;
    let last = last_key(db)?;
    if last <= through {
        return Ok(false);
    }
    let upto = most.map_or(last, |most| last.min(through.saturating_add(most)));
    let range = params![through as i64, upto as i64];
    let mut insert = db.prepare_cached("INSERT INTO search (rowid, text) VALUES (?1, ?2)")?;
    let mut chunks =
        db.prepare_cached("SELECT last_id, body FROM chunks WHERE last_id > ?1 AND last_id <= ?2")?;
    let mut rows = chunks.query(range)?;
    let mut text = String::new();
    while let Some(row) = rows.next()? {
        text.clear();
        for entry in chunk::decode(row.get_ref(1)?.as_blob()?) {
            text.push_str(entry?.text);
            // A separator, so that no word runs into the next message's.
            text.push('\n');
        }
        insert.execute(params![row.get::<_, i64>(0)?, text])?;
    }
    db.prepare_cached(
        "INSERT INTO search (rowid, text) SELECT id, text FROM messages \
         WHERE id > ?1 AND id <= ?2",
    )?
    .execute(range)?;
    db.prepare_cached("UPDATE search_index SET through = ?1")?
        .execute(params![upto as i64])?;
    Ok(upto < last)
}

/// The messages of a chunk of `room` that match `words` (an FTS5 query), newest first, found
/// with `probe`, the connection's small in-memory index.
fn matching(
    db: &Connection,
    room: &str,
    body: &[u8],
    words: &str,
) -> Result<Vec<Stored>, StoreError> {
    let entries = chunk::decode(body).collect::<Result<Vec<_>, _>>()?;
    if let [only] = entries[..] {
        // The chunk's document was this message alone, and it matched.
        return Ok(vec![only.to_stored(room)]);
    }
    db.prepare_cached("DELETE FROM temp.probe")?.execute([])?;
    let mut insert = db.prepare_cached("INSERT INTO temp.probe (rowid, text) VALUES (?1, ?2)")?;
    for entry in &entries {
        insert.execute(params![entry.id as i64, entry.text])?;
    }
    let ids = db
        .prepare_cached("SELECT rowid FROM temp.probe WHERE probe MATCH ?1")?
        .query_map(params![words], |row| row.get::<_, i64>(0))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(entries
        .iter()
        .rev()
        .filter(|entry| ids.contains(&(entry.id as i64)))
        .map(|entry| entry.to_stored(room))
        .collect())
}

const COLUMNS: &str = "id, ts, room, sender, recipient, text";

/// A page of private messages between ?1 and ?2 (folded names), ids between ?5 and ?3, the
/// latest ?4, newest first; the columns are [`COLUMNS`].
const PRIVATE_HISTORY: &str = "SELECT id, ts, room, sender, recipient, text FROM messages \
     WHERE id < ?3 AND id > ?5 AND \
     ((sender_key = ?1 AND recipient_key = ?2) OR (sender_key = ?2 AND recipient_key = ?1)) \
     ORDER BY id DESC LIMIT ?4";

/// The chunks of room ?1 that may hold messages with ids below ?2, newest first. A room's
/// chunks hold disjoint runs of ids, so the one chunk with a key at or above ?2 that may hold
/// some is the first such.
const ROOM_HISTORY: &str = "SELECT body FROM chunks WHERE room = ?1 AND last_id <= coalesce(\
     (SELECT min(last_id) FROM chunks WHERE room = ?1 AND last_id >= ?2), ?2) \
     ORDER BY last_id DESC";

impl Store for SqliteStore {
    fn last_id(&self) -> Result<u64, StoreError> {
        last_key(&self.db.lock().unwrap())
    }

    fn append(&self, messages: &[Stored], undelivered: &[u64]) -> Result<(), StoreError> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO messages (id, ts, room, sender, sender_key, recipient, \
                 recipient_key, text) VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // Each room's messages in this batch, as one chunk keyed by its last id.
            let mut chunks: BTreeMap<&str, (u64, Vec<u8>)> = BTreeMap::new();
            for m in messages {
                if let Some(room) = &m.room {
                    let (last_id, body) = chunks.entry(room.as_str()).or_default();
                    chunk::encode(m, body);
                    *last_id = m.id;
                    continue;
                }
                insert.execute(params![
                    m.id as i64,
                    m.ts as i64,
                    m.from,
                    m.from.to_ascii_lowercase(),
                    m.to,
                    m.to.as_ref().map(|to| to.to_ascii_lowercase()),
                    m.text,
                ])?;
            }
            let mut insert =
                tx.prepare_cached("INSERT INTO chunks (last_id, room, body) VALUES (?1, ?2, ?3)")?;
            for (room, (last_id, body)) in chunks {
                insert.execute(params![last_id as i64, room, body])?;
            }
            let mut keep = tx.prepare_cached(
                "INSERT INTO undelivered (recipient_key, message_id) \
                 SELECT recipient_key, id FROM messages WHERE id = ?1",
            )?;
            for id in undelivered {
                keep.execute(params![*id as i64])?;
            }
        }
        // Ids arrive in increasing order, so the batch's last is the highest stored.
        if let Some(last) = messages.last()
            && last.id.saturating_sub(indexed_through(&tx)?) >= INDEX_BOUND
        {
            index_waiting(&tx, Some(INDEX_STEP))?;
        }
        Ok(tx.commit()?)
    }

    fn index_waiting(&self, most: u64) -> Result<bool, StoreError> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        let more = index_waiting(&tx, Some(most))?;
        tx.commit()?;
        Ok(more)
    }

    fn undelivered(&self, name: &str, after: u64, limit: usize) -> Result<Vec<Stored>, StoreError> {
        let db = self.db.lock().unwrap();
        let mut query = db.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE id IN \
             (SELECT message_id FROM undelivered WHERE recipient_key = ?1 AND message_id > ?2 \
             ORDER BY message_id LIMIT ?3) ORDER BY id"
        ))?;
        let after = after.min(i64::MAX as u64) as i64;
        let limit = limit.min(i64::MAX as usize) as i64;
        Ok(query
            .query_map(params![name.to_ascii_lowercase(), after, limit], stored)?
            .collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn mark_delivered(&self, name: &str, through: u64) -> Result<(), StoreError> {
        let db = self.db.lock().unwrap();
        db.prepare_cached("DELETE FROM undelivered WHERE recipient_key = ?1 AND message_id <= ?2")?
            .execute(params![
                name.to_ascii_lowercase(),
                through.min(i64::MAX as u64) as i64
            ])?;
        Ok(())
    }

    fn mailbox(&self, recipient: &str, sender: &str) -> Result<Mailbox, StoreError> {
        let db = self.db.lock().unwrap();
        // Bytes, not characters: `length` of a text counts characters.
        let mut query = db.prepare_cached(
            "SELECT count(*), coalesce(sum(length(CAST(m.text AS BLOB))), 0), \
             coalesce(sum(m.sender_key = ?2), 0), \
             coalesce(sum(CASE WHEN m.sender_key = ?2 THEN length(CAST(m.text AS BLOB)) ELSE 0 END), 0) \
             FROM undelivered u JOIN messages m ON m.id = u.message_id \
             WHERE u.recipient_key = ?1",
        )?;
        let counts = query.query_row(
            params![recipient.to_ascii_lowercase(), sender.to_ascii_lowercase()],
            |row| {
                let count = |i| row.get::<_, i64>(i).map(|n| n.max(0) as usize);
                Ok(Mailbox {
                    messages: count(0)?,
                    bytes: count(1)?,
                    from_sender: count(2)?,
                    bytes_from_sender: count(3)?,
                })
            },
        )?;
        Ok(counts)
    }

    fn account(&self, name: &str) -> Result<Option<Account>, StoreError> {
        let db = self.db.lock().unwrap();
        // Every sign-in asks: a cached statement is parsed once, not per sign-in.
        db.prepare_cached("SELECT name, hash, created, since_id FROM accounts WHERE name_key = ?1")
            .and_then(|mut query| {
                query
                    .query_row(params![name.to_ascii_lowercase()], account)
                    .optional()
            })
            .map_err(StoreError::new)
    }

    fn create_account(&self, name: &str, hash: &str, since_id: u64) -> Result<bool, StoreError> {
        let db = self.db.lock().unwrap();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let inserted = db
            .execute(
                "INSERT OR IGNORE INTO accounts (name_key, name, hash, created, since_id) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    name.to_ascii_lowercase(),
                    name,
                    hash,
                    created,
                    since_id.min(i64::MAX as u64) as i64
                ],
            )
            .map_err(StoreError::new)?;
        Ok(inserted == 1)
    }

    fn set_password(&self, name: &str, hash: &str) -> Result<bool, StoreError> {
        let db = self.db.lock().unwrap();
        let updated = db
            .execute(
                "UPDATE accounts SET hash = ?2 WHERE name_key = ?1",
                params![name.to_ascii_lowercase(), hash],
            )
            .map_err(StoreError::new)?;
        Ok(updated == 1)
    }

    fn remove_account(&self, name: &str) -> Result<bool, StoreError> {
        let key = name.to_ascii_lowercase();
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction().map_err(StoreError::new)?;
        let removed = tx
            .execute("DELETE FROM accounts WHERE name_key = ?1", params![key])
            .map_err(StoreError::new)?;
        // Messages kept for the account are not for whoever takes the name next.
        tx.execute(
            "DELETE FROM undelivered WHERE recipient_key = ?1",
            params![key],
        )
        .map_err(StoreError::new)?;
        tx.commit().map_err(StoreError::new)?;
        Ok(removed == 1)
    }

    fn accounts(&self) -> Result<Vec<Account>, StoreError> {
        let db = self.db.lock().unwrap();
        let mut query = db
            .prepare_cached("SELECT name, hash, created, since_id FROM accounts ORDER BY name_key")
            .map_err(StoreError::new)?;
        query
            .query_map([], account)
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(StoreError::new)
    }

    fn account_keys(&self, seen: Option<u64>) -> Result<(u64, Option<Vec<String>>), StoreError> {
        let db = self.db.lock().unwrap();
        // SQLite's own counter: it changes when another connection commits, never for this
        // one's commits, which the server records itself.
        let version = db
            .pragma_query_value(None, "data_version", |row| row.get::<_, i64>(0))
            .map_err(StoreError::new)? as u64;
        if seen == Some(version) {
            return Ok((version, None));
        }
        let keys = db
            .prepare_cached("SELECT name_key FROM accounts")
            .and_then(|mut query| {
                query
                    .query_map([], |row| row.get(0))
                    .and_then(Iterator::collect::<rusqlite::Result<Vec<String>>>)
            })
            .map_err(StoreError::new)?;
        Ok((version, Some(keys)))
    }

    fn history(
        &self,
        thread: &Thread,
        before: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        let db = self.db.lock().unwrap();
        let before = before.unwrap_or(u64::MAX).min(i64::MAX as u64);
        let mut page = Vec::with_capacity(limit.min(1024));
        match thread {
            Thread::Room(_) if limit == 0 => {}
            Thread::Room(room) => {
                let mut query = db.prepare_cached(ROOM_HISTORY)?;
                let mut chunks = query.query(params![room, before as i64])?;
                'chunks: while let Some(row) = chunks.next()? {
                    let entries =
                        chunk::decode(row.get_ref(0)?.as_blob()?).collect::<Result<Vec<_>, _>>()?;
                    for entry in entries.iter().rev().filter(|entry| entry.id < before) {
                        page.push(entry.to_stored(room));
                        if page.len() == limit {
                            break 'chunks;
                        }
                    }
                }
            }
            Thread::Private(a, b, since) => {
                let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
                let since = (*since).min(i64::MAX as u64) as i64;
                let mut query = db.prepare_cached(PRIVATE_HISTORY)?;
                for message in
                    query.query_map(params![a, b, before as i64, limit as i64, since], stored)?
                {
                    page.push(message?);
                }
            }
        }
        page.reverse();
        Ok(page)
    }

    fn search(
        &self,
        user: &str,
        rooms: &[String],
        private_since: u64,
        words: &str,
        limit: usize,
    ) -> Result<Vec<Stored>, StoreError> {
        // Each word becomes a quoted FTS5 string, so punctuation and FTS operators in what
        // people type are searched for, never interpreted.
        let query: Vec<String> = words
            .split_whitespace()
            .map(|word| format!("\"{}\"", word.replace('"', "\"\"")))
            .collect();
        if query.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let query = query.join(" ");
        let user = user.to_ascii_lowercase();
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction()?;
        index_waiting(&tx, None)?;
        tx.commit()?;
        let mut documents = db
            .prepare_cached("SELECT rowid FROM search WHERE search MATCH ?1 ORDER BY rowid DESC")?;
        let mut chunk = db.prepare_cached("SELECT room, body FROM chunks WHERE last_id = ?1")?;
        let mut private = db.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM messages WHERE id = ?1 AND id > ?2 \
             AND (sender_key = ?3 OR recipient_key = ?3)"
        ))?;
        // Newest first, the `limit` newest found so far.
        let mut found: Vec<Stored> = Vec::new();
        for key in documents.query_map(params![query], |row| row.get::<_, i64>(0))? {
            let key = key?;
            // Every message of this document and the ones after it has an id up to `key`.
            if found.len() == limit && found[limit - 1].id as i64 > key {
                break;
            }
            let mut chunks = chunk.query(params![key])?;
            if let Some(row) = chunks.next()? {
                let room = row.get_ref(0)?.as_str()?;
                if rooms.iter().any(|allowed| allowed == room) {
                    found.extend(matching(&db, room, row.get_ref(1)?.as_blob()?, &query)?);
                }
            } else if let Some(message) = private
                .query_row(
                    params![key, private_since.min(i64::MAX as u64) as i64, user],
                    stored,
                )
                .optional()?
            {
                found.push(message);
            }
            // Chunks of different rooms hold interleaved ids.
            found.sort_unstable_by_key(|message| std::cmp::Reverse(message.id));
            found.truncate(limit);
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_processes_may_create_the_database_at_once() {
        // `parley admin add` run just as the server starts: both find a new database.
        for _ in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("parley.db");
            let opening: Vec<_> = (0..2)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
                })
                .collect();
            for opened in opening {
                opened.join().unwrap().unwrap();
            }
        }
    }

    fn message(id: u64, room: Option<&str>, from: &str, to: Option<&str>, text: &str) -> Stored {
        Stored {
            id,
            ts: 1000 + id,
            room: room.map(str::to_owned),
            from: from.to_owned(),
            to: to.map(str::to_owned),
            text: text.to_owned(),
        }
    }

    fn store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("test.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn account_keys_are_read_again_only_after_another_connection_commits() {
        let (dir, store) = store();
        store.create_account("Alice", "hash", 0).unwrap();
        let (seen, keys) = store.account_keys(None).unwrap();
        assert_eq!(keys.unwrap(), ["alice"]);
        // Its own commits do not count: the server records those itself.
        store.create_account("bob", "hash", 0).unwrap();
        assert_eq!(store.account_keys(Some(seen)).unwrap(), (seen, None));
        let admin = SqliteStore::open(&dir.path().join("test.db")).unwrap();
        admin.create_account("carol", "hash", 0).unwrap();
        let (_, keys) = store.account_keys(Some(seen)).unwrap();
        let mut keys = keys.expect("read again after another connection's commit");
        keys.sort();
        assert_eq!(keys, ["alice", "bob", "carol"]);
    }

    #[test]
    fn history_pages_back_oldest_first() {
        let (_dir, store) = store();
        assert_eq!(store.last_id().unwrap(), 0);
        let messages: Vec<Stored> = (1..=10)
            .map(|id| message(id, Some("lobby"), "alice", None, &format!("m{id}")))
            .collect();
        store.append(&messages, &[]).unwrap();
        store
            .append(&[message(11, Some("rust"), "bob", None, "elsewhere")], &[])
            .unwrap();
        assert_eq!(store.last_id().unwrap(), 11);
        let lobby = Thread::Room("lobby".into());
        let last3 = store.history(&lobby, None, 3).unwrap();
        assert_eq!(last3.iter().map(|m| m.id).collect::<Vec<_>>(), [8, 9, 10]);
        let before = store.history(&lobby, Some(8), 3).unwrap();
        assert_eq!(before.iter().map(|m| m.id).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(before[0], messages[4]);
    }

    #[test]
    fn private_history_is_between_two_people_only() {
        let (_dir, store) = store();
        store
            .append(
                &[
                    message(1, None, "Alice", Some("bob"), "hi bob"),
                    message(2, None, "bob", Some("alice"), "hi alice"),
                    message(3, None, "carol", Some("bob"), "not for alice"),
                    message(4, Some("lobby"), "alice", None, "public"),
                ],
                &[],
            )
            .unwrap();
        let pair = Thread::Private("ALICE".into(), "Bob".into(), 0);
        let texts: Vec<String> = store
            .history(&pair, None, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.text)
            .collect();
        assert_eq!(texts, ["hi bob", "hi alice"]);
    }

    #[test]
    fn private_history_is_read_through_the_index_of_private_messages() {
        let (_dir, store) = store();
        let db = store.db.lock().unwrap();
        let plan: Vec<String> = db
            .prepare(&format!("EXPLAIN QUERY PLAN {PRIVATE_HISTORY}"))
            .unwrap()
            .query_map(params!["alice", "bob", 100, 10, 0], |row| row.get(3))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(
            plan.iter().any(|step| step.contains("messages_by_pair")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN")),
            "{plan:?}"
        );
    }

    #[test]
    fn search_finds_only_what_the_user_may_see() {
        let (_dir, store) = store();
        store
            .append(
                &[
                    message(1, Some("lobby"), "alice", None, "the deploy is done"),
                    message(2, Some("secret"), "bob", None, "deploy keys rotated"),
                    message(3, None, "bob", Some("carol"), "deploy tonight?"),
                    message(4, None, "bob", Some("dave"), "deploy tonight, dave?"),
                    message(5, Some("lobby"), "alice", None, "lunch"),
                    message(6, Some("lobby"), "eve", None, "\"deploy\" OR NOT x*"),
                ],
                &[],
            )
            .unwrap();
        let found = store
            .search("Carol", &["lobby".into()], 0, "deploy", 10)
            .unwrap();
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [6, 3, 1]);
        let found = store
            .search("carol", &["lobby".into()], 0, "deploy done", 10)
            .unwrap();
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [1]);
        // Operators are searched for, not obeyed.
        assert!(
            store
                .search("carol", &[], 0, "OR NOT", 10)
                .unwrap()
                .is_empty()
        );
        assert!(store.search("carol", &[], 0, "   ", 10).unwrap().is_empty());
        // Alice's own lobby message is not found once she is not in the lobby; a private
        // message older than the asker's claim on the name is not found either.
        assert!(
            store
                .search("alice", &[], 0, "deploy done", 10)
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .search("carol", &[], 3, "tonight", 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            store.search("carol", &[], 2, "tonight", 10).unwrap().len(),
            1
        );
    }

    /// `count` messages from alice to the lobby from id `from`, each saying `word` and its id.
    fn batch(from: u64, count: u64, word: &str) -> Vec<Stored> {
        (from..from + count)
            .map(|id| message(id, Some("lobby"), "alice", None, &format!("{word} {id}")))
            .collect()
    }

    #[test]
    fn indexing_waits_for_a_quiet_moment_and_searches_see_the_rest() {
        let (dir, store) = store();
        let through = |store: &SqliteStore| indexed_through(&store.db.lock().unwrap()).unwrap();
        store.append(&batch(1, 10, "early"), &[]).unwrap();
        assert_eq!(through(&store), 0, "storing does not index");
        let found = store.search("bob", &["lobby".into()], 0, "early", 100);
        assert_eq!(
            found.unwrap().len(),
            10,
            "a search indexes what waits first"
        );
        assert_eq!(through(&store), 10);
        // Another connection sees the database change with each commit made to it.
        let other = Connection::open(dir.path().join("test.db")).unwrap();
        let version = || -> i64 {
            other
                .pragma_query_value(None, "data_version", |row| row.get(0))
                .unwrap()
        };
        let before = version();
        store
            .search("bob", &["lobby".into()], 0, "early", 100)
            .unwrap();
        assert_eq!(
            version(),
            before,
            "with nothing waiting, a search writes nothing"
        );
        store.index_waiting(100).unwrap();
        assert_eq!(version(), before, "nor does indexing");
        store.append(&batch(11, 10, "later"), &[]).unwrap();
        assert_ne!(version(), before, "the check can fail");

        // The recorder's steps while idle: each reaches `most` further, until none is left.
        for from in [21, 31] {
            store.append(&batch(from, 10, "later"), &[]).unwrap();
        }
        assert!(store.index_waiting(15).unwrap(), "more waits");
        // Keys up to 10 + 15: the chunk ending at 20, not the one ending at 30.
        assert_eq!(through(&store), 25);
        let documents = || -> i64 {
            let db = store.db.lock().unwrap();
            db.query_row("SELECT count(*) FROM search_docsize", [], |row| row.get(0))
                .unwrap()
        };
        assert_eq!(documents(), 2);
        assert!(!store.index_waiting(100).unwrap(), "all indexed");
        assert_eq!(through(&store), 40);
        assert!(!store.index_waiting(100).unwrap());

        // Past the bound, each commit indexes a step, so indexing keeps up with storing.
        let mut from = 41;
        while from < 41 + 4 * INDEX_BOUND {
            store.append(&batch(from, 512, "bulk"), &[]).unwrap();
            from += 512;
            let waiting = from - 1 - through(&store);
            assert!(waiting < INDEX_BOUND + 512, "{waiting} wait to be indexed");
        }
        assert!(through(&store) > 3 * INDEX_BOUND);
        let found = store.search("bob", &["lobby".into()], 0, "bulk 41", 100);
        assert_eq!(
            found.unwrap().iter().map(|m| m.id).collect::<Vec<_>>(),
            [41]
        );
    }

    #[test]
    fn room_history_pages_back_across_chunks_of_interleaved_rooms() {
        let (_dir, store) = store();
        // Three commits, each a chunk for each room: lobby has odd ids, rust even ones.
        for commit in 0..3 {
            let messages: Vec<Stored> = (1..=10)
                .map(|n| commit * 10 + n)
                .map(|id| {
                    let room = if id % 2 == 1 { "lobby" } else { "rust" };
                    message(id, Some(room), "alice", None, &format!("m{id}"))
                })
                .collect();
            store.append(&messages, &[]).unwrap();
        }
        let lobby = Thread::Room("lobby".into());
        let ids = |before, limit| -> Vec<u64> {
            store
                .history(&lobby, before, limit)
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect()
        };
        assert_eq!(ids(None, 3), [25, 27, 29]);
        assert_eq!(ids(None, 7), [17, 19, 21, 23, 25, 27, 29]);
        // Below an id inside a chunk, and below one of the other room's.
        assert_eq!(ids(Some(15), 3), [9, 11, 13]);
        assert_eq!(ids(Some(16), 3), [11, 13, 15]);
        assert_eq!(ids(Some(2), 5), [1]);
        assert_eq!(ids(Some(1), 5), Vec::<u64>::new());
        assert_eq!(ids(None, 0), Vec::<u64>::new());
        assert_eq!(ids(None, 100).len(), 15);
        let rust = store
            .history(&Thread::Room("rust".into()), None, 1)
            .unwrap();
        assert_eq!(rust, [message(30, Some("rust"), "alice", None, "m30")]);
    }

    #[test]
    fn search_finds_messages_not_chunks_newest_first() {
        let (_dir, store) = store();
        store
            .append(
                &[
                    message(1, Some("lobby"), "alice", None, "deploy the"),
                    message(2, Some("rust"), "bob", None, "deploy done"),
                    message(3, Some("lobby"), "alice", None, "done. Deploy"),
                    message(4, Some("lobby"), "carol", None, "the deploy is done"),
                ],
                &[],
            )
            .unwrap();
        store
            .append(
                &[
                    message(5, Some("rust"), "bob", None, "deploy again"),
                    message(6, Some("lobby"), "alice", None, "lunch"),
                ],
                &[],
            )
            .unwrap();
        let rooms = ["lobby".to_owned(), "rust".to_owned()];
        let ids = |words, limit| -> Vec<u64> {
            store
                .search("dave", &rooms, 0, words, limit)
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect()
        };
        // The lobby's first chunk holds both words, in three messages; one has both.
        assert_eq!(ids("deploy done", 10), [4, 3, 2]);
        assert_eq!(ids("deploy", 10), [5, 4, 3, 2, 1]);
        assert_eq!(ids("deploy", 3), [5, 4, 3]);
        // A phrase is not found across two messages of a chunk ("the" ends 1, "done" 2).
        assert_eq!(ids("the-done", 10), Vec::<u64>::new());
        assert_eq!(ids("deploy-is", 10), [4]);
        let found = store.search("dave", &rooms, 0, "lunch", 10).unwrap();
        assert_eq!(found, [message(6, Some("lobby"), "alice", None, "lunch")]);
    }

    /// The search index has a document for each chunk and each private message.
    fn assert_index_whole(store: &SqliteStore) {
        let db = store.db.lock().unwrap();
        let count = |sql: &str| db.query_row(sql, [], |row| row.get::<_, i64>(0)).unwrap();
        let documents = count("SELECT count(*) FROM search_docsize");
        let chunks = count("SELECT count(*) FROM chunks");
        let private = count("SELECT count(*) FROM messages");
        assert_eq!(documents, chunks + private);
        db.execute(
            "INSERT INTO search (search, rank) VALUES ('integrity-check', 0)",
            [],
        )
        .expect("the index is whole");
    }

    #[test]
    fn the_search_index_finds_everything_across_its_merges() {
        let (_dir, store) = store();
        let automerge: i64 = store
            .db
            .lock()
            .unwrap()
            .query_row(
                "SELECT v FROM search_config WHERE k = 'automerge'",
                [],
                |row| row.get(0),
            )
            .unwrap();
        assert_eq!(automerge, 0, "merging waits for a level's 16 segments");
        // Each step is a segment of its own: 40 of them merge at 16 on the first level.
        for step in 0..40u64 {
            let from = 1 + step * 10;
            store
                .append(&batch(from, 10, &format!("step{step} common")), &[])
                .unwrap();
            assert!(!store.index_waiting(10).unwrap());
        }
        for step in [0, 15, 16, 39] {
            let found = store
                .search("bob", &["lobby".into()], 0, &format!("step{step}"), 100)
                .unwrap();
            assert_eq!(found.len(), 10, "step {step}");
            assert!(
                found
                    .iter()
                    .all(|m| m.id > step * 10 && m.id <= step * 10 + 10)
            );
        }
        let common = store
            .search("bob", &["lobby".into()], 0, "common", 500)
            .unwrap();
        assert_eq!(common.len(), 400);
        assert_index_whole(&store);
    }

    #[test]
    fn a_database_of_schema_5_moves_its_room_messages_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            let db = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..5] {
                migration.apply(&db).unwrap();
            }
            db.pragma_update(None, "user_version", 5).unwrap();
            let mut insert = db
                .prepare(
                    "INSERT INTO messages (id, ts, room, sender, sender_key, recipient, \
                     recipient_key, text) VALUES (?1, ?1, ?2, ?3, lower(?3), ?4, lower(?4), ?5)",
                )
                .unwrap();
            for id in 1..=1200_i64 {
                let room = ["lobby", "rust"][(id % 2) as usize];
                let text = format!("old {id}");
                insert
                    .execute(params![id, room, "Alice", None::<String>, text])
                    .unwrap();
            }
            insert
                .execute(params![1201, None::<String>, "Alice", "Bob", "psst"])
                .unwrap();
            db.execute(
                "INSERT INTO undelivered (recipient_key, message_id) VALUES ('bob', 1201)",
                [],
            )
            .unwrap();
            db.execute(
                "INSERT INTO messages_text (messages_text) VALUES ('rebuild')",
                [],
            )
            .unwrap();
            db.execute("UPDATE search_index SET through = 1201", [])
                .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.last_id().unwrap(), 1201);
        let lobby = store
            .history(&Thread::Room("lobby".into()), None, 1000)
            .unwrap();
        assert_eq!(lobby.len(), 600, "every message of the room, in chunks");
        assert!(lobby.windows(2).all(|pair| pair[0].id + 2 == pair[1].id));
        assert_eq!((lobby[0].id, lobby[0].text.as_str()), (2, "old 2"));
        assert_eq!(lobby[0].from, "Alice");
        let chunks: i64 = store
            .db
            .lock()
            .unwrap()
            .query_row("SELECT count(*) FROM chunks", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            chunks, 4,
            "two rooms, at most {CHUNK_MOST} messages a chunk"
        );
        let rooms = ["lobby".to_owned(), "rust".to_owned()];
        let found = store.search("carol", &rooms, 0, "old 1199", 10).unwrap();
        assert_eq!(found.iter().map(|m| m.id).collect::<Vec<_>>(), [1199]);
        assert_index_whole(&store);
        let private = Thread::Private("alice".into(), "bob".into(), 0);
        assert_eq!(store.history(&private, None, 10).unwrap()[0].text, "psst");
        assert_eq!(store.undelivered("bob", 0, 10).unwrap()[0].id, 1201);
        // The next message continues the ids, in a chunk of its own.
        store
            .append(&[message(1202, Some("lobby"), "bob", None, "new")], &[])
            .unwrap();
        let last = store
            .history(&Thread::Room("lobby".into()), None, 2)
            .unwrap();
        assert_eq!(last.iter().map(|m| m.id).collect::<Vec<_>>(), [1200, 1202]);
    }

    #[test]
    fn accounts_and_undelivered_messages() {
        let (_dir, store) = store();
        assert!(store.create_account("Bob", "$argon2id$hash1", 0).unwrap());
        assert!(!store.create_account("bob", "$argon2id$other", 0).unwrap());
        let bob = store.account("BOB").unwrap().unwrap();
        assert_eq!(
            (bob.name.as_str(), bob.hash.as_str()),
            ("Bob", "$argon2id$hash1")
        );
        assert!(store.set_password("bob", "$argon2id$hash2").unwrap());
        assert_eq!(
            store.account("bob").unwrap().unwrap().hash,
            "$argon2id$hash2"
        );
        assert!(!store.set_password("nobody", "x").unwrap());

        store
            .append(
                &[
                    message(1, None, "alice", Some("Bob"), "while you were out"),
                    message(2, None, "alice", Some("Bob"), "and again"),
                    message(3, None, "alice", Some("carol"), "not for bob"),
                ],
                &[1, 2],
            )
            .unwrap();
        let ids = |kept: Vec<Stored>| kept.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(store.undelivered("bob", 0, 10).unwrap()), [1, 2]);
        // Read in pages, and kept until marked delivered.
        assert_eq!(ids(store.undelivered("bob", 0, 1).unwrap()), [1]);
        assert_eq!(ids(store.undelivered("bob", 1, 1).unwrap()), [2]);
        assert_eq!(
            store.mailbox("BOB", "Alice").unwrap(),
            Mailbox {
                messages: 2,
                bytes: "while you were out".len() + "and again".len(),
                from_sender: 2,
                bytes_from_sender: "while you were out".len() + "and again".len(),
            }
        );
        assert_eq!(store.mailbox("bob", "carol").unwrap().from_sender, 0);
        store.mark_delivered("bob", 1).unwrap();
        assert_eq!(ids(store.undelivered("bob", 0, 10).unwrap()), [2]);
        store.mark_delivered("bob", 2).unwrap();
        assert!(store.undelivered("bob", 0, 10).unwrap().is_empty());

        assert_eq!(store.accounts().unwrap().len(), 1);
        assert!(store.remove_account("BoB").unwrap());
        assert!(store.account("bob").unwrap().is_none());
    }

    #[test]
    fn reopening_keeps_everything_and_migrates_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        SqliteStore::open(&path)
            .unwrap()
            .append(&[message(1, Some("lobby"), "alice", None, "kept")], &[])
            .unwrap();
        let again = SqliteStore::open(&path).unwrap();
        assert_eq!(again.last_id().unwrap(), 1);
    }
}
