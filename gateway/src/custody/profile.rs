//! HSM profiles: one TOML file per PKCS#11 device family (module paths, pool size,
//! algorithms, quirks). Device differences live here as data, not as code paths.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::algorithm::Algorithm;

/// Profiles shipped inside the binary, so the embedded default runs from anywhere.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "softhsm2",
        include_str!("../../../hsm-profiles/softhsm2.toml"),
    ),
    ("tpm2", include_str!("../../../hsm-profiles/tpm2.toml")),
    (
        "thales-luna",
        include_str!("../../../hsm-profiles/thales-luna.toml"),
    ),
    (
        "entrust-nshield",
        include_str!("../../../hsm-profiles/entrust-nshield.toml"),
    ),
    (
        "utimaco",
        include_str!("../../../hsm-profiles/utimaco.toml"),
    ),
    (
        "aws-cloudhsm",
        include_str!("../../../hsm-profiles/aws-cloudhsm.toml"),
    ),
    (
        "yubihsm2",
        include_str!("../../../hsm-profiles/yubihsm2.toml"),
    ),
    (
        "cn-generic-sm2",
        include_str!("../../../hsm-profiles/cn-generic-sm2.toml"),
    ),
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub module_paths: Vec<PathBuf>,
    pub default_pool_size: usize,
    /// Device limit on open sessions; 0 when the device has none.
    #[serde(default)]
    pub max_sessions: usize,
    pub algorithms: Vec<Algorithm>,
    /// The named curves the device generates keys on, as its documentation says
    /// (informative: `algorithms` is what the gateway acts on).
    #[serde(default)]
    pub curves: Vec<String>,
    #[serde(default)]
    pub login: Login,
    /// Mechanisms outside PKCS#11's numbering (SM2, SM3), as the vendor defines them.
    #[serde(default)]
    pub vendor_mechanisms: VendorMechanisms,
    #[serde(default)]
    pub quirks: Quirks,
}

/// How the device treats logins, so an operator knows what a wrong PIN costs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Login {
    /// `application`: one C_Login serves every session of the process (PKCS#11 §5.6);
    /// `session`: each session logs in.
    #[serde(default)]
    pub scope: LoginScope,
    /// What happens after repeated wrong PINs, in the vendor's words.
    #[serde(default)]
    pub locks_after: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LoginScope {
    #[default]
    Application,
    Session,
}

/// Vendor-defined mechanism numbers (CKM_VENDOR_DEFINED and up).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorMechanisms {
    pub sm2_key_pair_gen: Option<u64>,
    /// SM2 signature over a caller-made e (Z and SM3 done by the gateway).
    pub sm2_sign: Option<u64>,
    /// SM2 signature with SM3 and Z done by the device.
    pub sm2_sm3_sign: Option<u64>,
    pub sm3: Option<u64>,
}

impl VendorMechanisms {
    /// The key-pair and signing mechanisms of in-token SM2, where the device has both.
    pub fn sm2(&self) -> Option<(u64, u64)> {
        Some((self.sm2_key_pair_gen?, self.sm2_sign?))
    }

