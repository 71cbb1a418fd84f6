//! The solver's walk over the graph with a fake executor: which steps run,
//! in what order, with what spec, what progress says, and how failures
//! surface. The fake writes a file into the step's upperdir instead of
//! running anything, so no sandbox is involved; creating the scratch space
//! (chown to root) still needs root, so without it the tests print why and
//! pass, unless `CI` is set.

#![allow(clippy::result_large_err)]

use std::fs;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use cache::store::Store;
use solver::sandbox::{
    CancelHandle, Executor, NetworkMode, Output, RunOutcome, RunSpec, SandboxError, StepIo,
    Termination, UserError,
};
use solver::{BuildError, BuildRequest, Progress, ProgressEvent, build_with};

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var_os("CI").is_some() {
                panic!("solve graph tests need root in CI");
            }
            eprintln!("skipping: the step scratch space needs root");
            return;
        }
    };
}

/// Runs nothing: records the spec, prints `out: <argv>` on stdout, writes
/// `/ran-<n>` into the upperdir, and ends as `outcome` says for a command
/// containing `fail`.
#[derive(Default)]
struct FakeExecutor {
    runs: Mutex<Vec<RunSpec>>,
    fail_with: Option<Termination>,
    sandbox_error: bool,
}

impl Executor for FakeExecutor {
    fn run(
        &self,
        spec: &RunSpec,
        io: StepIo<'_>,
        cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        if cancel.is_cancelled() {
            return Err(SandboxError::Cancelled);
        }
        let n = {
            let mut runs = self.runs.lock().unwrap();
            runs.push(spec.clone());
            runs.len()
        };
        if self.sandbox_error {
            return Err(SandboxError::User(UserError::UnknownUser("ghost".into())));
        }
        let command = spec.argv.join(" ");
        if let Output::Sink(sink) = io.stdout {
            for i in 0..12 {
                writeln!(sink, "out {i}: {command}").unwrap();
            }
            sink.flush().unwrap();
        }
        fs::write(spec.rootfs.upperdir.join(format!("ran-{n}")), &command).unwrap();
        let termination = match &self.fail_with {
            Some(t) if command.contains("fail") => t.clone(),
            _ => Termination::Exited(0),
        };
        Ok(RunOutcome {
            termination,
            elapsed: Duration::ZERO,
        })
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<ProgressEvent>>);

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
        let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("solve_graph");
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

    fn build(
        &self,
        req: &BuildRequest,
        executor: &FakeExecutor,
        progress: &dyn Progress,
    ) -> Result<solver::BuildResult, BuildError> {
        build_with(&self.store, req, executor, progress, &CancelHandle::new())
    }

    fn request(&self, dockerfile: &str) -> BuildRequest {
        BuildRequest::new(dockerfile, "Dockerfile", &self.context)
    }
}

#[test]
fn only_the_steps_the_target_needs_run_in_order() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let req = f.request(
        "FROM scratch AS a\n\
         RUN a1\n\
         FROM scratch AS unused\n\
         RUN never\n\
         FROM a AS b\n\
         RUN b1\n\
         RUN b2\n\
         FROM scratch AS last\n\
         RUN never-either\n",
    );
    let mut targeted = req.clone();
    targeted.options.target = Some("b".into());
    let result = f.build(&targeted, &exec, &solver::NoProgress).unwrap();
    let argvs: Vec<String> = exec
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.argv.join(" "))
        .collect();
    assert_eq!(argvs, ["/bin/sh -c a1", "/bin/sh -c b1", "/bin/sh -c b2"]);
    // Each step saw the layers of the steps before it.
    let lowers: Vec<usize> = exec
        .runs
        .lock()
        .unwrap()
        .iter()
        .map(|s| s.rootfs.lowerdirs.len())
        .collect();
    assert_eq!(lowers, [0, 1, 2]);
    let config: serde_json::Value = serde_json::from_slice(&result.config).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
}

#[test]
fn steps_get_their_environment_user_network_and_files() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let mut req = f.request(
        "FROM scratch\n\
         ENV A=1\n\
         ARG B=2\n\
         USER 1000:1000\n\
         RUN --network=none first\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo script\n\
         EOF\n",
    );
    req.options
        .build_args
        .insert("HTTP_PROXY".into(), "http://proxy:3128".into());
    let result = f.build(&req, &exec, &solver::NoProgress).unwrap();
    let runs = exec.runs.lock().unwrap();
    let first = &runs[0];
    assert_eq!(first.network, NetworkMode::None);
    assert_eq!(first.user.to_string(), "1000:1000");
    for wanted in ["A=1", "B=2", "HTTP_PROXY=http://proxy:3128"] {
        assert!(
            first.env.iter().any(|e| e == wanted),
            "{wanted} in {:?}",
            first.env
        );
    }
    assert!(first.env.iter().any(|e| e.starts_with("PATH=")));
    assert_eq!(first.hostname.len(), 12);
    let second = &runs[1];
    assert_eq!(second.network, NetworkMode::Host);
    assert_ne!(second.hostname, first.hostname);
    assert_eq!(second.files.len(), 1);
    assert_eq!(second.files[0].path, "/dev/pipes/EOF");
    assert_eq!(second.files[0].mode, 0o755);
    assert_eq!(second.files[0].content, b"#!/bin/sh\necho script\n");
    // Proxy values are for the step only, not the image.
    let config = String::from_utf8(result.config).unwrap();
    assert!(!config.contains("proxy:3128"), "{config}");
}

