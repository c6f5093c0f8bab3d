//! Key custody: keys generated inside the PKCS#11 token and used there, never exported;
//! public keys imported for verify-only use; metadata in a local journal.

pub mod hsm;
pub mod probe;
pub mod profile;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::algorithm::Algorithm;
use crate::crypto::ecdsa::{self, EcdsaError};
use crate::crypto::pubkey::{PublicKey, PublicKeyError};
use crate::secret::SecretSource;
use crate::util::{hex0x, now_rfc3339, random_bytes};
use hsm::{Hsm, HsmError};
use profile::Profile;
use store::KeyStore;

/// `[hsm]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HsmConfig {
    /// A built-in profile name (`softhsm2`); ignored when `profile_file` is set.
    #[serde(default = "default_profile")]
    pub profile: String,
    pub profile_file: Option<PathBuf>,
    /// The PKCS#11 module; defaults to the first of the profile's paths that exists.
    pub module: Option<PathBuf>,
    pub token_label: Option<String>,
    pub token_serial: Option<String>,
    pub pin: SecretSource,
    /// Sessions in the pool; defaults to the profile's.
    pub pool_size: Option<usize>,
    /// How long a request waits for a free session before it gets 503.
    #[serde(default = "default_wait_ms")]
    pub session_wait_ms: u64,
}

fn default_profile() -> String {
    "softhsm2".into()
}

fn default_wait_ms() -> u64 {
    2000
}

