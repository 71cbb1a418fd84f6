//! What the sandbox mounts, decided in the parent: the mountpoint skeleton
//! layer and the list of operations the child performs before `execve`.
//!
//! The child of a multi-threaded process must not allocate, so every path
//! and option string is built here as a `CString`; the child only walks the
//! finished list (see `linux.rs`).
//!
//! Mountpoints and upperdir hygiene: `/proc`, `/dev`, `/sys`,
//! `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` need something to
//! mount on, and the image may lack them. Creating them in the merged root
//! would put them in the upperdir, i.e. in the layer. Instead a tiny
//! skeleton directory holding exactly those entries is stacked as the
//! top-most lowerdir: the merged root then always has the mountpoints, the
//! upperdir only ever receives what the step itself writes, and nothing has
//! to be cleaned up afterwards. The skeleton's `/etc` copies mode, owner and
//! mtime from the image's own `/etc`, so `/etc` keeps its attributes, also
//! when the step copies it up. Skeletons are immutable and cached under a
//! name made of exactly those attributes (a build needs a handful), so a
//! step creates nothing on disk for them.
//!
//! Where things are in the child's private mount namespace: a per-run tmpfs
//! holding the /etc files' contents is attached on the executor's mountpoint
//! directory `M`, the overlay on `M/root`; the /etc files are bound from
//! `M/etc/*` onto `M/root/etc/*`; then `pivot_root` into `M/root`. None of
//! it is visible in the host's mount namespace.

use std::ffi::{CString, NulError};
use std::fs::{self, File, FileTimes, Metadata};
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use super::{NetworkMode, StepFile};

/// Files bound into `/etc` from the executor's per-run state.
pub(crate) const ETC_FILES: [&str; 3] = ["resolv.conf", "hosts", "hostname"];

/// Directories that receive a fresh filesystem.
const MOUNT_DIRS: [&str; 3] = ["dev", "proc", "sys"];

/// Kernel interfaces a step may read but not write (docker's
/// `ReadonlyPaths`): writable as uid 0 even without capabilities, and they
/// reach the host kernel (`echo c > /proc/sysrq-trigger` would crash it).
const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Host information a step has no business reading (docker's `MaskedPaths`).
const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Character devices of the minimal `/dev`: name, major, minor.
const DEVICES: [(&str, u32, u32); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_LINKS: [(&str, &str); 5] = [
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
];

/// The top-most entry for `name` in the lower layers (given top first), or
/// `None` when no layer has it or a whiteout (a 0:0 character device)
/// deletes it.
fn top_most(lowers_top_first: &[PathBuf], name: &str) -> Option<Metadata> {
    for lower in lowers_top_first {
        if let Ok(meta) = fs::symlink_metadata(lower.join(name)) {
            let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
            return (!whiteout).then_some(meta);
        }
    }
    None
}

/// Mode, owner and mtime of the image's `/etc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DirAttrs {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    mtime_nsec: i64,
}

/// Which skeleton a root needs; it depends only on the image's `/etc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skeleton {
    /// The image has no `/etc`: a plain 0755 one holds the mountpoints.
    NoEtc,
    /// The image's `/etc` is a directory with these attributes.
    Etc(DirAttrs),
    /// The image's `/etc` is something else (a symlink, say). A skeleton
    /// `/etc` directory would hide it entirely, so the /etc files are not
    /// bound in.
    EtcNotADirectory,
}

impl Skeleton {
    /// The skeleton for a root made of `lowers_top_first`.
    pub(crate) fn for_layers(lowers_top_first: &[PathBuf]) -> Self {
        match top_most(lowers_top_first, "etc") {
            None => Skeleton::NoEtc,
            Some(meta) if meta.is_dir() => Skeleton::Etc(DirAttrs {
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: meta.mtime(),
                mtime_nsec: meta.mtime_nsec(),
            }),
            Some(_) => Skeleton::EtcNotADirectory,
        }
    }

    /// Whether `/etc/{resolv.conf,hosts,hostname}` can be bound in.
    pub(crate) fn etc_files(self) -> bool {
        self != Skeleton::EtcNotADirectory
    }

