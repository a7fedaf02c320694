//! The hub: who is online, which rooms exist, and routing between sessions.
//!
//! All of it lives behind one std `Mutex`. Every operation is short and never awaits (pushing
//! into an [`Outbox`] does not block), so an async lock would only add cost; holding the lock
//! while pushing also gives every recipient the same order of events. A broadcast is encoded
//! once, outside any per-recipient loop, and every recipient gets a clone of the same `Bytes`.
//!
//! Arrivals in a room are announced in batches: announcing each join to everyone costs N²
//! messages when N people arrive together (a server restart, a class starting), which is how
//! IRC servers take minutes to fill a channel of a few thousand. A join is queued on its room
//! and announced, with every other join queued meanwhile, [`ARRIVALS_BATCH`] later, or at once
//! when anything else happens in the room (a message, a departure), so events never change
//! order. Each joiner's reply lists the room as it is, so an arrival is announced only to those
//! who were not yet told.
//!
//! Batching alone still names every arrival to every member: N² names in all. So lists carry
//! at most the roster limit of names (the rest are paged with `users`), and a room larger than
//! the limit announces neither arrivals nor departures by name: each batch becomes one
//! `members` event with the room's new size, queued and flushed the same way.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use parley_proto::event::{
    Departure, Event, Members, PartReason, Presence, Private, RoomMessage, Shared,
};
use parley_proto::limits::{MAX_ROOMS_PER_USER, MAX_TEXT_BYTES};
use parley_proto::names::{self, fold};
use parley_proto::reply::event_frame;
use parley_proto::request::{Joined, RoomInfo, Sent, UserList};
use parley_proto::{DEFAULT_ROOM, ErrorCode, put_control_frame};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::outbox::{Outbox, Wakes};
use crate::recorder::{Receipt, Recorder};
use crate::store::Stored;

/// How long a room's arrivals are gathered before they are announced together.
pub(crate) const ARRIVALS_BATCH: Duration = Duration::from_millis(20);

/// How long a large room's arrivals and departures are gathered before its size is announced.
/// Every announcement goes to every member, so a room filling or emptying fast costs members ×
/// announcements: a size a quarter of a second old is as good to a person, and a tenth of the
/// events.
pub(crate) const LARGE_ROOM_BATCH: Duration = Duration::from_millis(250);

/// A room whose arrivals are to be announced, and when.
pub(crate) type Announcement = (String, Instant);

/// Identifies one signed-in session inside the hub.
pub(crate) type SessionId = u64;

/// A request the hub refused: a protocol error code and a sentence for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

fn refuse(code: ErrorCode, message: impl Into<String>) -> Refusal {
    Refusal {
        code,
        message: message.into(),
    }
}

pub(crate) struct Hub {
    state: Mutex<State>,
    next_message_id: AtomicU64,
    recorder: Recorder,
}

struct State {
    /// Folded name to session; a `BTreeMap` so listings come out sorted.
    names: BTreeMap<String, SessionId>,
    members: HashMap<SessionId, Member>,
    rooms: BTreeMap<String, Room>,
    /// The most names in a list, and the largest room whose presence is announced by name.
    roster_limit: usize,
    /// Rooms with presence to announce, for the task that calls [`Hub::announce_presence`].
    announcements: mpsc::UnboundedSender<Announcement>,
}

struct Member {
    name: String,
    outbox: Outbox,
    /// Sorted. A `Vec`: a `BTreeSet` of one room allocates a node for eleven, ~280 bytes per
    /// person online, and nobody is in more than a few dozen rooms.
    rooms: Vec<String>,
}

impl Member {
    fn is_in(&self, room: &str) -> bool {
        self.rooms
            .binary_search_by(|r| r.as_str().cmp(room))
            .is_ok()
    }
}

