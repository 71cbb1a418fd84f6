//! Mountpoints for `RUN --mount` targets, without touching the layer.
//!
//! A mount needs an existing directory (or file, for a secret or a socket)
//! to go on. Creating a missing one in the merged root would put it in the
//! upperdir, i.e. in the step's layer, which BuildKit avoids by removing
//! such stubs afterwards. Here, as for `/proc` and the `/etc` files (see
//! `mounts.rs`), the stubs live in a per-step lowerdir stacked on top of the
//! image: the merged root has the mountpoints, the upperdir only what the
//! step writes, and nothing needs cleaning up, not even after a crash. The
//! layer is built on the step's per-run tmpfs (a directory on a busy disk
//! costs milliseconds, on tmpfs microseconds); kernels that refuse a
//! detached mount as a layer (before 6.15) get it on disk instead.
//!
//! Directories of the image on the way to a stub are repeated in the stub
//! layer with their mode, owner and mtime, so that they look the same and a
//! copy-up (the step writing next to the mountpoint) copies the image's
//! attributes.
//!
//! Targets are resolved inside the image first, following its symlinks
//! inside the root (`/var/run/x` with `/var/run -> /run` is `/run/x`), so
//! the child mounts on a path without any link.

use std::ffi::OsStr;
use std::fs::{self, File, FileTimes};
use std::io;
use std::os::fd::BorrowedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use nix::errno::Errno;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::linux::overlay_view;
use super::mounts::{PlannedMount, PlannedSource};
use super::{MountSource, RunSpec, SandboxError};
use nix::fcntl::{AtFlags, readlinkat};
use nix::sys::stat::{SFlag, fstatat};

/// At most this many symlinks are followed while resolving one target, as
/// the kernel's own limit.
const MAX_LINKS: usize = 40;

/// Mode, owner and mtime of a directory of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
}

/// What the image has at a mount target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The target's components with every symlink resolved inside the root.
    pub(crate) components: Vec<String>,
    /// Attributes of the leading components that exist in the image (all
    /// directories); the components after them are missing.
    pub(crate) existing: Vec<Attrs>,
    /// The target itself exists and is a directory (`Some(true)`) or
    /// something else (`Some(false)`).
    pub(crate) target: Option<bool>,
}

impl Resolved {
    /// `target` in an empty tree: every component is missing.
    pub(crate) fn missing(target: &str) -> Self {
        let mut components: Vec<String> = Vec::new();
        for component in target.split('/') {
            match component {
                "" | "." => {}
                ".." => {
                    components.pop();
                }
                name => components.push(name.to_owned()),
            }
        }
        let target = components.is_empty().then_some(true);
        Resolved {
            components,
            existing: Vec::new(),
            target,
        }
    }

    /// The absolute container path, without links.
    pub(crate) fn path(&self) -> String {
        format!("/{}", self.components.join("/"))
    }

    pub(crate) fn exists(&self) -> bool {
        self.target.is_some()
    }
}

/// Resolves the absolute container path `target` in the tree at `root` (a
/// view of the image), never leaving it: `..` stops at the root and an
/// absolute link starts over from it.
pub(crate) fn resolve(root: BorrowedFd<'_>, target: &str) -> io::Result<Resolved> {
    #[derive(Clone, Copy)]
    enum Entry {
        Dir(Attrs),
        Other,
        Missing,
    }
    let mut todo: Vec<String> = target
        .split('/')
        .rev()
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let mut done: Vec<(String, Entry)> = Vec::new();
    let mut links = 0;
    while let Some(component) = todo.pop() {
        match component.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        match done.last() {
            Some((_, Entry::Missing)) => {
                done.push((component, Entry::Missing));
                continue;
            }
            Some((name, Entry::Other)) => {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("{name} in the mount target is not a directory"),
                ));
            }
            _ => {}
        }
        let mut relative: String = done.iter().map(|(c, _)| format!("{c}/")).collect();
        relative.push_str(&component);
        match fstatat(root, relative.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => {
                let kind = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
                if kind == SFlag::S_IFLNK {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::from(Errno::ELOOP));
                    }
                    let link = readlinkat(root, relative.as_str())?;
                    let link = link.as_bytes();
                    if link.starts_with(b"/") {
                        done.clear();
                    }
                    for part in link.split(|&b| b == b'/').rev() {
                        if !part.is_empty() {
                            todo.push(String::from_utf8_lossy(part).into_owned());
                        }
                    }
                    continue;
                }
                let entry = if kind == SFlag::S_IFDIR {
                    Entry::Dir(Attrs {
                        mode: stat.st_mode & 0o7777,
                        uid: stat.st_uid,
                        gid: stat.st_gid,
                        mtime: stat.st_mtime,
                        mtime_nsec: stat.st_mtime_nsec,
                    })
                } else {
                    Entry::Other
                };
                done.push((component, entry));
            }
            Err(Errno::ENOENT) => done.push((component, Entry::Missing)),
            Err(errno) => return Err(errno.into()),
        }
    }
    let target = match done.last() {
        None => Some(true),
        Some((_, Entry::Dir(_))) => Some(true),
        Some((_, Entry::Other)) => Some(false),
        Some((_, Entry::Missing)) => None,
    };
    let existing = done
        .iter()
        .map_while(|(_, e)| match e {
            Entry::Dir(attrs) => Some(*attrs),
            _ => None,
        })
        .collect();
    Ok(Resolved {
        components: done.into_iter().map(|(c, _)| c).collect(),
        existing,
        target,
    })
}

