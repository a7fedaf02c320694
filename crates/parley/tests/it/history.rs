//! History: every message is stored before its sender is told it was sent, so it survives a
//! crash; a room's last messages greet whoever enters it, marked as history; older ones can be
//! paged through and searched, but only by those who may see them.

use parley_client::{Client, ClientEvent, ConnectOptions, Events};
use parley_proto::event::{Backlog, Event};
use parley_proto::request::{History, Msg, Say, Search};

use crate::support::*;

async fn say(client: &Client, room: &str, text: &str) {
    client
        .call(Say {
            room: room.into(),
            text: text.into(),
        })
        .await
        .unwrap();
}

async fn backlog(events: &mut Events) -> Backlog {
    wait_for(events, |e| match e {
        ClientEvent::Server(Event::Backlog(b)) => Some(b.clone()),
        _ => None,
    })
    .await
}

fn texts(messages: &[parley_proto::event::Stored]) -> Vec<&str> {
    messages.iter().map(|m| m.text.as_str()).collect()
}

#[tokio::test]
async fn acknowledged_messages_survive_kill_9_and_a_restart() {
    let (server, addr) = Proc::server().await;
    let options = ConnectOptions::new("127.0.0.1", addr.port(), "alice").plain();
    let (alice, _events) = Client::connect(&options).await.unwrap();
    for i in 0..100 {
        say(&alice, "lobby", &format!("message {i}")).await;
    }
    // Every one of them was acknowledged; now the server dies without a chance to flush.
    signal(server.pid(), "KILL");
    let Proc { mut child, dir, .. } = server;
    let _ = child.wait().await;

    let mut again = Proc::spawn_in(
        dir,
        &["server", "0", "--host", "127.0.0.1", "--backlog", "100"],
    );
    let line = again.expect_line(|l| l.contains("listening on")).await;
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    let options = ConnectOptions::new("127.0.0.1", addr.port(), "bob").plain();
    let (_bob, mut bob_events) = Client::connect(&options).await.unwrap();
    let backlog = backlog(&mut bob_events).await;
    let expected: Vec<String> = (0..100).map(|i| format!("message {i}")).collect();
    assert_eq!(texts(&backlog.messages), expected);
    assert!(
        backlog
            .messages
            .iter()
            .all(|m| m.from == "alice" && m.room.as_deref() == Some("lobby"))
    );

    // New messages continue the ids after the stored ones.
    let options = ConnectOptions::new("127.0.0.1", addr.port(), "carol").plain();
    let (carol, _events) = Client::connect(&options).await.unwrap();
    let sent = carol
        .call(Say {
            room: "lobby".into(),
            text: "after".into(),
        })
        .await
        .unwrap();
    assert!(sent.id > backlog.messages.last().unwrap().id);
}

#[tokio::test]
async fn entering_a_room_shows_its_last_messages_as_history() {
    let server = TestServer::with_config(Config {
        backlog: 3,
        ..Config::default()
    })
    .await;
    let (alice, _alice_events) = server.join("alice").await;
    join_room(&alice, "rust").await;
    for text in ["one", "two", "three", "four"] {
        say(&alice, "lobby", text).await;
    }
    say(&alice, "rust", "borrowck").await;

    let (bob, mut bob_events) = server.join("bob").await;
    let lobby = backlog(&mut bob_events).await;
    assert_eq!(
        (lobby.room.as_str(), texts(&lobby.messages)),
        ("lobby", vec!["two", "three", "four"])
    );
    join_room(&bob, "rust").await;
    let rust = backlog(&mut bob_events).await;
    assert_eq!(
        (rust.room.as_str(), texts(&rust.messages)),
        ("rust", vec!["borrowck"])
    );

    // A room without messages sends no backlog: the next event is a live message.
    join_room(&bob, "quiet").await;
    join_room(&alice, "quiet").await;
    say(&alice, "quiet", "first words").await;
    let next = wait_for(&mut bob_events, |e| match e {
        ClientEvent::Server(Event::Backlog(b)) => Some(format!("backlog {}", b.room)),
        ClientEvent::Server(Event::Message(m)) => Some(format!("live {}", m.text)),
        _ => None,
    })
    .await;
    assert_eq!(next, "live first words");
}

