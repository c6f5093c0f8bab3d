//! The offline check behind `bsn-gateway audit verify`: the hash chain line by line, every
//! checkpoint against the line it names and against the audit key's public key, and,
//! given the checkpoints an operator exported elsewhere, that none of them is missing from
//! the log (a cut tail) or different in it (a re-chained edit).

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use openssl::ec::EcKey;
use openssl::ecdsa::EcdsaSig;
use openssl::pkey::Public;
use serde_json::Value;

use super::{checkpoint_message, Checkpoint, GENESIS};

/// Hashes kept for checkpoints to refer back to: a checkpoint names the head as it was a
/// moment before it was written, never far back.
const WINDOW: usize = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("line {line}: {reason}")]
    Broken { line: u64, reason: String },
    #[error("{0}: {1}")]
    Exported(PathBuf, String),
}

/// What a successful check found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub lines: u64,
    /// Checkpoints whose signature was checked against the key.
    pub checkpoints: u64,
    /// Checkpoints seen but not checked (no key given).
    pub unchecked: u64,
    /// The line the last checkpoint vouches for.
    pub anchored_to: u64,
    /// Exported checkpoints matched in the log.
    pub exported: u64,
}

impl Report {
    /// Lines after the last checkpoint: their integrity rests on the chain alone.
    pub fn unanchored(&self) -> u64 {
        self.lines - self.anchored_to.min(self.lines)
    }
}

/// Reads an export file: one checkpoint JSON object per line.
pub fn read_exported(path: &Path) -> Result<Vec<Checkpoint>, VerifyError> {
    let text = std::fs::read_to_string(path).map_err(|e| VerifyError::Io(path.to_path_buf(), e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                VerifyError::Exported(path.to_path_buf(), format!("line {}: {e}", i + 1))
            })
        })
        .collect()
}

fn signature_ok(key: &EcKey<Public>, cp: &Checkpoint) -> bool {
    let digest = crate::util::sha256(&checkpoint_message(cp.seq, &cp.hash));
    crate::util::unhex0x(&cp.signature)
        .ok()
        .and_then(|der| EcdsaSig::from_der(&der).ok())
        .and_then(|sig| sig.verify(&digest, key).ok())
        .unwrap_or(false)
}

/// Checks the whole chain and every checkpoint. With `key`, a checkpoint whose signature
/// does not verify breaks the log; with `exported`, so does an exported checkpoint the log
/// no longer has.
pub fn verify(
    path: &Path,
    key: Option<&EcKey<Public>>,
    exported: Option<&[Checkpoint]>,
) -> Result<Report, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io(path.to_path_buf(), e))?;
    let mut wanted: BTreeMap<u64, &Checkpoint> = BTreeMap::new();
    for cp in exported.unwrap_or_default() {
        if let Some(key) = key {
            if !signature_ok(key, cp) {
                return Err(VerifyError::Broken {
                    line: cp.seq,
                    reason: "an exported checkpoint's signature does not verify with the audit key"
                        .into(),
                });
            }
        }
        wanted.insert(cp.seq, cp);
    }
    let mut report = Report::default();
    let mut prev = GENESIS.to_string();
    let mut recent: VecDeque<String> = VecDeque::with_capacity(WINDOW);
    let mut n = 0u64;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| VerifyError::Io(path.to_path_buf(), e))?;
        n += 1;
        let broken = |reason: String| VerifyError::Broken { line: n, reason };
        let v: Value =
            serde_json::from_slice(&line).map_err(|e| broken(format!("not a JSON entry: {e}")))?;
        let seq = v.get("seq").and_then(Value::as_u64);
        if seq != Some(n) {
            return Err(broken(format!("sequence {seq:?}, expected {n}")));
        }
        let claimed = v.get("prev").and_then(Value::as_str).unwrap_or("");
        if claimed != prev {
            return Err(broken(
                "hash chain broken: the previous line was changed, removed or reordered, or this one was".into(),
            ));
        }
        prev = super::line_hash(&line);
        if recent.len() == WINDOW {
            recent.pop_front();
        }
        recent.push_back(prev.clone());

        if let Some(cp) = v.get("checkpoint") {
            let cp: Checkpoint = serde_json::from_value(cp.clone())
                .map_err(|e| broken(format!("malformed checkpoint: {e}")))?;
            let back = n.checked_sub(cp.seq).map(|b| b as usize);
            let hash_then = back
                .filter(|b| *b < recent.len())
                .map(|b| &recent[recent.len() - 1 - b]);
            if hash_then != Some(&cp.hash) {
                return Err(broken(format!(
                    "checkpoint for line {} names a hash the log does not have there: lines were edited, removed or re-chained",
                    cp.seq
                )));
            }
            match key {
                Some(k) if !signature_ok(k, &cp) => {
                    return Err(broken(
                        "checkpoint signature does not verify with the audit key: it was not made by the HSM".into(),
                    ))
                }
                Some(_) => report.checkpoints += 1,
                None => report.unchecked += 1,
            }
            report.anchored_to = cp.seq;
        }
        if let Some(cp) = wanted.remove(&n) {
            if cp.hash != prev {
                return Err(broken(
                    "differs from the exported checkpoint for this line: the log was edited or re-chained".into(),
                ));
            }
            report.exported += 1;
            report.anchored_to = report.anchored_to.max(n);
        }
    }
    if let Some((seq, _)) = wanted.iter().next() {
        return Err(VerifyError::Broken {
            line: *seq,
            reason: format!(
                "the log ends at line {n}, but an exported checkpoint vouches for line {seq}: the log was truncated"
            ),
        });
    }
    report.lines = n;
    Ok(report)
}