struct Room {
    /// Each member's outbox, so a broadcast needs no second lookup per recipient.
    members: HashMap<SessionId, Outbox>,
    /// The members by folded name, so lists and pages come out sorted without sorting.
    roster: BTreeMap<String, SessionId>,
    /// Members who entered and are not announced yet, in order of arrival.
    arrivals: Vec<(SessionId, String)>,
    /// Members who left while the room was large and are not announced yet.
    departures: usize,
    /// The id of the last message said here, or of the last said anywhere when the room was
    /// made (one said in an earlier room of the same name may not be stored yet).
    last_said: u64,
    /// The room's `backlog` event (`None`: no stored messages), valid while `last_said` is the
    /// value it is tagged with: every member entering gets the same, read from the store once.
    backlog: Option<(u64, Option<Bytes>)>,
}

impl Room {
    fn new(last_said: u64) -> Self {
        Self {
            members: HashMap::new(),
            roster: BTreeMap::new(),
            arrivals: Vec::new(),
            departures: 0,
            last_said,
            backlog: None,
        }
    }

    fn pending(&self) -> bool {
        !self.arrivals.is_empty() || self.departures > 0
    }
}

impl State {
    fn new(roster_limit: usize, announcements: mpsc::UnboundedSender<Announcement>) -> Self {
        Self {
            names: BTreeMap::new(),
            members: HashMap::new(),
            rooms: BTreeMap::new(),
            roster_limit,
            announcements,
        }
    }

    /// Up to a roster limit of names from `roster` (folded name to session) that sort after
    /// `after`, and whether more follow.
    fn page(
        &self,
        roster: &BTreeMap<String, SessionId>,
        after: Option<&str>,
    ) -> (Vec<String>, bool) {
        let start = after.map_or(Bound::Unbounded, |name| Bound::Excluded(fold(name)));
        let mut names = roster
            .range::<String, _>((start, Bound::Unbounded))
            .map(|(_, id)| self.members[id].name.clone());
        let page = names.by_ref().take(self.roster_limit).collect();
        (page, names.next().is_some())
    }

    /// Schedules an announcement of `room`'s presence changes, [`ARRIVALS_BATCH`] from now, or
    /// [`LARGE_ROOM_BATCH`] for a `large` room (one announced by its size).
    fn schedule(&self, room: &str, large: bool) {
        let wait = if large {
            LARGE_ROOM_BATCH
        } else {
            ARRIVALS_BATCH
        };
        // Fails only when the announcing task is gone: the server is stopping.
        let _ = self
            .announcements
            .send((room.to_owned(), Instant::now() + wait));
    }

    /// Puts `id` in `room_name`, creating the room if needed (`last_id` is the last message id
    /// given out), and queues the arrival for announcing.
    fn enter(&mut self, room_name: &str, id: SessionId, last_id: u64) {
        let member = &self.members[&id];
        let (name, outbox) = (member.name.clone(), member.outbox.clone());
        let room = self
            .rooms
            .entry(room_name.to_owned())
            .or_insert_with(|| Room::new(last_id));
        let first = !room.pending();
        room.members.insert(id, outbox);
        room.roster.insert(fold(&name), id);
        room.arrivals.push((id, name));
        if first {
            let large = room.members.len() > self.roster_limit;
            self.schedule(room_name, large);
        }
    }

