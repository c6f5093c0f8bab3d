//! Encodings of keys and signatures that custody produces and verification consumes.

pub mod ecdsa;
pub mod pubkey;
pub mod sm2;

use crate::algorithm::Algorithm;

/// How a signature is encoded, for signing and verifying alike (one type, so custody and
/// verification cannot disagree on a default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigFormat {
    /// DER `ECDSA-Sig-Value` (also SM2's), strictly (BER rejected).
    Der,
    /// r||s, 32 bytes each (IEEE P1363); for Ed25519 the 64-byte signature.
    Raw,
    /// r||s||v, v in {0, 1, 27, 28}: secp256k1 only, checked by public-key recovery.
    Eth,
}

impl SigFormat {
    pub fn parse(s: &str) -> Option<SigFormat> {
        match s {
            "der" => Some(SigFormat::Der),
            "raw" => Some(SigFormat::Raw),
            "eth" => Some(SigFormat::Eth),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SigFormat::Der => "der",
            SigFormat::Raw => "raw",
            SigFormat::Eth => "eth",
        }
    }

    /// DER for the ECDSA curves and SM2, raw for Ed25519 (which has no DER form).
    pub fn default_for(alg: Algorithm) -> SigFormat {
        if alg == Algorithm::Ed25519 {
            SigFormat::Raw
        } else {
            SigFormat::Der
        }
    }
}
