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
