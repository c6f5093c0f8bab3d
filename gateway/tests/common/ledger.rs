//! A real Ethereum node for the tests: ganache from test-tools/ (pinned by its
//! package-lock.json), on 127.0.0.1 at a free port; and transactions signed by ethers.js.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const CHAIN_ID: u64 = 1337;
/// Where test transactions send value: an address nobody holds a key for.
pub const SINK: &str = "0x3535353535353535353535353535353535353535";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A deterministic private key for test account `i` (0x hex).
pub fn key(label: &str, i: usize) -> String {
    format!(
        "0x{}",
        hex::encode(openssl::sha::sha256(format!("{label}-{i}").as_bytes()))
    )
}

pub struct Ganache {
    pub port: u16,
    pub db: PathBuf,
    funded: Vec<String>,
    child: Option<Child>,
    agent: ureq::Agent,
    _tmp: tempfile::TempDir,
}

impl Ganache {
    /// Starts a node where each of `funded` holds 1000 ether.
    pub fn start(funded: &[String]) -> Ganache {
        let tmp = tempfile::tempdir().unwrap();
        let mut g = Ganache {
            port: free_port(),
            db: tmp.path().join("chain"),
            funded: funded.to_vec(),
            child: None,
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into(),
            _tmp: tmp,
        };
        g.resume();
        g
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// (Re)starts the node on the same port and chain database.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "already running");
        std::fs::create_dir_all(&self.db).unwrap();
        let mut cmd = Command::new("node");
        cmd.current_dir(super::test_tools())
            .arg("node_modules/ganache/dist/node/cli.js")
            .args(["--server.host", "127.0.0.1", "--server.port"])
            .arg(self.port.to_string())
            .args(["--chain.chainId", &CHAIN_ID.to_string()])
            // Each transaction mined in its own block before eth_sendRawTransaction
            // answers, one request at a time. With a block time, or requests handled
            // while a block is mined, ganache 7 files a sender's next nonce that arrives
            // mid-block as a future one and never promotes it (ConsenSys-archive/ganache
            // #4522): a real node (geth) promotes it when the block lands.
            .args(["--miner.instamine", "eager"])
            .args(["--chain.asyncRequestProcessing", "false", "--logging.quiet"])
            .arg("--database.dbPath")
            .arg(&self.db);
        for k in &self.funded {
            cmd.arg("--wallet.accounts")
                .arg(format!("{k},0x3635C9ADC5DEA00000"));
        }
        let log = std::fs::File::create(self.db.with_extension("log")).unwrap();
        self.child = Some(
            cmd.stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start ganache"),
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(v) = self.try_rpc("eth_chainId", json!([])) {
                assert_eq!(v["result"], format!("{CHAIN_ID:#x}"));
                return;
            }
            assert!(Instant::now() < deadline, "ganache did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the node (the chain database stays).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn try_rpc(&self, method: &str, params: Value) -> Result<Value, String> {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut resp = self
            .agent
            .post(&self.url())
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .map_err(|e| e.to_string())?;
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    pub fn rpc(&self, method: &str, params: Value) -> Value {
        let v = self
            .try_rpc(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e}"));
        assert!(v.get("error").is_none(), "{method}: {v}");
        v["result"].clone()
    }

    pub fn transaction(&self, hash: &str) -> Value {
        self.rpc("eth_getTransactionByHash", json!([hash]))
    }

    pub fn receipt(&self, hash: &str) -> Value {
        self.rpc("eth_getTransactionReceipt", json!([hash]))
    }

    pub fn nonce(&self, address: &str) -> u64 {
        let v = self.rpc("eth_getTransactionCount", json!([address, "latest"]));
        u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
    }

    /// Every transaction hash in every block, in chain order (repeats show double mining).
    pub fn mined_hashes(&self) -> Vec<String> {
        let head = self.rpc("eth_blockNumber", json!([]));
        let head =
            u64::from_str_radix(head.as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
        let mut out = Vec::new();
        for b in 1..=head {
            let block = self.rpc("eth_getBlockByNumber", json!([format!("{b:#x}"), false]));
            for t in block["transactions"].as_array().unwrap() {
                out.push(t.as_str().unwrap().to_string());
            }
        }
        out
    }

    /// Waits until every hash has a receipt; returns the receipts.
    pub fn wait_mined(&self, hashes: &[String], within: Duration) -> Vec<Value> {
        let deadline = Instant::now() + within;
        let mut receipts = vec![Value::Null; hashes.len()];
        loop {
            for (i, h) in hashes.iter().enumerate() {
                if receipts[i].is_null() {
                    receipts[i] = self.receipt(h);
                }
            }
            let missing = receipts.iter().filter(|r| r.is_null()).count();
            if missing == 0 {
                return receipts;
            }
            if Instant::now() > deadline {
                // What the node holds of the first few: pending in its pool or unknown,
                // and how far its sender's nonce got.
                let seen: Vec<String> = hashes
                    .iter()
                    .zip(&receipts)
                    .filter(|(_, r)| r.is_null())
                    .take(3)
                    .map(|(h, _)| {
                        let t = self.transaction(h);
                        let nonce = t["from"].as_str().map(|f| self.nonce(f));
                        format!("{h}: node has {t}, sender nonce {nonce:?}")
                    })
                    .collect();
                let head = self.rpc("eth_blockNumber", json!([]));
                panic!(
                    "{missing} of {} transactions not mined (head block {head}):\n{}",
                    hashes.len(),
                    seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Ganache {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One transaction to sign: sender key, nonce, type (0 legacy, 1 EIP-2930, 2 EIP-1559).
pub struct Spec {
    pub key: String,
    pub nonce: u64,
    pub tx_type: u8,
    pub chain_id: u64,
}

/// A signed transaction as ethers.js made it.
#[derive(Debug, Clone)]
pub struct Signed {
    pub raw: String,
    pub hash: String,
    pub from: String,
}

/// Signs with ethers.js (test-tools/sign-eth.js).
pub fn sign(specs: &[Spec]) -> Vec<Signed> {
    let input: Vec<Value> = specs
        .iter()
        .map(|s| {
            json!({"key": s.key, "nonce": s.nonce, "type": s.tx_type, "chainId": s.chain_id,
                   "to": SINK, "value": "1000"})
        })
        .collect();
    let mut child = Command::new("node")
        .current_dir(super::test_tools())
        .arg("sign-eth.js")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(Value::Array(input).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "sign-eth.js: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter()
        .map(|t| Signed {
            raw: t["raw"].as_str().unwrap().into(),
            hash: t["hash"].as_str().unwrap().to_lowercase(),
            from: t["from"].as_str().unwrap().to_lowercase(),
        })
        .collect()
}

/// `per_key` transactions from each key, nonces from 0, types cycling 0, 1, 2; ordered by
/// nonce round (all keys' nonce 0, then nonce 1, ...).
pub fn batch(keys: &[String], per_key: u64, chain_id: u64) -> Vec<Signed> {
    let mut specs = Vec::new();
    for n in 0..per_key {
        for (i, k) in keys.iter().enumerate() {
            specs.push(Spec {
                key: k.clone(),
                nonce: n,
                tx_type: ((n as usize + i) % 3) as u8,
                chain_id,
            });
        }
    }
    sign(&specs)
}

/// A node script from test-tools/ (`http-ledger.js`, a generic HTTP ledger;
/// `eth-recorder.js`, an Ethereum node stub), each appending what it takes to a file.
pub struct ScriptNode {
    child: Child,
    pub port: u16,
    file: std::path::PathBuf,
}

impl ScriptNode {
    pub fn start(script: &str, dir: &std::path::Path) -> ScriptNode {
        Self::start_with(script, dir, &[])
    }

    /// With more arguments after PORT FILE (http-ledger.js: CERT KEY for HTTPS).
    pub fn start_with(script: &str, dir: &std::path::Path, extra: &[&str]) -> ScriptNode {
        let port = free_port();
        let file = dir.join(format!("{script}.jsonl"));
        let mut child = Command::new("node")
            .current_dir(super::test_tools())
            .arg(script)
            .arg(port.to_string())
            .arg(&file)
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run node");
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "listening");
        ScriptNode { child, port, file }
    }

    pub fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl Drop for ScriptNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
