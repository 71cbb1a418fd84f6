//! COPY and ADD with Docker's rules, applied to plain directories.
//!
//! [`apply_copy`] runs one [`CopyOp`] of the build graph: it reads its
//! sources (paths in the context, a stage or an image, heredocs, URLs) and
//! writes them under a directory that stands for `/` of the target. The
//! caller (the solver) provides the directories: an overlay's merged view
//! whose upper directory becomes the new layer, or an empty directory for
//! `--link`. Nothing here mounts anything.
//!
//! The rules are BuildKit's (`dockerfile2llb` plus `fsutil/copy`):
//!
//! - Every path resolves inside its root: links in the source and in the
//!   destination are followed as if the root were `/`, so a planted
//!   `/app -> /etc` writes to `<dest_root>/etc`. A link in the build context
//!   that points outside it is copied as a link when it sits inside a copied
//!   directory, and is an error (`path escapes the build context`) when a
//!   source path has to go through it.
//! - A source that is a link is followed (its target's content is copied
//!   under the source's name); links inside a copied directory are copied as
//!   links. Hard links within one copy stay hard links.
//! - Wildcards are Go's `filepath.Match` per component; a pattern that
//!   matches nothing is fine as long as something else was copied, and an
//!   error otherwise. `.dockerignore`d context files do not exist for COPY.
//!   `--exclude` patterns (`.dockerignore` syntax) are relative to each
//!   source.
//! - The destination is a directory when it ends with `/`, when there are
//!   several sources or matches, or with `--parents`; otherwise it is the
//!   file name, unless it already is a directory. A source directory's
//!   contents are copied, never the directory itself. Missing parents are
//!   created (mode 0755 or the `--chmod` mode, owned by the `--chown` user or
//!   root); existing directories keep their owner and mode.
//! - Owners: context files become 0:0, files from a stage or image keep
//!   theirs, `--chown` overrides both. Modes (set-id bits included) are kept
//!   unless `--chmod`. Times are kept, clamped to `SOURCE_DATE_EPOCH`. Xattrs
//!   are kept for stages and images.
//! - ADD unpacks local tar archives (detected by content) unless
//!   `--unpack=false`, downloads URLs (mode 0600, time from
//!   `Last-Modified`) without unpacking them unless `--unpack=true`, and
//!   verifies `--checksum` before writing anything.

mod archive;
mod chmod;
mod chown;
pub(crate) mod fetch;
#[cfg(test)]
mod parallel_tests;
mod pool;
pub mod remote;
pub(crate) mod resolve;
mod tree;
pub(crate) mod wildcard;

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use frontend::dockerignore::{DockerIgnoreError, PatternMatcher};
use frontend::graph::{CopyOp, CopySource};

pub use chown::ChownError;
pub use wildcard::BadPattern;

use chmod::ModeChange;
use resolve::{Escape, Tree, components, display_abs};
use tree::{Source, Stamp, Writer};

/// Where a COPY/ADD reads from and writes to.
pub struct CopyContext<'a> {
    /// Directory acting as `/` of the target filesystem: the merged view of
    /// an overlay whose upper directory becomes the new layer, or an empty
    /// directory for `--link`.
    pub dest_root: &'a Path,
    /// `/` whose `/etc/passwd` and `/etc/group` resolve `--chown` names (the
    /// merged parent view; the same as `dest_root` unless `--link`).
    pub lookup_root: &'a Path,
    /// `/` of input slot 1: the context directory, or a read-only view of a
    /// stage or image. Required when the op has path sources.
    pub src_root: Option<&'a Path>,
    /// Whether `src_root` is a build context (a host directory): its files
    /// become owned by root, xattrs are not copied, and links pointing out
    /// of it are errors. False for a stage or an image, whose owners and
    /// xattrs are kept and whose absolute links resolve inside it.
    pub src_is_context: bool,
    /// The build context's `.dockerignore` (None for stages and images):
    /// what it excludes does not exist for COPY.
    pub src_ignore: Option<&'a PatternMatcher>,
    /// WORKDIR of the step; the op's destination is already absolute.
    pub cwd: &'a str,
    /// Times are clamped to this (and created entries get it) when set.
    pub source_date_epoch: Option<i64>,
    /// Aborts long copies and downloads.
    pub cancel: &'a crate::sandbox::CancelHandle,
    /// When the step's cache key was computed from what remote sources
    /// were then: in source order, each URL (without `--checksum`) with
    /// what it served or, for a git source, the commit its reference
    /// named. The step must find the same now ([`CopyError::UrlChanged`]
    /// otherwise), so that a result is never stored under the key of other
    /// content. Empty otherwise.
    pub downloads: &'a [(String, Pinned)],
}

