//! Signed A/B updates: a bundle is built, signed by a release key in custody through a
//! running gateway, verified against the vendor root, installed into the inactive slot,
//! its binary started and found ready, then committed, which raises the minimum security
//! version kept in the HSM. Altered, foreign, unchained and old bundles are refused and
//! leave the active slot alone; a cut-off install leaves it runnable.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use bsn_gateway::firmware::bundle::Bundle;
use common::{Gateway, BIN};
use serde_json::Value;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A P-256 private key in `dir/name`, made by the openssl CLI.
fn p256_key(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    );
}

/// A vendor root (file key: the vendor's offline root) and a certificate it issues for
/// `public_pem`, the release key in custody.
fn vendor(dir: &Path, name: &str, public_pem: &str) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("release.pub"), public_pem).unwrap();
    p256_key(dir, "root.key");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "root.key",
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
            "-out",
            "root.pem",
        ],
    );
    p256_key(dir, "csr.key");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "csr.key",
            "-subj",
            "/CN=bsn release",
            "-out",
            "release.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "release.csr",
            "-force_pubkey",
            "release.pub",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "release.pem",
        ],
    );
    (dir.join("root.pem"), dir.join("release.pem"))
}

/// `firmware install` of `file` into `root`, the HSM reached through the dev data dir.
fn install_args(file: &Path, root: &Path, vendor_root: &Path, data: &str) -> Vec<String> {
    [
        "firmware",
        "install",
        file.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
        "--vendor-root",
        vendor_root.to_str().unwrap(),
        "--dev",
        "--data-dir",
        data,
    ]
    .map(String::from)
    .to_vec()
}

/// `firmware sign` through the gateway at `addr`.
fn sign_with(addr: &str, token_file: &Path, key: &str, file: &Path, cert: &Path) -> (bool, String) {
    run(&[
        "firmware",
        "sign",
        file.to_str().unwrap(),
        "--gateway",
        &format!("http://{addr}"),
        "--token-file",
        token_file.to_str().unwrap(),
        "--key-id",
        key,
        "--cert",
        cert.to_str().unwrap(),
    ])
}

struct Ctx {
    g: Gateway,
    key: String,
    token_file: PathBuf,
    data: String,
}

