//! Encryption: TLS on by default with a self-signed certificate that clients pin on first use,
//! a changed certificate refused, a real certificate verified against the system's roots, and
//! plain TCP only when both sides ask for it.

use std::path::Path;
use std::sync::Arc;

use parley_client::tls::{Security, Trust};
use parley_client::{Client, ConnectError, ConnectOptions, Events};
use parley_server::TlsMode;
use tokio::io::AsyncWriteExt;

use crate::support::*;

/// A server with `tls`, and its data folder (where a self-signed certificate goes).
async fn tls_server(tls: TlsMode) -> (TestServer, std::path::PathBuf) {
    let server = TestServer::with_tls(Config {
        tls,
        ..Config::default()
    })
    .await;
    let data = server.data_path().to_owned();
    (server, data)
}

fn pinned(server: &TestServer, known_hosts: &Path, name: &str) -> ConnectOptions {
    ConnectOptions {
        security: Security::Tls {
            known_hosts: known_hosts.to_owned(),
            accept_new: false,
        },
        ..ConnectOptions::new("127.0.0.1", server.addr.port(), name)
    }
}

fn fingerprint_of(cert_pem: &Path) -> String {
    let pem = std::fs::read_to_string(cert_pem).unwrap();
    let der = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<String>();
    use base64_decode::decode;
    parley_proto::fingerprint::sha256(&decode(&der))
}

/// A minimal base64 decoder, so the test needs no extra dependency to read a PEM file.
mod base64_decode {
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let bytes: Vec<u8> = text.bytes().filter(|c| *c != b'=').map(value).collect();
        bytes
            .chunks(4)
            .flat_map(|chunk| {
                let n =
                    chunk.iter().fold(0u32, |n, v| (n << 6) | *v as u32) << (6 * (4 - chunk.len()));
                n.to_be_bytes()[1..chunk.len()].to_vec()
            })
            .collect()
    }
}

#[tokio::test]
async fn tls_is_on_by_default_and_a_raw_handshake_succeeds() {
    let (server, data) = tls_server(TlsMode::SelfSigned).await;
    let cert = data.join("tls/cert.pem");

    // Any TLS client can complete a handshake (here one that trusts anything: the point is
    // that the server speaks TLS, not who it is).
    #[derive(Debug)]
    struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (_, session) = tls.get_ref();
    let presented = session.peer_certificates().unwrap()[0].clone();
    assert_eq!(
        parley_proto::fingerprint::sha256(&presented),
        fingerprint_of(&cert)
    );
    tls.shutdown().await.unwrap();

    // Plain TCP to a TLS server gets nowhere.
    let plain = ConnectOptions::new("127.0.0.1", server.addr.port(), "plain").plain();
    assert!(Client::connect(&plain).await.is_err());
}

