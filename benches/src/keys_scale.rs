//! Many keys: sign latency with 10 keys and with 10,000 keys in the token, and how long a
//! gateway takes to become ready with 10,000 (Web3Signer users report 19 minutes to load
//! that many). Usage:
//!   cargo build --release --workspace && target/release/keys-scale [KEYS] [SIGNS]
//! One client signs sequentially over keep-alive, each time with a key drawn at random from
//! all keys, so lookups are spread over the whole token.

use std::time::{Duration, Instant};

use anyhow::Context;
use bsn_benches::{agent, post, start_gateway, Endpoint};
use serde_json::json;

fn create(gw: &Endpoint, from: usize, to: usize, threads: usize) -> anyhow::Result<Vec<String>> {
    let ids = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| -> anyhow::Result<()> {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let ids = &ids;
                s.spawn(move || -> anyhow::Result<()> {
                    let agent = agent();
                    for i in (from + t..to).step_by(threads) {
                        let r = post(
                            &agent,
                            gw,
                            "/v1/keys",
                            &json!({"label": format!("scale-{i}"), "algorithm": "ecdsa-p256"}),
                        )?;
                        ids.lock()
                            .unwrap()
                            .push(r["id"].as_str().context("id")?.to_string());
                    }
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("creator panicked"))??;
        }
        Ok(())
    })?;
    Ok(ids.into_inner().unwrap())
}

/// Sequential signs with random keys: (p50, p99).
fn latency(gw: &Endpoint, ids: &[String], n: usize) -> anyhow::Result<(Duration, Duration)> {
    let agent = agent();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut took = Vec::with_capacity(n);
    let body = json!({"digest": format!("0x{}", "5a".repeat(32))});
    for _ in 0..n {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let id = &ids[(seed % ids.len() as u64) as usize];
        let started = Instant::now();
        post(&agent, gw, &format!("/v1/keys/{id}/sign"), &body)?;
        took.push(started.elapsed());
    }
    took.sort();
    Ok((took[n / 2], took[n * 99 / 100]))
}

fn ready_after_start(dir: &std::path::Path) -> anyhow::Result<(bsn_benches::Gateway, Duration)> {
    // The last run's address files would be read as this one's.
    let _ = std::fs::remove_file(dir.join("gateway.addr"));
    let _ = std::fs::remove_file(dir.join("ops.addr"));
    let started = Instant::now();
    let gw = start_gateway(dir)?;
    let agent = agent();
    loop {
        let r = agent
            .get(format!("http://{}/readyz", gw.endpoint.ops))
            .call();
        if r.is_ok_and(|r| r.status() == 200) {
            return Ok((gw, started.elapsed()));
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "not ready in 10 min"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let keys: usize = args
        .get(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10_000);
    let signs: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3_000);
    let dir = tempfile::tempdir()?;
    let (gw, ready_empty) = ready_after_start(dir.path())?;
    let mut ids = create(&gw.endpoint, 0, 10, 1)?;
    drop(gw);
    let (gw, ready_few) = ready_after_start(dir.path())?;
    let (p50_few, p99_few) = latency(&gw.endpoint, &ids, signs)?;
    let made = Instant::now();
    ids.extend(create(&gw.endpoint, 10, keys, 8)?);
    let create_rate = (keys - 10) as f64 / made.elapsed().as_secs_f64();
    drop(gw);
    let (gw, ready_many) = ready_after_start(dir.path())?;
    let (p50_many, p99_many) = latency(&gw.endpoint, &ids, signs)?;
    drop(gw);
    println!(
        "keys-scale: SoftHSM2 token, ecdsa-p256, {signs} sequential signs per figure, keys drawn at random"
    );
    println!(
        "  start to ready: no keys {:.2} s, 10 keys {:.2} s, {keys} keys {:.2} s",
        ready_empty.as_secs_f64(),
        ready_few.as_secs_f64(),
        ready_many.as_secs_f64()
    );
    println!(
        "  sign latency, 10 keys:      p50 {:>7.3} ms  p99 {:>7.3} ms",
        ms(p50_few),
        ms(p99_few)
    );
    println!(
        "  sign latency, {keys} keys: p50 {:>7.3} ms  p99 {:>7.3} ms  (ratio to 10 keys: p50 {:.2}, p99 {:.2})",
        ms(p50_many),
        ms(p99_many),
        ms(p50_many) / ms(p50_few),
        ms(p99_many) / ms(p99_few)
    );
    println!("  keys created over HTTP at {create_rate:.0}/s (8 clients)");
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
