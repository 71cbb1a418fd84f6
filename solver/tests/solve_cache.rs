//! The build cache and the parallel scheduler with a fake executor that
//! counts runs: cached rebuilds run nothing, a change re-runs exactly the
//! steps that depend on it, misses are explained, independent branches run
//! at once (and one at a time with `jobs = 1`), identical steps run once,
//! and the first failure cancels the rest. COPY is real. Creating a step's
//! scratch space needs root, so without it the tests print why and pass,
//! unless `CI` is set.

#![allow(clippy::result_large_err)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use cache::store::Store;
use solver::sandbox::{
    CancelHandle, Executor, RunOutcome, RunSpec, SandboxError, StepIo, Termination,
};
use solver::{BuildError, BuildRequest, BuildResult, Progress, ProgressEvent, build_with};

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var_os("CI").is_some() {
                panic!("solve cache tests need root in CI");
            }
            eprintln!("skipping: the step scratch space needs root");
            return;
        }
    };
}

/// How long a fake step waits for something another step must do before
/// it fails the test.
const PATIENCE: Duration = Duration::from_secs(20);

/// Runs nothing: writes the command into `/out-<command words>` of the
/// upperdir and records it. Commands containing:
/// - `fail`: exit 1;
/// - `block`: wait until the build is cancelled (then `Cancelled`);
/// - `once blocked`: first wait until a `block` step runs;
/// - `meet`: wait until two `meet` steps run at the same time;
/// - `slow`: take 50 ms;
/// - `edit`: write `edit`'s content to its path (a context file edited
///   while the build runs).
#[derive(Default)]
struct FakeExecutor {
    runs: Mutex<Vec<String>>,
    edit: Mutex<Option<(PathBuf, String)>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    met: (Mutex<usize>, Condvar),
    cancelled_seen: AtomicUsize,
    /// `block` steps that started waiting.
    blocked: AtomicUsize,
}

impl FakeExecutor {
    fn runs(&self) -> Vec<String> {
        self.runs.lock().unwrap().clone()
    }

