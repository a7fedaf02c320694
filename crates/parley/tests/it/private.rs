//! Private messages: only the recipient gets them, marked private with the sender's name.

use parley_client::RequestError;
use parley_proto::ErrorCode;
use parley_proto::event::{Event, Private};
use parley_proto::request::Msg;

use crate::support::*;

#[tokio::test]
async fn reaches_only_its_recipient() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (_bob, mut bob_events) = server.join("bob").await;
    let (_carol, mut carol_events) = server.join("carol").await;
    next_server_event(&mut bob_events).await; // carol joined

    let sent = alice
        .call(Msg {
            to: "BOB".into(),
            text: "just between us".into(),
        })
        .await
        .unwrap();
    assert_eq!(sent.to, "bob", "the recipient's own spelling comes back");
    assert_eq!(
        next_server_event(&mut bob_events).await,
        Event::Private(Private {
            id: sent.id,
            ts: sent.ts,
            from: "alice".into(),
            to: "bob".into(),
            text: "just between us".into(),
        })
    );
    assert_quiet(&mut carol_events).await;
}

#[tokio::test]
async fn an_unknown_or_departed_recipient_is_not_found() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = server.join("alice").await;
    let err = alice
        .call(Msg {
            to: "nobody".into(),
            text: "hello?".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RequestError::Refused {
            code: ErrorCode::NotFound,
            message: "No user named nobody is online.".into()
        }
    );

    let (bob, _bob_events) = server.join("bob").await;
    next_server_event(&mut alice_events).await; // bob joined
    bob.quit().await.unwrap();
    next_server_event(&mut alice_events).await; // bob quit
    let late = alice
        .call(Msg {
            to: "bob".into(),
            text: "too late".into(),
        })
        .await;
    assert_refused(late, ErrorCode::NotFound);
}
