//! `POST /v1/verify` end to end under load: verifies/s through HTTP at 1 and 64 items per
//! request, beside `openssl speed` (libsecp256k1 for secp256k1) measured in the same run,
//! both as one core's figure x cores and with all cores busy at once, with the ratios, in paired
//! rounds of one second (peer, then gateway, SECONDS times; the ratio of each round printed),
//! and at 1 item per request with a new signer in each (the key cache's hits from the
//! gateway's metrics). Usage:
//!   cargo build --release --workspace && target/release/verify-load [SECONDS] [CLIENTS]
//! The load client (hyper, keep-alive; its /healthz rate is printed) runs on the same cores as the gateway;
//! with `BSN_BENCH_PIN=K` the gateway runs on cores 0 to K-1 alone and the client on the
//! others, and the ratios are against the peer on K cores (`BSN_BENCH_PIN=1`: one core).
//! `BSN_BENCH_ALGORITHMS=ed25519,sm2` runs only those.

use bsn_benches::hload::{healthz_rate, LoadRequest, Metered};
use bsn_benches::{
    cores, fixtures, peer, start_gateway_placed, Endpoint, Fixture, Peer, Placement,
};
use bsn_gateway::algorithm::Algorithm;
use serde_json::{json, Value};

const ALGORITHMS: [Algorithm; 4] = [
    Algorithm::EcdsaP256,
    Algorithm::Ed25519,
    Algorithm::Sm2,
    Algorithm::EcdsaSecp256k1,
];

fn body(alg: Algorithm, batch: usize) -> Value {
    let items: Vec<Value> = fixtures(alg, batch).iter().map(item).collect();
    json!({ "items": items })
}

fn item(f: &Fixture) -> Value {
    use base64::Engine;
    json!({
        "algorithm": f.algorithm.as_str(),
        "public_key": format!("0x{}", hex::encode(&f.key)),
        "message_b64": base64::engine::general_purpose::STANDARD.encode(&f.msg),
        "signature": format!("0x{}", hex::encode(&f.sig)),
        "format": f.format,
        "require_low_s": false,
    })
}

/// Every item must come back valid: a rate of refusals measures nothing.
fn all_valid(status: u16, body: &[u8]) -> bool {
    status == 200 && !body.windows(15).any(|w| w == b"\"valid\":false")
}

/// Signers of the run with a new signer in each request: about three times what the
/// gateway's key cache holds by default (16,384), so most keys are parsed, not found.
const SIGNERS: usize = 50_000;