    /// Announces `room_name`'s queued presence changes. In a room within the roster limit, and
    /// with no departures queued: to those who were there before, all arrivals in one event; to
    /// each arrival, those who came after it (its reply listed the others). In a larger room,
    /// one `members` event to everyone with the room's size.
    fn announce_presence(&mut self, room_name: &str) {
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        if !room.pending() {
            return;
        }
        let arrivals = std::mem::take(&mut room.arrivals);
        let departures = std::mem::take(&mut room.departures);
        if departures > 0 || room.members.len() > self.roster_limit {
            let event = event_frame(&Event::Members(Members {
                room: room_name.to_owned(),
                count: room.members.len(),
            }));
            for outbox in room.members.values() {
                outbox.push(event.clone());
            }
            return;
        }
        let names: Vec<String> = arrivals.iter().map(|(_, name)| name.clone()).collect();
        let joined = |users: &[String]| {
            event_frame(&Event::Join(Presence {
                room: room_name.to_owned(),
                users: users.to_vec(),
            }))
        };
        let everyone = joined(&names);
        let order: HashMap<SessionId, usize> = arrivals
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (*id, i))
            .collect();
        for (id, outbox) in &room.members {
            match order.get(id) {
                None => outbox.push(everyone.clone()),
                Some(&i) if i + 1 < names.len() => outbox.push(joined(&names[i + 1..])),
                Some(_) => {}
            }
        }
    }

    /// Sends `frame` to everyone in `room` but `except`; their writers are woken by `wakes`.
    fn broadcast(&self, room: &str, frame: &Bytes, except: SessionId, wakes: &mut Wakes) {
        if let Some(room) = self.rooms.get(room) {
            for (id, outbox) in &room.members {
                if *id != except {
                    outbox.push_deferred(frame.clone(), wakes);
                }
            }
        }
    }

    /// Removes `id` from `room` and tells those left why, unless `reason` is `None`; drops the
    /// room when it empties. A large room's departures are queued and announced as its size.
    fn leave_room(&mut self, id: SessionId, room_name: &str, reason: Option<PartReason>) {
        let large = self
            .rooms
            .get(room_name)
            .is_some_and(|room| room.members.len() > self.roster_limit);
        if !large {
            // Arrivals first, so nobody hears of a departure before the arrival.
            self.announce_presence(room_name);
        }
        let Some(room) = self.rooms.get_mut(room_name) else {
            return;
        };
        room.members.remove(&id);
        room.roster.remove(&fold(&self.members[&id].name));
        let empty = room.members.is_empty();
        if empty && room_name != DEFAULT_ROOM {
            self.rooms.remove(room_name);
        } else if large && reason.is_some() {
            let first = !room.pending();
            room.departures += 1;
            if first {
                self.schedule(room_name, large);
            }
        } else if let (false, Some(reason)) = (empty, reason) {
            let event = Event::Part(Departure {
                room: room_name.to_owned(),
                users: vec![self.members[&id].name.clone()],
                reason,
            });
            // Woken as this returns: a departure is not part of a burst.
            self.broadcast(room_name, &event_frame(&event), id, &mut Wakes::default());
        }
    }
}

impl Hub {
    /// A hub whose message ids continue after `last_id`, whose messages go to `recorder` and
    /// whose lists hold at most `roster_limit` names; the receiver yields the rooms whose
    /// presence to announce, and when (see [`Hub::announce_presence`]).
    pub(crate) fn new(
        last_id: u64,
        recorder: Recorder,
        roster_limit: usize,
    ) -> (Self, mpsc::UnboundedReceiver<Announcement>) {
        let (announcements, due) = mpsc::unbounded_channel();
        let hub = Self {
            state: Mutex::new(State::new(roster_limit.max(1), announcements)),
            next_message_id: AtomicU64::new(last_id),
            recorder,
        };
        (hub, due)
    }

    /// Announces the arrivals and departures queued in `room`.
    pub(crate) fn announce_presence(&self, room: &str) {
        self.state.lock().unwrap().announce_presence(room);
    }

    /// Signs `name` in: claims the name, places the session in the default room, queues the
    /// reply built by `welcome` (given the first page of everyone online, and how many are)
    /// and tells the room. The reply is queued under the lock so that it reaches the client
    /// before any event does.
    pub(crate) fn sign_in(
        &self,
        id: SessionId,
        name: &str,
        outbox: Outbox,
        welcome: impl FnOnce(&str, Vec<String>, usize) -> Bytes,
    ) -> Result<(), Refusal> {
        names::validate_user_name(name).map_err(|err| {
            refuse(
                ErrorCode::InvalidName,
                format!("The name {name:?} is not allowed: {err}."),
            )
        })?;
        let mut state = self.state.lock().unwrap();
        let key = fold(name);
        if state.names.contains_key(&key) {
            return Err(refuse(
                ErrorCode::NameTaken,
                format!("The name {name} is taken: someone online uses it. Pick another."),
            ));
        }
        state.names.insert(key, id);
        state.members.insert(
            id,
            Member {
                name: name.to_owned(),
                outbox: outbox.clone(),
                rooms: vec![DEFAULT_ROOM.to_owned()],
            },
        );
        let (online, _) = state.page(&state.names, None);
        outbox.push(welcome(DEFAULT_ROOM, online, state.names.len()));
        state.enter(DEFAULT_ROOM, id, self.last_id());
        Ok(())
    }

