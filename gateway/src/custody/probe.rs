//! `bsn-gateway hsm probe`: what a PKCS#11 module offers (slots, tokens, mechanisms),
//! held against what an HSM profile expects of it. With a PIN it also proves each of the
//! profile's algorithms end to end on session objects (CKA_TOKEN false), which vanish
//! with the session: nothing is left on the token.

use std::path::{Path, PathBuf};

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, AttributeType};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Limit, Slot};
use openssl::ecdsa::EcdsaSig;
use openssl::sign::Verifier;
use serde::Serialize;

use super::hsm::{self, auth_pin, unwrap_point, HsmError, TokenSelector};
use super::profile::{Profile, VendorMechanisms};
use crate::algorithm::Algorithm;
use crate::crypto::{ecdsa, pubkey};
use crate::secret::Secret;

#[derive(Debug, Serialize)]
pub struct Report {
    pub module: PathBuf,
    pub library: Library,
    pub profile: String,
    pub slots: Vec<SlotReport>,
    /// The configured token's slot, when exactly one token matches.
    pub token_slot: Option<u64>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Library {
    pub manufacturer: String,
    pub description: String,
    pub version: String,
    pub cryptoki_version: String,
}

#[derive(Debug, Serialize)]
pub struct SlotReport {
    pub id: u64,
    pub description: String,
    pub token: Option<TokenReport>,
}

#[derive(Debug, Serialize)]
pub struct TokenReport {
    pub label: String,
    pub manufacturer: String,
    pub model: String,
    pub serial: String,
    pub initialized: bool,
    pub user_pin_initialized: bool,
    pub user_pin_locked: bool,
    /// None where the token says it has no limit or does not tell.
    pub max_sessions: Option<u64>,
    pub max_rw_sessions: Option<u64>,
    pub mechanisms: Vec<MechanismReport>,
}

#[derive(Debug, Serialize)]
pub struct MechanismReport {
    pub name: String,
    pub min_key_size: usize,
    pub max_key_size: usize,
    pub flags: Vec<&'static str>,
}

/// One expectation of the profile, met or not.
#[derive(Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

impl Report {
    pub fn missing(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.ok)
    }

    pub fn render_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let l = &self.library;
        let _ = writeln!(s, "module   {}", self.module.display());
        let _ = writeln!(
            s,
            "library  {} {} ({}), Cryptoki {}",
            l.manufacturer, l.version, l.description, l.cryptoki_version
        );
        let _ = writeln!(s, "profile  {}", self.profile);
        for slot in &self.slots {
            let _ = writeln!(s, "\nslot {}: {}", slot.id, slot.description);
            let Some(t) = &slot.token else {
                let _ = writeln!(s, "  no token");
                continue;
            };
            let limit = |v: Option<u64>| v.map_or("no limit".to_string(), |n| n.to_string());
            let _ = writeln!(
                s,
                "  token {:?} model {:?} serial {:?} ({})",
                t.label, t.model, t.serial, t.manufacturer
            );
            let _ = writeln!(
                s,
                "  initialised {}, user PIN set {}, user PIN locked {}, sessions {} (rw {})",
                t.initialized,
                t.user_pin_initialized,
                t.user_pin_locked,
                limit(t.max_sessions),
                limit(t.max_rw_sessions)
            );
            let _ = writeln!(s, "  mechanisms ({}):", t.mechanisms.len());
            for m in &t.mechanisms {
                let _ = writeln!(
                    s,
                    "    {:<36} keys {}..{}  {}",
                    m.name,
                    m.min_key_size,
                    m.max_key_size,
                    m.flags.join(",")
                );
            }
        }
        let _ = writeln!(s, "\nchecks against profile {}:", self.profile);
        for c in &self.checks {
            let mark = if c.ok { "ok     " } else { "MISSING" };
            let _ = writeln!(s, "  {mark} {}: {}", c.what, c.detail);
        }
        let missing = self.missing().count();
        if missing == 0 {
            let _ = writeln!(s, "\nnothing the profile expects is missing");
        } else {
            let _ = writeln!(s, "\n{missing} expectation(s) of the profile not met");
        }
        s
    }
}

/// What to probe: the module, the token the config names, the PIN if the probe may log in.
pub struct Target<'a> {
    pub module: &'a Path,
    pub profile: &'a Profile,
    pub selector: &'a TokenSelector,
    pub pin: Option<&'a Secret>,
    /// The sessions the gateway would open: its pool plus the anchor.
    pub pool_size: usize,
    /// What the config asks for that the profile cannot hold.
    pub gaps: Vec<String>,
}