#[tokio::test]
async fn the_first_connection_pins_and_a_changed_certificate_is_refused() {
    let (server, data) = tls_server(TlsMode::SelfSigned).await;
    let known = tempfile::tempdir().unwrap();
    let known_hosts = known.path().join("known_hosts");

    let (alice, _events) = Client::connect(&pinned(&server, &known_hosts, "alice"))
        .await
        .unwrap();
    // Read once the server is up: it makes its certificate on start.
    let expected = fingerprint_of(&data.join("tls/cert.pem"));
    assert_eq!(alice.trust(), Some(&Trust::NewlyPinned(expected.clone())));
    let file = std::fs::read_to_string(&known_hosts).unwrap();
    assert_eq!(
        file,
        format!("127.0.0.1:{} {expected}\n", server.addr.port())
    );
    let (bob, _events) = Client::connect(&pinned(&server, &known_hosts, "bob"))
        .await
        .unwrap();
    assert_eq!(bob.trust(), Some(&Trust::Pinned), "said once");

    // The address now answers with another certificate.
    std::fs::write(
        &known_hosts,
        format!("127.0.0.1:{} AA:BB:CC\n", server.addr.port()),
    )
    .unwrap();
    match Client::connect(&pinned(&server, &known_hosts, "carol")).await {
        Err(ConnectError::CertificateChanged {
            pinned, presented, ..
        }) => {
            assert_eq!(
                (pinned.as_str(), presented.as_str()),
                ("AA:BB:CC", expected.as_str())
            );
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a changed certificate was accepted"),
    }
    // Accepted deliberately, it is pinned anew.
    let options = ConnectOptions {
        security: Security::Tls {
            known_hosts: known_hosts.clone(),
            accept_new: true,
        },
        ..pinned(&server, &known_hosts, "carol")
    };
    let (carol, _events) = Client::connect(&options).await.unwrap();
    assert_eq!(carol.trust(), Some(&Trust::Replaced(expected.clone())));
    assert!(
        std::fs::read_to_string(&known_hosts)
            .unwrap()
            .contains(&expected)
    );
}

#[tokio::test]
async fn the_binaries_speak_tls_and_warn_when_the_certificate_changes() {
    let work = tempfile::tempdir().unwrap();
    let known_hosts = work.path().join("known_hosts");
    let known = known_hosts.to_str().unwrap();
    let mut server = Proc::launch_tls(&["server", "0", "--host", "127.0.0.1"], &[]);
    let line = server.expect_line(|l| l.contains("listening on")).await;
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.parse().ok())
        .unwrap();
    let printed = server
        .expect_line(|l| l.contains("TLS certificate fingerprint"))
        .await;
    let fingerprint = printed.rsplit(' ').next().unwrap().to_owned();
    let port = addr.port().to_string();

    let mut client = Proc::launch_tls(
        &["client", "alice", "127.0.0.1", &port],
        &[("PARLEY_KNOWN_HOSTS", known)],
    );
    let note = client
        .expect_line(|l| l.starts_with("First connection to"))
        .await;
    assert!(note.contains(&fingerprint), "{note}");
    client.expect_line(|l| l.starts_with("Connected to")).await;
    client.send("/quit").await;
    assert_eq!(client.finish().await.0, 0);

    std::fs::write(&known_hosts, format!("127.0.0.1:{port} 00:11:22\n")).unwrap();
    let (code, _, stderr) = Proc::launch_tls(
        &["client", "alice", "127.0.0.1", &port],
        &[("PARLEY_KNOWN_HOSTS", known)],
    )
    .finish()
    .await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("has changed")
            && stderr.contains("00:11:22")
            && stderr.contains(&fingerprint),
        "{stderr}"
    );
    assert!(stderr.contains("--accept-new-certificate"), "{stderr}");
    assert!(
        stderr.lines().count() > 2,
        "the warning spans lines: {stderr}"
    );

    // Plain mode needs both sides: a TLS client to a --no-tls server says what to do.
    let (plain_server, plain_addr) = Proc::server().await;
    let plain_port = plain_addr.port().to_string();
    let (code, _, stderr) = Proc::launch_tls(
        &["client", "bob", "127.0.0.1", &plain_port],
        &[("PARLEY_KNOWN_HOSTS", known)],
    )
    .finish()
    .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("--no-tls"), "{stderr}");
    // And a plain client to a TLS server is told the server speaks TLS.
    let (code, _, stderr) = Proc::spawn(&["client", "carol", "127.0.0.1", &port])
        .finish()
        .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("the server speaks TLS"), "{stderr}");
    // And a plain client to a TLS server is told the server speaks TLS.
    let (code, _, stderr) = Proc::spawn(&["client", "carol", "127.0.0.1", &port])
        .finish()
        .await;
    assert_eq!(code, 1);
    assert!(stderr.contains("the server speaks TLS"), "{stderr}");
    drop(plain_server);
}

