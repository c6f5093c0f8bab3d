//! Every kind of bad input gets its documented status and error code, never a panic, and
//! the process keeps serving.

mod common;

use common::*;
use serde_json::json;

/// method, path, body, bearer token, expected status, expected error code
type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<&'a str>, u16, &'a str);

#[test]
fn bad_requests_get_typed_errors_and_the_gateway_keeps_serving() {
    let g = Gateway::start_dev();
    let k1 = g.create_key("mine-k1", "ecdsa-secp256k1");
    let ed = g.create_key("mine-ed", "ed25519");
    let k1_sign = format!("/v1/keys/{}/sign", k1["id"].as_str().unwrap());
    let ed_sign = format!("/v1/keys/{}/sign", ed["id"].as_str().unwrap());
    let k1_batch = format!("/v1/keys/{}/sign-batch", k1["id"].as_str().unwrap());
    let digest = format!("0x{}", "ab".repeat(32));
    let token = g.token.clone();
    let t = Some(token.as_str());
    let big = vec![b' '; 2 << 20];
    let many: Vec<_> = (0..1025).map(|_| json!({"digest": digest})).collect();

    let cases: Vec<Case> = vec![
        (
            "POST",
            "/v1/keys",
            b"{not json".to_vec(),
            t,
            400,
            "malformed_json",
        ),
        ("POST", "/v1/keys", b"".to_vec(), t, 400, "malformed_json"),
        (
            "POST",
            "/v1/keys",
            br#"{"label": 5, "algorithm": "ed25519"}"#.to_vec(),
            t,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/keys",
            br#"{"label": "x", "algorithm": "ed25519", "extra": 1}"#.to_vec(),
            t,
            400,
            "invalid_request",
        ),
        (
            "POST",
            "/v1/keys",
            br#"{"label": "x", "algorithm": "rsa-2048"}"#.to_vec(),
            t,
            422,
            "unknown_algorithm",
        ),
        (
            "POST",
            "/v1/keys",
            br#"{"label": "has space", "algorithm": "ed25519"}"#.to_vec(),
            t,
            400,
            "invalid_label",
        ),
        (
            "POST",
            "/v1/keys",
            br#"{"label": "mine-k1", "algorithm": "ed25519"}"#.to_vec(),
            t,
            409,
            "duplicate_label",
        ),
        (
            "POST",
            &k1_sign,
            br#"{"digest": "0xzz"}"#.to_vec(),
            t,
            400,
            "bad_hex",
        ),
        (
            "POST",
            &k1_sign,
            br#"{"digest": "abcd"}"#.to_vec(),
            t,
            400,
            "bad_hex",
        ),
        (
            "POST",
            &k1_sign,
            br#"{"digest": "0x1234"}"#.to_vec(),
            t,
            400,
            "bad_digest_length",
        ),
        (
            "POST",
            &k1_sign,
            br#"{"message_b64": "***"}"#.to_vec(),
            t,
            400,
            "bad_base64",
        ),
        (
            "POST",
            &k1_sign,
            json!({"digest": digest, "message_b64": "aGk="})
                .to_string()
                .into_bytes(),
            t,
            400,
            "invalid_request",
        ),
        (
            "POST",
            &k1_sign,
            json!({"digest": digest, "format": "pem"})
                .to_string()
                .into_bytes(),
            t,
            422,
            "unsupported_format",
        ),
        (
            "POST",
            &k1_sign,
            json!({"message_b64": "aGk=", "hash": "md5"})
                .to_string()
                .into_bytes(),
            t,
            422,
            "unsupported_hash",
        ),
        (
            "POST",
            &ed_sign,
            json!({"digest": digest}).to_string().into_bytes(),
            t,
            422,
            "digest_not_supported",
        ),
        (
            "POST",
            &ed_sign,
            json!({"message_b64": "aGk=", "format": "der"})
                .to_string()
                .into_bytes(),
            t,
            422,
            "unsupported_format",
        ),
        (
            "POST",
            &ed_sign,
            json!({"message_b64": "aGk=", "format": "eth"})
                .to_string()
                .into_bytes(),
            t,
            422,
            "unsupported_format",
        ),
        (
            "POST",
            "/v1/keys/00112233/sign",
            json!({"digest": digest}).to_string().into_bytes(),
            t,
            404,
            "key_not_found",
        ),
        ("GET", "/v1/keys/nope", vec![], t, 404, "key_not_found"),
        ("POST", &k1_sign, big.clone(), t, 413, "body_too_large"),
        (
            "POST",
            &k1_batch,
            json!({"items": many}).to_string().into_bytes(),
            t,
            413,
            "too_many_items",
        ),
        (
            "POST",
            &k1_batch,
            json!({"items": []}).to_string().into_bytes(),
            t,
            400,
            "invalid_request",
        ),
        (
            "POST",
            &k1_sign,
            json!({"digest": digest}).to_string().into_bytes(),
            None,
            401,
            "unauthenticated",
        ),
        (
            "POST",
            &k1_sign,
            json!({"digest": digest}).to_string().into_bytes(),
            Some("bsn_wrong"),
            401,
            "unauthenticated",
        ),
        ("GET", "/v1/keys", vec![], Some(""), 401, "unauthenticated"),
        ("PUT", &k1_sign, vec![], t, 405, "method_not_allowed"),
        ("GET", "/v2/nothing", vec![], t, 404, "no_route"),
    ];
    for (method, path, body, token, status, code) in cases {
        let r = g.call(method, path, Some(&body), token);
        assert_eq!(
            (r.status, error_code(&r)),
            (status, code),
            "{method} {path} {:?}: {}",
            String::from_utf8_lossy(&body[..body.len().min(80)]),
            r.body
        );
        assert!(r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // Still serving, and still signing.
    let r = g.post(&k1_sign, json!({"digest": digest}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!g.log().contains("panicked"));
}

#[test]
fn policy_limits_a_client_to_its_operations_and_key_labels() {
    let setup = Gateway::start_dev();
    let mut setup = setup;
    let theirs = setup.create_key("team-b-key", "ecdsa-p256");
    let dir = setup.dir.clone();
    assert!(setup.terminate().success());

    // A config that adds a limited client beside the admin, on the same token.
    let limited = "bsn_limited_client_token_for_tests_only_0123456789abcdef";
    let limited_hash = format!(
        "0x{}",
        hex::encode(openssl::sha::sha256(limited.as_bytes()))
    );
    let config = dev_token_config(
        &dir,
        "",
        "",
        &format!(
            "[[clients]]\nname = \"team-a\"\ntoken_sha256 = \"{limited_hash}\"\noperations = [\"keys:create\", \"keys:read\", \"keys:sign\"]\nkeys = [\"team-a-*\"]"
        ),
    );
    let cfg = dir.join("gateway.toml");
    std::fs::write(&cfg, config).unwrap();
    let g = Gateway::start_config(&cfg, &dir);
    let a = Some(limited);
    let theirs_id = theirs["id"].as_str().unwrap();
    let digest = json!({"digest": format!("0x{}", "01".repeat(32))}).to_string();

    let r = g.call(
        "POST",
        "/v1/keys",
        Some(br#"{"label": "team-a-1", "algorithm": "ed25519"}"#),
        a,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["owner"], "team-a");
    let r = g.call(
        "POST",
        "/v1/keys",
        Some(br#"{"label": "team-b-2", "algorithm": "ed25519"}"#),
        a,
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"));
    let r = g.call(
        "POST",
        &format!("/v1/keys/{theirs_id}/sign"),
        Some(digest.as_bytes()),
        a,
    );
    // Another client's key is as unknown as a missing one: the answer tells nothing.
    assert_eq!((r.status, error_code(&r)), (404, "key_not_found"));
    let r = g.call("GET", &format!("/v1/keys/{theirs_id}"), None, a);
    assert_eq!((r.status, error_code(&r)), (404, "key_not_found"));
    // Without keys:destroy the operation itself is refused.
    let r = g.call("DELETE", &format!("/v1/keys/{theirs_id}"), None, a);
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"));
    let r = g.call("GET", "/v1/keys", None, a);
    let labels: Vec<_> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].clone())
        .collect();
    assert_eq!(
        labels,
        vec![json!("team-a-1")],
        "a client lists only the keys it owns"
    );
    // The admin still can.
    let r = g.call(
        "POST",
        &format!("/v1/keys/{theirs_id}/sign"),
        Some(digest.as_bytes()),
        Some(&g.token),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn made_up_methods_and_paths_add_no_metric_series() {
    use std::io::{Read, Write};
    let g = Gateway::start_dev();
    let scrape = || {
        g.call("GET", "/metrics", None, None)
            .body
            .as_str()
            .unwrap()
            .to_string()
    };
    let series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("bsn_gateway_http_request"))
            .count()
    };
    let before = scrape();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..600 {
        let method: String = (0..(4 + next() % 60))
            .map(|_| (b'A' + (next() % 26) as u8) as char)
            .collect();
        let path = if i % 2 == 0 {
            "/healthz".to_string()
        } else {
            format!("/v1/{:x}/{:x}", next(), next())
        };
        let mut s = std::net::TcpStream::connect(&g.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        assert!(
            answer.starts_with("HTTP/1.1 4"),
            "{method} {path}: {}",
            answer.lines().next().unwrap_or("")
        );
    }
    let text = scrape();
    // Every route's series exist from the start; the storm adds a fixed handful (the
    // "other" method on two routes, a few statuses), not one per method or path.
    let added = series(&text) - series(&before);
    assert!(added <= 8, "{added} new series:\n{text}");
    assert!(
        text.len() < before.len() + 4096,
        "/metrics grew from {} to {} bytes",
        before.len(),
        text.len()
    );
    assert!(text.contains("method=\"other\""), "{text}");
    assert!(g.get("/healthz").status == 200);
}
