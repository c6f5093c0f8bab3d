//! SM2 keys on a token without SM2 (SoftHSM2): made by the gateway, kept only sealed under
//! the key's own AES-256 key in the token, signed per GM/T 0003.2 with Z from the
//! distinguishing ID. Signatures are checked by the openssl CLI (`distid`), by the
//! gateway's own verifier, and the private key never shows in the API or the journal.

mod common;

use common::sm2::{b64, openssl_sm2};
use common::token::Token;
use common::{error_code, pkcs11_tool, unhex, Gateway};
use serde_json::json;

#[test]
fn sm2_keys_are_held_wrapped_and_sign_per_gmt_0003() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_dev_in(dir.path());
    let key = g.create_key("sm2-signer", "sm2");
    assert_eq!(key["custody"], "wrapped", "{key}");
    assert!(
        key.get("wrapped").is_none(),
        "the sealed key shows in the API: {key}"
    );
    let id = key["id"].as_str().unwrap().to_string();
    let pem = key["public_key_pem"].as_str().unwrap().to_string();
    let listed = g.get("/v1/keys");
    let entry = listed.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["custody"], "wrapped");
    assert!(entry.get("wrapped").is_none());
    common::sm2::signs_per_gmt_0003(&g, &key);
    let sign = format!("/v1/keys/{id}/sign");
    let message = b"a BSN transaction on a CITA chain".to_vec();
    // Formats and hashes that SM2 has no use for are refused, typed.
    let r = g.post(
        &sign,
        json!({"message_b64": b64(&message), "format": "eth"}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "unsupported_format"));
    let r = g.post(
        &sign,
        json!({"message_b64": b64(&message), "hash": "keccak256"}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "unsupported_hash"));

    // In the token: the key's own AES key, sensitive and never extractable; no private
    // key object. In the journal: the sealed key only.
    let secret = pkcs11_tool(dir.path(), &["--list-objects", "--type", "secrkey"]);
    let object = secret
        .split("Secret Key Object")
        .find(|o| o.contains(&format!("ID:         {id}")))
        .unwrap_or_else(|| panic!("no AES key for {id}: {secret}"));
    assert!(object.contains("AES length 32"), "{object}");
    assert!(
        object.contains("never extractable") && object.contains("sensitive"),
        "{object}"
    );
    let private = pkcs11_tool(dir.path(), &["--list-objects", "--type", "privkey"]);
    assert!(!private.contains(&id));
    let journal = std::fs::read_to_string(dir.path().join("keys.jsonl")).unwrap();
    assert!(journal.contains("\"wrapped\":\"0x"));
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for op in ["\"operation\":\"create\"", "\"operation\":\"sign\""] {
        assert!(
            audit.lines().any(|l| l.contains(op)
                && l.contains(&id)
                && l.contains("\"custody\":\"wrapped\"")),
            "{op} not audited as wrapped"
        );
    }

    // After a restart it still signs; a sealed key edited on disk does not open.
    assert!(g.terminate().success());
    let g = Gateway::start_dev_in(dir.path());
    let r = g.post(&sign, json!({"message_b64": b64(&message)}));
    let der = unhex(r.body["signature"].as_str().unwrap());
    assert!(openssl_sm2(&pem, &message, &der, "1234567812345678"));
    let mut g = g;
    assert!(g.terminate().success());
    let tampered: String = journal
        .lines()
        .map(|l| {
            if l.contains(&id) && l.contains("\"wrapped\":\"0x") {
                let at = l.find("\"wrapped\":\"0x").unwrap() + 40;
                let c = if &l[at..at + 1] == "0" { "1" } else { "0" };
                format!("{}{c}{}\n", &l[..at], &l[at + 1..])
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("keys.jsonl"), tampered).unwrap();
    let g = Gateway::start_dev_in(dir.path());
    let r = g.post(&sign, json!({"message_b64": b64(&message)}));
    assert_eq!(
        (r.status, error_code(&r)),
        (500, "key_object_error"),
        "{}",
        r.body
    );

    // Destroyed: its AES key leaves the token, so every copy of the sealed key is dead.
    let r = g.delete(&format!("/v1/keys/{id}?now=true"));
    assert_eq!(r.status, 200, "{}", r.body);
    let secret = pkcs11_tool(dir.path(), &["--list-objects", "--type", "secrkey"]);
    assert!(!secret.contains(&id), "{secret}");
}

#[test]
fn wrapped_custody_can_be_forbidden_and_needs_aes_gcm_in_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_configured(dir.path(), "", "[keys]\nwrapped_custody = false\n");
    let r = g.post("/v1/keys", json!({"label": "no-wrap", "algorithm": "sm2"}));
    assert_eq!(
        (r.status, error_code(&r)),
        (422, "wrapped_custody_unavailable"),
        "{}",
        r.body
    );
    // A TPM through tpm2-pkcs11 has AES, but no AES-GCM: refused, naming the gap, and
    // nothing is left on the token.
    let tpm = Token::tpm2(&dir.path().join("tpm"));
    let g = tpm.start_gateway(&dir.path().join("tpm-gw"), "");
    let r = g.post("/v1/keys", json!({"label": "tpm-sm2", "algorithm": "sm2"}));
    assert_eq!(
        (r.status, error_code(&r)),
        (422, "wrapped_custody_unavailable"),
        "{}",
        r.body
    );
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("CKM_AES_GCM"));
    let objects = tpm.pkcs11_tool(&["--list-objects"]);
    assert!(!objects.contains("tpm-sm2"), "{objects}");
}
