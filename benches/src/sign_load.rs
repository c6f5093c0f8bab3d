//! Sign throughput: the gateway over HTTP beside a raw cryptoki C_Sign loop on the same
//! SoftHSM2 token, in the same run, with the ratio. Usage:
//!   cargo build --release --workspace && target/release/sign-load [SECONDS] [HTTP_CLIENTS]
//! `BSN_BENCH_ALGORITHMS=ecdsa-p256,ed25519` runs only those.
//! `BSN_BENCH_PIN=K`: the gateway, the bare signer and the raw loops on cores 0 to K-1
//! alone, the load client on the other cores (see `Placement`; `BSN_BENCH_PIN=1`: core 0).
//! By default the load generator shares the machine's cores with the gateway; the raw loop does not
//! pay for HTTP, JSON, policy or the fsynced audit log, which is what the ratio measures.
//! Two raw loops: on the token object (as a plain cryptoki program signs), and on a
//! session copy of it (the HSM work the gateway does under SoftHSM2's profile).
//! Paired rounds: the raw loops, the bare signer and the gateway run one second each in
//! turn, SECONDS rounds, each rate over all its rounds; the per-round gateway / token
//! ratios are printed too. Where /dev/shm exists, a second gateway with its data dir
//! there (fsync returns at once) shows what the durable audit log costs.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bsn_benches::hload::{healthz_rate, http_load_metered, LoadRequest, Metered};
use bsn_benches::{agent, cores, cpu, post, run_threads, start_gateway_placed, Gateway, Placement};
use bytes::Bytes;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const ALGORITHMS: [&str; 3] = ["ecdsa-p256", "ecdsa-secp256k1", "ed25519"];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let cores = cores();
    let clients: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(4 * cores);
    let placement = Placement::from_env()?;
    let (server, client) = (placement.server_threads(), placement.client_threads());
    let dir = tempfile::tempdir()?;
    let gw = start_gateway_placed(dir.path(), &[], placement)?;
    // The same gateway with its data dir (audit log included) in memory, where fsync
    // returns at once: not durable, here only to show what the durable audit log costs.
    let mem_dir = tempfile::Builder::new()
        .prefix("bsn-sign-load")
        .tempdir_in(MEMORY_FS)
        .ok();
    let gw_mem = match &mem_dir {
        Some(d) => Some(start_gateway_placed(d.path(), &[], placement)?),
        None => None,
    };
    // Our own PKCS#11 context must see the same token: set before any thread starts.
    std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"));

    let agent = agent();
    let only = std::env::var("BSN_BENCH_ALGORITHMS").unwrap_or_default();
    let algorithms: Vec<&str> = ALGORITHMS
        .into_iter()
        .filter(|a| only.is_empty() || only.split(',').any(|o| o == *a))
        .collect();
    let keys = make_keys(&agent, &gw, &algorithms)?;
    let mem_keys = match &gw_mem {
        Some(g) => make_keys(&agent, g, &algorithms)?,
        None => Vec::new(),
    };

    let p11 = Pkcs11::new(module_path()?)?;
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let pin = std::fs::read_to_string(dir.path().join("user.pin"))?;
    let (slot, anchor) = token(&p11, pin.trim())?;
    // Each key twice: the token object, and a session copy made in the token as the
    // gateway signs with under SoftHSM2's profile (`sign_with_session_copy`).
    let handles: Vec<(String, ObjectHandle, ObjectHandle)> = keys
        .iter()
        .map(|(alg, id)| {
            let token = private_key(&anchor, id)?;
            let copy = anchor.copy_object(token, &[Attribute::Token(false)])?;
            Ok((alg.clone(), token, copy))
        })
        .collect::<anyhow::Result<_>>()?;
    // The bare signer's threads start here, on the server's cores.
    placement.as_server()?;
    let bare = bare_signer(
        &p11,
        slot,
        handles.iter().map(|(a, _, c)| (a.clone(), *c)).collect(),
        server,
    )?;

    println!("sign-load: {}", placement.describe());
    println!("{} paired rounds of 1 s: raw token, raw copy, bare, gateway (and the gateway with its audit log in memory) in turn, each rate over all rounds; sign-batch64 one run of {seconds} s", seconds.max(1));
    println!("{seconds} s per configuration, raw loops {server} threads (one session each), HTTP {clients} keep-alive connections on {client} client threads");
    println!("raw token: C_Sign on the token object; raw copy: on a session copy of it (what the gateway signs with on SoftHSM2)");
    println!("bare HTTP: hyper on {server} threads calling C_Sign inline on the copy, nothing else (no token check, policy, JSON parsing or audit): the floor of any HTTP signer here");
    println!(
        "{:<16} {:>11} {:>10} {:>7} {:>7} {:>10} {:>7} {:>7} {:>7} {:>14} {:>7}",
        "algorithm",
        "raw token/s",
        "raw copy/s",
        "bare/s",
        "/copy",
        "gateway/s",
        "/token",
        "/copy",
        "/bare",
        "sign-batch64/s",
        "/copy"
    );
    let me = std::process::id();
    let mut cpu_rows = Vec::new();
    let mut mem_rows = Vec::new();
    let mut round_rows = Vec::new();
    for (i, ((alg, id), (_, token, copy))) in keys.iter().zip(&handles).enumerate() {
        let floor = LoadRequest::new(
            hyper::Method::POST,
            &format!("/{i}"),
            None,
            vec![Bytes::from(input(alg).to_string())],
        );
        let mem_key = gw_mem.as_ref().zip(mem_keys.get(i).map(|(_, k)| k));
        // Paired rounds: every configuration runs one second in turn, so a slow stretch
        // of the host falls on all of them rather than on whichever ran then.
        let mut runs: Option<Runs> = None;
        let mut per_round = Vec::new();
        for _ in 0..seconds.max(1) {
            placement.as_server()?;
            let raw_token = raw_loop(&p11, slot, *token, alg, server, 1)?;
            let raw_copy = raw_loop(&p11, slot, *copy, alg, server, 1)?;
            placement.as_client()?;
            let bare = http_load_metered(
                &bare,
                &floor,
                clients,
                client,
                1,
                Some((me, Some(BARE_THREADS))),
                |status, _| status == 200,
            )?;
            let gateway = http_loop(&gw, id, alg, clients, client, 1, 1)?;
            let memory = match mem_key {
                Some((g, k)) => Some(http_loop(g, k, alg, clients, client, 1, 1)?),
                None => None,
            };
            per_round.push(gateway.rate / raw_token.rate);
            let round = Runs {
                raw_token,
                raw_copy,
                bare,
                gateway,
                memory,
            };
            runs = Some(match runs {
                Some(r) => r.pooled(round),
                None => round,
            });
        }
        let Runs {
            raw_token,
            raw_copy,
            bare,
            gateway: gw_run,
            memory,
        } = runs.context("no round ran")?;
        let (token_us, copy_us) = (
            raw_token.per_answer_us(1.0).1,
            raw_copy.per_answer_us(1.0).1,
        );
        let (raw_token, raw_copy) = (raw_token.rate, raw_copy.rate);
        let bare_rate = bare.rate;
        let single = gw_run.rate;
        placement.as_client()?;
        let batch = http_loop(&gw, id, alg, clients, client, seconds, 64)?.rate * 64.0;
        if let Some(mem) = memory {
            mem_rows.push((alg.clone(), raw_token, single, mem.rate));
        }
        per_round.sort_by(f64::total_cmp);
        round_rows.push((alg.clone(), per_round));
        cpu_rows.push((alg.clone(), token_us, copy_us, bare, gw_run));
        println!(
            "{alg:<16} {raw_token:>11.0} {raw_copy:>10.0} {bare_rate:>7.0} {:>7.2} {single:>10.0} {:>7.2} {:>7.2} {:>7.2} {batch:>14.0} {:>7.2}",
            bare_rate / raw_copy,
            single / raw_token,
            single / raw_copy,
            single / bare_rate,
            batch / raw_copy
        );
    }
    println!("gateway / raw token in each round, lowest to highest:");
    for (alg, ratios) in &round_rows {
        let text: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!("{alg:<16} {}", text.join(" "));
    }
    println!();
    match &mem_dir {
        Some(d) => {
            println!("What the durable audit log costs: the same gateway with its data dir in memory ({}: fsync returns at once, nothing is durable; for this comparison only):", d.path().display());
            println!(
                "{:<16} {:>10} {:>7} {:>17} {:>7} {:>14}",
                "algorithm", "gateway/s", "/token", "audit in memory/s", "/token", "durable / mem"
            );
            for (alg, raw_token, single, mem) in &mem_rows {
                println!(
                    "{alg:<16} {single:>10.0} {:>7.2} {mem:>17.0} {:>7.2} {:>14.2}",
                    single / raw_token,
                    mem / raw_token,
                    single / mem
                );
            }
        }
        None => println!("({MEMORY_FS} cannot hold a data dir here: the row without the audit log's fsync is left out)"),
    }
    println!();
    println!("CPU per signature, microseconds of all cores (user + system), over the same runs:");
    println!(
        "{:<16} {:>9} {:>9} {:>11} {:>9} {:>11} {:>11} {:>10} {:>7} {:>7} {:>15}",
        "algorithm",
        "raw token",
        "raw copy",
        "bare server",
        "gateway",
        "its client",
        "gw cores",
        "cl cores",
        "/token",
        "/copy",
        "gw preempt/sign"
    );
    for (alg, token_us, copy_us, bare, gw_run) in &cpu_rows {
        let (_, bare_us) = bare.per_answer_us(1.0);
        let (client_us, gw_us) = gw_run.per_answer_us(1.0);
        println!(
            "{alg:<16} {token_us:>9.1} {copy_us:>9.1} {bare_us:>11.1} {gw_us:>9.1} {client_us:>11.1} {:>11.2} {:>10.2} {:>7.2} {:>7.2} {:>15.3}",
            gw_run.server_cpu / gw_run.seconds,
            gw_run.client_cpu / gw_run.seconds,
            token_us / gw_us,
            copy_us / gw_us,
            gw_run.server_switches.preempted as f64 / (gw_run.rate * gw_run.seconds),
        );
    }
    println!("/token, /copy: the raw loop's CPU per signature over the gateway's (what the rate ratio would be if the gateway had every core to itself and scaled with them)");
    println!("gw preempt/sign: how often the gateway's threads were switched out while they could still run, per signature (from /proc; a signature cut in two runs on cold caches)");
    drop(anchor);
    placement.as_client()?;
    let floor = healthz_rate(&gw.endpoint.addr, clients, client, seconds)?;
    println!("HTTP floor of this client (GET /healthz, no crypto, same connections): {floor:.0} requests/s");
    println!("goal: gateway / raw token >= 0.9 (the raw loop as the issue ran it); /copy is against the same HSM work the gateway does");
    Ok(())
}

