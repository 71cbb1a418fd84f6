//! Paths inside a root directory: symlinks are resolved as if the root were
//! `/` (containerd's `fs.RootPath`), so that no path ever leads out of it.
//!
//! A [`Tree`] is a host directory seen as a filesystem root. Paths inside it
//! are [`PathBuf`]s relative to the root (the empty path is the root), with no
//! `.`, `..` or symlink components once resolved. For a build context the
//! tree also hides what `.dockerignore` excludes, since BuildKit never sends
//! those files, and refuses links that point out of it (a context is a host
//! directory: `/etc` in one of its links means the host's `/etc`).

use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::path::{Component, Path, PathBuf};

use frontend::dockerignore::PatternMatcher;

/// Linux's own limit on symlinks followed in one lookup is 40; BuildKit
/// allows 255. Either way a loop ends in an error rather than a hang.
const MAX_LINKS: usize = 255;

/// What a symlink that points above the root means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// `..` stops at the root and absolute targets start from it, as for `/`
    /// of a real filesystem: an image or a stage.
    Clamp,
    /// Absolute targets and `..` above the root are errors: a build context.
    Reject,
    /// Absolute targets start from the root, `..` above it is an error: an
    /// archive's extraction directory, as BuildKit treats it.
    Archive,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ResolveError {
    #[error("symlink {} points outside the root ({})", .link.display(), .target.display())]
    Escapes { link: PathBuf, target: PathBuf },
    #[error("too many levels of symbolic links resolving {}", .path.display())]
    Loop { path: PathBuf },
    #[error("stat {}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A host directory seen as the root of a filesystem.
#[derive(Clone, Copy)]
pub(crate) struct Tree<'a> {
    pub(super) host: &'a Path,
    pub(super) ignore: Option<&'a PatternMatcher>,
    pub(super) escape: Escape,
}

/// The `/`-separated form of a relative path, for pattern matching.
pub(crate) fn slash_str(rel: &Path) -> String {
    rel.to_string_lossy().into_owned()
}

/// `/` + the relative path, for messages.
pub(super) fn display_abs(rel: &Path) -> String {
    format!("/{}", rel.to_string_lossy())
}

/// The components of a path given in a Dockerfile or a link, without the
/// root, `.` or empty parts; `..` is kept for the resolver to apply.
pub(crate) fn components(path: &Path) -> Vec<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

impl<'a> Tree<'a> {
    pub(crate) fn new(host: &'a Path, ignore: Option<&'a PatternMatcher>, escape: Escape) -> Self {
        Self {
            host,
            ignore,
            escape,
        }
    }

