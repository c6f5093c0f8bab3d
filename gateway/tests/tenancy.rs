//! Tenants kept apart (keys and transactions belong to a client; another client's id is
//! 404 like a missing one; label patterns cannot reach across tenants; clients name their
//! ledgers), clients reloaded on SIGHUP, and an audit trail whose edits show.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ledger::ScriptNode;
use common::{dev_token_config, error_code, run_cli, Gateway};
use serde_json::{json, Value};

fn token_hash(t: &str) -> String {
    format!("0x{}", hex::encode(openssl::sha::sha256(t.as_bytes())))
}

fn client_toml(name: &str, token: &str, keys: &str, ledgers: &str) -> String {
    format!(
        "[[clients]]\nname = \"{name}\"\ntoken_sha256 = \"{}\"\noperations = [\"*\"]\nkeys = [{keys}]\nledgers = [{ledgers}]\n",
        token_hash(token)
    )
}

const A: &str = "bsn_tenant_a_token_for_tests_only_000000000000000000000000";
const AB: &str = "bsn_tenant_ab_token_for_tests_only_00000000000000000000000";
const NEW: &str = "bsn_tenant_new_token_for_tests_only_0000000000000000000000";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[test]
fn two_tenants_see_nothing_of_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let node = ScriptNode::start("http-ledger.js", dir.path());
    let data = dir.path().join("data");
    Gateway::start_dev_in(&data).terminate();
    let ledgers = format!(
        "[[ledgers]]\nname = \"fab-a\"\nkind = \"http\"\nnodes = [\"http://127.0.0.1:{p}\"]\n[[ledgers]]\nname = \"fab-ab\"\nkind = \"http\"\nnodes = [\"http://127.0.0.1:{p}\"]\n",
        p = node.port
    );
    let tail = format!(
        "{}{}{ledgers}",
        client_toml("dapp-a", A, "\"dapp-a-*\"", "\"fab-a\""),
        client_toml("dapp-ab", AB, "\"dapp-ab-*\"", "\"fab-ab\"")
    );
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, dev_token_config(&data, "", "", &tail)).unwrap();
    let (ok, out) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        !out.contains("warning"),
        "dapp-a-* and dapp-ab-* do not overlap: {out}"
    );
    let g = Gateway::start_config(&cfg, &data);
    let call = |method: &str, path: &str, body: Option<Value>, token: &str| {
        let b = body.map(|b| b.to_string());
        g.call(method, path, b.as_deref().map(str::as_bytes), Some(token))
    };

    // The prefix stops at its separator: dapp-a may not take dapp-ab's names.
    let r = call(
        "POST",
        "/v1/keys",
        Some(json!({"label": "dapp-ab-treasury", "algorithm": "ecdsa-p256"})),
        A,
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"), "{}", r.body);
    let r = call(
        "POST",
        "/v1/keys",
        Some(json!({"label": "dapp-ab-treasury", "algorithm": "ecdsa-p256"})),
        AB,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["owner"], "dapp-ab");
    let theirs = r.body["id"].as_str().unwrap().to_string();
    // Only an admin names another owner.
    let r = call(
        "POST",
        "/v1/keys",
        Some(json!({"label": "dapp-a-x", "algorithm": "ed25519", "owner": "dapp-ab"})),
        A,
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"), "{}", r.body);
    let r = call(
        "POST",
        "/v1/keys",
        Some(json!({"label": "dapp-a-given", "algorithm": "ed25519", "owner": "dapp-a"})),
        &g.token,
    );
    assert_eq!(
        (r.status, &r.body["owner"]),
        (201, &json!("dapp-a")),
        "{}",
        r.body
    );
    let given = r.body["id"].as_str().unwrap().to_string();
    let r = call(
        "POST",
        "/v1/keys",
        Some(json!({"label": "dapp-a-y", "algorithm": "ed25519", "owner": "nobody"})),
        &g.token,
    );
    assert_eq!(
        (r.status, error_code(&r)),
        (422, "unknown_owner"),
        "{}",
        r.body
    );
    let r = call(
        "POST",
        &format!("/v1/keys/{given}/sign"),
        Some(json!({"message_b64": "aGk="})),
        A,
    );
    assert_eq!(
        r.status, 200,
        "the owner the admin named uses it: {}",
        r.body
    );

    // Another tenant's key and a missing key answer alike, for every operation.
    let missing = "00".repeat(16);
    for id in [theirs.as_str(), missing.as_str()] {
        let digest = json!({"digest": format!("0x{}", "11".repeat(32))});
        for (method, path, body) in [
            ("GET", format!("/v1/keys/{id}"), None),
            ("POST", format!("/v1/keys/{id}/sign"), Some(digest.clone())),
            (
                "POST",
                format!("/v1/keys/{id}/sign-batch"),
                Some(json!({"items": [digest.clone()]})),
            ),
            ("POST", format!("/v1/keys/{id}/disable"), Some(json!({}))),
            ("DELETE", format!("/v1/keys/{id}"), None),
            (
                "POST",
                format!("/v1/keys/{id}/cancel-deletion"),
                Some(json!({})),
            ),
        ] {
            let r = call(method, &path, body, A);
            assert_eq!(
                (r.status, error_code(&r)),
                (404, "key_not_found"),
                "{method} {path}: {}",
                r.body
            );
        }
        let r = call(
            "POST",
            "/v1/verify",
            Some(
                json!({"items": [{"algorithm": "ecdsa-p256", "key_id": id, "digest": format!("0x{}", "11".repeat(32)), "signature": "0x3006020101020101"}]}),
            ),
            A,
        );
        assert_eq!(r.body["results"][0]["reason"], "unknown_key", "{}", r.body);
    }
    let r = call("GET", "/v1/keys", None, A);
    let labels: Vec<&str> = r.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["dapp-a-given"]);
    // The key is untouched by all that.
    let r = call("GET", &format!("/v1/keys/{theirs}"), None, AB);
    assert_eq!(r.body["state"], "active");

    // Transactions: each tenant submits to its own ledger and reads only its own.
    let payload = b"tenant ab's transfer";
    let sig = call(
        "POST",
        &format!("/v1/keys/{theirs}/sign"),
        Some(json!({"message_b64": b64(payload)})),
        AB,
    );
    let envelope = json!({"algorithm": "ecdsa-p256", "key_id": theirs, "payload_b64": b64(payload), "signature": sig.body["signature"]});
    let r = call(
        "POST",
        "/v1/transactions",
        Some(json!({"ledger": "fab-ab", "transactions": [{"envelope": envelope}]})),
        A,
    );
    assert_eq!(
        (r.status, error_code(&r)),
        (404, "unknown_ledger"),
        "a ledger dapp-a does not name: {}",
        r.body
    );
    let r = call(
        "POST",
        "/v1/transactions",
        Some(json!({"ledger": "fab-a", "transactions": [{"envelope": envelope}]})),
        A,
    );
    assert_eq!(
        r.status, 422,
        "dapp-a cannot sign with dapp-ab's key: {}",
        r.body
    );
    assert_eq!(r.body["results"][0]["reason"]["code"], "unknown_key");
    let r = call(
        "POST",
        "/v1/transactions",
        Some(json!({"ledger": "fab-ab", "transactions": [{"envelope": envelope}]})),
        AB,
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let tx = r.body["results"][0]["id"].as_str().unwrap().to_string();
    let r = call("GET", &format!("/v1/transactions/{tx}"), None, AB);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call("GET", &format!("/v1/transactions/{tx}"), None, A);
    assert_eq!((r.status, error_code(&r)), (404, "not_found"), "{}", r.body);
    let r = call(
        "GET",
        &format!("/v1/transactions/0x{}", "ab".repeat(32)),
        None,
        A,
    );
    assert_eq!((r.status, error_code(&r)), (404, "not_found"));
    let r = call("GET", &format!("/v1/transactions/{tx}"), None, &g.token);
    assert_eq!(r.status, 200, "admins read every tenant's: {}", r.body);

    // A disabled key authorises no envelope.
    let payload = b"after the disable";
    let sig = call(
        "POST",
        &format!("/v1/keys/{theirs}/sign"),
        Some(json!({"message_b64": b64(payload)})),
        AB,
    );
    assert_eq!(
        call(
            "POST",
            &format!("/v1/keys/{theirs}/disable"),
            Some(json!({})),
            AB
        )
        .status,
        200
    );
    let envelope = json!({"algorithm": "ecdsa-p256", "key_id": theirs, "payload_b64": b64(payload), "signature": sig.body["signature"]});
    let r = call(
        "POST",
        "/v1/transactions",
        Some(json!({"ledger": "fab-ab", "transactions": [{"envelope": envelope}]})),
        AB,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["results"][0]["reason"]["code"], "key_disabled");
}

#[test]
fn config_check_refuses_leaky_patterns_and_warns_about_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("admin.token"), "t").unwrap();
    let cfg = dir.path().join("gateway.toml");
    let leaky = client_toml("dapp-a", A, "\"dapp-a*\"", "");
    std::fs::write(&cfg, dev_token_config(&data, "", "", &leaky)).unwrap();
    let (ok, out) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
    assert!(
        !ok && out.contains("dapp-a*") && out.contains("separator"),
        "{out}"
    );
    let overlapping = format!(
        "{}{}",
        client_toml("dapp-a", A, "\"dapp-a-*\"", ""),
        client_toml("dapp-b", AB, "\"dapp-a-b-*\"", "")
    );
    std::fs::write(&cfg, dev_token_config(&data, "", "", &overlapping)).unwrap();
    let (ok, out) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning") && out.contains("\"dapp-a\"") && out.contains("\"dapp-b\""),
        "{out}"
    );
}

