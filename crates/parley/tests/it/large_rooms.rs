//! Large rooms: lists stop at the roster limit and are paged with `users`; a room larger than
//! the limit announces its size in `members` events instead of naming every arrival and
//! departure to everyone (which would cost N² names as N people arrive).

use parley_client::ClientEvent;
use parley_proto::event::{Departure, Members, PartReason, Presence};
use parley_proto::request::{Quit, Say, Users};

use crate::support::*;

/// A server whose lists hold at most three names.
async fn small_roster() -> TestServer {
    TestServer::with_config(Config {
        roster_limit: 3,
        ..Config::default()
    })
    .await
}

/// The next `join`, `part`, `members` or `message` event, skipping others.
async fn next_presence(events: &mut parley_client::Events) -> Event {
    wait_for(events, |event| match event {
        ClientEvent::Server(
            event @ (Event::Join(_) | Event::Part(_) | Event::Members(_) | Event::Message(_)),
        ) => Some(event.clone()),
        _ => None,
    })
    .await
}

fn members(room: &str, count: usize) -> Event {
    Event::Members(Members {
        room: room.into(),
        count,
    })
}

#[tokio::test]
async fn lists_stop_at_the_roster_limit_and_page_through_the_rest() {
    let server = small_roster().await;
    let mut clients = Vec::new();
    for name in ["erin", "Dave", "carol", "bob", "alice"] {
        clients.push(server.join(name).await);
    }
    let (alice, _) = &clients[4];
    let welcome = alice.welcome();
    assert_eq!(welcome.online, ["alice", "bob", "carol"]);
    assert_eq!((welcome.online_count, welcome.roster_limit), (5, 3));

    let first = alice.call(Users::default()).await.unwrap();
    assert_eq!(first.users, ["alice", "bob", "carol"]);
    assert_eq!((first.count, first.more), (5, true));
    let rest = alice
        .call(Users {
            room: None,
            after: Some("carol".into()),
        })
        .await
        .unwrap();
    assert_eq!(rest.users, ["Dave", "erin"]);
    assert_eq!((rest.count, rest.more), (5, false));
    // `after` compares without regard to case, like the sort, and need not be anyone's name.
    let rest = alice
        .call(Users {
            room: Some("lobby".into()),
            after: Some("CZ".into()),
        })
        .await
        .unwrap();
    assert_eq!(rest.users, ["Dave", "erin"]);
    assert_eq!(rest.room.as_deref(), Some("lobby"));

    for (client, _) in &clients {
        join_room(client, "big").await;
    }
    let (erin, _) = &clients[0];
    let joined = join_room(erin, "big").await;
    assert_eq!(joined.members, ["alice", "bob", "carol"]);
    assert_eq!(joined.count, 5);
}

#[tokio::test]
async fn a_large_room_announces_its_size_instead_of_names() {
    let server = small_roster().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let (_bob, _bob_events) = server.join("bob").await;
    let (carol, _carol_events) = server.join("carol").await;
    await_arrivals(&mut alice_events, "lobby", &["bob", "carol"]).await;

    // The fourth member makes the room large: nobody is told who came, everyone how many are
    // there, the newcomer too (its list named only the first three).
    let (dave, mut dave_events) = server.join("dave").await;
    assert_eq!(dave.welcome().online, ["alice", "bob", "carol"]);
    assert_eq!(dave.welcome().online_count, 4);
    assert_eq!(next_presence(&mut alice_events).await, members("lobby", 4));
    assert_eq!(next_presence(&mut dave_events).await, members("lobby", 4));

    // Leaving a large room is announced as its new size too, ahead of the next message.
    dave.call(Quit {}).await.unwrap();
    carol
        .call(Say {
            room: "lobby".into(),
            text: "still here".into(),
        })
        .await
        .unwrap();
    assert_eq!(next_presence(&mut alice_events).await, members("lobby", 3));
    assert!(matches!(
        next_presence(&mut alice_events).await,
        Event::Message(message) if message.text == "still here"
    ));

    // At the limit again, departures are named as before.
    part_room(&carol, "lobby").await;
    assert_eq!(
        next_presence(&mut alice_events).await,
        Event::Part(Departure {
            room: "lobby".into(),
            users: vec!["carol".into()],
            reason: PartReason::Part,
        })
    );
    let (_erin, _erin_events) = server.join("erin").await;
    assert_eq!(
        next_presence(&mut alice_events).await,
        Event::Join(Presence {
            room: "lobby".into(),
            users: vec!["erin".into()],
        })
    );
}

#[tokio::test]
async fn a_room_filling_at_once_names_nobody_once_large() {
    let server = small_roster().await;
    let (_alice, alice_events) = server.join("alice").await;
    let names: Vec<String> = (0..40).map(|i| format!("u{i:02}")).collect();
    let arrivals = futures_util::future::join_all(names.iter().map(|name| server.join(name))).await;

    // Every member, newcomers included, ends up knowing the room's size; names go out only
    // while the room is within the limit.
    let mut clients = Vec::new();
    let mut views = vec![alice_events];
    for (client, events) in arrivals {
        assert!(client.welcome().online.len() <= 3);
        clients.push(client);
        views.push(events);
    }
    for events in &mut views {
        loop {
            match next_presence(events).await {
                Event::Members(Members { count: 41, .. }) => break,
                Event::Members(_) => {}
                Event::Join(Presence { users, .. }) => assert!(users.len() < 3, "{users:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}
