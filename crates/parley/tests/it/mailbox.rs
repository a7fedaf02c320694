//! Messages kept for a registered user who is offline: a burst of them reaches its recipient
//! whole, at the pace it reads, without cutting it off as too slow.

use futures_util::future::join_all;
use parley_client::{ClientEvent, ConnectOptions};
use parley_proto::event::Event;
use parley_proto::request::Msg;

use crate::support::*;

fn with_password(server: &TestServer, name: &str, password: &str) -> ConnectOptions {
    ConnectOptions {
        password: Some(password.into()),
        ..server.options(name)
    }
}

/// The attack of issue 23, scaled: 60 messages of 4,000 bytes, 240 KB, to a recipient whose
/// outgoing queue holds 128 KiB. Pushed all at once at sign-in, they overflowed it, and the
/// recipient was cut off with every kept message already gone, a friend's among them.
#[tokio::test]
async fn a_burst_of_kept_messages_reaches_its_recipient_whole() {
    let server = TestServer::with_config(Config {
        max_queue_bytes: 128 * 1024,
        // The burst is sent as fast as the test can: flood control would only slow it.
        flood: None,
        ..Config::default()
    })
    .await;
    register(&server, "bob", "bob's password").await;
    let (alice, _alice_events) = server.join("alice").await;
    let friend = alice
        .call(Msg {
            to: "bob".into(),
            text: "a real message".into(),
        })
        .await
        .unwrap();
    assert!(friend.queued);
    let (mallory, _mallory_events) = server.join("mallory").await;
    let burst = (0..60).map(|i| {
        mallory.call(Msg {
            to: "bob".into(),
            text: format!("{i:04}{}", "x".repeat(3996)),
        })
    });
    let sent = within("the burst", join_all(burst)).await;
    let mut expected: Vec<u64> = vec![friend.id];
    expected.extend(sent.into_iter().map(|sent| sent.unwrap().id));

    let options = with_password(&server, "bob", "bob's password");
    let (bob, mut bob_events) = parley_client::Client::connect(&options).await.unwrap();
    let mut got = Vec::new();
    while got.len() < expected.len() {
        let id = wait_for(&mut bob_events, |e| match e {
            ClientEvent::Server(Event::Private(p)) => Some(p.id),
            _ => None,
        })
        .await;
        got.push(id);
    }
    assert_eq!(got, expected, "every kept message, oldest first, once");
    bob.quit().await.unwrap();

    // Delivered and marked so: the next sign-in brings only what is new.
    let (_bob, mut bob_events) = parley_client::Client::connect(&options).await.unwrap();
    alice
        .call(Msg {
            to: "bob".into(),
            text: "now live".into(),
        })
        .await
        .unwrap();
    let next = wait_for(&mut bob_events, |e| match e {
        ClientEvent::Server(Event::Private(p)) => Some(p.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(next, "now live");
}

/// One guest pipelining messages to an offline user gets `mailbox_full` past its share, a
/// quarter of the mailbox, while another sender may still leave messages until it is full.
#[tokio::test]
async fn a_mailbox_is_bounded_and_one_sender_holds_at_most_a_quarter() {
    let server = TestServer::with_config(Config {
        mailbox_max: 8,
        // Pipelined as fast as the test can: flood control would only slow it.
        flood: None,
        ..Config::default()
    })
    .await;
    register(&server, "bob", "bob's password").await;
    let (mallory, _mallory_events) = server.join("mallory").await;
    let burst = (0..10).map(|i| {
        mallory.call(Msg {
            to: "bob".into(),
            text: format!("spam {i}"),
        })
    });
    let results = within("the burst", join_all(burst)).await;
    let kept = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(kept, 2, "a quarter of 8, however fast they come");
    for result in results.into_iter().skip(2) {
        assert_refused(result, parley_proto::ErrorCode::MailboxFull);
    }
    // Others may still leave messages, until the mailbox holds its 8.
    for sender in ["alice", "carol", "dave"] {
        let (client, _events) = server.join(sender).await;
        for i in 0..2 {
            let sent = client
                .call(Msg {
                    to: "bob".into(),
                    text: format!("from {sender} {i}"),
                })
                .await
                .unwrap();
            assert!(sent.queued);
        }
    }
    let (erin, _events) = server.join("erin").await;
    let full = erin
        .call(Msg {
            to: "bob".into(),
            text: "one too many".into(),
        })
        .await;
    assert_refused(full, parley_proto::ErrorCode::MailboxFull);
}

/// The bytes bound works as the count does.
#[tokio::test]
async fn a_mailbox_is_bounded_in_bytes() {
    let server = TestServer::with_config(Config {
        mailbox_max_bytes: 16_000,
        ..Config::default()
    })
    .await;
    register(&server, "bob", "bob's password").await;
    let (mallory, _mallory_events) = server.join("mallory").await;
    let long = |i: usize| Msg {
        to: "bob".into(),
        text: format!("{i}{}", "x".repeat(3_000)),
    };
    assert!(mallory.call(long(0)).await.unwrap().queued);
    assert_refused(
        mallory.call(long(1)).await,
        parley_proto::ErrorCode::MailboxFull,
    );
    let (alice, _alice_events) = server.join("alice").await;
    assert!(alice.call(long(2)).await.unwrap().queued);
}
