//! The parallel scheduler end to end, as root: independent stages run at
//! once (their running intervals in the `--progress=json` events overlap)
//! unless `--jobs 1`, unreachable stages never run, the first failure
//! cancels the rest and kills their sandboxes, and several builds share one
//! root at once.

mod common;

use std::fs;
use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    Events, KillOnDrop, TestRoot, mounts_under, sandbox_available, unique_seconds, wait_until_gone,
};
use serde_json::json;

const TWO_SLEEPS: &str = "\
FROM busybox AS one
RUN sleep 1 && echo one > /one
FROM busybox AS two
RUN sleep 1 && echo two > /two
FROM busybox
COPY --from=one /one /one
COPY --from=two /two /two
";

fn busybox() -> TestRoot {
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    t
}

fn overlap(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

#[test]
fn independent_stages_run_at_once() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let ctx = t.context(&[("Dockerfile", TWO_SLEEPS)]);
    let events = t.build_json_ok(&ctx, &["-t", "both"]);
    let one = events.interval("RUN sleep 1 && echo one > /one");
    let two = events.interval("RUN sleep 1 && echo two > /two");
    assert!(
        overlap(one, two),
        "the two sleeping steps ran one after the other: {one:?} and {two:?}"
    );
    // Each interval covers its sleep: the times are real.
    assert!(
        one.1 - one.0 >= 0.9 && two.1 - two.0 >= 0.9,
        "{one:?} {two:?}"
    );
    // The final stage starts after both.
    let copy = events.interval("COPY --from=two /two /two");
    assert!(
        copy.0 >= one.1 && copy.0 >= two.1,
        "{copy:?} {one:?} {two:?}"
    );
    assert_eq!(t.ok(&["run", "both", "cat", "/one", "/two"]), "one\ntwo\n");
    t.check_store();
}

#[test]
fn jobs_1_runs_one_step_at_a_time() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let ctx = t.context(&[("Dockerfile", TWO_SLEEPS)]);
    let events = t.build_json_ok(&ctx, &["--jobs", "1"]);
    let one = events.interval("RUN sleep 1 && echo one > /one");
    let two = events.interval("RUN sleep 1 && echo two > /two");
    assert!(
        !overlap(one, two),
        "with --jobs 1 the sleeping steps overlapped: {one:?} and {two:?}"
    );
    // And without the limit, on the same root, they run again at once.
    let events = t.build_json_ok(&ctx, &["--no-cache", "--jobs", "2"]);
    let one = events.interval("RUN sleep 1 && echo one > /one");
    let two = events.interval("RUN sleep 1 && echo two > /two");
    assert!(overlap(one, two), "--jobs 2: {one:?} and {two:?}");
}

#[test]
fn unreachable_stages_never_run() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let ctx = t.context(&[(
        "Dockerfile",
        "\
FROM busybox AS unused
RUN echo never-ran-unused > /x && exit 1
FROM busybox AS needed
RUN echo needed > /needed
FROM busybox AS other-unused
COPY --from=unused /x /x
RUN echo never-ran-other
FROM busybox
COPY --from=needed /needed /needed
",
    )]);
    let events = t.build_json_ok(&ctx, &["-t", "app"]);
    let names = events.names();
    assert!(
        names.iter().all(|n| !n.contains("never-ran")),
        "an unreachable stage has events: {names:?}"
    );
    assert_eq!(
        events.ran(),
        [
            "COPY --from=needed /needed /needed",
            "RUN echo needed > /needed"
        ]
    );
    // With --target the stage that was unreachable is built (and fails).
    let (out, events) = t.build_json(&ctx, &["--target", "unused"]);
    assert_eq!(out.status.code(), Some(1), "{events:#?}");
}

/// Runs `cmd` (stdout and stderr captured) and waits at most `limit`; a
/// build still running then is killed and the test fails.
fn output_within(mut cmd: Command, limit: Duration) -> (Output, Duration) {
    let start = Instant::now();
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            start.elapsed() < limit,
            "the build still runs after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    (
        Output {
            status,
            stdout: out_reader.join().unwrap(),
            stderr: err_reader.join().unwrap(),
        },
        elapsed,
    )
}

