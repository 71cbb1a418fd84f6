//! USER of a step: parsing `user[:group]` and resolving it through the
//! image's `/etc/passwd` and `/etc/group` the way runc does for docker.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::str::FromStr;

/// Largest id docker and runc accept.
const MAX_ID: u32 = i32::MAX as u32;

/// One half of a USER value: a name, or a number.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdOrName {
    Id(u32),
    Name(String),
}

impl fmt::Display for IdOrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdOrName::Id(id) => write!(f, "{id}"),
            IdOrName::Name(name) => f.write_str(name),
        }
    }
}

/// A USER value: `name`, `uid`, `name:group`, `uid:gid` (or a mix). The
/// default (an empty USER) is root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct UserSpec {
    user: Option<IdOrName>,
    group: Option<IdOrName>,
}

/// A USER value that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid user {spec:?}: {reason}")]
pub struct InvalidUserSpec {
    spec: String,
    reason: &'static str,
}

impl UserSpec {
    /// Root, whatever `/etc/passwd` says about uid 0.
    pub fn root() -> Self {
        Self::default()
    }

    pub fn user(&self) -> Option<&IdOrName> {
        self.user.as_ref()
    }

    pub fn group(&self) -> Option<&IdOrName> {
        self.group.as_ref()
    }
}

impl FromStr for UserSpec {
    type Err = InvalidUserSpec;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidUserSpec {
            spec: spec.to_owned(),
            reason,
        };
        let part = |text: &str| -> Result<Option<IdOrName>, InvalidUserSpec> {
            if text.is_empty() {
                return Ok(None);
            }
            if text.contains('\0') {
                return Err(invalid("contains a nul byte"));
            }
            if text.bytes().all(|b| b.is_ascii_digit()) {
                return match text.parse::<u32>() {
                    Ok(id) if id <= MAX_ID => Ok(Some(IdOrName::Id(id))),
                    _ => Err(invalid("ids must be in range 0-2147483647")),
                };
            }
            Ok(Some(IdOrName::Name(text.to_owned())))
        };
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => {
                if group.contains(':') {
                    return Err(invalid("expected user[:group]"));
                }
                (part(user)?, part(group)?)
            }
            None => (part(spec)?, None),
        };
        Ok(Self { user, group })
    }
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(user) = &self.user {
            write!(f, "{user}")?;
        }
        if let Some(group) = &self.group {
            write!(f, ":{group}")?;
        }
        Ok(())
    }
}

/// Who a step runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Groups for `setgroups`: the primary group first, then the
    /// supplementary ones from `/etc/group` (docker's AdditionalGids).
    pub groups: Vec<u32>,
    /// From the passwd entry, `/` without one (runc's default for HOME).
    pub home: String,
}

/// Failure to resolve a USER inside the image.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(transparent)]
    Invalid(#[from] InvalidUserSpec),
    // The wording of runc's errors, which docker users know.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("read {path} of the image")]
    Read {
        path: &'static str,
        #[source]
        source: io::Error,
    },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

/// Lines that are neither blank, comments, nor NIS `+`/`-` markers, split
/// into their `:` fields (also used by COPY --chown's lookups).
pub(crate) fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with(['#', '+', '-']) {
            return None;
        }
        Some(line.split(':').collect())
    })
}

/// Entries of an `/etc/passwd`; malformed lines are skipped rather than read
/// as uid 0.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    records(text).filter_map(|fields| {
        Some(PasswdEntry {
            name: fields.first()?,
            uid: fields.get(2)?.parse().ok()?,
            gid: fields.get(3)?.parse().ok()?,
            home: fields.get(5).copied().unwrap_or(""),
        })
    })
}

fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    records(text).filter_map(|fields| {
        Some(GroupEntry {
            name: fields.first()?,
            gid: fields.get(2)?.parse().ok()?,
            members: fields.get(3).copied().unwrap_or(""),
        })
    })
}