/// A stub to create: the resolved target and whether it is a directory.
pub(crate) struct Stub<'a> {
    pub(crate) resolved: &'a Resolved,
    pub(crate) dir: bool,
}

/// Where the stub layer goes on the per-run tmpfs.
pub(crate) const STUB_LAYER: &str = "stubs";

/// Builds the stub layer in `dir` (an empty directory) for targets the
/// image lacks. Returns whether anything was needed.
pub(crate) fn build(dir: &Path, stubs: &[Stub<'_>]) -> io::Result<bool> {
    let mut times: Vec<(PathBuf, Attrs)> = Vec::new();
    let mut any = false;
    for stub in stubs {
        let resolved = stub.resolved;
        if resolved.exists() {
            continue;
        }
        any = true;
        let mut path = dir.to_path_buf();
        for (i, component) in resolved.components.iter().enumerate() {
            path.push(OsStr::new(component));
            let last = i + 1 == resolved.components.len();
            if let Some(attrs) = resolved.existing.get(i) {
                if create_dir(&path, attrs.mode)? {
                    std::os::unix::fs::lchown(&path, Some(attrs.uid), Some(attrs.gid))?;
                    times.push((path.clone(), *attrs));
                }
            } else if last && !stub.dir {
                match File::options().write(true).create_new(true).open(&path) {
                    Ok(_) => fs::set_permissions(&path, fs::Permissions::from_mode(0o644))?,
                    Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(err) => return Err(err),
                }
            } else {
                create_dir(&path, 0o755)?;
            }
        }
    }
    // Last and deepest first: creating entries changes a directory's mtime.
    times.sort_by(|a, b| b.0.cmp(&a.0));
    for (path, attrs) in times {
        let since_epoch = Duration::new(
            attrs.mtime.max(0) as u64,
            attrs.mtime_nsec.clamp(0, 999_999_999) as u32,
        );
        File::open(&path)?.set_times(FileTimes::new().set_modified(UNIX_EPOCH + since_epoch))?;
    }
    Ok(any)
}

/// Creates a directory with exactly `mode`; false when it already existed.
fn create_dir(path: &Path, mode: u32) -> io::Result<bool> {
    match fs::create_dir(path) {
        Ok(()) => {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            Ok(true)
        }
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(err) => Err(err),
    }
}

/// Removes stub layers that a builder process which is gone left behind
/// (it was killed during a step); those of live processes are kept.
pub(crate) fn remove_stale(stubs_parent: &Path) {
    let Ok(entries) = fs::read_dir(stubs_parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let pid = name
            .split('-')
            .nth(1)
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// A file for the per-run tmpfs (a secret), bound on its target.
pub(crate) struct StateFile<'a> {
    pub(crate) name: String,
    pub(crate) content: &'a [u8],
    mode: u32,
    uid: u32,
    gid: u32,
}

/// The `RUN --mount`s of one run, ready for [`super::mounts::plan`].
#[derive(Default)]
pub(crate) struct PreparedMounts<'a> {
    /// In mount order: parents before the mounts inside them.
    pub(crate) mounts: Vec<PlannedMount>,
    /// Targets the image lacks, for the stub layer (built on the per-run
    /// tmpfs: directories there cost a fraction of a disk's).
    pub(crate) stubs: Vec<(Resolved, bool)>,
    /// Files to create on the per-run tmpfs.
    pub(crate) files: Vec<StateFile<'a>>,
    /// Empty directories on the per-run tmpfs where detached sources are
    /// attached.
    pub(crate) staging: Vec<String>,
}

impl PreparedMounts<'_> {
    /// The stub layer in a new directory under `parent` on disk, for
    /// kernels that refuse a layer on the (detached) per-run tmpfs (before
    /// Linux 6.15).
    pub(crate) fn stub_layer_on_disk(&self, parent: &Path) -> io::Result<tempfile::TempDir> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("run-{}-", std::process::id()))
            .tempdir_in(parent)?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        build(dir.path(), &self.stub_list())?;
        Ok(dir)
    }

    fn stub_list(&self) -> Vec<Stub<'_>> {
        self.stubs
            .iter()
            .map(|(resolved, dir)| Stub {
                resolved,
                dir: *dir,
            })
            .collect()
    }

    /// Creates the staging directories and files on the per-run tmpfs,
    /// reached at `base`.
    pub(crate) fn populate(&self, base: &Path) -> io::Result<()> {
        if !self.stubs.is_empty() {
            let layer = base.join(STUB_LAYER);
            fs::create_dir(&layer)?;
            fs::set_permissions(&layer, fs::Permissions::from_mode(0o755))?;
            build(&layer, &self.stub_list())?;
        }
        for name in &self.staging {
            fs::create_dir(base.join(name))?;
        }
        for file in &self.files {
            let path = base.join(&file.name);
            let mut out = File::options()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            out.write_all(file.content)?;
            drop(out);
            std::os::unix::fs::chown(&path, Some(file.uid), Some(file.gid))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(file.mode & 0o7777))?;
        }
        Ok(())
    }
}

