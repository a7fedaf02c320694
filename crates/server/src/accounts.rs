//! Accounts: passwords are kept only as Argon2id hashes, checked on a blocking thread (hashing
//! is slow on purpose), and repeated failures are slowed down per name and per address.
//!
//! Guesses at one name wait in line, one checked at a time, so that the delay earned by
//! failures holds however many connections guess at once; and only as many Argon2 runs as
//! there are cores go on at once in the whole server, each holding 19 MiB: 256 guesses made
//! together once held 1.8 GB (docs/benchmarks.md, "Password guesses").

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parley_proto::ErrorCode;
use parley_proto::limits::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};

use crate::hub::Refusal;
use crate::store::{Store, StoreError};

/// Hashes `password` with Argon2id and a fresh salt, as a PHC string.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| err.to_string())
}

/// Whether `password` matches `hash`.
pub fn verify(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|hash| {
        Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Refuses passwords too short to resist guessing or too long to hash cheaply.
pub fn check_strength(password: &str) -> Result<(), WeakPassword> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(WeakPassword {
            message: format!("A password needs at least {MIN_PASSWORD_CHARS} characters."),
        });
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(WeakPassword {
            message: format!("A password can be at most {MAX_PASSWORD_BYTES} bytes long."),
        });
    }
    Ok(())
}

/// A password refused by [`check_strength`], and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct WeakPassword {
    /// Why, for a person.
    pub message: String,
}

impl From<WeakPassword> for Refusal {
    fn from(weak: WeakPassword) -> Self {
        Refusal {
            code: ErrorCode::WeakPassword,
            message: weak.message,
        }
    }
}

/// Failures are forgotten after this long.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);

/// The wait after the first failure; it doubles with each further one.
const FIRST_DELAY: Duration = Duration::from_millis(250);

/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(8);

/// Most names and addresses remembered; beyond, the oldest are forgotten first.
const MAX_TRACKED: usize = 100_000;

/// Password work: recent failed sign-ins by key (`name:<name>`, `ip:<address>`), the line
/// of guesses waiting at each name, and the permits for Argon2 runs. The std mutexes are held
/// for a map lookup or update only.
pub struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    /// One entry per name someone is guessing at, for as long as a guess waits or is checked;
    /// a tokio mutex, fair, so the guesses are checked in the order they came.
    lines: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// One permit per core: an Argon2 run is all CPU, so more at once only hold more memory
    /// (19 MiB each) without finishing sooner.
    runs: Arc<tokio::sync::Semaphore>,
}

impl Default for Throttle {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            failures: Mutex::default(),
            lines: Mutex::default(),
            runs: Arc::new(tokio::sync::Semaphore::new(cores)),
        }
    }
}

/// A guess's turn at its name: while it lives, other guesses at the name wait.
pub struct Turn<'a> {
    _turn: tokio::sync::OwnedMutexGuard<()>,
    _place: Place<'a>,
}

/// Leave to run Argon2 once (see [`Throttle::permit`]); given back when dropped.
pub struct Permit {
    _held: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Runs `work` on a blocking thread holding `permit`. The permit goes with the work, so that
/// it is given back only when the run is over, even if the caller stops waiting.
async fn run<T: Send + 'static>(
    permit: Permit,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
}

/// A place in a name's line, held while waiting and during the turn; the last to leave
/// removes the line, so the map holds only names being guessed at now.
struct Place<'a> {
    lines: &'a Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    name: String,
    line: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut lines = self.lines.lock().unwrap();
        // The map's reference and this place's are the only ones left: nobody else waits.
        // References are taken only under this lock, so the count cannot rise meanwhile.
        if Arc::strong_count(&self.line) == 2 {
            lines.remove(&self.name);
        }
    }
}

