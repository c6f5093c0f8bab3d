//! Batch signature verification, independent of HTTP: callers hand in tasks, a pool of
//! worker threads drains them in micro-batches and answers each caller in order.
//!
//! - `engine`: the bounded queue, the workers and their metrics;
//! - `keys`: public-key parsing and the bounded cache of parsed keys;
//! - `ecdsa`: ECDSA P-256 (OpenSSL), secp256k1 (libsecp256k1) and SM2 (OpenSSL);
//! - `ed25519`: strict checks plus true batch verification with bisection;
//! - `mb`: ECDSA and SM2 eight at a time on AVX-512 IFMA, where the CPU has it.

pub mod ecdsa;
pub mod ed25519;
pub mod engine;
pub mod keys;
// The one module allowed `unsafe`: SIMD intrinsics (see its header).
#[allow(unsafe_code)]
pub mod mb;
pub mod sm2p256;
pub mod u256;

use serde::Deserialize;

use crate::algorithm::Algorithm;
pub use crate::crypto::SigFormat;

pub use engine::{Engine, EngineError, INLINE_ITEMS};

/// `[verify]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyConfig {
    /// Worker threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// A micro-batch is flushed at this many items...
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// ...or when its first item has waited this long for company.
    #[serde(default = "default_max_wait_us")]
    pub max_wait_us: u64,
    /// Items waiting for a worker, at most; beyond it callers get an overload error.
    #[serde(default = "default_queue_items")]
    pub queue_items: usize,
    /// Parsed public keys kept for reuse.
    #[serde(default = "default_cache")]
    pub key_cache_entries: usize,
    /// ECDSA, SM2 and Ed25519 eight at a time on AVX-512 IFMA where the CPU has it (`verify::mb`);
    /// off, or on a CPU without it, every item takes the scalar path.
    #[serde(default = "yes")]
    pub multi_buffer: bool,
    /// With the multi-buffer path running: while small calls of a set of lanes' items or
    /// more are under way but fewer items are queued, a small call waits up to this long
    /// for more before they are verified (its runtime thread serves other requests
    /// meanwhile); 0 never waits.
    #[serde(default = "default_lane_wait_us")]
    pub lane_wait_us: u64,
}

fn yes() -> bool {
    true
}

fn default_max_batch() -> usize {
    64
}
fn default_max_wait_us() -> u64 {
    100
}
fn default_lane_wait_us() -> u64 {
    50
}
fn default_queue_items() -> usize {
    65_536
}
fn default_cache() -> usize {
    16_384
}

impl Default for VerifyConfig {
    fn default() -> Self {
        VerifyConfig {
            workers: 0,
            max_batch: default_max_batch(),
            max_wait_us: default_max_wait_us(),
            queue_items: default_queue_items(),
            key_cache_entries: default_cache(),
            multi_buffer: true,
            lane_wait_us: default_lane_wait_us(),
        }
    }
}

impl VerifyConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=4096).contains(&self.max_batch) {
            return Err("[verify]: max_batch must be 1 to 4096".into());
        }
        if self.queue_items < self.max_batch {
            return Err("[verify]: queue_items must be at least max_batch".into());
        }
        if self.max_wait_us > 100_000 {
            return Err("[verify]: max_wait_us above 100000 (0.1 s) only adds latency".into());
        }
        if self.lane_wait_us > 10_000 {
            return Err("[verify]: lane_wait_us above 10000 (10 ms) only adds latency".into());
        }
        if self.key_cache_entries == 0 {
            return Err("[verify]: key_cache_entries must be at least 1".into());
        }
        Ok(())
    }

    /// Whether the multi-buffer path runs: configured on and the CPU able.
    pub fn multi_buffer_active(&self) -> bool {
        self.multi_buffer && mb::available()
    }

    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// How a message becomes the digest an ECDSA-style algorithm signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Keccak256,
}

#[derive(Debug, Clone)]
pub enum Message {
    /// Already hashed: 32 bytes for ECDSA; for SM2 the final e = SM3(Z || M).
    Digest([u8; 32]),
    /// The message itself: hashed by `Item::hash` (ECDSA), with Z and SM3 (SM2), or signed
    /// as is (Ed25519).
    Bytes(Vec<u8>),
}

