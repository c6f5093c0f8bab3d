//! The multi-buffer (AVX-512 IFMA) verification path on one core beside its peer on the
//! same core, measured in the same run: `openssl speed` for P-256 and SM2, libsecp256k1
//! (with the same SHA-256 per item) for secp256k1. Every signature is from a different
//! signer, made by OpenSSL or libsecp256k1. Ed25519 has two rows: the vector path and the
//! batch path it replaces (ed25519-dalek `verify_batch`), each with the strict checks and
//! SHA-512 per item every round, beside `openssl speed ed25519`. Usage:
//!   cargo build --release --workspace && target/release/verify-mb [SECONDS]
//!   target/release/verify-mb diff N [ALGORITHMS]
//!       N random signatures per curve (ALGORITHMS: `ecdsa-p256,sm2`, default all), x5
//!       altered forms, every answer compared with the reference (Ed25519: ed25519-dalek's
//!       verify_strict), on every core
//! Three runs give a median and a range: `for i in 1 2 3; do target/release/verify-mb; done`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bsn_benches::{fixtures, libsecp256k1_speed, openssl_speed, Fixture};
use bsn_gateway::algorithm::Algorithm;
use bsn_gateway::verify::mb::{self, Curve, Lane};

const LANES: usize = 1024;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("diff") {
        let n: usize = args.get(2).context("diff N")?.parse()?;
        return diff(n, args.get(3).map(String::as_str));
    }
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(3);
    if !mb::available() {
        bail!("this CPU has no AVX-512 IFMA: the multi-buffer path does not run here");
    }
    let speed = openssl_speed(
        seconds as u32,
        1,
        &[Algorithm::EcdsaP256, Algorithm::Sm2, Algorithm::Ed25519],
    )?;
    let peer = |a| speed.iter().find(|(x, _)| *x == a).map_or(0.0, |(_, v)| *v);
    let k1 = libsecp256k1_speed(1, seconds)?;
    println!("verify-mb: one core, {LANES} signatures from {LANES} signers, {seconds} s each");
    println!(
        "{:<16} {:>14} {:>22} {:>12} {:>7} {:>6}",
        "algorithm", "multi-buffer/s", "peer", "peer/s", "ratio", "goal"
    );
    for (alg, curve, name, peer_rate, goal) in [
        (
            Algorithm::EcdsaP256,
            Curve::P256,
            "openssl speed",
            peer(Algorithm::EcdsaP256),
            2.5,
        ),
        (
            Algorithm::EcdsaSecp256k1,
            Curve::Secp256k1,
            "libsecp256k1 + sha256",
            k1,
            2.0,
        ),
        (
            Algorithm::Sm2,
            Curve::Sm2,
            "openssl speed",
            peer(Algorithm::Sm2),
            6.0,
        ),
    ] {
        let fx = fixtures(alg, LANES);
        let lanes: Vec<Lane> = fx.iter().map(lane).collect::<anyhow::Result<_>>()?;
        let rate = rate(alg, curve, &fx, lanes, seconds)?;
        println!(
            "{:<16} {rate:>14.0} {name:>22} {peer_rate:>12.0} {:>7.2} {goal:>6.1}",
            alg.as_str(),
            rate / peer_rate
        );
    }
    let peer_rate = peer(Algorithm::Ed25519);
    for (name, rate) in [
        ("ed25519", ed25519_vector_rate(seconds)?),
        ("ed25519 (batch)", ed25519_rate(seconds)?),
    ] {
        println!(
            "{name:<16} {rate:>14.0} {:>22} {peer_rate:>12.0} {:>7.2} {:>6.1}",
            "openssl speed",
            rate / peer_rate,
            6.0
        );
    }
    Ok(())
}

