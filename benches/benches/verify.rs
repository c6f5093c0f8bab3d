//! Verification speed per algorithm: the library call alone ("single", for secp256k1 that
//! is libsecp256k1's own verify), the one-time cost of a key the cache has not seen
//! ("parse-key"), then the engine with 1 and all workers at 1, 16, 64 and 256 items per
//! call, as a stream that keeps enough calls in flight for every worker. At the end a
//! table gives verifies/s per core beside the peer (`openssl speed`, libsecp256k1 for
//! secp256k1) measured in the same run twice: on one core alone, and per core with every
//! core busy at once, which is what the engine's workers face.
//!   cargo bench -p bsn-benches --bench verify

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bsn_benches::{cores, fixtures, peer_on_all_cores, peers, Fixture};
use bsn_gateway::algorithm::Algorithm;
use bsn_gateway::verify::{Engine, Hash, Item, KeyInput, Message, SigFormat, Task, VerifyConfig};
use criterion::{BenchmarkId, Criterion, Throughput};

const SIZES: [usize; 4] = [1, 16, 64, 256];

fn task(f: &Fixture) -> Task {
    Task::Verify(Item {
        algorithm: f.algorithm,
        key: KeyInput::Bytes(f.key.clone()),
        message: Message::Bytes(f.msg.clone()),
        hash: Hash::Sha256,
        signature: f.sig.clone(),
        format: SigFormat::parse(f.format).expect("format"),
        require_low_s: false,
    })
}

/// The library call with nothing around it: the floor the engine is measured against.
fn single(f: &Fixture) -> impl Fn() -> bool {
    use openssl::bn::BigNumContext;
    use openssl::ec::{EcGroup, EcKey, EcPoint};
    use openssl::nid::Nid;
    let msg = f.msg.clone();
    let sig = f.sig.clone();
    let key = f.key.clone();
    let ec = move |nid| {
        let group = EcGroup::from_curve_name(nid).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let point = EcPoint::from_bytes(&group, &key, &mut ctx).unwrap();
        EcKey::from_public_key(&group, &point).unwrap()
    };
    let f: Box<dyn Fn() -> bool> = match f.algorithm {
        Algorithm::EcdsaP256 => {
            let k = ec(Nid::X9_62_PRIME256V1);
            let s = openssl::ecdsa::EcdsaSig::from_der(&sig).unwrap();
            Box::new(move || s.verify(&bsn_gateway::util::sha256(&msg), &k).unwrap())
        }
        Algorithm::EcdsaSecp256k1 => {
            let secp = secp256k1::Secp256k1::verification_only();
            let pk = secp256k1::PublicKey::from_slice(&f.key).unwrap();
            let s = secp256k1::ecdsa::Signature::from_der(&sig).unwrap();
            Box::new(move || {
                // The same hash the engine uses, so the ratio is the engine's own cost.
                let m = secp256k1::Message::from_digest(bsn_gateway::util::sha256(&msg));
                secp.verify_ecdsa(m, &s, &pk).is_ok()
            })
        }
        Algorithm::Ed25519 => {
            let vk = ed25519_dalek::VerifyingKey::from_bytes(&f.key.clone().try_into().unwrap())
                .unwrap();
            let s = ed25519_dalek::Signature::from_slice(&sig).unwrap();
            Box::new(move || vk.verify_strict(&msg, &s).is_ok())
        }
        Algorithm::Sm2 => {
            // The gateway's own SM2 (OpenSSL's is the peer, through `openssl speed`).
            let key = bsn_gateway::verify::sm2p256::Sm2Key::new(
                f.key[1..33].try_into().unwrap(),
                f.key[33..].try_into().unwrap(),
            );
            let z = bsn_gateway::verify::keys::sm2_z(&f.key);
            let s = openssl::ecdsa::EcdsaSig::from_der(&sig).unwrap();
            let (r, s) = (
                s.r().to_vec_padded(32).unwrap(),
                s.s().to_vec_padded(32).unwrap(),
            );
            Box::new(move || {
                let mut zm = z.to_vec();
                zm.extend_from_slice(&msg);
                let e = bsn_gateway::verify::keys::sm3(&zm);
                key.verify(&e, r[..].try_into().unwrap(), s[..].try_into().unwrap())
            })
        }
    };
    f
}