impl Ctx {
    fn build(&self, out: &Path, version: &str, sv: u64) {
        let (ok, o) = run(&[
            "firmware",
            "build",
            "--version",
            version,
            "--security-version",
            &sv.to_string(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{o}");
    }
    fn sign(&self, file: &Path, cert: &Path) -> (bool, String) {
        sign_with(&self.g.addr, &self.token_file, &self.key, file, cert)
    }
    fn install(&self, file: &Path, root: &Path, vendor_root: &Path) -> (bool, String) {
        let args = install_args(file, root, vendor_root, &self.data);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    }
    fn status(&self, root: &Path) -> Value {
        let (ok, o) = run(&[
            "firmware",
            "status",
            "--root",
            root.to_str().unwrap(),
            "--dev",
            "--data-dir",
            &self.data,
        ]);
        assert!(ok, "{o}");
        serde_json::from_str(&o).unwrap()
    }
    fn commit(&self, root: &Path) -> (bool, String) {
        run(&[
            "firmware",
            "commit",
            "--root",
            root.to_str().unwrap(),
            "--dev",
            "--data-dir",
            &self.data,
        ])
    }
}

#[test]
fn a_signed_update_installs_runs_commits_and_nothing_else_gets_in() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("gw");
    let g = Gateway::start_dev_in(&data);
    let key = g.create_key("release-2026", "ecdsa-p256");
    let token_file = t.join("admin.token");
    std::fs::write(&token_file, &g.token).unwrap();
    let (root_pem, release_pem) = vendor(
        &t.join("vendor"),
        "BSN Vendor Root",
        key["public_key_pem"].as_str().unwrap(),
    );
    let ctx = Ctx {
        key: key["id"].as_str().unwrap().to_string(),
        token_file,
        data: data.to_str().unwrap().to_string(),
        g,
    };
    let fw = t.join("fw");

    // Build, sign through the gateway, verify.
    let v5 = t.join("v5.bundle");
    ctx.build(&v5, "1.5.0", 5);
    let (ok, o) = run(&[
        "firmware",
        "verify",
        v5.to_str().unwrap(),
        "--root",
        root_pem.to_str().unwrap(),
    ]);
    assert!(!ok && o.contains("unsigned"), "{o}");
    let (ok, o) = ctx.sign(&v5, &release_pem);
    assert!(ok, "{o}");
    let (ok, o) = run(&[
        "firmware",
        "verify",
        v5.to_str().unwrap(),
        "--root",
        root_pem.to_str().unwrap(),
    ]);
    assert!(ok && o.contains("1.5.0"), "{o}");

    // Install into slot a, start its binary, see it ready, commit.
    let (ok, o) = ctx.install(&v5, &fw, &root_pem);
    assert!(ok, "{o}");
    let s = ctx.status(&fw);
    assert_eq!(slots(&s), (None, Some("a")), "{s}");
    assert_eq!(s["min_security_version"], 0);
    let binary = fw.join("slots/a/bsn-gateway");
    let mut trial = Gateway::start_dev_binary(&binary, &t.join("trial-data"), &[]);
    assert_eq!(trial.call("GET", "/readyz", None, None).status, 200);
    assert!(trial.terminate().success());
    for p in [
        "hsm-profiles/tpm2.toml",
        "bsn-gateway.service",
        "gateway.toml",
    ] {
        assert!(fw.join("slots/a").join(p).exists(), "{p} not installed");
    }
    let (ok, o) = ctx.commit(&fw);
    assert!(ok, "{o}");
    let s = ctx.status(&fw);
    assert_eq!(slots(&s), (Some("a"), None), "{s}");
    assert_eq!(s["min_security_version"], 5);
    assert_eq!(s["slots"]["a"]["version"], "1.5.0");

    let active_before = std::fs::read(&binary).unwrap();
    let refused = |file: &Path, what: &str, want: &str| {
        let (ok, o) = ctx.install(file, &fw, &root_pem);
        assert!(!ok && o.contains(want), "{what}: {o}");
        let s = ctx.status(&fw);
        assert_eq!(slots(&s), (Some("a"), None), "{what}: {s}");
        assert_eq!(
            std::fs::read(&binary).unwrap(),
            active_before,
            "{what}: the active slot changed"
        );
    };

    // An old bundle, validly signed: below the HSM's minimum.
    let v3 = t.join("v3.bundle");
    ctx.build(&v3, "1.3.0", 3);
    assert!(ctx.sign(&v3, &release_pem).0);
    refused(&v3, "old", "below the HSM's minimum 5");

    // One byte changed in a payload (the profiles are stored uncompressed in the tar).
    let v6 = t.join("v6.bundle");
    ctx.build(&v6, "1.6.0", 6);
    assert!(ctx.sign(&v6, &release_pem).0);
    let mut bytes = std::fs::read(&v6).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"softhsm2\"")
        .expect("a profile in the tar");
    bytes[at] ^= 0x20;
    let tampered = t.join("tampered.bundle");
    std::fs::write(&tampered, &bytes).unwrap();
    refused(&tampered, "tampered", "does not match the manifest");

    // Signed by the same key, but with a certificate from another root.
    let (_, foreign_cert) = vendor(
        &t.join("foreign"),
        "Someone Else",
        key["public_key_pem"].as_str().unwrap(),
    );
    let unchained = t.join("unchained.bundle");
    ctx.build(&unchained, "1.6.0", 6);
    assert!(ctx.sign(&unchained, &foreign_cert).0);
    refused(&unchained, "unchained", "does not chain to the vendor root");

    // Another product, signed by the real release key.
    let mut other = Bundle::build(
        "9.9.9",
        9,
        vec![("bsn-gateway".into(), b"#!/bin/sh\n".to_vec())],
    )
    .unwrap();
    let mut m: Value = serde_json::from_slice(other.manifest_bytes().unwrap()).unwrap();
    m["product"] = "other-appliance".into();
    other
        .entries
        .insert("manifest.json".into(), serde_json::to_vec(&m).unwrap());
    let foreign_product = t.join("product.bundle");
    other.write(&foreign_product).unwrap();
    assert!(ctx.sign(&foreign_product, &release_pem).0);
    refused(&foreign_product, "product", "is not bsn-gateway");

    // A good newer bundle goes to slot b; rolling back ends its trial; the minimum stays.
    let (ok, o) = ctx.install(&v6, &fw, &root_pem);
    assert!(ok, "{o}");
    assert_eq!(ctx.status(&fw)["trial"], "b");
    let (ok, o) = run(&["firmware", "rollback", "--root", fw.to_str().unwrap()]);
    assert!(ok, "{o}");
    let s = ctx.status(&fw);
    assert_eq!(slots(&s), (Some("a"), None), "{s}");
    assert_eq!(s["min_security_version"], 5);

    // Power cut: install killed at several moments; the active slot still runs, and the
    // other is either complete (as its state says) or not there.
    for delay_ms in [0u64, 5, 20, 60, 150] {
        let mut child = Command::new(BIN)
            .args(install_args(&v6, &fw, &root_pem, &ctx.data))
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = Command::new("kill")
            .args(["-9", &child.id().to_string()])
            .status();
        let _ = child.wait();
        let s = ctx.status(&fw);
        assert_eq!(s["active"], "a", "after a kill at {delay_ms} ms: {s}");
        let out = Command::new(&binary).arg("--version").output().unwrap();
        assert!(
            out.status.success(),
            "the active slot does not run after a kill at {delay_ms} ms"
        );
        let b = fw.join("slots/b/bsn-gateway");
        if s["slots"]["b"].is_object() {
            assert_eq!(
                std::fs::read(&b).unwrap(),
                std::fs::read(BIN).unwrap(),
                "slot b half-written at {delay_ms} ms"
            );
        } else {
            assert!(
                !b.exists() || s["trial"].is_null(),
                "slot b present but not recorded at {delay_ms} ms: {s}"
            );
        }
    }
}

/// Status, polled until `f` holds (the supervisor works in the background).
/// A status answer's (active, trial) slots.
fn slots(s: &Value) -> (Option<&str>, Option<&str>) {
    (s["active"].as_str(), s["trial"].as_str())
}

fn status_until(ctx_data: &str, fw: &Path, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let started = std::time::Instant::now();
    loop {
        let (ok, o) = run(&[
            "firmware",
            "status",
            "--root",
            fw.to_str().unwrap(),
            "--dev",
            "--data-dir",
            ctx_data,
        ]);
        // A failed status (the token is shared with the slot's gateway and the
        // supervisor) is asked again, within the same minute.
        if ok {
            let s: Value = serde_json::from_str(&o).unwrap();
            if f(&s) {
                return s;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "{what}: {o}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_supervisor_commits_a_ready_trial_and_rolls_back_one_that_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let data = t.join("gw");
    let mut g = Gateway::start_dev_in(&data);
    let key = g.create_key("release", "ecdsa-p256");
    let token_file = t.join("admin.token");
    std::fs::write(&token_file, &g.token).unwrap();
    let (root_pem, release_pem) = vendor(
        &t.join("vendor"),
        "BSN Vendor Root",
        key["public_key_pem"].as_str().unwrap(),
    );
    let key_id = key["id"].as_str().unwrap().to_string();
    let good = t.join("good.bundle");
    let cmd = |file: &Path, version: &str, sv: &str, binary: Option<&Path>| {
        let mut args = vec![
            "firmware",
            "build",
            "--version",
            version,
            "--security-version",
            sv,
            "--out",
            file.to_str().unwrap(),
        ];
        if let Some(b) = binary {
            args.extend(["--binary", b.to_str().unwrap()]);
        }
        let (ok, o) = run(&args);
        assert!(ok, "{o}");
    };
    cmd(&good, "2.0.0", "1", None);
    // A binary that never becomes ready: it exits at once.
    let broken_bin = t.join("broken.sh");
    std::fs::write(&broken_bin, "#!/bin/sh\nexit 3\n").unwrap();
    let broken = t.join("broken.bundle");
    cmd(&broken, "2.1.0", "2", Some(&broken_bin));
    // A good binary that the supervisor cannot commit (below).
    let uncommittable = t.join("uncommittable.bundle");
    cmd(&uncommittable, "2.2.0", "3", None);
    // Signing goes through the gateway on the data dir; then it stops, so the slot's
    // gateway can have the data dir.
    for b in [&good, &broken, &uncommittable] {
        let (ok, o) = sign_with(&g.addr, &token_file, &key_id, b, &release_pem);
        assert!(ok, "{o}");
    }
    assert!(g.terminate().success());
    let data_s = data.to_str().unwrap().to_string();
    let fw = t.join("fw");
    let install = |file: &Path| {
        let args = install_args(file, &fw, &root_pem, &data_s);
        let (ok, o) = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(ok, "{o}");
    };
    // The supervisor reaches the token through `source`; the slot's gateway always
    // through the dev data dir.
    let supervisor = |source: &[&str], stderr: std::process::Stdio| {
        Command::new(BIN)
            .args(["firmware", "run", "--root", fw.to_str().unwrap()])
            .args(source)
            .args([
                "--ready-seconds",
                "1",
                "--ready-timeout-seconds",
                "10",
                "--",
            ])
            .args([
                "--dev",
                "--data-dir",
                &data_s,
                "--listen",
                "127.0.0.1:0",
                "--ops-listen",
                "127.0.0.1:0",
            ])
            .env("BSN_LOG", "warn")
            .env("SOFTHSM2_CONF", data.join("softhsm2.conf"))
            .stderr(stderr)
            .spawn()
            .unwrap()
    };
    let dev = ["--dev", "--data-dir", data_s.as_str()];
    let stop = |mut c: std::process::Child| {
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = c.wait().unwrap();
        assert!(status.success(), "the supervisor exited with {status}");
    };

    // A good trial is committed once ready; the minimum rises.
    install(&good);
    let sup = supervisor(&dev, std::process::Stdio::inherit());
    let s = status_until(&data_s, &fw, "commit", |s| {
        s["active"] == "a" && s["trial"].is_null()
    });
    assert_eq!(s["min_security_version"], 1);
    stop(sup);

    // A broken trial is rolled back by itself; slot a runs again; the minimum stays.
    install(&broken);
    assert_eq!(
        status_until(&data_s, &fw, "installed", |s| s["trial"] == "b")["trial"],
        "b"
    );
    let sup = supervisor(&dev, std::process::Stdio::inherit());
    let s = status_until(&data_s, &fw, "rollback", |s| s["trial"].is_null());
    assert_eq!(s["active"], "a", "{s}");
    assert_eq!(s["min_security_version"], 1, "{s}");
    serves_again(&data);
    stop(sup);

    // A trial that becomes ready but whose commit keeps failing (here the supervisor's
    // config names a token that is not there) is tried again, then stopped and rolled
    // back like one that is not ready: a trial never runs on uncommitted.
    install(&uncommittable);
    let config = t.join("wrong-token.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[server]\nlisten = \"127.0.0.1:0\"\n[hsm]\ntoken_label = \"no-such-token\"\npin = {{ file = {pin:?} }}\n[[clients]]\nname = \"a\"\ntoken_sha256 = \"0x{zeros}\"\noperations = [\"keys:sign\"]\nkeys = [\"a-*\"]\n",
            data = data_s,
            pin = data.join("user.pin").to_str().unwrap(),
            zeros = "0".repeat(64),
        ),
    )
    .unwrap();
    let log = t.join("supervisor.log");
    let sup = supervisor(
        &["--config", config.to_str().unwrap()],
        std::fs::File::create(&log).unwrap().into(),
    );
    let s = status_until(&data_s, &fw, "rollback", |s| s["trial"].is_null());
    assert_eq!(s["active"], "a", "{s}");
    assert_eq!(s["min_security_version"], 1, "{s}");
    serves_again(&data);
    stop(sup);
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("commit attempt 4 failed"), "{log}");
    assert!(
        log.contains("trial slot b ready, but the commit failed") && log.contains("rolled back"),
        "{log}"
    );
}

/// Waits until the gateway on `data` answers 200 on /readyz.
fn serves_again(data: &Path) {
    let started = std::time::Instant::now();
    loop {
        let ready = std::fs::read_to_string(data.join("ops.addr"))
            .ok()
            .is_some_and(|a| {
                ureq::get(format!("http://{}/readyz", a.trim()))
                    .call()
                    .is_ok_and(|r| r.status() == 200)
            });
        if ready {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "slot a not ready after the rollback"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
