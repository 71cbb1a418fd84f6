//! The RUN sandbox: runs one command on an overlay root in fresh Linux namespaces.
//!
//! The [`Executor`] trait is the seam between the solver and whatever runs a
//! step; [`LinuxExecutor`] is the built-in implementation (namespaces,
//! overlayfs, pivot_root, docker's default capabilities). A runc, crun or
//! libcontainer executor could implement the same trait later.
//!
//! What a step sees (see ARCHITECTURE.md, "Sandbox"): an overlay root whose
//! lowerdirs are the parent's per-layer snapshots and whose upperdir becomes
//! the new layer, a private `/proc`, a minimal `/dev`, a read-only `/sys`,
//! `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname` bound in from files the
//! executor writes (never captured in the upperdir), the host's network or
//! only loopback, and the user and working directory of the step.
//!
//! All `unsafe` lives in `linux.rs`; every other file here is safe code.

pub mod binfmt;
mod caps;
mod env;
mod linux;
mod mounts;
mod rootfs;
mod stubs;
pub mod testsupport;
mod user;

use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;

pub use caps::{CapSet, Capability, DOCKER_DEFAULT_CAPS};
pub use env::{DEFAULT_PATH, ensure_default_path, env_get};
pub use linux::{DetachedMount, LinuxExecutor, overlay_view};
pub(crate) use rootfs::{ensure_dir as ensure_dir_in_root, read_file as read_file_in_root};
pub(crate) use stubs::resolve as resolve_in_root;
pub(crate) use user::records;
pub use user::{
    IdOrName, InvalidUserSpec, ResolvedUser, UserError, UserSpec, resolve as resolve_user,
};

/// Hostname a step gets when the caller does not choose one.
pub const DEFAULT_HOSTNAME: &str = "buildersandbox";

/// Something that can run one RUN step.
///
/// Implementations block the calling thread until the step has ended and
/// every process it started is gone.
pub trait Executor: Send + Sync {
    /// Runs `spec`, streaming its output through `io`; `cancel` may end it
    /// early from another thread.
    ///
    /// A non-zero exit, a signal, or a command that cannot be found or run is
    /// an `Ok` outcome (the build decides what it means); `Err` is for the
    /// sandbox itself failing, and for cancellation.
    fn run(
        &self,
        spec: &RunSpec,
        io: StepIo<'_>,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError>;
}

/// The network a step sees.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network namespace, so package managers work; what BuildKit
    /// does without CNI, and what `--network=default` and `host` mean here.
    #[default]
    Host,
    /// A new network namespace with only `lo`, which is up.
    None,
}

/// The root filesystem of a step: an overlay of read-only layers and one
/// writable layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootFs {
    /// Unpacked layers, base layer first (the order of the image manifest);
    /// later layers win. May be empty (`FROM scratch`).
    pub lowerdirs: Vec<PathBuf>,
    /// Receives everything the step changes; it becomes the step's layer and
    /// is left in place for the caller. Must not be on an overlay filesystem.
    pub upperdir: PathBuf,
    /// Overlay's scratch directory: empty, on the same filesystem as
    /// `upperdir`.
    pub workdir: PathBuf,
}

