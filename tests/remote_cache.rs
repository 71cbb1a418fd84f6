//! The remote build cache end to end, as root: two `--root` directories
//! stand for two machines with empty roots that pull the same busybox base
//! from a local `docker-registry` (the other tests make it locally). Machine
//! A builds a multi-stage Dockerfile with `--cache-to`; machine B, with an
//! empty cache, builds the same Dockerfile with `--cache-from` and runs no
//! step (read from its `--progress=json` events), giving the same image
//! digest (`SOURCE_DATE_EPOCH` set); with one source file changed it reruns
//! exactly the steps that depend on it. Backends: `builder cache-server`
//! (with a token), Debian's `docker-registry` (through `BUILDER_CACHE`) and
//! `type=local` OCI layouts. Needs the sandbox and, for the registry case,
//! /usr/bin/docker-registry; they skip with a reason where those are absent
//! (and fail under CI).

mod common;
mod registry_support;

use std::fs;

use common::cache_server::Server;
use common::{Events, TestRoot, sandbox_available};
use registry_support::{Registry, registry_available};
use serde_json::json;

const DOCKERFILE: &str = "\
FROM busybox AS build
COPY lib.txt /src/lib.txt
RUN cat /src/lib.txt > /lib.out && echo built >> /lib.out
COPY main.txt /src/main.txt
RUN cat /lib.out /src/main.txt > /app.out

FROM busybox
COPY --from=build /app.out /app.out
COPY static.txt /static.txt
RUN cat /app.out /static.txt > /final.txt
";

const ALL: [&str; 7] = [
    "COPY lib.txt /src/lib.txt",
    "RUN cat /src/lib.txt > /lib.out && echo built >> /lib.out",
    "COPY main.txt /src/main.txt",
    "RUN cat /lib.out /src/main.txt > /app.out",
    "COPY --from=build /app.out /app.out",
    "COPY static.txt /static.txt",
    "RUN cat /app.out /static.txt > /final.txt",
];

/// What reruns when main.txt changes.
const AFTER_MAIN: [&str; 5] = [
    "COPY main.txt /src/main.txt",
    "RUN cat /lib.out /src/main.txt > /app.out",
    "COPY --from=build /app.out /app.out",
    "COPY static.txt /static.txt",
    "RUN cat /app.out /static.txt > /final.txt",
];

const EPOCH: &str = "1700000000";

struct Machine {
    t: TestRoot,
    ctx: std::path::PathBuf,
    base: cache::Digest,
}

fn machine() -> Machine {
    let t = TestRoot::new();
    let base = t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = context(&t, DOCKERFILE);
    Machine { t, ctx, base }
}

/// A registry holding the busybox base image that machines pull, as a
/// team's machines pull their bases.
struct PublishedBase {
    _registry: Registry,
    reference: String,
    digest: cache::Digest,
}

fn published_base() -> PublishedBase {
    let registry = Registry::plain();
    let publisher = TestRoot::new();
    let digest = publisher.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let reference = format!("{}/base/busybox:1", registry.host());
    publisher.ok(&["push", "busybox", &reference]);
    PublishedBase {
        _registry: registry,
        reference,
        digest,
    }
}

/// A machine with an empty root whose Dockerfile pulls `base` (the build
/// pulls it from the registry).
fn pulling_machine(base: &PublishedBase) -> Machine {
    let t = TestRoot::new();
    let dockerfile = DOCKERFILE.replace("FROM busybox", &format!("FROM {}", base.reference));
    let ctx = context(&t, &dockerfile);
    Machine {
        t,
        ctx,
        base: base.digest,
    }
}

fn context(t: &TestRoot, dockerfile: &str) -> std::path::PathBuf {
    t.context(&[
        ("Dockerfile", dockerfile),
        ("lib.txt", "lib\n"),
        ("main.txt", "main v1\n"),
        ("static.txt", "static\n"),
    ])
}

/// `build --progress=json ARGS` with `SOURCE_DATE_EPOCH` and `envs`; the
/// events and the image's manifest digest.
fn build(m: &Machine, args: &[&str], envs: &[(&str, &str)]) -> (Events, String, String) {
    let (events, doc, stderr) = build_doc(m, args, envs);
    let digest = doc["containerimage.digest"].as_str().unwrap().to_owned();
    (events, digest, stderr)
}

/// Like [`build`], with the whole `--metadata-file` document.
fn build_doc(
    m: &Machine,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (Events, serde_json::Value, String) {
    let meta = m.t.path(&format!("meta-{}.json", common::unique()));
    let mut c = m.t.builder();
    c.env("SOURCE_DATE_EPOCH", EPOCH)
        .env_remove("BUILDER_CACHE")
        .env_remove("BUILDER_CACHE_TOKEN");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.args(["build", "--progress=json", "-t", "app", "--metadata-file"])
        .arg(&meta)
        .args(args)
        .arg(&m.ctx);
    let out = c.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "build {args:?} failed: {}\n{stderr}",
        out.status
    );
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&meta).unwrap()).unwrap();
    (Events::parse(&stderr), doc, stderr)
}

