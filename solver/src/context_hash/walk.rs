//! The parallel walk of a selected directory: every entry COPY would copy
//! from it, with `.dockerignore` and `--exclude` applied as
//! `ops::copy`'s `copy_children` applies them.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use frontend::dockerignore::{MatchState, PatternMatcher};
use rayon::prelude::*;

use super::ContextHashError;
use crate::ops::copy::resolve::is_missing;

/// One entry to hash.
pub(super) struct Node {
    /// The context-relative path as COPY names it (a matched source with
    /// links in it keeps its written name); `.` for the context root.
    pub(super) name: Vec<u8>,
    /// Where it really is, relative to the context, links followed.
    pub(super) real: PathBuf,
    /// `lstat` of `real`.
    pub(super) meta: Metadata,
}

/// Appends `child` to a node name (`.` is the root).
pub(super) fn join_name(parent: &[u8], child: &[u8]) -> Vec<u8> {
    if parent == b"." || parent.is_empty() {
        return child.to_vec();
    }
    let mut name = Vec::with_capacity(parent.len() + 1 + child.len());
    name.extend_from_slice(parent);
    name.push(b'/');
    name.extend_from_slice(child);
    name
}

/// A matcher that has patterns, with the state of the current directory.
struct Matching<'a> {
    matcher: &'a PatternMatcher,
    state: MatchState,
}

impl<'a> Matching<'a> {
    fn new(matcher: Option<&'a PatternMatcher>) -> Option<Self> {
        let matcher = matcher.filter(|m| !m.patterns().is_empty())?;
        Some(Self {
            matcher,
            state: matcher.root_state(),
        })
    }

    /// `None` when `path` is left out (an excluded entry, unless it is a
    /// directory an exception may re-include something from); otherwise
    /// the state for its entries.
    fn child(&self, path: &str, is_dir: bool) -> Option<Self> {
        let (excluded, state) = self.matcher.matches_under(path, &self.state);
        if excluded && !(is_dir && self.matcher.dir_may_contain_included(path)) {
            return None;
        }
        Some(Self {
            matcher: self.matcher,
            state,
        })
    }
}

/// What a walk needs to know of its context and source.
pub(super) struct Walker<'a> {
    pub(super) host: &'a Path,
    pub(super) ignore: Option<&'a PatternMatcher>,
    pub(super) exclude: Option<&'a PatternMatcher>,
}

struct DirJob<'a> {
    real: PathBuf,
    name: Vec<u8>,
    /// Path relative to the copied source directory, for `--exclude`.
    rel: PathBuf,
    ignore: Option<Matching<'a>>,
    exclude: Option<Matching<'a>>,
}

impl Walker<'_> {
    /// Every entry below the directory `real` (relative to the context,
    /// links resolved, itself not included), named under `name`.
    pub(super) fn subtree(&self, real: &Path, name: &[u8]) -> Result<Vec<Node>, ContextHashError> {
        // The ignore state of the root: `.dockerignore` matches real paths
        // from the top of the context.
        let mut ignore = Matching::new(self.ignore);
        let mut at = PathBuf::new();
        for part in real.iter() {
            at.push(part);
            ignore = match ignore {
                // The root itself was found visible by the resolver; only
                // the states on the way are needed.
                Some(m) => {
                    let (_, state) = m.matcher.matches_under(&at.to_string_lossy(), &m.state);
                    Some(Matching {
                        matcher: m.matcher,
                        state,
                    })
                }
                None => None,
            };
        }
        self.walk_dir(DirJob {
            real: real.to_path_buf(),
            name: name.to_vec(),
            rel: PathBuf::new(),
            ignore,
            exclude: Matching::new(self.exclude),
        })
    }

    fn host_path(&self, rel: &Path) -> PathBuf {
        if rel.as_os_str().is_empty() {
            self.host.to_path_buf()
        } else {
            self.host.join(rel)
        }
    }

    fn walk_dir<'m>(&'m self, job: DirJob<'m>) -> Result<Vec<Node>, ContextHashError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextHashError::Io {
                what: "read directory",
                path,
                source,
            }
        };
        let read = fs::read_dir(self.host_path(&job.real)).map_err(io_err(&job.real))?;
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for entry in read {
            let entry = entry.map_err(io_err(&job.real))?;
            let file_name = entry.file_name();
            let real = job.real.join(&file_name);
            // DirEntry::metadata is an fstatat on the directory's fd that
            // does not follow links: the cheapest lstat there is.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if is_missing(&e) => continue,
                Err(source) => {
                    return Err(ContextHashError::Io {
                        what: "stat",
                        path: real,
                        source,
                    });
                }
            };
            let is_dir = meta.is_dir();
            let ignore = match &job.ignore {
                Some(m) => match m.child(&real.to_string_lossy(), is_dir) {
                    Some(child) => Some(child),
                    None => continue,
                },
                None => None,
            };
            let (rel, exclude) = match &job.exclude {
                Some(m) => {
                    let rel = job.rel.join(&file_name);
                    match m.child(&rel.to_string_lossy(), is_dir) {
                        Some(child) => (rel, Some(child)),
                        None => continue,
                    }
                }
                None => (PathBuf::new(), None),
            };
            let name = join_name(&job.name, OsStr::as_bytes(&file_name));
            if is_dir {
                dirs.push(DirJob {
                    real: real.clone(),
                    name: name.clone(),
                    rel,
                    ignore,
                    exclude,
                });
            }
            nodes.push(Node { name, real, meta });
        }
        let below: Vec<Vec<Node>> = dirs
            .into_par_iter()
            .map(|dir| self.walk_dir(dir))
            .collect::<Result<_, _>>()?;
        for mut more in below {
            nodes.append(&mut more);
        }
        Ok(nodes)
    }
}
