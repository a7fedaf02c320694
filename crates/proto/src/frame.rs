//! Framing: how bytes on the connection split into frames.
//!
//! A frame is a 4-byte big-endian length `L`, then `L` bytes: one kind byte and the payload.
//! The decoder tells "need more bytes" (`Ok(None)`) apart from "invalid" (`Err`), and checks the
//! length against the limit for the frame's kind before it reserves any space for the body, so a
//! peer cannot make it allocate more than the limit by announcing a huge frame.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

use crate::limits::{CLIENT_MAX_CONTROL_FRAME, MAX_DATA_FRAME, SERVER_MAX_CONTROL_FRAME};

/// Bytes before the payload: the length field and the kind byte.
pub const HEADER_LEN: usize = 5;

/// A complete ping frame, ready to write.
pub const PING_FRAME: [u8; 5] = [0, 0, 0, 1, FrameKind::Ping as u8];

/// A complete pong frame, ready to write.
pub const PONG_FRAME: [u8; 5] = [0, 0, 0, 1, FrameKind::Pong as u8];

/// The decoder reserves at most this much ahead of the bytes that have arrived, so a frame
/// that is announced but never sent costs little memory.
const MAX_RESERVE_AHEAD: usize = 64 * 1024;

/// What a frame carries; the byte after the length field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// One JSON object: a request, a reply or an event.
    Control = 1,
    /// Raw file bytes for a transfer (reserved for file sharing; version 1 sends none).
    Data = 2,
    /// "Are you there?"; the peer answers with [`FrameKind::Pong`]. Empty payload.
    Ping = 3,
    /// The answer to a ping. Empty payload.
    Pong = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => Self::Control,
            2 => Self::Data,
            3 => Self::Ping,
            4 => Self::Pong,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A JSON control message, still as bytes; see [`crate::Request`] and [`crate::ServerMessage`].
    Control(Bytes),
    /// File bytes belonging to transfer `transfer`.
    Data {
        /// The transfer these bytes belong to.
        transfer: u32,
        /// The bytes themselves.
        payload: Bytes,
    },
    /// Keepalive probe.
    Ping,
    /// Keepalive answer.
    Pong,
}

/// Why bytes could not be decoded as a frame. Every variant means the stream can no longer be
/// trusted to be in step, so the connection is closed after saying why.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length field was zero: a frame has at least its kind byte.
    #[error("a frame's length must be at least 1 (its kind byte)")]
    Empty,
    /// The kind byte is not one this version knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The announced length exceeds the limit for the frame's kind.
    #[error("a frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// A ping or pong carried a payload, or a data frame was shorter than its transfer id.
    #[error("malformed {0:?} frame")]
    Malformed(FrameKind),
    /// A frame of a kind this side does not accept (for codecs built without data frames).
    #[error("{0:?} frames are not accepted here (a server takes them only after sign-in)")]
    Unexpected(FrameKind),
    /// Reading from the transport failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Decodes and encodes [`Frame`]s with per-kind size limits.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_control: usize,
    max_data: usize,
    /// Whether a frame's whole room is reserved as soon as its header arrives
    /// ([`FrameCodec::whole_frames`]), rather than [`MAX_RESERVE_AHEAD`] at a time.
    whole_frames: bool,
}

impl FrameCodec {
    /// The codec a server uses to read what clients send: uploads arrive as data frames.
    pub fn server() -> Self {
        Self::with_limits(SERVER_MAX_CONTROL_FRAME, MAX_DATA_FRAME)
    }

    /// The codec a client uses to read what the server sends: downloads arrive as data frames.
    pub fn client() -> Self {
        Self::with_limits(CLIENT_MAX_CONTROL_FRAME, MAX_DATA_FRAME)
    }

