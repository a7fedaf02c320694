//! Accounts: a registered name needs its password, passwords are stored only as Argon2id
//! hashes, offline private messages wait for their recipient, failed sign-ins slow down, and
//! administrators manage accounts from the command line.

use std::time::{Duration, Instant};

use parley_client::{ClientEvent, ConnectError, ConnectOptions};
use parley_proto::ErrorCode;
use parley_proto::event::Event;
use parley_proto::request::{Msg, Passwd, Register};

use crate::support::*;

fn with_password(server: &TestServer, name: &str, password: &str) -> ConnectOptions {
    ConnectOptions {
        password: Some(password.into()),
        ..server.options(name)
    }
}

async fn refused(options: &ConnectOptions) -> ErrorCode {
    match parley_client::Client::connect(options).await {
        Err(ConnectError::Refused { code, .. }) => code,
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("{} was let in", options.name),
    }
}

#[tokio::test]
async fn a_registered_name_needs_its_password() {
    let server = TestServer::start().await;
    register(&server, "alice", "correct horse").await;

    assert_eq!(
        refused(&server.options("alice")).await,
        ErrorCode::AuthFailed
    );
    assert_eq!(
        refused(&with_password(&server, "alice", "wrong horse")).await,
        ErrorCode::AuthFailed
    );
    let options = with_password(&server, "ALICE", "correct horse");
    parley_client::Client::connect(&options).await.unwrap();

    // Registering twice, or with a weak password, is refused.
    let (bob, _events) = server.join("bob").await;
    let weak = bob
        .call(Register {
            password: "short".into(),
        })
        .await;
    assert_refused(weak, ErrorCode::WeakPassword);
    bob.call(Register {
        password: "long enough".into(),
    })
    .await
    .unwrap();
    let again = bob
        .call(Register {
            password: "long enough".into(),
        })
        .await;
    assert_refused(again, ErrorCode::AlreadyRegistered);
}

#[tokio::test]
async fn passwd_changes_the_password() {
    let server = TestServer::start().await;
    register(&server, "alice", "first password").await;
    let (alice, mut events) =
        parley_client::Client::connect(&with_password(&server, "alice", "first password"))
            .await
            .unwrap();
    let wrong = alice
        .call(Passwd {
            old: "not it at all".into(),
            new: "second password".into(),
        })
        .await;
    assert_refused(wrong, ErrorCode::AuthFailed);
    alice
        .call(Passwd {
            old: "first password".into(),
            new: "second password".into(),
        })
        .await
        .unwrap();
    alice.quit().await.unwrap();
    wait_for(&mut events, |e| {
        matches!(e, ClientEvent::Closed(_)).then_some(())
    })
    .await;
    assert_eq!(
        refused(&with_password(&server, "alice", "first password")).await,
        ErrorCode::AuthFailed
    );
    parley_client::Client::connect(&with_password(&server, "alice", "second password"))
        .await
        .unwrap();
}

#[tokio::test]
async fn no_password_is_stored_in_clear() {
    let server = TestServer::start().await;
    register(&server, "alice", "unmistakable-secret-42").await;
    let mut found_hash = false;
    for entry in std::fs::read_dir(server.data_path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("unmistakable-secret-42"),
            "the password is on disk in clear"
        );
        found_hash |= text.contains("$argon2id$");
    }
    assert!(
        found_hash,
        "no Argon2id hash found: where did the account go?"
    );
}

