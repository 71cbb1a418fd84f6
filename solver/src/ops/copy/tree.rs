//! Writing into the target filesystem: directories made on demand, files,
//! links and special files copied with the owners, modes, times and xattrs
//! that COPY gives them.
//!
//! Every target path is first resolved inside the target root, so its
//! directories are real directories there; the entry itself is then created
//! with calls that never follow a link (`O_CREAT|O_EXCL|O_NOFOLLOW`,
//! `symlink`, `link`, `lchown`, `utimensat(AT_SYMLINK_NOFOLLOW)`), and an
//! existing non-directory in its place is removed, never written through
//! (before the entry is made, or, for a regular file, when its exclusive
//! creation finds it there).
//!
//! The walk is sequential and in byte order of names; the copy of each
//! regular file found by a directory walk is a [`FileJob`] that a few worker
//! threads run (see [`super::pool`]), setting its metadata through the open
//! file rather than by path. The resulting tree is the same as a sequential
//! copy's.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::{self, File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use frontend::dockerignore::PatternMatcher;
use nix::sys::stat::{Mode, SFlag, UtimensatFlags, futimens, mknod, utimensat};
use nix::sys::time::TimeSpec;

use super::chmod::ModeChange;
use super::chown::Owner;
use super::pool::Pool;
use super::resolve::{Escape, ResolveError, Tree, display_abs, slash_str};
use super::{CopyError, CopyStats};
use crate::sandbox::CancelHandle;

/// Overlay keeps its own metadata in these namespaces; copied into an upper
/// directory they would forge whiteouts, opacity or redirects.
const OVERLAY_XATTR_PREFIXES: [&str; 2] = ["trusted.overlay.", "user.overlay."];

/// Seconds and nanoseconds since the epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) sec: i64,
    pub(super) nsec: i64,
}

impl Stamp {
    pub(super) fn now() -> Stamp {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Stamp {
                sec: d.as_secs() as i64,
                nsec: i64::from(d.subsec_nanos()),
            },
            Err(_) => Stamp { sec: 0, nsec: 0 },
        }
    }

    fn spec(self) -> TimeSpec {
        TimeSpec::new(self.sec, self.nsec)
    }
}

/// The side files are copied from.
pub(super) struct Source<'a> {
    pub(super) tree: Tree<'a>,
    /// A build context: owners become root, xattrs are not copied.
    pub(super) context: bool,
    pub(super) exclude: Option<&'a PatternMatcher>,
}

impl Source<'_> {
    /// The error for a source path that does not exist (or is hidden).
    pub(super) fn not_found(&self, written: &str) -> CopyError {
        CopyError::NotFound {
            path: written.trim_start_matches('/').to_owned(),
            context: self.context,
        }
    }

    pub(super) fn resolve_error(&self, written: &str, e: ResolveError) -> CopyError {
        match e {
            ResolveError::Escapes { link, target } => CopyError::Escapes {
                path: written.to_owned(),
                link: display_abs(&link),
                target: target.display().to_string(),
                context: self.context,
            },
            ResolveError::Loop { .. } => CopyError::Io {
                what: format!("resolve source {written}"),
                source: io::Error::from_raw_os_error(libc::ELOOP),
            },
            ResolveError::Io { path, source } => CopyError::Io {
                what: format!("stat source {}", display_abs(&path)),
                source,
            },
        }
    }
}

