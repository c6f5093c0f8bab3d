//! Envelopes trust what the CA says: node certificates from the gateway's own CAs (P-256
//! and SM2) sign envelopes the ledger path accepts; a certificate the CA revoked is refused
//! from that moment; so is one listed in a configured CRL (another gateway's CA, standing
//! in for an outside one), a CA certificate, and a TLS server certificate. Keys, CSRs and
//! signatures come from the openssl CLI.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::ledger::ScriptNode;
use common::pki::{csr, openssl, write};
use common::Gateway;
use serde_json::{json, Value};

fn b64(b: &[u8]) -> String {
    common::sm2::b64(b)
}

fn create_ca(g: &Gateway, name: &str, algorithm: &str) -> String {
    let r = g.post(
        "/v1/cas",
        json!({"name": name, "algorithm": algorithm, "subject": format!("CN={name},O=BSN,C=CN"), "validity_days": 365}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["certificate_pem"].as_str().unwrap().to_string()
}

/// A certificate for a fresh openssl key: (certificate PEM, serial).
fn issue(
    g: &Gateway,
    dir: &Path,
    ca: &str,
    name: &str,
    sm2: bool,
    profile: &str,
) -> (String, String) {
    let r = g.post(
        &format!("/v1/cas/{ca}/certificates"),
        json!({"csr_pem": csr(dir, name, sm2), "profile": profile, "validity_days": 30}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    (
        r.body["certificate_pem"].as_str().unwrap().to_string(),
        r.body["serial"].as_str().unwrap().to_string(),
    )
}

/// The envelope signed by `name`'s key (made by `csr`), by the openssl CLI.
fn envelope(dir: &Path, name: &str, sm2: bool, certificate_pem: &str, payload: &[u8]) -> Value {
    let key = dir.join(format!("{name}.key"));
    let input = write(dir, &format!("{name}.payload"), "");
    std::fs::write(&input, payload).unwrap();
    let sig = dir.join(format!("{name}.sig"));
    let (ok, out) = if sm2 {
        openssl(&[
            "pkeyutl",
            "-sign",
            "-inkey",
            key.to_str().unwrap(),
            "-rawin",
            "-in",
            &input,
            "-digest",
            "sm3",
            "-pkeyopt",
            "distid:1234567812345678",
            "-out",
            sig.to_str().unwrap(),
        ])
    } else {
        openssl(&[
            "dgst",
            "-sha256",
            "-sign",
            key.to_str().unwrap(),
            "-out",
            sig.to_str().unwrap(),
            &input,
        ])
    };
    assert!(ok, "{out}");
    json!({"envelope": {
        "algorithm": if sm2 { "sm2" } else { "ecdsa-p256" },
        "certificate_pem": certificate_pem,
        "payload_b64": b64(payload),
        "signature": format!("0x{}", hex::encode(std::fs::read(&sig).unwrap())),
    }})
}

fn submit(g: &Gateway, txs: Vec<Value>) -> Vec<Value> {
    let r = g.post(
        "/v1/transactions",
        json!({"ledger": "fab", "transactions": txs}),
    );
    assert!(r.status == 202 || r.status == 422, "{}", r.body);
    r.body["results"].as_array().unwrap().clone()
}

#[test]
fn envelopes_trust_what_the_ca_says() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path();
    let node = ScriptNode::start("http-ledger.js", t);

    // Another gateway's CA stands in for an outside CA: its revocations reach this one
    // only through its CRL, configured as a file.
    let other = t.join("other");
    let mut a = Gateway::start_dev_in(&other);
    let ext_root = create_ca(&a, "ext-root", "ecdsa-p256");
    let (ext_node, _) = issue(&a, t, "ext-root", "ext-node", false, "user");
    let (ext_gone, ext_gone_serial) = issue(&a, t, "ext-root", "ext-gone", false, "node");
    let r = a.post(
        &format!("/v1/cas/ext-root/certificates/{ext_gone_serial}/revoke"),
        json!({"reason": "key_compromise"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let crl = a.get("/v1/cas/ext-root/crl");
    assert_eq!(crl.status, 200);
    write(t, "crls.pem", crl.body.as_str().unwrap());
    assert!(a.terminate().success());

    // This gateway's own CAs and certificates.
    let data = t.join("data");
    let mut g = Gateway::start_dev_in(&data);
    let bsn_root = create_ca(&g, "bsn-root", "ecdsa-p256");
    let gm_root = create_ca(&g, "gm-root", "sm2");
    let (p256_node, _) = issue(&g, t, "bsn-root", "p256-node", false, "node");
    let (sm2_node, _) = issue(&g, t, "gm-root", "sm2-node", true, "node");
    let (soon_gone, soon_gone_serial) = issue(&g, t, "bsn-root", "soon-gone", false, "node");
    let (server, _) = issue(&g, t, "bsn-root", "web", false, "tls-server");
    assert!(g.terminate().success());
    write(t, "roots.pem", &format!("{bsn_root}{gm_root}{ext_root}"));

    let tail = format!(
        "[[ledgers]]\nname = \"fab\"\nkind = \"http\"\nnodes = [\"http://127.0.0.1:{}\"]\ntrust_roots_file = \"{}\"\ntrust_crls_file = \"{}\"\n",
        node.port,
        t.join("roots.pem").display(),
        t.join("crls.pem").display(),
    );
    let cfg = t.join("gateway.toml");
    std::fs::write(&cfg, common::dev_token_config(&data, "", "", &tail)).unwrap();
    let g = Gateway::start_config(&cfg, &data);

    let cases: Vec<(Value, &str)> = vec![
        (
            envelope(t, "p256-node", false, &p256_node, b"p256 node"),
            "accepted",
        ),
        (
            envelope(t, "sm2-node", true, &sm2_node, b"sm2 node"),
            "accepted",
        ),
        (
            envelope(t, "ext-node", false, &ext_node, b"ext node"),
            "accepted",
        ),
        (
            envelope(t, "soon-gone", false, &soon_gone, b"before revocation"),
            "accepted",
        ),
        (
            envelope(t, "ext-gone", false, &ext_gone, b"in the CRL"),
            "revoked_certificate",
        ),
        // The certificate is refused before its signature is looked at.
        (
            envelope(t, "p256-node", false, &bsn_root, b"a CA as signer"),
            "certificate_not_for_signing",
        ),
        (
            envelope(t, "web", false, &server, b"a TLS server as signer"),
            "certificate_not_for_signing",
        ),
        // An SM2 node certificate is no P-256 key's: the chain is fine, the signature not.
        (
            envelope(t, "p256-node", false, &sm2_node, b"wrong key"),
            "algorithm_mismatch",
        ),
    ];
    let results = submit(&g, cases.iter().map(|(e, _)| e.clone()).collect());
    let mut accepted = 0;
    for (res, (_, want)) in results.iter().zip(&cases) {
        if *want == "accepted" {
            assert_eq!(res["status"], "accepted", "{res}");
            accepted += 1;
        } else {
            assert_eq!(res["reason"]["code"], *want, "{res}");
        }
    }

    // Revoked by this gateway's CA: refused from that moment, no CRL file involved.
    let r = g.post(
        &format!("/v1/cas/bsn-root/certificates/{soon_gone_serial}/revoke"),
        json!({"reason": "superseded"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let results = submit(
        &g,
        vec![envelope(
            t,
            "soon-gone",
            false,
            &soon_gone,
            b"after revocation",
        )],
    );
    assert_eq!(
        results[0]["reason"]["code"], "revoked_certificate",
        "{}",
        results[0]
    );

    // The ledger got exactly the accepted ones.
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.received().len() < accepted {
        assert!(Instant::now() < deadline, "got {:?}", node.received());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(node.received().len(), accepted);
}
