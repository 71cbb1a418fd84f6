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
//! would put them in the upperdir, i.e. in the layer. Instead each run gets
//! a tiny skeleton directory holding exactly those entries, stacked as the
//! top-most lowerdir: the merged root then always has the mountpoints, the
//! upperdir only ever receives what the step itself writes, and nothing has
//! to be cleaned up afterwards. Skeleton directories copy mode, owner and
//! mtime from the image's own directory, if any, so `/etc` keeps its
//! attributes when the step copies it up.

use std::ffi::{CString, NulError};
use std::fs::{self, File, FileTimes, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::NetworkMode;

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

/// What the skeleton provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Skeleton {
    /// Whether `/etc/{resolv.conf,hosts,hostname}` can be bound in. Not when
    /// the image's `/etc` is something other than a directory (a symlink,
    /// say): a skeleton `/etc` directory would hide it entirely.
    pub(crate) etc_files: bool,
}

/// Fills the empty directory `skel` with the mountpoints, given the image's
/// lowerdirs top first.
pub(crate) fn build_skeleton(skel: &Path, lowers_top_first: &[PathBuf]) -> io::Result<Skeleton> {
    for name in MOUNT_DIRS {
        let dir = skel.join(name);
        fs::DirBuilder::new().create(&dir)?;
        take_attributes(&dir, top_most(lowers_top_first, name).as_ref())?;
    }
    let etc = top_most(lowers_top_first, "etc");
    let etc_files = etc.as_ref().is_none_or(|meta| meta.is_dir());
    if etc_files {
        let dir = skel.join("etc");
        fs::DirBuilder::new().create(&dir)?;
        for file in ETC_FILES {
            File::create(dir.join(file))?;
            fs::set_permissions(dir.join(file), fs::Permissions::from_mode(0o644))?;
        }
        // Last, as creating the files above changes the mtime.
        take_attributes(&dir, etc.as_ref())?;
    }
    Ok(Skeleton { etc_files })
}

/// Gives the skeleton directory `path` the mode, owner and times of the
/// image's directory `like`, or plain 0755 when the image has none.
fn take_attributes(path: &Path, like: Option<&Metadata>) -> io::Result<()> {
    let Some(like) = like.filter(|meta| meta.is_dir()) else {
        return fs::set_permissions(path, fs::Permissions::from_mode(0o755));
    };
    std::os::unix::fs::lchown(path, Some(like.uid()), Some(like.gid()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(like.mode() & 0o7777))?;
    let times = FileTimes::new()
        .set_accessed(like.accessed()?)
        .set_modified(like.modified()?);
    File::open(path)?.set_times(times)
}

/// One step of the child's setup. Paths are host paths under the new root
/// until `PivotRoot`, container paths after it.
#[derive(Debug)]
pub(crate) enum Op {
    /// `MS_REC|MS_PRIVATE` on `/`, so nothing below propagates to the host.
    MakeRootPrivate,
    /// Sets `lo` up in the new network namespace.
    LoopbackUp,
    /// Moves the detached overlay mount onto `target`.
    AttachRoot {
        target: CString,
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
            Op::AttachRoot { .. } => "attach root filesystem".into(),
            Op::Mount { target, fstype, .. } => {
                format!("mount {} on {}", fstype.to_string_lossy(), show(target))
            }
            Op::Mkdir { path, .. } => format!("create directory {}", show(path)),
            Op::Mknod { path, .. } => format!("create device {}", show(path)),
            Op::Symlink { link, .. } => format!("create symlink {}", show(link)),
            Op::Sysfs { target, .. } => format!("mount sysfs on {}", show(target)),
            Op::Bind { target, .. } => format!("bind {}", show(target)),
            Op::ReadOnly { path } => format!("make {} read-only", show(path)),
            Op::Mask { path, .. } => format!("mask {}", show(path)),
            Op::SetHostname { .. } => "set hostname".into(),
            Op::PivotRoot { .. } => "pivot_root".into(),
            Op::Chdir { path } => format!("change to working directory {}", show(path)),
        }
    }
}

