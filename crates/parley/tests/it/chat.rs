//! Signing in, the welcome, join notices and broadcast.

use std::time::Duration;

use parley_client::{ClientEvent, Events};
use parley_proto::event::{Event, Presence, RoomMessage};
use parley_proto::request::Say;
use parley_proto::{ErrorCode, control_frame};

use crate::support::*;

#[tokio::test]
async fn welcome_says_who_is_online() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    assert_eq!(alice.welcome().online, ["alice"]);
    assert_eq!(alice.welcome().room, "lobby");
    assert_eq!(alice.welcome().version, 1);

    let (bob, _bob_events) = server.join("Bob").await;
    assert_eq!(bob.welcome().online, ["alice", "Bob"]);
    assert_eq!(bob.welcome().name, "Bob");
}

#[tokio::test]
async fn everyone_else_is_told_of_a_join() {
    let server = TestServer::start().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let (_bob, mut bob_events) = server.join("bob").await;
    assert_eq!(
        next_server_event(&mut alice_events).await,
        Event::Join(Presence {
            room: "lobby".into(),
            users: vec!["bob".into()]
        })
    );
    // The newcomer is not told of its own arrival.
    assert_quiet(&mut bob_events).await;
}

#[tokio::test]
async fn broadcast_reaches_everyone_in_the_room_and_is_confirmed() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = server.join("alice").await;
    let (_bob, mut bob_events) = server.join("bob").await;
    let (_carol, mut carol_events) = server.join("carol").await;
    // Let alice see both joins so her stream holds only what follows.
    await_arrivals(&mut alice_events, "lobby", &["bob", "carol"]).await;
    await_arrivals(&mut bob_events, "lobby", &["carol"]).await;

    let sent = alice
        .call(Say {
            room: "lobby".into(),
            text: "hello, everyone".into(),
        })
        .await
        .unwrap();
    assert_eq!(sent.to, "lobby");
    assert!(sent.id > 0 && sent.ts > 0);

    for events in [&mut bob_events, &mut carol_events] {
        let event = next_server_event(events).await;
        assert_eq!(
            event,
            Event::Message(RoomMessage {
                id: sent.id,
                ts: sent.ts,
                room: "lobby".into(),
                from: "alice".into(),
                text: "hello, everyone".into(),
            })
        );
    }
    // The sender's confirmation is the reply, not an echo.
    assert_quiet(&mut alice_events).await;
}

