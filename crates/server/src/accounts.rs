//! Accounts: passwords are kept only as Argon2id hashes, checked on a blocking thread (hashing
//! is slow on purpose), and repeated failures are slowed down per name and per address.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use parley_proto::ErrorCode;
use parley_proto::limits::{MAX_PASSWORD_BYTES, MIN_PASSWORD_CHARS};

use crate::hub::Refusal;

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

/// Recent failed sign-ins by key (`name:<name>`, `ip:<address>`). A std mutex: held for a map
/// lookup or update only.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
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

#[cfg(test)]
mod tests {
    use super::*;

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
