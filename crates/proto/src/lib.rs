//! Parley's wire protocol, with no I/O: the frame codec, the JSON control messages and the limits.
//!
//! A connection carries length-prefixed frames ([`frame`]). Control frames hold one JSON object:
//! a client sends requests ([`request`]), each with an `id`; the server answers each with exactly
//! one reply ([`reply`]) and, separately, pushes events ([`event`]). Everything here works on
//! bytes and values only, so it can be unit-tested and fuzzed without sockets or clocks, and the
//! same message model can travel over a WebSocket. `docs/protocol.md` is the prose contract.

pub mod error;
pub mod event;
pub mod fingerprint;
pub mod frame;
pub mod limits;
pub mod names;
pub mod paths;
pub mod reply;
pub mod request;

pub use error::ErrorCode;
pub use event::{
    Bye, Departure, Event, PartReason, Presence, Private, RoomMessage, Shared, TransferEnd,
    TransferStatus,
};
pub use frame::{
    Frame, FrameCodec, FrameError, FrameKind, FrameRef, control_frame, put_control_frame,
};
pub use reply::{Reply, ServerMessage};
pub use request::{Call, Request, RequestBody, RequestError};

/// The protocol versions this build speaks, newest last. A client offers its list in `hello`;
/// the server picks the highest version both know.
pub const SUPPORTED_VERSIONS: &[u16] = &[1];

/// The room every client is placed in when it signs in; "broadcast" means this room by default.
pub const DEFAULT_ROOM: &str = "lobby";
