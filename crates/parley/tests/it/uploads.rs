//! Uploads: nothing appears until the whole file is in and verified; then it is shared under a
//! free name, credited to its uploader, announced to everyone, and downloads byte-identical.

use std::fs;
use std::path::Path;

use parley_client::upload::{self, UploadError};
use parley_client::{ClientEvent, RequestError, download};
use parley_proto::ErrorCode;
use parley_proto::event::Event;
use parley_proto::request::List;

use crate::support::*;

fn patterned(path: &Path, len: usize) -> Vec<u8> {
    let bytes: Vec<u8> = (0..len).map(|i| (i * 13 + i / 509) as u8).collect();
    fs::write(path, &bytes).unwrap();
    bytes
}

/// Files in the shared folder, Parley's own folder aside.
fn visible(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != ".parley")
        .collect();
    names.sort();
    names
}

fn staged(root: &Path) -> usize {
    fs::read_dir(root.join(".parley/staging")).unwrap().count()
}

async fn share(
    client: &parley_client::Client,
    local: &Path,
    folder: &str,
) -> Result<upload::Shared, UploadError> {
    upload::upload(client, local, folder, |_, _, _| {}, |_| {}).await
}

#[tokio::test]
async fn an_upload_is_shared_announced_credited_and_downloads_identical() {
    let server = TestServer::start().await;
    fs::create_dir(server.shared.path().join("Docs")).unwrap();
    let local = tempfile::tempdir().unwrap();
    let original = patterned(&local.path().join("report.pdf"), (3 << 20) + 17);
    let (alice, _alice_events) = server.join("alice").await;
    let (bob, mut bob_events) = server.join("bob").await;

    let shared = share(&alice, &local.path().join("report.pdf"), "Docs")
        .await
        .unwrap();
    assert_eq!(shared.uploaded.path, "Docs/report.pdf");
    assert_eq!(shared.uploaded.size, original.len() as u64);
    assert_eq!(
        fs::read(server.shared.path().join("Docs/report.pdf")).unwrap(),
        original
    );
    assert_eq!(staged(server.shared.path()), 0);

    let event = wait_for(&mut bob_events, |e| match e {
        ClientEvent::Server(Event::Shared(s)) => Some(s.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (event.user.as_str(), event.path.as_str(), event.size),
        ("alice", "Docs/report.pdf", original.len() as u64)
    );

    let listing = bob
        .call(List {
            path: "Docs".into(),
        })
        .await
        .unwrap();
    assert_eq!(listing.entries[0].uploader.as_deref(), Some("alice"));

    let dir = tempfile::tempdir().unwrap();
    let saved = download::download(&bob, "Docs/report.pdf", dir.path(), |_| {}, |_| {})
        .await
        .unwrap();
    assert_eq!(fs::read(saved.path).unwrap(), original);

    // The same name again is not overwritten: the uploader learns the name it got.
    let again = share(&alice, &local.path().join("report.pdf"), "Docs")
        .await
        .unwrap();
    assert_eq!(
        (again.uploaded.path.as_str(), again.uploaded.name.as_str()),
        ("Docs/report (1).pdf", "report (1).pdf")
    );
    assert_eq!(
        visible(&server.shared.path().join("Docs")),
        ["report (1).pdf", "report.pdf"]
    );
}

#[tokio::test]
async fn the_record_of_who_shared_what_survives_a_restart() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    patterned(&local.path().join("notes.txt"), 100);
    let (alice, _events) = server.join("alice").await;
    share(&alice, &local.path().join("notes.txt"), "")
        .await
        .unwrap();
    let shared_dir = server.shared.path().to_owned();
    server.shutdown.cancel();
    server.task.await.unwrap().unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        shared_dir,
        data_dir: data.path().to_owned(),
        tls: parley_server::TlsMode::Off,
        ..Config::default()
    };
    tokio::spawn(parley_server::serve(listener, config, Default::default()));
    let options = parley_client::ConnectOptions::new("127.0.0.1", addr.port(), "bob").plain();
    let (bob, _bob_events) = parley_client::Client::connect(&options).await.unwrap();
    let listing = bob.call(List::default()).await.unwrap();
    assert_eq!(listing.entries[0].uploader.as_deref(), Some("alice"));
}

