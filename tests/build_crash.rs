//! SIGKILL during `builder build`, end to end, as root: whenever the build
//! dies, the root stays valid, the next build succeeds, and every step that
//! had finished well before the kill comes back from the cache.
//!
//! The kill points are random (a seeded xorshift; the seed is printed, and
//! `CRASH_SEED=N` replays a run): a random delay after a random number of
//! steps have finished.
//! "Finished well before the kill" is every step with a `done` event in the
//! killed build's `--progress=json` output except the last one, whose cache
//! record may have been cut short.

mod common;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::{
    Events, KillOnDrop, TestRoot, check_store, instruction, mounts_under, sandbox_available,
};
use serde_json::json;

const ITERATIONS: usize = 10;
/// The signal number of SIGKILL on Linux.
const SIGKILL: i32 = 9;

/// Sequential and parallel RUN steps, small and large COPYs (the 8 MiB file
/// makes layer writing take a while), so that kills land in every phase.
/// The last step sleeps too: a kill drawn after the last but one step must
/// still find the build running most of the time (the end of a build, its
/// export and upkeep, takes only milliseconds).
fn dockerfile(marker: &str) -> String {
    format!(
        "\
FROM busybox AS base
RUN echo {marker} > /marker
COPY big.bin /big.bin
RUN sleep 0.3 && cp /big.bin /big2.bin
RUN sleep 0.2 && echo 1 > /s1

FROM base AS left
RUN sleep 0.4 && echo left > /left
COPY small/ /small/

FROM base AS right
RUN sleep 0.3 && echo right > /right
RUN sleep 0.2 && echo right2 > /right2

FROM busybox
COPY --from=left /left /small /
COPY --from=right /right /right2 /
RUN sleep 0.4 && cat /left /right > /both
"
    )
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut r = Rng(seed | 1);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&r.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

fn context(t: &TestRoot) -> PathBuf {
    let ctx = t.context(&[("small/a", "a\n"), ("small/b", "b\n")]);
    fs::write(ctx.join("big.bin"), noise(8 << 20, 7)).unwrap();
    fs::write(ctx.join("Dockerfile"), dockerfile("crash")).unwrap();
    ctx
}

/// The instructions of the RUN/COPY steps with a `done` event before
/// `before` (unix seconds), in the order they finished.
fn done_before(events: &Events, before: f64) -> Vec<String> {
    events
        .of("done")
        .filter(|e| e.get("vertex").is_some_and(|v| !v.is_null()))
        .filter(|e| e["time"].as_f64().is_some_and(|t| t < before))
        .filter_map(|e| events.name(&e["step"]))
        .map(|n| instruction(n).to_owned())
        .filter(|n| n.starts_with("RUN ") || n.starts_with("COPY "))
        .collect()
}

/// Every cache record in `keys/` is whole (it parses) and names only blobs
/// that are in the store: blobs are written before the record that names
/// them, so no kill can leave a record without its layers.
fn check_records(root: &Path) -> usize {
    let Ok(entries) = fs::read_dir(root.join("keys")) else {
        return 0;
    };
    let mut n = 0;
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let hex = name
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("unexpected entry {name} in keys/"));
        assert!(
            format!("sha256:{hex}").parse::<cache::Digest>().is_ok(),
            "unexpected entry {name} in keys/"
        );
        let record: cache::keys::CacheRecord = serde_json::from_slice(&fs::read(&path).unwrap())
            .unwrap_or_else(|e| panic!("record {name} does not parse: {e}"));
        for layer in &record.layers {
            assert!(
                root.join("blobs/sha256").join(layer.digest.hex()).exists(),
                "record {name} ({}) names a missing blob {}",
                record.description,
                layer.digest
            );
        }
        n += 1;
    }
    n
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// How many steps (RUN/COPY) the Dockerfile has.
const STEPS: usize = 11;

