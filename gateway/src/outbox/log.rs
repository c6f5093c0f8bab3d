//! The on-disk frame: `len: u32 LE | crc32: u32 LE | payload`, where the CRC covers the
//! length and the payload. A crash can leave a partial frame at the end of the file being
//! written; a scan stops at the first frame that is short or fails its checksum and
//! reports where the good part ends.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// No record comes near this; a larger length can only be garbage.
pub const MAX_FRAME: usize = 16 << 20;

pub fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
}

/// The whole frames of a file, and the offset just past the last good one.
pub struct Scan {
    pub records: Vec<Vec<u8>>,
    pub good_len: u64,
    /// Bytes after `good_len` (a torn or corrupt tail).
    pub tail: u64,
}

pub fn scan(path: &Path) -> std::io::Result<Scan> {
    let mut bytes = Vec::new();
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.read_to_end(&mut bytes)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len).filter(|_| len <= MAX_FRAME) else {
            break;
        };
        let mut h = crc32fast::Hasher::new();
        h.update(&header[..4]);
        h.update(payload);
        if h.finalize() != crc {
            break;
        }
        records.push(payload.to_vec());
        at += 8 + len;
    }
    Ok(Scan {
        records,
        good_len: at as u64,
        tail: (bytes.len() - at) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_or_corrupt_tail_is_found_and_nothing_before_it_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut bytes = Vec::new();
        for i in 0..10u8 {
            frame(&vec![i; 100 + i as usize], &mut bytes);
        }
        let whole = bytes.len();
        std::fs::write(&path, &bytes).unwrap();
        let s = scan(&path).unwrap();
        assert_eq!((s.records.len(), s.good_len, s.tail), (10, whole as u64, 0));

        // Cut inside every position of the last frame: nine records survive each time.
        let last_start = whole - (8 + 109);
        for cut in last_start + 1..whole {
            std::fs::write(&path, &bytes[..cut]).unwrap();
            let s = scan(&path).unwrap();
            assert_eq!(s.records.len(), 9, "cut at {cut}");
            assert_eq!(s.good_len, last_start as u64);
            assert_eq!(s.records[8], vec![8u8; 108]);
        }
        // A flipped bit in the last payload fails its checksum.
        let mut flipped = bytes.clone();
        flipped[whole - 1] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert_eq!(scan(&path).unwrap().records.len(), 9);
    }
}
