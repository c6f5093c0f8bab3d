//! Framework-neutral signed payloads for `http` ledgers. The signer is a custody key (an
//! imported verify-only key too) or an X.509 certificate that must chain, through
//! OpenSSL's X509 store, to the ledger's trust anchors and be valid now.

use std::path::Path;

use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{X509StoreContext, X509};
use serde::{Deserialize, Serialize};

use crate::algorithm::Algorithm;
use crate::bounds;
use crate::verify::{Hash, Item, KeyInput, Message, Reason, SigFormat};

/// An envelope as the client sends it and as it is forwarded.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    #[serde(deserialize_with = "bounds::text::<{ bounds::ALGORITHM }, _>")]
    pub algorithm: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounds::opt::<{ bounds::KEY_ID }, _>"
    )]
    pub key_id: Option<String>,
    /// The signer's certificate, optionally followed by intermediates (PEM).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounds::opt::<{ bounds::CERTIFICATE_PEM }, _>"
    )]
    pub certificate_pem: Option<String>,
    #[serde(deserialize_with = "bounds::text::<{ bounds::BASE64_DATA }, _>")]
    pub payload_b64: String,
    /// Hex: DER for ECDSA and SM2 unless `format` says `raw`; 64 bytes for Ed25519.
    #[serde(deserialize_with = "bounds::text::<{ bounds::SIGNATURE }, _>")]
    pub signature: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "bounds::opt::<{ bounds::WORD }, _>"
    )]
    pub format: Option<String>,
}

/// Why an envelope was refused before its signature was checked.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("{0}")]
    Invalid(String),
    /// The custody key named by `key_id` cannot be used (unknown, other algorithm).
    #[error("key_id: {}", .0.as_str())]
    Key(Reason),
    /// The custody key is disabled or scheduled for deletion.
    #[error("key {0} is not active: a disabled key authorises nothing")]
    KeyNotActive(String),
    #[error("certificate: {0}")]
    BadCertificate(String),
    #[error("the certificate does not chain to this ledger's trust anchors: {0}")]
    Untrusted(String),
    #[error("this ledger has no trust anchors: use key_id")]
    NoTrustAnchors,
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::Invalid(_) => "invalid_item",
            EnvelopeError::Key(r) => r.as_str(),
            EnvelopeError::KeyNotActive(_) => "key_disabled",
            EnvelopeError::BadCertificate(_) => "bad_certificate",
            EnvelopeError::Untrusted(_) | EnvelopeError::NoTrustAnchors => "untrusted_certificate",
        }
    }
}

/// A ledger's trust anchors: roots are trusted, intermediates only help build chains.
pub struct TrustAnchors {
    store: X509Store,
    intermediates: Vec<X509>,
}

impl TrustAnchors {
    pub fn load(roots: &Path, intermediates: Option<&Path>) -> Result<TrustAnchors, String> {
        let read = |p: &Path| -> Result<Vec<X509>, String> {
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let certs = X509::stack_from_pem(&pem).map_err(|e| format!("{}: {e}", p.display()))?;
            if certs.is_empty() {
                return Err(format!("{}: no certificates", p.display()));
            }
            Ok(certs)
        };
        let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for c in read(roots)? {
            builder.add_cert(c).map_err(|e| e.to_string())?;
        }
        let intermediates = match intermediates {
            Some(p) => read(p)?,
            None => Vec::new(),
        };
        Ok(TrustAnchors {
            store: builder.build(),
            intermediates,
        })
    }

    /// The verified leaf's public key (PEM SPKI).
    pub fn verify_chain(&self, pem: &str) -> Result<String, EnvelopeError> {
        let bad = |e: openssl::error::ErrorStack| EnvelopeError::BadCertificate(e.to_string());
        let mut certs = X509::stack_from_pem(pem.as_bytes())
            .map_err(bad)?
            .into_iter();
        let leaf = certs
            .next()
            .ok_or_else(|| EnvelopeError::BadCertificate("no certificate in PEM".into()))?;
        let mut chain = Stack::new().map_err(bad)?;
        for c in certs.chain(self.intermediates.iter().cloned()) {
            chain.push(c).map_err(bad)?;
        }
        let mut ctx = X509StoreContext::new().map_err(bad)?;
        let verdict = ctx
            .init(&self.store, &leaf, &chain, |c| {
                Ok(c.verify_cert()?.then_some(()).ok_or_else(|| c.error()))
            })
            .map_err(bad)?;
        verdict.map_err(|e| EnvelopeError::Untrusted(e.error_string().to_string()))?;
        let key = leaf.public_key().map_err(bad)?;
        let pem = key.public_key_to_pem().map_err(bad)?;
        String::from_utf8(pem).map_err(|_| EnvelopeError::BadCertificate("key PEM".into()))
    }
}

impl Envelope {
    pub fn algorithm(&self) -> Result<Algorithm, EnvelopeError> {
        self.algorithm
            .parse()
            .map_err(|_| EnvelopeError::Invalid(format!("unknown algorithm {:?}", self.algorithm)))
    }

    pub fn payload(&self) -> Result<Vec<u8>, EnvelopeError> {
        crate::util::unbase64(&self.payload_b64)
            .map_err(|_| EnvelopeError::Invalid("payload_b64 is not base64".into()))
    }

    /// The engine task that checks the signature over the payload, given the signer's key.
    pub fn item(
        &self,
        algorithm: Algorithm,
        key: KeyInput,
        payload: Vec<u8>,
    ) -> Result<Item, EnvelopeError> {
        let format = match self.format.as_deref() {
            None => SigFormat::default_for(algorithm),
            Some(f) => SigFormat::parse(f)
                .filter(|f| *f != SigFormat::Eth)
                .ok_or_else(|| EnvelopeError::Invalid(format!("unknown format {f:?}")))?,
        };
        let signature = crate::util::unhex0x(&self.signature)
            .map_err(|_| EnvelopeError::Invalid("signature is not hex".into()))?;
        Ok(Item {
            algorithm,
            key,
            message: Message::Bytes(payload),
            hash: Hash::Sha256,
            signature,
            format,
            require_low_s: algorithm == Algorithm::EcdsaSecp256k1,
        })
    }
}
