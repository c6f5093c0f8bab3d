//! SM2 signature verification on the sm2p256v1 curve (GB/T 32918), fast: field arithmetic
//! from fiat-crypto (machine-checked Montgomery code), Jacobian formulas for a = -3, a
//! fixed table of the generator's odd multiples built once, a per-key table built when the
//! key is parsed (keys are cached), and interleaved wNAF so s·G + t·Q shares its doublings.
//! OpenSSL 3.0 has no specialised SM2 code (its generic BIGNUM curve runs about 4,500
//! verifies/s here) and the RustCrypto `sm2` crate is slower still; this is why the
//! curve is written out here. Verification touches only public data, so nothing here needs
//! to run in constant time. Every result is cross-checked against OpenSSL in the tests.

use std::sync::OnceLock;

use super::u256::{self, add_mod, is_zero, lt, sub_mod};
use fiat_crypto::sm2_64::{
    fiat_sm2_add, fiat_sm2_from_bytes, fiat_sm2_from_montgomery,
    fiat_sm2_montgomery_domain_field_element, fiat_sm2_mul,
    fiat_sm2_non_montgomery_domain_field_element, fiat_sm2_square, fiat_sm2_sub,
    fiat_sm2_to_montgomery,
};

type Limbs = [u64; 4];

/// A field element in Montgomery form, always fully reduced (fiat's outputs are).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fe(Limbs);

const ZERO: Fe = Fe([0; 4]);

impl Fe {
    fn from_limbs(v: &Limbs) -> Fe {
        let mut out = fiat_sm2_montgomery_domain_field_element([0; 4]);
        fiat_sm2_to_montgomery(&mut out, &fiat_sm2_non_montgomery_domain_field_element(*v));
        Fe(out.0)
    }

    /// From 32 big-endian bytes, which must encode a value below p.
    fn from_be(bytes: &[u8; 32]) -> Fe {
        let mut le = *bytes;
        le.reverse();
        let mut limbs = [0u64; 4];
        fiat_sm2_from_bytes(&mut limbs, &le);
        Fe::from_limbs(&limbs)
    }

    fn mul(&self, o: &Fe) -> Fe {
        let mut out = fiat_sm2_montgomery_domain_field_element([0; 4]);
        fiat_sm2_mul(
            &mut out,
            &fiat_sm2_montgomery_domain_field_element(self.0),
            &fiat_sm2_montgomery_domain_field_element(o.0),
        );
        Fe(out.0)
    }

    fn sq(&self) -> Fe {
        let mut out = fiat_sm2_montgomery_domain_field_element([0; 4]);
        fiat_sm2_square(&mut out, &fiat_sm2_montgomery_domain_field_element(self.0));
        Fe(out.0)
    }

    fn add(&self, o: &Fe) -> Fe {
        let mut out = fiat_sm2_montgomery_domain_field_element([0; 4]);
        fiat_sm2_add(
            &mut out,
            &fiat_sm2_montgomery_domain_field_element(self.0),
            &fiat_sm2_montgomery_domain_field_element(o.0),
        );
        Fe(out.0)
    }

    fn sub(&self, o: &Fe) -> Fe {
        let mut out = fiat_sm2_montgomery_domain_field_element([0; 4]);
        fiat_sm2_sub(
            &mut out,
            &fiat_sm2_montgomery_domain_field_element(self.0),
            &fiat_sm2_montgomery_domain_field_element(o.0),
        );
        Fe(out.0)
    }

    fn dbl(&self) -> Fe {
        self.add(self)
    }

    fn neg(&self) -> Fe {
        ZERO.sub(self)
    }

    fn is_zero(&self) -> bool {
        self.0 == [0; 4]
    }

    /// Big-endian, out of Montgomery form.
    fn to_be(self) -> [u8; 32] {
        let mut out = fiat_sm2_non_montgomery_domain_field_element([0; 4]);
        fiat_sm2_from_montgomery(&mut out, &fiat_sm2_montgomery_domain_field_element(self.0));
        u256::to_be(&out.0)
    }