/// What a remote source of an ADD was when the step's cache key was
/// computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// A URL's content, by its sha256.
    Content(cache::Digest),
    /// The commit a git source's reference (or its HEAD) named.
    Commit(String),
}

/// What a copy wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files (copied, downloaded, unpacked or hard-linked) and
    /// special files.
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Why a COPY or ADD failed. On error the destination may be half-written;
/// the caller discards the whole layer.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{}", not_found_message(.path, *.context))]
    NotFound {
        /// The source as written (relative to the context or stage root).
        path: String,
        context: bool,
    },
    #[error("no source files were specified: nothing matches {}", patterns.join(", "))]
    NoMatch { patterns: Vec<String> },
    #[error("{}", escape_message(.path, .link, .target, *.context))]
    Escapes {
        path: String,
        link: String,
        target: String,
        context: bool,
    },
    #[error("invalid source pattern")]
    BadPattern(#[from] BadPattern),
    #[error("invalid --exclude pattern")]
    Exclude(#[source] DockerIgnoreError),
    #[error("{reason}")]
    InvalidChmod { reason: String },
    #[error(transparent)]
    Chown(#[from] ChownError),
    #[error("cannot copy to non-directory: {path}")]
    NotADirectory { path: String },
    #[error("cannot replace directory {path} with a file")]
    ReplaceDirectory { path: String },
    #[error("the op has path sources but no source filesystem was given")]
    NoSourceRoot,
    #[error("git source {url}: {reason}")]
    Git { url: String, reason: String },
    #[error("checksum of {url}: {reason}")]
    Checksum { url: String, reason: String },
    #[error("digest mismatch for {url}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "the content of {url} changed while the build ran (its cache key was computed from what it served earlier); build again"
    )]
    UrlChanged { url: String },
    #[error("checksum requires HTTP(S) or Git sources")]
    ChecksumNeedsUrl,
    #[error("download {url}")]
    Download {
        url: String,
        #[source]
        source: Box<ureq::Error>,
    },
    #[error("download {url}: server answered {status} {reason}")]
    HttpStatus {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("load trusted TLS certificates from {path}")]
    TlsRoots {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("extract archive {archive}: {reason}")]
    Archive { archive: String, reason: String },
    #[error("extract archive {archive}: {what}")]
    ArchiveIo {
        archive: String,
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("copy cancelled")]
    Cancelled,
}

fn not_found_message(path: &str, context: bool) -> String {
    let place = if context {
        "build context or excluded by .dockerignore"
    } else {
        "source stage or image"
    };
    format!("file not found in {place}: stat {path}: no such file or directory")
}

fn escape_message(path: &str, link: &str, target: &str, context: bool) -> String {
    let root = if context {
        "the build context"
    } else {
        "the source filesystem"
    };
    format!("path escapes {root}: {path} goes through symlink {link} -> {target}")
}

impl CopyError {
    /// Whether this is a missing source (a user error rather than a fault).
    pub fn is_not_found(&self) -> bool {
        matches!(self, CopyError::NotFound { .. } | CopyError::NoMatch { .. })
    }
}

/// One thing to write, gathered before anything is written.
enum Item<'o> {
    /// A path from the source root.
    Fs {
        /// The source as written and matched (wildcards filled in).
        written: Vec<OsString>,
        /// Where it is, links followed.
        real: PathBuf,
        meta: Metadata,
        /// With `--parents`: the part of `written` kept under the
        /// destination.
        keep: Option<usize>,
    },
    Inline {
        name: &'o str,
        content: &'o str,
    },
    Download {
        url: &'o str,
        name: &'o str,
        download: fetch::Download,
    },
}

