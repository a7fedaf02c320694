//! Raw protocol connections for the load scenarios: frames read straight from a buffer, with no
//! task, channel or JSON parse per connection beyond what a scenario asks for. Thousands of
//! these share one thread, so the instrument costs far less than the server it measures.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use bytes::{Buf, Bytes, BytesMut};
use parley_client::Secure;
use parley_client::tls::default_known_hosts;
use parley_proto::frame::PONG_FRAME;
use parley_proto::{Frame, FrameCodec, FrameRef, SUPPORTED_VERSIONS};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_util::codec::Decoder;
use tokio_util::either::Either;

use super::Target;

/// Connections per source address: a loopback address pair has about 28,000 ephemeral ports,
/// so larger runs spread over 127.0.0.1, 127.0.0.2, ...
const PER_SOURCE: usize = 20_000;

/// Plain TCP or TLS.
pub type Stream = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Opens connections to the server under test.
pub struct Dialer {
    address: SocketAddr,
    secure: Option<Secure>,
    timeout: Duration,
}

impl Dialer {
    /// A dialer for `target`; with TLS, the server's certificate is trusted as the client
    /// trusts it (system roots, else the pin in known_hosts, pinned on first use).
    pub fn new(target: &Target) -> anyhow::Result<Arc<Self>> {
        let address = SocketAddr::new(target.host, target.port);
        let secure = if target.no_tls {
            None
        } else {
            Some(Secure::new(
                &address.to_string(),
                default_known_hosts(),
                false,
            )?)
        };
        Ok(Arc::new(Self {
            address,
            secure,
            timeout: Duration::from_secs(target.connect_timeout),
        }))
    }

    /// Connects the `index`th connection of a run (which picks its source address).
    pub async fn dial(&self, index: usize) -> anyhow::Result<Stream> {
        let deadline = Instant::now() + self.timeout;
        let connect = async {
            let socket = match self.address.ip() {
                IpAddr::V4(_) => {
                    let socket = TcpSocket::new_v4()?;
                    // Binding before connecting makes the kernel search for a free port the
                    // slow way (thousands of connections took seconds), so only connections
                    // beyond the first address's share do it.
                    if index >= PER_SOURCE {
                        let source = Ipv4Addr::new(127, 0, 0, 1 + (index / PER_SOURCE) as u8);
                        socket.bind(SocketAddr::new(source.into(), 0))?;
                    }
                    socket
                }
                IpAddr::V6(_) => TcpSocket::new_v6()?,
            };
            socket.set_nodelay(true)?;
            socket.connect(self.address).await
        };
        let stream = tokio::time::timeout_at(deadline, connect)
            .await
            .map_err(|_| anyhow!("no connection to {} within the timeout", self.address))?
            .with_context(|| format!("cannot connect to {}", self.address))?;
        let Some(secure) = &self.secure else {
            return Ok(Either::Left(stream));
        };
        let host = self.address.ip().to_string();
        match secure.handshake(stream, &host, deadline).await {
            Ok((secured, _)) => Ok(Either::Right(secured)),
            Err(parley_client::SecureError::Timeout) => {
                bail!("no TLS handshake with {} within the timeout", self.address)
            }
            Err(parley_client::SecureError::Failed(err)) => Err(err.into()),
        }
    }

    /// Connects and signs in as `name`; returns the connection and the welcome reply's JSON.
    pub async fn sign_in(&self, index: usize, name: &str) -> anyhow::Result<(Conn, Bytes)> {
        let stream = self.dial(index).await?;
        let mut conn = Conn::new(stream);
        let hello = json!({"versions": SUPPORTED_VERSIONS, "name": name, "client": "parley bench"});
        let welcome = tokio::time::timeout(self.timeout, conn.call_raw("hello", hello, |_| {}))
            .await
            .map_err(|_| anyhow!("{name} was not signed in within the timeout"))??;
        Ok((conn, welcome))
    }
}

/// What [`Conn::call_raw`] reads of a reply: which request it answers, and why it failed.
#[derive(serde::Deserialize)]
struct Header<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    message: Option<std::borrow::Cow<'a, str>>,
}

/// The reading side of a connection: a read buffer and a frame decoder over `R`.
pub struct Frames<R> {
    read: R,
    buf: BytesMut,
    codec: FrameCodec,
}

impl<R: AsyncRead + Unpin> Frames<R> {
    fn new(read: R) -> Self {
        Self {
            read,
            // Small to start with: idle connections should cost the instrument little.
            buf: BytesMut::with_capacity(512),
            codec: FrameCodec::client(),
        }
    }

