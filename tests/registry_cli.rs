//! End to end: `builder push`, `pull`, `run` of a registry image, `login`
//! and `logout` against Debian's `docker-registry` on 127.0.0.1 (plain and
//! with htpasswd basic auth), a bearer-token server, a tampering proxy and
//! one that answers 503; results are checked with skopeo and the registry's
//! own storage.
//!
//! Needs /usr/bin/docker-registry, skopeo and htpasswd (apache2-utils); the
//! `run` parts also need the sandbox. Without them a test prints why and
//! returns; under CI it fails.

mod common;
mod registry_support;

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{TestRoot, sandbox_available, stderr, stdout, tool_available};
use registry_support::{Mode, Proxy, Registry, registry_available};

fn available() -> bool {
    registry_available() && tool_available("skopeo")
}

/// `builder ARGS` with DOCKER_CONFIG pointing at `docker_config`.
fn builder(t: &TestRoot, docker_config: &Path, args: &[&str]) -> Output {
    let mut c = t.builder();
    c.env("DOCKER_CONFIG", docker_config);
    c.env_remove("BUILDER_INSECURE_REGISTRY");
    c.args(args);
    c.output().unwrap()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The digest `builder push` printed (`TAG: digest: sha256:… size: N`).
fn pushed_digest(out: &str) -> String {
    out.lines()
        .find_map(|l| l.split_once(": digest: "))
        .map(|(_, rest)| rest.split(' ').next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no digest in push output:\n{out}"))
}

fn blob_count(root: &Path) -> usize {
    fs::read_dir(root.join("blobs/sha256"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn registry_push_inspect_copy_pull_and_run() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({"Cmd": ["cat", "/etc/motd"]}));
    let target = format!("{}/test/app:1", reg.host());
    let out = ok(&builder(&t, &cfg, &["push", "app:1", &target]), "push");
    assert!(out.contains(": Pushed"), "{out}");
    let digest = pushed_digest(&out);
    let local = t.inspect("app:1");
    assert_eq!(
        local["Digest"]
            .as_str()
            .or(local["digest"].as_str())
            .map(str::to_string)
            .unwrap_or(digest.clone()),
        digest
    );

    // skopeo reads it back: same digest, and a full copy works.
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{target}"),
    ]))
    .unwrap();
    assert_eq!(inspect["Digest"], digest.as_str());
    assert_eq!(inspect["Architecture"], "amd64");
    let layout = t.path("copied");
    skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:app", layout.display()),
    ]);
    assert!(layout.join("index.json").exists());

    // Pushing again uploads no layer bytes: the registry's storage grows
    // only by the new tag's link files.
    let before = reg.storage_bytes();
    let out = ok(
        &builder(
            &t,
            &cfg,
            &["push", "app:1", &format!("{}/test/app:2", reg.host())],
        ),
        "second push",
    );
    assert!(!out.contains(": Pushed"), "{out}");
    assert!(out.contains("Layer already exists"), "{out}");
    let growth = reg.storage_bytes() - before;
    assert!(
        growth < 1024,
        "a second push grew the registry by {growth} bytes"
    );
    assert_eq!(pushed_digest(&out), digest);

    // Another repository of the same registry: mounted, not uploaded.
    let out = ok(
        &builder(
            &t,
            &cfg,
            &["push", "app:1", &format!("{}/other/app:1", reg.host())],
        ),
        "push to another repository",
    );
    assert!(out.contains("Mounted from test/app"), "{out}");
    assert!(!out.contains(": Pushed"), "{out}");

    // Pull into an empty root: the same image, named by its tag.
    let t2 = TestRoot::new();
    let out = ok(&builder(&t2, &cfg, &["pull", &target]), "pull");
    assert!(out.contains(&format!("Digest: {digest}")), "{out}");
    assert!(out.contains("Downloaded newer image"), "{out}");
    let images = ok(&builder(&t2, &cfg, &["images"]), "images");
    assert!(
        images.contains(&format!("{}/test/app", reg.host())),
        "{images}"
    );
    // A second pull fetches nothing.
    let out = ok(&builder(&t2, &cfg, &["pull", &target]), "second pull");
    assert!(out.contains("Image is up to date"), "{out}");
    t2.check_store();

    if !sandbox_available() {
        return;
    }
    let out = ok(
        &builder(&t2, &cfg, &["run", &target]),
        "run of the pulled image",
    );
    assert!(!out.is_empty(), "motd is empty");
    // `run` of an image that is not present pulls it, as docker run does.
    let t3 = TestRoot::new();
    let out = builder(
        &t3,
        &cfg,
        &["run", &target, "echo", "hello from the registry"],
    );
    assert_eq!(ok(&out, "run with pull"), "hello from the registry\n");
    assert!(
        stderr(&out).contains("Unable to find image"),
        "{}",
        stderr(&out)
    );
    let out = builder(
        &t3,
        &cfg,
        &[
            "run",
            "--pull",
            "never",
            &format!("{}/test/app:2", reg.host()),
            "true",
        ],
    );
    assert!(!out.status.success(), "--pull never must not pull");
    t3.check_store();
}

