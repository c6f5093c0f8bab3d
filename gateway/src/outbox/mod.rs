//! The durable outbox: every accepted transaction is appended to a checksummed,
//! segmented log and fsynced before the client hears "accepted"; concurrent requests share
//! one fsync (group commit, in `writer`). Segments whose transactions are all resolved
//! (forwarded or failed) are removed; what the replay window and `GET
//! /v1/transactions/{id}` still need of them moves to small time-bucketed index files,
//! which are dropped whole once their bucket leaves the window.
//!
//! - `log`: the frame format and the scan that finds a torn tail;
//! - `writer`: the one thread that appends, fsyncs, rolls and collects segments.

pub mod log;
mod writer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::metrics as m;
use crate::txn::TxId;

/// `[outbox]` in the config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxConfig {
    /// An id seen this recently is refused as a replay (kept across restarts).
    #[serde(default = "default_window")]
    pub replay_window_seconds: u64,
    /// A segment is closed and a new one started past this size.
    #[serde(default = "default_segment")]
    pub segment_bytes: u64,
    /// Accepted but not yet forwarded, at most; beyond it submissions get 503.
    #[serde(default = "default_pending")]
    pub max_pending: usize,
    #[serde(default = "default_pending_bytes")]
    pub max_pending_bytes: u64,
    /// Ids remembered for the replay window, at most (bounds memory); beyond it, 503.
    #[serde(default = "default_tracked")]
    pub max_tracked: usize,
}

fn default_window() -> u64 {
    86_400
}
fn default_segment() -> u64 {
    64 << 20
}
fn default_pending() -> usize {
    1_000_000
}
fn default_pending_bytes() -> u64 {
    1 << 30
}
fn default_tracked() -> usize {
    4_000_000
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            replay_window_seconds: default_window(),
            segment_bytes: default_segment(),
            max_pending: default_pending(),
            max_pending_bytes: default_pending_bytes(),
            max_tracked: default_tracked(),
        }
    }
}

impl OutboxConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.segment_bytes < 4096 {
            return Err("[outbox]: segment_bytes must be at least 4096".into());
        }
        if self.max_pending == 0 || self.max_tracked < self.max_pending {
            return Err("[outbox]: max_pending must be >= 1 and max_tracked >= max_pending".into());
        }
        if self.replay_window_seconds == 0 {
            return Err("[outbox]: replay_window_seconds must be >= 1".into());
        }
        Ok(())
    }

    /// Index bucket length: a sixteenth of the window, at least a minute.
    fn bucket_seconds(&self) -> u64 {
        (self.replay_window_seconds / 16).max(60)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("the outbox is full ({0}); retry later")]
    Full(&'static str),
    #[error("the outbox could not write: {0}")]
    Io(String),
    #[error("outbox {path}: {message}")]
    Corrupt { path: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Being written; not yet durable, so not yet visible.
    Accepting,
    Accepted,
    Forwarded,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Accepting => "accepting",
            State::Accepted => "accepted",
            State::Forwarded => "forwarded",
            State::Failed => "failed",
        }
    }

    fn resolved(self) -> bool {
        matches!(self, State::Forwarded | State::Failed)
    }
}

#[derive(Debug, Clone)]
pub struct TxStatus {
    pub ledger: Arc<str>,
    /// The client that submitted it; only it (and admins) may read its status.
    pub owner: Arc<str>,
    pub accepted_at: u64,
    pub state: State,
    pub attempts: u32,
    pub node: Option<String>,
    pub response: Option<String>,
}

impl TxStatus {
    fn new(ledger: Arc<str>, owner: Arc<str>, accepted_at: u64, state: State) -> TxStatus {
        TxStatus {
            ledger,
            owner,
            accepted_at,
            state,
            attempts: 0,
            node: None,
            response: None,
        }
    }
}

/// A transaction to make durable.
pub struct NewTx {
    pub id: TxId,
    pub ledger: Arc<str>,
    pub owner: Arc<str>,
    pub body: Arc<[u8]>,
    /// The Ethereum sender admission recovered, kept so forwarding after a restart needs
    /// no signature code.
    pub sender: Option<[u8; 20]>,
}

/// One accepted, not yet resolved transaction found on start.
pub struct Pending {
    pub id: TxId,
    pub ledger: Arc<str>,
    pub body: Arc<[u8]>,
    /// None for records written before senders were stored.
    pub sender: Option<[u8; 20]>,
}

