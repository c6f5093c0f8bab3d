//! The vector path itself (x86_64 only): the three entry points behind `available()`,
//! each curve's constants, and the per-lane preparation and eight-lane checks.

use std::sync::OnceLock;

use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcPoint};
use openssl::nid::Nid;

use super::edwards;
use super::field::{self, Modulus};
use super::glv;
use super::point::{self, CurveMb};
use super::{available, Curve, EdLane, Lane, Recovery, LANES};
use crate::verify::u256::{self, add_mod, is_zero, lt, sub_mod};

/// Whether this CPU has the instructions the path is compiled for.
pub fn cpu_has_ifma() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512ifma")
}

/// Each lane's verdict: `Some(valid)`, or `None` where this path cannot answer (no IFMA
/// on this CPU, or an exceptional addition in that lane): verify it on the scalar path.
pub fn verify(curve: Curve, lanes: &[Lane]) -> Vec<Option<bool>> {
    if !available() {
        return vec![None; lanes.len()];
    }
    let c = constants(curve);
    let mut out = Vec::with_capacity(lanes.len() + LANES);
    for group in padded_sets(lanes).chunks(INVERSION_GROUP) {
        // SAFETY: `available()` has confirmed AVX-512F and AVX-512 IFMA on this CPU, the
        // features every function under `verify_group` is compiled for.
        let answers = unsafe { verify_group(c, group) };
        out.extend(answers.into_iter().flatten());
    }
    out.truncate(lanes.len());
    out
}

/// Each Ed25519 lane's verdict, as `verify_strict` would give it for encodings the caller
/// checked (`verify::ed25519`); `None` only without IFMA. The Edwards addition is
/// complete, so no lane is ever declined.
pub fn verify_ed25519(lanes: &[EdLane]) -> Vec<Option<bool>> {
    if !available() || lanes.is_empty() {
        return vec![None; lanes.len()];
    }
    let sets = padded_sets(lanes);
    // SAFETY: `available()` has confirmed AVX-512F and AVX-512 IFMA on this CPU, the
    // features every function under `verify_sets` is compiled for.
    let answers = unsafe { edwards::verify_sets(&sets) };
    let mut out: Vec<Option<bool>> = answers.into_iter().flatten().map(Some).collect();
    out.truncate(lanes.len());
    out
}

/// Each lane's recovered key, uncompressed SEC1: `Some(Some(key))`; `Some(None)` where no
/// key recovers (r or s out of range, r not the x of a point, Q at infinity); `None`
/// where this path cannot answer (no IFMA, an exceptional addition): recover on the
/// scalar path.
pub fn recover(lanes: &[Recovery]) -> Vec<Option<Option<[u8; 65]>>> {
    if !available() {
        return vec![None; lanes.len()];
    }
    let c = constants(Curve::Secp256k1);
    let mut out: Vec<_> = padded_sets(lanes)
        .iter()
        // SAFETY: `available()` has confirmed AVX-512F and AVX-512 IFMA on this CPU, the
        // features every function under `recover8` is compiled for.
        .flat_map(|set| unsafe { recover8(c, set) })
        .collect();
    out.truncate(lanes.len());
    out
}

/// `lanes` in sets of eight; a short last set is padded with copies of its first lane,
/// whose answers are dropped.
fn padded_sets<L: Copy>(lanes: &[L]) -> Vec<[L; LANES]> {
    lanes
        .chunks(LANES)
        .map(|chunk| std::array::from_fn(|i| *chunk.get(i).unwrap_or(&chunk[0])))
        .collect()
}

/// Register sets whose s^-1 share one exponentiation (Montgomery's trick).
const INVERSION_GROUP: usize = 8;

/// A modulus' constants as plain numbers; `Modulus` is built from them inside the
/// vector code.
struct Raw {
    m: [u64; 4],
    k0: u64,
    r2: [u64; 4],
    one: [u64; 4],
}

