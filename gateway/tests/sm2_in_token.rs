//! SM2 keys in a token that has SM2 through vendor mechanisms (the cn-generic-sm2
//! profile). No PKCS#11 module with SM2 installs here, so the token is the tests' MOCK
//! module (`tests/sm2-token/sm2_token.c`, OpenSSL inside); the gateway's side of it is the
//! one real devices get. Signatures are checked by the openssl CLI, the token's objects
//! through PKCS#11 (cryptoki) in this process: one test per binary, as the module reads
//! its directory from this process's environment.

mod common;

use common::sm2::{b64, openssl_sm2};
use common::token::Token;
use common::{probe_check, unhex};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::json;
/// `hsm probe --json` with a config file, in the token's environment.
fn probe(token: &Token, config: &std::path::Path) -> serde_json::Value {
    let (_, out) = token.cli(&[
        "hsm",
        "probe",
        "--json",
        "--config",
        config.to_str().unwrap(),
    ]);
    let json = &out[out.find('{').unwrap_or_else(|| panic!("no JSON: {out}"))..];
    let end = json.rfind('}').unwrap() + 1;
    serde_json::from_str(&json[..end]).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// A token whose vendor mechanisms do SM2 (the cn-generic-sm2 profile; a mock module, as
/// no PKCS#11 module with SM2 installs here): the key is generated and used in the token,
/// never seen by the gateway, and signs per GM/T 0003.2 with Z and e made by the gateway.
#[test]
fn sm2_keys_are_made_and_used_in_a_token_with_vendor_sm2() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::sm2_mock(&dir.path().join("token"));
    let data = dir.path().join("gw");
    let mut g = token.start_gateway(&data, "");
    let key = g.create_key("in-token-sm2", "sm2");
    assert_eq!(key["custody"], "hsm", "{key}");
    assert!(key.get("wrapped").is_none(), "{key}");
    let id = key["id"].as_str().unwrap().to_string();
    let pem = key["public_key_pem"].as_str().unwrap().to_string();
    common::sm2::signs_per_gmt_0003(&g, &key);
    let sign = format!("/v1/keys/{id}/sign");
    let message = b"a XuperChain transaction".to_vec();

    // The private key is a token object: sensitive, never extractable, its value not
    // readable; nothing of it is in the journal, and the audit says "hsm".
    let private = token.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let object = private
        .split("Private Key Object")
        .find(|o| o.contains(&format!("ID:         {id}")))
        .unwrap_or_else(|| panic!("no private key {id} in the token: {private}"));
    assert!(
        object.contains("never extractable") && object.contains("sensitive"),
        "{object}"
    );
    token_refuses_the_value(&token, &id);
    let journal = std::fs::read_to_string(data.join("keys.jsonl")).unwrap();
    assert!(journal.contains(&id) && !journal.contains("\"wrapped\""));
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    for op in ["\"operation\":\"create\"", "\"operation\":\"sign\""] {
        assert!(
            audit
                .lines()
                .any(|l| l.contains(op) && l.contains(&id) && l.contains("\"custody\":\"hsm\"")),
            "{op} not audited with custody hsm"
        );
    }

    // The probe names the vendor mechanisms by their role and signs with them.
    assert!(g.terminate().success());
    let report = probe(&token, &data.join("gateway.toml"));
    let mechs = probe_check(&report, "sm2 mechanisms");
    assert_eq!(mechs["ok"], true, "{report:#}");
    assert!(
        mechs["detail"]
            .as_str()
            .unwrap()
            .contains("CKM_VENDOR_DEFINED+0x8001 (SM2 key-pair generation)"),
        "{mechs}"
    );
    let signed = probe_check(&report, "sm2 sign");
    assert_eq!(signed["ok"], true, "{report:#}");
    assert!(signed["detail"].as_str().unwrap().contains("SM2 verifier"));
    assert_eq!(
        probe_check(&report, "ecdsa-p256 sign")["ok"],
        true,
        "{report:#}"
    );

    // A restart finds the key in the token and signs with it.
    let g = token.start_gateway(&data, "");
    let r = g.post(&sign, json!({"message_b64": b64(&message)}));
    assert_eq!(r.status, 200, "{}", r.body);
    let der = unhex(r.body["signature"].as_str().unwrap());
    assert!(openssl_sm2(&pem, &message, &der, "1234567812345678"));
    let listed = g.get("/v1/keys");
    let entry = listed.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(entry["custody"], "hsm");

    // A CA's SM2 key is a custody key like any other: in the token. A second-level CA
    // signed by the root verifies with openssl (GM/T 0015: the default ID).
    let mut pems = Vec::new();
    for (name, parent) in [("gm-root", None), ("gm-city", Some("gm-root"))] {
        let r = g.post(
            "/v1/cas",
            json!({"name": name, "algorithm": "sm2", "subject": format!("CN={name},O=BSN,C=CN"), "parent": parent, "validity_days": 365}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        let key = g.get(&format!("/v1/keys/{}", r.body["key_id"].as_str().unwrap()));
        assert_eq!(key.body["custody"], "hsm", "{name}: {}", key.body);
        let pem = dir.path().join(format!("{name}.pem"));
        std::fs::write(&pem, r.body["certificate_pem"].as_str().unwrap()).unwrap();
        pems.push(pem);
    }
    let out = std::process::Command::new("openssl")
        .args(["verify", "-vfyopt", "distid:1234567812345678", "-CAfile"])
        .arg(&pems[0])
        .arg(&pems[1])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Read through PKCS#11: one private key with the key's CKA_ID, flagged sensitive and not
/// extractable, and its CKA_VALUE refused.
fn token_refuses_the_value(token: &Token, id: &str) {
    for (k, v) in &token.env {
        std::env::set_var(k, v);
    }
    let p = Pkcs11::new(&token.module).unwrap();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = p.get_slots_with_token().unwrap()[0];
    let session = p.open_ro_session(slot).unwrap();
    session
        .login(UserType::User, Some(&AuthPin::from(token.pin.clone())))
        .unwrap();
    let found = session
        .find_objects(&[
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Id(hex::decode(id).unwrap()),
        ])
        .unwrap();
    assert_eq!(found.len(), 1, "one private key with id {id}");
    let attrs = session
        .get_attributes(
            found[0],
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
            ],
        )
        .unwrap();
    for a in &attrs {
        match a {
            Attribute::Sensitive(v) | Attribute::Token(v) => assert!(*v, "{a:?}"),
            Attribute::Extractable(v) => assert!(!*v, "{a:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(attrs.len(), 3, "{attrs:?}");
    // cryptoki leaves out what the token refuses; the raw call names the refusal.
    let value = session.get_attributes(found[0], &[AttributeType::Value]);
    assert!(
        matches!(value, Ok(ref v) if v.is_empty())
            || matches!(value, Err(CkError::Pkcs11(RvError::AttributeSensitive, _))),
        "the token gave out the private key: {value:?}"
    );
    let _ = session.logout();
}
