//! Jacobian points on eight lanes and linear combinations such as u1·G + u2·Q with signed
//! 5-bit windows (Booth recoding): G's multiples are one shared affine table, each lane's
//! Q gets its own table of Q..16·Q, negated per lane by the digit's sign. Lanes take different branches through masks, never through control
//! flow. The addition formulas cannot add a point to itself or to its negative; a lane
//! that meets that case (H = 0 with both points finite) is reported as exceptional and
//! the caller verifies it on the scalar path, so every lane's answer is exact.

use std::arch::x86_64::*;

use super::field::{add, add_lazy, is_zero, mul, select, sqr, sub, Fe, Modulus};

/// A curve's constants in the form the lanes use.
pub struct CurveMb {
    pub p: Modulus,
    /// y² = x³ + a·x + b with a = -3 (P-256, SM2) or a = 0 (secp256k1).
    pub a_minus3: bool,
    /// R mod p: one, in Montgomery form.
    pub one: [u64; 5],
}

#[derive(Clone, Copy)]
pub struct Jac {
    pub x: Fe,
    pub y: Fe,
    pub z: Fe,
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn dbl(p: &Jac, c: &CurveMb) -> Jac {
    let md = &c.p;
    if c.a_minus3 {
        // dbl-2001-b
        let delta = sqr(&p.z, md);
        let gamma = sqr(&p.y, md);
        // Sums marked lazy feed only products, which take them below 4m; small multiples
        // are taken inside products where that saves additions (4β = 2X·2γ, 8γ² = 2(2γ)²).
        let gamma2 = add_lazy(&gamma, &gamma);
        let beta4 = mul(&add_lazy(&p.x, &p.x), &gamma2, md);
        let t = mul(&sub(&p.x, &delta, md), &add_lazy(&p.x, &delta), md);
        let alpha = add_lazy(&add(&t, &t, md), &t);
        let beta8 = add(&beta4, &beta4, md);
        let x3 = sub(&sqr(&alpha, md), &beta8, md);
        let yz = add_lazy(&p.y, &p.z);
        let z3 = sub(&sub(&sqr(&yz, md), &gamma, md), &delta, md);
        let g2x4 = sqr(&gamma2, md);
        let g2x8 = add(&g2x4, &g2x4, md);
        let y3 = sub(&mul(&alpha, &sub(&beta4, &x3, md), md), &g2x8, md);
        Jac {
            x: x3,
            y: y3,
            z: z3,
        }
    } else {
        // dbl-2009-l
        let a = sqr(&p.x, md);
        let b = sqr(&p.y, md);
        let cc = sqr(&b, md);
        let xb = add_lazy(&p.x, &b);
        let t = sub(&sub(&sqr(&xb, md), &a, md), &cc, md);
        let d = add(&t, &t, md);
        let e = add_lazy(&add(&a, &a, md), &a);
        let f = sqr(&e, md);
        let x3 = sub(&sub(&f, &d, md), &d, md);
        let c2 = add(&cc, &cc, md);
        let c4 = add(&c2, &c2, md);
        let c8 = add(&c4, &c4, md);
        let y3 = sub(&mul(&e, &sub(&d, &x3, md), md), &c8, md);
        let z3 = mul(&add_lazy(&p.y, &p.y), &p.z, md);
        Jac {
            x: x3,
            y: y3,
            z: z3,
        }
    }
}

/// p + (x2, y2, z2) (add-2007-bl), with `exceptional` set where H = 0.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add_jac(p: &Jac, q: &Jac, md: &Modulus) -> (Jac, __mmask8) {
    let z1z1 = sqr(&p.z, md);
    let z2z2 = sqr(&q.z, md);
    let u1 = mul(&p.x, &z2z2, md);
    let u2 = mul(&q.x, &z1z1, md);
    let s1 = mul(&mul(&p.y, &q.z, md), &z2z2, md);
    let s2 = mul(&mul(&q.y, &p.z, md), &z1z1, md);
    let h = sub(&u2, &u1, md);
    let h2 = add_lazy(&h, &h);
    let i = sqr(&h2, md);
    let j = mul(&h, &i, md);
    let rr = sub(&s2, &s1, md);
    let r = add_lazy(&rr, &rr);
    let v = mul(&u1, &i, md);
    let x3 = sub(&sub(&sub(&sqr(&r, md), &j, md), &v, md), &v, md);
    let s1j2 = mul(&add_lazy(&s1, &s1), &j, md);
    let y3 = sub(&mul(&r, &sub(&v, &x3, md), md), &s1j2, md);
    let zz = add_lazy(&p.z, &q.z);
    let z3 = mul(&sub(&sub(&sqr(&zz, md), &z1z1, md), &z2z2, md), &h, md);
    (
        Jac {
            x: x3,
            y: y3,
            z: z3,
        },
        is_zero(&h, md),
    )
}

