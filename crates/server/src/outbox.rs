//! A session's outgoing queue: bounded in bytes, and never blocking whoever pushes into it.
//!
//! The hub pushes broadcast frames while holding its lock, so a push must not wait on the
//! recipient. Instead the queue counts the bytes it holds; a push that would take it past the
//! limit marks the session as too slow, which ends it, and is dropped. Memory per session is
//! therefore bounded by the limit whatever the peer does, and nobody else is slowed down.
//!
//! The queue is a `VecDeque` behind a mutex rather than a channel: a channel allocates its
//! first block of slots up front and keeps it, a kilobyte per connection even when idle, while
//! an empty `VecDeque` holds nothing. A push wakes the writer only when the queue was empty, so
//! a burst costs one wake-up. File data has its own small channel, the lane, made by the first
//! download: most connections never download.
//!
//! A sender's burst of messages can go further and wake each recipient's writer once for the
//! whole burst: [`Outbox::push_deferred`] leaves the wake-up in a [`Wakes`] that the sending
//! session fires when it has read all that had arrived. Woken per message, writers ran while
//! the burst was still being read and wrote a few frames each; woken per burst, each writes
//! the burst in one system call, as Redis does by writing replies only at the end of its event
//! loop's turn.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc};

use crate::transfer::Data;

/// What all the queues of a server may hold, together and each; shared by every session.
///
/// Each queue is bounded by `per_session`, and all together by `total`: many slow readers,
/// each within its own bound, could otherwise hold gigabytes between them. Once the total is
/// reached, a push to a queue holding more than [`FAIR_SHARE`] ends that session as too slow,
/// while a queue below it still takes its frames: a client that keeps up holds almost
/// nothing, and is never the one cut off. So the total may be passed by at most
/// [`FAIR_SHARE`] per session.
pub(crate) struct Budget {
    per_session: usize,
    total: usize,
    /// Bytes queued in all queues, not yet written.
    queued: AtomicUsize,
    /// How long a writer may wait for its socket to accept anything, with frames waiting,
    /// before the session ends as too slow.
    stall: Duration,
}

/// What a queue may hold whatever the total (see [`Budget`]): a quarter of the default
/// per-session limit. A client that keeps up lags by a few kilobytes; one that is a quarter of
/// a megabyte behind is far behind, and a burst pipelined at full speed in a test (400 KB)
/// had a reading client in the same process 64 KiB behind.
pub(crate) const FAIR_SHARE: usize = 256 * 1024;

impl Budget {
    /// Queues of at most `per_session` bytes each and `total` together, whose writers give up
    /// on a socket that accepts nothing for `stall`.
    pub(crate) fn new(per_session: usize, total: usize, stall: Duration) -> Arc<Self> {
        Arc::new(Self {
            per_session,
            total,
            queued: AtomicUsize::new(0),
            stall,
        })
    }

    /// Bytes queued in all queues now.
    #[cfg(test)]
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Creates a session's queue within this budget.
    pub(crate) fn channel(self: &Arc<Self>) -> (Outbox, OutboxReader) {
        make(self.clone())
    }
}

/// Creates a queue that holds at most `limit` bytes, on a budget of its own.
#[cfg(test)]
pub(crate) fn channel(limit: usize) -> (Outbox, OutboxReader) {
    make(Budget::new(limit, usize::MAX, Duration::from_secs(3600)))
}

fn make(budget: Arc<Budget>) -> (Outbox, OutboxReader) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        ready: Notify::new(),
        senders: AtomicUsize::new(1),
        budget,
        overflowed: AtomicBool::new(false),
        write_failed: AtomicBool::new(false),
        shutting_down: AtomicBool::new(false),
        alarm_at: AtomicU64::new(0),
        alarm_rang: AtomicBool::new(false),
        written: AtomicBool::new(false),
        halt: AtomicWaker::new(),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReader { shared },
    )
}

