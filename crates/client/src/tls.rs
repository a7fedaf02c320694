//! How a client trusts a server: a certificate a system root vouches for is accepted as usual;
//! any other (a server's self-signed one) is pinned on first use per host:port in a
//! `known_hosts` file, like SSH host keys, and a different one later is refused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use parley_proto::fingerprint;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// How the connection is secured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP (the server must run with `--no-tls`).
    Plain,
    /// TLS, trusting system roots, else pinning in `known_hosts`.
    Tls {
        /// The file of pinned fingerprints.
        known_hosts: PathBuf,
        /// Replace a pinned fingerprint that no longer matches, deliberately.
        accept_new: bool,
    },
}

impl Default for Security {
    fn default() -> Self {
        Security::Tls {
            known_hosts: default_known_hosts(),
            accept_new: false,
        }
    }
}

/// `$PARLEY_KNOWN_HOSTS`, else `known_hosts` in the user's config folder for Parley.
pub fn default_known_hosts() -> PathBuf {
    if let Some(path) = std::env::var_os("PARLEY_KNOWN_HOSTS") {
        return PathBuf::from(path);
    }
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    config.join("parley").join("known_hosts")
}

/// What the verifier decided, for the connecting code to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// A system root vouched for the certificate.
    Authority,
    /// The pinned fingerprint matched.
    Pinned,
    /// First connection to this address: its fingerprint is now pinned.
    NewlyPinned(String),
    /// The pinned fingerprint was replaced, as asked.
    Replaced(String),
    /// The certificate differs from the pinned one: refused.
    Changed {
        /// What was pinned.
        pinned: String,
        /// What the server presented.
        presented: String,
    },
}

/// A rustls verifier with the rules above; `outcome` keeps its last decision.
#[derive(Debug)]
pub(crate) struct Verifier {
    address: String,
    known_hosts: PathBuf,
    accept_new: bool,
    roots: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    pub(crate) outcome: Mutex<Option<Trust>>,
}

impl Verifier {
    pub(crate) fn new(address: String, known_hosts: PathBuf, accept_new: bool) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut store = RootCertStore::empty();
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        let roots = WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
            .build()
            .ok();
        Self {
            address,
            known_hosts,
            accept_new,
            roots,
            provider,
            outcome: Mutex::new(None),
        }
    }

    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        self.provider.clone()
    }

    fn decide(&self, end_entity: &CertificateDer<'_>) -> io::Result<Trust> {
        let presented = fingerprint::sha256(end_entity);
        let pins = read_pins(&self.known_hosts)?;
        match pins.iter().find(|(address, _)| *address == self.address) {
            Some((_, pinned)) if *pinned == presented => Ok(Trust::Pinned),
            Some((_, pinned)) if !self.accept_new => Ok(Trust::Changed {
                pinned: pinned.clone(),
                presented,
            }),
            Some(_) => {
                write_pins(&self.known_hosts, &self.address, &presented, pins)?;
                Ok(Trust::Replaced(presented))
            }
            None => {
                write_pins(&self.known_hosts, &self.address, &presented, pins)?;
                Ok(Trust::NewlyPinned(presented))
            }
        }
    }
}

/// The pins in `file`: `host:port fingerprint` a line.
fn read_pins(file: &Path) -> io::Result<Vec<(String, String)>> {
    match std::fs::read_to_string(file) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(address, pin)| (address.to_owned(), pin.trim().to_owned()))
            .collect()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(err) => Err(err),
    }
}

/// Rewrites `file` with `address` pinned to `pin` (replacing any earlier pin for it).
fn write_pins(
    file: &Path,
    address: &str,
    pin: &str,
    pins: Vec<(String, String)>,
) -> io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut text: String = pins
        .into_iter()
        .filter(|(other, _)| other != address)
        .map(|(other, pin)| format!("{other} {pin}\n"))
        .collect();
    text.push_str(&format!("{address} {pin}\n"));
    // Written whole, then renamed over the old file, so a crash never leaves half a file.
    let temporary = file.with_extension("new");
    std::fs::write(&temporary, text)?;
    std::fs::rename(&temporary, file)
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let vouched = self.roots.as_ref().is_some_and(|roots| {
            roots
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .is_ok()
        });
        let trust = if vouched {
            Trust::Authority
        } else {
            self.decide(end_entity).map_err(|err| {
                rustls::Error::General(format!("cannot use the known hosts file: {err}"))
            })?
        };
        let refused = matches!(trust, Trust::Changed { .. });
        *self.outcome.lock().unwrap() = Some(trust);
        if refused {
            return Err(rustls::Error::General(
                "the server's certificate changed".into(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
