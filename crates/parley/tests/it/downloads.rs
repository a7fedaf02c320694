//! Downloads: byte-identical and verified, resumed after a cut, never overwriting, never
//! escaping the shared folder, several at once, cancellable, and chat stays live meanwhile.

use std::fs;
use std::path::Path;
use std::time::Duration;

use parley_client::download::{self, DownloadError};
use parley_client::{Client, ClientEvent, Events, RequestError};
use parley_proto::ErrorCode;
use parley_proto::event::Event;
use parley_proto::limits::MAX_TRANSFERS;

use crate::support::*;

/// Writes `len` bytes that differ from position to position, so misplaced bytes show.
fn patterned(path: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    fs::write(path, &bytes).unwrap();
    bytes
}

/// A sparse file of `len` zero bytes: instant to make, real bytes to send.
fn sparse(path: &Path, len: u64) {
    fs::File::create(path).unwrap().set_len(len).unwrap();
}

async fn save(
    client: &parley_client::Client,
    path: &str,
    dir: &Path,
) -> Result<download::Saved, DownloadError> {
    download::download(client, path, dir, |_| {}, |_| {}).await
}

#[tokio::test]
async fn a_download_is_byte_identical_and_appears_only_when_complete() {
    let server = TestServer::start().await;
    fs::create_dir(server.shared.path().join("DeepFiles")).unwrap();
    let original = patterned(&server.shared.path().join("DeepFiles/data.bin"), 3 << 20);
    let (alice, _events) = server.join("alice").await;
    let dir = tempfile::tempdir().unwrap();

    let mut sizes = Vec::new();
    let saved = download::download(
        &alice,
        "DeepFiles/data.bin",
        dir.path(),
        |info| sizes.push(info.size),
        |_| {
            assert!(
                !dir.path().join("data.bin").exists(),
                "visible before it was verified"
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(sizes, [3 << 20], "the size is known before the data comes");
    assert_eq!(saved.path, dir.path().join("data.bin"));
    assert_eq!(fs::read(&saved.path).unwrap(), original);
    assert!(!dir.path().join("data.bin.part").exists());

    // The same again does not overwrite: it gets a numbered name.
    let again = save(&alice, "DeepFiles/data.bin", dir.path())
        .await
        .unwrap();
    assert_eq!(again.path, dir.path().join("data (1).bin"));
    assert_eq!(fs::read(&again.path).unwrap(), original);
}

#[tokio::test]
async fn a_partial_file_is_resumed_and_still_verified() {
    let server = TestServer::start().await;
    let original = patterned(&server.shared.path().join("big.bin"), 2 << 20);
    let (alice, _events) = server.join("alice").await;
    let dir = tempfile::tempdir().unwrap();

    fs::write(dir.path().join("big.bin.part"), &original[..700_001]).unwrap();
    let saved = save(&alice, "big.bin", dir.path()).await.unwrap();
    assert_eq!(saved.resumed_from, 700_001);
    assert_eq!(fs::read(&saved.path).unwrap(), original);

    // A damaged partial file fails verification and is discarded; the next try starts over.
    let mut damaged = original[..1000].to_vec();
    damaged[10] ^= 0xff;
    fs::write(dir.path().join("big.bin.part"), &damaged).unwrap();
    let err = save(&alice, "big.bin", dir.path()).await.unwrap_err();
    assert!(matches!(err, DownloadError::Mismatch), "{err}");
    assert!(!dir.path().join("big.bin.part").exists());
    let saved = save(&alice, "big.bin", dir.path()).await.unwrap();
    assert_eq!(
        (saved.resumed_from, fs::read(&saved.path).unwrap()),
        (0, original)
    );
}

#[tokio::test]
async fn downloads_never_leave_the_shared_folder() {
    let server = TestServer::start().await;
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "do not share").unwrap();
    let root = server.shared.path();
    std::os::unix::fs::symlink(outside.path().join("secret.txt"), root.join("secret")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.join("outside")).unwrap();
    nix::unistd::mkfifo(&root.join("pipe"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    fs::create_dir(root.join("folder")).unwrap();
    let (mallory, _events) = server.join("mallory").await;

    for (path, code) in [
        ("../secret.txt", ErrorCode::BadPath),
        ("/etc/passwd", ErrorCode::BadPath),
        ("%2e%2e/etc/passwd", ErrorCode::BadPath),
        ("..\\etc\\passwd", ErrorCode::BadPath),
        ("secret", ErrorCode::BadPath),
        ("outside/secret.txt", ErrorCode::BadPath),
        ("pipe", ErrorCode::NoSuchFile),
        ("folder", ErrorCode::NoSuchFile),
        ("missing.bin", ErrorCode::NoSuchFile),
    ] {
        match mallory.download(path, 0).await {
            Err(RequestError::Refused { code: got, .. }) => assert_eq!(got, code, "{path}"),
            Err(other) => panic!("{path}: {other}"),
            Ok(_) => panic!("{path} was served"),
        }
    }
    // The FIFO did not block the server: it still answers.
    fs::write(root.join("ok.txt"), "fine").unwrap();
    let dir = tempfile::tempdir().unwrap();
    save(&mallory, "ok.txt", dir.path()).await.unwrap();
}

#[tokio::test]
async fn several_downloads_at_once_and_cancelling_one() {
    let server = TestServer::start().await;
    let small = patterned(&server.shared.path().join("small.bin"), 1 << 20);
    sparse(&server.shared.path().join("huge.bin"), 8 << 30);
    let (alice, _alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    // A huge download runs while small ones complete beside it, on the same connection and on
    // another one; then the huge one is cancelled and its partial file removed.
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let mut started_tx = Some(started_tx);
    let huge = download::download(
        &alice,
        "huge.bin",
        a_dir.path(),
        |info| {
            let _ = started_tx.take().unwrap().send(info.transfer);
        },
        |_| {},
    );
    let others = async {
        let transfer = started_rx.await.unwrap();
        let (mine, theirs) = tokio::join!(
            save(&alice, "small.bin", a_dir.path()),
            save(&bob, "small.bin", b_dir.path())
        );
        assert_eq!(fs::read(mine.unwrap().path).unwrap(), small);
        assert_eq!(fs::read(theirs.unwrap().path).unwrap(), small);
        alice.cancel(transfer).await.unwrap();
    };
    let (huge, ()) = tokio::join!(huge, others);
    assert!(matches!(huge, Err(DownloadError::Cancelled)), "{huge:?}");
    assert!(
        !a_dir.path().join("huge.bin.part").exists(),
        "cancel cleans up"
    );
    assert!(!a_dir.path().join("huge.bin").exists());
    let again = alice.cancel(1).await;
    assert_refused(again, ErrorCode::BadTransfer);
}

#[tokio::test]
async fn chat_stays_live_during_a_download() {
    let server = TestServer::start().await;
    sparse(&server.shared.path().join("huge.bin"), 8 << 30);
    let (alice, mut alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    wait_for(&mut alice_events, |e| {
        matches!(e, ClientEvent::Server(Event::Join(_))).then_some(())
    })
    .await;
    let dir = tempfile::tempdir().unwrap();

    let (going_tx, going_rx) = tokio::sync::oneshot::channel();
    let mut going_tx = Some(going_tx);
    let download = download::download(
        &alice,
        "huge.bin",
        dir.path(),
        |_| {},
        |done| {
            // Chat starts once data is really flowing.
            if done > 64 << 20
                && let Some(tx) = going_tx.take()
            {
                let _ = tx.send(());
            }
        },
    );
    let chat = async {
        within("64 MiB of the download", going_rx).await.unwrap();
        ChatLatency::measure("a download", &alice, &mut alice_events, &bob).await;
        // Still transferring: the chat did not wait for the transfer to end.
        within("the cancel's reply", alice.cancel(1)).await.unwrap();
    };
    // Each of the chat's waits is bounded; this bounds the download's end after the cancel.
    let (download, ()) =
        tokio::time::timeout(TRANSFER_AND_CHAT, async { tokio::join!(download, chat) })
            .await
            .expect("the download did not end after its cancel");
    assert!(
        matches!(download, Err(DownloadError::Cancelled)),
        "{download:?}"
    );
}

#[tokio::test]
async fn the_line_client_downloads_resumes_and_cancels() {
    let server = TestServer::start().await;
    fs::create_dir(server.shared.path().join("DeepFiles")).unwrap();
    let original = patterned(&server.shared.path().join("DeepFiles/video1.mp4"), 5 << 20);
    sparse(&server.shared.path().join("huge.bin"), 8 << 30);
    let mut bob = Proc::client("bob", server.addr).await;

    bob.send("DOWNLOAD::DeepFiles/video1.mp4").await;
    bob.expect_line(|l| l == "Downloading video1.mp4 (5.0 MiB) as transfer 1")
        .await;
    bob.expect_line(|l| {
        l.starts_with("Saved bobFiles/video1.mp4: 5.0 MiB in") && l.ends_with("checksum verified")
    })
    .await;
    assert_eq!(
        fs::read(bob.dir.path().join("bobFiles/video1.mp4")).unwrap(),
        original
    );

    // A partial file from an earlier, interrupted attempt is resumed.
    fs::write(
        bob.dir.path().join("bobFiles/video1.mp4.part"),
        &original[..1 << 20],
    )
    .unwrap();
    bob.send("/download DeepFiles/video1.mp4").await;
    bob.expect_line(|l| l == "Resuming video1.mp4 at 1.0 MiB of 5.0 MiB (transfer 2)")
        .await;
    bob.expect_line(|l| l.starts_with("Saved bobFiles/video1 (1).mp4") && l.contains("resumed"))
        .await;
    assert_eq!(
        fs::read(bob.dir.path().join("bobFiles/video1 (1).mp4")).unwrap(),
        original
    );

    bob.send("/download huge.bin").await;
    bob.expect_line(|l| l == "Downloading huge.bin (8.0 GiB) as transfer 3")
        .await;
    bob.send("/transfers").await;
    bob.expect_line(|l| l.starts_with("[3] download huge.bin: ") && l.contains("of 8.0 GiB"))
        .await;
    bob.send("/cancel 3").await;
    bob.expect_line(|l| l == "! Download of huge.bin failed: the download was cancelled")
        .await;
    assert!(!bob.dir.path().join("bobFiles/huge.bin.part").exists());
    bob.send("/transfers").await;
    bob.expect_line(|l| l == "No transfers in progress.").await;
    bob.send("/download nothing.here").await;
    bob.expect_line(|l| {
        l == "! Download of nothing.here failed: Nothing named \"nothing.here\" is shared."
    })
    .await;
}

/// The server's or a client's resident memory, from /proc.
fn rss_mib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// Waits until `path` holds at least `len` bytes, failing after the wait.
async fn grown_to(path: &Path, len: u64) -> u64 {
    tokio::time::timeout(WAIT, async {
        loop {
            match fs::metadata(path) {
                Ok(m) if m.len() >= len => return m.len(),
                _ => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    })
    .await
    .expect("the download did not progress")
}

#[tokio::test]
async fn a_killed_download_resumes_and_memory_stays_flat() {
    const SIZE: u64 = 1 << 30;
    let (server, addr) = Proc::server().await;
    sparse(&server.dir.path().join("SharedFiles/big.iso"), SIZE);
    let mut first = Proc::client("carol", addr).await;
    let part = first.dir.path().join("carolFiles/big.iso.part");
    first.send("/download big.iso").await;
    grown_to(&part, 256 << 20).await;
    let (server_mib, client_mib) = (rss_mib(server.pid()), rss_mib(first.pid()));
    signal(first.pid(), "KILL");
    let _ = first.child.wait().await;
    let kept = fs::metadata(&part).unwrap().len();
    assert!(
        kept < SIZE,
        "the download finished before the kill; make the file bigger"
    );

    // The same user, from the same folder, asks again: it picks up where it was cut off.
    let port = addr.port().to_string();
    let mut again = Proc::spawn_in(first.dir, &["client", "carol", "127.0.0.1", &port]);
    again.expect_line(|l| l.starts_with("Connected to")).await;
    again.send("DOWNLOAD::big.iso").await;
    let resuming = again
        .expect_line(|l| l.starts_with("Resuming big.iso at "))
        .await;
    assert!(resuming.ends_with("of 1.0 GiB (transfer 1)"), "{resuming}");
    grown_to(
        &again.dir.path().join("carolFiles/big.iso.part"),
        kept + (128 << 20),
    )
    .await;
    let (server_later, client_later) = (rss_mib(server.pid()), rss_mib(again.pid()));
    again
        .expect_line(|l| {
            l.starts_with("Saved carolFiles/big.iso: 1.0 GiB") && l.contains("resumed")
        })
        .await;
    assert_eq!(
        fs::metadata(again.dir.path().join("carolFiles/big.iso"))
            .unwrap()
            .len(),
        SIZE
    );

    let worst = server_mib
        .max(client_mib)
        .max(server_later)
        .max(client_later);
    eprintln!(
        "resident memory during a 1 GiB download: server {server_mib}/{server_later} MiB, client {client_mib}/{client_later} MiB"
    );
    assert!(worst < 100, "a process grew to {worst} MiB while streaming");
}

#[tokio::test]
async fn a_file_changed_in_place_is_hashed_anew() {
    // The server remembers the hash of a file it has sent whole; a file rewritten behind its
    // back (same name, same size) must not be checked against the old hash.
    let server = TestServer::start().await;
    let shared = server.shared.path().join("notes.bin");
    let first = patterned(&shared, 1 << 20);
    let (alice, _events) = server.join("alice").await;
    let dir = tempfile::tempdir().unwrap();
    let saved = save(&alice, "notes.bin", dir.path()).await.unwrap();
    assert_eq!(fs::read(&saved.path).unwrap(), first);

    let second: Vec<u8> = first.iter().map(|b| b ^ 0x5a).collect();
    fs::write(&shared, &second).unwrap();
    // A distinct modification time even where the clock is coarse.
    let later = std::time::SystemTime::now() + Duration::from_secs(60);
    fs::File::options()
        .write(true)
        .open(&shared)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let again = save(&alice, "notes.bin", dir.path()).await.unwrap();
    assert_eq!(fs::read(&again.path).unwrap(), second);
}

#[tokio::test]
async fn a_file_shrinking_during_a_download_fails_it_and_the_connection_lives_on() {
    let server = TestServer::start().await;
    let (alice, _events) = server.join("alice").await;
    a_shrinking_file_fails_its_download(&server, &alice).await;
}

/// Downloads a file that shrinks once the first data has arrived: the download fails, nothing
/// is saved, and `alice`'s connection still chats and downloads.
pub(crate) async fn a_shrinking_file_fails_its_download(
    server: &TestServer,
    alice: &parley_client::Client,
) {
    let shared = server.shared.path().join("shrinking.bin");
    sparse(&shared, 1 << 30);
    let dir = tempfile::tempdir().unwrap();

    let mut cut = false;
    let outcome = download::download(
        alice,
        "shrinking.bin",
        dir.path(),
        |_| {},
        |_| {
            // A gigabyte is far from sent when the first data arrives.
            if !cut {
                fs::File::options()
                    .write(true)
                    .open(&shared)
                    .unwrap()
                    .set_len(1 << 20)
                    .unwrap();
                cut = true;
            }
        },
    )
    .await;
    assert!(
        matches!(
            outcome,
            Err(DownloadError::Failed(_) | DownloadError::Mismatch)
        ),
        "{outcome:?}"
    );
    assert!(!dir.path().join("shrinking.bin").exists());

    // The framing survived: the same connection still chats and downloads.
    let sent = alice
        .call(parley_proto::request::Say {
            room: "lobby".into(),
            text: "still here".into(),
        })
        .await
        .unwrap();
    assert!(sent.id > 0);
    let saved = save(alice, "shrinking.bin", dir.path()).await.unwrap();
    assert_eq!(fs::metadata(&saved.path).unwrap().len(), 1 << 20);
}

/// Takes a download's chunks to its end: the bytes received, and how it ended.
async fn read_to_end(
    incoming: &mut parley_client::Incoming,
) -> (u64, parley_proto::event::TransferEnd) {
    let mut received = 0;
    loop {
        match within("the next chunk", incoming.next()).await {
            Some(parley_client::Chunk::Data(bytes)) => received += bytes.len() as u64,
            Some(parley_client::Chunk::End(end)) => return (received, end),
            None => panic!("the connection closed during the download"),
        }
    }
}

#[tokio::test]
async fn a_download_nobody_reads_does_not_hold_back_chat() {
    let server = TestServer::start().await;
    let (alice, alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    a_download_nobody_reads_leaves_chat_alone(&server, &alice, alice_events, &bob).await;
}

/// Alice downloads a large file and stops taking its chunks after the first; chat between her
/// and Bob must go on, and the rest must arrive once she reads on. Shared with the TLS test,
/// whose data takes the other path through the server (read in and encrypted, not sent from
/// the page cache).
pub(crate) async fn a_download_nobody_reads_leaves_chat_alone(
    server: &TestServer,
    alice: &Client,
    mut alice_events: Events,
    bob: &Client,
) {
    // Far more than the window and both sockets' buffers (the receiver's grows to 32 MiB here).
    let size: u64 = 256 << 20;
    sparse(&server.shared.path().join("big.bin"), size);
    wait_for(&mut alice_events, |e| {
        matches!(e, ClientEvent::Server(Event::Join(_))).then_some(())
    })
    .await;

    // Alice's application takes one chunk, then stops, as one writing to a stalled disk would.
    let mut incoming = within("the download's reply", alice.download("big.bin", 0))
        .await
        .unwrap();
    assert!(incoming.info.window > 0 && incoming.info.window < size / 4);
    let first = within("the first chunk", incoming.next()).await;
    let Some(parley_client::Chunk::Data(first)) = first else {
        panic!("{first:?}")
    };

    // Chat to and from her goes on: her reader is not stuck behind the data. (Without a window
    // it was, once the sockets' buffers filled, a few milliseconds in.)
    ChatLatency::measure("a download nobody reads", alice, &mut alice_events, bob).await;

    // Taking the rest, the whole file arrives.
    let (rest, end) = read_to_end(&mut incoming).await;
    let received = first.len() as u64 + rest;
    assert_eq!(end.status, parley_proto::event::TransferStatus::Complete);
    assert_eq!(received, size);
}

#[tokio::test]
async fn the_server_sends_no_more_than_the_window_beyond_what_was_taken() {
    let server = TestServer::start().await;
    let size: u64 = 4 << 20;
    let window: u64 = 1 << 20;
    patterned(&server.shared.path().join("big.bin"), size as usize);
    let mut raw = server.raw().await;
    raw.hello("alice").await;
    raw.send_json(serde_json::json!({"id": 1, "type": "download", "path": "big.bin", "transfer": 5, "window": window})).await;
    let reply = raw.recv_json().await;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["result"]["window"], window, "{reply}");

    // Each round: the server sends until the window is full and then nothing more, so that a
    // request sent then is answered with no data before its reply; a report lets it go on.
    let (mut received, mut end) = (0, None);
    let mut request = 2;
    while received < size {
        let taken = received;
        while received - taken < window {
            match raw.recv_frame().await {
                Some(parley_proto::Frame::Data { transfer, payload }) => {
                    assert_eq!(transfer, 5);
                    received += payload.len() as u64;
                }
                // The reply to the last report.
                Some(parley_proto::Frame::Control(json)) => {
                    let reply: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    assert_eq!(reply["id"], request - 1, "{reply}");
                }
                Some(parley_proto::Frame::Ping) => {
                    raw.send_bytes(&parley_proto::Frame::Pong.to_bytes()).await
                }
                other => panic!("{other:?} before the window was full"),
            }
        }
        assert_eq!(received - taken, window, "more than the window came");
        raw.send_json(serde_json::json!({"id": request, "type": "rooms"}))
            .await;
        loop {
            match raw.recv_frame().await {
                Some(parley_proto::Frame::Control(json)) => {
                    let reply: serde_json::Value = serde_json::from_slice(&json).unwrap();
                    // The end follows the last data, and may overtake the reply or not.
                    if reply["type"] == "transfer_end" && received == size {
                        end = Some(reply);
                        continue;
                    }
                    assert_eq!(reply["id"], request, "{reply}");
                    break;
                }
                Some(parley_proto::Frame::Ping) => {
                    raw.send_bytes(&parley_proto::Frame::Pong.to_bytes()).await
                }
                Some(parley_proto::Frame::Data { payload, .. }) => {
                    panic!("{} bytes came beyond the window", payload.len())
                }
                other => panic!("{other:?} instead of the reply"),
            }
        }
        raw.send_json(serde_json::json!({"id": request + 1, "type": "download_progress", "transfer": 5, "received": received})).await;
        request += 2;
    }
    // The end, whose hash is the file's: before the last reply, or after it and the last
    // report's.
    let end = match end {
        Some(end) => end,
        None => loop {
            let message = raw.recv_json().await;
            if message["type"] != "ok" {
                break message;
            }
        },
    };
    assert_eq!(end["type"], "transfer_end", "{end}");
    assert_eq!(end["status"], "complete", "{end}");
    let file = fs::read(server.shared.path().join("big.bin")).unwrap();
    assert_eq!(end["blake3"], blake3::hash(&file).to_hex().as_str());
}

#[tokio::test]
async fn a_download_dropped_unfinished_is_cancelled_and_frees_its_place() {
    let server = TestServer::start().await;
    let size: u64 = 32 << 20;
    sparse(&server.shared.path().join("big.bin"), size);
    let (alice, _alice_events) = server.join("alice").await;

    // More downloads than a connection may run at once, each dropped after its first chunk, as
    // by an application whose disk filled up. Each is cancelled as it is dropped: otherwise the
    // server, keeping to its window, would wait for reports for ever and refuse the ninth.
    for _ in 0..MAX_TRANSFERS + 2 {
        let mut incoming = within("a download's reply", alice.download("big.bin", 0))
            .await
            .unwrap();
        let first = within("the first chunk", incoming.next()).await;
        assert!(matches!(first, Some(parley_client::Chunk::Data(_))));
    }

    // And a download read to its end still arrives whole.
    let mut incoming = within("a download's reply", alice.download("big.bin", 0))
        .await
        .unwrap();
    let (received, end) = read_to_end(&mut incoming).await;
    assert_eq!(end.status, parley_proto::event::TransferStatus::Complete);
    assert_eq!(received, size);
}