/// Everything that defines one RUN step.
///
/// Its `Debug` shows only the names of the environment variables: a value
/// may be a secret (`RUN --mount=type=secret,env=...`).
#[derive(Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub rootfs: RootFs,
    /// The command and its arguments. A first element without `/` is looked
    /// up in the `PATH` of `env` (or [`DEFAULT_PATH`] when `env` has none).
    pub argv: Vec<String>,
    /// `KEY=VALUE` entries, already composed by the caller from the image's
    /// ENV and the step's ARGs. The executor only adds `HOSTNAME` and `HOME`
    /// when they are missing, as docker and runc do; see
    /// [`ensure_default_path`] for `PATH`.
    pub env: Vec<String>,
    /// USER of the step, resolved through the image's `/etc/passwd` and
    /// `/etc/group`.
    pub user: UserSpec,
    /// Absolute working directory inside the root; created when missing.
    pub cwd: String,
    pub hostname: String,
    pub network: NetworkMode,
    /// Extra `/etc/hosts` entries (`--add-host`).
    pub extra_hosts: Vec<(String, IpAddr)>,
    /// `RUN --security=insecure` (BuildKit's `security.insecure`
    /// entitlement): every capability instead of docker's default set, and
    /// the kernel interfaces docker masks or makes read-only under `/proc`
    /// left as they are. `/sys` stays read-only and no host device is added.
    pub privileged: bool,
    /// Files that exist only while the step runs, on its private `/dev`
    /// (a RUN heredoc script at `/dev/pipes/NAME`), so they never reach the
    /// layer.
    pub files: Vec<StepFile>,
    /// `RUN --mount`s, mounted in this order after the step's own `/proc`,
    /// `/dev`, `/sys` and `/etc` files. A target the image lacks is made
    /// visible through a per-step stub layer, so it never reaches the
    /// upperdir.
    pub mounts: Vec<StepMount>,
    /// Size of the step's `/dev/shm` tmpfs in bytes (`--shm-size`);
    /// [`DEFAULT_SHM_SIZE`] as docker.
    pub shm_size: u64,
    /// Resource limits set just before `execve` (`--ulimit`); the others
    /// are inherited from builder.
    pub rlimits: Vec<Ulimit>,
}

/// docker's default size of `/dev/shm`: 64 MiB.
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;

/// One `--ulimit TYPE=SOFT[:HARD]`, as docker parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ulimit {
    /// The `RLIMIT_*` resource.
    pub resource: u32,
    pub soft: u64,
    pub hard: u64,
}

/// docker's `--ulimit` names and their resources.
const ULIMIT_NAMES: &[(&str, u32)] = &[
    ("core", libc::RLIMIT_CORE as u32),
    ("cpu", libc::RLIMIT_CPU as u32),
    ("data", libc::RLIMIT_DATA as u32),
    ("fsize", libc::RLIMIT_FSIZE as u32),
    ("locks", libc::RLIMIT_LOCKS as u32),
    ("memlock", libc::RLIMIT_MEMLOCK as u32),
    ("msgqueue", libc::RLIMIT_MSGQUEUE as u32),
    ("nice", libc::RLIMIT_NICE as u32),
    ("nofile", libc::RLIMIT_NOFILE as u32),
    ("nproc", libc::RLIMIT_NPROC as u32),
    ("rss", libc::RLIMIT_RSS as u32),
    ("rtprio", libc::RLIMIT_RTPRIO as u32),
    ("rttime", libc::RLIMIT_RTTIME as u32),
    ("sigpending", libc::RLIMIT_SIGPENDING as u32),
    ("stack", libc::RLIMIT_STACK as u32),
    ("as", libc::RLIMIT_AS as u32),
];

impl std::str::FromStr for Ulimit {
    type Err = String;

    /// `TYPE=SOFT[:HARD]`; `-1` means unlimited; without HARD it is SOFT.
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, values) = s
            .split_once('=')
            .ok_or_else(|| format!("invalid ulimit {s:?}: expected TYPE=SOFT[:HARD]"))?;
        let resource = ULIMIT_NAMES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| {
                let names: Vec<&str> = ULIMIT_NAMES.iter().map(|(n, _)| *n).collect();
                format!(
                    "invalid ulimit type {name:?}: expected one of {}",
                    names.join(", ")
                )
            })?;
        let value = |v: &str| -> Result<u64, String> {
            match v.parse::<i64>() {
                Ok(-1) => Ok(libc::RLIM_INFINITY),
                Ok(n) if n >= 0 => Ok(n as u64),
                _ => Err(format!(
                    "invalid ulimit {s:?}: {v:?} is not a number (or -1 for unlimited)"
                )),
            }
        };
        let (soft, hard) = match values.split_once(':') {
            Some((soft, hard)) => (value(soft)?, value(hard)?),
            None => {
                let v = value(values)?;
                (v, v)
            }
        };
        if soft > hard {
            return Err(format!(
                "invalid ulimit {s:?}: soft limit {soft} is greater than hard limit {hard}"
            ));
        }
        Ok(Ulimit {
            resource,
            soft,
            hard,
        })
    }
}

