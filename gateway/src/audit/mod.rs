//! The audit log: every key operation appended as one JSON line that carries the SHA-256
//! of the line before it, so any edit, removal or reordering breaks the chain. One writer
//! thread batches the lines of concurrent callers and fsyncs once per batch (group commit);
//! a caller hears back only after its line is durable. While several more key operations
//! are under way than lines are in hand, the writer waits a little (`GROUP_WAIT`) for
//! theirs: on a virtual disk an fdatasync costs about 50 µs of CPU, and at one per 2.4
//! signatures that was a sixth of a P-256 signature's on SoftHSM2. A full queue makes
//! callers wait, never fail: only key operations and rare summaries are written here
//! (failed authentications are counted and summarised, not appended one by one).
//!
//! - `anchor`: checkpoints, the chain head signed by a key in the HSM;
//! - `verify`: the offline check of chain and checkpoints (`bsn-gateway audit verify`).

pub mod anchor;
pub mod verify;

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use verify::{verify, Report, VerifyError};

pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
const QUEUE: usize = 8192;
const MAX_BATCH: usize = 1024;
/// How long a batch waits for the lines of key operations under way: the writer sleeps
/// this long, takes what came, and sleeps again only if something did. With few
/// operations under way it does not wait at all (`GROUP_SIBLINGS`). One sleep per window,
/// not a poll every 50 µs: the polls' wake-ups cost a tenth of a core on the shared cores
/// (P-256, wrk, 64 connections: 12.0k, 11.6k, 12.2k/s polling, 15.3k, 12.4k, 15.2k/s
/// with one sleep).
const GROUP_WAIT: Duration = Duration::from_micros(300);
/// A batch's first line waits no longer than this in all.
const GROUP_WAIT_MAX: Duration = Duration::from_millis(2);
/// The writer waits only while more than this many key operations are under way beyond
/// the lines in hand. With a few clients the wait would cost them more time than the
/// fsyncs it saves (measured: 4 closed-loop clients lost a sixth to a quarter of their rate
/// with no margin, nothing with this one).
const GROUP_SIBLINGS: usize = 4;

/// Whether lines still to come make waiting before the fsync worth it. Operations whose
/// lines are in hand are counted in `underway` too (they wait for this batch), and so are
/// operations just answered and not yet ended: those can make a batch wait when nothing
/// more comes, for `GROUP_WAIT` at most.
fn worth_waiting(underway: usize, in_hand: usize) -> bool {
    underway > in_hand + GROUP_SIBLINGS
}

/// What happened, as the caller describes it. `subject_sha256` is the hash of what was
/// signed (or imported), never the data itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEntry {
    pub client: String,
    pub operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_sha256: Option<String>,
    /// `ok` or the error code returned to the client.
    pub result: String,
    /// `hsm` or `external`, on lines about one key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custody: Option<&'static str>,
    /// For a summary line: how many events it stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Free text that is not secret (a reload's errors, a scheduled time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
}

/// The chain head at line `seq` (whose SHA-256 is `hash`), signed in the HSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
    /// ECDSA P-256 over SHA-256 of `checkpoint_message(seq, hash)`, DER, 0x hex.
    pub signature: String,
}

/// The chain's link: what the next line's `prev` holds for `line` (its bytes without the
/// newline). The writer, the tail recovery and `verify` must agree on it to the byte.
pub(crate) fn line_hash(line: &[u8]) -> String {
    crate::util::hex(&crate::util::sha256(line))
}

