//! The custody suite, run on both PKCS#11 implementations (SoftHSM2, and tpm2-pkcs11 over
//! a software TPM): one suite, parameterised by the token. Keys are made in the token,
//! read back by pkcs11-tool (not through the gateway), and signatures are checked by the
//! openssl CLI. An algorithm a token lacks is refused with a typed error naming the gap.

mod common;

use common::token::Token;
use common::{error_code, openssl_verify, unhex, Gateway, Signed};
use serde_json::json;

const ALL: [&str; 3] = ["ecdsa-p256", "ecdsa-secp256k1", "ed25519"];

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Signs one digest or message as the algorithm signs, and checks it with openssl.
fn sign_and_check(g: &Gateway, key: &serde_json::Value, what: &str) {
    let alg = key["algorithm"].as_str().unwrap();
    let pem = key["public_key_pem"].as_str().unwrap();
    let path = format!("/v1/keys/{}/sign", key["id"].as_str().unwrap());
    let message = format!("{what}: a payload").into_bytes();
    if alg == "ed25519" {
        let r = g.post(&path, json!({"message_b64": b64(&message)}));
        assert_eq!(r.status, 200, "{what} {alg}: {}", r.body);
        let sig = unhex(r.body["signature"].as_str().unwrap());
        assert!(
            openssl_verify(pem, Signed::Ed25519Message(&message), &sig),
            "{what} {alg}"
        );
    } else {
        let digest = openssl::sha::sha256(&message);
        let r = g.post(
            &path,
            json!({"digest": format!("0x{}", hex::encode(digest))}),
        );
        assert_eq!(r.status, 200, "{what} {alg}: {}", r.body);
        let sig = unhex(r.body["signature"].as_str().unwrap());
        assert!(
            openssl_verify(pem, Signed::Digest(&digest), &sig),
            "{what} {alg}"
        );
    }
}

/// The token's own view of a private key, as pkcs11-tool prints it.
fn private_key_listing(token: &Token, id: &str) -> Option<String> {
    let listing = token.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    listing
        .split("Private Key Object")
        .find(|o| o.contains(&format!("ID:         {id}")))
        .map(str::to_string)
}

fn custody_suite(token: &Token) {
    let data = token.dir.join("gateway");
    let mut g = token.start_gateway(&data, "");
    let what = token.profile;

    // Create: each algorithm the token holds; the others are refused, naming the gap.
    let mut keys = Vec::new();
    for alg in ALL {
        let r = g.post(
            "/v1/keys",
            json!({"label": format!("suite-{alg}"), "algorithm": alg}),
        );
        if token.algorithms.contains(&alg) {
            assert_eq!(r.status, 201, "{what} {alg}: {}", r.body);
            keys.push(r.body);
        } else {
            assert_eq!(
                (r.status, error_code(&r)),
                (422, "unsupported_algorithm"),
                "{what} {alg}: {}",
                r.body
            );
            let message = r.body["error"]["message"].as_str().unwrap();
            assert!(
                message.contains(alg) && message.contains(token.profile),
                "{what}: {message}"
            );
        }
    }
    assert_eq!(keys.len(), token.algorithms.len());

    // List.
    let listed = g.get("/v1/keys");
    assert_eq!(listed.status, 200);
    for k in &keys {
        assert!(
            listed.body["keys"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| l["id"] == k["id"]),
            "{what}: {} not listed",
            k["id"]
        );
    }

    // Sign, and sign-batch on one session.
    for k in &keys {
        sign_and_check(&g, k, what);
        let alg = k["algorithm"].as_str().unwrap();
        let items: Vec<serde_json::Value> = (0..3u8)
            .map(|i| {
                if alg == "ed25519" {
                    json!({"message_b64": b64(&[i; 5])})
                } else {
                    json!({"digest": format!("0x{}", hex::encode(openssl::sha::sha256(&[i])))})
                }
            })
            .collect();
        let r = g.post(
            &format!("/v1/keys/{}/sign-batch", k["id"].as_str().unwrap()),
            json!({"items": items}),
        );
        assert_eq!(r.status, 200, "{what} {alg} batch: {}", r.body);
        let sigs = r.body["signatures"].as_array().unwrap();
        assert_eq!(sigs.len(), 3);
        for (i, s) in sigs.iter().enumerate() {
            let sig = unhex(s.as_str().unwrap());
            let pem = k["public_key_pem"].as_str().unwrap();
            let ok = if alg == "ed25519" {
                openssl_verify(pem, Signed::Ed25519Message(&[i as u8; 5]), &sig)
            } else {
                openssl_verify(pem, Signed::Digest(&openssl::sha::sha256(&[i as u8])), &sig)
            };
            assert!(ok, "{what} {alg} batch item {i}");
        }
    }

    // Attributes, read from the token: sensitive, never extractable, sign-only.
    for k in &keys {
        let id = k["id"].as_str().unwrap();
        let object = private_key_listing(token, id)
            .unwrap_or_else(|| panic!("{what}: no private key {id} on the token"));
        let line = |name: &str| {
            object
                .lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("{what}: no {name} in {object}"))
                .to_string()
        };
        let usage = line("Usage:");
        assert_eq!(usage.trim(), "Usage:      sign", "{what} {id}: {object}");
        let access = line("Access:");
        assert!(
            access.contains("sensitive") && access.contains("never extractable"),
            "{what} {id}: {object}"
        );
    }

    // Restart: the keys are there and still sign.
    assert!(g.terminate().success(), "{what}: {}", g.log());
    let g2 = token.start_gateway(&data, "");
    for k in &keys {
        let r = g2.get(&format!("/v1/keys/{}", k["id"].as_str().unwrap()));
        assert_eq!(r.status, 200, "{what}: {}", r.body);
        sign_and_check(&g2, k, &format!("{what} after restart"));
    }

    // Disable stops signing; destroy removes the token objects.
    let first = &keys[0];
    let id = first["id"].as_str().unwrap();
    let r = g2.post(&format!("/v1/keys/{id}/disable"), json!({}));
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    let r = g2.post(
        &format!("/v1/keys/{id}/sign"),
        json!({"digest": format!("0x{}", "11".repeat(32))}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "key_disabled"), "{what}");
    let r = g2.delete(&format!("/v1/keys/{id}?now=true"));
    assert_eq!(r.status, 200, "{what}: {}", r.body);
    assert!(
        private_key_listing(token, id).is_none(),
        "{what}: the private key is still on the token"
    );
    let all = token.pkcs11_tool(&["--list-objects"]);
    assert!(
        !all.contains(id),
        "{what}: an object of {id} is left: {all}"
    );
    for k in &keys[1..] {
        sign_and_check(&g2, k, &format!("{what} after a destroy"));
    }

    // Stale handles: another tool deletes a key's objects behind the gateway's back and a
    // new key is made. The cached handle fails; the key is looked up again by CKA_ID,
    // found missing, and answered as such: never signed with another object.
    let victim = g2.create_key("suite-victim", "ecdsa-p256");
    let victim_id = victim["id"].as_str().unwrap();
    sign_and_check(&g2, &victim, &format!("{what} victim"));
    for kind in ["privkey", "pubkey"] {
        token.pkcs11_tool(&["--delete-object", "--type", kind, "--id", victim_id]);
    }
    let newcomer = g2.create_key("suite-newcomer", "ecdsa-p256");
    // SoftHSM2 signs with a session copy of the key, whose token object is looked at
    // again every 100 ms: past that, the deletion is seen.
    std::thread::sleep(std::time::Duration::from_millis(150));
    let digest = [0x22u8; 32];
    let r = g2.post(
        &format!("/v1/keys/{victim_id}/sign"),
        json!({"digest": format!("0x{}", hex::encode(digest))}),
    );
    match r.status {
        422 => assert_eq!(error_code(&r), "key_object_missing", "{what}"),
        // tpm2-pkcs11 keeps a key it has loaded for the life of the module, whatever
        // another process removes from its store: the signature is by the same key.
        200 if token.profile == "tpm2" => {
            let sig = unhex(r.body["signature"].as_str().unwrap());
            let pem = victim["public_key_pem"].as_str().unwrap();
            assert!(openssl_verify(pem, Signed::Digest(&digest), &sig), "{what}");
            let other = newcomer["public_key_pem"].as_str().unwrap();
            assert!(
                !openssl_verify(other, Signed::Digest(&digest), &sig),
                "{what}"
            );
        }
        _ => panic!("{what}: {} {}", r.status, r.body),
    }
    sign_and_check(&g2, &newcomer, &format!("{what} newcomer"));
    g = g2;
    drop(g);
}