fn sorted(steps: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = steps.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

fn assert_ran(events: &Events, ran: &[&str], what: &str) {
    assert_eq!(
        events.ran(),
        sorted(ran),
        "{what}: steps that ran\n{events:#?}"
    );
    let cached: Vec<&str> = ALL.iter().copied().filter(|s| !ran.contains(s)).collect();
    assert_eq!(
        events.cached(),
        sorted(&cached),
        "{what}: steps from the cache\n{events:#?}"
    );
}

/// The acceptance scenario over one backend: `to`/`from` are the flags of
/// A and B, `envs` extra environment of both.
fn two_machines(to: &[&str], from: &[&str], envs: &[(&str, &str)], remote_name: &str) {
    // Both machines pull their base image from a local registry (made
    // locally in each root where docker-registry is missing, outside CI).
    let base = registry_available().then(published_base);
    let new_machine = || match &base {
        Some(base) => pulling_machine(base),
        None => machine(),
    };
    let a = new_machine();
    let b = new_machine();
    assert_eq!(a.base, b.base, "both machines have the same base image");

    let (cold, digest_a, _) = build(&a, to, envs);
    assert_ran(&cold, &ALL, "A, cold");

    let (remote, digest_b, stderr) = build(&b, from, envs);
    assert_ran(&remote, &[], "B from the remote cache");
    assert_eq!(digest_a, digest_b, "B builds A's image");
    assert!(
        stderr.contains(&format!("from cache {remote_name}")),
        "the hit names its cache:\n{stderr}"
    );
    assert!(
        stderr.contains("result(s) from the remote cache"),
        "a summary of the remote bytes:\n{stderr}"
    );
    assert_eq!(
        b.t.ok(&["run", "app", "cat", "/final.txt"]),
        "lib\nbuilt\nmain v1\nstatic\n"
    );

    // Now local: no remote needed.
    let (local, digest_local, _) = build(&b, &[], envs);
    assert_ran(&local, &[], "B again, locally");
    assert_eq!(digest_local, digest_a);

    // One source file changed, on a machine with an empty cache: only its
    // dependents run, the build stage's first steps come from the remote
    // cache (mode=max).
    let c = new_machine();
    fs::write(c.ctx.join("main.txt"), "main v2\n").unwrap();
    let (changed, _, _) = build(&c, from, envs);
    assert_ran(&changed, &AFTER_MAIN, "fresh machine, main.txt changed");
    assert_eq!(
        c.t.ok(&["run", "app", "cat", "/final.txt"]),
        "lib\nbuilt\nmain v2\nstatic\n"
    );
    a.t.check_store();
    b.t.check_store();
    c.t.check_store();
}

#[test]
fn remote_cache_through_cache_server_with_token() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let tokens = t.path("tokens");
    fs::write(&tokens, "rw sekrit\n").unwrap();
    let server = Server::start(
        &t.path("cache-store"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    let cache = format!("{}/team/cache", server.addr);
    let to = format!("type=registry,ref={cache},mode=max");
    let from = format!("type=registry,ref={cache}");
    two_machines(
        &["--cache-to", &to],
        &["--cache-from", &from],
        &[("BUILDER_CACHE_TOKEN", "sekrit")],
        &cache,
    );
}

#[test]
fn remote_cache_wrong_token_is_a_warning_not_a_failure() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let tokens = t.path("tokens");
    fs::write(&tokens, "rw sekrit\n").unwrap();
    let server = Server::start(
        &t.path("cache-store"),
        &["--token-file", tokens.to_str().unwrap()],
    );
    let m = machine();
    let cache = format!("{}/team/cache", server.addr);
    let (events, _, stderr) = build(
        &m,
        &["--cache-to", &cache, "--cache-from", &cache],
        &[("BUILDER_CACHE_TOKEN", "wrong")],
    );
    assert_ran(&events, &ALL, "a build with a refused cache");
    assert!(stderr.contains("--cache-from"), "{stderr}");
    assert!(stderr.contains("--cache-to"), "{stderr}");
    assert!(stderr.contains("401"), "{stderr}");
    // Unreachable: also only a warning.
    let (events, _, stderr) = build(
        &machine(),
        &["--cache-from", "type=registry,ref=127.0.0.1:1/none"],
        &[],
    );
    assert_ran(&events, &ALL, "a build with an unreachable cache");
    assert!(stderr.contains("cannot reach registry"), "{stderr}");
}

#[test]
fn remote_cache_mode_min_exports_only_the_final_stage() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let server = Server::start(&t.path("cache-store"), &[]);
    let cache = format!("{}/team/min", server.addr);
    let a = machine();
    let (_, digest_a, _) = build(
        &a,
        &["--cache-to", &format!("type=registry,ref={cache}")],
        &[],
    );
    let b = machine();
    let (events, digest_b, _) = build(&b, &["--cache-from", &cache], &[]);
    assert_ran(&events, &[], "B from a mode=min cache");
    assert_eq!(digest_a, digest_b);
    // The build stage was not exported: a change there reruns all of it.
    let c = machine();
    fs::write(c.ctx.join("main.txt"), "main v2\n").unwrap();
    let (events, _, _) = build(&c, &["--cache-from", &cache], &[]);
    assert_ran(&events, &ALL, "mode=min has nothing of the build stage");
}

