//! Ed25519 verification on eight lanes (field arithmetic: `f25519`). Per lane it computes
//! R' = s·B + k·(-A) and answers whether R' encodes to the signature's R, which is what
//! ed25519-dalek's `verify_strict` does after its checks of the encodings (made by the
//! caller, `verify::ed25519`); the tests hold the two to the same answers.
//!
//! Points are extended twisted Edwards coordinates (X:Y:Z:T) on -x² + y² = 1 + d·x²·y²
//! (Hisil-Wong-Carter-Dawson 2008). With a = -1 a square and d not, the addition is
//! complete: no input is exceptional, the identity (0:1:1:0) adds like any point, so a
//! digit 0 picks the identity from the table and no lane ever needs the scalar path.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext, BigNumRef};

use super::ed_input::{d_be, ed_p, EdLane};
use super::f25519::{add, add_lazy, canon, from_u64, mul, pow, sqr, sub};
use super::field::{self, select, Fe};
use super::point::{digit_vector, recode, Digits, DIGITS};
use super::LANES;

pub(super) struct EdConstants {
    pub p_minus_2: [u64; 4],
    /// 2d, in limbs.
    pub d2: [u64; 5],
    /// j·B for j in 0..=16 as (y - x, y + x, 2d·x·y), in limbs; entry 0 is the identity.
    pub b: [[[u64; 5]; 3]; 17],
}

/// An extended point.
#[derive(Clone, Copy)]
struct Ext {
    x: Fe,
    y: Fe,
    z: Fe,
    t: Fe,
}

/// A point ready to be added: (Y - X, Y + X, 2Z, 2d·T).
#[derive(Clone, Copy)]
struct Cached {
    ymx: Fe,
    ypx: Fe,
    z2: Fe,
    t2d: Fe,
}

pub(super) fn constants() -> &'static EdConstants {
    static C: OnceLock<EdConstants> = OnceLock::new();
    C.get_or_init(|| build().expect("Ed25519 constants"))
}

fn le_words(v: &BigNumRef) -> [u64; 4] {
    let mut be = v.to_vec_padded(32).expect("below 2^256");
    be.reverse();
    std::array::from_fn(|i| u64::from_le_bytes(be[8 * i..8 * i + 8].try_into().expect("8")))
}

