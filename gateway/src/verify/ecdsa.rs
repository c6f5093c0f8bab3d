//! One ECDSA-style verification: P-256 through OpenSSL's ECDSA_do_verify, secp256k1
//! through libsecp256k1 (also Ethereum public-key recovery), SM2 through `sm2p256` on
//! the pre-hashed e = SM3(Z || M).

use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use secp256k1::ecdsa::{RecoverableSignature, RecoveryId, Signature};
use secp256k1::{Message, Secp256k1, VerifyOnly};

use super::keys::{sm2_e, ParsedKey};
use super::mb;
use super::sm2p256::Sm2Key;
use super::{Item, KeyInput, Reason, SigFormat};
use crate::algorithm::Algorithm;
use crate::crypto::ecdsa::order_and_half;

/// Per-worker state: libsecp256k1 contexts are not free to build.
pub struct Verifier {
    secp: Secp256k1<VerifyOnly>,
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier {
            secp: Secp256k1::verification_only(),
        }
    }
}

fn ok_if(valid: bool) -> Result<(), Reason> {
    if valid {
        Ok(())
    } else {
        Err(Reason::BadSignature)
    }
}

impl Verifier {
    /// `key` is the parsed key for `item` (None only for an address with `eth`).
    pub fn verify(&self, item: &Item, key: Option<&ParsedKey>) -> Result<(), Reason> {
        match (key, item.format) {
            (Some(ParsedKey::P256 { key, .. }), _) => {
                let sig = p256_sig(item)?;
                // Out-of-range r or s makes OpenSSL return an error rather than false.
                ok_if(sig.verify(&item.ecdsa_digest(), key).unwrap_or(false))
            }
            (Some(ParsedKey::Sm2 { key, z, .. }), _) => sm2(item, key, z),
            (_, SigFormat::Eth) => self.secp256k1_eth(item, key),
            (Some(ParsedKey::Secp256k1(pk)), _) => {
                let sig = secp256k1_sig(item)?;
                let msg = Message::from_digest(item.ecdsa_digest());
                ok_if(self.secp.verify_ecdsa(msg, &sig, pk).is_ok())
            }
            _ => Err(Reason::Internal),
        }
    }

    /// The item as a lane of the multi-buffer path, read and policy-checked exactly as
    /// `verify` reads it, so both paths answer alike; `Ok(None)` for what that path does
    /// not take (Ethereum's r||s||v, checked by recovery).
    pub fn lane(
        &self,
        item: &Item,
        key: Option<&ParsedKey>,
    ) -> Result<Option<(mb::Curve, mb::Lane)>, Reason> {
        let b32 = |v: &[u8]| <[u8; 32]>::try_from(v).map_err(|_| Reason::Internal);
        let (curve, point, r, s, e) = match (key, item.format) {
            (_, SigFormat::Eth) => return Ok(None),
            (Some(ParsedKey::P256 { point, .. }), _) => {
                let sig = p256_sig(item)?;
                // Over 32 bytes is over n: the scalar path answers "not valid" too.
                let (Ok(r), Ok(s)) = (sig.r().to_vec_padded(32), sig.s().to_vec_padded(32)) else {
                    return Err(Reason::BadSignature);
                };
                let e = item.ecdsa_digest();
                (mb::Curve::P256, *point, b32(&r)?, b32(&s)?, e)
            }
            (Some(ParsedKey::Sm2 { z, point, .. }), _) => {
                let (e, r, s) = sm2_parts(item, z)?;
                (mb::Curve::Sm2, *point, r, s, e)
            }
            (Some(ParsedKey::Secp256k1(pk)), _) => {
                let compact = secp256k1_sig(item)?.serialize_compact();
                let xy = pk.serialize_uncompressed();
                (
                    mb::Curve::Secp256k1,
                    xy[1..].try_into().map_err(|_| Reason::Internal)?,
                    b32(&compact[..32])?,
                    b32(&compact[32..])?,
                    item.ecdsa_digest(),
                )
            }
            _ => return Ok(None),
        };
        Ok(Some((
            curve,
            mb::Lane {
                qx: b32(&point[..32])?,
                qy: b32(&point[32..])?,
                r,
                s,
                e,
            },
        )))
    }

