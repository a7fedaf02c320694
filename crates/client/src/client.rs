//! The async client: connect and sign in, send typed requests, receive events.
//!
//! [`connect`](Client::connect) returns a [`Client`] (cheap to clone; every clone sends on the
//! same connection) and an [`Events`] stream. A reader task routes replies to the requests
//! waiting for them and events to the stream, answers pings, and watches for a silent server;
//! a writer task owns the socket's write half. The stream's last item is always
//! [`ClientEvent::Closed`], saying whether the server closed cleanly or the connection was lost.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use parley_proto::event::{Bye, Event, TransferEnd, UploadProgress};
use parley_proto::frame::FrameKind;
use parley_proto::frame::{PING_FRAME, PONG_FRAME};
use parley_proto::limits::MAX_DATA_CHUNK;
use parley_proto::request::{
    Call, Cancel, Download, DownloadProgress, Downloading, Finish, Hello, Quit, RequestBody,
    Upload, Uploaded, Uploading, Welcome,
};
use parley_proto::{
    ErrorCode, Frame, FrameCodec, FrameError, Reply, Request, SUPPORTED_VERSIONS, ServerMessage,
    control_frame,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::codec::FramedRead;

use crate::tls::{Security, Trust, Verifier};

/// Frames waiting for the writer; requests wait here when the socket is slow.
const WRITE_QUEUE: usize = 256;

/// Upload data frames waiting for the socket: a few chunks of read-ahead, no more.
const DATA_QUEUE: usize = 4;

/// Bytes of a download the server may send beyond what the application has taken (the
/// `window` of `download`). The reader queues that much without waiting for the application,
/// so events behind the data arrive at once however slow the disk it is written to. (They
/// waited behind everything in the sockets' buffers before, megabytes at the disk's pace.)
const DOWNLOAD_WINDOW: u64 = 8 << 20;

/// Chunks of one transfer waiting for the application: a download's window of full data frames,
/// a frame that may cross it (from a server whose frames do not divide the window), and its
/// end. The reader stops reading when it is full, which a server keeping to the window with
/// full frames, as Parley's does, never makes it do; smaller frames would.
const TRANSFER_QUEUE: usize = (DOWNLOAD_WINDOW as usize).div_ceil(MAX_DATA_CHUNK) + 2;

/// Events waiting for the application. When it falls this far behind, the reader stops reading
/// and the server, not this process, absorbs (and bounds) the backlog.
const EVENT_QUEUE: usize = 1024;

/// Where to connect and as whom.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Host name or IP address of the server.
    pub host: String,
    /// TCP port of the server.
    pub port: u16,
    /// The user name to sign in as.
    pub name: String,
    /// How long connecting and signing in may take.
    pub timeout: Duration,
    /// The password, for a registered name.
    pub password: Option<String>,
    /// TLS (the default) or plain TCP.
    pub security: Security,
}

impl ConnectOptions {
    /// Options with the default timeout of 10 seconds.
    pub fn new(host: impl Into<String>, port: u16, name: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port,
            name: name.into(),
            timeout: Duration::from_secs(10),
            password: None,
            security: Security::default(),
        }
    }

    /// The same options over plain TCP, for a server run with `--no-tls`.
    pub fn plain(self) -> Self {
        Self {
            security: Security::Plain,
            ..self
        }
    }

    fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why connecting or signing in failed. Each message names the server's address and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host name could not be resolved.
    #[error("cannot connect to {address}: the host name could not be resolved ({source})")]
    Resolve {
        /// host:port as given.
        address: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// The TCP connection failed (refused, unreachable, ...).
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// host:port as given.
        address: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// Connecting or signing in took longer than the timeout.
    #[error("cannot connect to {address}: no answer within {} s", timeout.as_secs())]
    Timeout {
        /// host:port as given.
        address: String,
        /// The timeout that expired.
        timeout: Duration,
    },
    /// The server answered `hello` with an error (name taken, invalid, version...).
    #[error("{address} refused to sign you in: {message}")]
    Refused {
        /// host:port as given.
        address: String,
        /// The error code.
        code: ErrorCode,
        /// The server's sentence.
        message: String,
    },
    /// The server presented a certificate other than the one pinned for its address.
    #[error(
        "the certificate of {address} has changed!\n  pinned:    {pinned}\n  presented: {presented}\n\
         Someone may be intercepting the connection. If the server's certificate was replaced on \
         purpose, connect once with --accept-new-certificate (or remove the line for {address} \
         from {})",
        known_hosts.display()
    )]
    CertificateChanged {
        /// host:port as given.
        address: String,
        /// The fingerprint pinned earlier.
        pinned: String,
        /// The fingerprint presented now.
        presented: String,
        /// The file holding the pins.
        known_hosts: std::path::PathBuf,
    },
    /// The connection broke or the server misbehaved during sign-in.
    #[error("cannot sign in to {address}: {reason}")]
    Handshake {
        /// host:port as given.
        address: String,
        /// What happened.
        reason: String,
    },
}