struct Constants {
    curve: Curve,
    p: Raw,
    n: Raw,
    /// n - 2 and p - 2, the exponents that invert modulo n and p.
    n_minus_2: [u64; 4],
    p_minus_2: [u64; 4],
    /// (p + 1) / 4: a square root modulo p (p = 3 mod 4 for secp256k1).
    sqrt_exp: [u64; 4],
    /// k·G for k in 1..=16, affine, Montgomery form.
    g: [[[u64; 5]; 2]; 16],
    /// secp256k1's endomorphism.
    glv: Option<glv::Glv>,
}

fn constants(curve: Curve) -> &'static Constants {
    static P256: OnceLock<Constants> = OnceLock::new();
    static K1: OnceLock<Constants> = OnceLock::new();
    static SM2: OnceLock<Constants> = OnceLock::new();
    let (cell, nid) = match curve {
        Curve::P256 => (&P256, Nid::X9_62_PRIME256V1),
        Curve::Secp256k1 => (&K1, Nid::SECP256K1),
        Curve::Sm2 => (&SM2, Nid::SM2),
    };
    cell.get_or_init(|| build(curve, nid).expect("curve constants from OpenSSL"))
}

fn build(curve: Curve, nid: Nid) -> Result<Constants, openssl::error::ErrorStack> {
    let group = EcGroup::from_curve_name(nid)?;
    let mut ctx = BigNumContext::new()?;
    let (mut p, mut a, mut b) = (BigNum::new()?, BigNum::new()?, BigNum::new()?);
    group.components_gfp(&mut p, &mut a, &mut b, &mut ctx)?;
    let mut n = BigNum::new()?;
    group.order(&mut n, &mut ctx)?;
    let pr = raw(&p, &mut ctx)?;
    let nr = raw(&n, &mut ctx)?;
    // R = 2^260 mod p, to put OpenSSL's plain values in Montgomery form.
    let r_mod_p = BigNum::from_slice(&u256::to_be(&pr.one))?;
    let mut g = [[[0u64; 5]; 2]; 16];
    for (k, entry) in g.iter_mut().enumerate() {
        let mut pt = EcPoint::new(&group)?;
        pt.mul_generator2(&group, &*BigNum::from_u32(k as u32 + 1)?, &mut ctx)?;
        let (mut x, mut y) = (BigNum::new()?, BigNum::new()?);
        pt.affine_coordinates(&group, &mut x, &mut y, &mut ctx)?;
        for (coord, v) in entry.iter_mut().zip([x, y]) {
            let mut mont = BigNum::new()?;
            mont.mod_mul(&v, &r_mod_p, &p, &mut ctx)?;
            *coord = field::limbs52(&words_of(&mont));
        }
    }
    let mut n2 = BigNum::new()?;
    n2.checked_sub(&n, &*BigNum::from_u32(2)?)?;
    let mut minus3 = BigNum::new()?;
    minus3.checked_sub(&p, &*BigNum::from_u32(3)?)?;
    let a_minus3 = a == minus3;
    assert!(
        a_minus3 || a.num_bits() == 0,
        "a curve with a = -3 or a = 0"
    );
    assert_eq!(a_minus3, curve != Curve::Secp256k1);
    let glv = if curve == Curve::Secp256k1 {
        let r_mod_n = BigNum::from_slice(&u256::to_be(&nr.one))?;
        let mut mont =
            |hex: &str, m: &BigNum, r: &BigNum| -> Result<[u64; 5], openssl::error::ErrorStack> {
                let mut out = BigNum::new()?;
                out.mod_mul(&*BigNum::from_hex_str(hex)?, r, m, &mut ctx)?;
                Ok(field::limbs52(&words_of(&out)))
            };
        let constants = [
            mont(glv::MINUS_B1, &n, &r_mod_n)?,
            mont(glv::MINUS_B2, &n, &r_mod_n)?,
            mont(glv::LAMBDA, &n, &r_mod_n)?,
            mont(glv::BETA, &p, &r_mod_p)?,
        ];
        let beta = BigNum::from_hex_str(glv::BETA)?;
        let mut lambda_g = g;
        for entry in lambda_g.iter_mut() {
            // x is in Montgomery form already: β·xR = (βx)R.
            let x = BigNum::from_slice(&u256::to_be(&field::words(&entry[0])))?;
            let mut bx = BigNum::new()?;
            bx.mod_mul(&x, &beta, &p, &mut ctx)?;
            entry[0] = field::limbs52(&words_of(&bx));
        }
        let [minus_b1, minus_b2, lambda, beta] = constants;
        Some(glv::Glv {
            minus_b1,
            minus_b2,
            lambda,
            beta,
            lambda_g,
        })
    } else {
        None
    };
    Ok(Constants {
        curve,
        p: pr,
        n: nr,
        n_minus_2: words_of(&n2),
        p_minus_2: u256::sub(&words_of(&p), &[2, 0, 0, 0]).0,
        sqrt_exp: {
            let (p1, _) = u256::add(&words_of(&p), &[1, 0, 0, 0]);
            [
                p1[0] >> 2 | p1[1] << 62,
                p1[1] >> 2 | p1[2] << 62,
                p1[2] >> 2 | p1[3] << 62,
                p1[3] >> 2,
            ]
        },
        g,
        glv,
    })
}

