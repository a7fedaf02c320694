//! `parley bench`: each scenario runs against the real server binary at a small size and
//! reports numbers that make sense. These check the instrument, never a speed.

use std::net::SocketAddr;

use serde_json::Value;

use crate::support::{Proc, WAIT};

/// Runs `parley bench <args>` against `server`; returns its JSON report and its stderr.
async fn bench(server: &Proc, addr: SocketAddr, args: &[&str], env: &[(&str, &str)]) -> Value {
    let port = addr.port().to_string();
    let pid = server.pid().to_string();
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-p", &port, "--pid", &pid, "--timeout", "60"]);
    let proc = if env.is_empty() {
        Proc::spawn(&all)
    } else {
        Proc::launch_tls(&all, env)
    };
    let (code, stdout, stderr) = tokio::time::timeout(WAIT * 6, proc.finish())
        .await
        .expect("the benchmark finished");
    assert_eq!(code, 0, "parley {all:?} failed: {stderr}");
    let line = stdout.lines().last().expect("a JSON line on stdout");
    let report: Value = serde_json::from_str(line).expect("the report is JSON");
    assert!(
        !stderr.trim().is_empty(),
        "a summary for people on stderr: {report}"
    );
    report
}

fn number(report: &Value, pointer: &str) -> f64 {
    report
        .pointer(pointer)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {pointer} in {report}"))
}

#[tokio::test]
async fn fanout_counts_every_delivery_and_times_them() {
    let (server, addr) = Proc::unthrottled_server().await;
    let report = bench(
        &server,
        addr,
        &["fanout", "-n", "5", "-s", "2", "-m", "400", "-w", "8"],
        &[],
    )
    .await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["sent"], 400);
    assert_eq!(report["received"], 2000, "5 receivers x 400 messages");
    assert_eq!(report["lost"], 0);
    assert_eq!(report["send_errors"], 0);
    assert_eq!(number(&report, "/lat_us/count"), 2000.0);
    let (p50, p99, max) = (
        number(&report, "/lat_us/p50"),
        number(&report, "/lat_us/p99"),
        number(&report, "/lat_us/max"),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{report}");
    assert!(number(&report, "/deliveries_per_s") > 0.0);
    assert!(number(&report, "/cpu/server_pct") >= 0.0);

    // A second run in the same room is not fooled by the first one's backlog.
    let report = bench(
        &server,
        addr,
        &["fanout", "-n", "3", "-m", "30", "-r", "300"],
        &[],
    )
    .await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["received"], 90, "{report}");
    assert_eq!(number(&report, "/lat_us/count"), 90.0);
}

#[tokio::test]
async fn idle_reports_the_servers_memory_per_connection() {
    let (server, addr) = Proc::unthrottled_server().await;
    let report = bench(
        &server,
        addr,
        &["idle", "-k", "50", "--settle", "0", "--hold", "1"],
        &[],
    )
    .await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["alive_at_end"], 50);
    let per_conn = number(&report, "/server_kib_per_conn");
    assert!((0.0..1024.0).contains(&per_conn), "{report}");
    assert!(number(&report, "/server_rss_kib/before") > 0.0);
}

#[tokio::test]
async fn join_storm_checks_everyones_view_of_the_room() {
    let (server, addr) = Proc::unthrottled_server().await;
    for room in ["lobby", "storm"] {
        let report = bench(
            &server,
            addr,
            &["join-storm", "-k", "60", "--room", room],
            &[],
        )
        .await;
        assert_eq!(report["complete"], true, "{report}");
        assert_eq!(report["views_right"], 60, "{report}");
        assert_eq!(report["view_members_min"], 60, "{report}");
        let (all_in, all_right) = (
            number(&report, "/all_in_s"),
            number(&report, "/all_views_right_s"),
        );
        assert!(0.0 < all_in && all_in <= all_right, "{report}");
    }
}

#[tokio::test]
async fn transfer_uploads_and_downloads_a_verified_file() {
    let (server, addr) = Proc::unthrottled_server().await;
    let report = bench(&server, addr, &["transfer", "--size", "3M"], &[]).await;
    assert_eq!(report["complete"], true, "{report}");
    assert!(number(&report, "/upload/MBps") > 0.0);
    assert!(number(&report, "/download/MBps") > 0.0);
    assert_eq!(report["download"]["verified"], true, "{report}");
    let path = report["path"].as_str().unwrap();
    let stored = server.dir.path().join("SharedFiles").join(path);
    assert_eq!(std::fs::metadata(&stored).unwrap().len(), 3 << 20);

    // The same file again, without an upload, and unchecked as curl downloads: for comparing
    // the server with a web server.
    let report = bench(
        &server,
        addr,
        &["transfer", "--download", path, "--no-verify"],
        &[],
    )
    .await;
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["upload"], serde_json::Value::Null, "{report}");
    assert_eq!(report["download"]["verified"], false, "{report}");
    assert_eq!(report["bytes"], 3 << 20, "{report}");
    assert!(number(&report, "/download/MBps") > 0.0);
}

#[tokio::test]
async fn chat_during_transfer_times_both_directions() {
    let (server, addr) = Proc::unthrottled_server().await;
    let report = bench(
        &server,
        addr,
        &[
            "chat-during-transfer",
            "--size",
            "4M",
            "-m",
            "10",
            "-r",
            "100",
        ],
        &[],
    )
    .await;
    assert_eq!(report["complete"], true, "{report}");
    for direction in [
        "to_downloader_us",
        "from_downloader_us",
        "downloader_confirm_us",
    ] {
        assert_eq!(report[direction]["count"], 10, "{direction}: {report}");
        assert!(report[direction]["p99"].as_f64().unwrap() > 0.0);
    }
    assert!(number(&report, "/download_MBps") > 0.0);
}

#[tokio::test]
async fn fanout_runs_over_tls() {
    let work = tempfile::tempdir().unwrap();
    let known_hosts = work.path().join("known_hosts");
    let mut server = Proc::launch_tls(
        &["server", "0", "--host", "127.0.0.1", "--flood-rate", "0"],
        &[],
    );
    let line = server.expect_line(|l| l.contains("listening on")).await;
    let addr: SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    let env = [("PARLEY_KNOWN_HOSTS", known_hosts.to_str().unwrap())];
    let report = bench(&server, addr, &["fanout", "-n", "4", "-m", "100"], &env).await;
    assert_eq!(report["tls"], true);
    assert_eq!(report["complete"], true, "{report}");
    assert_eq!(report["received"], 400);
    // Trusted the way the client trusts: pinned on first use.
    let pins = std::fs::read_to_string(&known_hosts).unwrap();
    assert!(
        pins.contains(&format!("127.0.0.1:{}", addr.port())),
        "{pins}"
    );
}

#[tokio::test]
async fn bench_refuses_to_leave_the_machine() {
    let (code, stdout, stderr) = Proc::spawn(&["bench", "fanout", "--host", "192.0.2.1"])
        .finish()
        .await;
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(stderr.contains("loopback"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
