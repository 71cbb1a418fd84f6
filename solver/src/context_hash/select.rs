//! From COPY source paths to the context entries COPY would read, found
//! with `ops::copy`'s own path resolution and wildcard rules.
//!
//! A source that COPY cannot read (missing, escaping the context, a link
//! loop, a bad pattern) becomes a marker entry instead of an error: the
//! checksum stays defined and the COPY step reports its own error.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::ContextHashError;
use super::walk::{Node, Walker};
use crate::ops::copy::resolve::{ResolveError, Tree};
use crate::ops::copy::wildcard::{self, ComponentPattern};

/// What a selection reads.
#[derive(Default)]
pub(super) struct Found {
    pub(super) nodes: Vec<Node>,
    pub(super) markers: Vec<String>,
    /// Names of the directories above matched sources already added.
    ancestors: HashSet<Vec<u8>>,
}

pub(super) struct Selector<'a> {
    pub(super) tree: Tree<'a>,
    pub(super) walker: Walker<'a>,
}

/// A resolver error: a marker for what makes COPY fail, an error for I/O.
fn resolve_failure(
    found: &mut Found,
    shown: &str,
    e: ResolveError,
) -> Result<(), ContextHashError> {
    match e {
        ResolveError::Escapes { link, target } => {
            found.markers.push(format!(
                "<escapes> {shown} via {} -> {}",
                link.display(),
                target.display()
            ));
            Ok(())
        }
        ResolveError::Loop { .. } => {
            found.markers.push(format!("<link loop> {shown}"));
            Ok(())
        }
        ResolveError::Io { path, source } => Err(ContextHashError::Io {
            what: "stat",
            path,
            source,
        }),
    }
}

fn written_name(written: &[OsString]) -> Vec<u8> {
    if written.is_empty() {
        return b".".to_vec();
    }
    let mut name = Vec::new();
    for (i, part) in written.iter().enumerate() {
        if i > 0 {
            name.push(b'/');
        }
        name.extend_from_slice(part.as_bytes());
    }
    name
}

fn shown(written: &[OsString]) -> String {
    format!("/{}", String::from_utf8_lossy(&written_name(written)))
}

impl Selector<'_> {
    /// Adds what the source `path` (cleaned, absolute, maybe with
    /// wildcards) selects.
    pub(super) fn expand(&self, path: &str, found: &mut Found) -> Result<(), ContextHashError> {
        let (prefix, patterns) = match wildcard::split(path) {
            Ok(split) => split,
            Err(e) => {
                found.markers.push(format!("<bad pattern> {path}: {e}"));
                return Ok(());
            }
        };
        let prefix: Vec<OsString> = prefix.into_iter().map(OsString::from).collect();
        let prefix_path: PathBuf = prefix.iter().collect();
        if patterns.is_empty() {
            return self.follow(prefix, &prefix_path, found);
        }
        let base = match self.tree.resolve(&prefix_path, true) {
            Ok(base) => base,
            Err(e) => return resolve_failure(found, path, e),
        };
        let is_dir = match self.tree.lstat(&base) {
            Ok(meta) => meta.is_some_and(|m| m.is_dir()),
            Err(e) => return resolve_failure(found, path, e),
        };
        let mut matches = Vec::new();
        if is_dir {
            self.walk_pattern(&base, &mut prefix.clone(), &patterns, 0, &mut matches)?;
        }
        if matches.is_empty() {
            // COPY fails only when no source matches anything; the marker
            // keeps "nothing matched" distinct from an empty directory.
            found.markers.push(format!("<no match> {path}"));
        }
        let mut seen = BTreeSet::new();
        for (written, entry) in matches {
            if seen.insert(written.clone()) {
                self.follow(written, &entry, found)?;
            }
        }
        Ok(())
    }

    /// `ops::copy`'s wildcard walk, except that `**` always spans any
    /// number of directories (COPY does that only with `--parents`, and a
    /// plain `**` component matches a subset of that): selecting more only
    /// costs a cache miss.
    fn walk_pattern(
        &self,
        dir: &Path,
        written: &mut Vec<OsString>,
        patterns: &[ComponentPattern],
        j: usize,
        out: &mut Vec<(Vec<OsString>, PathBuf)>,
    ) -> Result<(), ContextHashError> {
        let pattern = &patterns[j];
        let last = j + 1 == patterns.len();
        let mut names: Vec<OsString> = fs::read_dir(self.tree.host_path(dir))
            .and_then(|rd| rd.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(|source| ContextHashError::Io {
                what: "read directory",
                path: dir.to_path_buf(),
                source,
            })?;
        names.sort();
        let spans = pattern.is_double_star() && !last;
        if spans {
            self.walk_pattern(dir, written, patterns, j + 1, out)?;
        }
        for name in names {
            let entry = dir.join(&name);
            let meta = match self.tree.lstat(&entry) {
                Ok(Some(meta)) => meta,
                Ok(None) => continue,
                Err(ResolveError::Io { path, source }) => {
                    return Err(ContextHashError::Io {
                        what: "stat",
                        path,
                        source,
                    });
                }
                Err(_) => continue,
            };
            if spans {
                if meta.is_dir() {
                    written.push(name);
                    self.walk_pattern(&entry, written, patterns, j, out)?;
                    written.pop();
                }
                continue;
            }
            if !pattern.matches(&name.to_string_lossy()) {
                continue;
            }
            written.push(name);
            if last {
                out.push((written.clone(), entry));
            } else if meta.is_dir() {
                self.walk_pattern(&entry, written, patterns, j + 1, out)?;
            }
            written.pop();
        }
        Ok(())
    }

    /// One found source: its links followed inside the context, then the
    /// entry itself and, for a directory, everything below it. The
    /// directories above it are added too (`COPY --parents` recreates them
    /// with their modes).
    fn follow(
        &self,
        written: Vec<OsString>,
        entry: &Path,
        found: &mut Found,
    ) -> Result<(), ContextHashError> {
        let shown = shown(&written);
        let real = match self.tree.resolve(entry, true) {
            Ok(real) => real,
            Err(e) => return resolve_failure(found, &shown, e),
        };
        let meta = match self.tree.lstat(&real) {
            Ok(Some(meta)) => meta,
            Ok(None) => {
                found.markers.push(format!("<missing> {shown}"));
                return Ok(());
            }
            Err(e) => return resolve_failure(found, &shown, e),
        };
        for depth in 1..written.len() {
            self.ancestor(&written[..depth], found)?;
        }
        let name = written_name(&written);
        let is_dir = meta.is_dir();
        if is_dir {
            let below = self.walker.subtree(&real, &name)?;
            found.nodes.extend(below);
        }
        found.nodes.push(Node { name, real, meta });
        Ok(())
    }

    fn ancestor(&self, written: &[OsString], found: &mut Found) -> Result<(), ContextHashError> {
        let name = written_name(written);
        if !found.ancestors.insert(name.clone()) {
            return Ok(());
        }
        let path: PathBuf = written.iter().collect();
        // The source was found through it, so it resolves; a failure here
        // is a race with a change and shows as a marker.
        let meta = self
            .tree
            .resolve(&path, true)
            .ok()
            .and_then(|real| Some((self.tree.lstat(&real).ok()??, real)));
        match meta {
            Some((meta, real)) => found.nodes.push(Node { name, real, meta }),
            None => found
                .markers
                .push(format!("<missing> /{}", String::from_utf8_lossy(&name))),
        }
        Ok(())
    }
}
