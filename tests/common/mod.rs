//! Helpers shared by the end-to-end tests of `builder build` and `builder run`:
//! throwaway store roots, a busybox base image, running the binary, and the
//! store invariants every test checks at the end.
//!
//! These tests need root, namespaces, overlayfs (Linux >= 6.8) and Debian's
//! busybox-static. Without them a test prints why and returns; under `CI`
//! (which provides all of them) it fails instead.
#![allow(dead_code)]

pub(crate) mod cache_server;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cache::Digest;
use cache::compression::{Compression, CompressionOptions};
use cache::images::{BlobRef, ImageName, ImageStore, MEDIA_TYPE_OCI_CONFIG, oci_manifest};
use cache::layer::create::{CreateOptions, create_layer};
use cache::store::Store;
use solver::sandbox::testsupport::{busybox_rootfs, unavailable_reason};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_builder");

/// Whether the sandbox can run here; panics under CI when it cannot.
pub(crate) fn sandbox_available() -> bool {
    match unavailable_reason() {
        None => true,
        Some(reason) => {
            if std::env::var_os("CI").is_some() {
                panic!("CI is set but the end-to-end tests cannot run: {reason}");
            }
            eprintln!("skipping: {reason}");
            false
        }
    }
}

/// Whether `tool --version` works; panics under CI when it does not.
pub(crate) fn tool_available(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI is set but {tool} is missing");
        }
        eprintln!("skipping: {tool} is missing");
    }
    ok
}

/// A store root of its own, removed at the end of the test.
pub(crate) struct TestRoot {
    pub(crate) dir: tempfile::TempDir,
}

impl TestRoot {
    pub(crate) fn new() -> TestRoot {
        // Under the target dir rather than /tmp: the tests check that a
        // build leaves the host's /tmp alone.
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e");
        fs::create_dir_all(&parent).unwrap();
        TestRoot {
            dir: tempfile::Builder::new()
                .prefix("root-")
                .tempdir_in(parent)
                .unwrap(),
        }
    }

    pub(crate) fn root(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// A scratch directory beside the root (contexts, outputs).
    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `builder --root ROOT`.
    pub(crate) fn builder(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--root").arg(self.root());
        // What the machine running the tests may have set that would change
        // what a build does: the tests set what they need themselves. (The
        // servers the tests start listen on loopback, which a proxy would
        // not reach.)
        for name in [
            "BUILDER_ROOT",
            "SOURCE_DATE_EPOCH",
            "BUILDER_CACHE",
            "BUILDER_CACHE_TOKEN",
            "BUILDER_INSECURE_REGISTRY",
            "BUILDER_GC_KEEP_STORAGE",
            "BUILDER_COPY_WORKERS",
            "DOCKER_CONFIG",
            "http_proxy",
            "https_proxy",
            "all_proxy",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
        ] {
            c.env_remove(name);
        }
        c.stdin(Stdio::null());
        c
    }

    /// Runs `builder ARGS` and returns its output, whatever its status.
    pub(crate) fn output(&self, args: &[&str]) -> Output {
        let mut c = self.builder();
        c.args(args);
        c.output()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
    }

    /// Runs `builder ARGS`, which must succeed; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "builder {args:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub(crate) fn store(&self) -> Store {
        Store::open(self.root()).unwrap()
    }

    /// Stores a one-layer busybox image (see
    /// [`solver::sandbox::testsupport::busybox_rootfs`]: applets, a `test`
    /// user, `/etc/motd`) under `name`, with `config` merged into its
    /// `config` object (Env defaults to docker's PATH). Made through the
    /// store API, so that `run` tests do not depend on `build`.
    pub(crate) fn busybox_image(&self, name: &str, config: serde_json::Value) -> Digest {
        let tree = self.path(&format!("busybox-tree-{}", unique()));
        busybox_rootfs(&tree).unwrap();
        self.image_from_trees(name, &[&tree], config)
    }