/// Why [`Secure::handshake`] failed.
#[derive(Debug)]
pub enum SecureError {
    /// The handshake did not finish by the deadline.
    Timeout,
    /// The handshake failed or the certificate was refused.
    Failed(ConnectError),
}

/// TLS for connections to one server: trusts system roots, else the pin for `address`
/// (host:port) in `known_hosts`, pinning on first use and replacing a changed pin only if
/// `accept_new`. Build it once and [`handshake`](Secure::handshake) as often as needed: loading
/// the system roots is the slow part.
pub struct Secure {
    verifier: Arc<Verifier>,
    connector: tokio_rustls::TlsConnector,
    address: String,
    known_hosts: std::path::PathBuf,
}

impl Secure {
    /// Prepares TLS for connections to `address`.
    pub fn new(
        address: &str,
        known_hosts: std::path::PathBuf,
        accept_new: bool,
    ) -> Result<Self, ConnectError> {
        let verifier = Arc::new(Verifier::new(
            address.to_owned(),
            known_hosts.clone(),
            accept_new,
        ));
        let config = rustls::ClientConfig::builder_with_provider(verifier.provider())
            .with_safe_default_protocol_versions()
            .map_err(|err| ConnectError::Handshake {
                address: address.to_owned(),
                reason: err.to_string(),
            })?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        Ok(Self {
            verifier,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            address: address.to_owned(),
            known_hosts,
        })
    }

    /// Runs the TLS handshake on `stream`, connected to `host`. Returns the secured stream and
    /// how the certificate was trusted (exact when handshakes do not run concurrently).
    pub async fn handshake(
        &self,
        stream: TcpStream,
        host: &str,
        deadline: Instant,
    ) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, Option<Trust>), SecureError> {
        let tls_failed = |reason: String| ConnectError::Handshake {
            address: self.address.clone(),
            reason,
        };
        let server_name =
            rustls::pki_types::ServerName::try_from(host.to_owned()).map_err(|err| {
                SecureError::Failed(tls_failed(format!(
                    "{host} is not a usable server name: {err}"
                )))
            })?;
        let handshake = self.connector.connect(server_name, stream);
        let secured = match tokio::time::timeout_at(deadline, handshake).await {
            Err(_) => return Err(SecureError::Timeout),
            Ok(Ok(secured)) => secured,
            Ok(Err(err)) => {
                let outcome = self.verifier.outcome.lock().unwrap().take();
                return Err(SecureError::Failed(match outcome {
                    Some(Trust::Changed { pinned, presented }) => {
                        ConnectError::CertificateChanged {
                            address: self.address.clone(),
                            pinned,
                            presented,
                            known_hosts: self.known_hosts.clone(),
                        }
                    }
                    _ if err.to_string().contains("known hosts") => tls_failed(err.to_string()),
                    _ => tls_failed(format!(
                        "the TLS handshake failed ({err}); if the server runs with --no-tls, use --no-tls too"
                    )),
                }));
            }
        };
        let trust = self.verifier.outcome.lock().unwrap().take();
        Ok((secured, trust))
    }
}

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The server answered with an error.
    #[error("{message}")]
    Refused {
        /// The error code.
        code: ErrorCode,
        /// The server's sentence.
        message: String,
    },
    /// The connection ended before the reply came.
    #[error("the connection to the server is closed")]
    Closed,
    /// The reply's result did not have the expected shape.
    #[error("the server sent a reply this client does not understand: {0}")]
    BadReply(String),
}