/// The bytes a checkpoint signature covers.
pub fn checkpoint_message(seq: u64, hash: &str) -> Vec<u8> {
    format!("bsn-gateway audit checkpoint\n{seq}\n{hash}\n").into_bytes()
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
    #[error("audit log is not writable: {0}")]
    Unavailable(String),
    #[error("cannot open audit log {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

enum Msg {
    Append {
        entry: Box<AuditEntry>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// The last durable line: (seq, SHA-256 hex), and lines since the last checkpoint.
    Head(tokio::sync::oneshot::Sender<Head>),
}

/// A key operation under way; see `AuditLog::underway`.
pub struct Underway(Arc<AtomicUsize>);

impl Drop for Underway {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
    pub since_checkpoint: u64,
}

#[derive(Clone)]
pub struct AuditLog {
    tx: tokio::sync::mpsc::Sender<Msg>,
    healthy: Arc<AtomicBool>,
    /// Key operations under way (`Underway`), each of which ends with a line.
    underway: Arc<AtomicUsize>,
    /// Woken when `checkpoint_every` lines have been written since the last checkpoint.
    due: Arc<tokio::sync::Notify>,
}

impl AuditLog {
    /// Opens (or creates) the log, cuts a torn last line left by a crash, and starts the
    /// writer. `checkpoint_every` lines after a checkpoint, `due()` is notified.
    pub fn open(path: &Path, checkpoint_every: u64) -> Result<AuditLog, AuditError> {
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
        let _ = metrics::histogram!(crate::metrics::AUDIT_FSYNC_SECONDS);
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let due = Arc::new(tokio::sync::Notify::new());
        let underway = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            underway: underway.clone(),
            file,
            seq,
            prev,
            // Unknown after a restart: count from here, so the first checkpoint comes soon.
            since_checkpoint: 0,
            checkpoint_every: checkpoint_every.max(1),
            healthy: healthy.clone(),
            due: due.clone(),
        };
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(open_err)?;
        Ok(AuditLog {
            tx,
            healthy,
            underway,
            due,
        })
    }

    /// Counts a key operation as under way until the guard drops (when the operation
    /// ends): the writer waits a little for its line before an fsync. Only a hint for
    /// batching: an operation that never writes a line costs a batch `GROUP_WAIT` at most.
    pub fn underway(&self) -> Underway {
        self.underway.fetch_add(1, Ordering::AcqRel);
        Underway(self.underway.clone())
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Appends one entry and waits until it is on disk. When the queue is full the caller
    /// waits for room: a key operation is never refused because others are being logged.
    pub async fn append(&self, entry: AuditEntry) -> Result<(), AuditError> {
        if !self.is_healthy() {
            return Err(AuditError::Unavailable("an earlier write failed".into()));
        }
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Append {
                entry: Box::new(entry),
                done,
            })
            .await
            .map_err(|_| AuditError::Unavailable("writer stopped".into()))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AuditError::Unavailable(e)),
            Err(_) => Err(AuditError::Unavailable("writer stopped".into())),
        }
    }

    /// The last durable line.
    pub async fn head(&self) -> Result<Head, AuditError> {
        let (reply, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Msg::Head(reply))
            .await
            .map_err(|_| AuditError::Unavailable("writer stopped".into()))?;
        wait.await
            .map_err(|_| AuditError::Unavailable("writer stopped".into()))
    }

    pub(crate) fn due(&self) -> Arc<tokio::sync::Notify> {
        self.due.clone()
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
    Ok((seq, line_hash(last)))
}

struct Writer {
    file: File,
    seq: u64,
    prev: String,
    since_checkpoint: u64,
    checkpoint_every: u64,
    healthy: Arc<AtomicBool>,
    due: Arc<tokio::sync::Notify>,
    underway: Arc<AtomicUsize>,
}

impl Writer {
    fn run(mut self, mut rx: tokio::sync::mpsc::Receiver<Msg>) {
        crate::sched::background("audit-writer");
        while let Some(first) = rx.blocking_recv() {
            let mut batch = Vec::new();
            let mut heads = Vec::new();
            let mut next = Some(first);
            let started = Instant::now();
            loop {
                while let Some(msg) = next.take() {
                    match msg {
                        Msg::Append { entry, done } => batch.push((*entry, done)),
                        Msg::Head(reply) => heads.push(reply),
                    }
                    if batch.len() < MAX_BATCH {
                        next = rx.try_recv().ok();
                    }
                }
                if batch.is_empty() || batch.len() >= MAX_BATCH {
                    break;
                }
                // Lines that came during a window earn the batch another one.
                let left = (started + GROUP_WAIT_MAX).saturating_duration_since(Instant::now());
                if left.is_zero()
                    || !worth_waiting(self.underway.load(Ordering::Acquire), batch.len())
                {
                    break;
                }
                std::thread::sleep(GROUP_WAIT.min(left));
                next = rx.try_recv().ok();
                if next.is_none() {
                    break;
                }
            }
            if !batch.is_empty() {
                self.write(batch);
            }
            for reply in heads {
                let _ = reply.send(Head {
                    seq: self.seq,
                    hash: self.prev.clone(),
                    since_checkpoint: self.since_checkpoint,
                });
            }
        }
    }

