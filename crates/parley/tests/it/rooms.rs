//! Rooms: join, part, list; a broadcast reaches only its room.

use parley_client::ClientEvent;
use parley_proto::ErrorCode;
use parley_proto::event::{Departure, Event, PartReason, Presence};
use parley_proto::request::{Join, Part, RoomInfo, Rooms, Say, Users};

use crate::support::*;

#[tokio::test]
async fn join_talk_and_part() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = server.join("alice").await;
    let (bob, mut bob_events) = server.join("bob").await;
    let (_carol, mut carol_events) = server.join("carol").await;
    await_arrivals(&mut alice_events, "lobby", &["bob", "carol"]).await;
    await_arrivals(&mut bob_events, "lobby", &["carol"]).await;

    let joined = join_room(&alice, "#Rust").await;
    assert_eq!(joined.room, "rust");
    assert_eq!(joined.members, ["alice"]);
    let joined = join_room(&bob, "rust").await;
    assert_eq!(joined.members, ["alice", "bob"]);
    assert_eq!(
        next_server_event(&mut alice_events).await,
        Event::Join(Presence {
            room: "rust".into(),
            users: vec!["bob".into()]
        })
    );

    bob.call(Say {
        room: "rust".into(),
        text: "borrowck!".into(),
    })
    .await
    .unwrap();
    match next_server_event(&mut alice_events).await {
        Event::Message(m) => assert_eq!((m.room.as_str(), m.text.as_str()), ("rust", "borrowck!")),
        other => panic!("{other:?}"),
    }

    let members = alice
        .call(Users {
            room: Some("rust".into()),
            after: None,
        })
        .await
        .unwrap();
    assert_eq!(members.users, ["alice", "bob"]);
    let list = room_list(&alice).await;
    assert_eq!(
        list,
        [
            RoomInfo {
                name: "lobby".into(),
                members: 3,
                joined: true
            },
            RoomInfo {
                name: "rust".into(),
                members: 2,
                joined: true
            },
        ]
    );

    part_room(&bob, "rust").await;
    assert_eq!(
        next_server_event(&mut alice_events).await,
        Event::Part(Departure {
            room: "rust".into(),
            users: vec!["bob".into()],
            reason: PartReason::Part
        })
    );
    // Carol, in the lobby only, heard none of it.
    assert_quiet(&mut carol_events).await;

    assert_refused(
        bob.call(Say {
            room: "rust".into(),
            text: "still here?".into(),
        })
        .await,
        ErrorCode::NotInRoom,
    );
}

async fn room_list(client: &parley_client::Client) -> Vec<RoomInfo> {
    client.call(Rooms {}).await.unwrap().rooms
}

#[tokio::test]
async fn an_emptied_room_disappears_but_the_lobby_stays() {
    let server = TestServer::start().await;
    let (alice, _events) = server.join("alice").await;
    join_room(&alice, "temp").await;
    part_room(&alice, "temp").await;
    part_room(&alice, "lobby").await;
    let rooms = alice.call(Rooms {}).await.unwrap().rooms;
    assert_eq!(
        rooms,
        [RoomInfo {
            name: "lobby".into(),
            members: 0,
            joined: false
        }]
    );
    assert_refused(
        alice
            .call(Users {
                room: Some("temp".into()),
                after: None,
            })
            .await,
        ErrorCode::InvalidRoom,
    );
}

#[tokio::test]
async fn bad_room_names_and_room_limits_are_refused() {
    let server = TestServer::start().await;
    let (alice, _events) = server.join("alice").await;
    assert_refused(
        alice
            .call(Join {
                room: "no spaces".into(),
            })
            .await,
        ErrorCode::InvalidRoom,
    );
    assert_refused(
        alice
            .call(Part {
                room: "elsewhere".into(),
            })
            .await,
        ErrorCode::NotInRoom,
    );
    for i in 1..32 {
        alice
            .call(Join {
                room: format!("r{i}"),
            })
            .await
            .unwrap();
    }
    assert_refused(
        alice
            .call(Join {
                room: "one-too-many".into(),
            })
            .await,
        ErrorCode::TooManyRooms,
    );
}

#[tokio::test]
async fn leaving_the_server_parts_every_room() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    next_server_event(&mut alice_events).await;
    join_room(&alice, "rust").await;
    join_room(&bob, "rust").await;
    next_server_event(&mut alice_events).await;
    bob.quit().await.unwrap();
    let mut rooms = Vec::new();
    for _ in 0..2 {
        match next_event(&mut alice_events).await {
            ClientEvent::Server(Event::Part(d)) => {
                assert_eq!(d.reason, PartReason::Quit);
                rooms.push(d.room);
            }
            other => panic!("{other:?}"),
        }
    }
    rooms.sort();
    assert_eq!(rooms, ["lobby", "rust"]);
}