/// p + (x2, y2) affine (madd-2007-bl), with `exceptional` set where H = 0.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn add_affine(p: &Jac, x2: &Fe, y2: &Fe, md: &Modulus) -> (Jac, __mmask8) {
    let z1z1 = sqr(&p.z, md);
    let u2 = mul(x2, &z1z1, md);
    let s2 = mul(&mul(y2, &p.z, md), &z1z1, md);
    let h = sub(&u2, &p.x, md);
    let hh = sqr(&h, md);
    let hh2 = add(&hh, &hh, md);
    let i = add_lazy(&hh2, &hh2);
    let j = mul(&h, &i, md);
    let rr = sub(&s2, &p.y, md);
    let r = add_lazy(&rr, &rr);
    let v = mul(&p.x, &i, md);
    let x3 = sub(&sub(&sub(&sqr(&r, md), &j, md), &v, md), &v, md);
    let yj2 = mul(&add_lazy(&p.y, &p.y), &j, md);
    let y3 = sub(&mul(&r, &sub(&v, &x3, md), md), &yj2, md);
    let zh = add_lazy(&p.z, &h);
    let z3 = sub(&sub(&sqr(&zh, md), &z1z1, md), &hh, md);
    (
        Jac {
            x: x3,
            y: y3,
            z: z3,
        },
        is_zero(&h, md),
    )
}

/// Signed 5-bit digits of one scalar per lane, least significant first: digit i is in
/// [-16, 16] and the scalar is the sum of digit_i·32^i.
pub type Digits = [[i8; DIGITS]; 8];

/// Digits per 256-bit scalar (260 bits: the top digit takes the last carry).
pub const DIGITS: usize = 52;

/// Booth recoding of a scalar below 2^256 (little-endian words).
pub fn recode(u: &[u64; 4]) -> [i8; DIGITS] {
    let bits = |at: usize| -> u64 {
        let (w, b) = (at / 64, at % 64);
        let lo = u.get(w).map_or(0, |x| x >> b);
        let hi = if b > 59 {
            u.get(w + 1).map_or(0, |x| x << (64 - b))
        } else {
            0
        };
        (lo | hi) & 31
    };
    let mut out = [0i8; DIGITS];
    let mut carry = 0;
    for (i, d) in out.iter_mut().enumerate() {
        let v = bits(5 * i) as i64 + carry;
        (*d, carry) = if v > 16 {
            ((v - 32) as i8, 1)
        } else {
            (v as i8, 0)
        };
    }
    debug_assert_eq!(carry, 0);
    out
}

/// Digit `w` of each lane's scalar, one lane each.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn digit_vector(digits: &Digits, w: usize) -> __m512i {
    _mm512_set_epi64(
        digits[7][w] as i64,
        digits[6][w] as i64,
        digits[5][w] as i64,
        digits[4][w] as i64,
        digits[3][w] as i64,
        digits[2][w] as i64,
        digits[1][w] as i64,
        digits[0][w] as i64,
    )
}

/// One term of a linear combination: per-lane digits and the multiples 1..16 of the
/// point, either each lane's own (Jacobian) or one point shared by all lanes (affine).
pub enum Term<'a> {
    Lanes(&'a Digits, &'a [Jac; 16]),
    Shared(&'a Digits, &'a [(Fe, Fe); 16]),
}