    /// The cache entry's name: the attributes themselves, so no hash and no
    /// index are needed. The prefix versions the skeleton's layout.
    fn cache_name(self) -> String {
        match self {
            Skeleton::NoEtc => "v1-etc-none".into(),
            Skeleton::EtcNotADirectory => "v1-etc-nodir".into(),
            Skeleton::Etc(a) => format!(
                "v1-etc-{:o}-{}-{}-{}.{:09}",
                a.mode, a.uid, a.gid, a.mtime, a.mtime_nsec
            ),
        }
    }

    /// The skeleton directory in `cache`, built on first use. `scratch` is a
    /// name unique to this run, to build it in before the atomic rename.
    pub(crate) fn ensure(self, cache: &Path, scratch: &str) -> io::Result<PathBuf> {
        let path = cache.join(self.cache_name());
        if path.is_dir() {
            return Ok(path);
        }
        let tmp = cache.join(format!(".tmp-{scratch}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp)?;
        match self.build(&tmp).and_then(|()| fs::rename(&tmp, &path)) {
            Ok(()) => Ok(path),
            Err(err) => {
                let _ = fs::remove_dir_all(&tmp);
                // Another run may have built the same skeleton first.
                if path.is_dir() { Ok(path) } else { Err(err) }
            }
        }
    }

    fn build(self, dir: &Path) -> io::Result<()> {
        // Mounted over, so their own attributes never show.
        for name in MOUNT_DIRS {
            plain_dir(&dir.join(name))?;
        }
        let attrs = match self {
            Skeleton::EtcNotADirectory => return Ok(()),
            Skeleton::NoEtc => None,
            Skeleton::Etc(attrs) => Some(attrs),
        };
        let etc = dir.join("etc");
        plain_dir(&etc)?;
        for file in ETC_FILES {
            File::create(etc.join(file))?;
            fs::set_permissions(etc.join(file), fs::Permissions::from_mode(0o644))?;
        }
        // Last, as creating the files above changes the mtime.
        if let Some(a) = attrs {
            std::os::unix::fs::lchown(&etc, Some(a.uid), Some(a.gid))?;
            fs::set_permissions(&etc, fs::Permissions::from_mode(a.mode))?;
            let since_epoch = Duration::new(
                a.mtime.max(0) as u64,
                a.mtime_nsec.clamp(0, 999_999_999) as u32,
            );
            File::open(&etc)?.set_times(FileTimes::new().set_modified(UNIX_EPOCH + since_epoch))?;
        }
        Ok(())
    }
}

fn plain_dir(path: &Path) -> io::Result<()> {
    fs::create_dir(path)?;
    // create_dir is subject to the umask.
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

/// One step of the child's setup. Paths are host paths under the new root
/// until `PivotRoot`, container paths after it.
#[derive(Debug)]
pub(crate) enum Op {
    /// `MS_REC|MS_PRIVATE` on `/`, so nothing below propagates to the host.
    MakeRootPrivate,
    /// Sets `lo` up in the new network namespace.
    LoopbackUp,
    /// Moves the detached mount `fd` onto `target`.
    Attach {
        fd: RawFd,
        target: CString,
        what: &'static str,
    },
    Mount {
        source: CString,
        target: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: Option<CString>,
    },
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    /// A character device with permissions `mode`.
    Mknod {
        path: CString,
        mode: libc::mode_t,
        dev: libc::dev_t,
    },
    /// A new file with exactly this mode and content.
    WriteFile {
        path: CString,
        mode: libc::mode_t,
        content: Vec<u8>,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// A fresh read-only sysfs, or the host's bound read-only if the kernel
    /// refuses sysfs here.
    Sysfs {
        target: CString,
        host: CString,
    },
    Bind {
        source: CString,
        target: CString,
    },
    /// Bind the path onto itself read-only, recursively; absent is fine.
    ReadOnly {
        path: CString,
    },
    /// Hide the path: `/dev/null` over a file, an empty read-only tmpfs over
    /// a directory; absent is fine.
    Mask {
        path: CString,
        dev_null: CString,
    },
    SetHostname {
        name: CString,
    },
    /// `pivot_root` into `new_root` and detach the old root.
    PivotRoot {
        new_root: CString,
    },
    Chdir {
        path: CString,
    },
    /// A directory that may already exist (a mountpoint inside another
    /// mount).
    EnsureDir {
        path: CString,
    },
    /// An empty file that may already exist (a mountpoint for a file).
    EnsureFile {
        path: CString,
    },
    /// Makes the mount at `path` read-only, not the ones below it.
    SetReadOnly {
        path: CString,
    },
}

/// A `RUN --mount` ready for the child.
#[derive(Debug)]
pub(crate) struct PlannedMount {
    /// Absolute container path without symlinks.
    pub(crate) target: String,
    pub(crate) source: PlannedSource,
    pub(crate) readonly: bool,
    /// Mountpoints to create first, inside an earlier mount (container
    /// paths, directory or not), when the target is below another target.
    pub(crate) create: Vec<(String, bool)>,
}

#[derive(Debug)]
pub(crate) enum PlannedSource {
    /// Bound from a host path.
    Host(PathBuf),
    /// A detached mount attached at `M/<staging>`, then `subpath` inside it
    /// bound on the target.
    Staged {
        fd: RawFd,
        staging: String,
        subpath: String,
    },
    Tmpfs {
        size: Option<u64>,
    },
    /// A file on the per-run tmpfs at `M/<name>`.
    StateFile {
        name: String,
    },
}

impl Op {
    /// Names the step in an error, with container paths.
    pub(crate) fn describe(&self, root: &Path) -> String {
        let show = |path: &CString| {
            let bytes = path.as_bytes();
            let root = root.as_os_str().as_bytes();
            let inside = bytes.strip_prefix(root).unwrap_or(bytes);
            String::from_utf8_lossy(inside).into_owned()
        };
        match self {
            Op::MakeRootPrivate => "make mounts private".into(),
            Op::LoopbackUp => "bring up loopback".into(),
            Op::Attach { what, .. } => format!("attach {what}"),
            Op::Mount { target, fstype, .. } => {
                format!("mount {} on {}", fstype.to_string_lossy(), show(target))
            }
            Op::Mkdir { path, .. } => format!("create directory {}", show(path)),
            Op::Mknod { path, .. } => format!("create device {}", show(path)),
            Op::WriteFile { path, .. } => format!("create file {}", show(path)),
            Op::Symlink { link, .. } => format!("create symlink {}", show(link)),
            Op::Sysfs { target, .. } => format!("mount sysfs on {}", show(target)),
            Op::Bind { target, .. } => format!("bind {}", show(target)),
            Op::ReadOnly { path } => format!("make {} read-only", show(path)),
            Op::Mask { path, .. } => format!("mask {}", show(path)),
            Op::SetHostname { .. } => "set hostname".into(),
            Op::PivotRoot { .. } => "pivot_root".into(),
            Op::Chdir { path } => format!("change to working directory {}", show(path)),
            Op::EnsureDir { path } => format!("create mountpoint {}", show(path)),
            Op::EnsureFile { path } => format!("create mountpoint {}", show(path)),
            Op::SetReadOnly { path } => format!("make mount {} read-only", show(path)),
        }
    }
}

/// Inputs of [`plan`].
pub(crate) struct PlanInput<'a> {
    /// The directory (`M`) the child attaches the per-run tmpfs on.
    pub(crate) mountpoint: &'a Path,
    /// The per-run tmpfs: an empty `root` directory and, when `etc_files`,
    /// `etc/` with the files named in [`ETC_FILES`].
    pub(crate) state_fd: RawFd,
    /// The step's detached overlay.
    pub(crate) overlay_fd: RawFd,
    pub(crate) etc_files: bool,
    pub(crate) hostname: &'a str,
    pub(crate) network: NetworkMode,
    /// Absolute working directory inside the root.
    pub(crate) cwd: &'a str,
    /// Files for the step's `/dev` (paths already checked to be below it).
    pub(crate) files: &'a [StepFile],
    /// Leaves docker's masked and read-only `/proc` paths alone.
    pub(crate) privileged: bool,
    /// `RUN --mount`s, parents before the mounts inside them.
    pub(crate) mounts: &'a [PlannedMount],
    /// Size of the `/dev/shm` tmpfs in bytes.
    pub(crate) shm_size: u64,
}

/// Where the overlay is attached in the child, for `mountpoint`.
pub(crate) fn root_of(mountpoint: &Path) -> PathBuf {
    mountpoint.join("root")
}

fn host_path(path: &Path) -> Result<CString, NulError> {
    CString::new(path.as_os_str().as_bytes())
}

/// The child's setup, in order.
pub(crate) fn plan(input: &PlanInput<'_>) -> Result<Vec<Op>, NulError> {
    let root = root_of(input.mountpoint);
    let at = |inside: &str| host_path(&root.join(inside.trim_start_matches('/')));
    let string = |s: &str| CString::new(s);
    let mut ops = vec![Op::MakeRootPrivate];
    if input.network == NetworkMode::None {
        ops.push(Op::LoopbackUp);
    }
    ops.push(Op::Attach {
        fd: input.state_fd,
        target: host_path(input.mountpoint)?,
        what: "sandbox state",
    });
    ops.push(Op::Attach {
        fd: input.overlay_fd,
        target: host_path(&root)?,
        what: "root filesystem",
    });
    ops.push(Op::Mount {
        source: string("proc")?,
        target: at("proc")?,
        fstype: string("proc")?,
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: None,
    });
    ops.push(Op::Mount {
        source: string("tmpfs")?,
        target: at("dev")?,
        fstype: string("tmpfs")?,
        flags: libc::MS_NOSUID | libc::MS_STRICTATIME,
        data: Some(string("mode=755,size=65536k")?),
    });
    for (name, major, minor) in DEVICES {
        ops.push(Op::Mknod {
            path: at(&format!("dev/{name}"))?,
            mode: 0o666,
            dev: libc::makedev(major, minor),
        });
    }
    for (name, target) in DEV_LINKS {
        ops.push(Op::Symlink {
            target: string(target)?,
            link: at(&format!("dev/{name}"))?,
        });
    }
    ops.push(Op::Mkdir {
        path: at("dev/pts")?,
        mode: 0o755,
    });
    ops.push(Op::Mount {
        source: string("devpts")?,
        target: at("dev/pts")?,
        fstype: string("devpts")?,
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        // gid 5 is "tty" in Debian, Alpine and Fedora images, as docker assumes.
        data: Some(string("newinstance,ptmxmode=0666,mode=0620,gid=5")?),
    });
    ops.push(Op::Mkdir {
        path: at("dev/shm")?,
        mode: 0o1777,
    });
    ops.push(Op::Mount {
        source: string("shm")?,
        target: at("dev/shm")?,
        fstype: string("tmpfs")?,
        flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        data: Some(string(&format!("mode=1777,size={}", input.shm_size))?),
    });
    // Directories the /dev tmpfs already has at this point.
    let mut dev_dirs: Vec<String> = vec!["dev/pts".into(), "dev/shm".into()];
    for file in input.files {
        let inside = file.path.trim_start_matches('/');
        let mut dir = String::new();
        let parents: Vec<&str> = inside.split('/').collect();
        for component in &parents[..parents.len() - 1] {
            if !dir.is_empty() {
                dir.push('/');
            }
            dir.push_str(component);
            if dir != "dev" && !dev_dirs.contains(&dir) {
                ops.push(Op::Mkdir {
                    path: at(&dir)?,
                    mode: 0o755,
                });
                dev_dirs.push(dir.clone());
            }
        }
        ops.push(Op::WriteFile {
            path: at(inside)?,
            mode: file.mode,
            content: file.content.clone(),
        });
    }
    ops.push(Op::Sysfs {
        target: at("sys")?,
        host: string("/sys")?,
    });
    let (readonly, masked): (&[&str], &[&str]) = if input.privileged {
        (&[], &[])
    } else {
        (&READONLY_PATHS, &MASKED_PATHS)
    };
    for path in readonly {
        ops.push(Op::ReadOnly { path: at(path)? });
    }
    for path in masked {
        ops.push(Op::Mask {
            path: at(path)?,
            dev_null: string("/dev/null")?,
        });
    }
    if input.etc_files {
        for file in ETC_FILES {
            ops.push(Op::Bind {
                source: host_path(&input.mountpoint.join("etc").join(file))?,
                target: at(&format!("etc/{file}"))?,
            });
        }
    }
    for mount in input.mounts {
        for (path, dir) in &mount.create {
            let path = at(path)?;
            ops.push(if *dir {
                Op::EnsureDir { path }
            } else {
                Op::EnsureFile { path }
            });
        }
        let target = at(&mount.target)?;
        match &mount.source {
            PlannedSource::Host(source) => ops.push(Op::Bind {
                source: host_path(source)?,
                target,
            }),
            PlannedSource::Staged {
                fd,
                staging,
                subpath,
            } => {
                let staged = input.mountpoint.join(staging);
                ops.push(Op::Attach {
                    fd: *fd,
                    target: host_path(&staged)?,
                    what: "mount source",
                });
                let source = if subpath.is_empty() {
                    staged
                } else {
                    staged.join(subpath)
                };
                ops.push(Op::Bind {
                    source: host_path(&source)?,
                    target,
                });
            }
            PlannedSource::Tmpfs { size } => {
                let mut data = "mode=1777".to_owned();
                if let Some(size) = size {
                    data.push_str(&format!(",size={size}"));
                }
                ops.push(Op::Mount {
                    source: string("tmpfs")?,
                    target,
                    fstype: string("tmpfs")?,
                    flags: libc::MS_NOSUID | libc::MS_NODEV | libc::MS_STRICTATIME,
                    data: Some(string(&data)?),
                });
            }
            PlannedSource::StateFile { name } => ops.push(Op::Bind {
                source: host_path(&input.mountpoint.join(name))?,
                target,
            }),
        }
        // Before any mount inside it: a mountpoint that does not exist in a
        // read-only source cannot be created there (never in the build
        // context itself), as with runc.
        if mount.readonly {
            ops.push(Op::SetReadOnly {
                path: at(&mount.target)?,
            });
        }
    }
    ops.push(Op::SetHostname {
        name: string(input.hostname)?,
    });
    ops.push(Op::PivotRoot {
        new_root: host_path(&root)?,
    });
    ops.push(Op::Chdir {
        path: string(input.cwd)?,
    });
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn skeleton_copies_image_etc_attributes_and_is_cached() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper_layer, lower_layer, cache) = (
            tmp.path().join("l1"),
            tmp.path().join("l0"),
            tmp.path().join("cache"),
        );
        for dir in [&upper_layer, &lower_layer, &cache] {
            fs::create_dir(dir).unwrap();
        }
        fs::create_dir(lower_layer.join("etc")).unwrap();
        fs::set_permissions(lower_layer.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        let old = UNIX_EPOCH + Duration::new(1_000_000, 123);
        File::open(lower_layer.join("etc"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let layers = [upper_layer, lower_layer];
        let skeleton = Skeleton::for_layers(&layers);
        assert!(skeleton.etc_files());
        let skel = skeleton.ensure(&cache, "a").unwrap();
        let etc = fs::metadata(skel.join("etc")).unwrap();
        assert_eq!(etc.mode() & 0o7777, 0o750);
        assert_eq!(etc.modified().unwrap(), old);
        for name in ["dev", "proc", "sys"] {
            let meta = fs::metadata(skel.join(name)).unwrap();
            assert!(meta.is_dir());
            assert_eq!(meta.mode() & 0o7777, 0o755);
        }
        for file in ETC_FILES {
            let meta = fs::metadata(skel.join("etc").join(file)).unwrap();
            assert!(meta.is_file() && meta.len() == 0);
        }
        // The same attributes reuse the entry; nothing else is left behind.
        assert_eq!(
            Skeleton::for_layers(&layers).ensure(&cache, "b").unwrap(),
            skel
        );
        assert_eq!(fs::read_dir(&cache).unwrap().count(), 1);
        // Other attributes make another skeleton.
        fs::set_permissions(layers[1].join("etc"), fs::Permissions::from_mode(0o755)).unwrap();
        let other = Skeleton::for_layers(&layers).ensure(&cache, "c").unwrap();
        assert_ne!(other, skel);
        assert_eq!(
            fs::metadata(other.join("etc")).unwrap().mode() & 0o7777,
            0o755
        );
    }

    #[test]
    fn skeleton_without_image_etc_or_with_a_non_directory_etc() {
        let tmp = tempfile::tempdir().unwrap();
        let (layer, cache) = (tmp.path().join("l0"), tmp.path().join("cache"));
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&cache).unwrap();
        let layers = [layer.clone()];
        assert_eq!(Skeleton::for_layers(&layers), Skeleton::NoEtc);
        let skel = Skeleton::NoEtc.ensure(&cache, "a").unwrap();
        assert!(skel.join("etc/hosts").is_file());
        assert_eq!(
            fs::metadata(skel.join("etc")).unwrap().mode() & 0o7777,
            0o755
        );

        symlink("usr/etc", layer.join("etc")).unwrap();
        let skeleton = Skeleton::for_layers(&layers);
        assert!(!skeleton.etc_files());
        let skel = skeleton.ensure(&cache, "b").unwrap();
        assert!(!skel.join("etc").exists());
        assert!(skel.join("proc").is_dir());

        // A whiteout in a higher layer deletes the lower /etc.
        let upper = tmp.path().join("l1");
        fs::create_dir(&upper).unwrap();
        nix::sys::stat::mknod(
            &upper.join("etc"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .ok();
        if upper.join("etc").exists() {
            assert_eq!(Skeleton::for_layers(&[upper, layer]), Skeleton::NoEtc);
        }
    }

    #[test]
    fn privileged_steps_keep_proc_unmasked() {
        let input = |privileged| PlanInput {
            mountpoint: Path::new("/m"),
            state_fd: 3,
            overlay_fd: 4,
            etc_files: true,
            hostname: "h",
            network: NetworkMode::Host,
            cwd: "/",
            files: &[],
            privileged,
            mounts: &[],
            shm_size: crate::sandbox::DEFAULT_SHM_SIZE,
        };
        let count = |privileged| {
            plan(&input(privileged))
                .unwrap()
                .iter()
                .filter(|op| matches!(op, Op::Mask { .. } | Op::ReadOnly { .. }))
                .count()
        };
        assert_eq!(count(false), READONLY_PATHS.len() + MASKED_PATHS.len());
        assert_eq!(count(true), 0);
    }

    #[test]
    fn step_files_go_on_the_dev_tmpfs() {
        let files = [
            StepFile {
                path: "/dev/pipes/EOF".into(),
                mode: 0o755,
                content: b"#!/bin/sh\n".to_vec(),
            },
            StepFile {
                path: "/dev/pipes/OTHER".into(),
                mode: 0o644,
                content: Vec::new(),
            },
            StepFile {
                path: "/dev/shm/x".into(),
                mode: 0o600,
                content: Vec::new(),
            },
        ];
        let input = PlanInput {
            mountpoint: Path::new("/m"),
            state_fd: 3,
            overlay_fd: 4,
            etc_files: true,
            hostname: "h",
            network: NetworkMode::Host,
            cwd: "/",
            files: &files,
            privileged: false,
            mounts: &[],
            shm_size: crate::sandbox::DEFAULT_SHM_SIZE,
        };
        let ops = plan(&input).unwrap();
        let root = root_of(Path::new("/m"));
        let described: Vec<String> = ops.iter().map(|op| op.describe(&root)).collect();
        let at = |what: &str| described.iter().position(|d| d == what);
        let shm = at("mount tmpfs on /dev/shm").unwrap();
        // One directory for both pipes, none for shm, all after /dev is up.
        assert_eq!(
            described
                .iter()
                .filter(|d| d.starts_with("create directory /dev/"))
                .collect::<Vec<_>>(),
            [
                "create directory /dev/pts",
                "create directory /dev/shm",
                "create directory /dev/pipes"
            ]
        );
        let pipes = at("create directory /dev/pipes").unwrap();
        assert!(shm < pipes && pipes < at("create file /dev/pipes/EOF").unwrap());
        assert!(at("create file /dev/pipes/OTHER").is_some());
        assert!(at("create file /dev/shm/x").unwrap() < at("pivot_root").unwrap());
        let script = ops.iter().find_map(|op| match op {
            Op::WriteFile {
                path,
                mode,
                content,
            } if path.as_bytes().ends_with(b"/dev/pipes/EOF") => Some((*mode, content.clone())),
            _ => None,
        });
        assert_eq!(script, Some((0o755, b"#!/bin/sh\n".to_vec())));
    }

    #[test]
    fn run_mounts_follow_the_sandbox_mounts_each_read_only_before_the_next() {
        let mounts = [
            PlannedMount {
                target: "/src".into(),
                source: PlannedSource::Staged {
                    fd: 9,
                    staging: "mnt0".into(),
                    subpath: "app".into(),
                },
                readonly: true,
                create: Vec::new(),
            },
            PlannedMount {
                target: "/src/cache/go".into(),
                source: PlannedSource::Host(PathBuf::from("/root/mounts/abc")),
                readonly: false,
                create: vec![("/src/cache".into(), true), ("/src/cache/go".into(), true)],
            },
            PlannedMount {
                target: "/run/secrets/tok".into(),
                source: PlannedSource::StateFile {
                    name: "file2".into(),
                },
                readonly: true,
                create: Vec::new(),
            },
            PlannedMount {
                target: "/tmp/t".into(),
                source: PlannedSource::Tmpfs {
                    size: Some(1 << 20),
                },
                readonly: false,
                create: Vec::new(),
            },
        ];
        let input = PlanInput {
            mountpoint: Path::new("/m"),
            state_fd: 3,
            overlay_fd: 4,
            etc_files: true,
            hostname: "h",
            network: NetworkMode::Host,
            cwd: "/",
            files: &[],
            privileged: false,
            mounts: &mounts,
            shm_size: crate::sandbox::DEFAULT_SHM_SIZE,
        };
        let ops = plan(&input).unwrap();
        let root = root_of(Path::new("/m"));
        let described: Vec<String> = ops.iter().map(|op| op.describe(&root)).collect();
        let first = described
            .iter()
            .position(|d| d == "attach mount source")
            .unwrap();
        assert!(
            first
                > described
                    .iter()
                    .position(|d| d == "bind /etc/hostname")
                    .unwrap()
        );
        assert_eq!(
            described[first..described.len() - 3],
            [
                "attach mount source",
                "bind /src",
                "make mount /src read-only",
                "create mountpoint /src/cache",
                "create mountpoint /src/cache/go",
                "bind /src/cache/go",
                "bind /run/secrets/tok",
                "make mount /run/secrets/tok read-only",
                "mount tmpfs on /tmp/t",
            ]
        );
        let binds: Vec<(&str, &str)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Bind { source, target } => {
                    Some((source.to_str().unwrap(), target.to_str().unwrap()))
                }
                _ => None,
            })
            .skip(3)
            .collect();
        assert_eq!(
            binds,
            [
                ("/m/mnt0/app", "/m/root/src"),
                ("/root/mounts/abc", "/m/root/src/cache/go"),
                ("/m/file2", "/m/root/run/secrets/tok"),
            ]
        );
        assert!(ops.iter().any(|op| matches!(
            op,
            Op::Mount { data: Some(data), .. } if data.to_str() == Ok("mode=1777,size=1048576")
        )));
    }

    #[test]
    fn plan_orders_setup_and_names_container_paths() {
        let mountpoint = Path::new("/state/mnt");
        let input = PlanInput {
            mountpoint,
            state_fd: 7,
            overlay_fd: 8,
            etc_files: true,
            hostname: "box",
            network: NetworkMode::None,
            cwd: "/work",
            files: &[],
            privileged: false,
            mounts: &[],
            shm_size: crate::sandbox::DEFAULT_SHM_SIZE,
        };
        let ops = plan(&input).unwrap();
        assert!(matches!(ops[0], Op::MakeRootPrivate));
        assert!(matches!(ops[1], Op::LoopbackUp));
        assert!(
            matches!(&ops[2], Op::Attach { fd: 7, target, .. } if target.as_bytes() == b"/state/mnt")
        );
        assert!(
            matches!(&ops[3], Op::Attach { fd: 8, target, .. } if target.as_bytes() == b"/state/mnt/root")
        );
        let pivot = ops
            .iter()
            .position(|op| matches!(op, Op::PivotRoot { .. }))
            .unwrap();
        assert_eq!(pivot, ops.len() - 2);
        let root = root_of(mountpoint);
        let described: Vec<String> = ops.iter().map(|op| op.describe(&root)).collect();
        for expected in [
            "attach root filesystem",
            "mount proc on /proc",
            "create device /dev/null",
            "mount devpts on /dev/pts",
            "bind /etc/resolv.conf",
            "bind /etc/hosts",
            "make /proc/sysrq-trigger read-only",
            "change to working directory /work",
        ] {
            assert!(
                described.iter().any(|d| d == expected),
                "{expected} in {described:?}"
            );
        }
        let binds: Vec<_> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Bind { source, .. } => Some(source.to_str().unwrap()),
                _ => None,
            })
            .collect();
        assert_eq!(
            binds,
            vec![
                "/state/mnt/etc/resolv.conf",
                "/state/mnt/etc/hosts",
                "/state/mnt/etc/hostname"
            ]
        );
        let host = PlanInput {
            network: NetworkMode::Host,
            etc_files: false,
            ..input
        };
        let ops = plan(&host).unwrap();
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::LoopbackUp | Op::Bind { .. }))
        );
    }
}
