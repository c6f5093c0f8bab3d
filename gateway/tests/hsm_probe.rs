//! `bsn-gateway hsm probe` on SoftHSM2: what it lists, and that it names what a profile
//! expects and the module or token lacks.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// A data dir whose embedded token a dev start initialised.
fn dev_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let mut g = Gateway::start_dev_in(tmp.path());
    assert!(g.terminate().success());
    tmp
}

fn probe(dir: &Path, args: &[&str]) -> (bool, Value) {
    let out = Command::new(BIN)
        .env("SOFTHSM2_CONF", dir.join("softhsm2.conf"))
        .args(["hsm", "probe", "--json"])
        .args(args)
        .output()
        .unwrap();
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "probe printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), report)
}

fn failed(report: &Value) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["what"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_embedded_token_meets_the_softhsm2_profile() {
    let tmp = dev_dir();
    let d = tmp.path().to_str().unwrap();
    let (ok, report) = probe(tmp.path(), &["--dev", "--data-dir", d]);
    assert!(ok, "{report:#}");
    assert!(failed(&report).is_empty(), "{report:#}");
    assert_eq!(report["profile"], "softhsm2");
    assert!(report["library"]["manufacturer"]
        .as_str()
        .unwrap()
        .contains("SoftHSM"));

    // The token's slot is listed, with the mechanisms the gateway calls and their flags.
    let slot = report["token_slot"].as_u64().unwrap();
    let token = report["slots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == slot)
        .unwrap()["token"]
        .clone();
    assert_eq!(token["label"], "bsn-gateway-dev");
    assert_eq!(token["initialized"], true);
    let mech = |name: &str| {
        token["mechanisms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
            .clone()
    };
    assert!(mech("CKM_ECDSA")["flags"]
        .as_array()
        .unwrap()
        .contains(&"sign".into()));
    assert!(mech("CKM_EC_EDWARDS_KEY_PAIR_GEN")["flags"]
        .as_array()
        .unwrap()
        .contains(&"keypair".into()));
    // Each algorithm was proven end to end on session keys.
    for alg in ["ecdsa-p256", "ecdsa-secp256k1", "ed25519"] {
        let c = probe_check(&report, &format!("{alg} sign"));
        assert!(c["detail"].as_str().unwrap().contains("verified"), "{c:#}");
        // SoftHSM2's profile signs with session copies: the probe proves that path.
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .contains("with a session copy"),
            "{c:#}"
        );
    }
    // ...and left nothing on the token beside the gateway's own audit key.
    let objects = pkcs11_tool(tmp.path(), &["--list-objects"]);
    assert_eq!(
        objects.matches("Private Key Object").count(),
        1,
        "{objects}"
    );
    assert!(
        objects.contains("label:      bsn-gateway-audit"),
        "{objects}"
    );

    // Without a login it lists and checks mechanisms, and tries no signing.
    let (ok, report) = probe(tmp.path(), &["--dev", "--data-dir", d, "--no-login"]);
    assert!(ok, "{report:#}");
    assert!(probe_check(&report, "signing")["detail"]
        .as_str()
        .unwrap()
        .contains("not tried"));
}

#[test]
fn what_a_profile_expects_and_the_token_lacks_is_named() {
    let tmp = dev_dir();
    let dir = tmp.path();
    let d = dir.to_str().unwrap();
    // A profile for a stricter device: SM2 keys by vendor mechanisms, a session limit,
    // bare EC points.
    let profile = dir.join("strict.toml");
    std::fs::write(
        &profile,
        format!(
            "name = \"strict\"\nmodule_paths = [{:?}]\ndefault_pool_size = 4\nmax_sessions = 5\n\
             algorithms = [\"ecdsa-p256\", \"ed25519\", \"sm2\"]\n[quirks]\nec_point = \"raw\"\n\
             [vendor_mechanisms]\nsm2_key_pair_gen = 0x80008001\nsm2_sign = 0x80008000\n",
            module_path()
        ),
    )
    .unwrap();
    let (ok, report) = probe(
        dir,
        &[
            "--dev",
            "--data-dir",
            d,
            "--profile",
            profile.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert_eq!(report["profile"], "strict");
    let mut missing = failed(&report);
    missing.sort();
    assert_eq!(
        missing,
        [
            "ecdsa-p256 sign",
            "ed25519 sign",
            "sm2 mechanisms",
            "sm2 sign"
        ],
        "{report:#}"
    );
    // SoftHSM2 has no vendor SM2: named by number and role.
    assert!(probe_check(&report, "sm2 mechanisms")["detail"]
        .as_str()
        .unwrap()
        .contains("CKM_VENDOR_DEFINED+0x8000 (SM2 signature over e)"));
    assert!(probe_check(&report, "ecdsa-p256 sign")["detail"]
        .as_str()
        .unwrap()
        .contains("quirks.ec_point"));
    // SoftHSM2 sets no session limit, so any pool fits (the unit tests cover a token
    // with one).
    assert_eq!(probe_check(&report, "sessions")["ok"], true);

    // A config naming a token that is not there, and one whose PIN is wrong.
    let config = dir.join("other.toml");
    let text = dev_token_config(dir, "", "", "");
    std::fs::write(
        &config,
        text.replace(
            "token_label = \"bsn-gateway-dev\"",
            "token_label = \"absent\"",
        ),
    )
    .unwrap();
    let (ok, report) = probe(dir, &["--config", config.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(failed(&report), ["token"]);
    assert!(report["token_slot"].is_null());

    std::fs::write(dir.join("wrong.pin"), "wrong-pin-7x9q").unwrap();
    let wrong = dir.join("wrong-pin.toml");
    std::fs::write(
        &wrong,
        text.replace(&format!("{d}/user.pin"), &format!("{d}/wrong.pin")),
    )
    .unwrap();
    let (ok, report) = probe(dir, &["--config", wrong.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(failed(&report), ["login"]);
    assert!(probe_check(&report, "login")["detail"]
        .as_str()
        .unwrap()
        .contains("PIN_INCORRECT"));
    // The wrong PIN is never printed.
    assert!(!serde_json::to_string(&report)
        .unwrap()
        .contains("wrong-pin-7x9q"));
}

#[test]
fn a_data_dir_without_a_token_is_refused_not_created() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("none");
    let out = Command::new(BIN)
        .args(["hsm", "probe", "--dev", "--data-dir"])
        .arg(&empty)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("holds no embedded token"));
    assert!(!empty.exists());
}