fn name(alg: Algorithm) -> &'static str {
    alg.as_str()
}

fn bench(c: &mut Criterion, rt: &tokio::runtime::Runtime, worker_counts: &[usize]) {
    for alg in Algorithm::ALL {
        let fx = fixtures(alg, 256);
        let tasks: Vec<Task> = fx.iter().map(task).collect();
        let mut g = c.benchmark_group(name(alg));
        g.throughput(Throughput::Elements(1));
        let one = single(&fx[0]);
        assert!(one(), "{alg}: the fixture verifies");
        g.bench_function("single", |b| b.iter(&one));
        // What a key not yet in the engine's cache costs once: parsing, point checks and,
        // for SM2, Z and the key's table.
        let key = fx[0].key.clone();
        g.bench_function("parse-key", |b| {
            b.iter(|| bsn_gateway::verify::keys::parse_bytes(alg, &key).is_ok())
        });
        if alg == Algorithm::Ed25519 {
            // The part of "parse-key" that only a CPU with IFMA pays (A's affine
            // coordinates for the lanes); it runs on any CPU, so it is measured on any.
            let raw: [u8; 32] = key.as_slice().try_into().unwrap();
            g.bench_function("decompress-for-lanes", |b| {
                b.iter(|| bsn_gateway::verify::mb::ed25519_decompress(&raw).is_some())
            });
        }
        for &workers in worker_counts {
            let engine = Arc::new(
                Engine::start(&VerifyConfig {
                    workers,
                    ..VerifyConfig::default()
                })
                .unwrap(),
            );
            for size in SIZES {
                g.throughput(Throughput::Elements(size as u64));
                g.bench_with_input(
                    BenchmarkId::new(format!("engine-{workers}w"), size),
                    &size,
                    |b, &size| {
                        b.iter_custom(|iters| {
                            // Built before the clock starts: the engine's cost, not the
                            // bench's cloning, is what is timed.
                            let calls = calls(&tasks, iters as usize, size);
                            rt.block_on(stream(&engine, calls, in_flight(workers, size)))
                        })
                    },
                );
            }
        }
        g.finish();
    }
}

/// `n` calls of `size` items each, taken in turn from the fixtures' tasks.
fn calls(tasks: &[Task], n: usize, size: usize) -> Vec<Vec<Task>> {
    (0..n)
        .map(|i| {
            (0..size)
                .map(|j| tasks[(i * size + j) % tasks.len()].clone())
                .collect()
        })
        .collect()
}

/// Calls kept in flight: enough that every worker always has a full micro-batch waiting.
fn in_flight(workers: usize, size: usize) -> usize {
    (workers * 4).max(256 / size).min(64)
}

/// Runs every call through the engine with `depth` of them in flight at all times, as a
/// loaded gateway does: a new call starts as soon as one is answered, so workers never
/// wait for a round of calls to drain. Returns the time the whole stream took.
async fn stream(engine: &Arc<Engine>, calls: Vec<Vec<Task>>, depth: usize) -> Duration {
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for batch in calls {
        if set.len() >= depth {
            check(set.join_next().await);
        }
        let engine = engine.clone();
        set.spawn(async move { engine.run(batch).await });
    }
    while let Some(r) = set.join_next().await {
        check(Some(r));
    }
    started.elapsed()
}

type Answer = Result<
    Result<Vec<bsn_gateway::verify::Outcome>, bsn_gateway::verify::EngineError>,
    tokio::task::JoinError,
>;

fn check(answer: Option<Answer>) {
    let out = answer
        .expect("a call in flight")
        .expect("task")
        .expect("engine answers");
    assert!(out
        .iter()
        .all(|o| *o == bsn_gateway::verify::Outcome::Valid));
}