    fn sq_n(&self, n: usize) -> Fe {
        let mut t = *self;
        for _ in 0..n {
            t = t.sq();
        }
        t
    }

    /// self^(2^31 - 1) and self^(2^32 - 1): the runs of ones that p's exponents are
    /// made of (p = 2^256 - 2^224 - 2^96 + 2^64 - 1).
    fn ones_31_32(&self) -> (Fe, Fe) {
        let x2 = self.sq().mul(self);
        let x3 = x2.sq().mul(self);
        let x6 = x3.sq_n(3).mul(&x3);
        let x12 = x6.sq_n(6).mul(&x6);
        let x15 = x12.sq_n(3).mul(&x3);
        let x30 = x15.sq_n(15).mul(&x15);
        let x31 = x30.sq().mul(self);
        (x31, x31.sq().mul(self))
    }

    /// t shifted left by 128 bits of exponent, all ones.
    fn then_128_ones(mut t: Fe, x32: &Fe) -> Fe {
        for _ in 0..4 {
            t = t.sq_n(32).mul(x32);
        }
        t
    }

    /// self^(p-2) = 1/self (0 for 0). p - 2 in bits, from the top: 31 ones, a zero,
    /// 128 ones, 32 zeros, 62 ones, 0, 1. An addition chain of 256 squarings and 16
    /// multiplications; square-and-multiply over the bits took 222 multiplications and
    /// was a third of building a key's table.
    fn invert(&self) -> Fe {
        let (x31, x32) = self.ones_31_32();
        let t = Fe::then_128_ones(x31.sq(), &x32);
        let t = t.sq_n(32).sq_n(31).mul(&x31).sq_n(31).mul(&x31);
        t.sq_n(2).mul(self)
    }

    /// A square root, if there is one: p ≡ 3 (mod 4), so it is self^((p+1)/4).
    /// (p+1)/4 in bits, from the top: 31 ones, a zero, 128 ones, 31 zeros, a one, 62 zeros.
    fn sqrt(&self) -> Option<Fe> {
        let (x31, x32) = self.ones_31_32();
        let t = Fe::then_128_ones(x31.sq(), &x32);
        let root = t.sq_n(31).sq().mul(self).sq_n(62);
        (root.sq() == *self).then_some(root)
    }

    /// Whether the lowest bit of the (plain, not Montgomery) value is set: SEC1's y parity.
    fn is_odd(&self) -> bool {
        self.to_be()[31] & 1 == 1
    }
}

/// The field prime p and the group order n, little-endian 64-bit limbs.
const P: Limbs = [
    0xffff_ffff_ffff_ffff,
    0xffff_ffff_0000_0000,
    0xffff_ffff_ffff_ffff,
    0xffff_fffe_ffff_ffff,
];
const N: Limbs = [
    0x53bb_f409_39d5_4123,
    0x7203_df6b_21c6_052b,
    0xffff_ffff_ffff_ffff,
    0xffff_fffe_ffff_ffff,
];
/// b of y² = x³ - 3x + b.
const B: [u8; 32] = hex32("28e9fa9e9d9f5e344d5a9e4bcf6509a7f39789f515ab8f92ddbcbd414d940e93");
const GX: [u8; 32] = hex32("32c4ae2c1f1981195f9904466a39c9948fe30bbff2660be1715a4589334c74c7");
const GY: [u8; 32] = hex32("bc3736a2f4f6779c59bdcee36b692153d0a9877cc62a474002df32e52139f0a0");

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("not hex"),
    }
}

/// A point in Jacobian coordinates; Z = 0 is the point at infinity.
#[derive(Clone, Copy)]
struct Jacobian {
    x: Fe,
    y: Fe,
    z: Fe,
}

/// A finite point in affine coordinates (the tables hold these).
#[derive(Clone, Copy)]
struct Affine {
    x: Fe,
    y: Fe,
}

