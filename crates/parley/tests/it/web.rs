//! The browser's side of the server, at the protocol level: the page and the native protocol
//! share one port, a WebSocket session is a session like any other, and the HTTP file
//! endpoints serve only signed-in sessions, only the shared folder, within the upload limits.
//! The browser itself is tested in Chromium by `tests/web` (see the README).

use std::fs;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use parley_client::ClientEvent;
use parley_proto::event::Event;
use parley_proto::request::Msg;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::support::*;

/// An HTTP response, read whole.
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// The value of header `name`, if present.
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    pub(crate) fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// Sends `head` (without its final blank line) and `body` on a new connection, and reads the
/// whole response; the connection closes after it.
pub(crate) async fn http(addr: SocketAddr, head: &str, body: &[u8]) -> Response {
    timeout(WAIT, async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!("{head}\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse(&raw)
    })
    .await
    .expect("the server answered in time")
}

pub(crate) fn parse(raw: &[u8]) -> Response {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    Response {
        status,
        head,
        body: raw[end + 4..].to_vec(),
    }
}

pub(crate) async fn get(addr: SocketAddr, path: &str, headers: &str) -> Response {
    let head = format!("GET {path} HTTP/1.1{headers}");
    http(addr, &head, b"").await
}

/// A page's WebSocket, signed in as `name`; returns it and the welcome.
pub(crate) async fn browser(
    addr: SocketAddr,
    name: &str,
) -> (
    tokio_tungstenite::WebSocketStream<TcpStream>,
    serde_json::Map<String, Value>,
) {
    let mut socket = open_socket(addr, Some(&format!("http://{addr}")))
        .await
        .expect("the page's own origin is accepted");
    let hello = json!({"id": 1, "type": "hello", "versions": [1], "name": name});
    socket.send(Message::text(hello.to_string())).await.unwrap();
    let welcome = next_json(&mut socket, |m| m["type"] == "ok").await;
    (socket, welcome["result"].as_object().unwrap().clone())
}

