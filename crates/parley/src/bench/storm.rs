//! `parley bench join-storm`: K clients connect, sign in and join one room as fast as they can.
//! Each keeps its own view of who is in the room (the join reply's list and count, then join,
//! part and members events), as a client showing an online list would; the run reports how long
//! until all were in, and until every view was right. A view is right when its count is K and,
//! while the room is small enough to be announced by name, its names are exactly the K joiners.
//! At the end one client pages through the room's list with `users`, which must name all K.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::bail;
use parley_proto::{DEFAULT_ROOM, Frame};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::probe::{CpuWindow, round3};
use super::wire::{Conn, Dialer, frame_type};
use super::{Report, Target};

/// Options of `parley bench join-storm`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub(crate) target: Target,
    /// Clients joining.
    #[arg(short = 'k', long, default_value_t = 10_000)]
    clients: usize,
    /// The room they join; the default is the room everyone enters on signing in.
    #[arg(long, default_value = DEFAULT_ROOM)]
    room: String,
}

/// Who one client believes is in the room: a bit per expected name (`j<index>`), and the size.
struct View {
    bits: Vec<u64>,
    /// Names set in `bits`.
    members: usize,
    /// How many the client believes are in the room.
    count: usize,
    /// The names are not the whole room: the room was too large to list or announce by name.
    partial: bool,
    /// A name outside the run, or a part for someone not there: the view cannot be right.
    strays: usize,
}

impl View {
    fn new(clients: usize) -> Self {
        Self {
            bits: vec![0; clients.div_ceil(64)],
            members: 0,
            count: 0,
            partial: false,
            strays: 0,
        }
    }

    /// Takes a list from a reply: the first `names` of the `count` in the room.
    fn listed<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, count: usize) {
        for name in names {
            self.set(name, true);
        }
        self.count = count;
        self.partial = self.members < count;
    }

    /// Takes a `members` event: the room's size, announced without names.
    fn resized(&mut self, count: usize) {
        self.count = count;
        self.partial = true;
    }

    fn index(&self, name: &str) -> Option<usize> {
        let index: usize = name.strip_prefix('j')?.parse().ok()?;
        (index < self.bits.len() * 64).then_some(index)
    }

    fn set(&mut self, name: &str, present: bool) {
        let Some(index) = self.index(name) else {
            self.strays += 1;
            return;
        };
        let (word, bit) = (index / 64, 1u64 << (index % 64));
        let was = self.bits[word] & bit != 0;
        match (was, present) {
            (false, true) => {
                self.bits[word] |= bit;
                self.members += 1;
            }
            (true, false) => {
                self.bits[word] &= !bit;
                self.members -= 1;
            }
            // Joins may repeat a name already listed (a batch racing a join reply): a set.
            (true, true) => {}
            // A part may name someone past the first page of a partial list.
            (false, false) if self.partial => {}
            (false, false) => self.strays += 1,
        }
        if !self.partial {
            self.count = self.members;
        }
    }

    fn right(&self, clients: usize) -> bool {
        self.count == clients && self.strays == 0 && (self.partial || self.members == clients)
    }
}

/// A `join` or `part` event: only what a view needs.
#[derive(Deserialize)]
struct Presence<'a> {
    #[serde(borrow)]
    room: &'a str,
    #[serde(borrow)]
    users: Vec<&'a str>,
}

/// A `members` event.
#[derive(Deserialize)]
struct Members<'a> {
    #[serde(borrow)]
    room: &'a str,
    count: usize,
}

/// A reply, its result parsed with names borrowed from the frame.
#[derive(Deserialize)]
struct Reply<T> {
    result: T,
}

/// The welcome, when the room is the one everyone enters on signing in.
#[derive(Deserialize)]
struct Welcome<'a> {
    #[serde(borrow)]
    online: Vec<&'a str>,
    online_count: usize,
}

/// A join reply's result.
#[derive(Deserialize)]
struct Joined<'a> {
    #[serde(borrow)]
    members: Vec<&'a str>,
    count: usize,
}

