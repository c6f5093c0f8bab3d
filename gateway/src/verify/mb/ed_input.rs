//! What an Ed25519 lane holds, made on any architecture: A decompressed once per key,
//! and k = SHA-512(R || A || M) mod L per signature (the vector code is in `edwards`).

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext, BigNumRef};

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
/// Done once per key (the engine caches parsed keys): x² = (y² - 1)/(d·y² + 1), the root
/// whose parity the encoding's top bit names.
pub fn decompress(a: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
    let mut ctx = BigNumContext::new().ok()?;
    let p = &ed_p().ok()?;
    let mut y_le = *a;
    let odd = y_le[31] >> 7 == 1;
    y_le[31] &= 0x7f;
    let mut be = y_le;
    be.reverse();
    let y = BigNum::from_slice(&be).ok()?;
    if y >= *p {
        return None;
    }
    let d = BigNum::from_slice(d_be()).ok()?;
    let mut y2 = BigNum::new().ok()?;
    y2.mod_sqr(&y, p, &mut ctx).ok()?;
    let mut num = BigNum::new().ok()?;
    num.mod_sub(&y2, &*BigNum::from_u32(1).ok()?, p, &mut ctx)
        .ok()?;
    let mut den = BigNum::new().ok()?;
    den.mod_mul(&d, &y2, p, &mut ctx).ok()?;
    let mut den1 = BigNum::new().ok()?;
    den1.mod_add(&den, &*BigNum::from_u32(1).ok()?, p, &mut ctx)
        .ok()?;
    let mut inv = BigNum::new().ok()?;
    inv.mod_inverse(&den1, p, &mut ctx).ok()?;
    let mut x2 = BigNum::new().ok()?;
    x2.mod_mul(&num, &inv, p, &mut ctx).ok()?;
    let mut x = BigNum::new().ok()?;
    if x2.num_bits() == 0 {
        if odd {
            return None;
        }
    } else {
        x.mod_sqrt(&x2, p, &mut ctx).ok()?;
        let mut check = BigNum::new().ok()?;
        check.mod_sqr(&x, p, &mut ctx).ok()?;
        if check != x2 {
            return None;
        }
        if x.is_bit_set(0) != odd {
            let mut neg = BigNum::new().ok()?;
            neg.checked_sub(p, &x).ok()?;
            x = neg;
        }
    }
    let le = |v: &BigNumRef| -> Option<[u8; 32]> {
        let mut b = v.to_vec_padded(32).ok()?;
        b.reverse();
        b.try_into().ok()
    };
    Some((le(&x)?, y_le))
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
