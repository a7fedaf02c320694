//! A connection's transfers.
//!
//! Downloads: one task per transfer reads the file and feeds data frames into the session's
//! data lane, which the writer drains only when no chat is waiting. The lane is a small bounded
//! channel, so a transfer reads ahead by a few chunks at most: memory per transfer stays constant
//! whatever the file's size, and a slow reader slows the transfer, not the server. The
//! `transfer_end` event travels the same lane, behind the last data frame, so it can never
//! overtake the data it concludes.
//!
//! Uploads: the session's reader hands each data frame to a blocking thread that writes it to
//! the upload's staged file and hashes it, while the reader reads the next one. One write is in
//! flight at a time, so TCP, not memory, holds back a fast sender. `finish` checks size and
//! hash before the file is published. An upload dropped unfinished (cancelled, failed, or
//! its connection gone) removes its staged file.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use parley_proto::ErrorCode;
use parley_proto::event::{Event, TransferEnd, TransferStatus};
use parley_proto::frame::FrameKind;
use parley_proto::limits::{MAX_DATA_CHUNK, MAX_TRANSFERS};
use parley_proto::paths;
use parley_proto::reply::event_frame;
use parley_proto::request::Uploaded;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::config::Config;
use crate::files::{OpenFile, SharedFolder, Stamp};
use crate::hub::Refusal;
use crate::outbox::Outbox;

/// Data frames queued per connection: with [`MAX_DATA_CHUNK`] bytes each, at most 1 MiB of file
/// is read ahead of the socket.
const LANE_FRAMES: usize = 4;

/// Bytes in a data frame before the file bytes: length, kind, transfer id.
const DATA_HEADER: usize = 4 + 1 + 4;

/// Bytes read at a time while hashing a file beside a zero-copy download.
const HASH_BUFFER: usize = 1024 * 1024;

/// What the data lane carries.
pub(crate) enum Data {
    /// A frame to write as it is: file data read into memory, or a `transfer_end`.
    Frame(Bytes),
    /// A data frame whose file bytes go from the page cache to the socket.
    Span(Span),
}

/// A data frame the writer sends straight from a file: `header`, then `len` bytes of `file`
/// from `offset`.
pub(crate) struct Span {
    pub(crate) header: [u8; DATA_HEADER],
    pub(crate) file: Arc<std::fs::File>,
    pub(crate) offset: u64,
    pub(crate) len: usize,
}

/// The header of a data frame carrying `len` bytes of transfer `transfer`.
fn data_header(transfer: u32, len: usize) -> [u8; DATA_HEADER] {
    let mut header = [0; DATA_HEADER];
    let frame_len = (DATA_HEADER - 4 + len) as u32;
    header[..4].copy_from_slice(&frame_len.to_be_bytes());
    header[4] = FrameKind::Data as u8;
    header[5..].copy_from_slice(&transfer.to_be_bytes());
    header
}

/// The transfers of one connection.
pub(crate) struct Transfers {
    /// The session's queue, which makes the data lane on the first download.
    outbox: Outbox,
    /// The connection's writer can send file bytes from the page cache (plain TCP).
    zero_copy: bool,
    /// Made by the first transfer: most connections never start one, and the maps would be
    /// a hundred bytes of every idle connection.
    running: Option<Box<Running>>,
}

/// The transfers in progress.
#[derive(Default)]
struct Running {
    /// Where downloads send their data frames, once the first has started.
    lane: Option<mpsc::Sender<Data>>,
    downloads: HashMap<u32, (CancellationToken, JoinHandle<()>)>,
    uploads: HashMap<u32, Upload>,
}

/// An upload being received.
pub(crate) struct Upload {
    pub(crate) staged: String,
    /// The staged file and the hash so far, while no write is in flight.
    file: Option<Box<Staged>>,
    /// The write in flight, which gives the staged file back when done.
    writing: Option<JoinHandle<std::io::Result<Box<Staged>>>>,
    pub(crate) folder: String,
    pub(crate) name: String,
    pub(crate) size: u64,
    received: u64,
    shared: Arc<SharedFolder>,
    /// Set once the file is in the shared folder: nothing left to clean up.
    published: bool,
}