pub fn probe(target: &Target<'_>) -> Result<Report, HsmError> {
    let pkcs11 = hsm::load_module(target.module)?;
    let report = run(&pkcs11, target);
    if let Err(e) = pkcs11.finalize() {
        tracing::warn!(error = %e, "C_Finalize failed");
    }
    report
}

fn run(pkcs11: &Pkcs11, target: &Target<'_>) -> Result<Report, HsmError> {
    let info = pkcs11.get_library_info().map_err(HsmError::from_ck)?;
    let library = Library {
        manufacturer: info.manufacturer_id().trim().to_string(),
        description: info.library_description().trim().to_string(),
        version: info.library_version().to_string(),
        cryptoki_version: info.cryptoki_version().to_string(),
    };
    let mut slots = Vec::new();
    for slot in pkcs11.get_all_slots().map_err(HsmError::from_ck)? {
        slots.push(slot_report(
            pkcs11,
            slot,
            &target.profile.vendor_mechanisms,
        )?);
    }

    let profile = target.profile;
    let mut checks = Vec::new();
    for gap in &target.gaps {
        checks.push(missing("config algorithms", gap.clone()));
    }
    let token_slot = match hsm::find_slot(pkcs11, target.selector) {
        Ok(slot) => {
            checks.push(ok(
                "token",
                format!("{} is in slot {}", target.selector, slot.id()),
            ));
            Some(slot)
        }
        Err(e) => {
            checks.push(missing("token", e.to_string()));
            None
        }
    };
    // The slot list was read before the slot was chosen: a token pulled in between has
    // no report, and is named missing rather than trusted.
    let chosen = token_slot.and_then(|slot| {
        let token = slots
            .iter()
            .find(|s| s.id == slot.id())
            .and_then(|s| s.token.as_ref());
        if token.is_none() {
            checks.push(missing(
                "token",
                "the token left its slot during the probe".into(),
            ));
        }
        token.map(|t| (slot, t))
    });
    if let Some((slot, token)) = chosen {
        token_checks(token, profile, target.pool_size, &mut checks);
        let pin_usable = token.user_pin_initialized && !token.user_pin_locked;
        match target.pin {
            Some(pin) if pin_usable => {
                signing_checks(pkcs11, slot, pin, profile, &mut checks);
            }
            Some(_) => {}
            None => checks.push(ok(
                "signing",
                "not tried (no PIN given; --no-login or none configured)".into(),
            )),
        }
    }
    Ok(Report {
        module: target.module.to_path_buf(),
        library,
        profile: profile.name.clone(),
        slots,
        token_slot: token_slot.map(|s| s.id()),
        checks,
    })
}

fn slot_report(
    pkcs11: &Pkcs11,
    slot: Slot,
    vendor: &VendorMechanisms,
) -> Result<SlotReport, HsmError> {
    let info = pkcs11.get_slot_info(slot).map_err(HsmError::from_ck)?;
    let token = if info.token_present() {
        let t = pkcs11.get_token_info(slot).map_err(HsmError::from_ck)?;
        let mut mechanisms = Vec::new();
        // cryptoki's list leaves out every number it has no name for, which is every
        // vendor-defined one: those the profile names are asked for by number.
        let mut listed = pkcs11.get_mechanism_list(slot).map_err(HsmError::from_ck)?;
        listed.extend(
            vendor
                .codes()
                .filter_map(|c| MechanismType::new_vendor_defined(c as _).ok()),
        );
        for m in listed {
            let Ok(mi) = pkcs11.get_mechanism_info(slot, m) else {
                continue;
            };
            let flags = [
                (mi.hardware(), "hw"),
                (mi.generate_key_pair(), "keypair"),
                (mi.generate(), "generate"),
                (mi.sign(), "sign"),
                (mi.verify(), "verify"),
                (mi.encrypt(), "encrypt"),
                (mi.decrypt(), "decrypt"),
                (mi.digest(), "digest"),
                (mi.derive(), "derive"),
                (mi.wrap(), "wrap"),
                (mi.unwrap(), "unwrap"),
            ]
            .into_iter()
            .filter_map(|(set, name)| set.then_some(name))
            .collect();
            mechanisms.push(MechanismReport {
                name: mechanism_name(m, vendor),
                min_key_size: mi.min_key_size(),
                max_key_size: mi.max_key_size(),
                flags,
            });
        }
        Some(TokenReport {
            label: t.label().trim().to_string(),
            manufacturer: t.manufacturer_id().trim().to_string(),
            model: t.model().trim().to_string(),
            serial: t.serial_number().trim().to_string(),
            initialized: t.token_initialized(),
            user_pin_initialized: t.user_pin_initialized(),
            user_pin_locked: t.user_pin_locked(),
            max_sessions: limit(t.max_session_count()),
            max_rw_sessions: limit(t.max_rw_session_count()),
            mechanisms,
        })
    } else {
        None
    };
    Ok(SlotReport {
        id: slot.id(),
        description: info.slot_description().trim().to_string(),
        token,
    })
}

