//! A connection's transfers.
//!
//! Downloads: one task per transfer reads the file and feeds data frames into the session's
//! data lane, which the writer drains only when no chat is waiting. The lane is a small bounded
//! channel, so a transfer reads ahead by a few chunks at most: memory per transfer stays constant
//! whatever the file's size, and a slow reader slows the transfer, not the server. The
//! `transfer_end` event travels the same lane, behind the last data frame, so it can never
//! overtake the data it concludes. A client that asks for a window (`download`'s `window`) gets
//! no more than that (and the frame that crosses it) beyond what it has reported taking
//! (`download_progress`): it can then read everything that arrives at once, however slow its
//! disk, so events sent behind the data are not kept waiting for the disk either.
//!
//! Uploads: the session's reader queues each data frame for a task of the upload's own, which
//! writes it to the staged file and hashes it on a blocking thread, one write in flight at a
//! time. The queue holds up to [`UPLOAD_WINDOW`] bytes, and the task reports what it has stored
//! (`upload_progress`) so that the client keeps no more than that in flight: the reader then
//! never waits for the disk, and a request sent behind a window of data is answered at once,
//! however slow the disk. (It waited for every write before: on a disk slower than the
//! network, a message from an uploading client waited behind all the data in the socket's
//! buffers, megabytes at the disk's pace.) A client that ignores the window is held back by
//! the queue's bound, and then by TCP, as before. `finish` checks size and hash before the file
//! is published. An upload dropped unfinished (cancelled, failed, or its connection gone) stops
//! its task and removes its staged file.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parley_proto::ErrorCode;
use parley_proto::event::{Event, TransferEnd, TransferStatus, UploadProgress};
use parley_proto::frame::FrameKind;
use parley_proto::limits::{MAX_DATA_CHUNK, MAX_TRANSFERS};
use parley_proto::paths;
use parley_proto::reply::event_frame;
use parley_proto::request::Uploaded;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::files::{Holder, OpenFile, Promise, SharedFolder, Shortfall, Stamp};
use crate::hub::Refusal;
use crate::outbox::Outbox;

/// Data frames queued per connection: with [`MAX_DATA_CHUNK`] bytes each, at most 1 MiB of file
/// is read ahead of the socket.
const LANE_FRAMES: usize = 4;

/// Bytes of an upload the server takes ahead of its disk, and tells the client it may have sent
/// and not yet seen stored (the `window` of the `upload` result). Memory per upload is about
/// this at most (see [`Transfers::receive`]). With 4 MiB, plain uploads on loopback run as fast
/// as they did without a window, and TLS ones faster (docs/benchmarks.md, "Uploads: reading
/// ahead of the disk"); other sizes were not measured.
pub(crate) const UPLOAD_WINDOW: u64 = 4 << 20;

/// An `upload_progress` goes out each time this much more is stored. At most the window less a
/// frame's bytes, so a client waiting for room always gets it: by the time everything it sent
/// is stored, less than this is unreported. Not every write: a client that does not read while
/// it uploads (it need not) would find its queue full of them.
const PROGRESS_STEP: u64 = UPLOAD_WINDOW / 4;

/// The least an upload must receive (or all that is left of it) in each
/// [`Config::upload_idle_timeout`] the server spends waiting for it. A trickle of a byte now
/// and then is no progress: it would hold the upload's promise of disk space for as long as
/// it pleased. 16 KiB in 30 s is about 550 bytes a second, slower than any link in use.
pub(crate) const MIN_PROGRESS: u64 = 16 * 1024;

/// What a queued frame costs beyond its bytes: a client sending tiny frames is held back by
/// their number too, since each takes a queue slot of its own.
const FRAME_COST: usize = 64;

/// The room in an upload's queue: its window, and the frames' own cost for frames of 512 bytes
/// or more.
const QUEUE_ROOM: usize = (UPLOAD_WINDOW + UPLOAD_WINDOW / 8) as usize;

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
    downloads: HashMap<u32, Sending>,
    uploads: HashMap<u32, Receiving>,
}

/// A download of this connection in progress.
struct Sending {
    cancel: CancellationToken,
    task: JoinHandle<()>,
    /// What the client has reported taking, for a download with a window.
    taken: Option<watch::Sender<u64>>,
}

