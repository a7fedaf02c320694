//! Paths into the shared folder, as clients write them: checked here, before any file system
//! call, so that a path is only ever a list of plain names below the shared folder.
//!
//! This is the first of two walls. The server then resolves the names through a capability
//! handle on the shared folder (cap-std), which refuses any step outside it, symlinks included.

/// Longest path a client may send, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;

/// Longest single name in a path, in bytes (the common file system limit).
pub const MAX_NAME_BYTES: usize = 255;

/// Longest name for a new file, in bytes: short enough that a number can still be added
/// (`name (12345).ext`) without passing [`MAX_NAME_BYTES`].
pub const MAX_NEW_NAME_BYTES: usize = 240;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path is longer than [`MAX_PATH_BYTES`] or a name longer than [`MAX_NAME_BYTES`].
    #[error("the path is too long")]
    TooLong,
    /// The path starts with `/`.
    #[error("paths are relative to the shared folder: drop the leading '/'")]
    Absolute,
    /// A name is `.` or `..`.
    #[error("'.' and '..' are not allowed in paths")]
    Dots,
    /// The path holds a backslash.
    #[error("use '/' to separate folders, not '\\'")]
    Backslash,
    /// The path holds a percent-encoded byte such as `%2e`; nothing is decoded.
    #[error("percent-encoded characters such as {0:?} are not decoded; write the name itself")]
    PercentEncoded(String),
    /// The path holds a NUL or another control character.
    #[error("control characters are not allowed in paths")]
    ControlChar,
    /// A file name was empty.
    #[error("a file name cannot be empty")]
    Empty,
    /// A file name held a `/`.
    #[error("a file name cannot contain '/'")]
    NotAName,
    /// A new file's name starts with a dot (and the server does not take hidden files).
    #[error("a shared file's name cannot start with '.' on this server")]
    Hidden,
}

/// Splits a client's path into the names it walks through. `""` (and `"/"`-free equivalents
/// such as `"a/"`) name the shared folder itself or the folder `a`; empty names from doubled
/// or trailing slashes are ignored.
pub fn split(path: &str) -> Result<Vec<&str>, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathError::Absolute);
    }
    if path.contains('\\') {
        return Err(PathError::Backslash);
    }
    if path.chars().any(char::is_control) {
        return Err(PathError::ControlChar);
    }
    for (at, _) in path.match_indices('%') {
        let escape = path[at..].get(..3).unwrap_or(&path[at..]);
        if escape.len() == 3 && escape[1..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PathError::PercentEncoded(escape.to_owned()));
        }
    }
    let names: Vec<&str> = path.split('/').filter(|name| !name.is_empty()).collect();
    for name in &names {
        if *name == "." || *name == ".." {
            return Err(PathError::Dots);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(PathError::TooLong);
        }
    }
    Ok(names)
}

/// Checks a name for a new file (an upload): a single plain name, and not hidden (starting
/// with `.`) unless `allow_hidden`. Parley's own `.parley` is never allowed.
pub fn check_file_name(name: &str, allow_hidden: bool) -> Result<(), PathError> {
    let names = split(name)?;
    match names.as_slice() {
        [only] if *only == name => {}
        [] => return Err(PathError::Empty),
        _ => return Err(PathError::NotAName),
    }
    if name.starts_with('.') && (!allow_hidden || name.eq_ignore_ascii_case(".parley")) {
        return Err(PathError::Hidden);
    }
    if name.len() > MAX_NEW_NAME_BYTES {
        return Err(PathError::TooLong);
    }
    Ok(())
}

/// `name` with ` (n)` before its extension (`video1 (1).mp4`); `name` itself for 0. Used to
/// give a new file a free name instead of overwriting one.
pub fn numbered(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_owned();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem} ({n}).{ext}"),
        _ => format!("{name} ({n})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_file_names_are_plain() {
        assert_eq!(check_file_name("video1.mp4", false), Ok(()));
        assert_eq!(check_file_name("with space (2).txt", false), Ok(()));
        assert_eq!(check_file_name("", false), Err(PathError::Empty));
        assert_eq!(check_file_name("a/b", false), Err(PathError::NotAName));
        assert_eq!(check_file_name("a/", false), Err(PathError::NotAName));
        assert_eq!(check_file_name("..", false), Err(PathError::Dots));
        assert_eq!(check_file_name(".bashrc", false), Err(PathError::Hidden));
        assert_eq!(check_file_name(".bashrc", true), Ok(()));
        assert_eq!(check_file_name(".Parley", true), Err(PathError::Hidden));
        assert_eq!(check_file_name(&"n".repeat(240), false), Ok(()));
        assert_eq!(
            check_file_name(&"n".repeat(241), false),
            Err(PathError::TooLong)
        );
        assert_eq!(
            check_file_name("evil\u{1b}[2J", false),
            Err(PathError::ControlChar)
        );
    }

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("video1.mp4", 0), "video1.mp4");
        assert_eq!(numbered("video1.mp4", 1), "video1 (1).mp4");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered("README", 1), "README (1)");
        assert_eq!(numbered(".profile", 1), ".profile (1)");
    }

    #[test]
    fn plain_paths_split_into_names() {
        assert_eq!(split(""), Ok(vec![]));
        assert_eq!(split("DeepFiles"), Ok(vec!["DeepFiles"]));
        assert_eq!(split("DeepFiles/Deeper/"), Ok(vec!["DeepFiles", "Deeper"]));
        assert_eq!(split("a//b"), Ok(vec!["a", "b"]));
        assert_eq!(
            split("video 1 (final).mp4"),
            Ok(vec!["video 1 (final).mp4"])
        );
        assert_eq!(split("100% done.txt"), Ok(vec!["100% done.txt"]));
        assert_eq!(split(".hidden-is-a-name"), Ok(vec![".hidden-is-a-name"]));
    }

    #[test]
    fn escapes_are_refused() {
        assert_eq!(split(".."), Err(PathError::Dots));
        assert_eq!(split("a/../../etc/passwd"), Err(PathError::Dots));
        assert_eq!(split("./a"), Err(PathError::Dots));
        assert_eq!(split("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(split("..\\..\\x"), Err(PathError::Backslash));
        assert_eq!(
            split("%2e%2e/x"),
            Err(PathError::PercentEncoded("%2e".into()))
        );
        assert_eq!(split("a/%2F"), Err(PathError::PercentEncoded("%2F".into())));
        assert_eq!(
            split("a%zz/%2e%2e"),
            Err(PathError::PercentEncoded("%2e".into()))
        );
        assert_eq!(split("a\0b"), Err(PathError::ControlChar));
        assert_eq!(split("a\nb"), Err(PathError::ControlChar));
        assert_eq!(split(&"x".repeat(256)), Err(PathError::TooLong));
        assert_eq!(split(&"x/".repeat(2049)), Err(PathError::TooLong));
    }
}
