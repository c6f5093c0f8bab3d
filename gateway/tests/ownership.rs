//! Operations the appliance owns: what a client that closes its connection early, sends
//! its body slowly, or floods the gateway with bad tokens can and cannot do to key custody,
//! the audit trail and admission. Each test drives the real binary over raw sockets.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ledger::ScriptNode;
use common::{error_code, pkcs11_tool, Gateway};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::PKey;
use serde_json::{json, Value};

/// The audit key's CKA_ID (`audit::anchor::KEY_ID`), the one internal key in the token.
const AUDIT_KEY_ID: &str = "62736e2d676174657761792d61756469742d636865636b706f696e742d7631";

/// Sends one whole HTTP/1.1 request and closes the socket after `linger` without reading
/// the answer: the client gives up, the gateway must finish what it accepted.
fn fire_and_close(addr: &str, method: &str, path: &str, token: &str, body: &str, linger: Duration) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(req.as_bytes());
    std::thread::sleep(linger);
    let _ = s.shutdown(std::net::Shutdown::Both);
}

/// 0 to 12 ms, spread over the storm.
fn linger(i: usize) -> Duration {
    Duration::from_micros(((i * 7919) % 13) as u64 * 1000)
}

/// CKA_ID (hex) -> how many token objects carry it, from pkcs11-tool's listing.
fn token_ids(dir: &std::path::Path) -> BTreeMap<String, usize> {
    let mut ids = BTreeMap::new();
    for line in pkcs11_tool(dir, &["--list-objects"]).lines() {
        if let Some(id) = line.trim().strip_prefix("ID:") {
            *ids.entry(id.trim().to_string()).or_default() += 1;
        }
    }
    ids
}

