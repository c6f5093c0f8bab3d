//! Ledger nodes over HTTPS: the node's certificate must chain to the ledger's
//! `tls_ca_file` (or the system roots) and name the host; a ledger that does not trust it
//! never reaches the node, and envelopes reach a trusted one over TLS.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::ledger::ScriptNode;
use common::{dev_token_config, Gateway};
use serde_json::json;

/// A self-signed P-256 certificate for 127.0.0.1, by the openssl CLI.
fn node_certificate(dir: &std::path::Path) -> (String, String) {
    let cert = dir.join("node.pem").to_str().unwrap().to_string();
    let key = dir.join("node.key").to_str().unwrap().to_string();
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=ledger node"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .args(["-keyout", &key, "-out", &cert])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

fn node_up(g: &Gateway, ledger: &str) -> Option<String> {
    let metrics = g.call("GET", "/metrics", None, None).body;
    let prefix = format!("bsn_gateway_ledger_node_up{{ledger=\"{ledger}\"");
    metrics
        .as_str()
        .unwrap()
        .lines()
        .find(|l| l.starts_with(&prefix))
        .map(|l| l.rsplit(' ').next().unwrap().to_string())
}

#[test]
fn https_nodes_are_reached_only_through_a_certificate_the_ledger_trusts() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = node_certificate(tmp.path());
    let node = ScriptNode::start_with("http-ledger.js", tmp.path(), &[&cert, &key]);
    let url = format!("https://127.0.0.1:{}", node.port);

    let dir = tmp.path().join("gw");
    let mut first = Gateway::start_dev_in(&dir);
    assert!(first.terminate().success());
    let ledgers = format!(
        "[[ledgers]]\nname = \"secure\"\nkind = \"http\"\nnodes = [\"{url}\"]\ntls_ca_file = \"{cert}\"\n\
         [[ledgers]]\nname = \"untrusting\"\nkind = \"http\"\nnodes = [\"{url}\"]\n"
    );
    let config = dir.join("tls.toml");
    std::fs::write(&config, dev_token_config(&dir, "", "", &ledgers)).unwrap();
    let g = Gateway::start_config(&config, &dir);

    let deadline = Instant::now() + Duration::from_secs(30);
    while node_up(&g, "secure").as_deref() != Some("1") {
        assert!(
            Instant::now() < deadline,
            "the trusted ledger never reached its node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The same node, without its CA: the handshake fails verification every time.
    assert_eq!(node_up(&g, "untrusting").as_deref(), Some("0"));
    assert_eq!(g.get("/readyz").body["checks"]["ledgers"], false);

    // Envelopes signed by a custody key: to the untrusting ledger first (accepted, durable,
    // never sent), then to the trusted one, which delivers over TLS.
    let k = g.create_key("tls-signer", "ed25519");
    let submit = |ledger: &str, payload: &[u8]| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
        let sig = g.post(
            &format!("/v1/keys/{}/sign", k["id"].as_str().unwrap()),
            json!({"message_b64": b64}),
        );
        assert_eq!(sig.status, 200);
        let envelope = json!({"algorithm": "ed25519", "key_id": k["id"], "payload_b64": b64,
                              "signature": sig.body["signature"]});
        let r = g.post(
            "/v1/transactions",
            json!({"ledger": ledger, "transactions": [{"envelope": envelope}]}),
        );
        assert_eq!(r.status, 202, "{:?}", r.body);
        (
            r.body["results"][0]["id"].as_str().unwrap().to_string(),
            b64,
        )
    };
    let (stuck, _) = submit("untrusting", b"held back");
    let (_, b64) = submit("secure", b"block proposal 7");
    let deadline = Instant::now() + Duration::from_secs(30);
    while node.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the envelope never reached the node"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let received = node.received();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0]["envelope"]["payload_b64"], b64);
    let status = g.get(&format!("/v1/transactions/{stuck}"));
    assert_eq!(status.body["status"], "accepted", "{:?}", status.body);
    assert_eq!(node_up(&g, "untrusting").as_deref(), Some("0"));
}