async fn open_socket(
    addr: SocketAddr,
    origin: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    if let Some(origin) = origin {
        let origin = HeaderValue::from_str(origin).unwrap();
        request.headers_mut().insert("origin", origin);
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    let (socket, _) = timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("the upgrade is answered in time")?;
    Ok(socket)
}

/// The next text message matching `wanted`, skipping others.
async fn next_json(
    socket: &mut tokio_tungstenite::WebSocketStream<TcpStream>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    timeout(WAIT, async {
        loop {
            let message = socket.next().await.expect("open").expect("readable");
            if let Message::Text(text) = message {
                let value: Value = serde_json::from_str(&text).unwrap();
                if wanted(&value) {
                    return value;
                }
            }
        }
    })
    .await
    .expect("the expected message arrived in time")
}

/// The download cookie the server sets (among others the browser may have), as a header.
pub(crate) fn cookie(token: &str) -> String {
    format!("\r\nCookie: theme=dark; parley_token={token}")
}

/// The header that authorizes an upload.
pub(crate) fn token_header(token: &str) -> String {
    format!("\r\nX-Parley-Token: {token}")
}

#[tokio::test]
async fn the_page_is_served_on_the_chat_port_beside_native_clients() {
    let server = TestServer::start().await;
    let page = get(server.addr, "/", "").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let policy = page.header("content-security-policy").unwrap();
    assert!(policy.contains("default-src 'self'"), "{policy}");
    let html = String::from_utf8(page.body).unwrap();
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page loads a script");
    let script = get(
        server.addr,
        &format!("/{}", script.trim_start_matches('/')),
        "",
    )
    .await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(get(server.addr, "/no-such-file.js", "").await.status, 404);

    // The same port still speaks the native protocol; native sessions get no token.
    let (alice, _events) = server.join("alice").await;
    assert_eq!(alice.welcome().token, None);
}

#[tokio::test]
async fn a_browser_session_chats_with_native_clients() {
    let server = TestServer::start().await;
    let (bob, mut bob_events) = server.join("bob").await;
    let (mut page, welcome) = browser(server.addr, "alice").await;
    assert_eq!(welcome["name"], "alice");
    assert_eq!(welcome["token"].as_str().map(str::len), Some(64));

    let say = json!({"id": 2, "type": "say", "room": "lobby", "text": "hi from the browser"});
    page.send(Message::text(say.to_string())).await.unwrap();
    let confirmed = next_json(&mut page, |m| m["id"] == 2).await;
    assert_eq!(confirmed["type"], "ok", "{confirmed}");
    let heard = wait_for(&mut bob_events, |event| match event {
        ClientEvent::Server(Event::Message(m)) => Some(m.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (heard.from.as_str(), heard.text.as_str()),
        ("alice", "hi from the browser")
    );

    let private = Msg {
        to: "alice".into(),
        text: "hi from the terminal".into(),
    };
    bob.call(private).await.unwrap();
    let private = next_json(&mut page, |m| m["type"] == "private").await;
    assert_eq!(private["from"], "bob");
    assert_eq!(private["text"], "hi from the terminal");

    // The native protocol's rules hold over the WebSocket: a second hello is refused.
    let again = json!({"id": 3, "type": "hello", "versions": [1], "name": "carol"});
    page.send(Message::text(again.to_string())).await.unwrap();
    let refused = next_json(&mut page, |m| m["id"] == 3).await;
    assert_eq!(refused["code"], "already_signed_in", "{refused}");
}

#[tokio::test]
async fn a_taken_name_is_refused_over_the_websocket_with_a_sentence() {
    let server = TestServer::start().await;
    let (_bob, _events) = server.join("bob").await;
    let mut page = open_socket(server.addr, Some(&format!("http://{}", server.addr)))
        .await
        .unwrap();
    let hello = json!({"id": 1, "type": "hello", "versions": [1], "name": "BOB"});
    page.send(Message::text(hello.to_string())).await.unwrap();
    let refused = next_json(&mut page, |m| m["id"] == 1).await;
    assert_eq!(refused["code"], "name_taken", "{refused}");
    assert!(refused["message"].as_str().unwrap().contains("is taken"));
}

#[tokio::test]
async fn websockets_from_other_sites_are_refused() {
    let server = TestServer::start().await;
    for origin in [Some("http://evil.example"), Some("https://127.0.0.1"), None] {
        match open_socket(server.addr, origin).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "origin {origin:?}");
            }
            other => panic!("origin {origin:?} was not refused: {:?}", other.map(|_| ())),
        }
    }
}

