//! Safe layer extraction into snapshot directories (overlay whiteout format).
//!
//! A layer is hostile input. Every entry is written relative to a directory
//! file descriptor of `dest`, walking one path component at a time with
//! `O_NOFOLLOW`, and the final component is created with calls that never
//! follow a link (`O_CREAT|O_EXCL`, `mknodat`, `symlinkat`, `linkat` without
//! `AT_SYMLINK_FOLLOW`, `AT_SYMLINK_NOFOLLOW` for owners and times). So a
//! symlink or hardlink planted by an earlier entry can never redirect a later
//! write, whatever its target says.
//!
//! Path rules (the same as containerd's where it has one):
//! - a leading `/` is dropped, so absolute names land inside `dest`;
//! - `.` and empty components are ignored; any `..` component is an error,
//!   and so is a name of `PATH_MAX` (4096) bytes or more;
//! - a parent component that this same layer made a symlink or a non-directory
//!   is an error; one that was already in `dest` (a lower layer, when applying
//!   onto a tree) is replaced by a directory, which is what overlayfs shows
//!   when an upper directory covers a lower non-directory;
//! - a duplicate entry replaces the earlier one, except that a directory over
//!   a directory merges; replacing never follows links (a directory being
//!   replaced is removed without descending into symlinks);
//! - a hardlink's target must already exist inside `dest` and is resolved the
//!   same way, never through a symlink.
//!
//! Whiteouts, in [`WhiteoutMode::Overlay`] (snapshots): `.wh.<name>` becomes a
//! 0:0 character device `<name>` and `.wh..wh..opq` sets
//! `trusted.overlay.opaque=y` on its directory, so that the kernel's overlayfs
//! applies them. In [`WhiteoutMode::Apply`] (flattening onto a tree) they
//! delete what lower layers put in `dest`. As the OCI spec says, a whiteout
//! never hides an entry of its own layer. A 0:0 character device in a layer
//! is read as a whiteout in both modes, since that is what it is in overlay
//! format and what docker's exporter turns into `.wh.` entries. Overlay
//! metadata xattrs (`trusted.overlay.*`, `user.overlay.*`) are dropped when
//! they come from a layer: they could forge opacity or redirects.
//!
//! On error, `dest` is left half-written; callers unpack into a temp
//! directory and discard it, so nothing partial is ever visible.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use xattr::FileExt as _;

use super::{LayerError, OVERLAY_OPAQUE_XATTR, WHITEOUT_OPAQUE, WHITEOUT_PREFIX};
use crate::digest::{Digest, Hasher};

/// Linux's limit on a path name, terminating NUL included.
const PATH_MAX: usize = 4096;

/// Copy buffer for file contents; large enough to keep syscalls rare.
const COPY_BUFFER: usize = 256 * 1024;

/// Aufs keeps its own metadata under `.wh..wh.`; such entries mean nothing here.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";

/// How whiteouts in a layer are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutMode {
    /// Keep them for overlayfs: a 0:0 character device per whiteout and
    /// `trusted.overlay.opaque=y` on opaque directories. For snapshots.
    #[default]
    Overlay,
    /// Apply them: delete what lower layers left in `dest`. For flattening a
    /// chain of layers into one plain tree.
    Apply,
}

/// How a layer is unpacked.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Create character and block devices. When false, a device entry is an
    /// error. Whiteouts and fifos are not devices in this sense.
    pub allow_devices: bool,
    /// Give entries the uid/gid from the layer (needs root).
    pub preserve_owner: bool,
    pub whiteouts: WhiteoutMode,
}

impl Default for UnpackOptions {
    /// Devices and owners are kept when running as root, since only root can
    /// create them.
    fn default() -> Self {
        let root = nix::unistd::geteuid().is_root();
        UnpackOptions {
            allow_devices: root,
            preserve_owner: root,
            whiteouts: WhiteoutMode::Overlay,
        }
    }
}

/// What [`unpack_layer`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// sha256 of the uncompressed tar stream, as image configs list it.
    pub diff_id: Digest,
    /// Length of the uncompressed tar stream.
    pub bytes: u64,
    /// Tar entries applied (not counting long-name and PAX headers).
    pub entries: u64,
}

/// Unpacks a layer (gzip, zstd or plain tar, detected from its first bytes)
/// into `dest`, computing its diffID on the way. See the module documentation
/// for the safety rules. `dest` must exist; on error it is half-written and
/// the caller's to discard.
pub fn unpack_layer(
    reader: impl Read + Send,
    dest: &Path,
    opts: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    let mut tree = Tree::open(dest, opts.clone())?;
    tree.begin_layer();
    let stats = tree.apply_tar(reader)?;
    tree.finish()?;
    Ok(stats)
}

