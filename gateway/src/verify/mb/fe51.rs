//! One element modulo p = 2^255 - 19 in five 51-bit limbs (u128 products), for the
//! once-per-key work of Ed25519 lanes on any architecture: A's decompression. OpenSSL's
//! BIGNUM did it before, at 69 µs a key (a generic inverse and a Tonelli-Shanks-style
//! root); this is one exponentiation. Public data only: nothing is constant-time.

const MASK51: u64 = (1 << 51) - 1;

/// Limbs below 2^52 out of every operation but `add`, whose limbs stay below 2^53: `mul`
/// takes either (its column sums stay below 2^113), `sub` takes `add`'s as its first
/// operand only.
#[derive(Clone, Copy, Debug)]
pub struct Fe([u64; 5]);

impl Fe {
    pub const ONE: Fe = Fe([1, 0, 0, 0, 0]);

    /// The low 255 bits of `b`, little-endian (a value from p up stays unreduced until
    /// `to_le`).
    pub fn from_le(b: &[u8; 32]) -> Fe {
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        Fe([
            word(0) & MASK51,
            (word(6) >> 3) & MASK51,
            (word(12) >> 6) & MASK51,
            (word(19) >> 1) & MASK51,
            (word(24) >> 12) & MASK51,
        ])
    }

    /// The canonical encoding (value below p), little-endian.
    pub fn to_le(self) -> [u8; 32] {
        let mut l = carry(self.0);
        // l < 2^255 + small: subtract p once if l >= p, by adding 19 and looking at bit 255.
        let mut q = (l[0] + 19) >> 51;
        for limb in &l[1..] {
            q = (limb + q) >> 51;
        }
        l[0] += 19 * q;
        for i in 0..4 {
            l[i + 1] += l[i] >> 51;
            l[i] &= MASK51;
        }
        l[4] &= MASK51;
        let mut out = [0u8; 32];
        let bits = l[0] | l[1] << 51;
        out[..8].copy_from_slice(&bits.to_le_bytes());
        let bits = l[1] >> 13 | l[2] << 38;
        out[8..16].copy_from_slice(&bits.to_le_bytes());
        let bits = l[2] >> 26 | l[3] << 25;
        out[16..24].copy_from_slice(&bits.to_le_bytes());
        let bits = l[3] >> 39 | l[4] << 12;
        out[24..].copy_from_slice(&bits.to_le_bytes());
        out
    }

    pub fn add(&self, b: &Fe) -> Fe {
        Fe(std::array::from_fn(|i| self.0[i] + b.0[i]))
    }

    /// self - b, through self + 4p - b (every limb of 4p exceeds 2^52 > b's: `b` must not
    /// be an unreduced sum).
    pub fn sub(&self, b: &Fe) -> Fe {
        const FOUR_P: [u64; 5] = [
            4 * ((1 << 51) - 19),
            4 * MASK51,
            4 * MASK51,
            4 * MASK51,
            4 * MASK51,
        ];
        Fe(carry(std::array::from_fn(|i| {
            self.0[i] + FOUR_P[i] - b.0[i]
        })))
    }

    pub fn neg(&self) -> Fe {
        Fe([0; 5]).sub(self)
    }

    pub fn mul(&self, b: &Fe) -> Fe {
        let (a, b) = (self.0, b.0);
        let m = |x: u64, y: u64| u128::from(x) * u128::from(y);
        // 2^255 = 19 (mod p): a limb product landing at 2^(51 k) for k >= 5 folds back
        // times 19.
        let b19: [u64; 5] = std::array::from_fn(|i| 19 * b[i]);
        let t = [
            m(a[0], b[0]) + m(a[1], b19[4]) + m(a[2], b19[3]) + m(a[3], b19[2]) + m(a[4], b19[1]),
            m(a[0], b[1]) + m(a[1], b[0]) + m(a[2], b19[4]) + m(a[3], b19[3]) + m(a[4], b19[2]),
            m(a[0], b[2]) + m(a[1], b[1]) + m(a[2], b[0]) + m(a[3], b19[4]) + m(a[4], b19[3]),
            m(a[0], b[3]) + m(a[1], b[2]) + m(a[2], b[1]) + m(a[3], b[0]) + m(a[4], b19[4]),
            m(a[0], b[4]) + m(a[1], b[3]) + m(a[2], b[2]) + m(a[3], b[1]) + m(a[4], b[0]),
        ];
        reduce(t)
    }

