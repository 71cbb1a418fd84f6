//! The key index: build cache key → result record, in `ROOT/keys/`.
//!
//! A record says which layers (blobs in the content store, base first) a
//! build step produced; the image config is not part of it, since the
//! frontend computes configs without running anything. A record file is
//! written to `tmp/`, fsynced and renamed into place, so a reader sees a
//! whole record or none, and a crash leaves at most garbage in `tmp/`. A
//! record is only trusted while every blob it names exists; the solver
//! checks that (and re-creates missing snapshots from the blobs) on a hit.
//!
//! The file's mtime is the record's last use: [`KeyIndex::get`] touches it,
//! and size-based pruning removes the least recently used records first.
//!
//! Besides records, the index keeps small named *notes* (`keys/notes/`):
//! what the solver remembers about a step between builds to explain a cache
//! miss. Notes are advisory; losing one only loses an explanation.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// Version of the record format; records of another version are ignored
/// (a miss), never misread.
pub const RECORD_VERSION: u32 = 1;

/// One layer of a cached result, as an image manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordLayer {
    pub media_type: String,
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    pub size: u64,
    /// Digest of the uncompressed tar (its snapshot's name).
    pub diff_id: Digest,
}

/// The result of one build step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub version: u32,
    /// The whole filesystem state after the step, base first.
    pub layers: Vec<RecordLayer>,
    /// When the record was written, in seconds since 1970.
    pub created: i64,
    /// The step's description when it was stored (`[build 2/5] RUN make`),
    /// for `builder du` and debugging.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl CacheRecord {
    pub fn new(layers: Vec<RecordLayer>, description: impl Into<String>) -> Self {
        CacheRecord {
            version: RECORD_VERSION,
            layers,
            created: now_unix(),
            description: description.into(),
        }
    }
}

/// A record with its key and last use, as [`KeyIndex::list`] returns it.
#[derive(Debug, Clone)]
pub struct ListedRecord {
    pub key: Digest,
    pub record: CacheRecord,
    pub last_used: SystemTime,
    /// Size of the record file itself.
    pub file_size: u64,
}

/// The key index of a store.
#[derive(Debug, Clone)]
pub struct KeyIndex {
    store: Store,
    dir: PathBuf,
}

impl KeyIndex {
    pub fn new(store: &Store) -> KeyIndex {
        KeyIndex {
            store: store.clone(),
            dir: store.root().join("keys"),
        }
    }

    /// `ROOT/keys/<hex>.json`.
    pub fn path(&self, key: &Digest) -> PathBuf {
        self.dir.join(format!("{}.json", key.hex()))
    }

    /// The record of `key`, if there is a readable one of this version;
    /// marks it used. A corrupt or foreign record is a miss.
    pub fn get(&self, key: &Digest) -> Result<Option<CacheRecord>, StoreError> {
        let path = self.path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StoreError::Io { path, source }),
        };
        let Ok(record) = serde_json::from_slice::<CacheRecord>(&bytes) else {
            return Ok(None);
        };
        if record.version != RECORD_VERSION {
            return Ok(None);
        }
        // Best effort: a read-only root still serves hits.
        let _ = File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(SystemTime::now()));
        Ok(Some(record))
    }

    /// Stores (or replaces) the record of `key` atomically.
    pub fn put(&self, key: &Digest, record: &CacheRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).expect("a record serializes");
        self.write_atomic(&self.dir, &format!("{}.json", key.hex()), &bytes)
    }

    /// Removes the record of `key`; whether it existed.
    pub fn remove(&self, key: &Digest) -> Result<bool, StoreError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Every readable record of this version (others are skipped).
    pub fn list(&self) -> Result<Vec<ListedRecord>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(key) = format!("sha256:{hex}").parse::<Digest>() else {
                continue;
            };
            let Ok(meta) = entry.metadata() else { continue };
            let Ok(bytes) = fs::read(entry.path()) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<CacheRecord>(&bytes) else {
                continue;
            };
            if record.version != RECORD_VERSION {
                continue;
            }
            out.push(ListedRecord {
                key,
                record,
                last_used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                file_size: meta.len(),
            });
        }
        out.sort_by_key(|r| r.key);
        Ok(out)
    }

    /// The note named `name` (letters, digits, `-`, `_`, `.`), if any.
    pub fn note(&self, name: &str) -> Option<Vec<u8>> {
        if !valid_note_name(name) {
            return None;
        }
        fs::read(self.dir.join("notes").join(name)).ok()
    }

    /// Whether the note `name` exists and begins with `prefix` (read no
    /// further: a note can be large).
    pub fn note_starts_with(&self, name: &str, prefix: &[u8]) -> bool {
        if !valid_note_name(name) {
            return false;
        }
        let Ok(file) = fs::File::open(self.dir.join("notes").join(name)) else {
            return false;
        };
        let mut head = Vec::with_capacity(prefix.len());
        file.take(prefix.len() as u64)
            .read_to_end(&mut head)
            .is_ok_and(|_| head == prefix)
    }

    /// Writes the note `name` atomically.
    pub fn put_note(&self, name: &str, content: &[u8]) -> Result<(), StoreError> {
        if !valid_note_name(name) {
            return Err(StoreError::Io {
                path: self.dir.join("notes").join(name),
                source: io::Error::new(io::ErrorKind::InvalidInput, "invalid note name"),
            });
        }
        self.write_atomic(&self.dir.join("notes"), name, content)
    }

    /// The notes directory (for `du` and `prune --all`).
    pub fn notes_dir(&self) -> PathBuf {
        self.dir.join("notes")
    }

    fn write_atomic(
        &self,
        dir: &std::path::Path,
        name: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let path = dir.join(name);
        self.store
            .replace_file(&path, bytes, 0o600, true)
            .map_err(|source| StoreError::Io { path, source })
    }
}

fn valid_note_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(n: u8) -> RecordLayer {
        RecordLayer {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::of(&[n]),
            size: u64::from(n),
            diff_id: Digest::of(&[n, n]),
        }
    }

    #[test]
    fn records_round_trip_list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = KeyIndex::new(&store);
        let key = Digest::of(b"key");
        assert_eq!(index.get(&key).unwrap(), None);
        let record = CacheRecord::new(vec![layer(1), layer(2)], "[1/2] RUN true");
        index.put(&key, &record).unwrap();
        assert_eq!(index.get(&key).unwrap(), Some(record.clone()));
        let listed = index.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, key);
        assert_eq!(listed[0].record, record);
        assert!(index.remove(&key).unwrap());
        assert!(!index.remove(&key).unwrap());
        assert_eq!(index.get(&key).unwrap(), None);
    }

    #[test]
    fn corrupt_or_foreign_records_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = KeyIndex::new(&store);
        let key = Digest::of(b"k");
        fs::create_dir_all(dir.path().join("keys")).unwrap();
        fs::write(index.path(&key), b"{not json").unwrap();
        assert_eq!(index.get(&key).unwrap(), None);
        let mut record = CacheRecord::new(vec![layer(3)], "");
        record.version = RECORD_VERSION + 1;
        index.put(&key, &record).unwrap();
        assert_eq!(index.get(&key).unwrap(), None);
        assert!(index.list().unwrap().is_empty());
    }

    #[test]
    fn notes_are_named_safely() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = KeyIndex::new(&store);
        assert!(index.put_note("../escape", b"x").is_err());
        assert_eq!(index.note("../escape"), None);
        index.put_note("step-1", b"hello").unwrap();
        assert_eq!(index.note("step-1").as_deref(), Some(&b"hello"[..]));
    }
}
