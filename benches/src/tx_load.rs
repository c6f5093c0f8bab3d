//! `POST /v1/transactions` end to end with fsync on: transactions/s accepted (vetted and
//! durable), p50 and p99 request latency, at 1 and 64 transactions per request; first
//! against a fast Ethereum node stub (this file's, answering at once without executing
//! anything, so the gateway is the bottleneck), then against ganache (a real node, from
//! test-tools/), where it also times how long forwarding takes to drain. Usage:
//!   cargo build --release --workspace && target/release/tx-load [SECONDS] [CLIENTS]
//! Transactions are EIP-1559, signed here with libsecp256k1 before the clock starts.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy_rlp::{Encodable, Header};
use bsn_benches::{agent, cores, start_gateway_with, Endpoint};
use bsn_gateway::util::keccak256;
use serde_json::{json, Value};

const CHAIN_ID: u64 = 1337;

fn key(i: usize) -> secp256k1::SecretKey {
    secp256k1::SecretKey::from_byte_array(openssl::sha::sha256(format!("tx-load-{i}").as_bytes()))
        .expect("a valid key")
}

/// A signed EIP-1559 transfer of 1 wei, 0x hex.
fn sign(
    secp: &secp256k1::Secp256k1<secp256k1::All>,
    sk: &secp256k1::SecretKey,
    nonce: u64,
) -> String {
    let to = [0x35u8; 20];
    let mut fields = Vec::new();
    CHAIN_ID.encode(&mut fields);
    nonce.encode(&mut fields);
    1_000_000_000u64.encode(&mut fields);
    100_000_000_000u64.encode(&mut fields);
    21_000u64.encode(&mut fields);
    to[..].encode(&mut fields);
    1u64.encode(&mut fields);
    (&[][..] as &[u8]).encode(&mut fields);
    fields.push(0xc0);
    let mut unsigned = vec![2u8];
    Header {
        list: true,
        payload_length: fields.len(),
    }
    .encode(&mut unsigned);
    unsigned.extend_from_slice(&fields);
    let msg = secp256k1::Message::from_digest(keccak256(&unsigned));
    let sig = secp.sign_ecdsa_recoverable(msg, sk);
    let (id, rs) = sig.serialize_compact();
    let parity = i32::from(id) as u64;
    parity.encode(&mut fields);
    for half in [&rs[..32], &rs[32..]] {
        let trimmed: Vec<u8> = half.iter().copied().skip_while(|b| *b == 0).collect();
        trimmed.as_slice().encode(&mut fields);
    }
    let mut raw = vec![2u8];
    Header {
        list: true,
        payload_length: fields.len(),
    }
    .encode(&mut raw);
    raw.extend_from_slice(&fields);
    format!("0x{}", hex::encode(raw))
}

/// `per_key` transactions for each of `keys` keys, nonces from 0, key-major per client.
fn signed(keys: usize, per_key: u64) -> Vec<Vec<String>> {
    let secp = secp256k1::Secp256k1::new();
    (0..keys)
        .map(|k| {
            let sk = key(k);
            (0..per_key).map(|n| sign(&secp, &sk, n)).collect()
        })
        .collect()
}

/// The stub: a thread per connection, keep-alive, JSON-RPC answered from memory.
fn start_stub() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let _ = conn.set_nodelay(true);
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut conn = conn;
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; len];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let result = match req["method"].as_str() {
                        Some("eth_chainId") => json!(format!("{CHAIN_ID:#x}")),
                        Some("eth_sendRawTransaction") => {
                            let raw = hex::decode(
                                req["params"][0]
                                    .as_str()
                                    .unwrap_or("0x")
                                    .trim_start_matches("0x"),
                            )
                            .unwrap_or_default();
                            json!(format!("0x{}", hex::encode(keccak256(&raw))))
                        }
                        _ => Value::Null,
                    };
                    let out =
                        json!({"jsonrpc": "2.0", "id": req["id"], "result": result}).to_string();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{out}",
                        out.len()
                    );
                    if conn.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    Ok(port)
}

struct Ganache(Child);