#[tokio::test]
async fn refused_uploads_leave_nothing_behind() {
    let server = TestServer::with_config(Config {
        max_upload: 1 << 20,
        ..Config::default()
    })
    .await;
    let local = tempfile::tempdir().unwrap();
    patterned(&local.path().join("big.bin"), (1 << 20) + 1);
    patterned(&local.path().join(".hidden"), 10);
    let (alice, _events) = server.join("alice").await;

    let refused = |result: Result<upload::Shared, UploadError>, code: ErrorCode| match result {
        Err(UploadError::Request(RequestError::Refused { code: got, .. })) => assert_eq!(got, code),
        other => panic!("expected {code}, got {other:?}"),
    };
    refused(
        share(&alice, &local.path().join("big.bin"), "").await,
        ErrorCode::FileTooLarge,
    );
    refused(
        share(&alice, &local.path().join(".hidden"), "").await,
        ErrorCode::BadPath,
    );
    assert_refused(
        alice.upload("", "a/b", 1).await.map(drop),
        ErrorCode::BadPath,
    );
    assert_refused(
        alice.upload("", "bell\u{7}", 1).await.map(drop),
        ErrorCode::BadPath,
    );
    assert_refused(
        alice.upload("../up", "x", 1).await.map(drop),
        ErrorCode::BadPath,
    );
    assert_refused(
        alice.upload(".parley/staging", "x", 1).await.map(drop),
        ErrorCode::BadPath,
    );
    assert_refused(
        alice.upload(".PARLEY", "x", 1).await.map(drop),
        ErrorCode::BadPath,
    );
    let long = "n".repeat(241);
    assert_refused(
        alice.upload("", &long, 1).await.map(drop),
        ErrorCode::BadPath,
    );
    assert_refused(
        alice.upload("NoSuchFolder", "x", 1).await.map(drop),
        ErrorCode::NoSuchFile,
    );
    assert!(visible(server.shared.path()).is_empty());
    assert_eq!(staged(server.shared.path()), 0);

    // A reserve larger than any disk: every upload would eat into it.
    let tight = TestServer::with_config(Config {
        disk_reserve: u64::MAX / 2,
        ..Config::default()
    })
    .await;
    let (carol, _events) = tight.join("carol").await;
    patterned(&local.path().join("small.bin"), 10);
    refused(
        share(&carol, &local.path().join("small.bin"), "").await,
        ErrorCode::NoSpace,
    );

    // A server may take hidden files, though never its own folder's name.
    let lenient = TestServer::with_config(Config {
        allow_hidden_uploads: true,
        ..Config::default()
    })
    .await;
    let (dave, _events) = lenient.join("dave").await;
    let shared = share(&dave, &local.path().join(".hidden"), "")
        .await
        .unwrap();
    assert_eq!(shared.uploaded.path, ".hidden");
    assert_refused(
        dave.upload("", ".parley", 1).await.map(drop),
        ErrorCode::BadPath,
    );
}