    /// Signs a session out of every room, telling each room why it left; `None` tells nobody
    /// (the server is stopping and everyone is being told that instead).
    pub(crate) fn sign_out(&self, id: SessionId, reason: Option<PartReason>) {
        let mut state = self.state.lock().unwrap();
        let Some(rooms) = state.members.get(&id).map(|m| m.rooms.clone()) else {
            return;
        };
        for room in &rooms {
            state.leave_room(id, room, reason);
        }
        if let Some(member) = state.members.remove(&id) {
            state.names.remove(&fold(&member.name));
        }
    }

    /// Sends each of `texts` from `id` to everyone else in `room`, in order, and hands each to
    /// the recorder: its receipt says when it is stored. The messages are encoded into one
    /// buffer that every recipient shares, so a burst read from one connection costs each
    /// recipient one push and one slice of one write however many messages it holds. The
    /// recipients' writers are left for `wakes` to wake.
    ///
    /// Each text has its own result, in order. An empty or too long text is refused for that;
    /// the others are refused if the sender may not speak in `room`.
    pub(crate) fn say(
        &self,
        id: SessionId,
        room: &str,
        texts: impl IntoIterator<Item = String>,
        wakes: &mut Wakes,
    ) -> Vec<Result<(Sent, Receipt), Refusal>> {
        let room = match checked_room(room) {
            Ok(room) => room,
            Err(refusal) => return refuse_all(texts, refusal),
        };
        let mut state = self.state.lock().unwrap();
        let member = &state.members[&id];
        if !member.is_in(&room) {
            let refusal = refuse(
                ErrorCode::NotInRoom,
                format!("You are not in #{room}; /join it first."),
            );
            drop(state);
            return refuse_all(texts, refusal);
        }
        let from = member.name.clone();
        let mut frames = BytesMut::new();
        let mut results = Vec::new();
        let mut last_said = None;
        for text in texts {
            if let Err(refusal) = check_text(&text) {
                results.push(Err(refusal));
                continue;
            }
            // Nobody hears a message from someone whose arrival they have not heard of. A
            // large room names no arrivals, so its size waits for its own time.
            if last_said.is_none() && state.rooms[&room].members.len() <= state.roster_limit {
                state.announce_presence(&room);
            }
            // Stamped under the lock, so ids and times grow in the order messages are
            // delivered.
            let (message_id, ts) = self.stamp();
            last_said = Some(message_id);
            let message = RoomMessage {
                id: message_id,
                ts,
                room: room.clone(),
                from: from.clone(),
                text,
            };
            put_control_frame(&mut frames, &Event::Message(message.clone()));
            // Recorded under the lock too, so messages reach the store in id order.
            let receipt = self.recorder.record(Stored {
                id: message_id,
                ts,
                room: Some(message.room),
                from: message.from,
                to: None,
                text: message.text,
            });
            let sent = Sent {
                id: message_id,
                ts,
                to: room.clone(),
                queued: false,
            };
            results.push(Ok((sent, receipt)));
        }
        if let Some(last_said) = last_said {
            if let Some(said) = state.rooms.get_mut(&room) {
                said.last_said = last_said;
            }
            state.broadcast(&room, &frames.freeze(), id, wakes);
        }
        results
    }

