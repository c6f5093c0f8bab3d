//! Keys, CSRs and files for the certificate tests, made by the openssl CLI (an
//! implementation independent of the gateway's x509-cert).

use std::path::Path;
use std::process::Command;

pub fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl").args(args).output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

/// A key and a CSR made by the openssl CLI.
pub fn csr(dir: &Path, name: &str, sm2: bool) -> String {
    let key = dir.join(format!("{name}.key"));
    let req = dir.join(format!("{name}.csr"));
    let (ok, out) = if sm2 {
        openssl(&[
            "genpkey",
            "-algorithm",
            "SM2",
            "-out",
            key.to_str().unwrap(),
        ])
    } else {
        openssl(&[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            key.to_str().unwrap(),
        ])
    };
    assert!(ok, "{out}");
    let mut args = vec!["req", "-new", "-key", key.to_str().unwrap(), "-subj"];
    let subj = format!("/CN={name}/O=BSN");
    args.push(&subj);
    if sm2 {
        args.extend(["-sm3", "-sigopt", "distid:1234567812345678"]);
    }
    args.extend(["-out", req.to_str().unwrap()]);
    let (ok, out) = openssl(&args);
    assert!(ok, "{out}");
    std::fs::read_to_string(req).unwrap()
}