const INFINITY: Jacobian = Jacobian {
    x: ZERO,
    y: ZERO,
    z: ZERO,
};

impl Affine {
    fn neg(&self) -> Affine {
        Affine {
            x: self.x,
            y: self.y.neg(),
        }
    }

    fn to_jacobian(self) -> Jacobian {
        Jacobian {
            x: self.x,
            y: self.y,
            z: one(),
        }
    }
}

fn one() -> Fe {
    static ONE: OnceLock<Fe> = OnceLock::new();
    *ONE.get_or_init(|| Fe::from_limbs(&[1, 0, 0, 0]))
}

impl Jacobian {
    fn is_infinity(&self) -> bool {
        self.z.is_zero()
    }

    /// dbl-2001-b (a = -3): 3M + 5S.
    fn double(&self) -> Jacobian {
        if self.is_infinity() || self.y.is_zero() {
            return INFINITY;
        }
        let delta = self.z.sq();
        let gamma = self.y.sq();
        let beta = self.x.mul(&gamma);
        let t = self.x.sub(&delta).mul(&self.x.add(&delta));
        let alpha = t.dbl().add(&t);
        let beta4 = beta.dbl().dbl();
        let x3 = alpha.sq().sub(&beta4.dbl());
        let z3 = self.y.add(&self.z).sq().sub(&gamma).sub(&delta);
        let gamma2_8 = gamma.sq().dbl().dbl().dbl();
        let y3 = alpha.mul(&beta4.sub(&x3)).sub(&gamma2_8);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }

    /// madd-2007-bl: self + an affine point, 7M + 4S.
    fn add_affine(&self, q: &Affine) -> Jacobian {
        if self.is_infinity() {
            return q.to_jacobian();
        }
        let z1z1 = self.z.sq();
        let u2 = q.x.mul(&z1z1);
        let s2 = q.y.mul(&self.z).mul(&z1z1);
        let h = u2.sub(&self.x);
        let r = s2.sub(&self.y).dbl();
        if h.is_zero() {
            return if r.is_zero() { self.double() } else { INFINITY };
        }
        let hh = h.sq();
        let i = hh.dbl().dbl();
        let j = h.mul(&i);
        let v = self.x.mul(&i);
        let x3 = r.sq().sub(&j).sub(&v.dbl());
        let y3 = r.mul(&v.sub(&x3)).sub(&self.y.mul(&j).dbl());
        let z3 = self.z.add(&h).sq().sub(&z1z1).sub(&hh);
        Jacobian {
            x: x3,
            y: y3,
            z: z3,
        }
    }
}

/// Odd multiples P, 3P, 5P, ... (2^(w-1) - 1)P, in affine form, for a window of w bits.
fn odd_multiples(p: Affine, w: u32) -> Vec<Affine> {
    let count = 1usize << (w - 2);
    let two_p = p.to_jacobian().double();
    let mut jac = Vec::with_capacity(count);
    let mut cur = p.to_jacobian();
    jac.push(cur);
    for _ in 1..count {
        cur = add_jacobian(&cur, &two_p);
        jac.push(cur);
    }
    // One inversion for all (Montgomery's trick); none is infinity: P has prime order n.
    let mut prefix = Vec::with_capacity(count);
    let mut acc = one();
    for j in &jac {
        prefix.push(acc);
        acc = acc.mul(&j.z);
    }
    let mut inv = acc.invert();
    let mut out = vec![p; count];
    for k in (0..count).rev() {
        let zinv = inv.mul(&prefix[k]);
        inv = inv.mul(&jac[k].z);
        let zinv2 = zinv.sq();
        out[k] = Affine {
            x: jac[k].x.mul(&zinv2),
            y: jac[k].y.mul(&zinv2.mul(&zinv)),
        };
    }
    out
}

