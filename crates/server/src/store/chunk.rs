//! A chunk: the messages one room received in one commit, kept as one row.
//!
//! SQLite's cost is per row far more than per byte: a row per message cost the recorder about
//! 1.8 µs a message, a row per chunk about 0.75 µs (36 messages a chunk, the bench's text). A
//! room's history is read a chunk at a time and its search index has a document per chunk.
//!
//! A chunk's body is its messages, oldest first, each laid out as its id and its time (u64,
//! little-endian), then its sender and its text, each a u32 little-endian length and that many
//! bytes of UTF-8. The room is the chunk's row's own column.

use super::{StoreError, Stored};

/// Appends the layout of `message` (a room message: its room is the chunk's) to `body`.
pub(super) fn encode(message: &Stored, body: &mut Vec<u8>) {
    body.extend_from_slice(&message.id.to_le_bytes());
    body.extend_from_slice(&message.ts.to_le_bytes());
    for field in [&message.from, &message.text] {
        // Names and texts are bounded far below 4 GiB by the protocol's limits.
        body.extend_from_slice(&(field.len() as u32).to_le_bytes());
        body.extend_from_slice(field.as_bytes());
    }
}

/// One message of a chunk, borrowed from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Entry<'a> {
    pub id: u64,
    pub ts: u64,
    pub from: &'a str,
    pub text: &'a str,
}

impl Entry<'_> {
    /// The message as the hub knows it, in `room`.
    pub fn to_stored(self, room: &str) -> Stored {
        Stored {
            id: self.id,
            ts: self.ts,
            room: Some(room.to_owned()),
            from: self.from.to_owned(),
            to: None,
            text: self.text.to_owned(),
        }
    }
}

/// The messages of a chunk's body, oldest first. A body that does not follow the layout (a
/// damaged database) yields an error and ends, rather than panicking or reading garbage.
pub(super) fn decode(body: &[u8]) -> Entries<'_> {
    Entries { rest: body }
}

/// The iterator [`decode`] returns.
pub(super) struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    fn u64(&mut self) -> Option<u64> {
        let (bytes, rest) = self.rest.split_first_chunk::<8>()?;
        self.rest = rest;
        Some(u64::from_le_bytes(*bytes))
    }

    fn str(&mut self) -> Option<&'a str> {
        let (len, rest) = self.rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            return None;
        }
        let (bytes, rest) = rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(bytes).ok()
    }

    fn entry(&mut self) -> Option<Entry<'a>> {
        Some(Entry {
            id: self.u64()?,
            ts: self.u64()?,
            from: self.str()?,
            text: self.str()?,
        })
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = self.entry();
        if entry.is_none() {
            // Stop after reporting it once.
            self.rest = &[];
        }
        Some(entry.ok_or_else(|| StoreError::new("a stored chunk of messages is damaged")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: u64, from: &str, text: &str) -> Stored {
        Stored {
            id,
            ts: 1_700_000_000_000 + id,
            room: Some("lobby".into()),
            from: from.into(),
            to: None,
            text: text.into(),
        }
    }

    #[test]
    fn a_body_gives_back_its_messages_in_order() {
        let messages = [
            message(7, "alice", "hello"),
            message(9, "bøb", ""),
            message(u64::MAX / 2, "c", "line one\nline two ✓"),
        ];
        let mut body = Vec::new();
        for m in &messages {
            encode(m, &mut body);
        }
        let back: Vec<Stored> = decode(&body)
            .map(|entry| entry.unwrap().to_stored("lobby"))
            .collect();
        assert_eq!(back, messages);
        assert_eq!(decode(&[]).count(), 0);
    }

    #[test]
    fn a_damaged_body_is_an_error_not_a_panic() {
        let mut body = Vec::new();
        encode(&message(1, "alice", "first"), &mut body);
        let first_len = body.len();
        encode(&message(2, "bob", "second"), &mut body);
        // Cut anywhere inside the second message: the first survives, then one error.
        for cut in first_len + 1..body.len() {
            let entries: Vec<_> = decode(&body[..cut]).collect();
            assert_eq!(entries.len(), 2, "cut at {cut}");
            assert_eq!(entries[0].as_ref().unwrap().text, "first");
            assert!(entries[1].is_err(), "cut at {cut}");
        }
        // A length pointing past the end, and bytes that are not UTF-8.
        let mut huge = Vec::new();
        huge.extend_from_slice(&[0; 16]);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode(&huge).next().unwrap().is_err());
        let mut latin1 = Vec::new();
        encode(&message(3, "carol", "x"), &mut latin1);
        *latin1.last_mut().unwrap() = 0xff;
        assert!(decode(&latin1).next().unwrap().is_err());
    }
}