fn raw(m: &BigNum, ctx: &mut BigNumContext) -> Result<Raw, openssl::error::ErrorStack> {
    let two = BigNum::from_u32(2)?;
    let (mut r2, mut one) = (BigNum::new()?, BigNum::new()?);
    r2.mod_exp(&two, &*BigNum::from_u32(520)?, m, ctx)?;
    one.mod_exp(&two, &*BigNum::from_u32(260)?, m, ctx)?;
    let mw = words_of(m);
    // m^-1 mod 2^64 by Newton's iteration (each step doubles the correct bits).
    let mut inv: u64 = 1;
    for _ in 0..6 {
        inv = inv.wrapping_mul(2u64.wrapping_sub(mw[0].wrapping_mul(inv)));
    }
    Ok(Raw {
        m: mw,
        k0: inv.wrapping_neg() & ((1 << 52) - 1),
        r2: words_of(&r2),
        one: words_of(&one),
    })
}

fn words_of(v: &BigNum) -> [u64; 4] {
    u256::from_be(
        &v.to_vec_padded(32).expect("a value below 2^256")[..]
            .try_into()
            .expect("32 bytes"),
    )
}

/// The signed digits of a GLV half k (mod n): k itself or -(n - k), whichever is below
/// 2^129; `None` if neither is (impossible for a correct split).
fn half(k: &[u64; 4], n: &[u64; 4]) -> Option<[i8; point::DIGITS]> {
    let small = |v: &[u64; 4]| v[3] == 0 && v[2] >> 1 == 0;
    if small(k) {
        return Some(point::recode(k));
    }
    let neg = u256::sub(n, k).0;
    small(&neg).then(|| point::recode(&neg).map(|d| -d))
}

/// What the scalar side decides per lane before the vector work.
struct Prepared {
    /// Already known invalid (r or s out of range, t = 0).
    refused: bool,
    /// SM2's scalars (s, t); ECDSA's come from the vector inversion.
    u1: [u64; 4],
    u2: [u64; 4],
    /// x(R) must be one of these (the second is a copy of the first when c + n >= p).
    c1: [u64; 4],
    c2: [u64; 4],
}

fn prepare(c: &Constants, lane: &Lane) -> Prepared {
    let (n, p) = (&c.n.m, &c.p.m);
    let r = u256::from_be(&lane.r);
    let s = u256::from_be(&lane.s);
    let mut out = Prepared {
        refused: false,
        u1: [0; 4],
        u2: [0; 4],
        c1: r,
        c2: r,
    };
    if is_zero(&r) || is_zero(&s) || !lt(&r, n) || !lt(&s, n) {
        out.refused = true;
        return out;
    }
    let target = if c.curve == Curve::Sm2 {
        let t = add_mod(&r, &s, n);
        if is_zero(&t) {
            out.refused = true;
            return out;
        }
        out.u1 = s;
        out.u2 = t;
        // e < 2^256 < 2n: one subtraction reduces it.
        let mut e = u256::from_be(&lane.e);
        if !lt(&e, n) {
            e = u256::sub(&e, n).0;
        }
        sub_mod(&r, &e, n)
    } else {
        r
    };
    out.c1 = target;
    out.c2 = match u256::add(&target, n) {
        (v, false) if lt(&v, p) => v,
        _ => target,
    };
    out
}