fn audit_lines(dir: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// "operation field" for each audit line about one key, in order.
fn key_history(dir: &std::path::Path, id: &str, field: &str) -> Vec<String> {
    audit_lines(dir)
        .iter()
        .filter(|l| l["key_id"] == id)
        .map(|l| {
            format!(
                "{} {}",
                l["operation"].as_str().unwrap(),
                l[field].as_str().unwrap()
            )
        })
        .collect()
}

fn journal_ids(dir: &std::path::Path) -> BTreeSet<String> {
    let mut live = BTreeSet::new();
    for line in std::fs::read_to_string(dir.join("keys.jsonl"))
        .unwrap()
        .lines()
    {
        let v: Value = serde_json::from_str(line).unwrap();
        if let Some(id) = v["put"]["id"].as_str() {
            live.insert(id.to_string());
        }
        if let Some(id) = v["delete"].as_str() {
            live.remove(id);
        }
    }
    live
}

#[test]
fn an_early_close_storm_of_creates_and_sign_batches_leaves_no_orphan_and_no_unaudited_key() {
    let mut g = Gateway::start_dev();
    let signer = g.create_key("storm-signer", "ecdsa-p256");
    let signer_id = signer["id"].as_str().unwrap().to_string();
    let batch = json!({"items": (0..32).map(|i| json!({"digest": format!("0x{:064x}", i)})).collect::<Vec<_>>()}).to_string();
    let n = 150;
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (addr, token, batch, signer_id) = (
                g.addr.clone(),
                g.token.clone(),
                batch.clone(),
                signer_id.clone(),
            );
            std::thread::spawn(move || {
                if i % 3 == 2 {
                    fire_and_close(
                        &addr,
                        "POST",
                        &format!("/v1/keys/{signer_id}/sign-batch"),
                        &token,
                        &batch,
                        linger(i),
                    );
                } else {
                    let alg = ["ecdsa-p256", "ed25519", "ecdsa-secp256k1"][i % 3];
                    let body = json!({"label": format!("storm-{i}"), "algorithm": alg}).to_string();
                    fire_and_close(&addr, "POST", "/v1/keys", &token, &body, linger(i));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // The gateway goes on with what it took; give it the time to finish, then stop it.
    std::thread::sleep(Duration::from_secs(3));
    assert!(g.terminate().success(), "{}", g.log());

    let records = journal_ids(&g.dir);
    let objects = token_ids(&g.dir);
    let audit = audit_lines(&g.dir);
    let created: BTreeSet<String> = audit
        .iter()
        .filter(|l| l["operation"] == "create" && l["result"] == "ok")
        .map(|l| l["key_id"].as_str().unwrap().to_string())
        .collect();
    for (id, count) in &objects {
        if id == AUDIT_KEY_ID {
            continue;
        }
        assert!(records.contains(id), "token object {id} has no key record");
        assert_eq!(*count, 2, "{id}: a key pair is two objects");
    }
    for id in &records {
        assert!(objects.contains_key(id), "record {id} has no token objects");
        assert!(created.contains(id), "record {id} has no create audit line");
    }
    assert!(
        records.len() > 5,
        "the storm created keys: {}",
        records.len()
    );
    let batches = audit
        .iter()
        .filter(|l| l["operation"] == "sign_batch")
        .count();
    assert!(batches > 0, "some sign-batch reached custody");
    let (ok, out) =
        common::run_cli(&["audit", "verify", g.dir.join("audit.log").to_str().unwrap()]);
    assert!(ok, "{out}");
}

#[test]
fn a_slow_body_sign_started_before_a_disable_is_refused_once_the_disable_is_answered() {
    let g = Gateway::start_dev();
    let key = g.create_key("slow", "ecdsa-p256");
    let id = key["id"].as_str().unwrap();
    let body = json!({"digest": format!("0x{}", "42".repeat(32))}).to_string();
    let (head, tail) = body.split_at(10);
    let mut s = TcpStream::connect(&g.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /v1/keys/{id}/sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{head}",
        g.token,
        body.len()
    )
    .unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let r = g.post(&format!("/v1/keys/{id}/disable"), json!({}));
    assert_eq!(r.status, 200, "{}", r.body);
    s.write_all(tail.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("}") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed without an answer");
        answer.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 422"), "{text}");
    assert!(text.contains("key_disabled"), "{text}");
    // The audit trail agrees: the disable, then the refused sign.
    assert_eq!(
        key_history(&g.dir, id, "result"),
        ["create ok", "disable ok", "sign key_disabled"]
    );
}

#[test]
fn a_bad_token_flood_takes_nothing_from_key_operations_and_writes_a_bounded_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_configured(
        dir.path(),
        "",
        "[audit]\nauth_failure_summary_seconds = 2\n",
    );
    let key = g.create_key("flooded", "ed25519");
    let id = key["id"].as_str().unwrap().to_string();
    let before = audit_lines(&g.dir).len();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..8)
        .map(|t| {
            let (addr, stop) = (g.addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 250 {
                    let r = agent
                        .get(&format!("http://{addr}/v1/keys"))
                        .header("Authorization", &format!("Bearer wrong-{t}-{n}"))
                        .call()
                        .unwrap();
                    assert_eq!(r.status().as_u16(), 401);
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut signed = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let r = g.post(
            &format!("/v1/keys/{id}/sign"),
            json!({"message_b64": "aGk="}),
        );
        assert_eq!(
            r.status, 200,
            "a key operation failed during the flood: {}",
            r.body
        );
        signed += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let bad: u64 = flooders.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(bad >= 2000, "{bad} bad-token requests");
    std::thread::sleep(Duration::from_millis(2500));
    let metrics = g.call("GET", "/metrics", None, None).body;
    let line = metrics
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with("bsn_gateway_auth_failures_total{reason=\"invalid\"}"))
        .unwrap()
        .to_string();
    assert!(line.ends_with(&format!(" {bad}")), "{line}, sent {bad}");
    assert!(g.terminate().success());

    let after = audit_lines(&g.dir);
    let added = &after[before..];
    let signs = added.iter().filter(|l| l["operation"] == "sign").count();
    assert_eq!(signs, signed, "every sign has its line");
    let summaries: Vec<&Value> = added
        .iter()
        .filter(|l| l["operation"] == "authenticate")
        .collect();
    // One summary per 2 s at most over ~6 s, however many bad requests.
    assert!(
        (1..=4).contains(&summaries.len()),
        "{} summary lines",
        summaries.len()
    );
    let counted: u64 = summaries.iter().map(|l| l["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, bad, "the summaries account for every failure");
    let other = added.len() - signs - summaries.len();
    assert!(other <= 3, "only checkpoints beside: {other}");
}

/// P-256 envelope signer held by the test, imported into the gateway as verify-only.
struct Signer {
    key: PKey<openssl::pkey::Private>,
    key_id: String,
}

impl Signer {
    fn envelope(&self, payload: &[u8]) -> Value {
        let mut s = openssl::sign::Signer::new(MessageDigest::sha256(), &self.key).unwrap();
        s.update(payload).unwrap();
        json!({"envelope": {
            "algorithm": "ecdsa-p256",
            "key_id": self.key_id,
            "payload_b64": base64::engine::general_purpose::STANDARD.encode(payload),
            "signature": format!("0x{}", hex::encode(s.sign_to_vec().unwrap())),
        }})
    }
}

fn import_signer(g: &Gateway, label: &str) -> Signer {
    let ec = EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
    let pem = String::from_utf8(ec.public_key_to_pem().unwrap()).unwrap();
    let r = g.post(
        "/v1/keys/import",
        json!({"label": label, "algorithm": "ecdsa-p256", "public_key_pem": pem}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    Signer {
        key: PKey::from_ec_key(ec).unwrap(),
        key_id: r.body["id"].as_str().unwrap().into(),
    }
}

/// A metric's value in a fresh scrape; 0 before its first sample.
fn metric(g: &Gateway, series: &str) -> f64 {
    g.metric(series).unwrap_or(0.0)
}

#[test]
fn an_early_close_storm_of_transactions_strands_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let node = ScriptNode::start("http-ledger.js", dir.path());
    let g = Gateway::start_dev_with(
        &dir.path().join("data"),
        &[
            "--ledger".into(),
            format!("fab=http+http://127.0.0.1:{}", node.port),
        ],
    );
    let signer = import_signer(&g, "storm-envelopes");
    let n = 600;
    let payloads: Vec<Vec<u8>> = (0..n)
        .map(|i| format!("payload {i}").into_bytes())
        .collect();
    let bodies: Vec<String> = payloads
        .chunks(4)
        .map(|c| {
            json!({"ledger": "fab", "transactions": c.iter().map(|p| signer.envelope(p)).collect::<Vec<_>>()})
                .to_string()
        })
        .collect();
    let threads: Vec<_> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| {
            let (addr, token) = (g.addr.clone(), g.token.clone());
            std::thread::spawn(move || {
                fire_and_close(&addr, "POST", "/v1/transactions", &token, &body, linger(i))
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Whatever the gateway took is forwarded; nothing waits forever. A request whose
    // client is gone may still be on its way in: settled means nothing pending and no
    // new acceptance for a second.
    let accepted =
        |g: &Gateway| metric(g, "bsn_gateway_transactions_accepted_total{ledger=\"fab\"}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = -1.0;
    loop {
        let (pending, now) = (
            metric(&g, "bsn_gateway_outbox_pending_transactions"),
            accepted(&g),
        );
        if pending == 0.0 && now == last {
            break;
        }
        assert!(Instant::now() < deadline, "pending stuck at {pending}");
        last = now;
        std::thread::sleep(Duration::from_secs(1));
    }
    let delivered: BTreeSet<String> = node
        .received()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    let (mut known, mut unknown) = (0, 0);
    for p in &payloads {
        let id = format!("0x{}", hex::encode(openssl::sha::sha256(p)));
        let r = g.get(&format!("/v1/transactions/{id}"));
        if r.status == 200 {
            assert_eq!(r.body["status"], "forwarded", "{}", r.body);
            assert!(
                delivered.contains(&id),
                "{id} forwarded but not at the node"
            );
            // A resubmit says what the status implies: seen.
            let again = g.post(
                "/v1/transactions",
                json!({"ledger": "fab", "transactions": [signer.envelope(p)]}),
            );
            assert_eq!(again.status, 409, "{}", again.body);
            known += 1;
        } else {
            assert_eq!(r.status, 404, "{}", r.body);
            assert!(!delivered.contains(&id), "{id} delivered yet unknown");
            // Never seen: a resubmit is accepted, not called a replay.
            let again = g.post(
                "/v1/transactions",
                json!({"ledger": "fab", "transactions": [signer.envelope(p)]}),
            );
            assert_eq!(again.status, 202, "{id}: {}", again.body);
            unknown += 1;
        }
    }
    assert!(
        known > 0,
        "the storm got something through ({unknown} never arrived)"
    );
}

#[test]
fn reconcile_marks_missing_keys_and_lists_orphans_which_only_a_stopped_gateway_destroys() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_dev_in(dir.path());
    let gone = g.create_key("gone", "ecdsa-p256");
    let kept = g.create_key("kept", "ed25519");
    assert!(g.terminate().success());
    let gone_id = gone["id"].as_str().unwrap();
    // Another tool removes one key's objects and leaves a key pair of its own.
    pkcs11_tool(
        dir.path(),
        &["--delete-object", "--type", "privkey", "--id", gone_id],
    );
    pkcs11_tool(
        dir.path(),
        &[
            "--keypairgen",
            "--key-type",
            "EC:prime256v1",
            "--id",
            "0badc0de",
            "--label",
            "stray",
        ],
    );

    let mut g = Gateway::start_dev_in(dir.path());
    let r = g.post(
        &format!("/v1/keys/{gone_id}/sign"),
        json!({"digest": format!("0x{}", "11".repeat(32))}),
    );
    assert_eq!(
        (r.status, error_code(&r)),
        (422, "key_object_missing"),
        "{}",
        r.body
    );
    assert_eq!(
        g.get(&format!("/v1/keys/{gone_id}")).body["token_object"],
        "missing"
    );
    let kept_id = kept["id"].as_str().unwrap();
    let r = g.post(
        &format!("/v1/keys/{kept_id}/sign"),
        json!({"message_b64": "aGk="}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let metrics = g.call("GET", "/metrics", None, None).body;
    let metrics = metrics.as_str().unwrap();
    assert!(
        metrics.contains("bsn_gateway_hsm_orphan_objects 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("bsn_gateway_keys_missing_objects 1"),
        "{metrics}"
    );

    let data = dir.path().to_str().unwrap();
    let (ok, out) = common::run_cli(&["hsm", "reconcile", "--dev", "--data-dir", data, "--json"]);
    assert!(ok, "{out}");
    let report: Value = serde_json::from_str(&out[..out.rfind('}').unwrap() + 1]).unwrap();
    assert_eq!(report["missing"], json!([gone_id]));
    assert_eq!(report["orphans"], json!([{"id": "0badc0de", "objects": 2}]));
    let (ok, out) = common::run_cli(&[
        "hsm",
        "reconcile",
        "--dev",
        "--data-dir",
        data,
        "--destroy-orphans",
        "--yes",
    ]);
    assert!(
        !ok && out.contains("running"),
        "refused while the gateway runs: {out}"
    );
    assert!(token_ids(dir.path()).contains_key("0badc0de"));
    assert!(g.terminate().success());
    let (ok, out) = common::run_cli(&[
        "hsm",
        "reconcile",
        "--dev",
        "--data-dir",
        data,
        "--destroy-orphans",
        "--yes",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("destroyed 2"), "{out}");
    let ids = token_ids(dir.path());
    assert!(!ids.contains_key("0badc0de"));
    assert!(
        ids.contains_key(kept_id) && ids.contains_key(AUDIT_KEY_ID),
        "{ids:?}"
    );
    // Destroying the key whose object is gone leaves nothing missing, gauge included.
    let g = Gateway::start_dev_in(dir.path());
    let missing = |g: &Gateway| {
        let text = g.call("GET", "/metrics", None, None).body;
        text.as_str()
            .unwrap()
            .contains("bsn_gateway_keys_missing_objects 1")
    };
    assert!(missing(&g));
    let r = g.delete(&format!("/v1/keys/{gone_id}?now=true"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!missing(&g));
    assert!(g
        .call("GET", "/metrics", None, None)
        .body
        .as_str()
        .unwrap()
        .contains("bsn_gateway_keys_missing_objects 0"));
}

#[test]
fn a_scheduled_deletion_destroys_the_key_when_its_window_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gateway::start_configured(dir.path(), "", "[keys]\ndeletion_window_seconds = 1\n");
    let k = g.create_key("short-lived", "ecdsa-p256");
    let id = k["id"].as_str().unwrap();
    let r = g.delete(&format!("/v1/keys/{id}"));
    assert_eq!(r.body["state"], "pending_deletion", "{}", r.body);
    let deadline = Instant::now() + Duration::from_secs(10);
    while g.get(&format!("/v1/keys/{id}")).status != 404 {
        assert!(Instant::now() < deadline, "not destroyed in time");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!token_ids(dir.path()).contains_key(id));
    assert_eq!(
        key_history(dir.path(), id, "client"),
        ["create admin", "schedule_destroy admin", "destroy -"]
    );
}

#[test]
fn a_disable_racing_a_destroy_never_brings_the_key_back() {
    let mut g = Gateway::start_dev();
    let ids: Vec<String> = (0..24)
        .map(|i| {
            g.create_key(&format!("race-{i}"), "ed25519")["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let threads: Vec<_> = ids
        .iter()
        .flat_map(|id| {
            let (a, b) = (
                (g.addr.clone(), g.token.clone(), id.clone()),
                (g.addr.clone(), g.token.clone(), id.clone()),
            );
            [
                std::thread::spawn(move || {
                    fire_and_close(
                        &a.0,
                        "DELETE",
                        &format!("/v1/keys/{}?now=true", a.2),
                        &a.1,
                        "",
                        Duration::from_millis(200),
                    )
                }),
                std::thread::spawn(move || {
                    fire_and_close(
                        &b.0,
                        "POST",
                        &format!("/v1/keys/{}/disable", b.2),
                        &b.1,
                        "{}",
                        Duration::from_millis(200),
                    )
                }),
            ]
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    for id in &ids {
        assert_eq!(
            g.get(&format!("/v1/keys/{id}")).status,
            404,
            "{id} came back"
        );
    }
    assert!(g.terminate().success());
    assert!(
        journal_ids(&g.dir).is_empty(),
        "the journal still holds destroyed keys"
    );
    let objects = token_ids(&g.dir);
    assert_eq!(objects.keys().collect::<Vec<_>>(), [AUDIT_KEY_ID]);
}