#[tokio::test]
async fn each_newcomer_sees_the_backlog_as_it_is_when_entering() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    say(&alice, "lobby", "one").await;
    // The server keeps the lobby's backlog for the next newcomers: it must not go stale.
    for name in ["bob", "carol"] {
        let (_client, mut events) = server.join(name).await;
        assert_eq!(texts(&backlog(&mut events).await.messages), ["one"]);
    }
    say(&alice, "lobby", "two").await;
    let (_dave, mut dave_events) = server.join("dave").await;
    assert_eq!(
        texts(&backlog(&mut dave_events).await.messages),
        ["one", "two"]
    );

    // A room that empties is gone, but its history greets whoever makes it again.
    join_room(&alice, "temp").await;
    say(&alice, "temp", "left behind").await;
    part_room(&alice, "temp").await;
    let (erin, mut erin_events) = server.join("erin").await;
    backlog(&mut erin_events).await;
    join_room(&erin, "temp").await;
    let temp = backlog(&mut erin_events).await;
    assert_eq!(
        (temp.room.as_str(), texts(&temp.messages)),
        ("temp", vec!["left behind"])
    );
}

#[tokio::test]
async fn history_pages_back_and_private_history_stays_private() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    let (carol, _carol_events) = server.join("carol").await;
    for i in 0..30 {
        say(&alice, "lobby", &format!("m{i}")).await;
    }
    let page = |before| History {
        room: Some("lobby".into()),
        with: None,
        before,
        limit: 10,
    };
    let last = bob.call(page(None)).await.unwrap().messages;
    assert_eq!(
        texts(&last),
        (20..30).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    let earlier = bob.call(page(Some(last[0].id))).await.unwrap().messages;
    assert_eq!(
        texts(&earlier),
        (10..20).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );

    alice
        .call(Msg {
            to: "bob".into(),
            text: "just us".into(),
        })
        .await
        .unwrap();
    bob.call(Msg {
        to: "alice".into(),
        text: "indeed".into(),
    })
    .await
    .unwrap();
    carol
        .call(Msg {
            to: "bob".into(),
            text: "hi bob".into(),
        })
        .await
        .unwrap();
    let with_alice = History {
        room: None,
        with: Some("ALICE".into()),
        before: None,
        limit: 10,
    };
    let private = bob.call(with_alice).await.unwrap().messages;
    assert_eq!(texts(&private), ["just us", "indeed"]);
    let carol_view = History {
        room: None,
        with: Some("alice".into()),
        before: None,
        limit: 10,
    };
    assert!(carol.call(carol_view).await.unwrap().messages.is_empty());

    // A room one is not in stays closed.
    join_room(&alice, "secret").await;
    say(&alice, "secret", "classified").await;
    let peek = History {
        room: Some("secret".into()),
        with: None,
        before: None,
        limit: 10,
    };
    assert_refused(carol.call(peek).await, parley_proto::ErrorCode::NotInRoom);
}

#[tokio::test]
async fn search_finds_only_what_the_user_may_see() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    let (carol, _carol_events) = server.join("carol").await;
    say(&alice, "lobby", "the deploy went fine").await;
    join_room(&alice, "ops").await;
    say(&alice, "ops", "deploy keys rotated").await;
    alice
        .call(Msg {
            to: "bob".into(),
            text: "deploy again tonight?".into(),
        })
        .await
        .unwrap();

    let found = |words: &str| Search {
        words: words.into(),
        limit: 10,
    };
    let bobs = bob.call(found("deploy")).await.unwrap().messages;
    assert_eq!(
        texts(&bobs),
        ["deploy again tonight?", "the deploy went fine"]
    );
    let carols = carol.call(found("deploy")).await.unwrap().messages;
    assert_eq!(texts(&carols), ["the deploy went fine"]);
    assert_eq!(
        texts(&alice.call(found("keys deploy")).await.unwrap().messages),
        ["deploy keys rotated"]
    );
}