/// What the [`Events`] stream yields.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Something the server pushed: a message, a private message, a join or a part.
    Server(Event),
    /// The connection ended; nothing follows.
    Closed(Closed),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// The client quit and the server confirmed.
    Quit,
    /// The server closed the connection and said why (`shutdown`, `timeout`, ...).
    ByServer(Bye),
    /// The connection broke, or the server went silent, without a word from it.
    Lost(String),
}

/// The server's events, in order.
///
/// Keep receiving them: the queue behind this stream is bounded, and when it is full the reader
/// stops reading the socket, which also holds up replies and keepalive answers. That is
/// deliberate backpressure: a client that stops listening for long is disconnected by the server
/// (as too slow or timed out) rather than buffering without bound here.
pub struct Events {
    rx: mpsc::Receiver<ClientEvent>,
}

impl Events {
    /// The next event; `None` only after [`ClientEvent::Closed`] was returned.
    pub async fn recv(&mut self) -> Option<ClientEvent> {
        self.rx.recv().await
    }
}

/// A signed-in connection. Clones share it.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

/// Requests waiting for their reply, and whether replies can still come.
struct Pending {
    open: bool,
    waiters: HashMap<u64, oneshot::Sender<Reply>>,
}

struct Shared {
    /// Requests and keepalive frames; the writer sends these first.
    writer: mpsc::Sender<Bytes>,
    /// Upload data, sent only when no control frame waits.
    data_writer: mpsc::Sender<Bytes>,
    /// Requests waiting for their reply. A std mutex: held only to insert or remove, never
    /// across an await.
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    /// Set when `quit` is sent, so the server closing the connection afterwards is expected.
    quitting: AtomicBool,
    /// Where each download's data goes, by transfer id. A std mutex: held only to look up.
    transfers: Mutex<HashMap<u32, mpsc::Sender<Chunk>>>,
    /// How much of each upload the server has stored, by transfer id: room in its window.
    stored: Mutex<HashMap<u32, watch::Sender<u64>>>,
    next_transfer: AtomicU32,
    welcome: Welcome,
    address: String,
    /// How the server's certificate was trusted; `None` over plain TCP.
    trust: Option<Trust>,
}