/// Verifications per second from criterion's saved estimate for one benchmark.
fn rate(dir: &Path, group: &str, id: &str, elements: f64) -> Option<f64> {
    let path = dir.join(group).join(id).join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let ns = v["mean"]["point_estimate"].as_f64()?;
    Some(elements / (ns / 1e9))
}

fn main() {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("criterion-verify");
    let cores = cores();
    let worker_counts: Vec<usize> = if cores > 1 { vec![1, cores] } else { vec![1] };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut c = Criterion::default()
        .output_directory(&out_dir)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
        .configure_from_args();
    bench(&mut c, &rt, &worker_counts);
    c.final_summary();

    let peers = peers(3, cores).unwrap_or_else(|e| {
        eprintln!("peers: {e}");
        Vec::new()
    });
    let all = *worker_counts.last().unwrap();
    println!("\nverifies/s per core ({cores} cores; the bench's own thread shares them)");
    println!(
        "{:<16} {:>10} {:>14} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "algorithm", "single", "peer", "1 core", "all busy", "engine b1", "b16", "b64", "b256"
    );
    for alg in Algorithm::ALL {
        let g = name(alg);
        let single = rate(&out_dir, g, "single", 1.0).unwrap_or(0.0);
        let Some(peer) = peers.iter().find(|p| p.algorithm == alg) else {
            continue;
        };
        let per_core_busy = peer.all_cores / cores as f64;
        let per_size: Vec<f64> = SIZES
            .iter()
            .map(|&size| {
                rate(&out_dir, g, &format!("engine-{all}w/{size}"), size as f64).unwrap_or(0.0)
                    / all as f64
            })
            .collect();
        println!(
            "{g:<16} {single:>10.0} {:>14} {:>10.0} {per_core_busy:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            peer.name, peer.one_core, per_size[0], per_size[1], per_size[2], per_size[3]
        );
        let best = per_size.iter().cloned().fold(0.0, f64::max);
        let goal = match alg {
            Algorithm::EcdsaP256 => 0.9,
            Algorithm::EcdsaSecp256k1 => 0.9,
            Algorithm::Ed25519 => 2.0,
            Algorithm::Sm2 => 1.0,
        };
        println!(
            "{:<16} engine ({all} workers, best batch) per core / {} per core: {:.2} against one core alone, {:.2} with all {cores} busy (goal >= {goal})",
            "",
            peer.name,
            best / peer.one_core,
            best / per_core_busy,
        );
    }
    // The figures above come from different minutes; on a shared host the load moves
    // between them. Paired rounds alternate peer and engine, a second each, so a change in
    // load hits both alike; the median of the per-round ratios is the figure to trust.
    let engine = Arc::new(
        Engine::start(&VerifyConfig {
            workers: all,
            ..VerifyConfig::default()
        })
        .unwrap(),
    );
    println!("\npaired rounds: {ROUNDS} x (peer on all {cores} cores 1 s, engine with {all} workers ~1 s, {PAIRED_SIZE} items per call)");
    for alg in Algorithm::ALL {
        let tasks: Vec<Task> = fixtures(alg, 256).iter().map(task).collect();
        let mut ratios = Vec::new();
        let mut rate_guess = 10_000.0;
        for _ in 0..ROUNDS {
            let peer = match peer_on_all_cores(alg, cores, 1) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{alg}: {e}");
                    break;
                }
            };
            let n = ((rate_guess / PAIRED_SIZE as f64) as usize).max(1);
            let batch = calls(&tasks, n, PAIRED_SIZE);
            let took = rt.block_on(stream(&engine, batch, in_flight(all, PAIRED_SIZE)));
            let rate = (n * PAIRED_SIZE) as f64 / took.as_secs_f64();
            rate_guess = rate;
            ratios.push(rate / peer);
        }
        if ratios.is_empty() {
            continue;
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "{:<16} engine / {} with all cores busy: median {:.2} (rounds {:.2} to {:.2})",
            name(alg),
            peers
                .iter()
                .find(|p| p.algorithm == alg)
                .map_or("peer", |p| p.name),
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        );
    }
}

const ROUNDS: usize = 5;
const PAIRED_SIZE: usize = 64;
