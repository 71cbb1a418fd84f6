//! Named build contexts (`--build-context NAME=DIR|docker-image://REF`)
//! through `builder build`, end to end: used by `COPY --from`, `RUN
//! --mount from=` and FROM, replacing a stage or an image of that name,
//! the directory's own `.dockerignore`, and clear errors for bad specs.

mod common;

use std::fs;
use std::path::Path;

use common::{TestRoot, sandbox_available, stderr, tool_available, unique};
use serde_json::json;

fn read(root: &Path, path: &str) -> String {
    fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A directory beside the root holding `files`.
fn dir(t: &TestRoot, files: &[(&str, &str)]) -> String {
    let d = t.path(&format!("named-{}", unique()));
    for (path, contents) in files {
        let p = d.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, contents).unwrap();
    }
    fs::create_dir_all(&d).unwrap();
    d.to_str().unwrap().to_owned()
}

#[test]
fn directory_context_feeds_copy_and_run_mounts_with_its_own_dockerignore() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let extra = dir(
        &t,
        &[
            ("data.txt", "from extra\n"),
            ("sub/deep.txt", "deep\n"),
            ("secret.key", "must not be copied\n"),
            (".dockerignore", "*.key\n"),
        ],
    );
    let spec = format!("extra={extra}");
    let out = t.build_local(
        "FROM busybox\n\
         COPY --from=extra / /copied/\n\
         COPY --from=extra sub/deep.txt /deep.txt\n\
         RUN --mount=from=extra,target=/mnt cat /mnt/data.txt > /mounted.txt\n",
        &[("data.txt", "from the main context\n")],
        &["--build-context", &spec],
    );
    assert_eq!(read(&out, "/copied/data.txt"), "from extra\n");
    assert_eq!(read(&out, "/copied/sub/deep.txt"), "deep\n");
    assert_eq!(read(&out, "/deep.txt"), "deep\n");
    assert_eq!(read(&out, "/mounted.txt"), "from extra\n");
    assert!(
        !out.join("copied/secret.key").exists(),
        "the named context's .dockerignore excludes *.key"
    );
}

#[test]
fn directory_context_steps_are_cached_by_its_content() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = t.context(&[(
        "Dockerfile",
        "FROM busybox\n\
         COPY --from=extra data.txt /data.txt\n\
         RUN --mount=from=extra,target=/mnt cat /mnt/other.txt > /other.txt\n",
    )]);
    let extra = dir(
        &t,
        &[
            ("data.txt", "data\n"),
            ("other.txt", "other\n"),
            ("notes.key", "ignored\n"),
            (".dockerignore", "*.key\n"),
        ],
    );
    let spec = format!("extra={extra}");
    let args = ["--build-context", spec.as_str()];
    let copy = "COPY --from=extra data.txt /data.txt";
    let run = "RUN --mount=from=extra,target=/mnt cat /mnt/other.txt > /other.txt";
    let steps = |v: Vec<String>| -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().filter(|s| s != "FROM busybox").collect();
        v.sort();
        v
    };

    let cold = t.build_json_ok(&ctx, &args);
    assert_eq!(steps(cold.ran()), [copy, run], "{cold:#?}");
    let warm = t.build_json_ok(&ctx, &args);
    assert_eq!(steps(warm.ran()), Vec::<String>::new(), "{warm:#?}");
    assert_eq!(steps(warm.cached()), [copy, run], "{warm:#?}");

    // A file the .dockerignore excludes changes nothing.
    fs::write(Path::new(&extra).join("notes.key"), "changed\n").unwrap();
    let ignored = t.build_json_ok(&ctx, &args);
    assert_eq!(steps(ignored.ran()), Vec::<String>::new(), "{ignored:#?}");

    // Only the step reading the changed file runs again.
    fs::write(Path::new(&extra).join("other.txt"), "changed\n").unwrap();
    let changed = t.build_json_ok(&ctx, &args);
    assert_eq!(steps(changed.ran()), [run], "{changed:#?}");
    assert_eq!(steps(changed.cached()), [copy], "{changed:#?}");

    // Keys follow content, not where the directory is: a copy elsewhere
    // hits the cache.
    let copy_dir = dir(
        &t,
        &[
            ("data.txt", "data\n"),
            ("other.txt", "changed\n"),
            ("notes.key", "not the same, but ignored\n"),
            (".dockerignore", "*.key\n"),
        ],
    );
    let copy_spec = format!("extra={copy_dir}");
    let moved = t.build_json_ok(&ctx, &["--build-context", &copy_spec]);
    assert_eq!(steps(moved.ran()), Vec::<String>::new(), "{moved:#?}");
}

#[test]
fn directory_context_replaces_a_stage_of_that_name() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let dockerfile = "FROM busybox AS gen\n\
                      RUN echo from the stage > /value.txt\n\
                      FROM busybox\n\
                      COPY --from=gen /value.txt /value.txt\n";
    // Without the named context the stage runs.
    let out = t.build_local(dockerfile, &[], &[]);
    assert_eq!(read(&out, "/value.txt"), "from the stage\n");
    // With it, the directory replaces the stage.
    let gen_dir = dir(&t, &[("value.txt", "from the directory\n")]);
    let spec = format!("gen={gen_dir}");
    let out = t.build_local(dockerfile, &[], &["--build-context", &spec]);
    assert_eq!(read(&out, "/value.txt"), "from the directory\n");
    // Built as the target, the replaced stage is the directory itself: its
    // RUN does not run.
    let out = t.build_local(
        dockerfile,
        &[],
        &["--build-context", &spec, "--target", "gen"],
    );
    assert_eq!(read(&out, "/value.txt"), "from the directory\n");
    assert!(!out.join("bin").exists(), "not busybox with a RUN on top");
}