/// What a push and the writer share, all behind one lock: a broadcast pushes into every
/// member's queue, and each cache line touched per recipient shows in fan-out, so the byte
/// count and the flags live beside the frames rather than in atomics of their own.
#[derive(Default)]
struct Queue {
    frames: VecDeque<Bytes>,
    /// Bytes pushed and not yet written to the socket.
    queued: usize,
    /// Set once the last frame (a `bye`) is in, or the queue overflowed: pushes are dropped.
    shut: bool,
    /// Set once the last frame is in: nothing may follow it, not even another last frame.
    closed: bool,
    /// Bytes still to be written before the session is told, by [`Signal::Written`], that
    /// what it had queued when it asked is written (see [`Outbox::signal_when_written`]).
    awaited: usize,
    /// The last frame, kept apart from the frames so that it is still delivered when the
    /// backlog is thrown away. Boxed: set once per connection, at its end, it would otherwise
    /// make every connection's shared state a size class larger (224 bytes against 192).
    last: Option<Box<Bytes>>,
    /// The receiving end of the data lane, until the writer takes it.
    lane: Option<mpsc::Receiver<Data>>,
}

impl Shared {
    /// Marks the session as too slow and wakes it: it ends.
    fn overflow(&self) {
        self.overflowed.store(true, Ordering::Release);
        self.halt.wake();
    }
}

/// What is still queued when the session and its writer are both gone leaves the budget.
impl Drop for Shared {
    fn drop(&mut self) {
        let queued = self.queue.get_mut().map_or(0, |queue| queue.queued);
        self.budget.queued.fetch_sub(queued, Ordering::Relaxed);
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the writer: the queue got its first frame, a lane was opened, or the last
    /// [`Outbox`] is gone.
    ready: Notify,
    /// Live [`Outbox`] handles; the writer finishes once none is left and the queue is empty.
    senders: AtomicUsize,
    /// What the queue may hold, and all queues together.
    budget: Arc<Budget>,
    /// Set when a push found the queue full.
    overflowed: AtomicBool,
    /// Set when the writer could not write to the socket.
    write_failed: AtomicBool,
    /// Set when the server is shutting down.
    shutting_down: AtomicBool,
    /// When the session's alarm is set for, in milliseconds of the server's clock; 0 when it
    /// is not set. The alarms of all sessions are looked at by one task (see [`Halter::ring`]):
    /// a timer of its own was 112 bytes of every idle connection's task.
    alarm_at: AtomicU64,
    /// Set when the alarm rang, until the session sees it.
    alarm_rang: AtomicBool,
    /// Set when what the session awaited is written, until it sees it.
    written: AtomicBool,
    /// Wakes the session once any of the four flags is set. Only the session waits here, so
    /// the waker it left is all there is to keep: waiting holds no room in its task, where a
    /// `Notify`'s waiter was 64 bytes of every connection's, and a wake-up takes no lock. It
    /// lives inline, where a cancellation token would be one more allocation per connection;
    /// and each session waits on its own, where waiting on the server's shutdown token made
    /// every session's every wake-up take that token's one lock.
    halt: AtomicWaker,
}

/// What the session is woken for: its alarm rang, or it must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// The time the session set its alarm for has come.
    Alarm,
    /// The session must end.
    Halt(Halt),
    /// What was queued when the session called [`Outbox::signal_when_written`] is written.
    Written,
}

/// Why a session's queue can take no more: the session must end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Halt {
    /// The server is shutting down.
    Shutdown,
    /// The client reads too slowly: a push found the queue full.
    TooSlow,
    /// The socket could not be written: the peer is gone.
    WriteFailed,
}