    pub(crate) fn host_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.host.to_path_buf()
        } else {
            self.host.join(rel)
        }
    }

    /// Whether `.dockerignore` leaves `rel` in the context. An excluded
    /// directory is still there when an exception may re-include something
    /// inside it (BuildKit sends it for the sake of those entries).
    pub(super) fn visible(&self, rel: &Path, is_dir: bool) -> bool {
        let Some(ignore) = self.ignore else {
            return true;
        };
        if rel.as_os_str().is_empty() {
            return true;
        }
        let rel = slash_str(rel);
        !ignore.matches(&rel) || (is_dir && ignore.dir_may_contain_included(&rel))
    }

    /// `lstat` of `rel`, or `None` when it does not exist or is ignored.
    pub(crate) fn lstat(&self, rel: &Path) -> Result<Option<Metadata>, ResolveError> {
        // The root may be reached through a magic link (a detached mount's
        // `/proc/self/fd/N`): it is the tree's root, so follow it.
        let meta = if rel.as_os_str().is_empty() {
            self.host.metadata()
        } else {
            self.host_path(rel).symlink_metadata()
        };
        match meta {
            Ok(meta) if self.visible(rel, meta.is_dir()) => Ok(Some(meta)),
            Ok(_) => Ok(None),
            Err(e) if is_missing(&e) => Ok(None),
            Err(source) => Err(ResolveError::Io {
                path: rel.to_path_buf(),
                source,
            }),
        }
    }

    /// Resolves `path` (absolute or relative to the root; components may be
    /// anything) to a path inside the tree. Every symlink on the way is
    /// followed inside the tree, the last component's only when
    /// `follow_last`. Components from the first missing one on are kept as
    /// written (with `..` applied lexically), so the result may not exist.
    pub(crate) fn resolve(&self, path: &Path, follow_last: bool) -> Result<PathBuf, ResolveError> {
        let mut todo: Vec<OsString> = components(path);
        todo.reverse();
        let mut done = PathBuf::new();
        let mut links = 0usize;
        let mut missing = false;
        let mut via_link: Option<(PathBuf, PathBuf)> = None;
        while let Some(part) = todo.pop() {
            if part == ".." {
                if !done.pop() && self.escape != Escape::Clamp {
                    if let Some((link, target)) = via_link.take() {
                        return Err(ResolveError::Escapes { link, target });
                    }
                }
                continue;
            }
            let candidate = done.join(&part);
            if missing {
                done = candidate;
                continue;
            }
            let last = todo.is_empty();
            if last && !follow_last {
                done = candidate;
                break;
            }
            let meta = match self.lstat(&candidate)? {
                Some(meta) => meta,
                None => {
                    missing = true;
                    done = candidate;
                    continue;
                }
            };
            if !meta.file_type().is_symlink() {
                done = candidate;
                continue;
            }
            links += 1;
            if links > MAX_LINKS {
                return Err(ResolveError::Loop {
                    path: path.to_path_buf(),
                });
            }
            let target = std::fs::read_link(self.host_path(&candidate)).map_err(|source| {
                ResolveError::Io {
                    path: candidate.clone(),
                    source,
                }
            })?;
            if target.is_absolute() {
                if self.escape == Escape::Reject {
                    return Err(ResolveError::Escapes {
                        link: candidate,
                        target,
                    });
                }
                done = PathBuf::new();
            }
            let mut parts = components(&target);
            parts.reverse();
            todo.extend(parts);
            via_link = Some((candidate, target));
        }
        Ok(done)
    }
}

/// Errors that mean "there is nothing at this path".
pub(crate) fn is_missing(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::ENAMETOOLONG)
    ) || e.kind() == io::ErrorKind::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("/usr/lib", root.join("abs")).unwrap();
        symlink("../../../../usr", root.join("usr/lib/up")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let tree = Tree::new(root, None, Escape::Clamp);
        assert_eq!(
            tree.resolve(Path::new("/abs/x"), true).unwrap(),
            Path::new("usr/lib/x")
        );
        assert_eq!(
            tree.resolve(Path::new("/usr/lib/up/lib"), true).unwrap(),
            Path::new("usr/lib")
        );
        assert_eq!(
            tree.resolve(Path::new("/abs"), false).unwrap(),
            Path::new("abs")
        );
        assert!(matches!(
            tree.resolve(Path::new("/loop1"), true),
            Err(ResolveError::Loop { .. })
        ));
        let strict = Tree::new(root, None, Escape::Reject);
        assert!(matches!(
            strict.resolve(Path::new("/abs/x"), true),
            Err(ResolveError::Escapes { .. })
        ));
        assert!(matches!(
            strict.resolve(Path::new("/usr/lib/up"), true),
            Err(ResolveError::Escapes { .. })
        ));
        // A link that climbs but stays inside is fine.
        symlink("../lib", root.join("usr/lib/same")).unwrap();
        assert_eq!(
            strict.resolve(Path::new("/usr/lib/same"), true).unwrap(),
            Path::new("usr/lib")
        );
    }

    #[test]
    fn ignored_paths_do_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("keep")).unwrap();
        fs::write(root.join("keep/secret"), "x").unwrap();
        fs::write(root.join("keep/ok"), "x").unwrap();
        let ignore = PatternMatcher::new(["keep/secret"]).unwrap();
        let tree = Tree::new(root, Some(&ignore), Escape::Reject);
        assert!(tree.lstat(Path::new("keep/secret")).unwrap().is_none());
        assert!(tree.lstat(Path::new("keep/ok")).unwrap().is_some());
    }
}
