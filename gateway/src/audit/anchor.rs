//! Checkpoints: every `checkpoint_lines` lines, every `checkpoint_seconds` and at clean
//! shutdown, the chain head (line number and hash) is signed by a P-256 key generated in
//! the token (sensitive, never extractable) and written into the log as a line of its own;
//! optionally also appended to an export file that an operator ships elsewhere. Anyone who
//! edits the log can re-chain it, but cannot sign a checkpoint without the HSM, and a cut
//! tail shows against the exported checkpoints.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{checkpoint_message, AuditEntry, AuditError, AuditLog, Checkpoint};
use crate::algorithm::Algorithm;
use crate::custody::hsm::{Hsm, HsmError};
use crate::metrics as m;

/// The audit key's CKA_ID. Custody ids are 16 random bytes, so this one cannot collide.
pub const KEY_ID: &[u8] = b"bsn-gateway-audit-checkpoint-v1";
pub const KEY_LABEL: &str = "bsn-gateway-audit";
/// Where the audit key's public half is written, beside the log, for `audit verify`.
pub const KEY_FILE: &str = "audit-key.pem";

/// `[audit]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// A checkpoint at least every this many lines...
    #[serde(default = "default_lines")]
    pub checkpoint_lines: u64,
    /// ...and every this many seconds when anything was written.
    #[serde(default = "default_seconds")]
    pub checkpoint_seconds: u64,
    /// Each checkpoint is also appended (and fsynced) here, for shipping elsewhere.
    pub export_file: Option<PathBuf>,
    /// Failed authentications are summarised in one audit line at most this often.
    #[serde(default = "default_summary")]
    pub auth_failure_summary_seconds: u64,
}

fn default_lines() -> u64 {
    1000
}
fn default_seconds() -> u64 {
    300
}
fn default_summary() -> u64 {
    60
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            checkpoint_lines: default_lines(),
            checkpoint_seconds: default_seconds(),
            export_file: None,
            auth_failure_summary_seconds: default_summary(),
        }
    }
}

impl AuditConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.checkpoint_lines == 0
            || self.checkpoint_seconds == 0
            || self.auth_failure_summary_seconds == 0
        {
            return Err("[audit]: checkpoint_lines, checkpoint_seconds and auth_failure_summary_seconds must be >= 1".into());
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("audit key: {0}")]
    Hsm(#[from] HsmError),
    #[error("audit key: {0}")]
    Key(String),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("checkpoint export {0}: {1}")]
    Export(PathBuf, std::io::Error),
}

pub struct Anchor {
    log: AuditLog,
    hsm: Arc<Hsm>,
    config: AuditConfig,
    /// One checkpoint at a time, so two never name the same head.
    busy: tokio::sync::Mutex<()>,
}

impl Anchor {
    /// Finds the audit key in the token, or generates it on first start, and writes its
    /// public key to `dir/audit-key.pem`.
    pub async fn open(
        log: AuditLog,
        hsm: Arc<Hsm>,
        config: &AuditConfig,
        dir: &Path,
    ) -> Result<Arc<Anchor>, AnchorError> {
        let alg = Algorithm::EcdsaP256;
        let point = hsm
            .run("generate", alg.as_str(), true, move |hsm, s| {
                match hsm.public_point(s, alg, KEY_ID)? {
                    Some(p) if hsm.has_private_key(s, KEY_ID)? => Ok(p),
                    Some(_) => Err(HsmError::KeyMissing(hex::encode(KEY_ID))),
                    None => hsm.generate(s, alg, KEY_ID, KEY_LABEL),
                }
            })
            .await?;
        let pem = crate::crypto::pubkey::PublicKey::from_bytes(alg, &point)
            .map_err(|e| AnchorError::Key(e.to_string()))?
            .pem;
        let path = dir.join(KEY_FILE);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(pem.as_str()) {
            let tmp = dir.join("audit-key.pem.tmp");
            std::fs::write(&tmp, &pem)
                .and_then(|_| std::fs::rename(&tmp, &path))
                .map_err(|e| AnchorError::Export(path.clone(), e))?;
        }
        for result in ["ok", "error"] {
            metrics::counter!(m::AUDIT_CHECKPOINTS_TOTAL, "result" => result).absolute(0);
        }
        Ok(Arc::new(Anchor {
            log,
            hsm,
            config: config.clone(),
            busy: tokio::sync::Mutex::new(()),
        }))
    }

    /// Checkpoints whenever enough lines or time have passed, until the process ends.
    pub fn spawn(self: &Arc<Self>) {
        let this = self.clone();
        let due = self.log.due();
        let period = Duration::from_secs(self.config.checkpoint_seconds);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = due.notified() => {}
                    _ = tokio::time::sleep(period) => {}
                }
                if let Err(e) = this.checkpoint().await {
                    tracing::error!(error = %e, "audit checkpoint failed");
                }
            }
        });
    }

    /// Signs the current head into the log, unless nothing was written since the last
    /// checkpoint. Returns the checkpoint written.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>, AnchorError> {
        let _one = self.busy.lock().await;
        let head = self.log.head().await?;
        if head.seq == 0 || head.since_checkpoint == 0 {
            return Ok(None);
        }
        let result = self.sign_and_write(head.seq, head.hash).await;
        let label = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(m::AUDIT_CHECKPOINTS_TOTAL, "result" => label).increment(1);
        result.map(Some)
    }

    async fn sign_and_write(&self, seq: u64, hash: String) -> Result<Checkpoint, AnchorError> {
        let digest = crate::util::sha256(&checkpoint_message(seq, &hash)).to_vec();
        let alg = Algorithm::EcdsaP256;
        let mut raw = self
            .hsm
            .run("sign", alg.as_str(), true, move |hsm, s| {
                hsm.sign(s, alg, KEY_ID, std::slice::from_ref(&digest))
            })
            .await?;
        let raw = raw.pop().unwrap_or_default();
        let der =
            crate::crypto::ecdsa::raw_to_der(&raw).map_err(|e| AnchorError::Key(e.to_string()))?;
        let checkpoint = Checkpoint {
            seq,
            hash,
            signature: crate::util::hex0x(&der),
        };
        self.log
            .append(AuditEntry {
                client: "-".into(),
                operation: "checkpoint",
                result: "ok".into(),
                checkpoint: Some(checkpoint.clone()),
                ..Default::default()
            })
            .await?;
        if let Some(path) = &self.config.export_file {
            let mut line = serde_json::to_vec(&checkpoint).expect("checkpoints serialise");
            line.push(b'\n');
            let path = path.clone();
            tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(&line).and_then(|_| f.sync_data()))
                    .map_err(|e| AnchorError::Export(path, e))
            })
            .await
            .map_err(|_| AnchorError::Key("export task failed".into()))??;
        }
        Ok(checkpoint)
    }
}
