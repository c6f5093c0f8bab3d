//! Small encoders shared by several modules: `0x` hex, base64, SHA-256, time stamps, ids.

use base64::Engine;

/// Lowercase hex with a `0x` prefix, as the API writes every binary value.
pub fn hex0x(bytes: &[u8]) -> String {
    hex_after("0x", bytes)
}

/// Lowercase hex, no prefix (audit hashes and subjects).
pub fn hex(bytes: &[u8]) -> String {
    hex_after("", bytes)
}

/// RustCrypto's `base16ct` (already in the tree): `hex::encode` builds the string a char
/// at a time, and a signature request spent about a microsecond in it.
fn hex_after(prefix: &str, bytes: &[u8]) -> String {
    let mut out = vec![0u8; prefix.len() + 2 * bytes.len()];
    out[..prefix.len()].copy_from_slice(prefix.as_bytes());
    base16ct::lower::encode(bytes, &mut out[prefix.len()..])
        .expect("the buffer holds two digits per byte");
    String::from_utf8(out).expect("hex digits are ASCII")
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

/// A request id for a request that brought none: 16 hex digits, unique within the
/// process. A counter keyed by a random seed drawn once and put through a bijection
/// (SplitMix64's finaliser), so ids do not repeat within a run and are not guessable
/// from one another, without a CSPRNG call per request (1.5 µs of the 70 a P-256
/// signature request cost the pinned gateway).
pub fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let seed =
        *SEED.get_or_init(|| u64::from_le_bytes(random_bytes(8).try_into().expect("8 bytes")));
    let mut z = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    format!("{:016x}", z ^ (z >> 31))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_sixteen_hex_digits_and_never_repeat() {
        let ids: Vec<String> = (0..100_000).map(|_| request_id()).collect();
        assert!(ids
            .iter()
            .all(|id| id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())));
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        // Consecutive ids share no obvious pattern: about half their bits differ.
        let differing = ids
            .windows(2)
            .map(|w| {
                let (a, b) = (
                    u64::from_str_radix(&w[0], 16).unwrap(),
                    u64::from_str_radix(&w[1], 16).unwrap(),
                );
                (a ^ b).count_ones()
            })
            .sum::<u32>() as f64
            / (ids.len() - 1) as f64;
        assert!((24.0..40.0).contains(&differing), "{differing}");
    }

    #[test]
    fn hex_needs_prefix_and_round_trips() {
        assert_eq!(unhex0x("0xAbCd").unwrap(), vec![0xab, 0xcd]);
        assert_eq!(unhex0x("abcd"), Err(DecodeError::MissingPrefix));
        assert!(matches!(unhex0x("0xzz"), Err(DecodeError::Hex(_))));
        assert_eq!(hex0x(&[1, 255]), "0x01ff");
        assert_eq!(hex0x(&[]), "0x");
        let every: Vec<u8> = (0..=255).collect();
        assert_eq!(hex0x(&every), format!("0x{}", hex::encode(&every)));
        assert_eq!(hex(&every), hex::encode(&every));
        assert_eq!(unhex0x(&hex0x(&every)).unwrap(), every);
    }

    #[test]
    fn keccak_of_empty_matches_the_known_value() {
        assert_eq!(
            hex::encode(keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }
}