/// A memory file system where Linux has one.
const MEMORY_FS: &str = "/dev/shm";

/// One key per algorithm on `gw`: (algorithm, key id).
fn make_keys(
    agent: &ureq::Agent,
    gw: &Gateway,
    algorithms: &[&str],
) -> anyhow::Result<Vec<(String, String)>> {
    algorithms
        .iter()
        .map(|alg| {
            let r = post(
                agent,
                &gw.endpoint,
                "/v1/keys",
                &json!({"label": format!("bench-{alg}"), "algorithm": alg}),
            )?;
            Ok((
                alg.to_string(),
                r["id"].as_str().context("key id")?.to_string(),
            ))
        })
        .collect()
}

fn input(alg: &str) -> Value {
    if alg == "ed25519" {
        json!({"message_b64": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="})
    } else {
        json!({"digest": format!("0x{}", "42".repeat(32))})
    }
}

/// Requests/s through HTTP over `clients` keep-alive connections on `threads` client
/// threads, with the CPU of the gateway and of the client; `batch` > 1 uses sign-batch.
fn http_loop(
    gw: &Gateway,
    id: &str,
    alg: &str,
    clients: usize,
    threads: usize,
    seconds: u64,
    batch: usize,
) -> anyhow::Result<Metered> {
    let (path, body) = if batch == 1 {
        let mut b = input(alg);
        b["format"] = json!("raw");
        (format!("/v1/keys/{id}/sign"), b)
    } else {
        let items: Vec<_> = (0..batch).map(|_| input(alg)).collect();
        (
            format!("/v1/keys/{id}/sign-batch"),
            json!({"items": items, "format": "raw"}),
        )
    };
    let req = LoadRequest::post_json(&path, &gw.endpoint.token, &body);
    gw.load(&req, clients, threads, seconds, |status, _| status == 200)
}

/// The dev token's slot, with the user logged in on `anchor` (kept open while others
/// sign: the login belongs to the application, not one session).
fn token(p11: &Pkcs11, pin: &str) -> anyhow::Result<(Slot, Session)> {
    let slot = p11
        .get_slots_with_token()?
        .into_iter()
        .find(|s| {
            p11.get_token_info(*s)
                .map(|t| t.label() == "bsn-gateway-dev")
                .unwrap_or(false)
        })
        .context("dev token")?;
    let anchor = p11.open_ro_session(slot)?;
    match anchor.login(UserType::User, Some(&AuthPin::from(pin.to_string()))) {
        Ok(())
        | Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserAlreadyLoggedIn, _)) => {
        }
        Err(e) => return Err(e.into()),
    }
    Ok((slot, anchor))
}

