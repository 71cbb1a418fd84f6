//! The Linux executor: overlayfs through the new mount API, `clone3` into
//! fresh namespaces, the child's setup up to `execve`, and the parent's
//! event loop (output, exit, cancellation). The only module with `unsafe`.
//!
//! Shape of one run:
//!
//! 1. Parent, free to allocate: write the per-run state (skeleton layer,
//!    resolv.conf, hosts, hostname), mount the overlay *detached*
//!    (`fsopen`/`fsconfig`/`fsmount`, never visible in the host's mount
//!    table), resolve USER and create WORKDIR through that mount, and build
//!    every string the child will need.
//! 2. `clone3` with new mount, PID, UTS and IPC (and network) namespaces and
//!    `CLONE_PIDFD`. The child is PID 1 of its namespace.
//! 3. Child, a copy of one thread of a multi-threaded process: no
//!    allocation, no locks, no glibc functions with process-wide state, only
//!    thin syscall wrappers over data the parent prepared. It attaches the
//!    overlay, mounts /proc, /dev, /sys, binds the /etc files,
//!    `pivot_root`s, drops capabilities, switches user and `execve`s. A
//!    failure is written to a CLOEXEC pipe as (step, errno), so the parent
//!    can say which step failed and why; a successful `execve` closes the
//!    pipe instead.
//! 4. Parent: stream stdout/stderr, wait on the pidfd, and on cancellation
//!    SIGKILL the child through the pidfd. When PID 1 of a namespace dies the
//!    kernel kills and reaps everything else in it before reporting the
//!    exit, so a finished run has left no process behind.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Write};
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::signal::Signal;

use super::caps::{CapSet, DOCKER_DEFAULT_CAPS};
use super::env::{DEFAULT_PATH, command_candidates, env_get, validate, with_process_defaults};
use super::mounts::{self, ETC_FILES, Op, PlanInput, Skeleton};
use super::rootfs;
use super::stubs::{self, PreparedMounts};
use super::user::{self, ResolvedUser};
use super::{
    CancelHandle, Executor, Input, NetworkMode, Output, RunOutcome, RunSpec, SandboxError, StepIo,
    Termination, Ulimit,
};

/// DNS servers when the host has no usable `/etc/resolv.conf`; docker's
/// fallback.
const FALLBACK_RESOLV_CONF: &str = "nameserver 8.8.8.8\nnameserver 8.8.4.4\n";

/// The built-in [`Executor`]: Linux namespaces and overlayfs, no helper
/// binary. Needs root (CAP_SYS_ADMIN in the initial user namespace) and
/// Linux 6.8 or later (overlay's `lowerdir+`).
///
/// `run` blocks the calling thread, which must stay alive until it returns:
/// the child dies with that thread (`PR_SET_PDEATHSIG`), so that it also
/// dies with builder. Nothing else in the process may reap children with
/// `waitpid(-1)` or set SIGCHLD to SIG_IGN.
#[derive(Debug, Clone)]
pub struct LinuxExecutor {
    /// An empty directory each step mounts its tmpfs on, inside its own
    /// mount namespace.
    mountpoint: PathBuf,
    /// Cached skeleton layers (see `mounts.rs`).
    skeletons: PathBuf,
    /// Per-run stub layers for `RUN --mount` targets (see `stubs.rs`).
    stubs: PathBuf,
    resolv_conf: Option<String>,
    cap_last: u8,
    durable: bool,
}

impl LinuxExecutor {
    /// An executor keeping its state under `state_dir`, e.g.
    /// `$BUILDER_ROOT/sandbox`: an empty mountpoint directory and the
    /// cached skeleton layers, a few empty files each. A step writes nothing
    /// there; its own state lives on a tmpfs that disappears with it.
    pub fn new(state_dir: impl AsRef<Path>) -> Result<Self, SandboxError> {
        let state_dir = state_dir.as_ref();
        let mountpoint = state_dir.join("mnt");
        let skeletons = state_dir.join("skeletons");
        let stubs = state_dir.join("stubs");
        for dir in [&mountpoint, &skeletons, &stubs] {
            fs::create_dir_all(dir).map_err(|source| SandboxError::State {
                path: dir.clone(),
                source,
            })?;
        }
        stubs::remove_stale(&stubs);
        // Older kernels reject dropping capabilities they do not know; 40 is
        // CAP_CHECKPOINT_RESTORE, the last one as of Linux 6.18.
        let cap_last = fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(40);
        Ok(Self {
            mountpoint,
            skeletons,
            stubs,
            resolv_conf: None,
            cap_last,
            durable: false,
        })
    }

    /// Whether the kernel syncs the upperdir when a step's overlay goes
    /// away. Off by default: overlay is mounted `volatile`, because its
    /// unmount otherwise runs `syncfs` on the upperdir's whole filesystem,
    /// 15-40 ms a step on a busy disk and most of a step's cost. The upperdir
    /// is complete and visible as soon as `run` returns either way; only its
    /// durability across a power loss differs, and the store makes layers
    /// durable when it commits them.
    pub fn durable(mut self, durable: bool) -> Self {
        self.durable = durable;
        self
    }

    /// Uses `contents` as every step's `/etc/resolv.conf` instead of the
    /// host's.
    pub fn with_resolv_conf(mut self, contents: impl Into<String>) -> Self {
        self.resolv_conf = Some(contents.into());
        self
    }

    fn resolv_conf(&self) -> String {
        if let Some(contents) = &self.resolv_conf {
            return contents.clone();
        }
        match fs::read_to_string("/etc/resolv.conf") {
            Ok(text)
                if text
                    .lines()
                    .any(|l| l.trim_start().starts_with("nameserver")) =>
            {
                text
            }
            _ => FALLBACK_RESOLV_CONF.to_owned(),
        }
    }
}

