//! The scheduler's use of remote caches, with a fake executor and a remote
//! that counts its calls: a remote hit cuts off the descent exactly like a
//! local hit (one lookup for a fully cached build), becomes a local record
//! (the next build asks no remote), and a failing remote is one warning,
//! asked once, never a failed build. Creating a step's scratch space needs
//! root, so without it the tests print why and pass, unless `CI` is set.

#![allow(clippy::result_large_err)]

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache::Digest;
use cache::keys::CacheRecord;
use cache::remote_cache::{
    CacheMode, ExportOptions, Exported, Fetched, LocalCache, RemoteCache, RemoteCacheError,
};
use cache::store::Store;
use solver::sandbox::{
    CancelHandle, Executor, RunOutcome, RunSpec, SandboxError, StepIo, Termination,
};
use solver::{BuildRequest, BuildResult, NoProgress, build_with};

macro_rules! require_root {
    () => {
        if !nix::unistd::geteuid().is_root() {
            if std::env::var_os("CI").is_some() {
                panic!("remote lookup tests need root in CI");
            }
            eprintln!("skipping: the step scratch space needs root");
            return;
        }
    };
}

/// Runs nothing: writes the command into the upperdir and records it.
#[derive(Default)]
struct FakeExecutor {
    runs: Mutex<Vec<String>>,
}

impl Executor for FakeExecutor {
    fn run(
        &self,
        spec: &RunSpec,
        _io: StepIo<'_>,
        _cancel: &CancelHandle,
    ) -> Result<RunOutcome, SandboxError> {
        let command = spec.argv.last().cloned().unwrap_or_default();
        self.runs.lock().unwrap().push(command.clone());
        fs::write(
            spec.rootfs
                .upperdir
                .join(format!("out-{}", command.replace(' ', "-"))),
            &command,
        )
        .unwrap();
        Ok(RunOutcome {
            termination: Termination::Exited(0),
            elapsed: Duration::ZERO,
        })
    }
}

/// A local layout cache that counts lookups, or fails every call.
#[derive(Debug)]
struct Counting {
    inner: LocalCache,
    lookups: AtomicUsize,
    broken: bool,
}

impl Counting {
    fn new(dir: PathBuf, broken: bool) -> Arc<Counting> {
        Arc::new(Counting {
            inner: LocalCache::new(dir),
            lookups: AtomicUsize::new(0),
            broken,
        })
    }

    fn fail(&self) -> RemoteCacheError {
        RemoteCacheError::Invalid {
            cache: self.name(),
            what: "everything (test)".into(),
        }
    }
}

impl RemoteCache for Counting {
    fn name(&self) -> String {
        "counting".into()
    }

    fn lookup(&self, store: &Store, key: &Digest) -> Result<Option<Fetched>, RemoteCacheError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        if self.broken {
            return Err(self.fail());
        }
        self.inner.lookup(store, key)
    }

    fn export(
        &self,
        store: &Store,
        entries: &[(Digest, CacheRecord)],
    ) -> Result<Exported, RemoteCacheError> {
        if self.broken {
            return Err(self.fail());
        }
        self.inner.export(store, entries)
    }
}

struct Machine {
    _dir: tempfile::TempDir,
    store: Store,
    context: PathBuf,
}

impl Machine {
    fn new() -> Machine {
        let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("remote_lookup");
        fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        let context = dir.path().join("context");
        fs::create_dir(&context).unwrap();
        fs::write(context.join("a.txt"), "a\n").unwrap();
        fs::write(context.join("b.txt"), "b\n").unwrap();
        Machine {
            _dir: dir,
            store,
            context,
        }
    }

    fn build(&self, configure: impl FnOnce(&mut BuildRequest)) -> (BuildResult, Vec<String>) {
        let mut req = BuildRequest::new(DOCKERFILE, "Dockerfile", &self.context);
        req.source_date_epoch = Some(0);
        configure(&mut req);
        let executor = FakeExecutor::default();
        let result = build_with(
            &self.store,
            &req,
            &executor,
            &NoProgress,
            &CancelHandle::new(),
        )
        .unwrap();
        let runs = executor.runs.lock().unwrap().clone();
        (result, runs)
    }
}

const DOCKERFILE: &str = "FROM scratch\n\
                          COPY a.txt /a.txt\n\
                          RUN after-a\n\
                          COPY b.txt /b.txt\n\
                          RUN after-b\n";

#[test]
fn a_remote_hit_cuts_the_descent_and_becomes_local() {
    require_root!();
    let shared = tempfile::tempdir().unwrap();
    let remote = Counting::new(shared.path().join("cache"), false);
    let max = ExportOptions {
        mode: CacheMode::Max,
        mounts: false,
    };

    let a = Machine::new();
    let (cold, runs) = a.build(|r| r.cache_to = vec![(remote.clone(), max)]);
    assert_eq!(runs, ["after-a", "after-b"]);
    assert_eq!(cold.stats.exports.len(), 1);
    assert_eq!(cold.stats.exports[0].1.entries, 4);

    let b = Machine::new();
    let (hit, runs) = b.build(|r| r.cache_from = vec![remote.clone()]);
    assert!(runs.is_empty(), "B ran {runs:?}");
    assert_eq!(hit.manifest_digest, cold.manifest_digest);
    assert_eq!(hit.stats.remote_hits, 1);
    assert!(hit.stats.remote_bytes > 0);
    assert_eq!(
        remote.lookups.load(Ordering::SeqCst),
        1,
        "the target's hit is the only lookup"
    );

    // Now local: the remote is not asked.
    let (again, runs) = b.build(|r| r.cache_from = vec![remote.clone()]);
    assert!(runs.is_empty());
    assert_eq!(again.stats.remote_hits, 0);
    assert_eq!(remote.lookups.load(Ordering::SeqCst), 1);

    // b.txt changed on a third machine: the last COPY misses locally and
    // remotely, its parent RUN is a remote hit; only `after-b` runs.
    let c = Machine::new();
    fs::write(c.context.join("b.txt"), "b2\n").unwrap();
    let before = remote.lookups.load(Ordering::SeqCst);
    let (changed, runs) = c.build(|r| r.cache_from = vec![remote.clone()]);
    assert_eq!(runs, ["after-b"]);
    assert_eq!(changed.stats.remote_hits, 1);
    assert_eq!(remote.lookups.load(Ordering::SeqCst) - before, 3);
}

#[test]
fn a_failing_remote_is_one_warning_and_asked_once() {
    require_root!();
    let shared = tempfile::tempdir().unwrap();
    let broken = Counting::new(shared.path().join("cache"), true);
    let m = Machine::new();
    let (result, runs) = m.build(|r| {
        r.cache_from = vec![broken.clone()];
        r.cache_to = vec![(broken.clone(), ExportOptions::default())];
    });
    assert_eq!(runs, ["after-a", "after-b"]);
    assert_eq!(broken.lookups.load(Ordering::SeqCst), 1);
    let warnings: Vec<&str> = result.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with("--cache-from counting"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("--cache-to counting"),
        "{warnings:?}"
    );
}