/// Writes into the target root and keeps what is needed across entries.
pub(super) struct Writer<'a> {
    pub(super) dest: Tree<'a>,
    pub(super) chown: Option<Owner>,
    pub(super) mode: Option<ModeChange>,
    pub(super) epoch: Option<i64>,
    pub(super) cancel: &'a CancelHandle,
    pub(super) stats: CopyStats,
    /// Time given to what the copy creates without a source (parents,
    /// heredocs): `SOURCE_DATE_EPOCH` when set, so that builds reproduce.
    pub(super) created: Stamp,
    /// First target of each multiply-linked source file, to link again.
    links: HashMap<(u64, u64), PathBuf>,
    /// Directory times, applied last: writing entries changes them.
    dir_times: Vec<(PathBuf, Stamp, Stamp)>,
    /// How many threads copy regular files; 0 copies them on this one.
    workers: usize,
    /// The workers, started at the second regular file, so that a copy of
    /// one file starts no thread.
    pool: Option<Pool>,
    /// Regular files handed out so far: the sequence number of the next.
    file_jobs: u64,
    /// Host paths that queued jobs create: looking at one of them (or
    /// replacing it) waits for the jobs first.
    pending: HashSet<PathBuf>,
}

impl<'a> Writer<'a> {
    pub(super) fn new(
        dest_root: &'a Path,
        chown: Option<Owner>,
        mode: Option<ModeChange>,
        epoch: Option<i64>,
        cancel: &'a CancelHandle,
        workers: usize,
    ) -> Self {
        let created = match epoch {
            Some(sec) => Stamp { sec, nsec: 0 },
            None => Stamp::now(),
        };
        Writer {
            dest: Tree::new(dest_root, None, Escape::Clamp),
            chown,
            mode,
            epoch,
            cancel,
            stats: CopyStats::default(),
            created,
            links: HashMap::new(),
            dir_times: Vec::new(),
            workers,
            pool: None,
            file_jobs: 0,
            pending: HashSet::new(),
        }
    }

    /// Waits for the queued file copies and counts what they wrote; the
    /// error of the earliest one that failed, if any.
    pub(super) fn wait_jobs(&mut self) -> Result<(), CopyError> {
        self.pending.clear();
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let done = pool.wait()?;
        self.stats.files += done.files;
        self.stats.bytes += done.bytes;
        Ok(())
    }

    /// The outcome of writing one item once its file copies are done: an
    /// error among them comes first, being earlier in walk order than
    /// anything the walk itself ran into.
    pub(super) fn settle<T>(&mut self, result: Result<T, CopyError>) -> Result<T, CopyError> {
        self.wait_jobs()?;
        result
    }