/// Inputs of [`plan`].
pub(crate) struct PlanInput<'a> {
    /// Host directory the overlay is attached to in the child.
    pub(crate) root: &'a Path,
    /// Host directory holding the files named in [`ETC_FILES`], when the
    /// skeleton made room for them.
    pub(crate) etc_source: Option<&'a Path>,
    pub(crate) hostname: &'a str,
    pub(crate) network: NetworkMode,
    /// Absolute working directory inside the root.
    pub(crate) cwd: &'a str,
}

fn host_path(path: &Path) -> Result<CString, NulError> {
    CString::new(path.as_os_str().as_bytes())
}

/// The child's setup, in order.
pub(crate) fn plan(input: &PlanInput<'_>) -> Result<Vec<Op>, NulError> {
    let at = |inside: &str| host_path(&input.root.join(inside.trim_start_matches('/')));
    let string = |s: &str| CString::new(s);
    let mut ops = vec![Op::MakeRootPrivate];
    if input.network == NetworkMode::None {
        ops.push(Op::LoopbackUp);
    }
    ops.push(Op::AttachRoot {
        target: host_path(input.root)?,
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
        data: Some(string("mode=1777,size=65536k")?),
    });
    ops.push(Op::Sysfs {
        target: at("sys")?,
        host: string("/sys")?,
    });
    for path in READONLY_PATHS {
        ops.push(Op::ReadOnly { path: at(path)? });
    }
    for path in MASKED_PATHS {
        ops.push(Op::Mask {
            path: at(path)?,
            dev_null: string("/dev/null")?,
        });
    }
    if let Some(source) = input.etc_source {
        for file in ETC_FILES {
            ops.push(Op::Bind {
                source: host_path(&source.join(file))?,
                target: at(&format!("etc/{file}"))?,
            });
        }
    }
    ops.push(Op::SetHostname {
        name: string(input.hostname)?,
    });
    ops.push(Op::PivotRoot {
        new_root: host_path(input.root)?,
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
    fn skeleton_copies_image_directory_attributes() {
        let tmp = tempfile::tempdir().unwrap();
        let (upper_layer, lower_layer, skel) = (
            tmp.path().join("l1"),
            tmp.path().join("l0"),
            tmp.path().join("skel"),
        );
        for dir in [&upper_layer, &lower_layer, &skel] {
            fs::create_dir(dir).unwrap();
        }
        fs::create_dir(lower_layer.join("etc")).unwrap();
        fs::set_permissions(lower_layer.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        File::open(lower_layer.join("etc"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        let skeleton = build_skeleton(&skel, &[upper_layer, lower_layer]).unwrap();
        assert!(skeleton.etc_files);
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
    }

    #[test]
    fn skeleton_leaves_a_non_directory_etc_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (layer, skel) = (tmp.path().join("l0"), tmp.path().join("skel"));
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&skel).unwrap();
        symlink("usr/etc", layer.join("etc")).unwrap();
        let skeleton = build_skeleton(&skel, &[layer]).unwrap();
        assert!(!skeleton.etc_files);
        assert!(!skel.join("etc").exists());
        assert!(skel.join("proc").is_dir());
    }

    #[test]
    fn plan_orders_setup_and_names_container_paths() {
        let root = Path::new("/state/run/root");
        let etc = Path::new("/state/run/etc");
        let input = PlanInput {
            root,
            etc_source: Some(etc),
            hostname: "box",
            network: NetworkMode::None,
            cwd: "/work",
        };
        let ops = plan(&input).unwrap();
        assert!(matches!(ops[0], Op::MakeRootPrivate));
        assert!(matches!(ops[1], Op::LoopbackUp));
        assert!(matches!(ops[2], Op::AttachRoot { .. }));
        let pivot = ops
            .iter()
            .position(|op| matches!(op, Op::PivotRoot { .. }))
            .unwrap();
        assert_eq!(pivot, ops.len() - 2);
        let described: Vec<String> = ops.iter().map(|op| op.describe(root)).collect();
        for expected in [
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
        let host = PlanInput {
            network: NetworkMode::Host,
            etc_source: None,
            ..input
        };
        let ops = plan(&host).unwrap();
        assert!(
            !ops.iter()
                .any(|op| matches!(op, Op::LoopbackUp | Op::Bind { .. }))
        );
    }
}