#[test]
fn from_a_directory_context_makes_it_the_filesystem() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    let rootfs = dir(
        &t,
        &[
            ("etc/os-release", "ID=fromdir\n"),
            ("skip.tmp", "ignored\n"),
            (".dockerignore", "*.tmp\n"),
        ],
    );
    let spec = format!("rootdir={rootfs}");
    let out = t.build_local(
        "FROM rootdir\nCOPY data.txt /added.txt\n",
        &[("data.txt", "main context\n")],
        &["--build-context", &spec],
    );
    assert_eq!(read(&out, "/etc/os-release"), "ID=fromdir\n");
    assert_eq!(read(&out, "/added.txt"), "main context\n");
    assert!(!out.join("skip.tmp").exists());
}

#[test]
fn image_context_replaces_an_image_and_a_stage() {
    if !sandbox_available() {
        return;
    }
    let t = TestRoot::new();
    t.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let marker = t.path(&format!("marker-tree-{}", unique()));
    fs::create_dir_all(marker.join("etc")).unwrap();
    fs::write(marker.join("etc/marker"), "the other image\n").unwrap();
    let tree = t.path(&format!("busybox-tree-{}", unique()));
    solver::sandbox::testsupport::busybox_rootfs(&tree).unwrap();
    t.image_from_trees("other:1", &[&tree, &marker], json!({"Cmd": ["sh"]}));

    // `FROM alpine` (not in the store, never pulled) becomes other:1.
    let out = t.build_local(
        "FROM alpine\nRUN cat /etc/marker > /seen.txt\n",
        &[],
        &["--build-context", "alpine=docker-image://other:1"],
    );
    assert_eq!(read(&out, "/seen.txt"), "the other image\n");

    // A stage of that name is replaced too, in FROM and in COPY --from.
    let out = t.build_local(
        "FROM busybox AS base\n\
         RUN echo stage > /etc/marker\n\
         FROM base\n\
         COPY --from=base /etc/marker /copied.txt\n\
         RUN cat /etc/marker > /seen.txt\n",
        &[],
        &["--build-context", "base=docker-image://other:1"],
    );
    assert_eq!(read(&out, "/seen.txt"), "the other image\n");
    assert_eq!(read(&out, "/copied.txt"), "the other image\n");
}

#[test]
fn oci_layout_context_is_imported_and_used_by_tag_or_digest() {
    if !sandbox_available() || !tool_available("tar") {
        return;
    }
    // An OCI layout made by another store: `-o type=oci` unpacked.
    let maker = TestRoot::new();
    maker.busybox_image("busybox", json!({"Cmd": ["sh"]}));
    let ctx = maker.context(&[(
        "Dockerfile",
        "FROM busybox\nRUN echo from the layout > /etc/marker\n",
    )]);
    let archive = maker.path("layout.tar");
    let spec = format!("type=oci,dest={}", archive.display());
    maker.build_ok(&ctx, &["-t", "layout:v1", "-o", &spec]);
    let layout = maker.path("layout");
    fs::create_dir_all(&layout).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xf")
        .arg(&archive)
        .arg("-C")
        .arg(&layout)
        .status()
        .unwrap();
    assert!(status.success());
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();

    // A store that has no image at all: FROM base comes from the layout.
    let t = TestRoot::new();
    let dockerfile = "FROM base\nRUN cat /etc/marker > /seen.txt\n";
    let by_tag = format!("base=oci-layout://{}:v1", layout.display());
    let out = t.build_local(dockerfile, &[], &["--build-context", &by_tag]);
    assert_eq!(read(&out, "/seen.txt"), "from the layout\n");
    // `--pull` does not look for the layout's image in a registry.
    let out = t.build_local(dockerfile, &[], &["--build-context", &by_tag, "--pull"]);
    assert_eq!(read(&out, "/seen.txt"), "from the layout\n");
    let by_digest = format!("base=oci-layout://{}@{digest}", layout.display());
    let out = t.build_local(
        "FROM scratch\nCOPY --from=base /etc/marker /copied.txt\n",
        &[],
        &["--build-context", &by_digest],
    );
    assert_eq!(read(&out, "/copied.txt"), "from the layout\n");

    // A tag the layout does not have.
    let ctx = t.context(&[("Dockerfile", dockerfile)]);
    let missing = format!("base=oci-layout://{}:nope", layout.display());
    let out = t.build(&ctx, &["--build-context", &missing]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no image tagged \"nope\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_build_context_specs_are_refused_clearly() {
    let t = TestRoot::new();
    let ctx = t.context(&[("Dockerfile", "FROM scratch\n")]);
    let missing = t.path("does-not-exist");
    let missing_spec = format!("x={}", missing.display());
    let cases: [(&str, &str); 9] = [
        ("noequals", "expected NAME=DIR"),
        ("=dir", "must not be empty"),
        ("x=ftp://host/dir", "unknown source ftp://"),
        ("x=docker-image://", "needs an image reference"),
        ("x=docker-image://Not A Ref", "invalid reference"),
        ("x=oci-layout://", "needs a directory"),
        ("x=oci-layout:///proc/self", "is not an OCI image layout"),
        ("context=/", "main build context"),
        (missing_spec.as_str(), "is not a directory"),
    ];
    for (spec, expected) in cases {
        let out = t.build(&ctx, &["--build-context", spec]);
        assert!(!out.status.success(), "--build-context {spec} succeeded");
        let err = stderr(&out);
        assert!(
            err.contains(expected) && err.contains("--build-context"),
            "--build-context {spec}: expected {expected:?} in:\n{err}"
        );
    }
}