/// An upload's staged file and the hash of what has been written to it.
struct Staged {
    file: std::fs::File,
    hasher: blake3::Hasher,
}

impl Upload {
    /// Checks that `user` may upload `size` bytes as `name` into `folder` (name, size, folder,
    /// free disk space), and stages an empty file to receive them. The native `upload` request
    /// and the browser's HTTP upload both start here, so the same rules hold for each.
    pub(crate) async fn prepare(
        config: &Config,
        shared: &Arc<SharedFolder>,
        user: &str,
        folder: String,
        name: String,
        size: u64,
    ) -> Result<Upload, Refusal> {
        paths::check_file_name(&name, config.allow_hidden_uploads).map_err(|err| Refusal {
            code: ErrorCode::BadPath,
            message: format!("The name {name:?} is not allowed: {err}."),
        })?;
        if size > config.max_upload {
            return Err(Refusal {
                code: ErrorCode::FileTooLarge,
                message: format!(
                    "Uploads are limited to {} bytes; this file has {size}.",
                    config.max_upload
                ),
            });
        }
        let (shared, user, reserve) = (shared.clone(), user.to_owned(), config.disk_reserve);
        tokio::task::spawn_blocking(move || {
            let folder = shared.check_folder(&user, &folder)?;
            let no_space = |detail: String| Refusal {
                code: ErrorCode::NoSpace,
                message: format!("The server cannot take this file now: {detail}."),
            };
            match shared.promise(size, reserve) {
                Ok(Ok(())) => {}
                Ok(Err(free)) => {
                    return Err(no_space(format!(
                        "{free} bytes are free and {reserve} must stay free"
                    )));
                }
                Err(err) => return Err(no_space(format!("its free space is unknown ({err})"))),
            }
            // From here on the upload's drop gives the promise back.
            let (staged, file) = shared.stage().map_err(|err| {
                shared.release(size);
                no_space(format!("it could not start a file ({err})"))
            })?;
            Ok(Upload {
                staged,
                file: Some(Box::new(Staged {
                    file,
                    hasher: blake3::Hasher::new(),
                })),
                writing: None,
                folder,
                name,
                size,
                received: 0,
                shared,
                published: false,
            })
        })
        .await
        .unwrap_or_else(|err| {
            Err(Refusal {
                code: ErrorCode::NoSpace,
                message: format!("Preparing the upload failed: {err}."),
            })
        })
    }

    /// Bytes received so far.
    pub(crate) fn received(&self) -> u64 {
        self.received
    }

    /// Waits for the write in flight, if any, and gives the staged file.
    async fn settle(&mut self) -> std::io::Result<&mut Staged> {
        if let Some(writing) = self.writing.take() {
            self.file = Some(writing.await.map_err(std::io::Error::other)??);
        }
        self.file
            .as_deref_mut()
            .ok_or_else(|| std::io::Error::other("an earlier write failed"))
    }

    /// Writes `bytes` and hashes them on a blocking thread, after the write before: the frame
    /// moves there without a copy, and the next frame is read meanwhile.
    pub(crate) async fn write(&mut self, bytes: Bytes) -> std::io::Result<()> {
        self.settle().await?;
        self.received += bytes.len() as u64;
        let mut staged = self.file.take().expect("settled");
        self.writing = Some(tokio::task::spawn_blocking(move || {
            staged.file.write_all(&bytes)?;
            staged.hasher.update(&bytes);
            Ok(staged)
        }));
        Ok(())
    }

    /// The hash of every byte written, once the last write is done.
    pub(crate) async fn hash(&mut self) -> std::io::Result<blake3::Hash> {
        Ok(self.settle().await?.hasher.finalize())
    }

