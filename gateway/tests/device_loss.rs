//! The device goes away under load and comes back as a new process: tpm2-pkcs11 over
//! swtpm, whose process the test kills and starts again. While it is gone requests get
//! 503 `hsm_unavailable` at once and the gateway is not ready; when it is back the gateway
//! finalises the module, initialises it again, logs in and serves, without a restart.
//! A PIN the token refuses stops every further login attempt.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::token::Token;
use common::{error_code, Gateway};
use serde_json::json;

fn metric(g: &Gateway, series: &str) -> f64 {
    g.metric(series)
        .unwrap_or_else(|| panic!("{series} not in the scrape"))
}

fn wait_for(what: &str, max: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < max, "{what} within {max:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Outcome {
    status: u16,
    code: String,
    retry_after: bool,
    took: Duration,
}

#[test]
fn sign_load_survives_the_device_process_dying_three_times() {
    let dir = tempfile::tempdir().unwrap();
    let mut token = Token::tpm2(dir.path());
    let g = Arc::new(token.start_gateway(&dir.path().join("gw"), "session_wait_ms = 1000"));
    let key = g.create_key("loss", "ecdsa-p256");
    let path = format!("/v1/keys/{}/sign", key["id"].as_str().unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (g, stop, outcomes, path) =
                (g.clone(), stop.clone(), outcomes.clone(), path.clone());
            std::thread::spawn(move || {
                let digest = format!("0x{}", hex::encode([i as u8; 32]));
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let r = g.post(&path, json!({"digest": digest}));
                    outcomes.lock().unwrap().push(Outcome {
                        status: r.status,
                        code: format!("{} {}", error_code(&r), r.body["error"]["message"]),
                        retry_after: r.retry_after.is_some(),
                        took: started.elapsed(),
                    });
                    if r.status != 200 {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        })
        .collect();
    let ready = |g: &Gateway| g.call("GET", "/readyz", None, None);
    let signed = |outcomes: &Mutex<Vec<Outcome>>| {
        outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.status == 200)
            .count()
    };
    for round in 1..=3 {
        let before = signed(&outcomes);
        wait_for(
            "signatures before the loss",
            Duration::from_secs(20),
            || signed(&outcomes) > before + 20,
        );
        token.kill_device();
        wait_for(
            "not ready while the device is gone",
            Duration::from_secs(10),
            || {
                let r = ready(&g);
                r.status == 503
                    && r.body["checks"]["hsm"] == false
                    && r.body["hsm_detail"].is_string()
            },
        );
        assert_eq!(metric(&g, "bsn_gateway_hsm_up"), 0.0, "round {round}");
        std::thread::sleep(Duration::from_millis(500));
        token.restart_device();
        let started = Instant::now();
        while ready(&g).status != 200 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "round {round}: not ready 30 s after the device came back: {}\n{}",
                ready(&g).body,
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let after = signed(&outcomes);
        wait_for("signing again", Duration::from_secs(10), || {
            signed(&outcomes) > after
        });
        assert_eq!(metric(&g, "bsn_gateway_hsm_up"), 1.0, "round {round}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let outcomes = outcomes.lock().unwrap();
    let refused = outcomes.iter().filter(|o| o.status == 503).count();
    assert!(refused > 0, "no request saw the device gone");
    for o in outcomes.iter() {
        assert!(
            o.status == 200
                || (o.status == 503 && o.code.starts_with("hsm_unavailable ") && o.retry_after),
            "a request got {} {} during the outages",
            o.status,
            o.code
        );
        // Nothing waits on a dead device: far under the 1 s session wait plus slack for a
        // loaded CI machine.
        assert!(
            o.took < Duration::from_secs(10),
            "a request hung for {:?}",
            o.took
        );
    }
    assert!(
        metric(&g, "bsn_gateway_hsm_reconnects_total{result=\"ok\"}") >= 3.0,
        "three reconnects counted"
    );
    // The key made before the first loss still signs, and verifies.
    let r = g.post(&path, json!({"digest": format!("0x{}", "ab".repeat(32))}));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn a_refused_pin_stops_every_further_login() {
    let dir = tempfile::tempdir().unwrap();
    let mut token = Token::tpm2(dir.path());
    let g = token.start_gateway(&dir.path().join("gw"), "");
    let key = g.create_key("pin", "ecdsa-p256");
    let path = format!("/v1/keys/{}/sign", key["id"].as_str().unwrap());
    let digest = json!({"digest": format!("0x{}", "cd".repeat(32))});
    assert_eq!(g.post(&path, digest.clone()).status, 200);
    // Someone changes the user PIN behind the gateway's back; then the device restarts,
    // so the gateway must log in again with the PIN it has.
    let new_pin = "0123456789abcdef";
    token.pkcs11_tool(&["--change-pin", "--new-pin", new_pin]);
    token.kill_device();
    std::thread::sleep(Duration::from_millis(300));
    token.restart_device();
    wait_for("the loss seen", Duration::from_secs(10), || {
        g.post(&path, digest.clone()).status == 503
    });
    wait_for("the refusal", Duration::from_secs(20), || {
        metric(
            &g,
            "bsn_gateway_hsm_reconnects_total{result=\"login_refused\"}",
        ) == 1.0
    });
    let r = g.call("GET", "/readyz", None, None);
    assert_eq!(r.status, 503);
    let detail = r.body["hsm_detail"].as_str().unwrap();
    assert!(
        detail.contains("login refused") && detail.contains("CKR_PIN_INCORRECT"),
        "{detail}"
    );
    let attempts = |g: &Gateway| metric(g, "bsn_gateway_hsm_reconnects_total{result=\"failed\"}");
    let failed = attempts(&g);
    // No further attempt: the counters stay where they are while requests keep coming.
    for _ in 0..10 {
        let r = g.post(&path, digest.clone());
        assert_eq!((r.status, error_code(&r)), (503, "hsm_unavailable"));
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(attempts(&g), failed);
    assert_eq!(
        metric(
            &g,
            "bsn_gateway_hsm_reconnects_total{result=\"login_refused\"}"
        ),
        1.0
    );
    // The token was not locked by retries: the new PIN still logs in at once.
    let mut t = token;
    t.pin = new_pin.to_string();
    t.pkcs11_tool(&["--list-objects", "--type", "privkey"]);
    let log = std::fs::read_to_string(dir.path().join("gw/gateway.log")).unwrap();
    assert!(!log.contains(new_pin) && !log.contains(&g.token));
}
