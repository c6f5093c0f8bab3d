//! The command line: audit chain verification, config checks, graceful shutdown, TLS.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

fn run(args: &[&str]) -> (bool, String) {
    run_cli(args)
}

#[test]
fn the_audit_chain_verifies_and_tampering_is_detected() {
    let mut g = Gateway::start_dev();
    let k = g.create_key("audited", "ecdsa-p256");
    let id = k["id"].as_str().unwrap();
    let digest = format!("0x{}", "5a".repeat(32));
    assert_eq!(
        g.post(&format!("/v1/keys/{id}/sign"), json!({"digest": digest}))
            .status,
        200
    );
    assert_eq!(
        g.post(
            &format!("/v1/keys/{id}/sign-batch"),
            json!({"items": [{"digest": digest}]})
        )
        .status,
        200
    );
    assert_eq!(g.call("GET", "/v1/keys", None, Some("bad")).status, 401);
    assert_eq!(
        g.post(&format!("/v1/keys/{id}/disable"), json!({})).status,
        200
    );
    assert_eq!(g.delete(&format!("/v1/keys/{id}")).status, 200);
    assert!(g.terminate().success());

    let log = g.dir.join("audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    let ops: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["operation"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        ops,
        [
            "create",
            "sign",
            "sign_batch",
            "disable",
            "schedule_destroy",
            "checkpoint"
        ],
        "a failed authentication is counted, not written per request; a clean stop ends with a signed checkpoint"
    );
    let sign: serde_json::Value = serde_json::from_str(text.lines().nth(1).unwrap()).unwrap();
    assert_eq!(sign["key_id"], id);
    assert_eq!(sign["result"], "ok");
    let want = hex::encode(openssl::sha::sha256(&unhex(&digest)));
    assert_eq!(
        sign["subject_sha256"],
        want.as_str(),
        "the hash of what was signed"
    );

    let (ok, out) = run(&["audit", "verify", log.to_str().unwrap()]);
    assert!(ok, "{out}");
    assert!(out.contains("6 entries"), "{out}");
    assert!(out.contains("1 verified with the audit key"), "{out}");

    std::fs::write(&log, text.replacen("\"sign_batch\"", "\"sign\"", 1)).unwrap();
    let (ok, out) = run(&["audit", "verify", log.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        out.contains("line 4"),
        "the line after the edited one breaks: {out}"
    );
}

#[test]
fn config_check_accepts_good_files_and_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let (_, tok) = run(&["token", "new"]);
    let hash = tok
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = "))
        .unwrap()
        .to_string();
    let text = format!(
        "data_dir = \"/var/lib/bsn-gateway\"\n[server]\nlisten = \"127.0.0.1:8443\"\n[hsm]\ntoken_label = \"bsn\"\npin = {{ env = \"BSN_HSM_PIN\" }}\n[[clients]]\nname = \"a\"\ntoken_sha256 = {hash}\noperations = [\"keys:sign\"]\nkeys = [\"a-*\"]\n"
    );
    std::fs::write(&good, &text).unwrap();
    let (ok, out) = run(&["config", "check", good.to_str().unwrap()]);
    assert!(ok, "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("[server]", "[server]\nlisen = 1")).unwrap();
    let (ok, out) = run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("lisen"), "{out}");
    std::fs::write(
        &bad,
        text.replace("profile", "x")
            .replace("[hsm]", "[hsm]\nprofile = \"luna-typo\""),
    )
    .unwrap();
    let (ok, out) = run(&["config", "check", bad.to_str().unwrap()]);
    assert!(!ok && out.contains("luna-typo"), "{out}");

    // A ledger's trust files are read by the check: a missing one, then a real one.
    let roots = dir.path().join("roots.pem");
    let ledger = |roots: &std::path::Path| {
        format!(
            "{text}[[ledgers]]\nname = \"books\"\nkind = \"http\"\nnodes = [\"http://127.0.0.1:7050\"]\ntrust_roots_file = {:?}\n",
            roots.display().to_string()
        )
    };
    std::fs::write(&bad, ledger(&roots)).unwrap();
    let (ok, out) = run(&["config", "check", bad.to_str().unwrap()]);
    assert!(
        !ok && out.contains("books") && out.contains("roots.pem"),
        "{out}"
    );
    let key = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let key = openssl::pkey::PKey::from_ec_key(key).unwrap();
    let mut name = openssl::x509::X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "root").unwrap();
    let name = name.build();
    let mut cert = openssl::x509::X509Builder::new().unwrap();
    cert.set_version(2).unwrap();
    cert.set_subject_name(&name).unwrap();
    cert.set_issuer_name(&name).unwrap();
    cert.set_pubkey(&key).unwrap();
    cert.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    cert.set_not_after(&openssl::asn1::Asn1Time::days_from_now(30).unwrap())
        .unwrap();
    cert.sign(&key, openssl::hash::MessageDigest::sha256())
        .unwrap();
    std::fs::write(&roots, cert.build().to_pem().unwrap()).unwrap();
    let (ok, out) = run(&["config", "check", bad.to_str().unwrap()]);
    assert!(ok && out.contains("1 ledgers"), "{out}");
}

