//! Flood control: a burst, then a steady rate; what goes beyond is delayed, and a client that
//! keeps going is disconnected as `flooding`, while everyone else chats on undisturbed.

use std::time::{Duration, Instant};

use parley_proto::event::{Event, PartReason};
use parley_proto::request::{History, Say};
use parley_server::FloodLimit;
use serde_json::{Value, json};

use parley_client::ClientEvent;

use crate::support::*;

/// Fast enough for a test to see the delay in well under a second.
const LIMIT: FloodLimit = FloodLimit {
    rate: 20.0,
    burst: 5,
};

async fn server(flood: Option<FloodLimit>) -> TestServer {
    TestServer::with_config(Config {
        flood,
        ..Config::default()
    })
    .await
}

/// A `say` to the lobby as a raw control frame.
fn say(id: u64, text: &str) -> Value {
    json!({"id": id, "type": "say", "room": "lobby", "text": text})
}

/// Reads replies until `count` have come (events are skipped); returns them by request id,
/// with when each came.
async fn replies(raw: &mut RawConn, count: usize) -> Vec<(u64, Value, Instant)> {
    let mut got = Vec::new();
    while got.len() < count {
        let message = raw.recv_json().await;
        if matches!(message["type"].as_str(), Some("ok" | "error")) {
            let id = message["id"]
                .as_u64()
                .expect("a reply has its request's id");
            got.push((id, message, Instant::now()));
        }
    }
    got
}

#[tokio::test]
async fn requests_beyond_the_burst_are_delayed_in_order_not_refused() {
    let server = server(Some(LIMIT)).await;
    let mut raw = server.raw().await;
    raw.hello("typist").await;
    // The burst and ten more, all at once: ten are over the allowance, within the delay it
    // grants (20 a second for 10 s).
    let sent = Instant::now();
    let total = LIMIT.burst as u64 + 10;
    for id in 1..=total {
        raw.send_json(say(id, &format!("line {id}"))).await;
    }
    let got = replies(&mut raw, total as usize).await;
    for (at, (id, reply, _)) in got.iter().enumerate() {
        assert_eq!(*id, at as u64 + 1, "replies keep the order of requests");
        assert_eq!(
            reply["type"], "ok",
            "a delayed request is carried out: {reply}"
        );
    }
    // The last ten waited for the rate: the tenth no sooner than 10 intervals after the burst.
    let last = got.last().unwrap().2.duration_since(sent);
    let least = Duration::from_secs_f64(10.0 / LIMIT.rate) - Duration::from_millis(60);
    assert!(
        last >= least,
        "ten requests over the allowance were all done after {last:?}, sooner than the rate allows ({least:?})"
    );
}

#[tokio::test]
async fn a_client_that_keeps_flooding_is_disconnected_and_the_others_see_why() {
    let server = server(Some(LIMIT)).await;
    let (watcher, mut watcher_events) = server.join("watcher").await;
    let mut raw = server.raw().await;
    raw.hello("flooder").await;
    await_arrivals(&mut watcher_events, "lobby", &["flooder"]).await;

    // As fast as it can, far past what the server delays.
    let started = Instant::now();
    let mut confirmed = 0;
    let bye = 'flood: {
        for id in 1..=1000u64 {
            if raw
                .write
                .try_write(&parley_proto::control_frame(&say(id, &"x".repeat(1000))))
                .is_err()
            {
                break;
            }
        }
        loop {
            let message = raw.recv_json().await;
            match message["type"].as_str() {
                Some("ok") => confirmed += 1,
                Some("bye") => break 'flood message,
                _ => {}
            }
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(bye["code"], "flooding", "{bye}");
    raw.expect_closed().await;

    // The others see it leave, as anyone who is disconnected.
    let reason = wait_for(&mut watcher_events, |event| match event {
        ClientEvent::Server(Event::Part(part)) if part.users == ["flooder"] => Some(part.reason),
        _ => None,
    })
    .await;
    assert_eq!(reason, PartReason::Flooding);

    // What it got stored is its allowance: the burst and the rate over the time it flooded.
    let allowance = LIMIT.burst as usize + (LIMIT.rate * elapsed.as_secs_f64()).ceil() as usize;
    assert!(
        confirmed <= allowance,
        "{confirmed} messages of a flood were carried out in {elapsed:?}; the allowance is {allowance}"
    );
    let history = watcher
        .call(History {
            room: Some("lobby".into()),
            with: None,
            before: None,
            limit: 1000,
        })
        .await
        .unwrap();
    let stored = history
        .messages
        .iter()
        .filter(|m| m.from == "flooder")
        .count();
    assert_eq!(
        stored, confirmed,
        "history holds what was confirmed, no more"
    );
}

#[tokio::test]
async fn one_client_flooding_does_not_hold_back_anyone_else() {
    let server = server(Some(LIMIT)).await;
    let (bob, _bob_events) = server.join("bob").await;
    let mut raw = server.raw().await;
    raw.hello("flooder").await;
    // The flooder keeps its delayed backlog full, just short of being disconnected, and so
    // waits half a second on each request, while bob says a few things.
    for id in 1..=LIMIT.burst as u64 + 9 {
        raw.send_json(say(id, "spam")).await;
    }
    // Its replies are read as they come, beside bob's.
    let flooder = tokio::spawn(async move { replies(&mut raw, LIMIT.burst as usize + 9).await });
    for n in 0..LIMIT.burst {
        within(
            "bob's message",
            bob.call(Say {
                room: "lobby".into(),
                text: format!("bob {n}"),
            }),
        )
        .await
        .unwrap();
    }
    let bob_done = Instant::now();
    // Bob was done while the flooder's requests still waited their turn (9 at 20 a second).
    let flooders = within("the flooder's replies", flooder).await.unwrap();
    let flooder_done = flooders.last().unwrap().2;
    assert!(
        bob_done < flooder_done,
        "bob's messages waited behind the flooder's delayed ones"
    );
    for (_, reply, _) in &flooders {
        assert_eq!(reply["type"], "ok", "{reply}");
    }
}

#[tokio::test]
async fn flood_control_off_lets_a_client_send_as_fast_as_it_can() {
    let server = server(None).await;
    let mut raw = server.raw().await;
    raw.hello("bench").await;
    for id in 1..=500u64 {
        raw.send_json(say(id, "fast")).await;
    }
    let got = replies(&mut raw, 500).await;
    assert!(got.iter().all(|(_, reply, _)| reply["type"] == "ok"));
}
