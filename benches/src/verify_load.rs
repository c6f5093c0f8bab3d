//! `POST /v1/verify` end to end under load: verifies/s through HTTP at 1 and 64 items per
//! request, beside `openssl speed` x cores (libsecp256k1 x cores for secp256k1) measured in
//! the same run, with the ratio. Usage:
//!   cargo build --release --workspace && target/release/verify-load [SECONDS] [CLIENTS]
//! The load generator (JSON encoding, HTTP client) runs on the same cores as the gateway.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bsn_benches::{agent, cores, fixtures, openssl_speed, post, run_threads, start_gateway};
use bsn_gateway::algorithm::Algorithm;
use serde_json::{json, Value};

fn body(alg: Algorithm, batch: usize) -> Value {
    use base64::Engine;
    let items: Vec<Value> = fixtures(alg, batch)
        .iter()
        .map(|f| {
            json!({
                "algorithm": alg.as_str(),
                "public_key": format!("0x{}", hex::encode(&f.key)),
                "message_b64": base64::engine::general_purpose::STANDARD.encode(&f.msg),
                "signature": format!("0x{}", hex::encode(&f.sig)),
                "format": f.format,
                "require_low_s": false,
            })
        })
        .collect();
    json!({ "items": items })
}

/// libsecp256k1 verifies/s on one core, for the peer column of secp256k1.
fn libsecp256k1_rate() -> f64 {
    let f = &fixtures(Algorithm::EcdsaSecp256k1, 1)[0];
    let secp = secp256k1::Secp256k1::verification_only();
    let pk = secp256k1::PublicKey::from_slice(&f.key).unwrap();
    let sig = secp256k1::ecdsa::Signature::from_der(&f.sig).unwrap();
    let digest = openssl::sha::sha256(&f.msg);
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < 2.0 {
        for _ in 0..100 {
            let ok = secp.verify_ecdsa(secp256k1::Message::from_digest(digest), &sig, &pk);
            assert!(ok.is_ok());
        }
        n += 100;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let cores = cores();
    let clients: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4 * cores);
    let mut peers = openssl_speed(3)?;
    peers.push((Algorithm::EcdsaSecp256k1, libsecp256k1_rate()));
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(dir.path())?;

    println!("verify-load: {cores} cores, {seconds} s per run, {clients} HTTP client threads on the same cores");
    println!(
        "{:<16} {:>22} {:>14} {:>8} {:>14} {:>8}",
        "algorithm", "peer x cores/s", "HTTP 1/req", "ratio", "HTTP 64/req", "ratio"
    );
    for alg in Algorithm::ALL {
        let peer = peers
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, v)| *v * cores as f64)
            .unwrap_or(0.0);
        let mut rates = Vec::new();
        for batch in [1usize, 64] {
            let body = body(alg, batch);
            let endpoint = gw.endpoint.clone();
            let rate = run_threads(clients, seconds, move |stop, count| {
                let agent = agent();
                while !stop.load(Ordering::Relaxed) {
                    let r = post(&agent, &endpoint, "/v1/verify", &body).expect("verify over HTTP");
                    let all_valid = r["results"]
                        .as_array()
                        .is_some_and(|a| a.len() == batch && a.iter().all(|x| x["valid"] == true));
                    assert!(all_valid, "{r}");
                    count.fetch_add(batch as u64, Ordering::Relaxed);
                }
            })?;
            rates.push(rate);
        }
        let peer_name = if alg == Algorithm::EcdsaSecp256k1 {
            "libsecp256k1"
        } else {
            "openssl speed"
        };
        println!(
            "{:<16} {:>22} {:>14.0} {:>8.2} {:>14.0} {:>8.2}",
            alg.as_str(),
            format!("{peer_name} {peer:.0}"),
            rates[0],
            rates[0] / peer,
            rates[1],
            rates[1] / peer
        );
    }
    println!("goal: P-256 HTTP with 64 items per request >= 0.7 x openssl speed x cores");
    Ok(())
}