impl Client {
    /// Connects over TCP and signs in.
    pub async fn connect(options: &ConnectOptions) -> Result<(Client, Events), ConnectError> {
        let address = options.address();
        let deadline = Instant::now() + options.timeout;
        let timed_out = || ConnectError::Timeout {
            address: address.clone(),
            timeout: options.timeout,
        };
        let addrs = tokio::time::timeout_at(
            deadline,
            tokio::net::lookup_host((options.host.as_str(), options.port)),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|source| ConnectError::Resolve {
            address: address.clone(),
            source,
        })?;
        let mut last_error = None;
        let mut stream = None;
        for addr in addrs {
            match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
                Err(_) => return Err(timed_out()),
                Ok(Ok(connected)) => {
                    stream = Some(connected);
                    break;
                }
                Ok(Err(err)) => last_error = Some(err),
            }
        }
        let stream = stream.ok_or_else(|| ConnectError::Connect {
            address: address.clone(),
            source: last_error
                .unwrap_or_else(|| std::io::Error::other("the host name has no addresses")),
        })?;
        let _ = stream.set_nodelay(true);
        // As on the server: little unsent upload data in the kernel ahead of a chat message.
        #[cfg(any(target_os = "linux", target_os = "android"))]
        let _ = socket2::SockRef::from(&stream).set_tcp_notsent_lowat(128 * 1024);
        let (known_hosts, accept_new) = match &options.security {
            Security::Plain => {
                let sign_in = Self::sign_in_with(
                    stream,
                    &options.name,
                    options.password.as_deref(),
                    address.clone(),
                    None,
                );
                return tokio::time::timeout_at(deadline, sign_in)
                    .await
                    .map_err(|_| timed_out())?;
            }
            Security::Tls {
                known_hosts,
                accept_new,
            } => (known_hosts.clone(), *accept_new),
        };
        let (secured, trust) = Secure::new(&address, known_hosts, accept_new)?
            .handshake(stream, &options.host, deadline)
            .await
            .map_err(|err| match err {
                SecureError::Timeout => timed_out(),
                SecureError::Failed(err) => err,
            })?;
        let sign_in = Self::sign_in_with(
            secured,
            &options.name,
            options.password.as_deref(),
            address.clone(),
            trust,
        );
        tokio::time::timeout_at(deadline, sign_in)
            .await
            .map_err(|_| timed_out())?
    }

    /// Signs in over an already connected transport (TCP, TLS, an in-memory pipe).
    pub async fn sign_in<S>(
        stream: S,
        name: &str,
        password: Option<&str>,
        address: String,
    ) -> Result<(Client, Events), ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        Self::sign_in_with(stream, name, password, address, None).await
    }

    async fn sign_in_with<S>(
        stream: S,
        name: &str,
        password: Option<&str>,
        address: String,
        trust: Option<Trust>,
    ) -> Result<(Client, Events), ConnectError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read_half, mut write_half) = tokio::io::split(stream);
        let mut frames = FramedRead::new(read_half, FrameCodec::client().whole_frames());
        let broken = |reason: String| ConnectError::Handshake {
            address: address.clone(),
            reason,
        };
        let hello = Request {
            id: 0,
            body: Hello {
                versions: SUPPORTED_VERSIONS.to_vec(),
                name: name.to_owned(),
                client: Some(concat!("parley/", env!("CARGO_PKG_VERSION")).to_owned()),
                password: password.map(str::to_owned),
            }
            .into(),
        };
        write_half
            .write_all(&control_frame(&hello))
            .await
            .map_err(|err| broken(err.to_string()))?;
        let welcome = loop {
            let frame = match frames.next().await {
                None => return Err(broken("the server closed the connection".into())),
                // A TLS record (an alert, 0x15, or a handshake, 0x16) read as a frame length.
                Some(Err(FrameError::TooLarge { len, .. })) if matches!(len >> 24, 0x15 | 0x16) => {
                    return Err(broken(
                        "the server speaks TLS; connect without --no-tls".into(),
                    ));
                }
                Some(Err(err)) => return Err(broken(err.to_string())),
                Some(Ok(frame)) => frame,
            };
            let json = match frame {
                Frame::Control(json) => json,
                Frame::Ping => {
                    let _ = write_half.write_all(&PONG_FRAME).await;
                    continue;
                }
                Frame::Pong | Frame::Data { .. } => continue,
            };
            match ServerMessage::decode(&json)
                .map_err(|err| broken(format!("unreadable reply: {err}")))?
            {
                ServerMessage::Reply(Reply::Ok { result, .. }) => {
                    break serde_json::from_value::<Welcome>(result)
                        .map_err(|err| broken(format!("unreadable welcome: {err}")))?;
                }
                ServerMessage::Reply(Reply::Error { code, message, .. }) => {
                    return Err(ConnectError::Refused {
                        address: address.clone(),
                        code,
                        message,
                    });
                }
                ServerMessage::Event(Event::Bye(bye)) => {
                    return Err(ConnectError::Refused {
                        address: address.clone(),
                        code: bye.code,
                        message: bye.message,
                    });
                }
                ServerMessage::Event(_) | ServerMessage::Unknown => continue,
            }
        };

        let (writer, write_queue) = mpsc::channel(WRITE_QUEUE);
        let (data_writer, data_queue) = mpsc::channel(DATA_QUEUE);
        let (events_tx, events_rx) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            writer,
            data_writer,
            pending: Mutex::new(Pending {
                open: true,
                waiters: HashMap::new(),
            }),
            next_id: AtomicU64::new(1),
            quitting: AtomicBool::new(false),
            transfers: Mutex::new(HashMap::new()),
            stored: Mutex::new(HashMap::new()),
            next_transfer: AtomicU32::new(1),
            welcome,
            address,
            trust,
        });
        tokio::spawn(write_loop(write_half, write_queue, data_queue));
        tokio::spawn(read_loop(frames, shared.clone(), events_tx));
        Ok((Client { shared }, Events { rx: events_rx }))
    }

    /// What the server said when this client signed in.
    pub fn welcome(&self) -> &Welcome {
        &self.shared.welcome
    }

    /// How the server's certificate was trusted, over TLS.
    pub fn trust(&self) -> Option<&Trust> {
        self.shared.trust.as_ref()
    }

    /// The server's address as host:port.
    pub fn address(&self) -> &str {
        &self.shared.address
    }

    /// Sends one request and waits for its reply.
    pub async fn call<C: Call>(&self, request: C) -> Result<C::Output, RequestError> {
        self.call_on(&self.shared.writer, request).await
    }

    /// Sends a request on `lane` and waits for its reply.
    async fn call_on<C: Call>(
        &self,
        lane: &mpsc::Sender<Bytes>,
        request: C,
    ) -> Result<C::Output, RequestError> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.shared.pending.lock().unwrap();
            // Checked under the lock the reader closes it with, so no waiter is left behind.
            if !pending.open {
                return Err(RequestError::Closed);
            }
            pending.waiters.insert(id, tx);
        }
        let frame = control_frame(&Request {
            id,
            body: request.into(),
        });
        if lane.send(frame).await.is_err() {
            self.shared.pending.lock().unwrap().waiters.remove(&id);
            return Err(RequestError::Closed);
        }
        match rx.await.map_err(|_| RequestError::Closed)? {
            Reply::Ok { result, .. } => serde_json::from_value(result)
                .map_err(|err| RequestError::BadReply(err.to_string())),
            Reply::Error { code, message, .. } => Err(RequestError::Refused { code, message }),
        }
    }

    /// A new transfer id, registered to receive the transfer's data and its end.
    fn register_transfer(&self) -> (Registration, mpsc::Receiver<Chunk>) {
        let transfer = self.shared.next_transfer.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(TRANSFER_QUEUE);
        self.shared.transfers.lock().unwrap().insert(transfer, tx);
        let registration = Registration {
            transfer,
            shared: self.shared.clone(),
        };
        (registration, rx)
    }

    /// Starts uploading a file of `size` bytes named `name` into the shared folder `folder`.
    /// Send its bytes with [`Outgoing::send`], then [`Outgoing::finish`].
    pub async fn upload(
        &self,
        folder: &str,
        name: &str,
        size: u64,
    ) -> Result<Outgoing, RequestError> {
        let (registration, rx) = self.register_transfer();
        // Ready for progress before asking: it may follow the reply at once.
        let (progress, stored) = watch::channel(0);
        (self.shared.stored.lock().unwrap()).insert(registration.transfer, progress);
        let request = Upload {
            folder: folder.to_owned(),
            name: name.to_owned(),
            size,
            transfer: registration.transfer,
        };
        let info = self.call(request).await?;
        Ok(Outgoing {
            info,
            client: self.clone(),
            rx,
            stored,
            sent: 0,
            registration,
        })
    }

    /// Starts downloading the shared file `path` from byte `offset`. The returned stream yields
    /// the file's bytes, then how the transfer ended.
    pub async fn download(&self, path: &str, offset: u64) -> Result<Incoming, RequestError> {
        // Ready for the data before asking: it may follow the reply at once.
        let (registration, rx) = self.register_transfer();
        let transfer = registration.transfer;
        let request = Download {
            path: path.to_owned(),
            offset,
            transfer,
            window: DOWNLOAD_WINDOW,
        };
        let info = self.call(request).await?;
        Ok(Incoming {
            info,
            rx,
            taken: 0,
            reported: 0,
            ended: false,
            registration,
        })
    }

    /// Asks the server to stop transfer `transfer`.
    pub async fn cancel(&self, transfer: u32) -> Result<(), RequestError> {
        self.call(Cancel { transfer }).await.map(drop)
    }

    /// Signs off; the event stream then ends with [`Closed::Quit`].
    pub async fn quit(&self) -> Result<(), RequestError> {
        self.shared.quitting.store(true, Ordering::Release);
        self.call(Quit {}).await.map(drop)
    }
}

