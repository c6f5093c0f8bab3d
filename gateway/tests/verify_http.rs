//! `POST /v1/verify` on the real binary: Wycheproof vectors, SM2 signatures made by the
//! openssl CLI, custody-signed keys with one-bit changes, per-item reasons, request errors
//! and overload.

mod common;

use std::process::Command;

use common::{error_code, unhex, wycheproof, Gateway};
use serde_json::{json, Value};

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hex0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

/// Posts the items in requests of at most 1024 and returns the results in order.
fn verify_all(g: &Gateway, items: &[Value]) -> Vec<Value> {
    let mut out = Vec::new();
    for chunk in items.chunks(1024) {
        let r = g.post("/v1/verify", json!({ "items": chunk }));
        assert_eq!(r.status, 200, "{}", r.body);
        out.extend(r.body["results"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(out.len(), items.len());
    out
}

#[test]
fn every_wycheproof_vector_through_the_api() {
    let g = Gateway::start_dev();
    let cases = wycheproof::all();
    let items: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut item = json!({
                "algorithm": c.algorithm,
                "message_b64": b64(&c.msg),
                "signature": hex0x(&c.sig),
                "format": c.format,
                "require_low_s": c.require_low_s,
            });
            // Half the items name the key by its point, half by PEM.
            if i % 2 == 0 {
                item["public_key"] = json!(format!("0x{}", c.key_hex));
            } else {
                item["public_key_pem"] = json!(c.key_pem);
            }
            item
        })
        .collect();
    let results = verify_all(&g, &items);
    let wrong: Vec<String> = cases
        .iter()
        .zip(&results)
        .filter(|(c, r)| r["valid"].as_bool() != Some(c.valid))
        .map(|(c, r)| format!("{} #{}: {r}", c.file, c.id))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Invalid items say why.
    for (c, r) in cases.iter().zip(&results) {
        if !c.valid {
            assert!(r["reason"].as_str().is_some_and(|s| !s.is_empty()), "{r}");
        }
    }
}

fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// SM2 over SM3(Z || message) with the given distinguishing ID, by `openssl pkeyutl`.
fn sm3_pkeyutl_sign(key: &str, msg_file: &str, distid: &str) -> Vec<u8> {
    let id = format!("distid:{distid}");
    openssl(&[
        "pkeyutl", "-sign", "-rawin", "-digest", "sm3", "-inkey", key, "-in", msg_file, "-pkeyopt",
        &id,
    ])
}

#[test]
fn sm2_signatures_from_the_openssl_cli_verify_and_altered_ones_do_not() {
    let g = Gateway::start_dev();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let mut items = Vec::new();
    let mut expect = Vec::new();
    for k in 0..4 {
        let key = p(&format!("k{k}.pem"));
        let pubk = p(&format!("k{k}.pub"));
        openssl(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:SM2",
            "-out",
            &key,
        ]);
        openssl(&["pkey", "-in", &key, "-pubout", "-out", &pubk]);
        let pem = std::fs::read_to_string(&pubk).unwrap();
        let point = openssl(&["pkey", "-pubin", "-in", &pubk, "-outform", "DER"]);
        // The SubjectPublicKeyInfo ends with the 65-byte uncompressed point.
        let point = &point[point.len() - 65..];
        for m in 0..6 {
            let msg = format!("SM2 message {k}/{m}: {}", "x".repeat(m * 37));
            let msgf = p("msg");
            std::fs::write(&msgf, &msg).unwrap();
            // The default ID of GM/T 0009 (OpenSSL 3.0 must be told it), by two commands.
            let sig = if m % 2 == 0 {
                openssl(&[
                    "dgst",
                    "-sm3",
                    "-sign",
                    &key,
                    "-sigopt",
                    "distid:1234567812345678",
                    &msgf,
                ])
            } else {
                sm3_pkeyutl_sign(&key, &msgf, "1234567812345678")
            };
            let key_field = if m % 3 == 0 {
                json!({"public_key_pem": pem})
            } else {
                json!({"public_key": hex0x(point)})
            };
            let item = |msg: &[u8], sig: &[u8]| {
                let mut v =
                    json!({"algorithm": "sm2", "message_b64": b64(msg), "signature": hex0x(sig)});
                v.as_object_mut()
                    .unwrap()
                    .extend(key_field.as_object().unwrap().clone());
                v
            };
            items.push(item(msg.as_bytes(), &sig));
            expect.push(true);
            // One bit of the message, one bit of r or s.
            let mut bad = msg.clone().into_bytes();
            let n = bad.len();
            bad[m % n] ^= 0x01;
            items.push(item(&bad, &sig));
            expect.push(false);
            let mut bad_sig = sig.clone();
            let at = sig.len() - 1 - m;
            bad_sig[at] ^= 0x80;
            items.push(item(msg.as_bytes(), &bad_sig));
            expect.push(false);
        }
        // Signed under another ID: Z differs, so it must not verify under the default one.
        let msgf = p("msg");
        std::fs::write(&msgf, "other id").unwrap();
        let sig = sm3_pkeyutl_sign(&key, &msgf, "alice@example");
        items.push(json!({"algorithm": "sm2", "public_key": hex0x(point), "message_b64": b64(b"other id"), "signature": hex0x(&sig)}));
        expect.push(false);
    }
    let results = verify_all(&g, &items);
    let got: Vec<bool> = results.iter().map(|r| r["valid"] == true).collect();
    assert_eq!(got, expect, "{results:?}");
}