/// An upload of this connection in progress: the session queues its data, and a task of its
/// own stores it (see [`store`]).
struct Receiving {
    /// The bytes announced.
    size: u64,
    /// The bytes queued so far.
    received: u64,
    /// Where the data goes, each frame with its share of `room`, given back once it is stored.
    frames: mpsc::UnboundedSender<(Bytes, OwnedSemaphorePermit)>,
    room: Arc<Semaphore>,
    /// Set by whoever ends the upload first, which alone sends its `transfer_end`: the task,
    /// when a write fails; the session, on a cancel, too much data or `finish`.
    ended: Arc<AtomicBool>,
    /// The task: gives the upload back, every byte stored, once `frames` is closed. Dropped, it
    /// stops, and the staged file is removed.
    storing: AbortOnDropHandle<Result<Upload, String>>,
}

impl Receiving {
    /// Marks the upload as ended; false if it already was (its writes failed).
    fn end(&self) -> bool {
        !self.ended.swap(true, Ordering::AcqRel)
    }

    /// Stops the task and waits until it is gone: on a runtime of several threads it may be
    /// running, and nothing of the upload may follow what ends it.
    async fn stop(self) {
        self.storing.abort();
        let _ = self.storing.await;
    }
}

/// Stores an upload's frames in order, one write in flight at a time, and tells the client
/// what is stored (`upload_progress`) each [`PROGRESS_STEP`], looking after each write and
/// whenever it has caught up: once all that came is stored, less than a step of it is
/// unreported, so a client keeping to its window has room for a frame.
/// Once `frames` closes it waits for the last write and gives the upload back. A failed write
/// ends the upload, and so does a client that lets the upload's [`Progress`] clock run out
/// while the task waits for its data: the `transfer_end` goes out from here, since a client
/// waiting for room in its window sends nothing the session could answer.
async fn store(
    mut upload: Upload,
    transfer: u32,
    mut frames: mpsc::UnboundedReceiver<(Bytes, OwnedSemaphorePermit)>,
    ended: Arc<AtomicBool>,
    outbox: Outbox,
    mut progress: Progress,
) -> Result<Upload, String> {
    let mut reported = 0;
    // The room of the frame being written, given back once it is.
    let mut writing = None;
    let result = loop {
        let (bytes, room) = match frames.try_recv() {
            Ok(frame) => frame,
            Err(TryRecvError::Disconnected) => {
                break upload.settle().await.map(drop).map_err(Stop::Failed);
            }
            Err(TryRecvError::Empty) => {
                // Caught up: once the last write is done, all that came is stored.
                if let Err(err) = upload.settle().await {
                    break Err(Stop::Failed(err));
                }
                writing = None;
                report(&outbox, transfer, upload.received, &mut reported);
                // Only now is the server waiting for the client, so only now does the
                // upload's clock run: a slow disk does not count against it.
                match progress.wait(frames.recv()).await {
                    Some(Some(frame)) => frame,
                    Some(None) => break Ok(()),
                    None => break Err(Stop::Stalled),
                }
            }
        };
        let len = bytes.len() as u64;
        progress.arrived(len);
        // Returns once the write before is done.
        if let Err(err) = upload.write(bytes).await {
            break Err(Stop::Failed(err));
        }
        writing = Some(room);
        report(&outbox, transfer, upload.received - len, &mut reported);
    };
    drop(writing);
    match result {
        Ok(()) => Ok(upload),
        Err(stop) => {
            let (message, code) = match stop {
                Stop::Stalled => {
                    info!("upload {transfer} made no progress: cancelled");
                    (progress.stalled(), Some(ErrorCode::UploadStalled))
                }
                Stop::Failed(err) => {
                    warn!("writing upload {transfer} failed: {err}");
                    (format!("The server could not store the file: {err}."), None)
                }
            };
            // Its staged file and disk space are free before the client hears it ended.
            drop(upload);
            if !ended.swap(true, Ordering::AcqRel) {
                let end = end_frame(
                    transfer,
                    TransferStatus::Failed,
                    Some(message.clone()),
                    code,
                );
                outbox.push(end);
            }
            Err(message)
        }
    }
}

/// Why [`store`] ended an upload before its `finish`.
enum Stop {
    /// A write failed.
    Failed(std::io::Error),
    /// Its [`Progress`] clock ran out.
    Stalled,
}

