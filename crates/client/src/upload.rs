//! Sharing a local file: announced with its size, streamed in chunks while being hashed, then
//! concluded with the hash, which the server checks before the file appears for anyone.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parley_proto::event::TransferStatus;
use parley_proto::limits::MAX_DATA_CHUNK;
use parley_proto::request::Uploaded;
use tokio::fs::File;
use tokio::io::AsyncReadExt;

use crate::client::{Client, RequestError, UploadStopped};

/// An upload the server accepted and published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shared {
    /// Where the file is now, and the name it got there.
    pub uploaded: Uploaded,
    /// How long it took.
    pub elapsed: Duration,
}

/// Why an upload did not end in the shared folder.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The server refused the upload, or its checksum.
    #[error("{0}")]
    Request(#[from] RequestError),
    /// The local file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The local path is not a file with a name that can be shared.
    #[error("{} is not a file that can be shared", .0.display())]
    NotAFile(PathBuf),
    /// Someone cancelled the upload; nothing was published.
    #[error("the upload was cancelled")]
    Cancelled,
    /// The server stopped the upload.
    #[error("{0}")]
    Failed(String),
    /// The connection closed; nothing was published.
    #[error("the connection closed during the upload")]
    Interrupted,
}

/// Uploads the local file `local` into the shared folder `folder`, calling `started` with the
/// transfer id, name and size once the server accepted it, and `progress` with bytes sent.
pub async fn upload(
    client: &Client,
    local: &Path,
    folder: &str,
    started: impl FnOnce(u32, &str, u64),
    mut progress: impl FnMut(u64),
) -> Result<Shared, UploadError> {
    let io_error = |source| UploadError::Io {
        path: local.to_owned(),
        source,
    };
    let name = local
        .file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| UploadError::NotAFile(local.to_owned()))?;
    let mut file = File::open(local).await.map_err(io_error)?;
    let metadata = file.metadata().await.map_err(io_error)?;
    if !metadata.is_file() {
        return Err(UploadError::NotAFile(local.to_owned()));
    }
    let size = metadata.len();
    let begun = Instant::now();
    let mut outgoing = client.upload(folder, name, size).await?;
    started(outgoing.info.transfer, name, size);

    let chunk = outgoing.info.max_chunk.clamp(1, MAX_DATA_CHUNK);
    let mut buf = vec![0; chunk];
    let mut hasher = blake3::Hasher::new();
    let mut sent = 0;
    progress(0);
    while sent < size {
        let want = (size - sent).min(chunk as u64) as usize;
        let read = file.read(&mut buf[..want]).await.map_err(io_error)?;
        if read == 0 {
            return Err(io_error(io::Error::other(
                "the file shrank while being sent",
            )));
        }
        outgoing
            .send(&buf[..read])
            .await
            .map_err(|stopped| match stopped {
                UploadStopped::Ended(end) if end.status == TransferStatus::Cancelled => {
                    UploadError::Cancelled
                }
                UploadStopped::Ended(end) => UploadError::Failed(
                    end.message
                        .unwrap_or_else(|| "the server stopped the upload".into()),
                ),
                UploadStopped::Closed => UploadError::Interrupted,
            })?;
        hasher.update(&buf[..read]);
        sent += read as u64;
        progress(sent);
    }
    let uploaded = outgoing
        .finish(hasher.finalize().to_hex().to_string())
        .await
        .map_err(|err| match err {
            RequestError::Closed => UploadError::Interrupted,
            // A cancel that crossed the last data frames makes the upload unknown at `finish`.
            RequestError::Refused {
                code: parley_proto::ErrorCode::BadTransfer,
                ..
            } => UploadError::Cancelled,
            other => UploadError::Request(other),
        })?;
    Ok(Shared {
        uploaded,
        elapsed: begun.elapsed(),
    })
}
