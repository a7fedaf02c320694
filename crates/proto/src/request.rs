//! Requests: what a client asks of the server. Each carries an `id` and gets exactly one reply.
//!
//! On the wire a request is one JSON object: `{"id": 7, "type": "say", "room": "lobby", "text":
//! "hi"}`. Each request kind is a struct here, paired through [`Call`] with the `result` its
//! `ok` reply carries, so a client can send a typed request and get a typed answer.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// One request: its id, chosen by the client, and what it asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the reply so the client can match them; the server does not interpret it.
    pub id: u64,
    /// The request itself, tagged by `type`.
    #[serde(flatten)]
    pub body: RequestBody,
}

/// Every request kind, tagged on the wire by its `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RequestBody {
    /// Sign in; must be the first request.
    Hello(Hello),
    /// Send a message to a room.
    Say(Say),
    /// Send a private message to one user.
    Msg(Msg),
    /// Enter a room.
    Join(Join),
    /// Leave a room.
    Part(Part),
    /// List the rooms.
    Rooms(Rooms),
    /// List users online, or in one room.
    Users(Users),
    /// Sign off; the server replies, then closes the connection.
    Quit(Quit),
    /// List a folder of the shared folder.
    List(List),
    /// Stream a shared file to the client.
    Download(Download),
    /// Say how much of a download the client has taken, so the server sends more.
    DownloadProgress(DownloadProgress),
    /// Stop a transfer.
    Cancel(Cancel),
    /// Start sending a file to the shared folder.
    Upload(Upload),
    /// Conclude an upload: all its data was sent.
    Finish(Finish),
    /// Page back through stored messages.
    History(History),
    /// Find stored messages by their words.
    Search(Search),
    /// Make the signed-in name an account with a password.
    Register(Register),
    /// Change the account's password.
    Passwd(Passwd),
}

/// A request kind and the `result` of its `ok` reply.
pub trait Call: Serialize + Into<RequestBody> {
    /// What the `result` field of the `ok` reply holds.
    type Output: Serialize + DeserializeOwned;
}

/// Why a control frame from a client is not a request this server can carry out. The
/// connection stays open when the id could be read: the client gets an error reply for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// The request's id, when one could be read.
    pub id: Option<u64>,
    /// [`ErrorCode::UnknownRequest`] or [`ErrorCode::BadRequest`].
    pub code: ErrorCode,
    /// What was wrong, for a person.
    pub message: String,
}

impl Request {
    /// Parses one control frame's payload as a request.
    pub fn decode(json: &[u8]) -> Result<Request, RequestError> {
        // A first look at just the id and the type. It costs a second parse of a small object,
        // and buys two things: a failing request is answered under its own id, and `type` must
        // be a string (serde would otherwise take a number as a variant index: 7 as `quit`).
        #[derive(Deserialize)]
        struct Head {
            id: Option<u64>,
            #[serde(rename = "type")]
            kind: Option<serde_json::Value>,
        }
        let refuse = |id, code, message| RequestError { id, code, message };
        // Only an object is a request: serde would also read a struct from an array, by position.
        if json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(refuse(
                None,
                ErrorCode::BadRequest,
                "A request must be a JSON object.".into(),
            ));
        }
        let head = serde_json::from_slice::<Head>(json).map_err(|err| {
            refuse(
                None,
                ErrorCode::BadRequest,
                format!("Malformed request: {err}."),
            )
        })?;
        let id = head.id;
        match head.kind {
            Some(serde_json::Value::String(kind)) if !KNOWN_TYPES.contains(&kind.as_str()) => {
                return Err(refuse(
                    id,
                    ErrorCode::UnknownRequest,
                    format!("Unknown request type {kind:?}."),
                ));
            }
            Some(serde_json::Value::String(_)) => {}
            _ => {
                return Err(refuse(
                    id,
                    ErrorCode::BadRequest,
                    "A request needs a \"type\" that is a string.".into(),
                ));
            }
        }
        serde_json::from_slice(json).map_err(|err| {
            refuse(
                id,
                ErrorCode::BadRequest,
                format!("Malformed request: {err}."),
            )
        })
    }
}

/// Every request `type`; a test checks it against [`RequestBody`].
const KNOWN_TYPES: &[&str] = &[
    "hello",
    "say",
    "msg",
    "join",
    "part",
    "rooms",
    "users",
    "quit",
    "list",
    "download",
    "download_progress",
    "cancel",
    "upload",
    "finish",
    "history",
    "search",
    "register",
    "passwd",
];

macro_rules! call {
    ($request:ident => $output:ty) => {
        impl From<$request> for RequestBody {
            fn from(request: $request) -> Self {
                RequestBody::$request(request)
            }
        }
        impl Call for $request {
            type Output = $output;
        }
    };
}

