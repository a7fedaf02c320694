//! docs/protocol.md is the contract: a client written in Python from that document alone
//! (tests/conformance/conformance.py, by someone who did not read the server's code) is run
//! against the real server, and every check it makes must pass.

use std::time::Duration;

use tokio::process::Command;

use crate::support::*;

/// The whole suite; it bounds each of its own waits far below this.
const SUITE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn a_client_written_from_the_protocol_document_agrees_with_the_server() {
    // Its checks of ordering and of slow readers send as fast as they can; flood control's
    // own tests are in flood.rs.
    let server = TestServer::unthrottled().await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/conformance/conformance.py"
    );
    let port = server.addr.port().to_string();
    let run = Command::new("python3")
        .args([script, "--host", "127.0.0.1", "--port", &port])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(SUITE_TIMEOUT, run)
        .await
        .expect("the conformance suite did not finish in time")
        .expect("python3 is needed to run the conformance suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the server disagrees with docs/protocol.md:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.lines().filter(|l| l.starts_with("ok")).count() >= 20,
        "{stdout}"
    );
}