/// The pushing end; cheap to clone, one clone per room the session is in.
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl Outbox {
    /// Queues `frame` unless the queue is full or closed. A full queue marks the session as too
    /// slow; the caller need not react, the session itself ends.
    pub(crate) fn push(&self, frame: Bytes) {
        // A writer that has not yet taken the earlier frames needs no second wake-up.
        if self.enqueue(frame) {
            self.shared.ready.notify_one();
        }
    }

    /// Queues `frame` like [`Outbox::push`], but leaves waking the writer to `wakes`.
    pub(crate) fn push_deferred(&self, frame: Bytes, wakes: &mut Wakes) {
        wakes.pushed += 1;
        if self.enqueue(frame) {
            wakes.writers.push(self.shared.clone());
        }
    }

    /// Queues `frame` unless the queue is full or closed; true if it is the only frame queued,
    /// so the writer may be waiting for it.
    fn enqueue(&self, frame: Bytes) -> bool {
        let mut queue = self.shared.queue.lock().unwrap();
        if queue.shut {
            return false;
        }
        let budget = &self.shared.budget;
        let len = frame.len();
        let held = queue.queued + len;
        let over = held > budget.per_session || {
            let total = budget.queued.fetch_add(len, Ordering::Relaxed) + len;
            let over_total = total > budget.total && held > FAIR_SHARE;
            if over_total {
                budget.queued.fetch_sub(len, Ordering::Relaxed);
            }
            over_total
        };
        if over {
            queue.shut = true;
            drop(queue);
            self.shared.overflow();
            return false;
        }
        queue.queued += len;
        queue.frames.push_back(frame);
        queue.frames.len() == 1
    }

    /// Sets `frame` to be written after everything queued, whatever the limit; later pushes
    /// are dropped, and so is a second last frame.
    pub(crate) fn push_last(&self, frame: Bytes) {
        let mut queue = self.shared.queue.lock().unwrap();
        if !queue.closed {
            queue.closed = true;
            queue.last = Some(Box::new(frame));
        }
        queue.shut = true;
    }

    /// Resolves once a push has found the queue full or the writer failed, so that the
    /// session must end for the reason given, or once the session's alarm has rung. Only the
    /// session waits here, and its wait holds nothing but this handle.
    pub(crate) fn signalled(&self) -> impl Future<Output = Signal> + '_ {
        poll_fn(|cx| {
            if let Some(signal) = self.signal() {
                return Poll::Ready(signal);
            }
            self.shared.halt.register(cx.waker());
            // A flag set before the waker was left woke nobody: look again.
            self.signal().map_or(Poll::Pending, Poll::Ready)
        })
    }

    /// The signal waiting for the session, if any; a shutdown first, an alarm last.
    fn signal(&self) -> Option<Signal> {
        let shared = &self.shared;
        if shared.shutting_down.load(Ordering::Acquire) {
            return Some(Signal::Halt(Halt::Shutdown));
        }
        if shared.write_failed.load(Ordering::Acquire) {
            return Some(Signal::Halt(Halt::WriteFailed));
        }
        if shared.overflowed.load(Ordering::Acquire) {
            return Some(Signal::Halt(Halt::TooSlow));
        }
        // Looked at before it is changed: this runs on every turn of the session's loop, and
        // a write would take the cache line from those pushing into the queue.
        if shared.alarm_rang.load(Ordering::Acquire)
            && shared.alarm_rang.swap(false, Ordering::AcqRel)
        {
            return Some(Signal::Alarm);
        }
        (shared.written.load(Ordering::Acquire) && shared.written.swap(false, Ordering::AcqRel))
            .then_some(Signal::Written)
    }

    /// Signals [`Signal::Written`] once everything queued now has been written to the socket
    /// (at once if nothing is queued). Kept messages are sent a page at a time this way, each
    /// marked delivered only once written: the queue never holds more than a page of them.
    pub(crate) fn signal_when_written(&self) {
        let mut queue = self.shared.queue.lock().unwrap();
        queue.awaited = queue.queued;
        if queue.awaited == 0 {
            drop(queue);
            self.shared.written.store(true, Ordering::Release);
            self.shared.halt.wake();
        }
    }

    /// Sets the session's alarm for `at`, in milliseconds of the server's clock (at least 1),
    /// replacing the one set before; [`Halter::ring`] rings it.
    pub(crate) fn set_alarm(&self, at: u64) {
        self.shared.alarm_rang.store(false, Ordering::Relaxed);
        self.shared.alarm_at.store(at.max(1), Ordering::Release);
    }

    /// Moves the session's alarm to `at` if it is set for later (or not set).
    pub(crate) fn advance_alarm(&self, at: u64) {
        let at = at.max(1);
        let _ = self
            .shared
            .alarm_at
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |set| {
                (set == 0 || set > at).then_some(at)
            });
    }

    /// A handle that can halt the session for a shutdown and ring its alarm, without keeping
    /// its writer going.
    pub(crate) fn halter(&self) -> Halter {
        Halter(self.shared.clone())
    }

    /// Gives back the queue's room for frames if it is empty: called when the connection has
    /// been silent a while, so an idle connection holds none.
    pub(crate) fn shrink(&self) {
        let mut queue = self.shared.queue.lock().unwrap();
        if queue.frames.is_empty() {
            queue.frames = VecDeque::new();
        }
    }

    /// Opens the data lane, a channel of `frames` file data frames that the writer drains
    /// whenever no control frame waits; returns its sending end.
    pub(crate) fn open_lane(&self, frames: usize) -> mpsc::Sender<Data> {
        let (lane, receiver) = mpsc::channel(frames);
        self.shared.queue.lock().unwrap().lane = Some(receiver);
        self.shared.ready.notify_one();
        lane
    }
}