impl Throttle {
    /// Waits for a guess's turn at `name` (folded), then for the delay that recent failures
    /// of any of `keys` earned. The wait is as long as the line; a caller that must give up
    /// (the handshake timeout) drops the future, and leaves the line.
    pub async fn turn(&self, name: &str, keys: &[String]) -> Turn<'_> {
        let place = {
            let mut lines = self.lines.lock().unwrap();
            let line = lines.entry(name.to_owned()).or_default().clone();
            Place {
                lines: &self.lines,
                name: name.to_owned(),
                line,
            }
        };
        let turn = place.line.clone().lock_owned().await;
        // Looked at only now: the failures of the guesses ahead in line count.
        tokio::time::sleep(self.delay(keys)).await;
        Turn {
            _turn: turn,
            _place: place,
        }
    }

    /// Waits until one of the server's permits for Argon2 runs is free. Apart from
    /// [`Throttle::verify`], so that a caller may count this wait against a timeout too.
    pub async fn permit(&self) -> Permit {
        // Never closed, so acquiring cannot fail.
        Permit {
            _held: self.runs.clone().acquire_owned().await.ok(),
        }
    }

    /// Whether `password` matches `hash`, checked on a blocking thread with `permit`.
    pub async fn verify(&self, permit: Permit, password: String, hash: String) -> bool {
        run(permit, move || verify(&password, &hash))
            .await
            .unwrap_or(false)
    }

    /// Hashes `password` as [`hash`] does, on a blocking thread once a permit is free.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let permit = self.permit().await;
        run(permit, move || hash(&password))
            .await
            .unwrap_or_else(|err| Err(err.to_string()))
    }

    /// How long to wait before checking a password for any of `keys`.
    pub fn delay(&self, keys: &[String]) -> Duration {
        let failures = self.failures.lock().unwrap();
        keys.iter()
            .filter_map(|key| failures.get(key))
            .filter(|(_, last)| last.elapsed() < FORGET_AFTER)
            .map(|(count, _)| {
                let doublings = count.saturating_sub(1).min(16);
                FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
            })
            .max()
            .unwrap_or_default()
    }

    /// Counts a failure against each of `keys`.
    pub fn failed(&self, keys: &[String]) {
        let mut failures = self.failures.lock().unwrap();
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, last)| last.elapsed() < FORGET_AFTER);
            if failures.len() >= MAX_TRACKED {
                failures.clear();
            }
        }
        for key in keys {
            let entry = failures.entry(key.clone()).or_insert((0, Instant::now()));
            if entry.1.elapsed() >= FORGET_AFTER {
                entry.0 = 0;
            }
            entry.0 += 1;
            entry.1 = Instant::now();
        }
    }

    /// Forgets the failures of `keys` after a success.
    pub fn succeeded(&self, keys: &[String]) {
        let mut failures = self.failures.lock().unwrap();
        for key in keys {
            failures.remove(key);
        }
    }
}

/// How long the [`Registry`] believes what it last read of the accounts before it checks
/// again: at most this long after `parley admin` registers a name while the server runs, a
/// guest without a password may still sign in with it.
const REGISTRY_FRESH: Duration = Duration::from_millis(250);

/// Which names are registered, known without asking the store. Most sign-ins are guests', and
/// asking the store costs each a trip to the blocking threads and the store's lock: when
/// 10,000 people arrived together that was a quarter of the time until all were in. Accounts
/// made through this server are added here as they are made; `parley admin` changes them from
/// another process, so what was read is believed for [`REGISTRY_FRESH`] only. After that, the
/// next sign-in asks the store whether another process changed the database, which is cheap,
/// and reads the names again only if so.
#[derive(Default)]
pub struct Registry {
    known: Mutex<Known>,
}

#[derive(Default)]
struct Known {
    /// The registered names in ASCII lower case, as the store compares them.
    keys: HashSet<String>,
    /// The store's mark of the state `keys` were read in; `None` before the first read.
    version: Option<u64>,
    /// When the store was last asked.
    checked: Option<Instant>,
    /// Set while one sign-in asks the store: the others meanwhile ask only about their own
    /// name, not all over again.
    refreshing: bool,
    /// Counts accounts made through this server: a read that began before one was made must
    /// not replace `keys`, or the account would be forgotten.
    made: u64,
}

impl Registry {
    /// Whether `name` is surely not registered: no account had it when the store was asked, a
    /// moment ago. `false` means the store must be asked.
    pub fn surely_unregistered(&self, name: &str) -> bool {
        let known = self.known.lock().unwrap();
        known
            .checked
            .is_some_and(|at| at.elapsed() < REGISTRY_FRESH)
            && !known.keys.contains(&name.to_ascii_lowercase())
    }

    /// Asks `store` whether accounts changed elsewhere, unless it was asked a moment ago or is
    /// being asked, and takes in the names it then reads. Blocks: call it off the async
    /// threads.
    pub fn refresh(&self, store: &dyn Store) -> Result<(), StoreError> {
        let (seen, made) = {
            let mut known = self.known.lock().unwrap();
            let fresh = known
                .checked
                .is_some_and(|at| at.elapsed() < REGISTRY_FRESH);
            if fresh || known.refreshing {
                return Ok(());
            }
            known.refreshing = true;
            (known.version, known.made)
        };
        let read = store.account_keys(seen);
        let mut known = self.known.lock().unwrap();
        known.refreshing = false;
        let (version, keys) = read?;
        if known.made != made {
            // An account was made meanwhile: what was read may lack it. Read again next time.
            return Ok(());
        }
        if let Some(keys) = keys {
            known.keys = keys.into_iter().collect();
        }
        known.version = Some(version);
        known.checked = Some(Instant::now());
        Ok(())
    }