#[test]
fn the_custody_suite_passes_on_softhsm2() {
    let dir = tempfile::tempdir().unwrap();
    custody_suite(&Token::softhsm2(dir.path()));
}

#[test]
fn the_custody_suite_passes_on_tpm2_pkcs11_over_swtpm() {
    let dir = tempfile::tempdir().unwrap();
    custody_suite(&Token::tpm2(dir.path()));
}

#[test]
fn hsm_probe_passes_on_both_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for token in Token::both(dir.path()) {
        let data = token.dir.join("probe");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("admin.token"), "x").unwrap();
        let cfg = data.join("gateway.toml");
        std::fs::write(&cfg, token.config(&data, "")).unwrap();
        let (ok, out) = token.cli(&["hsm", "probe", "--config", cfg.to_str().unwrap()]);
        assert!(ok, "{}: {out}", token.profile);
        assert!(
            out.contains("nothing the profile expects is missing"),
            "{}: {out}",
            token.profile
        );
        assert!(out.contains("ecdsa-p256 sign"), "{}: {out}", token.profile);
    }
}

#[test]
fn config_check_and_probe_name_what_the_profile_cannot_hold() {
    let dir = tempfile::tempdir().unwrap();
    let token = Token::tpm2(dir.path());
    let data = token.dir.join("gaps");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("admin.token"), "x").unwrap();
    let cfg = data.join("gateway.toml");
    std::fs::write(
        &cfg,
        token.config(&data, "algorithms = [\"ecdsa-p256\", \"ed25519\"]"),
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let (ok, out) = token.cli(&["config", "check", cfg]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("ed25519") && out.contains("tpm2") && !out.contains("ecdsa-p256, "),
        "{out}"
    );
    let (ok, out) = token.cli(&["hsm", "probe", "--config", cfg]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("MISSING config algorithms") && out.contains("ed25519"),
        "{out}"
    );
    // Only P-256 asked for: both pass.
    std::fs::write(
        data.join("gateway.toml"),
        token.config(&data, "algorithms = [\"ecdsa-p256\"]"),
    )
    .unwrap();
    assert!(token.cli(&["config", "check", cfg]).0);
    assert!(token.cli(&["hsm", "probe", "--config", cfg]).0);
}
