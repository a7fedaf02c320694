//! The embedded store: one SQLite database file in the data folder, in WAL mode.
//!
//! Schema changes are numbered migrations applied in order at open, tracked by SQLite's
//! `user_version`.
//!
//! Full-text search uses an FTS5 index over the messages, filled in bulk rather than per
//! message: indexing a message on its own (the trigger of schema 1) cost six times its insert,
//! ~21 µs against ~4 µs, and took a quarter of a core at 15,000 messages/s. One `INSERT ...
//! SELECT` over thousands of rows costs ~2 µs a row. So a message is indexed once
//! [`INDEX_BATCH`] others wait with it, or just before a search, which therefore always sees
//! everything stored; `search_index` records how far the index reaches.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{Account, Store, StoreError, Stored, Thread};

/// Each migration takes the schema from its index to the next version.
const MIGRATIONS: &[&str] = &[
    // 1: messages, their indexes and the full-text index.
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
    // 2: accounts, and private messages kept for recipients who were offline.
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
    // 3: where an account's private history starts (messages sent to earlier guests of the
    // name stay theirs).
    "ALTER TABLE accounts ADD COLUMN since_id INTEGER NOT NULL DEFAULT 0;",
    // 4: the full-text index is filled in bulk (see the module's comment); the trigger had
    // indexed every message so far.
    "DROP TRIGGER messages_indexed;
    CREATE TABLE search_index (through INTEGER NOT NULL);
    INSERT INTO search_index (through) SELECT coalesce(max(id), 0) FROM messages;",
    // 5: only private messages are looked up by sender and recipient, so only they are in that
    // index: a room message, most of what is stored, updates one index fewer (~0.8 of ~4 µs).
    "DROP INDEX messages_by_pair;
    CREATE INDEX messages_by_pair ON messages (sender_key, recipient_key, id)
        WHERE recipient_key IS NOT NULL;",
];

/// How many stored messages may wait to be indexed for search before the recorder indexes
/// them; a search indexes whatever waits first, so this bounds its extra work too (~10 ms).
const INDEX_BATCH: u64 = 4096;

/// The SQLite store. One connection behind a std mutex: every call is a short, blocking
/// database operation made from a blocking thread, never from the async runtime.
pub struct SqliteStore {
    db: Mutex<Connection>,
}

impl SqliteStore {
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
        let version = when_free(|| migrate(&mut db)).map_err(StoreError::new)?;
        if version > MIGRATIONS.len() {
            return Err(StoreError::new(format!(
                "the database is at schema version {version}, newer than this server knows ({}); \
                 upgrade the server",
                MIGRATIONS.len()
            )));
        }
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
        tx.execute_batch(migration)?;
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

/// The id up to which stored messages are indexed for search.
fn indexed_through(db: &Connection) -> Result<u64, StoreError> {
    db.prepare_cached("SELECT through FROM search_index")
        .and_then(|mut query| query.query_row([], |row| row.get::<_, i64>(0)))
        .map(|id| id as u64)
        .map_err(StoreError::new)
}

/// Indexes for search every stored message that is not yet, in one statement. Writes nothing
/// when nothing waits, so a search then stays a read.
fn index_waiting(db: &Connection) -> Result<(), StoreError> {
    db.prepare_cached(
        "INSERT INTO messages_text (rowid, text) SELECT id, text FROM messages \
         WHERE id > (SELECT through FROM search_index)",
    )
    .and_then(|mut index| index.execute([]))
    .and_then(|_| {
        db.prepare_cached(
            "UPDATE search_index SET through = (SELECT max(id) FROM messages) \
             WHERE through < (SELECT coalesce(max(id), 0) FROM messages)",
        )
        .and_then(|mut update| update.execute([]))
    })
    .map(drop)
    .map_err(StoreError::new)
}

const COLUMNS: &str = "id, ts, room, sender, recipient, text";

/// A page of private messages between ?1 and ?2 (folded names), ids between ?5 and ?3, the
/// latest ?4, newest first; the columns are [`COLUMNS`].
const PRIVATE_HISTORY: &str = "SELECT id, ts, room, sender, recipient, text FROM messages \
     WHERE id < ?3 AND id > ?5 AND \
     ((sender_key = ?1 AND recipient_key = ?2) OR (sender_key = ?2 AND recipient_key = ?1)) \
     ORDER BY id DESC LIMIT ?4";

impl Store for SqliteStore {
    fn last_id(&self) -> Result<u64, StoreError> {
        let db = self.db.lock().unwrap();
        let id: Option<i64> = db
            .query_row("SELECT max(id) FROM messages", [], |row| row.get(0))
            .optional()
            .map_err(StoreError::new)?
            .flatten();
        Ok(id.unwrap_or(0) as u64)
    }

