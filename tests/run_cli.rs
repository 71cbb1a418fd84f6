//! `builder run` end to end, as root: ENTRYPOINT/CMD, exit codes, `-e`, `-w`,
//! `-u`, `--entrypoint`, `-i`, `--network`, signal forwarding, and the
//! container dying with builder.
//!
//! The images are made through the store API (see `common`), so these tests
//! do not depend on `builder build`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::Duration;

use common::{
    KillOnDrop, TestRoot, sandbox_available, stderr, stdout, unique_seconds, wait_for_process,
    wait_until_gone,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use solver::sandbox::testsupport::TEST_USER_ID_OUTPUT;

fn busybox() -> TestRoot {
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    t
}

fn code(out: &std::process::Output) -> i32 {
    out.status.code().expect("builder exited normally")
}

#[test]
fn hello_world_and_pavlos() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image(
        "hello",
        json!({"Entrypoint": ["/bin/echo"], "Cmd": ["Hello, World!"]}),
    );
    assert_eq!(t.ok(&["run", "hello"]), "Hello, World!\n");
    assert_eq!(t.ok(&["run", "--rm", "hello", "Pavlos"]), "Pavlos\n");
    // Arguments that look like flags belong to the container.
    assert_eq!(t.ok(&["run", "hello", "-n", "x"]), "x");
    t.check_store();
}

#[test]
fn exit_codes_follow_docker() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    assert_eq!(
        code(&t.output(&["run", "busybox", "sh", "-c", "exit 3"])),
        3
    );
    assert_eq!(code(&t.output(&["run", "busybox", "true"])), 0);
    // 128+N for a signal is not checked here: the container's PID 1 cannot
    // be killed from inside its namespace, and builder forwards no SIGKILL.

    let out = t.output(&["run", "busybox", "/etc/motd"]);
    assert_eq!(code(&out), 126, "{}", stderr(&out));
    assert!(stderr(&out).contains("/etc/motd"), "{}", stderr(&out));

    let out = t.output(&["run", "busybox", "no-such-command"]);
    assert_eq!(code(&out), 127, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no-such-command") && stderr(&out).contains("not found"),
        "{}",
        stderr(&out)
    );

    // As docker: not found locally, then the pull fails (no registry
    // answers for it here), and builder's own failure is 125.
    let out = t.output(&["run", "no-such-image:1", "true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Unable to find image 'no-such-image:1' locally")
            && stderr(&out).contains("cannot pull no-such-image:1"),
        "{}",
        stderr(&out)
    );

    let out = t.output(&["run", "-u", "nobody-here", "busybox", "true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unable to find user nobody-here"),
        "{}",
        stderr(&out)
    );

    let out = t.output(&["run", "--network", "bridge", "busybox", "true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));

    let out = t.output(&["run", "-w", "relative", "busybox", "true"]);
    assert_eq!(code(&out), 125, "{}", stderr(&out));
    t.check_store();
}

#[test]
fn environment_from_image_and_flags() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image(
        "envimg",
        json!({"Env": ["PATH=/bin", "FROM_IMAGE=img", "OVERRIDDEN=img"], "Cmd": ["env"]}),
    );
    let out = t
        .builder()
        .args([
            "run",
            "-e",
            "OVERRIDDEN=flag",
            "-e",
            "EMPTY=",
            "-e",
            "PASSED",
        ])
        .args(["-e", "UNSET_IN_CALLER", "envimg"])
        .env("PASSED", "from caller")
        .env_remove("UNSET_IN_CALLER")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let env = stdout(&out);
    let lines: Vec<&str> = env.lines().collect();
    for want in [
        "PATH=/bin",
        "FROM_IMAGE=img",
        "OVERRIDDEN=flag",
        "EMPTY=",
        "PASSED=from caller",
        "HOME=/root",
    ] {
        assert!(lines.contains(&want), "missing {want} in\n{env}");
    }
    assert!(!lines.contains(&"OVERRIDDEN=img"), "{env}");
    assert!(!env.contains("UNSET_IN_CALLER"), "{env}");
    assert!(lines.iter().any(|l| l.starts_with("HOSTNAME=")), "{env}");
}