impl Executor for LinuxExecutor {
    fn run(
        &self,
        spec: &RunSpec,
        io: StepIo<'_>,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        let started = Instant::now();
        if cancel.is_cancelled() {
            return Err(SandboxError::Cancelled);
        }
        check_spec(spec, &io)?;
        let lowers_top_first: Vec<PathBuf> = spec.rootfs.lowerdirs.iter().rev().cloned().collect();
        let skeleton = Skeleton::for_layers(&lowers_top_first);
        let scratch = format!(
            "{}-{}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        );
        let skel = skeleton
            .ensure(&self.skeletons, &scratch)
            .map_err(|source| SandboxError::State {
                path: self.skeletons.clone(),
                source,
            })?;
        let prepared = stubs::prepare(spec)?;
        let state = self.state_tmpfs(spec, skeleton.etc_files(), &prepared)?;
        // Declared before the overlay so that it runs after the overlay fd,
        // the mount's last reference, has been dropped.
        let _volatile_mark = (!self.durable).then(|| VolatileMark(spec.rootfs.workdir.clone()));
        // The stub layer lives on the per-run tmpfs, reached through its fd.
        let stub_layer = (!prepared.stubs.is_empty()).then(|| {
            PathBuf::from(format!(
                "/proc/self/fd/{}/{}",
                state.as_raw_fd(),
                stubs::STUB_LAYER
            ))
        });
        let disk_stubs;
        let overlay = match mount_overlay(
            stub_layer.as_deref(),
            &skel,
            &lowers_top_first,
            spec,
            self.durable,
        ) {
            // Before Linux 6.15 a detached mount cannot be a layer.
            Err(_) if stub_layer.is_some() => {
                disk_stubs = prepared.stub_layer_on_disk(&self.stubs).map_err(|source| {
                    SandboxError::State {
                        path: self.stubs.clone(),
                        source,
                    }
                })?;
                mount_overlay(
                    Some(disk_stubs.path()),
                    &skel,
                    &lowers_top_first,
                    spec,
                    self.durable,
                )?
            }
            other => other?,
        };
        let user = resolve_user(overlay.as_fd(), spec)?;
        // Cleaned as docker cleans WORKDIR, so that `/a/../b` needs no `/a`.
        let cwd = format!("/{}", rootfs::clean_components(&spec.cwd).join("/"));
        rootfs::ensure_dir(overlay.as_fd(), &cwd, user.uid, user.gid).map_err(|source| {
            SandboxError::Workdir {
                path: spec.cwd.clone(),
                source,
            }
        })?;

        let ops = mounts::plan(&PlanInput {
            mountpoint: &self.mountpoint,
            state_fd: state.as_raw_fd(),
            overlay_fd: overlay.as_raw_fd(),
            etc_files: skeleton.etc_files(),
            hostname: &spec.hostname,
            network: spec.network,
            cwd: &cwd,
            files: &spec.files,
            privileged: spec.privileged,
            mounts: &prepared.mounts,
            shm_size: spec.shm_size,
        })
        .map_err(|_| invalid("a path contains a nul byte"))?;
        let command = Command::new(spec, &user)?;
        let caps = if spec.privileged {
            let all = CapSet::all_up_to(self.cap_last);
            CapSet::from_mask(all.mask() & CapSet::own_permitted().map_or(all.mask(), CapSet::mask))
        } else {
            DOCKER_DEFAULT_CAPS
        };
        let drop_caps: Vec<libc::c_ulong> = caps
            .missing_up_to(self.cap_last)
            .into_iter()
            .map(|cap| libc::c_ulong::from(cap.number()))
            .collect();
        let groups: Vec<libc::gid_t> = user.groups.clone();

        let mut stdio = Stdio::open(&io)?;
        let (err_read, err_write) = pipe().map_err(spawn_error("error pipe"))?;
        let (sync_read, sync_write) = pipe().map_err(spawn_error("sync pipe"))?;
        let child = ChildContext {
            ops: &ops,
            report: err_write.as_raw_fd(),
            sync_read: sync_read.as_raw_fd(),
            sync_write: sync_write.as_raw_fd(),
            stdio: stdio.child_fds(),
            loopback: loopback_request(),
            drop_caps: &drop_caps,
            cap_mask: caps.mask(),
            groups: &groups,
            rlimits: &spec.rlimits,
            uid: user.uid,
            gid: user.gid,
            command: &command,
        };
        let mut flags =
            libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC;
        if spec.network == NetworkMode::None {
            flags |= libc::CLONE_NEWNET;
        }
        let pidfd = Arc::new(spawn(flags as u64, &child).map_err(spawn_error("clone3"))?);
        let mut reaper = Reaper {
            pidfd: Arc::clone(&pidfd),
            reaped: false,
        };
        // The child's ends: the report pipe must reach EOF when the child
        // execs, and the sync pipe when this process dies.
        drop((err_write, sync_read));
        stdio.close_child_ends();
        let target_pidfd = Arc::clone(&pidfd);
        let _attached = cancel.attach(Arc::new(move |signal: Signal| {
            send_signal(target_pidfd.as_fd(), signal as i32).is_ok()
        }));
        // Releases the child only now that it is attached: a cancellation
        // from here on reaches it.
        let _ = write_all_fd(sync_write.as_fd(), b"g");
        drop(sync_write);

        let events = event_loop(pidfd.as_fd(), err_read, &mut stdio, io)?;
        reaper.reaped = true;
        let status = events.status;
        if let Some(failure) = events.failure {
            if failure.step != STEP_EXEC {
                let step = describe_step(failure.step, &ops, &mounts::root_of(&self.mountpoint));
                if cancel.is_cancelled() {
                    return Err(SandboxError::Cancelled);
                }
                return Err(SandboxError::Setup {
                    step,
                    source: Errno::from_raw(failure.errno),
                });
            }
        }
        if cancel.is_cancelled() && status == WaitResult::Signaled(libc::SIGKILL) {
            return Err(SandboxError::Cancelled);
        }
        if let Some(error) = events.output_error {
            return Err(SandboxError::Output(error));
        }
        let termination = match (events.failure, status) {
            (Some(failure), _) => exec_failure(&spec.argv[0], failure.errno),
            (None, WaitResult::Exited(code)) => Termination::Exited(code),
            (None, WaitResult::Signaled(signal)) => Termination::Signaled(signal),
        };
        Ok(RunOutcome {
            termination,
            elapsed: started.elapsed(),
        })
    }
}

fn invalid(message: impl Into<String>) -> SandboxError {
    SandboxError::InvalidSpec(message.into())
}

fn spawn_error(what: &'static str) -> impl FnOnce(Errno) -> SandboxError {
    move |source| SandboxError::Spawn { what, source }
}

fn check_spec(spec: &RunSpec, io: &StepIo<'_>) -> Result<(), SandboxError> {
    match spec.argv.first() {
        None => return Err(invalid("empty command")),
        Some(command) if command.is_empty() => return Err(invalid("empty command name")),
        Some(_) => {}
    }
    if spec.argv.iter().any(|arg| arg.contains('\0')) {
        return Err(invalid("an argument contains a nul byte"));
    }
    validate(&spec.env).map_err(invalid)?;
    if !spec.cwd.starts_with('/') || spec.cwd.contains('\0') {
        return Err(invalid(format!(
            "working directory {:?} is not absolute",
            spec.cwd
        )));
    }
    let hostname = &spec.hostname;
    if hostname.is_empty()
        || hostname.len() > 64
        || hostname.contains(|c: char| c == '\0' || c == '/' || c.is_whitespace())
    {
        return Err(invalid(format!("invalid hostname {hostname:?}")));
    }
    for (name, _) in &spec.extra_hosts {
        if name.is_empty() || name.contains(|c: char| c == '\0' || c.is_whitespace()) {
            return Err(invalid(format!("invalid host name {name:?}")));
        }
    }
    for file in &spec.files {
        let components: Vec<&str> = file.path.split('/').collect();
        let clean = components.len() >= 3
            && components[..2] == ["", "dev"]
            && components[2..]
                .iter()
                .all(|c| !c.is_empty() && *c != "." && *c != ".." && !c.contains('\0'));
        if !clean || file.mode > 0o7777 {
            return Err(invalid(format!(
                "step file {:?} is not a clean path below /dev with a valid mode",
                file.path
            )));
        }
    }
    for mount in &spec.mounts {
        if !mount.target.starts_with('/') || mount.target.contains('\0') {
            return Err(invalid(format!(
                "mount target {:?} is not an absolute path",
                mount.target
            )));
        }
    }
    if matches!(io.stdout, Output::SameAsStdout) {
        return Err(invalid("stdout cannot be the same as stdout"));
    }
    Ok(())
}

static RUNS: AtomicU64 = AtomicU64::new(0);

impl LinuxExecutor {
    /// The per-run tmpfs: an empty `root` (where the child attaches the
    /// overlay) and, if the image can take them, the /etc files' contents.
    /// It is a detached mount, so it vanishes with the run, crash or not.
    fn state_tmpfs(
        &self,
        spec: &RunSpec,
        etc_files: bool,
        prepared: &PreparedMounts<'_>,
    ) -> Result<OwnedFd, SandboxError> {
        let context = FsContext::open(c"tmpfs")?;
        context.set(c"mode", c"0755")?;
        // Room for the /etc files and the step's secret files.
        let files: usize = prepared.files.iter().map(|f| f.content.len()).sum();
        let size = CString::new(format!(
            "{}",
            (1 << 20) + files + 4096 * prepared.files.len()
        ))
        .map_err(|_| invalid("tmpfs size"))?;
        context.set(c"size", &size)?;
        let fd = context
            .mount(libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC)?;
        // Ordinary file calls reach a detached mount through its fd's
        // magic link.
        let base = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let error = |source| SandboxError::State {
            path: "sandbox tmpfs".into(),
            source,
        };
        fs::create_dir(base.join("root")).map_err(error)?;
        prepared.populate(&base).map_err(error)?;
        if etc_files {
            let mut hosts = format!(
                "127.0.0.1\tlocalhost {}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                spec.hostname
            );
            for (name, ip) in &spec.extra_hosts {
                hosts.push_str(&format!("{ip}\t{name}\n"));
            }
            let contents = [self.resolv_conf(), hosts, format!("{}\n", spec.hostname)];
            fs::create_dir(base.join("etc")).map_err(error)?;
            for (name, text) in ETC_FILES.iter().zip(contents) {
                let path = base.join("etc").join(name);
                fs::write(&path, text).map_err(error)?;
                fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).map_err(error)?;
            }
        }
        Ok(fd)
    }
}