#[tokio::test]
async fn private_messages_wait_for_an_offline_registered_user() {
    let server = TestServer::start().await;
    register(&server, "bob", "bob's password").await;
    let (alice, _events) = server.join("alice").await;
    let sent = alice
        .call(Msg {
            to: "BOB".into(),
            text: "while you were out".into(),
        })
        .await
        .unwrap();
    assert!(sent.queued);
    assert_eq!(sent.to, "bob");
    let nobody = alice
        .call(Msg {
            to: "nobody".into(),
            text: "hello?".into(),
        })
        .await;
    assert_refused(nobody, ErrorCode::NotFound);

    let options = with_password(&server, "bob", "bob's password");
    let (bob, mut bob_events) = parley_client::Client::connect(&options).await.unwrap();
    let kept = wait_for(&mut bob_events, |e| match e {
        ClientEvent::Server(Event::Private(p)) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(
        (kept.from.as_str(), kept.text.as_str(), kept.id),
        ("alice", "while you were out", sent.id)
    );
    bob.quit().await.unwrap();

    // Delivered once: the next sign-in brings nothing new.
    let (_bob, mut bob_events) = parley_client::Client::connect(&options).await.unwrap();
    alice
        .call(Msg {
            to: "bob".into(),
            text: "now live".into(),
        })
        .await
        .unwrap();
    let next = wait_for(&mut bob_events, |e| match e {
        ClientEvent::Server(Event::Private(p)) => Some(p.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(next, "now live");
}

#[tokio::test]
async fn failed_sign_ins_slow_down() {
    let server = TestServer::start().await;
    register(&server, "alice", "correct horse").await;
    let wrong = with_password(&server, "alice", "wrong horse");
    for _ in 0..2 {
        assert_eq!(refused(&wrong).await, ErrorCode::AuthFailed);
    }
    // Two failures: the third try waits at least half a second before being answered.
    let started = Instant::now();
    assert_eq!(refused(&wrong).await, ErrorCode::AuthFailed);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_server_can_require_accounts() {
    let server = TestServer::with_config(Config {
        require_account: true,
        ..Config::default()
    })
    .await;
    assert_eq!(
        refused(&server.options("guest")).await,
        ErrorCode::AccountRequired
    );
}

#[tokio::test]
async fn administrators_manage_accounts_while_the_server_runs() {
    let (server, addr) = Proc::server().await;
    let data = server.dir.path().join("parley-data");
    let data = data.to_str().unwrap();
    let admin = |args: &[&str], password: Option<&str>| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", data]);
        let env: Vec<(&str, &str)> = password
            .map(|p| vec![("PARLEY_PASSWORD", p)])
            .unwrap_or_default();
        Proc::spawn_with(&all, &env).finish()
    };
    let (code, stdout, stderr) = admin(&["add", "carol"], Some("carol's password")).await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "Registered carol.");
    let (_, stdout, _) = admin(&["list"], None).await;
    assert_eq!(stdout.trim(), "carol");
    let (code, _, stderr) = admin(&["add", "carol"], Some("another password")).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("registered already"), "{stderr}");
    let (code, _, stderr) = admin(&["add", "dave"], Some("short")).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("at least 8 characters"), "{stderr}");

    let port = addr.port();
    let connect = |password: Option<&str>| ConnectOptions {
        password: password.map(str::to_owned),
        ..ConnectOptions::new("127.0.0.1", port, "carol").plain()
    };
    let (carol, _events) = parley_client::Client::connect(&connect(Some("carol's password")))
        .await
        .unwrap();
    carol.quit().await.unwrap();

    let (code, _, _) = admin(&["reset-password", "carol"], Some("a new password")).await;
    assert_eq!(code, 0);
    assert!(matches!(
        parley_client::Client::connect(&connect(Some("carol's password"))).await,
        Err(ConnectError::Refused {
            code: ErrorCode::AuthFailed,
            ..
        })
    ));
    parley_client::Client::connect(&connect(Some("a new password")))
        .await
        .unwrap()
        .0
        .quit()
        .await
        .unwrap();

    let (code, stdout, _) = admin(&["remove", "carol"], None).await;
    assert_eq!((code, stdout.trim()), (0, "Removed the account carol."));
    // A guest may use the name again.
    parley_client::Client::connect(&connect(None))
        .await
        .unwrap();
    drop(server);
}

/// The server knows which names are registered without asking its database at every guest's
/// sign-in. A name `parley admin` registers while the server runs is still refused to guests
/// within moments, and its owner may sign in with the password at once.
#[tokio::test]
async fn a_name_registered_by_the_administrator_is_soon_refused_to_guests() {
    let (server, addr) = Proc::server().await;
    let data = server.dir.path().join("parley-data");
    let connect = |password: Option<&str>| ConnectOptions {
        password: password.map(str::to_owned),
        ..ConnectOptions::new("127.0.0.1", addr.port(), "frank").plain()
    };
    // A guest signs in first, so the server has read its accounts and believes frank a guest.
    let (guest, _events) = parley_client::Client::connect(&connect(None))
        .await
        .unwrap();
    guest.quit().await.unwrap();
    let (code, _, stderr) = Proc::spawn_with(
        &[
            "admin",
            "add",
            "frank",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[("PARLEY_PASSWORD", "frank's password")],
    )
    .finish()
    .await;
    assert_eq!(code, 0, "{stderr}");
    parley_client::Client::connect(&connect(Some("frank's password")))
        .await
        .expect("the owner signs in at once")
        .0
        .quit()
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match parley_client::Client::connect(&connect(None)).await {
                Ok((guest, _)) => guest.quit().await.unwrap(),
                Err(err) => break err,
            }
        }
    });
    let err = refused
        .await
        .expect("guests are refused the name within moments");
    assert!(
        matches!(
            err,
            ConnectError::Refused {
                code: ErrorCode::AuthFailed,
                ..
            }
        ),
        "{err}"
    );
    drop(server);
}

