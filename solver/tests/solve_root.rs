//! End-to-end builds through `solver::build` (needs root: namespaces and
//! overlayfs). Every test makes its own store with a busybox base image
//! (`busybox:test`, from Debian's static busybox) and checks the built
//! image by reading its layers back. Without root the tests print why and
//! pass, unless `CI` is set, where they fail.

#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache::Digest;
use cache::compression::decompressor;
use cache::images::{
    ConfigSummary, ImageStore, MEDIA_TYPE_OCI_CONFIG, ParsedManifest, oci_manifest,
};
use cache::layer::create::{CreateOptions, create_layer};
use cache::layer::flatten::flatten_layers;
use cache::snapshot::LayerRef;
use cache::store::Store;
use solver::sandbox::CancelHandle;
use solver::sandbox::testsupport::{TEST_USER_ID_OUTPUT, busybox_rootfs, unavailable_reason};
use solver::{BuildError, BuildRequest, BuildResult, NoProgress, Progress, ProgressEvent, build};

const BASE: &str = "busybox:test";

/// An error and its causes on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

/// Skips the test (returns) when the sandbox cannot run here, except in CI.
macro_rules! require_root {
    () => {
        if let Some(reason) = unavailable_reason() {
            if std::env::var_os("CI").is_some() {
                panic!("solve root tests cannot run in CI: {reason}");
            }
            eprintln!("skipping: {reason}");
            return;
        }
    };
}

/// Stores `busybox:test` (one layer), with an extra file when asked.
fn put_busybox(store: &Store, rootfs: &Path, extra: Option<(&str, &str)>) {
    busybox_rootfs(rootfs).unwrap();
    if let Some((name, content)) = extra {
        fs::write(rootfs.join(name), content).unwrap();
    }
    let layer = create_layer(store, rootfs, &CreateOptions::default()).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "busybox rootfs"}],
    });
    let config = cache::json::to_vec(&config).unwrap();
    let manifest = oci_manifest(
        &cache::images::BlobRef {
            media_type: MEDIA_TYPE_OCI_CONFIG.into(),
            digest: Digest::of(&config),
            size: config.len() as u64,
        },
        &[cache::images::BlobRef {
            media_type: layer.media_type.clone(),
            digest: layer.digest,
            size: layer.size,
        }],
    )
    .unwrap();
    ImageStore::new(store.clone())
        .put(&manifest, &config, &[BASE.parse().unwrap()])
        .unwrap();
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    context: PathBuf,
}

impl Fixture {
    /// A store holding `busybox:test` (one layer) and an empty context.
    fn new() -> Self {
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("solve_root");
        fs::create_dir_all(&parent).unwrap();
        let dir = tempfile::tempdir_in(&parent).unwrap();
        let store = Store::open(dir.path().join("root")).unwrap();
        put_busybox(&store, &dir.path().join("busybox"), None);
        let context = dir.path().join("context");
        fs::create_dir(&context).unwrap();
        Fixture {
            _dir: dir,
            store,
            context,
        }
    }

    fn request(&self, dockerfile: &str) -> BuildRequest {
        BuildRequest::new(dockerfile, "Dockerfile", &self.context)
    }

    fn build(&self, dockerfile: &str) -> Result<BuildResult, BuildError> {
        self.build_request(&self.request(dockerfile))
    }

    fn build_request(&self, req: &BuildRequest) -> Result<BuildResult, BuildError> {
        build(&self.store, req, &NoProgress, &CancelHandle::new())
    }

    fn build_ok(&self, dockerfile: &str) -> Built {
        match self.build(dockerfile) {
            Ok(result) => Built::new(self, result),
            Err(err) => panic!(
                "build failed:\n{}",
                err.render("Dockerfile", dockerfile.as_bytes())
            ),
        }
    }