#[test]
fn first_failure_cancels_the_other_steps() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let seconds = unique_seconds();
    let ctx = t.context(&[(
        "Dockerfile",
        &format!(
            "\
FROM busybox AS slow
RUN sleep {seconds}
FROM busybox AS bad
RUN sleep 1 && echo failing && exit 3
FROM busybox
COPY --from=slow /etc/motd /slow
COPY --from=bad /etc/motd /bad
"
        ),
    )]);
    let mut cmd = t.builder();
    cmd.args(["build", "--progress=json", "-t", "never"])
        .arg(&ctx);
    // A timeout guard, not a performance threshold.
    let (out, elapsed) = output_within(cmd, Duration::from_secs(20));
    let events = Events::parse(&common::stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{events:#?}");
    let errors = events.error_text();
    assert!(
        errors.contains("RUN sleep 1 && echo failing && exit 3"),
        "the error names the failing step: {errors}"
    );
    assert!(errors.contains("exit code: 3"), "{errors}");
    // The first error event is the failing step's, not the cancelled one's.
    let first = events.of("error").next().expect("an error event").clone();
    assert!(
        events
            .name(&first["step"])
            .is_some_and(|n| n.contains("exit 3")),
        "first error: {first}\n{events:#?}"
    );
    // The sleeping step was running (the stages are independent) and was
    // killed with its sandbox.
    assert!(
        events
            .of("started")
            .any(|e| e["name"].as_str().is_some_and(|n| n.contains(&seconds))),
        "the slow step never started: {events:#?}"
    );
    let left = wait_until_gone(&["sleep", &seconds], Duration::from_secs(5));
    assert!(left.is_empty(), "sandbox processes left running: {left:?}");
    let mounts = mounts_under(&t.root());
    assert!(mounts.is_empty(), "mounts left under the root: {mounts:?}");
    assert!(
        !t.output(&["inspect", "never"]).status.success(),
        "a failed build named its image"
    );
    eprintln!("failed build took {elapsed:?}");
    t.check_store();
}

#[test]
fn four_builds_at_once_on_one_root() {
    if !sandbox_available() {
        return;
    }
    let t = busybox();
    let shared = "FROM busybox AS base\nRUN sleep 1 && echo shared > /shared\nCOPY data/ /data/\n";
    let ctx = t.context(&[
        (
            "a.Dockerfile",
            &format!("{shared}RUN cat /data/* > /a\nFROM base\nRUN echo a-final > /final\n"),
        ),
        (
            "b.Dockerfile",
            &format!(
                "{shared}RUN sleep 1 && cat /data/* > /b\nFROM busybox\nCOPY --from=base /b /b\n"
            ),
        ),
        ("data/1", "one\n"),
        ("data/2", "two\n"),
    ]);
    let file = |name: &str| ctx.join(name).to_str().unwrap().to_owned();
    let builds: Vec<(String, String)> = vec![
        (file("a.Dockerfile"), "a1".into()),
        (file("a.Dockerfile"), "a2".into()),
        (file("b.Dockerfile"), "b1".into()),
        (file("b.Dockerfile"), "b2".into()),
    ];
    // stderr to files: four pipes read one after the other could fill.
    let mut children: Vec<(KillOnDrop, std::path::PathBuf)> = builds
        .iter()
        .map(|(dockerfile, tag)| {
            let log = t.path(&format!("{tag}.log"));
            let mut c = t.builder();
            c.args(["build", "--progress=json", "-f", dockerfile, "-t", tag])
                .arg(&ctx)
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log).unwrap());
            (KillOnDrop(c.spawn().unwrap()), log)
        })
        .collect();
    for ((child, log), (_, tag)) in children.iter_mut().zip(&builds) {
        let status = child.0.wait().unwrap();
        assert!(
            status.success(),
            "build {tag} failed: {}",
            fs::read_to_string(log).unwrap()
        );
    }
    t.check_store();
    assert_eq!(t.ok(&["run", "a1", "cat", "/a"]), "one\ntwo\n");
    assert_eq!(t.ok(&["run", "a2", "cat", "/final"]), "a-final\n");
    assert_eq!(t.ok(&["run", "b1", "cat", "/b"]), "one\ntwo\n");
    assert_eq!(t.ok(&["run", "b2", "cat", "/b"]), "one\ntwo\n");
    // A fifth build of each runs nothing.
    for dockerfile in ["a.Dockerfile", "b.Dockerfile"] {
        let events = t.build_json_ok(&ctx, &["-f", &file(dockerfile)]);
        assert!(events.ran().is_empty(), "{dockerfile}: {events:#?}");
        assert!(!events.cached().is_empty(), "{dockerfile}: {events:#?}");
    }
    let mounts = mounts_under(&t.root());
    assert!(mounts.is_empty(), "mounts left under the root: {mounts:?}");
    let tmp: Vec<_> = fs::read_dir(t.root().join("tmp"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
}