#[test]
fn custody_and_imported_keys_verify_by_id_point_and_pem_and_any_flipped_bit_fails() {
    let g = Gateway::start_dev();
    let mut items = Vec::new();
    let mut expect = Vec::new();
    for alg in ["ecdsa-p256", "ecdsa-secp256k1", "ed25519"] {
        let key = g.create_key(&format!("v-{alg}"), alg);
        let id = key["id"].as_str().unwrap();
        for i in 0..12usize {
            let msg = bsn_gateway::util::random_bytes(1 + i * 13);
            let format = match (alg, i % 3) {
                ("ed25519", _) => "raw",
                (_, 0) => "der",
                (_, 1) => "raw",
                ("ecdsa-secp256k1", _) => "eth",
                _ => "der",
            };
            let r = g.post(
                &format!("/v1/keys/{id}/sign"),
                json!({"message_b64": b64(&msg), "format": format}),
            );
            assert_eq!(r.status, 200, "{}", r.body);
            let sig = unhex(r.body["signature"].as_str().unwrap());
            let mut item = json!({"algorithm": alg, "message_b64": b64(&msg), "signature": hex0x(&sig), "format": format});
            match i % 3 {
                0 => item["key_id"] = json!(id),
                1 => item["public_key"] = key["public_key"].clone(),
                _ if format == "eth" => item["address"] = key["address"].clone(),
                _ => item["public_key_pem"] = key["public_key_pem"].clone(),
            }
            items.push(item.clone());
            expect.push(true);
            // One bit flipped, at a different place each time, in the signature or message.
            let mut bad = item.clone();
            if i % 2 == 0 {
                let mut s = sig.clone();
                let bit = (i * 37) % (if format == "eth" { 64 } else { s.len() } * 8);
                s[bit / 8] ^= 1 << (bit % 8);
                bad["signature"] = json!(hex0x(&s));
            } else {
                let mut m = msg.clone();
                let bit = (i * 53) % (m.len() * 8);
                m[bit / 8] ^= 1 << (bit % 8);
                bad["message_b64"] = json!(b64(&m));
            }
            items.push(bad);
            expect.push(false);
        }
    }
    // An imported, verify-only key, named by its id; signatures made by OpenSSL.
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
    let ec = openssl::ec::EcKey::generate(&group).unwrap();
    let pem = String::from_utf8(ec.public_key_to_pem().unwrap()).unwrap();
    let r = g.post(
        "/v1/keys/import",
        json!({"label": "v-imported", "algorithm": "ecdsa-p256", "public_key_pem": pem}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let imported = r.body["id"].as_str().unwrap().to_string();
    for i in 0..8u8 {
        let msg = vec![i; 40];
        let sig = openssl::ecdsa::EcdsaSig::sign(&openssl::sha::sha256(&msg), &ec).unwrap();
        let der = sig.to_der().unwrap();
        items.push(json!({"algorithm": "ecdsa-p256", "key_id": imported, "message_b64": b64(&msg), "signature": hex0x(&der)}));
        expect.push(true);
        let mut other = msg.clone();
        other[i as usize] ^= 0x10;
        items.push(json!({"algorithm": "ecdsa-p256", "key_id": imported, "message_b64": b64(&other), "signature": hex0x(&der)}));
        expect.push(false);
    }
    let results = verify_all(&g, &items);
    let got: Vec<bool> = results.iter().map(|r| r["valid"] == true).collect();
    let wrong: Vec<_> = items
        .iter()
        .zip(&results)
        .zip(&expect)
        .filter(|((_, r), e)| (r["valid"] == true) != **e)
        .map(|((i, r), _)| format!("{i} -> {r}"))
        .collect();
    assert_eq!(got, expect, "{}", wrong.join("\n"));
}

#[test]
fn each_bad_item_gets_its_reason_and_the_others_still_verify() {
    let g = Gateway::start_dev();
    let key = g.create_key("reasons", "ed25519");
    let id = key["id"].as_str().unwrap();
    let r = g.post(
        &format!("/v1/keys/{id}/sign"),
        json!({"message_b64": b64(b"hi")}),
    );
    let sig = r.body["signature"].as_str().unwrap().to_string();
    let good =
        json!({"algorithm": "ed25519", "key_id": id, "message_b64": b64(b"hi"), "signature": sig});
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(Value, &str)> = vec![
        (good.clone(), "valid"),
        (with(&|v| v["key_id"] = json!("00ff")), "unknown_key"),
        (
            with(&|v| v["algorithm"] = json!("rsa")),
            "unsupported_algorithm",
        ),
        (
            with(&|v| v["algorithm"] = json!("ecdsa-p256")),
            "algorithm_mismatch",
        ),
        (with(&|v| v["signature"] = json!("zz")), "bad_encoding"),
        (with(&|v| v["signature"] = json!("0x1234")), "bad_encoding"),
        (with(&|v| v["format"] = json!("der")), "unsupported_format"),
        (
            with(&|v| v["format"] = json!("pkcs7")),
            "unsupported_format",
        ),
        (with(&|v| v["public_key"] = json!("0x00")), "invalid_item"),
        (
            with(&|v| {
                v.as_object_mut().unwrap().remove("message_b64");
            }),
            "invalid_item",
        ),
        (
            with(&|v| v["digest"] = json!(hex0x(&[1u8; 32]))),
            "invalid_item",
        ),
        (with(&|v| v["message_b64"] = json!("!!")), "bad_encoding"),
        (
            with(&|v| v["message_b64"] = json!(b64(b"ho"))),
            "bad_signature",
        ),
        (
            json!({"algorithm": "ed25519", "public_key": hex0x(&[0u8; 32]), "message_b64": "", "signature": hex0x(&[0u8; 64])}),
            "bad_public_key",
        ),
        (
            json!({"algorithm": "ecdsa-p256", "public_key": hex0x(&[4u8; 65]), "digest": hex0x(&[1u8; 32]), "signature": hex0x(&[1u8; 64]), "format": "raw"}),
            "bad_public_key",
        ),
        (
            json!({"algorithm": "ecdsa-p256", "public_key_pem": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n", "digest": hex0x(&[1u8; 32]), "signature": "0x30"}),
            "bad_encoding",
        ),
        (good.clone(), "valid"),
    ];
    let items: Vec<Value> = cases.iter().map(|(v, _)| v.clone()).collect();
    let results = verify_all(&g, &items);
    for ((item, want), got) in cases.iter().zip(&results) {
        let reason = if got["valid"] == true {
            "valid"
        } else {
            got["reason"].as_str().unwrap_or("<none>")
        };
        assert_eq!(reason, *want, "{item}");
    }
}

#[test]
fn request_errors_policy_and_overload() {
    let mut setup = Gateway::start_dev();
    let dir = setup.dir.clone();
    assert!(setup.terminate().success());
    let signer = "bsn_signer_only_token_for_tests_0123456789abcdef";
    let hash = format!("0x{}", hex::encode(openssl::sha::sha256(signer.as_bytes())));
    let config = common::dev_token_config(
        &dir,
        "",
        "",
        &format!(
            "[[clients]]\nname = \"signer\"\ntoken_sha256 = \"{hash}\"\noperations = [\"keys:sign\"]\nkeys = [\"*\"]\n[limits]\nmax_items = 200\n[verify]\nworkers = 1\nmax_batch = 32\nqueue_items = 100\n"
        ),
    );
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, config).unwrap();
    let g = Gateway::start_config(&cfg, &dir);
    let item = json!({"algorithm": "ed25519", "public_key": hex0x(&[0u8; 32]), "message_b64": "", "signature": hex0x(&[0u8; 64])});

    let r = g.call("POST", "/v1/verify", Some(b"{\"items\": ["), Some(&g.token));
    assert_eq!((r.status, error_code(&r)), (400, "malformed_json"));
    let r = g.post("/v1/verify", json!({"items": [], }));
    assert_eq!((r.status, error_code(&r)), (400, "invalid_request"));
    let r = g.post("/v1/verify", json!({"items": [item], "extra": 1}));
    assert_eq!((r.status, error_code(&r)), (400, "invalid_request"));
    let r = g.post("/v1/verify", json!({"items": [{"algorithm": "ed25519"}]}));
    assert_eq!((r.status, error_code(&r)), (400, "invalid_request"));
    let r = g.post("/v1/verify", json!({"items": vec![item.clone(); 201]}));
    assert_eq!((r.status, error_code(&r)), (413, "too_many_items"));
    let r = g.call(
        "POST",
        "/v1/verify",
        Some(json!({"items": [item]}).to_string().as_bytes()),
        None,
    );
    assert_eq!((r.status, error_code(&r)), (401, "unauthenticated"));
    let r = g.call(
        "POST",
        "/v1/verify",
        Some(json!({"items": [item]}).to_string().as_bytes()),
        Some(signer),
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"));
    let r = g.get("/v1/verify");
    assert_eq!(r.status, 405);

    // More items than the queue admits: refused whole with Retry-After, nothing verified.
    let r = g.post("/v1/verify", json!({"items": vec![item.clone(); 150]}));
    assert_eq!(
        (r.status, error_code(&r)),
        (503, "verify_overloaded"),
        "{}",
        r.body
    );
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    // Within it: answered.
    let r = g.post("/v1/verify", json!({"items": vec![item.clone(); 100]}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["valid"] == false));

    // Concurrent callers: every answer is 200 or 503, and the gateway serves on.
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    g.post("/v1/verify", json!({"items": vec![item.clone(); 60]}))
                        .status
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "{statuses:?}"
    );
    let m = g.call("GET", "/metrics", None, None);
    let text = m.body.as_str().unwrap();
    assert!(
        text.contains("bsn_gateway_verify_total{algorithm=\"ed25519\",result=\"bad_public_key\"}"),
        "{text}"
    );
    assert!(text.contains("bsn_gateway_verify_overloaded_total"));
    assert!(text.contains("bsn_gateway_verify_batch_items_bucket"));
    assert!(!g.log().contains("panicked"));
}

/// A key is parsed once and found in the cache after that, and the metric says which:
/// SREs size `[verify] key_cache_entries` by it.
#[test]
fn a_key_is_parsed_once_then_found_and_the_metric_counts_both() {
    let g = Gateway::start_dev();
    let lookups = || {
        let count = |result: &str| {
            let series = format!("bsn_gateway_verify_key_cache_total{{result=\"{result}\"}}");
            g.metric(&series)
                .unwrap_or_else(|| panic!("{series} not in the scrape")) as u64
        };
        (count("hit"), count("miss"))
    };
    let case = wycheproof::all()
        .into_iter()
        .find(|c| c.algorithm == "ecdsa-p256" && c.valid)
        .unwrap();
    let item = json!({
        "algorithm": case.algorithm,
        "public_key": format!("0x{}", case.key_hex),
        "message_b64": b64(&case.msg),
        "signature": hex0x(&case.sig),
        "format": case.format,
        "require_low_s": case.require_low_s,
    });
    assert_eq!(lookups(), (0, 0));
    assert_eq!(
        verify_all(&g, std::slice::from_ref(&item))[0]["valid"],
        true
    );
    assert_eq!(lookups(), (0, 1));
    assert_eq!(verify_all(&g, &[item.clone(), item])[0]["valid"], true);
    assert_eq!(lookups(), (2, 1));
}
