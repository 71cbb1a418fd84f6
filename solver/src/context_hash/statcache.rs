//! The on-disk stat cache of one build context: context-relative path →
//! (size, mtime, ctime, inode, device, mode, content digest).
//!
//! A binary file, little-endian, written whole and renamed into place:
//!
//! ```text
//! magic "BXCTXSC" + version byte 1
//! u32 entry count
//! per entry: u32 path length, path bytes, u64 size, i64 mtime ns,
//!            i64 ctime ns, u64 inode, u64 device, u32 mode, [32] sha256
//! [32] sha256 of everything above
//! ```
//!
//! The trailing checksum makes a torn or corrupt file an empty cache rather
//! than wrong digests, which is why the file is not fsynced: losing it only
//! costs one cold checksum. 20,000 entries take about 1.5 MB and load in a
//! few milliseconds.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::AtomicBool;

use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"BXCTXSC\x01";
const FIXED: usize = 8 + 8 + 8 + 8 + 8 + 4 + 32;

/// The parts of a file's `lstat` that change whenever its content may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    pub(super) size: u64,
    pub(super) mtime: i64,
    pub(super) ctime: i64,
    pub(super) ino: u64,
    pub(super) dev: u64,
    pub(super) mode: u32,
}

impl Stat {
    pub(super) fn of(meta: &Metadata) -> Self {
        Self {
            size: meta.size(),
            mtime: meta
                .mtime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.mtime_nsec()),
            ctime: meta
                .ctime()
                .saturating_mul(1_000_000_000)
                .saturating_add(meta.ctime_nsec()),
            ino: meta.ino(),
            dev: meta.dev(),
            mode: meta.mode(),
        }
    }

    /// Whether a digest recorded for this stat at `start` (ns since the
    /// epoch, taken before the file was read) can be trusted later: a file
    /// rewritten within the same timestamp tick as an earlier write keeps
    /// its mtime (and its ctime, when the tick is coarse), so only stats
    /// clearly older than the read are recorded (git's "racy git" rule).
    /// Timestamps are taken from a coarse clock (one jiffy, at most 10 ms
    /// behind); whole seconds in both mean a filesystem with coarse
    /// timestamps (ext3, FAT's 2 s), which needs a wider margin.
    pub(super) fn trusted_at(&self, start: i64) -> bool {
        let coarse = self.mtime % 1_000_000_000 == 0 && self.ctime % 1_000_000_000 == 0;
        let margin = if coarse { 3_000_000_000 } else { 100_000_000 };
        let limit = start.saturating_sub(margin);
        self.mtime < limit && self.ctime < limit
    }
}

pub(super) struct CacheEntry {
    pub(super) stat: Stat,
    pub(super) digest: [u8; 32],
    /// Looked up or recorded by this process: kept on save even if the
    /// path cannot be stat'ed at that point.
    pub(super) used: AtomicBool,
}

pub(super) type Map = HashMap<Box<[u8]>, CacheEntry>;

/// Parses a cache file; `None` when it is not one of ours, of another
/// version, truncated or corrupt.
pub(super) fn decode(bytes: &[u8]) -> Option<Map> {
    if bytes.len() < MAGIC.len() + 4 + 32 || &bytes[..MAGIC.len()] != MAGIC {
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let mut r = Reader {
        buf: &body[MAGIC.len()..],
    };
    let count = r.u32()? as usize;
    // Each entry takes at least FIXED + 4 bytes: a corrupt count cannot
    // make us reserve more than the file could hold.
    let mut map = Map::with_capacity(count.min(r.buf.len() / (FIXED + 4)));
    for _ in 0..count {
        let len = r.u32()? as usize;
        let path: Box<[u8]> = r.take(len)?.into();
        let stat = Stat {
            size: r.u64()?,
            mtime: r.u64()? as i64,
            ctime: r.u64()? as i64,
            ino: r.u64()?,
            dev: r.u64()?,
            mode: r.u32()?,
        };
        let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
        map.insert(
            path,
            CacheEntry {
                stat,
                digest,
                used: AtomicBool::new(false),
            },
        );
    }
    r.buf.is_empty().then_some(map)
}

/// Serializes entries (in the order given: callers sort them so that the
/// file does not depend on hash-map order).
pub(super) fn encode(entries: &[(&[u8], &CacheEntry)]) -> Vec<u8> {
    let size: usize = entries.iter().map(|(p, _)| 4 + p.len() + FIXED).sum();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + size + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (path, e) in entries {
        out.extend_from_slice(&(path.len() as u32).to_le_bytes());
        out.extend_from_slice(path);
        out.extend_from_slice(&e.stat.size.to_le_bytes());
        out.extend_from_slice(&e.stat.mtime.to_le_bytes());
        out.extend_from_slice(&e.stat.ctime.to_le_bytes());
        out.extend_from_slice(&e.stat.ino.to_le_bytes());
        out.extend_from_slice(&e.stat.dev.to_le_bytes());
        out.extend_from_slice(&e.stat.mode.to_le_bytes());
        out.extend_from_slice(&e.digest);
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(size: u64) -> CacheEntry {
        CacheEntry {
            stat: Stat {
                size,
                mtime: 1_700_000_000_123_456_789,
                ctime: -5,
                ino: 42,
                dev: 7,
                mode: 0o100644,
            },
            digest: [size as u8; 32],
            used: AtomicBool::new(false),
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let a = entry(1);
        let b = entry(2);
        let bytes = encode(&[(b"a/b".as_slice(), &a), (b"\xffc".as_slice(), &b)]);
        let map = decode(&bytes).unwrap();
        assert_eq!(map.len(), 2);
        assert_eq!(map[b"a/b".as_slice()].stat, a.stat);
        assert_eq!(map[b"\xffc".as_slice()].digest, b.digest);
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_none(), "flipped byte {i}");
        }
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode(b"").is_none());
        assert!(decode(&encode(&[])).unwrap().is_empty());
    }

    #[test]
    fn racy_stats_are_not_trusted() {
        let second = 1_000_000_000i64;
        let start = 1_700_000_100 * second;
        let fine = |mtime: i64, ctime: i64| Stat {
            size: 1,
            mtime,
            ctime,
            ino: 1,
            dev: 1,
            mode: 0o100644,
        };
        assert!(fine(start - 5 * second + 7, start - 5 * second + 9).trusted_at(start));
        // Written just before (or after) the read: not trusted.
        assert!(!fine(start - 5_000_000, start - 5 * second + 1).trusted_at(start));
        assert!(!fine(start - 5 * second + 1, start - 1).trusted_at(start));
        assert!(!fine(start + 1, start + 1).trusted_at(start));
        // Whole seconds: a coarse filesystem, so a wider margin.
        assert!(!fine(start - 2 * second, start - 2 * second).trusted_at(start));
        assert!(fine(start - 4 * second, start - 4 * second).trusted_at(start));
    }
}
