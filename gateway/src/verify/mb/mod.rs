//! Multi-buffer verification: eight ECDSA (P-256, secp256k1), SM2 or Ed25519 signatures
//! at once on AVX-512 IFMA, the design of Intel's crypto_mb (52-bit limbs, one register
//! per limb of eight lanes) written anew here. Chosen at run time: `available()` says
//! whether this CPU has IFMA; without it, and for every lane that meets an exceptional
//! addition, the callers use the scalar path (OpenSSL, libsecp256k1, `sm2p256`,
//! ed25519-dalek), which the tests hold this path to, answer for answer.
//!
//! - `vector`: the entry points and the ECDSA/SM2 lanes, with `field`, `point`, `glv`,
//!   and Ed25519's `edwards` and `f25519`: x86_64 only. Elsewhere (an ARM server) a
//!   stand-in declines every lane, so the same callers run the scalar path.
//! - `ed_input`: what an Ed25519 lane holds, on any architecture, with `fe51` for the
//!   decompression of keys.
//! - `check`: the differential runs the tests and `verify-mb diff` make.
//!
//! This is the one module of the workspace that may use `unsafe`: converting registers
//! to and from arrays (`field::lanes`, `field::from_lanes`) and entering the
//! `target_feature` functions after the CPU check (`vector::verify`).

pub mod check;
mod ed_input;
#[cfg(target_arch = "x86_64")]
mod edwards;
#[cfg(target_arch = "x86_64")]
mod f25519;
mod fe51;
#[cfg(target_arch = "x86_64")]
mod field;
#[cfg(target_arch = "x86_64")]
mod glv;
#[cfg(target_arch = "x86_64")]
mod point;
#[cfg(target_arch = "x86_64")]
mod vector;

/// Other architectures have no vector path: every lane is declined to the scalar path.
#[cfg(not(target_arch = "x86_64"))]
mod vector {
    use super::{Curve, EdLane, Lane, Recovery};

    pub fn cpu_has_ifma() -> bool {
        false
    }
    pub fn verify(_: Curve, lanes: &[Lane]) -> Vec<Option<bool>> {
        vec![None; lanes.len()]
    }
    pub fn verify_ed25519(lanes: &[EdLane]) -> Vec<Option<bool>> {
        vec![None; lanes.len()]
    }
    pub fn recover(lanes: &[Recovery]) -> Vec<Option<Option<[u8; 65]>>> {
        vec![None; lanes.len()]
    }
}

use std::sync::OnceLock;

pub use ed_input::{decompress as ed25519_decompress, lane as ed25519_lane, EdLane};
pub use vector::{recover, verify, verify_ed25519};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    Secp256k1,
    Sm2,
}

/// One signature to check, every value big-endian. `e` is the 32-byte digest for ECDSA,
/// the final e = SM3(Z || M) for SM2. (qx, qy) must be a point on the curve, not at
/// infinity: a key parsed and checked by `verify::keys`.
#[derive(Debug, Clone, Copy)]
pub struct Lane {
    pub qx: [u8; 32],
    pub qy: [u8; 32],
    pub r: [u8; 32],
    pub s: [u8; 32],
    pub e: [u8; 32],
}

/// Lanes per register set.
pub const LANES: usize = 8;

/// The fewest lanes worth a register set of eight: below it, the items one by one on the
/// scalar path cost less. Measured with `verify-mb` on the 2-core EPYC: a set costs about
/// as much as 2.7 P-256 verifications in OpenSSL, 3.8 in libsecp256k1 and 2 in `sm2p256`.
fn min_lanes(curve: Curve) -> usize {
    match curve {
        Curve::P256 => 3,
        Curve::Secp256k1 => 4,
        Curve::Sm2 => 2,
    }
}

/// How many of `n` lanes (the first ones) to give this path: every full register set,
/// and a short tail only when eight lanes' work costs less than its items one by one.
pub fn vector_share(curve: Curve, n: usize) -> usize {
    let full = n - n % LANES;
    if n - full >= min_lanes(curve) {
        n
    } else {
        full
    }
}

/// Whether this CPU runs the multi-buffer path. `BSN_NO_IFMA=1` in the environment makes
/// a CPU with IFMA answer as one without: CI runs the tests that way too, so the path
/// every other CPU takes is tested on this one, and an operator can rule the vector code
/// out without a new build.
pub fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| !turned_off() && vector::cpu_has_ifma())
}

fn turned_off() -> bool {
    std::env::var_os("BSN_NO_IFMA").is_some_and(|v| !v.is_empty() && v != "0")
}

/// How many of `n` Ed25519 items (the first ones) to give this path: every full register
/// set, and a tail of at least four (a set of eight costs about what four cost on the
/// batch path, measured on the 2-core EPYC).
pub fn ed25519_share(n: usize) -> usize {
    let full = n - n % LANES;
    if n - full >= 4 {
        n
    } else {
        full
    }
}

/// One secp256k1 public-key recovery (Ethereum's ecrecover): r, s and e big-endian, `odd`
/// the parity of R's y (v = 0 or 1; x(R) = r, as Ethereum uses only those two ids).
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    pub r: [u8; 32],
    pub s: [u8; 32],
    pub e: [u8; 32],
    pub odd: bool,
}