/// What a download yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    /// The next bytes of the file.
    Data(Bytes),
    /// How the transfer ended; nothing follows.
    End(TransferEnd),
}

/// A download under way: what the server said is coming, and the bytes as they arrive.
pub struct Incoming {
    /// The file's name and size, the transfer id and where the data starts.
    pub info: Downloading,
    rx: mpsc::Receiver<Chunk>,
    /// Bytes handed to the application, and how many of them the server has been told of.
    taken: u64,
    reported: u64,
    /// The stream has ended (or the connection has): nothing to cancel when it is dropped.
    ended: bool,
    registration: Registration,
}

impl Incoming {
    /// The next chunk; `None` if the connection closed before the transfer ended. Calling it
    /// says that the chunks before are dealt with (written, say): the server sends at most its
    /// window (`info.window`) beyond them. Cancel-safe: a call dropped before it returns loses
    /// no chunk, and a report it did not finish sending is sent by the next call.
    pub async fn next(&mut self) -> Option<Chunk> {
        self.report().await;
        let chunk = self.rx.recv().await;
        match &chunk {
            Some(Chunk::Data(bytes)) => self.taken += bytes.len() as u64,
            Some(Chunk::End(_)) | None => self.ended = true,
        }
        chunk
    }

    /// Tells the server what was taken, once a quarter of the window is unreported. The server
    /// stops only with the whole window unreported, so whenever the application waits for data
    /// while the server waits for a report, this call has just sent one.
    async fn report(&mut self) {
        let step = self.info.window / 4;
        if self.info.window == 0 || self.taken - self.reported < step.max(1) {
            return;
        }
        let progress = DownloadProgress {
            transfer: self.info.transfer,
            received: self.taken,
        };
        let shared = &self.registration.shared;
        shared.send_unanswered(progress.into()).await;
        self.reported = self.taken;
    }
}

