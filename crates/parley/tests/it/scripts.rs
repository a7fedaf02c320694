//! The one-shot commands scripts use: `parley files`, `parley upload`, `parley download`, each
//! with a meaningful exit status and only its result on stdout.

use std::fs;

use crate::support::*;

fn connect_args(server: &TestServer, user: &str) -> Vec<String> {
    ["--user", user, "--host", "127.0.0.1", "--port"]
        .iter()
        .map(|s| s.to_string())
        .chain([server.addr.port().to_string()])
        .collect()
}

async fn run_in(
    dir: tempfile::TempDir,
    args: &[&str],
    connect: &[String],
) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(connect.iter().map(String::as_str));
    Proc::spawn_in(dir, &all).finish().await
}

#[tokio::test]
async fn upload_list_and_download_from_a_script() {
    let server = TestServer::start().await;
    fs::create_dir(server.shared.path().join("Docs")).unwrap();
    let work = tempfile::tempdir().unwrap();
    let original: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(work.path().join("local.bin"), &original).unwrap();

    let (code, stdout, stderr) = run_in(
        work,
        &["upload", "local.bin", "Docs"],
        &connect_args(&server, "alice"),
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout
            .trim()
            .starts_with("Shared local.bin as Docs/local.bin: 293.0 KiB"),
        "{stdout}"
    );
    assert!(
        stderr.contains("Uploading local.bin (293.0 KiB)"),
        "progress goes to stderr: {stderr}"
    );
    assert_eq!(
        fs::read(server.shared.path().join("Docs/local.bin")).unwrap(),
        original
    );

    let (code, stdout, _) = run_in(
        tempfile::tempdir().unwrap(),
        &["files", "Docs"],
        &connect_args(&server, "bob"),
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        stdout.contains("local.bin") && stdout.contains("shared by alice"),
        "{stdout}"
    );
    assert!(
        stdout
            .trim_end()
            .ends_with("1 file, 0 folders, 293.0 KiB in all"),
        "{stdout}"
    );

    // By default into <USERNAME>Files in the current directory.
    let (code, stdout, stderr) = run_in(
        tempfile::tempdir().unwrap(),
        &["download", "Docs/local.bin"],
        &connect_args(&server, "bob"),
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout
            .trim()
            .starts_with("Saved bobFiles/local.bin: 293.0 KiB"),
        "{stdout}"
    );
    // Or where --download-dir says.
    let keep = tempfile::tempdir().unwrap();
    let dir = keep.path().to_str().unwrap().to_owned();
    let (code, _, _) = run_in(
        tempfile::tempdir().unwrap(),
        &["download", "Docs/local.bin", "--download-dir", &dir],
        &connect_args(&server, "carol"),
    )
    .await;
    assert_eq!(code, 0);
    assert_eq!(fs::read(keep.path().join("local.bin")).unwrap(), original);
}

#[tokio::test]
async fn failures_have_their_own_exit_status() {
    let server = TestServer::start().await;
    let args = connect_args(&server, "dave");
    let (code, stdout, stderr) =
        run_in(tempfile::tempdir().unwrap(), &["files", "Nowhere"], &args).await;
    assert_eq!((code, stdout.trim()), (4, ""), "{stderr}");
    assert!(
        stderr.contains("listing failed: Nothing named \"Nowhere\" is shared."),
        "{stderr}"
    );
    let (code, _, stderr) = run_in(
        tempfile::tempdir().unwrap(),
        &["download", "../etc/passwd"],
        &args,
    )
    .await;
    assert_eq!(code, 4);
    assert!(
        stderr.contains("does not name a file that can be saved"),
        "{stderr}"
    );
    let (code, _, stderr) = run_in(
        tempfile::tempdir().unwrap(),
        &["upload", "missing.bin"],
        &args,
    )
    .await;
    assert_eq!(code, 4);
    assert!(stderr.contains("cannot read missing.bin"), "{stderr}");

    let port = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port().to_string()
    };
    let (code, _, stderr) = Proc::spawn(&[
        "files",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--user",
        "x",
    ])
    .finish()
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("refused"), "{stderr}");
    let (code, _, _) = Proc::spawn(&["download"]).finish().await;
    assert_eq!(code, 2);
}

#[tokio::test]
async fn a_terminal_gets_a_progress_bar() {
    let server = TestServer::start().await;
    fs::File::create(server.shared.path().join("disk.img"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    // util-linux's `script` runs the command on a pseudo-terminal, as a person would.
    let command = format!(
        "{} download disk.img --user tty --host 127.0.0.1 --port {}",
        env!("CARGO_BIN_EXE_parley"),
        server.addr.port()
    );
    let run = tokio::process::Command::new("script")
        .env("PARLEY_NO_TLS", "1")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .current_dir(work.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .unwrap()
        .expect("`script` runs");
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{screen}");
    assert!(
        screen.contains("Downloading disk.img (200.0 MiB) as transfer 1"),
        "{screen}"
    );
    // The bar: a gauge, bytes of the total, a rate and the time left.
    assert!(
        screen.contains("disk.img [") && screen.contains("/200.00 MiB"),
        "{screen}"
    );
    assert!(
        screen.contains("MiB/s, ") && screen.contains(" left"),
        "{screen}"
    );
    assert!(
        screen.contains("Saved ttyFiles/disk.img: 200.0 MiB"),
        "{screen}"
    );
    assert_eq!(
        fs::metadata(work.path().join("ttyFiles/disk.img"))
            .unwrap()
            .len(),
        200 << 20
    );
}