    /// A codec with explicit limits (each counts the kind byte and the payload); a `max_data`
    /// of 0 refuses data frames altogether. [`crate::limits::MAX_DATA_FRAME`] is the protocol's
    /// data limit.
    pub fn with_limits(max_control: usize, max_data: usize) -> Self {
        Self {
            max_control,
            max_data,
            whole_frames: false,
        }
    }

    /// For a reader that trusts its peer with memory (a client reading its server): a frame's
    /// whole room is reserved as soon as its header arrives, and after a full data frame, room
    /// for the next one. A download is then read in reads as large as a frame, into one buffer
    /// per frame, rather than grown 64 KiB at a time, each growth copying what had arrived.
    pub fn whole_frames(self) -> Self {
        Self {
            whole_frames: true,
            ..self
        }
    }

    fn limit(&self, kind: FrameKind) -> usize {
        match kind {
            FrameKind::Control => self.max_control,
            FrameKind::Data => self.max_data,
            FrameKind::Ping | FrameKind::Pong => 1,
        }
    }
}

/// Whether `buf` starts with a whole frame, so that decoding it needs no more bytes: a reader
/// can tell whether its next frame is already here or must be waited for.
pub fn starts_with_frame(buf: &[u8]) -> bool {
    match buf.first_chunk::<4>() {
        Some(len) => buf.len() - 4 >= u32::from_be_bytes(*len) as usize,
        None => false,
    }
}

/// A frame read in place: its payload borrows the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameRef<'a> {
    /// A JSON control message, still as bytes.
    Control(&'a [u8]),
    /// File bytes belonging to transfer `transfer`.
    Data {
        /// The transfer these bytes belong to.
        transfer: u32,
        /// The bytes themselves.
        payload: &'a [u8],
    },
    /// Keepalive probe.
    Ping,
    /// Keepalive answer.
    Pong,
}

impl FrameCodec {
    /// The frame at the start of `src` and its length in bytes, header included, without
    /// consuming or copying anything: `Ok(None)` until the whole frame is there. For readers
    /// that look at many small frames and keep none of them (a load generator), where
    /// [`Decoder::decode`] would hand each one out as shared [`Bytes`].
    pub fn peek<'a>(&self, src: &'a [u8]) -> Result<Option<(FrameRef<'a>, usize)>, FrameError> {
        let Some((kind, len)) = self.header(src)? else {
            return Ok(None);
        };
        let Some(payload) = src.get(HEADER_LEN..4 + len) else {
            return Ok(None);
        };
        let frame = match kind {
            FrameKind::Control => FrameRef::Control(payload),
            FrameKind::Ping => FrameRef::Ping,
            FrameKind::Pong => FrameRef::Pong,
            FrameKind::Data => match payload.split_first_chunk::<4>() {
                Some((transfer, payload)) => FrameRef::Data {
                    transfer: u32::from_be_bytes(*transfer),
                    payload,
                },
                None => return Err(FrameError::Malformed(kind)),
            },
        };
        Ok(Some((frame, 4 + len)))
    }

    /// The kind and the length field of the frame `src` starts with, once both have arrived,
    /// checked against this codec's limits. A length no kind allows is refused from the length
    /// field alone, before the kind byte arrives.
    fn header(&self, src: &[u8]) -> Result<Option<(FrameKind, usize)>, FrameError> {
        let Some(len) = src.first_chunk::<4>() else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(*len) as usize;
        if len == 0 {
            return Err(FrameError::Empty);
        }
        let largest = self.max_control.max(self.max_data);
        if len > largest {
            return Err(FrameError::TooLarge { len, max: largest });
        }
        let Some(&kind) = src.get(4) else {
            return Ok(None);
        };
        let kind = FrameKind::from_byte(kind).ok_or(FrameError::UnknownKind(kind))?;
        let max = self.limit(kind);
        if max == 0 {
            return Err(FrameError::Unexpected(kind));
        }
        if len > max {
            return Err(match kind {
                FrameKind::Ping | FrameKind::Pong => FrameError::Malformed(kind),
                _ => FrameError::TooLarge { len, max },
            });
        }
        Ok(Some((kind, len)))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((kind, len)) = self.header(src)? else {
            return Ok(None);
        };
        let total = 4 + len;
        if src.len() < total {
            let missing = total - src.len();
            src.reserve(if self.whole_frames {
                missing
            } else {
                missing.min(MAX_RESERVE_AHEAD)
            });
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let mut payload = src.split_to(len - 1).freeze();
        let full_data = kind == FrameKind::Data && len == self.max_data;
        if self.whole_frames && full_data && src.is_empty() {
            // Downloads come as a run of full frames: a buffer that holds exactly the next one
            // is filled by a read and handed out whole, with nothing to copy.
            src.reserve(4 + self.max_data);
        }
        Ok(Some(match kind {
            FrameKind::Control => Frame::Control(payload),
            FrameKind::Ping => Frame::Ping,
            FrameKind::Pong => Frame::Pong,
            FrameKind::Data => {
                if payload.len() < 4 {
                    return Err(FrameError::Malformed(kind));
                }
                let transfer = payload.get_u32();
                Frame::Data { transfer, payload }
            }
        }))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        frame.encode(dst);
        Ok(())
    }
}

