//! Public keys: built from a token's CKA_EC_POINT or parsed from PEM, and rendered as
//! SEC1/raw bytes plus a PEM SubjectPublicKeyInfo.

use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Public};

use crate::algorithm::Algorithm;
use crate::crypto::ecdsa::curve_nid;

#[derive(Debug, thiserror::Error)]
pub enum PublicKeyError {
    #[error("not a PEM public key: {0}")]
    Pem(String),
    #[error("the key is {found}, not {expected}")]
    WrongAlgorithm { expected: Algorithm, found: String },
    #[error("public key bytes of length {0} are not a valid point")]
    BadPoint(usize),
    #[error("openssl: {0}")]
    OpenSsl(#[from] openssl::error::ErrorStack),
}

/// A parsed public key: `bytes` is SEC1 uncompressed for EC curves and the 32 raw bytes
/// for Ed25519.
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub algorithm: Algorithm,
    pub bytes: Vec<u8>,
    pub pem: String,
}

impl PublicKey {
    /// From the bytes of a point (SEC1 compressed/uncompressed, or raw Ed25519).
    pub fn from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<Self, PublicKeyError> {
        let pkey = pkey_from_bytes(algorithm, bytes)?;
        Self::from_pkey(algorithm, &pkey)
    }

    /// From PEM SubjectPublicKeyInfo; the key's type must match `algorithm`.
    pub fn from_pem(algorithm: Algorithm, pem: &str) -> Result<Self, PublicKeyError> {
        let pkey = PKey::public_key_from_pem(pem.as_bytes())
            .map_err(|e| PublicKeyError::Pem(first_reason(&e)))?;
        Self::from_pkey(algorithm, &pkey)
    }

    fn from_pkey(algorithm: Algorithm, pkey: &PKey<Public>) -> Result<Self, PublicKeyError> {
        let found = describe(pkey);
        let wrong = || PublicKeyError::WrongAlgorithm {
            expected: algorithm,
            found: found.clone(),
        };
        let bytes = match algorithm {
            Algorithm::Ed25519 => {
                if pkey.id() != Id::ED25519 {
                    return Err(wrong());
                }
                pkey.raw_public_key()?
            }
            Algorithm::Sm2 if pkey.ec_key().is_err() => {
                // OpenSSL 3 decodes an SM2 SubjectPublicKeyInfo to a provider key it will
                // not hand out as an EC_KEY: take the point from the DER.
                let der = pkey.public_key_to_der()?;
                if !der
                    .windows(SM2_CURVE_OID.len())
                    .take(32)
                    .any(|w| w == SM2_CURVE_OID)
                {
                    return Err(wrong());
                }
                spki_point(&der)
                    .ok_or(PublicKeyError::BadPoint(der.len()))?
                    .to_vec()
            }
            _ => {
                let ec = pkey.ec_key().map_err(|_| wrong())?;
                let want = curve_nid(algorithm).map_err(|_| wrong())?;
                if ec.group().curve_name() != Some(want) {
                    return Err(wrong());
                }
                let mut ctx = BigNumContext::new()?;
                ec.public_key()
                    .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)?
            }
        };
        let pem = String::from_utf8(pkey.public_key_to_pem()?).expect("PEM is ASCII");
        Ok(PublicKey {
            algorithm,
            bytes,
            pem,
        })
    }
}

/// OBJECT IDENTIFIER 1.2.156.10197.1.301 (the SM2 curve), DER-encoded.
const SM2_CURVE_OID: &[u8] = &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];

/// The point at the end of an EC SubjectPublicKeyInfo: BIT STRING (03), length, no unused
/// bits (00), then 65 (uncompressed) or 33 (compressed) bytes.
fn spki_point(der: &[u8]) -> Option<&[u8]> {
    [65usize, 33].into_iter().find_map(|n| {
        let start = der.len().checked_sub(n + 3)?;
        (der[start..start + 3] == [0x03, n as u8 + 1, 0x00]).then(|| &der[start + 3..])
    })
}

pub fn pkey_from_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<PKey<Public>, PublicKeyError> {
    match algorithm {
        Algorithm::Ed25519 => {
            if bytes.len() != 32 {
                return Err(PublicKeyError::BadPoint(bytes.len()));
            }
            Ok(PKey::public_key_from_raw_bytes(bytes, Id::ED25519)
                .map_err(|_| PublicKeyError::BadPoint(bytes.len()))?)
        }
        _ => {
            let group = EcGroup::from_curve_name(curve_nid(algorithm).expect("EC algorithm"))?;
            let mut ctx = BigNumContext::new()?;
            let point = EcPoint::from_bytes(&group, bytes, &mut ctx)
                .map_err(|_| PublicKeyError::BadPoint(bytes.len()))?;
            let ec = EcKey::from_public_key(&group, &point)?;
            ec.check_key()
                .map_err(|_| PublicKeyError::BadPoint(bytes.len()))?;
            Ok(PKey::from_ec_key(ec)?)
        }
    }
}

fn describe(pkey: &PKey<Public>) -> String {
    if let Ok(ec) = pkey.ec_key() {
        let curve = ec
            .group()
            .curve_name()
            .and_then(|n: Nid| n.short_name().ok())
            .unwrap_or("unknown curve");
        return format!("an EC key on {curve}");
    }
    format!("a key of type {:?}", pkey.id())
}

fn first_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|e| e.reason())
        .unwrap_or("unreadable PEM")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trip_and_algorithm_check() {
        let group = EcGroup::from_curve_name(Nid::SECP256K1).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let pem = String::from_utf8(key.public_key_to_pem().unwrap()).unwrap();
        let pk = PublicKey::from_pem(Algorithm::EcdsaSecp256k1, &pem).unwrap();
        assert_eq!(pk.bytes.len(), 65);
        let again = PublicKey::from_bytes(Algorithm::EcdsaSecp256k1, &pk.bytes).unwrap();
        assert_eq!(again.pem, pk.pem);
        assert!(matches!(
            PublicKey::from_pem(Algorithm::EcdsaP256, &pem),
            Err(PublicKeyError::WrongAlgorithm { .. })
        ));
        assert!(matches!(
            PublicKey::from_pem(Algorithm::EcdsaP256, "nonsense"),
            Err(PublicKeyError::Pem(_))
        ));
    }

    #[test]
    fn sm2_pem_yields_its_point() {
        let group = EcGroup::from_curve_name(Nid::SM2).unwrap();
        let key = EcKey::generate(&group).unwrap();
        let pem = String::from_utf8(key.public_key_to_pem().unwrap()).unwrap();
        let pk = PublicKey::from_pem(Algorithm::Sm2, &pem).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let point = key
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap();
        assert_eq!(pk.bytes, point);
        assert!(matches!(
            PublicKey::from_pem(Algorithm::EcdsaP256, &pem),
            Err(PublicKeyError::WrongAlgorithm { .. })
        ));
    }

    #[test]
    fn bad_points_are_rejected() {
        assert!(PublicKey::from_bytes(Algorithm::EcdsaP256, &[4u8; 65]).is_err());
        assert!(PublicKey::from_bytes(Algorithm::Ed25519, &[1u8; 31]).is_err());
    }
}