/// A reader that hashes what passes through and remembers whether it has
/// seen the end of its input.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    eof: bool,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            eof: false,
        }
    }

    /// Bytes read so far.
    pub(crate) fn len(&self) -> u64 {
        self.hasher.len()
    }

    pub(crate) fn saw_eof(&self) -> bool {
        self.eof
    }

    /// Reads the rest of the input, so that the digest covers all of it.
    pub(crate) fn drain(&mut self) -> io::Result<u64> {
        io::copy(self, &mut io::sink())
    }

    pub(crate) fn finish(self) -> Digest {
        self.hasher.finish()
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.eof = true;
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// A normalized path inside a tree: relative, no `.`, `..` or empty
/// components. The empty path is the tree's root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub(crate) struct RelPath(PathBuf);

impl RelPath {
    pub(crate) fn root() -> Self {
        RelPath(PathBuf::new())
    }

    /// Parses a name from a layer: a leading `/` is dropped (absolute names
    /// land inside the tree, as in containerd) and `..` is refused.
    pub(crate) fn parse(raw: &[u8]) -> Result<RelPath, &'static str> {
        // Nothing could reach such a path by name, and its depth would only
        // serve to exhaust the stack of recursive removal.
        if raw.len() >= PATH_MAX {
            return Err("path is longer than PATH_MAX");
        }
        let mut path = PathBuf::new();
        for part in raw.split(|b| *b == b'/') {
            match part {
                b"" | b"." => {}
                b".." => return Err("path has a `..` component"),
                _ => path.push(OsStr::from_bytes(part)),
            }
        }
        Ok(RelPath(path))
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.as_os_str().is_empty()
    }

    pub(crate) fn as_path(&self) -> &Path {
        &self.0
    }

    pub(crate) fn join(&self, name: &OsStr) -> RelPath {
        RelPath(self.0.join(name))
    }

    /// The parent directory and the last component; `None` for the root.
    pub(crate) fn split(&self) -> Option<(RelPath, &OsStr)> {
        let name = self.0.file_name()?;
        let parent = self.0.parent().unwrap_or(Path::new(""));
        Some((RelPath(parent.to_path_buf()), name))
    }

    fn components(&self) -> impl Iterator<Item = &OsStr> {
        self.0.components().filter_map(|c| match c {
            Component::Normal(s) => Some(s),
            _ => None,
        })
    }

    fn display(&self) -> String {
        if self.is_root() {
            ".".to_string()
        } else {
            self.0.to_string_lossy().into_owned()
        }
    }
}

/// Owner, permissions, times and xattrs of one entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    /// Permission bits including setuid, setgid and sticky.
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) atime: (i64, i64),
    pub(crate) mtime: (i64, i64),
    pub(crate) xattrs: Vec<(OsString, Vec<u8>)>,
}

/// Where a regular file's content comes from.
pub(crate) enum Data<'a> {
    /// A tar entry (or any stream).
    Stream(&'a mut dyn Read),
    /// A file in a snapshot: copied with `copy_file_range` where possible.
    File(&'a File),
}

/// What an entry is.
pub(crate) enum Kind<'a> {
    /// A directory; `opaque` hides what lower layers have below it.
    Dir {
        opaque: bool,
    },
    File {
        data: Data<'a>,
        size: u64,
    },
    Symlink(OsString),
    Hardlink(RelPath),
    Char(u64),
    Block(u64),
    Fifo,
    /// Hides the path in lower layers.
    Whiteout,
}

/// One thing to apply to a tree. `meta` is `None` for directories that are
/// only implied (an opaque marker); of a whiteout's, only the times are used.
pub(crate) struct Entry<'a> {
    pub(crate) path: RelPath,
    pub(crate) kind: Kind<'a>,
    pub(crate) meta: Option<Meta>,
}

/// Why applying a tar stopped.
pub(crate) enum Stop {
    Stream(io::Error),
    Layer(LayerError),
}

impl From<LayerError> for Stop {
    fn from(e: LayerError) -> Self {
        Stop::Layer(e)
    }
}

/// A destination tree, written only through the rules in the module docs.
/// Layers are applied one after another (`begin_layer`, entries, ...), then
/// `finish` sets directory metadata, which must wait until nothing more is
/// written below each directory.
pub(crate) struct Tree {
    root: Rc<File>,
    root_path: PathBuf,
    opts: UnpackOptions,
    /// The directory of the previous entry: most entries share it.
    cached: Option<(RelPath, Rc<File>)>,
    /// Deferred directory metadata; a later layer's entry wins.
    dir_meta: BTreeMap<RelPath, Meta>,
    /// Paths this layer has written (a whiteout never hides them).
    written: HashSet<RelPath>,
    /// Whiteout devices this layer has made (overlay mode).
    whiteouts: HashSet<RelPath>,
    buf: Vec<u8>,
    is_root_user: bool,
}

