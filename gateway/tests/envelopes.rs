//! Framework-neutral envelopes to a generic HTTP ledger (a small node.js server from
//! test-tools/): signers are custody keys or certificates that must chain to the ledger's
//! trust anchors, built and signed here with OpenSSL.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ledger::ScriptNode;
use common::{error_code, Gateway};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::BasicConstraints;
use openssl::x509::{X509Name, X509};
use serde_json::{json, Value};

fn p256() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A certificate for `key`, issued by `issuer` (self-signed when None), valid in
/// [now + from_days, now + to_days].
fn cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    ca: bool,
    from_days: i64,
    to_days: i64,
) -> X509 {
    let mut name = X509Name::builder().unwrap();
    name.append_entry_by_nid(Nid::COMMONNAME, cn).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let serial = BigNum::from_u32(rand_u32())
        .unwrap()
        .to_asn1_integer()
        .unwrap();
    b.set_serial_number(&serial).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.map_or(&name, |(c, _)| c.subject_name()))
        .unwrap();
    b.set_pubkey(key).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    b.set_not_before(&Asn1Time::from_unix(now + from_days * 86_400).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::from_unix(now + to_days * 86_400).unwrap())
        .unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
    }
    b.sign(issuer.map_or(key, |(_, k)| k), MessageDigest::sha256())
        .unwrap();
    b.build()
}

fn rand_u32() -> u32 {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b).unwrap();
    u32::from_le_bytes(b) >> 1
}

fn sign(key: &PKey<Private>, payload: &[u8]) -> String {
    let mut s = openssl::sign::Signer::new(MessageDigest::sha256(), key).unwrap();
    s.update(payload).unwrap();
    format!("0x{}", hex::encode(s.sign_to_vec().unwrap()))
}