/// Eight lanes through the vector path.
#[target_feature(enable = "avx512f,avx512ifma")]
fn verify_group(c: &Constants, sets: &[[Lane; LANES]]) -> Vec<[Option<bool>; LANES]> {
    let w = (c.curve != Curve::Sm2).then(|| s_inverses(c, sets));
    sets.iter()
        .enumerate()
        .map(|(i, set)| verify8(c, set, w.as_ref().map(|w| &w[i])))
        .collect()
}

/// s^-1 mod n for every lane of `sets`, Montgomery form, by one exponentiation for all
/// of them: prefix products across the sets, one inverse, then back down. A lane whose
/// s is out of range (refused anyway) counts as s = 1, so it cannot zero the product.
#[target_feature(enable = "avx512f,avx512ifma")]
fn s_inverses(c: &Constants, sets: &[[Lane; LANES]]) -> Vec<[[u64; 4]; LANES]> {
    let nm = modulus(&c.n);
    let n = &c.n.m;
    let s: Vec<field::Fe> = sets
        .iter()
        .map(|set| {
            let words = set.each_ref().map(|l| {
                let s = u256::from_be(&l.s);
                if is_zero(&s) || !lt(&s, n) {
                    [1, 0, 0, 0]
                } else {
                    s
                }
            });
            field::mul(&field::gather(&words), &nm.r2, &nm)
        })
        .collect();
    let mut prefix = Vec::with_capacity(s.len());
    prefix.push(s[0]);
    for i in 1..s.len() {
        prefix.push(field::mul(&prefix[i - 1], &s[i], &nm));
    }
    let one = field::splat(&field::limbs52(&c.n.one));
    let mut inv = field::pow(&prefix[s.len() - 1], &c.n_minus_2, &one, &nm);
    let mut out = vec![[[0u64; 4]; LANES]; s.len()];
    for i in (1..s.len()).rev() {
        out[i] = field::scatter(&field::canon(&field::mul(&inv, &prefix[i - 1], &nm), &nm));
        inv = field::mul(&inv, &s[i], &nm);
    }
    out[0] = field::scatter(&field::canon(&inv, &nm));
    out
}

/// One register set; `w`: its lanes' s^-1 (Montgomery form), for ECDSA.
#[target_feature(enable = "avx512f,avx512ifma")]
fn verify8(
    c: &Constants,
    lanes: &[Lane; LANES],
    w: Option<&[[u64; 4]; LANES]>,
) -> [Option<bool>; LANES] {
    let prepared: [Prepared; LANES] = std::array::from_fn(|i| prepare(c, &lanes[i]));
    let pm = modulus(&c.p);
    let (u1, u2) = match w {
        None => (
            prepared.each_ref().map(|p| p.u1),
            prepared.each_ref().map(|p| p.u2),
        ),
        // u1 = e·w, u2 = r·w. A Montgomery product of a plain value and a Montgomery
        // one is plain.
        Some(w) => {
            let nm = modulus(&c.n);
            let w = field::gather(w);
            let e = field::gather(&lanes.each_ref().map(|l| u256::from_be(&l.e)));
            let r = field::gather(&lanes.each_ref().map(|l| u256::from_be(&l.r)));
            (
                field::scatter(&field::canon(&field::mul(&e, &w, &nm), &nm)),
                field::scatter(&field::canon(&field::mul(&r, &w, &nm), &nm)),
            )
        }
    };
    let curve = CurveMb {
        p: pm,
        a_minus3: c.curve != Curve::Secp256k1,
        one: field::limbs52(&c.p.one),
    };
    let pm = &curve.p;
    let to_mont = |v: &[[u64; 4]; LANES]| field::mul(&field::gather(v), &pm.r2, pm);
    let qx = to_mont(&lanes.each_ref().map(|l| u256::from_be(&l.qx)));
    let qy = to_mont(&lanes.each_ref().map(|l| u256::from_be(&l.qy)));
    let q = point::lane_table(&qx, &qy, &curve);
    let (point, infinity, exceptional) = combine(c, &u1, &u2, &q, &curve);
    // x(R) = X / Z^2 = c  <=>  X = c·Z^2, both sides in Montgomery form.
    let z2 = field::sqr(&point.z, pm);
    let c1 = to_mont(&prepared.each_ref().map(|p| p.c1));
    let c2 = to_mont(&prepared.each_ref().map(|p| p.c2));
    let hit = field::eq(&field::mul(&c1, &z2, pm), &point.x, pm)
        | field::eq(&field::mul(&c2, &z2, pm), &point.x, pm);
    std::array::from_fn(|i| {
        let bit = 1u8 << i;
        if prepared[i].refused {
            Some(false)
        } else if exceptional & bit != 0 {
            None
        } else {
            Some(hit & !infinity & bit != 0)
        }
    })
}