impl Drop for Incoming {
    /// A download dropped before its end is cancelled: with a window, the server would
    /// otherwise wait for reports that never come, keeping one of the connection's transfers
    /// (and, without one, send the rest of the file for nothing).
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let cancel = Cancel {
            transfer: self.info.transfer,
        };
        let shared = &self.registration.shared;
        let frame = shared.unanswered_frame(cancel.into());
        // Dropped outside a runtime, with the queue full, the cancel is lost; the connection
        // closing ends the download all the same.
        if let Err(mpsc::error::TrySendError::Full(frame)) = shared.writer.try_send(frame)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let writer = shared.writer.clone();
            runtime.spawn(async move { writer.send(frame).await });
        }
    }
}

/// An upload under way.
pub struct Outgoing {
    /// The transfer id and the largest chunk the server takes.
    pub info: Uploading,
    client: Client,
    /// Where a `transfer_end` arrives if the server cancels or fails the upload early.
    rx: mpsc::Receiver<Chunk>,
    /// How many bytes the server has stored, as its `upload_progress` events say.
    stored: watch::Receiver<u64>,
    /// How many bytes were sent.
    sent: u64,
    registration: Registration,
}

impl Outgoing {
    /// Sends the next bytes of the file (at most `info.max_chunk`), once they fit in the
    /// server's window (`info.window`): requests sent meanwhile then wait behind a window of
    /// data at most, however slow the server's disk. Fails if the server ended the upload
    /// (cancelled, or failed), or the connection closed.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), UploadStopped> {
        if let Ok(Chunk::End(end)) = self.rx.try_recv() {
            return Err(UploadStopped::Ended(end));
        }
        self.room_for(bytes.len() as u64).await?;
        self.sent += bytes.len() as u64;
        let mut frame = BytesMut::with_capacity(9 + bytes.len());
        frame.put_u32((5 + bytes.len()) as u32);
        frame.put_u8(FrameKind::Data as u8);
        frame.put_u32(self.registration.transfer);
        frame.put_slice(bytes);
        self.client
            .shared
            .data_writer
            .send(frame.freeze())
            .await
            .map_err(|_| UploadStopped::Closed)
    }

    /// Waits until `len` more bytes fit in the window, or the upload ends.
    async fn room_for(&mut self, len: u64) -> Result<(), UploadStopped> {
        let window = self.info.window;
        loop {
            let in_flight = self.sent.saturating_sub(*self.stored.borrow_and_update());
            // No window (an older server), or room; a frame larger than the window goes alone.
            if window == 0 || in_flight == 0 || in_flight + len <= window {
                return Ok(());
            }
            tokio::select! {
                changed = self.stored.changed() => {
                    if changed.is_err() {
                        return Err(UploadStopped::Closed);
                    }
                }
                chunk = self.rx.recv() => match chunk {
                    Some(Chunk::End(end)) => return Err(UploadStopped::Ended(end)),
                    Some(Chunk::Data(_)) => {}
                    None => return Err(UploadStopped::Closed),
                },
            }
        }
    }

    /// Concludes the upload with the file's BLAKE3 hash (hex). The request travels behind the
    /// data, so the server has every byte when it checks.
    pub async fn finish(self, blake3: String) -> Result<Uploaded, RequestError> {
        let request = Finish {
            transfer: self.registration.transfer,
            blake3,
        };
        let lane = self.client.shared.data_writer.clone();
        self.client.call_on(&lane, request).await
    }
}

