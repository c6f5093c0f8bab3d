//! Key custody: keys generated inside the PKCS#11 token and used there, never exported;
//! public keys imported for verify-only use; metadata in a local journal.
//!
//! Custody owns its invariants, whoever calls it (HTTP, CLI, bench):
//! - every key operation (create, import, disable, schedule or cancel deletion, destroy,
//!   sign, sign-batch) appends its own audit line, success or failure;
//! - each operation runs in a task of its own, so a caller that goes away (a closed HTTP
//!   connection drops the handler's future) loses only the answer, never half an operation;
//! - key state is checked at the moment of signing, under a lock that state changes take
//!   exclusively: once a disable has been answered, no signature is made with the key;
//! - a key belongs to its owner; anyone else (admins aside) is told it does not exist.
//!
//! - `hsm`: the PKCS#11 session pool and the token operations;
//! - `store`: the key metadata journal;
//! - `reconcile`: records against token objects, at start and from the CLI;
//! - `probe`, `profile`: device checks and per-family data.

pub mod hsm;
pub mod id;
pub mod probe;
pub mod profile;
pub mod reconcile;
pub mod rv;
pub mod store;

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::algorithm::Algorithm;
use crate::audit::{AuditEntry, AuditError, AuditLog};
use crate::auth::Principal;
use crate::crypto::ecdsa::{self, EcdsaError};
use crate::crypto::pubkey::{PublicKey, PublicKeyError};
pub use crate::crypto::SigFormat;
use crate::secret::SecretSource;
use crate::util::{hex0x, now_rfc3339};
use cryptoki::mechanism::MechanismType;
use hsm::{Hsm, HsmError};
pub use id::KeyId;
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
    /// The algorithms this gateway must hold keys for: a profile that lacks one is named
    /// by `config check` and `hsm probe`, and the gateway does not start on it.
    #[serde(default)]
    pub algorithms: Vec<Algorithm>,
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

    /// What the config asks for that the profile cannot hold, one line each.
    pub fn gaps(&self, profile: &Profile) -> Vec<String> {
        self.algorithms
            .iter()
            .filter(|a| !profile.supports(**a))
            .map(|a| {
                format!(
                    "[hsm] algorithms asks for {a}, which HSM profile {} cannot hold (it holds: {})",
                    profile.name,
                    profile
                        .algorithms
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })
            .collect()
    }

    /// Loads the module, finds the token and opens `pool` sessions on it (blocking). The
    /// gateway runs `prepare` first (the embedded default initialises its token there);
    /// command-line tools open a pool of 1.
    pub fn open_hsm(
        &self,
        profile: &Profile,
        pool: usize,
        prepare: Option<Prepare>,
    ) -> Result<Arc<Hsm>, OpenError> {
        if profile.max_sessions > 0 && pool >= profile.max_sessions {
            return Err(OpenError::Pool {
                pool,
                profile: profile.name.clone(),
                max: profile.max_sessions,
            });
        }
        let module = profile.module_path(self.module.as_deref())?;
        let pin = self.pin.read()?;
        let pkcs11 = load_prepared(&module, prepare.as_ref())?;
        let slot = hsm::find_slot(&pkcs11, &self.selector())?;
        let connector = hsm::Connector {
            module,
            selector: self.selector(),
            pin,
        };
        Ok(Hsm::open(
            pkcs11,
            slot,
            connector,
            profile.quirks.clone(),
            profile.vendor_mechanisms.clone(),
            pool,
            self.session_wait(),
        )?)
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

/// Loads of the module that look for a token it did not list...
const LOAD_TRIES: u32 = 5;
/// ...waiting this long after the first, twice as long after each next one (about 3 s in
/// all): another process writing the token file as it loaded is over by then.
const LOAD_BACKOFF: Duration = Duration::from_millis(200);

/// The module loaded and `prepare` run on it, loaded again where `prepare` found a token
/// the module did not list (`LOAD_TRIES`).
fn load_prepared(
    module: &std::path::Path,
    prepare: Option<&Prepare>,
) -> Result<cryptoki::context::Pkcs11, HsmError> {
    let mut wait = LOAD_BACKOFF;
    let mut tries = 1;
    loop {
        let pkcs11 = hsm::load_module(module)?;
        match prepare.map_or(Ok(()), |p| p(&pkcs11)) {
            Ok(()) => return Ok(pkcs11),
            Err(HsmError::TokenNotListed(why)) if tries < LOAD_TRIES => {
                tracing::warn!("{why}; loading the module again (attempt {tries} of {LOAD_TRIES})");
                let _ = pkcs11.finalize();
                std::thread::sleep(wait);
                wait *= 2;
                tries += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `[keys]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// `DELETE /v1/keys/{id}` disables the key and destroys it this long after, unless the
    /// deletion is cancelled (as AWS KMS and Vault do). Admins may destroy at once.
    #[serde(default = "default_deletion_window")]
    pub deletion_window_seconds: u64,
    /// Whether keys of an algorithm the token lacks (SM2 on SoftHSM2 or a TPM) may be
    /// held wrapped: made by the gateway, kept only sealed under an AES key in the token.
    #[serde(default = "default_true")]
    pub wrapped_custody: bool,
}

fn default_true() -> bool {
    true
}

fn default_deletion_window() -> u64 {
    7 * 86_400
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            deletion_window_seconds: default_deletion_window(),
            wrapped_custody: true,
        }
    }
}

impl KeysConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.deletion_window_seconds == 0 {
            return Err("[keys]: deletion_window_seconds must be >= 1 (admins destroy at once with ?now=true)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustodyKind {
    /// Private key inside the token.
    Hsm,
    /// Private key made by the gateway (an algorithm the token lacks: SM2), kept only
    /// wrapped under the key's own AES-256 key in the token; unwrapped for the moment of
    /// signing.
    Wrapped,
    /// Only the public key is held: verify-only.
    External,
}

impl CustodyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CustodyKind::Hsm => "hsm",
            CustodyKind::Wrapped => "wrapped",
            CustodyKind::External => "external",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    Active,
    Disabled,
    /// Disabled, and destroyed at `destroy_after` unless cancelled.
    PendingDeletion,
}

impl KeyState {
    const ALL: [KeyState; 3] = [
        KeyState::Active,
        KeyState::Disabled,
        KeyState::PendingDeletion,
    ];

    fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Disabled => "disabled",
            KeyState::PendingDeletion => "pending_deletion",
        }
    }
}

/// A key as the API shows it and the journal stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
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
    /// When a key pending deletion will be destroyed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroy_after: Option<String>,
    /// Wrapped custody: the private key sealed under the key's AES key in the token
    /// (hex of nonce || ciphertext || tag). Journal only; the API never shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrapped: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CustodyError {
    #[error("the token cannot hold {algorithm} keys: HSM profile {profile} has {holds}")]
    UnsupportedAlgorithm {
        algorithm: Algorithm,
        profile: String,
        holds: String,
    },
    #[error("format {format} is not available for {algorithm}")]
    UnsupportedFormat {
        algorithm: Algorithm,
        format: &'static str,
    },
    #[error("a key labelled {0:?} exists")]
    DuplicateLabel(String),
    /// Wrapped custody is needed and cannot be had: switched off, or the token has no
    /// AES-GCM.
    #[error("{0}")]
    WrapUnavailable(String),
    /// No such key, or one the caller does not own: the two are told apart to nobody.
    #[error("no key with id {0:?}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("key {0} is disabled")]
    Disabled(KeyId),
    #[error("key {0} is scheduled for destruction; cancel the deletion to keep it")]
    PendingDeletion(KeyId),
    #[error("key {0} is not scheduled for destruction")]
    NotPendingDeletion(KeyId),
    #[error("key {0} is verify-only (external custody)")]
    VerifyOnly(KeyId),
    #[error("the private key object of {0} is not on the token (see `bsn-gateway hsm reconcile`)")]
    ObjectMissing(KeyId),
    #[error("{0}")]
    PublicKey(#[from] PublicKeyError),
    #[error("HSM: {0}")]
    Hsm(#[from] HsmError),
    #[error("signature post-processing: {0}")]
    Signature(#[from] EcdsaError),
    #[error("key metadata store: {0}")]
    Store(#[from] std::io::Error),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("custody is shutting down")]
    Stopped,
}

impl CustodyError {
    /// The stable code the client sees and the audit line records.
    pub fn code(&self) -> &'static str {
        match self {
            CustodyError::UnsupportedAlgorithm { .. } => "unsupported_algorithm",
            CustodyError::UnsupportedFormat { .. } => "unsupported_format",
            CustodyError::DuplicateLabel(_) => "duplicate_label",
            CustodyError::WrapUnavailable(_) => "wrapped_custody_unavailable",
            CustodyError::NotFound(_) => "key_not_found",
            CustodyError::Forbidden(_) => "forbidden",
            CustodyError::Disabled(_) => "key_disabled",
            CustodyError::PendingDeletion(_) => "key_pending_deletion",
            CustodyError::NotPendingDeletion(_) => "key_not_pending_deletion",
            CustodyError::VerifyOnly(_) => "key_verify_only",
            CustodyError::ObjectMissing(_) => "key_object_missing",
            CustodyError::PublicKey(_) => "bad_public_key",
            CustodyError::Hsm(HsmError::Busy(_)) => "hsm_busy",
            CustodyError::Hsm(HsmError::Stopped | HsmError::Unavailable(_))
            | CustodyError::Stopped => "hsm_unavailable",
            CustodyError::Hsm(
                HsmError::KeyMissing(_) | HsmError::KeyAmbiguous(_) | HsmError::Sealed,
            ) => "key_object_error",
            CustodyError::Hsm(_) => "hsm_error",
            CustodyError::Audit(_) => "audit_unavailable",
            CustodyError::Signature(_) | CustodyError::Store(_) => "internal",
        }
    }
}

/// The state changes a key's owner may make.
impl KeyRecord {
    /// A new, active record for `public`, created now.
    fn new(
        id: KeyId,
        label: &str,
        custody: CustodyKind,
        public: PublicKey,
        owner: &str,
    ) -> KeyRecord {
        KeyRecord {
            id,
            label: label.to_string(),
            algorithm: public.algorithm,
            custody,
            public_key: hex0x(&public.bytes),
            address: address_of(public.algorithm, &public.bytes),
            public_key_pem: public.pem,
            state: KeyState::Active,
            created_at: now_rfc3339(),
            owner: owner.to_string(),
            destroy_after: None,
            wrapped: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange {
    /// A disabled key cannot sign nor authorise envelopes; it still verifies.
    Disable,
    /// Disables the key and schedules its destruction after the deletion window.
    ScheduleDeletion,
    /// Keeps a key scheduled for destruction; it stays disabled (enable is not offered).
    CancelDeletion,
}

impl StateChange {
    fn audit_name(self) -> &'static str {
        match self {
            StateChange::Disable => "disable",
            StateChange::ScheduleDeletion => "schedule_destroy",
            StateChange::CancelDeletion => "cancel_destroy",
        }
    }

    /// The record after the change (the same record where it changes nothing).
    fn apply(self, mut r: KeyRecord, window_seconds: u64) -> Result<KeyRecord, CustodyError> {
        match self {
            StateChange::Disable if r.state == KeyState::Active => r.state = KeyState::Disabled,
            StateChange::ScheduleDeletion if r.state != KeyState::PendingDeletion => {
                r.state = KeyState::PendingDeletion;
                r.destroy_after = Some(rfc3339(crate::util::unix_now() + window_seconds));
            }
            StateChange::CancelDeletion if r.state != KeyState::PendingDeletion => {
                return Err(CustodyError::NotPendingDeletion(r.id))
            }
            StateChange::CancelDeletion => {
                r.state = KeyState::Disabled;
                r.destroy_after = None;
            }
            StateChange::Disable | StateChange::ScheduleDeletion => {}
        }
        Ok(r)
    }
}

/// What one audited operation touched.
struct Op {
    name: &'static str,
    key_id: Option<String>,
    subject: Option<[u8; 32]>,
    custody: Option<CustodyKind>,
    detail: Option<String>,
}

impl Op {
    fn new(name: &'static str, key_id: &str) -> Op {
        Op {
            name,
            // Ids come from URLs: keep what the log records short.
            key_id: (!key_id.is_empty()).then(|| key_id.chars().take(64).collect()),
            subject: None,
            custody: None,
            detail: None,
        }
    }
}

pub struct Custody {
    hsm: Arc<Hsm>,
    store: Arc<KeyStore>,
    profile: Profile,
    audit: AuditLog,
    config: KeysConfig,
    /// Serialises creations so two requests cannot both take one label.
    create_lock: tokio::sync::Mutex<()>,
    /// Signing holds it shared from the state check until its audit line is durable;
    /// disable, deletion and destroy hold it exclusively. So a state change is answered
    /// only after every signature begun before it, and none begins after it.
    state_lock: tokio::sync::RwLock<()>,
    /// Records whose private key object the token does not have (reconcile, or a sign
    /// that found it gone).
    missing: RwLock<HashSet<KeyId>>,
}

/// Why custody could not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Profile(#[from] profile::ProfileError),
    #[error("HSM PIN: {0}")]
    Pin(#[from] crate::secret::SecretError),
    #[error("pool_size {pool} leaves no session for the anchor: {profile} allows {max}")]
    Pool {
        pool: usize,
        profile: String,
        max: usize,
    },
    #[error(transparent)]
    Hsm(#[from] HsmError),
    #[error("key metadata journal {0}: {1}")]
    Store(PathBuf, std::io::Error),
    #[error("custody start-up task failed")]
    Task,
    #[error("{0}")]
    Gap(String),
}

/// Runs on the loaded module before the token is looked up (the embedded default
/// initialises its SoftHSM2 token here); again on a fresh load of the module after
/// `HsmError::TokenNotListed`.
pub type Prepare = Box<dyn Fn(&cryptoki::context::Pkcs11) -> Result<(), HsmError> + Send>;

impl Custody {
    /// Opens custody from its config section: the profile, the module, the token, the
    /// logged-in session pool, and the key journal in `data_dir`; then compares the
    /// records with the token's objects (`reconcile`) and starts the deletion scheduler.
    pub async fn open(
        config: &HsmConfig,
        keys: &KeysConfig,
        data_dir: &std::path::Path,
        audit: AuditLog,
        prepare: Option<Prepare>,
    ) -> Result<Arc<Custody>, OpenError> {
        let profile = config.profile()?;
        if let Some(gap) = config.gaps(&profile).into_iter().next() {
            return Err(OpenError::Gap(gap));
        }
        let pool = config.pool_size.unwrap_or(profile.default_pool_size);
        let (cfg, hsm_profile) = (config.clone(), profile.clone());
        let hsm = tokio::task::spawn_blocking(move || cfg.open_hsm(&hsm_profile, pool, prepare))
            .await
            .map_err(|_| OpenError::Task)??;
        tracing::info!(profile = %profile.name, pool_size = pool, "HSM session pool open");
        let path = data_dir.join("keys.jsonl");
        let store = KeyStore::open(&path).map_err(|e| OpenError::Store(path, e))?;
        let custody = Custody::new(hsm, store, profile, audit, keys.clone());
        // Comparing records with the token reads every object: with 10,000 keys that is
        // seconds of PKCS#11 calls, so it runs after start, not before the listener opens
        // (a key found missing answers key_object_missing from then on).
        let background = custody.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            match background
                .hsm
                .run("find", "any", true, |hsm, s| hsm.warm_handles(s))
                .await
            {
                Ok(n) => tracing::info!(
                    keys = n,
                    ms = started.elapsed().as_millis() as u64,
                    "key handles cached"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "could not cache key handles; looked up on first use")
                }
            }
            if let Err(e) = background.reconcile().await {
                tracing::error!(error = %e, "could not compare key records with the token");
            }
        });
        custody.destroy_due().await;
        custody.spawn_scheduler();
        Ok(custody)
    }

    pub fn new(
        hsm: Arc<Hsm>,
        store: KeyStore,
        profile: Profile,
        audit: AuditLog,
        config: KeysConfig,
    ) -> Arc<Custody> {
        let custody = Arc::new(Custody {
            hsm,
            store: Arc::new(store),
            profile,
            audit,
            config,
            create_lock: tokio::sync::Mutex::new(()),
            state_lock: tokio::sync::RwLock::new(()),
            missing: RwLock::new(HashSet::new()),
        });
        custody.report_key_counts();
        for alg in Algorithm::ALL
            .into_iter()
            .filter(|a| custody.profile.supports(*a))
        {
            for op in ["generate", "sign", "sign_batch", "destroy"] {
                let _ = metrics::histogram!(crate::metrics::HSM_OPERATION_SECONDS, "operation" => op, "algorithm" => alg.as_str());
            }
        }
        custody
    }

    pub fn hsm(&self) -> &Arc<Hsm> {
        &self.hsm
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The key, if `who` may see it.
    pub fn get(&self, who: &Principal, id: &str) -> Result<Arc<KeyRecord>, CustodyError> {
        id.parse::<KeyId>()
            .ok()
            .and_then(|id| self.store.get(&id))
            .filter(|r| who.owns(&r.owner))
            .ok_or_else(|| CustodyError::NotFound(id.chars().take(64).collect()))
    }

    /// The keys `who` may see, oldest first.
    pub fn list(&self, who: &Principal) -> Vec<KeyRecord> {
        let mut keys = self.store.list();
        keys.retain(|r| who.owns(&r.owner));
        keys
    }

    /// Every record (reconcile, start-up counts).
    pub fn all(&self) -> Vec<KeyRecord> {
        self.store.list()
    }

    /// Whether the token lacks this record's private key object.
    pub fn is_missing(&self, id: &KeyId) -> bool {
        self.missing
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(id)
    }

    /// Runs an operation in a task the process owns: the caller may go away, the
    /// operation (token objects, journal, audit line) still finishes.
    async fn owned<T, F, Fut>(self: &Arc<Self>, f: F) -> Result<T, CustodyError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Custody>) -> Fut,
        Fut: Future<Output = Result<T, CustodyError>> + Send + 'static,
    {
        // Every custody operation ends with an audit line: counted for the group commit
        // from now until the task ends.
        let underway = self.audit.underway();
        // Boxed where it is made: the operation's future is large (a signature's holds
        // the HSM call, the audit line and their channels), and unboxed it was copied
        // again at each hand-over into the task.
        let work = Box::pin(f(self.clone()));
        crate::owned::spawn(async move {
            let _underway = underway;
            work.await
        })
        .await
        .map_err(|_| CustodyError::Stopped)?
    }

    /// Writes the operation's audit line, then passes its result on. If the line cannot
    /// be written the caller gets `audit_unavailable` instead of the result.
    async fn audited<T>(
        &self,
        who: &Principal,
        op: Op,
        result: Result<T, CustodyError>,
    ) -> Result<T, CustodyError> {
        let entry = AuditEntry {
            client: who.name.clone(),
            operation: op.name,
            key_id: op.key_id,
            subject_sha256: op.subject.as_ref().map(|s| crate::util::hex(s)),
            result: match &result {
                Ok(_) => "ok".into(),
                Err(e) => e.code().into(),
            },
            custody: op.custody.map(CustodyKind::as_str),
            detail: op.detail,
            ..Default::default()
        };
        self.audit.append(entry).await?;
        result
    }

    /// One audit line for an operation built on custody (the CA's issuance and
    /// revocation), in the same chained log.
    pub async fn audit_event(
        self: &Arc<Self>,
        who: &Principal,
        operation: &'static str,
        detail: String,
        result: String,
    ) -> Result<(), CustodyError> {
        self.append_owned(AuditEntry {
            client: who.name.clone(),
            operation,
            result,
            detail: Some(detail),
            ..Default::default()
        })
        .await
    }

    /// One audit line, written in a task of custody's own.
    async fn append_owned(self: &Arc<Self>, entry: AuditEntry) -> Result<(), CustodyError> {
        let audit = self.audit.clone();
        self.owned(move |_| async move { Ok(audit.append(entry).await?) })
            .await
    }

    /// Records a refusal decided before custody was asked (the caller's policy lacks the
    /// operation), so the trail shows attempts as well as operations.
    pub async fn audit_refusal(
        self: &Arc<Self>,
        who: &Principal,
        operation: &'static str,
        key_id: &str,
        code: &'static str,
    ) -> Result<(), CustodyError> {
        self.append_owned(AuditEntry {
            client: who.name.clone(),
            operation,
            key_id: Op::new(operation, key_id).key_id,
            result: code.into(),
            ..Default::default()
        })
        .await
    }

    /// Generates a key pair in the token, owned by `owner` (default: the caller; only an
    /// admin may name another).
    pub async fn create(
        self: &Arc<Self>,
        who: &Principal,
        owner: Option<String>,
        label: &str,
        algorithm: Algorithm,
    ) -> Result<KeyRecord, CustodyError> {
        let (who, label) = (who.clone(), label.to_string());
        self.owned(move |c| async move {
            let mut op = Op::new("create", "");
            // SM2 on a token without it is held wrapped: say so before it is tried.
            op.custody = Some(if c.wraps(algorithm) {
                CustodyKind::Wrapped
            } else {
                CustodyKind::Hsm
            });
            let result = match c.owner_for(&who, owner, &mut op) {
                Ok(owner) => c.create_inner(&owner, &label, algorithm).await,
                Err(e) => Err(e),
            };
            op.key_id = result.as_ref().ok().map(|r| r.id.to_string());
            c.audited(&who, op, result).await
        })
        .await
    }

    fn owner_for(
        &self,
        who: &Principal,
        owner: Option<String>,
        op: &mut Op,
    ) -> Result<String, CustodyError> {
        match owner {
            Some(o) if o != who.name && !who.admin => Err(CustodyError::Forbidden(format!(
                "client {:?} may not create keys for {o:?}: only admins may",
                who.name
            ))),
            Some(o) => {
                op.detail = (o != who.name).then(|| format!("owner={o}"));
                Ok(o)
            }
            None => Ok(who.name.clone()),
        }
    }

    async fn create_inner(
        &self,
        owner: &str,
        label: &str,
        algorithm: Algorithm,
    ) -> Result<KeyRecord, CustodyError> {
        if self.wraps(algorithm) && !self.config.wrapped_custody {
            return Err(CustodyError::WrapUnavailable(format!(
                "HSM profile {} has no SM2 and [keys] wrapped_custody is off",
                self.profile.name
            )));
        }
        if !self.wraps(algorithm) && !self.profile.supports(algorithm) {
            return Err(CustodyError::UnsupportedAlgorithm {
                algorithm,
                profile: self.profile.name.clone(),
                holds: self
                    .profile
                    .algorithms
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        // A key whose creation cannot be audited must not be made at all.
        if !self.audit.is_healthy() {
            return Err(AuditError::Unavailable("an earlier write failed".into()).into());
        }
        let _guard = self.create_lock.lock().await;
        if self.store.label_taken(label) {
            return Err(CustodyError::DuplicateLabel(label.to_string()));
        }
        if self.wraps(algorithm) {
            return self.create_wrapped(owner, label).await;
        }
        let id = KeyId::random();
        let (gen_id, gen_label) = (id.as_bytes().to_vec(), label.to_string());
        let point = self
            .hsm
            .run("generate", algorithm.as_str(), false, move |hsm, s| {
                hsm.generate(s, algorithm, &gen_id, &gen_label)
            })
            .await?;
        let record = match PublicKey::from_bytes(algorithm, &point) {
            Ok(public) => KeyRecord::new(id, label, CustodyKind::Hsm, public, owner),
            Err(e) => {
                self.destroy_objects(algorithm, id.as_bytes()).await;
                return Err(e.into());
            }
        };
        if let Err(e) = self.persist(record.clone()).await {
            // Do not leave an orphan key in the token that no record points at.
            self.destroy_objects(algorithm, id.as_bytes()).await;
            return Err(e);
        }
        Ok(record)
    }

    /// Whether keys of `algorithm` are held wrapped: SM2 on a token without it.
    fn wraps(&self, algorithm: Algorithm) -> bool {
        algorithm == Algorithm::Sm2 && !self.profile.supports(algorithm)
    }

    /// An SM2 key made here and at once sealed under its own AES key in the token; only
    /// the sealed form is kept.
    /// Runs under `create_inner`'s label lock.
    async fn create_wrapped(&self, owner: &str, label: &str) -> Result<KeyRecord, CustodyError> {
        let hsm = self.hsm.clone();
        let wanted = [MechanismType::AES_KEY_GEN, MechanismType::AES_GCM];
        let offered = tokio::task::spawn_blocking(move || hsm.has_mechanisms(&wanted))
            .await
            .map_err(|_| CustodyError::Stopped)??;
        if !offered {
            return Err(CustodyError::WrapUnavailable(format!(
                "wrapped custody needs AES-256-GCM in the token (CKM_AES_KEY_GEN, CKM_AES_GCM), which HSM profile {}'s token lacks",
                self.profile.name
            )));
        }
        let id = KeyId::random();
        let (d, point) = crate::crypto::sm2::generate();
        let public = PublicKey::from_bytes(Algorithm::Sm2, &point)?;
        let mut record = KeyRecord::new(id, label, CustodyKind::Wrapped, public, owner);
        let (gen_id, gen_label, aad) =
            (id.as_bytes().to_vec(), label.to_string(), wrap_aad(&record));
        let sealed = self
            .hsm
            .run("generate", Algorithm::Sm2.as_str(), false, move |hsm, s| {
                hsm.seal_new(s, &gen_id, &gen_label, &d[..], &aad)
            })
            .await;
        let sealed = match sealed {
            Ok(sealed) => sealed,
            Err(e) => {
                self.destroy_objects(Algorithm::Sm2, id.as_bytes()).await;
                return Err(e.into());
            }
        };
        record.wrapped = Some(crate::util::hex0x(&sealed));
        if let Err(e) = self.persist(record.clone()).await {
            self.destroy_objects(Algorithm::Sm2, id.as_bytes()).await;
            return Err(e);
        }
        Ok(record)
    }

    async fn destroy_objects(&self, algorithm: Algorithm, id: &[u8]) {
        let id = id.to_vec();
        if let Err(e) = self
            .hsm
            .run("destroy", algorithm.as_str(), true, move |hsm, s| {
                hsm.destroy(s, &id)
            })
            .await
        {
            tracing::error!(error = %e, "could not remove a half-made key from the token; `hsm reconcile` will list it");
        }
    }

    /// Records a verify-only public key.
    pub async fn import(
        self: &Arc<Self>,
        who: &Principal,
        owner: Option<String>,
        label: &str,
        algorithm: Algorithm,
        pem: &str,
    ) -> Result<KeyRecord, CustodyError> {
        let (who, label, pem) = (who.clone(), label.to_string(), pem.to_string());
        self.owned(move |c| async move {
            let mut op = Op::new("import", "");
            op.custody = Some(CustodyKind::External);
            op.subject = Some(crate::util::sha256(pem.as_bytes()));
            let result = match c.owner_for(&who, owner, &mut op) {
                Ok(owner) => c.import_inner(&owner, &label, algorithm, &pem).await,
                Err(e) => Err(e),
            };
            op.key_id = result.as_ref().ok().map(|r| r.id.to_string());
            c.audited(&who, op, result).await
        })
        .await
    }

    async fn import_inner(
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
        let record = KeyRecord::new(KeyId::random(), label, CustodyKind::External, public, owner);
        self.persist(record.clone()).await?;
        Ok(record)
    }

    /// Disables, schedules or cancels deletion (see `StateChange`). Answered only once no
    /// signature begun before it is still unanswered, and no signature begins after it.
    pub async fn change(
        self: &Arc<Self>,
        who: &Principal,
        id: &str,
        change: StateChange,
    ) -> Result<KeyRecord, CustodyError> {
        let (who, id) = (who.clone(), id.to_string());
        self.owned(move |c| async move {
            let mut op = Op::new(change.audit_name(), &id);
            let _exclusive = c.state_lock.write().await;
            // Read under the lock: a destroy that won the race leaves nothing to write back.
            let result = match c.get(&who, &id) {
                Ok(r) => {
                    op.custody = Some(r.custody);
                    match change.apply(KeyRecord::clone(&r), c.config.deletion_window_seconds) {
                        Ok(new) if new.state == r.state && new.destroy_after == r.destroy_after => {
                            Ok(new)
                        }
                        Ok(new) => {
                            op.detail = new
                                .destroy_after
                                .as_ref()
                                .map(|t| format!("destroy_after={t}"));
                            c.persist(new.clone()).await.map(|_| new)
                        }
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            c.audited(&who, op, result).await
        })
        .await
    }

    /// Destroys the token objects and forgets the record, now. Admins only: everyone
    /// else schedules deletion.
    pub async fn destroy_now(
        self: &Arc<Self>,
        who: &Principal,
        id: &str,
    ) -> Result<KeyRecord, CustodyError> {
        let (who, id) = (who.clone(), id.to_string());
        self.owned(move |c| async move {
            let mut op = Op::new("destroy", &id);
            let _exclusive = c.state_lock.write().await;
            let result = match c.get(&who, &id) {
                Ok(_) if !who.admin => Err(CustodyError::Forbidden(format!(
                    "client {:?} may not destroy keys at once: DELETE schedules destruction; only admins may use now=true",
                    who.name
                ))),
                Ok(r) => {
                    op.custody = Some(r.custody);
                    c.destroy_locked(&r).await.map(|_| Arc::unwrap_or_clone(r))
                }
                Err(e) => Err(e),
            };
            c.audited(&who, op, result).await
        })
        .await
    }

    async fn destroy_locked(&self, record: &KeyRecord) -> Result<(), CustodyError> {
        if matches!(record.custody, CustodyKind::Hsm | CustodyKind::Wrapped) {
            let id = record.id.as_bytes().to_vec();
            self.hsm
                .run("destroy", record.algorithm.as_str(), true, move |hsm, s| {
                    hsm.destroy(s, &id)
                })
                .await?;
        }
        let store = self.store.clone();
        let id = record.id;
        tokio::task::spawn_blocking(move || store.delete(&id))
            .await
            .map_err(|_| std::io::Error::other("store task failed"))??;
        self.edit_missing(|m| {
            m.remove(&record.id);
        });
        self.report_key_counts();
        Ok(())
    }

    /// Destroys every key whose deletion window has passed. Returns how many.
    pub async fn destroy_due(self: &Arc<Self>) -> usize {
        let now = crate::util::unix_now();
        let due: Vec<KeyRecord> = self
            .store
            .list()
            .into_iter()
            .filter(|r| r.state == KeyState::PendingDeletion)
            .filter(|r| {
                r.destroy_after
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .is_some_and(|t| t <= now)
            })
            .collect();
        let mut n = 0;
        for r in due {
            let id = r.id;
            let result = self
                .owned(move |c| async move {
                    let system = Principal::system();
                    let mut op = Op::new("destroy", &r.id.to_string());
                    op.custody = Some(r.custody);
                    op.detail = Some("scheduled".into());
                    let _exclusive = c.state_lock.write().await;
                    // Cancelled meanwhile? Then it is no longer pending.
                    let result = match c.store.get(&r.id) {
                        Some(now) if now.state == KeyState::PendingDeletion => {
                            c.destroy_locked(&now).await
                        }
                        _ => return Ok(()),
                    };
                    c.audited(&system, op, result).await
                })
                .await;
            match result {
                Ok(()) => n += 1,
                Err(e) => {
                    tracing::error!(key = %id, error = %e, "scheduled destruction failed; will retry")
                }
            }
        }
        n
    }

    /// Runs `destroy_due` periodically for the life of the process.
    pub fn spawn_scheduler(self: &Arc<Self>) {
        let this = self.clone();
        let period = Duration::from_secs(self.config.deletion_window_seconds.clamp(1, 60));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                this.destroy_due().await;
            }
        });
    }

    /// Signs each input: a 32-byte digest for ECDSA, the message for Ed25519 (pure).
    /// The caller has checked the input sizes. `batch` names the audited operation.
    pub async fn sign(
        self: &Arc<Self>,
        who: &Principal,
        id: &str,
        inputs: Vec<Vec<u8>>,
        format: SigFormat,
        batch: bool,
    ) -> Result<Vec<Vec<u8>>, CustodyError> {
        let (who, id) = (who.clone(), id.to_string());
        self.owned(move |c| async move {
            let mut op = Op::new(if batch { "sign_batch" } else { "sign" }, &id);
            op.subject = Some(subject_of(&inputs));
            let _shared = c.state_lock.read().await;
            let result = match c.get(&who, &id) {
                // A CA's key signs only what the CA issues, through the CA: not even an
                // admin signs arbitrary data with it.
                Ok(record)
                    if record.owner.starts_with(CA_OWNER_PREFIX) && who.name != CA_PRINCIPAL =>
                {
                    Err(CustodyError::Forbidden(format!(
                        "key {} belongs to {}: it signs only through /v1/cas",
                        record.id, record.owner
                    )))
                }
                Ok(record) => {
                    op.custody = Some(record.custody);
                    c.sign_locked(&record, inputs, format, op.name).await
                }
                Err(e) => Err(e),
            };
            c.audited(&who, op, result).await
        })
        .await
    }

    async fn sign_locked(
        &self,
        record: &KeyRecord,
        inputs: Vec<Vec<u8>>,
        format: SigFormat,
        op: &'static str,
    ) -> Result<Vec<Vec<u8>>, CustodyError> {
        check_format(record.algorithm, format)?;
        match (record.custody, record.state) {
            (CustodyKind::External, _) => return Err(CustodyError::VerifyOnly(record.id)),
            (_, KeyState::Disabled) => return Err(CustodyError::Disabled(record.id)),
            (_, KeyState::PendingDeletion) => return Err(CustodyError::PendingDeletion(record.id)),
            (CustodyKind::Hsm | CustodyKind::Wrapped, KeyState::Active) => {}
        }
        if self.is_missing(&record.id) {
            return Err(CustodyError::ObjectMissing(record.id));
        }
        if record.custody == CustodyKind::Wrapped {
            return self.sign_wrapped(record, inputs, format, op).await;
        }
        let alg = record.algorithm;
        let id = record.id.as_bytes().to_vec();
        // Only Ethereum's recovery id needs the public key.
        let public = match format {
            SigFormat::Eth => crate::util::unhex0x(&record.public_key)
                .map_err(|_| CustodyError::ObjectMissing(record.id))?,
            _ => Vec::new(),
        };
        // Encoding (low-S, DER, recovery id) runs on the same blocking thread, but its
        // failures stay apart from PKCS#11 errors: they must not count as HSM faults.
        let encoded = self
            .hsm
            .run_sign(op, alg.as_str(), move |hsm, s| {
                let raw = hsm.sign(s, alg, &id, &inputs)?;
                Ok(raw
                    .into_iter()
                    .zip(&inputs)
                    .map(|(sig, input)| encode_signature(alg, format, sig, input, &public))
                    .collect::<Vec<_>>())
            })
            .await;
        self.settle(record, encoded)
    }

    /// Signs with a wrapped key: its AES key in the token opens it into locked memory on
    /// the HSM worker thread, each e is signed by the constant-time SM2 core, and the
    /// private key is zeroised before the session goes back to the pool.
    async fn sign_wrapped(
        &self,
        record: &KeyRecord,
        inputs: Vec<Vec<u8>>,
        format: SigFormat,
        op: &'static str,
    ) -> Result<Vec<Vec<u8>>, CustodyError> {
        let sealed = record
            .wrapped
            .as_deref()
            .and_then(|w| crate::util::unhex0x(w).ok())
            .ok_or(CustodyError::ObjectMissing(record.id))?;
        let (id, aad) = (record.id.as_bytes().to_vec(), wrap_aad(record));
        let signed = self
            .hsm
            .run_sign(op, record.algorithm.as_str(), move |hsm, s| {
                let key = hsm.unseal(s, &id, &sealed, &aad)?;
                let locked = region::lock(key.as_ptr(), key.len()).ok();
                let d: &[u8; 32] = key[..].try_into().map_err(|_| HsmError::Sealed)?;
                let mut sigs = Vec::with_capacity(inputs.len());
                for e in &inputs {
                    let e: &[u8; 32] = match e[..].try_into() {
                        Ok(e) => e,
                        Err(_) => {
                            sigs.push(Err(EcdsaError::Length(32)));
                            continue;
                        }
                    };
                    // A key that opens but is no valid scalar was sealed wrong: as altered.
                    let raw = crate::crypto::sm2::sign(d, e).map_err(|_| HsmError::Sealed)?;
                    sigs.push(match format {
                        SigFormat::Der => ecdsa::raw_to_der(&raw),
                        _ => Ok(raw.to_vec()),
                    });
                }
                // Zeroised while still locked, then unlocked.
                drop(key);
                drop(locked);
                Ok(sigs)
            })
            .await;
        self.settle(record, signed)
    }

    /// Signatures as custody answers them: a private key gone from the token marks the
    /// record missing; encoding failures are the gateway's, not the HSM's.
    fn settle(
        &self,
        record: &KeyRecord,
        signed: Result<Vec<Result<Vec<u8>, EcdsaError>>, HsmError>,
    ) -> Result<Vec<Vec<u8>>, CustodyError> {
        match signed {
            Err(HsmError::KeyMissing(_)) => {
                self.edit_missing(|m| {
                    m.insert(record.id);
                });
                Err(CustodyError::ObjectMissing(record.id))
            }
            Err(e) => Err(e.into()),
            Ok(sigs) => Ok(sigs.into_iter().collect::<Result<_, _>>()?),
        }
    }

    /// Compares records with the token's objects: marks records whose key is gone, counts
    /// orphan objects (listed by `bsn-gateway hsm reconcile`).
    pub async fn reconcile(self: &Arc<Self>) -> Result<reconcile::Report, CustodyError> {
        let objects = self
            .hsm
            .run("find", "any", true, |hsm, s| hsm.object_ids(s))
            .await?;
        let report = reconcile::compare(
            &self.store.list(),
            &objects,
            &[crate::audit::anchor::KEY_ID],
        );
        self.edit_missing(|m| m.extend(report.missing.iter().copied()));
        metrics::gauge!(crate::metrics::HSM_ORPHAN_OBJECTS).set(report.orphan_objects() as f64);
        if !report.missing.is_empty() {
            tracing::warn!(keys = ?report.missing, "key records whose private key is not on the token; they cannot sign");
        }
        if !report.orphans.is_empty() {
            tracing::warn!(
                ids = report.orphans.len(),
                objects = report.orphan_objects(),
                "token objects no key record points at; see `bsn-gateway hsm reconcile`"
            );
        }
        Ok(report)
    }

    /// Changes the set of records whose private key is not on the token (they answer
    /// `key_object_missing` instead of a 5xx), and keeps its gauge true.
    fn edit_missing(&self, f: impl FnOnce(&mut HashSet<KeyId>)) {
        let mut missing = self.missing.write().unwrap_or_else(|e| e.into_inner());
        f(&mut missing);
        metrics::gauge!(crate::metrics::KEYS_MISSING_OBJECTS).set(missing.len() as f64);
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
        let mut counts = std::collections::HashMap::new();
        for k in self.store.list() {
            *counts
                .entry((k.algorithm, k.custody, k.state))
                .or_insert(0usize) += 1;
        }
        for alg in Algorithm::ALL {
            for custody in [
                CustodyKind::Hsm,
                CustodyKind::Wrapped,
                CustodyKind::External,
            ] {
                for state in KeyState::ALL {
                    let n = counts.get(&(alg, custody, state)).copied().unwrap_or(0);
                    metrics::gauge!(crate::metrics::KEYS, "algorithm" => alg.as_str(), "custody" => custody.as_str(), "state" => state.as_str())
                        .set(n as f64);
                }
            }
        }
    }
}

/// What the audit line says was signed: the input's SHA-256, or for a batch the SHA-256
/// of the items' hashes in order.
fn subject_of(inputs: &[Vec<u8>]) -> [u8; 32] {
    if let [one] = inputs {
        return crate::util::sha256(one);
    }
    let mut all = Vec::with_capacity(inputs.len() * 32);
    inputs
        .iter()
        .for_each(|i| all.extend(crate::util::sha256(i)));
    crate::util::sha256(&all)
}

fn rfc3339(unix: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

fn parse_rfc3339(s: &str) -> Option<u64> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp().max(0) as u64)
}

/// Owners of CA keys are `ca:<name>`; the CA service acts as this principal. Neither can be
/// a client's name (a colon is not allowed there).
pub const CA_OWNER_PREFIX: &str = "ca:";
pub const CA_PRINCIPAL: &str = "ca:";

/// What a wrapped key is bound to: its id and algorithm, so a sealed key moved to
/// another record does not open.
fn wrap_aad(record: &KeyRecord) -> Vec<u8> {
    let mut aad = b"bsn-gateway wrapped key v1 ".to_vec();
    aad.extend_from_slice(record.id.as_bytes());
    aad.extend_from_slice(record.algorithm.as_str().as_bytes());
    aad
}

pub fn check_format(algorithm: Algorithm, format: SigFormat) -> Result<(), CustodyError> {
    let ok = match format {
        SigFormat::Der => algorithm.is_ecdsa() || algorithm == Algorithm::Sm2,
        SigFormat::Raw => true,
        SigFormat::Eth => algorithm == Algorithm::EcdsaSecp256k1,
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
    format: SigFormat,
    sig: Vec<u8>,
    input: &[u8],
    public: &[u8],
) -> Result<Vec<u8>, EcdsaError> {
    // EdDSA's signature is final; SM2's r||s is encoded as ECDSA's (GM/T 0009), without
    // ECDSA's low-S rule.
    if alg == Algorithm::Ed25519 {
        return Ok(sig);
    }
    let mut raw: [u8; 64] = sig.try_into().map_err(|_| EcdsaError::Length(64))?;
    if alg == Algorithm::EcdsaSecp256k1 {
        ecdsa::normalize_low_s(alg, &mut raw)?;
    }
    match format {
        SigFormat::Raw => Ok(raw.to_vec()),
        SigFormat::Der => ecdsa::raw_to_der(&raw),
        SigFormat::Eth => {
            let digest: [u8; 32] = input.try_into().map_err(|_| EcdsaError::Length(32))?;
            let v = ecdsa::eth_recovery_id(&raw, &digest, public)?;
            let mut out = raw.to_vec();
            out.push(27 + v);
            Ok(out)
        }
    }
}