    /// r||s||v: the key recovered from the signature must be the one given.
    fn secp256k1_eth(&self, item: &Item, key: Option<&ParsedKey>) -> Result<(), Reason> {
        let sig = eth_signature(item)?;
        let recovered = self.recover(&item.ecdsa_digest(), sig, item.require_low_s)?;
        eth_matches(item, key, &recovered)
    }

    /// The uncompressed public key that produced `sig` (r||s||v) over `digest`.
    pub fn recover(
        &self,
        digest: &[u8; 32],
        sig: &[u8; 65],
        require_low_s: bool,
    ) -> Result<[u8; 65], Reason> {
        let lane = recovery_lane(digest, sig, require_low_s)?;
        let id = RecoveryId::try_from(i32::from(lane.odd)).map_err(|_| Reason::BadEncoding)?;
        let rsig =
            RecoverableSignature::from_compact(&sig[..64], id).map_err(|_| Reason::BadSignature)?;
        let pk = self
            .secp
            .recover_ecdsa(Message::from_digest(*digest), &rsig)
            .map_err(|_| Reason::BadSignature)?;
        Ok(pk.serialize_uncompressed())
    }
}

/// r||s||v read and policy-checked as `Verifier::recover` reads it, as a lane of the
/// multi-buffer path.
pub fn recovery_lane(
    digest: &[u8; 32],
    sig: &[u8; 65],
    require_low_s: bool,
) -> Result<mb::Recovery, Reason> {
    let odd = match sig[64] {
        0 | 27 => false,
        1 | 28 => true,
        _ => return Err(Reason::BadEncoding),
    };
    let compact = Signature::from_compact(&sig[..64]).map_err(|_| Reason::BadSignature)?;
    low_s(compact, require_low_s)?;
    let b32 = |v: &[u8]| <[u8; 32]>::try_from(v).map_err(|_| Reason::Internal);
    Ok(mb::Recovery {
        r: b32(&sig[..32])?,
        s: b32(&sig[32..64])?,
        e: *digest,
        odd,
    })
}

/// An `eth` item's 65-byte signature.
pub fn eth_signature(item: &Item) -> Result<&[u8; 65], Reason> {
    item.signature
        .as_slice()
        .try_into()
        .map_err(|_| Reason::BadEncoding)
}

/// Whether the key recovered from an `eth` item is the one it names (address or key).
pub fn eth_matches(
    item: &Item,
    key: Option<&ParsedKey>,
    recovered: &[u8; 65],
) -> Result<(), Reason> {
    let matches = match (&item.key, key) {
        (KeyInput::Address(addr), _) => {
            crate::crypto::ecdsa::eth_address(recovered).as_ref() == Some(addr)
        }
        (_, Some(ParsedKey::Secp256k1(pk))) => pk.serialize_uncompressed() == *recovered,
        _ => return Err(Reason::Internal),
    };
    ok_if(matches)
}

/// A secp256k1 signature read strictly (DER or r||s) and low-S normalised (or refused
/// where low S is required).
fn secp256k1_sig(item: &Item) -> Result<Signature, Reason> {
    let sig = match item.format {
        SigFormat::Der => {
            let sig = Signature::from_der(&item.signature).map_err(|_| Reason::BadEncoding)?;
            // libsecp256k1 reads some non-minimal encodings; strict DER re-encodes alike.
            if sig.serialize_der().as_ref() != item.signature.as_slice() {
                return Err(Reason::BadEncoding);
            }
            sig
        }
        _ => {
            if item.signature.len() != 64 {
                return Err(Reason::BadEncoding);
            }
            Signature::from_compact(&item.signature).map_err(|_| Reason::BadSignature)?
        }
    };
    low_s(sig, item.require_low_s)
}

/// libsecp256k1 verifies only low-S signatures: a high-S one is refused or normalised.
fn low_s(sig: Signature, required: bool) -> Result<Signature, Reason> {
    let mut normal = sig;
    normal.normalize_s();
    if normal != sig && required {
        return Err(Reason::HighS);
    }
    Ok(normal)
}

