//! `parley client <USERNAME> [HOST] [PORT]` in line mode: commands from stdin one per line,
//! events to stdout one per line, so it works in a terminal and from a script alike.
//!
//! Requests are sent in the order typed and run concurrently with event printing, so a reply
//! never waits behind the screen and a script's lines keep their order on the server.
//! Exit codes: 0 after quitting, 1 when connecting or signing in failed, 2 for usage mistakes,
//! 3 when the server closed the connection or it was lost.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parley_client::command::{self, Command, HELP};
use parley_client::display::{
    event_line, format_size, listing_lines, message_line, names, sanitize,
};
use parley_client::{Client, ClientEvent, Closed, ConnectOptions, RequestError};
use parley_client::{download, upload};
use parley_proto::ErrorCode;
use parley_proto::names::canonical_room;
use parley_proto::request::{Join, List, Msg, Part, Rooms, Say, Users};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::server::DEFAULT_PORT;

/// How long quitting waits for replies still on their way before leaving anyway.
const QUIT_TIMEOUT: Duration = Duration::from_secs(5);

const EXIT_CONNECT: u8 = 1;
const EXIT_DISCONNECTED: u8 = 3;

#[derive(clap::Args)]
pub struct Args {
    /// Your name: 1 to 32 letters, digits, '_', '-' or '.'.
    #[arg(value_name = "USERNAME")]
    username: String,
    /// Server host name or address.
    #[arg(value_name = "HOST")]
    host: Option<String>,
    /// Server port.
    #[arg(value_name = "PORT")]
    port: Option<u16>,
    /// Server host name or address; the same as the HOST argument.
    #[arg(
        long = "host",
        id = "host_option",
        value_name = "HOST",
        conflicts_with = "host"
    )]
    host_option: Option<String>,
    /// Server port; the same as the PORT argument.
    #[arg(
        long = "port",
        id = "port_option",
        value_name = "PORT",
        conflicts_with = "port"
    )]
    port_option: Option<u16>,
    /// Seconds to wait for the server to answer when connecting.
    #[arg(long, default_value_t = 10, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=600))]
    connect_timeout: u64,
    /// Where downloads are saved [default: <USERNAME>Files in the current directory].
    #[arg(long, value_name = "DIR")]
    download_dir: Option<PathBuf>,
    /// Line mode: plain lines in and out (the only mode for now, and always used when
    /// stdin or stdout is not a terminal).
    #[arg(long)]
    plain: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let host = args
        .host
        .or(args.host_option)
        .unwrap_or_else(|| "127.0.0.1".into());
    let port = args.port.or(args.port_option).unwrap_or(DEFAULT_PORT);
    let download_dir = args
        .download_dir
        .unwrap_or_else(|| PathBuf::from(format!("{}Files", args.username)));
    let options = ConnectOptions {
        timeout: Duration::from_secs(args.connect_timeout),
        ..ConnectOptions::new(host, port, args.username)
    };
    let (client, mut events) = match Client::connect(&options).await {
        Ok(connected) => connected,
        Err(err) => {
            eprintln!("parley: {}", sanitize(&err.to_string()));
            return Ok(ExitCode::from(EXIT_CONNECT));
        }
    };
    let welcome = client.welcome();
    println!(
        "Connected to {} as {}. Online ({}): {}. You are in #{}; type /help for commands.",
        client.address(),
        sanitize(&welcome.name),
        welcome.online.len(),
        names(&welcome.online),
        sanitize(&welcome.room),
    );

    let mut session = LineSession {
        rooms: vec![welcome.room.clone()],
        client: client.clone(),
        download_dir,
        transfers: Arc::default(),
    };
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Outcome>> = FuturesUnordered::new();
    let mut quitting = false;
    let quit_deadline = tokio::time::sleep(Duration::MAX);
    tokio::pin!(quit_deadline);
    loop {
        if quitting && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            line = input.next_line(), if !quitting => {
                let command = match line {
                    Ok(Some(line)) => command::parse(&line),
                    // End of input (or unreadable input) means quit.
                    Ok(None) | Err(_) => Some(Ok(Command::Quit)),
                };
                match command {
                    None => {}
                    Some(Err(err)) => println!("! {err}"),
                    Some(Ok(Command::Quit)) => {
                        quitting = true;
                        quit_deadline.as_mut().reset(tokio::time::Instant::now() + QUIT_TIMEOUT);
                    }
                    Some(Ok(command)) => in_flight.push(session.execute(command)),
                }
            }
            Some(outcome) = in_flight.next() => session.settle(outcome),
            event = events.recv() => match event {
                Some(ClientEvent::Server(event)) => {
                    if let Some(line) = event_line(&event) {
                        println!("{line}");
                    }
                }
                Some(ClientEvent::Closed(closed)) => return Ok(report_closed(&client, closed)),
                None => return Ok(ExitCode::from(EXIT_DISCONNECTED)),
            },
            _ = &mut quit_deadline => break,
        }
    }
    let _ = tokio::time::timeout(QUIT_TIMEOUT, client.quit()).await;
    Ok(ExitCode::SUCCESS)
}