fn resolve_user(root: BorrowedFd<'_>, spec: &RunSpec) -> Result<ResolvedUser, SandboxError> {
    let read = |path: &'static str| {
        rootfs::read_file(root, path).map_err(|source| user::UserError::Read { path, source })
    };
    let passwd = read("/etc/passwd")?;
    let group = read("/etc/group")?;
    Ok(user::resolve(
        &spec.user,
        passwd.as_deref(),
        group.as_deref(),
    )?)
}

/// The command, ready for `execve` without allocating.
struct Command {
    /// Paths to try in order (the PATH lookup).
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl Command {
    fn new(spec: &RunSpec, user: &ResolvedUser) -> Result<Self, SandboxError> {
        let nul = |_| invalid("a string contains a nul byte");
        let env = with_process_defaults(&spec.env, &spec.hostname, &user.home);
        let path = env_get(&env, "PATH").unwrap_or(DEFAULT_PATH);
        let candidates = command_candidates(&spec.argv[0], path)
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(nul)?;
        let argv = spec
            .argv
            .iter()
            .map(|arg| CString::new(arg.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(nul)?;
        let envp = env
            .into_iter()
            .map(CString::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(nul)?;
        let pointers = |strings: &[CString]| {
            let mut ptrs: Vec<*const libc::c_char> = strings.iter().map(|s| s.as_ptr()).collect();
            ptrs.push(ptr::null());
            ptrs
        };
        Ok(Self {
            candidates,
            argv_ptrs: pointers(&argv),
            envp_ptrs: pointers(&envp),
            _argv: argv,
            _envp: envp,
        })
    }
}

fn exec_failure(command: &str, errno: i32) -> Termination {
    match Errno::from_raw(errno) {
        Errno::ENOENT | Errno::ENOTDIR => Termination::NotFound {
            command: command.to_owned(),
        },
        errno => Termination::NotExecutable {
            command: command.to_owned(),
            errno,
        },
    }
}

// ---------------------------------------------------------------------------
// Overlay

const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Removes the marker a `volatile` overlay leaves in its workdir
/// (`work/incompat/volatile/dirty`), once the overlay is gone.
///
/// The kernel refuses to mount that workdir again while the marker exists,
/// since after a crash the upperdir may be incomplete. Its documentation
/// allows removing the marker when the system has not crashed and the
/// upperdir is intact; both hold once our unmount has completed, and
/// removing it lets a caller run several steps on one upperdir.
struct VolatileMark(PathBuf);

impl Drop for VolatileMark {
    fn drop(&mut self) {
        let incompat = self.0.join("work/incompat");
        // The marker is a directory holding a `dirty` file.
        if fs::remove_dir_all(incompat.join("volatile")).is_ok() {
            let _ = fs::remove_dir(incompat);
        }
    }
}

/// Mounts the step's overlay as a detached mount and returns its fd.
///
/// Lowerdirs are appended one at a time with `lowerdir+` (Linux 6.8): the
/// classic `lowerdir=a:b:c` option must fit in one page, which ~127 layers
/// of snapshot paths exceed. The skeleton goes on top of the image layers.
fn mount_overlay(
    stubs: Option<&Path>,
    skel: &Path,
    lowers_top_first: &[PathBuf],
    spec: &RunSpec,
    durable: bool,
) -> Result<OwnedFd, SandboxError> {
    let context = FsContext::open(c"overlay")?;
    let path = |path: &Path| {
        CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| invalid(format!("path {} contains a nul byte", path.display())))
    };
    if let Some(stubs) = stubs {
        context.set(c"lowerdir+", &path(stubs)?)?;
    }
    context.set(c"lowerdir+", &path(skel)?)?;
    for lower in lowers_top_first {
        context.set(c"lowerdir+", &path(lower)?)?;
    }
    context.set(c"upperdir", &path(&spec.rootfs.upperdir)?)?;
    context.set(c"workdir", &path(&spec.rootfs.workdir)?)?;
    plain_diff_options(&context, durable)?;
    context.mount(0)
}

/// Options of a writable overlay whose upperdir becomes a layer.
fn plain_diff_options(context: &FsContext, durable: bool) -> Result<(), SandboxError> {
    // The upperdir must be a plain diff of the step: no redirect xattrs for
    // renamed directories, no metadata-only copy-ups that point into a
    // lower layer, no inode index tying the layers to this mount.
    context.set(c"redirect_dir", c"off")?;
    context.set(c"metacopy", c"off")?;
    context.set(c"index", c"off")?;
    if !durable {
        context.flag(c"volatile")?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Views for the solver's own file operations (COPY, WORKDIR)

const OPEN_TREE_CLONE: libc::c_uint = 1;

/// A mount attached nowhere: no mount table shows it, and it goes away when
/// this value (its last reference) is dropped, also if builder is killed.
/// Ordinary file calls reach it through [`path`](Self::path).
#[derive(Debug)]
pub struct DetachedMount {
    fd: OwnedFd,
}

impl DetachedMount {
    /// `/proc/self/fd/N`, the fd's magic link, which resolves to the
    /// mount's root in this process for as long as `self` lives.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }
}

impl AsFd for DetachedMount {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A detached view of layers (`lowerdirs` base first, as in
/// [`RootFs`](super::RootFs)) for reading and writing files from builder
/// itself rather than from a step.
///
/// With `upper` (upperdir, workdir) the view is writable, and the upperdir
/// receives a plain diff exactly as for a RUN step (whiteouts, opaque
/// directories), ready to become a layer. Without it the view is
/// read-only. A read-only view of one layer is a read-only bind of it
/// (overlay wants two lowerdirs when it has no upperdir). `lowerdirs` must
/// not be empty: an empty state needs no mount.
pub fn overlay_view(
    lowerdirs: &[PathBuf],
    upper: Option<(&Path, &Path)>,
) -> Result<DetachedMount, SandboxError> {
    let path = |path: &Path| {
        CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| invalid(format!("path {} contains a nul byte", path.display())))
    };
    if lowerdirs.is_empty() {
        return Err(invalid("an overlay view needs at least one layer"));
    }
    if let ([single], None) = (lowerdirs, upper) {
        return bind_read_only(&path(single)?);
    }
    let context = FsContext::open(c"overlay")?;
    for lower in lowerdirs.iter().rev() {
        context.set(c"lowerdir+", &path(lower)?)?;
    }
    let attrs = match upper {
        Some((upperdir, workdir)) => {
            context.set(c"upperdir", &path(upperdir)?)?;
            context.set(c"workdir", &path(workdir)?)?;
            // Durability comes from the layer blob, as for RUN steps.
            plain_diff_options(&context, false)?;
            0
        }
        None => libc::MOUNT_ATTR_RDONLY,
    };
    Ok(DetachedMount {
        fd: context.mount(attrs)?,
    })
}

/// A detached, read-only, recursive bind of `source`.
fn bind_read_only(source: &CStr) -> Result<DetachedMount, SandboxError> {
    let error = |source| SandboxError::Mount {
        what: "read-only bind (open_tree)".into(),
        source,
    };
    // SAFETY: open_tree with a NUL-terminated path and integer flags
    // returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            source.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(error(Errno::last()));
    }
    // SAFETY: open_tree returned a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: mount_attr is plain data for which all-zero is valid.
    let mut attr: libc::mount_attr = unsafe { mem::zeroed() };
    attr.attr_set = libc::MOUNT_ATTR_RDONLY;
    // SAFETY: the fd itself (empty path with AT_EMPTY_PATH); `attr` lives
    // on this stack and has the size passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            ptr::addr_of_mut!(attr),
            mem::size_of::<libc::mount_attr>(),
        )
    };
    if ret < 0 {
        return Err(error(Errno::last()));
    }
    Ok(DetachedMount { fd })
}

/// A filesystem being configured with the new mount API (`fsopen`,
/// `fsconfig`, `fsmount`), which yields a detached mount: nothing appears
/// in any mount table until someone attaches it.
struct FsContext {
    fd: OwnedFd,
    fstype: &'static str,
}

impl FsContext {
    fn open(fstype: &'static CStr) -> Result<Self, SandboxError> {
        // SAFETY: fsopen takes a NUL-terminated name and flags; it returns a
        // new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
        let fstype = fstype.to_str().unwrap_or("filesystem");
        if fd < 0 {
            return Err(SandboxError::Mount {
                what: format!("{fstype} (fsopen)"),
                source: Errno::last(),
            });
        }
        // SAFETY: fsopen returned a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        Ok(Self { fd, fstype })
    }

    fn set(&self, key: &CStr, value: &CStr) -> Result<(), SandboxError> {
        self.config(FSCONFIG_SET_STRING, Some(key), Some(value))
    }

    fn flag(&self, key: &CStr) -> Result<(), SandboxError> {
        self.config(FSCONFIG_SET_FLAG, Some(key), None)
    }

    /// Creates the filesystem and returns a detached mount of it with the
    /// `MOUNT_ATTR_*` flags `attrs`.
    fn mount(self, attrs: u64) -> Result<OwnedFd, SandboxError> {
        self.config(FSCONFIG_CMD_CREATE, None, None)?;
        // SAFETY: fsmount with integer arguments on a created context
        // returns a new fd or -1.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.fd.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
            )
        };
        if fd < 0 {
            return Err(self.error("fsmount".into(), Errno::last()));
        }
        // SAFETY: fsmount returned a fresh fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
    }

    fn config(
        &self,
        command: libc::c_uint,
        key: Option<&CStr>,
        value: Option<&CStr>,
    ) -> Result<(), SandboxError> {
        // SAFETY: key and value are NUL-terminated strings or null (as the
        // command allows); the kernel copies them during the call.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.fd.as_raw_fd(),
                command,
                key.map_or(ptr::null(), CStr::as_ptr),
                value.map_or(ptr::null(), CStr::as_ptr),
                0,
            )
        };
        if ret >= 0 {
            return Ok(());
        }
        let source = Errno::last();
        let what = match (key, value) {
            (Some(key), Some(value)) => {
                format!("{} {}", key.to_string_lossy(), value.to_string_lossy())
            }
            (Some(key), None) => key.to_string_lossy().into_owned(),
            _ => "create".to_owned(),
        };
        Err(self.error(what, source))
    }

    /// The error, with the kernel's own explanation, which it queues on the
    /// context fd ("e overlayfs: ...") rather than returning.
    fn error(&self, what: String, source: Errno) -> SandboxError {
        let mut messages = Vec::new();
        let mut buf = [0u8; 1024];
        while let Ok(n) = nix::unistd::read(&self.fd, &mut buf) {
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&buf[..n]);
            messages.push(text.get(2..).unwrap_or(&text).trim().to_owned());
        }
        let log = if messages.is_empty() {
            String::new()
        } else {
            format!(": {}", messages.join("; "))
        };
        SandboxError::Mount {
            what: format!("{} ({what}{log})", self.fstype),
            source,
        }
    }
}