#[tokio::test]
async fn the_line_client_registers_and_then_needs_the_password() {
    let server = TestServer::start().await;
    let port = server.addr.port().to_string();
    let mut erin = Proc::spawn_with(
        &["client", "erin", "127.0.0.1", &port],
        &[("PARLEY_PASSWORD", "erin's password")],
    );
    erin.expect_line(|l| l.starts_with("Connected to")).await;
    erin.send("/register").await;
    erin.expect_line(|l| l == "Registered erin: from now on this name needs its password.")
        .await;
    erin.send("/quit").await;
    assert_eq!(erin.finish().await.0, 0);

    // Without the password (and no terminal to ask at): refused, with the reason.
    let (code, _, stderr) = Proc::spawn(&["client", "erin", "127.0.0.1", &port])
        .finish()
        .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("is registered: sign in with its password"),
        "{stderr}"
    );
    // With it, from a file.
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("pw"), "erin's password\n").unwrap();
    let mut again = Proc::spawn_in(
        work,
        &[
            "client",
            "erin",
            "127.0.0.1",
            &port,
            "--password-file",
            "pw",
        ],
    );
    again.expect_line(|l| l.starts_with("Connected to")).await;
}

#[tokio::test]
async fn an_account_does_not_inherit_what_earlier_guests_of_its_name_were_sent() {
    let server = TestServer::start().await;
    let (alice, _alice_events) = server.join("alice").await;
    let (guest, mut guest_events) = server.join("dave").await;
    alice
        .call(Msg {
            to: "dave".into(),
            text: "for the guest".into(),
        })
        .await
        .unwrap();
    guest.quit().await.unwrap();
    wait_for(&mut guest_events, |e| {
        matches!(e, ClientEvent::Closed(_)).then_some(())
    })
    .await;

    register(&server, "dave", "dave's own password").await;
    alice
        .call(Msg {
            to: "dave".into(),
            text: "for the owner".into(),
        })
        .await
        .unwrap();
    let (dave, _events) =
        parley_client::Client::connect(&with_password(&server, "dave", "dave's own password"))
            .await
            .unwrap();
    let with_alice = parley_proto::request::History {
        room: None,
        with: Some("alice".into()),
        before: None,
        limit: 10,
    };
    let texts: Vec<String> = dave
        .call(with_alice)
        .await
        .unwrap()
        .messages
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["for the owner"]);
}