/// `SIGNERS` one-item bodies, each from its own signer; made on every core.
fn signer_bodies(alg: Algorithm) -> Vec<Value> {
    let cores = cores();
    std::thread::scope(|s| {
        let parts: Vec<_> = (0..cores)
            .map(|i| {
                s.spawn(move || fixtures(alg, SIGNERS / cores + usize::from(i < SIGNERS % cores)))
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("fixture thread"))
            .map(|f| json!({ "items": [item(&f)] }))
            .collect()
    })
}

/// The gateway's key-cache counters: (hits, misses).
fn key_cache(gw: &Endpoint) -> anyhow::Result<(f64, f64)> {
    let count = |result| {
        gw.metric(&format!(
            "bsn_gateway_verify_key_cache_total{{result=\"{result}\"}}"
        ))
    };
    Ok((count("hit")?, count("miss")?))
}

/// The gateway's verification counts so far: items in all micro-batches, micro-batches,
/// and `alg`'s items verified on the lanes (zero where the path does not run).
fn batch_items(gw: &Endpoint, alg: Algorithm) -> anyhow::Result<[f64; 3]> {
    let a = alg.as_str();
    Ok([
        gw.metric("bsn_gateway_verify_batch_items_sum")?,
        gw.metric("bsn_gateway_verify_batch_items_count")?,
        gw.metric(&format!(
            "bsn_gateway_verify_multi_buffer_lanes_total{{algorithm=\"{a}\"}}"
        ))
        .unwrap_or(0.0),
    ])
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let clients: usize = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(64);
    let placement = Placement::from_env()?;
    let rounds = seconds.max(1);
    let dir = tempfile::tempdir()?;
    let gw = start_gateway_placed(dir.path(), &[], placement)?;
    placement.as_client()?;
    let threads = placement.client_threads();
    // The server's cores: what the gateway may use, and what the peer is scaled to.
    let server_cores = placement.server_threads();

    println!("verify-load: {}", placement.describe());
    // The gateway runs on this CPU with this environment, so it takes the same path.
    println!(
        "verification path: {}",
        if bsn_gateway::verify::mb::available() {
            "multi-buffer, eight lanes (AVX-512 IFMA)"
        } else {
            "scalar (this CPU has no AVX-512 IFMA, or BSN_NO_IFMA is set): OpenSSL, libsecp256k1, sm2p256, ed25519-dalek's batch"
        }
    );
    println!("{rounds} paired rounds of 1 s per algorithm: the peer on one core, on all cores (load client stopped, every core free to it), then HTTP at 1 and at 64 items; each figure over all rounds");
    println!("{clients} keep-alive connections on {threads} client threads");
    println!("peer: one core's figure x {server_cores}, and all {server_cores} cores busy at once (openssl speed -multi, libsecp256k1 on that many threads)");
    println!(
        "{:<16} {:>14} {:>12} {:>12} {:>12} {:>12} {:>12} {:>12}",
        "algorithm",
        "peer",
        "1 core x N",
        "all busy",
        "HTTP 1/req",
        "ratios",
        "HTTP 64/req",
        "ratios"
    );
    let mut cpu_rows = Vec::new();
    let mut round_rows = Vec::new();
    let mut fresh_rows = Vec::new();
    let only = std::env::var("BSN_BENCH_ALGORITHMS").unwrap_or_default();
    let algorithms = ALGORITHMS
        .into_iter()
        .filter(|a| only.is_empty() || only.split(',').any(|o| o == a.as_str()));
    for alg in algorithms {
        placement.as_any()?;
        let fresh =
            LoadRequest::post_json_each("/v1/verify", &gw.endpoint.token, &signer_bodies(alg));
        placement.as_client()?;
        let mut fresh_pooled: Option<Metered> = None;
        let mut lookups = (0.0, 0.0);
        let requests: Vec<(usize, LoadRequest)> = [1usize, 64]
            .into_iter()
            .map(|b| {
                let req = LoadRequest::post_json("/v1/verify", &gw.endpoint.token, &body(alg, b));
                (b, req)
            })
            .collect();
        // Paired rounds: a slow stretch of the host falls on the peer and the gateway
        // alike instead of on whichever ran then.
        let mut peers = Vec::new();
        let mut pooled: Vec<Option<Metered>> = vec![None, None];
        let mut per_round = Vec::new();
        // Items and micro-batches over the 1-item runs, and the items the lanes took: how
        // full the lanes were.
        let mut batches = [0.0; 3];
        for _ in 0..rounds {
            placement.as_any()?;
            let p = peer(alg, 1, server_cores)?;
            placement.as_client()?;
            for (slot, (batch, req)) in pooled.iter_mut().zip(&requests) {
                let before = batch_items(&gw.endpoint, alg)?;
                let run = gw.load(req, clients, threads, 1, all_valid)?;
                if *batch == 1 {
                    let after = batch_items(&gw.endpoint, alg)?;
                    for (i, b) in batches.iter_mut().enumerate() {
                        *b += after[i] - before[i];
                    }
                    per_round.push(run.rate / p.against(placement));
                }
                Metered::pool_into(slot, run);
            }
            let before = key_cache(&gw.endpoint)?;
            let run = gw.load(&fresh, clients, threads, 1, all_valid)?;
            let after = key_cache(&gw.endpoint)?;
            lookups = (
                lookups.0 + after.0 - before.0,
                lookups.1 + after.1 - before.1,
            );
            Metered::pool_into(&mut fresh_pooled, run);
            peers.push(p);
        }
        // Rounds of equal length: the peer's rate over all of them is the mean.
        let mean = |f: fn(&Peer) -> f64| peers.iter().map(f).sum::<f64>() / peers.len() as f64;
        let measured = Peer {
            algorithm: alg,
            name: peers[0].name,
            one_core: mean(|p| p.one_core),
            all_cores: mean(|p| p.all_cores),
        };
        let times_cores = measured.one_core * server_cores as f64;
        let all_busy = measured.against(placement);
        let runs: Vec<(usize, Metered)> = requests
            .iter()
            .map(|(b, _)| *b)
            .zip(pooled.into_iter().flatten())
            .collect();
        let rates: Vec<f64> = runs.iter().map(|(b, r)| r.rate * *b as f64).collect();
        if let Some(run) = fresh_pooled {
            fresh_rows.push((alg, all_busy, rates[0], run, lookups));
        }
        per_round.sort_by(f64::total_cmp);
        round_rows.push((alg, per_round));
        cpu_rows.push((
            alg,
            all_busy,
            runs,
            batches[0] / batches[1].max(1.0),
            batches[2] / batches[0].max(1.0),
        ));
        let ratios = |r: f64| format!("{:.2} / {:.2}", r / times_cores, r / all_busy);
        println!(
            "{:<16} {:>14} {:>12.0} {:>12.0} {:>12.0} {:>12} {:>12.0} {:>12}",
            alg.as_str(),
            measured.name,
            times_cores,
            all_busy,
            rates[0],
            ratios(rates[0]),
            rates[1],
            ratios(rates[1]),
        );
    }
    println!("ratios: against one core x N / against all N busy");
    println!(
        "1 item per request against the peer ({}) in each round, lowest to highest:",
        match placement {
            Placement::Pinned { server: 1, .. } => "one core".to_string(),
            _ => format!("all {server_cores} of the server side's cores busy"),
        }
    );
    for (alg, ratios) in &round_rows {
        let text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!("{:<16} {}", alg.as_str(), text.join(" "));
    }
    println!();
    println!("1 item per request, a new signer in each: {SIGNERS} signers in turn, the turn going on from round to round (the runs above send one signer's request again and again, its key parsed once):");
    println!(
        "{:<16} {:>12} {:>9} {:>14} {:>15} {:>13}",
        "algorithm", "verifies/s", "vs peer", "vs one signer", "key cache hits", "gateway CPU µs"
    );
    for (alg, all_busy, one_signer, run, (hits, misses)) in &fresh_rows {
        let (_, gw_us) = run.per_answer_us(1.0);
        println!(
            "{:<16} {:>12.0} {:>9.2} {:>14.2} {:>14.1}% {gw_us:>13.1}",
            alg.as_str(),
            run.rate,
            run.rate / all_busy,
            run.rate / one_signer,
            100.0 * hits / (hits + misses).max(1.0),
        );
    }
    println!(
        "vs peer: against the peer as above; key cache hits: of the keys those runs looked up"
    );
    println!();
    println!(
        "CPU per verification, microseconds of all cores (user + system), over the same runs:"
    );
    println!(
        "{:<16} {:>10} {:>13} {:>13} {:>12} {:>9} {:>13} {:>13} {:>17} {:>11}",
        "algorithm",
        "peer",
        "gateway 1/req",
        "its client",
        "peer / gw",
        "gw cores",
        "gw sleeps/req",
        "gateway 64/req",
        "items/batch 1/req",
        "lanes 1/req"
    );
    for (alg, all_cores, runs, per_batch, on_lanes) in &cpu_rows {
        // Every core busy for the whole run: its CPU per verification is cores / rate.
        let peer_us = 1e6 * server_cores as f64 / all_cores;
        let (client1, gw1) = runs[0].1.per_answer_us(runs[0].0 as f64);
        let (_, gw64) = runs[1].1.per_answer_us(runs[1].0 as f64);
        let one = &runs[0].1;
        println!(
            "{:<16} {peer_us:>10.1} {gw1:>13.1} {client1:>13.1} {:>12.2} {:>9.2} {:>13.2} {gw64:>13.1} {per_batch:>17.1} {:>10.0}%",
            alg.as_str(),
            peer_us / gw1,
            one.server_cpu / one.seconds,
            one.server_switches.slept as f64 / (one.rate * one.seconds),
            100.0 * on_lanes,
        );
    }
    println!("peer / gw: the peer's CPU per verification over the gateway's at 1 item per request (the 1/req ratio if the client had cores of its own and the gateway scaled with them)");
    println!("gw sleeps/req: how often the gateway's threads went to sleep (parked or blocked; each sleep ends in a wake-up), per 1-item request (voluntary_ctxt_switches in /proc)");
    println!("items/batch: items per micro-batch over the 1-item runs (the gateway's bsn_gateway_verify_batch_items): eight fill a set of lanes; lanes: the share of those items the multi-buffer path verified (shorter tails go to the scalar path)");
    let floor = healthz_rate(&gw.endpoint.addr, clients, threads, seconds)?;
    println!("HTTP floor of this client (GET /healthz, same connections): {floor:.0} requests/s");
    println!("goal: 1 item per request >= 0.8 x the peer with all cores busy, every algorithm");
    Ok(())
}