#[test]
fn remote_cache_through_docker_registry_with_builder_cache_env() {
    if !sandbox_available() || !registry_available() {
        return;
    }
    let registry = Registry::plain();
    let cache = format!("{}/team/cache", registry.host());
    // BUILDER_CACHE is both --cache-from and --cache-to (mode=max).
    two_machines(&[], &[], &[("BUILDER_CACHE", &cache)], &cache);
}

#[test]
fn remote_cache_through_local_oci_layout() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let dir = t.path("ci-cache");
    let to = format!("type=local,dest={},mode=max", dir.display());
    let from = format!("type=local,src={}", dir.display());
    two_machines(
        &["--cache-to", &to],
        &["--cache-from", &from],
        &[],
        &format!("local:{}", dir.display()),
    );
    // The directory is an OCI layout other tools read.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
    let tags: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    assert_eq!(tags.len(), ALL.len(), "one entry per step: {tags:?}");
    assert!(tags.iter().all(|t| t.starts_with("k-") && t.len() == 66));
    assert!(dir.join("oci-layout").exists());
}

#[test]
fn remote_cache_mounts_true_carries_cache_mount_directories() {
    if !sandbox_available() {
        return;
    }
    const MOUNTS: &str = "\
FROM busybox
COPY main.txt /src/main.txt
RUN --mount=type=cache,id=shared,target=/cache sh -c 'cat /cache/log > /seen 2>/dev/null; cat /src/main.txt >> /cache/log'
";
    let t = TestRoot::new();
    let dir = t.path("ci-cache");
    let a = machine();
    fs::write(a.ctx.join("Dockerfile"), MOUNTS).unwrap();
    let to = format!("type=local,dest={},mounts=true", dir.display());
    build(&a, &["--cache-to", &to], &[]);
    assert_eq!(a.t.ok(&["run", "app", "cat", "/seen"]), "");

    // B changes the source, so the step runs, and finds A's cache mount.
    let b = machine();
    fs::write(b.ctx.join("Dockerfile"), MOUNTS).unwrap();
    fs::write(b.ctx.join("main.txt"), "main v2\n").unwrap();
    let from = format!("type=local,src={}", dir.display());
    let (_, _, stderr) = build(&b, &["--cache-from", &from], &[]);
    assert!(
        stderr.contains("1 cache mount(s) from the remote cache"),
        "{stderr}"
    );
    assert_eq!(b.t.ok(&["run", "app", "cat", "/seen"]), "main v1\n");

    // Without mounts=true nothing of the mount is exported.
    let dir2 = t.path("ci-cache-2");
    let c = machine();
    fs::write(c.ctx.join("Dockerfile"), MOUNTS).unwrap();
    build(
        &c,
        &["--cache-to", &format!("type=local,dest={}", dir2.display())],
        &[],
    );
    let d = machine();
    fs::write(d.ctx.join("Dockerfile"), MOUNTS).unwrap();
    fs::write(d.ctx.join("main.txt"), "main v2\n").unwrap();
    build(
        &d,
        &[
            "--cache-from",
            &format!("type=local,src={}", dir2.display()),
        ],
        &[],
    );
    assert_eq!(d.t.ok(&["run", "app", "cat", "/seen"]), "");
}

#[test]
fn remote_cache_inline_metadata_travels_with_the_pushed_image() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let server = Server::start(&t.path("cache-store"), &[]);
    let image = format!("{}/team/app:1", server.addr);
    let a = machine();
    let (cold, doc_a, _) = build_doc(&a, &["--cache-to", "type=inline", "-t", &image], &[]);
    assert_ran(&cold, &ALL, "A, cold");
    a.t.ok(&["push", &image]);
    // The pushed manifest names the final stage's results.
    let manifest = a.t.store().read_blob(
        &doc_a["containerimage.digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    let manifest: serde_json::Value = serde_json::from_slice(&manifest.unwrap()).unwrap();
    let inline = manifest["annotations"][cache::remote_cache::INLINE_ANNOTATION]
        .as_str()
        .expect("inline cache annotation");
    let entries: Vec<serde_json::Value> = serde_json::from_str(inline).unwrap();
    assert_eq!(entries.len(), 3, "the final stage's three steps: {inline}");

    let b = machine();
    let (events, doc_b, stderr) = build_doc(&b, &["--cache-from", &image], &[]);
    assert_ran(&events, &[], "B from the inline cache of A's image");
    assert_eq!(
        doc_a["containerimage.config.digest"], doc_b["containerimage.config.digest"],
        "the same image id"
    );
    assert!(
        stderr.contains(&format!("from cache {}/team/app", server.addr)),
        "{stderr}"
    );
    // A change in the build stage: its results are not inline (buildx's
    // inline cache is mode=min), so the whole build stage runs.
    let c = machine();
    fs::write(c.ctx.join("main.txt"), "main v2\n").unwrap();
    let (events, _, _) = build_doc(&c, &["--cache-from", &image], &[]);
    assert_ran(&events, &ALL, "nothing of the build stage is inline");
}