#[tokio::test]
async fn a_real_certificate_is_verified_against_the_roots() {
    // A test certificate authority, and a certificate for "localhost" it signed.
    let work = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &issuer)
        .unwrap();
    let (cert, key, roots) = (
        work.path().join("cert.pem"),
        work.path().join("key.pem"),
        work.path().join("ca.pem"),
    );
    std::fs::write(&cert, leaf.pem()).unwrap();
    std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
    std::fs::write(&roots, ca.pem()).unwrap();

    let (server, _data) = tls_server(TlsMode::Files { cert, key }).await;
    let port = server.addr.port().to_string();
    let known_hosts = work.path().join("known_hosts");
    // The binary client, trusting the test authority as its system roots (SSL_CERT_FILE).
    let mut client = Proc::launch_tls(
        &["client", "alice", "localhost", &port],
        &[
            ("SSL_CERT_FILE", roots.to_str().unwrap()),
            ("PARLEY_KNOWN_HOSTS", known_hosts.to_str().unwrap()),
        ],
    );
    let first = client.expect_line(|l| !l.is_empty()).await;
    assert!(
        first.starts_with("Connected to localhost:"),
        "vouched for, not pinned: {first}"
    );
    assert!(
        !known_hosts.exists(),
        "nothing to pin for a certificate an authority vouches for"
    );
}

/// A server with a self-signed certificate, and alice signed in to it, having pinned it in a
/// known-hosts file that lives as long as the returned folder.
async fn alice_over_tls() -> (TestServer, Client, Events, tempfile::TempDir) {
    let (server, _data) = tls_server(TlsMode::SelfSigned).await;
    let known = tempfile::tempdir().unwrap();
    let (alice, events) = Client::connect(&pinned(&server, &known.path().join("k"), "alice"))
        .await
        .unwrap();
    (server, alice, events, known)
}

#[tokio::test]
async fn a_file_shrinking_during_a_tls_download_fails_it_and_the_connection_lives_on() {
    // With TLS the server reads the file in, a few frames at a time, rather than sending it
    // from the page cache: a file that ends early must still end the transfer cleanly.
    let (server, alice, _events, _known) = alice_over_tls().await;
    crate::downloads::a_shrinking_file_fails_its_download(&server, &alice).await;
}

#[tokio::test]
async fn a_tls_download_nobody_reads_does_not_hold_back_chat() {
    // With TLS the server reads the file in and encrypts it, a path of its own: the download
    // must keep to its window there too.
    let (server, alice, events, known) = alice_over_tls().await;
    let (bob, _bob_events) = Client::connect(&pinned(&server, &known.path().join("k"), "bob"))
        .await
        .unwrap();
    crate::downloads::a_download_nobody_reads_leaves_chat_alone(&server, &alice, events, &bob)
        .await;
}

#[tokio::test]
async fn files_cross_tls_byte_identical_both_ways() {
    // With TLS the server reads file bytes in to encrypt them: a file it has never hashed, a
    // resumed download, and an upload whose hash it already knows each take their own path.
    let (server, alice, _events, _known) = alice_over_tls().await;
    let original: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i * 31 + i / 997) as u8)
        .collect();
    std::fs::write(server.shared.path().join("by-hand.bin"), &original).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let save = |path: &'static str| {
        parley_client::download::download(&alice, path, dir.path(), |_| {}, |_| {})
    };

    let saved = save("by-hand.bin").await.unwrap();
    assert_eq!(std::fs::read(&saved.path).unwrap(), original);

    std::fs::write(dir.path().join("by-hand.bin.part"), &original[..1_234_567]).unwrap();
    std::fs::remove_file(&saved.path).unwrap();
    let resumed = save("by-hand.bin").await.unwrap();
    assert_eq!(resumed.resumed_from, 1_234_567);
    assert_eq!(std::fs::read(&resumed.path).unwrap(), original);

    let local = tempfile::tempdir().unwrap();
    let sent: Vec<u8> = original.iter().rev().copied().collect();
    std::fs::write(local.path().join("sent.bin"), &sent).unwrap();
    let shared = parley_client::upload::upload(
        &alice,
        &local.path().join("sent.bin"),
        "",
        |_, _, _| {},
        |_| {},
    )
    .await
    .unwrap();
    let back = save("sent.bin").await.unwrap();
    assert_eq!(shared.uploaded.path, "sent.bin");
    assert_eq!(std::fs::read(&back.path).unwrap(), sent);
}