/// add-2007-bl, only for building tables (adds of the same point never happen there).
fn add_jacobian(a: &Jacobian, b: &Jacobian) -> Jacobian {
    let z1z1 = a.z.sq();
    let z2z2 = b.z.sq();
    let u1 = a.x.mul(&z2z2);
    let u2 = b.x.mul(&z1z1);
    let s1 = a.y.mul(&b.z).mul(&z2z2);
    let s2 = b.y.mul(&a.z).mul(&z1z1);
    let h = u2.sub(&u1);
    let r = s2.sub(&s1).dbl();
    if h.is_zero() {
        return if r.is_zero() { a.double() } else { INFINITY };
    }
    let i = h.dbl().sq();
    let j = h.mul(&i);
    let v = u1.mul(&i);
    let x3 = r.sq().sub(&j).sub(&v.dbl());
    let y3 = r.mul(&v.sub(&x3)).sub(&s1.mul(&j).dbl());
    let z3 = a.z.add(&b.z).sq().sub(&z1z1).sub(&z2z2).mul(&h);
    Jacobian {
        x: x3,
        y: y3,
        z: z3,
    }
}

/// Window widths: the generator's table is built once, so it can be large.
const G_WINDOW: u32 = 8;
const KEY_WINDOW: u32 = 5;

fn g_table() -> &'static [Affine] {
    static TABLE: OnceLock<Vec<Affine>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let g = Affine {
            x: Fe::from_be(&GX),
            y: Fe::from_be(&GY),
        };
        odd_multiples(g, G_WINDOW)
    })
}

/// Width-w NAF of a 256-bit scalar, least significant digit first (257 digits).
fn wnaf(k: &Limbs, w: u32) -> [i16; 257] {
    let mut digits = [0i16; 257];
    // 5 limbs, so the carry out of bit 255 has room.
    let mut v = [k[0], k[1], k[2], k[3], 0];
    let window = 1i64 << w;
    let mut i = 0;
    while v.iter().any(|&l| l != 0) {
        if v[0] & 1 == 1 {
            let mut d = (v[0] & (window as u64 - 1)) as i64;
            if d >= window / 2 {
                d -= window;
            }
            digits[i] = d as i16;
            // v -= d
            if d > 0 {
                sub_small(&mut v, d as u64);
            } else {
                add_small(&mut v, (-d) as u64);
            }
        }
        shr1(&mut v);
        i += 1;
    }
    digits
}

fn sub_small(v: &mut [u64; 5], d: u64) {
    let (r, mut borrow) = v[0].overflowing_sub(d);
    v[0] = r;
    for l in v.iter_mut().skip(1) {
        if !borrow {
            break;
        }
        let (r, b) = l.overflowing_sub(1);
        *l = r;
        borrow = b;
    }
}

fn add_small(v: &mut [u64; 5], d: u64) {
    let (r, mut carry) = v[0].overflowing_add(d);
    v[0] = r;
    for l in v.iter_mut().skip(1) {
        if !carry {
            break;
        }
        let (r, c) = l.overflowing_add(1);
        *l = r;
        carry = c;
    }
}

fn shr1(v: &mut [u64; 5]) {
    for i in 0..5 {
        v[i] = (v[i] >> 1) | if i < 4 { v[i + 1] << 63 } else { 0 };
    }
}

fn table_entry(table: &[Affine], d: i16) -> Affine {
    let p = table[(d.unsigned_abs() as usize) / 2];
    if d < 0 {
        p.neg()
    } else {
        p
    }
}