    /// Flushes the staged file to disk and moves it into its folder, under its name or the
    /// first free `name (n)`, recorded as shared by `user`. Returns where it went.
    pub(crate) async fn publish(
        mut self,
        hash: blake3::Hash,
        user: &str,
    ) -> Result<Uploaded, Refusal> {
        self.sync().await.map_err(|err| Refusal {
            code: ErrorCode::NoSpace,
            message: format!("The server could not store the file: {err}."),
        })?;
        let shared = self.shared.clone();
        let (staged, folder, name, who) = (
            self.staged.clone(),
            self.folder.clone(),
            self.name.clone(),
            user.to_owned(),
        );
        let (path, name) =
            tokio::task::spawn_blocking(move || shared.publish(&staged, &who, &folder, &name))
                .await
                .unwrap_or_else(|err| {
                    Err(Refusal {
                        code: ErrorCode::NoSpace,
                        message: format!("Publishing the upload failed: {err}."),
                    })
                })?;
        let size = self.size;
        self.published(hash);
        Ok(Uploaded { path, name, size })
    }

    /// Flushes the staged file to disk before it is published.
    async fn sync(&mut self) -> std::io::Result<()> {
        let file = self.settle().await?.file.try_clone()?;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(std::io::Error::other)?
    }

    /// Marks the staged file as moved into the shared folder, and has the folder remember its
    /// verified `hash`, so its first download need not read it to hash it.
    fn published(mut self, hash: blake3::Hash) {
        self.published = true;
        if let Some(staged) = &self.file
            && let Ok(metadata) = staged.file.metadata()
        {
            self.shared.remember_hash(Stamp::of(&metadata), hash);
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.shared.release(self.size);
        if !self.published {
            self.shared.discard(&self.staged);
        }
    }
}

/// A `transfer_end` event ready to send.
fn end_frame(transfer: u32, status: TransferStatus, message: Option<String>) -> Bytes {
    event_frame(&Event::TransferEnd(TransferEnd {
        transfer,
        status,
        blake3: None,
        message,
    }))
}

impl Transfers {
    pub(crate) fn new(outbox: Outbox, zero_copy: bool) -> Self {
        Self {
            outbox,
            zero_copy,
            running: None,
        }
    }

    fn running(&mut self) -> &mut Running {
        self.running.get_or_insert_default()
    }

    /// Checks that `transfer` may start now: a free id, and room for one more.
    pub(crate) fn check_new(&mut self, transfer: u32) -> Result<(), Refusal> {
        let running = self.running();
        running.downloads.retain(|_, (_, task)| !task.is_finished());
        if running.downloads.contains_key(&transfer) || running.uploads.contains_key(&transfer) {
            return Err(Refusal {
                code: ErrorCode::BadTransfer,
                message: format!("Transfer {transfer} is already running; pick another id."),
            });
        }
        if running.downloads.len() + running.uploads.len() >= MAX_TRANSFERS {
            return Err(Refusal {
                code: ErrorCode::TooManyTransfers,
                message: format!(
                    "At most {MAX_TRANSFERS} transfers can run at once; wait for one to finish."
                ),
            });
        }
        Ok(())
    }

    /// Starts streaming `open` from `offset` as transfer `transfer`.
    pub(crate) fn start_download(
        &mut self,
        transfer: u32,
        open: OpenFile,
        offset: u64,
        shared: Arc<SharedFolder>,
    ) {
        let cancel = CancellationToken::new();
        let outbox = &self.outbox;
        let running = self.running.get_or_insert_default();
        let lane = running
            .lane
            .get_or_insert_with(|| outbox.open_lane(LANE_FRAMES))
            .clone();
        let task = tokio::spawn(send_file(Download {
            open,
            transfer,
            offset,
            lane,
            cancel: cancel.clone(),
            shared,
            zero_copy: self.zero_copy,
        }));
        running.downloads.insert(transfer, (cancel, task));
    }

    /// Receives `upload` as transfer `transfer`.
    pub(crate) fn start_upload(&mut self, transfer: u32, upload: Upload) {
        self.running().uploads.insert(transfer, upload);
    }