    fn append(&self, messages: &[Stored], undelivered: &[u64]) -> Result<(), StoreError> {
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction().map_err(StoreError::new)?;
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO messages (id, ts, room, sender, sender_key, recipient, \
                     recipient_key, text) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(StoreError::new)?;
            for m in messages {
                insert
                    .execute(params![
                        m.id as i64,
                        m.ts as i64,
                        m.room,
                        m.from,
                        m.from.to_ascii_lowercase(),
                        m.to,
                        m.to.as_ref().map(|to| to.to_ascii_lowercase()),
                        m.text,
                    ])
                    .map_err(StoreError::new)?;
            }
            let mut keep = tx
                .prepare_cached(
                    "INSERT INTO undelivered (recipient_key, message_id) \
                     SELECT recipient_key, id FROM messages WHERE id = ?1",
                )
                .map_err(StoreError::new)?;
            for id in undelivered {
                keep.execute(params![*id as i64]).map_err(StoreError::new)?;
            }
        }
        // Ids arrive in increasing order, so the batch's last is the highest stored.
        if let Some(last) = messages.last()
            && last.id.saturating_sub(indexed_through(&tx)?) >= INDEX_BATCH
        {
            index_waiting(&tx)?;
        }
        tx.commit().map_err(StoreError::new)
    }