#[tokio::test]
async fn messages_arrive_in_the_order_sent() {
    let server = TestServer::unthrottled().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (_bob, mut bob_events) = server.join("bob").await;
    for i in 0..200 {
        alice
            .call(Say {
                room: "lobby".into(),
                text: format!("message {i}"),
            })
            .await
            .unwrap();
    }
    for i in 0..200 {
        match next_event(&mut bob_events).await {
            ClientEvent::Server(Event::Message(m)) => assert_eq!(m.text, format!("message {i}")),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn empty_and_overlong_messages_are_refused_with_a_reason() {
    let server = TestServer::start().await;
    let (alice, _events) = server.join("alice").await;
    assert_refused(
        alice
            .call(Say {
                room: "lobby".into(),
                text: "   ".into(),
            })
            .await,
        ErrorCode::EmptyText,
    );
    let err = alice
        .call(Say {
            room: "lobby".into(),
            text: "x".repeat(4097),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("4096"), "{err}");
    // The longest allowed message goes through.
    alice
        .call(Say {
            room: "lobby".into(),
            text: "x".repeat(4096),
        })
        .await
        .unwrap();
}

/// A sender does not wait for each message's commit before the next is read: many messages
/// sent back to back are all delivered and confirmed, the confirmations in order, and a later
/// request's reply comes after them.
#[tokio::test]
async fn pipelined_messages_are_confirmed_in_order() {
    let server = TestServer::unthrottled().await;
    let (_bob, mut bob_events) = server.join("bob").await;
    let mut alice = server.raw().await;
    alice.hello("alice").await;
    let mut burst = Vec::new();
    // Two refused on the way, each answered in its turn: one to a room the sender is not in
    // (which ends a burst of messages to the lobby), one empty (refused alone in the middle
    // of a burst to the lobby).
    let refused = [150, 200];
    for id in 1..=300u64 {
        let room = if id == 150 { "nowhere" } else { "lobby" };
        let text = if id == 200 {
            " ".into()
        } else {
            format!("m{id}")
        };
        let say = serde_json::json!({"id": id, "type": "say", "room": room, "text": text});
        burst.extend_from_slice(&control_frame(&say));
    }
    burst.extend_from_slice(&control_frame(
        &serde_json::json!({"id": 301, "type": "users"}),
    ));
    alice.send_bytes(&burst).await;
    let mut expected = 1;
    while expected <= 301 {
        let reply = alice.recv_json().await;
        let wanted = if refused.contains(&expected) {
            "error"
        } else {
            "ok"
        };
        if reply["type"] != "ok" && reply["type"] != "error" {
            continue;
        }
        assert_eq!(reply["type"], wanted, "{reply}");
        assert_eq!(reply["id"], expected, "replies in request order: {reply}");
        expected += 1;
    }
    for id in (1..=300).filter(|id| !refused.contains(id)) {
        let text = next_text(&mut bob_events).await;
        assert_eq!(text, format!("m{id}"));
    }
}

/// Messages read together wake their recipients once, after the last is read: a burst that
/// ends with a message, and nothing after it, still reaches everyone in full.
#[tokio::test]
async fn a_burst_of_messages_reaches_everyone_with_nothing_after_it() {
    let server = TestServer::unthrottled().await;
    let (_bob, mut bob_events) = server.join("bob").await;
    let (_carol, mut carol_events) = server.join("carol").await;
    let mut alice = server.raw().await;
    alice.hello("alice").await;
    alice.send_bytes(&says("lobby", "m", 1..=500)).await;
    // Well inside the keepalive interval: a ping to a recipient would wake its writer too,
    // and hide writers left asleep.
    let delivered = tokio::time::timeout(Duration::from_secs(2), async {
        for events in [&mut bob_events, &mut carol_events] {
            for id in 1..=500 {
                let text = next_text(events).await;
                assert_eq!(text, format!("m{id}"));
            }
        }
    });
    delivered
        .await
        .expect("every message delivered without anything more from anyone");
}

/// Messages read together are said together, in one buffer for every recipient. Bursts from
/// two senders at once still reach a third with ids that only grow, so a client catching up
/// from the highest id it saw misses nothing and gets nothing twice, and each sender's
/// messages in the order sent.
#[tokio::test]
async fn bursts_from_two_senders_arrive_with_growing_ids() {
    let server = TestServer::unthrottled().await;
    let (_carol, mut carol_events) = server.join("carol").await;
    let mut alice = server.raw().await;
    alice.hello("alice").await;
    let mut bob = server.raw().await;
    bob.hello("bob").await;
    let (from_alice, from_bob) = (says("lobby", "a", 1..=400), says("lobby", "b", 1..=400));
    tokio::join!(alice.send_bytes(&from_alice), bob.send_bytes(&from_bob));
    let mut last_id = 0;
    let mut next = [1, 1];
    while next != [401, 401] {
        let message = wait_for(&mut carol_events, |event| match event {
            ClientEvent::Server(Event::Message(message)) => Some(message.clone()),
            _ => None,
        })
        .await;
        assert!(message.id > last_id, "{} after {last_id}", message.id);
        last_id = message.id;
        let sender = usize::from(message.from == "bob");
        let prefix = ["a", "b"][sender];
        assert_eq!(message.text, format!("{prefix}{}", next[sender]));
        next[sender] += 1;
    }
}

/// Messages read in the same read as a frame that ends the session are still said: they
/// were read whole, as they would have been had a good request followed. The sender is
/// answered for each, a refused one included, before the `bye`.
#[tokio::test]
async fn messages_read_before_a_bad_frame_are_still_said_and_answered() {
    let server = TestServer::start().await;
    let (_bob, mut bob_events) = server.join("bob").await;
    let mut alice = server.raw().await;
    alice.hello("alice").await;
    let mut bytes = says("lobby", "m", 1..=4);
    bytes.extend_from_slice(&control_frame(
        &serde_json::json!({"id": 5, "type": "say", "room": "lobby", "text": ""}),
    ));
    bytes.extend_from_slice(&says("lobby", "m", 6..=10));
    // A frame of an unknown kind: the session ends with `bad_frame`.
    bytes.extend_from_slice(&[0, 0, 0, 1, 9]);
    alice.send_bytes(&bytes).await;
    for id in (1..=10).filter(|id| *id != 5) {
        let text = next_text(&mut bob_events).await;
        assert_eq!(text, format!("m{id}"));
    }
    let mut answered = 0;
    let bye = loop {
        let frame = alice.recv_json().await;
        match frame["type"].as_str() {
            Some("bye") => break frame,
            Some("ok" | "error") => {
                answered += 1;
                assert_eq!(frame["id"], answered, "replies in request order: {frame}");
                let wanted = if answered == 5 { "error" } else { "ok" };
                assert_eq!(frame["type"], wanted, "{frame}");
            }
            _ => {}
        }
    };
    assert_eq!(answered, 10, "every request answered before the bye");
    assert_eq!(bye["code"], "bad_frame", "{bye}");
}

/// A refused message is answered before the file data read after it, even when that data
/// ends its upload: replies keep the order of what the client sent.
#[tokio::test]
async fn a_refused_message_is_answered_before_data_that_ends_an_upload() {
    let server = TestServer::start().await;
    let mut alice = server.raw().await;
    alice.hello("alice").await;
    alice
        .send_json(serde_json::json!({"id": 1, "type": "upload", "name": "tiny.bin", "size": 1, "transfer": 7}))
        .await;
    assert_eq!(alice.recv_json().await["type"], "ok");
    let mut bytes =
        control_frame(&serde_json::json!({"id": 2, "type": "say", "room": "lobby", "text": ""}))
            .to_vec();
    // Two bytes where one was announced: the upload fails.
    let data = parley_proto::Frame::Data {
        transfer: 7,
        payload: vec![1u8; 2].into(),
    };
    bytes.extend_from_slice(&data.to_bytes());
    alice.send_bytes(&bytes).await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let frame = alice.recv_json().await;
        match frame["type"].as_str() {
            Some("error") => seen.push(format!("error {}", frame["id"])),
            Some("transfer_end") => seen.push(format!("end {}", frame["status"])),
            _ => {}
        }
    }
    assert_eq!(seen, ["error 2", r#"end "failed""#]);
}

/// The text of the next room message `events` brings.
async fn next_text(events: &mut Events) -> String {
    wait_for(events, |event| match event {
        ClientEvent::Server(Event::Message(RoomMessage { text, .. })) => Some(text.clone()),
        _ => None,
    })
    .await
}

/// `say` requests with ids `ids` and texts `<prefix><id>`, as one run of frames.
fn says(room: &str, prefix: &str, ids: std::ops::RangeInclusive<u64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for id in ids {
        let say = serde_json::json!({"id": id, "type": "say", "room": room, "text": format!("{prefix}{id}")});
        bytes.extend_from_slice(&control_frame(&say));
    }
    bytes
}

/// People arriving together are announced together: whoever is in the room hears of 40
/// arrivals in far fewer than 40 events, and everyone ends up knowing everyone, hearing of
/// each person exactly once (in the welcome or in a join) and never of themselves.
#[tokio::test]
async fn arrivals_are_announced_in_batches() {
    let server = TestServer::start().await;
    let (_alice, alice_events) = server.join("alice").await;
    let names: Vec<String> = (0..40).map(|i| format!("u{i}")).collect();
    let arrivals = futures_util::future::join_all(names.iter().map(|name| server.join(name))).await;
    let mut everyone: Vec<String> = names.clone();
    everyone.push("alice".into());
    everyone.sort();

    let mut views = vec![("alice".to_owned(), vec!["alice".to_owned()], alice_events)];
    let mut signed_in = Vec::new();
    for (client, events) in arrivals {
        let name = client.welcome().name.clone();
        views.push((name, client.welcome().online.clone(), events));
        signed_in.push(client);
    }
    for (name, known, events) in &mut views {
        let mut announcements = 0;
        while known.len() < everyone.len() {
            let users = wait_for(events, |event| match event {
                ClientEvent::Server(Event::Join(Presence { room, users })) if room == "lobby" => {
                    Some(users.clone())
                }
                _ => None,
            })
            .await;
            assert!(
                !users.contains(name),
                "{name} was told of their own arrival"
            );
            known.extend(users);
            announcements += 1;
        }
        let mut heard = known.clone();
        heard.sort();
        assert_eq!(
            heard, everyone,
            "{name} heard of someone twice or of a stranger"
        );
        if name == "alice" {
            assert!(
                announcements < 20,
                "40 arrivals took {announcements} announcements"
            );
        }
    }
}