fn limit(l: Limit) -> Option<u64> {
    match l {
        Limit::Max(n) => Some(n),
        Limit::Unavailable | Limit::Infinite => None,
    }
}

/// A mechanism's PKCS#11 name; a vendor-defined one by its offset and, where the profile
/// names it, its role.
fn mechanism_name(m: MechanismType, vendor: &VendorMechanisms) -> String {
    let code = *m;
    if code < cryptoki_sys::CKM_VENDOR_DEFINED {
        return m.to_string();
    }
    let offset = code - cryptoki_sys::CKM_VENDOR_DEFINED;
    match vendor.role(code) {
        Some(role) => format!("CKM_VENDOR_DEFINED+{offset:#x} ({role})"),
        None => format!("CKM_VENDOR_DEFINED+{offset:#x}"),
    }
}

/// The mechanisms the gateway calls for each algorithm, with the flag each must carry.
fn required_mechanisms(
    alg: Algorithm,
    vendor: &VendorMechanisms,
) -> Option<[(MechanismType, &'static str); 2]> {
    match alg {
        Algorithm::EcdsaP256 | Algorithm::EcdsaSecp256k1 => Some([
            (MechanismType::ECC_KEY_PAIR_GEN, "keypair"),
            (MechanismType::ECDSA, "sign"),
        ]),
        Algorithm::Ed25519 => Some([
            (MechanismType::ECC_EDWARDS_KEY_PAIR_GEN, "keypair"),
            (MechanismType::EDDSA, "sign"),
        ]),
        // PKCS#11 3.x names no SM2 mechanism: vendors use their own numbers.
        Algorithm::Sm2 => {
            let (gen, sign) = vendor.sm2()?;
            Some([
                (MechanismType::new_vendor_defined(gen as _).ok()?, "keypair"),
                (MechanismType::new_vendor_defined(sign as _).ok()?, "sign"),
            ])
        }
    }
}

fn token_checks(token: &TokenReport, profile: &Profile, pool_size: usize, out: &mut Vec<Check>) {
    out.push(if token.user_pin_initialized && !token.user_pin_locked {
        ok("user PIN", "set and not locked".into())
    } else if token.user_pin_locked {
        missing("user PIN", "locked: the SO must reset it".into())
    } else {
        missing("user PIN", "not initialised (C_InitPIN)".into())
    });
    for &alg in &profile.algorithms {
        let what = format!("{alg} mechanisms");
        let vendor = &profile.vendor_mechanisms;
        let Some(required) = required_mechanisms(alg, vendor) else {
            out.push(missing(
                &what,
                "PKCS#11 has no standard mechanism for it and the profile names no vendor \
                 mechanisms; leave it out of the profile's algorithms"
                    .into(),
            ));
            continue;
        };
        let mut lacking = Vec::new();
        for (mech, flag) in required {
            let name = mechanism_name(mech, vendor);
            match token.mechanisms.iter().find(|m| m.name == name) {
                Some(m) if m.flags.contains(&flag) => {}
                Some(_) => lacking.push(format!("{name} without the {flag} flag")),
                None => lacking.push(name),
            }
        }
        out.push(if lacking.is_empty() {
            ok(
                &what,
                required
                    .iter()
                    .map(|(m, _)| mechanism_name(*m, vendor))
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        } else {
            missing(&what, format!("lacks {}", lacking.join(", ")))
        });
    }
    // The gateway holds its pool plus one anchor session open, all read-write.
    let wanted = pool_size as u64 + 1;
    let allowed = match (token.max_rw_sessions, token.max_sessions) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    out.push(match allowed {
        Some(n) if n < wanted => missing(
            "sessions",
            format!("the pool needs {wanted} read-write sessions, the token allows {n}"),
        ),
        Some(n) => ok(
            "sessions",
            format!("the pool needs {wanted}, the token allows {n}"),
        ),
        None => ok(
            "sessions",
            format!("the pool needs {wanted}, the token sets no limit"),
        ),
    });
    if let (Some(n), m) = (allowed, profile.max_sessions as u64) {
        if m == 0 || m > n {
            out.push(missing(
                "profile max_sessions",
                format!("the profile says {m}, the token allows {n}"),
            ));
        }
    }
}

/// Logs in and, for each algorithm, generates a session key pair, reads its public point
/// the way the profile's quirks say, signs, and verifies the signature with OpenSSL.
fn signing_checks(
    pkcs11: &Pkcs11,
    slot: Slot,
    pin: &Secret,
    profile: &Profile,
    out: &mut Vec<Check>,
) {
    let session = match pkcs11.open_rw_session(slot) {
        Ok(s) => s,
        Err(e) => {
            out.push(missing("login", HsmError::from_ck(e).to_string()));
            return;
        }
    };
    match session.login(UserType::User, Some(&auth_pin(pin))) {
        Ok(()) => out.push(ok("login", "the PIN is accepted".into())),
        Err(e) => {
            out.push(missing("login", HsmError::from_ck(e).to_string()));
            return;
        }
    }
    for &alg in &profile.algorithms {
        if required_mechanisms(alg, &profile.vendor_mechanisms).is_none() {
            continue;
        }
        let what = format!("{alg} sign");
        out.push(match sign_once(&session, alg, profile) {
            Ok(detail) => ok(&what, detail),
            Err(detail) => missing(&what, detail),
        });
    }
    let _ = session.logout();
}

fn sign_once(session: &Session, alg: Algorithm, profile: &Profile) -> Result<String, String> {
    let vendor = &profile.vendor_mechanisms;
    let (gen, params) =
        hsm::keygen_mechanism(alg, &profile.quirks, vendor).ok_or("no mechanism for it")?;
    let sign = hsm::sign_mechanism(alg, vendor).ok_or("no mechanism for it")?;
    // A token that has no session objects gets a token object, destroyed below.
    let probe_id = crate::util::random_bytes(16);
    let persistent =
        (!profile.quirks.session_objects).then_some((&probe_id[..], "bsn-gateway-probe"));
    let (public, private) =
        hsm::keypair_templates(alg, params, &profile.quirks, vendor, persistent);
    let (pub_h, priv_h) = session
        .generate_key_pair(&gen, &public, &private)
        .map_err(|e| HsmError::from_ck(e).to_string())?;
    // Under `sign_with_session_copy` the gateway signs with a session copy: so does the probe.
    let mut copy = None;
    let result = (|| {
        let signer = if profile.quirks.sign_with_session_copy {
            let c = session
                .copy_object(priv_h, &[Attribute::Token(false)])
                .map_err(|e| {
                    format!(
                        "C_CopyObject (sign_with_session_copy): {}",
                        HsmError::from_ck(e)
                    )
                })?;
            *copy.insert(c)
        } else {
            priv_h
        };
        let point = session
            .get_attributes(pub_h, &[AttributeType::EcPoint])
            .map_err(|e| HsmError::from_ck(e).to_string())?
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or("no CKA_EC_POINT")?;
        let bare = unwrap_point(alg, &point, profile.quirks.ec_point).map_err(|_| {
            format!(
                "CKA_EC_POINT of {} bytes does not match quirks.ec_point = {:?}",
                point.len(),
                profile.quirks.ec_point
            )
        })?;
        let message = b"bsn-gateway hsm probe";
        let input = match alg {
            Algorithm::Ed25519 => message.to_vec(),
            Algorithm::Sm2 => {
                let z = crate::verify::keys::sm2_z(&bare);
                crate::verify::keys::sm2_e(&z, message).to_vec()
            }
            _ => crate::util::sha256(message).to_vec(),
        };
        let sig = session
            .sign(&sign, signer, &input)
            .map_err(|e| HsmError::from_ck(e).to_string())?;
        let key = pubkey::pkey_from_bytes(alg, &bare).map_err(|e| e.to_string())?;
        let valid = match alg {
            Algorithm::Ed25519 => {
                Verifier::new_without_digest(&key).and_then(|mut v| v.verify_oneshot(&sig, &input))
            }
            // OpenSSL 3.0 has no SM2 verification over a bare e: the gateway's own
            // verifier, itself checked against OpenSSL and GM/T 0003.5, reads it.
            Algorithm::Sm2 => Ok(sm2_verifies(&bare, &input, &sig)),
            _ => {
                let der = ecdsa::raw_to_der(&sig).map_err(|e| e.to_string())?;
                EcdsaSig::from_der(&der).and_then(|s| s.verify(&input, &*key.ec_key()?))
            }
        }
        .map_err(|e| e.to_string())?;
        if valid {
            Ok(format!(
                "{} key generated, signed{}, signature verified by {} ({} byte signature)",
                if persistent.is_some() {
                    "token (then destroyed)"
                } else {
                    "session"
                },
                if copy.is_some() {
                    " with a session copy"
                } else {
                    ""
                },
                if alg == Algorithm::Sm2 {
                    "the gateway's SM2 verifier"
                } else {
                    "OpenSSL"
                },
                sig.len()
            ))
        } else {
            Err("the token's signature does not verify".to_string())
        }
    })();
    for h in copy.into_iter().chain([priv_h, pub_h]) {
        let _ = session.destroy_object(h);
    }
    result
}

/// An SM2 r||s over e, for a point already checked to be on the curve.
fn sm2_verifies(point: &[u8], e: &[u8], sig: &[u8]) -> bool {
    let (Ok(x), Ok(y), Ok(e)) = (
        <&[u8; 32]>::try_from(&point[1..33]),
        <&[u8; 32]>::try_from(&point[33..]),
        <&[u8; 32]>::try_from(e),
    ) else {
        return false;
    };
    let (Ok(r), Ok(s)) = (
        <&[u8; 32]>::try_from(sig.get(..32).unwrap_or_default()),
        <&[u8; 32]>::try_from(sig.get(32..).unwrap_or_default()),
    ) else {
        return false;
    };
    crate::verify::sm2p256::Sm2Key::new(x, y).verify(e, r, s)
}

fn ok(what: &str, detail: String) -> Check {
    Check {
        what: what.into(),
        ok: true,
        detail,
    }
}

fn missing(what: &str, detail: String) -> Check {
    Check {
        what: what.into(),
        ok: false,
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(mechanisms: &[(&str, &[&'static str])], max_rw: Option<u64>) -> TokenReport {
        TokenReport {
            label: "t".into(),
            manufacturer: "m".into(),
            model: "m".into(),
            serial: "1".into(),
            initialized: true,
            user_pin_initialized: true,
            user_pin_locked: false,
            max_sessions: None,
            max_rw_sessions: max_rw,
            mechanisms: mechanisms
                .iter()
                .map(|(name, flags)| MechanismReport {
                    name: name.to_string(),
                    min_key_size: 256,
                    max_key_size: 521,
                    flags: flags.to_vec(),
                })
                .collect(),
        }
    }

    fn failed(checks: &[Check]) -> Vec<&str> {
        checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.what.as_str())
            .collect()
    }

    #[test]
    fn a_session_limit_below_the_pool_and_a_wrong_profile_limit_are_named() {
        let mut profile = Profile::built_in("softhsm2").unwrap();
        profile.algorithms = vec![Algorithm::EcdsaP256];
        let t = token(
            &[
                ("CKM_EC_KEY_PAIR_GEN", &["keypair"]),
                ("CKM_ECDSA", &["sign", "verify"]),
            ],
            Some(8),
        );
        let mut checks = Vec::new();
        token_checks(&t, &profile, 16, &mut checks);
        assert_eq!(failed(&checks), ["sessions", "profile max_sessions"]);

        profile.max_sessions = 8;
        let mut checks = Vec::new();
        token_checks(&t, &profile, 7, &mut checks);
        assert!(failed(&checks).is_empty());
    }

    #[test]
    fn a_mechanism_without_its_flag_counts_as_missing() {
        let mut profile = Profile::built_in("softhsm2").unwrap();
        profile.algorithms = vec![Algorithm::EcdsaP256, Algorithm::Ed25519];
        let t = token(
            &[
                ("CKM_EC_KEY_PAIR_GEN", &["keypair"]),
                ("CKM_ECDSA", &["verify"]),
            ],
            None,
        );
        let mut checks = Vec::new();
        token_checks(&t, &profile, 4, &mut checks);
        assert_eq!(
            failed(&checks),
            ["ecdsa-p256 mechanisms", "ed25519 mechanisms"]
        );
        assert!(checks[1].detail.contains("CKM_ECDSA without the sign flag"));
        assert!(checks[2]
            .detail
            .contains("CKM_EC_EDWARDS_KEY_PAIR_GEN, CKM_EDDSA"));
    }
}
