//! The server stopping: a clean shutdown is announced to every client; an abrupt loss is
//! reported differently; either way the line client exits non-zero.

use parley_client::{ClientEvent, Closed};
use parley_proto::ErrorCode;

use crate::support::*;

#[tokio::test]
async fn every_client_is_told_when_the_server_shuts_down() {
    let server = TestServer::start().await;
    let (alice, mut alice_events) = server.join("alice").await;
    let (_bob, mut bob_events) = server.join("bob").await;
    next_server_event(&mut alice_events).await; // bob joined
    server.shutdown.cancel();
    for events in [&mut alice_events, &mut bob_events] {
        match next_event(events).await {
            ClientEvent::Closed(Closed::ByServer(bye)) => {
                assert_eq!(bye.code, ErrorCode::Shutdown);
                assert!(bye.message.contains("shutting down"));
            }
            other => panic!("expected the shutdown notice, got {other:?}"),
        }
    }
    tokio::time::timeout(WAIT, server.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // A request on the closed connection fails at once rather than waiting forever.
    let late =
        tokio::time::timeout(WAIT, alice.call(parley_proto::request::Users::default())).await;
    assert_eq!(late.unwrap(), Err(parley_client::RequestError::Closed));
}

#[tokio::test]
async fn sigterm_stops_the_server_cleanly_and_the_client_says_so() {
    stop_cleanly_on("TERM").await;
}

#[tokio::test]
async fn ctrl_c_stops_the_server_cleanly_and_the_client_says_so() {
    stop_cleanly_on("INT").await;
}

async fn stop_cleanly_on(signal_name: &str) {
    let (mut server, addr) = Proc::server().await;
    let client = Proc::client("alice", addr).await;
    let connected = server.expect_line(|l| l.contains("connected")).await;
    assert!(
        connected.contains("127.0.0.1:"),
        "the connect line names the peer: {connected}"
    );

    signal(server.pid(), signal_name);
    let (code, stdout, stderr) = client.finish().await;
    assert_eq!(code, 3, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stderr.contains("is shutting down"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let (code, stdout, stderr) = server.finish().await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("alice (127.0.0.1:") && stdout.contains(") left"),
        "{stdout}"
    );
}

#[tokio::test]
async fn an_abrupt_loss_is_reported_differently() {
    let (server, addr) = Proc::server().await;
    let client = Proc::client("alice", addr).await;
    signal(server.pid(), "KILL");
    let (code, stdout, stderr) = client.finish().await;
    assert_eq!(code, 3, "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("Lost the connection to 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("shutting down"), "{stderr}");
    drop(server);
}
