//! Group commit: messages are stored by one thread, many per transaction.
//!
//! The hub hands each message over as it delivers it (a non-blocking send, in id order) and
//! gets a receipt. Delivery to the people online never waits for the disk; only the sender's
//! confirmation does, and it waits for one commit shared by every message that arrived
//! meanwhile, so the cost of syncing is paid once per batch, not once per message.
//!
//! Under load the thread lets each batch gather for up to [`GATHER`] after the last commit:
//! taking whatever had arrived made batches of five messages at 15,000 a second, and a commit
//! costs as much as dozens of rows. While the thread sleeps, handing a message over wakes
//! nobody. A message arriving after a quiet spell is stored at once, though after the thread
//! has yielded to the worker delivering it.
//!
//! Under load that never pauses, what the thread costs per message is what fan-out loses to
//! history: the machine's cores are all busy, and the thread's share is taken from delivery.
//! Fewer, larger commits are what cut it (docs/benchmarks.md, "Storing history": from 3.6 to
//! 2.3–2.7 s of the thread's CPU per million messages with [`GATHER`] at 8 ms rather than 2
//! and the database's larger checkpoints).
//!
//! The store may leave its search index behind (see `SqliteStore`); the thread catches it up
//! once nothing has arrived for [`IDLE`], a step at a time so that a message arriving then
//! waits for one step at most.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{debug, error};

use crate::store::{Store, Stored};

/// Most messages in one transaction: ~3 ms of storing.
const MAX_BATCH: usize = 2048;

/// How long a batch may gather after the previous commit: what a sender's confirmation may
/// wait on top of the commit when messages arrive faster than this. Sessions read on while
/// their messages wait (see `MAX_UNCONFIRMED` in the session), so senders do not wait for it.
const GATHER: Duration = Duration::from_millis(8);

/// How long the thread waits with nothing to store before it indexes for search.
const IDLE: Duration = Duration::from_millis(50);

/// Most messages indexed for search in one step while idle: a few milliseconds of work.
const IDLE_STEP: u64 = 4096;

/// Resolves once the message is stored (`Ok`) or could not be (`Err`, with the reason).
pub(crate) type Receipt = oneshot::Receiver<Result<(), String>>;

/// A message, whether it is kept for an offline recipient, and who waits for it to be stored.
type Entry = (Stored, bool, oneshot::Sender<Result<(), String>>);

/// The hub's handle on the recording thread.
pub(crate) struct Recorder {
    queue: mpsc::Sender<Entry>,
    /// Whether messages are stored at all; see [`Config::keep_history`](crate::Config).
    keep_history: bool,
    /// Every message with an id up to this one is stored, or failed to be and never will.
    stored_through: Arc<AtomicU64>,
}

impl Recorder {
    /// Starts the recording thread; it ends, after storing everything handed to it, once the
    /// recorder is dropped.
    pub(crate) fn start(
        store: Arc<dyn Store>,
        keep_history: bool,
    ) -> std::io::Result<(Recorder, JoinHandle<()>)> {
        // Unbounded, yet bounded: a session stops reading once it has MAX_UNCONFIRMED
        // messages waiting here, so the queue holds at most that many per connection.
        let (queue, incoming) = mpsc::channel();
        let stored_through = Arc::new(AtomicU64::new(0));
        let watermark = stored_through.clone();
        let thread = std::thread::Builder::new()
            .name("parley-recorder".into())
            .spawn(move || record(&*store, &incoming, &watermark))?;
        Ok((
            Recorder {
                queue,
                keep_history,
                stored_through,
            },
            thread,
        ))
    }

    /// The highest id up to which every message handed over has been dealt with: a read of
    /// the store begun now sees every message up to it that was stored.
    pub(crate) fn stored_through(&self) -> u64 {
        self.stored_through.load(Ordering::Acquire)
    }

    /// Queues `message` for storing; never blocks. Without history the receipt is ready at
    /// once and nothing is stored.
    pub(crate) fn record(&self, message: Stored) -> Receipt {
        if !self.keep_history {
            return settled();
        }
        self.queue(message, false)
    }

