//! Wycheproof verification vectors from tests/data/wycheproof (copied into the repository
//! with their LICENSE), flattened into cases the engine and the HTTP API both take.

use std::path::PathBuf;

use serde_json::Value;

pub struct Case {
    pub file: &'static str,
    pub id: u64,
    pub algorithm: &'static str,
    /// SEC1 uncompressed point or raw Ed25519 key, hex.
    pub key_hex: String,
    pub key_pem: String,
    pub msg: Vec<u8>,
    pub sig: Vec<u8>,
    pub format: &'static str,
    pub require_low_s: bool,
    pub valid: bool,
}

/// (file, algorithm, signature format, require_low_s): the "bitcoin" set demands low-S,
/// the plain secp256k1 sets treat high-S as valid.
pub const SETS: &[(&str, &str, &str, bool)] = &[
    (
        "ecdsa_secp256r1_sha256_test.json",
        "ecdsa-p256",
        "der",
        false,
    ),
    (
        "ecdsa_secp256r1_sha256_p1363_test.json",
        "ecdsa-p256",
        "raw",
        false,
    ),
    (
        "ecdsa_secp256k1_sha256_test.json",
        "ecdsa-secp256k1",
        "der",
        false,
    ),
    (
        "ecdsa_secp256k1_sha256_p1363_test.json",
        "ecdsa-secp256k1",
        "raw",
        false,
    ),
    (
        "ecdsa_secp256k1_sha256_bitcoin_test.json",
        "ecdsa-secp256k1",
        "der",
        true,
    ),
    ("ed25519_test.json", "ed25519", "raw", false),
];

pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/wycheproof")
}

pub fn load(
    file: &'static str,
    algorithm: &'static str,
    format: &'static str,
    low_s: bool,
) -> Vec<Case> {
    let path = dir().join(file);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("Wycheproof vectors at {}: {e}", path.display()));
    let doc: Value = serde_json::from_str(&text).unwrap();
    let mut cases = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        let pk = &group["publicKey"];
        let key_hex = pk["uncompressed"]
            .as_str()
            .or_else(|| pk["pk"].as_str())
            .expect("a public key")
            .to_string();
        let key_pem = group["publicKeyPem"].as_str().unwrap().to_string();
        for t in group["tests"].as_array().unwrap() {
            let result = t["result"].as_str().unwrap();
            cases.push(Case {
                file,
                id: t["tcId"].as_u64().unwrap(),
                algorithm,
                key_hex: key_hex.clone(),
                key_pem: key_pem.clone(),
                msg: hex::decode(t["msg"].as_str().unwrap()).unwrap(),
                sig: hex::decode(t["sig"].as_str().unwrap()).unwrap(),
                format,
                require_low_s: low_s,
                // Policy: "acceptable" (legacy encodings some libraries take) is refused.
                valid: result == "valid",
            });
        }
    }
    assert!(cases.len() > 100, "{file}: only {} cases", cases.len());
    cases
}

pub fn all() -> Vec<Case> {
    SETS.iter()
        .flat_map(|(f, a, fmt, low)| load(f, a, fmt, *low))
        .collect()
}