impl Frame {
    /// Appends this frame's bytes to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Frame::Control(json) => put_header(dst, FrameKind::Control, json.len()),
            Frame::Data { transfer, payload } => {
                put_header(dst, FrameKind::Data, 4 + payload.len());
                dst.put_u32(*transfer);
            }
            Frame::Ping => put_header(dst, FrameKind::Ping, 0),
            Frame::Pong => put_header(dst, FrameKind::Pong, 0),
        }
        match self {
            Frame::Control(bytes) | Frame::Data { payload: bytes, .. } => dst.put_slice(bytes),
            Frame::Ping | Frame::Pong => {}
        }
    }

    /// This frame's bytes as one buffer, ready to be written (and shared, for a broadcast).
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

/// Serializes `message` as JSON straight into a complete control frame, with no intermediate
/// copy: the header is written first and its length patched once the JSON is in place.
pub fn control_frame<T: Serialize + ?Sized>(message: &T) -> Bytes {
    let mut buf = BytesMut::with_capacity(128);
    put_control_frame(&mut buf, message);
    buf.freeze()
}

/// Appends `message` to `dst` as a complete control frame, serialized in place like
/// [`control_frame`]: several frames can share one buffer, and so one write.
pub fn put_control_frame<T: Serialize + ?Sized>(dst: &mut BytesMut, message: &T) {
    let start = dst.len();
    dst.put_bytes(0, 4);
    dst.put_u8(FrameKind::Control as u8);
    serde_json::to_writer(dst.writer(), message)
        .expect("protocol messages always serialize: they hold only strings, numbers and lists");
    let len = u32::try_from(dst.len() - start - 4).expect("control frames stay far below 4 GiB");
    dst[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn put_header(dst: &mut BytesMut, kind: FrameKind, payload_len: usize) {
    let len = u32::try_from(payload_len + 1).expect("frames stay far below 4 GiB");
    dst.reserve(HEADER_LEN + payload_len);
    dst.put_u32(len);
    dst.put_u8(kind as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_DATA_CHUNK;

    #[test]
    fn a_whole_frame_is_told_from_a_partial_one() {
        let frame = Frame::Control(Bytes::from_static(b"{}")).to_bytes();
        assert!(starts_with_frame(&frame));
        assert!(starts_with_frame(&[&frame[..], &frame[..3]].concat()));
        assert!(!starts_with_frame(&frame[..frame.len() - 1]));
        assert!(!starts_with_frame(&frame[..3]));
        assert!(!starts_with_frame(&[]));
    }

    fn decode_all(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut src = BytesMut::from(bytes);
        let mut frames = Vec::new();
        while let Some(frame) = codec.decode(&mut src)? {
            frames.push(frame);
        }
        Ok(frames)
    }

    /// A codec that accepts data frames, as file transfer will.
    fn data_codec() -> FrameCodec {
        FrameCodec::with_limits(SERVER_MAX_CONTROL_FRAME, MAX_DATA_FRAME)
    }

    fn sample_frames() -> Vec<Frame> {
        vec![
            Frame::Control(Bytes::from_static(br#"{"id":1,"type":"users"}"#)),
            Frame::Ping,
            Frame::Pong,
            Frame::Data {
                transfer: 7,
                payload: Bytes::from_static(&[0, 1, 2, 255]),
            },
        ]
    }

    #[test]
    fn keepalive_constants_are_frames() {
        assert_eq!(Frame::Ping.to_bytes()[..], PING_FRAME);
        assert_eq!(Frame::Pong.to_bytes()[..], PONG_FRAME);
    }

    #[test]
    fn round_trips_every_kind() {
        let frames = sample_frames();
        let mut wire = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut wire);
        }
        let decoded = decode_all(&mut data_codec(), &wire).unwrap();
        assert_eq!(decoded, frames);
    }

    #[test]
    fn waits_for_more_bytes_at_every_split_point() {
        let mut wire = BytesMut::new();
        for frame in sample_frames() {
            frame.encode(&mut wire);
        }
        for split in 0..wire.len() {
            let mut codec = data_codec();
            let mut src = BytesMut::from(&wire[..split]);
            let mut frames = Vec::new();
            while let Some(frame) = codec.decode(&mut src).unwrap() {
                frames.push(frame);
            }
            src.extend_from_slice(&wire[split..]);
            while let Some(frame) = codec.decode(&mut src).unwrap() {
                frames.push(frame);
            }
            assert_eq!(frames, sample_frames(), "split at {split}");
        }
    }

    /// What [`FrameCodec::peek`] reads, as the owned frame [`Decoder::decode`] would give.
    fn owned(frame: FrameRef<'_>) -> Frame {
        match frame {
            FrameRef::Control(json) => Frame::Control(Bytes::copy_from_slice(json)),
            FrameRef::Data { transfer, payload } => Frame::Data {
                transfer,
                payload: Bytes::copy_from_slice(payload),
            },
            FrameRef::Ping => Frame::Ping,
            FrameRef::Pong => Frame::Pong,
        }
    }

    #[test]
    fn peeking_reads_what_decoding_reads_and_waits_for_whole_frames() {
        let mut wire = BytesMut::new();
        for frame in sample_frames() {
            frame.encode(&mut wire);
        }
        let codec = data_codec();
        for end in 0..=wire.len() {
            let mut src = &wire[..end];
            let mut frames = Vec::new();
            while let Some((frame, len)) = codec.peek(src).unwrap() {
                frames.push(owned(frame));
                src = &src[len..];
            }
            let whole = decode_all(&mut data_codec(), &wire[..end]).unwrap();
            assert_eq!(frames, whole, "{end} bytes");
        }
        for bad in [
            &[0, 0, 0, 0][..],
            &[0, 0, 0, 1, 9],
            &[0, 0, 0, 2, FrameKind::Ping as u8, 0],
            &[0, 0, 0, 3, FrameKind::Data as u8, 0, 0],
            &u32::MAX.to_be_bytes(),
        ] {
            assert!(codec.peek(bad).is_err(), "{bad:?} is refused");
            assert!(decode_all(&mut data_codec(), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_oversized_frames_from_the_header_alone() {
        let mut codec = FrameCodec::server();
        let len = (SERVER_MAX_CONTROL_FRAME + 1) as u32;
        let mut src = BytesMut::from(&len.to_be_bytes()[..]);
        src.put_u8(FrameKind::Control as u8);
        let capacity_before = src.capacity();
        let err = codec.decode(&mut src).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { max, .. } if max == SERVER_MAX_CONTROL_FRAME));
        assert_eq!(
            src.capacity(),
            capacity_before,
            "nothing reserved for a refused frame"
        );

        let huge = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        let err = codec.decode(&mut huge.clone()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }));
    }

    #[test]
    fn reserves_little_for_an_announced_but_unsent_frame() {
        let mut codec = FrameCodec::with_limits(10 << 20, MAX_DATA_FRAME);
        let mut src = BytesMut::new();
        src.put_u32(8 << 20);
        src.put_u8(FrameKind::Control as u8);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(
            src.capacity() <= MAX_RESERVE_AHEAD + 64,
            "{}",
            src.capacity()
        );
    }

    #[test]
    fn a_reader_of_whole_frames_reserves_each_data_frame_at_once() {
        let full = Frame::Data {
            transfer: 7,
            payload: Bytes::from(vec![1; MAX_DATA_CHUNK]),
        };
        let mut wire = BytesMut::new();
        full.encode(&mut wire);
        full.encode(&mut wire);
        let frame_len = wire.len() / 2;

        let mut codec = FrameCodec::client().whole_frames();
        let mut src = BytesMut::from(&wire[..HEADER_LEN]);
        assert!(codec.decode(&mut src).unwrap().is_none());
        assert!(src.capacity() >= frame_len, "{}", src.capacity());

        src.extend_from_slice(&wire[HEADER_LEN..frame_len]);
        assert_eq!(codec.decode(&mut src).unwrap(), Some(full.clone()));
        assert!(src.is_empty());
        assert!(
            src.capacity() >= frame_len,
            "room for the next frame: {}",
            src.capacity()
        );

        // Other readers still reserve a little at a time.
        let mut src = BytesMut::from(&wire[..HEADER_LEN]);
        assert!(FrameCodec::client().decode(&mut src).unwrap().is_none());
        assert!(
            src.capacity() <= MAX_RESERVE_AHEAD + 64,
            "{}",
            src.capacity()
        );
    }

    #[test]
    fn refuses_malformed_frames() {
        let mut codec = FrameCodec::server();
        assert!(matches!(
            decode_all(&mut codec, &[0, 0, 0, 0]),
            Err(FrameError::Empty)
        ));
        assert!(matches!(
            decode_all(&mut codec, &[0, 0, 0, 1, 9]),
            Err(FrameError::UnknownKind(9))
        ));
        assert!(matches!(
            decode_all(&mut codec, &[0, 0, 0, 2, 3, 0]),
            Err(FrameError::Malformed(FrameKind::Ping))
        ));
        assert!(matches!(
            decode_all(&mut data_codec(), &[0, 0, 0, 3, 2, 0, 0]),
            Err(FrameError::Malformed(FrameKind::Data))
        ));
        // A codec without data frames refuses them from the header: no body is buffered.
        assert!(matches!(
            decode_all(&mut FrameCodec::with_limits(1024, 0), &[0, 0, 1, 0, 2]),
            Err(FrameError::Unexpected(FrameKind::Data))
        ));
    }

    #[test]
    fn control_frame_matches_the_generic_encoder() {
        let message = serde_json::json!({"type": "ping", "n": [1, 2]});
        let direct = control_frame(&message);
        let generic = Frame::Control(serde_json::to_vec(&message).unwrap().into()).to_bytes();
        assert_eq!(direct, generic);
    }

    /// Random bytes never panic the decoder and never make it hold more than the limit.
    #[test]
    fn survives_random_input() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Bias towards plausible headers so the deeper paths are reached too.
            if len >= 5 && next() % 2 == 0 {
                bytes[0] = 0;
                bytes[1] = 0;
                bytes[4] = (next() % 5) as u8;
            }
            let mut codec = if next() % 2 == 0 {
                FrameCodec::server()
            } else {
                data_codec()
            };
            let mut src = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = codec.decode(&mut src) {}
            assert!(src.capacity() <= MAX_RESERVE_AHEAD + 64);
        }
    }
}
