//! SM2 signatures checked by an independent implementation: the openssl CLI.

use std::process::Command;

pub fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// `openssl pkeyutl -verify` of an SM2 signature (DER) over `message` with `distid`.
pub fn openssl_sm2(pem: &str, message: &[u8], der: &[u8], distid: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (p, m, s) = (
        dir.path().join("p"),
        dir.path().join("m"),
        dir.path().join("s"),
    );
    std::fs::write(&p, pem).unwrap();
    std::fs::write(&m, message).unwrap();
    std::fs::write(&s, der).unwrap();
    let out = Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-rawin", "-digest", "sm3"])
        .arg("-inkey")
        .arg(&p)
        .arg("-in")
        .arg(&m)
        .arg("-sigfile")
        .arg(&s)
        .args(["-pkeyopt", &format!("distid:{distid}")])
        .output()
        .unwrap();
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified")
}

pub fn raw_to_der(raw: &[u8]) -> Vec<u8> {
    let r = openssl::bn::BigNum::from_slice(&raw[..32]).unwrap();
    let s = openssl::bn::BigNum::from_slice(&raw[32..]).unwrap();
    openssl::ecdsa::EcdsaSig::from_private_components(r, s)
        .unwrap()
        .to_der()
        .unwrap()
}