    /// self^2: 15 limb products where `mul` takes 25, the bulk of an exponentiation.
    pub fn sq(&self) -> Fe {
        let a = self.0;
        let m = |x: u64, y: u64| u128::from(x) * u128::from(y);
        let (a0_2, a1_2) = (2 * a[0], 2 * a[1]);
        let (a3_19, a4_19) = (19 * a[3], 19 * a[4]);
        reduce([
            m(a[0], a[0]) + m(a1_2, a4_19) + m(2 * a[2], a3_19),
            m(a0_2, a[1]) + m(2 * a[2], a4_19) + m(a[3], a3_19),
            m(a0_2, a[2]) + m(a[1], a[1]) + m(2 * a[3], a4_19),
            m(a0_2, a[3]) + m(a1_2, a[2]) + m(a[4], a4_19),
            m(a0_2, a[4]) + m(a1_2, a[3]) + m(a[2], a[2]),
        ])
    }

    /// self^(2^k).
    pub fn sq_n(&self, k: u32) -> Fe {
        let mut x = *self;
        for _ in 0..k {
            x = x.sq();
        }
        x
    }

    /// self^((p - 5) / 8) = self^(2^252 - 3): the addition chain of ref10's pow22523,
    /// 251 squarings and 11 multiplications.
    pub fn pow_p58(&self) -> Fe {
        let z = self;
        let z2 = z.sq();
        let z9 = z2.sq_n(2).mul(z);
        let z11 = z9.mul(&z2);
        let z_5 = z11.sq().mul(&z9); // z^(2^5 - 1)
        let z_10 = z_5.sq_n(5).mul(&z_5);
        let z_20 = z_10.sq_n(10).mul(&z_10);
        let z_40 = z_20.sq_n(20).mul(&z_20);
        let z_50 = z_40.sq_n(10).mul(&z_10);
        let z_100 = z_50.sq_n(50).mul(&z_50);
        let z_200 = z_100.sq_n(100).mul(&z_100);
        let z_250 = z_200.sq_n(50).mul(&z_50);
        z_250.sq_n(2).mul(z)
    }

    pub fn is_zero(&self) -> bool {
        self.to_le() == [0; 32]
    }

    pub fn is_odd(&self) -> bool {
        self.to_le()[0] & 1 == 1
    }

    pub fn equals(&self, b: &Fe) -> bool {
        self.to_le() == b.to_le()
    }
}

/// The column sums of a product (each below 2^113) carried into limbs; the carry out of
/// limb 4 (below 2^62) is worth 19 times itself at limb 0.
fn reduce(t: [u128; 5]) -> Fe {
    let mut l = [0u64; 5];
    let mut c: u128 = 0;
    for i in 0..5 {
        let v = t[i] + c;
        l[i] = (v as u64) & MASK51;
        c = v >> 51;
    }
    let v = u128::from(l[0]) + 19 * c;
    l[0] = (v as u64) & MASK51;
    l[1] += (v >> 51) as u64;
    Fe(l)
}

/// One carry pass: limbs 0-3 below 2^51, limb 4's overflow folded into limb 0 times 19
/// (so limb 0 may exceed 2^51 by a little: below 2^52 for inputs below 2^63).
fn carry(mut l: [u64; 5]) -> [u64; 5] {
    for i in 0..4 {
        l[i + 1] += l[i] >> 51;
        l[i] &= MASK51;
    }
    let top = l[4] >> 51;
    l[4] &= MASK51;
    l[0] += 19 * top;
    l[1] += l[0] >> 51;
    l[0] &= MASK51;
    l
}

