//! A connection's receiving side: reading into a buffer that exists only while it is needed,
//! decoding commands and executing them.

use std::fmt::Write as _;
use std::io;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::tcp::OwnedReadHalf;

use crate::hub::{Hub, Peer};
use crate::resp::{Command, KEPT_ARGS, MAX_COMMAND, parse, printable, put_bulk, put_error};

/// Bytes read per system call; the buffer exists only while a connection is reading.
const READ_CHUNK: usize = 16 * 1024;
/// Most channels one connection may subscribe to.
const MAX_CHANNELS: usize = 1024;

/// A connection's receiving side: its read buffer, its channels, and the commands.
pub(crate) struct Conn {
    hub: Arc<Hub>,
    pub(crate) peer: Arc<Peer>,
    channels: Vec<Bytes>,
    /// Only while part of a command waits for the rest: idle connections hold no buffer.
    buf: Option<Vec<u8>>,
}

impl Conn {
    pub(crate) fn new(hub: Arc<Hub>, peer: Arc<Peer>) -> Self {
        Self {
            hub,
            peer,
            channels: Vec::new(),
            buf: None,
        }
    }

    /// Reads what the socket has and executes every complete command; false once the
    /// connection is to end.
    pub(crate) fn on_readable(&mut self, read: &OwnedReadHalf) -> io::Result<bool> {
        let mut buf = self.buf.take().unwrap_or_default();
        buf.reserve(READ_CHUNK);
        match read.try_read_buf(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                self.buf = Some(buf).filter(|b| !b.is_empty());
                return Ok(true);
            }
            Err(err) => return Err(err),
        }
        // Replies to one read go out together, in one write, as Redis does.
        let mut out = BytesMut::new();
        let mut used = 0;
        let mut open = true;
        loop {
            match parse(&buf[used..]) {
                Ok(Some((command, len))) => {
                    used += len;
                    self.execute(&command, &mut out);
                }
                Ok(None) if buf.len() - used > MAX_COMMAND => {
                    put_error(&mut out, "Protocol error: command too long");
                    open = false;
                    break;
                }
                Ok(None) => break,
                Err(why) => {
                    put_error(&mut out, &format!("Protocol error: {why}"));
                    open = false;
                    break;
                }
            }
        }
        if !out.is_empty() {
            self.peer.send(out.freeze());
        }
        buf.drain(..used);
        self.buf = Some(buf).filter(|b| !b.is_empty());
        Ok(open)
    }

    fn execute(&mut self, command: &Command<'_>, out: &mut BytesMut) {
        let Some(name) = command.arg(0) else {
            return; // an empty line or `*0`: Redis ignores it too
        };
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if is("ping") && command.count <= 2 {
            let arg = command.arg(1);
            if !self.channels.is_empty() {
                out.put_slice(b"*2\r\n$4\r\npong\r\n");
                put_bulk(out, arg.unwrap_or_default());
            } else if let Some(arg) = arg {
                put_bulk(out, arg);
            } else {
                out.put_slice(b"+PONG\r\n");
            }
        } else if is("subscribe") && (2..=KEPT_ARGS).contains(&command.count) {
            for channel in &command.args[1..command.count] {
                let new = !self.channels.iter().any(|c| c == channel);
                if new && self.channels.len() == MAX_CHANNELS {
                    put_error(out, "too many channels on one connection");
                    continue;
                }
                if new {
                    self.channels.push(Bytes::copy_from_slice(channel));
                }
                out.put_slice(b"*3\r\n$9\r\nsubscribe\r\n");
                put_bulk(out, channel);
                let _ = write!(out, ":{}\r\n", self.channels.len());
                if new {
                    // The confirmation must reach the socket before the first message.
                    self.peer.send(out.split().freeze());
                    self.hub
                        .subscribe(Bytes::copy_from_slice(channel), &self.peer);
                }
            }
        } else if is("subscribe") && command.count > KEPT_ARGS {
            put_error(out, "the floor takes at most 7 channels per SUBSCRIBE");
        } else if !self.channels.is_empty() {
            let name = printable(name);
            put_error(
                out,
                &format!(
                    "Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                ),
            );
        } else if is("publish") && command.count == 3 {
            let (channel, message) = (command.args[1], command.args[2]);
            let _ = write!(out, ":{}\r\n", self.hub.publish(channel, message));
        } else if is("ping") || is("subscribe") || is("publish") {
            let name = printable(name);
            put_error(
                out,
                &format!("wrong number of arguments for '{name}' command"),
            );
        } else {
            put_error(out, &format!("unknown command '{}'", printable(name)));
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        for channel in self.channels.drain(..) {
            self.hub.unsubscribe(&channel, &self.peer);
        }
        self.peer.close();
    }
}