/// Directories the sandbox mounts its own filesystems on.
const SANDBOX_DIRS: [&str; 3] = ["proc", "sys", "dev"];

fn invalid(message: String) -> SandboxError {
    SandboxError::InvalidSpec(message)
}

/// Resolves every mount target of `spec` in its image and decides the
/// mount order, the mountpoints to create inside other mounts and the
/// stubs of the stub layer.
pub(crate) fn prepare<'a>(spec: &'a RunSpec) -> Result<PreparedMounts<'a>, SandboxError> {
    if spec.mounts.is_empty() {
        return Ok(PreparedMounts::default());
    }
    // The image as the step will see it, without any stub (nothing to
    // look at for an empty one).
    let view = match spec.rootfs.lowerdirs.is_empty() {
        true => None,
        false => Some(overlay_view(&spec.rootfs.lowerdirs, None)?),
    };
    let mut resolved = Vec::with_capacity(spec.mounts.len());
    for mount in &spec.mounts {
        let target = &mount.target;
        let found = match &view {
            Some(view) => resolve(view.as_fd(), target)
                .map_err(|err| invalid(format!("mount target {target}: {err}")))?,
            None => Resolved::missing(target),
        };
        match found.components.first().map(String::as_str) {
            None => return Err(invalid(format!("cannot mount on {target}: it is the root"))),
            Some(first) if SANDBOX_DIRS.contains(&first) => {
                return Err(invalid(format!(
                    "cannot mount on {target}: /{first} is provided by the sandbox"
                )));
            }
            Some(_) => {}
        }
        let dir = source_is_dir(&mount.source)?;
        resolved.push((found, dir));
    }
    drop(view);

    let mut order: Vec<usize> = (0..spec.mounts.len()).collect();
    order.sort_by_key(|&i| resolved[i].0.components.len());
    let mut prepared = PreparedMounts::default();
    for (n, &i) in order.iter().enumerate() {
        let mount = &spec.mounts[i];
        let (found, dir) = &resolved[i];
        let parent = order[..n].iter().rev().find(|&&p| {
            let outer = &resolved[p].0.components;
            outer.len() < found.components.len() && found.components.starts_with(outer)
        });
        let mut create = Vec::new();
        match parent {
            Some(&p) => {
                let depth = resolved[p].0.components.len();
                for end in depth + 1..=found.components.len() {
                    let path = format!("/{}", found.components[..end].join("/"));
                    let is_dir = end < found.components.len() || *dir;
                    create.push((path, is_dir));
                }
            }
            None => match found.target {
                None => prepared.stubs.push((found.clone(), *dir)),
                Some(is_dir) if is_dir != *dir => {
                    let what = |d: bool| if d { "directory" } else { "file" };
                    return Err(invalid(format!(
                        "cannot mount a {} on {}: it is a {} in the image",
                        what(*dir),
                        mount.target,
                        what(is_dir)
                    )));
                }
                Some(_) => {}
            },
        }
        let source = match &mount.source {
            MountSource::Host(path) => PlannedSource::Host(path.clone()),
            MountSource::Detached { mount, subpath } => {
                let staging = format!("mnt{n}");
                prepared.staging.push(staging.clone());
                PlannedSource::Staged {
                    fd: mount.as_fd().as_raw_fd(),
                    staging,
                    subpath: subpath.trim_start_matches('/').to_owned(),
                }
            }
            MountSource::Tmpfs { size } => PlannedSource::Tmpfs { size: *size },
            MountSource::File {
                content,
                mode,
                uid,
                gid,
            } => {
                let name = format!("file{n}");
                prepared.files.push(StateFile {
                    name: name.clone(),
                    content,
                    mode: *mode,
                    uid: *uid,
                    gid: *gid,
                });
                PlannedSource::StateFile { name }
            }
        };
        prepared.mounts.push(PlannedMount {
            target: found.path(),
            source,
            readonly: mount.readonly,
            create,
        });
    }
    Ok(prepared)
}