/// Resolves `spec` against the contents of the image's `/etc/passwd` and
/// `/etc/group` (`None` when the file does not exist), with runc's rules:
///
/// - a user name must exist; a uid need not (it then gets gid 0 and home `/`);
/// - a named group must exist; a gid need not;
/// - supplementary groups come from `/etc/group` membership, and only when
///   no group was given explicitly.
pub fn resolve(
    spec: &UserSpec,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, UserError> {
    let entry = passwd_entries(passwd.unwrap_or("")).find(|entry| match &spec.user {
        None => entry.uid == 0,
        Some(IdOrName::Id(uid)) => entry.uid == *uid,
        Some(IdOrName::Name(name)) => entry.name == name,
    });
    let (uid, mut gid, home, name) = match (entry, &spec.user) {
        (Some(entry), _) => {
            let home = if entry.home.is_empty() {
                "/"
            } else {
                entry.home
            };
            (entry.uid, entry.gid, home.to_owned(), Some(entry.name))
        }
        (None, None) => (0, 0, "/".to_owned(), None),
        (None, Some(IdOrName::Id(uid))) => (*uid, 0, "/".to_owned(), None),
        (None, Some(IdOrName::Name(name))) => return Err(UserError::UnknownUser(name.clone())),
    };
    let groups_text = group.unwrap_or("");
    let mut groups = Vec::new();
    match &spec.group {
        Some(IdOrName::Id(wanted)) => gid = *wanted,
        Some(IdOrName::Name(wanted)) => {
            gid = group_entries(groups_text)
                .find(|entry| entry.name == wanted)
                .ok_or_else(|| UserError::UnknownGroup(wanted.clone()))?
                .gid;
        }
        None => {
            if let Some(name) = name {
                groups.extend(
                    group_entries(groups_text)
                        .filter(|entry| entry.members.split(',').any(|m| m.trim() == name))
                        .map(|entry| entry.gid),
                );
            }
        }
    }
    groups.insert(0, gid);
    // An image may list a user in thousands of groups.
    let mut seen = HashSet::with_capacity(groups.len());
    groups.retain(|g| seen.insert(*g));
    Ok(ResolvedUser {
        uid,
        gid,
        groups,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1::/usr/sbin:/usr/sbin/nologin
broken:x:notanumber:0::/:/bin/sh
app:x:1000:1000:App:/home/app:/bin/sh
nohome:x:1001:1001::
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,app
audio:x:29:app, other
app:x:1000:
staff:x:50:
";

    fn spec(s: &str) -> UserSpec {
        s.parse().unwrap()
    }

    fn resolve_ok(s: &str) -> ResolvedUser {
        resolve(&spec(s), Some(PASSWD), Some(GROUP)).unwrap()
    }

    #[test]
    fn parses_docker_forms() {
        assert_eq!(spec(""), UserSpec::root());
        assert_eq!(spec("app").user(), Some(&IdOrName::Name("app".into())));
        assert_eq!(spec("1000:50").group(), Some(&IdOrName::Id(50)));
        assert_eq!(spec("app:staff").to_string(), "app:staff");
        assert_eq!(spec(":staff").user(), None);
        assert_eq!(spec("1a").user(), Some(&IdOrName::Name("1a".into())));
        assert!("a:b:c".parse::<UserSpec>().is_err());
        assert!("4294967296".parse::<UserSpec>().is_err());
        assert!("2147483648".parse::<UserSpec>().is_err());
        assert!("2147483647".parse::<UserSpec>().is_ok());
        assert!("a\0b".parse::<UserSpec>().is_err());
    }

    #[test]
    fn default_is_root_with_its_groups() {
        let root = resolve_ok("");
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        assert_eq!(root.groups, vec![0, 10]);
    }

    #[test]
    fn name_gets_passwd_entry_and_memberships() {
        let app = resolve_ok("app");
        assert_eq!(
            (app.uid, app.gid, app.home.as_str()),
            (1000, 1000, "/home/app")
        );
        assert_eq!(app.groups, vec![1000, 10, 29]);
        // A uid that has an entry is the same user.
        assert_eq!(resolve_ok("1000"), app);
    }

    #[test]
    fn explicit_group_drops_supplementary_groups() {
        let user = resolve_ok("app:staff");
        assert_eq!((user.uid, user.gid), (1000, 50));
        assert_eq!(user.groups, vec![50]);
        let user = resolve_ok("app:4242");
        assert_eq!((user.gid, user.groups.clone()), (4242, vec![4242]));
    }

    #[test]
    fn unknown_uid_is_allowed_with_gid_zero() {
        let user = resolve_ok("4321");
        assert_eq!((user.uid, user.gid, user.home.as_str()), (4321, 0, "/"));
        assert_eq!(user.groups, vec![0]);
        let user = resolve(&spec("5:6"), None, None).unwrap();
        assert_eq!((user.uid, user.gid, user.groups), (5, 6, vec![6]));
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let err = resolve(&spec("ghost"), Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to find user ghost: no matching entries in passwd file"
        );
        let err = resolve(&spec("app:ghosts"), Some(PASSWD), Some(GROUP)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unable to find group ghosts: no matching entries in group file"
        );
        assert!(matches!(
            resolve(&spec("app"), None, None),
            Err(UserError::UnknownUser(name)) if name == "app"
        ));
    }

    #[test]
    fn malformed_lines_do_not_become_root() {
        assert!(matches!(
            resolve(&spec("broken"), Some(PASSWD), None),
            Err(UserError::UnknownUser(_))
        ));
        let nohome = resolve_ok("nohome");
        assert_eq!(nohome.home, "/");
    }
}