/// DER read strictly: OpenSSL's reader takes some BER, so the re-encoding must match.
fn openssl_sig(item: &Item) -> Result<EcdsaSig, Reason> {
    match item.format {
        SigFormat::Der => {
            let sig = EcdsaSig::from_der(&item.signature).map_err(|_| Reason::BadEncoding)?;
            match sig.to_der() {
                Ok(der) if der == item.signature => Ok(sig),
                _ => Err(Reason::BadEncoding),
            }
        }
        SigFormat::Raw if item.signature.len() == 64 => {
            let r = BigNum::from_slice(&item.signature[..32]).map_err(|_| Reason::Internal)?;
            let s = BigNum::from_slice(&item.signature[32..]).map_err(|_| Reason::Internal)?;
            EcdsaSig::from_private_components(r, s).map_err(|_| Reason::Internal)
        }
        _ => Err(Reason::BadEncoding),
    }
}

/// A P-256 signature read strictly, high S refused where low S is required.
fn p256_sig(item: &Item) -> Result<EcdsaSig, Reason> {
    let sig = openssl_sig(item)?;
    let (_, half) = order_and_half(Algorithm::EcdsaP256).map_err(|_| Reason::Internal)?;
    if item.require_low_s && sig.s() > half {
        return Err(Reason::HighS);
    }
    Ok(sig)
}

fn sm2(item: &Item, key: &Sm2Key, z: &[u8; 32]) -> Result<(), Reason> {
    let (e, r, s) = sm2_parts(item, z)?;
    ok_if(key.verify(&e, &r, &s))
}

/// SM2's e, r and s: e = SM3(Z || M) or the digest given; r, s read strictly.
type Sm2Parts = ([u8; 32], [u8; 32], [u8; 32]);

fn sm2_parts(item: &Item, z: &[u8; 32]) -> Result<Sm2Parts, Reason> {
    let e = match &item.message {
        super::Message::Digest(d) => *d,
        super::Message::Bytes(m) => sm2_e(z, m),
    };
    let (r, s) = match item.format {
        SigFormat::Der => {
            let sig = EcdsaSig::from_der(&item.signature).map_err(|_| Reason::BadEncoding)?;
            // Strict DER: only the encoding that re-encodes to itself.
            if sig.to_der().ok().as_deref() != Some(item.signature.as_slice()) {
                return Err(Reason::BadEncoding);
            }
            // Over 32 bytes is over n: a signature that does not verify.
            match (sig.r().to_vec_padded(32), sig.s().to_vec_padded(32)) {
                (Ok(r), Ok(s)) => (r, s),
                _ => return Err(Reason::BadSignature),
            }
        }
        _ => {
            if item.signature.len() != 64 {
                return Err(Reason::BadEncoding);
            }
            let (r, s) = item.signature.split_at(32);
            (r.to_vec(), s.to_vec())
        }
    };
    let as32 = |v: &[u8]| <[u8; 32]>::try_from(v).map_err(|_| Reason::Internal);
    Ok((e, as32(&r)?, as32(&s)?))
}

#[cfg(test)]
mod tests {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::pkey_ctx::PkeyCtx;

    use super::*;
    use crate::verify::{Hash, Message};

    /// A fresh SM2 key: ours, built from its point, and OpenSSL's, to sign with.
    fn key_pair() -> (Sm2Key, PKey<openssl::pkey::Private>) {
        let group = EcGroup::from_curve_name(Nid::SM2).unwrap();
        let private = EcKey::generate(&group).unwrap();
        let mut bn = openssl::bn::BigNumContext::new().unwrap();
        let point = private
            .public_key()
            .to_bytes(
                &group,
                openssl::ec::PointConversionForm::UNCOMPRESSED,
                &mut bn,
            )
            .unwrap();
        let ours = Sm2Key::new(
            point[1..33].try_into().unwrap(),
            point[33..].try_into().unwrap(),
        );
        (ours, PKey::from_ec_key(private).unwrap())
    }

    /// A key and OpenSSL's own SM2 signature (raw r||s) over the digest e.
    fn signed(e: &[u8; 32]) -> (Sm2Key, Vec<u8>) {
        let (public, pkey) = key_pair();
        let mut ctx = PkeyCtx::new(&pkey).unwrap();
        ctx.sign_init().unwrap();
        let mut der = Vec::new();
        ctx.sign_to_vec(e, &mut der).unwrap();
        let sig = EcdsaSig::from_der(&der).unwrap();
        let mut raw = sig.r().to_vec_padded(32).unwrap();
        raw.extend(sig.s().to_vec_padded(32).unwrap());
        (public, raw)
    }