/// Q, 2Q .. 16Q per lane, for Q affine in Montgomery form, on the curve, not at infinity.
/// Q has prime order n > 16, so no entry meets an exceptional case.
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn lane_table(qx: &Fe, qy: &Fe, c: &CurveMb) -> [Jac; 16] {
    let q1 = Jac {
        x: *qx,
        y: *qy,
        z: super::field::splat(&c.one),
    };
    let mut table = [q1; 16];
    table[1] = dbl(&q1, c);
    for k in 2..16 {
        table[k] = add_affine(&table[k - 1], qx, qy, &c.p).0;
    }
    table
}

/// The sum of digits·point over `terms`, per lane, by one shared chain of doublings over
/// the lowest `windows` digits (the rest must be zero).
/// Returns the point, the lanes where it is at infinity, and the lanes that met an
/// exceptional addition (their point is meaningless).
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn lincomb(terms: &[Term], windows: usize, c: &CurveMb) -> (Jac, __mmask8, __mmask8) {
    let md = &c.p;
    let one = super::field::splat(&c.one);
    let zero = super::field::zero();
    let mut acc = Jac {
        x: one,
        y: one,
        z: zero,
    };
    let mut infinity: __mmask8 = 0xff;
    let mut exceptional: __mmask8 = 0;
    for w in (0..windows).rev() {
        if infinity != 0xff {
            for _ in 0..5 {
                acc = dbl(&acc, c);
            }
        }
        for term in terms {
            let digits = match term {
                Term::Lanes(d, _) | Term::Shared(d, _) => d,
            };
            let d = digit_vector(digits, w);
            let nonzero = _mm512_cmpneq_epi64_mask(d, _mm512_setzero_si512());
            if nonzero == 0 {
                continue;
            }
            let negative = _mm512_cmplt_epi64_mask(d, _mm512_setzero_si512());
            let magnitude = _mm512_abs_epi64(d);
            let (t, sum, h0) = match term {
                Term::Lanes(_, table) => {
                    let mut t = table[0];
                    for (k, entry) in table.iter().enumerate().skip(1) {
                        let m = _mm512_cmpeq_epi64_mask(magnitude, _mm512_set1_epi64(k as i64 + 1));
                        t = Jac {
                            x: select(m, &t.x, &entry.x),
                            y: select(m, &t.y, &entry.y),
                            z: select(m, &t.z, &entry.z),
                        };
                    }
                    t.y = select(negative, &t.y, &sub(&zero, &t.y, md));
                    let (sum, h0) = add_jac(&acc, &t, md);
                    (t, sum, h0)
                }
                Term::Shared(_, table) => {
                    let (mut x, mut y) = table[0];
                    for (k, entry) in table.iter().enumerate().skip(1) {
                        let m = _mm512_cmpeq_epi64_mask(magnitude, _mm512_set1_epi64(k as i64 + 1));
                        x = select(m, &x, &entry.0);
                        y = select(m, &y, &entry.1);
                    }
                    y = select(negative, &y, &sub(&zero, &y, md));
                    let (sum, h0) = add_affine(&acc, &x, &y, md);
                    (Jac { x, y, z: one }, sum, h0)
                }
            };
            acc = pick(&acc, &t, &sum, infinity, nonzero);
            exceptional |= h0 & nonzero & !infinity;
            infinity &= !nonzero;
        }
    }
    (acc, infinity, exceptional)
}

/// After acc + t: acc where t was not added (digit 0), t where acc was at infinity, the
/// sum elsewhere.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn pick(acc: &Jac, t: &Jac, sum: &Jac, infinity: __mmask8, nonzero: __mmask8) -> Jac {
    let take_sum = nonzero & !infinity;
    let take_t = nonzero & infinity;
    let sel = |a: &Fe, t: &Fe, s: &Fe| select(take_t, &select(take_sum, a, s), t);
    Jac {
        x: sel(&acc.x, &t.x, &sum.x),
        y: sel(&acc.y, &t.y, &sum.y),
        z: sel(&acc.z, &t.z, &sum.z),
    }
}