/// Starts a build with its events going to `log` and SIGKILLs it `extra`
/// after its `after_done`-th step finished (0: `extra` after the start):
/// anchoring the kill to the build's own progress spreads the kills over
/// every phase however loaded the machine is. Returns whether the build was
/// still running and the kill's time.
fn kill_build(
    t: &TestRoot,
    ctx: &Path,
    log: &Path,
    after_done: usize,
    extra: Duration,
) -> (bool, f64) {
    let mut c = t.builder();
    c.args(["build", "--progress=json", "-t", "app"])
        .arg(ctx)
        .stdout(Stdio::null())
        .stderr(fs::File::create(log).unwrap());
    let mut child = KillOnDrop(c.spawn().unwrap());
    let start = Instant::now();
    while after_done > 0 && start.elapsed() < Duration::from_secs(60) {
        let events = Events::parse(&fs::read_to_string(log).unwrap_or_default());
        if done_before(&events, f64::INFINITY).len() >= after_done
            || child.0.try_wait().unwrap().is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(extra);
    let at = unix_now();
    // Child::kill sends SIGKILL.
    let _ = child.0.kill();
    let status = child.0.wait().unwrap();
    (status.signal() == Some(SIGKILL), at)
}

#[test]
fn sigkill_during_build_keeps_every_complete_result() {
    if !sandbox_available() {
        return;
    }
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("CRASH_SEED={seed}");
    let mut rng = Rng(seed | 1);

    let mut killed = 0;
    let mut reused = 0;
    for i in 0..ITERATIONS {
        let t = TestRoot::new();
        t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
        let ctx = context(&t);
        let after_done = (rng.next() % STEPS as u64) as usize;
        let extra = Duration::from_secs_f64(0.4 * rng.unit());
        let log = t.path("killed.log");
        let (was_running, at) = kill_build(&t, &ctx, &log, after_done, extra);
        let events = Events::parse(&fs::read_to_string(&log).unwrap());
        let mut done = done_before(&events, at);
        // The last one's record may have been cut short by the kill.
        done.pop();
        eprintln!(
            "iteration {i}: killed {extra:?} after {after_done} steps finished ({}), complete before: {done:?}",
            if was_running {
                "running"
            } else {
                "already exited"
            }
        );
        if was_running {
            killed += 1;
        }

        check_store(&t.root());
        let records = check_records(&t.root());
        assert!(
            records >= done.len(),
            "iteration {i}: {records} records for {} complete steps",
            done.len()
        );

        let again = t.build_json_ok(&ctx, &["-t", "app"]);
        let cached = again.cached();
        for step in &done {
            assert!(
                cached.contains(step),
                "iteration {i} (CRASH_SEED={seed}): {step:?} finished before the kill but ran again\n{again:#?}"
            );
        }
        reused += done.len();
        check_store(&t.root());
        check_records(&t.root());
        assert_eq!(
            t.ok(&["run", "app", "cat", "/both", "/a"]),
            "left\nright\na\n"
        );
        // And the one after that runs nothing.
        let third = t.build_json_ok(&ctx, &["-t", "app"]);
        assert!(third.ran().is_empty(), "iteration {i}: {third:#?}");
        let mounts = mounts_under(&t.root());
        assert!(mounts.is_empty(), "iteration {i}: mounts left: {mounts:?}");
    }
    eprintln!(
        "{killed} of {ITERATIONS} kills hit a running build; {reused} complete results checked for reuse"
    );
    assert!(
        killed >= ITERATIONS / 2,
        "only {killed} kills hit a running build"
    );
}

#[test]
fn sigkill_takes_the_running_sandboxes_along() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let a = common::unique_seconds();
    let b = common::unique_seconds();
    let ctx = t.context(&[(
        "Dockerfile",
        &format!("FROM busybox AS a\nRUN sleep {a}\nFROM busybox\nRUN sleep {b}\nCOPY --from=a /etc/motd /\n"),
    )]);
    let mut c = t.builder();
    c.args(["build", "--progress=quiet"])
        .arg(&ctx)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = KillOnDrop(c.spawn().unwrap());
    for s in [&a, &b] {
        let found = common::wait_for_process(&["sleep", s], Duration::from_secs(10));
        assert!(!found.is_empty(), "the step sleeping {s} never started");
    }
    let _ = child.0.kill();
    child.0.wait().unwrap();
    for s in [&a, &b] {
        let left = common::wait_until_gone(&["sleep", s], Duration::from_secs(5));
        assert!(left.is_empty(), "a sandbox outlived its build: {left:?}");
    }
    let mounts = mounts_under(&t.root());
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    check_store(&t.root());
}