fn written_display(written: &[OsString]) -> String {
    let path: PathBuf = written.iter().collect();
    display_abs(&path)
}

/// Runs one COPY or ADD. See the module documentation for the rules.
pub fn apply_copy(op: &CopyOp, cx: &CopyContext<'_>) -> Result<CopyStats, CopyError> {
    apply_copy_with(op, cx, pool::worker_count())
}

/// [`apply_copy`] with `workers` threads copying regular files (0: none).
fn apply_copy_with(
    op: &CopyOp,
    cx: &CopyContext<'_>,
    workers: usize,
) -> Result<CopyStats, CopyError> {
    let mode = op
        .chmod
        .as_ref()
        .map(ModeChange::new)
        .transpose()
        .map_err(|reason| CopyError::InvalidChmod { reason })?;
    let chown = op
        .chown
        .as_deref()
        .map(|spec| chown::resolve(spec, cx.lookup_root))
        .transpose()?;
    let exclude = if op.exclude.is_empty() {
        None
    } else {
        Some(PatternMatcher::new(op.exclude.iter()).map_err(CopyError::Exclude)?)
    };
    if op.checksum.is_some()
        && op
            .sources
            .iter()
            .any(|s| !matches!(s, CopySource::Url { .. } | CopySource::Git { .. }))
    {
        return Err(CopyError::ChecksumNeedsUrl);
    }
    let source = cx.src_root.map(|root| Source {
        tree: Tree::new(
            root,
            cx.src_ignore,
            if cx.src_is_context {
                Escape::Reject
            } else {
                Escape::Clamp
            },
        ),
        context: cx.src_is_context,
        exclude: exclude.as_ref(),
    });
    let mut writer = Writer::new(
        cx.dest_root,
        chown,
        mode,
        cx.source_date_epoch,
        cx.cancel,
        workers,
    );

    // Everything is found (and downloaded) first, so that a missing source
    // or a bad download leaves the destination untouched.
    let mut items = Vec::new();
    let mut unmatched = Vec::new();
    let mut fetcher = None;
    let mut urls = 0;
    for src in &op.sources {
        writer.check_cancel()?;
        match src {
            CopySource::Path { path, pivot } => {
                let source = source.as_ref().ok_or(CopyError::NoSourceRoot)?;
                let keep_from = if op.parents {
                    Some(
                        pivot
                            .as_deref()
                            .map_or(0, |p| components(Path::new(p)).len()),
                    )
                } else {
                    None
                };
                let found = expand(source, path, keep_from)?;
                if found.is_empty() {
                    unmatched.push(path.trim_start_matches('/').to_owned());
                }
                items.extend(found);
            }
            CopySource::Url { url, filename } => {
                if fetcher.is_none() {
                    let tls = op.sources.iter().any(
                        |s| matches!(s, CopySource::Url { url, .. } if url.starts_with("https://")),
                    );
                    fetcher = Some(fetch::Fetcher::new(tls)?);
                }
                let fetcher = fetcher.as_ref().expect("just set");
                // The digest the key was computed from (never with a
                // `--checksum`, which keys the step by itself).
                let keyed = match cx.downloads.get(urls) {
                    Some((keyed_url, Pinned::Content(digest)))
                        if keyed_url == url && op.checksum.is_none() =>
                    {
                        Some(digest)
                    }
                    _ => None,
                };
                urls += 1;
                let download = match keyed {
                    Some(digest) => fetcher.fetch_keyed(url, digest, cx.cancel)?,
                    None => fetcher.fetch(url, op.checksum.as_deref(), cx.cancel)?,
                };
                items.push(Item::Download {
                    url,
                    name: filename,
                    download,
                });
            }
            CopySource::Git { url } => {
                if op.sources.len() != 1 {
                    return Err(CopyError::Git {
                        url: url.clone(),
                        reason: "a git repository must be the only source of an ADD".to_owned(),
                    });
                }
                return add_git(op, url, cx);
            }
            CopySource::Inline { name, content } => items.push(Item::Inline { name, content }),
        }
    }
    if items.is_empty() && !unmatched.is_empty() {
        return Err(CopyError::NoMatch {
            patterns: unmatched,
        });
    }

    let dest: PathBuf = components(Path::new(&op.dest)).into_iter().collect();
    let dest_is_dir =
        op.dest.ends_with('/') || op.sources.len() > 1 || items.len() > 1 || op.parents;
    for item in items {
        writer.check_cancel()?;
        let written = write_item(&mut writer, op, source.as_ref(), item, &dest, dest_is_dir);
        // The item's file copies end before the next item looks at the
        // target.
        writer.settle(written)?;
    }
    writer.finish_dirs()?;
    Ok(writer.stats)
}