/// Says how the connection ended and picks the exit code.
fn report_closed(client: &Client, closed: Closed) -> ExitCode {
    match closed {
        Closed::Quit => return ExitCode::SUCCESS,
        Closed::ByServer(bye) if bye.code == ErrorCode::Shutdown => {
            eprintln!(
                "! The server at {} is shutting down; disconnected.",
                client.address()
            );
        }
        Closed::ByServer(bye) => {
            eprintln!(
                "! Disconnected by the server at {}: {}",
                client.address(),
                sanitize(&bye.message)
            );
        }
        Closed::Lost(reason) => {
            eprintln!(
                "! Lost the connection to {}: {}",
                client.address(),
                sanitize(&reason)
            );
        }
    }
    ExitCode::from(EXIT_DISCONNECTED)
}

/// The line client's own state: the rooms it is in, the current one last.
struct LineSession {
    rooms: Vec<String>,
    client: Client,
    download_dir: PathBuf,
    /// Transfers in progress, for `/transfers`. A std mutex: held only to read or update.
    transfers: Arc<Mutex<BTreeMap<u32, TransferState>>>,
}

/// What `/transfers` shows of one transfer.
struct TransferState {
    /// "download" or "upload".
    kind: &'static str,
    name: String,
    size: u64,
    done: u64,
}

/// How often a transfer's progress is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What a finished request has to show, and the room it failed to join, if any.
struct Outcome {
    lines: Vec<String>,
    failed_join: Option<String>,
}

impl Outcome {
    fn lines(lines: Vec<String>) -> Self {
        Self {
            lines,
            failed_join: None,
        }
    }
}

impl LineSession {
    fn current_room(&self) -> Option<&String> {
        self.rooms.last()
    }