    /// Sends `text` from `id` to the user named `to` only, and hands it to the recorder.
    pub(crate) fn msg(
        &self,
        id: SessionId,
        to: &str,
        text: String,
    ) -> Result<(Sent, Receipt), Refusal> {
        check_text(&text)?;
        let state = self.state.lock().unwrap();
        let Some(recipient) = state.names.get(&fold(to)).map(|r| &state.members[r]) else {
            return Err(refuse(
                ErrorCode::NotFound,
                format!("No user named {to} is online."),
            ));
        };
        let (message_id, ts) = self.stamp();
        let message = Private {
            id: message_id,
            ts,
            from: state.members[&id].name.clone(),
            to: recipient.name.clone(),
            text,
        };
        recipient
            .outbox
            .push(event_frame(&Event::Private(message.clone())));
        let receipt = self.recorder.record(Stored {
            id: message_id,
            ts,
            room: None,
            from: message.from,
            to: Some(message.to.clone()),
            text: message.text,
        });
        let sent = Sent {
            id: message_id,
            ts,
            to: message.to,
            queued: false,
        };
        Ok((sent, receipt))
    }

    /// Keeps a private message from `id` for `to`, a registered user who is offline, for their
    /// next sign-in. If `to` came online meanwhile, it is delivered at once instead.
    pub(crate) fn msg_offline(
        &self,
        id: SessionId,
        to: &str,
        text: String,
    ) -> Result<(Sent, Receipt), Refusal> {
        check_text(&text)?;
        let state = self.state.lock().unwrap();
        if state.names.contains_key(&fold(to)) {
            drop(state);
            return self.msg(id, to, text);
        }
        let (message_id, ts) = self.stamp();
        let receipt = self.recorder.record_undelivered(Stored {
            id: message_id,
            ts,
            room: None,
            from: state.members[&id].name.clone(),
            to: Some(to.to_owned()),
            text,
        });
        let sent = Sent {
            id: message_id,
            ts,
            to: to.to_owned(),
            queued: true,
        };
        Ok((sent, receipt))
    }

    /// The rooms `id` is in.
    pub(crate) fn rooms_of(&self, id: SessionId) -> Vec<String> {
        let state = self.state.lock().unwrap();
        state
            .members
            .get(&id)
            .map(|member| member.rooms.clone())
            .unwrap_or_default()
    }

    /// Puts `id` in `room`, creating it if needed, and tells the others there. The reply built
    /// by `reply` is queued under the lock, so it reaches the client before any event from the
    /// room it just entered.
    pub(crate) fn join(
        &self,
        id: SessionId,
        room: &str,
        reply: impl FnOnce(&Joined) -> Bytes,
    ) -> Result<(), Refusal> {
        let room = checked_room(room)?;
        let mut state = self.state.lock().unwrap();
        let member = state.members.get_mut(&id).expect("a session in the hub");
        if let Err(at) = member.rooms.binary_search(&room) {
            if member.rooms.len() >= MAX_ROOMS_PER_USER {
                return Err(refuse(
                    ErrorCode::TooManyRooms,
                    format!(
                        "You are in {MAX_ROOMS_PER_USER} rooms, the most allowed; /part one first."
                    ),
                ));
            }
            member.rooms.insert(at, room.clone());
            state.enter(&room, id, self.last_id());
        }
        let roster = &state.rooms[&room].roster;
        let (members, _) = state.page(roster, None);
        let count = roster.len();
        state.members[&id].outbox.push(reply(&Joined {
            room,
            members,
            count,
        }));
        Ok(())
    }

    /// The backlog event of `room` as last read from the store (`Some(None)`: it has none), if
    /// no message was said there since; `None` if it must be read.
    pub(crate) fn cached_backlog(&self, room: &str) -> Option<Option<Bytes>> {
        let state = self.state.lock().unwrap();
        let room = state.rooms.get(room)?;
        match &room.backlog {
            Some((said, backlog)) if *said == room.last_said => Some(backlog.clone()),
            _ => None,
        }
    }

    /// The last message id up to which messages are stored (see [`Recorder::stored_through`]):
    /// taken before reading a backlog, for [`Hub::cache_backlog`].
    pub(crate) fn stored_through(&self) -> u64 {
        self.recorder.stored_through()
    }

    /// Keeps `backlog`, read from the store after [`Hub::stored_through`] said `stored`, for
    /// the next members entering `room`: if every message said there was stored when the read
    /// began, the read saw them all, and it stays right until the next message.
    pub(crate) fn cache_backlog(&self, room: &str, stored: u64, backlog: Option<Bytes>) {
        let mut state = self.state.lock().unwrap();
        if let Some(room) = state.rooms.get_mut(room)
            && stored >= room.last_said
        {
            room.backlog = Some((room.last_said, backlog));
        }
    }

