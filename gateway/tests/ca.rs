//! The certificate hierarchy: CAs whose keys are custody keys, certificates issued from
//! CSRs, revocation and CRLs, all checked by the openssl CLI (an implementation
//! independent of x509-cert), surviving a restart, audited, under `ca:*` policy.

mod common;

use std::path::Path;

use common::pki::{csr, openssl, write};
use common::{error_code, Gateway};
use serde_json::{json, Value};

/// Splits a DER certificate into its TBS and signature value, and has `openssl pkeyutl`
/// check the signature with the certificate's own key and the GM/T default ID.
fn self_signature_verifies_sm2(dir: &Path, pem: &str) -> bool {
    let der = openssl::x509::X509::from_pem(&std::fs::read(pem).unwrap())
        .unwrap()
        .to_der()
        .unwrap();
    // (content start, content length) of the element at `i`.
    let element = |i: usize| -> (usize, usize) {
        let first = der[i + 1] as usize;
        if first < 0x80 {
            return (i + 2, first);
        }
        let n = first & 0x7f;
        let len = der[i + 2..i + 2 + n]
            .iter()
            .fold(0usize, |a, b| (a << 8) | *b as usize);
        (i + 2 + n, len)
    };
    let (body, _) = element(0);
    let (tbs_start, tbs_len) = element(body);
    let tbs = &der[body..tbs_start + tbs_len];
    let (alg_start, alg_len) = element(tbs_start + tbs_len);
    let (bits_start, bits_len) = element(alg_start + alg_len);
    let sig = &der[bits_start + 1..bits_start + bits_len];
    let tbs_file = write_bytes(dir, "tbs.der", tbs);
    let sig_file = write_bytes(dir, "sig.der", sig);
    let (_, public) = openssl(&["x509", "-in", pem, "-pubkey", "-noout"]);
    let pub_file = write(dir, "self.pub", &public);
    let (ok, out) = openssl(&[
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        &pub_file,
        "-rawin",
        "-in",
        &tbs_file,
        "-sigfile",
        &sig_file,
        "-digest",
        "sm3",
        "-pkeyopt",
        "distid:1234567812345678",
    ]);
    ok && out.contains("Verified")
}

fn write_bytes(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p.to_str().unwrap().to_string()
}

fn create_ca(g: &Gateway, body: Value) -> Value {
    let r = g.post("/v1/cas", body);
    assert_eq!(r.status, 201, "{}", r.body);
    r.body
}