    /// The role of a vendor mechanism number, for reports (`hsm probe`).
    pub fn role(&self, code: u64) -> Option<&'static str> {
        [
            (self.sm2_key_pair_gen, "SM2 key-pair generation"),
            (self.sm2_sign, "SM2 signature over e"),
            (self.sm2_sm3_sign, "SM2 with SM3"),
            (self.sm3, "SM3"),
        ]
        .into_iter()
        .find_map(|(c, role)| (c == Some(code)).then_some(role))
    }

    /// Every number the profile names.
    pub fn codes(&self) -> impl Iterator<Item = u64> {
        [
            self.sm2_key_pair_gen,
            self.sm2_sign,
            self.sm2_sm3_sign,
            self.sm3,
        ]
        .into_iter()
        .flatten()
    }

    fn check(&self) -> Result<(), String> {
        for code in self.codes() {
            if code < cryptoki_sys::CKM_VENDOR_DEFINED {
                return Err(format!(
                    "vendor_mechanisms: {code:#x} is below CKM_VENDOR_DEFINED (0x80000000)"
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quirks {
    #[serde(default)]
    pub ec_point: EcPointEncoding,
    #[serde(default)]
    pub ed25519_params: Ed25519Params,
    #[serde(default = "default_transient")]
    pub transient_errors: Vec<super::rv::ReturnCode>,
    /// Whether the token makes session objects (CKA_TOKEN false); the probe's test keys
    /// are token objects, destroyed at once, where it does not.
    #[serde(default = "yes")]
    pub session_objects: bool,
    /// Return codes that mean the module's link to the device is gone (after the one
    /// retry): the gateway finalises the module, initialises it again and logs in.
    #[serde(default = "default_reconnect")]
    pub reconnect_errors: Vec<super::rv::ReturnCode>,
    /// The module sets CKA_DECRYPT on EC private keys itself and refuses a template that
    /// says otherwise (tpm2-pkcs11): the gateway leaves it out of the template and
    /// restricts the key by CKA_ALLOWED_MECHANISMS instead.
    #[serde(default)]
    pub ec_private_decrypt_fixed: bool,
    /// The module signs in the calling thread and never waits on a device (a software
    /// token such as SoftHSM2): signatures are made on the runtime's own threads. Handing
    /// each one to a blocking thread and back cost as much CPU as the signature itself.
    /// Never for a device behind a bus or a network: a slow call would stall the runtime.
    #[serde(default)]
    pub inline_sign: bool,
    /// The module reads a token object from its store again on every use (SoftHSM2's
    /// file store opens, locks and stats the object's file for each attribute: a third
    /// of a P-256 signature): the gateway signs with a session copy of each key, made
    /// inside the token (C_CopyObject with CKA_TOKEN false; still sensitive, never
    /// extractable) and gone with the module. Never for a device with scarce object
    /// memory, nor one that caches keys itself (there is nothing to gain).
    #[serde(default)]
    pub sign_with_session_copy: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks {
            ec_point: EcPointEncoding::default(),
            ed25519_params: Ed25519Params::default(),
            transient_errors: default_transient(),
            reconnect_errors: default_reconnect(),
            session_objects: true,
            ec_private_decrypt_fixed: false,
            inline_sign: false,
            sign_with_session_copy: false,
        }
    }
}

fn default_transient() -> Vec<super::rv::ReturnCode> {
    use cryptoki::error::RvError;
    vec![
        super::rv::ReturnCode(RvError::DeviceError),
        super::rv::ReturnCode(RvError::SessionHandleInvalid),
    ]
}

fn yes() -> bool {
    true
}

fn default_reconnect() -> Vec<super::rv::ReturnCode> {
    use cryptoki::error::RvError;
    [
        RvError::DeviceError,
        RvError::DeviceRemoved,
        RvError::TokenNotPresent,
        RvError::CryptokiNotInitialized,
    ]
    .map(super::rv::ReturnCode)
    .to_vec()
}

/// How the token returns CKA_EC_POINT.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EcPointEncoding {
    /// DER OCTET STRING around the point, as PKCS#11 specifies.
    Der,
    /// The bare point, as some tokens do.
    Raw,
    /// Either; decided per value.
    #[default]
    Auto,
}

/// How CKA_EC_PARAMS names the Ed25519 curve on key generation.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ed25519Params {
    /// OID 1.3.101.112 (RFC 8410).
    #[default]
    Oid,
    /// PrintableString "edwards25519" (PKCS#11 3.0).
    Printable,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error(
        "unknown built-in HSM profile {0:?} (built in: {names}); use hsm.profile_file for others",
        names = BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
    )]
    Unknown(String),
    #[error("cannot read HSM profile {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid HSM profile {origin}: {message}")]
    Parse { origin: String, message: String },
    #[error("none of the profile's module paths exists: {0:?}; set hsm.module")]
    NoModule(Vec<PathBuf>),
}

impl Profile {
    pub fn built_in(name: &str) -> Result<Profile, ProfileError> {
        let (_, text) = BUILT_IN
            .iter()
            .find(|(n, _)| *n == name)
            .ok_or_else(|| ProfileError::Unknown(name.to_string()))?;
        Self::parse(text, name)
    }

    pub fn from_file(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, origin: &str) -> Result<Profile, ProfileError> {
        let parse_error = |message: String| ProfileError::Parse {
            origin: origin.to_string(),
            message,
        };
        let profile: Profile = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        profile.vendor_mechanisms.check().map_err(parse_error)?;
        if profile.supports(Algorithm::Sm2) && profile.vendor_mechanisms.sm2().is_none() {
            return Err(parse_error(
                "algorithms names sm2, which needs vendor_mechanisms.sm2_key_pair_gen and \
                 sm2_sign (a signature over the e the gateway computes, so that any ID and \
                 a caller's digest work); without them leave sm2 out and SM2 keys are held \
                 wrapped"
                    .into(),
            ));
        }
        Ok(profile)
    }

    /// The configured module, or the first of the profile's paths that exists.
    pub fn module_path(&self, configured: Option<&Path>) -> Result<PathBuf, ProfileError> {
        if let Some(p) = configured {
            return Ok(p.to_path_buf());
        }
        self.module_paths
            .iter()
            .find(|p| p.exists())
            .cloned()
            .ok_or_else(|| ProfileError::NoModule(self.module_paths.clone()))
    }

    pub fn supports(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(&alg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_softhsm2_profile_parses() {
        let p = Profile::built_in("softhsm2").unwrap();
        assert_eq!(p.name, "softhsm2");
        assert!(p.supports(Algorithm::Ed25519));
        assert!(!p.supports(Algorithm::Sm2));
        assert_eq!(p.quirks.ec_point, EcPointEncoding::Der);
        assert!(matches!(
            Profile::built_in("nope"),
            Err(ProfileError::Unknown(_))
        ));
    }

    #[test]
    fn every_shipped_profile_is_built_in_parses_and_names_its_sources() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hsm-profiles");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .to_str()?
                    .strip_suffix(".toml")
                    .map(String::from)
            })
            .collect();
        files.sort();
        let mut built_in: Vec<String> = BUILT_IN.iter().map(|(n, _)| n.to_string()).collect();
        built_in.sort();
        assert_eq!(
            files, built_in,
            "hsm-profiles/ and the built-in list differ"
        );
        assert!(built_in.len() >= 8);
        for (name, text) in BUILT_IN {
            let p = Profile::built_in(name).unwrap();
            assert_eq!(&p.name, name);
            assert!(text.contains("Sources:"), "{name}: no sources named");
            assert!(!p.module_paths.is_empty(), "{name}");
            assert!(!p.algorithms.is_empty() && !p.curves.is_empty(), "{name}");
            assert!(!p.login.locks_after.is_empty(), "{name}: login semantics");
            assert!(!p.quirks.reconnect_errors.is_empty(), "{name}");
            if p.max_sessions > 0 {
                assert!(
                    p.default_pool_size < p.max_sessions,
                    "{name}: no room for the anchor"
                );
            }
        }
        let cn = Profile::built_in("cn-generic-sm2").unwrap();
        assert!(cn.supports(Algorithm::Sm2));
        assert_eq!(cn.vendor_mechanisms.sm2(), Some((0x8000_8001, 0x8000_8000)));
        let tpm = Profile::built_in("tpm2").unwrap();
        assert_eq!(tpm.algorithms, vec![Algorithm::EcdsaP256]);
        assert!(!tpm.quirks.session_objects && tpm.quirks.ec_private_decrypt_fixed);
    }

    #[test]
    fn in_token_sm2_needs_both_vendor_mechanisms_and_vendor_numbers() {
        let base = "name='x'\nmodule_paths=[]\ndefault_pool_size=1\nalgorithms=['sm2']\n";
        let err = Profile::parse(
            &format!(
                "{base}[vendor_mechanisms]\nsm2_key_pair_gen=0x80008001\nsm2_sm3_sign=0x80008100"
            ),
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("sm2_sign"), "{err}");
        let err = Profile::parse(
            &format!("{base}[vendor_mechanisms]\nsm2_key_pair_gen=0x1040\nsm2_sign=0x80008000"),
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("0x1040"), "{err}");
        let p = Profile::parse(
            &format!("{base}[vendor_mechanisms]\nsm2_key_pair_gen=0x80008001\nsm2_sign=0x80008000"),
            "t",
        )
        .unwrap();
        assert_eq!(
            p.vendor_mechanisms.role(0x8000_8000),
            Some("SM2 signature over e")
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = Profile::parse(
            "name='x'\nmodule_paths=[]\ndefault_pool_size=1\nalgorithms=[]\nbogus=1",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bogus"));
    }

    #[test]
    fn transient_codes_are_typed_so_a_typo_is_refused() {
        let p = Profile::built_in("softhsm2").unwrap();
        assert!(p
            .quirks
            .transient_errors
            .contains(&super::super::rv::ReturnCode(
                cryptoki::error::RvError::FunctionFailed
            )));
        let err = Profile::parse(
            "name='x'\nmodule_paths=[]\ndefault_pool_size=1\nalgorithms=[]\n[quirks]\ntransient_errors=['CKR_DEVICE_EROR']",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("CKR_DEVICE_EROR"), "{err}");
    }
}