fn hup(g: &Gateway) {
    assert!(Command::new("kill")
        .args(["-HUP", &g.pid().to_string()])
        .status()
        .unwrap()
        .success());
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sighup_reloads_clients_without_dropping_a_connection_and_refuses_a_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    Gateway::start_dev_in(&data).terminate();
    let cfg = dir.path().join("gateway.toml");
    let one = client_toml("dapp-a", A, "\"dapp-a-*\"", "");
    std::fs::write(&cfg, dev_token_config(&data, "", "", &one)).unwrap();
    let mut g = Gateway::start_config(&cfg, &data);
    assert_eq!(g.call("GET", "/v1/keys", None, Some(NEW)).status, 401);

    // A keep-alive connection opened before the reload keeps working through it.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |token: &str| {
        agent
            .get(&g.url("/v1/keys"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(get(A), 200);
    let two = format!(
        "{one}{}",
        client_toml("dapp-new", NEW, "\"dapp-new-*\"", "")
    );
    std::fs::write(&cfg, dev_token_config(&data, "", "", &two)).unwrap();
    hup(&g);
    wait_until("the new client was not loaded", || get(NEW) == 200);
    assert_eq!(get(A), 200);

    // A config that fails validation is refused; the running clients stay.
    std::fs::write(
        &cfg,
        dev_token_config(&data, "", "", &format!("{two}\n[limits]\nbogus = 1\n")),
    )
    .unwrap();
    hup(&g);
    wait_until("the refusal was not logged", || {
        g.log().contains("config refused")
    });
    assert_eq!(get(NEW), 200);
    // Removing a client takes its access away.
    std::fs::write(&cfg, dev_token_config(&data, "", "", &one)).unwrap();
    hup(&g);
    wait_until("the removed client still works", || get(NEW) == 401);
    assert!(g.terminate().success());
    let reloads: Vec<String> = std::fs::read_to_string(data.join("audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["operation"] == "reload")
        .map(|l| l["result"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reloads, ["ok", "refused", "ok"]);
}

// === the audit trail ===

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// What someone with write access to the disk (and no HSM) can do: rewrite the chain so
/// every `prev` and `seq` fits again.
fn rechain(entries: &[Value]) -> String {
    let mut prev = "0".repeat(64);
    let mut out = String::new();
    for (i, e) in entries.iter().enumerate() {
        let mut e = e.clone();
        e["seq"] = json!(i + 1);
        e["prev"] = json!(prev);
        let line = serde_json::to_string(&e).unwrap();
        prev = hex::encode(openssl::sha::sha256(line.as_bytes()));
        out.push_str(&line);
        out.push('\n');
    }
    out
}

fn verify(log: &std::path::Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["audit", "verify", log.to_str().unwrap()];
    args.extend_from_slice(extra);
    run_cli(&args)
}

#[test]
fn audit_checkpoints_signed_in_the_hsm_expose_truncation_edits_and_rechaining() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let export = dir.path().join("checkpoints.jsonl");
    let audit = format!(
        "[audit]\ncheckpoint_lines = 10\nexport_file = \"{}\"\n",
        export.display()
    );
    let mut g = Gateway::start_configured(&data, "", &audit);
    let k = g.create_key("audited", "ed25519");
    let id = k["id"].as_str().unwrap();
    for i in 0..60 {
        let r = g.post(
            &format!("/v1/keys/{id}/sign"),
            json!({"message_b64": b64(format!("m{i}").as_bytes())}),
        );
        assert_eq!(r.status, 200);
    }
    assert!(g.terminate().success());
    let log = data.join("audit.log");
    let original = std::fs::read_to_string(&log).unwrap();
    let entries = lines(&original);
    let checkpoints = entries
        .iter()
        .filter(|e| e["operation"] == "checkpoint")
        .count();
    assert!(
        checkpoints >= 5,
        "{checkpoints} checkpoints in {} lines",
        entries.len()
    );
    assert_eq!(
        entries.last().unwrap()["operation"],
        "checkpoint",
        "a clean stop signs the head"
    );
    let exported = std::fs::read_to_string(&export).unwrap().lines().count();
    assert_eq!(exported, checkpoints);
    let ex = export.to_str().unwrap();

    let (ok, out) = verify(&log, &["--checkpoints", ex]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("{checkpoints} verified")), "{out}");

    // Truncation: cut the last 15 lines. The chain that is left is intact, but the
    // exported checkpoints name lines the log no longer has.
    let cut: String = original
        .lines()
        .take(entries.len() - 15)
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&log, &cut).unwrap();
    let (ok, out) = verify(&log, &["--checkpoints", ex]);
    assert!(!ok && out.contains("truncated"), "{out}");

    // An edit in place breaks the chain at the next line.
    std::fs::write(
        &log,
        original
            .replacen("\"m", "\"x", 0)
            .replacen("\"sign\"", "\"import\"", 1),
    )
    .unwrap();
    let (ok, out) = verify(&log, &[]);
    assert!(!ok && out.contains("hash chain broken"), "{out}");

    // Delete some sign lines and re-chain everything: seq and prev fit again, but the
    // checkpoints still vouch for the old hashes.
    let mut kept: Vec<Value> = entries.clone();
    let mut dropped = 0;
    kept.retain(|e| {
        let drop = e["operation"] == "sign" && dropped < 5 && e["seq"].as_u64().unwrap() > 20;
        dropped += usize::from(drop);
        !drop
    });
    std::fs::write(&log, rechain(&kept)).unwrap();
    let (ok, out) = verify(&log, &[]);
    assert!(!ok && out.contains("checkpoint"), "{out}");

    // Re-chain and rewrite the checkpoints to the new hashes too: no HSM, no signature.
    let mut forged = kept.clone();
    let mut prev = "0".repeat(64);
    let mut hashes = Vec::new();
    for (i, e) in forged.iter_mut().enumerate() {
        e["seq"] = json!(i + 1);
        e["prev"] = json!(prev);
        if e["operation"] == "checkpoint" {
            let seq = i; // the line before it
            e["checkpoint"]["seq"] = json!(seq);
            e["checkpoint"]["hash"] = json!(hashes[seq - 1]);
        }
        let line = serde_json::to_string(e).unwrap();
        prev = hex::encode(openssl::sha::sha256(line.as_bytes()));
        hashes.push(prev.clone());
    }
    std::fs::write(&log, rechain(&forged)).unwrap();
    let (ok, out) = verify(&log, &[]);
    assert!(!ok && out.contains("signature"), "{out}");

    // Removing the checkpoints as well leaves nothing to vouch: the export still does.
    let bare: Vec<Value> = kept
        .into_iter()
        .filter(|e| e["operation"] != "checkpoint")
        .collect();
    std::fs::write(&log, rechain(&bare)).unwrap();
    let (ok, out) = verify(&log, &["--checkpoints", ex]);
    assert!(!ok, "{out}");
    std::fs::write(&log, &original).unwrap();
    let (ok, out) = verify(&log, &["--checkpoints", ex]);
    assert!(ok, "{out}");
}
