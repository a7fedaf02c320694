//! Events: what the server pushes to a client unasked. They carry no `id` and get no reply.

use serde::{Deserialize, Serialize};

use crate::ErrorCode;

/// Every event kind, tagged on the wire by its `type` field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Someone said something in a room the client is in.
    Message(RoomMessage),
    /// Someone sent the client a private message.
    Private(Private),
    /// Users entered a room the client is in.
    Join(Presence),
    /// Users left a room the client is in.
    Part(Departure),
    /// How many are in a room the client is in, sent instead of `join` and `part` events
    /// while the room is larger than the roster limit.
    Members(Members),
    /// The server is closing this connection, and why. Nothing follows it.
    Bye(Bye),
    /// A transfer ended; it follows the transfer's last data frame.
    TransferEnd(TransferEnd),
    /// How much of an upload the server has stored: room in its window for more data.
    UploadProgress(UploadProgress),
    /// Someone shared a file (sent to everyone online but the uploader).
    Shared(Shared),
    /// The last messages of a room, sent after signing in and after joining it: history, not
    /// new messages.
    Backlog(Backlog),
}

/// Stored messages of a room, delivered as history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backlog {
    /// The room.
    pub room: String,
    /// Its last messages, oldest first.
    pub messages: Vec<Stored>,
}

/// A stored message: a room message (`room` set) or a private one (`to` set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The server's id for the message.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The room, for a room message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The sender.
    pub from: String,
    /// The recipient, for a private message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The message.
    pub text: String,
}

/// A file was added to the shared folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shared {
    /// Who uploaded it.
    pub user: String,
    /// Where it is, relative to the shared folder.
    pub path: String,
    /// Its size in bytes.
    pub size: u64,
}

/// How a transfer ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferEnd {
    /// The transfer's id.
    pub transfer: u32,
    /// How it ended.
    pub status: TransferStatus,
    /// For a complete download: the BLAKE3 hash of the whole file (not just the bytes sent),
    /// as 64 lower-case hexadecimal digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// For a failed transfer: why, for a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// For a failed transfer, when the failure has a code of its own (an upload that stalled):
    /// why, for a program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ErrorCode>,
}

/// How much of an upload the server has written to its staging file. Sent as the upload's
/// data is stored, at least each time a quarter of its window more is, so that a client keeping
/// at most `window` bytes (see `Uploading`) sent and not yet stored always gets room again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadProgress {
    /// The upload's id.
    pub transfer: u32,
    /// Bytes of the file stored so far, counted from its start.
    pub stored: u64,
}

/// The outcome of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferStatus {
    /// Every byte was sent.
    Complete,
    /// Stopped by a `cancel` request.
    Cancelled,
    /// Stopped by an error (the file shrank, a read failed, ...).
    Failed,
    /// A status this build does not know.
    #[serde(other)]
    Other,
}

/// A message to a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMessage {
    /// The server's id for the message; ids grow over time.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The room.
    pub room: String,
    /// The sender's name.
    pub from: String,
    /// The message, as sent: it may hold any Unicode, so display it escaped.
    pub text: String,
}

/// A private message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Private {
    /// The server's id for the message.
    pub id: u64,
    /// When the server accepted it, in milliseconds since the Unix epoch.
    pub ts: u64,
    /// The sender's name.
    pub from: String,
    /// The recipient's name (the client's own).
    pub to: String,
    /// The message, as sent.
    pub text: String,
}

/// Users entered a room. A list, so that a server may announce many arrivals in one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The room.
    pub room: String,
    /// Who entered it.
    pub users: Vec<String>,
}

/// Users left a room, all for the same reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Departure {
    /// The room.
    pub room: String,
    /// Who left it.
    pub users: Vec<String>,
    /// Why they left.
    pub reason: PartReason,
}

/// A large room's size after arrivals and departures, announced without names: naming every
/// arrival to everyone would cost N² names when N people arrive together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The room.
    pub room: String,
    /// How many are in it now.
    pub count: usize,
}

/// Why a user left a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartReason {
    /// Left this room and is still online.
    Part,
    /// Signed off with `quit`.
    Quit,
    /// The connection closed or broke without a `quit` (a killed client, a reset).
    Lost,
    /// The server heard nothing from the client for the keepalive timeout.
    Timeout,
    /// The client fell too far behind reading and was disconnected.
    TooSlow,
    /// The client broke the protocol and was disconnected.
    ProtocolError,
    /// The client sent requests too fast for too long and was disconnected.
    Flooding,
    /// A reason this build does not know (sent by a newer server).
    #[serde(other)]
    Other,
}

/// The server's last word on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bye {
    /// Why the connection is closing; `shutdown` when the server stops.
    pub code: ErrorCode,
    /// The same, for a person.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_the_documented_shape() {
        let event = Event::Part(Departure {
            room: "lobby".into(),
            users: vec!["bob".into()],
            reason: PartReason::TooSlow,
        });
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"type":"part","room":"lobby","users":["bob"],"reason":"too_slow"}"#
        );
        let bye = Event::Bye(Bye {
            code: ErrorCode::Shutdown,
            message: "The server is shutting down.".into(),
        });
        assert_eq!(
            serde_json::to_string(&bye).unwrap(),
            r#"{"type":"bye","code":"shutdown","message":"The server is shutting down."}"#
        );
    }
}
