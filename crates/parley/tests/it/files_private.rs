//! The server's private folder (`.parley`: the uploads being received and the record of who
//! shared what) is out of every client's reach, natively and over HTTP, however the symbolic
//! links inside the shared folder are arranged: `self -> .` and `Docs/up -> ..` lead back to the
//! top, where it lies, and `staging -> .parley/staging` straight into it.

use std::fs;
use std::os::unix::fs::symlink;

use parley_client::RequestError;
use parley_proto::ErrorCode;
use parley_proto::request::List;

use crate::support::*;
use crate::web::{browser, cookie, get, http, token_header};

/// A shared folder whose symbolic links lead to the private folder in every way, with one
/// upload published (the record has a line) and one in progress (staging holds its file).
/// Returns the server, the uploader (keeping the upload open) and the staged file's name.
async fn arranged() -> (
    TestServer,
    parley_client::Client,
    parley_client::Outgoing,
    String,
) {
    let server = TestServer::start().await;
    let root = server.shared.path();
    fs::create_dir(root.join("Docs")).unwrap();
    symlink(".", root.join("self")).unwrap();
    symlink("..", root.join("Docs/up")).unwrap();
    symlink(".parley/staging", root.join("staging")).unwrap();
    symlink(".parley/uploads.jsonl", root.join("log")).unwrap();
    let (alice, _events) = server.join("alice").await;
    let mut done = alice.upload("", "done.txt", 3).await.unwrap();
    done.send(b"hi\n").await.unwrap();
    let hash = blake3::hash(b"hi\n").to_hex().to_string();
    done.finish(hash).await.unwrap();
    let mut pending = alice.upload("", "pending.bin", 1000).await.unwrap();
    pending.send(&[1; 10]).await.unwrap();
    let staged: Vec<String> = fs::read_dir(root.join(".parley/staging"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(staged.len(), 1, "{staged:?}");
    (server, alice, pending, staged[0].clone())
}

fn refused_as_bad_path<T>(what: &str, result: Result<T, RequestError>) {
    match result {
        Err(RequestError::Refused { code, .. }) => assert_eq!(code, ErrorCode::BadPath, "{what}"),
        Err(other) => panic!("{what}: {other}"),
        Ok(_) => panic!("{what} was allowed"),
    }
}

#[tokio::test]
async fn no_symlink_inside_leads_natively_into_the_private_folder() {
    let (server, _alice, _pending, staged) = arranged().await;
    let (mallory, _events) = server.join("mallory").await;

    // Listings never show it, under any name.
    for folder in ["", "self", "Docs/up", "self/Docs/up"] {
        let listing = mallory
            .call(List {
                path: folder.into(),
            })
            .await
            .unwrap();
        let names: Vec<&str> = listing.entries.iter().map(|e| e.name.as_str()).collect();
        for private in [".parley", "staging", "log"] {
            assert!(!names.contains(&private), "{folder:?} lists {names:?}");
        }
        assert!(names.contains(&"done.txt"), "{folder:?} lists {names:?}");
    }
    for folder in [
        "self/.parley",
        "self/.parley/staging",
        "Docs/up/.parley/staging",
        "self/self/.parley",
        "staging",
    ] {
        let listing = mallory
            .call(List {
                path: folder.into(),
            })
            .await;
        refused_as_bad_path(&format!("list {folder}"), listing);
    }
    for path in [
        format!("self/.parley/staging/{staged}"),
        format!("Docs/up/.parley/staging/{staged}"),
        format!("staging/{staged}"),
        "self/.parley/uploads.jsonl".into(),
        "Docs/up/.parley/uploads.jsonl".into(),
        "log".into(),
    ] {
        refused_as_bad_path(
            &format!("download {path}"),
            mallory.download(&path, 0).await,
        );
    }
    for folder in ["self/.parley/staging", "Docs/up/.parley", "staging"] {
        let upload = mallory.upload(folder, "x.bin", 1).await;
        refused_as_bad_path(&format!("upload into {folder}"), upload);
    }

    // The same links still lead everywhere else.
    let docs = mallory
        .call(List {
            path: "self/Docs".into(),
        })
        .await
        .unwrap();
    assert_eq!(docs.path, "self/Docs");
    assert!(mallory.download("Docs/up/done.txt", 0).await.is_ok());
    assert!(mallory.upload("Docs/up/Docs", "y.bin", 1).await.is_ok());
}

#[tokio::test]
async fn no_symlink_inside_leads_over_http_into_the_private_folder() {
    let (server, _alice, _pending, staged) = arranged().await;
    let (_page, welcome) = browser(server.addr, "mallory").await;
    let token = welcome["token"].as_str().unwrap();
    let auth = cookie(token);

    for path in [
        "self/.parley/uploads.jsonl".to_owned(),
        "Docs/up/.parley/uploads.jsonl".into(),
        format!("self/.parley/staging/{staged}"),
        format!("staging/{staged}"),
        "log".into(),
    ] {
        let response = get(server.addr, &format!("/files/{path}"), &auth).await;
        assert_eq!(response.status, 400, "GET {path}");
        assert_eq!(response.json()["code"], "bad_path", "GET {path}");
    }
    let fine = get(server.addr, "/files/self/done.txt", &auth).await;
    assert_eq!((fine.status, fine.body.as_slice()), (200, &b"hi\n"[..]));

    let auth = token_header(token);
    for folder in ["self%2F.parley%2Fstaging", "Docs%2Fup%2F.parley", "staging"] {
        let head =
            format!("POST /upload?folder={folder}&name=x.bin HTTP/1.1{auth}\r\nContent-Length: 1");
        let response = http(server.addr, &head, b"x").await;
        assert_eq!(response.status, 400, "POST into {folder}");
        assert_eq!(response.json()["code"], "bad_path", "POST into {folder}");
    }
    let head =
        format!("POST /upload?folder=self%2FDocs&name=x.bin HTTP/1.1{auth}\r\nContent-Length: 1");
    assert_eq!(http(server.addr, &head, b"x").await.status, 201);
}
