//! Leaving by command, by end of input, by a killed process and by a lost network: everyone
//! left is told, with the reason, within a few seconds.

use std::time::Duration;

use parley_client::{ClientEvent, Closed};
use parley_proto::event::{Departure, Event, PartReason};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::*;

async fn departure(events: &mut parley_client::Events) -> Departure {
    wait_for(events, |event| match event {
        ClientEvent::Server(Event::Part(d)) => Some(d.clone()),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn quit_is_announced_as_quit() {
    let server = TestServer::start().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let (bob, mut bob_events) = server.join("bob").await;
    bob.quit().await.unwrap();
    assert_eq!(
        departure(&mut alice_events).await,
        Departure {
            room: "lobby".into(),
            users: vec!["bob".into()],
            reason: PartReason::Quit
        }
    );
    assert_eq!(
        next_event(&mut bob_events).await,
        ClientEvent::Closed(Closed::Quit)
    );
}

#[tokio::test]
async fn a_closed_connection_is_announced_as_lost() {
    let server = TestServer::start().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let mut bob = server.raw().await;
    bob.hello("bob").await;
    drop(bob);
    let gone = departure(&mut alice_events).await;
    assert_eq!(
        (gone.users, gone.reason),
        (vec!["bob".to_owned()], PartReason::Lost)
    );
}

#[tokio::test]
async fn a_killed_client_process_is_announced_as_lost() {
    let server = TestServer::start().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let bob = Proc::client("bob", server.addr).await;
    signal(bob.pid(), "KILL");
    let gone = departure(&mut alice_events).await;
    assert_eq!(
        (gone.users, gone.reason),
        (vec!["bob".to_owned()], PartReason::Lost)
    );
}

#[tokio::test]
async fn end_of_input_quits_the_line_client() {
    let server = TestServer::start().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let mut bob = Proc::client("bob", server.addr).await;
    bob.send("last words").await;
    bob.close_stdin();
    let (code, stdout, stderr) = bob.finish().await;
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("[#lobby] bob: last words"), "{stdout}");
    match next_server_event(&mut alice_events).await {
        Event::Join(_) => {}
        other => panic!("{other:?}"),
    }
    match next_server_event(&mut alice_events).await {
        Event::Message(m) => assert_eq!(m.text, "last words", "sent before quitting"),
        other => panic!("{other:?}"),
    }
    assert_eq!(departure(&mut alice_events).await.reason, PartReason::Quit);
}

/// A TCP relay that can be cut: after `cut`, it stops forwarding in both directions but keeps
/// both sockets open, which is what a lost network looks like to each end (no FIN, no RST).
async fn relay(server: std::net::SocketAddr, cut: CancellationToken) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut inbound, _) = listener.accept().await.unwrap();
        let mut outbound = TcpStream::connect(server).await.unwrap();
        tokio::select! {
            _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = cut.cancelled() => {}
        }
        // Hold both ends open, silently, until the test is over.
        tokio::time::sleep(WAIT * 3).await;
        drop((inbound, outbound));
    });
    addr
}

#[tokio::test]
async fn a_lost_network_is_detected_by_keepalive_on_both_sides() {
    let server = TestServer::with_config(Config {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(700),
        ..Config::default()
    })
    .await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let cut = CancellationToken::new();
    let through = relay(server.addr, cut.clone()).await;
    let options = parley_client::ConnectOptions::new("127.0.0.1", through.port(), "bob").plain();
    let (bob, mut bob_events) = parley_client::Client::connect(&options).await.unwrap();
    assert_eq!(bob.welcome().keepalive_ms, 200);

    // While the network is up, idle time alone does not disconnect anyone.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    match next_server_event(&mut alice_events).await {
        Event::Join(j) => assert_eq!(j.users, ["bob"]),
        other => panic!("{other:?}"),
    }
    assert_quiet(&mut alice_events).await;

    cut.cancel();
    let gone = departure(&mut alice_events).await;
    assert_eq!(
        (gone.users, gone.reason),
        (vec!["bob".to_owned()], PartReason::Timeout)
    );
    match next_event(&mut bob_events).await {
        ClientEvent::Closed(Closed::Lost(reason)) => {
            assert!(reason.contains("no answer"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

/// A relay that forwards each connection it accepts to `server` and can break the current one
/// abruptly, as a network outage followed by recovery would.
async fn breakable_relay(
    server: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::mpsc::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (breaker, mut breaks) = tokio::sync::mpsc::channel::<()>(4);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut outbound = TcpStream::connect(server).await.unwrap();
            tokio::select! {
                _ = copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = breaks.recv() => {}
            }
            // Dropping both ends breaks the connection for both sides.
        }
    });
    (addr, breaker)
}

#[tokio::test]
async fn the_line_client_reconnects_after_a_short_loss_and_catches_up() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (through, breaker) = breakable_relay(server.addr).await;
    let mut bob = Proc::client("bob", through).await;
    alice
        .call(parley_proto::request::Say {
            room: "lobby".into(),
            text: "before".into(),
        })
        .await
        .unwrap();
    bob.expect_line(|l| l == "[#lobby] alice: before").await;

    breaker.send(()).await.unwrap();
    // Said while bob is away: he must see these once back, and not "before" again.
    for text in ["missed one", "missed two"] {
        alice
            .call(parley_proto::request::Say {
                room: "lobby".into(),
                text: text.into(),
            })
            .await
            .unwrap();
    }
    bob.expect_line(|l| l.ends_with("[#lobby] alice: missed one"))
        .await;
    bob.expect_line(|l| l.ends_with("[#lobby] alice: missed two"))
        .await;
    bob.send("still here").await;
    bob.expect_line(|l| l == "[#lobby] bob: still here").await;
    assert!(
        !bob.seen
            .iter()
            .any(|l| l.ends_with("alice: before") && l.starts_with("history")),
        "what was seen before the loss was shown again: {:#?}",
        bob.seen
    );
}