fn build() -> Result<EdConstants, openssl::error::ErrorStack> {
    let mut ctx = BigNumContext::new()?;
    let p = ed_p()?;
    let modp = |v: &BigNumRef, ctx: &mut BigNumContext| -> Result<BigNum, _> {
        let mut out = BigNum::new()?;
        out.nnmod(v, &p, ctx)?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    let inv = |v: &BigNumRef, ctx: &mut BigNumContext| -> Result<BigNum, _> {
        let mut out = BigNum::new()?;
        out.mod_inverse(v, &p, ctx)?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    let mulm = |a: &BigNumRef, b: &BigNumRef, ctx: &mut BigNumContext| -> Result<BigNum, _> {
        let mut out = BigNum::new()?;
        out.mod_mul(a, b, &p, ctx)?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    let addm = |a: &BigNumRef, b: &BigNumRef, ctx: &mut BigNumContext| -> Result<BigNum, _> {
        let mut out = BigNum::new()?;
        out.mod_add(a, b, &p, ctx)?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    let subm = |a: &BigNumRef, b: &BigNumRef, ctx: &mut BigNumContext| -> Result<BigNum, _> {
        let mut out = BigNum::new()?;
        out.mod_sub(a, b, &p, ctx)?;
        Ok::<_, openssl::error::ErrorStack>(out)
    };
    let d = BigNum::from_slice(d_be())?;
    // B: y = 4/5, x the even root (RFC 8032 §5.1).
    let by = mulm(
        &*BigNum::from_u32(4)?,
        &*inv(&*BigNum::from_u32(5)?, &mut ctx)?,
        &mut ctx,
    )?;
    let bx = BigNum::from_dec_str(
        "15112221349535400772501151409588531511454012693041857206046113283949847762202",
    )?;
    let one = BigNum::from_u32(1)?;
    // Affine addition: x3 = (x1y2 + y1x2)/(1 + d·x1x2y1y2), y3 = (y1y2 + x1x2)/(1 - ...).
    let mut multiples: Vec<(BigNum, BigNum)> = vec![(BigNum::new()?, one.to_owned()?)];
    for _ in 0..16 {
        let (x1, y1) = multiples.last().expect("one entry");
        let dxy = mulm(
            &*mulm(&d, &*mulm(x1, &bx, &mut ctx)?, &mut ctx)?,
            &*mulm(y1, &by, &mut ctx)?,
            &mut ctx,
        )?;
        let xn = addm(
            &*mulm(x1, &by, &mut ctx)?,
            &*mulm(y1, &bx, &mut ctx)?,
            &mut ctx,
        )?;
        let yn = addm(
            &*mulm(y1, &by, &mut ctx)?,
            &*mulm(x1, &bx, &mut ctx)?,
            &mut ctx,
        )?;
        let x3 = mulm(
            &xn,
            &*inv(&*addm(&one, &dxy, &mut ctx)?, &mut ctx)?,
            &mut ctx,
        )?;
        let y3 = mulm(
            &yn,
            &*inv(&*subm(&one, &dxy, &mut ctx)?, &mut ctx)?,
            &mut ctx,
        )?;
        multiples.push((x3, y3));
    }
    let mont = |v: &BigNumRef, ctx: &mut BigNumContext| -> Result<[u64; 5], _> {
        Ok::<_, openssl::error::ErrorStack>(field::limbs52(&le_words(&*modp(v, ctx)?)))
    };
    let d2 = addm(&d, &d, &mut ctx)?;
    let mut b = [[[0u64; 5]; 3]; 17];
    for (entry, (x, y)) in b.iter_mut().zip(&multiples) {
        let xy2d = mulm(&*mulm(x, y, &mut ctx)?, &d2, &mut ctx)?;
        *entry = [
            mont(&*subm(y, x, &mut ctx)?, &mut ctx)?,
            mont(&*addm(y, x, &mut ctx)?, &mut ctx)?,
            mont(&xy2d, &mut ctx)?,
        ];
    }
    Ok(EdConstants {
        p_minus_2: crate::verify::u256::sub(&le_words(&p), &[2, 0, 0, 0]).0,
        d2: mont(&d2, &mut ctx)?,
        b,
    })
}

/// dbl-2008-hwcd with a = -1. T is made only when `with_t` (the last doubling before an
/// addition): the doublings in between never read it.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn dbl(p: &Ext, with_t: bool) -> Ext {
    let a = sqr(&p.x);
    let b = sqr(&p.y);
    let zz = sqr(&p.z);
    let c = add(&zz, &zz);
    let xy = sqr(&add_lazy(&p.x, &p.y));
    let ab = add(&a, &b);
    // E = (X+Y)² - A - B, G = B - A, F = G - C, H = -(A + B).
    let e = sub(&xy, &ab);
    let g = sub(&b, &a);
    let f = sub(&g, &c);
    let h = sub(&field::zero(), &ab);
    Ext {
        x: mul(&e, &f),
        y: mul(&g, &h),
        z: mul(&f, &g),
        t: if with_t { mul(&e, &h) } else { p.t },
    }
}

/// add-2008-hwcd-3 with a = -1 and k = 2d, complete.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add_cached(p: &Ext, q: &Cached) -> Ext {
    let a = mul(&sub(&p.y, &p.x), &q.ymx);
    let b = mul(&add_lazy(&p.y, &p.x), &q.ypx);
    let c = mul(&p.t, &q.t2d);
    let d = mul(&p.z, &q.z2);
    let e = sub(&b, &a);
    let f = sub(&d, &c);
    let g = add(&d, &c);
    let h = add(&b, &a);
    Ext {
        x: mul(&e, &f),
        y: mul(&g, &h),
        z: mul(&f, &g),
        t: mul(&e, &h),
    }
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn cached(p: &Ext, d2: &Fe) -> Cached {
    Cached {
        ymx: sub(&p.y, &p.x),
        ypx: add(&p.y, &p.x),
        z2: add(&p.z, &p.z),
        t2d: mul(&p.t, d2),
    }
}

/// Per lane, the entry of `table` (0..=16) that the digit's magnitude names, negated
/// where the digit is negative: -(x, y) = (-x, y) swaps Y - X with Y + X and negates T.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn pick(table: &[Cached; 17], digits: &Digits, w: usize) -> Cached {
    let d = digit_vector(digits, w);
    let negative = _mm512_cmplt_epi64_mask(d, _mm512_setzero_si512());
    let magnitude = _mm512_abs_epi64(d);
    let mut t = table[0];
    for (k, entry) in table.iter().enumerate().skip(1) {
        let m = _mm512_cmpeq_epi64_mask(magnitude, _mm512_set1_epi64(k as i64));
        t = Cached {
            ymx: select(m, &t.ymx, &entry.ymx),
            ypx: select(m, &t.ypx, &entry.ypx),
            z2: select(m, &t.z2, &entry.z2),
            t2d: select(m, &t.t2d, &entry.t2d),
        };
    }
    Cached {
        ymx: select(negative, &t.ymx, &t.ypx),
        ypx: select(negative, &t.ypx, &t.ymx),
        z2: t.z2,
        t2d: select(negative, &t.t2d, &sub(&field::zero(), &t.t2d)),
    }
}

/// s·B + k·(-A) per lane, projective.
#[target_feature(enable = "avx512f,avx512ifma")]
fn combine(c: &EdConstants, lanes: &[EdLane; LANES]) -> Ext {
    let words = |b: &[u8; 32]| -> [u64; 4] {
        std::array::from_fn(|i| u64::from_le_bytes(b[8 * i..8 * i + 8].try_into().expect("8")))
    };
    let one = from_u64(1);
    let zero = field::zero();
    let d2 = field::splat(&c.d2);
    // -A, extended: (-x, y, 1, -x·y).
    let ax = field::gather(&lanes.each_ref().map(|l| words(&l.ax)));
    let ay = field::gather(&lanes.each_ref().map(|l| words(&l.ay)));
    let nx = sub(&zero, &ax);
    let minus_a = Ext {
        x: nx,
        y: ay,
        z: one,
        t: mul(&nx, &ay),
    };
    let identity = Ext {
        x: zero,
        y: one,
        z: one,
        t: zero,
    };
    let mut multiples = [identity; 17];
    multiples[1] = minus_a;
    let first = cached(&minus_a, &d2);
    for j in 2..17 {
        multiples[j] = if j % 2 == 0 {
            dbl(&multiples[j / 2], true)
        } else {
            add_cached(&multiples[j - 1], &first)
        };
    }
    let a_table: [Cached; 17] = std::array::from_fn(|j| cached(&multiples[j], &d2));
    let b_table: [Cached; 17] = std::array::from_fn(|j| Cached {
        ymx: field::splat(&c.b[j][0]),
        ypx: field::splat(&c.b[j][1]),
        z2: from_u64(2),
        t2d: field::splat(&c.b[j][2]),
    });
    let ds: Digits = lanes.each_ref().map(|l| recode(&words(&l.s)));
    let dk: Digits = lanes.each_ref().map(|l| recode(&words(&l.k)));
    let mut acc = identity;
    for w in (0..DIGITS).rev() {
        if w != DIGITS - 1 {
            for i in 0..5 {
                acc = dbl(&acc, i == 4);
            }
        }
        acc = add_cached(&acc, &pick(&b_table, &ds, w));
        acc = add_cached(&acc, &pick(&a_table, &dk, w));
    }
    acc
}

/// Register sets of eight whose Z^-1 share one exponentiation.
const INVERSION_GROUP: usize = 8;

/// Each lane's verdict (the path has no exceptional cases).
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn verify_sets(sets: &[[EdLane; LANES]]) -> Vec<[bool; LANES]> {
    let c = constants();
    let mut out = Vec::with_capacity(sets.len());
    for group in sets.chunks(INVERSION_GROUP) {
        let points: Vec<Ext> = group.iter().map(|set| combine(c, set)).collect();
        // Z ≠ 0 for every point of the curve (Z = 0 is no point), so the product of all
        // Z has an inverse: prefix products, one exponentiation, back down.
        let mut prefix = Vec::with_capacity(points.len());
        prefix.push(points[0].z);
        for i in 1..points.len() {
            prefix.push(mul(&prefix[i - 1], &points[i].z));
        }
        let mut inv = pow(&prefix[points.len() - 1], &c.p_minus_2);
        let mut z_inv = vec![inv; points.len()];
        for i in (1..points.len()).rev() {
            z_inv[i] = mul(&inv, &prefix[i - 1]);
            inv = mul(&inv, &points[i].z);
        }
        z_inv[0] = inv;
        for ((set, point), zi) in group.iter().zip(&points).zip(&z_inv) {
            let plain = |v: &Fe| field::scatter(&canon(&mul(v, zi)));
            let (x, y) = (plain(&point.x), plain(&point.y));
            out.push(std::array::from_fn(|i| {
                let mut enc = [0u8; 32];
                for (k, word) in y[i].iter().enumerate() {
                    enc[8 * k..8 * k + 8].copy_from_slice(&word.to_le_bytes());
                }
                enc[31] |= ((x[i][0] & 1) as u8) << 7;
                enc == set[i].r
            }));
        }
    }
    out
}