fn private_key(session: &Session, id: &str) -> anyhow::Result<ObjectHandle> {
    let key = session.find_objects(&[
        Attribute::Token(true),
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Id(hex::decode(id)?),
    ])?;
    Ok(*key.first().context("key on token")?)
}

fn mechanism(alg: &str) -> Mechanism<'static> {
    if alg == "ed25519" {
        Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
    } else {
        Mechanism::Ecdsa
    }
}

/// Signs/s calling C_Sign directly, one session per thread, the key handle found once,
/// and the CPU this process used meanwhile (nothing else runs in it), as `server_cpu`.
fn raw_loop(
    p11: &Pkcs11,
    slot: Slot,
    key: ObjectHandle,
    alg: &str,
    threads: usize,
    seconds: u64,
) -> anyhow::Result<Metered> {
    let data: Vec<u8> = vec![0x42; 32];
    let alg = alg.to_string();
    let p11 = p11.clone();
    let meter = cpu::Meter::start(&[(std::process::id(), None)])?;
    let rate = run_threads(threads, seconds, move |stop, count| {
        let session = p11.open_ro_session(slot).expect("session");
        let mech = mechanism(&alg);
        while !stop.load(Ordering::Relaxed) {
            session.sign(&mech, key, &data).expect("C_Sign");
            count.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    Ok(Metered {
        rate,
        seconds: seconds as f64,
        client_cpu: 0.0,
        server_cpu: meter.read()?[0],
        server_switches: Default::default(),
    })
}

/// One round of each configuration, or several pooled.
struct Runs {
    raw_token: Metered,
    raw_copy: Metered,
    bare: Metered,
    gateway: Metered,
    memory: Option<Metered>,
}

impl Runs {
    fn pooled(self, other: Runs) -> Runs {
        Runs {
            raw_token: self.raw_token.pooled(other.raw_token),
            raw_copy: self.raw_copy.pooled(other.raw_copy),
            bare: self.bare.pooled(other.bare),
            gateway: self.gateway.pooled(other.gateway),
            memory: match (self.memory, other.memory) {
                (Some(a), Some(b)) => Some(a.pooled(b)),
                _ => None,
            },
        }
    }
}

/// The floor of any HTTP signer on this host: hyper on as many runtime threads as the
/// gateway, C_Sign made inline on a pooled session (as the gateway does on SoftHSM2), the
/// signature sent back as JSON, and nothing else: no token check, policy, JSON parsing or
/// audit line. Raw loop to this floor is what HTTP and the client cost on shared cores;
/// this floor to the gateway is the gateway's own work. `POST /{i}` signs 32 bytes of
/// 0x42 with `keys[i]` (algorithm, handle). Returns the address; the server lives as long
/// as the process.
fn bare_signer(
    p11: &Pkcs11,
    slot: Slot,
    keys: Vec<(String, ObjectHandle)>,
    threads: usize,
) -> anyhow::Result<String> {
    let keys = Arc::new(keys);
    let sessions: Vec<Session> = (0..threads)
        .map(|_| p11.open_ro_session(slot))
        .collect::<Result<_, _>>()?;
    let pool = Arc::new(Mutex::new(sessions));
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?.to_string();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(BARE_THREADS)
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (pool, keys) = (pool.clone(), keys.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (pool, keys) = (pool.clone(), keys.clone());
                        async move { bare_sign(&pool, &keys, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        })
    });
    Ok(addr)
}

/// The bare signer's thread name, by which its CPU is told from the load client's.
const BARE_THREADS: &str = "bare-signer";

async fn bare_sign(
    pool: &Mutex<Vec<Session>>,
    keys: &[(String, ObjectHandle)],
    req: hyper::Request<hyper::body::Incoming>,
) -> anyhow::Result<hyper::Response<Full<Bytes>>> {
    let i: usize = req.uri().path().trim_start_matches('/').parse()?;
    let (alg, key) = keys.get(i).context("no such key")?;
    let _body = req.into_body().collect().await?.to_bytes();
    let mech = mechanism(alg);
    let session = pool.lock().expect("pool").pop().context("a free session")?;
    let signed = session.sign(&mech, *key, &[0x42; 32]);
    pool.lock().expect("pool").push(session);
    let body = json!({ "signature": format!("0x{}", hex::encode(signed?)) }).to_string();
    Ok(hyper::Response::new(Full::new(Bytes::from(body))))
}

fn module_path() -> anyhow::Result<PathBuf> {
    Ok(bsn_gateway::custody::profile::Profile::built_in("softhsm2")?.module_path(None)?)
}
