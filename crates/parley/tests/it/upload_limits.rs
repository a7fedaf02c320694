//! Upload reservations are bounded: an upload that makes no progress gives its disk space back,
//! what one connection and one address may hold promised is limited, and a guest is not told the
//! server's free space. And an HTTP upload's name must decode to UTF-8.

use std::fs;
use std::time::Duration;

use parley_client::{RequestError, UploadStopped};
use parley_proto::ErrorCode;
use parley_proto::event::{TransferEnd, TransferStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::support::*;
use crate::web::{browser, http, parse, token_header};

/// An idle timeout short enough for a test, long enough not to end an upload that is going.
const IDLE: Duration = Duration::from_millis(600);

/// The free space of the file system temporary folders are made on.
fn free_space() -> u64 {
    let probe = tempfile::tempdir().unwrap();
    let stats = nix::sys::statvfs::statvfs(probe.path()).unwrap();
    stats.blocks_available() as u64 * stats.fragment_size() as u64
}

/// A server with room above its reserve for one upload of 2 GiB, not two (with 1 GiB of slack
/// for whatever else writes to this disk meanwhile), and a short idle timeout.
async fn room_for_one() -> TestServer {
    TestServer::with_config(Config {
        disk_reserve: free_space().saturating_sub(3 << 30),
        max_upload: 4 << 30,
        upload_idle_timeout: IDLE,
        ..Config::default()
    })
    .await
}

fn staged(server: &TestServer) -> usize {
    fs::read_dir(server.shared.path().join(".parley/staging"))
        .unwrap()
        .count()
}

/// The `transfer_end` the server sends for an upload it ends by itself.
async fn ended_by_server(upload: &mut parley_client::Outgoing) -> TransferEnd {
    // A send after the end fails with it; wait for it with sends of nothing, as the end may
    // be anywhere in the next [`IDLE`].
    within("the server's end of the upload", async {
        loop {
            match upload.send(b"").await {
                Err(UploadStopped::Ended(end)) => return end,
                Err(other) => panic!("{other:?}"),
                Ok(()) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_silent_upload_is_cancelled_and_gives_its_space_back() {
    let server = room_for_one().await;
    let (mallory, _events) = server.join("mallory").await;
    let (alice, _events) = server.join("alice").await;
    let started = Instant::now();
    let mut held = mallory.upload("", "held.bin", 2 << 30).await.unwrap();
    assert_refused(
        alice.upload("", "first.bin", 2 << 30).await.map(drop),
        ErrorCode::NoSpace,
    );

    // Nothing is sent (though the connection answers pings): the server gives up on it.
    let end = ended_by_server(&mut held).await;
    assert!(
        started.elapsed() >= IDLE,
        "ended after {:?}",
        started.elapsed()
    );
    assert_eq!(end.status, TransferStatus::Failed, "{end:?}");
    assert_eq!(end.code, Some(ErrorCode::UploadStalled), "{end:?}");
    assert_eq!(staged(&server), 0, "its staged file is gone");
    let again = alice.upload("", "first.bin", 2 << 30).await;
    assert!(
        again.is_ok(),
        "its space was not given back: {:?}",
        again.err()
    );
    let finished = held.finish("00".repeat(32)).await;
    assert_refused(finished, ErrorCode::BadTransfer);
}

#[tokio::test]
async fn a_trickling_upload_is_cancelled_too() {
    let server = room_for_one().await;
    let (mallory, _events) = server.join("mallory").await;
    let mut held = mallory.upload("", "held.bin", 2 << 30).await.unwrap();
    // A byte every tenth of the idle timeout: never silent, never progressing.
    let end = within("the server's end of the trickle", async {
        loop {
            match held.send(b"x").await {
                Err(UploadStopped::Ended(end)) => return end,
                Err(other) => panic!("{other:?}"),
                Ok(()) => tokio::time::sleep(IDLE / 10).await,
            }
        }
    })
    .await;
    assert_eq!(end.code, Some(ErrorCode::UploadStalled), "{end:?}");
    assert_eq!(staged(&server), 0);
    let (alice, _events) = server.join("alice").await;
    assert!(alice.upload("", "first.bin", 2 << 30).await.is_ok());
}

#[tokio::test]
async fn an_upload_that_keeps_going_is_not_cancelled() {
    let server = TestServer::with_config(Config {
        upload_idle_timeout: IDLE,
        ..Config::default()
    })
    .await;
    let (alice, _events) = server.join("alice").await;
    // Slow but steady: 16 KiB every third of the idle timeout, for three timeouts; then a wait
    // of half of one before `finish`.
    let chunk = vec![3u8; 16 * 1024];
    let mut upload = alice.upload("", "steady.bin", 9 * 16 * 1024).await.unwrap();
    for _ in 0..9 {
        upload.send(&chunk).await.unwrap();
        tokio::time::sleep(IDLE / 3).await;
    }
    tokio::time::sleep(IDLE / 2).await;
    let hash = blake3::hash(&[3u8; 9 * 16 * 1024]).to_hex().to_string();
    let uploaded = upload.finish(hash).await.unwrap();
    assert_eq!(uploaded.size, 9 * 16 * 1024);
}

#[tokio::test]
async fn what_one_connection_and_one_address_hold_is_bounded() {
    let server = TestServer::with_config(Config {
        max_reserved_per_connection: 1000,
        max_reserved_per_address: 1500,
        ..Config::default()
    })
    .await;
    let (alice, _events) = server.join("alice").await;
    let (bob, _events) = server.join("bob").await;
    let quota = |result: Result<parley_client::Outgoing, RequestError>| match result {
        Err(RequestError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::UploadQuota, "{message}");
            message
        }
        other => panic!("expected upload_quota, got {:?}", other.map(|_| ())),
    };

    let first = alice.upload("", "a.bin", 600).await.unwrap();
    // A second would take this connection past its share.
    let message = quota(alice.upload("", "b.bin", 600).await);
    assert!(message.contains("1000"), "{message}");
    // Another connection from the same address may hold its share, up to the address's.
    let _second = bob.upload("", "c.bin", 600).await.unwrap();
    let message = quota(bob.upload("", "d.bin", 400).await);
    assert!(message.contains("1500"), "{message}");
    // Shares come back when uploads end.
    alice.cancel(first.info.transfer).await.unwrap();
    assert!(bob.upload("", "d.bin", 400).await.is_ok());

    // A browser's HTTP uploads count against its session's share.
    let (_page, welcome) = browser(server.addr, "carol").await;
    let auth = token_header(welcome["token"].as_str().unwrap());
    let head = format!("POST /upload?name=e.bin HTTP/1.1{auth}\r\nContent-Length: 1001");
    let response = http(server.addr, &head, &[0; 1001]).await;
    assert_eq!(response.json()["code"], "upload_quota");
}

#[tokio::test]
async fn a_guest_is_not_told_the_free_space() {
    let reserve = u64::MAX / 2;
    let server = TestServer::with_config(Config {
        disk_reserve: reserve,
        ..Config::default()
    })
    .await;
    let (guest, _events) = server.join("guest").await;
    let message = match guest.upload("", "a.bin", 10).await {
        Err(RequestError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::NoSpace);
            message
        }
        other => panic!("expected no_space, got {:?}", other.map(|_| ())),
    };
    // Numbers it may say: the reserve and the file's size, nothing else.
    for number in message
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
    {
        assert!(
            number == reserve.to_string() || number == "10",
            "{message:?} tells {number}"
        );
    }
}

#[tokio::test]
async fn an_http_upload_that_trickles_is_cancelled_and_gives_its_space_back() {
    let server = room_for_one().await;
    let (_page, welcome) = browser(server.addr, "mallory").await;
    let auth = token_header(welcome["token"].as_str().unwrap());
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /upload?name=held.bin HTTP/1.1{auth}\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        server.addr,
        2u64 << 30
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    // A byte every tenth of the idle timeout (well within the keepalive timeout) until the
    // server answers.
    let trickle = async {
        loop {
            if write.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(IDLE / 10).await;
        }
    };
    let mut raw = Vec::new();
    let answer = async {
        let mut buf = [0; 4096];
        loop {
            match read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if raw.windows(4).any(|w| w == b"\r\n\r\n") && raw.ends_with(b"}") {
                return;
            }
        }
    };
    let answered = timeout(WAIT, async {
        tokio::select! {
            () = answer => {}
            () = trickle => {}
        }
    })
    .await;
    assert!(answered.is_ok(), "the server is still taking the trickle");
    let response = parse(&raw);
    assert_eq!(response.status, 408, "{}", response.head);
    assert_eq!(response.json()["code"], "upload_stalled");
    assert_eq!(staged(&server), 0);
    let (alice, _events) = server.join("alice").await;
    let again = alice.upload("", "first.bin", 2 << 30).await;
    assert!(
        again.is_ok(),
        "its space was not given back: {:?}",
        again.err()
    );
}

#[tokio::test]
async fn an_http_upload_name_that_is_not_utf8_is_refused() {
    let server = TestServer::start().await;
    let (_page, welcome) = browser(server.addr, "alice").await;
    let auth = token_header(welcome["token"].as_str().unwrap());
    for query in ["name=%c0%ae.txt", "folder=%ff&name=a.txt", "name=a%e9.txt"] {
        let head = format!("POST /upload?{query} HTTP/1.1{auth}\r\nContent-Length: 1");
        let response = http(server.addr, &head, b"x").await;
        assert_eq!(response.status, 400, "{query}");
        let message = response.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains("UTF-8"), "{query}: {message}");
    }
    let names: Vec<_> = fs::read_dir(server.shared.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != ".parley")
        .collect();
    assert!(names.is_empty(), "{names:?}");
}