    /// Sends the request for `command` now, so requests keep the order they were typed in, and
    /// returns the future of what to print when its reply comes.
    fn execute(&mut self, command: Command) -> BoxFuture<'static, Outcome> {
        let client = self.client.clone();
        let me = client.welcome().name.clone();
        match command {
            Command::Say(text) => {
                let Some(room) = self.current_room().cloned() else {
                    return ready(vec!["! You are not in any room; /join one first.".into()]);
                };
                Box::pin(async move {
                    let result = client
                        .call(Say {
                            room: room.clone(),
                            text: text.clone(),
                        })
                        .await;
                    Outcome::lines(vec![match result {
                        Ok(sent) => message_line(&sent.to, &me, &text),
                        Err(err) => failure(err),
                    }])
                })
            }
            Command::Msg { to, text } => Box::pin(async move {
                let result = client
                    .call(Msg {
                        to,
                        text: text.clone(),
                    })
                    .await;
                Outcome::lines(vec![match result {
                    Ok(sent) => format!("[private to {}] {}", sanitize(&sent.to), sanitize(&text)),
                    Err(err) => failure(err),
                }])
            }),
            Command::Users(room) => Box::pin(async move {
                let result = client.call(Users { room }).await;
                Outcome::lines(vec![match result {
                    Ok(list) => match list.room {
                        Some(room) => format!(
                            "In #{} ({}): {}",
                            sanitize(&room),
                            list.users.len(),
                            names(&list.users)
                        ),
                        None => format!("Online ({}): {}", list.users.len(), names(&list.users)),
                    },
                    Err(err) => failure(err),
                }])
            }),
            Command::Join(room) => {
                let room = canonical_room(&room);
                // Optimistically current, so lines typed after /join go to the new room.
                self.rooms.retain(|r| *r != room);
                self.rooms.push(room.clone());
                Box::pin(async move {
                    match client.call(Join { room: room.clone() }).await {
                        Ok(joined) => Outcome::lines(vec![format!(
                            "You joined #{}. Here ({}): {}",
                            sanitize(&joined.room),
                            joined.members.len(),
                            names(&joined.members)
                        )]),
                        Err(err) => Outcome {
                            lines: vec![failure(err)],
                            failed_join: Some(room),
                        },
                    }
                })
            }
            Command::Part(room) => {
                let Some(room) = room
                    .map(|r| canonical_room(&r))
                    .or_else(|| self.current_room().cloned())
                else {
                    return ready(vec!["! You are not in any room.".into()]);
                };
                self.rooms.retain(|r| *r != room);
                let now_in = self.current_room().cloned();
                Box::pin(async move {
                    let mut lines = vec![match client.call(Part { room }).await {
                        Ok(parted) => format!("You left #{}.", sanitize(&parted.room)),
                        Err(err) => failure(err),
                    }];
                    lines.push(match now_in {
                        Some(room) => format!("Now talking in #{}.", sanitize(&room)),
                        None => "You are in no room now; /join one to talk.".into(),
                    });
                    Outcome::lines(lines)
                })
            }
            Command::Rooms => Box::pin(async move {
                Outcome::lines(vec![match client.call(Rooms {}).await {
                    Ok(list) => {
                        let rooms: Vec<String> = list
                            .rooms
                            .iter()
                            .map(|r| {
                                let you = if r.joined { ", you are in it" } else { "" };
                                format!("#{} ({}{you})", sanitize(&r.name), r.members)
                            })
                            .collect();
                        format!("Rooms ({}): {}", rooms.len(), rooms.join(", "))
                    }
                    Err(err) => failure(err),
                }])
            }),
            Command::Help => ready(HELP.lines().map(str::to_owned).collect()),
            Command::Files(path) => Box::pin(async move {
                let path = path.unwrap_or_default();
                Outcome::lines(match client.call(List { path }).await {
                    Ok(listing) => listing_lines(&listing),
                    Err(err) => vec![failure(err)],
                })
            }),
            Command::Download(path) => {
                let (dir, transfers) = (self.download_dir.clone(), self.transfers.clone());
                Box::pin(async move {
                    let line = match download_with_progress(&client, &path, &dir, &transfers).await
                    {
                        Ok(saved) => {
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
                        Err(err) => format!(
                            "! Download of {} failed: {}",
                            sanitize(&path),
                            sanitize(&err.to_string())
                        ),
                    };
                    Outcome::lines(vec![line])
                })
            }
            Command::Transfers => {
                let transfers = self.transfers.lock().unwrap();
                if transfers.is_empty() {
                    return ready(vec!["No transfers in progress.".into()]);
                }
                ready(
                    transfers
                        .iter()
                        .map(|(id, t)| {
                            format!(
                                "[{id}] {} {}: {} of {} ({}%)",
                                t.kind,
                                sanitize(&t.name),
                                format_size(t.done),
                                format_size(t.size),
                                percent(t.done, t.size)
                            )
                        })
                        .collect(),
                )
            }
            Command::Cancel(transfer) => Box::pin(async move {
                Outcome::lines(vec![match client.cancel(transfer).await {
                    Ok(()) => format!("Cancelling transfer {transfer}."),
                    Err(err) => failure(err),
                }])
            }),
            Command::Upload { path, folder } => {
                let transfers = self.transfers.clone();
                Box::pin(async move {
                    let local = PathBuf::from(&path);
                    let folder = folder.unwrap_or_default();
                    let line =
                        match upload_with_progress(&client, &local, &folder, &transfers).await {
                            Ok(shared) => {
                                let secs = shared.elapsed.as_secs_f64().max(0.001);
                                let size = shared.uploaded.size;
                                format!(
                                    "Shared {} as {}: {} in {secs:.1} s ({}/s), checksum verified",
                                    sanitize(&path),
                                    sanitize(&shared.uploaded.path),
                                    format_size(size),
                                    format_size((size as f64 / secs) as u64),
                                )
                            }
                            Err(err) => format!(
                                "! Upload of {} failed: {}",
                                sanitize(&path),
                                sanitize(&err.to_string())
                            ),
                        };
                    Outcome::lines(vec![line])
                })
            }
            Command::Quit => unreachable!("quit is handled by the input loop"),
        }
    }