/// A page of `users`.
#[derive(Deserialize)]
struct UserList<'a> {
    #[serde(borrow)]
    users: Vec<&'a str>,
    #[serde(default)]
    more: bool,
}

struct Shared {
    clients: usize,
    joined: AtomicUsize,
    converged: AtomicUsize,
    progress: Notify,
    stop: CancellationToken,
}

/// Runs the scenario.
pub async fn run(args: Args) -> anyhow::Result<Report> {
    if args.clients == 0 {
        bail!("join-storm needs at least one client");
    }
    let dialer = Dialer::new(&args.target)?;
    let shared = Arc::new(Shared {
        clients: args.clients,
        joined: AtomicUsize::new(0),
        converged: AtomicUsize::new(0),
        progress: Notify::new(),
        stop: CancellationToken::new(),
    });
    let connecting = Arc::new(Semaphore::new(args.target.conn_concurrency as usize));
    let room = Arc::new(args.room.clone());
    let cpu = CpuWindow::start(args.target.pid);
    let started = Instant::now();
    let mut clients = JoinSet::new();
    for index in 0..args.clients {
        let (dialer, shared, connecting, room) = (
            dialer.clone(),
            shared.clone(),
            connecting.clone(),
            room.clone(),
        );
        clients.spawn(async move { client(index, &dialer, &shared, &connecting, &room).await });
    }
    let deadline = started + Duration::from_secs(args.target.timeout);
    let mut all_in = None;
    let mut all_right = None;
    let mut failure = None;
    while all_right.is_none() {
        let woken = shared.progress.notified();
        if all_in.is_none() && shared.joined.load(Ordering::Acquire) == args.clients {
            all_in = Some(started.elapsed());
        }
        if shared.converged.load(Ordering::Acquire) == args.clients {
            all_right = Some(started.elapsed());
            break;
        }
        tokio::select! {
            _ = woken => {}
            Some(ended) = clients.join_next() => {
                // A client ends early only on failure.
                if let Ok(Err(err)) = ended {
                    failure = Some(err);
                    break;
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    let cpu = cpu.finish();
    shared.stop.cancel();
    let mut right = 0;
    let mut members = Vec::new();
    // Connections close only once every view is in: a close is a part for everyone else.
    let mut connections = Vec::new();
    while let Some(ended) = clients.join_next().await {
        if let Ok(Ok((view, conn))) = ended {
            right += usize::from(view.right(args.clients));
            members.push(view.members);
            connections.push(conn);
        }
    }
    if let Some(err) = failure {
        return Err(err.context("a client failed"));
    }
    let listed = match connections.first_mut() {
        Some(conn) => roster(conn, &args.room, args.clients).await?,
        None => 0,
    };
    drop(connections);
    let roster_right = listed == args.clients;
    let seconds = |d: Option<Duration>| d.map(|d| round3(d.as_secs_f64()));
    let summary = format!(
        "join-storm: {} clients into #{} ({}): all in after {}, every view right after {}; {right} of {} views right at the end; the room's list names {listed}",
        args.clients,
        args.room,
        if args.target.no_tls { "plain" } else { "TLS" },
        all_in.map_or("(never)".to_owned(), |d| format!(
            "{:.3} s",
            d.as_secs_f64()
        )),
        all_right.map_or("(never)".to_owned(), |d| format!(
            "{:.3} s",
            d.as_secs_f64()
        )),
        args.clients,
    );
    let json = json!({
        "mode": "join-storm",
        "tls": !args.target.no_tls,
        "clients": args.clients,
        "room": args.room,
        "all_in_s": seconds(all_in),
        "all_views_right_s": seconds(all_right),
        "views_right": right,
        "roster_listed": listed,
        "view_members_min": members.iter().min(),
        "view_members_max": members.iter().max(),
        "complete": right == args.clients && roster_right,
        "cpu": cpu,
    });
    Ok(Report { summary, json })
}

/// One client: sign in, join, then follow the room's presence until stopped. Returns its view,
/// and its connection still open.
async fn client(
    index: usize,
    dialer: &Dialer,
    shared: &Shared,
    connecting: &Semaphore,
    room: &str,
) -> anyhow::Result<(View, Conn)> {
    let mut view = View::new(shared.clients);
    let permit = connecting.acquire().await?;
    let (mut conn, welcome) = dialer.sign_in(index, &format!("j{index}")).await?;
    if room == DEFAULT_ROOM {
        let welcome: Reply<Welcome<'_>> = serde_json::from_slice(&welcome)?;
        // The welcome lists everyone online, here everyone in the room.
        let Welcome {
            online,
            online_count,
        } = welcome.result;
        view.listed(online, online_count);
    } else {
        let mut early = Vec::new();
        let joined = conn
            .call_raw("join", json!({"room": room}), |event| {
                early.push(event.to_vec())
            })
            .await?;
        let joined: Reply<Joined<'_>> = serde_json::from_slice(&joined)?;
        view.listed(joined.result.members, joined.result.count);
        for event in early {
            follow(&mut view, &event, room)?;
        }
    }
    drop(permit);
    shared.joined.fetch_add(1, Ordering::AcqRel);
    shared.progress.notify_one();
    let mut counted = false;
    loop {
        if !counted && view.right(shared.clients) {
            counted = true;
            shared.converged.fetch_add(1, Ordering::AcqRel);
            shared.progress.notify_one();
        }
        let frame = tokio::select! {
            biased;
            _ = shared.stop.cancelled() => return Ok((view, conn)),
            frame = conn.next_frame() => frame?,
        };
        match frame {
            Some(Frame::Control(json)) => follow(&mut view, &json, room)?,
            Some(_) => {}
            None => bail!("j{index}: the server closed the connection"),
        }
    }
}

/// Pages through `room`'s list with `users` on `conn`; returns how many joiners it names, or 0
/// if it names anyone else or anyone twice.
async fn roster(conn: &mut Conn, room: &str, clients: usize) -> anyhow::Result<usize> {
    let mut view = View::new(clients);
    let mut after: Option<String> = None;
    loop {
        let page = conn
            .call_raw("users", json!({"room": room, "after": after}), |_| {})
            .await?;
        let page: Reply<UserList<'_>> = serde_json::from_slice(&page)?;
        let before = view.members;
        for name in &page.result.users {
            view.set(name, true);
        }
        if view.members - before != page.result.users.len() {
            return Ok(0);
        }
        match page.result.users.last() {
            Some(last) if page.result.more => after = Some((*last).to_owned()),
            _ => break,
        }
    }
    Ok(if view.strays == 0 { view.members } else { 0 })
}

/// Applies a join, part or members event for `room` to `view`.
fn follow(view: &mut View, json: &[u8], room: &str) -> anyhow::Result<()> {
    let present = match frame_type(json) {
        Some(b"join") => true,
        Some(b"part") => false,
        Some(b"members") => {
            let event: Members<'_> = serde_json::from_slice(json)?;
            if event.room == room {
                view.resized(event.count);
            }
            return Ok(());
        }
        _ => return Ok(()),
    };
    let event: Presence<'_> = serde_json::from_slice(json)?;
    if event.room == room {
        for name in event.users {
            view.set(name, present);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_is_right_only_with_everyone_and_no_strays() {
        let mut view = View::new(3);
        for name in ["j0", "j1", "j2", "j1"] {
            view.set(name, true);
        }
        assert!(view.right(3));
        view.set("j1", false);
        assert!(!view.right(3));
        view.set("j1", true);
        view.set("someone", true);
        assert!(!view.right(3));
    }

    #[test]
    fn events_for_other_rooms_are_ignored() {
        let mut view = View::new(2);
        follow(
            &mut view,
            br#"{"type":"join","room":"other","users":["j0"]}"#,
            "lobby",
        )
        .unwrap();
        assert_eq!(view.members, 0);
        follow(
            &mut view,
            br#"{"type":"join","room":"lobby","users":["j0","j1"]}"#,
            "lobby",
        )
        .unwrap();
        assert!(view.right(2));
    }
}