    /// Stores an image whose layers are the given trees (in overlay format),
    /// base first; returns the manifest digest.
    pub(crate) fn image_from_trees(
        &self,
        name: &str,
        trees: &[&Path],
        config: serde_json::Value,
    ) -> Digest {
        let store = self.store();
        let mut layers = Vec::new();
        for tree in trees {
            layers.push(
                create_layer(
                    &store,
                    tree,
                    &CreateOptions {
                        compression: CompressionOptions::new(Compression::Gzip),
                        source_date_epoch: Some(0),
                    },
                )
                .unwrap(),
            );
        }
        let mut inner = serde_json::json!({
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        });
        if let serde_json::Value::Object(extra) = config {
            for (k, v) in extra {
                inner[k] = v;
            }
        }
        let doc = serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "created": "1970-01-01T00:00:00Z",
            "config": inner,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>(),
            },
        });
        let config = cache::json::to_vec(&doc).unwrap();
        let config_ref = BlobRef {
            media_type: MEDIA_TYPE_OCI_CONFIG.into(),
            digest: Digest::of(&config),
            size: config.len() as u64,
        };
        let layer_refs: Vec<BlobRef> = layers
            .iter()
            .map(|l| BlobRef {
                media_type: l.media_type.clone(),
                digest: l.digest,
                size: l.size,
            })
            .collect();
        let manifest = oci_manifest(&config_ref, &layer_refs).unwrap();
        let name: ImageName = name.parse().unwrap();
        ImageStore::new(store)
            .put(&manifest, &config, &[name])
            .unwrap()
    }

    /// A fresh build context holding `files` (path, contents); parent
    /// directories are created.
    pub(crate) fn context(&self, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.path(&format!("ctx-{}", unique()));
        fs::create_dir_all(&dir).unwrap();
        for (path, contents) in files {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, contents).unwrap();
        }
        dir
    }

    /// `builder build --progress=plain ARGS CONTEXT`, whatever its status.
    pub(crate) fn build(&self, context: &Path, args: &[&str]) -> Output {
        let mut c = self.builder();
        c.args(["build", "--progress=plain"])
            .args(args)
            .arg(context);
        c.output()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
    }

    /// Like [`TestRoot::build`], which must succeed; returns its stdout.
    pub(crate) fn build_ok(&self, context: &Path, args: &[&str]) -> String {
        let out = self.build(context, args);
        assert!(
            out.status.success(),
            "build {args:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Builds `dockerfile` with `files` as its context and exports the
    /// result with `-o type=local`; returns the exported root filesystem.
    pub(crate) fn build_local(
        &self,
        dockerfile: &str,
        files: &[(&str, &str)],
        args: &[&str],
    ) -> PathBuf {
        let ctx = self.context(files);
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        let out = self.path(&format!("out-{}", unique()));
        let spec = format!("type=local,dest={}", out.display());
        let mut all = vec!["-o", spec.as_str()];
        all.extend_from_slice(args);
        self.build_ok(&ctx, &all);
        out
    }

    /// Builds the project's own base image, `examples/busybox`, as `name`.
    pub(crate) fn example_busybox(&self, name: &str) {
        let ctx = self.path(&format!("busybox-ctx-{}", unique()));
        fs::create_dir_all(&ctx).unwrap();
        fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/busybox/Dockerfile");
        self.build_ok(&ctx, &["-t", name, "-f", dockerfile.to_str().unwrap()]);
    }

    /// `builder inspect NAME`'s first element.
    pub(crate) fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", name]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    /// Checks the invariants that must hold whatever happened to builder:
    /// every blob hashes to its name, every index entry has all its blobs,
    /// and every snapshot directory is named by a digest.
    pub(crate) fn check_store(&self) {
        check_store(&self.root());
    }
}

/// See [`TestRoot::check_store`].
pub(crate) fn check_store(root: &Path) {
    let blobs = root.join("blobs/sha256");
    if let Ok(entries) = fs::read_dir(&blobs) {
        for e in entries {
            let e = e.unwrap();
            let data = fs::read(e.path()).unwrap();
            assert_eq!(
                Digest::of(&data).hex(),
                e.file_name().to_string_lossy(),
                "blob {:?} does not match its name",
                e.path()
            );
        }
    }
    if let Ok(raw) = fs::read(root.join("index.json")) {
        let index: serde_json::Value = serde_json::from_slice(&raw)
            .unwrap_or_else(|e| panic!("index.json does not parse: {e}"));
        for entry in index["manifests"].as_array().unwrap() {
            let digest: Digest = entry["digest"].as_str().unwrap().parse().unwrap();
            let manifest: serde_json::Value = serde_json::from_slice(
                &fs::read(blobs.join(digest.hex())).expect("a named manifest is present"),
            )
            .unwrap();
            for blob in
                std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap())
            {
                let d: Digest = blob["digest"].as_str().unwrap().parse().unwrap();
                assert!(
                    blobs.join(d.hex()).exists(),
                    "index names an image whose blob {d} is missing"
                );
            }
        }
    }
    if let Ok(entries) = fs::read_dir(root.join("snapshots")) {
        for e in entries {
            let name = e.unwrap().file_name();
            let name = name.to_string_lossy();
            assert!(
                format!("sha256:{name}").parse::<Digest>().is_ok(),
                "unexpected entry {name} in snapshots/"
            );
        }
    }
}

/// A number unique within this test process.
pub(crate) fn unique() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Pids of live processes whose argv is exactly `argv` (so that the
/// `builder run ... sh -c "...argv..."` that started them does not count).
pub(crate) fn processes_running(argv: &[&str]) -> Vec<u32> {
    let mut want = Vec::new();
    for a in argv {
        want.extend_from_slice(a.as_bytes());
        want.push(0);
    }
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // Zombies have an empty cmdline: they are not left running.
        if fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want) {
            out.push(pid);
        }
    }
    out
}

