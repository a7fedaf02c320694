//! The shared folder, reached only through a capability handle.
//!
//! Every path a client names is first checked as text ([`parley_proto::paths::split`]: no `..`,
//! no absolute paths, no backslashes, percent escapes or control characters), then resolved
//! through a cap-std [`Dir`] opened on the shared folder. cap-std resolves each step itself and
//! refuses any that would leave the folder, symlinks included, so escaping is impossible by
//! construction rather than by string checks alone. Anything that is neither a regular file nor
//! a folder (devices, FIFOs, sockets) is never listed or opened.
//!
//! Uploads are written into `.parley/staging` inside the shared folder and moved to their place
//! by a hard link only once complete and verified: the same file system, so the move is atomic,
//! and a link never replaces an existing file. Who uploaded what, and when, is appended to
//! `.parley/uploads.jsonl`. That private folder is kept out of reach by what it is, not by its
//! name: a symbolic link inside the shared folder (`self -> .`, `Docs/up -> ..`) can lead back
//! to it under any name, so every path is refused if any step of it resolves to the private
//! folder, its staging folder or its record (compared by device and inode), and listings leave
//! those out wherever they appear. Staged files get unguessable names, so no link can have
//! been made to one in advance.
//!
//! Uploads in progress are promised their size of disk space (see [`SharedFolder::promise`]),
//! within the disk reserve and within what one connection and one address may hold.
//!
//! The folder also remembers the BLAKE3 hash of files whose content it has seen whole (verified
//! uploads, complete downloads), keyed by the file's identity, size and modification time, so a
//! download can go from the page cache to the socket without the server reading the file only to
//! hash it. A file changed behind the server's back gets a new key.

use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use cap_std::ambient_authority;
use cap_std::fs::{Dir, Metadata, MetadataExt as _, OpenOptions};
use parley_proto::ErrorCode;
use parley_proto::paths::{self, numbered};
use parley_proto::request::{Entry, Listing};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::Config;
use crate::hub::{Refusal, SessionId};

/// Most file hashes remembered; past this the memory starts again empty, which costs a re-hash
/// per file and keeps the map bounded whatever the folder holds.
const HASHES_KEPT: usize = 4096;

/// Parley's own folder inside the shared folder: hidden from listings, refused in paths (by
/// identity; see the module's introduction).
const PRIVATE: &str = ".parley";

/// Where uploads are written until they are complete, inside [`PRIVATE`].
const STAGING: &str = "staging";

/// The record of uploads, one JSON object a line, inside [`PRIVATE`].
const UPLOADS: &str = "uploads.jsonl";

/// Who shared a file, and when.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadRecord {
    path: String,
    uploader: String,
    time: u64,
}

/// The shared folder.
pub(crate) struct SharedFolder {
    root: Dir,
    /// The same folder as a path, for asking the file system how much space is free.
    root_path: PathBuf,
    staging: Dir,
    next_staged: AtomicU64,
    /// The private folder, its staging folder and its record of uploads, as (device, inode):
    /// what no path may lead to or through, under whatever name.
    private: [Identity; 3],
    /// Bytes promised to uploads in progress, in all and by address, so that several at once
    /// cannot together eat into the reserve, nor a few holders take all of it. A std mutex:
    /// held for a few additions, never across an await.
    promised: Mutex<Ledger>,
    /// Uploads by path, and the file they are appended to. A std mutex: held for a map update
    /// and one small append, never across an await.
    uploads: Mutex<(HashMap<String, UploadRecord>, std::fs::File)>,
    /// Hashes of files seen whole; see the module's introduction.
    hashes: Mutex<HashMap<Stamp, blake3::Hash>>,
}

/// What identifies a file or folder: its device and inode.
type Identity = (u64, u64);

/// What is promised to the uploads in progress.
#[derive(Default)]
struct Ledger {
    total: u64,
    /// By [`Holder::connection`] and by [`Holder::address`]; one holding nothing has no entry.
    by_connection: HashMap<SessionId, u64>,
    by_address: HashMap<IpAddr, u64>,
}

/// Whom an upload's promise of disk space is held for: one connection (a session, with the
/// HTTP uploads made with its token) and the address it came from.
#[derive(Clone, Debug)]
pub(crate) struct Holder {
    /// The connection's session.
    connection: SessionId,
    /// The address, an IPv6 one cut to its /64: one host's share of a network, as near as an
    /// address can tell.
    address: IpAddr,
    /// A guest is not told how much space is free: it is the server's business.
    guest: bool,
}