/// Verifies/s of the Ed25519 vector path on this thread: keys decompressed once (the
/// engine caches parsed keys), each round the strict checks, k = SHA-512(R || A || M)
/// mod L and the lanes, as the engine does.
fn ed25519_vector_rate(seconds: u64) -> anyhow::Result<f64> {
    let fx = fixtures(Algorithm::Ed25519, LANES);
    let keys: Vec<[u8; 32]> = fx
        .iter()
        .map(|f| Ok(f.key[..].try_into()?))
        .collect::<anyhow::Result<_>>()?;
    let points: Vec<([u8; 32], [u8; 32])> = keys
        .iter()
        .map(|k| mb::ed25519_decompress(k).context("a key that does not decompress"))
        .collect::<anyhow::Result<_>>()?;
    let sigs: Vec<[u8; 64]> = fx
        .iter()
        .map(|f| Ok(f.sig[..].try_into()?))
        .collect::<anyhow::Result<_>>()?;
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        let lanes: Vec<mb::EdLane> = (0..fx.len())
            .map(|i| mb::check::ed25519_lane(&keys[i], &points[i], &fx[i].msg, &sigs[i]))
            .collect::<Option<_>>()
            .context("a valid signature refused by the strict checks")?;
        if mb::verify_ed25519(&lanes).iter().any(|a| *a != Some(true)) {
            bail!("ed25519: a valid signature not answered valid");
        }
        done += lanes.len();
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Verifies/s of the engine's Ed25519 batch path on this thread, in micro-batches of the
/// engine's default size, signatures parsed (strict checks) every round as the engine does.
fn ed25519_rate(seconds: u64) -> anyhow::Result<f64> {
    use bsn_gateway::verify::ed25519;
    let fx = fixtures(Algorithm::Ed25519, LANES);
    let keys: Vec<ed25519_dalek::VerifyingKey> = fx
        .iter()
        .map(|f| {
            Ok(ed25519_dalek::VerifyingKey::from_bytes(
                f.key[..].try_into()?,
            )?)
        })
        .collect::<anyhow::Result<_>>()?;
    let batch = bsn_gateway::verify::VerifyConfig::default().max_batch;
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        for (i, chunk) in fx.chunks(batch).enumerate() {
            let sigs = chunk
                .iter()
                .map(|f| ed25519::parse_signature(&f.sig))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|r| anyhow::anyhow!("{}", r.as_str()))?;
            let msgs: Vec<&[u8]> = chunk.iter().map(|f| &f.msg[..]).collect();
            let keys = &keys[i * batch..i * batch + chunk.len()];
            if !ed25519::verify_all(keys, &msgs, &sigs).iter().all(|v| *v) {
                bail!("ed25519: a valid signature not answered valid");
            }
            done += chunk.len();
        }
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

/// Verifies/s of the vector path on this thread, every answer required valid. Each round
/// hashes the messages again where the peer's figure includes hashing: SHA-256 for
/// secp256k1 (the libsecp256k1 loop hashes), SM3(Z || M) for SM2 (`openssl speed sm2`
/// verifies through EVP_DigestVerify; Z is per key, cached by the engine as here);
/// `openssl speed ecdsap256` verifies a ready digest, and so does this for P-256.
fn rate(
    alg: Algorithm,
    curve: Curve,
    fx: &[Fixture],
    mut lanes: Vec<Lane>,
    seconds: u64,
) -> anyhow::Result<f64> {
    let z: Vec<[u8; 32]> = fx
        .iter()
        .map(|f| bsn_gateway::verify::keys::sm2_z(&f.key))
        .collect();
    let started = Instant::now();
    let mut done = 0usize;
    while started.elapsed() < Duration::from_secs(seconds) {
        for (i, (lane, f)) in lanes.iter_mut().zip(fx).enumerate() {
            match alg {
                Algorithm::EcdsaSecp256k1 => lane.e = bsn_gateway::util::sha256(&f.msg),
                Algorithm::Sm2 => lane.e = bsn_gateway::verify::keys::sm2_e(&z[i], &f.msg),
                _ => {}
            }
        }
        let answers = mb::verify(curve, &lanes);
        if answers.iter().any(|a| *a != Some(true)) {
            bail!("{curve:?}: a valid signature not answered valid");
        }
        done += lanes.len();
    }
    Ok(done as f64 / started.elapsed().as_secs_f64())
}

fn lane(f: &Fixture) -> anyhow::Result<Lane> {
    let point = match f.algorithm {
        Algorithm::EcdsaSecp256k1 => secp256k1::PublicKey::from_slice(&f.key)?
            .serialize_uncompressed()
            .to_vec(),
        _ => f.key.clone(),
    };
    let sig = openssl::ecdsa::EcdsaSig::from_der(&f.sig)?;
    let e = match f.algorithm {
        Algorithm::Sm2 => {
            let mut zm = bsn_gateway::verify::keys::sm2_z(&point).to_vec();
            zm.extend_from_slice(&f.msg);
            bsn_gateway::verify::keys::sm3(&zm)
        }
        _ => bsn_gateway::util::sha256(&f.msg),
    };
    let b32 = |v: &[u8]| -> anyhow::Result<[u8; 32]> { Ok(v.try_into()?) };
    Ok(Lane {
        qx: b32(&point[1..33])?,
        qy: b32(&point[33..65])?,
        r: b32(&sig.r().to_vec_padded(32)?)?,
        s: b32(&sig.s().to_vec_padded(32)?)?,
        e,
    })
}

/// N signatures per curve through both paths, in steps so progress shows, each step
/// split over every core. `only`: algorithm names (`ecdsa-p256,ed25519`), or all.
fn diff(n: usize, only: Option<&str>) -> anyhow::Result<()> {
    if !mb::available() {
        bail!("this CPU has no AVX-512 IFMA: nothing to compare");
    }
    const STEP: usize = 100_000;
    let wanted = |alg: Algorithm| only.is_none_or(|o| o.split(',').any(|a| a == alg.as_str()));
    for (alg, curve) in [
        (Algorithm::EcdsaP256, Some(Curve::P256)),
        (Algorithm::EcdsaSecp256k1, Some(Curve::Secp256k1)),
        (Algorithm::Sm2, Some(Curve::Sm2)),
        (Algorithm::Ed25519, None),
    ] {
        if !wanted(alg) {
            continue;
        }
        let (mut lanes, mut valid, mut declined) = (0, 0, 0);
        let mut done = 0;
        while done < n {
            let step = STEP.min(n - done);
            let report = on_every_core(step, |k| match curve {
                Some(c) => mb::check::run(c, k),
                None => mb::check::run_ed25519(k),
            });
            // Ed25519's addition is complete: a declined lane there is a fault too.
            if report.mismatch_count > 0 || (curve.is_none() && report.declined > 0) {
                bail!("{alg}: {report:#?}");
            }
            lanes += report.lanes;
            valid += report.valid;
            declined += report.declined;
            done += step;
            eprintln!("{alg}: {done}/{n} signatures, {lanes} lanes agree");
        }
        println!("{alg}: {n} signatures, {lanes} lanes ({valid} valid), 0 disagreements, {declined} declined to the scalar path");
    }
    Ok(())
}

/// `run(k)` on every core at once, `n` signatures split between them, reports summed.
fn on_every_core(n: usize, run: impl Fn(usize) -> mb::check::Report + Sync) -> mb::check::Report {
    let cores = bsn_benches::cores().min(n.max(1));
    let reports: Vec<mb::check::Report> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..cores)
            .map(|i| {
                let k = n / cores + usize::from(i < n % cores);
                let run = &run;
                s.spawn(move || run(k))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("diff thread"))
            .collect()
    });
    let mut total = mb::check::Report::default();
    for r in reports {
        total.lanes += r.lanes;
        total.valid += r.valid;
        total.declined += r.declined;
        total.mismatch_count += r.mismatch_count;
        total.mismatches.extend(r.mismatches);
        total.vector_seconds += r.vector_seconds;
    }
    total
}
