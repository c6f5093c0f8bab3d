//! The appliance under systemd: the shipped unit passes `systemd-analyze verify`, and the
//! gateway tells `$NOTIFY_SOCKET` when it is ready (HSM pool open, listener bound) and
//! when it starts to stop.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use common::{Gateway, BIN};

const UNITS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd");

/// Both shipped units: the plain one and the A/B slots' supervisor, one sandbox.
#[test]
fn the_shipped_units_are_hardened_and_verify() {
    for name in ["bsn-gateway.service", "bsn-gateway-slots.service"] {
        check_unit(name);
    }
}

fn check_unit(name: &str) {
    let text = std::fs::read_to_string(std::path::Path::new(UNITS).join(name)).unwrap();
    for line in [
        "Type=notify",
        "User=bsn-gateway",
        "ProtectSystem=strict",
        "NoNewPrivileges=true",
        "MemoryDenyWriteExecute=true",
        "CapabilityBoundingSet=\n",
        "AmbientCapabilities=\n",
        "ReadWritePaths=/var/lib/bsn-gateway\n",
        "LimitNOFILE=",
        "SystemCallFilter=@system-service\n",
        "MemoryMax=",
        "TasksMax=",
        "DevicePolicy=closed\n",
        "ReadWritePaths=-/var/lib/softhsm/tokens\n",
    ] {
        assert!(text.contains(line), "{name} lacks {line:?}");
    }
    // Only the data dir is writable, and the SoftHSM2 token store where there is one.
    assert_eq!(text.matches("ReadWritePaths=").count(), 2);
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join(name);
    std::fs::write(&unit, text.replace("/usr/bin/bsn-gateway", BIN)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // systemd's own exposure score, 0 (locked down) to 10: at most 2.0.
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true"])
        .arg(&unit)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let exposure: f64 = report
        .lines()
        .find_map(|l| l.split_once(&format!("Overall exposure level for {name}: ")))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in: {report}"));
    assert!(exposure <= 2.0, "{name}: exposure {exposure}:\n{report}");
    // And it can fail: a typo in a directive is reported.
    std::fs::write(
        &unit,
        text.replace("/usr/bin/bsn-gateway", BIN)
            .replace("ProtectSystem=strict", "ProtectSystem=strikt"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    assert!(!out.stderr.is_empty(), "a bad value goes unnoticed");
}

#[test]
fn readiness_and_stopping_reach_notify_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let data = dir.path().join("data");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("NOTIFY_SOCKET", &sock_path);
    let mut g = Gateway::spawn(cmd, &data);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).expect("READY=1 within a minute");
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.starts_with("READY=1\n"), "{msg}");
    assert!(msg.contains(&g.addr), "the status names the address: {msg}");
    assert_eq!(g.get("/readyz").status, 200);
    assert!(g.terminate().success());
    let n = sock.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
}