/// Parses a docker size (`--shm-size`): bytes, or a number with `b`, `k`,
/// `m` or `g` (powers of 1024, case-insensitive, an optional trailing `b`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(digits_end);
    let shift = match unit {
        "" | "b" => 0,
        "k" | "kb" => 10,
        "m" | "mb" => 20,
        "g" | "gb" => 30,
        _ => {
            return Err(format!(
                "invalid size {s:?}: expected e.g. 64m, 1g or bytes"
            ));
        }
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 64m, 1g or bytes"))?;
    if n == 0 {
        return Err(format!("invalid size {s:?}: must be greater than 0"));
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// One `RUN --mount` as the sandbox sees it: what to mount where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepMount {
    /// Absolute path inside the root (relative targets are resolved by the
    /// caller). Symlinks on the way resolve inside the root.
    pub target: String,
    pub source: MountSource,
    /// Mounted read-only (the mount itself, not the ones below it).
    pub readonly: bool,
}

/// Where a [`StepMount`] comes from.
#[derive(Clone)]
pub enum MountSource {
    /// A host directory, file or socket, bound in (a cache mount, the build
    /// context, an SSH agent socket).
    Host(PathBuf),
    /// A detached mount (a view of a stage, a throwaway overlay), bound in
    /// from `subpath`: a path inside it with no symlink, `""` for its root.
    Detached {
        mount: Arc<DetachedMount>,
        subpath: String,
    },
    /// A fresh tmpfs of at most `size` bytes (none: the kernel's default,
    /// half the memory).
    Tmpfs { size: Option<u64> },
    /// A file that exists only on the step's private tmpfs, never on disk (a
    /// secret).
    File {
        content: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl PartialEq for MountSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (MountSource::Host(a), MountSource::Host(b)) => a == b,
            (
                MountSource::Detached {
                    mount: a,
                    subpath: x,
                },
                MountSource::Detached {
                    mount: b,
                    subpath: y,
                },
            ) => Arc::ptr_eq(a, b) && x == y,
            (MountSource::Tmpfs { size: a }, MountSource::Tmpfs { size: b }) => a == b,
            (
                MountSource::File {
                    content: c1,
                    mode: m1,
                    uid: u1,
                    gid: g1,
                },
                MountSource::File {
                    content: c2,
                    mode: m2,
                    uid: u2,
                    gid: g2,
                },
            ) => c1 == c2 && (m1, u1, g1) == (m2, u2, g2),
            _ => false,
        }
    }
}

impl Eq for MountSource {}

/// Never shows a file's content: it may be a secret.
impl std::fmt::Debug for MountSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MountSource::Host(path) => f.debug_tuple("Host").field(path).finish(),
            MountSource::Detached { mount, subpath } => f
                .debug_struct("Detached")
                .field("mount", mount)
                .field("subpath", subpath)
                .finish(),
            MountSource::Tmpfs { size } => f.debug_struct("Tmpfs").field("size", size).finish(),
            MountSource::File {
                content,
                mode,
                uid,
                gid,
            } => f
                .debug_struct("File")
                .field("content", &format_args!("<{} bytes>", content.len()))
                .field("mode", &format_args!("{mode:o}"))
                .field("uid", uid)
                .field("gid", gid)
                .finish(),
        }
    }
}

/// A file created for one step under `/dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFile {
    /// Absolute path below `/dev/`; missing directories are created (0755).
    pub path: String,
    /// Permission bits, e.g. 0o755 for a script.
    pub mode: u32,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for RunSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let env_names: Vec<&str> = self
            .env
            .iter()
            .map(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k))
            .collect();
        f.debug_struct("RunSpec")
            .field("rootfs", &self.rootfs)
            .field("argv", &self.argv)
            .field("env (names)", &env_names)
            .field("user", &self.user)
            .field("cwd", &self.cwd)
            .field("hostname", &self.hostname)
            .field("network", &self.network)
            .field("extra_hosts", &self.extra_hosts)
            .field("privileged", &self.privileged)
            .field("files", &self.files)
            .field("mounts", &self.mounts)
            .field("shm_size", &self.shm_size)
            .field("rlimits", &self.rlimits)
            .finish()
    }
}