    /// Records that `name` was registered through this server.
    pub fn made(&self, name: &str) {
        let mut known = self.known.lock().unwrap();
        known.keys.insert(name.to_ascii_lowercase());
        known.made += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    impl Registry {
        /// Forgets when the store was last asked, as if [`REGISTRY_FRESH`] had passed.
        fn expire(&self) {
            self.known.lock().unwrap().checked = None;
        }
    }

    #[test]
    fn the_registry_learns_of_accounts_made_here_and_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.db");
        let server = SqliteStore::open(&path).unwrap();
        server.create_account("Alice", "hash", 0).unwrap();
        let registry = Registry::default();
        assert!(
            !registry.surely_unregistered("bob"),
            "nothing is known before the store is asked"
        );
        registry.refresh(&server).unwrap();
        assert!(registry.surely_unregistered("bob"));
        assert!(
            !registry.surely_unregistered("ALICE"),
            "compared as the store does"
        );

        // Another process (`parley admin`) registers bob: believed unregistered until the
        // registry asks again.
        let admin = SqliteStore::open(&path).unwrap();
        admin.create_account("bob", "hash", 0).unwrap();
        assert!(registry.surely_unregistered("bob"));
        registry.expire();
        assert!(!registry.surely_unregistered("bob"));
        registry.refresh(&server).unwrap();
        assert!(!registry.surely_unregistered("Bob"));

        // An account made through this server is known at once.
        server.create_account("carol", "hash", 0).unwrap();
        registry.made("carol");
        assert!(!registry.surely_unregistered("carol"));
        // And not forgotten when the store is asked again and nothing changed elsewhere.
        registry.expire();
        registry.refresh(&server).unwrap();
        assert!(!registry.surely_unregistered("carol"));
        assert!(registry.surely_unregistered("dave"));
    }

    #[test]
    fn hashes_verify_and_differ() {
        let first = hash("correct horse").unwrap();
        let second = hash("correct horse").unwrap();
        assert!(first.starts_with("$argon2id$"));
        assert_ne!(first, second, "salted");
        assert!(!first.contains("correct horse"));
        assert!(verify("correct horse", &first));
        assert!(!verify("wrong horse", &first));
        assert!(!verify("correct horse", "not a hash"));
    }

    #[test]
    fn strength() {
        assert!(check_strength("1234567").is_err());
        assert!(check_strength("12345678").is_ok());
        assert!(check_strength(&"x".repeat(1025)).is_err());
    }

    #[tokio::test]
    async fn guesses_at_a_name_wait_in_line_and_the_line_is_forgotten() {
        let throttle = Throttle::default();
        let keys = ["name:bob".to_owned()];
        let first = throttle.turn("bob", &keys).await;
        let wait = Duration::from_millis(20);
        assert!(
            tokio::time::timeout(wait, throttle.turn("bob", &keys))
                .await
                .is_err(),
            "a second guess at bob waits for the first"
        );
        drop(throttle.turn("carol", &["name:carol".to_owned()]).await);
        drop(first);
        drop(throttle.turn("bob", &keys).await);
        assert!(
            throttle.lines.lock().unwrap().is_empty(),
            "no line is kept once nobody waits, given up or not"
        );
    }

    #[test]
    fn failures_slow_down_until_a_success() {
        let throttle = Throttle::default();
        let keys = ["name:bob".to_owned(), "ip:10.0.0.1".to_owned()];
        assert_eq!(throttle.delay(&keys), Duration::ZERO);
        throttle.failed(&keys);
        assert_eq!(throttle.delay(&keys), FIRST_DELAY);
        throttle.failed(&keys);
        throttle.failed(&keys);
        assert_eq!(throttle.delay(&keys), FIRST_DELAY * 4);
        // Another name from the same address is slowed down too.
        assert_eq!(
            throttle.delay(&["name:carol".into(), "ip:10.0.0.1".into()]),
            FIRST_DELAY * 4
        );
        for _ in 0..20 {
            throttle.failed(&keys);
        }
        assert_eq!(throttle.delay(&keys), MAX_DELAY);
        throttle.succeeded(&keys);
        assert_eq!(throttle.delay(&keys), Duration::ZERO);
    }
}
