//! Transfers as people watch them: the size before the first byte, progress every few seconds,
//! a last line with size, time and rate, and the table behind `/transfers`. Shared by the line
//! client (progress on stdout, among the chat) and the one-shot commands (progress on stderr,
//! so stdout holds only the result).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_client::display::{format_size, sanitize};
use parley_client::{Client, download, upload};

/// Transfers in progress by id. A std mutex: held only to read or update an entry.
pub type Table = Arc<Mutex<BTreeMap<u32, TransferState>>>;

/// Where progress lines go.
#[derive(Debug, Clone, Copy)]
pub enum Out {
    Stdout,
    Stderr,
}

impl Out {
    fn line(self, line: &str) {
        match self {
            Out::Stdout => println!("{line}"),
            Out::Stderr => eprintln!("{line}"),
        }
    }
}

/// What `/transfers` shows of one transfer.
pub struct TransferState {
    /// "download" or "upload".
    pub kind: &'static str,
    pub name: String,
    pub size: u64,
    pub done: u64,
}

/// How often a transfer's progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// Downloads `path` into `dir`, saying how big it is before it starts, printing progress every
/// [`PROGRESS_EVERY`] and keeping `/transfers` up to date.
pub async fn download_with_progress(
    client: &Client,
    path: &str,
    dir: &std::path::Path,
    transfers: &Mutex<BTreeMap<u32, TransferState>>,
    out: Out,
) -> Result<download::Saved, download::DownloadError> {
    let id = AtomicU32::new(0);
    let mut reporter = Reporter::new(out);
    let result = download::download(
        client,
        path,
        dir,
        |info| {
            id.store(info.transfer, Ordering::Relaxed);
            let name = sanitize(&info.name);
            out.line(&if info.offset > 0 {
                format!(
                    "Resuming {name} at {} of {} (transfer {})",
                    format_size(info.offset),
                    format_size(info.size),
                    info.transfer
                )
            } else {
                format!(
                    "Downloading {name} ({}) as transfer {}",
                    format_size(info.size),
                    info.transfer
                )
            });
            transfers.lock().unwrap().insert(
                info.transfer,
                TransferState {
                    kind: "download",
                    name: info.name.clone(),
                    size: info.size,
                    done: info.offset,
                },
            );
        },
        |done| reporter.update(transfers, id.load(Ordering::Relaxed), done),
    )
    .await;
    transfers
        .lock()
        .unwrap()
        .remove(&id.load(Ordering::Relaxed));
    result
}

/// Uploads `local` into `folder` with the same reporting as downloads.
pub async fn upload_with_progress(
    client: &Client,
    local: &std::path::Path,
    folder: &str,
    transfers: &Mutex<BTreeMap<u32, TransferState>>,
    out: Out,
) -> Result<upload::Shared, upload::UploadError> {
    let id = AtomicU32::new(0);
    let mut reporter = Reporter::new(out);
    let result = upload::upload(
        client,
        local,
        folder,
        |transfer, name, size| {
            id.store(transfer, Ordering::Relaxed);
            out.line(&format!(
                "Uploading {} ({}) as transfer {transfer}",
                sanitize(name),
                format_size(size)
            ));
            let state = TransferState {
                kind: "upload",
                name: name.to_owned(),
                size,
                done: 0,
            };
            transfers.lock().unwrap().insert(transfer, state);
        },
        |done| reporter.update(transfers, id.load(Ordering::Relaxed), done),
    )
    .await;
    transfers
        .lock()
        .unwrap()
        .remove(&id.load(Ordering::Relaxed));
    result
}

/// Prints a transfer's progress every [`PROGRESS_EVERY`] and keeps `/transfers` current.
struct Reporter {
    out: Out,
    begun: Instant,
    last_print: Instant,
    first_done: Option<u64>,
}

impl Reporter {
    fn new(out: Out) -> Self {
        Self {
            out,
            begun: Instant::now(),
            last_print: Instant::now(),
            first_done: None,
        }
    }

    fn update(&mut self, transfers: &Mutex<BTreeMap<u32, TransferState>>, id: u32, done: u64) {
        let mut transfers = transfers.lock().unwrap();
        let Some(state) = transfers.get_mut(&id) else {
            return;
        };
        state.done = done;
        // The rate counts only what moved in this attempt, not a resumed part.
        let first = *self.first_done.get_or_insert(done);
        if self.last_print.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_print = Instant::now();
        let rate = (done - first) as f64 / self.begun.elapsed().as_secs_f64().max(0.001);
        let left = (state.size - done) as f64 / rate.max(1.0);
        self.out.line(&format!(
            "{}: {} of {} ({}%), {}/s, {} s left",
            sanitize(&state.name),
            format_size(done),
            format_size(state.size),
            percent(done, state.size),
            format_size(rate as u64),
            left.ceil() as u64
        ));
    }
}

pub fn percent(done: u64, size: u64) -> u64 {
    (done * 100).checked_div(size).unwrap_or(100)
}

/// The last line of a download: where, how much, how fast.
pub fn saved_line(saved: &download::Saved) -> String {
    let secs = saved.elapsed.as_secs_f64().max(0.001);
    let moved = saved.size - saved.resumed_from;
    format!(
        "Saved {}: {} in {secs:.1} s ({}/s){}, checksum verified",
        sanitize(&saved.path.display().to_string()),
        format_size(saved.size),
        format_size((moved as f64 / secs) as u64),
        if saved.resumed_from > 0 {
            ", resumed"
        } else {
            ""
        },
    )
}

/// The last line of an upload: the name it got, how much, how fast.
pub fn shared_line(local: &Path, shared: &upload::Shared) -> String {
    let secs = shared.elapsed.as_secs_f64().max(0.001);
    let size = shared.uploaded.size;
    format!(
        "Shared {} as {}: {} in {secs:.1} s ({}/s), checksum verified",
        sanitize(&local.display().to_string()),
        sanitize(&shared.uploaded.path),
        format_size(size),
        format_size((size as f64 / secs) as u64),
    )
}