#[tokio::test]
async fn removing_an_account_drops_what_was_kept_for_it() {
    let (server, addr) = Proc::server().await;
    let data = server.dir.path().join("parley-data");
    let admin = |args: &[&str]| {
        let mut all = vec!["admin"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--data-dir", data.to_str().unwrap()]);
        Proc::spawn_with(&all, &[("PARLEY_PASSWORD", "erin's password")]).finish()
    };
    assert_eq!(admin(&["add", "erin"]).await.0, 0);
    let connect = |name: &str| ConnectOptions::new("127.0.0.1", addr.port(), name).plain();
    let (alice, _events) = parley_client::Client::connect(&connect("alice"))
        .await
        .unwrap();
    let sent = alice
        .call(Msg {
            to: "erin".into(),
            text: "kept for erin".into(),
        })
        .await
        .unwrap();
    assert!(sent.queued);
    assert_eq!(admin(&["remove", "erin"]).await.0, 0);
    // A guest taking the name gets nothing that was kept for the account.
    let (_erin, mut events) = parley_client::Client::connect(&connect("erin"))
        .await
        .unwrap();
    alice
        .call(Msg {
            to: "erin".into(),
            text: "live".into(),
        })
        .await
        .unwrap();
    let first = wait_for(&mut events, |e| match e {
        ClientEvent::Server(Event::Private(p)) => Some(p.text.clone()),
        _ => None,
    })
    .await;
    assert_eq!(first, "live");
}

#[tokio::test]
async fn an_overlong_password_is_refused_without_hashing() {
    let server = TestServer::start().await;
    register(&server, "frank", "frank's password").await;
    let huge = "p".repeat(60_000);
    assert_eq!(
        refused(&with_password(&server, "frank", &huge)).await,
        ErrorCode::AuthFailed
    );
}

#[tokio::test]
async fn at_a_terminal_the_password_is_typed_without_echo() {
    let server = TestServer::start().await;
    let command = format!(
        "{} client gina 127.0.0.1 {}",
        env!("CARGO_BIN_EXE_parley"),
        server.addr.port()
    );
    // util-linux's `script` gives the client a pseudo-terminal; what we write is what is typed.
    let mut typed = tokio::process::Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("PARLEY_NO_TLS", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("`script` runs");
    let mut stdin = typed.stdin.take().unwrap();
    let mut stdout = tokio::io::BufReader::new(typed.stdout.take().unwrap());
    let mut screen = String::new();
    // Reads the terminal until `text` shows, within the wait.
    async fn until(
        out: &mut tokio::io::BufReader<tokio::process::ChildStdout>,
        screen: &mut String,
        text: &str,
    ) {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(WAIT, async {
            let mut buf = [0u8; 4096];
            while !screen.contains(text) {
                let n = out.read(&mut buf).await.unwrap();
                assert!(n > 0, "the terminal closed; it showed {screen:?}");
                screen.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{text:?} did not show; the terminal showed {screen:?}"));
    }
    use tokio::io::AsyncWriteExt;
    until(&mut stdout, &mut screen, "Connected to").await;
    stdin.write_all(b"/register\n").await.unwrap();
    until(&mut stdout, &mut screen, "Choose a password: ").await;
    stdin.write_all(b"hunter2-but-longer\n").await.unwrap();
    until(&mut stdout, &mut screen, "Repeat it: ").await;
    stdin.write_all(b"hunter2-but-longer\n").await.unwrap();
    until(&mut stdout, &mut screen, "Registered gina").await;
    assert!(
        !screen.contains("hunter2"),
        "the password was echoed: {screen:?}"
    );
    stdin.write_all(b"/quit\n").await.unwrap();
    // And the name now needs it.
    assert_eq!(
        refused(&server.options("gina")).await,
        ErrorCode::AuthFailed
    );
}
