//! Transactions end to end against a real Ethereum node (ganache) with transactions signed
//! by ethers.js: admission, rejection, durability across node outages and `kill -9`.

mod common;

use std::time::{Duration, Instant};

use alloy_rlp::Header;
use common::ledger::{self, Ganache, Signed, CHAIN_ID};
use common::{error_code, Gateway};
use serde_json::{json, Value};
use sha3::Digest;

fn keccak_hex(raw: &str) -> String {
    format!(
        "0x{}",
        hex::encode(sha3::Keccak256::digest(common::unhex(raw)))
    )
}

fn submit(g: &Gateway, ledger: &str, raws: &[&str]) -> common::Reply {
    let txs: Vec<Value> = raws.iter().map(|r| json!({"raw": r})).collect();
    g.post(
        "/v1/transactions",
        json!({"ledger": ledger, "transactions": txs}),
    )
}

fn dev_with_ledger(dir: &std::path::Path, flags: &[String]) -> Gateway {
    let g = Gateway::start_dev_with(dir, flags);
    wait_ready(&g);
    g
}

/// Ready means the ledger's chain id is known and a node answers.
fn wait_ready(g: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.get("/readyz").status != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            g.get("/readyz").body
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_status(g: &Gateway, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = g.get(&format!("/v1/transactions/{id}"));
        if r.body["status"] == want {
            return r.body;
        }
        assert!(Instant::now() < deadline, "{id}: {}", r.body);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until each is `forwarded`; fails at once on `failed`, and on timeout shows one
/// status and the gateway's log.
fn wait_all_forwarded(g: &Gateway, txs: &[Signed], within: Duration) {
    let deadline = Instant::now() + within;
    let mut open: Vec<&Signed> = txs.iter().collect();
    while !open.is_empty() {
        open.retain(|t| {
            let s = g.get(&format!("/v1/transactions/{}", t.hash)).body;
            assert_ne!(s["status"], "failed", "{}: {s}", t.hash);
            s["status"] != "forwarded"
        });
        if Instant::now() > deadline {
            let s = g.get(&format!("/v1/transactions/{}", open[0].hash)).body;
            panic!("{} not forwarded, e.g. {s}\n{}", open.len(), g.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_mined_once(node: &Ganache) {
    let mined = node.mined_hashes();
    let unique: std::collections::HashSet<&String> = mined.iter().collect();
    assert_eq!(unique.len(), mined.len(), "a transaction was mined twice");
}

/// Rebuilds a signed typed transaction with other y-parity, r and s (RLP by alloy-rlp).
fn resign(raw: &str, edit: impl Fn(&mut [Vec<u8>])) -> String {
    let bytes = common::unhex(raw);
    assert!(bytes[0] <= 2, "a typed transaction");
    let mut body = &bytes[1..];
    let payload = Header::decode_bytes(&mut body, true).unwrap();
    let mut items: Vec<Vec<u8>> = Vec::new();
    let mut rest = payload;
    while !rest.is_empty() {
        let start = rest;
        let h = Header::decode(&mut rest).unwrap();
        rest = &rest[h.payload_length..];
        items.push(start[..start.len() - rest.len()].to_vec());
    }
    edit(&mut items);
    let len: usize = items.iter().map(Vec::len).sum();
    let mut out = vec![bytes[0]];
    Header {
        list: true,
        payload_length: len,
    }
    .encode(&mut out);
    for i in items {
        out.extend(i);
    }
    format!("0x{}", hex::encode(out))
}

fn rlp_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    let mut out = Vec::new();
    alloy_rlp::Encodable::encode(&trimmed.as_slice(), &mut out);
    out
}

fn rlp_payload(item: &[u8]) -> Vec<u8> {
    let mut b = item;
    Header::decode_bytes(&mut b, false).unwrap().to_vec()
}

const SECP_N: &str = "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141";

/// n - s, and the other y parity: the same signature made high-S.
fn high_s(raw: &str) -> String {
    resign(raw, |items| {
        let n = items.len();
        let s = openssl::bn::BigNum::from_slice(&rlp_payload(&items[n - 1])).unwrap();
        let order = openssl::bn::BigNum::from_hex_str(SECP_N).unwrap();
        let mut flipped = openssl::bn::BigNum::new().unwrap();
        flipped.checked_sub(&order, &s).unwrap();
        items[n - 1] = rlp_uint(&flipped.to_vec());
        items[n - 3] = if items[n - 3] == [0x80] {
            vec![0x01]
        } else {
            vec![0x80]
        };
    })
}

#[test]
fn ethers_signed_transactions_of_every_type_are_forwarded_and_mined() {
    let keys: Vec<String> = (0..3).map(|i| ledger::key("mined", i)).collect();
    let node = Ganache::start(&keys);
    let dir = tempfile::tempdir().unwrap();
    let g = dev_with_ledger(
        dir.path(),
        &[format!("--ledger=eth=ethereum+{}", node.url())],
    );

    let txs = ledger::batch(&keys, 4, CHAIN_ID);
    let raws: Vec<&str> = txs.iter().map(|t| t.raw.as_str()).collect();
    let r = submit(&g, "eth", &raws);
    assert_eq!(r.status, 202, "{}", r.body);
    for (res, t) in r.body["results"].as_array().unwrap().iter().zip(&txs) {
        assert_eq!(res["status"], "accepted", "{res}");
        assert_eq!(
            res["id"],
            t.hash.as_str(),
            "the id is ethers' transaction hash"
        );
        assert_eq!(
            res["sender"],
            t.from.as_str(),
            "the sender ethers signed with"
        );
    }
    let hashes: Vec<String> = txs.iter().map(|t| t.hash.clone()).collect();
    for receipt in node.wait_mined(&hashes, Duration::from_secs(60)) {
        assert_eq!(receipt["status"], "0x1", "{receipt}");
    }
    for t in &txs {
        let s = wait_status(&g, &t.hash, "forwarded");
        assert_eq!(s["ledger"], "eth");
        assert_eq!(s["node"], node.url());
        assert!(s["attempts"].as_u64().unwrap() >= 1);
        assert_eq!(
            s["node_response"],
            t.hash.as_str(),
            "the node answers with the hash"
        );
    }
    for k in &txs[..3] {
        assert_eq!(node.nonce(&k.from), 4);
    }
    assert_mined_once(&node);
    let missing = format!("0x{}", "ab".repeat(32));
    assert_eq!(g.get(&format!("/v1/transactions/{missing}")).status, 404);
    assert_eq!(g.get("/v1/transactions/nothex").status, 404);
    let m = g.get("/metrics").body.as_str().unwrap_or("").to_string();
    assert!(
        m.contains("bsn_gateway_transactions_accepted_total{ledger=\"eth\"} 12"),
        "{m}"
    );
    assert!(m.contains("bsn_gateway_outbox_fsync_duration_seconds_count"));
}

#[test]
fn bad_transactions_are_rejected_and_never_reach_the_node() {
    let keys: Vec<String> = (0..2).map(|i| ledger::key("bad", i)).collect();
    let node = Ganache::start(&keys);
    let dir = tempfile::tempdir().unwrap();
    let mut g = dev_with_ledger(
        dir.path(),
        &[format!("--ledger=eth=ethereum+{}", node.url())],
    );

    let good = ledger::batch(&keys[..1], 2, CHAIN_ID);
    let spec = |chain_id, tx_type| ledger::Spec {
        key: keys[0].clone(),
        nonce: 5,
        tx_type,
        chain_id,
    };
    let odd = ledger::sign(&[spec(999, 2), spec(0, 0)]);
    let high = high_s(&good[1].raw);
    let bad_r = resign(&good[1].raw, |items| {
        let n = items.len();
        items[n - 2] = rlp_uint(&hex::decode(SECP_N).unwrap());
    });
    let cases: Vec<(&str, &str)> = vec![
        (odd[0].raw.as_str(), "wrong_chain_id"),
        (odd[1].raw.as_str(), "no_chain_id"),
        (high.as_str(), "high_s"),
        (bad_r.as_str(), "bad_signature"),
        ("0xc58080", "bad_encoding"),
        ("0x1234", "unsupported_type"),
        ("0x03c0", "unsupported_type"),
        ("zz", "bad_encoding"),
    ];
    let raws: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let r = submit(&g, "eth", &raws);
    assert_eq!(r.status, 422, "nothing accepted: {}", r.body);
    assert_eq!(error_code(&r), "rejected");
    for (res, (raw, code)) in r.body["results"].as_array().unwrap().iter().zip(&cases) {
        assert_eq!(res["status"], "rejected");
        assert_eq!(res["reason"]["code"], *code, "{raw}: {res}");
        assert!(res["reason"]["message"].as_str().unwrap().len() > 3);
    }

    // One good transaction twice in a request, then again: a replay.
    let r = submit(&g, "eth", &[&good[0].raw, &good[0].raw]);
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["results"][0]["status"], "accepted");
    assert_eq!(r.body["results"][1]["reason"]["code"], "replayed");
    let r = submit(&g, "eth", &[&good[0].raw]);
    assert_eq!((r.status, error_code(&r)), (409, "replayed"), "{}", r.body);
    node.wait_mined(&[good[0].hash.clone()], Duration::from_secs(30));
    let r = submit(&g, "eth", &[&good[0].raw]);
    assert_eq!(r.status, 409, "still a replay after it was forwarded");

    // Envelopes do not go to Ethereum ledgers; unknown ledgers are 404.
    let r = g.post(
        "/v1/transactions",
        json!({"ledger": "eth", "transactions": [{"envelope": {"algorithm": "ed25519", "key_id": "x", "payload_b64": "", "signature": ""}}]}),
    );
    assert_eq!(r.body["results"][0]["reason"]["code"], "wrong_ledger_kind");
    let r = g.post(
        "/v1/transactions",
        json!({"ledger": "nope", "transactions": [{"raw": good[1].raw}]}),
    );
    assert_eq!((r.status, error_code(&r)), (404, "unknown_ledger"));

    // A valid transaction from an account with no ether: accepted, then failed with the
    // node's message rather than retried forever.
    let poor = ledger::sign(&[ledger::Spec {
        key: ledger::key("poor", 0),
        nonce: 0,
        tx_type: 2,
        chain_id: CHAIN_ID,
    }]);
    let r = submit(&g, "eth", &[&poor[0].raw]);
    assert_eq!(r.status, 202, "{}", r.body);
    let s = wait_status(&g, &poor[0].hash, "failed");
    assert!(
        s["node_response"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("insufficient funds"),
        "{s}"
    );

    // Every rejected transaction the node could have recognised: it never saw them.
    for raw in [
        odd[0].raw.as_str(),
        odd[1].raw.as_str(),
        high.as_str(),
        bad_r.as_str(),
    ] {
        assert!(
            node.transaction(&keccak_hex(raw)).is_null(),
            "{raw} reached the node"
        );
    }
    let m = g.get("/metrics").body.as_str().unwrap_or("").to_string();
    assert!(m.contains("reason=\"high_s\""), "{m}");
    g.terminate();

    // Quotas and a sender allow-list come from the config file.
    let (dapp_token, dapp_hash) = bsn_gateway::auth::new_token();
    let dapp_token = dapp_token.expose().to_string();
    let (reader_token, reader_hash) = bsn_gateway::auth::new_token();
    let reader_token = reader_token.expose().to_string();
    let tail = format!(
        "[[clients]]\nname = \"dapp\"\ntoken_sha256 = \"{dapp_hash}\"\noperations = [\"transactions\"]\nkeys = []\nledgers = [\"eth\"]\ntransactions_per_second = 0.5\ntransactions_burst = 2\n\n[[clients]]\nname = \"reader\"\ntoken_sha256 = \"{reader_hash}\"\noperations = [\"verify\"]\nkeys = []\n\n[[ledgers]]\nname = \"eth\"\nkind = \"ethereum\"\nnodes = [\"{}\"]\nsenders = [\"{}\"]\n",
        node.url(),
        good[0].from
    );
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, common::dev_token_config(dir.path(), "", "", &tail)).unwrap();
    let g = Gateway::start_config(&cfg, dir.path());
    wait_ready(&g);
    let other = ledger::batch(&keys[1..], 1, CHAIN_ID);
    let flipped = resign(&good[1].raw, |items| {
        let n = items.len();
        let mut r = rlp_payload(&items[n - 2]);
        r[31] ^= 1;
        items[n - 2] = rlp_uint(&r);
    });
    let body = |raws: &[&str]| {
        let txs: Vec<Value> = raws.iter().map(|r| json!({"raw": r})).collect();
        json!({"ledger": "eth", "transactions": txs}).to_string()
    };
    let call = |raws: &[&str]| {
        g.call(
            "POST",
            "/v1/transactions",
            Some(body(raws).as_bytes()),
            Some(&dapp_token),
        )
    };
    let r = call(&[&other[0].raw, &flipped]);
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.body["results"][0]["reason"]["code"], "sender_not_allowed");
    // A flipped bit in r recovers another sender, or none when r is off the curve.
    let code = &r.body["results"][1]["reason"]["code"];
    assert!(
        code == "sender_not_allowed" || code == "bad_signature",
        "{code}"
    );
    // The burst of 2 is spent; the next one is over quota.
    let r = call(&[&good[1].raw]);
    assert_eq!(
        (r.status, error_code(&r)),
        (429, "quota_exceeded"),
        "{}",
        r.body
    );
    assert!(r.retry_after.is_some());
    for raw in [
        other[0].raw.as_str(),
        flipped.as_str(),
        good[1].raw.as_str(),
    ] {
        assert!(
            node.transaction(&keccak_hex(raw)).is_null(),
            "{raw} reached the node"
        );
    }
    let r = g.call("GET", "/v1/verify", None, Some(&dapp_token));
    assert_eq!(r.status, 405);
    // A client without the transactions operation can neither submit nor read.
    let r = g.call(
        "POST",
        "/v1/transactions",
        Some(body(&[&good[1].raw]).as_bytes()),
        Some(&reader_token),
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"), "{}", r.body);
    let r = g.call(
        "GET",
        &format!("/v1/transactions/{}", good[0].hash),
        None,
        Some(&reader_token),
    );
    assert_eq!((r.status, error_code(&r)), (403, "forbidden"), "{}", r.body);
}

#[test]
fn malformed_transaction_requests_get_typed_errors_and_nothing_panics() {
    let dir = tempfile::tempdir().unwrap();
    // Nodes that never answer: admission does not need them, but an Ethereum ledger
    // cannot check chain ids before one has.
    let g = Gateway::start_dev_with(
        dir.path(),
        &[
            format!("--ledger=fab=http+http://127.0.0.1:{}", ledger::free_port()),
            format!(
                "--ledger=eth=ethereum+http://127.0.0.1:{}",
                ledger::free_port()
            ),
        ],
    );
    let t = Some(g.token.as_str());
    let many: Vec<Value> = (0..1025).map(|_| json!({"raw": "0x00"})).collect();
    let big = format!(
        "{{\"ledger\": \"fab\", \"transactions\": [{{\"raw\": \"0x{}\"}}]}}",
        "00".repeat(600_000)
    );
    let id = format!("/v1/transactions/0x{}", "ab".repeat(32));
    type Case<'a> = (&'a str, &'a str, Vec<u8>, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("POST", "/v1/transactions", b"".to_vec(), t, 400, "malformed_json"),
        ("POST", "/v1/transactions", b"{\"ledger\":".to_vec(), t, 400, "malformed_json"),
        ("POST", "/v1/transactions", b"{}".to_vec(), t, 400, "invalid_request"),
        ("POST", "/v1/transactions", br#"{"ledger":"fab","transactions":[],"x":1}"#.to_vec(), t, 400, "invalid_request"),
        ("POST", "/v1/transactions", br#"{"ledger":"fab","transactions":"no"}"#.to_vec(), t, 400, "invalid_request"),
        ("POST", "/v1/transactions", br#"{"ledger":"fab","transactions":[]}"#.to_vec(), t, 400, "invalid_request"),
        ("POST", "/v1/transactions", br#"{"ledger":"fab","transactions":[{"envelope":{"algorithm":"ed25519","key_id":"k","payload_b64":"","signature":"","bogus":1}}]}"#.to_vec(), t, 400, "invalid_request"),
        ("POST", "/v1/transactions", json!({"ledger": "fab", "transactions": many}).to_string().into_bytes(), t, 413, "too_many_items"),
        ("POST", "/v1/transactions", big.into_bytes(), t, 413, "body_too_large"),
        ("POST", "/v1/transactions", br#"{"ledger":"fab","transactions":[{"raw":"0x00"}]}"#.to_vec(), None, 401, "unauthenticated"),
        ("POST", "/v1/transactions", br#"{"ledger":"fab","transactions":[{"raw":"0x00"}]}"#.to_vec(), Some("bsn_wrong"), 401, "unauthenticated"),
        ("POST", "/v1/transactions", br#"{"ledger":"nope","transactions":[{"raw":"0x00"}]}"#.to_vec(), t, 404, "unknown_ledger"),
        ("POST", "/v1/transactions", br#"{"ledger":"eth","transactions":[{"raw":"0x02c0"}]}"#.to_vec(), t, 503, "ledger_unavailable"),
        ("GET", "/v1/transactions", vec![], t, 405, "method_not_allowed"),
        ("DELETE", &id, vec![], t, 405, "method_not_allowed"),
        ("GET", &id, vec![], None, 401, "unauthenticated"),
        ("GET", "/v1/transactions/0xzz", vec![], t, 404, "not_found"),
        ("GET", &id, vec![], t, 404, "not_found"),
    ];
    for (method, path, body, token, status, code) in &cases {
        let body = (*method != "GET" && *method != "DELETE").then_some(body.as_slice());
        let r = g.call(method, path, body, *token);
        assert_eq!(
            (r.status, error_code(&r)),
            (*status, *code),
            "{method} {path}: {}",
            r.body
        );
        if *status == 503 {
            assert!(r.retry_after.is_some());
        }
    }
    // Refused batches count against their ledger, like every other rejection.
    let metrics = g.call("GET", "/metrics", None, None).body;
    let metrics = metrics.as_str().unwrap();
    for series in [
        "bsn_gateway_transactions_rejected_total{ledger=\"fab\",reason=\"too_many_items\"} 1025",
        "bsn_gateway_transactions_rejected_total{ledger=\"fab\",reason=\"invalid_request\"} 0",
    ] {
        assert!(metrics.contains(series), "{series} not in {metrics}");
    }

    // Bad items are rejected one by one, each with its reason.
    let key = g.create_key("fab-key", "ecdsa-p256");
    let env = |extra: Value| {
        let mut e = json!({"algorithm": "ecdsa-p256", "key_id": key["id"], "payload_b64": "cGF5", "signature": "0x00"});
        e.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"envelope": e})
    };
    let items = vec![
        (json!({}), "invalid_item"),
        (
            json!({"raw": "0x02c0", "envelope": env(json!({}))["envelope"]}),
            "invalid_item",
        ),
        (json!({"raw": "0x02c0"}), "wrong_ledger_kind"),
        (env(json!({"payload_b64": "!!"})), "invalid_item"),
        (env(json!({"algorithm": "rsa"})), "invalid_item"),
        (env(json!({"signature": "zz"})), "invalid_item"),
        (env(json!({"format": "eth"})), "invalid_item"),
        (env(json!({"key_id": "k"})), "unknown_key"),
        (env(json!({"algorithm": "ed25519"})), "algorithm_mismatch"),
        (env(json!({})), "bad_encoding"),
        (
            env(json!({"key_id": null, "certificate_pem": "x"})),
            "untrusted_certificate",
        ),
    ];
    let txs: Vec<Value> = items.iter().map(|(t, _)| t.clone()).collect();
    let r = g.post(
        "/v1/transactions",
        json!({"ledger": "fab", "transactions": txs}),
    );
    assert_eq!((r.status, error_code(&r)), (422, "rejected"), "{}", r.body);
    for (res, (item, code)) in r.body["results"].as_array().unwrap().iter().zip(&items) {
        assert_eq!(res["reason"]["code"], *code, "{item}: {res}");
    }
    assert_eq!(g.get("/healthz").status, 200);
    assert!(!g.log().contains("panicked"), "{}", g.log());
}

#[test]
fn transactions_wait_while_the_node_is_down_and_are_mined_once_when_it_is_back() {
    let keys: Vec<String> = (0..2).map(|i| ledger::key("down", i)).collect();
    let mut node = Ganache::start(&keys);
    let dir = tempfile::tempdir().unwrap();
    let dead = format!("http://127.0.0.1:{}", ledger::free_port());
    let g = dev_with_ledger(
        dir.path(),
        &[
            format!("--ledger=eth=ethereum+{}", node.url()),
            format!("--ledger=eth=ethereum+{dead}"),
        ],
    );
    node.stop();
    let txs = ledger::batch(&keys, 10, CHAIN_ID);
    for chunk in txs.chunks(5) {
        let raws: Vec<&str> = chunk.iter().map(|t| t.raw.as_str()).collect();
        let r = submit(&g, "eth", &raws);
        assert_eq!(r.status, 202, "accepted while the node is down: {}", r.body);
    }
    std::thread::sleep(Duration::from_secs(2));
    for t in &txs {
        let s = g.get(&format!("/v1/transactions/{}", t.hash));
        assert_eq!(s.body["status"], "accepted", "{}", s.body);
    }
    let m = g.get("/metrics").body.as_str().unwrap_or("").to_string();
    assert!(
        m.contains("bsn_gateway_outbox_pending_transactions 20"),
        "{m}"
    );
    assert!(
        m.contains(&format!(
            "bsn_gateway_ledger_node_up{{ledger=\"eth\",node=\"{dead}\"}} 0"
        )),
        "{m}"
    );

    node.resume();
    wait_all_forwarded(&g, &txs, Duration::from_secs(90));
    let hashes: Vec<String> = txs.iter().map(|t| t.hash.clone()).collect();
    node.wait_mined(&hashes, Duration::from_secs(90));
    for t in &txs {
        let s = wait_status(&g, &t.hash, "forwarded");
        assert_eq!(s["node"], node.url(), "only the live node delivers");
    }
    for t in &txs[..2] {
        assert_eq!(node.nonce(&t.from), 10);
    }
    assert_mined_once(&node);
    let m = g.get("/metrics").body.as_str().unwrap_or("").to_string();
    assert!(
        m.contains("bsn_gateway_outbox_pending_transactions 0"),
        "{m}"
    );
}

#[test]
fn kill_9_during_a_stream_loses_no_accepted_transaction() {
    // Many senders, few nonces each: one sender's transactions are delivered one at a time,
    // so senders are what the forwarder runs in parallel.
    let keys: Vec<String> = (0..100).map(|i| ledger::key("crash", i)).collect();
    let node = Ganache::start(&keys);
    let valid = ledger::batch(&keys, 10, CHAIN_ID);
    // Every 50th a transaction for another chain, which must be rejected and never mined.
    let foreign = ledger::sign(
        &(0..20)
            .map(|i| ledger::Spec {
                key: keys[i].clone(),
                nonce: 1000 + i as u64,
                tx_type: 2,
                chain_id: 7,
            })
            .collect::<Vec<_>>(),
    );
    let mut stream: Vec<(&Signed, bool)> = Vec::new();
    for (i, t) in valid.iter().enumerate() {
        stream.push((t, true));
        if i % 50 == 49 {
            stream.push((&foreign[i / 50], false));
        }
    }
    assert!(stream.len() >= 1000);

    let dir = tempfile::tempdir().unwrap();
    let flags = [format!("--ledger=eth=ethereum+{}", node.url())];
    let mut g = dev_with_ledger(dir.path(), &flags);
    let addr = g.addr.clone();
    let token = g.token.clone();

    // Stream requests of 4 from a second thread; kill -9 the gateway mid-stream.
    let answered = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Option<Value>>::new()));
    let sender = {
        let answered = answered.clone();
        let chunks: Vec<Vec<String>> = stream
            .chunks(4)
            .map(|c| c.iter().map(|(t, _)| t.raw.clone()).collect())
            .collect();
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into();
            for raws in chunks {
                let txs: Vec<Value> = raws.iter().map(|r| json!({"raw": r})).collect();
                let body = json!({"ledger": "eth", "transactions": txs}).to_string();
                let reply = agent
                    .post(&format!("http://{addr}/v1/transactions"))
                    .header("Authorization", &format!("Bearer {token}"))
                    .send(body.as_bytes())
                    .ok()
                    .and_then(|mut r| r.body_mut().read_json::<Value>().ok());
                let stop = reply.is_none();
                answered.lock().unwrap().push(reply);
                if stop {
                    return;
                }
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered.lock().unwrap().len() < 100 {
        assert!(Instant::now() < deadline, "the stream is too slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    g.kill9();
    sender.join().unwrap();

    // What the client heard before the kill.
    let answered = answered.lock().unwrap().clone();
    let mut accepted = std::collections::HashSet::new();
    let mut heard = 0;
    for (chunk, reply) in stream.chunks(4).zip(&answered) {
        let Some(reply) = reply else { break };
        heard += chunk.len();
        for ((t, ok), res) in chunk.iter().zip(reply["results"].as_array().unwrap()) {
            assert_eq!(res["status"] == "accepted", *ok, "{res}");
            if *ok {
                accepted.insert(t.hash.clone());
            }
        }
    }
    assert!(
        accepted.len() >= 300,
        "{} accepted before the kill",
        accepted.len()
    );
    assert!(heard < stream.len(), "the kill came mid-stream");

    // Restart on the same data dir; send what was not answered (as a client would), in
    // order. What was durable already is a replay; the rest is accepted now.
    let g = dev_with_ledger(dir.path(), &flags);
    for chunk in stream[heard..].chunks(8) {
        let raws: Vec<&str> = chunk.iter().map(|(t, _)| t.raw.as_str()).collect();
        let r = submit(&g, "eth", &raws);
        assert!(
            r.status == 202 || r.status == 409 || r.status == 422,
            "{}",
            r.body
        );
        for ((_, ok), res) in chunk.iter().zip(r.body["results"].as_array().unwrap()) {
            let code = res["reason"]["code"].as_str().unwrap_or("");
            assert_eq!(
                res["status"] == "accepted" || code == "replayed",
                *ok,
                "{res}"
            );
            if !ok {
                assert_eq!(code, "wrong_chain_id");
            }
        }
    }
    // Every valid transaction is now accepted: each must end forwarded, none failed.
    wait_all_forwarded(&g, &valid, Duration::from_secs(240));
    let hashes: Vec<String> = valid.iter().map(|t| t.hash.clone()).collect();
    node.wait_mined(&hashes, Duration::from_secs(120));
    for t in &foreign {
        assert!(
            node.transaction(&t.hash).is_null(),
            "a rejected transaction was mined"
        );
    }
    for t in &valid[..100] {
        assert_eq!(node.nonce(&t.from), 10);
    }
    assert_mined_once(&node);
}

#[test]
fn one_senders_transactions_reach_the_node_in_the_order_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    // The node refuses the first attempt at every nonce that is 1 mod 4 with a 503, so
    // those are retried after a backoff: without per-sender order, the later nonces would
    // overtake them.
    let node = ledger::ScriptNode::start("eth-recorder.js", tmp.path());
    let g = dev_with_ledger(
        &tmp.path().join("gw"),
        &[format!(
            "--ledger=eth=ethereum+http://127.0.0.1:{}",
            node.port
        )],
    );
    let keys: Vec<String> = (0..3).map(|i| ledger::key("order", i)).collect();
    let per_key = 12;
    let txs = ledger::batch(&keys, per_key, CHAIN_ID);
    for chunk in txs.chunks(9) {
        let raws: Vec<&str> = chunk.iter().map(|t| t.raw.as_str()).collect();
        let r = submit(&g, "eth", &raws);
        assert_eq!(r.status, 202, "{:?}", r.body);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let taken = loop {
        let taken = node.received();
        if taken.len() == txs.len() {
            break taken;
        }
        assert!(
            Instant::now() < deadline,
            "the node took {} of {}",
            taken.len(),
            txs.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    for t in &txs[..keys.len()] {
        let nonces: Vec<u64> = taken
            .iter()
            .filter(|x| x["from"] == t.from.as_str())
            .map(|x| x["nonce"].as_u64().unwrap())
            .collect();
        assert_eq!(
            nonces,
            (0..per_key).collect::<Vec<_>>(),
            "sender {}",
            t.from
        );
    }
}