/// `ADD <git url> DEST`: a checkout of the repository (without `.git`
/// unless `--keep-git-dir`) copied like a context directory.
fn add_git(op: &CopyOp, url: &str, cx: &CopyContext<'_>) -> Result<CopyStats, CopyError> {
    let tmp = tempfile::Builder::new()
        .prefix("builder-git-")
        .tempdir()
        .map_err(|source| CopyError::Io {
            what: format!("create a temp directory to clone {url}"),
            source,
        })?;
    let checkout = tmp.path().join("checkout");
    let keyed = cx
        .downloads
        .iter()
        .find_map(|(keyed_url, pinned)| match pinned {
            Pinned::Commit(commit) if keyed_url == url => Some(commit.as_str()),
            _ => None,
        });
    let root = remote::git_checkout(
        url,
        &checkout,
        op.keep_git_dir,
        op.checksum.as_deref(),
        keyed,
        cx.cancel,
    )?;
    if cx.cancel.is_cancelled() {
        return Err(CopyError::Cancelled);
    }
    let mut dir_op = op.clone();
    dir_op.sources = vec![CopySource::Path {
        path: "/".to_owned(),
        pivot: None,
    }];
    dir_op.checksum = None;
    dir_op.parents = false;
    dir_op.unpack = Some(false);
    let dir_cx = CopyContext {
        src_root: Some(&root),
        src_is_context: true,
        src_ignore: None,
        ..*cx
    };
    apply_copy(&dir_op, &dir_cx)
}

/// Finds the entries a source path names: one for a plain path (an error if
/// it does not exist), every match for a wildcard pattern. `keep_from` is
/// set with `--parents`: how many leading components are dropped.
fn expand<'o>(
    source: &Source<'_>,
    path: &str,
    keep_from: Option<usize>,
) -> Result<Vec<Item<'o>>, CopyError> {
    let (prefix, patterns) = wildcard::split(path)?;
    let prefix: Vec<OsString> = prefix.into_iter().map(OsString::from).collect();
    let prefix_path: PathBuf = prefix.iter().collect();
    let mut found = Vec::new();
    if patterns.is_empty() {
        let item = follow(source, prefix, &prefix_path, keep_from)?;
        found.push(item);
        return Ok(found);
    }
    let base = source
        .tree
        .resolve(&prefix_path, true)
        .map_err(|e| source.resolve_error(path, e))?;
    let is_dir = source
        .tree
        .lstat(&base)
        .map_err(|e| source.resolve_error(path, e))?
        .is_some_and(|m| m.is_dir());
    if !is_dir {
        return Ok(found);
    }
    let mut matches = Vec::new();
    walk(
        source,
        &base,
        &mut prefix.clone(),
        &patterns,
        0,
        keep_from.is_some(),
        &mut matches,
    )?;
    let mut seen = BTreeSet::new();
    for (written, entry) in matches {
        if !seen.insert(written.clone()) {
            continue;
        }
        found.push(follow(source, written, &entry, keep_from)?);
    }
    Ok(found)
}

/// Follows a found entry's links inside the source root and stats it.
fn follow<'o>(
    source: &Source<'_>,
    written: Vec<OsString>,
    entry: &Path,
    keep_from: Option<usize>,
) -> Result<Item<'o>, CopyError> {
    let shown = written_display(&written);
    let real = source
        .tree
        .resolve(entry, true)
        .map_err(|e| source.resolve_error(&shown, e))?;
    let meta = source
        .tree
        .lstat(&real)
        .map_err(|e| source.resolve_error(&shown, e))?
        .ok_or_else(|| source.not_found(&shown))?;
    Ok(Item::Fs {
        written,
        real,
        meta,
        keep: keep_from,
    })
}

