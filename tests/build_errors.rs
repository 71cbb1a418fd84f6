//! Bad input to `builder build`, end to end, as root: each failure gives a
//! clear error in the Dockerfile convention, kills every process it started,
//! leaves the store consistent, and the next build works.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    KillOnDrop, TestRoot, sandbox_available, stderr, unique_seconds, wait_for_process,
    wait_until_gone,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

fn busybox() -> TestRoot {
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    t
}

/// Builds `dockerfile` in a context with `files`; it must fail with exit
/// code 1. Returns stderr.
fn fails(t: &TestRoot, dockerfile: &str, files: &[(&str, &str)]) -> String {
    let ctx = t.context(files);
    fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    // Quiet, so that stderr holds the error alone.
    let out = t
        .builder()
        .args(["build", "--progress=quiet", "-t", "should-not-exist"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

/// After a failure: nothing was named, the store is consistent, no staging
/// is left in `tmp/`, and a good build works.
fn still_healthy(t: &TestRoot) {
    assert!(
        !t.output(&["inspect", "should-not-exist"]).status.success(),
        "a failed build named its image"
    );
    t.check_store();
    let tmp: Vec<_> = fs::read_dir(t.root().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
    let ctx = t.context(&[("Dockerfile", "FROM busybox\nRUN echo ok > /ok\n")]);
    t.build_ok(&ctx, &["-t", "after"]);
    assert_eq!(t.ok(&["run", "after", "cat", "/ok"]), "ok\n");
}

#[test]
fn missing_base_image() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let err = fails(&t, "FROM nosuch:1\nRUN true\n", &[]);
    assert!(
        err.starts_with("Dockerfile:1:1: image \"nosuch:1\" not found in the local store"),
        "{err}"
    );
    assert!(err.contains("    1 | FROM nosuch:1\n"), "{err}");
    assert!(err.contains('^'), "{err}");
    // The same for COPY --from an image.
    let err = fails(&t, "FROM busybox\nCOPY --from=other/image:2 /x /x\n", &[]);
    assert!(err.contains("other/image:2"), "{err}");
    assert!(err.contains("not found in the local store"), "{err}");
    // A registry that cannot be reached is named with the reason.
    let err = fails(&t, "FROM 127.0.0.1:9/nothing:1\n", &[]);
    assert!(
        err.starts_with(
            "Dockerfile:1:1: image \"127.0.0.1:9/nothing:1\" not found in the local store, and pulling it failed: "
        ),
        "{err}"
    );
    assert!(err.contains("127.0.0.1:9"), "{err}");
    still_healthy(&t);
}

#[test]
fn copy_sources_missing_or_outside_the_context() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let err = fails(&t, "FROM busybox\nCOPY missing.txt /\n", &[]);
    assert!(err.starts_with("Dockerfile:2:1: "), "{err}");
    assert!(err.contains("missing.txt"), "{err}");
    assert!(err.contains("not found"), "{err}");

    // `..` cannot leave the context: it is cleaned to the context's root,
    // as in BuildKit, so the file outside is not found.
    let outer = t.context(&[("secret", "outside\n"), ("ctx/Dockerfile", "")]);
    let ctx = outer.join("ctx");
    fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY ../secret /x\n").unwrap();
    let out = t.build(&ctx, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("secret"), "{}", stderr(&out));

    // A symlink pointing out of the context resolves inside it.
    let ctx = t.context(&[]);
    symlink("/etc/hostname", ctx.join("escape")).unwrap();
    fs::write(ctx.join("Dockerfile"), "FROM busybox\nCOPY escape /x\n").unwrap();
    let out = t.build(&ctx, &["-t", "should-not-exist"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("hostname"), "{}", stderr(&out));
    still_healthy(&t);
}

#[test]
fn failing_run_shows_step_exit_code_and_last_lines() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let seconds = unique_seconds();
    let dockerfile = format!(
        "FROM busybox\nRUN echo first\nRUN sleep {seconds} & for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i; done; echo oops >&2; exit 7\n"
    );
    let err = fails(&t, &dockerfile, &[]);
    assert!(err.contains("exit code: 7"), "{err}");
    assert!(err.contains("Dockerfile:3:1: [3/3] RUN sleep"), "{err}");
    // The last lines of the step's output, stdout and stderr alike.
    assert!(
        err.contains("\nline12\n") && err.contains("\noops\n"),
        "{err}"
    );
    assert!(!err.contains("\nline1\n"), "only the last lines: {err}");
    // The step's background process died with it.
    let left = wait_until_gone(&["sleep", &seconds], Duration::from_secs(5));
    assert!(left.is_empty(), "left running: {left:?}");
    still_healthy(&t);
}

#[test]
fn unknown_users() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let err = fails(&t, "FROM busybox\nUSER ghost\nRUN true\n", &[]);
    assert!(err.starts_with("Dockerfile:3:1: "), "{err}");
    assert!(err.contains("unable to find user ghost"), "{err}");
    let err = fails(
        &t,
        "FROM busybox\nCOPY --chown=ghost:test f /f\n",
        &[("f", "x")],
    );
    assert!(err.starts_with("Dockerfile:2:1: "), "{err}");
    assert!(err.contains("ghost"), "{err}");
    let err = fails(
        &t,
        "FROM busybox\nCOPY --chown=test:nogroup-here f /f\n",
        &[("f", "x")],
    );
    assert!(err.contains("nogroup-here"), "{err}");
    still_healthy(&t);
}

#[test]
fn dockerfile_errors_point_at_the_line() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let err = fails(&t, "FROM busybox\nFNTRYPOINT x\n", &[]);
    assert_eq!(
        err,
        "Dockerfile:2:1: unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)\n    2 | FNTRYPOINT x\n      | ^\n"
    );
    // With -f, the path as given names the file.
    let ctx = t.context(&[("build.Dockerfile", "FROM busybox\nCOPY onlyone\n")]);
    let file = ctx.join("build.Dockerfile");
    let out = t.build(&ctx, &["-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with(&format!("{}:2:1: ", file.display())),
        "{}",
        stderr(&out)
    );
    // No such context or Dockerfile.
    let out = t.build(Path::new("/nonexistent-context"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent-context"),
        "{}",
        stderr(&out)
    );
    still_healthy(&t);
}

#[test]
fn ctrl_c_cancels_a_running_step() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let seconds = unique_seconds();
    let ctx = t.context(&[(
        "Dockerfile",
        &format!("FROM busybox\nRUN echo one > /one\nRUN sleep {seconds}\nRUN echo never\n"),
    )]);
    let mut child = KillOnDrop(
        t.builder()
            .args(["build", "--progress=plain", "-t", "should-not-exist"])
            .arg(&ctx)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let sleep = ["sleep", seconds.as_str()];
    let found = wait_for_process(&sleep, Duration::from_secs(30));
    assert_eq!(found.len(), 1, "the step did not start");
    let started = Instant::now();
    kill(Pid::from_raw(child.0.id() as i32), Signal::SIGINT).unwrap();
    let status = child.0.wait().unwrap();
    let mut err = String::new();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("cancelled"), "{err}");
    assert!(!err.contains("echo never"), "{err}");
    let left = wait_until_gone(&sleep, Duration::from_secs(5));
    assert!(left.is_empty(), "left running: {left:?}");
    still_healthy(&t);
}
