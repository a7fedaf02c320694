//! Replies, and the decoding of everything a server sends.
//!
//! A reply is `{"type":"ok","id":N,"result":{...}}` or
//! `{"type":"error","id":N,"code":"...","message":"..."}`; every other `type` is an [`Event`].

use serde::{Deserialize, Serialize};

use crate::event::{
    Backlog, Bye, Departure, Event, Members, Presence, Private, RoomMessage, Shared, TransferEnd,
    UploadProgress,
};
use crate::frame::control_frame;
use crate::{ErrorCode, request::Call};

/// The answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// The request succeeded; `result`'s shape depends on the request kind (see [`Call`]).
    Ok {
        /// The request's id.
        id: u64,
        /// The request kind's result, still as JSON.
        result: serde_json::Value,
    },
    /// The request failed.
    Error {
        /// The request's id.
        id: u64,
        /// Why, for programs.
        code: ErrorCode,
        /// Why, for people.
        message: String,
    },
}

impl Reply {
    /// The id of the request this answers.
    pub fn id(&self) -> u64 {
        match self {
            Reply::Ok { id, .. } | Reply::Error { id, .. } => *id,
        }
    }
}

/// Anything a server sends in a control frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// The answer to a request.
    Reply(Reply),
    /// Something that happened.
    Event(Event),
    /// A message type this build does not know; clients ignore it, for forward compatibility.
    Unknown,
}

impl ServerMessage {
    /// Parses one control frame's payload.
    pub fn decode(json: &[u8]) -> Result<ServerMessage, serde_json::Error> {
        // One flat enum so every message is parsed once, whichever class it belongs to.
        #[derive(Deserialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Wire {
            Ok {
                id: u64,
                #[serde(default)]
                result: serde_json::Value,
            },
            Error {
                id: u64,
                code: ErrorCode,
                message: String,
            },
            Message(RoomMessage),
            Private(Private),
            Join(Presence),
            Part(Departure),
            Members(Members),
            Bye(Bye),
            TransferEnd(TransferEnd),
            UploadProgress(UploadProgress),
            Shared(Shared),
            Backlog(Backlog),
            #[serde(other)]
            Unknown,
        }
        Ok(match serde_json::from_slice(json)? {
            Wire::Ok { id, result } => ServerMessage::Reply(Reply::Ok { id, result }),
            Wire::Error { id, code, message } => {
                ServerMessage::Reply(Reply::Error { id, code, message })
            }
            Wire::Message(m) => ServerMessage::Event(Event::Message(m)),
            Wire::Private(m) => ServerMessage::Event(Event::Private(m)),
            Wire::Join(m) => ServerMessage::Event(Event::Join(m)),
            Wire::Part(m) => ServerMessage::Event(Event::Part(m)),
            Wire::Members(m) => ServerMessage::Event(Event::Members(m)),
            Wire::Bye(m) => ServerMessage::Event(Event::Bye(m)),
            Wire::TransferEnd(m) => ServerMessage::Event(Event::TransferEnd(m)),
            Wire::UploadProgress(m) => ServerMessage::Event(Event::UploadProgress(m)),
            Wire::Shared(m) => ServerMessage::Event(Event::Shared(m)),
            Wire::Backlog(m) => ServerMessage::Event(Event::Backlog(m)),
            Wire::Unknown => ServerMessage::Unknown,
        })
    }
}

/// Encodes an `ok` reply to request `id` as a complete control frame.
pub fn ok_frame<C: Call>(id: u64, result: &C::Output) -> bytes::Bytes {
    #[derive(Serialize)]
    struct Ok<'a, T> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: u64,
        result: &'a T,
    }
    control_frame(&Ok {
        kind: "ok",
        id,
        result,
    })
}

/// Encodes an `error` reply to request `id` as a complete control frame.
pub fn error_frame(id: u64, code: ErrorCode, message: &str) -> bytes::Bytes {
    #[derive(Serialize)]
    struct Error<'a> {
        #[serde(rename = "type")]
        kind: &'static str,
        id: u64,
        code: ErrorCode,
        message: &'a str,
    }
    control_frame(&Error {
        kind: "error",
        id,
        code,
        message,
    })
}

