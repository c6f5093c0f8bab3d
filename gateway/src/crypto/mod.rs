//! Encodings of keys and signatures that custody produces and verification consumes.

pub mod ecdsa;
pub mod pubkey;