    /// Stores one data frame of an upload. Data for no upload in progress (one just cancelled,
    /// say) is dropped. Returns a `transfer_end` to send if the upload failed.
    pub(crate) async fn receive(&mut self, transfer: u32, bytes: Bytes) -> Option<Bytes> {
        let upload = self.running().uploads.get_mut(&transfer)?;
        let failure = if upload.received + bytes.len() as u64 > upload.size {
            format!(
                "More data arrived than the {} bytes announced.",
                upload.size
            )
        } else {
            match upload.write(bytes).await {
                Ok(()) => return None,
                Err(err) => {
                    warn!("writing upload {transfer} failed: {err}");
                    format!("The server could not store the file: {err}.")
                }
            }
        };
        self.running().uploads.remove(&transfer);
        Some(end_frame(transfer, TransferStatus::Failed, Some(failure)))
    }

    /// Takes a complete upload out with its hash, if its size and hash are right; a wrong one is
    /// discarded.
    pub(crate) async fn take_verified(
        &mut self,
        transfer: u32,
        blake3: &str,
    ) -> Result<(Upload, blake3::Hash), Refusal> {
        let mut upload = self
            .running()
            .uploads
            .remove(&transfer)
            .ok_or_else(|| Refusal {
                code: ErrorCode::BadTransfer,
                message: format!("There is no upload {transfer} in progress."),
            })?;
        if upload.received != upload.size {
            return Err(Refusal {
                code: ErrorCode::ChecksumMismatch,
                message: format!(
                    "Only {} of the {} bytes announced arrived; the upload was discarded.",
                    upload.received, upload.size
                ),
            });
        }
        let hash = match upload.hash().await {
            Ok(hash) => hash,
            Err(err) => {
                warn!("writing upload {transfer} failed: {err}");
                return Err(Refusal {
                    code: ErrorCode::NoSpace,
                    message: format!("The server could not store the file: {err}."),
                });
            }
        };
        if hash.to_hex().as_str() != blake3 {
            return Err(Refusal {
                code: ErrorCode::ChecksumMismatch,
                message: "The data does not match its checksum; the upload was discarded.".into(),
            });
        }
        Ok((upload, hash))
    }

