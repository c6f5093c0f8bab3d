//! Key metadata (label, algorithm, state, owner, public key): an append-only journal of
//! JSON lines, fsynced per change and replayed at start. The private keys themselves are
//! only ever in the token; a record points at them by CKA_ID.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{KeyId, KeyRecord};

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Put(KeyRecord),
    Delete(KeyId),
}

struct Inner {
    file: File,
    /// Shared, so a signature's two look-ups copy a pointer instead of eight strings.
    keys: HashMap<KeyId, Arc<KeyRecord>>,
    by_label: HashMap<String, KeyId>,
    lines: usize,
}

pub struct KeyStore {
    path: PathBuf,
    inner: Mutex<Inner>,
}

impl KeyStore {
    /// Replays the journal. A torn last line (a crash mid-append) is cut; damage before
    /// the last line is an error, since guessing would lose keys.
    pub fn open(path: &Path) -> std::io::Result<KeyStore> {
        let mut keys = HashMap::new();
        let mut lines = 0usize;
        let mut good_len = 0u64;
        if path.exists() {
            let mut reader = BufReader::new(File::open(path)?);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                let n = reader.read_until(b'\n', &mut buf)?;
                if n == 0 {
                    break;
                }
                let complete = buf.ends_with(b"\n");
                match serde_json::from_slice::<Event>(&buf) {
                    Ok(event) if complete => {
                        apply(&mut keys, event);
                        lines += 1;
                        good_len += n as u64;
                    }
                    _ if !complete => {
                        tracing::warn!("key journal ends in a torn line; cutting it");
                        break;
                    }
                    Err(e) => {
                        return Err(std::io::Error::other(format!(
                            "{}: line {}: {e}",
                            path.display(),
                            lines + 1
                        )))
                    }
                    Ok(_) => unreachable!("complete is checked above"),
                }
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        if file.metadata()?.len() != good_len {
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        let by_label = keys
            .values()
            .map(|k: &Arc<KeyRecord>| (k.label.clone(), k.id))
            .collect();
        let store = KeyStore {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                keys,
                by_label,
                lines,
            }),
        };
        store.compact_if_worthwhile()?;
        Ok(store)
    }

    /// The records as the journal holds them, read without writing anything (for tools
    /// that run beside a live gateway, such as `hsm reconcile`).
    pub fn read_only(path: &Path) -> std::io::Result<Vec<KeyRecord>> {
        let mut keys = HashMap::new();
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        for line in text.split_inclusive(|b| *b == b'\n') {
            match serde_json::from_slice::<Event>(line) {
                Ok(event) if line.ends_with(b"\n") => apply(&mut keys, event),
                _ => break,
            }
        }
        Ok(keys.into_values().map(Arc::unwrap_or_clone).collect())
    }

    pub fn get(&self, id: &KeyId) -> Option<Arc<KeyRecord>> {
        self.inner.lock().expect("store lock").keys.get(id).cloned()
    }

    pub fn label_taken(&self, label: &str) -> bool {
        self.inner
            .lock()
            .expect("store lock")
            .by_label
            .contains_key(label)
    }

    /// Every record, oldest first.
    pub fn list(&self) -> Vec<KeyRecord> {
        let mut all: Vec<_> = self
            .inner
            .lock()
            .expect("store lock")
            .keys
            .values()
            .map(|r| KeyRecord::clone(r))
            .collect();
        all.sort_by(|a, b| (&a.created_at, &a.id).cmp(&(&b.created_at, &b.id)));
        all
    }

    /// Durably records a new or changed key (blocks on fsync: call off the async runtime).
    pub fn put(&self, record: KeyRecord) -> std::io::Result<()> {
        self.append(Event::Put(record))
    }

    pub fn delete(&self, id: &KeyId) -> std::io::Result<()> {
        self.append(Event::Delete(*id))
    }