// ---------------------------------------------------------------------------
// Standard streams

/// Pipes and `/dev/null` for the child's stdin, stdout and stderr.
struct Stdio {
    null: Option<OwnedFd>,
    stdout: Option<(OwnedFd, Option<OwnedFd>)>,
    stderr: Option<(OwnedFd, Option<OwnedFd>)>,
    /// What the child puts on 0, 1, 2 (`None`: keep the inherited fd).
    child: [Option<RawFd>; 3],
}

impl Stdio {
    fn open(io: &StepIo<'_>) -> Result<Self, SandboxError> {
        let needs_null = io.stdin == Input::Null
            || matches!(io.stdout, Output::Null)
            || matches!(io.stderr, Output::Null);
        let null = if needs_null {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map_err(|err| SandboxError::Spawn {
                    what: "open /dev/null",
                    source: Errno::from_raw(err.raw_os_error().unwrap_or(libc::EIO)),
                })?;
            Some(OwnedFd::from(file))
        } else {
            None
        };
        let stream =
            |output: &Output<'_>| -> Result<Option<(OwnedFd, Option<OwnedFd>)>, SandboxError> {
                match output {
                    Output::Sink(_) => {
                        let (read, write) = pipe().map_err(spawn_error("output pipe"))?;
                        Ok(Some((read, Some(write))))
                    }
                    _ => Ok(None),
                }
            };
        let stdout = stream(&io.stdout)?;
        let stderr = stream(&io.stderr)?;
        let null_fd = null.as_ref().map(|fd| fd.as_raw_fd());
        let write_end = |pipe: &Option<(OwnedFd, Option<OwnedFd>)>| {
            pipe.as_ref()
                .and_then(|(_, write)| write.as_ref().map(|fd| fd.as_raw_fd()))
        };
        let stdout_fd = match io.stdout {
            Output::Null => null_fd,
            Output::Inherit => None,
            _ => write_end(&stdout),
        };
        let stderr_fd = match io.stderr {
            Output::Null => null_fd,
            Output::Inherit => None,
            Output::SameAsStdout => stdout_fd,
            Output::Sink(_) => write_end(&stderr),
        };
        let stdin_fd = match io.stdin {
            Input::Null => null_fd,
            Input::Inherit => None,
        };
        Ok(Self {
            child: [stdin_fd, stdout_fd, stderr_fd],
            null,
            stdout,
            stderr,
        })
    }

    fn child_fds(&self) -> [Option<RawFd>; 3] {
        self.child
    }

    /// After the clone, only the child may hold the write ends, so that the
    /// read ends see EOF once every process of the step is gone.
    fn close_child_ends(&mut self) {
        self.null = None;
        for (_, write) in [&mut self.stdout, &mut self.stderr].into_iter().flatten() {
            *write = None;
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd), Errno> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
}