    /// Whether the store is as a finished build must leave it: nothing in
    /// tmp/, nothing of it mounted anywhere.
    fn assert_clean(&self) {
        let tmp: Vec<_> = fs::read_dir(self.store.root().join("tmp"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.store.root().to_string_lossy().into_owned();
        assert!(!mounts.contains(&root), "store mounted:\n{mounts}");
    }
}

/// A built image, read back from the store.
struct Built {
    result: BuildResult,
    manifest: ParsedManifest,
    config: serde_json::Value,
    layers: Vec<LayerRef>,
    fs: tempfile::TempDir,
}

impl Built {
    fn new(f: &Fixture, result: BuildResult) -> Self {
        assert_eq!(Digest::of(&result.manifest), result.manifest_digest);
        assert_eq!(Digest::of(&result.config), result.config_digest);
        assert_eq!(
            f.store.read_blob(&result.manifest_digest).unwrap(),
            result.manifest
        );
        let manifest = ParsedManifest::parse(&result.manifest).unwrap();
        assert_eq!(manifest.config.digest, result.config_digest);
        assert_eq!(manifest.config.media_type, MEDIA_TYPE_OCI_CONFIG);
        let summary = ConfigSummary::parse(&result.config).unwrap();
        let diff_ids = summary.diff_ids().unwrap();
        assert_eq!(diff_ids.len(), manifest.layers.len());
        let layers: Vec<LayerRef> = manifest
            .layers
            .iter()
            .zip(&diff_ids)
            .map(|(blob, diff_id)| LayerRef {
                digest: blob.digest,
                diff_id: *diff_id,
            })
            .collect();
        let fs = tempfile::tempdir_in(f.store.root().parent().unwrap()).unwrap();
        flatten_layers(&f.store, &layers, fs.path()).unwrap();
        let config: serde_json::Value = serde_json::from_slice(&result.config).unwrap();
        // The config is canonical JSON.
        assert_eq!(cache::json::to_vec(&config).unwrap(), result.config);
        let with_layer = config["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
            .count();
        assert_eq!(with_layer, layers.len(), "history: {}", config["history"]);
        Built {
            result,
            manifest,
            config,
            layers,
            fs,
        }
    }

    fn path(&self, path: &str) -> PathBuf {
        self.fs.path().join(path.trim_start_matches('/'))
    }

    fn read(&self, path: &str) -> String {
        fs::read_to_string(self.path(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The entries of layer `index` (names as in the tar, no `./`).
    fn layer_entries(&self, f: &Fixture, index: usize) -> BTreeMap<String, (u8, u32, u32, u32)> {
        let blob = f.store.open_blob(&self.layers[index].digest).unwrap();
        let mut archive = tar::Archive::new(decompressor(blob).unwrap());
        let mut out = BTreeMap::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            out.insert(
                name.trim_end_matches('/').to_owned(),
                (
                    header.entry_type().as_byte(),
                    header.mode().unwrap(),
                    header.uid().unwrap() as u32,
                    header.gid().unwrap() as u32,
                ),
            );
        }
        out
    }
}

#[test]
fn run_writes_files_into_a_new_layer() {
    require_root!();
    let f = Fixture::new();
    let built = f.build_ok(
        "FROM busybox:test\n\
         RUN echo hello > /hello && mkdir -p /a/b && echo deep > /a/b/c && chmod 0600 /a/b/c\n",
    );
    assert_eq!(built.layers.len(), 2);
    assert_eq!(built.read("/hello"), "hello\n");
    assert_eq!(built.read("/a/b/c"), "deep\n");
    assert_eq!(
        fs::metadata(built.path("/a/b/c"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o600
    );
    // The base is untouched below it.
    assert!(built.path("/bin/busybox").is_file());
    let entries = built.layer_entries(&f, 1);
    assert_eq!(
        entries.keys().cloned().collect::<Vec<_>>(),
        ["a", "a/b", "a/b/c", "hello"],
        "the layer holds exactly the step's changes"
    );
    // The base layer is the loaded image's own blob.
    let base = ImageStore::new(f.store.clone()).resolve(BASE).unwrap();
    assert_eq!(built.manifest.layers[0], base.parsed.layers[0]);
    assert_eq!(
        built.config["history"].as_array().unwrap().len(),
        2,
        "{}",
        built.config["history"]
    );
    assert_eq!(built.config["history"][0]["created_by"], "busybox rootfs");
    assert_eq!(built.config["architecture"], "amd64");
    assert_eq!(built.config["os"], "linux");
    f.assert_clean();
}

#[test]
fn deleting_a_base_file_leaves_a_whiteout() {
    require_root!();
    let f = Fixture::new();
    let built = f.build_ok("FROM busybox:test\nRUN rm /etc/motd && rm -r /mnt\n");
    let entries = built.layer_entries(&f, 1);
    assert!(entries.contains_key("etc/.wh.motd"), "{entries:?}");
    assert!(entries.contains_key(".wh.mnt"), "{entries:?}");
    assert!(!built.path("/etc/motd").exists());
    assert!(!built.path("/mnt").exists());
    assert!(built.path("/etc/passwd").is_file());
    f.assert_clean();
}

#[test]
fn env_and_args_reach_run_and_the_config() {
    require_root!();
    let f = Fixture::new();
    let mut req = f.request(
        "FROM busybox:test\n\
         ENV GREETING=hello\n\
         ARG WHO=nobody\n\
         RUN echo \"$GREETING $WHO\" > /env.txt && echo \"$PATH\" > /path.txt && hostname > /host.txt\n\
         ENV LATER=1\n\
         CMD [\"cat\", \"/env.txt\"]\n",
    );
    req.options.build_args.insert("WHO".into(), "world".into());
    let built = Built::new(&f, f.build_request(&req).unwrap());
    assert_eq!(built.read("/env.txt"), "hello world\n");
    assert_eq!(built.read("/path.txt"), "/usr/sbin:/usr/bin:/sbin:/bin\n");
    // A container-id-like hostname, not the host's and not captured in /etc.
    let host = built.read("/host.txt");
    assert_eq!(host.trim().len(), 12, "{host:?}");
    assert!(
        host.trim().bytes().all(|b| b.is_ascii_hexdigit()),
        "{host:?}"
    );
    assert!(!built.path("/etc/hostname").exists());
    let config = &built.config["config"];
    assert_eq!(
        config["Env"],
        serde_json::json!([
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "GREETING=hello",
            "LATER=1"
        ])
    );
    assert_eq!(config["Cmd"], serde_json::json!(["cat", "/env.txt"]));
    let history: Vec<(String, bool)> = built.config["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["created_by"].as_str().unwrap().to_owned(),
                h["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(history.len(), 6, "{history:?}");
    assert!(
        history[1].0.starts_with("ENV GREETING=hello"),
        "{history:?}"
    );
    assert!(history[1].1);
    assert!(history[3].0.starts_with("RUN "), "{history:?}");
    assert!(!history[3].1);
    assert!(history[5].1);
}

#[test]
fn workdir_and_user() {
    require_root!();
    let f = Fixture::new();
    let built = f.build_ok(
        "FROM busybox:test\n\
         USER test\n\
         WORKDIR /srv/app/data\n\
         RUN id > id.txt && pwd > pwd.txt\n\
         WORKDIR /tmp\n",
    );
    // WORKDIR leaves a layer each time, an empty one for an existing dir.
    assert_eq!(built.layers.len(), 4);
    assert!(built.layer_entries(&f, 3).is_empty());
    for dir in ["/srv", "/srv/app", "/srv/app/data"] {
        let meta = fs::metadata(built.path(dir)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{dir}");
        assert_eq!(meta.mode() & 0o7777, 0o755, "{dir}");
    }
    assert_eq!(
        built.read("/srv/app/data/id.txt").trim(),
        TEST_USER_ID_OUTPUT
    );
    assert_eq!(built.read("/srv/app/data/pwd.txt"), "/srv/app/data\n");
    assert_eq!(
        fs::metadata(built.path("/srv/app/data/id.txt"))
            .unwrap()
            .uid(),
        1000
    );
    assert_eq!(built.config["config"]["User"], "test");
    assert_eq!(built.config["config"]["WorkingDir"], "/tmp");
}

#[test]
fn exec_form_and_heredocs() {
    require_root!();
    let f = Fixture::new();
    let built = f.build_ok(
        "FROM busybox:test\n\
         RUN [\"/bin/sh\", \"-c\", \"echo exec > /exec.txt\"]\n\
         RUN <<EOF\n\
         echo plain > /plain.txt\n\
         echo second >> /plain.txt\n\
         EOF\n\
         RUN <<EOF\n\
         #!/bin/sh\n\
         echo \"script $0\" > /script.txt\n\
         EOF\n",
    );
    assert_eq!(built.read("/exec.txt"), "exec\n");
    assert_eq!(built.read("/plain.txt"), "plain\nsecond\n");
    assert_eq!(built.read("/script.txt"), "script /dev/pipes/EOF\n");
    // The script lived on the step's /dev only.
    for i in 1..built.layers.len() {
        assert!(
            built
                .layer_entries(&f, i)
                .keys()
                .all(|k| !k.starts_with("dev")),
            "layer {i}"
        );
    }
}

#[test]
fn multi_stage_copy_from_a_stage() {
    require_root!();
    let f = Fixture::new();
    let built = f.build_ok(
        "FROM busybox:test AS build\n\
         RUN mkdir /out && echo artifact > /out/result.txt\n\
         FROM busybox:test AS unused\n\
         RUN exit 1\n\
         FROM busybox:test\n\
         COPY --from=build /out/result.txt /app/\n\
         RUN cat /app/result.txt > /app/copy.txt\n",
    );
    assert_eq!(built.read("/app/result.txt"), "artifact\n");
    assert_eq!(built.read("/app/copy.txt"), "artifact\n");
    assert!(
        !built.path("/out").exists(),
        "the build stage's files leaked"
    );
    assert_eq!(built.layers.len(), 3);
    f.assert_clean();
}

#[test]
fn copy_from_the_context_onto_scratch() {
    require_root!();
    let f = Fixture::new();
    fs::write(f.context.join("greeting.txt"), "hi\n").unwrap();
    fs::write(f.context.join("secret.txt"), "no\n").unwrap();
    let mut req = f.request(
        "FROM scratch\n\
         COPY greeting.txt /data/\n\
         COPY --from=busybox:test /bin/busybox /bin/busybox\n",
    );
    req.ignore = Some(frontend::dockerignore::PatternMatcher::new(["secret.txt"]).unwrap());
    let built = Built::new(&f, f.build_request(&req).unwrap());
    assert_eq!(built.read("/data/greeting.txt"), "hi\n");
    assert!(built.path("/bin/busybox").is_file());
    assert_eq!(built.layers.len(), 2);

    let mut req = f.request("FROM scratch\nCOPY secret.txt /\n");
    req.ignore = Some(frontend::dockerignore::PatternMatcher::new(["secret.txt"]).unwrap());
    let err = f.build_request(&req).unwrap_err();
    assert!(matches!(err, BuildError::Copy { .. }), "{err:?}");
    assert_eq!(err.position().map(|p| p.line), Some(2));
    f.assert_clean();
}

#[test]
fn failing_run_reports_exit_code_and_last_lines() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\n\
                      RUN echo fine > /fine\n\
                      RUN for i in $(seq 1 15); do echo line $i; done; echo oops >&2; exit 3\n\
                      RUN echo never\n";
    let err = f.build(dockerfile).unwrap_err();
    let BuildError::StepFailed {
        exit_code,
        ref last_lines,
        position,
        ref description,
        ref command,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(exit_code, 3);
    assert_eq!(position.map(|p| p.line), Some(3));
    assert!(description.contains("RUN for i"), "{description}");
    assert!(command.starts_with("/bin/sh -c for i"), "{command}");
    assert_eq!(last_lines.len(), solver::solve::LAST_LINES);
    assert_eq!(last_lines.last().map(String::as_str), Some("oops"));
    assert_eq!(last_lines[0], "line 7");
    let rendered = err.render("Dockerfile", dockerfile.as_bytes());
    assert!(
        rendered.contains("Dockerfile:3:1: ") && rendered.contains("exit code: 3"),
        "{rendered}"
    );
    assert!(rendered.contains("line 15\noops\n"), "{rendered}");

    // A command that does not exist: docker's 127.
    let err = f
        .build("FROM busybox:test\nRUN [\"/nonexistent\"]\n")
        .unwrap_err();
    assert!(
        matches!(err, BuildError::StepFailed { exit_code: 127, .. }),
        "{err:?}"
    );
    f.assert_clean();
}

#[test]
fn missing_base_image_is_named_with_its_position() {
    require_root!();
    let f = Fixture::new();
    let err = f
        .build("FROM busybox:test\nRUN true\nFROM nothere:1\n")
        .unwrap_err();
    let BuildError::ImageNotFound {
        ref reference,
        position,
        ..
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!(reference, "nothere:1");
    assert_eq!(position.map(|p| p.line), Some(3));
    assert_eq!(
        err.to_string(),
        "image \"nothere:1\" not found in the local store (builder load or builder pull it first)"
    );
    // Nothing ran: the first stage is not needed, and nothing else was
    // built before the check.
    assert!(
        fs::read_dir(f.store.root().join("snapshots"))
            .unwrap()
            .count()
            == 0
    );

    let err = f
        .build("FROM busybox:test\nCOPY --from=other:2 /x /x\n")
        .unwrap_err();
    assert!(
        matches!(&err, BuildError::ImageNotFound { reference, position: Some(p), .. } if reference == "other:2" && p.line == 2),
        "{err:?}"
    );
    f.assert_clean();
}

#[test]
fn unknown_user_and_forbidden_network_are_clear_errors() {
    require_root!();
    let f = Fixture::new();
    let err = f
        .build("FROM busybox:test\nUSER nosuch\nRUN true\n")
        .unwrap_err();
    let text = chain(&err);
    assert!(text.contains("unable to find user nosuch"), "{text}");
    assert_eq!(err.position().map(|p| p.line), Some(3));

    let err = f
        .build("FROM busybox:test\nUSER nosuch\nWORKDIR /w\n")
        .unwrap_err();
    let text = chain(&err);
    assert!(text.contains("unable to find user nosuch"), "{text}");

    let err = f
        .build("FROM busybox:test\nRUN --network=host true\n")
        .unwrap_err();
    let text = chain(&err);
    assert!(text.contains("--allow network.host"), "{text}");
    let mut req = f.request(
        "FROM busybox:test\n\
         RUN --network=none ip -o link > /links\n\
         RUN --network=host grep db.internal /etc/hosts > /hosts\n",
    );
    req.network_allowed_host = true;
    req.extra_hosts = vec![("db.internal".into(), "10.1.2.3".parse().unwrap())];
    let built = Built::new(&f, f.build_request(&req).unwrap());
    let links = built.read("/links");
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains(": lo:"), "{links}");
    assert_eq!(built.read("/hosts"), "10.1.2.3\tdb.internal\n");
    // The step's /etc/hosts is bound in, never part of a layer.
    assert!(!built.path("/etc/hosts").exists());
    f.assert_clean();
}

#[test]
fn source_date_epoch_makes_builds_reproducible() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\n\
                      RUN echo same > /same && mkdir /d && touch /d/x\n\
                      WORKDIR /d\n\
                      ENV A=1\n";
    let mut req = f.request(dockerfile);
    req.source_date_epoch = Some(1_700_000_000);
    let first = Built::new(&f, f.build_request(&req).unwrap());
    std::thread::sleep(Duration::from_millis(1100));
    let second = Built::new(&f, f.build_request(&req).unwrap());
    assert_eq!(first.result.manifest_digest, second.result.manifest_digest);
    assert_eq!(first.config["created"], "2023-11-14T22:13:20Z");
    let history = first.config["history"].as_array().unwrap();
    assert_eq!(history[0]["created"], "2024-01-01T00:00:00Z");
    assert!(
        history[1..]
            .iter()
            .all(|h| h["created"] == "2023-11-14T22:13:20Z")
    );
    // Without it, the date differs and so does the digest.
    let third = f.build(dockerfile).unwrap();
    assert_ne!(third.manifest_digest, first.result.manifest_digest);
}

#[test]
fn an_image_of_128_layers_builds_and_runs() {
    require_root!();
    let f = Fixture::new();
    let mut dockerfile = String::from("FROM busybox:test\n");
    for i in 1..=126 {
        dockerfile.push_str(&format!("RUN echo {i} > /f{i}\n"));
    }
    // Runs on 127 lower layers.
    dockerfile.push_str("RUN ls / | grep -c '^f' > /count\n");
    let started = Instant::now();
    let built = f.build_ok(&dockerfile);
    eprintln!("128 layers in {:?}", started.elapsed());
    assert_eq!(built.layers.len(), 128);
    assert_eq!(built.read("/count"), "126\n");
    assert_eq!(built.read("/f77"), "77\n");
    f.assert_clean();
}

#[test]
fn cancel_kills_the_running_step_and_leaves_the_store_clean() {
    require_root!();
    let f = Arc::new(Fixture::new());
    struct Watch(Mutex<Option<std::sync::mpsc::Sender<()>>>);
    impl Progress for Watch {
        fn event(&self, event: &ProgressEvent) {
            if let ProgressEvent::Log { line, .. } = event {
                if line == "started" {
                    if let Some(tx) = self.0.lock().unwrap().take() {
                        tx.send(()).unwrap();
                    }
                }
            }
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let cancel = CancelHandle::new();
    let handle = {
        let f = Arc::clone(&f);
        let cancel = cancel.clone();
        std::thread::spawn(move || {
            let req =
                f.request("FROM busybox:test\nRUN echo one > /one\nRUN echo started; sleep 1000\n");
            build(&f.store, &req, &Watch(Mutex::new(Some(tx))), &cancel)
        })
    };
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the step never started");
    let cancelled_at = Instant::now();
    cancel.cancel();
    let outcome = handle.join().unwrap();
    assert!(matches!(outcome, Err(BuildError::Cancelled)), "{outcome:?}");
    assert!(cancelled_at.elapsed() < Duration::from_secs(5));
    f.assert_clean();
}

#[test]
fn build_of_a_base_stage_reuses_its_layers() {
    require_root!();
    let f = Fixture::new();
    // FROM an earlier stage: its layers come first, then the new ones.
    let built = f.build_ok(
        "FROM busybox:test AS base\n\
         RUN echo 1 > /one\n\
         FROM base\n\
         RUN echo 2 > /two\n",
    );
    assert_eq!(built.layers.len(), 3);
    assert_eq!(built.read("/one"), "1\n");
    assert_eq!(built.read("/two"), "2\n");
    let history = built.config["history"].as_array().unwrap();
    assert_eq!(history.len(), 3, "{history:?}");
}

#[test]
fn identical_layers_share_one_snapshot() {
    require_root!();
    let f = Fixture::new();
    // Two empty layers and two identical ones (the epoch clamps the mtimes
    // that would otherwise tell them apart): the same snapshot serves as two
    // lowerdirs of the later steps.
    let mut req = f.request(
        "FROM busybox:test\n\
         RUN true\n\
         RUN true\n\
         RUN echo same > /same\n\
         RUN rm /same\n\
         RUN echo same > /same\n\
         RUN cat /same > /copy\n",
    );
    req.source_date_epoch = Some(1_000_000_000);
    let built = Built::new(&f, f.build_request(&req).unwrap());
    assert_eq!(built.layers.len(), 7);
    assert_eq!(built.layers[1], built.layers[2]);
    assert_eq!(built.layers[3], built.layers[5]);
    // The well-known empty layer docker and BuildKit also produce.
    assert_eq!(
        built.layers[1].diff_id.to_string(),
        "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
    );
    assert_eq!(built.read("/copy"), "same\n");
    f.assert_clean();
}

#[test]
fn copy_link_makes_a_layer_of_its_own() {
    require_root!();
    let f = Fixture::new();
    fs::create_dir(f.context.join("site")).unwrap();
    fs::write(f.context.join("site/index.html"), "<h1>hi</h1>\n").unwrap();
    let built = f.build_ok(
        "FROM busybox:test\n\
         RUN mkdir -p /srv/www && echo old > /srv/www/old.txt\n\
         COPY --link --chown=test:audio site/ /srv/www/\n\
         COPY --chown=test site/index.html /home/test/\n",
    );
    assert_eq!(built.layers.len(), 4);
    // --link: only the copied files and the directories leading to them,
    // nothing that depends on the layers below.
    let entries = built.layer_entries(&f, 2);
    assert_eq!(
        entries.keys().cloned().collect::<Vec<_>>(),
        ["srv", "srv/www", "srv/www/index.html"],
        "{entries:?}"
    );
    assert_eq!(entries["srv/www/index.html"].2, 1000);
    assert_eq!(entries["srv/www/index.html"].3, 29);
    // Both layers apply on top of the RUN's files.
    assert_eq!(built.read("/srv/www/old.txt"), "old\n");
    assert_eq!(built.read("/srv/www/index.html"), "<h1>hi</h1>\n");
    let meta = fs::metadata(built.path("/home/test/index.html")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000));
    f.assert_clean();
}

#[test]
fn a_base_of_another_platform_is_used_with_a_warning() {
    require_root!();
    let f = Fixture::new();
    let result = f
        .build("FROM --platform=linux/arm64 busybox:test\nRUN true\n")
        .unwrap();
    let warnings: Vec<&str> = result.warnings.iter().map(|w| w.message.as_str()).collect();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("linux/amd64") && w.contains("linux/arm64")),
        "{warnings:?}"
    );
    let result = f.build("FROM busybox:test\nRUN true\n").unwrap();
    assert!(result.warnings.is_empty(), "{:?}", result.warnings);
}

#[test]
fn insecure_steps_get_every_capability_when_allowed() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\n\
                      RUN grep CapEff /proc/self/status > /default\n\
                      RUN ! (echo x > /proc/sys/kernel/hostname) 2>/dev/null\n\
                      RUN --security=insecure grep CapEff /proc/self/status > /insecure \\\n\
                       && mount -t tmpfs none /mnt \\\n\
                       && echo insecure > /proc/sys/kernel/hostname && hostname > /host\n";
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let err = f.build(dockerfile).unwrap_err();
    assert!(
        chain(&err).contains("--allow security.insecure"),
        "{}",
        chain(&err)
    );
    let mut req = f.request(dockerfile);
    req.allow_security_insecure = true;
    let built = Built::new(&f, f.build_request(&req).unwrap());
    assert_eq!(built.read("/default"), "CapEff:\t00000000a80425fb\n");
    // Everything builder itself may pass on.
    let own = fs::read_to_string("/proc/self/status").unwrap();
    let permitted = own
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .unwrap()
        .trim();
    assert_eq!(built.read("/insecure"), format!("CapEff:\t{permitted}\n"));
    assert_ne!(permitted, "00000000a80425fb");
    // /proc/sys is writable, and still the step's own UTS namespace.
    assert_eq!(built.read("/host"), "insecure\n");
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host
    );
}

#[test]
fn a_cached_rebuild_runs_nothing_and_gives_the_same_image() {
    require_root!();
    let f = Fixture::new();
    fs::write(f.context.join("input"), "from the context\n").unwrap();
    // Random output shows whether a step ran again.
    let dockerfile = "FROM busybox:test AS other\n\
                      RUN head -c 16 /dev/urandom | od -x > /other\n\
                      FROM busybox:test\n\
                      COPY input /input\n\
                      RUN head -c 16 /dev/urandom | od -x > /random\n\
                      COPY --from=other /other /other\n\
                      WORKDIR /w\n";
    let mut req = f.request(dockerfile);
    req.source_date_epoch = Some(1_700_000_000);
    let first = Built::new(&f, f.build_request(&req).unwrap());
    assert_eq!(
        first.result.stats.executed.len(),
        6,
        "{:?}",
        first.result.stats
    );
    let started = Instant::now();
    let second = Built::new(&f, f.build_request(&req).unwrap());
    eprintln!("cached rebuild in {:?}", started.elapsed());
    assert!(
        second.result.stats.executed.is_empty(),
        "{:?}",
        second.result.stats
    );
    assert_eq!(second.result.stats.hits, 1);
    assert_eq!(second.result.manifest_digest, first.result.manifest_digest);
    assert_eq!(second.read("/random"), first.read("/random"));

    // A changed file re-runs the COPY and the steps after it (loading the
    // base image for it), not `other`.
    fs::write(f.context.join("input"), "changed\n").unwrap();
    let third = Built::new(&f, f.build_request(&req).unwrap());
    let ran: Vec<&str> = third
        .result
        .stats
        .executed_steps
        .iter()
        .map(|d| d.split_once("] ").map_or(d.as_str(), |(_, step)| step))
        // The base image, described with its digest, is loaded again.
        .map(|d| {
            if d.starts_with("FROM docker.io/library/busybox:test@") {
                "FROM busybox:test"
            } else {
                d
            }
        })
        .collect();
    assert_eq!(
        ran,
        [
            "FROM busybox:test",
            "COPY input /input",
            "RUN head -c 16 /dev/urandom | od -x > /random",
            "COPY --from=other /other /other",
            "WORKDIR /w"
        ]
    );
    assert_eq!(third.read("/input"), "changed\n");
    assert_eq!(third.read("/other"), first.read("/other"));
    assert_ne!(third.read("/random"), first.read("/random"));
    f.assert_clean();
}

#[test]
fn a_cached_rebuild_without_source_date_epoch_keeps_the_image_id() {
    require_root!();
    let f = Fixture::new();
    let dockerfile = "FROM busybox:test\nRUN echo hi > /hi\nLABEL a=b\n";
    let req = f.request(dockerfile);
    assert_eq!(req.source_date_epoch, None);
    let first = f.build_request(&req).unwrap();
    let blobs = |f: &Fixture| {
        fs::read_dir(f.store.root().join("blobs/sha256"))
            .unwrap()
            .count()
    };
    let before = blobs(&f);
    let second = f.build_request(&req).unwrap();
    assert!(second.stats.executed.is_empty(), "{:?}", second.stats);
    assert_eq!(second.config_digest, first.config_digest);
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert_eq!(blobs(&f), before, "a cached rebuild wrote new blobs");
    // With --no-cache the step runs again and the image is dated anew.
    let mut again = req.clone();
    again.no_cache = true;
    let third = f.build_request(&again).unwrap();
    assert!(!third.stats.executed.is_empty());
    assert_ne!(third.config_digest, first.config_digest);
}

#[test]
fn cached_results_survive_removed_snapshots() {
    require_root!();
    let f = Fixture::new();
    let first = f.build_ok(
        "FROM busybox:test\n\
         RUN head -c 16 /dev/urandom | od -x > /random\n",
    );
    // Every snapshot, the base image's too, goes; the blobs stay.
    let snapshots = f.store.root().join("snapshots");
    let mut removed = 0;
    for entry in fs::read_dir(&snapshots).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
            removed += 1;
        }
    }
    assert_eq!(removed, 2);
    // The cached step is the parent of a new one, which runs on snapshots
    // unpacked again from the blobs.
    let built = f.build_ok(
        "FROM busybox:test\n\
         RUN head -c 16 /dev/urandom | od -x > /random\n\
         RUN cp /random /copy && ls /bin/busybox\n",
    );
    assert_eq!(
        built.result.stats.executed.len(),
        1,
        "{:?}",
        built.result.stats
    );
    assert_eq!(built.read("/copy"), first.read("/random"));
    assert_eq!(built.read("/random"), first.read("/random"));
    f.assert_clean();
}

#[test]
fn independent_stages_run_at_the_same_time() {
    require_root!();
    let f = Fixture::new();
    #[derive(Default)]
    struct Times(Mutex<Vec<(Instant, ProgressEvent)>>);
    impl Progress for Times {
        fn event(&self, event: &ProgressEvent) {
            self.0.lock().unwrap().push((Instant::now(), event.clone()));
        }
    }
    let times = Times::default();
    let req = f.request(
        "FROM busybox:test AS a\n\
         RUN sleep 1 && echo a > /a\n\
         FROM busybox:test AS b\n\
         RUN sleep 1 && echo b > /b\n\
         FROM busybox:test\n\
         COPY --from=a /a /a\n\
         COPY --from=b /b /b\n",
    );
    let result = build(&f.store, &req, &times, &CancelHandle::new()).unwrap();
    let built = Built::new(&f, result);
    assert_eq!(built.read("/a"), "a\n");
    assert_eq!(built.read("/b"), "b\n");
    // The sleeping steps' running intervals overlap.
    let events = times.0.lock().unwrap();
    let interval = |needle: &str| {
        let (start, vertex) = events
            .iter()
            .find_map(|(t, e)| match e {
                ProgressEvent::StepStarted {
                    vertex,
                    description,
                } if description.contains(needle) => Some((*t, *vertex)),
                _ => None,
            })
            .unwrap();
        let end = events
            .iter()
            .find_map(|(t, e)| match e {
                ProgressEvent::StepDone { vertex: v, .. } if *v == vertex => Some(*t),
                _ => None,
            })
            .unwrap();
        (start, end)
    };
    let (a_start, a_end) = interval("echo a");
    let (b_start, b_end) = interval("echo b");
    assert!(
        a_start < b_end && b_start < a_end,
        "the stages ran one after the other"
    );
    f.assert_clean();
}

#[test]
fn a_changed_base_image_is_explained() {
    require_root!();
    let f = Fixture::new();
    #[derive(Default)]
    struct Misses(Mutex<Vec<String>>);
    impl Progress for Misses {
        fn event(&self, event: &ProgressEvent) {
            if let ProgressEvent::CacheMiss { reason, .. } = event {
                self.0.lock().unwrap().push(reason.clone());
            }
        }
    }
    let req = f.request("FROM busybox:test\nRUN echo one > /one\n");
    f.build_request(&req).unwrap();
    let misses = Misses::default();
    let again = build(&f.store, &req, &misses, &CancelHandle::new()).unwrap();
    assert!(again.stats.executed.is_empty());
    assert!(misses.0.lock().unwrap().is_empty());
    // busybox:test now names another image.
    let rootfs = f.store.root().parent().unwrap().join("busybox2");
    put_busybox(&f.store, &rootfs, Some(("new", "file")));
    let changed = build(&f.store, &req, &misses, &CancelHandle::new()).unwrap();
    assert_eq!(changed.stats.executed.len(), 2, "{:?}", changed.stats);
    assert_eq!(
        *misses.0.lock().unwrap(),
        ["RUN echo one > /one: base image changed"]
    );
}