fn pem(c: &X509) -> String {
    String::from_utf8(c.to_pem().unwrap()).unwrap()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn envelopes_signed_by_custody_keys_or_trusted_certificates_reach_the_http_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let node = ScriptNode::start("http-ledger.js", dir.path());

    // Root -> intermediate -> leaf; plus an expired leaf and a stranger's self-signed one.
    let (root_key, inter_key, leaf_key) = (p256(), p256(), p256());
    let root = cert("test root", &root_key, None, true, -1, 365);
    let inter = cert(
        "test intermediate",
        &inter_key,
        Some((&root, &root_key)),
        true,
        -1,
        365,
    );
    let leaf = cert(
        "dapp signer",
        &leaf_key,
        Some((&inter, &inter_key)),
        false,
        -1,
        30,
    );
    let old_key = p256();
    let expired = cert(
        "old signer",
        &old_key,
        Some((&inter, &inter_key)),
        false,
        -30,
        -1,
    );
    let stranger_key = p256();
    let stranger = cert("stranger", &stranger_key, None, false, -1, 30);
    std::fs::write(dir.path().join("roots.pem"), pem(&root)).unwrap();
    std::fs::write(dir.path().join("inter.pem"), pem(&inter)).unwrap();

    // The token comes from a dev start; the ledger and its anchors from a config file.
    let data = dir.path().join("data");
    Gateway::start_dev_in(&data).terminate();
    let tail = format!(
        "[[ledgers]]\nname = \"fab\"\nkind = \"http\"\nnodes = [\"http://127.0.0.1:{}\"]\ntrust_roots_file = \"{}\"\ntrust_intermediates_file = \"{}\"\n",
        node.port,
        dir.path().join("roots.pem").display(),
        dir.path().join("inter.pem").display()
    );
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, common::dev_token_config(&data, "", "", &tail)).unwrap();
    let g = Gateway::start_config(&cfg, &data);
    let deadline = Instant::now() + Duration::from_secs(20);
    while g.get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "{}", g.get("/readyz").body);
        std::thread::sleep(Duration::from_millis(100));
    }

    let key = g.create_key("fab-signer", "ecdsa-p256");
    let key_id = key["id"].as_str().unwrap();
    let by_key = b"payload signed in the HSM".to_vec();
    let r = g.post(
        &format!("/v1/keys/{key_id}/sign"),
        json!({"message_b64": b64(&by_key)}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let hsm_sig = r.body["signature"].as_str().unwrap().to_string();

    let by_cert = b"payload signed by a certificate holder".to_vec();
    let by_chain = b"leaf and intermediate both in the PEM".to_vec();
    let envelope = |payload: &[u8], signer: Value, sig: &str| {
        let mut e =
            json!({"algorithm": "ecdsa-p256", "payload_b64": b64(payload), "signature": sig});
        e.as_object_mut()
            .unwrap()
            .extend(signer.as_object().unwrap().clone());
        json!({"envelope": e})
    };
    let good = vec![
        envelope(&by_key, json!({"key_id": key_id}), &hsm_sig),
        envelope(
            &by_cert,
            json!({"certificate_pem": pem(&leaf)}),
            &sign(&leaf_key, &by_cert),
        ),
        envelope(
            &by_chain,
            json!({"certificate_pem": format!("{}{}", pem(&leaf), pem(&inter))}),
            &sign(&leaf_key, &by_chain),
        ),
    ];
    let bad = vec![
        (
            envelope(
                b"x",
                json!({"certificate_pem": pem(&expired)}),
                &sign(&old_key, b"x"),
            ),
            "untrusted_certificate",
        ),
        (
            envelope(
                b"y",
                json!({"certificate_pem": pem(&stranger)}),
                &sign(&stranger_key, b"y"),
            ),
            "untrusted_certificate",
        ),
        (
            envelope(
                b"z",
                json!({"certificate_pem": "not a pem"}),
                &sign(&leaf_key, b"z"),
            ),
            "bad_certificate",
        ),
        (
            envelope(
                b"altered",
                json!({"certificate_pem": pem(&leaf)}),
                &sign(&leaf_key, b"original"),
            ),
            "bad_signature",
        ),
        (
            envelope(b"w", json!({"key_id": "no-such-key"}), &hsm_sig),
            "unknown_key",
        ),
        (
            envelope(
                b"v",
                json!({"key_id": key_id, "certificate_pem": pem(&leaf)}),
                &hsm_sig,
            ),
            "invalid_item",
        ),
        (json!({"raw": "0x02c0"}), "wrong_ledger_kind"),
    ];
    let mut txs = good.clone();
    txs.extend(bad.iter().map(|(t, _)| t.clone()));
    let r = g.post(
        "/v1/transactions",
        json!({"ledger": "fab", "transactions": txs}),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let results = r.body["results"].as_array().unwrap();
    let mut ids = Vec::new();
    for (res, payload) in results.iter().zip([&by_key, &by_cert, &by_chain]) {
        assert_eq!(res["status"], "accepted", "{res}");
        let want = format!("0x{}", hex::encode(openssl::sha::sha256(payload)));
        assert_eq!(res["id"], want.as_str(), "the id is SHA-256 of the payload");
        ids.push(want);
    }
    for (res, (_, code)) in results[3..].iter().zip(&bad) {
        assert_eq!(res["reason"]["code"], *code, "{res}");
    }

    // The ledger receives exactly the accepted envelopes, as sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.received().len() < 3 {
        assert!(Instant::now() < deadline, "got {:?}", node.received());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = node.received();
    assert_eq!(got.len(), 3, "{got:?}");
    let mut got_ids: Vec<String> = got
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    got_ids.sort();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(got_ids, want);
    let first = got.iter().find(|t| t["id"] == ids[0].as_str()).unwrap();
    assert_eq!(first["envelope"]["key_id"], key_id);
    assert_eq!(first["envelope"]["signature"], hsm_sig.as_str());
    for id in &ids {
        let s = g.get(&format!("/v1/transactions/{id}")).body;
        assert_eq!(s["status"], "forwarded", "{s}");
        assert!(
            s["node_response"].as_str().unwrap().contains("accepted"),
            "{s}"
        );
    }

    // The same payload again is a replay, even under a new signature.
    let again = envelope(
        &by_cert,
        json!({"certificate_pem": pem(&leaf)}),
        &sign(&leaf_key, &by_cert),
    );
    let r = g.post(
        "/v1/transactions",
        json!({"ledger": "fab", "transactions": [again]}),
    );
    assert_eq!((r.status, error_code(&r)), (409, "replayed"), "{}", r.body);
}