#[test]
fn sigterm_drains_and_exits_cleanly() {
    let mut g = Gateway::start_dev();
    let k = g.create_key("drain", "ed25519");
    let path = format!("/v1/keys/{}/sign", k["id"].as_str().unwrap());
    assert_eq!(g.post(&path, json!({"message_b64": "aGk="})).status, 200);
    let status = g.terminate();
    assert!(status.success(), "{status}: {}", g.log());
    let log = g.log();
    assert!(log.contains("SIGTERM") && log.contains("stopped"), "{log}");
    assert!(
        !log.contains(&std::fs::read_to_string(g.dir.join("user.pin")).unwrap()),
        "no PIN in logs"
    );
    assert!(!log.contains(&g.token), "no token in logs");
}

/// `serve` with a TLS config by hand: the harness probes /healthz over plain HTTP.
fn start_tls(dir: &std::path::Path, config: &str) -> (std::process::Child, String) {
    std::fs::write(dir.join("tls.toml"), config).unwrap();
    let _ = std::fs::remove_file(dir.join("gateway.addr"));
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.join("tls.toml"))
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .stderr(std::fs::File::create(dir.join("tls.log")).unwrap())
        .spawn()
        .unwrap();
    let addr = (0..400)
        .find_map(|_| {
            std::thread::sleep(std::time::Duration::from_millis(50));
            std::fs::read_to_string(dir.join("gateway.addr")).ok()
        })
        .expect("gateway started");
    (child, addr)
}

