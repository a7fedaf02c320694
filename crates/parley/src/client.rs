//! `parley client <USERNAME> [HOST] [PORT]` in line mode: commands from stdin one per line,
//! events to stdout one per line, so it works in a terminal and from a script alike.
//!
//! Requests are sent in the order typed and run concurrently with event printing, so a reply
//! never waits behind the screen and a script's lines keep their order on the server.
//! Exit codes: 0 after quitting, 1 when connecting or signing in failed, 2 for usage mistakes,
//! 3 when the server closed the connection or it was lost.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use parley_client::command::{self, Command, HELP};
use parley_client::display::{
    event_line, format_size, listing_lines, message_line, roster, sanitize, stored_line,
};
use parley_client::tls::{Security, Trust, default_known_hosts};
use parley_client::{
    Client, ClientEvent, Closed, ConnectError, ConnectOptions, Events, RequestError,
};
use parley_proto::event::Event;
use parley_proto::names::canonical_room;
use parley_proto::request::{
    History, Join, List, Msg, Part, Passwd, Register, Rooms, Say, Search, Users,
};
use parley_proto::{DEFAULT_ROOM, ErrorCode};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::secrets::{self, EchoOff};
use crate::server::DEFAULT_PORT;
use crate::transfers::{
    Screen, Table, download_with_progress, percent, saved_line, shared_line, upload_with_progress,
};

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
    /// Read the password (for a registered name) from this file's first line; PARLEY_PASSWORD
    /// works too, and at a terminal it is asked for when needed.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// Plain TCP, for a server run with --no-tls.
    #[arg(long, env = "PARLEY_NO_TLS", value_parser = clap::builder::BoolishValueParser::new())]
    no_tls: bool,
    /// Accept a server certificate that differs from the one pinned for this address (after
    /// the server's certificate was replaced on purpose).
    #[arg(long)]
    accept_new_certificate: bool,
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
    let configured_password = secrets::configured(args.password_file.as_deref())?;
    let mut options = ConnectOptions {
        password: configured_password.clone(),
        security: security(args.no_tls, args.accept_new_certificate),
        ..options
    };
    let mut connected = Client::connect(&options).await;
    // A registered name and no password given: ask, at a terminal, and try once more.
    if let Err(ConnectError::Refused {
        code: ErrorCode::AuthFailed,
        ..
    }) = &connected
        && options.password.is_none()
        && secrets::interactive()
    {
        options.password = Some(secrets::prompt(&format!(
            "Password for {}: ",
            options.name
        ))?);
        connected = Client::connect(&options).await;
    }
    let (mut client, mut events) = match connected {
        Ok(connected) => connected,
        Err(err) => {
            eprintln!("parley: {}", client_error(&err));
            return Ok(ExitCode::from(EXIT_CONNECT));
        }
    };
    if let Some(note) = trust_note(&client) {
        println!("{note}");
    }
    let welcome = client.welcome();
    println!(
        "Connected to {} as {}. Online ({}): {}. You are in #{}; type /help for commands.",
        client.address(),
        sanitize(&welcome.name),
        welcome.online_count,
        roster(&welcome.online, welcome.online_count, 10),
        sanitize(&welcome.room),
    );

    let mut session = LineSession {
        rooms: vec![welcome.room.clone()],
        client: client.clone(),
        download_dir,
        transfers: Arc::default(),
        screen: Screen::stdout(),
        oldest: HashMap::new(),
        configured_password,
        secret: None,
        last_seen: 0,
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
                if let (Some(_), Ok(Some(answer))) = (&session.secret, &line) {
                    if let Some(request) = session.answer_secret(answer.clone()) {
                        in_flight.push(request);
                    }
                    continue;
                }
                let command = match line {
                    Ok(Some(line)) => command::parse(&line),
                    // End of input (or unreadable input) means quit.
                    Ok(None) | Err(_) => Some(Ok(Command::Quit)),
                };
                match command {
                    None => {}
                    Some(Err(err)) => session.screen.line(&format!("! {err}")),
                    Some(Ok(Command::Quit)) => {
                        quitting = true;
                        quit_deadline.as_mut().reset(tokio::time::Instant::now() + QUIT_TIMEOUT);
                    }
                    Some(Ok(command)) => in_flight.push(session.execute(command)),
                }
            }
            Some(outcome) = in_flight.next() => session.settle(outcome),
            event = events.recv() => match event {
                Some(ClientEvent::Server(mut event)) => {
                    if let Event::Backlog(backlog) = &mut event {
                        if let Some(first) = backlog.messages.first() {
                            session.note_oldest(thread_key(Some(&backlog.room), None), first.id);
                        }
                        // After a reconnect, the backlog repeats what was already shown.
                        backlog.messages.retain(|m| m.id > session.last_seen);
                        if backlog.messages.is_empty() {
                            continue;
                        }
                    }
                    session.see(&event);
                    if let Some(line) = event_line(&event) {
                        session.screen.line(&line);
                    }
                }
                Some(ClientEvent::Closed(Closed::Lost(reason))) if !quitting => {
                    eprintln!(
                        "! Lost the connection to {}: {}; reconnecting.",
                        client.address(),
                        sanitize(&reason)
                    );
                    let Some((again, again_events)) = reconnect(&options, &session.rooms).await else {
                        eprintln!("! Could not reconnect to {}; giving up.", client.address());
                        return Ok(ExitCode::from(EXIT_DISCONNECTED));
                    };
                    eprintln!("Reconnected to {}.", again.address());
                    (client, events) = (again.clone(), again_events);
                    session.client = again;
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

/// How long to wait before each attempt to reconnect after a lost connection (about 4 s in
/// all): a short loss is bridged, a server that is gone is soon given up on.
const RECONNECT_DELAYS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Connects and signs in again, and rejoins `rooms`; their backlogs bring what was missed.
async fn reconnect(options: &ConnectOptions, rooms: &[String]) -> Option<(Client, Events)> {
    for delay in RECONNECT_DELAYS {
        tokio::time::sleep(delay).await;
        // The server may still hold the old session, and the name with it, for a moment.
        let Ok((client, events)) = Client::connect(options).await else {
            continue;
        };
        for room in rooms.iter().filter(|room| *room != DEFAULT_ROOM) {
            let _ = client.call(Join { room: room.clone() }).await;
        }
        return Some((client, events));
    }
    None
}

/// A connection failure for the terminal: escaped, except the certificate warning, which is
/// made here (fingerprints and a file name) and spans lines on purpose.
pub fn client_error(err: &ConnectError) -> String {
    match err {
        ConnectError::CertificateChanged { .. } => err.to_string(),
        _ => sanitize(&err.to_string()).into_owned(),
    }
}

/// TLS with pinning, or plain TCP when asked.
pub fn security(no_tls: bool, accept_new: bool) -> Security {
    if no_tls {
        return Security::Plain;
    }
    Security::Tls {
        known_hosts: default_known_hosts(),
        accept_new,
    }
}

/// What to tell the user about the server's certificate, once: when it was first pinned or
/// replaced.
pub fn trust_note(client: &Client) -> Option<String> {
    let (what, fingerprint) = match client.trust()? {
        Trust::NewlyPinned(fingerprint) => ("First connection to", fingerprint),
        Trust::Replaced(fingerprint) => ("Accepted a new certificate for", fingerprint),
        _ => return None,
    };
    Some(format!(
        "{what} {}: its certificate (SHA-256 {fingerprint}) is pinned in {}; you will be warned if it changes.",
        client.address(),
        default_known_hosts().display()
    ))
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
    /// Transfers in progress, for `/transfers`.
    transfers: Table,
    /// Where everything is printed, above any progress bars.
    screen: Screen,
    /// The oldest message shown of each conversation, by [`thread_key`].
    oldest: HashMap<String, u64>,
    /// The password given by file or environment, for `/register` and `/passwd` without a
    /// terminal.
    configured_password: Option<String>,
    /// A password being typed (echo off) for `/register` or `/passwd`.
    secret: Option<(SecretPrompt, EchoOff)>,
    /// The id of the newest message shown, so a backlog after a reconnect shows only news.
    last_seen: u64,
}

/// Where a password dialogue is: the next input line answers its question.
enum SecretPrompt {
    Register {
        first: Option<String>,
    },
    Passwd {
        old: Option<String>,
        new: Option<String>,
    },
}

/// What a finished request has to show, and the room it failed to join, if any.
struct Outcome {
    lines: Vec<String>,
    failed_join: Option<String>,
    /// For history: the conversation paged and the oldest message id now shown of it.
    paged: Option<(String, u64)>,
}

impl Outcome {
    fn lines(lines: Vec<String>) -> Self {
        Self {
            lines,
            failed_join: None,
            paged: None,
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
                let result = client.call(Users { room, after: None }).await;
                Outcome::lines(vec![match result {
                    // The whole first page: up to the server's roster limit.
                    Ok(list) => {
                        let who = roster(&list.users, list.count, list.users.len());
                        match list.room {
                            Some(room) => {
                                format!("In #{} ({}): {who}", sanitize(&room), list.count)
                            }
                            None => format!("Online ({}): {who}", list.count),
                        }
                    }
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
                            joined.count,
                            roster(&joined.members, joined.count, 10)
                        )]),
                        Err(err) => Outcome {
                            failed_join: Some(room),
                            ..Outcome::lines(vec![failure(err)])
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
                let screen = self.screen.clone();
                Box::pin(async move {
                    let result =
                        download_with_progress(&client, &path, &dir, &transfers, &screen).await;
                    let line = match result {
                        Ok(saved) => saved_line(&saved),
                        Err(err) => format!(
                            "! Download of {} failed: {}",
                            sanitize(&path),
                            sanitize(&err.to_string())
                        ),
                    };
                    Outcome::lines(vec![line])
                })
            }
            Command::History { with, count } => {
                let room = if with.is_none() {
                    match self.current_room() {
                        Some(room) => Some(room.clone()),
                        None => {
                            return ready(vec![
                                "! You are not in any room; /join one first.".into(),
                            ]);
                        }
                    }
                } else {
                    None
                };
                let key = thread_key(room.as_deref(), with.as_deref());
                let before = self.oldest.get(&key).copied();
                let request = History {
                    room,
                    with,
                    before,
                    limit: count.unwrap_or(20),
                };
                Box::pin(async move {
                    match client.call(request).await {
                        Ok(found) if found.messages.is_empty() => {
                            Outcome::lines(vec!["No older messages.".into()])
                        }
                        Ok(found) => Outcome {
                            paged: found.messages.first().map(|m| (key, m.id)),
                            ..Outcome::lines(found.messages.iter().map(stored_line).collect())
                        },
                        Err(err) => Outcome::lines(vec![failure(err)]),
                    }
                })
            }
            Command::Search(words) => Box::pin(async move {
                let request = Search { words, limit: 50 };
                Outcome::lines(match client.call(request).await {
                    Ok(found) if found.messages.is_empty() => vec!["No messages found.".into()],
                    Ok(found) => {
                        let mut lines = vec![format!(
                            "Found {} messages, newest first:",
                            found.messages.len()
                        )];
                        lines.extend(found.messages.iter().map(stored_line));
                        lines
                    }
                    Err(err) => vec![failure(err)],
                })
            }),
            Command::Register => {
                if secrets::interactive() {
                    return self.ask_secret(SecretPrompt::Register { first: None });
                }
                match self.configured_password.clone() {
                    Some(password) => register(client, password),
                    None => ready(vec![format!(
                        "! Not at a terminal: give the password in {} or --password-file.",
                        secrets::PASSWORD_VAR
                    )]),
                }
            }
            Command::Passwd => {
                if secrets::interactive() {
                    return self.ask_secret(SecretPrompt::Passwd {
                        old: None,
                        new: None,
                    });
                }
                match (
                    self.configured_password.clone(),
                    std::env::var(secrets::NEW_PASSWORD_VAR),
                ) {
                    (Some(old), Ok(new)) => passwd(client, old, new),
                    _ => ready(vec![format!(
                        "! Not at a terminal: give the current password in {} (or --password-file) and the new one in {}.",
                        secrets::PASSWORD_VAR,
                        secrets::NEW_PASSWORD_VAR
                    )]),
                }
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
                let (transfers, screen) = (self.transfers.clone(), self.screen.clone());
                Box::pin(async move {
                    let local = PathBuf::from(&path);
                    let folder = folder.unwrap_or_default();
                    let line =
                        match upload_with_progress(&client, &local, &folder, &transfers, &screen)
                            .await
                        {
                            Ok(shared) => shared_line(&local, &shared),
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
            self.screen.line(line);
        }
        if let Some(room) = outcome.failed_join {
            self.rooms.retain(|r| *r != room);
        }
        if let Some((thread, oldest)) = outcome.paged {
            self.note_oldest(thread, oldest);
        }
    }

    /// Notes the messages an event shows.
    fn see(&mut self, event: &Event) {
        let newest = match event {
            Event::Message(m) => m.id,
            Event::Private(p) => p.id,
            Event::Backlog(b) => b.messages.last().map_or(0, |m| m.id),
            _ => 0,
        };
        self.last_seen = self.last_seen.max(newest);
    }

    /// Starts a password dialogue: echo off, the first question asked.
    fn ask_secret(&mut self, prompt: SecretPrompt) -> BoxFuture<'static, Outcome> {
        let question = match prompt {
            SecretPrompt::Register { .. } => "Choose a password: ",
            SecretPrompt::Passwd { .. } => "Current password: ",
        };
        self.secret = Some((prompt, EchoOff::new()));
        print!("{question}");
        let _ = std::io::Write::flush(&mut std::io::stdout());
        ready(Vec::new())
    }

    /// Takes one typed answer of a password dialogue; returns the request once all are in.
    fn answer_secret(&mut self, answer: String) -> Option<BoxFuture<'static, Outcome>> {
        let (prompt, echo) = self.secret.take()?;
        let client = self.client.clone();
        let next = match prompt {
            SecretPrompt::Register { first: None } => (
                SecretPrompt::Register {
                    first: Some(answer),
                },
                "Repeat it: ",
            ),
            SecretPrompt::Passwd { old: None, .. } => (
                SecretPrompt::Passwd {
                    old: Some(answer),
                    new: None,
                },
                "New password: ",
            ),
            SecretPrompt::Passwd {
                old: Some(old),
                new: None,
            } => (
                SecretPrompt::Passwd {
                    old: Some(old),
                    new: Some(answer),
                },
                "Repeat it: ",
            ),
            SecretPrompt::Register { first: Some(first) } => {
                drop(echo);
                if first != answer {
                    return Some(ready(vec![
                        "! The passwords differ; nothing changed.".into(),
                    ]));
                }
                return Some(register(client, first));
            }
            SecretPrompt::Passwd {
                old: Some(old),
                new: Some(new),
            } => {
                drop(echo);
                if new != answer {
                    return Some(ready(vec![
                        "! The passwords differ; nothing changed.".into(),
                    ]));
                }
                return Some(passwd(client, old, new));
            }
        };
        self.secret = Some((next.0, echo));
        print!("{}", next.1);
        let _ = std::io::Write::flush(&mut std::io::stdout());
        None
    }

    /// Remembers the oldest message shown of a conversation, where `/history` continues.
    fn note_oldest(&mut self, thread: String, id: u64) {
        let oldest = self.oldest.entry(thread).or_insert(id);
        *oldest = (*oldest).min(id);
    }
}

/// The key of a conversation for paging: `#room` or `@user` (lower case).
fn thread_key(room: Option<&str>, with: Option<&str>) -> String {
    match (with, room) {
        (Some(user), _) => format!("@{}", user.to_ascii_lowercase()),
        (None, Some(room)) => format!("#{room}"),
        (None, None) => String::new(),
    }
}

fn register(client: Client, password: String) -> BoxFuture<'static, Outcome> {
    Box::pin(async move {
        let name = client.welcome().name.clone();
        Outcome::lines(vec![match client.call(Register { password }).await {
            Ok(_) => format!(
                "Registered {}: from now on this name needs its password.",
                sanitize(&name)
            ),
            Err(err) => failure(err),
        }])
    })
}

fn passwd(client: Client, old: String, new: String) -> BoxFuture<'static, Outcome> {
    Box::pin(async move {
        Outcome::lines(vec![match client.call(Passwd { old, new }).await {
            Ok(_) => "Password changed.".into(),
            Err(err) => failure(err),
        }])
    })
}

fn ready(lines: Vec<String>) -> BoxFuture<'static, Outcome> {
    Box::pin(std::future::ready(Outcome::lines(lines)))
}

fn failure(err: RequestError) -> String {
    format!("! {}", sanitize(&err.to_string()))
}