/// `hello`: sign in as `name`, offering the protocol versions the client speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the client speaks.
    pub versions: Vec<u16>,
    /// The user name to sign in as.
    pub name: String,
    /// Free text naming the client software, for the server's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The password, for a registered name (ignored for a guest name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}
call!(Hello => Welcome);

/// The result of `hello`: the session's terms and who is online.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version chosen for this connection.
    pub version: u16,
    /// The server software and its version.
    pub server: String,
    /// The name signed in, as the server spells it.
    pub name: String,
    /// The room the client was placed in.
    pub room: String,
    /// Everyone online, the new client included, sorted without regard to case; only the first
    /// [`Welcome::roster_limit`] of them when more are online (`users` pages through the rest).
    pub online: Vec<String>,
    /// How many users are online, the new client included.
    pub online_count: usize,
    /// The most names a list carries (`online`, `members`, a `users` page), and the largest room
    /// whose arrivals and departures are announced by name; larger rooms get `members` events.
    pub roster_limit: usize,
    /// The server pings after this many milliseconds of silence from the client.
    pub keepalive_ms: u64,
    /// ... and closes the connection after this many milliseconds of silence.
    pub timeout_ms: u64,
    /// Longest message text the server accepts, in bytes.
    pub max_text: usize,
    /// Only for a session over the browser's WebSocket: the token that lets the page download
    /// and upload files over HTTP for as long as this session is signed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

/// `say`: send `text` to everyone in `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Say {
    /// The room; the sender must be in it.
    pub room: String,
    /// The message.
    pub text: String,
}
call!(Say => Sent);

/// The result of `say` and `msg`: the message as stored and delivered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    /// The server's id for the message.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// For `msg`, the recipient's name as the server spells it; for `say`, the room.
    pub to: String,
    /// For `msg` to a registered user who is offline: the message is kept and delivered when
    /// they next sign in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
}

/// `msg`: send `text` privately to the user `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Msg {
    /// The recipient, matched without regard to case.
    pub to: String,
    /// The message.
    pub text: String,
}
call!(Msg => Sent);

/// `join`: enter `room`, creating it if nobody is in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// The room; a leading `#` is ignored and case does not matter.
    pub room: String,
}
call!(Join => Joined);

/// The result of `join`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The room's canonical name.
    pub room: String,
    /// Everyone in the room now, the client included, sorted without regard to case; only the
    /// first `roster_limit` (see [`Welcome`]) when the room is larger.
    pub members: Vec<String>,
    /// How many are in the room now, the client included.
    pub count: usize,
}

/// `part`: leave `room`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// The room to leave.
    pub room: String,
}
call!(Part => Parted);

/// The result of `part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parted {
    /// The room's canonical name.
    pub room: String,
}

/// `rooms`: list the rooms that exist.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rooms {}
call!(Rooms => RoomList);

/// The result of `rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomList {
    /// Every room, sorted by name.
    pub rooms: Vec<RoomInfo>,
}

/// One room in a [`RoomList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room's canonical name.
    pub name: String,
    /// How many users are in it.
    pub members: usize,
    /// Whether the asking client is one of them.
    pub joined: bool,
}

/// `users`: list everyone online, or the members of `room`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Users {
    /// Restrict the list to this room's members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// List only names that sort after this one (the last name of the previous page).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}
call!(Users => UserList);

/// The result of `users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserList {
    /// The room asked about, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The names, sorted without regard to case: at most `roster_limit` (see [`Welcome`]).
    pub users: Vec<String>,
    /// How many are online (or in the room) in all, on every page.
    pub count: usize,
    /// Whether names follow the last one listed: ask again with it as `after`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// `quit`: sign off cleanly; others are told the user quit rather than lost its connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quit {}
call!(Quit => Empty);

/// `list`: the entries of a folder in the shared folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct List {
    /// The folder, relative to the shared folder, `/`-separated; empty for the shared folder
    /// itself. See [`crate::paths::split`] for what is refused.
    #[serde(default)]
    pub path: String,
}
call!(List => Listing);

/// The result of `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    /// The folder listed, normalized: names joined by `/`, no leading or trailing `/`.
    pub path: String,
    /// Folders first, then files, each sorted by name without regard to case.
    pub entries: Vec<Entry>,
    /// How many entries are files.
    pub files: usize,
    /// How many entries are folders.
    pub folders: usize,
    /// The sum of the files' sizes, in bytes (folders' contents not included).
    pub total_bytes: u64,
}

/// One entry of a [`Listing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The entry's name.
    pub name: String,
    /// Whether it is a folder.
    pub folder: bool,
    /// Its size in bytes (0 for folders).
    pub size: u64,
    /// When it was last modified, in milliseconds since the Unix epoch.
    pub modified: u64,
    /// Who uploaded it, for files shared through Parley.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<String>,
}