/// A public key's affine x || y (big-endian) from SEC1 bytes: 65 uncompressed (tag 4) or
/// 33 compressed (tag 2 or 3, the parity of y). None unless both coordinates are below p
/// and the point is on the curve; on this prime-order curve any such point is a valid
/// public key. It accepts what OpenSSL's `EC_POINT_oct2point` accepts; OpenSSL has only
/// generic code for this curve, and a profile put its decoding at about two fifths of
/// what a new key cost.
pub fn decode_point(sec1: &[u8]) -> Option<[u8; 64]> {
    let coordinate = |b: &[u8]| -> Option<Fe> {
        let b: &[u8; 32] = b.try_into().ok()?;
        lt(&u256::from_be(b), &P).then(|| Fe::from_be(b))
    };
    let (tag, x) = (*sec1.first()?, coordinate(sec1.get(1..33)?)?);
    // y² = x³ - 3x + b
    let rhs = x.sq().mul(&x).sub(&x.dbl().add(&x)).add(&Fe::from_be(&B));
    let y = match (tag, sec1.len()) {
        (4, 65) => {
            let y = coordinate(&sec1[33..])?;
            (y.sq() == rhs).then_some(y)?
        }
        (2 | 3, 33) => {
            let y = rhs.sqrt()?;
            // y = 0 has no other parity to give; the tag must say even.
            if y.is_odd() == (tag == 3) {
                y
            } else if y.is_zero() {
                return None;
            } else {
                y.neg()
            }
        }
        _ => return None,
    };
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(&x.to_be());
    out[32..].copy_from_slice(&y.to_be());
    Some(out)
}

/// A public key ready for verification: its odd multiples, affine.
pub struct Sm2Key {
    table: Vec<Affine>,
}

impl Sm2Key {
    /// From the affine coordinates of a point already checked to be on the curve (and not
    /// at infinity), by `decode_point` or by OpenSSL.
    pub fn new(x: &[u8; 32], y: &[u8; 32]) -> Sm2Key {
        let q = Affine {
            x: Fe::from_be(x),
            y: Fe::from_be(y),
        };
        Sm2Key {
            table: odd_multiples(q, KEY_WINDOW),
        }
    }

    /// s·G + t·Q in Jacobian coordinates.
    fn lincomb(&self, s: &Limbs, t: &Limbs) -> Jacobian {
        let ns = wnaf(s, G_WINDOW);
        let nt = wnaf(t, KEY_WINDOW);
        let g = g_table();
        let top = (0..257).rev().find(|&i| ns[i] != 0 || nt[i] != 0);
        let mut acc = INFINITY;
        for i in (0..=top.unwrap_or(0)).rev() {
            acc = acc.double();
            if ns[i] != 0 {
                acc = acc.add_affine(&table_entry(g, ns[i]));
            }
            if nt[i] != 0 {
                acc = acc.add_affine(&table_entry(&self.table, nt[i]));
            }
        }
        acc
    }

    /// GB/T 32918.2 verification of (r, s), big-endian, over e = SM3(Z || M): with
    /// t = (r + s) mod n and (x1, y1) = s·G + t·Q, valid when r = (e + x1) mod n, for r and
    /// s in [1, n-1] and t != 0.
    pub fn verify(&self, e: &[u8; 32], r: &[u8; 32], s: &[u8; 32]) -> bool {
        let (r, s) = (u256::from_be(r), u256::from_be(s));
        if is_zero(&r) || is_zero(&s) || !lt(&r, &N) || !lt(&s, &N) {
            return false;
        }
        let t = add_mod(&r, &s, &N);
        if is_zero(&t) {
            return false;
        }
        let point = self.lincomb(&s, &t);
        if point.is_infinity() {
            return false;
        }
        // x1 ≡ r - e (mod n) with x1 < p: x1 is v or v + n. Compared projectively,
        // X = x1·Z², so no inversion is needed.
        let mut e = u256::from_be(e);
        if !lt(&e, &N) {
            e = u256::sub(&e, &N).0;
        }
        let v = sub_mod(&r, &e, &N);
        let z2 = point.z.sq();
        if Fe::from_limbs(&v).mul(&z2) == point.x {
            return true;
        }
        let (v2, carry) = u256::add(&v, &N);
        !carry && lt(&v2, &P) && Fe::from_limbs(&v2).mul(&z2) == point.x
    }

