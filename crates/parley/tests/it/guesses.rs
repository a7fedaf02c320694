//! Password guesses: guesses at one name wait in line, however many connections and addresses
//! make them, so the delay that failures earn holds for all of them; and a guess waiting in
//! line still counts against the handshake timeout.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use futures_util::StreamExt;
use parley_proto::{Frame, FrameCodec};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::support::*;

/// Connects to `server` from 127.0.0.`host`: each guesser has an address of its own, so the
/// per-address part of the throttle never slows it.
async fn connect_from(server: SocketAddr, host: u8) -> tokio::net::TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((Ipv4Addr::new(127, 0, 0, host), 0)))
        .unwrap();
    socket.connect(server).await.unwrap()
}

/// Signs in as `name` with a wrong password from 127.0.0.`host`, and returns the code of the
/// answer (an error reply or a `bye`) and when it came.
async fn guess(server: SocketAddr, host: u8, name: &str) -> (String, Instant) {
    let stream = connect_from(server, host).await;
    let (read, mut write) = stream.into_split();
    let mut frames = FramedRead::new(read, FrameCodec::client());
    let hello = json!({"id": 0, "type": "hello", "versions": [1], "name": name,
        "password": "a wrong guess"});
    write
        .write_all(&parley_proto::control_frame(&hello))
        .await
        .unwrap();
    loop {
        match frames.next().await {
            Some(Ok(Frame::Control(json))) => {
                let answer: Value = serde_json::from_slice(&json).unwrap();
                assert_ne!(answer["type"], "ok", "a wrong password was let in");
                return (answer["code"].as_str().unwrap().to_owned(), Instant::now());
            }
            Some(Ok(_)) => {}
            other => panic!("the connection ended without an answer: {other:?}"),
        }
    }
}

/// Starts `count` guesses at `name` at once, each from an address of its own, and returns
/// their answers in the order they came.
async fn guess_in_parallel(server: SocketAddr, name: &str, count: u8) -> Vec<(String, Instant)> {
    let guesses = (0..count).map(|i| {
        let name = name.to_owned();
        tokio::spawn(async move { guess(server, 2 + i, &name).await })
    });
    let mut answers = Vec::new();
    for guess in guesses.collect::<Vec<_>>() {
        answers.push(within("a guess's answer", guess).await.unwrap());
    }
    answers.sort_by_key(|(_, at)| *at);
    answers
}

#[tokio::test]
async fn guesses_at_one_name_are_checked_one_at_a_time_whatever_their_address() {
    let server = TestServer::with_config(Config {
        handshake_timeout: Duration::from_secs(30),
        ..Config::default()
    })
    .await;
    register(&server, "alice", "correct horse").await;
    let answers = guess_in_parallel(server.addr, "alice", 5).await;
    assert!(answers.iter().all(|(code, _)| code == "auth_failed"));
    // Each failure makes the next guess at the name wait: 250 ms after the first, doubling.
    // Guesses made together, from five addresses, are answered no faster than one after
    // another would be (a fifth less, for the test's own scheduling).
    let mut earned = Duration::from_millis(250);
    for pair in answers.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap >= earned * 4 / 5,
            "a guess answered {gap:?} after the one before, where failures earned {earned:?}; \
             answers at {:?}",
            answers
                .iter()
                .map(|(_, at)| *at - answers[0].1)
                .collect::<Vec<_>>()
        );
        earned *= 2;
    }
}

#[tokio::test]
async fn a_guess_waiting_in_line_meets_the_handshake_timeout() {
    let server = TestServer::with_config(Config {
        handshake_timeout: Duration::from_secs(2),
        ..Config::default()
    })
    .await;
    register(&server, "alice", "correct horse").await;
    let started = Instant::now();
    let answers = guess_in_parallel(server.addr, "alice", 6).await;
    let checked = answers.iter().filter(|(code, _)| code == "auth_failed");
    let timed_out = answers
        .iter()
        .filter(|(code, _)| code == "handshake_timeout");
    // Within 2 s the line allows four guesses (answered after 0, 0.25, 0.75 and 1.75 s); the
    // others wait until the handshake timeout ends them.
    assert!(checked.count() <= 4, "answers: {answers:?}");
    assert!(timed_out.count() >= 2, "answers: {answers:?}");
    let last = answers.last().unwrap().1 - started;
    assert!(
        last < Duration::from_secs(4),
        "the last answer came after {last:?}"
    );
}

#[tokio::test]
async fn guesses_waiting_in_line_are_told_of_a_shutdown() {
    use futures_util::stream::FuturesUnordered;

    let server = TestServer::with_config(Config {
        handshake_timeout: Duration::from_secs(30),
        ..Config::default()
    })
    .await;
    register(&server, "alice", "correct horse").await;
    let addr = server.addr;
    // Six in line would take 7.75 s to be answered, all but the first after a delay.
    let mut answers: FuturesUnordered<_> = (0..6)
        .map(|i| tokio::spawn(async move { guess(addr, 20 + i, "alice").await }))
        .collect();
    let (first, _) = within("the first answer", answers.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, "auth_failed");
    let stopped = Instant::now();
    server.shutdown.cancel();
    let mut told = 0;
    while let Some(answer) = within("an answer after the shutdown", answers.next()).await {
        let (code, _) = answer.unwrap();
        assert!(code == "shutdown" || code == "auth_failed", "{code}");
        told += usize::from(code == "shutdown");
    }
    assert!(
        told >= 4,
        "only {told} of the five waiting were told of the shutdown"
    );
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped.elapsed()
    );
}
