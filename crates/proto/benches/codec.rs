//! Codec micro-benchmarks: frames encoded and decoded per second, for the frames that dominate
//! real traffic (a room message fanned out, a request read by the server, a file chunk).
//! Run with `cargo bench -p parley-proto`; see docs/benchmarks.md.

#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use parley_proto::event::{Event, RoomMessage};
use parley_proto::reply::event_frame;
use parley_proto::{Frame, FrameCodec, Request, ServerMessage, control_frame};
use serde_json::json;
use std::hint::black_box;
use tokio_util::codec::Decoder;

/// A 100-byte message to a room, as the server broadcasts it.
fn message_event() -> Event {
    Event::Message(RoomMessage {
        id: 123_456,
        ts: 1_795_000_000_000,
        room: "lobby".into(),
        from: "alice".into(),
        text: "x".repeat(100),
    })
}

/// `count` copies of `frame` back to back, as a socket read delivers them.
fn stream_of(frame: &[u8], count: usize) -> BytesMut {
    let mut stream = BytesMut::with_capacity(frame.len() * count);
    for _ in 0..count {
        stream.extend_from_slice(frame);
    }
    stream
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(1));
    let event = message_event();
    group.bench_function("message event (JSON + header)", |b| {
        b.iter(|| event_frame(black_box(&event)))
    });
    let say = json!({"type": "say", "id": 7, "room": "lobby", "text": "x".repeat(100)});
    group.bench_function("say request (JSON + header)", |b| {
        b.iter(|| control_frame(black_box(&say)))
    });
    let chunk = Frame::Data {
        transfer: 1,
        payload: Bytes::from(vec![7u8; 256 * 1024]),
    };
    group.throughput(Throughput::Bytes(256 * 1024));
    group.bench_function("256 KiB data frame", |b| {
        let mut buf = BytesMut::with_capacity(300 * 1024);
        b.iter(|| {
            buf.clear();
            black_box(&chunk).encode(&mut buf);
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    const BATCH: usize = 1000;
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(BATCH as u64));
    let message = event_frame(&message_event());
    group.bench_function("message event frames (framing only)", |b| {
        let stream = stream_of(&message, BATCH);
        b.iter(|| {
            let mut src = stream.clone();
            let mut codec = FrameCodec::client();
            while let Some(frame) = codec.decode(&mut src).unwrap() {
                black_box(frame);
            }
        })
    });
    group.bench_function("message events (framing + ServerMessage)", |b| {
        let stream = stream_of(&message, BATCH);
        b.iter(|| {
            let mut src = stream.clone();
            let mut codec = FrameCodec::client();
            while let Some(Frame::Control(json)) = codec.decode(&mut src).unwrap() {
                black_box(ServerMessage::decode(&json).unwrap());
            }
        })
    });
    let say =
        control_frame(&json!({"type": "say", "id": 7, "room": "lobby", "text": "x".repeat(100)}));
    group.bench_function("say requests (framing + Request)", |b| {
        let stream = stream_of(&say, BATCH);
        b.iter(|| {
            let mut src = stream.clone();
            let mut codec = FrameCodec::server();
            while let Some(Frame::Control(json)) = codec.decode(&mut src).unwrap() {
                black_box(Request::decode(&json).unwrap());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
