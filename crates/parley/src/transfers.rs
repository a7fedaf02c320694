//! Transfers as people watch them: the size before the first byte, then a progress bar (on a
//! terminal) or a progress line every few seconds (otherwise), a last line with size, time and
//! rate, and the table behind `/transfers`. Shared by the line
//! client (progress on stdout, among the chat) and the one-shot commands (progress on stderr,
//! so stdout holds only the result).

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use parley_client::display::{format_size, sanitize};
use parley_client::{Client, download, upload};

/// Transfers in progress by id. A std mutex: held only to read or update an entry.
pub type Table = Arc<Mutex<BTreeMap<u32, TransferState>>>;

/// Where transfer reports go: stdout or stderr, with progress bars when that is a terminal.
///
/// Every line printed while bars may be showing must go through [`Screen::line`], which puts
/// it above the bars instead of through them.
#[derive(Clone)]
pub struct Screen {
    to_stderr: bool,
    bars: Option<MultiProgress>,
}

impl Screen {
    /// Reports on stdout (the line client, among the chat).
    pub fn stdout() -> Self {
        let bars = std::io::stdout()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Self {
            to_stderr: false,
            bars,
        }
    }

    /// Reports on stderr (the one-shot commands, whose stdout is their result).
    pub fn stderr() -> Self {
        let bars = std::io::stderr()
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Self {
            to_stderr: true,
            bars,
        }
    }

    /// Prints one line, above any progress bars.
    pub fn line(&self, line: &str) {
        match &self.bars {
            Some(bars) if !self.to_stderr => {
                let _ = bars.println(line);
            }
            Some(bars) => bars.suspend(|| eprintln!("{line}")),
            None if self.to_stderr => eprintln!("{line}"),
            None => println!("{line}"),
        }
    }

    /// A progress bar for a transfer of `size` bytes, on a terminal only.
    fn bar(&self, name: &str, size: u64) -> Option<ProgressBar> {
        let bar = self.bars.as_ref()?.add(ProgressBar::new(size));
        let style = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec}, {eta} left",
        )
        .expect("the template is valid")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(sanitize(name).into_owned());
        Some(bar)
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
/// Downloads `path` into `dir`, saying how big it is before it starts, then reporting progress
/// and keeping `/transfers` up to date.
pub async fn download_with_progress(
    client: &Client,
    path: &str,
    dir: &std::path::Path,
    transfers: &Mutex<BTreeMap<u32, TransferState>>,
    screen: &Screen,
) -> Result<download::Saved, download::DownloadError> {
    // Both callbacks report; a mutex lets them share the reporter (and keeps the future Send).
    let reporter = Mutex::new(Reporter::new(screen, transfers));
    download::download(
        client,
        path,
        dir,
        |info| {
            let name = sanitize(&info.name);
            screen.line(&if info.offset > 0 {
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
            let state = TransferState {
                kind: "download",
                name: info.name.clone(),
                size: info.size,
                done: info.offset,
            };
            reporter.lock().unwrap().start(info.transfer, state);
        },
        |done| reporter.lock().unwrap().update(done),
    )
    .await
}

/// Uploads `local` into `folder` with the same reporting as downloads.
pub async fn upload_with_progress(
    client: &Client,
    local: &std::path::Path,
    folder: &str,
    transfers: &Mutex<BTreeMap<u32, TransferState>>,
    screen: &Screen,
) -> Result<upload::Shared, upload::UploadError> {
    let reporter = Mutex::new(Reporter::new(screen, transfers));
    upload::upload(
        client,
        local,
        folder,
        |transfer, name, size| {
            screen.line(&format!(
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
            reporter.lock().unwrap().start(transfer, state);
        },
        |done| reporter.lock().unwrap().update(done),
    )
    .await
}

/// Prints a transfer's progress every [`PROGRESS_EVERY`] and keeps the transfer's entry in the
/// `/transfers` table, from [`Reporter::start`] until it is dropped.
struct Reporter<'a> {
    screen: &'a Screen,
    transfers: &'a Mutex<BTreeMap<u32, TransferState>>,
    /// The transfer's id, once started.
    id: Option<u32>,
    /// On a terminal, a bar; otherwise a line every [`PROGRESS_EVERY`].
    bar: Option<ProgressBar>,
    begun: Instant,
    last_print: Instant,
    first_done: Option<u64>,
}

impl<'a> Reporter<'a> {
    fn new(screen: &'a Screen, transfers: &'a Mutex<BTreeMap<u32, TransferState>>) -> Self {
        Self {
            screen,
            transfers,
            id: None,
            bar: None,
            begun: Instant::now(),
            last_print: Instant::now(),
            first_done: None,
        }
    }

    /// The transfer `id` is under way, as `state` says.
    fn start(&mut self, id: u32, state: TransferState) {
        self.bar = self.screen.bar(&state.name, state.size);
        if let Some(bar) = &self.bar {
            bar.set_position(state.done);
            bar.reset_eta();
        }
        self.id = Some(id);
        self.transfers.lock().unwrap().insert(id, state);
    }

    fn update(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
        let mut transfers = self.transfers.lock().unwrap();
        let Some(state) = self.id.and_then(|id| transfers.get_mut(&id)) else {
            return;
        };
        state.done = done;
        // The rate counts only what moved in this attempt, not a resumed part.
        let first = *self.first_done.get_or_insert(done);
        if self.bar.is_some() || self.last_print.elapsed() < PROGRESS_EVERY {
            return;
        }
        self.last_print = Instant::now();
        let rate = (done - first) as f64 / self.begun.elapsed().as_secs_f64().max(0.001);
        let left = (state.size - done) as f64 / rate.max(1.0);
        self.screen.line(&format!(
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

impl Drop for Reporter<'_> {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if let Some(id) = self.id {
            self.transfers.lock().unwrap().remove(&id);
        }
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
