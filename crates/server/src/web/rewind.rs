//! An HTTP connection's stream: its first byte put back (the byte read to tell HTTP from the
//! native protocol is the first byte of the request), and writes that give up once the peer
//! has read nothing for a while.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Sleep, sleep};

/// `first`, then whatever `inner` reads; writes go to `inner`, and fail with `TimedOut` when
/// none can go for `stall`. A native session drops a peer that stops reading through its
/// keepalive; a download or a WebSocket's relay, waiting to write, would otherwise wait forever.
pub(crate) struct Rewind<S> {
    first: Option<u8>,
    inner: S,
    stall: Duration,
    /// Armed while a write waits; on the heap, and only then, since most never wait.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Rewind<S> {
    pub(crate) fn new(first: u8, inner: S, stall: Duration) -> Self {
        Self {
            first: Some(first),
            inner,
            stall,
            stalled: None,
        }
    }

    /// Passes on what a write returned, timing how long it has been kept waiting.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self.stalled.get_or_insert_with(|| Box::pin(sleep(stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer read nothing for {stall:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() > 0
            && let Some(first) = self.first.take()
        {
            buf.put_slice(&[first]);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn the_first_byte_comes_back_first() {
        let mut stream = Rewind::new(b'G', &b"ET / HTTP/1.1"[..], Duration::from_secs(1));
        let mut read = String::new();
        stream.read_to_string(&mut read).await.unwrap();
        assert_eq!(read, "GET / HTTP/1.1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_peer_never_reads_fails_in_time() {
        use tokio::io::AsyncWriteExt;
        // A pipe nobody reads: its buffer fills, then writes wait.
        let (full, _unread) = tokio::io::duplex(16);
        let mut stream = Rewind::new(b'G', full, Duration::from_secs(10));
        let started = tokio::time::Instant::now();
        let err = stream.write_all(&[0; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_secs(10));
    }
}
