//! Test harness: starts the real `bsn-gateway` binary on its own SoftHSM2 token in a temp
//! dir, talks HTTP to it, and checks results with independent tools (openssl, pkcs11-tool,
//! ethers.js).
#![allow(dead_code)]

pub mod ledger;
pub mod pki;
pub mod sm2;
pub mod token;
pub mod wycheproof;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_bsn-gateway");

pub struct Gateway {
    pub dir: PathBuf,
    pub addr: String,
    /// The operations listener (`/metrics`, `/readyz`, `/healthz`).
    pub ops: String,
    pub token: String,
    child: Option<Child>,
    agent: ureq::Agent,
    _tmp: Option<tempfile::TempDir>,
}

pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
    pub allow: Option<String>,
}

impl Gateway {
    /// The embedded default in a fresh temp dir.
    pub fn start_dev() -> Gateway {
        let tmp = tempfile::tempdir().unwrap();
        let mut g = Gateway::start_dev_in(tmp.path());
        g._tmp = Some(tmp);
        g
    }

    /// The embedded default on an existing (or new) data dir.
    pub fn start_dev_in(dir: &Path) -> Gateway {
        Gateway::start_dev_with(dir, &[])
    }

    /// The embedded default with more flags (`--ledger ...`).
    pub fn start_dev_with(dir: &Path, args: &[String]) -> Gateway {
        Gateway::start_dev_binary(Path::new(BIN), dir, args)
    }

    /// The embedded default served by another build of the binary (a firmware slot's).
    pub fn start_dev_binary(binary: &Path, dir: &Path, args: &[String]) -> Gateway {
        let mut cmd = Command::new(binary);
        cmd.args([
            "serve",
            "--dev",
            "--listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .args(args);
        Gateway::spawn(cmd, dir)
    }

    /// The embedded default's token and admin in `dir`, served from a config file with
    /// the extras of `dev_token_config` (written to `dir/gateway.toml`).
    pub fn start_configured(dir: &Path, server_extra: &str, tail: &str) -> Gateway {
        Gateway::start_dev_in(dir).terminate();
        let cfg = dir.join("gateway.toml");
        std::fs::write(&cfg, dev_token_config(dir, server_extra, "", tail)).unwrap();
        Gateway::start_config(&cfg, dir)
    }

    /// `serve --config FILE` against a data dir a dev start initialised (same token).
    pub fn start_config(config: &Path, dir: &Path) -> Gateway {
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"));
        Gateway::spawn(cmd, dir)
    }

    pub fn spawn(mut cmd: Command, dir: &Path) -> Gateway {
        let _ = std::fs::remove_file(dir.join("gateway.addr"));
        let _ = std::fs::remove_file(dir.join("ops.addr"));
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
        // A test that wants another log filter sets BSN_LOG itself.
        if !cmd.get_envs().any(|(k, _)| k == "BSN_LOG") {
            cmd.env("BSN_LOG", "info");
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start bsn-gateway");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let mut g = Gateway {
            dir: dir.to_path_buf(),
            addr: String::new(),
            ops: String::new(),
            token: String::new(),
            child: Some(child),
            agent,
            _tmp: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(addr) = std::fs::read_to_string(dir.join("gateway.addr")) {
                g.addr = addr;
                // Written before gateway.addr.
                g.ops = std::fs::read_to_string(dir.join("ops.addr")).unwrap();
                break;
            }
            if let Some(status) = g.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("gateway exited with {status}: {}", g.log());
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not start: {}",
                g.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        g.token = std::fs::read_to_string(dir.join("admin.token")).unwrap_or_default();
        assert_eq!(g.get("/healthz").status, 200);
        g
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default()
    }

    /// The value of this exact series (name and labels as the exporter writes them) in a
    /// fresh scrape; None when the scrape does not hold it.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.call("GET", "/metrics", None, None).body;
        let text = text.as_str().expect("a text scrape");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{series}: {v}")))
    }

    /// `/metrics` and `/readyz` are on the operations listener, the rest on the API's.
    pub fn url(&self, path: &str) -> String {
        let host = match path {
            "/metrics" | "/readyz" => &self.ops,
            _ => &self.addr,
        };
        format!("http://{host}{path}")
    }

    /// Any request; `body` is sent as is, so tests can send broken JSON.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        token: Option<&str>,
    ) -> Reply {
        let url = self.url(path);
        let auth = token.map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => {
                let mut r = self.agent.get(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            ("DELETE", _) => {
                let mut r = self.agent.delete(&url);
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.call()
            }
            (m, b) => {
                let mut r = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    other => panic!("method {other}"),
                };
                r = r.header("Content-Type", "application/json");
                if let Some(a) = &auth {
                    r = r.header("Authorization", a);
                }
                r.send(b.unwrap_or(b""))
            }
        };
        let mut resp = result.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status().as_u16();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let allow = resp
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_string());
        let text = resp.body_mut().read_to_string().unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            body,
            retry_after,
            allow,
        }
    }

    pub fn post(&self, path: &str, body: Value) -> Reply {
        self.call(
            "POST",
            path,
            Some(body.to_string().as_bytes()),
            Some(&self.token),
        )
    }

    pub fn get(&self, path: &str) -> Reply {
        self.call("GET", path, None, Some(&self.token))
    }

    pub fn delete(&self, path: &str) -> Reply {
        self.call("DELETE", path, None, Some(&self.token))
    }

    /// Creates a key and returns its record.
    pub fn create_key(&self, label: &str, algorithm: &str) -> Value {
        let r = self.post(
            "/v1/keys",
            serde_json::json!({"label": label, "algorithm": algorithm}),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        child.wait().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs the binary with `args`; (success, stdout and stderr).
pub fn run_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

pub fn error_code(r: &Reply) -> &str {
    r.body["error"]["code"].as_str().unwrap_or("<none>")
}

pub fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.strip_prefix("0x").expect("0x prefix")).unwrap()
}

