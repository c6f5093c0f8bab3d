//! The two PKCS#11 implementations the custody suite runs on, each made afresh in a test's
//! own directory: SoftHSM2 (a library and its files) and tpm2-pkcs11 over swtpm (a library
//! that talks to a device process through the tpm2-abrmd resource manager on a private
//! D-Bus bus; the test kills and restarts the device).

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Gateway, BIN};

pub struct Token {
    /// The gateway's HSM profile for it.
    pub profile: &'static str,
    pub label: String,
    pub pin: String,
    pub module: PathBuf,
    /// What the module needs in its environment (the gateway's and pkcs11-tool's).
    pub env: Vec<(String, String)>,
    /// The algorithms it holds; the others must be refused with a typed error.
    pub algorithms: &'static [&'static str],
    pub dir: PathBuf,
    tpm: Option<SoftTpm>,
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (deploy/install-deps.sh installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    openssl::rand::rand_bytes(&mut b).unwrap();
    hex::encode(b)
}

impl Token {
    pub fn softhsm2(dir: &Path) -> Token {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let (label, pin) = ("bsn-suite".to_string(), random_hex(8));
        run(Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", &label])
            .args(["--so-pin", &random_hex(8), "--pin", &pin]));
        Token {
            profile: "softhsm2",
            label,
            pin,
            module: super::module_path(),
            env: vec![("SOFTHSM2_CONF".into(), conf.display().to_string())],
            algorithms: &["ecdsa-p256", "ecdsa-secp256k1", "ed25519"],
            dir: dir.to_path_buf(),
            tpm: None,
        }
    }

    pub fn tpm2(dir: &Path) -> Token {
        let tpm = SoftTpm::start(dir);
        let store = dir.join("tpm2-store");
        std::fs::create_dir_all(&store).unwrap();
        let env: Vec<(String, String)> = vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), tpm.bus.clone()),
            ("TPM2_PKCS11_TCTI".into(), "tabrmd:bus_type=session".into()),
            ("TPM2TOOLS_TCTI".into(), "tabrmd:bus_type=session".into()),
            ("TPM2_PKCS11_STORE".into(), store.display().to_string()),
            ("TPM2_PKCS11_LOG_LEVEL".into(), "0".into()),
        ];
        // The resource manager registers on the bus a moment after it starts.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("tpm2_ptool")
                .envs(env.iter().cloned())
                .args(["init", "--path"])
                .arg(&store)
                .output()
                .expect("tpm2_ptool (Debian package libtpm2-pkcs11-tools)");
            if out.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tpm2_ptool init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // A TPM counts a restart without TPM2_Shutdown (the kills of the device-loss test)
        // against its dictionary-attack counter; at the limit C_Login answers
        // CKR_PIN_LOCKED. A test TPM gets a high limit, as a lab would set it.
        run(Command::new("tpm2_dictionarylockout")
            .envs(env.iter().cloned())
            .args([
                "--setup-parameters",
                "--max-tries=1000",
                "--recovery-time=1",
            ])
            .arg("--lockout-recovery-time=1"));
        let (label, pin) = ("bsn-tpm".to_string(), random_hex(8));
        run(Command::new("tpm2_ptool")
            .envs(env.iter().cloned())
            .args(["addtoken", "--pid=1", "--label", &label])
            .arg(format!("--sopin={}", random_hex(8)))
            .arg(format!("--userpin={pin}"))
            .arg("--path")
            .arg(&store));
        let module = bsn_gateway::custody::profile::Profile::built_in("tpm2")
            .and_then(|p| p.module_path(None))
            .expect("tpm2-pkcs11 is installed (Debian package libtpm2-pkcs11-1)");
        Token {
            profile: "tpm2",
            label,
            pin,
            module,
            env,
            algorithms: &["ecdsa-p256"],
            dir: dir.to_path_buf(),
            tpm: Some(tpm),
        }
    }

    /// The MOCK SM2 token (`tests/sm2-token/sm2_token.c`): a PKCS#11 module that offers
    /// SM2 through vendor mechanisms, as Chinese HSMs do. A mock because no module with SM2
    /// installs here; it stands in for such a device under the cn-generic-sm2 profile.
    pub fn sm2_mock(dir: &Path) -> Token {
        std::fs::create_dir_all(dir).unwrap();
        let (label, pin) = ("bsn-sm2".to_string(), random_hex(8));
        std::fs::write(
            dir.join("token.conf"),
            format!("label={label}\npin={pin}\n"),
        )
        .unwrap();
        Token {
            profile: "cn-generic-sm2",
            label,
            pin,
            module: sm2_mock_module().to_path_buf(),
            env: vec![("BSN_SM2_TOKEN_DIR".into(), dir.display().to_string())],
            algorithms: &["ecdsa-p256", "sm2"],
            dir: dir.to_path_buf(),
            tpm: None,
        }
    }

    /// Both tokens, each in its own directory under `dir`.
    pub fn both(dir: &Path) -> Vec<Token> {
        vec![
            Token::softhsm2(&dir.join("softhsm2")),
            Token::tpm2(&dir.join("tpm2")),
        ]
    }

    /// The gateway's config for this token (admin client from `dir/admin.token`).
    pub fn config(&self, data: &Path, hsm_extra: &str) -> String {
        let admin = std::fs::read_to_string(data.join("admin.token")).unwrap();
        let hash = format!("0x{}", hex::encode(openssl::sha::sha256(admin.as_bytes())));
        let pin_file = data.join("user.pin");
        std::fs::write(&pin_file, &self.pin).unwrap();
        format!(
            "data_dir = \"{d}\"\n[server]\nlisten = \"127.0.0.1:0\"\nops_listen = \"127.0.0.1:0\"\n[hsm]\nprofile = \"{p}\"\nmodule = \"{m}\"\ntoken_label = \"{l}\"\npin = {{ file = \"{f}\" }}\n{hsm_extra}\n[[clients]]\nname = \"admin\"\ntoken_sha256 = \"{hash}\"\noperations = [\"*\"]\nkeys = [\"*\"]\nadmin = true\nledgers = [\"*\"]\n",
            d = data.display(),
            p = self.profile,
            m = self.module.display(),
            l = self.label,
            f = pin_file.display(),
        )
    }

    /// A gateway on this token, its data in `data` (made on first use, kept across starts).
    pub fn start_gateway(&self, data: &Path, hsm_extra: &str) -> Gateway {
        std::fs::create_dir_all(data).unwrap();
        let admin = data.join("admin.token");
        if !admin.exists() {
            std::fs::write(&admin, random_hex(24)).unwrap();
        }
        let cfg = data.join("gateway.toml");
        std::fs::write(&cfg, self.config(data, hsm_extra)).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&cfg)
            .envs(self.env.iter().cloned());
        Gateway::spawn(cmd, data)
    }

    /// `bsn-gateway` with this token's environment (for `hsm probe` and the like).
    pub fn cli(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(BIN)
            .args(args)
            .envs(self.env.iter().cloned())
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// OpenSC's pkcs11-tool, logged in to this token: an independent reader of its objects.
    pub fn pkcs11_tool(&self, args: &[&str]) -> String {
        run(Command::new("pkcs11-tool")
            .envs(self.env.iter().cloned())
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin", &self.pin])
            .args(args))
    }

    /// Kills the device process (swtpm), as a pulled cable or a crashed HSM would.
    pub fn kill_device(&mut self) {
        self.tpm
            .as_mut()
            .expect("only the TPM token has a device process")
            .kill_swtpm();
    }

    /// Starts the device process again, on its saved state (a new process).
    pub fn restart_device(&mut self) {
        self.tpm
            .as_mut()
            .expect("only the TPM token has a device process")
            .start_swtpm();
    }
}

