//! Just enough RESP: decoding commands (RESP arrays and inline lines) from the front of a
//! buffer, and encoding the few replies the floor sends. Pure: no sockets, no tokio.

use std::fmt::Write as _;

use bytes::{BufMut, BytesMut};

/// Longest command, whole; loadgen's largest payload is 1 MiB.
pub(crate) const MAX_COMMAND: usize = 2 << 20;
/// Longest inline command line and longest count line, as in Redis.
const MAX_LINE: usize = 64 * 1024;
/// Most arguments in one command; only the first `KEPT_ARGS` are looked at.
const MAX_ARGS: usize = 1024;
pub(crate) const KEPT_ARGS: usize = 8;

pub(crate) fn put_bulk(out: &mut BytesMut, data: &[u8]) {
    let _ = write!(out, "${}\r\n", data.len());
    out.put_slice(data);
    out.put_slice(b"\r\n");
}

pub(crate) fn put_error(out: &mut BytesMut, message: &str) {
    let _ = write!(out, "-ERR {message}\r\n");
}

/// A client's bytes, safe to echo in a one-line reply.
pub(crate) fn printable(name: &[u8]) -> String {
    let name = &name[..name.len().min(64)];
    name.iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// One decoded command; only its first `KEPT_ARGS` arguments are kept, none copied.
#[derive(Debug, Default)]
pub(crate) struct Command<'a> {
    pub(crate) args: [&'a [u8]; KEPT_ARGS],
    pub(crate) count: usize,
}

impl<'a> Command<'a> {
    fn push(&mut self, arg: &'a [u8]) {
        if let Some(slot) = self.args.get_mut(self.count) {
            *slot = arg;
        }
        self.count += 1;
    }

    pub(crate) fn arg(&self, at: usize) -> Option<&'a [u8]> {
        self.args.get(at).copied().filter(|_| at < self.count)
    }
}

/// Decodes one command from the front of `buf`: a RESP array of bulk strings (`*2\r\n$4\r\n
/// PING\r\n…`) or an inline line (`PING\r\n`, what loadgen's receivers send). `Ok(None)` means
/// more bytes are needed; the length used is returned with the command.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Command<'_>, usize)>, &'static str> {
    let mut command = Command::default();
    if buf.first() != Some(&b'*') {
        let Some(end) = buf.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
            return if buf.len() >= MAX_LINE {
                Err("too big inline request")
            } else {
                Ok(None)
            };
        };
        let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
        line.split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .for_each(|w| command.push(w));
        return Ok(Some((command, end + 1)));
    }
    let Some((count, mut at)) = number(buf, 0, b'*')? else {
        return Ok(None);
    };
    if count > MAX_ARGS {
        return Err("invalid multibulk length");
    }
    for _ in 0..count {
        let Some((len, start)) = number(buf, at, b'$')? else {
            return Ok(None);
        };
        if len > MAX_COMMAND {
            return Err("invalid bulk length");
        }
        let Some(end) = buf.get(start + len..start + len + 2) else {
            return Ok(None);
        };
        if end != b"\r\n" {
            return Err("expected CRLF after a bulk string");
        }
        command.push(&buf[start..start + len]);
        at = start + len + 2;
    }
    Ok(Some((command, at)))
}

/// Decodes `<kind><decimal>\r\n` at `at`: the number and where the line ends.
fn number(buf: &[u8], at: usize, kind: u8) -> Result<Option<(usize, usize)>, &'static str> {
    let rest = buf.get(at..).unwrap_or_default();
    let Some(end) = rest.iter().take(MAX_LINE).position(|&b| b == b'\n') else {
        return if rest.len() >= MAX_LINE {
            Err("count line too long")
        } else {
            Ok(None)
        };
    };
    let digits = rest[..end]
        .strip_suffix(b"\r")
        .and_then(|line| line.strip_prefix(&[kind]))
        .ok_or(if kind == b'$' {
            "expected '$'"
        } else {
            "expected '*'"
        })?;
    let valid = !digits.is_empty() && digits.len() <= 10 && digits.iter().all(u8::is_ascii_digit);
    if !valid {
        return Err("invalid length");
    }
    let value = digits.iter().fold(0, |n: usize, d| {
        n.saturating_mul(10).saturating_add(usize::from(d - b'0'))
    });
    Ok(Some((value, at + end + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(buf: &[u8]) -> (Vec<&[u8]>, usize) {
        let (command, used) = parse(buf).unwrap().unwrap();
        (
            (0..command.count).filter_map(|i| command.arg(i)).collect(),
            used,
        )
    }

    #[test]
    fn decodes_what_loadgen_sends() {
        assert_eq!(
            args(b"SUBSCRIBE bench\r\nPING"),
            (vec![&b"SUBSCRIBE"[..], b"bench"], 17)
        );
        let publish = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$3\r\n~LG\r\n";
        assert_eq!(
            args(publish),
            (vec![&b"PUBLISH"[..], b"bench", b"~LG"], publish.len())
        );
    }

    #[test]
    fn every_prefix_needs_more_and_nothing_panics() {
        let publish = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$3\r\n~LG\r\n";
        for end in 0..publish.len() {
            assert!(matches!(parse(&publish[..end]), Ok(None)), "{end}");
        }
        for bad in [
            &b"*x\r\n"[..],
            b"*1\r\n:3\r\n",
            b"*1\r\n$3\r\nabcd\r\n",
            b"*99999999999\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert!(parse(&[b'a'; MAX_LINE]).is_err());
    }
}