    /// Stops transfer `transfer`. A download's `transfer_end` follows its data in the lane; an
    /// upload's is returned, to be sent at once.
    pub(crate) fn cancel(&mut self, transfer: u32) -> Result<Option<Bytes>, Refusal> {
        if self.running().uploads.remove(&transfer).is_some() {
            return Ok(Some(end_frame(transfer, TransferStatus::Cancelled, None)));
        }
        match self.running().downloads.get(&transfer) {
            Some((cancel, task)) if !task.is_finished() => {
                cancel.cancel();
                Ok(None)
            }
            _ => Err(Refusal {
                code: ErrorCode::BadTransfer,
                message: format!("There is no running transfer {transfer}."),
            }),
        }
    }
}

impl Drop for Transfers {
    /// The session ended: every download stops.
    fn drop(&mut self) {
        for (cancel, _) in self.running.iter().flat_map(|r| r.downloads.values()) {
            cancel.cancel();
        }
    }
}

/// A download to stream: what to send and where.
struct Download {
    open: OpenFile,
    transfer: u32,
    offset: u64,
    lane: mpsc::Sender<Data>,
    cancel: CancellationToken,
    shared: Arc<SharedFolder>,
    /// The connection can send file bytes from the page cache (see [`Data::Span`]).
    zero_copy: bool,
}

/// Streams the file and ends with a `transfer_end` event. The hash covers the whole file, the
/// part before `offset` included, so a resumed download is verified end to end; a hash worked
/// out here is remembered for the next download of the same version.
async fn send_file(download: Download) {
    let Download {
        open,
        transfer,
        offset,
        lane,
        cancel,
        shared,
        zero_copy,
    } = download;
    let OpenFile {
        file,
        path,
        size,
        stamp,
        ..
    } = open;
    let known = shared.known_hash(&stamp);
    let file = Arc::new(file);
    let hash = known.is_none();
    let outcome = cancel
        .run_until_cancelled(async {
            let worked_out = if zero_copy {
                send_spans(&file, transfer, offset, size, &lane, hash, &cancel).await?
            } else {
                send_frames(&file, transfer, offset, size, &lane, hash, &cancel).await?
            };
            if let Some(hash) = worked_out
                // Remembered only if the file is still the version whose stamp was taken.
                && file.metadata().is_ok_and(|now| Stamp::of(&now) == stamp)
            {
                shared.remember_hash(stamp, hash);
            }
            Ok::<_, std::io::Error>(known.or(worked_out).expect("known or worked out"))
        })
        .await;
    let end = match outcome {
        Some(Ok(hash)) => {
            debug!("transfer {transfer} of {path:?} complete");
            TransferEnd {
                transfer,
                status: TransferStatus::Complete,
                blake3: Some(hash.to_hex().to_string()),
                message: None,
            }
        }
        None => TransferEnd {
            transfer,
            status: TransferStatus::Cancelled,
            blake3: None,
            message: None,
        },
        Some(Err(err)) => {
            warn!("transfer {transfer} of {path:?} failed: {err}");
            TransferEnd {
                transfer,
                status: TransferStatus::Failed,
                blake3: None,
                message: Some(format!("Reading {path:?} failed: {err}.")),
            }
        }
    };
    let _ = lane
        .send(Data::Frame(event_frame(&Event::TransferEnd(end))))
        .await;
}

/// Queues the file from `offset` as spans the writer sends from the page cache. If asked to
/// `hash` the file, a blocking thread works the hash out meanwhile, reading beside the transfer.
async fn send_spans(
    file: &Arc<std::fs::File>,
    transfer: u32,
    offset: u64,
    size: u64,
    lane: &mpsc::Sender<Data>,
    hash: bool,
    cancel: &CancellationToken,
) -> std::io::Result<Option<blake3::Hash>> {
    let hashing = hash.then(|| {
        let (file, cancel) = (file.clone(), cancel.clone());
        tokio::task::spawn_blocking(move || hash_file(&file, size, &cancel))
    });
    let mut at = offset;
    while at < size {
        let len = chunk_at(at, size);
        let span = Span {
            header: data_header(transfer, len),
            file: file.clone(),
            offset: at,
            len,
        };
        if lane.send(Data::Span(span)).await.is_err() {
            return Err(std::io::Error::other("the connection closed"));
        }
        at += len as u64;
    }
    match hashing {
        Some(hashing) => hashing.await.map_err(std::io::Error::other)?.map(Some),
        None => Ok(None),
    }
}

/// Reads the file from `offset` into data frames, hashing the whole file on the way if asked
/// to: for connections whose bytes must pass through the server (TLS encrypts them). The reading
/// and hashing happen on a blocking thread, [`FRAMES_PER_READ`] frames a trip, so the worker
/// that encrypts and writes is neither interrupted for every frame nor kept hashing.
async fn send_frames(
    file: &Arc<std::fs::File>,
    transfer: u32,
    offset: u64,
    size: u64,
    lane: &mpsc::Sender<Data>,
    hash: bool,
    cancel: &CancellationToken,
) -> std::io::Result<Option<blake3::Hash>> {
    let hasher = match hash {
        false => None,
        // A resumed download's hash covers the part the client already has.
        true if offset > 0 => {
            let (file, cancel) = (file.clone(), cancel.clone());
            let prefix = tokio::task::spawn_blocking(move || {
                let mut hasher = blake3::Hasher::new();
                hash_range(&file, &mut hasher, offset, &cancel).map(|()| hasher)
            });
            Some(prefix.await.map_err(std::io::Error::other)??)
        }
        true => Some(blake3::Hasher::new()),
    };
    let mut reader = FrameReader {
        file: file.clone(),
        transfer,
        at: offset,
        size,
        hasher,
    };
    while reader.at < reader.size {
        // Allocated here rather than on the blocking thread: freed by the writer, memory from
        // a blocking thread's arena goes back to the system and faults in again for the next.
        let frames = reader.buffers(FRAMES_PER_READ);
        let (back, frames) = tokio::task::spawn_blocking(move || {
            let frames = reader.read(frames);
            (reader, frames)
        })
        .await
        .map_err(std::io::Error::other)?;
        reader = back;
        for frame in frames? {
            if lane.send(Data::Frame(frame)).await.is_err() {
                return Err(std::io::Error::other("the connection closed"));
            }
        }
    }
    Ok(reader.hasher.map(|hasher| hasher.finalize()))
}

/// The file bytes in the data frame that starts at `at` of a file of `size` bytes.
fn chunk_at(at: u64, size: u64) -> usize {
    (size - at).min(MAX_DATA_CHUNK as u64) as usize
}

/// Data frames read per trip to a blocking thread: 1 MiB, as much as the data lane holds.
const FRAMES_PER_READ: usize = LANE_FRAMES;

/// Where a download that passes through the server has got to.
struct FrameReader {
    file: Arc<std::fs::File>,
    transfer: u32,
    at: u64,
    size: u64,
    hasher: Option<blake3::Hasher>,
}

impl FrameReader {
    /// Room for the next `most` data frames.
    fn buffers(&self, most: usize) -> Vec<Vec<u8>> {
        let mut at = self.at;
        let mut buffers = Vec::with_capacity(most);
        while buffers.len() < most && at < self.size {
            let chunk = chunk_at(at, self.size);
            buffers.push(Vec::with_capacity(DATA_HEADER + chunk));
            at += chunk as u64;
        }
        buffers
    }