    fn take_undelivered(&self, name: &str) -> Result<Vec<Stored>, StoreError> {
        let key = name.to_ascii_lowercase();
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction().map_err(StoreError::new)?;
        let messages = {
            let mut query = tx
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM messages WHERE id IN                      (SELECT message_id FROM undelivered WHERE recipient_key = ?1) ORDER BY id"
                ))
                .map_err(StoreError::new)?;
            query
                .query_map(params![key], stored)
                .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
                .map_err(StoreError::new)?
        };
        tx.execute(
            "DELETE FROM undelivered WHERE recipient_key = ?1",
            params![key],
        )
        .map_err(StoreError::new)?;
        tx.commit().map_err(StoreError::new)?;
        Ok(messages)
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
        let before = before.map_or(i64::MAX, |id| id.min(i64::MAX as u64) as i64);
        let limit = limit as i64;
        let mut rows = match thread {
            Thread::Room(room) => {
                let mut query = db
                    .prepare_cached(&format!(
                        "SELECT {COLUMNS} FROM messages WHERE room = ?1 AND id < ?2 \
                         ORDER BY id DESC LIMIT ?3"
                    ))
                    .map_err(StoreError::new)?;
                query
                    .query_map(params![room, before, limit], stored)
                    .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            }
            Thread::Private(a, b, since) => {
                let (a, b) = (a.to_ascii_lowercase(), b.to_ascii_lowercase());
                let since = (*since).min(i64::MAX as u64) as i64;
                let mut query = db
                    .prepare_cached(PRIVATE_HISTORY)
                    .map_err(StoreError::new)?;
                query
                    .query_map(params![a, b, before, limit, since], stored)
                    .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            }
        }
        .map_err(StoreError::new)?;
        rows.reverse();
        Ok(rows)
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
        if query.is_empty() {
            return Ok(Vec::new());
        }
        let rooms = serde_json::to_string(rooms).expect("names serialize");
        let mut db = self.db.lock().unwrap();
        let tx = db.transaction().map_err(StoreError::new)?;
        index_waiting(&tx)?;
        tx.commit().map_err(StoreError::new)?;
        let mut statement = db
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM messages WHERE id IN \
                 (SELECT rowid FROM messages_text WHERE messages_text MATCH ?1) AND \
                 (room IN (SELECT value FROM json_each(?2)) OR \
                  (room IS NULL AND id > ?5 AND (sender_key = ?3 OR recipient_key = ?3))) \
                 ORDER BY id DESC LIMIT ?4"
            ))
            .map_err(StoreError::new)?;
        statement
            .query_map(
                params![
                    query.join(" "),
                    rooms,
                    user.to_ascii_lowercase(),
                    limit as i64,
                    private_since.min(i64::MAX as u64) as i64
                ],
                stored,
            )
            .and_then(Iterator::collect::<rusqlite::Result<Vec<_>>>)
            .map_err(StoreError::new)
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

    #[test]
    fn messages_are_indexed_in_bulk_and_searches_see_the_rest() {
        let (_dir, store) = store();
        let through = |store: &SqliteStore| indexed_through(&store.db.lock().unwrap()).unwrap();
        let batch = |from: u64, count: u64, word: &str| -> Vec<Stored> {
            (from..from + count)
                .map(|id| message(id, Some("lobby"), "alice", None, &format!("{word} {id}")))
                .collect()
        };
        store.append(&batch(1, 10, "early"), &[]).unwrap();
        assert_eq!(through(&store), 0, "a few messages wait to be indexed");
        let found = store.search("bob", &["lobby".into()], 0, "early", 100);
        assert_eq!(
            found.unwrap().len(),
            10,
            "a search indexes what waits first"
        );
        assert_eq!(through(&store), 10);
        let changes = store.db.lock().unwrap().total_changes();
        store
            .search("bob", &["lobby".into()], 0, "early", 100)
            .unwrap();
        assert_eq!(
            store.db.lock().unwrap().total_changes(),
            changes,
            "with nothing waiting, a search writes nothing"
        );

        store.append(&batch(11, INDEX_BATCH, "bulk"), &[]).unwrap();
        assert_eq!(
            through(&store),
            10 + INDEX_BATCH,
            "a full batch is indexed at once"
        );
        let found = store.search("bob", &["lobby".into()], 0, "bulk 11", 100);
        assert_eq!(
            found.unwrap().iter().map(|m| m.id).collect::<Vec<_>>(),
            [11]
        );
        assert_index_whole(&store);
    }

    /// FTS5 checks its index against the messages: an entry missing or made twice fails.
    fn assert_index_whole(store: &SqliteStore) {
        store
            .db
            .lock()
            .unwrap()
            .execute(
                "INSERT INTO messages_text (messages_text, rank) VALUES ('integrity-check', 1)",
                [],
            )
            .expect("the index holds each message once");
    }

    #[test]
    fn a_database_indexed_by_the_old_trigger_is_not_indexed_twice() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        {
            // Schema 3, where a trigger indexed each message as it was inserted.
            let db = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..3] {
                db.execute_batch(migration).unwrap();
            }
            db.pragma_update(None, "user_version", 3).unwrap();
            db.execute(
                "INSERT INTO messages (id, ts, room, sender, sender_key, text) \
                 VALUES (7, 1, 'lobby', 'alice', 'alice', 'indexed already')",
                [],
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(indexed_through(&store.db.lock().unwrap()).unwrap(), 7);
        store
            .append(
                &[message(8, Some("lobby"), "bob", None, "indexed later")],
                &[],
            )
            .unwrap();
        let found = store.search("carol", &["lobby".into()], 0, "indexed", 10);
        assert_eq!(
            found.unwrap().iter().map(|m| m.id).collect::<Vec<_>>(),
            [8, 7]
        );
        assert_index_whole(&store);
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
        let kept = store.take_undelivered("bob").unwrap();
        assert_eq!(kept.iter().map(|m| m.id).collect::<Vec<_>>(), [1, 2]);
        assert!(
            store.take_undelivered("bob").unwrap().is_empty(),
            "taken once"
        );

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