impl Drop for Ganache {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_ganache(keys: usize) -> anyhow::Result<(Ganache, u16)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-tools");
    let mut cmd = Command::new("node");
    cmd.current_dir(&tools)
        .arg("node_modules/ganache/dist/node/cli.js")
        .args([
            "--server.host",
            "127.0.0.1",
            "--server.port",
            &port.to_string(),
        ])
        .args([
            "--chain.chainId",
            &CHAIN_ID.to_string(),
            "--miner.blockTime",
            "1",
            "--logging.quiet",
        ]);
    for k in 0..keys {
        cmd.arg("--wallet.accounts").arg(format!(
            "0x{},0x3635C9ADC5DEA00000",
            hex::encode(key(k).secret_bytes())
        ));
    }
    let child = Ganache(cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?);
    let a = agent();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = a
            .post(format!("http://127.0.0.1:{port}"))
            .send_json(json!({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}))
            .is_ok();
        if ok {
            return Ok((child, port));
        }
        if Instant::now() > deadline {
            anyhow::bail!("ganache did not start (npm ci in test-tools?)");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Run {
    accepted: u64,
    seconds: f64,
    latencies: Vec<f64>,
}

/// Each client thread sends its own transactions in requests of `batch`, until they run
/// out or `seconds` pass.
fn load(gw: &Endpoint, work: Vec<Vec<String>>, batch: usize, seconds: u64) -> anyhow::Result<Run> {
    let accepted = Arc::new(Mutex::new((0u64, Vec::new())));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let handles: Vec<_> = work
        .into_iter()
        .map(|txs| {
            let (gw, accepted) = (gw.clone(), accepted.clone());
            std::thread::spawn(move || -> anyhow::Result<()> {
                let a = agent();
                let mut lat = Vec::new();
                let mut n = 0u64;
                for chunk in txs.chunks(batch) {
                    if Instant::now() > deadline {
                        break;
                    }
                    let body = json!({"ledger": "eth", "transactions": chunk.iter().map(|r| json!({"raw": r})).collect::<Vec<_>>()});
                    let t = Instant::now();
                    let mut resp = a
                        .post(format!("http://{}/v1/transactions", gw.addr))
                        .header("Authorization", format!("Bearer {}", gw.token))
                        .send_json(&body)?;
                    let v: Value = resp.body_mut().read_json()?;
                    lat.push(t.elapsed().as_secs_f64());
                    let ok = v["results"].as_array().map_or(0, |r| r.iter().filter(|x| x["status"] == "accepted").count());
                    if ok != chunk.len() {
                        anyhow::bail!("not all accepted: {v}");
                    }
                    n += ok as u64;
                }
                let mut g = accepted.lock().unwrap();
                g.0 += n;
                g.1.extend(lat);
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut g = accepted.lock().unwrap();
    let mut latencies = std::mem::take(&mut g.1);
    latencies.sort_by(|a, b| a.total_cmp(b));
    Ok(Run {
        accepted: g.0,
        seconds,
        latencies,
    })
}

fn pct(v: &[f64], p: f64) -> f64 {
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
        * 1000.0
}

fn pending(gw: &Endpoint) -> f64 {
    metric(gw, "bsn_gateway_outbox_pending_transactions")
}

/// NaN where the scrape fails: the figure shows as such instead of ending the run.
fn metric(gw: &Endpoint, name: &str) -> f64 {
    gw.metric(name).unwrap_or(f64::NAN)
}

fn wait_ready(gw: &Endpoint) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent()
        .get(format!("http://{}/readyz", gw.ops))
        .call()?
        .status()
        != 200
    {
        if Instant::now() > deadline {
            anyhow::bail!("gateway not ready");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn report(gw: &Endpoint, node: &str, batch: usize, clients: usize, r: &Run) {
    let fsyncs = metric(gw, "bsn_gateway_outbox_fsync_duration_seconds_count");
    let fsync_s = metric(gw, "bsn_gateway_outbox_fsync_duration_seconds_sum");
    println!(
        "{node:<8} {batch:>3}/req {clients:>3} clients: {:>8.0} tx/s accepted ({} in {:.1} s), latency p50 {:.2} ms, p99 {:.2} ms; {fsyncs} fsyncs, {:.1} tx each, mean {:.3} ms",
        r.accepted as f64 / r.seconds,
        r.accepted,
        r.seconds,
        pct(&r.latencies, 0.5),
        pct(&r.latencies, 0.99),
        r.accepted as f64 / fsyncs,
        fsync_s / fsyncs * 1000.0,
    );
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let seconds: u64 = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let clients: usize = args
        .get(2)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(8 * cores());
    println!(
        "tx-load: {} cores, {clients} clients, fsync on (the data dir's disk)",
        cores()
    );

    // Against the stub: the gateway is the bottleneck.
    let stub = start_stub()?;
    println!(
        "node stub on 127.0.0.1:{stub}: answers eth_sendRawTransaction at once, executes nothing"
    );
    for batch in [1usize, 64] {
        let dir = tempfile::tempdir()?;
        let gw = start_gateway_with(
            dir.path(),
            &[format!("--ledger=eth=ethereum+http://127.0.0.1:{stub}")],
        )?;
        wait_ready(&gw.endpoint)?;
        let per_client = if batch == 1 { 4000 } else { 20_000 };
        let work = signed(clients, per_client);
        let r = load(&gw.endpoint, work, batch, seconds)?;
        report(&gw.endpoint, "stub", batch, clients, &r);
    }

    // Against ganache: a real node; acceptance, then the time until all are forwarded.
    let keys = 200;
    let (_node, port) = start_ganache(keys)?;
    for batch in [1usize, 64] {
        let dir = tempfile::tempdir()?;
        let gw = start_gateway_with(
            dir.path(),
            &[format!("--ledger=eth=ethereum+http://127.0.0.1:{port}")],
        )?;
        wait_ready(&gw.endpoint)?;
        // Fresh nonces per run: the second run continues where the first left off.
        let from = if batch == 1 { 0 } else { 10 };
        let secp = secp256k1::Secp256k1::new();
        let all: Vec<String> = (0..keys)
            .flat_map(|k| {
                let sk = key(k);
                (from..from + 10).map(move |n| (sk, n))
            })
            .map(|(sk, n)| sign(&secp, &sk, n))
            .collect();
        let work: Vec<Vec<String>> = all
            .chunks(all.len().div_ceil(clients))
            .map(|c| c.to_vec())
            .collect();
        let r = load(&gw.endpoint, work, batch, 120)?;
        report(&gw.endpoint, "ganache", batch, clients, &r);
        let t = Instant::now();
        while pending(&gw.endpoint) > 0.0 && t.elapsed() < Duration::from_secs(300) {
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "ganache {batch:>3}/req: {} forwarded in {:.1} s after the last 202 ({:.0} tx/s into the node)",
            r.accepted,
            t.elapsed().as_secs_f64(),
            r.accepted as f64 / (t.elapsed().as_secs_f64() + r.seconds)
        );
    }
    Ok(())
}