    /// Reads the next data frames into `buffers`, as many as there is room for.
    fn read(&mut self, buffers: Vec<Vec<u8>>) -> std::io::Result<Vec<Bytes>> {
        use std::io::{Read, Seek};
        let mut file = &*self.file;
        file.seek(std::io::SeekFrom::Start(self.at))?;
        let mut frames = Vec::with_capacity(buffers.len());
        for mut frame in buffers {
            let chunk = chunk_at(self.at, self.size);
            frame.extend_from_slice(&data_header(self.transfer, chunk));
            file.take(chunk as u64).read_to_end(&mut frame)?;
            // The header promised `chunk` bytes: a file that ends sooner has shrunk.
            if frame.len() < DATA_HEADER + chunk {
                return Err(std::io::Error::other("the file shrank while being sent"));
            }
            if let Some(hasher) = &mut self.hasher {
                hasher.update(&frame[DATA_HEADER..]);
            }
            self.at += chunk as u64;
            frames.push(Bytes::from(frame));
        }
        Ok(frames)
    }
}

/// Hashes the first `size` bytes of `file` with positioned reads, which leave the file's
/// position alone for whoever else reads it. Stops early if `cancel` fires.
fn hash_file(
    file: &std::fs::File,
    size: u64,
    cancel: &CancellationToken,
) -> std::io::Result<blake3::Hash> {
    let mut hasher = blake3::Hasher::new();
    hash_range(file, &mut hasher, size, cancel)?;
    Ok(hasher.finalize())
}

/// Feeds the first `size` bytes of `file` to `hasher`, as [`hash_file`] does.
fn hash_range(
    file: &std::fs::File,
    hasher: &mut blake3::Hasher,
    size: u64,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0; HASH_BUFFER.min(size as usize)];
    let mut at = 0;
    while at < size {
        if cancel.is_cancelled() {
            return Err(std::io::Error::other("cancelled"));
        }
        let want = (size - at).min(buf.len() as u64) as usize;
        let read = file.read_at(&mut buf[..want], at)?;
        if read == 0 {
            return Err(std::io::Error::other("the file shrank while being sent"));
        }
        hasher.update(&buf[..read]);
        at += read as u64;
    }
    Ok(())
}
