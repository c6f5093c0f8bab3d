//! The audit log: every key operation appended as one JSON line that carries the SHA-256
//! of the line before it, so any edit, removal or reordering breaks the chain. One writer
//! thread batches the lines of concurrent callers and fsyncs once per batch (group commit);
//! a caller hears back only after its line is durable.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const QUEUE: usize = 8192;
const MAX_BATCH: usize = 1024;

/// What happened, as the caller describes it. `subject_sha256` is the hash of what was
/// signed (or imported), never the data itself.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub client: String,
    pub operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_sha256: Option<String>,
    /// `ok` or the error code returned to the client.
    pub result: String,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    ts: String,
    #[serde(flatten)]
    entry: &'a AuditEntry,
    prev: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit queue is full")]
    Busy,
    #[error("audit log is not writable: {0}")]
    Unavailable(String),
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Pending {
    entry: AuditEntry,
    done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct AuditLog {
    tx: crossbeam_channel::Sender<Pending>,
    healthy: Arc<AtomicBool>,
}

impl AuditLog {
    /// Opens (or creates) the log, cuts a torn last line left by a crash, and starts the writer.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let open_err = |source| AuditError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(open_err)?;
        let (seq, prev) = recover_tail(&mut file).map_err(open_err)?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(file, seq, prev, rx, h))
            .map_err(open_err)?;
        Ok(AuditLog { tx, healthy })
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Appends one entry and waits until it is on disk.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        if !self.is_healthy() {
            return Err(AuditError::Unavailable("an earlier write failed".into()));
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .try_send(Pending { entry, done })
            .map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => AuditError::Busy,
                crossbeam_channel::TrySendError::Disconnected(_) => {
                    AuditError::Unavailable("writer stopped".into())
                }
            })?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Unavailable(e)),
            Err(_) => Err(AuditError::Unavailable("writer stopped".into())),
        }
    }
}

/// Finds the sequence number and hash of the last complete line; truncates a torn tail.
fn recover_tail(file: &mut File) -> std::io::Result<(u64, String)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((0, GENESIS.to_string()));
    }
    let start = len.saturating_sub(1 << 20);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let complete = match tail.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        None => return Err(std::io::Error::other("audit log has a line over 1 MiB")),
    };
    if complete < tail.len() {
        tracing::warn!(
            bytes = tail.len() - complete,
            "audit log ends in a torn line (crash during a write); cutting it"
        );
        file.set_len(start + complete as u64)?;
        file.sync_all()?;
    }
    let body = &tail[..complete];
    let Some(last) = body
        .strip_suffix(b"\n")
        .and_then(|b| b.rsplit(|c| *c == b'\n').next())
        .filter(|l| !l.is_empty())
    else {
        return Ok((0, GENESIS.to_string()));
    };
    let seq = serde_json::from_slice::<Value>(last)
        .ok()
        .and_then(|v| v.get("seq").and_then(Value::as_u64))
        .ok_or_else(|| std::io::Error::other("last audit line is not a valid entry"))?;
    Ok((seq, hex::encode(crate::util::sha256(last))))
}

fn writer(
    mut file: File,
    mut seq: u64,
    mut prev: String,
    rx: crossbeam_channel::Receiver<Pending>,
    healthy: Arc<AtomicBool>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let mut buf = Vec::with_capacity(batch.len() * 256);
        let (seq0, prev0) = (seq, prev.clone());
        for p in &batch {
            seq += 1;
            let line = serde_json::to_vec(&Line {
                seq,
                ts: now_precise(),
                entry: &p.entry,
                prev: &prev,
            })
            .expect("audit line serialises");
            prev = hex::encode(crate::util::sha256(&line));
            buf.extend_from_slice(&line);
            buf.push(b'\n');
        }
        let started = Instant::now();
        let result = file.write_all(&buf).and_then(|_| file.sync_data());
        metrics::histogram!(crate::metrics::AUDIT_FSYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // Fail closed: without an audit trail no key operation may go on.
                tracing::error!(error = %e, "audit log write failed; key operations stop");
                healthy.store(false, Ordering::Relaxed);
                seq = seq0;
                prev = prev0;
                Err(e.to_string())
            }
        };
        for p in batch {
            let _ = p.done.send(outcome.clone());
        }
    }
}

fn now_precise() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("line {line}: {reason}")]
    Broken { line: u64, reason: String },
}

/// Checks the whole chain; returns the number of entries.
pub fn verify(path: &Path) -> Result<u64, VerifyError> {
    let file = File::open(path).map_err(|e| VerifyError::Io(path.to_path_buf(), e))?;
    let mut prev = GENESIS.to_string();
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
        prev = hex::encode(crate::util::sha256(&line));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            client: format!("c{i}"),
            operation: "sign",
            key_id: Some("k".into()),
            subject_sha256: None,
            result: "ok".into(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_chain_and_survive_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(entry(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(verify(&path).unwrap(), 200);

        // A crash in the middle of a write leaves a partial line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":201,\"ts\"").unwrap();
        drop(f);
        assert!(verify(&path).is_err());
        let log = AuditLog::open(&path).unwrap();
        log.append(entry(0)).await.unwrap();
        assert_eq!(verify(&path).unwrap(), 201);
    }

    #[tokio::test]
    async fn a_tampered_line_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for i in 0..3 {
            log.append(entry(i)).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"c1\"", "\"cX\"", 1)).unwrap();
        match verify(&path) {
            Err(VerifyError::Broken { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }
}
