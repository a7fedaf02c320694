//! Per-address connection limits: one address cannot hold every connection slot, nor open
//! connections faster than its allowance; other addresses are served meanwhile; loopback is
//! exempt unless the exemption list says otherwise.

use std::net::{Ipv4Addr, SocketAddr};

use futures_util::StreamExt;
use parley_proto::{Frame, FrameCodec};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::support::*;

/// Connects to `server` from 127.0.0.`host`.
async fn connect_from(server: SocketAddr, host: u8) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// A connection from 127.0.0.`host`, signed in as `name`, or the code of the `bye` or error
/// that refused it.
async fn sign_in_from(server: SocketAddr, host: u8, name: &str) -> Result<RawConn, String> {
    let (read, mut write) = connect_from(server, host).await.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::client());
    let hello = json!({"id": 0, "type": "hello", "versions": [1], "name": name});
    // A refused connection may be closed before the hello is written: that is fine.
    let _ = write.write_all(&parley_proto::control_frame(&hello)).await;
    let answer = within("an answer to hello", async {
        loop {
            match frames.next().await {
                Some(Ok(Frame::Control(json))) => {
                    break serde_json::from_slice::<Value>(&json).unwrap();
                }
                Some(Ok(_)) => {}
                other => panic!("the connection ended without an answer: {other:?}"),
            }
        }
    })
    .await;
    match answer["type"].as_str() {
        Some("ok") => Ok(RawConn { frames, write }),
        _ => Err(answer["code"].as_str().unwrap().to_owned()),
    }
}

/// A server whose limits apply to loopback too, as to any address.
async fn limited(per_address: usize, per_minute: u32) -> TestServer {
    TestServer::with_config(Config {
        max_connections_per_address: per_address,
        max_new_connections_per_minute: per_minute,
        limit_exempt: Vec::new(),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn one_address_cannot_take_every_connection_slot() {
    let server = limited(3, 1000).await;
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(
            sign_in_from(server.addr, 2, &format!("hog{i}"))
                .await
                .unwrap(),
        );
    }
    let refused = sign_in_from(server.addr, 2, "hog3").await.err();
    assert_eq!(refused.as_deref(), Some("too_many_connections"));
    // Another address is served meanwhile.
    sign_in_from(server.addr, 3, "someone").await.unwrap();
    // Once one of the three is gone, its address may connect again.
    let mut gone = held.pop().unwrap();
    gone.send_json(json!({"id": 1, "type": "quit"})).await;
    drop(gone);
    let deadline = Instant::now() + WAIT;
    loop {
        match sign_in_from(server.addr, 2, "hog4").await {
            Ok(_) => break,
            Err(code) if code == "too_many_connections" && Instant::now() < deadline => {}
            Err(code) => panic!("refused with {code} after one of the three left"),
        }
    }
}

#[tokio::test]
async fn one_address_cannot_open_connections_faster_than_its_allowance() {
    let server = limited(100, 5).await;
    for i in 0..5 {
        // Each closes before the next: only the rate of new connections counts.
        let mut guest = sign_in_from(server.addr, 4, &format!("quick{i}"))
            .await
            .unwrap();
        guest.send_json(json!({"id": 1, "type": "quit"})).await;
    }
    let refused = sign_in_from(server.addr, 4, "quick5").await.err();
    assert_eq!(refused.as_deref(), Some("too_many_connections"));
    sign_in_from(server.addr, 5, "patient").await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_is_told_why_before_it_says_anything() {
    let server = limited(1, 1000).await;
    let _held = sign_in_from(server.addr, 6, "first").await.unwrap();
    // A silent connection from the same address (an HTTP one would be the same: the limit
    // is applied at accept, before the protocol is known).
    let bye = first_message_from(server.addr, 6).await;
    assert_eq!(bye["type"], "bye");
    assert_eq!(bye["code"], "too_many_connections");
}

#[tokio::test]
async fn loopback_is_exempt_by_default() {
    let server = TestServer::with_config(Config {
        max_connections_per_address: 2,
        max_new_connections_per_minute: 2,
        ..Config::default()
    })
    .await;
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(
            sign_in_from(server.addr, 7, &format!("local{i}"))
                .await
                .unwrap(),
        );
    }
}

#[tokio::test]
async fn a_browser_holds_its_address_slot_for_as_long_as_its_websocket_lives() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let server = limited(1, 1000).await;
    let mut request = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    let origin = format!("http://{}", server.addr).parse().unwrap();
    request.headers_mut().insert("origin", origin);
    let stream = connect_from(server.addr, 8).await;
    let (mut socket, _) = within(
        "the upgrade",
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .unwrap();
    let hello = json!({"id": 0, "type": "hello", "versions": [1], "name": "browser"});
    socket.send(Message::text(hello.to_string())).await.unwrap();
    // The first message is the welcome (or the refusal, which fails here).
    let welcome = within("the welcome", socket.next()).await.unwrap().unwrap();
    let welcome: Value = serde_json::from_str(welcome.to_text().unwrap()).unwrap();
    assert_eq!(welcome["type"], "ok", "{welcome}");
    // The WebSocket took its HTTP connection's place: the address's one slot is held.
    let refused = sign_in_from(server.addr, 8, "native").await.err();
    assert_eq!(refused.as_deref(), Some("too_many_connections"));
    socket.close(None).await.unwrap();
    drop(socket);
    let deadline = Instant::now() + WAIT;
    loop {
        match sign_in_from(server.addr, 8, "native").await {
            Ok(_) => break,
            Err(code) if code == "too_many_connections" && Instant::now() < deadline => {}
            Err(code) => panic!("refused with {code} after the browser left"),
        }
    }
}

/// The first frame a connection from 127.0.0.`host` receives, decoded as JSON, read until the
/// server closes it.
async fn first_message_from(server: SocketAddr, host: u8) -> Value {
    let mut stream = connect_from(server, host).await;
    let mut bytes = Vec::new();
    within("the server's answer", stream.read_to_end(&mut bytes))
        .await
        .unwrap();
    let mut codec = FrameCodec::client();
    let frame = tokio_util::codec::Decoder::decode(&mut codec, &mut bytes[..].into())
        .unwrap()
        .expect("a whole frame");
    let Frame::Control(json) = frame else {
        panic!("not a control frame: {frame:?}");
    };
    serde_json::from_slice(&json).unwrap()
}

#[tokio::test]
async fn the_command_line_sets_the_limits_and_none_exempts_nothing() {
    let args = [
        "server",
        "0",
        "--host",
        "127.0.0.1",
        "--no-tls",
        "--limit-exempt",
        "none",
        "--max-connections-per-address",
        "1",
    ];
    let mut server = Proc::spawn(&args);
    let line = server.expect_line(|l| l.contains("listening on")).await;
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap();
    let _held = sign_in_from(addr, 1, "first").await.unwrap();
    let bye = first_message_from(addr, 1).await;
    assert_eq!(bye["type"], "bye");
    assert_eq!(bye["code"], "too_many_connections");
}
