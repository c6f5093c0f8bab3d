//! Far more parallel sign requests than pool sessions: each succeeds, or gets 503 with
//! Retry-After once the wait bound passes; never a PKCS#11 error. Under that load the
//! durable writers run as `SCHED_BATCH`, so their wakes do not preempt the signing threads.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use serde_json::json;

fn config(dir: &Path, pool: usize, wait_ms: u64) -> std::path::PathBuf {
    let text = dev_token_config(
        dir,
        "",
        &format!("pool_size = {pool}\nsession_wait_ms = {wait_ms}"),
        "",
    );
    let path = dir.join(format!("pool{pool}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn hammer(g: &Arc<Gateway>, path: &str, threads: usize, per_thread: usize) -> Vec<Reply> {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let g = g.clone();
            let path = path.to_string();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let d = openssl::sha::sha256(format!("{t}/{i}").as_bytes());
                        g.post(
                            &path,
                            json!({"digest": format!("0x{}", hex::encode(d)), "format": "eth"}),
                        )
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect()
}

#[test]
fn many_more_requests_than_sessions_all_succeed_or_get_503_with_retry_after() {
    let mut setup = Gateway::start_dev();
    let key = setup.create_key("busy", "ecdsa-secp256k1");
    let path = format!("/v1/keys/{}/sign", key["id"].as_str().unwrap());
    let dir = setup.dir.clone();
    assert!(setup.terminate().success());

    // A generous wait bound: 64 callers share 2 sessions and every one is served.
    let g = Arc::new(Gateway::start_config(&config(&dir, 2, 30_000), &dir));
    let replies = hammer(&g, &path, 64, 4);
    for r in &replies {
        assert_eq!(r.status, 200, "{}", r.body);
    }
    each_signed_its_own_digest(&replies, 64, 4, key["address"].as_str().unwrap());
    let metrics = g.call("GET", "/metrics", None, None).body;
    let text = metrics.as_str().unwrap();
    assert!(
        text.contains("bsn_gateway_hsm_session_pool_size 2"),
        "{text}"
    );
    // The error counters are there from the start, every one at zero.
    let errors = hsm_errors(text);
    assert!(!errors.is_empty(), "{text}");
    assert!(
        errors.iter().all(|l| l.ends_with(" 0")),
        "no PKCS#11 errors: {errors:?}"
    );
    writers_run_as_batch(g.pid());
    drop(Arc::try_unwrap(g).ok().unwrap());

    // A tiny wait bound on one session: overflow is answered 503 + Retry-After, nothing else.
    let g = Arc::new(Gateway::start_config(&config(&dir, 1, 1), &dir));
    let replies = hammer(&g, &path, 64, 4);
    let mut busy = 0;
    for r in &replies {
        match r.status {
            200 => {}
            503 => {
                assert_eq!(error_code(r), "hsm_busy");
                assert_eq!(r.retry_after.as_deref(), Some("1"));
                busy += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    eprintln!(
        "{busy} of {} requests were turned away with 503",
        replies.len()
    );
    let text = g.call("GET", "/metrics", None, None).body;
    assert!(
        hsm_errors(text.as_str().unwrap())
            .iter()
            .all(|l| l.ends_with(" 0")),
        "busy is not a PKCS#11 error: {text}"
    );
    assert_eq!(
        g.post(&path, json!({"digest": format!("0x{}", "22".repeat(32))}))
            .status,
        200
    );
}

/// Concurrent signatures are made back to back by whichever request's task gets there
/// first: each caller must still get the signature over its own digest. ethers.js
/// recovers the signer of each from the digest `hammer` sent.
fn each_signed_its_own_digest(replies: &[Reply], threads: usize, per_thread: usize, address: &str) {
    let digests: Vec<String> = (0..threads)
        .flat_map(|t| (0..per_thread).map(move |i| (t, i)))
        .map(|(t, i)| {
            let d = openssl::sha::sha256(format!("{t}/{i}").as_bytes());
            format!("0x{}", hex::encode(d))
        })
        .collect();
    let sigs: Vec<&str> = replies
        .iter()
        .map(|r| r.body["signature"].as_str().unwrap())
        .collect();
    assert_eq!(sigs.len(), digests.len());
    let script = format!(
        "const {{ethers}} = require('ethers');
         const d = {digests}; const s = {sigs};
         console.log(JSON.stringify(d.map((h, i) => ethers.recoverAddress(h, s[i]))));",
        digests = serde_json::to_string(&digests).unwrap(),
        sigs = serde_json::to_string(&sigs).unwrap(),
    );
    let recovered: Vec<String> = serde_json::from_str(&node(&script)).unwrap();
    let wrong: Vec<usize> = (0..recovered.len())
        .filter(|&i| !recovered[i].eq_ignore_ascii_case(address))
        .collect();
    assert!(
        wrong.is_empty(),
        "replies {wrong:?} carry another digest's signature"
    );
}

/// The PKCS#11 error counter's samples in a scrape.
fn hsm_errors(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("bsn_gateway_hsm_errors_total{"))
        .collect()
}

/// The audit and outbox writers are `SCHED_BATCH` (policy 3); the runtime's threads, which
/// sign, keep the default (0).
fn writers_run_as_batch(pid: u32) {
    let mut seen = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(dir.join("comm")),
            std::fs::read_to_string(dir.join("stat")),
        ) else {
            continue; // the thread ended meanwhile
        };
        // Field 41 of stat; the fields after the name (which may hold spaces) start at 3.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let policy: u32 = after_name.split(' ').nth(41 - 3).unwrap().parse().unwrap();
        seen.push((name.trim().to_string(), policy));
    }
    for writer in ["audit-writer", "outbox-writer"] {
        assert!(
            seen.iter().any(|(n, _)| n == writer),
            "no {writer} thread: {seen:?}"
        );
    }
    for (name, policy) in &seen {
        match name.as_str() {
            "audit-writer" | "outbox-writer" => assert_eq!(*policy, 3, "{name}: {seen:?}"),
            "tokio-rt-worker" => assert_eq!(*policy, 0, "{name}: {seen:?}"),
            _ => {}
        }
    }
}