impl Holder {
    /// The holder for the connection of session `connection`, from `peer`.
    pub(crate) fn new(connection: SessionId, peer: IpAddr, guest: bool) -> Self {
        Self {
            connection,
            address: crate::addresses::key(peer),
            guest,
        }
    }

    pub(crate) fn guest(&self) -> bool {
        self.guest
    }
}

/// Disk space promised to one upload; give it back with [`SharedFolder::release`].
#[derive(Debug)]
pub(crate) struct Promise {
    size: u64,
    holder: Holder,
}

/// Why [`SharedFolder::promise`] could not promise the space.
#[derive(Debug)]
pub(crate) enum Shortfall {
    /// The disk: this much is free, and the reserve must stay so.
    Disk { free: u64 },
    /// The connection's share ([`Config::max_reserved_per_connection`]).
    Connection,
    /// The address's share ([`Config::max_reserved_per_address`]).
    Address,
}

/// What identifies one version of a file: which file (device and inode), its size and when its
/// content last changed. Links and renames leave it as it is, a write changes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Stamp {
    device: u64,
    inode: u64,
    size: u64,
    modified: (i64, i64),
}

impl Stamp {
    /// A short text naming this version of the file, for an HTTP entity tag.
    pub(crate) fn tag(&self) -> String {
        let (seconds, nanos) = self.modified;
        format!("{:x}-{:x}-{seconds:x}.{nanos:x}", self.inode, self.size)
    }

    pub(crate) fn of(metadata: &std::fs::Metadata) -> Self {
        Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
        }
    }
}

