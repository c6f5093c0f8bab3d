//! The network's certificate hierarchy: CAs whose keys are custody keys (made in the HSM,
//! or wrapped for SM2 where the token has none), certificates issued from CSRs, and
//! revocation with a CRL signed by the CA. Every certificate and CRL is signed through
//! custody; the register of CAs, issued certificates and revocations is an fsynced
//! journal (`ca.jsonl`), read back at start. Each operation runs in a task of its own, so
//! a client that goes away loses only the answer.

pub mod x509;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::algorithm::Algorithm;
use crate::auth::Principal;
use crate::crypto::SigFormat;
use crate::custody::{Custody, CustodyError};
use x509::{Issuer, Kind, Revoked, X509Error};

/// The principal CA keys belong to and sign as: issuing is authorised by the caller's
/// `ca:*` operations, not by owning the CA's key.
fn ca_principal() -> Principal {
    Principal {
        name: crate::custody::CA_PRINCIPAL.into(),
        admin: true,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CaRecord {
    pub name: String,
    pub algorithm: Algorithm,
    pub key_id: String,
    pub subject: String,
    pub parent: Option<String>,
    pub path_len: Option<u8>,
    pub not_after: u64,
    pub certificate_pem: String,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IssuedRecord {
    pub ca: String,
    pub serial: String,
    pub subject: String,
    pub profile: String,
    pub not_after: u64,
    pub certificate_pem: String,
    pub issued_at: String,
    #[serde(default)]
    pub revoked: Option<Revocation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revocation {
    pub reason: String,
    pub at: u64,
}

/// One journal line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Entry {
    Ca(CaRecord),
    Issued(IssuedRecord),
    Revoked {
        ca: String,
        serial: String,
        reason: String,
        at: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{0}")]
    Invalid(String),
    #[error("no CA named {0:?}")]
    UnknownCa(String),
    #[error("no certificate {1} issued by {0:?}")]
    UnknownCertificate(String, String),
    #[error("a CA named {0:?} exists")]
    Exists(String),
    #[error("certificate {0} is already revoked")]
    AlreadyRevoked(String),
    #[error("CSR: {0}")]
    Csr(String),
    #[error(transparent)]
    X509(#[from] X509Error),
    #[error(transparent)]
    Custody(#[from] CustodyError),
    #[error("CA register {path}: {source}")]
    Store {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA task stopped")]
    Stopped,
}

impl CaError {
    pub fn code(&self) -> &'static str {
        match self {
            CaError::Invalid(_) | CaError::X509(_) => "invalid_request",
            CaError::UnknownCa(_) => "ca_not_found",
            CaError::UnknownCertificate(..) => "certificate_not_found",
            CaError::Exists(_) => "ca_exists",
            CaError::AlreadyRevoked(_) => "already_revoked",
            CaError::Csr(_) => "bad_csr",
            CaError::Custody(e) => e.code(),
            CaError::Store { .. } | CaError::Stopped => "internal",
        }
    }
}

#[derive(Default)]
struct State {
    cas: BTreeMap<String, CaRecord>,
    /// (ca, serial) -> record.
    issued: BTreeMap<(String, String), IssuedRecord>,
    /// ca -> (CRL PEM, next update).
    crls: BTreeMap<String, (String, u64)>,
}

pub struct Cas {
    custody: Arc<Custody>,
    path: PathBuf,
    state: Mutex<State>,
    /// One CA operation at a time: names, serials and the journal stay in order.
    op_lock: tokio::sync::Mutex<()>,
}

/// How long a CRL is valid; it is made again on each revocation and when half of this has
/// passed.
const CRL_LIFETIME: Duration = Duration::from_secs(7 * 86_400);

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

/// A CA name: what a key label may be, short enough for the `ca-` prefix.
fn check_name(name: &str) -> Result<(), CaError> {
    let ok = (1..=60).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(CaError::Invalid(
            "name: 1 to 60 of A-Z a-z 0-9 . _ -".into(),
        ))
    }
}

pub struct NewCa {
    pub name: String,
    pub algorithm: Algorithm,
    pub subject: String,
    pub parent: Option<String>,
    pub validity_days: u32,
    pub path_len: Option<u8>,
}

pub struct NewCertificate {
    pub csr_pem: String,
    pub profile: String,
    pub validity_days: u32,
    pub san: Vec<String>,
}

impl Cas {
    pub fn open(custody: Arc<Custody>, data_dir: &Path) -> Result<Arc<Cas>, CaError> {
        let path = data_dir.join("ca.jsonl");
        let mut state = State::default();
        let store = |source| CaError::Store {
            path: path.clone(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                for (i, line) in lines.iter().enumerate() {
                    match serde_json::from_str::<Entry>(line) {
                        Ok(entry) => apply(&mut state, entry),
                        // A last line cut off by a crash mid-write was never acknowledged:
                        // it is dropped.
                        Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => {
                            tracing::warn!(path = %path.display(), "CA register ends in a torn line; ignoring it");
                        }
                        Err(e) => {
                            return Err(store(std::io::Error::new(
                                std::io::ErrorKind::InvalidData,
                                e,
                            )))
                        }
                    }
                }
                if !text.is_empty() && !text.ends_with('\n') {
                    // The next entry must start a line of its own: a whole last entry gets
                    // its newline, a torn one is cut off.
                    let whole = lines
                        .last()
                        .is_some_and(|l| serde_json::from_str::<Entry>(l).is_ok());
                    let keep = text.rfind('\n').map_or(0, |i| i + 1);
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| {
                            if whole {
                                f.write_all(b"\n")?;
                            } else {
                                f.set_len(keep as u64)?;
                            }
                            f.sync_all()
                        })
                        .map_err(store)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(store(e)),
        }
        Ok(Arc::new(Cas {
            custody,
            path,
            state: Mutex::new(state),
            op_lock: tokio::sync::Mutex::new(()),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn list(&self) -> Vec<CaRecord> {
        self.lock().cas.values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<CaRecord, CaError> {
        self.lock()
            .cas
            .get(name)
            .cloned()
            .ok_or_else(|| CaError::UnknownCa(name.chars().take(64).collect()))
    }

    /// Whether one of these CAs, the one whose certificate is `issuer_der`, revoked the
    /// certificate with this serial (big-endian bytes).
    pub fn revoked(&self, issuer_der: &[u8], serial: &[u8]) -> bool {
        let state = self.lock();
        let serial = hex::encode(serial);
        // The register is looked up first: a CA's certificate is parsed only for a serial
        // it revoked, not for every envelope.
        state.cas.values().any(|ca| {
            state
                .issued
                .get(&(ca.name.clone(), serial.clone()))
                .is_some_and(|r| r.revoked.is_some())
                && openssl::x509::X509::from_pem(ca.certificate_pem.as_bytes())
                    .and_then(|c| c.to_der())
                    .is_ok_and(|d| d == issuer_der)
        })
    }

    /// The CA's certificate and its issuers' up to the root, PEM, the CA's first.
    pub fn chain(&self, name: &str) -> Result<String, CaError> {
        let state = self.lock();
        let mut out = String::new();
        let mut next = Some(name.to_string());
        while let Some(n) = next {
            let ca = state
                .cas
                .get(&n)
                .ok_or_else(|| CaError::UnknownCa(n.clone()))?;
            out.push_str(&ca.certificate_pem);
            next = ca.parent.clone();
        }
        Ok(out)
    }

    /// Appends, fsyncs, then applies: what a client hears of was written first.
    async fn record(&self, entry: Entry) -> Result<(), CaError> {
        let line = serde_json::to_string(&entry).expect("entries serialise") + "\n";
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|_| CaError::Stopped)?
        .map_err(|source| CaError::Store {
            path: self.path.clone(),
            source,
        })?;
        apply(&mut self.lock(), entry);
        Ok(())
    }

    /// Signs `tbs` with the CA's key, as its algorithm signs certificates: ECDSA over
    /// SHA-256, SM2 over SM3(Z || tbs) with the default ID. DER.
    async fn sign(&self, ca: &CaRecord, tbs: &[u8]) -> Result<Vec<u8>, CaError> {
        let input = match ca.algorithm {
            Algorithm::Sm2 => {
                let record = self.custody.get(&ca_principal(), &ca.key_id)?;
                let point = crate::util::unhex0x(&record.public_key)
                    .map_err(|_| CaError::Invalid("CA key".into()))?;
                crate::verify::keys::sm2_e(&crate::verify::keys::sm2_z(&point), tbs).to_vec()
            }
            _ => crate::util::sha256(tbs).to_vec(),
        };
        let mut sigs = self
            .custody
            .sign(
                &ca_principal(),
                &ca.key_id,
                vec![input],
                SigFormat::Der,
                false,
            )
            .await?;
        sigs.pop().ok_or(CaError::Stopped)
    }

    async fn audit(&self, who: &Principal, op: &'static str, detail: String, result: &str) {
        if let Err(e) = self
            .custody
            .audit_event(who, op, detail, result.to_string())
            .await
        {
            tracing::error!(error = %e, op, "CA audit line not written");
        }
    }

    pub async fn create(
        self: &Arc<Self>,
        who: &Principal,
        new: NewCa,
    ) -> Result<CaRecord, CaError> {
        let (this, who) = (self.clone(), who.clone());
        crate::owned::spawn(async move {
            let detail = format!("ca={}", new.name);
            let result = this.create_inner(new).await;
            let code = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
            this.audit(&who, "ca_create", detail, code).await;
            result
        })
        .await
        .map_err(|_| CaError::Stopped)?
    }

    async fn create_inner(&self, new: NewCa) -> Result<CaRecord, CaError> {
        check_name(&new.name)?;
        if !matches!(new.algorithm, Algorithm::EcdsaP256 | Algorithm::Sm2) {
            return Err(CaError::Invalid(format!(
                "algorithm {}: a CA is ecdsa-p256 or sm2",
                new.algorithm
            )));
        }
        if !(1..=36_500).contains(&new.validity_days) {
            return Err(CaError::Invalid("validity_days: 1 to 36500".into()));
        }
        let subject = x509::parse_name(&new.subject)?;
        let _one = self.op_lock.lock().await;
        if self.lock().cas.contains_key(&new.name) {
            return Err(CaError::Exists(new.name));
        }
        let parent = match &new.parent {
            None => None,
            Some(p) => {
                let parent = self.get(p)?;
                if parent.path_len == Some(0) {
                    return Err(CaError::Invalid(format!(
                        "parent {p:?} has path_len 0: it may not issue CAs"
                    )));
                }
                Some(parent)
            }
        };
        let mut not_after = now_secs() + u64::from(new.validity_days) * 86_400;
        if let Some(p) = &parent {
            not_after = not_after.min(p.not_after);
            if let (Some(pl), Some(l)) = (p.path_len, new.path_len) {
                if l >= pl {
                    return Err(CaError::Invalid(format!(
                        "path_len {l} must be below the parent's {pl}"
                    )));
                }
            }
        }
        let key = self
            .custody
            .create(
                &ca_principal(),
                Some(format!("{}{}", crate::custody::CA_OWNER_PREFIX, new.name)),
                &format!("ca-{}", new.name),
                new.algorithm,
            )
            .await?;
        let spki = x509::spki_from_pem(&key.public_key_pem)?;
        let (serial, _) = x509::new_serial();
        let pem = match &parent {
            None => {
                let issuer = Issuer::new(&key.public_key_pem, new.algorithm)?;
                let unsigned =
                    x509::prepare(Kind::Root, serial, at(not_after), subject, spki, &issuer)?;
                let own = CaRecord {
                    name: new.name.clone(),
                    algorithm: new.algorithm,
                    key_id: key.id.to_string(),
                    subject: new.subject.clone(),
                    parent: None,
                    path_len: new.path_len,
                    not_after,
                    certificate_pem: String::new(),
                    created_at: crate::util::now_rfc3339(),
                };
                let sig = self.sign(&own, &unsigned.tbs).await?;
                unsigned.assemble(&sig)?
            }
            Some(p) => {
                let issuer_key = self.custody.get(&ca_principal(), &p.key_id)?;
                let issuer = Issuer::new(&issuer_key.public_key_pem, p.algorithm)?;
                let issuer_name = x509::subject_of(&p.certificate_pem)?;
                let unsigned = x509::prepare(
                    Kind::SubCa {
                        issuer: &issuer_name,
                        path_len: new.path_len,
                    },
                    serial,
                    at(not_after),
                    subject,
                    spki,
                    &issuer,
                )?;
                let sig = self.sign(p, &unsigned.tbs).await?;
                unsigned.assemble(&sig)?
            }
        };
        let record = CaRecord {
            name: new.name,
            algorithm: new.algorithm,
            key_id: key.id.to_string(),
            subject: new.subject,
            parent: new.parent,
            path_len: new.path_len,
            not_after,
            certificate_pem: pem,
            created_at: crate::util::now_rfc3339(),
        };
        self.record(Entry::Ca(record.clone())).await?;
        Ok(record)
    }

    pub async fn issue(
        self: &Arc<Self>,
        who: &Principal,
        ca: &str,
        new: NewCertificate,
    ) -> Result<IssuedRecord, CaError> {
        let (this, who, ca) = (self.clone(), who.clone(), ca.to_string());
        crate::owned::spawn(async move {
            let result = this.issue_inner(&ca, new).await;
            let detail = match &result {
                Ok(r) => format!("ca={} serial={} profile={}", r.ca, r.serial, r.profile),
                Err(_) => format!("ca={}", ca.chars().take(64).collect::<String>()),
            };
            let code = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
            this.audit(&who, "ca_issue", detail, code).await;
            result
        })
        .await
        .map_err(|_| CaError::Stopped)?
    }

    async fn issue_inner(&self, name: &str, new: NewCertificate) -> Result<IssuedRecord, CaError> {
        let ca = self.get(name)?;
        let (server, client) = match new.profile.as_str() {
            "node" => (true, true),
            "user" | "tls-client" => (false, true),
            "tls-server" => (true, false),
            other => {
                return Err(CaError::Invalid(format!(
                    "profile {:?}: node, user, tls-server or tls-client",
                    other.chars().take(32).collect::<String>()
                )))
            }
        };
        if !(1..=3650).contains(&new.validity_days) {
            return Err(CaError::Invalid("validity_days: 1 to 3650".into()));
        }
        let (subject, spki) = check_csr(&new.csr_pem)?;
        let not_after = (now_secs() + u64::from(new.validity_days) * 86_400).min(ca.not_after);
        let issuer_key = self.custody.get(&ca_principal(), &ca.key_id)?;
        let issuer = Issuer::new(&issuer_key.public_key_pem, ca.algorithm)?;
        let issuer_name = x509::subject_of(&ca.certificate_pem)?;
        let _one = self.op_lock.lock().await;
        let (serial, serial_hex) = x509::new_serial();
        let unsigned = x509::prepare(
            Kind::Leaf {
                issuer: &issuer_name,
                server,
                client,
                san: &new.san,
            },
            serial,
            at(not_after),
            subject.clone(),
            spki,
            &issuer,
        )?;
        let sig = self.sign(&ca, &unsigned.tbs).await?;
        let pem = unsigned.assemble(&sig)?;
        let record = IssuedRecord {
            ca: ca.name.clone(),
            serial: serial_hex,
            subject: subject.to_string(),
            profile: new.profile,
            not_after,
            certificate_pem: pem,
            issued_at: crate::util::now_rfc3339(),
            revoked: None,
        };
        self.record(Entry::Issued(record.clone())).await?;
        Ok(record)
    }

    pub async fn revoke(
        self: &Arc<Self>,
        who: &Principal,
        ca: &str,
        serial: &str,
        reason: String,
    ) -> Result<IssuedRecord, CaError> {
        let (this, who) = (self.clone(), who.clone());
        let (ca, serial) = (ca.to_string(), serial.to_ascii_lowercase());
        crate::owned::spawn(async move {
            let detail = format!(
                "ca={} serial={}",
                ca.chars().take(64).collect::<String>(),
                serial.chars().take(64).collect::<String>()
            );
            let result = this.revoke_inner(&ca, &serial, reason).await;
            let code = result.as_ref().map_or_else(|e| e.code(), |_| "ok");
            this.audit(&who, "ca_revoke", detail, code).await;
            result
        })
        .await
        .map_err(|_| CaError::Stopped)?
    }

    async fn revoke_inner(
        &self,
        ca: &str,
        serial: &str,
        reason: String,
    ) -> Result<IssuedRecord, CaError> {
        const REASONS: [&str; 6] = [
            "unspecified",
            "key_compromise",
            "ca_compromise",
            "affiliation_changed",
            "superseded",
            "cessation_of_operation",
        ];
        if !REASONS.contains(&reason.as_str()) {
            return Err(CaError::Invalid(format!(
                "reason: one of {}",
                REASONS.join(", ")
            )));
        }
        let _one = self.op_lock.lock().await;
        let key = (ca.to_string(), serial.to_string());
        let existing = self.lock().issued.get(&key).cloned();
        let Some(issued) = existing else {
            self.get(ca)?;
            return Err(CaError::UnknownCertificate(
                ca.chars().take(64).collect(),
                serial.chars().take(64).collect(),
            ));
        };
        if issued.revoked.is_some() {
            return Err(CaError::AlreadyRevoked(issued.serial));
        }
        self.record(Entry::Revoked {
            ca: ca.to_string(),
            serial: serial.to_string(),
            reason,
            at: now_secs(),
        })
        .await?;
        // The CRL is made again now, not at the next fetch.
        self.lock().crls.remove(ca);
        self.crl_locked(ca).await?;
        Ok(self
            .lock()
            .issued
            .get(&key)
            .cloned()
            .expect("just recorded"))
    }

    /// The CA's CRL (PEM): the one made last, or a new one when there is none or half its
    /// lifetime has passed.
    pub async fn crl(self: &Arc<Self>, ca: &str) -> Result<String, CaError> {
        let this = self.clone();
        let ca = ca.to_string();
        crate::owned::spawn(async move {
            this.get(&ca)?;
            let _one = this.op_lock.lock().await;
            this.crl_locked(&ca).await
        })
        .await
        .map_err(|_| CaError::Stopped)?
    }

    async fn crl_locked(&self, name: &str) -> Result<String, CaError> {
        let half = CRL_LIFETIME.as_secs() / 2;
        if let Some((pem, next)) = self.lock().crls.get(name) {
            if now_secs() + half < *next {
                return Ok(pem.clone());
            }
        }
        let ca = self.get(name)?;
        let revoked: Vec<Revoked> = self
            .lock()
            .issued
            .values()
            .filter(|r| r.ca == name)
            .filter_map(|r| {
                r.revoked.as_ref().map(|v| Revoked {
                    serial: r.serial.clone(),
                    at: at(v.at),
                })
            })
            .collect();
        let next = now_secs() + CRL_LIFETIME.as_secs();
        let alg = x509::signature_algorithm(ca.algorithm)
            .ok_or_else(|| CaError::Invalid("CA algorithm".into()))?;
        let issuer = x509::subject_of(&ca.certificate_pem)?;
        let unsigned = x509::prepare_crl(&issuer, &alg, &revoked, at(next))?;
        let sig = self.sign(&ca, &unsigned.der).await?;
        let pem = unsigned.assemble(&sig)?;
        self.lock()
            .crls
            .insert(name.to_string(), (pem.clone(), next));
        Ok(pem)
    }
}

fn apply(state: &mut State, entry: Entry) {
    match entry {
        Entry::Ca(r) => {
            state.cas.insert(r.name.clone(), r);
        }
        Entry::Issued(r) => {
            state.issued.insert((r.ca.clone(), r.serial.clone()), r);
        }
        Entry::Revoked {
            ca,
            serial,
            reason,
            at,
        } => {
            if let Some(r) = state.issued.get_mut(&(ca, serial)) {
                r.revoked = Some(Revocation { reason, at });
            }
        }
    }
}

/// The CSR's subject and public key, once its own signature checks out (OpenSSL: SM2
/// CSRs with the default ID).
fn check_csr(
    pem: &str,
) -> Result<
    (
        x509_cert::name::Name,
        x509_cert::spki::SubjectPublicKeyInfoOwned,
    ),
    CaError,
> {
    use x509_cert::der::Decode;
    let req = openssl::x509::X509Req::from_pem(pem.as_bytes())
        .map_err(|_| CaError::Csr("not a PEM certificate request".into()))?;
    let der = req.to_der().map_err(|e| CaError::Csr(e.to_string()))?;
    let parsed =
        x509_cert::request::CertReq::from_der(&der).map_err(|e| CaError::Csr(e.to_string()))?;
    let signed_by_itself = if parsed.algorithm.oid == x509::SM2_SM3 {
        sm2_csr_verifies(&parsed)
    } else {
        req.public_key()
            .and_then(|key| req.verify(&key))
            .unwrap_or(false)
    };
    if !signed_by_itself {
        return Err(CaError::Csr("its signature does not verify".into()));
    }
    let spki = parsed.info.public_key;
    // Only keys the network's CAs sign for: EC keys on P-256, secp256k1 or SM2, and
    // Ed25519, told by the key's algorithm identifier.
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.decode_as::<x509_cert::der::oid::ObjectIdentifier>().ok())
        .map(|o| o.to_string());
    let ok = match spki.algorithm.oid.to_string().as_str() {
        "1.2.840.10045.2.1" => matches!(
            curve.as_deref(),
            Some("1.2.840.10045.3.1.7" | "1.3.132.0.10" | "1.2.156.10197.1.301")
        ),
        "1.3.101.112" => true,
        _ => false,
    };
    if !ok {
        return Err(CaError::Csr(
            "the key is not an EC (P-256, secp256k1, SM2) or Ed25519 key".into(),
        ));
    }
    if parsed.info.subject.0.is_empty() {
        return Err(CaError::Csr("empty subject".into()));
    }
    Ok((parsed.info.subject, spki))
}

/// An SM2 CSR's own signature (either ID: `verify::keys::sm2_signed`).
fn sm2_csr_verifies(req: &x509_cert::request::CertReq) -> bool {
    use x509_cert::der::Encode;
    let (Ok(info), Some(point), Some(sig)) = (
        req.info.to_der(),
        req.info.public_key.subject_public_key.as_bytes(),
        req.signature.as_bytes(),
    ) else {
        return false;
    };
    crate::verify::keys::sm2_signed(point, &info, sig)
}