/// Encodes an event as a complete control frame.
pub fn event_frame(event: &Event) -> bytes::Bytes {
    control_frame(event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{Frame, FrameCodec};
    use crate::request::{Say, Sent};
    use tokio_util::codec::Decoder;

    fn payload(frame: bytes::Bytes) -> bytes::Bytes {
        let mut src = bytes::BytesMut::from(&frame[..]);
        match FrameCodec::client().decode(&mut src).unwrap().unwrap() {
            Frame::Control(json) => json,
            other => panic!("not a control frame: {other:?}"),
        }
    }

    #[test]
    fn ok_reply_round_trips() {
        let sent = Sent {
            id: 9,
            ts: 1_700_000_000_000,
            to: "lobby".into(),
            queued: false,
        };
        let json = payload(ok_frame::<Say>(4, &sent));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"type":"ok","id":4,"result":{"id":9,"ts":1700000000000,"to":"lobby"}}"#
        );
        let ServerMessage::Reply(Reply::Ok { id, result }) = ServerMessage::decode(&json).unwrap()
        else {
            panic!("not an ok reply");
        };
        assert_eq!(id, 4);
        assert_eq!(serde_json::from_value::<Sent>(result).unwrap(), sent);
    }

    #[test]
    fn error_reply_and_events_decode() {
        let json = payload(error_frame(
            5,
            ErrorCode::NotFound,
            "No user named carol is online.",
        ));
        assert_eq!(
            ServerMessage::decode(&json).unwrap(),
            ServerMessage::Reply(Reply::Error {
                id: 5,
                code: ErrorCode::NotFound,
                message: "No user named carol is online.".into()
            })
        );
        let event = Event::Join(Presence {
            room: "lobby".into(),
            users: vec!["bob".into()],
        });
        let json = payload(event_frame(&event));
        assert_eq!(
            ServerMessage::decode(&json).unwrap(),
            ServerMessage::Event(event)
        );
        assert_eq!(
            ServerMessage::decode(br#"{"type":"typing","user":"bob"}"#).unwrap(),
            ServerMessage::Unknown
        );
    }

    #[test]
    fn every_event_kind_decodes() {
        use crate::event::*;
        let samples = [
            Event::Message(RoomMessage {
                id: 1,
                ts: 2,
                room: "lobby".into(),
                from: "bob".into(),
                text: "hi".into(),
            }),
            Event::Private(Private {
                id: 1,
                ts: 2,
                from: "bob".into(),
                to: "ann".into(),
                text: "hi".into(),
            }),
            Event::Join(Presence {
                room: "lobby".into(),
                users: vec!["bob".into()],
            }),
            Event::Part(Departure {
                room: "lobby".into(),
                users: vec!["bob".into()],
                reason: PartReason::Quit,
            }),
            Event::Members(Members {
                room: "lobby".into(),
                count: 201,
            }),
            Event::Bye(Bye {
                code: ErrorCode::Shutdown,
                message: "Bye.".into(),
            }),
            Event::TransferEnd(TransferEnd {
                transfer: 1,
                status: TransferStatus::Complete,
                blake3: None,
                message: None,
                code: None,
            }),
            Event::Shared(Shared {
                user: "bob".into(),
                path: "a.txt".into(),
                size: 3,
            }),
            Event::Backlog(Backlog {
                room: "lobby".into(),
                messages: Vec::new(),
            }),
            Event::UploadProgress(UploadProgress {
                transfer: 1,
                stored: 1 << 20,
            }),
        ];
        // The match has no wildcard: a new kind fails to compile until it has a sample here.
        let mut covered = [false; 10];
        for event in samples {
            covered[match &event {
                Event::Message(_) => 0,
                Event::Private(_) => 1,
                Event::Join(_) => 2,
                Event::Part(_) => 3,
                Event::Members(_) => 4,
                Event::Bye(_) => 5,
                Event::TransferEnd(_) => 6,
                Event::Shared(_) => 7,
                Event::Backlog(_) => 8,
                Event::UploadProgress(_) => 9,
            }] = true;
            let json = payload(event_frame(&event));
            assert_eq!(
                ServerMessage::decode(&json).unwrap(),
                ServerMessage::Event(event)
            );
        }
        assert!(covered.iter().all(|&c| c));
    }
}
