//! Where a blob came from, for cross-repository mounts on push.
//!
//! A pull records, per blob, the `registry repository` it was fetched from
//! in `registry-sources/<hex>` (one line per source, a few bytes). A push of
//! that blob to another repository of the same registry first asks the
//! registry to mount it from there, which copies nothing. The records are a
//! hint: a missing or stale one only means an upload instead of a mount.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use crate::digest::Digest;
use crate::store::Store;

const DIR: &str = "registry-sources";

fn path(store: &Store, digest: &Digest) -> PathBuf {
    store.root().join(DIR).join(digest.hex())
}

/// Records that `digest` is in `repository` of `registry`.
pub(crate) fn record(store: &Store, digest: &Digest, registry: &str, repository: &str) {
    let line = format!("{registry} {repository}");
    if sources(store, digest)
        .iter()
        .any(|(r, p)| format!("{r} {p}") == line)
    {
        return;
    }
    let p = path(store, digest);
    let _ = fs::create_dir_all(p.parent().expect("has a parent"));
    // One short append: lines from concurrent writers do not interleave.
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(&p) {
        let _ = f.write_all(format!("{line}\n").as_bytes());
    }
}

/// The recorded `(registry, repository)` sources of a blob.
pub(crate) fn sources(store: &Store, digest: &Digest) -> Vec<(String, String)> {
    fs::read_to_string(path(store, digest))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(r, p)| (r.to_string(), p.to_string()))
        .collect()
}

/// Removes the records of blobs that are no longer stored; returns how
/// many. For prune, after it removed blobs.
pub(crate) fn sweep(store: &Store) -> usize {
    store.remove_entries_unless(DIR, |entry| {
        entry
            .file_name()
            .to_str()
            .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok())
            .is_some_and(|d| store.has_blob(&d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_removed_blobs_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = store.put_blob(b"kept").unwrap();
        let gone = store.put_blob(b"gone").unwrap();
        record(&store, &kept, "r.example", "a/b");
        record(&store, &gone, "r.example", "a/c");
        record(&store, &gone, "r.example", "a/c");
        assert_eq!(sources(&store, &gone).len(), 1, "recorded once");
        fs::remove_file(store.blob_path(&gone)).unwrap();
        fs::write(store.root().join(DIR).join("not-a-digest"), "x y\n").unwrap();
        assert_eq!(sweep(&store), 2);
        assert_eq!(sources(&store, &kept), [("r.example".into(), "a/b".into())]);
        assert!(sources(&store, &gone).is_empty());
    }
}