    fn append(&self, event: Event) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&event).expect("event serialises");
        line.push(b'\n');
        let mut inner = self.inner.lock().expect("store lock");
        inner.file.write_all(&line)?;
        inner.file.sync_data()?;
        inner.lines += 1;
        let Inner { keys, by_label, .. } = &mut *inner;
        match &event {
            Event::Put(r) => {
                by_label.insert(r.label.clone(), r.id);
            }
            Event::Delete(id) => {
                if let Some(r) = keys.get(id) {
                    by_label.remove(&r.label);
                }
            }
        }
        apply(keys, event);
        Ok(())
    }

    /// Rewrites the journal as one line per live key when it has grown mostly stale.
    fn compact_if_worthwhile(&self) -> std::io::Result<()> {
        let mut inner = self.inner.lock().expect("store lock");
        if inner.lines <= 2 * inner.keys.len() + 64 {
            return Ok(());
        }
        let tmp = self.path.with_extension("compact");
        let mut out = File::create(&tmp)?;
        for r in inner.keys.values() {
            let mut line =
                serde_json::to_vec(&Event::Put(KeyRecord::clone(r))).expect("serialises");
            line.push(b'\n');
            out.write_all(&line)?;
        }
        out.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        inner.file = OpenOptions::new().append(true).open(&self.path)?;
        inner.lines = inner.keys.len();
        Ok(())
    }
}

fn apply(keys: &mut HashMap<KeyId, Arc<KeyRecord>>, event: Event) {
    match event {
        Event::Put(r) => {
            keys.insert(r.id, Arc::new(r));
        }
        Event::Delete(id) => {
            keys.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::custody::{CustodyKind, KeyState};

    /// A fixed id per short name.
    fn kid(name: &str) -> KeyId {
        let mut b = [0u8; 16];
        b[..name.len()].copy_from_slice(name.as_bytes());
        KeyId::from_bytes(&b).unwrap()
    }

    fn record(id: &str, label: &str) -> KeyRecord {
        KeyRecord {
            id: kid(id),
            label: label.into(),
            algorithm: Algorithm::Ed25519,
            custody: CustodyKind::Hsm,
            public_key: "0x00".into(),
            public_key_pem: String::new(),
            address: None,
            state: KeyState::Active,
            created_at: "2026-01-01T00:00:00Z".into(),
            owner: "admin".into(),
            destroy_after: None,
            wrapped: None,
        }
    }

    #[test]
    fn journal_replays_changes_and_cuts_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.jsonl");
        let store = KeyStore::open(&path).unwrap();
        store.put(record("a", "la")).unwrap();
        store.put(record("b", "lb")).unwrap();
        let mut disabled = record("a", "la");
        disabled.state = KeyState::Disabled;
        store.put(disabled).unwrap();
        store.delete(&kid("b")).unwrap();
        drop(store);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"put\":{\"id\":\"0c\"").unwrap();
        drop(f);

        let store = KeyStore::open(&path).unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(store.get(&kid("a")).unwrap().state, KeyState::Disabled);
        assert!(store.label_taken("la") && !store.label_taken("lb"));
        store.put(record("d", "ld")).unwrap();
        drop(store);
        assert_eq!(KeyStore::open(&path).unwrap().list().len(), 2);
    }

    #[test]
    fn damage_before_the_last_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.jsonl");
        std::fs::write(&path, "garbage\n{\"delete\":\"x\"}\n").unwrap();
        assert!(KeyStore::open(&path).is_err());
    }

    #[test]
    fn a_stale_journal_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.jsonl");
        let store = KeyStore::open(&path).unwrap();
        for i in 0..100 {
            store
                .put(record(&format!("k{i}"), &format!("l{i}")))
                .unwrap();
            store.delete(&kid(&format!("k{i}"))).unwrap();
        }
        store.put(record("keep", "keep")).unwrap();
        drop(store);
        let store = KeyStore::open(&path).unwrap();
        assert_eq!(store.list().len(), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        store.put(record("more", "more")).unwrap();
        drop(store);
        assert_eq!(KeyStore::open(&path).unwrap().list().len(), 2);
    }
}
