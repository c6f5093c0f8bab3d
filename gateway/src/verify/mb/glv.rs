//! secp256k1's endomorphism (Gallant-Lambert-Vanstone): λ·(x, y) = (β·x, y), so each
//! 256-bit scalar k splits into two of about 128 bits, k = k1 + k2·λ (mod n), and
//! u1·G + u2·Q becomes four half-length terms over one chain of 130 doublings instead of
//! 256. The split follows libsecp256k1's (`secp256k1_scalar_split_lambda`): c1, c2 are k
//! times precomputed g1, g2, shifted right 384 bits and rounded; k2 = c1·(-b1) + c2·(-b2)
//! and k1 = k - k2·λ, both mod n. The multiplications mod n run on the lanes.

use super::field::{self, Fe, Modulus};

/// Big-endian hex of the constants, as libsecp256k1 gives them.
pub const LAMBDA: &str = "5363ad4cc05c30e0a5261c028812645a122e22ea20816678df02967c1b23bd72";
pub const BETA: &str = "7ae96a2b657c07106e64479eac3434e99cf0497512f58995c1396c28719501ee";
pub const MINUS_B1: &str = "00000000000000000000000000000000e4437ed6010e88286f547fa90abfe4c3";
pub const MINUS_B2: &str = "fffffffffffffffffffffffffffffffe8a280ac50774346dd765cda83db1562c";
const G1: [u64; 4] = [
    0xe893209a45dbb031,
    0x3daa8a1471e8ca7f,
    0xe86c90e49284eb15,
    0x3086d221a7d46bcd,
];
const G2: [u64; 4] = [
    0x1571b4ae8ac47f71,
    0x221208ac9df506c6,
    0x6f547fa90abfe4c4,
    0xe4437ed6010e8828,
];

/// Halves are below 2^129 once their sign is taken out: 26 signed 5-bit digits.
pub const WINDOWS: usize = 26;

/// The constants mod n in Montgomery form, and λ·G's table.
pub struct Glv {
    pub minus_b1: [u64; 5],
    pub minus_b2: [u64; 5],
    pub lambda: [u64; 5],
    /// β mod p in Montgomery form.
    pub beta: [u64; 5],
    /// λ·(k·G) = (β·x, y) for k in 1..=16, affine, Montgomery form.
    pub lambda_g: [[[u64; 5]; 2]; 16],
}

/// round(k·g / 2^384) for 256-bit k and g.
fn mul_shift_384(k: &[u64; 4], g: &[u64; 4]) -> [u64; 4] {
    let mut wide = [0u64; 8];
    for i in 0..4 {
        let mut carry = 0u128;
        for j in 0..4 {
            let t = wide[i + j] as u128 + k[i] as u128 * g[j] as u128 + carry;
            wide[i + j] = t as u64;
            carry = t >> 64;
        }
        wide[i + 4] = carry as u64;
    }
    // Bits 384 and up, plus bit 383 for rounding.
    let round = wide[5] >> 63;
    let (lo, c) = wide[6].overflowing_add(round);
    [lo, wide[7] + c as u64, 0, 0]
}

/// Each lane's k split into (k1, k2), both mod n, canonical.
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn split(k: &[[u64; 4]; 8], glv: &Glv, nm: &Modulus) -> ([[u64; 4]; 8], [[u64; 4]; 8]) {
    let c1 = field::gather(&k.each_ref().map(|k| mul_shift_384(k, &G1)));
    let c2 = field::gather(&k.each_ref().map(|k| mul_shift_384(k, &G2)));
    let mb1 = field::splat(&glv.minus_b1);
    let mb2 = field::splat(&glv.minus_b2);
    let lambda = field::splat(&glv.lambda);
    // A plain value times a Montgomery one is plain.
    let k2 = field::add(&field::mul(&c1, &mb1, nm), &field::mul(&c2, &mb2, nm), nm);
    let k2 = field::canon(&k2, nm);
    let kv = field::gather(k);
    let k1 = field::canon(&field::sub(&kv, &field::mul(&k2, &lambda, nm), nm), nm);
    (field::scatter(&k1), field::scatter(&k2))
}

/// λ of each Jacobian table entry: (β·X, Y, Z).
#[target_feature(enable = "avx512f,avx512ifma")]
pub fn lambda_table(
    table: &[super::point::Jac; 16],
    beta: &Fe,
    pm: &Modulus,
) -> [super::point::Jac; 16] {
    table.map(|p| super::point::Jac {
        x: field::mul(&p.x, beta, pm),
        ..p
    })
}