fn write_all_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> Result<(), Errno> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Parent: waiting

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitResult {
    Exited(i32),
    Signaled(i32),
}

/// A setup failure the child reported: which step, and the errno.
#[derive(Debug, Clone, Copy)]
struct Failure {
    step: u32,
    errno: i32,
}

struct Events {
    status: WaitResult,
    failure: Option<Failure>,
    output_error: Option<io::Error>,
}

/// Kills and reaps the step if `run` leaves early (an error, or a panic in
/// an output sink), so that no sandbox outlives its run.
struct Reaper {
    pidfd: Arc<OwnedFd>,
    reaped: bool,
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = send_signal(self.pidfd.as_fd(), libc::SIGKILL);
            let _ = reap(self.pidfd.as_fd());
        }
    }
}

fn send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> Result<(), Errno> {
    // SAFETY: pidfd_send_signal with a valid pidfd, a signal number and no
    // siginfo. Through the pidfd the signal can never reach a recycled pid.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 { Err(Errno::last()) } else { Ok(()) }
}

fn reap(pidfd: BorrowedFd<'_>) -> Result<WaitResult, Errno> {
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills in; zeroed is a
        // valid initial value.
        let mut info: libc::siginfo_t = unsafe { mem::zeroed() };
        // SAFETY: waitid on our own child's pidfd, writing into `info`.
        let ret = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if ret < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                errno => return Err(errno),
            }
        }
        // SAFETY: after a successful waitid with WEXITED, si_status is set.
        let status = unsafe { info.si_status() };
        return Ok(if info.si_code == libc::CLD_EXITED {
            WaitResult::Exited(status)
        } else {
            WaitResult::Signaled(status)
        });
    }
}

/// Streams output until every process of the step is gone and every pipe
/// has reached EOF; collects the exit status and any reported failure.
fn event_loop(
    pidfd: BorrowedFd<'_>,
    report: OwnedFd,
    stdio: &mut Stdio,
    io: StepIo<'_>,
) -> Result<Events, SandboxError> {
    let StepIo { stdout, stderr, .. } = io;
    let mut sinks: [Option<&mut dyn Write>; 2] = [sink_of(stdout), sink_of(stderr)];
    let mut readers: [Option<OwnedFd>; 2] = [
        stdio.stdout.take().map(|(read, _)| read),
        stdio.stderr.take().map(|(read, _)| read),
    ];
    let mut report = Some(report);
    let mut record = Vec::with_capacity(FAILURE_LEN);
    let mut status = None;
    let mut output_error: Option<io::Error> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut polled: Vec<(usize, libc::pollfd)> = Vec::with_capacity(4);
        let mut add = |slot: usize, fd: RawFd| {
            polled.push((
                slot,
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ));
        };
        for (slot, reader) in readers.iter().enumerate() {
            if let Some(fd) = reader {
                add(slot, fd.as_raw_fd());
            }
        }
        if let Some(fd) = &report {
            add(2, fd.as_raw_fd());
        }
        if status.is_none() {
            add(3, pidfd.as_raw_fd());
        }
        if polled.is_empty() {
            break;
        }
        let mut fds: Vec<libc::pollfd> = polled.iter().map(|(_, p)| *p).collect();
        // SAFETY: `fds` is a valid array of fds.len() pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            match Errno::last() {
                Errno::EINTR => continue,
                errno => return Err(SandboxError::Wait(errno)),
            }
        }
        for ((slot, _), pollfd) in polled.iter().zip(&fds) {
            if pollfd.revents == 0 {
                continue;
            }
            match *slot {
                stream @ (0 | 1) => {
                    let Some(fd) = &readers[stream] else { continue };
                    match nix::unistd::read(fd, &mut buf) {
                        Ok(0) => {
                            readers[stream] = None;
                            if let Some(sink) = sinks[stream].as_mut() {
                                if let Err(err) = sink.flush() {
                                    output_error.get_or_insert(err);
                                }
                            }
                        }
                        Ok(n) => {
                            if output_error.is_none() {
                                if let Some(sink) = sinks[stream].as_mut() {
                                    if let Err(err) = sink.write_all(&buf[..n]) {
                                        // Nobody is listening any more: end the step, but
                                        // keep draining so it cannot block on a full pipe.
                                        output_error = Some(err);
                                        let _ = send_signal(pidfd, libc::SIGKILL);
                                    }
                                }
                            }
                        }
                        Err(Errno::EINTR | Errno::EAGAIN) => {}
                        Err(errno) => return Err(SandboxError::Wait(errno)),
                    }
                }
                2 => {
                    let Some(fd) = &report else { continue };
                    let mut chunk = [0u8; FAILURE_LEN];
                    match nix::unistd::read(fd, &mut chunk) {
                        Ok(0) => report = None,
                        Ok(n) => {
                            let room = FAILURE_LEN - record.len();
                            record.extend_from_slice(&chunk[..n.min(room)]);
                        }
                        Err(Errno::EINTR | Errno::EAGAIN) => {}
                        Err(errno) => return Err(SandboxError::Wait(errno)),
                    }
                }
                _ => status = Some(reap(pidfd).map_err(SandboxError::Wait)?),
            }
        }
    }
    let failure = (record.len() == FAILURE_LEN).then(|| {
        let word = |i: usize| [record[i], record[i + 1], record[i + 2], record[i + 3]];
        Failure {
            step: u32::from_ne_bytes(word(0)),
            errno: i32::from_ne_bytes(word(4)),
        }
    });
    Ok(Events {
        status: status.unwrap_or(WaitResult::Signaled(libc::SIGKILL)),
        failure,
        output_error,
    })
}

