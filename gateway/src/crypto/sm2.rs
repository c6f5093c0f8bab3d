//! SM2 signing (GM/T 0003.2 §6.1) for the keys the gateway holds wrapped. The scalar and
//! point arithmetic is RustCrypto's `sm2` crate, which is constant-time; the gateway's own
//! fast SM2 code (`verify::sm2p256`) is variable-time and only ever verifies. Z and e
//! (GM/T 0003.2 §5.5, §6.1 A1-A2) are the caller's: `crate::verify::keys::sm2_z_with_id`.

use sm2::elliptic_curve::ops::{MulByGenerator, Reduce};
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::elliptic_curve::sec1::ToEncodedPoint;
use sm2::elliptic_curve::PrimeField;
use sm2::{FieldBytes, NonZeroScalar, ProjectivePoint, Scalar, U256};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Sm2Error {
    #[error("not an SM2 private key (zero, or not below the group order)")]
    BadKey,
    #[error("no usable nonce drawn")]
    Nonce,
}

/// The scalar of 32 big-endian bytes, if it is a valid private key.
fn scalar(bytes: &[u8; 32]) -> Result<NonZeroScalar, Sm2Error> {
    let s = Option::<Scalar>::from(Scalar::from_repr(*FieldBytes::from_slice(bytes)))
        .ok_or(Sm2Error::BadKey)?;
    Option::from(NonZeroScalar::new(s)).ok_or(Sm2Error::BadKey)
}

/// A new private key from the system's random source (OpenSSL's DRBG), with its public
/// point, uncompressed (65 bytes).
pub fn generate() -> (zeroize::Zeroizing<[u8; 32]>, [u8; 65]) {
    loop {
        let mut d = zeroize::Zeroizing::new([0u8; 32]);
        openssl::rand::rand_bytes(&mut d[..]).expect("OpenSSL's random source");
        if let Ok(public) = public_key(&d) {
            return (d, public);
        }
    }
}

/// d·G, uncompressed.
pub fn public_key(d: &[u8; 32]) -> Result<[u8; 65], Sm2Error> {
    let d = scalar(d)?;
    let point = ProjectivePoint::mul_by_generator(&*d).to_affine();
    let encoded = point.to_encoded_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(encoded.as_bytes());
    Ok(out)
}

/// GM/T 0003.2 §6.1 A4-A7 with the nonce k: r || s, or None when k gives r = 0,
/// r + k = n or s = 0 (the standard's "draw k again").
pub fn sign_with_k(d: &NonZeroScalar, e: &[u8; 32], k: &NonZeroScalar) -> Option<[u8; 64]> {
    let x1 = ProjectivePoint::mul_by_generator(&**k).to_affine().x();
    let e = <Scalar as Reduce<U256>>::reduce_bytes(FieldBytes::from_slice(e));
    let r = e + <Scalar as Reduce<U256>>::reduce_bytes(&x1);
    if bool::from(r.is_zero() | (r + **k).is_zero()) {
        return None;
    }
    let inv = Option::<Scalar>::from((Scalar::ONE + **d).invert())?;
    let s = inv * (**k - r * **d);
    if bool::from(s.is_zero()) {
        return None;
    }
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&r.to_repr());
    out[32..].copy_from_slice(&s.to_repr());
    Some(out)
}

/// Signs e (the SM3 hash of Z || M, or a digest the caller made) with the private key
/// `d`, with a fresh random nonce.
pub fn sign(d: &[u8; 32], e: &[u8; 32]) -> Result<[u8; 64], Sm2Error> {
    let d = scalar(d)?;
    for _ in 0..64 {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        openssl::rand::rand_bytes(&mut k[..]).expect("OpenSSL's random source");
        let Ok(k) = scalar(&k) else { continue };
        if let Some(sig) = sign_with_k(&d, e, &k) {
            return Ok(sig);
        }
    }
    Err(Sm2Error::Nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::keys::{sm2_z_with_id, sm3};

    fn h32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// GM/T 0003.5-2012 Appendix A (GB/T 32918.5-2017): the worked signature on the
    /// recommended curve, ID "1234567812345678", M "message digest".
    #[test]
    fn the_gmt_0003_5_worked_example() {
        let d = h32("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8");
        let public = public_key(&d).unwrap();
        assert_eq!(
            hex::encode_upper(&public[1..]),
            "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020\
             CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
        );
        let z = sm2_z_with_id(b"1234567812345678", &public);
        assert_eq!(
            hex::encode_upper(z),
            "B2E14C5C79C6DF5B85F4FE7ED8DB7A262B9DA7E07CCB0EA9F4747B8CCDA8A4F3"
        );
        let mut m = z.to_vec();
        m.extend_from_slice(b"message digest");
        let e = sm3(&m);
        assert_eq!(
            hex::encode_upper(e),
            "F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640"
        );
        let k = scalar(&h32(
            "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21",
        ))
        .unwrap();
        let sig = sign_with_k(&scalar(&d).unwrap(), &e, &k).unwrap();
        assert_eq!(
            hex::encode_upper(sig),
            "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3\
             B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
        );
    }

    #[test]
    fn random_signatures_verify_with_the_gateways_verifier_and_keys_are_checked() {
        for i in 0..20u8 {
            let (d, public) = generate();
            let e = sm3(&[i; 40]);
            let sig = sign(&d, &e).unwrap();
            let key = crate::verify::sm2p256::Sm2Key::new(
                public[1..33].try_into().unwrap(),
                public[33..].try_into().unwrap(),
            );
            let (r, s) = sig.split_at(32);
            let (r, s) = (r.try_into().unwrap(), s.try_into().unwrap());
            assert!(key.verify(&e, r, s), "{i}");
            let mut other = e;
            other[0] ^= 1;
            assert!(!key.verify(&other, r, s));
        }
        assert_eq!(sign(&[0u8; 32], &[1u8; 32]), Err(Sm2Error::BadKey));
        assert_eq!(public_key(&[0xffu8; 32]), Err(Sm2Error::BadKey));
    }
}