    /// Queues a private message for storing and for delivery at its recipient's next sign-in
    /// (kept even without history: it is how the message reaches its recipient at all).
    pub(crate) fn record_undelivered(&self, message: Stored) -> Receipt {
        self.queue(message, true)
    }

    fn queue(&self, message: Stored, undelivered: bool) -> Receipt {
        let (done, receipt) = oneshot::channel();
        // If the thread is gone the receipt reports it: its sender is dropped with the entry.
        let _ = self.queue.send((message, undelivered, done));
        receipt
    }
}

/// A receipt that is ready at once: for what has nothing to store.
pub(crate) fn settled() -> Receipt {
    let (done, receipt) = oneshot::channel();
    let _ = done.send(Ok(()));
    receipt
}

fn record(store: &dyn Store, incoming: &mpsc::Receiver<Entry>, stored_through: &AtomicU64) {
    let mut committed = Instant::now();
    // A full batch left messages waiting: the next is not worth gathering for.
    let mut full = false;
    // How long to wait for a message before indexing for search, if anything may wait to be
    // indexed: what the last run stored may not all be.
    let mut until_indexing = Some(IDLE);
    loop {
        let first = if let Some(wait) = until_indexing {
            match incoming.recv_timeout(wait) {
                Ok(entry) => entry,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let more = store.index_waiting(IDLE_STEP).unwrap_or_else(|err| {
                        // The next search tries again, and reports it to whoever searched.
                        error!("indexing messages for search failed: {err}");
                        false
                    });
                    // Still quiet: the next step needs no new wait, only a look.
                    until_indexing = more.then_some(Duration::ZERO);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match incoming.recv() {
                Ok(entry) => entry,
                Err(_) => break,
            }
        };
        match GATHER.checked_sub(committed.elapsed()) {
            // The last commit was moments ago: more messages are coming.
            Some(rest) if !full => std::thread::sleep(rest),
            // A full batch left a backlog: nothing woke this thread, it never slept.
            Some(_) => {}
            // A quiet spell, and the message woke this thread. The scheduler tends to run
            // the woken thread at once on the CPU of the one that woke it: the worker, which
            // is still delivering the message. Storing first would hold delivery back by the
            // commit; yielding lets the worker finish first.
            None => std::thread::yield_now(),
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match incoming.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        full = batch.len() == MAX_BATCH;
        let mut messages = Vec::with_capacity(batch.len());
        let mut undelivered = Vec::new();
        let mut receipts = Vec::with_capacity(batch.len());
        for (message, keep, receipt) in batch {
            if keep {
                undelivered.push(message.id);
            }
            messages.push(message);
            receipts.push(receipt);
        }
        debug!("storing {} messages in one transaction", messages.len());
        let result = store.append(&messages, &undelivered).map_err(|err| {
            error!("storing {} messages failed: {err}", messages.len());
            err.to_string()
        });
        // Ids are handed over in increasing order, so the batch's last is its highest.
        let last = messages.last().map_or(0, |m| m.id);
        stored_through.fetch_max(last, Ordering::Release);
        committed = Instant::now();
        until_indexing = Some(IDLE);
        for receipt in receipts {
            let _ = receipt.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn message(id: u64) -> Stored {
        Stored {
            id,
            ts: id,
            room: Some("lobby".into()),
            from: "alice".into(),
            to: None,
            text: format!("message {id}"),
        }
    }

    #[tokio::test]
    async fn what_is_stored_is_indexed_for_search_once_the_recorder_is_idle() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("parley.db")).unwrap());
        let (recorder, thread) = Recorder::start(store.clone(), true).unwrap();
        let receipts: Vec<Receipt> = (1..=10).map(|id| recorder.record(message(id))).collect();
        for receipt in receipts {
            receipt.await.unwrap().unwrap();
        }
        // Nothing tells when the thread has indexed: look, for a bounded time.
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.indexed_through() < 10 {
            assert!(Instant::now() < deadline, "never indexed");
            tokio::time::sleep(IDLE / 5).await;
        }
        drop(recorder);
        thread.join().unwrap();
    }
}
