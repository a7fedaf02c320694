//! Error codes: the machine-readable half of every error reply and `bye` event.
//!
//! Each code pairs with a sentence chosen by the server at the moment of the error (naming the
//! user, the limit, ...), so a person can act on it; programs branch on the code alone.

use serde::{Deserialize, Serialize};

/// Why a request failed or why the server is closing the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client offered no protocol version the server speaks. Closes the connection.
    UnsupportedVersion,
    /// A request other than `hello` came before signing in. Closes the connection.
    HandshakeRequired,
    /// The client did not sign in within the handshake timeout. Closes the connection.
    HandshakeTimeout,
    /// A second `hello` on a connection that is already signed in.
    AlreadySignedIn,
    /// The user name breaks the naming rules. Closes the connection.
    InvalidName,
    /// Someone online already uses this name (compared without regard to case). Closes the connection.
    NameTaken,
    /// The server holds its maximum number of connections. Closes the connection.
    ServerFull,
    /// The client's address holds its maximum number of connections, or opened new ones
    /// faster than its allowance. Closes the connection.
    TooManyConnections,
    /// A request's JSON is not an object of the expected shape for its type.
    BadRequest,
    /// The request's `type` is not one this server knows.
    UnknownRequest,
    /// The user named in a request is not online.
    NotFound,
    /// The room name breaks the naming rules, or no such room exists.
    InvalidRoom,
    /// The request names a room the client is not in.
    NotInRoom,
    /// The client is already in the most rooms allowed.
    TooManyRooms,
    /// The message text is empty or only whitespace.
    EmptyText,
    /// The message text is longer than the limit.
    TextTooLong,
    /// A path is not allowed: it would leave the shared folder, or is malformed.
    BadPath,
    /// No file or folder of that name is shared (or it is not of the kind asked for).
    NoSuchFile,
    /// The transfer id is in use, or names no transfer of this connection.
    BadTransfer,
    /// The connection already runs the most transfers allowed at once.
    TooManyTransfers,
    /// An upload is larger than the server accepts.
    FileTooLarge,
    /// Accepting the upload would take the server's free disk space below its reserve.
    NoSpace,
    /// An upload's data does not match its size or hash; it was discarded.
    ChecksumMismatch,
    /// The uploads in progress of this connection, or of its address, would hold more disk
    /// space than the server lets one connection or one address hold at once.
    UploadQuota,
    /// An upload made too little progress for the server's upload idle timeout; it was
    /// cancelled and its data discarded.
    UploadStalled,
    /// The server could not store or read messages.
    StorageFailed,
    /// The name is registered and the password is missing or wrong. Closes the connection.
    AuthFailed,
    /// The server accepts registered names only. Closes the connection.
    AccountRequired,
    /// The name is registered already.
    AlreadyRegistered,
    /// The password is too short or too long.
    WeakPassword,
    /// A frame could not be decoded. Closes the connection.
    BadFrame,
    /// A frame was longer than the limit. Closes the connection.
    FrameTooLarge,
    /// The client fell too far behind reading what the server sent. Closes the connection.
    TooSlow,
    /// Nothing was heard from the client for the keepalive timeout. Closes the connection.
    Timeout,
    /// The server is shutting down. Closes the connection.
    Shutdown,
    /// The client went on sending requests faster than the server's flood control allows,
    /// past the delay it grants. Closes the connection.
    Flooding,
    /// The recipient's box of messages kept while offline is full, or holds as much from this
    /// sender as one sender may leave there.
    MailboxFull,
    /// A code this build does not know (sent by a newer peer).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnsupportedVersion => "unsupported_version",
            Self::HandshakeRequired => "handshake_required",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::AlreadySignedIn => "already_signed_in",
            Self::InvalidName => "invalid_name",
            Self::NameTaken => "name_taken",
            Self::ServerFull => "server_full",
            Self::TooManyConnections => "too_many_connections",
            Self::BadRequest => "bad_request",
            Self::UnknownRequest => "unknown_request",
            Self::NotFound => "not_found",
            Self::InvalidRoom => "invalid_room",
            Self::NotInRoom => "not_in_room",
            Self::TooManyRooms => "too_many_rooms",
            Self::EmptyText => "empty_text",
            Self::TextTooLong => "text_too_long",
            Self::BadPath => "bad_path",
            Self::NoSuchFile => "no_such_file",
            Self::BadTransfer => "bad_transfer",
            Self::TooManyTransfers => "too_many_transfers",
            Self::FileTooLarge => "file_too_large",
            Self::NoSpace => "no_space",
            Self::ChecksumMismatch => "checksum_mismatch",
            Self::UploadQuota => "upload_quota",
            Self::UploadStalled => "upload_stalled",
            Self::StorageFailed => "storage_failed",
            Self::AuthFailed => "auth_failed",
            Self::AccountRequired => "account_required",
            Self::AlreadyRegistered => "already_registered",
            Self::WeakPassword => "weak_password",
            Self::BadFrame => "bad_frame",
            Self::FrameTooLarge => "frame_too_large",
            Self::TooSlow => "too_slow",
            Self::Timeout => "timeout",
            Self::Shutdown => "shutdown",
            Self::Flooding => "flooding",
            Self::MailboxFull => "mailbox_full",
            Self::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_as_str() {
        use ErrorCode::*;
        for code in [
            UnsupportedVersion,
            HandshakeRequired,
            HandshakeTimeout,
            AlreadySignedIn,
            InvalidName,
            NameTaken,
            ServerFull,
            TooManyConnections,
            BadRequest,
            UnknownRequest,
            NotFound,
            InvalidRoom,
            NotInRoom,
            TooManyRooms,
            EmptyText,
            TextTooLong,
            BadPath,
            NoSuchFile,
            BadTransfer,
            TooManyTransfers,
            FileTooLarge,
            NoSpace,
            ChecksumMismatch,
            UploadQuota,
            UploadStalled,
            StorageFailed,
            AuthFailed,
            AccountRequired,
            AlreadyRegistered,
            WeakPassword,
            BadFrame,
            FrameTooLarge,
            TooSlow,
            Timeout,
            Shutdown,
            Flooding,
            MailboxFull,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert_eq!(serde_json::from_str::<ErrorCode>(&json).unwrap(), code);
        }
        assert_eq!(
            serde_json::from_str::<ErrorCode>("\"from_the_future\"").unwrap(),
            Unknown
        );
    }
}