    fn step(&self, command: &str, cancel: &CancelHandle) -> Result<i32, SandboxError> {
        if command.contains("once blocked") {
            let start = Instant::now();
            while self.blocked.load(Ordering::SeqCst) == 0 && start.elapsed() < PATIENCE {
                std::thread::sleep(Duration::from_millis(5));
            }
        } else if command.contains("block") {
            self.blocked.fetch_add(1, Ordering::SeqCst);
            let start = Instant::now();
            while !cancel.is_cancelled() {
                if start.elapsed() > PATIENCE {
                    return Ok(99);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            self.cancelled_seen.fetch_add(1, Ordering::SeqCst);
            return Err(SandboxError::Cancelled);
        }
        if command.contains("meet") {
            let (count, cv) = &self.met;
            let mut n = count.lock().unwrap();
            *n += 1;
            cv.notify_all();
            let (n, timeout) = cv.wait_timeout_while(n, PATIENCE, |n| *n < 2).unwrap();
            drop(n);
            if timeout.timed_out() {
                return Ok(98);
            }
        }
        if command.contains("slow") {
            std::thread::sleep(Duration::from_millis(50));
        }
        if command.contains("edit") {
            if let Some((path, content)) = &*self.edit.lock().unwrap() {
                fs::write(path, content).unwrap();
            }
        }
        Ok(if command.contains("fail") { 1 } else { 0 })
    }
}

impl Executor for FakeExecutor {
    fn run(
        &self,
        spec: &RunSpec,
        _io: StepIo<'_>,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        if cancel.is_cancelled() {
            return Err(SandboxError::Cancelled);
        }
        for lower in &spec.rootfs.lowerdirs {
            assert!(lower.is_dir(), "lowerdir {} is missing", lower.display());
        }
        let command = spec.argv.last().cloned().unwrap_or_default();
        self.runs.lock().unwrap().push(command.clone());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        let code = self.step(&command, cancel);
        self.running.fetch_sub(1, Ordering::SeqCst);
        let code = code?;
        let name = command.replace(' ', "-");
        fs::write(spec.rootfs.upperdir.join(format!("out-{name}")), &command).unwrap();
        Ok(RunOutcome {
            termination: Termination::Exited(code),
            elapsed: Duration::ZERO,
        })
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<ProgressEvent>>);

impl Recorder {
    fn misses(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|e| match e {
                ProgressEvent::CacheMiss { reason, .. } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }
}

impl Progress for Recorder {
    fn event(&self, event: &ProgressEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    context: PathBuf,
}

impl Fixture {
    fn new() -> Self {
        let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("solve_cache");
        fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let context = dir.path().join("context");
        fs::create_dir(&context).unwrap();
        Self {
            _dir: dir,
            store,
            context,
        }
    }

    fn request(&self, dockerfile: &str) -> BuildRequest {
        let mut req = BuildRequest::new(dockerfile, "Dockerfile", &self.context);
        req.source_date_epoch = Some(0);
        req
    }

    fn build(
        &self,
        req: &BuildRequest,
        executor: &FakeExecutor,
        progress: &dyn Progress,
    ) -> Result<BuildResult, BuildError> {
        build_with(&self.store, req, executor, progress, &CancelHandle::new())
    }

    fn write(&self, name: &str, content: &str) {
        fs::write(self.context.join(name), content).unwrap();
    }
}

/// The `RUN`/`COPY`… part of the descriptions of the steps that ran.
fn ran(result: &BuildResult) -> Vec<String> {
    result
        .stats
        .executed_steps
        .iter()
        .map(|d| d.split_once("] ").map_or(d.as_str(), |(_, s)| s).to_owned())
        .collect()
}

const FOUR_STEPS: &str = "FROM scratch\n\
                          COPY a.txt /a.txt\n\
                          RUN after-a\n\
                          COPY b.txt /b.txt\n\
                          RUN after-b\n";

#[test]
fn a_cached_rebuild_runs_nothing() {
    require_root!();
    let f = Fixture::new();
    f.write("a.txt", "a");
    f.write("b.txt", "b");
    let req = f.request(FOUR_STEPS);
    let exec = FakeExecutor::default();
    let first = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert_eq!(exec.runs(), ["after-a", "after-b"]);
    assert_eq!(
        ran(&first),
        [
            "COPY a.txt /a.txt",
            "RUN after-a",
            "COPY b.txt /b.txt",
            "RUN after-b"
        ]
    );
    assert_eq!(first.stats.hits, 0);

    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let second = f.build(&req, &exec, &progress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    assert!(second.stats.executed.is_empty(), "{:?}", second.stats);
    // Only the target is looked up: a hit needs nothing below it.
    assert_eq!(second.stats.lookups, 1);
    assert_eq!(second.stats.hits, 1);
    assert_eq!(second.manifest_digest, first.manifest_digest);
    let events = progress.0.lock().unwrap();
    assert!(
        events
            .iter()
            .all(|e| matches!(e, ProgressEvent::StepCached { .. })),
        "{events:?}"
    );
    // Every step is reported cached, the ones below the hit too.
    assert_eq!(events.len(), 4, "{events:?}");
}

#[test]
fn a_cached_step_still_needs_its_entitlement() {
    require_root!();
    let f = Fixture::new();
    let mut allowed = f.request("FROM scratch\nRUN --network=host online\n");
    allowed.network_allowed_host = true;
    f.build(&allowed, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    let exec = FakeExecutor::default();
    f.build(&allowed, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty());
    let mut denied = allowed.clone();
    denied.network_allowed_host = false;
    let err = f
        .build(&denied, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap_err();
    let rendered = err.to_string() + &format!("{err:?}");
    assert!(
        rendered.contains("network.host is not allowed"),
        "{rendered}"
    );
}

#[test]
fn a_changed_file_reruns_exactly_the_steps_after_it_and_says_why() {
    require_root!();
    let f = Fixture::new();
    f.write("a.txt", "a");
    f.write("b.txt", "b");
    let req = f.request(FOUR_STEPS);
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();

    f.write("b.txt", "changed");
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let result = f.build(&req, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["after-b"]);
    assert_eq!(ran(&result), ["COPY b.txt /b.txt", "RUN after-b"]);
    assert_eq!(progress.misses(), ["COPY b.txt /b.txt: b.txt changed"]);
    // The earlier steps' snapshots were reused, not rebuilt.
    let config: serde_json::Value = serde_json::from_slice(&result.config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);

    f.write("a.txt", "changed too");
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let result = f.build(&req, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["after-a", "after-b"]);
    assert_eq!(ran(&result).len(), 4);
    // Only the root cause is explained, not the steps after it.
    assert_eq!(progress.misses(), ["COPY a.txt /a.txt: a.txt changed"]);
}

#[test]
fn files_a_copy_does_not_select_do_not_matter() {
    require_root!();
    let f = Fixture::new();
    f.write("a.txt", "a");
    f.write("b.txt", "b");
    f.write("unused.txt", "x");
    let req = f.request(FOUR_STEPS);
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    f.write("unused.txt", "y");
    let exec = FakeExecutor::default();
    let result = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    assert!(result.stats.executed.is_empty());
}

#[test]
fn a_changed_build_arg_reruns_only_the_steps_that_see_it() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM scratch AS other\n\
                      RUN other\n\
                      FROM scratch\n\
                      RUN before\n\
                      ARG VERSION=1\n\
                      RUN uses\n\
                      COPY --from=other /out-other /other/\n";
    let req = f.request(dockerfile);
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();

    let mut changed = req.clone();
    changed
        .options
        .build_args
        .insert("VERSION".into(), "2".into());
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let result = f.build(&changed, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["uses"]);
    assert_eq!(
        ran(&result),
        ["RUN uses", "COPY --from=other /out-other /other/"]
    );
    assert_eq!(progress.misses(), ["RUN uses: build arg VERSION changed"]);

    // An unused build arg and a proxy variable change nothing.
    let mut unused = changed.clone();
    unused.options.build_args.insert("OTHER".into(), "x".into());
    unused
        .options
        .build_args
        .insert("HTTP_PROXY".into(), "http://proxy:3128".into());
    let exec = FakeExecutor::default();
    f.build(&unused, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
}

#[test]
fn a_changed_command_is_explained() {
    require_root!();
    let f = Fixture::new();
    f.build(
        &f.request("FROM scratch\nRUN one\nRUN two\n"),
        &FakeExecutor::default(),
        &solver::NoProgress,
    )
    .unwrap();
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    f.build(
        &f.request("FROM scratch\nRUN one\nRUN three\n"),
        &exec,
        &progress,
    )
    .unwrap();
    assert_eq!(exec.runs(), ["three"]);
    assert_eq!(progress.misses(), ["RUN three: command changed"]);
}

#[test]
fn no_cache_reruns_everything_and_still_stores() {
    require_root!();
    let f = Fixture::new();
    let req = f.request("FROM scratch\nRUN one\nWORKDIR /w\nRUN two\n");
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    let mut no_cache = req.clone();
    no_cache.no_cache = true;
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let result = f.build(&no_cache, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["one", "two"]);
    assert_eq!(result.stats.lookups, 0);
    assert_eq!(ran(&result), ["RUN one", "WORKDIR /w", "RUN two"]);
    assert!(progress.misses().is_empty());
    // What it stored serves the next build.
    let exec = FakeExecutor::default();
    let again = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty());
    assert_eq!(again.manifest_digest, result.manifest_digest);
}

#[test]
fn no_cache_filter_runs_the_named_stages_and_what_uses_them() {
    require_root!();
    let f = Fixture::new();
    // `RUN common` is the same step in both stages: with the filter, the
    // one in `deps` runs, the one in `tools` still comes from the cache.
    let dockerfile = "FROM scratch AS Deps\n\
                      RUN common\n\
                      RUN deps\n\
                      FROM scratch AS tools\n\
                      RUN common\n\
                      RUN tools\n\
                      FROM scratch\n\
                      RUN base\n\
                      COPY --from=tools /out-tools /t/\n\
                      COPY --from=deps /out-deps /d/\n\
                      RUN last\n";
    let req = f.request(dockerfile);
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    // Stage names match whatever their case, as in BuildKit; an unknown
    // name changes nothing.
    let mut filtered = req.clone();
    filtered.no_cache_stages = vec!["DEPS".into(), "nosuchstage".into()];
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let result = f.build(&filtered, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["common", "deps", "last"]);
    assert_eq!(
        ran(&result),
        [
            "RUN common",
            "RUN deps",
            "COPY --from=deps /out-deps /d/",
            "RUN last"
        ]
    );
    assert!(progress.misses().is_empty(), "{:?}", progress.misses());
    // Without the filter, everything comes from the cache again.
    let exec = FakeExecutor::default();
    f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    // The same step served from the cache elsewhere in the build is no
    // stand-in for a filtered one (here `a`'s is looked up first).
    let req = f.request(
        "FROM scratch AS a\n\
         RUN common\n\
         FROM scratch AS b\n\
         RUN common\n\
         RUN b\n\
         FROM scratch\n\
         COPY --from=b /out-b /b/\n\
         COPY --from=a /out-common /a/\n",
    );
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    let mut only_b = req.clone();
    only_b.no_cache_stages = vec!["b".into()];
    let exec = FakeExecutor::default();
    f.build(&only_b, &exec, &solver::NoProgress).unwrap();
    assert_eq!(exec.runs(), ["common", "b"]);
    // A stage nothing after it uses runs alone.
    filtered.no_cache_stages = vec!["tools".into()];
    filtered.options.target = Some("tools".into());
    let exec = FakeExecutor::default();
    let result = f.build(&filtered, &exec, &solver::NoProgress).unwrap();
    assert_eq!(exec.runs(), ["common", "tools"]);
    assert_eq!(ran(&result), ["RUN common", "RUN tools"]);
}

#[test]
fn removed_snapshots_are_recreated_from_the_blobs() {
    require_root!();
    let f = Fixture::new();
    f.write("a.txt", "a");
    f.write("b.txt", "b");
    let req = f.request(FOUR_STEPS);
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    let snapshots = f.store.root().join("snapshots");
    for entry in fs::read_dir(&snapshots).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        }
    }
    // The last RUN misses; the FakeExecutor checks its lowerdirs exist.
    let mut changed = f.request(&FOUR_STEPS.replace("RUN after-b", "RUN after-b2"));
    changed.source_date_epoch = Some(0);
    let exec = FakeExecutor::default();
    let result = f.build(&changed, &exec, &solver::NoProgress).unwrap();
    assert_eq!(exec.runs(), ["after-b2"]);
    assert_eq!(ran(&result), ["RUN after-b2"]);
}

#[test]
fn identical_steps_in_two_stages_run_once() {
    require_root!();
    let f = Fixture::new();
    let req = f.request(
        "FROM scratch AS a\n\
         RUN same\n\
         RUN only-a\n\
         FROM scratch AS b\n\
         RUN same\n\
         RUN only-b\n\
         FROM scratch\n\
         COPY --from=a /out-only-a /a/\n\
         COPY --from=b /out-only-b /b/\n",
    );
    let exec = FakeExecutor::default();
    let result = f.build(&req, &exec, &solver::NoProgress).unwrap();
    let mut runs = exec.runs();
    runs.sort();
    assert_eq!(runs, ["only-a", "only-b", "same"]);
    assert!(!result.stats.cached.is_empty(), "{:?}", result.stats);
}

const TWO_BRANCHES: &str = "FROM scratch AS a\n\
                            RUN {a}\n\
                            FROM scratch AS b\n\
                            RUN {b}\n\
                            FROM scratch\n\
                            COPY --from=a /out-{fa} /a/\n\
                            COPY --from=b /out-{fb} /b/\n";

fn two_branches(a: &str, b: &str) -> String {
    TWO_BRANCHES
        .replace("{a}", a)
        .replace("{b}", b)
        .replace("{fa}", &a.replace(' ', "-"))
        .replace("{fb}", &b.replace(' ', "-"))
}

#[test]
fn independent_branches_run_at_once() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    // Each `meet` step waits for the other to have started: this only
    // passes if both run at the same time.
    let result = f
        .build(
            &f.request(&two_branches("meet a", "meet b")),
            &exec,
            &solver::NoProgress,
        )
        .unwrap();
    assert_eq!(exec.max_running.load(Ordering::SeqCst), 2);
    assert_eq!(ran(&result).len(), 4);
}

#[test]
fn one_job_runs_one_step_at_a_time() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let mut req = f.request(&two_branches("slow a", "slow b"));
    req.jobs = Some(1);
    f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert_eq!(exec.runs().len(), 2);
    assert_eq!(exec.max_running.load(Ordering::SeqCst), 1);
}

#[test]
fn the_first_failure_cancels_the_rest_and_is_the_error() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let cancel = CancelHandle::new();
    let err = build_with(
        &f.store,
        // The failure waits for the other step to run, which it cancels.
        &f.request(&two_branches("block a", "fail once blocked")),
        &exec,
        &progress,
        &cancel,
    )
    .unwrap_err();
    let BuildError::StepFailed {
        description,
        exit_code,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert!(
        description.ends_with("RUN fail once blocked"),
        "{description}"
    );
    assert_eq!(*exit_code, 1);
    assert_eq!(exec.cancelled_seen.load(Ordering::SeqCst), 1);
    // Neither final COPY ran.
    let events = progress.0.lock().unwrap();
    assert!(
        !events.iter().any(|e| matches!(
            e,
            ProgressEvent::StepStarted { description, .. } if description.contains("COPY")
        )),
        "{events:?}"
    );
    let tmp = fs::read_dir(f.store.root().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "scratch space left behind");
}

#[test]
fn cancelling_from_outside_ends_the_build() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let cancel = CancelHandle::new();
    let err = std::thread::scope(|s| {
        let build = s.spawn(|| {
            build_with(
                &f.store,
                &f.request(&two_branches("block a", "block b")),
                &exec,
                &solver::NoProgress,
                &cancel,
            )
        });
        let start = Instant::now();
        while exec.running.load(Ordering::SeqCst) < 2 {
            assert!(start.elapsed() < PATIENCE, "the steps never started");
            std::thread::sleep(Duration::from_millis(5));
        }
        cancel.cancel();
        build.join().unwrap()
    })
    .unwrap_err();
    assert!(matches!(err, BuildError::Cancelled), "{err:?}");
    assert_eq!(exec.cancelled_seen.load(Ordering::SeqCst), 2);
}

#[test]
fn progress_is_coherent_per_step() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    f.build(
        &f.request(&two_branches("meet a", "meet b")),
        &exec,
        &progress,
    )
    .unwrap();
    let events = progress.0.lock().unwrap();
    let mut open = std::collections::HashSet::new();
    let mut done = 0;
    for event in events.iter() {
        match event {
            ProgressEvent::StepStarted { vertex, .. } => assert!(open.insert(*vertex)),
            ProgressEvent::Log { vertex, .. } => assert!(open.contains(vertex)),
            ProgressEvent::StepDone { vertex, .. } => {
                assert!(open.remove(vertex), "{event:?} without a start");
                done += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(open.is_empty());
    assert_eq!(done, 4);
}

#[test]
fn a_bind_mount_of_the_context_is_keyed_by_what_it_mounts() {
    require_root!();
    let f = Fixture::new();
    fs::create_dir(f.context.join("src")).unwrap();
    f.write("src/main.c", "int main;");
    f.write("other", "x");
    let req = f.request(
        "FROM scratch\n\
         RUN --mount=type=bind,source=src,target=/src compile\n",
    );
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    // Outside the mounted subtree: nothing runs.
    f.write("other", "y");
    let exec = FakeExecutor::default();
    f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    // Inside: the step runs again and says which file changed.
    f.write("src/main.c", "int main(void);");
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    f.build(&req, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["compile"]);
    assert_eq!(
        progress.misses(),
        ["RUN --mount=type=bind,source=src,target=/src compile: src/main.c changed"]
    );
}

#[test]
fn a_secret_value_is_not_part_of_the_key_nor_of_what_the_cache_keeps() {
    require_root!();
    let f = Fixture::new();
    let secret = f.context.parent().unwrap().join("secret");
    let value = "s3cr3t-value-4711";
    fs::write(&secret, value).unwrap();
    let mut req = f.request("FROM scratch\nRUN --mount=type=secret,id=token use-secret\n");
    req.secrets = vec![solver::SecretSpec {
        id: "token".into(),
        source: solver::SecretSource::File(secret.clone()),
    }];
    f.build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    // Another value does not make the step run again (as in BuildKit).
    fs::write(&secret, "another-value").unwrap();
    let exec = FakeExecutor::default();
    f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    // Nothing the key index keeps (records, notes) holds the value.
    let mut stack = vec![f.store.root().join("keys")];
    let mut files = 0;
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let bytes = fs::read(&path).unwrap();
                let text = String::from_utf8_lossy(&bytes);
                assert!(!text.contains(value), "{} holds the secret", path.display());
            }
        }
    }
    assert!(files >= 2, "no record or note was written");
}