    fn write(
        &mut self,
        batch: Vec<(AuditEntry, tokio::sync::oneshot::Sender<Result<(), String>>)>,
    ) {
        let mut buf = Vec::with_capacity(batch.len() * 256);
        let (seq0, prev0, since0) = (self.seq, self.prev.clone(), self.since_checkpoint);
        for (entry, _) in &batch {
            self.seq += 1;
            let line = serde_json::to_vec(&Line {
                seq: self.seq,
                ts: now_precise(),
                entry,
                prev: &self.prev,
            })
            .expect("audit line serialises");
            self.prev = line_hash(&line);
            buf.extend_from_slice(&line);
            buf.push(b'\n');
            if entry.checkpoint.is_some() {
                self.since_checkpoint = 0;
            } else {
                self.since_checkpoint += 1;
            }
        }
        let started = Instant::now();
        let result = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        metrics::histogram!(crate::metrics::AUDIT_FSYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                // Fail closed: without an audit trail no key operation may go on.
                tracing::error!(error = %e, "audit log write failed; key operations stop");
                self.healthy.store(false, Ordering::Relaxed);
                (self.seq, self.prev, self.since_checkpoint) = (seq0, prev0, since0);
                Err(e.to_string())
            }
        };
        if self.since_checkpoint >= self.checkpoint_every {
            self.due.notify_one();
        }
        for (_, done) in batch {
            let _ = done.send(outcome.clone());
        }
    }
}

fn now_precise() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> AuditEntry {
        AuditEntry {
            client: format!("c{i}"),
            operation: "sign",
            key_id: Some("k".into()),
            result: "ok".into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_chain_and_survive_reopen_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1000).unwrap();
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let log = log.clone();
                tokio::spawn(async move { log.append(entry(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(verify(&path, None, None).unwrap().lines, 200);

        // A crash in the middle of a write leaves a partial line.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"seq\":201,\"ts\"").unwrap();
        drop(f);
        assert!(verify(&path, None, None).is_err());
        let log = AuditLog::open(&path, 1000).unwrap();
        log.append(entry(0)).await.unwrap();
        assert_eq!(verify(&path, None, None).unwrap().lines, 201);
    }

    #[test]
    fn the_writer_waits_only_for_several_operations_beyond_the_lines_in_hand() {
        assert!(!worth_waiting(1, 1), "a lone caller never waits");
        assert!(!worth_waiting(1 + GROUP_SIBLINGS, 1));
        assert!(worth_waiting(2 + GROUP_SIBLINGS, 1));
        assert!(worth_waiting(64, 10));
        assert!(!worth_waiting(64, 64), "every line in hand");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_under_way_only_delay_the_fsync_and_every_line_lands() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1000).unwrap();
        // Operations counted as under way that never write a line (a worst case): an
        // append still completes, after a bounded wait.
        let phantoms: Vec<_> = (0..100).map(|_| log.underway()).collect();
        tokio::time::timeout(Duration::from_secs(30), log.append(entry(0)))
            .await
            .expect("an append completes while phantom operations are under way")
            .unwrap();
        drop(phantoms);
        assert_eq!(log.underway.load(Ordering::Acquire), 0);
        // 64 operations, each under way from its start until its line is durable, as
        // custody counts them: every line written, in one chain.
        let tasks: Vec<_> = (1..=64)
            .map(|i| {
                let log = log.clone();
                let underway = log.underway();
                tokio::spawn(async move {
                    let _underway = underway;
                    tokio::task::yield_now().await;
                    log.append(entry(i)).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(log.underway.load(Ordering::Acquire), 0);
        assert_eq!(verify(&path, None, None).unwrap().lines, 65);
    }

    #[tokio::test]
    async fn a_tampered_line_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path, 1000).unwrap();
        for i in 0..3 {
            log.append(entry(i)).await.unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replacen("\"c1\"", "\"cX\"", 1)).unwrap();
        match verify(&path, None, None) {
            Err(VerifyError::Broken { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected a broken chain, got {other:?}"),
        }
    }
}
