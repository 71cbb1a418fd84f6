//! Sandbox tests that need root, namespaces and overlayfs (Linux >= 6.8):
//! real steps on a busybox root filesystem.
//!
//! Without root or busybox-static they print why and pass as skipped, except
//! when `CI` is set: CI provides all of it, so there they fail instead.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use solver::sandbox::testsupport::{
    TEST_GID, TEST_UID, TEST_USER, TEST_USER_ID_OUTPUT, busybox_rootfs, unavailable_reason,
};
use solver::sandbox::{
    CancelHandle, Executor, LineSink, LinuxExecutor, NetworkMode, Output, RootFs, RunOutcome,
    RunSpec, SandboxError, StepIo, Termination, UserError,
};

struct Fixture {
    base: PathBuf,
    rootfs: PathBuf,
    executor: LinuxExecutor,
    steps: AtomicUsize,
}

static FIXTURE: OnceLock<Option<Fixture>> = OnceLock::new();

fn fixture() -> Option<&'static Fixture> {
    FIXTURE
        .get_or_init(|| {
            if let Some(reason) = unavailable_reason() {
                if std::env::var_os("CI").is_some() {
                    panic!("sandbox tests cannot run but CI is set: {reason}");
                }
                eprintln!("skipping sandbox root tests: {reason}");
                return None;
            }
            // One directory per test process: the helper process below runs
            // beside its parent. Those of dead processes are cleared.
            let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sandbox_root");
            fs::create_dir_all(&parent).unwrap();
            for entry in fs::read_dir(&parent).unwrap() {
                let name = entry.unwrap().file_name();
                let alive = Path::new("/proc").join(&name).exists();
                if !alive {
                    let _ = fs::remove_dir_all(parent.join(name));
                }
            }
            let base = parent.join(std::process::id().to_string());
            let _ = fs::remove_dir_all(&base);
            let rootfs = base.join("rootfs");
            busybox_rootfs(&rootfs).expect("build busybox rootfs");
            let state = base.join("state");
            let executor = LinuxExecutor::new(&state).expect("create executor");
            Some(Fixture {
                base,
                rootfs,
                executor,
                steps: AtomicUsize::new(0),
            })
        })
        .as_ref()
}

/// The fixture, or return from the test (skipped) when the sandbox cannot
/// run here.
macro_rules! fixture {
    () => {
        match fixture() {
            Some(fixture) => fixture,
            None => return,
        }
    };
}

/// The output of a finished step.
struct Ran {
    outcome: RunOutcome,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn code(&self) -> i32 {
        self.outcome.termination.exit_code()
    }

    #[track_caller]
    fn assert_ok(&self) -> &str {
        assert!(
            self.outcome.termination.success(),
            "step failed: {}\nstdout: {}\nstderr: {}",
            self.outcome.termination,
            self.stdout,
            self.stderr
        );
        &self.stdout
    }
}

impl Fixture {
    /// A step on the busybox rootfs with a fresh upperdir.
    fn spec(&self, argv: &[&str]) -> RunSpec {
        self.spec_on(vec![self.rootfs.clone()], argv)
    }

