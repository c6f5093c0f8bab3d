//! Arithmetic modulo a 256-bit odd modulus on eight lanes at once: each element is five
//! 52-bit limbs, each limb one AVX-512 register holding that limb of all eight lanes, so
//! one `vpmadd52luq`/`vpmadd52huq` multiplies eight limb pairs. Multiplication is
//! Montgomery's with R = 2^260, one limb of the multiplier per round (operand scanning, as
//! in Intel's crypto_mb "almost Montgomery" design): results lie in [0, 2m), not reduced
//! fully, which R = 2^260 > 4m allows; additions and subtractions keep that range, and
//! `canon` reduces to [0, m) where values are compared. Verification handles public data
//! only, so nothing here needs to be constant-time.
//!
//! Every function carries `target_feature(avx512f, avx512ifma)`: callers reach them only
//! through `super::verify`, after run-time detection.

use std::arch::x86_64::*;

pub type V = __m512i;

/// Eight field elements, limb-major: `self.0[k]` is limb k (bits 52k..52k+52) of each lane.
#[derive(Clone, Copy)]
pub struct Fe(pub [V; 5]);

/// A modulus m < 2^256 and its Montgomery constants, broadcast to every lane.
pub struct Modulus {
    pub m: [V; 5],
    /// 2m, the bound of every value between operations.
    pub m2: [V; 5],
    /// -m^-1 mod 2^52.
    pub k0: V,
    /// Which `reduce` suits m: P-256's and SM2's p are -1 mod 2^52, so k0 = 1. (Skipping
    /// the products of P-256's zero limb as well measured a third slower: the compiler
    /// then laid the code out worse.)
    pub shape: Shape,
    /// R^2 mod m: `mul(x, r2)` puts x in Montgomery form.
    pub r2: Fe,
}

const MASK52: i64 = (1 << 52) - 1;

/// The limbs of one lane's 256-bit value (four little-endian words).
pub fn limbs52(w: &[u64; 4]) -> [u64; 5] {
    [
        w[0] & MASK52 as u64,
        (w[0] >> 52 | w[1] << 12) & MASK52 as u64,
        (w[1] >> 40 | w[2] << 24) & MASK52 as u64,
        (w[2] >> 28 | w[3] << 36) & MASK52 as u64,
        w[3] >> 16,
    ]
}

/// The inverse of `limbs52` (the value must be below 2^256).
pub fn words(l: &[u64; 5]) -> [u64; 4] {
    [
        l[0] | l[1] << 52,
        l[1] >> 12 | l[2] << 40,
        l[2] >> 24 | l[3] << 28,
        l[3] >> 36 | l[4] << 16,
    ]
}

/// The eight lanes of a register. A `__m512i` is 64 bytes of plain integers, as is
/// `[u64; 8]`: every bit pattern of either is a valid value of the other.
#[inline]
pub fn lanes(v: V) -> [u64; 8] {
    // SAFETY: same size (64 bytes), no invalid bit patterns on either side.
    unsafe { std::mem::transmute::<V, [u64; 8]>(v) }
}

/// A register from eight lanes (see `lanes`).
#[inline]
pub fn from_lanes(x: [u64; 8]) -> V {
    // SAFETY: same size (64 bytes), no invalid bit patterns on either side.
    unsafe { std::mem::transmute::<[u64; 8], V>(x) }
}

/// Eight lanes' 256-bit values (little-endian words) as an element.
pub fn gather(values: &[[u64; 4]; 8]) -> Fe {
    let limbs = values.map(|w| limbs52(&w));
    Fe(std::array::from_fn(|k| from_lanes(limbs.map(|l| l[k]))))
}

/// The inverse of `gather`.
pub fn scatter(a: &Fe) -> [[u64; 4]; 8] {
    let per_limb = a.0.map(lanes);
    std::array::from_fn(|lane| words(&std::array::from_fn(|k| per_limb[k][lane])))
}

/// One value in every lane.
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn splat(limbs: &[u64; 5]) -> Fe {
    Fe(limbs.map(|l| _mm512_set1_epi64(l as i64)))
}

