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

/// An idle HTTP/2 connection has no timer in hyper; the idle timeout closes it, and an
/// HTTP/1 one after its answer, while a request in flight is never cut by it.
#[test]
fn idle_connections_are_closed_by_the_idle_timeout_but_not_while_a_request_runs() {
    let (_dir, g) = start("header_read_timeout_ms = 8000\nidle_timeout_ms = 400", "");
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame, then nothing.
    let mut h2 = TcpStream::connect(&g.addr).unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let t = closed_within(&mut h2, Duration::from_secs(4)).expect("an idle HTTP/2 connection held");
    assert!(t >= Duration::from_millis(300), "closed too early: {t:?}");
    let mut kept = TcpStream::connect(&g.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(kept.read(&mut buf).unwrap() > 0);
    closed_within(&mut kept, Duration::from_secs(4)).expect("an idle keep-alive connection held");
    // Headers in, the body a while later: the request is in flight, not idle.
    let body = br#"{"items":[]}"#;
    let mut slow = TcpStream::connect(&g.addr).unwrap();
    write!(
        slow,
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        g.token.trim(),
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    slow.write_all(body).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let n = slow.read(&mut buf).unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
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

/// Sends raw bytes and returns the status code of the answer, if an HTTP/1.1 answer comes
/// within 3 s (a closed or reset connection is a fine answer to junk). The write side stays
/// open: a client that half-closes at once may lose its answer to the server's close.
fn raw(addr: &str, bytes: &[u8]) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    let _ = s.write_all(bytes);
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while answer.len() < 12 {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn hostile_traffic_gets_no_5xx_and_the_gateway_stays_bounded() {
    let (_dir, g) = start(
        "header_read_timeout_ms = 1000",
        "[limits]\nbody_read_timeout_ms = 1000\n",
    );
    let token = g.token.trim().to_string();
    let metrics_before = g
        .call("GET", "/metrics", None, None)
        .body
        .as_str()
        .unwrap()
        .len();
    let rss_before = rss_kib(g.pid());
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let auth = format!("Authorization: Bearer {token}\r\n");
    let post = |path: &str, body: &[u8], extra: &str| {
        let mut r = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\n{auth}{extra}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    let mut answered = 0;
    for i in 0..520 {
        let (kind, bytes): (&str, Vec<u8>) = match i % 13 {
            0 => ("huge header", format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000 + (next() % 1000) as usize)).into_bytes()),
            1 => ("many headers", format!("GET /v1/keys HTTP/1.1\r\nHost: x\r\n{auth}{}\r\n", (0..300).map(|n| format!("X-H{n}: v\r\n")).collect::<String>()).into_bytes()),
            2 => {
                let m: String = (0..(1 + next() % 40)).map(|_| (b'A' + (next() % 26) as u8) as char).collect();
                ("random method", format!("{m} /v1/keys HTTP/1.1\r\nHost: x\r\n{auth}\r\n").into_bytes())
            }
            3 => ("deep JSON", post("/v1/verify", &[b"[".repeat(50_000), b"]".repeat(50_000)].concat(), "")),
            4 => ("invalid UTF-8", post("/v1/keys", &[0xff, 0xfe, 0x80, b'{', 0xc3], "")),
            5 => ("length and chunked", format!("POST /v1/keys HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n").into_bytes()),
            6 => ("absurd length", format!("POST /v1/keys HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n{{}}", ["-1", "99999999999999999999999", "1e3", "0x10"][(next() % 4) as usize]).into_bytes()),
            7 => ("h2 preface junk", [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), (0..(next() % 4096)).map(|_| next() as u8).collect()].concat()),
            8 => ("absurd numbers", post("/v1/keys/00/sign-batch", br#"{"items": [{"digest": 1e999}], "format": -99999999999999999999999999}"#, "")),
            9 => ("absurd id", format!("GET /v1/keys/{} HTTP/1.1\r\nHost: x\r\n{auth}\r\n", "9".repeat(8_000)).into_bytes()),
            10 => ("bad auth", format!("GET /v1/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", "\u{1}x".repeat((next() % 500) as usize)).into_bytes()),
            11 => ("random bytes", (0..(1 + next() % 2048)).map(|_| next() as u8).collect()),
            _ => ("bad chunked", format!("POST /v1/verify HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\nzz\r\n{{\r\n").into_bytes()),
        };
        *kinds.entry(kind).or_default() += 1;
        if let Some(status) = raw(&g.addr, &bytes) {
            assert!(status < 500, "{kind}: {status}");
            assert!(status >= 400, "{kind}: {status} for junk");
            answered += 1;
        }
        if i % 50 == 0 {
            assert_eq!(g.get("/healthz").status, 200, "after {i} ({kind})");
        }
    }
    assert!(
        kinds.len() >= 12 && kinds.values().all(|n| *n >= 40),
        "{kinds:?}"
    );
    // Most junk gets a typed 4xx; the rest (h2 junk, random bytes) a closed connection.
    eprintln!("{answered} of 520 bad requests answered with a 4xx");
    assert!(answered > 300, "only {answered} answers");
    assert_eq!(g.get("/healthz").status, 200);
    // Slow headers and a body that never comes: each closed within its timeout.
    let mut slow = TcpStream::connect(&g.addr).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    closed_within(&mut slow, Duration::from_secs(4)).expect("slow headers held");
    let mut stalled = TcpStream::connect(&g.addr).unwrap();
    write!(
        stalled,
        "POST /v1/keys HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 100\r\n\r\n{{"
    )
    .unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(4)))
        .unwrap();
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body: {answer}"
    );
    // Nothing grew without bound.
    let metrics_after = g
        .call("GET", "/metrics", None, None)
        .body
        .as_str()
        .unwrap()
        .len();
    assert!(
        metrics_after < metrics_before + 16 * 1024,
        "{metrics_before} -> {metrics_after} bytes"
    );
    let rss_after = rss_kib(g.pid());
    assert!(
        rss_after < rss_before + 64 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
}

#[test]
fn a_request_is_answered_within_max_request_ms() {
    let (_dir, g) = start(
        "",
        "[limits]\nbody_read_timeout_ms = 10000\nmax_request_ms = 400\n",
    );
    let mut s = TcpStream::connect(&g.addr).unwrap();
    write!(
        s,
        "POST /v1/verify HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n{{",
        g.token.trim()
    )
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}
