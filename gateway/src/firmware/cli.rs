//! The `bsn-gateway firmware` commands, over `bundle` and `slots`; the HSM is reached with
//! the same config the gateway runs on, the release key through a gateway's sign API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};

use super::bundle::Bundle;
use super::slots::Root;
use crate::config::Config;
use crate::custody::hsm::Hsm;

/// One session on the token, for the counter.
pub fn open_hsm(config: &Config) -> anyhow::Result<Arc<Hsm>> {
    Ok(config.hsm.open_hsm(&config.hsm.profile()?, 1, None)?)
}

fn block_on<T>(f: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

fn min_security_version(hsm: &Arc<Hsm>) -> anyhow::Result<u64> {
    block_on(async {
        Ok(hsm
            .run("firmware", "any", true, |h, s| h.min_security_version(s))
            .await?)
    })
}

/// `build`: this build's payloads (the running binary unless `binary` names another, the
/// built-in HSM profiles, the systemd unit, the default config).
pub fn build(
    version: &str,
    security_version: u64,
    out: &Path,
    binary: Option<&Path>,
) -> anyhow::Result<()> {
    let exe = match binary {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?,
    };
    let mut payloads = vec![(
        "bsn-gateway".to_string(),
        std::fs::read(&exe).with_context(|| format!("{}", exe.display()))?,
    )];
    for (name, text) in crate::custody::profile::BUILT_IN {
        payloads.push((
            format!("hsm-profiles/{name}.toml"),
            text.as_bytes().to_vec(),
        ));
    }
    payloads.push((
        "bsn-gateway.service".into(),
        include_bytes!("../../../deploy/systemd/bsn-gateway.service").to_vec(),
    ));
    payloads.push((
        "gateway.toml".into(),
        include_bytes!("../../../deploy/deb/gateway.toml").to_vec(),
    ));
    Bundle::build(version, security_version, payloads)?.write(out)?;
    println!(
        "{}: {version}, security version {security_version}, unsigned",
        out.display()
    );
    Ok(())
}

/// `sign`: the manifest's SHA-256 signed by a custody key through a gateway (plain HTTP on
/// the management network; the command speaks no TLS), checked against the certificate
/// before it is attached.
pub fn sign(
    file: &Path,
    gateway: &str,
    token_file: &Path,
    key_id: &str,
    cert: &Path,
) -> anyhow::Result<()> {
    let mut bundle = Bundle::read(file)?;
    let digest = crate::util::sha256(bundle.manifest_bytes()?);
    let token = std::fs::read_to_string(token_file).context("token file")?;
    let body =
        serde_json::json!({"digest": crate::util::hex0x(&digest), "format": "der"}).to_string();
    let answer = post(
        gateway,
        &format!("/v1/keys/{key_id}/sign"),
        token.trim(),
        &body,
    )?;
    let signature = answer["signature"]
        .as_str()
        .and_then(|s| crate::util::unhex0x(s).ok())
        .with_context(|| format!("the gateway answered {answer}"))?;
    let pem = std::fs::read_to_string(cert).context("release certificate")?;
    let leaf = openssl::x509::X509::from_pem(pem.as_bytes())?;
    let ok = openssl::ecdsa::EcdsaSig::from_der(&signature)
        .and_then(|s| s.verify(&digest, &*leaf.public_key()?.ec_key()?))
        .unwrap_or(false);
    if !ok {
        bail!(
            "the signature does not verify with {}: the key and the certificate do not match",
            cert.display()
        );
    }
    bundle.attach(signature, &pem);
    bundle.write(file)?;
    println!("{}: signed by key {key_id}", file.display());
    Ok(())
}

fn post(base: &str, path: &str, token: &str, body: &str) -> anyhow::Result<serde_json::Value> {
    let host = base
        .strip_prefix("http://")
        .context("--gateway: an http:// URL (this command speaks no TLS)")?
        .trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    let (head, payload) = answer.split_once("\r\n\r\n").context("no HTTP answer")?;
    let status = head.split_whitespace().nth(1).unwrap_or("");
    let value: serde_json::Value = serde_json::from_str(payload.trim()).unwrap_or_default();
    if status != "200" {
        bail!("the gateway answered {status}: {value}");
    }
    Ok(value)
}

pub fn verify(file: &Path, root: &Path) -> anyhow::Result<()> {
    let root_pem = std::fs::read(root).context("vendor root")?;
    let m = Bundle::read(file)?.verify(&root_pem)?;
    println!(
        "{}: ok ({} {}, security version {})",
        file.display(),
        m.product,
        m.version,
        m.security_version
    );
    Ok(())
}

pub fn install(
    file: &Path,
    root_dir: &Path,
    vendor_root: &Path,
    config: &Config,
) -> anyhow::Result<()> {
    let root_pem = std::fs::read(vendor_root).context("vendor root")?;
    let bundle = Bundle::read(file)?;
    let manifest = bundle.verify(&root_pem)?;
    let hsm = open_hsm(config)?;
    let min = min_security_version(&hsm)?;
    let slot = Root::new(root_dir).install(&bundle, &manifest, min)?;
    shutdown(hsm);
    println!(
        "installed {} into slot {} for a trial boot",
        manifest.version,
        slot.name()
    );
    Ok(())
}

pub fn status(root_dir: &Path, config: &Config) -> anyhow::Result<()> {
    let state = Root::new(root_dir).load()?;
    let hsm = open_hsm(config)?;
    let min = min_security_version(&hsm)?;
    shutdown(hsm);
    let out = serde_json::json!({
        "active": state.active.map(|s| s.name()),
        "trial": state.trial.map(|s| s.name()),
        "previous": state.previous.map(|s| s.name()),
        "slots": {"a": state.a, "b": state.b},
        "min_security_version": min,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

pub fn commit(root_dir: &Path, config: &Config) -> anyhow::Result<()> {
    let root = Root::new(root_dir);
    // The HSM is reached before anything changes: a commit that cannot raise the minimum
    // does not happen.
    // The minimum is raised first: if the state cannot be written after it, running
    // commit again finishes the job (the trial is still marked).
    let hsm = open_hsm(config)?;
    let state = root.load()?;
    let trial = state.trial.ok_or(super::slots::SlotError::NoTrial)?;
    let sv = state
        .slot(trial)
        .map(|i| i.security_version)
        .context("the trial slot is empty")?;
    let min = block_on(async {
        Ok(hsm
            .run("firmware", "any", false, move |h, s| {
                h.raise_min_security_version(s, sv)
            })
            .await?)
    })?;
    shutdown(hsm);
    let (slot, _) = root.commit()?;
    println!(
        "slot {} active; minimum security version {min}",
        slot.name()
    );
    Ok(())
}

pub fn rollback(root_dir: &Path) -> anyhow::Result<()> {
    match Root::new(root_dir).rollback()? {
        Some(s) => println!("slot {} active", s.name()),
        None => println!("trial ended; no slot active"),
    }
    Ok(())
}

fn shutdown(hsm: Arc<Hsm>) {
    hsm.shutdown();
}

/// The slot directory a supervisor starts (for the unit's wiring and tests).
pub fn slot_binary(root_dir: &Path, slot: super::slots::Slot) -> PathBuf {
    Root::new(root_dir).slot_dir(slot).join("bsn-gateway")
}

/// How `run` gates a trial.
pub struct Gate {
    /// The trial must be ready this long without a break...
    pub ready_for: std::time::Duration,
    /// ...within this long of its start, or it is rolled back.
    pub timeout: std::time::Duration,
}

/// `run`: the supervisor the unit starts. It runs the trial slot if there is one: ready
/// for `ready_for` within `timeout` and it is committed (the HSM's minimum raised) and
/// kept running; not ready, or exited, and it is stopped, the trial rolled back, and the
/// active slot started instead. Without a trial it runs the active slot. It exits with the
/// slot's exit status; SIGTERM is passed on.
pub fn run(
    root_dir: &Path,
    config: &Config,
    gate: Gate,
    serve_args: &[String],
) -> anyhow::Result<i32> {
    let root = Root::new(root_dir);
    let state = root.load()?;
    let ops_addr = config.data_dir.join("ops.addr");
    if let Some(trial) = state.trial {
        let _ = std::fs::remove_file(&ops_addr);
        let mut child = start(&slot_binary(root_dir, trial), serve_args)?;
        let why = if !became_ready(&mut child, &ops_addr, &gate) {
            "not ready in time".to_string()
        } else {
            match commit_retrying(root_dir, config) {
                Ok(()) => {
                    eprintln!("firmware: trial slot {} ready: committed", trial.name());
                    return supervise(child);
                }
                // A trial runs only until it is committed: one that cannot be (the minimum
                // cannot be raised) is stopped like one that is not ready, never left
                // running beside a supervisor that has gone.
                Err(e) => format!("ready, but the commit failed ({e:#})"),
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("firmware: trial slot {} {why}: rolled back", trial.name());
        root.rollback()?;
    }
    let state = root.load()?;
    let active = state.active.context("no active slot to run")?;
    supervise(start(&slot_binary(root_dir, active), serve_args)?)
}

/// Commit attempts in `run` before the trial is given up...
const COMMIT_TRIES: u32 = 5;
/// ...waiting this long after the first failure, twice as long after each next one.
const COMMIT_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

/// `commit`, tried again after a failure. The supervisor opens the token while the trial's
/// gateway uses it: SoftHSM2's file store can fail a read that meets another process's
/// write of the same token file (CKR_GENERAL_ERROR from C_GetTokenInfo; softhsm/SoftHSMv2
/// issue 757), and a network HSM can drop one connection. Committing again is safe: it
/// raises the minimum to the same value and marks the same slot.
fn commit_retrying(root_dir: &Path, config: &Config) -> anyhow::Result<()> {
    let mut wait = COMMIT_BACKOFF;
    let mut attempt = 1;
    loop {
        match commit(root_dir, config) {
            Ok(()) => return Ok(()),
            Err(e) if attempt == COMMIT_TRIES => return Err(e),
            Err(e) => {
                eprintln!("firmware: commit attempt {attempt} failed ({e:#}); trying again");
                std::thread::sleep(wait);
                wait *= 2;
                attempt += 1;
            }
        }
    }
}

fn start(binary: &Path, serve_args: &[String]) -> anyhow::Result<std::process::Child> {
    std::process::Command::new(binary)
        .arg("serve")
        .args(serve_args)
        .spawn()
        .with_context(|| format!("start {}", binary.display()))
}

/// Whether the child answers 200 on /readyz for `ready_for` in a row, within `timeout`.
fn became_ready(child: &mut std::process::Child, ops_addr: &Path, gate: &Gate) -> bool {
    let started = std::time::Instant::now();
    let mut ready_since: Option<std::time::Instant> = None;
    while started.elapsed() < gate.timeout {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let ready = std::fs::read_to_string(ops_addr)
            .ok()
            .is_some_and(|addr| readyz(addr.trim()));
        match (ready, ready_since) {
            (true, None) => ready_since = Some(std::time::Instant::now()),
            (true, Some(t)) if t.elapsed() >= gate.ready_for => return true,
            (false, _) => ready_since = None,
            _ => {}
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

fn readyz(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    if write!(
        s,
        "GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.ends_with(b"200")
}

/// Waits for the slot's process, passing SIGTERM and SIGINT on.
fn supervise(mut child: std::process::Child) -> anyhow::Result<i32> {
    let pid = child.id() as i32;
    let forward = move || {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let waiter = tokio::task::spawn_blocking(move || child.wait());
        tokio::pin!(waiter);
        loop {
            tokio::select! {
                done = &mut waiter => return anyhow::Ok(done??),
                _ = term.recv() => forward(),
                _ = int.recv() => forward(),
            }
        }
    })?;
    Ok(status.code().unwrap_or(1))
}
