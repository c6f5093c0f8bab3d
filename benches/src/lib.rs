//! Shared by the load harnesses and the criterion benches: starting the gateway, calling
//! it, running client threads for a fixed time, signed fixtures per algorithm, and the
//! `openssl speed` figures every result is printed beside.

pub mod cpu;
pub mod hload;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bsn_gateway::algorithm::Algorithm;
use serde_json::Value;

/// Where the gateway listens and how to call it; cloned into each client thread.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: String,
    /// The operations listener (`/metrics`, `/readyz`).
    pub ops: String,
    pub token: String,
}

/// The release gateway binary, serving the embedded default; killed on drop.
pub struct Gateway {
    child: Child,
    pub endpoint: Endpoint,
}

impl Gateway {
    /// The gateway's process id, for counting its CPU.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `req` sent again and again over `conns` connections on `threads` client threads
    /// for `seconds`, with the CPU of the gateway and of the client (`http_load_metered`).
    pub fn load<C>(
        &self,
        req: &hload::LoadRequest,
        conns: usize,
        threads: usize,
        seconds: u64,
        check: C,
    ) -> anyhow::Result<hload::Metered>
    where
        C: Fn(u16, &[u8]) -> bool + Send + Sync + 'static,
    {
        hload::http_load_metered(
            &self.endpoint.addr,
            req,
            conns,
            threads,
            seconds,
            Some((self.pid(), None)),
            check,
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_gateway(dir: &Path) -> anyhow::Result<Gateway> {
    start_gateway_with(dir, &[])
}

/// The embedded default with more flags (`--ledger ...`).
pub fn start_gateway_with(dir: &Path, extra: &[String]) -> anyhow::Result<Gateway> {
    start_gateway_placed(dir, extra, Placement::Shared)
}

/// The embedded default, on the server's cores of `placement`.
pub fn start_gateway_placed(
    dir: &Path,
    extra: &[String],
    placement: Placement,
) -> anyhow::Result<Gateway> {
    // `BSN_BENCH_GATEWAY=PATH`: another build of the gateway against the same client and
    // peers, for a before-and-after where only one build of the bench is at hand.
    let bin = match std::env::var_os("BSN_BENCH_GATEWAY").filter(|v| !v.is_empty()) {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            if !path.is_file() {
                bail!("BSN_BENCH_GATEWAY={}: no such file", path.display());
            }
            println!("gateway: {} (BSN_BENCH_GATEWAY)", path.display());
            path
        }
        None => {
            let path = std::env::current_exe()?.with_file_name("bsn-gateway");
            if !path.exists() {
                bail!(
                    "{} not found: cargo build --release --workspace",
                    path.display()
                );
            }
            path
        }
    };
    let mut cmd = match placement {
        Placement::Shared => Command::new(&bin),
        Placement::Pinned { .. } => {
            // taskset execs the gateway: the child's pid is the gateway's.
            let mut c = Command::new("taskset");
            c.args(["-c", &placement.server_cpus()]).arg(&bin);
            c
        }
    };
    let child = cmd
        .args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .env("BSN_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let addr_file = dir.join("gateway.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !addr_file.exists() {
        if Instant::now() > deadline {
            bail!("gateway did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Gateway {
        child,
        endpoint: Endpoint {
            addr: std::fs::read_to_string(addr_file)?,
            // Written before gateway.addr.
            ops: std::fs::read_to_string(dir.join("ops.addr"))?,
            token: std::fs::read_to_string(dir.join("admin.token"))?,
        },
    })
}

impl Endpoint {
    /// The value of this exact series (name and labels as the exporter writes them) in a
    /// fresh scrape of the operations listener.
    pub fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let text = agent()
            .get(format!("http://{}/metrics", self.ops.trim()))
            .call()?
            .body_mut()
            .read_to_string()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .with_context(|| format!("no {series} in the gateway's metrics"))
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

pub fn post(agent: &ureq::Agent, gw: &Endpoint, path: &str, body: &Value) -> anyhow::Result<Value> {
    let mut resp = agent
        .post(format!("http://{}{path}", gw.addr))
        .header("Authorization", format!("Bearer {}", gw.token))
        .send_json(body)?;
    let status = resp.status().as_u16();
    let v: Value = resp.body_mut().read_json()?;
    if !(200..300).contains(&status) {
        bail!("{path}: {status} {v}");
    }
    Ok(v)
}

/// Runs `work` on `n` threads for `seconds`; returns the summed count per second.
pub fn run_threads<F>(n: usize, seconds: u64, work: F) -> anyhow::Result<f64>
where
    F: Fn(&AtomicBool, &AtomicU64) + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let started = Instant::now();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let (stop, count, work) = (stop.clone(), count.clone(), work.clone());
            std::thread::spawn(move || work(&stop, &count))
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
    }
    Ok(count.load(std::sync::atomic::Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Where a harness runs its two sides. `Shared` (the default): the server side (the
/// gateway, a bare signer, a raw loop) and the load client all run on every core.
/// `Pinned` (`BSN_BENCH_PIN=K`): the server side on cores 0 to K-1 only and the client on
/// the others, so that the client never takes the server's cores; the server's figures
/// are then K cores', against a peer on K cores (`BSN_BENCH_PIN=1`: one core's).
#[derive(Clone, Copy, Debug)]
pub enum Placement {
    Shared,
    Pinned { cores: usize, server: usize },
}

impl Placement {
    /// From `BSN_BENCH_PIN` (unset, empty or 0: shared); call before anything is pinned
    /// (it counts the cores).
    pub fn from_env() -> anyhow::Result<Placement> {
        let var = std::env::var("BSN_BENCH_PIN").unwrap_or_default();
        let server: usize = match var.trim() {
            "" | "0" => return Ok(Placement::Shared),
            v => v.parse().with_context(|| {
                format!("BSN_BENCH_PIN={v}: the number of the server side's cores")
            })?,
        };
        let cores = cores();
        if server >= cores {
            bail!("BSN_BENCH_PIN={server} leaves no core to the load client; this process may use {cores}");
        }
        Ok(Placement::Pinned { cores, server })
    }

    /// Threads for the server side: a raw loop's, a bare signer's; also the cores the peer
    /// is measured on.
    pub fn server_threads(&self) -> usize {
        match self {
            Placement::Shared => cores(),
            Placement::Pinned { server, .. } => *server,
        }
    }

    /// Threads for the load client.
    pub fn client_threads(&self) -> usize {
        match self {
            Placement::Shared => cores(),
            Placement::Pinned { cores, server } => cores - server,
        }
    }

    /// The server side's cores, as taskset takes them.
    fn server_cpus(&self) -> String {
        match self {
            Placement::Pinned { server: 1, .. } => "0".into(),
            Placement::Pinned { server, .. } => format!("0-{}", server - 1),
            Placement::Shared => format!("0-{}", cores() - 1),
        }
    }

    /// Moves the calling thread to the server's cores; threads it starts from now on
    /// inherit that. Call from the main thread.
    pub fn as_server(&self) -> anyhow::Result<()> {
        match self {
            Placement::Shared => Ok(()),
            Placement::Pinned { .. } => pin_main_thread(&self.server_cpus()),
        }
    }

    /// Moves the calling thread back onto every core (a peer measured with all of them
    /// free), as `as_server`.
    pub fn as_any(&self) -> anyhow::Result<()> {
        match self {
            Placement::Shared => Ok(()),
            Placement::Pinned { cores, .. } => pin_main_thread(&format!("0-{}", cores - 1)),
        }
    }

    /// Moves the calling thread to the client's cores, as `as_server`.
    pub fn as_client(&self) -> anyhow::Result<()> {
        match self {
            Placement::Shared => Ok(()),
            Placement::Pinned { cores, server } => {
                pin_main_thread(&format!("{server}-{}", cores - 1))
            }
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Placement::Shared => format!(
                "shared: server side and load client on all {} cores",
                cores()
            ),
            Placement::Pinned { cores, server } => format!(
                "pinned: server side on {} {} alone, load client on cores {server}-{} (BSN_BENCH_PIN={server})",
                if *server == 1 { "core" } else { "cores" },
                self.server_cpus(),
                cores - 1
            ),
        }
    }
}

/// `taskset` on the main thread (its thread id is the process id): the workspace forbids
/// the `unsafe` a direct sched_setaffinity would need.
fn pin_main_thread(cpus: &str) -> anyhow::Result<()> {
    let out = Command::new("taskset")
        .args(["-cp", cpus, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .output()
        .context("run taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset -cp {cpus}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One signed message: the key as SEC1 (EC) or raw (Ed25519) bytes, the signature in
/// `format`, made by OpenSSL, libsecp256k1 or ed25519-dalek (not by the code under test).
pub struct Fixture {
    pub algorithm: Algorithm,
    pub key: Vec<u8>,
    pub msg: Vec<u8>,
    pub sig: Vec<u8>,
    pub format: &'static str,
}

pub fn fixtures(algorithm: Algorithm, n: usize) -> Vec<Fixture> {
    (0..n).map(|i| fixture(algorithm, i)).collect()
}

fn fixture(algorithm: Algorithm, i: usize) -> Fixture {
    use openssl::bn::BigNumContext;
    use openssl::ec::{EcGroup, EcKey, PointConversionForm};
    use openssl::nid::Nid;
    let msg = format!("bench message {i}: transfer {} units", i * 7).into_bytes();
    let mut seed = [0u8; 32];
    openssl::rand::rand_bytes(&mut seed).expect("CSPRNG");
    let ec_point = |k: &EcKey<openssl::pkey::Private>| {
        let mut ctx = BigNumContext::new().unwrap();
        k.public_key()
            .to_bytes(k.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap()
    };
    match algorithm {
        Algorithm::EcdsaP256 => {
            let k =
                EcKey::generate(&EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap()).unwrap();
            let sig = openssl::ecdsa::EcdsaSig::sign(&openssl::sha::sha256(&msg), &k).unwrap();
            Fixture {
                algorithm,
                key: ec_point(&k),
                msg,
                sig: sig.to_der().unwrap(),
                format: "der",
            }
        }
        Algorithm::EcdsaSecp256k1 => {
            let secp = secp256k1::Secp256k1::signing_only();
            let sk = secp256k1::SecretKey::from_byte_array(seed).expect("seed in range");
            let digest = openssl::sha::sha256(&msg);
            let sig = secp.sign_ecdsa(secp256k1::Message::from_digest(digest), &sk);
            Fixture {
                algorithm,
                key: sk.public_key(&secp).serialize().to_vec(),
                msg,
                sig: sig.serialize_der().to_vec(),
                format: "der",
            }
        }
        Algorithm::Ed25519 => {
            use ed25519_dalek::Signer;
            let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
            let sig = sk.sign(&msg);
            Fixture {
                algorithm,
                key: sk.verifying_key().to_bytes().to_vec(),
                msg,
                sig: sig.to_bytes().to_vec(),
                format: "raw",
            }
        }
        Algorithm::Sm2 => {
            let k = EcKey::generate(&EcGroup::from_curve_name(Nid::SM2).unwrap()).unwrap();
            let point = ec_point(&k);
            let mut zm = bsn_gateway::verify::keys::sm2_z(&point).to_vec();
            zm.extend_from_slice(&msg);
            let e = bsn_gateway::verify::keys::sm3(&zm);
            let pkey = openssl::pkey::PKey::from_ec_key(k).unwrap();
            let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&pkey).unwrap();
            ctx.sign_init().unwrap();
            let mut sig = Vec::new();
            ctx.sign_to_vec(&e, &mut sig).unwrap();
            Fixture {
                algorithm,
                key: point,
                msg,
                sig,
                format: "der",
            }
        }
    }
}

/// Verifications per second from `openssl speed -mr`, by our algorithm names (OpenSSL 3.0
/// has no secp256k1 in `speed`), summed over `processes` run at once (`-multi`). On a
/// machine whose cores do not each give a full core's speed when all are busy (SMT
/// siblings, a shared VM host), this and not one process x cores is what all cores can do.
pub fn openssl_speed(
    seconds: u32,
    processes: usize,
    algorithms: &[Algorithm],
) -> anyhow::Result<Vec<(Algorithm, f64)>> {
    let mut cmd = Command::new("openssl");
    cmd.args(["speed", "-mr", "-seconds", &seconds.to_string()]);
    if processes > 1 {
        cmd.args(["-multi", &processes.to_string()]);
    }
    for a in algorithms {
        cmd.arg(match a {
            Algorithm::EcdsaP256 => "ecdsap256",
            Algorithm::Ed25519 => "ed25519",
            Algorithm::Sm2 => "sm2",
            Algorithm::EcdsaSecp256k1 => bail!("openssl speed has no secp256k1"),
        });
    }
    let out = cmd
        .stderr(Stdio::null())
        .output()
        .context("run openssl speed")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut found = Vec::new();
    // With -multi, each child's figures come as "Got: +F4:..." lines, then the totals.
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        // +F4:i:bits:sign/s:verify/s (ECDSA); +F6/+F7:i:bits:name:sign/s:verify/s (EdDSA, SM2)
        let (alg, verify) = match f.first().copied() {
            Some("+F4") if f.get(2) == Some(&"256") => (Algorithm::EcdsaP256, f.get(4)),
            Some("+F6") if f.get(3) == Some(&"Ed25519") => (Algorithm::Ed25519, f.get(5)),
            Some("+F7") => (Algorithm::Sm2, f.get(5)),
            _ => continue,
        };
        if let Some(v) = verify.and_then(|v| v.parse::<f64>().ok()) {
            found.push((alg, v));
        }
    }
    if found.len() != algorithms.len() {
        bail!("could not read openssl speed output:\n{text}");
    }
    Ok(found)
}

/// libsecp256k1's own verify, with the SHA-256 the engine also does per item, on `threads`
/// threads at once for `seconds`: the summed verifies/s. The peer for secp256k1.
pub fn libsecp256k1_speed(threads: usize, seconds: u64) -> anyhow::Result<f64> {
    let f = &fixtures(Algorithm::EcdsaSecp256k1, 1)[0];
    let pk = secp256k1::PublicKey::from_slice(&f.key)?;
    let sig = secp256k1::ecdsa::Signature::from_der(&f.sig)?;
    let msg = f.msg.clone();
    run_threads(threads, seconds, move |stop, count| {
        let secp = secp256k1::Secp256k1::verification_only();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for _ in 0..64 {
                let m = secp256k1::Message::from_digest(bsn_gateway::util::sha256(&msg));
                assert!(secp.verify_ecdsa(m, &sig, &pk).is_ok());
            }
            count.fetch_add(64, std::sync::atomic::Ordering::Relaxed);
        }
    })
}

/// Each algorithm's peer, in verifies/s: on one core alone, and summed over all `cores`
/// busy at once.
pub struct Peer {
    pub algorithm: Algorithm,
    pub name: &'static str,
    pub one_core: f64,
    pub all_cores: f64,
}

impl Peer {
    /// The figure a server side placed so is held against: every core of the server
    /// side busy (the peer measured on `placement.server_threads()` cores), one core's
    /// figure when it is pinned to one.
    pub fn against(&self, placement: Placement) -> f64 {
        match placement {
            Placement::Pinned { server: 1, .. } => self.one_core,
            _ => self.all_cores,
        }
    }
}

/// The peer of one algorithm: on one core, then on `cores` at once, `seconds` each.
pub fn peer(algorithm: Algorithm, seconds: u32, cores: usize) -> anyhow::Result<Peer> {
    Ok(Peer {
        algorithm,
        name: if algorithm == Algorithm::EcdsaSecp256k1 {
            "libsecp256k1"
        } else {
            "openssl speed"
        },
        one_core: peer_on_all_cores(algorithm, 1, seconds)?,
        all_cores: peer_on_all_cores(algorithm, cores, seconds)?,
    })
}

pub fn peers(seconds: u32, cores: usize) -> anyhow::Result<Vec<Peer>> {
    let algorithms = [Algorithm::EcdsaP256, Algorithm::Ed25519, Algorithm::Sm2];
    let one = openssl_speed(seconds, 1, &algorithms)?;
    let all = openssl_speed(seconds, cores, &algorithms)?;
    let mut out: Vec<Peer> = one
        .iter()
        .map(|&(algorithm, one_core)| Peer {
            algorithm,
            name: "openssl speed",
            one_core,
            all_cores: all
                .iter()
                .find(|(a, _)| *a == algorithm)
                .map_or(0.0, |(_, v)| *v),
        })
        .collect();
    out.push(peer(Algorithm::EcdsaSecp256k1, seconds, cores)?);
    Ok(out)
}

/// The peer of `algorithm` with all `cores` busy at once for `seconds`: summed verifies/s.
pub fn peer_on_all_cores(algorithm: Algorithm, cores: usize, seconds: u32) -> anyhow::Result<f64> {
    if algorithm == Algorithm::EcdsaSecp256k1 {
        return libsecp256k1_speed(cores, seconds.into());
    }
    Ok(openssl_speed(seconds, cores, &[algorithm])?[0].1)
}