    fn spec_on(&self, lowerdirs: Vec<PathBuf>, argv: &[&str]) -> RunSpec {
        let n = self.steps.fetch_add(1, Ordering::Relaxed);
        let dir = self.base.join(format!("step-{n}"));
        let (upper, work) = (dir.join("upper"), dir.join("work"));
        fs::create_dir_all(&upper).unwrap();
        fs::create_dir_all(&work).unwrap();
        RunSpec::new(
            RootFs {
                lowerdirs,
                upperdir: upper,
                workdir: work,
            },
            argv.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn sh(&self, script: &str) -> RunSpec {
        self.spec(&["sh", "-c", script])
    }

    fn try_run(&self, spec: &RunSpec) -> Result<Ran, SandboxError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let outcome = self.executor.run(
            spec,
            StepIo::capture(&mut stdout, &mut stderr),
            &CancelHandle::new(),
        )?;
        Ok(Ran {
            outcome,
            stdout: String::from_utf8(stdout).unwrap(),
            stderr: String::from_utf8(stderr).unwrap(),
        })
    }

    #[track_caller]
    fn run(&self, spec: &RunSpec) -> Ran {
        self.try_run(spec).expect("sandbox failed")
    }
}

/// Every entry below `dir`, relative path → (file type letter, mode, uid,
/// gid, rdev).
fn tree(dir: &Path) -> BTreeMap<String, (char, u32, u32, u32, u64)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (char, u32, u32, u32, u64)>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            let kind = match meta.file_type() {
                t if t.is_dir() => 'd',
                t if t.is_file() => 'f',
                t if t.is_symlink() => 'l',
                t if t.is_char_device() => 'c',
                _ => '?',
            };
            let rel = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(
                rel,
                (
                    kind,
                    meta.mode() & 0o7777,
                    meta.uid(),
                    meta.gid(),
                    meta.rdev(),
                ),
            );
            if kind == 'd' {
                walk(root, &entry.path(), out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn status_field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("{field} missing in {status}"))
        .trim()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[test]
fn root_gets_docker_default_capabilities() {
    let f = fixture!();
    let ran = f.run(&f.spec(&["cat", "/proc/self/status"]));
    let status = ran.assert_ok();
    assert_eq!(status_field(status, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(status, "CapPrm"), "00000000a80425fb");
    assert_eq!(status_field(status, "CapBnd"), "00000000a80425fb");
    assert_eq!(status_field(status, "CapInh"), "0000000000000000");
    assert_eq!(status_field(status, "CapAmb"), "0000000000000000");
    // Like docker, no_new_privs stays off (setuid binaries keep working).
    assert_eq!(status_field(status, "NoNewPrivs"), "0");
}

#[test]
fn mounting_is_not_permitted() {
    let f = fixture!();
    let ran = f.run(&f.sh(
        "mount -t tmpfs x /mnt; echo status=$?; grep -c ' /mnt ' /proc/mounts; unshare -m true",
    ));
    assert!(
        ran.stdout.contains("status=1"),
        "mount succeeded: {}",
        ran.stdout
    );
    // busybox prints this for EPERM from mount(2) instead of strerror.
    assert!(
        ran.stderr
            .contains("mount: permission denied (are you root?)"),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stdout.contains("\n0\n"),
        "/mnt got mounted: {}",
        ran.stdout
    );
    // The same missing CAP_SYS_ADMIN, with the kernel's wording.
    assert!(
        ran.stderr
            .contains("unshare(0x20000): Operation not permitted"),
        "{}",
        ran.stderr
    );
    assert_ne!(ran.code(), 0);
}

#[test]
fn only_the_steps_own_processes_are_visible() {
    let f = fixture!();
    let ran = f.run(&f.sh("sleep 30 & ls /proc; cat /proc/1/cmdline; echo; kill $!"));
    let out = ran.assert_ok();
    let pids: Vec<u32> = out.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(pids.contains(&1), "no pid 1 in {pids:?}");
    // sh (pid 1), sleep and ls: nothing of the host's hundreds of processes.
    assert!(pids.len() <= 3 && pids.iter().all(|p| *p < 10), "{pids:?}");
    assert!(
        out.contains("sh\0-c\0sleep 30"),
        "pid 1 is not the step: {out:?}"
    );
}

#[test]
fn host_files_outside_the_root_are_absent() {
    let f = fixture!();
    let marker = PathBuf::from("/tmp").join(unique("sandbox-host-marker"));
    fs::write(&marker, "host").unwrap();
    let ran = f.run(&f.spec(&["ls", marker.to_str().unwrap()]));
    fs::remove_file(&marker).unwrap();
    assert_ne!(ran.code(), 0, "host file visible: {}", ran.stdout);
    assert!(
        ran.stderr.contains("No such file or directory"),
        "{}",
        ran.stderr
    );
}

#[test]
fn network_none_has_only_loopback_and_it_is_up() {
    let f = fixture!();
    let mut spec =
        f.sh("ls /sys/class/net; echo --; cat /sys/class/net/lo/flags; echo --; cat /proc/net/dev");
    spec.network = NetworkMode::None;
    let ran = f.run(&spec);
    let out = ran.assert_ok();
    let parts: Vec<&str> = out.split("--\n").collect();
    assert_eq!(parts[0], "lo\n");
    let flags = u32::from_str_radix(parts[1].trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "lo is down: flags {flags:#x}");
    let interfaces: Vec<&str> = parts[2]
        .lines()
        .skip(2)
        .map(|l| l.split(':').next().unwrap().trim())
        .collect();
    assert_eq!(interfaces, vec!["lo"]);
}

#[test]
fn default_network_is_the_hosts() {
    let f = fixture!();
    let ran = f.run(&f.spec(&["ls", "/sys/class/net"]));
    let mut inside: Vec<&str> = ran.assert_ok().lines().collect();
    let mut host: Vec<String> = fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    inside.sort();
    host.sort();
    assert_eq!(inside, host);
    assert!(
        host.len() > 1,
        "host has only {host:?}: the test proves nothing"
    );
}

#[test]
fn hostname_is_the_configured_one_and_the_hosts_is_unchanged() {
    let f = fixture!();
    let before = nix::unistd::gethostname().unwrap();
    let mut spec =
        f.sh("hostname; cat /etc/hostname; echo $HOSTNAME; grep -c ' step-host$' /etc/hosts");
    spec.hostname = "step-host".into();
    let ran = f.run(&spec);
    assert_eq!(ran.assert_ok(), "step-host\nstep-host\nstep-host\n1\n");
    assert_eq!(nix::unistd::gethostname().unwrap(), before);
}

#[test]
fn writes_land_in_the_upperdir_and_mountpoints_never_do() {
    let f = fixture!();
    let marker = unique("sandbox-step-tmp");
    let host_tmp_before: Vec<_> = fs::read_dir("/tmp")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let spec = f.sh(&format!(
        "echo new > /newfile && echo x > /tmp/{marker} && rm /etc/motd && \
         echo '10.0.0.1 extra' >> /etc/hosts && echo changed > /etc/resolv.conf && \
         echo other > /etc/hostname && touch /dev/devfile /dev/shm/shmfile && \
         cat /etc/hosts /etc/resolv.conf /etc/hostname > /dev/null"
    ));
    let ran = f.run(&spec);
    ran.assert_ok();
    let upper = tree(&spec.rootfs.upperdir);
    let names: Vec<&str> = upper.keys().map(String::as_str).collect();
    let tmp_file = format!("tmp/{marker}");
    assert_eq!(
        names,
        vec!["etc", "etc/motd", "newfile", "tmp", tmp_file.as_str()]
    );
    // Deleting a lower file leaves an overlay whiteout: a 0:0 char device.
    let (kind, _, _, _, rdev) = upper["etc/motd"];
    assert_eq!((kind, rdev), ('c', 0));
    assert_eq!(
        fs::read_to_string(spec.rootfs.upperdir.join("newfile")).unwrap(),
        "new\n"
    );
    // The lower layer is untouched.
    assert!(f.rootfs.join("etc/motd").exists());
    // Nothing the step wrote reached the host's /tmp.
    let host_tmp_after: Vec<_> = fs::read_dir("/tmp")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let new_in_tmp: Vec<_> = host_tmp_after
        .iter()
        .filter(|n| !host_tmp_before.contains(n))
        .collect();
    assert!(
        !new_in_tmp
            .iter()
            .any(|n| n.to_string_lossy().contains(&marker)),
        "step wrote into host /tmp: {new_in_tmp:?}"
    );
    assert!(!Path::new("/tmp").join(&marker).exists());
}

#[test]
fn a_step_that_changes_nothing_leaves_an_empty_upperdir() {
    let f = fixture!();
    let spec =
        f.sh("cat /etc/hosts /etc/resolv.conf > /dev/null && ls /dev /proc /sys > /dev/null");
    f.run(&spec).assert_ok();
    assert!(tree(&spec.rootfs.upperdir).is_empty());
    // The workdir needs no creation for "/" either.
    assert!(
        fs::read_dir(&spec.rootfs.upperdir)
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn image_etc_files_are_shadowed_not_changed() {
    let f = fixture!();
    let layer = f.base.join(unique("etc-layer"));
    fs::create_dir_all(layer.join("etc")).unwrap();
    fs::write(layer.join("etc/hosts"), "original\n").unwrap();
    fs::set_permissions(layer.join("etc"), fs::Permissions::from_mode(0o750)).unwrap();
    let spec = f.spec_on(
        vec![f.rootfs.clone(), layer.clone()],
        &["sh", "-c", "cat /etc/hosts; stat -c %a /etc; cat /etc/motd"],
    );
    let ran = f.run(&spec);
    let out = ran.assert_ok();
    assert!(
        out.starts_with("127.0.0.1\tlocalhost buildersandbox\n"),
        "{out}"
    );
    assert!(!out.contains("original"), "{out}");
    // /etc keeps the image's mode although a skeleton layer covers it, and
    // the lower /etc still merges in.
    assert!(out.contains("\n750\nwelcome\n"), "{out}");
    assert_eq!(
        fs::read_to_string(layer.join("etc/hosts")).unwrap(),
        "original\n"
    );
    assert!(tree(&spec.rootfs.upperdir).is_empty());
}

#[test]
fn dev_is_minimal_and_kernel_interfaces_are_read_only() {
    let f = fixture!();
    let script = "ls /dev | tr '\\n' ' '; echo; \
        head -c 5 /dev/urandom | wc -c; echo data > /dev/null && echo null-ok; \
        stat -c '%a' /dev/shm; readlink /dev/ptmx; readlink /dev/fd; \
        touch /sys/x 2>&1; { echo 4096 > /proc/sys/kernel/pid_max; } 2>&1; \
        wc -c < /proc/interrupts; echo end";
    let before = fs::read_to_string("/proc/sys/kernel/pid_max").unwrap();
    let ran = f.run(&f.sh(script));
    let out = &ran.stdout;
    assert!(
        out.starts_with("fd full null ptmx pts random shm stderr stdin stdout tty urandom zero \n"),
        "{out}"
    );
    assert!(
        out.contains("\n5\nnull-ok\n1777\npts/ptmx\n/proc/self/fd\n"),
        "{out}"
    );
    assert!(
        out.contains("touch: /sys/x: Read-only file system\n"),
        "{out}"
    );
    // Uid 0 could write host sysctls through /proc/sys without any capability.
    assert!(
        out.contains("can't create /proc/sys/kernel/pid_max: Read-only file system\n"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/pid_max").unwrap(),
        before
    );
    // Masked with /dev/null, as docker does: the host's has content.
    assert!(!fs::read("/proc/interrupts").unwrap().is_empty());
    assert!(out.ends_with("\n0\nend\n"), "{out}");
}

#[test]
fn user_by_name_gets_its_groups_home_and_no_capabilities() {
    let f = fixture!();
    let mut spec = f.sh("id; echo $HOME; grep -E '^Cap(Eff|Bnd)' /proc/self/status");
    spec.user = TEST_USER.parse().unwrap();
    let ran = f.run(&spec);
    assert_eq!(
        ran.assert_ok(),
        format!(
            "{TEST_USER_ID_OUTPUT}\n/home/test\nCapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n"
        )
    );
}

#[test]
fn default_user_is_root_with_its_groups() {
    let f = fixture!();
    let ran = f.run(&f.sh("id; echo $HOME"));
    assert_eq!(
        ran.assert_ok(),
        "uid=0(root) gid=0(root) groups=0(root),10(wheel)\n/root\n"
    );
}

#[test]
fn user_by_uid_and_gid() {
    let f = fixture!();
    let mut spec = f.sh("id; echo $HOME");
    spec.user = "1234:5678".parse().unwrap();
    assert_eq!(
        f.run(&spec).assert_ok(),
        "uid=1234 gid=5678 groups=5678\n/\n"
    );
    // A uid missing from /etc/passwd is allowed, with gid 0, as in docker.
    let mut spec = f.spec(&["id"]);
    spec.user = "4321".parse().unwrap();
    assert_eq!(
        f.run(&spec).assert_ok(),
        "uid=4321 gid=0(root) groups=0(root)\n"
    );
    // uid:group by name.
    let mut spec = f.spec(&["id"]);
    spec.user = "1000:audio".parse().unwrap();
    assert_eq!(
        f.run(&spec).assert_ok(),
        "uid=1000(test) gid=29(audio) groups=29(audio)\n"
    );
}

#[test]
fn unknown_user_or_group_is_an_error_naming_it() {
    let f = fixture!();
    let mut spec = f.spec(&["true"]);
    spec.user = "ghost".parse().unwrap();
    let err = f.try_run(&spec).err().expect("unknown user accepted");
    assert!(matches!(&err, SandboxError::User(UserError::UnknownUser(name)) if name == "ghost"));
    assert_eq!(
        err.to_string(),
        "unable to find user ghost: no matching entries in passwd file"
    );
    spec.user = "test:ghosts".parse().unwrap();
    let err = f.try_run(&spec).err().expect("unknown group accepted");
    assert!(
        err.to_string().contains("unable to find group ghosts"),
        "{err}"
    );
    assert!(tree(&spec.rootfs.upperdir).is_empty());
}

#[test]
fn workdir_is_created_for_the_user_and_entered() {
    let f = fixture!();
    let mut spec = f.spec(&["pwd"]);
    spec.cwd = "/work/dir/../sub/".into();
    spec.user = TEST_USER.parse().unwrap();
    assert_eq!(f.run(&spec).assert_ok(), "/work/sub\n");
    let upper = tree(&spec.rootfs.upperdir);
    assert_eq!(upper.keys().collect::<Vec<_>>(), vec!["work", "work/sub"]);
    for dir in ["work", "work/sub"] {
        assert_eq!(upper[dir], ('d', 0o755, TEST_UID, TEST_GID, 0), "{dir}");
    }
    // An existing directory is entered as it is.
    let mut spec = f.spec(&["pwd"]);
    spec.cwd = "/home/test".into();
    assert_eq!(f.run(&spec).assert_ok(), "/home/test\n");
    assert!(tree(&spec.rootfs.upperdir).is_empty());
}

#[test]
fn exit_codes_propagate_and_exec_failures_are_distinct() {
    let f = fixture!();
    let ran = f.run(&f.sh("exit 3"));
    assert_eq!(ran.outcome.termination, Termination::Exited(3));
    assert_eq!(ran.code(), 3);

    for missing in ["/nonexistent", "no-such-command"] {
        let ran = f.run(&f.spec(&[missing]));
        assert_eq!(
            ran.outcome.termination,
            Termination::NotFound {
                command: missing.into()
            }
        );
        assert_eq!(ran.code(), 127);
    }
    for not_executable in ["/etc/passwd", "/etc"] {
        let ran = f.run(&f.spec(&[not_executable]));
        assert!(
            matches!(ran.outcome.termination, Termination::NotExecutable { ref command, .. } if command == not_executable),
            "{:?}",
            ran.outcome.termination
        );
        assert_eq!(ran.code(), 126);
    }
    // Lookup uses the step's PATH, not the host's or a built-in one.
    let mut spec = f.spec(&["true"]);
    spec.env = vec!["PATH=/nowhere".into()];
    assert_eq!(f.run(&spec).code(), 127);
    spec.env = vec!["PATH=/nowhere:/bin".into()];
    assert_eq!(f.run(&spec).code(), 0);
}

#[test]
fn environment_is_the_given_one_plus_hostname_and_home() {
    let f = fixture!();
    let mut spec = f.spec(&["env"]);
    spec.env = vec!["PATH=/bin".into(), "A=1".into(), "B=x y".into()];
    let ran = f.run(&spec);
    let mut lines: Vec<&str> = ran.assert_ok().lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "A=1",
            "B=x y",
            "HOME=/root",
            "HOSTNAME=buildersandbox",
            "PATH=/bin"
        ]
    );
}

#[test]
fn output_streams_separately_or_combined_in_order() {
    let f = fixture!();
    let script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; printf tail";
    let ran = f.run(&f.sh(script));
    assert_eq!(ran.stdout, "out1\nout2\ntail");
    assert_eq!(ran.stderr, "err1\nerr2\n");

    let mut lines = Vec::new();
    let mut sink =
        LineSink::new(|line: &[u8]| lines.push(String::from_utf8_lossy(line).into_owned()));
    let outcome = f
        .executor
        .run(
            &f.sh(script),
            StepIo::combined(&mut sink),
            &CancelHandle::new(),
        )
        .unwrap();
    drop(sink);
    assert!(outcome.termination.success());
    assert_eq!(lines, vec!["out1", "err1", "out2", "err2", "tail"]);

    // Discarded output still lets the step run to the end.
    let io = StepIo {
        stdout: Output::Null,
        ..StepIo::null()
    };
    let outcome = f
        .executor
        .run(&f.sh("yes | head -c 1000000"), io, &CancelHandle::new())
        .unwrap();
    assert!(outcome.termination.success());
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(marker))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn cancellation_kills_the_whole_step_quickly() {
    let f = fixture!();
    // Unique sleep durations mark the step's processes in the host's /proc.
    let n = 100_000 + (std::process::id() % 50_000);
    let marker = format!("sleep\0{n}");
    let spec = f.sh(&format!(
        "sleep {n} & sleep {} & echo ready; sleep {n}",
        n + 1
    ));
    let cancel = CancelHandle::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cancelled_at = Arc::new(Mutex::new(None));
    let mut sink = {
        let (cancel, seen, cancelled_at, marker) = (
            cancel.clone(),
            Arc::clone(&seen),
            Arc::clone(&cancelled_at),
            marker.clone(),
        );
        LineSink::new(move |line: &[u8]| {
            if line == b"ready" {
                // Streaming: the line arrives while the step still runs.
                let deadline = Instant::now() + Duration::from_secs(5);
                while processes_with(&marker).len() < 2 && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
                *seen.lock().unwrap() = processes_with(&marker);
                *cancelled_at.lock().unwrap() = Some(Instant::now());
                cancel.cancel();
            }
        })
    };
    let result = f.executor.run(&spec, StepIo::combined(&mut sink), &cancel);
    let returned = Instant::now();
    assert!(matches!(result, Err(SandboxError::Cancelled)), "{result:?}");
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.len() >= 2,
        "step processes not found before cancelling: {seen:?}"
    );
    let took = returned - cancelled_at.lock().unwrap().expect("never cancelled");
    // Far less than the step's `sleep`, with room for a loaded machine.
    assert!(took < Duration::from_secs(10), "cancellation took {took:?}");
    let left = processes_with(&marker);
    assert!(left.is_empty(), "processes survived cancellation: {left:?}");
    // A cancelled handle refuses further steps.
    assert!(matches!(
        f.executor.run(&f.spec(&["true"]), StepIo::null(), &cancel),
        Err(SandboxError::Cancelled)
    ));
}

#[test]
fn a_hundred_and_thirty_lowerdirs_mount_and_the_top_most_wins() {
    let f = fixture!();
    let layers_dir = f.base.join(unique("layers"));
    let mut lowerdirs = vec![f.rootfs.clone()];
    for i in 0..130 {
        // Long paths, as snapshot directories named by digest are.
        let layer = layers_dir.join(format!("{i:03}-{}", "d".repeat(64)));
        fs::create_dir_all(&layer).unwrap();
        fs::write(layer.join("layer"), format!("{i}\n")).unwrap();
        fs::write(layer.join(format!("only-{i}")), "").unwrap();
        lowerdirs.push(layer);
    }
    let total: usize = lowerdirs.iter().map(|p| p.as_os_str().len() + 1).sum();
    assert!(
        total > 4096,
        "the old option string would fit ({total} bytes)"
    );
    let spec = f.spec_on(
        lowerdirs,
        &["sh", "-c", "cat /layer; ls / | grep -c '^only-'"],
    );
    assert_eq!(f.run(&spec).assert_ok(), "129\n130\n");
}

#[test]
fn runs_leave_no_state_behind_whatever_the_outcome() {
    let f = fixture!();
    let state = f.base.join(unique("own-state"));
    let executor = LinuxExecutor::new(&state).unwrap();
    let run = |spec: &RunSpec| executor.run(spec, StepIo::null(), &CancelHandle::new());
    assert!(run(&f.spec(&["true"])).unwrap().termination.success());
    assert_eq!(
        run(&f.spec(&["/nonexistent"]))
            .unwrap()
            .termination
            .exit_code(),
        127
    );
    let mut spec = f.spec(&["true"]);
    spec.user = "ghost".parse().unwrap();
    assert!(run(&spec).is_err());
    // The mountpoint is only ever used inside the steps' own namespaces,
    // and one cached skeleton served all three steps.
    assert!(fs::read_dir(state.join("mnt")).unwrap().next().is_none());
    let skeletons: Vec<_> = fs::read_dir(state.join("skeletons"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(skeletons.len(), 1, "{skeletons:?}");
    assert!(skeletons[0].starts_with("v1-etc-"), "{skeletons:?}");
}

#[test]
fn nothing_is_mounted_in_the_hosts_namespace() {
    let f = fixture!();
    let spec = f.sh("echo ready; sleep 0.5");
    let upper = spec.rootfs.upperdir.to_string_lossy().into_owned();
    let state = f.base.join("state").to_string_lossy().into_owned();
    let mut host_mounts = None;
    let mut sink = LineSink::new(|line: &[u8]| {
        if line == b"ready" {
            host_mounts = Some(fs::read_to_string("/proc/self/mountinfo").unwrap());
        }
    });
    let outcome = f
        .executor
        .run(&spec, StepIo::combined(&mut sink), &CancelHandle::new())
        .unwrap();
    drop(sink);
    assert!(outcome.termination.success());
    let host_mounts = host_mounts.expect("no output while the step ran");
    for needle in [upper.as_str(), state.as_str()] {
        assert!(
            !host_mounts.contains(needle),
            "{needle} in host mounts:\n{host_mounts}"
        );
    }
}

#[test]
fn durable_mode_gives_the_same_upperdir() {
    let f = fixture!();
    let executor = LinuxExecutor::new(f.base.join(unique("durable-state")))
        .unwrap()
        .durable(true);
    let spec = f.sh("echo kept > /kept && rm /etc/motd");
    let outcome = executor
        .run(&spec, StepIo::null(), &CancelHandle::new())
        .unwrap();
    assert!(outcome.termination.success());
    let upper = tree(&spec.rootfs.upperdir);
    assert_eq!(
        upper.keys().collect::<Vec<_>>(),
        vec!["etc", "etc/motd", "kept"]
    );
    // The default volatile mount leaves no marker either, so an upperdir
    // and workdir can serve several steps in a row.
    let spec = f.sh("echo one >> /log");
    f.run(&spec).assert_ok();
    assert!(!spec.rootfs.workdir.join("work/incompat").exists());
    f.run(&spec).assert_ok();
    let log = fs::read_to_string(spec.rootfs.upperdir.join("log")).unwrap();
    assert_eq!(log, "one\none\n");
}

#[test]
fn invalid_specs_are_rejected_before_anything_runs() {
    let f = fixture!();
    let mut spec = f.spec(&["true"]);
    spec.cwd = "relative".into();
    assert!(matches!(
        f.try_run(&spec),
        Err(SandboxError::InvalidSpec(_))
    ));
    let mut spec = f.spec(&["true"]);
    spec.env = vec!["NOEQUALS".into()];
    assert!(matches!(
        f.try_run(&spec),
        Err(SandboxError::InvalidSpec(_))
    ));
    let spec = f.spec(&[]);
    assert!(matches!(
        f.try_run(&spec),
        Err(SandboxError::InvalidSpec(_))
    ));
    // A working directory under a file cannot be created.
    let mut spec = f.spec(&["true"]);
    spec.cwd = "/etc/motd/sub".into();
    let err = f
        .try_run(&spec)
        .err()
        .expect("workdir under a file accepted");
    assert!(matches!(err, SandboxError::Workdir { .. }), "{err:?}");
}

/// Processes whose command line contains `marker`, after waiting up to 5 s
/// for there to be none.
fn survivors(marker: &str) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = processes_with(marker);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn background_processes_die_with_the_step() {
    let f = fixture!();
    let n = 200_000 + (std::process::id() % 50_000);
    let marker = format!("sleep\0{n}");
    let ran = f.run(&f.sh(&format!("sleep {n} & sleep {n} & echo started")));
    assert_eq!(ran.assert_ok(), "started\n");
    // PID 1 exited, so the kernel killed the rest of the namespace before
    // the exit was reported: nothing is left right away.
    assert_eq!(processes_with(&marker), Vec::<u32>::new());
}

const HELPER_SCRIPT: &str = "SANDBOX_ROOT_HELPER_SCRIPT";

/// Not a test: the body of the helper process the two tests below start,
/// which runs one step with builder's own stdin, stdout and stderr.
#[test]
#[ignore = "helper process for other tests"]
fn helper_runs_a_step_with_inherited_stdio() {
    let Ok(script) = std::env::var(HELPER_SCRIPT) else {
        panic!("run by other tests only");
    };
    let f = fixture().expect("helper runs only where the sandbox can");
    let outcome = f
        .executor
        .run(&f.sh(&script), StepIo::inherit(), &CancelHandle::new())
        .unwrap();
    println!("helper outcome: {}", outcome.termination);
}

fn helper(script: &str) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([
            "--ignored",
            "--exact",
            "helper_runs_a_step_with_inherited_stdio",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env(HELPER_SCRIPT, script);
    command
}

#[test]
fn inherited_stdio_connects_the_callers_streams() {
    let _ = fixture!();
    use std::io::Write as _;
    use std::process::Stdio;
    let mut child = helper("cat; echo to-stdout; echo to-stderr >&2; exit 4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from stdin\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "helper failed: {stdout}{stderr}");
    assert!(stdout.contains("from stdin\nto-stdout\n"), "{stdout}");
    assert!(stdout.contains("helper outcome: exit code 4"), "{stdout}");
    assert!(stderr.contains("to-stderr\n"), "{stderr}");
}

#[test]
fn the_step_dies_with_builder() {
    let _ = fixture!();
    use std::io::BufRead as _;
    use std::process::Stdio;
    let n = 300_000 + (std::process::id() % 50_000);
    let marker = format!("sleep\0{n}");
    /// Kills the helper whatever happens, so a failing test leaves nothing.
    struct Helper(std::process::Child);
    impl Drop for Helper {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Helper(
        helper(&format!("sleep {n} & echo ready; sleep {n}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    // The harness may have printed "test <name> ... " on the same line.
    while !line.trim_end().ends_with("ready") {
        line.clear();
        assert_ne!(
            stdout.read_line(&mut line).unwrap(),
            0,
            "helper ended early"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&marker).len() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(processes_with(&marker).len(), 2, "step processes not found");
    // Builder killed outright: no chance to clean up, so only the kernel's
    // parent-death signal can end the step.
    drop(child);
    let left = survivors(&marker);
    assert!(left.is_empty(), "step outlived builder: {left:?}");
}

#[test]
fn signals_are_forwarded_to_a_step_that_handles_them() {
    let f = fixture!();
    let spec = f.sh("trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.05; done");
    let cancel = CancelHandle::new();
    let mut lines = Vec::new();
    let mut sink = LineSink::new(|line: &[u8]| {
        if line == b"ready" {
            assert!(cancel.signal(nix::sys::signal::Signal::SIGTERM));
        }
        lines.push(String::from_utf8_lossy(line).into_owned());
    });
    let outcome = f
        .executor
        .run(&spec, StepIo::combined(&mut sink), &cancel)
        .unwrap();
    drop(sink);
    assert_eq!(outcome.termination, Termination::Exited(7));
    assert_eq!(lines, vec!["ready", "got-term"]);
    assert!(!cancel.is_cancelled());
    // Nothing is attached any more once the step is over.
    assert!(!cancel.signal(nix::sys::signal::Signal::SIGTERM));
}

#[test]
fn a_failing_setup_step_is_named_with_its_errno() {
    let f = fixture!();
    // More supplementary groups than the kernel's NGROUPS_MAX (65536): only
    // setgroups in the child can find out.
    let layer = f.base.join(unique("many-groups"));
    fs::create_dir_all(layer.join("etc")).unwrap();
    let mut group = String::from("root:x:0:\ntest:x:1000:\n");
    for gid in 2000..2000 + 65_537 {
        group.push_str(&format!("g{gid}:x:{gid}:test\n"));
    }
    fs::write(layer.join("etc/group"), group).unwrap();
    let mut spec = f.spec_on(vec![f.rootfs.clone(), layer], &["true"]);
    spec.user = TEST_USER.parse().unwrap();
    let err = f
        .try_run(&spec)
        .err()
        .expect("setgroups with 65538 groups succeeded");
    assert_eq!(
        err.to_string(),
        "sandbox setup failed: set supplementary groups"
    );
    assert!(
        matches!(&err, SandboxError::Setup { source, .. } if *source == nix::errno::Errno::EINVAL),
        "{err:?}"
    );
    assert!(tree(&spec.rootfs.upperdir).is_empty());
}