#[test]
fn a_p256_and_an_sm2_hierarchy_issue_revoke_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut g = Gateway::start_dev_in(dir.path());

    // Root, then a city CA under it that may issue only end entities.
    let root = create_ca(
        &g,
        json!({"name": "root", "algorithm": "ecdsa-p256", "subject": "CN=BSN Root,O=BSN", "validity_days": 3650}),
    );
    let city = create_ca(
        &g,
        json!({"name": "city-bj", "algorithm": "ecdsa-p256", "subject": "CN=BSN Beijing,O=BSN", "parent": "root", "validity_days": 1825, "path_len": 0}),
    );
    let root_pem = write(t, "root.pem", root["certificate_pem"].as_str().unwrap());
    let city_pem = write(t, "city.pem", city["certificate_pem"].as_str().unwrap());
    assert!(city["chain_pem"]
        .as_str()
        .unwrap()
        .ends_with(root["certificate_pem"].as_str().unwrap()));
    let (ok, out) = openssl(&["verify", "-check_ss_sig", "-CAfile", &root_pem, &city_pem]);
    assert!(ok, "{out}");
    // The CA keys are custody keys: in the token, never extractable.
    let key = g.get(&format!("/v1/keys/{}", city["key_id"].as_str().unwrap()));
    assert_eq!(
        (key.status, key.body["custody"].as_str()),
        (200, Some("hsm")),
        "{}",
        key.body
    );
    // An admin sees the CA's key, but cannot sign arbitrary data with it.
    let r = g.post(
        &format!("/v1/keys/{}/sign", city["key_id"].as_str().unwrap()),
        json!({"digest": format!("0x{}", "11".repeat(32))}),
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"), "{}", r.body);

    // A TLS server certificate from a CSR, with SANs.
    let r = g.post(
        "/v1/cas/city-bj/certificates",
        json!({"csr_pem": csr(t, "node1", false), "profile": "tls-server", "validity_days": 365, "san": ["node1.bsn.example", "10.0.0.7"]}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let serial = r.body["serial"].as_str().unwrap().to_string();
    let leaf = write(t, "leaf.pem", r.body["certificate_pem"].as_str().unwrap());
    let chain = write(t, "chain.pem", r.body["chain_pem"].as_str().unwrap());
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &root_pem,
        "-untrusted",
        &chain,
        &leaf,
    ]);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", &leaf, "-noout", "-text"]);
    for want in [
        "TLS Web Server Authentication",
        "DNS:node1.bsn.example",
        "IP Address:10.0.0.7",
        "CA:FALSE",
        "Digital Signature",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert!(!text.contains("TLS Web Client Authentication"));
    // A node certificate may serve and connect.
    let r = g.post(
        "/v1/cas/city-bj/certificates",
        json!({"csr_pem": csr(t, "node2", false), "profile": "node", "validity_days": 30}),
    );
    let node = write(t, "node.pem", r.body["certificate_pem"].as_str().unwrap());
    let (_, text) = openssl(&["x509", "-in", &node, "-noout", "-text"]);
    assert!(
        text.contains("TLS Web Server Authentication")
            && text.contains("TLS Web Client Authentication")
    );

    // Revocation: the CRL, signed by the CA, names the serial; openssl refuses the leaf.
    let r = g.post(
        &format!("/v1/cas/city-bj/certificates/{serial}/revoke"),
        json!({"reason": "key_compromise"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["revoked"]["reason"], "key_compromise");
    let crl = g.get("/v1/cas/city-bj/crl");
    assert_eq!(crl.status, 200);
    let crl_pem = write(t, "crl.pem", crl.body.as_str().unwrap());
    let (ok, out) = openssl(&[
        "crl", "-in", &crl_pem, "-CAfile", &city_pem, "-noout", "-text",
    ]);
    assert!(ok && out.contains("verify OK"), "{out}");
    assert!(out.to_lowercase().contains(&serial.to_lowercase()), "{out}");
    let both = write(
        t,
        "both.pem",
        &format!(
            "{}{}",
            root["certificate_pem"].as_str().unwrap(),
            city["certificate_pem"].as_str().unwrap()
        ),
    );
    let (ok, out) = openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        &crl_pem,
        "-CAfile",
        &both,
        &leaf,
    ]);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let r = g.post(
        &format!("/v1/cas/city-bj/certificates/{serial}/revoke"),
        json!({"reason": "key_compromise"}),
    );
    assert_eq!((r.status, error_code(&r)), (409, "already_revoked"));

    // SM2 (GM/T 0015): a root and a node certificate from an SM2 CSR, SM2-with-SM3.
    let gm = create_ca(
        &g,
        json!({"name": "gm-root", "algorithm": "sm2", "subject": "CN=BSN GM Root,O=BSN,C=CN", "validity_days": 3650}),
    );
    let gm_pem = write(t, "gm.pem", gm["certificate_pem"].as_str().unwrap());
    let r = g.post(
        "/v1/cas/gm-root/certificates",
        json!({"csr_pem": csr(t, "cita-node", true), "profile": "node", "validity_days": 365}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let gm_leaf = write(
        t,
        "gm-leaf.pem",
        r.body["certificate_pem"].as_str().unwrap(),
    );
    // OpenSSL 3.0 checks SM2 certificate signatures with an empty ID unless told the
    // GM/T 0009 default that GM/T 0015 certificates use (`-vfyopt`, which its self-signed
    // check does not take: the root's own signature is checked with pkeyutl).
    let (ok, out) = openssl(&[
        "verify",
        "-vfyopt",
        "distid:1234567812345678",
        "-CAfile",
        &gm_pem,
        &gm_leaf,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["verify", "-CAfile", &gm_pem, &gm_leaf]);
    assert!(!ok, "verified with an empty ID: {out}");
    assert!(
        self_signature_verifies_sm2(t, &gm_pem),
        "SM2 root self-signature"
    );
    let (_, text) = openssl(&["x509", "-in", &gm_leaf, "-noout", "-text"]);
    assert!(
        text.contains("SM2-with-SM3") && text.contains("ASN1 OID: SM2"),
        "{text}"
    );
    let (_, dump) = openssl(&["asn1parse", "-in", &gm_leaf]);
    assert!(
        dump.contains("SM2-with-SM3") || dump.contains("1.2.156.10197.1.501"),
        "{dump}"
    );
    let gm_key = g.get(&format!("/v1/keys/{}", gm["key_id"].as_str().unwrap()));
    assert_eq!(gm_key.body["custody"], "wrapped");

    // Refusals, typed.
    let mut bad_csr = csr(t, "tampered", false);
    let at = bad_csr.len() / 2;
    bad_csr.replace_range(
        at..at + 1,
        if &bad_csr[at..at + 1] == "A" {
            "B"
        } else {
            "A"
        },
    );
    for (path, body, status, code) in [
        (
            "/v1/cas",
            json!({"name": "root", "algorithm": "ecdsa-p256", "subject": "CN=x", "validity_days": 1}),
            409,
            "ca_exists",
        ),
        (
            "/v1/cas",
            json!({"name": "under-city", "algorithm": "ecdsa-p256", "subject": "CN=x", "parent": "city-bj", "validity_days": 1}),
            400,
            "invalid_request",
        ),
        (
            "/v1/cas",
            json!({"name": "x", "algorithm": "ed25519", "subject": "CN=x", "validity_days": 1}),
            400,
            "invalid_request",
        ),
        (
            "/v1/cas",
            json!({"name": "x", "algorithm": "ecdsa-p256", "subject": "not a name", "validity_days": 1}),
            400,
            "invalid_request",
        ),
        (
            "/v1/cas/nope/certificates",
            json!({"csr_pem": "x", "profile": "node", "validity_days": 1}),
            404,
            "ca_not_found",
        ),
        (
            "/v1/cas/city-bj/certificates",
            json!({"csr_pem": bad_csr, "profile": "node", "validity_days": 1}),
            422,
            "bad_csr",
        ),
        (
            "/v1/cas/city-bj/certificates",
            json!({"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "profile": "node", "validity_days": 1}),
            422,
            "bad_csr",
        ),
        (
            "/v1/cas/city-bj/certificates",
            json!({"csr_pem": csr(t, "p", false), "profile": "code-signing", "validity_days": 1}),
            400,
            "invalid_request",
        ),
        (
            "/v1/cas/city-bj/certificates/00ff/revoke",
            json!({"reason": "superseded"}),
            404,
            "certificate_not_found",
        ),
    ] {
        let r = g.post(path, body);
        assert_eq!(
            (r.status, error_code(&r)),
            (status, code),
            "{path}: {}",
            r.body
        );
    }

    // Everything is in the audit trail, and survives a restart.
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    for op in ["ca_create", "ca_issue", "ca_revoke"] {
        assert!(
            audit.contains(&format!("\"operation\":\"{op}\"")),
            "{op} not audited"
        );
    }
    assert!(audit.contains(&format!("serial={serial}")));
    assert!(g.terminate().success());
    // A crash in the middle of an append leaves a torn last line: it was never
    // acknowledged, and the register still opens.
    let register = dir.path().join("ca.jsonl");
    let mut text = std::fs::read_to_string(&register).unwrap();
    text.push_str("{\"type\":\"issued\",\"ca\":\"ro");
    std::fs::write(&register, text).unwrap();
    let g = Gateway::start_dev_in(dir.path());
    let names: Vec<String> = g.get("/v1/cas").body["cas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["city-bj", "gm-root", "root"]);
    let r = g.post(
        &format!("/v1/cas/city-bj/certificates/{serial}/revoke"),
        json!({"reason": "superseded"}),
    );
    assert_eq!((r.status, error_code(&r)), (409, "already_revoked"));
    let crl = write(
        t,
        "crl2.pem",
        g.get("/v1/cas/city-bj/crl").body.as_str().unwrap(),
    );
    let (_, out) = openssl(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(out.to_lowercase().contains(&serial.to_lowercase()), "{out}");
    let r = g.get("/v1/cas/root");
    assert_eq!(r.body["certificate_pem"], root["certificate_pem"]);
    // What is appended after the torn line reads back after another restart.
    create_ca(
        &g,
        json!({"name": "after-crash", "algorithm": "ecdsa-p256", "subject": "CN=After", "validity_days": 10}),
    );
    let mut g = g;
    assert!(g.terminate().success());
    let g = Gateway::start_dev_in(dir.path());
    assert_eq!(g.get("/v1/cas/after-crash").status, 200);
}

#[test]
fn ca_operations_follow_the_client_policy() {
    let dir = tempfile::tempdir().unwrap();
    let hash = |t: &str| format!("0x{}", hex::encode(openssl::sha::sha256(t.as_bytes())));
    let tail = format!(
        "[[clients]]\nname = \"issuer\"\ntoken_sha256 = \"{}\"\noperations = [\"ca:issue\"]\nkeys = []\n[[clients]]\nname = \"signer\"\ntoken_sha256 = \"{}\"\noperations = [\"keys:sign\"]\nkeys = [\"*\"]\n",
        hash("issuer-token"),
        hash("signer-token")
    );
    let g = Gateway::start_configured(dir.path(), "", &tail);
    create_ca(
        &g,
        json!({"name": "r", "algorithm": "ecdsa-p256", "subject": "CN=R", "validity_days": 10}),
    );
    let tmp = tempfile::tempdir().unwrap();
    let as_client = |token: &str, path: &str, body: Value| {
        g.call("POST", path, Some(body.to_string().as_bytes()), Some(token))
    };
    let r = as_client(
        "issuer-token",
        "/v1/cas",
        json!({"name": "x", "algorithm": "ecdsa-p256", "subject": "CN=x", "validity_days": 1}),
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"));
    let r = as_client(
        "issuer-token",
        "/v1/cas/r/certificates",
        json!({"csr_pem": csr(tmp.path(), "u", false), "profile": "user", "validity_days": 1}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let serial = r.body["serial"].as_str().unwrap().to_string();
    let r = as_client(
        "issuer-token",
        &format!("/v1/cas/r/certificates/{serial}/revoke"),
        json!({"reason": "superseded"}),
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"));
    assert_eq!(
        g.call("GET", "/v1/cas", None, Some("issuer-token")).status,
        200
    );
    assert_eq!(
        g.call("GET", "/v1/cas", None, Some("signer-token")).status,
        403
    );
    assert_eq!(
        g.call("GET", "/v1/cas/r/crl", None, Some("signer-token"))
            .status,
        403
    );
}