/// The documented flow: the gateway's own CA (its key in the HSM) issues the gateway's TLS
/// server certificate and a client's mTLS certificate; curl talks mTLS with them.
#[test]
fn tls_certificates_from_the_gateways_own_ca() {
    let mut setup = Gateway::start_dev();
    let dir = setup.dir.clone();
    let d = dir.to_str().unwrap();
    let r = setup.post(
        "/v1/cas",
        json!({"name": "ops-root", "algorithm": "ecdsa-p256", "subject": "CN=BSN ops root,O=BSN", "validity_days": 3650, "path_len": 1}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let r = setup.post(
        "/v1/cas",
        json!({"name": "ops-tls", "algorithm": "ecdsa-p256", "subject": "CN=BSN ops TLS,O=BSN", "parent": "ops-root", "validity_days": 365, "path_len": 0}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let root = setup.get("/v1/cas/ops-root").body["certificate_pem"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(dir.join("root.pem"), &root).unwrap();
    for (name, profile, san) in [
        ("srv", "tls-server", json!(["127.0.0.1"])),
        ("cli", "tls-client", json!([])),
    ] {
        let csr = pki::csr(&dir, name, false);
        let r = setup.post(
            "/v1/cas/ops-tls/certificates",
            json!({"csr_pem": csr, "profile": profile, "validity_days": 30, "san": san}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        // The certificate, then its issuers: what a TLS peer presents.
        let chain = format!(
            "{}{}",
            r.body["certificate_pem"].as_str().unwrap(),
            r.body["chain_pem"].as_str().unwrap()
        );
        std::fs::write(dir.join(format!("{name}.pem")), chain).unwrap();
    }
    assert!(setup.terminate().success());
    let config = dev_token_config(
        &dir,
        &format!(
            "[server.tls]\ncert_file = \"{d}/srv.pem\"\nkey_file = \"{d}/srv.key\"\nclient_ca_file = \"{d}/root.pem\""
        ),
        "",
        "",
    );
    let (mut child, addr) = start_tls(&dir, &config);
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let curl = |extra: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("curl -s -o /dev/null -w '%{{http_code}} %{{http_version}}' --cacert root.pem {extra} -H 'Authorization: Bearer {}' https://{addr}/v1/keys", admin.trim()))
            .current_dir(&dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        curl("--cert cli.pem --key cli.key --http2"),
        "200 2",
        "{}",
        std::fs::read_to_string(dir.join("tls.log")).unwrap()
    );
    assert_ne!(
        curl("").split(' ').next(),
        Some("200"),
        "no client certificate"
    );
    // A server certificate is no client's.
    assert_ne!(
        curl("--cert srv.pem --key srv.key").split(' ').next(),
        Some("200"),
        "a tls-server certificate as a client's"
    );
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn tls_with_client_certificates() {
    let mut setup = Gateway::start_dev();
    let dir = setup.dir.clone();
    assert!(setup.terminate().success());
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // A CA, a server certificate for 127.0.0.1 and a client certificate, by the openssl CLI.
    sh("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.pem -subj /CN=test-ca -days 2 2>/dev/null");
    sh("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1 2>/dev/null && printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile san.ext 2>/dev/null");
    for name in ["cli", "other"] {
        sh(&format!("openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}.key -out {name}.csr -subj /CN={name} 2>/dev/null && openssl x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 2>/dev/null"));
    }
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    // A client bound to cli.pem: its token over another certificate is not it.
    let bound = "bsn_bound_client_token_for_tests_only_00000000000000000000000";
    let fingerprint = openssl::x509::X509::from_pem(&std::fs::read(dir.join("cli.pem")).unwrap())
        .unwrap()
        .digest(openssl::hash::MessageDigest::sha256())
        .unwrap();
    let config = dev_token_config(
        &dir,
        &format!(
            "[server.tls]\ncert_file = \"{d}/srv.pem\"\nkey_file = \"{d}/srv.key\"\nclient_ca_file = \"{d}/ca.pem\"",
            d = dir.display()
        ),
        "",
        &format!(
            "[[clients]]\nname = \"bound\"\ntoken_sha256 = \"0x{}\"\noperations = [\"keys:read\"]\nkeys = []\ncertificate_sha256 = \"0x{}\"\n",
            hex::encode(openssl::sha::sha256(bound.as_bytes())),
            hex::encode(fingerprint)
        ),
    );
    let (mut child, addr) = start_tls(&dir, &config);
    let curl_as = |token: &str, extra: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("curl -s -o /dev/null -w '%{{http_code}} %{{http_version}}' --cacert ca.pem {extra} -H 'Authorization: Bearer {token}' https://{addr}/v1/keys"))
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    let curl = |extra: &str| curl_as(admin.trim(), extra);
    let code = |out: std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .split(' ')
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(code(curl_as(bound, "--cert cli.pem --key cli.key")), "200");
    assert_eq!(
        code(curl_as(bound, "--cert other.pem --key other.key")),
        "401",
        "the right token over the wrong certificate"
    );
    assert_eq!(
        code(curl("--cert other.pem --key other.key")),
        "200",
        "an unbound client takes any certificate the CA signed"
    );
    let with_cert = curl("--cert cli.pem --key cli.key --http2");
    assert_eq!(
        String::from_utf8_lossy(&with_cert.stdout),
        "200 2",
        "mTLS over HTTP/2"
    );
    let without = curl("");
    assert_ne!(
        String::from_utf8_lossy(&without.stdout).split(' ').next(),
        Some("200"),
        "no client certificate, no service"
    );
    let _ = child.kill();
    let _ = child.wait();
}