#[tokio::test]
async fn files_are_for_signed_in_sessions_only() {
    let server = TestServer::start().await;
    fs::write(server.shared.path().join("notes.txt"), "shared notes").unwrap();
    let anonymous = get(server.addr, "/files/notes.txt", "").await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.json()["code"], "handshake_required");
    let guessed = get(server.addr, "/files/notes.txt", &cookie(&"0".repeat(64))).await;
    assert_eq!(guessed.status, 401);

    let (page, welcome) = browser(server.addr, "alice").await;
    let token = welcome["token"].as_str().unwrap().to_owned();
    let download = get(server.addr, "/files/notes.txt", &cookie(&token)).await;
    assert_eq!(download.status, 200);
    assert_eq!(download.body, b"shared notes");
    assert_eq!(
        download.header("content-disposition"),
        Some("attachment; filename=\"notes.txt\"; filename*=UTF-8''notes.txt")
    );

    // Signed out, the token no longer works.
    drop(page);
    timeout(WAIT, async {
        while get(server.addr, "/files/notes.txt", &cookie(&token))
            .await
            .status
            != 401
        {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the token ends with its session");
}

#[tokio::test]
async fn downloads_resume_with_ranges() {
    let server = TestServer::start().await;
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
    fs::write(server.shared.path().join("data.bin"), &bytes).unwrap();
    let (_page, welcome) = browser(server.addr, "alice").await;
    let auth = cookie(welcome["token"].as_str().unwrap());

    let whole = get(server.addr, "/files/data.bin", &auth).await;
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let tag = whole.header("etag").unwrap().to_owned();
    let part = get(
        server.addr,
        "/files/data.bin",
        &format!("{auth}\r\nRange: bytes=10-19"),
    )
    .await;
    assert_eq!(part.status, 206);
    assert_eq!(part.header("content-range"), Some("bytes 10-19/1000"));
    assert_eq!(part.body, &bytes[10..20]);
    let rest = format!("{auth}\r\nRange: bytes=990-\r\nIf-Range: {tag}");
    let rest = get(server.addr, "/files/data.bin", &rest).await;
    assert_eq!((rest.status, rest.body.as_slice()), (206, &bytes[990..]));
    // A download resumed after the file changed starts over.
    let stale = format!("{auth}\r\nRange: bytes=990-\r\nIf-Range: \"old\"");
    let stale = get(server.addr, "/files/data.bin", &stale).await;
    assert_eq!((stale.status, stale.body.len()), (200, 1000));
    let beyond = get(
        server.addr,
        "/files/data.bin",
        &format!("{auth}\r\nRange: bytes=5000-"),
    )
    .await;
    assert_eq!(beyond.status, 416);
    assert_eq!(beyond.header("content-range"), Some("bytes */1000"));
}

#[tokio::test]
async fn no_path_escapes_the_shared_folder() {
    let server = TestServer::start().await;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "secret").unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        server.shared.path().join("link.txt"),
    )
    .unwrap();
    let (_page, welcome) = browser(server.addr, "alice").await;
    let auth = cookie(welcome["token"].as_str().unwrap());
    let up = format!(
        "..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2F..%2F..{}",
        outside.path().join("secret.txt").display()
    )
    .replace('/', "%2F");
    for path in [
        "/files/link.txt".to_owned(),
        "/files/..%2Fsecret.txt".to_owned(),
        "/files/%2e%2e/secret.txt".to_owned(),
        format!("/files/{up}"),
        format!("/files/{}", outside.path().join("secret.txt").display()),
    ] {
        let response = get(server.addr, &path, &auth).await;
        assert!(
            matches!(response.status, 400 | 404),
            "{path}: {}",
            response.status
        );
        assert_ne!(response.body, b"secret", "{path}");
    }
}