/// Matches `patterns[j..]` below the source directory `dir`, depth first in
/// byte order of names. Directories are only entered when they are real
/// directories, as Go's `filepath.Walk` does. With `--parents`, a `**`
/// component spans any number of directories.
fn walk(
    source: &Source<'_>,
    dir: &Path,
    written: &mut Vec<OsString>,
    patterns: &[wildcard::ComponentPattern],
    j: usize,
    double_star: bool,
    out: &mut Vec<(Vec<OsString>, PathBuf)>,
) -> Result<(), CopyError> {
    let pattern = &patterns[j];
    let last = j + 1 == patterns.len();
    let mut names: Vec<OsString> = std::fs::read_dir(source.tree.host_path(dir))
        .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
        .map_err(|e| CopyError::Io {
            what: format!("read source directory {}", display_abs(dir)),
            source: e,
        })?;
    names.sort();
    let spans = double_star && pattern.is_double_star() && !last;
    if spans {
        // Zero directories: the rest of the pattern applies here.
        walk(source, dir, written, patterns, j + 1, double_star, out)?;
    }
    for name in names {
        let entry = dir.join(&name);
        let Some(meta) = source
            .tree
            .lstat(&entry)
            .map_err(|e| source.resolve_error(&display_abs(&entry), e))?
        else {
            continue;
        };
        if spans {
            if meta.is_dir() {
                written.push(name.clone());
                walk(source, &entry, written, patterns, j, double_star, out)?;
                written.pop();
            }
            continue;
        }
        if !pattern.matches(&name.to_string_lossy()) {
            continue;
        }
        written.push(name.clone());
        if last {
            out.push((written.clone(), entry));
        } else if meta.is_dir() {
            walk(source, &entry, written, patterns, j + 1, double_star, out)?;
        }
        written.pop();
    }
    Ok(())
}

/// The target of a non-directory item named `name`.
fn file_target(
    writer: &mut Writer<'_>,
    dest: &Path,
    dest_is_dir: bool,
    name: &OsStr,
) -> Result<PathBuf, CopyError> {
    if dest_is_dir {
        return Ok(writer.mkdir_p(dest)?.join(name));
    }
    let resolved = writer.resolve_dest(dest)?;
    if resolved.as_os_str().is_empty() {
        return Ok(resolved.join(name));
    }
    match writer.lstat_dest(&resolved)? {
        Some(meta) if meta.is_dir() => Ok(resolved.join(name)),
        _ => {
            let parent = resolved.parent().unwrap_or(Path::new(""));
            let parent = writer.mkdir_p(parent)?;
            Ok(parent.join(resolved.file_name().expect("not the root")))
        }
    }
}

fn open_nofollow(host: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
}

