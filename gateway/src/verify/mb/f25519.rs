//! Arithmetic modulo p = 2^255 - 19 on eight lanes, for Ed25519: the same five 52-bit
//! limbs as `field`, but p's shape replaces Montgomery's reduction: 2^260 ≡ 608 and
//! 2^255 ≡ 19 (mod p), so a product's upper half folds back with a few multiply-adds.
//! Values are plain (no Montgomery form). Every result has limbs 0..3 below 2^52 and
//! limb 4 below 2^48 (the value below 2^255 + 2^20 < 2p); `add_lazy`'s sum, for a
//! product's input only, may reach 2^257. Public data only: nothing is constant-time.

use std::arch::x86_64::*;

// `add_lazy` is field's: the limb sums carried, not folded (below 2^257 here), only for
// a product's input.
pub use super::field::add_lazy;
use super::field::{carry, product, square, sub_once, Fe, V};

const MASK52: i64 = (1 << 52) - 1;
const MASK47: i64 = (1 << 47) - 1;

/// 4p, limb by limb, added before a subtraction so the difference stays positive.
const FOUR_P: [i64; 5] = [
    ((1 << 52) - 19) * 4,
    MASK52 * 4,
    MASK52 * 4,
    MASK52 * 4,
    MASK47 * 4,
];
const P: [i64; 5] = [(1 << 52) - 19, MASK52, MASK52, MASK52, MASK47];

/// Carried limbs (limb 4 below 2^62) to the invariant: bits from 255 up fold back as 19
/// times their value, then one more carry.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn fold(mut t: [V; 5]) -> Fe {
    let top = _mm512_srli_epi64::<47>(t[4]);
    t[4] = _mm512_and_si512(t[4], _mm512_set1_epi64(MASK47));
    t[0] = _mm512_madd52lo_epu64(t[0], top, _mm512_set1_epi64(19));
    Fe(carry(t))
}

#[target_feature(enable = "avx512f,avx512ifma")]
pub fn from_u64(v: u64) -> Fe {
    let z = _mm512_setzero_si512();
    Fe([_mm512_set1_epi64(v as i64), z, z, z, z])
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn add(a: &Fe, b: &Fe) -> Fe {
    fold(add_lazy(a, b).0)
}

/// a - b + 4p, which is positive for a, b below 2^256.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn sub(a: &Fe, b: &Fe) -> Fe {
    fold(carry(std::array::from_fn(|k| {
        _mm512_add_epi64(
            _mm512_sub_epi64(a.0[k], b.0[k]),
            _mm512_set1_epi64(FOUR_P[k]),
        )
    })))
}

/// A ten-limb product (limbs below 2^57) modulo p, to the invariant.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn reduce(mut t: [V; 10]) -> Fe {
    let mask = _mm512_set1_epi64(MASK52);
    // The upper half in 52-bit limbs; what leaves limb 9 is a multiple of 2^520.
    for k in 5..9 {
        t[k + 1] = _mm512_add_epi64(t[k + 1], _mm512_srli_epi64::<52>(t[k]));
        t[k] = _mm512_and_si512(t[k], mask);
    }
    let c10 = _mm512_srli_epi64::<52>(t[9]);
    t[9] = _mm512_and_si512(t[9], mask);
    // 2^260 ≡ 608: limb 5 + j lands on limb j, its product's high part on limb j + 1.
    let k608 = _mm512_set1_epi64(608);
    let z = _mm512_setzero_si512();
    let mut over = z;
    for j in 0..5 {
        t[j] = _mm512_madd52lo_epu64(t[j], t[j + 5], k608);
        if j < 4 {
            t[j + 1] = _mm512_madd52hi_epu64(t[j + 1], t[j + 5], k608);
        } else {
            over = _mm512_madd52hi_epu64(z, t[9], k608);
        }
    }
    // Limb 9's high part is another multiple of 2^260; c10 one of 2^520 ≡ 608².
    t[0] = _mm512_madd52lo_epu64(t[0], over, k608);
    t[0] = _mm512_madd52lo_epu64(t[0], c10, _mm512_set1_epi64(608 * 608));
    fold(carry([t[0], t[1], t[2], t[3], t[4]]))
}

/// a·b mod p; every limb of a and b below 2^52.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn mul(a: &Fe, b: &Fe) -> Fe {
    reduce(product(a, b))
}

#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn sqr(a: &Fe) -> Fe {
    reduce(square(a))
}

/// The value in [0, p): one conditional subtraction, as every result is below 2p.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn canon(a: &Fe) -> Fe {
    sub_once(a.0, &P.map(|l| _mm512_set1_epi64(l)))
}

/// x^e for one exponent shared by all lanes (little-endian words). Fixed 4-bit windows.
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn pow(x: &Fe, e: &[u64; 4]) -> Fe {
    let one = from_u64(1);
    let mut table = [one; 16];
    for i in 1..16 {
        table[i] = mul(&table[i - 1], x);
    }
    let mut acc = one;
    for i in (0..64).rev() {
        for _ in 0..4 {
            acc = sqr(&acc);
        }
        let digit = (e[i / 16] >> ((i % 16) * 4)) & 0xf;
        if digit != 0 {
            acc = mul(&acc, &table[digit as usize]);
        }
    }
    acc
}