/// Why an upload stopped before `finish`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum UploadStopped {
    /// The server ended it: `status` is `cancelled` or `failed`.
    #[error("the server ended the upload")]
    Ended(TransferEnd),
    /// The connection closed.
    #[error("the connection to the server is closed")]
    Closed,
}

/// Routes a transfer's data to its [`Incoming`] for as long as this lives.
struct Registration {
    transfer: u32,
    shared: Arc<Shared>,
}

impl Shared {
    /// Sends a request whose reply nobody awaits: the reader drops a reply no waiter has the
    /// id of. For reports that need no answer; a connection closed is seen by the next call.
    async fn send_unanswered(&self, body: RequestBody) {
        let _ = self.writer.send(self.unanswered_frame(body)).await;
    }

    /// The frame of a request whose reply nobody awaits, with an id of its own.
    fn unanswered_frame(&self, body: RequestBody) -> Bytes {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        control_frame(&Request { id, body })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.shared.transfers.lock().unwrap().remove(&self.transfer);
        self.shared.stored.lock().unwrap().remove(&self.transfer);
    }
}

/// Writes control frames and upload data to the socket, control first, so a message typed
/// during an upload does not wait behind it.
async fn write_loop<W: AsyncWrite>(
    write_half: W,
    mut control: mpsc::Receiver<Bytes>,
    mut data: mpsc::Receiver<Bytes>,
) {
    let mut write_half = pin!(write_half);
    loop {
        let frame = tokio::select! {
            biased;
            frame = control.recv() => match frame {
                Some(frame) => frame,
                None => break,
            },
            Some(frame) = data.recv() => frame,
        };
        if write_half.write_all(&frame).await.is_err() {
            return;
        }
    }
    let _ = write_half.shutdown().await;
}