/// What the log holds. Index files hold only `Done`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Record {
    Accepted {
        id: String,
        ledger: String,
        at: u64,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sender: Option<String>,
    },
    Done {
        id: String,
        ledger: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        owner: Option<String>,
        at: u64,
        state: State,
        attempts: u32,
        node: Option<String>,
        response: Option<String>,
    },
}

impl Record {
    fn done(id: &TxId, s: &TxStatus) -> Record {
        Record::Done {
            id: hex::encode(id),
            ledger: s.ledger.to_string(),
            owner: Some(s.owner.to_string()),
            at: s.accepted_at,
            state: s.state,
            attempts: s.attempts,
            node: s.node.clone(),
            response: s.response.clone(),
        }
    }

    fn encode(&self) -> Vec<u8> {
        let json = serde_json::to_vec(self).expect("records serialise");
        let mut out = Vec::with_capacity(json.len() + 8);
        log::frame(&json, &mut out);
        out
    }
}

struct Entry {
    status: TxStatus,
    /// The segment that holds its `Accepted` record, while that segment exists.
    segment: Option<u64>,
    bytes: u64,
}

#[derive(Default)]
struct Segment {
    /// `Accepted` records here whose transaction is not yet resolved.
    unresolved: usize,
    /// Every id with a record here.
    ids: Vec<TxId>,
    bytes: u64,
}

#[derive(Default)]
struct Book {
    entries: HashMap<TxId, Entry>,
    segments: BTreeMap<u64, Segment>,
    pending: usize,
    pending_bytes: u64,
}

impl Entry {
    fn resolved(status: TxStatus) -> Entry {
        Entry {
            status,
            segment: None,
            bytes: 0,
        }
    }
}

impl Book {
    fn segment(&mut self, seq: u64) -> &mut Segment {
        self.segments.entry(seq).or_default()
    }

    /// Tracks an unresolved transaction; its segment, when known, counts it.
    fn track(&mut self, id: TxId, entry: Entry) {
        self.pending += 1;
        self.pending_bytes += entry.bytes;
        if let Some(seq) = entry.segment {
            self.segment(seq).unresolved += 1;
        }
        self.entries.insert(id, entry);
    }

    /// Its `Accepted` record is now in segment `seq` (and counts there while unresolved).
    fn place(&mut self, id: TxId, seq: u64) {
        self.segment(seq).ids.push(id);
        if let Some(e) = self.entries.get_mut(&id) {
            if !e.status.state.resolved() {
                e.segment = Some(seq);
                self.segment(seq).unresolved += 1;
            }
        }
    }

    /// No longer waits to be forwarded (resolved, or never made durable).
    fn unpend(&mut self, id: &TxId) {
        if let Some(e) = self.entries.get(id).filter(|e| !e.status.state.resolved()) {
            self.pending -= 1;
            self.pending_bytes -= e.bytes;
        }
    }

    /// Its outcome is on disk: its `Accepted` record no longer holds its segment.
    fn release(&mut self, id: &TxId) {
        if let Some(seq) = self.entries.get_mut(id).and_then(|e| e.segment.take()) {
            let seg = self.segment(seq);
            seg.unresolved = seg.unresolved.saturating_sub(1);
        }
    }

    fn publish(&self) {
        metrics::gauge!(m::OUTBOX_PENDING).set(self.pending as f64);
        metrics::gauge!(m::OUTBOX_TRACKED).set(self.entries.len() as f64);
        metrics::gauge!(m::OUTBOX_SEGMENTS).set(self.segments.len() as f64);
        let bytes: u64 = self.segments.values().map(|s| s.bytes).sum();
        metrics::gauge!(m::OUTBOX_BYTES).set(bytes as f64);
    }
}

struct Shared {
    /// Held for the life of the outbox: two gateways on one outbox would corrupt it.
    _lock: std::fs::File,
    book: Mutex<Book>,
    healthy: AtomicBool,
    config: OutboxConfig,
}

impl Shared {
    fn book(&self) -> MutexGuard<'_, Book> {
        // A panic while holding the lock leaves counters, not memory, inconsistent.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Write {
    Accept {
        frames: Vec<u8>,
        ids: Vec<TxId>,
        reply: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Done {
        frame: Vec<u8>,
        id: TxId,
    },
}

/// Writes waiting for the writer thread, at most; beyond it submissions get 503.
const MAX_QUEUED_WRITES: usize = 4096;

#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
    tx: crossbeam_channel::Sender<Write>,
}

