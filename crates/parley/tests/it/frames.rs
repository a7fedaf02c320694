//! What a misbehaving peer can send: malformed and oversized frames, bad requests, no hello,
//! silence. Each gets a clear error, and nothing can make the server misbehave.

use std::time::Duration;

use parley_proto::Frame;
use parley_proto::limits::SERVER_MAX_CONTROL_FRAME;
use serde_json::{Value, json};

use crate::support::*;

/// The `bye` the server sends before closing, then checks that it does close.
async fn expect_bye(conn: &mut RawConn, code: &str) -> Value {
    let bye = conn.recv_json().await;
    assert_eq!(bye["type"], "bye", "{bye}");
    assert_eq!(bye["code"], code, "{bye}");
    assert!(!bye["message"].as_str().unwrap().is_empty());
    conn.expect_closed().await;
    bye
}

/// After the abuse, the server still serves others.
async fn still_serving(server: &TestServer) {
    let mut fresh = server.raw().await;
    fresh.hello("survivor").await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_from_its_header() {
    let server = TestServer::start().await;
    let mut conn = server.raw().await;
    conn.hello("big").await;
    // Only the header is sent: the server must not wait for (or allocate) the body.
    let len = (SERVER_MAX_CONTROL_FRAME + 1) as u32;
    conn.send_bytes(&[&len.to_be_bytes()[..], &[1]].concat())
        .await;
    let bye = expect_bye(&mut conn, "frame_too_large").await;
    assert!(bye["message"].as_str().unwrap().contains("65536"), "{bye}");

    let mut conn = server.raw().await;
    conn.send_bytes(&u32::MAX.to_be_bytes()).await;
    expect_bye(&mut conn, "frame_too_large").await;
    still_serving(&server).await;
}

#[tokio::test]
async fn malformed_frames_close_the_connection_with_a_reason() {
    let server = TestServer::start().await;
    let cases: [&[u8]; 5] = [
        &[0, 0, 0, 0],                      // zero length
        &[0, 0, 0, 1, 42],                  // unknown kind
        &[0, 0, 0, 2, 3, 0],                // ping with a payload
        &[0, 0, 0, 4, 1, b'{', b'{', b'{'], // control frame that is not JSON
        &[0, 0, 0, 3, 2, 0, 0],             // a data frame too short for its transfer id
    ];
    for bytes in cases {
        let mut conn = server.raw().await;
        conn.hello("victim").await;
        conn.send_bytes(bytes).await;
        expect_bye(&mut conn, "bad_frame").await;
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn data_frames_need_a_signed_in_connection_and_stray_ones_are_dropped() {
    let server = TestServer::start().await;
    let stray = Frame::Data {
        transfer: 42,
        payload: bytes::Bytes::from_static(b"stray"),
    }
    .to_bytes();
    let mut early = server.raw().await;
    early.send_bytes(&stray).await;
    expect_bye(&mut early, "bad_frame").await;
    // Refused from the header alone: the server does not wait for (or hold) the body.
    let mut early = server.raw().await;
    early.send_bytes(&[0, 0, 3, 232, 2]).await;
    expect_bye(&mut early, "bad_frame").await;

    // Signed in, data for no upload in progress (one just cancelled, say) is dropped.
    let mut conn = server.raw().await;
    conn.hello("uploader").await;
    conn.send_bytes(&stray).await;
    conn.send_json(json!({"id": 1, "type": "users"})).await;
    let reply = conn.recv_json().await;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_u64()),
        (Some("ok"), Some(1))
    );
}

#[tokio::test]
async fn a_bad_request_with_an_id_gets_an_error_and_the_connection_stays() {
    let server = TestServer::start().await;
    let mut conn = server.raw().await;
    conn.hello("careful").await;
    conn.send_json(json!({"id": 5, "type": "dance"})).await;
    let reply = conn.recv_json().await;
    assert_eq!(
        (
            reply["type"].as_str(),
            reply["id"].as_u64(),
            reply["code"].as_str()
        ),
        (Some("error"), Some(5), Some("unknown_request"))
    );
    conn.send_json(json!({"id": 6, "type": "say", "room": "lobby"}))
        .await;
    let reply = conn.recv_json().await;
    assert_eq!(
        (reply["id"].as_u64(), reply["code"].as_str()),
        (Some(6), Some("bad_request"))
    );
    conn.send_json(json!({"id": 7, "type": "hello", "versions": [1], "name": "again"}))
        .await;
    let reply = conn.recv_json().await;
    assert_eq!(
        (reply["id"].as_u64(), reply["code"].as_str()),
        (Some(7), Some("already_signed_in"))
    );
    // Still usable.
    conn.send_json(json!({"id": 8, "type": "users"})).await;
    let reply = conn.recv_json().await;
    assert_eq!(reply["type"], "ok");
    assert_eq!(reply["result"]["users"], json!(["careful"]));
    // A control frame with no readable id is a violation.
    conn.send_json(json!({"type": "users"})).await;
    expect_bye(&mut conn, "bad_frame").await;
}

#[tokio::test]
async fn the_first_request_must_be_hello() {
    let server = TestServer::start().await;
    let mut conn = server.raw().await;
    conn.send_json(json!({"id": 1, "type": "users"})).await;
    let reply = conn.recv_json().await;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("handshake_required"))
    );
    conn.expect_closed().await;
}

