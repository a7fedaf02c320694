//! The `parley` binary as a user meets it: usage mistakes, connection failures, and line mode
//! with every command form, all through real processes.

use parley_client::{Client, ClientEvent, ConnectOptions};
use parley_proto::event::Event;
use parley_proto::request::{Msg, Say};
use tokio::net::TcpListener;

use crate::support::*;

async fn run(args: &[&str]) -> (i32, String, String) {
    Proc::spawn(args).finish().await
}

fn assert_no_backtrace(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[tokio::test]
async fn usage_mistakes_print_usage_and_exit_2() {
    for args in [
        &[][..],
        &["client"],
        &["client", "bob", "127.0.0.1", "not-a-port"],
        &["client", "bob", "127.0.0.1", "99999"],
        &["client", "bob", "127.0.0.1", "--host", "example.org"],
        &["client", "bob", "h", "1", "extra"],
        &["server", "not-a-port"],
        &["server", "12300", "--port", "12301"],
        &["dance"],
    ] {
        let (code, _, stderr) = run(args).await;
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains("Usage"), "{args:?}: {stderr}");
    }
}

/// A port with nothing listening on it.
async fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn no_server_there_is_one_clear_line() {
    let port = free_port().await.to_string();
    let (code, stdout, stderr) = run(&["client", "bob", "127.0.0.1", &port]).await;
    assert_eq!(code, 1);
    assert!(stdout.trim().is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("refused"),
        "{stderr}"
    );
    assert_no_backtrace(&stderr);
}

#[tokio::test]
async fn a_bad_hostname_is_one_clear_line() {
    let (code, _, stderr) = run(&["client", "bob", "no-such-host.invalid", "4000"]).await;
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("no-such-host.invalid:4000") && stderr.contains("could not be resolved"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Accepts, then says nothing.
    let _silent = tokio::spawn(async move {
        let _held = listener.accept().await;
        tokio::time::sleep(WAIT).await;
    });
    let (code, _, stderr) = run(&[
        "client",
        "bob",
        "127.0.0.1",
        &port,
        "--connect-timeout",
        "1",
    ])
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")) && stderr.contains("no answer within 1 s"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_taken_or_invalid_name_exits_non_zero_with_the_reason() {
    let server = TestServer::start().await;
    let (_alice, _events) = server.join("alice").await;
    let port = server.addr.port().to_string();
    let (code, _, stderr) = run(&["client", "ALICE", "127.0.0.1", &port]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("taken"), "{stderr}");
    let (code, _, stderr) =
        run(&["client", "bad/name", "--host", "127.0.0.1", "--port", &port]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("not allowed") && stderr.contains("'/'"),
        "{stderr}"
    );
    assert_no_backtrace(&stderr);
}

#[tokio::test]
async fn server_port_in_use_is_one_clear_line() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (code, _, stderr) = run(&["server", "--host", "127.0.0.1", "--port", &port]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{stderr}"
    );
    assert_no_backtrace(&stderr);
}

/// The next private message alice receives.
async fn private_text(events: &mut parley_client::Events) -> String {
    wait_for(events, |event| match event {
        ClientEvent::Server(Event::Private(p)) => Some(format!("{}>{}", p.from, p.text)),
        _ => None,
    })
    .await
}