/// Halts a session for a shutdown, and rings its alarm: see [`Outbox::signalled`].
pub(crate) struct Halter(Arc<Shared>);

impl Halter {
    pub(crate) fn shut_down(&self) {
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.halt.wake();
    }

    /// Rings the session's alarm if it is set for `now` (milliseconds of the server's clock)
    /// or earlier; a rung alarm stays quiet until it is set again.
    pub(crate) fn ring(&self, now: u64) {
        let at = self.0.alarm_at.load(Ordering::Acquire);
        if at != 0
            && at <= now
            && self
                .0
                .alarm_at
                .compare_exchange(at, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.0.alarm_rang.store(true, Ordering::Release);
            self.0.halt.wake();
        }
    }
}

/// Writers to wake once a burst of pushes is over; any left are woken when this is dropped, so
/// no push is ever left waiting.
#[derive(Default)]
pub(crate) struct Wakes {
    writers: Vec<Arc<Shared>>,
    /// Frames pushed since the last wake: what the recipients wait on.
    pushed: usize,
}

impl Wakes {
    /// Whether no writer waits to be woken.
    pub(crate) fn is_empty(&self) -> bool {
        self.writers.is_empty()
    }

    /// How many frames were pushed since the last wake.
    pub(crate) fn pushed(&self) -> usize {
        self.pushed
    }

    /// Wakes every writer given a frame since the last call.
    pub(crate) fn wake(&mut self) {
        self.pushed = 0;
        for writer in self.writers.drain(..) {
            writer.ready.notify_one();
        }
        if self.writers.capacity() > BUSY_CAPACITY {
            // A burst to a large room: the room for it is not kept for the next.
            self.writers = Vec::new();
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake();
    }
}

/// The writer's end.
pub(crate) struct OutboxReader {
    shared: Arc<Shared>,
}

impl OutboxReader {
    /// Moves up to `max` queued frames into `batch`. False once every [`Outbox`] is gone and
    /// nothing is left to take.
    pub(crate) fn take(&self, batch: &mut Vec<Bytes>, max: usize) -> bool {
        let mut queue = self.shared.queue.lock().unwrap();
        let count = queue.frames.len().min(max);
        batch.extend(queue.frames.drain(..count));
        if queue.frames.is_empty() && queue.frames.capacity() > BUSY_CAPACITY {
            // Drained after a backlog: the room for it is not kept. A burst's room is, until
            // the connection falls silent (see `Outbox::shrink`): freed after each burst, it
            // was allocated and grown again for the next, a third of the allocator's work in
            // fan-out.
            queue.frames = VecDeque::new();
        }
        count > 0 || self.shared.senders.load(Ordering::Acquire) > 0
    }

    /// Resolves when there may be something new: frames, a lane, or no more [`Outbox`].
    pub(crate) async fn ready(&self) {
        self.shared.ready.notified().await;
    }

    /// The data lane, once [`Outbox::open_lane`] has made it.
    pub(crate) fn take_lane(&self) -> Option<mpsc::Receiver<Data>> {
        self.shared.queue.lock().unwrap().lane.take()
    }

    /// Records that `bytes` left the queue (written, or thrown away).
    pub(crate) fn release(&self, bytes: usize) {
        {
            let mut queue = self.shared.queue.lock().unwrap();
            queue.queued -= bytes;
            // Frames leave in the order queued: the first bytes released are those awaited.
            if queue.awaited > 0 {
                queue.awaited = queue.awaited.saturating_sub(bytes);
                if queue.awaited == 0 {
                    self.shared.written.store(true, Ordering::Release);
                    self.shared.halt.wake();
                }
            }
        }
        self.shared
            .budget
            .queued
            .fetch_sub(bytes, Ordering::Relaxed);
    }