#[tokio::test]
async fn versions_are_negotiated() {
    let server = TestServer::start().await;
    let mut conn = server.raw().await;
    conn.send_json(json!({"id": 1, "type": "hello", "versions": [1, 7, 9], "name": "future"}))
        .await;
    let reply = conn.recv_json().await;
    assert_eq!(
        reply["result"]["version"], 1,
        "the highest version both speak: {reply}"
    );

    let mut conn = server.raw().await;
    conn.send_json(json!({"id": 1, "type": "hello", "versions": [99], "name": "alien"}))
        .await;
    let reply = conn.recv_json().await;
    assert_eq!(reply["code"], "unsupported_version", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("[1]"),
        "{reply}"
    );
    conn.expect_closed().await;
}

#[tokio::test]
async fn hello_fields_are_checked() {
    let server = TestServer::start().await;
    let mut conn = server.raw().await;
    let long = "c".repeat(129);
    conn.send_json(json!({"id": 1, "type": "hello", "versions": [1], "name": "a", "client": long}))
        .await;
    let reply = conn.recv_json().await;
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("128"),
        "{reply}"
    );
    conn.expect_closed().await;

    // A numeric type is not taken as a request kind.
    let mut conn = server.raw().await;
    conn.hello("numbers").await;
    conn.send_json(json!({"id": 2, "type": 7})).await;
    let reply = conn.recv_json().await;
    assert_eq!(
        (reply["id"].as_u64(), reply["code"].as_str()),
        (Some(2), Some("bad_request"))
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_handshake_timeout() {
    let server = TestServer::with_config(Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let mut conn = server.raw().await;
    expect_bye(&mut conn, "handshake_timeout").await;
    // Pings alone do not count as signing in.
    let mut conn = server.raw().await;
    conn.send_bytes(&Frame::Ping.to_bytes()).await;
    assert_eq!(conn.recv_frame().await, Some(Frame::Pong));
    expect_bye(&mut conn, "handshake_timeout").await;
}

/// Answering a ping makes the server give back the connection's read buffer and queue room
/// (an idle connection holds neither); the next request, however large and however it is cut,
/// is read whole all the same, and its reply queued and written.
#[tokio::test]
async fn a_client_answering_pings_is_served_after_its_buffers_are_given_back() {
    let server = TestServer::with_config(Config {
        // An answered ping is followed by the next one a timeout later.
        keepalive_interval: Duration::from_millis(100),
        keepalive_timeout: Duration::from_millis(400),
        ..Config::default()
    })
    .await;
    let mut conn = server.raw().await;
    conn.hello("alice").await;
    let text = "x".repeat(parley_proto::limits::MAX_TEXT_BYTES);
    for id in 1..=3 {
        // Two pings answered: the buffers are given back after each pong.
        while conn.recv_frame().await != Some(Frame::Ping) {}
        conn.send_bytes(&Frame::Pong.to_bytes()).await;
        while conn.recv_frame().await != Some(Frame::Ping) {}
        let say = parley_proto::control_frame(
            &json!({"id": id, "type": "say", "room": "lobby", "text": text}),
        );
        // The second pong and the start of the request in one write, the rest in two more, as
        // a slow network may deliver them: what follows the pong is not given back with it.
        let (head, rest) = say.split_at(3);
        conn.send_bytes(&[&Frame::Pong.to_bytes()[..], head].concat())
            .await;
        conn.send_bytes(&rest[..rest.len() / 2]).await;
        conn.send_bytes(&rest[rest.len() / 2..]).await;
        let reply = loop {
            let message = conn.recv_json().await;
            if message["type"] != "event" {
                break message;
            }
        };
        assert_eq!(
            (reply["type"].as_str(), reply["id"].as_u64()),
            (Some("ok"), Some(id)),
            "{reply}"
        );
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_refused() {
    let server = TestServer::with_config(Config {
        max_connections: 2,
        ..Config::default()
    })
    .await;
    let (_a, _ae) = server.join("a").await;
    let (_b, _be) = server.join("b").await;
    let mut third = server.raw().await;
    expect_bye(&mut third, "server_full").await;
    let refused = parley_client::Client::connect(&server.options("c")).await;
    match refused {
        Err(parley_client::ConnectError::Refused { code, .. }) => {
            assert_eq!(code, parley_proto::ErrorCode::ServerFull)
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("connection over the cap accepted"),
    }
}

#[tokio::test]
async fn garbage_input_never_crashes_the_server() {
    let server = TestServer::start().await;
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..200 {
        let mut conn = server.raw().await;
        if round % 2 == 0 {
            conn.hello(&format!("fuzz{round}")).await;
        }
        let len = 1 + (seed % 300) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        conn.send_bytes(&bytes).await;
        drop(conn);
    }
    still_serving(&server).await;
}
