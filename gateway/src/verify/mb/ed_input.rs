//! What an Ed25519 lane holds, made on any architecture: A decompressed once per key,
//! and k = SHA-512(R || A || M) mod L per signature (the vector code is in `edwards`).

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext};

use super::fe51::Fe;

/// One signature, its encodings already checked: A decompressed (affine, little-endian,
/// canonical), R as encoded in the signature, s < L and k = SHA-512(R || A || M) mod L,
/// little-endian.
#[derive(Debug, Clone, Copy)]
pub struct EdLane {
    pub ax: [u8; 32],
    pub ay: [u8; 32],
    pub r: [u8; 32],
    pub s: [u8; 32],
    pub k: [u8; 32],
}

/// A's affine coordinates (little-endian) from its encoding, or None if it is no point.
/// Done once per key (the engine caches parsed keys), as RFC 8032 5.1.3 decodes:
/// x = u v^3 (u v^7)^((p-5)/8) for u = y^2 - 1, v = d y^2 + 1, times sqrt(-1) where that
/// squares to -u / v instead, then the root whose parity the encoding's top bit names.
pub fn decompress(a: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
    let (d, sqrt_m1) = constants();
    let mut y_le = *a;
    let odd = y_le[31] >> 7 == 1;
    y_le[31] &= 0x7f;
    let y = Fe::from_le(&y_le);
    if y.to_le() != y_le {
        return None; // y >= p
    }
    let y2 = y.sq();
    let u = y2.sub(&Fe::ONE);
    let v = d.mul(&y2).add(&Fe::ONE);
    let v3 = v.sq().mul(&v);
    let v7 = v3.sq().mul(&v);
    let mut x = u.mul(&v3).mul(&u.mul(&v7).pow_p58());
    let vx2 = v.mul(&x.sq());
    if !vx2.equals(&u) {
        if !vx2.equals(&u.neg()) {
            return None;
        }
        x = x.mul(sqrt_m1);
    }
    if x.is_zero() && odd {
        return None;
    }
    if x.is_odd() != odd {
        x = x.neg();
    }
    Some((x.to_le(), y_le))
}

#[cfg(test)]
pub(super) fn constants_for_tests() -> (Fe, Fe) {
    *constants()
}

/// d and sqrt(-1) = 2^((p-1)/4), where (p-1)/4 = 2 (p-5)/8 + 1.
fn constants() -> &'static (Fe, Fe) {
    static C: OnceLock<(Fe, Fe)> = OnceLock::new();
    C.get_or_init(|| {
        let mut d = *d_be();
        d.reverse();
        let two = Fe::ONE.add(&Fe::ONE);
        (Fe::from_le(&d), two.pow_p58().sq().mul(&two))
    })
}

pub(super) fn ed_p() -> Result<BigNum, openssl::error::ErrorStack> {
    let mut p = BigNum::new()?;
    p.lshift(&*BigNum::from_u32(1)?, 255)?;
    p.sub_word(19)?;
    Ok(p)
}

/// The lane of a signature whose encodings the strict checks accepted
/// (`verify::ed25519::parse_signature`, the key's own checks): k = SHA-512(R || A || M)
/// mod L. `point`: A's affine coordinates from `decompress`.
pub fn lane(
    key: &[u8; 32],
    point: &([u8; 32], [u8; 32]),
    message: &[u8],
    signature: &[u8; 64],
) -> EdLane {
    let r: [u8; 32] = signature[..32].try_into().expect("32 bytes");
    let s: [u8; 32] = signature[32..].try_into().expect("32 bytes");
    let mut h = openssl::sha::Sha512::new();
    h.update(&r);
    h.update(key);
    h.update(message);
    let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&h.finish()).to_bytes();
    EdLane {
        ax: point.0,
        ay: point.1,
        r,
        s,
        k,
    }
}

/// d = -121665 / 121666 mod p (RFC 8032), big-endian.
pub(super) fn d_be() -> &'static [u8; 32] {
    static D: OnceLock<[u8; 32]> = OnceLock::new();
    D.get_or_init(|| {
        let d = || -> Result<[u8; 32], openssl::error::ErrorStack> {
            let mut ctx = BigNumContext::new()?;
            let p = ed_p()?;
            let (mut minus, mut inv, mut d) = (BigNum::new()?, BigNum::new()?, BigNum::new()?);
            minus.checked_sub(&p, &*BigNum::from_u32(121_665)?)?;
            inv.mod_inverse(&*BigNum::from_u32(121_666)?, &p, &mut ctx)?;
            d.mod_mul(&minus, &inv, &p, &mut ctx)?;
            Ok(d.to_vec_padded(32)?.try_into().expect("32 bytes"))
        };
        d().expect("Ed25519's d")
    })
}
