//! Public keys parsed once into the form each library verifies with, and a bounded
//! concurrent cache so hot signers are not parsed (and point-checked) again.

use std::sync::{Arc, OnceLock};

use ed25519_dalek::VerifyingKey;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey, EcPoint, PointConversionForm};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::Public;
use quick_cache::Equivalent;

use super::sm2p256::Sm2Key;
use super::{KeyInput, Reason};
use crate::algorithm::Algorithm;
use crate::metrics as m;

pub enum ParsedKey {
    /// `point`: the affine x || y, for the multi-buffer path.
    P256 {
        key: EcKey<Public>,
        point: [u8; 64],
    },
    Secp256k1(secp256k1::PublicKey),
    /// `point`: the affine x, y (little-endian) for the multi-buffer path, where it runs.
    Ed25519 {
        key: VerifyingKey,
        point: Option<([u8; 32], [u8; 32])>,
    },
    /// `z` is SM3(ENTL || ID || a || b || xG || yG || xA || yA) for the default ID, so
    /// each verification hashes only Z || M.
    Sm2 {
        key: Sm2Key,
        z: [u8; 32],
        point: [u8; 64],
    },
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    algorithm: Algorithm,
    pem: bool,
    bytes: Vec<u8>,
}

/// A borrowed lookup key: hashes exactly as `CacheKey` does, so a hit allocates nothing.
#[derive(Hash)]
struct CacheKeyRef<'a> {
    algorithm: Algorithm,
    pem: bool,
    bytes: &'a [u8],
}

impl Equivalent<CacheKey> for CacheKeyRef<'_> {
    fn equivalent(&self, key: &CacheKey) -> bool {
        self.algorithm == key.algorithm && self.pem == key.pem && self.bytes == key.bytes
    }
}

pub struct KeyCache {
    cache: quick_cache::sync::Cache<CacheKey, Arc<ParsedKey>>,
    /// Handles taken once: a lookup by name on every item would cost more than the hit.
    hits: metrics::Counter,
    misses: metrics::Counter,
}

impl KeyCache {
    pub fn new(entries: usize) -> Self {
        let counter = |result| metrics::counter!(m::VERIFY_KEY_CACHE_TOTAL, "result" => result);
        let (hits, misses) = (counter("hit"), counter("miss"));
        // Both series at zero from the first scrape.
        hits.absolute(0);
        misses.absolute(0);
        KeyCache {
            cache: quick_cache::sync::Cache::new(entries),
            hits,
            misses,
        }
    }

