//! Framework-neutral signed payloads for `http` ledgers. The signer is a custody key (an
//! imported verify-only key too) or an X.509 certificate that the ledger's trust anchors
//! accept (`trust`).

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
    /// The certificate is not one that signs envelopes (a CA, no digitalSignature, an
    /// extended key usage for something else).
    #[error("certificate: {0}")]
    NotASigner(String),
    #[error("{0}")]
    Revoked(String),
}

impl EnvelopeError {
    pub fn code(&self) -> &'static str {
        match self {
            EnvelopeError::Invalid(_) => "invalid_item",
            EnvelopeError::Key(r) => r.as_str(),
            EnvelopeError::KeyNotActive(_) => "key_disabled",
            EnvelopeError::BadCertificate(_) => "bad_certificate",
            EnvelopeError::Untrusted(_) | EnvelopeError::NoTrustAnchors => "untrusted_certificate",
            EnvelopeError::NotASigner(_) => "certificate_not_for_signing",
            EnvelopeError::Revoked(_) => "revoked_certificate",
        }
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