impl Outbox {
    /// Opens (or creates) the outbox under `dir`: cuts a torn tail, rebuilds the replay
    /// window and returns every accepted transaction not yet resolved, oldest first.
    pub fn open(dir: &Path, config: &OutboxConfig) -> Result<(Outbox, Vec<Pending>), OutboxError> {
        let io = |e: std::io::Error| OutboxError::Io(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        let lock = std::fs::File::create(dir.join("LOCK")).map_err(io)?;
        lock.try_lock().map_err(|_| {
            OutboxError::Io(format!(
                "{}: another process holds this outbox",
                dir.display()
            ))
        })?;
        let mut book = Book::default();
        let now = crate::util::unix_now();
        let horizon = now.saturating_sub(config.replay_window_seconds);
        let bucket = config.bucket_seconds();

        // Index buckets first: they say which older transactions are already resolved.
        for (start, path) in numbered(dir, "index-").map_err(io)? {
            if start + bucket < horizon {
                std::fs::remove_file(&path).map_err(io)?;
                continue;
            }
            let scan = recover(&path, true)?;
            for r in scan {
                if let Record::Done { .. } = r {
                    let (id, status) = parse_done(r, &path)?;
                    book.entries.insert(id, Entry::resolved(status));
                }
            }
        }

        let segments = numbered(dir, "seg-").map_err(io)?;
        let last = segments.last().map(|(n, _)| *n);
        let mut pending: Vec<Option<Pending>> = Vec::new();
        let mut where_pending: HashMap<TxId, usize> = HashMap::new();
        for (seq, path) in &segments {
            let records = recover(path, Some(*seq) == last)?;
            book.segment(*seq).bytes = std::fs::metadata(path).map_err(io)?.len();
            for r in records {
                match r {
                    Record::Accepted {
                        id,
                        ledger,
                        at,
                        body,
                        owner,
                        sender,
                    } => {
                        let id = parse_id(&id, path)?;
                        book.segment(*seq).ids.push(id);
                        if book
                            .entries
                            .get(&id)
                            .is_some_and(|e| e.status.state.resolved())
                        {
                            continue;
                        }
                        let body: Arc<[u8]> = crate::util::unbase64(&body)
                            .map_err(|_| corrupt(path, "a body is not base64"))?
                            .into();
                        let ledger: Arc<str> = ledger.into();
                        let sender = sender
                            .and_then(|s| crate::util::unhex0x(&s).ok())
                            .and_then(|b| <[u8; 20]>::try_from(b).ok());
                        book.track(
                            id,
                            Entry {
                                status: TxStatus::new(
                                    ledger.clone(),
                                    owner_of(owner),
                                    at,
                                    State::Accepted,
                                ),
                                segment: Some(*seq),
                                bytes: body.len() as u64,
                            },
                        );
                        where_pending.insert(id, pending.len());
                        pending.push(Some(Pending {
                            id,
                            ledger,
                            body,
                            sender,
                        }));
                    }
                    done @ Record::Done { .. } => {
                        let (id, status) = parse_done(done, path)?;
                        book.segment(*seq).ids.push(id);
                        if let Some(i) = where_pending.remove(&id) {
                            pending[i] = None;
                        }
                        book.unpend(&id);
                        book.release(&id);
                        book.entries.insert(id, Entry::resolved(status));
                    }
                }
            }
        }
        let next = last.map_or(1, |n| n + 1);
        let shared = Arc::new(Shared {
            _lock: lock,
            book: Mutex::new(book),
            healthy: AtomicBool::new(true),
            config: config.clone(),
        });
        let (tx, rx) = crossbeam_channel::unbounded();
        let writer = writer::Writer::new(dir, next, shared.clone(), rx).map_err(io)?;
        std::thread::Builder::new()
            .name("outbox-writer".into())
            .spawn(move || writer.run())
            .map_err(io)?;
        let pending: Vec<Pending> = pending.into_iter().flatten().collect();
        if !pending.is_empty() {
            tracing::info!(
                pending = pending.len(),
                "outbox: accepted transactions queued again"
            );
        }
        shared.book().publish();
        metrics::counter!(m::OUTBOX_WRITE_ERRORS_TOTAL).absolute(0);
        let _ = metrics::histogram!(m::OUTBOX_FSYNC_SECONDS);
        Ok((Outbox { shared, tx }, pending))
    }

    /// Makes new transactions durable. Per transaction: `true` accepted, `false` a replay
    /// (an id seen within the window, or twice in this call). All or nothing on error.
    pub async fn accept(&self, txs: Vec<NewTx>) -> Result<Vec<bool>, OutboxError> {
        let cfg = &self.shared.config;
        let now = crate::util::unix_now();
        let mut fresh = Vec::with_capacity(txs.len());
        let mut verdicts = Vec::with_capacity(txs.len());
        {
            let mut book = self.shared.book();
            let mut seen = HashSet::new();
            for t in &txs {
                let new = !book.entries.contains_key(&t.id) && seen.insert(t.id);
                verdicts.push(new);
            }
            let n = seen.len();
            let bytes: u64 = txs
                .iter()
                .zip(&verdicts)
                .filter(|(_, v)| **v)
                .map(|(t, _)| t.body.len() as u64)
                .sum();
            if book.pending + n > cfg.max_pending
                || book.pending_bytes + bytes > cfg.max_pending_bytes
            {
                return Err(OutboxError::Full(
                    "too many transactions wait to be forwarded",
                ));
            }
            if book.entries.len() + n > cfg.max_tracked {
                return Err(OutboxError::Full("the replay window holds max_tracked ids"));
            }
            if self.tx.len() >= MAX_QUEUED_WRITES {
                return Err(OutboxError::Full("the disk is behind"));
            }
            if !self.shared.healthy.load(Ordering::Relaxed) {
                return Err(OutboxError::Io("the last write failed".into()));
            }
            for (t, new) in txs.iter().zip(&verdicts) {
                if !new {
                    continue;
                }
                book.track(
                    t.id,
                    Entry {
                        status: TxStatus::new(
                            t.ledger.clone(),
                            t.owner.clone(),
                            now,
                            State::Accepting,
                        ),
                        segment: None,
                        bytes: t.body.len() as u64,
                    },
                );
                fresh.push(t);
            }
        }
        if fresh.is_empty() {
            return Ok(verdicts);
        }
        let mut frames = Vec::new();
        for t in &fresh {
            let r = Record::Accepted {
                id: hex::encode(t.id),
                ledger: t.ledger.to_string(),
                at: now,
                body: crate::util::base64(&t.body),
                owner: Some(t.owner.to_string()),
                sender: t.sender.map(|s| crate::util::hex0x(&s)),
            };
            frames.extend_from_slice(&r.encode());
        }
        let ids: Vec<TxId> = fresh.iter().map(|t| t.id).collect();
        let (reply, done) = tokio::sync::oneshot::channel();
        let sent = self.tx.send(Write::Accept {
            frames,
            ids: ids.clone(),
            reply,
        });
        let result = match sent {
            Ok(()) => done
                .await
                .unwrap_or_else(|_| Err("the writer stopped".into())),
            Err(_) => Err("the writer stopped".into()),
        };
        let mut book = self.shared.book();
        match result {
            Ok(()) => {
                for id in &ids {
                    if let Some(e) = book.entries.get_mut(id) {
                        e.status.state = State::Accepted;
                    }
                }
                book.publish();
                Ok(verdicts)
            }
            Err(e) => {
                for id in &ids {
                    book.unpend(id);
                    book.entries.remove(id);
                }
                Err(OutboxError::Io(e))
            }
        }
    }

    /// Counts one more delivery attempt (persisted with the outcome).
    pub fn attempted(&self, id: &TxId) {
        if let Some(e) = self.shared.book().entries.get_mut(id) {
            e.status.attempts += 1;
        }
    }

    /// Records the outcome: forwarded (the node took it) or failed (permanently refused).
    pub fn resolve(&self, id: &TxId, state: State, node: Option<String>, response: Option<String>) {
        let frame = {
            let mut book = self.shared.book();
            if book
                .entries
                .get(id)
                .is_none_or(|e| e.status.state.resolved())
            {
                return;
            }
            book.unpend(id);
            let Some(e) = book.entries.get_mut(id) else {
                return;
            };
            e.status.state = state;
            e.status.node = node;
            e.status.response = response.map(|r| truncate(r, 512));
            let frame = Record::done(id, &e.status).encode();
            book.publish();
            frame
        };
        // Losing this record (writer gone) only means forwarding again after a restart.
        let _ = self.tx.send(Write::Done { frame, id: *id });
    }

    /// Whether this id is known (accepted or resolved within the window, or being
    /// written): admission refuses it as a replay before spending verification on it.
    pub fn is_known(&self, id: &TxId) -> bool {
        self.shared.book().entries.contains_key(id)
    }

    /// Status as `GET /v1/transactions/{id}` shows it; None for unknown or not yet durable.
    pub fn status(&self, id: &TxId) -> Option<TxStatus> {
        let book = self.shared.book();
        book.entries
            .get(id)
            .filter(|e| e.status.state != State::Accepting)
            .map(|e| e.status.clone())
    }

    pub fn is_healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

fn corrupt(path: &Path, message: &str) -> OutboxError {
    OutboxError::Corrupt {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Records written before owners were stored belong to the admin (the only client that
/// could have been everyone's).
fn owner_of(owner: Option<String>) -> Arc<str> {
    owner.map_or_else(|| Arc::from("admin"), Arc::from)
}

fn parse_id(hex_id: &str, path: &Path) -> Result<TxId, OutboxError> {
    hex::decode(hex_id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| corrupt(path, "a record has a bad id"))
}

fn parse_done(r: Record, path: &Path) -> Result<(TxId, TxStatus), OutboxError> {
    match r {
        Record::Done {
            id,
            ledger,
            owner,
            at,
            state,
            attempts,
            node,
            response,
        } => Ok((
            parse_id(&id, path)?,
            TxStatus {
                ledger: ledger.into(),
                owner: owner_of(owner),
                accepted_at: at,
                state,
                attempts,
                node,
                response,
            },
        )),
        Record::Accepted { .. } => Err(corrupt(path, "expected a done record")),
    }
}

/// Reads a log file's records. A torn tail is cut when `may_cut` (the file last written);
/// elsewhere a bad frame is corruption, and the gateway refuses to start rather than
/// silently drop what follows it.
fn recover(path: &Path, may_cut: bool) -> Result<Vec<Record>, OutboxError> {
    let io = |e: std::io::Error| OutboxError::Io(format!("{}: {e}", path.display()));
    let scan = log::scan(path).map_err(io)?;
    if scan.tail > 0 {
        if !may_cut {
            return Err(corrupt(
                path,
                &format!(
                    "a bad frame at byte {} (not the last segment)",
                    scan.good_len
                ),
            ));
        }
        tracing::warn!(
            file = %path.display(),
            kept = scan.good_len,
            cut = scan.tail,
            "outbox: cut a torn tail left by a crash"
        );
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(io)?;
        f.set_len(scan.good_len).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    scan.records
        .iter()
        .map(|r| serde_json::from_slice(r).map_err(|e| corrupt(path, &e.to_string())))
        .collect()
}

/// Files named `<prefix><number>.log` in `dir`, by number.
fn numbered(dir: &Path, prefix: &str) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((n, e.path()));
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(i: u32) -> NewTx {
        let mut id = [0u8; 32];
        id[..4].copy_from_slice(&i.to_be_bytes());
        NewTx {
            id,
            ledger: "eth".into(),
            owner: "c".into(),
            body: vec![i as u8; 200].into(),
            sender: None,
        }
    }

    fn small() -> OutboxConfig {
        OutboxConfig {
            segment_bytes: 4096,
            ..OutboxConfig::default()
        }
    }

    /// Opens again once the last instance's writer has let go of the lock.
    fn reopen(dir: &Path, cfg: &OutboxConfig) -> Result<(Outbox, Vec<Pending>), OutboxError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Outbox::open(dir, cfg) {
                Err(OutboxError::Io(m)) if m.contains("another process") => {
                    assert!(std::time::Instant::now() < deadline, "{m}");
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn segments(dir: &Path) -> usize {
        numbered(dir, "seg-").unwrap().len()
    }

    #[tokio::test]
    async fn accepted_survives_a_restart_and_is_queued_again_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, pending) = Outbox::open(dir.path(), &small()).unwrap();
        assert!(pending.is_empty());
        let v = ob.accept((0..50).map(tx).collect()).await.unwrap();
        assert!(v.iter().all(|a| *a));
        assert_eq!(
            ob.accept(vec![tx(3), tx(99), tx(99)]).await.unwrap(),
            [false, true, false]
        );
        ob.resolve(
            &tx(0).id,
            State::Forwarded,
            Some("n1".into()),
            Some("0xabc".into()),
        );
        ob.resolve(
            &tx(1).id,
            State::Failed,
            Some("n1".into()),
            Some("nonce too low".into()),
        );
        // Let the writer record the outcomes before "crashing".
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(ob);

        let (ob, pending) = reopen(dir.path(), &small()).unwrap();
        let ids: Vec<TxId> = pending.iter().map(|p| p.id).collect();
        let want: Vec<TxId> = (2..50).chain([99]).map(|i| tx(i).id).collect();
        assert_eq!(ids, want, "unresolved ones, oldest first");
        assert_eq!(&*pending[0].body, &*tx(2).body);
        assert_eq!(ob.status(&tx(0).id).unwrap().state, State::Forwarded);
        let failed = ob.status(&tx(1).id).unwrap();
        assert_eq!(
            (failed.state, failed.response.as_deref()),
            (State::Failed, Some("nonce too low"))
        );
        assert_eq!(ob.status(&tx(7).id).unwrap().state, State::Accepted);
        assert_eq!(
            ob.accept(vec![tx(0), tx(7)]).await.unwrap(),
            [false, false],
            "replays across a restart"
        );
    }

    #[tokio::test]
    async fn resolved_segments_are_removed_and_their_ids_still_count_as_replays() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, _) = Outbox::open(dir.path(), &small()).unwrap();
        for chunk in 0..20 {
            ob.accept((chunk * 10..chunk * 10 + 10).map(tx).collect())
                .await
                .unwrap();
        }
        assert!(
            segments(dir.path()) > 5,
            "200 records of ~500 bytes roll 4 KiB segments"
        );
        for i in 0..200 {
            ob.resolve(&tx(i).id, State::Forwarded, Some("n".into()), None);
        }
        // The writer collects segments after each batch; nudge it with one more write.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while segments(dir.path()) > 2 && std::time::Instant::now() < deadline {
            ob.accept(vec![tx(1000 + segments(dir.path()) as u32)])
                .await
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(segments(dir.path()) <= 2, "resolved segments removed");
        drop(ob);
        let (ob, pending) = reopen(dir.path(), &small()).unwrap();
        assert!(pending
            .iter()
            .all(|p| p.id[..4] >= 1000u32.to_be_bytes()[..]));
        assert_eq!(
            ob.accept(vec![tx(5), tx(150)]).await.unwrap(),
            [false, false]
        );
        assert_eq!(ob.status(&tx(5).id).unwrap().state, State::Forwarded);
    }

    #[tokio::test]
    async fn a_record_cut_in_the_middle_is_dropped_and_the_rest_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let (ob, _) = Outbox::open(dir.path(), &OutboxConfig::default()).unwrap();
        ob.accept((0..10).map(tx).collect()).await.unwrap();
        drop(ob);
        // The writer lets go of the lock once it has stopped writing.
        let lock = std::fs::File::open(dir.path().join("LOCK")).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while lock.try_lock().is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(lock);
        let (_, path) = numbered(dir.path(), "seg-").unwrap().pop().unwrap();
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 100).unwrap();
        drop(f);

        let (ob, pending) = reopen(dir.path(), &OutboxConfig::default()).unwrap();
        assert_eq!(pending.len(), 9, "the torn last record is cut");
        assert!(ob.status(&tx(9).id).is_none());
        assert_eq!(
            ob.accept(vec![tx(9)]).await.unwrap(),
            [true],
            "and may be sent again"
        );

        // Corruption in a segment that is not the last one is refused, not cut.
        drop(ob);
        let mut segs = numbered(dir.path(), "seg-").unwrap();
        segs.pop();
        let (_, older) = segs.pop().unwrap();
        let mut bytes = std::fs::read(&older).unwrap();
        bytes[20] ^= 0xff;
        std::fs::write(&older, bytes).unwrap();
        assert!(matches!(
            reopen(dir.path(), &OutboxConfig::default()),
            Err(OutboxError::Corrupt { .. })
        ));
    }
}