    /// The parsed key, from the cache or parsed now. Keys that fail to parse are not
    /// cached, so junk cannot evict good keys.
    pub fn get(&self, algorithm: Algorithm, input: &KeyInput) -> Result<Arc<ParsedKey>, Reason> {
        let (pem, bytes): (bool, &[u8]) = match input {
            KeyInput::Bytes(b) => (false, b),
            KeyInput::Pem(p) => (true, p.as_bytes()),
            KeyInput::Address(_) => return Err(Reason::InvalidItem),
        };
        // A PEM is cached under its SHA-256: OpenSSL skips any text before
        // `-----BEGIN`, so the text itself could be made as large as a body allows and
        // would stay in memory with the entry. Point bytes that parse are at most 65.
        let digest;
        let key_bytes: &[u8] = if pem {
            digest = crate::util::sha256(bytes);
            &digest
        } else {
            bytes
        };
        let lookup = CacheKeyRef {
            algorithm,
            pem,
            bytes: key_bytes,
        };
        if let Some(k) = self.cache.get(&lookup) {
            self.hits.increment(1);
            return Ok(k);
        }
        self.misses.increment(1);
        let parsed = Arc::new(if pem {
            parse_pem(algorithm, bytes)?
        } else {
            parse_bytes(algorithm, bytes)?
        });
        self.cache.insert(
            CacheKey {
                algorithm,
                pem,
                bytes: key_bytes.to_vec(),
            },
            parsed.clone(),
        );
        Ok(parsed)
    }

    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

// The two key types must hash identically for borrowed lookups to find owned entries.
#[cfg(test)]
fn hash_of(k: &impl std::hash::Hash) -> u64 {
    use std::hash::Hasher;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

fn group(nid: Nid) -> &'static EcGroup {
    static P256: OnceLock<EcGroup> = OnceLock::new();
    static SM2: OnceLock<EcGroup> = OnceLock::new();
    let cell = match nid {
        Nid::SM2 => &SM2,
        Nid::X9_62_PRIME256V1 => &P256,
        other => panic!("no cached group for {other:?}"),
    };
    cell.get_or_init(|| EcGroup::from_curve_name(nid).expect("OpenSSL knows the curve"))
}

/// From SEC1 point bytes (33 or 65) or 32 raw Ed25519 bytes.
pub fn parse_bytes(algorithm: Algorithm, bytes: &[u8]) -> Result<ParsedKey, Reason> {
    match algorithm {
        Algorithm::Ed25519 => {
            let raw: &[u8; 32] = bytes.try_into().map_err(|_| Reason::BadEncoding)?;
            ed25519_key(raw)
        }
        Algorithm::EcdsaSecp256k1 => {
            sec1_length(bytes)?;
            secp256k1::PublicKey::from_slice(bytes)
                .map(ParsedKey::Secp256k1)
                .map_err(|_| Reason::BadPublicKey)
        }
        Algorithm::EcdsaP256 => {
            let key = ec_key(Nid::X9_62_PRIME256V1, bytes)?;
            Ok(ParsedKey::P256 {
                point: affine(&key)?,
                key,
            })
        }
        Algorithm::Sm2 => {
            sec1_length(bytes)?;
            sm2_key(super::sm2p256::decode_point(bytes).ok_or(Reason::BadPublicKey)?)
        }
    }
}

fn sec1_length(bytes: &[u8]) -> Result<(), Reason> {
    // Rules out the one-byte encoding of the point at infinity, which OpenSSL accepts.
    match (bytes.len(), bytes.first()) {
        (33, Some(2 | 3)) | (65, Some(4)) => Ok(()),
        _ => Err(Reason::BadEncoding),
    }
}

/// On a prime-order curve a point that decodes onto the curve is a valid public key, so the
/// costly n*Q check of EC_KEY_check_key is not needed.
fn ec_key(nid: Nid, bytes: &[u8]) -> Result<EcKey<Public>, Reason> {
    sec1_length(bytes)?;
    let group = group(nid);
    let mut ctx = BigNumContext::new().map_err(|_| Reason::Internal)?;
    let point = EcPoint::from_bytes(group, bytes, &mut ctx).map_err(|_| Reason::BadPublicKey)?;
    EcKey::from_public_key(group, &point).map_err(|_| Reason::BadPublicKey)
}

fn ed25519_key(raw: &[u8; 32]) -> Result<ParsedKey, Reason> {
    let key = VerifyingKey::from_bytes(raw).map_err(|_| Reason::BadPublicKey)?;
    // Strict: only the canonical encoding of a point (y < p, no sign bit on x = 0).
    if !super::ed25519::is_canonical_point(raw) {
        return Err(Reason::BadEncoding);
    }
    if key.is_weak() {
        return Err(Reason::BadPublicKey);
    }
    let point = if super::mb::available() {
        Some(super::mb::ed25519_decompress(raw).ok_or(Reason::BadPublicKey)?)
    } else {
        None
    };
    Ok(ParsedKey::Ed25519 { key, point })
}

/// The affine x || y of a key's point (uncompressed SEC1 without its tag).
fn affine(ec: &EcKey<Public>) -> Result<[u8; 64], Reason> {
    let mut ctx = BigNumContext::new().map_err(|_| Reason::Internal)?;
    let sec1 = ec
        .public_key()
        .to_bytes(ec.group(), PointConversionForm::UNCOMPRESSED, &mut ctx)
        .map_err(|_| Reason::Internal)?;
    sec1.get(1..)
        .and_then(|xy| xy.try_into().ok())
        .ok_or(Reason::Internal)
}

/// From a point known to be on the curve; the verification tables come from it.
fn sm2_key(point: [u8; 64]) -> Result<ParsedKey, Reason> {
    let (x, y) = point.split_at(32);
    let key = Sm2Key::new(
        x.try_into().map_err(|_| Reason::Internal)?,
        y.try_into().map_err(|_| Reason::Internal)?,
    );
    let mut sec1 = [4u8; 65];
    sec1[1..].copy_from_slice(&point);
    Ok(ParsedKey::Sm2 {
        key,
        z: sm2_z(&sec1),
        point,
    })
}

/// Z for the default ID and an uncompressed SEC1 point: signers hash SM3(Z || M).
pub fn sm2_z(point: &[u8]) -> [u8; 32] {
    let mut input = sm2_z_prefix().to_vec();
    input.extend_from_slice(point.get(1..).unwrap_or_default());
    sm3(&input)
}

/// Z for any distinguishing ID (at most 8191 bytes: ENTL is 16 bits of length in bits).
pub fn sm2_z_with_id(id: &[u8], point: &[u8]) -> [u8; 32] {
    if id == SM2_DEFAULT_ID {
        return sm2_z(point);
    }
    let bits = (id.len() * 8) as u16;
    let mut input = bits.to_be_bytes().to_vec();
    input.extend_from_slice(id);
    // The curve's part of the prefix follows ENTL || ID.
    input.extend_from_slice(&sm2_z_prefix()[2 + SM2_DEFAULT_ID.len()..]);
    input.extend_from_slice(point.get(1..).unwrap_or_default());
    sm3(&input)
}

/// An SM2 signature (DER) over `data` by the key at `point` (SEC1 uncompressed), with the
/// GM/T 0009 default ID (what GM/T 0015 certificates use) or the empty ID (what the openssl
/// CLI uses unless given `distid`). For certificates, CSRs and CRLs, not transactions.
pub fn sm2_signed(point: &[u8], data: &[u8], sig_der: &[u8]) -> bool {
    if crate::crypto::pubkey::pkey_from_bytes(Algorithm::Sm2, point).is_err() {
        return false;
    }
    let Ok(sig) = openssl::ecdsa::EcdsaSig::from_der(sig_der) else {
        return false;
    };
    let (Ok(r), Ok(s)) = (sig.r().to_vec_padded(32), sig.s().to_vec_padded(32)) else {
        return false;
    };
    let (Ok(x), Ok(y), Ok(r), Ok(s)) = (
        <&[u8; 32]>::try_from(&point[1..33]),
        <&[u8; 32]>::try_from(&point[33..]),
        <&[u8; 32]>::try_from(&r[..]),
        <&[u8; 32]>::try_from(&s[..]),
    ) else {
        return false;
    };
    let key = Sm2Key::new(x, y);
    [SM2_DEFAULT_ID, b""].iter().any(|id| {
        let z = sm2_z_with_id(id, point);
        key.verify(&sm2_e(&z, data), r, s)
    })
}

/// e = SM3(Z || M), what an SM2 signature signs (GM/T 0003.2 §6.1 A1-A2).
pub fn sm2_e(z: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let mut input = Vec::with_capacity(32 + message.len());
    input.extend_from_slice(z);
    input.extend_from_slice(message);
    sm3(&input)
}

pub fn sm3(data: &[u8]) -> [u8; 32] {
    let d = openssl::hash::hash(MessageDigest::sm3(), data).expect("OpenSSL has SM3");
    let mut out = [0u8; 32];
    out.copy_from_slice(&d);
    out
}

/// The default distinguishing ID of GM/T 0009-2012.
pub const SM2_DEFAULT_ID: &[u8] = b"1234567812345678";

/// ENTL || ID || a || b || xG || yG: the part of Z shared by every key.
fn sm2_z_prefix() -> &'static [u8] {
    static PREFIX: OnceLock<Vec<u8>> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let g = group(Nid::SM2);
        let mut ctx = BigNumContext::new().expect("BN context");
        let (mut p, mut a, mut b) = (
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
            BigNum::new().unwrap(),
        );
        g.components_gfp(&mut p, &mut a, &mut b, &mut ctx)
            .expect("SM2 curve parameters");
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        g.generator_opt()
            .expect("SM2 has a generator")
            .affine_coordinates(g, &mut x, &mut y, &mut ctx)
            .expect("SM2 generator");
        let bits = (SM2_DEFAULT_ID.len() * 8) as u16;
        let mut out = bits.to_be_bytes().to_vec();
        out.extend_from_slice(SM2_DEFAULT_ID);
        for n in [&a, &b, &x, &y] {
            out.extend_from_slice(&n.to_vec_padded(32).expect("32-byte field element"));
        }
        out
    })
}