/// `download`: stream the shared file `path`, starting at byte `offset` (to resume).
///
/// The client picks `transfer`, an id not in use by another of its transfers, and is ready for
/// data frames carrying it before it sends the request: they may follow the reply at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Download {
    /// The file, relative to the shared folder.
    pub path: String,
    /// Where to start, in bytes; beyond the end of the file means from the start.
    #[serde(default)]
    pub offset: u64,
    /// The client's id for this transfer.
    pub transfer: u32,
    /// Most bytes the server should send beyond what the client has said it took
    /// (`download_progress`). The client reads that much ahead of its disk, so events sent behind
    /// the data are not kept waiting for it. 0 (or absent, from an older client) sets no bound.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub window: u64,
}
call!(Download => Downloading);

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The result of `download`: what is coming. Data frames follow, then a `transfer_end` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Downloading {
    /// The transfer's id, as the client chose it.
    pub transfer: u32,
    /// The file, normalized.
    pub path: String,
    /// The file's name (its last path component).
    pub name: String,
    /// The whole file's size in bytes.
    pub size: u64,
    /// Where the data starts: the requested offset, or 0 if that was beyond the end.
    pub offset: u64,
    /// The window the server keeps to: the request's. 0 (absent on the wire) when it keeps to
    /// none, as an older server, and wants no `download_progress`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub window: u64,
}

/// `download_progress`: the client has taken `received` bytes of download `transfer` (counted
/// from the download's offset), so the server may send up to the window beyond that. A client
/// must not wait for more data while a window or more of what it received is unreported: the
/// server waits for the report then, and the download stalls (protocol section 5.11).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadProgress {
    /// The download.
    pub transfer: u32,
    /// Bytes taken so far.
    pub received: u64,
}
call!(DownloadProgress => Empty);

/// `cancel`: stop the transfer `transfer`; a `transfer_end` with status `cancelled` follows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The transfer to stop.
    pub transfer: u32,
}
call!(Cancel => Empty);

/// `upload`: announce a file of `size` bytes for the shared folder `folder`, to be sent as
/// data frames carrying `transfer`, then concluded with `finish`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    /// The folder to put it in, relative to the shared folder; empty for the shared folder.
    #[serde(default)]
    pub folder: String,
    /// The file's name: a plain name, no `/`, not starting with `.`.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// The client's id for this transfer.
    pub transfer: u32,
}
call!(Upload => Uploading);

/// The result of `upload`: the server is ready for the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploading {
    /// The transfer's id, as the client chose it.
    pub transfer: u32,
    /// Most file bytes to put in one data frame.
    pub max_chunk: usize,
    /// Most bytes the client should have sent and not yet seen stored (`upload_progress`
    /// events): the server reads that much ahead of its disk, so requests sent behind the data
    /// are not kept waiting for it. 0 (or absent, from an older server) sets no bound.
    #[serde(default)]
    pub window: u64,
}

/// `finish`: all of an upload's data was sent; `blake3` is the hash of the whole file.
///
/// Send it after the transfer's last data frame: the server reads in order, so it then has
/// every byte when it checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// The upload.
    pub transfer: u32,
    /// BLAKE3 of the file, 64 lower-case hexadecimal digits.
    pub blake3: String,
}
call!(Finish => Uploaded);

/// The result of `finish`: the file is in the shared folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploaded {
    /// Where it is, relative to the shared folder.
    pub path: String,
    /// Its name there, which has ` (1)` (or another number) added if the name was taken.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `history`: stored messages of a room the client is in, or the private messages between
/// the client and `with`; older than `before` if given; the newest `limit` of those.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The room (ignored when `with` is given).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The other person of a private conversation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<String>,
    /// Only messages with ids below this one: to page further back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// How many, at most [`crate::limits::MAX_HISTORY`].
    pub limit: usize,
}
call!(History => Messages);

/// `search`: stored messages the client may see that contain all of `words`, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Search {
    /// The words, separated by spaces.
    pub words: String,
    /// How many, at most [`crate::limits::MAX_HISTORY`].
    pub limit: usize,
}
call!(Search => Messages);

/// The result of `history` (oldest first) and `search` (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Messages {
    /// The messages.
    pub messages: Vec<crate::event::Stored>,
}

/// `register`: make the name this connection signed in with an account, protected by
/// `password` from then on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// The password: at least [`crate::limits::MIN_PASSWORD_CHARS`] characters.
    pub password: String,
}
call!(Register => Empty);

/// `passwd`: change the signed-in account's password.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Passwd {
    /// The current password.
    pub old: String,
    /// The new one.
    pub new: String,
}
call!(Passwd => Empty);