    /// Takes `id` out of `room` and tells the others there.
    pub(crate) fn part(&self, id: SessionId, room: &str) -> Result<String, Refusal> {
        let room = checked_room(room)?;
        let mut state = self.state.lock().unwrap();
        let member = state.members.get_mut(&id).expect("a session in the hub");
        let Ok(at) = member.rooms.binary_search(&room) else {
            return Err(refuse(
                ErrorCode::NotInRoom,
                format!("You are not in #{room}."),
            ));
        };
        member.rooms.remove(at);
        state.leave_room(id, &room, Some(PartReason::Part));
        Ok(room)
    }

    /// Tells everyone online but the uploader that a file was shared.
    pub(crate) fn announce_shared(&self, uploader: SessionId, user: &str, path: &str, size: u64) {
        let event = event_frame(&Event::Shared(Shared {
            user: user.to_owned(),
            path: path.to_owned(),
            size,
        }));
        let state = self.state.lock().unwrap();
        for (id, member) in &state.members {
            if *id != uploader {
                member.outbox.push(event.clone());
            }
        }
    }

    /// Every room, with its size and whether `id` is in it.
    pub(crate) fn rooms(&self, id: SessionId) -> Vec<RoomInfo> {
        let state = self.state.lock().unwrap();
        state
            .rooms
            .iter()
            .map(|(name, room)| RoomInfo {
                name: name.clone(),
                members: room.members.len(),
                joined: room.members.contains_key(&id),
            })
            .collect()
    }

    /// A page of everyone online, or of everyone in `room`: the names after `after`.
    pub(crate) fn users(
        &self,
        room: Option<&str>,
        after: Option<&str>,
    ) -> Result<UserList, Refusal> {
        let room = room.map(checked_room).transpose()?;
        let state = self.state.lock().unwrap();
        let roster = match &room {
            None => &state.names,
            Some(name) => match state.rooms.get(name) {
                Some(room) => &room.roster,
                None => {
                    return Err(refuse(
                        ErrorCode::InvalidRoom,
                        format!("There is no room #{name}."),
                    ));
                }
            },
        };
        let (users, more) = state.page(roster, after);
        Ok(UserList {
            room,
            users,
            count: roster.len(),
            more,
        })
    }

    /// The last message id given out.
    pub(crate) fn last_id(&self) -> u64 {
        self.next_message_id.load(Ordering::Relaxed)
    }

    /// A new message id and the current time in milliseconds since the Unix epoch.
    fn stamp(&self) -> (u64, u64) {
        let id = self.next_message_id.fetch_add(1, Ordering::Relaxed) + 1;
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        (id, ts)
    }
}

/// Refuses each of `texts`: for its own fault if it has one, as a message alone would be,
/// else for `refusal`.
fn refuse_all(
    texts: impl IntoIterator<Item = String>,
    refusal: Refusal,
) -> Vec<Result<(Sent, Receipt), Refusal>> {
    texts
        .into_iter()
        .map(|text| Err(check_text(&text).err().unwrap_or_else(|| refusal.clone())))
        .collect()
}

fn check_text(text: &str) -> Result<(), Refusal> {
    if text.trim().is_empty() {
        return Err(refuse(ErrorCode::EmptyText, "A message cannot be empty."));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(refuse(
            ErrorCode::TextTooLong,
            format!(
                "A message can be at most {MAX_TEXT_BYTES} bytes long; this one has {}.",
                text.len()
            ),
        ));
    }
    Ok(())
}

fn checked_room(room: &str) -> Result<String, Refusal> {
    let room = names::canonical_room(room);
    names::validate_room_name(&room).map_err(|err| {
        refuse(
            ErrorCode::InvalidRoom,
            format!("The room name {room:?} is not allowed: {err}."),
        )
    })?;
    Ok(room)
}
