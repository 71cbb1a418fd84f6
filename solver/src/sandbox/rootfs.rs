//! Reading and creating paths inside a step's root before it starts, through
//! the detached overlay mount, never following a link out of the root.
//!
//! Every lookup goes through `openat2(RESOLVE_IN_ROOT)`, so an absolute
//! symlink or `..` in the image resolves against the image root, as it would
//! inside the sandbox, and not against the host's.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

/// Components of an absolute container path after lexical cleaning: `.` and
/// empty components dropped, `..` removes the previous one (and stays at the
/// root), like Go's `filepath.Clean` that docker applies to WORKDIR.
pub(crate) fn clean_components(path: &str) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for component in path.split('/') {
        match component {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            name => out.push(name),
        }
    }
    out
}

fn open_in_root(root: BorrowedFd<'_>, path: &str, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    openat2(root, path, how)
}

/// The contents of `path` inside the root, or `None` if it does not exist.
pub(crate) fn read_file(root: BorrowedFd<'_>, path: &str) -> io::Result<Option<String>> {
    let fd = match open_in_root(root, path, OFlag::O_RDONLY) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(None),
        Err(errno) => return Err(errno.into()),
    };
    let mut bytes = Vec::new();
    File::from(fd).read_to_end(&mut bytes)?;
    // passwd and group are ASCII in practice; a stray byte must not make a
    // user unresolvable.
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Makes sure the directory `path` exists inside the root. Missing
/// components are created with mode 0755 and owned by `uid:gid`, as
/// BuildKit's WORKDIR does for the current USER; existing ones are left
/// alone. Symlinks on the way are followed inside the root.
pub(crate) fn ensure_dir(root: BorrowedFd<'_>, path: &str, uid: u32, gid: u32) -> io::Result<()> {
    let mut dir = open_in_root(root, ".", OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    let mut prefix = String::with_capacity(path.len());
    for component in clean_components(path) {
        prefix.push('/');
        prefix.push_str(component);
        match open_in_root(root, &prefix, OFlag::O_PATH | OFlag::O_DIRECTORY) {
            Ok(fd) => dir = fd,
            Err(Errno::ENOENT) => dir = create_dir(dir.as_fd(), component, uid, gid)?,
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

fn create_dir(parent: BorrowedFd<'_>, name: &str, uid: u32, gid: u32) -> io::Result<OwnedFd> {
    mkdirat(parent, name, Mode::from_bits_truncate(0o755))?;
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_BENEATH);
    let fd = openat2(parent, name, how)?;
    fchown(&fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    // mkdirat is subject to the umask; the mode must not be.
    fchmod(&fd, Mode::from_bits_truncate(0o755))?;
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    #[test]
    fn cleaning_stays_inside_the_root() {
        assert_eq!(clean_components("/a/./b//c/"), vec!["a", "b", "c"]);
        assert_eq!(clean_components("/../../x/../y"), vec!["y"]);
        assert!(clean_components("/").is_empty());
    }

    #[test]
    fn lookups_resolve_links_against_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/real"), "inside").unwrap();
        std::fs::write(dir.path().join("outside"), "host").unwrap();
        // Both would escape on the host: an absolute link and a `..` chain.
        symlink("/etc/real", root.join("etc/abs")).unwrap();
        symlink("../../../outside", root.join("etc/rel")).unwrap();
        let fd = File::open(&root).unwrap();
        let root_fd = fd.as_fd();
        assert_eq!(
            read_file(root_fd, "/etc/abs").unwrap().as_deref(),
            Some("inside")
        );
        assert_eq!(read_file(root_fd, "etc/rel").unwrap(), None);
        assert_eq!(read_file(root_fd, "/etc/missing").unwrap(), None);

        // Changing owners needs root; otherwise "create as myself" is still checked.
        let (uid, gid) = if nix::unistd::geteuid().is_root() {
            (1234, 5678)
        } else {
            (
                nix::unistd::geteuid().as_raw(),
                nix::unistd::getegid().as_raw(),
            )
        };
        symlink("/made", root.join("link")).unwrap();
        let dangling = ensure_dir(root_fd, "/link/sub/../sub2", uid, gid).unwrap_err();
        assert_eq!(dangling.raw_os_error(), Some(libc::EEXIST));
        let made = root.join("made");
        std::fs::create_dir(&made).unwrap();
        let made_owner = std::fs::metadata(&made).unwrap().uid();
        ensure_dir(root_fd, "/link/sub/../sub2/x", uid, gid).unwrap();
        for created in ["made/sub2", "made/sub2/x"] {
            let meta = std::fs::metadata(root.join(created)).unwrap();
            assert!(meta.is_dir());
            assert_eq!((meta.uid(), meta.gid()), (uid, gid));
            assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        }
        assert!(!root.join("made/sub").exists());
        // Existing directories keep their owner.
        assert_eq!(std::fs::metadata(&made).unwrap().uid(), made_owner);
        assert!(!dir.path().join("made").exists());
    }
}