/// Eight recoveries: R from x = r and y's parity, then Q = r^-1·(s·R - e·G), made affine.
#[target_feature(enable = "avx512f,avx512ifma")]
fn recover8(c: &Constants, lanes: &[Recovery; LANES]) -> [Option<Option<[u8; 65]>>; LANES] {
    let n = &c.n.m;
    let r = lanes.each_ref().map(|l| u256::from_be(&l.r));
    let s = lanes.each_ref().map(|l| u256::from_be(&l.s));
    let refused: [bool; LANES] =
        std::array::from_fn(|i| is_zero(&r[i]) || is_zero(&s[i]) || !lt(&r[i], n) || !lt(&s[i], n));
    // -e mod n (e below 2^256 < 2n).
    let minus_e = lanes.each_ref().map(|l| {
        let mut e = u256::from_be(&l.e);
        if !lt(&e, n) {
            e = u256::sub(&e, n).0;
        }
        sub_mod(&[0; 4], &e, n)
    });
    let curve = CurveMb {
        p: modulus(&c.p),
        a_minus3: false,
        one: field::limbs52(&c.p.one),
    };
    let pm = &curve.p;
    let nm = modulus(&c.n);
    // R: y = (x^3 + 7)^((p+1)/4), which is a root only when x^3 + 7 is a square.
    let x = field::mul(&field::gather(&r), &pm.r2, pm);
    let seven = field::mul(&field::gather(&[[7, 0, 0, 0]; LANES]), &pm.r2, pm);
    let y2 = field::add(&field::mul(&field::sqr(&x, pm), &x, pm), &seven, pm);
    let one = field::splat(&field::limbs52(&c.p.one));
    let y = field::pow(&y2, &c.sqrt_exp, &one, pm);
    let on_curve = field::eq(&field::sqr(&y, pm), &y2, pm);
    // The root's parity, read from its plain value; the other root is p - y.
    let plain_one = field::gather(&[[1, 0, 0, 0]; LANES]);
    let y_plain = field::scatter(&field::canon(&field::mul(&y, &plain_one, pm), pm));
    let flip: u8 = (0..LANES)
        .filter(|&i| (y_plain[i][0] & 1 == 1) != lanes[i].odd)
        .fold(0, |m, i| m | 1 << i);
    let y = field::select(flip, &y, &field::sub(&field::zero(), &y, pm));
    // u1 = -e/r, u2 = s/r (mod n).
    let r_mont = field::mul(&field::gather(&r), &nm.r2, &nm);
    let n_one = field::splat(&field::limbs52(&c.n.one));
    let r_inv = field::pow(&r_mont, &c.n_minus_2, &n_one, &nm);
    let u1 = field::scatter(&field::canon(
        &field::mul(&field::gather(&minus_e), &r_inv, &nm),
        &nm,
    ));
    let u2 = field::scatter(&field::canon(
        &field::mul(&field::gather(&s), &r_inv, &nm),
        &nm,
    ));
    let q = point::lane_table(&x, &y, &curve);
    let (point, infinity, exceptional) = combine(c, &u1, &u2, &q, &curve);
    // Affine: x = X/Z^2, y = Y/Z^3, out of Montgomery form.
    let z_inv = field::pow(&point.z, &c.p_minus_2, &one, pm);
    let z_inv2 = field::sqr(&z_inv, pm);
    let ax = field::mul(&point.x, &z_inv2, pm);
    let ay = field::mul(&field::mul(&point.y, &z_inv2, pm), &z_inv, pm);
    let ax = field::scatter(&field::canon(&field::mul(&ax, &plain_one, pm), pm));
    let ay = field::scatter(&field::canon(&field::mul(&ay, &plain_one, pm), pm));
    std::array::from_fn(|i| {
        let bit = 1u8 << i;
        if refused[i] || on_curve & bit == 0 {
            Some(None)
        } else if exceptional & bit != 0 {
            None
        } else if infinity & bit != 0 {
            Some(None)
        } else {
            let mut key = [4u8; 65];
            key[1..33].copy_from_slice(&u256::to_be(&ax[i]));
            key[33..].copy_from_slice(&u256::to_be(&ay[i]));
            Some(Some(key))
        }
    })
}