#[tokio::test]
async fn the_line_client_shows_pages_and_searches_history() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    for i in 0..25 {
        say(&alice, "lobby", &format!("old {i}")).await;
    }
    let mut bob = Proc::client("bob", server.addr).await;
    bob.expect_line(|l| l == "-- the last 25 messages of #lobby --")
        .await;
    bob.expect_line(|l| l.starts_with("history ") && l.ends_with("[#lobby] alice: old 24"))
        .await;
    bob.send("/history 5").await;
    bob.expect_line(|l| l.ends_with("No older messages.")).await;

    let mut carol = Proc::spawn(&[
        "client",
        "carol",
        "127.0.0.1",
        &server.addr.port().to_string(),
    ]);
    carol.expect_line(|l| l.starts_with("Connected to")).await;
    carol.expect_line(|l| l.ends_with("alice: old 24")).await;
    bob.send("/search old 3").await;
    bob.expect_line(|l| l == "Found 1 messages, newest first:")
        .await;
    bob.expect_line(|l| l.ends_with("[#lobby] alice: old 3"))
        .await;
}

#[tokio::test]
async fn a_guest_name_does_not_inherit_private_history() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (bob, mut bob_events) = server.join("bob").await;
    alice
        .call(Msg {
            to: "bob".into(),
            text: "for the first bob".into(),
        })
        .await
        .unwrap();
    bob.quit().await.unwrap();
    wait_for(&mut bob_events, |e| {
        matches!(e, ClientEvent::Closed(_)).then_some(())
    })
    .await;

    // Another person takes the guest name "bob": yesterday's private messages are not theirs.
    let (new_bob, _events) = server.join("bob").await;
    let with_alice = History {
        room: None,
        with: Some("alice".into()),
        before: None,
        limit: 10,
    };
    assert!(
        new_bob
            .call(with_alice.clone())
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    let found = new_bob
        .call(Search {
            words: "first".into(),
            limit: 10,
        })
        .await
        .unwrap();
    assert!(found.messages.is_empty());
    alice
        .call(Msg {
            to: "bob".into(),
            text: "for the second bob".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        texts(&new_bob.call(with_alice).await.unwrap().messages),
        ["for the second bob"]
    );
}

#[tokio::test]
async fn long_histories_are_cut_to_fit_rather_than_cut_the_client_off() {
    let server = TestServer::with_config(Config {
        backlog: 500,
        flood: None,
        ..Config::default()
    })
    .await;
    let (alice, _alice_events) = server.join("alice").await;
    let long = "x".repeat(4000);
    for _ in 0..300 {
        say(&alice, "lobby", &long).await;
    }
    // 1.2 MB of messages would overflow a client's queue: the newest that fit are sent.
    let (bob, mut bob_events) = server.join("bob").await;
    let backlog = backlog(&mut bob_events).await;
    assert!(
        !backlog.messages.is_empty() && backlog.messages.len() < 300,
        "{}",
        backlog.messages.len()
    );
    let page = History {
        room: Some("lobby".into()),
        with: None,
        before: None,
        limit: 500,
    };
    let messages = bob.call(page).await.unwrap().messages;
    assert!(!messages.is_empty() && messages.len() < 300);
    assert_eq!(
        messages.last().unwrap().id,
        backlog.messages.last().unwrap().id,
        "the newest kept"
    );
    let huge = History {
        room: Some("lobby".into()),
        with: None,
        before: Some(u64::MAX),
        limit: 1,
    };
    assert_eq!(bob.call(huge).await.unwrap().messages.len(), 1);
    // Still connected.
    bob.call(parley_proto::request::Users::default())
        .await
        .unwrap();
}

/// `--no-history`: messages are delivered and confirmed, but nothing of them is kept.
#[tokio::test]
async fn without_history_nothing_is_kept() {
    let server = TestServer::with_config(Config {
        keep_history: false,
        ..Config::default()
    })
    .await;
    let (alice, _alice_events) = server.join("alice").await;
    let (_bob, mut bob_events) = server.join("bob").await;
    say(&alice, "lobby", "gone with the wind").await;
    let heard = wait_for(&mut bob_events, |event| match event {
        ClientEvent::Server(Event::Message(message)) => Some(message.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(heard, "gone with the wind");
    let kept = alice
        .call(History {
            room: Some("lobby".into()),
            ..History::default()
        })
        .await
        .unwrap();
    assert!(kept.messages.is_empty(), "{kept:?}");
}