impl HsmConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.token_label.is_some() == self.token_serial.is_some() {
            return Err("[hsm]: set exactly one of token_label or token_serial".into());
        }
        if self.pool_size == Some(0) {
            return Err("[hsm]: pool_size must be at least 1".into());
        }
        Ok(())
    }

    pub fn profile(&self) -> Result<Profile, profile::ProfileError> {
        match &self.profile_file {
            Some(p) => Profile::from_file(p),
            None => Profile::built_in(&self.profile),
        }
    }

    pub fn selector(&self) -> hsm::TokenSelector {
        match (&self.token_label, &self.token_serial) {
            (Some(l), _) => hsm::TokenSelector::Label(l.clone()),
            (None, Some(s)) => hsm::TokenSelector::Serial(s.clone()),
            (None, None) => unreachable!("validated: one of label or serial"),
        }
    }

    pub fn session_wait(&self) -> Duration {
        Duration::from_millis(self.session_wait_ms)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustodyKind {
    /// Private key inside the token.
    Hsm,
    /// Only the public key is held: verify-only.
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Disabled,
}

/// A key as the API shows it and the journal stores it. `id` is the hex CKA_ID.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub label: String,
    pub algorithm: Algorithm,
    pub custody: CustodyKind,
    pub public_key: String,
    pub public_key_pem: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    pub state: KeyState,
    pub created_at: String,
    pub owner: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignFormat {
    Der,
    Raw,
    Eth,
}

impl SignFormat {
    pub fn parse(s: &str) -> Option<SignFormat> {
        match s {
            "der" => Some(SignFormat::Der),
            "raw" => Some(SignFormat::Raw),
            "eth" => Some(SignFormat::Eth),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignFormat::Der => "der",
            SignFormat::Raw => "raw",
            SignFormat::Eth => "eth",
        }
    }

    pub fn default_for(alg: Algorithm) -> SignFormat {
        if alg.is_ecdsa() {
            SignFormat::Der
        } else {
            SignFormat::Raw
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("this HSM profile cannot hold {0} keys")]
    UnsupportedAlgorithm(Algorithm),
    #[error("format {format} is not available for {algorithm}")]
    UnsupportedFormat {
        algorithm: Algorithm,
        format: &'static str,
    },
    #[error("a key labelled {0:?} exists")]
    DuplicateLabel(String),
    #[error("key {0} is disabled")]
    Disabled(String),
    #[error("key {0} is verify-only (external custody)")]
    VerifyOnly(String),
    #[error("{0}")]
    PublicKey(#[from] PublicKeyError),
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    #[error("signature post-processing: {0}")]
    Signature(#[from] EcdsaError),
    #[error("key metadata store: {0}")]
    Store(#[from] std::io::Error),
}

pub struct Custody {
    hsm: Arc<Hsm>,
    store: Arc<KeyStore>,
    profile: Profile,
    /// Serialises creations so two requests cannot both take one label.
    create_lock: tokio::sync::Mutex<()>,
}

impl Custody {
    pub fn new(hsm: Arc<Hsm>, store: KeyStore, profile: Profile) -> Custody {
        let custody = Custody {
            hsm,
            store: Arc::new(store),
            profile,
            create_lock: tokio::sync::Mutex::new(()),
        };
        custody.report_key_counts();
        custody
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    pub fn get(&self, id: &str) -> Option<KeyRecord> {
        self.store.get(id)
    }

    pub fn list(&self) -> Vec<KeyRecord> {
        self.store.list()
    }

    pub async fn create(
        &self,
        owner: &str,
        label: &str,
        algorithm: Algorithm,
    ) -> Result<KeyRecord, CustodyError> {
        if !self.profile.supports(algorithm) {
            return Err(CustodyError::UnsupportedAlgorithm(algorithm));
        }
        let _guard = self.create_lock.lock().await;
        if self.store.label_taken(label) {
            return Err(CustodyError::DuplicateLabel(label.to_string()));
        }
        let id = random_bytes(16);
        let (gen_id, gen_label) = (id.clone(), label.to_string());
        let point = self
            .hsm
            .run("generate", algorithm.as_str(), false, move |hsm, s| {
                hsm.generate(s, algorithm, &gen_id, &gen_label)
            })
            .await?;
        let public = PublicKey::from_bytes(algorithm, &point)?;
        let record = KeyRecord {
            id: hex::encode(&id),
            label: label.to_string(),
            algorithm,
            custody: CustodyKind::Hsm,
            public_key: hex0x(&public.bytes),
            address: address_of(algorithm, &public.bytes),
            public_key_pem: public.pem,
            state: KeyState::Active,
            created_at: now_rfc3339(),
            owner: owner.to_string(),
        };
        if let Err(e) = self.persist(record.clone()).await {
            // Do not leave an orphan key in the token that no record points at.
            let _ = self
                .hsm
                .run("destroy", algorithm.as_str(), true, move |hsm, s| {
                    hsm.destroy(s, &id)
                })
                .await;
            return Err(e);
        }
        Ok(record)
    }

    pub async fn import(
        &self,
        owner: &str,
        label: &str,
        algorithm: Algorithm,
        pem: &str,
    ) -> Result<KeyRecord, CustodyError> {
        let public = PublicKey::from_pem(algorithm, pem)?;
        let _guard = self.create_lock.lock().await;
        if self.store.label_taken(label) {
            return Err(CustodyError::DuplicateLabel(label.to_string()));
        }
        let record = KeyRecord {
            id: hex::encode(random_bytes(16)),
            label: label.to_string(),
            algorithm,
            custody: CustodyKind::External,
            public_key: hex0x(&public.bytes),
            address: address_of(algorithm, &public.bytes),
            public_key_pem: public.pem,
            state: KeyState::Active,
            created_at: now_rfc3339(),
            owner: owner.to_string(),
        };
        self.persist(record.clone()).await?;
        Ok(record)
    }

    pub async fn disable(&self, mut record: KeyRecord) -> Result<KeyRecord, CustodyError> {
        record.state = KeyState::Disabled;
        self.persist(record.clone()).await?;
        Ok(record)
    }

    /// Destroys the token objects, then forgets the record.
    pub async fn destroy(&self, record: &KeyRecord) -> Result<(), CustodyError> {
        if record.custody == CustodyKind::Hsm {
            let id = hex::decode(&record.id).expect("ids are hex");
            self.hsm
                .run("destroy", record.algorithm.as_str(), true, move |hsm, s| {
                    hsm.destroy(s, &id)
                })
                .await?;
        }
        let store = self.store.clone();
        let id = record.id.clone();
        tokio::task::spawn_blocking(move || store.delete(&id))
            .await
            .map_err(|_| std::io::Error::other("store task failed"))??;
        self.report_key_counts();
        Ok(())
    }

    /// Signs each input: a 32-byte digest for ECDSA, the message for Ed25519 (pure).
    /// The caller has checked the input sizes.
    pub async fn sign(
        &self,
        record: &KeyRecord,
        inputs: Vec<Vec<u8>>,
        format: SignFormat,
    ) -> Result<Vec<Vec<u8>>, CustodyError> {
        check_format(record.algorithm, format)?;
        if record.custody == CustodyKind::External {
            return Err(CustodyError::VerifyOnly(record.id.clone()));
        }
        if record.state != KeyState::Active {
            return Err(CustodyError::Disabled(record.id.clone()));
        }
        let alg = record.algorithm;
        let id = hex::decode(&record.id).expect("ids are hex");
        let public = crate::util::unhex0x(&record.public_key).expect("stored hex");
        let op = if inputs.len() == 1 {
            "sign"
        } else {
            "sign_batch"
        };
        // Encoding (low-S, DER, recovery id) runs on the same blocking thread, but its
        // failures stay apart from PKCS#11 errors: they must not count as HSM faults.
        let encoded = self
            .hsm
            .run(op, alg.as_str(), true, move |hsm, s| {
                let raw = hsm.sign(s, alg, &id, &inputs)?;
                Ok(raw
                    .into_iter()
                    .zip(&inputs)
                    .map(|(sig, input)| encode_signature(alg, format, sig, input, &public))
                    .collect::<Vec<_>>())
            })
            .await?;
        Ok(encoded.into_iter().collect::<Result<_, _>>()?)
    }

    async fn persist(&self, record: KeyRecord) -> Result<(), CustodyError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.put(record))
            .await
            .map_err(|_| std::io::Error::other("store task failed"))??;
        self.report_key_counts();
        Ok(())
    }

    fn report_key_counts(&self) {
        let keys = self.store.list();
        for alg in Algorithm::ALL {
            for (custody, c) in [
                (CustodyKind::Hsm, "hsm"),
                (CustodyKind::External, "external"),
            ] {
                for (state, s) in [
                    (KeyState::Active, "active"),
                    (KeyState::Disabled, "disabled"),
                ] {
                    let n = keys
                        .iter()
                        .filter(|k| k.algorithm == alg && k.custody == custody && k.state == state)
                        .count();
                    metrics::gauge!(crate::metrics::KEYS, "algorithm" => alg.as_str(), "custody" => c, "state" => s)
                        .set(n as f64);
                }
            }
        }
    }
}

pub fn check_format(algorithm: Algorithm, format: SignFormat) -> Result<(), CustodyError> {
    let ok = match format {
        SignFormat::Der => algorithm.is_ecdsa(),
        SignFormat::Raw => true,
        SignFormat::Eth => algorithm == Algorithm::EcdsaSecp256k1,
    };
    if ok {
        Ok(())
    } else {
        Err(CustodyError::UnsupportedFormat {
            algorithm,
            format: format.as_str(),
        })
    }
}

fn address_of(algorithm: Algorithm, public: &[u8]) -> Option<String> {
    (algorithm == Algorithm::EcdsaSecp256k1)
        .then(|| ecdsa::eth_address(public).map(|a| ecdsa::eth_address_checksummed(&a)))
        .flatten()
}

/// From the token's r||s to the requested format; secp256k1 is always made low-S.
fn encode_signature(
    alg: Algorithm,
    format: SignFormat,
    sig: Vec<u8>,
    input: &[u8],
    public: &[u8],
) -> Result<Vec<u8>, EcdsaError> {
    if !alg.is_ecdsa() {
        return Ok(sig);
    }
    let mut raw: [u8; 64] = sig.try_into().map_err(|_| EcdsaError::Length(64))?;
    if alg == Algorithm::EcdsaSecp256k1 {
        ecdsa::normalize_low_s(alg, &mut raw)?;
    }
    match format {
        SignFormat::Raw => Ok(raw.to_vec()),
        SignFormat::Der => ecdsa::raw_to_der(&raw),
        SignFormat::Eth => {
            let digest: [u8; 32] = input.try_into().map_err(|_| EcdsaError::Length(32))?;
            let v = ecdsa::eth_recovery_id(&raw, &digest, public)?;
            let mut out = raw.to_vec();
            out.push(27 + v);
            Ok(out)
        }
    }
}
