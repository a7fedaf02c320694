//! The shared folder: browsing it, and nothing outside it, ever.

use std::fs;
use std::path::Path;

use parley_client::Client;
use parley_proto::ErrorCode;
use parley_proto::request::{Entry, List, Listing};

use crate::support::*;

/// A shared folder like the earlier tools' sample: two files, a folder with a subfolder.
fn populate(root: &Path) {
    fs::write(root.join("notes.txt"), "hello").unwrap();
    fs::File::create(root.join("video1.mp4"))
        .unwrap()
        .set_len(24 * 1024 * 1024)
        .unwrap();
    fs::create_dir_all(root.join("DeepFiles/Deeper")).unwrap();
    fs::write(root.join("DeepFiles/inside.txt"), "deep").unwrap();
    fs::write(root.join("DeepFiles/Deeper/bottom.txt"), "deeper").unwrap();
}

async fn list(client: &Client, path: &str) -> Listing {
    client.call(List { path: path.into() }).await.unwrap()
}

fn names(listing: &Listing) -> Vec<&str> {
    listing.entries.iter().map(|e| e.name.as_str()).collect()
}

#[tokio::test]
async fn lists_folders_first_with_sizes_times_and_a_summary() {
    let server = TestServer::start().await;
    populate(server.shared.path());
    let (alice, _events) = server.join("alice").await;

    let root = list(&alice, "").await;
    assert_eq!(root.path, "");
    assert_eq!(names(&root), ["DeepFiles", "notes.txt", "video1.mp4"]);
    assert_eq!(
        (root.files, root.folders, root.total_bytes),
        (2, 1, 24 * 1024 * 1024 + 5)
    );
    let video: &Entry = &root.entries[2];
    assert!(!video.folder && video.size == 24 * 1024 * 1024);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        video.modified <= now_ms && video.modified > now_ms - 600_000,
        "{video:?}"
    );
    assert!(root.entries[0].folder);

    let deep = list(&alice, "DeepFiles").await;
    assert_eq!(names(&deep), ["Deeper", "inside.txt"]);
    let deeper = list(&alice, "DeepFiles/Deeper/").await;
    assert_eq!(deeper.path, "DeepFiles/Deeper");
    assert_eq!(names(&deeper), ["bottom.txt"]);
}

#[tokio::test]
async fn missing_folders_and_files_are_told_apart() {
    let server = TestServer::start().await;
    populate(server.shared.path());
    let (alice, _events) = server.join("alice").await;
    let missing = alice
        .call(List {
            path: "Nowhere".into(),
        })
        .await;
    assert_refused(missing, ErrorCode::NoSuchFile);
    let file = alice
        .call(List {
            path: "notes.txt".into(),
        })
        .await;
    assert_refused(file, ErrorCode::NoSuchFile);
}

#[tokio::test]
async fn no_path_leaves_the_shared_folder() {
    let server = TestServer::start().await;
    populate(server.shared.path());
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("secret.txt"), "do not share").unwrap();
    std::os::unix::fs::symlink(outside.path(), server.shared.path().join("escape")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", server.shared.path().join("passwd")).unwrap();
    std::os::unix::fs::symlink("DeepFiles", server.shared.path().join("inner-link")).unwrap();
    nix::unistd::mkfifo(
        &server.shared.path().join("pipe"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    let (mallory, _events) = server.join("mallory").await;

    for path in [
        "..",
        "../..",
        "DeepFiles/../..",
        "/",
        "/etc",
        "..\\..",
        "%2e%2e",
        "DeepFiles%2F..",
        "a\0b",
        "escape",
        "escape/",
    ] {
        let result = mallory.call(List { path: path.into() }).await;
        assert_refused(result, ErrorCode::BadPath);
    }
    // Links that lead outside, and anything that is not a file or folder, are not even listed;
    // a link that stays inside works like what it points to.
    let root = list(&mallory, "").await;
    assert_eq!(
        names(&root),
        ["DeepFiles", "inner-link", "notes.txt", "video1.mp4"]
    );
    assert_eq!(
        names(&list(&mallory, "inner-link").await),
        ["Deeper", "inside.txt"]
    );
}

#[tokio::test]
async fn the_line_client_lists_with_every_form() {
    let server = TestServer::start().await;
    populate(server.shared.path());
    let mut bob = Proc::client("bob", server.addr).await;
    for command in ["/files", "/file", "ACCESS::"] {
        bob.send(command).await;
        bob.expect_line(|l| l == "Shared files in /:").await;
        bob.expect_line(|l| l.starts_with("  DeepFiles/") && l.contains("folder"))
            .await;
        bob.expect_line(|l| l.starts_with("  notes.txt") && l.contains(" 5 B"))
            .await;
        bob.expect_line(|l| l.starts_with("  video1.mp4") && l.contains("24.0 MiB"))
            .await;
        bob.expect_line(|l| l == "2 files, 1 folder, 24.0 MiB in all")
            .await;
    }
    bob.send("ACCESS::DeepFiles/Deeper").await;
    bob.expect_line(|l| l == "Shared files in /DeepFiles/Deeper:")
        .await;
    bob.expect_line(|l| l == "1 file, 0 folders, 6 B in all")
        .await;
    bob.send("/files ../etc").await;
    bob.expect_line(|l| l.starts_with("! The path \"../etc\" is not allowed"))
        .await;
}

#[tokio::test]
async fn the_server_shares_the_folder_it_is_told_to() {
    // SERVER_SHARED_FILES, as the earlier tools read it; created if missing.
    let mut server = Proc::spawn_with(
        &["server", "0", "--host", "127.0.0.1"],
        &[("SERVER_SHARED_FILES", "FromEnv")],
    );
    server
        .expect_line(|l| l.contains("sharing the folder FromEnv"))
        .await;
    assert!(server.dir.path().join("FromEnv").is_dir());
    drop(server);

    // --shared-dir wins over the environment.
    let mut server = Proc::spawn_with(
        &[
            "server",
            "0",
            "--host",
            "127.0.0.1",
            "--shared-dir",
            "FromFlag",
        ],
        &[("SERVER_SHARED_FILES", "FromEnv")],
    );
    server
        .expect_line(|l| l.contains("sharing the folder FromFlag"))
        .await;
    assert!(server.dir.path().join("FromFlag").is_dir());
    assert!(!server.dir.path().join("FromEnv").exists());

    // The default is ./SharedFiles.
    let mut server = Proc::spawn(&["server", "0", "--host", "127.0.0.1"]);
    server
        .expect_line(|l| l.contains("sharing the folder SharedFiles"))
        .await;
    assert!(server.dir.path().join("SharedFiles").is_dir());
}