#[test]
fn registry_pinned_digest_pull_needs_the_network_once() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    let target = format!("{}/pin/app:1", reg.host());
    let digest = pushed_digest(&ok(&builder(&t, &cfg, &["push", "app:1", &target]), "push"));
    let pinned = format!("{}/pin/app@{digest}", reg.host());
    let t2 = TestRoot::new();
    ok(&builder(&t2, &cfg, &["pull", &pinned]), "pull by digest");
    drop(reg);
    if !sandbox_available() {
        return;
    }
    // The registry is gone: the pinned image runs from the store.
    let out = builder(&t2, &cfg, &["run", &pinned, "true"]);
    ok(&out, "run of a pinned image offline");
}

#[test]
fn registry_basic_auth_login_and_logout() {
    if !available() || !registry_support::htpasswd_available() {
        return;
    }
    let reg = Registry::with_basic_auth("alice", "wonderland");
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    let target = format!("{}/auth/app:1", reg.host());

    // Without credentials: the error names the registry and `builder login`.
    let out = builder(&t, &cfg, &["push", "app:1", &target]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&reg.host()) && err.contains("builder login"),
        "{err}"
    );

    let login = |password: &str| {
        let mut c = t.builder();
        c.env("DOCKER_CONFIG", &cfg)
            .args(["login", "-u", "alice", "--password-stdin", &reg.host()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = login("wrong");
    assert!(!out.status.success(), "a wrong password must be refused");
    assert!(stderr(&out).contains("login to"), "{}", stderr(&out));
    assert!(
        !cfg.join("config.json").exists(),
        "nothing is stored after a failed login"
    );

    let out = login("wonderland");
    assert!(stdout(&out).contains("Login Succeeded"), "{}", stderr(&out));
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["auths"][reg.host()]["auth"],
        registry_support::base64(b"alice:wonderland")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(cfg.join("config.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "config.json must not be readable by others"
    );

    ok(
        &builder(&t, &cfg, &["push", "app:1", &target]),
        "push after login",
    );
    let t2 = TestRoot::new();
    ok(&builder(&t2, &cfg, &["pull", &target]), "pull after login");

    let out = ok(&builder(&t, &cfg, &["logout", &reg.host()]), "logout");
    assert!(out.contains("Removing login credentials"), "{out}");
    let config: serde_json::Value =
        serde_json::from_slice(&fs::read(cfg.join("config.json")).unwrap()).unwrap();
    assert!(config["auths"].get(reg.host()).is_none(), "{config}");
    let t3 = TestRoot::new();
    let out = builder(&t3, &cfg, &["pull", &target]);
    assert!(stderr(&out).contains("builder login"), "{}", stderr(&out));
    assert_eq!(blob_count(&t3.root()), 0);
}

#[test]
fn registry_bearer_token_flow() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    // Anonymous tokens, as Docker Hub hands out for public images.
    let proxy = Proxy::start(
        reg.port,
        Mode::Bearer {
            token: "t0ken".into(),
            user: None,
        },
    );
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    let target = format!("{}/bearer/app:1", proxy.host());
    ok(
        &builder(&t, &cfg, &["push", "app:1", &target]),
        "push with a token",
    );
    let t2 = TestRoot::new();
    ok(&builder(&t2, &cfg, &["pull", &target]), "pull with a token");
    assert!(proxy.tokens.load(std::sync::atomic::Ordering::SeqCst) >= 2);

    // A token server that wants credentials.
    let guarded = Proxy::start(
        reg.port,
        Mode::Bearer {
            token: "s3cret-token".into(),
            user: Some(("bob".into(), "builder".into())),
        },
    );
    let target = format!("{}/bearer/app:1", guarded.host());
    let t3 = TestRoot::new();
    let out = builder(&t3, &cfg, &["pull", &target]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(&guarded.host()) && err.contains("builder login"),
        "{err}"
    );
    let mut c = t3.builder();
    c.env("DOCKER_CONFIG", &cfg)
        .args(["login", "-u", "bob", "--password-stdin", &guarded.host()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"builder").unwrap();
    let out = child.wait_with_output().unwrap();
    ok(&out, "login to the token server");
    ok(&builder(&t3, &cfg, &["pull", &target]), "pull after login");
}

#[test]
fn registry_tampered_blob_is_rejected_and_nothing_is_stored() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    ok(
        &builder(
            &t,
            &cfg,
            &["push", "app:1", &format!("{}/tamper/app:1", reg.host())],
        ),
        "push",
    );
    let proxy = Proxy::start(reg.port, Mode::TamperBlobs);
    let t2 = TestRoot::new();
    ok(&builder(&t2, &cfg, &["images"]), "images");
    let index_before = fs::read(t2.root().join("index.json")).unwrap();
    let out = builder(
        &t2,
        &cfg,
        &["pull", &format!("{}/tamper/app:1", proxy.host())],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("digest mismatch"), "{err}");
    assert_eq!(blob_count(&t2.root()), 0, "a tampered pull stored blobs");
    assert_eq!(
        fs::read(t2.root().join("index.json")).unwrap(),
        index_before
    );
    let images = ok(&builder(&t2, &cfg, &["images"]), "images");
    assert!(!images.contains("tamper"), "{images}");
}

#[test]
fn registry_server_errors_are_retried() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    ok(
        &builder(
            &t,
            &cfg,
            &["push", "app:1", &format!("{}/flaky/app:1", reg.host())],
        ),
        "push",
    );
    let proxy = Proxy::start(reg.port, Mode::FailBlobs(1));
    let t2 = TestRoot::new();
    ok(
        &builder(
            &t2,
            &cfg,
            &["pull", &format!("{}/flaky/app:1", proxy.host())],
        ),
        "pull through a proxy that fails once",
    );
    assert_eq!(proxy.failures.load(std::sync::atomic::Ordering::SeqCst), 1);
    t2.check_store();
}

#[test]
fn registry_dropped_connections_are_retried() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    ok(
        &builder(
            &t,
            &cfg,
            &["push", "app:1", &format!("{}/drop/app:1", reg.host())],
        ),
        "push",
    );
    let proxy = Proxy::start(reg.port, Mode::DropBlobs(2));
    let t2 = TestRoot::new();
    ok(
        &builder(
            &t2,
            &cfg,
            &["pull", &format!("{}/drop/app:1", proxy.host())],
        ),
        "pull through a proxy that cuts two transfers",
    );
    assert_eq!(proxy.failures.load(std::sync::atomic::Ordering::SeqCst), 2);
    t2.check_store();
}

