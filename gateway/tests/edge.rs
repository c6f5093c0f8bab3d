//! The listener holds against clients that send slowly, hold connections idle, or open
//! many: timeouts close them, caps refuse the extra ones at once, and everyone else is
//! served. Plain HTTP beyond loopback must be asked for.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{dev_token_config, run_cli, Gateway};

fn start(server_limits: &str, tail: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let limits = format!("[server.limits]\n{server_limits}\n");
    let g = Gateway::start_configured(dir.path(), &limits, tail);
    (dir, g)
}

/// How long until the server closes this socket (reads return 0 or fail), at most `max`.
fn closed_within(s: &mut TcpStream, max: Duration) -> Option<Duration> {
    let started = Instant::now();
    s.set_read_timeout(Some(max)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if started.elapsed() < max => return Some(started.elapsed()),
            Ok(_) if started.elapsed() < max => continue,
            _ => return None,
        }
    }
}

#[test]
fn slow_headers_and_idle_connections_are_closed_by_the_header_timeout() {
    let (_dir, g) = start("header_read_timeout_ms = 500", "");
    let mut half = TcpStream::connect(&g.addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .unwrap();
    let mut idle = TcpStream::connect(&g.addr).unwrap();
    let t = closed_within(&mut half, Duration::from_secs(5)).expect("half-sent headers held");
    assert!(t >= Duration::from_millis(400), "closed too early: {t:?}");
    closed_within(&mut idle, Duration::from_secs(5)).expect("an idle connection held");
    // A keep-alive connection idle after its request is closed too.
    let mut kept = TcpStream::connect(&g.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(kept.read(&mut buf).unwrap() > 0);
    closed_within(&mut kept, Duration::from_secs(5)).expect("an idle keep-alive connection held");
    assert_eq!(g.get("/healthz").status, 200);
}

#[test]
fn a_body_that_does_not_arrive_gets_408() {
    let (_dir, g) = start("", "[limits]\nbody_read_timeout_ms = 500\n");
    let mut s = TcpStream::connect(&g.addr).unwrap();
    write!(
        s,
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{\"items\"",
        g.token
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn connections_over_the_per_source_cap_are_closed_at_once() {
    let (_dir, g) = start("max_connections_per_ip = 8", "");
    let mut held: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(&g.addr).unwrap())
        .collect();
    // Let the server accept them all before the ninth.
    std::thread::sleep(Duration::from_millis(300));
    let mut extra = TcpStream::connect(&g.addr).unwrap();
    let t = closed_within(&mut extra, Duration::from_secs(2)).expect("the ninth was kept");
    assert!(t < Duration::from_secs(1), "{t:?}");
    // The ones it holds still work.
    write!(
        held[0],
        "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    held[0].read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    held.clear();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(g.get("/healthz").status, 200);
    // The test client's own keep-alive connection may have taken a slot too.
    let metrics = g.call("GET", "/metrics", None, None).body;
    let refused: u64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "bsn_gateway_connections_refused_total{reason=\"max_connections_per_ip\"} ",
            )
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&refused), "{refused}");
}

#[test]
fn plain_http_beyond_loopback_must_be_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin.token"), "t").unwrap();
    let cfg = dir.path().join("gateway.toml");
    let text = dev_token_config(dir.path(), "", "", "")
        .replace("\nlisten = \"127.0.0.1:0\"", "\nlisten = \"0.0.0.0:8443\"");
    std::fs::write(&cfg, &text).unwrap();
    let (ok, out) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
    assert!(!ok && out.contains("allow_plaintext"), "{out}");
    std::fs::write(
        &cfg,
        text.replace(
            "\nlisten = \"0.0.0.0:8443\"",
            "\nlisten = \"0.0.0.0:8443\"\nallow_plaintext = true",
        ),
    )
    .unwrap();
    let (ok, out) = run_cli(&["config", "check", cfg.to_str().unwrap()]);
    assert!(ok, "{out}");
}

#[test]
fn sign_and_verify_have_quotas_counted_in_items() {
    let token = "bsn_quota_client_token_for_tests_only_000000000000000000000";
    let hash = format!("0x{}", hex::encode(openssl::sha::sha256(token.as_bytes())));
    let tail = format!(
        "[[clients]]\nname = \"metered\"\ntoken_sha256 = \"{hash}\"\noperations = [\"*\"]\nkeys = [\"metered-*\"]\nsign_per_second = 0.1\nsign_burst = 3\nverify_per_second = 0.1\nverify_burst = 4\n"
    );
    let (_dir, g) = start("", &tail);
    let call = |path: &str, body: serde_json::Value| {
        g.call("POST", path, Some(body.to_string().as_bytes()), Some(token))
    };
    let r = call(
        "/v1/keys",
        serde_json::json!({"label": "metered-1", "algorithm": "ed25519"}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.body["id"].as_str().unwrap().to_string();
    let item = serde_json::json!({"message_b64": "aGk="});
    assert_eq!(
        call(&format!("/v1/keys/{id}/sign"), item.clone()).status,
        200
    );
    let batch = serde_json::json!({"items": [item.clone(), item.clone()]});
    assert_eq!(
        call(&format!("/v1/keys/{id}/sign-batch"), batch.clone()).status,
        200
    );
    // Three items spent: the next one waits for the bucket.
    let r = call(&format!("/v1/keys/{id}/sign"), item.clone());
    assert_eq!(
        (r.status, common::error_code(&r)),
        (429, "quota_exceeded"),
        "{}",
        r.body
    );
    assert!(r.retry_after.is_some());
    let sig = "0x".to_string() + &"00".repeat(64);
    let v = serde_json::json!({"algorithm": "ed25519", "key_id": id, "message_b64": "aGk=", "signature": sig});
    let five = serde_json::json!({"items": [v, v, v, v, v]});
    let r = call("/v1/verify", five);
    assert_eq!(
        (r.status, common::error_code(&r)),
        (429, "quota_exceeded"),
        "a batch over the bucket"
    );
    let four = serde_json::json!({"items": [v, v, v, v]});
    assert_eq!(call("/v1/verify", four).status, 200);
    // The admin, with no quota, is not held back.
    let r = g.post(&format!("/v1/keys/{id}/sign"), item);
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn metrics_and_readiness_are_on_the_operations_listener_only() {
    let g = Gateway::start_dev();
    let api = |path: &str| {
        let mut s = TcpStream::connect(&g.addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    for path in ["/metrics", "/readyz"] {
        let answer = api(path);
        assert!(
            answer.starts_with("HTTP/1.1 404"),
            "{path} on the API: {answer}"
        );
        assert!(answer.contains("no_route"), "{answer}");
    }
    assert!(api("/healthz").starts_with("HTTP/1.1 200"));
    // The operations listener: these three, GET only, nothing of the API.
    let ops = |method: &str, path: &str| {
        let mut s = TcpStream::connect(&g.ops).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).unwrap();
        answer
    };
    assert!(ops("GET", "/metrics").contains("bsn_gateway_build_info"));
    assert!(ops("GET", "/readyz").starts_with("HTTP/1.1 200"));
    assert!(ops("GET", "/healthz").starts_with("HTTP/1.1 200"));
    assert!(ops("GET", "/v1/keys").starts_with("HTTP/1.1 404"));
    assert!(ops("POST", "/metrics").starts_with("HTTP/1.1 405"));
    assert!(g.ops.starts_with("127.0.0.1:"), "{}", g.ops);
}
