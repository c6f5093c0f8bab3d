//! Structured logs: `--log-json` gives one JSON object per line, every request's lines
//! carry its request id (the client's `x-request-id`, or a generated one, echoed back), and
//! no PIN, token or wrong token ever reaches the log, even at debug level.

mod common;

use std::process::Command;

use common::{Gateway, BIN};
use serde_json::{json, Value};

#[test]
fn json_logs_carry_request_ids_and_never_a_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut cmd = Command::new(BIN);
    cmd.args([
        "serve",
        "--dev",
        "--log-json",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
    ])
    .arg(dir)
    .env("BSN_LOG", "debug");
    let mut g = Gateway::spawn(cmd, dir);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let bearer = format!("Bearer {}", g.token);

    // The client's id is echoed and used.
    let mut r = agent
        .post(g.url("/v1/keys"))
        .header("Authorization", &bearer)
        .header("x-request-id", "trace-7f3a-create")
        .send_json(json!({"label": "logged", "algorithm": "ecdsa-secp256k1"}))
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-request-id"], "trace-7f3a-create");
    let key: Value = r.body_mut().read_json().unwrap();
    let id = key["id"].as_str().unwrap();

    // Without one, a fresh id is made and echoed.
    let r = agent
        .post(g.url(&format!("/v1/keys/{id}/sign")))
        .header("Authorization", &bearer)
        .send_json(json!({"message_b64": "c2VjcmV0IG1lc3NhZ2U=", "hash": "keccak256"}))
        .unwrap();
    assert_eq!(r.status(), 200);
    let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert!(
        generated.len() == 16 && generated.chars().all(|c| c.is_ascii_hexdigit()),
        "{generated}"
    );

    // A wrong token, and an id that is not a header-safe token (replaced, not logged).
    let wrong = "bsn_wrong_token_that_must_not_be_logged_4b1d";
    let r = agent
        .get(g.url("/v1/keys"))
        .header("Authorization", &format!("Bearer {wrong}"))
        .header("x-request-id", "x".repeat(300))
        .call()
        .unwrap();
    assert_eq!(r.status(), 401);
    let replaced = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(replaced.len(), 16);
    assert!(g.terminate().success());

    let log = g.log();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{log}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string(), "{l}");
    }
    // Each request's lines name it by its id, in the request span.
    let in_request = |rid: &str| {
        lines.iter().any(|l| {
            l["spans"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "request" && s["id"] == rid)
        })
    };
    for rid in ["trace-7f3a-create", generated.as_str(), replaced.as_str()] {
        assert!(in_request(rid), "no log line in request {rid}: {log}");
    }

    // No secret: the admin token, both PINs, the wrong token, the over-long id.
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    for secret in [
        read("admin.token"),
        read("user.pin"),
        read("so.pin"),
        wrong.to_string(),
        "x".repeat(300),
    ] {
        assert!(secret.len() >= 16);
        assert!(!log.contains(&secret), "a secret reached the log");
    }
}
