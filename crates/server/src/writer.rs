//! The writing half of a connection: one task per connection drains the session's queues into
//! the socket. Control frames (replies and events) always go before file data, so chat stays
//! prompt while a download streams on the same connection.
//!
//! On plain TCP a file's bytes go from the page cache to the socket with `sendfile`, never
//! through this process; with TLS they must be read in to be encrypted.

use std::fs::File;
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::pin::Pin;

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use tokio::io::{AsyncWrite, AsyncWriteExt, Interest, WriteHalf};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tracing::warn;

use crate::outbox::OutboxReader;
use crate::transfer::{Data, Span};

/// A connection's write half, which may send file bytes itself.
pub(crate) trait Sink: AsyncWrite + Send + Unpin + 'static {
    /// Whether [`Sink::send_file`] works: true where the kernel can copy file bytes to the
    /// socket (plain TCP), false where they must pass through this process (TLS encrypts them).
    const ZERO_COPY: bool;

    /// Sends up to `len` bytes of `file` from `offset` without copying them through this
    /// process; returns how many went, 0 if the file ends before `offset`.
    fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
    ) -> impl Future<Output = io::Result<usize>> + Send;
}

impl Sink for OwnedWriteHalf {
    const ZERO_COPY: bool = true;

    async fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<usize> {
        let socket: &tokio::net::TcpStream = self.as_ref();
        let mut at = offset as i64;
        loop {
            socket.writable().await?;
            let sent = socket.try_io(Interest::WRITABLE, || {
                nix::sys::sendfile::sendfile64(socket, file, Some(&mut at), len)
                    .map_err(io::Error::from)
            });
            match sent {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
                sent => return sent,
            }
        }
    }
}

impl<S: AsyncWrite + Send + 'static> Sink for WriteHalf<S> {
    const ZERO_COPY: bool = false;

    async fn send_file(&mut self, _: &File, _: u64, _: usize) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this connection cannot send from a file",
        ))
    }
}

/// Most frames the writer takes from the control queue for one vectored write.
const WRITE_BATCH: usize = 64;

/// Drains the control queue and the data lane into the socket until every
/// [`Outbox`](crate::outbox::Outbox) is gone, then writes the last frame and closes the write
/// side. Control frames go first whenever both have something. If writing fails, tells the
/// session through the queue. The session aborts this task if it takes too long to finish.
pub(crate) async fn write_loop<W: Sink>(mut write_half: W, queue: OutboxReader) {
    match drain(&mut write_half, &queue).await {
        Ok(()) => {}
        Err(err) if err.get_ref().is_some_and(|inner| inner.is::<Stalled>()) => queue.stalled(),
        Err(_) => queue.fail(),
    }
}

/// The error of a write the socket accepted nothing of for the stall timeout: the peer reads
/// nothing (or is gone without a reset), while what waits for it holds memory.
#[derive(Debug, thiserror::Error)]
#[error("the peer read nothing for the stall timeout")]
struct Stalled;

/// Awaits the write `$write` makes, one system call's worth: at once if the socket takes it,
/// as it almost always does; otherwise for at most `$queue`'s stall timeout, failing as
/// [`Stalled`]. The write is made afresh for the wait, with a timer, both boxed and made only
/// then: a writer keeps no room for them (a function taking the write would keep it, 48 bytes
/// of every connection's writer), and a write that does not wait costs nothing more.
macro_rules! unstalled {
    ($queue:expr, $write:expr) => {
        match FutureExt::now_or_never($write) {
            Some(done) => done,
            None => match Box::pin(tokio::time::timeout($queue.stall(), $write)).await {
                Ok(done) => done,
                Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, Stalled)),
            },
        }
    };
}

/// Writes all of `buf`, failing as [`Stalled`] if the socket accepts nothing for the stall
/// timeout.
async fn write_all<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut buf: &[u8],
    queue: &OutboxReader,
) -> io::Result<()> {
    while !buf.is_empty() {
        let n = unstalled!(queue, w.write(buf))?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n..];
    }
    Ok(())
}