impl Tree {
    pub(crate) fn open(dest: &Path, opts: UnpackOptions) -> Result<Tree, LayerError> {
        let root = nix::fcntl::open(
            dest,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| LayerError::Io {
            op: "open destination",
            path: dest.to_path_buf(),
            source: e.into(),
        })?;
        Ok(Tree {
            root: Rc::new(File::from(root)),
            root_path: dest.to_path_buf(),
            opts,
            cached: None,
            dir_meta: BTreeMap::new(),
            written: HashSet::new(),
            whiteouts: HashSet::new(),
            buf: vec![0; COPY_BUFFER],
            is_root_user: nix::unistd::geteuid().is_root(),
        })
    }

    pub(crate) fn begin_layer(&mut self) {
        self.cached = None;
        self.written.clear();
        self.whiteouts.clear();
    }

    fn full(&self, rel: &RelPath) -> PathBuf {
        self.root_path.join(rel.as_path())
    }

    fn io_err(&self, op: &'static str, rel: &RelPath, e: impl Into<io::Error>) -> LayerError {
        LayerError::Io {
            op,
            path: self.full(rel),
            source: e.into(),
        }
    }

    /// Reads a tar (compressed or not) and applies its entries as one layer.
    pub(crate) fn apply_tar(
        &mut self,
        reader: impl Read + Send,
    ) -> Result<UnpackStats, LayerError> {
        let decoded =
            crate::compression::decompressor(reader).map_err(|e| LayerError::Corrupt {
                offset: 0,
                source: io::Error::other(e),
            })?;
        let mut source = HashingReader::new(decoded);
        let result = self.apply_entries(&mut source);
        let offset = source.len();
        let stream_error = |source: io::Error, eof: bool| {
            if eof || source.kind() == io::ErrorKind::UnexpectedEof {
                LayerError::Truncated { offset }
            } else {
                LayerError::Corrupt { offset, source }
            }
        };
        let entries = match result {
            Ok(entries) => entries,
            Err(Stop::Layer(e)) => return Err(e),
            Err(Stop::Stream(e)) => return Err(stream_error(e, source.saw_eof())),
        };
        // The tar reader stops at the first zero block or at the end of the
        // input; only the former is a complete archive.
        if source.saw_eof() {
            return Err(LayerError::Truncated { offset });
        }
        // Reading on to the end makes the decompressor check its trailer
        // (gzip CRC and length, zstd checksum) and puts the padding into the
        // diffID, which covers the whole stream.
        source.drain().map_err(|e| stream_error(e, false))?;
        let bytes = source.len();
        Ok(UnpackStats {
            diff_id: source.finish(),
            bytes,
            entries,
        })
    }

    fn apply_entries<R: Read>(&mut self, source: &mut HashingReader<R>) -> Result<u64, Stop> {
        let mut archive = tar::Archive::new(source);
        let mut count = 0;
        for entry in archive.entries().map_err(Stop::Stream)? {
            let mut entry = entry.map_err(Stop::Stream)?;
            if entry.header().entry_type() == tar::EntryType::XGlobalHeader {
                continue;
            }
            count += 1;
            self.apply_tar_entry(&mut entry)?;
        }
        Ok(count)
    }

    fn apply_tar_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Stop> {
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let unsafe_path = |reason| LayerError::UnsafePath {
            entry: name.clone(),
            reason,
        };
        let path = RelPath::parse(&raw_name).map_err(unsafe_path)?;
        let pax = PaxInfo::read(entry).map_err(Stop::Stream)?;
        let header = entry.header();
        let ty = header.entry_type();

        // Whiteouts are recognised by name, whatever their type.
        if let Some((parent, base)) = path.split() {
            let base = base.as_bytes();
            if base == WHITEOUT_OPAQUE.as_bytes() {
                return self.apply(Entry {
                    path: parent,
                    kind: Kind::Dir { opaque: true },
                    meta: None,
                });
            }
            if base.starts_with(AUFS_META_PREFIX) {
                return Ok(());
            }
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
                if hidden.is_empty() || hidden == b"." || hidden == b".." {
                    return Err(unsafe_path("whiteout names no entry").into());
                }
                // Only the entry's times carry over, so that the snapshot
                // (and a layer made again from it) is reproducible.
                let meta = tar_meta(entry.header(), &pax, &name)?;
                return self.apply(Entry {
                    path: parent.join(OsStr::from_bytes(hidden)),
                    kind: Kind::Whiteout,
                    meta: Some(meta),
                });
            }
        }