impl RunSpec {
    /// A step running `argv` as root in `/`, with the host's network and
    /// [`DEFAULT_HOSTNAME`].
    pub fn new(rootfs: RootFs, argv: Vec<String>) -> Self {
        Self {
            rootfs,
            argv,
            env: Vec::new(),
            user: UserSpec::default(),
            cwd: "/".to_owned(),
            hostname: DEFAULT_HOSTNAME.to_owned(),
            network: NetworkMode::Host,
            extra_hosts: Vec::new(),
            privileged: false,
            files: Vec::new(),
            mounts: Vec::new(),
            shm_size: DEFAULT_SHM_SIZE,
            rlimits: Vec::new(),
        }
    }
}

/// Where the step's standard input comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Input {
    /// `/dev/null`, as for every RUN step.
    #[default]
    Null,
    /// The caller's own standard input (`builder run -i`).
    Inherit,
}

/// Where one of the step's output streams goes.
#[derive(Default)]
pub enum Output<'a> {
    /// Discarded.
    #[default]
    Null,
    /// The caller's own stdout or stderr, unbuffered (`builder run`).
    Inherit,
    /// Read through a pipe and written to the sink as it arrives; the sink is
    /// flushed once, when the stream has ended. [`LineSink`] turns this into a
    /// per-line callback.
    Sink(&'a mut dyn Write),
    /// Only valid for stderr: the same pipe as stdout, so that the two
    /// streams keep their relative order (a build log).
    SameAsStdout,
}

impl std::fmt::Debug for Output<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Output::Null => "Null",
            Output::Inherit => "Inherit",
            Output::Sink(_) => "Sink(..)",
            Output::SameAsStdout => "SameAsStdout",
        })
    }
}

/// The standard streams of a step.
#[derive(Debug, Default)]
pub struct StepIo<'a> {
    pub stdin: Input,
    pub stdout: Output<'a>,
    pub stderr: Output<'a>,
}

impl<'a> StepIo<'a> {
    /// No input, output discarded.
    pub fn null() -> Self {
        Self::default()
    }

    /// The caller's stdin, stdout and stderr, connected directly.
    pub fn inherit() -> Self {
        Self {
            stdin: Input::Inherit,
            stdout: Output::Inherit,
            stderr: Output::Inherit,
        }
    }

    /// No input; stdout and stderr streamed to separate sinks.
    pub fn capture(stdout: &'a mut dyn Write, stderr: &'a mut dyn Write) -> Self {
        Self {
            stdin: Input::Null,
            stdout: Output::Sink(stdout),
            stderr: Output::Sink(stderr),
        }
    }

    /// No input; stdout and stderr interleaved into one sink in the order the
    /// step wrote them.
    pub fn combined(sink: &'a mut dyn Write) -> Self {
        Self {
            stdin: Input::Null,
            stdout: Output::Sink(sink),
            stderr: Output::SameAsStdout,
        }
    }
}

/// A [`Write`] sink that calls `f` once per line, without the newline.
///
/// A last line without a newline is delivered on [`flush`](Write::flush),
/// which the executor calls once at the end of the stream.
pub struct LineSink<F: FnMut(&[u8])> {
    pending: Vec<u8>,
    f: F,
}

impl<F: FnMut(&[u8])> LineSink<F> {
    pub fn new(f: F) -> Self {
        Self {
            pending: Vec::new(),
            f,
        }
    }
}

impl<F: FnMut(&[u8])> Write for LineSink<F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            if self.pending.is_empty() {
                (self.f)(&rest[..nl]);
            } else {
                self.pending.extend_from_slice(&rest[..nl]);
                (self.f)(&self.pending);
                self.pending.clear();
            }
            rest = &rest[nl + 1..];
        }
        self.pending.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            (self.f)(&self.pending);
            self.pending.clear();
        }
        Ok(())
    }
}