    /// The affine x of s·G + t·Q, big-endian; None at infinity. For tests against OpenSSL.
    #[cfg(test)]
    fn lincomb_x(&self, s: &[u8; 32], t: &[u8; 32]) -> Option<[u8; 32]> {
        let p = self.lincomb(&u256::from_be(s), &u256::from_be(t));
        if p.is_infinity() {
            return None;
        }
        let zinv = p.z.invert();
        let x = p.x.mul(&zinv.sq());
        // Out of Montgomery form: multiply by 1 in plain form.
        let plain = x.mul(&Fe([1, 0, 0, 0]));
        Some(u256::to_be(&plain.0))
    }
}

#[cfg(test)]
mod tests {
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::ec::{EcGroup, EcKey, EcPoint, EcPointRef, PointConversionForm};
    use openssl::nid::Nid;

    use super::*;

    fn be32(b: &BigNum) -> [u8; 32] {
        b.to_vec_padded(32).unwrap().try_into().unwrap()
    }

    fn key_of(group: &EcGroup, q: &EcPointRef, ctx: &mut BigNumContext) -> Sm2Key {
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        q.affine_coordinates(group, &mut x, &mut y, ctx).unwrap();
        Sm2Key::new(&be32(&x), &be32(&y))
    }

    #[test]
    fn linear_combinations_match_openssl() {
        let group = EcGroup::from_curve_name(Nid::SM2).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let mut n = BigNum::new().unwrap();
        group.order(&mut n, &mut ctx).unwrap();
        assert_eq!(u256::to_be(&N).to_vec(), n.to_vec_padded(32).unwrap());
        let n_minus = |k: u32| {
            let mut v = BigNum::new().unwrap();
            v.checked_sub(&n, &BigNum::from_u32(k).unwrap()).unwrap();
            v
        };
        let mut scalars: Vec<BigNum> = [0u32, 1, 2, 3, 15, 16, 17, 127, 128, 255]
            .iter()
            .map(|&k| BigNum::from_u32(k).unwrap())
            .collect();
        scalars.extend([n_minus(1), n_minus(2), n_minus(128)]);
        for _ in 0..40 {
            let mut k = BigNum::new().unwrap();
            n.rand_range(&mut k).unwrap();
            scalars.push(k);
        }
        for round in 0..6 {
            let key = EcKey::generate(&group).unwrap();
            let q = key.public_key();
            let ours = key_of(&group, q, &mut ctx);
            for (i, s) in scalars.iter().enumerate() {
                let t = &scalars[(i * 7 + round * 3) % scalars.len()];
                let mut want = EcPoint::new(&group).unwrap();
                want.mul_full(&group, s, q, t, &mut ctx).unwrap();
                let want_x = if want.is_infinity(&group) {
                    None
                } else {
                    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
                    want.affine_coordinates(&group, &mut x, &mut y, &mut ctx)
                        .unwrap();
                    Some(be32(&x))
                };
                assert_eq!(ours.lincomb_x(&be32(s), &be32(t)), want_x, "s={s} t={t}");
            }
        }
        // t·Q = -s·G exactly: the sum is the point at infinity (Q = 5G, s = n - 5, t = 1).
        let mut q = EcPoint::new(&group).unwrap();
        q.mul_generator2(&group, &BigNum::from_u32(5).unwrap(), &mut ctx)
            .unwrap();
        let ours = key_of(&group, &q, &mut ctx);
        assert_eq!(
            ours.lincomb_x(&be32(&n_minus(5)), &be32(&BigNum::from_u32(1).unwrap())),
            None
        );
        // ...and a doubling inside an addition: Q = G, s = t = 1 gives 2G.
        let ours = key_of(&group, group.generator_opt().unwrap(), &mut ctx);
        let mut two_g = EcPoint::new(&group).unwrap();
        two_g
            .mul_generator2(&group, &BigNum::from_u32(2).unwrap(), &mut ctx)
            .unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        two_g
            .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
            .unwrap();
        let one = be32(&BigNum::from_u32(1).unwrap());
        assert_eq!(ours.lincomb_x(&one, &one), Some(be32(&x)));
    }