    fn item(e: [u8; 32], signature: Vec<u8>) -> Item {
        Item {
            algorithm: Algorithm::Sm2,
            key: KeyInput::Bytes(vec![]),
            message: Message::Digest(e),
            hash: Hash::Sha256,
            signature,
            format: SigFormat::Raw,
            require_low_s: false,
        }
    }

    #[test]
    fn sm2_accepts_openssls_signatures_and_refuses_out_of_range_values() {
        let e = [0x5a; 32];
        let (key, raw) = signed(&e);
        let q = &key;
        let z = [0u8; 32];
        assert_eq!(sm2(&item(e, raw.clone()), q, &z), Ok(()));
        let mut other = e;
        other[0] ^= 1;
        assert_eq!(
            sm2(&item(other, raw.clone()), q, &z),
            Err(Reason::BadSignature)
        );

        let (n, _) = order_and_half(Algorithm::Sm2).unwrap();
        let n = n.to_vec_padded(32).unwrap();
        let r = raw[..32].to_vec();
        let s = raw[32..].to_vec();
        let join = |a: &[u8], b: &[u8]| [a, b].concat();
        // r or s of zero or of n; s = n - r, so that t = (r + s) mod n = 0.
        let mut n_minus_r = BigNum::new().unwrap();
        n_minus_r
            .checked_sub(
                &BigNum::from_slice(&n).unwrap(),
                &BigNum::from_slice(&r).unwrap(),
            )
            .unwrap();
        for bad in [
            join(&[0; 32], &s),
            join(&r, &[0; 32]),
            join(&n, &s),
            join(&r, &n),
            join(&r, &n_minus_r.to_vec_padded(32).unwrap()),
        ] {
            assert_eq!(sm2(&item(e, bad), q, &z), Err(Reason::BadSignature));
        }
        assert_eq!(
            sm2(&item(e, raw[..63].to_vec()), q, &z),
            Err(Reason::BadEncoding)
        );
    }

    /// Our verdict and OpenSSL's agree on OpenSSL's signatures and on mutations of them.
    #[test]
    fn sm2_verdicts_agree_with_openssl_on_mutated_signatures() {
        let mut agreed_valid = 0;
        for round in 0..120u32 {
            let (ours, pkey) = key_pair();
            let mut e = [0u8; 32];
            openssl::rand::rand_bytes(&mut e).unwrap();
            let mut ctx = PkeyCtx::new(&pkey).unwrap();
            ctx.sign_init().unwrap();
            let mut der = Vec::new();
            ctx.sign_to_vec(&e, &mut der).unwrap();
            let sig = EcdsaSig::from_der(&der).unwrap();
            let mut r = sig.r().to_vec_padded(32).unwrap();
            let mut s = sig.s().to_vec_padded(32).unwrap();
            // Leave a third alone; flip one bit of e, r or s in the rest.
            let bit = (round as usize * 37) % 256;
            match round % 6 {
                0 | 1 => {}
                2 | 3 => e[bit / 8] ^= 1 << (bit % 8),
                4 => r[bit / 8] ^= 1 << (bit % 8),
                _ => s[bit / 8] ^= 1 << (bit % 8),
            }
            let theirs = {
                let r = BigNum::from_slice(&r).unwrap();
                let s = BigNum::from_slice(&s).unwrap();
                let der = EcdsaSig::from_private_components(r, s)
                    .unwrap()
                    .to_der()
                    .unwrap();
                let mut v = PkeyCtx::new(&pkey).unwrap();
                v.verify_init().unwrap();
                v.verify(&e, &der).unwrap_or(false)
            };
            let mine = ours.verify(&e, &r[..].try_into().unwrap(), &s[..].try_into().unwrap());
            assert_eq!(mine, theirs, "round {round}");
            agreed_valid += mine as u32;
        }
        assert_eq!(agreed_valid, 40);
    }
}