#[test]
fn workdir_user_and_entrypoint_flags() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image(
        "cfg",
        json!({"WorkingDir": "/home/test", "User": "test", "Cmd": ["pwd"]}),
    );
    // The image's WorkingDir and User apply by default.
    assert_eq!(t.ok(&["run", "cfg"]), "/home/test\n");
    assert_eq!(
        t.ok(&["run", "cfg", "id"]),
        format!("{TEST_USER_ID_OUTPUT}\n")
    );
    // -w overrides and is created when missing.
    assert_eq!(t.ok(&["run", "-w", "/tmp", "cfg"]), "/tmp\n");
    assert_eq!(
        t.ok(&["run", "-u", "0", "-w", "/new/dir", "cfg"]),
        "/new/dir\n"
    );
    // -u overrides: names, ids and groups.
    assert_eq!(t.ok(&["run", "-u", "root", "cfg", "id", "-u"]), "0\n");
    assert_eq!(
        t.ok(&["run", "-u", "1234:29", "cfg", "id"]),
        "uid=1234 gid=29(audio) groups=29(audio)\n"
    );
    // --entrypoint replaces ENTRYPOINT and drops CMD.
    assert_eq!(
        t.ok(&["run", "--entrypoint", "/bin/hostname", "cfg"]).len(),
        13
    );
    assert_eq!(
        t.ok(&["run", "--entrypoint", "echo", "cfg", "a", "b"]),
        "a b\n"
    );
    // An empty one leaves only the arguments.
    assert_eq!(
        t.ok(&["run", "--entrypoint", "", "cfg", "echo", "c"]),
        "c\n"
    );
}

#[test]
fn stdin_only_with_interactive() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let run = |interactive: bool| {
        let mut c = t.builder();
        c.arg("run");
        if interactive {
            c.arg("-i");
        }
        c.args(["busybox", "sh", "-c", "cat; echo end"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // Ignored when the container does not read it.
        let _ = stdin.write_all(b"from the caller\n");
        drop(stdin);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(run(true), "from the caller\nend\n");
    assert_eq!(run(false), "end\n");
}

#[test]
fn network_modes() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    assert_eq!(
        t.ok(&[
            "run",
            "--network",
            "none",
            "busybox",
            "ls",
            "/sys/class/net"
        ]),
        "lo\n"
    );
    // The default is the host's network, as for RUN steps.
    let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    host.sort();
    let seen = t.ok(&["run", "busybox", "ls", "/sys/class/net"]);
    assert_eq!(seen.lines().collect::<Vec<_>>(), host);
    let seen = t.ok(&[
        "run",
        "--network",
        "host",
        "busybox",
        "ls",
        "/sys/class/net",
    ]);
    assert_eq!(seen.lines().collect::<Vec<_>>(), host);
}

#[test]
fn changes_are_thrown_away() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    t.ok(&[
        "run",
        "busybox",
        "sh",
        "-c",
        "echo changed > /etc/motd; rm /bin/ls",
    ]);
    assert_eq!(t.ok(&["run", "busybox", "cat", "/etc/motd"]), "welcome\n");
    t.ok(&["run", "busybox", "ls", "/"]);
    // No writable layer is left behind in the store.
    let tmp: Vec<_> = std::fs::read_dir(t.root().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    t.check_store();
}

#[test]
fn sigterm_and_sigint_are_forwarded() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    for (signal, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGINT, "INT")] {
        let script = format!(
            "trap 'echo got {name}; exit 42' {name}; echo ready; while :; do sleep 0.05; done"
        );
        let mut child = KillOnDrop(
            t.builder()
                .args(["run", "busybox", "sh", "-c", &script])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        kill(Pid::from_raw(child.0.id() as i32), signal).unwrap();
        assert_eq!(lines.next().unwrap().unwrap(), format!("got {name}"));
        let status = child.0.wait().unwrap();
        assert_eq!(status.code(), Some(42), "signal {name}");
    }
}

#[test]
fn the_container_dies_with_builder() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let seconds = unique_seconds();
    let mut child = KillOnDrop(
        t.builder()
            .args(["run", "busybox", "sh", "-c"])
            .arg(format!("echo ready; sleep {seconds}; true"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    let sleep = ["sleep", seconds.as_str()];
    let found = wait_for_process(&sleep, Duration::from_secs(5));
    assert_eq!(found.len(), 1, "container not seen: {found:?}");
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    let left = wait_until_gone(&sleep, Duration::from_secs(5));
    assert!(
        left.is_empty(),
        "container processes outlived builder: {left:?}"
    );
    t.check_store();
}

#[test]
fn a_container_killed_by_a_signal_exits_128_plus_n() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let seconds = unique_seconds();
    let mut child = KillOnDrop(
        t.builder()
            .args(["run", "busybox", "sh", "-c"])
            .arg(format!("echo ready; exec sleep {seconds}"))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "ready");
    // PID 1 of the container ignores signals from inside its namespace, so
    // the signal comes from here, the host's namespace.
    let pids = wait_for_process(&["sleep", seconds.as_str()], Duration::from_secs(5));
    assert_eq!(pids.len(), 1, "{pids:?}");
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    assert_eq!(child.0.wait().unwrap().code(), Some(137));
}