    /// The owner a copied entry gets.
    fn owner_of(&self, src: &Source<'_>, meta: &Metadata) -> Owner {
        match (self.chown, src.context) {
            (Some(owner), _) => owner,
            (None, true) => Owner::ROOT,
            (None, false) => Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            },
        }
    }

    /// The mode a copied entry (not a link) gets.
    fn mode_of(&self, meta: &Metadata) -> u32 {
        let mode = meta.mode() & 0o7777;
        match &self.mode {
            Some(change) => change.apply(mode, meta.is_dir()),
            None => mode,
        }
    }

    /// A copied entry's access and modification times.
    fn times_of(&self, meta: &Metadata) -> (Stamp, Stamp) {
        let atime = self.clamp(Stamp {
            sec: meta.atime(),
            nsec: meta.atime_nsec(),
        });
        let mtime = self.clamp(Stamp {
            sec: meta.mtime(),
            nsec: meta.mtime_nsec(),
        });
        (atime, mtime)
    }

    /// Copies a regular file: here for the first one (or without workers),
    /// else by a worker when `defer`.
    fn run_file_job(&mut self, job: FileJob, defer: bool) -> Result<(), CopyError> {
        let first = job.seq == 0;
        if defer && !first && self.workers > 0 && self.pool.is_none() {
            self.pool = Pool::start(self.workers, self.cancel);
            if self.pool.is_none() {
                self.workers = 0;
            }
        }
        let job = match (&self.pool, defer) {
            (Some(pool), true) => {
                let dst = job.dst.clone();
                match pool.push(job) {
                    Ok(()) => {
                        self.pending.insert(dst);
                        return Ok(());
                    }
                    Err(job) => {
                        // An earlier file failed: its error is the copy's.
                        self.wait_jobs()?;
                        job
                    }
                }
            }
            _ => job,
        };
        let bytes = job.run()?;
        self.stats.files += 1;
        self.stats.bytes += bytes;
        Ok(())
    }

    pub(super) fn check_cancel(&self) -> Result<(), CopyError> {
        if self.cancel.is_cancelled() {
            Err(CopyError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// A source time, clamped to `SOURCE_DATE_EPOCH`.
    pub(super) fn clamp(&self, stamp: Stamp) -> Stamp {
        match self.epoch {
            Some(epoch) if stamp.sec >= epoch => Stamp {
                sec: epoch,
                nsec: 0,
            },
            _ => stamp,
        }
    }

    fn dest_error(&self, rel: &Path, e: ResolveError) -> CopyError {
        match e {
            ResolveError::Io { path, source } => CopyError::Io {
                what: format!("stat destination {}", display_abs(&path)),
                source,
            },
            other => CopyError::Io {
                what: format!("resolve destination {}", display_abs(rel)),
                source: io::Error::other(other),
            },
        }
    }

    /// Resolves a destination path inside the target, following every link.
    pub(super) fn resolve_dest(&mut self, path: &Path) -> Result<PathBuf, CopyError> {
        // The lookups on the way may pass a file a job is still creating.
        if !self.pending.is_empty() {
            self.wait_jobs()?;
        }
        self.dest
            .resolve(path, true)
            .map_err(|e| self.dest_error(path, e))
    }

    pub(super) fn lstat_dest(&mut self, rel: &Path) -> Result<Option<Metadata>, CopyError> {
        if !self.pending.is_empty() && self.pending.contains(&self.dest.host_path(rel)) {
            self.wait_jobs()?;
        }
        self.dest.lstat(rel).map_err(|e| self.dest_error(rel, e))
    }

    /// Makes `path` a directory (with its parents), resolving links inside
    /// the target; returns the resolved path. Created directories are owned
    /// by the `--chown` user (else root) and get mode 0755, or the `--chmod`
    /// mode, as BuildKit does.
    pub(super) fn mkdir_p(&mut self, path: &Path) -> Result<PathBuf, CopyError> {
        let resolved = self.resolve_dest(path)?;
        let mut cur = PathBuf::new();
        for part in resolved.components() {
            cur.push(part);
            match self.lstat_dest(&cur)? {
                Some(meta) if meta.is_dir() => continue,
                Some(_) => {
                    return Err(CopyError::NotADirectory {
                        path: display_abs(&cur),
                    });
                }
                None => {
                    let mode = self.mode.as_ref().map_or(0o755, |m| m.apply(0o755, true));
                    let owner = self.chown.unwrap_or(Owner::ROOT);
                    self.make_dir(&cur, mode, owner)?;
                    let host = self.dest.host_path(&cur);
                    self.dir_times.push((host, self.created, self.created));
                }
            }
        }
        Ok(resolved)
    }

    fn make_dir(&mut self, rel: &Path, mode: u32, owner: Owner) -> Result<(), CopyError> {
        let host = self.dest.host_path(rel);
        let what = || format!("create directory {}", display_abs(rel));
        fs::create_dir(&host).map_err(|source| CopyError::Io {
            what: what(),
            source,
        })?;
        std::os::unix::fs::lchown(&host, Some(owner.uid), Some(owner.gid)).map_err(|source| {
            CopyError::Io {
                what: what(),
                source,
            }
        })?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(|source| {
            CopyError::Io {
                what: what(),
                source,
            }
        })?;
        self.stats.directories += 1;
        Ok(())
    }

    /// Removes what is at `rel` so that a non-directory can take its place;
    /// a directory there is an error, as in BuildKit.
    pub(super) fn clear_target(&mut self, rel: &Path) -> Result<(), CopyError> {
        match self.lstat_dest(rel)? {
            None => Ok(()),
            Some(meta) if meta.is_dir() => Err(CopyError::ReplaceDirectory {
                path: display_abs(rel),
            }),
            Some(_) => fs::remove_file(self.dest.host_path(rel)).map_err(|source| CopyError::Io {
                what: format!("replace {}", display_abs(rel)),
                source,
            }),
        }
    }

    /// The directory to merge a source directory into: an existing
    /// directory, or a link to one (inside the target, e.g. `/lib` →
    /// `usr/lib`); `None` when nothing is there yet.
    fn existing_dir(&mut self, rel: &Path) -> Result<Option<PathBuf>, CopyError> {
        match self.lstat_dest(rel)? {
            None => Ok(None),
            Some(meta) if meta.is_dir() => Ok(Some(rel.to_path_buf())),
            Some(meta) if meta.file_type().is_symlink() => {
                let target = self.resolve_dest(rel)?;
                match self.lstat_dest(&target)? {
                    Some(m) if m.is_dir() => Ok(Some(target)),
                    _ => Err(CopyError::NotADirectory {
                        path: display_abs(rel),
                    }),
                }
            }
            Some(_) => Err(CopyError::NotADirectory {
                path: display_abs(rel),
            }),
        }
    }

    /// Copies the entries of the source directory `src_rel` into the target
    /// directory `dest_rel` (which exists and is resolved).
    pub(super) fn copy_children(
        &mut self,
        src: &Source<'_>,
        src_rel: &Path,
        exclude_base: &Path,
        dest_rel: &Path,
    ) -> Result<(), CopyError> {
        let host = src.tree.host_path(src_rel);
        let mut entries: Vec<_> = fs::read_dir(&host)
            .and_then(|rd| {
                rd.map(|e| e.map(|e| e.file_name()))
                    .collect::<Result<Vec<_>, _>>()
            })
            .map_err(|source| CopyError::Io {
                what: format!("read source directory {}", display_abs(src_rel)),
                source,
            })?;
        // Byte order, as Go's directory walks use: the result must not
        // depend on the order the filesystem returns.
        entries.sort();
        for name in entries {
            self.check_cancel()?;
            let child = src_rel.join(&name);
            let Some(meta) = src
                .tree
                .lstat(&child)
                .map_err(|e| src.resolve_error(&display_abs(&child), e))?
            else {
                continue;
            };
            let rel_in_source = exclude_base.join(&name);
            if let Some(exclude) = src.exclude {
                let key = slash_str(&rel_in_source);
                if exclude.matches(&key)
                    && !(meta.is_dir() && exclude.dir_may_contain_included(&key))
                {
                    continue;
                }
            }
            self.copy_node(src, &child, &meta, &rel_in_source, dest_rel, &name)?;
        }
        Ok(())
    }

    /// Copies one source entry (not followed if it is a link) to
    /// `dest_parent/name`; a directory is copied with its contents.
    pub(super) fn copy_node(
        &mut self,
        src: &Source<'_>,
        src_rel: &Path,
        meta: &Metadata,
        rel_in_source: &Path,
        dest_parent: &Path,
        name: &OsStr,
    ) -> Result<(), CopyError> {
        let target = dest_parent.join(name);
        if meta.is_dir() {
            let dir = match self.existing_dir(&target)? {
                Some(existing) => existing,
                None => {
                    let host = self.dest.host_path(&target);
                    // Private until its metadata is set; the mode is fixed
                    // below.
                    fs::create_dir(&host).map_err(|source| CopyError::Io {
                        what: format!("create directory {}", display_abs(&target)),
                        source,
                    })?;
                    self.stats.directories += 1;
                    self.finish(src, src_rel, meta, &target)?;
                    target
                }
            };
            return self.copy_children(src, src_rel, rel_in_source, &dir);
        }
        self.copy_entry(src, src_rel, meta, &target, true)
    }

    /// Copies a non-directory source entry to `target` (resolved parent,
    /// final component not followed), on this thread: a single file needs
    /// no workers.
    pub(super) fn copy_leaf(
        &mut self,
        src: &Source<'_>,
        src_rel: &Path,
        meta: &Metadata,
        target: &Path,
    ) -> Result<(), CopyError> {
        self.copy_entry(src, src_rel, meta, target, false)
    }

    /// [`copy_leaf`](Self::copy_leaf), with a regular file's copy handed
    /// to the workers when `defer`.
    fn copy_entry(
        &mut self,
        src: &Source<'_>,
        src_rel: &Path,
        meta: &Metadata,
        target: &Path,
        defer: bool,
    ) -> Result<(), CopyError> {
        let host_src = src.tree.host_path(src_rel);
        let host_dst = self.dest.host_path(target);
        let io_err = |what: &str| {
            let what = format!("{what} {}", display_abs(target));
            move |source| CopyError::Io { what, source }
        };
        let ft = meta.file_type();
        if ft.is_file() {
            if meta.nlink() > 1 {
                if let Some(first) = self.links.get(&(meta.dev(), meta.ino())).cloned() {
                    if self.pending.contains(&first) {
                        self.wait_jobs()?;
                    }
                    self.clear_target(target)?;
                    fs::hard_link(&first, &host_dst).map_err(io_err("link"))?;
                    self.stats.files += 1;
                    return Ok(());
                }
                self.links
                    .insert((meta.dev(), meta.ino()), host_dst.clone());
            }
            // Two entries of one walk can only meet at a path through a
            // link in the target (`lib/x` and `usr/lib/x` with `lib ->
            // usr/lib`); the later one replaces the earlier, as before.
            if self.pending.contains(&host_dst) {
                self.wait_jobs()?;
            }
            let (atime, mtime) = self.times_of(meta);
            let job = FileJob {
                seq: self.file_jobs,
                src: host_src,
                src_rel: src_rel.to_path_buf(),
                dst: host_dst,
                target: target.to_path_buf(),
                owner: self.owner_of(src, meta),
                mode: self.mode_of(meta),
                xattrs: !src.context,
                atime,
                mtime,
            };
            self.file_jobs += 1;
            return self.run_file_job(job, defer);
        }
        self.clear_target(target)?;
        if ft.is_symlink() {
            let link = fs::read_link(&host_src).map_err(|source| CopyError::Io {
                what: format!("read link {}", display_abs(src_rel)),
                source,
            })?;
            std::os::unix::fs::symlink(&link, &host_dst).map_err(io_err("create symlink"))?;
            self.stats.symlinks += 1;
        } else if ft.is_fifo() {
            nix::unistd::mkfifo(&host_dst, Mode::from_bits_truncate(0o600))
                .map_err(|e| io_err("create fifo")(io::Error::from(e)))?;
            self.stats.files += 1;
        } else if ft.is_char_device() || ft.is_block_device() {
            let kind = if ft.is_char_device() {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            mknod(
                &host_dst,
                kind,
                Mode::from_bits_truncate(0o600),
                meta.rdev(),
            )
            .map_err(|e| io_err("create device")(io::Error::from(e)))?;
            self.stats.files += 1;
        } else {
            // A socket cannot be copied; BuildKit's context transfer turns it
            // into an empty regular file, and so do we.
            create_file(&host_dst).map_err(io_err("create"))?;
            self.stats.files += 1;
        }
        self.finish(src, src_rel, meta, target)
    }

    /// Owner, mode, xattrs and times of a copied entry (other than a
    /// regular file: [`FileJob::run`]), in the order that keeps them: chown
    /// clears set-id bits and file capabilities, so it comes first.
    fn finish(
        &mut self,
        src: &Source<'_>,
        src_rel: &Path,
        meta: &Metadata,
        target: &Path,
    ) -> Result<(), CopyError> {
        let host = self.dest.host_path(target);
        let io_err = |source| CopyError::Io {
            what: format!("set metadata of {}", display_abs(target)),
            source,
        };
        let owner = self.owner_of(src, meta);
        std::os::unix::fs::lchown(&host, Some(owner.uid), Some(owner.gid)).map_err(io_err)?;
        let is_link = meta.file_type().is_symlink();
        if !is_link {
            let mode = self.mode_of(meta);
            fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io_err)?;
        }
        if !src.context {
            copy_xattrs(&src.tree.host_path(src_rel), &host);
        }
        let (atime, mtime) = self.times_of(meta);
        if meta.is_dir() {
            self.dir_times.push((host, atime, mtime));
            Ok(())
        } else {
            set_times(&host, atime, mtime).map_err(io_err)
        }
    }

    /// Writes a file that has no source entry (a heredoc, a download) at
    /// `target`, with `mode` before `--chmod`, the `--chown` owner (else
    /// root) and `mtime`.
    pub(super) fn write_new_file(
        &mut self,
        target: &Path,
        content: &mut dyn io::Read,
        mode: u32,
        mtime: Stamp,
    ) -> Result<(), CopyError> {
        self.clear_target(target)?;
        let host = self.dest.host_path(target);
        let io_err = |what: &'static str| {
            let what = format!("{what} {}", display_abs(target));
            move |source| CopyError::Io { what, source }
        };
        let mut file = create_file(&host).map_err(io_err("create"))?;
        let n = io::copy(content, &mut file).map_err(io_err("write"))?;
        drop(file);
        let owner = self.chown.unwrap_or(Owner::ROOT);
        std::os::unix::fs::lchown(&host, Some(owner.uid), Some(owner.gid))
            .map_err(io_err("set owner of"))?;
        let mode = self.mode.as_ref().map_or(mode, |m| m.apply(mode, false));
        fs::set_permissions(&host, fs::Permissions::from_mode(mode))
            .map_err(io_err("set mode of"))?;
        set_times(&host, mtime, mtime).map_err(io_err("set times of"))?;
        self.stats.files += 1;
        self.stats.bytes += n;
        Ok(())
    }

    /// Makes the directory `rel` (inside an existing, resolved parent) with
    /// the given metadata unless it exists; for archive entries and for the
    /// directories that `--parents` recreates.
    pub(super) fn ensure_dir_with(
        &mut self,
        rel: &Path,
        mode: u32,
        owner: Owner,
        mtime: Stamp,
    ) -> Result<PathBuf, CopyError> {
        if let Some(existing) = self.existing_dir(rel)? {
            return Ok(existing);
        }
        self.make_dir(rel, mode, owner)?;
        self.dir_times
            .push((self.dest.host_path(rel), mtime, mtime));
        Ok(rel.to_path_buf())
    }

    /// Sets the deferred directory times, innermost first.
    pub(super) fn finish_dirs(&mut self) -> Result<(), CopyError> {
        // Creating a file changes its directory's times.
        self.wait_jobs()?;
        // Later entries are deeper or later; applying them in reverse
        // makes sure a parent's time is set after its children's.
        while let Some((host, atime, mtime)) = self.dir_times.pop() {
            set_times(&host, atime, mtime).map_err(|source| CopyError::Io {
                what: format!("set times of {}", host.display()),
                source,
            })?;
        }
        Ok(())
    }
}

/// The copy of one regular file, with everything it needs owned: a worker
/// thread runs it while the walk goes on.
pub(super) struct FileJob {
    /// Position in walk order: the earliest failure is the copy's error.
    pub(super) seq: u64,
    /// Host path of the source file.
    src: PathBuf,
    /// The source inside its tree, for messages.
    src_rel: PathBuf,
    /// Host path of the target.
    dst: PathBuf,
    /// The target inside the destination, for messages.
    target: PathBuf,
    owner: Owner,
    mode: u32,
    /// Whether extended attributes are copied (not from a build context).
    xattrs: bool,
    atime: Stamp,
    mtime: Stamp,
}

impl FileJob {
    pub(super) fn shown_target(&self) -> String {
        display_abs(&self.target)
    }

    /// Creates the target (replacing a non-directory there), copies the
    /// content, then sets owner, mode, xattrs and times through the open
    /// file, in [`Writer::finish`]'s order: each by path would look the
    /// target up again through the overlay. Returns the bytes copied.
    pub(super) fn run(&self) -> Result<u64, CopyError> {
        let io_err = |what: &str| {
            let what = format!("{what} {}", display_abs(&self.target));
            move |source| CopyError::Io { what, source }
        };
        // Most targets are new: creating first spares them the lookup of
        // what is there.
        let created = match create_file(&self.dst) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.replace_existing()?;
                None
            }
            other => Some(other),
        };
        let mut input = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.src)
            .map_err(|source| CopyError::Io {
                what: format!("open source {}", display_abs(&self.src_rel)),
                source,
            })?;
        // A source that cannot be opened is reported before a target that
        // cannot be created, as it always was.
        let mut output = match created {
            Some(result) => result,
            None => create_file(&self.dst),
        }
        .map_err(io_err("create"))?;
        // std uses copy_file_range where it can: no copy through user
        // space, and reflinks on filesystems that have them.
        let n = io::copy(&mut input, &mut output).map_err(io_err("write"))?;
        let meta_err = |source| CopyError::Io {
            what: format!("set metadata of {}", display_abs(&self.target)),
            source,
        };
        std::os::unix::fs::fchown(&output, Some(self.owner.uid), Some(self.owner.gid))
            .map_err(&meta_err)?;
        output
            .set_permissions(fs::Permissions::from_mode(self.mode))
            .map_err(&meta_err)?;
        if self.xattrs {
            copy_file_xattrs(&input, &output);
        }
        futimens(&output, &self.atime.spec(), &self.mtime.spec())
            .map_err(|e| meta_err(io::Error::from(e)))?;
        Ok(n)
    }

    /// Makes room for the target where something exists: a directory is an
    /// error, as in BuildKit; anything else is removed, never written
    /// through.
    fn replace_existing(&self) -> Result<(), CopyError> {
        match fs::symlink_metadata(&self.dst) {
            Ok(meta) if meta.is_dir() => Err(CopyError::ReplaceDirectory {
                path: display_abs(&self.target),
            }),
            Ok(_) => fs::remove_file(&self.dst).map_err(|source| CopyError::Io {
                what: format!("replace {}", display_abs(&self.target)),
                source,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CopyError::Io {
                what: format!("stat destination {}", display_abs(&self.target)),
                source,
            }),
        }
    }
}