/// u1·G + u2·Q per lane, `q` being Q's table; on secp256k1 through its endomorphism.
/// Returns the point, the lanes at infinity, and the lanes that met an exceptional
/// addition or whose split was not short (declined, never trusted).
#[target_feature(enable = "avx512f,avx512ifma")]
fn combine(
    c: &Constants,
    u1: &[[u64; 4]; LANES],
    u2: &[[u64; 4]; LANES],
    q: &[point::Jac; 16],
    curve: &CurveMb,
) -> (point::Jac, u8, u8) {
    let shared = |t: &[[[u64; 5]; 2]; 16]| -> [(field::Fe, field::Fe); 16] {
        std::array::from_fn(|k| (field::splat(&t[k][0]), field::splat(&t[k][1])))
    };
    let g = shared(&c.g);
    let Some(glv) = &c.glv else {
        let d1 = u1.each_ref().map(point::recode);
        let d2 = u2.each_ref().map(point::recode);
        return point::lincomb(
            &[point::Term::Shared(&d1, &g), point::Term::Lanes(&d2, q)],
            point::DIGITS,
            curve,
        );
    };
    let nm = modulus(&c.n);
    let (a1, b1) = glv::split(u1, glv, &nm);
    let (a2, b2) = glv::split(u2, glv, &nm);
    let mut declined: u8 = 0;
    let mut digits = |k: &[[u64; 4]; LANES]| -> point::Digits {
        std::array::from_fn(|i| {
            // Never for a scalar below n; declined rather than trusted.
            half(&k[i], &c.n.m).unwrap_or_else(|| {
                declined |= 1 << i;
                [0; point::DIGITS]
            })
        })
    };
    let (da1, db1, da2, db2) = (digits(&a1), digits(&b1), digits(&a2), digits(&b2));
    let lambda_g = shared(&glv.lambda_g);
    let lambda_q = glv::lambda_table(q, &field::splat(&glv.beta), &curve.p);
    let (point, infinity, exceptional) = point::lincomb(
        &[
            point::Term::Shared(&da1, &g),
            point::Term::Shared(&db1, &lambda_g),
            point::Term::Lanes(&da2, q),
            point::Term::Lanes(&db2, &lambda_q),
        ],
        glv::WINDOWS,
        curve,
    );
    (point, infinity, exceptional | declined)
}

#[target_feature(enable = "avx512f,avx512ifma")]
fn modulus(raw: &Raw) -> Modulus {
    let m = field::splat(&field::limbs52(&raw.m));
    // 2m reaches 2^256: doubled limb by limb, carried into the top limb.
    let mut twice = field::limbs52(&raw.m).map(|l| l << 1);
    for k in 0..4 {
        twice[k + 1] += twice[k] >> 52;
        twice[k] &= (1 << 52) - 1;
    }
    let m2 = field::splat(&twice);
    Modulus {
        m: m.0,
        m2: m2.0,
        k0: std::arch::x86_64::_mm512_set1_epi64(raw.k0 as i64),
        shape: if raw.k0 == 1 {
            field::Shape::MinusOne
        } else {
            field::Shape::General
        },
        r2: field::splat(&field::limbs52(&raw.r2)),
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
