//! The shared folder, reached only through a capability handle.
//!
//! Every path a client names is first checked as text ([`parley_proto::paths::split`]: no `..`,
//! no absolute paths, no backslashes, percent escapes or control characters), then resolved
//! through a cap-std [`Dir`] opened on the shared folder. cap-std resolves each step itself and
//! refuses any that would leave the folder, symlinks included, so escaping is impossible by
//! construction rather than by string checks alone. Anything that is neither a regular file nor
//! a folder (devices, FIFOs, sockets) is never listed or opened.

use std::io;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata};
use parley_proto::ErrorCode;
use parley_proto::paths;
use parley_proto::request::{Entry, Listing};
use tracing::warn;

use crate::hub::Refusal;

/// The shared folder.
pub(crate) struct SharedFolder {
    root: Dir,
}

impl SharedFolder {
    /// Opens the shared folder at `path`, creating it if missing.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let root = Dir::open_ambient_dir(path, ambient_authority())?;
        Ok(Self { root })
    }

    /// Lists the folder `path` (relative to the shared folder).
    pub(crate) fn list(&self, user: &str, path: &str) -> Result<Listing, Refusal> {
        let names = checked(user, path)?;
        let relative: PathBuf = names.iter().collect();
        let shown = names.join("/");
        let dir = if names.is_empty() {
            self.root.try_clone()
        } else {
            self.root.open_dir(&relative)
        }
        .map_err(|err| resolve_error(user, &shown, err))?;

        let mut entries = Vec::new();
        for entry in dir
            .entries()
            .map_err(|err| resolve_error(user, &shown, err))?
        {
            let Ok(entry) = entry else { continue };
            let Ok(name) = entry.file_name().into_string() else {
                continue; // Not UTF-8: it could not be named in a request anyway.
            };
            // Follow a symlink only as far as cap-std allows: one pointing outside fails here
            // and the entry is not shown.
            let Ok(metadata) = dir.metadata(&name) else {
                continue;
            };
            if let Some(entry) = describe(name, &metadata) {
                entries.push(entry);
            }
        }
        entries.sort_by(|a, b| {
            (!a.folder, a.name.to_lowercase()).cmp(&(!b.folder, b.name.to_lowercase()))
        });
        let files = entries.iter().filter(|e| !e.folder).count();
        Ok(Listing {
            path: shown,
            files,
            folders: entries.len() - files,
            total_bytes: entries.iter().map(|e| e.size).sum(),
            entries,
        })
    }
}

/// A shared file opened for reading.
pub(crate) struct OpenFile {
    pub(crate) file: std::fs::File,
    /// The path, normalized.
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) size: u64,
}

impl SharedFolder {
    /// Opens the regular file `path` for reading.
    pub(crate) fn open_file(&self, user: &str, path: &str) -> Result<OpenFile, Refusal> {
        let names = checked(user, path)?;
        let shown = names.join("/");
        let Some(name) = names.last() else {
            return Err(Refusal {
                code: ErrorCode::NoSuchFile,
                message: "Name a file to download.".into(),
            });
        };
        let relative: PathBuf = names.iter().collect();
        let not_a_file = |what: &str| Refusal {
            code: ErrorCode::NoSuchFile,
            message: format!("{shown:?} is {what}, not a file."),
        };
        // Look before opening: opening a FIFO for reading would block until a writer came.
        let metadata = self
            .root
            .metadata(&relative)
            .map_err(|err| resolve_error(user, &shown, err))?;
        if metadata.is_dir() {
            return Err(not_a_file("a folder"));
        }
        if !metadata.is_file() {
            warn!("{user} asked for {shown:?}, which is not a regular file");
            return Err(not_a_file("a special file"));
        }
        let file = self
            .root
            .open(&relative)
            .map_err(|err| resolve_error(user, &shown, err))?
            .into_std();
        // And check again what was opened, in case the name changed in between.
        let metadata = file
            .metadata()
            .map_err(|err| resolve_error(user, &shown, err))?;
        if !metadata.is_file() {
            return Err(not_a_file("a special file"));
        }
        Ok(OpenFile {
            file,
            name: (*name).to_owned(),
            path: shown,
            size: metadata.len(),
        })
    }
}

/// An entry for a regular file or a folder; `None` for anything else.
fn describe(name: String, metadata: &Metadata) -> Option<Entry> {
    let folder = metadata.is_dir();
    if !folder && !metadata.is_file() {
        return None;
    }
    let modified = metadata
        .modified()
        .ok()
        .and_then(|time| time.into_std().duration_since(UNIX_EPOCH).ok())
        .map_or(0, |since| since.as_millis() as u64);
    Some(Entry {
        name,
        folder,
        size: if folder { 0 } else { metadata.len() },
        modified,
        uploader: None,
    })
}

/// The names of `path`, or a refusal that is also logged: a refused path is someone probing.
fn checked<'a>(user: &str, path: &'a str) -> Result<Vec<&'a str>, Refusal> {
    paths::split(path).map_err(|err| {
        warn!("{user} asked for a path that is not allowed: {path:?} ({err})");
        Refusal {
            code: ErrorCode::BadPath,
            message: format!("The path {path:?} is not allowed: {err}."),
        }
    })
}

/// Maps a file system error on `shown` to what the client is told.
fn resolve_error(user: &str, shown: &str, err: io::Error) -> Refusal {
    match err.kind() {
        io::ErrorKind::NotFound => Refusal {
            code: ErrorCode::NoSuchFile,
            message: format!("Nothing named {shown:?} is shared."),
        },
        io::ErrorKind::NotADirectory => Refusal {
            code: ErrorCode::NoSuchFile,
            message: format!("{shown:?} is a file, not a folder."),
        },
        _ => {
            // cap-std reports a step outside the shared folder (through a symlink) as a
            // permission error; so does a folder the server may not read.
            warn!("{user} was refused {shown:?}: {err}");
            Refusal {
                code: ErrorCode::BadPath,
                message: format!(
                    "{shown:?} cannot be opened: it is outside the shared folder or not readable."
                ),
            }
        }
    }
}