fn sink_of(output: Output<'_>) -> Option<&mut dyn Write> {
    match output {
        Output::Sink(sink) => Some(sink),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// The child

/// Size of a failure report: step (u32) and errno (i32).
const FAILURE_LEN: usize = 8;

// Steps outside the op list; op `i` reports step `i`.
const STEP_DEATH_SIGNAL: u32 = 1 << 16;
const STEP_SYNC: u32 = STEP_DEATH_SIGNAL + 1;
const STEP_AMBIENT: u32 = STEP_DEATH_SIGNAL + 2;
const STEP_BOUNDING: u32 = STEP_DEATH_SIGNAL + 3;
const STEP_SETGROUPS: u32 = STEP_DEATH_SIGNAL + 4;
const STEP_SETGID: u32 = STEP_DEATH_SIGNAL + 5;
const STEP_KEEPCAPS: u32 = STEP_DEATH_SIGNAL + 6;
const STEP_SETUID: u32 = STEP_DEATH_SIGNAL + 7;
const STEP_CAPSET: u32 = STEP_DEATH_SIGNAL + 8;
const STEP_STDIO: u32 = STEP_DEATH_SIGNAL + 9;
const STEP_CLOSE_FDS: u32 = STEP_DEATH_SIGNAL + 10;
const STEP_EXEC: u32 = STEP_DEATH_SIGNAL + 11;
const STEP_RLIMIT: u32 = STEP_DEATH_SIGNAL + 12;

fn describe_step(step: u32, ops: &[Op], root: &Path) -> String {
    if let Some(op) = ops.get(step as usize) {
        return op.describe(root);
    }
    match step {
        STEP_DEATH_SIGNAL => "set parent death signal",
        STEP_SYNC => "wait for the parent",
        STEP_AMBIENT => "clear ambient capabilities",
        STEP_BOUNDING => "drop capabilities from the bounding set",
        STEP_SETGROUPS => "set supplementary groups",
        STEP_SETGID => "set group id",
        STEP_KEEPCAPS => "keep capabilities across setuid",
        STEP_SETUID => "set user id",
        STEP_CAPSET => "set capabilities",
        STEP_STDIO => "set up standard streams",
        STEP_CLOSE_FDS => "close inherited file descriptors",
        STEP_RLIMIT => "set resource limits (--ulimit)",
        _ => "unknown step",
    }
    .to_owned()
}

/// Everything the child needs, prepared by the parent. The child only reads
/// it (its copy of the parent's memory).
struct ChildContext<'a> {
    ops: &'a [Op],
    report: RawFd,
    sync_read: RawFd,
    sync_write: RawFd,
    stdio: [Option<RawFd>; 3],
    loopback: libc::ifreq,
    drop_caps: &'a [libc::c_ulong],
    /// The effective and permitted set the command gets.
    cap_mask: u64,
    groups: &'a [libc::gid_t],
    /// `--ulimit`s, set before capabilities are dropped.
    rlimits: &'a [Ulimit],
    uid: u32,
    gid: u32,
    command: &'a Command,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Clones the child into new namespaces and returns its pidfd; the child
/// runs [`child_main`] and never returns here.
fn spawn(flags: u64, child: &ChildContext<'_>) -> Result<OwnedFd, Errno> {
    let mut pidfd: libc::c_int = -1;
    let args = CloneArgs {
        flags: flags | libc::CLONE_PIDFD as u64,
        pidfd: ptr::addr_of_mut!(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut all: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: as above.
    let mut previous: libc::sigset_t = unsafe { mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t to fill.
    unsafe { libc::sigfillset(&mut all) };
    // Blocks every signal around the clone, so that none of this process's
    // handlers can run in the child before it resets them (posix_spawn does
    // the same).
    // SAFETY: valid sigset pointers; affects only this thread.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous) };
    // SAFETY: clone3 without CLONE_VM: the child gets a copy-on-write copy
    // of this address space and continues on its copy of this thread's
    // stack, like fork. glibc does not know about the child, which is why
    // the child only makes raw or thin syscalls (see child_main). `args`
    // lives across the call and has the size we pass.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            mem::size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        child_main(child);
    }
    let errno = Errno::last();
    // SAFETY: restores this thread's mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &previous, ptr::null_mut()) };
    if ret < 0 {
        return Err(errno);
    }
    // SAFETY: CLONE_PIDFD stored a new fd (close-on-exec) that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(pidfd) })
}

/// The `ifreq` that brings `lo` up, built ahead for the child.
fn loopback_request() -> libc::ifreq {
    // SAFETY: ifreq is plain data for which all-zero is valid.
    let mut request: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    request
}

/// Reports `step` and `errno` to the parent and exits.
fn fail(child: &ChildContext<'_>, step: u32, errno: i32) -> ! {
    let mut record = [0u8; FAILURE_LEN];
    record[..4].copy_from_slice(&step.to_ne_bytes());
    record[4..].copy_from_slice(&errno.to_ne_bytes());
    // A lost report still leaves the exit status saying "failed".
    sys::write(child.report, &record);
    sys::exit(match (step, errno) {
        (STEP_EXEC, libc::ENOENT | libc::ENOTDIR) => 127,
        (STEP_EXEC, _) => 126,
        _ => 125,
    })
}

/// Reports `step` with the errno if `result` is a failure.
fn check(child: &ChildContext<'_>, step: u32, result: Result<(), i32>) {
    if let Err(errno) = result {
        fail(child, step, errno);
    }
}

/// The child after `clone3`. Must not allocate, lock or call glibc
/// functions that keep process-wide state (setuid and friends broadcast to
/// threads glibc believes exist; they are raw syscalls here).
fn child_main(child: &ChildContext<'_>) -> ! {
    check(
        child,
        STEP_DEATH_SIGNAL,
        sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
    );
    // If the parent died before the prctl above, nothing will kill us: wait
    // for its go-ahead, which is EOF if it is gone. Our own copy of the
    // write end must go first.
    sys::close(child.sync_write);
    loop {
        match sys::read_byte(child.sync_read) {
            Ok(true) => break,
            Ok(false) => sys::exit(125),
            Err(libc::EINTR) => {}
            Err(errno) => fail(child, STEP_SYNC, errno),
        }
    }
    // Modes below are exact; the command gets docker's 022 before exec.
    sys::umask(0);
    for (index, op) in child.ops.iter().enumerate() {
        if let Err(errno) = run_op(child, op) {
            fail(child, index as u32, errno);
        }
    }
    // Raising a hard limit needs CAP_SYS_RESOURCE, which may go below.
    for limit in child.rlimits {
        check(
            child,
            STEP_RLIMIT,
            sys::setrlimit(limit.resource, limit.soft, limit.hard),
        );
    }
    set_credentials(child);
    set_stdio(child);
    sys::reset_signals();
    sys::umask(0o022);
    // Whatever another thread of builder opened without O_CLOEXEC must not
    // leak into the step.
    check(child, STEP_CLOSE_FDS, sys::cloexec_from(3));
    exec(child)
}

fn run_op(child: &ChildContext<'_>, op: &Op) -> Result<(), i32> {
    match op {
        Op::MakeRootPrivate => sys::mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
        Op::LoopbackUp => sys::loopback_up(&child.loopback),
        Op::Attach { fd, target, .. } => sys::move_mount(*fd, target),
        Op::Mount {
            source,
            target,
            fstype,
            flags,
            data,
        } => sys::mount(Some(source), target, Some(fstype), *flags, data.as_deref()),
        Op::Mkdir { path, mode } => sys::mkdir(path, *mode),
        Op::WriteFile {
            path,
            mode,
            content,
        } => sys::write_file(path, *mode, content),
        Op::Mknod { path, mode, dev } => sys::mknod_char(path, *mode, *dev),
        Op::Symlink { target, link } => sys::symlink(target, link),
        Op::Sysfs { target, host } => {
            let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if sys::mount(Some(c"sysfs"), target, Some(c"sysfs"), flags, None).is_ok() {
                return Ok(());
            }
            // sysfs can be refused (e.g. for a network namespace this user
            // namespace does not own); the host's, read-only, will do.
            sys::mount(Some(host), target, None, libc::MS_BIND | libc::MS_REC, None)?;
            sys::read_only(target, true)
        }
        Op::Bind { source, target } => sys::mount(Some(source), target, None, libc::MS_BIND, None),
        Op::ReadOnly { path } => {
            match sys::mount(Some(path), path, None, libc::MS_BIND | libc::MS_REC, None) {
                Err(libc::ENOENT) => return Ok(()),
                other => other?,
            }
            sys::read_only(path, true)
        }
        Op::Mask { path, dev_null } => match sys::is_dir(path) {
            Err(libc::ENOENT) => Ok(()),
            Err(errno) => Err(errno),
            Ok(true) => sys::mount(Some(c"tmpfs"), path, Some(c"tmpfs"), libc::MS_RDONLY, None),
            Ok(false) => sys::mount(Some(dev_null), path, None, libc::MS_BIND, None),
        },
        Op::SetHostname { name } => sys::sethostname(name),
        Op::PivotRoot { new_root } => {
            // pivot_root(".", ".") stacks the old root on top of the new one
            // at "/"; detaching "." then removes exactly the old root. This
            // needs no put_old directory inside the image.
            sys::chdir(new_root)?;
            sys::pivot_root(c".", c".")?;
            sys::umount_detach(c".")?;
            sys::chdir(c"/")
        }
        Op::Chdir { path } => sys::chdir(path),
        Op::EnsureDir { path } => match sys::mkdir(path, 0o755) {
            Err(libc::EEXIST) => Ok(()),
            other => other,
        },
        Op::EnsureFile { path } => match sys::write_file(path, 0o644, &[]) {
            Err(libc::EEXIST) => Ok(()),
            other => other,
        },
        Op::SetReadOnly { path } => sys::read_only(path, false),
    }
}

fn set_credentials(child: &ChildContext<'_>) {
    check(
        child,
        STEP_AMBIENT,
        sys::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        ),
    );
    for cap in child.drop_caps {
        check(
            child,
            STEP_BOUNDING,
            sys::prctl(libc::PR_CAPBSET_DROP, *cap),
        );
    }
    check(child, STEP_SETGROUPS, sys::setgroups(child.groups));
    check(child, STEP_SETGID, sys::setresgid(child.gid));
    // Otherwise switching away from uid 0 empties the permitted set before
    // capset below can narrow it.
    check(child, STEP_KEEPCAPS, sys::prctl(libc::PR_SET_KEEPCAPS, 1));
    check(child, STEP_SETUID, sys::setresuid(child.uid));
    check(
        child,
        STEP_CAPSET,
        sys::capset(child.cap_mask, child.cap_mask, 0),
    );
}

fn set_stdio(child: &ChildContext<'_>) {
    // Moves every source above the standard range first, so that placing
    // one cannot overwrite another that happens to be 0, 1 or 2.
    let mut moved = [-1; 3];
    for (slot, source) in child.stdio.iter().enumerate() {
        if let Some(fd) = source {
            match sys::dup_above(*fd, 10) {
                Ok(copy) => moved[slot] = copy,
                Err(errno) => fail(child, STEP_STDIO, errno),
            }
        }
    }
    for (target, fd) in moved.iter().enumerate() {
        if *fd >= 0 {
            check(child, STEP_STDIO, sys::dup2(*fd, target as RawFd));
        }
    }
}

/// Tries each PATH candidate like `execvp`: not-found errors move on, a
/// permission error is remembered, anything else stops the search.
fn exec(child: &ChildContext<'_>) -> ! {
    let command = child.command;
    let mut denied = false;
    let mut last = libc::ENOENT;
    for candidate in &command.candidates {
        match sys::execve(candidate, &command.argv_ptrs, &command.envp_ptrs) {
            libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV | libc::ETIMEDOUT => {}
            libc::EACCES => denied = true,
            errno => {
                last = errno;
                break;
            }
        }
    }
    if denied && last == libc::ENOENT {
        last = libc::EACCES;
    }
    fail(child, STEP_EXEC, last)
}

/// Syscalls of the child, each a thin wrapper returning the errno. None
/// allocates; the strings and structs they take were built by the parent or
/// live on the child's stack.
mod sys {
    use std::ffi::CStr;
    use std::mem;
    use std::os::fd::RawFd;
    use std::ptr;

    use super::{CapData, CapHeader, LINUX_CAPABILITY_VERSION_3, MOVE_MOUNT_F_EMPTY_PATH};

    pub(super) type Result<T = ()> = std::result::Result<T, i32>;

    fn errno() -> i32 {
        // SAFETY: __errno_location returns this thread's errno slot, which
        // is always valid to read.
        unsafe { *libc::__errno_location() }
    }

    fn check(ret: libc::c_long) -> Result {
        if ret < 0 { Err(errno()) } else { Ok(()) }
    }

    fn ptr_of(s: Option<&CStr>) -> *const libc::c_char {
        s.map_or(ptr::null(), CStr::as_ptr)
    }

    pub(super) fn mount(
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: libc::c_ulong,
        data: Option<&CStr>,
    ) -> Result {
        // SAFETY: NUL-terminated strings or null, which mount(2) accepts for
        // source, fstype and data when the flags do not need them.
        let ret = unsafe {
            libc::mount(
                ptr_of(source),
                target.as_ptr(),
                ptr_of(fstype),
                flags,
                ptr_of(data).cast(),
            )
        };
        check(ret.into())
    }

    /// Attaches the detached mount `fd` at `target`.
    pub(super) fn move_mount(fd: RawFd, target: &CStr) -> Result {
        // SAFETY: move_mount with an fd, an empty NUL-terminated path (the fd
        // itself, per MOVE_MOUNT_F_EMPTY_PATH) and a NUL-terminated target.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                fd,
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })
    }

    /// Makes the mount at `path`, and with `recursive` every mount below it,
    /// read-only.
    pub(super) fn read_only(path: &CStr, recursive: bool) -> Result {
        let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
        // SAFETY: mount_attr is plain data for which all-zero is valid.
        let mut attr: libc::mount_attr = unsafe { mem::zeroed() };
        attr.attr_set = libc::MOUNT_ATTR_RDONLY;
        // SAFETY: NUL-terminated path; `attr` lives on this stack and has
        // the size passed.
        check(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                libc::AT_FDCWD,
                path.as_ptr(),
                flags as libc::c_uint,
                ptr::addr_of_mut!(attr),
                mem::size_of::<libc::mount_attr>(),
            )
        })
    }

    pub(super) fn mkdir(path: &CStr, mode: libc::mode_t) -> Result {
        // SAFETY: NUL-terminated path.
        check(unsafe { libc::mkdir(path.as_ptr(), mode) }.into())
    }

    /// Creates `path` (which must not exist) with `mode` and `content`.
    pub(super) fn write_file(path: &CStr, mode: libc::mode_t, content: &[u8]) -> Result {
        let flags =
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: NUL-terminated path; open with O_CREAT takes the mode.
        let fd = unsafe { libc::open(path.as_ptr(), flags, mode) };
        check(fd.into())?;
        let mut rest = content;
        let mut result = Ok(());
        while !rest.is_empty() {
            // SAFETY: pointer and length of a live slice.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                match errno() {
                    libc::EINTR => continue,
                    e => {
                        result = Err(e);
                        break;
                    }
                }
            }
            rest = &rest[n as usize..];
        }
        close(fd);
        result
    }

    pub(super) fn mknod_char(path: &CStr, mode: libc::mode_t, dev: libc::dev_t) -> Result {
        // SAFETY: NUL-terminated path.
        check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) }.into())
    }

    pub(super) fn symlink(target: &CStr, link: &CStr) -> Result {
        // SAFETY: NUL-terminated paths.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) }.into())
    }

    pub(super) fn is_dir(path: &CStr) -> Result<bool> {
        // SAFETY: stat is plain data for which all-zero is valid.
        let mut stat: libc::stat = unsafe { mem::zeroed() };
        // SAFETY: NUL-terminated path; `stat` lives on this stack.
        check(unsafe { libc::stat(path.as_ptr(), &mut stat) }.into())?;
        Ok(stat.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    pub(super) fn sethostname(name: &CStr) -> Result {
        // SAFETY: pointer and length of the name's bytes (no NUL needed).
        check(unsafe { libc::sethostname(name.as_ptr(), name.to_bytes().len()) }.into())
    }

    pub(super) fn chdir(path: &CStr) -> Result {
        // SAFETY: NUL-terminated path.
        check(unsafe { libc::chdir(path.as_ptr()) }.into())
    }

    pub(super) fn pivot_root(new_root: &CStr, put_old: &CStr) -> Result {
        // SAFETY: NUL-terminated paths.
        check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) })
    }

    pub(super) fn umount_detach(path: &CStr) -> Result {
        // SAFETY: NUL-terminated path.
        check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) }.into())
    }

    pub(super) fn loopback_up(request: &libc::ifreq) -> Result {
        let mut request = *request;
        // SAFETY: socket with integer arguments returns an fd or -1.
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        check(sock.into())?;
        // SAFETY: SIOCGIFFLAGS fills the ifreq on this stack.
        let mut result =
            check(unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut request) }.into());
        if result.is_ok() {
            // SAFETY: after SIOCGIFFLAGS the union holds the flags.
            unsafe { request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
            // SAFETY: SIOCSIFFLAGS reads the ifreq on this stack.
            result = check(unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS, &request) }.into());
        }
        close(sock);
        result
    }

    pub(super) fn prctl(option: libc::c_int, arg: libc::c_ulong) -> Result {
        // SAFETY: the prctl options used here take one integer argument.
        check(
            unsafe {
                libc::prctl(
                    option,
                    arg,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                    0 as libc::c_ulong,
                )
            }
            .into(),
        )
    }

    // Raw syscalls: glibc's wrappers would try to apply the change to every
    // thread of the parent, which this process does not have.

    /// `prlimit64` on this process.
    pub(super) fn setrlimit(resource: u32, soft: u64, hard: u64) -> Result {
        #[repr(C)]
        struct Rlimit64 {
            cur: u64,
            max: u64,
        }
        let limit = Rlimit64 {
            cur: soft,
            max: hard,
        };
        // SAFETY: pid 0 is this process; a valid new limit and no old one.
        check(unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0 as libc::pid_t,
                resource as libc::c_uint,
                &limit as *const Rlimit64,
                std::ptr::null_mut::<Rlimit64>(),
            )
        })
    }

    pub(super) fn setgroups(groups: &[libc::gid_t]) -> Result {
        // SAFETY: pointer and length of a gid array.
        check(unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) })
    }

    pub(super) fn setresgid(gid: libc::gid_t) -> Result {
        // SAFETY: integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) })
    }

    pub(super) fn setresuid(uid: libc::uid_t) -> Result {
        // SAFETY: integer arguments.
        check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) })
    }

    /// Sets this process's effective, permitted and inheritable masks.
    pub(super) fn capset(effective: u64, permitted: u64, inheritable: u64) -> Result {
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let half = |shift: u32| CapData {
            effective: (effective >> shift) as u32,
            permitted: (permitted >> shift) as u32,
            inheritable: (inheritable >> shift) as u32,
        };
        // Version 3 takes the low 32 capabilities, then the high 32.
        let data = [half(0), half(32)];
        // SAFETY: a version-3 header and the two data structs it requires,
        // both on this stack.
        check(unsafe {
            libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr())
        })
    }

    /// Duplicates `fd` to the lowest free number >= `min`, close-on-exec.
    pub(super) fn dup_above(fd: RawFd, min: RawFd) -> Result<RawFd> {
        // SAFETY: fcntl with integer arguments.
        let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, min) };
        check(copy.into())?;
        Ok(copy)
    }

    pub(super) fn dup2(fd: RawFd, target: RawFd) -> Result {
        // SAFETY: integer arguments; the copy at `target` loses
        // close-on-exec, which is the point.
        check(unsafe { libc::dup2(fd, target) }.into())
    }

    /// Marks every fd from `first` up close-on-exec.
    pub(super) fn cloexec_from(first: libc::c_uint) -> Result {
        // SAFETY: integer arguments.
        check(unsafe {
            libc::syscall(
                libc::SYS_close_range,
                first,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        })
    }

    pub(super) fn close(fd: RawFd) {
        // SAFETY: closes an fd number this process inherited and does not
        // use afterwards.
        unsafe { libc::close(fd) };
    }

    /// Reads one byte: `Ok(true)` if one arrived, `Ok(false)` at EOF.
    pub(super) fn read_byte(fd: RawFd) -> Result<bool> {
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into a stack variable.
        let n = unsafe { libc::read(fd, ptr::addr_of_mut!(byte).cast(), 1) };
        check(n as libc::c_long)?;
        Ok(n == 1)
    }

    /// Writes `bytes` once, best effort.
    pub(super) fn write(fd: RawFd, bytes: &[u8]) {
        // SAFETY: pointer and length of a live slice.
        unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
    }

    pub(super) fn umask(mask: libc::mode_t) {
        // SAFETY: umask cannot fail.
        unsafe { libc::umask(mask) };
    }

    /// Default dispositions and an empty mask for the command: Rust ignores
    /// SIGPIPE, and the clone happened with every signal blocked.
    pub(super) fn reset_signals() {
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            // SAFETY: sets SIG_DFL; glibc refuses its two internal
            // signals, which is harmless.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut empty: libc::sigset_t = unsafe { mem::zeroed() };
        // SAFETY: `empty` is a valid sigset_t on this stack.
        unsafe { libc::sigemptyset(&mut empty) };
        // SAFETY: as above; the old mask is not wanted.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, ptr::null_mut()) };
    }

    /// Executes `path`; returns only on failure, with the errno.
    pub(super) fn execve(
        path: &CStr,
        argv: &[*const libc::c_char],
        envp: &[*const libc::c_char],
    ) -> i32 {
        // SAFETY: NUL-terminated path and NULL-terminated arrays of
        // NUL-terminated strings, prepared by the parent and alive here.
        unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        errno()
    }

    pub(super) fn exit(code: i32) -> ! {
        // SAFETY: _exit ends this process without running the parent's
        // atexit handlers or destructors.
        unsafe { libc::_exit(code) }
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}
