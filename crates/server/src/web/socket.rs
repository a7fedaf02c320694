//! The WebSocket at `/ws`: the native protocol for browsers.
//!
//! Each text message is one control message (a request from the page, a reply or event from
//! the server), each binary message one data frame's payload (transfer id, then file bytes),
//! and WebSocket ping and pong stand for the native keepalive frames. A relay turns messages
//! into native frames and back over an in-memory pipe, at whose other end runs an ordinary
//! session: sign-in, every request, every limit and the keepalive are the native protocol's,
//! unchanged. Only the welcome differs: it carries the token for the HTTP file endpoints.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use parley_proto::frame::{FrameKind, PONG_FRAME};
use parley_proto::limits::{MAX_DATA_FRAME, SERVER_MAX_CONTROL_FRAME};
use parley_proto::{Frame, FrameCodec};
use tokio::io::{AsyncWriteExt, DuplexStream};
use tokio::time::timeout;
use tokio_util::codec::FramedRead;
use tracing::info;

use super::{Connection, same_origin};
use crate::ActiveGuard;
use crate::session::{self, Arrival, Context};

/// Bytes the pipe between relay and session holds in each direction: a few control messages
/// or one data frame; beyond it each side waits for the other, as a socket would make it.
const PIPE: usize = 64 * 1024;

/// After the session has ended and the page was told, how long the relay waits for the
/// page's closing handshake.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Once one side is done, how long the other has to finish: the session's own flush timeout
/// (2 s) and the closing handshake.
const RELAY_GRACE: Duration = Duration::from_secs(4);

/// Accepts a WebSocket from a page of this server, and runs a session over it.
pub(super) async fn upgrade(
    State(ctx): State<Arc<Context>>,
    Extension(connection): Extension<Connection>,
    headers: HeaderMap,
    socket: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers, connection.secure) {
        info!("{}: WebSocket from another site refused", connection.peer);
        return (
            StatusCode::FORBIDDEN,
            "WebSocket connections are accepted only from this server's own page.",
        )
            .into_response();
    }
    // The session's own limits apply to what the relay hands it; these only stop a message
    // larger than any frame could be from being gathered in memory first.
    let largest = SERVER_MAX_CONTROL_FRAME.max(MAX_DATA_FRAME);
    connection.upgraded.store(true, Ordering::Relaxed);
    socket
        .max_message_size(largest)
        .max_frame_size(largest)
        .on_upgrade(move |socket| {
            // The library spawns this task itself; the token counts it among the server's.
            let counted = connection.tasks.token();
            async move {
                run(socket, ctx, connection).await;
                drop(counted);
            }
        })
}

/// Runs a session for the WebSocket until either ends.
async fn run(socket: WebSocket, ctx: Arc<Context>, connection: Connection) {
    let (session_end, relay_end) = tokio::io::duplex(PIPE);
    let active = ActiveGuard::new(&connection.active);
    let accepted = tokio::time::Instant::now();
    let peer = connection.peer;
    let session = session::run(session_end, peer, ctx, accepted, active, Arrival::Browser);
    let (mut session, mut relay) = (pin!(session), pin!(relay(socket, relay_end)));
    tokio::select! {
        // The page is gone: the session reads the end of its input, and ends.
        () = &mut relay => session.await,
        // The session is over and its last words are in the pipe: the relay has a moment to
        // pass them on and close, however the page behaves (it may have stopped reading).
        () = &mut session => {
            let _ = timeout(RELAY_GRACE, relay).await;
        }
    }
}

/// Carries messages between the page and the session until either side closes.
async fn relay(socket: WebSocket, pipe: DuplexStream) {
    let (mut to_page, mut from_page) = socket.split();
    let (from_session, mut to_session) = tokio::io::split(pipe);
    let inbound = async move {
        while let Some(Ok(message)) = from_page.next().await {
            let frame = match message {
                Message::Text(text) => frame(FrameKind::Control, text.as_bytes()),
                Message::Binary(data) => frame(FrameKind::Data, &data),
                Message::Pong(_) => Bytes::from_static(&PONG_FRAME),
                // Answered by the WebSocket library itself.
                Message::Ping(_) => continue,
                Message::Close(_) => break,
            };
            if to_session.write_all(&frame).await.is_err() {
                break;
            }
        }
        // The session reads the end of its input as the client closing.
        let _ = to_session.shutdown().await;
    };
    let outbound = async move {
        // What the session writes is the server's own, well-formed frames.
        let mut frames = FramedRead::new(from_session, FrameCodec::client());
        while let Some(Ok(frame)) = frames.next().await {
            let message = match frame {
                Frame::Control(json) => match Utf8Bytes::try_from(json) {
                    Ok(text) => Message::Text(text),
                    Err(_) => break,
                },
                Frame::Data { transfer, payload } => {
                    let mut data = BytesMut::with_capacity(4 + payload.len());
                    data.put_u32(transfer);
                    data.put_slice(&payload);
                    Message::Binary(data.freeze())
                }
                Frame::Ping => Message::Ping(Bytes::new()),
                Frame::Pong => continue,
            };
            if to_page.send(message).await.is_err() {
                return;
            }
        }
        // The session ended (its last words, a `bye` or a reply to `quit`, went first). If the
        // page closed first, this flushes the library's answer to its close instead.
        let _ = to_page.send(Message::Close(None)).await;
        let _ = to_page.close().await;
    };
    let (mut inbound, mut outbound) = (pin!(inbound), pin!(outbound));
    tokio::select! {
        // The page closed: the session ends on the end of its input, and the outbound side
        // then answers the page's close.
        () = &mut inbound => {
            let _ = timeout(RELAY_GRACE, outbound).await;
        }
        // The session ended: the page's side may never close by itself; it gets a moment to
        // answer the closing handshake.
        () = &mut outbound => {
            let _ = timeout(CLOSE_WAIT, inbound).await;
        }
    }
}

/// A native frame of `kind` around `payload`, as a client would have sent it.
fn frame(kind: FrameKind, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    let len = u32::try_from(payload.len() + 1).expect("messages are limited far below 4 GiB");
    frame.put_u32(len);
    frame.put_u8(kind as u8);
    frame.put_slice(payload);
    frame.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_text_message_becomes_a_control_frame() {
        let framed = frame(FrameKind::Control, br#"{"id":1}"#);
        assert_eq!(&framed[..5], &[0, 0, 0, 9, FrameKind::Control as u8]);
        assert_eq!(&framed[5..], br#"{"id":1}"#);
    }
}