        let meta = tar_meta(header, &pax, &name)?;
        let kind = match ty {
            tar::EntryType::Directory => Kind::Dir { opaque: false },
            // Old tars mark directories only by a trailing slash.
            tar::EntryType::Regular if raw_name.ends_with(b"/") && entry.size() == 0 => {
                Kind::Dir { opaque: false }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = entry.size();
                return self.apply(Entry {
                    path,
                    kind: Kind::File {
                        data: Data::Stream(entry),
                        size,
                    },
                    meta: Some(meta),
                });
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidHeader {
                        entry: name.clone(),
                        reason: "symlink without a target".into(),
                    })?;
                Kind::Symlink(OsString::from_vec(target.into_owned()))
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::InvalidHeader {
                        entry: name.clone(),
                        reason: "hardlink without a target".into(),
                    })?;
                Kind::Hardlink(RelPath::parse(&target).map_err(unsafe_path)?)
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let dev = device_number(header, &name)?;
                // A 0:0 character device is how overlayfs spells a whiteout;
                // treat it as one in both modes rather than let the mode
                // decide what it means.
                if ty == tar::EntryType::Char && dev == 0 {
                    Kind::Whiteout
                } else if !self.opts.allow_devices {
                    return Err(LayerError::DeviceNotAllowed { entry: name }.into());
                } else if ty == tar::EntryType::Char {
                    Kind::Char(dev)
                } else {
                    Kind::Block(dev)
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            other => {
                return Err(LayerError::UnsupportedEntry {
                    entry: name,
                    kind: format!("{:?} ({:?})", other, char::from(other.as_byte())),
                }
                .into());
            }
        };
        self.apply(Entry {
            path,
            kind,
            meta: Some(meta),
        })
    }

    /// Applies one entry to the tree.
    pub(crate) fn apply(&mut self, entry: Entry<'_>) -> Result<(), Stop> {
        let Entry { path, kind, meta } = entry;
        let Some((parent, name)) = path.split() else {
            // The root itself: only directory metadata and opacity apply.
            return match kind {
                Kind::Dir { opaque } => {
                    if opaque {
                        self.hide_lower_below(&path)?;
                    }
                    if let Some(meta) = meta {
                        self.dir_meta.insert(path, meta);
                    }
                    Ok(())
                }
                _ => Err(LayerError::UnsafePath {
                    entry: ".".into(),
                    reason: "entry would replace the root",
                }
                .into()),
            };
        };
        let name = name.to_os_string();
        let dir = self
            .open_dir(&parent, true, &path)?
            .expect("created on demand");
        let existing = lstat_at(&dir, &name).map_err(|e| self.io_err("inspect", &path, e))?;
        match kind {
            Kind::Whiteout => self.whiteout(&dir, &name, &path, existing, meta.as_ref())?,
            Kind::Dir { opaque } => {
                let mut opaque = opaque;
                match existing {
                    Some(st) if is_dir(&st) => {}
                    Some(st) => {
                        // A whiteout of this layer followed by a directory:
                        // the directory must still hide the lower one.
                        let was_whiteout = self.whiteouts.remove(&path);
                        // An opaque marker only implies its directory; under
                        // this layer's own symlink or file it would be
                        // written through a parent, which is refused.
                        if meta.is_none() && !was_whiteout && self.written.contains(&path) {
                            return Err(LayerError::UnsafePath {
                                entry: path.display(),
                                reason: parent_reason(&st),
                            }
                            .into());
                        }
                        opaque |= was_whiteout;
                        self.remove_at(&dir, &name, &path)?;
                        self.mkdir_at(&dir, &name, &path)?;
                    }
                    None => self.mkdir_at(&dir, &name, &path)?,
                }
                self.written.insert(path.clone());
                if opaque {
                    self.hide_lower_below(&path)?;
                }
                if let Some(meta) = meta {
                    self.dir_meta.insert(path, meta);
                }
            }
            Kind::Hardlink(target) => {
                if target == path && existing.is_some_and(|st| !is_dir(&st)) {
                    // A link to itself is already there.
                    self.written.insert(path);
                    return Ok(());
                }
                let Some((tparent, tname)) = target.split() else {
                    return Err(LayerError::UnsafePath {
                        entry: path.display(),
                        reason: "hardlink to the root",
                    }
                    .into());
                };
                let tname = tname.to_os_string();
                let Some(tdir) = self.open_dir(&tparent, false, &path)? else {
                    return Err(LayerError::UnsafePath {
                        entry: path.display(),
                        reason: "hardlink target is not reachable inside the layer without following a link",
                    }
                    .into());
                };
                if existing.is_some() {
                    self.remove_at(&dir, &name, &path)?;
                }
                linkat(
                    &*tdir,
                    tname.as_os_str(),
                    &*dir,
                    name.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| match e {
                    Errno::ENOENT => LayerError::UnsafePath {
                        entry: path.display(),
                        reason: "hardlink target does not exist in the layer",
                    },
                    e => self.io_err("create hardlink", &path, e),
                })?;
                self.whiteouts.remove(&path);
                self.written.insert(path);
            }
            kind => {
                if existing.is_some() {
                    self.remove_at(&dir, &name, &path)?;
                }
                self.whiteouts.remove(&path);
                let meta = meta.unwrap_or_default();
                self.create_leaf(&dir, &name, &path, kind, &meta)?;
                self.written.insert(path);
            }
        }
        Ok(())
    }

    /// Creates a file, symlink, device or fifo where nothing is, and gives
    /// it its metadata.
    fn create_leaf(
        &mut self,
        dir: &File,
        name: &OsStr,
        path: &RelPath,
        kind: Kind<'_>,
        meta: &Meta,
    ) -> Result<(), Stop> {
        match kind {
            Kind::File { data, size } => {
                let fd = nix::fcntl::openat(
                    dir,
                    name,
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| self.io_err("create file", path, e))?;
                let mut file = File::from(fd);
                self.copy_data(data, size, &mut file, path)?;
                self.apply_meta_fd(&file, path, meta)?;
            }
            Kind::Symlink(target) => {
                symlinkat(target.as_os_str(), dir, name)
                    .map_err(|e| self.io_err("create symlink", path, e))?;
                self.apply_meta_at(dir, name, path, meta, true)?;
            }
            Kind::Char(_) | Kind::Block(_) | Kind::Fifo => {
                let (sflag, dev, what) = match kind {
                    Kind::Char(dev) => (SFlag::S_IFCHR, dev, "create device node"),
                    Kind::Block(dev) => (SFlag::S_IFBLK, dev, "create device node"),
                    _ => (SFlag::S_IFIFO, 0, "create fifo"),
                };
                mknodat(dir, name, sflag, Mode::from_bits_truncate(0o600), dev)
                    .map_err(|e| self.io_err(what, path, e))?;
                self.apply_meta_at(dir, name, path, meta, false)?;
            }
            Kind::Dir { .. } | Kind::Hardlink(_) | Kind::Whiteout => {
                unreachable!("handled by apply")
            }
        }
        Ok(())
    }

    fn copy_data(
        &mut self,
        data: Data<'_>,
        size: u64,
        out: &mut File,
        path: &RelPath,
    ) -> Result<(), Stop> {
        let copied = match data {
            Data::File(src) => {
                io::copy(&mut src.take(size), out).map_err(|e| self.io_err("copy file", path, e))?
            }
            Data::Stream(src) => {
                let mut copied = 0u64;
                while copied < size {
                    let want = (size - copied).min(self.buf.len() as u64) as usize;
                    let n = match src.read(&mut self.buf[..want]) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(Stop::Stream(e)),
                    };
                    out.write_all(&self.buf[..n]).map_err(|e| LayerError::Io {
                        op: "write file",
                        path: self.full(path),
                        source: e,
                    })?;
                    copied += n as u64;
                }
                copied
            }
        };
        if copied != size {
            return Err(Stop::Stream(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{} has {copied} of {size} bytes", path.display()),
            )));
        }
        Ok(())
    }

    /// Hides `path` of lower layers, as `.wh.<name>` asks.
    fn whiteout(
        &mut self,
        dir: &File,
        name: &OsStr,
        path: &RelPath,
        existing: Option<FileStat>,
        meta: Option<&Meta>,
    ) -> Result<(), Stop> {
        let mine = self.written.contains(path);
        match (self.opts.whiteouts, existing) {
            // This layer's own entry already hides a lower non-directory.
            (_, Some(st)) if mine && !is_dir(&st) => {}
            // This layer's directory must not show lower content.
            (_, Some(_)) if mine => self.hide_lower_below(path)?,
            (WhiteoutMode::Apply, Some(_)) => self.remove_at(dir, name, path)?,
            (WhiteoutMode::Apply, None) => {}
            (WhiteoutMode::Overlay, existing) => {
                if existing.is_some() {
                    self.remove_at(dir, name, path)?;
                }
                mknodat(dir, name, SFlag::S_IFCHR, Mode::empty(), 0)
                    .map_err(|e| self.io_err("create whiteout", path, e))?;
                if self.is_root_user {
                    fchownat(
                        dir,
                        name,
                        Some(Uid::from_raw(0)),
                        Some(Gid::from_raw(0)),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| self.io_err("chown whiteout", path, e))?;
                }
                if let Some(meta) = meta {
                    self.set_times_at(dir, name, path, meta)?;
                }
                self.whiteouts.insert(path.clone());
                self.written.insert(path.clone());
            }
        }
        Ok(())
    }

    /// Makes the directory `path` opaque: in overlay mode by the xattr, when
    /// applying by deleting everything below it that this layer did not write.
    fn hide_lower_below(&mut self, path: &RelPath) -> Result<(), Stop> {
        let dir = self.open_dir(path, true, path)?.expect("created on demand");
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => dir
                .set_xattr(OVERLAY_OPAQUE_XATTR, b"y")
                .map_err(|e| self.io_err("mark opaque", path, e))?,
            WhiteoutMode::Apply => self.prune_lower(&dir, path)?,
        }
        Ok(())
    }

    /// Deletes below `dir` whatever this layer has not written.
    fn prune_lower(&mut self, dir: &File, path: &RelPath) -> Result<(), Stop> {
        for name in list_dir(dir).map_err(|e| self.io_err("list directory", path, e))? {
            let child = path.join(&name);
            if !self.written.contains(&child) {
                self.remove_at(dir, &name, &child)?;
                continue;
            }
            match open_dir_at(dir, &name) {
                Ok(sub) => self.prune_lower(&sub, &child)?,
                Err(Errno::ENOTDIR | Errno::ELOOP) => {}
                Err(e) => return Err(self.io_err("open directory", &child, e).into()),
            }
        }
        Ok(())
    }

    fn mkdir_at(&mut self, dir: &File, name: &OsStr, path: &RelPath) -> Result<(), LayerError> {
        // The final mode comes with the deferred metadata; until then the
        // directory must stay writable for its content.
        match mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
            Ok(()) | Err(Errno::EEXIST) => Ok(()),
            Err(e) => Err(self.io_err("create directory", path, e)),
        }
    }

    /// Removes whatever is at `name`, a whole tree for a directory, without
    /// following any link.
    fn remove_at(&mut self, dir: &File, name: &OsStr, path: &RelPath) -> Result<(), LayerError> {
        self.cached = None;
        let stale: Vec<RelPath> = self
            .dir_meta
            .range(path.clone()..)
            .map(|(k, _)| k)
            .take_while(|k| k.as_path().starts_with(path.as_path()))
            .cloned()
            .collect();
        for k in stale {
            self.dir_meta.remove(&k);
        }
        remove_all_at(dir, name).map_err(|e| self.io_err("remove", path, e))
    }

    /// Opens the directory `path`, one component at a time and never through
    /// a symlink. With `create`, missing directories are made and lower-layer
    /// non-directories in the way are replaced; without it, `None` says the
    /// directory is not reachable that way.
    fn open_dir(
        &mut self,
        path: &RelPath,
        create: bool,
        entry: &RelPath,
    ) -> Result<Option<Rc<File>>, LayerError> {
        if let Some((cached_path, fd)) = &self.cached {
            if cached_path == path {
                return Ok(Some(fd.clone()));
            }
        }
        // Start from the cached directory when it is an ancestor.
        let (mut cur, mut prefix, skip) = match &self.cached {
            Some((cached_path, fd)) if path.as_path().starts_with(cached_path.as_path()) => (
                fd.clone(),
                cached_path.clone(),
                cached_path.components().count(),
            ),
            _ => (self.root.clone(), RelPath::root(), 0),
        };
        let parts: Vec<OsString> = path
            .components()
            .skip(skip)
            .map(OsStr::to_os_string)
            .collect();
        for part in parts {
            prefix = prefix.join(&part);
            let next = match open_dir_at(&cur, &part) {
                Ok(fd) => {
                    // The layer implies this directory, so a whiteout of the
                    // same layer must not remove it with what is below.
                    if create && !self.written.contains(&prefix) {
                        self.written.insert(prefix.clone());
                    }
                    fd
                }
                Err(Errno::ENOENT) if create => {
                    self.mkdir_at(&cur, &part, &prefix)?;
                    self.written.insert(prefix.clone());
                    open_dir_at(&cur, &part)
                        .map_err(|e| self.io_err("open directory", &prefix, e))?
                }
                Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) if !create => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    let st = lstat_at(&cur, &part)
                        .map_err(|e| self.io_err("inspect", &prefix, e))?
                        .ok_or_else(|| self.io_err("inspect", &prefix, Errno::ENOENT))?;
                    let was_whiteout = self.whiteouts.remove(&prefix);
                    if !was_whiteout && self.written.contains(&prefix) {
                        return Err(LayerError::UnsafePath {
                            entry: entry.display(),
                            reason: parent_reason(&st),
                        });
                    }
                    // A lower layer's non-directory (or this layer's
                    // whiteout) gives way to a directory, as in overlayfs.
                    self.remove_at(&cur, &part, &prefix)?;
                    self.mkdir_at(&cur, &part, &prefix)?;
                    self.written.insert(prefix.clone());
                    let fd = open_dir_at(&cur, &part)
                        .map_err(|e| self.io_err("open directory", &prefix, e))?;
                    if was_whiteout {
                        fd.set_xattr(OVERLAY_OPAQUE_XATTR, b"y")
                            .map_err(|e| self.io_err("mark opaque", &prefix, e))?;
                    }
                    fd
                }
                Err(e) => return Err(self.io_err("open directory", &prefix, e)),
            };
            cur = Rc::new(next);
        }
        // Only walks that marked their components as written may be reused
        // by later walks that must.
        if create {
            self.cached = Some((path.clone(), cur.clone()));
        }
        Ok(Some(cur))
    }

    fn apply_meta_fd(&self, file: &File, path: &RelPath, meta: &Meta) -> Result<(), LayerError> {
        if self.opts.preserve_owner {
            fchown(
                file,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| self.io_err("chown", path, e))?;
        }
        // After chown, which clears setuid and setgid.
        fchmod(file, Mode::from_bits_truncate(meta.mode & 0o7777))
            .map_err(|e| self.io_err("chmod", path, e))?;
        for (name, value) in &meta.xattrs {
            file.set_xattr(name, value)
                .map_err(|e| self.io_err("set xattr on", path, e))?;
        }
        futimens(file, &timespec(meta.atime), &timespec(meta.mtime))
            .map_err(|e| self.io_err("set times of", path, e))?;
        Ok(())
    }

    fn apply_meta_at(
        &self,
        dir: &File,
        name: &OsStr,
        path: &RelPath,
        meta: &Meta,
        symlink: bool,
    ) -> Result<(), LayerError> {
        if self.opts.preserve_owner {
            fchownat(
                dir,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| self.io_err("chown", path, e))?;
        }
        if !symlink {
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(meta.mode & 0o7777),
                FchmodatFlags::NoFollowSymlink,
            )
            .map_err(|e| self.io_err("chmod", path, e))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr on `<dir fd>/<name>`: the magic link resolves the
            // directory, and `name` itself is not followed.
            let via = Path::new("/proc/self/fd")
                .join(dir.as_raw_fd().to_string())
                .join(name);
            for (xname, value) in &meta.xattrs {
                xattr::set(&via, xname, value).map_err(|e| self.io_err("set xattr on", path, e))?;
            }
        }
        self.set_times_at(dir, name, path, meta)
    }

    /// Access and modification times of `name` in `dir`, never following it.
    fn set_times_at(
        &self,
        dir: &File,
        name: &OsStr,
        path: &RelPath,
        meta: &Meta,
    ) -> Result<(), LayerError> {
        utimensat(
            dir,
            name,
            &timespec(meta.atime),
            &timespec(meta.mtime),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| self.io_err("set times of", path, e))
    }

    /// Sets the deferred directory metadata, deepest first, so that neither
    /// a later write nor a read-only parent gets in the way.
    pub(crate) fn finish(mut self) -> Result<(), LayerError> {
        let dirs = std::mem::take(&mut self.dir_meta);
        for (path, meta) in dirs.iter().rev() {
            // Gone or replaced since: a later entry removed it.
            let Some(dir) = self.open_dir(path, false, path)? else {
                continue;
            };
            self.apply_meta_fd(&dir, path, meta)?;
        }
        Ok(())
    }
}