/// The progress an upload must make, [`MIN_PROGRESS`] bytes or its end in each
/// [`Config::upload_idle_timeout`], as a clock: wound up again by each such step, and running
/// only while the server waits for the client ([`Progress::wait`]), not while it waits for its
/// own disk. Once all bytes have come, the clock is wound a last time for the `finish` (or the
/// end of an HTTP body). The native upload's task and the HTTP upload's handler keep one each.
pub(crate) struct Progress {
    idle: Duration,
    /// What is left on the clock.
    left: Duration,
    /// Bytes arrived since the clock was last wound.
    since: u64,
    /// Bytes still to come.
    remaining: u64,
}

impl Progress {
    /// The clock of an upload of `size` bytes, wound to `idle`.
    pub(crate) fn new(idle: Duration, size: u64) -> Self {
        Self {
            idle,
            left: idle,
            since: 0,
            remaining: size,
        }
    }

    /// Awaits `next` for as long as the clock has left, and stops the clock; `None` if it ran
    /// out first.
    pub(crate) async fn wait<F: Future>(&mut self, next: F) -> Option<F::Output> {
        let started = tokio::time::Instant::now();
        let outcome = tokio::time::timeout(self.left, next).await.ok();
        self.left = self.left.saturating_sub(started.elapsed());
        outcome
    }

    /// Counts `len` bytes arrived.
    pub(crate) fn arrived(&mut self, len: u64) {
        self.since += len;
        self.remaining = self.remaining.saturating_sub(len);
        if self.since >= MIN_PROGRESS || (len > 0 && self.remaining == 0) {
            self.left = self.idle;
            self.since = 0;
        }
    }

    /// What the client is told once the clock ran out.
    pub(crate) fn stalled(&self) -> String {
        format!(
            "The upload made no progress (less than {MIN_PROGRESS} bytes, or its end) for \
             {:?}; it was cancelled and its data discarded.",
            self.idle
        )
    }
}