async fn room_text(events: &mut parley_client::Events) -> String {
    wait_for(events, |event| match event {
        ClientEvent::Server(Event::Message(m)) => Some(format!("{}@{}>{}", m.from, m.room, m.text)),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn every_command_form_works_in_line_mode() {
    let server = TestServer::start().await;
    let (_alice, mut alice) = server.join("alice").await;
    let mut bob = Proc::client("bob", server.addr).await;

    for (line, expected) in [
        ("hello there", "hello there"),
        ("/broadcast second", "second"),
        ("BROADCAST::third", "third"),
        ("//slash", "/slash"),
    ] {
        bob.send(line).await;
        assert_eq!(room_text(&mut alice).await, format!("bob@lobby>{expected}"));
        bob.expect_line(|l| l == format!("[#lobby] bob: {expected}"))
            .await;
    }
    for line in [
        "/msg alice one",
        "/unicast alice two",
        "@alice three",
        "UNICAST::alice:four",
    ] {
        bob.send(line).await;
        let text = line.rsplit([' ', ':']).next().unwrap();
        assert_eq!(private_text(&mut alice).await, format!("bob>{text}"));
        bob.expect_line(|l| l == format!("[private to alice] {text}"))
            .await;
    }

    bob.send("/msg nobody hi").await;
    bob.expect_line(|l| l == "! No user named nobody is online.")
        .await;
    bob.send("UNICAST::alice").await;
    bob.expect_line(|l| l == "! Usage: UNICAST::<user>:<message>")
        .await;
    bob.send("/bogus").await;
    bob.expect_line(|l| l.contains("Unknown command /bogus") && l.contains("/help"))
        .await;
    for who in ["/users", "/online", "/who"] {
        bob.send(who).await;
        bob.expect_line(|l| l == "Online (2): alice, bob").await;
    }
    bob.send("/help").await;
    bob.expect_line(|l| l.contains("UNICAST::<user>:<message>"))
        .await;

    bob.send("/join rust").await;
    bob.send("rustaceans only").await;
    bob.expect_line(|l| l.starts_with("You joined #rust")).await;
    bob.expect_line(|l| l == "[#rust] bob: rustaceans only")
        .await;
    bob.send("/rooms").await;
    bob.expect_line(|l| {
        l.starts_with("Rooms (2): #lobby (2, you are in it), #rust (1, you are in it)")
    })
    .await;
    bob.send("/part").await;
    bob.expect_line(|l| l == "Now talking in #lobby.").await;
    bob.send("back in the lobby").await;
    // Alice is not in #rust: the next room message she gets is the lobby one.
    assert_eq!(room_text(&mut alice).await, "bob@lobby>back in the lobby");

    bob.send("EXIT::").await;
    let (code, stdout, stderr) = bob.finish().await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
}

#[tokio::test]
async fn quit_commands_exit_zero() {
    let server = TestServer::start().await;
    for quit in ["/quit", "/exit", "EXIT::"] {
        let mut client = Proc::client("leaver", server.addr).await;
        client.send(quit).await;
        let (code, _, stderr) = client.finish().await;
        assert_eq!(code, 0, "{quit}: {stderr}");
    }
}

#[tokio::test]
async fn text_from_others_cannot_reach_the_terminal_raw() {
    let server = TestServer::start().await;
    let (mallory, _events) = server.join("mallory").await;
    let mut bob = Proc::client("bob", server.addr).await;
    let nasty = "\u{1b}[2J\u{1b}]0;owned\u{7}\u{9b}31m\r\u{202e}gnp.exe";
    mallory
        .call(Say {
            room: "lobby".into(),
            text: nasty.into(),
        })
        .await
        .unwrap();
    mallory
        .call(Msg {
            to: "bob".into(),
            text: format!("psst{nasty}"),
        })
        .await
        .unwrap();
    bob.expect_line(|l| {
        l.starts_with("[#lobby] mallory: ^[[2J^[]0;owned^G\\u{9b}31m^M\\u{202e}gnp.exe")
    })
    .await;
    bob.expect_line(|l| l.starts_with("[private from mallory] psst^[[2J"))
        .await;
    bob.send("/quit").await;
    let (_, stdout, _) = bob.finish().await;
    for forbidden in ['\u{1b}', '\u{7}', '\u{9b}', '\r', '\u{202e}'] {
        assert!(
            !stdout.contains(forbidden),
            "{forbidden:?} reached the terminal: {stdout:?}"
        );
    }
}

/// Whoever runs the server may stop reading its log (a paused pager, a stalled pipe): the
/// server goes on serving, and drops log lines rather than wait for room in the pipe.
#[tokio::test]
async fn a_server_whose_log_nobody_reads_goes_on_serving() {
    let (_server, addr) = Proc::server().await;
    // From here on nobody reads the server's output. Each guest logs a line as it connects
    // and one as it leaves: 3,000 of them fill a pipe's 64 KiB several times over. Each
    // sign-in fails the test if its welcome does not come within the wait.
    for i in 0..3000 {
        let mut guest = RawConn::connect(addr).await;
        guest.hello(&format!("guest{i}")).await;
    }
    let options = |name| ConnectOptions::new("127.0.0.1", addr.port(), name).plain();
    let (alice, _) = Client::connect(&options("alice")).await.unwrap();
    let (_bob, mut bob) = Client::connect(&options("bob")).await.unwrap();
    alice
        .call(Say {
            room: "lobby".into(),
            text: "still here".into(),
        })
        .await
        .unwrap();
    assert_eq!(room_text(&mut bob).await, "alice@lobby>still here");
}

/// The worker threads `server` runs: as its runtime counts them, in the line it logs at
/// start, checked against the threads of the process. Threads named `tokio-rt-worker` in /proc
/// are no count of their own: the blocking pool's threads carry the same name, and a thread
/// just spawned (the recorder, from a worker) carries its parent's until it sets its own. But
/// once the server runs, on a worker, each worker has named itself, so there are at least as
/// many such threads as workers.
async fn workers_of(server: &mut Proc) -> usize {
    let line = server.expect_line(|l| l.contains("worker threads")).await;
    let workers: usize = line
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no count in {line:?}"));
    // Logged from a worker, so that one has named itself by then, and the others as early.
    server
        .expect_line(|l| l.contains("sharing the folder"))
        .await;
    let named = || {
        std::fs::read_dir(format!("/proc/{}/task", server.pid()))
            .unwrap()
            .filter(|task| {
                let comm = task.as_ref().unwrap().path().join("comm");
                std::fs::read_to_string(comm).is_ok_and(|name| name.trim() == "tokio-rt-worker")
            })
            .count()
    };
    // A worker not yet run on a loaded machine has not named itself: wait for it, a while.
    let deadline = std::time::Instant::now() + WAIT;
    while named() < workers {
        assert!(
            std::time::Instant::now() < deadline,
            "{workers} workers, {} threads named so",
            named()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    workers
}

#[tokio::test]
async fn the_server_leaves_a_core_to_the_threads_beside_its_workers() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let args = ["server", "0", "--host", "127.0.0.1", "--no-tls"];
    let mut server = Proc::spawn(&args);
    assert_eq!(
        workers_of(&mut server).await,
        cores.saturating_sub(1).max(1)
    );
    // An operator's choice stands.
    let mut server = Proc::spawn_with(&args, &[("TOKIO_WORKER_THREADS", "3")]);
    assert_eq!(workers_of(&mut server).await, 3);
}
