//! Flattening a chain of layers into one plain tree, applying whiteouts as deletions.
//!
//! Used where a tool needs the image's filesystem as one directory
//! (`-o type=local`, `COPY --from`, unpacking for another tool). Layers are
//! applied lowest first with the same safe writer as extraction (see
//! [`super::extract`]) in [`WhiteoutMode::Apply`]: a whiteout deletes the
//! path that lower layers left, an opaque directory loses its lower content,
//! a later entry replaces an earlier one, and a directory merges with a
//! directory. Links planted by a lower layer are never followed: a later
//! layer's `a/passwd` over a lower symlink `a -> /etc` replaces the symlink by
//! a directory, exactly as overlayfs shows it.
//!
//! On error, `dest` is left half-written and is the caller's to discard.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, readlinkat};
use nix::sys::stat::{FileStat, Mode, fstat};
use xattr::FileExt as _;

use super::extract::{
    Data, Entry, HashingReader, Kind, Meta, RelPath, Stop, Tree, UnpackOptions, WhiteoutMode,
    list_dir, lstat_at, open_dir_at,
};
use super::{LayerError, OVERLAY_OPAQUE_XATTR};
use crate::snapshot::LayerRef;
use crate::store::Store;

/// The opaque marker of overlayfs mounted with `userxattr` (rootless).
const USER_OVERLAY_OPAQUE_XATTR: &str = "user.overlay.opaque";

/// What a flatten applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlattenStats {
    pub layers: usize,
    /// Entries applied over all layers (whiteouts included).
    pub entries: u64,
}

/// Applies snapshot directories (overlay format, as made by
/// [`super::extract::unpack_layer`] or an overlay upperdir), lowest first,
/// into `dest`, which must exist and is normally empty.
pub fn flatten_snapshots(
    lowest_first: &[PathBuf],
    dest: &Path,
) -> Result<FlattenStats, LayerError> {
    flatten_snapshots_with(lowest_first, dest, &UnpackOptions::default())
}

