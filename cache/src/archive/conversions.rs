//! A memo of layer recompressions. Exporting an image whose layers are in
//! another compression than the export asks for (a gzip base image in a
//! `compression=zstd` OCI tarball) recompresses them, seconds for a big
//! layer, on every export. Compression is deterministic, so the blob made
//! once serves every later export of the same layer with the same options:
//! `conversions/<id>` records it as `SOURCE TARGET SIZE` (digests and the
//! target's size), `<id>` naming the source blob and the options. A record
//! is a hint: one whose blobs are gone (pruned) is ignored here and removed
//! by the next prune ([`sweep`]).

use std::fs;

use crate::compression::CompressionOptions;
use crate::digest::Digest;
use crate::images::BlobRef;
use crate::store::Store;

const DIR: &str = "conversions";

fn id(source: &Digest, target: &CompressionOptions) -> String {
    let level = target.level.map(|l| l.to_string()).unwrap_or_default();
    let what = format!("{source}\0{}\0{level}", target.kind.media_type());
    Digest::of(what.as_bytes()).hex().to_string()
}

/// The blob made earlier from `source` with `target`, if it is still
/// stored.
pub(crate) fn lookup(
    store: &Store,
    source: &Digest,
    target: &CompressionOptions,
) -> Option<BlobRef> {
    let text = fs::read_to_string(store.root().join(DIR).join(id(source, target))).ok()?;
    let mut fields = text.split_whitespace();
    let recorded_source: Digest = fields.next()?.parse().ok()?;
    let digest: Digest = fields.next()?.parse().ok()?;
    let size: u64 = fields.next()?.parse().ok()?;
    if recorded_source != *source || store.blob_size(&digest).ok()? != size {
        return None;
    }
    Some(BlobRef {
        media_type: target.kind.media_type().to_string(),
        digest,
        size,
    })
}

/// Records that `made` (a stored blob) is `source` recompressed with
/// `target`. Best effort: a lost record costs one recompression.
pub(crate) fn record(store: &Store, source: &Digest, target: &CompressionOptions, made: &BlobRef) {
    let path = store.root().join(DIR).join(id(source, target));
    let line = format!("{source} {} {}\n", made.digest, made.size);
    let _ = store.replace_file(&path, line.as_bytes(), 0o644, false);
}

/// Removes the records whose source or target blob is no longer stored;
/// returns how many. For prune, after it removed blobs.
pub fn sweep(store: &Store) -> usize {
    store.remove_entries_unless(DIR, |entry| {
        let text = fs::read_to_string(entry.path()).unwrap_or_default();
        let stored = text
            .split_whitespace()
            .take(2)
            .filter(|d| d.parse::<Digest>().is_ok_and(|d| store.has_blob(&d)))
            .count();
        stored == 2
    })
}
