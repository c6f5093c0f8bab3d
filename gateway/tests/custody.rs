//! Key custody through the real binary and a real SoftHSM2 token; every signature is
//! checked by an independent implementation (the openssl CLI, ethers.js).

mod common;

use base64::Engine;
use common::*;
use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use serde_json::json;

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn raw_to_der(raw: &[u8]) -> Vec<u8> {
    EcdsaSig::from_private_components(
        BigNum::from_slice(&raw[..32]).unwrap(),
        BigNum::from_slice(&raw[32..]).unwrap(),
    )
    .unwrap()
    .to_der()
    .unwrap()
}

fn flip_bit(mut sig: Vec<u8>, byte: usize) -> Vec<u8> {
    sig[byte] ^= 0x01;
    sig
}

#[test]
fn each_algorithm_signs_and_openssl_verifies() {
    let g = Gateway::start_dev();
    let digest = openssl::sha::sha256(b"digest input");
    let message = b"a transaction payload".to_vec();
    for alg in ["ecdsa-p256", "ecdsa-secp256k1"] {
        let key = g.create_key(&format!("sign-{alg}"), alg);
        let pem = key["public_key_pem"].as_str().unwrap();
        let path = format!("/v1/keys/{}/sign", key["id"].as_str().unwrap());

        let r = g.post(
            &path,
            json!({"digest": format!("0x{}", hex::encode(digest))}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["format"], "der");
        let sig = unhex(r.body["signature"].as_str().unwrap());
        assert!(
            openssl_verify(pem, Signed::Digest(&digest), &sig),
            "{alg} der digest"
        );
        let tampered = flip_bit(sig.clone(), sig.len() - 1);
        assert!(!openssl_verify(pem, Signed::Digest(&digest), &tampered));

        let r = g.post(
            &path,
            json!({"message_b64": b64(&message), "format": "raw"}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let raw = unhex(r.body["signature"].as_str().unwrap());
        assert_eq!(raw.len(), 64);
        assert!(
            openssl_verify(pem, Signed::Sha256Message(&message), &raw_to_der(&raw)),
            "{alg} raw message"
        );
        assert!(!openssl_verify(
            pem,
            Signed::Sha256Message(b"another payload"),
            &raw_to_der(&raw)
        ));
    }

    let key = g.create_key("sign-ed25519", "ed25519");
    let pem = key["public_key_pem"].as_str().unwrap();
    let path = format!("/v1/keys/{}/sign", key["id"].as_str().unwrap());
    let r = g.post(&path, json!({"message_b64": b64(&message)}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["format"], "raw");
    let sig = unhex(r.body["signature"].as_str().unwrap());
    assert_eq!(sig.len(), 64);
    assert!(openssl_verify(pem, Signed::Ed25519Message(&message), &sig));
    assert!(!openssl_verify(
        pem,
        Signed::Ed25519Message(&message),
        &flip_bit(sig, 0)
    ));
}

#[test]
fn secp256k1_is_always_low_s_and_eth_signatures_recover_the_key_address() {
    let g = Gateway::start_dev();
    let key = g.create_key("eth-signer", "ecdsa-secp256k1");
    let address = key["address"].as_str().unwrap().to_string();
    let id = key["id"].as_str().unwrap();
    // Enough signatures that about half came out of the token high-S and both v appear.
    let digests: Vec<String> = (0..40u32)
        .map(|i| format!("0x{}", hex::encode(openssl::sha::sha256(&i.to_be_bytes()))))
        .collect();
    let items: Vec<_> = digests.iter().map(|d| json!({"digest": d})).collect();
    let r = g.post(
        &format!("/v1/keys/{id}/sign-batch"),
        json!({"items": items, "format": "eth"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let sigs = r.body["signatures"].as_array().unwrap();
    assert_eq!(sigs.len(), digests.len());

    // ethers.js rejects high-S signatures in Signature.from, and recovers the signer.
    let script = format!(
        "const {{ethers}} = require('ethers');
         const d = {digests}; const s = {sigs};
         const out = d.map((h, i) => {{
           const sig = ethers.Signature.from(s[i]);
           return [ethers.recoverAddress(h, sig), sig.v];
         }});
         console.log(JSON.stringify(out));",
        digests = serde_json::to_string(&digests).unwrap(),
        sigs = serde_json::to_string(sigs).unwrap(),
    );
    let out: Vec<(String, u8)> = serde_json::from_str(&node(&script)).unwrap();
    for (recovered, _) in &out {
        assert_eq!(recovered, &address);
    }
    assert!(out.iter().any(|(_, v)| *v == 27) && out.iter().any(|(_, v)| *v == 28));

    // DER output of secp256k1 is low-S too: s <= n/2.
    let half_n =
        BigNum::from_hex_str("7FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF5D576E7357A4501DDFE92F46681B20A0")
            .unwrap();
    for d in &digests[..10] {
        let r = g.post(&format!("/v1/keys/{id}/sign"), json!({"digest": d}));
        let sig = EcdsaSig::from_der(&unhex(r.body["signature"].as_str().unwrap())).unwrap();
        assert!(sig.s() <= &half_n);
    }
}

#[test]
fn keys_survive_restart_disable_stops_signing_deletion_is_scheduled_and_destroy_removes_token_objects(
) {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_dev_in(tmp.path());
    let keep = g.create_key("keeper", "ed25519");
    let doomed = g.create_key("doomed", "ecdsa-p256");
    let token = g.token.clone();
    assert!(g.terminate().success(), "{}", g.log());

    let g = Gateway::start_dev_in(tmp.path());
    assert_eq!(g.token, token, "the admin token is reused");
    let list = g.get("/v1/keys").body;
    let labels: Vec<_> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels.len(), 2);
    assert!(labels.contains(&"keeper") && labels.contains(&"doomed"));
    let keep_id = keep["id"].as_str().unwrap();
    let r = g.post(
        &format!("/v1/keys/{keep_id}/sign"),
        json!({"message_b64": "aGVsbG8="}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(openssl_verify(
        keep["public_key_pem"].as_str().unwrap(),
        Signed::Ed25519Message(b"hello"),
        &unhex(r.body["signature"].as_str().unwrap())
    ));

    let r = g.post(&format!("/v1/keys/{keep_id}/disable"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "disabled");
    let r = g.post(
        &format!("/v1/keys/{keep_id}/sign"),
        json!({"message_b64": "aGVsbG8="}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "key_disabled"));

    let before = pkcs11_tool(tmp.path(), &["--list-objects"]);
    assert!(before.contains("doomed"), "{before}");
    let doomed_id = doomed["id"].as_str().unwrap();
    // DELETE schedules destruction (the key is disabled at once); it can be cancelled.
    let r = g.delete(&format!("/v1/keys/{doomed_id}"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["state"], "pending_deletion");
    assert!(r.body["destroy_after"].is_string(), "{}", r.body);
    assert!(pkcs11_tool(tmp.path(), &["--list-objects"]).contains("doomed"));
    let r = g.post(
        &format!("/v1/keys/{doomed_id}/sign"),
        json!({"digest": format!("0x{}", "00".repeat(32))}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "key_pending_deletion"));
    let r = g.post(&format!("/v1/keys/{doomed_id}/cancel-deletion"), json!({}));
    assert_eq!(
        (r.status, &r.body["state"]),
        (200, &json!("disabled")),
        "{}",
        r.body
    );
    let r = g.post(&format!("/v1/keys/{doomed_id}/cancel-deletion"), json!({}));
    assert_eq!(
        (r.status, error_code(&r)),
        (409, "key_not_pending_deletion")
    );
    // An admin destroys at once.
    let r = g.delete(&format!("/v1/keys/{doomed_id}?now=true"));
    assert_eq!(
        (r.status, &r.body["state"]),
        (200, &json!("destroyed")),
        "{}",
        r.body
    );
    let after = pkcs11_tool(tmp.path(), &["--list-objects"]);
    assert!(!after.contains("doomed"), "{after}");
    assert!(after.contains("keeper"), "{after}");
    assert_eq!(g.get(&format!("/v1/keys/{doomed_id}")).status, 404);
    let r = g.post(
        &format!("/v1/keys/{doomed_id}/sign"),
        json!({"digest": format!("0x{}", "00".repeat(32))}),
    );
    assert_eq!((r.status, error_code(&r)), (404, "key_not_found"));
}

#[test]
fn imported_public_keys_are_verify_only() {
    let g = Gateway::start_dev();
    let key = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let pem = String::from_utf8(key.public_key_to_pem().unwrap()).unwrap();
    let r = g.post(
        "/v1/keys/import",
        json!({"label": "uploaded", "algorithm": "ecdsa-p256", "public_key_pem": pem}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["custody"], "external");
    let id = r.body["id"].as_str().unwrap();
    let r = g.post(
        &format!("/v1/keys/{id}/sign"),
        json!({"digest": format!("0x{}", "11".repeat(32))}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "key_verify_only"));
    let r = g.post(
        "/v1/keys/import",
        json!({"label": "uploaded", "algorithm": "ecdsa-p256", "public_key_pem": pem}),
    );
    assert_eq!((r.status, error_code(&r)), (409, "duplicate_label"));
    let r = g.post(
        "/v1/keys/import",
        json!({"label": "other", "algorithm": "ed25519", "public_key_pem": pem}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "bad_public_key"));
    // Nothing was put in the token for it.
    assert!(!pkcs11_tool(&g.dir, &["--list-objects"]).contains("uploaded"));
}

/// The embedded token is made once. A start that finds a token in the token directory
/// but not in the module's list (SoftHSM2 leaves out a token whose file it cannot read,
/// as while another process writes it) makes no second token, which would hide the
/// first one's keys and fail every later start: it loads the module again and serves
/// once the file reads, and stops with the reason if it never does.
#[test]
fn an_unreadable_embedded_token_is_waited_for_and_never_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_dev_in(tmp.path());
    let key = g.create_key("kept", "ecdsa-p256");
    assert!(g.terminate().success(), "{}", g.log());
    let tokens = tmp.path().join("tokens");
    let token_dirs = || std::fs::read_dir(&tokens).unwrap().count();
    assert_eq!(token_dirs(), 1);
    let token_dir = std::fs::read_dir(&tokens).unwrap().next().unwrap().unwrap();
    let file = token_dir.path().join("token.object");
    let whole = std::fs::read(&file).unwrap();

    // Unreadable for good: the start fails and says why; still one token.
    std::fs::write(&file, b"").unwrap();
    let err_file = tmp.path().join("refused.log");
    let mut child = std::process::Command::new(BIN)
        .args(["serve", "--dev", "--data-dir"])
        .arg(tmp.path())
        .args(["--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0"])
        .env("BSN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    // Bounded: a gateway that made a second token would serve on it and never exit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_file).unwrap();
    assert!(
        status.is_some_and(|s| !s.success()),
        "it started ({status:?}): {stderr}"
    );
    assert!(stderr.contains("attempt 4 of 5"), "{stderr}");
    assert!(stderr.contains("no second token is made"), "{stderr}");
    assert_eq!(token_dirs(), 1, "a second token was made: {stderr}");

    // Unreadable as it starts, whole again once it has looked: the same token, its key.
    let log = tmp.path().join("gateway.log");
    let _ = std::fs::remove_file(&log);
    let mend = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("loading the module again")
        {
            assert!(std::time::Instant::now() < deadline, "no retry was logged");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(&file, whole).unwrap();
    });
    let g = Gateway::start_dev_in(tmp.path());
    mend.join().unwrap();
    assert_eq!(token_dirs(), 1);
    let id = key["id"].as_str().unwrap();
    let r = g.post(
        &format!("/v1/keys/{id}/sign"),
        json!({"message_b64": b64(b"after the wait")}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}
