//! ECDSA signature encodings: raw r||s, DER, low-S normalisation and the Ethereum recovery id.

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::EcGroup;
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;

use crate::algorithm::Algorithm;

#[derive(Debug, thiserror::Error)]
pub enum EcdsaError {
    #[error("signature must be {0} bytes of r||s")]
    Length(usize),
    #[error("algorithm {0} is not ECDSA")]
    NotEcdsa(Algorithm),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
    #[error("no recovery id reproduces the public key")]
    NoRecoveryId,
}

pub fn curve_nid(alg: Algorithm) -> Result<Nid, EcdsaError> {
    match alg {
        Algorithm::EcdsaP256 => Ok(Nid::X9_62_PRIME256V1),
        Algorithm::EcdsaSecp256k1 => Ok(Nid::SECP256K1),
        Algorithm::Sm2 => Ok(Nid::SM2),
        Algorithm::Ed25519 => Err(EcdsaError::NotEcdsa(alg)),
    }
}

/// The group order n and n/2 of an ECDSA-style curve, computed once per curve: signing
/// and verification ask for them on every signature.
pub fn order_and_half(alg: Algorithm) -> Result<&'static (BigNum, BigNum), EcdsaError> {
    static CURVES: [OnceLock<(BigNum, BigNum)>; 3] =
        [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let cell = match alg {
        Algorithm::EcdsaP256 => &CURVES[0],
        Algorithm::EcdsaSecp256k1 => &CURVES[1],
        Algorithm::Sm2 => &CURVES[2],
        Algorithm::Ed25519 => return Err(EcdsaError::NotEcdsa(alg)),
    };
    if let Some(v) = cell.get() {
        return Ok(v);
    }
    let group = EcGroup::from_curve_name(curve_nid(alg)?)?;
    let mut n = BigNum::new()?;
    let mut ctx = BigNumContext::new()?;
    group.order(&mut n, &mut ctx)?;
    let mut half = BigNum::new()?;
    half.rshift1(&n)?;
    Ok(cell.get_or_init(|| (n, half)))
}

/// Replaces s by n - s when s > n/2, so the signature is the canonical low-S one.
/// Returns whether it changed.
pub fn normalize_low_s(alg: Algorithm, raw: &mut [u8; 64]) -> Result<bool, EcdsaError> {
    let (n, half) = order_and_half(alg)?;
    let s = BigNum::from_slice(&raw[32..])?;
    if s <= *half {
        return Ok(false);
    }
    let mut low = BigNum::new()?;
    low.checked_sub(n, &s)?;
    raw[32..].copy_from_slice(&low.to_vec_padded(32)?);
    Ok(true)
}

/// True when s <= n/2.
pub fn is_low_s(alg: Algorithm, raw: &[u8; 64]) -> Result<bool, EcdsaError> {
    let mut copy = *raw;
    Ok(!normalize_low_s(alg, &mut copy)?)
}

/// r||s (32 bytes each) to a DER `ECDSA-Sig-Value`.
pub fn raw_to_der(raw: &[u8]) -> Result<Vec<u8>, EcdsaError> {
    if raw.len() != 64 {
        return Err(EcdsaError::Length(64));
    }
    let sig = EcdsaSig::from_private_components(
        BigNum::from_slice(&raw[..32])?,
        BigNum::from_slice(&raw[32..])?,
    )?;
    Ok(sig.to_der()?)
}

/// The recovery id (0 or 1) such that recovering from (digest, r||s) gives `public_key`
/// (SEC1, uncompressed, 65 bytes).
pub fn eth_recovery_id(
    raw: &[u8; 64],
    digest: &[u8; 32],
    public_key: &[u8],
) -> Result<u8, EcdsaError> {
    use secp256k1::ecdsa::{RecoverableSignature, RecoveryId};
    let secp = secp256k1::Secp256k1::verification_only();
    let msg = secp256k1::Message::from_digest(*digest);
    for v in 0..2 {
        let id = RecoveryId::try_from(v).map_err(|_| EcdsaError::NoRecoveryId)?;
        let Ok(sig) = RecoverableSignature::from_compact(raw, id) else {
            continue;
        };
        if let Ok(pk) = secp.recover_ecdsa(msg, &sig) {
            if pk.serialize_uncompressed().as_slice() == public_key {
                return Ok(v as u8);
            }
        }
    }
    Err(EcdsaError::NoRecoveryId)
}

/// The Ethereum address of an uncompressed SEC1 secp256k1 public key.
pub fn eth_address(public_key: &[u8]) -> Option<[u8; 20]> {
    if public_key.len() != 65 || public_key[0] != 0x04 {
        return None;
    }
    let hash = crate::util::keccak256(&public_key[1..]);
    let mut addr = [0u8; 20];
    addr.copy_from_slice(&hash[12..]);
    Some(addr)
}

/// EIP-55 mixed-case checksum form of an address.
pub fn eth_address_checksummed(addr: &[u8; 20]) -> String {
    let lower = hex::encode(addr);
    let hash = crate::util::keccak256(lower.as_bytes());
    let mut out = String::from("0x");
    for (i, c) in lower.chars().enumerate() {
        let nibble = (hash[i / 2] >> (if i % 2 == 0 { 4 } else { 0 })) & 0x0f;
        out.push(if c.is_ascii_alphabetic() && nibble >= 8 {
            c.to_ascii_uppercase()
        } else {
            c
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_s_is_normalised_and_low_s_is_kept() {
        let (n, _) = order_and_half(Algorithm::EcdsaSecp256k1).unwrap();
        let mut raw = [0u8; 64];
        raw[31] = 1;
        // s = n - 1 is high
        let mut s = BigNum::new().unwrap();
        s.checked_sub(n, &BigNum::from_u32(1).unwrap()).unwrap();
        raw[32..].copy_from_slice(&s.to_vec_padded(32).unwrap());
        assert!(!is_low_s(Algorithm::EcdsaSecp256k1, &raw).unwrap());
        assert!(normalize_low_s(Algorithm::EcdsaSecp256k1, &mut raw).unwrap());
        assert_eq!(raw[63], 1);
        assert!(raw[32..63].iter().all(|b| *b == 0));
        assert!(!normalize_low_s(Algorithm::EcdsaSecp256k1, &mut raw).unwrap());
    }

    #[test]
    fn eip55_checksum_matches_the_spec_example() {
        let addr: [u8; 20] = hex::decode("5aaeb6053f3e94c9b9a09f33669435e7ef1beaed")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(
            eth_address_checksummed(&addr),
            "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
        );
    }

    #[test]
    fn der_encoding_of_small_values() {
        let mut raw = [0u8; 64];
        raw[31] = 1;
        raw[63] = 2;
        assert_eq!(raw_to_der(&raw).unwrap(), vec![0x30, 6, 2, 1, 1, 2, 1, 2]);
    }
}
