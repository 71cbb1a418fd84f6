//! `--chown=user[:group]`: names are looked up in the target filesystem's
//! `/etc/passwd` and `/etc/group`, the way BuildKit does it for COPY (which
//! differs from USER: a lone numeric uid also becomes the gid, and a user
//! name without a group takes the user's primary group).

use std::path::Path;

use super::resolve::{Escape, Tree};
use crate::sandbox::records;
use crate::sandbox::{IdOrName, UserSpec};

/// Owner given to everything a COPY creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Owner {
    pub(super) uid: u32,
    pub(super) gid: u32,
}

impl Owner {
    pub(super) const ROOT: Owner = Owner { uid: 0, gid: 0 };
}

#[derive(Debug, thiserror::Error)]
pub enum ChownError {
    #[error("invalid --chown value {spec:?}")]
    Invalid {
        spec: String,
        #[source]
        source: crate::sandbox::InvalidUserSpec,
    },
    // runc's wording, which docker users know from USER.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("read {path} of the target filesystem")]
    Read {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Resolves a `--chown` value against the files of `lookup_root`.
pub(super) fn resolve(spec: &str, lookup_root: &Path) -> Result<Owner, ChownError> {
    let parsed: UserSpec = spec.parse().map_err(|source| ChownError::Invalid {
        spec: spec.to_owned(),
        source,
    })?;
    let tree = Tree::new(lookup_root, None, Escape::Clamp);
    let mut owner = Owner::ROOT;
    match parsed.user() {
        None => {}
        Some(IdOrName::Id(uid)) => {
            owner = Owner {
                uid: *uid,
                gid: *uid,
            };
        }
        Some(IdOrName::Name(name)) => {
            let passwd = read_etc(&tree, "/etc/passwd")?;
            owner = records(passwd.as_deref().unwrap_or(""))
                .find_map(|f| {
                    (f.first() == Some(&name.as_str())).then_some(())?;
                    Some(Owner {
                        uid: f.get(2)?.parse().ok()?,
                        gid: f.get(3)?.parse().ok()?,
                    })
                })
                .ok_or_else(|| ChownError::UnknownUser(name.clone()))?;
        }
    }
    match parsed.group() {
        None => {}
        Some(IdOrName::Id(gid)) => owner.gid = *gid,
        Some(IdOrName::Name(name)) => {
            let group = read_etc(&tree, "/etc/group")?;
            owner.gid = records(group.as_deref().unwrap_or(""))
                .find_map(|f| {
                    (f.first() == Some(&name.as_str())).then_some(())?;
                    f.get(2)?.parse().ok()
                })
                .ok_or_else(|| ChownError::UnknownGroup(name.clone()))?;
        }
    }
    Ok(owner)
}

/// Reads a file of the target filesystem, following its links inside it;
/// `None` when it does not exist.
fn read_etc(tree: &Tree<'_>, path: &'static str) -> Result<Option<String>, ChownError> {
    let rel = tree
        .resolve(Path::new(path), true)
        .map_err(|e| ChownError::Read {
            path,
            source: std::io::Error::other(e),
        })?;
    match std::fs::read(tree.host_path(&rel)) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if super::resolve::is_missing(&e) => Ok(None),
        Err(source) => Err(ChownError::Read { path, source }),
    }
}
