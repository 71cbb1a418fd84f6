//! Helpers shared by the extraction, flattening and hostile-layer tests.

#![allow(dead_code)] // each test binary uses a subset

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cache::Digest;
use cache::layer::extract::{UnpackOptions, WhiteoutMode};

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// True when running as root; otherwise prints why the test is skipped, or
/// fails under CI.
pub(crate) fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run these tests as root"
    );
    eprintln!("skipped: needs root (devices, chown, trusted xattrs, overlay mounts)");
    false
}

/// Unpack options as root: devices and owners kept, overlay whiteouts.
pub(crate) fn root_opts() -> UnpackOptions {
    UnpackOptions {
        allow_devices: true,
        preserve_owner: true,
        whiteouts: WhiteoutMode::Overlay,
    }
}

/// Every entry below `root` (and `root` itself as ""), described without
/// following links: type, content, link target, device, mode, owner, link
/// count, mtime and xattrs. Directory link counts are left out (they count
/// subdirectories, which overlayfs reports differently).
pub(crate) fn describe(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, path: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let meta = fs::symlink_metadata(path).unwrap();
    let ft = meta.file_type();
    let mut xattrs: Vec<String> = xattr::list(path)
        .unwrap()
        .map(|n| {
            format!(
                "{}={:?}",
                n.to_string_lossy(),
                xattr::get(path, &n).unwrap().unwrap_or_default()
            )
        })
        .collect();
    xattrs.sort();
    let what = if ft.is_file() {
        format!("file {}", Digest::of(&fs::read(path).unwrap()))
    } else if ft.is_symlink() {
        format!("symlink {:?}", fs::read_link(path).unwrap())
    } else if ft.is_dir() {
        "dir".to_string()
    } else {
        format!("special {:?} rdev={}", ft, meta.rdev())
    };
    out.insert(
        path.strip_prefix(root).unwrap().to_path_buf(),
        format!(
            "{what} mode={:o} uid={} gid={} nlink={} mtime={}.{:09} xattrs={xattrs:?}",
            meta.mode(),
            meta.uid(),
            meta.gid(),
            if ft.is_dir() { 0 } else { meta.nlink() },
            meta.mtime(),
            meta.mtime_nsec()
        ),
    );
    if ft.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            walk(root, &entry.unwrap().path(), out);
        }
    }
}