#[tokio::test]
async fn an_upload_from_the_browser_is_published_whole_and_announced() {
    let server = TestServer::start().await;
    fs::create_dir(server.shared.path().join("Docs")).unwrap();
    let (_bob, mut bob_events) = server.join("bob").await;
    let (_page, welcome) = browser(server.addr, "alice").await;
    let auth = token_header(welcome["token"].as_str().unwrap());
    let bytes: Vec<u8> = (0..(600 * 1024u32)).map(|i| (i % 251) as u8).collect();

    let head = format!(
        "POST /upload?folder=Docs&name=r%C3%A9sum%C3%A9.pdf HTTP/1.1{auth}\r\nContent-Length: {}",
        bytes.len()
    );
    let created = http(server.addr, &head, &bytes).await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    let uploaded = created.json();
    assert_eq!(uploaded["path"], "Docs/résumé.pdf");
    assert_eq!(uploaded["size"], bytes.len());
    assert_eq!(
        fs::read(server.shared.path().join("Docs/résumé.pdf")).unwrap(),
        bytes
    );
    let shared = wait_for(&mut bob_events, |event| match event {
        ClientEvent::Server(Event::Shared(shared)) => Some(shared.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (shared.user.as_str(), shared.path.as_str()),
        ("alice", "Docs/résumé.pdf")
    );

    // The same name again is kept beside the first, not over it.
    let again = http(server.addr, &head, &bytes).await;
    assert_eq!(again.json()["name"], "résumé (1).pdf");
}

#[tokio::test]
async fn upload_limits_and_checks_apply_over_http() {
    let server = TestServer::with_config(Config {
        max_upload: 1000,
        ..Config::default()
    })
    .await;
    let (_page, welcome) = browser(server.addr, "alice").await;
    let token = welcome["token"].as_str().unwrap();
    let auth = token_header(token);
    let post = |query: &str, length: usize| {
        format!("POST /upload?{query} HTTP/1.1{auth}\r\nContent-Length: {length}")
    };

    let anonymous = http(
        server.addr,
        "POST /upload?name=a.txt HTTP/1.1\r\nContent-Length: 1",
        b"x",
    )
    .await;
    assert_eq!(anonymous.status, 401);
    // The download cookie does not upload: pages of other ports of this host can send it.
    let cookie_only = format!(
        "POST /upload?name=a.txt HTTP/1.1{}\r\nContent-Length: 1",
        cookie(token)
    );
    assert_eq!(http(server.addr, &cookie_only, b"x").await.status, 401);
    // Nor may another site's page use the token, had it learnt it.
    let foreign = format!("{}\r\nOrigin: http://evil.example", post("name=a.txt", 1));
    assert_eq!(http(server.addr, &foreign, b"x").await.status, 400);
    let large = http(server.addr, &post("name=big.bin", 2000), &[0; 2000]).await;
    assert_eq!(large.status, 413);
    assert!(
        large.json()["message"]
            .as_str()
            .unwrap()
            .contains("1000 bytes")
    );
    let escaping = http(server.addr, &post("name=..%2Fx.txt", 1), b"x").await;
    assert_eq!(
        (escaping.status, escaping.json()["code"].as_str()),
        (400, Some("bad_path"))
    );
    let outside = http(server.addr, &post("folder=..&name=x.txt", 1), b"x").await;
    assert_eq!(outside.status, 400);
    let unnamed = http(server.addr, &post("folder=", 1), b"x").await;
    assert_eq!(unnamed.status, 400);
    let chunked = format!("POST /upload?name=c.txt HTTP/1.1{auth}\r\nTransfer-Encoding: chunked");
    let chunked = http(server.addr, &chunked, b"1\r\nx\r\n0\r\n\r\n").await;
    assert_eq!(chunked.status, 411);

    // A body that breaks off leaves nothing behind.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "{}\r\nHost: {}\r\n\r\n",
        post("name=cut.bin", 900),
        server.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[7; 300]).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut raw = Vec::new();
    let _ = timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap();
    let whole = http(server.addr, &post("name=whole.bin", 900), &[7; 900]).await;
    assert_eq!(whole.status, 201);
    let mut names: Vec<_> = fs::read_dir(server.shared.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != ".parley")
        .collect();
    names.sort();
    assert_eq!(names, ["whole.bin"]);
}

#[tokio::test]
async fn the_server_prints_the_address_to_open_in_a_browser() {
    let (server, addr) = Proc::server().await;
    let printed = format!("Browsers: http://{addr}/");
    assert!(server.seen.contains(&printed), "{:?}", server.seen);
    let page = get(addr, "/", "").await;
    assert_eq!(page.status, 200);
    assert!(
        String::from_utf8(page.body)
            .unwrap()
            .contains("<title>Parley</title>")
    );
}

#[tokio::test]
async fn files_cross_the_websocket_as_binary_messages_too() {
    let server = TestServer::start().await;
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i % 241) as u8).collect();
    fs::write(server.shared.path().join("big.bin"), &bytes).unwrap();
    let (mut page, _) = browser(server.addr, "alice").await;

    // A download: the file's data frames arrive as binary messages, transfer id first.
    let download = json!({"id": 2, "type": "download", "path": "big.bin", "transfer": 7});
    page.send(Message::text(download.to_string()))
        .await
        .unwrap();
    let mut received = Vec::new();
    let end = timeout(WAIT, async {
        loop {
            match page.next().await.unwrap().unwrap() {
                Message::Binary(data) => {
                    assert_eq!(data[..4], 7u32.to_be_bytes());
                    received.extend_from_slice(&data[4..]);
                }
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(&text).unwrap();
                    if value["type"] == "transfer_end" {
                        return value;
                    }
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(end["status"], "complete", "{end}");
    assert!(received == bytes, "the download arrived byte for byte");

    // An upload: binary messages carry the data frames the other way.
    let data = b"uploaded over the socket";
    let upload = json!({"id": 3, "type": "upload", "folder": "", "name": "up.txt",
        "size": data.len(), "transfer": 8});
    page.send(Message::text(upload.to_string())).await.unwrap();
    assert_eq!(next_json(&mut page, |m| m["id"] == 3).await["type"], "ok");
    let frame = [&8u32.to_be_bytes()[..], data].concat();
    page.send(Message::binary(frame)).await.unwrap();
    let hash = blake3::hash(data).to_hex().to_string();
    let finish = json!({"id": 4, "type": "finish", "transfer": 8, "blake3": hash});
    page.send(Message::text(finish.to_string())).await.unwrap();
    let finished = next_json(&mut page, |m| m["id"] == 4).await;
    assert_eq!(finished["result"]["path"], "up.txt", "{finished}");
    assert_eq!(fs::read(server.shared.path().join("up.txt")).unwrap(), data);
}

#[tokio::test]
async fn the_download_cookie_is_set_by_the_server_out_of_scripts_reach() {
    let server = TestServer::start().await;
    let (_page, welcome) = browser(server.addr, "alice").await;
    let token = welcome["token"].as_str().unwrap();
    let own = format!("\r\nOrigin: http://{}", server.addr);
    let set = format!(
        "POST /session HTTP/1.1{}{own}\r\nContent-Length: 0",
        token_header(token)
    );
    let set = http(server.addr, &set, b"").await;
    assert_eq!(set.status, 204);
    assert_eq!(
        set.header("set-cookie"),
        Some(format!("parley_token={token}; Path=/files; HttpOnly; SameSite=Strict").as_str())
    );
    let forged = "POST /session HTTP/1.1\r\nX-Parley-Token: forged\r\nContent-Length: 0";
    assert_eq!(http(server.addr, forged, b"").await.status, 401);
}

#[tokio::test]
async fn an_upload_that_goes_silent_is_dropped_and_leaves_nothing() {
    let server = TestServer::with_config(Config {
        keepalive_timeout: std::time::Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    let (_page, welcome) = browser(server.addr, "alice").await;
    let auth = token_header(welcome["token"].as_str().unwrap());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /upload?name=slow.bin HTTP/1.1{auth}\r\nHost: {}\r\nContent-Length: 1000000\r\n\r\n",
        server.addr
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&[1; 100]).await.unwrap();
    // Nothing more is sent, and the connection stays open: the server must give up by itself.
    let mut raw = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("the server gave up on the silent upload")
        .unwrap();
    let response = parse(&raw);
    assert_eq!(response.status, 400);
    assert!(
        response.json()["message"]
            .as_str()
            .unwrap()
            .contains("nothing arrived")
    );
    let staging = server.shared.path().join(".parley/staging");
    assert_eq!(
        fs::read_dir(staging).unwrap().count(),
        0,
        "the staged file is gone"
    );
}

#[tokio::test]
async fn a_page_that_closes_is_answered_with_a_close() {
    let server = TestServer::start().await;
    let (mut page, _) = browser(server.addr, "alice").await;
    page.close(None).await.unwrap();
    let answered = timeout(WAIT, async {
        loop {
            match page.next().await {
                Some(Ok(Message::Close(_))) => return true,
                None => return false,
                Some(Ok(_)) => {}
                Some(Err(_)) => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(answered, "the server answered the close handshake");
}

#[tokio::test]
async fn a_page_is_told_when_the_server_shuts_down() {
    let server = TestServer::start().await;
    let (mut page, _) = browser(server.addr, "alice").await;
    server.shutdown.cancel();
    let bye = next_json(&mut page, |m| m["type"] == "bye").await;
    assert_eq!(bye["code"], "shutdown", "{bye}");
    timeout(WAIT, server.task)
        .await
        .expect("the server stopped within its grace")
        .unwrap()
        .unwrap();
}