fn write_item(
    writer: &mut Writer<'_>,
    op: &CopyOp,
    source: Option<&Source<'_>>,
    item: Item<'_>,
    dest: &Path,
    dest_is_dir: bool,
) -> Result<(), CopyError> {
    match item {
        Item::Inline { name, content } => {
            let target = file_target(writer, dest, dest_is_dir, OsStr::new(name))?;
            let created = writer.created;
            writer.write_new_file(&target, &mut content.as_bytes(), 0o644, created)
        }
        Item::Download {
            url,
            name,
            mut download,
        } => {
            if op.unpack == Some(true) {
                if let Some(kind) =
                    archive::detect(&mut download.file).map_err(|source| CopyError::Io {
                        what: format!("read download of {url}"),
                        source,
                    })?
                {
                    let dir = writer.mkdir_p(dest)?;
                    return archive::extract(writer, &mut download.file, kind, url, &dir);
                }
            }
            let target = file_target(writer, dest, dest_is_dir, OsStr::new(name))?;
            let mtime = match download.last_modified {
                Some(sec) => writer.clamp(Stamp { sec, nsec: 0 }),
                None => writer.created,
            };
            writer.write_new_file(&target, &mut download.file, 0o600, mtime)
        }
        Item::Fs {
            written,
            real,
            meta,
            keep,
        } => {
            let source = source.ok_or(CopyError::NoSourceRoot)?;
            let shown = written_display(&written);
            if op.add && op.unpack != Some(false) && meta.is_file() {
                let mut file =
                    open_nofollow(&source.tree.host_path(&real)).map_err(|e| CopyError::Io {
                        what: format!("open source {shown}"),
                        source: e,
                    })?;
                if let Some(kind) = archive::detect(&mut file).map_err(|e| CopyError::Io {
                    what: format!("read source {shown}"),
                    source: e,
                })? {
                    let dir = writer.mkdir_p(dest)?;
                    return archive::extract(writer, &mut file, kind, &shown, &dir);
                }
            }
            if let Some(keep_from) = keep {
                return write_with_parents(writer, source, &written, keep_from, &real, &meta, dest);
            }
            let name = written
                .last()
                .cloned()
                .unwrap_or_else(|| OsString::from("/"));
            if meta.is_dir() {
                let dir = if dest_is_dir {
                    writer.mkdir_p(dest)?
                } else {
                    let resolved = writer.resolve_dest(dest)?;
                    match writer.lstat_dest(&resolved)? {
                        Some(m) if !m.is_dir() => {
                            return Err(CopyError::NotADirectory {
                                path: display_abs(&resolved),
                            });
                        }
                        _ => writer.mkdir_p(&resolved)?,
                    }
                };
                return writer.copy_children(source, &real, Path::new(""), &dir);
            }
            let target = file_target(writer, dest, dest_is_dir, &name)?;
            writer.copy_leaf(source, &real, &meta, &target)
        }
    }
}

/// `--parents`: the part of the source path after the pivot is recreated
/// under the destination; the directories on the way get the metadata of
/// the source directories they stand for.
fn write_with_parents(
    writer: &mut Writer<'_>,
    source: &Source<'_>,
    written: &[OsString],
    keep_from: usize,
    real: &Path,
    meta: &Metadata,
    dest: &Path,
) -> Result<(), CopyError> {
    let base = writer.mkdir_p(dest)?;
    let kept = &written[keep_from.min(written.len())..];
    let Some((last, middle)) = kept.split_last() else {
        // The pivot itself: like a plain copy into the destination.
        if meta.is_dir() {
            return writer.copy_children(source, real, Path::new(""), &base);
        }
        return Err(CopyError::NotADirectory {
            path: display_abs(&base),
        });
    };
    let mut at = base;
    for (i, part) in middle.iter().enumerate() {
        let src_dir: PathBuf = written[..keep_from + i + 1].iter().collect();
        let src_meta = source
            .tree
            .resolve(&src_dir, true)
            .ok()
            .and_then(|r| source.tree.lstat(&r).ok().flatten())
            .filter(|m| m.is_dir());
        let (mode, owner, mtime) = match &src_meta {
            Some(m) => {
                use std::os::unix::fs::MetadataExt;
                let owner = match (writer.chown, source.context) {
                    (Some(o), _) => o,
                    (None, true) => chown::Owner::ROOT,
                    (None, false) => chown::Owner {
                        uid: m.uid(),
                        gid: m.gid(),
                    },
                };
                let mut mode = m.mode() & 0o7777;
                if let Some(change) = &writer.mode {
                    mode = change.apply(mode, true);
                }
                let mtime = writer.clamp(Stamp {
                    sec: m.mtime(),
                    nsec: m.mtime_nsec(),
                });
                (mode, owner, mtime)
            }
            None => (
                writer.mode.as_ref().map_or(0o755, |c| c.apply(0o755, true)),
                writer.chown.unwrap_or(chown::Owner::ROOT),
                writer.created,
            ),
        };
        at = writer.ensure_dir_with(&at.join(part), mode, owner, mtime)?;
    }
    let rel_in_source = PathBuf::new();
    if meta.is_dir() {
        // The kept directory is copied itself (with its metadata) and then
        // its contents, as BuildKit's include-pattern copy does.
        return writer.copy_node(source, real, meta, &rel_in_source, &at, last);
    }
    writer.copy_leaf(source, real, meta, &at.join(last))
}
