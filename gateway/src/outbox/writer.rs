//! The one thread that writes the outbox: it takes every write waiting, appends them in
//! one `write`, makes them durable with one `fdatasync` (group commit), then answers each
//! caller. Between batches it rolls full segments, removes resolved ones and forgets ids
//! that have left the replay window.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use super::{Record, Segment, Shared, Write};
use crate::metrics as m;
use crate::txn::TxId;
use crate::util::unix_now;

/// At most this many writes share one fsync, so one batch cannot grow without bound.
const MAX_GROUP: usize = 4096;

pub(super) struct Writer {
    dir: PathBuf,
    seq: u64,
    file: File,
    len: u64,
    shared: Arc<Shared>,
    rx: Receiver<Write>,
    index: HashMap<u64, File>,
    last_sweep: Instant,
}

impl Writer {
    pub(super) fn new(
        dir: &Path,
        seq: u64,
        shared: Arc<Shared>,
        rx: Receiver<Write>,
    ) -> std::io::Result<Writer> {
        let file = create_segment(dir, seq)?;
        shared.book().segments.insert(seq, Segment::default());
        let mut w = Writer {
            dir: dir.to_path_buf(),
            seq,
            file,
            len: 0,
            shared,
            rx,
            index: HashMap::new(),
            last_sweep: Instant::now(),
        };
        w.collect();
        Ok(w)
    }

    pub(super) fn run(mut self) {
        crate::sched::background("outbox-writer");
        loop {
            let first = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(w) => w,
                Err(RecvTimeoutError::Timeout) => {
                    self.sweep();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let mut batch = vec![first];
            batch.extend(self.rx.try_iter().take(MAX_GROUP));
            self.write(batch);
            if self.len >= self.shared.config.segment_bytes {
                if let Err(e) = self.roll() {
                    self.failed(&format!("roll segment: {e}"));
                }
            }
            self.collect();
            if self.last_sweep.elapsed() >= Duration::from_secs(10) {
                self.sweep();
            }
        }
    }

    fn write(&mut self, batch: Vec<Write>) {
        let mut buf = Vec::new();
        for w in &batch {
            match w {
                Write::Accept { frames, .. } => buf.extend_from_slice(frames),
                Write::Done { frame, .. } => buf.extend_from_slice(frame),
            }
        }
        let started = Instant::now();
        let result = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        metrics::histogram!(m::OUTBOX_FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        if let Err(e) = result {
            // Cut what may have been half written, so the file stays a clean log; if even
            // that fails, the next write goes to a fresh segment.
            let cut = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all());
            if cut.is_err() {
                let _ = self.roll();
            }
            self.failed(&e.to_string());
            for w in batch {
                if let Write::Accept { reply, .. } = w {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            return;
        }
        self.len += buf.len() as u64;
        self.shared.healthy.store(true, Ordering::Relaxed);
        let mut replies = Vec::new();
        {
            let mut book = self.shared.book();
            for w in batch {
                match w {
                    Write::Accept { ids, reply, .. } => {
                        for id in ids {
                            book.place(id, self.seq);
                        }
                        replies.push(reply);
                    }
                    Write::Done { id, .. } => {
                        book.release(&id);
                        book.segment(self.seq).ids.push(id);
                    }
                }
            }
            book.segment(self.seq).bytes = self.len;
            book.publish();
        }
        for r in replies {
            let _ = r.send(Ok(()));
        }
    }

    fn failed(&self, message: &str) {
        self.shared.healthy.store(false, Ordering::Relaxed);
        metrics::counter!(m::OUTBOX_WRITE_ERRORS_TOTAL).increment(1);
        tracing::error!(error = message, "outbox write failed");
    }

    fn roll(&mut self) -> std::io::Result<()> {
        self.file.sync_all()?;
        let next = self.seq + 1;
        self.file = create_segment(&self.dir, next)?;
        self.seq = next;
        self.len = 0;
        self.shared.book().segments.insert(next, Segment::default());
        Ok(())
    }

    /// Removes closed segments whose transactions are all resolved, oldest first, after
    /// their statuses are safe in the index.
    fn collect(&mut self) {
        loop {
            let (seq, summaries) = {
                let book = self.shared.book();
                let Some((&seq, seg)) = book.segments.iter().next() else {
                    return;
                };
                if seq == self.seq || seg.unresolved > 0 {
                    return;
                }
                let summaries: Vec<(TxId, super::TxStatus)> = seg
                    .ids
                    .iter()
                    .filter_map(|id| {
                        book.entries
                            .get(id)
                            .filter(|e| e.status.state.resolved())
                            .map(|e| (*id, e.status.clone()))
                    })
                    .collect();
                (seq, summaries)
            };
            if let Err(e) = self.index(&summaries) {
                self.failed(&format!("index: {e}"));
                return;
            }
            let path = segment_path(&self.dir, seq);
            if let Err(e) = std::fs::remove_file(&path) {
                self.failed(&format!("remove {}: {e}", path.display()));
                return;
            }
            let mut book = self.shared.book();
            book.segments.remove(&seq);
            book.publish();
        }
    }

    /// Appends resolved statuses to their time buckets and syncs each file touched.
    fn index(&mut self, summaries: &[(TxId, super::TxStatus)]) -> std::io::Result<()> {
        let bucket = self.shared.config.bucket_seconds();
        let horizon = unix_now().saturating_sub(self.shared.config.replay_window_seconds);
        let mut by_bucket: HashMap<u64, Vec<u8>> = HashMap::new();
        for (id, s) in summaries {
            if s.accepted_at < horizon {
                continue;
            }
            let start = s.accepted_at / bucket * bucket;
            by_bucket
                .entry(start)
                .or_default()
                .extend_from_slice(&Record::done(id, s).encode());
        }
        for (start, bytes) in by_bucket {
            let f = match self.index.entry(start) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let path = self.dir.join(format!("index-{start}.log"));
                    let f = OpenOptions::new().create(true).append(true).open(path)?;
                    sync_dir(&self.dir)?;
                    v.insert(f)
                }
            };
            f.write_all(&bytes)?;
            f.sync_data()?;
        }
        Ok(())
    }

    /// Forgets resolved ids older than the window and drops index buckets past it.
    fn sweep(&mut self) {
        self.last_sweep = Instant::now();
        let window = self.shared.config.replay_window_seconds;
        let bucket = self.shared.config.bucket_seconds();
        let horizon = unix_now().saturating_sub(window);
        {
            let mut book = self.shared.book();
            book.entries.retain(|_, e| {
                !(e.status.state.resolved()
                    && e.segment.is_none()
                    && e.status.accepted_at < horizon)
            });
            book.publish();
        }
        let expired: Vec<u64> = self
            .index
            .keys()
            .copied()
            .filter(|s| s + bucket < horizon)
            .collect();
        for start in expired {
            self.index.remove(&start);
            let _ = std::fs::remove_file(self.dir.join(format!("index-{start}.log")));
        }
        if let Ok(files) = super::numbered(&self.dir, "index-") {
            for (start, path) in files {
                if start + bucket < horizon {
                    let _ = std::fs::remove_file(path);
                }
            }
        }
    }
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:016}.log"))
}

fn create_segment(dir: &Path, seq: u64) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    sync_dir(dir)?;
    Ok(f)
}

/// A new file's name is durable only once its directory is synced.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}
