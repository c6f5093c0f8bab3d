//! Key records against token objects. A record whose private key is not on the token is
//! marked missing (signing answers `key_object_missing`, not a 5xx); a token object no
//! record points at is an orphan (a key made by a process that died before its record was
//! written, or objects left by another tool). Orphans are counted at start and listed by
//! `bsn-gateway hsm reconcile`, which destroys them only when asked to, and only while no
//! gateway runs on the same data dir.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::hsm::TokenObjects;
use super::{CustodyKind, KeyId, KeyRecord};

/// What the comparison found.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Records (by id) whose private key object is not on the token.
    pub missing: Vec<KeyId>,
    /// CKA_IDs (hex) on the token with no record, and how many objects carry each.
    pub orphans: Vec<Orphan>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Orphan {
    pub id: String,
    pub objects: usize,
}

impl Report {
    pub fn orphan_objects(&self) -> usize {
        self.orphans.iter().map(|o| o.objects).sum()
    }
}

/// Compares. `internal` are the gateway's own key ids (the audit key), never orphans.
pub fn compare(
    records: &[KeyRecord],
    objects: &HashMap<Vec<u8>, TokenObjects>,
    internal: &[&[u8]],
) -> Report {
    let mut known: HashSet<Vec<u8>> = internal.iter().map(|i| i.to_vec()).collect();
    let mut report = Report::default();
    for r in records {
        let id = r.id.as_bytes().to_vec();
        let present = objects.get(&id);
        let missing = match r.custody {
            CustodyKind::Hsm => present.is_none_or(|o| o.private != 1),
            // Its own AES key: one object, not a private key.
            CustodyKind::Wrapped => present.is_none_or(|o| o.total != 1 || o.private != 0),
            CustodyKind::External => false,
        };
        if missing {
            report.missing.push(r.id);
        }
        known.insert(id);
    }
    let mut orphans: Vec<Orphan> = objects
        .iter()
        .filter(|(id, _)| !known.contains(*id))
        .map(|(id, o)| Orphan {
            id: hex::encode(id),
            objects: o.total,
        })
        .collect();
    orphans.sort_by(|a, b| a.id.cmp(&b.id));
    report.orphans = orphans;
    report.missing.sort();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::Algorithm;
    use crate::custody::KeyState;

    fn kid(b: u8) -> KeyId {
        KeyId::from_bytes(&[b; 16]).unwrap()
    }

    fn record(b: u8, custody: CustodyKind) -> KeyRecord {
        KeyRecord {
            id: kid(b),
            label: format!("k{b}"),
            algorithm: Algorithm::EcdsaP256,
            custody,
            public_key: "0x00".into(),
            public_key_pem: String::new(),
            address: None,
            state: KeyState::Active,
            created_at: String::new(),
            owner: "a".into(),
            destroy_after: None,
            wrapped: None,
        }
    }

    #[test]
    fn missing_records_and_orphan_objects_are_told_apart() {
        let pair = TokenObjects {
            total: 2,
            private: 1,
        };
        let public_only = TokenObjects {
            total: 1,
            private: 0,
        };
        let objects = HashMap::from([
            (vec![0xaa; 16], pair),
            (vec![0xbb; 16], public_only),
            (vec![0xcc; 16], pair),
            (b"internal".to_vec(), pair),
        ]);
        let records = [
            record(0xaa, CustodyKind::Hsm),
            record(0xbb, CustodyKind::Hsm),
            record(0xdd, CustodyKind::Hsm),
            record(0xee, CustodyKind::External),
        ];
        let report = compare(&records, &objects, &[b"internal"]);
        assert_eq!(report.missing, vec![kid(0xbb), kid(0xdd)]);
        assert_eq!(
            report.orphans,
            vec![Orphan {
                id: "cc".repeat(16),
                objects: 2
            }]
        );
        assert_eq!(report.orphan_objects(), 2);
    }
}