    /// Reads more bytes into the buffer; 0 when the server closed the connection.
    pub async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 256 {
            self.buf.reserve(64 * 1024);
        }
        self.read.read_buf(&mut self.buf).await
    }

    /// The next complete frame already read, if any.
    pub fn buffered_frame(&mut self) -> io::Result<Option<Frame>> {
        self.codec
            .decode(&mut self.buf)
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))
    }

    /// Hands every whole frame already read to `each`, in place, then drops them from the
    /// buffer: no copy and no shared allocation per frame, as a receiver of thousands of small
    /// frames a second needs to cost less than the server it measures.
    pub fn scan(&mut self, mut each: impl FnMut(FrameRef<'_>)) -> io::Result<()> {
        let mut at = 0;
        while let Some((frame, len)) = self
            .codec
            .peek(&self.buf[at..])
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?
        {
            each(frame);
            at += len;
        }
        self.buf.advance(at);
        Ok(())
    }

    /// The next frame, pings included; `None` when the server closed the connection.
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.buffered_frame()? {
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }
}

/// One connection: frames read from it, requests and pongs written to it.
pub struct Conn {
    frames: Frames<Stream>,
    next_id: u64,
}

impl Conn {
    fn new(stream: Stream) -> Self {
        Self {
            frames: Frames::new(stream),
            next_id: 1,
        }
    }

    /// Writes `bytes` (one or more whole frames).
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.frames.read.write_all(bytes).await
    }

    /// Sends a request; returns its id.
    pub async fn send(&mut self, kind: &str, mut fields: Value) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        fields["type"] = kind.into();
        fields["id"] = id.into();
        self.write(&parley_proto::control_frame(&fields)).await?;
        Ok(id)
    }

    /// Sends a request and waits for its reply, answering pings and handing every other control
    /// frame (events) to `on_event`. Returns the reply's `result`; an error reply is an error.
    pub async fn call(
        &mut self,
        kind: &str,
        fields: Value,
        on_event: impl FnMut(&[u8]),
    ) -> anyhow::Result<Value> {
        let reply: Value = serde_json::from_slice(&self.call_raw(kind, fields, on_event).await?)?;
        Ok(reply["result"].clone())
    }

    /// [`call`](Conn::call), returning the whole reply's JSON unparsed (for large replies,
    /// parsed with borrowed strings).
    pub async fn call_raw(
        &mut self,
        kind: &str,
        fields: Value,
        mut on_event: impl FnMut(&[u8]),
    ) -> anyhow::Result<Bytes> {
        let id = self.send(kind, fields).await?;
        loop {
            let json = match self.next_frame().await? {
                Some(Frame::Control(json)) => json,
                Some(_) => continue,
                None => bail!("the server closed the connection (waiting for {kind})"),
            };
            if !matches!(frame_type(&json), Some(b"ok" | b"error")) {
                on_event(&json);
                continue;
            }
            let header: Header<'_> = serde_json::from_slice(&json)?;
            if header.id != Some(id) {
                on_event(&json);
                continue;
            }
            if frame_type(&json) == Some(b"ok") {
                return Ok(json);
            }
            bail!(
                "the server refused {kind}: {}",
                header.message.as_deref().unwrap_or("(no reason)")
            );
        }
    }

    /// The next frame other than a ping (pings are answered here); `None` when the server
    /// closed the connection.
    pub async fn next_frame(&mut self) -> io::Result<Option<Frame>> {
        loop {
            match self.frames.next_frame().await? {
                Some(Frame::Ping) => self.pong().await?,
                frame => return Ok(frame),
            }
        }
    }

    /// Reads more bytes; 0 when the server closed the connection.
    pub async fn fill(&mut self) -> io::Result<usize> {
        self.frames.fill().await
    }

    /// [`Frames::scan`]: every whole frame already read, in place (pings included).
    pub fn scan(&mut self, each: impl FnMut(FrameRef<'_>)) -> io::Result<()> {
        self.frames.scan(each)
    }

    /// Answers a ping.
    pub async fn pong(&mut self) -> io::Result<()> {
        self.write(&PONG_FRAME).await
    }

    /// Splits into a reading half (which does not answer pings: the writer owns the socket)
    /// and a writing half.
    pub fn split(self) -> (Frames<ReadHalf<Stream>>, WriteHalf<Stream>) {
        let Frames { read, buf, codec } = self.frames;
        let (read, write) = tokio::io::split(read);
        (Frames { read, buf, codec }, write)
    }
}

/// The `"type"` of a control frame's JSON, found without parsing the whole frame.
pub fn frame_type(json: &[u8]) -> Option<&[u8]> {
    let at = memchr::memmem::find(json, b"\"type\":\"")? + 8;
    let len = memchr::memchr(b'"', &json[at..])?;
    Some(&json[at..at + len])
}