/// How a step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// The command ran and exited with this status.
    Exited(i32),
    /// The command was killed by this signal (a number, since real-time
    /// signals have no [`Signal`] value).
    Signaled(i32),
    /// The command does not exist (docker's exit code 127).
    NotFound { command: String },
    /// The command exists but cannot be executed: no permission, not an
    /// executable format, a directory (docker's exit code 126).
    NotExecutable { command: String, errno: Errno },
}

impl Termination {
    /// The exit code a shell or `docker run` would report.
    pub fn exit_code(&self) -> i32 {
        match self {
            Termination::Exited(code) => *code,
            Termination::Signaled(signal) => 128 + *signal,
            Termination::NotFound { .. } => 127,
            Termination::NotExecutable { .. } => 126,
        }
    }

    pub fn success(&self) -> bool {
        matches!(self, Termination::Exited(0))
    }
}

impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Termination::Exited(code) => write!(f, "exit code {code}"),
            Termination::Signaled(signal) => match Signal::try_from(*signal) {
                Ok(name) => write!(f, "killed by {name}"),
                Err(_) => write!(f, "killed by signal {signal}"),
            },
            Termination::NotFound { command } => {
                write!(f, "{command}: executable file not found")
            }
            Termination::NotExecutable { command, errno } => {
                write!(f, "{command}: cannot execute: {}", errno.desc())
            }
        }
    }
}

/// The result of a step that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOutcome {
    pub termination: Termination,
    /// Wall time from the start of [`Executor::run`] until the step's last
    /// process was gone and its output drained.
    pub elapsed: Duration,
}

