//! Any bytes a peer can send: the frame decoder must never panic, never hold more than its
//! limits, and whatever it accepts must decode (or be refused) as a request and as a server
//! message without panicking.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use parley_proto::{Frame, FrameCodec, Request, ServerMessage};
use tokio_util::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    for mut codec in [FrameCodec::server(), FrameCodec::client()] {
        // Feed the input in two pieces, as a socket might deliver it.
        let split = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
        let mut src = BytesMut::from(&data[..split]);
        let mut fed_rest = false;
        loop {
            match codec.decode(&mut src) {
                Ok(Some(Frame::Control(json))) => {
                    let _ = Request::decode(&json);
                    let _ = ServerMessage::decode(&json);
                }
                Ok(Some(_)) => {}
                Ok(None) if !fed_rest => {
                    src.extend_from_slice(&data[split..]);
                    fed_rest = true;
                }
                Ok(None) | Err(_) => break,
            }
        }
    }
});