#[target_feature(enable = "avx512f,avx512ifma")]
pub fn zero() -> Fe {
    Fe([_mm512_setzero_si512(); 5])
}

/// Carries every limb's excess (signed) into the next; the top limb keeps the sign.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn carry(mut t: [V; 5]) -> [V; 5] {
    let mask = _mm512_set1_epi64(MASK52);
    for k in 0..4 {
        t[k + 1] = _mm512_add_epi64(t[k + 1], _mm512_srai_epi64::<52>(t[k]));
        t[k] = _mm512_and_si512(t[k], mask);
    }
    t
}

/// t with carried limbs, t < 2b -> t mod b, for b = m or 2m.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn sub_once(t: [V; 5], b: &[V; 5]) -> Fe {
    let d = carry(std::array::from_fn(|k| _mm512_sub_epi64(t[k], b[k])));
    let negative = _mm512_cmplt_epi64_mask(d[4], _mm512_setzero_si512());
    Fe(std::array::from_fn(|k| {
        _mm512_mask_blend_epi64(negative, d[k], t[k])
    }))
}

/// a in [0, 2m) -> a mod m, the one representation equality can compare.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn canon(a: &Fe, md: &Modulus) -> Fe {
    sub_once(a.0, &md.m)
}

/// (a + b) in [0, 2m), for a, b in [0, 2m).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn add(a: &Fe, b: &Fe, md: &Modulus) -> Fe {
    // Both candidates from the raw limb sums, carried side by side: two independent
    // chains instead of one after the other.
    let raw: [V; 5] = std::array::from_fn(|k| _mm512_add_epi64(a.0[k], b.0[k]));
    let t = carry(raw);
    let d = carry(std::array::from_fn(|k| _mm512_sub_epi64(raw[k], md.m2[k])));
    let negative = _mm512_cmplt_epi64_mask(d[4], _mm512_setzero_si512());
    Fe(std::array::from_fn(|k| {
        _mm512_mask_blend_epi64(negative, d[k], t[k])
    }))
}

/// a + b in [0, 4m), not reduced, for a, b in [0, 2m): only for a sum that goes straight
/// into `mul` or `sqr`, which take factors below 4m (a·b < 16m² keeps the reduction's
/// input below 4m·2^260 and its output below 2m, as m < 2^256). It saves `add`'s second
/// carry chain and blend; the point formulas have several such sums.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn add_lazy(a: &Fe, b: &Fe) -> Fe {
    Fe(carry(std::array::from_fn(|k| {
        _mm512_add_epi64(a.0[k], b.0[k])
    })))
}

/// (a - b) in [0, 2m), for a, b in [0, 2m).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn sub(a: &Fe, b: &Fe, md: &Modulus) -> Fe {
    let raw: [V; 5] = std::array::from_fn(|k| _mm512_sub_epi64(a.0[k], b.0[k]));
    let t = carry(raw);
    let negative = _mm512_cmplt_epi64_mask(t[4], _mm512_setzero_si512());
    let u = carry(std::array::from_fn(|k| _mm512_add_epi64(raw[k], md.m2[k])));
    Fe(std::array::from_fn(|k| {
        _mm512_mask_blend_epi64(negative, t[k], u[k])
    }))
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    General,
    /// k0 = 1.
    MinusOne,
}

/// Montgomery reduction of a ten-limb product t < 4m·2^260 (limbs below 2^58):
/// t·2^-260 mod m, in [0, 2m) with 52-bit limbs.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn reduce(t: [V; 10], md: &Modulus) -> Fe {
    match md.shape {
        Shape::General => reduce_as::<false>(t, md),
        Shape::MinusOne => reduce_as::<true>(t, md),
    }
}

