//! Ledger transaction formats: what admission decodes and checks before anything is
//! accepted.
//!
//! - `ethereum`: signed Ethereum transactions (legacy EIP-155, EIP-2930, EIP-1559);
//! - `envelope`: framework-neutral signed payloads, with a custody key or an X.509
//!   certificate chained to the ledger's trust anchors.

pub mod envelope;
pub mod ethereum;
pub mod trust;

/// A transaction id: the Ethereum transaction hash, or SHA-256 of an envelope's payload.
pub type TxId = [u8; 32];