#[tokio::test]
async fn a_wrong_checksum_or_a_lost_connection_publishes_nothing() {
    let server = TestServer::start().await;
    let (alice, _events) = server.join("alice").await;

    let mut outgoing = alice.upload("", "forged.bin", 5).await.unwrap();
    outgoing.send(b"hello").await.unwrap();
    let forged = outgoing.finish("00".repeat(32)).await;
    assert_refused(forged, ErrorCode::ChecksumMismatch);

    let mut outgoing = alice.upload("", "short.bin", 10).await.unwrap();
    outgoing.send(b"hello").await.unwrap();
    let hash = blake3::hash(b"hello").to_hex().to_string();
    assert_refused(outgoing.finish(hash).await, ErrorCode::ChecksumMismatch);
    assert_eq!(staged(server.shared.path()), 0);

    // A client that vanishes mid-upload: its staged data goes at once.
    let mut raw = server.raw().await;
    raw.hello("vanishing").await;
    raw.send_json(serde_json::json!({"id": 1, "type": "upload", "name": "half.bin", "size": 1000, "transfer": 7})).await;
    assert_eq!(raw.recv_json().await["type"], "ok");
    let data = parley_proto::Frame::Data {
        transfer: 7,
        payload: vec![1u8; 500].into(),
    };
    raw.send_bytes(&data.to_bytes()).await;
    // A request after the data proves the server has read (and staged) it.
    raw.send_json(serde_json::json!({"id": 2, "type": "users"}))
        .await;
    raw.recv_json().await;
    assert_eq!(
        staged(server.shared.path()),
        1,
        "the upload is staged while it runs"
    );
    drop(raw);
    tokio::time::timeout(WAIT, async {
        while staged(server.shared.path()) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the staged data of a lost upload was not removed");
    assert!(visible(server.shared.path()).is_empty());
}

#[tokio::test]
async fn leftovers_of_a_crash_are_cleared_on_start() {
    let shared = tempfile::tempdir().unwrap();
    fs::create_dir_all(shared.path().join(".parley/staging")).unwrap();
    fs::write(
        shared.path().join(".parley/staging/123-0"),
        "half an upload",
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = Config {
        shared_dir: shared.path().to_owned(),
        data_dir: data.path().to_owned(),
        tls: parley_server::TlsMode::Off,
        ..Config::default()
    };
    tokio::spawn(parley_server::serve(listener, config, Default::default()));
    // Once a client is served, start-up (and its clean-up) is over.
    let options = parley_client::ConnectOptions::new("127.0.0.1", addr.port(), "early").plain();
    parley_client::Client::connect(&options).await.unwrap();
    assert_eq!(staged(shared.path()), 0);
}

#[tokio::test]
async fn cancelling_an_upload_discards_it() {
    let server = TestServer::start().await;
    let (alice, _events) = server.join("alice").await;
    let mut outgoing = alice.upload("", "never.bin", 1 << 20).await.unwrap();
    outgoing.send(&[0; 1000]).await.unwrap();
    alice.cancel(outgoing.info.transfer).await.unwrap();
    // The server says so: the next send stops.
    let stopped = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(stopped) = outgoing.send(&[0; 10]).await {
                return stopped;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(stopped, parley_client::UploadStopped::Ended(ref end) if end.status == parley_proto::TransferStatus::Cancelled),
        "{stopped:?}"
    );
    assert_eq!(staged(server.shared.path()), 0);
    assert!(visible(server.shared.path()).is_empty());
}

#[tokio::test]
async fn the_line_client_uploads_and_others_see_it() {
    let server = TestServer::start().await;
    let (_alice, mut alice_events) = server.join("alice").await;
    let mut bob = Proc::client("bob", server.addr).await;
    let original = patterned(&bob.dir.path().join("song.ogg"), 2 << 20);
    bob.send("/upload song.ogg").await;
    bob.expect_line(|l| l == "Uploading song.ogg (2.0 MiB) as transfer 1")
        .await;
    bob.expect_line(|l| {
        l.starts_with("Shared song.ogg as song.ogg: 2.0 MiB in") && l.ends_with("checksum verified")
    })
    .await;
    assert_eq!(
        fs::read(server.shared.path().join("song.ogg")).unwrap(),
        original
    );
    let line = wait_for(&mut alice_events, |e| match e {
        ClientEvent::Server(event @ Event::Shared(_)) => parley_client::display::event_line(event),
        _ => None,
    })
    .await;
    assert_eq!(line, "* bob shared song.ogg (2.0 MiB)");

    bob.send("/upload song.ogg").await;
    bob.expect_line(|l| l.starts_with("Shared song.ogg as song (1).ogg"))
        .await;
    bob.send("/upload missing.ogg").await;
    bob.expect_line(|l| l.starts_with("! Upload of missing.ogg failed: cannot read missing.ogg"))
        .await;
    bob.send("/files").await;
    bob.expect_line(|l| l.starts_with("  song.ogg") && l.ends_with("shared by bob"))
        .await;
}

#[tokio::test]
async fn chat_stays_live_during_an_upload() {
    let server = TestServer::start().await;
    let local = tempfile::tempdir().unwrap();
    fs::File::create(local.path().join("huge.bin"))
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let (alice, mut alice_events) = server.join("alice").await;
    let (bob, _bob_events) = server.join("bob").await;
    wait_for(&mut alice_events, |e| {
        matches!(e, ClientEvent::Server(Event::Join(_))).then_some(())
    })
    .await;

    let (going_tx, going_rx) = tokio::sync::oneshot::channel();
    let mut going_tx = Some(going_tx);
    let transfer = std::sync::atomic::AtomicU32::new(0);
    let huge = local.path().join("huge.bin");
    let upload = upload::upload(
        &alice,
        &huge,
        "",
        |id, _, _| transfer.store(id, std::sync::atomic::Ordering::Relaxed),
        |sent| {
            if sent > 64 << 20
                && let Some(tx) = going_tx.take()
            {
                let _ = tx.send(());
            }
        },
    );
    let chat = async {
        within("64 MiB of the upload", going_rx).await.unwrap();
        ChatLatency::measure("an upload", &alice, &mut alice_events, &bob).await;
        // Still transferring: the chat did not wait for the transfer to end.
        let id = transfer.load(std::sync::atomic::Ordering::Relaxed);
        within("the cancel's reply", alice.cancel(id))
            .await
            .unwrap();
    };
    // Each of the chat's waits is bounded; this bounds the upload's end after the cancel.
    let (upload, ()) =
        tokio::time::timeout(TRANSFER_AND_CHAT, async { tokio::join!(upload, chat) })
            .await
            .expect("the upload did not end after its cancel");
    assert!(matches!(upload, Err(UploadError::Cancelled)), "{upload:?}");
    assert_eq!(staged(server.shared.path()), 0);
}

#[tokio::test]
async fn uploads_in_progress_count_against_the_disk_reserve_together() {
    let probe = tempfile::tempdir().unwrap();
    let stats = nix::sys::statvfs::statvfs(probe.path()).unwrap();
    let free = stats.blocks_available() as u64 * stats.fragment_size() as u64;
    // Room for one 2 GiB upload above the reserve, not two (with 1 GiB of slack for whatever
    // else writes to this disk meanwhile).
    let server = TestServer::with_config(Config {
        disk_reserve: free.saturating_sub(3 << 30),
        max_upload: 4 << 30,
        ..Config::default()
    })
    .await;
    let (alice, _events) = server.join("alice").await;
    let first = alice.upload("", "first.bin", 2 << 30).await.unwrap();
    let second = alice.upload("", "second.bin", 2 << 30).await;
    assert_refused(second.map(drop), ErrorCode::NoSpace);
    // Once the first is gone, its share is free again.
    alice.cancel(first.info.transfer).await.unwrap();
    let third = alice.upload("", "third.bin", 2 << 30).await;
    assert!(third.is_ok(), "{:?}", third.err());
}

#[tokio::test]
async fn the_server_reports_what_it_stored_so_a_client_keeps_to_its_window() {
    let server = TestServer::start().await;
    let mut raw = server.raw().await;
    raw.hello("alice").await;
    let size: u64 = 12 << 20;
    raw.send_json(serde_json::json!({"id": 1, "type": "upload", "name": "big.bin", "size": size, "transfer": 3})).await;
    let reply = raw.recv_json().await;
    assert_eq!(reply["type"], "ok", "{reply}");
    let window = reply["result"]["window"].as_u64().unwrap();
    let chunk = reply["result"]["max_chunk"].as_u64().unwrap();
    assert!(window >= 4 * chunk && size >= 3 * window, "{reply}");

    // Sends within the window, as a client should, reading progress whenever it is full:
    // progress always comes in time to go on.
    let block = vec![5u8; chunk as usize];
    let (mut sent, mut stored) = (0, 0);
    while sent < size {
        if sent + chunk <= stored + window {
            let data = parley_proto::Frame::Data {
                transfer: 3,
                payload: block.clone().into(),
            };
            raw.send_bytes(&data.to_bytes()).await;
            sent += chunk;
            continue;
        }
        let event = raw.recv_json().await;
        assert_eq!(event["type"], "upload_progress", "{event}");
        assert_eq!(event["transfer"], 3);
        let now = event["stored"].as_u64().unwrap();
        assert!(
            now > stored && now <= sent,
            "stored {now} after {stored}, {sent} sent"
        );
        stored = now;
    }
    assert!(stored > 0, "no upload_progress came");
    let hash = blake3::hash(&vec![5u8; size as usize]).to_hex().to_string();
    raw.send_json(serde_json::json!({"id": 2, "type": "finish", "transfer": 3, "blake3": hash}))
        .await;
    // Progress for what was still being stored may come first; none after the reply.
    let mut finished = raw.recv_json().await;
    while finished["type"] == "upload_progress" {
        finished = raw.recv_json().await;
    }
    assert_eq!(finished["type"], "ok", "{finished}");
    assert_eq!(
        fs::metadata(server.shared.path().join("big.bin"))
            .unwrap()
            .len(),
        size
    );
}
