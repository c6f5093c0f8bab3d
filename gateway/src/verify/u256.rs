//! 256-bit unsigned integers as four little-endian words: the little scalar arithmetic
//! the curve code does outside its field (range checks, sums mod n), shared by
//! `sm2p256` and `mb`.

pub type U256 = [u64; 4];

pub fn from_be(bytes: &[u8; 32]) -> U256 {
    std::array::from_fn(|i| {
        u64::from_be_bytes(bytes[24 - 8 * i..32 - 8 * i].try_into().expect("8 bytes"))
    })
}

pub fn to_be(w: &U256) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, word) in w.iter().enumerate() {
        out[24 - 8 * i..32 - 8 * i].copy_from_slice(&word.to_be_bytes());
    }
    out
}

pub fn lt(a: &U256, b: &U256) -> bool {
    for i in (0..4).rev() {
        if a[i] != b[i] {
            return a[i] < b[i];
        }
    }
    false
}

pub fn is_zero(a: &U256) -> bool {
    *a == [0; 4]
}

/// a + b: the low 256 bits and the carry.
pub fn add(a: &U256, b: &U256) -> (U256, bool) {
    let mut out = [0u64; 4];
    let mut carry = false;
    for i in 0..4 {
        let (s1, c1) = a[i].overflowing_add(b[i]);
        let (s2, c2) = s1.overflowing_add(carry as u64);
        out[i] = s2;
        carry = c1 || c2;
    }
    (out, carry)
}

/// a - b mod 2^256 and whether it borrowed.
pub fn sub(a: &U256, b: &U256) -> (U256, bool) {
    let mut out = [0u64; 4];
    let mut borrow = false;
    for i in 0..4 {
        let (d1, b1) = a[i].overflowing_sub(b[i]);
        let (d2, b2) = d1.overflowing_sub(borrow as u64);
        out[i] = d2;
        borrow = b1 || b2;
    }
    (out, borrow)
}

/// (a + b) mod m for a, b < m.
pub fn add_mod(a: &U256, b: &U256, m: &U256) -> U256 {
    let (s, carry) = add(a, b);
    if carry || !lt(&s, m) {
        sub(&s, m).0
    } else {
        s
    }
}

/// (a - b) mod m for a, b < m.
pub fn sub_mod(a: &U256, b: &U256, m: &U256) -> U256 {
    let (d, borrow) = sub(a, b);
    if borrow {
        add(&d, m).0
    } else {
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_arithmetic_carries() {
        let mut b = [0u8; 32];
        b[31] = 1;
        b[0] = 0x80;
        let w = from_be(&b);
        assert_eq!(w, [1, 0, 0, 0x8000_0000_0000_0000]);
        assert_eq!(to_be(&w), b);
        let max = [u64::MAX; 4];
        assert_eq!(add(&max, &[1, 0, 0, 0]), ([0; 4], true));
        assert_eq!(sub(&[0; 4], &[1, 0, 0, 0]), (max, true));
        let m = [7, 0, 0, 0];
        assert_eq!(add_mod(&[5, 0, 0, 0], &[4, 0, 0, 0], &m), [2, 0, 0, 0]);
        assert_eq!(sub_mod(&[2, 0, 0, 0], &[4, 0, 0, 0], &m), [5, 0, 0, 0]);
        assert!(lt(&[0, 0, 0, 1], &[0, 0, 1, 1]) && !lt(&m, &m) && is_zero(&[0; 4]));
    }
}