/// A public key as the caller gave it; parsed (and cached) by a worker.
#[derive(Debug, Clone)]
pub enum KeyInput {
    /// SEC1 compressed or uncompressed point, or the 32 raw bytes of an Ed25519 key.
    Bytes(Vec<u8>),
    /// PEM SubjectPublicKeyInfo.
    Pem(String),
    /// An Ethereum address: only with secp256k1 and the `eth` format.
    Address([u8; 20]),
}

#[derive(Debug, Clone)]
pub struct Item {
    pub algorithm: Algorithm,
    pub key: KeyInput,
    pub message: Message,
    pub hash: Hash,
    pub signature: Vec<u8>,
    pub format: SigFormat,
    pub require_low_s: bool,
}

#[derive(Debug, Clone)]
pub enum Task {
    Verify(Item),
    /// Recover the secp256k1 public key from an Ethereum-style r||s||v signature.
    Recover {
        digest: [u8; 32],
        signature: [u8; 65],
        require_low_s: bool,
    },
}

impl Task {
    pub fn algorithm(&self) -> Algorithm {
        match self {
            Task::Verify(item) => item.algorithm,
            Task::Recover { .. } => Algorithm::EcdsaSecp256k1,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Valid,
    /// From `Task::Recover`: the uncompressed SEC1 public key.
    Recovered([u8; 65]),
    Invalid(Reason),
}

/// Why one item failed. The API shows `as_str`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not decodable: wrong length, not strict DER, non-canonical point encoding.
    BadEncoding,
    BadPublicKey,
    BadSignature,
    /// s > n/2 where low-S is required.
    HighS,
    UnknownKey,
    UnsupportedAlgorithm,
    UnsupportedFormat,
    AlgorithmMismatch,
    /// Fields missing, conflicting or not meaningful for the algorithm.
    InvalidItem,
    Internal,
}

impl Reason {
    pub const ALL: [Reason; 10] = [
        Reason::BadEncoding,
        Reason::BadPublicKey,
        Reason::BadSignature,
        Reason::HighS,
        Reason::UnknownKey,
        Reason::UnsupportedAlgorithm,
        Reason::UnsupportedFormat,
        Reason::AlgorithmMismatch,
        Reason::InvalidItem,
        Reason::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadEncoding => "bad_encoding",
            Reason::BadPublicKey => "bad_public_key",
            Reason::BadSignature => "bad_signature",
            Reason::HighS => "high_s",
            Reason::UnknownKey => "unknown_key",
            Reason::UnsupportedAlgorithm => "unsupported_algorithm",
            Reason::UnsupportedFormat => "unsupported_format",
            Reason::AlgorithmMismatch => "algorithm_mismatch",
            Reason::InvalidItem => "invalid_item",
            Reason::Internal => "internal",
        }
    }
}

impl Item {
    /// What the types allow but the algorithms do not.
    fn check(&self) -> Result<(), Reason> {
        use Algorithm::*;
        match (self.algorithm, self.format) {
            (Ed25519, SigFormat::Raw) => {}
            (Ed25519, _) => return Err(Reason::UnsupportedFormat),
            (EcdsaSecp256k1, _) => {}
            (_, SigFormat::Eth) => return Err(Reason::UnsupportedFormat),
            _ => {}
        }
        if self.algorithm == Ed25519 && matches!(self.message, Message::Digest(_)) {
            // Pure Ed25519 hashes the message itself; a digest cannot be checked.
            return Err(Reason::InvalidItem);
        }
        if matches!(self.key, KeyInput::Address(_)) && self.format != SigFormat::Eth {
            return Err(Reason::InvalidItem);
        }
        Ok(())
    }

    /// The 32-byte digest an ECDSA curve signs.
    fn ecdsa_digest(&self) -> [u8; 32] {
        match &self.message {
            Message::Digest(d) => *d,
            Message::Bytes(m) => match self.hash {
                Hash::Sha256 => crate::util::sha256(m),
                Hash::Keccak256 => crate::util::keccak256(m),
            },
        }
    }
}