/// The body of [`write_loop`]. An idle connection's writer waits here, so every state of this
/// future is kept small: a writer that has no data lane (most never download) waits for its
/// queue alone, and what is large and rare (waiting on the lane too, sending from a file) is
/// boxed.
async fn drain<W: Sink>(write_half: &mut W, queue: &OutboxReader) -> io::Result<()> {
    // Made by the first download.
    let mut lane: Option<mpsc::Receiver<Data>> = None;
    loop {
        // A fresh batch each time: kept, it would hold memory per idle connection.
        let mut batch = Vec::new();
        let open = queue.take(&mut batch, WRITE_BATCH);
        if !batch.is_empty() {
            let bytes = batch.iter().map(Bytes::len).sum();
            if queue.overflowed() {
                // Too far behind: the backlog is dropped, only the bye still matters.
                batch.clear();
            } else {
                write_batch(write_half, &mut batch, queue).await?;
            }
            queue.release(bytes);
            continue;
        }
        if !open {
            break;
        }
        if lane.is_none() {
            lane = queue.take_lane();
        }
        let Some(receiver) = &mut lane else {
            queue.ready().await;
            continue;
        };
        match Box::pin(next_data(queue, receiver)).await {
            Next::Frames => {}
            // Boxed, as what is rare: a writer that never sends a file keeps no room for it.
            Next::Data(Data::Frame(frame)) => {
                Box::pin(write_all(write_half, &frame, queue)).await?
            }
            Next::Data(Data::Span(span)) => Box::pin(write_span(write_half, &span, queue)).await?,
            // Every sender is gone: no more downloads come this way (a new lane would).
            Next::LaneClosed => lane = None,
        }
    }
    if let Some(last) = queue.take_last() {
        write_half.write_all(&last).await?;
    }
    write_half.shutdown().await
}

/// What a writer with a data lane woke for.
enum Next {
    /// There may be frames in the queue (or a new lane, or no more senders).
    Frames,
    /// File data from the lane.
    Data(Data),
    /// The lane's senders are all gone.
    LaneClosed,
}

/// Waits for frames in the queue or data in the lane, frames first when both are there.
async fn next_data(queue: &OutboxReader, lane: &mut mpsc::Receiver<Data>) -> Next {
    tokio::select! {
        biased;
        () = queue.ready() => Next::Frames,
        data = lane.recv() => data.map_or(Next::LaneClosed, Next::Data),
    }
}

/// What pads a data frame whose file shrank.
const ZEROS: [u8; 4096] = [0; 4096];

/// Writes a data frame straight from its file. If the file shrank since the header promised
/// its length, zeros make up the rest: the framing stays whole, and the transfer's hash tells
/// the client the data is wrong.
async fn write_span<W: Sink>(w: &mut W, span: &Span, queue: &OutboxReader) -> io::Result<()> {
    write_all(w, &span.header, queue).await?;
    let mut sent = 0;
    while sent < span.len {
        let (offset, len) = (span.offset + sent as u64, span.len - sent);
        let n = unstalled!(queue, w.send_file(&span.file, offset, len))?;
        if n == 0 {
            break;
        }
        sent += n;
    }
    if sent < span.len {
        warn!("a shared file shrank while being sent; the transfer will fail its check");
    }
    while sent < span.len {
        let n = (span.len - sent).min(ZEROS.len());
        write_all(w, &ZEROS[..n], queue).await?;
        sent += n;
    }
    Ok(())
}

/// Writes every frame of `batch` (at most [`WRITE_BATCH`]) with as few system calls as the
/// transport allows, failing as [`Stalled`] if the socket accepts nothing for the stall
/// timeout.
async fn write_batch<W: AsyncWrite + Unpin>(
    w: &mut W,
    batch: &mut Vec<Bytes>,
    queue: &OutboxReader,
) -> io::Result<()> {
    let mut first = 0;
    while first < batch.len() {
        let mut written = unstalled!(queue, write_some(w, batch, first))?;
        if written == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let frame = &mut batch[first];
            if written >= frame.len() {
                written -= frame.len();
                first += 1;
            } else {
                frame.advance(written);
                written = 0;
            }
        }
    }
    batch.clear();
    Ok(())
}

/// One write of what `batch` holds from its frame `first` on: a single frame by `send`, more by
/// `writev`.
fn write_some<'a, W: AsyncWrite + Unpin>(
    w: &'a mut W,
    batch: &'a [Bytes],
    first: usize,
) -> impl Future<Output = io::Result<usize>> + 'a {
    // The slices are made afresh on each poll, on the stack: kept across the wait, they would
    // be room in every writer's task, or an allocation per write.
    poll_fn(move |cx| {
        if batch.len() - first == 1 {
            // One frame, as most are at chat rates: `send` rather than `writev`, which on a
            // socket costs more in the kernel for a single buffer (the iovec import and
            // the generic file path showed as ~8% of the server's CPU at 100 msg/s to
            // 1,000 receivers).
            return Pin::new(&mut *w).poll_write(cx, &batch[first]);
        }
        let mut slices = [IoSlice::new(&[]); WRITE_BATCH];
        let mut count = 0;
        for (slice, frame) in slices.iter_mut().zip(&batch[first..]) {
            *slice = IoSlice::new(frame);
            count += 1;
        }
        Pin::new(&mut *w).poll_write_vectored(cx, &slices[..count])
    })
}