/// The result of requests that return nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_documented_shape() {
        let request = Request::decode(br#"{"id":7,"type":"say","room":"lobby","text":"hi"}"#);
        assert_eq!(
            request,
            Ok(Request {
                id: 7,
                body: RequestBody::Say(Say {
                    room: "lobby".into(),
                    text: "hi".into()
                })
            })
        );
        let request = Request::decode(br#"{"type":"rooms","id":8,"future_field":1}"#).unwrap();
        assert_eq!(request.body, RequestBody::Rooms(Rooms {}));
    }

    #[test]
    fn round_trips_through_json() {
        let request = Request {
            id: 1,
            body: Hello {
                versions: vec![1],
                name: "alice".into(),
                client: None,
                password: None,
            }
            .into(),
        };
        let json = serde_json::to_vec(&request).unwrap();
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"id":1,"type":"hello","versions":[1],"name":"alice"}"#
        );
        assert_eq!(Request::decode(&json).unwrap(), request);
    }

    #[test]
    fn every_request_kind_is_known() {
        let text = || "x".to_owned();
        let bodies: Vec<RequestBody> = vec![
            Hello {
                versions: vec![1],
                name: text(),
                client: None,
                password: None,
            }
            .into(),
            Say {
                room: text(),
                text: text(),
            }
            .into(),
            Msg {
                to: text(),
                text: text(),
            }
            .into(),
            Join { room: text() }.into(),
            Part { room: text() }.into(),
            Rooms {}.into(),
            Users::default().into(),
            Quit {}.into(),
            List { path: text() }.into(),
            Download {
                path: text(),
                offset: 0,
                transfer: 1,
                window: 1,
            }
            .into(),
            DownloadProgress {
                transfer: 1,
                received: 1,
            }
            .into(),
            Cancel { transfer: 1 }.into(),
            Upload {
                folder: text(),
                name: text(),
                size: 1,
                transfer: 1,
            }
            .into(),
            Finish {
                transfer: 1,
                blake3: text(),
            }
            .into(),
            History::default().into(),
            Search::default().into(),
            Register::default().into(),
            Passwd::default().into(),
        ];
        // The match is exhaustive and numbers every kind: a new kind needs an arm here, and
        // then a sample above, or `seen` is not all true.
        let mut seen = [false; 18];
        for body in &bodies {
            let json = serde_json::to_value(body).unwrap();
            let kind = json["type"].as_str().unwrap().to_owned();
            assert!(KNOWN_TYPES.contains(&kind.as_str()), "{kind} missing");
            seen[match body {
                RequestBody::Hello(_) => 0,
                RequestBody::Say(_) => 1,
                RequestBody::Msg(_) => 2,
                RequestBody::Join(_) => 3,
                RequestBody::Part(_) => 4,
                RequestBody::Rooms(_) => 5,
                RequestBody::Users(_) => 6,
                RequestBody::Quit(_) => 7,
                RequestBody::List(_) => 8,
                RequestBody::Download(_) => 9,
                RequestBody::Cancel(_) => 10,
                RequestBody::Upload(_) => 11,
                RequestBody::Finish(_) => 12,
                RequestBody::History(_) => 13,
                RequestBody::Search(_) => 14,
                RequestBody::Register(_) => 15,
                RequestBody::Passwd(_) => 16,
                RequestBody::DownloadProgress(_) => 17,
            }] = true;
        }
        assert!(
            seen.iter().all(|seen| *seen),
            "a request kind has no sample"
        );
        assert_eq!(KNOWN_TYPES.len(), seen.len(), "KNOWN_TYPES misses a kind");
    }

    #[test]
    fn tells_unknown_from_malformed() {
        let err = Request::decode(br#"{"id":3,"type":"dance"}"#).unwrap_err();
        assert_eq!((err.id, err.code), (Some(3), ErrorCode::UnknownRequest));
        let err = Request::decode(br#"{"id":4,"type":"say","room":"lobby"}"#).unwrap_err();
        assert_eq!((err.id, err.code), (Some(4), ErrorCode::BadRequest));
        assert!(err.message.contains("text"), "{}", err.message);
        let err = Request::decode(b"not json").unwrap_err();
        assert_eq!((err.id, err.code), (None, ErrorCode::BadRequest));
        let err = Request::decode(br#"{"type":"say","room":"lobby","text":"x"}"#).unwrap_err();
        assert_eq!(err.id, None);
        // An array is not read as a request by position.
        for json in [&br#"[1,"rooms"]"#[..], br#" [3,"users"]"#, b"[]", b"7"] {
            assert_eq!(Request::decode(json).unwrap_err().id, None);
        }
        // A numeric type is not a variant index.
        for kind in ["7", "0", "null", "[]"] {
            let json = format!(r#"{{"id":9,"type":{kind}}}"#);
            let err = Request::decode(json.as_bytes()).unwrap_err();
            assert_eq!(
                (err.id, err.code),
                (Some(9), ErrorCode::BadRequest),
                "{kind}"
            );
        }
    }
}