    /// Prints a finished request's lines and undoes a join that failed.
    fn settle(&mut self, outcome: Outcome) {
        for line in &outcome.lines {
            println!("{line}");
        }
        if let Some(room) = outcome.failed_join {
            self.rooms.retain(|r| *r != room);
        }
    }
}

/// Downloads `path` into `dir`, saying how big it is before it starts, printing progress every
/// [`PROGRESS_EVERY`] and keeping `/transfers` up to date.
async fn download_with_progress(
    client: &Client,
    path: &str,
    dir: &std::path::Path,
    transfers: &Mutex<BTreeMap<u32, TransferState>>,
) -> Result<download::Saved, download::DownloadError> {
    let id = AtomicU32::new(0);
    let mut reporter = Reporter::new();
    let result = download::download(
        client,
        path,
        dir,
        |info| {
            id.store(info.transfer, Ordering::Relaxed);
            let name = sanitize(&info.name);
            if info.offset > 0 {
                println!(
                    "Resuming {name} at {} of {} (transfer {})",
                    format_size(info.offset),
                    format_size(info.size),
                    info.transfer
                );
            } else {
                println!(
                    "Downloading {name} ({}) as transfer {}",
                    format_size(info.size),
                    info.transfer
                );
            }
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
async fn upload_with_progress(
    client: &Client,
    local: &std::path::Path,
    folder: &str,
    transfers: &Mutex<BTreeMap<u32, TransferState>>,
) -> Result<upload::Shared, upload::UploadError> {
    let id = AtomicU32::new(0);
    let mut reporter = Reporter::new();
    let result = upload::upload(
        client,
        local,
        folder,
        |transfer, name, size| {
            id.store(transfer, Ordering::Relaxed);
            println!(
                "Uploading {} ({}) as transfer {transfer}",
                sanitize(name),
                format_size(size)
            );
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
    begun: Instant,
    last_print: Instant,
    first_done: Option<u64>,
}

impl Reporter {
    fn new() -> Self {
        Self {
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
        println!(
            "{}: {} of {} ({}%), {}/s, {} s left",
            sanitize(&state.name),
            format_size(done),
            format_size(state.size),
            percent(done, state.size),
            format_size(rate as u64),
            left.ceil() as u64
        );
    }
}

fn percent(done: u64, size: u64) -> u64 {
    (done * 100).checked_div(size).unwrap_or(100)
}

fn ready(lines: Vec<String>) -> BoxFuture<'static, Outcome> {
    Box::pin(std::future::ready(Outcome::lines(lines)))
}

fn failure(err: RequestError) -> String {
    format!("! {}", sanitize(&err.to_string()))
}