/// The mock SM2 module, compiled once per test process from its C source (with the
/// system's p11-kit PKCS#11 header and OpenSSL's libcrypto).
fn sm2_mock_module() -> &'static Path {
    static MODULE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    MODULE.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sm2-token/sm2_token.c");
        let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("libbsn-sm2-mock-{}.so", std::process::id()));
        let cflags = run(Command::new("pkg-config").args(["--cflags", "p11-kit-1"]));
        run(Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Wextra", "-Werror"])
            .args(cflags.split_whitespace())
            .arg("-o")
            .arg(&out)
            .arg(&src)
            .args(["-lcrypto", "-lpthread"]));
        out
    })
}

/// swtpm, a private D-Bus session bus and tpm2-abrmd on it.
struct SoftTpm {
    dir: PathBuf,
    port: u16,
    swtpm: Option<Child>,
    abrmd: Child,
    dbus: Child,
    bus: String,
}

/// Two adjacent free ports for swtpm (server and control). Picked below Linux's
/// ephemeral range (32768-60999): a port there may still be held by a client
/// connection's TIME_WAIT, which blocks a listener on it, and a test run leaves thousands.
fn free_port_pair() -> u16 {
    for _ in 0..2000 {
        let mut b = [0u8; 2];
        openssl::rand::rand_bytes(&mut b).unwrap();
        let port = 20_000 + u16::from_le_bytes(b) % 12_000;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 1) {
            return port;
        }
    }
    panic!("no two adjacent free ports in 20000-32000");
}

impl SoftTpm {
    fn start(dir: &Path) -> SoftTpm {
        std::fs::create_dir_all(dir.join("tpm-state")).unwrap();
        let mut dbus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian package dbus)");
        let mut bus = String::new();
        BufReader::new(dbus.stdout.take().unwrap())
            .read_line(&mut bus)
            .unwrap();
        let bus = bus.trim().to_string();
        assert!(!bus.is_empty(), "dbus-daemon printed no address");
        let mut tpm = SoftTpm {
            dir: dir.to_path_buf(),
            port: free_port_pair(),
            swtpm: None,
            abrmd: Command::new("true").spawn().unwrap(),
            dbus,
            bus,
        };
        tpm.start_swtpm();
        let log = std::fs::File::create(dir.join("abrmd.log")).unwrap();
        tpm.abrmd = Command::new("tpm2-abrmd")
            .args(["--session", "--allow-root"])
            .arg(format!("--tcti=swtpm:host=127.0.0.1,port={}", tpm.port))
            .env("DBUS_SESSION_BUS_ADDRESS", &tpm.bus)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tpm2-abrmd (Debian package tpm2-abrmd)");
        tpm
    }

    fn start_swtpm(&mut self) {
        let log = std::fs::File::create(self.dir.join("swtpm.log")).unwrap();
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2"])
            .arg("--server")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", self.port))
            .arg("--ctrl")
            .arg(format!(
                "type=tcp,port={},bindaddr=127.0.0.1",
                self.port + 1
            ))
            .args(["--flags", "not-need-init,startup-clear"])
            .arg("--tpmstate")
            .arg(format!("dir={}", self.dir.join("tpm-state").display()))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("swtpm (Debian package swtpm)");
        self.swtpm = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "swtpm did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill_swtpm(&mut self) {
        if let Some(mut c) = self.swtpm.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SoftTpm {
    fn drop(&mut self) {
        self.kill_swtpm();
        for c in [&mut self.abrmd, &mut self.dbus] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