/// `reduce` for a modulus with k0 = 1 (`K0_ONE`) or any.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
fn reduce_as<const K0_ONE: bool>(mut t: [V; 10], md: &Modulus) -> Fe {
    let z = _mm512_setzero_si512();
    for i in 0..5 {
        // The multiple of m that clears limb i (only its low 52 bits count).
        let u = if K0_ONE {
            t[i]
        } else {
            _mm512_madd52lo_epu64(z, t[i], md.k0)
        };
        for j in 0..5 {
            t[i + j] = _mm512_madd52lo_epu64(t[i + j], u, md.m[j]);
            t[i + j + 1] = _mm512_madd52hi_epu64(t[i + j + 1], u, md.m[j]);
        }
        // Limb i is now a multiple of 2^52: its carry moves up.
        t[i + 1] = _mm512_add_epi64(t[i + 1], _mm512_srli_epi64::<52>(t[i]));
    }
    Fe(carry([t[5], t[6], t[7], t[8], t[9]]))
}

/// a·b·2^-260 mod m in [0, 2m), for a, b in [0, 4m) (or a below 2^256 and b below m).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn mul(a: &Fe, b: &Fe, md: &Modulus) -> Fe {
    reduce(product(a, b), md)
}

/// a²·2^-260 mod m, as `mul`.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn sqr(a: &Fe, md: &Modulus) -> Fe {
    reduce(square(a), md)
}

/// The ten-limb product a·b (limbs below 2^56), not reduced.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn product(a: &Fe, b: &Fe) -> [V; 10] {
    let mut t = [_mm512_setzero_si512(); 10];
    for i in 0..5 {
        for j in 0..5 {
            t[i + j] = _mm512_madd52lo_epu64(t[i + j], a.0[i], b.0[j]);
            t[i + j + 1] = _mm512_madd52hi_epu64(t[i + j + 1], a.0[i], b.0[j]);
        }
    }
    t
}

/// a², as `product`: the ten cross products once, doubled, and the five squares.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub(super) fn square(a: &Fe) -> [V; 10] {
    let z = _mm512_setzero_si512();
    let mut cross = [z; 10];
    for i in 0..5 {
        for j in i + 1..5 {
            cross[i + j] = _mm512_madd52lo_epu64(cross[i + j], a.0[i], a.0[j]);
            cross[i + j + 1] = _mm512_madd52hi_epu64(cross[i + j + 1], a.0[i], a.0[j]);
        }
    }
    let mut t: [V; 10] = std::array::from_fn(|k| _mm512_add_epi64(cross[k], cross[k]));
    for i in 0..5 {
        t[2 * i] = _mm512_madd52lo_epu64(t[2 * i], a.0[i], a.0[i]);
        t[2 * i + 1] = _mm512_madd52hi_epu64(t[2 * i + 1], a.0[i], a.0[i]);
    }
    t
}

/// Lanes where a ≡ b (mod m).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn eq(a: &Fe, b: &Fe, md: &Modulus) -> __mmask8 {
    let (a, b) = (canon(a, md), canon(b, md));
    let mut m = 0xff;
    for k in 0..5 {
        m &= _mm512_cmpeq_epi64_mask(a.0[k], b.0[k]);
    }
    m
}

/// Lanes where a ≡ 0 (mod m).
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn is_zero(a: &Fe, md: &Modulus) -> __mmask8 {
    eq(a, &zero(), md)
}

/// b where `mask` is set, a elsewhere.
#[inline]
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn select(mask: __mmask8, a: &Fe, b: &Fe) -> Fe {
    Fe(std::array::from_fn(|k| {
        _mm512_mask_blend_epi64(mask, a.0[k], b.0[k])
    }))
}

/// x^e for one exponent e shared by all lanes (little-endian words), x in Montgomery form;
/// `one` is R mod m. Fixed 4-bit windows.
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn pow(x: &Fe, e: &[u64; 4], one: &Fe, md: &Modulus) -> Fe {
    let mut table = [*one; 16];
    for i in 1..16 {
        table[i] = mul(&table[i - 1], x, md);
    }
    let mut acc = *one;
    for i in (0..64).rev() {
        for _ in 0..4 {
            acc = sqr(&acc, md);
        }
        let digit = (e[i / 16] >> ((i % 16) * 4)) & 0xf;
        if digit != 0 {
            acc = mul(&acc, &table[digit as usize], md);
        }
    }
    acc
}
