//! User and room names: which are valid, and when two are the same.
//!
//! Names are ASCII on purpose: letters that look alike in different scripts would let one user
//! pose as another, and ASCII keeps "unique without regard to case" unambiguous.

use crate::limits::MAX_NAME_CHARS;

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name has no characters.
    #[error("a name cannot be empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_CHARS`].
    #[error("a name can be at most {MAX_NAME_CHARS} characters long; this one has {0}")]
    TooLong(usize),
    /// The name holds a character outside letters, digits, `_`, `-` and `.`.
    #[error(
        "a name may only contain letters A-Z and a-z, digits, '_', '-' and '.'; {0:?} is not allowed"
    )]
    BadChar(char),
}

/// Checks a user name: 1 to 32 of `A-Z a-z 0-9 _ - .`.
pub fn validate_user_name(name: &str) -> Result<(), NameError> {
    validate(name)
}

/// Checks a room name (without its optional leading `#`); the rules are those of user names.
pub fn validate_room_name(name: &str) -> Result<(), NameError> {
    validate(name)
}

/// The form of a name used to compare it: names differ only if they differ other than by case.
pub fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

/// The canonical form of a room name as a user may type it: no leading `#`, lower case.
pub fn canonical_room(name: &str) -> String {
    fold(name.strip_prefix('#').unwrap_or(name))
}

fn validate(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(NameError::BadChar(bad));
    }
    // All characters are ASCII from here on, so the byte length is the character count.
    if name.len() > MAX_NAME_CHARS {
        return Err(NameError::TooLong(name.len()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for name in ["a", "Alice", "bob_2", "x-y.z", &"n".repeat(32)] {
            assert_eq!(validate_user_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn refuses_with_the_reason() {
        assert_eq!(validate_user_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_user_name(&"n".repeat(33)),
            Err(NameError::TooLong(33))
        );
        assert_eq!(validate_user_name("al ice"), Err(NameError::BadChar(' ')));
        assert_eq!(validate_user_name("zoë"), Err(NameError::BadChar('ë')));
        assert_eq!(
            validate_user_name("a\u{1b}"),
            Err(NameError::BadChar('\u{1b}'))
        );
    }

    #[test]
    fn folding_ignores_case_and_hash() {
        assert_eq!(fold("Alice"), fold("aLICE"));
        assert_eq!(canonical_room("#Rust"), "rust");
        assert_eq!(canonical_room("rust"), "rust");
    }
}