#[cfg(test)]
mod tests {
    use openssl::bn::{BigNum, BigNumContext, BigNumRef};

    use super::Fe;

    fn p() -> BigNum {
        super::super::ed_input::ed_p().unwrap()
    }

    fn bn(f: &Fe) -> BigNum {
        let mut b = f.to_le();
        b.reverse();
        BigNum::from_slice(&b).unwrap()
    }

    fn fe(v: &BigNumRef) -> Fe {
        let mut b = v.to_vec_padded(32).unwrap();
        b.reverse();
        Fe::from_le(&b.try_into().unwrap())
    }

    /// Random values below 2^255, p - 1, p, p + 1 and 2^255 - 1: unreduced inputs too.
    fn values() -> Vec<BigNum> {
        let p = p();
        let mut out = Vec::new();
        for k in [-1i32, 0, 1, 18] {
            let mut v = BigNum::new().unwrap();
            if k < 0 {
                v.checked_sub(&p, &BigNum::from_u32(1).unwrap()).unwrap();
            } else {
                v.checked_add(&p, &BigNum::from_u32(k as u32).unwrap())
                    .unwrap();
            }
            out.push(v);
        }
        for _ in 0..500 {
            let mut b = [0u8; 32];
            openssl::rand::rand_bytes(&mut b).unwrap();
            b[0] &= 0x7f;
            out.push(BigNum::from_slice(&b).unwrap());
        }
        out
    }

    /// Every operation against BIGNUM modulo p, on reduced and unreduced inputs and on
    /// sums (`add`'s wider limbs) as `mul`'s operands.
    #[test]
    fn operations_agree_with_bignum() {
        let (p, mut ctx) = (p(), BigNumContext::new().unwrap());
        let vs = values();
        for (i, a) in vs.iter().enumerate() {
            let b = &vs[(i * 7 + 3) % vs.len()];
            let (fa, fb) = (fe(a), fe(b));
            let mut want = BigNum::new().unwrap();
            want.nnmod(a, &p, &mut ctx).unwrap();
            assert_eq!(bn(&fa), want, "to_le reduces {a}");
            want.mod_mul(a, b, &p, &mut ctx).unwrap();
            assert_eq!(bn(&fa.mul(&fb)), want, "{a} * {b}");
            want.mod_sub(a, b, &p, &mut ctx).unwrap();
            assert_eq!(bn(&fa.sub(&fb)), want, "{a} - {b}");
            let mut sum = BigNum::new().unwrap();
            sum.mod_add(a, b, &p, &mut ctx).unwrap();
            want.mod_sqr(&sum, &p, &mut ctx).unwrap();
            let s = fa.add(&fb);
            assert_eq!(bn(&s.mul(&s)), want, "({a} + {b})^2 from unreduced sums");
            assert_eq!(bn(&s.sq()), want, "sq of ({a} + {b})");
            want.mod_sqr(a, &p, &mut ctx).unwrap();
            assert_eq!(bn(&fa.sq()), want, "{a}^2");
            want.mod_sub(&sum, b, &p, &mut ctx).unwrap();
            assert_eq!(bn(&s.sub(&fb)), want, "({a} + {b}) - {b}");
            let mut e = BigNum::new().unwrap();
            e.lshift(&BigNum::from_u32(1).unwrap(), 252).unwrap();
            e.sub_word(3).unwrap();
            if i % 10 == 0 {
                want.mod_exp(a, &e, &p, &mut ctx).unwrap();
                assert_eq!(bn(&fa.pow_p58()), want, "{a}^((p-5)/8)");
            }
        }
    }

    #[test]
    fn the_constants_are_what_they_claim() {
        let (d, i) = super::super::ed_input::constants_for_tests();
        let minus_one = Fe::ONE.neg();
        assert!(i.sq().equals(&minus_one), "sqrt(-1) squares to -1");
        // d = -121665 / 121666
        let n = |v: u64| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&v.to_le_bytes());
            Fe::from_le(&b)
        };
        assert!(d.mul(&n(121_666)).equals(&n(121_665).neg()));
    }
}