/// What can go wrong in the sandbox itself (as opposed to the command).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid step: {0}")]
    InvalidSpec(String),
    #[error("prepare sandbox state in {path}")]
    State {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {what}")]
    Mount {
        what: String,
        #[source]
        source: Errno,
    },
    #[error(transparent)]
    User(#[from] UserError),
    #[error("create working directory {path}")]
    Workdir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("start sandbox process ({what})")]
    Spawn {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("sandbox setup failed: {step}")]
    Setup {
        step: String,
        #[source]
        source: Errno,
    },
    #[error("write step output")]
    Output(#[source] io::Error),
    #[error("wait for sandbox process")]
    Wait(#[source] Errno),
    #[error("step cancelled")]
    Cancelled,
}

type Target = Arc<dyn Fn(Signal) -> bool + Send + Sync>;

#[derive(Default)]
struct CancelState {
    cancelled: bool,
    next_id: u64,
    targets: Vec<(u64, Target)>,
}

/// Cancels running steps from another thread.
///
/// Clones share one state, so one handle can stand for a whole build: after
/// [`cancel`](Self::cancel) every step attached to it is killed, and a step
/// started with it later fails with [`SandboxError::Cancelled`] at once.
#[derive(Clone, Default)]
pub struct CancelHandle {
    state: Arc<Mutex<CancelState>>,
}

impl CancelHandle {
    pub fn new() -> Self {
        Self::default()
    }

    /// Kills every attached step (its whole PID namespace) and marks the
    /// handle cancelled.
    pub fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        for (_, target) in &state.targets {
            target(Signal::SIGKILL);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Sends `signal` to the first process of every attached step, for
    /// `builder run` forwarding SIGINT/SIGTERM. As for any PID 1, the kernel
    /// drops signals the process has no handler for (SIGKILL aside). Returns
    /// whether some step received it.
    pub fn signal(&self, signal: Signal) -> bool {
        let state = self.lock();
        let mut delivered = false;
        for (_, target) in &state.targets {
            delivered |= target(signal);
        }
        delivered
    }

    /// For executors: registers a running step. `target` delivers a signal
    /// to it and says whether that worked. If the handle is already
    /// cancelled, `target` receives SIGKILL before this returns. The step is
    /// detached when the guard drops.
    pub fn attach(&self, target: Target) -> Attached<'_> {
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        if state.cancelled {
            target(Signal::SIGKILL);
        }
        state.targets.push((id, target));
        Attached { handle: self, id }
    }

    fn lock(&self) -> MutexGuard<'_, CancelState> {
        // A target that panicked leaves nothing inconsistent behind.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl std::fmt::Debug for CancelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("CancelHandle")
            .field("cancelled", &state.cancelled)
            .field("attached", &state.targets.len())
            .finish()
    }
}

/// Keeps a step attached to a [`CancelHandle`] while it runs.
#[must_use = "the step is detached when this is dropped"]
pub struct Attached<'a> {
    handle: &'a CancelHandle,
    id: u64,
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.handle.lock().targets.retain(|(id, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_sink_splits_lines_across_writes() {
        let mut lines = Vec::new();
        let mut sink = LineSink::new(|line: &[u8]| lines.push(line.to_vec()));
        sink.write_all(b"one\ntw").unwrap();
        sink.write_all(b"o\n\nthree").unwrap();
        sink.flush().unwrap();
        sink.flush().unwrap();
        drop(sink);
        assert_eq!(
            lines,
            vec![
                b"one".to_vec(),
                b"two".to_vec(),
                b"".to_vec(),
                b"three".to_vec()
            ]
        );
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(Termination::Exited(3).exit_code(), 3);
        assert_eq!(Termination::Signaled(libc::SIGKILL).exit_code(), 137);
        assert_eq!(Termination::Signaled(9).to_string(), "killed by SIGKILL");
        let not_found = Termination::NotFound {
            command: "x".into(),
        };
        assert_eq!(not_found.exit_code(), 127);
        let not_exec = Termination::NotExecutable {
            command: "x".into(),
            errno: Errno::EACCES,
        };
        assert_eq!(not_exec.exit_code(), 126);
        assert!(Termination::Exited(0).success());
        assert!(!Termination::Exited(1).success());
    }

    #[test]
    fn cancel_reaches_attached_and_later_steps() {
        let handle = CancelHandle::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = |seen: &Arc<Mutex<Vec<(u32, Signal)>>>, n: u32| -> Target {
            let seen = Arc::clone(seen);
            Arc::new(move |sig| {
                seen.lock().unwrap().push((n, sig));
                true
            })
        };
        {
            let _a = handle.attach(record(&seen, 1));
            assert!(handle.signal(Signal::SIGTERM));
            handle.clone().cancel();
        }
        assert!(
            !handle.signal(Signal::SIGTERM),
            "detached step still reachable"
        );
        let _b = handle.attach(record(&seen, 2));
        assert!(handle.is_cancelled());
        assert_eq!(
            *seen.lock().unwrap(),
            vec![
                (1, Signal::SIGTERM),
                (1, Signal::SIGKILL),
                (2, Signal::SIGKILL)
            ]
        );
    }

    #[test]
    fn ulimit_parses_docker_syntax() {
        let nofile: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!(
            nofile,
            Ulimit {
                resource: libc::RLIMIT_NOFILE as u32,
                soft: 1024,
                hard: 2048
            }
        );
        let core: Ulimit = "core=-1".parse().unwrap();
        assert_eq!(
            (core.soft, core.hard),
            (libc::RLIM_INFINITY, libc::RLIM_INFINITY)
        );
        let err = "nofile=2048:1024".parse::<Ulimit>().unwrap_err();
        assert!(
            err.contains("soft limit 2048 is greater than hard limit 1024"),
            "{err}"
        );
        let err = "files=1".parse::<Ulimit>().unwrap_err();
        assert!(
            err.contains("invalid ulimit type \"files\"") && err.contains("nofile"),
            "{err}"
        );
        assert!("nofile".parse::<Ulimit>().is_err());
        assert!("nofile=abc".parse::<Ulimit>().is_err());
    }

    #[test]
    fn sizes_parse_as_docker_does() {
        assert_eq!(parse_size("128m"), Ok(128 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512kb"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("m").is_err());
    }
}
