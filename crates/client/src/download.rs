//! Saving a download: into `<name>.part` first, resumed from there if a previous attempt was cut
//! off, verified against the server's BLAKE3 hash of the whole file, and only then given its
//! name, never overwriting a file that is already there (`name (1).ext` instead).

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parley_proto::event::TransferStatus;
use parley_proto::paths::{self, numbered};
use parley_proto::request::Downloading;
use tokio::fs::{self, File, OpenOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{Chunk, Client, RequestError};

/// A download saved and verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Where the file now is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// How many bytes were already there from an earlier attempt.
    pub resumed_from: u64,
    /// How long this attempt took.
    pub elapsed: Duration,
}

/// Why a download did not produce a file.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The server refused the request.
    #[error("{0}")]
    Request(#[from] RequestError),
    /// The path does not end in a file name that can be saved here.
    #[error("{0:?} does not name a file that can be saved")]
    BadName(String),
    /// Writing locally failed.
    #[error("cannot write {}: {source}", path.display())]
    Io {
        /// The file or folder written.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Someone cancelled the transfer; the partial file was removed.
    #[error("the download was cancelled")]
    Cancelled,
    /// The server could not finish sending.
    #[error("{0}")]
    Failed(String),
    /// The bytes received do not match the server's hash; the partial file was removed.
    #[error(
        "the downloaded data does not match the server's checksum; it was discarded, try again"
    )]
    Mismatch,
    /// The connection closed before the end; the partial file stays, to resume from.
    #[error("the connection closed during the download; download it again to resume")]
    Interrupted,
}

/// Downloads `path` into `dir`, calling `started` once the server has said what is coming and
/// `progress` with the bytes present so far (the resumed part included) as they arrive.
pub async fn download(
    client: &Client,
    path: &str,
    dir: &Path,
    started: impl FnOnce(&Downloading),
    mut progress: impl FnMut(u64),
) -> Result<Saved, DownloadError> {
    let name = local_name(path)?;
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| DownloadError::Io { path, source }
    };
    fs::create_dir_all(dir).await.map_err(io_error(dir))?;
    let part = dir.join(format!("{name}.part"));
    let have = fs::metadata(&part).await.map_or(0, |m| m.len());

    let begun = Instant::now();
    let mut incoming = client.download(path, have).await?;
    let info = incoming.info.clone();
    started(&info);
    // The server's offset is authoritative: 0 if the partial file was longer than the file.
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .read(true)
        .open(&part)
        .await
        .map_err(io_error(&part))?;
    file.set_len(info.offset).await.map_err(io_error(&part))?;
    let mut hasher = blake3::Hasher::new();
    hash_prefix(&mut file, info.offset, &mut hasher)
        .await
        .map_err(io_error(&part))?;
    let mut done = info.offset;
    progress(done);

    let end = loop {
        match incoming.next().await {
            Some(Chunk::Data(bytes)) => {
                file.write_all(&bytes).await.map_err(io_error(&part))?;
                hasher.update(&bytes);
                done += bytes.len() as u64;
                progress(done);
            }
            Some(Chunk::End(end)) => break end,
            None => {
                let _ = file.flush().await;
                return Err(DownloadError::Interrupted);
            }
        }
    };
    file.flush().await.map_err(io_error(&part))?;
    match end.status {
        TransferStatus::Complete => {}
        TransferStatus::Cancelled => {
            drop(file);
            let _ = fs::remove_file(&part).await;
            return Err(DownloadError::Cancelled);
        }
        TransferStatus::Failed | TransferStatus::Other => {
            return Err(DownloadError::Failed(end.message.unwrap_or_else(|| {
                "the server could not finish sending the file".into()
            })));
        }
    }
    let verified =
        done == info.size && end.blake3.as_deref() == Some(hasher.finalize().to_hex().as_str());
    if !verified {
        drop(file);
        let _ = fs::remove_file(&part).await;
        return Err(DownloadError::Mismatch);
    }
    file.sync_all().await.map_err(io_error(&part))?;
    drop(file);
    let path = give_name(&part, dir, &name).await.map_err(io_error(dir))?;
    Ok(Saved {
        path,
        size: info.size,
        resumed_from: info.offset,
        elapsed: begun.elapsed(),
    })
}

/// The name to save `path` under: its last component, if that is a plain file name.
fn local_name(path: &str) -> Result<String, DownloadError> {
    let bad = || DownloadError::BadName(path.to_owned());
    let names = paths::split(path).map_err(|_| bad())?;
    let name = names.last().ok_or_else(bad)?;
    if name.starts_with('.') {
        return Err(bad()); // A hidden or a `.part` name would be confusing to save.
    }
    Ok((*name).to_owned())
}

async fn hash_prefix(file: &mut File, len: u64, hasher: &mut blake3::Hasher) -> io::Result<()> {
    let mut buf = vec![0; 256 * 1024];
    let mut left = len;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let read = file.read(&mut buf[..want]).await?;
        if read == 0 {
            return Err(io::Error::other("the partial file shrank"));
        }
        hasher.update(&buf[..read]);
        left -= read as u64;
    }
    Ok(())
}

/// Moves `part` to `dir/name`, or `name (1)`, `name (2)`, ... if taken. A hard link is made
/// first because it fails rather than replace an existing file, unlike a rename.
async fn give_name(part: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0u32.. {
        let candidate = dir.join(numbered(name, n));
        match fs::hard_link(part, &candidate).await {
            Ok(()) => {
                fs::remove_file(part).await?;
                return Ok(candidate);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
    unreachable!("some numbered name is free")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_saved() {
        assert_eq!(local_name("DeepFiles/video1.mp4").unwrap(), "video1.mp4");
        assert!(local_name("").is_err());
        assert!(local_name("../x").is_err());
        assert!(local_name(".bashrc").is_err());
    }
}