#[test]
fn progress_reports_each_step_once_with_its_output() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor::default();
    let progress = Recorder::default();
    fs::write(f.context.join("file"), "x").unwrap();
    f.build(
        &f.request("FROM scratch\nCOPY file /\nRUN one\nWORKDIR /w\n"),
        &exec,
        &progress,
    )
    .unwrap();
    let events = progress.0.lock().unwrap();
    let mut started = Vec::new();
    let mut open: Option<usize> = None;
    let mut logs = 0;
    for event in events.iter() {
        match event {
            ProgressEvent::StepStarted {
                vertex,
                description,
            } => {
                assert!(open.is_none(), "{event:?} inside another step");
                open = Some(*vertex);
                started.push(description.clone());
            }
            ProgressEvent::Log { vertex, line, .. } => {
                assert_eq!(open, Some(*vertex));
                assert!(line.starts_with("out "), "{line}");
                logs += 1;
            }
            ProgressEvent::StepDone { vertex, .. } => {
                assert_eq!(open.take(), Some(*vertex));
            }
            ProgressEvent::StepFailed { .. }
            | ProgressEvent::StepCached { .. }
            | ProgressEvent::CacheMiss { .. } => panic!("{event:?}"),
        }
    }
    assert!(open.is_none());
    assert_eq!(logs, 12);
    // Scratch is not a step; the context, COPY, RUN and WORKDIR are.
    assert_eq!(started.len(), 4, "{started:?}");
    assert!(started.iter().any(|d| d.contains("COPY file /")));
    assert!(started.iter().any(|d| d.contains("RUN one")));
    assert!(started.iter().any(|d| d.contains("WORKDIR /w")));
}

#[test]
fn a_failing_step_stops_the_build_with_its_last_lines() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor {
        fail_with: Some(Termination::Signaled(9)),
        ..FakeExecutor::default()
    };
    let progress = Recorder::default();
    let err = f
        .build(
            &f.request("FROM scratch\nRUN ok\nRUN fail now\nRUN after\n"),
            &exec,
            &progress,
        )
        .unwrap_err();
    let BuildError::StepFailed {
        exit_code,
        reason,
        last_lines,
        position,
        ..
    } = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(*exit_code, 137);
    assert_eq!(reason.as_deref(), Some("killed by SIGKILL"));
    assert_eq!(last_lines.len(), 10);
    assert_eq!(last_lines[0], "out 2: /bin/sh -c fail now");
    assert_eq!(position.map(|p| p.line), Some(3));
    assert_eq!(
        exec.runs.lock().unwrap().len(),
        2,
        "a step after the failure ran"
    );
    let failed = progress
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, ProgressEvent::StepFailed { .. }))
        .count();
    assert_eq!(failed, 1);
    let tmp = fs::read_dir(f.store.root().join("tmp")).unwrap().count();
    assert_eq!(tmp, 0, "scratch space left behind");
}

#[test]
fn sandbox_errors_and_cancellation() {
    require_root!();
    let f = Fixture::new();
    let exec = FakeExecutor {
        sandbox_error: true,
        ..FakeExecutor::default()
    };
    let err = f
        .build(
            &f.request("FROM scratch\nRUN x\n"),
            &exec,
            &solver::NoProgress,
        )
        .unwrap_err();
    assert!(matches!(err, BuildError::Step { .. }), "{err:?}");
    let rendered = err.render("Dockerfile", b"FROM scratch\nRUN x\n");
    assert!(
        rendered.starts_with("Dockerfile:2:1: [1/1] RUN x: unable to find user ghost"),
        "{rendered}"
    );

    let exec = FakeExecutor::default();
    let cancel = CancelHandle::new();
    cancel.cancel();
    let err = build_with(
        &f.store,
        &f.request("FROM scratch\nRUN x\n"),
        &exec,
        &solver::NoProgress,
        &cancel,
    )
    .unwrap_err();
    assert!(matches!(err, BuildError::Cancelled), "{err:?}");
    assert!(exec.runs.lock().unwrap().is_empty());
}