impl SharedFolder {
    /// Opens the shared folder at `path`, creating it if missing, and clears the staging area
    /// of uploads a crash left half-written.
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(path.join(PRIVATE).join(STAGING))?;
        let root = Dir::open_ambient_dir(path, ambient_authority())?;
        let private = root.open_dir(PRIVATE)?;
        let staging = private.open_dir(STAGING)?;
        for entry in staging.entries()? {
            let entry = entry?;
            info!(
                "removing an unfinished upload left from before: {:?}",
                entry.file_name()
            );
            staging.remove_file(entry.file_name())?;
        }
        let log = private.open_with(
            UPLOADS,
            OpenOptions::new().create(true).append(true).read(true),
        )?;
        let identity = |metadata: Metadata| (metadata.dev(), metadata.ino());
        let private_ids = [
            identity(private.dir_metadata()?),
            identity(staging.dir_metadata()?),
            identity(log.metadata()?),
        ];
        let records = io::BufReader::new(log.try_clone()?.into_std())
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| serde_json::from_str::<UploadRecord>(&line).ok())
            .map(|record| (record.path.clone(), record))
            .collect();
        Ok(Self {
            root,
            root_path: path.to_owned(),
            staging,
            next_staged: AtomicU64::new(0),
            private: private_ids,
            promised: Mutex::default(),
            uploads: Mutex::new((records, log.into_std())),
            hashes: Mutex::new(HashMap::new()),
        })
    }

    /// The hash of the file version `stamp`, if the server has seen it whole.
    pub(crate) fn known_hash(&self, stamp: &Stamp) -> Option<blake3::Hash> {
        self.hashes.lock().unwrap().get(stamp).copied()
    }

    /// Remembers that the file version `stamp` hashes to `hash`.
    pub(crate) fn remember_hash(&self, stamp: Stamp, hash: blake3::Hash) {
        let mut hashes = self.hashes.lock().unwrap();
        if hashes.len() >= HASHES_KEPT {
            hashes.clear();
        }
        hashes.insert(stamp, hash);
    }

    /// Promises `size` bytes of disk to a new upload for `holder` if, after every upload in
    /// progress gets what it was promised, the disk reserve would stay free, and if the
    /// holder's connection and address would hold no more than their shares of `config`.
    /// Give the promise back with [`SharedFolder::release`].
    pub(crate) fn promise(
        &self,
        size: u64,
        config: &Config,
        holder: &Holder,
    ) -> io::Result<Result<Promise, Shortfall>> {
        // Looked at and promised under one lock, so uploads starting together cannot each
        // take the same last share. The lock is held across the `statvfs` too (a quick call,
        // and this runs on a blocking thread), for the order of the checks protocol.md gives.
        let mut ledger = self.promised.lock().unwrap();
        let Ledger {
            total,
            by_connection,
            by_address,
        } = &mut *ledger;
        let connection = by_connection
            .get(&holder.connection)
            .map_or(0, |held| *held);
        let address = by_address.get(&holder.address).map_or(0, |held| *held);
        if connection.saturating_add(size) > config.max_reserved_per_connection {
            return Ok(Err(Shortfall::Connection));
        }
        if address.saturating_add(size) > config.max_reserved_per_address {
            return Ok(Err(Shortfall::Address));
        }
        let stats = nix::sys::statvfs::statvfs(&self.root_path).map_err(io::Error::from)?;
        let free = stats.blocks_available() as u64 * stats.fragment_size() as u64;
        // Conservative: bytes already written by uploads in progress count twice.
        if free
            < total
                .saturating_add(size)
                .saturating_add(config.disk_reserve)
        {
            return Ok(Err(Shortfall::Disk { free }));
        }
        *total += size;
        by_address.insert(holder.address, address + size);
        by_connection.insert(holder.connection, connection + size);
        Ok(Ok(Promise {
            size,
            holder: holder.clone(),
        }))
    }

    /// Gives back what [`SharedFolder::promise`] promised to an upload that ended.
    pub(crate) fn release(&self, promise: &Promise) {
        let Promise { size, holder } = promise;
        let mut ledger = self.promised.lock().unwrap();
        ledger.total -= size;
        give_back(&mut ledger.by_address, &holder.address, *size);
        give_back(&mut ledger.by_connection, &holder.connection, *size);
    }

    /// Creates an empty file in the staging area for an upload; returns its staging name,
    /// which has 64 random bits in it: no symbolic link can have been made to it beforehand.
    pub(crate) fn stage(&self) -> io::Result<(String, std::fs::File)> {
        let n = self.next_staged.fetch_add(1, Ordering::Relaxed);
        let name = format!("{}-{n}-{:016x}", std::process::id(), OsRng.next_u64());
        let file = self
            .staging
            .open_with(&name, OpenOptions::new().write(true).create_new(true))?;
        Ok((name, file.into_std()))
    }

    /// Removes a staged upload that will not be published.
    pub(crate) fn discard(&self, staged: &str) {
        if let Err(err) = self.staging.remove_file(staged) {
            warn!("could not remove the unfinished upload {staged}: {err}");
        }
    }

    /// Checks that `folder` is a folder of the shared folder; returns its normalized path.
    pub(crate) fn check_folder(&self, user: &str, folder: &str) -> Result<String, Refusal> {
        let names = self.checked(user, folder)?;
        let shown = names.join("/");
        if !names.is_empty() {
            let relative: PathBuf = names.iter().collect();
            let metadata = self
                .root
                .metadata(&relative)
                .map_err(|err| resolve_error(user, &shown, err))?;
            if !metadata.is_dir() {
                return Err(Refusal {
                    code: ErrorCode::NoSuchFile,
                    message: format!("{shown:?} is not a folder."),
                });
            }
        }
        Ok(shown)
    }

    /// Moves a complete, verified upload into `folder` under `name`, or the first free
    /// `name (n)`, and records who shared it. Returns its path and the name it got.
    pub(crate) fn publish(
        &self,
        staged: &str,
        user: &str,
        folder: &str,
        name: &str,
    ) -> Result<(String, String), Refusal> {
        let failed = |err: io::Error| {
            warn!("publishing an upload from {user} into {folder:?} failed: {err}");
            Refusal {
                code: ErrorCode::NoSuchFile,
                message: format!("The file could not be put into {folder:?}: {err}."),
            }
        };
        let names = self.checked(user, folder)?;
        let target = if names.is_empty() {
            self.root.try_clone()
        } else {
            self.root.open_dir(names.iter().collect::<PathBuf>())
        }
        .map_err(failed)?;
        let given = (0u32..)
            .map(|n| numbered(name, n))
            .find_map(
                |candidate| match self.staging.hard_link(staged, &target, &candidate) {
                    Ok(()) => Some(Ok(candidate)),
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => None,
                    Err(err) => Some(Err(err)),
                },
            )
            .expect("some numbered name is free")
            .map_err(failed)?;
        self.discard(staged);
        let path = if folder.is_empty() {
            given.clone()
        } else {
            format!("{folder}/{given}")
        };
        let record = UploadRecord {
            path: path.clone(),
            uploader: user.to_owned(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut uploads = self.uploads.lock().unwrap();
        let line = serde_json::to_string(&record).expect("a record serializes");
        if let Err(err) = writeln!(uploads.1, "{line}") {
            warn!("could not record the upload of {path:?}: {err}");
        }
        uploads.0.insert(path.clone(), record);
        Ok((path, given))
    }

    /// Lists the folder `path` (relative to the shared folder).
    pub(crate) fn list(&self, user: &str, path: &str) -> Result<Listing, Refusal> {
        let names = self.checked(user, path)?;
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
            if names.is_empty() && name.eq_ignore_ascii_case(PRIVATE) {
                continue;
            }
            // Follow a symlink only as far as cap-std allows: one pointing outside fails here
            // and the entry is not shown. Nor is the private folder, whatever leads to it.
            let Ok(metadata) = dir.metadata(&name) else {
                continue;
            };
            if self.is_private(metadata.dev(), metadata.ino()) {
                continue;
            }
            if let Some(entry) = describe(name, &metadata) {
                entries.push(entry);
            }
        }
        let uploads = self.uploads.lock().unwrap();
        for entry in entries.iter_mut().filter(|e| !e.folder) {
            let path = if shown.is_empty() {
                entry.name.clone()
            } else {
                format!("{shown}/{}", entry.name)
            };
            entry.uploader = uploads.0.get(&path).map(|r| r.uploader.clone());
        }
        drop(uploads);
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
    /// The version opened, to look up or remember its hash.
    pub(crate) stamp: Stamp,
}

impl SharedFolder {
    /// Opens the regular file `path` for reading.
    pub(crate) fn open_file(&self, user: &str, path: &str) -> Result<OpenFile, Refusal> {
        let names = self.checked(user, path)?;
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
        // The record of uploads, reached through a link changed since the check.
        if self.is_private(metadata.dev(), metadata.ino()) {
            return Err(private_refusal(user, path));
        }
        Ok(OpenFile {
            file,
            name: (*name).to_owned(),
            path: shown,
            size: metadata.len(),
            stamp: Stamp::of(&metadata),
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

impl SharedFolder {
    /// The names of `path`, or a refusal that is also logged: a refused path is someone
    /// probing. Refused too if any step of it leads to the private folder (see the module's
    /// introduction); a step that does not resolve is left for the caller to report.
    fn checked<'a>(&self, user: &str, path: &'a str) -> Result<Vec<&'a str>, Refusal> {
        let names = checked(user, path)?;
        let mut steps = PathBuf::new();
        for name in &names {
            steps.push(name);
            match self.root.metadata(&steps) {
                Ok(metadata) if self.is_private(metadata.dev(), metadata.ino()) => {
                    return Err(private_refusal(user, path));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        Ok(names)
    }

    /// Whether the file or folder `(device, inode)` is the private folder, its staging folder
    /// or its record.
    fn is_private(&self, device: u64, inode: u64) -> bool {
        self.private.contains(&(device, inode))
    }
}

/// Takes `size` off what `key` holds in `map`, and its entry once it holds nothing.
fn give_back<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u64>, key: &K, size: u64) {
    if let Some(held) = map.get_mut(key) {
        *held -= size;
        if *held == 0 {
            map.remove(key);
        }
    }
}

/// The refusal of a path that leads to the server's private folder, logged.
fn private_refusal(user: &str, path: &str) -> Refusal {
    warn!("{user} asked for Parley's private folder: {path:?}");
    Refusal {
        code: ErrorCode::BadPath,
        message: format!("The path {path:?} is not allowed: it leads to the server's own files."),
    }
}

/// The names of `path` if it obeys the path rules and does not start with the private folder's
/// name, or a refusal that is also logged.
fn checked<'a>(user: &str, path: &'a str) -> Result<Vec<&'a str>, Refusal> {
    let names = paths::split(path).map_err(|err| {
        warn!("{user} asked for a path that is not allowed: {path:?} ({err})");
        Refusal {
            code: ErrorCode::BadPath,
            message: format!("The path {path:?} is not allowed: {err}."),
        }
    })?;
    // Compared without regard to case, for file systems that ignore it.
    if names
        .first()
        .is_some_and(|first| first.eq_ignore_ascii_case(PRIVATE))
    {
        warn!("{user} asked for Parley's private folder: {path:?}");
        return Err(Refusal {
            code: ErrorCode::BadPath,
            message: format!("The path {path:?} is not allowed: {PRIVATE} is the server's own."),
        });
    }
    Ok(names)
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