/// From PEM SubjectPublicKeyInfo; the key's type and curve must match `algorithm`.
pub fn parse_pem(algorithm: Algorithm, pem: &[u8]) -> Result<ParsedKey, Reason> {
    use crate::crypto::pubkey::{PublicKey, PublicKeyError};
    let text = std::str::from_utf8(pem).map_err(|_| Reason::BadEncoding)?;
    let key = PublicKey::from_pem(algorithm, text).map_err(|e| match e {
        PublicKeyError::Pem(_) => Reason::BadEncoding,
        PublicKeyError::WrongAlgorithm { .. } => Reason::AlgorithmMismatch,
        PublicKeyError::BadPoint(_) | PublicKeyError::OpenSsl(_) => Reason::BadPublicKey,
    })?;
    parse_bytes(algorithm, &key.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrowed_and_owned_keys_hash_alike() {
        let owned = CacheKey {
            algorithm: Algorithm::Sm2,
            pem: true,
            bytes: vec![1, 2, 3],
        };
        let borrowed = CacheKeyRef {
            algorithm: Algorithm::Sm2,
            pem: true,
            bytes: &[1, 2, 3],
        };
        assert_eq!(hash_of(&owned), hash_of(&borrowed));
        assert!(borrowed.equivalent(&owned));
    }

    #[test]
    fn the_cache_is_bounded_and_skips_bad_keys() {
        let cache = KeyCache::new(8);
        for _ in 0..20 {
            let k = EcKey::generate(group(Nid::X9_62_PRIME256V1)).unwrap();
            let mut ctx = BigNumContext::new().unwrap();
            let b = k
                .public_key()
                .to_bytes(k.group(), PointConversionForm::COMPRESSED, &mut ctx)
                .unwrap();
            cache
                .get(Algorithm::EcdsaP256, &KeyInput::Bytes(b))
                .map_err(|_| "parse")
                .unwrap();
        }
        assert!(cache.len() <= 8, "cache holds {}", cache.len());
        let before = cache.len();
        let bad = KeyInput::Bytes(vec![4u8; 65]);
        assert_eq!(
            cache.get(Algorithm::EcdsaP256, &bad).err(),
            Some(Reason::BadPublicKey)
        );
        assert_eq!(
            cache
                .get(Algorithm::EcdsaP256, &KeyInput::Bytes(vec![0]))
                .err(),
            Some(Reason::BadEncoding)
        );
        assert!(cache.len() <= before);
    }

    #[test]
    fn a_pem_is_cached_under_its_digest_whatever_comes_before_it() {
        let cache = KeyCache::new(8);
        let k = EcKey::generate(group(Nid::X9_62_PRIME256V1)).unwrap();
        let pem = String::from_utf8(k.public_key_to_pem().unwrap()).unwrap();
        let padded = KeyInput::Pem(format!("{}\n{pem}", "junk ".repeat(20_000)));
        let first = cache.get(Algorithm::EcdsaP256, &padded).unwrap();
        let again = cache.get(Algorithm::EcdsaP256, &padded).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "the second lookup is a hit");
        let lookup = CacheKeyRef {
            algorithm: Algorithm::EcdsaP256,
            pem: true,
            bytes: &crate::util::sha256(match &padded {
                KeyInput::Pem(p) => p.as_bytes(),
                _ => unreachable!(),
            }),
        };
        assert!(
            cache.cache.get(&lookup).is_some(),
            "keyed by the 32-byte digest"
        );
    }

    #[test]
    fn ed25519_keys_must_be_canonical_and_not_small_order() {
        // The identity (y = 1) is of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert_eq!(
            parse_bytes(Algorithm::Ed25519, &identity).err(),
            Some(Reason::BadPublicKey)
        );
        // y = p + 1 encodes the identity non-canonically.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(parse_bytes(Algorithm::Ed25519, &non_canonical).is_err());
    }
}