/// How the signed bytes relate to the signature, for the openssl CLI.
pub enum Signed<'a> {
    /// ECDSA over this 32-byte digest.
    Digest(&'a [u8]),
    /// ECDSA over SHA-256 of this message.
    Sha256Message(&'a [u8]),
    /// Ed25519 (pure) over this message.
    Ed25519Message(&'a [u8]),
}

/// Verifies with the `openssl` command line tool: an implementation independent of ours.
pub fn openssl_verify(pem: &str, signed: Signed, der_or_raw_sig: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let pubf = dir.path().join("pub.pem");
    let data = dir.path().join("data");
    let sig = dir.path().join("sig");
    std::fs::write(&pubf, pem).unwrap();
    std::fs::write(&sig, der_or_raw_sig).unwrap();
    let mut cmd = Command::new("openssl");
    match signed {
        Signed::Digest(d) => {
            std::fs::write(&data, d).unwrap();
            cmd.args(["pkeyutl", "-verify", "-pubin", "-inkey"]);
        }
        Signed::Sha256Message(m) => {
            std::fs::write(&data, m).unwrap();
            cmd.args(["dgst", "-sha256", "-verify"]);
        }
        Signed::Ed25519Message(m) => {
            std::fs::write(&data, m).unwrap();
            cmd.args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"]);
        }
    }
    cmd.arg(&pubf);
    match signed {
        Signed::Sha256Message(_) => cmd.arg("-signature").arg(&sig).arg(&data),
        _ => cmd.arg("-in").arg(&data).arg("-sigfile").arg(&sig),
    };
    let out = cmd.output().expect("run openssl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    out.status.success() && stdout.contains("Verified")
}

/// The SoftHSM2 module, found through the gateway's own built-in profile.
pub fn module_path() -> PathBuf {
    bsn_gateway::custody::profile::Profile::built_in("softhsm2")
        .and_then(|p| p.module_path(None))
        .expect("softhsm2 is installed")
}

/// Runs OpenSC's pkcs11-tool, logged in to the data dir's token.
pub fn pkcs11_tool(dir: &Path, args: &[&str]) -> String {
    let pin = std::fs::read_to_string(dir.join("user.pin")).unwrap();
    let out = Command::new("pkcs11-tool")
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .arg("--module")
        .arg(module_path())
        .args([
            "--token-label",
            "bsn-gateway-dev",
            "--login",
            "--pin",
            pin.trim(),
        ])
        .args(args)
        .output()
        .expect("run pkcs11-tool (package opensc)");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// test-tools/, where `npm ci` (run by the README's test command) installed ethers.js and
/// ganache.
pub fn test_tools() -> PathBuf {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../test-tools");
    assert!(
        tools.join("node_modules/ethers").exists() && tools.join("node_modules/ganache").exists(),
        "test-tools/node_modules is missing: run `npm ci` in test-tools (the README's test command does)"
    );
    tools
}

/// Runs a script with node in test-tools/.
pub fn node(script: &str) -> String {
    let out = Command::new("node")
        .current_dir(test_tools())
        .args(["-e", script])
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A config file text for `serve --config` on the token a dev start initialised in `dir`,
/// with the dev admin client. The extras are appended to `[server]`, to `[hsm]`, and after
/// the admin client (more tables).
pub fn dev_token_config(dir: &Path, server_extra: &str, hsm_extra: &str, tail: &str) -> String {
    let admin = std::fs::read_to_string(dir.join("admin.token")).unwrap();
    let hash = format!("0x{}", hex::encode(openssl::sha::sha256(admin.as_bytes())));
    format!(
        "data_dir = \"{d}\"\n[server]\nlisten = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n{server_extra}\n[hsm]\ntoken_label = \"bsn-gateway-dev\"\npin = {{ file = \"{d}/user.pin\" }}\n{hsm_extra}\n[[clients]]\nname = \"admin\"\ntoken_sha256 = \"{hash}\"\noperations = [\"*\"]\nkeys = [\"*\"]\nadmin = true\nledgers = [\"*\"]\n{tail}\n",
        d = dir.display()
    )
}

/// One check of an `hsm probe --json` report, by its name.
pub fn probe_check<'a>(report: &'a Value, what: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["what"] == what)
        .unwrap_or_else(|| panic!("no check {what:?} in {report:#}"))
}