/// Waits up to `limit` for no process to run `argv`; returns the survivors
/// if some remain.
pub(crate) fn wait_until_gone(argv: &[&str], limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left = processes_running(argv);
        if left.is_empty() || start.elapsed() > limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to `limit` for a process running `argv` to appear (a shell
/// prints "ready" before it starts the next command); returns the pids.
pub(crate) fn wait_for_process(argv: &[&str], limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let found = processes_running(argv);
        if !found.is_empty() || start.elapsed() > limit {
            return found;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process that is SIGKILLed if the test panics before waiting for it.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// An argument unlikely to appear in any other process on the machine, for
/// `sleep` commands the tests look for.
pub(crate) fn unique_seconds() -> String {
    format!("{}{:03}", 100_000 + std::process::id() % 100_000, unique())
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The events of a `builder build --progress=json` run (one JSON object a
/// line on stderr; other lines, such as the final error, are kept apart).
#[derive(Debug, Default)]
pub(crate) struct Events {
    pub(crate) events: Vec<serde_json::Value>,
    /// Lines of stderr that are not JSON objects.
    pub(crate) other: Vec<String>,
}

impl Events {
    pub(crate) fn parse(stderr: &str) -> Events {
        let mut out = Events::default();
        for line in stderr.lines() {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(v) if v.is_object() => out.events.push(v),
                _ => out.other.push(line.to_owned()),
            }
        }
        out
    }

    /// Events of `kind` ("started", "cached", "done", ...).
    pub(crate) fn of(&self, kind: &str) -> impl Iterator<Item = &serde_json::Value> {
        self.events.iter().filter(move |e| e["type"] == kind)
    }

    /// The name of step `step`, from its "started" or "cached" event.
    pub(crate) fn name(&self, step: &serde_json::Value) -> Option<&str> {
        self.events
            .iter()
            .filter(|e| e["type"] == "started" || e["type"] == "cached")
            .find(|e| &e["step"] == step)
            .and_then(|e| e["name"].as_str())
    }

    /// The instructions (names without their `[stage n/m] ` prefix) of the
    /// solver's steps (those with a vertex) that had an event of `kind`.
    pub(crate) fn instructions(&self, kind: &str) -> Vec<String> {
        let mut out: Vec<String> = self
            .of(kind)
            .filter(|e| e.get("vertex").is_some_and(|v| !v.is_null()))
            .filter_map(|e| self.name(&e["step"]))
            .map(|n| instruction(n).to_owned())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The RUN, COPY and ADD steps that ran (had a "started" event).
    pub(crate) fn ran(&self) -> Vec<String> {
        filesystem_steps(self.instructions("started"))
    }

    /// The RUN, COPY and ADD steps that came from the cache.
    pub(crate) fn cached(&self) -> Vec<String> {
        filesystem_steps(self.instructions("cached"))
    }

    /// The `[started, done]` times (unix seconds) of the step whose
    /// instruction is `instruction`.
    pub(crate) fn interval(&self, instruction_text: &str) -> (f64, f64) {
        let started = self
            .of("started")
            .find(|e| e["name"].as_str().map(instruction) == Some(instruction_text))
            .unwrap_or_else(|| panic!("no started event for {instruction_text:?}: {self:#?}"));
        let done = self
            .of("done")
            .find(|e| e["step"] == started["step"])
            .unwrap_or_else(|| panic!("no done event for {instruction_text:?}: {self:#?}"));
        (
            started["time"]
                .as_f64()
                .expect("a started event has a time"),
            done["time"].as_f64().expect("a done event has a time"),
        )
    }

    /// Every name of an event (started or cached), vertex or not.
    pub(crate) fn names(&self) -> Vec<&str> {
        self.events
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect()
    }

    /// Error messages from "error" events and the lines that are not JSON.
    pub(crate) fn error_text(&self) -> String {
        let mut text = String::new();
        for e in self.of("error") {
            if let Some(step) = self.name(&e["step"]) {
                text.push_str(step);
                text.push_str(": ");
            }
            text.push_str(e["message"].as_str().unwrap_or_default());
            text.push('\n');
        }
        for line in &self.other {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

/// `[stage 2/3] RUN x` -> `RUN x`.
pub(crate) fn instruction(name: &str) -> &str {
    match name.strip_prefix('[') {
        Some(rest) => rest.split_once("] ").map_or(name, |(_, i)| i),
        None => name,
    }
}

fn filesystem_steps(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|n| n.starts_with("RUN ") || n.starts_with("COPY ") || n.starts_with("ADD "))
        .collect()
}

impl TestRoot {
    /// `builder build --progress=json ARGS CONTEXT`, whatever its status,
    /// and its events.
    pub(crate) fn build_json(&self, context: &Path, args: &[&str]) -> (Output, Events) {
        let mut c = self.builder();
        c.args(["build", "--progress=json"]).args(args).arg(context);
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
        let events = Events::parse(&String::from_utf8_lossy(&out.stderr));
        (out, events)
    }

    /// Like [`TestRoot::build_json`]; the build must succeed.
    pub(crate) fn build_json_ok(&self, context: &Path, args: &[&str]) -> Events {
        let (out, events) = self.build_json(context, args);
        assert!(
            out.status.success(),
            "build {args:?} failed with {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        events
    }
}

/// Mount points at or under `dir` (from /proc/self/mountinfo).
pub(crate) fn mounts_under(dir: &Path) -> Vec<String> {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(str::to_owned)
        .collect()
}