    /// self^e by square-and-multiply over the bits of e: the reference for the chains.
    fn pow_bits(a: &Fe, e: &Limbs) -> Fe {
        let mut acc = one();
        for i in (0..256).rev() {
            acc = acc.sq();
            if (e[i / 64] >> (i % 64)) & 1 == 1 {
                acc = acc.mul(a);
            }
        }
        acc
    }

    fn random_fe() -> Fe {
        let mut b = [0u8; 32];
        openssl::rand::rand_bytes(&mut b).unwrap();
        b[0] &= 0x7f; // below p
        Fe::from_be(&b)
    }

    #[test]
    fn the_addition_chains_are_the_exponents_they_claim() {
        let p_minus_2 = u256::sub(&P, &[2, 0, 0, 0]).0;
        // (p + 1) / 4: p + 1 does not carry out of 256 bits, and its two low bits are 0.
        let p1 = u256::add(&P, &[1, 0, 0, 0]).0;
        let quarter = [
            (p1[0] >> 2) | (p1[1] << 62),
            (p1[1] >> 2) | (p1[2] << 62),
            (p1[2] >> 2) | (p1[3] << 62),
            p1[3] >> 2,
        ];
        let mut edge = vec![ZERO, one(), one().neg(), Fe::from_be(&B)];
        edge.extend((0..200).map(|_| random_fe()));
        let mut roots = 0;
        for a in edge {
            assert!(pow_bits(&a, &p_minus_2) == a.invert());
            if !a.is_zero() {
                assert!(a.mul(&a.invert()) == one());
            }
            let candidate = pow_bits(&a, &quarter);
            match a.sqrt() {
                Some(r) => {
                    assert!(r == candidate && r.sq() == a);
                    roots += 1;
                }
                None => assert!(candidate.sq() != a),
            }
            let square = a.sq();
            let r = square.sqrt().expect("a square has a root");
            assert!(r == a || r == a.neg());
        }
        // About half of all field elements are squares.
        assert!((60..=150).contains(&roots), "{roots} of 204 had roots");
        assert!(ZERO.invert() == ZERO);
    }

    /// The decoder accepts exactly what OpenSSL does, with the same point, on keys in both
    /// encodings, on random x for either parity (about half are on the curve), on points
    /// with y off by one, and on coordinates written as x + p (the same value mod p).
    #[test]
    fn points_decode_as_openssl_decodes_them() {
        let group = EcGroup::from_curve_name(Nid::SM2).unwrap();
        let mut ctx = BigNumContext::new().unwrap();
        let openssl = |sec1: &[u8], ctx: &mut BigNumContext| -> Option<[u8; 64]> {
            let point = EcPoint::from_bytes(&group, sec1, ctx).ok()?;
            let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
            point.affine_coordinates(&group, &mut x, &mut y, ctx).ok()?;
            let mut out = [0u8; 64];
            out[..32].copy_from_slice(&be32(&x));
            out[32..].copy_from_slice(&be32(&y));
            Some(out)
        };
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for _ in 0..300 {
            let key = EcKey::generate(&group).unwrap();
            for form in [
                PointConversionForm::UNCOMPRESSED,
                PointConversionForm::COMPRESSED,
            ] {
                cases.push(key.public_key().to_bytes(&group, form, &mut ctx).unwrap());
            }
            let mut off = cases[cases.len() - 2].clone();
            off[64] ^= 1;
            cases.push(off);
            let mut x = [0u8; 32];
            openssl::rand::rand_bytes(&mut x).unwrap();
            for tag in [2u8, 3] {
                let mut sec1 = vec![tag];
                sec1.extend_from_slice(&x);
                cases.push(sec1);
            }
        }
        // x + p fits in 256 bits for small x; OpenSSL refuses it.
        for small in 0u64..64 {
            for tag in [2u8, 3] {
                let x = u256::add(&P, &[small, 0, 0, 0]).0;
                let mut sec1 = vec![tag];
                sec1.extend_from_slice(&u256::to_be(&x));
                cases.push(sec1.clone());
                sec1[1..].copy_from_slice(&u256::to_be(&[small, 0, 0, 0]));
                cases.push(sec1);
            }
        }
        let mut accepted = 0;
        for sec1 in &cases {
            let want = openssl(sec1, &mut ctx);
            assert_eq!(decode_point(sec1), want, "{}", hex::encode(sec1));
            accepted += usize::from(want.is_some());
        }
        // Every generated key in both forms, and about half of the random x.
        assert!(accepted > 600 + 200, "{accepted} of {}", cases.len());
        // An uncompressed point with y + p, and a wrong length for each tag.
        let key = EcKey::generate(&group).unwrap();
        let good = key
            .public_key()
            .to_bytes(&group, PointConversionForm::UNCOMPRESSED, &mut ctx)
            .unwrap();
        let y = u256::from_be(good[33..].try_into().unwrap());
        let (y_plus_p, carry) = u256::add(&y, &P);
        if !carry {
            let mut sec1 = good.clone();
            sec1[33..].copy_from_slice(&u256::to_be(&y_plus_p));
            assert_eq!(decode_point(&sec1), None);
        }
        assert_eq!(decode_point(&good[..33]), None);
        assert_eq!(decode_point(&[2u8; 65]), None);
        assert_eq!(decode_point(&[]), None);
    }