#[test]
fn a_wildcard_at_the_root_of_a_stage_matches() {
    require_root!();
    let f = Fixture::new();
    // Regression: the root of a stage's view is a magic link
    // (/proc/self/fd/N) and was taken for a non-directory.
    let exec = FakeExecutor::default();
    let result = f
        .build(
            &f.request("FROM scratch AS a\nRUN one\nFROM scratch\nCOPY --from=a /out-* /a/\n"),
            &exec,
            &solver::NoProgress,
        )
        .unwrap();
    assert_eq!(ran(&result), ["RUN one", "COPY --from=a /out-* /a/"]);
    // So does the root itself.
    let result = f
        .build(
            &f.request("FROM scratch AS a\nRUN one\nFROM scratch\nCOPY --from=a / /a/\n"),
            &exec,
            &solver::NoProgress,
        )
        .unwrap();
    assert_eq!(ran(&result), ["COPY --from=a / /a/"]);
}

/// Serves `body` (which the test may change) at every path over plain
/// HTTP on 127.0.0.1; returns the base URL.
fn serve(body: std::sync::Arc<Mutex<Vec<u8>>>) -> String {
    serve_with(move || body.lock().unwrap().clone())
}

/// Serves what `next` gives for each request at every path over plain
/// HTTP on 127.0.0.1; returns the base URL.
fn serve_with(next: impl Fn() -> Vec<u8> + Send + 'static) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(&mut stream);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) if line == "\r\n" => break,
                    Ok(_) => {}
                }
            }
            let body = next();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\
                 Last-Modified: Tue, 14 Nov 2023 22:13:20 GMT\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn an_added_url_is_keyed_by_what_it_serves() {
    require_root!();
    let f = Fixture::new();
    let body = std::sync::Arc::new(Mutex::new(b"version 1".to_vec()));
    let url = serve(body.clone());
    let req = f.request(&format!(
        "FROM scratch\nADD {url}/file.txt /file.txt\nRUN after\n"
    ));
    let exec = FakeExecutor::default();
    f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert_eq!(exec.runs(), ["after"]);
    // The same content: nothing runs.
    let exec = FakeExecutor::default();
    let result = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    assert!(result.stats.executed.is_empty());
    // New content: the ADD and what follows run again, and say why.
    *body.lock().unwrap() = b"version 2".to_vec();
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    let result = f.build(&req, &exec, &progress).unwrap();
    assert_eq!(exec.runs(), ["after"]);
    assert_eq!(
        ran(&result),
        [format!("ADD {url}/file.txt /file.txt"), "RUN after".into()]
    );
    assert_eq!(
        progress.misses(),
        [format!(
            "ADD {url}/file.txt /file.txt: url {url}/file.txt changed"
        )]
    );
}

