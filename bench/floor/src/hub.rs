//! Delivery: channels and their subscribers, and each connection's outgoing queue.
//!
//! A publisher hands every subscriber the same `Bytes` and never waits on any of them. Each
//! connection has a `VecDeque` behind a std mutex rather than a channel: an empty `VecDeque`
//! holds no memory, a channel keeps its first block of slots. In direct mode the queue's lock
//! also decides who may write into the socket, so that bytes never change order.

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

use crate::resp::put_bulk;

/// Unwritten bytes a connection may have queued before it is cut off as too slow.
const MAX_QUEUED: usize = 64 << 20;
/// Most slices per vectored write: Linux's IOV_MAX.
pub(crate) const MAX_IOV: usize = 1024;

/// Channels and their subscribers.
#[derive(Default)]
pub(crate) struct Hub {
    /// A std lock, never held across an await, nor while writing: a publisher clones the
    /// channel's list (one reference count) and delivers outside. The list is copied only when
    /// it changes while a publisher holds it (`Arc::make_mut`).
    channels: Mutex<HashMap<Bytes, Arc<Vec<Arc<Peer>>>>>,
}

impl Hub {
    pub(crate) fn subscribe(&self, channel: Bytes, peer: &Arc<Peer>) {
        let mut channels = self.channels.lock().unwrap();
        Arc::make_mut(channels.entry(channel).or_default()).push(peer.clone());
    }

    pub(crate) fn unsubscribe(&self, channel: &[u8], peer: &Arc<Peer>) {
        let mut channels = self.channels.lock().unwrap();
        let Some(list) = channels.get_mut(channel) else {
            return;
        };
        let list = Arc::make_mut(list);
        if let Some(at) = list.iter().position(|p| Arc::ptr_eq(p, peer)) {
            list.swap_remove(at);
        }
        if list.is_empty() {
            channels.remove(channel);
        }
    }

    /// Delivers `message` to every subscriber of `channel`, encoded once; returns their number.
    pub(crate) fn publish(&self, channel: &[u8], message: &[u8]) -> usize {
        let Some(subscribers) = self.channels.lock().unwrap().get(channel).cloned() else {
            return 0;
        };
        let mut frame = BytesMut::with_capacity(channel.len() + message.len() + 40);
        frame.put_slice(b"*3\r\n$7\r\nmessage\r\n");
        put_bulk(&mut frame, channel);
        put_bulk(&mut frame, message);
        let frame = frame.freeze();
        for peer in subscribers.iter() {
            peer.send(frame.clone());
        }
        subscribers.len()
    }
}

/// A connection's sending side, shared by the hub.
pub(crate) struct Peer {
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue gets its first frame or stops being open.
    ready: Notify,
    /// Direct mode: the socket, so that a publisher can write into it.
    socket: Option<OwnedWriteHalf>,
}

#[derive(Default)]
struct Queue {
    /// An empty `VecDeque` holds no memory: idle connections cost nothing here.
    frames: VecDeque<Bytes>,
    /// Bytes in `frames` (not those a writer has taken and is writing).
    bytes: usize,
    state: State,
}

#[derive(Default, PartialEq, Eq)]
enum State {
    #[default]
    Open,
    /// The reader has ended: write what is queued, then stop.
    Closing,
    /// Too slow, or its socket failed: stop now.
    Cut,
}

/// What a writer is to do next.
pub(crate) enum Take {
    Frames(VecDeque<Bytes>),
    Wait,
    Stop,
}

impl Peer {
    pub(crate) fn new(socket: Option<OwnedWriteHalf>) -> Arc<Self> {
        Arc::new(Self {
            queue: Mutex::default(),
            ready: Notify::new(),
            socket,
        })
    }

    /// Hands `frame` to this connection without ever waiting: publishers call it for every
    /// subscriber. The writer is woken only when the queue was empty, so a burst costs one
    /// wake-up; in direct mode an empty queue means "write it now", and nobody is woken
    /// unless the kernel did not take it all.
    pub(crate) fn send(&self, mut frame: Bytes) {
        let mut queue = self.queue.lock().unwrap();
        if queue.state != State::Open {
            return;
        }
        let was_empty = queue.frames.is_empty();
        if let (true, Some(socket)) = (was_empty, &self.socket) {
            match socket.try_write(&frame) {
                Ok(written) if written == frame.len() => return,
                Ok(written) => frame.advance(written),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => queue.state = State::Cut,
            }
        }
        if queue.state == State::Open && queue.bytes + frame.len() > MAX_QUEUED {
            queue.state = State::Cut;
        }
        if queue.state == State::Cut {
            *queue = Queue {
                state: State::Cut,
                ..Queue::default()
            };
        } else {
            queue.bytes += frame.len();
            queue.frames.push_back(frame);
        }
        let wake = was_empty || queue.state == State::Cut;
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
    }

    /// Takes everything queued, leaving an empty (unallocated) queue.
    pub(crate) fn take(&self) -> Take {
        let mut queue = self.queue.lock().unwrap();
        match queue.state {
            State::Cut => Take::Stop,
            _ if !queue.frames.is_empty() => {
                queue.bytes = 0;
                Take::Frames(std::mem::take(&mut queue.frames))
            }
            State::Closing => Take::Stop,
            State::Open => Take::Wait,
        }
    }

    /// Resolves when the queue may have something new, or stopped being open.
    pub(crate) fn ready(&self) -> Notified<'_> {
        self.ready.notified()
    }

    /// Writes the queued remainder as the socket allows; false once the connection is to end.
    pub(crate) async fn flush_direct(&self) -> io::Result<bool> {
        let Some(socket) = &self.socket else {
            return Ok(false);
        };
        loop {
            {
                // Writing under the lock keeps the order: a publisher writes only into an empty
                // queue, and `try_write_vectored` never waits.
                let mut queue = self.queue.lock().unwrap();
                if queue.state == State::Cut
                    || (queue.frames.is_empty() && queue.state == State::Closing)
                {
                    return Ok(false);
                }
                if queue.frames.is_empty() {
                    return Ok(true);
                }
                let result = {
                    let slices: Vec<IoSlice<'_>> = queue
                        .frames
                        .iter()
                        .take(MAX_IOV)
                        .map(|f| IoSlice::new(f))
                        .collect();
                    socket.try_write_vectored(&slices)
                };
                match result {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(written) => {
                        queue.bytes -= written;
                        advance(&mut queue.frames, written);
                        continue;
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Err(err),
                }
            }
            socket.writable().await?;
        }
    }

    pub(crate) fn close(&self) {
        let mut queue = self.queue.lock().unwrap();
        if queue.state == State::Open {
            queue.state = State::Closing;
        }
        drop(queue);
        self.ready.notify_one();
    }
}

/// Drops `written` bytes from the front of `frames`.
pub(crate) fn advance(frames: &mut VecDeque<Bytes>, mut written: usize) {
    while let Some(front) = frames.front_mut() {
        if written < front.len() {
            front.advance(written);
            return;
        }
        written -= front.len();
        frames.pop_front();
    }
}