/// A new file that must not exist yet and is never reached through a link.
pub(super) fn create_file(host: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
}

/// `utimensat` without following a final link.
pub(super) fn set_times(host: &Path, atime: Stamp, mtime: Stamp) -> io::Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        host,
        &atime.spec(),
        &mtime.spec(),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(io::Error::from)
}

/// Copies extended attributes, leaving out overlay's own. Failures are
/// ignored, as BuildKit does: a filesystem may not support a namespace
/// that the source used.
fn copy_xattrs(src: &Path, dst: &Path) {
    let Ok(names) = xattr::list(src) else {
        return;
    };
    for name in names.filter(|n| is_copied_xattr(n)) {
        if let Ok(Some(value)) = xattr::get(src, &name) {
            let _ = xattr::set(dst, &name, &value);
        }
    }
}

/// [`copy_xattrs`] between open files.
fn copy_file_xattrs(src: &File, dst: &File) {
    use xattr::FileExt;
    let Ok(names) = src.list_xattr() else {
        return;
    };
    for name in names.filter(|n| is_copied_xattr(n)) {
        if let Ok(Some(value)) = src.get_xattr(&name) {
            let _ = dst.set_xattr(&name, &value);
        }
    }
}

/// Whether COPY copies the extended attribute `name`: not overlay's own
/// (nor a name that is not UTF-8, which no namespace has).
fn is_copied_xattr(name: &OsStr) -> bool {
    name.to_str()
        .is_some_and(|text| !OVERLAY_XATTR_PREFIXES.iter().any(|p| text.starts_with(p)))
}
