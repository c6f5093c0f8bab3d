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

/// What every SM2 custody key must do, whoever holds it (wrapped or in the token), each
/// signature checked by the openssl CLI: a message with the default ID (DER), raw r||s
/// under another ID (and not under the default), a digest taken as e, a batch, and the
/// gateway's own verifier agreeing.
pub fn signs_per_gmt_0003(g: &super::Gateway, key: &serde_json::Value) {
    use serde_json::json;
    const DEFAULT_ID: &str = "1234567812345678";
    let id = key["id"].as_str().unwrap();
    let pem = key["public_key_pem"].as_str().unwrap();
    let sign = format!("/v1/keys/{id}/sign");
    let message = b"a BSN transaction on a CITA chain".to_vec();
    let signature = |body: serde_json::Value| {
        let r = g.post(&sign, body);
        assert_eq!(r.status, 200, "{}", r.body);
        super::unhex(r.body["signature"].as_str().unwrap())
    };

    let der = signature(json!({"message_b64": b64(&message)}));
    assert!(openssl_sm2(pem, &message, &der, DEFAULT_ID));
    assert!(!openssl_sm2(pem, b"another message", &der, DEFAULT_ID));
    let raw = signature(
        json!({"message_b64": b64(&message), "format": "raw", "sm2_id": "ALICE123@YAHOO.COM"}),
    );
    assert_eq!(raw.len(), 64);
    assert!(openssl_sm2(
        pem,
        &message,
        &raw_to_der(&raw),
        "ALICE123@YAHOO.COM"
    ));
    assert!(!openssl_sm2(pem, &message, &raw_to_der(&raw), DEFAULT_ID));
    // A digest is the final e: SM3(Z || M) made here signs as the message does.
    let point = super::unhex(key["public_key"].as_str().unwrap());
    let z = bsn_gateway::verify::keys::sm2_z_with_id(DEFAULT_ID.as_bytes(), &point);
    let e = bsn_gateway::verify::keys::sm2_e(&z, &message);
    let by_digest = signature(json!({"digest": format!("0x{}", hex::encode(e))}));
    assert!(openssl_sm2(pem, &message, &by_digest, DEFAULT_ID));
    let items: Vec<_> = (0..3u8)
        .map(|i| json!({"message_b64": b64(&[i; 9])}))
        .collect();
    let r = g.post(
        &format!("/v1/keys/{id}/sign-batch"),
        json!({"items": items}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for (i, s) in r.body["signatures"].as_array().unwrap().iter().enumerate() {
        let der = super::unhex(s.as_str().unwrap());
        assert!(
            openssl_sm2(pem, &[i as u8; 9], &der, DEFAULT_ID),
            "item {i}"
        );
    }
    let r = g.post(
        "/v1/verify",
        json!({"items": [{"algorithm": "sm2", "key_id": id, "message_b64": b64(&message), "signature": format!("0x{}", hex::encode(&der))}]}),
    );
    assert_eq!(r.body["results"][0]["valid"], true, "{}", r.body);
}
