//! Certificate fingerprints as people compare them: the SHA-256 of the certificate's DER bytes
//! as upper-case hexadecimal pairs joined by colons, as OpenSSL prints them.

use sha2::{Digest, Sha256};

/// The SHA-256 fingerprint of a DER-encoded certificate.
pub fn sha256(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_like_openssl() {
        let fp = super::sha256(b"");
        assert!(fp.starts_with("E3:B0:C4:42:98:FC:1C:14"));
        assert_eq!(fp.len(), 32 * 3 - 1);
    }
}
