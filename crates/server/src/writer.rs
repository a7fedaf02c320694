//! The writing half of a connection: one task per connection drains the session's queues into
//! the socket. Control frames (replies and events) always go before file data, so chat stays
//! prompt while a download streams on the same connection.

use std::io::IoSlice;
use std::pin::pin;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::outbox::OutboxReader;

/// Most frames the writer takes from the control queue for one vectored write.
const WRITE_BATCH: usize = 64;

/// Drains the control queue and the data lane into the socket until every
/// [`Outbox`](crate::outbox::Outbox) is gone, then writes the last frame and closes the write
/// side. Control frames go first whenever both have something. Stops early if `abort` fires;
/// cancels `failed` if writing fails.
pub(crate) async fn write_loop<W>(
    write_half: W,
    queue: OutboxReader,
    abort: CancellationToken,
    failed: CancellationToken,
) where
    W: AsyncWrite + Send,
{
    let mut write_half = pin!(write_half);
    // Made by the first download; until then, waiting on it never resolves.
    let mut lane: Option<mpsc::Receiver<Bytes>> = None;
    let written = abort
        .run_until_cancelled(async {
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
                        write_batch(&mut write_half, &mut batch).await?;
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
                tokio::select! {
                    biased;
                    () = queue.ready() => {}
                    Some(frame) = next_data(&mut lane) => write_half.write_all(&frame).await?,
                }
            }
            if let Some(last) = queue.take_last() {
                write_half.write_all(&last).await?;
            }
            write_half.shutdown().await
        })
        .await;
    if let Some(Err(_)) = written {
        failed.cancel();
    }
}

/// The next frame of the data lane, if there is one; pending while there is no lane.
async fn next_data(lane: &mut Option<mpsc::Receiver<Bytes>>) -> Option<Bytes> {
    match lane {
        Some(lane) => lane.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes every frame of `batch` with as few system calls as the transport allows.
async fn write_batch<W>(
    w: &mut std::pin::Pin<&mut W>,
    batch: &mut Vec<Bytes>,
) -> std::io::Result<()>
where
    W: AsyncWrite,
{
    let mut first = 0;
    while first < batch.len() {
        let slices: Vec<IoSlice<'_>> = batch[first..].iter().map(|b| IoSlice::new(b)).collect();
        let mut written = w.write_vectored(&slices).await?;
        drop(slices);
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
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