/// Sends an `upload_progress` for `stored` bytes if at least [`PROGRESS_STEP`] more are stored
/// than `reported` last time.
fn report(outbox: &Outbox, transfer: u32, stored: u64, reported: &mut u64) {
    if stored >= *reported + PROGRESS_STEP {
        *reported = stored;
        outbox.push(event_frame(&Event::UploadProgress(UploadProgress {
            transfer,
            stored,
        })));
    }
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
    /// The disk space promised to it, given back when it is dropped.
    promise: Promise,
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
    /// free disk space, what `holder` holds already), and stages an empty file to receive
    /// them. The native `upload` request and the browser's HTTP upload both start here, so the
    /// same rules hold for each.
    pub(crate) async fn prepare(
        config: &Config,
        shared: &Arc<SharedFolder>,
        user: &str,
        holder: &Holder,
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
        let (shared, user, holder) = (shared.clone(), user.to_owned(), holder.clone());
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let folder = shared.check_folder(&user, &folder)?;
            let no_space = |detail: String| Refusal {
                code: ErrorCode::NoSpace,
                message: format!("The server cannot take this file now: {detail}."),
            };
            let reserve = config.disk_reserve;
            let quota = |what: &str, limit: u64| Refusal {
                code: ErrorCode::UploadQuota,
                message: format!(
                    "The uploads in progress {what} may hold at most {limit} bytes at once; \
                     this one ({size} bytes) would take them past it. Wait for one to finish."
                ),
            };
            let promise = match shared.promise(size, &config, &holder) {
                Ok(Ok(promise)) => promise,
                // The free space is the server's business: a guest is told only that the
                // file does not fit.
                Ok(Err(Shortfall::Disk { .. })) if holder.guest() => {
                    return Err(no_space(format!(
                        "it would leave less than the {reserve} bytes the server keeps free"
                    )));
                }
                Ok(Err(Shortfall::Disk { free })) => {
                    return Err(no_space(format!(
                        "{free} bytes are free and {reserve} must stay free"
                    )));
                }
                Ok(Err(Shortfall::Connection)) => {
                    let limit = config.max_reserved_per_connection;
                    return Err(quota("of one connection", limit));
                }
                Ok(Err(Shortfall::Address)) => {
                    let limit = config.max_reserved_per_address;
                    return Err(quota("from one address", limit));
                }
                Err(err) => return Err(no_space(format!("its free space is unknown ({err})"))),
            };
            let (staged, file) = shared.stage().map_err(|err| {
                shared.release(&promise);
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
                promise,
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
    /// moves there without a copy, and the caller goes on to the next meanwhile.
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
        self.shared.release(&self.promise);
        if !self.published {
            self.shared.discard(&self.staged);
        }
    }
}

/// A `transfer_end` event ready to send; `code` for a failure that has one of its own.
fn end_frame(
    transfer: u32,
    status: TransferStatus,
    message: Option<String>,
    code: Option<ErrorCode>,
) -> Bytes {
    event_frame(&Event::TransferEnd(TransferEnd {
        transfer,
        status,
        blake3: None,
        message,
        code,
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
        running
            .downloads
            .retain(|_, sending| !sending.task.is_finished());
        // An upload whose writes failed has ended (and said so); any other that ends leaves.
        running
            .uploads
            .retain(|_, upload| !upload.ended.load(Ordering::Acquire));
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

    /// Starts streaming `open` from `offset` as transfer `transfer`, at most `window` bytes
    /// (if not 0) beyond what the client reports taking.
    pub(crate) fn start_download(
        &mut self,
        transfer: u32,
        open: OpenFile,
        offset: u64,
        window: u64,
        shared: Arc<SharedFolder>,
    ) {
        let cancel = CancellationToken::new();
        let (taken, window) = match window {
            0 => (None, Window::default()),
            window => {
                let (taken, taken_seen) = watch::channel(0);
                (Some(taken), Window(Some((window, taken_seen))))
            }
        };
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
            window,
            cancel: cancel.clone(),
            shared,
            zero_copy: self.zero_copy,
        }));
        let sending = Sending {
            cancel,
            task,
            taken,
        };
        running.downloads.insert(transfer, sending);
    }

    /// Notes that the client has taken `received` bytes of download `transfer`, which may let
    /// it send more. A report for a download that has ended (or never had a window) changes
    /// nothing: it may cross the download's last frames.
    pub(crate) fn download_progress(&mut self, transfer: u32, received: u64) {
        let taken = self.running.as_ref().and_then(|running| {
            let sending = running.downloads.get(&transfer)?;
            sending.taken.as_ref()
        });
        if let Some(taken) = taken {
            // Only ever more: a client's reports are in order, but a count going back would
            // only stall its own download.
            taken.send_if_modified(|known| {
                let more = received > *known;
                *known = (*known).max(received);
                more
            });
        }
    }

    /// Receives `upload` as transfer `transfer`: a task of its own stores its data, and ends
    /// the upload if it makes no progress for `idle` (see [`Progress`]).
    pub(crate) fn start_upload(&mut self, transfer: u32, upload: Upload, idle: Duration) {
        let (frames, queued) = mpsc::unbounded_channel();
        let ended = Arc::new(AtomicBool::new(false));
        let size = upload.size;
        let storing = tokio::spawn(store(
            upload,
            transfer,
            queued,
            ended.clone(),
            self.outbox.clone(),
            Progress::new(idle, size),
        ));
        let receiving = Receiving {
            size,
            received: 0,
            frames,
            room: Arc::new(Semaphore::new(QUEUE_ROOM)),
            ended,
            storing: AbortOnDropHandle::new(storing),
        };
        self.running().uploads.insert(transfer, receiving);
    }

    /// Queues one data frame of an upload for storing; waits only if the client sent more than
    /// its window. Data for no upload in progress (one just cancelled, or failed) is dropped.
    /// Returns a `transfer_end` to send if the upload failed.
    pub(crate) async fn receive(&mut self, transfer: u32, bytes: Bytes) -> Option<Bytes> {
        let running = self.running();
        let upload = running.uploads.get_mut(&transfer)?;
        if upload.received + bytes.len() as u64 > upload.size {
            let end = upload.end().then(|| {
                let failure = format!(
                    "More data arrived than the {} bytes announced.",
                    upload.size
                );
                end_frame(transfer, TransferStatus::Failed, Some(failure), None)
            });
            if let Some(upload) = running.uploads.remove(&transfer) {
                upload.stop().await;
            }
            return end;
        }
        // A slice of the read buffer keeps all of the buffer's memory: a small one is copied,
        // so that what the window admits is what the connection holds, within a factor of 2.5
        // (frames of half the largest and more share their buffer with little else).
        let bytes = if bytes.len() < MAX_DATA_CHUNK / 2 {
            Bytes::copy_from_slice(&bytes)
        } else {
            bytes
        };
        upload.received += bytes.len() as u64;
        // At most a frame's bytes and cost, well within what a u32 counts.
        let cost = (bytes.len() + FRAME_COST) as u32;
        let room = match upload.room.clone().try_acquire_many_owned(cost) {
            Ok(room) => Ok(room),
            // Beyond the window: the client ignored it, and waits for the disk.
            Err(TryAcquireError::NoPermits) => upload.room.clone().acquire_many_owned(cost).await,
            Err(TryAcquireError::Closed) => unreachable!("an upload's room is never closed"),
        };
        let queued = room.map(|room| upload.frames.send((bytes, room)));
        if !matches!(queued, Ok(Ok(()))) {
            // Its task failed a write, said so, and took no more.
            running.uploads.remove(&transfer);
        }
        None
    }

    /// Takes a complete upload out with its hash, if its size and hash are right; a wrong one is
    /// discarded.
    pub(crate) async fn take_verified(
        &mut self,
        transfer: u32,
        blake3: &str,
    ) -> Result<(Upload, blake3::Hash), Refusal> {
        let receiving = self
            .running()
            .uploads
            .remove(&transfer)
            // One whose writes failed has ended already.
            .filter(Receiving::end)
            .ok_or_else(|| Refusal {
                code: ErrorCode::BadTransfer,
                message: format!("There is no upload {transfer} in progress."),
            })?;
        if receiving.received != receiving.size {
            let message = format!(
                "Only {} of the {} bytes announced arrived; the upload was discarded.",
                receiving.received, receiving.size
            );
            receiving.stop().await;
            return Err(Refusal {
                code: ErrorCode::ChecksumMismatch,
                message,
            });
        }
        // Closing the queue lets the task store what is in it and give the upload back.
        let Receiving {
            frames, storing, ..
        } = receiving;
        drop(frames);
        let stored = storing.await.unwrap_or_else(|err| Err(err.to_string()));
        let mut upload = stored.map_err(|message| Refusal {
            code: ErrorCode::NoSpace,
            message,
        })?;
        let hash = match upload.hash().await {
            Ok(hash) => hash,
            Err(err) => {
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
    pub(crate) async fn cancel(&mut self, transfer: u32) -> Result<Option<Bytes>, Refusal> {
        // One whose writes failed has ended already.
        if let Some(upload) = self.running().uploads.remove(&transfer)
            && upload.end()
        {
            upload.stop().await;
            return Ok(Some(end_frame(
                transfer,
                TransferStatus::Cancelled,
                None,
                None,
            )));
        }
        match self.running().downloads.get(&transfer) {
            Some(sending) if !sending.task.is_finished() => {
                sending.cancel.cancel();
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
        for sending in self.running.iter().flat_map(|r| r.downloads.values()) {
            sending.cancel.cancel();
        }
    }
}

/// A download to stream: what to send and where.
struct Download {
    open: OpenFile,
    transfer: u32,
    offset: u64,
    lane: mpsc::Sender<Data>,
    window: Window,
    cancel: CancellationToken,
    shared: Arc<SharedFolder>,
    /// The connection can send file bytes from the page cache (see [`Data::Span`]).
    zero_copy: bool,
}

/// How far a download may run ahead of its client: its window and what the client has
/// reported taking; none, for a client that asked for no window.
#[derive(Default)]
struct Window(Option<(u64, watch::Receiver<u64>)>);

/// Where a download's data frames go: the data lane, as the window allows.
struct Outlet {
    lane: mpsc::Sender<Data>,
    window: Window,
    /// File bytes sent so far.
    sent: u64,
}

impl Outlet {
    /// Queues a data frame carrying `len` file bytes, once less than the window is unreported,
    /// so a frame takes what is unreported up to a frame beyond the window, never more. Fails
    /// if the connection has closed.
    async fn send(&mut self, data: Data, len: usize) -> std::io::Result<()> {
        fn closed<E>(_: E) -> std::io::Error {
            std::io::Error::other("the connection closed")
        }
        if let Some((window, taken)) = &mut self.window.0 {
            let sent = self.sent;
            // The reports' sender goes with the session, and with it the connection.
            (taken.wait_for(|taken| sent.saturating_sub(*taken) < *window))
                .await
                .map_err(closed)?;
        }
        self.sent += len as u64;
        self.lane.send(data).await.map_err(closed)
    }
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
        window,
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
    let mut outlet = Outlet {
        lane,
        window,
        sent: 0,
    };
    let outcome = cancel
        .run_until_cancelled(async {
            let worked_out = if zero_copy {
                send_spans(&file, transfer, offset, size, &mut outlet, hash, &cancel).await?
            } else {
                send_frames(&file, transfer, offset, size, &mut outlet, hash, &cancel).await?
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
                code: None,
            }
        }
        None => TransferEnd {
            transfer,
            status: TransferStatus::Cancelled,
            blake3: None,
            message: None,
            code: None,
        },
        Some(Err(err)) => {
            warn!("transfer {transfer} of {path:?} failed: {err}");
            TransferEnd {
                transfer,
                status: TransferStatus::Failed,
                blake3: None,
                message: Some(format!("Reading {path:?} failed: {err}.")),
                code: None,
            }
        }
    };
    let _ = (outlet.lane)
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
    outlet: &mut Outlet,
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
        outlet.send(Data::Span(span), len).await?;
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
    outlet: &mut Outlet,
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
            let len = frame.len() - DATA_HEADER;
            outlet.send(Data::Frame(frame), len).await?;
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

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Read;
    use std::path::Path;
    use std::pin::pin;

    use parley_proto::reply::ServerMessage;
    use tokio::time::timeout;

    use super::*;
    use crate::outbox::{self, OutboxReader};

    /// Long enough for anything that does not wait on the stalled disk.
    const PROMPT: Duration = Duration::from_secs(10);

    /// An upload of `size` bytes whose staged file is `file`, in a shared folder at `dir`.
    fn upload_into(dir: &Path, size: u64, file: std::fs::File) -> Upload {
        let shared = Arc::new(SharedFolder::open(dir).unwrap());
        let holder = Holder::new(0, [127, 0, 0, 1].into(), false);
        let config = Config {
            disk_reserve: 0,
            ..Config::default()
        };
        let Ok(Ok(promise)) = shared.promise(size, &config, &holder) else {
            panic!("no room for {size} bytes");
        };
        let (staged, _) = shared.stage().unwrap();
        Upload {
            staged,
            file: Some(Box::new(Staged {
                file,
                hasher: blake3::Hasher::new(),
            })),
            writing: None,
            folder: String::new(),
            name: "big.bin".into(),
            size,
            received: 0,
            shared,
            promise,
            published: false,
        }
    }

    /// A disk that writes only when the test says: a named pipe, written through one end (a
    /// write blocks once its 64 KiB buffer is full) and read, when the test wants the disk to
    /// go on, through the other.
    fn stalled_disk(dir: &Path) -> (std::fs::File, std::fs::File) {
        let path = dir.join("disk");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Opened for reading and writing, a pipe's end opens at once, with no reader yet.
        let written = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let read = OpenOptions::new().read(true).open(&path).unwrap();
        (written, read)
    }

    /// The next event the session's queue holds, waiting for it if need be.
    async fn next_event(queue: &OutboxReader, taken: &mut Vec<Bytes>) -> Event {
        loop {
            if !taken.is_empty() {
                let frame = taken.remove(0);
                match ServerMessage::decode(&frame[5..]).unwrap() {
                    ServerMessage::Event(event) => return event,
                    other => panic!("not an event: {other:?}"),
                }
            }
            queue.take(taken, 64);
            if taken.is_empty() {
                timeout(PROMPT, queue.ready()).await.expect("no event came");
            }
        }
    }

    #[tokio::test]
    async fn a_window_of_data_is_taken_while_the_disk_is_stalled() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, mut platter) = stalled_disk(dir.path());
        let size = 2 * UPLOAD_WINDOW;
        let (outbox, queue) = outbox::channel(1 << 20);
        let mut transfers = Transfers::new(outbox, false);
        transfers.start_upload(1, upload_into(dir.path(), size, disk), PROMPT);

        // A whole window is taken without waiting for the disk, which has taken 64 KiB of it:
        // a request behind it would be answered at once. So is a little more, for the frames'
        // own cost.
        let chunk = Bytes::from(vec![7; MAX_DATA_CHUNK]);
        let fits = QUEUE_ROOM / (MAX_DATA_CHUNK + FRAME_COST);
        assert!(fits as u64 * MAX_DATA_CHUNK as u64 >= UPLOAD_WINDOW);
        for _ in 0..fits {
            let taken = timeout(PROMPT, transfers.receive(1, chunk.clone())).await;
            assert_eq!(taken, Ok(None), "waited for the disk within the window");
        }
        // Beyond that, the connection waits for the disk.
        let mut beyond = pin!(transfers.receive(1, chunk.clone()));
        assert!(
            timeout(Duration::from_millis(200), &mut beyond)
                .await
                .is_err(),
            "took more than the window with the disk stalled"
        );

        // The disk goes on: the frame is taken, and what is stored is reported.
        let sent = (fits + 1) as u64 * MAX_DATA_CHUNK as u64;
        let reading = tokio::task::spawn_blocking(move || {
            let mut on_disk = vec![0; sent as usize];
            platter.read_exact(&mut on_disk).map(|()| on_disk)
        });
        assert_eq!(timeout(PROMPT, beyond).await, Ok(None));
        // Reported until less than a step is left: a client keeping to its window has room.
        let mut taken = Vec::new();
        let mut reported = 0;
        while reported + PROGRESS_STEP <= sent {
            match next_event(&queue, &mut taken).await {
                Event::UploadProgress(progress) => {
                    assert_eq!(progress.transfer, 1);
                    assert!(progress.stored > reported, "{progress:?} after {reported}");
                    reported = progress.stored;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(reported <= sent);
        let on_disk = timeout(PROMPT, reading).await.unwrap().unwrap().unwrap();
        assert!(on_disk.iter().all(|&b| b == 7));
    }

    #[tokio::test]
    async fn a_stalled_disk_does_not_count_against_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let (disk, mut platter) = stalled_disk(dir.path());
        let size = 2 * UPLOAD_WINDOW;
        let (outbox, queue) = outbox::channel(1 << 20);
        let mut transfers = Transfers::new(outbox, false);
        let idle = Duration::from_millis(500);
        transfers.start_upload(1, upload_into(dir.path(), size, disk), idle);

        // A window of data, then the client waits for room while the disk stays stalled for
        // three idle timeouts: the server is waiting for its disk, not for the client.
        let chunk = Bytes::from(vec![7; MAX_DATA_CHUNK]);
        let sent = (UPLOAD_WINDOW as usize / MAX_DATA_CHUNK) as u64 * MAX_DATA_CHUNK as u64;
        for _ in 0..sent / MAX_DATA_CHUNK as u64 {
            assert_eq!(transfers.receive(1, chunk.clone()).await, None);
        }
        tokio::time::sleep(3 * idle).await;
        let reading = tokio::task::spawn_blocking(move || {
            let mut on_disk = vec![0; sent as usize];
            platter.read_exact(&mut on_disk).map(|()| on_disk)
        });
        timeout(PROMPT, reading).await.unwrap().unwrap().unwrap();
        // All is stored and reported, and the upload goes on.
        let mut taken = Vec::new();
        loop {
            match next_event(&queue, &mut taken).await {
                Event::UploadProgress(progress) if progress.stored + PROGRESS_STEP > sent => break,
                Event::UploadProgress(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        let running = transfers.check_new(1).unwrap_err();
        assert_eq!(running.code, ErrorCode::BadTransfer, "the upload was ended");
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_upload_from_its_task() {
        let dir = tempfile::tempdir().unwrap();
        // Opened for reading only: every write fails.
        let unwritable = std::fs::File::open(dir.path()).unwrap();
        let (outbox, queue) = outbox::channel(1 << 20);
        let mut transfers = Transfers::new(outbox, false);
        let upload = upload_into(dir.path(), 1 << 20, unwritable);
        let staged = dir.path().join(".parley/staging").join(&upload.staged);
        transfers.start_upload(1, upload, PROMPT);

        assert_eq!(
            transfers.receive(1, Bytes::from_static(b"data")).await,
            None
        );
        // Told with no further frame from the client, which may be waiting for room.
        let mut taken = Vec::new();
        match next_event(&queue, &mut taken).await {
            Event::TransferEnd(end) => {
                assert_eq!((end.transfer, end.status), (1, TransferStatus::Failed));
                assert!(end.message.unwrap().contains("could not store"));
            }
            other => panic!("unexpected {other:?}"),
        }
        // Over: cancelling it is too late, and its id and its staged file are free.
        let cancel = transfers.cancel(1).await.map(|_| ()).unwrap_err();
        assert_eq!(cancel.code, ErrorCode::BadTransfer);
        assert!(transfers.check_new(1).is_ok());
        assert!(!staged.exists(), "{} is left", staged.display());
        queue.take(&mut taken, 64);
        assert!(taken.is_empty(), "a second end was sent");
    }
}
