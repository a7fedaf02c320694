//! A Parley client as a library: an async [`Client`] that signs in, sends typed requests and
//! hands out the server's events; the parser for the commands people type ([`command`]); and
//! safe rendering of what other people wrote ([`display`]).

pub mod client;
pub mod command;
pub mod display;
pub mod download;
pub mod tls;
pub mod upload;

pub use client::{
    Chunk, Client, ClientEvent, Closed, ConnectError, ConnectOptions, Events, Incoming, Outgoing,
    RequestError, Secure, SecureError, UploadStopped,
};
pub use command::{Command, ParseError};