/// Whether `source` is mounted as a directory (else as a file).
fn source_is_dir(source: &MountSource) -> Result<bool, SandboxError> {
    let path = match source {
        MountSource::Tmpfs { .. } => return Ok(true),
        MountSource::File { .. } => return Ok(false),
        MountSource::Host(path) => path.clone(),
        MountSource::Detached { mount, subpath } => {
            mount.path().join(subpath.trim_start_matches('/'))
        }
    };
    fs::metadata(&path)
        .map(|meta| meta.is_dir())
        .map_err(|source| SandboxError::State { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::{MetadataExt, symlink};

    #[test]
    fn targets_resolve_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("run")).unwrap();
        fs::create_dir_all(root.join("var")).unwrap();
        fs::set_permissions(root.join("run"), fs::Permissions::from_mode(0o700)).unwrap();
        symlink("/run", root.join("var/run")).unwrap();
        symlink("../../../../etc", root.join("escape")).unwrap();
        fs::write(root.join("file"), "x").unwrap();
        let fd = File::open(&root).unwrap();
        let r = resolve(fd.as_fd(), "/var/run/cache/x").unwrap();
        assert_eq!(r.path(), "/run/cache/x");
        assert_eq!(r.existing.len(), 1);
        assert_eq!(r.existing[0].mode, 0o700);
        assert_eq!(r.target, None);
        // `..` and absolute links stay in the root.
        let r = resolve(fd.as_fd(), "/escape/passwd").unwrap();
        assert_eq!(r.path(), "/etc/passwd");
        assert!(r.existing.is_empty());
        let r = resolve(fd.as_fd(), "/var/run").unwrap();
        assert_eq!((r.path().as_str(), r.target), ("/run", Some(true)));
        let r = resolve(fd.as_fd(), "/file").unwrap();
        assert_eq!(r.target, Some(false));
        assert!(resolve(fd.as_fd(), "/file/x").is_err());
        let r = resolve(fd.as_fd(), "/run/../var/new/../other").unwrap();
        assert_eq!(r.path(), "/var/other");
        assert_eq!((r.existing.len(), r.target), (1, None));
        symlink("loop", root.join("loop")).unwrap();
        assert!(resolve(fd.as_fd(), "/loop/x").is_err());
    }

    #[test]
    fn stale_stub_layers_of_dead_processes_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = tmp.path().join("run-999999999-abc");
        let live = tmp.path().join(format!("run-{}-def", std::process::id()));
        let other = tmp.path().join("unrelated");
        for dir in [&dead, &live, &other] {
            fs::create_dir_all(dir.join("x")).unwrap();
        }
        remove_stale(tmp.path());
        assert!(!dead.exists() && live.exists() && other.exists());
    }

    #[test]
    fn stub_layer_repeats_image_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("home/user")).unwrap();
        fs::set_permissions(root.join("home/user"), fs::Permissions::from_mode(0o750)).unwrap();
        File::open(root.join("home/user"))
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000))
            .unwrap();
        let fd = File::open(&root).unwrap();
        let cache = resolve(fd.as_fd(), "/home/user/.cache/go").unwrap();
        let secret = resolve(fd.as_fd(), "/run/secrets/tok").unwrap();
        let there = resolve(fd.as_fd(), "/home").unwrap();
        let layer = tmp.path().join("stubs");
        fs::create_dir(&layer).unwrap();
        let stubs = [
            Stub {
                resolved: &cache,
                dir: true,
            },
            Stub {
                resolved: &secret,
                dir: false,
            },
            Stub {
                resolved: &there,
                dir: true,
            },
        ];
        assert!(build(&layer, &stubs).unwrap());
        let user = fs::metadata(layer.join("home/user")).unwrap();
        assert_eq!(user.mode() & 0o7777, 0o750);
        assert_eq!(user.mtime(), 1_000_000);
        assert!(layer.join("home/user/.cache/go").is_dir());
        assert!(layer.join("run/secrets/tok").is_file());
        assert!(!build(&layer, &stubs[2..]).unwrap());
    }
}