/// [`flatten_snapshots`] with explicit options (owners, devices); the
/// whiteout mode is always [`WhiteoutMode::Apply`].
pub fn flatten_snapshots_with(
    lowest_first: &[PathBuf],
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<FlattenStats, LayerError> {
    let mut tree = Tree::open(dest, apply_options(opts))?;
    let mut entries = 0;
    for snapshot in lowest_first {
        tree.begin_layer();
        let mut walk = SnapshotWalk {
            tree: &mut tree,
            root: snapshot,
            allow_devices: opts.allow_devices,
            links: HashMap::new(),
            entries: 0,
        };
        walk.run()?;
        entries += walk.entries;
    }
    tree.finish()?;
    Ok(FlattenStats {
        layers: lowest_first.len(),
        entries,
    })
}

/// Applies layer blobs from the store, lowest first, into `dest`, checking
/// each blob's digest and diffID. A mismatch is found only once the layer is
/// applied, so `dest` must then be discarded like after any other error.
pub fn flatten_layers(
    store: &Store,
    layers: &[LayerRef],
    dest: &Path,
) -> Result<FlattenStats, LayerError> {
    flatten_layers_with(store, layers, dest, &UnpackOptions::default())
}

/// [`flatten_layers`] with explicit options; the whiteout mode is always
/// [`WhiteoutMode::Apply`].
pub fn flatten_layers_with(
    store: &Store,
    layers: &[LayerRef],
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<FlattenStats, LayerError> {
    let mut tree = Tree::open(dest, apply_options(opts))?;
    let mut entries = 0;
    for layer in layers {
        tree.begin_layer();
        let blob = store.open_blob(&layer.digest)?;
        let mut compressed = HashingReader::new(blob);
        let applied = tree.apply_tar(&mut compressed);
        let drained = compressed.drain();
        let actual = compressed.finish();
        // A damaged blob is best reported as such, not as the tar error it causes.
        if drained.is_ok() && actual != layer.digest {
            return Err(LayerError::DigestMismatch {
                what: "layer blob",
                expected: layer.digest,
                actual,
            });
        }
        let stats = applied?;
        drained.map_err(|source| LayerError::Io {
            op: "read",
            path: store.blob_path(&layer.digest),
            source,
        })?;
        if stats.diff_id != layer.diff_id {
            return Err(LayerError::DigestMismatch {
                what: "diffID",
                expected: layer.diff_id,
                actual: stats.diff_id,
            });
        }
        entries += stats.entries;
    }
    tree.finish()?;
    Ok(FlattenStats {
        layers: layers.len(),
        entries,
    })
}

fn apply_options(opts: &UnpackOptions) -> UnpackOptions {
    UnpackOptions {
        whiteouts: WhiteoutMode::Apply,
        ..opts.clone()
    }
}

/// Walks one snapshot top-down and feeds its entries to the tree.
struct SnapshotWalk<'t> {
    tree: &'t mut Tree,
    root: &'t Path,
    allow_devices: bool,
    /// First path of each multiply-linked inode, to link the others to it.
    links: HashMap<(u64, u64), RelPath>,
    entries: u64,
}

impl SnapshotWalk<'_> {
    fn run(&mut self) -> Result<(), LayerError> {
        let root = nix::fcntl::open(
            self.root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map(File::from)
        .map_err(|e| self.err("open snapshot", &RelPath::root(), e))?;
        self.dir(root, RelPath::root())
    }

    fn err(&self, op: &'static str, rel: &RelPath, e: impl Into<io::Error>) -> LayerError {
        LayerError::Io {
            op,
            path: self.root.join(rel.as_path()),
            source: e.into(),
        }
    }

    fn apply(&mut self, entry: Entry<'_>) -> Result<(), LayerError> {
        let path = entry.path.clone();
        self.entries += 1;
        self.tree.apply(entry).map_err(|stop| match stop {
            Stop::Layer(e) => e,
            Stop::Stream(source) => LayerError::Io {
                op: "read",
                path: self.root.join(path.as_path()),
                source,
            },
        })
    }

    /// Applies the directory `rel` (open as `dir`) and then its content.
    fn dir(&mut self, dir: File, rel: RelPath) -> Result<(), LayerError> {
        let st = fstat(&dir).map_err(|e| self.err("inspect", &rel, e))?;
        let (xattrs, opaque) =
            split_overlay(read_xattrs_fd(&dir).map_err(|e| self.err("read xattrs of", &rel, e))?);
        self.apply(Entry {
            path: rel.clone(),
            kind: Kind::Dir { opaque },
            meta: Some(meta_of(&st, xattrs)),
        })?;
        for name in list_dir(&dir).map_err(|e| self.err("list directory", &rel, e))? {
            let child = rel.join(&name);
            let Some(st) = lstat_at(&dir, &name).map_err(|e| self.err("inspect", &child, e))?
            else {
                continue;
            };
            self.child(&dir, &name, child, &st)?;
        }
        Ok(())
    }

    fn child(
        &mut self,
        dir: &File,
        name: &OsStr,
        rel: RelPath,
        st: &FileStat,
    ) -> Result<(), LayerError> {
        match st.st_mode & libc::S_IFMT {
            libc::S_IFDIR => {
                let sub =
                    open_dir_at(dir, name).map_err(|e| self.err("open directory", &rel, e))?;
                self.dir(sub, rel)
            }
            libc::S_IFREG => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key) {
                        let first = first.clone();
                        return self.apply(Entry {
                            path: rel,
                            kind: Kind::Hardlink(first),
                            meta: None,
                        });
                    }
                    self.links.insert(key, rel.clone());
                }
                let file = nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map(File::from)
                .map_err(|e| self.err("open", &rel, e))?;
                let (xattrs, _) = split_overlay(
                    read_xattrs_fd(&file).map_err(|e| self.err("read xattrs of", &rel, e))?,
                );
                let size = u64::try_from(st.st_size).unwrap_or(0);
                self.apply(Entry {
                    path: rel,
                    kind: Kind::File {
                        data: Data::File(&file),
                        size,
                    },
                    meta: Some(meta_of(st, xattrs)),
                })
            }
            kind => {
                let kind = match kind {
                    libc::S_IFLNK => Kind::Symlink(
                        readlinkat(dir, name).map_err(|e| self.err("read symlink", &rel, e))?,
                    ),
                    // The overlay spelling of a whiteout.
                    libc::S_IFCHR if st.st_rdev == 0 => Kind::Whiteout,
                    libc::S_IFCHR | libc::S_IFBLK if !self.allow_devices => {
                        return Err(LayerError::DeviceNotAllowed {
                            entry: rel.as_path().to_string_lossy().into_owned(),
                        });
                    }
                    libc::S_IFCHR => Kind::Char(st.st_rdev),
                    libc::S_IFBLK => Kind::Block(st.st_rdev),
                    libc::S_IFIFO => Kind::Fifo,
                    // Sockets have no place in an image (tar cannot hold them either).
                    _ => return Ok(()),
                };
                let meta = match kind {
                    Kind::Whiteout => None,
                    _ => {
                        let via = Path::new("/proc/self/fd")
                            .join(dir.as_raw_fd().to_string())
                            .join(name);
                        let xattrs = read_xattrs_path(&via)
                            .map_err(|e| self.err("read xattrs of", &rel, e))?;
                        Some(meta_of(st, split_overlay(xattrs).0))
                    }
                };
                self.apply(Entry {
                    path: rel,
                    kind,
                    meta,
                })
            }
        }
    }
}

fn meta_of(st: &FileStat, xattrs: Vec<(OsString, Vec<u8>)>) -> Meta {
    let mtime = (st.st_mtime, st.st_mtime_nsec);
    Meta {
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        // The read of a flatten would otherwise leak into the result.
        atime: mtime,
        mtime,
        xattrs,
    }
}

/// Separates overlayfs' own xattrs from the rest and says whether they mark
/// the directory opaque. Other overlay xattrs (origin, impure) describe the
/// snapshot's past, not its content, and are dropped.
fn split_overlay(xattrs: Vec<(OsString, Vec<u8>)>) -> (Vec<(OsString, Vec<u8>)>, bool) {
    let mut opaque = false;
    let mut kept = Vec::new();
    for (name, value) in xattrs {
        let raw = name.as_encoded_bytes();
        if name == OVERLAY_OPAQUE_XATTR || name == USER_OVERLAY_OPAQUE_XATTR {
            opaque |= value == b"y";
        } else if !(raw.starts_with(b"trusted.overlay.") || raw.starts_with(b"user.overlay.")) {
            kept.push((name, value));
        }
    }
    (kept, opaque)
}

fn read_xattrs_fd(file: &File) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in unsupported_is_empty(file.list_xattr())? {
        if let Some(value) = file.get_xattr(&name)? {
            out.push((name, value));
        }
    }
    Ok(out)
}

/// Xattrs of a symlink or special file, not following it.
fn read_xattrs_path(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut out = Vec::new();
    for name in unsupported_is_empty(xattr::list(path))? {
        if let Some(value) = xattr::get(path, &name)? {
            out.push((name, value));
        }
    }
    Ok(out)
}

fn unsupported_is_empty(list: io::Result<xattr::XAttrs>) -> io::Result<Vec<OsString>> {
    match list {
        Ok(names) => Ok(names.collect()),
        Err(e) if e.raw_os_error() == Some(Errno::EOPNOTSUPP as i32) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
