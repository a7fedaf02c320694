//! User names: taken and invalid names are refused with the reason, never a hang.

use parley_client::{Client, ConnectError};
use parley_proto::ErrorCode;

use crate::support::*;

async fn refusal(server: &TestServer, name: &str) -> (ErrorCode, String) {
    match tokio::time::timeout(WAIT, Client::connect(&server.options(name))).await {
        Ok(Err(ConnectError::Refused { code, message, .. })) => (code, message),
        Ok(Ok(_)) => panic!("{name:?} was accepted"),
        Ok(Err(other)) => panic!("{name:?}: unexpected error {other}"),
        Err(_) => panic!("{name:?}: sign-in hung"),
    }
}

#[tokio::test]
async fn a_taken_name_is_refused_without_regard_to_case() {
    let server = TestServer::start().await;
    let (_alice, _events) = server.join("Alice").await;
    for name in ["Alice", "alice", "ALICE"] {
        let (code, message) = refusal(&server, name).await;
        assert_eq!(code, ErrorCode::NameTaken);
        assert!(message.contains("taken"), "{message}");
    }
}

#[tokio::test]
async fn a_name_is_free_again_once_its_user_leaves() {
    let server = TestServer::start().await;
    let (alice, mut events) = server.join("alice").await;
    alice.quit().await.unwrap();
    wait_for(&mut events, |e| {
        matches!(e, parley_client::ClientEvent::Closed(_)).then_some(())
    })
    .await;
    server.join("alice").await;
}

#[tokio::test]
async fn invalid_names_are_refused_with_the_reason() {
    let server = TestServer::start().await;
    for (name, reason) in [
        ("", "empty"),
        ("has space", "' '"),
        ("a".repeat(33).as_str(), "at most 32"),
        ("semi;colon", "';'"),
        ("émile", "'é'"),
        ("bell\u{7}", "'\\u{7}'"),
    ] {
        let (code, message) = refusal(&server, name).await;
        assert_eq!(code, ErrorCode::InvalidName, "{name:?}");
        assert!(message.contains(reason), "{name:?}: {message}");
    }
    // The limits themselves are fine.
    server.join(&"a".repeat(32)).await;
    server.join("x").await;
    server.join("dot.dash-under_9").await;
}
