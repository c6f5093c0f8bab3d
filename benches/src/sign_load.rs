//! Sign throughput: the gateway over HTTP beside a raw cryptoki C_Sign loop on the same
//! SoftHSM2 token, in the same run, with the ratio. Usage:
//!   cargo build --release --workspace && target/release/sign-load [SECONDS] [HTTP_CLIENTS]
//! `BSN_BENCH_ALGORITHMS=ecdsa-p256,ed25519` runs only those.
//! The load generator shares the machine's cores with the gateway; the raw loop does not
//! pay for HTTP, JSON, policy or the fsynced audit log, which is what the ratio measures.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::Context;
use bsn_benches::hload::{healthz_rate, http_load, LoadRequest};
use bsn_benches::{agent, cores, post, run_threads, start_gateway, Endpoint};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
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
    let dir = tempfile::tempdir()?;
    let gw = start_gateway(dir.path())?;
    // Our own PKCS#11 context must see the same token: set before any thread starts.
    std::env::set_var("SOFTHSM2_CONF", dir.path().join("softhsm2.conf"));

    let agent = agent();
    let only = std::env::var("BSN_BENCH_ALGORITHMS").unwrap_or_default();
    let keys: Vec<(String, String)> = ALGORITHMS
        .iter()
        .filter(|a| only.is_empty() || only.split(',').any(|o| o == **a))
        .map(|alg| {
            let r = post(
                &agent,
                &gw.endpoint,
                "/v1/keys",
                &json!({"label": format!("bench-{alg}"), "algorithm": alg}),
            )?;
            Ok((
                alg.to_string(),
                r["id"].as_str().context("key id")?.to_string(),
            ))
        })
        .collect::<anyhow::Result<_>>()?;

    let p11 = Pkcs11::new(module_path()?)?;
    p11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))?;
    let pin = std::fs::read_to_string(dir.path().join("user.pin"))?;

    println!("sign-load: {cores} cores, {seconds} s per run, raw loop {cores} threads (one session each), HTTP {clients} keep-alive connections on {cores} client threads");
    println!(
        "{:<16} {:>14} {:>16} {:>7} {:>22} {:>7}",
        "algorithm", "raw cryptoki/s", "HTTP sign/s", "ratio", "HTTP sign-batch64/s", "ratio"
    );
    for (alg, id) in &keys {
        let raw = raw_loop(&p11, pin.trim(), alg, id, cores, seconds)?;
        let single = http_loop(&gw.endpoint, id, alg, clients, seconds, 1)?;
        let batch = http_loop(&gw.endpoint, id, alg, clients, seconds, 64)?;
        println!(
            "{alg:<16} {raw:>14.0} {single:>16.0} {:>7.2} {batch:>22.0} {:>7.2}",
            single / raw,
            batch / raw
        );
    }
    let floor = healthz_rate(&gw.endpoint.addr, clients, cores, seconds)?;
    println!("HTTP floor of this client (GET /healthz, no crypto, same connections): {floor:.0} requests/s");
    println!("goal: HTTP/raw >= 0.9");
    Ok(())
}

fn input(alg: &str) -> Value {
    if alg == "ed25519" {
        json!({"message_b64": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="})
    } else {
        json!({"digest": format!("0x{}", "42".repeat(32))})
    }
}

/// Signs/s through HTTP over `clients` keep-alive connections; `batch` > 1 uses sign-batch.
fn http_loop(
    gw: &Endpoint,
    id: &str,
    alg: &str,
    clients: usize,
    seconds: u64,
    batch: usize,
) -> anyhow::Result<f64> {
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
    let req = LoadRequest::post_json(&path, &gw.token, &body);
    let rate = http_load(&gw.addr, &req, clients, cores(), seconds, |status, _| {
        status == 200
    })?;
    Ok(rate * batch as f64)
}

/// Signs/s calling C_Sign directly, one session per thread, the key handle found once.
fn raw_loop(
    p11: &Pkcs11,
    pin: &str,
    alg: &str,
    id: &str,
    threads: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
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
    let key = anchor.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Id(hex::decode(id)?),
    ])?;
    let key = *key.first().context("key on token")?;
    let data: Vec<u8> = vec![0x42; 32];
    let ed = alg == "ed25519";
    let p11 = p11.clone();
    let rate = run_threads(threads, seconds, move |stop, count| {
        let session = p11.open_ro_session(slot).expect("session");
        let mech = if ed {
            Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure))
        } else {
            Mechanism::Ecdsa
        };
        while !stop.load(Ordering::Relaxed) {
            session.sign(&mech, key, &data).expect("C_Sign");
            count.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    drop(anchor);
    Ok(rate)
}

fn module_path() -> anyhow::Result<PathBuf> {
    Ok(bsn_gateway::custody::profile::Profile::built_in("softhsm2")?.module_path(None)?)
}