#[test]
fn registry_credential_helpers_get_store_and_erase() {
    if !available() || !registry_support::htpasswd_available() {
        return;
    }
    let reg = Registry::with_basic_auth("carol", "helper-pw");
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    fs::create_dir_all(&cfg).unwrap();
    // A helper that keeps one entry in a file, as docker-credential-pass would.
    let bin = t.path("bin");
    fs::create_dir_all(&bin).unwrap();
    let state = t.path("helper-state");
    let script = format!(
        "#!/bin/sh\nstate={state}\ncase \"$1\" in\n\
         get) read server; if [ -f \"$state\" ]; then cat \"$state\"; else echo 'credentials not found in native keychain'; exit 1; fi;;\n\
         store) cat > \"$state\";;\n\
         erase) read server; rm -f \"$state\";;\n\
         esac\n",
        state = state.display()
    );
    let helper = bin.join("docker-credential-fake");
    fs::write(&helper, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(
        cfg.join("config.json"),
        serde_json::json!({"credHelpers": {reg.host(): "fake"}, "other": 1}).to_string(),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut c = t.builder();
        c.env("DOCKER_CONFIG", &cfg)
            .env("PATH", &path)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    };
    t.busybox_image("app:1", serde_json::json!({}));
    let target = format!("{}/helper/app:1", reg.host());
    let out = run(&["push", "app:1", &target], None);
    assert!(stderr(&out).contains("builder login"), "{}", stderr(&out));
    let out = run(
        &["login", "-u", "carol", "--password-stdin", &reg.host()],
        Some("helper-pw"),
    );
    ok(&out, "login through the helper");
    let stored: serde_json::Value = serde_json::from_slice(&fs::read(&state).unwrap()).unwrap();
    assert_eq!(stored["Username"], "carol");
    assert_eq!(stored["ServerURL"], reg.host());
    let config = fs::read_to_string(cfg.join("config.json")).unwrap();
    assert!(
        !config.contains("helper-pw"),
        "the password went to config.json: {config}"
    );
    ok(
        &run(&["push", "app:1", &target], None),
        "push with the helper's credentials",
    );
    ok(&run(&["logout", &reg.host()], None), "logout");
    assert!(!state.exists(), "the helper was not asked to erase");
}

#[test]
fn registry_unreachable_and_invalid_references_are_clear_errors() {
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = builder(&t, &cfg, &["pull", &format!("127.0.0.1:{port}/x:1")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("cannot reach registry 127.0.0.1:{port}")),
        "{}",
        stderr(&out)
    );
    let out = builder(&t, &cfg, &["pull", "Upper/Case"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("invalid reference \"Upper/Case\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn registry_multi_arch_index_resolves_to_the_platform() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    let amd64 = t.busybox_image("multi:amd64", serde_json::json!({}));
    // An arm64 image: its own config (architecture arm64) over the same layer.
    let store = t.store();
    let images = cache::images::ImageStore::new(store.clone());
    let base = images.resolve("multi:amd64").unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&base.config).unwrap();
    config["architecture"] = "arm64".into();
    config["variant"] = "v8".into();
    let config = cache::json::to_vec(&config).unwrap();
    let config_ref = cache::images::BlobRef {
        media_type: cache::images::MEDIA_TYPE_OCI_CONFIG.into(),
        digest: cache::Digest::of(&config),
        size: config.len() as u64,
    };
    let manifest = cache::images::oci_manifest(&config_ref, base.layers()).unwrap();
    let arm64 = images
        .put(&manifest, &config, &["multi:arm64".parse().unwrap()])
        .unwrap();

    // An OCI layout holding an index of both, pushed with skopeo.
    let layout = t.path("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let mut blobs = vec![amd64, arm64, config_ref.digest, base.id()];
    blobs.extend(base.layers().iter().map(|l| l.digest));
    for d in &blobs {
        fs::copy(
            store.blob_path(d),
            layout.join("blobs/sha256").join(d.hex()),
        )
        .unwrap();
    }
    let entry = |d: &cache::Digest, arch: &str, variant: Option<&str>| {
        let mut platform = serde_json::json!({"os": "linux", "architecture": arch});
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": cache::images::MEDIA_TYPE_OCI_MANIFEST,
            "digest": d.to_string(),
            "size": store.blob_size(d).unwrap(),
            "platform": platform,
        })
    };
    let index = cache::json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": cache::images::MEDIA_TYPE_OCI_INDEX,
        "manifests": [entry(&arm64, "arm64", Some("v8")), entry(&amd64, "amd64", None)],
    }))
    .unwrap();
    let index_digest = cache::Digest::of(&index);
    fs::write(layout.join("blobs/sha256").join(index_digest.hex()), &index).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    fs::write(
        layout.join("index.json"),
        serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": cache::images::MEDIA_TYPE_OCI_INDEX,
                "digest": index_digest.to_string(),
                "size": index.len(),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }],
        })
        .to_string(),
    )
    .unwrap();
    let target = format!("{}/multi/app:1", reg.host());
    skopeo(&[
        "copy",
        "--multi-arch",
        "all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{target}"),
    ]);

    let t2 = TestRoot::new();
    let out = ok(
        &builder(&t2, &cfg, &["pull", &target]),
        "pull of a multi-arch image",
    );
    assert!(out.contains(&format!("Digest: {index_digest}")), "{out}");
    let inspect = ok(&builder(&t2, &cfg, &["inspect", &target]), "inspect");
    assert!(
        inspect.contains(&amd64.to_string()),
        "not the amd64 manifest:\n{inspect}"
    );
    let t3 = TestRoot::new();
    ok(
        &builder(&t3, &cfg, &["pull", "--platform", "linux/arm64", &target]),
        "pull of arm64",
    );
    let inspect = ok(&builder(&t3, &cfg, &["inspect", &target]), "inspect");
    assert!(
        inspect.contains(&arm64.to_string()),
        "not the arm64 manifest:\n{inspect}"
    );
    let out = builder(&t3, &cfg, &["pull", "--platform", "linux/s390x", &target]);
    assert!(
        stderr(&out).contains("has no image for platform linux/s390x"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn registry_chunked_push_round_trips() {
    if !available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    // A layer of incompressible data over 2 MiB, pushed in 1 MiB chunks.
    let tree = t.path("big");
    fs::create_dir_all(&tree).unwrap();
    let mut data = vec![0u8; 2_500_000];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    fs::write(tree.join("random.bin"), &data).unwrap();
    t.image_from_trees("big:1", &[&tree], serde_json::json!({}));
    let target = format!("{}/chunked/big:1", reg.host());
    let out = ok(
        &builder(&t, &cfg, &["push", "--chunk-size", "1", "big:1", &target]),
        "chunked push",
    );
    let digest = pushed_digest(&out);
    let t2 = TestRoot::new();
    let out = ok(&builder(&t2, &cfg, &["pull", &target]), "pull");
    assert!(out.contains(&digest), "{out}");
    t2.check_store();
}

#[test]
fn registry_build_from_a_registry_image_and_push() {
    if !available() || !sandbox_available() {
        return;
    }
    let reg = Registry::plain();
    let t = TestRoot::new();
    let cfg = t.path("docker-config");
    t.busybox_image("app:1", serde_json::json!({}));
    let base = format!("{}/base/busybox:1", reg.host());
    ok(
        &builder(&t, &cfg, &["push", "app:1", &base]),
        "push of the base",
    );
    let other = format!("{}/base/other:1", reg.host());
    ok(
        &builder(&t, &cfg, &["push", "app:1", &other]),
        "push of a second image",
    );

    // An empty root builds FROM the registry image (pulled) and pushes.
    let t2 = TestRoot::new();
    // COPY --from an image pulls it too.
    let dockerfile =
        format!("FROM {base}\nRUN echo built > /built\nCOPY --from={other} /etc/motd /motd2\n");
    let ctx = t2.context(&[("Dockerfile", dockerfile.as_str())]);
    let ctx = ctx.to_str().unwrap();
    let result = format!("{}/built/app:1", reg.host());
    let out = builder(
        &t2,
        &cfg,
        &["build", "--progress", "plain", "--push", "-t", &result, ctx],
    );
    ok(&out, "build --push");
    let inspect: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{result}"),
    ]))
    .unwrap();
    let local = stdout(&t2.output(&["inspect", &result]));
    let digest = inspect["Digest"].as_str().unwrap();
    assert!(local.contains(digest), "pushed {digest}, local:\n{local}");
    // `-o type=registry,name=…` pushes too.
    let second = format!("{}/built/app:2", reg.host());
    ok(
        &builder(
            &t2,
            &cfg,
            &["build", "-o", &format!("type=registry,name={second}"), ctx],
        ),
        "build -o type=registry",
    );
    skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{second}"),
    ]);

    // Another empty root runs what was pushed.
    let t3 = TestRoot::new();
    assert_eq!(
        ok(
            &builder(&t3, &cfg, &["run", &result, "cat", "/built"]),
            "run"
        ),
        "built\n"
    );
    ok(
        &builder(&t3, &cfg, &["run", &result, "test", "-s", "/motd2"]),
        "the copied file",
    );

    // With the registry gone, the locally present base still builds; --pull
    // cannot.
    drop(reg);
    ok(
        &builder(&t2, &cfg, &["build", "-t", "offline", ctx]),
        "offline build",
    );
    let out = builder(&t2, &cfg, &["build", "--pull", "-t", "offline", ctx]);
    assert!(
        !out.status.success(),
        "--pull without the registry succeeded"
    );
    t2.check_store();
}