async fn read_loop<S: AsyncRead>(
    mut frames: FramedRead<ReadHalf<S>, FrameCodec>,
    shared: Arc<Shared>,
    events: mpsc::Sender<ClientEvent>,
) {
    let interval = Duration::from_millis(shared.welcome.keepalive_ms.max(100));
    let silence_limit = Duration::from_millis(shared.welcome.timeout_ms.max(300));
    let mut last_heard = Instant::now();
    let mut ping_sent = false;
    // Like the server: one timer, re-armed when it rings rather than on every frame.
    let mut alarm = pin!(sleep_until(last_heard + interval));
    let closed = loop {
        let next = tokio::select! {
            next = frames.next() => next,
            _ = &mut alarm => {
                let silent = last_heard.elapsed();
                if silent >= silence_limit {
                    break Closed::Lost(format!("no answer from the server for {} seconds", silent.as_secs()));
                }
                if silent >= interval && !ping_sent {
                    let _ = shared.writer.try_send(Bytes::from_static(&PING_FRAME));
                    ping_sent = true;
                }
                alarm.as_mut().reset(last_heard + if ping_sent { silence_limit } else { interval });
                continue;
            }
        };
        last_heard = Instant::now();
        ping_sent = false;
        let json = match next {
            None if shared.quitting.load(Ordering::Acquire) => break Closed::Quit,
            None => break Closed::Lost("the server closed the connection without a word".into()),
            Some(Err(err)) => break Closed::Lost(err.to_string()),
            Some(Ok(Frame::Control(json))) => json,
            Some(Ok(Frame::Ping)) => {
                let _ = shared.writer.try_send(Bytes::from_static(&PONG_FRAME));
                continue;
            }
            Some(Ok(Frame::Data { transfer, payload })) => {
                let sink = shared.transfers.lock().unwrap().get(&transfer).cloned();
                if let Some(sink) = sink {
                    let _ = sink.send(Chunk::Data(payload)).await;
                }
                continue;
            }
            Some(Ok(Frame::Pong)) => continue,
        };
        match ServerMessage::decode(&json) {
            Ok(ServerMessage::Reply(reply)) => {
                let waiter = shared.pending.lock().unwrap().waiters.remove(&reply.id());
                if let Some(waiter) = waiter {
                    let _ = waiter.send(reply);
                }
            }
            Ok(ServerMessage::Event(Event::Bye(bye))) => break Closed::ByServer(bye),
            Ok(ServerMessage::Event(Event::UploadProgress(UploadProgress {
                transfer,
                stored,
            }))) => {
                if let Some(progress) = shared.stored.lock().unwrap().get(&transfer) {
                    // Only ever more: one arriving late is stale.
                    progress.send_if_modified(|known| {
                        let newer = stored > *known;
                        if newer {
                            *known = stored;
                        }
                        newer
                    });
                }
            }
            Ok(ServerMessage::Event(Event::TransferEnd(end))) => {
                let sink = shared.transfers.lock().unwrap().remove(&end.transfer);
                if let Some(sink) = sink {
                    let _ = sink.send(Chunk::End(end)).await;
                }
            }
            Ok(ServerMessage::Event(event)) => {
                // An application that dropped its Events still gets its replies.
                let _ = events.send(ClientEvent::Server(event)).await;
            }
            Ok(ServerMessage::Unknown) => {}
            Err(err) => {
                break Closed::Lost(format!("the server sent an unreadable message: {err}"));
            }
        }
    };
    // Dropping the waiters makes every pending call fail with `Closed`, and later calls fail
    // at once.
    {
        let mut pending = shared.pending.lock().unwrap();
        pending.open = false;
        pending.waiters.clear();
    }
    // Likewise every download's stream ends, without a `Chunk::End`, and uploads waiting for
    // room stop waiting.
    shared.transfers.lock().unwrap().clear();
    shared.stored.lock().unwrap().clear();
    let _ = events.send(ClientEvent::Closed(closed)).await;
}
