//! TLS for the native protocol (rustls), on by default.
//!
//! Without a certificate of its own the server makes a self-signed one on first start and
//! keeps it in `<data dir>/tls`, so its fingerprint stays the same across restarts and clients
//! can pin it, as SSH clients pin host keys. With `--tls-cert` and `--tls-key` it serves a real
//! certificate instead, which clients verify against their system's roots.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parley_proto::fingerprint;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How the server secures its connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP: everything, passwords included, crosses the network in clear.
    Off,
    /// A self-signed certificate made on first start and kept in the data folder.
    SelfSigned,
    /// A certificate chain and its private key, in PEM files.
    Files {
        /// The certificate chain, leaf first.
        cert: PathBuf,
        /// The private key.
        key: PathBuf,
    },
}

/// An acceptor ready for connections, and the fingerprint of the certificate it presents.
pub(crate) struct Tls {
    pub(crate) acceptor: TlsAcceptor,
    pub(crate) fingerprint: String,
}

/// Sets TLS up as `mode` says; `None` when it is off.
pub(crate) fn setup(mode: &TlsMode, data_dir: &Path) -> io::Result<Option<Tls>> {
    let (cert, key) = match mode {
        TlsMode::Off => return Ok(None),
        TlsMode::SelfSigned => self_signed(&data_dir.join("tls"))?,
        TlsMode::Files { cert, key } => (cert.clone(), key.clone()),
    };
    let failed = |what: &Path, err: &dyn std::fmt::Display| {
        io::Error::other(format!("cannot use {} for TLS: {err}", what.display()))
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| failed(&cert, &err))?;
    let Some(leaf) = chain.first() else {
        return Err(failed(&cert, &"it holds no certificate"));
    };
    let fingerprint = fingerprint::sha256(leaf);
    let private_key = PrivateKeyDer::from_pem_file(&key).map_err(|err| failed(&key, &err))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| failed(&cert, &err))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|err| failed(&cert, &err))?;
    Ok(Some(Tls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
        fingerprint,
    }))
}

/// The self-signed certificate and key files in `dir`, made on first use.
fn self_signed(dir: &Path) -> io::Result<(PathBuf, PathBuf)> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir)?;
    let names = vec!["localhost".to_owned(), "parley".to_owned()];
    let made = rcgen::generate_simple_self_signed(names).map_err(io::Error::other)?;
    // The key is written readable by the server's user only.
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    use std::io::Write;
    options
        .open(&key)?
        .write_all(made.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, made.cert.pem())?;
    Ok((cert, key))
}