#[test]
fn a_context_file_edited_during_the_build_leaves_no_wrong_record() {
    require_root!();
    let f = Fixture::new();
    f.write("a.txt", "one");
    let req = f.request("FROM scratch\nRUN edit\nCOPY a.txt /a.txt\nRUN after\n");
    // The keys are computed from "one"; the RUN before the COPY changes
    // the file, so the COPY copies "two".
    let exec = FakeExecutor::default();
    *exec.edit.lock().unwrap() = Some((f.context.join("a.txt"), "two".into()));
    let first = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert!(
        first.warnings.iter().any(|w| w
            .message
            .contains("the build context changed while the build ran")),
        "{:?}",
        first.warnings
    );
    // Back to "one": the COPY and the step after it run again rather than
    // serving the "two" that was copied under the key of "one".
    f.write("a.txt", "one");
    let exec = FakeExecutor::default();
    let second = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert_eq!(ran(&second), ["COPY a.txt /a.txt", "RUN after"]);
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    // And now it is cached as usual.
    let third = f
        .build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    assert!(third.stats.executed.is_empty(), "{:?}", third.stats);
}

#[test]
fn an_added_url_that_changes_during_the_build_leaves_no_record() {
    require_root!();
    let f = Fixture::new();
    // Each request takes the next body; the last one stays.
    let bodies = std::sync::Arc::new(Mutex::new(std::collections::VecDeque::from([
        b"version 1".to_vec(),
        b"version 2".to_vec(),
    ])));
    let queue = bodies.clone();
    let url = serve_with(move || {
        let mut queue = queue.lock().unwrap();
        if queue.len() > 1 {
            queue.pop_front().unwrap()
        } else {
            queue.front().cloned().unwrap()
        }
    });
    let req = f.request(&format!(
        "FROM scratch\nADD {url}/file.txt /file.txt\nRUN after\n"
    ));
    // The key is computed from "version 1", the step downloads "version 2".
    let exec = FakeExecutor::default();
    let err = f.build(&req, &exec, &solver::NoProgress).unwrap_err();
    match &err {
        BuildError::Copy {
            source: solver::ops::copy::CopyError::UrlChanged { url: changed },
            ..
        } => assert_eq!(changed, &format!("{url}/file.txt")),
        other => panic!("unexpected error: {other:?}"),
    }
    let BuildError::Copy { source, .. } = &err else {
        unreachable!()
    };
    assert_eq!(
        source.to_string(),
        format!(
            "the content of {url}/file.txt changed while the build ran \
             (its cache key was computed from what it served earlier); build again"
        )
    );
    assert!(exec.runs().is_empty(), "{:?}", exec.runs());
    // The server is stable now: the step downloads again and succeeds.
    let exec = FakeExecutor::default();
    let result = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert_eq!(
        ran(&result),
        [format!("ADD {url}/file.txt /file.txt"), "RUN after".into()]
    );
    assert_eq!(exec.runs(), ["after"]);
    let cached = f
        .build(&req, &FakeExecutor::default(), &solver::NoProgress)
        .unwrap();
    assert!(cached.stats.executed.is_empty(), "{:?}", cached.stats);
    // Nothing was stored under the key of "version 1" by the failed build:
    // serving it again runs the step again.
    *bodies.lock().unwrap() = [b"version 1".to_vec()].into();
    let exec = FakeExecutor::default();
    let result = f.build(&req, &exec, &solver::NoProgress).unwrap();
    assert_eq!(
        ran(&result),
        [format!("ADD {url}/file.txt /file.txt"), "RUN after".into()]
    );
}