    /// How long the writer may wait for the socket to accept anything while frames wait.
    pub(crate) fn stall(&self) -> Duration {
        self.shared.budget.stall
    }

    /// Tells the session that its socket accepted nothing for the stall timeout: it ends as
    /// too slow.
    pub(crate) fn stalled(&self) {
        self.shared.queue.lock().unwrap().shut = true;
        self.shared.overflow();
    }

    /// Whether the queue overflowed: its backlog is then worth nothing but the last frame.
    pub(crate) fn overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::Acquire)
    }

    /// Tells the session that writing failed: it ends.
    pub(crate) fn fail(&self) {
        self.shared.write_failed.store(true, Ordering::Release);
        self.shared.halt.wake();
    }

    /// The frame set by [`Outbox::push_last`], once every [`Outbox`] is gone.
    pub(crate) fn take_last(&self) -> Option<Bytes> {
        self.shared
            .queue
            .lock()
            .unwrap()
            .last
            .take()
            .map(|last| *last)
    }
}

/// Slots a drained queue (or a [`Wakes`]) may keep while busy; beyond this it starts again
/// from nothing. A queue's 256 slots are 8 KiB.
const BUSY_CAPACITY: usize = 256;

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes everything, as the writer does, until every outbox is gone.
    async fn drain(reader: &OutboxReader) -> Vec<Bytes> {
        let mut batch = Vec::new();
        loop {
            let before = batch.len();
            if !reader.take(&mut batch, 10) {
                return batch;
            }
            if batch.len() == before {
                reader.ready().await;
            }
        }
    }

    #[tokio::test]
    async fn overflow_drops_and_signals() {
        let (outbox, reader) = channel(10);
        outbox.push(Bytes::from_static(b"123456"));
        outbox.push(Bytes::from_static(b"7890"));
        assert!(!outbox.shared.overflowed.load(Ordering::Acquire));
        outbox.push(Bytes::from_static(b"x"));
        assert_eq!(outbox.signalled().await, Signal::Halt(Halt::TooSlow));
        outbox.push(Bytes::from_static(b"y"));
        drop(outbox);
        assert_eq!(drain(&reader).await.len(), 2);
    }

    #[tokio::test]
    async fn a_failed_writer_halts_the_session_even_if_it_waits_only_later() {
        let (outbox, reader) = channel(10);
        let session = tokio::spawn(async move { outbox.signalled().await });
        tokio::task::yield_now().await;
        reader.fail();
        assert_eq!(session.await.unwrap(), Signal::Halt(Halt::WriteFailed));

        let (outbox, reader) = channel(10);
        reader.fail();
        assert_eq!(outbox.signalled().await, Signal::Halt(Halt::WriteFailed));
        outbox.halter().shut_down();
        assert_eq!(
            outbox.signalled().await,
            Signal::Halt(Halt::Shutdown),
            "a shutdown comes first"
        );
    }

    #[tokio::test]
    async fn an_alarm_rings_once_when_due_and_again_only_when_set_again() {
        use futures_util::FutureExt;
        let (outbox, _reader) = channel(10);
        let halter = outbox.halter();
        // One poll each: ringing is synchronous, so a rung alarm is seen at once.
        halter.ring(1_000);
        assert_eq!(outbox.signalled().now_or_never(), None, "no alarm is set");
        outbox.set_alarm(500);
        halter.ring(499);
        assert_eq!(outbox.signalled().now_or_never(), None, "not due yet");
        halter.ring(500);
        assert_eq!(outbox.signalled().now_or_never(), Some(Signal::Alarm));
        halter.ring(2_000);
        assert_eq!(
            outbox.signalled().now_or_never(),
            None,
            "a rung alarm stays quiet"
        );
        outbox.set_alarm(2_500);
        halter.ring(3_000);
        assert_eq!(outbox.signalled().now_or_never(), Some(Signal::Alarm));
    }

    #[tokio::test]
    async fn nothing_follows_the_last_frame() {
        let (outbox, reader) = channel(4);
        outbox.push(Bytes::from_static(b"ab"));
        outbox.push_last(Bytes::from_static(b"bye, longer than the limit"));
        outbox.push(Bytes::from_static(b"c"));
        drop(outbox);
        assert_eq!(drain(&reader).await, [Bytes::from_static(b"ab")]);
        assert_eq!(&reader.take_last().unwrap()[..3], b"bye");
    }

    #[tokio::test]
    async fn queues_together_stay_within_the_total_and_the_furthest_behind_is_cut() {
        let budget = Budget::new(1 << 20, FAIR_SHARE + 1000, Duration::from_secs(10));
        let (behind, behind_reader) = budget.channel();
        let (keeping_up, keeping_up_reader) = budget.channel();
        behind.push(Bytes::from(vec![0; FAIR_SHARE]));
        keeping_up.push(Bytes::from(vec![0; 900]));
        assert_eq!(budget.queued(), FAIR_SHARE + 900);
        // Over the total: the queue past its fair share is cut, the other still takes frames.
        behind.push(Bytes::from(vec![0; 200]));
        assert_eq!(behind.signalled().await, Signal::Halt(Halt::TooSlow));
        keeping_up.push(Bytes::from(vec![0; 200]));
        assert!(!keeping_up_reader.overflowed());
        assert_eq!(budget.queued(), FAIR_SHARE + 1100);
        // Written, the bytes leave the total; left queued, they leave it with their queue.
        let mut batch = Vec::new();
        keeping_up_reader.take(&mut batch, 10);
        keeping_up_reader.release(1100);
        assert_eq!(budget.queued(), FAIR_SHARE);
        drop((behind, behind_reader));
        assert_eq!(budget.queued(), 0);
    }

    #[tokio::test]
    async fn release_makes_room_again() {
        let (outbox, reader) = channel(4);
        outbox.push(Bytes::from_static(b"abcd"));
        let mut batch = Vec::new();
        reader.take(&mut batch, 10);
        reader.release(4);
        outbox.push(Bytes::from_static(b"efgh"));
        assert!(!outbox.shared.overflowed.load(Ordering::Acquire));
    }

    #[tokio::test]
    async fn a_deferred_push_wakes_the_writer_only_when_the_wakes_fire() {
        let (outbox, reader) = channel(1024);
        let (taken, mut took) = mpsc::unbounded_channel();
        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while reader.take(&mut batch, 10) {
                if !batch.is_empty() {
                    let _ = taken.send(std::mem::take(&mut batch));
                }
                reader.ready().await;
            }
        });
        // Let the writer find the queue empty and wait.
        tokio::task::yield_now().await;
        let mut wakes = Wakes::default();
        outbox.push_deferred(Bytes::from_static(b"one"), &mut wakes);
        outbox.push_deferred(Bytes::from_static(b"two"), &mut wakes);
        // One thread: a woken writer would run during these yields.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            took.try_recv().is_err(),
            "the writer sleeps until the wakes fire"
        );
        wakes.wake();
        assert!(wakes.is_empty());
        let batch = tokio::time::timeout(std::time::Duration::from_secs(5), took.recv());
        assert_eq!(batch.await.unwrap().unwrap(), ["one", "two"]);

        outbox.push_deferred(Bytes::from_static(b"three"), &mut wakes);
        drop(wakes);
        let batch = tokio::time::timeout(std::time::Duration::from_secs(5), took.recv());
        assert_eq!(
            batch.await.unwrap().unwrap(),
            ["three"],
            "dropping the wakes fires them"
        );
        drop(outbox);
        writer.await.unwrap();
    }

    #[tokio::test]
    async fn the_writer_is_woken_by_frames_from_any_clone_and_by_the_last_drop() {
        let (outbox, reader) = channel(1024);
        let writer = tokio::spawn(async move { drain(&reader).await });
        let other = outbox.clone();
        tokio::task::yield_now().await;
        other.push(Bytes::from_static(b"one"));
        tokio::task::yield_now().await;
        outbox.push(Bytes::from_static(b"two"));
        drop(outbox);
        tokio::task::yield_now().await;
        other.push(Bytes::from_static(b"three"));
        drop(other);
        let written = tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("the writer finished")
            .unwrap();
        assert_eq!(
            written,
            ["one", "two", "three"].map(|s| Bytes::from_static(s.as_bytes()))
        );
    }
}