/// Parsed PAX records that the tar crate does not apply itself.
#[derive(Default)]
struct PaxInfo {
    mtime: Option<Vec<u8>>,
    atime: Option<Vec<u8>>,
    xattrs: Vec<(OsString, Vec<u8>)>,
}

impl PaxInfo {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<PaxInfo> {
        let mut info = PaxInfo::default();
        let Some(exts) = entry.pax_extensions()? else {
            return Ok(info);
        };
        for ext in exts {
            let ext = ext?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                info.mtime = Some(ext.value_bytes().to_vec());
            } else if key == b"atime" {
                info.atime = Some(ext.value_bytes().to_vec());
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                info.xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
        Ok(info)
    }
}

/// Xattrs that steer overlayfs; a layer must not set them.
fn is_overlay_xattr(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.")
}

fn tar_meta(header: &tar::Header, pax: &PaxInfo, entry: &str) -> Result<Meta, LayerError> {
    let invalid = |reason: String| LayerError::InvalidHeader {
        entry: entry.to_string(),
        reason,
    };
    let mode = header.mode().map_err(|e| invalid(format!("mode: {e}")))?;
    let uid = header.uid().map_err(|e| invalid(format!("uid: {e}")))?;
    let gid = header.gid().map_err(|e| invalid(format!("gid: {e}")))?;
    let uid = u32::try_from(uid).map_err(|_| invalid(format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| invalid(format!("gid {gid} out of range")))?;
    let mtime = match &pax.mtime {
        Some(v) => parse_pax_time(v).ok_or_else(|| invalid("PAX mtime".into()))?,
        None => {
            let secs = header.mtime().map_err(|e| invalid(format!("mtime: {e}")))?;
            (
                i64::try_from(secs).map_err(|_| invalid("mtime out of range".into()))?,
                0,
            )
        }
    };
    let atime = match &pax.atime {
        Some(v) => parse_pax_time(v).ok_or_else(|| invalid("PAX atime".into()))?,
        None => mtime,
    };
    let xattrs = pax
        .xattrs
        .iter()
        .filter(|(name, _)| !name.is_empty() && !is_overlay_xattr(name))
        .cloned()
        .collect();
    Ok(Meta {
        mode: mode & 0o7777,
        uid,
        gid,
        atime,
        mtime,
        xattrs,
    })
}

fn device_number(header: &tar::Header, entry: &str) -> Result<u64, LayerError> {
    let invalid = |what: &str, e: io::Error| LayerError::InvalidHeader {
        entry: entry.to_string(),
        reason: format!("device {what}: {e}"),
    };
    let major = header
        .device_major()
        .map_err(|e| invalid("major", e))?
        .unwrap_or(0);
    let minor = header
        .device_minor()
        .map_err(|e| invalid("minor", e))?
        .unwrap_or(0);
    Ok(nix::sys::stat::makedev(u64::from(major), u64::from(minor)))
}

/// Parses a PAX time (`<seconds>[.<fraction>]`, maybe negative) into seconds
/// and nanoseconds.
pub(crate) fn parse_pax_time(value: &[u8]) -> Option<(i64, i64)> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let negative = secs.starts_with('-');
    let mut secs: i64 = secs.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain("000000000".chars()).take(9).collect();
    let mut nanos: i64 = digits.parse().ok()?;
    if negative && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some((secs, nanos))
}

fn timespec((secs, nanos): (i64, i64)) -> TimeSpec {
    TimeSpec::new(secs, nanos)
}

fn is_dir(st: &FileStat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Why an entry below `st`, which this same layer wrote, is refused.
fn parent_reason(st: &FileStat) -> &'static str {
    if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        "a parent directory is a symlink in this layer"
    } else {
        "a parent directory is not a directory in this layer"
    }
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub(crate) fn lstat_at(dir: &File, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the directory `name` in `dir`; a symlink fails (`ELOOP`/`ENOTDIR`).
pub(crate) fn open_dir_at(dir: &File, name: &OsStr) -> Result<File, Errno> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
}

/// The names in a directory, without `.` and `..`, sorted for a stable order.
pub(crate) fn list_dir(dir: &File) -> Result<Vec<OsString>, Errno> {
    let mut d = nix::dir::Dir::openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut names = Vec::new();
    for entry in d.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes `name` in `dir`, recursively for a directory, never following a
/// symlink (a symlink is removed, not its target).
pub(crate) fn remove_all_at(dir: &File, name: &OsStr) -> Result<(), Errno> {
    match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => return Ok(()),
        Err(Errno::EISDIR) => {}
        Err(e) => return Err(e),
    }
    let sub = match open_dir_at(dir, name) {
        Ok(sub) => sub,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    for child in list_dir(&sub)? {
        remove_all_at(&sub, &child)?;
    }
    drop(sub);
    match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relpath_normalizes_and_refuses_dotdot() {
        assert_eq!(
            RelPath::parse(b"/etc//x/./y/").unwrap().as_path(),
            Path::new("etc/x/y")
        );
        assert!(RelPath::parse(b"./").unwrap().is_root());
        assert!(RelPath::parse(b"a/../b").is_err());
        assert!(RelPath::parse(b"..").is_err());
        let p = RelPath::parse(b"a/b/c").unwrap();
        let (parent, name) = p.split().unwrap();
        assert_eq!(parent.as_path(), Path::new("a/b"));
        assert_eq!(name, "c");
        assert!(RelPath::root().split().is_none());
    }

    #[test]
    fn pax_times_parse_with_fractions_and_signs() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(
            parse_pax_time(b"1700000000.5"),
            Some((1_700_000_000, 500_000_000))
        );
        assert_eq!(parse_pax_time(b"12.123456789123"), Some((12, 123_456_789)));
        assert_eq!(parse_pax_time(b"-1.25"), Some((-2, 750_000_000)));
        assert_eq!(parse_pax_time(b"x"), None);
        assert_eq!(parse_pax_time(b"1.2e3"), None);
    }
}
