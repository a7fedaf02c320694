//! A session's outgoing queue: bounded in bytes, and never blocking whoever pushes into it.
//!
//! The hub pushes broadcast frames while holding its lock, so a push must not wait on the
//! recipient. Instead the queue counts the bytes it holds; a push that would take it past the
//! limit marks the session as too slow, which ends it, and is dropped. Memory per session is
//! therefore bounded by the limit whatever the peer does, and nobody else is slowed down.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Creates a queue that holds at most `limit` bytes.
pub(crate) fn channel(limit: usize) -> (Outbox, OutboxReader) {
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        queued: AtomicUsize::new(0),
        limit,
        closed: AtomicBool::new(false),
        last: Mutex::new(None),
        overflowed: CancellationToken::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        OutboxReader { rx, shared },
    )
}

struct Shared {
    /// Bytes pushed and not yet written to the socket.
    queued: AtomicUsize,
    limit: usize,
    /// Set once the last frame (a `bye`) is in: nothing may follow it.
    closed: AtomicBool,
    /// The last frame, kept apart from the queue so that it is still delivered when the
    /// queue's backlog is thrown away.
    last: Mutex<Option<Bytes>>,
    /// Cancelled when a push found the queue full.
    overflowed: CancellationToken,
}

/// The pushing end; cheap to clone, one clone per room the session is in.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Bytes>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues `frame` unless the queue is full or closed. A full queue marks the session as too
    /// slow; the caller need not react, the session itself ends.
    pub(crate) fn push(&self, frame: Bytes) {
        if self.shared.closed.load(Ordering::Acquire) || self.shared.overflowed.is_cancelled() {
            return;
        }
        let len = frame.len();
        let queued = self.shared.queued.fetch_add(len, Ordering::AcqRel) + len;
        if queued > self.shared.limit {
            self.shared.queued.fetch_sub(len, Ordering::AcqRel);
            self.shared.overflowed.cancel();
            return;
        }
        // A send fails only when the writer is gone, and then the session is ending anyway.
        let _ = self.tx.send(frame);
    }

    /// Sets `frame` to be written after everything queued, whatever the limit; later pushes
    /// are dropped.
    pub(crate) fn push_last(&self, frame: Bytes) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            *self.shared.last.lock().unwrap() = Some(frame);
        }
    }

    /// Resolves once a push has found the queue full.
    pub(crate) fn overflowed(&self) -> WaitForCancellationFuture<'_> {
        self.shared.overflowed.cancelled()
    }
}

/// The writer's end.
pub(crate) struct OutboxReader {
    rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
}

impl OutboxReader {
    /// Waits for frames and moves up to `max` of them into `batch`; 0 means every [`Outbox`]
    /// is gone and the queue is drained.
    pub(crate) async fn recv_many(&mut self, batch: &mut Vec<Bytes>, max: usize) -> usize {
        self.rx.recv_many(batch, max).await
    }

    /// Records that `bytes` left the queue (written, or thrown away).
    pub(crate) fn release(&self, bytes: usize) {
        self.shared.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Whether the queue overflowed: its backlog is then worth nothing but the last frame.
    pub(crate) fn overflowed(&self) -> bool {
        self.shared.overflowed.is_cancelled()
    }

    /// The frame set by [`Outbox::push_last`], once every [`Outbox`] is gone.
    pub(crate) fn take_last(&self) -> Option<Bytes> {
        self.shared.last.lock().unwrap().take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_drops_and_signals() {
        let (outbox, mut reader) = channel(10);
        outbox.push(Bytes::from_static(b"123456"));
        outbox.push(Bytes::from_static(b"7890"));
        assert!(!outbox.shared.overflowed.is_cancelled());
        outbox.push(Bytes::from_static(b"x"));
        assert!(outbox.shared.overflowed.is_cancelled());
        outbox.push(Bytes::from_static(b"y"));
        drop(outbox);
        let mut batch = Vec::new();
        assert_eq!(reader.recv_many(&mut batch, 10).await, 2);
        assert_eq!(reader.recv_many(&mut batch, 10).await, 0);
    }

    #[tokio::test]
    async fn nothing_follows_the_last_frame() {
        let (outbox, mut reader) = channel(4);
        outbox.push(Bytes::from_static(b"ab"));
        outbox.push_last(Bytes::from_static(b"bye, longer than the limit"));
        outbox.push(Bytes::from_static(b"c"));
        drop(outbox);
        let mut batch = Vec::new();
        while reader.recv_many(&mut batch, 10).await > 0 {}
        assert_eq!(batch, [Bytes::from_static(b"ab")]);
        assert_eq!(&reader.take_last().unwrap()[..3], b"bye");
    }

    #[tokio::test]
    async fn release_makes_room_again() {
        let (outbox, mut reader) = channel(4);
        outbox.push(Bytes::from_static(b"abcd"));
        let mut batch = Vec::new();
        reader.recv_many(&mut batch, 10).await;
        reader.release(4);
        outbox.push(Bytes::from_static(b"efgh"));
        assert!(!outbox.shared.overflowed.is_cancelled());
    }
}