    #[test]
    fn wnaf_digits_sum_back_to_the_scalar() {
        for k in [
            [0u64, 0, 0, 0],
            [1, 0, 0, 0],
            [u64::MAX; 4],
            N,
            [0x1234_5678_9abc_def0, 7, 0, 1 << 63],
        ] {
            for w in [KEY_WINDOW, G_WINDOW] {
                let d = wnaf(&k, w);
                // Rebuild with 320-bit arithmetic: sum d_i 2^i.
                let mut acc = num(&[0; 5]);
                for i in (0..257).rev() {
                    acc = acc.clone() + acc;
                    acc += d[i] as i128;
                }
                assert_eq!(acc, num(&[k[0], k[1], k[2], k[3], 0]), "w={w}");
                // Odd digits below 2^(w-1) in size, at least w - 1 zeros after each.
                for i in 0..257 {
                    if d[i] != 0 {
                        assert!(d[i] % 2 != 0 && (d[i].unsigned_abs() as u32) < (1 << (w - 1)));
                        assert!(d[i + 1..(i + w as usize).min(257)].iter().all(|&x| x == 0));
                    }
                }
            }
        }
    }

    /// Little arbitrary-precision helper for the test: a signed big integer as i128 chunks
    /// would overflow, so use OpenSSL's BigNum behind a tiny wrapper.
    #[derive(Clone, PartialEq, Debug)]
    struct Num(String);
    impl std::ops::Add for Num {
        type Output = Num;
        fn add(self, o: Num) -> Num {
            let (a, b) = (bn(&self), bn(&o));
            let mut s = BigNum::new().unwrap();
            s.checked_add(&a, &b).unwrap();
            Num(s.to_dec_str().unwrap().to_string())
        }
    }
    impl std::ops::AddAssign<i128> for Num {
        fn add_assign(&mut self, d: i128) {
            let a = bn(self);
            let mut b = BigNum::from_dec_str(&d.unsigned_abs().to_string()).unwrap();
            b.set_negative(d < 0);
            let mut s = BigNum::new().unwrap();
            s.checked_add(&a, &b).unwrap();
            *self = Num(s.to_dec_str().unwrap().to_string());
        }
    }
    fn bn(n: &Num) -> BigNum {
        BigNum::from_dec_str(&n.0).unwrap()
    }
    fn num(l: &[u64; 5]) -> Num {
        let mut bytes = Vec::new();
        for x in l.iter().rev() {
            bytes.extend(x.to_be_bytes());
        }
        Num(BigNum::from_slice(&bytes)
            .unwrap()
            .to_dec_str()
            .unwrap()
            .to_string())
    }
}
